// RedisTestServer: a real redis-server for tests (scripts/setup.sh installs
// it), in a fresh temporary directory on a free localhost port, nothing
// persisted (no RDB, no AOF), killed with the test process (PDEATHSIG) and
// when the object goes. Stop() and Start() again keep the port: the
// "Redis gone for a while" scenarios. Never skipped: if the server cannot
// start, the test fails.
//
// Thread-safety: none; use it from the test's main thread (PDEATHSIG follows
// the forking thread).
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "common/child_process.h"

namespace parley::testing {

class RedisTestServer {
 public:
  // How long Start waits for the server to answer PING.
  static constexpr int kStartTimeoutMs = 10'000;
  static constexpr const char* kBinary = "/usr/bin/redis-server";

  // `extra_args` go to redis-server after the defaults (e.g. "--requirepass", "pw").
  explicit RedisTestServer(std::vector<std::string> extra_args = {}) : extra_args_(std::move(extra_args)) {
    char tmpl[] = "/tmp/parley-redis-XXXXXX";
    dir_ = mkdtemp(tmpl);
    port_ = FreePort();
    Start();
  }
  ~RedisTestServer() {
    Stop();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  RedisTestServer(const RedisTestServer&) = delete;
  RedisTestServer& operator=(const RedisTestServer&) = delete;

  uint16_t port() const { return port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  bool running() const { return pid_ > 0; }

  void Start() {
    ASSERT_TRUE(std::filesystem::exists(kBinary)) << kBinary << " is missing: run scripts/setup.sh";
    std::vector<std::string> args = {kBinary,          "--port",       std::to_string(port_), "--bind",
                                     "127.0.0.1",      "--dir",        dir_,                  "--save",
                                     "",               "--appendonly", "no",                  "--daemonize",
                                     "no",             "--logfile",    dir_ + "/redis.log",   "--protected-mode",
                                     "no"};
    args.insert(args.end(), extra_args_.begin(), extra_args_.end());
    pid_ = Spawn(std::move(args)).pid;
    ASSERT_GE(pid_, 0) << "cannot fork";
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kStartTimeoutMs);
    while (std::chrono::steady_clock::now() < deadline) {
      if (Ping()) return;
      int status;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        FAIL() << "redis-server exited during start-up (log: " << dir_ << "/redis.log)";
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    FAIL() << "redis-server did not answer PING within " << kStartTimeoutMs << " ms";
  }

  // SIGKILL: everything in it is gone, like a crashed Redis.
  void Stop() {
    if (pid_ <= 0) return;
    kill(pid_, SIGKILL);
    int status;
    waitpid(pid_, &status, 0);
    pid_ = -1;
  }

  // SIGSTOP / SIGCONT: a Redis that stops answering while its connections
  // stay open (no FIN, no RST), as a stalled or partitioned one does.
  void Pause() {
    if (pid_ > 0) kill(pid_, SIGSTOP);
  }
  void Resume() {
    if (pid_ > 0) kill(pid_, SIGCONT);
  }

  // Whether the server answers PING with +PONG (or, with a password
  // required, that one is: -NOAUTH; or that it is still loading its data
  // set: -LOADING).
  bool Ping() const {
    const std::string reply = Command("PING");
    return reply.rfind("+PONG", 0) == 0 || reply.rfind("-NOAUTH", 0) == 0 || reply.rfind("-LOADING", 0) == 0;
  }

  // Sends `lines` (inline commands, each ending in \r\n) on a new connection
  // and returns what the server answers within 1 s of the last byte ("" if
  // it cannot connect).
  std::string Command(const std::string& lines) const {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return "";
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port_);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    timeval tv{1, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    std::string out;
    const std::string request = lines + (lines.ends_with("\r\n") ? "" : "\r\n");
    if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
        write(fd, request.data(), request.size()) == static_cast<ssize_t>(request.size())) {
      shutdown(fd, SHUT_WR);  // Redis answers everything sent, then closes
      char buf[4096];
      for (ssize_t n; (n = read(fd, buf, sizeof buf)) > 0;) out.append(buf, static_cast<size_t>(n));
    }
    close(fd);
    return out;
  }

 private:
  static uint16_t FreePort() {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    socklen_t len = sizeof a;
    uint16_t port = 0;
    if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
        getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0)
      port = ntohs(a.sin_port);
    close(fd);
    return port;
  }

  std::vector<std::string> extra_args_;
  std::string dir_;
  uint16_t port_ = 0;
  pid_t pid_ = -1;
};

}  // namespace parley::testing
