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

#include <chrono>
#include <memory>

namespace parley::netutil {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

namespace {

// The largest response body accepted (admin export pages are the biggest).
constexpr uint64_t kMaxResponseBodyBytes = 256ull << 20;

}  // namespace

std::optional<HttpEndpoint> ParseHttpUrl(std::string_view url, std::string* error, std::string* target) {
  constexpr std::string_view kScheme = "http://";
  if (url.substr(0, kScheme.size()) != kScheme) {
    *error = "expected http://HOST[:PORT], got \"" + std::string(url) + "\"";
    return std::nullopt;
  }
  std::string_view rest = url.substr(kScheme.size());
  size_t slash = rest.find('/');
  if (target) *target = slash == std::string_view::npos ? "/" : std::string(rest.substr(slash));
  rest = rest.substr(0, slash);
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

namespace {

// One exchange: resolve, connect, write, read, each step chained from the
// previous one's completion; the stream's deadline bounds connect to read.
class Exchange : public std::enable_shared_from_this<Exchange> {
 public:
  Exchange(asio::io_context& io, const HttpEndpoint& endpoint, const HttpRequest& request,
           std::function<void(HttpResponse)> done)
      : resolver_(io), stream_(io), endpoint_(endpoint), done_(std::move(done)) {
    req_.method(http::string_to_verb(request.method));
    req_.target(request.target);
    req_.version(11);
    std::string host = endpoint.host.find(':') != std::string::npos ? "[" + endpoint.host + "]" : endpoint.host;
    req_.set(http::field::host, endpoint.port == "80" ? host : host + ":" + endpoint.port);
    req_.set(http::field::connection, "close");
    req_.set(http::field::user_agent, "parley-tools");
    if (!request.authorization.empty()) req_.set(http::field::authorization, request.authorization);
    for (const auto& [k, v] : request.headers) req_.set(k, v);
    if (!request.body.empty()) req_.set(http::field::content_type, request.content_type);
    req_.body() = request.body;
    req_.prepare_payload();
    parser_.body_limit(kMaxResponseBodyBytes);
    timeout_ = request.timeout;
  }

  void Start() {
    // The resolver has no deadline of its own (a numeric host resolves at
    // once); the stream's timer covers connect, write and read.
    resolver_.async_resolve(endpoint_.host, endpoint_.port,
                            [self = shared_from_this()](beast::error_code ec, tcp::resolver::results_type results) {
                              if (ec) return self->Fail(HttpFailure::kResolve, "cannot resolve", ec);
                              self->stream_.expires_after(self->timeout_);
                              self->stream_.async_connect(results, [self](beast::error_code ec2, const tcp::endpoint&) {
                                if (ec2) return self->Fail(HttpFailure::kConnect, "cannot connect to", ec2);
                                self->Write();
                              });
                            });
  }

 private:
  void Write() {
    http::async_write(stream_, req_, [self = shared_from_this()](beast::error_code ec, size_t) {
      if (ec) return self->Fail(HttpFailure::kWrite, "cannot send to", ec);
      http::async_read(self->stream_, self->buffer_, self->parser_, [self](beast::error_code ec2, size_t) {
        if (ec2) return self->Fail(HttpFailure::kRead, "no valid HTTP answer from", ec2);
        HttpResponse out;
        auto& res = self->parser_.get();
        out.status = static_cast<int>(res.result_int());
        for (const auto& field : res) out.headers.emplace_back(std::string(field.name_string()), std::string(field.value()));
        out.body = std::move(res.body());
        self->Finish(std::move(out));
      });
    });
  }

  void Fail(HttpFailure failure, const char* step, beast::error_code ec) {
    HttpResponse out;
    out.failure = failure;
    out.timed_out = ec == beast::error::timeout;
    out.error = std::string(step) + " " + endpoint_.host + ":" + endpoint_.port + ": " +
                (out.timed_out ? std::string("timed out") : ec.message());
    Finish(std::move(out));
  }

  void Finish(HttpResponse out) {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.close();
    auto done = std::move(done_);
    done(std::move(out));
  }

  tcp::resolver resolver_;
  beast::tcp_stream stream_;
  const HttpEndpoint endpoint_;
  std::function<void(HttpResponse)> done_;
  http::request<http::string_body> req_;
  http::response_parser<http::string_body> parser_;
  beast::flat_buffer buffer_;
  std::chrono::milliseconds timeout_{};
};

}  // namespace

void AsyncHttpExchange(asio::io_context& io, const HttpEndpoint& endpoint, const HttpRequest& request,
                       std::function<void(HttpResponse)> done) {
  std::make_shared<Exchange>(io, endpoint, request, std::move(done))->Start();
}

HttpResponse HttpExchange(const HttpEndpoint& endpoint, const HttpRequest& request) {
  asio::io_context io;
  HttpResponse out;
  AsyncHttpExchange(io, endpoint, request, [&out](HttpResponse r) { out = std::move(r); });
  io.run();
  return out;
}

}  // namespace parley::netutil
