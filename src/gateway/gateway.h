// The gateway: accepts TCP connections, serves the few plain HTTP routes
// (/healthz, /metrics, and whatever the HttpHandler answers), upgrades
// /v1/ws to WebSocket and connects each socket to the ChatService. It owns
// each connection's bounded outbound queue and its idle (heartbeat) timeout.
// No business rules here.
//
// Threading: `io_threads` io_contexts, one thread each; connections are spread
// over them round-robin and live on theirs for good. The ChatService's core
// executor is the first io_context's, which one thread runs (CoreExecutor()).
//
// TLS: with a certificate and key configured the listener speaks TLS only
// (https and wss on the one port). ReloadTls (parleyd calls it on SIGHUP)
// loads the files into a new TLS context used by connections accepted from
// then on; open connections keep the context they were accepted with, so a
// reload drops none. A reload that fails keeps the old context.
//
// Browser hardening: a WebSocket upgrade whose Origin header is neither the
// request's own origin nor in GatewayConfig::allowed_origins is refused with
// 403 (OriginAllowed below); every plain HTTP response carries the security
// headers listed at kDefaultContentSecurityPolicy.
//
// Public API is Boost-free; the implementation (gateway.cc) holds the Asio
// types.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/executor.h"
#include "common/status.h"

namespace parley::core {
class ChatService;
}

namespace parley::gateway {

struct WsDeflateConfig {
  static constexpr int kMinWindowBits = 9;  // zlib cannot do 8 (Beast's note)
  static constexpr int kMaxWindowBits = 15;
  static constexpr int kMinMemLevel = 1;
  static constexpr int kMaxMemLevel = 9;
  bool enabled = false;
  int window_bits = 15;
  int mem_level = 4;
  int level = 6;                // zlib compression level 0..9
  size_t min_bytes = 256;       // smaller frames go out uncompressed
  bool no_context_takeover = false;  // reset the compressor after each frame (less memory, worse ratio)
};

struct GatewayConfig {
  std::string host = "127.0.0.1";
  uint16_t port = 8080;  // 0: pick a free port (see BoundPort)
  int io_threads = 1;
  // Run the I/O threads under SCHED_BATCH (common/this_thread.h): a frame
  // arriving does not preempt the store's writer mid-commit on a shared
  // core; the I/O thread takes its frames (more of them at once) when the
  // writer blocks or its slice ends. Measured: docs/benchmarks.md, "I/O
  // threads that do not preempt the writer".
  bool io_sched_batch = true;
  // A connection whose queued outbound bytes exceed this is closed with the
  // resync close code; the device catches up by sync.
  size_t max_outbound_queue_bytes = 4 * 1024 * 1024;
  // Room for the largest single event (a 16 KiB body of control characters
  // is ~96 KiB escaped) twice over: a smaller queue could never send it.
  static constexpr size_t kMinOutboundQueueBytes = 256 * 1024;
  // A connection silent for this long is dropped (heartbeat timeout; checked
  // by one sweep per gateway: idle_sweep.h).
  int idle_timeout_ms = 60'000;
  // A write in flight longer than idle_timeout_ms plus its bytes at this rate
  // ends the connection (the peer stopped reading).
  static constexpr size_t kMinPeerReadBytesPerSecond = 16 * 1024;
  // Kernel send buffer per connection (SO_SNDBUF); 0 = system default.
  int socket_send_buffer = 0;
  // Told to a connection closed with 4003 (resync): reconnect after this
  // long plus jitter, so that many connections dropped together spread out.
  int resync_retry_after_ms = 1'000;
  // PEM certificate chain and private key. Both set: the listener serves TLS
  // only (https, wss); both empty: plain HTTP/WebSocket.
  std::string tls_cert_file;
  std::string tls_key_file;
  // Origins ("scheme://host[:port]", lower case) allowed to open a WebSocket
  // besides the server's own origin; "*" allows any (OriginAllowed).
  std::vector<std::string> allowed_origins;
  // permessage-deflate (RFC 7692), off by default. When on, a client that
  // offers it gets it; frames shorter than ws_deflate_min_bytes are sent
  // uncompressed. Window bits (9..15) and memory level (1..9) bound zlib's
  // state per connection (docs/operations.md, "Compression").
  WsDeflateConfig ws_deflate;
  // Most TCP connections open at once (HTTP and WebSocket, counted from
  // accept to close); past it a new connection is answered 503 with
  // Retry-After (plain HTTP) or closed (TLS) at once, and counted
  // (parley_connections_refused_total). 0: the open-file limit minus
  // FileLimitReserve (DefaultMaxConnections), so that a flood meets this
  // clear refusal rather than running the process out of descriptors.
  int64_t max_connections = 0;
  // Told to a refused connection (Retry-After, seconds).
  static constexpr int kRefusedRetryAfterSeconds = 5;
};

// Files kept for everything but connections (the store's database, WAL and
// readers, logs, Redis and PostgreSQL, push relays, backups): the larger of
// kMinReservedFiles and a quarter of the limit, at most kMaxReservedFiles.
inline constexpr int64_t kMinReservedFiles = 64;
inline constexpr int64_t kMaxReservedFiles = 512;
int64_t FileLimitReserve(int64_t file_limit);
// GatewayConfig::max_connections when it is 0: `file_limit` (RLIMIT_NOFILE's
// soft limit) minus FileLimitReserve, at least 1.
int64_t DefaultMaxConnections(int64_t file_limit);
// Raises this process's soft RLIMIT_NOFILE to its hard limit, at most
// kMaxRaisedFileLimit (as a server that holds a connection per file should;
// some containers' hard limit is about 10^9, which would make the default
// connection limit none), and returns the soft limit in force afterwards.
inline constexpr int64_t kMaxRaisedFileLimit = int64_t{1} << 20;
int64_t RaiseFileLimit();

// Security headers on every plain HTTP response (a handler's own headers of
// the same name replace them): X-Content-Type-Options: nosniff,
// Referrer-Policy: no-referrer, X-Frame-Options: DENY, this
// Content-Security-Policy (the web client's files carry their own, see
// static_files.h), and with TLS on, Strict-Transport-Security with
// kHstsMaxAgeSeconds.
inline constexpr const char* kDefaultContentSecurityPolicy =
    "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";
inline constexpr int64_t kHstsMaxAgeSeconds = 365LL * 24 * 3600;

// Whether a WebSocket upgrade may proceed, given its Origin header ("" when
// absent) and its Host header. Allowed when: there is no Origin (non-browser
// clients send none); or the Origin's host[:port] (after "scheme://") equals
// the Host header (same origin; the scheme is not compared, so a TLS-ending
// reverse proxy that passes Host on keeps working); or `allowed` holds "*" or
// the Origin itself. Comparisons ignore ASCII case. Everything else (a
// foreign site, "null" from sandboxed pages and files) is refused.
bool OriginAllowed(std::string_view origin, std::string_view host, const std::vector<std::string>& allowed);

// Whether `origin` is a valid --allowed-origins entry: "*" or
// "http(s)://host[:port]" with no path.
bool ValidAllowedOrigin(std::string_view origin);

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

// The WebSocket handshake (after the HTTP upgrade request) must finish within
// this long.
inline constexpr int kWsHandshakeTimeoutMs = 10'000;

// Largest HTTP request header (request line and fields, a WebSocket upgrade's
// included); a larger one gets 431. A request whose header does not parse
// gets 400; both close the connection.
inline constexpr size_t kMaxHttpHeaderBytes = 16 * 1024;

// Largest plain HTTP request body accepted (admin bulk requests); larger
// requests get 413.
inline constexpr size_t kMaxHttpBodyBytes = 64 * 1024 * 1024;
// The body a request may send unless HttpBodyLimit allows more (no public
// route takes a body; an admin request with the right token may send up to
// kMaxHttpBodyBytes): a stranger cannot make the server hold 64 MiB per
// connection before any check.
inline constexpr size_t kMaxPlainHttpBodyBytes = 16 * 1024;
// Decides, once a request's header is read (`head` has no body yet), how
// many body bytes it may send; above that it gets 413. Called on an I/O
// thread; must not block.
using HttpBodyLimit = std::function<size_t(const HttpRequest& head)>;

class Gateway {
 public:
  explicit Gateway(GatewayConfig config);
  ~Gateway();

  // The executor ChatService must use (the first io_context's executor: one thread runs it, handlers in the order posted).
  Executor& CoreExecutor();
  // A general executor on the first io_context (timers, signals, shutdown:
  // parleyd posts its signal handling there).
  Executor& ControlExecutor();

  // Loads the TLS files (if configured), binds and starts accepting. Fails
  // kUnavailable if the address is taken, kBadRequest if the certificate or
  // key cannot be loaded (the message names the file and the reason).
  // Without `body_limit`, every request may send kMaxPlainHttpBodyBytes.
  Status Start(core::ChatService* chat, HttpHandler http, HttpBodyLimit body_limit = nullptr);
  uint16_t BoundPort() const;
  // GatewayConfig::max_connections as in force (0 there: the default).
  int64_t MaxConnections() const;

  // Runs the io threads; returns when Stop() has been called and they ended.
  void Run();

  // Any thread. Stops accepting new connections, and ends the HTTP
  // connections waiting for a request (keep-alive between requests); the
  // answers still to come say Connection: close.
  void StopAccepting();
  // Any thread. Closes every open connection (after its queue drains).
  void CloseAll(uint16_t code, const std::string& reason);
  // Any thread. Number of open connections (HTTP and WebSocket).
  int64_t OpenConnections() const;

  // Whether the listener serves TLS.
  bool tls() const;
  // Any thread. Reloads the certificate and key files into a new TLS context
  // for connections accepted from now on; open connections keep theirs.
  // On failure (unreadable file, bad PEM, key not matching the certificate)
  // the old context stays in use and the error is returned. Logs and counts
  // parley_tls_reloads_total{result}. kBadRequest if TLS is not configured.
  Status ReloadTls();
  // Any thread. Hex SHA-256 of the certificate in use ("" without TLS).
  std::string TlsCertificateSha256() const;
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
