#include "child_process.h"

#include <poll.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <thread>

namespace parley::bench {

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

Child Spawn(std::vector<std::string> args, bool pipes, const std::string& stderr_path) {
  Child h;
  int to_child[2] = {-1, -1}, from_child[2] = {-1, -1};
  if (pipes && (pipe(to_child) != 0 || pipe(from_child) != 0)) return h;
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t parent = getpid();
  h.pid = fork();
  if (h.pid < 0) return h;
  if (h.pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    if (pipes) {
      dup2(to_child[0], 0);
      dup2(from_child[1], 1);
      close(to_child[1]);
      close(from_child[0]);
    }
    if (!stderr_path.empty()) {
      FILE* f = std::fopen(stderr_path.c_str(), "a");
      if (f) {
        dup2(fileno(f), 2);
        if (!pipes) dup2(fileno(f), 1);
      }
    }
    execvp(argv[0], argv.data());
    _exit(127);
  }
  if (pipes) {
    close(to_child[0]);
    close(from_child[1]);
    h.in = to_child[1];
    h.out = from_child[0];
  }
  return h;
}

int Terminate(pid_t* pid, int timeout_ms) {
  if (*pid <= 0) return -1;
  kill(*pid, SIGTERM);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (std::chrono::steady_clock::now() < deadline) {
    int status;
    if (waitpid(*pid, &status, WNOHANG) == *pid) {
      *pid = -1;
      return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  kill(*pid, SIGKILL);
  waitpid(*pid, nullptr, 0);
  *pid = -1;
  return -1;
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

}  // namespace parley::bench
