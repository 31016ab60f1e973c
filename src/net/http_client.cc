#include "net/http_client.h"

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/beast/version.hpp>

#include <strings.h>

namespace parley::netutil {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

namespace {

// The largest response body accepted (admin export pages are the biggest).
constexpr uint64_t kMaxResponseBodyBytes = 256ull << 20;

}  // namespace

std::optional<HttpEndpoint> ParseHttpUrl(std::string_view url, std::string* error) {
  constexpr std::string_view kScheme = "http://";
  if (url.substr(0, kScheme.size()) != kScheme) {
    *error = "expected http://HOST[:PORT], got \"" + std::string(url) + "\"";
    return std::nullopt;
  }
  std::string_view rest = url.substr(kScheme.size());
  rest = rest.substr(0, rest.find('/'));
  HttpEndpoint out;
  if (!rest.empty() && rest.front() == '[') {  // [v6]:port
    size_t close = rest.find(']');
    if (close == std::string_view::npos) {
      *error = "unterminated IPv6 address in \"" + std::string(url) + "\"";
      return std::nullopt;
    }
    out.host = std::string(rest.substr(1, close - 1));
    rest = rest.substr(close + 1);
    if (!rest.empty() && rest.front() != ':') {
      *error = "unexpected text after the IPv6 address in \"" + std::string(url) + "\"";
      return std::nullopt;
    }
    if (!rest.empty()) out.port = std::string(rest.substr(1));
  } else if (size_t colon = rest.rfind(':'); colon != std::string_view::npos) {
    out.host = std::string(rest.substr(0, colon));
    out.port = std::string(rest.substr(colon + 1));
  } else {
    out.host = std::string(rest);
  }
  if (out.host.empty() || out.port.empty() || out.port.find_first_not_of("0123456789") != std::string::npos ||
      out.port.size() > 5 || std::stoul(out.port) == 0 || std::stoul(out.port) > 65535) {
    *error = "expected http://HOST[:PORT], got \"" + std::string(url) + "\"";
    return std::nullopt;
  }
  return out;
}

std::string HttpResponse::Header(std::string_view name) const {
  for (const auto& [k, v] : headers)
    if (k.size() == name.size() && strncasecmp(k.data(), name.data(), k.size()) == 0) return v;
  return "";
}

HttpResponse HttpExchange(const HttpEndpoint& endpoint, const HttpRequest& request) {
  HttpResponse out;
  const std::string where = endpoint.host + ":" + endpoint.port;
  asio::io_context ioc;
  beast::tcp_stream stream(ioc);
  http::request<http::string_body> req(http::string_to_verb(request.method), request.target, 11);
  req.set(http::field::host, endpoint.host);
  req.set(http::field::connection, "close");
  req.set(http::field::user_agent, "parley-tools");
  if (!request.authorization.empty()) req.set(http::field::authorization, request.authorization);
  for (const auto& [k, v] : request.headers) req.set(k, v);
  if (!request.body.empty()) req.set(http::field::content_type, request.content_type);
  req.body() = request.body;
  req.prepare_payload();

  beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  parser.body_limit(kMaxResponseBodyBytes);
  beast::error_code failure;
  const char* step = "";
  auto fail = [&](const char* what, beast::error_code ec) {
    step = what;
    failure = ec;
  };

  // Asynchronous steps on a private io_context: tcp_stream's deadline then
  // bounds the whole exchange, name resolution excepted.
  tcp::resolver resolver(ioc);
  resolver.async_resolve(endpoint.host, endpoint.port, [&](beast::error_code ec, tcp::resolver::results_type results) {
    if (ec) return fail("cannot resolve", ec);
    stream.expires_after(request.timeout);
    stream.async_connect(results, [&](beast::error_code ec2, const tcp::endpoint&) {
      if (ec2) return fail("cannot connect to", ec2);
      http::async_write(stream, req, [&](beast::error_code ec3, size_t) {
        if (ec3) return fail("cannot send to", ec3);
        http::async_read(stream, buffer, parser, [&](beast::error_code ec4, size_t) {
          if (ec4) return fail("no valid HTTP answer from", ec4);
        });
      });
    });
  });
  ioc.run();
  if (failure) {
    out.error = std::string(step) + " " + where + ": " +
                (failure == beast::error::timeout ? std::string("timed out") : failure.message());
    return out;
  }
  auto& res = parser.get();
  out.status = static_cast<int>(res.result_int());
  for (const auto& field : res) out.headers.emplace_back(std::string(field.name_string()), std::string(field.value()));
  out.body = std::move(res.body());
  beast::error_code ignored;
  stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
  return out;
}

}  // namespace parley::netutil
