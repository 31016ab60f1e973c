// Connection over Boost.Beast. Every Connection in the process runs on one
// shared io_context and I/O thread (SharedIo): a read loop per connection
// that sorts incoming frames into responses (by id), events and stray
// errors; writes are queued and sent one at a time (Beast allows one
// outstanding write). Callers block on a condition variable, never on the
// socket. The handlers own the connection's state (shared_ptr<Impl>), so a
// Connection can be destroyed while some of them are still queued; they
// finish on the I/O thread and never call the activity callback after the
// destructor returned.
//
// Why one shared thread: a thread (and an epoll instance) per connection made
// each device cost a thread start, its stack's page faults and three more
// file descriptors, and each reconnect another thread; a process with
// thousands of clients (many accounts, the load generator,
// parley-reconnect-bench) spent most of its start-up CPU there. The handlers
// do little (parse a frame, queue it, wake the consumer), so one thread
// serves thousands of connections.
#include "parley/connection.h"

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/beast/websocket/ssl.hpp>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <future>
#include <map>
#include <mutex>
#include <stdexcept>
#include <thread>

#include "net/tls_fingerprint.h"

namespace parley {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace websocket = beast::websocket;
namespace ssl = net::ssl;
using tcp = net::ip::tcp;
using nlohmann::json;

namespace {

// The server answered the upgrade with another status: its code and, for a
// refusal that says when to come back (503, 429), Retry-After in ms.
class Declined : public std::runtime_error {
 public:
  explicit Declined(const websocket::response_type& res)
      : std::runtime_error("the server declined the WebSocket upgrade: HTTP " + std::to_string(res.result_int()) +
                           " " + std::string(res.reason())),
        retry_after_ms(RetryAfterMs(res)) {}
  const int64_t retry_after_ms;

 private:
  // Retry-After as delay-seconds (RFC 9110; an HTTP date is not used by
  // parleyd and counts as none), for 503 and 429 only.
  static int64_t RetryAfterMs(const websocket::response_type& res) {
    const unsigned status = res.result_int();
    if (status != 503 && status != 429) return 0;
    const beast::string_view v = res[beast::http::field::retry_after];
    int64_t seconds = 0;
    if (v.empty() || v.size() > 9) return 0;
    for (char ch : v) {
      if (ch < '0' || ch > '9') return 0;
      seconds = seconds * 10 + (ch - '0');
    }
    return seconds * 1000;
  }
};

// The process's I/O thread, started with the first Connection. Never
// destroyed: a handler may drop the last reference to a connection at any
// time, and joining the thread from a static destructor could run after
// other statics it uses are gone; the thread just ends with the process.
struct SharedIo {
  net::io_context ioc{1};
  // Keeps run() going while no connection has work pending.
  net::executor_work_guard<net::io_context::executor_type> work{ioc.get_executor()};
  std::thread thread{[this] { ioc.run(); }};
};

net::io_context& SharedIoContext() {
  static SharedIo* io = new SharedIo();
  return io->ioc;
}

}  // namespace

struct Connection::Impl : std::enable_shared_from_this<Connection::Impl> {
  virtual ~Impl() = default;

  net::io_context& ioc = SharedIoContext();
  beast::flat_buffer buffer;
  std::string peer_sha256;  // set before the first read is posted; read-only after
  bool deflate = false;     // permessage-deflate negotiated; likewise

  // Touched only on the io thread.
  std::deque<std::pair<std::string, bool>> write_queue;
  bool writing = false;
  bool paused = false;
  bool reading = false;

  mutable std::mutex mu;  // guards everything below
  std::condition_variable cv;
  std::map<int64_t, json> responses;
  std::deque<json> events;
  std::deque<json> stray_errors;
  int64_t next_id = 1;
  bool is_closed = false;
  uint16_t code = 0;
  std::string reason;

  // Held while the activity callback runs, so that clearing it (the
  // destructor, SetActivityCallback) waits for a call in progress.
  std::mutex callback_mu;
  std::function<void()> on_activity;  // guarded by callback_mu

  void NotifyActivity() {
    std::lock_guard lock(callback_mu);
    if (on_activity) on_activity();
  }

  // The stream-dependent operations (StreamImpl below). All run on the io
  // thread.
  virtual void DoRead() = 0;
  virtual void DoWrite() = 0;
  virtual void MarkClosed() = 0;
  virtual void AsyncClose() = 0;
  virtual void AbortSocket() = 0;

  // One complete frame is in `buffer`: sort it into responses, events or
  // stray errors and wake the waiters.
  void OnFrameRead() {
    std::string text = beast::buffers_to_string(buffer.data());
    buffer.consume(buffer.size());
    json frame = json::parse(text, nullptr, false);
    {
      std::lock_guard lock(mu);
      if (frame.is_discarded() || !frame.is_object()) {
        stray_errors.push_back(json{{"type", "client_error"}, {"message", "unparseable frame from server"}});
      } else {
        std::string type = frame.value("type", "");
        if ((type == "response" || type == "error") && frame.contains("id") && frame["id"].is_number_integer()) {
          int64_t id = frame["id"].get<int64_t>();  // before the move below
          responses[id] = std::move(frame);
        } else if (type == "error") {
          stray_errors.push_back(std::move(frame));
        } else {
          events.push_back(std::move(frame));
        }
      }
    }
    cv.notify_all();
    NotifyActivity();
  }

  // Records the close (keeping a close code already seen) and wakes waiters.
  void SetClosed(uint16_t ws_code, const std::string& ws_reason) {
    bool first = false;
    {
      std::lock_guard lock(mu);
      if (!is_closed) {
        is_closed = true;
        first = true;
        if (code == 0) {
          code = ws_code;
          reason = ws_reason;
        }
      }
    }
    cv.notify_all();
    if (first) NotifyActivity();
  }

  void Write(std::string bytes, bool binary) {
    net::post(ioc, [this, self = shared_from_this(), bytes = std::move(bytes), binary]() mutable {
      write_queue.emplace_back(std::move(bytes), binary);
      if (!writing) DoWrite();
    });
  }

  template <typename Pred>
  bool WaitFor(int timeout_ms, std::unique_lock<std::mutex>& lock, Pred pred) {
    return cv.wait_for(lock, std::chrono::milliseconds(timeout_ms), pred);
  }
};

namespace {

// The WebSocket over `Next`: beast::tcp_stream (ws://) or
// beast::ssl_stream<beast::tcp_stream> (wss://).
template <typename Next>
struct StreamImpl final : Connection::Impl {
  static constexpr bool kTls = std::is_same_v<Next, beast::ssl_stream<beast::tcp_stream>>;

  StreamImpl() requires(!kTls) : ws(ioc) {}
  explicit StreamImpl(std::unique_ptr<ssl::context> ctx) requires(kTls) : tls_ctx(std::move(ctx)), ws(ioc, *tls_ctx) {}

  std::unique_ptr<ssl::context> tls_ctx;  // TLS only; outlives ws (declared first)
  websocket::stream<Next> ws;

  void DoRead() override {
    if (paused || reading) return;
    reading = true;
    ws.async_read(buffer, [this, self = shared_from_this()](beast::error_code ec, size_t) {
      reading = false;
      if (ec) return MarkClosed();
      OnFrameRead();
      DoRead();
    });
  }

  void MarkClosed() override {
    SetClosed(static_cast<uint16_t>(ws.reason().code), std::string(ws.reason().reason.c_str()));
    beast::error_code ignored;
    beast::get_lowest_layer(ws).socket().close(ignored);
  }

  void DoWrite() override {
    if (write_queue.empty()) return;
    writing = true;
    ws.binary(write_queue.front().second);
    ws.async_write(net::buffer(write_queue.front().first),
                   [this, self = shared_from_this()](beast::error_code ec, size_t) {
      writing = false;
      write_queue.pop_front();
      if (ec) {
        write_queue.clear();
        return;
      }
      DoWrite();
    });
  }

  void AsyncClose() override {
    ws.async_close(websocket::close_code::normal, [self = shared_from_this()](beast::error_code) {});
  }

  void AbortSocket() override {
    beast::error_code ignored;
    beast::get_lowest_layer(ws).socket().shutdown(tcp::socket::shutdown_both, ignored);
    MarkClosed();  // also when no read is pending (paused, or never started)
  }

  // Connects, runs the TLS handshake (wss) and the WebSocket handshake, all
  // within options.timeout_ms. They run as asynchronous operations on the
  // I/O thread while the caller waits: beast's stream timeouts apply to
  // asynchronous operations only, and a synchronous handshake with a server
  // that accepts the connection and never answers (stopped, overloaded, a
  // black hole on the path) would wait for ever. Must not be called on the
  // I/O thread. Throws boost::system::system_error on failure.
  void Open(const ConnectOptions& options) {
    if (ioc.get_executor().running_in_this_thread())
      throw std::logic_error("Connection::Open on the connections' I/O thread would wait for itself");
    tcp::resolver resolver(ioc);
    auto results = resolver.resolve(options.host, std::to_string(options.port));
    if constexpr (kTls) {
      auto& tls = ws.next_layer();
      beast::error_code ec;
      net::ip::make_address(options.host, ec);
      // SNI for a DNS name (an IP address is not sent as SNI).
      // (SSL_set_tlsext_host_name without its C-style cast.)
      if (ec && SSL_ctrl(tls.native_handle(), SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name,
                         const_cast<char*>(options.host.c_str())) != 1)
        throw boost::system::system_error(net::error::invalid_argument, "cannot set the TLS server name");
      if (options.verify_peer) {
        tls.set_verify_mode(ssl::verify_peer);
        tls.set_verify_callback(ssl::host_name_verification(options.host));
      } else {
        tls.set_verify_mode(ssl::verify_none);
      }
    }
    ws.set_option(websocket::stream_base::decorator([origin = options.origin](websocket::request_type& req) {
      req.set(beast::http::field::user_agent, "parley-sdk");
      if (!origin.empty()) req.set(beast::http::field::origin, origin);
    }));
    ws.read_message_max(16 * 1024 * 1024);
    if (options.deflate) {
      websocket::permessage_deflate pmd;
      pmd.client_enable = true;
      ws.set_option(pmd);
    }
    // Keep the server's close code as soon as its close frame is parsed: a
    // write failing afterwards (the server tore the connection down while
    // we were still sending) must not lose it.
    ws.control_callback([this](websocket::frame_type kind, beast::string_view) {
      if (kind != websocket::frame_type::close) return;
      std::lock_guard lock(mu);
      code = static_cast<uint16_t>(ws.reason().code);
      reason = std::string(ws.reason().reason.c_str());
    });
    std::promise<beast::error_code> opened;
    websocket::response_type res;
    net::post(ioc, [&] {
      auto finish = [&](beast::error_code ec) {
        beast::get_lowest_layer(ws).expires_never();  // the timer is the I/O thread's too
        opened.set_value(ec);
      };
      auto& lowest = beast::get_lowest_layer(ws);
      lowest.expires_after(std::chrono::milliseconds(options.timeout_ms));  // for all three steps
      // A step that throws as it starts (an allocation, a request field past
      // Beast's limits) ends the open with an error: an exception must not
      // leave the I/O thread, which serves every connection of the process.
      auto guarded = [finish](const auto& step) {
        try {
          step();
        } catch (const std::exception&) {
          finish(make_error_code(boost::system::errc::invalid_argument));
        }
      };
      auto handshake = [&, finish, guarded] {
        guarded([&] { ws.async_handshake(res, options.host + ":" + std::to_string(options.port), options.path, finish); });
      };
      auto connected = [&, finish, guarded, handshake](beast::error_code ec) {
        if (ec) return finish(ec);
        beast::get_lowest_layer(ws).socket().set_option(tcp::no_delay(true), ec);
        if constexpr (kTls) {
          guarded([&] {
            ws.next_layer().async_handshake(ssl::stream_base::client, [&, finish, handshake](beast::error_code tls_ec) {
              if (tls_ec) return finish(tls_ec);
              X509* cert = SSL_get1_peer_certificate(ws.next_layer().native_handle());
              peer_sha256 = netutil::CertificateSha256(cert);
              X509_free(cert);
              handshake();
            });
          });
        } else {
          handshake();
        }
      };
      guarded([&] {
        if (options.receive_buffer_bytes > 0) {
          // Set before connecting, so the TCP window is negotiated small.
          tcp::endpoint ep = *results.begin();
          beast::error_code ec;
          lowest.socket().open(ep.protocol(), ec);
          if (!ec) lowest.socket().set_option(net::socket_base::receive_buffer_size(options.receive_buffer_bytes), ec);
          if (ec) return finish(ec);
          lowest.async_connect(ep, connected);
        } else {
          lowest.async_connect(results, [connected](beast::error_code ec, const tcp::endpoint&) { connected(ec); });
        }
      });
    });
    if (beast::error_code ec = opened.get_future().get()) {
      if (ec == websocket::error::upgrade_declined) throw Declined(res);
      throw boost::system::system_error(ec);
    }
    deflate = res[beast::http::field::sec_websocket_extensions].find("permessage-deflate") != beast::string_view::npos;
  }
};

// The client TLS context: TLS 1.2 or newer, the CA file or the system's CAs.
std::unique_ptr<ssl::context> ClientTlsContext(const ConnectOptions& options) {
  auto ctx = std::make_unique<ssl::context>(ssl::context::tls_client);
  ctx->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 | ssl::context::no_sslv3 |
                   ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1);
  if (options.verify_peer) {
    if (options.ca_file.empty()) {
      ctx->set_default_verify_paths();
    } else {
      ctx->load_verify_file(options.ca_file);
    }
  }
  return ctx;
}

}  // namespace

Connection::Connection() = default;

Connection::~Connection() {
  if (!impl_) return;
  Abort();
  std::lock_guard lock(impl_->callback_mu);
  impl_->on_activity = nullptr;
  // Handlers still queued hold the state and end on the I/O thread.
}

std::unique_ptr<Connection> Connection::Open(const ConnectOptions& options, std::string* error,
                                             int64_t* retry_after_ms) {
  if (retry_after_ms != nullptr) *retry_after_ms = 0;
  std::unique_ptr<Connection> c(new Connection());
  try {
    if (options.tls) {
      auto m = std::make_shared<StreamImpl<beast::ssl_stream<beast::tcp_stream>>>(ClientTlsContext(options));
      auto* raw = m.get();
      c->impl_ = std::move(m);
      raw->Open(options);
    } else {
      auto m = std::make_shared<StreamImpl<beast::tcp_stream>>();
      auto* raw = m.get();
      c->impl_ = std::move(m);
      raw->Open(options);
    }
  } catch (const std::exception& e) {
    if (error) *error = e.what();
    if (const auto* declined = dynamic_cast<const Declined*>(&e); declined != nullptr && retry_after_ms != nullptr)
      *retry_after_ms = declined->retry_after_ms;
    if (c->impl_) {
      std::lock_guard lock(c->impl_->mu);
      c->impl_->is_closed = true;  // nothing to wait for when it is destroyed
    }
    return nullptr;
  }
  net::post(c->impl_->ioc, [self = c->impl_] { self->DoRead(); });
  return c;
}

int64_t Connection::Start(std::string_view type, json fields) {
  int64_t id;
  {
    std::lock_guard lock(impl_->mu);
    id = impl_->next_id++;
  }
  json frame = std::move(fields);
  if (!frame.is_object()) frame = json::object();
  frame["v"] = 1;
  frame["id"] = id;
  frame["type"] = type;
  impl_->Write(frame.dump(), false);
  return id;
}

Reply Connection::Await(int64_t id, int timeout_ms) {
  Reply r;
  std::unique_lock lock(impl_->mu);
  bool got = impl_->WaitFor(timeout_ms, lock, [&] { return impl_->responses.count(id) || impl_->is_closed; });
  auto it = impl_->responses.find(id);
  if (it == impl_->responses.end()) {
    r.code = got ? "closed" : "timeout";
    r.message = got ? "connection closed before the response" : "no response in time";
    return r;
  }
  r.frame = std::move(it->second);
  impl_->responses.erase(it);
  if (r.frame.value("type", "") == "response") {
    r.ok = true;
    r.result = r.frame.value("result", json::object());
  } else {
    r.code = r.frame.value("code", "");
    r.message = r.frame.value("message", "");
  }
  return r;
}

Reply Connection::Call(std::string_view type, json fields, int timeout_ms) {
  return Await(Start(type, std::move(fields)), timeout_ms);
}

void Connection::SendRaw(std::string bytes, bool binary) { impl_->Write(std::move(bytes), binary); }

std::optional<json> Connection::NextEvent(int timeout_ms) {
  std::unique_lock lock(impl_->mu);
  impl_->WaitFor(timeout_ms, lock, [&] { return !impl_->events.empty() || impl_->is_closed; });
  if (impl_->events.empty()) return std::nullopt;
  json e = std::move(impl_->events.front());
  impl_->events.pop_front();
  return e;
}

std::optional<json> Connection::NextUnmatchedError(int timeout_ms) {
  std::unique_lock lock(impl_->mu);
  impl_->WaitFor(timeout_ms, lock, [&] { return !impl_->stray_errors.empty() || impl_->is_closed; });
  if (impl_->stray_errors.empty()) return std::nullopt;
  json e = std::move(impl_->stray_errors.front());
  impl_->stray_errors.pop_front();
  return e;
}

bool Connection::closed() const {
  std::lock_guard lock(impl_->mu);
  return impl_->is_closed;
}

uint16_t Connection::close_code() const {
  std::lock_guard lock(impl_->mu);
  return impl_->code;
}

std::string Connection::close_reason() const {
  std::lock_guard lock(impl_->mu);
  return impl_->reason;
}

std::string Connection::peer_certificate_sha256() const { return impl_->peer_sha256; }

bool Connection::deflate() const { return impl_->deflate; }

bool ParseServerAddress(const std::string& text, ConnectOptions* options) {
  std::string rest = text;
  bool tls = false;
  if (rest.rfind("wss://", 0) == 0) {
    tls = true;
    rest = rest.substr(6);
  } else if (rest.rfind("ws://", 0) == 0) {
    rest = rest.substr(5);
  }
  std::string path;
  if (auto slash = rest.find('/'); slash != std::string::npos) {
    path = rest.substr(slash);
    rest = rest.substr(0, slash);
  }
  auto colon = rest.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == rest.size()) return false;
  std::string host = rest.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  int port = 0;
  for (size_t i = colon + 1; i < rest.size(); ++i) {
    if (rest[i] < '0' || rest[i] > '9' || port > 65535) return false;
    port = port * 10 + (rest[i] - '0');
  }
  if (port <= 0 || port > 65535 || host.empty()) return false;
  options->host = host;
  options->port = static_cast<uint16_t>(port);
  options->tls = tls;
  if (!path.empty()) options->path = path;
  return true;
}

bool Connection::WaitClosed(int timeout_ms) {
  std::unique_lock lock(impl_->mu);
  return impl_->WaitFor(timeout_ms, lock, [&] { return impl_->is_closed; });
}

void Connection::SetActivityCallback(std::function<void()> fn) {
  std::lock_guard lock(impl_->callback_mu);
  impl_->on_activity = std::move(fn);
}

void Connection::PauseReading() {
  net::post(impl_->ioc, [m = impl_] { m->paused = true; });
}

void Connection::ResumeReading() {
  net::post(impl_->ioc, [m = impl_] {
    m->paused = false;
    m->DoRead();
  });
}

void Connection::Close() {
  net::post(impl_->ioc, [m = impl_] { m->AsyncClose(); });
  WaitClosed(2000);
}

void Connection::Abort() {
  net::post(impl_->ioc, [m = impl_] { m->AbortSocket(); });
  if (!WaitClosed(2000)) {
    std::lock_guard lock(impl_->mu);
    impl_->is_closed = true;
  }
}

}  // namespace parley
