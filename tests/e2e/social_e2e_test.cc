// End-to-end: profiles, contacts, search, blocking, password change, the
// conversation list and the admin bulk path (issue 3), against a real parleyd.
#include <gtest/gtest.h>

#include <algorithm>
#include <optional>
#include <set>

#include "e2e/helpers.h"
#include "gateway/gateway.h"
#include "sdk/sdk_test_util.h"

namespace parley::testing {
namespace {

std::function<bool(const json&)> IsKind(const std::string& kind) {
  return [kind](const json& e) { return e["kind"] == kind; };
}

TEST(ContactsE2E, ContactAddedOnOneDeviceAppearsOnTheOtherLiveAndAfterResync) {
  ServerProcess server;
  Register(server, "alice");
  Register(server, "bob");
  Register(server, "carol");
  Device phone = Login(server, "alice", "phone");
  Device laptop = Login(server, "alice", "laptop");
  Device tablet = Login(server, "alice", "tablet");
  int64_t tablet_cursor = tablet.head;
  tablet.conn.reset();  // offline

  auto r = phone.conn->Call("add_contact", {{"username", "Bob"}});
  ASSERT_TRUE(r.ok) << r.message;
  EXPECT_EQ(r.result["user"]["username"], "bob");
  auto live = WaitEvent(*laptop.conn, IsKind("contact"));
  ASSERT_TRUE(live);
  EXPECT_EQ((*live)["added"], true);
  EXPECT_EQ((*live)["user"]["username"], "bob");
  ASSERT_TRUE(phone.conn->Call("add_contact", {{"username", "carol"}}).ok);
  ASSERT_TRUE(phone.conn->Call("remove_contact", {{"username", "carol"}}).ok);

  Device back = Reconnect(server, tablet);
  std::set<std::string> contacts;
  for (auto& e : SyncAll(*back.conn, tablet_cursor)) {
    if (e["kind"] != "contact") continue;
    if (e["added"].get<bool>()) contacts.insert(e["user"]["username"]);
    else contacts.erase(e["user"]["username"]);
  }
  EXPECT_EQ(contacts, (std::set<std::string>{"bob"}));
  auto list = back.conn->Call("list_contacts");
  ASSERT_TRUE(list.ok);
  ASSERT_EQ(list.result["contacts"].size(), 1u);
  EXPECT_EQ(list.result["contacts"][0]["user"]["username"], "bob");

  EXPECT_EQ(phone.conn->Call("add_contact", {{"username", "bob"}}).code, "already_contact");
  EXPECT_EQ(phone.conn->Call("add_contact", {{"username", "alice"}}).code, "self_contact");
  EXPECT_EQ(phone.conn->Call("add_contact", {{"username", "nobody"}}).code, "unknown_user");
  EXPECT_EQ(phone.conn->Call("remove_contact", {{"username", "carol"}}).code, "not_contact");
}

TEST(ProfilesE2E, ProfileChangeReachesContactsAndConversationPartnersButNotTheBlocked) {
  ServerProcess server;
  for (auto u : {"alice", "bob", "carol", "dave", "erin"}) Register(server, u);
  Device a = Login(server, "alice");
  Device bob = Login(server, "bob");      // shares a conversation with alice
  Device carol = Login(server, "carol");  // has alice as a contact
  Device dave = Login(server, "dave");    // blocked by alice, shares a conversation
  Device erin = Login(server, "erin");    // a stranger
  ASSERT_TRUE(a.conn->Call("send", {{"to", "bob"}, {"client_id", "p1"}, {"body", "hi"}}).ok);
  ASSERT_TRUE(dave.conn->Call("send", {{"to", "alice"}, {"client_id", "p2"}, {"body", "hi"}}).ok);
  ASSERT_TRUE(carol.conn->Call("add_contact", {{"username", "alice"}}).ok);
  ASSERT_TRUE(a.conn->Call("block", {{"username", "dave"}}).ok);

  auto r = a.conn->Call("set_profile", {{"display_name", "Alice Liddell"}, {"about", "down the rabbit hole"}});
  ASSERT_TRUE(r.ok) << r.message;
  EXPECT_EQ(r.result["profile"]["display_name"], "Alice Liddell");
  for (Device* d : {&bob, &carol, &a}) {
    auto e = WaitEvent(*d->conn, IsKind("profile"));
    ASSERT_TRUE(e) << "user " << d->user_id << " missed the profile change";
    EXPECT_EQ((*e)["profile"]["display_name"], "Alice Liddell");
  }
  for (Device* d : {&dave, &erin})
    for (auto& e : SyncAll(*d->conn, 0)) EXPECT_NE(e["kind"], "profile") << "leaked to " << d->user_id;

  std::string long_name(65, 'n');
  EXPECT_EQ(a.conn->Call("set_profile", {{"display_name", long_name}}).code, "bad_request");
  EXPECT_EQ(a.conn->Call("set_profile", {{"display_name", "tab\there"}}).code, "bad_request");
  EXPECT_EQ(a.conn->Call("set_profile", json::object()).code, "bad_request");
}

TEST(SearchE2E, PrefixAndDisplayNameWordsCaseInsensitiveNeverABlocker) {
  ServerProcess server;
  for (auto u : {"searcher", "annabel", "annette", "anton", "zed"}) Register(server, u);
  Device s = Login(server, "searcher");
  Device zed = Login(server, "zed");
  ASSERT_TRUE(zed.conn->Call("set_profile", {{"display_name", "Anne Zed"}}).ok);
  Device anton = Login(server, "anton");
  ASSERT_TRUE(anton.conn->Call("block", {{"username", "searcher"}}).ok);

  auto names = [&](const json& fields) {
    auto r = s.conn->Call("search_users", fields);
    EXPECT_TRUE(r.ok) << r.message;
    std::vector<std::string> out;
    for (auto& u : r.result["users"]) out.push_back(u["username"]);
    return out;
  };
  EXPECT_EQ(names({{"query", "ANN"}}), (std::vector<std::string>{"annabel", "annette", "zed"}));
  EXPECT_EQ(names({{"query", "an"}}), (std::vector<std::string>{"annabel", "annette", "zed"}));  // never anton
  EXPECT_EQ(names({{"query", "zed"}}), (std::vector<std::string>{"zed"}));
  EXPECT_TRUE(names({{"query", "search"}}).empty());  // never oneself
  // Pagination.
  auto p1 = s.conn->Call("search_users", {{"query", "an"}, {"limit", 2}});
  ASSERT_EQ(p1.result["users"].size(), 2u);
  ASSERT_TRUE(p1.result["next"].is_string());
  auto p2 = s.conn->Call("search_users", {{"query", "an"}, {"limit", 2}, {"after", p1.result["next"]}});
  ASSERT_EQ(p2.result["users"].size(), 1u);
  EXPECT_EQ(p2.result["users"][0]["username"], "zed");
  EXPECT_TRUE(p2.result["next"].is_null());
  EXPECT_EQ(s.conn->Call("search_users", {{"query", "  "}}).code, "bad_request");
}

TEST(PasswordE2E, ChangeCutsOffTheOtherDevicesAtOnce) {
  ServerProcess server;
  Register(server, "alice");
  Device a = Login(server, "alice", "phone");
  Device b = Login(server, "alice", "laptop");
  EXPECT_EQ(a.conn->Call("change_password", {{"old_password", "wrong one!"}, {"new_password", "new secret 1"}}).code,
            "wrong_password");
  auto r = a.conn->Call("change_password", {{"old_password", "correct horse"}, {"new_password", "new secret 1"}});
  ASSERT_TRUE(r.ok) << r.message;
  EXPECT_EQ(r.result["devices_revoked"], 1);
  ASSERT_TRUE(b.conn->WaitClosed(10000));
  EXPECT_EQ(b.conn->close_code(), 4002);
  auto c = server.Connect();
  EXPECT_EQ(c->Call("auth", {{"token", b.token}}).code, "invalid_token");
  EXPECT_TRUE(c->Call("auth", {{"token", a.token}}).ok);  // the current device stays
  auto c2 = server.Connect();
  EXPECT_EQ(c2->Call("login", {{"username", "alice"}, {"password", "correct horse"}}).code, "bad_credentials");
  EXPECT_TRUE(c2->Call("login", {{"username", "alice"}, {"password", "new secret 1"}}).ok);
}

TEST(ConversationListE2E, UnreadEqualOnBothDevicesAfterReadingOnOneAndOwnMessagesNeverUnread) {
  ServerProcess server;
  for (auto u : {"alice", "bob", "carol"}) Register(server, u);
  Device a1 = Login(server, "alice", "phone");
  Device a2 = Login(server, "alice", "laptop");
  Device b = Login(server, "bob");
  Device c = Login(server, "carol");
  int64_t conv_b = 0;
  for (int i = 0; i < 3; ++i)
    conv_b = b.conn->Call("send", {{"to", "alice"}, {"client_id", "b" + std::to_string(i)}, {"body", "from bob"}})
                 .result["conversation_id"];
  ASSERT_TRUE(c.conn->Call("send", {{"to", "alice"}, {"client_id", "c0"}, {"body", "from carol"}}).ok);
  ASSERT_TRUE(a1.conn->Call("send", {{"to", "carol"}, {"client_id", "a0"}, {"body", "reply"}}).ok);

  auto unread = [](Device& d) {
    auto r = d.conn->Call("list_conversations");
    EXPECT_TRUE(r.ok) << r.message;
    std::map<std::string, int64_t> m;
    for (auto& s : r.result["conversations"]) {
      std::string other;
      for (auto& mem : s["conversation"]["members"])
        if (mem["username"] != "alice") other = mem["username"];
      m[other] = s["unread"];
    }
    return std::make_pair(m, r.result);
  };
  auto [u1, page] = unread(a1);
  EXPECT_EQ(u1["bob"], 3);
  EXPECT_EQ(u1["carol"], 0);  // alice's reply read carol's message; her own never counts
  // Newest activity first: carol's conversation (alice replied last).
  EXPECT_EQ(page["conversations"][0]["messages"].back()["body"], "reply");
  EXPECT_EQ(unread(a2).first, u1);

  ASSERT_TRUE(a2.conn->Call("receipt", {{"items", {{{"conversation_id", conv_b}, {"read", 2}}}}}).ok);
  ASSERT_TRUE(WaitEvent(*a1.conn, IsReceipt(a1.user_id, "read", 2)));  // a1 learns of its own user's read
  EXPECT_EQ(unread(a1).first["bob"], 1);
  EXPECT_EQ(unread(a2).first["bob"], 1);
  auto p = a1.conn->Call("list_conversations", {{"limit", 1}});
  ASSERT_EQ(p.result["conversations"].size(), 1u);
  ASSERT_TRUE(p.result["next"].is_object());
  auto p2 = a1.conn->Call("list_conversations", {{"limit", 1}, {"before_activity", p.result["next"]["before_activity"]},
                                                 {"before_id", p.result["next"]["before_id"]}});
  ASSERT_EQ(p2.result["conversations"].size(), 1u);
  EXPECT_NE(p2.result["conversations"][0]["conversation"]["conversation_id"],
            p.result["conversations"][0]["conversation"]["conversation_id"]);
}

// Strips what differs between runs (ids, times, user seqs), so that two
// scenarios can be compared field by field.
json Normalize(json j) {
  static const std::set<std::string> kVolatile = {"id", "ts", "created_at", "user_seq", "conversation_id", "user_id",
                                                  "sender_id", "sender_device_id", "last_activity_at", "added_at",
                                                  "username", "head", "next", "after"};
  if (j.is_object()) {
    json out = json::object();
    for (auto& [k, v] : j.items()) out[k] = kVolatile.count(k) ? json("*") : Normalize(v);
    return out;
  }
  if (j.is_array()) {
    json out = json::array();
    for (auto& v : j) out.push_back(Normalize(v));
    return out;
  }
  return j;
}

// Everything B sees while adding A, watching A's presence, opening the
// conversation and sending 10 messages: B's responses, every frame that
// reaches B live (events, presence, typing), B's whole stream through sync,
// B's snapshot and conversation list. With `block`, A blocks B first and then
// stays online with two devices that do everything that would reach B if A
// did not block B: report delivered/read up to the conversation's last seq,
// change the profile, type, go offline and online again. Without it, A never
// connects (offline and not reading).
json BlockScenario(ServerProcess& server, const std::string& a_name, const std::string& b_name, bool block) {
  Register(server, a_name);
  Register(server, b_name);
  std::optional<Device> a1, a2;
  if (block) {
    a1 = Login(server, a_name, "phone");
    EXPECT_TRUE(a1->conn->Call("block", {{"username", b_name}}).ok);
  }
  Device b = Login(server, b_name);
  json seen = json::array();
  auto call = [&](const std::string& op, const json& fields) {
    auto r = b.conn->Call(op, fields);
    EXPECT_TRUE(r.ok) << op << ": " << r.code << " " << r.message;
    seen.push_back(r.frame);
    return r;
  };
  auto a_call = [&](Device& d, const std::string& op, const json& fields) {
    auto r = d.conn->Call(op, fields);
    EXPECT_TRUE(r.ok) << "A's " << op << ": " << r.code << " " << r.message;
  };
  auto added = call("add_contact", {{"username", a_name}});
  int64_t a_id = added.result["user"]["user_id"];
  call("subscribe_presence", {{"user_ids", json::array({a_id})}});
  int64_t conv = call("open_conversation", {{"username", a_name}}).result["conversation"]["conversation_id"];
  if (block) {
    a2 = Login(server, a_name, "laptop");  // a second device, in the foreground
    a_call(*a1, "set_profile", {{"display_name", "Changed While Blocking"}});
    a_call(*a2, "typing", {{"conversation_id", conv}, {"state", "start"}});
    a_call(*a1, "open_conversation", {{"username", b_name}});
  }
  int64_t last_seq = 0;  // of B's last message
  for (int i = 0; i < 10; ++i) {
    auto r = call("send", {{"to", a_name}, {"client_id", "w" + std::to_string(i)}, {"body", "hey"}});
    last_seq = r.result.value("seq", int64_t{0});
    if (!block) continue;
    // A reports up to the conversation's raw last seq from both devices.
    int64_t raw = r.result["seq"];
    Device& d = i % 2 == 0 ? *a1 : *a2;
    a_call(d, "receipt", {{"items", {{{"conversation_id", conv}, {"delivered", raw}}}}});
    a_call(d, "receipt", {{"items", {{{"conversation_id", conv}, {"delivered", raw}, {"read", raw}}}}});
    if (i == 3) {  // offline (the server broadcasts at once: coalescing is off)
      a_call(*a1, "set_app_state", {{"state", "background"}});
      a_call(*a2, "set_app_state", {{"state", "background"}});
    }
    if (i == 6) a_call(*a2, "set_app_state", {{"state", "foreground"}});  // online again
    if (i == 8) a_call(*a1, "typing", {{"conversation_id", conv}, {"state", "start"}});
  }
  if (block) {
    a_call(*a1, "set_profile", {{"about", "still blocking"}});
    a_call(*a2, "typing", {{"conversation_id", conv}, {"state", "stop"}});
    a_call(*a1, "set_app_state", {{"state", "foreground"}});
    EXPECT_TRUE(a2->conn->Call("list_conversations").ok);
  }
  // Every frame that reached B live, in arrival order: until the event of
  // B's last message (its own stream's last entry; on a loaded machine it
  // may come late, and a scenario missing it would differ from the other),
  // then whatever else comes within 700 ms (what A's actions would leak).
  const auto is_last = [&](const json& f) {
    return f["type"] == "event" && f["event"]["kind"] == "message" &&
           f["event"]["message"]["conversation_id"] == conv && f["event"]["message"]["seq"] == last_seq;
  };
  bool got_last = false;
  for (const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
       !got_last && std::chrono::steady_clock::now() < deadline;) {
    if (auto f = b.conn->NextEvent(1000)) {
      seen.push_back(*f);
      got_last = is_last(*f);
    }
  }
  EXPECT_TRUE(got_last) << "B's last message never reached B live";
  while (auto f = b.conn->NextEvent(700)) seen.push_back(*f);
  for (auto& e : SyncAll(*b.conn, 0)) seen.push_back(e);
  call("snapshot", json::object());
  call("list_conversations", json::object());
  call("history", {{"conversation_id", conv}});
  return Normalize(seen);
}

TEST(BlockE2E, WhileBlockedTheSendersViewIsExactlyThatOfAnOfflineRecipient) {
  // Presence changes are broadcast at once, so that one reaching B would show.
  ServerProcess server({"--presence-coalesce-ms", "0", "--presence-min-interval-ms", "0"});
  json blocked = BlockScenario(server, "alice", "bob", true);
  json offline = BlockScenario(server, "anna", "bert", false);
  EXPECT_EQ(blocked, offline) << "blocked:\n" << blocked.dump(1) << "\noffline:\n" << offline.dump(1);
  // The comparison saw the whole scenario: 16 responses and B's stream (a
  // contact, a conversation and 10 message events), live and synced.
  EXPECT_GE(offline.size(), 16u + 12u + 12u);
}

// No stream event beyond `head` reaches `d` live within `ms`; returns what did.
std::optional<json> AnyEventAfter(Device& d, int64_t head, int ms) {
  return WaitFrame(
      *d.conn, [head](const json& f) { return f["type"] != "event" || f["event"]["user_seq"].get<int64_t>() > head; },
      ms);
}

TEST(BlockE2E, BlockedSendsAreAckedButWithheldAndStaySentAfterUnblock) {
  ServerProcess server;
  Register(server, "alice");
  Register(server, "bob");
  Device a1 = Login(server, "alice", "phone");
  Device a2 = Login(server, "alice", "laptop");
  Device b = Login(server, "bob");
  auto first = b.conn->Call("send", {{"to", "alice"}, {"client_id", "before"}, {"body", "before the block"}});
  ASSERT_TRUE(first.ok);
  int64_t conv = first.result["conversation_id"];
  ASSERT_TRUE(a1.conn->Call("receipt", {{"items", {{{"conversation_id", conv}, {"read", 1}}}}}).ok);
  ASSERT_TRUE(a1.conn->Call("block", {{"username", "bob"}}).ok);
  ASSERT_TRUE(WaitEvent(*a2.conn, IsKind("block")));  // the block converges on alice's devices
  ASSERT_TRUE(WaitEvent(*a1.conn, IsKind("block")));
  ASSERT_TRUE(WaitEvent(*b.conn, IsReceipt(a1.user_id, "read", 1)));
  int64_t a_head = a1.conn->Call("ping").result["head"];

  std::vector<int64_t> withheld;
  for (int i = 0; i < 10; ++i) {
    auto r = b.conn->Call("send", {{"conversation_id", conv}, {"client_id", "blk" + std::to_string(i)}, {"body", "hello?"}});
    ASSERT_TRUE(r.ok) << r.message;  // "sent", like to anyone offline
    withheld.push_back(r.result["seq"]);
  }
  EXPECT_EQ(a1.conn->Call("send", {{"conversation_id", conv}, {"client_id", "x"}, {"body", "x"}}).code, "blocked");
  // Nothing reached alice live, on either device, of any kind.
  for (Device* d : {&a1, &a2}) {
    auto leaked = AnyEventAfter(*d, a_head, 300);
    EXPECT_FALSE(leaked) << "device " << d->device_id << " got " << leaked->dump();
  }
  // Alice's devices report "everything" up to the raw last seq: clamped to
  // what she sees, so bob gets no receipt (no withheld list revealing it).
  for (Device* d : {&a1, &a2}) {
    ASSERT_TRUE(d->conn
                    ->Call("receipt", {{"items", {{{"conversation_id", conv},
                                                   {"delivered", withheld.back()},
                                                   {"read", withheld.back()}}}}})
                    .ok);
  }
  auto revealed = WaitFrame(
      *b.conn, [](const json& f) { return f["type"] != "event" || f["event"]["kind"] != "message"; }, 400);
  EXPECT_FALSE(revealed) << revealed->dump();
  for (Device* d : {&a1, &a2}) EXPECT_FALSE(AnyEventAfter(*d, a_head, 100));
  // Not in sync, not in history, no unread, no seq beyond what she sees.
  auto stream = SyncAll(*a2.conn, 0);
  for (size_t i = 0; i < stream.size(); ++i) {
    EXPECT_EQ(stream[i]["user_seq"], static_cast<int64_t>(i + 1)) << "gap in alice's stream";
    if (stream[i]["kind"] == "message") {
      EXPECT_EQ(stream[i]["message"]["client_id"], "before");
    }
  }
  EXPECT_EQ(stream.back()["user_seq"], a_head);
  auto h = a1.conn->Call("history", {{"conversation_id", conv}});
  ASSERT_EQ(h.result["messages"].size(), 1u);
  for (Device* d : {&a1, &a2}) {
    auto list = d->conn->Call("list_conversations").result["conversations"][0];
    EXPECT_EQ(list["unread"], 0);
    EXPECT_EQ(list["conversation"]["last_seq"], 1);
    EXPECT_EQ(d->conn->Call("open_conversation", {{"username", "bob"}}).result["conversation"]["last_seq"], 1);
  }

  ASSERT_TRUE(a1.conn->Call("unblock", {{"username", "bob"}}).ok);
  EXPECT_EQ(a1.conn->Call("history", {{"conversation_id", conv}}).result["messages"].size(), 1u);  // still withheld
  auto after = b.conn->Call("send", {{"conversation_id", conv}, {"client_id", "after"}, {"body", "after the block"}});
  ASSERT_TRUE(after.ok);
  int64_t seq = after.result["seq"];
  for (Device* d : {&a1, &a2}) ASSERT_TRUE(WaitEvent(*d->conn, IsMessage(seq))) << "not delivered after the unblock";
  // Alice's history is exactly the message before the block and this one.
  std::vector<std::string> ids;
  auto a_history = a1.conn->Call("history", {{"conversation_id", conv}});
  for (auto& m : a_history.result["messages"]) ids.push_back(m["client_id"]);
  EXPECT_EQ(ids, (std::vector<std::string>{"before", "after"}));
  for (auto& e : SyncAll(*a1.conn, 0)) {
    if (e["kind"] == "message") {
      EXPECT_NE(e["message"]["client_id"].get<std::string>().rfind("blk", 0), 0u) << e.dump();
    }
  }
  for (Device* d : {&a1, &a2}) {
    auto list = d->conn->Call("list_conversations").result["conversations"][0];
    EXPECT_EQ(list["unread"], 1);
    EXPECT_EQ(list["conversation"]["last_seq"], seq);
  }
  ASSERT_TRUE(a2.conn->Call("receipt", {{"items", {{{"conversation_id", conv}, {"read", seq}}}}}).ok);
  auto rcpt = WaitEvent(*b.conn, IsReceipt(a1.user_id, "read", seq));
  ASSERT_TRUE(rcpt);
  ASSERT_TRUE(WaitEvent(*a1.conn, IsReceipt(a1.user_id, "read", seq)));
  for (Device* d : {&a1, &a2}) EXPECT_EQ(d->conn->Call("list_conversations").result["conversations"][0]["unread"], 0);
  // The receipt tells bob which seqs below it stay "sent" forever.
  std::vector<int64_t> stay;
  for (auto& s : SyncAll(*b.conn, 0))
    if (s["kind"] == "receipt" && s.contains("withheld"))
      for (auto& w : s["withheld"]) stay.push_back(w);
  EXPECT_EQ(stay, withheld);
  // So do bob's snapshot and history, for a device that never saw the event.
  auto snap = b.conn->Call("snapshot");
  std::vector<int64_t> listed;
  for (auto& w : snap.result["conversations"][0]["watermarks"])
    if (w["user_id"] == a1.user_id) listed = w.value("withheld", std::vector<int64_t>{});
  EXPECT_EQ(listed, withheld);
  EXPECT_EQ(b.conn->Call("history", {{"conversation_id", conv}}).result["withheld"].get<std::vector<int64_t>>(),
            withheld);

  // A fresh SDK device of bob (a new cache: snapshot) shows the 10 as sent,
  // the rest read; and one that pages them in through history, likewise.
  TempDir dir;
  for (int snapshot_messages : {20, 1}) {
    auto login = Client::Login("127.0.0.1", server.port(), "bob", "correct horse",
                               "tablet" + std::to_string(snapshot_messages), "gtest");
    ASSERT_TRUE(login.ok) << login.message;
    auto o = OptionsFor(server, dir / ("bob" + std::to_string(snapshot_messages) + ".db"), login.token);
    o.snapshot_messages = snapshot_messages;
    auto bob2 = OpenClient(o);
    ASSERT_TRUE(bob2);
    bob2->Start();
    ASSERT_TRUE(bob2->WaitOnline(5000));
    std::vector<CachedMessage> all;
    int64_t before = 0;
    bool more = true;
    while (more) {
      Reply err;
      auto page = bob2->History("alice", before, 5, &more, &err);
      ASSERT_TRUE(err.code.empty()) << err.code;
      ASSERT_FALSE(page.empty());
      all.insert(all.begin(), page.begin(), page.end());
      before = page.front().seq;
    }
    ASSERT_EQ(all.size(), 12u);
    for (const CachedMessage& m : all) {
      bool was_withheld = std::find(withheld.begin(), withheld.end(), m.seq) != withheld.end();
      EXPECT_EQ(m.status, was_withheld ? MessageStatus::kSent : MessageStatus::kRead)
          << "seq " << m.seq << " on a new device (snapshot of " << snapshot_messages << ")";
    }
    bob2->Stop();
  }
}

TEST(BlockE2E, UnblockBringsTheBlockedUserTheProfileTheyMissed) {
  ServerProcess server;
  Register(server, "alice");
  Register(server, "bob");
  Device a = Login(server, "alice");
  Device b = Login(server, "bob");
  ASSERT_TRUE(b.conn->Call("send", {{"to", "alice"}, {"client_id", "hi"}, {"body", "hi"}}).ok);
  ASSERT_TRUE(a.conn->Call("block", {{"username", "bob"}}).ok);
  ASSERT_TRUE(a.conn->Call("set_profile", {{"display_name", "Alice Blocking"}}).ok);
  EXPECT_FALSE(WaitEvent(*b.conn, IsKind("profile"), 300));  // B keeps the old profile meanwhile
  ASSERT_TRUE(a.conn->Call("unblock", {{"username", "bob"}}).ok);
  auto e = WaitEvent(*b.conn, IsKind("profile"));
  ASSERT_TRUE(e) << "bob still shows alice's profile from before the block";
  EXPECT_EQ((*e)["profile"]["user_id"], a.user_id);
  EXPECT_EQ((*e)["profile"]["display_name"], "Alice Blocking");
  // The same through sync, once.
  int profiles = 0;
  for (auto& s : SyncAll(*b.conn, 0)) profiles += s["kind"] == "profile" ? 1 : 0;
  EXPECT_EQ(profiles, 1);
}

TEST(BlockE2E, BlockErrorsAreClearAndNeverRevealABlockToTheBlocked) {
  ServerProcess server;
  Register(server, "alice");
  Register(server, "bob");
  Device a = Login(server, "alice");
  Device b = Login(server, "bob");
  EXPECT_EQ(a.conn->Call("block", {{"username", "alice"}}).code, "self_block");
  EXPECT_EQ(a.conn->Call("block", {{"username", "nobody"}}).code, "unknown_user");
  EXPECT_EQ(a.conn->Call("unblock", {{"username", "bob"}}).code, "not_blocked");
  ASSERT_TRUE(a.conn->Call("block", {{"username", "bob"}}).ok);
  EXPECT_EQ(a.conn->Call("block", {{"username", "bob"}}).code, "already_blocked");
  auto list = a.conn->Call("list_blocked");
  ASSERT_EQ(list.result["users"].size(), 1u);
  EXPECT_EQ(list.result["users"][0]["username"], "bob");
  // Bob's side: everything succeeds as usual; he can even block alice back.
  EXPECT_TRUE(b.conn->Call("add_contact", {{"username", "alice"}}).ok);
  EXPECT_TRUE(b.conn->Call("open_conversation", {{"username", "alice"}}).ok);
  EXPECT_TRUE(b.conn->Call("list_blocked").result["users"].empty());
  EXPECT_TRUE(b.conn->Call("block", {{"username", "alice"}}).ok);
  ASSERT_TRUE(a.conn->Call("unblock", {{"username", "bob"}}).ok);
  EXPECT_TRUE(a.conn->Call("list_blocked").result["users"].empty());
}

TEST(AdminE2E, BulkPathCreatesUsersWithWorkingTokensAndNeedsTheAdminToken) {
  ServerProcess server({"--admin-token", "s3cret-admin"});
  json body = {{"devices", true}, {"users", json::array()}};
  for (int i = 0; i < 300; ++i)
    body["users"].push_back({{"username", "bulk" + std::to_string(i)}, {"display_name", "Bulk user " + std::string(50, 'b')}});
  body["users"][0]["password"] = "pass word 0";
  body["users"][1]["display_name"] = "Zebedee Bulk";
  ASSERT_GT(body.dump().size(), gateway::kMaxPlainHttpBodyBytes) << "the admin token must allow a larger body";
  int status = 0;
  std::string out = HttpPost(server.port(), "/admin/v1/users/bulk", body.dump(), "Bearer s3cret-admin", &status);
  ASSERT_EQ(status, 200) << out;
  json r = json::parse(out);
  ASSERT_EQ(r["users"].size(), 300u);
  auto c = server.Connect();
  auto a = c->Call("auth", {{"token", r["users"][7]["token"]}});
  ASSERT_TRUE(a.ok) << a.message;
  EXPECT_EQ(a.result["username"], "bulk7");
  auto c2 = server.Connect();
  EXPECT_TRUE(c2->Call("login", {{"username", "bulk0"}, {"password", "pass word 0"}}).ok);
  auto found = c2->Call("search_users", {{"query", "zebedee"}});
  ASSERT_EQ(found.result["users"].size(), 1u);
  EXPECT_EQ(found.result["users"][0]["username"], "bulk1");
  // All or nothing, and only with the token.
  HttpPost(server.port(), "/admin/v1/users/bulk", body.dump(), "Bearer s3cret-admin", &status);
  EXPECT_EQ(status, 409);
  HttpPost(server.port(), "/admin/v1/users/bulk", R"({"users":[{"username":"x1"}]})", "Bearer wrong", &status);
  EXPECT_EQ(status, 401);
  // Without the token a large body is refused from its header (413), before
  // the server holds it; so it is on any other route.
  HttpPost(server.port(), "/admin/v1/users/bulk", body.dump(), "Bearer wrong", &status);
  EXPECT_EQ(status, 413);
  HttpPost(server.port(), "/healthz", body.dump(), "", &status);
  EXPECT_EQ(status, 413);
  HttpPost(server.port(), "/admin/v1/users/bulk", "{not json", "Bearer s3cret-admin", &status);
  EXPECT_EQ(status, 400);
  // A field of the wrong type is a 400 naming it; it once threw out of the
  // I/O thread and ended parleyd. So is a display name with a control
  // character (the protocol's set_profile refuses those too).
  const std::vector<std::pair<json, std::string>> wrong = {
      {{{"users", {{{"username", "tt1"}, {"password", 5}}}}}, "'password'"},
      {{{"users", {{{"username", "tt1"}, {"display_name", 5}}}}}, "'display_name'"},
      {{{"users", {{{"username", "tt1"}}}}, {"devices", "yes"}}, "'devices'"},
      {{{"users", {{{"username", "tt1"}}}}, {"device_name", 7}}, "'device_name'"},
      {{{"users", {{{"username", "tt1"}, {"display_name", std::string("a\x01b")}}}}}, "display_name"},
  };
  for (const auto& [bad, field] : wrong) {
    out = HttpPost(server.port(), "/admin/v1/users/bulk", bad.dump(), "Bearer s3cret-admin", &status);
    EXPECT_EQ(status, 400) << bad.dump() << " -> " << out;
    EXPECT_NE(out.find(field), std::string::npos) << out;
  }
  out = HttpPost(server.port(), "/admin/v1/users", json{{"username", "tt1"}, {"password", "pass word 1"}, {"display_name", 5}}.dump(),
                 "Bearer s3cret-admin", &status);
  EXPECT_EQ(status, 400) << out;
  EXPECT_NE(out.find("'display_name'"), std::string::npos) << out;
  EXPECT_EQ(c2->Call("search_users", {{"query", "tt1"}}).result["users"].size(), 0u) << "a refused user was created";
  ServerProcess no_admin;
  HttpPost(no_admin.port(), "/admin/v1/users/bulk", R"({"users":[{"username":"x1"}]})", "Bearer s3cret-admin", &status);
  EXPECT_EQ(status, 404);
  HttpPost(no_admin.port(), "/admin/v1/users/bulk", body.dump(), "Bearer s3cret-admin", &status);
  EXPECT_EQ(status, 413) << "no admin token configured: no request may send a large body";
}

}  // namespace
}  // namespace parley::testing
