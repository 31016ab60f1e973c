// parley::bench::Loop — a single-threaded epoll WebSocket client engine for
// the load generator (parley-bench): thousands of protocol v1 connections
// driven from one thread, without a thread or a blocking call per client.
//
// Why not parley::Client or parley::Connection: a Client has its own worker
// thread and cache; a Connection shares one I/O thread but decodes every
// frame into nlohmann::json and hands it over under a lock. A load generator
// that must offer 50,000 messages/s (each a send, its response, two message
// events, two receipts and their events) from one core needs fewer copies
// and no thread hand-offs, so this engine speaks RFC 6455 itself (client
// frames masked with a constant all-zero key, so the XOR costs nothing: the
// RFC's unpredictable keys defend intermediaries' caches, which loopback
// has none of, and a server cannot tell) and parses
// frames with simdjson's DOM parser into a reused buffer.
//
// Threading and ownership: not thread-safe; one Loop and its Conns belong to
// the thread that calls Poll. The Handler's callbacks run inside Poll. Conns
// are owned by the caller (stable addresses: keep them in a std::deque or
// vector of unique_ptr) and registered with Loop::Connect.
#pragma once

#include <simdjson.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace parley::bench {

// Monotonic clock in nanoseconds (CLOCK_MONOTONIC: the same in every
// process of the machine).
int64_t NowNs();

class Loop;

struct Conn {
  enum class State { kIdle, kConnecting, kHandshake, kOpen };
  State state = State::kIdle;
  int fd = -1;
  size_t index = 0;          // the caller's index (device number)
  uint16_t port = 0;         // the server's port on 127.0.0.1; 0: the Loop's
  std::string rbuf;          // bytes read, not yet consumed
  std::string wbuf;          // bytes to write
  std::string frag;          // a fragmented message being reassembled
  bool dirty = false;        // wbuf has bytes and the conn is in the flush list
  bool want_out = false;     // EPOLLOUT registered
  int64_t next_id = 1;       // next request id
  uint64_t generation = 0;   // bumped by every Connect
};

class Handler {
 public:
  virtual ~Handler() = default;
  // The WebSocket handshake completed.
  virtual void OnOpen(Conn& c) = 0;
  // One text or binary message, parsed. `raw` is the payload.
  virtual void OnMessage(Conn& c, simdjson::dom::element frame, std::string_view raw) = 0;
  // The connection failed or closed (connect refused, handshake refused,
  // reset, close frame). `why` is for humans. The Conn is back in kIdle.
  virtual void OnClosed(Conn& c, const std::string& why) = 0;
};

class Loop {
 public:
  Loop(uint16_t port, Handler* handler);
  ~Loop();
  Loop(const Loop&) = delete;
  Loop& operator=(const Loop&) = delete;

  // Starts a non-blocking connect to 127.0.0.1:(c.port, or the Loop's port
  // if 0); OnOpen or OnClosed follows.
  void Connect(Conn& c);
  // Queues a text frame (flushed at the end of the current Poll, or by
  // Flush).
  void Send(Conn& c, std::string_view payload);
  // Writes every queued frame now.
  void Flush();
  // Drops the TCP connection without a close handshake (RST, no TIME_WAIT
  // left behind); OnClosed is not called.
  void Abort(Conn& c);
  // Waits up to timeout_ns for I/O, handles it, flushes. Returns the number
  // of ready descriptors.
  int Poll(int64_t timeout_ns);
  // Spinning: Poll busy-polls (epoll with a zero timeout) instead of
  // sleeping, as the reference prototype's generator did. On loopback the
  // sender of a segment pays for waking the receiver's idle core, so a
  // sleeping generator makes every frame parleyd sends dearer than it is
  // towards clients on other machines. spun_ns() is this thread's CPU time
  // in polls that found nothing (its idle time while spinning).
  void set_spin(bool on) { spin_ = on; }
  bool spinning() const { return spin_; }
  int64_t spun_ns() const { return spun_ns_; }
  // Also watch this descriptor for input (e.g. a worker's stdin); Poll
  // returns after it becomes readable and `extra_ready()` is set.
  void WatchExtra(int fd);
  bool extra_ready() const { return extra_ready_; }
  size_t open_conns() const { return open_; }

 private:
  void OnReadable(Conn& c);
  void OnWritable(Conn& c);
  void Fail(Conn& c, const std::string& why);
  void Parse(Conn& c);
  void WriteNow(Conn& c);

  uint16_t port_;
  Handler* handler_;
  int ep_ = -1;
  int extra_fd_ = -1;
  bool extra_ready_ = false;
  bool spin_ = false;
  int64_t spun_ns_ = 0;
  size_t open_ = 0;
  std::string scratch_;  // padded copy of a frame for simdjson
  simdjson::dom::parser parser_;
  std::string read_buf_;
  std::vector<Conn*> flush_;
};

}  // namespace parley::bench
