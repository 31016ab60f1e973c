// parley::Client against a real parleyd: ticks, reconnect policy, revoked
// tokens, a second device catching up. The backoff functions are checked
// without a server.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>

#include "sdk/sdk_test_util.h"

namespace parley::testing {
namespace {

// Alice and Bob registered and started, each with a cache file in `dir`;
// Bob's app records every on_message_changed in `changes`.
struct AliceAndBob {
  explicit AliceAndBob(ServerProcess& s) {
    std::string alice_token = RegisterAndLogin(s, "alice");
    std::string bob_token = RegisterAndLogin(s, "bob");
    auto bo = OptionsFor(s, dir / "bob.db", bob_token);
    bo.on_message_changed = [this](const CachedMessage& m) {
      std::lock_guard lock(mu);
      changes.push_back(m);
    };
    alice = OpenClient(OptionsFor(s, dir / "alice.db", alice_token));
    bob = OpenClient(bo);
    alice->Start();
    bob->Start();
  }
  TempDir dir;
  std::mutex mu;
  std::vector<CachedMessage> changes;  // guarded by mu
  std::unique_ptr<Client> alice;
  std::unique_ptr<Client> bob;
};

TEST(BackoffTest, FullJitterStaysUnderTheGrowingCapAndUsesItsRange) {
  BackoffPolicy p;
  p.initial_ms = 100;
  p.max_ms = 1000;
  std::mt19937_64 rng(7);
  for (int attempt = 0; attempt < 8; ++attempt) {
    int64_t cap = std::min<int64_t>(1000, 100LL << attempt);
    int64_t lo = cap, hi = 0;
    for (int i = 0; i < 2000; ++i) {
      int64_t d = BackoffDelayMs(p, attempt, rng);
      ASSERT_GE(d, 0);
      ASSERT_LE(d, cap);
      lo = std::min(lo, d);
      hi = std::max(hi, d);
    }
    EXPECT_LT(lo, cap / 10) << "attempt " << attempt;  // full jitter reaches near 0
    EXPECT_GT(hi, cap * 9 / 10) << "attempt " << attempt;
  }
}

TEST(BackoffTest, RetryAfterSpreadsOverTheAnnouncedWindowWithoutBursts) {
  BackoffPolicy p;  // jitter 100 %: window [N, 2N]
  std::mt19937_64 rng(11);
  constexpr int64_t kN = 3000;
  constexpr int kClients = 5000;
  std::vector<int> buckets(kN / 100 + 1, 0);
  for (int i = 0; i < kClients; ++i) {
    int64_t d = RetryAfterDelayMs(p, kN, rng);
    ASSERT_GE(d, kN);
    ASSERT_LE(d, 2 * kN);
    ++buckets[static_cast<size_t>((d - kN) / 100)];
  }
  int used = 0;
  for (int b : buckets) {
    EXPECT_LE(b, kClients / 20);  // no 100 ms bucket over 5 %
    used += b > 0;
  }
  EXPECT_GE(used, static_cast<int>(buckets.size()) * 8 / 10);
}

// A server that accepts the connection and never answers (stopped,
// overloaded, a black hole on the path): the connect timeout covers the
// TLS and WebSocket handshakes too, so the client gives up and tries again
// instead of waiting for ever.
TEST(ConnectionTest, AServerThatAcceptsAndNeverAnswersTimesOutTheHandshake) {
  int listener = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(listener, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(listen(listener, 16), 0);  // the kernel completes the TCP handshake; nobody reads
  socklen_t len = sizeof addr;
  ASSERT_EQ(getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  for (bool tls : {false, true}) {
    ConnectOptions o;
    o.port = ntohs(addr.sin_port);
    o.timeout_ms = 300;
    o.tls = tls;
    o.verify_peer = false;
    std::string error;
    auto start = std::chrono::steady_clock::now();
    auto c = Connection::Open(o, &error);
    auto waited = std::chrono::steady_clock::now() - start;
    EXPECT_EQ(c, nullptr) << (tls ? "wss" : "ws");
    EXPECT_FALSE(error.empty());
    EXPECT_LT(waited, std::chrono::seconds(5)) << (tls ? "wss" : "ws") << ": the handshake's wait ignored timeout_ms";
  }
  close(listener);
}

TEST(ClientE2E, TicksGoFromSentToDeliveredToReadWhileBothAreOnline) {
  ServerProcess s;
  std::string alice_token = RegisterAndLogin(s, "alice");
  std::string bob_token = RegisterAndLogin(s, "bob");
  TempDir dir;
  StatusLog log;
  auto ao = OptionsFor(s, dir / "alice.db", alice_token);
  ao.on_status = [&](const StatusUpdate& u) { log.Add(u); };
  auto alice = OpenClient(ao);
  auto bob = OpenClient(OptionsFor(s, dir / "bob.db", bob_token));
  alice->Start();
  bob->Start();
  ASSERT_TRUE(alice->WaitOnline(5000));
  ASSERT_TRUE(bob->WaitOnline(5000));
  auto r = alice->Compose("Bob", "hi bob");
  ASSERT_TRUE(r.ok);
  ASSERT_TRUE(Eventually([&] { return log.Of(r.client_id) == MessageStatus::kDelivered; }, 5000));
  auto conv = bob->ConversationWith("alice");
  ASSERT_TRUE(conv.has_value());
  EXPECT_EQ(conv->unread, 1);
  bob->MarkRead(conv->conversation_id, conv->last_seq);
  ASSERT_TRUE(Eventually([&] { return log.Of(r.client_id) == MessageStatus::kRead; }, 5000));
  ASSERT_TRUE(Eventually([&] { return bob->ConversationWith("alice")->unread == 0; }, 5000));
  // The statuses came in order, each once.
  std::vector<MessageStatus> seen;
  for (auto& u : log.all) {
    if (u.client_id == r.client_id) seen.push_back(u.status);
  }
  EXPECT_EQ(seen, (std::vector<MessageStatus>{MessageStatus::kPending, MessageStatus::kSent, MessageStatus::kDelivered,
                                              MessageStatus::kRead}));
}

// A receipt the server answers with a retryable error was not stored: the
// SDK reports it again after the retry-after, or the sender's tick would
// stay at "sent" until another message came. The fault switch fails the
// first receipt (bob's delivered) with `unavailable`; alice, on a raw
// connection, sends nothing else and must still see bob's delivered
// watermark reach her message.
TEST(ClientE2E, AReceiptTheServerFailsRetryablyIsReportedAgain) {
  ServerProcess s({"--fault", "fail_receipt@1", "--unavailable-retry-after-ms", "100"});
  std::string bob_token = RegisterAndLogin(s, "bob");
  Register(s, "alice");
  Device alice = Login(s, "alice");
  TempDir dir;
  auto bob = OpenClient(OptionsFor(s, dir / "bob.db", bob_token));
  bob->Start();
  ASSERT_TRUE(bob->WaitOnline(5000));
  Reply sent = alice.conn->Call("send", {{"to", "bob"}, {"client_id", "once"}, {"body", "hi bob"}});
  ASSERT_TRUE(sent.ok) << sent.code;
  const int64_t conv = sent.result["conversation_id"];
  const int64_t seq = sent.result["seq"];
  auto bobs = [&](const char* watermark) {
    Reply list = alice.conn->Call("list_conversations", json::object());
    if (!list.ok) return int64_t{0};
    for (const auto& c : list.result["conversations"]) {
      if (c["conversation"]["conversation_id"] != conv) continue;
      for (const auto& w : c["watermarks"]) {
        if (w["user_id"] != alice.user_id) return w.value(watermark, int64_t{0});
      }
    }
    return int64_t{0};
  };
  EXPECT_TRUE(Eventually([&] { return bobs("delivered") >= seq; }, 5000)) << "bob's failed receipt was not sent again";
  bob->MarkRead(conv, seq);
  EXPECT_TRUE(Eventually([&] { return bobs("read") >= seq; }, 5000));
}

TEST(ClientE2E, ReconnectAfterShutdownWaitsForTheAnnouncedRetryAfter) {
  constexpr int64_t kRetryAfterMs = 700;
  ServerProcess s({"--shutdown-retry-after-ms", std::to_string(kRetryAfterMs)});
  std::string token = RegisterAndLogin(s, "alice");
  TempDir dir;
  std::mutex mu;
  std::vector<std::pair<ClientState, std::chrono::steady_clock::time_point>> states;
  auto o = OptionsFor(s, dir / "alice.db", token);
  o.on_state = [&](ClientState st, const std::string&) {
    std::lock_guard lock(mu);
    states.emplace_back(st, std::chrono::steady_clock::now());
  };
  auto alice = OpenClient(o);
  alice->Start();
  ASSERT_TRUE(alice->WaitOnline(5000));
  s.Restart();  // SIGTERM: close 4001 {"retry_after_ms":700}, then start again at once
  ASSERT_TRUE(Eventually([&] {
    std::lock_guard lock(mu);
    return states.size() >= 4 && states.back().first == ClientState::kOnline;
  }, 10000));
  std::lock_guard lock(mu);
  // online -> waiting (the close) -> connecting -> online: the wait honours N.
  auto waiting = std::find_if(states.begin(), states.end(), [](auto& p) { return p.first == ClientState::kWaiting; });
  ASSERT_NE(waiting, states.end());
  auto next = std::find_if(waiting, states.end(), [](auto& p) { return p.first == ClientState::kConnecting; });
  ASSERT_NE(next, states.end());
  auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(next->second - waiting->second).count();
  EXPECT_GE(waited, kRetryAfterMs - 5);
  EXPECT_LE(waited, 2 * kRetryAfterMs + 500);
}

// A started client is connecting from the moment Start returns (not only
// once its worker thread first runs), also when it starts again after a
// Stop: a caller that looks at state() at once must not take it for
// stopped. on_state still reports every change once, in order.
TEST(ClientE2E, AStartedClientIsConnectingAsSoonAsStartReturns) {
  ServerProcess s;
  std::string token = RegisterAndLogin(s, "alice");
  TempDir dir;
  std::mutex mu;
  std::vector<ClientState> states;
  auto o = OptionsFor(s, dir / "alice.db", token);
  o.on_state = [&](ClientState st, const std::string&) {
    std::lock_guard lock(mu);
    states.push_back(st);
  };
  auto alice = OpenClient(o);
  EXPECT_EQ(alice->state(), ClientState::kStopped);
  for (int round = 0; round < 3; ++round) {
    alice->Start();
    EXPECT_NE(alice->state(), ClientState::kStopped) << "round " << round;
    ASSERT_TRUE(alice->WaitOnline(5000)) << alice->last_error();
    alice->Stop();
    EXPECT_EQ(alice->state(), ClientState::kStopped);
  }
  std::lock_guard lock(mu);
  const std::vector<ClientState> once = {ClientState::kConnecting, ClientState::kOnline, ClientState::kStopped};
  std::vector<ClientState> want;
  for (int round = 0; round < 3; ++round) want.insert(want.end(), once.begin(), once.end());
  EXPECT_EQ(states, want);
}

// A server at its connection limit answers the upgrade 503 with
// Retry-After: 5 (docs/protocol.md, "Transport"). Connection::Open reports
// it, and a client waits that long (with its jitter) before it tries again,
// instead of its own backoff from a few hundred milliseconds.
TEST(ClientE2E, AServerAtItsConnectionLimitIsTriedAgainAfterItsRetryAfter) {
  ServerProcess s({"--max-connections", "1"});
  std::string token = RegisterAndLogin(s, "alice");
  // Hold the one connection; once the server counts it, a probe is refused.
  // The held one is itself refused (answered and closed: readable) when it
  // came while another still counted (the login's, closing; a probe that got
  // in): then it is opened again.
  int held = -1;
  ConnectOptions co;
  co.port = s.port();
  std::string error;
  int64_t retry_after_ms = -1;
  ASSERT_TRUE(Eventually(
      [&] {
        if (held < 0 || ReadableNow(held)) {
          if (held >= 0) ::close(held);
          held = TcpConnect(s.port());
          return false;
        }
        return Connection::Open(co, &error, &retry_after_ms) == nullptr && retry_after_ms > 0;
      },
      10000))
      << error;
  EXPECT_EQ(retry_after_ms, 5000);
  EXPECT_NE(error.find("503"), std::string::npos) << error;

  TempDir dir;
  std::mutex mu;
  std::vector<std::pair<ClientState, std::chrono::steady_clock::time_point>> states;
  auto o = OptionsFor(s, dir / "alice.db", token);
  o.backoff.retry_after_jitter = 0.1;  // [5 s, 5.5 s]
  o.on_state = [&](ClientState st, const std::string&) {
    std::lock_guard lock(mu);
    states.emplace_back(st, std::chrono::steady_clock::now());
  };
  auto alice = OpenClient(o);
  alice->Start();
  ASSERT_TRUE(Eventually(
      [&] {
        std::lock_guard lock(mu);
        return std::any_of(states.begin(), states.end(), [](auto& p) { return p.first == ClientState::kWaiting; });
      },
      10000))
      << "states seen: " << [&] {
           std::lock_guard lock(mu);
           std::string seen;
           for (auto& p : states) seen += std::to_string(static_cast<int>(p.first)) + " ";
           return seen;
         }();
  ::close(held);  // room again: the next attempt gets in
  ASSERT_TRUE(alice->WaitOnline(30000));
  std::lock_guard lock(mu);
  auto waiting = std::find_if(states.begin(), states.end(), [](auto& p) { return p.first == ClientState::kWaiting; });
  auto next = std::find_if(waiting, states.end(), [](auto& p) { return p.first == ClientState::kConnecting; });
  ASSERT_NE(next, states.end());
  auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(next->second - waiting->second).count();
  EXPECT_GE(waited, 5000 - 5) << "the client came back before the server's Retry-After";
}

TEST(ClientE2E, RevokedTokenStopsReconnectingAndKeepsTheOutbox) {
  ServerProcess s;
  std::string token = RegisterAndLogin(s, "alice");
  Register(s, "bob");
  TempDir dir;
  auto alice = OpenClient(OptionsFor(s, dir / "alice.db", token));
  alice->Start();
  ASSERT_TRUE(alice->WaitOnline(5000));
  Device other = Login(s, "alice", "phone");
  auto devices = other.conn->Call("list_devices");
  int64_t victim = 0;
  for (auto& d : devices.result["devices"]) {
    if (!d["current"].get<bool>()) victim = d["device_id"];
  }
  ASSERT_TRUE(other.conn->Call("unlink_device", {{"device_id", victim}}).ok);
  ASSERT_TRUE(Eventually([&] { return alice->state() == ClientState::kRevoked; }, 5000));
  EXPECT_NE(alice->last_error().find("4002"), std::string::npos) << alice->last_error();
  auto r = alice->Compose("bob", "written after the unlink");
  ASSERT_TRUE(r.ok);
  alice->Stop();
  // A restart with the dead token: revoked again at once, the outbox intact.
  auto again = OpenClient(OptionsFor(s, dir / "alice.db", token));
  again->Start();
  ASSERT_TRUE(Eventually([&] { return again->state() == ClientState::kRevoked; }, 5000));
  EXPECT_NE(again->last_error().find("invalid_token"), std::string::npos);
  EXPECT_EQ(again->PendingCount(), 1u);
}

TEST(ClientE2E, ADisabledAccountWaitsKeepsItsOutboxAndComesBackWhenEnabled) {
  constexpr const char* kAdminToken = "sdk-admin-token";
  ServerProcess s({"--admin-token", kAdminToken});
  std::string token = RegisterAndLogin(s, "alice");
  std::string bob_token = RegisterAndLogin(s, "bob");
  TempDir dir;
  std::mutex mu;
  std::vector<ClientState> states;
  auto o = OptionsFor(s, dir / "alice.db", token);
  // The server asks for 60 s (close 4005, auth's user_disabled); the test
  // clamps that to keep the cycle short.
  o.backoff.max_retry_after_ms = 200;
  o.on_state = [&](ClientState st, const std::string&) {
    std::lock_guard lock(mu);
    states.push_back(st);
  };
  auto alice = OpenClient(o);
  auto bob = OpenClient(OptionsFor(s, dir / "bob.db", bob_token));
  alice->Start();
  bob->Start();
  ASSERT_TRUE(alice->WaitOnline(5000));
  ASSERT_TRUE(bob->WaitOnline(5000));
  auto admin = [&](const std::string& action) {
    int status = 0;
    HttpPost(s.port(), "/admin/v1/users/alice/" + action, "", std::string("Bearer ") + kAdminToken, &status);
    ASSERT_EQ(status, 200) << action;
  };

  admin("disable");
  ASSERT_TRUE(Eventually([&] { return alice->state() == ClientState::kDisabled; }, 5000));
  EXPECT_NE(alice->last_error().find("4005"), std::string::npos) << alice->last_error();
  // Each try while disabled is refused (auth: user_disabled) and waits again:
  // never revoked, and nothing local is dropped.
  ASSERT_TRUE(Eventually([&] { return alice->last_error().find("user_disabled") != std::string::npos; }, 5000))
      << alice->last_error();
  EXPECT_FALSE(alice->WaitOnline(300));
  auto composed = alice->Compose("bob", "written while disabled");
  ASSERT_TRUE(composed.ok);
  EXPECT_EQ(alice->PendingCount(), 1u);
  {
    std::lock_guard lock(mu);
    EXPECT_EQ(std::count(states.begin(), states.end(), ClientState::kRevoked), 0);
    EXPECT_EQ(std::count(states.begin(), states.end(), ClientState::kWaiting), 0)
        << "a disabled account's waits are reported as disabled";
  }

  admin("enable");
  // (WaitOnline returns at once while disabled: the app is told why.)
  ASSERT_TRUE(Eventually([&] { return alice->state() == ClientState::kOnline; }, 5000)) << alice->last_error();
  ASSERT_TRUE(alice->WaitOutboxDrained(5000));
  ASSERT_TRUE(Eventually([&] {
    auto page = bob->Messages("alice", 0, 10);
    return !page.empty() && page.back().body == "written while disabled";
  }, 5000));
}

TEST(ClientE2E, SecondDeviceLoggedInLaterSeesTheFullHistoryAndTheSameReadState) {
  ServerProcess s;
  std::string alice_token = RegisterAndLogin(s, "alice");
  std::string bob_token = RegisterAndLogin(s, "bob");
  TempDir dir;
  auto alice = OpenClient(OptionsFor(s, dir / "alice.db", alice_token));
  auto bob = OpenClient(OptionsFor(s, dir / "bob.db", bob_token));
  alice->Start();
  bob->Start();
  // alice 30, bob 10 (sending reads everything before: bob's read = 40),
  // alice 20 more (41-60); bob then reads up to 50: 10 unread.
  auto send_all = [](Client& c, const std::string& to, const std::string& prefix, int n) {
    for (int i = 0; i < n; ++i) ASSERT_TRUE(c.Compose(to, prefix + std::to_string(i)).ok);
    ASSERT_TRUE(c.WaitOutboxDrained(20000));
  };
  send_all(*alice, "bob", "a", 30);
  send_all(*bob, "alice", "b", 10);
  send_all(*alice, "bob", "c", 20);
  constexpr int64_t kTotal = 60;
  constexpr int64_t kReadUpTo = 50;
  auto conv = alice->ConversationWith("bob");
  ASSERT_TRUE(conv.has_value());
  ASSERT_TRUE(Eventually([&] { return bob->ConversationWith("alice") && bob->ConversationWith("alice")->last_seq == kTotal; }, 5000));
  EXPECT_EQ(bob->ConversationWith("alice")->my_read, 40);
  bob->MarkRead(conv->conversation_id, kReadUpTo);
  ASSERT_TRUE(Eventually([&] { return bob->ConversationWith("alice")->my_read == kReadUpTo; }, 5000));
  auto bob_view = *bob->ConversationWith("alice");
  EXPECT_EQ(bob_view.unread, kTotal - kReadUpTo);

  // Bob's second device, logged in now, with an empty cache.
  auto login = Client::Login("127.0.0.1", s.port(), "bob", "correct horse", "tablet", "gtest");
  ASSERT_TRUE(login.ok);
  auto bob2 = OpenClient(OptionsFor(s, dir / "bob2.db", login.token));
  bob2->Start();
  ASSERT_TRUE(bob2->WaitOnline(5000));
  std::vector<CachedMessage> all;
  int64_t before = 0;
  bool more = true;
  while (more) {  // paged, 25 at a time
    Reply err;
    auto page = bob2->History("alice", before, 25, &more, &err);
    ASSERT_TRUE(err.code.empty()) << err.code;
    ASSERT_FALSE(page.empty());
    all.insert(all.begin(), page.begin(), page.end());
    before = page.front().seq;
  }
  ASSERT_EQ(all.size(), static_cast<size_t>(kTotal));
  for (size_t i = 0; i < all.size(); ++i) EXPECT_EQ(all[i].seq, static_cast<int64_t>(i + 1));
  auto bob2_view = bob2->ConversationWith("alice");
  ASSERT_TRUE(bob2_view.has_value());
  EXPECT_EQ(bob2_view->my_read, bob_view.my_read);
  EXPECT_EQ(bob2_view->unread, bob_view.unread);
  EXPECT_EQ(bob2_view->peer_read, bob_view.peer_read);
  // Bob's own messages (31-40) carry alice's ticks on the new device too: she sent after them, so read.
  for (const auto& m : all) {
    if (m.outgoing) {
      EXPECT_EQ(m.status, MessageStatus::kRead) << m.seq;  // alice sent after them: read
    }
  }
}

// A new device's cache holds only the newest snapshot_messages (20) of a
// conversation, yet its unread count is the server's (DESIGN.md): the same
// as on the user's other device, for 30 unread, after a partial read on one
// device and after a full read on the other.
TEST(ClientE2E, FreshDeviceCountsUnreadBeyondItsCachedMessagesLikeTheOtherDevice) {
  ServerProcess s;
  std::string alice_token = RegisterAndLogin(s, "alice");
  std::string bob_token = RegisterAndLogin(s, "bob");
  TempDir dir;
  auto alice = OpenClient(OptionsFor(s, dir / "alice.db", alice_token));
  auto bob = OpenClient(OptionsFor(s, dir / "bob.db", bob_token));
  alice->Start();
  bob->Start();
  constexpr int64_t kUnread = 30;
  for (int i = 0; i < kUnread; ++i) ASSERT_TRUE(alice->Compose("bob", "m" + std::to_string(i)).ok);
  ASSERT_TRUE(alice->WaitOutboxDrained(20000));
  ASSERT_TRUE(Eventually([&] { return bob->ConversationWith("alice") && bob->ConversationWith("alice")->unread == kUnread; },
                         5000));
  const int64_t conv = bob->ConversationWith("alice")->conversation_id;

  auto login = Client::Login("127.0.0.1", s.port(), "bob", "correct horse", "tablet", "gtest");
  ASSERT_TRUE(login.ok);
  ClientOptions tablet_options = OptionsFor(s, dir / "bob2.db", login.token);
  ASSERT_LT(tablet_options.snapshot_messages, kUnread);  // the snapshot holds fewer messages than are unread
  auto tablet = OpenClient(tablet_options);
  tablet->Start();
  ASSERT_TRUE(tablet->WaitOnline(5000));
  ASSERT_TRUE(Eventually([&] { return tablet->ConversationWith("alice").has_value(); }, 5000));
  auto unread_of = [](Client& c) { return c.ConversationWith("alice")->unread; };
  EXPECT_EQ(unread_of(*tablet), kUnread);
  EXPECT_EQ(unread_of(*tablet), unread_of(*bob));

  // A partial read on the first device: both show the rest.
  bob->MarkRead(conv, 5);
  EXPECT_TRUE(Eventually([&] { return unread_of(*bob) == kUnread - 5 && unread_of(*tablet) == kUnread - 5; }, 5000))
      << unread_of(*bob) << " " << unread_of(*tablet);
  // Reading everything on the new device: both at 0.
  tablet->MarkRead(conv, kUnread);
  EXPECT_TRUE(Eventually([&] { return unread_of(*bob) == 0 && unread_of(*tablet) == 0; }, 5000))
      << unread_of(*bob) << " " << unread_of(*tablet);
  // A new message counts once on both.
  ASSERT_TRUE(alice->Compose("bob", "one more").ok);
  EXPECT_TRUE(Eventually([&] { return unread_of(*bob) == 1 && unread_of(*tablet) == 1; }, 5000))
      << unread_of(*bob) << " " << unread_of(*tablet);
}

// Edits and deletes (docs/protocol.md "Edits and deletes"): the SDK folds
// `edit`, `delete` and `delete_for_me` events into its cache, live and after
// a restart by sync, and reports each change once through
// on_message_changed; an edit arriving after the delete changes nothing.
// Retention (issue 12): a message of a conversation with a disappearing
// timer leaves both caches at its expires_at by the devices' own clocks,
// without waiting for the server (whose expiry step is held back here for
// an hour): the text is gone from Messages() and from the cache file, and
// on_message_changed reports it. Alice's own copy (from her ack) carries
// expires_at too.
TEST(ClientE2E, ExpiredMessagesLeaveTheCacheAtTheirExpiry) {
  ServerProcess s({"--expiry-interval-ms", "3600000"});
  AliceAndBob ab(s);
  ASSERT_TRUE(ab.alice->WaitOnline(5000));
  ASSERT_TRUE(ab.bob->WaitOnline(5000));
  auto& [dir, mu, changes, alice, bob] = ab;
  ASSERT_TRUE(alice->Compose("bob", "before the timer").ok);
  ASSERT_TRUE(alice->WaitOutboxDrained(5000));
  ASSERT_TRUE(Eventually([&] { return bob->Messages("alice", 0, 10).size() == 1; }, 5000));
  const int64_t c = bob->ConversationWith("alice")->conversation_id;
  auto set = alice->Request("set_disappearing", {{"conversation_id", c}, {"seconds", 2}});
  ASSERT_TRUE(set.ok) << set.code << ": " << set.message;
  ASSERT_TRUE(Eventually([&] { return bob->ConversationWith("alice")->disappearing_s == 2; }, 5000))
      << "the timer event reaches the cache";
  ASSERT_TRUE(alice->Compose("bob", "secret for two seconds").ok);
  ASSERT_TRUE(alice->WaitOutboxDrained(5000));
  ASSERT_TRUE(Eventually([&] { return bob->Messages("alice", 0, 10).size() == 2; }, 5000));
  auto mine = alice->Messages("bob", 0, 10);
  ASSERT_EQ(mine.size(), 2u);
  EXPECT_EQ(mine[0].expires_at, 0);
  EXPECT_GT(mine[1].expires_at, 0) << "from the ack";
  auto got = bob->Messages("alice", 0, 10);
  const int64_t seq = got[1].seq;
  EXPECT_EQ(got[1].expires_at, mine[1].expires_at);
  if (!got[1].deleted) {
    EXPECT_EQ(got[1].body, "secret for two seconds");
  }

  // At expires_at the text leaves bob's cache (the server has not deleted
  // it: its expiry step waits an hour), and the app is told.
  ASSERT_TRUE(Eventually([&] {
    std::lock_guard lock(mu);
    for (const auto& m : changes)
      if (m.seq == seq && m.deleted && m.body.empty()) return true;
    return false;
  }, 10'000)) << "on_message_changed reports the expiry";
  auto after = bob->Messages("alice", 0, 10);
  ASSERT_EQ(after.size(), 2u);
  EXPECT_EQ(after[0].body, "before the timer");
  EXPECT_TRUE(after[1].deleted);
  EXPECT_EQ(after[1].body, "");
  ASSERT_TRUE(Eventually([&] { return alice->Messages("bob", 0, 10)[1].deleted; }, 5000));
  EXPECT_EQ(alice->Messages("bob", 0, 10)[1].body, "");
  bob->Stop();
  bob.reset();
  alice->Stop();
  alice.reset();
  for (const char* db : {"bob.db", "alice.db"}) {
    EXPECT_EQ(Shell("sqlite3 '" + (dir / db) + "' \"SELECT count(*) FROM messages WHERE body LIKE '%secret%'\""), "0\n")
        << db << ": the text is gone from the cache's tables";
  }
}

// Stream trimming (issue 12; docs/protocol.md "cursor_too_old"): a device
// offline longer than the server keeps stream entries (1 s here) comes back
// with a cursor below the stream's floor. The SDK gets `cursor_too_old`,
// rebuilds its view from a snapshot and follows the stream from there: the
// same messages, read state and unread count as the device that stayed,
// and live messages after it.
TEST(ClientE2E, ADeviceOfflinePastTheStreamHorizonRebuildsItsViewFromASnapshot) {
  ServerProcess s({"--stream-retention-s", "1", "--stream-device-grace-s", "1", "--stream-trim-interval-ms", "50"});
  AliceAndBob ab(s);
  auto& [dir, mu, changes, alice, bob] = ab;
  ASSERT_TRUE(alice->WaitOnline(5000));
  ASSERT_TRUE(bob->WaitOnline(5000));
  auto login = Client::Login("127.0.0.1", s.port(), "bob", "correct horse", "tablet", "gtest");
  ASSERT_TRUE(login.ok);
  ClientOptions tablet_options = OptionsFor(s, dir / "bob2.db", login.token);
  auto tablet = OpenClient(tablet_options);
  tablet->Start();
  ASSERT_TRUE(tablet->WaitOnline(5000));
  ASSERT_TRUE(alice->Compose("bob", "m0").ok);
  ASSERT_TRUE(alice->WaitOutboxDrained(5000));
  ASSERT_TRUE(Eventually([&] { return tablet->Messages("alice", 0, 10).size() == 1; }, 5000));
  tablet->Stop();
  tablet.reset();  // offline, its cache file (and cursor) kept
  Reply ping = bob->Request("ping");
  ASSERT_TRUE(ping.ok) << ping.code;
  const int64_t offline_head = ping.result["head"];  // the tablet's cursor is at most this

  constexpr int kMore = 5;
  for (int i = 1; i <= kMore; ++i) ASSERT_TRUE(alice->Compose("bob", "m" + std::to_string(i)).ok);
  ASSERT_TRUE(alice->WaitOutboxDrained(5000));
  ASSERT_TRUE(Eventually([&] { return bob->Messages("alice", 0, 10).size() == kMore + 1; }, 5000));
  const int64_t conv = bob->ConversationWith("alice")->conversation_id;
  bob->MarkRead(conv, 3);
  ASSERT_TRUE(Eventually([&] { return bob->ConversationWith("alice")->my_read == 3; }, 5000));
  // The trim job passes the tablet's cursor once it and the entries are
  // past the second.
  ASSERT_TRUE(Eventually(
      [&] {
        Reply r = bob->Request("sync", {{"after", offline_head}});
        return !r.ok && r.code == "cursor_too_old";
      },
      10'000));

  // The tablet comes back with its old cache: snapshot, then the stream.
  tablet = OpenClient(tablet_options);
  tablet->Start();
  ASSERT_TRUE(tablet->WaitOnline(5000));
  ASSERT_TRUE(Eventually([&] { return tablet->Messages("alice", 0, 10).size() == kMore + 1; }, 5000));
  auto view = [](Client& c) { return *c.ConversationWith("alice"); };
  ASSERT_TRUE(Eventually([&] { return view(*tablet).my_read == 3; }, 5000));
  EXPECT_EQ(view(*tablet).unread, view(*bob).unread);
  EXPECT_EQ(view(*tablet).unread, kMore + 1 - 3);
  EXPECT_EQ(view(*tablet).last_seq, view(*bob).last_seq);
  auto mine = tablet->Messages("alice", 0, 10);
  for (size_t i = 0; i < mine.size(); ++i) {
    EXPECT_EQ(mine[i].seq, static_cast<int64_t>(i + 1));
    EXPECT_EQ(mine[i].body, "m" + std::to_string(i));
  }
  // Live from the snapshot's head on.
  ASSERT_TRUE(alice->Compose("bob", "after").ok);
  EXPECT_TRUE(Eventually([&] { return tablet->Messages("alice", 0, 10).size() == kMore + 2; }, 5000));
  EXPECT_TRUE(Eventually([&] { return view(*tablet).unread == kMore + 2 - 3 && view(*bob).unread == kMore + 2 - 3; },
                         5000));
  tablet->Stop();
}

TEST(ClientE2E, EditsAndDeletesReachTheCacheAndTheApp) {
  ServerProcess s;
  AliceAndBob ab(s);
  ASSERT_TRUE(ab.alice->WaitOnline(5000));
  ASSERT_TRUE(ab.bob->WaitOnline(5000));
  auto& [dir, mu, changes, alice, bob] = ab;
  ASSERT_TRUE(alice->Compose("bob", "first").ok);
  ASSERT_TRUE(alice->Compose("bob", "second").ok);
  ASSERT_TRUE(alice->WaitOutboxDrained(5000));
  ASSERT_TRUE(Eventually([&] { return bob->Messages("alice", 0, 10).size() == 2; }, 5000));
  auto conv = bob->ConversationWith("alice");
  ASSERT_TRUE(conv.has_value());
  const int64_t c = conv->conversation_id;
  auto edit = alice->Request("edit_message", {{"conversation_id", c}, {"seq", 1}, {"client_id", "e1"}, {"body", "1st"}});
  ASSERT_TRUE(edit.ok) << edit.code;
  ASSERT_TRUE(Eventually([&] { return bob->Messages("alice", 0, 10)[0].body == "1st"; }, 5000));
  EXPECT_EQ(bob->Messages("alice", 0, 10)[0].version, 1);
  ASSERT_TRUE(alice->Request("delete_message", {{"conversation_id", c}, {"seq", 1}, {"for", "everyone"}}).ok);
  ASSERT_TRUE(bob->Request("delete_message", {{"conversation_id", c}, {"seq", 2}, {"for", "me"}}).ok);
  ASSERT_TRUE(Eventually([&] { return bob->Messages("alice", 0, 10).size() == 1; }, 5000));
  auto left = bob->Messages("alice", 0, 10);
  EXPECT_TRUE(left[0].deleted);
  EXPECT_EQ(left[0].body, "");
  EXPECT_EQ(left[0].version, 2);
  EXPECT_EQ(bob->ConversationWith("alice")->unread, 1) << "the hidden message no longer counts";
  ASSERT_TRUE(Eventually([&] {
    std::lock_guard lock(mu);
    return changes.size() >= 3;
  }, 5000));
  {
    std::lock_guard lock(mu);
    ASSERT_EQ(changes.size(), 3u);
    EXPECT_EQ(changes[0].body, "1st");
    EXPECT_TRUE(changes[1].deleted);
    EXPECT_TRUE(changes[2].hidden);
    EXPECT_EQ(changes[2].seq, 2);
  }
  // Offline, then by sync: alice edits her message again (refused: deleted)
  // and sends a third; bob's cache after a restart has both right.
  bob->Stop();
  EXPECT_EQ(alice->Request("edit_message", {{"conversation_id", c}, {"seq", 1}, {"client_id", "e2"}, {"body", "x"}})
                .code,
            "message_deleted");
  ASSERT_TRUE(alice->Compose("bob", "third").ok);
  ASSERT_TRUE(alice->WaitOutboxDrained(5000));
  ASSERT_TRUE(alice->Request("edit_message", {{"conversation_id", c}, {"seq", 3}, {"client_id", "e3"}, {"body", "3rd"}})
                  .ok);
  bob->Start();
  ASSERT_TRUE(bob->WaitOnline(5000));
  ASSERT_TRUE(Eventually([&] { return bob->Messages("alice", 0, 10).size() == 2; }, 5000));
  auto after = bob->Messages("alice", 0, 10);
  EXPECT_TRUE(after[0].deleted);
  EXPECT_EQ(after[1].body, "3rd");
  EXPECT_EQ(after[1].version, 1);
}

}  // namespace
}  // namespace parley::testing
