// Edits and deletes (issue 12): the conflict rules, as two pure functions
// that every party uses, so that the server and every device agree by
// construction (docs/protocol.md, "Edits and deletes"):
//
//   DecideChange  — the server: may this edit / delete / delete-for-me be
//                   applied to the message as stored, and with which
//                   version? Both store backends call it inside the write
//                   transaction that holds the message, so "server order"
//                   is the store's commit order, never a client's clock.
//   ApplyChange   — a device: fold an edit or delete event (or a message
//                   object read later from history or a snapshot) into its
//                   local copy. The result does not depend on the order in
//                   which the events arrive: a delete is final and dominates
//                   everything, otherwise the highest version wins.
//
// Versions: a message is version 0 when sent; each accepted edit takes the
// next version, in server order; a delete for everyone takes the next one
// after that and is the last (nothing is accepted after it). Delete-for-me
// does not change the message (it hides it from one user's view) and takes
// no version.
//
// Header-only, no dependencies beyond the standard library and the error
// codes, so the store backends and the SDK use it without linking the
// protocol library. Pure functions; safe on any thread.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>

#include "common/error_code.h"

namespace parley::protocol {

enum class ChangeKind : int {
  kEdit = 1,         // new text, by the sender, within the edit window
  kDelete = 2,       // delete for everyone: by the sender, within the delete window; leaves a tombstone
  kDeleteForMe = 3,  // hide from the acting user's own view (all of their devices); any member, any time
};

// The windows the server enforces, in milliseconds after the message was
// stored (its `ts`). A change is accepted while now - ts <= window.
// Defaults as WhatsApp: edit 15 minutes, delete for everyone 48 hours
// (parleyd --edit-window-ms, --delete-window-ms; docs/operations.md).
struct ChangeWindows {
  static constexpr int64_t kDefaultEditWindowMs = 15 * 60 * 1000;
  static constexpr int64_t kDefaultDeleteWindowMs = 48 * 60 * 60 * 1000;
  int64_t edit_ms = kDefaultEditWindowMs;
  int64_t delete_ms = kDefaultDeleteWindowMs;
};

// What the server knows about the message when a change arrives.
struct StoredMessageState {
  int64_t sender_id = 0;
  int64_t created_at = 0;       // the message's ts
  int64_t version = 0;          // 0: never edited
  bool deleted = false;         // deleted for everyone (a tombstone)
  bool hidden = false;          // kDeleteForMe: the acting user already hid it
  // kEdit: the version an earlier edit of this message with the same client
  // id took (0: none). A retry gets that answer back, whatever happened since.
  int64_t same_client_id_version = 0;
};

struct ChangeDecision {
  ErrorCode code = ErrorCode::kOk;  // kOk: accepted (or a duplicate)
  bool duplicate = false;           // accepted before: nothing new is stored
  int64_t version = 0;              // the change's version (kEdit, kDelete); the message's (kDeleteForMe)
};

// The server's rule, in this order: only the sender edits or deletes for
// everyone (kForbidden); a retry of an accepted change is a duplicate (an
// edit's client id; a second delete for everyone; a second delete-for-me);
// nothing is accepted after a delete for everyone (kMessageDeleted; a
// delete-for-me of a tombstone is fine); then the windows
// (kEditWindowClosed, kDeleteWindowClosed).
inline ChangeDecision DecideChange(ChangeKind kind, const StoredMessageState& m, int64_t actor, int64_t now,
                                   const ChangeWindows& windows) {
  ChangeDecision d;
  switch (kind) {
    case ChangeKind::kEdit:
      if (actor != m.sender_id) return {ErrorCode::kForbidden, false, 0};
      if (m.same_client_id_version > 0) return {ErrorCode::kOk, true, m.same_client_id_version};
      if (m.deleted) return {ErrorCode::kMessageDeleted, false, 0};
      if (now - m.created_at > windows.edit_ms) return {ErrorCode::kEditWindowClosed, false, 0};
      d.version = m.version + 1;
      return d;
    case ChangeKind::kDelete:
      if (actor != m.sender_id) return {ErrorCode::kForbidden, false, 0};
      if (m.deleted) return {ErrorCode::kOk, true, m.version};
      if (now - m.created_at > windows.delete_ms) return {ErrorCode::kDeleteWindowClosed, false, 0};
      d.version = m.version + 1;
      return d;
    case ChangeKind::kDeleteForMe:
      d.duplicate = m.hidden;
      d.version = m.version;
      return d;
  }
  return {ErrorCode::kInternal, false, 0};
}

// The human-readable message of a refusal by DecideChange.
inline const char* ChangeErrorMessage(ErrorCode code) {
  switch (code) {
    case ErrorCode::kForbidden: return "only the sender can edit a message or delete it for everyone";
    case ErrorCode::kMessageDeleted: return "the message was deleted for everyone; it cannot change any more";
    case ErrorCode::kEditWindowClosed: return "the time for editing this message is over";
    case ErrorCode::kDeleteWindowClosed: return "the time for deleting this message for everyone is over";
    default: return "the change was refused";
  }
}

// A device's copy of one message, as far as edits and deletes go.
struct LocalMessageState {
  std::string body;
  int64_t version = 0;
  bool deleted = false;
  int64_t edited_at = 0;  // time of the edit that set `body` (0: the original)
};

// One edit or delete for everyone as a device receives it (an `edit` or
// `delete` event, or a message object with its `version` / `deleted`).
struct ReceivedChange {
  bool deleted = false;  // a delete (or a tombstone)
  int64_t version = 0;
  std::string body;      // an edit's text
  int64_t at = 0;        // an edit's edited_at
};

// Folds `change` into `state`. Returns true if `state` changed. Order-free:
// a delete is final (nothing changes a deleted message; a delete empties the
// body whatever came before); among edits the highest version wins and an
// older or equal one is ignored (an edit that arrives after the delete, or
// after a newer edit, changes nothing).
inline bool ApplyChange(LocalMessageState& state, const ReceivedChange& change) {
  if (state.deleted) {
    state.version = std::max(state.version, change.version);
    return false;
  }
  if (change.deleted) {
    state.deleted = true;
    state.body.clear();
    state.version = std::max(state.version, change.version);
    return true;
  }
  if (change.version <= state.version) return false;
  state.body = change.body;
  state.version = change.version;
  state.edited_at = change.at;
  return true;
}

}  // namespace parley::protocol
