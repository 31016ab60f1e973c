// parley-admin: the operator's tool. Every command but `restore` is a call
// to parleyd's admin API (docs/operations.md, "Admin API"), so it works the
// same on the SQLite and the PostgreSQL store and never touches the store
// behind the server's back; `restore` is the one offline command (parleyd
// stopped): it checks a backup file and puts it in place as a data dir's
// store. See docs/operations.md, "parley-admin".
//
// Exit codes: 0 done; 1 the server refused (the error's code and message
// are printed); 2 usage error; 3 the server could not be reached; 4 restore
// failed (nothing was changed).
#include <CLI/CLI.hpp>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <nlohmann/json.hpp>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <string>

#include "store/sqlite/sqlite_backup.h"
#include "store/sqlite/sqlite_store.h"

namespace {

using nlohmann::json;

constexpr int kExitOk = 0;
constexpr int kExitRefused = 1;
constexpr int kExitUsage = 2;
constexpr int kExitUnreachable = 3;
constexpr int kExitRestoreFailed = 4;
// Seconds to wait for the server's answer (a backup of a large store takes a while).
constexpr int kReplyTimeoutS = 600;

struct Target {
  std::string host = "127.0.0.1";
  std::string port = "8080";
};

// http://HOST[:PORT][/]; false if it is not of that form.
bool ParseUrl(const std::string& url, Target* t, std::string* error) {
  const std::string kScheme = "http://";
  if (url.rfind(kScheme, 0) != 0) {
    *error = "--server must be http://HOST[:PORT] (run parley-admin next to parleyd or through your TLS proxy's "
             "plain-HTTP side)";
    return false;
  }
  std::string rest = url.substr(kScheme.size());
  if (!rest.empty() && rest.back() == '/') rest.pop_back();
  if (rest.empty() || rest.find('/') != std::string::npos) {
    *error = "--server must be http://HOST[:PORT] without a path";
    return false;
  }
  size_t colon = rest.rfind(':');
  if (colon != std::string::npos && rest.find(']') == std::string::npos) {
    t->host = rest.substr(0, colon);
    t->port = rest.substr(colon + 1);
  } else {
    t->host = rest;
    t->port = "80";
  }
  return !t->host.empty() && !t->port.empty();
}

struct Reply {
  int status = 0;
  std::string body;
};

// One HTTP/1.1 exchange (Connection: close). False when the server cannot
// be reached or answers nonsense.
bool Exchange(const Target& t, const std::string& method, const std::string& path, const std::string& token,
              const std::string& body, Reply* reply, std::string* error) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (int rc = getaddrinfo(t.host.c_str(), t.port.c_str(), &hints, &res); rc != 0) {
    *error = "cannot resolve " + t.host + ": " + gai_strerror(rc);
    return false;
  }
  int fd = -1;
  for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
    if (fd < 0) continue;
    if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) break;
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  if (fd < 0) {
    *error = "cannot connect to " + t.host + ":" + t.port + " (is parleyd running?)";
    return false;
  }
  timeval tv{kReplyTimeoutS, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  std::string req = method + " " + path + " HTTP/1.1\r\nHost: " + t.host + "\r\nConnection: close\r\n" +
                    "Authorization: Bearer " + token + "\r\n";
  if (!body.empty()) req += "Content-Type: application/json\r\n";
  req += "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
  for (size_t sent = 0; sent < req.size();) {
    ssize_t n = send(fd, req.data() + sent, req.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) {
      close(fd);
      *error = "connection lost while sending";
      return false;
    }
    sent += static_cast<size_t>(n);
  }
  std::string in;
  char buf[16384];
  for (;;) {
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n < 0) {
      close(fd);
      *error = "no answer from the server";
      return false;
    }
    if (n == 0) break;
    in.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  size_t head_end = in.find("\r\n\r\n");
  if (in.rfind("HTTP/1.", 0) != 0 || head_end == std::string::npos || in.size() < 12) {
    *error = "not an HTTP answer from " + t.host + ":" + t.port;
    return false;
  }
  reply->status = std::atoi(in.substr(9, 3).c_str());
  std::string head = in.substr(0, head_end);
  reply->body = in.substr(head_end + 4);
  // Chunked bodies (the server sends Content-Length, but be tolerant).
  std::string lower = head;
  for (char& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  if (lower.find("transfer-encoding: chunked") != std::string::npos) {
    std::string raw = std::move(reply->body), out;
    size_t i = 0;
    while (i < raw.size()) {
      size_t eol = raw.find("\r\n", i);
      if (eol == std::string::npos) break;
      size_t len = std::strtoul(raw.substr(i, eol - i).c_str(), nullptr, 16);
      if (len == 0) break;
      out += raw.substr(eol + 2, len);
      i = eol + 2 + len + 2;
    }
    reply->body = std::move(out);
  }
  return true;
}

class Admin {
 public:
  Admin(Target target, std::string token) : target_(std::move(target)), token_(std::move(token)) {}

  // Calls the admin API and prints the answer; returns the exit code.
  int Call(const std::string& method, const std::string& path, const json& body = nullptr) const {
    Reply r;
    std::string error;
    if (!Exchange(target_, method, path, token_, body.is_null() ? "" : body.dump(), &r, &error)) {
      std::cerr << "parley-admin: " << error << "\n";
      return kExitUnreachable;
    }
    json answer = json::parse(r.body, nullptr, false);
    if (r.status == 200 && !answer.is_discarded()) {
      std::cout << answer.dump(2) << "\n";
      return kExitOk;
    }
    if (r.status == 404 && (answer.is_discarded() || !answer.contains("code"))) {
      std::cerr << "parley-admin: the admin API is disabled on this server (start parleyd with --admin-token)\n";
      return kExitRefused;
    }
    if (!answer.is_discarded() && answer.contains("code")) {
      std::cerr << "parley-admin: " << answer.value("code", std::string()) << ": "
                << answer.value("message", std::string()) << " (HTTP " << r.status << ")\n";
    } else {
      std::cerr << "parley-admin: HTTP " << r.status << ": " << r.body << "\n";
    }
    return kExitRefused;
  }

 private:
  Target target_;
  std::string token_;
};

// Offline: checks `backup`, copies it into `data_dir` as parley.db (the old
// store, with its -wal and -shm, moved aside as parley.db.pre-restore-TIME*
// when --force allows replacing it).
int Restore(const std::string& backup, const std::string& data_dir, bool force) {
  namespace fs = std::filesystem;
  using parley::store::SqliteStore;
  namespace sq = parley::store::sqlite;
  auto fail = [](const std::string& what) {
    std::cerr << "parley-admin: restore: " << what << "\n";
    return kExitRestoreFailed;
  };
  auto checked = sq::CheckStoreFile(backup, SqliteStore::kSchemaVersion);
  if (!checked) return fail(checked.error().message());
  std::error_code ec;
  fs::create_directories(data_dir, ec);
  if (ec) return fail("cannot create " + data_dir + ": " + ec.message());
  const fs::path target = fs::path(data_dir) / "parley.db";
  const bool replacing = fs::exists(target, ec);
  if (replacing && !force)
    return fail(target.string() + " exists: stop parleyd, then pass --force to replace it (the old store is kept "
                                  "next to it as parley.db.pre-restore-TIME)");
  const fs::path tmp = fs::path(data_dir) / "parley.db.restore.tmp";
  fs::remove(tmp, ec);
  fs::copy_file(backup, tmp, ec);
  if (ec) return fail("cannot copy " + backup + " to " + tmp.string() + ": " + ec.message());
  {
    int fd = ::open(tmp.c_str(), O_RDONLY);
    bool synced = fd >= 0 && ::fsync(fd) == 0;
    if (fd >= 0) ::close(fd);
    if (!synced) return fail("cannot sync " + tmp.string());
  }
  auto copy = sq::CheckStoreFile(tmp.string(), SqliteStore::kSchemaVersion);
  if (!copy) {
    fs::remove(tmp, ec);
    return fail("the copy does not check out: " + copy.error().message());
  }
  std::string kept;
  if (replacing) {
    std::time_t now = std::time(nullptr);
    std::tm tm{};
    gmtime_r(&now, &tm);
    char stamp[32];
    std::strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", &tm);
    kept = target.string() + ".pre-restore-" + stamp;
    for (const char* suffix : {"", "-wal", "-shm"}) {
      fs::path from = target.string() + suffix;
      if (!fs::exists(from, ec)) continue;
      fs::rename(from, kept + suffix, ec);
      if (ec) return fail("cannot move " + from.string() + " aside: " + ec.message());
    }
  } else {
    for (const char* suffix : {"-wal", "-shm"}) fs::remove(target.string() + suffix, ec);
  }
  fs::rename(tmp, target, ec);
  if (ec) return fail("cannot rename " + tmp.string() + " to " + target.string() + ": " + ec.message());
  int dfd = ::open(data_dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  json out{{"restored", target.string()},
           {"from", backup},
           {"schema_version", copy->schema_version},
           {"users", copy->users},
           {"messages", copy->messages},
           {"bytes", copy->bytes}};
  if (!kept.empty()) out["previous_store_kept_as"] = kept;
  std::cout << out.dump(2) << "\n";
  return kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"parley-admin: administer a Parley server through its admin API"};
  app.require_subcommand(1);
  std::string server = "http://127.0.0.1:8080";
  std::string token;
  app.add_option("--server", server, "parleyd's address, http://HOST:PORT")->envname("PARLEY_ADMIN_URL")
      ->capture_default_str();
  app.add_option("--token", token, "the admin token (parleyd's --admin-token)")->envname("PARLEY_ADMIN_TOKEN");

  // user ...
  auto* user = app.add_subcommand("user", "create, show, disable, enable or delete a user");
  user->require_subcommand(1);
  std::string username, password, display_name;
  auto* user_create = user->add_subcommand("create", "create a user with a password");
  user_create->add_option("username", username, "the new username")->required();
  user_create->add_option("--password", password, "the password (or PARLEY_NEW_PASSWORD)")
      ->envname("PARLEY_NEW_PASSWORD")
      ->required();
  user_create->add_option("--display-name", display_name, "the display name");
  auto* user_show = user->add_subcommand("show", "a user and its state");
  auto* user_disable = user->add_subcommand("disable", "refuse the user's logins and close its connections");
  auto* user_enable = user->add_subcommand("enable", "undo disable");
  auto* user_delete =
      user->add_subcommand("delete", "disable the user and revoke every device (until history erase exists)");
  for (auto* sub : {user_show, user_disable, user_enable, user_delete})
    sub->add_option("username", username, "the user")->required();

  // device ...
  auto* device = app.add_subcommand("device", "list or revoke a user's devices");
  device->require_subcommand(1);
  int64_t device_id = 0;
  auto* device_list = device->add_subcommand("list", "the user's live devices");
  device_list->add_option("username", username, "the user")->required();
  auto* device_revoke = device->add_subcommand("revoke", "revoke a device: its token stops working, it is disconnected");
  device_revoke->add_option("username", username, "the device's user")->required();
  device_revoke->add_option("device_id", device_id, "the device id")->required()->check(CLI::PositiveNumber);

  // timeline, stats, schema, backup, restore
  int64_t conversation = 0, seq = 0;
  auto* timeline = app.add_subcommand("timeline", "a message's timeline: accepted, stored, per-device delivered/read");
  timeline->add_option("conversation", conversation, "conversation id")->required()->check(CLI::PositiveNumber);
  timeline->add_option("seq", seq, "the message's seq")->required()->check(CLI::PositiveNumber);
  auto* stats = app.add_subcommand("stats", "store statistics");
  auto* schema = app.add_subcommand("schema", "schema migration status: current, latest known, pending");
  std::string backup_name;
  auto* backup = app.add_subcommand("backup", "online backup of the SQLite store, written into parleyd's --backup-dir");
  backup->add_option("--name", backup_name, "file name in the backup dir (default parley-YYYYMMDD-HHMMSS.db)");
  std::string backup_file, data_dir;
  bool force = false;
  auto* restore = app.add_subcommand("restore", "offline (parleyd stopped): check BACKUP and install it as DIR's store");
  restore->add_option("backup", backup_file, "the backup file")->required();
  restore->add_option("--data-dir", data_dir, "parleyd's data dir")->required();
  restore->add_flag("--force", force, "replace an existing store (kept aside as parley.db.pre-restore-TIME)");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? kExitOk : kExitUsage;
  }

  if (restore->parsed()) return Restore(backup_file, data_dir, force);

  Target target;
  std::string error;
  if (!ParseUrl(server, &target, &error)) {
    std::cerr << "parley-admin: " << error << "\n";
    return kExitUsage;
  }
  if (token.empty()) {
    std::cerr << "parley-admin: give the admin token with --token or PARLEY_ADMIN_TOKEN\n";
    return kExitUsage;
  }
  Admin admin(target, token);
  // Path segments the tool puts in URLs are usernames (checked by the
  // server) and numbers; a name with a '/' or '?' cannot be a username.
  if (!username.empty() && username.find_first_of("/?#% ") != std::string::npos) {
    std::cerr << "parley-admin: unknown_user: no such user '" << username << "'\n";
    return kExitRefused;
  }
  const std::string users = "/admin/v1/users/" + username;
  if (user_create->parsed()) {
    json body{{"username", username}, {"password", password}};
    if (!display_name.empty()) body["display_name"] = display_name;
    return admin.Call("POST", "/admin/v1/users", body);
  }
  if (user_show->parsed()) return admin.Call("GET", users);
  if (user_disable->parsed()) return admin.Call("POST", users + "/disable");
  if (user_enable->parsed()) return admin.Call("POST", users + "/enable");
  if (user_delete->parsed()) return admin.Call("DELETE", users);
  if (device_list->parsed()) return admin.Call("GET", users + "/devices");
  if (device_revoke->parsed()) return admin.Call("DELETE", users + "/devices/" + std::to_string(device_id));
  if (timeline->parsed())
    return admin.Call("GET", "/admin/v1/messages/" + std::to_string(conversation) + "/" + std::to_string(seq) +
                                 "/timeline");
  if (stats->parsed()) return admin.Call("GET", "/admin/v1/store/stats");
  if (schema->parsed()) return admin.Call("GET", "/admin/v1/store/schema");
  if (backup->parsed()) {
    json body = json::object();
    if (!backup_name.empty()) body["name"] = backup_name;
    return admin.Call("POST", "/admin/v1/store/backup", body);
  }
  std::cerr << app.help();
  return kExitUsage;
}
