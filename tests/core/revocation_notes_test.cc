// RevocationNotes: an auth read learns of the revocations of its user noted
// after it was issued, and only of those; the notes stay bounded, and past
// the bound no read in flight misses a revocation.
#include "core/revocation_notes.h"

#include <gtest/gtest.h>

namespace parley::core {
namespace {

constexpr int64_t kAlice = 1, kBob = 2, kCarol = 3;

TEST(RevocationNotesTest, AReadLearnsOfItsUsersRevocationNotedWhileItWasInFlight) {
  RevocationNotes notes(8);
  auto read = notes.Begin();
  notes.Note(kAlice);
  EXPECT_TRUE(notes.End(read, kAlice));
}

TEST(RevocationNotesTest, AnotherUsersRevocationIsNotItsConcern) {
  RevocationNotes notes(8);
  auto read = notes.Begin();
  notes.Note(kBob);
  EXPECT_FALSE(notes.End(read, kAlice));
}

TEST(RevocationNotesTest, AReadIssuedAfterTheRevocationReadsItAlready) {
  RevocationNotes notes(8);
  auto before = notes.Begin();
  notes.Note(kAlice);
  auto after = notes.Begin();
  EXPECT_FALSE(notes.End(after, kAlice));
  EXPECT_TRUE(notes.End(before, kAlice));
}

TEST(RevocationNotesTest, NothingIsNotedWhileNoReadIsInFlight) {
  RevocationNotes notes(8);
  notes.Note(kAlice);
  EXPECT_EQ(notes.noted(), 0u);
  auto read = notes.Begin();
  EXPECT_FALSE(notes.End(read, kAlice));
}

TEST(RevocationNotesTest, TheNotesAreDroppedWhenTheLastReadInFlightEnds) {
  RevocationNotes notes(8);
  auto first = notes.Begin();
  auto second = notes.Begin();
  notes.Note(kAlice);
  notes.Note(kBob);
  EXPECT_FALSE(notes.End(second, kCarol));
  EXPECT_EQ(notes.noted(), 2u) << "dropped while a read was still in flight";
  EXPECT_FALSE(notes.End(first, kCarol));
  EXPECT_EQ(notes.noted(), 0u);
}

// A fabric cut: revocations on other nodes may have been missed, so every
// read in flight counts as revoked; reads issued after it do not.
TEST(RevocationNotesTest, AnyonesRevocationCountsForEveryReadInFlightThen) {
  RevocationNotes notes(8);
  auto before = notes.Begin();
  notes.Note(0);
  auto after = notes.Begin();
  EXPECT_FALSE(notes.End(after, kBob));
  EXPECT_TRUE(notes.End(before, kAlice));
}

// Past the bound, with every note still needed by the read in flight: that
// read counts as revoked whoever its user is (it reads its device again),
// rather than missing the revocation that did not fit.
TEST(RevocationNotesTest, PastTheBoundEveryReadInFlightCountsAsRevoked) {
  RevocationNotes notes(2);
  auto read = notes.Begin();
  notes.Note(kBob);
  notes.Note(kCarol);
  notes.Note(kAlice);  // the third user: past the bound
  EXPECT_EQ(notes.noted(), 0u);
  auto later = notes.Begin();
  EXPECT_FALSE(notes.End(later, kAlice)) << "a read issued after the overflow counted as revoked";
  EXPECT_TRUE(notes.End(read, kAlice));
}

// Past the bound, the notes that no read in flight was issued before are
// dropped first: the reads in flight keep their per-user answers instead of
// all counting as revoked.
TEST(RevocationNotesTest, PastTheBoundNotesOlderThanEveryReadInFlightGoFirst) {
  RevocationNotes notes(2);
  auto old_read = notes.Begin();
  notes.Note(kBob);
  notes.Note(kCarol);  // the bound; both matter only to old_read
  auto read_of_alice = notes.Begin();
  auto read_of_bob = notes.Begin();
  EXPECT_TRUE(notes.End(old_read, kBob));
  notes.Note(kAlice);  // past the bound, but bob's and carol's notes are not needed any more
  EXPECT_EQ(notes.noted(), 1u);
  EXPECT_FALSE(notes.End(read_of_bob, kBob)) << "a read issued after bob's revocation counted as revoked";
  EXPECT_TRUE(notes.End(read_of_alice, kAlice));
}

// A user noted again at the bound takes no room of their own.
TEST(RevocationNotesTest, AUserNotedAgainAtTheBoundDoesNotOverflow) {
  RevocationNotes notes(2);
  auto read = notes.Begin();
  notes.Note(kBob);
  notes.Note(kCarol);
  notes.Note(kBob);
  EXPECT_EQ(notes.noted(), 2u);
  EXPECT_FALSE(notes.End(read, kAlice));
}

}  // namespace
}  // namespace parley::core
