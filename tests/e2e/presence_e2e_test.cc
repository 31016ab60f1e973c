// End-to-end: presence goes online on connect and offline after the
// heartbeat timeout of a silent client; flaps shorter than the coalescing
// window are never broadcast; updates per subscriber are rate limited; and
// presence never reaches a user the owner's setting (or a block) excludes.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "e2e/helpers.h"

namespace parley::testing {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

bool IsPresenceOf(const json& f, int64_t user) { return f["type"] == "presence" && f["user_id"] == user; }

// Presence frames about `user` arriving on `c` within `ms`, answering the
// server's heartbeat timeout with a ping every 400 ms meanwhile.
std::vector<json> CollectPresence(Connection& c, int64_t user, int ms) {
  std::vector<json> out;
  auto end = Clock::now() + milliseconds(ms);
  auto next_ping = Clock::now();
  while (Clock::now() < end) {
    if (Clock::now() >= next_ping) {
      c.Start("ping", json::object());
      next_ping = Clock::now() + milliseconds(400);
    }
    int slice = static_cast<int>(std::chrono::duration_cast<milliseconds>(end - Clock::now()).count());
    auto f = WaitFrame(c, [user](const json& x) { return IsPresenceOf(x, user); }, std::clamp(slice, 1, 100));
    if (f) out.push_back(*f);
  }
  return out;
}

// The first presence frame about `user` within `ms` (pinging meanwhile).
std::optional<json> NextPresence(Connection& c, int64_t user, int ms) {
  auto end = Clock::now() + milliseconds(ms);
  while (Clock::now() < end) {
    c.Start("ping", json::object());
    if (auto f = WaitFrame(c, [user](const json& x) { return IsPresenceOf(x, user); }, 300)) return f;
  }
  return std::nullopt;
}

json Subscribe(Connection& c, std::vector<int64_t> ids) {
  auto r = c.Call("subscribe_presence", {{"user_ids", ids}});
  EXPECT_TRUE(r.ok) << r.code << ": " << r.message;
  return r.result["presence"];
}

TEST(PresenceE2E, OnlineOnConnectOfflineAfterTheHeartbeatTimeoutOfASilentClient) {
  ServerProcess server({"--heartbeat-interval-ms", "1000", "--heartbeat-timeout-ms", "2000",
                        "--presence-coalesce-ms", "500", "--presence-min-interval-ms", "0"});
  Register(server, "alice");
  Register(server, "bob");
  Device a = Login(server, "alice");
  Device b = Login(server, "bob");
  ASSERT_TRUE(b.conn->Call("ping").ok);
  json first = Subscribe(*a.conn, {b.user_id});
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(first[0]["online"], true);
  EXPECT_FALSE(first[0].contains("last_seen"));

  // Bob's client stops answering: no frame, no close; the socket stays open.
  auto silent_since = Clock::now();
  auto off = NextPresence(*a.conn, b.user_id, 6000);
  ASSERT_TRUE(off) << "no offline within heartbeat timeout + coalescing window";
  auto waited = Clock::now() - silent_since;
  EXPECT_EQ((*off)["online"], false);
  EXPECT_GT((*off)["last_seen"].get<int64_t>(), 0);
  EXPECT_GE(waited, milliseconds(2000 + 500 - 200)) << "offline before the timeout and the window passed";
  EXPECT_TRUE(b.conn->WaitClosed(1000)) << "the server did not clean up the half-open connection";

  // Back online: announced at once; last seen was stored for later viewers.
  Device b2 = Reconnect(server, b);
  auto on = NextPresence(*a.conn, b.user_id, 3000);
  ASSERT_TRUE(on);
  EXPECT_EQ((*on)["online"], true);
  b2.conn.reset();
  auto off2 = NextPresence(*a.conn, b.user_id, 3000);
  ASSERT_TRUE(off2);
  Register(server, "carol");
  Device c = Login(server, "carol");
  json seen = Subscribe(*c.conn, {b.user_id});
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0]["online"], false);
  EXPECT_EQ(seen[0]["last_seen"], (*off2)["last_seen"]);
}

TEST(PresenceE2E, AFlapShorterThanTheWindowIsNotBroadcastALongerOneIsOnceEachWay) {
  ServerProcess server({"--presence-coalesce-ms", "1500", "--presence-min-interval-ms", "200"});
  Register(server, "alice");
  Register(server, "bob");
  Device a = Login(server, "alice");
  Device b = Login(server, "bob");
  ASSERT_EQ(Subscribe(*a.conn, {b.user_id})[0]["online"], true);

  // A reconnect well inside the window: nothing at all.
  b.conn.reset();
  std::this_thread::sleep_for(milliseconds(300));
  Device b2 = Reconnect(server, b);
  EXPECT_TRUE(CollectPresence(*a.conn, b.user_id, 2500).empty()) << "a short flap was broadcast";

  // Offline for longer than the window: exactly one offline, then one online.
  b2.conn.reset();
  auto frames = CollectPresence(*a.conn, b.user_id, 2500);
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(frames[0]["online"], false);
  Device b3 = Reconnect(server, b);
  frames = CollectPresence(*a.conn, b.user_id, 1500);
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(frames[0]["online"], true);
}

TEST(PresenceE2E, OnlineWhileAnyDeviceIsInTheForeground) {
  ServerProcess server({"--presence-coalesce-ms", "300", "--presence-min-interval-ms", "0"});
  Register(server, "alice");
  Register(server, "bob");
  Device a = Login(server, "alice");
  // A device that connects in the background does not make bob online.
  auto bg = server.Connect();
  ASSERT_TRUE(bg->Call("set_app_state", {{"state", "background"}}).ok);
  auto bob_login = bg->Call("login", {{"username", "bob"}, {"password", "correct horse"}});
  ASSERT_TRUE(bob_login.ok);
  int64_t bob_id = bob_login.result["user_id"];
  EXPECT_EQ(Subscribe(*a.conn, {bob_id})[0]["online"], false);
  Device phone = Login(server, "bob", "phone");
  EXPECT_EQ((*NextPresence(*a.conn, bob_id, 2000))["online"], true);
  // The phone goes to the background: bob is offline (after the window)...
  ASSERT_TRUE(phone.conn->Call("set_app_state", {{"state", "background"}}).ok);
  EXPECT_EQ((*NextPresence(*a.conn, bob_id, 2000))["online"], false);
  // ...and online again when the background device comes to the foreground.
  ASSERT_TRUE(bg->Call("set_app_state", {{"state", "foreground"}}).ok);
  EXPECT_EQ((*NextPresence(*a.conn, bob_id, 2000))["online"], true);
  // Another foreground device leaving changes nothing while one remains.
  Device laptop = Login(server, "bob", "laptop");
  laptop.conn.reset();
  EXPECT_TRUE(CollectPresence(*a.conn, bob_id, 800).empty());
}

TEST(PresenceE2E, AtMostOneUpdatePerWatchedUserPerSubscriberPerInterval) {
  ServerProcess server({"--presence-coalesce-ms", "0", "--presence-min-interval-ms", "1000"});
  Register(server, "alice");
  Register(server, "bob");
  Device a = Login(server, "alice");
  Device b = Login(server, "bob");
  Subscribe(*a.conn, {b.user_id});
  // Bob flips 20 times in about a second.
  auto start = Clock::now();
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(b.conn->Call("set_app_state", {{"state", i % 2 == 0 ? "background" : "foreground"}}).ok);
    std::this_thread::sleep_for(milliseconds(50));
  }
  auto frames = CollectPresence(*a.conn, b.user_id, 2500);
  auto elapsed = std::chrono::duration_cast<milliseconds>(Clock::now() - start).count();
  // One update per started second at most; the last one tells the truth
  // (20 flips end in the foreground: online).
  EXPECT_LE(static_cast<int64_t>(frames.size()), elapsed / 1000 + 1);
  ASSERT_FALSE(frames.empty());
  EXPECT_EQ(frames.back()["online"], true);
}

TEST(PresenceE2E, NeverReachesAUserTheSettingOrABlockExcludes) {
  ServerProcess server({"--presence-coalesce-ms", "200", "--presence-min-interval-ms", "0"});
  for (auto u : {"alice", "bob", "carol"}) Register(server, u);
  Device a = Login(server, "alice");
  Device c = Login(server, "carol");
  Device b = Login(server, "bob");
  Device b_other = Login(server, "bob", "tablet");
  // Bob shows presence to contacts only; carol is one, alice is not.
  auto set = b.conn->Call("set_privacy", {{"presence", "contacts"}});
  ASSERT_TRUE(set.ok) << set.code;
  EXPECT_EQ(set.result["presence"], "contacts");
  auto ev = WaitEvent(*b_other.conn, [](const json& e) { return e["kind"] == "privacy"; });
  ASSERT_TRUE(ev) << "the setting did not reach bob's other device";
  EXPECT_EQ((*ev)["presence"], "contacts");
  ASSERT_TRUE(b.conn->Call("add_contact", {{"username", "carol"}}).ok);

  EXPECT_EQ(Subscribe(*a.conn, {b.user_id})[0]["online"], false);
  EXPECT_EQ(Subscribe(*c.conn, {b.user_id})[0]["online"], true);
  // Bob goes offline for good: carol hears it, alice never hears a thing.
  b.conn.reset();
  b_other.conn.reset();
  auto off = NextPresence(*c.conn, b.user_id, 3000);
  ASSERT_TRUE(off);
  EXPECT_EQ((*off)["online"], false);
  EXPECT_GT((*off)["last_seen"].get<int64_t>(), 0);
  Device b2 = Reconnect(server, b);
  EXPECT_EQ((*NextPresence(*c.conn, b.user_id, 3000))["online"], true);
  EXPECT_TRUE(CollectPresence(*a.conn, b.user_id, 500).empty()) << "presence reached a non-contact";

  // Carol blocks bob: from then on she sees nothing of him (and he of her).
  ASSERT_TRUE(c.conn->Call("block", {{"username", "bob"}}).ok);
  auto hidden = NextPresence(*c.conn, b.user_id, 2000);
  ASSERT_TRUE(hidden);
  EXPECT_EQ((*hidden)["online"], false);
  EXPECT_FALSE(hidden->contains("last_seen"));
  json carol_seen_by_bob = Subscribe(*b2.conn, {c.user_id});
  EXPECT_EQ(carol_seen_by_bob[0]["online"], false);
  b2.conn.reset();
  EXPECT_TRUE(CollectPresence(*c.conn, b.user_id, 800).empty()) << "presence crossed a block";

  // "nobody" hides it from everyone, contacts included.
  ASSERT_TRUE(c.conn->Call("unblock", {{"username", "bob"}}).ok);
  Device b3 = Reconnect(server, b);
  ASSERT_TRUE(b3.conn->Call("set_privacy", {{"presence", "nobody"}}).ok);
  EXPECT_EQ(Subscribe(*c.conn, {b.user_id})[0]["online"], false);
  EXPECT_FALSE(Subscribe(*c.conn, {b.user_id})[0].contains("last_seen"));
}

TEST(PresenceE2E, ContactListCarriesPresenceAndBadRequestsAreRefused) {
  ServerProcess server;
  Register(server, "alice");
  Register(server, "bob");
  Device a = Login(server, "alice");
  Device b = Login(server, "bob");
  ASSERT_TRUE(a.conn->Call("add_contact", {{"username", "bob"}}).ok);
  auto list = a.conn->Call("list_contacts");
  ASSERT_TRUE(list.ok);
  EXPECT_EQ(list.result["contacts"][0]["presence"]["online"], true);

  EXPECT_EQ(a.conn->Call("set_app_state", {{"state", "asleep"}}).code, "bad_request");
  EXPECT_EQ(a.conn->Call("set_privacy", {{"presence", "friends"}}).code, "bad_request");
  EXPECT_EQ(a.conn->Call("subscribe_presence", {{"user_ids", "bob"}}).code, "bad_request");
  EXPECT_EQ(a.conn->Call("subscribe_presence", {{"user_ids", {0}}}).code, "bad_request");
  std::vector<int64_t> too_many(257);
  for (size_t i = 0; i < too_many.size(); ++i) too_many[i] = static_cast<int64_t>(i) + 1;
  EXPECT_EQ(a.conn->Call("subscribe_presence", {{"user_ids", too_many}}).code, "bad_request");
  // Unknown users are left out; an empty list unsubscribes.
  EXPECT_EQ(Subscribe(*a.conn, {b.user_id, 999'999}).size(), 1u);
  EXPECT_TRUE(Subscribe(*a.conn, {}).empty());
  EXPECT_EQ(server.Connect()->Call("subscribe_presence", {{"user_ids", {1}}}).code, "not_authenticated");
}

// Last seen reaches the store once per --last-seen-flush-ms per user however
// often they come and go (a flaky network or a reconnect storm made one
// write and one commit per leave), with the latest time, and a graceful
// shutdown writes what is still queued.
TEST(PresenceE2E, LastSeenIsStoredOncePerFlushIntervalAndAtShutdown) {
  constexpr int kFlushMs = 4000;
  ServerProcess server({"--last-seen-flush-ms", std::to_string(kFlushMs), "--presence-coalesce-ms", "200"});
  Register(server, "bob");
  Register(server, "carol");
  Device b = Login(server, "bob");
  ASSERT_TRUE(b.conn->Call("add_contact", {{"username", "carol"}}).ok);  // carol may see his last seen
  auto writes = [&] { return MetricValue(HttpGet(server.port(), "/metrics"), "parley_last_seen_writes_total"); };
  auto stored = [&] { return StoreCount(server, "SELECT last_seen FROM users WHERE username = 'bob'"); };
  const double before = writes();
  auto left = Clock::now();
  for (int i = 0; i < 5; ++i) {
    b.conn.reset();
    b = Reconnect(server, b);
  }
  b.conn.reset();
  // Six leaves, well inside one interval: nothing is written yet...
  EXPECT_EQ(stored(), 0);
  EXPECT_EQ(writes(), before);
  // ...and one write once it has passed.
  auto until = left + milliseconds(kFlushMs * 3);
  while (writes() < before + 1 && Clock::now() < until) std::this_thread::sleep_for(milliseconds(100));
  std::this_thread::sleep_for(milliseconds(300));
  EXPECT_EQ(writes(), before + 1) << "not exactly one write for six leaves in one interval";
  const int64_t first = stored();
  EXPECT_GT(first, 0);
  Device c = Login(server, "carol");
  json seen = Subscribe(*c.conn, {b.user_id});
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0]["last_seen"], first) << "not the last leave's time: " << seen.dump();

  // A leave still queued when the server stops is written by the shutdown.
  std::this_thread::sleep_for(milliseconds(20));  // a later millisecond than `first`
  b = Reconnect(server, b);
  b.conn.reset();
  std::this_thread::sleep_for(milliseconds(300));  // the server has seen the close
  EXPECT_EQ(stored(), first);
  c.conn.reset();
  server.Restart();
  EXPECT_GT(stored(), first) << "the queued last seen was lost at a graceful shutdown";
}

}  // namespace
}  // namespace parley::testing
