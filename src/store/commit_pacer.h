// CommitPacer: how long a store's writer thread waits for a group commit to
// fill before it commits. Shared by the backends (SqliteStore,
// PostgresStore); a pure policy over the times and sizes the writer reports,
// so it is tested without threads or clocks.
//
// Three modes, from StoreConfig:
//   - fixed deadline (commit_deadline_us > 0): wait up to that long whenever
//     fewer than commit_max_batch writes are queued (the old behaviour; it
//     adds the whole wait to every hop of a message's path at low load);
//   - adaptive (commit_deadline_us == 0, commit_adaptive_wait_us > 0; the
//     default, see kDefaultCommitAdaptiveWaitUs): wait only while commits are small and more writes are
//     arriving. Precisely: wait when the previous commit took fewer than
//     kAdaptiveTargetBatch writes, fewer than that are queued, and at the
//     recent arrival rate at least one more write is expected within
//     commit_adaptive_wait_us; then wait until kAdaptiveTargetBatch are
//     queued, or for the time the arrival rate says that takes, capped at
//     commit_adaptive_wait_us. A lone write at low load is never delayed, and
//     under heavy load commits fill by themselves while the previous one
//     runs (the wait is skipped);
//   - none (both 0): commit what is queued at once.
//
// Sized to the load (the adaptive mode, when loaded_wait_us > 0): while the
// writer is busy most of the time, what each commit costs by itself (the
// fsync, the wake-ups of the writer and of the threads it answers, the
// once-per-commit bookkeeping) is CPU that the I/O thread on the same core
// needs, so a commit is worth waiting for longer. The pacer tracks the
// writer's busy fraction (time in CommitBatch over wall time, reported
// through Ran; a time-weighted mean like the rate's, time constant
// kBusyTimeConstantUs). Up to kLoadedFrom it is the plain adaptive mode
// above. From there to kLoadedFull the target batch rises linearly from
// kAdaptiveTargetBatch to kLoadedTargetBatch and the longest wait from
// adaptive_wait_us to loaded_wait_us. A lightly loaded server never waits
// more than before, so its latency is unchanged; a loaded one commits less
// often and keeps more of the core for frames (docs/benchmarks.md, "Commits
// sized to the writer's load").
//
// The arrival rate is a mean of writes per unit of time between successive
// takes, weighted by time (a sample counts by how long it covers, with the
// time constant kRateTimeConstantUs), so a quiet spell forgets a busy one.
//
// Thread-safety: none; used by the writer thread only.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>

namespace parley::store {

class CommitPacer {
 public:
  using Clock = std::chrono::steady_clock;

  // Below this many writes a commit counts as small; the adaptive wait stops
  // once this many are queued. Per-commit costs (fsync, WAL frame headers,
  // the transaction) are about a handful of rows' worth here
  // (../shared/research/limits_prototype.md: ~0.14 ms per commit, ~20 us per
  // row), so past 8 rows a larger commit saves little.
  static constexpr size_t kAdaptiveTargetBatch = 8;
  // Time constant of the arrival-rate mean, microseconds.
  static constexpr double kRateTimeConstantUs = 20'000;
  // The writer's busy fraction where waits start to grow with the load, and
  // where they reach their loaded size.
  static constexpr double kLoadedFrom = 0.5;
  static constexpr double kLoadedFull = 0.9;
  // The target batch at full load.
  static constexpr size_t kLoadedTargetBatch = 64;
  // Time constant of the busy-fraction mean, microseconds.
  static constexpr double kBusyTimeConstantUs = 100'000;

  // loaded_wait_us: the longest adaptive wait at full load (0: waits do not
  // grow with the load).
  CommitPacer(int max_batch, int fixed_deadline_us, int adaptive_wait_us, int loaded_wait_us = 0);

  struct Wait {
    Clock::duration max{0};  // zero: commit now
    size_t until_queued = 0;  // stop waiting once this many writes are queued
  };
  // The writer found `queued` (>= 1) writes waiting at `now`.
  Wait Before(size_t queued, Clock::time_point now) const;
  // The writer took `taken` writes for one commit at `now`.
  void Taken(size_t taken, Clock::time_point now);
  // The commit of the writes last taken ran for `took`.
  void Ran(Clock::duration took);

  // The current arrival-rate estimate, writes per second (for tests).
  double RatePerSecond() const { return rate_per_us_ * 1e6; }
  // The writer's busy fraction as of the last take, 0..1 (for tests).
  double BusyFraction() const { return busy_; }

 private:
  static double Blend(double mean, double sample, double interval_us, double time_constant_us);

  const size_t max_batch_;
  const int64_t fixed_deadline_us_;
  const int64_t adaptive_wait_us_;
  const int64_t loaded_wait_us_;
  double rate_per_us_ = 0;  // writes per microsecond
  double busy_ = 0;         // fraction of the time in CommitBatch
  double last_ran_us_ = 0;  // how long the commit of the last take ran
  size_t last_taken_ = 0;
  bool have_last_ = false;
  Clock::time_point last_take_{};
};

}  // namespace parley::store
