// The group commit's pacing policy (store/commit_pacer.h), driven with
// synthetic times: when the writer waits, for how long, and for how many.
#include "store/commit_pacer.h"

#include <gtest/gtest.h>

#include <chrono>

namespace parley::store {
namespace {

using std::chrono::microseconds;
using Clock = CommitPacer::Clock;

constexpr size_t kTarget = CommitPacer::kAdaptiveTargetBatch;

// Feeds the pacer `takes` commits of `batch` writes each, `interval` apart,
// starting at `t`; returns the time of the last take.
Clock::time_point Feed(CommitPacer& p, Clock::time_point t, int takes, size_t batch, microseconds interval) {
  for (int i = 0; i < takes; ++i) {
    t += interval;
    p.Taken(batch, t);
  }
  return t;
}

TEST(CommitPacerTest, NoWaitWithoutAnyConfiguredWait) {
  CommitPacer p(1000, 0, 0);
  Clock::time_point t = Feed(p, Clock::time_point{}, 100, 1, microseconds(200));  // 5,000 writes/s, one per commit
  EXPECT_EQ(p.Before(1, t + microseconds(200)).max.count(), 0);
}

TEST(CommitPacerTest, FixedDeadlineAlwaysWaitsForAFullBatch) {
  CommitPacer p(1000, 2000, 300);
  CommitPacer::Wait w = p.Before(1, Clock::time_point{});
  EXPECT_EQ(w.max, microseconds(2000));
  EXPECT_EQ(w.until_queued, 1000u);
  EXPECT_EQ(p.Before(1000, Clock::time_point{}).max.count(), 0) << "a full batch never waits";
}

TEST(CommitPacerTest, SmallCommitsUnderSteadyArrivalsWaitBoundedForTheTarget) {
  CommitPacer p(1000, 0, 300);
  // 5,000 writes/s arriving, each commit taking one: commits are small.
  Clock::time_point t = Feed(p, Clock::time_point{}, 400, 1, microseconds(200));
  EXPECT_NEAR(p.RatePerSecond(), 5000, 250);
  CommitPacer::Wait w = p.Before(1, t + microseconds(200));
  EXPECT_EQ(w.until_queued, kTarget);
  // Filling 7 more at 5,000/s would take 1.4 ms: capped at the configured 300 us.
  EXPECT_EQ(w.max, microseconds(300));
}

TEST(CommitPacerTest, WaitIsWhatTheArrivalRateNeedsWhenThatIsShorter) {
  CommitPacer p(1000, 0, 1000);
  // 50,000 writes/s, but commits of 2 (e.g. right after a burst ended).
  Clock::time_point t = Feed(p, Clock::time_point{}, 2000, 2, microseconds(40));
  EXPECT_NEAR(p.RatePerSecond(), 50000, 2500);
  CommitPacer::Wait w = p.Before(2, t + microseconds(40));
  // 6 more at 50 per ms: ~120 us, well under the 1 ms cap.
  EXPECT_GE(w.max, microseconds(100));
  EXPECT_LE(w.max, microseconds(140));
}

TEST(CommitPacerTest, ALoneWriteAtLowLoadIsNeverDelayed) {
  CommitPacer p(1000, 0, 300);
  // 100 writes/s: about 0.03 expected within 300 us.
  Clock::time_point t = Feed(p, Clock::time_point{}, 200, 1, microseconds(10'000));
  EXPECT_EQ(p.Before(1, t + microseconds(10'000)).max.count(), 0);
}

TEST(CommitPacerTest, AQuietSpellForgetsABusyOne) {
  CommitPacer p(1000, 0, 300);
  Clock::time_point t = Feed(p, Clock::time_point{}, 400, 1, microseconds(200));
  ASSERT_GT(p.Before(1, t + microseconds(200)).max.count(), 0);
  // Nothing for a second, then one write: it goes at once.
  EXPECT_EQ(p.Before(1, t + std::chrono::seconds(1)).max.count(), 0);
}

TEST(CommitPacerTest, CommitsThatAlreadyFillDoNotWait) {
  CommitPacer p(1000, 0, 300);
  // 50,000 writes/s taken 20 at a time: the previous commit was large enough.
  Clock::time_point t = Feed(p, Clock::time_point{}, 1000, 20, microseconds(400));
  EXPECT_EQ(p.Before(3, t + microseconds(60)).max.count(), 0);
  // Enough already queued: no wait either.
  CommitPacer q(1000, 0, 300);
  t = Feed(q, Clock::time_point{}, 400, 1, microseconds(200));
  EXPECT_EQ(q.Before(kTarget, t + microseconds(200)).max.count(), 0);
}

TEST(CommitPacerTest, TheTargetNeverExceedsTheMaximumBatch) {
  CommitPacer p(4, 0, 300);
  Clock::time_point t = Feed(p, Clock::time_point{}, 400, 1, microseconds(100));
  CommitPacer::Wait w = p.Before(1, t + microseconds(100));
  EXPECT_GT(w.max.count(), 0);
  EXPECT_EQ(w.until_queued, 4u);
  EXPECT_EQ(p.Before(4, t + microseconds(100)).max.count(), 0);
}

// Feeds the pacer `takes` commits of `batch` writes each, `interval` apart,
// each running for `ran`: a writer busy ran / interval of the time.
Clock::time_point FeedBusy(CommitPacer& p, Clock::time_point t, int takes, size_t batch, microseconds interval,
                           microseconds ran) {
  for (int i = 0; i < takes; ++i) {
    t += interval;
    p.Taken(batch, t);
    p.Ran(ran);
  }
  return t;
}

// A writer busy 95 % of the time (past kLoadedFull): 20,000 writes/s taken
// 4 at a time every 200 us, each commit running 190 us.
Clock::time_point FeedBusyWriter(CommitPacer& p) {
  return FeedBusy(p, Clock::time_point{}, 2000, 4, microseconds(200), microseconds(190));
}

TEST(CommitPacerTest, ALightlyLoadedWriterWaitsNoLongerThanTheAdaptiveWait) {
  CommitPacer p(1000, 0, 300, 2000);
  // 5,000 writes/s, commits of one, the writer busy 20 % of the time.
  Clock::time_point t = FeedBusy(p, Clock::time_point{}, 2000, 1, microseconds(200), microseconds(40));
  EXPECT_NEAR(p.BusyFraction(), 0.2, 0.02);
  CommitPacer::Wait w = p.Before(1, t + microseconds(200));
  EXPECT_EQ(w.until_queued, kTarget);
  EXPECT_EQ(w.max, microseconds(300));
}

TEST(CommitPacerTest, ABusyWriterWaitsLongerForALargerCommit) {
  CommitPacer p(1000, 0, 300, 2000);
  Clock::time_point t = FeedBusyWriter(p);
  EXPECT_GT(p.BusyFraction(), CommitPacer::kLoadedFull);
  CommitPacer::Wait w = p.Before(1, t + microseconds(200));
  EXPECT_EQ(w.until_queued, CommitPacer::kLoadedTargetBatch);
  // 63 more at 20 per ms would take 3.15 ms: capped at the loaded wait.
  EXPECT_EQ(w.max, microseconds(2000));
  // The same writer without a loaded wait keeps the plain adaptive policy.
  CommitPacer q(1000, 0, 300, 0);
  t = FeedBusyWriter(q);
  w = q.Before(1, t + microseconds(200));
  EXPECT_EQ(w.until_queued, kTarget);
  EXPECT_EQ(w.max, microseconds(300));
}

TEST(CommitPacerTest, BetweenTheThresholdsTheWaitGrowsWithTheLoad) {
  CommitPacer p(1000, 0, 300, 2000);
  // Busy 70 %: halfway from kLoadedFrom (0.5) to kLoadedFull (0.9).
  Clock::time_point t = FeedBusy(p, Clock::time_point{}, 2000, 1, microseconds(1000), microseconds(700));
  ASSERT_NEAR(p.BusyFraction(), 0.7, 0.02);
  // At 1,000 writes/s with one just taken, the first comes within 1 ms.
  CommitPacer::Wait w = p.Before(1, t + microseconds(10));
  EXPECT_NEAR(static_cast<double>(w.until_queued), (kTarget + CommitPacer::kLoadedTargetBatch) / 2.0, 1.0);
  // Halfway between 300 and 2000 us; filling 35 more at 1 per ms would take longer.
  EXPECT_NEAR(static_cast<double>(std::chrono::duration_cast<microseconds>(w.max).count()), 1150, 60);
}

TEST(CommitPacerTest, WhenTheLoadFallsTheWaitShrinksBackToTheAdaptiveOne) {
  CommitPacer p(1000, 0, 300, 2000);
  Clock::time_point t = FeedBusyWriter(p);
  ASSERT_EQ(p.Before(1, t + microseconds(200)).until_queued, CommitPacer::kLoadedTargetBatch);
  // Then half a second of light load: 10,000 writes/s in commits of two,
  // each running 20 us (busy 10 %).
  t = FeedBusy(p, t, 2500, 2, microseconds(200), microseconds(20));
  EXPECT_LT(p.BusyFraction(), CommitPacer::kLoadedFrom);
  CommitPacer::Wait w = p.Before(1, t + microseconds(200));
  EXPECT_EQ(w.until_queued, kTarget);
  EXPECT_EQ(w.max, microseconds(300));
}

TEST(CommitPacerTest, TheLoadedTargetNeverExceedsTheMaximumBatch) {
  CommitPacer p(16, 0, 300, 2000);
  Clock::time_point t = FeedBusyWriter(p);
  CommitPacer::Wait w = p.Before(1, t + microseconds(200));
  EXPECT_EQ(w.until_queued, 16u);
  EXPECT_EQ(p.Before(16, t + microseconds(200)).max.count(), 0);
}

}  // namespace
}  // namespace parley::store
