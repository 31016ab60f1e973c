// Core keeps a connection's requests in the order they arrived although the
// store's reads complete in any order (several read connections). Each test
// runs ChatService on a real SQLite store with two read connections and holds
// one read on its reader (StoreConfig::sqlite_before_read_for_test, or
// sqlite_after_read_for_test to hold an answer from an older snapshot) while
// a later request's reads go through the other, then lets it go: the older
// request's reads land last, which is what a slow reader does in production.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <condition_variable>
#include <functional>
#include <future>
#include <mutex>

#include "core/core_test_util.h"

namespace parley::core {
namespace {

using nlohmann::json;

// Holds one read on its reader until Release(): the first to start after
// Arm(kBefore), before its transaction (it then reads what is current when
// let go), or the first to finish after Arm(kAfter), with its answer (read
// from the snapshot it had) not yet delivered.
class HeldRead {
 public:
  enum When { kNone, kBefore, kAfter };
  explicit HeldRead(Executor& wake) : wake_(wake) {}
  // `skip`: that many reads go through first.
  void Arm(When when, int skip = 0) {
    skip_ = skip;
    armed_ = static_cast<int>(when);
  }
  // Ready to hold another read (after Release).
  void Reset() {
    std::lock_guard lock(mu_);
    held_ = released_ = false;
  }
  // On a reader thread, before (after) each read.
  void At(When when) {
    if (armed_ != static_cast<int>(when)) return;
    if (skip_.fetch_sub(1) > 0) return;
    int expected = static_cast<int>(when);
    if (!armed_.compare_exchange_strong(expected, static_cast<int>(kNone))) return;
    std::unique_lock lock(mu_);
    held_ = true;
    wake_.Post([] {});  // the test thread, draining the executor, looks again
    cv_.wait(lock, [&] { return released_; });
  }
  bool Held() {
    std::lock_guard lock(mu_);
    return held_;
  }
  void Release() {
    {
      std::lock_guard lock(mu_);
      released_ = true;
    }
    cv_.notify_all();
  }

 private:
  Executor& wake_;
  std::atomic<int> armed_{static_cast<int>(kNone)};
  std::atomic<int> skip_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  bool held_ = false;
  bool released_ = false;
};

bool IsTyping(const json& f) { return f["type"] == "typing"; }
bool IsPresence(const json& f) { return f["type"] == "presence"; }

class ReadOrderTest : public testing::ChatServiceTest {
 protected:
  ReadOrderTest() {
    sqlite_read_connections_ = 2;
    before_read_for_test_ = [this] { hold_.At(HeldRead::kBefore); };
    after_read_for_test_ = [this] { hold_.At(HeldRead::kAfter); };
  }
  void TearDown() override {
    hold_.Release();  // before the store waits for its readers
    ChatServiceTest::TearDown();
  }

  // `from` sends `to` a first message; returns their conversation's id.
  int64_t FirstMessage(Conn& from, const std::string& to) {
    json sent = Call(from, "send", {{"to", to}, {"client_id", "m1"}, {"body", "hi " + to}});
    EXPECT_EQ(sent["type"], "response") << sent.dump();
    return sent["result"].value("conversation_id", int64_t{0});
  }

  // Sends a request without waiting for its answer; returns its id.
  int Start(Conn& c, const std::string& type, json fields) {
    int id = next_id_++;
    fields["v"] = 1;
    fields["id"] = id;
    fields["type"] = type;
    chat_->OnFrame(c.client, fields.dump());
    return id;
  }
  std::optional<json> Answer(Conn& c, int id) {
    return c.sink->Find([&](const json& f) { return f.value("id", json()) == id; });
  }
  json WaitAnswer(Conn& c, int id) {
    std::optional<json> got;
    EXPECT_TRUE(exec_.RunUntil([&] { return (got = Answer(c, id)).has_value(); })) << "no answer to request " << id;
    return got.value_or(json());
  }
  // Drains the executor until the armed read is held on its reader.
  void WaitHeld() { ASSERT_TRUE(exec_.RunUntil([&] { return hold_.Held(); })) << "no read was held"; }

  // alice links a laptop; its reconnect's read of the device is held (from
  // before the unlink: the laptop is live) while `phone` unlinks it and
  // `meanwhile` runs; the auth then lands, is answered, and is closed 4002.
  void UnlinkTheLaptopWhileItsAuthIsInFlight(Conn& phone, const std::function<void()>& meanwhile) {
    Conn laptop = Open();
    json linked = Call(laptop, "login", {{"username", "alice"}, {"password", "password123"}, {"device_name", "laptop"}});
    ASSERT_EQ(linked["type"], "response") << linked.dump();
    const int64_t laptop_id = linked["result"]["device_id"];
    Conn again = Open();
    hold_.Arm(HeldRead::kAfter);
    int auth = Start(again, "auth", {{"token", linked["result"]["token"]}});
    WaitHeld();
    ASSERT_EQ(Call(phone, "unlink_device", {{"device_id", laptop_id}})["type"], "response");
    EXPECT_EQ(laptop.sink->close_code, 4002);
    meanwhile();
    hold_.Release();
    json answered = WaitAnswer(again, auth);
    ASSERT_EQ(answered["type"], "response") << "the held read was not from before the unlink: " << answered.dump();
    EXPECT_TRUE(exec_.RunUntil([&] {
      std::lock_guard lock(again.sink->mu);
      return again.sink->close_code == 4002;
    })) << "the laptop, unlinked while its auth was in flight, stayed connected";
  }
  // Lets the held read go and runs what its completion leads to.
  // REQUIRES: nothing else is in flight in the store.
  void ReleaseAndLand() {
    const uint64_t before = exec_.posted();
    hold_.Release();
    ASSERT_TRUE(exec_.RunUntil([&] { return exec_.posted() > before; })) << "the held read never completed";
    exec_.RunPending();
  }
  // A read on the free reader, answered: every read queued before it on
  // that reader has completed, and its completion has run (one FIFO queue
  // of reads; completions run in the order they come back).
  void Barrier(Conn& c) { ASSERT_EQ(Call(c, "list_blocked")["type"], "response"); }
  std::vector<json> Frames(Conn& c, bool (*pred)(const json&)) {
    std::lock_guard lock(c.sink->mu);
    std::vector<json> out;
    for (const auto& f : c.sink->frames)
      if (pred(f)) out.push_back(f);
    return out;
  }
  int64_t UserId(Conn& c) { return c.client->user_id; }
  // A conversation of a and b made in the store directly, so that core has
  // not cached it: its first typing request reads its membership.
  int64_t UncachedConversation(Conn& a, Conn& b) {
    std::promise<Result<store::OpenResult>> opened;
    store_->OpenDirect(UserId(a), UserId(b), clock_->NowMillis(),
                       [&](Result<store::OpenResult> r) { opened.set_value(std::move(r)); });
    Result<store::OpenResult> r = opened.get_future().get();
    EXPECT_TRUE(r.has_value()) << r.error().ToString();
    return r ? r->conversation.id : 0;
  }

  HeldRead hold_{exec_};
};

// The failure seen end to end (TypingE2E.ExplicitStopAndRefreshCancelTheExpiry
// with two SQLite readers): alice's "start" waits for the conversation's
// membership read, her "stop" right after it is read on the other reader and
// published first. Bob must end with alice not typing: the late "start" is
// dropped, and no expiry is armed for it.
TEST_F(ReadOrderTest, ALateStartDoesNotFollowTheStopSentAfterIt) {
  Conn alice = LoggedIn("alice");
  Conn bob = LoggedIn("bob");
  const int64_t conv = UncachedConversation(alice, bob);

  hold_.Arm(HeldRead::kBefore);
  int start = Start(alice, "typing", {{"conversation_id", conv}, {"state", "start"}});
  WaitHeld();
  json stop = Call(alice, "typing", {{"conversation_id", conv}, {"state", "stop"}});
  ASSERT_EQ(stop["type"], "response") << stop.dump();
  ASSERT_TRUE(exec_.RunUntil([&] { return Frames(bob, IsTyping).size() == 1; }));
  ReleaseAndLand();  // and an expiry, if one was armed (timers run at once here)
  EXPECT_EQ(Answer(alice, start).value_or(json())["type"], "response");

  std::vector<json> seen = Frames(bob, IsTyping);
  ASSERT_FALSE(seen.empty());
  EXPECT_EQ(seen.back()["state"], "stop") << "bob last saw alice typing";
  EXPECT_EQ(seen.size(), 1u) << "bob got a stale start (and its expiry): " << json(seen).dump();
  EXPECT_EQ(chat_->PendingOrderKeysForTest(), 0u);
}

// A refused request gives its place back: nothing is left behind per key.
TEST_F(ReadOrderTest, ARefusedTypingRequestLeavesNoOrderBehind) {
  Conn alice = LoggedIn("alice");
  Conn bob = LoggedIn("bob");
  Conn carol = LoggedIn("carol");
  const int64_t conv = UncachedConversation(alice, bob);
  json refused = Call(carol, "typing", {{"conversation_id", conv}, {"state", "start"}});
  EXPECT_EQ(refused["code"], "not_member") << refused.dump();
  json unknown = Call(carol, "typing", {{"conversation_id", conv + 1000}, {"state", "start"}});
  EXPECT_EQ(unknown["code"], "not_member") << unknown.dump();
  EXPECT_EQ(chat_->PendingOrderKeysForTest(), 0u);
  EXPECT_TRUE(Frames(alice, IsTyping).empty());
  EXPECT_TRUE(Frames(bob, IsTyping).empty());
}

// In a cluster every typing request re-reads both members' block lists: the
// same reordering, through those reads, with the conversation cached.
class ClusterReadOrderTest : public ReadOrderTest {
 protected:
  ClusterReadOrderTest() { cluster_ = true; }
};

TEST_F(ClusterReadOrderTest, ALateStartDoesNotFollowTheStopSentAfterIt) {
  Conn alice = LoggedIn("alice");
  Conn bob = LoggedIn("bob");
  const int64_t conv = FirstMessage(alice, "bob");
  ASSERT_NE(conv, 0);

  hold_.Arm(HeldRead::kBefore);
  int start = Start(alice, "typing", {{"conversation_id", conv}, {"state", "start"}});
  WaitHeld();
  ASSERT_EQ(Call(alice, "typing", {{"conversation_id", conv}, {"state", "stop"}})["type"], "response");
  ASSERT_TRUE(exec_.RunUntil([&] { return Frames(bob, IsTyping).size() == 1; }));
  ReleaseAndLand();
  EXPECT_EQ(Answer(alice, start).value_or(json())["type"], "response");

  std::vector<json> seen = Frames(bob, IsTyping);
  EXPECT_EQ(seen.size(), 1u) << json(seen).dump();
  EXPECT_EQ(seen.back()["state"], "stop");
  EXPECT_EQ(chat_->PendingOrderKeysForTest(), 0u);
}

// subscribe_presence replaces the connection's subscription: the last one
// sent is the one kept, even when an earlier one's read lands after it.
TEST_F(ReadOrderTest, TheLastSubscriptionSentIsTheOneKept) {
  Conn alice = LoggedIn("alice");
  Conn bob = LoggedIn("bob");
  Conn carol = LoggedIn("carol");

  hold_.Arm(HeldRead::kBefore);
  int first = Start(alice, "subscribe_presence", {{"user_ids", {UserId(bob)}}});
  WaitHeld();
  ASSERT_EQ(Call(alice, "subscribe_presence", {{"user_ids", {UserId(carol)}}})["type"], "response");
  hold_.Release();
  EXPECT_EQ(WaitAnswer(alice, first)["type"], "response");

  ASSERT_EQ(Call(bob, "set_app_state", {{"state", "background"}})["type"], "response");
  ASSERT_EQ(Call(carol, "set_app_state", {{"state", "background"}})["type"], "response");
  exec_.RunPending();  // the coalescing timers

  std::vector<json> seen = Frames(alice, IsPresence);
  ASSERT_EQ(seen.size(), 1u) << json(seen).dump();
  EXPECT_EQ(seen[0]["user_id"], UserId(carol));
  EXPECT_EQ(seen[0]["online"], false);
}

// Bob hides his presence and shows it again at once; each change re-reads
// alice's visibility of him, and the first read lands last. Alice must still
// see him, and never be told he went offline.
TEST_F(ReadOrderTest, AnOlderVisibilityReadDoesNotUndoANewerOne) {
  Conn alice = LoggedIn("alice");
  Conn bob = LoggedIn("bob");
  json sub = Call(alice, "subscribe_presence", {{"user_ids", {UserId(bob)}}});
  ASSERT_EQ(sub["result"]["presence"][0]["online"], true) << sub.dump();

  hold_.Arm(HeldRead::kAfter);
  ASSERT_EQ(Call(bob, "set_privacy", {{"presence", "nobody"}})["type"], "response");
  WaitHeld();  // the re-read of alice's visibility after "nobody", answered "hidden"
  ASSERT_EQ(Call(bob, "set_privacy", {{"presence", "everyone"}})["type"], "response");
  Barrier(alice);  // the re-read after "everyone" has landed (it changes nothing alice sees)
  ReleaseAndLand();
  EXPECT_TRUE(Frames(alice, IsPresence).empty()) << "alice was told bob went offline: "
                                                   << json(Frames(alice, IsPresence)).dump();

  // Bob leaves: alice, who may see him, gets offline with his last seen.
  ASSERT_EQ(Call(bob, "set_app_state", {{"state", "background"}})["type"], "response");
  exec_.RunPending();
  std::vector<json> seen = Frames(alice, IsPresence);
  ASSERT_FALSE(seen.empty());
  EXPECT_EQ(seen.back()["online"], false);
  EXPECT_TRUE(seen.back().contains("last_seen")) << "bob is hidden from alice: " << json(seen).dump();
}

// Alice subscribes to bob; her read is answered from before bob hides his
// presence, and lands after the change completed, when it had no watcher to
// re-check. Alice must still end up not seeing him: told he is offline,
// without a last seen, and never shown his last seen when he leaves.
TEST_F(ReadOrderTest, ASubscriptionReadBeforeAPrivacyChangeIsReadAgain) {
  Conn alice = LoggedIn("alice");
  Conn bob = LoggedIn("bob");

  hold_.Arm(HeldRead::kAfter);
  int sub = Start(alice, "subscribe_presence", {{"user_ids", {UserId(bob)}}});
  WaitHeld();  // read from before the change: bob visible and online
  ASSERT_EQ(Call(bob, "set_privacy", {{"presence", "nobody"}})["type"], "response");
  hold_.Release();
  json answered = WaitAnswer(alice, sub);
  ASSERT_EQ(answered["result"]["presence"][0]["online"], true) << "the held read was not from before the change";
  ASSERT_TRUE(exec_.RunUntil([&] { return !Frames(alice, IsPresence).empty(); }))
      << "alice was never told that she may no longer see bob";
  json hidden = Frames(alice, IsPresence).back();
  EXPECT_EQ(hidden["online"], false) << hidden.dump();
  EXPECT_FALSE(hidden.contains("last_seen")) << hidden.dump();

  ASSERT_EQ(Call(bob, "set_app_state", {{"state", "background"}})["type"], "response");
  exec_.RunPending();
  for (const json& f : Frames(alice, IsPresence))
    EXPECT_FALSE(f.contains("last_seen")) << "alice saw the last seen of bob, who hides it: " << f.dump();
}

// A reconnect of alice's laptop reads its device before her phone unlinks it
// and lands after the unlink closed the laptop's connections: it is answered
// (its read said the device was live) and then closed, as it would have been
// had it attached before the unlink. So is a login whose read of its new
// device was answered before a password change revoked it.
TEST_F(ReadOrderTest, AnAuthReadBeforeARevocationIsClosedWhenItLands) {
  Conn phone = LoggedIn("alice");
  UnlinkTheLaptopWhileItsAuthIsInFlight(phone, [] {});

  // A second phone logs in; its read of the new device is held while the
  // first phone changes the password (revoking every other device).
  Conn second = Open();
  hold_.Reset();
  hold_.Arm(HeldRead::kAfter, /*skip=*/1);  // the username's look-up goes; the device's read is held
  int login = Start(second, "login", {{"username", "alice"}, {"password", "password123"}, {"device_name", "phone 2"}});
  WaitHeld();
  json changed = Call(phone, "change_password", {{"old_password", "password123"}, {"new_password", "password456"}});
  ASSERT_EQ(changed["type"], "response") << changed.dump();
  hold_.Release();
  ASSERT_EQ(WaitAnswer(second, login)["type"], "response");
  EXPECT_TRUE(exec_.RunUntil([&] {
    std::lock_guard lock(second.sink->mu);
    return second.sink->close_code == 4002;
  })) << "a device revoked by a password change while its login was in flight stayed connected";
  EXPECT_EQ(phone.sink->close_code, 0) << "the phone that changed the password was closed";
}

// As above, while more users are revoked than ChatService notes one by one
// (kMaxNotedRevocations: revocations from other nodes, played by the test
// fabric): the notes give way to "every auth in flight reads its device
// again", and the laptop unlinked while its auth was in flight is still
// closed when the auth lands.
TEST_F(ReadOrderTest, AnAuthReadBeforeARevocationIsClosedEvenPastTheNotesLimit) {
  Conn phone = LoggedIn("alice");
  UnlinkTheLaptopWhileItsAuthIsInFlight(phone, [&] {
    const int64_t others = static_cast<int64_t>(ChatService::kMaxNotedRevocations) + 10;
    for (int64_t user = 1'000'000; user < 1'000'000 + others; ++user)
      fabric_.DeliverRemote({fabric::Fabric::UserChange::Kind::kRevoked, user, 0});
    exec_.RunPending();
  });
  EXPECT_EQ(phone.sink->close_code, 0);
}

// As above, through a store that then fails the device list: the auth that
// raced the unlink cannot be confirmed, so it is closed with 4003 (reconnect
// later) rather than left connected, and its reconnect is refused.
class FaultyReadOrderTest : public ReadOrderTest {
 protected:
  FaultyReadOrderTest() { with_fault_store_ = true; }
};

TEST_F(FaultyReadOrderTest, AnAuthThatRacedARevocationAndCannotReadItsDevicesIsClosedToComeBack) {
  Conn phone = LoggedIn("alice");
  Conn laptop = Open();
  json linked = Call(laptop, "login", {{"username", "alice"}, {"password", "password123"}, {"device_name", "laptop"}});
  ASSERT_EQ(linked["type"], "response") << linked.dump();
  const std::string token = linked["result"]["token"];

  Conn again = Open();
  hold_.Arm(HeldRead::kAfter);
  int auth = Start(again, "auth", {{"token", token}});
  WaitHeld();  // read from before the unlink: the laptop is live
  ASSERT_EQ(Call(phone, "unlink_device", {{"device_id", linked["result"]["device_id"]}})["type"], "response");
  fault_->FailNextListDevices(1, Status(ErrorCode::kUnavailable, "test: the store cannot be read"));
  hold_.Release();
  ASSERT_EQ(WaitAnswer(again, auth)["type"], "response");
  EXPECT_TRUE(exec_.RunUntil([&] {
    std::lock_guard lock(again.sink->mu);
    return again.sink->close_code == 4003;
  })) << "an auth that raced a revocation stayed connected although its devices could not be read";
  EXPECT_EQ(phone.sink->close_code, 0);
  Conn back = Open();
  EXPECT_EQ(Call(back, "auth", {{"token", token}})["code"], "invalid_token");
}

// A login whose read of the user (the password hash it verifies) was answered
// before a password change, with the old password: the device it would
// create would outlive the change, which revoked only the devices that
// existed. The login fails instead, and no device is added.
TEST_F(ReadOrderTest, ALoginThatRacedAPasswordChangeGetsNoDevice) {
  Conn phone = LoggedIn("alice");
  Conn laptop = Open();
  hold_.Arm(HeldRead::kAfter);  // the username's look-up: the old hash
  int login = Start(laptop, "login", {{"username", "alice"}, {"password", "password123"}, {"device_name", "laptop"}});
  WaitHeld();
  json changed = Call(phone, "change_password", {{"old_password", "password123"}, {"new_password", "password456"}});
  ASSERT_EQ(changed["type"], "response") << changed.dump();
  hold_.Release();
  json answered = WaitAnswer(laptop, login);
  EXPECT_EQ(answered["type"], "error") << "a login with the old password got a device: " << answered.dump();
  EXPECT_EQ(answered["code"], "bad_credentials") << answered.dump();
  json devices = Call(phone, "list_devices");
  ASSERT_EQ(devices["type"], "response") << devices.dump();
  EXPECT_EQ(devices["result"]["devices"].size(), 1u) << devices.dump();
  // The new password works.
  Conn again = Open();
  json relogin = Call(again, "login", {{"username", "alice"}, {"password", "password456"}, {"device_name", "laptop"}});
  EXPECT_EQ(relogin["type"], "response") << relogin.dump();
}

// "block bob" then "unblock bob" from one connection: each first looks the
// username up; the block's lookup is held, and the unblock must not overtake
// it (stored unblock-then-block, bob would stay blocked).
TEST_F(ReadOrderTest, BlockThenUnblockEndsUnblocked) {
  Conn alice = LoggedIn("alice");
  Conn bob = LoggedIn("bob");

  hold_.Arm(HeldRead::kBefore);
  int block = Start(alice, "block", {{"username", "bob"}});
  WaitHeld();
  int unblock = Start(alice, "unblock", {{"username", "bob"}});
  Barrier(alice);  // the unblock's lookup would have landed, were it not waiting for the block
  EXPECT_FALSE(Answer(alice, unblock).has_value()) << "the unblock was answered before the block before it";
  hold_.Release();
  json blocked = WaitAnswer(alice, block);
  json unblocked = WaitAnswer(alice, unblock);
  EXPECT_EQ(blocked["type"], "response") << blocked.dump();
  EXPECT_EQ(unblocked["type"], "response") << unblocked.dump();

  json list = Call(alice, "list_blocked");
  ASSERT_EQ(list["type"], "response") << list.dump();
  EXPECT_TRUE(list["result"]["users"].empty()) << "bob is still blocked: " << list.dump();
}

// A selection that waits for its membership read, then "all": the
// connection must end syncing everything in full.
TEST_F(ReadOrderTest, SelectSyncRequestsTakeEffectInTheOrderSent) {
  Conn alice = LoggedIn("alice");
  Conn bob = LoggedIn("bob");
  Conn carol = LoggedIn("carol");
  const int64_t conv = FirstMessage(alice, "bob");
  ASSERT_NE(conv, 0);

  hold_.Arm(HeldRead::kBefore);
  int select = Start(alice, "select_sync", {{"conversations", {conv}}});
  WaitHeld();
  int all = Start(alice, "select_sync", {{"all", true}});
  Barrier(alice);
  EXPECT_FALSE(Answer(alice, all).has_value()) << "\"all\" was answered before the selection sent before it";
  hold_.Release();
  EXPECT_EQ(WaitAnswer(alice, select)["result"]["selective"], true);
  EXPECT_EQ(WaitAnswer(alice, all)["result"]["selective"], false);

  // Carol's conversation is not in the selection: alice gets her message in
  // full only if "all" took effect last.
  ASSERT_EQ(Call(carol, "send", {{"to", "alice"}, {"client_id", "c1"}, {"body", "hi alice"}})["type"], "response");
  auto from_carol = [conv](const json& f) {
    if (f["type"] != "event") return false;
    const json& e = f["event"];
    if (e["kind"] == "summary") return e["conversation_id"] != conv;
    if (e["kind"] == "message") return e["message"]["conversation_id"] != conv;
    return false;
  };
  std::optional<json> got;
  ASSERT_TRUE(exec_.RunUntil([&] { return (got = alice.sink->Find(from_carol)).has_value(); }));
  EXPECT_EQ((*got)["event"]["kind"], "message") << got->dump();
}

}  // namespace
}  // namespace parley::core
