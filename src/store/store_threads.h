// Helpers the backends' single-writer queues share (SqliteStore,
// PostgresStore): each keeps a deque of write operations under a mutex,
// drained in batches by its writer thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>

#include "common/metrics.h"
#include "common/status.h"

namespace parley::store {

// Takes every operation still in `queue` (the writer has not begun them) and
// finishes each with `why`, outside the lock, on the calling thread; keeps
// the queue-depth gauge right. Returns how many there were. Op needs
// Finish(const Status&).
template <typename Op>
size_t FailQueuedWrites(std::mutex& mu, std::deque<std::unique_ptr<Op>>& queue, Gauge& depth, const Status& why) {
  std::deque<std::unique_ptr<Op>> taken;
  {
    std::lock_guard lock(mu);
    taken.swap(queue);
    depth.Add(-static_cast<int64_t>(taken.size()));
  }
  for (auto& op : taken) op->Finish(why);
  return taken.size();
}

}  // namespace parley::store
