// RedisFabric (see the header for the data model). Local connections are a
// LocalFabric; everything about Redis lives on the I/O thread: the two hiredis
// connections (commands; subscriptions), this node's route bookkeeping, and
// the other nodes' presence. Only the cache IsConnected reads
// (remote_connected_) and the presence and user-change callbacks are
// shared, under mu_.
#include "fabric/redis/redis_fabric.h"

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <spdlog/spdlog.h>

#include <fmt/format.h>

#include <algorithm>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/url/parse.hpp>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <future>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "common/metrics.h"
#include "common/this_thread.h"
#include "fabric/local/local_fabric.h"

namespace parley::fabric {

namespace net = boost::asio;

namespace {

constexpr char kPresenceChannel[] = "parley:presence";
// How often a node id used by two live processes is logged while it lasts.
constexpr int64_t kDuplicateIdLogIntervalMs = 60'000;
// A node answers hellos with one snapshot after a random wait of up to this
// long (AnswerHello).
constexpr int kHelloAnswerSpreadMs = 200;
// A TIME answer that took longer than this does not update the offset to
// Redis' clock (taken as the middle of the round trip, it could be off by
// half of it).
constexpr int64_t kMaxClockSampleMs = 200;
// How long the destructor waits for its goodbye to reach Redis.
constexpr int kGoodbyeTimeoutMs = 1'000;

// Reads the user's live routes (scored by their expiry in Redis' clock) and
// publishes ARGV[2] to the channel of each other node (not ARGV[1]) that
// holds one of them (only to the node holding device ARGV[3] if it is not
// empty). Returns the number of nodes published to.
constexpr char kRouteScript[] = R"lua(
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local members = redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
local sent = {}
local n = 0
for _, m in ipairs(members) do
  local sep = string.find(m, '|', 1, true)
  if sep then
    local node = string.sub(m, 1, sep - 1)
    local dev = string.sub(m, sep + 1)
    if node ~= ARGV[1] and not sent[node] and (ARGV[3] == '' or ARGV[3] == dev) then
      sent[node] = true
      n = n + 1
      redis.call('PUBLISH', 'parley:node:' .. node, ARGV[2])
    end
  end
end
return n
)lua";

// Shared rate-limit buckets. ARGV[1]: the most a bucket may owe, in bursts;
// then per bucket KEYS[i], three values: tokens used, refill per second,
// burst. Refills each bucket by Redis' clock (so node clocks do not matter),
// debits it, keeps it with a TTL of its time to full (a full bucket is
// deleted: a missing bucket reads as full), and returns each level in
// thousandths of a token (integers: Redis truncates Lua numbers).
constexpr char kRateScript[] = R"lua(
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local debt = tonumber(ARGV[1])
local out = {}
for i, key in ipairs(KEYS) do
  local used = tonumber(ARGV[3 * i - 1])
  local rate = tonumber(ARGV[3 * i])
  local burst = tonumber(ARGV[3 * i + 1])
  local v = redis.call('HMGET', key, 't', 'at')
  local tokens = burst
  if v[1] and v[2] then
    tokens = math.min(burst, tonumber(v[1]) + math.max(0, now - tonumber(v[2])) * rate / 1000)
  end
  tokens = math.max(tokens - used, -debt * burst)
  out[i] = math.floor(tokens * 1000)
  if tokens >= burst then
    redis.call('DEL', key)
  else
    redis.call('HSET', key, 't', tostring(tokens), 'at', tostring(now))
    redis.call('PEXPIRE', key, math.ceil((burst - tokens) * 1000 / rate) + 1000)
  end
end
return out
)lua";

int64_t SteadyMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string RouteKey(int64_t user) { return "parley:route:" + std::to_string(user); }

bool ValidNodeId(const std::string& id) {
  if (id.empty() || id.size() > 128) return false;
  for (char ch : id) {
    bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '-' ||
              ch == '_' || ch == '.' || ch == ':';
    if (!ok) return false;
  }
  return true;
}

// Drives one redisAsyncContext from an io_context through hiredis' adapter
// hooks. hiredis owns the socket: the descriptor is released, never closed.
struct AsioAdapter : std::enable_shared_from_this<AsioAdapter> {
  AsioAdapter(net::io_context& io, redisAsyncContext* c) : sd(io, c->c.fd), ac(c) {}
  net::posix::stream_descriptor sd;
  redisAsyncContext* ac;
  bool reading = false, writing = false, read_armed = false, write_armed = false, dead = false;

  void ArmRead() {
    if (dead || !reading || read_armed) return;
    read_armed = true;
    sd.async_wait(net::posix::stream_descriptor::wait_read, [self = shared_from_this()](boost::system::error_code ec) {
      self->read_armed = false;
      if (self->dead || ec == net::error::operation_aborted || !self->reading) return;
      redisAsyncHandleRead(self->ac);  // may free the context (then dead is set)
      self->ArmRead();
    });
  }
  void ArmWrite() {
    if (dead || !writing || write_armed) return;
    write_armed = true;
    sd.async_wait(net::posix::stream_descriptor::wait_write, [self = shared_from_this()](boost::system::error_code ec) {
      self->write_armed = false;
      if (self->dead || ec == net::error::operation_aborted || !self->writing) return;
      redisAsyncHandleWrite(self->ac);
      self->ArmWrite();
    });
  }

  struct Holder {
    std::shared_ptr<AsioAdapter> a;
  };
  static void Attach(net::io_context& io, redisAsyncContext* ctx) {
    auto* h = new Holder{std::make_shared<AsioAdapter>(io, ctx)};
    ctx->ev.data = h;
    ctx->ev.addRead = [](void* p) {
      auto& a = *static_cast<Holder*>(p)->a;
      a.reading = true;
      a.ArmRead();
    };
    ctx->ev.delRead = [](void* p) { static_cast<Holder*>(p)->a->reading = false; };
    ctx->ev.addWrite = [](void* p) {
      auto& a = *static_cast<Holder*>(p)->a;
      a.writing = true;
      a.ArmWrite();
    };
    ctx->ev.delWrite = [](void* p) { static_cast<Holder*>(p)->a->writing = false; };
    ctx->ev.cleanup = [](void* p) {
      auto* holder = static_cast<Holder*>(p);
      auto& a = *holder->a;
      a.dead = true;
      a.reading = a.writing = false;
      a.sd.release();  // cancels the waits; hiredis closes the fd
      delete holder;
    };
  }
};

// The text of an error reply.
std::string_view ErrorText(const redisReply* r) { return {r->str, r->len}; }

// Error replies of a Redis that cannot serve yet, but will by itself: LOADING
// (its data set, after a restart), BUSY (a script runs past its time limit),
// MASTERDOWN (a replica that lost its master). Not a refusal of this node.
bool RedisNotReady(std::string_view error) {
  return error.starts_with("LOADING ") || error.starts_with("BUSY ") || error.starts_with("MASTERDOWN ");
}

}  // namespace

Status ParseRedisAddress(const std::string& text, RedisFabricConfig* config) {
  const auto bad = [&text] {
    // Never the password in an error (it goes to the log).
    std::string shown = text;
    if (const size_t at = shown.rfind('@'); at != std::string::npos && shown.rfind("redis://", 0) == 0)
      shown = "redis://***" + shown.substr(at);
    return Status(ErrorCode::kBadRequest,
                  "--redis: expected HOST:PORT or redis://[[USER]:PASSWORD@]HOST[:PORT] (no database path), got '" +
                      shown + "'");
  };
  std::string host, port = "6379";
  if (text.rfind("redis://", 0) == 0) {
    auto url = boost::urls::parse_uri(text);
    if (!url || !url->has_authority() || (!url->path().empty() && url->path() != "/") || url->has_query()) return bad();
    if (url->has_userinfo()) {
      if (!url->has_password()) return bad();  // redis://NAME@HOST: a user without a password means nothing
      config->username = url->user();
      config->password = url->password();
    }
    host = url->host_address();
    if (url->has_port()) port = url->port();
  } else {
    const size_t colon = text.rfind(':');
    host = text.substr(0, colon);
    if (colon != std::string::npos) port = text.substr(colon + 1);
    if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);  // [::1]:6379
  }
  int p = 0;
  for (char ch : port) {
    if (ch < '0' || ch > '9' || p > 65535) return bad();
    p = p * 10 + (ch - '0');
  }
  if (host.empty() || port.empty() || p <= 0 || p > 65535) return bad();
  config->host = host;
  config->port = p;
  return Status::Ok();
}

struct RedisFabric::Impl {
  struct Conn {
    Impl* impl = nullptr;
    bool subscriber = false;
    redisAsyncContext* ac = nullptr;
    bool connected = false;
    bool subscribed = false;  // subscriber: the SUBSCRIBE was confirmed
    bool answered = false;    // commands: a PING sent at connect was answered (Redis serves, not just the kernel)
    int failures = 0;         // connection attempts failed in a row (only the first is logged)
    int refusals = 0;         // connections Redis refused in a row (AUTH, SUBSCRIBE, PING; only the first is logged)
    std::string refusal_code;  // the error code (WRONGPASS, LOADING, ...) last logged for them
    // Steady ms of the last reply or message read on it (or of its connect):
    // a connection that goes silent (Redis stopped or stalled, a failover
    // behind one address, a partition: no FIN, no RST) is found by Refresh.
    int64_t heard_ms = 0;
    std::optional<net::steady_timer> retry;
    std::optional<net::ip::tcp::resolver> resolver;  // Connect's, for a host name
    size_t next_address = 0;  // of the host name's, for the next attempt (back to the first once Redis answers)
  };
  struct RemoteNode {
    std::unordered_set<int64_t> connected, online;
    int64_t heard_ms = 0;  // steady ms of its last message (not the wall clock: a clock step must not expire it)
    std::string instance;  // its process (PublishSnapshot's INSTANCE) as of its last snapshot
  };

  explicit Impl(RedisFabricConfig c)
      : cfg(std::move(c)),
        work(net::make_work_guard(io)),
        refresh(io),
        hello_answer(io),
        up(Metrics::Default().GetGauge("parley_fabric_redis_up",
                                       "1 while both Redis connections (commands, subscriptions) are up")),
        sent(Metrics::Default().GetCounter("parley_fabric_remote_publishes_total",
                                           "Frames and closes sent to other nodes through Redis, by result",
                                           "result=\"sent\"")),
        dropped(Metrics::Default().GetCounter("parley_fabric_remote_publishes_total",
                                              "Frames and closes sent to other nodes through Redis, by result",
                                              "result=\"dropped\"")),
        frames_in(Metrics::Default().GetCounter("parley_fabric_remote_frames_total",
                                                "Frames and closes received from other nodes through Redis")),
        errors(Metrics::Default().GetCounter("parley_fabric_redis_errors_total",
                                             "Redis error replies and failed connection attempts")),
        reconnects(Metrics::Default().GetCounter("parley_fabric_redis_reconnects_total",
                                                 "Redis connections re-established after a loss")),
        refused(Metrics::Default().GetCounter(
            "parley_fabric_redis_refusals_total",
            "Redis connections dropped because Redis refused their AUTH, SUBSCRIBE or PING (password or ACL)")),
        silent_drops(Metrics::Default().GetCounter(
            "parley_fabric_redis_silent_drops_total",
            "Redis connections dropped because nothing was read on them for a route TTL (Redis stalled or cut off)")),
        duplicate_ids(Metrics::Default().GetCounter(
            "parley_fabric_duplicate_node_id_total",
            "Snapshots heard from another live process that uses this node's --node-id (a misconfiguration)")),
        remote_users(Metrics::Default().GetGauge("parley_fabric_remote_users",
                                                 "Users connected on other nodes, as this node's cache knows")) {
    cmd.impl = sub.impl = this;
    sub.subscriber = true;
    for (Conn* conn : {&cmd, &sub}) {
      conn->retry.emplace(io);
      conn->resolver.emplace(io);
    }
  }

  // ---- Connections (I/O thread) ----

  // A host name is resolved off this thread (Asio runs getaddrinfo on one of
  // its own): hiredis would resolve it here, holding up the other
  // connection's traffic for as long as DNS takes. It is resolved again at
  // every attempt, so a name moved to a new address (a failover) is
  // followed. IPv4 addresses come first (as hiredis orders them: `localhost`
  // is 127.0.0.1 before ::1); each failed attempt, refusals included, moves
  // on to the next address, until Redis answers on one.
  void Connect(Conn& conn) {
    boost::system::error_code literal;
    net::ip::make_address(cfg.host, literal);
    if (!literal) return ConnectTo(conn, cfg.host);
    conn.resolver->async_resolve(
        cfg.host, std::to_string(cfg.port),
        [this, &conn](boost::system::error_code ec, net::ip::tcp::resolver::results_type found) {
          if (stopping || ec == net::error::operation_aborted) return;
          if (ec || found.empty())
            return ConnectFailed(conn, "cannot resolve the host name: " + (ec ? ec.message() : "no address"));
          std::vector<net::ip::address> addresses;
          for (const auto& entry : found) addresses.push_back(entry.endpoint().address());
          std::stable_partition(addresses.begin(), addresses.end(), [](const auto& a) { return a.is_v4(); });
          ConnectTo(conn, addresses[conn.next_address++ % addresses.size()].to_string());
        });
  }

  void ConnectTo(Conn& conn, const std::string& address) {
    redisAsyncContext* ac = redisAsyncConnect(address.c_str(), cfg.port);
    if (ac == nullptr || ac->err) {
      ConnectFailed(conn, ac ? ac->errstr : "out of memory");
      if (ac) redisAsyncFree(ac);
      return;
    }
    conn.ac = ac;
    ac->data = &conn;
    AsioAdapter::Attach(io, ac);
    redisAsyncSetConnectCallback(ac, [](const redisAsyncContext* c, int status) {
      static_cast<Conn*>(c->data)->impl->OnConnect(*static_cast<Conn*>(c->data), status);
    });
    redisAsyncSetDisconnectCallback(ac, [](const redisAsyncContext* c, int status) {
      static_cast<Conn*>(c->data)->impl->OnDisconnect(*static_cast<Conn*>(c->data), status, c->err, c->errstr);
    });
  }

  // Counted; the first of a streak is logged; tried again after reconnect_ms.
  void ConnectFailed(Conn& conn, std::string_view error) {
    errors.Inc();
    {
      std::lock_guard lock(ready_mu);
      last_problem = fmt::format("cannot connect: {}", error);
    }
    if (conn.failures++ == 0)
      spdlog::warn("event=redis_connect_failed host={} port={} error=\"{}\" note=\"retrying every {} ms\"", cfg.host,
                   cfg.port, error, cfg.reconnect_ms);
    Retry(conn);
  }

  void Retry(Conn& conn) {
    if (stopping) return;
    conn.retry->expires_after(std::chrono::milliseconds(cfg.reconnect_ms));
    conn.retry->async_wait([this, &conn](boost::system::error_code ec) {
      if (!ec && !stopping) Connect(conn);
    });
  }

  void OnConnect(Conn& conn, int status) {
    if (status != REDIS_OK) {
      const std::string error = conn.ac ? conn.ac->errstr : "";
      conn.ac = nullptr;  // hiredis frees it after this callback
      return ConnectFailed(conn, error);
    }
    conn.connected = true;
    conn.failures = 0;
    conn.heard_ms = SteadyMs();
    if (ever_connected) reconnects.Inc();
    // AUTH first: hiredis sends the commands below after it, in order, so a
    // refusal reaches them all (each sees NOAUTH or no reply at all).
    if (!cfg.password.empty()) {
      const auto on_auth = [](redisAsyncContext* c, void* r, void*) {
        auto* reply = static_cast<redisReply*>(r);
        if (reply == nullptr || c->data == nullptr || reply->type != REDIS_REPLY_ERROR) return;
        auto* refused_conn = static_cast<Conn*>(c->data);
        refused_conn->impl->Refused(*refused_conn, "AUTH", ErrorText(reply));
      };
      if (cfg.username.empty())
        redisAsyncCommand(conn.ac, on_auth, nullptr, "AUTH %b", cfg.password.data(), cfg.password.size());
      else
        redisAsyncCommand(conn.ac, on_auth, nullptr, "AUTH %b %b", cfg.username.data(), cfg.username.size(),
                          cfg.password.data(), cfg.password.size());
    }
    // Then PING on both: Redis serves (not just the kernel), and a refusal
    // (NOAUTH: a password is needed) comes to a callback of ours; an error
    // to a SUBSCRIBE makes hiredis drop the connection instead (OnDisconnect).
    conn.answered = false;
    redisAsyncCommand(
        conn.ac,
        [](redisAsyncContext* c, void* r, void*) {
          auto* reply = static_cast<redisReply*>(r);
          if (reply == nullptr || c->data == nullptr) return;
          auto* answered = static_cast<Conn*>(c->data);
          answered->heard_ms = SteadyMs();
          if (reply->type == REDIS_REPLY_ERROR) return answered->impl->Refused(*answered, "PING", ErrorText(reply));
          answered->answered = true;
          answered->next_address = 0;
          if (!answered->subscriber) answered->refusals = 0;  // the subscriber's: once subscribed
          answered->impl->UpdateUp();
        },
        nullptr, "PING");
    if (conn.subscriber) {
      subscribe_acks = 0;
      std::string channel = "parley:node:" + cfg.node_id;
      redisAsyncCommand(
          conn.ac,
          [](redisAsyncContext* c, void* r, void*) {
            static_cast<Conn*>(c->data)->impl->OnSubscription(static_cast<redisReply*>(r));
          },
          nullptr, "SUBSCRIBE %b %s", channel.data(), channel.size(), kPresenceChannel);
    } else {
      if (conn.refusals == 0)
        spdlog::info("event=redis_connected host={} port={} node_id={}", cfg.host, cfg.port, cfg.node_id);
      // Before any publish on this connection (hiredis sends in order): Redis
      // caches the script and answers its SHA-1, which SendRoute uses from
      // then on. A Redis restarted since has lost it; this loads it again.
      // An ACL that refused EVALSHA may have been mended: tried again.
      evalsha_refused = false;
      redisAsyncCommand(
          conn.ac,
          [](redisAsyncContext* c, void* r, void*) {
            auto* reply = static_cast<redisReply*>(r);
            auto* loaded = static_cast<Conn*>(c->data);
            if (reply == nullptr || loaded == nullptr) return;
            loaded->heard_ms = SteadyMs();
            if (reply->type == REDIS_REPLY_STRING && !loaded->impl->evalsha_refused)
              loaded->impl->route_sha.assign(reply->str, reply->len);
            // An error leaves EVAL in use: NOPERM (an ACL without SCRIPT)
            // is said once per connection; the others (NOAUTH, LOADING)
            // are the connection's, which its PING reports.
            if (reply->type == REDIS_REPLY_ERROR && ErrorText(reply).starts_with("NOPERM"))
              spdlog::warn("event=redis_script_load_failed error=\"{}\" note=\"the route script is sent whole "
                           "with every frame\"",
                           ErrorText(reply));
          },
          nullptr, "SCRIPT LOAD %s", kRouteScript);
      MeasureAndWriteRoutes();
      if (sub.subscribed) SayHello();
    }
    UpdateUp();
  }

  // `error`: hiredis' reason (an error reply it could not hand to a
  // callback, such as a refused SUBSCRIBE, is REDIS_ERR_OTHER).
  void OnDisconnect(Conn& conn, int status, int error, const char* reason) {
    if (error == REDIS_ERR_OTHER && conn.subscriber) {
      // hiredis dropped the connection for an error reply to SUBSCRIBE (an
      // ACL without the channels' right): a refusal, retried as the others.
      conn.ac = nullptr;  // being freed by hiredis
      Refused(conn, "SUBSCRIBE", reason);
    }
    bool was = conn.connected;
    conn.connected = false;
    conn.subscribed = false;
    conn.answered = false;
    conn.ac = nullptr;  // hiredis frees it after this callback
    UpdateUp();
    if (stopping) return;
    if (was && conn.refusals == 0)  // a refusal was logged as such
      spdlog::warn("event=redis_disconnected connection={} status={} note=\"retrying every {} ms; live delivery to "
                   "other nodes pauses, sync recovers it\"",
                   conn.subscriber ? "subscriptions" : "commands", status, cfg.reconnect_ms);
    Retry(conn);
  }

  void UpdateUp() {
    bool both = cmd.connected && cmd.answered && sub.subscribed;
    up.Set(both ? 1 : 0);
    if (both) {
      ever_connected = true;
      std::lock_guard lock(ready_mu);
      ready = true;
      ready_cv.notify_all();
    }
  }

  // Fire-and-forget command: counts error replies.
  static void CountReply(redisAsyncContext* c, void* r, void*) {
    auto* reply = static_cast<redisReply*>(r);
    if (reply != nullptr && c->data != nullptr) static_cast<Conn*>(c->data)->heard_ms = SteadyMs();
    if (reply == nullptr || reply->type == REDIS_REPLY_ERROR) {
      auto* conn = static_cast<Conn*>(c->data);
      if (conn == nullptr) return;
      conn->impl->errors.Inc();
      if (reply) spdlog::warn("event=redis_error error=\"{}\"", std::string(reply->str, reply->len));
    }
  }

  // Sends one command on the command connection (hiredis copies the
  // arguments); `on_reply` gets `data` with the reply. False when it was not
  // sent (not connected, muted, or refused by hiredis).
  bool Command(std::initializer_list<std::string_view> args, redisCallbackFn* on_reply = &Impl::CountReply,
               void* data = nullptr) {
    if (!cmd.connected || muted) return false;
    std::vector<const char*> argv;
    std::vector<size_t> lens;
    for (const auto& a : args) {
      argv.push_back(a.data());
      lens.push_back(a.size());
    }
    return redisAsyncCommandArgv(cmd.ac, on_reply, data, static_cast<int>(argv.size()), argv.data(), lens.data()) ==
           REDIS_OK;
  }

  // ---- Routes and presence of this node (I/O thread) ----

  std::string Member(int64_t device) const { return cfg.node_id + "|" + std::to_string(device); }

  void WriteRoute(int64_t user, int64_t device, int64_t now) {
    std::string key = RouteKey(user);
    Command({"ZADD", key, std::to_string(now + cfg.route_ttl_ms), Member(device)});
    Command({"PEXPIRE", key, std::to_string(cfg.route_ttl_ms)});
  }

  // Now in Redis' clock, as this node last measured it (MeasureAndWriteRoutes): route
  // scores are expiry times that every node and the route script compare
  // with their own "now", so they must all use one clock. With each node's
  // own, a node whose clock ran a route TTL behind wrote routes the others
  // took for expired (no live delivery to it), and one ahead pruned the
  // others' live routes.
  int64_t RedisNowMs() const { return NowMs() + cfg.clock_skew_ms + clock_offset_ms; }

  // Asks Redis for its TIME and keeps the offset from this node's clock,
  // taking the reply to stand for the middle of the round trip.
  // Then (re-)writes this node's routes, and prunes expired ones, with the
  // offset just measured: a clock that was set does not prune the others'
  // live routes with the old offset first. An answer slower than
  // kMaxClockSampleMs (Redis busy or stalled) keeps the old offset.
  void MeasureAndWriteRoutes() {
    auto asked = std::make_unique<std::pair<int64_t, int64_t>>(NowMs() + cfg.clock_skew_ms, SteadyMs());
    const int rc = redisAsyncCommand(
        cmd.ac,
        [](redisAsyncContext* c, void* r, void* data) {
          std::unique_ptr<std::pair<int64_t, int64_t>> asked_at(static_cast<std::pair<int64_t, int64_t>*>(data));
          auto* reply = static_cast<redisReply*>(r);
          if (reply == nullptr || c->data == nullptr) return;
          Impl* impl = static_cast<Conn*>(c->data)->impl;
          if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
              SteadyMs() - asked_at->second <= kMaxClockSampleMs) {
            const int64_t redis_ms = std::strtoll(reply->element[0]->str, nullptr, 10) * 1000 +
                                     std::strtoll(reply->element[1]->str, nullptr, 10) / 1000;
            impl->clock_offset_ms = redis_ms - (asked_at->first + NowMs() + impl->cfg.clock_skew_ms) / 2;
          } else if (reply->type == REDIS_REPLY_ERROR) {
            impl->errors.Inc();  // e.g. an ACL without TIME: the offset stays as it was
            if (!impl->time_refused_logged)
              spdlog::warn("event=redis_time_refused error=\"{}\" note=\"route scores use this node's clock\"",
                           ErrorText(reply));
            impl->time_refused_logged = true;
          }
          impl->WriteAllRoutes();
        },
        asked.get(), "TIME");
    if (rc == REDIS_OK) asked.release();  // the callback owns it now
  }

  void WriteAllRoutes() {
    int64_t now = RedisNowMs();
    for (const auto& [user, devices] : local_devices) {
      for (const auto& [device, n] : devices) WriteRoute(user, device, now);
      Command({"ZREMRANGEBYSCORE", RouteKey(user), "-inf", std::to_string(now)});  // expired entries of any node
    }
  }

  void Broadcast(const std::string& text) { Command({"PUBLISH", kPresenceChannel, text}); }

  // After a cut (Redis was gone, or this node's connections to it), what
  // this node published meanwhile was dropped: "again" tells the others.
  void SayHello() {
    Broadcast("h " + cfg.node_id + (ever_connected ? " again" : ""));
    PublishSnapshot();
  }

  // "s NODE INSTANCE\nCONNECTED USERS\nONLINE USERS". INSTANCE tells this
  // process from another that publishes under the same node id (a
  // misconfiguration: OnPresence reports it).
  void PublishSnapshot() {
    std::string s = "s " + cfg.node_id + " " + instance + "\n";
    for (const auto& [user, devices] : local_devices) s += std::to_string(user) + " ";
    s += "\n";
    for (int64_t user : local_online) s += std::to_string(user) + " ";
    Broadcast(s);
  }

  void Refresh() {
    refresh.expires_after(std::chrono::milliseconds(cfg.refresh_interval_ms));
    refresh.async_wait([this](boost::system::error_code ec) {
      if (ec || stopping) return;
      DropSilent();
      if (cmd.connected) {
        MeasureAndWriteRoutes();
        PublishSnapshot();  // its echo on the subscription shows that one alive too
      }
      // Nodes not heard from for a route TTL are gone (killed, or cut off).
      const int64_t now = SteadyMs();
      std::vector<std::string> gone;
      for (const auto& [id, n] : nodes)
        if (n.heard_ms < now - cfg.route_ttl_ms) gone.push_back(id);
      for (const auto& id : gone) {
        spdlog::info("event=fabric_node_expired node_id={}", id);
        ForgetNode(id, /*lost=*/true);
      }
      // A node that stopped without saying goodbye (`q`: killed, or cut
      // off) may have taken messages with it that it had committed but not
      // yet published (a device close after an unlink, say): what it may
      // have changed is read again.
      if (!gone.empty()) UserChanged({UserChange::Kind::kAnything, 0, 0});
      Refresh();
    });
  }

  // Every Refresh sends commands (PUBLISH of the snapshot at least) and the
  // subscription hears that PUBLISH back: a connection that read nothing for
  // a route TTL is dead however open its socket looks. It is freed (its
  // pending callbacks run with no reply, OnDisconnect retries), so that
  // commands stop piling up in its buffer and `up` tells the truth. The
  // subscription is judged only while commands are answered (else its
  // silence may be theirs).
  void DropSilent() {
    const int64_t stale = SteadyMs() - cfg.route_ttl_ms;
    const bool commands_alive = cmd.connected && cmd.heard_ms >= stale;
    if (cmd.connected && !commands_alive) Drop(cmd);
    if (commands_alive && sub.connected && sub.heard_ms < stale) Drop(sub);
  }

  // Redis answered a command of the connection's set-up with an error. Either
  // it is not ready to serve yet (RedisNotReady: loading its data set after
  // a restart, say), which is waited for, or it refuses this node: a wrong
  // password (WRONGPASS), none given (NOAUTH), an ACL without the right
  // (NOPERM). Logged (the first of a streak and each change of reason, and
  // in Start's error); the connection is freed and tried again every
  // reconnect_ms, so that it comes up once Redis is ready or the operator
  // mends Redis or its ACL.
  void Refused(Conn& conn, const char* command, std::string_view error) {
    errors.Inc();
    const bool not_ready = RedisNotReady(error);
    if (!not_ready) refused.Inc();
    const std::string_view code = error.substr(0, error.find(' '));
    if (conn.refusals++ == 0 || code != conn.refusal_code) {
      conn.refusal_code = code;
      spdlog::log(not_ready ? spdlog::level::warn : spdlog::level::err,
                  "event={} connection={} command={} error=\"{}\" note=\"retrying every {} ms{}\"",
                  not_ready ? "redis_not_ready" : "redis_refused", conn.subscriber ? "subscriptions" : "commands",
                  command, error, cfg.reconnect_ms,
                  not_ready ? "" : "; check --redis-password, --redis-user and the user's ACL (SUBSCRIBE, PUBLISH, EVAL, ZADD)");
    }
    {
      std::lock_guard lock(ready_mu);
      last_problem = fmt::format("Redis {} {}: {}", not_ready ? "was not ready for" : "refused", command, error);
    }
    if (conn.ac != nullptr) redisAsyncFree(conn.ac);  // in a callback: freed when it returns; OnDisconnect retries
  }

  void Drop(Conn& conn) {
    if (conn.ac == nullptr) return;
    errors.Inc();
    silent_drops.Inc();
    spdlog::warn("event=redis_connection_silent connection={} silent_ms={} note=\"dropped; reconnecting\"",
                 conn.subscriber ? "subscriptions" : "commands", SteadyMs() - conn.heard_ms);
    redisAsyncContext* ac = conn.ac;
    redisAsyncFree(ac);  // runs OnDisconnect, which clears conn.ac and retries
  }

  void LocalAttach(int64_t user, int64_t device) {
    auto& devices = local_devices[user];
    bool new_user = devices.empty();
    if (devices[device]++ == 0) WriteRoute(user, device, RedisNowMs());
    if (new_user) Broadcast("c " + cfg.node_id + " " + std::to_string(user) + " 1");
  }

  void LocalDetach(int64_t user, int64_t device) {
    auto it = local_devices.find(user);
    if (it == local_devices.end()) return;
    auto d = it->second.find(device);
    if (d == it->second.end()) return;
    if (--d->second > 0) return;
    it->second.erase(d);
    Command({"ZREM", RouteKey(user), Member(device)});
    if (!it->second.empty()) return;
    local_devices.erase(it);
    Broadcast("c " + cfg.node_id + " " + std::to_string(user) + " 0");
  }

  // kind: 'p' durable frame, 'e' ephemeral frame, 'x' close (data: "CODE REASON").
  void SendRemote(char kind, int64_t user, int64_t device, const std::string& data) {
    if (kind == 'p' && cfg.drop_publish_at > 0 && ++durable_remote == cfg.drop_publish_at) {
      dropped.Inc();
      spdlog::warn("event=fault_fabric_drop_publish user_id={} n={}", user, durable_remote);
      return;
    }
    if (kind == 'x' && cfg.mute_at_close > 0 && ++closes_remote == cfg.mute_at_close) {
      muted = true;
      spdlog::warn("event=fault_fabric_mute_at_close user_id={} device_id={} n={}", user, device, closes_remote);
    }
    if (muted) {
      dropped.Inc();
      return;
    }
    if (!cmd.connected) {
      dropped.Inc();
      return;
    }
    sent.Inc();
    std::string payload;
    payload.reserve(data.size() + 32);
    payload += kind;
    payload += ' ';
    payload += std::to_string(user);
    payload += ' ';
    payload += std::to_string(device);
    payload += '\n';
    payload += data;
    auto call = std::make_unique<RouteCall>();
    call->key = RouteKey(user);
    call->payload = std::move(payload);
    if (device != 0) call->device = std::to_string(device);
    SendRoute(std::move(call), !route_sha.empty());
  }

  // One publish through the route script, kept until Redis answers: by its
  // SHA-1 (EVALSHA: the script's ~600 bytes are not sent, nor hashed by
  // Redis, with every frame), or whole (EVAL). Each command connection loads
  // the script first (OnConnect), so EVALSHA meets NOSCRIPT only after a
  // SCRIPT FLUSH; the publish is then sent again whole, which loads it again
  // (frames sent by SHA-1 before Redis had it back may then arrive out of
  // order: a device fills the gap by sync, as after a lost frame).
  struct RouteCall {
    std::string key, payload, device;
    bool by_sha = false;
  };

  void SendRoute(std::unique_ptr<RouteCall> call, bool by_sha) {
    if (!cmd.connected || muted) {  // only for a call sent again: SendRemote checked
      dropped.Inc();
      return;
    }
    call->by_sha = by_sha;
    const std::string_view script = by_sha ? std::string_view(route_sha) : std::string_view(kRouteScript);
    if (Command({by_sha ? "EVALSHA" : "EVAL", script, "1", call->key, cfg.node_id, call->payload, call->device},
                &Impl::OnRouteReply, call.get()))
      (void)call.release();
  }

  static void OnRouteReply(redisAsyncContext* c, void* r, void* data) {
    std::unique_ptr<RouteCall> call(static_cast<RouteCall*>(data));
    auto* reply = static_cast<redisReply*>(r);
    auto* conn = static_cast<Conn*>(c->data);
    if (reply != nullptr && conn != nullptr && reply->type == REDIS_REPLY_ERROR && call->by_sha) {
      const std::string_view error = ErrorText(reply);
      if (error.starts_with("NOSCRIPT")) {
        conn->heard_ms = SteadyMs();
        return conn->impl->SendRoute(std::move(call), false);
      }
      if (error.starts_with("NOPERM") && error.find("'evalsha' command") != std::string_view::npos) {
        // An ACL that lists EVAL but not EVALSHA: whole scripts from now on
        // on this connection (the next one tries again: the ACL may have
        // been mended). A NOPERM for a key or channel is the script's own
        // error, counted and logged below.
        conn->heard_ms = SteadyMs();
        if (!conn->impl->evalsha_refused)  // once, not for each frame that was in flight
          spdlog::warn("event=redis_evalsha_refused error=\"{}\" note=\"the route script is sent whole with every "
                       "frame from now on; allow EVALSHA and SCRIPT (docs/operations.md)\"",
                       error);
        conn->impl->route_sha.clear();
        conn->impl->evalsha_refused = true;
        return conn->impl->SendRoute(std::move(call), false);
      }
    }
    CountReply(c, r, nullptr);
  }

  // ---- Shared rate limits (I/O thread) ----

  // One reconciliation: its script calls answer into `levels`; `done` runs
  // when the last one has answered.
  struct RateCall {
    std::vector<double> levels;
    size_t pending = 0;
    bool failed = false;
    std::string error;
    RateLevelsCallback done;
  };
  struct RateChunk {
    std::shared_ptr<RateCall> call;
    size_t offset = 0, count = 0;
  };

  void ReconcileRates(std::vector<RateUsage> usage, RateLevelsCallback done) {
    if (!cmd.connected) {
      return done(Status(ErrorCode::kUnavailable, "redis: not connected"));
    }
    auto call = std::make_shared<RateCall>();
    call->levels.resize(usage.size());
    call->done = std::move(done);
    if (usage.empty()) return call->done(std::move(call->levels));
    const size_t chunks = (usage.size() + RedisFabric::kRateBucketsPerScript - 1) / RedisFabric::kRateBucketsPerScript;
    call->pending = chunks;
    for (size_t c = 0; c < chunks; ++c) {
      size_t offset = c * RedisFabric::kRateBucketsPerScript;
      size_t count = std::min(RedisFabric::kRateBucketsPerScript, usage.size() - offset);
      std::vector<std::string> args = {"EVAL", kRateScript, std::to_string(count)};
      for (size_t i = 0; i < count; ++i) args.push_back("parley:rl:" + usage[offset + i].bucket);
      args.push_back(std::to_string(Fabric::kMaxRateDebtBursts));
      for (size_t i = 0; i < count; ++i) {
        const RateUsage& u = usage[offset + i];
        args.push_back(fmt::format("{}", u.used));
        args.push_back(fmt::format("{}", u.per_second));
        args.push_back(fmt::format("{}", u.burst));
      }
      std::vector<const char*> argv;
      std::vector<size_t> lens;
      for (const auto& a : args) {
        argv.push_back(a.data());
        lens.push_back(a.size());
      }
      auto* chunk = new RateChunk{call, offset, count};
      int rc = redisAsyncCommandArgv(cmd.ac, &Impl::OnRateReply, chunk, static_cast<int>(argv.size()), argv.data(),
                                     lens.data());
      if (rc != REDIS_OK) {
        delete chunk;
        FinishRateChunk(*call, false, "redis: command not sent");
      }
    }
  }

  // hiredis calls it with the script's reply, or with none when the
  // connection is lost or freed first.
  static void OnRateReply(redisAsyncContext* c, void* r, void* privdata) {
    std::unique_ptr<RateChunk> chunk(static_cast<RateChunk*>(privdata));
    auto* reply = static_cast<redisReply*>(r);
    RateCall& call = *chunk->call;
    auto* conn = static_cast<Conn*>(c->data);
    bool ok = reply != nullptr && reply->type == REDIS_REPLY_ARRAY && reply->elements == chunk->count;
    std::string error;
    if (ok) {
      for (size_t i = 0; i < chunk->count; ++i) {
        if (reply->element[i]->type != REDIS_REPLY_INTEGER) {
          ok = false;
          break;
        }
        call.levels[chunk->offset + i] = static_cast<double>(reply->element[i]->integer) / 1000.0;
      }
    }
    if (!ok) error = reply != nullptr && reply->type == REDIS_REPLY_ERROR ? std::string(reply->str, reply->len)
                                                                          : std::string("no reply");
    conn->impl->FinishRateChunk(call, ok, error);
  }

  void FinishRateChunk(RateCall& call, bool ok, const std::string& error) {
    if (!ok && !call.failed) {
      errors.Inc();
      spdlog::warn("event=rate_limit_sync_failed error=\"{}\"", error);
      call.failed = true;
      call.error = error;
    }
    if (--call.pending > 0) return;
    if (call.failed) return call.done(Status(ErrorCode::kUnavailable, "redis: " + call.error));
    call.done(std::move(call.levels));
  }

  // ---- What other nodes say (I/O thread) ----

  void OnSubscription(redisReply* r) {
    if (r == nullptr) return;
    sub.heard_ms = SteadyMs();
    if (r->type == REDIS_REPLY_ERROR) return Refused(sub, "SUBSCRIBE", ErrorText(r));
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 3) return;
    std::string type(r->element[0]->str, r->element[0]->len);
    if (type == "subscribe") {
      if (++subscribe_acks == 2) {
        sub.subscribed = true;
        sub.refusals = 0;
        subscribe_acks = 0;
        if (cmd.connected) SayHello();
        UpdateUp();
        // Subscribed again after a cut: what other nodes published
        // meanwhile never arrived.
        if (ever_subscribed) UserChanged({UserChange::Kind::kAnything, 0, 0});
        ever_subscribed = true;
      }
      return;
    }
    if (type != "message") return;
    std::string channel(r->element[1]->str, r->element[1]->len);
    std::string_view payload(r->element[2]->str, r->element[2]->len);
    if (channel == kPresenceChannel) return OnPresence(payload);
    OnNodeMessage(payload);
  }

  void OnNodeMessage(std::string_view payload) {
    size_t nl = payload.find('\n');
    if (nl == std::string_view::npos || payload.size() < 2) return;
    std::istringstream head{std::string(payload.substr(2, nl - 2))};
    int64_t user = 0, device = 0;
    if (!(head >> user >> device)) return;
    std::string data(payload.substr(nl + 1));
    frames_in.Inc();
    switch (payload[0]) {
      case 'p': return local.Publish(user, std::make_shared<const std::string>(std::move(data)), false);
      case 'e': return local.Publish(user, std::make_shared<const std::string>(std::move(data)), true);
      case 'x': {
        size_t sp = data.find(' ');
        int code = std::atoi(data.substr(0, sp).c_str());
        std::string reason = sp == std::string::npos ? "" : data.substr(sp + 1);
        return local.CloseDevice(user, device, static_cast<uint16_t>(code), std::move(reason));
      }
      default: return;
    }
  }

  void OnPresence(std::string_view payload) {
    std::istringstream in{std::string(payload)};
    std::string kind, node;
    if (!(in >> kind >> node)) return;
    if (node == cfg.node_id) {
      std::string other;
      if (kind == "s" && in >> other && other != instance) SameNodeId(other);
      return;  // its own messages, heard back
    }
    if (kind == "q") return ForgetNode(node, /*lost=*/false);
    const bool known = nodes.count(node) > 0;
    RemoteNode& n = nodes[node];
    n.heard_ms = SteadyMs();
    if (kind == "h") {
      AnswerHello();
      // "h NODE again": a node back after a cut, whose messages meanwhile
      // were dropped. A new process saying hello under the id of a node
      // still known here restarted without its goodbye (killed): what it
      // had not published yet is lost too.
      std::string again;
      if ((in >> again && again == "again") || known) UserChanged({UserChange::Kind::kAnything, 0, 0});
      return;
    }
    if (kind == "v" || kind == "e" || kind == "r") {
      UserChange change{kind == "v"   ? UserChange::Kind::kVisibility
                        : kind == "e" ? UserChange::Kind::kErased
                                      : UserChange::Kind::kRevoked,
                        0, 0};
      if (!(in >> change.user_id) || change.user_id <= 0) return;
      if (kind == "v" && (!(in >> change.viewer) || change.viewer < 0)) return;
      return UserChanged(change);
    }
    if (kind == "c" || kind == "f") {
      int64_t user = 0;
      int on = 0;
      if (!(in >> user >> on)) return;
      if (kind == "c") SetConnected(n, user, on != 0);
      else SetOnline(n, user, on != 0);
      return;
    }
    if (kind == "s") {
      std::string line;
      std::getline(in, line);  // rest of the first line: the sender's instance
      // A new process under a known id (a restart quicker than the route
      // TTL, after a kill): the users the old one had are gone with it, and
      // it stored no last seen for them.
      std::istringstream first(line);
      std::string sender;
      first >> sender;
      const bool replaced = !n.instance.empty() && !sender.empty() && sender != n.instance;
      if (!sender.empty()) n.instance = sender;
      std::unordered_set<int64_t> connected, online;
      std::getline(in, line);
      {
        std::istringstream ids(line);
        for (int64_t u; ids >> u;) connected.insert(u);
      }
      std::getline(in, line);
      {
        std::istringstream ids(line);
        for (int64_t u; ids >> u;) online.insert(u);
      }
      Replace(n, connected, online, /*lost=*/replaced);
    }
  }

  // A hello is answered with a snapshot after a random wait of up to
  // kHelloAnswerSpreadMs, one for all the hellos heard meanwhile: when many
  // nodes start (or come back) at once, each answers once, not once per
  // hello (N nodes would publish N² snapshots, enough to pass Redis' output
  // limit for subscribers and cut every node's subscription).
  void AnswerHello() {
    if (hello_answer_pending) return;
    hello_answer_pending = true;
    std::uniform_int_distribution<int> spread(0, kHelloAnswerSpreadMs);
    hello_answer.expires_after(std::chrono::milliseconds(spread(rng)));
    hello_answer.async_wait([this](boost::system::error_code ec) {
      hello_answer_pending = false;
      if (!ec && !stopping && cmd.connected) PublishSnapshot();
    });
  }

  // Another live process publishes under this node's id: both hear the
  // frames for each one's devices, one's goodbye removes the other's
  // routes, and their snapshots undo each other in the other nodes' presence
  // caches. Not fatal (a restart's new process may overlap the old one's
  // drain), so counted and logged (at most once a minute) for the operator.
  void SameNodeId(const std::string& other_instance) {
    duplicate_ids.Inc();
    const int64_t now = SteadyMs();
    if (duplicate_logged_ms != 0 && now - duplicate_logged_ms < kDuplicateIdLogIntervalMs) return;
    duplicate_logged_ms = now;
    spdlog::error("event=fabric_duplicate_node_id node_id={} other_instance={} instance={} note=\"another live parleyd "
                  "uses this --node-id: give each node its own (frames, routes and presence of the two mix)\"",
                  cfg.node_id, other_instance, instance);
  }

  void Replace(RemoteNode& n, const std::unordered_set<int64_t>& connected, const std::unordered_set<int64_t>& online,
               bool lost = false) {
    std::vector<int64_t> drop;
    for (int64_t u : n.connected)
      if (!connected.count(u)) drop.push_back(u);
    for (int64_t u : drop) SetConnected(n, u, false);
    for (int64_t u : connected) SetConnected(n, u, true);
    drop.clear();
    for (int64_t u : n.online)
      if (!online.count(u)) drop.push_back(u);
    for (int64_t u : drop) SetOnline(n, u, false, lost);
    for (int64_t u : online) SetOnline(n, u, true);
  }

  // `lost`: not heard from for a route TTL, without its goodbye (its users'
  // last seen is stored by nobody else; RemotePresenceFn).
  void ForgetNode(const std::string& id, bool lost) {
    auto it = nodes.find(id);
    if (it == nodes.end()) return;
    Replace(it->second, {}, {}, lost);
    nodes.erase(it);
  }

  void SetConnected(RemoteNode& n, int64_t user, bool on) {
    if (on ? !n.connected.insert(user).second : n.connected.erase(user) == 0) return;
    std::lock_guard lock(mu);
    if (on) {
      ++remote_connected[user];
    } else if (auto it = remote_connected.find(user); it != remote_connected.end() && --it->second <= 0) {
      remote_connected.erase(it);
    }
    remote_users.Set(static_cast<int64_t>(remote_connected.size()));
  }

  void SetOnline(RemoteNode& n, int64_t user, bool on, bool lost = false) {
    if (on ? !n.online.insert(user).second : n.online.erase(user) == 0) return;
    int& count = remote_online[user];
    count += on ? 1 : -1;
    bool changed = on ? count == 1 : count == 0;
    if (count == 0) remote_online.erase(user);
    if (!changed) return;
    if (auto fn = CallbackCopy(presence_fn)) fn(user, on, lost);
  }

  void UserChanged(const UserChange& change) {
    if (auto fn = CallbackCopy(user_change_fn)) fn(change);
  }

  // A callback is set under mu (any thread) and called outside it, from a copy.
  template <class Fn>
  Fn CallbackCopy(const Fn& fn) {
    std::lock_guard lock(mu);
    return fn;
  }

  RedisFabricConfig cfg;
  LocalFabric local;
  net::io_context io;
  net::executor_work_guard<net::io_context::executor_type> work;
  net::steady_timer refresh;
  net::steady_timer hello_answer;     // AnswerHello's wait
  bool hello_answer_pending = false;
  std::minstd_rand rng{std::random_device{}()};
  std::thread thread;
  Conn cmd, sub;
  bool stopping = false;
  bool ever_connected = false;
  bool ever_subscribed = false;
  int subscribe_acks = 0;
  int64_t durable_remote = 0;  // durable frames offered to other nodes (fault switch)
  int64_t closes_remote = 0;   // device closes offered to other nodes (fault switch)
  bool muted = false;          // fault switch: sends nothing any more
  std::string route_sha;         // the route script's SHA-1, once Redis answered SCRIPT LOAD (empty: EVAL)
  bool evalsha_refused = false;  // Redis refused EVALSHA (an ACL): EVAL until the next connection

  // I/O thread only.
  std::unordered_map<int64_t, std::unordered_map<int64_t, int>> local_devices;  // user -> device -> connections
  std::unordered_set<int64_t> local_online;
  std::unordered_map<std::string, RemoteNode> nodes;
  std::unordered_map<int64_t, int> remote_online;  // user -> other nodes where online

  // Shared, under mu.
  mutable std::mutex mu;
  std::unordered_map<int64_t, int> remote_connected;  // user -> other nodes holding a connection
  RemotePresenceFn presence_fn;
  uint64_t presence_fn_generation = 0;  // each OnRemotePresence call's
  RemoteUserChangeFn user_change_fn;

  std::mutex ready_mu;
  std::condition_variable ready_cv;
  bool ready = false;
  std::string last_problem;  // why the last connection attempt failed or what Redis refused (for Start's error)
  // This process among those that may publish under cfg.node_id (random, hex).
  const std::string instance = fmt::format("{:016x}", std::random_device{}() * 0x100000000ULL ^ std::random_device{}());
  int64_t duplicate_logged_ms = 0;  // steady ms of the last fabric_duplicate_node_id line
  int64_t clock_offset_ms = 0;       // Redis' clock minus this node's (MeasureAndWriteRoutes)
  bool time_refused_logged = false;

  Gauge& up;
  Counter& sent;
  Counter& dropped;
  Counter& frames_in;
  Counter& errors;
  Counter& reconnects;
  Counter& refused;
  Counter& silent_drops;
  Counter& duplicate_ids;
  Gauge& remote_users;
};

Status ValidateRedisFabricConfig(const RedisFabricConfig& config) {
  if (!ValidNodeId(config.node_id))
    return Status(ErrorCode::kBadRequest, "--node-id: 1 to 128 of letters, digits, '-', '_', '.', ':' (got '" +
                                              config.node_id + "')");
  if (config.refresh_interval_ms <= 0 || config.route_ttl_ms <= 2 * config.refresh_interval_ms)
    return Status(ErrorCode::kBadRequest, "--redis-route-ttl-ms must be more than twice --redis-refresh-ms (> 0)");
  return Status::Ok();
}

Result<std::unique_ptr<RedisFabric>> RedisFabric::Start(RedisFabricConfig config, int connect_timeout_ms) {
  if (Status s = ValidateRedisFabricConfig(config); !s.ok()) return s;
  auto impl = std::make_unique<Impl>(std::move(config));
  Impl* p = impl.get();
  std::unique_ptr<RedisFabric> fabric(new RedisFabric(std::move(impl)));
  p->thread = std::thread([p] {
    SetCurrentThreadName("redis-fabric");
    p->io.run();
  });
  net::post(p->io, [p] {
    p->Connect(p->cmd);
    p->Connect(p->sub);
    p->Refresh();
  });
  std::unique_lock lock(p->ready_mu);
  if (!p->ready_cv.wait_for(lock, std::chrono::milliseconds(connect_timeout_ms), [p] { return p->ready; }))
    return Status(ErrorCode::kInternal,
                  fmt::format("cannot reach Redis at {}:{} within {} ms{}", p->cfg.host, p->cfg.port, connect_timeout_ms,
                              p->last_problem.empty() ? "" : " (" + p->last_problem + ")"));
  return Result<std::unique_ptr<RedisFabric>>(std::move(fabric));
}

RedisFabric::RedisFabric(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

RedisFabric::~RedisFabric() { Stop(); }

void RedisFabric::Stop() {
  Impl* p = impl_.get();
  if (!p->thread.joinable()) return;
  // Goodbye: this node's routes go, the others forget its users at once.
  auto done = std::make_shared<std::promise<void>>();
  auto future = done->get_future();
  net::post(p->io, [p, done] {
    if (!p->cmd.connected) return done->set_value();
    for (const auto& [user, devices] : p->local_devices)
      for (const auto& [device, n] : devices) p->Command({"ZREM", RouteKey(user), p->Member(device)});
    p->Broadcast("q " + p->cfg.node_id);
    auto* keep = new std::shared_ptr<std::promise<void>>(done);
    redisAsyncCommand(
        p->cmd.ac,
        [](redisAsyncContext*, void*, void* data) {
          auto* d = static_cast<std::shared_ptr<std::promise<void>>*>(data);
          (*d)->set_value();
          delete d;
        },
        keep, "PING");
  });
  future.wait_for(std::chrono::milliseconds(kGoodbyeTimeoutMs));
  net::post(p->io, [p] {
    p->stopping = true;
    p->refresh.cancel();
    p->hello_answer.cancel();
    for (Impl::Conn* c : {&p->cmd, &p->sub}) {
      c->retry->cancel();
      if (c->ac) redisAsyncFree(c->ac);  // pending callbacks run with no reply
      c->ac = nullptr;
    }
    p->work.reset();
    p->io.stop();
  });
  if (p->thread.joinable()) p->thread.join();
}

void RedisFabric::Attach(int64_t user_id, int64_t device_id, std::shared_ptr<DeviceSink> sink) {
  impl_->local.Attach(user_id, device_id, std::move(sink));
  net::post(impl_->io, [p = impl_.get(), user_id, device_id] { p->LocalAttach(user_id, device_id); });
}

void RedisFabric::Detach(int64_t user_id, int64_t device_id, const DeviceSink* sink) {
  impl_->local.Detach(user_id, device_id, sink);
  net::post(impl_->io, [p = impl_.get(), user_id, device_id] { p->LocalDetach(user_id, device_id); });
}

void RedisFabric::Publish(int64_t user_id, SharedFrame frame, bool ephemeral) {
  impl_->local.Publish(user_id, frame, ephemeral);
  {
    std::lock_guard lock(impl_->mu);
    if (impl_->remote_connected.count(user_id) == 0) return;
  }
  net::post(impl_->io, [p = impl_.get(), user_id, frame = std::move(frame), ephemeral] {
    p->SendRemote(ephemeral ? 'e' : 'p', user_id, 0, *frame);
  });
}

void RedisFabric::PublishHere(int64_t user_id, SharedFrame frame, bool ephemeral) {
  impl_->local.Publish(user_id, std::move(frame), ephemeral);
}

// Other nodes get a receipt as an ordinary durable frame (their sinks do not
// merge it with a waiting one; docs/architecture.md, "Cluster fabric").
void RedisFabric::PublishReceipt(int64_t user_id, SharedFrame frame,
                                 std::shared_ptr<const store::StreamEvent> receipt) {
  impl_->local.PublishReceipt(user_id, frame, std::move(receipt));
  {
    std::lock_guard lock(impl_->mu);
    if (impl_->remote_connected.count(user_id) == 0) return;
  }
  net::post(impl_->io, [p = impl_.get(), user_id, frame = std::move(frame)] { p->SendRemote('p', user_id, 0, *frame); });
}

// Always asks Redis (not the presence cache): closing a revoked device must
// not depend on a cache being fresh.
void RedisFabric::CloseDevice(int64_t user_id, int64_t device_id, uint16_t code, std::string reason) {
  impl_->local.CloseDevice(user_id, device_id, code, reason);
  net::post(impl_->io, [p = impl_.get(), user_id, device_id, code, reason = std::move(reason)] {
    p->SendRemote('x', user_id, device_id, std::to_string(code) + " " + reason);
  });
}

bool RedisFabric::IsConnected(int64_t user_id) const {
  if (impl_->local.IsConnected(user_id)) return true;
  std::lock_guard lock(impl_->mu);
  return impl_->remote_connected.count(user_id) != 0;
}

std::vector<int64_t> RedisFabric::AttachedDevices(int64_t user_id) const {
  return impl_->local.AttachedDevices(user_id);
}

void RedisFabric::CloseAll(uint16_t code, std::string reason) { impl_->local.CloseAll(code, std::move(reason)); }

void RedisFabric::SetLocalOnline(int64_t user_id, bool online) {
  net::post(impl_->io, [p = impl_.get(), user_id, online] {
    bool changed = online ? p->local_online.insert(user_id).second : p->local_online.erase(user_id) != 0;
    if (changed) p->Broadcast("f " + p->cfg.node_id + " " + std::to_string(user_id) + (online ? " 1" : " 0"));
  });
}

void RedisFabric::ReconcileRateLimits(std::vector<RateUsage> usage, RateLevelsCallback done) {
  net::post(impl_->io, [p = impl_.get(), usage = std::move(usage), done = std::move(done)]() mutable {
    if (p->stopping) return done(Status(ErrorCode::kUnavailable, "redis: the fabric is stopping"));
    p->ReconcileRates(std::move(usage), std::move(done));
  });
}

void RedisFabric::OnRemotePresence(RemotePresenceFn fn) {
  uint64_t generation = 0;
  {
    std::lock_guard lock(impl_->mu);
    generation = ++impl_->presence_fn_generation;
    if (!fn) {
      impl_->presence_fn = nullptr;
      return;
    }
  }
  // Installed on the fabric's thread, where SetOnline runs, and followed by
  // the users it already counts online: the snapshots answering this node's
  // hello usually arrive before the core sets its callback, and each user is
  // reported only on a change, so they would never be reported at all.
  net::post(impl_->io, [p = impl_.get(), fn = std::move(fn), generation] {
    {
      std::lock_guard lock(p->mu);
      if (p->presence_fn_generation != generation) return;  // unset (or set again) meanwhile
      p->presence_fn = fn;
    }
    for (const auto& [user, nodes] : p->remote_online) fn(user, true, false);
  });
}

void RedisFabric::PublishUserChange(const UserChange& change) {
  std::string text;
  switch (change.kind) {
    case UserChange::Kind::kVisibility:
      text = "v " + impl_->cfg.node_id + " " + std::to_string(change.user_id) + " " + std::to_string(change.viewer);
      break;
    case UserChange::Kind::kErased: text = "e " + impl_->cfg.node_id + " " + std::to_string(change.user_id); break;
    case UserChange::Kind::kRevoked: text = "r " + impl_->cfg.node_id + " " + std::to_string(change.user_id); break;
    case UserChange::Kind::kAnything: return;  // only ever a receiver's conclusion
  }
  net::post(impl_->io, [p = impl_.get(), text = std::move(text)] { p->Broadcast(text); });
}

void RedisFabric::OnRemoteUserChange(RemoteUserChangeFn fn) {
  std::lock_guard lock(impl_->mu);
  impl_->user_change_fn = std::move(fn);
}

}  // namespace parley::fabric
