// Batched WebSocket writes: what lets a connection's queued outbound frames
// leave in one socket write per loop turn instead of one Beast async_write
// (one sendmsg, one TLS record) per frame. Internal to the gateway.
//
// - AppendTextFrame encodes a server-to-client text frame (RFC 6455 §5.2:
//   FIN set, opcode 1, no RSV bits, unmasked, never fragmented) exactly as
//   Beast writes one with auto_fragment off and no permessage-deflate, so the
//   gateway can encode every queued frame into one buffer.
//
// - SerialWriteStream is a stream layer between Beast's websocket::stream and
//   the transport (TCP, or TLS over TCP). Beast still writes its own frames
//   through it (the handshake response, pongs, close frames), while the
//   gateway writes its encoded batches to it directly (ws.next_layer()),
//   outside Beast's own write lock. Two rules keep the frames whole:
//     1. every async_write_some writes ALL of its buffers before it completes
//        (a full write, so a frame is never split around another write);
//     2. writes run one at a time, in the order they were started; a write
//        started while another is in progress waits for it (FIFO).
//   A unit is one async_write_some call. The gateway therefore hands each
//   batch to async_write_some itself, never through net::async_write, which
//   cuts a buffer over 64 KiB into several calls another write could go
//   between. Beast's own writes go through net::async_write but are each
//   far smaller (control frames, the handshake response, deflate fragments
//   of write_buffer_bytes), so each is one call.
//   The gateway additionally never starts a batch once Beast is closing
//   (websocket::stream::is_open() is false from the moment Beast decides to
//   send a close frame), so no data frame follows a close frame and no batch
//   runs concurrently with Beast's teardown (TLS close_notify).
//   Waiting writes park on a lazily created timer used as a gate, so that
//   Asio owns them: when the io_context is destroyed with a write still
//   parked, Asio destroys it with the other pending operations (no reference
//   cycle through the session survives shutdown).
//
// Thread-safety: a SerialWriteStream is used only on its executor (the
// session's I/O thread), like the stream below it.
#pragma once

#include <type_traits>

#include <boost/asio/async_result.hpp>
#include <boost/asio/compose.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/async_base.hpp>
#include <boost/beast/core/detail/config.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/beast/core/role.hpp>
#include <boost/beast/core/stream_traits.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/websocket/teardown.hpp>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

namespace parley::gateway {

// Bytes of the frame header AppendTextFrame writes for a payload of `n` bytes.
inline size_t TextFrameHeaderBytes(size_t n) { return n < 126 ? 2 : n <= 0xFFFF ? 4 : 10; }

// Appends one unmasked, unfragmented text frame carrying `payload` to `out`.
inline void AppendTextFrame(std::string& out, std::string_view payload) {
  const uint64_t n = payload.size();
  char header[10];
  size_t len = 0;
  header[len++] = static_cast<char>(0x81);  // FIN + opcode 1 (text)
  if (n < 126) {
    header[len++] = static_cast<char>(n);
  } else if (n <= 0xFFFF) {
    header[len++] = static_cast<char>(126);
    header[len++] = static_cast<char>((n >> 8) & 0xFF);
    header[len++] = static_cast<char>(n & 0xFF);
  } else {
    header[len++] = static_cast<char>(127);
    for (int shift = 56; shift >= 0; shift -= 8) header[len++] = static_cast<char>((n >> shift) & 0xFF);
  }
  out.append(header, len);
  out.append(payload);
}

template <typename Next>
class SerialWriteStream {
 public:
  using next_layer_type = Next;
  using executor_type = boost::beast::executor_type<Next>;

  template <typename... Args>
  explicit SerialWriteStream(Args&&... args) : next_(std::forward<Args>(args)...) {}

  executor_type get_executor() noexcept { return next_.get_executor(); }
  Next& next_layer() noexcept { return next_; }
  const Next& next_layer() const noexcept { return next_; }

  // Whether a write is in progress or waiting (for tests and assertions).
  bool busy() const { return busy_ || waiting_ > 0; }

  // (Explicit result types, as Beast's own layers declare them: Beast's
  // stream traits probe these signatures without instantiating the bodies.)
  template <typename MutableBufferSequence, BOOST_BEAST_ASYNC_TPARAM2 ReadHandler>
  BOOST_BEAST_ASYNC_RESULT2(ReadHandler)
  async_read_some(const MutableBufferSequence& buffers, ReadHandler&& handler) {
    return next_.async_read_some(buffers, std::forward<ReadHandler>(handler));
  }

  // Writes every byte of `buffers` (or fails), after the writes started
  // before it; completes with the number of bytes written.
  template <typename ConstBufferSequence, BOOST_BEAST_ASYNC_TPARAM2 WriteHandler>
  BOOST_BEAST_ASYNC_RESULT2(WriteHandler)
  async_write_some(const ConstBufferSequence& buffers, WriteHandler&& handler) {
    return boost::asio::async_initiate<WriteHandler, void(boost::beast::error_code, size_t)>(RunWrite{}, handler, this,
                                                                                             buffers);
  }

 private:
  template <typename Handler, typename Buffers>
  class WriteOp : public boost::beast::async_base<Handler, executor_type> {
   public:
    template <typename H>
    WriteOp(H&& h, SerialWriteStream& s, const Buffers& b)
        : boost::beast::async_base<Handler, executor_type>(std::forward<H>(h), s.get_executor()), s_(&s), b_(b) {}

    void Start() {
      s_->busy_ = true;
      boost::asio::async_write(s_->next_, b_, std::move(*this));
    }
    void Wait() {
      ticket_ = s_->next_ticket_++;
      ++s_->waiting_;
      Park();
    }
    // The gate opened (or was cancelled): go if it is this write's turn.
    void operator()(boost::beast::error_code) {
      if (s_->busy_ || ticket_ != s_->serving_) return Park();
      --s_->waiting_;
      ++s_->serving_;
      Start();
    }
    // The write finished.
    void operator()(boost::beast::error_code ec, size_t n) {
      s_->busy_ = false;
      if (s_->waiting_ > 0) s_->gate_->cancel();  // the parked writes look whose turn it is
      this->complete_now(ec, n);
    }

   private:
    // The gate never expires; it opens only by cancel(). (Setting the expiry
    // again would cancel the writes already parked.)
    void Park() {
      if (!s_->gate_)
        s_->gate_ = std::make_unique<boost::asio::steady_timer>(s_->get_executor(),
                                                                boost::asio::steady_timer::time_point::max());
      s_->gate_->async_wait(std::move(*this));
    }
    SerialWriteStream* s_;
    Buffers b_;
    uint64_t ticket_ = 0;
  };

  struct RunWrite {
    template <typename WriteHandler, typename Buffers>
    void operator()(WriteHandler&& h, SerialWriteStream* s, const Buffers& b) const {
      WriteOp<std::decay_t<WriteHandler>, Buffers> op(std::forward<WriteHandler>(h), *s, b);
      if (s->busy()) {
        op.Wait();
      } else {
        op.Start();
      }
    }
  };

  Next next_;
  bool busy_ = false;            // a write is in progress on next_
  uint32_t waiting_ = 0;         // writes parked on gate_
  uint64_t next_ticket_ = 0;     // ticket of the next write to park
  uint64_t serving_ = 0;         // ticket of the parked write that goes next
  std::unique_ptr<boost::asio::steady_timer> gate_;  // made on first contention
};

// Beast's teardown customisation points (found by argument-dependent lookup):
// the closing handshake's teardown goes to the layer below. By the rules
// above no write of ours is pending by then.
template <typename Next>
void teardown(boost::beast::role_type role, SerialWriteStream<Next>& s, boost::beast::error_code& ec) {
  using boost::beast::websocket::teardown;
  teardown(role, s.next_layer(), ec);
}

// Lingering close. Beast's own TCP teardown (Boost 1.81) shuts down the
// sending side, reads once and closes. A peer still writing, typically one
// sending a frame over the hard limit (closed with 1009), then gets a reset,
// which can reach it before it has read the close frame: it sees a broken
// connection instead of the close code. This teardown reads and discards what
// the peer sends until its end of stream, for at most kTeardownLingerTimeout
// and kTeardownLingerMaxBytes, and then closes.
inline constexpr std::chrono::milliseconds kTeardownLingerTimeout{2000};
inline constexpr size_t kTeardownLingerMaxBytes = 8 * 1024 * 1024;

// A plain TCP stream of Beast, whatever its executor and rate policy (the
// gateway's use the io_context's executor type, not tcp_stream's
// any_io_executor): the streams the lingering teardown below is for.
template <typename T>
struct IsBeastTcpStream : std::false_type {};
template <typename Protocol, typename Executor, typename RatePolicy>
struct IsBeastTcpStream<boost::beast::basic_stream<Protocol, Executor, RatePolicy>> : std::true_type {};

template <typename TcpStream>
class LingeringTeardownOp {
 public:
  LingeringTeardownOp(boost::beast::role_type role, TcpStream& stream)
      : role_(role), stream_(stream), buf_(std::make_unique<std::array<char, 4096>>()) {}

  template <typename Self>
  void operator()(Self& self, boost::beast::error_code ec = {}, size_t n = 0) {
    namespace net = boost::asio;
    if (!started_) {
      started_ = true;
      if (role_ == boost::beast::role_type::server) stream_.socket().shutdown(net::socket_base::shutdown_send, ec);
      if (ec) return Done(self, ec);
      stream_.expires_after(kTeardownLingerTimeout);
      return stream_.async_read_some(net::buffer(*buf_), std::move(self));
    }
    drained_ += n;
    if (!ec && drained_ < kTeardownLingerMaxBytes) return stream_.async_read_some(net::buffer(*buf_), std::move(self));
    // The peer's end of stream is the expected way out; the time or byte
    // limit ends the wait as well (the close below then resets).
    if (ec == net::error::eof || ec == boost::beast::error::timeout) ec = {};
    if (!ec && role_ == boost::beast::role_type::client) {
      stream_.socket().shutdown(net::socket_base::shutdown_send, ec);
    }
    Done(self, ec);
  }

 private:
  template <typename Self>
  void Done(Self& self, boost::beast::error_code ec) {
    boost::beast::error_code ignored;
    stream_.socket().close(ignored);
    self.complete(ec);
  }

  boost::beast::role_type role_;
  TcpStream& stream_;
  std::unique_ptr<std::array<char, 4096>> buf_;
  size_t drained_ = 0;
  bool started_ = false;
};

// A lingering close of a plain TCP stream: the WebSocket teardown's (below)
// and an HTTP connection's after its last answer (the server's side).
template <typename TcpStream, typename Handler>
void AsyncLingeringClose(boost::beast::role_type role, TcpStream& stream, Handler&& handler) {
  boost::asio::async_compose<std::decay_t<Handler>, void(boost::beast::error_code)>(
      LingeringTeardownOp<TcpStream>(role, stream), handler, stream);
}

template <typename Next, typename TeardownHandler>
void async_teardown(boost::beast::role_type role, SerialWriteStream<Next>& s, TeardownHandler&& handler) {
  if constexpr (IsBeastTcpStream<Next>::value) {
    AsyncLingeringClose(role, s.next_layer(), std::forward<TeardownHandler>(handler));
  } else {
    // TLS: Beast sends close_notify and waits for the peer's.
    using boost::beast::websocket::async_teardown;
    async_teardown(role, s.next_layer(), std::forward<TeardownHandler>(handler));
  }
}

}  // namespace parley::gateway
