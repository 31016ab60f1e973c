// The SDK's durable outbox against a real parleyd: messages composed offline,
// server crashes mid-drain, client process crashes mid-drain, a full local
// disk, and the maximum age. "Exactly once, in order" is always checked on the
// recipient's server-side stream (a raw sync), not on the sender's belief.
#include <sqlite3.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <functional>
#include <thread>

#include "sdk/sdk_test_util.h"

namespace parley::testing {
namespace {

constexpr int kMessages = 50;
constexpr int kDrainTimeoutMs = 30000;

std::string Body(int i) { return "message " + std::to_string(i); }

// The recipient's view, read from the server: every message from `sender`
// exactly once, in compose order, with seqs 1..n.
void ExpectExactlyOnceInOrder(ServerProcess& s, const std::string& recipient, int64_t sender_id, int n,
                              const std::function<std::string(int)>& body = Body) {
  Device d = Login(s, recipient, "checker");
  ASSERT_NE(d.conn, nullptr);
  auto msgs = MessagesFrom(SyncAll(*d.conn, 0), sender_id);
  ASSERT_EQ(msgs.size(), static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    EXPECT_EQ(msgs[static_cast<size_t>(i)]["body"], body(i)) << "position " << i;
    EXPECT_EQ(msgs[static_cast<size_t>(i)]["seq"], i + 1);
  }
}

// Alice's client options with a clock the test moves (`now`) and every
// status recorded in `log`; her cache in a directory of its own.
struct AgingClientOptions {
  AgingClientOptions(const ServerProcess& s, const std::string& token) : options(OptionsFor(s, dir / "alice.db", token)) {
    options.now_ms = [this] { return now.load(); };
    options.on_status = [this](const StatusUpdate& u) { log.Add(u); };
  }
  TempDir dir;
  std::atomic<int64_t> now{1'800'000'000'000};
  StatusLog log;
  ClientOptions options;
};

TEST(OutboxE2E, FiftyMessagesComposedWhileServerIsDownArriveExactlyOnceInComposeOrder) {
  ServerProcess s;
  std::string alice_token = RegisterAndLogin(s, "alice");
  Register(s, "bob");
  TempDir dir;
  s.Kill9();

  StatusLog log;
  auto o = OptionsFor(s, dir / "alice.db", alice_token);
  o.on_status = [&](const StatusUpdate& u) { log.Add(u); };
  auto alice = OpenClient(o);
  alice->Start();
  std::vector<std::string> ids;
  for (int i = 0; i < kMessages; ++i) {
    auto r = alice->Compose("bob", Body(i));
    ASSERT_TRUE(r.ok) << r.message;
    ids.push_back(r.client_id);
  }
  EXPECT_EQ(alice->PendingCount(), static_cast<size_t>(kMessages));
  EXPECT_NE(alice->state(), ClientState::kOnline);

  s.Start();
  ASSERT_TRUE(alice->WaitOutboxDrained(kDrainTimeoutMs)) << alice->last_error();
  ExpectExactlyOnceInOrder(s, "bob", alice->user_id(), kMessages);
  // Callbacks follow the cache's commit on the worker thread.
  ASSERT_TRUE(Eventually([&] { return log.CountAtLeast(MessageStatus::kSent) == ids.size(); }, 5000));
  for (auto& id : ids) EXPECT_EQ(log.Of(id), MessageStatus::kSent);
  // Each message went pending -> sent, in compose order.
  std::vector<std::string> sent_order;
  for (auto& u : log.all) {
    if (u.status == MessageStatus::kSent) sent_order.push_back(u.client_id);
  }
  EXPECT_EQ(sent_order, ids);
}

TEST(OutboxE2E, KillNineOfTheServerMidDrainStillDeliversExactlyOnceInOrderAndStatusesEndAtDelivered) {
  // A 20 ms group-commit deadline makes each send take a while, so the kill
  // lands mid-drain deterministically (checked below).
  ServerProcess s({"--commit-deadline-us", "20000"});
  std::string alice_token = RegisterAndLogin(s, "alice");
  std::string bob_token = RegisterAndLogin(s, "bob");
  TempDir dir;

  // Bob's own SDK client stays running through the crash: it reports
  // delivered, and it must apply each stream event exactly once.
  std::mutex bob_mu;
  std::vector<int64_t> bob_seqs, bob_covered;
  auto bo = OptionsFor(s, dir / "bob.db", bob_token);
  bo.on_event = [&](const json& e) {
    std::lock_guard lock(bob_mu);
    bob_seqs.push_back(e["user_seq"]);
    // A coalesced receipt stands for the later events it folded in
    // (docs/protocol.md, "Coalesced receipts"): those never arrive.
    for (const auto& c : e.value("also_covers", json::array())) bob_covered.push_back(c);
  };
  auto bob = OpenClient(bo);
  bob->Start();
  ASSERT_TRUE(bob->WaitOnline(5000));

  s.Kill9();
  StatusLog log;
  auto o = OptionsFor(s, dir / "alice.db", alice_token);
  o.on_status = [&](const StatusUpdate& u) { log.Add(u); };
  auto alice = OpenClient(o);
  std::vector<std::string> ids;
  for (int i = 0; i < kMessages; ++i) ids.push_back(alice->Compose("bob", Body(i)).client_id);
  alice->Start();
  s.Start();
  ASSERT_TRUE(Eventually([&] { return log.CountAtLeast(MessageStatus::kSent) >= 10; }, kDrainTimeoutMs));
  s.Kill9();
  size_t sent_at_kill = log.CountAtLeast(MessageStatus::kSent);
  ASSERT_LT(sent_at_kill, static_cast<size_t>(kMessages)) << "the kill did not land mid-drain";
  s.Start();

  ASSERT_TRUE(alice->WaitOutboxDrained(kDrainTimeoutMs)) << alice->last_error();
  ASSERT_TRUE(Eventually([&] { return log.CountAtLeast(MessageStatus::kDelivered) == ids.size(); }, kDrainTimeoutMs))
      << log.CountAtLeast(MessageStatus::kDelivered) << " delivered of " << ids.size();
  for (auto& id : ids) EXPECT_EQ(log.Of(id), MessageStatus::kDelivered);
  ExpectExactlyOnceInOrder(s, "bob", alice->user_id(), kMessages);

  // Bob's cache holds the 50 in order, and his events (with what coalesced
  // receipts covered) came once each, gapless.
  auto cached = bob->Messages("alice", 0, 1000);
  ASSERT_EQ(cached.size(), static_cast<size_t>(kMessages));
  for (int i = 0; i < kMessages; ++i) EXPECT_EQ(cached[static_cast<size_t>(i)].body, Body(i));
  std::lock_guard lock(bob_mu);
  ASSERT_FALSE(bob_seqs.empty());
  for (size_t i = 1; i < bob_seqs.size(); ++i) EXPECT_LT(bob_seqs[i - 1], bob_seqs[i]) << "out of order at " << i;
  std::vector<int64_t> all = bob_seqs;
  all.insert(all.end(), bob_covered.begin(), bob_covered.end());
  std::sort(all.begin(), all.end());
  for (size_t i = 1; i < all.size(); ++i) EXPECT_EQ(all[i], all[i - 1] + 1) << "duplicate or gap at " << i;
}

TEST(OutboxE2E, ClientProcessKilledMidDrainResumesWithNothingLostOrDoubled) {
  ServerProcess s({"--commit-deadline-us", "20000"});
  Register(s, "alice");
  Register(s, "bob");
  TempDir dir;
  std::string server = "127.0.0.1:" + std::to_string(s.port());
  std::vector<std::string> base = {"--config-dir", dir / "cfg", "--server", server, "--timeout", "3000"};
  auto with = [&](std::vector<std::string> more) {
    std::vector<std::string> a = base;
    a.insert(a.end(), more.begin(), more.end());
    return a;
  };
  ASSERT_EQ(RunCli(dir, with({"login", "alice", "--password", "correct horse"})).exit_code, 0);

  // Composed offline, by one CLI run.
  s.Kill9();
  std::string input;
  for (int i = 0; i < kMessages; ++i) input += Body(i) + "\n";
  auto queued = RunCli(dir, with({"--timeout", "300", "send", "bob", "-"}), input);
  ASSERT_EQ(queued.exit_code, 0) << queued.err;
  s.Start();
  Device bob = Login(s, "bob");

  // A second run drains; kill -9 it once bob has seen some.
  pid_t pid = SpawnCli(with({"watch", "--for", "60000"}), "", dir / "watch.out", dir / "watch.err");
  ASSERT_GT(pid, 0);
  int seen = 0;
  while (seen < 10) {
    auto e = WaitEvent(*bob.conn, [](const json& ev) { return ev["kind"] == "message"; }, 20000);
    ASSERT_TRUE(e.has_value()) << Slurp(dir / "watch.err");
    ++seen;
  }
  kill(pid, SIGKILL);
  int status;
  waitpid(pid, &status, 0);
  auto so_far = MessagesFrom(SyncAll(*bob.conn, 0), 1);
  ASSERT_LT(so_far.size(), static_cast<size_t>(kMessages)) << "the kill did not land mid-drain";

  // Any later run finishes the job.
  auto rest = RunCli(dir, with({"--timeout", "20000", "outbox"}));
  ASSERT_EQ(rest.exit_code, 0);
  auto drain = RunCli(dir, with({"--timeout", "20000", "chats"}));
  ASSERT_EQ(drain.exit_code, 0) << drain.err;
  auto left = RunCli(dir, with({"--json", "outbox"}));
  EXPECT_EQ(left.Json()["outbox"].size(), 0u) << left.out;
  ExpectExactlyOnceInOrder(s, "bob", 1, kMessages);
}

TEST(OutboxE2E, FullLocalDiskFailsComposeClearlyAndKeepsTheOutbox) {
  ServerProcess s;
  std::string alice_token = RegisterAndLogin(s, "alice");
  Register(s, "bob");
  TempDir dir;
  s.Kill9();
  std::string big(3000, 'x');
  auto body = [&](int i) { return std::to_string(i) + big; };
  {
    auto alice = OpenClient(OptionsFor(s, dir / "alice.db", alice_token));
    for (int i = 0; i < 3; ++i) ASSERT_TRUE(alice->Compose("bob", body(i)).ok);
  }
  int64_t pages = 0;
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open((dir / "alice.db").c_str(), &db), SQLITE_OK);
    sqlite3_stmt* st = nullptr;
    sqlite3_prepare_v2(db, "PRAGMA page_count", -1, &st, nullptr);
    ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
    pages = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
  }
  ASSERT_GT(pages, 0);
  int accepted = 3;
  {
    auto o = OptionsFor(s, dir / "alice.db", alice_token);
    o.cache_max_pages = pages;  // the disk is full at today's size
    auto alice = OpenClient(o);
    ComposeResult r;
    for (int attempt = 0; attempt < 20; ++attempt) {
      r = alice->Compose("bob", body(accepted));
      if (!r.ok) break;
      ++accepted;  // a free page inside the file may take one or two
    }
    ASSERT_FALSE(r.ok) << "compose never hit the size cap";
    EXPECT_EQ(r.code, kErrLocalStorageFull);
    EXPECT_NE(r.message.find("full"), std::string::npos) << r.message;
    EXPECT_EQ(alice->PendingCount(), static_cast<size_t>(accepted));
  }
  // Space again, server back: everything queued before the failure is sent.
  s.Start();
  auto alice = OpenClient(OptionsFor(s, dir / "alice.db", alice_token));
  alice->Start();
  ASSERT_TRUE(alice->WaitOutboxDrained(kDrainTimeoutMs)) << alice->last_error();
  ExpectExactlyOnceInOrder(s, "bob", alice->user_id(), accepted, body);
}

TEST(OutboxE2E, MessageOlderThanTheMaximumAgeIsMarkedFailedAndNeverSent) {
  ServerProcess s;
  std::string alice_token = RegisterAndLogin(s, "alice");
  Register(s, "bob");
  AgingClientOptions a(s, alice_token);
  std::atomic<int64_t>& now = a.now;
  StatusLog& log = a.log;
  ClientOptions& o = a.options;
  EXPECT_EQ(o.outbox_max_age_ms, kDefaultOutboxMaxAgeMs);
  auto alice = OpenClient(o);
  auto old_one = alice->Compose("bob", "too old");
  now += kDefaultOutboxMaxAgeMs + 1;
  auto fresh = alice->Compose("bob", "fresh");
  alice->Start();
  ASSERT_TRUE(alice->WaitOutboxDrained(kDrainTimeoutMs));
  // Callbacks follow the cache's commit on the worker thread.
  ASSERT_TRUE(Eventually([&] { return log.Of(fresh.client_id) == MessageStatus::kSent; }, 5000));
  EXPECT_EQ(log.Of(old_one.client_id), MessageStatus::kFailed);
  auto st = alice->StatusOf(old_one.client_id);
  ASSERT_TRUE(st.has_value());
  EXPECT_EQ(st->status, MessageStatus::kFailed);
  EXPECT_EQ(st->error_code, kErrExpired);
  ASSERT_EQ(alice->Outbox().size(), 1u);  // still visible, as failed
  ExpectExactlyOnceInOrder(s, "bob", alice->user_id(), 1, [](int) { return std::string("fresh"); });
}

// Alice's send to bob goes out while the server is stopped (SIGSTOP), and
// the message passes the outbox's maximum age before any answer comes;
// `interrupt` then makes the client look at its outbox again (it may
// replace the client, with the same options). The server stored it once it
// runs again, so the message must end sent, never reported failed first.
void ExpectAnUnansweredSendToOutliveTheMaximumAge(
    const std::function<void(std::unique_ptr<Client>&, const ClientOptions&)>& interrupt) {
  ServerProcess s;
  std::string alice_token = RegisterAndLogin(s, "alice");
  Register(s, "bob");
  Register(s, "carol");
  AgingClientOptions a(s, alice_token);
  std::atomic<int64_t>& now = a.now;
  StatusLog& log = a.log;
  ClientOptions& o = a.options;
  auto alice = OpenClient(o);
  alice->Start();
  ASSERT_TRUE(alice->WaitOnline(kDrainTimeoutMs));
  ASSERT_EQ(kill(s.pid(), SIGSTOP), 0);
  auto late = alice->Compose("bob", "answered late");
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  now += kDefaultOutboxMaxAgeMs + 1;
  interrupt(alice, o);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ASSERT_EQ(kill(s.pid(), SIGCONT), 0);
  ASSERT_TRUE(alice->WaitOutboxDrained(kDrainTimeoutMs));
  ASSERT_TRUE(Eventually([&] { return log.Of(late.client_id) == MessageStatus::kSent; }, 5000));
  std::lock_guard lock(log.mu);
  for (const StatusUpdate& u : log.all) {
    if (u.client_id == late.client_id) {
      EXPECT_NE(u.status, MessageStatus::kFailed) << "reported failed, then sent";
    }
  }
  ExpectExactlyOnceInOrder(s, "bob", alice->user_id(), 1, [](int) { return std::string("answered late"); });
}

// The send is still in flight: another compose wakes the worker, which looks
// at the outbox while the ack is due.
TEST(OutboxE2E, AMessageThatAgesOutWhileItsSendIsInFlightEndsSentNotFailed) {
  ExpectAnUnansweredSendToOutliveTheMaximumAge(
      [](std::unique_ptr<Client>& c, const ClientOptions&) { ASSERT_TRUE(c->Compose("carol", "wake up").ok); });
}

// The connection drops before the answer: the send is not expired between
// connection attempts either; the retry on the next connection gets the
// server's answer.
TEST(OutboxE2E, AMessageThatAgesOutAfterItsConnectionDroppedUnansweredEndsSentNotFailed) {
  ExpectAnUnansweredSendToOutliveTheMaximumAge(
      [](std::unique_ptr<Client>& c, const ClientOptions&) { c->DropConnectionForTest(); });
}

// The process that sent it goes away unanswered (a `parley send` run, an
// app closed): the next process, offline at first, does not expire it
// between its connection attempts either (outbox.attempted).
TEST(OutboxE2E, AMessageSentUnansweredByAnEarlierProcessIsNotExpiredByTheNextOne) {
  ExpectAnUnansweredSendToOutliveTheMaximumAge([](std::unique_ptr<Client>& c, const ClientOptions& o) {
    c.reset();
    // Its first attempt fails (the server is stopped): the outbox's age is
    // checked between attempts.
    ClientOptions next = o;
    auto failed_attempts = std::make_shared<std::atomic<int>>(0);
    next.on_state = [failed_attempts](ClientState s, const std::string&) {
      if (s == ClientState::kWaiting) ++*failed_attempts;
    };
    c = OpenClient(next);
    c->Start();
    ASSERT_TRUE(Eventually([&] { return *failed_attempts >= 1; }, 4 * o.connect_timeout_ms));
  });
}

// The maximum age holds while the server is unreachable too: the message is
// marked failed between connection attempts, not at the next connection.
TEST(OutboxE2E, AMessageTooOldIsMarkedFailedWhileTheServerIsDown) {
  ServerProcess s;
  std::string alice_token = RegisterAndLogin(s, "alice");
  Register(s, "bob");
  s.Kill9();
  AgingClientOptions a(s, alice_token);
  std::atomic<int64_t>& now = a.now;
  StatusLog& log = a.log;
  ClientOptions& o = a.options;
  auto alice = OpenClient(o);
  auto old_one = alice->Compose("bob", "too old");
  now += kDefaultOutboxMaxAgeMs + 1;
  alice->Start();
  ASSERT_TRUE(Eventually([&] { return log.Of(old_one.client_id) == MessageStatus::kFailed; }, 5000))
      << "still pending while offline";
  EXPECT_NE(alice->state(), ClientState::kOnline);
  EXPECT_EQ(alice->PendingCount(), 0u);
}

// A retry refused by the rate limit (checked before the server looks for
// the client id) says only that the retry is not stored: an earlier send
// left unanswered still keeps the message from expiring.
TEST(OutboxE2E, ARateLimitedRetryOfAnUnansweredSendDoesNotLetItExpire) {
  ServerProcess s({"--rate-limit", "send_per_device=0.25/1"});  // one send, then one per 4 s
  std::string alice_token = RegisterAndLogin(s, "alice");
  Register(s, "bob");
  AgingClientOptions a(s, alice_token);
  auto alice = OpenClient(a.options);
  alice->Start();
  ASSERT_TRUE(alice->WaitOnline(kDrainTimeoutMs));
  auto refused = [&] { return MetricValue(HttpGet(s.port(), "/metrics"), "parley_errors_total{code=\"rate_limited\"}"); };
  ASSERT_TRUE(alice->Compose("bob", "first").ok);  // takes the token
  ASSERT_TRUE(alice->WaitOutboxDrained(kDrainTimeoutMs));
  ASSERT_EQ(kill(s.pid(), SIGSTOP), 0);
  auto late = alice->Compose("bob", "late");  // goes out, unanswered
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  a.now += kDefaultOutboxMaxAgeMs + 1;
  alice->DropConnectionForTest();
  ASSERT_EQ(kill(s.pid(), SIGCONT), 0);
  // The retry on the next connection meets the empty bucket.
  ASSERT_TRUE(Eventually([&] { return refused() >= 1; }, kDrainTimeoutMs));
  ASSERT_TRUE(alice->WaitOutboxDrained(kDrainTimeoutMs));
  ASSERT_TRUE(Eventually([&] { return a.log.Of(late.client_id) == MessageStatus::kSent; }, 5000));
  std::lock_guard lock(a.log.mu);
  for (const StatusUpdate& u : a.log.all) {
    if (u.client_id == late.client_id) {
      EXPECT_NE(u.status, MessageStatus::kFailed) << "expired after the refusal of its retry";
    }
  }
}

// A rate_limited send waits the server's retry_after_ms even when the
// connection drops meanwhile: the next connection does not send it early
// (and get refused again).
TEST(OutboxE2E, ARateLimitedWaitOutlivesTheConnection) {
  ServerProcess s({"--rate-limit", "send_per_device=1/1"});
  std::string alice_token = RegisterAndLogin(s, "alice");
  Register(s, "bob");
  TempDir dir;
  auto alice = OpenClient(OptionsFor(s, dir / "alice.db", alice_token));
  alice->Start();
  ASSERT_TRUE(alice->WaitOnline(kDrainTimeoutMs));
  auto refused = [&] { return MetricValue(HttpGet(s.port(), "/metrics"), "parley_errors_total{code=\"rate_limited\"}"); };
  ASSERT_TRUE(alice->Compose("bob", "first").ok);
  ASSERT_TRUE(alice->Compose("bob", "second").ok);
  ASSERT_TRUE(Eventually([&] { return refused() >= 1; }, 5000));
  alice->DropConnectionForTest();  // reconnects within FastBackoff's 50-400 ms, well inside the wait
  ASSERT_TRUE(alice->WaitOutboxDrained(kDrainTimeoutMs));
  EXPECT_EQ(refused(), 1) << "the second send was refused again after the reconnect";
  ExpectExactlyOnceInOrder(s, "bob", alice->user_id(), 2, [](int i) { return std::string(i == 0 ? "first" : "second"); });
}

// A message refused for good (alice blocks bob) stays failed until the app
// asks: retried after the unblock it is sent, with its client id; another
// failed one is discarded and never listed or sent again.
TEST(OutboxE2E, AFailedMessageIsRetriedOrDiscardedOnlyWhenTheAppAsks) {
  ServerProcess s;
  std::string alice_token = RegisterAndLogin(s, "alice");
  Register(s, "bob");
  TempDir dir;
  auto alice = OpenClient(OptionsFor(s, dir / "alice.db", alice_token));
  alice->Start();
  ASSERT_TRUE(alice->WaitOnline(kDrainTimeoutMs));
  ASSERT_TRUE(alice->Request("block", {{"username", "bob"}}).ok);
  auto first = alice->Compose("bob", "first try");
  auto second = alice->Compose("bob", "never mind");
  ASSERT_TRUE(alice->WaitOutboxDrained(kDrainTimeoutMs));
  for (const auto& id : {first.client_id, second.client_id}) {
    auto st = alice->StatusOf(id);
    ASSERT_TRUE(st.has_value());
    EXPECT_EQ(st->status, MessageStatus::kFailed);
    EXPECT_EQ(st->error_code, "blocked");
  }
  EXPECT_FALSE(alice->RetryFailed("no-such-id"));
  ASSERT_TRUE(alice->Request("unblock", {{"username", "bob"}}).ok);
  EXPECT_TRUE(alice->DiscardFailed(second.client_id));
  EXPECT_FALSE(alice->DiscardFailed(second.client_id));
  EXPECT_TRUE(alice->RetryFailed(first.client_id));
  EXPECT_FALSE(alice->RetryFailed(first.client_id)) << "a pending entry is not failed";
  ASSERT_TRUE(alice->WaitOutboxDrained(kDrainTimeoutMs));
  ASSERT_TRUE(Eventually([&] {
    auto st = alice->StatusOf(first.client_id);
    return st && st->status != MessageStatus::kPending && st->status != MessageStatus::kFailed;
  }, 5000));
  EXPECT_TRUE(alice->Outbox().empty());
  EXPECT_FALSE(alice->StatusOf(second.client_id).has_value());
  for (const auto& m : alice->Messages("bob", 0, 10)) EXPECT_NE(m.body, "never mind");
  ExpectExactlyOnceInOrder(s, "bob", alice->user_id(), 1, [](int) { return std::string("first try"); });
}

}  // namespace
}  // namespace parley::testing
