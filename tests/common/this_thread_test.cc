// SetCurrentThreadName (common/this_thread.h): what /proc shows for a thread.
#include "common/this_thread.h"

#include <gtest/gtest.h>
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

TEST(ThreadNameTest, NamesTheCallingThreadAsProcShowsIt) {
  std::string seen;
  std::thread t([&] {
    SetCurrentThreadName("store-writer");
    seen = CurrentThreadComm();
  });
  t.join();
  EXPECT_EQ(seen, "store-writer");
}

TEST(ThreadNameTest, ALongNameIsCutToWhatLinuxKeeps) {
  std::string seen;
  std::thread t([&] {
    SetCurrentThreadName("store-reader/1234567");
    seen = CurrentThreadComm();
  });
  t.join();
  EXPECT_EQ(seen, std::string("store-reader/1234567").substr(0, kMaxThreadName));
  EXPECT_EQ(seen.size(), kMaxThreadName);
}

}  // namespace
}  // namespace parley
