// ChatService against a real SQLite store in a temporary directory and the
// in-process fabric, with no sockets: frames go in through OnFrame and come
// out at FakeSinks. The core executor is drained by the test thread itself.
#include "core/chat_service.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <future>
#include <optional>

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

// Another node revoked alice's laptop, which is attached here, but its routed
// close never reached this node (the laptop's route was not in Redis yet
// when the close looked it up): its broadcast kRevoked makes this node read
// alice's devices again and close the revoked one, and only that one.
TEST_F(ChatServiceTest, ARevocationOnAnotherNodeClosesARevokedDeviceAttachedHere) {
  Conn phone = LoggedIn("alice");
  Conn laptop = LoggedIn("alice", false);
  Conn bob = LoggedIn("bob");
  const int64_t alice_id = laptop.client->user_id;
  std::promise<Status> revoked;
  store_->RevokeDevice(alice_id, laptop.client->device_id, [&](Status s) { revoked.set_value(s); });
  ASSERT_TRUE(revoked.get_future().get().ok());
  exec_.RunPending();
  ASSERT_EQ(laptop.sink->close_code, 0) << "closed without the other node's message";
  fabric_.DeliverRemote({fabric::Fabric::UserChange::Kind::kRevoked, alice_id, 0});
  EXPECT_TRUE(exec_.RunUntil([&] {
    std::lock_guard lock(laptop.sink->mu);
    return laptop.sink->close_code == 4002;
  })) << "the revoked laptop stayed connected";
  exec_.RunPending();
  EXPECT_EQ(phone.sink->close_code, 0);
  EXPECT_EQ(bob.sink->close_code, 0);
}

// A node whose fabric is cut again and again, each cut coming as soon as
// the re-check's batch has been read: the re-check must still reach every
// connected user, not start over from the first ones at every cut.
class RecheckWalkTest : public ChatServiceTest {
 protected:
  RecheckWalkTest() {
    recheck_batch_ = 1;
    before_read_for_test_ = [this] { reads_.fetch_add(1); };
  }
  std::atomic<int> reads_{0};
};

TEST_F(RecheckWalkTest, RepeatedCutsDoNotRestartTheWalkFromItsFirstUsers) {
  // Three users, each with a device revoked behind this node's back (the
  // close was lost in the cut) and still attached here.
  std::vector<Conn> revoked;
  for (const char* name : {"ann", "ben", "cat"}) {
    LoggedIn(name);
    Conn second = LoggedIn(name, false);
    std::promise<Status> done;
    store_->RevokeDevice(second.client->user_id, second.client->device_id, [&](Status s) { done.set_value(s); });
    ASSERT_TRUE(done.get_future().get().ok());
    revoked.push_back(second);
  }
  exec_.RunPending();
  auto closed = [&] {
    int n = 0;
    for (Conn& c : revoked) {
      std::lock_guard lock(c.sink->mu);
      n += c.sink->close_code == 4002 ? 1 : 0;
    }
    return n;
  };
  ASSERT_EQ(closed(), 0);
  // A cut, then another as soon as each batch (one user: account, devices)
  // has been read.
  const int start = reads_.load();
  for (int i = 0; i < 3; ++i) {
    const int before = reads_.load();
    fabric_.DeliverRemote({fabric::Fabric::UserChange::Kind::kAnything, 0, 0});
    ASSERT_TRUE(exec_.RunUntil([&] { return reads_.load() >= before + 2; })) << "cut " << i << " read nothing";
  }
  EXPECT_TRUE(exec_.RunUntil([&] { return closed() == 3; })) << closed() << " of 3 revoked devices closed";
  // Three reads per user (account, devices, then the head of NoticeHead,
  // which the last user's may not have reached yet).
  const int after_cuts = reads_.load();
  EXPECT_GE(after_cuts - start, 8);
  EXPECT_LE(after_cuts - start, 9) << "the walk read users again before reaching the last (it started over at a cut)";
  exec_.RunPending();
  // One more walk follows for the cuts that came during the first: three
  // users, three reads each, then nothing.
  EXPECT_TRUE(exec_.RunUntil([&] { return reads_.load() >= start + 9 + 9; }));
}

// After a cut from the other nodes, live events they published meanwhile
// never came: every device connected here gets a `head` notice with its
// user's head, so that one behind it syncs without waiting for its next
// ping.
TEST_F(ChatServiceTest, ACutFromTheOtherNodesSendsEachDeviceItsHead) {
  Conn a = LoggedIn("alice");
  Conn b1 = LoggedIn("bob");
  Conn b2 = LoggedIn("bob", false);
  for (int i = 0; i < 3; ++i)
    ASSERT_EQ(Call(a, "send", {{"to", "bob"}, {"client_id", "m" + std::to_string(i)}, {"body", "x"}})["type"], "response");
  const int64_t alice_head = Call(a, "ping")["result"]["head"];
  const int64_t bob_head = Call(b1, "ping")["result"]["head"];
  ASSERT_GT(bob_head, 0);
  auto is_head = [](const json& f) { return f["type"] == "head"; };
  exec_.RunPending();
  ASSERT_EQ(b1.sink->Count(is_head), 0u) << "a head notice without a cut";
  fabric_.DeliverRemote({fabric::Fabric::UserChange::Kind::kAnything, 0, 0});
  for (Conn* c : {&a, &b1, &b2}) {
    ASSERT_TRUE(exec_.RunUntil([&] { return c->sink->Count(is_head) == 1; }));
    const json notice = *c->sink->Find(is_head);
    EXPECT_EQ(notice["head"], c == &a ? alice_head : bob_head) << notice.dump();
    EXPECT_EQ(notice["v"], 1);
  }
}

// Retention (issue 12) against a clock the test moves: the timer reaches
// both members, a message sent after it carries expires_at and is deleted
// for everyone (marked expired) once the clock passes it, and the purge
// takes the tombstone only after its delay.
class OffsetClock final : public Clock {
 public:
  int64_t NowMillis() const override { return SystemClock::Instance().NowMillis() + offset_ms.load(); }
  std::atomic<int64_t> offset_ms{0};
};

class RetentionTest : public ChatServiceTest {
 protected:
  RetentionTest() { clock_ = &clock; }
  // Runs one expiry (purge) step; returns what it reported.
  int Expire() {
    std::optional<int> n;
    chat_->RunExpiryForTest([&](int count) { n = count; });
    exec_.RunUntil([&] { return n.has_value(); });
    return n.value_or(-2);
  }
  int Purge() {
    std::optional<int> n;
    chat_->RunPurgeForTest([&](int count) { n = count; });
    exec_.RunUntil([&] { return n.has_value(); });
    return n.value_or(-2);
  }
  // Runs trim steps until a pass over every user is complete; returns the
  // entries removed.
  int64_t Trim() {
    int64_t total = 0;
    for (int step = 0; step < 100; ++step) {
      std::optional<std::pair<int64_t, bool>> r;
      chat_->RunTrimForTest([&](int64_t removed, bool pass_done) { r = {removed, pass_done}; });
      exec_.RunUntil([&] { return r.has_value(); });
      if (!r || r->first < 0) return -1;
      total += r->first;
      if (r->second) return total;
    }
    return -2;
  }

  // Runs one compaction step (the cold tier); returns how many it compacted.
  int Compact() {
    std::optional<int> n;
    chat_->RunCompactionForTest([&](int count) { n = count; });
    exec_.RunUntil([&] { return n.has_value(); });
    return n.value_or(-2);
  }
  OffsetClock clock;
};

// `auth` marks the device seen only when the stored time is a minute old or
// more (kDeviceSeenResolutionMs): a reconnect storm does not make one store
// write per reconnect, and the device list stays right to the minute.
TEST_F(RetentionTest, AuthMarksTheDeviceSeenOnlyWhenTheStoredTimeIsAMinuteOld) {
  Conn phone = Open();
  ASSERT_EQ(Call(phone, "register", {{"username", "alice"}, {"password", "password123"}})["type"], "response");
  auto login = Call(phone, "login", {{"username", "alice"}, {"password", "password123"}, {"device_name", "phone"}});
  std::string token = login["result"]["token"];
  // The device's last_seen_at as the list shows it, read after a set_profile
  // has committed: the writer is FIFO, so an auth's write made before it is
  // in the store by then.
  auto seen = [&](Conn& c) {
    EXPECT_EQ(Call(c, "set_profile", {{"display_name", "Alice"}})["type"], "response");
    auto list = Call(c, "list_devices");
    return list["result"]["devices"][0]["last_seen_at"].get<int64_t>();
  };
  auto reconnect = [&] {
    Conn c = Open();
    EXPECT_EQ(Call(c, "auth", {{"token", token}})["type"], "response");
    return c;
  };
  Conn first = reconnect();
  int64_t t0 = seen(first);
  ASSERT_GT(t0, 0);

  clock.offset_ms += 30'000;
  Conn second = reconnect();
  EXPECT_EQ(seen(second), t0) << "an auth within the minute wrote last_seen_at again";

  clock.offset_ms += 31'000;
  Conn third = reconnect();
  int64_t t2 = seen(third);
  EXPECT_GE(t2, t0 + 61'000) << "an auth a minute later did not mark the device seen";
}

// The cold tier: a message is compacted once it is older than cold_after
// and its conversation's oldest hot message is older than cold_after plus a
// quarter (the gather time); what clients read does not change.
TEST_F(RetentionTest, CompactionWaitsForTheAgeAndTheGatherTimeAndChangesNoFrame) {
  Conn a = LoggedIn("alice");
  Conn b = LoggedIn("bob");
  int64_t conv = Call(a, "open_conversation", {{"username", "bob"}})["result"]["conversation"]["conversation_id"];
  for (int i = 0; i < 3; ++i) {
    auto sent = Call(a, "send", {{"conversation_id", conv}, {"client_id", "m" + std::to_string(i)},
                                 {"body", "old text " + std::to_string(i)}});
    ASSERT_EQ(sent["type"], "response") << sent.dump();
  }
  const std::string history = Call(b, "history", {{"conversation_id", conv}})["result"].dump();
  const std::string synced = Call(b, "sync", {{"after", 0}})["result"].dump();
  const int64_t cold_after = chat_->config().retention.cold_after_ms;
  ASSERT_GT(cold_after, 0) << "on by default";
  EXPECT_EQ(Compact(), 0);
  clock.offset_ms = cold_after + 1'000;
  EXPECT_EQ(Compact(), 0) << "old enough, but the conversation gathers for a quarter more";
  clock.offset_ms = cold_after + cold_after / core::RetentionConfig::kColdGatherDivisor + 1'000;
  EXPECT_EQ(Compact(), 3);
  EXPECT_EQ(Compact(), 0);
  EXPECT_EQ(Call(b, "history", {{"conversation_id", conv}})["result"].dump(), history);
  EXPECT_EQ(Call(b, "sync", {{"after", 0}})["result"].dump(), synced);
}

TEST_F(RetentionTest, ATimedMessageIsDeletedForEveryoneAtItsExpiryAndPurgedAfterTheDelay) {
  Conn a = LoggedIn("alice");
  Conn b = LoggedIn("bob");
  int64_t conv = Call(a, "open_conversation", {{"username", "bob"}})["result"]["conversation"]["conversation_id"];
  auto set = Call(b, "set_disappearing", {{"conversation_id", conv}, {"seconds", 60}});
  ASSERT_EQ(set["type"], "response") << set.dump();
  auto is_setting = [&](const json& f) { return f["type"] == "event" && f["event"]["kind"] == "disappearing"; };
  ASSERT_TRUE(exec_.RunUntil([&] { return a.sink->Count(is_setting) == 1 && b.sink->Count(is_setting) == 1; }));
  auto sent = Call(a, "send", {{"conversation_id", conv}, {"client_id", "m1"}, {"body", "gone soon"}});
  ASSERT_EQ(sent["type"], "response") << sent.dump();
  const int64_t seq = sent["result"]["seq"];
  const int64_t expires_at = sent["result"]["expires_at"];
  EXPECT_GE(expires_at, sent["result"]["ts"].get<int64_t>() + 60'000);
  EXPECT_EQ(Expire(), 0) << "not yet";
  clock.offset_ms = 61'000;
  // Past its expiry but before the expiry step: reads show the tombstone.
  auto early = Call(b, "history", {{"conversation_id", conv}});
  ASSERT_EQ(early["result"]["messages"].size(), 1u);
  EXPECT_EQ(early["result"]["messages"][0]["body"], "");
  EXPECT_EQ(early["result"]["messages"][0]["reason"], "expired");
  auto synced = Call(b, "sync", {{"after", 0}});
  EXPECT_EQ(synced["result"].dump().find("gone soon"), std::string::npos) << synced.dump();
  auto snap = Call(b, "snapshot");
  EXPECT_EQ(snap["result"].dump().find("gone soon"), std::string::npos) << snap.dump();
  EXPECT_EQ(Expire(), 1);
  auto is_expiry = [&](const json& f) {
    return f["type"] == "event" && f["event"]["kind"] == "delete" && f["event"]["seq"] == seq &&
           f["event"].value("reason", "") == "expired";
  };
  ASSERT_TRUE(exec_.RunUntil([&] { return a.sink->Count(is_expiry) == 1 && b.sink->Count(is_expiry) == 1; }));
  EXPECT_EQ(Expire(), 0) << "once";
  auto h = Call(b, "history", {{"conversation_id", conv}});
  ASSERT_EQ(h["result"]["messages"].size(), 1u);
  EXPECT_EQ(h["result"]["messages"][0]["body"], "");
  EXPECT_EQ(h["result"]["messages"][0]["reason"], "expired");
  // The purge waits for its delay (an hour by default).
  EXPECT_EQ(Purge(), 0);
  clock.offset_ms = 61'000 + chat_->config().retention.purge_delay_ms + 1000;
  EXPECT_EQ(Purge(), 1);
  EXPECT_EQ(Purge(), 0);
  // A retry of the purged message's client id: its original ack.
  auto retry = Call(a, "send", {{"conversation_id", conv}, {"client_id", "m1"}, {"body", "gone soon"}});
  EXPECT_EQ(retry["result"]["duplicate"], true);
  EXPECT_EQ(retry["result"]["seq"], seq);
  EXPECT_EQ(retry["result"]["ts"], sent["result"]["ts"]);
}

// Stream trimming with the defaults (30 days, and a device seen within 30
// days keeps what it has not acknowledged): a phone off for three weeks
// loses nothing; one off for longer gets cursor_too_old and a snapshot.
TEST_F(RetentionTest, StreamEntriesGoAfterTheHorizonUnlessADeviceSeenWithinTheGraceStillNeedsThem) {
  constexpr int64_t kDay = 24LL * 3600 * 1000;
  Conn a = LoggedIn("alice");
  Conn b = LoggedIn("bob");
  for (int i = 0; i < 3; ++i)
    ASSERT_EQ(Call(a, "send", {{"to", "bob"}, {"client_id", "m" + std::to_string(i)}, {"body", "x"}})["type"],
              "response");
  // bob: the conversation (1) and three messages (2-4); his device applied 2.
  clock.offset_ms = 20 * kDay;
  ASSERT_EQ(Call(b, "ack", {{"user_seq", 2}})["type"], "response");
  clock.offset_ms = 29 * kDay;
  EXPECT_EQ(Trim(), 0) << "nothing is 30 days old yet";
  clock.offset_ms = 31 * kDay;
  // alice's device was last seen 31 days ago: her 4 entries go; bob's device
  // (seen 11 days ago) still needs 3 and 4.
  EXPECT_EQ(Trim(), 4 + 2);
  auto page = Call(b, "sync", {{"after", 2}});
  ASSERT_EQ(page["type"], "response") << page.dump();
  EXPECT_EQ(page["result"]["events"].size(), 2u);
  EXPECT_EQ(Call(b, "sync", {{"after", 1}})["code"], "cursor_too_old");
  // Twenty days later bob's device is past the grace too.
  clock.offset_ms = 51 * kDay;
  EXPECT_EQ(Trim(), 2);
  auto old = Call(b, "sync", {});
  EXPECT_EQ(old["code"], "cursor_too_old") << old.dump();
  auto snap = Call(b, "snapshot");
  ASSERT_EQ(snap["type"], "response");
  const int64_t head = snap["result"]["head"];
  EXPECT_EQ(head, 4);
  EXPECT_EQ(snap["result"]["conversations"][0]["messages"].size(), 3u) << "the messages themselves stay";
  auto from_head = Call(b, "sync", {{"after", head}});
  ASSERT_EQ(from_head["type"], "response") << from_head.dump();
  EXPECT_TRUE(from_head["result"]["events"].empty());
}

}  // namespace
}  // namespace parley::core
