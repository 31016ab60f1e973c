// A local push relay for the end-to-end tests (issue 11): a tiny HTTP/1.1
// (or, given a certificate, HTTPS) server on 127.0.0.1 that parleyd's
// webhook provider posts to, scripted (answer 500 twice, then 200, ...) and
// recording every request; plus the helpers the push tests share.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sodium.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "e2e/helpers.h"

namespace parley::testing {

// One request per connection, answered with the next scripted status (then
// `otherwise`), every request recorded. With a certificate and key (PEM
// files) it speaks TLS; handshakes that fail are counted.
class PushReceiver {
  using Clock = std::chrono::steady_clock;

 public:
  struct Post {
    std::string target;
    std::map<std::string, std::string> headers;  // lower-case names
    std::string body;
    int answered = 0;
    Clock::time_point at;
    json payload;
  };

  explicit PushReceiver(const std::string& cert_file = "", const std::string& key_file = "") {
    if (!cert_file.empty()) {
      tls_ = SSL_CTX_new(TLS_server_method());
      EXPECT_EQ(SSL_CTX_use_certificate_chain_file(tls_, cert_file.c_str()), 1) << cert_file;
      EXPECT_EQ(SSL_CTX_use_PrivateKey_file(tls_, key_file.c_str(), SSL_FILETYPE_PEM), 1) << key_file;
    }
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    EXPECT_EQ(bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    EXPECT_EQ(listen(fd_, 64), 0);
    socklen_t len = sizeof a;
    getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { Loop(); });
  }
  ~PushReceiver() {
    stop_ = true;
    thread_.join();
    close(fd_);
    if (tls_ != nullptr) SSL_CTX_free(tls_);
  }
  PushReceiver(const PushReceiver&) = delete;
  PushReceiver& operator=(const PushReceiver&) = delete;

  std::string url() const {
    return std::string(tls_ != nullptr ? "https" : "http") + "://127.0.0.1:" + std::to_string(port_) + "/push";
  }
  // TLS handshakes that failed (e.g. parleyd did not trust the certificate).
  int failed_handshakes() const { return failed_handshakes_; }

  void Script(std::deque<int> statuses, int otherwise) {
    std::lock_guard lock(mu_);
    script_ = std::move(statuses);
    otherwise_ = otherwise;
  }
  std::vector<Post> Posts() {
    std::lock_guard lock(mu_);
    return posts_;
  }
  // Waits until at least n requests arrived; returns whether they did.
  bool WaitPosts(size_t n, int timeout_ms) {
    auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
    while (Clock::now() < deadline) {
      if (Posts().size() >= n) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return Posts().size() >= n;
  }
  // Requests answered with a 2xx whose payload matches `pred`.
  size_t Delivered(const std::function<bool(const Post&)>& pred = nullptr) {
    size_t n = 0;
    for (const auto& p : Posts())
      if (p.answered >= 200 && p.answered < 300 && (!pred || pred(p))) ++n;
    return n;
  }

 private:
  void Loop() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 20) <= 0) continue;
      int c = accept(fd_, nullptr, nullptr);
      if (c < 0) continue;
      SSL* ssl = nullptr;
      if (tls_ != nullptr) {
        timeval tv{5, 0};  // the handshake blocks; bound it
        setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        ssl = SSL_new(tls_);
        SSL_set_fd(ssl, c);
        if (SSL_accept(ssl) != 1) {
          ++failed_handshakes_;
          SSL_free(ssl);
          close(c);
          continue;
        }
      }
      Handle(c, ssl);
      if (ssl != nullptr) {
        SSL_shutdown(ssl);
        SSL_free(ssl);
      }
      close(c);
    }
  }
  void Handle(int c, SSL* ssl) {
    std::string in;
    char buf[4096];
    size_t header_end = std::string::npos;
    size_t content_length = 0;
    auto deadline = Clock::now() + std::chrono::seconds(5);
    while (Clock::now() < deadline) {
      pollfd p{c, POLLIN, 0};
      if ((ssl == nullptr || SSL_pending(ssl) == 0) && poll(&p, 1, 50) <= 0) continue;
      ssize_t n = ssl != nullptr ? SSL_read(ssl, buf, sizeof buf) : read(c, buf, sizeof buf);
      if (n <= 0) return;
      in.append(buf, static_cast<size_t>(n));
      if (header_end == std::string::npos && (header_end = in.find("\r\n\r\n")) != std::string::npos) {
        std::string lower = in.substr(0, header_end);
        for (char& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
        size_t cl = lower.find("content-length:");
        if (cl != std::string::npos) content_length = std::stoul(lower.substr(cl + 15));
      }
      if (header_end != std::string::npos && in.size() >= header_end + 4 + content_length) break;
    }
    if (header_end == std::string::npos) return;
    Post post;
    post.at = Clock::now();
    post.body = in.substr(header_end + 4, content_length);
    std::string head = in.substr(0, header_end);
    size_t line_end = head.find("\r\n");
    std::string request_line = head.substr(0, line_end);
    post.target = request_line.substr(request_line.find(' ') + 1);
    post.target = post.target.substr(0, post.target.find(' '));
    size_t pos = line_end == std::string::npos ? head.size() : line_end + 2;
    while (pos < head.size()) {
      size_t e = head.find("\r\n", pos);
      if (e == std::string::npos) e = head.size();
      std::string line = head.substr(pos, e - pos);
      size_t colon = line.find(':');
      if (colon != std::string::npos) {
        std::string name = line.substr(0, colon);
        for (char& ch : name) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
        std::string value = line.substr(colon + 1);
        while (!value.empty() && value.front() == ' ') value.erase(0, 1);
        post.headers[name] = value;
      }
      pos = e + 2;
    }
    post.payload = json::parse(post.body, nullptr, false);
    int status;
    {
      std::lock_guard lock(mu_);
      if (!script_.empty()) {
        status = script_.front();
        script_.pop_front();
      } else {
        status = otherwise_;
      }
      post.answered = status;
      posts_.push_back(post);
    }
    std::string resp = "HTTP/1.1 " + std::to_string(status) + " X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    if (ssl != nullptr) SSL_write(ssl, resp.data(), static_cast<int>(resp.size()));
    else (void)!write(c, resp.data(), resp.size());
  }

  SSL_CTX* tls_ = nullptr;
  std::atomic<int> failed_handshakes_{0};
  int fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::mutex mu_;
  std::deque<int> script_;
  int otherwise_ = 200;
  std::vector<Post> posts_;
};

inline constexpr const char* kPushSecret = "test-push-secret";

inline std::string Hmac(const std::string& key, const std::string& body) {
  crypto_auth_hmacsha256_state st;
  unsigned char mac[crypto_auth_hmacsha256_BYTES];
  crypto_auth_hmacsha256_init(&st, reinterpret_cast<const unsigned char*>(key.data()), key.size());
  crypto_auth_hmacsha256_update(&st, reinterpret_cast<const unsigned char*>(body.data()), body.size());
  crypto_auth_hmacsha256_final(&st, mac);
  char hex[2 * sizeof mac + 1];
  sodium_bin2hex(hex, sizeof hex, mac, sizeof mac);
  return std::string("sha256=") + hex;
}

inline std::vector<std::string> PushArgs(const PushReceiver& r, int coalesce_ms = 1000, int lease_ms = 3000) {
  return {"--push-webhook-url", r.url(), "--push-webhook-secret", kPushSecret, "--push-coalesce-ms",
          std::to_string(coalesce_ms), "--push-poll-ms", "50", "--push-backoff-initial-ms", "300",
          "--push-backoff-max-ms", "2000", "--push-timeout-ms", "1000", "--push-lease-ms", std::to_string(lease_ms)};
}

inline void RegisterPush(Device& d, const std::string& token, const std::string& provider = "apns") {
  auto r = d.conn->Call("register_push", {{"provider", provider}, {"token", token}});
  ASSERT_TRUE(r.ok) << r.code << ": " << r.message;
  EXPECT_EQ(r.result["device_id"], d.device_id);
}

inline void Background(Device& d) {
  auto r = d.conn->Call("set_app_state", {{"state", "background"}});
  ASSERT_TRUE(r.ok) << r.code << ": " << r.message;
}

// The set-up of most push tests: alice, and bob on a phone registered for
// pushes (token "tok") and in the background.
struct AliceAndBobsPhone {
  Device alice;
  Device bob;
};
inline AliceAndBobsPhone LoginAliceAndBobsBackgroundPhone(ServerProcess& server) {
  Register(server, "alice");
  Register(server, "bob");
  AliceAndBobsPhone users{Login(server, "alice"), Login(server, "bob", "phone")};
  RegisterPush(users.bob, "tok");
  Background(users.bob);
  return users;
}

inline int64_t SendTo(Device& from, const std::string& to, const std::string& body, const std::string& client_id) {
  auto r = from.conn->Call("send", {{"to", to}, {"client_id", client_id}, {"body", body}});
  EXPECT_TRUE(r.ok) << r.code << ": " << r.message;
  return r.ok ? r.result["seq"].get<int64_t>() : 0;
}

inline json DevicePush(Device& d, int64_t device_id) {
  auto r = d.conn->Call("list_devices");
  EXPECT_TRUE(r.ok);
  for (auto& dev : r.result["devices"])
    if (dev["device_id"] == device_id) return dev["push"];
  return nullptr;
}

}  // namespace parley::testing
