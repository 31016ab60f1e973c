// permessage-deflate (docs/operations.md, "Compression") against a real
// parleyd: negotiated only when both sides want it, frames arrive intact in
// both directions, and the bytes parleyd writes to a compressing connection
// really shrink (measured with the kernel's per-socket count of bytes sent,
// tcpi_bytes_sent, summed over parleyd's sockets as `ss -ti` shows it).
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "e2e/helpers.h"
#include "e2e/server_process.h"

namespace parley::testing {
namespace {

// A body that compresses well and is close to the largest allowed.
std::string CompressibleBody() {
  std::string body;
  while (body.size() < 12'000) body += "the quick brown fox jumps over the lazy dog " + std::to_string(body.size() % 7) + " ";
  return body;
}

// Bytes sent so far by every established TCP socket on the server's port
// (iproute2's ss, from scripts/setup.sh).
int64_t BytesSentFromPort(uint16_t port) {
  std::string cmd = "ss -tinH state established '( sport = :" + std::to_string(port) + " )'";
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) {
    ADD_FAILURE() << "cannot run " << cmd;
    return -1;
  }
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  EXPECT_EQ(pclose(p), 0) << cmd;
  int64_t sum = 0;
  int sockets = 0;
  for (size_t at = out.find("bytes_sent:"); at != std::string::npos; at = out.find("bytes_sent:", at + 1)) {
    sum += std::stoll(out.substr(at + 11));
    ++sockets;
  }
  EXPECT_GT(sockets, 0) << "no bytes_sent in: " << out;
  return sum;
}

std::unique_ptr<Connection> Open(ServerProcess& s, bool deflate) {
  ConnectOptions o;
  o.port = s.port();
  o.deflate = deflate;
  std::string error;
  auto c = Connection::Open(o, &error);
  EXPECT_TRUE(c) << error;
  return c;
}

TEST(CompressionE2E, NegotiatedOnlyWhenBothSidesWantIt) {
  ServerProcess plain;
  EXPECT_FALSE(Open(plain, true)->deflate()) << "parleyd without --ws-deflate must decline";
  ServerProcess server({"--ws-deflate"});
  EXPECT_FALSE(Open(server, false)->deflate()) << "a client that does not offer it gets none";
  auto c = Open(server, true);
  EXPECT_TRUE(c->deflate());
  EXPECT_EQ(MetricSum(HttpGet(server.port(), "/metrics"), "parley_ws_deflate_connections"), 1);
  c.reset();
  for (int i = 0; i < 50 && MetricSum(HttpGet(server.port(), "/metrics"), "parley_ws_deflate_connections") != 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(MetricSum(HttpGet(server.port(), "/metrics"), "parley_ws_deflate_connections"), 0);
}

TEST(CompressionE2E, FramesArriveIntactAndShrinkOnTheWire) {
  ServerProcess server({"--ws-deflate", "--ws-deflate-min-bytes", "64"});
  Register(server, "alice");
  Register(server, "bob");
  Device a = Login(server, "alice");
  Device b = Login(server, "bob");
  const std::string body = CompressibleBody();

  // Alice sends over a compressing connection; Bob reads over one too.
  auto a_z = Open(server, true);
  ASSERT_TRUE(a_z->deflate());
  ASSERT_TRUE(a_z->Call("auth", {{"token", a.token}}).ok);
  auto ack = a_z->Call("send", {{"to", "bob"}, {"client_id", "z-1"}, {"body", body}});
  ASSERT_TRUE(ack.ok) << ack.code << ": " << ack.message;
  int64_t conv = ack.result["conversation_id"];
  auto b_z = Open(server, true);
  ASSERT_TRUE(b_z->Call("auth", {{"token", b.token}}).ok);
  auto live = WaitEvent(*b.conn, IsMessage(ack.result["seq"]));
  ASSERT_TRUE(live);
  EXPECT_EQ((*live)["message"]["body"], body);

  // The same history, fetched as often over each kind of connection.
  constexpr int kFetches = 20;
  auto fetch_all = [&](Connection& c) {
    int64_t before = BytesSentFromPort(server.port());
    for (int i = 0; i < kFetches; ++i) {
      auto h = c.Call("history", {{"conversation_id", conv}});
      EXPECT_TRUE(h.ok) << h.code;
      EXPECT_EQ(h.result["messages"][0]["body"], body);
    }
    return BytesSentFromPort(server.port()) - before;
  };
  int64_t plain_bytes = fetch_all(*b.conn);
  int64_t deflated_bytes = fetch_all(*b_z);
  EXPECT_GE(plain_bytes, kFetches * static_cast<int64_t>(body.size()));
  EXPECT_LT(deflated_bytes * 5, plain_bytes) << "plain " << plain_bytes << " B, deflated " << deflated_bytes << " B";
}

}  // namespace
}  // namespace parley::testing
