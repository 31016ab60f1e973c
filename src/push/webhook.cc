// WebhookProvider: one asynchronous exchange of src/net's HTTP client per
// attempt, under one deadline (the attempt's timeout). A new connection per
// attempt: pushes are rare per device, and a relay that dies mid-keep-alive
// would otherwise cost a failed attempt.
#include "push/webhook.h"

#include <sodium.h>
#include <fmt/format.h>

#include <chrono>

#include "protocol/json_writer.h"

namespace parley::push {

namespace asio = boost::asio;

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
  std::string error, target;
  auto endpoint = netutil::ParseHttpUrl(config.url, &error, &target, /*allow_https=*/true);
  if (!endpoint) return Status(ErrorCode::kBadRequest, "push webhook URL: " + error);
  if (config.secret.empty()) return Status(ErrorCode::kBadRequest, "push webhook secret must not be empty");
  if (config.timeout_ms <= 0) return Status(ErrorCode::kBadRequest, "push webhook timeout must be positive");
  std::shared_ptr<const netutil::HttpsTrust> trust;
  if (endpoint->tls) {
    trust = netutil::HttpsTrust::Create(config.ca_file, &error);
    if (!trust) return Status(ErrorCode::kBadRequest, "push webhook: " + error);
  } else if (!config.ca_file.empty()) {
    return Status(ErrorCode::kBadRequest, "push webhook: a CA file needs an https:// URL");
  }
  return std::unique_ptr<WebhookProvider>(
      new WebhookProvider(io, std::move(config), std::move(*endpoint), std::move(target), std::move(trust)));
}

WebhookProvider::WebhookProvider(asio::io_context& io, WebhookConfig config, netutil::HttpEndpoint endpoint,
                                 std::string target, std::shared_ptr<const netutil::HttpsTrust> trust)
    : io_(io),
      config_(std::move(config)),
      endpoint_(std::move(endpoint)),
      target_(std::move(target)),
      trust_(std::move(trust)) {}

SendResult Classify(const netutil::HttpResponse& r) {
  switch (r.failure) {
    case netutil::HttpFailure::kNone: break;
    case netutil::HttpFailure::kResolve: return {store::PushOutcome::kRetry, "resolve"};
    case netutil::HttpFailure::kConnect: return {store::PushOutcome::kRetry, r.timed_out ? "timeout" : "connect"};
    case netutil::HttpFailure::kTls: return {store::PushOutcome::kRetry, r.timed_out ? "timeout" : "tls"};
    case netutil::HttpFailure::kWrite: return {store::PushOutcome::kRetry, r.timed_out ? "timeout" : "write"};
    case netutil::HttpFailure::kRead: return {store::PushOutcome::kRetry, r.timed_out ? "timeout" : "read"};
  }
  int code = r.status;
  store::PushOutcome o;
  if (code >= 200 && code < 300) o = store::PushOutcome::kDelivered;
  else if (code == 410) o = store::PushOutcome::kGone;
  else if (code == 408 || code == 429 || code >= 500) o = store::PushOutcome::kRetry;
  else o = store::PushOutcome::kRejected;
  return {o, std::to_string(code)};
}

void WebhookProvider::Send(const store::PushJob& job, std::function<void(SendResult)> done) {
  int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                    std::chrono::system_clock::now().time_since_epoch())
                    .count();
  netutil::HttpRequest req;
  req.method = "POST";
  req.target = target_;
  req.body = PushPayload(job, now);
  req.headers = {{"User-Agent", "parleyd-push/1"},
                 {kSignatureHeader, SignBody(config_.secret, req.body)},
                 {kPushIdHeader, PushId(job)}};
  req.timeout = std::chrono::milliseconds(config_.timeout_ms);
  req.trust = trust_;
  netutil::AsyncHttpExchange(io_, endpoint_, req,
                             [done = std::move(done)](netutil::HttpResponse r) { done(Classify(r)); });
}

}  // namespace parley::push
