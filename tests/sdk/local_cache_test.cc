// The SDK's local cache (clients/sdk/src/local_cache.h) on its own, with
// events made up in the test: the selective-sync state (docs/sdk.md
// "Selective sync") and the order rules between answers and stream events
// that an end-to-end test cannot time.
#include "local_cache.h"

#include <gtest/gtest.h>

#include "sdk/sdk_test_util.h"

namespace parley::sdk {
namespace {

using nlohmann::json;
using parley::testing::TempDir;

constexpr int64_t kMe = 1, kBob = 2, kConv = 3;

class LocalCacheTest : public ::testing::Test {
 protected:
  void SetUp() override { Reopen(); }

  void Reopen() {
    cache_.reset();
    LocalError err;
    cache_ = LocalCache::Open(dir_ / "cache.db", 0, &err);
    ASSERT_TRUE(cache_) << err.message;
    cache_->SetIdentity(kMe, "alice", 10);
  }

  // Applies events at the next user seqs.
  void Apply(std::vector<json> events) {
    for (auto& e : events) e["user_seq"] = ++user_seq_;
    ApplyOutcome out;
    LocalError err;
    ASSERT_TRUE(cache_->ApplyEvents(events, &out, &err)) << err.message;
    ASSERT_FALSE(out.gap);
  }

  static json Conversation(int64_t disappearing_s = 0) {
    return {{"conversation_id", kConv},
            {"members", {{{"user_id", kMe}, {"username", "alice"}}, {{"user_id", kBob}, {"username", "bob"}}}},
            {"last_seq", 0},
            {"created_at", 5},
            {"disappearing_s", disappearing_s}};
  }
  static json Message(int64_t seq, int64_t sender = kBob) {
    return {{"conversation_id", kConv}, {"seq", seq}, {"sender_id", sender}, {"client_id", "c" + std::to_string(seq)},
            {"body", "m" + std::to_string(seq)}, {"ts", 1000 + seq}};
  }
  // A summary covering its own user seq and the next `extra` ones.
  json Summary(int64_t last_seq, int64_t unread, int64_t extra = 0) const {
    const int64_t at = user_seq_ + 1;
    return {{"kind", "summary"}, {"conversation_id", kConv}, {"last_seq", last_seq}, {"unread", unread},
            {"covers", {{at, at + extra}}}};
  }
  void ApplySummary(int64_t last_seq, int64_t unread, int64_t extra = 0) {
    Apply({Summary(last_seq, unread, extra)});
    user_seq_ += extra;
  }
  CachedConversation Bob() { return *cache_->ConversationWith("bob"); }

  TempDir dir_;
  std::unique_ptr<LocalCache> cache_;
  int64_t user_seq_ = 0;
};

// A coalesced receipt stands for the later user seqs it lists in
// also_covers; when the connection drops before the seqs between, the sync
// from the contiguous cursor brings those listed seqs again: they were seen,
// and are not applied twice (the cluster chaos run caught a receipt applied
// twice this way).
TEST_F(LocalCacheTest, ASeqCoveredByACoalescedReceiptIsNotAppliedAgainBySync) {
  Apply({{{"kind", "conversation"}, {"conversation_id", kConv}, {"conversation", Conversation()}}});
  const int64_t base = user_seq_;
  auto receipt = [&](int64_t user_seq, int64_t delivered) {
    return json{{"kind", "receipt"}, {"conversation_id", kConv}, {"user_id", kBob}, {"delivered", delivered},
                {"read", 0}, {"user_seq", user_seq}};
  };
  json merged = receipt(base + 1, 2);
  merged["also_covers"] = {base + 3};
  ApplyOutcome out;
  LocalError err;
  ASSERT_TRUE(cache_->ApplyEvents({merged}, &out, &err)) << err.message;
  ASSERT_EQ(out.applied.size(), 1u);
  // The sync after the drop: base+2 (another event), base+3 again, base+4.
  ASSERT_TRUE(cache_->ApplyEvents({{{"kind", "message"}, {"message", Message(1)}, {"user_seq", base + 2}},
                                   receipt(base + 3, 2), receipt(base + 4, 3)},
                                  &out, &err))
      << err.message;
  ASSERT_EQ(out.applied.size(), 2u) << "the covered receipt was applied again";
  EXPECT_EQ(out.applied[0]["user_seq"], base + 2);
  EXPECT_EQ(out.applied[1]["user_seq"], base + 4);
  EXPECT_FALSE(out.gap);
  EXPECT_EQ(cache_->applied().value_or(0), base + 4);
}

TEST_F(LocalCacheTest, AnOpenConversationAnswerNeverBringsBackAnOlderTimer) {
  Apply({{{"kind", "conversation"}, {"conversation", Conversation()}}});
  // The timer is set; an open_conversation answer read before that is
  // handled after it (the worker applies queued events before answers).
  Apply({{{"kind", "disappearing"}, {"conversation_id", kConv}, {"seconds", 3600}}});
  LocalError err;
  ASSERT_TRUE(cache_->StoreConversation(Conversation(0), &err));
  EXPECT_EQ(Bob().disappearing_s, 3600);
  // The stream still decides: a later event turns it off.
  Apply({{{"kind", "disappearing"}, {"conversation_id", kConv}, {"seconds", 0}}});
  EXPECT_EQ(Bob().disappearing_s, 0);
  // A conversation the cache did not know takes the answer's timer.
  json other = Conversation(86400);
  other["conversation_id"] = 4;
  other["members"][1] = {{"user_id", 5}, {"username", "carol"}};
  ASSERT_TRUE(cache_->StoreConversation(other, &err));
  EXPECT_EQ(cache_->ConversationWith("carol")->disappearing_s, 86400);
}

TEST_F(LocalCacheTest, OpenedConversationsSurviveASnapshotAndAReopenNewestFirst) {
  cache_->AddOpened(5, 100);
  cache_->AddOpened(3, 200);
  cache_->AddOpened(5, 300);
  EXPECT_EQ(cache_->Opened(), (std::vector<int64_t>{5, 3}));
  ApplyOutcome out;
  LocalError err;
  ASSERT_TRUE(cache_->ApplySnapshot({{"head", 7}, {"conversations", json::array()}}, &out, &err)) << err.message;
  Reopen();
  EXPECT_EQ(cache_->Opened(), (std::vector<int64_t>{5, 3}));
}

TEST_F(LocalCacheTest, PagedAfterSummariesTheCountComesFromTheMessagesAndALateSummaryChangesNothing) {
  Apply({{{"kind", "conversation"}, {"conversation", Conversation()}}});
  ApplySummary(3, 3);
  EXPECT_TRUE(Bob().summarised);
  EXPECT_EQ(Bob().unread, 3);
  // Selected at head 2, then paged: messages 1-3 (the first is reached).
  cache_->MarkSelected(kConv, user_seq_ + 1);
  LocalError err;
  ASSERT_TRUE(cache_->StoreHistory(kConv, {Message(1), Message(2), Message(3)}, json::array(), &err));
  cache_->MarkPaged(kConv, 1, true);
  EXPECT_FALSE(Bob().summarised);
  EXPECT_EQ(Bob().unread, 3);
  // A summary made before the selection arrives now; its count was read
  // after message 4 was stored, which then arrives in full: counted once.
  ApplySummary(4, 4);
  EXPECT_EQ(Bob().last_seq, 4);
  EXPECT_EQ(Bob().unread, 3);
  EXPECT_FALSE(Bob().summarised);
  Apply({{{"kind", "message"}, {"message", Message(4)}}});
  EXPECT_EQ(Bob().unread, 4);
  // Reading part of it on another device: exact, from the messages.
  Apply({{{"kind", "receipt"}, {"conversation_id", kConv}, {"user_id", kMe}, {"delivered", 4}, {"read", 1}}});
  EXPECT_EQ(Bob().unread, 3);
}

// The race the web client met (docs/sdk.md "Selective sync"): the conversation
// was selected before any summary stood for it, so nothing was paged; a
// summary made before the selection arrives after its answer. Its message is
// missing: the conversation is summarised again (and FillSelected pages it),
// unless the cache already holds the summary's last message.
TEST_F(LocalCacheTest, ALateSummaryWithNothingPagedMarksItsMessagesMissing) {
  Apply({{{"kind", "conversation"}, {"conversation", Conversation()}}});
  Apply({{{"kind", "message"}, {"message", Message(1)}}});
  ASSERT_FALSE(Bob().summarised);
  cache_->MarkSelected(kConv, user_seq_ + 2);  // the summaries below were made before it
  ApplySummary(1, 1);                          // covers message 1, which the cache holds
  EXPECT_FALSE(Bob().summarised) << "the cache holds its last message";
  EXPECT_EQ(Bob().unread, 1);
  ApplySummary(2, 2);  // message 2 was never paged nor received
  EXPECT_TRUE(Bob().summarised) << "message 2 is missing, and nothing says so";
  EXPECT_EQ(Bob().unread, 2);
  EXPECT_EQ(cache_->Summarised(), (std::vector<int64_t>{kConv}));
  // Paged (FillSelected): the count comes from the messages again.
  LocalError err;
  ASSERT_TRUE(cache_->StoreHistory(kConv, {Message(1), Message(2)}, json::array(), &err));
  cache_->MarkPaged(kConv, 1, true);
  EXPECT_FALSE(Bob().summarised);
  EXPECT_EQ(Bob().unread, 2);
  EXPECT_TRUE(cache_->Summarised().empty());
}

TEST_F(LocalCacheTest, FillReachedWhenThePagesJoinTheCacheOrTheReadWatermark) {
  Apply({{{"kind", "conversation"}, {"conversation", Conversation()}}});
  Apply({{{"kind", "message"}, {"message", Message(1)}}, {{"kind", "message"}, {"message", Message(2)}}});
  ApplySummary(9, 7, 6);
  EXPECT_EQ(Bob().unread, 7);
  EXPECT_TRUE(cache_->FillReached(kConv, 3));
  EXPECT_FALSE(cache_->FillReached(kConv, 4));
  Apply({{{"kind", "receipt"}, {"conversation_id", kConv}, {"user_id", kMe}, {"delivered", 5}, {"read", 5}}});
  EXPECT_TRUE(cache_->FillReached(kConv, 6)) << "every unread message is above the read watermark";
}

TEST_F(LocalCacheTest, PagesStoppedBeforeEveryUnreadMessageKeepTheRestAsACount) {
  Apply({{{"kind", "conversation"}, {"conversation", Conversation()}}});
  ApplySummary(10, 10);
  LocalError err;
  ASSERT_TRUE(cache_->StoreHistory(kConv, {Message(8), Message(9), Message(10)}, json::array(), &err));
  cache_->MarkPaged(kConv, 8, false);
  EXPECT_EQ(Bob().unread, 10) << "3 cached and 7 below them";
  Apply({{{"kind", "receipt"}, {"conversation_id", kConv}, {"user_id", kMe}, {"delivered", 10}, {"read", 8}}});
  EXPECT_EQ(Bob().unread, 2);
}

TEST_F(LocalCacheTest, AnUnreadMessageDeletedForMeLeavesTheServersCount) {
  Apply({{{"kind", "conversation"}, {"conversation", Conversation()}}});
  Apply({{{"kind", "message"}, {"message", Message(1)}}, {{"kind", "message"}, {"message", Message(2)}}});
  ApplySummary(3, 3);
  EXPECT_EQ(Bob().unread, 3);
  Apply({{{"kind", "delete_for_me"}, {"conversation_id", kConv}, {"seq", 2}}});
  EXPECT_EQ(Bob().unread, 2);
}

// A queued message clears the draft on screen, as the server will when it
// stores the message. A message the server refuses (here: blocked) never
// clears it there and no `draft` event follows, so the cache puts the
// server's draft back once nothing queued may still clear it; a `draft`
// event that arrived meanwhile wins. (Found by chaos_cluster_short: two
// devices kept an empty draft after a refused send.)
TEST_F(LocalCacheTest, ADraftClearedByAMessageTheServerRefusesComesBack) {
  Apply({{{"kind", "conversation"}, {"conversation", Conversation()}},
         {{"kind", "draft"}, {"conversation_id", kConv}, {"text", "half a thought"}, {"updated_at", 100}}});
  ASSERT_EQ(Bob().draft, "half a thought");
  LocalError err;
  auto queue = [&](const std::string& client_id, int64_t at) {
    OutboxRow row;
    row.client_id = client_id;
    row.peer = "bob";
    row.body = "hi";
    row.created_at = at;
    EXPECT_TRUE(cache_->AddOutbox(row, &err)) << err.message;
  };
  queue("a", 200);
  queue("b", 210);
  EXPECT_EQ(Bob().draft, "");
  ASSERT_TRUE(cache_->FailOutbox("a", "blocked", "refused", &err));
  EXPECT_EQ(Bob().draft, "") << "b is still queued and may clear the server's draft";
  ASSERT_TRUE(cache_->FailOutbox("b", "blocked", "refused", &err));
  EXPECT_EQ(Bob().draft, "half a thought") << "neither message was stored: the server kept its draft";
  Reopen();
  EXPECT_EQ(Bob().draft, "half a thought");

  // A draft event after the clearing is the server's newer word.
  queue("c", 300);
  Apply({{{"kind", "draft"}, {"conversation_id", kConv}, {"text", ""}, {"updated_at", 301}}});
  ASSERT_TRUE(cache_->FailOutbox("c", "blocked", "refused", &err));
  EXPECT_EQ(Bob().draft, "");
}

// A set_draft answer can reach the device after its own `draft` event and
// after later ones (a sync read, or in a cluster another node's event, can
// overtake it): the saved text is shown only until the cache applies its
// event. (Found by chaos_cluster_short: a device kept a draft that another
// device's send had cleared.)
TEST_F(LocalCacheTest, ADraftAnswerNeverUndoesItsOwnEventOrALaterOne) {
  Apply({{{"kind", "conversation"}, {"conversation", Conversation()}}});
  LocalError err;
  ASSERT_TRUE(cache_->SetPendingDraft("bob", "see you at", 100, &err)) << err.message;
  EXPECT_EQ(Bob().draft, "see you at");
  // The draft's event, then another device's send clearing it, both
  // applied before the answer.
  Apply({{{"kind", "draft"}, {"conversation_id", kConv}, {"text", "see you at"}, {"updated_at", 101}}});
  const int64_t own_event = user_seq_;
  Apply({{{"kind", "draft"}, {"conversation_id", kConv}, {"text", ""}, {"updated_at", 102}}});
  cache_->DraftSaved("bob", 1, kConv, "see you at", own_event, 103);
  EXPECT_TRUE(cache_->PendingDrafts().empty());
  EXPECT_EQ(Bob().draft, "") << "the later event stands";

  // The answer first: its text shows until its event arrives.
  ASSERT_TRUE(cache_->SetPendingDraft("bob", "at noon", 200, &err)) << err.message;
  cache_->DraftSaved("bob", 1, kConv, "at noon", user_seq_ + 1, 201);
  EXPECT_TRUE(cache_->PendingDrafts().empty());
  EXPECT_EQ(Bob().draft, "at noon");
  Apply({{{"kind", "draft"}, {"conversation_id", kConv}, {"text", "at noon"}, {"updated_at", 201}}});
  EXPECT_EQ(Bob().draft, "at noon");

  // Unchanged (the server already had the text, no event): the events,
  // not the answer, say what is shown.
  ASSERT_TRUE(cache_->SetPendingDraft("bob", "at one", 300, &err)) << err.message;
  cache_->DraftSaved("bob", 1, kConv, "at one", 0, 301);
  EXPECT_TRUE(cache_->PendingDrafts().empty());
  EXPECT_EQ(Bob().draft, "at noon");
}

}  // namespace
}  // namespace parley::sdk
