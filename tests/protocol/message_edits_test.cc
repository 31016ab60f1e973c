// The pure rules of edits and deletes (protocol/message_edits.h) that the
// server (both store backends) and the SDK share. The vectors of
// docs/protocol.md run through the store in store_conformance_test and end
// to end in edits_e2e_test; here: the rules' order and that a device's
// result never depends on the order in which events arrive.
#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "protocol/edit_vectors.h"
#include "protocol/message_edits.h"
#include "test_paths.h"

namespace parley::protocol {
namespace {

TEST(MessageEditsTest, ServerRulesApplyInTheirDocumentedOrder) {
  ChangeWindows w{100, 1000};
  StoredMessageState m;
  m.sender_id = 1;
  m.created_at = 10;
  // Only the sender, before anything else (even a duplicate's client id).
  m.same_client_id_version = 3;
  EXPECT_EQ(DecideChange(ChangeKind::kEdit, m, 2, 20, w).code, ErrorCode::kForbidden);
  EXPECT_EQ(DecideChange(ChangeKind::kDelete, m, 2, 20, w).code, ErrorCode::kForbidden);
  // A retried edit gets its version back, even after the delete and the window.
  m.deleted = true;
  m.version = 4;
  ChangeDecision dup = DecideChange(ChangeKind::kEdit, m, 1, 100'000, w);
  EXPECT_EQ(dup.code, ErrorCode::kOk);
  EXPECT_TRUE(dup.duplicate);
  EXPECT_EQ(dup.version, 3);
  m.same_client_id_version = 0;
  EXPECT_EQ(DecideChange(ChangeKind::kEdit, m, 1, 20, w).code, ErrorCode::kMessageDeleted);
  ChangeDecision again = DecideChange(ChangeKind::kDelete, m, 1, 100'000, w);
  EXPECT_TRUE(again.duplicate);
  EXPECT_EQ(again.version, 4);
  // Windows: inclusive at the edge.
  m.deleted = false;
  EXPECT_EQ(DecideChange(ChangeKind::kEdit, m, 1, 110, w).version, 5);
  EXPECT_EQ(DecideChange(ChangeKind::kEdit, m, 1, 111, w).code, ErrorCode::kEditWindowClosed);
  EXPECT_EQ(DecideChange(ChangeKind::kDelete, m, 1, 1010, w).version, 5);
  EXPECT_EQ(DecideChange(ChangeKind::kDelete, m, 1, 1011, w).code, ErrorCode::kDeleteWindowClosed);
  // Delete for me: any member, any time, once.
  EXPECT_FALSE(DecideChange(ChangeKind::kDeleteForMe, m, 2, 1'000'000, w).duplicate);
  m.hidden = true;
  EXPECT_TRUE(DecideChange(ChangeKind::kDeleteForMe, m, 2, 1'000'000, w).duplicate);
}

TEST(MessageEditsTest, DeviceStateDoesNotDependOnArrivalOrder) {
  // The message (v0), three edits and a delete: every one of the 120
  // arrival orders ends deleted at v4; without the delete, every order of
  // the rest ends at the newest edit.
  std::vector<ReceivedChange> all = {
      {false, 0, "m", 0}, {false, 1, "a", 11}, {false, 2, "b", 12}, {false, 3, "c", 13}, {true, 4, "", 0}};
  std::vector<int> order = {0, 1, 2, 3, 4};
  int orders = 0;
  do {
    LocalMessageState s{"", -1, false, 0};
    for (int i : order) ApplyChange(s, all[static_cast<size_t>(i)]);
    EXPECT_TRUE(s.deleted);
    EXPECT_EQ(s.body, "");
    EXPECT_EQ(s.version, 4);
    ++orders;
  } while (std::next_permutation(order.begin(), order.end()));
  EXPECT_EQ(orders, 120);
  std::vector<int> edits = {0, 1, 2, 3};
  do {
    LocalMessageState s{"", -1, false, 0};
    for (int i : edits) ApplyChange(s, all[static_cast<size_t>(i)]);
    EXPECT_FALSE(s.deleted);
    EXPECT_EQ(s.body, "c");
    EXPECT_EQ(s.version, 3);
    EXPECT_EQ(s.edited_at, 13);
  } while (std::next_permutation(edits.begin(), edits.end()));
}

TEST(MessageEditsTest, AnEditArrivingAfterTheDeleteChangesNothing) {
  LocalMessageState s{"m", 0, false, 0};
  EXPECT_TRUE(ApplyChange(s, {true, 2, "", 0}));
  EXPECT_FALSE(ApplyChange(s, {false, 1, "late", 5}));
  EXPECT_FALSE(ApplyChange(s, {false, 3, "later still", 6})) << "nothing is accepted after a delete";
  EXPECT_TRUE(s.deleted);
  EXPECT_EQ(s.body, "");
}

TEST(MessageEditsTest, TheProtocolDocumentListsEveryTestVector) {
  EXPECT_EQ(parley::testing::MissingDocRows(parley::testing::SourceDir()), std::vector<int>{})
      << "docs/protocol.md lacks these rows (tests/protocol/edit_vectors.h, RenderRow)";
}

}  // namespace
}  // namespace parley::protocol
