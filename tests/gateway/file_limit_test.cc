// The connection limit's default from the open-file limit (gateway.h,
// DefaultMaxConnections, FileLimitReserve) and RaiseFileLimit.
#include <gtest/gtest.h>

#include <sys/resource.h>

#include "gateway/gateway.h"

namespace parley::gateway {
namespace {

TEST(FileLimitTest, TheReserveIsAQuarterOfTheLimitWithinItsBounds) {
  EXPECT_EQ(FileLimitReserve(1'024), 256);
  EXPECT_EQ(FileLimitReserve(100), kMinReservedFiles);
  EXPECT_EQ(FileLimitReserve(1'048'576), kMaxReservedFiles);
}

TEST(FileLimitTest, ConnectionsGetTheRestAndAlwaysAtLeastOne) {
  EXPECT_EQ(DefaultMaxConnections(1'024), 768);
  EXPECT_EQ(DefaultMaxConnections(20'000), 19'488);
  EXPECT_EQ(DefaultMaxConnections(64), 1);
  EXPECT_EQ(DefaultMaxConnections(1), 1);
}

TEST(FileLimitTest, RaiseFileLimitLiftsTheSoftLimitToTheHardOne) {
  rlimit before{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &before), 0);
  ASSERT_NE(before.rlim_max, RLIM_INFINITY) << "the test needs a finite hard limit (ulimit -Hn)";
  rlimit lowered = before;
  lowered.rlim_cur = before.rlim_max / 2;
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &lowered), 0);
  EXPECT_EQ(RaiseFileLimit(), static_cast<int64_t>(before.rlim_max));
  rlimit after{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &after), 0);
  EXPECT_EQ(after.rlim_cur, before.rlim_max);
  setrlimit(RLIMIT_NOFILE, &before);
}

}  // namespace
}  // namespace parley::gateway
