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
#include <boost/beast/core.hpp>
#include <boost/beast/websocket.hpp>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

namespace parley {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace websocket = beast::websocket;
using tcp = net::ip::tcp;
using nlohmann::json;

namespace {

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
  net::io_context& ioc = SharedIoContext();
  websocket::stream<beast::tcp_stream> ws{ioc};
  beast::flat_buffer buffer;

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

  void DoRead() {
    if (paused || reading) return;
    reading = true;
    ws.async_read(buffer, [this, self = shared_from_this()](beast::error_code ec, size_t) {
      reading = false;
      if (ec) return MarkClosed();
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
      DoRead();
    });
  }

  void MarkClosed() {
    bool first = false;
    {
      std::lock_guard lock(mu);
      if (!is_closed) {
        is_closed = true;
        first = true;
        if (code == 0) {
          code = static_cast<uint16_t>(ws.reason().code);
          reason = std::string(ws.reason().reason.c_str());
        }
      }
    }
    cv.notify_all();
    if (first) NotifyActivity();
    beast::error_code ignored;
    beast::get_lowest_layer(ws).socket().close(ignored);
  }

  void Write(std::string bytes, bool binary) {
    net::post(ioc, [this, self = shared_from_this(), bytes = std::move(bytes), binary]() mutable {
      write_queue.emplace_back(std::move(bytes), binary);
      if (!writing) DoWrite();
    });
  }

  void DoWrite() {
    if (write_queue.empty()) return;
    writing = true;
    ws.binary(write_queue.front().second);
    ws.async_write(net::buffer(write_queue.front().first), [this, self = shared_from_this()](beast::error_code ec, size_t) {
      writing = false;
      write_queue.pop_front();
      if (ec) {
        write_queue.clear();
        return;
      }
      DoWrite();
    });
  }

  template <typename Pred>
  bool WaitFor(int timeout_ms, std::unique_lock<std::mutex>& lock, Pred pred) {
    return cv.wait_for(lock, std::chrono::milliseconds(timeout_ms), pred);
  }
};

Connection::Connection() : impl_(std::make_shared<Impl>()) {}

Connection::~Connection() {
  Abort();
  std::lock_guard lock(impl_->callback_mu);
  impl_->on_activity = nullptr;
  // Handlers still queued hold the state and end on the I/O thread.
}

std::unique_ptr<Connection> Connection::Open(const ConnectOptions& options, std::string* error) {
  std::unique_ptr<Connection> c(new Connection());
  Impl& m = *c->impl_;
  try {
    tcp::resolver resolver(m.ioc);
    auto results = resolver.resolve(options.host, std::to_string(options.port));
    auto& lowest = beast::get_lowest_layer(m.ws);
    lowest.expires_after(std::chrono::milliseconds(options.timeout_ms));
    if (options.receive_buffer_bytes > 0) {
      // Set before connecting, so the TCP window is negotiated small.
      tcp::endpoint ep = *results.begin();
      lowest.socket().open(ep.protocol());
      lowest.socket().set_option(net::socket_base::receive_buffer_size(options.receive_buffer_bytes));
      lowest.socket().connect(ep);
    } else {
      lowest.connect(results);
    }
    lowest.socket().set_option(tcp::no_delay(true));
    m.ws.set_option(websocket::stream_base::decorator(
        [](websocket::request_type& req) { req.set(beast::http::field::user_agent, "parley-sdk"); }));
    m.ws.read_message_max(16 * 1024 * 1024);
    // Keep the server's close code as soon as its close frame is parsed: a
    // write failing afterwards (the server tore the connection down while
    // we were still sending) must not lose it.
    m.ws.control_callback([&m](websocket::frame_type kind, beast::string_view) {
      if (kind != websocket::frame_type::close) return;
      std::lock_guard lock(m.mu);
      m.code = static_cast<uint16_t>(m.ws.reason().code);
      m.reason = std::string(m.ws.reason().reason.c_str());
    });
    m.ws.handshake(options.host + ":" + std::to_string(options.port), options.path);
    lowest.expires_never();
  } catch (const std::exception& e) {
    if (error) *error = e.what();
    return nullptr;
  }
  net::post(m.ioc, [self = c->impl_] { self->DoRead(); });
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
  net::post(impl_->ioc, [m = impl_] {
    m->ws.async_close(websocket::close_code::normal, [m](beast::error_code) {});
  });
  WaitClosed(2000);
}

void Connection::Abort() {
  net::post(impl_->ioc, [m = impl_] {
    beast::error_code ignored;
    beast::get_lowest_layer(m->ws).socket().shutdown(tcp::socket::shutdown_both, ignored);
    m->MarkClosed();  // also when no read is pending (paused, or never started)
  });
  if (!WaitClosed(2000)) {
    std::lock_guard lock(impl_->mu);
    impl_->is_closed = true;
  }
}

}  // namespace parley
