// The gateway: accepts TCP connections, serves the few plain HTTP routes
// (/healthz, /metrics, and whatever the HttpHandler answers), upgrades
// /v1/ws to WebSocket and connects each socket to the ChatService. It owns
// each connection's bounded outbound queue and its idle (heartbeat) timeout.
// No business rules here.
//
// Threading: `io_threads` io_contexts, one thread each; connections are spread
// over them round-robin and live on theirs for good. The ChatService's core
// executor is a strand on the first io_context (CoreExecutor()).
//
// Public API is Boost-free; the implementation (gateway.cc) holds the Asio
// types.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/executor.h"
#include "common/status.h"

namespace parley::core {
class ChatService;
}

namespace parley::gateway {

struct GatewayConfig {
  std::string host = "127.0.0.1";
  uint16_t port = 8080;  // 0: pick a free port (see BoundPort)
  int io_threads = 1;
  // A connection whose queued outbound bytes exceed this is closed with the
  // resync close code; the device catches up by sync.
  size_t max_outbound_queue_bytes = 4 * 1024 * 1024;
  // A connection silent for this long is dropped (heartbeat timeout).
  int idle_timeout_ms = 60'000;
  // Kernel send buffer per connection (SO_SNDBUF); 0 = system default.
  int socket_send_buffer = 0;
  // Told to a connection closed with 4003 (resync): reconnect after this
  // long plus jitter, so that many connections dropped together spread out.
  int resync_retry_after_ms = 1'000;
};

struct HttpRequest {
  std::string method;         // "GET", "POST", ...
  std::string target;         // path and query
  std::string authorization;  // the Authorization header, "" if absent
  std::string if_none_match;  // the If-None-Match header, "" if absent
  std::string body;
};

struct HttpResponse {
  int status = 404;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body = "not found\n";
  std::string cache_control = "no-store";
  std::string etag;  // sent as ETag when not empty
  // Extra headers (e.g. Content-Security-Policy), sent as given.
  std::vector<std::pair<std::string, std::string>> headers;
};

// Answers a plain HTTP request (not a WebSocket upgrade). Called on an I/O
// thread; `respond` may be called later, from any thread, exactly once.
using HttpHandler = std::function<void(HttpRequest request, std::function<void(HttpResponse)> respond)>;

// Largest plain HTTP request body accepted (admin bulk requests); larger
// requests get 413.
inline constexpr size_t kMaxHttpBodyBytes = 64 * 1024 * 1024;

class Gateway {
 public:
  explicit Gateway(GatewayConfig config);
  ~Gateway();

  // The executor ChatService must use (a strand of the first io_context).
  Executor& CoreExecutor();
  // A general executor on the first io_context (timers, signals, shutdown).
  Executor& ControlExecutor();

  // Binds and starts accepting. Fails kUnavailable if the address is taken.
  Status Start(core::ChatService* chat, HttpHandler http);
  uint16_t BoundPort() const;

  // Runs the io threads; returns when Stop() has been called and they ended.
  void Run();

  // Any thread. Stops accepting new connections.
  void StopAccepting();
  // Any thread. Closes every open connection (after its queue drains).
  void CloseAll(uint16_t code, const std::string& reason);
  // Any thread. Number of open connections (HTTP and WebSocket).
  int64_t OpenConnections() const;
  // Any thread. Calls `fn` on SIGTERM or SIGINT (once per signal), on the
  // control executor.
  void OnSignal(std::function<void(int)> fn);
  // Any thread. Stops the io threads (Run returns).
  void Stop();
  // Any thread. Stops the io threads once no connection is open, or after
  // `deadline_ms` at the latest.
  void StopWhenDrained(int deadline_ms);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace parley::gateway
