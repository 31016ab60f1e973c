// SelectiveSink: the live side of selective sync (issue 12 item 3;
// docs/protocol.md "select_sync").
//
// A device that syncs only some conversations in full gets, live, every
// event of its selected conversations as it is, and each event of another
// conversation (a message, receipt, edit, delete or delete_for_me) as a
// summary of that conversation covering the event's user seq. Core attaches
// this sink to the fabric in place of the connection's own one; it wraps
// that one and passes everything else through unchanged.
//
// A summary needs the store (last seq and unread count), so it is made
// asynchronously; frames that arrive meanwhile wait behind it here, so the
// device still gets its events in user-seq order. The wait is short (one
// store read) and bounded by the connection's own queue limit in practice:
// while something waits, nothing reaches the connection's queue, and the
// frames waiting here are few (one read's worth of live events).
//
// Thread-safety: every method may be called from any thread; the state
// below is guarded by mu_, and frames are handed to the inner sink under it
// (the inner sink only queues), so order is kept.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_set>

#include "fabric/fabric.h"

namespace parley::core {

class SelectiveSink final : public fabric::DeviceSink, public std::enable_shared_from_this<SelectiveSink> {
 public:
  // Frames (summaries included) that may wait here at once. Past it the
  // store is not keeping up with this connection: it is closed with the
  // resync close code, as a connection whose queue overflows, and the
  // device catches up by sync (nothing is lost).
  static constexpr size_t kMaxWaitingFrames = 1024;
  // Told to the device in that close reason (the gateway's default resync wait).
  static constexpr int64_t kOverflowRetryAfterMs = 1'000;

  // Makes the summary of `conversation_id` covering `user_seq` and calls
  // `done` with its frame, once, on any thread; a null frame when it could
  // not be read (the device then sees a gap and syncs, as after any lost
  // live frame).
  using Summarise = std::function<void(int64_t conversation_id, int64_t user_seq,
                                       std::function<void(fabric::SharedFrame)> done)>;

  SelectiveSink(std::shared_ptr<fabric::DeviceSink> inner, std::unordered_set<int64_t> selected, Summarise summarise);

  // The conversations synced in full from now on.
  void SetSelection(std::unordered_set<int64_t> selected);
  bool Selected(int64_t conversation_id) const;
  std::unordered_set<int64_t> Selection() const;

  void SendFrame(fabric::SharedFrame frame, bool ephemeral = false) override;
  void SendReceipt(fabric::SharedFrame frame, std::shared_ptr<const store::StreamEvent> receipt) override;
  void Close(uint16_t code, std::string reason) override;

 private:
  struct Waiting {
    uint64_t id = 0;             // a summary being made (0: an ordinary frame)
    fabric::SharedFrame frame;   // null while the summary is being made, or when it failed
    bool ready = false;
  };
  // Takes the next place in the order for a summary still to be made.
  // REQUIRES: mu_ held.
  uint64_t Reserve();
  // Queues a ready frame behind what waits; false (and the connection is
  // being closed) when the wait is over its bound. REQUIRES: mu_ held.
  bool WaitLocked(fabric::SharedFrame frame);
  // Drops what waits and closes the connection (resync). REQUIRES: mu_ held.
  void OverflowLocked();
  bool overflowed_ = false;  // guarded by mu_: closed for overflow, everything later is dropped
  // Makes the summary for place `id`, in place of an event of an unselected
  // conversation. REQUIRES: mu_ not held.
  void StartSummary(uint64_t id, int64_t conversation_id, int64_t user_seq);
  void Fill(uint64_t id, fabric::SharedFrame frame);
  // Hands the ready frames at the front to the inner sink. REQUIRES: mu_ held.
  void FlushLocked();

  const std::shared_ptr<fabric::DeviceSink> inner_;
  const Summarise summarise_;
  mutable std::mutex mu_;
  std::unordered_set<int64_t> selected_;  // guarded by mu_
  std::deque<Waiting> waiting_;           // guarded by mu_; empty almost always
  uint64_t next_id_ = 1;                  // guarded by mu_
  bool close_pending_ = false;            // guarded by mu_: Close came while frames waited
  uint16_t close_code_ = 0;
  std::string close_reason_;
};

}  // namespace parley::core
