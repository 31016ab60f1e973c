// The heartbeat timeout's clock (src/gateway/idle_sweep.h). That the sweep
// drops a silent connection and keeps one that sends frames (pings included)
// is tested end to end (tests/e2e/sessions_e2e_test.cc, HeartbeatE2E).
#include "gateway/idle_sweep.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>

namespace parley::gateway {
namespace {

TEST(IdleSweepTest, AConnectionIsSilentOnlyAfterAWholeTimeoutOfSweeps) {
  const uint32_t heard = 7;
  for (uint32_t now = heard; now <= heard + kIdleSweepsPerTimeout; ++now)
    EXPECT_FALSE(SilentForTimeout(now, heard)) << "silent at tick " << now;
  EXPECT_TRUE(SilentForTimeout(heard + kIdleSweepsPerTimeout + 1, heard));
  EXPECT_TRUE(SilentForTimeout(heard + 1000, heard));
}

TEST(IdleSweepTest, TheTickMayWrap) {
  const uint32_t heard = std::numeric_limits<uint32_t>::max() - 1;
  EXPECT_FALSE(SilentForTimeout(heard + kIdleSweepsPerTimeout, heard));  // wrapped past 0
  EXPECT_TRUE(SilentForTimeout(heard + kIdleSweepsPerTimeout + 1, heard));
}

TEST(IdleSweepTest, ThePeriodsOfATimeoutAreNeverShorterThanIt) {
  for (int timeout_ms : {1, 2, 3, 999, 1000, 1001, 2000, 60'000, 60'001}) {
    const auto period = IdleSweepPeriod(timeout_ms);
    EXPECT_GE(period.count() * kIdleSweepsPerTimeout, timeout_ms) << timeout_ms;
    EXPECT_LT(period.count() * kIdleSweepsPerTimeout, timeout_ms + static_cast<int64_t>(kIdleSweepsPerTimeout));
  }
  EXPECT_EQ(IdleSweepPeriod(60'000).count(), 15'000);
  EXPECT_GE(IdleSweepPeriod(0).count(), 1);  // never a busy loop
}

}  // namespace
}  // namespace parley::gateway
