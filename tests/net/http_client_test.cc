// The tools' HTTP client against a scripted server on a real socket: what it
// sends, how it reads chunked and sized bodies, and how it fails.
#include "net/http_client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>

#include <gtest/gtest.h>

namespace parley::netutil {
namespace {

// A listening socket on 127.0.0.1 that serves one connection with `reply`
// (or holds it silent when `reply` is empty) and keeps what it received;
// with `at_once`, answers as soon as anything arrives.
class OneShotServer {
 public:
  explicit OneShotServer(std::string reply, bool at_once = false) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    EXPECT_EQ(listen(fd_, 4), 0);
    socklen_t len = sizeof addr;
    getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this, reply = std::move(reply), at_once] {
      int c = accept(fd_, nullptr, nullptr);
      if (c < 0) return;
      char buf[4096];
      while (received_.find("\r\n\r\n") == std::string::npos && !(at_once && !received_.empty())) {
        ssize_t n = read(c, buf, sizeof buf);
        if (n <= 0) break;
        received_.append(buf, static_cast<size_t>(n));
      }
      if (reply.empty()) {
        // Silent: wait for the client to give up.
        while (read(c, buf, sizeof buf) > 0) {
        }
      } else {
        (void)!write(c, reply.data(), reply.size());
      }
      close(c);
    });
  }
  ~OneShotServer() {
    shutdown(fd_, SHUT_RDWR);
    thread_.join();
    close(fd_);
  }
  uint16_t port() const { return port_; }
  // Valid once the exchange is over.
  const std::string& received() const { return received_; }

 private:
  int fd_ = -1;
  uint16_t port_ = 0;
  std::string received_;
  std::thread thread_;
};

TEST(ParseHttpUrl, AcceptsHostPortAndIgnoresPath) {
  std::string error;
  std::string target;
  auto e = ParseHttpUrl("http://example.org:9090/admin?x=1", &error, &target);
  ASSERT_TRUE(e) << error;
  EXPECT_EQ(e->host, "example.org");
  EXPECT_EQ(e->port, "9090");
  EXPECT_EQ(target, "/admin?x=1");
  ASSERT_TRUE(ParseHttpUrl("http://example.org", &error, &target));
  EXPECT_EQ(target, "/");
  e = ParseHttpUrl("http://localhost", &error);
  ASSERT_TRUE(e) << error;
  EXPECT_EQ(e->port, "80");
  e = ParseHttpUrl("http://[::1]:8081", &error);
  ASSERT_TRUE(e) << error;
  EXPECT_EQ(e->host, "::1");
  EXPECT_EQ(e->port, "8081");
}

TEST(ParseHttpUrl, RejectsOtherForms) {
  for (const char* bad : {"https://h:1", "h:80", "http://", "http://h:", "http://h:0", "http://h:70000", "http://h:x1",
                          "http://[::1", "http://[::1]x"}) {
    std::string error;
    EXPECT_FALSE(ParseHttpUrl(bad, &error)) << bad;
    EXPECT_FALSE(error.empty()) << bad;
  }
}

TEST(ParseHttpUrl, HttpsOnlyWhereTheCallerAllowsIt) {
  std::string error, target;
  EXPECT_FALSE(ParseHttpUrl("https://relay.example/push", &error));
  EXPECT_NE(error.find("http://"), std::string::npos) << error;
  auto e = ParseHttpUrl("https://relay.example/push", &error, &target, /*allow_https=*/true);
  ASSERT_TRUE(e) << error;
  EXPECT_TRUE(e->tls);
  EXPECT_EQ(e->host, "relay.example");
  EXPECT_EQ(e->port, "443");
  EXPECT_EQ(target, "/push");
  e = ParseHttpUrl("https://127.0.0.1:8443", &error, nullptr, true);
  ASSERT_TRUE(e) << error;
  EXPECT_EQ(e->port, "8443");
  e = ParseHttpUrl("http://relay.example", &error, nullptr, true);
  ASSERT_TRUE(e) << error;
  EXPECT_FALSE(e->tls);
  EXPECT_FALSE(ParseHttpUrl("https://h:0", &error, nullptr, true));
  EXPECT_FALSE(ParseHttpUrl("ftp://h", &error, nullptr, true));
}

TEST(HttpsTrust, AMissingCaFileIsAClearError) {
  std::string error;
  EXPECT_EQ(HttpsTrust::Create("/nonexistent/ca.pem", &error), nullptr);
  EXPECT_NE(error.find("/nonexistent/ca.pem"), std::string::npos) << error;
  error.clear();
  EXPECT_NE(HttpsTrust::Create("", &error), nullptr) << error;  // the system's trust store
}

TEST(HttpExchange, HttpsToAPlainServerFailsInTheHandshake) {
  // A plain HTTP server answering a TLS ClientHello: the handshake fails,
  // classified as a TLS failure (not a read or write one).
  OneShotServer server("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", /*at_once=*/true);
  HttpEndpoint endpoint = HttpEndpoint::Loopback(server.port());
  endpoint.tls = true;
  HttpRequest req;
  req.timeout = std::chrono::milliseconds(3000);
  HttpResponse r = HttpExchange(endpoint, req);
  EXPECT_FALSE(r.ok());
  EXPECT_FALSE(r.timed_out) << r.error;
  EXPECT_EQ(r.failure, HttpFailure::kTls) << r.error;
  EXPECT_NE(r.error.find("TLS handshake failed"), std::string::npos) << r.error;
}

TEST(HttpExchange, SendsTheRequestAndReadsASizedBody) {
  OneShotServer server("HTTP/1.1 201 Created\r\nContent-Length: 5\r\nX-Thing: yes\r\nConnection: close\r\n\r\nhello");
  HttpRequest req;
  req.method = "POST";
  req.target = "/admin/v1/users/bulk?x=1";
  req.body = R"({"a":1})";
  req.authorization = "Bearer t0k";
  req.headers = {{"X-Extra", "1"}};
  HttpResponse r = HttpExchange(HttpEndpoint::Loopback(server.port()), req);
  ASSERT_TRUE(r.ok()) << r.error;
  EXPECT_EQ(r.status, 201);
  EXPECT_EQ(r.body, "hello");
  EXPECT_EQ(r.Header("x-thing"), "yes");
  EXPECT_EQ(r.Header("absent"), "");
  const std::string& sent = server.received();
  EXPECT_EQ(sent.rfind("POST /admin/v1/users/bulk?x=1 HTTP/1.1\r\n", 0), 0u) << sent;
  EXPECT_NE(sent.find("Authorization: Bearer t0k\r\n"), std::string::npos) << sent;
  EXPECT_NE(sent.find("Content-Type: application/json\r\n"), std::string::npos) << sent;
  EXPECT_NE(sent.find("Content-Length: 7\r\n"), std::string::npos) << sent;
  EXPECT_NE(sent.find("X-Extra: 1\r\n"), std::string::npos) << sent;
  EXPECT_NE(sent.find("Host: 127.0.0.1:" + std::to_string(server.port()) + "\r\n"), std::string::npos) << sent;
}

TEST(HttpExchange, DechunksAChunkedBody) {
  OneShotServer server(
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n6\r\npedia \r\nE\r\nin \r\n\r\nchunks.\r\n0\r\n\r\n");
  HttpResponse r = HttpGet(HttpEndpoint::Loopback(server.port()), "/");
  ASSERT_TRUE(r.ok()) << r.error;
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "Wikipedia in \r\n\r\nchunks.");
}

TEST(HttpExchange, ASilentServerTimesOut) {
  OneShotServer server("");
  HttpRequest req;
  req.timeout = std::chrono::milliseconds(300);
  auto start = std::chrono::steady_clock::now();
  HttpResponse r = HttpExchange(HttpEndpoint::Loopback(server.port()), req);
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.status, 0);
  EXPECT_NE(r.error.find("timed out"), std::string::npos) << r.error;
  EXPECT_TRUE(r.timed_out);
  EXPECT_EQ(r.failure, HttpFailure::kRead);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
}

TEST(HttpExchange, NotHttpIsAnError) {
  OneShotServer server("SSH-2.0-OpenSSH\r\n\r\n");
  HttpResponse r = HttpGet(HttpEndpoint::Loopback(server.port()), "/");
  EXPECT_FALSE(r.ok());
  EXPECT_NE(r.error.find("no valid HTTP answer"), std::string::npos) << r.error;
  EXPECT_EQ(r.failure, HttpFailure::kRead);
  EXPECT_FALSE(r.timed_out);
}

TEST(HttpExchange, NobodyListeningIsAnError) {
  uint16_t port;
  {
    OneShotServer gone("x");  // takes a free port, then releases it
    port = gone.port();
    HttpGet(HttpEndpoint::Loopback(port), "/");
  }
  HttpResponse r = HttpGet(HttpEndpoint::Loopback(port), "/");
  EXPECT_FALSE(r.ok());
  EXPECT_NE(r.error.find("cannot connect to 127.0.0.1:" + std::to_string(port)), std::string::npos) << r.error;
  EXPECT_EQ(r.failure, HttpFailure::kConnect);
}

}  // namespace
}  // namespace parley::netutil
