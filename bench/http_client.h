// A tiny HTTP/1.1 client over a blocking socket with timeouts, for the
// benchmark tools' admin API calls (the idea of tests/e2e/helpers.cc, plus
// name resolution, Content-Length and deadlines). Header-only; each call is
// independent and thread-safe.
#pragma once

#include <netdb.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>

namespace parley::bench {

struct HttpResult {
  int status = 0;
  std::string body;
  std::string error;  // non-empty on a transport failure or timeout
};

inline HttpResult HttpPost(const std::string& host, uint16_t port, const std::string& path, const std::string& body,
                    const std::string& authorization, int timeout_ms) {
  HttpResult out;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (int rc = getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res); rc != 0 || !res) {
    out.error = std::string("resolve: ") + gai_strerror(rc);
    return out;
  }
  std::unique_ptr<addrinfo, decltype(&freeaddrinfo)> res_guard(res, freeaddrinfo);
  int fd = socket(res->ai_family, SOCK_STREAM, 0);
  if (fd < 0) {
    out.error = "socket failed";
    return out;
  }
  struct FdGuard {
    int fd;
    ~FdGuard() { close(fd); }
  } guard{fd};
  // Per-call timeouts on every blocking step; connect() honours SO_SNDTIMEO.
  timeval tv{};
  tv.tv_sec = timeout_ms / 1000;
  tv.tv_usec = static_cast<suseconds_t>((timeout_ms % 1000) * 1000);
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (connect(fd, res->ai_addr, res->ai_addrlen) != 0) {
    out.error = "connect failed";
    return out;
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  std::string req = "POST " + path + " HTTP/1.1\r\nHost: " + host + "\r\nConnection: close\r\n" +
                    "Content-Type: application/json\r\nAuthorization: " + authorization +
                    "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n";
  req += body;
  for (size_t off = 0; off < req.size();) {
    ssize_t w = write(fd, req.data() + off, req.size() - off);
    if (w <= 0 || std::chrono::steady_clock::now() > deadline) {
      out.error = "write failed or timed out";
      return out;
    }
    off += static_cast<size_t>(w);
  }
  std::string resp;
  std::optional<size_t> header_end, content_length;
  char buf[65536];
  while (true) {
    if (header_end && content_length && resp.size() >= *header_end + *content_length) break;
    if (std::chrono::steady_clock::now() > deadline) {
      out.error = "timed out waiting for the response";
      return out;
    }
    ssize_t n = read(fd, buf, sizeof buf);
    if (n == 0) break;
    if (n < 0) {
      out.error = "read failed or timed out";
      return out;
    }
    resp.append(buf, static_cast<size_t>(n));
    if (!header_end) {
      size_t p = resp.find("\r\n\r\n");
      if (p != std::string::npos) {
        header_end = p + 4;
        std::string headers = resp.substr(0, p);
        for (auto& ch : headers) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
        size_t cl = headers.find("\r\ncontent-length:");
        if (cl != std::string::npos) content_length = std::stoull(headers.substr(cl + 17));
      }
    }
  }
  if (!header_end || resp.size() < 12) {
    out.error = "malformed HTTP response";
    return out;
  }
  out.status = std::atoi(resp.c_str() + 9);
  out.body = resp.substr(*header_end, content_length ? *content_length : std::string::npos);
  return out;
}

}  // namespace parley::bench
