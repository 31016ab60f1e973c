// The gateway's batched writes (gateway/ws_write.h): frames it encodes itself
// are what Beast would send, and batches written below Beast never interleave
// with Beast's own frames, over a real loopback connection.
#include "gateway/ws_write.h"

#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/websocket.hpp>

#include <chrono>
#include <functional>
#include <optional>
#include <string>

namespace parley::gateway {
namespace {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace websocket = beast::websocket;
using tcp = net::ip::tcp;

std::string Hex(const std::string& s) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    out.push_back(digits[c >> 4]);
    out.push_back(digits[c & 15]);
  }
  return out;
}

TEST(WsWriteTest, TextFrameHeadersUseTheShortestLengthEncoding) {
  struct Case {
    size_t n;
    std::string header_hex;
  };
  for (const Case& c : {Case{0, "8100"}, Case{1, "8101"}, Case{125, "817d"}, Case{126, "817e007e"},
                        Case{65535, "817effff"}, Case{65536, "817f0000000000010000"},
                        Case{1'000'000, "817f00000000000f4240"}}) {
    std::string payload(c.n, 'p');
    std::string out = "x";  // appends, keeps what is there
    AppendTextFrame(out, payload);
    ASSERT_EQ(out.size(), 1 + TextFrameHeaderBytes(c.n) + c.n) << c.n;
    EXPECT_EQ(Hex(out.substr(1, TextFrameHeaderBytes(c.n))), c.header_hex) << c.n;
    EXPECT_EQ(out.substr(1 + TextFrameHeaderBytes(c.n)), payload) << c.n;
    EXPECT_EQ(out[0], 'x');
  }
}

// A server stream as the gateway builds it, a Beast client on the other end,
// small socket buffers so that a large batch is written in many pieces.
class WsWritePairTest : public ::testing::Test {
 protected:
  void SetUp() override {
    tcp::acceptor acceptor(ioc_, tcp::endpoint(net::ip::make_address("127.0.0.1"), 0));
    client_.next_layer().socket().open(tcp::v4());
    client_.next_layer().socket().set_option(net::socket_base::receive_buffer_size(4096));
    client_.next_layer().socket().connect(acceptor.local_endpoint());
    tcp::socket accepted(ioc_);
    acceptor.accept(accepted);
    accepted.set_option(net::socket_base::send_buffer_size(4096));
    server_.emplace(beast::tcp_stream(std::move(accepted)));
    server_->auto_fragment(false);
    bool accepted_ws = false;
    bool handshaken = false;
    server_->async_accept([&](beast::error_code ec) {
      ASSERT_FALSE(ec) << ec.message();
      accepted_ws = true;
    });
    client_.async_handshake("127.0.0.1", "/", [&](beast::error_code ec) {
      ASSERT_FALSE(ec) << ec.message();
      handshaken = true;
    });
    while ((!accepted_ws || !handshaken) && ioc_.run_one_for(std::chrono::seconds(5)) > 0) {
    }
    ASSERT_TRUE(accepted_ws && handshaken);
  }

  net::io_context ioc_;
  websocket::stream<beast::tcp_stream> client_{ioc_};
  std::optional<websocket::stream<SerialWriteStream<beast::tcp_stream>>> server_;
};

// Two large batches written below Beast, with a Beast ping started while the
// first is still being written: the client must read every message whole and
// in order, and the ping between the two batches, not inside one. (Without
// the serialisation the ping's bytes land between two pieces of the batch,
// which the small socket buffers force to go out in many, and the client
// fails the connection.)
TEST_F(WsWritePairTest, BeastFramesWaitForABatchInProgress) {
  constexpr int kPerBatch = 200;
  auto encode = [](int first) {
    std::string batch;
    for (int i = first; i < first + kPerBatch; ++i) {
      std::string payload = "message " + std::to_string(i) + " " + std::string(static_cast<size_t>(1000 + i % 50), 'z');
      AppendTextFrame(batch, payload);
    }
    return batch;
  };
  std::string first = encode(0);
  std::string second = encode(kPerBatch);
  int batches_done = 0;
  bool ping_done = false;
  // As the gateway writes a batch: one async_write_some call (each batch here
  // is over 200 KB, several times what net::async_write hands a stream at once).
  server_->next_layer().async_write_some(net::buffer(first), [&](beast::error_code ec, size_t n) {
    EXPECT_FALSE(ec) << ec.message();
    EXPECT_EQ(n, first.size());
    ++batches_done;
  });
  EXPECT_TRUE(server_->next_layer().busy());
  server_->async_ping({}, [&](beast::error_code ec) {
    EXPECT_FALSE(ec) << ec.message();
    EXPECT_EQ(batches_done, 1) << "the ping completed before the batch started before it";
    ping_done = true;
  });
  server_->next_layer().async_write_some(net::buffer(second), [&](beast::error_code ec, size_t n) {
    EXPECT_FALSE(ec) << ec.message();
    EXPECT_EQ(n, second.size());
    EXPECT_TRUE(ping_done) << "the second batch completed before the ping started before it";
    ++batches_done;
  });

  int received = 0;
  int ping_seen_after = -1;
  client_.control_callback([&](websocket::frame_type kind, beast::string_view) {
    if (kind == websocket::frame_type::ping) ping_seen_after = received;
  });
  beast::flat_buffer buffer;
  bool read_failed = false;
  std::function<void()> read = [&] {
    client_.async_read(buffer, [&](beast::error_code ec, size_t) {
      if (ec) {
        ADD_FAILURE() << "client read failed after " << received << " messages: " << ec.message();
        read_failed = true;
        return;
      }
      std::string text = beast::buffers_to_string(buffer.data());
      buffer.consume(buffer.size());
      std::string expected_prefix = "message " + std::to_string(received) + " ";
      EXPECT_EQ(text.substr(0, expected_prefix.size()), expected_prefix);
      EXPECT_EQ(text.size(), expected_prefix.size() + static_cast<size_t>(1000 + received % 50));
      ++received;
      if (received < 2 * kPerBatch) read();
    });
  };
  read();
  ioc_.restart();  // SetUp's loop may have left it stopped (out of work)
  while (!read_failed && (received < 2 * kPerBatch || batches_done < 2 || !ping_done) &&
         ioc_.run_one_for(std::chrono::seconds(5)) > 0) {
  }
  EXPECT_EQ(received, 2 * kPerBatch);
  EXPECT_EQ(batches_done, 2);
  EXPECT_TRUE(ping_done);
  EXPECT_EQ(ping_seen_after, kPerBatch) << "the ping did not arrive between the two batches";
  EXPECT_FALSE(server_->next_layer().busy());
}

}  // namespace
}  // namespace parley::gateway
