// End-to-end: typing indicators are ephemeral (never in the stream), expire
// on their own, never cross a block, and are rate limited.
#include <gtest/gtest.h>

#include "e2e/helpers.h"

namespace parley::testing {
namespace {

// The next "typing" frame on `c`, skipping events.
std::optional<json> NextTyping(Connection& c, int timeout_ms) {
  return WaitFrame(c, [](const json& f) { return f["type"] == "typing"; }, timeout_ms);
}

TEST(TypingE2E, StartReachesTheOtherMemberAndExpiresWithoutAStop) {
  ServerProcess server({"--typing-expiry-ms", "400"});
  for (auto u : {"alice", "bob", "eve"}) Register(server, u);
  Device a = Login(server, "alice");
  Device b = Login(server, "bob");
  Device e = Login(server, "eve");
  int64_t conv = a.conn->Call("open_conversation", {{"username", "bob"}}).result["conversation"]["conversation_id"];
  auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(a.conn->Call("typing", {{"conversation_id", conv}, {"state", "start"}}).ok);
  auto t = NextTyping(*b.conn, 3000);
  ASSERT_TRUE(t);
  EXPECT_EQ((*t)["state"], "start");
  EXPECT_EQ((*t)["user_id"], a.user_id);
  EXPECT_EQ((*t)["conversation_id"], conv);
  EXPECT_EQ((*t)["expires_in_ms"], 400);
  auto stop = NextTyping(*b.conn, 3000);  // nobody sent "stop": it expired
  ASSERT_TRUE(stop);
  EXPECT_EQ((*stop)["state"], "stop");
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(350));
  // Never stored: not in anyone's stream.
  for (auto& ev : SyncAll(*b.conn, 0)) EXPECT_NE(ev["kind"], "typing");
  // Outsiders cannot type into it.
  EXPECT_EQ(e.conn->Call("typing", {{"conversation_id", conv}, {"state", "start"}}).code, "not_member");
  EXPECT_FALSE(NextTyping(*e.conn, 200));
}

TEST(TypingE2E, ExplicitStopAndRefreshCancelTheExpiry) {
  ServerProcess server({"--typing-expiry-ms", "600"});
  Register(server, "alice");
  Register(server, "bob");
  Device a = Login(server, "alice");
  Device b = Login(server, "bob");
  int64_t conv = a.conn->Call("open_conversation", {{"username", "bob"}}).result["conversation"]["conversation_id"];
  ASSERT_TRUE(a.conn->Call("typing", {{"conversation_id", conv}, {"state", "start"}}).ok);
  ASSERT_TRUE(a.conn->Call("typing", {{"conversation_id", conv}, {"state", "stop"}}).ok);
  // Bob sees "start" then "stop", or only "stop": each request waits for
  // reads (block lists) that the store's readers may complete in any order,
  // and a "start" whose reads finish after the "stop" published is dropped.
  // Never "stop" then "start".
  std::optional<json> first = NextTyping(*b.conn, 2000);
  ASSERT_TRUE(first);
  if ((*first)["state"] == "start") {
    std::optional<json> second = NextTyping(*b.conn, 2000);
    ASSERT_TRUE(second);
    EXPECT_EQ((*second)["state"], "stop");
  } else {
    EXPECT_EQ((*first)["state"], "stop");
  }
  std::optional<json> more = NextTyping(*b.conn, 1000);
  EXPECT_FALSE(more) << "after the stop (a stale start, or a second stop at the expiry): " << more->dump();
}

TEST(TypingE2E, NeverReachesABlockedUserInEitherDirection) {
  ServerProcess server;
  Register(server, "alice");
  Register(server, "bob");
  Device a = Login(server, "alice");
  Device b = Login(server, "bob");
  int64_t conv = a.conn->Call("open_conversation", {{"username", "bob"}}).result["conversation"]["conversation_id"];
  ASSERT_TRUE(a.conn->Call("block", {{"username", "bob"}}).ok);
  ASSERT_TRUE(a.conn->Call("typing", {{"conversation_id", conv}, {"state", "start"}}).ok);
  ASSERT_TRUE(b.conn->Call("typing", {{"conversation_id", conv}, {"state", "start"}}).ok);  // looks fine to bob
  EXPECT_FALSE(NextTyping(*b.conn, 500));
  EXPECT_FALSE(NextTyping(*a.conn, 500));
  ASSERT_TRUE(a.conn->Call("unblock", {{"username", "bob"}}).ok);
  ASSERT_TRUE(b.conn->Call("typing", {{"conversation_id", conv}, {"state", "start"}}).ok);
  EXPECT_TRUE(NextTyping(*a.conn, 2000));
}

TEST(TypingE2E, IsRateLimitedPerDevice) {
  ServerProcess server({"--rate-limit", "typing_per_device=1/3"});
  Register(server, "alice");
  Register(server, "bob");
  Device a = Login(server, "alice");
  int64_t conv = a.conn->Call("open_conversation", {{"username", "bob"}}).result["conversation"]["conversation_id"];
  Reply r;
  for (int i = 0; i < 10 && r.code != "rate_limited"; ++i)
    r = a.conn->Call("typing", {{"conversation_id", conv}, {"state", "start"}});
  EXPECT_EQ(r.code, "rate_limited");
  EXPECT_GT(r.frame.value("retry_after_ms", 0), 0);
}

}  // namespace
}  // namespace parley::testing
