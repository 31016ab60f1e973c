#include "common/child_process.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <thread>

namespace parley {

std::string Child::ReadLine(int timeout_ms) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (true) {
    auto nl = buffered.find('\n');
    if (nl != std::string::npos) {
      std::string line = buffered.substr(0, nl);
      buffered.erase(0, nl + 1);
      return line;
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
    if (left <= 0) return "";
    pollfd p{out, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(left)) <= 0) continue;
    char buf[65536];
    ssize_t n = read(out, buf, sizeof buf);
    if (n <= 0) return "";
    buffered.append(buf, static_cast<size_t>(n));
  }
}

Child Spawn(std::vector<std::string> args, const SpawnOptions& o) {
  Child h;
  int to_child[2] = {-1, -1}, from_child[2] = {-1, -1};
  if (o.stdin_pipe && pipe(to_child) != 0) return h;
  if (o.stdout_pipe && pipe(from_child) != 0) return h;
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const int file_flags = O_WRONLY | O_CREAT | (o.truncate ? O_TRUNC : O_APPEND);
  pid_t parent = getpid();
  h.pid = fork();
  if (h.pid < 0) return h;
  if (h.pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    if (o.stdin_pipe) {
      dup2(to_child[0], 0);
      close(to_child[0]);
      close(to_child[1]);
    }
    if (o.stdout_pipe) {
      dup2(from_child[1], 1);
      close(from_child[0]);
      close(from_child[1]);
    } else if (!o.stdout_path.empty()) {
      int fd = open(o.stdout_path.c_str(), file_flags, 0600);
      if (fd >= 0) dup2(fd, 1);
    }
    if (!o.stderr_path.empty()) {
      int fd = o.stderr_path == o.stdout_path && !o.stdout_pipe ? dup(1) : open(o.stderr_path.c_str(), file_flags, 0600);
      if (fd >= 0) dup2(fd, 2);
    }
    execvp(argv[0], argv.data());
    _exit(127);
  }
  if (o.stdin_pipe) {
    close(to_child[0]);
    h.in = to_child[1];
  }
  if (o.stdout_pipe) {
    close(from_child[1]);
    h.out = from_child[0];
  }
  return h;
}

std::string ExitStatus::Describe() const {
  switch (how) {
    case How::kExited:
      return "exit status " + std::to_string(code);
    case How::kSignalled: {
      const char* name = sigabbrev_np(code);  // "SEGV"; glibc >= 2.32
      return "killed by signal " + std::to_string(code) + (name ? std::string(" (SIG") + name + ")" : "");
    }
    case How::kTimedOut:
      return "still running after " + std::to_string(code) + " ms (killed)";
    case How::kNotRunning:
      break;
  }
  return "not running";
}

ExitStatus FromWaitStatus(int wait_status) {
  if (WIFEXITED(wait_status)) return {ExitStatus::How::kExited, WEXITSTATUS(wait_status)};
  if (WIFSIGNALED(wait_status)) return {ExitStatus::How::kSignalled, WTERMSIG(wait_status)};
  return {};
}

ExitStatus Terminate(pid_t* pid, int timeout_ms) {
  if (*pid <= 0) return {};
  kill(*pid, SIGTERM);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (std::chrono::steady_clock::now() < deadline) {
    int status;
    if (waitpid(*pid, &status, WNOHANG) == *pid) {
      *pid = -1;
      return FromWaitStatus(status);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  kill(*pid, SIGKILL);
  waitpid(*pid, nullptr, 0);
  *pid = -1;
  return {ExitStatus::How::kTimedOut, timeout_ms};
}

uint16_t WaitForPortFile(pid_t pid, const std::string& port_file, int timeout_ms, std::string* why) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (std::chrono::steady_clock::now() < deadline) {
    std::ifstream in(port_file);
    int p = 0;
    if (in >> p && p > 0 && p <= 65535) return static_cast<uint16_t>(p);
    int status;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      *why = "exited";
      return 0;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  *why = "timeout";
  return 0;
}

}  // namespace parley
