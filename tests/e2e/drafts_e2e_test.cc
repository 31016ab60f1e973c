// Drafts end to end (issue 12; docs/protocol.md "set_draft"): a real parleyd,
// alice with two online devices and one that is offline while the drafts
// change, bob as the other member.
#include <gtest/gtest.h>

#include <map>
#include <string>

#include "e2e/helpers.h"

namespace parley::testing {
namespace {

// A device's drafts, from the `draft` events it applied in stream order.
std::map<int64_t, std::string> Apply(const std::vector<json>& events, std::map<int64_t, std::string> drafts = {}) {
  for (const auto& e : events)
    if (e["kind"] == "draft") drafts[e["conversation_id"].get<int64_t>()] = e["text"].get<std::string>();
  return drafts;
}

std::function<bool(const json&)> IsDraft(int64_t conv, const std::string& text) {
  return [conv, text](const json& e) { return e["kind"] == "draft" && e["conversation_id"] == conv && e["text"] == text; };
}

class DraftsE2E : public ::testing::Test {
 protected:
  void SetUp() override {
    Register(server_, "alice");
    Register(server_, "bob");
    a1_ = Login(server_, "alice", "phone");
    a2_ = Login(server_, "alice", "laptop");
    offline_ = Login(server_, "alice", "tablet");
    offline_.conn.reset();
    b_ = Login(server_, "bob");
    auto open = a1_.conn->Call("open_conversation", {{"username", "bob"}});
    ASSERT_TRUE(open.ok) << open.code;
    conv_ = open.result["conversation"]["conversation_id"];
  }
  Reply SetDraft(Device& d, const std::string& text) {
    return d.conn->Call("set_draft", {{"conversation_id", conv_}, {"text", text}});
  }

  ServerProcess server_;
  Device a1_, a2_, offline_, b_;
  int64_t conv_ = 0;
};

TEST_F(DraftsE2E, ADraftReachesTheUsersOtherDevicesLiveBySyncAndInASnapshotButNoOneElse) {
  auto r = SetDraft(a1_, "see you at");
  ASSERT_TRUE(r.ok) << r.code;
  EXPECT_EQ(r.result["changed"], true);
  EXPECT_EQ(r.result["conversation_id"], conv_);
  for (Device* d : {&a1_, &a2_}) {
    auto e = WaitEvent(*d->conn, IsDraft(conv_, "see you at"));
    ASSERT_TRUE(e) << "device " << d->device_id;
    // The answer names its event's place, so a device that applied the
    // event before the answer keeps what the stream says (protocol.md).
    EXPECT_EQ((*e)["user_seq"], r.result["user_seq"]) << "device " << d->device_id;
  }
  // The same text again changes nothing and makes no event.
  r = SetDraft(a2_, "see you at");
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.result["changed"], false);
  EXPECT_FALSE(r.result.contains("user_seq"));
  // bob learns nothing of alice's draft.
  for (const auto& e : SyncAll(*b_.conn, 0)) EXPECT_NE(e["kind"], "draft") << e.dump();
  auto bob_snap = b_.conn->Call("snapshot", json::object());
  ASSERT_TRUE(bob_snap.ok);
  for (const auto& c : bob_snap.result["conversations"]) EXPECT_FALSE(c.contains("draft"));

  // The offline device catches up by sync; a new device gets it in its snapshot.
  Device back = Reconnect(server_, offline_);
  EXPECT_EQ(Apply(SyncAll(*back.conn, offline_.head))[conv_], "see you at");
  Device fresh = Login(server_, "alice", "desktop");
  auto snap = fresh.conn->Call("snapshot", json::object());
  ASSERT_TRUE(snap.ok);
  ASSERT_EQ(snap.result["conversations"].size(), 1u);
  EXPECT_EQ(snap.result["conversations"][0]["draft"]["text"], "see you at");
  EXPECT_GT(snap.result["conversations"][0]["draft"]["updated_at"], 0);
  auto list = a2_.conn->Call("list_conversations", json::object());
  ASSERT_TRUE(list.ok);
  EXPECT_EQ(list.result["conversations"][0]["draft"]["text"], "see you at");
}

TEST_F(DraftsE2E, TheLastWriteInServerOrderWinsOnEveryDeviceAndASendClearsIt) {
  // Both devices write at once; whichever the server stored last is every
  // device's draft, live and by sync (sync events read the current draft).
  int64_t id1 = a1_.conn->Start("set_draft", {{"conversation_id", conv_}, {"text", "from the phone"}});
  int64_t id2 = a2_.conn->Start("set_draft", {{"conversation_id", conv_}, {"text", "from the laptop"}});
  ASSERT_TRUE(a1_.conn->Await(id1).ok);
  ASSERT_TRUE(a2_.conn->Await(id2).ok);
  auto stored = a1_.conn->Call("snapshot", json::object());
  ASSERT_TRUE(stored.ok);
  std::string winner = stored.result["conversations"][0]["draft"]["text"];
  ASSERT_TRUE(winner == "from the phone" || winner == "from the laptop") << winner;
  for (Device* d : {&a1_, &a2_}) {
    std::map<int64_t, std::string> live;
    // Two draft events arrive on each device, in stream order; the last is the winner.
    for (int i = 0; i < 2; ++i) {
      auto e = WaitEvent(*d->conn, [&](const json& ev) { return ev["kind"] == "draft"; });
      ASSERT_TRUE(e) << "device " << d->device_id << " event " << i;
      live = Apply({*e}, live);
    }
    EXPECT_EQ(live[conv_], winner) << "device " << d->device_id;
  }
  Device back = Reconnect(server_, offline_);
  EXPECT_EQ(Apply(SyncAll(*back.conn, offline_.head))[conv_], winner);

  // Sending clears the draft on every device: a draft event right after the
  // message's in the stream.
  auto sent = a2_.conn->Call("send", {{"conversation_id", conv_}, {"client_id", "m1"}, {"body", winner}});
  ASSERT_TRUE(sent.ok) << sent.code;
  int64_t seq = sent.result["seq"];
  for (Device* d : {&a1_, &a2_}) {
    auto m = WaitEvent(*d->conn, IsMessage(seq));
    ASSERT_TRUE(m);
    auto cleared = WaitEvent(*d->conn, [](const json& ev) { return ev["kind"] == "draft"; });
    ASSERT_TRUE(cleared);
    EXPECT_EQ((*cleared)["text"], "");
    EXPECT_EQ((*cleared)["user_seq"].get<int64_t>(), (*m)["user_seq"].get<int64_t>() + 1);
  }
  auto after = SyncAll(*back.conn, offline_.head);
  EXPECT_EQ(Apply(after)[conv_], "");
  auto snap = a1_.conn->Call("snapshot", json::object());
  EXPECT_FALSE(snap.result["conversations"][0].contains("draft"));
  // A retry of the same send (a duplicate) leaves a newer draft alone.
  ASSERT_TRUE(SetDraft(a1_, "next one").ok);
  auto dup = a2_.conn->Call("send", {{"conversation_id", conv_}, {"client_id", "m1"}, {"body", winner}});
  ASSERT_TRUE(dup.ok);
  EXPECT_EQ(dup.result["duplicate"], true);
  snap = a1_.conn->Call("snapshot", json::object());
  EXPECT_EQ(snap.result["conversations"][0]["draft"]["text"], "next one");
}

TEST_F(DraftsE2E, BadDraftsGetTheirDocumentedErrorsAndChangeNothing) {
  ASSERT_TRUE(SetDraft(a1_, "kept").ok);
  EXPECT_EQ(SetDraft(a1_, std::string(16 * 1024 + 1, 'x')).code, "body_too_large");
  EXPECT_EQ(a1_.conn->Call("set_draft", {{"conversation_id", conv_}}).code, "bad_request");
  EXPECT_EQ(a1_.conn->Call("set_draft", {{"conversation_id", conv_}, {"text", 5}}).code, "bad_request");
  Register(server_, "carol");
  Device carol = Login(server_, "carol");
  EXPECT_EQ(carol.conn->Call("set_draft", {{"conversation_id", conv_}, {"text", "hi"}}).code, "not_member");
  EXPECT_EQ(carol.conn->Call("set_draft", {{"conversation_id", conv_ + 999}, {"text", "hi"}}).code, "not_member");
  auto snap = a1_.conn->Call("snapshot", json::object());
  EXPECT_EQ(snap.result["conversations"][0]["draft"]["text"], "kept");
}

}  // namespace
}  // namespace parley::testing
