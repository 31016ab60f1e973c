// See ws_load.h.
#include "ws_load.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace parley::bench {

namespace {
constexpr size_t kReadChunk = 256 * 1024;      // one read() per readable socket, at most
constexpr size_t kMaxMessageBytes = 16 << 20;  // a server message larger than this is a protocol failure
constexpr int kMaxEvents = 1024;

int64_t ClockNs(clockid_t clock) {
  timespec ts{};
  clock_gettime(clock, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

// This thread's CPU time in nanoseconds.
int64_t ThreadCpuNs() { return ClockNs(CLOCK_THREAD_CPUTIME_ID); }
}  // namespace

int64_t NowNs() { return ClockNs(CLOCK_MONOTONIC); }

Loop::Loop(uint16_t port, Handler* handler) : port_(port), handler_(handler) {
  ep_ = epoll_create1(EPOLL_CLOEXEC);
  if (ep_ < 0) throw std::runtime_error("epoll_create1 failed");
  read_buf_.resize(kReadChunk);
}

Loop::~Loop() {
  if (ep_ >= 0) close(ep_);
}

void Loop::WatchExtra(int fd) {
  extra_fd_ = fd;
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.ptr = this;
  epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev);
}

void Loop::Connect(Conn& c) {
  c.rbuf.clear();
  c.wbuf.clear();
  c.frag.clear();
  c.want_out = true;
  ++c.generation;
  c.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (c.fd < 0) {
    c.state = Conn::State::kIdle;
    handler_->OnClosed(c, std::string("socket: ") + std::strerror(errno));
    return;
  }
  int one = 1;
  setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(c.port ? c.port : port_);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  c.state = Conn::State::kConnecting;
  if (connect(c.fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 && errno != EINPROGRESS) {
    Fail(c, std::string("connect: ") + std::strerror(errno));
    return;
  }
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLOUT;
  ev.data.ptr = &c;
  epoll_ctl(ep_, EPOLL_CTL_ADD, c.fd, &ev);
}

void Loop::Abort(Conn& c) {
  if (c.fd >= 0) {
    linger l{1, 0};
    setsockopt(c.fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    close(c.fd);  // also removes it from the epoll set
    if (c.state == Conn::State::kOpen) --open_;
  }
  c.fd = -1;
  c.state = Conn::State::kIdle;
  c.dirty = false;
  c.wbuf.clear();
  c.rbuf.clear();
}

void Loop::Fail(Conn& c, const std::string& why) {
  Abort(c);
  handler_->OnClosed(c, why);
}

void Loop::Send(Conn& c, std::string_view payload) {
  if (c.fd < 0) return;
  unsigned char h[14];
  size_t n = 0;
  h[n++] = 0x81;  // FIN, text
  if (payload.size() < 126) {
    h[n++] = static_cast<unsigned char>(0x80 | payload.size());
  } else if (payload.size() < 65536) {
    h[n++] = 0x80 | 126;
    h[n++] = static_cast<unsigned char>(payload.size() >> 8);
    h[n++] = static_cast<unsigned char>(payload.size());
  } else {
    h[n++] = 0x80 | 127;
    for (int i = 7; i >= 0; --i) h[n++] = static_cast<unsigned char>(uint64_t{payload.size()} >> (8 * i));
  }
  for (int i = 0; i < 4; ++i) h[n++] = 0;  // a constant all-zero mask (ws_load.h): XOR changes nothing
  c.wbuf.append(reinterpret_cast<const char*>(h), n);
  c.wbuf.append(payload);
  if (!c.dirty && c.state == Conn::State::kOpen) {
    c.dirty = true;
    flush_.push_back(&c);
  }
}

void Loop::WriteNow(Conn& c) {
  while (!c.wbuf.empty()) {
    ssize_t w = write(c.fd, c.wbuf.data(), c.wbuf.size());
    if (w < 0) {
      if (errno == EAGAIN || errno == EINTR) break;
      Fail(c, std::string("write: ") + std::strerror(errno));
      return;
    }
    c.wbuf.erase(0, static_cast<size_t>(w));
  }
  bool need_out = !c.wbuf.empty();
  if (need_out != c.want_out) {
    epoll_event ev{};
    ev.events = need_out ? (EPOLLIN | EPOLLOUT) : EPOLLIN;
    ev.data.ptr = &c;
    epoll_ctl(ep_, EPOLL_CTL_MOD, c.fd, &ev);
    c.want_out = need_out;
  }
}

void Loop::Flush() {
  for (size_t i = 0; i < flush_.size(); ++i) {
    Conn* c = flush_[i];
    if (!c->dirty) continue;
    c->dirty = false;
    if (c->fd >= 0 && c->state == Conn::State::kOpen) WriteNow(*c);
  }
  flush_.clear();
}

void Loop::OnWritable(Conn& c) {
  if (c.state == Conn::State::kConnecting) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) {
      Fail(c, std::string("connect: ") + std::strerror(err));
      return;
    }
    c.state = Conn::State::kHandshake;
    c.wbuf = "GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(c.port ? c.port : port_) +
             "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
  }
  WriteNow(c);
}

void Loop::OnReadable(Conn& c) {
  ssize_t n = read(c.fd, read_buf_.data(), read_buf_.size());
  if (n == 0) {
    Fail(c, "the server closed the connection");
    return;
  }
  if (n < 0) {
    if (errno == EAGAIN || errno == EINTR) return;
    Fail(c, std::string("read: ") + std::strerror(errno));
    return;
  }
  c.rbuf.append(read_buf_.data(), static_cast<size_t>(n));
  if (c.state == Conn::State::kHandshake) {
    size_t end = c.rbuf.find("\r\n\r\n");
    if (end == std::string::npos) {
      if (c.rbuf.size() > 16384) Fail(c, "handshake: oversized answer");
      return;
    }
    if (c.rbuf.compare(0, 12, "HTTP/1.1 101") != 0) {
      Fail(c, "handshake refused: " + c.rbuf.substr(0, c.rbuf.find("\r\n")));
      return;
    }
    c.rbuf.erase(0, end + 4);
    c.state = Conn::State::kOpen;
    ++open_;
    handler_->OnOpen(c);
    if (c.state != Conn::State::kOpen) return;
  }
  if (c.state == Conn::State::kOpen) Parse(c);
}

void Loop::Parse(Conn& c) {
  size_t pos = 0;
  const uint64_t gen = c.generation;
  while (c.fd >= 0 && c.generation == gen) {
    const auto* p = reinterpret_cast<const unsigned char*>(c.rbuf.data()) + pos;
    size_t avail = c.rbuf.size() - pos;
    if (avail < 2) break;
    bool fin = p[0] & 0x80;
    int op = p[0] & 0x0f;
    bool masked = p[1] & 0x80;
    uint64_t len = p[1] & 0x7f;
    size_t hl = 2;
    if (len == 126) {
      if (avail < 4) break;
      len = (uint64_t{p[2]} << 8) | p[3];
      hl = 4;
    } else if (len == 127) {
      if (avail < 10) break;
      len = 0;
      for (int i = 0; i < 8; ++i) len = (len << 8) | p[2 + i];
      hl = 10;
    }
    if (masked) hl += 4;  // servers do not mask; tolerated
    if (len > kMaxMessageBytes) {
      Fail(c, "oversized frame from the server");
      return;
    }
    if (avail < hl + len) break;
    std::string_view payload(c.rbuf.data() + pos + hl, static_cast<size_t>(len));
    std::string unmasked;
    if (masked) {
      unmasked.assign(payload);
      for (size_t i = 0; i < unmasked.size(); ++i) unmasked[i] = static_cast<char>(unmasked[i] ^ p[hl - 4 + i % 4]);
      payload = unmasked;
    }
    pos += hl + static_cast<size_t>(len);
    if (op == 8) {  // close
      unsigned code = payload.size() >= 2 ? (static_cast<unsigned char>(payload[0]) << 8) | static_cast<unsigned char>(payload[1]) : 0;
      std::string reason(payload.size() > 2 ? payload.substr(2) : std::string_view{});
      Fail(c, "close " + std::to_string(code) + " " + reason);
      return;
    }
    if (op == 9) {  // ping: answer with a pong carrying the same payload
      unsigned char h[6] = {0x8a, static_cast<unsigned char>(0x80 | (payload.size() & 0x7f)), 0, 0, 0, 0};
      c.wbuf.append(reinterpret_cast<const char*>(h), 6);
      c.wbuf.append(payload);
      if (!c.dirty) {
        c.dirty = true;
        flush_.push_back(&c);
      }
      continue;
    }
    if (op == 10) continue;  // pong
    std::string_view message = payload;
    if (op == 0 || !fin) {  // fragments
      c.frag.append(payload);
      if (!fin) continue;
      message = c.frag;
    }
    scratch_.assign(message);
    scratch_.resize(message.size() + simdjson::SIMDJSON_PADDING);
    simdjson::dom::element doc;
    if (parser_.parse(scratch_.data(), message.size(), false).get(doc)) {
      Fail(c, "unparseable frame from the server: " + std::string(message.substr(0, 200)));
      return;
    }
    handler_->OnMessage(c, doc, std::string_view(scratch_.data(), message.size()));
    if (op == 0 || !fin) c.frag.clear();
  }
  if (c.fd >= 0 && c.generation == gen) c.rbuf.erase(0, pos);
}

int Loop::Poll(int64_t timeout_ns) {
  epoll_event evs[kMaxEvents];
  timespec ts{};
  if (timeout_ns < 0) timeout_ns = 0;
  ts.tv_sec = timeout_ns / 1'000'000'000;
  ts.tv_nsec = timeout_ns % 1'000'000'000;
  extra_ready_ = false;
  int n;
  if (spin_) {
    // Busy-poll: never sleep, so that nothing parleyd sends has to wake
    // this thread's core (docs/benchmarks.md, "A spinning load generator").
    // The CPU time of the polls that find nothing (this thread's clock, not
    // the wall's: a spinning thread can be preempted too).
    timespec zero{};
    const int64_t end = NowNs() + timeout_ns, cpu_start = ThreadCpuNs();
    int64_t cpu_idle_end = cpu_start;
    while ((n = epoll_pwait2(ep_, evs, kMaxEvents, &zero, nullptr)) == 0) {
      cpu_idle_end = ThreadCpuNs();
      if (NowNs() >= end) break;
    }
    spun_ns_ += cpu_idle_end - cpu_start;
  } else {
    n = epoll_pwait2(ep_, evs, kMaxEvents, &ts, nullptr);
  }
  for (int i = 0; i < n; ++i) {
    if (evs[i].data.ptr == this) {
      extra_ready_ = true;
      continue;
    }
    auto* c = static_cast<Conn*>(evs[i].data.ptr);
    if (c->fd < 0) continue;
    if (evs[i].events & (EPOLLERR | EPOLLHUP)) {
      if (c->state == Conn::State::kOpen && (evs[i].events & EPOLLIN)) OnReadable(*c);
      if (c->fd >= 0) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        Fail(*c, err ? std::string("socket: ") + std::strerror(err) : "hang-up");
      }
      continue;
    }
    if (evs[i].events & EPOLLOUT) OnWritable(*c);
    if (c->fd >= 0 && (evs[i].events & EPOLLIN)) OnReadable(*c);
  }
  Flush();
  return n;
}

}  // namespace parley::bench
