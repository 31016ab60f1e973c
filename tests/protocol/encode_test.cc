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

// Strings are copied a run of plain characters at a time, and short plain
// keys in one piece: escapes at the start, the end, back to back, every
// control character and non-ASCII UTF-8 must still come out as JSON that
// parses back to the same bytes, as values and as keys.
TEST(EncodeTest, StringsEscapeEveryCharacterJsonNeedsAndCopyTheRest) {
  JsonWriter w;
  w.String("a\"b\\c\nd");
  EXPECT_EQ(w.Take(), R"("a\"b\\c\nd")");
  std::vector<std::string> cases = {"", "plain text", "\"", "\\", "\"\\\"", "\x01", "end\n", "\tstart",
                                    "\xc3\xa9t\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", std::string(1, '\0') + "x"};
  std::string every;
  for (int c = 0; c < 0x80; ++c) every.push_back(static_cast<char>(c));
  cases.push_back(every);
  cases.push_back(every + every);
  cases.push_back(std::string(48, 'k'));  // the longest key written in one piece
  cases.push_back(std::string(49, 'k'));
  for (const std::string& c : cases) {
    JsonWriter one;
    one.String(c);
    std::string out = one.Take();
    auto parsed = json::parse(out);
    EXPECT_EQ(parsed.get<std::string>(), c) << out;
    for (char ch : out) EXPECT_GE(static_cast<unsigned char>(ch), 0x20) << "a raw control character in " << out;
    // The same text as a key, first and after another field.
    JsonWriter obj;
    obj.BeginObject().Key(c).Int(1).Field("z", 2).Key(c + "2").String(c).EndObject();
    std::string text = obj.Take();
    auto o = json::parse(text);
    EXPECT_EQ(o.size(), 3u) << text;
    EXPECT_EQ(o[c], 1) << text;
    EXPECT_EQ(o[c + "2"], c) << text;
  }
}

// A writer rewound to a mark goes on as if nothing had been written since,
// commas included; ItemsThatFit counts what fits, and at least one.
TEST(EncodeTest, RewindingToAMarkAndCountingWhatFits) {
  JsonWriter w;
  w.BeginObject().Key("a").BeginArray().Int(1);
  const JsonWriter::Mark mark = w.Here();
  w.Int(2).BeginObject().Field("x", "long text").EndObject();
  w.Rewind(mark);
  w.Int(3).EndArray().Field("b", true).EndObject();
  EXPECT_EQ(w.Take(), R"({"a":[1,3],"b":true})");
  JsonWriter first;
  first.BeginArray();
  const JsonWriter::Mark empty = first.Here();
  first.Int(7);
  first.Rewind(empty);
  first.Int(8).EndArray();
  EXPECT_EQ(first.Take(), "[8]");

  auto ten = [](JsonWriter& s, size_t) { s.String("12345678"); };  // 10 bytes, 11 with its comma
  EXPECT_EQ(ItemsThatFit(5, 1000, ten), 5u);
  EXPECT_EQ(ItemsThatFit(5, 33, ten), 3u);
  EXPECT_EQ(ItemsThatFit(5, 32, ten), 2u);
  EXPECT_EQ(ItemsThatFit(5, 3, ten), 1u) << "a page always holds one";
  EXPECT_EQ(ItemsThatFit(0, 3, ten), 0u);
}

// Retention (issue 12): expires_at on messages that expire, the expiry's
// delete marked as one, and the timer event.
TEST(EncodeTest, ExpiringMessagesExpiryDeletesAndTheTimerEvent) {
  store::MessageRecord m;
  m.conversation_id = 2;
  m.seq = 5;
  m.sender_id = 1;
  m.created_at = 1700;
  JsonWriter plain;
  WriteMessage(plain, m);
  EXPECT_FALSE(json::parse(plain.Take()).contains("expires_at")) << "only on messages that expire";
  m.expires_at = 2700;
  JsonWriter w;
  WriteMessage(w, m);
  auto msg = json::parse(w.Take());
  EXPECT_EQ(msg["expires_at"], 2700);
  EXPECT_FALSE(msg.contains("reason"));

  store::StreamEvent del;
  del.user_seq = 10;
  del.kind = store::EventKind::kDelete;
  del.message = m;
  del.message->version = 1;
  del.message->deleted_at = 2600;  // deleted by its sender before the expiry
  EXPECT_FALSE(json::parse(EncodeEvent(del))["event"].contains("reason"));
  del.message->deleted_at = 2750;  // by the expiry step
  auto f = json::parse(EncodeEvent(del));
  EXPECT_EQ(f["event"]["kind"], "delete");
  EXPECT_EQ(f["event"]["reason"], "expired");

  store::StreamEvent t;
  t.user_seq = 11;
  t.kind = store::EventKind::kDisappearing;
  t.conversation_id = 2;
  t.receipt_user_id = 7;
  t.disappearing_s = 86400;
  t.created_at = 1800;
  auto e = json::parse(EncodeEvent(t))["event"];
  EXPECT_EQ(e["kind"], "disappearing");
  EXPECT_EQ(e["conversation_id"], 2);
  EXPECT_EQ(e["seconds"], 86400);
  EXPECT_EQ(e["by"], 7);
  EXPECT_EQ(e["set_at"], 1800);
}

TEST(EncodeTest, RetryAfterReasonFitsACloseFrame) {
  std::string r = RetryAfterReason(123456);
  EXPECT_EQ(json::parse(r)["retry_after_ms"], 123456);
  EXPECT_LE(r.size(), 123u);
}

}  // namespace
}  // namespace parley::protocol
