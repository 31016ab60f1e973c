// End-to-end: a parleyd out of file descriptors.
//
// Runs against a parleyd built without sanitizers, named by
// PARLEY_E2E_PARLEYD (scripts/test.sh: the Release tree's): the
// sanitizers' runtime needs descriptors of its own (UBSan opens a pipe to
// check a pointer it has not seen before) and kills the process without
// them, so an ASan parleyd cannot be starved of descriptors and observed.
// Not registered with CTest for that reason.
#include <gtest/gtest.h>

#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "e2e/helpers.h"

namespace parley::testing {
namespace {

class FdLimitE2E : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NE(std::getenv("PARLEY_E2E_PARLEYD"), nullptr)
        << "run against a parleyd without sanitizers: PARLEY_E2E_PARLEYD=build/release/bin/parleyd (scripts/test.sh "
           "does)";
  }
};

// Open files of process `pid`.
int OpenFiles(pid_t pid) {
  int n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd")) ++n;
  return n;
}

// A parleyd out of file descriptors (its limit lowered under it, so that
// --max-connections, set from the old limit, does not refuse first) leaves
// the rest waiting in the listen backlog and tries again every 100 ms
// instead of failing the same accept in a loop; once descriptors are free
// it serves again.
TEST_F(FdLimitE2E, OutOfDescriptorsTheAcceptsWaitInsteadOfSpinningAndResume) {
  ServerProcess server;
  ASSERT_TRUE(Eventually([&] { return HttpGet(server.port(), "/healthz") == "ok\n"; }, 10000));
  const int idle_files = OpenFiles(server.pid());
  const rlimit low{static_cast<rlim_t>(idle_files + 8), static_cast<rlim_t>(idle_files + 8)};
  ASSERT_EQ(prlimit(server.pid(), RLIMIT_NOFILE, &low, nullptr), 0) << std::strerror(errno);
  std::vector<int> fds;
  for (int i = 0; i < 40; ++i) {
    int fd = TcpConnect(server.port());  // the kernel completes it into the backlog
    ASSERT_GE(fd, 0) << std::strerror(errno);
    fds.push_back(fd);
  }
  constexpr int kWaitMs = 1500;
  std::this_thread::sleep_for(std::chrono::milliseconds(kWaitMs));
  for (int fd : fds) ::close(fd);  // the accepted ones end, freeing their descriptors
  std::string metrics;
  ASSERT_TRUE(Eventually([&] { return !(metrics = HttpGet(server.port(), "/metrics")).empty(); }, 10000))
      << "parleyd does not serve again once descriptors are free";
  const double errors = MetricValue(metrics, "parley_accept_errors_total");
  EXPECT_GE(errors, 1) << "the lowered limit was never reached";
  // One failed accept per 100 ms wait (and one per retry that fails again):
  // a loop retrying at once would count thousands.
  EXPECT_LE(errors, 2.0 * kWaitMs / 100 + 20);
}

}  // namespace
}  // namespace parley::testing
