// Message search end to end (issue 12; docs/protocol.md "search_messages"):
// a real parleyd whose background indexer runs every 20 ms; alice and bob
// share a conversation, alice and carol another. Search finds words in
// one's own conversations only, newest first and paged, exactly as history
// shows the messages; never a message withheld by a block, deleted for
// everyone, or its text before an edit; bad input gets clear errors. Runs on
// SQLite, and on PostgreSQL as search_e2e_test_postgres.
#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <thread>

#include "e2e/helpers.h"

namespace parley::testing {
namespace {

class SearchE2E : public ::testing::Test {
 protected:
  SearchE2E() : server_({"--search-index-interval-ms", "20"}) {}

  void SetUp() override {
    for (const char* u : {"alice", "bob", "carol"}) Register(server_, u);
    a_ = Login(server_, "alice");
    b_ = Login(server_, "bob");
    c_ = Login(server_, "carol");
    ab_ = a_.conn->Call("open_conversation", {{"username", "bob"}}).result["conversation"]["conversation_id"];
    ac_ = a_.conn->Call("open_conversation", {{"username", "carol"}}).result["conversation"]["conversation_id"];
  }

  int64_t Send(Device& d, int64_t conv, const std::string& client_id, const std::string& body) {
    auto r = d.conn->Call("send", {{"conversation_id", conv}, {"client_id", client_id}, {"body", body}});
    EXPECT_TRUE(r.ok) << r.code << ": " << r.message;
    return r.ok ? r.result["seq"].get<int64_t>() : 0;
  }
  Reply Search(Device& d, json args) { return d.conn->Call("search_messages", std::move(args)); }
  // The seqs a search finds, after waiting (up to 5 s) for the index to
  // give `expected` (the indexer runs in the background).
  std::vector<int64_t> SearchUntil(Device& d, const std::string& query, std::vector<int64_t> expected) {
    std::vector<int64_t> got;
    for (auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);;) {
      auto r = Search(d, {{"query", query}});
      EXPECT_TRUE(r.ok) << r.code << ": " << r.message;
      got.clear();
      for (const auto& m : r.result["messages"]) got.push_back(m["seq"]);
      if (got == expected || std::chrono::steady_clock::now() > deadline) return got;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }

  ServerProcess server_;
  Device a_, b_, c_;
  int64_t ab_ = 0, ac_ = 0;
};

TEST_F(SearchE2E, FindsOwnConversationsOnlyNewestFirstPagedAsHistoryShowsThem) {
  int64_t s1 = Send(a_, ab_, "m1", "Lunch at noon?");
  int64_t s2 = Send(b_, ab_, "m2", "LUNCH moved to one");
  Send(a_, ab_, "m3", "see you");
  Send(c_, ac_, "m4", "lunch with alice");
  EXPECT_EQ(SearchUntil(b_, "lunch", {s2, s1}), (std::vector<int64_t>{s2, s1})) << "carol's never";
  EXPECT_EQ(SearchUntil(c_, "lunch", {1}), (std::vector<int64_t>{1}));
  // Two pages of one.
  auto p1 = Search(b_, {{"query", "lunch"}, {"limit", 1}});
  ASSERT_TRUE(p1.ok);
  ASSERT_EQ(p1.result["messages"].size(), 1u);
  ASSERT_TRUE(p1.result["next"].is_number());
  auto p2 = Search(b_, {{"query", "lunch"}, {"limit", 1}, {"before", p1.result["next"]}});
  ASSERT_TRUE(p2.ok);
  ASSERT_EQ(p2.result["messages"].size(), 1u);
  EXPECT_EQ(p2.result["messages"][0]["seq"], s1);
  // Each result is the message exactly as history shows it.
  auto h = b_.conn->Call("history", {{"conversation_id", ab_}});
  ASSERT_TRUE(h.ok);
  EXPECT_EQ(p1.result["messages"][0], h.result["messages"][1]);
  EXPECT_EQ(p2.result["messages"][0], h.result["messages"][0]);
  // Restricted to one conversation; one bob is not in is not_member.
  auto in_ab = Search(a_, {{"query", "lunch"}, {"conversation_id", ab_}});
  ASSERT_TRUE(in_ab.ok);
  EXPECT_EQ(in_ab.result["messages"].size(), 2u);
  EXPECT_EQ(Search(b_, {{"query", "lunch"}, {"conversation_id", ac_}}).code, "not_member");
  // The indexer's backlog is a metric, drained by now.
  std::string metrics = HttpGet(server_.port(), "/metrics");
  for (int i = 0; i < 100 && MetricValue(metrics, "parley_search_index_backlog") != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // the gauge follows the step's commit
    metrics = HttpGet(server_.port(), "/metrics");
  }
  EXPECT_EQ(MetricValue(metrics, "parley_search_index_backlog"), 0);
  EXPECT_EQ(MetricValue(metrics, "parley_search_index_lag_milliseconds"), 0);
  EXPECT_GE(MetricValue(metrics, "parley_search_indexed_total"), 4);
}

TEST_F(SearchE2E, NeverMatchesWithheldDeletedOrEditedAwayText) {
  int64_t s1 = Send(a_, ab_, "m1", "apple pie");
  int64_t s2 = Send(a_, ab_, "m2", "cherry tart");
  ASSERT_EQ(SearchUntil(b_, "apple", {s1}), (std::vector<int64_t>{s1}));
  // An edit: the old text never matches again, the new one does.
  auto e = a_.conn->Call("edit_message", {{"conversation_id", ab_}, {"seq", s1}, {"client_id", "e1"}, {"body", "banana bread"}});
  ASSERT_TRUE(e.ok) << e.code;
  EXPECT_TRUE(Search(b_, {{"query", "apple"}}).result["messages"].empty());
  EXPECT_EQ(SearchUntil(b_, "banana", {s1}), (std::vector<int64_t>{s1}));
  // Deleted for everyone: gone at once.
  auto d = a_.conn->Call("delete_message", {{"conversation_id", ab_}, {"seq", s2}, {"for", "everyone"}});
  ASSERT_TRUE(d.ok) << d.code;
  EXPECT_TRUE(Search(b_, {{"query", "cherry"}}).result["messages"].empty());
  // Deleted for me: gone for bob only.
  d = b_.conn->Call("delete_message", {{"conversation_id", ab_}, {"seq", s1}, {"for", "me"}});
  ASSERT_TRUE(d.ok) << d.code;
  EXPECT_TRUE(Search(b_, {{"query", "banana"}}).result["messages"].empty());
  EXPECT_EQ(SearchUntil(a_, "banana", {s1}), (std::vector<int64_t>{s1}));
  // Withheld by a block: alice finds her message once indexed, bob never
  // (also after the unblock).
  ASSERT_TRUE(b_.conn->Call("block", {{"username", "alice"}}).ok);
  int64_t s3 = Send(a_, ab_, "m3", "secret recipe");
  ASSERT_EQ(SearchUntil(a_, "secret", {s3}), (std::vector<int64_t>{s3}));
  EXPECT_TRUE(Search(b_, {{"query", "secret"}}).result["messages"].empty());
  ASSERT_TRUE(b_.conn->Call("unblock", {{"username", "alice"}}).ok);
  EXPECT_TRUE(Search(b_, {{"query", "recipe"}}).result["messages"].empty());
  // For alice it stays "sent" forever: once bob's watermark passes it, her
  // results say so, as history does (nothing said before: that would reveal
  // the block while it lasted).
  EXPECT_FALSE(Search(a_, {{"query", "secret"}}).result.contains("withheld"));
  int64_t s4 = Send(a_, ab_, "m4", "after the block");
  ASSERT_TRUE(b_.conn->Call("receipt", {{"items", {{{"conversation_id", ab_}, {"delivered", s4}}}}}).ok);
  auto found = Search(a_, {{"query", "secret"}});
  ASSERT_TRUE(found.ok);
  EXPECT_EQ(found.result["withheld"], json::parse(R"([{"conversation_id":)" + std::to_string(ab_) +
                                                  R"(,"seq":)" + std::to_string(s3) + "}]"));
  auto h = a_.conn->Call("history", {{"conversation_id", ab_}});
  ASSERT_TRUE(h.ok);
  EXPECT_EQ(h.result["withheld"], json::array({s3}));
}

TEST_F(SearchE2E, BadInputGetsClearErrors) {
  auto code = [&](json args) { return Search(a_, std::move(args)).code; };
  EXPECT_EQ(code(json::object()), "bad_request");                                     // no query
  EXPECT_EQ(code({{"query", ""}}), "bad_request");                                   // empty
  EXPECT_EQ(code({{"query", "   "}}), "bad_request");                                // blank
  EXPECT_EQ(code({{"query", "?!..."}}), "bad_request");                              // no words
  EXPECT_EQ(code({{"query", std::string(257, 'a')}}), "bad_request");                // over 256 bytes
  EXPECT_EQ(code({{"query", "a b c d e f g h i"}}), "bad_request");                  // 9 words
  EXPECT_EQ(code({{"query", 5}}), "bad_request");                                    // not a string
  EXPECT_EQ(code({{"query", "x"}, {"limit", 51}}), "bad_request");                   // page too big
  EXPECT_EQ(code({{"query", "x"}, {"before", -1}}), "bad_request");
  EXPECT_EQ(code({{"query", "x"}, {"conversation_id", 999999}}), "not_member");
  a_.conn->SendRaw("{\"v\":1,\"id\":\"u\",\"type\":\"search_messages\",\"query\":\"\xc3\x28\"}", /*binary=*/true);
  auto err = a_.conn->NextUnmatchedError(5000);
  ASSERT_TRUE(err.has_value());
  EXPECT_EQ((*err)["code"], "invalid_utf8");
  EXPECT_TRUE(Search(a_, {{"query", "fine"}}).ok) << "the connection is still usable";
}

}  // namespace
}  // namespace parley::testing
