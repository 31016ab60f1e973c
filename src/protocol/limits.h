// Protocol limits: every one is named here and documented in docs/protocol.md
// ("Limits"). Servers announce the effective values in the auth response.
#pragma once

#include <cstddef>
#include <cstdint>

namespace parley::protocol {

inline constexpr int kVersion = 1;

// A frame larger than this gets a `frame_too_large` error; the connection
// stays. Room for any valid request: see the static_assert below.
inline constexpr size_t kMaxFrameBytes = 128 * 1024;
// A frame larger than this is a protocol violation: the WebSocket closes (1009).
inline constexpr size_t kHardMaxFrameBytes = 1024 * 1024;
// Message body, in bytes of UTF-8.
inline constexpr size_t kMaxBodyBytes = 16 * 1024;
// JSON escapes a control character in 6 bytes (\u0001): a valid body of
// kMaxBodyBytes control characters, in a send, edit or set_draft, must not be
// refused as frame_too_large.
inline constexpr size_t kMaxEscapedBytesPerByte = 6;
static_assert(kMaxFrameBytes >= kMaxEscapedBytesPerByte * kMaxBodyBytes + 4096,
              "a frame must hold the largest valid body escaped, with the request's other fields");
inline constexpr size_t kMaxClientIdBytes = 64;
inline constexpr size_t kMaxRequestIdBytes = 64;
inline constexpr size_t kMinUsernameBytes = 3;
inline constexpr size_t kMaxUsernameBytes = 32;
// A username field (`username` of register, login, add_contact, block, ...;
// send's `to`): longer is `bad_request`. Shorter but breaking the username
// rules is `invalid_username` (register), `bad_credentials` (login) or
// `unknown_user` (naming another user: no such user can exist), so neither
// answer depends on blocks.
inline constexpr size_t kMaxUsernameFieldBytes = 256;
inline constexpr size_t kMinPasswordBytes = 8;
inline constexpr size_t kMaxPasswordBytes = 1024;
inline constexpr size_t kMaxDeviceNameBytes = 64;
// A field whose value is one of a few words (typing `state`, `set_app_state`
// `state`, `set_privacy` `presence`, `delete_message` `for`, push `provider`):
// longer is refused before it is compared.
inline constexpr size_t kMaxKeywordBytes = 32;
inline constexpr size_t kMaxPlatformBytes = 32;
inline constexpr size_t kMaxTokenBytes = 128;
// Receipt items in one `receipt` request.
inline constexpr size_t kMaxReceiptItems = 256;
// Events per `sync` page: the default and the most a client may ask for.
inline constexpr int kDefaultSyncLimit = 200;
inline constexpr int kMaxSyncLimit = 1000;
// Messages per `history` page.
inline constexpr int kDefaultHistoryLimit = 50;
inline constexpr int kMaxHistoryLimit = 200;
// Newest messages per conversation in a `snapshot`.
inline constexpr int kDefaultSnapshotMessages = 20;
inline constexpr int kMaxSnapshotMessages = 100;
// The most bytes the items of one paged answer (sync, history, snapshot,
// list_conversations) take, encoded: a page that would be larger holds fewer
// events or messages (docs/protocol.md "Limits"), so that every answer fits
// the connection's outbound queue (the server uses a quarter of
// --max-outbound-queue-bytes when that is smaller). Any one event fits:
// at least one is always sent, so the cursor moves.
inline constexpr size_t kMaxPageBytes = 1024 * 1024;
// Reads one connection may have waiting for their answers (sync, history,
// snapshot, the list and search requests: docs/protocol.md "Limits"); one
// more is refused with `rate_limited` and kReadsInFlightRetryAfterMs, so
// that a client pipelining reads at wire speed cannot grow the server's
// read queue without bound. A client that waits for each answer, as the SDK
// and the web client do, never meets it.
inline constexpr int kMaxReadsInFlight = 32;
inline constexpr int64_t kReadsInFlightRetryAfterMs = 100;

// Profiles.
inline constexpr size_t kMaxDisplayNameBytes = 64;
inline constexpr size_t kMaxAboutBytes = 140;
// User search: query length, and results per page.
inline constexpr size_t kMaxSearchQueryBytes = 64;
inline constexpr int kDefaultSearchLimit = 20;
inline constexpr int kMaxSearchLimit = 50;
// Message search (search_messages): query length, words per query, results
// per page. Each word is matched as a prefix of the message's words; more
// words narrow the search, so 8 is plenty and bounds the index lookups.
inline constexpr size_t kMaxMessageSearchQueryBytes = 256;
inline constexpr size_t kMaxMessageSearchWords = 8;
inline constexpr int kDefaultMessageSearchLimit = 20;
inline constexpr int kMaxMessageSearchLimit = 50;
// Disappearing messages (set_disappearing, issue 12): the timer in seconds;
// 0 turns it off, otherwise it must lie in [kMin, kMax] (one year at most).
inline constexpr int64_t kMinDisappearingSeconds = 1;
inline constexpr int64_t kMaxDisappearingSeconds = 365LL * 24 * 60 * 60;
// Conversation list page size.
inline constexpr int kDefaultConversationsLimit = 50;
inline constexpr int kMaxConversationsLimit = 200;
// Users one device may watch the presence of (one `subscribe_presence`).
inline constexpr size_t kMaxPresenceSubscriptions = 256;
// Newest messages per conversation in a conversation-list page (previews).
inline constexpr int kDefaultPreviewMessages = 1;

// Selective sync (select_sync, issue 12 item 3): the most recently active
// conversations a device may ask for by count, and the most conversations
// one session's selection may hold in all (the recent ones and the listed
// ones together). Bounded so that checking a selection against a page stays
// a small set lookup and resolving it reads a bounded conversation list.
inline constexpr int kMaxSyncSelectRecent = 100;
inline constexpr size_t kMaxSyncSelection = 256;

// Push notifications (issue 11): the providers a device may name in
// `register_push`, and the longest token (or URL) it may register.
inline constexpr const char* kPushProviders[] = {"webhook", "apns", "fcm"};
inline constexpr size_t kMaxPushTokenBytes = 1024;

}  // namespace parley::protocol
