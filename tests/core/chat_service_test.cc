// ChatService against a real SQLite store in a temporary directory and the
// in-process fabric, with no sockets: frames go in through OnFrame and come
// out at FakeSinks. The core executor is drained by the test thread itself.
#include "core/chat_service.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/core_test_util.h"

namespace parley::core {
namespace {

using nlohmann::json;
using testing::ChatServiceTest;

TEST_F(ChatServiceTest, SendIsAckedAndReachesEveryDeviceOfBothMembers) {
  Conn a1 = LoggedIn("alice");
  Conn a2 = LoggedIn("alice", false);
  Conn b = LoggedIn("bob");
  auto ack = Call(a1, "send", {{"to", "bob"}, {"client_id", "m1"}, {"body", "hello"}});
  ASSERT_EQ(ack["type"], "response") << ack.dump();
  EXPECT_EQ(ack["result"]["seq"], 1);
  EXPECT_EQ(ack["result"]["duplicate"], false);
  auto is_msg = [](const json& f) { return f["type"] == "event" && f["event"]["kind"] == "message"; };
  for (Conn* c : {&a1, &a2, &b}) {
    ASSERT_TRUE(exec_.RunUntil([&] { return c->sink->Count(is_msg) == 1; }));
    auto e = c->sink->Find(is_msg);
    EXPECT_EQ((*e)["event"]["message"]["body"], "hello");
    EXPECT_GT((*e)["event"]["user_seq"], 0);
  }
}

TEST_F(ChatServiceTest, RetryWithSameClientIdGetsTheOriginalAck) {
  Conn a = LoggedIn("alice");
  LoggedIn("bob");
  auto first = Call(a, "send", {{"to", "bob"}, {"client_id", "same"}, {"body", "x"}});
  auto again = Call(a, "send", {{"to", "bob"}, {"client_id", "same"}, {"body", "x"}});
  EXPECT_EQ(first["result"]["seq"], again["result"]["seq"]);
  EXPECT_EQ(again["result"]["duplicate"], true);
  EXPECT_EQ(first["result"]["ts"], again["result"]["ts"]);
}

TEST_F(ChatServiceTest, OutsiderCanNeitherSendNorReadHistory) {
  Conn a = LoggedIn("alice");
  LoggedIn("bob");
  Conn eve = LoggedIn("eve");
  auto ack = Call(a, "send", {{"to", "bob"}, {"client_id", "m1"}, {"body", "secret"}});
  int64_t conv = ack["result"]["conversation_id"];
  auto s = Call(eve, "send", {{"conversation_id", conv}, {"client_id", "x"}, {"body", "hi"}});
  EXPECT_EQ(s["code"], "not_member");
  auto h = Call(eve, "history", {{"conversation_id", conv}});
  EXPECT_EQ(h["code"], "not_member");
  EXPECT_EQ(eve.sink->Count([](const json& f) { return f["type"] == "event" && f["event"]["kind"] == "message"; }), 0u);
}

TEST_F(ChatServiceTest, RequestsBeforeAuthenticationAreRefused) {
  Conn c = Open();
  EXPECT_EQ(Call(c, "send", {{"to", "bob"}, {"client_id", "x"}, {"body", "y"}})["code"], "not_authenticated");
  EXPECT_EQ(Call(c, "sync")["code"], "not_authenticated");
  EXPECT_EQ(Call(c, "auth", {{"token", "nope"}})["code"], "invalid_token");
  EXPECT_EQ(Call(c, "ping")["type"], "response");
}

TEST_F(ChatServiceTest, ShutdownRefusesNewRequestsAndClosesWithRetryAfter) {
  Conn a = LoggedIn("alice");
  bool done = false;
  chat_->Shutdown([&] { done = true; });
  ASSERT_TRUE(exec_.RunUntil([&] { return done; }));
  EXPECT_EQ(a.sink->close_code, 4001);
  EXPECT_EQ(Call(a, "ping")["code"], "shutting_down");
}

}  // namespace
}  // namespace parley::core
