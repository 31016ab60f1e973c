// Core against a store that fails or delays writes (store/fault_store.h):
// a failed commit is an error to the client and nothing else (no ack, no
// event, no seq taken); a slow commit holds the ack back and never reorders
// acks; a connection that goes away while its commit is slow loses nothing.
// Also the fault switches the checker's self-tests rely on, one by one.
#include <gtest/gtest.h>

#include <algorithm>

#include "core/core_test_util.h"

namespace parley::core {
namespace {

using nlohmann::json;

bool IsMessageEvent(const json& f) { return f["type"] == "event" && f["event"]["kind"] == "message"; }

class StoreFaultTest : public testing::ChatServiceTest {
 protected:
  StoreFaultTest() { with_fault_store_ = true; }

  // alice and bob with a conversation holding one message (m0, seq 1).
  void Pair() {
    a_ = LoggedIn("alice");
    b_ = LoggedIn("bob");
    auto ack = Call(a_, "send", {{"to", "bob"}, {"client_id", "m0"}, {"body", "first"}});
    ASSERT_EQ(ack["type"], "response") << ack.dump();
    conv_ = ack["result"]["conversation_id"];
    ASSERT_TRUE(exec_.RunUntil([&] { return b_.sink->Count(IsMessageEvent) == 1; }));
  }
  // Starts a send without waiting; returns its request id.
  int StartSend(Conn& c, const std::string& client_id) {
    int id = next_id_++;
    json f = {{"v", 1}, {"id", id}, {"type", "send"}, {"conversation_id", conv_}, {"client_id", client_id},
              {"body", "body of " + client_id}};
    chat_->OnFrame(c.client, f.dump());
    return id;
  }
  std::optional<json> Answer(Conn& c, int id) {
    return c.sink->Find([&](const json& f) { return f.value("id", json()) == id; });
  }
  json Sync(Conn& c, int64_t after) { return Call(c, "sync", {{"after", after}, {"limit", 100}}); }

  Conn a_, b_;
  int64_t conv_ = 0;
};

TEST_F(StoreFaultTest, FailedCommitAnswersAnErrorAndNeitherAcksNorPublishes) {
  Pair();
  fault_->FailNextWrites(1, Status(ErrorCode::kUnavailable, "injected: commit failed"));
  auto r = Call(a_, "send", {{"conversation_id", conv_}, {"client_id", "m1"}, {"body", "lost?"}});
  EXPECT_EQ(r["type"], "error") << r.dump();
  EXPECT_EQ(r["code"], "unavailable");
  EXPECT_EQ(r["retryable"], true);
  EXPECT_EQ(r["retry_after_ms"], CoreConfig().unavailable_retry_after_ms) << "a dependency down says when to retry";
  // Let anything in flight settle: nothing reaches bob, no ack reaches alice.
  ASSERT_TRUE(exec_.RunUntil([] { return false; }, 200) == false);
  EXPECT_EQ(b_.sink->Count(IsMessageEvent), 1u);
  EXPECT_EQ(a_.sink->Count([](const json& f) {
              return f["type"] == "response" && f.contains("result") && f["result"].value("client_id", "") == "m1";
            }),
            0u);
  // The retry (same client id) is stored once, at the next seq: the failure took none.
  auto again = Call(a_, "send", {{"conversation_id", conv_}, {"client_id", "m1"}, {"body", "lost?"}});
  ASSERT_EQ(again["type"], "response") << again.dump();
  EXPECT_EQ(again["result"]["seq"], 2);
  EXPECT_EQ(again["result"]["duplicate"], false);
  ASSERT_TRUE(exec_.RunUntil([&] { return b_.sink->Count(IsMessageEvent) == 2; }));
  auto h = Call(b_, "history", {{"conversation_id", conv_}});
  ASSERT_EQ(h["result"]["messages"].size(), 2u) << h.dump();
  EXPECT_EQ(h["result"]["messages"][1]["client_id"], "m1");
}

TEST_F(StoreFaultTest, FailedReceiptCommitAnswersAnErrorAndPublishesNoReceipt) {
  Pair();
  auto is_receipt = [](const json& f) { return f["type"] == "event" && f["event"]["kind"] == "receipt"; };
  size_t before = a_.sink->Count(is_receipt);
  fault_->FailNextWrites(1, Status(ErrorCode::kStorageFull, "injected: disk full"));
  auto r = Call(b_, "receipt", {{"items", json::array({{{"conversation_id", conv_}, {"read", 1}}})}});
  EXPECT_EQ(r["type"], "error") << r.dump();
  EXPECT_EQ(r["code"], "storage_full");
  ASSERT_FALSE(exec_.RunUntil([] { return false; }, 200));
  EXPECT_EQ(a_.sink->Count(is_receipt), before);
  auto ok = Call(b_, "receipt", {{"items", json::array({{{"conversation_id", conv_}, {"read", 1}}})}});
  EXPECT_EQ(ok["type"], "response") << ok.dump();
  ASSERT_TRUE(exec_.RunUntil([&] { return a_.sink->Count(is_receipt) == before + 1; }));
}

TEST_F(StoreFaultTest, SlowCommitHoldsAcksBackAndNeverReordersThem) {
  Pair();
  fault_->HoldWrites();
  std::vector<int> ids;
  for (int i = 1; i <= 3; ++i) ids.push_back(StartSend(a_, "m" + std::to_string(i)));
  // All three are durable in the backend, none is answered or published yet.
  ASSERT_TRUE(exec_.RunUntil([&] { return fault_->HeldWrites() == 3; }));
  for (int id : ids) EXPECT_FALSE(Answer(a_, id).has_value());
  EXPECT_EQ(b_.sink->Count(IsMessageEvent), 1u);
  fault_->ReleaseWrites();
  ASSERT_TRUE(exec_.RunUntil([&] { return Answer(a_, ids.back()).has_value(); }));
  // Acks in send order, seqs ascending with no gap; bob's events in seq order.
  std::vector<int64_t> ack_order, seqs;
  {
    std::lock_guard lock(a_.sink->mu);
    for (const auto& f : a_.sink->frames) {
      if (f["type"] != "response" || !f.contains("result") || !f["result"].contains("client_id")) continue;
      if (f["result"]["client_id"] == "m0") continue;
      ack_order.push_back(f["id"]);
      seqs.push_back(f["result"]["seq"]);
    }
  }
  EXPECT_EQ(ack_order, (std::vector<int64_t>{ids[0], ids[1], ids[2]}));
  EXPECT_EQ(seqs, (std::vector<int64_t>{2, 3, 4}));
  ASSERT_TRUE(exec_.RunUntil([&] { return b_.sink->Count(IsMessageEvent) == 4; }));
  std::vector<int64_t> seen;
  {
    std::lock_guard lock(b_.sink->mu);
    for (const auto& f : b_.sink->frames)
      if (IsMessageEvent(f)) seen.push_back(f["event"]["message"]["seq"]);
  }
  EXPECT_EQ(seen, (std::vector<int64_t>{1, 2, 3, 4}));
}

TEST_F(StoreFaultTest, DisconnectDuringSlowCommitLosesNothingForTheRecipient) {
  Pair();
  fault_->HoldWrites();
  int id = StartSend(a_, "m1");
  ASSERT_TRUE(exec_.RunUntil([&] { return fault_->HeldWrites() == 1; }));
  chat_->OnDisconnect(a_.client);
  fault_->ReleaseWrites();
  ASSERT_TRUE(exec_.RunUntil([&] { return b_.sink->Count(IsMessageEvent) == 2; }));
  EXPECT_FALSE(Answer(a_, id).has_value());  // the connection is gone: no frame to it
  // The sender's next device sees the message in its stream, and a retry
  // with the same client id gets the original seq back.
  Conn a2 = LoggedIn("alice", false);
  auto again = Call(a2, "send", {{"conversation_id", conv_}, {"client_id", "m1"}, {"body", "body of m1"}});
  EXPECT_EQ(again["result"]["seq"], 2);
  EXPECT_EQ(again["result"]["duplicate"], true);
}

TEST(FaultSwitchTest, ParsesNameAndCountAndRejectsBadSpecs) {
  auto ok = store::ParseFaultSwitch("skip_dedup@3");
  ASSERT_TRUE(ok.has_value());
  EXPECT_EQ(ok->kind, store::FaultKind::kSkipDedup);
  EXPECT_EQ(ok->n, 3);
  EXPECT_STREQ(store::FaultKindName(store::FaultKind::kCrashAfterAppend), "crash_after_append");
  for (const char* bad : {"skip_dedup", "skip_dedup@", "skip_dedup@0", "skip_dedup@-1", "nope@1", "@1", "skip_dedup@1x"}) {
    auto r = store::ParseFaultSwitch(bad);
    ASSERT_FALSE(r.has_value()) << bad;
    EXPECT_NE(r.error().message().find("ack_before_commit"), std::string::npos) << r.error().message();
  }
}

class SkipDedupSwitchTest : public StoreFaultTest {
 protected:
  SkipDedupSwitchTest() { switches_ = {{store::FaultKind::kSkipDedup, 3}}; }
};

// AppendMessage calls: m0 (1), m1 (2), m1 again (3) -> stored twice.
TEST_F(SkipDedupSwitchTest, StoresTheNthAppendAgainUnderTheSameClientId) {
  Pair();
  auto first = Call(a_, "send", {{"conversation_id", conv_}, {"client_id", "m1"}, {"body", "x"}});
  auto again = Call(a_, "send", {{"conversation_id", conv_}, {"client_id", "m1"}, {"body", "x"}});
  EXPECT_EQ(first["result"]["seq"], 2);
  EXPECT_EQ(again["result"]["seq"], 3);
  EXPECT_EQ(again["result"]["duplicate"], false);
  EXPECT_EQ(again["result"]["client_id"], "m1");
  auto h = Call(b_, "history", {{"conversation_id", conv_}});
  ASSERT_EQ(h["result"]["messages"].size(), 3u);
  EXPECT_EQ(h["result"]["messages"][1]["client_id"], "m1");
  EXPECT_EQ(h["result"]["messages"][2]["client_id"], "m1");
  EXPECT_EQ(fault_->Fired(store::FaultKind::kSkipDedup), 1);
}

class DropEntrySwitchTest : public StoreFaultTest {
 protected:
  DropEntrySwitchTest() { switches_ = {{store::FaultKind::kDropStreamEntry, 2}}; }
};

// Recipient entries: m0 -> bob (1), m1 -> bob (2, dropped), m2 -> bob (3).
TEST_F(DropEntrySwitchTest, TheNthRecipientEntryNeverReachesTheRecipient) {
  Pair();
  Call(a_, "send", {{"conversation_id", conv_}, {"client_id", "m1"}, {"body", "x"}});
  Call(a_, "send", {{"conversation_id", conv_}, {"client_id", "m2"}, {"body", "y"}});
  ASSERT_TRUE(exec_.RunUntil([&] { return b_.sink->Count(IsMessageEvent) == 2; }));
  auto s = Sync(b_, 0);
  std::vector<int64_t> msg_seqs, user_seqs;
  for (const auto& e : s["result"]["events"]) {
    user_seqs.push_back(e["user_seq"]);
    if (e["kind"] == "message") msg_seqs.push_back(e["message"]["seq"]);
  }
  EXPECT_EQ(msg_seqs, (std::vector<int64_t>{1, 3}));
  ASSERT_GE(user_seqs.size(), 2u);
  EXPECT_EQ(user_seqs.back() - user_seqs.front() + 1, static_cast<int64_t>(user_seqs.size()) + 1);  // one hole
  EXPECT_EQ(fault_->Fired(store::FaultKind::kDropStreamEntry), 1);
}

class OutOfOrderSwitchTest : public StoreFaultTest {
 protected:
  OutOfOrderSwitchTest() { switches_ = {{store::FaultKind::kOutOfOrder, 2}}; }
};

TEST_F(OutOfOrderSwitchTest, SyncDeliversTheNthAndNextEntryWithMessagesSwapped) {
  Pair();
  Call(a_, "send", {{"conversation_id", conv_}, {"client_id", "m1"}, {"body", "x"}});
  Call(a_, "send", {{"conversation_id", conv_}, {"client_id", "m2"}, {"body", "y"}});
  auto s = Sync(b_, 0);
  std::vector<int64_t> msg_seqs;
  for (const auto& e : s["result"]["events"])
    if (e["kind"] == "message") msg_seqs.push_back(e["message"]["seq"]);
  EXPECT_EQ(msg_seqs, (std::vector<int64_t>{1, 3, 2}));
  EXPECT_EQ(fault_->Fired(store::FaultKind::kOutOfOrder), 1);
}

class AckBeforeCommitSwitchTest : public StoreFaultTest {
 protected:
  AckBeforeCommitSwitchTest() { switches_ = {{store::FaultKind::kAckBeforeCommit, 2}}; }
};

TEST_F(AckBeforeCommitSwitchTest, TheNthSendIsAckedButNeverStored) {
  Pair();
  auto ack = Call(a_, "send", {{"conversation_id", conv_}, {"client_id", "m1"}, {"body", "x"}});
  ASSERT_EQ(ack["type"], "response") << ack.dump();
  EXPECT_EQ(ack["result"]["seq"], 2);
  auto h = Call(b_, "history", {{"conversation_id", conv_}});
  EXPECT_EQ(h["result"]["messages"].size(), 1u) << h.dump();
}

class HoldSnapshotsSwitchTest : public StoreFaultTest {
 protected:
  HoldSnapshotsSwitchTest() { switches_ = {{store::FaultKind::kHoldSnapshots, 2}}; }
  int StartSnapshot(Conn& c) {
    int id = next_id_++;
    chat_->OnFrame(c.client, json({{"v", 1}, {"id", id}, {"type", "snapshot"}, {"messages", 0}}).dump());
    return id;
  }
};

// Snapshots: the first (1) is answered; from the second on they wait for the
// next send to reach the store, which answers them in order before its own
// ack and ends the hold (a later snapshot is answered at once).
TEST_F(HoldSnapshotsSwitchTest, SnapshotsFromTheNthWaitForTheNextSendAndAreAnsweredBeforeIt) {
  Pair();
  const int first = StartSnapshot(a_);
  ASSERT_TRUE(exec_.RunUntil([&] { return Answer(a_, first).has_value(); }));
  const int second = StartSnapshot(a_), third = StartSnapshot(a_);
  EXPECT_FALSE(exec_.RunUntil([&] { return Answer(a_, second).has_value(); }, 300));
  EXPECT_FALSE(Answer(a_, third).has_value());
  EXPECT_EQ(fault_->Fired(store::FaultKind::kHoldSnapshots), 1);

  const int send = StartSend(a_, "m1");
  ASSERT_TRUE(exec_.RunUntil([&] { return Answer(a_, send).has_value(); }));
  ASSERT_TRUE(Answer(a_, second).has_value());
  ASSERT_TRUE(Answer(a_, third).has_value());
  EXPECT_EQ((*Answer(a_, second))["type"], "response");
  std::vector<int64_t> order;  // request ids of the answers, as they came
  {
    std::lock_guard lock(a_.sink->mu);
    for (const auto& f : a_.sink->frames)
      if (f.contains("id") && f["id"].is_number()) order.push_back(f["id"]);
  }
  auto at = [&](int id) { return std::find(order.begin(), order.end(), id) - order.begin(); };
  EXPECT_LT(at(second), at(third));
  EXPECT_LT(at(third), at(send)) << "held snapshots are answered before the send that released them";

  const int later = StartSnapshot(a_);
  EXPECT_TRUE(exec_.RunUntil([&] { return Answer(a_, later).has_value(); }));
}

}  // namespace
}  // namespace parley::core
