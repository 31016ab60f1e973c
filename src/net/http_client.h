// A small HTTP/1.1 client: blocking for the project's tools and tests (the
// admin tool, the delivery checker, the chaos driver, the benchmarks and the
// end-to-end tests talk to parleyd's HTTP endpoints through it), and
// asynchronous on a caller's io_context for parleyd's own requests (the push
// webhook). Built on Boost.Beast (parsing, Content-Length and chunked
// bodies); each exchange opens one connection (Connection: close) and is
// bounded by one deadline. https:// is spoken where the caller allows it
// (ParseHttpUrl's allow_https): the certificate is verified against the
// system's trust store or a given CA file, and its name against the host.
//
// Thread-safety: every function may be called from any thread; exchanges
// share nothing. No Boost headers here (io_context is only declared).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace boost::asio {
class io_context;
}

namespace parley::netutil {

// Where a server listens: a host name or address and a port.
struct HttpEndpoint {
  std::string host = "127.0.0.1";
  std::string port = "80";
  bool tls = false;  // https: TLS with certificate and host name verification

  static HttpEndpoint Loopback(uint16_t port) { return {"127.0.0.1", std::to_string(port)}; }
};

// Parses "http://HOST[:PORT][/PATH]" (IPv6 hosts in brackets); the path (with
// its query), "/" when absent, goes to *target if given. With `allow_https`
// "https://..." too (port 443 by default, HttpEndpoint::tls set). Returns
// nothing and sets *error for anything else; https:// without allow_https is
// refused (the admin API is served on plain HTTP, docs/operations.md).
std::optional<HttpEndpoint> ParseHttpUrl(std::string_view url, std::string* error, std::string* target = nullptr,
                                         bool allow_https = false);

// What an https exchange trusts: a CA bundle file (PEM), or the system's
// trust store when none is given. Loaded once and shared by exchanges.
class HttpsTrust {
 public:
  // Fails (with *error set) when `ca_file` cannot be loaded.
  static std::shared_ptr<const HttpsTrust> Create(const std::string& ca_file, std::string* error);
  ~HttpsTrust();
  struct Impl;
  const Impl& impl() const { return *impl_; }

 private:
  explicit HttpsTrust(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

constexpr std::chrono::milliseconds kDefaultHttpTimeout{30'000};

struct HttpRequest {
  std::string method = "GET";
  std::string target = "/";     // path and query
  std::string body;             // sent with Content-Type when non-empty
  std::string content_type = "application/json";
  std::string authorization;    // the whole header value, e.g. "Bearer TOKEN"; none when empty
  std::vector<std::pair<std::string, std::string>> headers;  // any others
  std::chrono::milliseconds timeout = kDefaultHttpTimeout;   // resolve to last byte
  std::shared_ptr<const HttpsTrust> trust;  // for https; the system's trust store when null
};

// Where an exchange failed.
enum class HttpFailure { kNone, kResolve, kConnect, kTls, kWrite, kRead };

struct HttpResponse {
  int status = 0;      // 0 when the exchange failed
  std::string body;    // de-chunked
  std::vector<std::pair<std::string, std::string>> headers;
  std::string error;   // non-empty when the exchange failed (unreachable, timeout, not HTTP)
  HttpFailure failure = HttpFailure::kNone;
  bool timed_out = false;  // the failure was the deadline

  bool ok() const { return error.empty(); }
  // The first header of that name (case-insensitive), or "".
  std::string Header(std::string_view name) const;
};

// One request and its response, blocking the calling thread.
HttpResponse HttpExchange(const HttpEndpoint& endpoint, const HttpRequest& request);

// The same without blocking: runs on `io`; `done` is called there, once.
void AsyncHttpExchange(boost::asio::io_context& io, const HttpEndpoint& endpoint, const HttpRequest& request,
                       std::function<void(HttpResponse)> done);

// Shorthands for the common cases.
inline HttpResponse HttpGet(const HttpEndpoint& endpoint, std::string target, std::string authorization = {}) {
  HttpRequest r;
  r.target = std::move(target);
  r.authorization = std::move(authorization);
  return HttpExchange(endpoint, r);
}
inline HttpResponse HttpPost(const HttpEndpoint& endpoint, std::string target, std::string body,
                             std::string authorization = {}) {
  HttpRequest r;
  r.method = "POST";
  r.target = std::move(target);
  r.body = std::move(body);
  r.authorization = std::move(authorization);
  return HttpExchange(endpoint, r);
}

}  // namespace parley::netutil
