// Gateway implementation over Boost.Beast.
//
// Each accepted socket starts as an HttpSession reading HTTP/1.1 requests.
// A request for /v1/ws with an Upgrade header becomes a WsSession. A
// WsSession reads one frame at a time into its flat_buffer and hands the
// bytes to ChatService::OnFrame on its own I/O thread (decoding happens there,
// in parallel with other threads). Outgoing frames are shared, immutable
// strings queued per connection, and the queue is bounded in bytes.
//
// Coalesced writes: a frame queued on an idle connection does not start a
// write at once; the connection posts one flush to its executor, which runs
// after every handler already queued there (the core's fan-out of a group
// commit posts all its frames before it). The flush encodes every queued
// frame (up to kMaxWriteBatchBytes) into one buffer and writes it with one
// write: one sendmsg, or one TLS record per 16 KiB, for what used to be one
// Beast async_write each. Frames written together stay queued (and counted)
// until the write completes; frames queued meanwhile wait for the next one.
// The frames are encoded by the gateway (ws_write.h) and written below Beast
// through SerialWriteStream, which orders them with Beast's own writes
// (handshake response, pongs, close). With permessage-deflate negotiated, a
// frame of at least --ws-deflate-min-bytes still goes through Beast alone:
// RFC 7692 compresses each message with the connection's LZ77 context, in
// order, which only Beast's deflate stream holds. Smaller frames, which Beast
// sends uncompressed (RSV1 clear) and which never touch that context, are
// batched as on a plain connection. A connection never has a Beast message
// write and a batch in flight at once, so a message fragmented by Beast is
// never split by a batch.
//
// Both session classes are templates over the stream below the HTTP and
// WebSocket layers: PlainStream (a beast::basic_stream on the io_context's
// executor type) or
// beast::ssl_stream<PlainStream> (TLS). A TLS session holds a
// shared_ptr to the ssl::context it was accepted with, so a reload (which
// swaps the gateway's current context) never touches open connections.
#include "gateway/gateway.h"

#include <sys/resource.h>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/beast/websocket/ssl.hpp>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <optional>
#include <deque>
#include <list>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "common/metrics.h"
#include "common/this_thread.h"
#include "core/chat_service.h"
#include "gateway/idle_sweep.h"
#include "gateway/ws_write.h"
#include "net/tls_fingerprint.h"
#include "protocol/encode.h"
#include "protocol/limits.h"

namespace parley::gateway {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
namespace ssl = net::ssl;
using tcp = net::ip::tcp;
// Connections use the io_context's own executor type, not Beast's default
// (the type-erased any_io_executor): every operation copies and destroys its
// stream's executor, and type-erased copies were ~3 % of parleyd's CPU under
// load (docs/benchmarks.md, "Reconnects").
using IoExecutor = net::io_context::executor_type;
using PlainStream = beast::basic_stream<tcp, IoExecutor, beast::unlimited_rate_policy>;
using TlsStream = beast::ssl_stream<PlainStream>;

namespace {

template <typename Stream>
constexpr bool kIsTls = std::is_same_v<Stream, TlsStream>;

// A TLS handshake (and a TLS shutdown) must finish within this long.
constexpr int kTlsHandshakeTimeoutMs = 10'000;
// An HTTP request (or the response's write) that takes longer is abandoned
// and its connection closed; it also bounds how long a stalled HTTP client
// can hold a shutdown's drain.
constexpr auto kHttpIoTimeout = std::chrono::seconds(30);
// A failed accept (EMFILE, ENFILE, ENOBUFS, ENOMEM, ...) is tried again
// after this long instead of at once: the connection stays in the listen
// backlog, so an immediate retry fails again and spins the core until a
// descriptor is freed.
constexpr auto kAcceptRetryDelay = std::chrono::milliseconds(100);
// accept_failed and connections_refused are logged at most this often
// (the metrics count every one).
constexpr auto kAcceptLogInterval = std::chrono::seconds(1);

// One TCP connection in Gateway::Impl::sockets, from accept until its
// socket is closed (Release) or the session holding it (HTTP, then
// WebSocket after an upgrade: it moves along) is gone. Eight bytes per
// connection.
class SocketCount {
 public:
  explicit SocketCount(std::atomic<int64_t>* count) : count_(count) { count_->fetch_add(1, std::memory_order_relaxed); }
  SocketCount(SocketCount&& other) noexcept : count_(std::exchange(other.count_, nullptr)) {}
  SocketCount& operator=(SocketCount&&) = delete;
  ~SocketCount() { Release(); }
  // The socket is closed (the session object may live on a little longer,
  // until core has processed its disconnect): counted out now, once.
  void Release() {
    if (count_ != nullptr) count_->fetch_sub(1, std::memory_order_relaxed);
    count_ = nullptr;
  }

 private:
  std::atomic<int64_t>* count_;
};

// An Executor over any Asio executor (the first io_context's, for the core).
template <typename AsioExecutor>
class AsioExecutorAdapter final : public Executor {
 public:
  explicit AsioExecutorAdapter(AsioExecutor ex) : ex_(std::move(ex)) {}
  void Post(std::function<void()> fn) override { net::post(ex_, std::move(fn)); }
  void PostAfter(int64_t delay_ms, std::function<void()> fn) override {
    auto timer = std::make_shared<net::steady_timer>(ex_, std::chrono::milliseconds(delay_ms));
    timer->async_wait([timer, fn = std::move(fn)](beast::error_code ec) {
      if (!ec) fn();
    });
  }

 private:
  AsioExecutor ex_;
};

struct GatewayMetrics {
  Gauge& queue_frames = Metrics::Default().GetGauge("parley_outbound_queue_frames",
                                                    "Frames queued for sending, summed over all connections");
  Gauge& queue_bytes = Metrics::Default().GetGauge("parley_outbound_queue_bytes",
                                                   "Bytes queued for sending, summed over all connections");
  Counter& resync_closes = Metrics::Default().GetCounter(
      "parley_resync_closes_total", "Connections closed because their outbound queue overflowed");
  Counter& shed = Metrics::Default().GetCounter("parley_shed_events_total",
                                                "Ephemeral frames (typing) dropped because a connection's queue was half full");
  Counter& coalesced = Metrics::Default().GetCounter(
      "parley_coalesced_receipts_total", "Receipt events merged into an earlier one still queued for the same connection");
  Counter& accepted = Metrics::Default().GetCounter("parley_connections_accepted_total", "TCP connections accepted");
  Counter& refused = Metrics::Default().GetCounter(
      "parley_connections_refused_total",
      "TCP connections refused at once (503 or closed) because --max-connections were open");
  Counter& accept_errors = Metrics::Default().GetCounter(
      "parley_accept_errors_total",
      "Failed accepts (out of file descriptors, or a session that could not be made): retried after 100 ms");
  Counter& frames_written = Metrics::Default().GetCounter("parley_outbound_frames_total",
                                                          "WebSocket frames written to clients (data frames of the protocol)");
  Counter& writes = Metrics::Default().GetCounter(
      "parley_outbound_writes_total", "Socket writes that carried them (one per batch of coalesced frames)");
  Gauge& deflate_connections = Metrics::Default().GetGauge(
      "parley_ws_deflate_connections", "Open WebSocket connections with permessage-deflate negotiated");
  Counter& http_requests = Metrics::Default().GetCounter("parley_http_requests_total", "Plain HTTP requests served");
  Counter& idle_timeouts = Metrics::Default().GetCounter(
      "parley_ws_idle_timeouts_total",
      "WebSocket connections dropped because nothing was read from them for the heartbeat timeout");
  Counter& write_timeouts = Metrics::Default().GetCounter(
      "parley_ws_write_timeouts_total",
      "WebSocket connections ended because a write did not finish within the heartbeat timeout (a peer that stopped reading)");
  Counter& http_unreadable = Metrics::Default().GetCounter(
      "parley_http_unreadable_requests_total",
      "HTTP requests answered 400 (not HTTP/1.x as it must be) or 431 (header over 16 KiB) before any handler");
  Counter& http_handler_errors = Metrics::Default().GetCounter(
      "parley_http_handler_errors_total", "HTTP requests answered 500 because their handler threw (a defect: see the log)");
  Counter& origin_refused = Metrics::Default().GetCounter(
      "parley_ws_origin_refused_total", "WebSocket upgrades refused with 403 because their Origin is not allowed");
  Counter& tls_handshake_failed = Metrics::Default().GetCounter(
      "parley_tls_handshake_failures_total", "TLS handshakes that failed or timed out (the connection is dropped)");
  Counter& tls_reload_ok = Metrics::Default().GetCounter(
      "parley_tls_reloads_total", "Reloads of the TLS certificate and key (SIGHUP), by result", "result=\"ok\"");
  Counter& tls_reload_error = Metrics::Default().GetCounter(
      "parley_tls_reloads_total", "Reloads of the TLS certificate and key (SIGHUP), by result", "result=\"error\"");
};

// The closing handshake of a connection we close gets at least this long.
constexpr int kMinCloseTimeoutMs = 5'000;

// One coalesced write carries queued frames up to this many bytes (a single
// larger frame goes alone). Bounds the copy a connection holds while its
// write is in flight; larger batches would save no syscalls worth having.
constexpr size_t kMaxWriteBatchBytes = 64 * 1024;
// The first read of a frame on a connection waiting for one (WsSession::DoRead):
// small, so an idle connection holds little read buffer, yet large enough
// for most frames whole: receipts, typing, pings (60-110 bytes) and a send
// with a short message. A frame that fits takes one composed read; a longer
// one a second for its rest, which Beast completes with a post of its own
// (a turn of the I/O loop and its epoll_wait). 16 bytes before 2026-12-05:
// 250 B less per idle connection, 8 % more of the I/O thread's instructions
// and 0.6 more system calls per message (docs/benchmarks.md, "The first
// read of a frame").
constexpr size_t kIdleReadBytes = 256;

// Which queued receipts may merge: one per (conversation, receipt user).
struct ReceiptKeyT {
  store::ConversationId conversation_id;
  store::UserId user_id;
  bool operator==(const ReceiptKeyT&) const = default;
};
struct ReceiptKeyHash {
  size_t operator()(const ReceiptKeyT& k) const noexcept {
    return std::hash<int64_t>()(k.conversation_id) * 31 + std::hash<int64_t>()(k.user_id);
  }
};
ReceiptKeyT ReceiptKey(const store::StreamEvent& e) { return {e.conversation_id, e.receipt_user_id}; }

GatewayMetrics& M() {
  static GatewayMetrics m;
  return m;
}

class SessionRegistry;

// What the heartbeat timeout's sweep needs of a session (idle_sweep.h).
class IdleWatched {
 public:
  // The sweep's tick at the last frame read from the peer; written by the
  // session's thread, read by the sweep's.
  std::atomic<uint32_t> heard_tick{0};
  // Called by the sweep, on its thread, for a session silent at `tick`: the
  // session checks again on its own executor and drops itself.
  virtual void ExpireIfSilent(uint32_t tick) = 0;

 protected:
  ~IdleWatched() = default;
};

template <typename Stream>
class WsSession final : public fabric::DeviceSink,
                        public IdleWatched,
                        public std::enable_shared_from_this<WsSession<Stream>> {
 public:
  WsSession(Stream&& stream, SocketCount counted, std::shared_ptr<ssl::context> tls, core::ChatService* chat,
            const GatewayConfig& cfg, SessionRegistry* reg)
      : ws_(std::move(stream)),
        counted_(std::move(counted)),
        tls_(std::move(tls)),
        chat_(chat),
        cfg_(cfg),
        registry_(reg) {}

  // `peer`: the client's address, as accept returned it.
  void Start(http::request<http::string_body> req, const net::ip::address& peer);
  void SendFrame(fabric::SharedFrame frame, bool ephemeral) override;
  void SendReceipt(fabric::SharedFrame frame, std::shared_ptr<const store::StreamEvent> receipt) override;
  void Close(uint16_t code, std::string reason) override;
  void ExpireIfSilent(uint32_t tick) override;

 private:
  // Records that the peer was heard from now (IdleWatched::heard_tick).
  void MarkHeard();
  void DoRead();
  void OnFirstBytes(beast::error_code ec, size_t n);
  // Drops the rest of a message our close frame cut (see OnFirstBytes).
  void DoDiscard();
  void OnDiscarded(beast::error_code ec, size_t n);
  void OnRead(beast::error_code ec, size_t n);
  void ScheduleWrite();
  void DoWrite();
  void ArmWriteDeadline(size_t bytes);
  void OnWrite(beast::error_code ec, size_t n);
  void DoClose();
  void Finish();
  void DropQueued();
  struct Queued {
    fabric::SharedFrame frame;
    std::shared_ptr<const store::StreamEvent> receipt;  // set for a receipt that may absorb later ones
  };
  // On the session's executor.
  void Enqueue(Queued q, bool ephemeral);
  bool MergeReceipt(const std::shared_ptr<const store::StreamEvent>& receipt);
  void Dequeued(const Queued& q);

  websocket::stream<SerialWriteStream<Stream>> ws_;
  SocketCount counted_;
  std::shared_ptr<ssl::context> tls_;  // the context this TLS connection was accepted with (null: plain)
  beast::flat_buffer buffer_;
  core::ChatService* chat_;
  const GatewayConfig& cfg_;
  SessionRegistry* registry_;
  std::shared_ptr<core::Client> client_;
  // State below is touched only on the session's executor.
  // Element addresses are stable (mergeable_ points into it). A list, not a
  // deque: libstdc++'s deque allocates ~600 bytes even when empty, and most
  // connections' queues are empty most of the time (idle memory).
  std::list<Queued> queue_;
  // Queued receipts not yet being written, by (conversation, receipt user).
  std::unordered_map<ReceiptKeyT, Queued*, ReceiptKeyHash> mergeable_;
  size_t queued_bytes_ = 0;
  std::string batch_;        // the frames being written, encoded (plain frames; empty between writes)
  size_t batch_frames_ = 0;  // queue_'s first entries, in the write in flight
  std::chrono::steady_clock::time_point write_deadline_{};  // of the write in flight (ArmWriteDeadline)
  bool writing_ = false;
  bool write_posted_ = false;  // a DoWrite is posted for the end of this loop turn
  bool accepted_ = false;      // the WebSocket handshake is done
  bool close_requested_ = false;
  bool closing_ = false;
  bool finished_ = false;
  bool deflate_ = false;  // permessage-deflate negotiated
  websocket::close_reason close_reason_;
};

// Every open session, so that shutdown can close those that are not (yet)
// authenticated and therefore not in the fabric, and the heartbeat timeout's
// sweep can find the silent ones (idle_sweep.h).
class SessionRegistry {
 public:
  void Add(const std::shared_ptr<fabric::DeviceSink>& s, IdleWatched* watched) {
    watched->heard_tick.store(Tick(), std::memory_order_relaxed);
    std::lock_guard lock(mu_);
    sessions_.emplace(s.get(), Entry{s, watched});
  }
  void Remove(fabric::DeviceSink* s) {
    std::lock_guard lock(mu_);
    sessions_.erase(s);
  }
  std::vector<std::shared_ptr<fabric::DeviceSink>> All() {
    std::lock_guard lock(mu_);
    std::vector<std::shared_ptr<fabric::DeviceSink>> out;
    for (auto& [p, e] : sessions_)
      if (auto s = e.sink.lock()) out.push_back(std::move(s));
    return out;
  }
  uint32_t Tick() const { return tick_.load(std::memory_order_relaxed); }
  // One sweep: advances the tick and asks every session silent for the
  // timeout to drop itself (outside the lock: that posts to its executor).
  void Sweep() {
    const uint32_t tick = tick_.fetch_add(1, std::memory_order_relaxed) + 1;
    std::vector<std::pair<std::shared_ptr<fabric::DeviceSink>, IdleWatched*>> silent;
    {
      std::lock_guard lock(mu_);
      for (auto& [p, e] : sessions_) {
        if (!SilentForTimeout(tick, e.watched->heard_tick.load(std::memory_order_relaxed))) continue;
        if (auto s = e.sink.lock()) silent.emplace_back(std::move(s), e.watched);
      }
    }
    for (auto& [s, watched] : silent) watched->ExpireIfSilent(tick);
  }

 private:
  struct Entry {
    std::weak_ptr<fabric::DeviceSink> sink;
    IdleWatched* watched;  // the same session; valid while sink locks
  };
  std::mutex mu_;
  std::unordered_map<fabric::DeviceSink*, Entry> sessions_;
  std::atomic<uint32_t> tick_{0};
};

// HTTP connections waiting for their next request (a keep-alive connection
// between requests, or a new one before its first): a shutdown's drain ends
// them at once (Gateway::StopAccepting). Otherwise a browser that had
// loaded the web client, or a metrics scraper, held every shutdown for its
// whole drain. From then on, answers carry Connection: close.
class HttpWaiters {
 public:
  // false when the gateway drains: the session must not wait for a request.
  bool Add(const void* session, std::function<void()> end) {
    std::lock_guard lock(mu_);
    if (draining_) return false;
    ends_[session] = std::move(end);
    return true;
  }
  void Remove(const void* session) {
    std::lock_guard lock(mu_);
    ends_.erase(session);
  }
  bool draining() const { return draining_.load(std::memory_order_relaxed); }
  // Each waiting session's end, once; later ones do not wait (Add).
  void EndAll() {
    std::unordered_map<const void*, std::function<void()>> ends;
    {
      std::lock_guard lock(mu_);
      draining_ = true;
      ends.swap(ends_);
    }
    for (auto& [session, end] : ends) end();
  }

 private:
  std::mutex mu_;
  std::atomic<bool> draining_{false};  // written under mu_
  std::unordered_map<const void*, std::function<void()>> ends_;
};

template <typename Stream>
void WsSession<Stream>::Start(http::request<http::string_body> req, const net::ip::address& peer) {
  registry_->Add(this->shared_from_this(), this);
  beast::get_lowest_layer(ws_).expires_never();
  websocket::stream_base::timeout t{};
  t.handshake_timeout = std::chrono::milliseconds(kWsHandshakeTimeoutMs);
  // The heartbeat timeout is the gateway's sweep (idle_sweep.h), not Beast's
  // idle timer. Heartbeats are application frames (DESIGN.md); a WebSocket
  // ping or pong from the peer counts as hearing from it all the same.
  t.idle_timeout = websocket::stream_base::none();
  t.keep_alive_pings = false;
  ws_.set_option(t);
  ws_.control_callback([this](websocket::frame_type, beast::string_view) { MarkHeard(); });
  ws_.read_message_max(protocol::kHardMaxFrameBytes);
  ws_.auto_fragment(false);
  if (cfg_.ws_deflate.enabled) {
    websocket::permessage_deflate pmd;
    pmd.server_enable = true;
    pmd.server_max_window_bits = cfg_.ws_deflate.window_bits;
    pmd.client_max_window_bits = cfg_.ws_deflate.window_bits;
    pmd.server_no_context_takeover = cfg_.ws_deflate.no_context_takeover;
    pmd.client_no_context_takeover = cfg_.ws_deflate.no_context_takeover;
    pmd.compLevel = cfg_.ws_deflate.level;
    pmd.memLevel = cfg_.ws_deflate.mem_level;
    pmd.msg_size_threshold = cfg_.ws_deflate.min_bytes;
    ws_.set_option(pmd);
  }
  // Runs after Beast has negotiated the extensions, on this session's
  // executor, before the response is written.
  ws_.set_option(websocket::stream_base::decorator([this](websocket::response_type& res) {
    res.set(http::field::server, "parleyd");
    if (res[http::field::sec_websocket_extensions].find("permessage-deflate") != beast::string_view::npos) {
      deflate_ = true;
      M().deflate_connections.Add(1);
    }
  }));
  client_ = chat_->Connect(this->shared_from_this(), peer.is_unspecified() ? std::string() : peer.to_string());
  ws_.async_accept(req, [self = this->shared_from_this()](beast::error_code ec) {
    if (ec) return self->Finish();
    self->accepted_ = true;
    self->DoRead();
    self->DoWrite();  // whatever was queued during the handshake
  });
}

// Idle memory: Beast's async_read prepares tcp_frame_size (1,536) bytes of
// the dynamic buffer before any byte arrives, and the whole composed read
// (read_op over read_some_op) waits with it. Most connections are idle most
// of the time, so the wait for a frame is a read_some of at most
// kIdleReadBytes; the rest of that message is then read whole.
template <typename Stream>
void WsSession<Stream>::DoRead() {
  ws_.async_read_some(buffer_, kIdleReadBytes,
                      beast::bind_front_handler(&WsSession::OnFirstBytes, this->shared_from_this()));
}

template <typename Stream>
void WsSession<Stream>::MarkHeard() {
  heard_tick.store(registry_->Tick(), std::memory_order_relaxed);
}

template <typename Stream>
void WsSession<Stream>::ExpireIfSilent(uint32_t tick) {
  net::post(ws_.get_executor(), [self = this->shared_from_this(), tick] {
    if (self->finished_ || !SilentForTimeout(tick, self->heard_tick.load(std::memory_order_relaxed))) return;
    M().idle_timeouts.Inc();
    spdlog::info("event=ws_idle_timeout timeout_ms={}", self->cfg_.idle_timeout_ms);
    self->Finish();
  });
}

template <typename Stream>
void WsSession<Stream>::OnFirstBytes(beast::error_code ec, size_t n) {
  if (ec) return OnRead(ec, n);
  if (closing_ && !ws_.is_message_done()) {
    // Our close frame is out: the rest of this message no longer matters.
    buffer_.consume(buffer_.size());
    return DoDiscard();
  }
  if (ws_.is_message_done()) return OnRead(ec, n);
  MarkHeard();  // a longer message: heard at its start, and by OnRead at its end
  ws_.async_read(buffer_, beast::bind_front_handler(&WsSession::OnRead, this->shared_from_this()));
}

// Beast's close drains the rest of a message being read (it needs the peer's
// close frame behind it) without marking the message done. A read into a
// dynamic buffer started after that (async_read, or async_read_some with a
// limit) sizes itself from that state and asserts (read_size_hint: the final
// frame, nothing left, the message not done), before it would have waited
// for the close. A read into a fixed buffer computes no size: it waits for
// the close and ends with an error, or gets the next piece of the message.
template <typename Stream>
void WsSession<Stream>::DoDiscard() {
  ws_.async_read_some(buffer_.prepare(kIdleReadBytes),
                      beast::bind_front_handler(&WsSession::OnDiscarded, this->shared_from_this()));
}

template <typename Stream>
void WsSession<Stream>::OnDiscarded(beast::error_code ec, size_t n) {
  if (ec) return OnRead(ec, n);
  MarkHeard();
  // The bytes were never committed to buffer_: dropped.
  if (!ws_.is_message_done()) return DoDiscard();
  DoRead();  // at a message's boundary a dynamic read sizes itself safely
}

template <typename Stream>
void WsSession<Stream>::OnRead(beast::error_code ec, size_t) {
  if (ec) return Finish();
  MarkHeard();
  if (!client_) return;
  if (writing_ && std::chrono::steady_clock::now() > write_deadline_) {
    M().write_timeouts.Inc();
    spdlog::info("event=ws_write_timeout timeout_ms={} queued_bytes={}", cfg_.idle_timeout_ms, queued_bytes_);
    return Finish();
  }
  auto data = buffer_.cdata();
  chat_->OnFrame(client_, std::string_view(static_cast<const char*>(data.data()), data.size()));
  buffer_.consume(buffer_.size());
  buffer_.shrink_to_fit();  // an idle connection holds no read buffer (the next frame allocates one)
  DoRead();
}

template <typename Stream>
void WsSession<Stream>::SendFrame(fabric::SharedFrame frame, bool ephemeral) {
  net::post(ws_.get_executor(), [self = this->shared_from_this(), frame = std::move(frame), ephemeral]() mutable {
    self->Enqueue(Queued{std::move(frame), nullptr}, ephemeral);
  });
}

template <typename Stream>
void WsSession<Stream>::SendReceipt(fabric::SharedFrame frame, std::shared_ptr<const store::StreamEvent> receipt) {
  net::post(ws_.get_executor(), [self = this->shared_from_this(), frame = std::move(frame),
                                 receipt = std::move(receipt)]() mutable {
    if (self->close_requested_ || self->finished_) return;
    if (self->MergeReceipt(receipt)) return;
    // A receipt with a withheld list is queued as it is, and no later
    // receipt of its (conversation, user) may be folded into one queued
    // before it: that frame would carry a watermark past the withheld seqs
    // before their list arrives (the sender would see them delivered).
    if (!receipt->withheld.empty()) self->mergeable_.erase(ReceiptKey(*receipt));
    self->Enqueue(Queued{std::move(frame), receipt->withheld.empty() ? std::move(receipt) : nullptr}, false);
  });
}

// Overload order, step 2: a receipt whose (conversation, user) already has
// one waiting in the queue is folded into it: the waiting frame takes the new
// watermarks and lists the new user seq in `also_covers`, so the device gets
// one frame and the newest state. Receipts carrying withheld seqs are never
// merged (their lists must reach the device as they are), and later receipts
// are never merged past them (SendReceipt).
template <typename Stream>
bool WsSession<Stream>::MergeReceipt(const std::shared_ptr<const store::StreamEvent>& receipt) {
  if (!receipt->withheld.empty()) return false;
  auto it = mergeable_.find(ReceiptKey(*receipt));
  if (it == mergeable_.end()) return false;
  Queued& q = *it->second;
  auto merged = std::make_shared<store::StreamEvent>(*receipt);
  merged->user_seq = q.receipt->user_seq;
  merged->also_covers = q.receipt->also_covers;
  merged->also_covers.push_back(receipt->user_seq);
  auto frame = std::make_shared<const std::string>(protocol::EncodeEvent(*merged));
  queued_bytes_ = queued_bytes_ + frame->size() - q.frame->size();
  M().queue_bytes.Add(static_cast<int64_t>(frame->size()) - static_cast<int64_t>(q.frame->size()));
  M().coalesced.Inc();
  q.frame = std::move(frame);
  q.receipt = std::move(merged);
  return true;
}

template <typename Stream>
void WsSession<Stream>::Enqueue(Queued q, bool ephemeral) {
  if (close_requested_ || finished_) return;
  // Overload order, step 1: ephemeral frames (typing, presence) are shed
  // first, once the queue is half full; durable ones are recovered by sync if
  // it overflows.
  if (ephemeral && queued_bytes_ > cfg_.max_outbound_queue_bytes / 2) {
    M().shed.Inc();
    return;
  }
  queued_bytes_ += q.frame->size();
  M().queue_bytes.Add(static_cast<int64_t>(q.frame->size()));
  M().queue_frames.Add(1);
  queue_.push_back(std::move(q));
  if (queue_.back().receipt) mergeable_[ReceiptKey(*queue_.back().receipt)] = &queue_.back();
  if (queued_bytes_ > cfg_.max_outbound_queue_bytes) {
    // Step 3: too slow a reader. Drop what is queued (but the frames being
    // written, whose bytes the write in flight holds) and let the device
    // catch up by sync.
    M().resync_closes.Inc();
    DropQueued();
    close_requested_ = true;
    close_reason_ = websocket::close_reason(static_cast<websocket::close_code>(protocol::CloseCode::kResync),
                                            protocol::RetryAfterReason(cfg_.resync_retry_after_ms));
    if (!writing_) DoClose();
    return;
  }
  ScheduleWrite();
}

// The write starts at the end of this loop turn, so that the frames queued
// by the handlers already posted (a group commit's fan-out) leave with it.
template <typename Stream>
void WsSession<Stream>::ScheduleWrite() {
  if (writing_ || write_posted_) return;
  write_posted_ = true;
  net::post(ws_.get_executor(), [self = this->shared_from_this()] {
    self->write_posted_ = false;
    self->DoWrite();
  });
}

// Bookkeeping for a frame leaving the queue (written or dropped).
template <typename Stream>
void WsSession<Stream>::Dequeued(const Queued& q) {
  queued_bytes_ -= q.frame->size();
  M().queue_bytes.Add(-static_cast<int64_t>(q.frame->size()));
  M().queue_frames.Add(-1);
  if (q.receipt) {
    auto it = mergeable_.find(ReceiptKey(*q.receipt));
    if (it != mergeable_.end() && it->second == &q) mergeable_.erase(it);
  }
}

template <typename Stream>
void WsSession<Stream>::Close(uint16_t code, std::string reason) {
  net::post(ws_.get_executor(), [self = this->shared_from_this(), code, reason = std::move(reason)] {
    if (self->close_requested_ || self->finished_) return;
    self->close_requested_ = true;
    self->close_reason_ = websocket::close_reason(static_cast<websocket::close_code>(code), reason);
    // Close after flush: queued frames go first (DoWrite closes once the queue is empty).
    if (!self->writing_ && self->queue_.empty()) self->DoClose();
  });
}

template <typename Stream>
void WsSession<Stream>::DoWrite() {
  if (writing_ || finished_ || !accepted_) return;
  if (queue_.empty()) {
    if (close_requested_) DoClose();
    return;
  }
  // Beast has begun a closing handshake (the peer's close, or a failure): no
  // frame may follow its close frame. The read side ends the session.
  if (!ws_.is_open()) return;
  writing_ = true;
  // The frames of this write: nothing may merge into them any more.
  auto take = [this](Queued& q) {
    if (q.receipt) {
      auto it = mergeable_.find(ReceiptKey(*q.receipt));
      if (it != mergeable_.end() && it->second == &q) mergeable_.erase(it);
      q.receipt.reset();
    }
  };
  // With permessage-deflate, a frame Beast would compress (its size at least
  // the threshold) goes through Beast alone (see the top of this file); the
  // smaller ones, which Beast too would send uncompressed, are batched.
  auto compressed = [this](const Queued& q) { return deflate_ && q.frame->size() >= cfg_.ws_deflate.min_bytes; };
  if (compressed(queue_.front())) {
    batch_frames_ = 1;
    take(queue_.front());
    ws_.text(true);
    ArmWriteDeadline(queue_.front().frame->size());
    ws_.async_write(net::buffer(*queue_.front().frame),
                    beast::bind_front_handler(&WsSession::OnWrite, this->shared_from_this()));
    return;
  }
  size_t bytes = 0;
  batch_frames_ = 0;
  for (Queued& q : queue_) {
    size_t n = q.frame->size();
    if (compressed(q) || (batch_frames_ > 0 && bytes + n > kMaxWriteBatchBytes)) break;
    take(q);
    bytes += TextFrameHeaderBytes(n) + n;
    ++batch_frames_;
  }
  batch_.reserve(bytes);
  auto it = queue_.begin();
  for (size_t i = 0; i < batch_frames_; ++i, ++it) AppendTextFrame(batch_, *it->frame);
  ArmWriteDeadline(batch_.size());
  // One call, not net::async_write: SerialWriteStream writes it whole (ws_write.h).
  ws_.next_layer().async_write_some(net::buffer(batch_),
                                    beast::bind_front_handler(&WsSession::OnWrite, this->shared_from_this()));
}

// A write that does not finish within the heartbeat timeout, plus the time
// its bytes take at kMinPeerReadBytesPerSecond, ends the connection at the
// next frame the peer sends (OnRead): a peer that stopped reading but still
// sends pings would otherwise hold its queue, and a close waiting behind it,
// for ever. A silent one is dropped by the heartbeat timeout as before. No
// timer per write: a clock read here, a comparison per frame read.
template <typename Stream>
void WsSession<Stream>::ArmWriteDeadline(size_t bytes) {
  write_deadline_ = std::chrono::steady_clock::now() + std::chrono::milliseconds(cfg_.idle_timeout_ms) +
                    std::chrono::milliseconds(bytes * 1000 / GatewayConfig::kMinPeerReadBytesPerSecond);
}

// Drops every queued frame but those being written (the write in flight holds
// their bytes; OnWrite releases them).
template <typename Stream>
void WsSession<Stream>::DropQueued() {
  size_t keep = writing_ ? batch_frames_ : 0;
  while (queue_.size() > keep) {
    Dequeued(queue_.back());
    queue_.pop_back();
  }
}

template <typename Stream>
void WsSession<Stream>::OnWrite(beast::error_code ec, size_t) {
  writing_ = false;
  std::string().swap(batch_);  // an idle connection holds no write buffer
  if (!ec) {
    M().writes.Inc();
    M().frames_written.Inc(batch_frames_);
  }
  for (; batch_frames_ > 0; --batch_frames_) {
    Dequeued(queue_.front());
    queue_.pop_front();
  }
  if (ec || finished_) return Finish();
  DoWrite();
}

template <typename Stream>
void WsSession<Stream>::DoClose() {
  if (closing_ || finished_) return;
  closing_ = true;
  // The close frame waits behind what a stalled reader has not read yet; it
  // may take a while to get to it. Give it as long as a silent connection
  // gets (the heartbeat timeout): the queue is empty meanwhile.
  websocket::stream_base::timeout t{};
  t.handshake_timeout = std::chrono::milliseconds(std::max(kMinCloseTimeoutMs, cfg_.idle_timeout_ms));
  t.idle_timeout = websocket::stream_base::none();
  t.keep_alive_pings = false;
  ws_.set_option(t);
  ws_.async_close(close_reason_, [self = this->shared_from_this()](beast::error_code) {
    // The pending read completes with `closed` once the peer answers.
    beast::error_code ignored;
    beast::get_lowest_layer(self->ws_).socket().shutdown(tcp::socket::shutdown_both, ignored);
  });
}

template <typename Stream>
void WsSession<Stream>::Finish() {
  if (finished_) return;
  finished_ = true;
  if (deflate_) M().deflate_connections.Add(-1);
  DropQueued();  // frames still being written are released by OnWrite
  chat_->OnDisconnect(client_);
  client_.reset();  // core keeps it until it has processed the disconnect
  registry_->Remove(this);
  beast::error_code ignored;
  beast::get_lowest_layer(ws_).socket().close(ignored);
  counted_.Release();
}

template <typename Stream>
class HttpSession : public std::enable_shared_from_this<HttpSession<Stream>> {
 public:
  HttpSession(Stream&& stream, SocketCount counted, const net::ip::address& peer, std::shared_ptr<ssl::context> tls,
              core::ChatService* chat, const GatewayConfig& cfg, const HttpHandler& handler,
              const HttpBodyLimit& body_limit, SessionRegistry* reg, std::atomic<int64_t>* open, HttpWaiters* waiters)
      : stream_(std::move(stream)),
        socket_counted_(std::move(counted)),
        peer_(peer),
        tls_(std::move(tls)),
        chat_(chat),
        cfg_(cfg),
        handler_(handler),
        body_limit_(body_limit),
        registry_(reg),
        open_(open),
        waiters_(waiters) {
    open_->fetch_add(1);
  }
  ~HttpSession() {
    waiters_->Remove(this);
    CountOut();
  }

  void Start() {
    if constexpr (kIsTls<Stream>) {
      beast::get_lowest_layer(stream_).expires_after(std::chrono::milliseconds(kTlsHandshakeTimeoutMs));
      stream_.async_handshake(ssl::stream_base::server, [self = this->shared_from_this()](beast::error_code ec) {
        if (ec) {
          M().tls_handshake_failed.Inc();
          spdlog::debug("event=tls_handshake_failed error=\"{}\"", ec.message());
          return;  // the socket closes with the session
        }
        self->DoRead();
      });
    } else {
      DoRead();
    }
  }

 private:
  // The header first: what the request may send after it depends on who
  // asks (HttpBodyLimit).
  void DoRead() {
    req_ = {};  // an answer to an unreadable request must not take the last one's method or version
    // Bytes already here (a pipelined request) are served even when
    // draining, with Connection: close. The executor is taken here, on the
    // session's thread: the drain calls `end` on another, while this thread
    // may be moving stream_ away (an upgrade to WebSocket).
    const bool may_wait = waiters_->Add(this, [weak = this->weak_from_this(), ex = stream_.get_executor()] {
      net::post(ex, [weak] {
        if (auto self = weak.lock()) self->EndIfWaiting();
      });
    });
    if (!may_wait && NothingOfARequestHere()) return ShutdownSend();
    waiting_ = true;
    parser_.emplace();
    parser_->header_limit(static_cast<uint32_t>(kMaxHttpHeaderBytes));
    parser_->body_limit(kMaxHttpBodyBytes);  // lowered in OnHeader
    beast::get_lowest_layer(stream_).expires_after(kHttpIoTimeout);
    http::async_read_header(stream_, buffer_, *parser_,
                            beast::bind_front_handler(&HttpSession::OnHeader, this->shared_from_this()));
  }

  void OnHeader(beast::error_code ec, size_t) {
    waiting_ = false;
    waiters_->Remove(this);
    if (ec) return Unreadable(ec);
    const auto& h = parser_->get();
    HttpRequest head;
    head.method = std::string(h.method_string());
    head.target = std::string(h.target());
    head.authorization = std::string(h[http::field::authorization]);
    const size_t limit = body_limit_ ? body_limit_(head) : kMaxPlainHttpBodyBytes;
    if (parser_->content_length() && *parser_->content_length() > limit)
      return Unreadable(http::error::body_limit);
    parser_->body_limit(limit);
    http::async_read(stream_, buffer_, *parser_,
                     beast::bind_front_handler(&HttpSession::OnRead, this->shared_from_this()));
  }

  void OnRead(beast::error_code ec, size_t) {
    if (ec) return Unreadable(ec);
    req_ = parser_->release();
    if (websocket::is_upgrade(req_)) {
      std::string_view target(req_.target().data(), req_.target().size());
      if (target == "/v1/ws" || target.rfind("/v1/ws?", 0) == 0) {
        std::string_view origin(req_[http::field::origin].data(), req_[http::field::origin].size());
        std::string_view host(req_[http::field::host].data(), req_[http::field::host].size());
        if (!OriginAllowed(origin, host, cfg_.allowed_origins)) {
          M().origin_refused.Inc();
          spdlog::info("event=ws_origin_refused origin=\"{}\" host=\"{}\"", std::string(origin).substr(0, 200),
                       std::string(host).substr(0, 200));
          return Reply(403, "websocket upgrade refused: origin not allowed (see --allowed-origins)\n", false);
        }
        beast::get_lowest_layer(stream_).expires_never();
        auto ws = std::make_shared<WsSession<Stream>>(std::move(stream_), std::move(socket_counted_), std::move(tls_),
                                                      chat_, cfg_, registry_);
        ws->Start(std::move(req_), peer_);
        return;
      }
    }
    M().http_requests.Inc();
    HttpRequest r;
    r.method = std::string(req_.method_string());
    r.target = std::string(req_.target());
    r.authorization = std::string(req_[http::field::authorization]);
    r.if_none_match = std::string(req_[http::field::if_none_match]);
    r.body = std::move(req_.body());
    beast::get_lowest_layer(stream_).expires_never();  // the handler may take a while (bulk work)
    const std::string target = r.target.substr(0, 200);
    try {
      handler_(std::move(r), [self = this->shared_from_this()](HttpResponse resp) {
        net::post(self->stream_.get_executor(), [self, resp = std::move(resp)]() mutable {
          self->Reply(std::move(resp), self->req_.keep_alive());
        });
      });
    } catch (const std::exception& e) {
      // A handler's defect must not leave the I/O thread (that would end the
      // process): this request gets a 500, the server goes on.
      M().http_handler_errors.Inc();
      spdlog::error("event=http_handler_exception target=\"{}\" error=\"{}\"", target, e.what());
      Reply(500, "internal error\n", false);
    }
  }

  // A request that could not be read gets its answer: 431 for a header over
  // kMaxHttpHeaderBytes, 413 for a body over its limit, 400 for anything
  // that is not HTTP/1.x as it must be; a peer that went away or timed out
  // gets none. Either way the connection ends (what follows in the stream
  // cannot be trusted). The answer takes the request's method and version
  // when its header was read (no body for a HEAD).
  void Unreadable(const beast::error_code& ec) {
    if (parser_->is_header_done()) {
      req_.method_string(parser_->get().method_string());
      req_.version(parser_->get().version());
    }
    if (ec == http::error::header_limit) {
      M().http_unreadable.Inc();
      return Reply(431, "request header fields too large\n", false);
    }
    if (ec == http::error::body_limit) return Reply(413, "request body too large\n", false);
    const bool peer_gone = ec.category() != beast::error_code(http::error::bad_method).category() ||  // a socket's
                           ec == http::error::end_of_stream || ec == http::error::partial_message ||
                           ec == http::error::short_read;
    if (peer_gone) return ShutdownSend();
    M().http_unreadable.Inc();
    Reply(400, "bad request: " + ec.message() + "\n", false);
  }

  void Reply(int status, std::string body, bool keep_alive) {
    HttpResponse r;
    r.status = status;
    r.body = std::move(body);
    Reply(std::move(r), keep_alive);
  }

  void Reply(HttpResponse r, bool keep_alive) {
    int status = r.status;
    std::string body = std::move(r.body);
    auto res = std::make_shared<http::response<http::string_body>>(static_cast<http::status>(status), req_.version());
    res->set(http::field::server, "parleyd");
    res->set(http::field::content_type, r.content_type);
    res->set(http::field::cache_control, r.cache_control);
    // Security headers (gateway.h); the handler's own replace them by name.
    res->set("X-Content-Type-Options", "nosniff");
    res->set("Referrer-Policy", "no-referrer");
    res->set("X-Frame-Options", "DENY");
    res->set("Content-Security-Policy", kDefaultContentSecurityPolicy);
    if constexpr (kIsTls<Stream>) res->set("Strict-Transport-Security", "max-age=" + std::to_string(kHstsMaxAgeSeconds));
    if (!r.etag.empty()) res->set(http::field::etag, r.etag);
    for (auto& [name, value] : r.headers) res->set(name, value);
    res->keep_alive(keep_alive && !waiters_->draining());
    if (req_.method() != http::verb::head) res->body() = std::move(body);
    res->prepare_payload();
    beast::get_lowest_layer(stream_).expires_after(kHttpIoTimeout);
    http::async_write(stream_, *res, [self = this->shared_from_this(), res](beast::error_code wec, size_t) {
      if (wec || !res->keep_alive()) return self->ShutdownSend();
      self->DoRead();
    });
  }

  // Ends the connection after the last response: for TLS a close_notify
  // first (bounded by the handshake timeout), then a lingering close (TCP
  // half-close, then what the peer still sends is read and dropped until its
  // end of stream, within kTeardownLingerTimeout and kTeardownLingerMaxBytes).
  // Closing with unread bytes (the rest of a refused upload, a pipelined
  // request) would reset the connection, and a client still sending would
  // see the reset instead of the answer.
  // The session serves nothing more from here on, so it no longer holds up a
  // shutdown's drain (Gateway::OpenConnections). The TLS close_notify
  // exchange is bounded like the lingering (a client still sending makes it
  // end at once, with an error, and its bytes are then drained).
  void ShutdownSend() {
    CountOut();
    const auto linger = [self = this->shared_from_this()] {
      AsyncLingeringClose(beast::role_type::server, beast::get_lowest_layer(self->stream_), [self](beast::error_code) {});
    };
    if constexpr (kIsTls<Stream>) {
      beast::get_lowest_layer(stream_).expires_after(kTeardownLingerTimeout);
      stream_.async_shutdown([linger](beast::error_code) { linger(); });
    } else {
      linger();
    }
  }

  void CountOut() {
    if (counted_) open_->fetch_sub(1);
    counted_ = false;
  }

  // The drain began (HttpWaiters::EndAll): a session still waiting for a
  // request with nothing of it read ends like one whose peer left (the
  // cancelled read reaches Unreadable, then ShutdownSend's lingering close).
  // One with part of a request read goes on and gets its answer.
  void EndIfWaiting() {
    if (waiting_ && NothingOfARequestHere()) beast::get_lowest_layer(stream_).cancel();
  }

  // No byte of a next request has been read, nor waits in the socket (a
  // request that arrived must be answered, not dropped by the close).
  bool NothingOfARequestHere() {
    beast::error_code ec;
    const size_t in_socket = beast::get_lowest_layer(stream_).socket().available(ec);
    return buffer_.size() == 0 && (ec || in_socket == 0);
  }

  Stream stream_;
  SocketCount socket_counted_;         // moves to the WsSession on an upgrade
  net::ip::address peer_;              // the client's, from accept (no getpeername per connection)
  std::shared_ptr<ssl::context> tls_;  // the context this TLS connection was accepted with (null: plain)
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  http::request<http::string_body> req_;
  core::ChatService* chat_;
  const GatewayConfig& cfg_;
  const HttpHandler& handler_;
  const HttpBodyLimit& body_limit_;
  SessionRegistry* registry_;
  std::atomic<int64_t>* open_;
  HttpWaiters* waiters_;
  bool counted_ = true;   // in *open_
  bool waiting_ = false;  // reading a request's header
};

std::string ToLower(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return out;
}

// A server TLS context from PEM files: TLS 1.2 and newer, the certificate
// chain, and a private key that must match the certificate.
Result<std::shared_ptr<ssl::context>> LoadTlsContext(const std::string& cert_file, const std::string& key_file) {
  auto ctx = std::make_shared<ssl::context>(ssl::context::tls_server);
  beast::error_code ec;
  ctx->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 | ssl::context::no_sslv3 |
                       ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1 | ssl::context::single_dh_use,
                   ec);
  if (ec) return Status(ErrorCode::kInternal, "tls options: " + ec.message());
  ctx->use_certificate_chain_file(cert_file, ec);
  if (ec) return Status(ErrorCode::kBadRequest, "tls certificate " + cert_file + ": " + ec.message());
  ctx->use_private_key_file(key_file, ssl::context::pem, ec);
  if (ec) return Status(ErrorCode::kBadRequest, "tls key " + key_file + ": " + ec.message());
  if (SSL_CTX_check_private_key(ctx->native_handle()) != 1)
    return Status(ErrorCode::kBadRequest, "tls key " + key_file + " does not match the certificate " + cert_file);
  return ctx;
}
// RLIMIT_NOFILE's soft limit (kMaxRaisedFileLimit when it cannot be read
// or is unlimited).
int64_t CurrentFileLimit() {
  rlimit lim{};
  if (getrlimit(RLIMIT_NOFILE, &lim) != 0 || lim.rlim_cur == RLIM_INFINITY) return kMaxRaisedFileLimit;
  return static_cast<int64_t>(lim.rlim_cur);
}
}  // namespace

int64_t FileLimitReserve(int64_t file_limit) {
  return std::min(kMaxReservedFiles, std::max(kMinReservedFiles, file_limit / 4));
}

int64_t DefaultMaxConnections(int64_t file_limit) {
  return std::max<int64_t>(1, file_limit - FileLimitReserve(file_limit));
}

int64_t RaiseFileLimit() {
  rlimit lim{};
  if (getrlimit(RLIMIT_NOFILE, &lim) == 0) {
    const rlim_t target = std::min<rlim_t>(lim.rlim_max, kMaxRaisedFileLimit);
    if (lim.rlim_cur < target) {
      lim.rlim_cur = target;
      setrlimit(RLIMIT_NOFILE, &lim);  // on failure the old limit stays, and is what CurrentFileLimit reads
    }
  }
  return CurrentFileLimit();
}

struct Gateway::Impl {
  explicit Impl(GatewayConfig c)
      : cfg(std::move(c)),
        contexts(MakeContexts(std::max(1, cfg.io_threads))),
        core_exec(contexts[0].get_executor()),
        control_exec(contexts[0].get_executor()),
        acceptor(contexts[0]) {
    for (auto& ctx : contexts) guards.emplace_back(net::make_work_guard(ctx));
  }

  // Each io_context is run by exactly one thread (Run: the caller runs the
  // first, one thread each the others), so each is told so (concurrency hint
  // 1): Asio then queues a handler posted from its own thread without taking
  // the scheduler's lock. Other threads (the store's writer, the fabric) may
  // still post to it.
  static std::deque<net::io_context> MakeContexts(int n) {
    std::deque<net::io_context> made;
    for (int i = 0; i < n; ++i) made.emplace_back(1);
    return made;
  }

  void DoAccept() {
    auto& ctx = contexts[next_ctx++ % contexts.size()];
    using Socket = net::basic_stream_socket<tcp, IoExecutor>;
    // accept fills in the peer's address: no getpeername per connection later.
    acceptor.async_accept(ctx, accept_peer, [this](beast::error_code ec, Socket socket) {
      if (ec == net::error::operation_aborted || !acceptor.is_open()) return;
      if (ec) return AcceptFailed(ec);
      M().accepted.Inc();
      if (sockets.load(std::memory_order_relaxed) >= max_connections) {
        Refuse(std::move(socket));
        return DoAccept();
      }
      beast::error_code ignored;
      socket.set_option(tcp::no_delay(true), ignored);
      if (cfg.socket_send_buffer > 0)
        socket.set_option(net::socket_base::send_buffer_size(cfg.socket_send_buffer), ignored);
      // Out of memory for a session (or for OpenSSL's per-connection state)
      // loses this connection, not the accept loop and the process.
      try {
        if (std::shared_ptr<ssl::context> tls = CurrentTls()) {
          TlsStream stream(std::move(socket), *tls);
          std::make_shared<HttpSession<TlsStream>>(std::move(stream), SocketCount(&sockets), accept_peer.address(),
                                                   std::move(tls), chat, cfg, http, body_limit, &registry, &open,
                                                   &waiters)
              ->Start();
        } else {
          std::make_shared<HttpSession<PlainStream>>(PlainStream(std::move(socket)), SocketCount(&sockets),
                                                     accept_peer.address(), nullptr, chat, cfg, http, body_limit,
                                                     &registry, &open, &waiters)
              ->Start();
        }
      } catch (const std::exception& e) {
        M().accept_errors.Inc();
        spdlog::warn("event=session_failed error=\"{}\"", e.what());
      }
      DoAccept();
    });
  }

  // Every failed accept waits kAcceptRetryDelay before the next (Asio
  // already retries a peer that left before its accept).
  void AcceptFailed(const beast::error_code& ec) {
    M().accept_errors.Inc();
    if (LogDue(&last_accept_log)) {
      spdlog::warn("event=accept_failed error=\"{}\" connections={} retry_in_ms={}", ec.message(),
                   sockets.load(std::memory_order_relaxed),
                   std::chrono::duration_cast<std::chrono::milliseconds>(kAcceptRetryDelay).count());
    }
    accept_retry.expires_after(kAcceptRetryDelay);
    accept_retry.async_wait([this](beast::error_code wait_ec) {
      if (!wait_ec && acceptor.is_open()) DoAccept();
    });
  }

  // Past max_connections: a plain connection is told so (503, Retry-After)
  // in one non-blocking write to its empty send buffer; a TLS one cannot be
  // told before its handshake and is closed. Either way at once, holding
  // nothing.
  void Refuse(net::basic_stream_socket<tcp, IoExecutor> socket) {
    M().refused.Inc();
    if (LogDue(&last_refused_log)) {
      spdlog::warn("event=connections_refused connections={} max_connections={}",
                   sockets.load(std::memory_order_relaxed), max_connections);
    }
    beast::error_code ignored, blocking;
    socket.non_blocking(true, blocking);  // never wait on the accept loop's thread
    if (!TlsConfigured() && !blocking) {
      static const std::string kRefusal = fmt::format(
          "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nRetry-After: {}\r\n"
          "Connection: close\r\nContent-Length: {}\r\n\r\n{}",
          GatewayConfig::kRefusedRetryAfterSeconds, std::string_view(kRefusedBody).size(), kRefusedBody);
      socket.write_some(net::buffer(kRefusal), ignored);
      socket.shutdown(tcp::socket::shutdown_send, ignored);
      // What of the request is already here is read and dropped, so that
      // the close is a FIN after the answer rather than a reset that can
      // overtake it (a close with unread bytes resets the connection).
      std::array<char, 4096> sink;
      for (int i = 0; i < 4; ++i) {
        if (socket.read_some(net::buffer(sink), ignored) == 0) break;
      }
    }
    socket.close(ignored);
  }
  static constexpr const char* kRefusedBody = "the server is at its connection limit; retry later\n";

  // True at most once per kAcceptLogInterval for `last` (the accept loop's
  // thread only).
  static bool LogDue(std::chrono::steady_clock::time_point* last) {
    const auto now = std::chrono::steady_clock::now();
    if (now - *last < kAcceptLogInterval) return false;
    *last = now;
    return true;
  }

  bool TlsConfigured() const { return !cfg.tls_cert_file.empty(); }

  // The heartbeat timeout's sweep (idle_sweep.h), on the first context until
  // Stop cancels it.
  void ScheduleIdleSweep() {
    if (cfg.idle_timeout_ms <= 0) return;
    idle_sweep.expires_after(IdleSweepPeriod(cfg.idle_timeout_ms));
    idle_sweep.async_wait([this](beast::error_code ec) {
      if (ec) return;
      registry.Sweep();
      ScheduleIdleSweep();
    });
  }

  std::shared_ptr<ssl::context> CurrentTls() const {
    std::lock_guard lock(tls_mu);
    return tls_ctx;
  }

  // Loads the configured files and makes them the context of new connections.
  Status LoadTls() {
    auto loaded = LoadTlsContext(cfg.tls_cert_file, cfg.tls_key_file);
    if (!loaded) return loaded.error();
    std::string sha = netutil::CertificateSha256(SSL_CTX_get0_certificate((*loaded)->native_handle()));
    std::lock_guard lock(tls_mu);
    tls_ctx = std::move(*loaded);
    tls_sha256 = std::move(sha);
    return Status::Ok();
  }

  GatewayConfig cfg;
  // Before the contexts, which outlive them otherwise: a session still
  // pending when its context is destroyed counts itself out of `open`.
  SessionRegistry registry;
  HttpWaiters waiters;
  std::atomic<int64_t> open{0};  // HTTP sessions still serving (not lingering)
  // TCP connections from accept to close (SocketCount), HTTP and WebSocket;
  // new ones are refused at max_connections (GatewayConfig).
  std::atomic<int64_t> sockets{0};
  const int64_t max_connections =
      cfg.max_connections > 0 ? cfg.max_connections : DefaultMaxConnections(CurrentFileLimit());
  std::deque<net::io_context> contexts;
  std::vector<net::executor_work_guard<net::io_context::executor_type>> guards;
  // The core's executor: the first io_context itself. Only the thread that
  // runs it runs the core's handlers, in the order they were posted, so a
  // strand on it (as there was) added a queue and a lock per handler and no
  // guarantee.
  AsioExecutorAdapter<net::io_context::executor_type> core_exec;
  AsioExecutorAdapter<net::io_context::executor_type> control_exec;
  tcp::acceptor acceptor;
  tcp::endpoint accept_peer;  // the pending accept's (one at a time: DoAccept)
  net::steady_timer accept_retry{contexts[0]};  // AcceptFailed's wait
  net::steady_timer idle_sweep{contexts[0]};    // ScheduleIdleSweep's
  std::chrono::steady_clock::time_point last_accept_log{}, last_refused_log{};
  core::ChatService* chat = nullptr;
  HttpHandler http;
  HttpBodyLimit body_limit;
  mutable std::mutex tls_mu;
  std::shared_ptr<ssl::context> tls_ctx;  // guarded by tls_mu; null: plain. New connections take a copy.
  std::string tls_sha256;                 // guarded by tls_mu; of tls_ctx's certificate
  size_t next_ctx = 0;
  uint16_t bound_port = 0;
};

Gateway::Gateway(GatewayConfig config) : impl_(std::make_unique<Impl>(std::move(config))) {}
Gateway::~Gateway() = default;

Executor& Gateway::CoreExecutor() { return impl_->core_exec; }
Executor& Gateway::ControlExecutor() { return impl_->control_exec; }

Status Gateway::Start(core::ChatService* chat, HttpHandler http, HttpBodyLimit body_limit) {
  impl_->chat = chat;
  impl_->http = std::move(http);
  impl_->body_limit = std::move(body_limit);
  if (impl_->TlsConfigured()) {
    if (Status s = impl_->LoadTls(); !s.ok()) return s;
    spdlog::info("event=tls_loaded cert={} sha256={}", impl_->cfg.tls_cert_file, TlsCertificateSha256());
  }
  beast::error_code ec;
  auto addr = net::ip::make_address(impl_->cfg.host, ec);
  if (ec) return Status(ErrorCode::kBadRequest, "bad listen address '" + impl_->cfg.host + "'");
  tcp::endpoint ep(addr, impl_->cfg.port);
  auto& a = impl_->acceptor;
  a.open(ep.protocol(), ec);
  if (!ec) a.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) a.bind(ep, ec);
  if (!ec) a.listen(net::socket_base::max_listen_connections, ec);
  if (ec) return Status(ErrorCode::kUnavailable, "cannot listen on " + impl_->cfg.host + ":" +
                                                     std::to_string(impl_->cfg.port) + ": " + ec.message());
  impl_->bound_port = a.local_endpoint().port();
  impl_->DoAccept();
  impl_->ScheduleIdleSweep();
  return Status::Ok();
}

uint16_t Gateway::BoundPort() const { return impl_->bound_port; }
int64_t Gateway::MaxConnections() const { return impl_->max_connections; }

void Gateway::Run() {
  // Set before the other I/O threads start: they inherit it (so a thread
  // that shows its name has its policy).
  if (impl_->cfg.io_sched_batch) {
    if (Status s = UseBatchScheduling(); !s.ok()) spdlog::warn("event=io_sched_batch_failed error=\"{}\"", s.message());
  }
  std::vector<std::thread> threads;
  for (size_t i = 1; i < impl_->contexts.size(); ++i) {
    threads.emplace_back([this, i] {
      SetCurrentThreadName("io/" + std::to_string(i));
      impl_->contexts[i].run();
    });
  }
  impl_->contexts[0].run();
  for (auto& t : threads) t.join();
}

void Gateway::StopAccepting() {
  net::post(impl_->contexts[0], [this] {
    beast::error_code ignored;
    impl_->acceptor.close(ignored);
  });
  impl_->waiters.EndAll();
}

void Gateway::CloseAll(uint16_t code, const std::string& reason) {
  for (auto& s : impl_->registry.All()) s->Close(code, reason);
}

int64_t Gateway::OpenConnections() const {
  return impl_->open.load() + static_cast<int64_t>(impl_->registry.All().size());
}

bool Gateway::tls() const { return impl_->TlsConfigured(); }

Status Gateway::ReloadTls() {
  if (!impl_->TlsConfigured()) return Status(ErrorCode::kBadRequest, "TLS is not configured");
  if (Status s = impl_->LoadTls(); !s.ok()) {
    M().tls_reload_error.Inc();
    spdlog::error("event=tls_reload_failed error=\"{}\" kept_sha256={}", s.message(), TlsCertificateSha256());
    return s;
  }
  M().tls_reload_ok.Inc();
  spdlog::info("event=tls_reloaded cert={} sha256={}", impl_->cfg.tls_cert_file, TlsCertificateSha256());
  return Status::Ok();
}

std::string Gateway::TlsCertificateSha256() const {
  std::lock_guard lock(impl_->tls_mu);
  return impl_->tls_sha256;
}

bool ValidAllowedOrigin(std::string_view origin) {
  if (origin == "*") return true;
  std::string o = ToLower(origin);
  std::string_view rest;
  if (o.rfind("http://", 0) == 0) {
    rest = std::string_view(o).substr(7);
  } else if (o.rfind("https://", 0) == 0) {
    rest = std::string_view(o).substr(8);
  } else {
    return false;
  }
  if (rest.empty()) return false;
  for (char c : rest)
    if (c == '/' || c == '?' || c == '#' || c == '@' || c == ' ' || c == ',') return false;
  return true;
}

bool OriginAllowed(std::string_view origin, std::string_view host, const std::vector<std::string>& allowed) {
  if (origin.empty()) return true;
  std::string o = ToLower(origin);
  for (const auto& a : allowed)
    if (a == "*" || ToLower(a) == o) return true;
  auto scheme_end = o.find("://");
  if (scheme_end == std::string::npos || host.empty()) return false;
  return o.substr(scheme_end + 3) == ToLower(host);
}

void Gateway::StopWhenDrained(int deadline_ms) {
  auto timer = std::make_shared<net::steady_timer>(impl_->contexts[0]);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(deadline_ms);
  auto check = std::make_shared<std::function<void()>>();
  *check = [this, timer, deadline, check] {
    if (OpenConnections() == 0 || std::chrono::steady_clock::now() >= deadline) {
      Stop();
      *check = nullptr;  // break the self-reference
      return;
    }
    timer->expires_after(std::chrono::milliseconds(10));
    timer->async_wait([check](beast::error_code) {
      if (*check) (*check)();
    });
  };
  net::post(impl_->contexts[0], [check] { (*check)(); });
}

void Gateway::Stop() {
  net::post(impl_->contexts[0], [this] {
    beast::error_code ignored;
    impl_->acceptor.close(ignored);
    impl_->idle_sweep.cancel();
    for (auto& g : impl_->guards) g.reset();
    for (auto& ctx : impl_->contexts) ctx.stop();
  });
}

}  // namespace parley::gateway
