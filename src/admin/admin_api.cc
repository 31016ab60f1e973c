// Admin API. Requests and answers are JSON (nlohmann: this is not the hot
// path). Errors answer {"code": "...", "message": "..."} with the HTTP status
// that fits, using the same error codes as the protocol.
#include "admin/admin_api.h"

#include <nlohmann/json.hpp>
#include <sodium.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <map>
#include <memory>

#include "admin/admin_http.h"
#include "protocol/frames.h"
#include "protocol/limits.h"

namespace parley::admin {

using nlohmann::json;

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

std::map<std::string, std::string> ParseQuery(const std::string& query) {
  std::map<std::string, std::string> params;
  size_t pos = 0;
  while (pos <= query.size() && !query.empty()) {
    size_t amp = query.find('&', pos);
    std::string part = query.substr(pos, amp == std::string::npos ? std::string::npos : amp - pos);
    size_t eq = part.find('=');
    if (!part.empty()) params[part.substr(0, eq)] = eq == std::string::npos ? "" : part.substr(eq + 1);
    if (amp == std::string::npos) break;
    pos = amp + 1;
  }
  return params;
}

bool ParseInt(const std::string& text, int64_t* out, int64_t min, int64_t max) {
  if (text.empty() || text.size() > 20) return false;
  size_t i = text[0] == '-' ? 1 : 0;
  if (i == text.size()) return false;
  for (size_t k = i; k < text.size(); ++k) {
    if (text[k] < '0' || text[k] > '9') return false;
  }
  errno = 0;
  long long v = std::strtoll(text.c_str(), nullptr, 10);
  if (errno == ERANGE || v < min || v > max) return false;
  *out = v;
  return true;
}

namespace {

bool TokenMatches(const std::string& configured, const std::string& header) {
  static const std::string kBearer = "Bearer ";
  if (header.size() != kBearer.size() + configured.size() || header.rfind(kBearer, 0) != 0) return false;
  return sodium_memcmp(header.data() + kBearer.size(), configured.data(), configured.size()) == 0;
}

}  // namespace

bool AdminApi::Authorized(const std::string& authorization) const {
  return !config_.token.empty() && TokenMatches(config_.token, authorization);
}

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
  if (path == "/admin/v1/export") {
    if (req.method != "GET") return respond(JsonResponse(405, json{{"code", "bad_request"}, {"message", "use GET"}}));
    auto q = req.target.find('?');
    return Export(q == std::string::npos ? "" : req.target.substr(q + 1), std::move(respond));
  }
  respond(JsonResponse(404, json{{"code", "bad_request"}, {"message", "no such admin endpoint"}}));
}

// GET /admin/v1/export?table=messages&after=3,41&limit=1000
// -> {"table":"messages","columns":[...],"rows":[[3,42,1,7,"c-1"],...],"has_more":true,"next":"3,42"}
// `after` is the previous page's `next` (the last row's key columns); absent:
// from the start. Rows are arrays in `columns` order.
void AdminApi::Export(const std::string& query, std::function<void(gateway::HttpResponse)> respond) {
  std::map<std::string, std::string> params = ParseQuery(query);
  auto bad = [&](const std::string& msg) { respond(ErrorResponse(Status(ErrorCode::kBadRequest, msg))); };
  auto table = store::ExportTableFromName(params["table"]);
  if (!table) return bad("table must be one of devices, members, messages, withheld, stream, heads, receipts, blocks");
  auto parse_int = [](const std::string& text, int64_t* out) { return ParseInt(text, out, INT64_MIN, INT64_MAX); };
  int64_t limit = config_.default_export_rows;
  if (params.count("limit") && (!parse_int(params["limit"], &limit) || limit < 1 || limit > config_.max_export_rows))
    return bad("limit must be 1-" + std::to_string(config_.max_export_rows));
  std::vector<int64_t> after;
  if (params.count("after") && !params["after"].empty()) {
    std::string a = params["after"];
    // Accept a URL-encoded comma too.
    for (size_t p; (p = a.find("%2C")) != std::string::npos || (p = a.find("%2c")) != std::string::npos;) a.replace(p, 3, ",");
    size_t start = 0;
    while (true) {
      size_t comma = a.find(',', start);
      int64_t v = 0;
      if (!parse_int(a.substr(start, comma == std::string::npos ? std::string::npos : comma - start), &v))
        return bad("after must be integers separated by commas");
      after.push_back(v);
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
    if (static_cast<int>(after.size()) != store::ExportKeyColumns(*table))
      return bad("after for " + std::string(store::ExportTableName(*table)) + " needs " +
                 std::to_string(store::ExportKeyColumns(*table)) + " values");
  }
  store::ExportTable t = *table;
  store_.Export(t, std::move(after), static_cast<int>(limit), [t, respond](Result<store::ExportPage> r) {
    if (!r) return respond(ErrorResponse(r.error()));
    json rows = json::array();
    for (const auto& row : r->rows) {
      json a = json::array();
      for (int64_t v : row.values) a.push_back(v);
      if (t == store::ExportTable::kMessages) a.push_back(row.text);
      rows.push_back(std::move(a));
    }
    json out{{"table", store::ExportTableName(t)}, {"columns", store::ExportColumns(t)}, {"rows", std::move(rows)},
             {"has_more", r->has_more}};
    if (!r->rows.empty()) {
      std::string next;
      const auto& last = r->rows.back().values;
      for (int i = 0; i < store::ExportKeyColumns(t); ++i) {
        if (i) next += ",";
        next += std::to_string(last[static_cast<size_t>(i)]);
      }
      out["next"] = next;
    }
    respond(JsonResponse(200, out));
  });
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
  bool devices = false;
  std::string device_name = "bulk";
  for (Status st : {OptionalField(in, "devices", &devices), OptionalField(in, "device_name", &device_name)})
    if (!st.ok()) return respond(ErrorResponse(st));
  if (device_name.size() > protocol::kMaxDeviceNameBytes || !protocol::IsValidUtf8(device_name) ||
      !protocol::IsPrintable(device_name))
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
    std::string password, display_name;
    for (Status st : {OptionalField(u, "password", &password), OptionalField(u, "display_name", &display_name)})
      if (!st.ok()) return respond(ErrorResponse(Status(st.code(), st.message() + " (user " + *canon + ")")));
    if (!password.empty() && (password.size() < protocol::kMinPasswordBytes ||
                              password.size() > protocol::kMaxPasswordBytes || !protocol::IsValidUtf8(password)))
      return respond(ErrorResponse(Status(ErrorCode::kInvalidPassword, "bad password for " + *canon)));
    if (display_name.size() > protocol::kMaxDisplayNameBytes || !protocol::IsValidUtf8(display_name) ||
        !protocol::IsPrintable(display_name))
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
