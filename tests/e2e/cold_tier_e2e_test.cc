// The cold tier end to end (issue 12 item 6; docs/operations.md "Cold
// tier"): a real parleyd whose compaction takes messages older than one
// second, every 50 ms. Runs on SQLite, and on PostgreSQL as
// cold_tier_e2e_test_postgres.
//
// - Compacted history pages back identically: every `history` page and
//   every `sync` page reads byte for byte as before the compaction (the
//   texts really left the messages rows: the store says so).
// - A retried send of a compacted message's client id gets its original ack.
// - An edit of a compacted message reaches history; metrics show the work.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "e2e/helpers.h"

namespace parley::testing {
namespace {

constexpr int kMessages = 40;

class ColdTierE2E : public ::testing::Test {
 protected:
  ColdTierE2E() : server_({"--cold-after-s", "1", "--compact-interval-ms", "50"}) {}

  // Every history page of `conv` (pages of 7) and the whole stream, as the
  // server's JSON.
  std::vector<std::string> Reads(Device& d, int64_t conv) {
    std::vector<std::string> out;
    int64_t before = 0;
    for (int guard = 0; guard < 100; ++guard) {
      Reply r = d.conn->Call("history", {{"conversation_id", conv}, {"before", before}, {"limit", 7}});
      EXPECT_TRUE(r.ok) << r.code;
      out.push_back(r.result.dump());
      if (!r.ok || !r.result["has_more"].get<bool>()) break;
      before = r.result["messages"][0]["seq"];
    }
    for (int64_t after = 0;;) {
      Reply r = d.conn->Call("sync", {{"after", after}, {"limit", 9}});
      EXPECT_TRUE(r.ok) << r.code;
      out.push_back(r.result.dump());
      if (!r.ok || !r.result["has_more"].get<bool>()) break;
      after = r.result["next"];
    }
    return out;
  }

  ServerProcess server_;
};

TEST_F(ColdTierE2E, CompactedHistoryPagesBackIdenticallyAndKeepsItsAcksAndEdits) {
  for (const char* u : {"alice", "bob"}) Register(server_, u);
  Device alice = Login(server_, "alice", "a1");
  Device bob = Login(server_, "bob", "b1");
  Reply open = alice.conn->Call("open_conversation", {{"username", "bob"}});
  ASSERT_TRUE(open.ok) << open.code;
  const int64_t conv = open.result["conversation"]["conversation_id"];
  std::vector<json> acks;
  for (int i = 1; i <= kMessages; ++i) {
    Device& from = i % 4 == 0 ? bob : alice;
    std::string body = "message " + std::to_string(i) + " — «grüße» \"quoted\" with some ordinary words in it";
    Reply r = from.conn->Call("send", {{"conversation_id", conv}, {"client_id", "c" + std::to_string(i)},
                                       {"body", body}});
    ASSERT_TRUE(r.ok) << r.code << ": " << r.message;
    acks.push_back(r.result);
  }
  Reply edit = alice.conn->Call("edit_message", {{"conversation_id", conv}, {"seq", 2}, {"client_id", "e2"},
                                                 {"body", "edited before compaction"}});
  ASSERT_TRUE(edit.ok) << edit.code << ": " << edit.message;
  const std::vector<std::string> before_alice = Reads(alice, conv);
  const std::vector<std::string> before_bob = Reads(bob, conv);

  // The compaction step takes them once they are old enough.
  ASSERT_TRUE(Eventually([&] { return StoreCount(server_, "SELECT count(*) FROM messages WHERE cold") == kMessages; },
                         15'000))
      << "every message compacted";
  EXPECT_EQ(StoreCount(server_, "SELECT count(*) FROM messages WHERE body <> ''"), 0) << "no text left in the rows";
  EXPECT_GE(StoreCount(server_, "SELECT count(*) FROM message_blocks"), 1);

  EXPECT_EQ(Reads(alice, conv), before_alice);
  EXPECT_EQ(Reads(bob, conv), before_bob);
  // A device that connects now catches up from the cold texts too.
  Device bob2 = Login(server_, "bob", "b2");
  EXPECT_EQ(Reads(bob2, conv), before_bob);

  // A retry of a compacted message's client id: its original ack.
  Reply retry = alice.conn->Call("send", {{"conversation_id", conv}, {"client_id", "c1"}, {"body", "again"}});
  ASSERT_TRUE(retry.ok) << retry.code;
  EXPECT_EQ(retry.result["seq"], acks[0]["seq"]);
  EXPECT_EQ(retry.result["ts"], acks[0]["ts"]);
  // An edit of a compacted message.
  edit = alice.conn->Call("edit_message", {{"conversation_id", conv}, {"seq", 5}, {"client_id", "e5"},
                                           {"body", "edited after compaction"}});
  ASSERT_TRUE(edit.ok) << edit.code << ": " << edit.message;
  Reply h = bob.conn->Call("history", {{"conversation_id", conv}, {"before", 7}, {"limit", 3}});
  ASSERT_TRUE(h.ok);
  ASSERT_EQ(h.result["messages"].size(), 3u);
  EXPECT_EQ(h.result["messages"][0]["body"], "message 4 — «grüße» \"quoted\" with some ordinary words in it");
  EXPECT_EQ(h.result["messages"][1]["body"], "edited after compaction");

  std::string metrics = HttpGet(server_.port(), "/metrics");
  EXPECT_TRUE(PrometheusFormatProblems(metrics).empty());
  EXPECT_EQ(MetricSum(metrics, "parley_cold_messages_total"), kMessages);
  EXPECT_GE(MetricSum(metrics, "parley_cold_blocks_total"), 1);
  EXPECT_GT(MetricSum(metrics, "parley_cold_bytes_before_total"), MetricSum(metrics, "parley_cold_bytes_after_total"));
  EXPECT_GT(MetricSum(metrics, "parley_cold_bytes_after_total"), 0);
  EXPECT_EQ(MetricSum(metrics, "parley_cold_compaction_failures_total"), 0);
}

}  // namespace
}  // namespace parley::testing
