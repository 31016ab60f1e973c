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
// (or holds it silent when `reply` is empty) and keeps what it received.
class OneShotServer {
 public:
  explicit OneShotServer(std::string reply) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    EXPECT_EQ(listen(fd_, 4), 0);
    socklen_t len = sizeof addr;
    getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this, reply = std::move(reply)] {
      int c = accept(fd_, nullptr, nullptr);
      if (c < 0) return;
      char buf[4096];
      while (received_.find("\r\n\r\n") == std::string::npos) {
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
