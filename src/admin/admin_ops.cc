// Admin API, operations endpoints (issue 8): users (create, disable, enable,
// delete = disable and revoke every device), devices, the message timeline,
// store statistics, schema status and the online backup. `parley-admin` is
// their client. Like the rest of the admin API, requests and answers are
// JSON and errors answer {"code", "message"} with the protocol's codes.
//
// Deleting a user is "disable and revoke": the account can no longer log in,
// its tokens are gone, its connections are closed; its messages stay in
// conversations. Erasing it (admin_erase.cc) also removes its data.
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <ctime>
#include <filesystem>
#include <memory>

#include "admin/admin_api.h"
#include "admin/admin_http.h"
#include "core/accounts.h"
#include "protocol/frames.h"
#include "protocol/limits.h"

namespace parley::admin {

using nlohmann::json;

namespace {

// Longest backup file name the backup endpoint accepts.
constexpr size_t kMaxBackupNameBytes = 128;

gateway::HttpResponse MethodNotAllowed(const char* allowed) {
  return JsonResponse(405, json{{"code", "bad_request"}, {"message", std::string("use ") + allowed}});
}

std::vector<std::string> Split(const std::string& path) {
  std::vector<std::string> parts;
  size_t i = 0;
  while (i < path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string::npos) j = path.size();
    if (j > i) parts.push_back(path.substr(i, j - i));
    i = j + 1;
  }
  return parts;
}

// A positive decimal id, or 0.
int64_t ParseId(const std::string& s) {
  if (s.empty() || s.size() > 18) return 0;
  int64_t v = 0;
  for (char ch : s) {
    if (ch < '0' || ch > '9') return 0;
    v = v * 10 + (ch - '0');
  }
  return v;
}

// Backup file names: [A-Za-z0-9._-], not starting with '.', so a name can
// never leave the backup directory.
bool IsSafeFileName(const std::string& name) {
  if (name.empty() || name.size() > kMaxBackupNameBytes || name[0] == '.') return false;
  for (char ch : name) {
    bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '.' ||
              ch == '_' || ch == '-';
    if (!ok) return false;
  }
  return true;
}

json DeviceJson(const store::DeviceRecord& d) {
  return json{{"device_id", d.id},       {"name", d.name},           {"platform", d.platform},
              {"created_at", d.created_at}, {"last_seen_at", d.last_seen_at}, {"cursor", d.cursor}};
}

json At(int64_t v) { return v == 0 ? json(nullptr) : json(v); }

}  // namespace

bool AdminApi::OpsRoute(const gateway::HttpRequest& req, const std::string& path, Respond& respond) {
  std::vector<std::string> p = Split(path);
  if (p.size() < 3 || p[0] != "admin" || p[1] != "v1") return false;
  const std::string& m = req.method;
  // /admin/v1/users
  if (p.size() == 3 && p[2] == "users") {
    if (m != "POST") respond(MethodNotAllowed("POST"));
    else OpsCreateUser(req.body, std::move(respond));
    return true;
  }
  if (p[2] == "users" && p.size() >= 4 && p[3] != "bulk") {
    const std::string& user = p[3];
    if (p.size() == 4) {
      if (m == "GET") OpsGetUser(user, std::move(respond));
      else if (m == "DELETE") OpsSetDisabled(user, true, true, std::move(respond));
      else respond(MethodNotAllowed("GET or DELETE"));
      return true;
    }
    if (p.size() == 5 && (p[4] == "disable" || p[4] == "enable")) {
      if (m != "POST") respond(MethodNotAllowed("POST"));
      else OpsSetDisabled(user, p[4] == "disable", false, std::move(respond));
      return true;
    }
    if (p.size() == 5 && p[4] == "erase") {
      if (m != "POST") respond(MethodNotAllowed("POST"));
      else OpsEraseUser(user, std::move(respond));
      return true;
    }
    if (p.size() == 5 && p[4] == "export") {
      if (m != "GET") respond(MethodNotAllowed("GET"));
      else OpsExportUser(user, std::move(respond));
      return true;
    }
    if (p.size() == 7 && p[4] == "export" && p[5] == "conversations") {
      int64_t id = ParseId(p[6]);
      auto q = req.target.find('?');
      if (m != "GET") respond(MethodNotAllowed("GET"));
      else if (id == 0) respond(ErrorResponse(Status(ErrorCode::kBadRequest, "the conversation id must be a positive integer")));
      else OpsExportConversation(user, id, q == std::string::npos ? "" : req.target.substr(q + 1), std::move(respond));
      return true;
    }
    if (p.size() == 5 && p[4] == "devices") {
      if (m != "GET") respond(MethodNotAllowed("GET"));
      else OpsListDevices(user, std::move(respond));
      return true;
    }
    if (p.size() == 6 && p[4] == "devices") {
      int64_t id = ParseId(p[5]);
      if (m != "DELETE") respond(MethodNotAllowed("DELETE"));
      else if (id == 0) respond(ErrorResponse(Status(ErrorCode::kBadRequest, "the device id must be a positive integer")));
      else OpsRevokeDevice(user, id, std::move(respond));
      return true;
    }
    return false;
  }
  // /admin/v1/messages/{conversation}/{seq}/timeline
  if (p[2] == "messages" && p.size() == 6 && p[5] == "timeline") {
    int64_t conv = ParseId(p[3]), seq = ParseId(p[4]);
    if (m != "GET") respond(MethodNotAllowed("GET"));
    else if (conv == 0 || seq == 0)
      respond(ErrorResponse(Status(ErrorCode::kBadRequest, "conversation and seq must be positive integers")));
    else OpsTimeline(conv, seq, std::move(respond));
    return true;
  }
  if (p[2] == "store" && p.size() == 4) {
    if (p[3] == "stats") {
      if (m != "GET") respond(MethodNotAllowed("GET"));
      else OpsStats(std::move(respond));
      return true;
    }
    if (p[3] == "schema") {
      if (m != "GET") respond(MethodNotAllowed("GET"));
      else OpsSchema(std::move(respond));
      return true;
    }
    if (p[3] == "backup") {
      if (m != "POST") respond(MethodNotAllowed("POST"));
      else OpsBackup(req.body, std::move(respond));
      return true;
    }
  }
  return false;
}

// {"username": "alice", "password": "...", "display_name": "Alice"} -> {"user_id": 7, "username": "alice"}
void AdminApi::OpsCreateUser(const std::string& body, Respond respond) {
  json in = json::parse(body, nullptr, false);
  if (in.is_discarded() || !in.is_object() || !in.contains("username") || !in["username"].is_string() ||
      !in.contains("password") || !in["password"].is_string())
    return respond(ErrorResponse(Status(ErrorCode::kBadJson, "body must be {\"username\": \"...\", \"password\": \"...\"}")));
  auto canon = protocol::CanonicalUsername(in["username"].get<std::string>());
  if (!canon) return respond(ErrorResponse(canon.error()));
  std::string password = in["password"].get<std::string>();
  if (password.size() < protocol::kMinPasswordBytes || password.size() > protocol::kMaxPasswordBytes ||
      !protocol::IsValidUtf8(password))
    return respond(ErrorResponse(Status(ErrorCode::kInvalidPassword,
                                "the password must be " + std::to_string(protocol::kMinPasswordBytes) + " to " +
                                    std::to_string(protocol::kMaxPasswordBytes) + " bytes of UTF-8")));
  std::string display_name;
  if (Status st = OptionalField(in, "display_name", &display_name); !st.ok()) return respond(ErrorResponse(st));
  if (display_name.size() > protocol::kMaxDisplayNameBytes || !protocol::IsValidUtf8(display_name) ||
      !protocol::IsPrintable(display_name))
    return respond(ErrorResponse(Status(ErrorCode::kBadRequest, "bad display_name")));
  store::NewBulkUser u;
  u.username = std::move(*canon);
  u.display_name = std::move(display_name);
  pool_.Submit([this, u = std::move(u), password = std::move(password), respond = std::move(respond)]() mutable {
    auto hash = core::HashPassword(password, config_.password_cost);
    if (!hash) return respond(ErrorResponse(hash.error()));
    u.password_hash = std::move(*hash);
    std::string username = u.username;
    store_.BulkCreateUsers({std::move(u)}, clock_.NowMillis(),
                           [username, respond](Result<std::vector<store::BulkUserResult>> r) {
                             if (!r) return respond(ErrorResponse(r.error()));
                             spdlog::info("event=admin_user_created user_id={}", r->at(0).user_id);
                             respond(JsonResponse(200, json{{"user_id", r->at(0).user_id}, {"username", username}}));
                           });
  });
}

void AdminApi::OpsGetUser(const std::string& username, Respond respond) {
  store_.GetUserByName(username, [this, respond](Result<store::UserRecord> u) {
    if (!u) return respond(ErrorResponse(u.error()));
    store_.ListDevices(u->id, [u = *u, respond](Result<std::vector<store::DeviceRecord>> d) {
      if (!d) return respond(ErrorResponse(d.error()));
      respond(JsonResponse(200, json{{"user_id", u.id},
                             {"username", u.username},
                             {"display_name", u.display_name},
                             {"created_at", u.created_at},
                             {"last_seen", At(u.last_seen)},
                             {"disabled", u.disabled},
                             {"devices", d->size()}}));
    });
  });
}

// Disable / enable, or delete (disable + revoke every device). Disabling
// closes the user's live connections; their devices' next auth gets
// user_disabled.
void AdminApi::OpsSetDisabled(const std::string& username, bool disabled, bool revoke, Respond respond) {
  store_.GetUserByName(username, [this, disabled, revoke, respond](Result<store::UserRecord> u) {
    if (!u) return respond(ErrorResponse(u.error()));
    int64_t user_id = u->id;
    std::string name = u->username;
    store_.ListDevices(user_id, [this, user_id, name, disabled, revoke,
                                 respond](Result<std::vector<store::DeviceRecord>> devices) {
      if (!devices) return respond(ErrorResponse(devices.error()));
      std::vector<int64_t> live;
      for (const auto& d : *devices) live.push_back(d.id);
      store_.SetUserDisabled(user_id, disabled, revoke, [this, user_id, name, disabled, revoke, live,
                                                         respond](Result<store::DisableResult> r) {
        if (!r) return respond(ErrorResponse(r.error()));
        if (disabled && close_devices_) {
          std::vector<int64_t> close = revoke ? r->revoked : live;
          close_devices_(user_id, std::move(close), revoke ? "account deleted" : "account disabled", !revoke);
        }
        spdlog::info("event=admin_user_{} user_id={} revoked_devices={}",
                     revoke ? "deleted" : (disabled ? "disabled" : "enabled"), user_id, r->revoked.size());
        respond(JsonResponse(200, json{{"user_id", user_id},
                               {"username", name},
                               {"disabled", disabled},
                               {"changed", r->changed},
                               {"revoked_devices", r->revoked}}));
      });
    });
  });
}

void AdminApi::OpsListDevices(const std::string& username, Respond respond) {
  store_.GetUserByName(username, [this, respond](Result<store::UserRecord> u) {
    if (!u) return respond(ErrorResponse(u.error()));
    store_.ListDevices(u->id, [user_id = u->id, respond](Result<std::vector<store::DeviceRecord>> d) {
      if (!d) return respond(ErrorResponse(d.error()));
      json out = json::array();
      for (const auto& dev : *d) out.push_back(DeviceJson(dev));
      respond(JsonResponse(200, json{{"user_id", user_id}, {"devices", std::move(out)}}));
    });
  });
}

void AdminApi::OpsRevokeDevice(const std::string& username, int64_t device_id, Respond respond) {
  store_.GetUserByName(username, [this, device_id, respond](Result<store::UserRecord> u) {
    if (!u) return respond(ErrorResponse(u.error()));
    int64_t user_id = u->id;
    store_.RevokeDevice(user_id, device_id, [this, user_id, device_id, respond](Status s) {
      if (!s.ok()) return respond(ErrorResponse(s));
      if (close_devices_) close_devices_(user_id, {device_id}, "device revoked by the operator", false);
      spdlog::info("event=admin_device_revoked user_id={} device_id={}", user_id, device_id);
      respond(JsonResponse(200, json{{"user_id", user_id}, {"device_id", device_id}, {"revoked", true}}));
    });
  });
}

// The full timeline, with device names; never the message body.
void AdminApi::OpsTimeline(int64_t conversation_id, int64_t seq, Respond respond) {
  store_.GetMessageTimeline(conversation_id, seq, [respond](Result<store::MessageTimeline> t) {
    if (!t) return respond(ErrorResponse(t.error()));
    json members = json::array();
    for (const auto& m : t->members) {
      json devices = json::array();
      for (const auto& d : m.devices) {
        devices.push_back(json{{"device_id", d.device_id},
                               {"name", d.name},
                               {"platform", d.platform},
                               {"sending_device", d.sending_device},
                               {"delivered_at", At(d.delivered_at)},
                               {"read_at", At(d.read_at)}});
      }
      members.push_back(json{{"user_id", m.user_id},
                             {"username", m.username},
                             {"withheld", m.withheld},
                             {"devices", std::move(devices)}});
    }
    respond(JsonResponse(200, json{{"conversation_id", t->message.conversation_id},
                           {"seq", t->message.seq},
                           {"sender_id", t->message.sender_id},
                           {"sender_device_id", t->message.sender_device_id},
                           {"client_id", t->message.client_id},
                           {"accepted_at", t->accepted_at},
                           {"stored_at", t->stored_at},
                           {"members", std::move(members)}}));
  });
}

void AdminApi::OpsStats(Respond respond) {
  store_.GetStoreSummary([this, respond](Result<store::StoreSummary> s) {
    if (!s) return respond(ErrorResponse(s.error()));
    store::StoreStats counters = store_.Stats();
    respond(JsonResponse(200, json{{"backend", s->backend},
                           {"users", s->users},
                           {"disabled_users", s->disabled_users},
                           {"live_devices", s->live_devices},
                           {"conversations", s->conversations},
                           {"messages", s->messages},
                           {"stream_events", s->stream_events},
                           {"bytes", s->bytes},
                           {"commits_since_start", counters.commits}}));
  });
}

void AdminApi::OpsSchema(Respond respond) {
  store_.GetSchemaStatus([respond](Result<store::SchemaStatus> s) {
    if (!s) return respond(ErrorResponse(s.error()));
    respond(JsonResponse(200, json{{"backend", s->backend},
                           {"current", s->current},
                           {"latest", s->latest},
                           {"pending", s->pending}}));
  });
}

// {"name": "nightly.db"} (optional; default parley-YYYYMMDD-HHMMSS.db) ->
// {"path": "/var/lib/parley/backups/nightly.db", "bytes": ..., "pages": ..., "took_ms": ...}
void AdminApi::OpsBackup(const std::string& body, Respond respond) {
  std::string name;
  if (!body.empty()) {
    json in = json::parse(body, nullptr, false);
    if (in.is_discarded() || !in.is_object())
      return respond(ErrorResponse(Status(ErrorCode::kBadJson, "body must be a JSON object (or empty)")));
    if (in.contains("name")) {
      if (!in["name"].is_string()) return respond(ErrorResponse(Status(ErrorCode::kBadRequest, "'name' must be a string")));
      name = in["name"].get<std::string>();
    }
  }
  if (name.empty()) {
    std::time_t secs = static_cast<std::time_t>(clock_.NowMillis() / 1000);
    std::tm tm{};
    gmtime_r(&secs, &tm);
    char buf[64];
    std::strftime(buf, sizeof buf, "parley-%Y%m%d-%H%M%S.db", &tm);
    name = buf;
  }
  if (!IsSafeFileName(name))
    return respond(ErrorResponse(Status(ErrorCode::kBadRequest, "the backup name must be 1 to " +
                                                           std::to_string(kMaxBackupNameBytes) +
                                                           " of [A-Za-z0-9._-], not starting with '.'")));
  if (config_.backup_dir.empty())
    return respond(ErrorResponse(Status(ErrorCode::kBadRequest, "no backup directory is configured (--backup-dir)")));
  std::error_code ec;
  std::filesystem::create_directories(config_.backup_dir, ec);
  if (ec)
    return respond(ErrorResponse(Status(ErrorCode::kInternal,
                                "cannot create the backup directory " + config_.backup_dir + ": " + ec.message())));
  std::string path = (std::filesystem::path(config_.backup_dir) / name).string();
  store_.Backup(path, [respond](Result<store::BackupResult> r) {
    if (!r) return respond(ErrorResponse(r.error()));
    spdlog::info("event=admin_backup path=\"{}\" bytes={} took_ms={}", r->path, r->bytes, r->took_ms);
    respond(JsonResponse(200, json{{"path", r->path}, {"bytes", r->bytes}, {"pages", r->pages}, {"took_ms", r->took_ms}}));
  });
}

}  // namespace parley::admin
