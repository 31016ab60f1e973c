// Selective sync in the SDK (issue 12 item 3; docs/sdk.md "Selective sync")
// against a real parleyd: a client that syncs only its most recent
// conversation in full keeps the others as summaries (unread count, last
// seq) and pages a conversation's messages when the app opens it; from then
// on that conversation arrives in full.
#include "sdk/sdk_test_util.h"

namespace parley::testing {
namespace {

std::optional<CachedConversation> With(Client& c, const std::string& peer) { return c.ConversationWith(peer); }

TEST(SelectiveSdkE2E, UnselectedConversationsAreSummariesUntilOpenedThenArriveInFull) {
  ServerProcess s;
  std::string token = RegisterAndLogin(s, "alice");
  Register(s, "bob");
  Register(s, "carol");
  Device setup = Login(s, "alice", "setup");
  Device bob = Login(s, "bob");
  Device carol = Login(s, "carol");
  auto open = [&](const std::string& peer) {
    auto r = setup.conn->Call("open_conversation", {{"username", peer}});
    EXPECT_TRUE(r.ok) << r.code;
    return r.result["conversation"]["conversation_id"].get<int64_t>();
  };
  int64_t with_bob = open("bob");
  int64_t with_carol = open("carol");
  auto send = [](Device& d, int64_t conv, const std::string& id) {
    auto r = d.conn->Call("send", {{"conversation_id", conv}, {"client_id", id}, {"body", "text " + id}});
    EXPECT_TRUE(r.ok) << r.code;
    return r.result["seq"].get<int64_t>();
  };
  for (int i = 1; i <= 3; ++i) send(bob, with_bob, "b" + std::to_string(i));
  send(carol, with_carol, "c1");  // carol's conversation is the most recent

  TempDir dir;
  auto o = OptionsFor(s, dir / "alice.db", token);
  o.sync_recent_conversations = 1;
  o.snapshot_messages = 0;  // the new cache starts from summaries only
  auto client = OpenClient(o);
  ASSERT_TRUE(client);
  client->Start();
  ASSERT_TRUE(client->WaitOnline(10000));

  // bob's conversation is not selected: his new messages come as summaries.
  send(bob, with_bob, "b4");
  int64_t b5 = send(bob, with_bob, "b5");
  int64_t c2 = send(carol, with_carol, "c2");
  ASSERT_TRUE(Eventually([&] { return client->Messages("carol", 0, 10).size() == 1u; }, 10000))
      << "carol's conversation arrives in full";
  EXPECT_EQ(client->Messages("carol", 0, 10)[0].seq, c2);
  ASSERT_TRUE(Eventually(
      [&] {
        auto b = With(*client, "bob");
        return b && b->unread == 5 && b->last_seq == b5;
      },
      10000));
  auto b = With(*client, "bob");
  EXPECT_TRUE(b->summarised);
  EXPECT_TRUE(client->Messages("bob", 0, 10).empty()) << "no message of a summarised conversation is fetched";
  EXPECT_FALSE(With(*client, "carol")->summarised);

  // The app opens bob's conversation: its messages are paged in, and it is
  // selected from now on.
  Reply err;
  auto msgs = client->OpenConversation("bob", 50, &err);
  ASSERT_TRUE(err.code.empty()) << err.code << ": " << err.message;
  ASSERT_EQ(msgs.size(), 5u);
  for (size_t i = 0; i < msgs.size(); ++i) EXPECT_EQ(msgs[i].seq, static_cast<int64_t>(i + 1));
  EXPECT_FALSE(With(*client, "bob")->summarised);
  EXPECT_EQ(With(*client, "bob")->unread, 5);
  int64_t b6 = send(bob, with_bob, "b6");
  ASSERT_TRUE(Eventually([&] { return client->Messages("bob", 0, 10).size() == 6u; }, 10000))
      << "bob's conversation arrives in full once opened";
  EXPECT_EQ(client->Messages("bob", 0, 10).back().seq, b6);
  EXPECT_EQ(With(*client, "bob")->unread, 6);
  // Reading it (an own receipt, in full now) brings the count to zero.
  client->MarkRead(with_bob, b6);
  EXPECT_TRUE(Eventually([&] { return With(*client, "bob")->unread == 0; }, 10000));
  client->Stop();
}

// Alice's account with a conversation with bob (bob's messages are sent
// after her client started with nothing selected, so they reach it as
// summaries) and a setup device of hers to read on.
struct Accounts {
  ServerProcess s;
  std::string token;
  Device setup, bob, carol;
  int64_t with_bob = 0, with_carol = 0;

  Accounts() {
    token = RegisterAndLogin(s, "alice");
    Register(s, "bob");
    Register(s, "carol");
    setup = Login(s, "alice", "setup");
    bob = Login(s, "bob");
    carol = Login(s, "carol");
    with_bob = Open("bob");
    with_carol = Open("carol");
  }
  int64_t Open(const std::string& peer) {
    auto r = setup.conn->Call("open_conversation", {{"username", peer}});
    EXPECT_TRUE(r.ok) << r.code;
    return r.ok ? r.result["conversation"]["conversation_id"].get<int64_t>() : 0;
  }
  static int64_t Send(Device& d, int64_t conv, const std::string& id) {
    auto r = d.conn->Call("send", {{"conversation_id", conv}, {"client_id", id}, {"body", "text " + id}});
    EXPECT_TRUE(r.ok) << r.code;
    return r.ok ? r.result["seq"].get<int64_t>() : 0;
  }
  // alice reads on her other device (an own receipt: in full on a
  // connection that selected the conversation, a summary on one that did not).
  void ReadOnSetup(int64_t conv, int64_t seq) {
    auto r = setup.conn->Call("receipt", {{"items", {{{"conversation_id", conv}, {"read", seq}}}}});
    EXPECT_TRUE(r.ok) << r.code;
  }
};

// docs/sdk.md "Selective sync": the unread count was the server's while a
// summary stood, and fell back to the cached messages on a partial read by
// another device even though OpenConversation had paged only `limit` of
// them. Now opening pages until every unread message is cached, so the
// count stays exact; and the opened conversation is selected again by a
// new Client on the same cache.
TEST(SelectiveSdkE2E, UnreadStaysExactAfterAPartialReadElsewhereAndOpenedConversationsSurviveARestart) {
  Accounts a;
  TempDir dir;
  auto o = OptionsFor(a.s, dir / "alice.db", a.token);
  o.sync_recent_conversations = 1;
  {
    auto client = OpenClient(o);
    ASSERT_TRUE(client);
    client->Start();
    ASSERT_TRUE(client->WaitOnline(10000));
    Accounts::Send(a.carol, a.with_carol, "c1");
    int64_t last = 0;
    for (int i = 1; i <= 5; ++i) last = Accounts::Send(a.bob, a.with_bob, "b" + std::to_string(i));
    ASSERT_TRUE(Eventually([&] { auto b = client->ConversationWith("bob"); return b && b->unread == 5 && b->summarised; },
                           10000));
    // The app shows the newest two, yet every unread message is cached.
    Reply err;
    auto msgs = client->OpenConversation("bob", 2, &err);
    ASSERT_TRUE(err.code.empty()) << err.code << ": " << err.message;
    ASSERT_EQ(msgs.size(), 2u);
    EXPECT_EQ(msgs.back().seq, last);
    EXPECT_EQ(client->Messages("bob", 0, 10).size(), 5u);
    EXPECT_FALSE(client->ConversationWith("bob")->summarised);
    EXPECT_EQ(client->ConversationWith("bob")->unread, 5);
    // Alice reads the first two on her other device: three stay unread.
    a.ReadOnSetup(a.with_bob, 2);
    ASSERT_TRUE(Eventually([&] { return client->ConversationWith("bob")->my_read == 2; }, 10000));
    EXPECT_EQ(client->ConversationWith("bob")->unread, 3);
    client->Stop();
  }
  // carol's is the most recent now; a new Client on the same cache still
  // selects bob's (the app opened it): his next message arrives in full.
  Accounts::Send(a.carol, a.with_carol, "c2");
  auto client = OpenClient(o);
  ASSERT_TRUE(client);
  client->Start();
  ASSERT_TRUE(client->WaitOnline(10000));
  int64_t b6 = Accounts::Send(a.bob, a.with_bob, "b6");
  ASSERT_TRUE(Eventually([&] { return client->Messages("bob", 0, 10).size() == 6u; }, 10000))
      << "bob's conversation is selected again after the restart";
  EXPECT_EQ(client->Messages("bob", 0, 10).back().seq, b6);
  EXPECT_FALSE(client->ConversationWith("bob")->summarised);
  EXPECT_EQ(client->ConversationWith("bob")->unread, 4);
  EXPECT_EQ(client->Messages("carol", 0, 10).size(), 2u);
  client->Stop();
}

// A conversation kept as summaries that a later session selects as one of
// its recent ones is paged at the start of that session: its messages are
// cached, and a partial read on another device leaves the exact count.
TEST(SelectiveSdkE2E, ASummarisedConversationSelectedAsRecentIsPagedWhenTheSessionStarts) {
  Accounts a;
  TempDir dir;
  auto o = OptionsFor(a.s, dir / "alice.db", a.token);
  o.sync_recent_conversations = 1;
  {
    auto client = OpenClient(o);
    ASSERT_TRUE(client);
    client->Start();
    ASSERT_TRUE(client->WaitOnline(10000));
    Accounts::Send(a.carol, a.with_carol, "c1");
    for (int i = 1; i <= 3; ++i) Accounts::Send(a.bob, a.with_bob, "b" + std::to_string(i));
    ASSERT_TRUE(Eventually([&] { auto b = client->ConversationWith("bob"); return b && b->unread == 3 && b->summarised; },
                           10000));
    EXPECT_TRUE(client->Messages("bob", 0, 10).empty());
    client->Stop();
  }
  Accounts::Send(a.bob, a.with_bob, "b4");  // bob's is the most recent now
  auto client = OpenClient(o);
  ASSERT_TRUE(client);
  client->Start();
  ASSERT_TRUE(client->WaitOnline(10000));
  auto b = client->ConversationWith("bob");
  ASSERT_TRUE(b);
  EXPECT_FALSE(b->summarised);
  EXPECT_EQ(client->Messages("bob", 0, 10).size(), 4u) << "paged before the client went online";
  EXPECT_EQ(b->unread, 4);
  a.ReadOnSetup(a.with_bob, 1);
  ASSERT_TRUE(Eventually([&] { return client->ConversationWith("bob")->my_read == 1; }, 10000));
  EXPECT_EQ(client->ConversationWith("bob")->unread, 3);
  client->Stop();
}

}  // namespace
}  // namespace parley::testing
