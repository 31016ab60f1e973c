// Retention end to end (issue 12 items 4 and 5; docs/protocol.md
// "Retention", docs/operations.md "Retention"): a real parleyd whose expiry
// and purge steps run every 50 ms with no purge delay.
//
// - A disappearing timer set by one member reaches every device of both
//   (live, and by sync for a device that was offline); messages sent after
//   it carry expires_at, are deleted for everyone at expiry (a `delete`
//   event with "reason":"expired" on every online device), leave the store,
//   and a device that was offline at expiry gets only the tombstone from
//   sync and history, never the text.
// - Purge after a delete: the edit history and search rows of the message
//   leave the store, another conversation keeps its data, and a retry of
//   the purged message's client id gets its original ack.
// - The server-wide maximum age applies to every message.
// - Bad input gets clear errors.
// Runs on SQLite, and on PostgreSQL as retention_e2e_test_postgres.
#include <gtest/gtest.h>

#include <string>

#include "e2e/helpers.h"

namespace parley::testing {
namespace {

const std::vector<std::string> kFastRetention = {"--expiry-interval-ms", "50", "--purge-delay-s", "0",
                                                 "--purge-interval-ms", "50", "--search-index-interval-ms", "20"};

class RetentionE2E : public ::testing::Test {
 protected:
  explicit RetentionE2E(std::vector<std::string> args = kFastRetention) : server_(std::move(args)) {}

  void SetUp() override {
    for (const char* u : {"alice", "bob", "carol"}) Register(server_, u);
    a1_ = Login(server_, "alice", "a1");
    b1_ = Login(server_, "bob", "b1");
    b2_ = Login(server_, "bob", "b2");  // offline from here on: catches up by sync at the end
    b2_.conn.reset();
    c_ = Login(server_, "carol", "c");
    auto r = a1_.conn->Call("open_conversation", {{"username", "bob"}});
    ASSERT_TRUE(r.ok) << r.code;
    ab_ = r.result["conversation"]["conversation_id"];
    r = a1_.conn->Call("open_conversation", {{"username", "carol"}});
    ASSERT_TRUE(r.ok) << r.code;
    ac_ = r.result["conversation"]["conversation_id"];
  }

  Reply Send(Device& d, int64_t conv, const std::string& client_id, const std::string& body) {
    Reply r = d.conn->Call("send", {{"conversation_id", conv}, {"client_id", client_id}, {"body", body}});
    EXPECT_TRUE(r.ok) << r.code << ": " << r.message;
    return r;
  }

  ServerProcess server_;
  Device a1_, b1_, b2_, c_;
  int64_t ab_ = 0, ac_ = 0;
};

TEST_F(RetentionE2E, ATimerRemovesMessagesFromEveryDeviceAndTheStoreAndAnOfflineDeviceNeverGetsThem) {
  // Bob sets the timer; every device of both learns it.
  Reply set = b1_.conn->Call("set_disappearing", {{"conversation_id", ab_}, {"seconds", 1}});
  ASSERT_TRUE(set.ok) << set.code << ": " << set.message;
  EXPECT_EQ(set.result["seconds"], 1);
  EXPECT_TRUE(set.result["changed"].get<bool>());
  auto is_setting = [&](const json& e) { return e["kind"] == "disappearing" && e["conversation_id"] == ab_; };
  for (Device* d : {&a1_, &b1_}) {
    auto e = WaitEvent(*d->conn, is_setting);
    ASSERT_TRUE(e.has_value()) << "device " << d->device_id;
    EXPECT_EQ((*e)["seconds"], 1);
    EXPECT_EQ((*e)["by"], b1_.user_id);
  }
  // The same value again: no change, no event.
  Reply again = a1_.conn->Call("set_disappearing", {{"conversation_id", ab_}, {"seconds", 1}});
  ASSERT_TRUE(again.ok);
  EXPECT_FALSE(again.result["changed"].get<bool>());
  // Shown on the conversation list.
  Reply list = a1_.conn->Call("list_conversations", {});
  ASSERT_TRUE(list.ok) << list.code;
  bool listed = false;
  for (const auto& c : list.result["conversations"])
    if (c["conversation"]["conversation_id"] == ab_) {
      EXPECT_EQ(c["conversation"]["disappearing_s"], 1);
      listed = true;
    }
  EXPECT_TRUE(listed);

  // A message with the timer; one in the other conversation without.
  Reply sent = Send(a1_, ab_, "v1", "vanishing secret");
  ASSERT_TRUE(sent.ok);
  const int64_t seq = sent.result["seq"];
  ASSERT_TRUE(sent.result.contains("expires_at"));
  const int64_t expires_at = sent.result["expires_at"];
  EXPECT_GE(expires_at, sent.result["ts"].get<int64_t>() + 1000);
  EXPECT_LE(expires_at, sent.result["ts"].get<int64_t>() + 1000 + 1000) << "stored within a second of ts";
  Reply kept = Send(a1_, ac_, "k1", "kept words");
  EXPECT_FALSE(kept.result.contains("expires_at"));
  auto live = WaitEvent(*b1_.conn, IsMessage(seq));
  ASSERT_TRUE(live.has_value());
  EXPECT_EQ((*live)["message"]["expires_at"], expires_at);
  EXPECT_EQ((*live)["message"]["body"], "vanishing secret");

  // At expiry every online device of both gets the delete, marked expired.
  auto is_expiry = [&](const json& e) { return e["kind"] == "delete" && e["conversation_id"] == ab_ && e["seq"] == seq; };
  for (Device* d : {&a1_, &b1_}) {
    auto e = WaitEvent(*d->conn, is_expiry, 10'000);
    ASSERT_TRUE(e.has_value()) << "device " << d->device_id << " got no delete";
    EXPECT_EQ((*e)["reason"], "expired");
    EXPECT_GE((*e)["deleted_at"].get<int64_t>(), expires_at);
  }
  // The text has left the store (the tombstone row stays).
  EXPECT_EQ(StoreCount(server_, "SELECT count(*) FROM messages WHERE body LIKE '%vanishing%'"), 0);
  EXPECT_EQ(StoreCount(server_, "SELECT count(*) FROM messages WHERE conversation_id = " + std::to_string(ab_) +
                                    " AND deleted_at > 0"),
            1);
  EXPECT_EQ(StoreCount(server_, "SELECT count(*) FROM messages WHERE body = 'kept words'"), 1);

  // Bob's offline device comes back: sync from its cursor has the setting,
  // the message as a tombstone and the expiry, never the text.
  Device b2 = Reconnect(server_, b2_);
  std::vector<json> events = SyncAll(*b2.conn, b2_.head);
  bool saw_setting = false, saw_delete = false, saw_message = false;
  for (const json& e : events) {
    EXPECT_EQ(e.dump().find("vanishing"), std::string::npos) << e.dump();
    if (is_setting(e)) saw_setting = true;
    if (is_expiry(e)) {
      saw_delete = true;
      EXPECT_EQ(e["reason"], "expired");
    }
    if (IsMessage(seq)(e)) {
      saw_message = true;
      EXPECT_EQ(e["message"]["body"], "");
      EXPECT_EQ(e["message"]["deleted"], true);
      EXPECT_EQ(e["message"]["reason"], "expired");
    }
  }
  EXPECT_TRUE(saw_setting);
  EXPECT_TRUE(saw_delete);
  EXPECT_TRUE(saw_message);
  Reply h = b2.conn->Call("history", {{"conversation_id", ab_}});
  ASSERT_TRUE(h.ok);
  ASSERT_EQ(h.result["messages"].size(), 1u);
  EXPECT_EQ(h.result["messages"][0]["body"], "");
  EXPECT_EQ(h.result["messages"][0]["reason"], "expired");
  Reply snap = b2.conn->Call("snapshot", {});
  ASSERT_TRUE(snap.ok);
  EXPECT_EQ(snap.result.dump().find("vanishing"), std::string::npos);
  // Search never finds it.
  Reply found = b2.conn->Call("search_messages", {{"query", "vanishing"}});
  ASSERT_TRUE(found.ok);
  EXPECT_TRUE(found.result["messages"].empty());
  // The expiry is counted.
  EXPECT_GE(MetricSum(HttpGet(server_.port(), "/metrics"), "parley_expired_messages_total"), 1);

  // Off again: a new message has no expiry.
  ASSERT_TRUE(a1_.conn->Call("set_disappearing", {{"conversation_id", ab_}, {"seconds", 0}}).ok);
  EXPECT_FALSE(Send(a1_, ab_, "after", "stays").result.contains("expires_at"));
}

TEST_F(RetentionE2E, PurgeAfterADeleteRemovesItsDataKeepsOtherConversationsAndTheOriginalAck) {
  Reply sent = Send(a1_, ab_, "p1", "purge me");
  ASSERT_TRUE(sent.ok);
  const int64_t seq = sent.result["seq"];
  ASSERT_TRUE(a1_.conn->Call("edit_message", {{"conversation_id", ab_}, {"seq", seq}, {"client_id", "p1e"},
                                              {"body", "purge me edited"}}).ok);
  Reply other = Send(a1_, ac_, "o1", "other conversation");
  ASSERT_TRUE(a1_.conn->Call("edit_message", {{"conversation_id", ac_}, {"seq", other.result["seq"]},
                                              {"client_id", "o1e"}, {"body", "other conversation edited"}}).ok);
  // Indexed for search first.
  ASSERT_TRUE(Eventually(
      [&] {
        Reply r = a1_.conn->Call("search_messages", {{"query", "edited"}});
        return r.ok && r.result["messages"].size() == 2;
      },
      5000));
  const std::string ab = std::to_string(ab_), ac = std::to_string(ac_);
  EXPECT_EQ(StoreCount(server_, "SELECT count(*) FROM message_edits WHERE conversation_id = " + ab), 1);

  Reply del = a1_.conn->Call("delete_message", {{"conversation_id", ab_}, {"seq", seq}, {"for", "everyone"}});
  ASSERT_TRUE(del.ok) << del.code;
  // The purge runs in the background: wait until it has taken the message.
  ASSERT_TRUE(Eventually(
      [&] {
        return StoreCount(server_, "SELECT count(*) FROM messages WHERE conversation_id = " + ab +
                                       " AND purged_at > 0") == 1;
      },
      10'000))
      << "the purge never ran";
  EXPECT_EQ(StoreCount(server_, "SELECT count(*) FROM message_edits WHERE conversation_id = " + ab), 0);
  EXPECT_EQ(StoreCount(server_, "SELECT count(*) FROM messages WHERE body LIKE '%purge me%'"), 0);
  const std::string search_rows = "SELECT count(*) FROM message_search WHERE conversation_id = ";
  // The search writer removes the row right after the purge's commit (or
  // when it indexes the delete), in the search file: wait for it.
  EXPECT_TRUE(Eventually([&] { return SearchIndexCount(server_, search_rows + ab) == 0; }, 10'000));
  // The other conversation keeps everything.
  EXPECT_EQ(StoreCount(server_, "SELECT count(*) FROM message_edits WHERE conversation_id = " + ac), 1);
  EXPECT_EQ(SearchIndexCount(server_, search_rows + ac), 1);
  Reply found = c_.conn->Call("search_messages", {{"query", "edited"}});
  ASSERT_TRUE(found.ok);
  EXPECT_EQ(found.result["messages"].size(), 1u);
  // A retry of the purged message's client id gets its original ack.
  Reply retry = Send(a1_, ab_, "p1", "purge me");
  ASSERT_TRUE(retry.ok);
  EXPECT_TRUE(retry.result["duplicate"].get<bool>());
  EXPECT_EQ(retry.result["seq"], seq);
  EXPECT_EQ(retry.result["ts"], sent.result["ts"]);
  EXPECT_EQ(retry.result["client_id"], "p1");
  // Progress is in the metrics.
  std::string metrics = HttpGet(server_.port(), "/metrics");
  EXPECT_GE(MetricSum(metrics, "parley_purge_messages_total"), 1);
  EXPECT_GE(MetricSum(metrics, "parley_purge_edit_rows_total"), 1);
  EXPECT_EQ(PrometheusFormatProblems(metrics), std::vector<std::string>{});
}

TEST_F(RetentionE2E, BadInputGetsClearErrors) {
  auto call = [&](Device& d, json args) { return d.conn->Call("set_disappearing", std::move(args)); };
  Reply r = call(a1_, {{"conversation_id", 999999}, {"seconds", 60}});
  EXPECT_EQ(r.code, "not_member") << "an unknown conversation reads as not yours";
  r = call(c_, {{"conversation_id", ab_}, {"seconds", 60}});
  EXPECT_EQ(r.code, "not_member");
  for (const json& seconds : {json(-1), json(31'536'001), json("60"), json(1.5)}) {
    r = call(a1_, {{"conversation_id", ab_}, {"seconds", seconds}});
    EXPECT_EQ(r.code, "bad_request") << seconds.dump();
    EXPECT_NE(r.message.find("seconds"), std::string::npos) << r.message;
  }
  r = call(a1_, {{"conversation_id", ab_}});
  EXPECT_EQ(r.code, "bad_request");
  r = call(a1_, {{"seconds", 60}});
  EXPECT_EQ(r.code, "bad_request");
  // Nothing was set.
  Reply list = a1_.conn->Call("list_conversations", {});
  for (const auto& c : list.result["conversations"]) EXPECT_EQ(c["conversation"]["disappearing_s"], 0);
  // The largest value is fine.
  r = call(a1_, {{"conversation_id", ab_}, {"seconds", 31'536'000}});
  EXPECT_TRUE(r.ok) << r.code << ": " << r.message;
}

// The expiry step asleep (it ran once at start, then waits an hour): what a
// device reads between a message's expiry and the expiry's delete event.
class MaskedExpiryE2E : public RetentionE2E {
 protected:
  MaskedExpiryE2E() : RetentionE2E({"--expiry-interval-ms", "3600000"}) {}
};

TEST_F(MaskedExpiryE2E, AnEditReadAfterTheExpiryIsATombstoneWithoutText) {
  ASSERT_TRUE(b1_.conn->Call("set_disappearing", {{"conversation_id", ab_}, {"seconds", 1}}).ok);
  Reply sent = Send(a1_, ab_, "v1", "vanishing secret");
  const int64_t seq = sent.result["seq"];
  const int64_t expires_at = sent.result["expires_at"];
  Reply edit = a1_.conn->Call("edit_message",
                              {{"conversation_id", ab_}, {"seq", seq}, {"client_id", "e1"}, {"body", "edited secret"}});
  ASSERT_TRUE(edit.ok) << edit.code << ": " << edit.message;
  auto now_ms = [] {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
  };
  while (now_ms() <= expires_at + 200) std::this_thread::sleep_for(std::chrono::milliseconds(50));

  // Bob's offline device catches up after the expiry, before any delete.
  Device b2 = Reconnect(server_, b2_);
  std::vector<json> events = SyncAll(*b2.conn, b2_.head);
  bool saw_edit = false;
  for (const json& e : events) {
    EXPECT_EQ(e.dump().find("secret"), std::string::npos) << e.dump();
    EXPECT_FALSE(e["kind"] == "delete" && e["seq"] == seq) << "the expiry step is asleep: " << e.dump();
    if (e["kind"] == "edit" && e["seq"] == seq) {
      saw_edit = true;
      EXPECT_EQ(e["body"], "");
      EXPECT_EQ(e["deleted_at"], expires_at);
      EXPECT_EQ(e["reason"], "expired");
    }
  }
  EXPECT_TRUE(saw_edit);
}

class MaxAgeE2E : public RetentionE2E {
 protected:
  MaxAgeE2E() : RetentionE2E(WithMaxAge()) {}
  static std::vector<std::string> WithMaxAge() {
    std::vector<std::string> args = kFastRetention;
    args.insert(args.end(), {"--retention-max-age-s", "1"});
    return args;
  }
};

TEST_F(MaxAgeE2E, TheServerMaximumAgeExpiresEveryMessage) {
  // Announced at login, with the timer's maximum.
  auto conn = server_.Connect();
  Reply login = conn->Call("login", {{"username", "carol"}, {"password", "correct horse"}, {"device_name", "x"}});
  ASSERT_TRUE(login.ok) << login.code;
  EXPECT_EQ(login.result["limits"]["retention_max_age_s"], 1);
  EXPECT_EQ(login.result["limits"]["max_disappearing_s"], 31'536'000);

  Reply sent = Send(a1_, ac_, "m1", "short lived");
  ASSERT_TRUE(sent.ok);
  ASSERT_TRUE(sent.result.contains("expires_at"));
  EXPECT_GE(sent.result["expires_at"].get<int64_t>(), sent.result["ts"].get<int64_t>() + 1000);
  // A longer timer does not outlast the maximum.
  ASSERT_TRUE(a1_.conn->Call("set_disappearing", {{"conversation_id", ab_}, {"seconds", 3600}}).ok);
  Reply timed = Send(a1_, ab_, "m2", "also short");
  EXPECT_LE(timed.result["expires_at"].get<int64_t>(), timed.result["ts"].get<int64_t>() + 2000);
  const int64_t seq = sent.result["seq"];
  auto e = WaitEvent(
      *c_.conn, [&](const json& ev) { return ev["kind"] == "delete" && ev["conversation_id"] == ac_ && ev["seq"] == seq; },
      10'000);
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ((*e)["reason"], "expired");
  ASSERT_TRUE(Eventually([&] { return StoreCount(server_, "SELECT count(*) FROM messages WHERE body <> ''") == 0; },
                         10'000));
}

}  // namespace
}  // namespace parley::testing
