// How the message of an edit / delete / delete-for-me event is built (issue
// 12), shared by both backends (reading the stream) and core (the live
// event), so that an event reads the same live and through sync. Plain
// functions over store/types.h records; safe on any thread.
#pragma once

#include <string>
#include <utility>

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
  m.version = version;
  if (kind == EventKind::kEdit) {
    m.body = std::move(edit_body);
    m.edited_at = at;
  } else {
    m.deleted_at = at;
  }
  return m;
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
