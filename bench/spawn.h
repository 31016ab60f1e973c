// Child processes of the benchmark tools (parley-bench,
// parley-reconnect-bench). Each tool defines SetupFailed itself: it names
// the tool in its message and exits with status 2.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "common/child_process.h"

namespace parley::bench {

// Reports a failed set-up (a child that would not start, a refused bulk
// request) and exits with status 2.
[[noreturn]] void SetupFailed(const std::string& why);

// A child process, or a set-up failure. With `pipes` its stdin and stdout
// are pipes to us; `log_path` (if set) gets its stderr (and its stdout
// without `pipes`), appended.
inline Child SpawnOrFail(std::vector<std::string> args, bool pipes, const std::string& log_path) {
  SpawnOptions o;
  o.stdin_pipe = o.stdout_pipe = pipes;
  if (!pipes) o.stdout_path = log_path;
  o.stderr_path = log_path;
  Child c = Spawn(std::move(args), o);
  if (c.pid < 0) SetupFailed("cannot start a child process (pipe or fork failed)");
  return c;
}

}  // namespace parley::bench
