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

}  // namespace
}  // namespace parley::testing
