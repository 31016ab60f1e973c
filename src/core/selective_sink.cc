// SelectiveSink (see the header): a small FIFO in front of the connection's
// own sink that holds frames only while a summary ahead of them is read.
#include "core/selective_sink.h"

#include <utility>

#include "protocol/encode.h"
#include "protocol/frames.h"

namespace parley::core {

SelectiveSink::SelectiveSink(std::shared_ptr<fabric::DeviceSink> inner, std::unordered_set<int64_t> selected,
                             Summarise summarise)
    : inner_(std::move(inner)), summarise_(std::move(summarise)), selected_(std::move(selected)) {}

void SelectiveSink::SetSelection(std::unordered_set<int64_t> selected) {
  std::lock_guard lock(mu_);
  selected_ = std::move(selected);
}

bool SelectiveSink::Selected(int64_t conversation_id) const {
  std::lock_guard lock(mu_);
  return selected_.count(conversation_id) != 0;
}

std::unordered_set<int64_t> SelectiveSink::Selection() const {
  std::lock_guard lock(mu_);
  return selected_;
}

void SelectiveSink::SendFrame(fabric::SharedFrame frame, bool ephemeral) {
  // Ephemeral frames (typing, presence) have no user seq: no order to keep.
  if (ephemeral) return inner_->SendFrame(std::move(frame), true);
  std::optional<protocol::EventFrameKey> key = protocol::PeekEventFrame(*frame);
  uint64_t id = 0;
  {
    std::lock_guard lock(mu_);
    if (overflowed_) return;
    const bool summarise = key && key->summarisable && selected_.count(key->conversation_id) == 0;
    if (!summarise) {
      if (waiting_.empty()) return inner_->SendFrame(std::move(frame), false);
      WaitLocked(std::move(frame));
      return;
    }
    if (waiting_.size() >= kMaxWaitingFrames) return OverflowLocked();
    // Its place in the order is taken here, under the same lock as the
    // decision (another thread's frame may be published meanwhile).
    id = Reserve();
  }
  StartSummary(id, key->conversation_id, key->user_seq);
}

void SelectiveSink::SendReceipt(fabric::SharedFrame frame, std::shared_ptr<const store::StreamEvent> receipt) {
  uint64_t id = 0;
  {
    std::lock_guard lock(mu_);
    if (overflowed_) return;
    // A receipt that lists withheld seqs goes in full (SummarisedInSelectiveSync).
    if (selected_.count(receipt->conversation_id) != 0 || !receipt->withheld.empty()) {
      // Coalescing (the gateway's) only applies to what reaches its queue
      // directly; a receipt that has to wait here goes as a plain frame.
      if (waiting_.empty()) return inner_->SendReceipt(std::move(frame), std::move(receipt));
      WaitLocked(std::move(frame));
      return;
    }
    if (waiting_.size() >= kMaxWaitingFrames) return OverflowLocked();
    id = Reserve();
  }
  StartSummary(id, receipt->conversation_id, receipt->user_seq);
}

void SelectiveSink::Close(uint16_t code, std::string reason) {
  {
    std::lock_guard lock(mu_);
    if (overflowed_) return;  // already closing
    if (!waiting_.empty()) {
      close_pending_ = true;
      close_code_ = code;
      close_reason_ = std::move(reason);
      return;
    }
  }
  inner_->Close(code, std::move(reason));
}

bool SelectiveSink::WaitLocked(fabric::SharedFrame frame) {
  if (waiting_.size() >= kMaxWaitingFrames) {
    OverflowLocked();
    return false;
  }
  waiting_.push_back(Waiting{0, std::move(frame), true});
  return true;
}

void SelectiveSink::OverflowLocked() {
  overflowed_ = true;
  waiting_.clear();
  close_pending_ = false;
  inner_->Close(static_cast<uint16_t>(protocol::CloseCode::kResync), protocol::RetryAfterReason(kOverflowRetryAfterMs));
}

uint64_t SelectiveSink::Reserve() {
  const uint64_t id = next_id_++;
  waiting_.push_back(Waiting{id, nullptr, false});
  return id;
}

void SelectiveSink::StartSummary(uint64_t id, int64_t conversation_id, int64_t user_seq) {
  // Outside the lock: the summariser may answer at once, on this thread.
  std::weak_ptr<SelectiveSink> weak = weak_from_this();
  summarise_(conversation_id, user_seq, [weak, id](fabric::SharedFrame summary) {
    if (auto self = weak.lock()) self->Fill(id, std::move(summary));
  });
}

void SelectiveSink::Fill(uint64_t id, fabric::SharedFrame frame) {
  bool close = false;
  {
    std::lock_guard lock(mu_);
    for (Waiting& w : waiting_) {
      if (w.id != id) continue;
      w.frame = std::move(frame);
      w.ready = true;
      break;
    }
    FlushLocked();
    close = close_pending_ && waiting_.empty();
    if (close) close_pending_ = false;
  }
  if (close) inner_->Close(close_code_, std::move(close_reason_));
}

void SelectiveSink::FlushLocked() {
  while (!waiting_.empty() && waiting_.front().ready) {
    if (waiting_.front().frame) inner_->SendFrame(std::move(waiting_.front().frame), false);
    waiting_.pop_front();
  }
}

}  // namespace parley::core
