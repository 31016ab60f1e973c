// Settings of the calling thread.
#pragma once

#include <cstddef>
#include <string_view>

#include "common/status.h"

namespace parley {

// Linux keeps at most this many bytes of a thread's name.
inline constexpr size_t kMaxThreadName = 15;

// Names the calling thread, as `top -H`, `ps -L`, `perf report --sort comm`
// and gdb show it; a name longer than kMaxThreadName is cut. Never used on
// the main thread, whose name is the process's (what `pgrep parleyd`
// matches).
void SetCurrentThreadName(std::string_view name);

// Puts the calling thread under SCHED_BATCH (sched(7)): same priority and
// nice value, but when it wakes it does not preempt the thread running on
// its core; it runs when that one blocks or its slice ends. Threads it
// creates afterwards inherit the policy. Needs no privilege.
Status UseBatchScheduling();

// Sets the calling thread's nice value (setpriority(2) on its thread id;
// 19 is the lowest priority): under load the scheduler gives it a share of
// the core in proportion to its weight (1.5 % of a normal thread's at 19).
// Raising the priority (a lower value) needs CAP_SYS_NICE; lowering does not.
Status SetCurrentThreadNice(int nice);

// The CPUs the calling thread may run on: its affinity mask (what taskset or
// a container's cpuset allows), not the machine's count; at least 1.
int CpusAvailable();

}  // namespace parley
