#include "protocol/encode.h"

#include <span>

#include "protocol/limits.h"
#include "store/change_events.h"

namespace parley::protocol {

std::string EncodeResponse(std::string_view id_json, std::string_view op, const std::function<void(JsonWriter&)>& fill) {
  JsonWriter w;
  w.BeginObject().Field("v", kVersion).Field("type", "response").Key("id");
  if (id_json.empty()) w.Null(); else w.Raw(id_json);
  w.Field("op", op).Key("result").BeginObject();
  if (fill) fill(w);
  w.EndObject().EndObject();
  return w.Take();
}

std::string EncodeError(std::string_view id_json, std::string_view op, const Status& status, int64_t retry_after_ms) {
  JsonWriter w;
  w.BeginObject().Field("v", kVersion).Field("type", "error").Key("id");
  if (id_json.empty()) w.Null(); else w.Raw(id_json);
  w.Key("op");
  if (op.empty()) w.Null(); else w.String(op);
  w.Field("code", ErrorCodeName(status.code()))
      .Field("message", status.message())
      .Field("retryable", ErrorCodeRetryable(status.code()));
  if (retry_after_ms > 0) w.Field("retry_after_ms", retry_after_ms);
  w.EndObject();
  return w.Take();
}

void WriteMessage(JsonWriter& w, const store::MessageRecord& m) {
  w.BeginObject()
      .Field("conversation_id", m.conversation_id)
      .Field("seq", m.seq)
      .Field("sender_id", m.sender_id)
      .Field("sender_device_id", m.sender_device_id)
      .Field("client_id", m.client_id)
      .Field("body", m.body)
      .Field("ts", m.created_at);
  // Edits and deletes (issue 12): only on messages that changed.
  if (m.deleted_at != 0) {
    w.Field("version", m.version).Field("deleted", true).Field("deleted_at", m.deleted_at);
  } else if (m.version > 0) {
    w.Field("version", m.version).Field("edited_at", m.edited_at);
  }
  // Retention (issue 12): only on messages that expire.
  if (m.expires_at != 0) w.Field("expires_at", m.expires_at);
  if (store::DeletedByExpiry(m)) w.Field("reason", "expired");
  w.EndObject();
}

void WriteConversation(JsonWriter& w, const store::ConversationRecord& c, bool with_state) {
  w.BeginObject().Field("conversation_id", c.id).Key("members").BeginArray();
  for (const auto& m : c.members) w.BeginObject().Field("user_id", m.user_id).Field("username", m.username).EndObject();
  w.EndArray();
  if (with_state) w.Field("last_seq", c.last_seq);
  w.Field("created_at", c.created_at).Field("disappearing_s", c.disappearing_s).EndObject();
}

void WriteProfile(JsonWriter& w, const store::ProfileRecord& p) {
  w.BeginObject()
      .Field("user_id", p.user_id)
      .Field("username", p.username)
      .Field("display_name", p.display_name)
      .Field("about", p.about)
      .EndObject();
}

namespace {
// `"key":[...]`, left out when empty.
void WriteSeqList(JsonWriter& w, std::string_view key, const std::vector<int64_t>& seqs) {
  if (seqs.empty()) return;
  w.Key(key).BeginArray();
  for (auto s : seqs) w.Int(s);
  w.EndArray();
}
}  // namespace

void WriteSummary(JsonWriter& w, const store::ConversationSummary& s) {
  w.BeginObject().Key("conversation");
  WriteConversation(w, s.conversation);
  w.Key("messages").BeginArray();
  for (const auto& m : s.latest) WriteMessage(w, m);
  w.EndArray().Key("watermarks").BeginArray();
  for (size_t i = 0; i < s.watermarks.size(); ++i) {
    const auto& [uid, wm] = s.watermarks[i];
    w.BeginObject().Field("user_id", uid).Field("delivered", wm.delivered).Field("read", wm.read);
    if (i < s.withheld.size()) WriteSeqList(w, "withheld", s.withheld[i]);
    w.EndObject();
  }
  w.EndArray().Field("unread", s.unread).Field("last_activity_at", s.conversation.last_activity_at);
  if (!s.draft.text.empty()) {
    w.Key("draft").BeginObject().Field("text", s.draft.text).Field("updated_at", s.draft.updated_at).EndObject();
  }
  w.EndObject();
}

namespace {
void WriteHistoryFrom(JsonWriter& w, const std::vector<store::MessageRecord>& page, size_t first) {
  w.Key("messages").BeginArray();
  std::vector<int64_t> stay;
  for (size_t i = first; i < page.size(); ++i) {
    WriteMessage(w, page[i]);
    if (page[i].stays_sent) stay.push_back(page[i].seq);
  }
  w.EndArray().Field("has_more", first < page.size() && page[first].seq > 1);
  WriteSeqList(w, "withheld", stay);
}
}  // namespace

void WriteHistory(JsonWriter& w, const std::vector<store::MessageRecord>& page, size_t max_bytes) {
  // Pages run backwards from `before`: too large, the newest that fit stay.
  WritePageWithin(
      w, page.size(), max_bytes, [&page](JsonWriter& s, size_t n) { WriteHistoryFrom(s, page, page.size() - n); },
      [&page](JsonWriter& s, size_t i) { WriteMessage(s, page[page.size() - 1 - i]); });
}

namespace {
// WriteSearchResults with the first `count` messages of `page`.
void WriteSearchResultsUpTo(JsonWriter& w, const store::MessageSearchPage& page, size_t count) {
  const std::span<const store::MessageRecord> messages(page.messages.data(), count);
  w.Key("messages").BeginArray();
  for (const auto& m : messages) WriteMessage(w, m);
  w.EndArray().Key("next");
  const int64_t next = count < page.messages.size() ? page.doc_ids[count - 1] : page.next;
  if (next == 0) w.Null();
  else w.Int(next);
  // As history's page-level list ("stays sent" forever), but the results
  // span conversations, so each entry names its conversation.
  bool any = false;
  for (const auto& m : messages) {
    if (!m.stays_sent) continue;
    if (!any) w.Key("withheld").BeginArray();
    any = true;
    w.BeginObject().Field("conversation_id", m.conversation_id).Field("seq", m.seq).EndObject();
  }
  if (any) w.EndArray();
}
}  // namespace

void WriteSearchResults(JsonWriter& w, const store::MessageSearchPage& page, size_t max_bytes) {
  WritePageWithin(
      w, page.messages.size(), max_bytes, [&page](JsonWriter& s, size_t n) { WriteSearchResultsUpTo(s, page, n); },
      [&page](JsonWriter& s, size_t i) { WriteMessage(s, page.messages[i]); });
}

void WritePushHealth(JsonWriter& w, const store::PushHealth& h) {
  auto at = [&w](const char* key, int64_t v) {
    w.Key(key);
    if (v == 0) w.Null();
    else w.Int(v);
  };
  w.BeginObject().Field("provider", h.provider).Field("registered_at", h.registered_at);
  at("last_attempt_at", h.last_attempt_at);
  w.Key("last_result");
  if (h.last_result.empty()) w.Null();
  else w.String(h.last_result);
  at("last_success_at", h.last_success_at);
  w.Field("failure_count", h.failure_count).Field("pending", h.pending).EndObject();
}

void WriteEvent(JsonWriter& w, const store::StreamEvent& e) {
  w.BeginObject().Field("user_seq", e.user_seq);
  switch (e.kind) {
    case store::EventKind::kMessage:
      w.Field("kind", "message").Key("message");
      WriteMessage(w, *e.message);
      WriteSeqList(w, "withheld", e.withheld);
      break;
    case store::EventKind::kReceipt:
      w.Field("kind", "receipt")
          .Field("conversation_id", e.conversation_id)
          .Field("user_id", e.receipt_user_id)
          .Field("delivered", e.receipt.delivered)
          .Field("read", e.receipt.read);
      WriteSeqList(w, "withheld", e.withheld);
      WriteSeqList(w, "also_covers", e.also_covers);
      break;
    case store::EventKind::kConversation:
      w.Field("kind", "conversation").Key("conversation");
      WriteConversation(w, *e.conversation, /*with_state=*/false);
      break;
    case store::EventKind::kProfile:
      w.Field("kind", "profile").Key("profile");
      WriteProfile(w, *e.profile);
      break;
    case store::EventKind::kContact:
      w.Field("kind", "contact").Field("added", e.flag).Key("user");
      WriteProfile(w, *e.profile);
      break;
    case store::EventKind::kBlock:
      w.Field("kind", "block").Field("blocked", e.flag).Key("user");
      WriteProfile(w, *e.profile);
      break;
    case store::EventKind::kPrivacy:
      w.Field("kind", "privacy").Field("presence", PresenceVisibilityName(e.presence_visibility));
      break;
    case store::EventKind::kMute:
      w.Field("kind", "mute").Field("conversation_id", e.conversation_id).Field("muted", e.flag);
      break;
    case store::EventKind::kPushPreviews:
      w.Field("kind", "push_previews").Field("previews", e.flag);
      break;
    case store::EventKind::kEdit:
      w.Field("kind", "edit")
          .Field("conversation_id", e.message->conversation_id)
          .Field("seq", e.message->seq)
          .Field("sender_id", e.message->sender_id)
          .Field("version", e.message->version)
          .Field("body", e.message->body)
          .Field("edited_at", e.message->edited_at);
      // Read after the message expired, before the expiry's own delete
      // event (MaskIfExpired): the edit's text is gone too; it says so, and
      // clients apply it as the tombstone it is about to become.
      if (e.message->deleted_at != 0) {
        w.Field("deleted_at", e.message->deleted_at);
        if (store::DeletedByExpiry(*e.message)) w.Field("reason", "expired");
      }
      break;
    case store::EventKind::kDelete:
      w.Field("kind", "delete")
          .Field("conversation_id", e.message->conversation_id)
          .Field("seq", e.message->seq)
          .Field("sender_id", e.message->sender_id)
          .Field("version", e.message->version)
          .Field("deleted_at", e.message->deleted_at);
      // An expiry (issue 12) reads as a delete for everyone with a reason.
      if (store::DeletedByExpiry(*e.message)) w.Field("reason", "expired");
      break;
    case store::EventKind::kDeleteForMe:
      w.Field("kind", "delete_for_me")
          .Field("conversation_id", e.conversation_id)
          .Field("seq", e.message->seq)
          .Field("deleted_at", e.created_at);
      break;
    case store::EventKind::kDisappearing:
      w.Field("kind", "disappearing")
          .Field("conversation_id", e.conversation_id)
          .Field("seconds", e.disappearing_s)
          .Field("by", e.receipt_user_id)
          .Field("set_at", e.created_at);
      break;
    case store::EventKind::kDraft:
      w.Field("kind", "draft")
          .Field("conversation_id", e.conversation_id)
          .Field("text", e.draft ? e.draft->text : std::string())
          .Field("updated_at", e.draft ? e.draft->updated_at : e.created_at);
      break;
  }
  w.EndObject();
}

std::string_view EventKindName(store::EventKind kind) {
  switch (kind) {
    case store::EventKind::kMessage: return "message";
    case store::EventKind::kReceipt: return "receipt";
    case store::EventKind::kConversation: return "conversation";
    case store::EventKind::kProfile: return "profile";
    case store::EventKind::kContact: return "contact";
    case store::EventKind::kBlock: return "block";
    case store::EventKind::kPrivacy: return "privacy";
    case store::EventKind::kMute: return "mute";
    case store::EventKind::kPushPreviews: return "push_previews";
    case store::EventKind::kEdit: return "edit";
    case store::EventKind::kDelete: return "delete";
    case store::EventKind::kDeleteForMe: return "delete_for_me";
    case store::EventKind::kDraft: return "draft";
    case store::EventKind::kDisappearing: return "disappearing";
  }
  return "";
}

const std::vector<store::EventKind>& AllEventKinds() {
  static const std::vector<store::EventKind> kinds = {
      store::EventKind::kMessage, store::EventKind::kReceipt,      store::EventKind::kConversation,
      store::EventKind::kProfile, store::EventKind::kContact,      store::EventKind::kBlock,
      store::EventKind::kPrivacy, store::EventKind::kMute,         store::EventKind::kPushPreviews,
      store::EventKind::kEdit,    store::EventKind::kDelete,       store::EventKind::kDeleteForMe,
      store::EventKind::kDraft,   store::EventKind::kDisappearing};
  return kinds;
}

bool SummarisedInSelectiveSync(const store::StreamEvent& e) {
  // An event that lists withheld seqs (blocking) always goes in full: those
  // seqs must stay "sent" on every device, and a summary has no list.
  if (!e.withheld.empty()) return false;
  switch (e.kind) {
    case store::EventKind::kMessage:
    case store::EventKind::kReceipt:
    case store::EventKind::kEdit:
    case store::EventKind::kDelete:
    case store::EventKind::kDeleteForMe: return true;
    // Settings and the user's own state arrive in full (docs/protocol.md,
    // "What is summarised"), kDisappearing included.
    default: return false;
  }
}

void WriteSyncSummary(JsonWriter& w, const store::ConversationState& state, const SeqRanges& covers) {
  w.BeginObject()
      .Field("user_seq", covers.empty() ? int64_t{0} : covers.front().first)
      .Field("kind", "summary")
      .Field("conversation_id", state.conversation_id)
      .Field("last_seq", state.last_seq)
      .Field("unread", state.unread)
      .Key("covers")
      .BeginArray();
  for (const auto& [from, to] : covers) w.BeginArray().Int(from).Int(to).EndArray();
  w.EndArray().EndObject();
}

std::string EncodeSummaryEvent(const store::ConversationState& state, int64_t user_seq) {
  JsonWriter w;
  w.BeginObject().Field("v", kVersion).Field("type", "event").Key("event");
  WriteSyncSummary(w, state, {{user_seq, user_seq}});
  w.EndObject();
  return w.Take();
}

std::string EncodeEvent(const store::StreamEvent& event) {
  JsonWriter w;
  w.BeginObject().Field("v", kVersion).Field("type", "event").Key("event");
  WriteEvent(w, event);
  w.EndObject();
  return w.Take();
}

std::string_view PresenceVisibilityName(store::PresenceVisibility v) {
  switch (v) {
    case store::PresenceVisibility::kContacts: return "contacts";
    case store::PresenceVisibility::kNobody: return "nobody";
    case store::PresenceVisibility::kEveryone: break;
  }
  return "everyone";
}

void WritePresence(JsonWriter& w, int64_t user_id, bool online, int64_t last_seen) {
  w.BeginObject().Field("user_id", user_id).Field("online", online);
  if (last_seen > 0) w.Field("last_seen", last_seen);
  w.EndObject();
}

std::string EncodePresence(int64_t user_id, bool online, int64_t last_seen) {
  JsonWriter w;
  w.BeginObject().Field("v", kVersion).Field("type", "presence").Field("user_id", user_id).Field("online", online);
  if (last_seen > 0) w.Field("last_seen", last_seen);
  w.EndObject();
  return w.Take();
}

std::string EncodeTyping(int64_t conversation_id, int64_t user_id, bool typing, int64_t expires_in_ms) {
  JsonWriter w;
  w.BeginObject()
      .Field("v", kVersion)
      .Field("type", "typing")
      .Field("conversation_id", conversation_id)
      .Field("user_id", user_id)
      .Field("state", typing ? "start" : "stop");
  if (typing) w.Field("expires_in_ms", expires_in_ms);
  w.EndObject();
  return w.Take();
}

std::string EncodeHeadNotice(int64_t head) {
  JsonWriter w;
  w.BeginObject().Field("v", kVersion).Field("type", "head").Field("head", head).EndObject();
  return w.Take();
}

std::string RetryAfterReason(int64_t retry_after_ms) {
  JsonWriter w;
  w.BeginObject().Field("retry_after_ms", retry_after_ms).EndObject();
  return w.Take();
}

}  // namespace parley::protocol
