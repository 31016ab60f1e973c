// ChatService: the rules of Parley (conversations, membership, ordering,
// deduplication, receipts, sync) against two interfaces, Store and Fabric.
// No sockets here: the gateway hands it frames and a DeviceSink per
// connection; tests drive it with a hand-drained executor.
//
// Threading. All state below lives on one serial Executor (`core`). The
// public entry points may be called from any thread: OnFrame decodes the
// frame on the caller's thread (I/O threads do the parsing in parallel) and
// posts the decoded request to `core`. Store completions are re-posted to
// `core` (BindTo). Password hashing runs on `hash_pool`.
//
// Ordering. Sends from one connection reach the store in the order their
// frames arrived (a per-connection send queue), so one device's messages in a
// conversation keep their compose order even when some need a lookup first.
// The store serves reads on several connections, so reads complete in any
// order; nothing a connection asked for takes effect in read-completion
// order: requests that must all take effect wait their turn per connection
// (contacts and blocks, select_sync: Client::Turns), and where the newest
// request wins, an older one whose reads land after it is dropped (typing:
// RequestOrder; presence visibility: the order of its reads).
#pragma once

#include <atomic>
#include <cstdint>
#include <list>
#include <functional>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

#include "common/clock.h"
#include "common/executor.h"
#include "common/metrics.h"
#include "common/worker_pool.h"
#include "core/accounts.h"
#include "core/change_notes.h"
#include "core/presence.h"
#include "core/rate_limiter.h"
#include "core/request_order.h"
#include "core/selective_sink.h"
#include "fabric/fabric.h"
#include "protocol/encode.h"
#include "protocol/frames.h"
#include "protocol/limits.h"
#include "protocol/json_writer.h"
#include "protocol/message_edits.h"
#include "store/store.h"

namespace parley::core {

// Rate limits (docs/protocol.md, "Rate limits"); each is configurable.
struct RateLimits {
  RateLimit send_per_device{50, 200};
  RateLimit send_per_user{100, 400};
  RateLimit search_per_user{5, 20};
  // add/remove contact, block/unblock, set_profile, change_password
  RateLimit social_per_user{2, 20};
  RateLimit failed_login_per_username{5.0 / 60, 10};
  RateLimit failed_login_per_address{20.0 / 60, 50};
  RateLimit register_per_address{5.0 / 60, 10};
  // typing and set_draft
  RateLimit typing_per_device{2, 6};
  // subscribe_presence and set_app_state (after auth)
  RateLimit presence_per_device{5, 20};
};

// Push notifications (issue 11; docs/architecture.md "Push"). Core only
// decides when to push and queues jobs in the store; a push dispatcher
// (src/push) sends them.
struct PushConfig {
  // Off when no provider is configured: nothing is queued (register_push
  // still stores the endpoint).
  bool enabled = false;
  // One push per device per window: a device's next push is due no earlier
  // than its last one + this (docs/operations.md, --push-coalesce-ms).
  int64_t coalesce_ms = 10'000;
};

// Retention (issue 12; docs/operations.md "Retention", docs/architecture.md
// "Retention"): the server-wide maximum age of a message and the two
// background steps, expiry and purge, each run by every node in bounded
// batches (a batch is one store transaction of its own).
struct RetentionConfig {
  // Messages per ExpireMessages / PurgeDeleted step: bounds one step's
  // transaction, so a step never holds the store for long.
  static constexpr int kExpiryBatch = 256;
  static constexpr int kPurgeBatch = 256;
  // Every message expires this long after it is stored (0: no maximum;
  // --retention-max-age-s).
  int64_t max_age_ms = 0;
  // Pause of the expiry step when it found nothing more to expire: how late
  // a message can be tombstoned after its expires_at (--expiry-interval-ms).
  int64_t expiry_interval_ms = 1'000;
  // A tombstone (delete for everyone, expiry) keeps what is left of its data
  // (edit rows, search rows) this long before the purge removes it
  // (--purge-delay-s), and the purge step pauses this long when it is
  // caught up (--purge-interval-ms).
  int64_t purge_delay_ms = 60 * 60 * 1000;
  int64_t purge_interval_ms = 10'000;

  // Stream trimming (docs/architecture.md "Stream trimming"). A user's
  // stream entry goes once it is older than stream_retention_ms or beyond
  // the newest stream_max_entries, unless a live device seen within
  // stream_device_grace_ms has not acknowledged it: a phone offline for
  // less than the grace catches up by sync; one offline longer gets
  // `cursor_too_old` and takes a snapshot.
  // Users looked at and entries removed per TrimStreams step (one store
  // transaction of its own).
  static constexpr int kTrimUsersPerStep = 256;
  static constexpr int kTrimBatch = 1024;
  // Pause between the steps of one pass over the users, so that a pass over
  // a large directory, or a first trim of a large store, is spread out
  // rather than a burst of transactions: at most kTrimBatch entries per
  // kTrimStepPauseMs (about 50,000 a second) on each node.
  static constexpr int64_t kTrimStepPauseMs = 20;
  static constexpr int64_t kDefaultStreamRetentionMs = 30LL * 24 * 60 * 60 * 1000;
  static constexpr int64_t kDefaultStreamMaxEntries = 100'000;
  // --stream-retention-s (0: no time horizon), --stream-max-entries (0: no
  // cap), --stream-device-grace-s (0: no device holds entries back),
  // --stream-trim-interval-ms (pause after a pass over every user). With
  // neither a horizon nor a cap, nothing is trimmed and the job does not run.
  int64_t stream_retention_ms = kDefaultStreamRetentionMs;
  int64_t stream_max_entries = kDefaultStreamMaxEntries;
  int64_t stream_device_grace_ms = kDefaultStreamRetentionMs;
  int64_t stream_trim_interval_ms = 60'000;

  // The cold tier (issue 12 item 6; docs/operations.md "Cold tier"): texts
  // of messages older than cold_after_ms are compacted into compressed
  // blocks per conversation (--cold-after-s; 0: off). A conversation is
  // compacted once its oldest hot message is older than cold_after_ms plus
  // cold_after_ms / kColdGatherDivisor, so that a conversation with a
  // steady trickle of messages fills its blocks instead of compacting one
  // message per step. Messages per CompactMessages step (one store
  // transaction of its own, so a send waits at most one bounded step), and
  // the step's pause when nothing more is due (--compact-interval-ms).
  static constexpr int kCompactBatch = 256;
  static constexpr int64_t kColdGatherDivisor = 4;
  int64_t cold_after_ms = int64_t{30} * 24 * 3600 * 1000;
  int64_t compact_interval_ms = 60'000;
};

// Adds a purge step's work to this node's purge counters
// (parley_purge_messages_total, _edit_rows_total, _search_rows_total,
// _cold_texts_total): the retention job's steps, and the admin erase's,
// which purges at once (admin_erase.cc).
void CountPurge(const store::PurgeProgress& p);

struct CoreConfig {
  PasswordCost password_cost = PasswordCost::kInteractive;
  // Announced in the auth response (each connection gets the interval minus
  // up to kHeartbeatJitterPercent %, so that heartbeats of devices that
  // connected together spread out); the gateway enforces the timeout.
  static constexpr int kHeartbeatJitterPercent = 10;
  int heartbeat_interval_ms = 25'000;
  int heartbeat_timeout_ms = 60'000;
  // Told to clients in shutdown closes and `shutting_down` errors.
  int shutdown_retry_after_ms = 2'000;
  // On shutdown the store gets this long to commit what is queued; what it
  // has not taken into a commit by then is failed with `shutting_down` (never
  // acknowledged, so the clients' retries are safe), so that a backlog the
  // store cannot absorb does not hold the shutdown.
  int shutdown_flush_ms = 5'000;
  // Device tokens do not expire by time unless this is set: a device not seen
  // (authenticated or acknowledged its cursor) for this long is revoked at its
  // next `auth`. 0 = never.
  int64_t device_idle_expiry_ms = 0;
  RateLimits rate_limits;
  // A "typing: start" expires on its own after this long (a "stop" is sent
  // for it) unless the typer refreshes it.
  int64_t typing_expiry_ms = 6'000;
  // Presence coalescing and per-subscriber update rate.
  PresenceConfig presence;
  // The most bytes the items of one paged answer take (sync, history,
  // snapshot, list_conversations): protocol::kMaxPageBytes, or a quarter of
  // the outbound queue limit when that is smaller (ServerConfig sets it), so
  // that no answer is too large for the queue it goes through.
  size_t max_page_bytes = protocol::kMaxPageBytes;
  // Conversations whose member lists are kept in memory.
  size_t conversation_cache_entries = 100'000;
  // Other parleyd nodes share the store (parleyd --redis): what another node
  // may change is read from the store, not from this node's caches (a user's
  // stream head for ping and ack, block lists for typing).
  // docs/architecture.md, "Cluster: what is node-local".
  bool cluster = false;
  // Cluster: how often this node reconciles its per-user, per-username and
  // per-address rate-limit buckets with the other nodes' through the fabric
  // (--rate-limit-sync-ms; docs/architecture.md, "Shared rate limits").
  int rate_limit_sync_ms = 100;
  // Cluster: after this node may have missed fabric messages (a Redis cut),
  // it re-reads each user connected here and each presence subscription,
  // this many at a time (--recheck-batch; ChatService::PacedWalk).
  static constexpr int kDefaultRecheckBatch = 256;
  int recheck_batch = kDefaultRecheckBatch;
  // A reconciliation not answered within this long counts as failed; the
  // next one starts (meanwhile the buckets are this node's alone).
  static constexpr int64_t kRateSyncTimeoutMs = 2'000;
  // Told to clients in `unavailable` errors (the store, e.g. PostgreSQL, is
  // unreachable): retry after this long (--unavailable-retry-after-ms).
  int unavailable_retry_after_ms = 1'000;
  // Admission: while the store holds this many queued writes (its writer
  // is behind: more is offered than it commits), requests that add
  // messages or conversations (send, edit_message, delete_message,
  // open_conversation, set_draft) are refused with `unavailable` and
  // unavailable_retry_after_ms, before anything is done, instead of queueing
  // without bound (--max-queued-writes; 0: no bound). Receipts and acks are
  // never refused: they are cumulative and small, and clients do not retry
  // them. docs/architecture.md, Backpressure, "Inbound".
  int64_t max_queued_writes = kDefaultMaxQueuedWrites;
  // About two seconds of the single-node writer's work at its saturation
  // (docs/benchmarks.md): far above any burst of the benchmarks and tests.
  static constexpr int64_t kDefaultMaxQueuedWrites = 20'000;
  // How often the refusals are logged while they last (one warning line
  // with their count, not one per request).
  static constexpr int64_t kOverloadLogIntervalMs = 1'000;
  PushConfig push;
  // Edits and deletes for everyone are accepted this long after the message
  // was sent (issue 12; --edit-window-ms, --delete-window-ms).
  protocol::ChangeWindows change_windows;
  RetentionConfig retention;
};

// One connection, as core sees it. Created by Connect, owned by the gateway
// connection; fields are touched only on the core executor.
struct Client {
  std::shared_ptr<fabric::DeviceSink> sink;
  std::string remote_address;  // the peer's IP, for per-address limits
  int64_t user_id = 0;
  int64_t device_id = 0;
  std::string username;
  bool authenticating = false;  // an auth or login is in flight
  bool closed = false;          // disconnected; late completions are dropped
  uint64_t id = 0;              // unique per connection (presence subscriptions)
  // App state as the device reports it (set_app_state; foreground until told
  // otherwise), and whether it currently counts towards the user's presence.
  bool foreground = true;
  bool counted_foreground = false;
  int64_t cursor = 0;           // the device's acknowledged user seq
  // Counted reads not answered yet (protocol::kMaxReadsInFlight).
  int reads_in_flight = 0;
  // Sends waiting for their turn (see "Ordering" above). A list: an empty
  // one allocates nothing (libstdc++'s deque allocates ~500 bytes up front),
  // and it is empty on almost every connection almost all the time.
  std::list<protocol::Request> send_queue;
  bool send_busy = false;
  // Requests that must take effect in the order they arrived although each
  // waits for a store read first: one at a time per kind
  // (ChatService::RunInTurn). `busy` while one waits for its reads;
  // `pumping` while ChatService::NextTurn runs them (a turn that ends at
  // once is followed by the next in that loop, not by recursion).
  struct Turns {
    std::list<protocol::Request> waiting;
    bool busy = false;
    bool pumping = false;
  };
  Turns social_turns;  // add_contact, remove_contact, block, unblock (a username lookup, then the write)
  Turns select_turns;  // select_sync (membership or recent-conversation reads, then the selection)
  // The presence read (ChatService::presence_reads_) whose answer is this
  // connection's installed subscription: an earlier subscribe_presence whose
  // read lands later is answered but not installed.
  uint64_t presence_as_of = 0;
  // Selective sync (select_sync): set while the session syncs only some
  // conversations in full; attached to the fabric in place of `sink`. Null
  // (the usual case) means full sync.
  std::shared_ptr<SelectiveSink> selective;
};

class ChatService {
 public:
  ChatService(Executor& core, store::Store& store, fabric::Fabric& fabric, WorkerPool& hash_pool, const Clock& clock,
              CoreConfig config);
  ~ChatService();

  // Any thread. A new connection that will send frames through `sink`.
  std::shared_ptr<Client> Connect(std::shared_ptr<fabric::DeviceSink> sink, std::string remote_address = "");
  // Any thread. One complete text (or binary) frame from the client.
  void OnFrame(const std::shared_ptr<Client>& client, std::string_view frame);
  // Any thread. The connection is gone.
  void OnDisconnect(const std::shared_ptr<Client>& client);

  // Any thread. Graceful shutdown: new requests get `shutting_down`; every
  // write already submitted becomes durable and is answered; then every
  // connection is closed with kServerShutdown and a retry-after reason, and
  // `done` runs on the core executor.
  void Shutdown(std::function<void()> done);

  // Any thread. Closes every connection of `devices` of `user_id` (close
  // code kDeviceRevoked with `reason`): the admin API calls it when it
  // disables or deletes a user.
  // `disabled`: the account is disabled, its tokens kept: closed with 4005
  // and kDisabledRetryAfterMs instead of 4002 (revoked).
  void CloseDevices(int64_t user_id, std::vector<int64_t> devices, std::string reason, bool disabled = false);
  // Any thread. The admin API erased the account: its name may be taken by
  // a new account, and nobody may see its presence any more (this node and,
  // through the fabric, the others).
  void UserErased(int64_t user_id);

  const CoreConfig& config() const { return config_; }

  // Any thread. Starts the retention steps (chat_retention.cc): expiry,
  // purge and the cold tier's compaction (when on and the store has one),
  // each repeating on the core executor until Shutdown. parleyd
  // calls it once; unit tests drive the steps with RunExpiryForTest /
  // RunPurgeForTest instead.
  void StartRetention();
  // Any thread. One expiry (purge) step now, at the clock's time; `done`
  // runs on the core executor with how many messages it expired (purged),
  // or -1 if the step failed.
  void RunExpiryForTest(std::function<void(int)> done);
  void RunPurgeForTest(std::function<void(int)> done);
  // Any thread. One TrimStreams step from where the last one stopped;
  // `done` runs on the core executor with the entries it removed and
  // whether the pass over every user is complete (-1: the step failed).
  void RunTrimForTest(std::function<void(int64_t, bool)> done);
  // Any thread. One compaction step now (the cold tier), at the clock's
  // time; `done` runs on the core executor with how many messages it
  // compacted, or -1 if the step failed (0 when compaction is off or the
  // store has no cold tier).
  void RunCompactionForTest(std::function<void(int)> done);

  // Called (on the core executor) after push jobs were queued, so that the
  // dispatcher can look at once instead of at its next poll. Set before the
  // first connection.
  void SetPushQueuedHook(std::function<void()> hook) { push_queued_hook_ = std::move(hook); }

  // Core executor only (tests drain it themselves). Keys with requests in
  // flight in the typing and block-load orders: none once all have landed.
  size_t PendingOrderKeysForTest() const { return typing_order_.keys() + block_loads_.keys(); }
  // Serial requests (contacts and blocks, select_sync) may wait per
  // connection and kind at most this many; more are refused with
  // `rate_limited` and kTurnRetryAfterMs.
  static constexpr size_t kMaxWaitingTurns = 64;
  static constexpr int64_t kTurnRetryAfterMs = 1'000;
  // An auth that must read its devices again (it raced a revocation) and
  // cannot (the store failed the read) is closed with 4003 and this wait:
  // the device reconnects, and a revoked one is refused then.
  static constexpr int64_t kUnconfirmedAuthRetryAfterMs = 1'000;
  // How long a device of a disabled account waits before it tries again
  // (close 4005): its auth answers user_disabled until the account is
  // enabled again, and the client keeps its data and outbox meanwhile.
  static constexpr int64_t kDisabledRetryAfterMs = 60'000;
  // Users whose revocation is noted one by one while auth reads are in
  // flight (ChangeNotes); past it, every auth in flight reads its device
  // again.
  static constexpr size_t kMaxNotedRevocations = 4096;

 private:
  using Req = protocol::Request;
  using RequestType = protocol::RequestType;
  using ClientPtr = std::shared_ptr<Client>;

  void Handle(const ClientPtr& c, Req req);
  // Whether requests of `type` count among a connection's reads in flight
  // (protocol::kMaxReadsInFlight): those that wait for a store read and
  // change nothing.
  static bool IsCountedRead(protocol::RequestType type);
  // `req` is answered (Respond and SendError call it): it no longer counts
  // among its connection's reads in flight.
  void Answered(const ClientPtr& c, const Req& req);
  void Respond(const ClientPtr& c, const Req& req, const std::function<void(protocol::JsonWriter&)>& fill);
  void Fail(const ClientPtr& c, const Req& req, const Status& s, int64_t retry_after_ms = 0);
  // Fail without the log line: counts the error and sends it (the default
  // retry-after for shutting_down and unavailable filled in).
  void SendError(const ClientPtr& c, const Req& req, const Status& s, int64_t retry_after_ms = 0);
  // Applies the rate limits of the request's kind; returns 0 if allowed,
  // else the retry-after in milliseconds.
  // Admission: refuses `req` with `unavailable` (true) when it adds messages
  // or conversations and the store's writer is max_queued_writes behind.
  bool RefuseWhileStoreBehind(const ClientPtr& c, const Req& req);
  int64_t CheckRateLimits(const ClientPtr& c, const Req& req);
  void Send(const ClientPtr& c, std::string frame);

  void DoRegister(const ClientPtr& c, Req req);
  void DoLogin(const ClientPtr& c, Req req);
  void DoAuth(const ClientPtr& c, Req req);
  void CompleteLogin(const ClientPtr& c, const Req& req, const std::string& token);
  // `recheck`: a revocation of the user was noted while the auth's read was
  // in flight (revocations_): the device is read again once attached.
  void CompleteAuth(const ClientPtr& c, const Req& req, const store::AuthContext& auth, const std::string& token,
                    bool recheck);
  // Closes the connections of `devices` of `user_id` after the store revoked
  // them, and tells every node (auths in flight there check again).
  void CloseRevoked(int64_t user_id, const std::vector<int64_t>& devices, const std::string& reason,
                    protocol::CloseCode code = protocol::CloseCode::kDeviceRevoked);
  // The close reason a device gets with `code`: for kAccountDisabled when to
  // come back (kDisabledRetryAfterMs); otherwise `why`.
  static std::string CloseReason(protocol::CloseCode code, const std::string& why);
  void DoLogout(const ClientPtr& c, Req req);
  void DoListDevices(const ClientPtr& c, Req req);
  void DoUnlinkDevice(const ClientPtr& c, Req req);
  void DoOpenConversation(const ClientPtr& c, Req req);
  void DoSend(const ClientPtr& c, Req req);
  void PumpSends(const ClientPtr& c);
  void AppendSend(const ClientPtr& c, Req req, int64_t conversation_id);
  void DoReceipt(const ClientPtr& c, Req req);
  void DoSync(const ClientPtr& c, Req req);
  void DoAck(const ClientPtr& c, Req req);
  void DoHistory(const ClientPtr& c, Req req);
  void DoSnapshot(const ClientPtr& c, Req req);
  void DoPing(const ClientPtr& c, Req req);
  void DoSetProfile(const ClientPtr& c, Req req);
  void DoContactOrBlock(const ClientPtr& c, Req req);
  void DoListContacts(const ClientPtr& c, Req req);
  void DoListBlocked(const ClientPtr& c, Req req);
  void DoSearchUsers(const ClientPtr& c, Req req);
  void DoSearchMessages(const ClientPtr& c, Req req);
  // Selective sync (issue 12 item 3; chat_selective.cc).
  void DoSelectSync(const ClientPtr& c, Req req);
  // Validates `add` (membership, size) and installs current ∪ add; ends the
  // connection's select_sync turn.
  void InstallSelection(const ClientPtr& c, const Req& req, std::unordered_set<int64_t> selection,
                        std::vector<int64_t> to_check);
  // Answers a sync page read for a selective session: the events of its
  // selected conversations, one summary per other conversation.
  void RespondSelectivePage(const ClientPtr& c, const Req& req, int64_t after, store::StreamPage page);
  // A sync page's fields; when its events do not fit config_.max_page_bytes,
  // only the first that do (has_more, `next` at the last of them).
  void WriteSyncPage(protocol::JsonWriter& w, int64_t after, const store::StreamPage& page,
                     const std::vector<store::ConversationState>* states);
  void WriteSyncEvents(protocol::JsonWriter& w, int64_t after, const store::StreamPage& page, size_t count,
                       const std::vector<store::ConversationState>* states);
  void WriteSummaries(protocol::JsonWriter& w, std::vector<store::ConversationSummary>& summaries);
  SelectiveSink::Summarise LiveSummariser(int64_t user_id);
  void DoListConversations(const ClientPtr& c, Req req);
  void DoChangePassword(const ClientPtr& c, Req req);
  void DoTyping(const ClientPtr& c, Req req);
  void DoSetAppState(const ClientPtr& c, Req req);
  void DoSetPrivacy(const ClientPtr& c, Req req);
  void DoSubscribePresence(const ClientPtr& c, Req req);
  void DoMessageInfo(const ClientPtr& c, Req req);
  // edit_message and delete_message (issue 12).
  void DoChangeMessage(const ClientPtr& c, Req req);
  void PublishChange(protocol::ChangeKind kind, const store::ChangeResult& r);
  void DoSetDraft(const ClientPtr& c, Req req);
  // Retention (chat_retention.cc).
  void DoSetDisappearing(const ClientPtr& c, Req req);
  void ExpireStep(bool repeat, std::function<void(int)> done);
  void PurgeStep(bool repeat, std::function<void(int)> done);
  void TrimStep(bool repeat, std::function<void(int64_t, bool)> done);
  void CompactStep(bool repeat, std::function<void(int)> done);
  // A background step (expiry, purge, trim, compaction) failed: counted in
  // `failures`, logged as `event` unless the service is stopping.
  void StepFailed(Counter& failures, std::string_view event, const Status& error);
  void PublishDraft(int64_t conversation_id, const store::DraftRecord& draft, const store::StreamPosition& at);
  // Push notifications (chat_push.cc).
  void DoRegisterPush(const ClientPtr& c, Req req);
  void DoUnregisterPush(const ClientPtr& c, Req req);
  void DoMuteConversation(const ClientPtr& c, Req req);
  void DoSetPushPreviews(const ClientPtr& c, Req req);
  void DoPushSettings(const ClientPtr& c, Req req);
  // Counts one foreground connection of the device in or out of foreground_;
  // returns whether the user's presence here changed (first one in, last out).
  bool NoteForeground(int64_t user_id, int64_t device_id, bool foreground);
  // After a message committed: queues pushes for each member it is visible
  // to (not the sender) who has no device in the foreground.
  void PushAfterMessage(const store::MessageRecord& msg, const std::vector<store::StreamPosition>& positions);
  // After a read moved the user's aggregate: a silent badge push to the
  // user's devices not in the foreground (and not the one that read).
  void PushAfterRead(int64_t user_id, int64_t device_id, int64_t conversation_id, int64_t read);
  void QueuePush(store::PushRequest req);
  // Counts the connection in (or out of) its user's foreground set; leaving
  // the last one stores the user's last seen.
  void SetForeground(const ClientPtr& c, bool counted);
  // Queues the user's last seen for the next flush (PresenceConfig::
  // last_seen_flush_ms), or stores it at once when flushing is off or the
  // service is stopping.
  void NoteLastSeen(int64_t user_id, int64_t last_seen);
  // Stores every queued last seen: one store write per user changed since
  // the last flush, however often they came and went.
  void FlushLastSeen();
  // Something about a user changed through this node (who may see their
  // presence; an erased account): updates this node and tells the others.
  void UserChanged(const fabric::Fabric::UserChange& change);
  // Updates what this node holds after a change made here or on another
  // node (fabric::Fabric::UserChange).
  void ApplyUserChange(const fabric::Fabric::UserChange& change);
  // After the fabric may have lost messages (UserChange::kAnything): reads
  // each user connected here again, closes the connections of devices no
  // longer live, or of accounts disabled meanwhile, and tells the others the
  // user's head (NoticeHead). Paced (WalkPaced) with the re-read of every
  // presence subscription.
  void RecheckDevices();
  // `unsure`, if set, is called (before `done`) when a read failed and
  // nothing could be judged.
  void RecheckUserDevices(int64_t user_id, std::function<void()> done, std::function<void()> unsure = {});
  // Live events may have been lost on the way from other nodes (this node or
  // another was cut off, or one stopped without its goodbye): the user's
  // devices on this node (Fabric::PublishHere) get a `head` notice
  // (protocol::EncodeHeadNotice) with the head read now, and those behind it
  // sync, as after a ping, instead of waiting for their next one.
  void NoticeHead(int64_t user_id, std::function<void()> done);
  // A node-wide re-check walks its keys (users connected here, presence
  // subscriptions) CoreConfig::recheck_batch at a time: a batch's reads are
  // issued in one core turn and the next batch only once each of them has
  // answered (`visit` calls `done` once, on the core thread), so each walk
  // queues at most a batch of reads ahead of logins and syncs. A re-check
  // asked for while a walk of its kind runs does not restart it (repeated
  // cuts would then re-read the same first keys forever): the running walk
  // goes on, its keys not yet visited are read after the new cut anyway, and
  // one more walk follows it (`again`), however many were asked for.
  struct PacedWalk {
    std::vector<int64_t> keys;
    size_t next = 0;
    size_t pending = 0;
    bool again = false;
    std::function<void(int64_t key, std::function<void()> done)> visit;
    std::function<void(bool again)> finished;  // every key visited and answered
  };
  void WalkPaced(std::shared_ptr<PacedWalk> walk);
  // Re-reads, from the store, whether each subscriber of `watched` (only
  // those of user `viewer` if not 0) may see it, after a setting changed
  // here or on another node. RecheckAllPresence: every subscription, paced
  // (WalkPaced), after the fabric may have lost such changes.
  void RecheckPresence(int64_t watched, int64_t viewer);
  void RecheckAllPresence();
  // Reads again what subscriber `client` may see of `users` (one store
  // read); SetVisible applies the answer unless a later read's came first.
  // `done`, if set, is called once the answer (or the error) is in.
  void RereadVisibility(const ClientPtr& client, std::vector<int64_t> users, std::function<void()> done = {});
  // Whom one user blocks; shared with the cache, never changed in place.
  using BlockSet = std::shared_ptr<const std::unordered_set<int64_t>>;
  using BlockSets = std::unordered_map<int64_t, BlockSet>;
  // Gets the set of users each of `users` blocks (from the cache, or the
  // store: always in a cluster), then runs `then` with them; on a failed
  // read, with that error and no set for that user.
  void LoadBlocks(const std::vector<int64_t>& users, std::function<void(Status, const BlockSets&)> then);
  static bool EitherBlocks(const BlockSets& sets, int64_t a, int64_t b);
  // Publishes one typing state of `typer` to `audience` and keeps the
  // expiry bookkeeping (typing_) for it.
  void PublishTyping(int64_t conversation_id, int64_t typer, bool typing, std::vector<int64_t> audience);

  // Serial requests (Client::Turns). RunInTurn queues `req` and runs it
  // (through `run`) when no earlier request of `turns` is still waiting for
  // its reads; the one running calls EndTurn once it took effect (its write
  // submitted, its state changed) or failed, which starts the next.
  using TurnFn = void (ChatService::*)(const ClientPtr&, Req);
  void RunInTurn(const ClientPtr& c, Client::Turns Client::*turns, Req req, TurnFn run);
  void EndTurn(const ClientPtr& c, Client::Turns Client::*turns, TurnFn run);
  void NextTurn(const ClientPtr& c, Client::Turns Client::*turns, TurnFn run);
  void RunContactOrBlock(const ClientPtr& c, Req req);
  void RunSelectSync(const ClientPtr& c, Req req);

  // Publishes one stream event per position (each user gets its own user_seq).
  // `withheld`, if not empty, holds each position's withheld seqs.
  void PublishEvents(store::StreamEvent event, const std::vector<store::StreamPosition>& positions,
                     const std::vector<std::vector<store::Seq>>& withheld = {});
  void PublishSocial(store::EventKind kind, const store::SocialResult& r, bool flag);
  void NoteHead(int64_t user_id, int64_t user_seq);
  // Membership from the cache or the store; fails kUnknownConversation / kNotMember.
  void CheckMember(int64_t user_id, int64_t conversation_id, std::function<void(Status)> then);
  void CacheConversation(const store::ConversationRecord& conv);

  // Wraps a store callback so that it runs on the core executor.
  template <typename T, typename Fn>
  store::Callback<T> OnCore(Fn fn) {
    return BindTo<Result<T>>(core_, std::move(fn));
  }
  store::StatusCallback OnCoreStatus(std::function<void(Status)> fn) { return BindTo<Status>(core_, std::move(fn)); }

  Executor& core_;
  store::Store& store_;
  fabric::Fabric& fabric_;
  WorkerPool& hash_pool_;
  const Clock& clock_;
  const CoreConfig config_;
  std::string dummy_hash_;  // verified against for unknown users, so timing does not reveal them

  // State below is touched only on core_.
  bool stopping_ = false;
  struct LiveUser {
    int connections = 0;
    int64_t head = 0;
  };
  std::unordered_map<int64_t, LiveUser> live_;  // users with authenticated connections
  std::unordered_map<int64_t, store::ConversationRecord> conversations_;
  // `send` by username: "sender id:username" -> the conversation, so that a
  // sender's later sends skip the name's look-up. An erased account frees
  // its name for a new one: its entries go (ApplyUserChange).
  struct DirectConversation {
    int64_t conversation_id = 0;
    int64_t sender = 0;
    int64_t peer = 0;
  };
  std::unordered_map<std::string, DirectConversation> direct_;

  RateLimiter send_device_limiter_, send_user_limiter_, search_limiter_, social_limiter_;
  RateLimiter login_user_limiter_, login_address_limiter_, register_limiter_, typing_limiter_, presence_limiter_;
  // Logins admitted and not yet judged, per username and per address: only a
  // failure takes a login token, so a login is admitted only while the bucket
  // holds a token for it beyond those already in flight (else many at once
  // would all pass the check and all hash).
  std::unordered_map<std::string, int> logins_in_flight_by_user_, logins_in_flight_by_address_;
  void LoginJudged(const std::string& username, const std::string& address);
  // Shared rate limits (cluster, fabric_.SharesRateLimits()): the limiters
  // keyed by user, username or address, by limit name. Per-device limits
  // stay local (a device is on one node at a time).
  std::vector<std::pair<std::string, RateLimiter*>> shared_limiters_;
  bool rate_sync_inflight_ = false;
  uint64_t rate_sync_generation_ = 0;  // a late answer of an abandoned reconciliation is ignored
  int64_t rate_sync_started_ms_ = 0;
  void ScheduleRateSync();
  // Hands the usage counted since the last reconciliation to the fabric and
  // applies the cluster-wide levels it answers.
  void SyncRateLimits();
  // Whom each user blocks, for ephemeral events (typing) that must not cross
  // a block; loaded on demand, kept current by this node's block/unblock
  // (not kept in a cluster, where other nodes change them).
  std::unordered_map<int64_t, BlockSet> blocks_;
  // Loads of one user's set, in the order they were issued: one that lands
  // after a later one (or after this node's own block or unblock) is not
  // cached.
  RequestOrder<int64_t> block_loads_;
  // Live "typing" per (conversation, typer): a generation, so that a refresh
  // or a stop cancels the pending expiry.
  using TypingKey = std::pair<int64_t, int64_t>;
  std::unordered_map<TypingKey, uint64_t, IdPairHash> typing_;
  uint64_t typing_generation_ = 0;
  // Typing requests per (conversation, typer) in arrival order: each waits
  // for a membership read (uncached conversation) and block reads; one whose
  // reads land after a later one's published is dropped (stale).
  RequestOrder<TypingKey, IdPairHash> typing_order_;
  // Presence reads issued (subscribe_presence, RecheckPresence), in order.
  // A read issued later reflects every write that completed before it
  // (store.h, "Order"), so what an earlier one read never replaces what a
  // later one installed (Client::presence_as_of; PresenceTracker's as_of).
  uint64_t presence_reads_ = 0;
  // subscribe_presence reads in flight, and the visibility changes noted
  // since each was issued. A subscription is not a watcher until its read
  // lands, so a visibility change completed meanwhile cannot re-check it:
  // RecheckPresence notes the watched user here instead (RecheckAllPresence:
  // every user), and a subscription whose read was issued before a change
  // to one of its users reads those again once installed.
  static constexpr size_t kMaxNotedVisibilityChanges = 4096;
  ChangeNotes visibility_changes_{kMaxNotedVisibilityChanges};
  std::atomic<uint64_t> next_client_id_{1};
  std::minstd_rand jitter_rng_{std::random_device{}()};  // Connect runs on I/O threads
  PresenceTracker presence_;
  // Connections with a presence subscription, by Client::id.
  std::unordered_map<uint64_t, ClientPtr> presence_subscribers_;
  // The running node-wide re-checks (PacedWalk), null when none runs.
  std::shared_ptr<PacedWalk> device_walk_;
  std::shared_ptr<PacedWalk> presence_walk_;
  // Auth reads (the device, its user and head, by token) in flight, and the
  // revocations (UserChange::kRevoked, here or on another node) noted since
  // each was issued: an auth that lands after a revocation of its user reads
  // its device again (CompleteAuth `recheck`).
  ChangeNotes revocations_{kMaxNotedRevocations};
  // Per user, the devices with a foreground connection on this node
  // (connection counts per device). A user is here iff they are online here:
  // presence, the fabric (told when a user enters or leaves this map) and
  // push decisions all read it.
  std::unordered_map<int64_t, std::unordered_map<int64_t, int>> foreground_;
  // Users in the foreground on another node (cluster shape; the fabric's
  // remote presence, per user): push skips them as it skips foreground_.
  std::unordered_set<int64_t> remote_foreground_;
  // Last seen times not yet written (NoteLastSeen), by user.
  std::unordered_map<int64_t, int64_t> pending_last_seen_;
  bool last_seen_flush_due_ = false;
  std::function<void()> push_queued_hook_;
  // Admission (CoreConfig::max_queued_writes): refusals not logged yet, and
  // when they last were.
  int64_t overload_refused_unlogged_ = 0;
  int64_t overload_logged_at_ = 0;
  // Metrics (docs/operations.md).
  Counter& RateLimited(RequestType type);
  Counter& OverloadRefused(RequestType type);
  Counter& Errors(ErrorCode code);
  std::vector<Counter*> requests_;  // by RequestType
  Gauge& connections_;
  Gauge& authenticated_;
  Counter& frames_in_;
  Counter& frames_out_;
  Counter& presence_updates_;
  Counter& last_seen_writes_;
  Counter& devices_rechecked_closed_;
  Counter& rate_syncs_ok_;
  Counter& rate_syncs_failed_;
  Counter& rate_synced_buckets_;
  Gauge& rate_limits_shared_;
  Counter& expired_messages_;
  Counter& expiry_failures_;
  Counter& purge_failures_;
  Gauge& purge_backlog_;
  Counter& stream_trimmed_;
  Counter& stream_trim_users_;
  Counter& stream_trim_passes_;
  Counter& stream_trim_failures_;
  Counter& cursor_too_old_;
  // Where the trim pass stands: the last user id a step visited (0: the
  // pass starts again from the first user). Core executor only.
  int64_t trim_after_user_ = 0;
  Counter& cold_messages_;
  Counter& cold_edits_;
  Counter& cold_blocks_;
  Counter& cold_bytes_before_;
  Counter& cold_bytes_after_;
  Counter& cold_failures_;
};

}  // namespace parley::core
