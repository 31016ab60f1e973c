// End-to-end messaging against a real parleyd: delivery to every device,
// receipts, offline sync, idempotent retries, crash durability, concurrent
// ordering, isolation and history paging.
#include <gtest/gtest.h>

#include <set>
#include <thread>

#include "e2e/helpers.h"

namespace parley::testing {
namespace {

class MessagingE2E : public ::testing::Test {
 protected:
  ServerProcess server_;
};

TEST_F(MessagingE2E, MessageReachesRecipientAndSendersOtherDeviceWithTicksSentDeliveredRead) {
  Register(server_, "alice");
  Register(server_, "bob");
  Device a1 = Login(server_, "alice", "phone");
  Device a2 = Login(server_, "alice", "laptop");
  Device b = Login(server_, "bob", "phone");

  auto ack = a1.conn->Call("send", {{"to", "bob"}, {"client_id", "m-1"}, {"body", "hello bob"}});
  ASSERT_TRUE(ack.ok) << ack.message;  // "sent": durable, with its seq
  int64_t conv = ack.result["conversation_id"];
  int64_t seq = ack.result["seq"];
  EXPECT_EQ(seq, 1);

  auto on_b = WaitEvent(*b.conn, IsMessage(seq));
  ASSERT_TRUE(on_b);
  EXPECT_EQ((*on_b)["message"]["body"], "hello bob");
  EXPECT_EQ((*on_b)["message"]["sender_id"], a1.user_id);
  auto on_a2 = WaitEvent(*a2.conn, IsMessage(seq));
  ASSERT_TRUE(on_a2);
  EXPECT_EQ((*on_a2)["message"]["client_id"], "m-1");

  // Bob's device stores it and says so: Alice's devices see "delivered".
  ASSERT_TRUE(b.conn->Call("receipt", {{"items", {{{"conversation_id", conv}, {"delivered", seq}}}}}).ok);
  for (Device* d : {&a1, &a2}) {
    auto r = WaitEvent(*d->conn, IsReceipt(b.user_id, "delivered", seq));
    ASSERT_TRUE(r) << "device " << d->device_id << " saw no delivered receipt";
    EXPECT_EQ((*r)["read"], 0);
  }
  // Bob reads it: "read".
  ASSERT_TRUE(b.conn->Call("receipt", {{"items", {{{"conversation_id", conv}, {"read", seq}}}}}).ok);
  for (Device* d : {&a1, &a2}) ASSERT_TRUE(WaitEvent(*d->conn, IsReceipt(b.user_id, "read", seq)));

  // The same ticks through sync, for a device that was not watching.
  auto events = SyncAll(*a2.conn, 0);
  int64_t delivered = 0, read = 0;
  for (auto& e : events)
    if (e["kind"] == "receipt" && e["user_id"] == b.user_id) {
      delivered = std::max<int64_t>(delivered, e["delivered"]);
      read = std::max<int64_t>(read, e["read"]);
    }
  EXPECT_EQ(delivered, seq);
  EXPECT_EQ(read, seq);
}

TEST_F(MessagingE2E, OfflineRecipientSyncsFiveHundredMessagesExactlyOnceInOrder) {
  Register(server_, "alice");
  Register(server_, "bob");
  Device b = Login(server_, "bob");
  int64_t b_cursor = b.head;
  b.conn.reset();  // Bob goes offline
  Device a = Login(server_, "alice");

  constexpr int kCount = 500;
  std::vector<int64_t> ids;
  for (int i = 0; i < kCount; ++i)
    ids.push_back(a.conn->Start("send", {{"to", "bob"}, {"client_id", "c" + std::to_string(i)},
                                         {"body", "message " + std::to_string(i)}}));
  int64_t conv = 0;
  for (int i = 0; i < kCount; ++i) {
    auto r = a.conn->Await(ids[i]);
    ASSERT_TRUE(r.ok) << r.message;
    EXPECT_EQ(r.result["seq"], i + 1);  // compose order kept
    conv = r.result["conversation_id"];
  }

  Device b2 = Reconnect(server_, b);
  auto events = SyncAll(*b2.conn, b_cursor, 100);
  std::vector<int64_t> seqs;
  std::set<int64_t> user_seqs;
  int64_t prev_user_seq = b_cursor;
  for (auto& e : events) {
    EXPECT_EQ(e["user_seq"], prev_user_seq + 1) << "gap or duplicate in the user stream";
    prev_user_seq = e["user_seq"];
    if (e["kind"] == "message") {
      seqs.push_back(e["message"]["seq"]);
      EXPECT_EQ(e["message"]["body"], "message " + std::to_string(seqs.size() - 1));
    }
  }
  ASSERT_EQ(seqs.size(), static_cast<size_t>(kCount));
  for (int i = 0; i < kCount; ++i) EXPECT_EQ(seqs[i], i + 1);
  ASSERT_TRUE(b2.conn->Call("ack", {{"user_seq", prev_user_seq}}).ok);

  ASSERT_TRUE(b2.conn->Call("receipt", {{"items", {{{"conversation_id", conv}, {"delivered", kCount}}}}}).ok);
  ASSERT_TRUE(WaitEvent(*a.conn, IsReceipt(b.user_id, "delivered", kCount)));
  ASSERT_TRUE(b2.conn->Call("receipt", {{"items", {{{"conversation_id", conv}, {"read", kCount}}}}}).ok);
  ASSERT_TRUE(WaitEvent(*a.conn, IsReceipt(b.user_id, "read", kCount)));

  // The stored cursor: a plain sync (no "after") starts after what was acked.
  auto r = b2.conn->Call("sync");
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.result["after"], prev_user_seq);
}

TEST_F(MessagingE2E, SameClientIdFiveTimesAcrossReconnectAndRestartIsOneMessage) {
  Register(server_, "alice");
  Register(server_, "bob");
  Device a = Login(server_, "alice");
  json send = {{"to", "bob"}, {"client_id", "retry-me"}, {"body", "once"}};
  auto first = a.conn->Call("send", send);
  ASSERT_TRUE(first.ok);
  int64_t seq = first.result["seq"];
  EXPECT_EQ(a.conn->Call("send", send).result["seq"], seq);
  EXPECT_EQ(a.conn->Call("send", send).result["seq"], seq);
  Device a_re = Reconnect(server_, a);
  EXPECT_EQ(a_re.conn->Call("send", send).result["seq"], seq);
  a_re.conn.reset();
  a.conn.reset();
  server_.Restart();
  Device a_after = Reconnect(server_, a);
  auto last = a_after.conn->Call("send", send);
  ASSERT_TRUE(last.ok);
  EXPECT_EQ(last.result["seq"], seq);
  EXPECT_EQ(last.result["duplicate"], true);
  EXPECT_EQ(last.result["ts"], first.result["ts"]);
  auto h = a_after.conn->Call("history", {{"conversation_id", first.result["conversation_id"]}});
  ASSERT_TRUE(h.ok);
  EXPECT_EQ(h.result["messages"].size(), 1u);
}

TEST_F(MessagingE2E, KillNineAfterABurstLosesNothingAcked) {
  Register(server_, "alice");
  Register(server_, "bob");
  Device a = Login(server_, "alice");
  std::vector<int64_t> ids;
  for (int i = 0; i < 300; ++i)
    ids.push_back(a.conn->Start("send", {{"to", "bob"}, {"client_id", "k" + std::to_string(i)}, {"body", "x"}}));
  // Kill as soon as the first 200 acks are in, with the rest still in flight.
  std::vector<int64_t> acked;
  int64_t conv = 0;
  for (int i = 0; i < 200; ++i) {
    auto r = a.conn->Await(ids[i]);
    ASSERT_TRUE(r.ok);
    acked.push_back(r.result["seq"]);
    conv = r.result["conversation_id"];
  }
  server_.Kill9();
  for (size_t i = 200; i < ids.size(); ++i) {
    auto r = a.conn->Await(ids[i], 3000);
    if (r.ok) acked.push_back(r.result["seq"]);
  }
  a.conn.reset();
  server_.Start();
  Device b = Login(server_, "bob");
  std::vector<int64_t> stored;
  int64_t before = 0;
  while (true) {
    auto h = b.conn->Call("history", {{"conversation_id", conv}, {"before", before}, {"limit", 200}});
    ASSERT_TRUE(h.ok) << h.message;
    auto& msgs = h.result["messages"];
    for (auto it = msgs.rbegin(); it != msgs.rend(); ++it) stored.push_back((*it)["seq"]);
    if (!h.result["has_more"].get<bool>()) break;
    before = msgs[0]["seq"];
  }
  std::reverse(stored.begin(), stored.end());
  // Gapless from 1, and every acked seq is there.
  for (size_t i = 0; i < stored.size(); ++i) ASSERT_EQ(stored[i], static_cast<int64_t>(i + 1));
  std::set<int64_t> have(stored.begin(), stored.end());
  for (int64_t s : acked) EXPECT_TRUE(have.count(s)) << "acked seq " << s << " lost";
  EXPECT_GE(stored.size(), acked.size());
}

TEST_F(MessagingE2E, TwoDevicesSendingConcurrentlyGetGaplessSeqsAndTheSameOrderEverywhere) {
  Register(server_, "alice");
  Register(server_, "bob");
  Device a = Login(server_, "alice");
  Device b = Login(server_, "bob");
  auto open = a.conn->Call("open_conversation", {{"username", "bob"}});
  ASSERT_TRUE(open.ok);
  int64_t conv = open.result["conversation"]["conversation_id"];
  constexpr int kEach = 1000;
  auto blast = [&](Device& d, const std::string& prefix, std::vector<int64_t>* seqs) {
    std::vector<int64_t> ids;
    for (int i = 0; i < kEach; ++i)
      ids.push_back(d.conn->Start("send", {{"conversation_id", conv}, {"client_id", prefix + std::to_string(i)},
                                           {"body", prefix + std::to_string(i)}}));
    for (auto id : ids) {
      auto r = d.conn->Await(id, 30000);
      ASSERT_TRUE(r.ok) << r.message;
      seqs->push_back(r.result["seq"]);
    }
  };
  std::vector<int64_t> sa, sb;
  std::thread ta([&] { blast(a, "a", &sa); });
  std::thread tb([&] { blast(b, "b", &sb); });
  ta.join();
  tb.join();
  std::set<int64_t> all(sa.begin(), sa.end());
  all.insert(sb.begin(), sb.end());
  ASSERT_EQ(all.size(), 2u * kEach) << "duplicate seqs";
  EXPECT_EQ(*all.begin(), 1);
  EXPECT_EQ(*all.rbegin(), 2 * kEach);
  EXPECT_TRUE(std::is_sorted(sa.begin(), sa.end()));  // each device's compose order
  EXPECT_TRUE(std::is_sorted(sb.begin(), sb.end()));
  // Every device sees the same order: (seq -> client id) agrees in both streams.
  auto order = [&](Device& d) {
    std::map<int64_t, std::string> m;
    for (auto& e : SyncAll(*d.conn, 0, 1000))
      if (e["kind"] == "message") m[e["message"]["seq"]] = e["message"]["client_id"];
    return m;
  };
  auto oa = order(a), ob = order(b);
  EXPECT_EQ(oa.size(), 2u * kEach);
  EXPECT_EQ(oa, ob);
}

TEST_F(MessagingE2E, OutsiderCanNeitherReadNorSend) {
  Register(server_, "alice");
  Register(server_, "bob");
  Register(server_, "eve");
  Device a = Login(server_, "alice");
  Device e = Login(server_, "eve");
  auto ack = a.conn->Call("send", {{"to", "bob"}, {"client_id", "s"}, {"body", "secret"}});
  ASSERT_TRUE(ack.ok);
  int64_t conv = ack.result["conversation_id"];
  auto h = e.conn->Call("history", {{"conversation_id", conv}});
  EXPECT_EQ(h.code, "not_member");
  auto s = e.conn->Call("send", {{"conversation_id", conv}, {"client_id", "x"}, {"body", "let me in"}});
  EXPECT_EQ(s.code, "not_member");
  auto r = e.conn->Call("receipt", {{"items", {{{"conversation_id", conv}, {"read", 1}}}}});
  EXPECT_EQ(r.code, "not_member");
  for (auto& ev : SyncAll(*e.conn, 0)) EXPECT_NE(ev["kind"], "message");
  // Nothing was stored by the attempt.
  auto ha = a.conn->Call("history", {{"conversation_id", conv}});
  EXPECT_EQ(ha.result["messages"].size(), 1u);
}

TEST_F(MessagingE2E, OlderWatermarkChangesNothingAndMakesNoEvent) {
  Register(server_, "alice");
  Register(server_, "bob");
  Device a = Login(server_, "alice");
  Device b = Login(server_, "bob");
  int64_t conv = 0;
  for (int i = 0; i < 5; ++i) {
    auto r = a.conn->Call("send", {{"to", "bob"}, {"client_id", "w" + std::to_string(i)}, {"body", "x"}});
    conv = r.result["conversation_id"];
  }
  ASSERT_TRUE(b.conn->Call("receipt", {{"items", {{{"conversation_id", conv}, {"read", 4}}}}}).ok);
  ASSERT_TRUE(WaitEvent(*a.conn, IsReceipt(b.user_id, "read", 4)));
  auto before = SyncAll(*a.conn, 0).size();
  ASSERT_TRUE(b.conn->Call("receipt", {{"items", {{{"conversation_id", conv}, {"read", 2}, {"delivered", 3}}}}}).ok);
  // A later, real change proves the older one made no event in between.
  ASSERT_TRUE(b.conn->Call("receipt", {{"items", {{{"conversation_id", conv}, {"read", 5}}}}}).ok);
  auto next = WaitEvent(*a.conn, [&](const json& e) { return e["kind"] == "receipt"; });
  ASSERT_TRUE(next);
  EXPECT_EQ((*next)["read"], 5);
  EXPECT_EQ(SyncAll(*a.conn, 0).size(), before + 1);
}

TEST_F(MessagingE2E, PagingBackwardsFromNewestReturnsWholeHistoryOnceInOrder) {
  Register(server_, "alice");
  Register(server_, "bob");
  Device a = Login(server_, "alice");
  std::vector<int64_t> ids;
  for (int i = 0; i < 237; ++i)
    ids.push_back(a.conn->Start("send", {{"to", "bob"}, {"client_id", "p" + std::to_string(i)},
                                         {"body", std::to_string(i)}}));
  int64_t conv = 0;
  for (auto id : ids) conv = a.conn->Await(id).result["conversation_id"];
  std::vector<int64_t> seen;
  int64_t before = 0;
  int pages = 0;
  while (true) {
    auto h = a.conn->Call("history", {{"conversation_id", conv}, {"before", before}, {"limit", 50}});
    ASSERT_TRUE(h.ok);
    auto& msgs = h.result["messages"];
    ASSERT_LE(msgs.size(), 50u);
    for (size_t i = 1; i < msgs.size(); ++i) EXPECT_LT(msgs[i - 1]["seq"], msgs[i]["seq"]);
    for (auto it = msgs.rbegin(); it != msgs.rend(); ++it) seen.push_back((*it)["seq"]);
    ++pages;
    if (!h.result["has_more"].get<bool>()) break;
    before = msgs[0]["seq"];
  }
  EXPECT_EQ(pages, 5);
  ASSERT_EQ(seen.size(), 237u);
  for (size_t i = 0; i < seen.size(); ++i) EXPECT_EQ(seen[i], static_cast<int64_t>(237 - i));
}

}  // namespace
}  // namespace parley::testing
