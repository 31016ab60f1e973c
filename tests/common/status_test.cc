#include "common/status.h"

#include <gtest/gtest.h>

namespace parley {
namespace {

TEST(StatusTest, OkAndErrorsCarryStableWireNames) {
  EXPECT_TRUE(Status::Ok().ok());
  Status s(ErrorCode::kNotMember, "nope");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(ErrorCodeName(s.code()), "not_member");
  EXPECT_EQ(s.ToString(), "not_member: nope");
  EXPECT_TRUE(ErrorCodeRetryable(ErrorCode::kUnavailable));
  EXPECT_FALSE(ErrorCodeRetryable(ErrorCode::kBadJson));
}

TEST(StatusTest, ResultHoldsValueOrError) {
  Result<int> a(5);
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(*a, 5);
  Result<int> b(Status(ErrorCode::kInternal, "x"));
  ASSERT_FALSE(b.has_value());
  EXPECT_EQ(b.error().code(), ErrorCode::kInternal);
}

}  // namespace
}  // namespace parley
