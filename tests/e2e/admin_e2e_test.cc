// Operations end to end (issue 8): the message timeline through the protocol
// ("message_info") and the admin API, every parley-admin command against a
// real parleyd (exit codes and errors included), and an online backup taken
// while a sender keeps sending, restored offline into a new data dir that a
// new parleyd then serves with every acknowledged message.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "e2e/helpers.h"
#include "store/cold_block.h"
#include "test_paths.h"

namespace parley::testing {
namespace {

constexpr const char* kToken = "admin-e2e-token";

struct ToolResult {
  int exit_code = -1;
  std::string out;  // stdout (stderr is folded in when `merge_stderr`)
};

// Runs parley-admin with `args` (each already shell-safe).
ToolResult Tool(const std::string& args, bool merge_stderr = true) {
  std::string cmd = parley::testing::BinDir() + "/parley-admin " + args + (merge_stderr ? " 2>&1" : "");
  ToolResult r;
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  int status = pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

std::string Server(const ServerProcess& s) { return "--server http://127.0.0.1:" + std::to_string(s.port()); }

// parley-admin against `s` with the right token; the JSON it printed.
json AdminOk(const ServerProcess& s, const std::string& args) {
  ToolResult r = Tool(Server(s) + " --token " + kToken + " " + args, /*merge_stderr=*/false);
  EXPECT_EQ(r.exit_code, 0) << args << ": " << r.out;
  json j = json::parse(r.out, nullptr, false);
  EXPECT_FALSE(j.is_discarded()) << r.out;
  return j;
}

const json* FindDevice(const json& info, int64_t device_id) {
  for (const auto& m : info["members"])
    for (const auto& d : m["devices"])
      if (d["device_id"] == device_id) return &d;
  return nullptr;
}

class AdminE2E : public ::testing::Test {
 protected:
  AdminE2E() : server_({"--admin-token", kToken}) {}
  ServerProcess server_;
};

TEST_F(AdminE2E, MessageTimelineOfAMessageReadOnOneOfTwoDevicesShowsBothDeliveriesAndTheOneRead) {
  Register(server_, "alice");
  Register(server_, "bob");
  Register(server_, "carol");
  Device alice = Login(server_, "alice", "laptop");
  Device bob1 = Login(server_, "bob", "phone");
  Device bob2 = Login(server_, "bob", "tablet");
  Device carol = Login(server_, "carol");
  auto sent = alice.conn->Call("send", {{"to", "bob"}, {"client_id", "m1"}, {"body", "hello"}});
  ASSERT_TRUE(sent.ok) << sent.code;
  int64_t conv = sent.result["conversation_id"], seq = sent.result["seq"];
  ASSERT_TRUE(bob1.conn->Call("receipt", {{"items", {{{"conversation_id", conv}, {"delivered", seq}}}}}).ok);
  ASSERT_TRUE(bob2.conn->Call("receipt", {{"items", {{{"conversation_id", conv}, {"delivered", seq}}}}}).ok);
  ASSERT_TRUE(bob1.conn->Call("receipt", {{"items", {{{"conversation_id", conv}, {"read", seq}}}}}).ok);

  auto info = alice.conn->Call("message_info", {{"conversation_id", conv}, {"seq", seq}});
  ASSERT_TRUE(info.ok) << info.code << ": " << info.message;
  const json& r = info.result;
  EXPECT_EQ(r["client_id"], "m1");
  ASSERT_TRUE(r["accepted_at"].is_number());
  ASSERT_TRUE(r["stored_at"].is_number());
  EXPECT_LE(r["accepted_at"].get<int64_t>(), r["stored_at"].get<int64_t>());
  ASSERT_EQ(r["members"].size(), 2u);
  const json* own = FindDevice(r, alice.device_id);
  ASSERT_NE(own, nullptr);
  EXPECT_EQ((*own)["sending_device"], true);
  EXPECT_EQ((*own)["name"], "laptop");
  const json* b1 = FindDevice(r, bob1.device_id);
  const json* b2 = FindDevice(r, bob2.device_id);
  ASSERT_NE(b1, nullptr);
  ASSERT_NE(b2, nullptr);
  EXPECT_TRUE((*b1)["delivered_at"].is_number());
  EXPECT_TRUE((*b2)["delivered_at"].is_number());
  EXPECT_TRUE((*b1)["read_at"].is_number());
  EXPECT_TRUE((*b2)["read_at"].is_null());
  EXPECT_GE((*b1)["read_at"].get<int64_t>(), r["stored_at"].get<int64_t>());
  EXPECT_FALSE(b1->contains("name")) << "another member's device names are not shown";

  // Only the sender's devices may ask; the others get the documented errors.
  auto bobs = bob1.conn->Call("message_info", {{"conversation_id", conv}, {"seq", seq}});
  EXPECT_EQ(bobs.code, "forbidden");
  auto carols = carol.conn->Call("message_info", {{"conversation_id", conv}, {"seq", seq}});
  EXPECT_EQ(carols.code, "not_member");
  auto missing = alice.conn->Call("message_info", {{"conversation_id", conv}, {"seq", seq + 5}});
  EXPECT_EQ(missing.code, "unknown_message");

  // The admin API's timeline: the same times, with device names.
  json t = AdminOk(server_, "timeline " + std::to_string(conv) + " " + std::to_string(seq));
  EXPECT_EQ(t["stored_at"], r["stored_at"]);
  EXPECT_FALSE(t.contains("body"));
  const json* ab1 = FindDevice(t, bob1.device_id);
  ASSERT_NE(ab1, nullptr);
  EXPECT_EQ((*ab1)["name"], "phone");
  EXPECT_EQ((*ab1)["read_at"], (*b1)["read_at"]);
  EXPECT_EQ((*FindDevice(t, bob2.device_id))["read_at"], nullptr);
  ToolResult none = Tool(Server(server_) + " --token " + kToken + " timeline " + std::to_string(conv) + " 99");
  EXPECT_EQ(none.exit_code, 1);
  EXPECT_NE(none.out.find("unknown_message"), std::string::npos) << none.out;
}

TEST_F(AdminE2E, UserAndDeviceCommandsWorkAndFailClearly) {
  // create, show
  json created = AdminOk(server_, "user create dave --password 'dave password' --display-name Dave");
  EXPECT_EQ(created["username"], "dave");
  Device dave = Login(server_, "dave", "phone", "dave password");
  ASSERT_GT(dave.device_id, 0);
  json shown = AdminOk(server_, "user show dave");
  EXPECT_EQ(shown["disabled"], false);
  EXPECT_EQ(shown["display_name"], "Dave");
  EXPECT_EQ(shown["devices"], 1);
  ToolResult taken = Tool(Server(server_) + " --token " + kToken + " user create dave --password 'x password'");
  EXPECT_EQ(taken.exit_code, 1);
  EXPECT_NE(taken.out.find("username_taken"), std::string::npos) << taken.out;

  // device list / revoke: the revoked device is disconnected and its token dies.
  Device second = Login(server_, "dave", "tablet", "dave password");
  json devices = AdminOk(server_, "device list dave");
  ASSERT_EQ(devices["devices"].size(), 2u);
  AdminOk(server_, "device revoke dave " + std::to_string(second.device_id));
  EXPECT_TRUE(second.conn->WaitClosed(5000));
  EXPECT_EQ(second.conn->close_code(), 4002);
  auto again = server_.Connect()->Call("auth", {{"token", second.token}});
  EXPECT_EQ(again.code, "invalid_token");
  ToolResult no_device = Tool(Server(server_) + " --token " + kToken + " device revoke dave 99999");
  EXPECT_EQ(no_device.exit_code, 1);
  EXPECT_NE(no_device.out.find("unknown_device"), std::string::npos) << no_device.out;

  // disable: connections closed, login and auth refused; enable undoes it.
  json disabled = AdminOk(server_, "user disable dave");
  EXPECT_EQ(disabled["disabled"], true);
  EXPECT_TRUE(dave.conn->WaitClosed(5000));
  // Not revoked: the token is kept, so the close says "come back later".
  EXPECT_EQ(dave.conn->close_code(), 4005);
  EXPECT_EQ(json::parse(dave.conn->close_reason())["retry_after_ms"], 60000) << dave.conn->close_reason();
  auto login = server_.Connect()->Call("login", {{"username", "dave"}, {"password", "dave password"},
                                                 {"device_name", "x"}, {"platform", "gtest"}});
  EXPECT_EQ(login.code, "user_disabled");
  auto auth = server_.Connect()->Call("auth", {{"token", dave.token}});
  EXPECT_EQ(auth.code, "user_disabled");
  EXPECT_EQ(auth.frame["retry_after_ms"], 60000) << "the token is kept: the answer says when to try again";
  EXPECT_EQ(AdminOk(server_, "user show dave")["disabled"], true);
  AdminOk(server_, "user enable dave");
  Device back = Reconnect(server_, dave);
  EXPECT_EQ(back.device_id, dave.device_id);

  // delete: disabled and every device revoked.
  json deleted = AdminOk(server_, "user delete dave");
  EXPECT_EQ(deleted["revoked_devices"].size(), 1u);
  EXPECT_TRUE(back.conn->WaitClosed(5000));
  EXPECT_EQ(server_.Connect()->Call("auth", {{"token", dave.token}}).code, "invalid_token");
  EXPECT_TRUE(AdminOk(server_, "device list dave")["devices"].empty());

  // stats and schema
  json stats = AdminOk(server_, "stats");
  EXPECT_EQ(stats["backend"], "sqlite");
  EXPECT_EQ(stats["users"], 1);
  EXPECT_EQ(stats["disabled_users"], 1);
  json schema = AdminOk(server_, "schema");
  EXPECT_EQ(schema["current"], schema["latest"]);
  EXPECT_TRUE(schema["pending"].empty());

  // Clear failures: unknown user, wrong token, no server, bad usage.
  ToolResult unknown = Tool(Server(server_) + " --token " + kToken + " user disable nobody");
  EXPECT_EQ(unknown.exit_code, 1);
  EXPECT_NE(unknown.out.find("unknown_user"), std::string::npos) << unknown.out;
  ToolResult wrong = Tool(Server(server_) + " --token wrong-token stats");
  EXPECT_EQ(wrong.exit_code, 1);
  EXPECT_NE(wrong.out.find("forbidden"), std::string::npos) << wrong.out;
  ToolResult no_token = Tool(Server(server_) + " stats");
  EXPECT_EQ(no_token.exit_code, 2);
  ToolResult usage = Tool(Server(server_) + " --token " + kToken + " user frobnicate x");
  EXPECT_EQ(usage.exit_code, 2);
  ToolResult down = Tool("--server http://127.0.0.1:1 --token " + std::string(kToken) + " stats");
  EXPECT_EQ(down.exit_code, 3);
  EXPECT_NE(down.out.find("cannot connect"), std::string::npos) << down.out;
  ToolResult bad_name = Tool(Server(server_) + " --token " + kToken + " backup --name ../escape.db");
  EXPECT_EQ(bad_name.exit_code, 1);
  EXPECT_NE(bad_name.out.find("bad_request"), std::string::npos) << bad_name.out;
}

// Compliance export: everything of the user, exactly what their own devices
// see (a blocked sender's messages absent, a deleted one a tombstone, an edit
// current), nothing of other users' conversations, no secrets; the pages of
// a long conversation join up in order.
TEST_F(AdminE2E, UserExportHoldsAllOfTheUsersDataAsTheirDevicesSeeItAndNothingElse) {
  for (const char* u : {"erin", "frank", "gail", "hal"}) Register(server_, u);
  Device erin = Login(server_, "erin", "laptop");
  Device frank = Login(server_, "frank");
  Device gail = Login(server_, "gail");
  Device hal = Login(server_, "hal");
  ASSERT_TRUE(erin.conn->Call("set_profile", {{"display_name", "Erin E"}, {"about", "hi there"}}).ok);
  ASSERT_TRUE(erin.conn->Call("add_contact", {{"username", "frank"}}).ok);
  ASSERT_TRUE(erin.conn->Call("block", {{"username", "gail"}}).ok);
  // erin <-> frank: 1,203 messages (pages of 500 through the API), one edited, one deleted.
  constexpr int kLong = 1203;
  int64_t conv = 0;
  for (int i = 0; i < kLong; ++i) {
    Device& from = i % 2 ? frank : erin;
    auto r = from.conn->Call("send", {{"to", i % 2 ? "erin" : "frank"}, {"client_id", "m" + std::to_string(i)},
                                       {"body", "msg " + std::to_string(i)}});
    ASSERT_TRUE(r.ok) << r.code;
    conv = r.result["conversation_id"];
  }
  auto edited = erin.conn->Call("edit_message",
                                {{"conversation_id", conv}, {"seq", 1}, {"client_id", "e1"}, {"body", "edited 0"}});
  ASSERT_TRUE(edited.ok) << edited.code;
  auto deleted = erin.conn->Call("delete_message", {{"conversation_id", conv}, {"seq", 3}, {"for", "everyone"}});
  ASSERT_TRUE(deleted.ok) << deleted.code;
  ASSERT_TRUE(erin.conn->Call("set_draft", {{"conversation_id", conv}, {"text", "half a thought"}}).ok);
  // gail is blocked: her message is withheld from erin.
  auto withheld = gail.conn->Call("send", {{"to", "erin"}, {"client_id", "g0"}, {"body", "you cannot see this"}});
  ASSERT_TRUE(withheld.ok);
  // frank <-> hal: not erin's.
  auto other = hal.conn->Call("send", {{"to", "frank"}, {"client_id", "h0"}, {"body", "not erin's business"}});
  ASSERT_TRUE(other.ok);

  std::string file = server_.dir() + "/erin.json";
  ToolResult r = Tool(Server(server_) + " --token " + kToken + " user export erin --out " + file);
  ASSERT_EQ(r.exit_code, 0) << r.out;
  std::ifstream in(file);
  json doc = json::parse(in, nullptr, false);
  ASSERT_FALSE(doc.is_discarded());
  EXPECT_EQ(doc["format"], "parley-user-export");
  EXPECT_EQ(doc["version"], 1);
  EXPECT_EQ(doc["user"]["username"], "erin");
  EXPECT_EQ(doc["user"]["display_name"], "Erin E");
  EXPECT_EQ(doc["user"]["about"], "hi there");
  ASSERT_EQ(doc["devices"].size(), 1u);
  EXPECT_EQ(doc["devices"][0]["name"], "laptop");
  ASSERT_EQ(doc["contacts"].size(), 1u);
  EXPECT_EQ(doc["contacts"][0]["username"], "frank");
  ASSERT_EQ(doc["blocked"].size(), 1u);
  EXPECT_EQ(doc["blocked"][0]["username"], "gail");
  std::string text = doc.dump();
  for (const char* secret : {"password", "token", "hash", "not erin's business", "you cannot see this"}) {
    EXPECT_EQ(text.find(secret), std::string::npos) << secret << " is in the export";
  }
  // Two conversations: frank's (all 1,203, in order) and gail's (nothing visible).
  ASSERT_EQ(doc["conversations"].size(), 2u);
  const json* with_frank = nullptr;
  for (const auto& c : doc["conversations"]) {
    if (c["conversation_id"] == conv) with_frank = &c;
    else EXPECT_TRUE(c["messages"].empty()) << c.dump();
  }
  ASSERT_NE(with_frank, nullptr);
  EXPECT_EQ((*with_frank)["draft"]["text"], "half a thought");
  const json& msgs = (*with_frank)["messages"];
  ASSERT_EQ(msgs.size(), static_cast<size_t>(kLong));
  for (int i = 0; i < kLong; ++i) {
    const json& m = msgs[static_cast<size_t>(i)];
    EXPECT_EQ(m["seq"], i + 1);
    EXPECT_EQ(m["client_id"], "m" + std::to_string(i));
    if (i == 0) {
      EXPECT_EQ(m["body"], "edited 0");
      EXPECT_EQ(m["version"], 1);
    } else if (i == 2) {
      EXPECT_EQ(m["body"], "");
      EXPECT_GT(m["deleted_at"], 0);
    } else {
      EXPECT_EQ(m["body"], "msg " + std::to_string(i));
    }
  }

  // The API refuses what is not the user's or not well formed.
  auto get = [&](const std::string& path, int* status) {
    return json::parse(HttpGetAuthorized(server_.port(), path, std::string("Bearer ") + kToken, status), nullptr, false);
  };
  int status = 0;
  json refused = get("/admin/v1/users/erin/export/conversations/" + std::to_string(other.result["conversation_id"].get<int64_t>()),
                     &status);
  EXPECT_EQ(status, 404);
  EXPECT_EQ(refused["code"], "unknown_conversation");
  get("/admin/v1/users/erin/export/conversations/" + std::to_string(conv) + "?limit=0", &status);
  EXPECT_EQ(status, 400);
  get("/admin/v1/users/erin/export/conversations/" + std::to_string(conv) + "?limit=2001", &status);
  EXPECT_EQ(status, 400);
  get("/admin/v1/users/erin/export/conversations/" + std::to_string(conv) + "?before=x", &status);
  EXPECT_EQ(status, 400);
  get("/admin/v1/users/nobody/export", &status);
  EXPECT_EQ(status, 404);
  ToolResult unknown = Tool(Server(server_) + " --token " + kToken + " user export nobody");
  EXPECT_EQ(unknown.exit_code, 1);
  EXPECT_NE(unknown.out.find("unknown_user"), std::string::npos) << unknown.out;
}

// Compliance erase (docs/operations.md "User erase"): the export before holds
// the user's data; the erase removes the account's data, deletes every
// message the user sent for everyone (past the delete window, over more than
// one page, including one they had hidden for themselves), and verifies it;
// afterwards the export of what is left and the other users' views hold
// only what the policy keeps.
TEST_F(AdminE2E, EraseLeavesOnlyWhatThePolicyKeepsAndVerifiesIt) {
  for (const char* u : {"ivy", "jack", "kim", "lee"}) Register(server_, u);
  Device ivy = Login(server_, "ivy", "ivy phone");
  Device jack = Login(server_, "jack");
  Device kim = Login(server_, "kim");
  Device lee = Login(server_, "lee");
  ASSERT_TRUE(ivy.conn->Call("set_profile", {{"display_name", "Ivy Secret"}, {"about", "private about"}}).ok);
  ASSERT_TRUE(ivy.conn->Call("add_contact", {{"username", "jack"}}).ok);
  ASSERT_TRUE(ivy.conn->Call("block", {{"username", "lee"}}).ok);
  ASSERT_TRUE(kim.conn->Call("add_contact", {{"username", "ivy"}}).ok);
  // ivy <-> jack: 1,010 messages (two erase pages of 500), ivy's are the even ones.
  constexpr int kMessages = 1010;
  int64_t conv = 0;
  for (int i = 0; i < kMessages; ++i) {
    Device& from = i % 2 ? jack : ivy;
    auto r = from.conn->Call("send", {{"to", i % 2 ? "ivy" : "jack"}, {"client_id", "m" + std::to_string(i)},
                                       {"body", (i % 2 ? "jack says " : "ivy says ") + std::to_string(i)}});
    ASSERT_TRUE(r.ok) << r.code;
    conv = r.result["conversation_id"];
  }
  ASSERT_TRUE(ivy.conn->Call("edit_message", {{"conversation_id", conv}, {"seq", 1}, {"client_id", "e1"},
                                              {"body", "ivy edited"}}).ok);
  ASSERT_TRUE(ivy.conn->Call("delete_message", {{"conversation_id", conv}, {"seq", 3}, {"for", "me"}}).ok);
  ASSERT_TRUE(ivy.conn->Call("set_draft", {{"conversation_id", conv}, {"text", "ivy's draft"}}).ok);
  json before = AdminOk(server_, "user export ivy");
  EXPECT_EQ(before["user"]["display_name"], "Ivy Secret");
  EXPECT_EQ(before["devices"].size(), 1u);
  EXPECT_EQ(before["contacts"].size(), 1u);
  EXPECT_EQ(before["blocked"].size(), 1u);

  // Refused without confirmation, and for an unknown user.
  ToolResult unconfirmed = Tool(Server(server_) + " --token " + kToken + " user erase ivy");
  EXPECT_NE(unconfirmed.exit_code, 0) << unconfirmed.out;
  ToolResult unknown = Tool(Server(server_) + " --token " + kToken + " user erase nobody --yes");
  EXPECT_EQ(unknown.exit_code, 1);
  EXPECT_NE(unknown.out.find("unknown_user"), std::string::npos) << unknown.out;

  json erased = AdminOk(server_, "user erase ivy --yes");
  const std::string name = "~erased-" + std::to_string(ivy.user_id);
  EXPECT_EQ(erased["verified"], true) << erased.dump();
  EXPECT_EQ(erased["username"], name);
  EXPECT_EQ(erased["erased_username"], "ivy");
  EXPECT_EQ(erased["removed"]["devices_revoked"], 1);
  EXPECT_EQ(erased["removed"]["contacts"], 2);  // ivy's of jack, kim's of ivy
  EXPECT_EQ(erased["removed"]["blocks"], 1);
  EXPECT_EQ(erased["removed"]["drafts"], 1);
  EXPECT_EQ(erased["removed"]["messages_deleted"], kMessages / 2);
  // Again: nothing more to do, still verified.
  json again = AdminOk(server_, "user erase " + name + " --yes");
  EXPECT_EQ(again["verified"], true);
  EXPECT_EQ(again["removed"]["messages_deleted"], 0);

  // The account is gone for its owner: the connection closed, the token and
  // the password refused; the name is free for someone else.
  EXPECT_TRUE(Eventually([&] { return !ivy.conn->Call("ping", json::object()).ok; }, 5000));
  auto relogin = server_.Connect()->Call("login", {{"username", "ivy"}, {"password", "correct horse"},
                                                   {"device_name", "x"}, {"platform", "gtest"}});
  EXPECT_FALSE(relogin.ok);
  EXPECT_FALSE(server_.Connect()->Call("auth", {{"token", ivy.token}}).ok);

  // What is left: the account as a blank, disabled name; the conversation
  // with jack, every one of ivy's messages a tombstone with its seq and
  // client id, jack's messages as they were.
  json after = AdminOk(server_, "user export " + name);
  EXPECT_EQ(after["user"]["username"], name);
  EXPECT_EQ(after["user"]["display_name"], "");
  EXPECT_EQ(after["user"]["about"], "");
  EXPECT_EQ(after["user"]["disabled"], true);
  EXPECT_TRUE(after["devices"].empty());
  EXPECT_TRUE(after["contacts"].empty());
  EXPECT_TRUE(after["blocked"].empty());
  ASSERT_EQ(after["conversations"].size(), 1u);
  EXPECT_FALSE(after["conversations"][0].contains("draft"));
  const json& msgs = after["conversations"][0]["messages"];
  ASSERT_EQ(msgs.size(), static_cast<size_t>(kMessages - 1)) << "seq 3 stays hidden from ivy's own view";
  std::string text = after.dump();
  for (const char* gone : {"Ivy Secret", "private about", "ivy says", "ivy edited", "ivy's draft", "ivy phone"})
    EXPECT_EQ(text.find(gone), std::string::npos) << gone << " is still in the export";
  for (const json& m : msgs) {
    const int64_t seq = m["seq"];
    EXPECT_EQ(m["client_id"], "m" + std::to_string(seq - 1));
    if (seq % 2 == 1) {
      EXPECT_EQ(m["body"], "") << seq;
      EXPECT_GT(m["deleted_at"], 0) << seq;
    } else {
      EXPECT_EQ(m["body"], "jack says " + std::to_string(seq - 1));
    }
  }
  // jack's view: the tombstones, by history; kim's contact list lost ivy; the
  // contact event in kim's stream no longer names her.
  auto history = jack.conn->Call("history", {{"conversation_id", conv}, {"limit", 10}});
  ASSERT_TRUE(history.ok);
  for (const json& m : history.result["messages"]) {
    if (m["sender_id"] == ivy.user_id) {
      EXPECT_EQ(m.value("body", ""), "") << m.dump();
    }
  }
  auto contacts = kim.conn->Call("list_contacts", json::object());
  ASSERT_TRUE(contacts.ok);
  EXPECT_TRUE(contacts.result["contacts"].empty()) << contacts.result.dump();
  std::string kims_stream;
  for (const json& e : SyncAll(*kim.conn, 0)) kims_stream += e.dump();
  EXPECT_EQ(kims_stream.find("Ivy Secret"), std::string::npos);
  // A retry of one of ivy's client ids would still find its tombstone: the
  // seqs and dedup keys are kept (the export showed every client id).
  Register(server_, "ivy");
  Device new_ivy = Login(server_, "ivy");
  EXPECT_NE(new_ivy.user_id, ivy.user_id);
  // jack, who sent to "ivy" by name before, now writes to the new ivy: a new
  // conversation with her, not the erased account's.
  auto to_new = jack.conn->Call("send", {{"to", "ivy"}, {"client_id", "to-new-ivy"}, {"body", "hello, new ivy"}});
  ASSERT_TRUE(to_new.ok) << to_new.code;
  EXPECT_NE(to_new.result["conversation_id"], conv) << "sent to the erased account's conversation";
  EXPECT_TRUE(WaitEvent(*new_ivy.conn, IsMessage(to_new.result["seq"].get<int64_t>()), 3000).has_value())
      << "the new ivy did not get jack's message";
  // The erase closed ivy's connection after removing her last seen; that
  // close (stored within --last-seen-flush-ms, 1 s) must not bring it back.
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  json shown = AdminOk(server_, "user show " + name);
  EXPECT_TRUE(!shown.contains("last_seen") || shown["last_seen"].is_null()) << shown.dump();
}

// The blocks of `table` (message_blocks or edit_blocks) of conversation
// `conv` in `s`'s store, read with the command-line client: first_seq -> the
// block's bytes.
std::vector<std::pair<int64_t, std::string>> ReadBlocks(const ServerProcess& s, const std::string& table, int64_t conv) {
  const std::string sql = "SELECT first_seq || '|' || " +
                          std::string(s.postgres_url().empty() ? "hex(data)" : "encode(data, 'hex')") + " FROM " +
                          table + " WHERE conversation_id = " + std::to_string(conv);
  const std::string cmd = s.postgres_url().empty()
                              ? "sqlite3 -readonly '" + s.dir() + "/data/parley.db' \"" + sql + "\""
                              : "psql '" + s.postgres_url() + "' -tAc \"" + sql + "\"";
  int rc = 0;
  const std::string out = Shell(cmd, &rc);
  EXPECT_EQ(rc, 0) << cmd << ": " << out;
  std::vector<std::pair<int64_t, std::string>> blocks;
  std::istringstream lines(out);
  for (std::string row; std::getline(lines, row);) {
    const size_t bar = row.find('|');
    if (bar == std::string::npos) continue;
    std::string data;
    for (size_t i = bar + 1; i + 1 < row.size(); i += 2)
      data.push_back(static_cast<char>(std::stoi(row.substr(i, 2), nullptr, 16)));
    blocks.emplace_back(std::stoll(row.substr(0, bar)), std::move(data));
  }
  return blocks;
}

// Every text in the cold blocks of conversation `conv` of `s`'s store,
// decoded with the store's own codec: seq -> text.
std::map<int64_t, std::string> BlockTexts(const ServerProcess& s, int64_t conv) {
  std::map<int64_t, std::string> texts;
  store::ColdCodec codec;
  for (const auto& [first_seq, data] : ReadBlocks(s, "message_blocks", conv)) {
    Result<std::vector<store::ColdEntry>> entries = codec.Unpack(first_seq, data);
    EXPECT_TRUE(entries.has_value()) << "block " << first_seq << " does not decode";
    if (!entries) continue;
    for (store::ColdEntry& e : *entries) texts[e.seq] = std::move(e.body);
  }
  return texts;
}

// Users ivy and jack, a device each, and their conversation (0 after a
// test failure), for the erase tests of compacted texts.
struct ErasePair {
  Device ivy, jack;
  int64_t conv = 0;
};
ErasePair IvyAndJack(ServerProcess& server) {
  ErasePair p;
  Register(server, "ivy");
  Register(server, "jack");
  p.ivy = Login(server, "ivy");
  p.jack = Login(server, "jack");
  Reply open = p.ivy.conn->Call("open_conversation", {{"username", "jack"}});
  EXPECT_TRUE(open.ok) << open.code;
  if (open.ok) p.conv = open.result["conversation"]["conversation_id"];
  return p;
}

// An erase of a user some of whose messages are compacted (the cold tier),
// with the default --purge-delay-s (an hour): the erase purges at once, so
// when it answers "verified" no text of the user is left in a cold block —
// neither a message's text, nor the compacted copy of a message they edited
// afterwards, nor one they had deleted for everyone themselves — and the
// other member's texts are still there. Runs on SQLite, and on PostgreSQL
// as admin_e2e_test_postgres.
TEST(AdminEraseE2E, EraseOfCompactedMessagesLeavesNoTextOfTheUserInAColdBlock) {
  ServerProcess server({"--admin-token", kToken, "--cold-after-s", "1", "--compact-interval-ms", "50"});
  ErasePair pair = IvyAndJack(server);
  ASSERT_GT(pair.conv, 0);
  Device& ivy = pair.ivy;
  Device& jack = pair.jack;
  const int64_t conv = pair.conv;
  // Seqs 1..20: ivy's the odd ones.
  constexpr int kMessages = 20;
  std::map<int64_t, std::string> jacks;
  for (int i = 1; i <= kMessages; ++i) {
    Device& from = i % 2 ? ivy : jack;
    const std::string body = (i % 2 ? "ivy says " : "jack says ") + std::to_string(i);
    Reply r = from.conn->Call("send", {{"conversation_id", conv}, {"client_id", "c" + std::to_string(i)},
                                       {"body", body}});
    ASSERT_TRUE(r.ok) << r.code << ": " << r.message;
    ASSERT_EQ(r.result["seq"], i);
    if (i % 2 == 0) jacks[i] = body;
  }
  ASSERT_TRUE(Eventually([&] { return StoreCount(server, "SELECT count(*) FROM messages WHERE cold") == kMessages; },
                         15'000))
      << "every message compacted";
  // After the compaction: ivy edits one of hers (the block keeps the old
  // text) and deletes another for everyone (the block keeps it until the
  // purge, an hour away).
  ASSERT_TRUE(ivy.conn->Call("edit_message", {{"conversation_id", conv}, {"seq", 1}, {"client_id", "e1"},
                                              {"body", "ivy edited 1"}}).ok);
  ASSERT_TRUE(ivy.conn->Call("delete_message", {{"conversation_id", conv}, {"seq", 3}, {"for", "everyone"}}).ok);
  int ivys_in_blocks = 0;
  for (const auto& [seq, text] : BlockTexts(server, conv)) ivys_in_blocks += text.rfind("ivy says ", 0) == 0;
  ASSERT_EQ(ivys_in_blocks, kMessages / 2) << "before the erase, each of ivy's texts is in a block";

  json erased = AdminOk(server, "user erase ivy --yes");
  EXPECT_EQ(erased["verified"], true) << erased.dump();
  EXPECT_EQ(erased["removed"]["messages_deleted"], kMessages / 2 - 1) << "seq 3 was deleted already";
  EXPECT_EQ(erased["removed"]["tombstones_purged"], kMessages / 2) << erased.dump();
  EXPECT_EQ(erased["removed"]["cold_texts_removed"], kMessages / 2) << erased.dump();
  EXPECT_EQ(erased["removed"]["edit_rows_removed"], 1) << erased.dump();
  EXPECT_EQ(erased["left"]["tombstones_unpurged"], 0) << erased.dump();
  EXPECT_EQ(BlockTexts(server, conv), jacks) << "only jack's texts are left in the blocks";
  EXPECT_EQ(MetricValue(HttpGet(server.port(), "/metrics"), "parley_purge_cold_texts_total"), kMessages / 2)
      << "the erase's purge counts as this node's purge";

  // Jack still reads his texts and ivy's tombstones.
  Reply history = jack.conn->Call("history", {{"conversation_id", conv}, {"limit", kMessages}});
  ASSERT_TRUE(history.ok) << history.code;
  ASSERT_EQ(history.result["messages"].size(), static_cast<size_t>(kMessages));
  for (const json& m : history.result["messages"]) {
    const int64_t seq = m["seq"];
    EXPECT_EQ(m.value("body", ""), seq % 2 ? "" : jacks[seq]) << seq;
  }
  // Again on the erased name: nothing more to delete or purge, verified.
  json again = AdminOk(server, "user erase ~erased-" + std::to_string(ivy.user_id) + " --yes");
  EXPECT_EQ(again["verified"], true) << again.dump();
  EXPECT_EQ(again["removed"]["messages_deleted"], 0);
  EXPECT_EQ(again["removed"]["tombstones_purged"], 0);
  EXPECT_EQ(again["removed"]["cold_texts_removed"], 0);
}

// Every edit text in the edit blocks of conversation `conv` of `s`'s store,
// decoded as BlockTexts does: (seq, version) -> text.
std::map<std::pair<int64_t, int64_t>, std::string> EditBlockTexts(const ServerProcess& s, int64_t conv) {
  std::map<std::pair<int64_t, int64_t>, std::string> texts;
  store::ColdCodec codec;
  for (const auto& [first_seq, data] : ReadBlocks(s, "edit_blocks", conv)) {
    Result<std::vector<store::ColdEditEntry>> entries = codec.UnpackEdits(first_seq, data);
    EXPECT_TRUE(entries.has_value()) << "edit block " << first_seq << " does not decode";
    if (!entries) continue;
    for (store::ColdEditEntry& e : *entries) texts[{e.seq, e.version}] = std::move(e.body);
  }
  return texts;
}

// The same for edit texts: each message is edited before the compaction, so
// the edits go into edit blocks with their messages (none is left in the
// hot table); the erase's purge leaves no edit text of the user in a block,
// the other member's stay and still read back through sync. Runs on SQLite,
// and on PostgreSQL as admin_e2e_test_postgres.
TEST(AdminEraseE2E, EraseOfCompactedEditsLeavesNoEditTextOfTheUserInAColdBlock) {
  // Two seconds: the sends and edits below land well before the
  // compaction takes their messages.
  ServerProcess server({"--admin-token", kToken, "--cold-after-s", "2", "--compact-interval-ms", "50"});
  ErasePair pair = IvyAndJack(server);
  ASSERT_GT(pair.conv, 0);
  Device& ivy = pair.ivy;
  Device& jack = pair.jack;
  const int64_t conv = pair.conv;
  // Seqs 1..10, ivy's the odd ones, each edited once by its sender.
  constexpr int kMessages = 10;
  std::map<std::pair<int64_t, int64_t>, std::string> jacks;
  for (int i = 1; i <= kMessages; ++i) {
    Device& from = i % 2 ? ivy : jack;
    const std::string who = i % 2 ? "ivy" : "jack";
    Reply r = from.conn->Call("send", {{"conversation_id", conv}, {"client_id", "c" + std::to_string(i)},
                                       {"body", who + " says " + std::to_string(i)}});
    ASSERT_TRUE(r.ok) << r.code << ": " << r.message;
    const std::string edit = who + " edits " + std::to_string(i);
    Reply e = from.conn->Call("edit_message", {{"conversation_id", conv}, {"seq", i},
                                               {"client_id", "e" + std::to_string(i)}, {"body", edit}});
    ASSERT_TRUE(e.ok) << e.code << ": " << e.message;
    if (i % 2 == 0) jacks[{i, 1}] = edit;
  }
  ASSERT_TRUE(Eventually(
      [&] { return StoreCount(server, "SELECT count(*) FROM message_edits WHERE cold") == kMessages; }, 15'000))
      << "every edit compacted";
  EXPECT_EQ(StoreCount(server, "SELECT count(*) FROM message_edits WHERE body <> ''"), 0);
  ASSERT_EQ(EditBlockTexts(server, conv).size(), static_cast<size_t>(kMessages));

  json erased = AdminOk(server, "user erase ivy --yes");
  EXPECT_EQ(erased["verified"], true) << erased.dump();
  EXPECT_EQ(erased["removed"]["tombstones_purged"], kMessages / 2) << erased.dump();
  EXPECT_EQ(erased["removed"]["cold_texts_removed"], kMessages) << "ivy's five texts and her five edits";
  EXPECT_EQ(erased["removed"]["edit_rows_removed"], kMessages / 2) << erased.dump();
  EXPECT_EQ(EditBlockTexts(server, conv), jacks) << "only jack's edit texts are left in the edit blocks";

  // Jack's devices still read his edits, and ivy's as empty.
  int edits_seen = 0;
  for (const json& e : SyncAll(*jack.conn, 0)) {
    if (e["kind"] != "edit" || e["conversation_id"] != conv) continue;
    const int64_t seq = e["seq"];
    EXPECT_EQ(e.value("body", ""), seq % 2 ? "" : "jack edits " + std::to_string(seq)) << e.dump();
    ++edits_seen;
  }
  EXPECT_EQ(edits_seen, kMessages);
}

TEST_F(AdminE2E, BackupTakenUnderLoadRestoresToAStoreWithEveryAckedMessage) {
  Register(server_, "sender");
  Register(server_, "receiver");
  Device sender = Login(server_, "sender");
  std::mutex mu;
  std::vector<std::string> acked;  // client ids, in ack order
  std::atomic<bool> stop{false};
  std::atomic<int> failures{0};
  std::thread load([&] {
    for (int i = 0; !stop; ++i) {
      std::string id = "c" + std::to_string(i);
      auto r = sender.conn->Call("send", {{"to", "receiver"}, {"client_id", id}, {"body", "load " + id}});
      if (!r.ok) {
        ++failures;
        continue;
      }
      std::lock_guard lock(mu);
      acked.push_back(id);
    }
  });
  auto acked_count = [&] {
    std::lock_guard lock(mu);
    return acked.size();
  };
  while (acked_count() < 50) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  std::vector<std::string> before;
  {
    std::lock_guard lock(mu);
    before = acked;
  }
  json backup = AdminOk(server_, "backup --name under-load.db");
  size_t during = acked_count();
  while (acked_count() < during + 20) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  stop = true;
  load.join();
  EXPECT_EQ(failures.load(), 0);
  ASSERT_TRUE(backup["path"].is_string()) << backup.dump();
  std::string path = backup["path"];
  EXPECT_EQ(path, server_.dir() + "/data/backups/under-load.db");
  EXPECT_GT(acked_count(), before.size()) << "the sender kept going while the backup ran";

  // Restore offline into a new data dir, serve it, read everything back.
  ServerProcess restored({"--admin-token", kToken});
  restored.Terminate();
  ToolResult refused = Tool("restore " + path + " --data-dir " + restored.dir() + "/data");
  EXPECT_EQ(refused.exit_code, 4) << "an existing store needs --force";
  EXPECT_NE(refused.out.find("--force"), std::string::npos) << refused.out;
  ToolResult ok = Tool("restore " + path + " --data-dir " + restored.dir() + "/data --force", false);
  ASSERT_EQ(ok.exit_code, 0) << ok.out;
  json report = json::parse(ok.out, nullptr, false);
  ASSERT_FALSE(report.is_discarded()) << ok.out;
  EXPECT_GE(report["messages"].get<int64_t>(), static_cast<int64_t>(before.size()));
  restored.Start();

  Device receiver = Login(restored, "receiver");
  std::set<std::string> present;
  int64_t conv = 0;
  for (const auto& e : SyncAll(*receiver.conn, 0)) {
    if (e["kind"] != "message") continue;
    present.insert(e["message"]["client_id"].get<std::string>());
    conv = e["message"]["conversation_id"];
  }
  for (const std::string& id : before) EXPECT_TRUE(present.count(id)) << id << " was acked before the backup";
  // The copy is one consistent snapshot: a gapless prefix of what was acked.
  std::vector<std::string> all;
  {
    std::lock_guard lock(mu);
    all = acked;
  }
  ASSERT_LE(present.size(), all.size());
  for (size_t i = 0; i < present.size(); ++i) EXPECT_TRUE(present.count(all[i])) << all[i];
  std::cout << "acked before the backup: " << before.size() << ", in the restored store: " << present.size()
            << ", acked in all: " << all.size() << ", backup took " << backup["took_ms"] << " ms\n";
  json t = AdminOk(restored, "timeline " + std::to_string(conv) + " 1");
  EXPECT_EQ(t["client_id"], before.front());

  // Restoring something that is not a store changes nothing.
  std::string junk = restored.dir() + "/junk.db";
  { std::FILE* f = std::fopen(junk.c_str(), "w"); std::fputs("junk", f); std::fclose(f); }
  ToolResult bad = Tool("restore " + junk + " --data-dir " + restored.dir() + "/other --force");
  EXPECT_EQ(bad.exit_code, 4);
  EXPECT_FALSE(std::filesystem::exists(restored.dir() + "/other/parley.db"));
}

}  // namespace
}  // namespace parley::testing
