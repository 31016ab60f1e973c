// Admin API. Requests and answers are JSON (nlohmann: this is not the hot
// path). Errors answer {"code": "...", "message": "..."} with the HTTP status
// that fits, using the same error codes as the protocol.
#include "admin/admin_api.h"

#include <nlohmann/json.hpp>
#include <sodium.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <memory>

#include "protocol/frames.h"
#include "protocol/limits.h"

namespace parley::admin {

using nlohmann::json;

namespace {

gateway::HttpResponse JsonResponse(int status, const json& body) {
  gateway::HttpResponse r;
  r.status = status;
  r.content_type = "application/json";
  r.body = body.dump() + "\n";
  return r;
}

gateway::HttpResponse ErrorResponse(const Status& s) {
  int status = 400;
  switch (s.code()) {
    case ErrorCode::kForbidden: status = 401; break;
    case ErrorCode::kUsernameTaken: status = 409; break;
    case ErrorCode::kUnknownUser:
    case ErrorCode::kUnknownDevice:
    case ErrorCode::kUnknownConversation:
    case ErrorCode::kUnknownMessage: status = 404; break;
    case ErrorCode::kStorageFull:
    case ErrorCode::kUnavailable:
    case ErrorCode::kShuttingDown: status = 503; break;
    case ErrorCode::kInternal: status = 500; break;
    default: break;
  }
  return JsonResponse(status, json{{"code", ErrorCodeName(s.code())}, {"message", s.message()}});
}

bool TokenMatches(const std::string& configured, const std::string& header) {
  static const std::string kBearer = "Bearer ";
  if (header.size() != kBearer.size() + configured.size() || header.rfind(kBearer, 0) != 0) return false;
  return sodium_memcmp(header.data() + kBearer.size(), configured.data(), configured.size()) == 0;
}

}  // namespace

AdminApi::AdminApi(store::Store& store, WorkerPool& pool, const Clock& clock, AdminConfig config)
    : store_(store), pool_(pool), clock_(clock), config_(std::move(config)) {}

void AdminApi::Handle(gateway::HttpRequest req, std::function<void(gateway::HttpResponse)> respond) {
  if (config_.token.empty()) return respond(gateway::HttpResponse{});  // disabled: 404
  if (!TokenMatches(config_.token, req.authorization))
    return respond(ErrorResponse(Status(ErrorCode::kForbidden, "missing or wrong admin token")));
  std::string path = req.target.substr(0, req.target.find('?'));
  if (OpsRoute(req, path, respond)) return;
  if (path == "/admin/v1/users/bulk") {
    if (req.method != "POST") return respond(JsonResponse(405, json{{"code", "bad_request"}, {"message", "use POST"}}));
    return BulkCreateUsers(req.body, std::move(respond));
  }
  respond(JsonResponse(404, json{{"code", "bad_request"}, {"message", "no such admin endpoint"}}));
}

// {"users":[{"username":"u1","password":"...","display_name":"..."}, ...], "devices": true, "device_name": "bench"}
// -> {"users":[{"username":"u1","user_id":1,"device_id":2,"token":"..."}, ...]}
// A user given no password gets none (it cannot log in; its device token works).
void AdminApi::BulkCreateUsers(const std::string& body, std::function<void(gateway::HttpResponse)> respond) {
  json in = json::parse(body, nullptr, false);
  if (in.is_discarded() || !in.is_object() || !in.contains("users") || !in["users"].is_array())
    return respond(ErrorResponse(Status(ErrorCode::kBadJson, "body must be {\"users\": [...]}")));
  const json& users = in["users"];
  if (users.empty() || users.size() > config_.max_bulk_users)
    return respond(ErrorResponse(Status(ErrorCode::kBadRequest, "give 1 to " + std::to_string(config_.max_bulk_users) +
                                                                    " users per request")));
  bool devices = in.value("devices", false);
  std::string device_name = in.value("device_name", std::string("bulk"));
  if (device_name.size() > protocol::kMaxDeviceNameBytes || !protocol::IsValidUtf8(device_name))
    return respond(ErrorResponse(Status(ErrorCode::kBadRequest, "bad device_name")));

  struct Job {
    std::vector<store::NewBulkUser> users;
    std::vector<std::string> passwords;
    std::vector<std::string> tokens;
    std::atomic<size_t> left{0};
    std::atomic<bool> failed{false};
  };
  auto job = std::make_shared<Job>();
  for (const auto& u : users) {
    if (!u.is_object() || !u.contains("username") || !u["username"].is_string())
      return respond(ErrorResponse(Status(ErrorCode::kBadRequest, "each user needs a string 'username'")));
    auto canon = protocol::CanonicalUsername(u["username"].get<std::string>());
    if (!canon) return respond(ErrorResponse(canon.error()));
    std::string password = u.value("password", std::string());
    if (!password.empty() && (password.size() < protocol::kMinPasswordBytes ||
                              password.size() > protocol::kMaxPasswordBytes || !protocol::IsValidUtf8(password)))
      return respond(ErrorResponse(Status(ErrorCode::kInvalidPassword, "bad password for " + *canon)));
    std::string display_name = u.value("display_name", std::string());
    if (display_name.size() > protocol::kMaxDisplayNameBytes || !protocol::IsValidUtf8(display_name))
      return respond(ErrorResponse(Status(ErrorCode::kBadRequest, "bad display_name for " + *canon)));
    store::NewBulkUser nu;
    nu.username = std::move(*canon);
    nu.display_name = std::move(display_name);
    nu.device_name = device_name;
    std::string token = devices ? core::NewDeviceToken() : std::string();
    if (devices) nu.token_hash = core::HashToken(token);
    job->users.push_back(std::move(nu));
    job->passwords.push_back(std::move(password));
    job->tokens.push_back(std::move(token));
  }

  // Hash the passwords in chunks on the pool (never on an I/O thread), then
  // create everything in one store transaction.
  constexpr size_t kChunk = 256;
  size_t chunks = (job->users.size() + kChunk - 1) / kChunk;
  job->left = chunks;
  auto finish = [this, job, respond]() {
    if (job->failed) return respond(ErrorResponse(Status(ErrorCode::kInternal, "password hashing failed")));
    store_.BulkCreateUsers(job->users, clock_.NowMillis(),
                           [job, respond](Result<std::vector<store::BulkUserResult>> r) {
                             if (!r) return respond(ErrorResponse(r.error()));
                             json out = json::array();
                             for (size_t i = 0; i < r->size(); ++i) {
                               json u{{"username", job->users[i].username}, {"user_id", (*r)[i].user_id}};
                               if (!job->tokens[i].empty()) {
                                 u["device_id"] = (*r)[i].device_id;
                                 u["token"] = job->tokens[i];
                               }
                               out.push_back(std::move(u));
                             }
                             spdlog::info("event=admin_bulk_users count={}", r->size());
                             respond(JsonResponse(200, json{{"users", std::move(out)}}));
                           });
  };
  for (size_t c = 0; c < chunks; ++c) {
    pool_.Submit([this, job, c, finish]() {
      size_t end = std::min(job->users.size(), (c + 1) * kChunk);
      for (size_t i = c * kChunk; i < end; ++i) {
        if (job->passwords[i].empty()) continue;
        auto h = core::HashPassword(job->passwords[i], config_.password_cost);
        if (!h) job->failed = true;
        else job->users[i].password_hash = std::move(*h);
      }
      if (--job->left == 0) finish();
    });
  }
}

}  // namespace parley::admin
