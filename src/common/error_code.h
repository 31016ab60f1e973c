// Every error code Parley reports. Each has a stable wire name (used in
// protocol error frames and documented in docs/protocol.md); never renumber
// or rename one, only add.
#pragma once

#include <string_view>

namespace parley {

// X(enumerator, wire name, retryable)
#define PARLEY_ERROR_CODES(X)                                  \
  X(kOk, "ok", false)                                          \
  X(kBadJson, "bad_json", false)                               \
  X(kBadRequest, "bad_request", false)                         \
  X(kUnknownType, "unknown_type", false)                       \
  X(kUnsupportedVersion, "unsupported_version", false)         \
  X(kInvalidUtf8, "invalid_utf8", false)                       \
  X(kFrameTooLarge, "frame_too_large", false)                  \
  X(kBodyTooLarge, "body_too_large", false)                    \
  X(kNotAuthenticated, "not_authenticated", false)             \
  X(kAlreadyAuthenticated, "already_authenticated", false)     \
  X(kBadCredentials, "bad_credentials", false)                 \
  X(kInvalidToken, "invalid_token", false)                     \
  X(kInvalidUsername, "invalid_username", false)               \
  X(kInvalidPassword, "invalid_password", false)               \
  X(kUsernameTaken, "username_taken", false)                   \
  X(kUnknownUser, "unknown_user", false)                       \
  X(kUnknownDevice, "unknown_device", false)                   \
  X(kUnknownConversation, "unknown_conversation", false)       \
  X(kUnknownMessage, "unknown_message", false)                 \
  X(kUserDisabled, "user_disabled", false)                     \
  X(kNotMember, "not_member", false)                           \
  X(kSelfConversation, "self_conversation", false)             \
  X(kSelfContact, "self_contact", false)                       \
  X(kAlreadyContact, "already_contact", false)                 \
  X(kNotContact, "not_contact", false)                         \
  X(kSelfBlock, "self_block", false)                           \
  X(kAlreadyBlocked, "already_blocked", false)                 \
  X(kNotBlocked, "not_blocked", false)                         \
  X(kBlocked, "blocked", false)                                \
  X(kWrongPassword, "wrong_password", false)                   \
  X(kForbidden, "forbidden", false)                            \
  X(kCursorTooOld, "cursor_too_old", false)                    \
  X(kCursorAhead, "cursor_ahead", false)                       \
  X(kRateLimited, "rate_limited", true)                        \
  X(kUnavailable, "unavailable", true)                         \
  X(kShuttingDown, "shutting_down", true)                      \
  X(kStorageFull, "storage_full", true)                        \
  X(kInternal, "internal", true)                               \
  X(kMessageDeleted, "message_deleted", false)                 \
  X(kEditWindowClosed, "edit_window_closed", false)            \
  X(kDeleteWindowClosed, "delete_window_closed", false)

enum class ErrorCode {
#define PARLEY_X(e, name, retry) e,
  PARLEY_ERROR_CODES(PARLEY_X)
#undef PARLEY_X
};

// The wire name, e.g. "not_member".
std::string_view ErrorCodeName(ErrorCode code);
// Whether a client may retry the same request later and expect success.
bool ErrorCodeRetryable(ErrorCode code);

}  // namespace parley
