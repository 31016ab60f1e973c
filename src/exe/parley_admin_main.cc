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
#include <fcntl.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "net/http_client.h"
#include "store/sqlite/sqlite_backup.h"
#include "store/sqlite/sqlite_store.h"

namespace {

using nlohmann::json;

constexpr int kExitOk = 0;
constexpr int kExitRefused = 1;
constexpr int kExitUsage = 2;
constexpr int kExitUnreachable = 3;
constexpr int kExitRestoreFailed = 4;
// How long to wait for the server's answer (a backup of a large store takes a while).
constexpr std::chrono::seconds kReplyTimeout{600};
// Messages per page of a user export (the admin API allows up to 2,000).
constexpr int kExportPageMessages = 1'000;

// http://HOST[:PORT][/] (no other path); nothing and *error otherwise.
std::optional<parley::netutil::HttpEndpoint> ParseServer(const std::string& url, std::string* error) {
  std::string_view rest = url;
  if (rest.rfind("http://", 0) == 0) rest.remove_prefix(7);
  if (!rest.empty() && rest.back() == '/') rest.remove_suffix(1);
  auto endpoint = rest.find('/') == std::string_view::npos ? parley::netutil::ParseHttpUrl(url, error) : std::nullopt;
  if (!endpoint)
    *error = "--server must be http://HOST[:PORT] without a path (run parley-admin next to parleyd or through your "
             "TLS proxy's plain-HTTP side)";
  return endpoint;
}

class Admin {
 public:
  Admin(parley::netutil::HttpEndpoint server, std::string token) : server_(std::move(server)), token_(std::move(token)) {}

  // Calls the admin API and prints the answer; returns the exit code.
  int Call(const std::string& method, const std::string& path, const json& body = nullptr) const {
    json answer;
    int code = Fetch(method, path, body, &answer);
    if (code == kExitOk) std::cout << answer.dump(2) << "\n";
    return code;
  }

  // Calls the admin API; on success *answer holds the JSON answer. Errors are
  // printed. Returns the exit code.
  int Fetch(const std::string& method, const std::string& path, const json& body, json* answer) const {
    parley::netutil::HttpRequest req;
    req.method = method;
    req.target = path;
    req.authorization = "Bearer " + token_;
    if (!body.is_null()) req.body = body.dump();
    req.timeout = kReplyTimeout;
    parley::netutil::HttpResponse r = parley::netutil::HttpExchange(server_, req);
    if (!r.ok()) {
      std::cerr << "parley-admin: " << r.error << " (is parleyd running?)\n";
      return kExitUnreachable;
    }
    *answer = json::parse(r.body, nullptr, false);
    if (r.status == 200 && !answer->is_discarded()) return kExitOk;
    if (r.status == 404 && (answer->is_discarded() || !answer->contains("code"))) {
      std::cerr << "parley-admin: the admin API is disabled on this server (start parleyd with --admin-token)\n";
      return kExitRefused;
    }
    if (!answer->is_discarded() && answer->contains("code")) {
      std::cerr << "parley-admin: " << answer->value("code", std::string()) << ": "
                << answer->value("message", std::string()) << " (HTTP " << r.status << ")\n";
    } else {
      std::cerr << "parley-admin: HTTP " << r.status << ": " << r.body << "\n";
    }
    return kExitRefused;
  }

  // The user erase (docs/operations.md, "User erase"): prints the answer;
  // fails (exit 1) unless the server verified that nothing is left.
  int EraseUser(const std::string& users_path) const {
    json answer;
    if (int code = Fetch("POST", users_path + "/erase", nullptr, &answer); code != kExitOk) return code;
    std::cout << answer.dump(2) << "\n";
    if (answer.value("verified", false)) return kExitOk;
    std::cerr << "parley-admin: the erase left data of the user behind (see \"left\"); run it again\n";
    return kExitRefused;
  }

  // The user export (docs/operations.md, "User export"): the account part,
  // then each conversation's messages page by page (newest first, put back
  // in ascending order), as one JSON document on `out` ("-": stdout).
  int ExportUser(const std::string& users_path, const std::string& out) const {
    json doc;
    if (int code = Fetch("GET", users_path + "/export", nullptr, &doc); code != kExitOk) return code;
    size_t total = 0;
    for (auto& c : doc["conversations"]) {
      std::vector<json> pages;
      int64_t before = 0;
      while (true) {
        std::string path = users_path + "/export/conversations/" + std::to_string(c["conversation_id"].get<int64_t>()) +
                           "?limit=" + std::to_string(kExportPageMessages);
        if (before > 0) path += "&before=" + std::to_string(before);
        json page;
        if (int code = Fetch("GET", path, nullptr, &page); code != kExitOk) return code;
        pages.push_back(std::move(page["messages"]));
        if (!page.value("has_more", false)) break;
        before = page["next_before"];
      }
      json messages = json::array();
      for (auto it = pages.rbegin(); it != pages.rend(); ++it) {
        for (auto& m : *it) messages.push_back(std::move(m));
      }
      total += messages.size();
      c["messages"] = std::move(messages);
    }
    std::string text = doc.dump(2) + "\n";
    if (out == "-") {
      std::cout << text;
      return kExitOk;
    }
    std::string tmp = out + ".partial";
    {
      std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
      f << text;
      if (!f.flush()) {
        std::cerr << "parley-admin: cannot write " << tmp << "\n";
        return kExitRefused;
      }
    }
    std::filesystem::rename(tmp, out);
    std::cerr << "parley-admin: exported " << doc["conversations"].size() << " conversations, " << total
              << " messages to " << out << "\n";
    return kExitOk;
  }

 private:
  parley::netutil::HttpEndpoint server_;
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
  auto* user = app.add_subcommand("user", "create, show, disable, enable, delete, export or erase a user");
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
      user->add_subcommand("delete", "disable the user and revoke every device (their data stays; see erase)");
  auto* user_export = user->add_subcommand("export", "all data of the user as one JSON document (compliance export)");
  std::string export_out = "-";
  user_export->add_option("--out", export_out, "the file to write (written whole, then renamed; - is stdout)")
      ->capture_default_str();
  auto* user_erase = user->add_subcommand(
      "erase", "erase the user: account, devices, contacts, blocks, drafts; their messages deleted for everyone");
  bool erase_confirmed = false;
  user_erase->add_flag("--yes", erase_confirmed, "confirm: an erase cannot be undone")->required();
  for (auto* sub : {user_show, user_disable, user_enable, user_delete, user_export, user_erase})
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

  std::string error;
  auto endpoint = ParseServer(server, &error);
  if (!endpoint) {
    std::cerr << "parley-admin: " << error << "\n";
    return kExitUsage;
  }
  if (token.empty()) {
    std::cerr << "parley-admin: give the admin token with --token or PARLEY_ADMIN_TOKEN\n";
    return kExitUsage;
  }
  Admin admin(*endpoint, token);
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
  if (user_export->parsed()) return admin.ExportUser(users, export_out);
  if (user_erase->parsed()) return admin.EraseUser(users);
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
