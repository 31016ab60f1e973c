#include "core/rate_limiter.h"

#include <algorithm>
#include <cmath>

namespace parley::core {

namespace {
// How often full buckets are swept away.
constexpr int64_t kSweepIntervalMs = 10'000;
}  // namespace

RateLimiter::Bucket& RateLimiter::Refill(const std::string& key, int64_t now_ms) {
  if (now_ms - last_sweep_ms_ >= kSweepIntervalMs) Sweep(now_ms);
  auto [it, inserted] = buckets_.try_emplace(key, Bucket{limit_.burst, now_ms});
  Bucket& b = it->second;
  if (!inserted) {
    double elapsed = static_cast<double>(std::max<int64_t>(0, now_ms - b.at_ms)) / 1000.0;
    b.tokens = std::min(limit_.burst, b.tokens + elapsed * limit_.per_second);
    b.at_ms = now_ms;
  }
  return b;
}

int64_t RateLimiter::Peek(const std::string& key, int64_t now_ms, double need) {
  Bucket& b = Refill(key, now_ms);
  if (b.tokens >= need) return 0;
  double wait_s = (need - b.tokens) / limit_.per_second;
  return std::max<int64_t>(1, static_cast<int64_t>(std::ceil(wait_s * 1000.0)));
}

int64_t RateLimiter::Take(const std::string& key, int64_t now_ms) {
  int64_t wait = Peek(key, now_ms);
  if (wait == 0) {
    buckets_[key].tokens -= 1.0;
    if (count_usage_) usage_[key] += 1.0;
  }
  return wait;
}

std::unordered_map<std::string, double> RateLimiter::TakeUsage() {
  std::unordered_map<std::string, double> out;
  out.swap(usage_);
  return out;
}

void RateLimiter::ApplyLevel(const std::string& key, double tokens, int64_t now_ms) {
  double since = 0;
  if (auto it = usage_.find(key); it != usage_.end()) since = it->second;
  buckets_[key] = Bucket{std::min(limit_.burst, tokens) - since, now_ms};
}

void RateLimiter::Sweep(int64_t now_ms) {
  last_sweep_ms_ = now_ms;
  for (auto it = buckets_.begin(); it != buckets_.end();) {
    double elapsed = static_cast<double>(now_ms - it->second.at_ms) / 1000.0;
    if (it->second.tokens + elapsed * limit_.per_second >= limit_.burst) it = buckets_.erase(it);
    else ++it;
  }
}

}  // namespace parley::core
