// SelectiveSink (core/selective_sink.h): the live side of selective sync.
// A fake connection sink records what reaches it; the summariser answers
// when the test says so, so the waits are deterministic.
#include "core/selective_sink.h"

#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace parley::core {
namespace {

struct RecordingSink : fabric::DeviceSink {
  std::vector<std::string> frames;
  std::vector<bool> ephemeral;
  int receipts = 0;
  int closes = 0;
  uint16_t close_code = 0;
  void SendFrame(fabric::SharedFrame f, bool eph) override {
    frames.push_back(*f);
    ephemeral.push_back(eph);
  }
  void SendReceipt(fabric::SharedFrame f, std::shared_ptr<const store::StreamEvent>) override {
    ++receipts;
    frames.push_back(*f);
    ephemeral.push_back(false);
  }
  void Close(uint16_t code, std::string) override {
    ++closes;
    close_code = code;
  }
};

fabric::SharedFrame Frame(std::string s) { return std::make_shared<const std::string>(std::move(s)); }

fabric::SharedFrame MessageEvent(int64_t user_seq, int64_t conv) {
  return Frame(R"({"v":1,"type":"event","event":{"user_seq":)" + std::to_string(user_seq) +
               R"(,"kind":"message","message":{"conversation_id":)" + std::to_string(conv) + R"(,"seq":1}}})");
}

class SelectiveSinkTest : public ::testing::Test {
 protected:
  void SetUp() override {
    inner_ = std::make_shared<RecordingSink>();
    sink_ = std::make_shared<SelectiveSink>(
        inner_, std::unordered_set<int64_t>{1},
        [this](int64_t conv, int64_t user_seq, std::function<void(fabric::SharedFrame)> done) {
          asked_.push_back({conv, user_seq});
          pending_.push_back(std::move(done));
        });
  }
  // Answers the oldest summary request.
  void Answer(const std::string& frame) {
    auto done = std::move(pending_.front());
    pending_.erase(pending_.begin());
    done(frame.empty() ? nullptr : Frame(frame));
  }

  std::shared_ptr<RecordingSink> inner_;
  std::shared_ptr<SelectiveSink> sink_;
  std::vector<std::pair<int64_t, int64_t>> asked_;
  std::vector<std::function<void(fabric::SharedFrame)>> pending_;
};

TEST_F(SelectiveSinkTest, SelectedAndNonConversationFramesPassStraightThrough) {
  sink_->SendFrame(MessageEvent(1, 1));
  sink_->SendFrame(Frame(R"({"v":1,"type":"event","event":{"user_seq":2,"kind":"profile","profile":{}}})"));
  sink_->SendFrame(Frame(R"({"v":1,"type":"response","id":1})"));
  EXPECT_EQ(inner_->frames.size(), 3u);
  EXPECT_TRUE(asked_.empty());
}

TEST_F(SelectiveSinkTest, FramesBehindASummaryWaitForItSoTheOrderHolds) {
  sink_->SendFrame(MessageEvent(1, 2));  // unselected: a summary
  ASSERT_EQ(asked_.size(), 1u);
  EXPECT_EQ(asked_[0], std::make_pair(int64_t{2}, int64_t{1}));
  sink_->SendFrame(MessageEvent(2, 1));            // selected: waits behind it
  sink_->SendFrame(Frame("typing"), /*ephemeral=*/true);  // no order to keep
  sink_->SendFrame(MessageEvent(3, 2));            // another summary
  ASSERT_EQ(inner_->frames.size(), 1u);
  EXPECT_EQ(inner_->frames[0], "typing");
  Answer("summary-1");
  ASSERT_EQ(inner_->frames.size(), 3u);
  EXPECT_EQ(inner_->frames[1], "summary-1");
  EXPECT_EQ(*MessageEvent(2, 1), inner_->frames[2]);
  Answer("");  // a failed read sends nothing (the device sees a gap and syncs)
  EXPECT_EQ(inner_->frames.size(), 3u);
  sink_->SendFrame(MessageEvent(5, 1));
  EXPECT_EQ(inner_->frames.size(), 4u) << "nothing waits any more";
}

TEST_F(SelectiveSinkTest, SummariesAnsweredOutOfOrderAreStillSentInOrder) {
  sink_->SendFrame(MessageEvent(1, 2));
  sink_->SendFrame(MessageEvent(2, 3));
  auto first = std::move(pending_[0]);
  auto second = std::move(pending_[1]);
  second(Frame("s2"));
  EXPECT_TRUE(inner_->frames.empty());
  first(Frame("s1"));
  EXPECT_EQ(inner_->frames, (std::vector<std::string>{"s1", "s2"}));
}

TEST_F(SelectiveSinkTest, ReceiptsOfSelectedConversationsKeepTheirCoalescingPath) {
  auto receipt = std::make_shared<store::StreamEvent>();
  receipt->kind = store::EventKind::kReceipt;
  receipt->user_seq = 4;
  receipt->conversation_id = 1;
  sink_->SendReceipt(Frame("r4"), receipt);
  EXPECT_EQ(inner_->receipts, 1);
  auto other = std::make_shared<store::StreamEvent>(*receipt);
  other->conversation_id = 2;
  other->user_seq = 5;
  sink_->SendReceipt(Frame("r5"), other);
  ASSERT_EQ(asked_.size(), 1u);
  EXPECT_EQ(asked_[0], std::make_pair(int64_t{2}, int64_t{5}));
}

TEST_F(SelectiveSinkTest, AWideningTakesEffectForLaterFramesAndCloseWaitsForTheQueue) {
  sink_->SendFrame(MessageEvent(1, 2));
  sink_->SetSelection({1, 2});
  EXPECT_TRUE(sink_->Selected(2));
  sink_->SendFrame(MessageEvent(2, 2));  // selected now: in full, behind the summary
  sink_->Close(4003, "resync");
  EXPECT_EQ(inner_->closes, 0) << "the waiting frames go first";
  Answer("s1");
  EXPECT_EQ(inner_->frames.size(), 2u);
  EXPECT_EQ(inner_->closes, 1);
}

TEST_F(SelectiveSinkTest, TooManyFramesWaitingCloseTheConnectionForAResync) {
  sink_->SendFrame(MessageEvent(1, 2));  // a summary that never comes
  for (size_t i = 0; i + 1 < SelectiveSink::kMaxWaitingFrames; ++i)
    sink_->SendFrame(MessageEvent(static_cast<int64_t>(i) + 2, 1));
  EXPECT_EQ(inner_->closes, 0);
  sink_->SendFrame(MessageEvent(5000, 1));
  EXPECT_EQ(inner_->closes, 1);
  EXPECT_EQ(inner_->close_code, 4003);
  sink_->SendFrame(MessageEvent(5001, 1));
  Answer("late");
  EXPECT_TRUE(inner_->frames.empty()) << "nothing after the overflow: the device syncs";
  EXPECT_EQ(inner_->closes, 1);
}

}  // namespace
}  // namespace parley::core
