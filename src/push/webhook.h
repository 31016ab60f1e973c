// WebhookProvider: an HTTP POST of a JSON payload per push, signed with
// HMAC-SHA256 over the body (docs/protocol.md "Push notifications: the
// webhook"). What a deployment points at its own APNs/FCM relay.
//
// Classification of one attempt: 2xx delivered; 410 gone (the endpoint is
// removed); 408 and 429 retry; any other 4xx rejected (no retry); 5xx,
// timeouts, connection and TLS failures retry (a relay's certificate may be
// being renewed; the device's push health shows "tls" meanwhile). http:// or
// https:// URLs; https verifies the relay's certificate (the system's trust
// store, or a configured CA file) and its name.
//
// Thread-safety: Send from any one thread; requests run on `io`, and `done`
// runs there. At most the dispatcher's in-flight limit of requests exist at
// once (the provider itself queues nothing).
#pragma once

#include <boost/asio/io_context.hpp>

#include <cstdint>
#include <memory>
#include <string>

#include "common/status.h"
#include "net/http_client.h"
#include "push/provider.h"

namespace parley::push {

struct WebhookConfig {
  std::string url;     // http(s)://host[:port]/path
  std::string secret;  // the HMAC-SHA256 key (REQUIRED: not empty)
  int timeout_ms = 5'000;  // one attempt, connect to response
  std::string ca_file;     // https: CA bundle (PEM); empty: the system's trust store
};

// The header carrying the signature: "sha256=" + lower-case hex of
// HMAC-SHA256(secret, body).
inline constexpr const char* kSignatureHeader = "X-Parley-Signature";
// The header carrying the push id (also in the body), for deduplication.
inline constexpr const char* kPushIdHeader = "X-Parley-Push-Id";

// The JSON body for `job` (docs/protocol.md); `sent_at` in ms since the epoch.
std::string PushPayload(const store::PushJob& job, int64_t sent_at);
// The push id: "<device>-<conversation>-<seq>-<kind>".
std::string PushId(const store::PushJob& job);
// "sha256=<hex>" of HMAC-SHA256(secret, body).
std::string SignBody(const std::string& secret, const std::string& body);
// The outcome of one attempt's HTTP exchange (the classification above).
SendResult Classify(const netutil::HttpResponse& response);

class WebhookProvider final : public PushProvider {
 public:
  // Fails kBadRequest on a URL that is not http(s)://host[:port][/path], an
  // empty secret or a CA file that cannot be loaded.
  static Result<std::unique_ptr<WebhookProvider>> Create(boost::asio::io_context& io, WebhookConfig config);

  void Send(const store::PushJob& job, std::function<void(SendResult)> done) override;

 private:
  WebhookProvider(boost::asio::io_context& io, WebhookConfig config, netutil::HttpEndpoint endpoint,
                  std::string target, std::shared_ptr<const netutil::HttpsTrust> trust);

  boost::asio::io_context& io_;
  const WebhookConfig config_;
  const netutil::HttpEndpoint endpoint_;
  const std::string target_;
  const std::shared_ptr<const netutil::HttpsTrust> trust_;  // https only
};

}  // namespace parley::push
