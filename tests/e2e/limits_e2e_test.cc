// End-to-end: every rate limit answers `rate_limited` with a retry-after once
// exceeded, and other users' traffic is unaffected. Connections past
// --max-connections are refused at once with 503 (out of descriptors:
// fd_limit_e2e_test.cc).
#include <gtest/gtest.h>

#include <unistd.h>

#include "e2e/helpers.h"

namespace parley::testing {
namespace {

// Calls `request` until it is refused; returns the refusal (or a failed Reply).
Reply UntilLimited(const std::function<Reply(int)>& request, int max_tries = 50) {
  for (int i = 0; i < max_tries; ++i) {
    Reply r = request(i);
    if (!r.ok) return r;
  }
  return Reply{};
}

void ExpectLimited(const Reply& r) {
  EXPECT_EQ(r.code, "rate_limited") << r.message;
  EXPECT_TRUE(r.frame.value("retryable", false));
  EXPECT_GT(r.frame.value("retry_after_ms", 0), 0);
}

TEST(RateLimitE2E, EachLimitRefusesWithRetryAfterAndSparesOthers) {
  ServerProcess server({"--rate-limit", "send_per_device=0.5/5", "--rate-limit", "search_per_user=0.5/3",
                        "--rate-limit", "social_per_user=0.5/3", "--rate-limit", "failed_login_per_username=0.01/2",
                        "--rate-limit", "register_per_address=0.01/12"});
  for (auto u : {"alice", "bob", "carol", "dave"}) Register(server, u);
  Device a = Login(server, "alice");
  Device b = Login(server, "bob");

  // Sends per device.
  auto r = UntilLimited([&](int i) {
    return a.conn->Call("send", {{"to", "bob"}, {"client_id", "s" + std::to_string(i)}, {"body", "x"}});
  });
  ExpectLimited(r);
  // Bob is not slowed down by Alice's limit.
  for (int i = 0; i < 3; ++i)
    EXPECT_TRUE(b.conn->Call("send", {{"to", "alice"}, {"client_id", "b" + std::to_string(i)}, {"body", "y"}}).ok);

  ExpectLimited(UntilLimited([&](int) { return a.conn->Call("search_users", {{"query", "b"}}); }));
  EXPECT_TRUE(b.conn->Call("search_users", {{"query", "a"}}).ok);

  ExpectLimited(UntilLimited([&](int i) {
    return a.conn->Call("set_profile", {{"display_name", "Alice " + std::to_string(i)}});
  }));
  EXPECT_TRUE(b.conn->Call("add_contact", {{"username", "carol"}}).ok);

  // Failed logins per username: after the burst, even the right password waits.
  auto c = server.Connect();
  Reply last;
  for (int i = 0; i < 10 && last.code != "rate_limited"; ++i) {
    last = c->Call("login", {{"username", "dave"}, {"password", "not it!!"}});
    if (last.code != "rate_limited") {
      EXPECT_EQ(last.code, "bad_credentials");
    }
  }
  ExpectLimited(last);
  ExpectLimited(c->Call("login", {{"username", "dave"}, {"password", "correct horse"}}));
  EXPECT_TRUE(server.Connect()->Call("login", {{"username", "carol"}, {"password", "correct horse"}}).ok);

  // Registrations per source address (4 used above, burst 12).
  ExpectLimited(UntilLimited([&](int i) {
    return c->Call("register", {{"username", "new" + std::to_string(i)}, {"password", "password123"}});
  }));

  std::string metrics = HttpGet(server.port(), "/metrics");
  EXPECT_GE(MetricSum(metrics, "parley_rate_limited_total"), 5);
  EXPECT_GE(MetricValue(metrics, "parley_rate_limited_total{type=\"register\"}"), 1);
}

// Logins in flight count against the failed-login limit: many wrong
// passwords sent at once for one username get no more answers than its
// tokens allow. Only a failure takes a token, so they once all passed the
// check together and all queued a password hash.
TEST(RateLimitE2E, ConcurrentFailedLoginsPassNoMoreThanTheLimitAllows) {
  ServerProcess server({"--rate-limit", "failed_login_per_username=0.01/2"});
  Register(server, "alice");
  constexpr int kAttempts = 8;
  std::vector<std::unique_ptr<Connection>> conns;
  for (int i = 0; i < kAttempts; ++i) conns.push_back(server.Connect());
  for (auto& c : conns)
    c->SendRaw(R"({"v":1,"id":"l","type":"login","username":"alice","password":"wrong password"})");
  int wrong = 0, limited = 0;
  for (auto& c : conns) {
    auto e = c->NextUnmatchedError(10000);
    ASSERT_TRUE(e.has_value()) << "no answer to a login";
    if ((*e)["code"] == "bad_credentials") ++wrong;
    if ((*e)["code"] == "rate_limited") ++limited;
  }
  EXPECT_EQ(wrong, 2) << "more wrong passwords were judged than the burst allows";
  EXPECT_EQ(limited, kAttempts - 2);
  // The right password is refused too now (the tokens are spent), and its
  // wait is the limit's.
  auto c = server.Connect();
  auto r = c->Call("login", {{"username", "alice"}, {"password", "correct horse"}});
  ExpectLimited(r);
}

// Past --max-connections a new connection is answered 503 with Retry-After
// and closed at once (counted); the connections already open are
// unaffected, and once one closes a new one is served again.
TEST(ConnectionLimitE2E, ConnectionsPastTheLimitAreRefusedWith503UntilOneCloses) {
  ServerProcess server({"--max-connections", "3"});
  Register(server, "alice");
  ASSERT_TRUE(Eventually([&] { return HttpGet(server.port(), "/healthz") == "ok\n"; }, 10000));
  Device a = Login(server, "alice", "phone");
  Device b = Login(server, "alice", "laptop");
  // The third. It is itself refused (answered and closed: readable) if it
  // came while another still counted (Register's, closing; a probe that got
  // in): then it is opened again.
  int third = -1;
  // The three are counted once the server has accepted them: a fourth is refused.
  std::string refusal;
  ASSERT_TRUE(Eventually(
      [&] {
        if (third < 0 || ReadableNow(third)) {
          if (third >= 0) ::close(third);
          third = TcpConnect(server.port());
          return false;
        }
        int fd = TcpConnect(server.port());
        if (fd < 0) return false;
        const char req[] = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
        (void)!::write(fd, req, sizeof req - 1);
        refusal = ReadUntilClosed(fd, 5000);
        ::close(fd);
        return refusal.rfind("HTTP/1.1 503", 0) == 0;
      },
      10000))
      << refusal;
  EXPECT_NE(refusal.find("Retry-After: 5\r\n"), std::string::npos) << refusal;
  EXPECT_NE(refusal.find("connection limit"), std::string::npos) << refusal;
  // The open ones still work.
  EXPECT_TRUE(a.conn->Call("ping", json::object()).ok);
  EXPECT_TRUE(b.conn->Call("ping", json::object()).ok);
  ::close(third);
  // Until the server has counted the third out, /metrics is refused too
  // (a 503 with a body): wait for a 200.
  std::string metrics;
  ASSERT_TRUE(Eventually(
      [&] {
        int status = 0;
        metrics = HttpGet(server.port(), "/metrics", &status);
        return status == 200;
      },
      10000))
      << metrics;
  EXPECT_GE(MetricValue(metrics, "parley_connections_refused_total"), 1);
  EXPECT_EQ(MetricValue(metrics, "parley_accept_errors_total"), 0);
}
}  // namespace
}  // namespace parley::testing
