#include "common/this_thread.h"

#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>

#include <algorithm>
#include <cstring>
#include <string>

#include <fmt/format.h>

namespace parley {

void SetCurrentThreadName(std::string_view name) {
  const std::string cut(name.substr(0, kMaxThreadName));
  // Fails only for a name too long, which the cut rules out.
  pthread_setname_np(pthread_self(), cut.c_str());
}

Status UseBatchScheduling() {
  sched_param param{};
  param.sched_priority = 0;
  if (int rc = pthread_setschedparam(pthread_self(), SCHED_BATCH, &param); rc != 0) {
    return Status(ErrorCode::kInternal, fmt::format("cannot use SCHED_BATCH: {}", std::strerror(rc)));
  }
  return Status::Ok();
}

Status SetCurrentThreadNice(int nice) {
  if (::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), nice) != 0) {
    return Status(ErrorCode::kInternal, fmt::format("cannot set nice {}: {}", nice, std::strerror(errno)));
  }
  return Status::Ok();
}

int CpusAvailable() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return 1;
  return std::max(1, CPU_COUNT(&set));
}

}  // namespace parley
