// Gateway implementation over Boost.Beast.
//
// Each accepted socket starts as an HttpSession reading HTTP/1.1 requests.
// A request for /v1/ws with an Upgrade header becomes a WsSession. A
// WsSession reads one frame at a time into its flat_buffer and hands the
// bytes to ChatService::OnFrame on its own I/O thread (decoding happens there,
// in parallel with other threads). Outgoing frames are shared, immutable
// strings queued per connection; one async_write is in flight at a time
// (Beast allows no more) and the queue is bounded in bytes.
#include "gateway/gateway.h"

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <optional>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "common/metrics.h"
#include "core/chat_service.h"
#include "protocol/encode.h"
#include "protocol/limits.h"

namespace parley::gateway {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
using tcp = net::ip::tcp;

namespace {

// An Executor over any Asio executor (a strand for the core).
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
  Counter& http_requests = Metrics::Default().GetCounter("parley_http_requests_total", "Plain HTTP requests served");
};

// The closing handshake of a connection we close gets at least this long.
constexpr int kMinCloseTimeoutMs = 5'000;

// Which queued receipts may merge: one per (conversation, receipt user).
std::string ReceiptKey(const store::StreamEvent& e) {
  return std::to_string(e.conversation_id) + ":" + std::to_string(e.receipt_user_id);
}

GatewayMetrics& M() {
  static GatewayMetrics m;
  return m;
}

class SessionRegistry;

class WsSession final : public fabric::DeviceSink, public std::enable_shared_from_this<WsSession> {
 public:
  WsSession(beast::tcp_stream&& stream, core::ChatService* chat, const GatewayConfig& cfg, SessionRegistry* reg)
      : ws_(std::move(stream)), chat_(chat), cfg_(cfg), registry_(reg) {}

  void Start(http::request<http::string_body> req);
  void SendFrame(fabric::SharedFrame frame, bool ephemeral) override;
  void SendReceipt(fabric::SharedFrame frame, std::shared_ptr<const store::StreamEvent> receipt) override;
  void Close(uint16_t code, std::string reason) override;

 private:
  void DoRead();
  void OnRead(beast::error_code ec, size_t n);
  void DoWrite();
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

  websocket::stream<beast::tcp_stream> ws_;
  beast::flat_buffer buffer_;
  core::ChatService* chat_;
  const GatewayConfig& cfg_;
  SessionRegistry* registry_;
  std::shared_ptr<core::Client> client_;
  // State below is touched only on the session's executor.
  std::deque<Queued> queue_;  // element addresses are stable (deque: push_back/pop_front)
  // Queued receipts not yet being written, by "conversation:user".
  std::unordered_map<std::string, Queued*> mergeable_;
  size_t queued_bytes_ = 0;
  bool writing_ = false;
  bool close_requested_ = false;
  bool closing_ = false;
  bool finished_ = false;
  websocket::close_reason close_reason_;
};

// Every open session, so that shutdown can close those that are not (yet)
// authenticated and therefore not in the fabric.
class SessionRegistry {
 public:
  void Add(const std::shared_ptr<WsSession>& s) {
    std::lock_guard lock(mu_);
    sessions_.insert(s.get());
    weak_.emplace(s.get(), s);
  }
  void Remove(WsSession* s) {
    std::lock_guard lock(mu_);
    sessions_.erase(s);
    weak_.erase(s);
  }
  std::vector<std::shared_ptr<WsSession>> All() {
    std::lock_guard lock(mu_);
    std::vector<std::shared_ptr<WsSession>> out;
    for (auto& [p, w] : weak_)
      if (auto s = w.lock()) out.push_back(std::move(s));
    return out;
  }

 private:
  std::mutex mu_;
  std::unordered_set<WsSession*> sessions_;
  std::unordered_map<WsSession*, std::weak_ptr<WsSession>> weak_;
};

void WsSession::Start(http::request<http::string_body> req) {
  registry_->Add(shared_from_this());
  beast::get_lowest_layer(ws_).expires_never();
  websocket::stream_base::timeout t{};
  t.handshake_timeout = std::chrono::seconds(10);
  t.idle_timeout = std::chrono::milliseconds(cfg_.idle_timeout_ms);
  t.keep_alive_pings = false;  // heartbeats are application frames (DESIGN.md)
  ws_.set_option(t);
  ws_.read_message_max(protocol::kHardMaxFrameBytes);
  ws_.auto_fragment(false);
  ws_.set_option(websocket::stream_base::decorator(
      [](websocket::response_type& res) { res.set(http::field::server, "parleyd"); }));
  beast::error_code remote_ec;
  auto remote = beast::get_lowest_layer(ws_).socket().remote_endpoint(remote_ec);
  client_ = chat_->Connect(shared_from_this(), remote_ec ? std::string() : remote.address().to_string());
  ws_.async_accept(req, [self = shared_from_this()](beast::error_code ec) {
    if (ec) return self->Finish();
    self->DoRead();
  });
}

void WsSession::DoRead() {
  ws_.async_read(buffer_, beast::bind_front_handler(&WsSession::OnRead, shared_from_this()));
}

void WsSession::OnRead(beast::error_code ec, size_t) {
  if (ec) return Finish();
  if (!client_) return;
  auto data = buffer_.cdata();
  chat_->OnFrame(client_, std::string_view(static_cast<const char*>(data.data()), data.size()));
  buffer_.consume(buffer_.size());
  DoRead();
}

void WsSession::SendFrame(fabric::SharedFrame frame, bool ephemeral) {
  net::post(ws_.get_executor(), [self = shared_from_this(), frame = std::move(frame), ephemeral]() mutable {
    self->Enqueue(Queued{std::move(frame), nullptr}, ephemeral);
  });
}

void WsSession::SendReceipt(fabric::SharedFrame frame, std::shared_ptr<const store::StreamEvent> receipt) {
  net::post(ws_.get_executor(), [self = shared_from_this(), frame = std::move(frame),
                                 receipt = std::move(receipt)]() mutable {
    if (self->close_requested_ || self->finished_) return;
    if (self->MergeReceipt(receipt)) return;
    self->Enqueue(Queued{std::move(frame), receipt->withheld.empty() ? std::move(receipt) : nullptr}, false);
  });
}

// Overload order, step 2: a receipt whose (conversation, user) already has
// one waiting in the queue is folded into it: the waiting frame takes the new
// watermarks and lists the new user seq in `also_covers`, so the device gets
// one frame and the newest state. Receipts carrying withheld seqs are never
// merged (their lists must reach the device as they are).
bool WsSession::MergeReceipt(const std::shared_ptr<const store::StreamEvent>& receipt) {
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

void WsSession::Enqueue(Queued q, bool ephemeral) {
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
    // Step 3: too slow a reader. Drop what is queued (but the frame being
    // written, whose buffer Beast still holds) and let the device catch up by
    // sync.
    M().resync_closes.Inc();
    DropQueued();
    close_requested_ = true;
    close_reason_ = websocket::close_reason(static_cast<websocket::close_code>(protocol::CloseCode::kResync),
                                            protocol::RetryAfterReason(cfg_.resync_retry_after_ms));
    if (!writing_) DoClose();
    return;
  }
  if (!writing_) DoWrite();
}

// Bookkeeping for a frame leaving the queue (written or dropped).
void WsSession::Dequeued(const Queued& q) {
  queued_bytes_ -= q.frame->size();
  M().queue_bytes.Add(-static_cast<int64_t>(q.frame->size()));
  M().queue_frames.Add(-1);
  if (q.receipt) {
    auto it = mergeable_.find(ReceiptKey(*q.receipt));
    if (it != mergeable_.end() && it->second == &q) mergeable_.erase(it);
  }
}

void WsSession::Close(uint16_t code, std::string reason) {
  net::post(ws_.get_executor(), [self = shared_from_this(), code, reason = std::move(reason)] {
    if (self->close_requested_ || self->finished_) return;
    self->close_requested_ = true;
    self->close_reason_ = websocket::close_reason(static_cast<websocket::close_code>(code), reason);
    if (!self->writing_) self->DoClose();
  });
}

void WsSession::DoWrite() {
  if (queue_.empty()) {
    if (close_requested_) DoClose();
    return;
  }
  writing_ = true;
  Queued& front = queue_.front();
  if (front.receipt) {  // its buffer now belongs to Beast: nothing may merge into it
    auto it = mergeable_.find(ReceiptKey(*front.receipt));
    if (it != mergeable_.end() && it->second == &front) mergeable_.erase(it);
    front.receipt.reset();
  }
  ws_.text(true);
  ws_.async_write(net::buffer(*front.frame), beast::bind_front_handler(&WsSession::OnWrite, shared_from_this()));
}

// Drops every queued frame but the one being written (Beast still holds its
// buffer; OnWrite releases it).
void WsSession::DropQueued() {
  size_t keep = writing_ ? 1 : 0;
  while (queue_.size() > keep) {
    Dequeued(queue_.back());
    queue_.pop_back();
  }
}

void WsSession::OnWrite(beast::error_code ec, size_t) {
  writing_ = false;
  Dequeued(queue_.front());
  queue_.pop_front();
  if (ec || finished_) return Finish();
  DoWrite();
}

void WsSession::DoClose() {
  if (closing_ || finished_) return;
  closing_ = true;
  // The close frame waits behind the frame being written; a stalled reader
  // may take a while to get to it. Give it as long as a silent connection
  // gets (the heartbeat timeout): memory held meanwhile is that one frame.
  websocket::stream_base::timeout t{};
  t.handshake_timeout = std::chrono::milliseconds(std::max(kMinCloseTimeoutMs, cfg_.idle_timeout_ms));
  t.idle_timeout = websocket::stream_base::none();
  t.keep_alive_pings = false;
  ws_.set_option(t);
  ws_.async_close(close_reason_, [self = shared_from_this()](beast::error_code) {
    // The pending read completes with `closed` once the peer answers.
    beast::error_code ignored;
    beast::get_lowest_layer(self->ws_).socket().shutdown(tcp::socket::shutdown_both, ignored);
  });
}

void WsSession::Finish() {
  if (finished_) return;
  finished_ = true;
  DropQueued();  // a frame still being written is released by OnWrite
  chat_->OnDisconnect(client_);
  client_.reset();  // core keeps it until it has processed the disconnect
  registry_->Remove(this);
  beast::error_code ignored;
  beast::get_lowest_layer(ws_).socket().close(ignored);
}

class HttpSession : public std::enable_shared_from_this<HttpSession> {
 public:
  HttpSession(tcp::socket&& socket, core::ChatService* chat, const GatewayConfig& cfg, const HttpHandler& handler,
              SessionRegistry* reg, std::atomic<int64_t>* open)
      : stream_(std::move(socket)), chat_(chat), cfg_(cfg), handler_(handler), registry_(reg), open_(open) {
    open_->fetch_add(1);
  }
  ~HttpSession() { open_->fetch_sub(1); }

  void Start() { DoRead(); }

 private:
  void DoRead() {
    parser_.emplace();
    parser_->body_limit(kMaxHttpBodyBytes);
    stream_.expires_after(std::chrono::seconds(30));
    http::async_read(stream_, buffer_, *parser_, beast::bind_front_handler(&HttpSession::OnRead, shared_from_this()));
  }

  void OnRead(beast::error_code ec, size_t) {
    if (ec == http::error::body_limit) return Reply(413, "request body too large\n", false);
    if (ec) {
      beast::error_code ignored;
      stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
      return;
    }
    req_ = parser_->release();
    if (websocket::is_upgrade(req_)) {
      std::string_view target(req_.target().data(), req_.target().size());
      if (target == "/v1/ws" || target.rfind("/v1/ws?", 0) == 0) {
        auto ws = std::make_shared<WsSession>(std::move(stream_), chat_, cfg_, registry_);
        ws->Start(std::move(req_));
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
    stream_.expires_never();  // the handler may take a while (bulk work)
    handler_(std::move(r), [self = shared_from_this()](HttpResponse resp) {
      net::post(self->stream_.get_executor(), [self, resp = std::move(resp)]() mutable {
        self->Reply(std::move(resp), self->req_.keep_alive());
      });
    });
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
    if (!r.etag.empty()) res->set(http::field::etag, r.etag);
    for (auto& [name, value] : r.headers) res->set(name, value);
    res->keep_alive(keep_alive);
    if (req_.method() != http::verb::head) res->body() = std::move(body);
    res->prepare_payload();
    http::async_write(stream_, *res, [self = shared_from_this(), res](beast::error_code wec, size_t) {
      if (wec || !res->keep_alive()) {
        beast::error_code ignored;
        self->stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
        return;
      }
      self->DoRead();
    });
  }

  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  http::request<http::string_body> req_;
  core::ChatService* chat_;
  const GatewayConfig& cfg_;
  const HttpHandler& handler_;
  SessionRegistry* registry_;
  std::atomic<int64_t>* open_;
};

}  // namespace

struct Gateway::Impl {
  explicit Impl(GatewayConfig c)
      : cfg(std::move(c)),
        contexts(static_cast<size_t>(std::max(1, cfg.io_threads))),
        core_exec(net::make_strand(contexts[0].get_executor())),
        control_exec(contexts[0].get_executor()),
        acceptor(contexts[0]),
        signals(contexts[0], SIGTERM, SIGINT) {
    for (auto& ctx : contexts) guards.emplace_back(net::make_work_guard(ctx));
  }

  void DoAccept() {
    auto& ctx = contexts[next_ctx++ % contexts.size()];
    acceptor.async_accept(ctx, [this](beast::error_code ec, tcp::socket socket) {
      if (ec == net::error::operation_aborted || !acceptor.is_open()) return;
      if (!ec) {
        M().accepted.Inc();
        beast::error_code ignored;
        socket.set_option(tcp::no_delay(true), ignored);
        if (cfg.socket_send_buffer > 0)
          socket.set_option(net::socket_base::send_buffer_size(cfg.socket_send_buffer), ignored);
        std::make_shared<HttpSession>(std::move(socket), chat, cfg, http, &registry, &open)->Start();
      } else {
        spdlog::warn("event=accept_failed error=\"{}\"", ec.message());
      }
      DoAccept();
    });
  }

  void WaitSignal() {
    signals.async_wait([this](beast::error_code ec, int sig) {
      if (ec) return;
      if (on_signal) on_signal(sig);
      WaitSignal();
    });
  }

  GatewayConfig cfg;
  std::deque<net::io_context> contexts;
  std::vector<net::executor_work_guard<net::io_context::executor_type>> guards;
  AsioExecutorAdapter<net::strand<net::io_context::executor_type>> core_exec;
  AsioExecutorAdapter<net::io_context::executor_type> control_exec;
  tcp::acceptor acceptor;
  net::signal_set signals;
  std::function<void(int)> on_signal;
  core::ChatService* chat = nullptr;
  HttpHandler http;
  SessionRegistry registry;
  std::atomic<int64_t> open{0};
  size_t next_ctx = 0;
  uint16_t bound_port = 0;
};

Gateway::Gateway(GatewayConfig config) : impl_(std::make_unique<Impl>(std::move(config))) {}
Gateway::~Gateway() = default;

Executor& Gateway::CoreExecutor() { return impl_->core_exec; }
Executor& Gateway::ControlExecutor() { return impl_->control_exec; }

Status Gateway::Start(core::ChatService* chat, HttpHandler http) {
  impl_->chat = chat;
  impl_->http = std::move(http);
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
  impl_->WaitSignal();
  return Status::Ok();
}

uint16_t Gateway::BoundPort() const { return impl_->bound_port; }

void Gateway::Run() {
  std::vector<std::thread> threads;
  for (size_t i = 1; i < impl_->contexts.size(); ++i) threads.emplace_back([this, i] { impl_->contexts[i].run(); });
  impl_->contexts[0].run();
  for (auto& t : threads) t.join();
}

void Gateway::StopAccepting() {
  net::post(impl_->contexts[0], [this] {
    beast::error_code ignored;
    impl_->acceptor.close(ignored);
  });
}

void Gateway::CloseAll(uint16_t code, const std::string& reason) {
  for (auto& s : impl_->registry.All()) s->Close(code, reason);
}

int64_t Gateway::OpenConnections() const {
  return impl_->open.load() + static_cast<int64_t>(impl_->registry.All().size());
}

void Gateway::OnSignal(std::function<void(int)> fn) {
  net::post(impl_->contexts[0], [this, fn = std::move(fn)] { impl_->on_signal = fn; });
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
    impl_->signals.cancel(ignored);
    impl_->acceptor.close(ignored);
    for (auto& g : impl_->guards) g.reset();
    for (auto& ctx : impl_->contexts) ctx.stop();
  });
}

}  // namespace parley::gateway
