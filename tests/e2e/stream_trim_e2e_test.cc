// Stream trimming end to end (issue 12; docs/protocol.md "cursor_too_old",
// docs/operations.md "Stream trimming"): a real parleyd that keeps stream
// entries for 1 s, protects devices seen within 1 s and runs its trim job
// every 50 ms.
//
// - A device offline past the horizon gets `cursor_too_old` from `sync`,
//   takes a snapshot, follows the stream from the snapshot's head and ends
//   with the same view as a device that never left: every message, the
//   watermarks and the unread count; live events after it arrive in order.
// - A device that was online and acknowledged its stream loses nothing: its
//   cursor sits at the floor, and a selective sync from there summarises
//   the conversation with `covers` starting at the floor.
// - The trim shows in /metrics.
// Runs on SQLite, and on PostgreSQL as stream_trim_e2e_test_postgres.
#include <gtest/gtest.h>

#include <string>

#include "e2e/helpers.h"

namespace parley::testing {
namespace {

const std::vector<std::string> kFastTrim = {"--stream-retention-s", "1", "--stream-device-grace-s", "1",
                                            "--stream-trim-interval-ms", "50"};
// Long enough for every entry written so far to be past the horizon and
// every device not seen since to be past the grace (both 1 s).
constexpr int kTrimWaitMs = 10'000;

class StreamTrimE2E : public ::testing::Test {
 protected:
  StreamTrimE2E() : server_(kFastTrim) {}

  void SetUp() override {
    for (const char* u : {"alice", "bob"}) Register(server_, u);
    a_ = Login(server_, "alice", "a");
    phone_ = Login(server_, "bob", "phone");
    tablet_ = Login(server_, "bob", "tablet");
    auto r = a_.conn->Call("open_conversation", {{"username", "bob"}});
    ASSERT_TRUE(r.ok) << r.code;
    conv_ = r.result["conversation"]["conversation_id"];
  }

  int64_t Send(const std::string& client_id) {
    Reply r = a_.conn->Call("send", {{"conversation_id", conv_}, {"client_id", client_id}, {"body", "body " + client_id}});
    EXPECT_TRUE(r.ok) << r.code << ": " << r.message;
    return r.ok ? r.result["seq"].get<int64_t>() : 0;
  }

  // Applies everything up to the head on `d` and acknowledges it; returns the head.
  int64_t CatchUpAndAck(Device& d, int64_t after) {
    std::vector<json> events = SyncAll(*d.conn, after);
    int64_t applied = events.empty() ? after : events.back()["user_seq"].get<int64_t>();
    Reply ack = d.conn->Call("ack", {{"user_seq", applied}});
    EXPECT_TRUE(ack.ok) << ack.code;
    return applied;
  }

  double Metric(const std::string& name) { return MetricSum(HttpGet(server_.port(), "/metrics"), name); }

  ServerProcess server_;
  Device a_, phone_, tablet_;
  int64_t conv_ = 0;
};

TEST_F(StreamTrimE2E, ADeviceOfflinePastTheHorizonGetsCursorTooOldTakesASnapshotAndConverges) {
  // Both of bob's devices apply the conversation event; the tablet then
  // goes offline with its cursor there.
  const int64_t tablet_cursor = CatchUpAndAck(tablet_, 0);
  ASSERT_GE(tablet_cursor, 1);
  tablet_.conn.reset();
  std::vector<int64_t> seqs;
  for (int i = 0; i < 5; ++i) seqs.push_back(Send("m" + std::to_string(i)));
  // The phone reads them and says so; its cursor is bob's head.
  int64_t phone_cursor = CatchUpAndAck(phone_, tablet_cursor);
  Reply read = phone_.conn->Call("receipt", {{"items", {{{"conversation_id", conv_}, {"read", seqs[2]}}}}});
  ASSERT_TRUE(read.ok) << read.code;
  phone_cursor = CatchUpAndAck(phone_, phone_cursor);

  // Once the entries are past the horizon and the tablet past the grace,
  // the job trims bob's stream up to the phone's cursor: the phone, which
  // is "seen" only when it authenticates or acknowledges, is past the grace
  // too, but it has applied everything trimmed.
  ASSERT_TRUE(Eventually([&] { return Metric("parley_stream_trimmed_total") >= 1; }, kTrimWaitMs));
  ASSERT_TRUE(Eventually(
      [&] {
        Reply r = phone_.conn->Call("sync", {{"after", tablet_cursor}});
        return !r.ok && r.code == "cursor_too_old";
      },
      kTrimWaitMs));

  // New messages after the trim: the phone gets them live.
  for (int i = 5; i < 8; ++i) seqs.push_back(Send("m" + std::to_string(i)));
  ASSERT_TRUE(WaitEvent(*phone_.conn, IsMessage(seqs.back())).has_value());

  // The tablet comes back: its stored cursor is below the floor.
  tablet_ = Reconnect(server_, tablet_);
  Reply old = tablet_.conn->Call("sync", {});
  ASSERT_FALSE(old.ok);
  EXPECT_EQ(old.code, "cursor_too_old");
  EXPECT_FALSE(old.message.empty());
  EXPECT_GE(Metric("parley_sync_cursor_too_old_total"), 1);
  // It takes a snapshot and goes on from its head.
  Reply snap = tablet_.conn->Call("snapshot", {{"messages", 100}});
  ASSERT_TRUE(snap.ok) << snap.code;
  const int64_t head = snap.result["head"];
  ASSERT_EQ(snap.result["conversations"].size(), 1u);
  const json& item = snap.result["conversations"][0];
  std::vector<int64_t> shown;
  for (const json& m : item["messages"]) shown.push_back(m["seq"]);
  EXPECT_EQ(shown, seqs) << "every message is still in the snapshot";
  EXPECT_EQ(item["unread"], static_cast<int64_t>(seqs.size()) - 3) << "read up to the third by the phone";
  Reply after = tablet_.conn->Call("sync", {{"after", head}});
  ASSERT_TRUE(after.ok) << after.code;
  EXPECT_TRUE(after.result["events"].empty());
  ASSERT_TRUE(tablet_.conn->Call("ack", {{"user_seq", head}}).ok);
  // History pages it all too.
  Reply history = tablet_.conn->Call("history", {{"conversation_id", conv_}, {"limit", 50}});
  ASSERT_TRUE(history.ok);
  EXPECT_EQ(history.result["messages"].size(), seqs.size());

  // Live from here: the next message reaches both devices with the same user seq.
  const int64_t last = Send("m-live");
  auto on_tablet = WaitEvent(*tablet_.conn, IsMessage(last));
  auto on_phone = WaitEvent(*phone_.conn, IsMessage(last));
  ASSERT_TRUE(on_tablet.has_value());
  ASSERT_TRUE(on_phone.has_value());
  EXPECT_EQ((*on_tablet)["user_seq"], head + 1);
  EXPECT_EQ((*on_tablet)["user_seq"], (*on_phone)["user_seq"]);
  // Same view on both: the phone's own snapshot agrees.
  Reply phone_snap = phone_.conn->Call("snapshot", {{"messages", 100}});
  Reply tablet_snap = tablet_.conn->Call("snapshot", {{"messages", 100}});
  ASSERT_TRUE(phone_snap.ok && tablet_snap.ok);
  EXPECT_EQ(phone_snap.result["conversations"], tablet_snap.result["conversations"]);
  EXPECT_GE(Metric("parley_stream_trim_passes_total"), 1);
}

TEST_F(StreamTrimE2E, AnUpToDateDeviceKeepsSyncingAndSelectiveSummariesCoverFromTheFloor) {
  // Everything bob's devices have is acknowledged by both.
  Send("m0");
  const int64_t cursor = CatchUpAndAck(phone_, 0);
  ASSERT_EQ(CatchUpAndAck(tablet_, 0), cursor);
  // Trimmed up to that cursor once it is past the horizon.
  ASSERT_TRUE(Eventually(
      [&] {
        Reply r = phone_.conn->Call("sync", {{"after", cursor - 1}});
        return !r.ok && r.code == "cursor_too_old";
      },
      kTrimWaitMs));
  // Sync from the cursor (floor - 1) still works and sees nothing missing.
  Reply empty = phone_.conn->Call("sync", {{"after", cursor}});
  ASSERT_TRUE(empty.ok) << empty.code;
  EXPECT_TRUE(empty.result["events"].empty());
  EXPECT_EQ(empty.result["head"], cursor);

  // The tablet comes back (seen now: it holds what it has not acknowledged
  // while the test runs). A selective connection syncs the new events as a
  // summary whose covers start right at the floor.
  tablet_ = Reconnect(server_, tablet_);
  const int64_t s1 = Send("m1");
  Send("m2");
  ASSERT_TRUE(WaitEvent(*tablet_.conn, IsMessage(s1 + 1)).has_value());
  Reply sel = tablet_.conn->Call("select_sync", {{"recent", 0}});
  ASSERT_TRUE(sel.ok) << sel.code << ": " << sel.message;
  Reply page = tablet_.conn->Call("sync", {{"after", cursor}});
  ASSERT_TRUE(page.ok) << page.code;
  ASSERT_EQ(page.result["events"].size(), 1u);
  const json& summary = page.result["events"][0];
  EXPECT_EQ(summary["kind"], "summary");
  EXPECT_EQ(summary["user_seq"], cursor + 1);
  EXPECT_EQ(summary["covers"], json::array({json::array({cursor + 1, cursor + 2})}));
  EXPECT_EQ(summary["last_seq"], s1 + 1);
  EXPECT_EQ(page.result["next"], cursor + 2);
  // Below the floor the selective connection is refused the same way.
  Reply below = tablet_.conn->Call("sync", {{"after", cursor - 1}});
  ASSERT_FALSE(below.ok);
  EXPECT_EQ(below.code, "cursor_too_old");
}

}  // namespace
}  // namespace parley::testing
