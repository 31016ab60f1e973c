// The `parley` CLI, scripted end to end: two users, each with their own
// config directory, against a real parleyd. Every run is a separate process,
// so everything that survives between runs lives in the config directory.
#include <sys/stat.h>

#include <cstdlib>

#include "sdk/sdk_test_util.h"

namespace parley::testing {
namespace {

class CliUser {
 public:
  CliUser(const TempDir& dir, const std::string& name, uint16_t port)
      : dir_(dir), name_(name), base_({"--config-dir", dir / ("cfg-" + name), "--server", "127.0.0.1:" + std::to_string(port),
                                       "--timeout", "5000"}) {}
  CliResult Run(std::vector<std::string> args, const std::string& input = "") const {
    std::vector<std::string> a = base_;
    a.insert(a.end(), args.begin(), args.end());
    return RunCli(dir_, a, input);
  }
  json Json(std::vector<std::string> args) const {
    args.insert(args.begin(), "--json");
    auto r = Run(args);
    EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
    return r.Json();
  }
  std::string config_dir() const { return base_[1]; }

 private:
  const TempDir& dir_;
  std::string name_;
  std::vector<std::string> base_;
};

TEST(CliE2E, TwoUsersRegisterAddEachOtherSendWhileOfflineReadHistoryAndSeeTicksReachRead) {
  ServerProcess s;
  TempDir dir;
  CliUser alice(dir, "alice", s.port()), bob(dir, "bob", s.port());

  for (auto* u : {&alice, &bob}) {
    std::string name = u == &alice ? "alice" : "bob";
    auto reg = u->Run({"register", name}, "correct horse\n");  // password from stdin
    ASSERT_EQ(reg.exit_code, 0) << reg.err;
    auto login = u->Run({"login", name, "--password", "correct horse"});
    ASSERT_EQ(login.exit_code, 0) << login.err;
    EXPECT_NE(login.out.find("logged in as " + name), std::string::npos);
    struct stat st{};
    ASSERT_EQ(stat((u->config_dir() + "/users/" + name + "/token").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
  }
  // A taken name is refused with the server's code and exit 5.
  auto again = alice.Run({"--json", "register", "alice", "--password", "correct horse"});
  EXPECT_EQ(again.exit_code, 5);
  EXPECT_EQ(again.Json()["error"], "username_taken");

  EXPECT_EQ(alice.Run({"contacts", "add", "bob"}).exit_code, 0);
  EXPECT_EQ(bob.Run({"contacts", "add", "alice"}).exit_code, 0);
  auto contacts = alice.Json({"contacts", "list"});
  ASSERT_EQ(contacts["contacts"].size(), 1u);
  EXPECT_EQ(contacts["contacts"][0]["user"]["username"], "bob");
  EXPECT_EQ(alice.Json({"search", "bo"})["users"][0]["username"], "bob");

  // The server is down while alice sends: queued (exit 0), nothing lost.
  s.Kill9();
  auto queued = alice.Run({"--timeout", "300", "send", "bob", "hello", "bob"});
  ASSERT_EQ(queued.exit_code, 0) << queued.err;
  EXPECT_NE(queued.out.find("offline"), std::string::npos) << queued.out;
  auto unreachable = alice.Run({"--timeout", "300", "contacts", "list"});
  EXPECT_EQ(unreachable.exit_code, 4);
  EXPECT_EQ(alice.Json({"outbox"})["outbox"].size(), 1u);
  s.Start();

  // Any later run of alice's sends it (bob is offline the whole time).
  auto chats = alice.Json({"chats"});
  EXPECT_EQ(alice.Json({"outbox"})["outbox"].size(), 0u);
  auto mine = alice.Json({"history", "bob"});
  ASSERT_EQ(mine["messages"].size(), 1u);
  EXPECT_EQ(mine["messages"][0]["status"], "sent");

  // Bob comes online: sees it unread, reads it (history marks it read), replies.
  auto bob_chats = bob.Json({"chats"});
  ASSERT_EQ(bob_chats["conversations"].size(), 1u);
  EXPECT_EQ(bob_chats["conversations"][0]["peer"], "alice");
  EXPECT_EQ(bob_chats["conversations"][0]["unread"], 1);
  auto hist = bob.Json({"history", "alice"});
  ASSERT_EQ(hist["messages"].size(), 1u);
  EXPECT_EQ(hist["messages"][0]["body"], "hello bob");
  EXPECT_EQ(hist["messages"][0]["from"], "alice");
  EXPECT_EQ(bob.Json({"chats"})["conversations"][0]["unread"], 0);
  auto reply = bob.Json({"send", "alice", "hi alice"});
  EXPECT_EQ(reply["messages"][0]["status"], "sent");

  // Alice's ticks reached read; she sees the reply.
  auto after = alice.Json({"history", "bob"});
  ASSERT_EQ(after["messages"].size(), 2u);
  EXPECT_EQ(after["messages"][0]["status"], "read");
  EXPECT_EQ(after["messages"][1]["body"], "hi alice");
  auto human = alice.Run({"history", "bob"});
  EXPECT_NE(human.out.find("hello bob  [read"), std::string::npos) << human.out;
  // Message info: bob's one device delivered and read it; only alice may ask.
  auto info = alice.Json({"info", "bob", "1"});
  ASSERT_EQ(info["members"].size(), 2u);
  for (const auto& m : info["members"]) {
    if (m["username"] != "bob") continue;
    ASSERT_EQ(m["devices"].size(), 1u);
    EXPECT_TRUE(m["devices"][0]["delivered_at"].is_number()) << info.dump();
    EXPECT_TRUE(m["devices"][0]["read_at"].is_number()) << info.dump();
  }
  auto not_his = bob.Run({"info", "alice", "1"});
  EXPECT_NE(not_his.exit_code, 0);
  EXPECT_NE((not_his.out + not_his.err).find("forbidden"), std::string::npos) << not_his.out << not_his.err;

  // Devices, logout; a logged-out user gets exit 3.
  auto devices = alice.Json({"devices"});
  ASSERT_EQ(devices["devices"].size(), 1u);
  EXPECT_EQ(alice.Run({"logout"}).exit_code, 0);
  EXPECT_EQ(alice.Run({"chats"}).exit_code, 3);
  EXPECT_EQ(alice.Run({"frobnicate"}).exit_code, 2);
  EXPECT_EQ(alice.Run({"send", "--help"}).exit_code, 0);
}

// A device unlinked from another device, with a message still in its
// outbox: logout does not drop it without --force (logging in again keeps
// the cache, and the message is sent then).
TEST(CliE2E, LogoutOfASignedOutDeviceKeepsUnsentMessagesUnlessForced) {
  ServerProcess s;
  TempDir dir;
  CliUser phone(dir, "phone", s.port()), laptop(dir, "laptop", s.port()), dave(dir, "dave", s.port());
  ASSERT_EQ(phone.Run({"register", "carol", "--password", "correct horse"}).exit_code, 0);
  ASSERT_EQ(dave.Run({"register", "dave", "--password", "correct horse"}).exit_code, 0);
  ASSERT_EQ(phone.Run({"login", "carol", "--password", "correct horse"}).exit_code, 0);
  ASSERT_EQ(dave.Run({"login", "dave", "--password", "correct horse"}).exit_code, 0);
  const json linked = laptop.Json({"login", "carol", "--password", "correct horse", "--device-name", "laptop"});
  const std::string laptop_id = std::to_string(linked["device_id"].get<int64_t>());

  s.Kill9();
  ASSERT_EQ(laptop.Run({"--timeout", "300", "send", "dave", "still", "here"}).exit_code, 0);
  s.Start();
  ASSERT_EQ(phone.Run({"devices", "unlink", laptop_id}).exit_code, 0);

  auto refused = laptop.Run({"--json", "logout"});
  EXPECT_EQ(refused.exit_code, 1) << refused.out << refused.err;
  EXPECT_EQ(refused.Json()["error"], "outbox_not_empty") << refused.out;
  const json relinked = laptop.Json({"login", "carol", "--password", "correct horse"});
  laptop.Json({"chats"});  // online: the outbox is sent
  EXPECT_EQ(laptop.Json({"outbox"})["outbox"].size(), 0u) << "the message kept through the refused logout was sent";
  auto hist = dave.Json({"history", "carol"});
  ASSERT_EQ(hist["messages"].size(), 1u);
  EXPECT_EQ(hist["messages"][0]["body"], "still here");
  // Signed out again with a message queued: --force drops it.
  s.Kill9();
  ASSERT_EQ(laptop.Run({"--timeout", "300", "send", "dave", "dropped"}).exit_code, 0);
  s.Start();
  ASSERT_EQ(phone.Run({"devices", "unlink", std::to_string(relinked["device_id"].get<int64_t>())}).exit_code, 0);
  EXPECT_EQ(laptop.Run({"logout"}).exit_code, 1);
  EXPECT_EQ(laptop.Run({"logout", "--force"}).exit_code, 0);
  EXPECT_EQ(laptop.Run({"chats"}).exit_code, 3);
}

TEST(CliE2E, ADisabledAccountKeepsWhatIsSentAndSaysWhyCommandsFail) {
  constexpr const char* kAdminToken = "cli-admin-token";
  ServerProcess s({"--admin-token", kAdminToken});
  TempDir dir;
  CliUser erin(dir, "erin", s.port()), dave(dir, "dave", s.port());
  ASSERT_EQ(erin.Run({"register", "erin", "--password", "correct horse"}).exit_code, 0);
  ASSERT_EQ(dave.Run({"register", "dave", "--password", "correct horse"}).exit_code, 0);
  ASSERT_EQ(erin.Run({"login", "erin", "--password", "correct horse"}).exit_code, 0);
  ASSERT_EQ(dave.Run({"login", "dave", "--password", "correct horse"}).exit_code, 0);
  auto admin = [&](const std::string& action) {
    int status = 0;
    HttpPost(s.port(), "/admin/v1/users/erin/" + action, "", std::string("Bearer ") + kAdminToken, &status);
    ASSERT_EQ(status, 200) << action;
  };

  admin("disable");
  // A send is kept for later, and says why it was not sent.
  auto queued = erin.Run({"send", "dave", "kept", "for", "later"});
  EXPECT_EQ(queued.exit_code, 0) << queued.out << queued.err;
  EXPECT_NE(queued.out.find("disabled by the operator; kept"), std::string::npos) << queued.out;
  const json queued_json = erin.Json({"send", "dave", "and", "this"});
  EXPECT_EQ(queued_json["disabled"], true) << queued_json.dump();
  EXPECT_EQ(queued_json["online"], false);
  // A command that needs the server fails with the reason, not "unreachable".
  auto refused = erin.Run({"--json", "contacts"});
  EXPECT_EQ(refused.exit_code, 5) << refused.out << refused.err;
  EXPECT_EQ(refused.Json()["error"], "user_disabled") << refused.out;
  EXPECT_EQ(erin.Json({"outbox"})["outbox"].size(), 2u);

  admin("enable");
  erin.Json({"chats"});  // online again: the outbox is sent
  EXPECT_EQ(erin.Json({"outbox"})["outbox"].size(), 0u);
  auto hist = dave.Json({"history", "erin"});
  ASSERT_EQ(hist["messages"].size(), 2u);
  EXPECT_EQ(hist["messages"][0]["body"], "kept for later");
  EXPECT_EQ(hist["messages"][1]["body"], "and this");
}

TEST(CliE2E, HistoryPagesBackwardsWithAHintForTheNextPage) {
  ServerProcess s;
  TempDir dir;
  CliUser alice(dir, "alice", s.port());
  Register(s, "alice");
  Register(s, "bob");
  ASSERT_EQ(alice.Run({"login", "alice", "--password", "correct horse"}).exit_code, 0);
  std::string input;
  for (int i = 1; i <= 7; ++i) input += "line " + std::to_string(i) + "\n";
  ASSERT_EQ(alice.Run({"send", "bob", "-"}, input).exit_code, 0);
  auto p1 = alice.Json({"history", "bob", "--limit", "3"});
  ASSERT_EQ(p1["messages"].size(), 3u);
  EXPECT_EQ(p1["messages"][0]["body"], "line 5");
  EXPECT_TRUE(p1["has_more"].get<bool>());
  auto p2 = alice.Json({"history", "bob", "--limit", "3", "--before", std::to_string(p1["next_before"].get<int64_t>())});
  ASSERT_EQ(p2["messages"].size(), 3u);
  EXPECT_EQ(p2["messages"][0]["body"], "line 2");
  auto p3 = alice.Json({"history", "bob", "--limit", "3", "--before", std::to_string(p2["next_before"].get<int64_t>())});
  ASSERT_EQ(p3["messages"].size(), 1u);
  EXPECT_FALSE(p3["has_more"].get<bool>());

  // The interactive mode sends each typed line; end of input leaves once sent.
  auto chat = alice.Run({"chat", "bob"}, "typed in chat\n");
  EXPECT_EQ(chat.exit_code, 0) << chat.err;
  EXPECT_NE(chat.out.find("chatting with bob"), std::string::npos) << chat.out;
  auto p0 = alice.Json({"history", "bob", "--limit", "1"});
  ASSERT_EQ(p0["messages"].size(), 1u);
  EXPECT_EQ(p0["messages"][0]["body"], "typed in chat");
  EXPECT_EQ(p0["messages"][0]["seq"], 8);
}

// wss: the server address names the scheme, --ca-file at login is kept, so
// later runs need neither; a server certificate the CA does not vouch for is
// refused (exit 4, unreachable).
TEST(CliE2E, WorksOverWssWithTheCaFileKeptFromLogin) {
  TempDir dir;
  std::string cert = dir / "server.crt", key = dir / "server.key";
  std::string cmd = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 "
                    "-subj /CN=localhost -addext subjectAltName=IP:127.0.0.1,DNS:localhost -keyout '" +
                    key + "' -out '" + cert + "' >/dev/null 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  ServerProcess s({"--tls-cert", cert, "--tls-key", key});
  ConnectOptions wss;
  wss.tls = true;
  wss.ca_file = cert;
  s.set_connect_options(wss);
  Register(s, "bob");
  std::string server = "wss://127.0.0.1:" + std::to_string(s.port());
  auto run = [&](std::vector<std::string> args) {
    std::vector<std::string> a = {"--config-dir", dir / "cfg", "--timeout", "5000"};
    a.insert(a.end(), args.begin(), args.end());
    return RunCli(dir, a);
  };
  auto no_ca = run({"--server", server, "--json", "register", "alice", "--password", "correct horse"});
  EXPECT_EQ(no_ca.exit_code, 4) << no_ca.out << no_ca.err;  // the system CAs do not know it
  auto reg = run({"--server", server, "--ca-file", cert, "register", "alice", "--password", "correct horse"});
  ASSERT_EQ(reg.exit_code, 0) << reg.err;
  auto login = run({"--server", server, "--ca-file", cert, "login", "alice", "--password", "correct horse"});
  ASSERT_EQ(login.exit_code, 0) << login.err;
  auto sent = run({"send", "bob", "over", "wss"});
  ASSERT_EQ(sent.exit_code, 0) << sent.err;
  Device bob = Login(s, "bob");
  int received = 0;
  for (const auto& e : SyncAll(*bob.conn, 0))
    if (e["kind"] == "message" && e["message"]["body"] == "over wss") ++received;
  EXPECT_EQ(received, 1);
  auto history = run({"--json", "history", "bob"});
  ASSERT_EQ(history.exit_code, 0) << history.err;
  EXPECT_EQ(history.Json()["messages"][0]["status"], "sent");
}

TEST(CliE2E, DraftIsSetShownInChatsSyncedToAnotherDeviceSavedAfterOfflineAndClearedBySend) {
  ServerProcess s;
  TempDir dir;
  CliUser alice(dir, "alice", s.port()), alice2(dir, "alice2", s.port()), bob(dir, "bob", s.port());
  ASSERT_EQ(alice.Run({"register", "alice", "--password", "correct horse"}).exit_code, 0);
  ASSERT_EQ(bob.Run({"register", "bob", "--password", "correct horse"}).exit_code, 0);
  ASSERT_EQ(alice.Run({"login", "alice", "--password", "correct horse"}).exit_code, 0);
  ASSERT_EQ(alice2.Run({"login", "alice", "--password", "correct horse", "--device-name", "second"}).exit_code, 0);

  auto set = alice.Run({"draft", "bob", "see", "you", "at"});
  ASSERT_EQ(set.exit_code, 0) << set.err;
  EXPECT_NE(set.out.find("draft saved for bob"), std::string::npos) << set.out;
  // The other device: `draft` shows it, `chats` lists it (human and JSON).
  auto shown = alice2.Run({"draft", "bob"});
  EXPECT_NE(shown.out.find("draft for bob: see you at"), std::string::npos) << shown.out;
  auto chats = alice2.Json({"chats"});
  ASSERT_EQ(chats["conversations"].size(), 1u) << chats.dump();
  EXPECT_EQ(chats["conversations"][0]["draft"], "see you at");
  EXPECT_NE(alice2.Run({"chats"}).out.find("[draft: see you at]"), std::string::npos);

  // Offline: kept locally, shown, and saved by the next run that gets online.
  s.Kill9();
  auto kept = alice2.Run({"--timeout", "300", "draft", "bob", "later"});
  ASSERT_EQ(kept.exit_code, 0) << kept.err;
  EXPECT_NE(kept.out.find("offline"), std::string::npos) << kept.out;
  auto offline = alice2.Json({"--timeout", "300", "chats"});
  EXPECT_EQ(offline["offline"], true);
  EXPECT_EQ(offline["conversations"][0]["draft"], "later");
  s.Start();
  ASSERT_EQ(alice2.Run({"chats"}).exit_code, 0);  // any online run saves it
  auto later = alice.Json({"draft", "bob"});
  EXPECT_EQ(later["draft"], "later");
  EXPECT_EQ(later["pending"], false);

  // Sending clears it on every device; --clear clears it too.
  ASSERT_EQ(alice.Run({"send", "bob", "hi"}).exit_code, 0);
  EXPECT_EQ(alice.Json({"draft", "bob"})["draft"], "");
  EXPECT_EQ(alice2.Json({"draft", "bob"})["draft"], "");
  ASSERT_EQ(alice2.Run({"draft", "bob", "again"}).exit_code, 0);
  auto cleared = alice.Run({"draft", "bob", "--clear"});
  EXPECT_NE(cleared.out.find("draft cleared for bob"), std::string::npos) << cleared.out;
  EXPECT_EQ(alice2.Json({"draft", "bob"})["draft"], "");

  // Bad input: a usage error; an unknown user: refused by the server.
  EXPECT_EQ(alice.Run({"draft", "bob", "x", "--clear"}).exit_code, 2);
  auto unknown = alice.Run({"--json", "draft", "nobody_here", "hello"});
  EXPECT_EQ(unknown.exit_code, 5) << unknown.out << unknown.err;
}

}  // namespace
}  // namespace parley::testing
