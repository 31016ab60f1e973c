#include "protocol/frames.h"

#include <gtest/gtest.h>

#include "protocol/limits.h"

#include <string>
#include <vector>

namespace parley::protocol {
namespace {

ErrorCode CodeOf(std::string_view frame) { return DecodeRequest(frame).status.code(); }

TEST(FramesTest, DecodesSendWithConversationId) {
  auto d = DecodeRequest(R"({"v":1,"id":"r1","type":"send","conversation_id":7,"client_id":"abc-1","body":"hi"})");
  ASSERT_TRUE(d.status.ok()) << d.status.ToString();
  EXPECT_EQ(d.request.type, RequestType::kSend);
  EXPECT_EQ(d.request.id_json, R"("r1")");
  const auto& s = std::get<SendRequest>(d.request.body);
  EXPECT_EQ(s.conversation_id, 7);
  EXPECT_EQ(s.client_id, "abc-1");
  EXPECT_EQ(s.body, "hi");
}

TEST(FramesTest, DecodesMessageInfoAndRefusesAMissingOrZeroSeq) {
  auto d = DecodeRequest(R"({"v":1,"id":12,"type":"message_info","conversation_id":3,"seq":42})");
  ASSERT_TRUE(d.status.ok()) << d.status.ToString();
  EXPECT_EQ(d.request.type, RequestType::kMessageInfo);
  EXPECT_EQ(std::get<MessageInfoRequest>(d.request.body).conversation_id, 3);
  EXPECT_EQ(std::get<MessageInfoRequest>(d.request.body).seq, 42);
  EXPECT_EQ(DecodeRequest(R"({"v":1,"id":1,"type":"message_info","conversation_id":3})").status.code(),
            ErrorCode::kBadRequest);
  EXPECT_EQ(DecodeRequest(R"({"v":1,"id":1,"type":"message_info","conversation_id":3,"seq":0})").status.code(),
            ErrorCode::kBadRequest);
}

TEST(FramesTest, DecodesPushRequestsAndRefusesBadProvidersTokensAndFlags) {
  auto d = DecodeRequest(R"({"v":1,"id":1,"type":"register_push","provider":"fcm","token":"abc:DEF-123"})");
  ASSERT_TRUE(d.status.ok()) << d.status.ToString();
  EXPECT_EQ(std::get<RegisterPushRequest>(d.request.body).provider, "fcm");
  EXPECT_EQ(std::get<RegisterPushRequest>(d.request.body).token, "abc:DEF-123");
  EXPECT_EQ(CodeOf(R"({"v":1,"id":1,"type":"register_push","provider":"pigeon","token":"t"})"), ErrorCode::kBadRequest);
  EXPECT_EQ(CodeOf(R"({"v":1,"id":1,"type":"register_push","provider":"apns","token":""})"), ErrorCode::kBadRequest);
  EXPECT_EQ(CodeOf(R"({"v":1,"id":1,"type":"register_push","provider":"apns","token":"a b"})"), ErrorCode::kBadRequest);
  std::string long_token(kMaxPushTokenBytes + 1, 'x');
  EXPECT_EQ(CodeOf(R"({"v":1,"id":1,"type":"register_push","provider":"apns","token":")" + long_token + R"("})"),
            ErrorCode::kBadRequest);
  auto m = DecodeRequest(R"({"v":1,"id":2,"type":"mute_conversation","conversation_id":3,"muted":false})");
  ASSERT_TRUE(m.status.ok()) << m.status.ToString();
  EXPECT_FALSE(std::get<MuteConversationRequest>(m.request.body).muted);
  EXPECT_EQ(CodeOf(R"({"v":1,"id":2,"type":"mute_conversation","conversation_id":3,"muted":"yes"})"),
            ErrorCode::kBadRequest);
  EXPECT_EQ(CodeOf(R"({"v":1,"id":2,"type":"mute_conversation","muted":true})"), ErrorCode::kBadRequest);
  auto p = DecodeRequest(R"({"v":1,"id":3,"type":"set_push_previews","previews":false})");
  ASSERT_TRUE(p.status.ok());
  EXPECT_FALSE(std::get<SetPushPreviewsRequest>(p.request.body).previews);
  EXPECT_EQ(CodeOf(R"({"v":1,"id":3,"type":"set_push_previews"})"), ErrorCode::kBadRequest);
}

TEST(FramesTest, DecodesEditAndDeleteAndRefusesBadFields) {
  auto e = DecodeRequest(
      R"({"v":1,"id":1,"type":"edit_message","conversation_id":3,"seq":42,"client_id":"e-1","body":"fixed"})");
  ASSERT_TRUE(e.status.ok()) << e.status.ToString();
  const auto& edit = std::get<EditMessageRequest>(e.request.body);
  EXPECT_EQ(edit.conversation_id, 3);
  EXPECT_EQ(edit.seq, 42);
  EXPECT_EQ(edit.client_id, "e-1");
  EXPECT_EQ(edit.body, "fixed");
  EXPECT_EQ(CodeOf(R"({"v":1,"id":1,"type":"edit_message","conversation_id":3,"seq":42,"body":"x"})"),
            ErrorCode::kBadRequest);  // no client id
  EXPECT_EQ(CodeOf(R"({"v":1,"id":1,"type":"edit_message","conversation_id":3,"seq":0,"client_id":"e","body":"x"})"),
            ErrorCode::kBadRequest);
  EXPECT_EQ(CodeOf(R"({"v":1,"id":1,"type":"edit_message","conversation_id":3,"seq":1,"client_id":"e","body":""})"),
            ErrorCode::kBadRequest);
  std::string big(kMaxBodyBytes + 1, 'x');
  EXPECT_EQ(CodeOf(R"({"v":1,"id":1,"type":"edit_message","conversation_id":3,"seq":1,"client_id":"e","body":")" +
                   big + R"("})"),
            ErrorCode::kBodyTooLarge);
  auto d = DecodeRequest(R"({"v":1,"id":2,"type":"delete_message","conversation_id":3,"seq":42,"for":"me"})");
  ASSERT_TRUE(d.status.ok()) << d.status.ToString();
  EXPECT_FALSE(std::get<DeleteMessageRequest>(d.request.body).for_everyone);
  auto everyone = DecodeRequest(R"({"v":1,"id":2,"type":"delete_message","conversation_id":3,"seq":4,"for":"everyone"})");
  ASSERT_TRUE(everyone.status.ok());
  EXPECT_TRUE(std::get<DeleteMessageRequest>(everyone.request.body).for_everyone);
  EXPECT_EQ(CodeOf(R"({"v":1,"id":2,"type":"delete_message","conversation_id":3,"seq":4,"for":"them"})"),
            ErrorCode::kBadRequest);
  EXPECT_EQ(CodeOf(R"({"v":1,"id":2,"type":"delete_message","conversation_id":3,"seq":4})"), ErrorCode::kBadRequest);
}

TEST(FramesTest, IntegerRequestIdIsEchoedVerbatim) {
  auto d = DecodeRequest(R"({"v":1,"id":42,"type":"ping"})");
  ASSERT_TRUE(d.status.ok());
  EXPECT_EQ(d.id_json, "42");
}

TEST(FramesTest, SendToUsernameIsCanonicalised) {
  auto d = DecodeRequest(R"({"v":1,"id":1,"type":"send","to":"Bob","client_id":"x","body":"hi"})");
  ASSERT_TRUE(d.status.ok());
  EXPECT_EQ(std::get<SendRequest>(d.request.body).to, "bob");
}

TEST(FramesTest, MalformedJsonIsBadJson) {
  EXPECT_EQ(CodeOf("{not json"), ErrorCode::kBadJson);
  EXPECT_EQ(CodeOf("[1,2]"), ErrorCode::kBadJson);
  EXPECT_EQ(CodeOf(""), ErrorCode::kBadJson);
}

TEST(FramesTest, InvalidUtf8IsReported) {
  std::string frame = "{\"v\":1,\"id\":1,\"type\":\"send\",\"to\":\"bob\",\"client_id\":\"x\",\"body\":\"\xff\xfe\"}";
  EXPECT_EQ(CodeOf(frame), ErrorCode::kInvalidUtf8);
}

// simdjson (Debian's 3.0) refuses a \u escape that encodes no Unicode
// character, so a frame of valid UTF-8 never decodes to a string that is not
// UTF-8: a body or a display name made of such escapes is bad_json.
TEST(FramesTest, EscapedLoneSurrogatesAreBadJsonAndNeverDecodeToInvalidUtf8) {
  for (const char* escape : {R"(\udc00)", R"(\ud800\u0041)", R"(\ud800)", R"(x\udfff)", R"(\ud800\ud800)"}) {
    std::string send = R"({"v":1,"id":1,"type":"send","to":"bob","client_id":"x","body":")" + std::string(escape) +
                       R"("})";
    Decoded d = DecodeRequest(send);
    EXPECT_EQ(d.status.code(), ErrorCode::kBadJson) << escape;
    EXPECT_NE(d.status.message().find("lone UTF-16 surrogate"), std::string::npos) << d.status.message();
    std::string profile = R"({"v":1,"id":1,"type":"set_profile","display_name":")" + std::string(escape) + R"("})";
    EXPECT_EQ(CodeOf(profile), ErrorCode::kBadJson) << escape;
  }
  // A surrogate pair is one character: its four UTF-8 bytes.
  Decoded pair = DecodeRequest(R"({"v":1,"id":1,"type":"send","to":"bob","client_id":"x","body":"\ud83d\ude00"})");
  ASSERT_TRUE(pair.status.ok()) << pair.status.ToString();
  EXPECT_EQ(std::get<SendRequest>(pair.request.body).body, "\xF0\x9F\x98\x80");
  EXPECT_TRUE(IsValidUtf8(std::get<SendRequest>(pair.request.body).body));
}

// The query is folded as the store folds display-name words (Unicode
// NFKC_Casefold, common/text_fold.h), then trimmed.
TEST(FramesTest, SearchQueryIsFoldedBeyondAscii) {
  auto query_of = [](const std::string& q) {
    Decoded d = DecodeRequest(R"({"v":1,"id":1,"type":"search_users","query":")" + q + R"("})");
    EXPECT_TRUE(d.status.ok()) << q << ": " << d.status.ToString();
    return d.status.ok() ? std::get<SearchUsersRequest>(d.request.body).query : std::string();
  };
  EXPECT_EQ(query_of("AnNe"), "anne");
  EXPECT_EQ(query_of("  ÉLODIE "), "élodie");
  EXPECT_EQ(query_of("Élodie"), "élodie");
  EXPECT_EQ(query_of("E\u0301lodie"), "élodie");  // decomposed, composed by NFKC
  EXPECT_EQ(query_of("ΣΟΦΊΑ"), "σοφία");
  EXPECT_EQ(query_of("ДМИТРИЙ"), "дмитрий");
  EXPECT_EQ(query_of("STRAẞE"), "strasse");
  // An ideographic space folds to a space: a query of only that is empty.
  EXPECT_EQ(CodeOf(R"({"v":1,"id":1,"type":"search_users","query":"\u3000"})"), ErrorCode::kBadRequest);
  // Folding can lengthen a query (U+FDFA: 3 bytes, 33 once folded): it is
  // cut back to the limit at a character boundary.
  std::string expands;
  for (int i = 0; i < 21; ++i) expands += "\uFDFA";
  std::string folded = query_of(expands);
  EXPECT_LE(folded.size(), kMaxSearchQueryBytes);
  EXPECT_GT(folded.size(), kMaxSearchQueryBytes - 4);
  EXPECT_TRUE(IsValidUtf8(folded));
  EXPECT_NE(folded.back(), ' ');
  std::string long_query(kMaxSearchQueryBytes + 1, 'a');
  EXPECT_EQ(CodeOf(R"({"v":1,"id":1,"type":"search_users","query":")" + long_query + R"("})"), ErrorCode::kBadRequest);
}

TEST(FramesTest, SetDisappearingTakesZeroOrTheAllowedRange) {
  auto ok = [](const std::string& seconds) {
    auto d = DecodeRequest(R"({"v":1,"id":1,"type":"set_disappearing","conversation_id":3,"seconds":)" + seconds + "}");
    EXPECT_TRUE(d.status.ok()) << seconds << ": " << d.status.ToString();
    return d.status.ok() ? std::get<SetDisappearingRequest>(d.request.body).seconds : -1;
  };
  EXPECT_EQ(ok("0"), 0);
  EXPECT_EQ(ok(std::to_string(kMinDisappearingSeconds)), kMinDisappearingSeconds);
  EXPECT_EQ(ok(std::to_string(kMaxDisappearingSeconds)), kMaxDisappearingSeconds);
  for (const std::string& bad :
       std::vector<std::string>{"-1", std::to_string(kMaxDisappearingSeconds + 1), "\"60\"", "1.5", "null"}) {
    auto d = DecodeRequest(R"({"v":1,"id":1,"type":"set_disappearing","conversation_id":3,"seconds":)" + bad + "}");
    EXPECT_EQ(d.status.code(), ErrorCode::kBadRequest) << bad;
    EXPECT_NE(d.status.message().find("seconds"), std::string::npos) << d.status.message();
  }
  EXPECT_EQ(CodeOf(R"({"v":1,"id":1,"type":"set_disappearing","seconds":60})"), ErrorCode::kBadRequest);
  EXPECT_EQ(CodeOf(R"({"v":1,"id":1,"type":"set_disappearing","conversation_id":3})"), ErrorCode::kBadRequest);
}

TEST(FramesTest, UnknownTypeKeepsTheRequestId) {
  auto d = DecodeRequest(R"({"v":1,"id":"q","type":"teleport"})");
  EXPECT_EQ(d.status.code(), ErrorCode::kUnknownType);
  EXPECT_EQ(d.id_json, R"("q")");
}

TEST(FramesTest, MissingAndWrongTypedFieldsAreBadRequest) {
  EXPECT_EQ(CodeOf(R"({"v":1,"id":1,"type":"send","conversation_id":1,"body":"hi"})"), ErrorCode::kBadRequest);
  EXPECT_EQ(CodeOf(R"({"v":1,"id":1,"type":"send","conversation_id":"1","client_id":"x","body":"hi"})"),
            ErrorCode::kBadRequest);
  EXPECT_EQ(CodeOf(R"({"v":1,"id":1,"type":"send","conversation_id":1,"client_id":"x","body":5})"),
            ErrorCode::kBadRequest);
  EXPECT_EQ(CodeOf(R"({"v":1,"id":1,"type":"send","conversation_id":1,"client_id":"a b","body":"x"})"),
            ErrorCode::kBadRequest);
  EXPECT_EQ(CodeOf(R"({"v":1,"id":1,"type":"ack"})"), ErrorCode::kBadRequest);
  EXPECT_EQ(CodeOf(R"({"v":1,"type":"ping"})"), ErrorCode::kBadRequest);
  EXPECT_EQ(CodeOf(R"({"v":1,"id":{},"type":"ping"})"), ErrorCode::kBadRequest);
  EXPECT_EQ(CodeOf(R"({"v":1,"id":1,"type":"receipt","items":[]})"), ErrorCode::kBadRequest);
  EXPECT_EQ(CodeOf(R"({"v":1,"id":1,"type":"sync","limit":100000})"), ErrorCode::kBadRequest);
}

TEST(FramesTest, WrongVersionIsUnsupported) {
  EXPECT_EQ(CodeOf(R"({"v":2,"id":1,"type":"ping"})"), ErrorCode::kUnsupportedVersion);
  EXPECT_EQ(CodeOf(R"({"id":1,"type":"ping"})"), ErrorCode::kBadRequest);
}

TEST(FramesTest, OversizeBodyAndFrame) {
  std::string body(kMaxBodyBytes + 1, 'a');
  EXPECT_EQ(CodeOf(R"({"v":1,"id":1,"type":"send","conversation_id":1,"client_id":"x","body":")" + body + "\"}"),
            ErrorCode::kBodyTooLarge);
  std::string pad(kMaxFrameBytes, 'p');
  auto d = DecodeRequest(R"({"v":1,"id":"big","type":"ping","pad":")" + pad + "\"}");
  EXPECT_EQ(d.status.code(), ErrorCode::kFrameTooLarge);
  EXPECT_EQ(d.id_json, R"("big")");  // the error can still be matched
}

// The longest valid body, every byte a control character (escaped in 6
// bytes), is a valid send: its frame (~96 KiB) is under the frame limit.
TEST(FramesTest, TheLongestBodyOfControlCharactersFitsInAFrame) {
  std::string body;
  for (size_t i = 0; i < kMaxBodyBytes; ++i) body += "\\u0001";
  const std::string frame = R"({"v":1,"id":1,"type":"send","conversation_id":1,"client_id":"x","body":")" + body + "\"}";
  ASSERT_GT(frame.size(), 64u * 1024);
  auto d = DecodeRequest(frame);
  ASSERT_TRUE(d.status.ok()) << d.status.ToString();
  EXPECT_EQ(std::get<SendRequest>(d.request.body).body, std::string(kMaxBodyBytes, '\x01'));
}

TEST(FramesTest, UsernameRules) {
  EXPECT_EQ(*CanonicalUsername("Alice_01"), "alice_01");
  EXPECT_FALSE(CanonicalUsername("al").has_value());
  EXPECT_FALSE(CanonicalUsername("1alice").has_value());
  EXPECT_FALSE(CanonicalUsername("ali ce").has_value());
  EXPECT_FALSE(CanonicalUsername(std::string(33, 'a')).has_value());
  EXPECT_EQ(CodeOf(R"({"v":1,"id":1,"type":"register","username":"x","password":"longenough"})"),
            ErrorCode::kInvalidUsername);
  EXPECT_EQ(CodeOf(R"({"v":1,"id":1,"type":"register","username":"xavier","password":"short"})"),
            ErrorCode::kInvalidPassword);
  // Too long is the same error as too short (a client shows it at the field);
  // exactly the bounds pass.
  const std::string too_long(kMaxPasswordBytes + 1, 'p');
  EXPECT_EQ(CodeOf(R"({"v":1,"id":1,"type":"register","username":"xavier","password":")" + too_long + R"("})"),
            ErrorCode::kInvalidPassword);
  EXPECT_EQ(CodeOf(R"({"v":1,"id":1,"type":"change_password","old_password":"whatever","new_password":")" + too_long +
                   R"("})"),
            ErrorCode::kInvalidPassword);
  for (size_t n : {kMinPasswordBytes, kMaxPasswordBytes}) {
    Decoded d = DecodeRequest(R"({"v":1,"id":1,"type":"register","username":"xavier","password":")" +
                              std::string(n, 'p') + R"("})");
    EXPECT_TRUE(d.status.ok()) << n << ": " << d.status.message();
  }
}

TEST(FramesTest, SelectSyncTakesExactlyOneFormWithinItsLimits) {
  auto ok = [](const std::string& fields) {
    Decoded d = DecodeRequest(R"({"v":1,"id":1,"type":"select_sync",)" + fields + "}");
    EXPECT_TRUE(d.status.ok()) << fields << ": " << d.status.message();
    return d.status.ok() ? std::get<SelectSyncRequest>(d.request.body) : SelectSyncRequest{};
  };
  SelectSyncRequest r = ok(R"("recent":20,"conversations":[3,9])");
  EXPECT_EQ(r.recent, 20);
  EXPECT_EQ(r.conversations, (std::vector<int64_t>{3, 9}));
  EXPECT_FALSE(r.all);
  EXPECT_EQ(ok(R"("recent":0)").recent, 0);
  EXPECT_EQ(ok(R"("add":[5])").add, std::vector<int64_t>{5});
  EXPECT_TRUE(ok(R"("all":true)").all);
  auto bad = [](const std::string& fields) {
    Decoded d = DecodeRequest(R"({"v":1,"id":1,"type":"select_sync")" + fields + "}");
    EXPECT_EQ(d.status.code(), ErrorCode::kBadRequest) << fields;
    EXPECT_FALSE(d.status.message().empty());
  };
  bad("");
  bad(R"(,"recent":-1)");
  bad(R"(,"recent":101)");
  bad(R"(,"recent":1.5)");
  bad(R"(,"conversations":[1,1])");
  bad(R"(,"conversations":[0])");
  bad(R"(,"conversations":"3")");
  bad(R"(,"add":[])");
  bad(R"(,"add":[1],"recent":1)");
  bad(R"(,"all":true,"conversations":[1])");
  bad(R"(,"all":false)");
  std::string many = "[";
  for (int i = 1; i <= 257; ++i) many += (i > 1 ? "," : "") + std::to_string(i);
  bad(R"(,"conversations":)" + many + "]");
}

TEST(FramesTest, PeekEventFrameFindsTheConversationOfSummarisedKinds) {
  auto key = PeekEventFrame(
      R"({"v":1,"type":"event","event":{"user_seq":7,"kind":"message","message":{"conversation_id":3,"seq":1}}})");
  ASSERT_TRUE(key);
  EXPECT_EQ(key->user_seq, 7);
  EXPECT_EQ(key->conversation_id, 3);
  EXPECT_TRUE(key->summarisable);
  key = PeekEventFrame(R"({"v":1,"type":"event","event":{"user_seq":8,"kind":"receipt","conversation_id":4}})");
  ASSERT_TRUE(key);
  EXPECT_EQ(key->conversation_id, 4);
  EXPECT_TRUE(key->summarisable);
  key = PeekEventFrame(R"({"v":1,"type":"event","event":{"user_seq":9,"kind":"draft","conversation_id":4}})");
  ASSERT_TRUE(key);
  EXPECT_FALSE(key->summarisable) << "drafts always go in full";
  key = PeekEventFrame(
      R"({"v":1,"type":"event","event":{"user_seq":11,"kind":"receipt","conversation_id":4,"withheld":[2]}})");
  ASSERT_TRUE(key);
  EXPECT_FALSE(key->summarisable) << "a withheld list must reach every device: never summarised";
  key = PeekEventFrame(R"({"v":1,"type":"event","event":{"user_seq":10,"kind":"profile","profile":{}}})");
  ASSERT_TRUE(key);
  EXPECT_FALSE(key->summarisable);
  EXPECT_FALSE(PeekEventFrame(R"({"v":1,"type":"typing","conversation_id":3})"));
  EXPECT_FALSE(PeekEventFrame("not json"));
}

TEST(FramesTest, RegistryNamesRoundTrip) {
  for (RequestType t : AllRequestTypes()) {
    auto back = RequestTypeFromName(RequestTypeName(t));
    ASSERT_TRUE(back.has_value());
    EXPECT_EQ(*back, t);
  }
  EXPECT_FALSE(RequestNeedsAuth(RequestType::kLogin));
  EXPECT_TRUE(RequestNeedsAuth(RequestType::kSend));
}

}  // namespace
}  // namespace parley::protocol
