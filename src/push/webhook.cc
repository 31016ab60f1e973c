// WebhookProvider: one Request object per attempt (resolve, connect, write,
// read), all under one deadline on the beast::tcp_stream (the attempt's
// timeout). A new connection per attempt: pushes are rare per device, and a
// relay that dies mid-keep-alive would otherwise cost a failed attempt.
#include "push/webhook.h"

#include <sodium.h>
#include <fmt/format.h>

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <chrono>

#include "protocol/json_writer.h"

namespace parley::push {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

std::string PushId(const store::PushJob& job) {
  return fmt::format("{}-{}-{}-{}", job.device_id, job.conversation_id, job.seq,
                     job.kind == store::PushKind::kMessage ? "message" : "badge");
}

std::string PushPayload(const store::PushJob& job, int64_t sent_at) {
  protocol::JsonWriter w;
  bool message = job.kind == store::PushKind::kMessage;
  w.BeginObject()
      .Field("id", PushId(job))
      .Field("kind", message ? "message" : "badge")
      .Field("silent", !(message && job.alert))
      .Field("user_id", job.user_id)
      .Field("device_id", job.device_id)
      .Field("provider", job.provider)
      .Field("token", job.token)
      .Field("conversation_id", job.conversation_id)
      .Field("seq", job.seq);
  w.Key("sender");
  if (message) {
    w.BeginObject().Field("user_id", job.sender_id).Field("display_name", job.sender_display_name).EndObject();
  } else {
    w.Null();
  }
  w.Key("preview");
  if (!job.preview.empty()) w.String(job.preview);
  else w.Null();
  w.Field("badge", job.badge).Field("attempt", job.attempts + 1).Field("sent_at", sent_at).EndObject();
  return w.Take();
}

std::string SignBody(const std::string& secret, const std::string& body) {
  crypto_auth_hmacsha256_state st;
  unsigned char mac[crypto_auth_hmacsha256_BYTES];
  crypto_auth_hmacsha256_init(&st, reinterpret_cast<const unsigned char*>(secret.data()), secret.size());
  crypto_auth_hmacsha256_update(&st, reinterpret_cast<const unsigned char*>(body.data()), body.size());
  crypto_auth_hmacsha256_final(&st, mac);
  char hex[2 * crypto_auth_hmacsha256_BYTES + 1];
  sodium_bin2hex(hex, sizeof hex, mac, sizeof mac);
  return std::string("sha256=") + hex;
}

Result<std::unique_ptr<WebhookProvider>> WebhookProvider::Create(asio::io_context& io, WebhookConfig config) {
  const std::string prefix = "http://";
  if (config.url.rfind(prefix, 0) != 0)
    return Status(ErrorCode::kBadRequest, "push webhook URL must start with http://");
  if (config.secret.empty()) return Status(ErrorCode::kBadRequest, "push webhook secret must not be empty");
  if (config.timeout_ms <= 0) return Status(ErrorCode::kBadRequest, "push webhook timeout must be positive");
  std::string rest = config.url.substr(prefix.size());
  size_t slash = rest.find('/');
  std::string authority = rest.substr(0, slash);
  std::string target = slash == std::string::npos ? "/" : rest.substr(slash);
  std::string host = authority, port = "80";
  if (size_t colon = authority.rfind(':'); colon != std::string::npos) {
    host = authority.substr(0, colon);
    port = authority.substr(colon + 1);
    if (port.empty() || port.find_first_not_of("0123456789") != std::string::npos)
      return Status(ErrorCode::kBadRequest, "push webhook URL has a bad port");
  }
  if (host.empty()) return Status(ErrorCode::kBadRequest, "push webhook URL has no host");
  return std::unique_ptr<WebhookProvider>(
      new WebhookProvider(io, std::move(config), std::move(host), std::move(port), std::move(target)));
}

WebhookProvider::WebhookProvider(asio::io_context& io, WebhookConfig config, std::string host, std::string port,
                                 std::string target)
    : io_(io), config_(std::move(config)), host_(std::move(host)), port_(std::move(port)), target_(std::move(target)) {}

class WebhookProvider::Request : public std::enable_shared_from_this<Request> {
 public:
  Request(asio::io_context& io, const WebhookProvider& p, std::string body, std::string push_id,
          std::function<void(SendResult)> done)
      : resolver_(io), stream_(io), provider_(p), done_(std::move(done)) {
    req_.method(http::verb::post);
    req_.target(p.target_);
    req_.version(11);
    req_.set(http::field::host, p.host_ + ":" + p.port_);
    req_.set(http::field::user_agent, "parleyd-push/1");
    req_.set(http::field::content_type, "application/json");
    req_.set(http::field::connection, "close");
    req_.set(kSignatureHeader, SignBody(p.config_.secret, body));
    req_.set(kPushIdHeader, push_id);
    req_.body() = std::move(body);
    req_.prepare_payload();
  }

  void Start() {
    stream_.expires_after(std::chrono::milliseconds(provider_.config_.timeout_ms));
    // The resolver has no deadline of its own: the stream's timer covers
    // connect, write and read; a numeric host resolves at once.
    resolver_.async_resolve(provider_.host_, provider_.port_,
                            [self = shared_from_this()](beast::error_code ec, tcp::resolver::results_type r) {
                              if (ec) return self->Finish({store::PushOutcome::kRetry, "resolve"});
                              self->stream_.async_connect(r, [self](beast::error_code ec2, const tcp::endpoint&) {
                                if (ec2) return self->Finish(
                                    {store::PushOutcome::kRetry, ec2 == beast::error::timeout ? "timeout" : "connect"});
                                self->Write();
                              });
                            });
  }

 private:
  void Write() {
    http::async_write(stream_, req_, [self = shared_from_this()](beast::error_code ec, size_t) {
      if (ec) return self->Finish({store::PushOutcome::kRetry, ec == beast::error::timeout ? "timeout" : "write"});
      http::async_read(self->stream_, self->buffer_, self->res_, [self](beast::error_code ec2, size_t) {
        if (ec2) return self->Finish({store::PushOutcome::kRetry, ec2 == beast::error::timeout ? "timeout" : "read"});
        unsigned code = self->res_.result_int();
        store::PushOutcome o;
        if (code >= 200 && code < 300) o = store::PushOutcome::kDelivered;
        else if (code == 410) o = store::PushOutcome::kGone;
        else if (code == 408 || code == 429 || code >= 500) o = store::PushOutcome::kRetry;
        else o = store::PushOutcome::kRejected;
        self->Finish({o, std::to_string(code)});
      });
    });
  }

  void Finish(SendResult r) {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.close();
    auto done = std::move(done_);
    done(std::move(r));
  }

  tcp::resolver resolver_;
  beast::tcp_stream stream_;
  const WebhookProvider& provider_;
  std::function<void(SendResult)> done_;
  http::request<http::string_body> req_;
  http::response<http::string_body> res_;
  beast::flat_buffer buffer_;
};

void WebhookProvider::Send(const store::PushJob& job, std::function<void(SendResult)> done) {
  int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                    std::chrono::system_clock::now().time_since_epoch())
                    .count();
  auto r = std::make_shared<Request>(io_, *this, PushPayload(job, now), PushId(job), std::move(done));
  r->Start();
}

}  // namespace parley::push
