// Helpers for the SDK and CLI end-to-end tests: temporary directories, an
// SDK Client wired to a ServerProcess, status recording, and running the
// `parley` CLI as a child process (to completion, or in the background so a
// test can kill -9 it).
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "common/child_process.h"
#include "e2e/helpers.h"
#include "e2e/server_process.h"
#include "parley/client.h"
#include "test_paths.h"

namespace parley::testing {

// Backoff small enough for tests (the defaults are for real networks).
inline BackoffPolicy FastBackoff() {
  BackoffPolicy b;
  b.initial_ms = 50;
  b.max_ms = 400;
  return b;
}

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/parley-sdk-XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Records every status callback; the last status per client id.
struct StatusLog {
  std::mutex mu;
  std::vector<StatusUpdate> all;
  std::map<std::string, MessageStatus> last;

  void Add(const StatusUpdate& u) {
    std::lock_guard lock(mu);
    all.push_back(u);
    last[u.client_id] = u.status;
  }
  size_t CountAtLeast(MessageStatus s) {
    std::lock_guard lock(mu);
    size_t n = 0;
    for (auto& [id, st] : last) n += (st != MessageStatus::kFailed && static_cast<int>(st) >= static_cast<int>(s)) ? 1 : 0;
    return n;
  }
  MessageStatus Of(const std::string& id) {
    std::lock_guard lock(mu);
    auto it = last.find(id);
    return it == last.end() ? MessageStatus::kPending : it->second;
  }
};

inline ClientOptions OptionsFor(const ServerProcess& s, const std::string& db_path, const std::string& token) {
  ClientOptions o;
  o.port = s.port();
  o.db_path = db_path;
  o.token = token;
  o.backoff = FastBackoff();
  o.connect_timeout_ms = 2000;
  o.request_timeout_ms = 5000;
  return o;
}

inline std::unique_ptr<Client> OpenClient(ClientOptions o) {
  std::string err;
  auto c = Client::Open(std::move(o), &err);
  EXPECT_NE(c, nullptr) << err;
  return c;
}

// Registers `user` and logs in one device; returns its token.
inline std::string RegisterAndLogin(ServerProcess& s, const std::string& user) {
  Register(s, user);
  auto r = Client::Login("127.0.0.1", s.port(), user, "correct horse", "sdk-test", "gtest");
  EXPECT_TRUE(r.ok) << r.code << ": " << r.message;
  return r.token;
}

// The message events of `stream` from `sender_id`, in stream order.
inline std::vector<json> MessagesFrom(const std::vector<json>& stream, int64_t sender_id) {
  std::vector<json> out;
  for (const auto& e : stream) {
    if (e["kind"] == "message" && e["message"]["sender_id"] == sender_id) out.push_back(e["message"]);
  }
  return out;
}

// ---- the CLI as a child process ---------------------------------------------

struct CliResult {
  int exit_code = -1;
  std::string out;  // stdout
  std::string err;  // stderr
  json Json() const {  // the last stdout line as JSON
    auto end = out.find_last_not_of('\n');
    if (end == std::string::npos) return json();
    auto start = out.rfind('\n', end);
    return json::parse(out.substr(start == std::string::npos ? 0 : start + 1, end + 1 - (start == std::string::npos ? 0 : start + 1)),
                       nullptr, false);
  }
};

inline std::string CliPath() { return parley::testing::BinDir() + "/parley"; }

// Forks `parley args...` with stdin from `input` and stdout/stderr into
// files; the child dies with the test (PR_SET_PDEATHSIG; call from the main thread).
inline pid_t SpawnCli(const std::vector<std::string>& args, const std::string& input, const std::string& out_path,
                      const std::string& err_path) {
  std::vector<std::string> all = {CliPath()};
  all.insert(all.end(), args.begin(), args.end());
  SpawnOptions options;
  options.stdin_pipe = true;
  options.stdout_path = out_path;
  options.stderr_path = err_path;
  options.truncate = true;
  Child c = Spawn(std::move(all), options);
  if (c.pid < 0) return -1;
  if (!input.empty()) {
    ssize_t n = write(c.in, input.data(), input.size());
    (void)n;
  }
  close(c.in);
  return c.pid;
}

inline std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

inline CliResult RunCli(const TempDir& dir, const std::vector<std::string>& args, const std::string& input = "") {
  static int counter = 0;
  std::string out = dir / ("cli-out-" + std::to_string(counter)), err = dir / ("cli-err-" + std::to_string(counter));
  ++counter;
  pid_t pid = SpawnCli(args, input, out, err);
  CliResult r;
  int status = 0;
  if (pid > 0 && waitpid(pid, &status, 0) == pid) r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = Slurp(out);
  r.err = Slurp(err);
  return r;
}

}  // namespace parley::testing
