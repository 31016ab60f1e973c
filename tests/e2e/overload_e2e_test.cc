// End-to-end: a client that stops reading cannot make the server buffer
// without bound; it is closed with the resync code and catches up by sync
// with nothing lost (docs/protocol.md, close code 4003).
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "e2e/helpers.h"

namespace parley::testing {
namespace {

TEST(OverloadE2E, StalledReaderIsClosedWithResyncAndCatchesUpWithAllMessages) {
  constexpr int kQueueLimit = 256 * 1024;
  ServerProcess server({"--max-outbound-queue-bytes", std::to_string(kQueueLimit), "--socket-send-buffer", "65536"});
  Register(server, "alice");
  Register(server, "bob");
  Device a = Login(server, "alice");
  Device b0 = Login(server, "bob");
  int64_t b_cursor = b0.head;
  std::string b_token = b0.token;
  b0.conn.reset();

  ConnectOptions o;
  o.port = server.port();
  o.receive_buffer_bytes = 16 * 1024;
  std::string err;
  auto slow = Connection::Open(o, &err);
  ASSERT_TRUE(slow) << err;
  ASSERT_TRUE(slow->Call("auth", {{"token", b_token}}).ok);
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
  ASSERT_TRUE(slow->WaitClosed(10000)) << "drained " << drained << " events, no close";
  EXPECT_EQ(slow->close_code(), 4003);

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

}  // namespace
}  // namespace parley::testing
