// A small blocking HTTP/1.1 client for the project's tools and tests: the
// admin tool, the delivery checker, the chaos driver, the benchmarks and the
// end-to-end tests all talk to parleyd's HTTP endpoints through it. Built on
// Boost.Beast (parsing, Content-Length and chunked bodies); each call opens
// one connection (Connection: close) and is bounded by one deadline.
//
// Thread-safety: every function may be called from any thread; calls share
// nothing. No Boost in this header.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace parley::netutil {

// Where a server listens: a host name or address and a port.
struct HttpEndpoint {
  std::string host = "127.0.0.1";
  std::string port = "80";

  static HttpEndpoint Loopback(uint16_t port) { return {"127.0.0.1", std::to_string(port)}; }
};

// Parses "http://HOST[:PORT][/...]" (the path is ignored; IPv6 hosts in
// brackets). Returns nothing and sets *error for anything else, including
// https:// (the admin API is served on plain HTTP, docs/operations.md).
std::optional<HttpEndpoint> ParseHttpUrl(std::string_view url, std::string* error);

constexpr std::chrono::milliseconds kDefaultHttpTimeout{30'000};

struct HttpRequest {
  std::string method = "GET";
  std::string target = "/";     // path and query
  std::string body;             // sent with Content-Type when non-empty
  std::string content_type = "application/json";
  std::string authorization;    // the whole header value, e.g. "Bearer TOKEN"; none when empty
  std::vector<std::pair<std::string, std::string>> headers;  // any others
  std::chrono::milliseconds timeout = kDefaultHttpTimeout;   // resolve to last byte
};

struct HttpResponse {
  int status = 0;      // 0 when the exchange failed
  std::string body;    // de-chunked
  std::vector<std::pair<std::string, std::string>> headers;
  std::string error;   // non-empty when the exchange failed (unreachable, timeout, not HTTP)

  bool ok() const { return error.empty(); }
  // The first header of that name (case-insensitive), or "".
  std::string Header(std::string_view name) const;
};

// One request and its response.
HttpResponse HttpExchange(const HttpEndpoint& endpoint, const HttpRequest& request);

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
