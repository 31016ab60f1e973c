// PresenceTracker on a simulated clock: coalescing of flips, the
// per-subscriber update interval, and visibility.
#include "core/presence.h"

#include <gtest/gtest.h>

#include <map>
#include <vector>

namespace parley::core {
namespace {

// A clock and an executor whose timers fire when the test advances time.
class SimTime final : public Executor, public Clock {
 public:
  void Post(std::function<void()> fn) override { PostAfter(0, std::move(fn)); }
  void PostAfter(int64_t delay_ms, std::function<void()> fn) override {
    timers_.emplace(std::make_pair(now_ + delay_ms, seq_++), std::move(fn));
  }
  int64_t NowMillis() const override { return now_; }
  void Advance(int64_t ms) {
    int64_t until = now_ + ms;
    while (!timers_.empty() && timers_.begin()->first.first <= until) {
      auto it = timers_.begin();
      now_ = it->first.first;
      auto fn = std::move(it->second);
      timers_.erase(it);
      fn();
    }
    now_ = until;
  }

 private:
  int64_t now_ = 1'000'000;
  uint64_t seq_ = 0;
  std::map<std::pair<int64_t, uint64_t>, std::function<void()>> timers_;
};

struct Update {
  uint64_t subscriber;
  int64_t user;
  PresenceView view;
  int64_t at;
};

class PresenceTest : public ::testing::Test {
 protected:
  PresenceTest()
      : tracker_(time_, time_, PresenceConfig{5'000, 2'000}, [this](uint64_t s, int64_t u, PresenceView v) {
          updates_.push_back({s, u, v, time_.NowMillis()});
        }) {}

  void Watch(uint64_t subscriber, int64_t user, bool visible = true) {
    tracker_.Subscribe(subscriber, {user}, {visible}, {tracker_.View(user, visible)}, ++reads_);
  }

  SimTime time_;
  uint64_t reads_ = 0;  // the order of the (simulated) store reads visibility comes from
  std::vector<Update> updates_;
  PresenceTracker tracker_;
};

TEST_F(PresenceTest, AFlapInsideTheWindowIsNeverBroadcast) {
  tracker_.ForegroundEnter(7);
  Watch(1, 7);
  EXPECT_GT(tracker_.ForegroundLeave(7), 0) << "the last foreground connection sets last seen";
  time_.Advance(4'999);
  tracker_.ForegroundEnter(7);
  time_.Advance(60'000);
  EXPECT_TRUE(updates_.empty());
}

TEST_F(PresenceTest, ALongerOfflineIsOneUpdateEachWay) {
  tracker_.ForegroundEnter(7);
  Watch(1, 7);
  int64_t left = time_.NowMillis();
  tracker_.ForegroundLeave(7);
  time_.Advance(5'000);
  ASSERT_EQ(updates_.size(), 1u);
  EXPECT_FALSE(updates_[0].view.online);
  EXPECT_EQ(updates_[0].view.last_seen, left);
  time_.Advance(10'000);
  tracker_.ForegroundEnter(7);
  time_.Advance(10'000);
  ASSERT_EQ(updates_.size(), 2u);
  EXPECT_TRUE(updates_[1].view.online);
  EXPECT_EQ(updates_[1].view.last_seen, 0);
}

TEST_F(PresenceTest, OneSubscriberGetsAtMostOneUpdatePerIntervalEndingInTheTruth) {
  PresenceTracker fast(time_, time_, PresenceConfig{0, 2'000}, [this](uint64_t s, int64_t u, PresenceView v) {
    updates_.push_back({s, u, v, time_.NowMillis()});
  });
  fast.ForegroundEnter(7);
  fast.Subscribe(1, {7}, {true}, {fast.View(7, true)}, 1);
  for (int i = 0; i < 50; ++i) {  // 50 flips, 100 ms apart
    if (i % 2 == 0) fast.ForegroundLeave(7);
    else fast.ForegroundEnter(7);
    time_.Advance(100);
  }
  time_.Advance(10'000);
  ASSERT_FALSE(updates_.empty());
  for (size_t i = 1; i < updates_.size(); ++i) EXPECT_GE(updates_[i].at - updates_[i - 1].at, 2'000);
  EXPECT_LE(updates_.size(), 4u);  // 5 s of flips: at most one per 2 s, plus the last
  EXPECT_TRUE(updates_.back().view.online) << "the 50 flips end with an enter";
}

TEST_F(PresenceTest, HiddenUsersReadOfflineWithoutLastSeenAndAChangeOfVisibilityIsOneUpdate) {
  tracker_.ForegroundEnter(7);
  Watch(1, 7, /*visible=*/false);
  Watch(2, 7, /*visible=*/true);
  tracker_.ForegroundLeave(7);
  time_.Advance(5'000);
  ASSERT_EQ(updates_.size(), 1u);
  EXPECT_EQ(updates_[0].subscriber, 2u);
  tracker_.ForegroundEnter(7);
  time_.Advance(3'000);
  tracker_.SetVisible(2, 7, false, ++reads_);  // e.g. a block
  time_.Advance(3'000);
  ASSERT_EQ(updates_.size(), 3u);
  EXPECT_EQ(updates_[2].subscriber, 2u);
  EXPECT_EQ(updates_[2].view, PresenceView{});
  tracker_.SetVisible(1, 7, true, ++reads_);
  ASSERT_EQ(updates_.size(), 4u);
  EXPECT_EQ(updates_[3].subscriber, 1u);
  EXPECT_TRUE(updates_[3].view.online);
}

// Two changes in a row (hidden, then shown again) re-read visibility twice;
// the reads may complete in any order, and the answer of the one issued
// first must not undo the second's.
TEST_F(PresenceTest, AVisibilityReadIssuedBeforeTheOneAppliedIsIgnored) {
  tracker_.ForegroundEnter(7);
  Watch(1, 7);
  const uint64_t hide = ++reads_;
  const uint64_t show = ++reads_;
  tracker_.SetVisible(1, 7, true, show);   // the later read lands first
  tracker_.SetVisible(1, 7, false, hide);  // the earlier one after it
  time_.Advance(10'000);
  EXPECT_TRUE(updates_.empty()) << "the subscriber was told the user went offline";
  // A read issued later still applies; the old one stays ignored.
  tracker_.SetVisible(1, 7, false, ++reads_);
  ASSERT_EQ(updates_.size(), 1u);
  EXPECT_EQ(updates_[0].view, PresenceView{});
  tracker_.SetVisible(1, 7, true, hide);
  time_.Advance(10'000);
  EXPECT_EQ(updates_.size(), 1u);
}

TEST_F(PresenceTest, StateOfUnwatchedOfflineUsersIsForgotten) {
  tracker_.ForegroundEnter(7);
  Watch(1, 8);
  EXPECT_EQ(tracker_.tracked_users(), 2u);
  tracker_.ForegroundLeave(7);
  time_.Advance(5'000);
  tracker_.Unsubscribe(1);
  EXPECT_EQ(tracker_.tracked_users(), 0u);
}

}  // namespace
}  // namespace parley::core
