// ChatService. Each request type has a Do* method; each is a short chain of
// store calls whose completions come back to the core executor. Events are
// serialised once per user and handed to the fabric, which fans them out to
// the user's connections. Nothing is published before the store has made it
// durable (the append's callback runs after COMMIT), and the sender's ack
// follows the same callback: `sent` implies durable (guarantee 3).
#include "core/chat_service.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "protocol/encode.h"
#include "protocol/limits.h"
#include "store/change_events.h"
#include "store/name_words.h"

namespace parley::core {

using protocol::JsonWriter;
using protocol::RequestType;

namespace {
// `auth` marks the device seen (devices.last_seen_at: the device list and
// idle expiry) only when the stored time is older than this: a store write
// on every reconnect was a sixth of a reconnect's cost in parleyd
// (docs/benchmarks.md, "Reconnects"), and the device list shows the time to
// the minute. Acks still write it every time they store a cursor. With a
// short --device-idle-expiry-s the resolution is a quarter of it
// (kDeviceSeenExpiryFraction), so a device in use never expires.
constexpr int64_t kDeviceSeenResolutionMs = 60'000;
constexpr int64_t kDeviceSeenExpiryFraction = 4;

// A username lookup's failure as the client sees it: "no such user", or the
// store's own error when it could not look (e.g. `unavailable`).
Status UnknownUserOr(const Status& s) {
  return s.code() == ErrorCode::kUnknownUser ? Status(ErrorCode::kUnknownUser, "no such user") : s;
}
}  // namespace

ChatService::ChatService(Executor& core, store::Store& store, fabric::Fabric& fabric, WorkerPool& hash_pool,
                         const Clock& clock, CoreConfig config)
    : core_(core),
      store_(store),
      fabric_(fabric),
      hash_pool_(hash_pool),
      clock_(clock),
      config_(config),
      send_device_limiter_(config.rate_limits.send_per_device),
      send_user_limiter_(config.rate_limits.send_per_user),
      search_limiter_(config.rate_limits.search_per_user),
      social_limiter_(config.rate_limits.social_per_user),
      login_user_limiter_(config.rate_limits.failed_login_per_username),
      login_address_limiter_(config.rate_limits.failed_login_per_address),
      register_limiter_(config.rate_limits.register_per_address),
      typing_limiter_(config.rate_limits.typing_per_device),
      presence_limiter_(config.rate_limits.presence_per_device),
      presence_(core, clock, config.presence,
                [this](PresenceTracker::SubscriberId s, int64_t user, PresenceView view) {
                  auto it = presence_subscribers_.find(s);
                  if (it == presence_subscribers_.end() || it->second->closed || !it->second->sink) return;
                  frames_out_.Inc();
                  presence_updates_.Inc();
                  it->second->sink->SendFrame(std::make_shared<const std::string>(
                                                  protocol::EncodePresence(user, view.online, view.last_seen)),
                                              /*ephemeral=*/true);
                }),
      connections_(Metrics::Default().GetGauge("parley_connections", "Open client connections (WebSocket)")),
      authenticated_(Metrics::Default().GetGauge("parley_connections_authenticated",
                                                 "Open client connections that are authenticated as a device")),
      frames_in_(Metrics::Default().GetCounter("parley_frames_in_total", "Frames received from clients")),
      frames_out_(Metrics::Default().GetCounter("parley_frames_out_total", "Frames sent to clients")),
      presence_updates_(Metrics::Default().GetCounter("parley_presence_updates_total",
                                                      "Presence frames sent to subscribers")),
      last_seen_writes_(Metrics::Default().GetCounter(
          "parley_last_seen_writes_total",
          "Users' last seen times written to the store (at most one per user per --last-seen-flush-ms)")),
      devices_rechecked_closed_(Metrics::Default().GetCounter(
          "parley_devices_closed_on_recheck_total",
          "Connections of revoked devices or disabled accounts closed by a re-read: the fabric may have lost "
          "their close, or their auth raced the revocation")),
      rate_syncs_ok_(Metrics::Default().GetCounter("parley_rate_limit_syncs_total",
                                                   "Reconciliations of shared rate-limit buckets with the cluster, by result",
                                                   "result=\"ok\"")),
      rate_syncs_failed_(Metrics::Default().GetCounter(
          "parley_rate_limit_syncs_total", "Reconciliations of shared rate-limit buckets with the cluster, by result",
          "result=\"failed\"")),
      rate_synced_buckets_(Metrics::Default().GetCounter("parley_rate_limit_synced_buckets_total",
                                                         "Rate-limit buckets reconciled with the cluster")),
      rate_limits_shared_(Metrics::Default().GetGauge(
          "parley_rate_limit_shared",
          "1 while per-user and per-address rate limits are shared by the cluster (last reconciliation succeeded)")),
      expired_messages_(Metrics::Default().GetCounter(
          "parley_expired_messages_total",
          "Messages tombstoned by this node's expiry step (disappearing timer or server-wide maximum age)")),
      expiry_failures_(Metrics::Default().GetCounter("parley_expiry_failures_total",
                                                     "Expiry steps that failed (retried later)")),
      purge_failures_(Metrics::Default().GetCounter("parley_purge_failures_total",
                                                    "Purge steps that failed (retried later)")),
      purge_backlog_(Metrics::Default().GetGauge(
          "parley_purge_backlog", "Tombstones older than the purge delay still waiting for the purge (last step)")),
      stream_trimmed_(Metrics::Default().GetCounter("parley_stream_trimmed_total",
                                                    "User-stream entries removed by this node's trim job")),
      stream_trim_users_(Metrics::Default().GetCounter(
          "parley_stream_trim_users_total", "Times the trim job raised a user's stream floor (one per user per step)")),
      stream_trim_passes_(Metrics::Default().GetCounter("parley_stream_trim_passes_total",
                                                        "Passes of the trim job over every user completed")),
      stream_trim_failures_(Metrics::Default().GetCounter("parley_stream_trim_failures_total",
                                                          "Trim steps that failed (retried later)")),
      cursor_too_old_(Metrics::Default().GetCounter(
          "parley_sync_cursor_too_old_total",
          "sync requests answered cursor_too_old (the cursor is below the user's stream floor)")),
      cold_messages_(Metrics::Default().GetCounter("parley_cold_messages_total",
                                                   "Messages whose text this node's compaction moved into cold blocks")),
      cold_edits_(Metrics::Default().GetCounter(
          "parley_cold_edits_total", "Edit texts this node's compaction moved into cold edit blocks")),
      cold_blocks_(Metrics::Default().GetCounter("parley_cold_blocks_total",
                                                 "Compressed cold blocks written by this node's compaction")),
      cold_bytes_before_(Metrics::Default().GetCounter(
          "parley_cold_bytes_before_total",
          "Bytes of the texts (edits included) compacted by this node, before compression")),
      cold_bytes_after_(Metrics::Default().GetCounter(
          "parley_cold_bytes_after_total", "Bytes of the cold blocks written by this node, after compression")),
      cold_failures_(Metrics::Default().GetCounter("parley_cold_compaction_failures_total",
                                                   "Compaction steps that failed (retried at the next step)")) {
  CountPurge(store::PurgeProgress{});  // registers the purge counters: every metric exists from the start
  for (RequestType t : protocol::AllRequestTypes())
    requests_.push_back(&Metrics::Default().GetCounter("parley_requests_total", "Requests received, by type",
                                                       fmt::format("type=\"{}\"", protocol::RequestTypeName(t))));
  auto h = HashPassword("parley-dummy-password", config_.password_cost);
  if (h) dummy_hash_ = std::move(*h);
  // Users online on other nodes count as one foreground connection each way
  // in the tracker; the node where they went offline stores their last seen,
  // unless it was lost (killed): then the nodes that notice store it, each
  // the same (the store keeps the latest). Push skips them too
  // (remote_foreground_).
  fabric_.OnRemotePresence([this](int64_t user, bool online, bool node_lost) {
    core_.Post([this, user, online, node_lost] {
      if (online) {
        remote_foreground_.insert(user);
        presence_.ForegroundEnter(user);
        return;
      }
      remote_foreground_.erase(user);
      const int64_t last_seen = presence_.ForegroundLeave(user);
      if (node_lost && last_seen != 0) NoteLastSeen(user, last_seen);
    });
  });
  // Another node changed something about a user that this one holds (or
  // may have, unheard).
  fabric_.OnRemoteUserChange([this](const fabric::Fabric::UserChange& change) {
    core_.Post([this, change] {
      ApplyUserChange(change);
      // The other node's routed close reached the nodes whose route for the
      // device was written when it ran; a device attached here just before
      // (its auth read answered from before the revocation, and done before
      // this message) may have had none yet: read this user's devices again.
      if (change.kind == fabric::Fabric::UserChange::Kind::kRevoked) RecheckUserDevices(change.user_id, [] {});
    });
  });
  if (fabric_.SharesRateLimits() && config_.rate_limit_sync_ms > 0) {
    shared_limiters_ = {{"send_per_user", &send_user_limiter_},
                        {"search_per_user", &search_limiter_},
                        {"social_per_user", &social_limiter_},
                        {"failed_login_per_username", &login_user_limiter_},
                        {"failed_login_per_address", &login_address_limiter_},
                        {"register_per_address", &register_limiter_}};
    for (auto& [name, limiter] : shared_limiters_) limiter->CountUsage(true);
    rate_limits_shared_.Set(1);  // the fabric reached Redis at start
    ScheduleRateSync();
  }
}

ChatService::~ChatService() {
  fabric_.OnRemotePresence(nullptr);
  fabric_.OnRemoteUserChange(nullptr);
}

std::shared_ptr<Client> ChatService::Connect(std::shared_ptr<fabric::DeviceSink> sink, std::string remote_address) {
  auto c = std::make_shared<Client>();
  c->sink = std::move(sink);
  c->remote_address = std::move(remote_address);
  c->id = next_client_id_.fetch_add(1);
  connections_.Add(1);
  spdlog::debug("event=connection_opened conn_id={} remote={}", c->id, c->remote_address);
  return c;
}

void ChatService::OnFrame(const std::shared_ptr<Client>& client, std::string_view frame) {
  frames_in_.Inc();
  protocol::Decoded d = protocol::DecodeRequest(frame);
  d.request.received_at = clock_.NowMillis();
  core_.Post([this, client, d = std::move(d)]() mutable {
    if (client->closed) return;
    if (!d.status.ok()) {
      std::string_view op = d.type ? protocol::RequestTypeName(*d.type) : std::string_view();
      Errors(d.status.code()).Inc();
      Send(client, protocol::EncodeError(d.id_json, op, d.status));
      return;
    }
    Handle(client, std::move(d.request));
  });
}

void ChatService::OnDisconnect(const std::shared_ptr<Client>& client) {
  core_.Post([this, client] {
    if (client->closed) return;
    client->closed = true;
    connections_.Add(-1);
    spdlog::debug("event=connection_closed conn_id={} user_id={} device_id={}", client->id, client->user_id,
                  client->device_id);
    SetForeground(client, false);
    presence_.Unsubscribe(client->id);
    presence_subscribers_.erase(client->id);
    if (client->user_id != 0) {
      authenticated_.Add(-1);
      fabric_.Detach(client->user_id, client->device_id,
                     client->selective ? static_cast<fabric::DeviceSink*>(client->selective.get()) : client->sink.get());
      auto it = live_.find(client->user_id);
      if (it != live_.end() && --it->second.connections == 0) live_.erase(it);
    }
    client->send_queue.clear();
    client->social_turns.waiting.clear();
    client->select_turns.waiting.clear();
    client->selective.reset();
    client->sink.reset();  // the connection owns the client; break the cycle
  });
}

void ChatService::Shutdown(std::function<void()> done) {
  core_.Post([this, done = std::move(done)] {
    stopping_ = true;
    FlushLastSeen();
    auto flushed = std::make_shared<bool>(false);
    core_.PostAfter(config_.shutdown_flush_ms, [this, flushed] {
      if (*flushed) return;
      size_t n = store_.AbandonQueuedWrites(Status(ErrorCode::kShuttingDown, "the server is shutting down"));
      spdlog::warn("event=shutdown_writes_abandoned count={} after_ms={}", n, config_.shutdown_flush_ms);
    });
    store_.Flush(OnCoreStatus([this, done, flushed](Status s) {
      *flushed = true;
      // kShuttingDown: the flush itself was abandoned with the backlog.
      if (!s.ok() && s.code() != ErrorCode::kShuttingDown) {
        spdlog::error("event=shutdown_flush_failed error=\"{}\"", s.ToString());
      }
      fabric_.CloseAll(static_cast<uint16_t>(protocol::CloseCode::kServerShutdown),
                       protocol::RetryAfterReason(config_.shutdown_retry_after_ms));
      done();
    }));
  });
}

void ChatService::Send(const ClientPtr& c, std::string frame) {
  if (c->closed || !c->sink) return;
  frames_out_.Inc();
  c->sink->SendFrame(std::make_shared<const std::string>(std::move(frame)));
}

bool ChatService::IsCountedRead(RequestType type) {
  switch (type) {
    case RequestType::kListDevices:
    case RequestType::kSync:
    case RequestType::kHistory:
    case RequestType::kSnapshot:
    case RequestType::kListContacts:
    case RequestType::kListBlocked:
    case RequestType::kSearchUsers:
    case RequestType::kListConversations:
    case RequestType::kSubscribePresence:
    case RequestType::kMessageInfo:
    case RequestType::kPushSettings:
    case RequestType::kSearchMessages: return true;
    default: return false;
  }
}

void ChatService::Answered(const ClientPtr& c, const Req& req) {
  if (req.counted_read && c->reads_in_flight > 0) --c->reads_in_flight;
}

void ChatService::Respond(const ClientPtr& c, const Req& req, const std::function<void(JsonWriter&)>& fill) {
  Answered(c, req);
  Send(c, protocol::EncodeResponse(req.id_json, protocol::RequestTypeName(req.type), fill));
}

Counter& ChatService::Errors(ErrorCode code) {
  return Metrics::Default().GetCounter("parley_errors_total", "Error frames sent to clients, by code",
                                       fmt::format("code=\"{}\"", ErrorCodeName(code)));
}

Counter& ChatService::OverloadRefused(RequestType type) {
  return Metrics::Default().GetCounter("parley_overload_refused_total",
                                       "Requests refused with unavailable while the store's writer was behind "
                                       "(--max-queued-writes), by type",
                                       fmt::format("type=\"{}\"", protocol::RequestTypeName(type)));
}

Counter& ChatService::RateLimited(RequestType type) {
  return Metrics::Default().GetCounter("parley_rate_limited_total", "Requests refused by a rate limit, by type",
                                       fmt::format("type=\"{}\"", protocol::RequestTypeName(type)));
}

void ChatService::Fail(const ClientPtr& c, const Req& req, const Status& s, int64_t retry_after_ms) {
  if (s.code() == ErrorCode::kInternal || s.code() == ErrorCode::kStorageFull || s.code() == ErrorCode::kUnavailable) {
    spdlog::error("event=request_failed op={} request_id={} conn_id={} user_id={} device_id={} error=\"{}\"",
                  protocol::RequestTypeName(req.type), req.id_json, c->id, c->user_id, c->device_id, s.ToString());
  } else {
    spdlog::debug("event=request_refused op={} request_id={} conn_id={} code={}", protocol::RequestTypeName(req.type),
                  req.id_json, c->id, ErrorCodeName(s.code()));
  }
  SendError(c, req, s, retry_after_ms);
}

void ChatService::SendError(const ClientPtr& c, const Req& req, const Status& s, int64_t retry_after_ms) {
  Answered(c, req);
  Errors(s.code()).Inc();
  int64_t retry_after = retry_after_ms;
  if (s.code() == ErrorCode::kShuttingDown) retry_after = config_.shutdown_retry_after_ms;
  // A dependency is down (the store lost PostgreSQL): nothing was done or
  // acknowledged; the same request later may succeed (a send with the same
  // client_id is stored once).
  if (s.code() == ErrorCode::kUnavailable && retry_after == 0) retry_after = config_.unavailable_retry_after_ms;
  Send(c, protocol::EncodeError(req.id_json, protocol::RequestTypeName(req.type), s, retry_after));
}

void ChatService::Handle(const ClientPtr& c, Req req) {
  requests_[static_cast<size_t>(req.type)]->Inc();
  // request_id is the client's id as JSON (escaped); never a field's value.
  spdlog::debug("event=request op={} request_id={} conn_id={} user_id={} device_id={}",
                protocol::RequestTypeName(req.type), req.id_json, c->id, c->user_id, c->device_id);
  if (stopping_) return Fail(c, req, Status(ErrorCode::kShuttingDown, "the server is shutting down; reconnect later"));
  bool authed = c->user_id != 0;
  if (protocol::RequestNeedsAuth(req.type) && !authed)
    return Fail(c, req, Status(ErrorCode::kNotAuthenticated, "send 'auth' or 'login' first"));
  if ((req.type == RequestType::kAuth || req.type == RequestType::kLogin) && (authed || c->authenticating))
    return Fail(c, req, Status(ErrorCode::kAlreadyAuthenticated, "this connection is already authenticated"));
  if (int64_t wait = CheckRateLimits(c, req); wait > 0) {
    RateLimited(req.type).Inc();
    return Fail(c, req, Status(ErrorCode::kRateLimited, "too many requests; retry after retry_after_ms"), wait);
  }
  if (RefuseWhileStoreBehind(c, req)) return;
  if (IsCountedRead(req.type)) {
    if (c->reads_in_flight >= protocol::kMaxReadsInFlight) {
      RateLimited(req.type).Inc();
      return Fail(c, req,
                  Status(ErrorCode::kRateLimited,
                         fmt::format("{} reads of this connection are waiting for their answers; wait for them",
                                     protocol::kMaxReadsInFlight)),
                  protocol::kReadsInFlightRetryAfterMs);
    }
    ++c->reads_in_flight;
    req.counted_read = true;
  }
  switch (req.type) {
    case RequestType::kRegister: return DoRegister(c, std::move(req));
    case RequestType::kLogin: return DoLogin(c, std::move(req));
    case RequestType::kAuth: return DoAuth(c, std::move(req));
    case RequestType::kPing: return DoPing(c, std::move(req));
    case RequestType::kLogout: return DoLogout(c, std::move(req));
    case RequestType::kListDevices: return DoListDevices(c, std::move(req));
    case RequestType::kUnlinkDevice: return DoUnlinkDevice(c, std::move(req));
    case RequestType::kOpenConversation: return DoOpenConversation(c, std::move(req));
    case RequestType::kSend: return DoSend(c, std::move(req));
    case RequestType::kReceipt: return DoReceipt(c, std::move(req));
    case RequestType::kSync: return DoSync(c, std::move(req));
    case RequestType::kAck: return DoAck(c, std::move(req));
    case RequestType::kHistory: return DoHistory(c, std::move(req));
    case RequestType::kSnapshot: return DoSnapshot(c, std::move(req));
    case RequestType::kSetProfile: return DoSetProfile(c, std::move(req));
    case RequestType::kAddContact:
    case RequestType::kRemoveContact:
    case RequestType::kBlock:
    case RequestType::kUnblock: return DoContactOrBlock(c, std::move(req));
    case RequestType::kListContacts: return DoListContacts(c, std::move(req));
    case RequestType::kListBlocked: return DoListBlocked(c, std::move(req));
    case RequestType::kSearchUsers: return DoSearchUsers(c, std::move(req));
    case RequestType::kListConversations: return DoListConversations(c, std::move(req));
    case RequestType::kChangePassword: return DoChangePassword(c, std::move(req));
    case RequestType::kTyping: return DoTyping(c, std::move(req));
    case RequestType::kSetAppState: return DoSetAppState(c, std::move(req));
    case RequestType::kSetPrivacy: return DoSetPrivacy(c, std::move(req));
    case RequestType::kSubscribePresence: return DoSubscribePresence(c, std::move(req));
    case RequestType::kMessageInfo: return DoMessageInfo(c, std::move(req));
    case RequestType::kRegisterPush: return DoRegisterPush(c, std::move(req));
    case RequestType::kUnregisterPush: return DoUnregisterPush(c, std::move(req));
    case RequestType::kMuteConversation: return DoMuteConversation(c, std::move(req));
    case RequestType::kSetPushPreviews: return DoSetPushPreviews(c, std::move(req));
    case RequestType::kPushSettings: return DoPushSettings(c, std::move(req));
    case RequestType::kEditMessage:
    case RequestType::kDeleteMessage: return DoChangeMessage(c, std::move(req));
    case RequestType::kSetDraft: return DoSetDraft(c, std::move(req));
    case RequestType::kSearchMessages: return DoSearchMessages(c, std::move(req));
    case RequestType::kSetDisappearing: return DoSetDisappearing(c, std::move(req));
    case RequestType::kSelectSync: return DoSelectSync(c, std::move(req));
  }
}

// ---- Admission ----

// Past the store's saturation every queued write waits behind the others, so
// a bound on the queue turns the excess into quick retryable refusals (the
// SDK's outbox holds the message and sends it again after retry_after_ms;
// its client_id stores it once) instead of an ever longer wait for all.
bool ChatService::RefuseWhileStoreBehind(const ClientPtr& c, const Req& req) {
  switch (req.type) {
    case RequestType::kSend:
    case RequestType::kEditMessage:
    case RequestType::kDeleteMessage:
    case RequestType::kOpenConversation:
    case RequestType::kSetDraft: break;
    default: return false;
  }
  if (config_.max_queued_writes <= 0) return false;
  const uint64_t queued = store_.Stats().queued_writes;
  if (queued < static_cast<uint64_t>(config_.max_queued_writes)) return false;
  OverloadRefused(req.type).Inc();
  ++overload_refused_unlogged_;
  const int64_t now = clock_.NowMillis();
  if (now - overload_logged_at_ >= CoreConfig::kOverloadLogIntervalMs) {
    spdlog::warn("event=store_overloaded queued_writes={} max_queued_writes={} refused={}", queued,
                 config_.max_queued_writes, overload_refused_unlogged_);
    overload_logged_at_ = now;
    overload_refused_unlogged_ = 0;
  }
  // Not Fail: one warning line a second above, not an error line each.
  SendError(c, req,
            Status(ErrorCode::kUnavailable,
                   "the server is overloaded (its store is behind); nothing was done: retry after retry_after_ms"));
  return true;
}

// ---- Rate limits ----

int64_t ChatService::CheckRateLimits(const ClientPtr& c, const Req& req) {
  int64_t now = clock_.NowMillis();
  std::string user = "u" + std::to_string(c->user_id);
  switch (req.type) {
    case RequestType::kSend:
    case RequestType::kEditMessage:    // edits and deletes share the send buckets
    case RequestType::kDeleteMessage: {
      int64_t w = send_device_limiter_.Peek("d" + std::to_string(c->device_id), now);
      if (w == 0) w = send_user_limiter_.Peek(user, now);
      if (w > 0) return w;
      send_device_limiter_.Take("d" + std::to_string(c->device_id), now);
      return send_user_limiter_.Take(user, now);
    }
    case RequestType::kSearchUsers:
    case RequestType::kSearchMessages: return search_limiter_.Take(user, now);
    case RequestType::kTyping:
    case RequestType::kSetDraft: return typing_limiter_.Take("d" + std::to_string(c->device_id), now);
    case RequestType::kSubscribePresence:
    case RequestType::kSetAppState:
      // Before auth set_app_state only sets a flag on the connection.
      return c->device_id == 0 ? 0 : presence_limiter_.Take("d" + std::to_string(c->device_id), now);
    case RequestType::kSetPrivacy:
    case RequestType::kSetDisappearing:
    case RequestType::kMuteConversation:
    case RequestType::kSetPushPreviews:
    case RequestType::kRegisterPush:
    case RequestType::kUnregisterPush:
    case RequestType::kAddContact:
    case RequestType::kRemoveContact:
    case RequestType::kBlock:
    case RequestType::kUnblock:
    case RequestType::kSetProfile:
    case RequestType::kChangePassword: return social_limiter_.Take(user, now);
    case RequestType::kRegister: return register_limiter_.Take(c->remote_address, now);
    case RequestType::kLogin: {
      // Only failures take tokens (DoLogin); here we refuse once they ran
      // out, counting the logins still in flight as failures to come.
      const std::string& username = std::get<protocol::LoginRequest>(req.body).username;
      auto pending = [](const std::unordered_map<std::string, int>& m, const std::string& key) {
        auto it = m.find(key);
        return it == m.end() ? 0.0 : static_cast<double>(it->second);
      };
      int64_t w = login_user_limiter_.Peek(username, now, 1.0 + pending(logins_in_flight_by_user_, username));
      return w > 0 ? w
                   : login_address_limiter_.Peek(c->remote_address, now,
                                                 1.0 + pending(logins_in_flight_by_address_, c->remote_address));
    }
    default: return 0;
  }
}

// ---- Shared rate limits (cluster) ----
//
// The local buckets decide every request at once (CheckRateLimits never
// waits). Every rate_limit_sync_ms this node hands the tokens it took per
// bucket to the fabric, which debits the cluster-wide bucket (Redis) and
// answers its level; the local bucket is set to it, less what was taken
// meanwhile. So a user spread over N nodes gets the configured rate overall:
// each node can over-admit only what its bucket held at the last
// reconciliation, within one interval, and the shared bucket then owes it
// (it goes negative, so later requests wait until it is repaid). While the
// fabric cannot reconcile, the buckets are this node's alone.

void ChatService::ScheduleRateSync() {
  core_.PostAfter(config_.rate_limit_sync_ms, [this] { SyncRateLimits(); });
}

void ChatService::SyncRateLimits() {
  if (stopping_) return;
  int64_t now = clock_.NowMillis();
  if (rate_sync_inflight_) {
    if (now - rate_sync_started_ms_ < CoreConfig::kRateSyncTimeoutMs) return ScheduleRateSync();
    // Abandoned: its usage is lost (this node admitted it; the cluster never
    // heard of it), and its answer will be ignored.
    rate_sync_inflight_ = false;
    ++rate_sync_generation_;
    rate_syncs_failed_.Inc();
    rate_limits_shared_.Set(0);
  }
  std::vector<fabric::RateUsage> usage;
  std::vector<std::pair<RateLimiter*, std::string>> keys;
  for (auto& [name, limiter] : shared_limiters_) {
    for (auto& [key, used] : limiter->TakeUsage()) {
      usage.push_back(fabric::RateUsage{name + ":" + key, used, limiter->limit().per_second, limiter->limit().burst});
      keys.emplace_back(limiter, key);
    }
  }
  if (usage.empty()) return ScheduleRateSync();
  rate_sync_inflight_ = true;
  rate_sync_started_ms_ = now;
  uint64_t generation = rate_sync_generation_;
  fabric_.ReconcileRateLimits(
      std::move(usage), BindTo<Result<std::vector<double>>>(core_, [this, generation, keys = std::move(keys)](
                                                                        Result<std::vector<double>> levels) {
        if (generation != rate_sync_generation_) return;
        rate_sync_inflight_ = false;
        if (!levels || levels->size() != keys.size()) {
          rate_syncs_failed_.Inc();
          rate_limits_shared_.Set(0);
          return;
        }
        int64_t at = clock_.NowMillis();
        for (size_t i = 0; i < keys.size(); ++i) keys[i].first->ApplyLevel(keys[i].second, (*levels)[i], at);
        rate_syncs_ok_.Inc();
        rate_synced_buckets_.Inc(keys.size());
        rate_limits_shared_.Set(1);
      }));
  ScheduleRateSync();
}

// ---- Accounts and devices ----

void ChatService::DoRegister(const ClientPtr& c, Req req) {
  auto& r = std::get<protocol::RegisterRequest>(req.body);
  PasswordCost cost = config_.password_cost;
  std::string password = std::move(r.password);
  hash_pool_.Submit([this, c, req = std::move(req), password = std::move(password), cost]() mutable {
    auto hash = HashPassword(password, cost);
    core_.Post([this, c, req = std::move(req), hash = std::move(hash)]() mutable {
      if (!hash) return Fail(c, req, hash.error());
      auto& reg = std::get<protocol::RegisterRequest>(req.body);
      store_.CreateUser(reg.username, std::move(*hash), clock_.NowMillis(),
                        OnCore<store::UserRecord>([this, c, req](Result<store::UserRecord> u) {
                          if (!u) return Fail(c, req, u.error());
                          spdlog::info("event=user_registered user_id={}", u->id);
                          Respond(c, req, [&](JsonWriter& w) { w.Field("user_id", u->id).Field("username", u->username); });
                        }));
    });
  });
}

void ChatService::LoginJudged(const std::string& username, const std::string& address) {
  for (auto [map, key] : {std::pair{&logins_in_flight_by_user_, &username}, std::pair{&logins_in_flight_by_address_, &address}}) {
    auto it = map->find(*key);
    if (it != map->end() && --it->second <= 0) map->erase(it);
  }
}

void ChatService::DoLogin(const ClientPtr& c, Req req) {
  c->authenticating = true;
  auto username = std::get<protocol::LoginRequest>(req.body).username;
  ++logins_in_flight_by_user_[username];
  ++logins_in_flight_by_address_[c->remote_address];
  store_.GetUserByName(username, OnCore<store::UserRecord>([this, c, req = std::move(req)](
                                                                Result<store::UserRecord> u) mutable {
    // A store that cannot answer is not a wrong password.
    if (!u && u.error().code() != ErrorCode::kUnknownUser) {
      c->authenticating = false;
      LoginJudged(std::get<protocol::LoginRequest>(req.body).username, c->remote_address);
      return Fail(c, req, u.error());
    }
    // Verify even for an unknown user (against a dummy hash), so the answer
    // takes as long either way and does not reveal which usernames exist.
    std::string hash = u ? u->password_hash : dummy_hash_;
    int64_t user_id = u ? u->id : 0;
    bool disabled = u && u->disabled;
    std::string password = std::get<protocol::LoginRequest>(req.body).password;
    hash_pool_.Submit([this, c, req = std::move(req), hash, password, user_id, disabled]() mutable {
      bool ok = VerifyPassword(hash, password) && user_id != 0;
      core_.Post([this, c, req = std::move(req), ok, user_id, disabled, hash = std::move(hash)]() mutable {
        LoginJudged(std::get<protocol::LoginRequest>(req.body).username, c->remote_address);
        if (!ok) {
          c->authenticating = false;
          int64_t now = clock_.NowMillis();
          login_user_limiter_.Take(std::get<protocol::LoginRequest>(req.body).username, now);
          login_address_limiter_.Take(c->remote_address, now);
          return Fail(c, req, Status(ErrorCode::kBadCredentials, "wrong username or password"));
        }
        if (disabled) {
          c->authenticating = false;
          return Fail(c, req, Status(ErrorCode::kUserDisabled, "this account is disabled by the operator"));
        }
        auto& r = std::get<protocol::LoginRequest>(req.body);
        std::string token = NewDeviceToken();
        // Created only while `hash` is still the user's: a password change
        // since the read above fails the login (store.h CreateDevice).
        store_.CreateDevice(user_id, r.device_name, r.platform, HashToken(token), std::move(hash), clock_.NowMillis(),
                            OnCore<store::DeviceRecord>([this, c, req, token](Result<store::DeviceRecord> d) {
                              if (!d) {
                                c->authenticating = false;
                                return Fail(c, req, d.error());
                              }
                              spdlog::info("event=device_created user_id={} device_id={}", d->user_id, d->id);
                              CompleteLogin(c, req, token);
                            }));
      });
    });
  }));
}

void ChatService::DoAuth(const ClientPtr& c, Req req) {
  c->authenticating = true;
  std::string hash = HashToken(std::get<protocol::AuthRequest>(req.body).token);
  // One store read (device, user and head together): a reconnect crosses to
  // the store's reader and back once before it is answered.
  const ChangeNotes::Read as_of = revocations_.Begin();
  store_.GetAuthContext(std::move(hash), OnCore<store::AuthContext>([this, c, req, as_of](Result<store::AuthContext> a) {
    const bool recheck = revocations_.ChangedSince(as_of, a ? a->device.user_id : 0);
    revocations_.End(as_of);
    if (!a) {
      c->authenticating = false;
      // Only a token the store refused is invalid (the client then drops
      // it); a store that is unreachable is `unavailable`, retryable.
      if (a.error().code() != ErrorCode::kInvalidToken) return Fail(c, req, a.error());
      return Fail(c, req, Status(ErrorCode::kInvalidToken, "the token is unknown or revoked; log in again"));
    }
    const store::DeviceRecord& d = a->device;
    int64_t now = clock_.NowMillis();
    int64_t seen = std::max(d.last_seen_at, d.created_at);
    if (config_.device_idle_expiry_ms > 0 && now - seen > config_.device_idle_expiry_ms) {
      store_.RevokeDevice(d.user_id, d.id, OnCoreStatus([this, c, req, device = d](Status) {
        c->authenticating = false;
        spdlog::info("event=device_expired user_id={} device_id={}", device.user_id, device.id);
        Fail(c, req, Status(ErrorCode::kInvalidToken, "the device was idle too long and was signed out; log in again"));
      }));
      return;
    }
    // Mark the device seen (for idle expiry and the device list); the cursor is unchanged.
    int64_t resolution = kDeviceSeenResolutionMs;
    if (config_.device_idle_expiry_ms > 0)
      resolution = std::min(resolution, config_.device_idle_expiry_ms / kDeviceSeenExpiryFraction);
    if (now - d.last_seen_at >= resolution) store_.SetCursor(d.id, 0, now, [](Status) {});
    CompleteAuth(c, req, *a, "", recheck);
  }));
}

// After a login created its device: reads it back with its user and head, as
// a reconnect does, and answers with the new token.
void ChatService::CompleteLogin(const ClientPtr& c, const Req& req, const std::string& token) {
  const ChangeNotes::Read as_of = revocations_.Begin();
  store_.GetAuthContext(HashToken(token),
                        OnCore<store::AuthContext>([this, c, req, token, as_of](Result<store::AuthContext> a) {
                          const bool recheck = revocations_.ChangedSince(as_of, a ? a->device.user_id : 0);
                          revocations_.End(as_of);
                          if (!a) {
                            c->authenticating = false;
                            return Fail(c, req, a.error());
                          }
                          CompleteAuth(c, req, *a, token, recheck);
                        }));
}

void ChatService::CloseRevoked(int64_t user_id, const std::vector<int64_t>& devices, const std::string& reason,
                               protocol::CloseCode code) {
  for (int64_t d : devices) fabric_.CloseDevice(user_id, d, static_cast<uint16_t>(code), CloseReason(code, reason));
  UserChanged({fabric::Fabric::UserChange::Kind::kRevoked, user_id, 0});
}

std::string ChatService::CloseReason(protocol::CloseCode code, const std::string& why) {
  return code == protocol::CloseCode::kAccountDisabled ? protocol::RetryAfterReason(kDisabledRetryAfterMs) : why;
}

// Authenticates the connection as `auth.device`, attaches it to the fabric
// and answers (with the token when it was just created by a login).
void ChatService::CompleteAuth(const ClientPtr& c, const Req& req, const store::AuthContext& auth,
                               const std::string& token, bool recheck) {
  c->authenticating = false;
  const store::DeviceRecord& device = auth.device;
  const store::UserRecord& user = auth.user;
  if (user.disabled) {
    // The token is kept: the device may try again, as after close 4005.
    return Fail(c, req, Status(ErrorCode::kUserDisabled, "this account is disabled by the operator"),
                kDisabledRetryAfterMs);
  }
  if (c->closed) return;
  c->user_id = device.user_id;
  c->device_id = device.id;
  c->username = user.username;
  c->cursor = device.cursor;
  auto& lu = live_[c->user_id];
  lu.connections++;
  lu.head = std::max(lu.head, auth.head);
  authenticated_.Add(1);
  fabric_.Attach(c->user_id, c->device_id, c->sink);
  if (c->foreground) SetForeground(c, true);
  Respond(c, req, [&](JsonWriter& w) {
    w.Field("user_id", c->user_id).Field("username", c->username).Field("device_id", c->device_id);
    if (!token.empty()) w.Field("token", token);
    w.Field("head", lu.head)
        .Field("cursor", c->cursor)
        .Field("heartbeat_interval_ms",
               config_.heartbeat_interval_ms -
                   std::uniform_int_distribution<int>(
                       0, config_.heartbeat_interval_ms * CoreConfig::kHeartbeatJitterPercent / 100)(jitter_rng_))
        .Field("heartbeat_timeout_ms", config_.heartbeat_timeout_ms)
        .Key("privacy")
        .BeginObject()
        .Field("presence", protocol::PresenceVisibilityName(user.presence_visibility))
        .EndObject()
        .Key("limits")
        .BeginObject()
        .Field("max_frame_bytes", static_cast<int64_t>(protocol::kMaxFrameBytes))
        .Field("max_body_bytes", static_cast<int64_t>(protocol::kMaxBodyBytes))
        .Field("max_sync_limit", protocol::kMaxSyncLimit)
        .Field("max_history_limit", protocol::kMaxHistoryLimit)
        .Field("max_presence_subscriptions", static_cast<int64_t>(protocol::kMaxPresenceSubscriptions))
        .Field("edit_window_ms", config_.change_windows.edit_ms)
        .Field("delete_window_ms", config_.change_windows.delete_ms)
        // Retention (issue 12): the disappearing timer's maximum and the
        // server-wide maximum age of a message (0: none).
        .Field("max_disappearing_s", protocol::kMaxDisappearingSeconds)
        .Field("retention_max_age_s", config_.retention.max_age_ms / 1000)
        .EndObject();
  });
  if (recheck) {
    spdlog::info("event=auth_rechecked user_id={} device_id={}", c->user_id, c->device_id);
    // A failed read leaves the device unconfirmed: it is closed to come back
    // (a live device reconnects; a revoked one is refused then).
    RecheckUserDevices(c->user_id, [] {}, [c] {
      if (c->closed) return;
      spdlog::warn("event=auth_recheck_failed user_id={} device_id={}", c->user_id, c->device_id);
      c->sink->Close(static_cast<uint16_t>(protocol::CloseCode::kResync),
                     protocol::RetryAfterReason(kUnconfirmedAuthRetryAfterMs));
    });
  }
}

void ChatService::DoLogout(const ClientPtr& c, Req req) {
  store_.RevokeDevice(c->user_id, c->device_id, OnCoreStatus([this, c, req](Status s) {
    if (!s.ok()) return Fail(c, req, s);
    spdlog::info("event=device_logged_out user_id={} device_id={}", c->user_id, c->device_id);
    Respond(c, req, nullptr);
    CloseRevoked(c->user_id, {c->device_id}, "logged out");
  }));
}

void ChatService::DoListDevices(const ClientPtr& c, Req req) {
  store_.ListDevices(c->user_id, OnCore<std::vector<store::DeviceRecord>>([this, c, req](
                                                                              Result<std::vector<store::DeviceRecord>> r) {
    if (!r) return Fail(c, req, r.error());
    // Each device's push endpoint health (issue 11), from a second read.
    store_.ListPushHealth(c->user_id, OnCore<std::vector<store::PushHealth>>([this, c, req, devices = std::move(*r)](
                                                                                 Result<std::vector<store::PushHealth>> h) {
      if (!h) return Fail(c, req, h.error());
      std::unordered_map<int64_t, const store::PushHealth*> health;
      for (const auto& p : *h) health[p.device_id] = &p;
      Respond(c, req, [&](JsonWriter& w) {
        w.Key("devices").BeginArray();
        for (const auto& d : devices) {
          w.BeginObject()
              .Field("device_id", d.id)
              .Field("name", d.name)
              .Field("platform", d.platform)
              .Field("created_at", d.created_at)
              .Field("last_seen_at", d.last_seen_at)
              .Field("current", d.id == c->device_id)
              .Key("push");
          auto it = health.find(d.id);
          if (it == health.end()) {
            w.Null();
          } else {
            protocol::WritePushHealth(w, *it->second);
          }
          w.EndObject();
        }
        w.EndArray();
      });
    }));
  }));
}

void ChatService::DoUnlinkDevice(const ClientPtr& c, Req req) {
  int64_t target = std::get<protocol::UnlinkDeviceRequest>(req.body).device_id;
  store_.RevokeDevice(c->user_id, target, OnCoreStatus([this, c, req, target](Status s) {
    if (!s.ok()) return Fail(c, req, s);
    spdlog::info("event=device_unlinked user_id={} device_id={}", c->user_id, target);
    Respond(c, req, [&](JsonWriter& w) { w.Field("device_id", target); });
    CloseRevoked(c->user_id, {target}, "unlinked");
  }));
}

// ---- Conversations and messages ----

void ChatService::CacheConversation(const store::ConversationRecord& conv) {
  if (conversations_.size() >= config_.conversation_cache_entries) conversations_.clear();
  conversations_[conv.id] = conv;
}

void ChatService::CheckMember(int64_t user_id, int64_t conversation_id, std::function<void(Status)> then) {
  auto is_member = [user_id](const store::ConversationRecord& conv) {
    for (const auto& m : conv.members)
      if (m.user_id == user_id) return Status::Ok();
    return Status(ErrorCode::kNotMember, "you are not a member of this conversation");
  };
  if (auto it = conversations_.find(conversation_id); it != conversations_.end()) return then(is_member(it->second));
  store_.GetConversation(conversation_id,
                         OnCore<store::ConversationRecord>([this, then, is_member](Result<store::ConversationRecord> r) {
                           if (!r) return then(r.error());
                           CacheConversation(*r);
                           then(is_member(*r));
                         }));
}

void ChatService::DoOpenConversation(const ClientPtr& c, Req req) {
  std::string username = std::get<protocol::OpenConversationRequest>(req.body).username;
  store_.GetUserByName(username, OnCore<store::UserRecord>([this, c, req](Result<store::UserRecord> u) {
    if (!u) return Fail(c, req, UnknownUserOr(u.error()));
    if (u->id == c->user_id) return Fail(c, req, Status(ErrorCode::kSelfConversation, "a conversation needs another user"));
    store_.OpenDirect(c->user_id, u->id, clock_.NowMillis(), OnCore<store::OpenResult>([this, c, req](Result<store::OpenResult> r) {
      if (!r) return Fail(c, req, r.error());
      CacheConversation(r->conversation);
      Respond(c, req, [&](JsonWriter& w) {
        w.Key("conversation");
        protocol::WriteConversation(w, r->conversation);
        w.Field("created", r->created);
      });
      if (r->created) {
        store::StreamEvent e;
        e.kind = store::EventKind::kConversation;
        e.conversation_id = r->conversation.id;
        e.created_at = r->conversation.created_at;
        e.conversation = r->conversation;
        PublishEvents(std::move(e), r->positions);
      }
    }));
  }));
}

void ChatService::DoSend(const ClientPtr& c, Req req) {
  c->send_queue.push_back(std::move(req));
  PumpSends(c);
}

// Takes the next queued send of the connection, resolves its conversation if
// it names a user, and submits it to the store. The next one waits until this
// one is submitted, so the store sees a connection's sends in arrival order.
void ChatService::PumpSends(const ClientPtr& c) {
  if (c->send_busy || c->send_queue.empty() || c->closed) return;
  if (stopping_) {
    // Shutting down: what waited behind a send is not started any more.
    while (!c->send_queue.empty()) {
      Fail(c, c->send_queue.front(), Status(ErrorCode::kShuttingDown, "the server is shutting down"));
      c->send_queue.pop_front();
    }
    return;
  }
  Req req = std::move(c->send_queue.front());
  c->send_queue.pop_front();
  auto& s = std::get<protocol::SendRequest>(req.body);
  if (s.conversation_id != 0) {
    AppendSend(c, std::move(req), s.conversation_id);
    return PumpSends(c);
  }
  std::string key = std::to_string(c->user_id) + ":" + s.to;
  if (auto it = direct_.find(key); it != direct_.end()) {
    AppendSend(c, std::move(req), it->second.conversation_id);
    return PumpSends(c);
  }
  c->send_busy = true;
  auto resume = [this, c](Req r, Status st, int64_t conv) {
    c->send_busy = false;
    if (!st.ok()) Fail(c, r, st);
    else AppendSend(c, std::move(r), conv);
    PumpSends(c);
  };
  std::string to = s.to;
  store_.GetUserByName(to, OnCore<store::UserRecord>([this, c, req = std::move(req), key, resume](
                                                         Result<store::UserRecord> u) mutable {
    if (!u) return resume(std::move(req), UnknownUserOr(u.error()), 0);
    if (u->id == c->user_id)
      return resume(std::move(req), Status(ErrorCode::kSelfConversation, "a conversation needs another user"), 0);
    store_.OpenDirect(c->user_id, u->id, clock_.NowMillis(),
                      OnCore<store::OpenResult>([this, req = std::move(req), key, resume, sender = c->user_id,
                                                 peer = u->id](Result<store::OpenResult> r) mutable {
                        if (!r) return resume(std::move(req), r.error(), 0);
                        CacheConversation(r->conversation);
                        if (direct_.size() >= config_.conversation_cache_entries) direct_.clear();
                        direct_[key] = {r->conversation.id, sender, peer};
                        if (r->created) {
                          store::StreamEvent e;
                          e.kind = store::EventKind::kConversation;
                          e.conversation_id = r->conversation.id;
                          e.created_at = r->conversation.created_at;
                          e.conversation = r->conversation;
                          PublishEvents(std::move(e), r->positions);
                        }
                        resume(std::move(req), Status::Ok(), r->conversation.id);
                      }));
  }));
}

void ChatService::AppendSend(const ClientPtr& c, Req req, int64_t conversation_id) {
  auto& s = std::get<protocol::SendRequest>(req.body);
  store::NewMessage m;
  m.conversation_id = conversation_id;
  m.sender_id = c->user_id;
  m.sender_device_id = c->device_id;
  m.client_id = std::move(s.client_id);
  m.body = std::move(s.body);
  m.now = clock_.NowMillis();
  m.accepted_at = req.received_at != 0 ? req.received_at : m.now;
  m.max_age_ms = config_.retention.max_age_ms;
  store_.AppendMessage(std::move(m), OnCore<store::AppendResult>([this, c, req](Result<store::AppendResult> r) {
    if (!r) {
      // Do not tell a non-member whether the conversation exists.
      if (r.error().code() == ErrorCode::kUnknownConversation)
        return Fail(c, req, Status(ErrorCode::kNotMember, "you are not a member of this conversation"));
      return Fail(c, req, r.error());
    }
    const auto& msg = r->message;
    Respond(c, req, [&](JsonWriter& w) {
      w.Field("conversation_id", msg.conversation_id)
          .Field("seq", msg.seq)
          .Field("client_id", msg.client_id)
          .Field("ts", msg.created_at)
          .Field("duplicate", r->duplicate);
      if (msg.expires_at != 0) w.Field("expires_at", msg.expires_at);
    });
    if (r->duplicate) return;
    store::StreamEvent e;
    e.kind = store::EventKind::kMessage;
    e.conversation_id = msg.conversation_id;
    e.created_at = msg.created_at;
    e.message = msg;
    PublishEvents(std::move(e), r->positions, r->withheld);
    if (r->draft_cleared) PublishDraft(msg.conversation_id, store::DraftRecord{"", msg.created_at}, *r->draft_cleared);
    PushAfterMessage(msg, r->positions);
  }));
}

void ChatService::DoReceipt(const ClientPtr& c, Req req) {
  auto items = std::get<protocol::ReceiptRequest>(req.body).items;
  struct Pending {
    size_t left;
    Status first_error;
  };
  auto pending = std::make_shared<Pending>(Pending{items.size(), Status::Ok()});
  for (const auto& item : items) {
    store::ReceiptUpdate u;
    u.user_id = c->user_id;
    u.device_id = c->device_id;
    u.conversation_id = item.conversation_id;
    u.delivered = item.delivered;
    u.read = item.read;
    u.now = clock_.NowMillis();
    store_.UpdateReceipt(u, OnCore<store::ReceiptResult>([this, c, req, pending, u](Result<store::ReceiptResult> r) {
      if (!r) {
        if (pending->first_error.ok()) {
          Status e = r.error().code() == ErrorCode::kUnknownConversation
                         ? Status(ErrorCode::kNotMember, "you are not a member of this conversation")
                         : r.error();
          pending->first_error = Status(e.code(), e.message() + " (conversation " + std::to_string(u.conversation_id) + ")");
        }
      } else if (r->changed) {
        store::StreamEvent e;
        e.kind = store::EventKind::kReceipt;
        e.conversation_id = u.conversation_id;
        e.created_at = u.now;
        e.receipt_user_id = u.user_id;
        e.receipt = r->aggregate;
        PublishEvents(std::move(e), r->positions, r->withheld);
        // read_changed, not this request's read: the store may have merged a
        // later "read" of this device into this receipt (SqliteStore).
        if (r->read_changed) PushAfterRead(u.user_id, u.device_id, u.conversation_id, r->aggregate.read);
      }
      if (--pending->left == 0) {
        if (!pending->first_error.ok()) return Fail(c, req, pending->first_error);
        Respond(c, req, nullptr);
      }
    }));
  }
}

// ---- Edits and deletes (issue 12) ----

// The store decides (protocol::DecideChange, in the transaction that holds
// the message) and appends the events; core answers and publishes them. The
// live event is built like the stored one (store/change_events.h), so it
// reads the same through sync.
// ---- Drafts (issue 12; docs/protocol.md "Drafts") ----

void ChatService::DoSetDraft(const ClientPtr& c, Req req) {
  auto d = std::get<protocol::SetDraftRequest>(req.body);
  const int64_t now = clock_.NowMillis();
  store_.SetDraft(c->user_id, d.conversation_id, d.text, now,
                  OnCore<store::SocialResult>([this, c, req, d, now](Result<store::SocialResult> r) {
                    if (!r) {
                      // Do not tell a non-member whether the conversation exists.
                      if (r.error().code() == ErrorCode::kUnknownConversation)
                        return Fail(c, req, Status(ErrorCode::kNotMember, "you are not a member of this conversation"));
                      return Fail(c, req, r.error());
                    }
                    // user_seq: the position of its `draft` event, so a
                    // device that applied that event (or a later one) before
                    // this answer keeps what the event said.
                    Respond(c, req, [&](JsonWriter& w) {
                      w.Field("conversation_id", d.conversation_id).Field("changed", r->changed);
                      if (r->changed) w.Field("user_seq", r->positions.at(0).user_seq);
                    });
                    if (r->changed) PublishDraft(d.conversation_id, store::DraftRecord{d.text, now}, r->positions.at(0));
                  }));
}

void ChatService::PublishDraft(int64_t conversation_id, const store::DraftRecord& draft,
                               const store::StreamPosition& at) {
  store::StreamEvent e;
  e.kind = store::EventKind::kDraft;
  e.conversation_id = conversation_id;
  e.created_at = draft.updated_at;
  e.draft = draft;
  PublishEvents(std::move(e), {at});
}

void ChatService::DoChangeMessage(const ClientPtr& c, Req req) {
  store::MessageChange ch;
  protocol::ChangeKind kind = protocol::ChangeKind::kEdit;
  if (req.type == RequestType::kEditMessage) {
    auto& r = std::get<protocol::EditMessageRequest>(req.body);
    ch.conversation_id = r.conversation_id;
    ch.seq = r.seq;
    ch.client_id = r.client_id;
    ch.body = r.body;
  } else {
    const auto& r = std::get<protocol::DeleteMessageRequest>(req.body);
    kind = r.for_everyone ? protocol::ChangeKind::kDelete : protocol::ChangeKind::kDeleteForMe;
    ch.conversation_id = r.conversation_id;
    ch.seq = r.seq;
  }
  ch.kind = static_cast<int>(kind);
  ch.user_id = c->user_id;
  ch.device_id = c->device_id;
  ch.now = clock_.NowMillis();
  ch.edit_window_ms = config_.change_windows.edit_ms;
  ch.delete_window_ms = config_.change_windows.delete_ms;
  store_.ChangeMessage(std::move(ch), OnCore<store::ChangeResult>([this, c, req, kind](Result<store::ChangeResult> r) {
    if (!r) {
      // Do not tell a non-member whether the conversation exists.
      if (r.error().code() == ErrorCode::kUnknownConversation)
        return Fail(c, req, Status(ErrorCode::kNotMember, "you are not a member of this conversation"));
      return Fail(c, req, r.error());
    }
    const store::MessageRecord& m = r->message;
    Respond(c, req, [&](JsonWriter& w) {
      w.Field("conversation_id", m.conversation_id).Field("seq", m.seq);
      switch (kind) {
        case protocol::ChangeKind::kEdit:
          w.Field("version", r->version).Field("edited_at", r->changed_at);
          break;
        case protocol::ChangeKind::kDelete:
          w.Field("for", "everyone").Field("version", r->version).Field("deleted_at", r->changed_at);
          break;
        case protocol::ChangeKind::kDeleteForMe:
          w.Field("for", "me").Field("deleted_at", r->changed_at);
          break;
      }
      w.Field("duplicate", r->duplicate);
    });
    if (r->duplicate) return;
    PublishChange(kind, *r);
  }));
}

// The live event of a stored change (the user's, or an expiry's delete),
// built as the stored one reads through sync.
void ChatService::PublishChange(protocol::ChangeKind kind, const store::ChangeResult& r) {
  const store::MessageRecord& m = r.message;
  store::StreamEvent e;
  e.conversation_id = m.conversation_id;
  e.created_at = r.changed_at;
  if (kind == protocol::ChangeKind::kDeleteForMe) {
    e.kind = store::EventKind::kDeleteForMe;
    e.message = store::HideEventMessage(m.conversation_id, m.seq);
  } else {
    e.kind = kind == protocol::ChangeKind::kEdit ? store::EventKind::kEdit : store::EventKind::kDelete;
    e.message = store::ChangeEventMessage(e.kind, m, r.version, r.changed_at, m.body);
  }
  PublishEvents(std::move(e), r.positions);
}

// ---- Message timeline ----

// "Message info": for a message the user sent, when it was accepted and
// stored and when each device of each member had it delivered and read.
// Other members' devices appear by id only (no names), and a member the
// message is withheld from looks like one whose devices have not received
// it yet: the sender must not learn of a block (DESIGN.md "Blocking").
void ChatService::DoMessageInfo(const ClientPtr& c, Req req) {
  auto q = std::get<protocol::MessageInfoRequest>(req.body);
  CheckMember(c->user_id, q.conversation_id, [this, c, req, q](Status s) {
    if (!s.ok()) {
      if (s.code() == ErrorCode::kUnknownConversation)
        s = Status(ErrorCode::kNotMember, "you are not a member of this conversation");
      return Fail(c, req, s);
    }
    store_.GetMessageTimeline(
        q.conversation_id, q.seq, OnCore<store::MessageTimeline>([this, c, req](Result<store::MessageTimeline> t) {
          if (!t) return Fail(c, req, t.error());
          if (t->message.sender_id != c->user_id)
            return Fail(c, req, Status(ErrorCode::kForbidden, "message info is only for messages you sent"));
          auto at = [](protocol::JsonWriter& w, const char* key, int64_t v) {
            w.Key(key);
            if (v == 0) w.Null();
            else w.Int(v);
          };
          Respond(c, req, [&](JsonWriter& w) {
            w.Field("conversation_id", t->message.conversation_id)
                .Field("seq", t->message.seq)
                .Field("client_id", t->message.client_id)
                .Field("sender_device_id", t->message.sender_device_id)
                .Field("accepted_at", t->accepted_at)
                .Field("stored_at", t->stored_at)
                .Key("members")
                .BeginArray();
            for (const auto& m : t->members) {
              bool own = m.user_id == c->user_id;
              w.BeginObject().Field("user_id", m.user_id).Field("username", m.username).Key("devices").BeginArray();
              for (const auto& d : m.devices) {
                w.BeginObject().Field("device_id", d.device_id);
                if (own) w.Field("name", d.name).Field("platform", d.platform).Field("sending_device", d.sending_device);
                at(w, "delivered_at", m.withheld ? 0 : d.delivered_at);
                at(w, "read_at", m.withheld ? 0 : d.read_at);
                w.EndObject();
              }
              w.EndArray().EndObject();
            }
            w.EndArray();
          });
        }));
  });
}

void ChatService::CloseDevices(int64_t user_id, std::vector<int64_t> devices, std::string reason, bool disabled) {
  core_.Post([this, user_id, devices = std::move(devices), reason = std::move(reason), disabled] {
    CloseRevoked(user_id, devices, reason,
                 disabled ? protocol::CloseCode::kAccountDisabled : protocol::CloseCode::kDeviceRevoked);
  });
}

void ChatService::UserErased(int64_t user_id) {
  core_.Post([this, user_id] { UserChanged({fabric::Fabric::UserChange::Kind::kErased, user_id, 0}); });
}

void ChatService::UserChanged(const fabric::Fabric::UserChange& change) {
  ApplyUserChange(change);
  fabric_.PublishUserChange(change);
}

void ChatService::ApplyUserChange(const fabric::Fabric::UserChange& change) {
  using Kind = fabric::Fabric::UserChange::Kind;
  switch (change.kind) {
    case Kind::kVisibility: return RecheckPresence(change.user_id, change.viewer);
    case Kind::kErased:
      std::erase_if(direct_, [user = change.user_id](const auto& entry) {
        return entry.second.sender == user || entry.second.peer == user;
      });
      return RecheckPresence(change.user_id, 0);
    case Kind::kRevoked: return revocations_.Note(change.user_id);
    case Kind::kAnything:
      revocations_.Note(0);
      direct_.clear();
      RecheckAllPresence();
      return RecheckDevices();
  }
}

void ChatService::WalkPaced(std::shared_ptr<PacedWalk> walk) {
  if (stopping_) return;
  if (walk->next >= walk->keys.size()) {
    walk->finished(walk->again);
    return;
  }
  const size_t end = std::min(walk->keys.size(), walk->next + static_cast<size_t>(std::max(1, config_.recheck_batch)));
  // One more than the batch, released after the loop: a visit that answers
  // at once does not start the next batch while this one is being issued.
  walk->pending = end - walk->next + 1;
  auto done = [this, walk] {
    if (--walk->pending == 0) core_.Post([this, walk] { WalkPaced(walk); });
  };
  for (; walk->next < end; ++walk->next) walk->visit(walk->keys[walk->next], done);
  done();
}

void ChatService::RecheckDevices() {
  if (device_walk_) {
    device_walk_->again = true;
    return;
  }
  auto walk = std::make_shared<PacedWalk>();
  walk->keys.reserve(live_.size());
  for (const auto& [user_id, live] : live_) walk->keys.push_back(user_id);
  walk->visit = [this](int64_t user, std::function<void()> done) {
    RecheckUserDevices(user, [this, user, done = std::move(done)] { NoticeHead(user, done); });
  };
  walk->finished = [this](bool again) {
    device_walk_.reset();
    if (again) RecheckDevices();
  };
  device_walk_ = walk;
  WalkPaced(std::move(walk));
}

// Only the devices connected when the reads were issued are judged: one that
// logged in since may be newer than what they read.
void ChatService::RecheckUserDevices(int64_t user, std::function<void()> done, std::function<void()> unsure) {
  std::vector<int64_t> judged = fabric_.AttachedDevices(user);
  if (judged.empty()) return done();
  auto close = [this, user, judged = std::move(judged), done](const std::vector<int64_t>& keep, const char* reason,
                                                             protocol::CloseCode code) {
    const std::vector<int64_t> attached = fabric_.AttachedDevices(user);
    for (int64_t d : judged) {
      if (std::find(keep.begin(), keep.end(), d) != keep.end()) continue;
      if (!std::binary_search(attached.begin(), attached.end(), d)) continue;
      devices_rechecked_closed_.Inc();
      spdlog::info("event=device_closed_on_recheck user_id={} device_id={} reason=\"{}\"", user, d, reason);
      fabric_.CloseDevice(user, d, static_cast<uint16_t>(code), CloseReason(code, reason));
    }
    done();
  };
  auto failed = [done, unsure = std::move(unsure)] {
    if (unsure) unsure();
    done();
  };
  store_.GetUserById(user, OnCore<store::UserRecord>([this, user, close, failed](Result<store::UserRecord> u) {
    if (!u) {
      if (u.error().code() == ErrorCode::kUnknownUser) return close({}, "account deleted", protocol::CloseCode::kDeviceRevoked);
      return failed();
    }
    // A disabled account keeps its tokens: its devices come back later.
    if (u->disabled) return close({}, "account disabled", protocol::CloseCode::kAccountDisabled);
    store_.ListDevices(user, OnCore<std::vector<store::DeviceRecord>>(
                                 [close, failed](Result<std::vector<store::DeviceRecord>> listed) {
                                   if (!listed) return failed();
                                   std::vector<int64_t> keep;
                                   for (const auto& d : *listed) keep.push_back(d.id);
                                   close(keep, "device revoked", protocol::CloseCode::kDeviceRevoked);
                                 }));
  }));
}

void ChatService::NoticeHead(int64_t user, std::function<void()> done) {
  if (fabric_.AttachedDevices(user).empty()) return done();
  store_.GetHead(user, OnCore<int64_t>([this, user, done](Result<int64_t> head) {
    if (head) {
      NoteHead(user, *head);
      fabric_.PublishHere(user, std::make_shared<const std::string>(protocol::EncodeHeadNotice(*head)),
                          /*ephemeral=*/true);
    }
    done();
  }));
}

// ---- Sync ----

void ChatService::DoSync(const ClientPtr& c, Req req) {
  auto& s = std::get<protocol::SyncRequest>(req.body);
  int64_t after = s.after.value_or(c->cursor);
  store_.ReadStream(c->user_id, after, s.limit, OnCore<store::StreamPage>([this, c, req, after](Result<store::StreamPage> p) {
    if (!p) {
      // Trimmed past the cursor (chat_retention.cc "Stream trimming"): the
      // device takes a snapshot and goes on from its head.
      if (p.error().code() == ErrorCode::kCursorTooOld) cursor_too_old_.Inc();
      return Fail(c, req, p.error());
    }
    NoteHead(c->user_id, p->head);
    if (after > p->head)
      return Fail(c, req, Status(ErrorCode::kCursorAhead, "'after' is beyond the head of your stream; take a snapshot"));
    const int64_t now = clock_.NowMillis();
    for (auto& e : p->events)
      if (e.message) store::MaskIfExpired(&*e.message, now);
    if (c->selective) return RespondSelectivePage(c, req, after, std::move(*p));
    Respond(c, req, [&](JsonWriter& w) { WriteSyncPage(w, after, *p, nullptr); });
  }));
}

void ChatService::DoAck(const ClientPtr& c, Req req) {
  int64_t seq = std::get<protocol::AckRequest>(req.body).user_seq;
  if (auto it = live_.find(c->user_id); it != live_.end() && seq > it->second.head) {
    // Beyond the head this node knows: another node (cluster) may have
    // appended since. The store decides.
    if (!config_.cluster)
      return Fail(c, req, Status(ErrorCode::kCursorAhead, "cannot acknowledge beyond the head of your stream"));
    return store_.GetHead(c->user_id, OnCore<int64_t>([this, c, req, seq](Result<int64_t> head) mutable {
      if (!head) return Fail(c, req, head.error());
      NoteHead(c->user_id, *head);
      if (seq > *head)
        return Fail(c, req, Status(ErrorCode::kCursorAhead, "cannot acknowledge beyond the head of your stream"));
      if (c->closed) return;
      DoAck(c, std::move(req));
    }));
  }
  if (seq <= c->cursor) return Respond(c, req, [&](JsonWriter& w) { w.Field("cursor", c->cursor); });
  c->cursor = seq;
  store_.SetCursor(c->device_id, seq, clock_.NowMillis(), OnCoreStatus([this, c, req, seq](Status s) {
    if (!s.ok()) return Fail(c, req, s);
    Respond(c, req, [&](JsonWriter& w) { w.Field("cursor", seq); });
  }));
}

void ChatService::DoHistory(const ClientPtr& c, Req req) {
  auto h = std::get<protocol::HistoryRequest>(req.body);
  CheckMember(c->user_id, h.conversation_id, [this, c, req, h](Status s) {
    if (!s.ok()) {
      if (s.code() == ErrorCode::kUnknownConversation) s = Status(ErrorCode::kNotMember, "you are not a member of this conversation");
      return Fail(c, req, s);
    }
    store_.History(h.conversation_id, c->user_id, h.before, h.limit,
                   OnCore<std::vector<store::MessageRecord>>([this, c, req](Result<std::vector<store::MessageRecord>> r) {
                     if (!r) return Fail(c, req, r.error());
                     const int64_t now = clock_.NowMillis();
                     for (auto& m : *r) store::MaskIfExpired(&m, now);
                     Respond(c, req, [&](JsonWriter& w) { protocol::WriteHistory(w, *r, config_.max_page_bytes); });
                   }));
  });
}

void ChatService::DoSnapshot(const ClientPtr& c, Req req) {
  int n = std::get<protocol::SnapshotRequest>(req.body).messages;
  store_.GetSnapshot(c->user_id, n, OnCore<store::Snapshot>([this, c, req](Result<store::Snapshot> r) {
    if (!r) return Fail(c, req, r.error());
    NoteHead(c->user_id, r->head);
    const int64_t now = clock_.NowMillis();
    for (auto& summary : r->conversations)
      for (auto& m : summary.latest) store::MaskIfExpired(&m, now);
    Respond(c, req, [&](JsonWriter& w) {
      w.Field("head", r->head);
      WriteSummaries(w, r->conversations);
    });
  }));
}

// "conversations": the summaries, within the page budget: when they do not
// fit, each keeps fewer of its newest messages (halved until they fit, down
// to none); the device pages the rest with `history`.
void ChatService::WriteSummaries(JsonWriter& w, std::vector<store::ConversationSummary>& summaries) {
  const JsonWriter::Mark start = w.Here();
  size_t most = 0;
  for (const auto& s : summaries) most = std::max(most, s.latest.size());
  for (;;) {
    w.Key("conversations").BeginArray();
    for (const auto& s : summaries) protocol::WriteSummary(w, s);
    w.EndArray();
    if (w.size() - start.bytes <= config_.max_page_bytes || most == 0) return;
    most /= 2;
    for (auto& s : summaries)
      if (s.latest.size() > most) s.latest.erase(s.latest.begin(), s.latest.end() - static_cast<ptrdiff_t>(most));
    w.Rewind(start);
  }
}

void ChatService::DoPing(const ClientPtr& c, Req req) {
  if (config_.cluster && c->user_id != 0) {
    // Other nodes append to this user's stream too: the head comes from the
    // store, so that a device whose live event was lost on the way notices.
    return store_.GetHead(c->user_id, OnCore<int64_t>([this, c, req](Result<int64_t> head) {
      if (!head) return Fail(c, req, head.error());
      NoteHead(c->user_id, *head);
      Respond(c, req, [&](JsonWriter& w) { w.Field("ts", clock_.NowMillis()).Field("head", *head); });
    }));
  }
  int64_t head = 0;
  if (auto it = live_.find(c->user_id); it != live_.end()) head = it->second.head;
  Respond(c, req, [&](JsonWriter& w) {
    w.Field("ts", clock_.NowMillis());
    if (c->user_id != 0) w.Field("head", head);
  });
}

// ---- Fan-out ----

void ChatService::NoteHead(int64_t user_id, int64_t user_seq) {
  if (auto it = live_.find(user_id); it != live_.end()) it->second.head = std::max(it->second.head, user_seq);
}

void ChatService::PublishEvents(store::StreamEvent event, const std::vector<store::StreamPosition>& positions,
                                const std::vector<std::vector<store::Seq>>& withheld) {
  for (size_t i = 0; i < positions.size(); ++i) {
    const auto& p = positions[i];
    NoteHead(p.user_id, p.user_seq);
    // Nobody connected (on any node, as the fabric knows): sync will carry it.
    if (!fabric_.IsConnected(p.user_id)) continue;
    event.user_seq = p.user_seq;
    if (i < withheld.size()) event.withheld = withheld[i];
    frames_out_.Inc();
    auto frame = std::make_shared<const std::string>(protocol::EncodeEvent(event));
    if (event.kind == store::EventKind::kReceipt)
      fabric_.PublishReceipt(p.user_id, std::move(frame), std::make_shared<const store::StreamEvent>(event));
    else
      fabric_.Publish(p.user_id, std::move(frame));
  }
}

}  // namespace parley::core

namespace parley::core {

// ---- Profiles, contacts, blocking, search (docs/protocol.md, "Contacts and blocking") ----

void ChatService::PublishSocial(store::EventKind kind, const store::SocialResult& r, bool flag) {
  if (!r.changed) return;
  store::StreamEvent e;
  e.kind = kind;
  e.created_at = clock_.NowMillis();
  e.profile = r.profile;
  e.flag = flag;
  PublishEvents(std::move(e), r.positions);
}

void ChatService::DoSetProfile(const ClientPtr& c, Req req) {
  auto& p = std::get<protocol::SetProfileRequest>(req.body);
  store_.SetProfile(c->user_id, p.display_name, p.about, clock_.NowMillis(),
                    OnCore<store::SocialResult>([this, c, req](Result<store::SocialResult> r) {
                      if (!r) return Fail(c, req, r.error());
                      Respond(c, req, [&](JsonWriter& w) {
                        w.Key("profile");
                        protocol::WriteProfile(w, r->profile);
                      });
                      PublishSocial(store::EventKind::kProfile, *r, false);
                    }));
}

// ---- Serial requests (Client::Turns) ----

void ChatService::RunInTurn(const ClientPtr& c, Client::Turns Client::*turns, Req req, TurnFn run) {
  Client::Turns& t = (*c).*turns;
  if (t.waiting.size() >= kMaxWaitingTurns) {
    RateLimited(req.type).Inc();
    return Fail(c, req,
                Status(ErrorCode::kRateLimited,
                       fmt::format("more than {} requests of this kind wait on this connection; retry after retry_after_ms",
                                   kMaxWaitingTurns)),
                kTurnRetryAfterMs);
  }
  t.waiting.push_back(std::move(req));
  NextTurn(c, turns, run);
}

void ChatService::EndTurn(const ClientPtr& c, Client::Turns Client::*turns, TurnFn run) {
  ((*c).*turns).busy = false;
  NextTurn(c, turns, run);
}

void ChatService::NextTurn(const ClientPtr& c, Client::Turns Client::*turns, TurnFn run) {
  Client::Turns& t = (*c).*turns;
  // Called again by a turn that ended at once: the loop below goes on.
  if (t.pumping) return;
  t.pumping = true;
  // Shutting down: as with sends, what waited behind a request is not started.
  while (stopping_ && !t.waiting.empty() && !c->closed) {
    Fail(c, t.waiting.front(), Status(ErrorCode::kShuttingDown, "the server is shutting down"));
    t.waiting.pop_front();
  }
  while (!t.busy && !t.waiting.empty() && !c->closed) {
    t.busy = true;
    Req req = std::move(t.waiting.front());
    t.waiting.pop_front();
    (this->*run)(c, std::move(req));
  }
  t.pumping = false;
}

// add_contact, remove_contact, block, unblock: resolve the username, then the
// store operation; the event goes to the acting user's own stream. One at a
// time per connection, up to the write's submission (writes are applied in
// submission order): with lookups completing in any order, "block bob" then
// "unblock bob" could otherwise be stored unblock-then-block.
void ChatService::DoContactOrBlock(const ClientPtr& c, Req req) {
  RunInTurn(c, &Client::social_turns, std::move(req), &ChatService::RunContactOrBlock);
}

void ChatService::RunContactOrBlock(const ClientPtr& c, Req req) {
  std::string username = std::get<protocol::UserRequest>(req.body).username;
  store_.GetUserByName(username, OnCore<store::UserRecord>([this, c, req](Result<store::UserRecord> u) {
    auto end_turn = [this, c] { EndTurn(c, &Client::social_turns, &ChatService::RunContactOrBlock); };
    if (!u) {
      Fail(c, req, UnknownUserOr(u.error()));
      return end_turn();
    }
    auto done = OnCore<store::SocialResult>([this, c, req](Result<store::SocialResult> r) {
      if (!r) return Fail(c, req, r.error());
      Respond(c, req, [&](JsonWriter& w) {
        w.Key("user");
        protocol::WriteProfile(w, r->profile);
      });
      bool positive = req.type == RequestType::kAddContact || req.type == RequestType::kBlock;
      bool contact = req.type == RequestType::kAddContact || req.type == RequestType::kRemoveContact;
      if (!contact && r->changed) {
        // Loads of this user's set still in flight read it before this
        // change: none of them may replace what is cached now.
        block_loads_.Supersede(c->user_id);
        if (auto it = blocks_.find(c->user_id); it != blocks_.end()) {
          auto changed = std::make_shared<std::unordered_set<int64_t>>(*it->second);
          if (positive) changed->insert(r->profile.user_id);
          else changed->erase(r->profile.user_id);
          it->second = std::move(changed);
        }
      }
      PublishSocial(contact ? store::EventKind::kContact : store::EventKind::kBlock, *r, positive);
      if (r->target_position && r->target_profile) {
        // An unblock: the profile changes the target missed during the block.
        store::StreamEvent e;
        e.kind = store::EventKind::kProfile;
        e.created_at = clock_.NowMillis();
        e.profile = *r->target_profile;
        PublishEvents(std::move(e), {*r->target_position});
      }
      if (r->changed) {
        // Presence visibility follows contacts (the owner's "contacts"
        // setting) and blocks (both directions).
        int64_t other = r->profile.user_id;
        using Kind = fabric::Fabric::UserChange::Kind;
        UserChanged({Kind::kVisibility, c->user_id, other});
        if (!contact) UserChanged({Kind::kVisibility, other, c->user_id});
      }
    });
    int64_t now = clock_.NowMillis();
    switch (req.type) {
      case RequestType::kAddContact: store_.AddContact(c->user_id, u->id, now, std::move(done)); break;
      case RequestType::kRemoveContact: store_.RemoveContact(c->user_id, u->id, now, std::move(done)); break;
      case RequestType::kBlock: store_.Block(c->user_id, u->id, now, std::move(done)); break;
      default: store_.Unblock(c->user_id, u->id, now, std::move(done)); break;
    }
    end_turn();
  }));
}

// Contacts with their presence as the owner may see it.
void ChatService::DoListContacts(const ClientPtr& c, Req req) {
  store_.ListContacts(c->user_id, OnCore<std::vector<store::ContactRecord>>([this, c, req](
                                                                                Result<std::vector<store::ContactRecord>> r) {
    if (!r) return Fail(c, req, r.error());
    std::vector<int64_t> ids;
    for (const auto& ct : *r) ids.push_back(ct.profile.user_id);
    store_.GetPresence(
        c->user_id, ids,
        OnCore<std::vector<store::PresenceRecord>>([this, c, req, contacts = std::move(*r)](
                                                       Result<std::vector<store::PresenceRecord>> p) {
          if (!p) return Fail(c, req, p.error());
          std::unordered_map<int64_t, store::PresenceRecord> presence;
          for (const auto& rec : *p) presence[rec.user_id] = rec;
          Respond(c, req, [&](JsonWriter& w) {
            w.Key("contacts").BeginArray();
            for (const auto& ct : contacts) {
              w.BeginObject().Key("user");
              protocol::WriteProfile(w, ct.profile);
              const store::PresenceRecord& rec = presence[ct.profile.user_id];
              PresenceView view = presence_.View(ct.profile.user_id, rec.visible, rec.last_seen);
              w.Field("added_at", ct.added_at).Key("presence");
              protocol::WritePresence(w, ct.profile.user_id, view.online, view.last_seen);
              w.EndObject();
            }
            w.EndArray();
          });
        }));
  }));
}

void ChatService::DoListBlocked(const ClientPtr& c, Req req) {
  store_.ListBlocked(c->user_id, OnCore<std::vector<store::ProfileRecord>>(
                                     [this, c, req](Result<std::vector<store::ProfileRecord>> r) {
                                       if (!r) return Fail(c, req, r.error());
                                       Respond(c, req, [&](JsonWriter& w) {
                                         w.Key("users").BeginArray();
                                         for (const auto& p : *r) protocol::WriteProfile(w, p);
                                         w.EndArray();
                                       });
                                     }));
}

void ChatService::DoSearchUsers(const ClientPtr& c, Req req) {
  auto& s = std::get<protocol::SearchUsersRequest>(req.body);
  store_.SearchUsers(c->user_id, s.query, s.after, s.limit,
                     OnCore<store::SearchPage>([this, c, req](Result<store::SearchPage> r) {
                       if (!r) return Fail(c, req, r.error());
                       Respond(c, req, [&](JsonWriter& w) {
                         w.Key("users").BeginArray();
                         for (const auto& p : r->users) protocol::WriteProfile(w, p);
                         w.EndArray().Key("next");
                         if (r->next.empty()) w.Null(); else w.String(r->next);
                       });
                     }));
}

// Message search (issue 12; docs/protocol.md "search_messages"). The query's
// words are split as the store indexes them (store/name_words.h).
void ChatService::DoSearchMessages(const ClientPtr& c, Req req) {
  auto& s = std::get<protocol::SearchMessagesRequest>(req.body);
  store::MessageSearchQuery q;
  q.searcher = c->user_id;
  q.words = store::MessageWords(s.query);
  if (q.words.empty())
    return Fail(c, req, Status(ErrorCode::kBadRequest, "field 'query' has no words (letters or digits) to search for"));
  if (q.words.size() > protocol::kMaxMessageSearchWords)
    return Fail(c, req, Status(ErrorCode::kBadRequest, fmt::format("field 'query' has more than {} distinct words",
                                                                   protocol::kMaxMessageSearchWords)));
  q.conversation_id = s.conversation_id;
  q.before = s.before;
  q.limit = s.limit;
  store_.SearchMessages(std::move(q), OnCore<store::MessageSearchPage>([this, c, req](Result<store::MessageSearchPage> r) {
    if (!r) {
      Status e = r.error();
      // As history: a conversation one is not in is not told apart from one that does not exist.
      if (e.code() == ErrorCode::kUnknownConversation) e = Status(ErrorCode::kNotMember, "you are not a member of this conversation");
      return Fail(c, req, e);
    }
    const int64_t now = clock_.NowMillis();
    for (auto& m : r->messages) store::MaskIfExpired(&m, now);
    Respond(c, req, [&](JsonWriter& w) { protocol::WriteSearchResults(w, *r, config_.max_page_bytes); });
  }));
}

void ChatService::DoListConversations(const ClientPtr& c, Req req) {
  auto& l = std::get<protocol::ListConversationsRequest>(req.body);
  store_.ListConversations(c->user_id, l.before_activity, l.before_id, l.limit, l.messages,
                           OnCore<store::ConversationPage>([this, c, req](Result<store::ConversationPage> r) {
                             if (!r) return Fail(c, req, r.error());
                             const int64_t now = clock_.NowMillis();
                             for (auto& summary : r->conversations)
                               for (auto& m : summary.latest) store::MaskIfExpired(&m, now);
                             Respond(c, req, [&](JsonWriter& w) {
                               WriteSummaries(w, r->conversations);
                               w.Key("next");
                               if (!r->has_more) {
                                 w.Null();
                               } else {
                                 w.BeginObject()
                                     .Field("before_activity", r->next_activity)
                                     .Field("before_id", r->next_id)
                                     .EndObject();
                               }
                             });
                           }));
}

// Verifies the old password and hashes the new one on the hashing pool, then
// replaces the hash and revokes every other device of the user, whose
// connections are closed at once.
void ChatService::DoChangePassword(const ClientPtr& c, Req req) {
  store_.GetUserById(c->user_id, OnCore<store::UserRecord>([this, c, req](Result<store::UserRecord> u) mutable {
    if (!u) return Fail(c, req, u.error());
    auto cp = std::get<protocol::ChangePasswordRequest>(req.body);
    PasswordCost cost = config_.password_cost;
    hash_pool_.Submit([this, c, req, cp, cost, old_hash = u->password_hash]() {
      bool ok = VerifyPassword(old_hash, cp.old_password);
      Result<std::string> fresh = ok ? HashPassword(cp.new_password, cost)
                                     : Result<std::string>(Status(ErrorCode::kWrongPassword, "the old password is wrong"));
      core_.Post([this, c, req, fresh = std::move(fresh)]() mutable {
        if (!fresh) return Fail(c, req, fresh.error());
        store_.ChangePassword(
            c->user_id, std::move(*fresh), c->device_id, clock_.NowMillis(),
            OnCore<std::vector<store::DeviceId>>([this, c, req](Result<std::vector<store::DeviceId>> r) {
              if (!r) return Fail(c, req, r.error());
              spdlog::info("event=password_changed user_id={} devices_revoked={}", c->user_id, r->size());
              Respond(c, req, [&](JsonWriter& w) { w.Field("devices_revoked", static_cast<int64_t>(r->size())); });
              CloseRevoked(c->user_id, *r, "password changed");
            }));
      });
    });
  }));
}

}  // namespace parley::core

namespace parley::core {

// ---- Typing (ephemeral: never stored, never in the user stream) ----

namespace {
// Users whose block sets are kept; the cache is cleared whole beyond this.
constexpr size_t kMaxCachedBlockSets = 100'000;
}  // namespace

bool ChatService::EitherBlocks(const BlockSets& sets, int64_t a, int64_t b) {
  auto blocks = [&sets](int64_t owner, int64_t target) {
    auto it = sets.find(owner);
    return it != sets.end() && it->second && it->second->count(target) != 0;
  };
  return blocks(a, b) || blocks(b, a);
}

// Each decision gets the sets it was made with, so a load whose answer is
// not cached (it landed after a later one, or after this node's own block
// or unblock: block_loads_) still decides with what it read.
void ChatService::LoadBlocks(const std::vector<int64_t>& users, std::function<void(Status, const BlockSets&)> then) {
  struct Pending {
    BlockSets sets;
    size_t left = 0;
    Status status;
  };
  auto pending = std::make_shared<Pending>();
  std::vector<int64_t> missing;
  for (int64_t u : users) {
    // In a cluster another node may have changed a block list: always reload.
    auto it = config_.cluster ? blocks_.end() : blocks_.find(u);
    if (it != blocks_.end()) pending->sets[u] = it->second;
    else missing.push_back(u);
  }
  if (missing.empty()) return then(Status::Ok(), pending->sets);
  pending->left = missing.size();
  for (int64_t u : missing) {
    const RequestOrder<int64_t>::Ticket ticket = block_loads_.Take(u);
    store_.ListBlocked(u, OnCore<std::vector<store::ProfileRecord>>(
                              [this, u, ticket, pending, then](Result<std::vector<store::ProfileRecord>> r) {
                                if (!r) {
                                  block_loads_.Drop(u, ticket);
                                  if (pending->status.ok()) pending->status = r.error();
                                } else {
                                  auto set = std::make_shared<std::unordered_set<int64_t>>();
                                  for (const auto& p : *r) set->insert(p.user_id);
                                  if (block_loads_.Land(u, ticket) && !config_.cluster) {
                                    if (blocks_.size() >= kMaxCachedBlockSets && blocks_.count(u) == 0)
                                      blocks_.clear();
                                    blocks_[u] = set;
                                  }
                                  pending->sets[u] = std::move(set);
                                }
                                if (--pending->left == 0) then(pending->status, pending->sets);
                              }));
  }
}

// "start" reaches the other members' connected devices (never across a block
// in either direction) and expires on its own after typing_expiry_ms, when a
// "stop" follows unless the typer refreshed or stopped it.
//
// A request may wait for reads (membership when the conversation is not
// cached, block lists when not cached and always in a cluster) that complete
// in any order, so it takes its place in typing_order_ at arrival: once its
// reads are done it publishes only if no later request of the same typer in
// the conversation already has (else a "start" could reach the others after
// the "stop" sent after it, and arm an expiry for a typer who stopped).
void ChatService::DoTyping(const ClientPtr& c, Req req) {
  auto t = std::get<protocol::TypingRequest>(req.body);
  const TypingKey key{t.conversation_id, c->user_id};
  const RequestOrder<TypingKey, IdPairHash>::Ticket ticket = typing_order_.Take(key);
  CheckMember(c->user_id, t.conversation_id, [this, c, req, t, key, ticket](Status s) {
    if (!s.ok()) {
      typing_order_.Drop(key, ticket);
      if (s.code() == ErrorCode::kUnknownConversation)
        s = Status(ErrorCode::kNotMember, "you are not a member of this conversation");
      return Fail(c, req, s);
    }
    Respond(c, req, nullptr);
    auto it = conversations_.find(t.conversation_id);
    if (it == conversations_.end()) {
      typing_order_.Drop(key, ticket);  // the cache was cleared meanwhile: nothing to tell
      return;
    }
    std::vector<int64_t> users = {c->user_id};
    for (const auto& m : it->second.members)
      if (m.user_id != c->user_id) users.push_back(m.user_id);
    LoadBlocks(users, [this, users, key, ticket, t](Status loaded, const BlockSets& sets) {
      // Stale: a later request of this typer here took effect first.
      if (!typing_order_.Land(key, ticket)) return;
      // Blocks unknown (a read failed): tell nobody rather than cross one.
      if (!loaded.ok()) return;
      std::vector<int64_t> audience;
      for (size_t i = 1; i < users.size(); ++i)
        if (!EitherBlocks(sets, key.second, users[i])) audience.push_back(users[i]);
      PublishTyping(t.conversation_id, key.second, t.typing, std::move(audience));
    });
  });
}

void ChatService::PublishTyping(int64_t conversation_id, int64_t typer, bool typing, std::vector<int64_t> audience) {
  const TypingKey key{conversation_id, typer};
  auto frame = std::make_shared<const std::string>(
      protocol::EncodeTyping(conversation_id, typer, typing, config_.typing_expiry_ms));
  for (int64_t u : audience) fabric_.Publish(u, frame, /*ephemeral=*/true);
  if (!typing) {
    typing_.erase(key);
    return;
  }
  uint64_t gen = ++typing_generation_;
  typing_[key] = gen;
  core_.PostAfter(config_.typing_expiry_ms, [this, key, gen, audience = std::move(audience)] {
    auto found = typing_.find(key);
    if (found == typing_.end() || found->second != gen) return;  // refreshed or stopped
    typing_.erase(found);
    auto stop = std::make_shared<const std::string>(protocol::EncodeTyping(key.first, key.second, false, 0));
    for (int64_t u : audience) fabric_.Publish(u, stop, /*ephemeral=*/true);
  });
}

}  // namespace parley::core
