// ServerProcess: a real parleyd child process for end-to-end tests, on a free
// port (the server binds port 0 and writes the port to a file) with its data
// in a fresh temporary directory. Restart keeps the data; Kill9 is an abrupt
// crash; Terminate sends SIGTERM and waits for a clean exit.
//
// Store: SQLite in the data directory, unless the environment variable
// PARLEY_E2E_STORE=postgres is set: then each ServerProcess gets a fresh
// database of its own on the process's PostgreSQL test server
// (store/pg_test_server.h, started on first use) and parleyd runs with
// --store postgresql://... (tests/e2e/CMakeLists.txt registers PostgreSQL
// runs of end-to-end binaries this way).
#pragma once

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fcntl.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "common/child_process.h"
#include "parley/connection.h"
#include "store/pg_test_server.h"
#include "store/store_factory.h"
#include "test_paths.h"

namespace parley::testing {

class ServerProcess {
 public:
  // `capture_log`: the server's stderr goes to log_path() (appended across
  // restarts) instead of the test's stderr.
  explicit ServerProcess(std::vector<std::string> extra_args = {}, bool capture_log = false)
      : extra_args_(std::move(extra_args)) {
    char tmpl[] = "/tmp/parley-e2e-XXXXXX";
    dir_ = mkdtemp(tmpl);
    const char* store = std::getenv("PARLEY_E2E_STORE");
    if (store != nullptr && std::string(store) == "postgres") {
      store::testing::PgTestServer& pg = store::testing::PgTestServer::Get();
      if (pg.ok()) {
        // mkdtemp's suffix, lower-cased: PostgreSQL folds unquoted names.
        std::string name = "e2e_" + dir_.substr(dir_.rfind('-') + 1);
        for (char& ch : name) {
          if (ch >= 'A' && ch <= 'Z') ch = static_cast<char>(ch - 'A' + 'a');
        }
        name += "_" + std::to_string(std::hash<std::string>()(dir_) % 1000000);
        // A copy of a database migrated once per process: parleyd's start
        // then finds the schema current (migrations: tests/store).
        std::string schema = pg.Template("parley_e2e_template", [](const std::string& url) {
          store::StoreConfig config;
          config.backend = "postgres";
          config.postgres_url = url;
          Result<std::unique_ptr<store::Store>> migrated = store::OpenStore(config);
          EXPECT_TRUE(migrated.has_value()) << migrated.error().ToString();
        });
        store_args_ = {"--store", pg.Database(name, schema)};
      }
    }
    if (capture_log) stderr_path_ = log_path();
    Start();
  }
  ~ServerProcess() {
    if (pid_ > 0) Kill9();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  std::string log_path() const { return dir_ + "/parleyd.log"; }
  // The extra arguments of the next Start (a restart with other flags).
  void set_extra_args(std::vector<std::string> args) { extra_args_ = std::move(args); }

  uint16_t port() const { return port_; }
  const std::string& dir() const { return dir_; }
  // The PostgreSQL URL of this server's database ("" on SQLite: the file is
  // dir() + "/data/parley.db").
  std::string postgres_url() const { return store_args_.size() == 2 ? store_args_[1] : ""; }
  pid_t pid() const { return pid_; }

  void Start() {
    std::string port_file = dir_ + "/port";
    std::filesystem::remove(port_file);
    // PARLEY_E2E_PARLEYD: another parleyd binary (fd_limit_e2e_test runs the
    // Release tree's); this tree's otherwise.
    const char* binary = std::getenv("PARLEY_E2E_PARLEYD");
    std::vector<std::string> args = {binary != nullptr ? std::string(binary) : parley::testing::BinDir() + "/parleyd",
                                     "--listen", "127.0.0.1:" + std::to_string(port_ ? port_ : 0),
                                     "--data-dir", dir_ + "/data",
                                     "--port-file", port_file,
                                     "--insecure-fast-password-hashing",
                                     "--relaxed-rate-limits",
                                     "--io-threads", "2"};
    // A test may choose its own log level; warnings only otherwise.
    if (std::find(extra_args_.begin(), extra_args_.end(), "--log-level") == extra_args_.end()) {
      args.push_back("--log-level");
      args.push_back("warn");
    }
    for (auto& a : store_args_) args.push_back(a);
    for (auto& a : extra_args_) args.push_back(a);
    // The child dies with this test process even when the test is killed (a
    // timeout), never leaking a server. PR_SET_PDEATHSIG follows the forking
    // *thread*: call Start from the test's main thread.
    SpawnOptions options;
    options.stderr_path = stderr_path_;
    pid_ = Spawn(std::move(args), options).pid;
    ASSERT_GE(pid_, 0) << "cannot fork";
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (std::chrono::steady_clock::now() < deadline) {
      std::ifstream in(port_file);
      int p = 0;
      if (in >> p && p > 0) {
        port_ = static_cast<uint16_t>(p);
        return;
      }
      int status;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        FAIL() << "parleyd exited during start-up";
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    FAIL() << "parleyd did not start listening within 30 s";
  }

  // SIGKILL: no flush, no goodbye.
  void Kill9() {
    if (pid_ <= 0) return;
    kill(pid_, SIGKILL);
    int status;
    waitpid(pid_, &status, 0);
    pid_ = -1;
  }

  // SIGTERM and wait; returns the exit status, or -1 if it died of a signal
  // or had to be killed (last_exit() says which).
  int Terminate(int timeout_ms = 15000) {
    last_exit_ = parley::Terminate(&pid_, timeout_ms);
    return last_exit_.how == parley::ExitStatus::How::kExited ? last_exit_.code : -1;
  }
  const parley::ExitStatus& last_exit() const { return last_exit_; }

  // SIGTERM again and again, every `every_us`, until the process has exited
  // (as a supervisor that repeats itself, or a tool that stops every node
  // and then each, would send it during the shutdown); same result as
  // Terminate.
  int TerminateRepeatedly(int every_us, int timeout_ms = 15000) {
    if (pid_ <= 0) return -1;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (std::chrono::steady_clock::now() < deadline) {
      kill(pid_, SIGTERM);
      int status;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        last_exit_ = parley::FromWaitStatus(status);
        return last_exit_.how == parley::ExitStatus::How::kExited ? last_exit_.code : -1;
      }
      std::this_thread::sleep_for(std::chrono::microseconds(every_us));
    }
    Kill9();
    last_exit_ = {parley::ExitStatus::How::kTimedOut, timeout_ms};
    return -1;
  }

  // Restart on the same port and data directory.
  void Restart() {
    if (pid_ > 0) Terminate();
    Start();
  }

  // How Connect (and so the helpers' Register and Login) connects: e.g.
  // tls and ca_file for a server started with --tls-cert. The port is
  // always the server's.
  void set_connect_options(ConnectOptions o) { connect_options_ = std::move(o); }

  std::unique_ptr<Connection> Connect() {
    ConnectOptions o = connect_options_;
    o.port = port_;
    std::string err;
    auto c = Connection::Open(o, &err);
    EXPECT_NE(c, nullptr) << err;
    return c;
  }

 private:
  std::vector<std::string> extra_args_;
  ConnectOptions connect_options_;
  std::vector<std::string> store_args_;  // --store URL under PARLEY_E2E_STORE=postgres
  std::string stderr_path_;
  std::string dir_;
  pid_t pid_ = -1;
  parley::ExitStatus last_exit_;  // of the last Terminate
  uint16_t port_ = 0;
};

}  // namespace parley::testing
