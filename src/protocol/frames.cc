// Request decoding. simdjson's DOM parser (one per thread, reused) validates
// JSON and UTF-8 in one pass; the per-type decoders below then check fields
// and limits. Errors name the offending field so a client author can fix
// their frame from the message alone.
#include "protocol/frames.h"

#include <limits>

#include <simdjson.h>

#include <algorithm>

#include <fmt/format.h>

#include "common/text_fold.h"
#include "protocol/limits.h"

namespace parley::protocol {

namespace {

struct TypeInfo {
  std::string_view name;
  bool auth;
};
constexpr TypeInfo kTypes[] = {
#define PARLEY_X(e, name, auth) {name, auth},
    PARLEY_REQUEST_TYPES(PARLEY_X)
#undef PARLEY_X
};

using simdjson::dom::element;
using simdjson::dom::object;

Status Bad(std::string msg) { return Status(ErrorCode::kBadRequest, std::move(msg)); }

// Reads field `key` of `obj` as a string of at most `max` bytes.
// Returns kBadRequest when missing (if required) or mistyped.
// Text is stored as such (PostgreSQL's text cannot hold U+0000, SQLite's
// would cut it short in some functions): a NUL is refused in every field, so
// both backends keep exactly what was sent.
Status RefuseNul(std::string_view sv, const char* key) {
  if (sv.find('\0') == std::string_view::npos) return Status::Ok();
  return Bad(fmt::format("field '{}' may not hold U+0000 (NUL)", key));
}

Status GetString(object obj, const char* key, size_t max, bool required, std::string* out) {
  element e;
  if (obj[key].get(e) != simdjson::SUCCESS) {
    return required ? Bad(fmt::format("missing field '{}'", key)) : Status::Ok();
  }
  std::string_view sv;
  if (e.get_string().get(sv) != simdjson::SUCCESS) return Bad(fmt::format("field '{}' must be a string", key));
  if (sv.size() > max) return Bad(fmt::format("field '{}' is longer than {} bytes", key, max));
  if (Status s = RefuseNul(sv, key); !s.ok()) return s;
  out->assign(sv);
  return Status::Ok();
}

// Reads a password being set (register, change_password): too short or too
// long is kInvalidPassword, so that a client can say so at the field.
Status GetNewPassword(object obj, const char* key, std::string* out) {
  if (Status s = GetString(obj, key, std::numeric_limits<size_t>::max(), true, out); !s.ok()) return s;
  if (out->size() < kMinPasswordBytes || out->size() > kMaxPasswordBytes)
    return Status(ErrorCode::kInvalidPassword,
                  fmt::format("password must be {} to {} bytes", kMinPasswordBytes, kMaxPasswordBytes));
  return Status::Ok();
}

// Reads field `key` as an integer in [min, max].
Status GetInt(object obj, const char* key, int64_t min, int64_t max, bool required, std::optional<int64_t>* out) {
  element e;
  if (obj[key].get(e) != simdjson::SUCCESS || e.is_null()) {
    return required ? Bad(fmt::format("missing field '{}'", key)) : Status::Ok();
  }
  int64_t v;
  if (e.get_int64().get(v) != simdjson::SUCCESS) return Bad(fmt::format("field '{}' must be an integer", key));
  if (v < min || v > max) return Bad(fmt::format("field '{}' must be between {} and {}", key, min, max));
  *out = v;
  return Status::Ok();
}

constexpr int64_t kMaxId = (int64_t{1} << 53) - 1;  // exact in JavaScript numbers

Status GetId(object obj, const char* key, bool required, int64_t* out) {
  std::optional<int64_t> v;
  if (Status s = GetInt(obj, key, required ? 1 : 0, kMaxId, required, &v); !s.ok()) return s;
  if (v) *out = *v;
  return Status::Ok();
}

// Reads a required boolean field.
Status GetBool(object obj, const char* key, bool* out) {
  element e;
  if (obj[key].get(e) != simdjson::SUCCESS) return Bad(fmt::format("missing field '{}'", key));
  if (e.get_bool().get(*out) != simdjson::SUCCESS) return Bad(fmt::format("field '{}' must be true or false", key));
  return Status::Ok();
}

Status GetLimit(object obj, int def, int max, int* out) {
  std::optional<int64_t> v;
  if (Status s = GetInt(obj, "limit", 1, max, false, &v); !s.ok()) return s;
  *out = v ? static_cast<int>(*v) : def;
  return Status::Ok();
}

// No control characters (names are shown in lists and notifications).
// Reads a username that names another user: a name that cannot exist is an
// unknown user (kUnknownUser), not a syntax error. Returns the canonical form.
Status GetOtherUsername(object obj, const char* key, std::string* out) {
  std::string raw;
  if (Status s = GetString(obj, key, kMaxUsernameFieldBytes, true, &raw); !s.ok()) return s;
  auto canon = CanonicalUsername(raw);
  if (!canon) return Status(ErrorCode::kUnknownUser, "no such user");
  *out = std::move(*canon);
  return Status::Ok();
}

bool IsClientIdChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

// Reads `client_id` (send's rules) and a non-empty `body` (send and edit).
Status GetClientIdAndBody(object obj, std::string* client_id, std::string* text) {
  if (Status s = GetString(obj, "client_id", kMaxClientIdBytes, true, client_id); !s.ok()) return s;
  if (client_id->empty()) return Bad("field 'client_id' must not be empty");
  for (char c : *client_id)
    if (!IsClientIdChar(c)) return Bad("field 'client_id' may hold only A-Z a-z 0-9 - _");
  element e;
  if (obj["body"].get(e) != simdjson::SUCCESS) return Bad("missing field 'body'");
  std::string_view sv;
  if (e.get_string().get(sv) != simdjson::SUCCESS) return Bad("field 'body' must be a string");
  if (sv.empty()) return Bad("field 'body' must not be empty");
  if (sv.size() > kMaxBodyBytes)
    return Status(ErrorCode::kBodyTooLarge, fmt::format("body is longer than {} bytes", kMaxBodyBytes));
  if (Status s = RefuseNul(sv, "body"); !s.ok()) return s;
  text->assign(sv);
  return Status::Ok();
}

Status DecodeBody(RequestType type, object obj, RequestBody* body) {
  switch (type) {
    case RequestType::kRegister: {
      RegisterRequest r;
      std::string raw;
      if (Status s = GetString(obj, "username", kMaxUsernameFieldBytes, true, &raw); !s.ok()) return s;
      auto canon = CanonicalUsername(raw);
      if (!canon) return canon.error();
      r.username = std::move(*canon);
      if (Status s = GetNewPassword(obj, "password", &r.password); !s.ok()) return s;
      *body = std::move(r);
      return Status::Ok();
    }
    case RequestType::kLogin: {
      LoginRequest r;
      std::string raw;
      if (Status s = GetString(obj, "username", kMaxUsernameFieldBytes, true, &raw); !s.ok()) return s;
      auto canon = CanonicalUsername(raw);
      // An impossible username cannot log in; say so the same way as a wrong password.
      if (!canon) return Status(ErrorCode::kBadCredentials, "wrong username or password");
      r.username = std::move(*canon);
      if (Status s = GetString(obj, "password", kMaxPasswordBytes, true, &r.password); !s.ok()) return s;
      if (Status s = GetString(obj, "device_name", kMaxDeviceNameBytes, false, &r.device_name); !s.ok()) return s;
      if (Status s = GetString(obj, "platform", kMaxPlatformBytes, false, &r.platform); !s.ok()) return s;
      // Shown in device lists, as display names are in user lists.
      if (!IsPrintable(r.device_name)) return Bad("field 'device_name' may not hold control characters");
      if (!IsPrintable(r.platform)) return Bad("field 'platform' may not hold control characters");
      *body = std::move(r);
      return Status::Ok();
    }
    case RequestType::kAuth: {
      AuthRequest r;
      if (Status s = GetString(obj, "token", kMaxTokenBytes, true, &r.token); !s.ok()) return s;
      *body = std::move(r);
      return Status::Ok();
    }
    case RequestType::kPing:
    case RequestType::kLogout:
    case RequestType::kListDevices:
      *body = EmptyRequest{};
      return Status::Ok();
    case RequestType::kUnlinkDevice: {
      UnlinkDeviceRequest r;
      if (Status s = GetId(obj, "device_id", true, &r.device_id); !s.ok()) return s;
      *body = r;
      return Status::Ok();
    }
    case RequestType::kOpenConversation: {
      OpenConversationRequest r;
      if (Status s = GetOtherUsername(obj, "username", &r.username); !s.ok()) return s;
      *body = std::move(r);
      return Status::Ok();
    }
    case RequestType::kSend: {
      SendRequest r;
      if (Status s = GetId(obj, "conversation_id", false, &r.conversation_id); !s.ok()) return s;
      std::string to;
      if (Status s = GetString(obj, "to", kMaxUsernameFieldBytes, false, &to); !s.ok()) return s;
      if (r.conversation_id == 0 && to.empty()) return Bad("one of 'conversation_id' or 'to' is required");
      if (r.conversation_id != 0 && !to.empty()) return Bad("give either 'conversation_id' or 'to', not both");
      if (!to.empty()) {
        auto canon = CanonicalUsername(to);
        if (!canon) return Status(ErrorCode::kUnknownUser, "no such user");
        r.to = std::move(*canon);
      }
      if (Status s = GetClientIdAndBody(obj, &r.client_id, &r.body); !s.ok()) return s;
      *body = std::move(r);
      return Status::Ok();
    }
    case RequestType::kEditMessage: {
      EditMessageRequest r;
      if (Status s = GetId(obj, "conversation_id", true, &r.conversation_id); !s.ok()) return s;
      if (Status s = GetId(obj, "seq", true, &r.seq); !s.ok()) return s;
      if (Status s = GetClientIdAndBody(obj, &r.client_id, &r.body); !s.ok()) return s;
      *body = std::move(r);
      return Status::Ok();
    }
    case RequestType::kSetDisappearing: {
      SetDisappearingRequest r;
      if (Status s = GetId(obj, "conversation_id", true, &r.conversation_id); !s.ok()) return s;
      std::optional<int64_t> seconds;
      if (Status s = GetInt(obj, "seconds", 0, kMaxDisappearingSeconds, true, &seconds); !s.ok()) return s;
      if (*seconds != 0 && *seconds < kMinDisappearingSeconds)
        return Bad(fmt::format("field 'seconds' must be 0 (off) or between {} and {}", kMinDisappearingSeconds,
                               kMaxDisappearingSeconds));
      r.seconds = *seconds;
      *body = r;
      return Status::Ok();
    }
    case RequestType::kSetDraft: {
      SetDraftRequest r;
      if (Status s = GetId(obj, "conversation_id", true, &r.conversation_id); !s.ok()) return s;
      element e;
      if (obj["text"].get(e) != simdjson::SUCCESS) return Bad("missing field 'text'");
      std::string_view sv;
      if (e.get_string().get(sv) != simdjson::SUCCESS) return Bad("field 'text' must be a string");
      // A draft is a message to be: the body's limit.
      if (sv.size() > kMaxBodyBytes)
        return Status(ErrorCode::kBodyTooLarge, fmt::format("text is longer than {} bytes", kMaxBodyBytes));
      if (Status s = RefuseNul(sv, "text"); !s.ok()) return s;
      r.text.assign(sv);
      *body = std::move(r);
      return Status::Ok();
    }
    case RequestType::kDeleteMessage: {
      DeleteMessageRequest r;
      if (Status s = GetId(obj, "conversation_id", true, &r.conversation_id); !s.ok()) return s;
      if (Status s = GetId(obj, "seq", true, &r.seq); !s.ok()) return s;
      std::string scope;
      if (Status s = GetString(obj, "for", kMaxKeywordBytes, true, &scope); !s.ok()) return s;
      if (scope != "everyone" && scope != "me") return Bad("field 'for' must be \"everyone\" or \"me\"");
      r.for_everyone = scope == "everyone";
      *body = r;
      return Status::Ok();
    }
    case RequestType::kReceipt: {
      ReceiptRequest r;
      simdjson::dom::array items;
      if (obj["items"].get(items) != simdjson::SUCCESS) return Bad("field 'items' must be an array");
      if (items.size() == 0) return Bad("field 'items' must not be empty");
      if (items.size() > kMaxReceiptItems) return Bad(fmt::format("at most {} receipt items", kMaxReceiptItems));
      for (element item : items) {
        object io;
        if (item.get(io) != simdjson::SUCCESS) return Bad("each receipt item must be an object");
        ReceiptItem ri;
        if (Status s = GetId(io, "conversation_id", true, &ri.conversation_id); !s.ok()) return s;
        std::optional<int64_t> d, rd;
        if (Status s = GetInt(io, "delivered", 0, kMaxId, false, &d); !s.ok()) return s;
        if (Status s = GetInt(io, "read", 0, kMaxId, false, &rd); !s.ok()) return s;
        if (!d && !rd) return Bad("a receipt item needs 'delivered' or 'read'");
        ri.delivered = d.value_or(0);
        ri.read = rd.value_or(0);
        r.items.push_back(ri);
      }
      *body = std::move(r);
      return Status::Ok();
    }
    case RequestType::kSync: {
      SyncRequest r;
      std::optional<int64_t> after;
      if (Status s = GetInt(obj, "after", 0, kMaxId, false, &after); !s.ok()) return s;
      r.after = after;
      if (Status s = GetLimit(obj, kDefaultSyncLimit, kMaxSyncLimit, &r.limit); !s.ok()) return s;
      *body = r;
      return Status::Ok();
    }
    case RequestType::kMessageInfo: {
      MessageInfoRequest r;
      if (Status s = GetId(obj, "conversation_id", true, &r.conversation_id); !s.ok()) return s;
      if (Status s = GetId(obj, "seq", true, &r.seq); !s.ok()) return s;
      *body = r;
      return Status::Ok();
    }
    case RequestType::kAck: {
      AckRequest r;
      std::optional<int64_t> v;
      if (Status s = GetInt(obj, "user_seq", 0, kMaxId, true, &v); !s.ok()) return s;
      r.user_seq = *v;
      *body = r;
      return Status::Ok();
    }
    case RequestType::kHistory: {
      HistoryRequest r;
      if (Status s = GetId(obj, "conversation_id", true, &r.conversation_id); !s.ok()) return s;
      std::optional<int64_t> before;
      if (Status s = GetInt(obj, "before", 0, kMaxId, false, &before); !s.ok()) return s;
      r.before = before.value_or(0);
      if (Status s = GetLimit(obj, kDefaultHistoryLimit, kMaxHistoryLimit, &r.limit); !s.ok()) return s;
      *body = r;
      return Status::Ok();
    }
    case RequestType::kSnapshot: {
      SnapshotRequest r;
      std::optional<int64_t> m;
      if (Status s = GetInt(obj, "messages", 0, kMaxSnapshotMessages, false, &m); !s.ok()) return s;
      r.messages = m ? static_cast<int>(*m) : kDefaultSnapshotMessages;
      *body = r;
      return Status::Ok();
    }
    case RequestType::kSetProfile: {
      SetProfileRequest r;
      std::string v;
      element e;
      if (obj["display_name"].get(e) == simdjson::SUCCESS) {
        if (Status s = GetString(obj, "display_name", kMaxDisplayNameBytes, true, &v); !s.ok()) return s;
        if (!IsPrintable(v)) return Bad("field 'display_name' may not hold control characters");
        r.display_name = v;
      }
      if (obj["about"].get(e) == simdjson::SUCCESS) {
        if (Status s = GetString(obj, "about", kMaxAboutBytes, true, &v); !s.ok()) return s;
        if (!IsPrintable(v)) return Bad("field 'about' may not hold control characters");
        r.about = v;
      }
      if (!r.display_name && !r.about) return Bad("give 'display_name', 'about' or both");
      *body = std::move(r);
      return Status::Ok();
    }
    case RequestType::kAddContact:
    case RequestType::kRemoveContact:
    case RequestType::kBlock:
    case RequestType::kUnblock: {
      UserRequest r;
      if (Status s = GetOtherUsername(obj, "username", &r.username); !s.ok()) return s;
      *body = std::move(r);
      return Status::Ok();
    }
    case RequestType::kListContacts:
    case RequestType::kListBlocked:
      *body = EmptyRequest{};
      return Status::Ok();
    case RequestType::kSearchUsers: {
      SearchUsersRequest r;
      std::string q;
      if (Status s = GetString(obj, "query", kMaxSearchQueryBytes, true, &q); !s.ok()) return s;
      // Folded as the store folds display-name words (store/name_words.h).
      // Folding may lengthen text (NFKC expands some characters): the result
      // is cut back to the limit at a character boundary, which only widens
      // a prefix match.
      q = FoldForSearch(q);
      if (q.size() > kMaxSearchQueryBytes) {
        size_t n = kMaxSearchQueryBytes;
        while (n > 0 && (static_cast<unsigned char>(q[n]) & 0xC0) == 0x80) --n;
        q.resize(n);
      }
      while (!q.empty() && q.back() == ' ') q.pop_back();
      while (!q.empty() && q.front() == ' ') q.erase(q.begin());
      if (q.empty()) return Bad("field 'query' must not be empty");
      r.query = std::move(q);
      if (Status s = GetString(obj, "after", kMaxUsernameBytes, false, &r.after); !s.ok()) return s;
      if (Status s = GetLimit(obj, kDefaultSearchLimit, kMaxSearchLimit, &r.limit); !s.ok()) return s;
      *body = std::move(r);
      return Status::Ok();
    }
    case RequestType::kSearchMessages: {
      SearchMessagesRequest r;
      if (Status s = GetString(obj, "query", kMaxMessageSearchQueryBytes, true, &r.query); !s.ok()) return s;
      if (r.query.find_first_not_of(" \t\r\n") == std::string::npos) return Bad("field 'query' must not be empty");
      std::optional<int64_t> conversation, before;
      if (Status s = GetInt(obj, "conversation_id", 0, kMaxId, false, &conversation); !s.ok()) return s;
      if (Status s = GetInt(obj, "before", 0, kMaxId, false, &before); !s.ok()) return s;
      r.conversation_id = conversation.value_or(0);
      r.before = before.value_or(0);
      if (Status s = GetLimit(obj, kDefaultMessageSearchLimit, kMaxMessageSearchLimit, &r.limit); !s.ok()) return s;
      *body = std::move(r);
      return Status::Ok();
    }
    case RequestType::kListConversations: {
      ListConversationsRequest r;
      std::optional<int64_t> ba, bi, m;
      if (Status s = GetInt(obj, "before_activity", 0, kMaxId, false, &ba); !s.ok()) return s;
      if (Status s = GetInt(obj, "before_id", 0, kMaxId, false, &bi); !s.ok()) return s;
      if (Status s = GetInt(obj, "messages", 0, kMaxSnapshotMessages, false, &m); !s.ok()) return s;
      r.before_activity = ba.value_or(0);
      r.before_id = bi.value_or(0);
      r.messages = m ? static_cast<int>(*m) : kDefaultPreviewMessages;
      if (Status s = GetLimit(obj, kDefaultConversationsLimit, kMaxConversationsLimit, &r.limit); !s.ok()) return s;
      *body = r;
      return Status::Ok();
    }
    case RequestType::kTyping: {
      TypingRequest r;
      if (Status s = GetId(obj, "conversation_id", true, &r.conversation_id); !s.ok()) return s;
      std::string state;
      if (Status s = GetString(obj, "state", kMaxKeywordBytes, true, &state); !s.ok()) return s;
      if (state != "start" && state != "stop") return Bad("field 'state' must be \"start\" or \"stop\"");
      r.typing = state == "start";
      *body = r;
      return Status::Ok();
    }
    case RequestType::kSetAppState: {
      SetAppStateRequest r;
      std::string state;
      if (Status s = GetString(obj, "state", kMaxKeywordBytes, true, &state); !s.ok()) return s;
      if (state != "foreground" && state != "background")
        return Bad("field 'state' must be \"foreground\" or \"background\"");
      r.foreground = state == "foreground";
      *body = r;
      return Status::Ok();
    }
    case RequestType::kSetPrivacy: {
      SetPrivacyRequest r;
      std::string presence;
      if (Status s = GetString(obj, "presence", kMaxKeywordBytes, true, &presence); !s.ok()) return s;
      if (presence == "everyone") r.presence = 0;
      else if (presence == "contacts") r.presence = 1;
      else if (presence == "nobody") r.presence = 2;
      else return Bad("field 'presence' must be \"everyone\", \"contacts\" or \"nobody\"");
      *body = r;
      return Status::Ok();
    }
    case RequestType::kSubscribePresence: {
      SubscribePresenceRequest r;
      simdjson::dom::array ids;
      if (obj["user_ids"].get(ids) != simdjson::SUCCESS) return Bad("field 'user_ids' must be an array");
      if (ids.size() > kMaxPresenceSubscriptions)
        return Bad(fmt::format("at most {} users in 'user_ids'", kMaxPresenceSubscriptions));
      for (element e : ids) {
        int64_t id = 0;
        if (e.get_int64().get(id) != simdjson::SUCCESS || id < 1 || id > kMaxId)
          return Bad("each of 'user_ids' must be a user id (a positive integer)");
        if (std::find(r.user_ids.begin(), r.user_ids.end(), id) == r.user_ids.end()) r.user_ids.push_back(id);
      }
      *body = std::move(r);
      return Status::Ok();
    }
    case RequestType::kSelectSync: {
      SelectSyncRequest r;
      element e;
      const bool has_all = obj["all"].get(e) == simdjson::SUCCESS;
      const bool has_recent = obj["recent"].get(e) == simdjson::SUCCESS;
      const bool has_list = obj["conversations"].get(e) == simdjson::SUCCESS;
      const bool has_add = obj["add"].get(e) == simdjson::SUCCESS;
      if (has_all + (has_recent || has_list) + has_add != 1)
        return Bad("give exactly one of 'all', 'add', or 'recent' and/or 'conversations'");
      if (has_all) {
        if (Status s = GetBool(obj, "all", &r.all); !s.ok()) return s;
        if (!r.all) return Bad("field 'all' must be true (to select again, give 'recent' and/or 'conversations')");
      }
      if (has_recent) {
        std::optional<int64_t> n;
        if (Status s = GetInt(obj, "recent", 0, kMaxSyncSelectRecent, true, &n); !s.ok()) return s;
        r.recent = static_cast<int>(*n);
      }
      // A list of distinct conversation ids (a repeated id is a client bug:
      // refused rather than silently merged, so the client learns of it).
      auto ids = [&](const char* key, std::vector<int64_t>* out) -> Status {
        simdjson::dom::array a;
        if (obj[key].get(a) != simdjson::SUCCESS) return Bad(fmt::format("field '{}' must be an array", key));
        if (a.size() > kMaxSyncSelection)
          return Bad(fmt::format("at most {} conversations in '{}'", kMaxSyncSelection, key));
        for (element x : a) {
          int64_t id = 0;
          if (x.get_int64().get(id) != simdjson::SUCCESS || id < 1 || id > kMaxId)
            return Bad(fmt::format("each of '{}' must be a conversation id (a positive integer)", key));
          if (std::find(out->begin(), out->end(), id) != out->end())
            return Bad(fmt::format("conversation {} is listed twice in '{}'", id, key));
          out->push_back(id);
        }
        return Status::Ok();
      };
      if (has_list) {
        if (Status s = ids("conversations", &r.conversations); !s.ok()) return s;
      }
      if (has_add) {
        if (Status s = ids("add", &r.add); !s.ok()) return s;
        if (r.add.empty()) return Bad("field 'add' must not be empty");
      }
      *body = std::move(r);
      return Status::Ok();
    }
    case RequestType::kRegisterPush: {
      RegisterPushRequest r;
      if (Status st = GetString(obj, "provider", kMaxKeywordBytes, true, &r.provider); !st.ok()) return st;
      bool known = false;
      for (const char* p : kPushProviders) known = known || r.provider == p;
      if (!known) return Bad("field 'provider' must be one of \"webhook\", \"apns\", \"fcm\"");
      if (Status st = GetString(obj, "token", kMaxPushTokenBytes, true, &r.token); !st.ok()) return st;
      if (r.token.empty()) return Bad("field 'token' must not be empty");
      for (char c : r.token)
        if (static_cast<unsigned char>(c) <= 0x20 || static_cast<unsigned char>(c) >= 0x7f)
          return Bad("field 'token' may hold only printable ASCII without spaces");
      *body = std::move(r);
      return Status::Ok();
    }
    case RequestType::kUnregisterPush:
    case RequestType::kPushSettings:
      *body = EmptyRequest{};
      return Status::Ok();
    case RequestType::kMuteConversation: {
      MuteConversationRequest r;
      if (Status st = GetId(obj, "conversation_id", true, &r.conversation_id); !st.ok()) return st;
      if (Status st = GetBool(obj, "muted", &r.muted); !st.ok()) return st;
      *body = r;
      return Status::Ok();
    }
    case RequestType::kSetPushPreviews: {
      SetPushPreviewsRequest r;
      if (Status st = GetBool(obj, "previews", &r.previews); !st.ok()) return st;
      *body = r;
      return Status::Ok();
    }
    case RequestType::kChangePassword: {
      ChangePasswordRequest r;
      if (Status s = GetString(obj, "old_password", kMaxPasswordBytes, true, &r.old_password); !s.ok()) return s;
      if (Status s = GetNewPassword(obj, "new_password", &r.new_password); !s.ok()) return s;
      *body = std::move(r);
      return Status::Ok();
    }
  }
  return Status(ErrorCode::kInternal, "unhandled request type");
}

}  // namespace

std::string_view RequestTypeName(RequestType t) { return kTypes[static_cast<int>(t)].name; }
bool RequestNeedsAuth(RequestType t) { return kTypes[static_cast<int>(t)].auth; }

std::optional<RequestType> RequestTypeFromName(std::string_view name) {
  for (size_t i = 0; i < std::size(kTypes); ++i)
    if (kTypes[i].name == name) return static_cast<RequestType>(i);
  return std::nullopt;
}

const std::vector<RequestType>& AllRequestTypes() {
  static const std::vector<RequestType> all = [] {
    std::vector<RequestType> v;
    for (size_t i = 0; i < std::size(kTypes); ++i) v.push_back(static_cast<RequestType>(i));
    return v;
  }();
  return all;
}

bool IsValidUtf8(std::string_view s) { return simdjson::validate_utf8(s); }

bool IsPrintable(std::string_view s) {
  for (char c : s)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) return false;
  return true;
}

Result<std::string> CanonicalUsername(std::string_view raw) {
  if (raw.size() < kMinUsernameBytes || raw.size() > kMaxUsernameBytes)
    return Status(ErrorCode::kInvalidUsername,
                  fmt::format("username must be {} to {} characters", kMinUsernameBytes, kMaxUsernameBytes));
  std::string out;
  out.reserve(raw.size());
  for (char c : raw) {
    char l = (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
    bool ok = (l >= 'a' && l <= 'z') || (l >= '0' && l <= '9') || l == '_' || l == '.';
    if (!ok) return Status(ErrorCode::kInvalidUsername, "username may hold only letters, digits, '_' and '.'");
    out.push_back(l);
  }
  if (!(out[0] >= 'a' && out[0] <= 'z')) return Status(ErrorCode::kInvalidUsername, "username must start with a letter");
  return out;
}

std::optional<EventFrameKey> PeekEventFrame(std::string_view frame) {
  // A frame of our own encoder, so it is valid JSON; anything unexpected is
  // "not an event" and passes through unchanged.
  thread_local simdjson::dom::parser parser;
  element root;
  if (parser.parse(frame.data(), frame.size(), true).get(root) != simdjson::SUCCESS) return std::nullopt;
  std::string_view type;
  if (root["type"].get_string().get(type) != simdjson::SUCCESS || type != "event") return std::nullopt;
  object ev;
  if (root["event"].get(ev) != simdjson::SUCCESS) return std::nullopt;
  EventFrameKey key;
  std::string_view kind;
  if (ev["user_seq"].get_int64().get(key.user_seq) != simdjson::SUCCESS) return std::nullopt;
  if (ev["kind"].get_string().get(kind) != simdjson::SUCCESS) return std::nullopt;
  key.summarisable =
      kind == "message" || kind == "receipt" || kind == "edit" || kind == "delete" || kind == "delete_for_me";
  auto conversation = kind == "message" ? ev["message"]["conversation_id"] : ev["conversation_id"];
  if (conversation.get_int64().get(key.conversation_id) != simdjson::SUCCESS) key.conversation_id = 0;
  if (key.conversation_id == 0) key.summarisable = false;
  // An event that lists withheld seqs goes in full (SummarisedInSelectiveSync).
  if (ev["withheld"].error() == simdjson::SUCCESS) key.summarisable = false;
  return key;
}

Decoded DecodeRequest(std::string_view frame) {
  Decoded d;
  thread_local simdjson::dom::parser parser;
  element root;
  if (auto err = parser.parse(frame.data(), frame.size(), true).get(root); err != simdjson::SUCCESS) {
    if (err == simdjson::UTF8_ERROR || !IsValidUtf8(frame)) {
      d.status = Status(ErrorCode::kInvalidUtf8, "frame is not valid UTF-8");
    } else if (err == simdjson::STRING_ERROR) {
      // simdjson refuses an escape that decodes to no Unicode scalar value
      // (a lone UTF-16 surrogate such as \udc00 or \ud800\u0041), so no
      // decoded string is ever invalid UTF-8 (tests/protocol/frames_test.cc).
      d.status = Status(ErrorCode::kBadJson,
                        "frame is not valid JSON: a string holds a bad escape (\\u escapes must encode Unicode "
                        "characters; a lone UTF-16 surrogate such as \\udc00 is refused)");
    } else {
      d.status = Status(ErrorCode::kBadJson, fmt::format("frame is not valid JSON: {}", simdjson::error_message(err)));
    }
    return d;
  }
  object obj;
  if (root.get(obj) != simdjson::SUCCESS) {
    d.status = Status(ErrorCode::kBadJson, "frame must be a JSON object");
    return d;
  }
  // The id first, so that every later error can carry it.
  element id;
  if (obj["id"].get(id) == simdjson::SUCCESS) {
    std::string_view sid;
    int64_t iid;
    if (id.get_string().get(sid) == simdjson::SUCCESS && sid.size() <= kMaxRequestIdBytes) {
      d.id_json = simdjson::minify(id);
    } else if (id.get_int64().get(iid) == simdjson::SUCCESS && iid >= 0) {
      d.id_json = std::to_string(iid);
    } else {
      d.status = Bad(fmt::format("'id' must be a string of at most {} bytes or a non-negative integer", kMaxRequestIdBytes));
      return d;
    }
  }
  // The type next (before the version check), so errors can name it.
  std::string_view type_name;
  bool has_type = obj["type"].get_string().get(type_name) == simdjson::SUCCESS;
  std::optional<RequestType> type = has_type ? RequestTypeFromName(type_name) : std::nullopt;
  d.type = type;
  int64_t v;
  element ve;
  if (obj["v"].get(ve) != simdjson::SUCCESS) {
    d.status = Bad("missing field 'v' (protocol version)");
    return d;
  }
  if (ve.get_int64().get(v) != simdjson::SUCCESS || v != kVersion) {
    d.status = Status(ErrorCode::kUnsupportedVersion, fmt::format("this server speaks protocol version {}", kVersion));
    return d;
  }
  if (!has_type) {
    d.status = Bad("missing or non-string field 'type'");
    return d;
  }
  if (!type) {
    d.status = Status(ErrorCode::kUnknownType, type_name.size() <= 64 ? fmt::format("unknown request type '{}'", type_name)
                                                          : std::string("unknown request type"));
    return d;
  }
  if (d.id_json.empty()) {
    d.status = Bad("missing field 'id' (request id)");
    return d;
  }
  // Checked after the id and type are known (the WebSocket layer already
  // capped the frame at kHardMaxFrameBytes), so the client can match the error.
  if (frame.size() > kMaxFrameBytes) {
    d.status = Status(ErrorCode::kFrameTooLarge, fmt::format("frame is larger than {} bytes", kMaxFrameBytes));
    return d;
  }
  d.request.type = *type;
  d.request.id_json = d.id_json;
  d.status = DecodeBody(*type, obj, &d.request.body);
  return d;
}

}  // namespace parley::protocol
