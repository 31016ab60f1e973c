#include "core/rate_limiter.h"

#include <gtest/gtest.h>

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

}  // namespace
}  // namespace parley::core
