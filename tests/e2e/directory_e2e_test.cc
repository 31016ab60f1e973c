// End-to-end: finding users and starting chats with them (issue 3 items 3
// and 6) beyond what social_e2e_test covers: caseless search over non-ASCII
// display names (Unicode folding, common/text_fold.h) and opening the same
// conversation again.
#include <gtest/gtest.h>

#include "e2e/helpers.h"

namespace parley::testing {
namespace {

std::vector<std::string> Usernames(Device& d, const std::string& query) {
  auto r = d.conn->Call("search_users", {{"query", query}});
  EXPECT_TRUE(r.ok) << query << ": " << r.code << " " << r.message;
  std::vector<std::string> out;
  for (auto& u : r.result["users"]) out.push_back(u["username"]);
  return out;
}

TEST(DirectoryE2E, SearchMatchesAccentedGreekAndCyrillicNameWordsWhateverTheirCase) {
  ServerProcess server;
  // Usernames unlike the names, so every match below is a display-name word.
  for (auto u : {"searcher", "fr1", "gr1", "ru1", "en1", "de1"}) Register(server, u);
  Device s = Login(server, "searcher");
  const std::pair<const char*, const char*> names[] = {
      {"fr1", "Élodie Durand"}, {"gr1", "ΣΟΦΊΑ Παπαδοπούλου"}, {"ru1", "Дмитрий Иванов"},
      {"en1", "Eloise"},        {"de1", "Johann STRAẞE"},
  };
  std::vector<Device> owners;
  for (const auto& [user, display] : names) {
    owners.push_back(Login(server, user));
    auto r = owners.back().conn->Call("set_profile", {{"display_name", display}});
    ASSERT_TRUE(r.ok) << r.message;
  }
  using V = std::vector<std::string>;
  EXPECT_EQ(Usernames(s, "élodie"), V{"fr1"});
  EXPECT_EQ(Usernames(s, "ÉLO"), V{"fr1"});
  EXPECT_EQ(Usernames(s, "E\u0301lodie"), V{"fr1"});  // decomposed é
  EXPECT_EQ(Usernames(s, "durand"), V{"fr1"});
  EXPECT_EQ(Usernames(s, "σοφία"), V{"gr1"});
  EXPECT_EQ(Usernames(s, "Σοφ"), V{"gr1"});
  EXPECT_EQ(Usernames(s, "ΠΑΠΑΔΟΠΟΎΛΟΥ"), V{"gr1"});
  EXPECT_EQ(Usernames(s, "дмитрий"), V{"ru1"});
  EXPECT_EQ(Usernames(s, "ИВАН"), V{"ru1"});
  EXPECT_EQ(Usernames(s, "strasse"), V{"de1"});  // ẞ folds to "ss"
  // Folding is not accent stripping: "elo" is Eloise's, not Élodie's.
  EXPECT_EQ(Usernames(s, "elo"), V{"en1"});
  EXPECT_EQ(Usernames(s, "ÉLOI"), V{});
  // Block filtering holds for these matches too.
  ASSERT_TRUE(owners[2].conn->Call("block", {{"username", "searcher"}}).ok);
  EXPECT_EQ(Usernames(s, "ДМИТРИЙ"), V{});
  // A renamed user is found by the new name only.
  ASSERT_TRUE(owners[0].conn->Call("set_profile", {{"display_name", "Émilie"}}).ok);
  EXPECT_EQ(Usernames(s, "ÉLODIE"), V{});
  EXPECT_EQ(Usernames(s, "émi"), V{"fr1"});
}

TEST(DirectoryE2E, OpeningTheSameConversationAgainGivesTheSameIdNotCreated) {
  ServerProcess server;
  Register(server, "alice");
  Register(server, "bob");
  Device a = Login(server, "alice");
  Device b = Login(server, "bob");
  auto first = a.conn->Call("open_conversation", {{"username", "bob"}});
  ASSERT_TRUE(first.ok) << first.message;
  EXPECT_TRUE(first.result["created"].get<bool>());
  int64_t id = first.result["conversation"]["conversation_id"];
  auto again = a.conn->Call("open_conversation", {{"username", "BOB"}});
  ASSERT_TRUE(again.ok) << again.message;
  EXPECT_FALSE(again.result["created"].get<bool>());
  EXPECT_EQ(again.result["conversation"]["conversation_id"], id);
  auto other_side = b.conn->Call("open_conversation", {{"username", "alice"}});
  ASSERT_TRUE(other_side.ok) << other_side.message;
  EXPECT_FALSE(other_side.result["created"].get<bool>());
  EXPECT_EQ(other_side.result["conversation"]["conversation_id"], id);
  // Each member's stream announced it once.
  for (Device* d : {&a, &b}) {
    int announced = 0;
    for (const json& e : SyncAll(*d->conn, 0))
      if (e["kind"] == "conversation" && e["conversation"]["conversation_id"] == id) ++announced;
    EXPECT_EQ(announced, 1);
  }
}

}  // namespace
}  // namespace parley::testing
