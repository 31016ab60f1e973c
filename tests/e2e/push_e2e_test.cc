// Push notifications end to end (issue 11): a real parleyd whose webhook
// provider posts to a local HTTP(S) receiver that this test starts and
// scripts (answer 500 twice, then 200, ...; e2e/push_receiver.h). Windows and backoffs are short through
// parleyd's flags, so each test takes seconds.

#include <chrono>
#include <filesystem>
#include <thread>
#include <tuple>

#include "e2e/push_receiver.h"
#include "sdk/sdk_test_util.h"
#include "test_paths.h"

namespace parley::testing {
namespace {

using Clock = std::chrono::steady_clock;

TEST(PushE2eTest, AMessageToABackgroundedDeviceMakesOneSignedPostWithTheDocumentedPayload) {
  PushReceiver rx;
  ServerProcess server(PushArgs(rx));
  Register(server, "alice");
  Register(server, "bob");
  Device alice = Login(server, "alice");
  ASSERT_TRUE(alice.conn->Call("set_profile", {{"display_name", "Alice Liddell"}}).ok);
  Device bob = Login(server, "bob", "phone");
  RegisterPush(bob, "apns-token-bob");
  Background(bob);
  int64_t seq = SendTo(alice, "bob", "hello bob", "m1");
  ASSERT_TRUE(rx.WaitPosts(1, 5000));
  std::this_thread::sleep_for(std::chrono::milliseconds(1200));  // more than a window: still one
  std::vector<PushReceiver::Post> posts = rx.Posts();
  ASSERT_EQ(posts.size(), 1u);
  const auto& p = posts[0];
  EXPECT_EQ(p.target, "/push");
  EXPECT_EQ(p.headers.at("content-type"), "application/json");
  // The signature: HMAC-SHA256 over the exact body with the shared secret.
  EXPECT_EQ(p.headers.at("x-parley-signature"), Hmac(kPushSecret, p.body));
  EXPECT_NE(p.headers.at("x-parley-signature"), Hmac("wrong-secret", p.body));
  ASSERT_TRUE(p.payload.is_object()) << p.body;
  const json& j = p.payload;
  int64_t conv = j["conversation_id"];
  EXPECT_GT(conv, 0);
  EXPECT_EQ(j["id"], std::to_string(bob.device_id) + "-" + std::to_string(conv) + "-" + std::to_string(seq) + "-message");
  EXPECT_EQ(p.headers.at("x-parley-push-id"), j["id"]);
  EXPECT_EQ(j["kind"], "message");
  EXPECT_EQ(j["silent"], false);
  EXPECT_EQ(j["user_id"], bob.user_id);
  EXPECT_EQ(j["device_id"], bob.device_id);
  EXPECT_EQ(j["provider"], "apns");
  EXPECT_EQ(j["token"], "apns-token-bob");
  EXPECT_EQ(j["seq"], seq);
  EXPECT_EQ(j["sender"]["user_id"], alice.user_id);
  EXPECT_EQ(j["sender"]["display_name"], "Alice Liddell");
  EXPECT_EQ(j["preview"], "hello bob");
  EXPECT_EQ(j["badge"], 1);
  EXPECT_EQ(j["attempt"], 1);
  EXPECT_GT(j["sent_at"].get<int64_t>(), 0);
  // Health, as the user's own devices read it.
  json h = DevicePush(bob, bob.device_id);
  ASSERT_TRUE(h.is_object()) << h.dump();
  EXPECT_EQ(h["provider"], "apns");
  EXPECT_EQ(h["last_result"], "ok");
  EXPECT_EQ(h["failure_count"], 0);
  EXPECT_EQ(h["pending"], false);
  EXPECT_TRUE(h["last_attempt_at"].is_number());
  EXPECT_TRUE(DevicePush(alice, alice.device_id).is_null());
  std::string metrics = HttpGet(server.port(), "/metrics");
  EXPECT_EQ(MetricValue(metrics, "parley_push_attempts_total{outcome=\"delivered\"}"), 1);
  // Previews off: the next push carries no preview (after the window).
  ASSERT_TRUE(bob.conn->Call("set_push_previews", {{"previews", false}}).ok);
  int64_t seq2 = SendTo(alice, "bob", "secret text", "m2");
  ASSERT_TRUE(rx.WaitPosts(2, 5000));
  json j2 = rx.Posts()[1].payload;
  EXPECT_EQ(j2["seq"], seq2);
  EXPECT_TRUE(j2["preview"].is_null());
  EXPECT_EQ(j2["badge"], 2);
  EXPECT_EQ(rx.Posts()[1].body.find("secret text"), std::string::npos);
}

TEST(PushE2eTest, FiveHundredTwiceThenOkDeliversExactlyOnceAfterBackoff) {
  PushReceiver rx;
  rx.Script({500, 500}, 200);
  ServerProcess server(PushArgs(rx));
  auto [alice, bob] = LoginAliceAndBobsBackgroundPhone(server);
  SendTo(alice, "bob", "hi", "m1");
  ASSERT_TRUE(rx.WaitPosts(3, 10'000));
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  std::vector<PushReceiver::Post> posts = rx.Posts();
  ASSERT_EQ(posts.size(), 3u);
  EXPECT_EQ(posts[0].answered, 500);
  EXPECT_EQ(posts[1].answered, 500);
  EXPECT_EQ(posts[2].answered, 200);
  EXPECT_EQ(rx.Delivered(), 1u);
  // The same push each time (one id), numbered attempts, spaced by backoff
  // (300 ms then 600 ms, each with jitter down to half).
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(posts[i].payload["id"], posts[0].payload["id"]);
    EXPECT_EQ(posts[i].payload["attempt"], static_cast<int>(i + 1));
  }
  EXPECT_GE(posts[1].at - posts[0].at, std::chrono::milliseconds(150));
  EXPECT_GE(posts[2].at - posts[1].at, std::chrono::milliseconds(300));
  json h = DevicePush(bob, bob.device_id);
  EXPECT_EQ(h["last_result"], "ok");
  EXPECT_EQ(h["failure_count"], 2);
  std::string metrics = HttpGet(server.port(), "/metrics");
  EXPECT_EQ(MetricValue(metrics, "parley_push_attempts_total{outcome=\"retry\"}"), 2);
  EXPECT_EQ(MetricValue(metrics, "parley_push_attempts_total{outcome=\"delivered\"}"), 1);
}

TEST(PushE2eTest, ABurstOfTwentyMakesOnePushPerDevicePerWindowWithTheLatestBadge) {
  // Wide enough that the burst surely fits in one window, even through an
  // ASan parleyd on a loaded machine (the pipelined burst takes a fraction
  // of a second there).
  constexpr int kWindowMs = 4000;
  PushReceiver rx;
  ServerProcess server(PushArgs(rx, kWindowMs));
  Register(server, "alice");
  Register(server, "bob");
  Device alice = Login(server, "alice");
  Device phone = Login(server, "bob", "phone");
  Device tablet = Login(server, "bob", "tablet");
  RegisterPush(phone, "tok-phone");
  RegisterPush(tablet, "tok-tablet", "fcm");
  Background(phone);
  Background(tablet);
  auto got_seq = [&](int64_t device, int64_t seq) {
    for (const auto& p : rx.Posts())
      if (p.payload["device_id"] == device && p.payload["seq"] == seq) return true;
    return false;
  };
  auto start = Clock::now();
  // The first message is pushed at once, and opens each device's window.
  ASSERT_EQ(SendTo(alice, "bob", "burst 0", "b0"), 1);
  ASSERT_TRUE(Eventually([&] { return got_seq(phone.device_id, 1) && got_seq(tablet.device_id, 1); }, 10000))
      << "the first message of the burst was not pushed at once";
  // The other nineteen, pipelined: they go out at once and are answered
  // together (sends from one connection are stored in the order they
  // arrive), so the burst's length does not grow with nineteen round trips
  // on a slow machine.
  std::vector<int64_t> ids;
  for (int i = 1; i < 20; ++i) {
    ids.push_back(alice.conn->Start(
        "send", {{"to", "bob"}, {"client_id", "b" + std::to_string(i)}, {"body", "burst " + std::to_string(i)}}));
  }
  for (size_t i = 0; i < ids.size(); ++i) {
    Reply r = alice.conn->Await(ids[i], 30000);
    ASSERT_TRUE(r.ok) << r.code << ": " << r.message;
    ASSERT_EQ(r.result["seq"], static_cast<int64_t>(i) + 2);
  }
  auto sent = Clock::now();
  // The windows opened after `start`: every message stored before
  // start + kWindowMs is inside them.
  ASSERT_LT(sent - start, std::chrono::milliseconds(kWindowMs)) << "the burst must fit in one window";
  // Wait until each device got the final state, then one more window (a
  // third push would come by then).
  ASSERT_TRUE(Eventually([&] { return got_seq(phone.device_id, 20) && got_seq(tablet.device_id, 20); }, 30000))
      << "a device never got a push with the latest message";
  std::this_thread::sleep_for(std::chrono::milliseconds(kWindowMs + 300));
  for (int64_t device : {phone.device_id, tablet.device_id}) {
    std::vector<PushReceiver::Post> mine;
    for (const auto& p : rx.Posts())
      if (p.payload["device_id"] == device) mine.push_back(p);
    // The first push at once, and one carrying the latest state at the end
    // of the window, a window apart: none for the eighteen in between.
    ASSERT_EQ(mine.size(), 2u) << "device " << device;
    EXPECT_EQ(mine[0].payload["seq"], 1);
    EXPECT_EQ(mine[0].payload["badge"], 1);
    EXPECT_GE(mine[1].at - mine[0].at, std::chrono::milliseconds(kWindowMs - 100));
    EXPECT_EQ(mine[1].payload["seq"], 20);
    EXPECT_EQ(mine[1].payload["badge"], 20);
    EXPECT_EQ(mine[1].payload["preview"], "burst 19");
  }
}

TEST(PushE2eTest, NoPushForAForegroundDeviceAMutedConversationOrABlockedSender) {
  PushReceiver rx;
  ServerProcess server(PushArgs(rx, 200));
  Register(server, "alice");
  Register(server, "bob");
  Register(server, "carol");
  Device alice = Login(server, "alice");
  Device carol = Login(server, "carol");
  Device phone = Login(server, "bob", "phone");
  RegisterPush(phone, "tok-phone");
  // Foreground (the default): no push.
  int64_t seq = SendTo(alice, "bob", "while in the foreground", "f1");
  ASSERT_TRUE(WaitEvent(*phone.conn, IsMessage(seq)).has_value());
  // Muted: no push, and the setting reaches the user's other devices.
  Device laptop = Login(server, "bob", "laptop");
  int64_t conv = 0;
  {
    auto r = phone.conn->Call("open_conversation", {{"username", "alice"}});
    ASSERT_TRUE(r.ok);
    conv = r.result["conversation"]["conversation_id"];
  }
  auto m = phone.conn->Call("mute_conversation", {{"conversation_id", conv}, {"muted", true}});
  ASSERT_TRUE(m.ok) << m.code << ": " << m.message;
  auto mute_event = WaitEvent(*laptop.conn, [&](const json& e) { return e["kind"] == "mute"; });
  ASSERT_TRUE(mute_event.has_value());
  EXPECT_EQ((*mute_event)["conversation_id"], conv);
  EXPECT_EQ((*mute_event)["muted"], true);
  laptop.conn.reset();  // disconnected: not in the foreground
  Background(phone);
  SendTo(alice, "bob", "while muted", "m1");
  // Blocked sender: withheld, no push.
  ASSERT_TRUE(phone.conn->Call("block", {{"username", "carol"}}).ok);
  SendTo(carol, "bob", "from a blocked sender", "c1");
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));
  EXPECT_EQ(rx.Posts().size(), 0u) << rx.Posts()[0].body;
  auto s = phone.conn->Call("push_settings");
  ASSERT_TRUE(s.ok);
  EXPECT_EQ(s.result["muted"], json::array({conv}));
  // Control: unmuted, the same conversation pushes (so the silence above
  // came from the rules, not from a broken pipe).
  ASSERT_TRUE(phone.conn->Call("mute_conversation", {{"conversation_id", conv}, {"muted", false}}).ok);
  int64_t seq2 = SendTo(alice, "bob", "after unmute", "m2");
  ASSERT_TRUE(rx.WaitPosts(1, 5000));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ASSERT_EQ(rx.Posts().size(), 1u);
  EXPECT_EQ(rx.Posts()[0].payload["seq"], seq2);
  EXPECT_EQ(rx.Posts()[0].payload["sender"]["user_id"], alice.user_id);
}

TEST(PushE2eTest, AReadOnAnotherDeviceSendsASilentBadgePushAndGoneRemovesTheEndpoint) {
  PushReceiver rx;
  ServerProcess server(PushArgs(rx, 200));
  Register(server, "alice");
  Register(server, "bob");
  Device alice = Login(server, "alice");
  Device phone = Login(server, "bob", "phone");
  RegisterPush(phone, "tok-phone");
  Background(phone);
  Device desktop = Login(server, "bob", "desktop");  // in the foreground
  int64_t seq = SendTo(alice, "bob", "read me", "r1");
  auto ev = WaitEvent(*desktop.conn, IsMessage(seq));
  ASSERT_TRUE(ev.has_value());
  int64_t conv = (*ev)["message"]["conversation_id"];
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  EXPECT_EQ(rx.Posts().size(), 0u) << "bob has a device in the foreground";
  ASSERT_TRUE(desktop.conn->Call("receipt", {{"items", {{{"conversation_id", conv}, {"read", seq}}}}}).ok);
  ASSERT_TRUE(rx.WaitPosts(1, 5000));
  json j = rx.Posts()[0].payload;
  EXPECT_EQ(j["kind"], "badge");
  EXPECT_EQ(j["silent"], true);
  EXPECT_EQ(j["device_id"], phone.device_id);
  EXPECT_EQ(j["badge"], 0);
  EXPECT_TRUE(j["preview"].is_null());
  // 410: the endpoint is removed and nothing more is sent to it.
  rx.Script({410}, 200);
  desktop.conn.reset();
  // The next message must find bob with no device in the foreground: wait
  // until the server has processed the desktop's close (alice and the phone
  // are then its only authenticated connections).
  ASSERT_TRUE(Eventually(
      [&] { return MetricValue(HttpGet(server.port(), "/metrics"), "parley_connections_authenticated") == 2; }, 10000))
      << "the server never saw the desktop go";
  SendTo(alice, "bob", "to a gone endpoint", "g1");
  ASSERT_TRUE(rx.WaitPosts(2, 10000));
  // The 410 removes the endpoint once its answer is processed.
  EXPECT_TRUE(Eventually([&] { return DevicePush(phone, phone.device_id).is_null(); }, 10000))
      << DevicePush(phone, phone.device_id).dump();
  SendTo(alice, "bob", "after gone", "g2");
  std::this_thread::sleep_for(std::chrono::milliseconds(800));
  EXPECT_EQ(rx.Posts().size(), 2u);
  // Unregister: fine to call with no endpoint; unlink drops a registered one.
  auto u = phone.conn->Call("unregister_push");
  ASSERT_TRUE(u.ok);
  EXPECT_EQ(u.result["removed"], false);
}

TEST(PushE2eTest, PushesPendingAcrossARestartAreStillSentOnce) {
  PushReceiver rx;
  rx.Script({}, 503);  // the relay is down at first
  ServerProcess server(PushArgs(rx, 200, /*lease_ms=*/1500));
  Register(server, "alice");
  Register(server, "bob");
  Device alice = Login(server, "alice");
  {
    // bob's phone registers and goes away: simply disconnected.
    Device phone = Login(server, "bob", "phone");
    RegisterPush(phone, "tok-phone");
  }
  int64_t seq = SendTo(alice, "bob", "across a restart", "x1");
  ASSERT_TRUE(rx.WaitPosts(1, 5000));
  // Killed with the push pending (and maybe claimed: its lease expires).
  server.Kill9();
  size_t before = rx.Posts().size();
  for (const auto& p : rx.Posts()) EXPECT_EQ(p.answered, 503);
  rx.Script({}, 200);
  server.Start();
  auto deadline = Clock::now() + std::chrono::seconds(10);
  while (Clock::now() < deadline && rx.Delivered() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  std::this_thread::sleep_for(std::chrono::milliseconds(2000));
  EXPECT_GT(rx.Posts().size(), before);
  EXPECT_EQ(rx.Delivered(), 1u);
  EXPECT_EQ(rx.Delivered([&](const PushReceiver::Post& p) { return p.payload["seq"] == seq; }), 1u);
}

// A push whose message was compacted and whose text then cannot be paged
// in (its block is gone: corruption, or on PostgreSQL another node changing
// the message right then) is sent on time without its preview, not held
// until its lease expires (PostgreSQL) or refused at every claim (SQLite).
TEST(PushE2eTest, APushWhoseCompactedTextCannotBeReadGoesOnTimeWithoutItsPreview) {
  constexpr int kWindowMs = 6000;   // the second push waits this long: time to compact and break its text
  constexpr int kLeaseMs = 60'000;  // parleyd's default
  PushReceiver rx;
  std::vector<std::string> args = PushArgs(rx, kWindowMs, kLeaseMs);
  for (const char* a : {"--cold-after-s", "1", "--compact-interval-ms", "50"}) args.push_back(a);
  ServerProcess server(args);
  auto [alice, bob] = LoginAliceAndBobsBackgroundPhone(server);
  SendTo(alice, "bob", "first", "m1");
  ASSERT_TRUE(rx.WaitPosts(1, 5000));
  const Clock::time_point first = rx.Posts()[0].at;
  const int64_t seq = SendTo(alice, "bob", "compacted before its push", "m2");
  ASSERT_TRUE(Eventually([&] { return StoreCount(server, "SELECT count(*) FROM messages WHERE cold") == 2; }, 5000))
      << "both messages compacted";
  const std::string drop = "DELETE FROM message_blocks";
  int rc = 0;
  const std::string out =
      Shell(server.postgres_url().empty()
                ? "sqlite3 -cmd '.timeout 5000' '" + server.dir() + "/data/parley.db' \"" + drop + "\" 2>&1"
                : "psql '" + server.postgres_url() + "' -tAc \"" + drop + "\" 2>&1",
            &rc);
  ASSERT_EQ(rc, 0) << out;
  ASSERT_LT(Clock::now() - first, std::chrono::milliseconds(kWindowMs)) << "too slow: the push may have gone already";

  ASSERT_TRUE(rx.WaitPosts(2, kWindowMs + 10'000)) << "the push waited for its lease (or forever)";
  const PushReceiver::Post p = rx.Posts()[1];
  EXPECT_LT(p.at - first, std::chrono::milliseconds(kLeaseMs / 2));
  EXPECT_EQ(p.payload["seq"], seq);
  EXPECT_EQ(p.payload["silent"], false) << "a notification all the same";
  EXPECT_EQ(p.payload["sender"]["display_name"], "alice");
  EXPECT_TRUE(p.payload["preview"].is_null()) << p.body;
  EXPECT_EQ(MetricValue(HttpGet(server.port(), "/metrics"), "parley_push_previews_left_out_total"), 1);
}

// An https:// relay: parleyd verifies its certificate against
// --push-webhook-ca (here the relay's own self-signed one). A relay whose
// certificate does not chain to that CA gets no push: the attempt fails in
// the handshake, is retried, and the device's health says "tls".
TEST(PushE2eTest, AnHttpsRelayIsUsedOnlyWithACertificateParleydTrusts) {
  TempDir dir;
  MakeCertificate(dir / "relay");
  MakeCertificate(dir / "stranger");
  // parleyd pushing to `relay`, trusting `ca`; alice sends `body` to bob,
  // whose phone is in the background with a push endpoint. Then waits
  // (up to 5 s) until the phone's push health satisfies `done`.
  auto push_through = [&](PushReceiver& relay, const std::string& ca, const std::string& body,
                          const std::function<bool(const json&)>& done) {
    std::vector<std::string> args = PushArgs(relay);
    args.insert(args.end(), {"--push-webhook-ca", ca});
    ServerProcess server(args);
    auto [alice, bob] = LoginAliceAndBobsBackgroundPhone(server);
    json health;
    health["seq"] = SendTo(alice, "bob", body, "t1");
    for (auto until = Clock::now() + std::chrono::seconds(5); Clock::now() < until;
         std::this_thread::sleep_for(std::chrono::milliseconds(20))) {
      health["push"] = DevicePush(bob, bob.device_id);
      if (health["push"].is_object() && done(health["push"])) break;
    }
    return health;
  };
  PushReceiver rx(dir / "relay.crt", dir / "relay.key");
  ASSERT_EQ(rx.url().rfind("https://", 0), 0u);
  json ok = push_through(rx, dir / "relay.crt", "over tls", [](const json& h) { return !h["last_result"].is_null(); });
  std::vector<PushReceiver::Post> posts = rx.Posts();
  ASSERT_EQ(posts.size(), 1u) << "failed handshakes: " << rx.failed_handshakes();
  EXPECT_EQ(posts[0].payload["seq"], ok["seq"]);
  EXPECT_EQ(posts[0].headers.at("x-parley-signature"), Hmac(kPushSecret, posts[0].body));
  EXPECT_EQ(rx.failed_handshakes(), 0);
  EXPECT_EQ(ok["push"]["last_result"], "ok") << ok.dump();

  // The same relay, but parleyd trusts another CA only.
  PushReceiver impostor(dir / "relay.crt", dir / "relay.key");
  json refused = push_through(impostor, dir / "stranger.crt", "must not leave",
                              [](const json& h) { return h["failure_count"].get<int>() >= 2; });
  const json& h = refused["push"];
  ASSERT_TRUE(h.is_object()) << refused.dump();
  EXPECT_GE(h["failure_count"].get<int>(), 2) << h.dump();  // retried
  EXPECT_EQ(h["last_result"], "tls") << h.dump();
  EXPECT_EQ(h["pending"], true) << h.dump();
  EXPECT_EQ(impostor.Posts().size(), 0u);
  EXPECT_GE(impostor.failed_handshakes(), 2);
}

// A CA file that cannot be read, or one with an http:// URL, stops parleyd
// at start with a clear error (not at the first push).
TEST(PushE2eTest, ABadWebhookCaIsRefusedAtStart) {
  for (const auto& [url, ca, want] : std::vector<std::tuple<std::string, std::string, std::string>>{
           {"https://127.0.0.1:9/push", "/nonexistent/ca.pem", "/nonexistent/ca.pem"},
           {"http://127.0.0.1:9/push", "/nonexistent/ca.pem", "needs an https://"}}) {
    int rc = 0;
    std::string out = Shell(parley::testing::BinDir() +
                                "/parleyd --listen 127.0.0.1:0 --data-dir /tmp/parley-push-refused --push-webhook-url '" +
                                url + "' --push-webhook-secret s --push-webhook-ca '" + ca + "' 2>&1",
                            &rc);
    EXPECT_NE(rc, 0) << out;
    EXPECT_NE(out.find(want), std::string::npos) << out;
  }
  std::error_code ec;
  std::filesystem::remove_all("/tmp/parley-push-refused", ec);
}

}  // namespace
}  // namespace parley::testing
