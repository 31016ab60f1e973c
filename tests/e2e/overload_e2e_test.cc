// End-to-end: a client that stops reading cannot make the server buffer
// without bound; it is closed with the resync code and catches up by sync
// with nothing lost (docs/protocol.md, close code 4003).
#include <gtest/gtest.h>

#include <sched.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "e2e/helpers.h"
#include "protocol/limits.h"
#include "store/sqlite/sqlite_store.h"

namespace parley::testing {
namespace {

// A connection with a small receive buffer, authenticated with `token`: a
// reader the tests stall (PauseReading) so that the server's queue for it
// fills. Returns null (after a test failure) if it cannot connect or auth;
// *head is the auth result's head.
std::unique_ptr<Connection> OpenSlowReader(ServerProcess& server, const std::string& token,
                                           int receive_buffer_bytes = 4096, int64_t* head = nullptr) {
  ConnectOptions o;
  o.port = server.port();
  o.receive_buffer_bytes = receive_buffer_bytes;
  std::string err;
  auto slow = Connection::Open(o, &err);
  EXPECT_TRUE(slow) << err;
  if (!slow) return nullptr;
  auto auth = slow->Call("auth", {{"token", token}});
  EXPECT_TRUE(auth.ok) << auth.code;
  if (!auth.ok) return nullptr;
  if (head != nullptr) *head = auth.result["head"];
  return slow;
}

TEST(OverloadE2E, StalledReaderIsClosedWithResyncAndCatchesUpWithAllMessages) {
  constexpr int kQueueLimit = 256 * 1024;
  // A long heartbeat timeout: the stalled reader stays silent for as long as
  // the 10,000 sends take (over a minute on a loaded machine), and the close
  // handshake waits that long for it.
  ServerProcess server({"--max-outbound-queue-bytes", std::to_string(kQueueLimit), "--socket-send-buffer", "65536",
                        "--heartbeat-timeout-ms", "600000"});
  Register(server, "alice");
  Register(server, "bob");
  Device a = Login(server, "alice");
  Device b0 = Login(server, "bob");
  int64_t b_cursor = b0.head;
  std::string b_token = b0.token;
  b0.conn.reset();

  auto slow = OpenSlowReader(server, b_token, 16 * 1024);
  ASSERT_TRUE(slow);
  slow->PauseReading();

  // Watch the queue gauge while 10,000 messages are sent to the stalled reader.
  std::atomic<bool> sending{true};
  std::atomic<double> max_queue{0};
  std::thread watcher([&] {
    while (sending) {
      double q = MetricValue(HttpGet(server.port(), "/metrics"), "parley_outbound_queue_bytes");
      if (q > max_queue) max_queue = q;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  });
  constexpr int kCount = 10000;
  std::string body(100, 'm');
  for (int start = 0; start < kCount; start += 100) {
    std::vector<int64_t> ids;
    for (int i = start; i < start + 100; ++i)
      ids.push_back(a.conn->Start("send", {{"to", "bob"}, {"client_id", "o" + std::to_string(i)}, {"body", body}}));
    for (auto id : ids) ASSERT_TRUE(a.conn->Await(id, 30000).ok);
  }
  sending = false;
  watcher.join();
  // The server gave up on the stalled connection instead of buffering.
  std::string metrics = HttpGet(server.port(), "/metrics");
  EXPECT_GE(MetricValue(metrics, "parley_resync_closes_total"), 1);
  // Alice's own connection keeps a little queue too: allow for it.
  EXPECT_LE(max_queue.load(), kQueueLimit + 64 * 1024) << "outbound queue grew past its limit";

  slow->ResumeReading();
  int drained = 0;
  while (slow->NextEvent(2000)) ++drained;
  // (It failed once, in a parallel ctest run: the figures below say which
  // side stalled next time.)
  const bool closed = slow->WaitClosed(10000);
  if (!closed) metrics = HttpGet(server.port(), "/metrics");
  ASSERT_TRUE(closed) << "drained " << drained << " events, no close; resync closes "
                      << MetricValue(metrics, "parley_resync_closes_total") << ", queued bytes now "
                      << MetricValue(metrics, "parley_outbound_queue_bytes") << ", at most " << max_queue.load();
  EXPECT_EQ(slow->close_code(), 4003);
  json reason = json::parse(slow->close_reason(), nullptr, false);
  EXPECT_EQ(reason.is_object() ? reason.value("retry_after_ms", -1) : -1, 1000)
      << "the resync close does not carry the default retry-after window";

  // Reconnect and sync: every message exactly once, in order.
  Device b;
  b.token = b_token;
  b = Reconnect(server, b);
  std::vector<int64_t> seqs;
  int64_t prev = b_cursor;
  for (auto& e : SyncAll(*b.conn, b_cursor, 1000)) {
    ASSERT_EQ(e["user_seq"], prev + 1);
    prev = e["user_seq"];
    if (e["kind"] == "message") seqs.push_back(e["message"]["seq"]);
  }
  ASSERT_EQ(seqs.size(), static_cast<size_t>(kCount));
  for (int i = 0; i < kCount; ++i) ASSERT_EQ(seqs[i], i + 1);
  // Nothing is left queued for the dropped connection.
  b.conn.reset();
  a.conn.reset();
  for (int i = 0; i < 100; ++i) {
    std::string m = HttpGet(server.port(), "/metrics");
    if (MetricValue(m, "parley_outbound_queue_frames") == 0 && MetricValue(m, "parley_outbound_queue_bytes") == 0) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ADD_FAILURE() << "outbound queue gauges did not return to 0";
}

// A peer that stopped reading but keeps sending pings is dropped once a write
// has waited longer than the heartbeat timeout: its pings kept the idle
// timeout from firing, so it once held its queue (and any close waiting
// behind it) for as long as it kept pinging.
TEST(OverloadE2E, AStalledReaderThatKeepsPingingIsDroppedAfterTheHeartbeatTimeout) {
  ServerProcess server({"--socket-send-buffer", "4096", "--heartbeat-interval-ms", "1000", "--heartbeat-timeout-ms",
                        "2000"});
  Register(server, "alice");
  Register(server, "bob");
  Device a = Login(server, "alice");
  Device b = Login(server, "bob");
  const std::string token = b.token;
  b.conn.reset();
  auto slow = OpenSlowReader(server, token, 4096);
  ASSERT_TRUE(slow);
  slow->PauseReading();
  // More than the two socket buffers hold: the server's write stalls. The
  // stalled write may start with any of the sends (so the time is counted
  // from before the first: the sends themselves may take a while).
  const auto start = std::chrono::steady_clock::now();
  const std::string body(1000, 'x');
  for (int i = 0; i < 100; ++i)
    ASSERT_TRUE(a.conn->Call("send", {{"to", "bob"}, {"client_id", "p" + std::to_string(i)}, {"body", body}}).ok);
  double timeouts = 0;
  while (std::chrono::steady_clock::now() - start < std::chrono::seconds(20)) {
    slow->SendRaw(R"({"v":1,"id":"hb","type":"ping"})");
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    timeouts = MetricValue(HttpGet(server.port(), "/metrics"), "parley_ws_write_timeouts_total");
    if (timeouts >= 1) break;
  }
  EXPECT_EQ(timeouts, 1) << "a stalled reader that kept pinging was never dropped";
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(1500)) << "dropped before its time";
  // What it missed is still there for the device.
  Device again;
  again.token = token;
  again = Reconnect(server, again);
  size_t messages = 0;
  for (auto& e : SyncAll(*again.conn, 0, 1000))
    if (e["kind"] == "message") ++messages;
  EXPECT_EQ(messages, 100u);
}

// Overload order, step 2: receipts for one (conversation, user) waiting in a
// behind connection's queue are merged into one frame with the newest
// watermarks, listing the user seqs it stands for; the device still accounts
// for every user seq, once.
TEST(OverloadE2E, QueuedReceiptsAreCoalescedToTheLatestWatermark) {
  ServerProcess server({"--socket-send-buffer", "4096"});
  Register(server, "alice");
  Register(server, "bob");
  Device a = Login(server, "alice");
  Device sender = Login(server, "bob", "sender");
  int64_t from = 0;
  auto slow = OpenSlowReader(server, sender.token, 4096, &from);
  ASSERT_TRUE(slow);
  slow->PauseReading();

  // Bob's messages fill the stalled connection's socket buffers and queue...
  constexpr int kCount = 300;
  std::vector<int64_t> ids;
  for (int i = 0; i < kCount; ++i)
    ids.push_back(sender.conn->Start("send", {{"to", "alice"}, {"client_id", "c" + std::to_string(i)},
                                             {"body", std::string(200, 'x')}}));
  int64_t conv = 0;
  for (auto id : ids) {
    auto r = sender.conn->Await(id, 30000);
    ASSERT_TRUE(r.ok) << r.code;
    conv = r.result["conversation_id"];
  }
  // ...then alice reads them one by one: 300 receipt events for bob. Each
  // receipt waits for the previous one's answer, so each is a commit of its
  // own: receipts of one device that share a commit are merged by the store
  // into one event (SqliteStoreTest.ReceiptsOfOneDeviceInOneCommitAreMergedIntoOne),
  // and this test is about the events that still pile up in a connection.
  for (int i = 1; i <= kCount; ++i)
    ASSERT_TRUE(a.conn->Call("receipt", {{"items", {{{"conversation_id", conv}, {"read", i}}}}}).ok);
  int64_t head = sender.conn->Call("ping").result["head"];

  slow->ResumeReading();
  std::vector<int64_t> covered;
  int receipt_frames = 0;
  int64_t last_read = 0;
  int64_t newest = 0;  // the highest user seq seen, directly or covered
  const auto take = [&](const json& f) {
    if (f["type"] != "event") return;
    const json& e = f["event"];
    covered.push_back(e["user_seq"]);
    newest = std::max(newest, e["user_seq"].get<int64_t>());
    if (e["kind"] != "receipt") return;
    ++receipt_frames;
    EXPECT_GE(e["read"].get<int64_t>(), last_read) << "a watermark went backwards";
    last_read = e["read"];
    for (const auto& s : e.value("also_covers", json::array())) {
      covered.push_back(s);
      newest = std::max(newest, s.get<int64_t>());
    }
  };
  // Read until the final state arrived (the last watermark, and the stream
  // up to its head: on a loaded machine the queue drains slowly, so silence
  // proves nothing), then briefly for anything extra, which would be a
  // doubled user seq.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (!(last_read == kCount && newest >= head) && std::chrono::steady_clock::now() < deadline) {
    if (auto f = slow->NextEvent(1000)) take(*f);
    else if (slow->closed()) break;
  }
  while (auto f = slow->NextEvent(300)) take(*f);
  EXPECT_FALSE(slow->closed()) << "closed with " << slow->close_code();
  EXPECT_EQ(last_read, kCount);
  EXPECT_LT(receipt_frames, kCount / 2) << "receipts were not coalesced";
  std::sort(covered.begin(), covered.end());
  ASSERT_EQ(static_cast<int64_t>(covered.size()), head - from) << "a user seq was lost or doubled";
  for (size_t i = 0; i < covered.size(); ++i) ASSERT_EQ(covered[i], from + 1 + static_cast<int64_t>(i));
  EXPECT_GE(MetricValue(HttpGet(server.port(), "/metrics"), "parley_coalesced_receipts_total"), kCount / 2);
}

// Coalesced writes: frames queued while a connection's write is in progress
// leave together, several per socket write, each still a whole frame in its
// order (the client parses every one). Without coalescing every frame is its
// own write (frames / writes == 1).
TEST(OverloadE2E, QueuedFramesLeaveSeveralPerWriteInOrder) {
  ServerProcess server({"--socket-send-buffer", "4096"});
  Register(server, "alice");
  Register(server, "bob");
  Device a = Login(server, "alice");
  Device sender = Login(server, "bob", "sender");
  auto slow = OpenSlowReader(server, a.token);
  ASSERT_TRUE(slow);
  std::string before = HttpGet(server.port(), "/metrics");
  slow->PauseReading();

  constexpr int kCount = 300;
  std::vector<int64_t> ids;
  for (int i = 0; i < kCount; ++i)
    ids.push_back(sender.conn->Start("send", {{"to", "alice"}, {"client_id", "q" + std::to_string(i)},
                                             {"body", std::string(200, 'x')}}));
  for (auto id : ids) ASSERT_TRUE(sender.conn->Await(id, 30000).ok);

  slow->ResumeReading();
  int64_t next = 1;
  while (next <= kCount) {
    auto f = slow->NextEvent(10000);
    ASSERT_TRUE(f) << "message " << next << " did not arrive";
    if ((*f)["type"] != "event" || (*f)["event"]["kind"] != "message") continue;
    ASSERT_EQ((*f)["event"]["message"]["seq"], next);
    ASSERT_EQ((*f)["event"]["message"]["body"], std::string(200, 'x'));
    ++next;
  }
  EXPECT_FALSE(slow->closed());
  std::string after = HttpGet(server.port(), "/metrics");
  double frames =
      MetricValue(after, "parley_outbound_frames_total") - MetricValue(before, "parley_outbound_frames_total");
  double writes =
      MetricValue(after, "parley_outbound_writes_total") - MetricValue(before, "parley_outbound_writes_total");
  // At least the slow connection's 300 message events, the sender's 300
  // responses, and alice's other connection's 300 events.
  EXPECT_GE(frames, 3 * kCount);
  // The slow connection's frames, queued behind its stalled write, leave a
  // batch (<= 64 KiB) per write: frames per write well above 1 overall even
  // if every other frame went alone.
  EXPECT_GT(frames, 1.3 * writes) << frames << " frames in " << writes << " writes";
}

// Found by the delivery checker's withheld-list check (receipt_leaks): a
// receipt carrying a withheld list is never merged, but later receipts of
// the same (conversation, user) were still folded into one queued before
// it, so a behind device got a watermark past the withheld seq before the
// list that keeps it "sent". Now the watermarks a behind device sees never
// pass a withheld seq before the frame listing it.
TEST(OverloadE2E, QueuedReceiptsAreNotMergedPastAWithheldList) {
  ServerProcess server({"--socket-send-buffer", "4096"});
  Register(server, "alice");
  Register(server, "bob");
  Device a = Login(server, "alice");
  Device sender = Login(server, "bob", "sender");
  auto send = [&](const std::string& id) {
    Reply r = sender.conn->Call("send", {{"to", "alice"}, {"client_id", id}, {"body", std::string(200, 'x')}});
    EXPECT_TRUE(r.ok) << r.code;
    return r.ok ? r.result["conversation_id"].get<int64_t>() : int64_t{0};
  };
  int64_t conv = send("visible");  // seq 1
  ASSERT_TRUE(a.conn->Call("block", {{"username", "bob"}}).ok);
  send("withheld");  // seq 2: withheld from alice
  ASSERT_TRUE(a.conn->Call("unblock", {{"username", "bob"}}).ok);

  auto slow = OpenSlowReader(server, sender.token);
  ASSERT_TRUE(slow);
  slow->PauseReading();
  // Bob's messages (seqs 3..) fill the stalled connection's buffers...
  constexpr int kCount = 200;
  std::vector<int64_t> ids;
  for (int i = 0; i < kCount; ++i)
    ids.push_back(sender.conn->Start("send", {{"to", "alice"}, {"client_id", "f" + std::to_string(i)},
                                             {"body", std::string(200, 'x')}}));
  for (auto id : ids) ASSERT_TRUE(sender.conn->Await(id, 30000).ok);
  // ...then alice's receipts queue behind them: read 1 (not past seq 2),
  // read 3 (past it: lists it), then read 4, 5, ... Each waits for the
  // previous answer, so that each is a commit and an event of its own (the
  // store merges a device's receipts that share a commit).
  for (int i = 1; i <= kCount + 2; ++i) {
    if (i == 2) continue;
    ASSERT_TRUE(a.conn->Call("receipt", {{"items", {{{"conversation_id", conv}, {"read", i}}}}}).ok);
  }

  slow->ResumeReading();
  bool listed = false;
  int64_t last_delivered = 0;
  const auto take = [&](const json& f) {
    if (f["type"] != "event") return;
    const json& e = f["event"];
    if (e["kind"] != "receipt" || e.value("user_id", int64_t{0}) == 0) return;
    for (const auto& w : e.value("withheld", json::array())) listed = listed || w == 2;
    int64_t delivered = e["delivered"];
    EXPECT_GE(delivered, last_delivered) << "a watermark went backwards";
    last_delivered = delivered;
    EXPECT_TRUE(delivered < 2 || listed) << "delivered " << delivered << " passed the withheld seq 2 before its list: "
                                         << e.dump();
  };
  // Read until the last watermark arrived (on a loaded machine the queue
  // drains slowly, so silence proves nothing), then briefly for anything
  // after it.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (last_delivered < kCount + 2 && std::chrono::steady_clock::now() < deadline) {
    if (auto f = slow->NextEvent(1000)) take(*f);
    else if (slow->closed()) break;
  }
  while (auto f = slow->NextEvent(300)) take(*f);
  EXPECT_TRUE(listed);
  EXPECT_EQ(last_delivered, kCount + 2);
  // The connection was behind: later receipts were merged (after the list).
  EXPECT_GE(MetricValue(HttpGet(server.port(), "/metrics"), "parley_coalesced_receipts_total"), 1);
}

// parleyd's threads by name (/proc/PID/task/*/comm) with their thread ids.
// The main thread is keyed "main": a thread started from it carries its
// name "parleyd" until it names itself.
std::map<std::string, pid_t> ThreadIds(pid_t pid) {
  std::map<std::string, pid_t> ids;
  for (const auto& task : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/task")) {
    const pid_t tid = std::stoi(task.path().filename().string());
    std::string name = "main";
    if (tid != pid) {
      std::ifstream in(task.path() / "comm");
      std::getline(in, name);
    }
    ids[name] = tid;
  }
  return ids;
}

// Each thread's scheduling policy (sched_getscheduler), by name.
std::map<std::string, int> ThreadPolicies(pid_t pid) {
  std::map<std::string, int> policies;
  for (const auto& [name, tid] : ThreadIds(pid)) policies[name] = sched_getscheduler(tid);
  return policies;
}

// ThreadPolicies once parleyd's event loops run (the port file is written
// before they start; the gateway sets a thread's policy before its name)
// and the store's writer and first reader have named themselves.
std::map<std::string, int> RunningThreadPolicies(pid_t pid) {
  std::map<std::string, int> policies;
  for (int i = 0; i < 500; ++i) {
    policies = ThreadPolicies(pid);
    if (policies.count("io/1") != 0 && policies.count("store-writer") != 0 && policies.count("store-reader/0") != 0 &&
        policies.count("store-search/0") != 0)
      break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return policies;
}

// A frame arriving must not preempt the store's writer mid-commit on a
// shared core, nor a queued read the I/O thread: the I/O threads and the
// store's readers run under SCHED_BATCH, the writer under the normal policy
// (docs/benchmarks.md, "I/O threads that do not preempt the writer",
// "Readers that do not preempt the I/O thread"). The option turns it off.
TEST(SchedulingE2E, TheIoAndReaderThreadsRunUnderSchedBatchAndTheWriterDoesNot) {
  ServerProcess server;  // with --io-threads 2
  std::map<std::string, int> policies = RunningThreadPolicies(server.pid());
  ASSERT_TRUE(policies.count("main")) << "the main thread runs the first event loop";
  ASSERT_TRUE(policies.count("io/1"));
  ASSERT_TRUE(policies.count("store-writer"));
  EXPECT_EQ(policies["main"], SCHED_BATCH);
  EXPECT_EQ(policies["io/1"], SCHED_BATCH);
  EXPECT_EQ(policies["store-reader/0"], SCHED_BATCH);
  EXPECT_EQ(policies["store-writer"], SCHED_OTHER);

  ServerProcess normal({"--io-sched-batch", "false"});
  policies = RunningThreadPolicies(normal.pid());
  EXPECT_EQ(policies["main"], SCHED_OTHER);
  EXPECT_EQ(policies["io/1"], SCHED_OTHER);
  EXPECT_EQ(policies["store-reader/0"], SCHED_OTHER);
}

// The nice value of each of parleyd's threads, by name as ThreadPolicies.
std::map<std::string, int> ThreadNiceValues(pid_t pid) {
  std::map<std::string, int> nice;
  for (const auto& [name, tid] : ThreadIds(pid)) nice[name] = getpriority(PRIO_PROCESS, static_cast<id_t>(tid));
  return nice;
}

// Message search's writer indexes in the time the core has to spare
// (sqlite_search.h): SCHED_BATCH at nice 19, with or without
// --io-sched-batch; the store's writer keeps the normal priority.
TEST(SchedulingE2E, TheSearchWriterRunsAtTheLowestPriority) {
  for (bool io_batch : {true, false}) {
    ServerProcess server({"--io-sched-batch", io_batch ? "true" : "false"});
    std::map<std::string, int> policies = RunningThreadPolicies(server.pid());
    ASSERT_TRUE(policies.count("store-search/0")) << "io_batch " << io_batch;
    EXPECT_EQ(policies["store-search/0"], SCHED_BATCH);
    std::map<std::string, int> nice = ThreadNiceValues(server.pid());
    EXPECT_EQ(nice["store-search/0"], store::SqliteStore::kSearchNice);
    EXPECT_EQ(nice["store-writer"], 0);
    EXPECT_EQ(nice["store-reader/0"], 0);
  }
}

// A client pipelining reads at wire speed: past protocol::kMaxReadsInFlight
// unanswered reads on its connection, more are refused at once with
// rate_limited and a short retry-after (they once all queued for the
// store's readers, without bound). Every request gets exactly one answer,
// and once they are answered the connection may have that many in flight
// again: nothing stays counted. The store's snapshot answers are held
// (fault switch hold_snapshots) until the send behind the burst reaches the
// store, so the reads pile up however fast the store is: the count of
// refusals is exact, not a race between the client's writes and the store.
TEST(ReadsInFlightE2E, PipelinedReadsPastTheCapAreRefusedAndEveryOneIsAnswered) {
  ServerProcess server({"--fault", "hold_snapshots@1"});
  Register(server, "alice");
  Register(server, "bob");
  Device a = Login(server, "alice");
  constexpr int kBurst = 1000;
  std::vector<int64_t> ids;
  for (int i = 0; i < kBurst; ++i) ids.push_back(a.conn->Start("snapshot", {{"messages", 0}}));
  const int64_t send = a.conn->Start("send", {{"to", "bob"}, {"client_id", "after-the-burst"}, {"body", "hi"}});
  int answered = 0, refused = 0;
  for (int64_t id : ids) {
    Reply r = a.conn->Await(id, 30000);
    ASSERT_FALSE(r.timed_out()) << "request " << id << " was never answered";
    ++answered;
    if (r.ok) continue;
    ++refused;
    EXPECT_EQ(r.code, "rate_limited");
    EXPECT_NE(r.message.find("reads of this connection are waiting"), std::string::npos) << r.message;
    EXPECT_EQ(r.frame.value("retry_after_ms", 0), protocol::kReadsInFlightRetryAfterMs);
  }
  EXPECT_EQ(answered, kBurst);
  EXPECT_EQ(refused, kBurst - protocol::kMaxReadsInFlight)
      << "with every snapshot answer held, exactly the cap's worth reach the store";
  Reply sent = a.conn->Await(send, 30000);
  EXPECT_TRUE(sent.ok) << sent.code << " " << sent.message;
  // Nothing leaked: the cap's worth in flight at once all pass, and nothing
  // else is answered on the connection (no second answer to any of them).
  for (int round = 0; round < 3; ++round) {
    std::vector<int64_t> again;
    for (int i = 0; i < protocol::kMaxReadsInFlight; ++i)
      again.push_back(a.conn->Start(i % 2 ? "list_contacts" : "sync", json::object()));
    for (int64_t id : again) {
      Reply r = a.conn->Await(id, 10000);
      EXPECT_TRUE(r.ok) << r.code << " " << r.message;
    }
  }
  EXPECT_FALSE(a.conn->NextUnmatchedError(200).has_value()) << "a request was answered twice";
}

// Admission: past --max-queued-writes queued store writes, sends are refused
// at once with a retryable `unavailable` and the retry-after; nothing of a
// refused send is stored, and sending it again with the same client id
// stores it exactly once. A bound of 1 with eight devices sending at once
// makes refusals all but certain; the rounds repeat until one is seen.
TEST(AdmissionE2E, SendsPastTheStoresQueueBoundAreRefusedRetryablyAndStoredOnceOnRetry) {
  constexpr int kRetryAfterMs = 50;
  ServerProcess server({"--max-queued-writes", "1", "--unavailable-retry-after-ms", std::to_string(kRetryAfterMs),
                        "--relaxed-rate-limits"},
                       /*capture_log=*/true);
  Register(server, "alice");
  Register(server, "bob");
  constexpr int kDevices = 8;
  constexpr int kPerDevice = 25;
  std::vector<Device> alice;
  for (int d = 0; d < kDevices; ++d) alice.push_back(Login(server, "alice", "phone" + std::to_string(d)));
  Device bob = Login(server, "bob");

  std::set<std::string> sent;     // every client id offered
  std::set<std::string> refused;  // refused at least once, not yet stored
  int refusals = 0;
  int64_t conv = 0;
  for (int round = 0; round < 5 && refusals == 0; ++round) {
    std::vector<std::vector<std::pair<int64_t, std::string>>> ids(kDevices);
    for (int d = 0; d < kDevices; ++d) {
      for (int i = 0; i < kPerDevice; ++i) {
        const std::string cid = "r" + std::to_string(round) + "d" + std::to_string(d) + "i" + std::to_string(i);
        ids[d].emplace_back(alice[d].conn->Start("send", {{"to", "bob"}, {"client_id", cid}, {"body", "hi " + cid}}),
                            cid);
        sent.insert(cid);
      }
    }
    for (int d = 0; d < kDevices; ++d) {
      for (auto& [id, cid] : ids[d]) {
        Reply r = alice[d].conn->Await(id, 30000);
        if (r.ok) {
          conv = r.result["conversation_id"];
          continue;
        }
        ASSERT_EQ(r.code, "unavailable") << r.message;
        EXPECT_EQ(r.frame["retryable"], true) << r.frame.dump();
        EXPECT_EQ(r.frame["retry_after_ms"], kRetryAfterMs) << r.frame.dump();
        ++refusals;
        refused.insert(cid);
      }
    }
  }
  ASSERT_GT(refusals, 0) << "no send was refused with a bound of one queued write";
  EXPECT_EQ(MetricValue(HttpGet(server.port(), "/metrics"), "parley_overload_refused_total{type=\"send\"}"),
            refusals);
  // Retry each refused send after the announced wait, one at a time (the
  // queue is empty between them), as the SDK's outbox does.
  std::this_thread::sleep_for(std::chrono::milliseconds(kRetryAfterMs));
  // A background write (the search indexer, a receipt) can still fill the
  // bound of one for a moment: a refusal is retried after the wait, as the
  // SDK does.
  constexpr int kMaxRetries = 20;
  for (const std::string& cid : refused) {
    Reply r;
    for (int attempt = 0; attempt < kMaxRetries; ++attempt) {
      r = alice[0].conn->Call("send", {{"to", "bob"}, {"client_id", cid}, {"body", "hi " + cid}});
      if (r.ok || r.code != "unavailable") break;
      std::this_thread::sleep_for(std::chrono::milliseconds(kRetryAfterMs));
    }
    ASSERT_TRUE(r.ok) << cid << ": " << r.code << " " << r.message;
    EXPECT_EQ(r.result["duplicate"], false) << cid << " was stored by the refused attempt";
  }
  // Bob's history holds every send exactly once.
  std::map<std::string, int> stored;
  int64_t before = 0;
  for (;;) {
    nlohmann::json req = {{"conversation_id", conv}, {"limit", 200}};
    if (before > 0) req["before"] = before;
    Reply h = bob.conn->Call("history", req);
    ASSERT_TRUE(h.ok) << h.code;
    for (const auto& m : h.result["messages"]) ++stored[m["client_id"].get<std::string>()];
    if (!h.result["has_more"].get<bool>() || h.result["messages"].empty()) break;
    before = h.result["messages"][0]["seq"];
  }
  EXPECT_EQ(stored.size(), sent.size());
  for (const std::string& cid : sent) EXPECT_EQ(stored[cid], 1) << cid;
  // The refusals are logged as a warning with their count, not one error
  // line per request.
  std::ifstream log(server.log_path());
  const std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("event=store_overloaded"), std::string::npos);
  EXPECT_EQ(text.find("event=request_failed"), std::string::npos);
}

}  // namespace
}  // namespace parley::testing
