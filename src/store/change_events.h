// How the message of an edit / delete / delete-for-me event is built (issue
// 12), shared by both backends (reading the stream) and core (the live
// event), so that an event reads the same live and through sync. Plain
// functions over store/types.h records; safe on any thread.
#pragma once

#include <string>
#include <utility>

#include "common/status.h"
#include "protocol/message_edits.h"
#include "store/types.h"

namespace parley::store {

// The message of a kEdit / kDelete event: the message's identity (ids, client
// id, ts) from its row, the change's own version and time; a kEdit's text is
// the edit's (empty once the message was deleted for everyone), a kDelete's
// is empty.
inline MessageRecord ChangeEventMessage(EventKind kind, const MessageRecord& row, int64_t version, int64_t at,
                                        std::string edit_body) {
  MessageRecord m;
  m.conversation_id = row.conversation_id;
  m.seq = row.seq;
  m.sender_id = row.sender_id;
  m.sender_device_id = row.sender_device_id;
  m.client_id = row.client_id;
  m.created_at = row.created_at;
  m.expires_at = row.expires_at;  // a kDelete at or after it is an expiry
  m.version = version;
  if (kind == EventKind::kEdit) {
    m.body = std::move(edit_body);
    m.edited_at = at;
  } else {
    m.deleted_at = at;
  }
  return m;
}

// A change's decision, the same in both backends (each calls it under the
// write's lock on the message): `m` is the stored row, `hidden_at` when the
// acting user deleted it for themselves (0: not), and for an edit the
// version and time of an earlier edit with the same client id (0: none).
// A refusal comes back as a Status; otherwise result->version, duplicate and
// changed_at are set (a duplicate keeps the time it was first accepted).
inline Status DecideStoredChange(const MessageChange& change, const MessageRecord& m, int64_t hidden_at,
                                 int64_t same_client_version, int64_t same_client_at, ChangeResult* result) {
  const auto kind = static_cast<protocol::ChangeKind>(change.kind);
  if (change.expiry) {
    // The expiry job's delete for everyone (ExpireMessages): no actor rule,
    // no window; one after a delete is a duplicate, as a second delete is.
    result->duplicate = m.deleted_at != 0;
    result->version = result->duplicate ? m.version : m.version + 1;
    result->changed_at = result->duplicate ? m.deleted_at : change.now;
    return Status::Ok();
  }
  protocol::StoredMessageState state;
  state.sender_id = m.sender_id;
  state.created_at = m.created_at;
  state.version = m.version;
  // A message past its expiry is as good as deleted (the expiry step is
  // about to make it a tombstone): no new text for it.
  const bool expired = m.expires_at != 0 && m.expires_at <= change.now;
  state.deleted = m.deleted_at != 0 || (expired && kind == protocol::ChangeKind::kEdit);
  state.hidden = hidden_at != 0;
  if (kind == protocol::ChangeKind::kEdit) state.same_client_id_version = same_client_version;
  protocol::ChangeDecision d = protocol::DecideChange(
      kind, state, change.user_id, change.now, protocol::ChangeWindows{change.edit_window_ms, change.delete_window_ms});
  if (d.code != ErrorCode::kOk) return Status(d.code, protocol::ChangeErrorMessage(d.code));
  result->version = d.version;
  result->duplicate = d.duplicate;
  result->changed_at = !d.duplicate                          ? change.now
                       : kind == protocol::ChangeKind::kEdit   ? same_client_at
                       : kind == protocol::ChangeKind::kDelete ? m.deleted_at
                                                               : hidden_at;
  return Status::Ok();
}

// The stored row after an accepted (not duplicate) edit or delete for
// everyone at `version`: the new text, or a tombstone without any.
inline void ApplyStoredChange(const MessageChange& change, int64_t version, MessageRecord* m) {
  m->version = version;
  if (static_cast<protocol::ChangeKind>(change.kind) == protocol::ChangeKind::kEdit) {
    m->body = change.body;
    m->edited_at = change.now;
  } else {
    m->body.clear();
    m->deleted_at = change.now;
  }
}

// When a message stored at `stored_at` expires (issue 12, retention): the
// conversation's timer (seconds) or the server's maximum age (ms), whichever
// comes first; 0 (never) when neither is set.
inline int64_t ExpiresAt(int64_t stored_at, int64_t disappearing_s, int64_t max_age_ms) {
  int64_t after = disappearing_s > 0 ? disappearing_s * 1000 : 0;
  if (max_age_ms > 0 && (after == 0 || max_age_ms < after)) after = max_age_ms;
  return after > 0 ? stored_at + after : 0;
}

// The delete for everyone that expires a message (ExpireMessages, both
// backends): in the sender's name, with no window.
inline MessageChange ExpiryDelete(ConversationId conversation_id, Seq seq, UserId sender, int64_t now) {
  MessageChange change;
  change.kind = static_cast<int>(protocol::ChangeKind::kDelete);
  change.conversation_id = conversation_id;
  change.seq = seq;
  change.user_id = sender;  // a member (membership never ends today)
  change.now = now;
  change.expiry = true;
  return change;
}

// Whether a delete for everyone of `m` was its expiry (the expiry job
// deletes at or after expires_at; a sender's delete before it is not one).
inline bool DeletedByExpiry(const MessageRecord& m) {
  return m.deleted_at != 0 && m.expires_at != 0 && m.deleted_at >= m.expires_at;
}

// A read at `now` of a message whose expires_at has passed, before the
// expiry step has tombstoned it (it runs every --expiry-interval-ms): shown
// as the tombstone it is about to become, never with its text (core applies
// it to every message it answers with: sync, history, snapshots, lists,
// search). The delete event that follows takes the next version; a delete
// is final on every device, so the two converge.
inline void MaskIfExpired(MessageRecord* m, int64_t now) {
  if (m->expires_at == 0 || m->expires_at > now || m->deleted_at != 0) return;
  m->body.clear();
  m->deleted_at = m->expires_at;
}

// The message of a kDeleteForMe event: which message (the time is the
// event's created_at).
inline MessageRecord HideEventMessage(ConversationId conversation_id, Seq seq) {
  MessageRecord m;
  m.conversation_id = conversation_id;
  m.seq = seq;
  return m;
}

}  // namespace parley::store
