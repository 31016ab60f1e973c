// RequestOrder: a request whose reads land after a later one's took effect is
// stale; failed requests give their ticket back; keys are forgotten once
// nothing is in flight.
#include "core/request_order.h"

#include <gtest/gtest.h>

#include <utility>

namespace parley::core {
namespace {

TEST(RequestOrderTest, ALaterTicketThatLandedFirstMakesTheEarlierOneStale) {
  RequestOrder<int64_t> order;
  auto start = order.Take(7);
  auto stop = order.Take(7);
  EXPECT_TRUE(order.Land(7, stop));
  EXPECT_FALSE(order.Land(7, start));
  EXPECT_EQ(order.keys(), 0u);
}

TEST(RequestOrderTest, TicketsLandingInOrderAllTakeEffect) {
  RequestOrder<int64_t> order;
  auto first = order.Take(7);
  auto second = order.Take(7);
  EXPECT_TRUE(order.Land(7, first));
  EXPECT_TRUE(order.Land(7, second));
  EXPECT_EQ(order.keys(), 0u);
}

TEST(RequestOrderTest, KeysAreIndependent) {
  RequestOrder<std::pair<int64_t, int64_t>, IdPairHash> order;
  auto a = order.Take({3, 1});
  auto b = order.Take({3, 2});
  EXPECT_TRUE(order.Land({3, 2}, b));
  EXPECT_TRUE(order.Land({3, 1}, a));
  EXPECT_EQ(order.keys(), 0u);
}

// A later request that failed (not a member, a read error) took no effect:
// the earlier one still does, and the key is released.
TEST(RequestOrderTest, ADroppedTicketDoesNotSupersedeAndIsReleased) {
  RequestOrder<int64_t> order;
  auto start = order.Take(7);
  auto failed = order.Take(7);
  order.Drop(7, failed);
  EXPECT_EQ(order.keys(), 1u) << "released while a ticket was still in flight";
  EXPECT_TRUE(order.Land(7, start));
  EXPECT_EQ(order.keys(), 0u);
  order.Drop(7, order.Take(7));
  EXPECT_EQ(order.keys(), 0u);
}

// A local change (this node's own block) makes loads in flight stale; with
// none in flight it keeps nothing.
TEST(RequestOrderTest, SupersedeMakesEveryTicketInFlightStale) {
  RequestOrder<int64_t> order;
  order.Supersede(7);
  EXPECT_EQ(order.keys(), 0u);
  auto load = order.Take(7);
  order.Supersede(7);
  EXPECT_FALSE(order.Land(7, load));
  EXPECT_EQ(order.keys(), 0u);
  EXPECT_TRUE(order.Land(7, order.Take(7))) << "a ticket taken after the key was released";
}

}  // namespace
}  // namespace parley::core
