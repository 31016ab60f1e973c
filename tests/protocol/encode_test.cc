#include "protocol/encode.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace parley::protocol {
namespace {

using nlohmann::json;

TEST(EncodeTest, ResponseEnvelope) {
  auto f = json::parse(EncodeResponse(R"("r1")", "send", [](JsonWriter& w) { w.Field("seq", 3); }));
  EXPECT_EQ(f["v"], 1);
  EXPECT_EQ(f["type"], "response");
  EXPECT_EQ(f["id"], "r1");
  EXPECT_EQ(f["op"], "send");
  EXPECT_EQ(f["result"]["seq"], 3);
}

TEST(EncodeTest, ErrorEnvelopeWithoutId) {
  auto f = json::parse(EncodeError("", "", Status(ErrorCode::kBadJson, "bad \"quote\"\n")));
  EXPECT_EQ(f["type"], "error");
  EXPECT_TRUE(f["id"].is_null());
  EXPECT_EQ(f["code"], "bad_json");
  EXPECT_EQ(f["message"], "bad \"quote\"\n");
  EXPECT_EQ(f["retryable"], false);
}

TEST(EncodeTest, MessageEventEscapesBody) {
  store::StreamEvent e;
  e.user_seq = 9;
  e.kind = store::EventKind::kMessage;
  e.conversation_id = 2;
  store::MessageRecord m;
  m.conversation_id = 2;
  m.seq = 5;
  m.sender_id = 1;
  m.sender_device_id = 4;
  m.client_id = "c1";
  m.body = std::string("tab\there \x01 \xc3\xa9");
  m.created_at = 1700;
  e.message = m;
  auto f = json::parse(EncodeEvent(e));
  EXPECT_EQ(f["type"], "event");
  EXPECT_EQ(f["event"]["user_seq"], 9);
  EXPECT_EQ(f["event"]["kind"], "message");
  EXPECT_EQ(f["event"]["message"]["body"], m.body);
  EXPECT_EQ(f["event"]["message"]["seq"], 5);
}

TEST(EncodeTest, RetryAfterReasonFitsACloseFrame) {
  std::string r = RetryAfterReason(123456);
  EXPECT_EQ(json::parse(r)["retry_after_ms"], 123456);
  EXPECT_LE(r.size(), 123u);
}

}  // namespace
}  // namespace parley::protocol
