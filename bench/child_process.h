// Child processes of the benchmark tools: the parleyd they start and their
// worker processes (a process may hold at most 20,000 files, so thousands of
// connections are spread over workers that report on stdout).
//
// Thread-safety: a Child is used by one thread; Spawn may be called from any.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace parley::bench {

struct Child {
  pid_t pid = -1;  // -1: Spawn failed
  int in = -1;     // its stdin, with `pipes`
  int out = -1;    // its stdout, with `pipes`
  std::string buffered;

  // One line from its stdout (without the newline), or "" on timeout or EOF.
  std::string ReadLine(int timeout_ms);
};

// fork + exec (argv[0] searched in PATH when it has no '/'); the child dies
// with this process (PR_SET_PDEATHSIG). With `pipes`, its stdin and stdout
// are pipes to us; `stderr_path` (if set) gets its stderr, appended (and its
// stdout without `pipes`). A failed pipe or fork returns pid -1.
Child Spawn(std::vector<std::string> args, bool pipes, const std::string& stderr_path);

// SIGTERM to *pid, then SIGKILL if it has not exited within timeout_ms;
// reaps it and sets *pid to -1. Returns its exit status, or -1 when it was
// killed, died by a signal or was not running (*pid <= 0).
int Terminate(pid_t* pid, int timeout_ms);

// Waits until `port_file` holds a port (what parleyd's --port-file writes
// once it listens). Returns 0 when the child `pid` exits first ("exited") or
// timeout_ms passes ("timeout"), with *why set to that word.
uint16_t WaitForPortFile(pid_t pid, const std::string& port_file, int timeout_ms, std::string* why);

}  // namespace parley::bench
