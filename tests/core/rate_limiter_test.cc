#include "core/rate_limiter.h"

#include <gtest/gtest.h>

#include <string>
#include <unordered_map>

namespace parley::core {
namespace {

TEST(RateLimiterTest, AllowsTheBurstThenRefusesWithTheTimeToTheNextToken) {
  RateLimiter l(RateLimit{2, 3});  // 2 per second, burst 3
  for (int i = 0; i < 3; ++i) EXPECT_EQ(l.Take("k", 1000), 0);
  EXPECT_EQ(l.Take("k", 1000), 500);  // one token every 500 ms
  EXPECT_EQ(l.Take("k", 1400), 100);
  EXPECT_EQ(l.Take("k", 1500), 0);
  EXPECT_EQ(l.Take("other", 1500), 0);  // keys are independent
}

TEST(RateLimiterTest, PeekDoesNotTakeAndFullBucketsAreSweptAway) {
  RateLimiter l(RateLimit{1, 1});
  EXPECT_EQ(l.Peek("k", 0), 0);
  EXPECT_EQ(l.Peek("k", 0), 0);
  EXPECT_EQ(l.Take("k", 0), 0);
  EXPECT_GT(l.Peek("k", 0), 0);
  EXPECT_EQ(l.size(), 1u);
  l.Take("j", 20'000);  // a sweep runs; "k" refilled long ago
  EXPECT_EQ(l.size(), 1u);
}

TEST(RateLimiterTest, PeekForSeveralTokensSaysWhenThatManyAreThere) {
  RateLimiter l(RateLimit{2, 3});
  EXPECT_EQ(l.Peek("k", 0, 3), 0);
  EXPECT_EQ(l.Peek("k", 0, 4), 500) << "beyond the burst: one more token's time";
  EXPECT_EQ(l.Take("k", 0), 0);
  EXPECT_EQ(l.Peek("k", 0, 2), 0);
  EXPECT_EQ(l.Peek("k", 0, 3), 500);
  EXPECT_EQ(l.Peek("k", 250, 3), 250);
}

// Cluster mode: what a node took is counted for the next reconciliation,
// and the cluster-wide level replaces the local bucket, less what was taken
// since the counts were handed over.
TEST(RateLimiterTest, CountsUsageForTheClusterAndTakesItsLevel) {
  RateLimiter l(RateLimit{10, 10});
  EXPECT_EQ(l.Take("u1", 0), 0);
  EXPECT_TRUE(l.TakeUsage().empty()) << "usage is counted only in cluster mode";
  l.CountUsage(true);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(l.Take("u1", 0), 0);
  EXPECT_EQ(l.Take("u2", 0), 0);
  auto usage = l.TakeUsage();
  EXPECT_EQ(usage, (std::unordered_map<std::string, double>{{"u1", 3}, {"u2", 1}}));
  EXPECT_TRUE(l.TakeUsage().empty()) << "counts start again after each hand-over";

  // Two more taken while the reconciliation was on its way; the cluster
  // (other nodes included) says 1.5 tokens are left: 1.5 - 2 here.
  EXPECT_EQ(l.Take("u1", 10), 0);
  EXPECT_EQ(l.Take("u1", 10), 0);
  l.ApplyLevel("u1", 1.5, 10);
  EXPECT_EQ(l.Peek("u1", 10), 150);  // -0.5 tokens: one more in 150 ms at 10/s
  // Owed tokens (a negative level) are waited for.
  l.ApplyLevel("u2", -20, 10);
  EXPECT_EQ(l.Take("u2", 10), 2100);
  EXPECT_EQ(l.Take("u2", 2111), 0);
  // A level above the burst is capped.
  l.ApplyLevel("u3", 50, 10);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(l.Take("u3", 10), 0);
  EXPECT_GT(l.Take("u3", 10), 0);
}

}  // namespace
}  // namespace parley::core
