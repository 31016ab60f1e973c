#include "net/http_client.h"

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/host_name_verification.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>
#include <boost/beast/version.hpp>
#include <openssl/ssl.h>

#include <strings.h>

#include <chrono>
#include <memory>
#include <optional>

namespace parley::netutil {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

namespace {

// The largest response body accepted (admin export pages are the biggest).
constexpr uint64_t kMaxResponseBodyBytes = 256ull << 20;

}  // namespace

std::optional<HttpEndpoint> ParseHttpUrl(std::string_view url, std::string* error, std::string* target,
                                         bool allow_https) {
  constexpr std::string_view kScheme = "http://", kTlsScheme = "https://";
  const std::string expected = allow_https ? "expected http(s)://HOST[:PORT], got \"" : "expected http://HOST[:PORT], got \"";
  HttpEndpoint out;
  std::string_view rest;
  if (url.substr(0, kScheme.size()) == kScheme) {
    rest = url.substr(kScheme.size());
  } else if (allow_https && url.substr(0, kTlsScheme.size()) == kTlsScheme) {
    rest = url.substr(kTlsScheme.size());
    out.tls = true;
    out.port = "443";
  } else {
    *error = expected + std::string(url) + "\"";
    return std::nullopt;
  }
  size_t slash = rest.find('/');
  if (target) *target = slash == std::string_view::npos ? "/" : std::string(rest.substr(slash));
  rest = rest.substr(0, slash);
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
    *error = expected + std::string(url) + "\"";
    return std::nullopt;
  }
  return out;
}

struct HttpsTrust::Impl {
  asio::ssl::context context{asio::ssl::context::tls_client};
};

HttpsTrust::HttpsTrust(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HttpsTrust::~HttpsTrust() = default;

std::shared_ptr<const HttpsTrust> HttpsTrust::Create(const std::string& ca_file, std::string* error) {
  auto impl = std::make_unique<Impl>();
  beast::error_code ec;
  impl->context.set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_tlsv1 |
                                asio::ssl::context::no_tlsv1_1,
                            ec);
  if (ca_file.empty()) impl->context.set_default_verify_paths(ec);
  else impl->context.load_verify_file(ca_file, ec);
  if (ec) {
    *error = (ca_file.empty() ? std::string("cannot load the system's trust store")
                              : "cannot load CA file \"" + ca_file + "\"") +
             ": " + ec.message();
    return nullptr;
  }
  impl->context.set_verify_mode(asio::ssl::verify_peer);
  return std::shared_ptr<const HttpsTrust>(new HttpsTrust(std::move(impl)));
}

std::string HttpResponse::Header(std::string_view name) const {
  for (const auto& [k, v] : headers)
    if (k.size() == name.size() && strncasecmp(k.data(), name.data(), k.size()) == 0) return v;
  return "";
}

namespace {

// One exchange: resolve, connect, (TLS handshake,) write, read, each step
// chained from the previous one's completion; the TCP stream's deadline
// bounds connect to read.
class Exchange : public std::enable_shared_from_this<Exchange> {
 public:
  Exchange(asio::io_context& io, const HttpEndpoint& endpoint, const HttpRequest& request,
           std::function<void(HttpResponse)> done)
      : resolver_(io), endpoint_(endpoint), done_(std::move(done)) {
    if (endpoint.tls) {
      trust_ = request.trust;
      if (!trust_) {
        std::string error;
        trust_ = HttpsTrust::Create("", &error);
        if (!trust_) setup_error_ = error;
      }
      // The context is only read from here on (ssl::stream takes it by
      // non-const reference, as OpenSSL's SSL_new does).
      if (trust_) tls_.emplace(io, const_cast<asio::ssl::context&>(trust_->impl().context));
    } else {
      plain_.emplace(io);
    }
    req_.method(http::string_to_verb(request.method));
    req_.target(request.target);
    req_.version(11);
    std::string host = endpoint.host.find(':') != std::string::npos ? "[" + endpoint.host + "]" : endpoint.host;
    const char* default_port = endpoint.tls ? "443" : "80";
    req_.set(http::field::host, endpoint.port == default_port ? host : host + ":" + endpoint.port);
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
    if (!setup_error_.empty()) {
      HttpResponse out;
      out.failure = HttpFailure::kTls;
      out.error = setup_error_;
      return Finish(std::move(out));
    }
    // The resolver has no deadline of its own (a numeric host resolves at
    // once); the stream's timer covers connect, handshake, write and read.
    resolver_.async_resolve(endpoint_.host, endpoint_.port,
                            [self = shared_from_this()](beast::error_code ec, tcp::resolver::results_type results) {
                              if (ec) return self->Fail(HttpFailure::kResolve, "cannot resolve", ec);
                              self->tcp().expires_after(self->timeout_);
                              self->tcp().async_connect(results, [self](beast::error_code ec2, const tcp::endpoint&) {
                                if (ec2) return self->Fail(HttpFailure::kConnect, "cannot connect to", ec2);
                                if (self->tls_) return self->Handshake();
                                self->Write(*self->plain_);
                              });
                            });
  }

 private:
  beast::tcp_stream& tcp() { return tls_ ? beast::get_lowest_layer(*tls_) : *plain_; }

  void Handshake() {
    // SNI for host names (not for addresses), and the certificate must name
    // the host (RFC 6125, through OpenSSL's checks).
    beast::error_code ec;
    asio::ip::make_address(endpoint_.host, ec);
    // (SSL_set_tlsext_host_name without its C-style cast.)
    if (ec && SSL_ctrl(tls_->native_handle(), SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name,
                       const_cast<char*>(endpoint_.host.c_str())) != 1)
      return Fail(HttpFailure::kTls, "cannot set the TLS server name for", asio::error::invalid_argument);
    tls_->set_verify_callback(asio::ssl::host_name_verification(endpoint_.host));
    tls_->async_handshake(asio::ssl::stream_base::client, [self = shared_from_this()](beast::error_code ec2) {
      if (ec2) return self->Fail(HttpFailure::kTls, "TLS handshake failed with", ec2);
      self->Write(*self->tls_);
    });
  }

  template <typename Stream>
  void Write(Stream& stream) {
    http::async_write(stream, req_, [self = shared_from_this(), &stream](beast::error_code ec, size_t) {
      if (ec) return self->Fail(HttpFailure::kWrite, "cannot send to", ec);
      http::async_read(stream, self->buffer_, self->parser_, [self](beast::error_code ec2, size_t) {
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

  // The response is complete (Connection: close), so a TLS connection is
  // closed without waiting for the peer's close_notify.
  void Finish(HttpResponse out) {
    if (plain_ || tls_) {
      beast::error_code ignored;
      tcp().socket().shutdown(tcp::socket::shutdown_both, ignored);
      tcp().close();
    }
    auto done = std::move(done_);
    done(std::move(out));
  }

  tcp::resolver resolver_;
  std::shared_ptr<const HttpsTrust> trust_;  // outlives tls_ (declared before it)
  std::optional<beast::tcp_stream> plain_;
  std::optional<beast::ssl_stream<beast::tcp_stream>> tls_;
  std::string setup_error_;
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
