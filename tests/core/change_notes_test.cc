// ChangeNotes: a read learns of the changes of its users noted after it was
// issued, and only of those; the notes stay bounded, and past the bound no
// read in flight misses a change. Told as auth reads and revocations (the
// first use); presence subscriptions and visibility changes are the same.
#include "core/change_notes.h"

#include <gtest/gtest.h>

namespace parley::core {
namespace {

constexpr int64_t kAlice = 1, kBob = 2, kCarol = 3;

// Ends `read` (of a device of `user`), as an auth's answer does: whether a
// change of that user was noted since it was issued.
bool Ended(ChangeNotes& notes, ChangeNotes::Read read, int64_t user) {
  const bool changed = notes.ChangedSince(read, user);
  notes.End(read);
  return changed;
}

TEST(ChangeNotesTest, AReadLearnsOfItsUsersRevocationNotedWhileItWasInFlight) {
  ChangeNotes notes(8);
  auto read = notes.Begin();
  notes.Note(kAlice);
  EXPECT_TRUE(Ended(notes, read, kAlice));
}

TEST(ChangeNotesTest, AnotherUsersRevocationIsNotItsConcern) {
  ChangeNotes notes(8);
  auto read = notes.Begin();
  notes.Note(kBob);
  EXPECT_FALSE(Ended(notes, read, kAlice));
}

TEST(ChangeNotesTest, AReadIssuedAfterTheRevocationReadsItAlready) {
  ChangeNotes notes(8);
  auto before = notes.Begin();
  notes.Note(kAlice);
  auto after = notes.Begin();
  EXPECT_FALSE(Ended(notes, after, kAlice));
  EXPECT_TRUE(Ended(notes, before, kAlice));
}

TEST(ChangeNotesTest, NothingIsNotedWhileNoReadIsInFlight) {
  ChangeNotes notes(8);
  notes.Note(kAlice);
  EXPECT_EQ(notes.noted(), 0u);
  auto read = notes.Begin();
  EXPECT_FALSE(Ended(notes, read, kAlice));
}

TEST(ChangeNotesTest, TheNotesAreDroppedWhenTheLastReadInFlightEnds) {
  ChangeNotes notes(8);
  auto first = notes.Begin();
  auto second = notes.Begin();
  notes.Note(kAlice);
  notes.Note(kBob);
  EXPECT_FALSE(Ended(notes, second, kCarol));
  EXPECT_EQ(notes.noted(), 2u) << "dropped while a read was still in flight";
  EXPECT_FALSE(Ended(notes, first, kCarol));
  EXPECT_EQ(notes.noted(), 0u);
}

// A fabric cut: revocations on other nodes may have been missed, so every
// read in flight counts as revoked; reads issued after it do not.
TEST(ChangeNotesTest, AnyonesRevocationCountsForEveryReadInFlightThen) {
  ChangeNotes notes(8);
  auto before = notes.Begin();
  notes.Note(0);
  auto after = notes.Begin();
  EXPECT_FALSE(Ended(notes, after, kBob));
  EXPECT_TRUE(Ended(notes, before, kAlice));
}

// Past the bound, with every note still needed by the read in flight: that
// read counts as revoked whoever its user is (it reads its device again),
// rather than missing the revocation that did not fit.
TEST(ChangeNotesTest, PastTheBoundEveryReadInFlightCountsAsRevoked) {
  ChangeNotes notes(2);
  auto read = notes.Begin();
  notes.Note(kBob);
  notes.Note(kCarol);
  notes.Note(kAlice);  // the third user: past the bound
  EXPECT_EQ(notes.noted(), 0u);
  auto later = notes.Begin();
  EXPECT_FALSE(Ended(notes, later, kAlice)) << "a read issued after the overflow counted as revoked";
  EXPECT_TRUE(Ended(notes, read, kAlice));
}

// Past the bound, the notes that no read in flight was issued before are
// dropped first: the reads in flight keep their per-user answers instead of
// all counting as revoked.
TEST(ChangeNotesTest, PastTheBoundNotesOlderThanEveryReadInFlightGoFirst) {
  ChangeNotes notes(2);
  auto old_read = notes.Begin();
  notes.Note(kBob);
  notes.Note(kCarol);  // the bound; both matter only to old_read
  auto read_of_alice = notes.Begin();
  auto read_of_bob = notes.Begin();
  EXPECT_TRUE(Ended(notes, old_read, kBob));
  notes.Note(kAlice);  // past the bound, but bob's and carol's notes are not needed any more
  EXPECT_EQ(notes.noted(), 1u);
  EXPECT_FALSE(Ended(notes, read_of_bob, kBob)) << "a read issued after bob's revocation counted as revoked";
  EXPECT_TRUE(Ended(notes, read_of_alice, kAlice));
}

// A user noted again at the bound takes no room of their own.
TEST(ChangeNotesTest, AUserNotedAgainAtTheBoundDoesNotOverflow) {
  ChangeNotes notes(2);
  auto read = notes.Begin();
  notes.Note(kBob);
  notes.Note(kCarol);
  notes.Note(kBob);
  EXPECT_EQ(notes.noted(), 2u);
  EXPECT_FALSE(Ended(notes, read, kAlice));
}

// A presence subscription's read: one read asks of each of its users, and
// only those changed since it was issued read again.
TEST(ChangeNotesTest, OneReadAsksOfEachOfItsUsers) {
  ChangeNotes notes(8);
  notes.Note(kCarol);  // before the read: nothing is noted, the read sees it
  auto read = notes.Begin();
  notes.Note(kBob);
  EXPECT_FALSE(notes.ChangedSince(read, kAlice));
  EXPECT_TRUE(notes.ChangedSince(read, kBob));
  EXPECT_FALSE(notes.ChangedSince(read, kCarol));
  notes.Note(0);  // everyone's visibility (a node-wide re-check)
  EXPECT_TRUE(notes.ChangedSince(read, kAlice));
  EXPECT_TRUE(notes.ChangedSince(read, kCarol));
  notes.End(read);
  auto next = notes.Begin();
  EXPECT_FALSE(notes.ChangedSince(next, kAlice)) << "the change to everyone outlived the reads it concerned";
  notes.End(next);
}

}  // namespace
}  // namespace parley::core
