// Child processes started by the tools and the tests: parleyd itself, its
// helpers (redis-server, parley, parley-check) and the benchmarks' worker
// processes. The child dies with this process (PR_SET_PDEATHSIG), so a test
// killed by its timeout never leaks a server.
//
// Thread-safety: Spawn may be called from any thread, but PR_SET_PDEATHSIG
// follows the forking *thread*: spawn long-lived children from a thread that
// outlives them (a test's main thread). A Child is used by one thread.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace parley {

struct SpawnOptions {
  bool stdin_pipe = false;   // the child's stdin is Child::in (else inherited)
  bool stdout_pipe = false;  // the child's stdout is Child::out (else stdout_path or inherited)
  std::string stdout_path;   // stdout to this file, unless stdout_pipe
  std::string stderr_path;   // stderr to this file (may equal stdout_path)
  bool truncate = false;     // the files are truncated (default: appended)
};

struct Child {
  pid_t pid = -1;  // -1: Spawn failed
  int in = -1;     // its stdin, with stdin_pipe
  int out = -1;    // its stdout, with stdout_pipe
  std::string buffered;

  // One line from its stdout (without the newline), or "" on timeout or EOF.
  std::string ReadLine(int timeout_ms);
};

// fork + exec of args[0] (searched in PATH when it has no '/'). A failed
// pipe or fork returns pid -1; a failed exec exits the child with 127.
Child Spawn(std::vector<std::string> args, const SpawnOptions& options = {});

// How a child ended.
struct ExitStatus {
  enum class How {
    kExited,     // exit(code)
    kSignalled,  // died of signal `code` (a crash, or a signal it did not handle)
    kTimedOut,   // still running after the timeout: killed with SIGKILL
    kNotRunning  // there was no child to stop (*pid <= 0)
  };
  How how = How::kNotRunning;
  int code = 0;

  bool ok() const { return how == How::kExited && code == 0; }
  // "exit status 3", "killed by signal 11 (SIGSEGV)",
  // "still running after 30000 ms (killed)", "not running".
  std::string Describe() const;
};

// The status waitpid reported, as an ExitStatus.
ExitStatus FromWaitStatus(int wait_status);

// SIGTERM to *pid, then SIGKILL if it has not exited within timeout_ms;
// reaps it and sets *pid to -1.
ExitStatus Terminate(pid_t* pid, int timeout_ms);

// Waits until `port_file` holds a port (what parleyd's --port-file writes
// once it listens). Returns 0 when the child `pid` exits first ("exited") or
// timeout_ms passes ("timeout"), with *why set to that word.
uint16_t WaitForPortFile(pid_t pid, const std::string& port_file, int timeout_ms, std::string* why);

}  // namespace parley
