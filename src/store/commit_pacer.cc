#include "store/commit_pacer.h"

#include <algorithm>
#include <cmath>

namespace parley::store {

namespace {

double Micros(CommitPacer::Clock::duration d) {
  return std::max(1.0, static_cast<double>(std::chrono::duration_cast<std::chrono::microseconds>(d).count()));
}

}  // namespace

CommitPacer::CommitPacer(int max_batch, int fixed_deadline_us, int adaptive_wait_us, int loaded_wait_us)
    : max_batch_(static_cast<size_t>(std::max(1, max_batch))),
      fixed_deadline_us_(std::max(0, fixed_deadline_us)),
      adaptive_wait_us_(std::max(0, adaptive_wait_us)),
      loaded_wait_us_(std::max(0, loaded_wait_us)) {}

double CommitPacer::Blend(double mean, double sample, double interval_us, double time_constant_us) {
  const double weight = 1.0 - std::exp(-interval_us / time_constant_us);
  return mean + weight * (sample - mean);
}

CommitPacer::Wait CommitPacer::Before(size_t queued, Clock::time_point now) const {
  if (queued >= max_batch_) return {};
  if (fixed_deadline_us_ > 0) return {std::chrono::microseconds(fixed_deadline_us_), max_batch_};
  if (adaptive_wait_us_ == 0 || !have_last_) return {};
  // What has arrived since the last take counts too: after a quiet spell the
  // estimates fall at once, so a lone write is not held back.
  const double since_us = Micros(now - last_take_);
  const double rate =
      Blend(rate_per_us_, static_cast<double>(queued) / since_us, since_us, kRateTimeConstantUs);
  const double busy = Blend(busy_, 0, std::max(1.0, since_us - last_ran_us_), kBusyTimeConstantUs);
  // How loaded the writer is, 0..1 (see "Sized to the load").
  const double load =
      loaded_wait_us_ > 0 ? std::clamp((busy - kLoadedFrom) / (kLoadedFull - kLoadedFrom), 0.0, 1.0) : 0.0;
  const size_t target = std::min(
      max_batch_, kAdaptiveTargetBatch + static_cast<size_t>(std::lround(
                                             load * static_cast<double>(kLoadedTargetBatch - kAdaptiveTargetBatch))));
  const int64_t longest =
      adaptive_wait_us_ +
      std::lround(load * static_cast<double>(std::max<int64_t>(0, loaded_wait_us_ - adaptive_wait_us_)));
  if (queued >= target || last_taken_ >= target) return {};
  // Writes expected within the longest wait: below one, nothing is coming
  // soon enough to share the commit with.
  if (rate * static_cast<double>(longest) < 1.0) return {};
  const double fill_us = static_cast<double>(target - queued) / rate;
  const int64_t wait_us = std::min(longest, static_cast<int64_t>(fill_us) + 1);
  return {std::chrono::microseconds(wait_us), target};
}

void CommitPacer::Taken(size_t taken, Clock::time_point now) {
  if (have_last_) {
    const double interval_us = Micros(now - last_take_);
    rate_per_us_ = Blend(rate_per_us_, static_cast<double>(taken) / interval_us, interval_us, kRateTimeConstantUs);
    busy_ = Blend(busy_, std::min(1.0, last_ran_us_ / interval_us), interval_us, kBusyTimeConstantUs);
  }
  have_last_ = true;
  last_taken_ = taken;
  last_take_ = now;
  last_ran_us_ = 0;
}

void CommitPacer::Ran(Clock::duration took) { last_ran_us_ = Micros(took); }

}  // namespace parley::store
