// Selective sync end to end (issue 12 item 3; docs/protocol.md "select_sync"):
// a real parleyd, alice with two devices — `full` syncs everything, `sel`
// syncs in full only some conversations — and three peers. The selective
// device must get full events only for its selection and, for every other
// conversation, summaries whose covered user seqs fill the stream exactly
// (no gap, no seq twice), live and by sync, before and after a reconnect.
#include <gtest/gtest.h>

#include <map>
#include <set>
#include <string>

#include "e2e/helpers.h"

namespace parley::testing {
namespace {

// Every user seq one list of sync entries or live events covers, each
// counted once per entry that covers it.
std::map<int64_t, int> Coverage(const std::vector<json>& entries) {
  std::map<int64_t, int> seen;
  for (const auto& e : entries) {
    if (e["kind"] == "summary") {
      EXPECT_EQ(e["covers"][0][0], e["user_seq"]) << e.dump();
      int64_t last = 0;
      for (const auto& r : e["covers"]) {
        int64_t from = r[0], to = r[1];
        EXPECT_LE(from, to) << e.dump();
        EXPECT_GT(from, last) << "ranges ascend and are disjoint: " << e.dump();
        last = to;
        for (int64_t s = from; s <= to; ++s) seen[s]++;
      }
    } else {
      seen[e["user_seq"].get<int64_t>()]++;
    }
  }
  return seen;
}

// The entries cover exactly (after, next], each seq once.
void ExpectExactCover(const std::vector<json>& entries, int64_t after, int64_t next) {
  auto seen = Coverage(entries);
  for (int64_t s = after + 1; s <= next; ++s) EXPECT_EQ(seen[s], 1) << "user seq " << s;
  EXPECT_EQ(static_cast<int64_t>(seen.size()), next - after);
}

// The conversation a summarised or full event is about (0: none).
int64_t ConversationOf(const json& e) {
  if (e["kind"] == "message") return e["message"]["conversation_id"];
  if (e["kind"] == "conversation") return e["conversation"]["conversation_id"];
  return e.value("conversation_id", int64_t{0});
}

// The next live event above user seq `after` (frames at or below it were
// queued before and are already known to the test).
std::optional<json> NextAbove(Connection& c, int64_t after) {
  return WaitEvent(c, [after](const json& e) { return e["user_seq"].get<int64_t>() > after; });
}

class SelectiveSyncE2E : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* u : {"alice", "bob", "carol", "dave"}) Register(server_, u);
    full_ = Login(server_, "alice", "full");
    sel_ = Login(server_, "alice", "selective");
    bob_ = Login(server_, "bob");
    carol_ = Login(server_, "carol");
    dave_ = Login(server_, "dave");
    ab_ = Open(full_, "bob");
    ac_ = Open(full_, "carol");
    ad_ = Open(full_, "dave");
    // Oldest activity first: bob's, then carol's, then dave's conversation.
    Send(bob_, ab_, "b1", "hello alice");
    Send(bob_, ab_, "b2", "are you there?");
    Send(full_, ab_, "a1", "yes");
    Send(bob_, ab_, "b3", "lunch?");
    Send(carol_, ac_, "c1", "hi from carol");
    Send(dave_, ad_, "d1", "hi from dave");
    Send(dave_, ad_, "d2", "call me");
  }
  int64_t Open(Device& d, const std::string& peer) {
    auto r = d.conn->Call("open_conversation", {{"username", peer}});
    EXPECT_TRUE(r.ok) << r.code;
    return r.result["conversation"]["conversation_id"];
  }
  int64_t Send(Device& d, int64_t conv, const std::string& id, const std::string& body) {
    auto r = d.conn->Call("send", {{"conversation_id", conv}, {"client_id", id}, {"body", body}});
    EXPECT_TRUE(r.ok) << r.code << ": " << r.message;
    return r.ok ? r.result["seq"].get<int64_t>() : 0;
  }
  Reply Select(Device& d, json fields) { return d.conn->Call("select_sync", std::move(fields)); }
  // alice's snapshot as the full device reads it: conversation id -> (last_seq, unread).
  std::map<int64_t, std::pair<int64_t, int64_t>> SnapshotStates() {
    std::map<int64_t, std::pair<int64_t, int64_t>> out;
    auto snap = full_.conn->Call("snapshot", {{"messages", 0}});
    EXPECT_TRUE(snap.ok);
    for (const auto& c : snap.result["conversations"])
      out[c["conversation"]["conversation_id"]] = {c["conversation"]["last_seq"], c["unread"]};
    return out;
  }
  // Pulls every page after `after`; checks each page's exact cover.
  std::vector<json> SyncPages(Device& d, int64_t after, int limit, int64_t* next = nullptr) {
    std::vector<json> all;
    for (int guard = 0; guard < 1000; ++guard) {
      auto r = d.conn->Call("sync", {{"after", after}, {"limit", limit}});
      EXPECT_TRUE(r.ok) << r.code << ": " << r.message;
      if (!r.ok) break;
      std::vector<json> page(r.result["events"].begin(), r.result["events"].end());
      ExpectExactCover(page, after, r.result["next"]);
      for (size_t i = 1; i < page.size(); ++i)
        EXPECT_LT(page[i - 1]["user_seq"].get<int64_t>(), page[i]["user_seq"].get<int64_t>()) << "ascending user_seq";
      all.insert(all.end(), page.begin(), page.end());
      after = r.result["next"];
      if (!r.result["has_more"].get<bool>()) break;
    }
    if (next != nullptr) *next = after;
    return all;
  }

  ServerProcess server_;
  Device full_, sel_, bob_, carol_, dave_;
  int64_t ab_ = 0, ac_ = 0, ad_ = 0;
};

TEST_F(SelectiveSyncE2E, SyncGivesFullEventsOnlyForTheSelectionAndExactSummariesForTheRest) {
  auto r = Select(sel_, {{"recent", 1}});
  ASSERT_TRUE(r.ok) << r.code << ": " << r.message;
  EXPECT_EQ(r.result["selective"], true);
  EXPECT_EQ(r.result["conversations"], json::array({ad_}));

  auto states = SnapshotStates();
  // Pages of every size: a summary never spans a page, and every page covers
  // its range exactly.
  for (int limit : {1, 2, 3, 5, 200}) {
    int64_t next = 0;
    auto entries = SyncPages(sel_, 0, limit, &next);
    ExpectExactCover(entries, 0, next);
    std::set<int64_t> summarised;
    for (const auto& e : entries) {
      int64_t conv = ConversationOf(e);
      if (e["kind"] == "summary") {
        EXPECT_NE(conv, ad_) << e.dump();
        summarised.insert(conv);
        EXPECT_EQ(e["last_seq"], states[conv].first) << e.dump();
        EXPECT_EQ(e["unread"], states[conv].second) << e.dump();
      } else if (e["kind"] == "message" || e["kind"] == "receipt") {
        EXPECT_EQ(conv, ad_) << "only the selected conversation in full: " << e.dump();
      }
    }
    EXPECT_EQ(summarised, (std::set<int64_t>{ab_, ac_})) << "limit " << limit;
    // Conversation events (and other non-log kinds) always arrive in full.
    int conversations = 0;
    for (const auto& e : entries) conversations += e["kind"] == "conversation";
    EXPECT_EQ(conversations, 3) << "limit " << limit;
  }
  // bob's conversation: alice read up to her own message (seq 3), so b3 is unread.
  EXPECT_EQ(states[ab_].first, 4);
  EXPECT_EQ(states[ab_].second, 1);

  // Counted: two summarised conversations per read of the whole stream at least.
  EXPECT_GE(MetricValue(HttpGet(server_.port(), "/metrics"), "parley_sync_summaries_total{path=\"sync\"}"), 2 * 5);

  // The full device sees every event and no summary.
  int64_t full_next = 0;
  for (const auto& e : SyncPages(full_, 0, 200, &full_next)) EXPECT_NE(e["kind"], "summary") << e.dump();
  // Acks take summarised seqs like any other.
  auto ack = sel_.conn->Call("ack", {{"user_seq", full_next}});
  ASSERT_TRUE(ack.ok) << ack.code;
  EXPECT_EQ(ack.result["cursor"], full_next);
}

TEST_F(SelectiveSyncE2E, LiveEventsOfUnselectedConversationsArriveAsSummariesInOrder) {
  ASSERT_TRUE(Select(sel_, {{"conversations", {ad_}}}).ok);
  int64_t head = 0;
  SyncPages(sel_, 0, 200, &head);
  // Interleave the two kinds: bob (unselected), dave (selected), bob again,
  // then alice reads bob's conversation on her full device.
  int64_t b4 = Send(bob_, ab_, "b4", "still there?");
  int64_t d3 = Send(dave_, ad_, "d3", "ping");
  int64_t b5 = Send(bob_, ab_, "b5", "ok bye");
  ASSERT_TRUE(full_.conn->Call("receipt", {{"items", {{{"conversation_id", ab_}, {"read", b5}}}}}).ok);

  std::vector<json> live;
  int64_t applied = head;
  // Three bob/dave messages and alice's own read receipt: four user seqs.
  while (applied < head + 4) {
    auto e = NextAbove(*sel_.conn, applied);
    ASSERT_TRUE(e) << "waiting after user seq " << applied;
    ASSERT_EQ((*e)["user_seq"], applied + 1) << "live frames in order, no gap: " << e->dump();
    live.push_back(*e);
    applied = (*e)["kind"] == "summary" ? (*e)["covers"].back()[1].get<int64_t>() : (*e)["user_seq"].get<int64_t>();
  }
  ExpectExactCover(live, head, head + 4);
  EXPECT_GE(MetricValue(HttpGet(server_.port(), "/metrics"), "parley_sync_summaries_total{path=\"live\"}"), 3);
  ASSERT_EQ(live[0]["kind"], "summary");
  EXPECT_EQ(live[0]["conversation_id"], ab_);
  EXPECT_GE(live[0]["last_seq"].get<int64_t>(), b4) << "a summary is read after its event is stored";
  ASSERT_EQ(live[1]["kind"], "message");
  EXPECT_EQ(live[1]["message"]["seq"], d3);
  ASSERT_EQ(live[2]["kind"], "summary");
  EXPECT_EQ(live[2]["conversation_id"], ab_);
  EXPECT_GE(live[2]["last_seq"].get<int64_t>(), b5);
  ASSERT_EQ(live[3]["kind"], "summary") << "alice's own read in bob's conversation is summarised too";
  EXPECT_EQ(live[3]["last_seq"], b5);
  EXPECT_EQ(live[3]["unread"], 0);
  // The full device got all four in full.
  for (int i = 0; i < 4; ++i) {
    auto e = WaitEvent(*full_.conn, [&](const json& ev) { return ev["user_seq"] == head + 1 + i; });
    ASSERT_TRUE(e) << i;
    EXPECT_NE((*e)["kind"], "summary");
  }
}

TEST_F(SelectiveSyncE2E, AfterAReconnectTheDeviceSelectsAgainAndResumesWithSummaries) {
  ASSERT_TRUE(Select(sel_, {{"recent", 1}}).ok);
  int64_t cursor = 0;
  SyncPages(sel_, 0, 200, &cursor);
  ASSERT_TRUE(sel_.conn->Call("ack", {{"user_seq", cursor}}).ok);
  sel_.conn.reset();
  int64_t b4 = Send(bob_, ab_, "b4", "you went offline");
  Send(dave_, ad_, "d3", "me too");
  Send(carol_, ac_, "c2", "and me");

  Device back = Reconnect(server_, sel_);
  // A new connection syncs in full until it selects again.
  auto r = Select(back, {{"conversations", {ad_}}});
  ASSERT_TRUE(r.ok) << r.code;
  auto sync = back.conn->Call("sync", json::object());  // from the stored cursor
  ASSERT_TRUE(sync.ok) << sync.code;
  EXPECT_EQ(sync.result["after"], cursor);
  std::vector<json> page(sync.result["events"].begin(), sync.result["events"].end());
  ExpectExactCover(page, cursor, sync.result["next"]);
  EXPECT_EQ(sync.result["next"], cursor + 3);
  auto states = SnapshotStates();
  int summaries = 0;
  for (const auto& e : page) {
    if (e["kind"] != "summary") {
      EXPECT_EQ(ConversationOf(e), ad_);
      continue;
    }
    ++summaries;
    int64_t conv = e["conversation_id"];
    EXPECT_EQ(e["last_seq"], states[conv].first);
    EXPECT_EQ(e["unread"], states[conv].second);
    if (conv == ab_) { EXPECT_EQ(e["last_seq"].get<int64_t>(), b4); }
  }
  EXPECT_EQ(summaries, 2);
}

TEST_F(SelectiveSyncE2E, WideningTheSelectionPagesTheMissingMessagesAndThenDeliversInFull) {
  ASSERT_TRUE(Select(sel_, {{"recent", 1}}).ok);
  int64_t head = 0;
  SyncPages(sel_, 0, 200, &head);
  // The app opens bob's conversation: add it, then page its history.
  auto r = Select(sel_, {{"add", {ab_}}});
  ASSERT_TRUE(r.ok) << r.code << ": " << r.message;
  EXPECT_EQ(r.result["conversations"], json::array({ab_, ad_}));
  EXPECT_GE(r.result["head"].get<int64_t>(), head);
  auto h = sel_.conn->Call("history", {{"conversation_id", ab_}, {"limit", 2}});
  ASSERT_TRUE(h.ok);
  std::vector<std::string> bodies;
  for (const auto& m : h.result["messages"]) bodies.push_back(m["body"]);
  EXPECT_EQ(bodies, (std::vector<std::string>{"yes", "lunch?"}));
  ASSERT_EQ(h.result["has_more"], true);
  auto older = sel_.conn->Call("history", {{"conversation_id", ab_}, {"before", h.result["messages"][0]["seq"]}});
  ASSERT_TRUE(older.ok);
  EXPECT_EQ(older.result["messages"].size(), 2u);
  EXPECT_EQ(older.result["has_more"], false);

  // From now on bob's conversation arrives in full, live and by sync.
  int64_t b4 = Send(bob_, ab_, "b4", "you opened it");
  auto live = NextAbove(*sel_.conn, head);
  ASSERT_TRUE(live);
  EXPECT_EQ((*live)["kind"], "message") << live->dump();
  EXPECT_EQ((*live)["message"]["seq"], b4);
  for (const auto& e : SyncPages(sel_, 0, 200)) {
    if (ConversationOf(e) == ab_) { EXPECT_NE(e["kind"], "summary") << e.dump(); }
    if (ConversationOf(e) == ac_ && e["kind"] != "conversation") { EXPECT_EQ(e["kind"], "summary") << e.dump(); }
  }
  // Back to full sync: no summaries at all.
  auto all = Select(sel_, {{"all", true}});
  ASSERT_TRUE(all.ok);
  EXPECT_EQ(all.result["selective"], false);
  int64_t full_head = 0;
  for (const auto& e : SyncPages(sel_, 0, 200, &full_head)) EXPECT_NE(e["kind"], "summary");
  Send(carol_, ac_, "c2", "full again");
  auto full_live = NextAbove(*sel_.conn, full_head);
  ASSERT_TRUE(full_live);
  EXPECT_EQ((*full_live)["kind"], "message");
}

TEST_F(SelectiveSyncE2E, WithheldMessagesNeverShowInSummariesOrUnreadCounts) {
  // alice blocks carol; carol's later messages are withheld from alice.
  ASSERT_TRUE(full_.conn->Call("block", {{"username", "carol"}}).ok);
  int64_t withheld = Send(carol_, ac_, "c2", "you cannot see this");
  Send(carol_, ac_, "c3", "nor this");
  ASSERT_GT(withheld, 1);
  ASSERT_TRUE(Select(sel_, {{"conversations", {ad_}}}).ok);
  // alice's full device reports delivery in carol's conversation: an event in
  // alice's stream about it, summarised for the selective device live.
  int64_t head = 0;
  SyncPages(sel_, 0, 200, &head);
  ASSERT_TRUE(full_.conn->Call("receipt", {{"items", {{{"conversation_id", ac_}, {"delivered", 1}}}}}).ok);
  auto live = NextAbove(*sel_.conn, head);
  ASSERT_TRUE(live);
  ASSERT_EQ((*live)["kind"], "summary") << live->dump();
  EXPECT_EQ((*live)["conversation_id"], ac_);
  EXPECT_EQ((*live)["last_seq"], 1) << "the withheld seqs never show";
  EXPECT_EQ((*live)["unread"], 1) << "only c1 counts";
  for (const auto& e : SyncPages(sel_, 0, 200)) {
    if (e["kind"] == "summary" && e["conversation_id"] == ac_) {
      EXPECT_EQ(e["last_seq"], 1);
      EXPECT_EQ(e["unread"], 1);
    }
    if (e["kind"] == "message") { EXPECT_NE(e["message"]["body"], "you cannot see this"); }
  }
  auto states = SnapshotStates();
  EXPECT_EQ(states[ac_], std::make_pair(int64_t{1}, int64_t{1}));
}

TEST_F(SelectiveSyncE2E, BadSelectionsGetClearErrors) {
  auto expect = [&](json fields, const std::string& code) {
    auto r = Select(sel_, fields);
    EXPECT_FALSE(r.ok) << fields.dump();
    EXPECT_EQ(r.code, code) << fields.dump() << ": " << r.message;
    EXPECT_FALSE(r.message.empty());
  };
  expect({{"recent", -1}}, "bad_request");
  expect({{"recent", 101}}, "bad_request");
  expect({{"recent", "5"}}, "bad_request");
  json many = json::array();
  for (int i = 1; i <= 257; ++i) many.push_back(i);
  expect({{"conversations", many}}, "bad_request");
  expect({{"conversations", {ab_, ab_}}}, "bad_request");
  expect({{"conversations", {0}}}, "bad_request");
  expect({{"conversations", {ab_, 999999}}}, "not_member");
  expect({{"add", {ab_}}, {"recent", 2}}, "bad_request");
  expect({{"add", json::array()}}, "bad_request");
  expect({{"all", false}}, "bad_request");
  expect(json::object(), "bad_request");
  // bob and carol's conversation is not alice's.
  int64_t bc = Open(bob_, "carol");
  expect({{"conversations", {bc}}}, "not_member");
  ASSERT_TRUE(Select(sel_, {{"recent", 1}}).ok);
  expect({{"add", {bc}}}, "not_member");
  // A failed widening leaves the selection as it was.
  auto r = Select(sel_, {{"add", {ad_}}});
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.result["conversations"], json::array({ad_}));
  // Before authentication it is refused like any other request.
  auto anon = server_.Connect();
  auto a = anon->Call("select_sync", {{"recent", 1}});
  EXPECT_EQ(a.code, "not_authenticated");
}

}  // namespace
}  // namespace parley::testing
