// The authorization matrix (issue 8): for every request type of the
// protocol's registry, a user (mallory) tries it against objects that are not
// hers — alice and bob's conversation, alice's devices, contacts, messages,
// presence — and, separately, without a token and with a revoked one. Each
// gets the documented answer and changes nothing of anyone else's.
//
// A request type with no row fails the test: types added later cannot slip
// through. docs/protocol.md's completeness is tests/protocol/docs_test.cc.
#include <gtest/gtest.h>

#include <functional>
#include <map>

#include "e2e/helpers.h"
#include "protocol/frames.h"

namespace parley::testing {
namespace {

using protocol::RequestType;

// What alice and bob own that mallory must not read or change.
struct Victims {
  Device alice, bob;
  int64_t conv = 0;  // alice <-> bob, with two messages
};

struct Row {
  json fields;
  // The error code expected, or "" for success (then `check` looks at the result).
  std::string expect;
  std::function<void(const json& result, const Victims& v)> check;
};

// Mallory's attempt for each type. Types whose every form acts only on the
// caller's own data (no id of someone else's object can be named) succeed,
// and their check verifies nothing foreign came back.
std::map<RequestType, Row> Matrix(const Victims& v) {
  auto no_conv = [](const char* list) {
    return [list](const json& r, const Victims& vv) {
      for (const auto& c : r[list]) EXPECT_NE(c["conversation"]["conversation_id"], vv.conv) << list;
    };
  };
  return {
      {RequestType::kRegister, {{{"username", "alice"}, {"password", "another password"}}, "username_taken", {}}},
      {RequestType::kLogin, {{{"username", "alice"}, {"password", "mallory's guess"}}, "bad_credentials", {}}},
      {RequestType::kAuth, {{{"token", "forged-token-of-alice"}}, "invalid_token", {}}},
      {RequestType::kPing, {json::object(), "", [](const json& r, const Victims&) {
                              EXPECT_FALSE(r.contains("head")) << "an unauthenticated ping got a head";
                            }}},
      {RequestType::kLogout, {json::object(), "", {}}},  // run on a spare device of mallory's; see below
      {RequestType::kListDevices, {json::object(), "", [](const json& r, const Victims& vv) {
                                     for (const auto& d : r["devices"]) {
                                       EXPECT_NE(d["device_id"], vv.alice.device_id);
                                       EXPECT_NE(d["device_id"], vv.bob.device_id);
                                     }
                                   }}},
      {RequestType::kUnlinkDevice, {{{"device_id", v.alice.device_id}}, "unknown_device", {}}},
      {RequestType::kOpenConversation, {{{"username", "alice"}}, "", [](const json& r, const Victims& vv) {
                                          EXPECT_NE(r["conversation"]["conversation_id"], vv.conv);
                                        }}},
      {RequestType::kSend, {{{"conversation_id", v.conv}, {"client_id", "m1"}, {"body", "hi"}}, "not_member", {}}},
      {RequestType::kReceipt, {{{"items", {{{"conversation_id", v.conv}, {"read", 2}}}}}, "not_member", {}}},
      {RequestType::kSync, {{{"after", 0}}, "", [](const json& r, const Victims& vv) {
                              for (const auto& e : r["events"]) {
                                EXPECT_NE(e.value("conversation_id", int64_t{0}), vv.conv);
                                if (e.contains("message")) {
                                  EXPECT_NE(e["message"]["conversation_id"], vv.conv);
                                }
                              }
                            }}},
      {RequestType::kAck, {{{"user_seq", 1'000'000}}, "cursor_ahead", {}}},
      {RequestType::kHistory, {{{"conversation_id", v.conv}}, "not_member", {}}},
      {RequestType::kSnapshot, {json::object(), "", no_conv("conversations")}},
      {RequestType::kListConversations, {json::object(), "", [](const json& r, const Victims& vv) {
                                           for (const auto& c : r["conversations"])
                                             EXPECT_NE(c["conversation"]["conversation_id"], vv.conv);
                                         }}},
      {RequestType::kSetProfile, {{{"display_name", "Mallory"}}, "", [](const json& r, const Victims& vv) {
                                    EXPECT_NE(r["profile"]["user_id"], vv.alice.user_id);
                                  }}},
      // bob is alice's contact, not mallory's: her list is hers alone.
      {RequestType::kAddContact, {{{"username", "bob"}}, "", {}}},
      {RequestType::kRemoveContact, {{{"username", "alice"}}, "not_contact", {}}},
      {RequestType::kListContacts, {json::object(), "", [](const json& r, const Victims& vv) {
                                      for (const auto& c : r["contacts"]) {
                                        EXPECT_NE(c["user"]["user_id"], vv.alice.user_id);
                                        // bob hides his presence from non-contacts.
                                        EXPECT_EQ(c["presence"]["online"], false);
                                      }
                                    }}},
      {RequestType::kBlock, {{{"username", "nobodyhere"}}, "unknown_user", {}}},
      {RequestType::kUnblock, {{{"username", "bob"}}, "not_blocked", {}}},
      {RequestType::kListBlocked, {json::object(), "", [](const json& r, const Victims&) {
                                     EXPECT_TRUE(r["users"].empty());
                                   }}},
      {RequestType::kSearchUsers, {{{"query", "ali"}}, "", {}}},
      {RequestType::kChangePassword,
       {{{"old_password", "correct horse"}, {"new_password", "mallory owns this"}}, "wrong_password", {}}},
      {RequestType::kTyping, {{{"conversation_id", v.conv}, {"state", "start"}}, "not_member", {}}},
      {RequestType::kSetAppState, {{{"state", "background"}}, "", {}}},
      {RequestType::kSetPrivacy, {{{"presence", "everyone"}}, "", [](const json& r, const Victims&) {
                                    EXPECT_EQ(r["presence"], "everyone");
                                  }}},
      {RequestType::kSubscribePresence, {{{"user_ids", {v.bob.user_id}}}, "", [](const json& r, const Victims&) {
                                           ASSERT_EQ(r["presence"].size(), 1u);
                                           EXPECT_EQ(r["presence"][0]["online"], false) << "bob shows contacts only";
                                           EXPECT_FALSE(r["presence"][0].contains("last_seen"));
                                         }}},
      // Someone else's message (a member who is not its sender gets
      // `forbidden`: admin_e2e_test).
      {RequestType::kMessageInfo, {{{"conversation_id", v.conv}, {"seq", 1}}, "not_member", {}}},
      // Push (issue 11): only the caller's own device and conversations.
      {RequestType::kRegisterPush, {{{"provider", "webhook"}, {"token", "mallory-token"}}, "",
                                    [](const json& r, const Victims& vv) {
                                      EXPECT_NE(r["device_id"], vv.alice.device_id);
                                      EXPECT_NE(r["device_id"], vv.bob.device_id);
                                    }}},
      {RequestType::kUnregisterPush, {json::object(), "", [](const json& r, const Victims& vv) {
                                        EXPECT_NE(r["device_id"], vv.alice.device_id);
                                      }}},
      {RequestType::kMuteConversation, {{{"conversation_id", v.conv}, {"muted", true}}, "not_member", {}}},
      {RequestType::kSetPushPreviews, {{{"previews", false}}, "", {}}},
      {RequestType::kPushSettings, {json::object(), "", [](const json& r, const Victims&) {
                                      EXPECT_EQ(r["muted"], json::array()) << "mallory muted nothing";
                                    }}},
      // Edits and deletes (issue 12): another conversation's message. (A
      // member who is not the sender gets `forbidden`: edits_e2e_test.)
      {RequestType::kEditMessage,
       {{{"conversation_id", v.conv}, {"seq", 1}, {"client_id", "e1"}, {"body", "mallory was here"}}, "not_member", {}}},
      {RequestType::kDeleteMessage, {{{"conversation_id", v.conv}, {"seq", 1}, {"for", "everyone"}}, "not_member", {}}},
      // Drafts (issue 12): only in the caller's own conversations.
      {RequestType::kSetDraft, {{{"conversation_id", v.conv}, {"text", "mallory's draft"}}, "not_member", {}}},
      // Message search (issue 12): never in someone else's conversation.
      {RequestType::kSearchMessages, {{{"query", "bob"}, {"conversation_id", v.conv}}, "not_member", {}}},
      // Retention (issue 12): no timer on someone else's conversation.
      {RequestType::kSetDisappearing, {{{"conversation_id", v.conv}, {"seconds", 1}}, "not_member", {}}},
      // Selective sync (issue 12): only the caller's own conversations can be selected.
      {RequestType::kSelectSync, {{{"conversations", {v.conv}}}, "not_member", {}}},
  };
}

// Everything of alice's and bob's that the matrix must leave alone.
json Observe(const Victims& v) {
  json o;
  o["history"] = v.alice.conn->Call("history", {{"conversation_id", v.conv}}).result["messages"];
  o["alice_devices"] = v.alice.conn->Call("list_devices").result["devices"].size();
  o["alice_contacts"] = v.alice.conn->Call("list_contacts").result["contacts"].size();
  o["bob_contacts"] = v.bob.conn->Call("list_contacts").result["contacts"].size();
  o["alice_blocked"] = v.alice.conn->Call("list_blocked").result["users"].size();
  auto conv = v.bob.conn->Call("list_conversations").result["conversations"];
  o["bob_conversations"] = conv.size();
  o["bob_unread"] = conv.empty() ? json(nullptr) : conv[0]["unread"];
  o["bob_disappearing"] = conv.empty() ? json(nullptr) : conv[0]["conversation"]["disappearing_s"];
  return o;
}

class AuthorizationMatrix : public ::testing::Test {
 protected:
  void SetUp() override {
    Register(server_, "alice");
    Register(server_, "bob");
    Register(server_, "mallory", kMalloryPassword);
    v_.alice = Login(server_, "alice");
    v_.bob = Login(server_, "bob");
    mallory_ = Login(server_, "mallory", "laptop", kMalloryPassword);
    auto s = v_.alice.conn->Call("send", {{"to", "bob"}, {"client_id", "a1"}, {"body", "for bob only"}});
    ASSERT_TRUE(s.ok);
    v_.conv = s.result["conversation_id"];
    ASSERT_TRUE(v_.bob.conn->Call("send", {{"conversation_id", v_.conv}, {"client_id", "b1"}, {"body", "hi"}}).ok);
    ASSERT_TRUE(v_.alice.conn->Call("add_contact", {{"username", "bob"}}).ok);
    ASSERT_TRUE(v_.bob.conn->Call("add_contact", {{"username", "alice"}}).ok);
    ASSERT_TRUE(v_.bob.conn->Call("set_privacy", {{"presence", "contacts"}}).ok);
    v_.alice.head = v_.alice.conn->Call("ping").result["head"];
  }

  static constexpr const char* kMalloryPassword = "mallory's own password";
  ServerProcess server_;
  Victims v_;
  Device mallory_;
};

TEST_F(AuthorizationMatrix, EveryRequestTypeAgainstSomeoneElsesObjects) {
  json before = Observe(v_);
  std::map<RequestType, Row> matrix = Matrix(v_);
  for (RequestType t : protocol::AllRequestTypes()) {
    std::string type(protocol::RequestTypeName(t));
    auto row = matrix.find(t);
    ASSERT_NE(row, matrix.end()) << "request type '" << type << "' has no row in the authorization matrix";
    // Public types (register, login, auth, ping, set_app_state) run on a
    // fresh connection; logout ends its connection, so it gets a spare device.
    Device spare;
    std::unique_ptr<Connection> fresh;
    Connection* conn = mallory_.conn.get();
    if (!protocol::RequestNeedsAuth(t)) {
      fresh = server_.Connect();
      conn = fresh.get();
    } else if (t == RequestType::kLogout) {
      spare = Login(server_, "mallory", "spare", kMalloryPassword);
      conn = spare.conn.get();
    }
    Reply r = conn->Call(type, row->second.fields);
    if (row->second.expect.empty()) {
      EXPECT_TRUE(r.ok) << type << ": " << r.code << " " << r.message;
      if (r.ok && row->second.check) {
        SCOPED_TRACE(type);
        row->second.check(r.result, v_);
      }
    } else {
      EXPECT_EQ(r.code, row->second.expect) << type;
    }
  }
  EXPECT_EQ(Observe(v_), before) << "mallory changed something of alice's or bob's";
  // Alice's stream got only what anyone may cause: the conversation mallory
  // opened with her, and then mallory's own profile change.
  auto events = SyncAll(*v_.alice.conn, v_.alice.head);
  ASSERT_EQ(events.size(), 2u) << json(events).dump();
  EXPECT_EQ(events[0]["kind"], "conversation");
  EXPECT_EQ(events[1]["kind"], "profile");
  EXPECT_EQ(events[1]["profile"]["user_id"], mallory_.user_id);
  // Alice's password and device still work.
  EXPECT_TRUE(Login(server_, "alice", "check").conn);
}

TEST_F(AuthorizationMatrix, EveryRequestWithoutOrWithARevokedToken) {
  json before = Observe(v_);
  Device revoked = Login(server_, "mallory", "stolen", kMalloryPassword);
  ASSERT_TRUE(mallory_.conn->Call("unlink_device", {{"device_id", revoked.device_id}}).ok);
  auto fresh = server_.Connect();
  EXPECT_EQ(fresh->Call("auth", {{"token", revoked.token}}).code, "invalid_token");
  std::map<RequestType, Row> matrix = Matrix(v_);
  for (RequestType t : protocol::AllRequestTypes()) {
    if (!protocol::RequestNeedsAuth(t)) continue;  // register, login, auth, ping, set_app_state: public
    std::string type(protocol::RequestTypeName(t));
    ASSERT_NE(matrix.find(t), matrix.end()) << type << " has no row";
    auto c = server_.Connect();
    EXPECT_EQ(c->Call(type, matrix[t].fields).code, "not_authenticated") << type << " without a token";
    EXPECT_EQ(fresh->Call(type, matrix[t].fields).code, "not_authenticated") << type << " after a refused token";
  }
  EXPECT_EQ(Observe(v_), before);
}

}  // namespace
}  // namespace parley::testing
