// Edits and deletes end to end (issue 12; docs/protocol.md "Edits and
// deletes"): a real parleyd with short windows, alice with two devices and
// bob with two (one of them offline throughout, catching up by sync).
//
// EveryTestVectorOnEveryDevice runs every row of the protocol document's
// test-vector table (tests/protocol/edit_vectors.h): the answers, then the
// final state of the row's message on every device as it arrived live, as
// a sync from the start gives it (applied in order and in reverse), as the
// offline device gets it by sync from its cursor, and as history shows it.
// Each device gets each event exactly once (user seqs strictly increasing)
// and never an edit or delete of a message it does not have (withheld by a
// block, or deleted for itself). The vectors run on one conversation, one
// message each.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <thread>
#include <tuple>

#include "e2e/helpers.h"
#include "protocol/edit_vectors.h"
#include "test_paths.h"

namespace parley::testing {
namespace {

// Short windows so that a vector can wait for one to close.
constexpr int kEditWindowMs = 1500;
constexpr int kDeleteWindowMs = 2500;

// One device's view of every vector's message, from the events it applied.
struct View {
  std::map<int64_t, DeviceView> messages;  // by conversation seq
  int64_t last = 0;                        // highest user seq applied
  bool duplicate_or_gap = false;

  void Apply(const json& e, int64_t conv) {
    int64_t us = e["user_seq"].get<int64_t>();
    if (us != last + 1) duplicate_or_gap = true;
    last = std::max(last, us);
    std::string kind = e["kind"].get<std::string>();
    if (kind == "message" && e["message"]["conversation_id"] == conv) {
      const json& m = e["message"];
      messages[m["seq"].get<int64_t>()].OnMessage(m["body"].get<std::string>(), m.value("version", int64_t{0}),
                                                  m.value("deleted", false));
    } else if (kind == "edit" && e["conversation_id"] == conv) {
      messages[e["seq"].get<int64_t>()].OnEdit(e["version"].get<int64_t>(), e["body"].get<std::string>(),
                                               e["edited_at"].get<int64_t>());
    } else if (kind == "delete" && e["conversation_id"] == conv) {
      messages[e["seq"].get<int64_t>()].OnDelete(e["version"].get<int64_t>());
    } else if (kind == "delete_for_me" && e["conversation_id"] == conv) {
      messages[e["seq"].get<int64_t>()].OnDeleteForMe();
    }
  }
};

class EditsE2E : public ::testing::Test {
 protected:
  EditsE2E()
      : server_({"--edit-window-ms", std::to_string(kEditWindowMs), "--delete-window-ms",
                 std::to_string(kDeleteWindowMs)}) {}

  void SetUp() override {
    Register(server_, "alice");
    Register(server_, "bob");
    a1_ = Login(server_, "alice", "a1");
    a2_ = Login(server_, "alice", "a2");
    b1_ = Login(server_, "bob", "b1");
    b2_ = Login(server_, "bob", "b2");  // goes offline at once; syncs at the end
    b2_.conn.reset();
    auto r = a1_.conn->Call("open_conversation", {{"username", "bob"}});
    ASSERT_TRUE(r.ok) << r.code;
    conv_ = r.result["conversation"]["conversation_id"];
  }

  // Reads `d`'s live events until it has applied up to its user's head.
  void DrainLive(Device& d, View& v) {
    int64_t head = d.conn->Call("ping").result["head"];
    while (v.last < head) {
      auto f = d.conn->NextEvent(5000);
      ASSERT_TRUE(f.has_value()) << "live events stopped at " << v.last << " of " << head;
      if ((*f)["type"] == "event") v.Apply((*f)["event"], conv_);
    }
  }

  Device& DeviceOf(Actor a) { return a == Actor::kA1 ? a1_ : a == Actor::kA2 ? a2_ : b1_; }

  ServerProcess server_;
  Device a1_, a2_, b1_, b2_;
  int64_t conv_ = 0;
};

TEST_F(EditsE2E, EveryTestVectorOnEveryDevice) {
  ASSERT_EQ(MissingDocRows(parley::testing::SourceDir()), std::vector<int>{});
  View live_a1, live_a2, live_b1;
  // The conversation event each device got when alice opened it.
  DrainLive(a1_, live_a1);
  DrainLive(a2_, live_a2);
  DrainLive(b1_, live_b1);
  std::map<int, int64_t> seq_of;  // vector id -> its message's seq
  for (const EditVector& v : EditVectors()) {
    SCOPED_TRACE(RenderRow(v));
    if (v.bob_blocks_alice) {
      ASSERT_TRUE(b1_.conn->Call("block", {{"username", "alice"}}).ok);
    }
    auto sent = a1_.conn->Call("send", {{"conversation_id", conv_}, {"client_id", "m" + std::to_string(v.id)},
                                        {"body", "m"}});
    ASSERT_TRUE(sent.ok) << sent.code;
    const auto sent_at = std::chrono::steady_clock::now();
    int64_t seq = sent.result["seq"];
    seq_of[v.id] = seq;
    for (size_t i = 0; i < v.steps.size(); ++i) {
      const EditStep& step = v.steps[i];
      if (step.when != When::kSoon) {
        int window = step.when == When::kAfterEditWindow ? kEditWindowMs : kDeleteWindowMs;
        std::this_thread::sleep_until(sent_at + std::chrono::milliseconds(window + 200));
      }
      Connection& c = *DeviceOf(step.actor).conn;
      Reply r;
      if (step.op == EditOp::kEdit) {
        std::string client_id = step.client_id.empty() ? "v" + std::to_string(v.id) + "e" + std::to_string(i)
                                                       : "v" + std::to_string(v.id) + step.client_id;
        r = c.Call("edit_message",
                   {{"conversation_id", conv_}, {"seq", seq}, {"client_id", client_id}, {"body", step.body}});
      } else {
        r = c.Call("delete_message", {{"conversation_id", conv_},
                                      {"seq", seq},
                                      {"for", step.op == EditOp::kDelete ? "everyone" : "me"}});
      }
      std::string got;
      if (!r.ok) {
        got = r.code;
      } else if (step.op == EditOp::kDeleteForMe) {
        got = r.result["duplicate"].get<bool>() ? "dup" : "ok";
      } else {
        got = "v" + std::to_string(r.result["version"].get<int64_t>()) +
              (r.result["duplicate"].get<bool>() ? " dup" : "");
      }
      EXPECT_EQ(got, step.expect) << "step " << i + 1;
    }
    // The block lasts for its vector only (later messages reach bob again).
    if (v.bob_blocks_alice) {
      ASSERT_TRUE(b1_.conn->Call("unblock", {{"username", "alice"}}).ok);
    }
    DrainLive(a1_, live_a1);
    DrainLive(a2_, live_a2);
    DrainLive(b1_, live_b1);
    for (auto [name, view, expected] : {std::tuple{"a1 live", &live_a1, v.alice},
                                        std::tuple{"a2 live", &live_a2, v.alice},
                                        std::tuple{"b1 live", &live_b1, v.bob}}) {
      EXPECT_EQ(view->messages[seq].Render(), expected) << name;
      EXPECT_FALSE(view->messages[seq].leaked) << name << ": an edit or delete of a message it does not have";
    }
  }
  EXPECT_FALSE(live_a1.duplicate_or_gap);
  EXPECT_FALSE(live_a2.duplicate_or_gap);
  EXPECT_FALSE(live_b1.duplicate_or_gap);

  // By sync: a sync from the start on alice's and bob's devices, applied in
  // order and in reverse; bob's offline device from its cursor; history.
  Device b2 = Reconnect(server_, b2_);
  ASSERT_TRUE(b2.conn);
  struct Synced {
    const char* name;
    Device* device;
    int64_t after;
    bool alice;
  };
  for (const Synced& s : {Synced{"a2 sync", &a2_, 0, true}, Synced{"b1 sync", &b1_, 0, false},
                          Synced{"b2 sync from its cursor", &b2, b2_.head, false}}) {
    SCOPED_TRACE(s.name);
    std::vector<json> events = SyncAll(*s.device->conn, s.after);
    View forward, backward;
    forward.last = s.after;
    for (const auto& e : events) forward.Apply(e, conv_);
    EXPECT_FALSE(forward.duplicate_or_gap);
    for (auto it = events.rbegin(); it != events.rend(); ++it) backward.Apply(*it, conv_);
    json history = s.device->conn->Call("history", {{"conversation_id", conv_}, {"limit", 200}}).result["messages"];
    for (const EditVector& v : EditVectors()) {
      SCOPED_TRACE(RenderRow(v));
      int64_t seq = seq_of[v.id];
      const std::string& expected = s.alice ? v.alice : v.bob;
      EXPECT_EQ(forward.messages[seq].Render(), expected);
      EXPECT_EQ(backward.messages[seq].Render(), expected);
      EXPECT_FALSE(forward.messages[seq].leaked);
      auto h = std::find_if(history.begin(), history.end(), [&](const json& m) { return m["seq"] == seq; });
      if (expected == "hidden" || expected == "absent") {
        EXPECT_EQ(h, history.end()) << "history shows it";
      } else if (h != history.end()) {
        DeviceView hv;
        hv.OnMessage((*h)["body"].get<std::string>(), h->value("version", int64_t{0}), h->value("deleted", false));
        EXPECT_EQ(hv.Render(), expected) << "history";
      } else {
        ADD_FAILURE() << "history lacks seq " << seq;
      }
    }
  }
}

// Two devices edit the same message at the same moment: both are accepted,
// with distinct versions in the server's order, and every device (live and
// by sync) ends with the text of the higher version.
TEST_F(EditsE2E, RacingEditsFromTwoDevicesConvergeOnTheLaterInServerOrder) {
  auto sent = a1_.conn->Call("send", {{"conversation_id", conv_}, {"client_id", "race"}, {"body", "m"}});
  ASSERT_TRUE(sent.ok);
  int64_t seq = sent.result["seq"];
  for (int round = 0; round < 5; ++round) {
    std::string x = "x" + std::to_string(round), y = "y" + std::to_string(round);
    int64_t id1 = a1_.conn->Start("edit_message", {{"conversation_id", conv_}, {"seq", seq}, {"client_id", "e1-" + x},
                                                  {"body", x}});
    int64_t id2 = a2_.conn->Start("edit_message", {{"conversation_id", conv_}, {"seq", seq}, {"client_id", "e2-" + y},
                                                  {"body", y}});
    Reply r1 = a1_.conn->Await(id1), r2 = a2_.conn->Await(id2);
    ASSERT_TRUE(r1.ok && r2.ok) << r1.code << " " << r2.code;
    int64_t v1 = r1.result["version"], v2 = r2.result["version"];
    EXPECT_NE(v1, v2);
    EXPECT_EQ(std::max(v1, v2), 2 * (round + 1));
    const std::string winner = v1 > v2 ? x : y;
    for (Device* d : {&a1_, &a2_, &b1_}) {
      json h = d->conn->Call("history", {{"conversation_id", conv_}}).result["messages"];
      ASSERT_EQ(h.size(), 1u);
      EXPECT_EQ(h[0]["body"], winner);
      EXPECT_EQ(h[0]["version"], std::max(v1, v2));
    }
  }
  for (Device* d : {&a1_, &a2_, &b1_}) {
    View live;
    DrainLive(*d, live);
    View synced;
    for (const auto& e : SyncAll(*d->conn, 0)) synced.Apply(e, conv_);
    json h = d->conn->Call("history", {{"conversation_id", conv_}}).result["messages"];
    EXPECT_EQ(live.messages[seq].Render(), "\"" + h[0]["body"].get<std::string>() + "\" v10");
    EXPECT_EQ(synced.messages[seq].Render(), live.messages[seq].Render());
  }
}

// A blocked sender's message: its edits and deletes never reach the member
// who blocks them, live or by sync, and that member cannot touch it.
TEST_F(EditsE2E, EditsOfAWithheldMessageNeverReachTheBlocker) {
  ASSERT_TRUE(b1_.conn->Call("block", {{"username", "alice"}}).ok);
  View before;
  DrainLive(b1_, before);
  auto sent = a1_.conn->Call("send", {{"conversation_id", conv_}, {"client_id", "w"}, {"body", "withheld"}});
  ASSERT_TRUE(sent.ok);
  int64_t seq = sent.result["seq"];
  ASSERT_TRUE(a1_.conn->Call("edit_message", {{"conversation_id", conv_}, {"seq", seq}, {"client_id", "w1"},
                                              {"body", "still withheld"}})
                  .ok);
  ASSERT_TRUE(a2_.conn->Call("delete_message", {{"conversation_id", conv_}, {"seq", seq}, {"for", "everyone"}}).ok);
  EXPECT_EQ(b1_.conn->Call("delete_message", {{"conversation_id", conv_}, {"seq", seq}, {"for", "me"}}).code,
            "unknown_message");
  // Bob's stream did not move (ping head), and sync shows nothing of it.
  int64_t head = b1_.conn->Call("ping").result["head"];
  EXPECT_EQ(head, before.last);
  for (const auto& e : SyncAll(*b1_.conn, 0)) {
    EXPECT_NE(e.value("seq", int64_t{-1}), seq) << e.dump();
    if (e.contains("message")) {
      EXPECT_NE(e["message"]["seq"], seq) << e.dump();
    }
  }
  auto f = b1_.conn->NextEvent(300);
  EXPECT_FALSE(f.has_value()) << f->dump();
}

}  // namespace
}  // namespace parley::testing
