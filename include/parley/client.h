// parley::Client — the SDK's client layer: one device of one user, kept
// connected to parleyd, with a local SQLite cache and a durable outbox.
// Full description: docs/sdk.md.
//
// What it does:
//  - connects and authenticates with a device token (Client::Login makes one);
//    reconnects on its own after any disconnect, with exponential backoff and
//    full jitter, honouring the server's retry_after_ms (parley/backoff.h);
//    close 4002 or an `invalid_token` answer stop it for good (state kRevoked);
//    a disabled account (close 4005, `user_disabled`) waits in kDisabled and
//    keeps trying at the server's pace until the operator enables it;
//  - resumes from the device's cursor: after each auth it loops `sync` from
//    the last applied user seq (a new cache starts from a `snapshot`), and
//    applies live events by user seq, dropping what it already has and
//    syncing on a gap, so every event is applied exactly once, in order;
//  - keeps a local cache (conversations, messages, receipts, the cursor) in
//    one SQLite file; an event and the cursor move in the same transaction;
//  - keeps a durable outbox in the same file: Compose stores the message with
//    a fresh client id before anything goes on the wire; messages are sent in
//    compose order per peer (one in flight per peer, so a retryable failure
//    can never reorder them), retried with the same client id after any
//    failure, across reconnects and client restarts; a message still unsent
//    after options.outbox_max_age_ms (default kDefaultOutboxMaxAgeMs, 30 days)
//    is marked failed and reported;
//  - reports per-message status: pending -> sent -> delivered -> read (or
//    failed), through on_status;
//  - reports `delivered` for received messages as soon as they are stored
//    (options.auto_report_delivered), and `read` when told (MarkRead); a
//    receipt the server refuses retryably is reported again after its
//    retry-after, and one lost with the connection on the next connection;
//  - keeps the user's draft of each conversation (docs/protocol.md,
//    set_draft): SetDraft stores it locally at once (works offline) and the
//    worker saves it on the server, debounced and coalesced per peer (one
//    set_draft in flight per peer, the newest local text sent last); drafts
//    saved on the user's other devices arrive through `draft` events and the
//    snapshot (on_draft_changed).
// What it is not: a UI; group chats (the protocol is 1:1 today).
//
// Threading and ownership: a Client owns one worker thread (started by
// Start, joined by Stop and the destructor) and, while connected, one
// parley::Connection. Every public method is thread-safe. Callbacks
// (on_status, on_event, on_state) run on the worker thread, one at a time, in
// the order things happened; they may call Compose, MarkRead and the cache
// queries, but must not call Request, History or the Wait* methods (those
// wait for the worker) and must not destroy the Client. Callbacks must be set
// in ClientOptions before Open. No Boost types appear in this header.
//
// Errors: methods that can fail return a Reply-like result with a stable
// `code` (the server's error codes from docs/protocol.md, plus the local ones
// below) and a human-readable `message`.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "parley/backoff.h"
#include "parley/connection.h"

namespace parley {

// Local error codes (besides the server's):
inline constexpr const char* kErrOffline = "offline";                  // no live connection right now
inline constexpr const char* kErrLocalStorageFull = "local_storage_full";  // the cache's disk (or size cap) is full
inline constexpr const char* kErrLocalStorage = "local_storage";          // any other local SQLite failure
inline constexpr const char* kErrExpired = "expired";                  // outbox message older than the max age
inline constexpr const char* kErrUnreachable = "unreachable";          // TCP/WebSocket connect failed

// "Outbox age" in ../shared/DESIGN.md: how long an unsent message is retried.
inline constexpr int64_t kDefaultOutboxMaxAgeMs = 30LL * 24 * 3600 * 1000;

// How long SetDraft waits for more typing before it saves the draft on the
// server (docs/protocol.md, set_draft: save drafts debounced).
inline constexpr int kDefaultDraftDebounceMs = 1000;

enum class MessageStatus : int { kPending = 0, kSent = 1, kDelivered = 2, kRead = 3, kFailed = 4 };
const char* MessageStatusName(MessageStatus s);

enum class ClientState : int {
  kStopped = 0,     // Start not called yet, or stopped
  kConnecting = 1,  // connecting, authenticating or catching up (sync)
  kOnline = 2,      // authenticated and caught up; live events flow, the outbox drains
  kWaiting = 3,     // disconnected, waiting for the next attempt (last_error says why)
  kRevoked = 4,     // the token was refused or revoked: log in again; the outbox is kept
  kDisabled = 5,    // the operator disabled the account (close 4005, auth `user_disabled`): the
                    // token and everything local are kept; it tries again after the server's wait
};
const char* ClientStateName(ClientState s);

struct StatusUpdate {
  std::string client_id;
  std::string peer;             // username of the other member (when known)
  int64_t conversation_id = 0;  // 0 while pending and never sent
  int64_t seq = 0;              // 0 while pending
  MessageStatus status = MessageStatus::kPending;
  std::string error_code;  // set when kFailed
  std::string error_message;
};

// A message as the cache knows it (own or received; pending outbox entries
// have seq 0).
struct CachedMessage {
  int64_t conversation_id = 0;
  int64_t seq = 0;
  int64_t sender_id = 0;
  bool outgoing = false;
  std::string client_id;
  std::string body;
  int64_t ts = 0;  // server time; compose time for pending ones
  MessageStatus status = MessageStatus::kSent;  // outgoing only; kSent for incoming
  std::string error_code;                        // kFailed only
  // Edits and deletes (docs/protocol.md, "Edits and deletes"): the version
  // of `body` (0: as sent), when it was edited, and whether it was deleted
  // for everyone (a tombstone: `body` is "") or deleted for me (`hidden`:
  // Messages() leaves such messages out; on_message_changed reports them).
  int64_t version = 0;
  int64_t edited_at = 0;
  bool deleted = false;
  bool hidden = false;
  // Retention (docs/protocol.md "Retention"): when the message expires (0:
  // never). The SDK drops its text at that time by this device's clock (it
  // becomes a tombstone, deleted = true, reported by on_message_changed).
  int64_t expires_at = 0;
};

struct CachedConversation {
  int64_t conversation_id = 0;
  int64_t peer_id = 0;
  std::string peer;  // username
  int64_t last_seq = 0;
  // Messages from the peer above my read watermark (as the server counts
  // them, DESIGN.md): the cached ones, plus those older than the cached ones
  // that the snapshot counted, until the watermark passes them.
  int64_t unread = 0;
  int64_t my_read = 0;
  int64_t peer_delivered = 0;
  int64_t peer_read = 0;
  int64_t last_ts = 0;
  // The user's draft in this conversation ("" : none): the text set on
  // this device and not yet saved on the server (draft_pending), else the
  // server's (the last `draft` event or the snapshot), so a local edit wins
  // until it is saved. draft_updated_at: the server's time of it, or the
  // local time of a pending one.
  std::string draft;
  int64_t draft_updated_at = 0;
  bool draft_pending = false;
  // The conversation's disappearing-messages timer in seconds (0: off), as
  // the server last said (set_disappearing; docs/protocol.md).
  int64_t disappearing_s = 0;
  // Selective sync (ClientOptions::sync_recent_conversations): the server
  // sent summaries of this conversation instead of its events, so messages
  // up to last_seq may be missing from the cache (unread is the server's
  // count). OpenConversation (or a session that selects it) pages them and
  // clears it; the count then comes from the cached messages.
  bool summarised = false;
};

struct ComposeResult {
  bool ok = false;
  std::string client_id;  // when ok
  std::string code;       // when !ok: kErrLocalStorageFull, kErrLocalStorage, "bad_request"
  std::string message;
};

struct DraftResult {
  bool ok = false;
  std::string code;  // when !ok: "bad_request", kErrLocalStorageFull, kErrLocalStorage
  std::string message;
};

struct LoginResult {
  bool ok = false;
  std::string code, message;  // when !ok
  int64_t user_id = 0, device_id = 0;
  std::string username, token;
};

struct ClientOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 8080;
  // wss:// (TLS) and how the server is verified: ConnectOptions::tls,
  // ca_file and verify_peer (parley/connection.h).
  bool tls = false;
  std::string ca_file;
  bool verify_peer = true;
  // The nodes of a cluster (docs/operations.md, "Cluster"), each "host:port"
  // (or ws://host:port; tls, ca_file and verify_peer above apply to all).
  // Non-empty: host and port are ignored. A session starts on the node that
  // served the last one and, if it cannot connect there, tries the next
  // ones in order before backing off: a killed node's devices resume on
  // another (from their cursor, so nothing is lost).
  std::vector<std::string> endpoints;
  std::string db_path;  // REQUIRED: the local cache and outbox file (created if missing)
  std::string token;    // the device token; empty: cache-only (Compose works, nothing connects)

  BackoffPolicy backoff;
  int64_t outbox_max_age_ms = kDefaultOutboxMaxAgeMs;
  int connect_timeout_ms = 5000;
  int request_timeout_ms = 10000;  // a send without an answer by then is retried on a new connection
  int sync_page_limit = 200;       // events per sync page (protocol: 1-1000)
  int snapshot_messages = 20;      // newest messages per conversation in a new cache's snapshot (0-100)
  // Selective sync (docs/protocol.md "select_sync"): > 0 syncs in full only
  // the N most recently active conversations (1-100) plus those the app
  // opened with OpenConversation (kept in the cache: every later Client on
  // it selects them too); every other one is
  // kept as a summary (last_seq, unread; CachedConversation::summarised).
  // 0: everything in full.
  int sync_recent_conversations = 0;
  bool auto_report_delivered = true;
  int draft_debounce_ms = kDefaultDraftDebounceMs;  // SetDraft -> set_draft delay (0: at once)
  int64_t cache_max_pages = 0;  // >0: PRAGMA max_page_count (caps the cache file; full-disk tests)

  // Delivery history for the checker (`parley-check`, docs/checker.md):
  // empty = off. When set, the client appends one JSON object per line to
  // this file for every client-side event (compose, send attempt, ack, each
  // applied stream event with its user seq and source live/sync, snapshots,
  // caught-up markers, disconnects, resumes, stop), one write(2) per record,
  // so the file survives kill -9 of the client. Open fails if the file cannot
  // be opened or holds a line that is not JSON. While recording, Stop runs one
  // last sync before closing so that the history ends caught up, then records
  // the cache's final view (held seqs, edited, deleted and hidden messages,
  // drafts) for the checker's convergence checks.
  std::string history_path;

  // Injected for tests; defaults: the system clock (ms since epoch) and a
  // random seed from std::random_device.
  std::function<int64_t()> now_ms;
  uint64_t random_seed = 0;

  // Callbacks, on the worker thread (see the header comment).
  std::function<void(const StatusUpdate&)> on_status;
  std::function<void(const nlohmann::json& event)> on_event;  // each stream event once, after it is applied
  // A cached message changed through an `edit`, `delete` or `delete_for_me`
  // event (live or by sync), after the cache applied it: the message as it
  // is now. Not called for changes the cache already had (an older edit
  // arriving after a newer one or after the delete changes nothing), nor for
  // messages not in the cache (page them with History to get their state).
  std::function<void(const CachedMessage& message)> on_message_changed;
  // The draft shown for a conversation (CachedConversation::draft) changed
  // because of the server: a `draft` event (saved on another device, or
  // cleared by a send) or a snapshot; the conversation as it is now. Not
  // called for this device's own SetDraft/Compose, nor while a local draft
  // of the conversation waits to be saved (the local text wins until then).
  std::function<void(const CachedConversation& conversation)> on_draft_changed;
  std::function<void(ClientState state, const std::string& detail)> on_state;
};

class Client {
 public:
  // Opens (or creates) the cache at options.db_path. Does not connect.
  // Returns nullptr and sets *error if the file cannot be opened or migrated.
  static std::unique_ptr<Client> Open(ClientOptions options, std::string* error);

  // One-shot helpers over a temporary connection (no cache involved). The
  // ConnectOptions forms reach a TLS server (server.tls, ca_file); their
  // timeout_ms is the connect timeout, `timeout_ms` the answer's.
  static Reply Register(const std::string& host, uint16_t port, const std::string& username,
                        const std::string& password, int timeout_ms = 10000);
  static Reply Register(const ConnectOptions& server, const std::string& username, const std::string& password,
                        int timeout_ms = 10000);
  static LoginResult Login(const std::string& host, uint16_t port, const std::string& username,
                           const std::string& password, const std::string& device_name,
                           const std::string& platform, int timeout_ms = 10000);
  static LoginResult Login(const ConnectOptions& server, const std::string& username, const std::string& password,
                           const std::string& device_name, const std::string& platform, int timeout_ms = 10000);

  ~Client();  // Stop()s
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Starts the worker (connect, catch up, drain the outbox, follow live
  // events, reconnect). Does nothing if started or if there is no token.
  // state() is kConnecting as soon as it returns.
  void Start();
  // Closes the connection (1000) and joins the worker. Nothing in the
  // outbox is lost: unacknowledged sends are retried by the next Start.
  void Stop();

  // Queues a message to `peer` (a username) in the durable outbox and wakes
  // the worker. Works offline. The client id is generated here and never
  // changes. REQUIRES: body is 1-16384 bytes of UTF-8 (else "bad_request").
  ComposeResult Compose(const std::string& peer, const std::string& body);

  // Sets (text "" : clears) the draft of the conversation with `peer` (a
  // username), or of a cached conversation by id. Stored in the cache at
  // once (works offline; Conversations()/Draft() show it) and saved on the
  // server by the worker options.draft_debounce_ms after the last call for
  // that peer, one set_draft in flight per peer: calls made while one is in
  // flight or offline coalesce, the newest text is sent once (last local
  // write wins). Compose drops a draft not saved yet and clears the shown
  // one, as the server clears it on a send. A draft the server refuses
  // (not_member, an unknown user) is dropped; last_error() says why.
  // REQUIRES: text is 0-16384 bytes of UTF-8 (else "bad_request").
  DraftResult SetDraft(const std::string& peer, const std::string& text);
  DraftResult SetDraft(int64_t conversation_id, const std::string& text);
  // The draft shown for `peer`'s conversation ("" : none; see CachedConversation::draft).
  std::string Draft(const std::string& peer);
  size_t PendingDraftCount();  // drafts set here and not yet saved on the server

  // Marks everything up to `seq` in the conversation read (sent to the
  // server as a receipt by the worker; coalesced).
  void MarkRead(int64_t conversation_id, int64_t seq);

  // A request over the live connection, waiting up to timeout_ms (0: the
  // default request timeout). Returns code kErrOffline if not online.
  Reply Request(const std::string& type, nlohmann::json fields = nlohmann::json::object(), int timeout_ms = 0);

  // Pages a conversation with `peer` from the server (backwards from
  // `before`, 0 = newest), storing the messages in the cache. Returns them in
  // ascending seq, own messages with their status. has_more is set.
  std::vector<CachedMessage> History(const std::string& peer, int64_t before, int limit, bool* has_more,
                                     Reply* error);

  // The app opens the conversation with `peer`: on a selective client
  // (sync_recent_conversations > 0) adds it to the session's selection (and
  // to every later session's, through the cache), then, if summarised, pages
  // its messages from the newest until the cache holds every unread one
  // (beyond `limit` if need be), clearing `summarised`. Returns
  // the newest `limit` cached messages, as Messages(peer, 0, limit). On a
  // full-sync client it only reads the cache. Needs the connection when the
  // conversation is not selected yet (error: kErrOffline, and the cached
  // messages are returned).
  std::vector<CachedMessage> OpenConversation(const std::string& peer, int limit, Reply* error);

  // Cache queries (work offline).
  std::vector<CachedConversation> Conversations();
  std::optional<CachedConversation> ConversationWith(const std::string& peer);
  // Messages with `peer`, ascending; below `before` (0: newest), at most
  // `limit`; pending/failed outbox entries to that peer come last.
  std::vector<CachedMessage> Messages(const std::string& peer, int64_t before, int limit);
  // Outbox entries not yet acknowledged (pending) and failed ones, in compose order.
  std::vector<StatusUpdate> Outbox();
  size_t PendingCount();  // pending outbox entries (not failed)
  // A failed outbox entry (kFailed: blocked, not_member, expired, ...) is
  // queued again with the same client id, so a retry of one the server did
  // store stays one message; its maximum age counts from now. Wakes the
  // worker. False if `client_id` is not a failed entry (pending, sent or
  // unknown).
  bool RetryFailed(const std::string& client_id);
  // Removes a failed outbox entry (it is never sent, and Messages/Outbox no
  // longer list it). False if `client_id` is not a failed entry.
  bool DiscardFailed(const std::string& client_id);
  std::optional<StatusUpdate> StatusOf(const std::string& client_id);

  ClientState state() const;
  std::string last_error() const;
  int64_t user_id() const;   // 0 until the first auth (kept in the cache)
  std::string username() const;
  int64_t device_id() const;
  int64_t applied() const;   // the highest user seq applied to the cache

  // Waits until online (true) or the timeout passes / the token is revoked /
  // the account is found disabled (false).
  bool WaitOnline(int timeout_ms);
  // Waits until no outbox entry is pending (failed ones do not count). The
  // cache is the reference: on_status callbacks for the last messages may
  // still be running on the worker when this returns.
  bool WaitOutboxDrained(int timeout_ms);
  // Waits until every draft set here is saved on the server (or dropped).
  bool WaitDraftsSaved(int timeout_ms);
  // Waits until applied() >= user_seq.
  bool WaitApplied(int64_t user_seq, int timeout_ms);

  // Test hook (fault injection, tools/chaos): drops the current connection
  // without a close handshake, as a network failure would, also while it is
  // still authenticating or catching up (sync); the client reconnects and
  // resends on its own. Does nothing while disconnected. Safe from any
  // thread, callbacks included.
  void DropConnectionForTest();

 private:
  Client();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace parley
