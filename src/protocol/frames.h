// Protocol v1: the client requests Parley understands, decoded and validated.
//
// Every request frame is a JSON object:
//   {"v":1, "id":"<request id>", "type":"<request type>", ...fields}
// The registry below (PARLEY_REQUEST_TYPES) is the single list of request
// types: decoding, dispatch, docs and the authorization tests all enumerate it.
//
// DecodeRequest is strict: unknown types, missing or wrong-typed fields,
// invalid UTF-8 and values outside the limits (protocol/limits.h) are errors
// with a stable code. Unknown extra fields are ignored (forward
// compatibility). Pure functions; safe on any thread.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "common/status.h"

namespace parley::protocol {

// X(enumerator, wire name, needs authentication)
#define PARLEY_REQUEST_TYPES(X)               \
  X(kRegister, "register", false)             \
  X(kLogin, "login", false)                   \
  X(kAuth, "auth", false)                     \
  X(kPing, "ping", false)                     \
  X(kLogout, "logout", true)                  \
  X(kListDevices, "list_devices", true)       \
  X(kUnlinkDevice, "unlink_device", true)     \
  X(kOpenConversation, "open_conversation", true) \
  X(kSend, "send", true)                      \
  X(kReceipt, "receipt", true)                \
  X(kSync, "sync", true)                      \
  X(kAck, "ack", true)                        \
  X(kHistory, "history", true)                \
  X(kSnapshot, "snapshot", true)              \
  X(kSetProfile, "set_profile", true)          \
  X(kAddContact, "add_contact", true)          \
  X(kRemoveContact, "remove_contact", true)    \
  X(kListContacts, "list_contacts", true)      \
  X(kBlock, "block", true)                     \
  X(kUnblock, "unblock", true)                 \
  X(kListBlocked, "list_blocked", true)        \
  X(kSearchUsers, "search_users", true)        \
  X(kListConversations, "list_conversations", true) \
  X(kChangePassword, "change_password", true)  \
  X(kTyping, "typing", true)                   \
  X(kSetAppState, "set_app_state", false)      \
  X(kSetPrivacy, "set_privacy", true)          \
  X(kSubscribePresence, "subscribe_presence", true) \
  X(kMessageInfo, "message_info", true)       \
  X(kRegisterPush, "register_push", true)      \
  X(kUnregisterPush, "unregister_push", true)  \
  X(kMuteConversation, "mute_conversation", true) \
  X(kSetPushPreviews, "set_push_previews", true) \
  X(kPushSettings, "push_settings", true)      \
  X(kEditMessage, "edit_message", true)        \
  X(kDeleteMessage, "delete_message", true)     \
  X(kSetDraft, "set_draft", true)             \
  X(kSearchMessages, "search_messages", true)  \
  X(kSetDisappearing, "set_disappearing", true) \
  X(kSelectSync, "select_sync", true)

enum class RequestType {
#define PARLEY_X(e, name, auth) e,
  PARLEY_REQUEST_TYPES(PARLEY_X)
#undef PARLEY_X
};

std::string_view RequestTypeName(RequestType t);
bool RequestNeedsAuth(RequestType t);
std::optional<RequestType> RequestTypeFromName(std::string_view name);
// Every request type, in registry order.
const std::vector<RequestType>& AllRequestTypes();

struct RegisterRequest {
  std::string username;  // canonical (lower case)
  std::string password;
};
struct LoginRequest {
  std::string username;  // canonical
  std::string password;
  std::string device_name;
  std::string platform;
};
struct AuthRequest {
  std::string token;
};
struct EmptyRequest {};
struct UnlinkDeviceRequest {
  int64_t device_id = 0;
};
struct OpenConversationRequest {
  std::string username;  // canonical
};
struct SendRequest {
  int64_t conversation_id = 0;  // 0: use `to`
  std::string to;               // canonical username; empty: use conversation_id
  std::string client_id;
  std::string body;
};
struct ReceiptItem {
  int64_t conversation_id = 0;
  int64_t delivered = 0;
  int64_t read = 0;
};
struct ReceiptRequest {
  std::vector<ReceiptItem> items;
};
struct SyncRequest {
  std::optional<int64_t> after;  // absent: the device's stored cursor
  int limit = 0;
};
struct AckRequest {
  int64_t user_seq = 0;
};
struct MessageInfoRequest {
  int64_t conversation_id = 0;
  int64_t seq = 0;
};
struct HistoryRequest {
  int64_t conversation_id = 0;
  int64_t before = 0;  // 0: from the newest
  int limit = 0;
};
struct SnapshotRequest {
  int messages = 0;
};
struct SetProfileRequest {
  std::optional<std::string> display_name;
  std::optional<std::string> about;
};
// add_contact, remove_contact, block, unblock: one other user by username.
struct UserRequest {
  std::string username;  // canonical
};
struct SearchUsersRequest {
  std::string query;  // folded (FoldForSearch, common/text_fold.h), trimmed, non-empty
  std::string after;
  int limit = 0;
};
struct ListConversationsRequest {
  int64_t before_activity = 0;
  int64_t before_id = 0;
  int limit = 0;
  int messages = 0;
};
struct TypingRequest {
  int64_t conversation_id = 0;
  bool typing = false;  // "start" (true) or "stop"
};
struct SetAppStateRequest {
  bool foreground = true;  // "foreground" or "background"
};
struct SetPrivacyRequest {
  int presence = 0;  // store::PresenceVisibility: 0 everyone, 1 contacts, 2 nobody
};
struct SubscribePresenceRequest {
  std::vector<int64_t> user_ids;  // distinct, at most kMaxPresenceSubscriptions
};
// Push notifications (issue 11).
struct RegisterPushRequest {
  std::string provider;  // one of kPushProviders (protocol/limits.h)
  std::string token;     // the device's push token or URL
};
struct MuteConversationRequest {
  int64_t conversation_id = 0;
  bool muted = true;
};
struct SetPushPreviewsRequest {
  bool previews = true;
};
// Edits and deletes (issue 12; docs/protocol.md "Edits and deletes").
struct EditMessageRequest {
  int64_t conversation_id = 0;
  int64_t seq = 0;
  std::string client_id;  // the edit's own idempotency id (same rules as send's)
  std::string body;       // the new text
};
// Drafts (issue 12; docs/protocol.md "Drafts"): empty text clears.
struct SetDraftRequest {
  int64_t conversation_id = 0;
  std::string text;
};
// Disappearing messages (issue 12; docs/protocol.md "Disappearing
// messages"): the conversation's timer, 0 = off.
struct SetDisappearingRequest {
  int64_t conversation_id = 0;
  int64_t seconds = 0;  // 0, or in [kMinDisappearingSeconds, kMaxDisappearingSeconds]
};
struct DeleteMessageRequest {
  int64_t conversation_id = 0;
  int64_t seq = 0;
  bool for_everyone = true;  // "for": "everyone" (the sender only) or "me"
};
// Message search (issue 12; docs/protocol.md "search_messages").
struct SearchMessagesRequest {
  std::string query;             // non-empty after trimming; split into words by core
  int64_t conversation_id = 0;   // 0: every conversation of the user
  int64_t before = 0;            // a previous page's `next`; 0: from the newest
  int limit = 0;
};
// Selective sync (issue 12; docs/protocol.md "select_sync"). Exactly one
// form: `all` (back to full sync), `add` (widen the current selection), or a
// new selection of the `recent` most active conversations and/or the listed
// `conversations`.
struct SelectSyncRequest {
  bool all = false;
  int recent = 0;                           // 0..kMaxSyncSelectRecent
  std::vector<int64_t> conversations;       // distinct ids, at most kMaxSyncSelection
  std::vector<int64_t> add;                 // distinct ids, at most kMaxSyncSelection
};
struct ChangePasswordRequest {
  std::string old_password;
  std::string new_password;
};

using RequestBody =
    std::variant<RegisterRequest, LoginRequest, AuthRequest, EmptyRequest, UnlinkDeviceRequest, OpenConversationRequest,
                 SendRequest, ReceiptRequest, SyncRequest, AckRequest, HistoryRequest, SnapshotRequest,
                 SetProfileRequest, UserRequest, SearchUsersRequest, ListConversationsRequest, ChangePasswordRequest,
                 TypingRequest, SetAppStateRequest, SetPrivacyRequest, SubscribePresenceRequest,
                 MessageInfoRequest, RegisterPushRequest, MuteConversationRequest, SetPushPreviewsRequest,
                 EditMessageRequest, DeleteMessageRequest, SetDraftRequest, SearchMessagesRequest,
                 SetDisappearingRequest, SelectSyncRequest>;

struct Request {
  RequestType type = RequestType::kPing;
  // The request id as a JSON token (a quoted string or an integer), echoed
  // in the response: the same JSON value, re-serialised (escapes may be
  // written differently). Empty if absent.
  std::string id_json;
  RequestBody body;
  // Not on the wire: when the server received the frame (ms since the
  // epoch), set by core; 0 when unknown.
  int64_t received_at = 0;
  // Not on the wire: counted among its connection's reads in flight by core
  // (uncounted when answered).
  bool counted_read = false;
};

// The outcome of decoding one frame: a request, or an error to send back
// (with the request id when it could be read, so the client can match it).
struct Decoded {
  Status status;
  std::string id_json;
  std::optional<RequestType> type;  // known even on some errors
  Request request;                  // valid only when status.ok()
};

Decoded DecodeRequest(std::string_view frame);

// Username rules (docs/protocol.md): 3-32 bytes of [a-z0-9_.], starting with
// a letter, case-insensitive. Returns the canonical (lower-case) form, or an
// error kInvalidUsername.
Result<std::string> CanonicalUsername(std::string_view raw);

// What a gateway needs to know of a live `event` frame to route it for a
// selective device: its user seq, whether its kind is conversation-scoped
// and summarised for a conversation the device does not sync in full
// (message, receipt, edit, delete, delete_for_me; not when it lists withheld
// seqs), and that conversation.
struct EventFrameKey {
  int64_t user_seq = 0;
  int64_t conversation_id = 0;
  bool summarisable = false;
};
// Reads the key of an encoded event frame (EncodeEvent); nullopt for any
// other frame. Pure; any thread.
std::optional<EventFrameKey> PeekEventFrame(std::string_view frame);

// Valid UTF-8 (no overlongs, no surrogates)?
bool IsValidUtf8(std::string_view s);
// No control characters (C0 or DEL): names shown in lists (display names).
bool IsPrintable(std::string_view s);

}  // namespace parley::protocol
