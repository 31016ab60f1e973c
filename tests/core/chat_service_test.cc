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

bool IsReceiptEvent(const json& f) { return f["type"] == "event" && f["event"]["kind"] == "receipt"; }

TEST_F(ChatServiceTest, AReceiptThatDoesNotMoveTheAggregatePublishesNothing) {
  Conn a = LoggedIn("alice");
  Conn b1 = LoggedIn("bob");
  Conn b2 = LoggedIn("bob", false);
  int64_t conv = 0;
  for (int i = 0; i < 3; ++i)
    conv = Call(a, "send", {{"to", "bob"}, {"client_id", "m" + std::to_string(i)}, {"body", "x"}})["result"]["conversation_id"];
  ASSERT_EQ(Call(b1, "receipt", {{"items", {{{"conversation_id", conv}, {"delivered", 3}}}}})["type"], "response");
  ASSERT_TRUE(exec_.RunUntil([&] { return a.sink->Count(IsReceiptEvent) == 1; }));
  auto first = a.sink->Find(IsReceiptEvent);
  EXPECT_EQ((*first)["event"]["delivered"], 3) << first->dump();
  // bob's other device reports less, and b1 repeats an older watermark: the
  // user's aggregate (the maximum over devices) does not move, so no event.
  ASSERT_EQ(Call(b2, "receipt", {{"items", {{{"conversation_id", conv}, {"delivered", 2}}}}})["type"], "response");
  ASSERT_EQ(Call(b1, "receipt", {{"items", {{{"conversation_id", conv}, {"delivered", 1}}}}})["type"], "response");
  // A later real change is the next event alice sees: nothing came between.
  ASSERT_EQ(Call(b2, "receipt", {{"items", {{{"conversation_id", conv}, {"read", 3}}}}})["type"], "response");
  ASSERT_TRUE(exec_.RunUntil([&] { return a.sink->Count(IsReceiptEvent) == 2; }));
  std::vector<json> receipts;
  for (auto& f : a.sink->frames)
    if (IsReceiptEvent(f)) receipts.push_back(f["event"]);
  ASSERT_EQ(receipts.size(), 2u);
  EXPECT_EQ(receipts[1]["read"], 3) << receipts[1].dump();
}

TEST_F(ChatServiceTest, AckStoresTheCursorMonotonicallyAndSyncStartsThere) {
  Conn a = LoggedIn("alice");
  Conn b = Open();
  ASSERT_EQ(Call(b, "register", {{"username", "bob"}, {"password", "password123"}})["type"], "response");
  std::string token = Call(b, "login", {{"username", "bob"}, {"password", "password123"}, {"device_name", "d"}})["result"]["token"];
  for (int i = 0; i < 5; ++i)
    ASSERT_EQ(Call(a, "send", {{"to", "bob"}, {"client_id", "m" + std::to_string(i)}, {"body", "x"}})["type"], "response");
  auto all = Call(b, "sync", {{"after", 0}})["result"];
  int64_t head = all["head"];
  ASSERT_GE(head, 5);
  EXPECT_EQ(Call(b, "ack", {{"user_seq", head - 2}})["result"]["cursor"], head - 2);
  // An older ack changes nothing.
  EXPECT_EQ(Call(b, "ack", {{"user_seq", 1}})["result"]["cursor"], head - 2);
  EXPECT_EQ(Call(b, "ack", {{"user_seq", head + 5}})["code"], "cursor_ahead");
  // A new connection of the same device: auth reports the stored cursor, and
  // sync without `after` returns exactly the two events after it.
  Conn again = Open();
  auto auth = Call(again, "auth", {{"token", token}});
  ASSERT_EQ(auth["type"], "response") << auth.dump();
  EXPECT_EQ(auth["result"]["cursor"], head - 2);
  auto rest = Call(again, "sync")["result"];
  EXPECT_EQ(rest["after"], head - 2);
  ASSERT_EQ(rest["events"].size(), 2u) << rest.dump();
  EXPECT_EQ(rest["events"][0]["user_seq"], head - 1);
  EXPECT_EQ(rest["events"][1]["user_seq"], head);
}

TEST_F(ChatServiceTest, UnlinkClosesTheDevicesConnectionsAndRevokesItsToken) {
  Conn phone = Open();
  ASSERT_EQ(Call(phone, "register", {{"username", "alice"}, {"password", "password123"}})["type"], "response");
  auto login = Call(phone, "login", {{"username", "alice"}, {"password", "password123"}, {"device_name", "phone"}});
  std::string phone_token = login["result"]["token"];
  int64_t phone_id = login["result"]["device_id"];
  Conn phone2 = Open();
  ASSERT_EQ(Call(phone2, "auth", {{"token", phone_token}})["type"], "response");
  Conn laptop = LoggedIn("alice", false);
  auto r = Call(laptop, "unlink_device", {{"device_id", phone_id}});
  ASSERT_EQ(r["type"], "response") << r.dump();
  ASSERT_TRUE(exec_.RunUntil([&] { return phone.sink->close_code != 0 && phone2.sink->close_code != 0; }));
  EXPECT_EQ(phone.sink->close_code, 4002);
  EXPECT_EQ(phone2.sink->close_code, 4002);
  EXPECT_EQ(laptop.sink->close_code, 0);
  Conn later = Open();
  EXPECT_EQ(Call(later, "auth", {{"token", phone_token}})["code"], "invalid_token");
  EXPECT_EQ(Call(laptop, "unlink_device", {{"device_id", phone_id}})["code"], "unknown_device");
}

}  // namespace
}  // namespace parley::core
