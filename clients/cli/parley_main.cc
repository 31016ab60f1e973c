// parley: the command-line client, a thin layer over parley::Client (the
// SDK). Every command that talks to the server starts a Client on the
// logged-in user's cache, waits until it is online, does its work, then
// gives the outbox a moment (--timeout) to drain before exiting: that is how
// a message queued offline by `parley send` is sent by any later run.
//
// Files: <config-dir>/current names the active user; <config-dir>/users/<name>/
// holds token (0600), config.json (server address, ids) and cache.db (the
// SDK's cache and outbox, 0600). Commands, output and exit codes: docs/sdk.md.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <string>
#include <thread>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "parley/client.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Exit codes (docs/sdk.md, "Exit codes").
enum Exit : int {
  kOk = 0,
  kFailure = 1,       // unexpected failure
  kUsage = 2,         // bad command line
  kNotLoggedIn = 3,   // no saved login, or the token was revoked: log in again
  kUnreachable = 4,   // the server could not be reached (for commands that need it)
  kRefused = 5,       // the server answered with an error (code printed)
  kLocalStorage = 6,  // the local config or cache cannot be written (disk full...)
};

constexpr const char* kDefaultServer = "127.0.0.1:8080";
constexpr int kDefaultTimeoutMs = 5000;
constexpr int kDefaultHistoryLimit = 20;

std::atomic<bool> g_interrupted{false};
std::mutex g_out_mu;  // one line at a time on stdout (callbacks run on the SDK's thread)

struct Globals {
  std::string server;
  std::string ca_file;
  std::string config_dir;
  std::string user;
  bool json = false;
  int timeout_ms = kDefaultTimeoutMs;
};

struct Failure {
  int code;
  std::string message;
  std::string error = {};  // the protocol's error code, when the server gave one
};

void PrintLine(const std::string& s) {
  std::lock_guard lock(g_out_mu);
  std::cout << s << std::endl;
}

int Fail(const Globals& g, int code, const std::string& error_code, const std::string& message) {
  if (g.json) {
    PrintLine(json{{"ok", false}, {"error", error_code}, {"message", message}, {"exit_code", code}}.dump());
  } else {
    std::lock_guard lock(g_out_mu);
    std::cerr << "parley: " << message << (error_code.empty() ? "" : " [" + error_code + "]") << std::endl;
  }
  return code;
}

int Fail(const Globals& g, const Failure& f) { return Fail(g, f.code, f.error, f.message); }

int FailReply(const Globals& g, const parley::Reply& r) {
  if (r.code == parley::kErrOffline) return Fail(g, kUnreachable, r.code, "not connected to the server");
  if (r.code == "timeout" || r.code == "closed") return Fail(g, kUnreachable, r.code, r.message);
  if (r.code == "invalid_token") return Fail(g, kNotLoggedIn, r.code, "this device is no longer signed in: run `parley login`");
  return Fail(g, kRefused, r.code, r.message);
}

std::string DefaultConfigDir() {
  if (const char* x = std::getenv("XDG_CONFIG_HOME"); x && *x) return std::string(x) + "/parley";
  if (const char* h = std::getenv("HOME"); h && *h) return std::string(h) + "/.config/parley";
  return ".parley";
}

// "HOST:PORT", "ws://HOST:PORT" or "wss://HOST:PORT" (TLS, verified against
// --ca-file or the system's CAs).
bool ParseServer(const Globals& g, const std::string& s, parley::ConnectOptions* out) {
  parley::ConnectOptions o;
  if (!parley::ParseServerAddress(s, &o)) return false;
  o.ca_file = g.ca_file;
  o.timeout_ms = g.timeout_ms;
  *out = o;
  return true;
}

std::string Lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string TimeString(int64_t ms) {
  std::time_t t = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  localtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M", &tm);
  return buf;
}

// Writes a file readable only by its owner, atomically (temp + rename).
bool WritePrivate(const fs::path& p, const std::string& content) {
  fs::path tmp = p;
  tmp += ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return false;
  bool ok = ::write(fd, content.data(), content.size()) == static_cast<ssize_t>(content.size()) && ::fsync(fd) == 0;
  ::close(fd);
  if (!ok) return false;
  std::error_code ec;
  fs::rename(tmp, p, ec);
  return !ec;
}

std::string ReadFile(const fs::path& p) {
  std::ifstream in(p);
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  return s;
}

std::string ReadPassword(const std::string& given) {
  if (!given.empty()) return given;
  if (const char* e = std::getenv("PARLEY_PASSWORD"); e && *e) return e;
  bool tty = isatty(STDIN_FILENO);
  termios old{};
  if (tty) {
    std::cerr << "password: " << std::flush;
    tcgetattr(STDIN_FILENO, &old);
    termios quiet = old;
    quiet.c_lflag &= ~static_cast<tcflag_t>(ECHO);
    tcsetattr(STDIN_FILENO, TCSANOW, &quiet);
  }
  std::string pw;
  std::getline(std::cin, pw);
  if (tty) {
    tcsetattr(STDIN_FILENO, TCSANOW, &old);
    std::cerr << std::endl;
  }
  return pw;
}

fs::path UserDir(const Globals& g, const std::string& user) { return fs::path(g.config_dir) / "users" / Lower(user); }

// The active user: --user, else <config-dir>/current.
std::string ActiveUser(const Globals& g) {
  if (!g.user.empty()) return Lower(g.user);
  return ReadFile(fs::path(g.config_dir) / "current");
}

// An SDK client on the active user's cache. Connects only when Start()ed.
struct Session {
  std::string user;
  fs::path dir;
  json config;
  std::unique_ptr<parley::Client> client;
};

std::optional<Failure> OpenSession(const Globals& g, parley::ClientOptions opts, Session* s) {
  s->user = ActiveUser(g);
  if (s->user.empty()) return Failure{kNotLoggedIn, "not logged in: run `parley login USER`"};
  s->dir = UserDir(g, s->user);
  std::string token = ReadFile(s->dir / "token");
  s->config = json::parse(ReadFile(s->dir / "config.json"), nullptr, false);
  if (!s->config.is_object()) s->config = json::object();
  std::string server = !g.server.empty() ? g.server : s->config.value("server", std::string(kDefaultServer));
  parley::ConnectOptions co;
  if (!ParseServer(g, server, &co)) return Failure{kUsage, "bad server address: " + server};
  opts.host = co.host;
  opts.port = co.port;
  opts.tls = co.tls;
  opts.ca_file = !co.ca_file.empty() ? co.ca_file : s->config.value("ca_file", std::string());
  opts.db_path = (s->dir / "cache.db").string();
  opts.token = token;
  opts.connect_timeout_ms = g.timeout_ms;
  if (!fs::exists(s->dir)) return Failure{kNotLoggedIn, "not logged in as " + s->user + ": run `parley login " + s->user + "`"};
  std::string err;
  opts.draft_debounce_ms = 0;  // a command sets one draft: nothing to wait for
  s->client = parley::Client::Open(std::move(opts), &err);
  if (!s->client) return Failure{kLocalStorage, err};
  return std::nullopt;
}

// Starts the client and waits until it is online. Returns a failure when it
// is not (revoked token, unreachable server).
std::optional<Failure> GoOnline(const Globals& g, Session& s) {
  if (ReadFile(s.dir / "token").empty()) return Failure{kNotLoggedIn, "not logged in as " + s.user + ": run `parley login`"};
  s.client->Start();
  if (s.client->WaitOnline(g.timeout_ms)) return std::nullopt;
  if (s.client->state() == parley::ClientState::kRevoked) {
    return Failure{kNotLoggedIn, s.client->last_error()};
  }
  if (s.client->state() == parley::ClientState::kDisabled) {
    return Failure{kRefused, s.client->last_error(), "user_disabled"};
  }
  std::string why = s.client->last_error();
  return Failure{kUnreachable, why.empty() ? "the server did not answer in time" : why};
}

// Before exiting an online run: let the outbox drain and drafts set by an
// earlier offline run be saved (bounded).
void Finish(const Globals& g, Session& s) {
  if (s.client->state() == parley::ClientState::kOnline) {
    s.client->WaitOutboxDrained(g.timeout_ms);
    s.client->WaitDraftsSaved(g.timeout_ms);
  }
  s.client->Stop();
}

const char* Tick(parley::MessageStatus st) {
  switch (st) {
    case parley::MessageStatus::kPending: return "pending";
    case parley::MessageStatus::kSent: return "sent ✓";
    case parley::MessageStatus::kDelivered: return "delivered ✓✓";
    case parley::MessageStatus::kRead: return "read ✓✓";
    case parley::MessageStatus::kFailed: return "FAILED";
  }
  return "";
}

json MessageJson(const parley::CachedMessage& m, const std::string& me, const std::string& peer) {
  json j = {{"conversation_id", m.conversation_id}, {"seq", m.seq}, {"from", m.outgoing ? me : peer},
            {"outgoing", m.outgoing}, {"client_id", m.client_id}, {"body", m.body}, {"ts", m.ts}};
  if (m.outgoing) j["status"] = parley::MessageStatusName(m.status);
  if (!m.error_code.empty()) j["error"] = m.error_code;
  return j;
}

std::string MessageLine(const parley::CachedMessage& m, const std::string& me, const std::string& peer) {
  std::string s = (m.seq ? "#" + std::to_string(m.seq) : std::string("#-")) + " " + TimeString(m.ts) + " " +
                  (m.outgoing ? me : peer) + ": " + m.body;
  if (m.outgoing) s += "  [" + std::string(Tick(m.status)) + (m.error_code.empty() ? "" : " " + m.error_code) + "]";
  return s;
}

std::string StatusLine(const parley::StatusUpdate& u) {
  std::string s = "status " + u.client_id + " to " + u.peer + ": " + parley::MessageStatusName(u.status);
  if (u.seq) s += " (#" + std::to_string(u.seq) + ")";
  if (!u.error_code.empty()) s += " " + u.error_code + ": " + u.error_message;
  return s;
}

json StatusJson(const parley::StatusUpdate& u) {
  json j = {{"type", "status"}, {"client_id", u.client_id}, {"peer", u.peer}, {"conversation_id", u.conversation_id},
            {"seq", u.seq}, {"status", parley::MessageStatusName(u.status)}};
  if (!u.error_code.empty()) {
    j["error"] = u.error_code;
    j["message"] = u.error_message;
  }
  return j;
}

std::string EventLine(const json& e, int64_t me) {
  std::string kind = e.value("kind", "");
  std::string p = "event #" + std::to_string(e.value("user_seq", int64_t{0})) + " " + kind;
  if (kind == "message") {
    const json& m = e["message"];
    return p + ": " + (m.value("sender_id", int64_t{0}) == me ? "(me)" : "user " + std::to_string(m.value("sender_id", int64_t{0}))) +
           " in conversation " + std::to_string(m.value("conversation_id", int64_t{0})) + " #" +
           std::to_string(m.value("seq", int64_t{0})) + ": " + m.value("body", "");
  }
  if (kind == "receipt") {
    return p + ": user " + std::to_string(e.value("user_id", int64_t{0})) + " in conversation " +
           std::to_string(e.value("conversation_id", int64_t{0})) + " delivered " +
           std::to_string(e.value("delivered", int64_t{0})) + " read " + std::to_string(e.value("read", int64_t{0}));
  }
  if (kind == "edit" || kind == "delete" || kind == "delete_for_me") {
    std::string where = " in conversation " + std::to_string(e.value("conversation_id", int64_t{0})) + " #" +
                        std::to_string(e.value("seq", int64_t{0}));
    if (kind == "edit") return p + where + " (v" + std::to_string(e.value("version", int64_t{0})) + "): " +
                               e.value("body", "");
    return p + where + (kind == "delete" ? ": deleted for everyone" : ": deleted for me");
  }
  if (kind == "draft") {
    std::string text = e.value("text", "");
    return p + " in conversation " + std::to_string(e.value("conversation_id", int64_t{0})) + ": " +
           (text.empty() ? "(cleared)" : text);
  }
  if (kind == "contact" || kind == "block" || kind == "profile") {
    json u = e.contains("user") ? e["user"] : e.value("profile", json::object());
    return p + ": " + u.value("username", "") + (kind == "contact" ? (e.value("added", false) ? " added" : " removed")
                                                 : kind == "block" ? (e.value("blocked", false) ? " blocked" : " unblocked")
                                                                   : " " + u.value("display_name", ""));
  }
  return p;
}

std::string ProfileLine(const json& u) {
  std::string s = u.value("username", "");
  if (!u.value("display_name", "").empty()) s += " (" + u.value("display_name", "") + ")";
  if (!u.value("about", "").empty()) s += " — " + u.value("about", "");
  return s;
}

// ---- commands ---------------------------------------------------------------

int CmdRegister(const Globals& g, const std::string& user, const std::string& password_in) {
  parley::ConnectOptions co;
  std::string server = g.server.empty() ? kDefaultServer : g.server;
  if (!ParseServer(g, server, &co)) return Fail(g, kUsage, "", "bad server address: " + server);
  std::string pw = ReadPassword(password_in);
  auto r = parley::Client::Register(co, user, pw, g.timeout_ms);
  if (!r.ok) return r.code == parley::kErrUnreachable ? Fail(g, kUnreachable, r.code, r.message) : FailReply(g, r);
  if (g.json) {
    PrintLine(json{{"ok", true}, {"user_id", r.result["user_id"]}, {"username", r.result["username"]}}.dump());
  } else {
    PrintLine("registered " + r.result.value("username", "") + " (user " + std::to_string(r.result.value("user_id", 0)) +
              "); now run: parley login " + r.result.value("username", ""));
  }
  return kOk;
}

int CmdLogin(const Globals& g, const std::string& user_in, const std::string& password_in, const std::string& device) {
  parley::ConnectOptions co;
  std::string server = g.server.empty() ? kDefaultServer : g.server;
  if (!ParseServer(g, server, &co)) return Fail(g, kUsage, "", "bad server address: " + server);
  std::string pw = ReadPassword(password_in);
  auto r = parley::Client::Login(co, user_in, pw, device, "cli", g.timeout_ms);
  if (!r.ok) {
    if (r.code == parley::kErrUnreachable) return Fail(g, kUnreachable, r.code, r.message);
    return Fail(g, kRefused, r.code, r.message);
  }
  fs::path dir = UserDir(g, r.username);
  std::error_code ec;
  fs::create_directories(dir, ec);
  fs::permissions(fs::path(g.config_dir), fs::perms::owner_all, ec);
  fs::permissions(dir.parent_path(), fs::perms::owner_all, ec);
  fs::permissions(dir, fs::perms::owner_all, ec);
  // An existing cache of the same user stays: the stream (and so the
  // cursor) is per user, and its outbox still holds unsent messages.
  json cfg = {{"server", server}, {"user_id", r.user_id}, {"device_id", r.device_id}, {"username", r.username}};
  if (!g.ca_file.empty()) cfg["ca_file"] = fs::absolute(g.ca_file).string();
  if (!WritePrivate(dir / "token", r.token + "\n") || !WritePrivate(dir / "config.json", cfg.dump(2) + "\n") ||
      !WritePrivate(fs::path(g.config_dir) / "current", r.username + "\n")) {
    return Fail(g, kLocalStorage, parley::kErrLocalStorage, "cannot write the login to " + dir.string());
  }
  if (g.json) {
    PrintLine(json{{"ok", true}, {"username", r.username}, {"user_id", r.user_id}, {"device_id", r.device_id},
                   {"config_dir", dir.string()}}.dump());
  } else {
    PrintLine("logged in as " + r.username + " (device " + std::to_string(r.device_id) + ")");
  }
  return kOk;
}

int CmdLogout(const Globals& g, bool force) {
  Session s;
  if (auto f = OpenSession(g, {}, &s)) return Fail(g, *f);
  size_t pending = s.client->PendingCount();
  if (auto f = GoOnline(g, s)) {
    if (f->code != kNotLoggedIn) return Fail(g, f->code, f->error, f->message + " (logout needs the server)");
    // The device is signed out already (unlinked, password changed): only
    // the local data goes, but a login as this user again would keep it and
    // send what the outbox holds, so unsent messages still need --force.
    if (pending > 0 && !force) {
      return Fail(g, kFailure, "outbox_not_empty",
                  std::to_string(pending) +
                      " message(s) not sent yet; log in again to send them, or use --force to drop them");
    }
  } else {
    s.client->WaitOutboxDrained(g.timeout_ms);
    pending = s.client->PendingCount();
    if (pending > 0 && !force) {
      s.client->Stop();
      return Fail(g, kFailure, "outbox_not_empty",
                  std::to_string(pending) + " message(s) not sent yet; retry later or use --force to drop them");
    }
    auto r = s.client->Request("logout");
    s.client->Stop();
    if (!r.ok && r.code != "closed") return FailReply(g, r);
  }
  s.client.reset();
  std::error_code ec;
  fs::remove_all(s.dir, ec);
  if (ReadFile(fs::path(g.config_dir) / "current") == s.user) fs::remove(fs::path(g.config_dir) / "current", ec);
  if (g.json) PrintLine(json{{"ok", true}, {"username", s.user}}.dump());
  else PrintLine("logged out " + s.user);
  return kOk;
}

// Runs a one-request command online, printing the result with `human`.
int Simple(const Globals& g, const std::string& type, json fields, const std::function<void(const json&)>& human) {
  Session s;
  if (auto f = OpenSession(g, {}, &s)) return Fail(g, *f);
  if (auto f = GoOnline(g, s)) return Fail(g, *f);
  auto r = s.client->Request(type, std::move(fields));
  Finish(g, s);
  if (!r.ok) return FailReply(g, r);
  if (g.json) {
    json out = r.result;
    out["ok"] = true;
    PrintLine(out.dump());
  } else {
    human(r.result);
  }
  return kOk;
}

// "Message info" of a message you sent to USER: accepted, stored, and per
// device of each member when it was delivered and read.
int CmdInfo(const Globals& g, const std::string& peer, int64_t seq) {
  Session s;
  if (auto f = OpenSession(g, {}, &s)) return Fail(g, *f);
  if (auto f = GoOnline(g, s)) return Fail(g, *f);
  auto conv = s.client->Request("open_conversation", {{"username", Lower(peer)}});
  if (!conv.ok) {
    Finish(g, s);
    return FailReply(g, conv);
  }
  auto r = s.client->Request("message_info",
                             {{"conversation_id", conv.result["conversation"]["conversation_id"]}, {"seq", seq}});
  Finish(g, s);
  if (!r.ok) return FailReply(g, r);
  if (g.json) {
    json out = r.result;
    out["ok"] = true;
    PrintLine(out.dump());
    return kOk;
  }
  auto when = [](const json& v) { return v.is_number() ? TimeString(v.get<int64_t>()) : std::string("-"); };
  PrintLine("accepted " + when(r.result["accepted_at"]) + ", stored " + when(r.result["stored_at"]));
  for (const auto& m : r.result["members"]) {
    for (const auto& d : m["devices"]) {
      std::string name = d.contains("name") ? d["name"].get<std::string>() : "device " + d["device_id"].dump();
      PrintLine(m["username"].get<std::string>() + " / " + name + ": delivered " + when(d["delivered_at"]) +
                ", read " + when(d["read_at"]));
    }
  }
  return kOk;
}

int CmdSend(const Globals& g, const std::string& peer, const std::vector<std::string>& words) {
  std::vector<std::string> bodies;
  if (words.size() == 1 && words[0] == "-") {
    std::string line;
    while (std::getline(std::cin, line)) {
      if (!line.empty()) bodies.push_back(line);
    }
  } else {
    std::string body;
    for (const auto& w : words) body += (body.empty() ? "" : " ") + w;
    bodies.push_back(body);
  }
  Session s;
  if (auto f = OpenSession(g, {}, &s)) return Fail(g, *f);
  std::vector<std::string> ids;
  for (const auto& b : bodies) {
    auto r = s.client->Compose(peer, b);
    if (!r.ok) {
      int code = r.code == "bad_request" ? kUsage : kLocalStorage;
      return Fail(g, code, r.code, r.message + (ids.empty() ? "" : " (" + std::to_string(ids.size()) + " earlier message(s) queued)"));
    }
    ids.push_back(r.client_id);
  }
  auto off = GoOnline(g, s);
  const bool online = !off.has_value();
  const bool disabled = off && off->error == "user_disabled";
  if (online) s.client->WaitOutboxDrained(g.timeout_ms);
  s.client->Stop();
  json list = json::array();
  int rc = kOk;
  for (const auto& id : ids) {
    auto st = s.client->StatusOf(id);
    parley::MessageStatus status = st ? st->status : parley::MessageStatus::kPending;
    if (status == parley::MessageStatus::kFailed) rc = kRefused;
    if (g.json) {
      list.push_back(st ? StatusJson(*st) : json{{"client_id", id}, {"status", "pending"}});
    } else if (status == parley::MessageStatus::kPending) {
      PrintLine("queued " + id + " for " + Lower(peer) +
                (online     ? ": not acknowledged yet, will be retried"
                 : disabled ? ": this account is disabled by the operator; kept, and sent by a parley run once it "
                              "is enabled again"
                            : ": offline, will be sent by the next parley run (" + s.client->last_error() + ")"));
    } else {
      PrintLine(StatusLine(*st));
    }
  }
  if (g.json) PrintLine(json{{"ok", rc == kOk}, {"online", online}, {"disabled", disabled}, {"messages", list}}.dump());
  return rc;
}

int CmdHistory(const Globals& g, const std::string& peer_in, int64_t before, int limit, bool mark_read) {
  std::string peer = Lower(peer_in);
  Session s;
  if (auto f = OpenSession(g, {}, &s)) return Fail(g, *f);
  auto off = GoOnline(g, s);
  if (off && off->code == kNotLoggedIn) return Fail(g, off->code, "", off->message);
  std::vector<parley::CachedMessage> msgs;
  bool has_more = false;
  bool from_cache = off.has_value();
  if (!from_cache) {
    parley::Reply err;
    msgs = s.client->History(peer, before, limit, &has_more, &err);
    if (!err.code.empty() && err.code != parley::kErrLocalStorageFull) {
      Finish(g, s);
      return FailReply(g, err);
    }
    // Pending/failed outbox entries after the server's page.
    if (before == 0) {
      for (auto& m : s.client->Messages(peer, 0, 0)) msgs.push_back(m);
    }
    int64_t newest_in = 0;
    for (const auto& m : msgs) {
      if (!m.outgoing && m.seq > newest_in) newest_in = m.seq;
    }
    if (mark_read && newest_in > 0 && !msgs.empty()) {
      s.client->MarkRead(msgs.front().conversation_id ? msgs.front().conversation_id : msgs.back().conversation_id, newest_in);
    }
  } else {
    msgs = s.client->Messages(peer, before, limit);
    has_more = !msgs.empty() && msgs.front().seq > 1;
  }
  std::string me = s.user;
  Finish(g, s);
  int64_t oldest = 0;
  for (const auto& m : msgs) {
    if (m.seq > 0 && (oldest == 0 || m.seq < oldest)) oldest = m.seq;
  }
  if (g.json) {
    json list = json::array();
    for (const auto& m : msgs) list.push_back(MessageJson(m, me, peer));
    json out = {{"ok", true}, {"peer", peer}, {"messages", list}, {"has_more", has_more}, {"offline", from_cache}};
    if (has_more) out["next_before"] = oldest;
    PrintLine(out.dump());
  } else {
    if (from_cache) PrintLine("(offline: from the local cache — " + off->message + ")");
    if (msgs.empty()) PrintLine("no messages with " + peer);
    for (const auto& m : msgs) PrintLine(MessageLine(m, me, peer));
    if (has_more) PrintLine("(older: parley history " + peer + " --before " + std::to_string(oldest) + ")");
  }
  return kOk;
}

int CmdChats(const Globals& g) {
  Session s;
  if (auto f = OpenSession(g, {}, &s)) return Fail(g, *f);
  auto off = GoOnline(g, s);
  if (off && off->code == kNotLoggedIn) return Fail(g, off->code, "", off->message);
  json list = json::array();
  std::vector<std::string> lines;
  if (!off) {
    auto r = s.client->Request("list_conversations", {{"limit", 200}, {"messages", 1}});
    if (!r.ok) {
      Finish(g, s);
      return FailReply(g, r);
    }
    for (const auto& c : r.result["conversations"]) {
      std::string peer;
      for (const auto& m : c["conversation"]["members"]) {
        if (m.value("username", "") != s.user) peer = m.value("username", "");
      }
      std::string preview;
      if (!c["messages"].empty()) {
        const json& m = c["messages"].back();
        preview = m.value("deleted", false) ? "(deleted)" : m.value("body", "");
      }
      int64_t unread = c.value("unread", int64_t{0});
      // The server's draft, unless one typed here is not saved yet.
      std::string draft = c.contains("draft") ? c["draft"].value("text", "") : "";
      auto cached = s.client->ConversationWith(peer);
      if (cached && cached->draft_pending) draft = cached->draft;
      list.push_back({{"conversation_id", c["conversation"]["conversation_id"]}, {"peer", peer}, {"unread", unread},
                      {"last_activity_at", c.value("last_activity_at", int64_t{0})}, {"preview", preview},
                      {"draft", draft}});
      lines.push_back(peer + (unread ? " (" + std::to_string(unread) + " unread)" : "") + ": " + preview +
                      (draft.empty() ? "" : "  [draft: " + draft + "]"));
    }
  } else {
    for (const auto& c : s.client->Conversations()) {
      list.push_back({{"conversation_id", c.conversation_id}, {"peer", c.peer}, {"unread", c.unread},
                      {"last_activity_at", c.last_ts}, {"draft", c.draft}});
      lines.push_back(c.peer + (c.unread ? " (" + std::to_string(c.unread) + " unread)" : "") +
                      (c.draft.empty() ? "" : "  [draft: " + c.draft + "]"));
    }
  }
  Finish(g, s);
  if (g.json) {
    PrintLine(json{{"ok", true}, {"conversations", list}, {"offline", off.has_value()}}.dump());
  } else {
    if (off) PrintLine("(offline: from the local cache)");
    if (lines.empty()) PrintLine("no conversations");
    for (auto& l : lines) PrintLine(l);
  }
  return kOk;
}

// draft USER: show; draft USER TEXT...: set; draft USER --clear: clear.
// Setting works offline: the draft is kept in the cache and saved on the
// server by this run if it gets online, else by any later run.
int CmdDraft(const Globals& g, const std::string& peer_in, const std::vector<std::string>& words, bool clear) {
  std::string peer = Lower(peer_in);
  if (clear && !words.empty()) return Fail(g, kUsage, "", "give a text or --clear, not both");
  const bool show = !clear && words.empty();
  std::string text;
  for (const auto& w : words) text += (text.empty() ? "" : " ") + w;
  Session s;
  if (auto f = OpenSession(g, {}, &s)) return Fail(g, *f);
  if (!show) {
    auto r = s.client->SetDraft(peer, text);
    if (!r.ok) return Fail(g, r.code == "bad_request" ? kUsage : kLocalStorage, r.code, r.message);
  }
  auto off = GoOnline(g, s);
  if (off && off->code == kNotLoggedIn) {
    s.client->Stop();
    return Fail(g, off->code, "", off->message);
  }
  bool saved = false;
  if (!off) saved = s.client->WaitDraftsSaved(g.timeout_ms);
  std::string error = s.client->last_error();
  s.client->Stop();
  std::string shown = s.client->Draft(peer);
  auto conv = s.client->ConversationWith(peer);
  const bool pending = s.client->PendingDraftCount() > 0;
  if (!show && saved && shown != text) {
    // Dropped: the server refused it (unknown user, not a member).
    return Fail(g, kRefused, "", error.empty() ? "the draft was not saved" : error);
  }
  if (g.json) {
    json out = {{"ok", true}, {"peer", peer}, {"draft", shown}, {"pending", pending}, {"offline", off.has_value()}};
    if (conv) out["conversation_id"] = conv->conversation_id;
    PrintLine(out.dump());
  } else if (show) {
    if (off) PrintLine("(offline: from the local cache)");
    PrintLine(shown.empty() ? "no draft for " + peer : "draft for " + peer + ": " + shown);
  } else if (pending) {
    PrintLine(std::string(clear ? "draft cleared" : "draft kept") + " for " + peer +
              ": offline, will be saved by the next parley run" + (off ? " (" + off->message + ")" : ""));
  } else {
    PrintLine(std::string(clear ? "draft cleared" : "draft saved") + " for " + peer);
  }
  return kOk;
}

int CmdOutbox(const Globals& g) {
  Session s;
  if (auto f = OpenSession(g, {}, &s)) return Fail(g, *f);
  auto items = s.client->Outbox();
  if (g.json) {
    json list = json::array();
    for (auto& u : items) list.push_back(StatusJson(u));
    PrintLine(json{{"ok", true}, {"outbox", list}}.dump());
  } else {
    if (items.empty()) PrintLine("outbox empty");
    for (auto& u : items) PrintLine(StatusLine(u));
  }
  return kOk;
}

// watch / chat: follow live events until interrupted, --count, --for or EOF.
int CmdFollow(const Globals& g, const std::string& chat_peer, int count, int for_ms) {
  std::atomic<int> seen{0};
  int64_t me_id = 0;
  std::string me;
  parley::ClientOptions opts;
  std::string peer = Lower(chat_peer);
  Session* sp = nullptr;
  opts.on_status = [&](const parley::StatusUpdate& u) {
    if (!peer.empty() && u.peer != peer) return;
    PrintLine(g.json ? StatusJson(u).dump() : StatusLine(u));
  };
  opts.on_event = [&](const json& e) {
    if (g.json) {
      PrintLine(json{{"type", "event"}, {"event", e}}.dump());
    } else if (!peer.empty()) {
      if (e.value("kind", "") == "message" && e["message"].value("sender_id", int64_t{0}) != me_id) {
        const json& m = e["message"];
        PrintLine("#" + std::to_string(m.value("seq", int64_t{0})) + " " + TimeString(m.value("ts", int64_t{0})) + " " +
                  peer + ": " + m.value("body", ""));
      }
    } else {
      PrintLine(EventLine(e, me_id));
    }
    if (!peer.empty() && sp && e.value("kind", "") == "message" && e["message"].value("sender_id", int64_t{0}) != me_id) {
      sp->client->MarkRead(e["message"].value("conversation_id", int64_t{0}), e["message"].value("seq", int64_t{0}));
    }
    ++seen;
  };
  opts.on_state = [&](parley::ClientState st, const std::string& detail) {
    if (g.json) PrintLine(json{{"type", "state"}, {"state", parley::ClientStateName(st)}, {"detail", detail}}.dump());
    else if (st != parley::ClientState::kConnecting) PrintLine(std::string("-- ") + parley::ClientStateName(st) + (detail.empty() ? "" : ": " + detail));
  };
  Session s;
  sp = &s;
  if (auto f = OpenSession(g, opts, &s)) return Fail(g, *f);
  me_id = s.client->user_id();
  me = s.user;
  s.client->Start();
  if (!s.client->WaitOnline(g.timeout_ms) && s.client->state() == parley::ClientState::kRevoked) {
    s.client->Stop();
    return Fail(g, kNotLoggedIn, "invalid_token", s.client->last_error());
  }
  me_id = s.client->user_id();
  if (!peer.empty() && !g.json) {
    for (const auto& m : s.client->Messages(peer, 0, kDefaultHistoryLimit)) PrintLine(MessageLine(m, me, peer));
    PrintLine("-- chatting with " + peer + "; type a message and press Enter, /quit to leave");
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(for_ms > 0 ? for_ms : INT32_MAX);
  std::string line;
  bool stdin_open = !peer.empty();
  while (!g_interrupted && std::chrono::steady_clock::now() < deadline && (count <= 0 || seen < count)) {
    if (!stdin_open) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      continue;
    }
    pollfd pfd{STDIN_FILENO, POLLIN, 0};
    if (poll(&pfd, 1, 50) <= 0) continue;
    char buf[4096];
    ssize_t n = ::read(STDIN_FILENO, buf, sizeof buf);
    if (n <= 0) {
      stdin_open = false;
      break;  // EOF: leave after the outbox drained
    }
    line.append(buf, static_cast<size_t>(n));
    size_t nl;
    while ((nl = line.find('\n')) != std::string::npos) {
      std::string text = line.substr(0, nl);
      line.erase(0, nl + 1);
      if (text == "/quit") {
        g_interrupted = true;
        break;
      }
      if (text.empty()) continue;
      auto r = s.client->Compose(peer, text);
      if (!r.ok) Fail(g, kLocalStorage, r.code, r.message);
    }
  }
  if (s.client->state() == parley::ClientState::kOnline) s.client->WaitOutboxDrained(g.timeout_ms);
  s.client->Stop();
  return kOk;
}

}  // namespace

int main(int argc, char** argv) {
  umask(077);  // tokens, caches and their WAL files are private to the user
  signal(SIGINT, [](int) { g_interrupted = true; });
  signal(SIGTERM, [](int) { g_interrupted = true; });
  signal(SIGPIPE, SIG_IGN);

  Globals g;
  CLI::App app{"parley: the Parley command-line client (docs/sdk.md)"};
  app.require_subcommand(1);
  app.add_option("--server", g.server,
                 "server address HOST:PORT, ws://HOST:PORT or wss://HOST:PORT (TLS) (default: the one used at login, "
                 "else 127.0.0.1:8080)")
      ->envname("PARLEY_SERVER")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  app.add_option("--ca-file", g.ca_file,
                 "wss: PEM file of the CA (or self-signed certificate) to trust (default: the system's CAs; kept "
                 "from login)")
      ->envname("PARLEY_CA_FILE")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  app.add_option("--config-dir", g.config_dir, "where logins and caches live (default $XDG_CONFIG_HOME/parley or ~/.config/parley)")
      ->envname("PARLEY_CONFIG_DIR");
  app.add_option("--user", g.user, "act as this logged-in user (default: the last one logged in)")->envname("PARLEY_USER");
  app.add_flag("--json", g.json, "machine-readable output: one JSON object per line");
  app.add_option("--timeout", g.timeout_ms, "ms to wait for the server (connect, answers, outbox drain)")
      ->check(CLI::Range(1, 600000))
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeLast)
      ->capture_default_str();
  app.footer("Exit codes: 0 ok, 1 failure, 2 usage, 3 not logged in / revoked, 4 server unreachable, "
             "5 refused by the server, 6 local storage error.");

  std::function<int()> run;
  std::string user, password, device = "parley-cli", peer, query, text_id;
  std::vector<std::string> words;
  bool force = false, no_read = false;
  int64_t before = 0, device_id = 0;
  int limit = kDefaultHistoryLimit, count = 0, for_ms = 0;
  std::string display_name, about;
  bool set_name = false, set_about = false;

  auto* reg = app.add_subcommand("register", "create an account");
  reg->add_option("username", user, "3-32 of a-z 0-9 _ . starting with a letter")->required();
  reg->add_option("--password", password, "the password (else $PARLEY_PASSWORD, else asked on stdin)");
  reg->callback([&] { run = [&] { return CmdRegister(g, user, password); }; });

  auto* login = app.add_subcommand("login", "log in as a new device of USER and keep its token (0600)");
  login->add_option("username", user)->required();
  login->add_option("--password", password, "the password (else $PARLEY_PASSWORD, else asked on stdin)");
  login->add_option("--device-name", device, "name shown in `parley devices`")->capture_default_str();
  login->callback([&] { run = [&] { return CmdLogin(g, user, password, device); }; });

  auto* logout = app.add_subcommand("logout", "sign this device out (revokes its token) and delete its local data");
  logout->add_flag("--force", force, "log out even if messages are still waiting in the outbox (they are dropped)");
  logout->callback([&] { run = [&] { return CmdLogout(g, force); }; });

  auto* devices = app.add_subcommand("devices", "list your devices, or unlink one");
  auto* dev_list = devices->add_subcommand("list", "list your devices (the default)");
  auto* dev_unlink = devices->add_subcommand("unlink", "sign a device out");
  dev_unlink->add_option("device_id", device_id)->required();
  auto list_devices = [&] {
    return Simple(g, "list_devices", json::object(), [](const json& r) {
      for (const auto& d : r["devices"]) {
        PrintLine(std::to_string(d.value("device_id", 0)) + "  " + d.value("name", "") + " (" + d.value("platform", "") +
                  ")" + (d.value("current", false) ? "  <- this device" : "") + "  last seen " +
                  (d.value("last_seen_at", int64_t{0}) ? TimeString(d.value("last_seen_at", int64_t{0})) : "never"));
      }
    });
  };
  devices->callback([&] { if (!run) run = list_devices; });
  dev_list->callback([&] { run = list_devices; });
  dev_unlink->callback([&] {
    run = [&] {
      return Simple(g, "unlink_device", {{"device_id", device_id}},
                    [&](const json&) { PrintLine("unlinked device " + std::to_string(device_id)); });
    };
  });

  auto* profile = app.add_subcommand("profile", "show who you are, or set your display name / about text");
  profile->add_option("--name", display_name, "set the display name (<= 64 bytes)")->each([&](const std::string&) { set_name = true; });
  profile->add_option("--about", about, "set the about text (<= 140 bytes)")->each([&](const std::string&) { set_about = true; });
  profile->callback([&] {
    run = [&] {
      if (!set_name && !set_about) {
        Session s;
        if (auto f = OpenSession(g, {}, &s)) return Fail(g, *f);
        json out = {{"username", s.user}, {"user_id", s.config.value("user_id", 0)},
                    {"device_id", s.config.value("device_id", 0)}, {"server", s.config.value("server", "")}};
        if (g.json) {
          out["ok"] = true;
          PrintLine(out.dump());
        } else {
          PrintLine(s.user + " (user " + std::to_string(out["user_id"].get<int64_t>()) + ", device " +
                    std::to_string(out["device_id"].get<int64_t>()) + ") at " + out["server"].get<std::string>());
        }
        return static_cast<int>(kOk);
      }
      json f = json::object();
      if (set_name) f["display_name"] = display_name;
      if (set_about) f["about"] = about;
      return Simple(g, "set_profile", f, [](const json& r) { PrintLine("profile: " + ProfileLine(r["profile"])); });
    };
  });

  auto* contacts = app.add_subcommand("contacts", "manage contacts and blocks");
  auto contact_list = [&] {
    return Simple(g, "list_contacts", json::object(), [](const json& r) {
      if (r["contacts"].empty()) PrintLine("no contacts");
      for (const auto& c : r["contacts"]) PrintLine(ProfileLine(c["user"]));
    });
  };
  contacts->callback([&] { if (!run) run = contact_list; });
  contacts->add_subcommand("list", "list your contacts (the default)")->callback([&] { run = contact_list; });
  for (auto [name, type, help, done] :
       std::vector<std::tuple<std::string, std::string, std::string, std::string>>{
           {"add", "add_contact", "add USER to your contacts", "added "},
           {"remove", "remove_contact", "remove USER from your contacts", "removed "},
           {"block", "block", "block USER (they cannot reach you)", "blocked "},
           {"unblock", "unblock", "unblock USER", "unblocked "}}) {
    auto* sc = contacts->add_subcommand(name, help);
    sc->add_option("username", peer)->required();
    sc->callback([&, type = type, done = done] {
      run = [&, type, done] {
        return Simple(g, type, {{"username", peer}}, [&, done](const json& r) { PrintLine(done + ProfileLine(r["user"])); });
      };
    });
  }
  contacts->add_subcommand("blocked", "list the users you block")->callback([&] {
    run = [&] {
      return Simple(g, "list_blocked", json::object(), [](const json& r) {
        if (r["users"].empty()) PrintLine("nobody blocked");
        for (const auto& u : r["users"]) PrintLine(ProfileLine(u));
      });
    };
  });

  auto* search = app.add_subcommand("search", "find users by username or display-name prefix");
  search->add_option("query", query)->required();
  search->add_option("--limit", limit, "results (1-50)")->check(CLI::Range(1, 50));
  search->callback([&] {
    run = [&] {
      return Simple(g, "search_users", {{"query", query}, {"limit", std::min(limit, 50)}}, [](const json& r) {
        if (r["users"].empty()) PrintLine("no users found");
        for (const auto& u : r["users"]) PrintLine(ProfileLine(u));
      });
    };
  });

  app.add_subcommand("chats", "your conversations, newest first, with unread counts")->callback([&] {
    run = [&] { return CmdChats(g); };
  });

  auto* send = app.add_subcommand("send", "send TEXT to USER (works offline: queued, sent by a later run)");
  send->add_option("username", peer)->required();
  send->add_option("text", words, "the message; `-` reads one message per line from stdin")->required();
  send->callback([&] { run = [&] { return CmdSend(g, peer, words); }; });

  bool clear_draft = false;
  auto* draft = app.add_subcommand("draft", "show, set or clear your draft for USER (synced to your other devices)");
  draft->add_option("username", peer)->required();
  draft->add_option("text", words, "the new draft (none: show the draft)");
  draft->add_flag("--clear", clear_draft, "clear the draft");
  draft->callback([&] { run = [&] { return CmdDraft(g, peer, words, clear_draft); }; });

  auto* history = app.add_subcommand("history", "page the conversation with USER (newest first page; marks it read)");
  history->add_option("username", peer)->required();
  history->add_option("--before", before, "show messages below this seq (the previous page's hint)");
  history->add_option("--limit", limit, "messages per page (1-200)")->check(CLI::Range(1, 200))->capture_default_str();
  history->add_flag("--no-mark-read", no_read, "do not report the page as read");
  history->callback([&] { run = [&] { return CmdHistory(g, peer, before, limit, !no_read); }; });

  int64_t info_seq = 0;
  auto* info = app.add_subcommand("info", "message info: when your message SEQ to USER was delivered and read, per device");
  info->add_option("username", peer)->required();
  info->add_option("seq", info_seq, "the message's seq (history shows it)")->required()->check(CLI::PositiveNumber);
  info->callback([&] { run = [&] { return CmdInfo(g, peer, info_seq); }; });

  app.add_subcommand("outbox", "list messages not sent yet (pending) and failed ones")->callback([&] {
    run = [&] { return CmdOutbox(g); };
  });

  auto* chat = app.add_subcommand("chat", "interactive chat with USER: lines you type are sent; incoming messages and ticks appear");
  chat->add_option("username", peer)->required();
  chat->callback([&] { run = [&] { return CmdFollow(g, peer, 0, 0); }; });

  auto* watch = app.add_subcommand("watch", "print events as they arrive (Ctrl-C to stop)");
  watch->add_option("--count", count, "stop after this many events");
  watch->add_option("--for", for_ms, "stop after this many ms");
  watch->callback([&] { run = [&] { return CmdFollow(g, "", count, for_ms); }; });

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return kUsage;
  }
  if (g.config_dir.empty()) g.config_dir = DefaultConfigDir();
  if (!run) return kUsage;
  try {
    return run();
  } catch (const std::exception& e) {
    return Fail(g, kFailure, "internal", e.what());
  }
}
