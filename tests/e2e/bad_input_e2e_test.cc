// End-to-end: every class of bad input gets its documented error code, stores
// nothing, and keeps the connection where the protocol allows.
#include <gtest/gtest.h>

#include "e2e/helpers.h"
#include "protocol/limits.h"

namespace parley::testing {
namespace {

class BadInputE2E : public ::testing::Test {
 protected:
  void SetUp() override {
    Register(server_, "alice");
    Register(server_, "bob");
    a_ = Login(server_, "alice");
    auto r = a_.conn->Call("send", {{"to", "bob"}, {"client_id", "ok-1"}, {"body", "first"}});
    ASSERT_TRUE(r.ok);
    conv_ = r.result["conversation_id"];
  }
  // The error frame answering a raw frame without a usable id.
  json RawError(const std::string& bytes, bool binary = false) {
    a_.conn->SendRaw(bytes, binary);
    auto e = a_.conn->NextUnmatchedError(5000);
    EXPECT_TRUE(e.has_value()) << "no error frame for: " << bytes.substr(0, 80);
    return e.value_or(json());
  }
  void ExpectStillUsableAndNothingStored() {
    EXPECT_TRUE(a_.conn->Call("ping").ok) << "connection not kept";
    auto h = a_.conn->Call("history", {{"conversation_id", conv_}});
    ASSERT_TRUE(h.ok);
    EXPECT_EQ(h.result["messages"].size(), 1u) << "bad input stored something";
  }
  ServerProcess server_;
  Device a_;
  int64_t conv_ = 0;
};

TEST_F(BadInputE2E, MalformedJsonIsBadJson) {
  auto e = RawError("{\"v\":1,\"id\":");
  EXPECT_EQ(e["code"], "bad_json");
  EXPECT_TRUE(e["id"].is_null());
  EXPECT_EQ(RawError("[]")["code"], "bad_json");
  ExpectStillUsableAndNothingStored();
}

TEST_F(BadInputE2E, UnknownTypeAndWrongVersion) {
  auto r = a_.conn->Call("teleport");
  EXPECT_EQ(r.code, "unknown_type");
  EXPECT_FALSE(r.frame["retryable"].get<bool>());
  auto e = RawError(R"({"v":7,"id":"x","type":"ping"})");
  EXPECT_EQ(e["code"], "unsupported_version");
  EXPECT_EQ(e["op"], "ping");
  ExpectStillUsableAndNothingStored();
}

TEST_F(BadInputE2E, MissingAndWrongTypedFieldsAreBadRequest) {
  EXPECT_EQ(a_.conn->Call("send", {{"conversation_id", conv_}, {"body", "no client id"}}).code, "bad_request");
  EXPECT_EQ(a_.conn->Call("send", {{"conversation_id", conv_}, {"client_id", 5}, {"body", "x"}}).code, "bad_request");
  EXPECT_EQ(a_.conn->Call("send", {{"conversation_id", "3"}, {"client_id", "c"}, {"body", "x"}}).code, "bad_request");
  EXPECT_EQ(a_.conn->Call("send", {{"conversation_id", conv_}, {"client_id", "c"}}).code, "bad_request");
  EXPECT_EQ(a_.conn->Call("receipt", {{"items", "all"}}).code, "bad_request");
  EXPECT_EQ(a_.conn->Call("history", {{"conversation_id", conv_}, {"limit", 100000}}).code, "bad_request");
  ExpectStillUsableAndNothingStored();
}

TEST_F(BadInputE2E, OversizeBodyAndFrameKeepTheConnection) {
  std::string body(16 * 1024 + 1, 'x');
  EXPECT_EQ(a_.conn->Call("send", {{"conversation_id", conv_}, {"client_id", "big"}, {"body", body}}).code,
            "body_too_large");
  std::string huge(130 * 1024, 'y');
  EXPECT_EQ(a_.conn->Call("send", {{"conversation_id", conv_}, {"client_id", "huge"}, {"body", huge}}).code,
            "frame_too_large");
  ExpectStillUsableAndNothingStored();
}

// The longest valid body, every byte a control character: its frame (each
// byte escaped as \u0001, ~96 KiB) is accepted and the text comes back intact.
TEST_F(BadInputE2E, TheLongestBodyOfControlCharactersIsSent) {
  const std::string body(16 * 1024, '\x01');
  auto sent = a_.conn->Call("send", {{"conversation_id", conv_}, {"client_id", "ctl"}, {"body", body}});
  ASSERT_TRUE(sent.ok) << sent.code << " " << sent.message;
  auto page = a_.conn->Call("history", {{"conversation_id", conv_}});
  ASSERT_TRUE(page.ok) << page.code;
  ASSERT_FALSE(page.result["messages"].empty());
  EXPECT_EQ(page.result["messages"].back()["body"], body);
}

TEST_F(BadInputE2E, InvalidUtf8InABinaryFrameIsAnErrorAndTheConnectionStays) {
  std::string frame = "{\"v\":1,\"id\":\"u\",\"type\":\"send\",\"conversation_id\":" + std::to_string(conv_) +
                      ",\"client_id\":\"u8\",\"body\":\"\xc3\x28\"}";
  auto e = RawError(frame, /*binary=*/true);
  EXPECT_EQ(e["code"], "invalid_utf8");
  ExpectStillUsableAndNothingStored();
}

// JSON escapes of lone UTF-16 surrogates would decode to text that is not
// UTF-8: the frame is refused (bad_json, the documented code) and nothing is
// stored, in a message body as in a display name.
TEST_F(BadInputE2E, LoneSurrogateEscapesInABodyOrDisplayNameAreBadJsonAndStoreNothing) {
  for (const std::string escape : {R"(\udc00)", R"(\ud800\u0041)", R"(ok\ud800)"}) {
    auto e = RawError(R"({"v":1,"id":"s","type":"send","conversation_id":)" + std::to_string(conv_) +
                      R"(,"client_id":"sur","body":")" + escape + R"("})");
    EXPECT_EQ(e["code"], "bad_json") << escape;
    EXPECT_NE(e["message"].get<std::string>().find("surrogate"), std::string::npos) << e.dump();
    e = RawError(R"({"v":1,"id":"p","type":"set_profile","display_name":")" + escape + R"("})");
    EXPECT_EQ(e["code"], "bad_json") << escape;
  }
  ExpectStillUsableAndNothingStored();
  Device b = Login(server_, "bob");
  auto found = b.conn->Call("search_users", {{"query", "alice"}});
  ASSERT_TRUE(found.ok) << found.message;
  ASSERT_EQ(found.result["users"].size(), 1u);
  EXPECT_EQ(found.result["users"][0]["display_name"], "") << "a refused display name was stored";
}

// U+0000 in any text (a body, a draft, the about line, a device name) is
// refused: PostgreSQL's text cannot hold it (libpq cut the text at it, so the
// sender saw the whole body and every later read the part before the NUL).
TEST_F(BadInputE2E, TextHoldingANulIsBadRequestAndStoresNothing) {
  auto expect_refused = [](const Reply& r, const std::string& field) {
    EXPECT_FALSE(r.ok) << field;
    EXPECT_EQ(r.code, "bad_request") << field;
    EXPECT_NE(r.message.find("'" + field + "' may not hold U+0000"), std::string::npos) << r.message;
  };
  const std::string nul = std::string("pay ") + '\0' + " 1000";
  expect_refused(a_.conn->Call("send", {{"conversation_id", conv_}, {"client_id", "nul"}, {"body", nul}}), "body");
  expect_refused(a_.conn->Call("set_draft", {{"conversation_id", conv_}, {"text", nul}}), "text");
  expect_refused(a_.conn->Call("set_profile", {{"about", nul}}), "about");
  auto c = server_.Connect();
  expect_refused(c->Call("login", {{"username", "alice"}, {"password", "correct horse"}, {"device_name", nul}}),
                 "device_name");
  // A device's name and platform are shown in device lists, the about line
  // beside a profile: no control characters, as display names.
  auto expect_no_controls = [](const Reply& r, const std::string& field) {
    EXPECT_EQ(r.code, "bad_request") << field;
    EXPECT_NE(r.message.find("'" + field + "' may not hold control characters"), std::string::npos) << r.message;
  };
  for (const char* field : {"device_name", "platform"}) {
    expect_no_controls(c->Call("login", {{"username", "alice"}, {"password", "correct horse"}, {field, "phone\x1b[2J"}}),
                       field);
  }
  expect_no_controls(a_.conn->Call("set_profile", {{"about", "busy\x1b[2J"}}), "about");
  expect_no_controls(a_.conn->Call("set_profile", {{"about", "line one\nline two"}}), "about");
  ExpectStillUsableAndNothingStored();
}

// `about` and the search query over their limits (docs/protocol.md,
// "Limits"): bad_request, and the profile stays as it was.
TEST_F(BadInputE2E, OversizeAboutAndSearchQueryAreBadRequest) {
  std::string about(protocol::kMaxAboutBytes, 'a');
  ASSERT_TRUE(a_.conn->Call("set_profile", {{"about", about}}).ok);
  // 141 bytes in 2-byte characters (70 x "é" + "!"): the limit counts bytes.
  std::string over;
  for (size_t i = 0; i < protocol::kMaxAboutBytes / 2; ++i) over += "\xc3\xa9";
  over += "!";
  ASSERT_EQ(over.size(), protocol::kMaxAboutBytes + 1);
  auto r = a_.conn->Call("set_profile", {{"about", over}});
  EXPECT_EQ(r.code, "bad_request");
  EXPECT_NE(r.message.find("about"), std::string::npos) << r.message;
  EXPECT_EQ(a_.conn->Call("set_profile", {{"display_name", "Alice"}, {"about", over}}).code, "bad_request");

  EXPECT_TRUE(a_.conn->Call("search_users", {{"query", std::string(protocol::kMaxSearchQueryBytes, 'b')}}).ok);
  auto q = a_.conn->Call("search_users", {{"query", std::string(protocol::kMaxSearchQueryBytes + 1, 'b')}});
  EXPECT_EQ(q.code, "bad_request");
  EXPECT_NE(q.message.find("query"), std::string::npos) << q.message;
  ExpectStillUsableAndNothingStored();

  Device b = Login(server_, "bob");
  auto found = b.conn->Call("search_users", {{"query", "alice"}});
  ASSERT_TRUE(found.ok) << found.message;
  ASSERT_EQ(found.result["users"].size(), 1u);
  EXPECT_EQ(found.result["users"][0]["about"], about);
  EXPECT_EQ(found.result["users"][0]["display_name"], "");
}

// Usernames that cannot exist (33..256 bytes: unknown_user) or are over the
// field limit (> 256 bytes: bad_request) in every request naming another
// user. A user whom a blocker blocks gets exactly the same answers as one
// nobody blocks: none reveals a block.
TEST_F(BadInputE2E, OversizeUsernamesNamingAnotherUserNeverRevealABlock) {
  Register(server_, "carol");
  Device carol = Login(server_, "carol");
  ASSERT_TRUE(carol.conn->Call("block", {{"username", "alice"}}).ok);  // alice is blocked, bob is not
  Device b = Login(server_, "bob");
  const std::string ops[] = {"add_contact", "remove_contact", "block", "unblock", "open_conversation"};
  struct Case {
    std::string name;
    std::string code;
  };
  const Case cases[] = {
      {"carol" + std::string(protocol::kMaxUsernameBytes + 1 - 5, 'x'), "unknown_user"},  // 33 bytes
      {std::string(protocol::kMaxUsernameBytes + 1, 'c'), "unknown_user"},
      {std::string(protocol::kMaxUsernameFieldBytes, 'c'), "unknown_user"},  // 256 bytes
      {std::string(protocol::kMaxUsernameFieldBytes + 1, 'c'), "bad_request"},
      {std::string(4000, 'c'), "bad_request"},
  };
  for (const Case& c : cases) {
    for (const std::string& op : ops) {
      auto blocked = a_.conn->Call(op, {{"username", c.name}});
      auto unblocked = b.conn->Call(op, {{"username", c.name}});
      EXPECT_EQ(blocked.code, c.code) << op << " with " << c.name.size() << " bytes";
      EXPECT_EQ(blocked.code, unblocked.code) << op;
      EXPECT_EQ(blocked.message, unblocked.message) << op;
      EXPECT_EQ(blocked.frame["retryable"], unblocked.frame["retryable"]) << op;
    }
    auto sent = a_.conn->Call("send", {{"to", c.name}, {"client_id", "ov"}, {"body", "x"}});
    EXPECT_EQ(sent.code, c.code) << "send to " << c.name.size() << " bytes";
    EXPECT_EQ(sent.message, b.conn->Call("send", {{"to", c.name}, {"client_id", "ov"}, {"body", "x"}}).message);
  }
  EXPECT_TRUE(a_.conn->Call("list_contacts").ok);
  EXPECT_TRUE(a_.conn->Call("list_contacts").result["contacts"].empty());
  EXPECT_TRUE(a_.conn->Call("list_blocked").result["users"].empty());
  ExpectStillUsableAndNothingStored();
}

TEST_F(BadInputE2E, InvalidUtf8InATextFrameClosesWith1007) {
  a_.conn->SendRaw("{\"v\":1,\"id\":1,\"type\":\"ping\",\"x\":\"\xff\"}", /*binary=*/false);
  ASSERT_TRUE(a_.conn->WaitClosed(5000));
  EXPECT_EQ(a_.conn->close_code(), 1007);
  Device again = Reconnect(server_, a_);
  auto h = again.conn->Call("history", {{"conversation_id", conv_}});
  EXPECT_EQ(h.result["messages"].size(), 1u);
}

TEST_F(BadInputE2E, FrameOverTheHardLimitClosesWith1009) {
  a_.conn->SendRaw(std::string(2 * 1024 * 1024, ' '));
  ASSERT_TRUE(a_.conn->WaitClosed(5000));
  EXPECT_EQ(a_.conn->close_code(), 1009);
}

TEST_F(BadInputE2E, BadAndRevokedTokensAreInvalidToken) {
  auto c = server_.Connect();
  EXPECT_EQ(c->Call("auth", {{"token", "not-a-token"}}).code, "invalid_token");
  EXPECT_EQ(c->Call("send", {{"to", "bob"}, {"client_id", "z"}, {"body", "x"}}).code, "not_authenticated");
  Device second = Login(server_, "alice", "second");
  ASSERT_TRUE(a_.conn->Call("unlink_device", {{"device_id", second.device_id}}).ok);
  auto c2 = server_.Connect();
  EXPECT_EQ(c2->Call("auth", {{"token", second.token}}).code, "invalid_token");
  EXPECT_EQ(c2->Call("login", {{"username", "alice"}, {"password", "wrong password"}}).code, "bad_credentials");
  EXPECT_EQ(c2->Call("login", {{"username", "nobody"}, {"password", "whatever123"}}).code, "bad_credentials");
  ExpectStillUsableAndNothingStored();
}

TEST_F(BadInputE2E, SendIntoAForeignConversationOrToUnknownUsers) {
  Register(server_, "eve");
  Device e = Login(server_, "eve");
  EXPECT_EQ(e.conn->Call("send", {{"conversation_id", conv_}, {"client_id", "e"}, {"body", "x"}}).code, "not_member");
  EXPECT_EQ(e.conn->Call("send", {{"conversation_id", 999999}, {"client_id", "e"}, {"body", "x"}}).code, "not_member");
  EXPECT_EQ(a_.conn->Call("send", {{"to", "nosuchuser"}, {"client_id", "n"}, {"body", "x"}}).code, "unknown_user");
  EXPECT_EQ(a_.conn->Call("send", {{"to", "alice"}, {"client_id", "n"}, {"body", "x"}}).code, "self_conversation");
  EXPECT_EQ(a_.conn->Call("open_conversation", {{"username", "nosuchuser"}}).code, "unknown_user");
  EXPECT_EQ(a_.conn->Call("register", {{"username", "bob"}, {"password", "password123"}}).code, "username_taken");
  EXPECT_EQ(a_.conn->Call("register", {{"username", "9lives"}, {"password", "password123"}}).code, "invalid_username");
  EXPECT_EQ(a_.conn->Call("sync", {{"after", 1000000}}).code, "cursor_ahead");
  ExpectStillUsableAndNothingStored();
}

// Answers are cut to fit the outbound queue (protocol::kMaxPageBytes): a
// stream of the largest messages (each ~96 KiB encoded) once made a sync page
// of 200 events ~19 MB, over the 4 MiB queue, so the device was closed with
// 4003 (resync) and met the same page after every reconnect, for ever. Each
// body holds one word, so that search pages are full of them too.
TEST(PageSizeE2E, PagesOfTheLargestMessagesFitTheQueueAndLoseNothing) {
  constexpr int kMessages = 60;  // ~5.8 MB encoded: over the default 4 MiB queue
  ServerProcess server({"--search-index-interval-ms", "20", "--relaxed-rate-limits"});
  Register(server, "alice");
  Register(server, "bob");
  Device a = Login(server, "alice");
  Device b = Login(server, "bob");
  const int64_t b_from = b.head;
  b.conn.reset();  // offline: everything comes by sync
  const std::string body = "lunch" + std::string(protocol::kMaxBodyBytes - 5, '\x01');
  int64_t conv = 0;
  for (int i = 0; i < kMessages; ++i) {
    auto sent = a.conn->Call("send", {{"to", "bob"}, {"client_id", "big" + std::to_string(i)}, {"body", body}});
    ASSERT_TRUE(sent.ok) << sent.code << " " << sent.message;
    conv = sent.result["conversation_id"];
  }

  b = Reconnect(server, b);
  ASSERT_TRUE(b.conn);
  std::vector<int64_t> seqs;
  int64_t after = b_from;
  for (int pages = 0;; ++pages) {
    ASSERT_LT(pages, kMessages + 2) << "sync does not end";
    auto page = b.conn->Call("sync", {{"after", after}, {"limit", protocol::kMaxSyncLimit}});
    ASSERT_TRUE(page.ok) << page.code << " " << page.message;
    EXPECT_LE(page.frame.dump().size(), protocol::kMaxPageBytes + 4096);
    for (const auto& e : page.result["events"]) {
      if (e["kind"] != "message") continue;
      EXPECT_EQ(e["message"]["body"], body);
      seqs.push_back(e["message"]["seq"]);
    }
    after = page.result["next"];
    if (!page.result["has_more"]) break;
    EXPECT_LT(page.result["events"].size(), static_cast<size_t>(kMessages)) << "a full page was not cut";
  }
  ASSERT_EQ(seqs.size(), static_cast<size_t>(kMessages));
  for (int i = 0; i < kMessages; ++i) EXPECT_EQ(seqs[i], i + 1);

  // History pages backwards, newest first within what fits.
  std::vector<int64_t> history;
  json before = nullptr;
  for (int pages = 0;; ++pages) {
    ASSERT_LT(pages, kMessages + 2) << "history does not end";
    json req = {{"conversation_id", conv}, {"limit", protocol::kMaxHistoryLimit}};
    if (!before.is_null()) req["before"] = before;
    auto page = b.conn->Call("history", req);
    ASSERT_TRUE(page.ok) << page.code << " " << page.message;
    EXPECT_LE(page.frame.dump().size(), protocol::kMaxPageBytes + 4096);
    const auto& messages = page.result["messages"];
    ASSERT_FALSE(messages.empty());
    for (auto it = messages.rbegin(); it != messages.rend(); ++it) history.push_back((*it)["seq"]);
    before = messages.front()["seq"];
    if (!page.result["has_more"]) break;
  }
  ASSERT_EQ(history.size(), static_cast<size_t>(kMessages));
  for (int i = 0; i < kMessages; ++i) EXPECT_EQ(history[i], kMessages - i);

  // Snapshot and conversation list: fewer of the newest messages, the
  // conversation itself in full.
  for (const char* op : {"snapshot", "list_conversations"}) {
    auto r = b.conn->Call(op, {{"messages", protocol::kMaxSnapshotMessages}});
    ASSERT_TRUE(r.ok) << op << ": " << r.code << " " << r.message;
    EXPECT_LE(r.frame.dump().size(), protocol::kMaxPageBytes + 4096) << op;
    ASSERT_EQ(r.result["conversations"].size(), 1u) << op;
    const auto& summary = r.result["conversations"][0];
    EXPECT_EQ(summary["conversation"]["last_seq"], kMessages) << op;
    const auto& latest = summary["messages"];
    EXPECT_LT(latest.size(), static_cast<size_t>(kMessages)) << op;
    ASSERT_FALSE(latest.empty()) << op;
    EXPECT_EQ(latest.back()["seq"], kMessages) << op;
  }

  // Search (50 hits of ~96 KiB each would be ~4.8 MB): the newest that fit,
  // and `next` goes on right after the last of them. The indexer runs in the
  // background: wait until every message is found.
  std::vector<int64_t> found;
  for (int attempt = 0; attempt < 250 && found.size() != static_cast<size_t>(kMessages); ++attempt) {
    if (attempt > 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    found.clear();
    json next = nullptr;
    for (int pages = 0; pages < kMessages + 2; ++pages) {
      json req = {{"query", "lunch"}, {"limit", protocol::kMaxMessageSearchLimit}};
      if (!next.is_null()) req["before"] = next;
      auto page = b.conn->Call("search_messages", req);
      ASSERT_TRUE(page.ok) << page.code << " " << page.message;
      EXPECT_LE(page.frame.dump().size(), protocol::kMaxPageBytes + 4096);
      for (const auto& m : page.result["messages"]) {
        EXPECT_EQ(m["body"], body);
        found.push_back(m["seq"]);
      }
      next = page.result["next"];
      if (next.is_null()) break;
    }
  }
  ASSERT_EQ(found.size(), static_cast<size_t>(kMessages));
  for (int i = 0; i < kMessages; ++i) EXPECT_EQ(found[i], kMessages - i);
  EXPECT_TRUE(b.conn->Call("ping").ok) << "the connection was not kept";
}

}  // namespace
}  // namespace parley::testing
