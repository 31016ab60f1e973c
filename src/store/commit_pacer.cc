#include "store/commit_pacer.h"

#include <algorithm>
#include <cmath>

namespace parley::store {

namespace {

double Micros(CommitPacer::Clock::duration d) {
  return std::max(1.0, static_cast<double>(std::chrono::duration_cast<std::chrono::microseconds>(d).count()));
}

}  // namespace

CommitPacer::CommitPacer(int max_batch, int fixed_deadline_us, int adaptive_wait_us)
    : max_batch_(static_cast<size_t>(std::max(1, max_batch))),
      fixed_deadline_us_(std::max(0, fixed_deadline_us)),
      adaptive_wait_us_(std::max(0, adaptive_wait_us)) {}

double CommitPacer::Blend(double rate, double sample, double interval_us) {
  const double weight = 1.0 - std::exp(-interval_us / kRateTimeConstantUs);
  return rate + weight * (sample - rate);
}

CommitPacer::Wait CommitPacer::Before(size_t queued, Clock::time_point now) const {
  if (queued >= max_batch_) return {};
  if (fixed_deadline_us_ > 0) return {std::chrono::microseconds(fixed_deadline_us_), max_batch_};
  if (adaptive_wait_us_ == 0 || !have_last_) return {};
  const size_t target = std::min(kAdaptiveTargetBatch, max_batch_);
  if (queued >= target || last_taken_ >= target) return {};
  // What has arrived since the last take counts too: after a quiet spell the
  // estimate falls at once, so a lone write is not held back.
  const double since_us = Micros(now - last_take_);
  const double rate = Blend(rate_per_us_, static_cast<double>(queued) / since_us, since_us);
  // Writes expected within the longest wait: below one, nothing is coming
  // soon enough to share the commit with.
  if (rate * static_cast<double>(adaptive_wait_us_) < 1.0) return {};
  const double fill_us = static_cast<double>(target - queued) / rate;
  const int64_t wait_us = std::min(adaptive_wait_us_, static_cast<int64_t>(fill_us) + 1);
  return {std::chrono::microseconds(wait_us), target};
}

void CommitPacer::Taken(size_t taken, Clock::time_point now) {
  if (have_last_) {
    const double interval_us = Micros(now - last_take_);
    rate_per_us_ = Blend(rate_per_us_, static_cast<double>(taken) / interval_us, interval_us);
  }
  have_last_ = true;
  last_taken_ = taken;
  last_take_ = now;
}

}  // namespace parley::store
