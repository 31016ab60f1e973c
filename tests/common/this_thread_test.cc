// SetCurrentThreadName (common/this_thread.h): what /proc shows for a thread.
#include "common/this_thread.h"

#include <gtest/gtest.h>
#include <sched.h>
#include <unistd.h>

#include <fstream>
#include <string>
#include <thread>

namespace parley {
namespace {

std::string CurrentThreadComm() {
  std::ifstream in("/proc/self/task/" + std::to_string(gettid()) + "/comm");
  std::string name;
  std::getline(in, name);
  return name;
}

// The name /proc shows for a new thread that named itself `name`.
std::string NameSeenAfterSetting(const std::string& name) {
  std::string seen;
  std::thread t([&] {
    SetCurrentThreadName(name);
    seen = CurrentThreadComm();
  });
  t.join();
  return seen;
}

TEST(ThreadNameTest, NamesTheCallingThreadAsProcShowsIt) { EXPECT_EQ(NameSeenAfterSetting("store-writer"), "store-writer"); }

TEST(ThreadNameTest, ALongNameIsCutToWhatLinuxKeeps) {
  const std::string seen = NameSeenAfterSetting("store-reader/1234567");
  EXPECT_EQ(seen, std::string("store-reader/1234567").substr(0, kMaxThreadName));
  EXPECT_EQ(seen.size(), kMaxThreadName);
}

TEST(ThisThreadTest, BatchSchedulingAppliesToTheCallingThreadOnly) {
  int policy = -1;
  bool ok = false;
  std::thread t([&] {
    ok = UseBatchScheduling().ok();
    policy = sched_getscheduler(0);
  });
  t.join();
  EXPECT_TRUE(ok);
  EXPECT_EQ(policy, SCHED_BATCH);
  EXPECT_EQ(sched_getscheduler(0), SCHED_OTHER) << "the test's own thread keeps its policy";
}

}  // namespace
}  // namespace parley
