// parley/backoff.h — the SDK's reconnect delay policy, a pure function so it
// can be tested without a server (docs/sdk.md, "Reconnect policy").
//
// Two cases:
//  - the server told the client when to come back (close 4001/4003 with
//    reason {"retry_after_ms":N}, or an error frame with retry_after_ms, e.g.
//    rate_limited / shutting_down): wait N plus a uniform random extra of
//    0..N * retry_after_jitter (so many clients spread over the window
//    [N, N * (1 + retry_after_jitter)] instead of arriving together);
//  - otherwise (the server is unreachable, the socket dropped without a close
//    frame): exponential backoff with full jitter, a uniform delay in
//    [0, min(max_ms, initial_ms * 2^attempt)].
//
// Thread-safety: plain values and pure functions; the random generator
// passed in is the caller's to guard.
#pragma once

#include <algorithm>
#include <cstdint>
#include <random>

namespace parley {

struct BackoffPolicy {
  int64_t initial_ms = 500;         // cap of the first delay
  int64_t max_ms = 30'000;          // cap of every delay
  double retry_after_jitter = 1.0;  // extra wait, as a fraction of the server's retry_after_ms
  int64_t max_retry_after_ms = 600'000;  // a larger server value is clamped to this
};

// Delay before reconnect attempt number `attempt` (0 = the first retry) when
// the server gave no hint. Always in [0, min(max_ms, initial_ms << attempt)].
inline int64_t BackoffDelayMs(const BackoffPolicy& p, int attempt, std::mt19937_64& rng) {
  int64_t cap = std::max<int64_t>(p.initial_ms, 1);
  for (int i = 0; i < attempt && cap < p.max_ms; ++i) cap *= 2;
  cap = std::min(cap, std::max<int64_t>(p.max_ms, 1));
  return std::uniform_int_distribution<int64_t>(0, cap)(rng);
}

// Delay when the server announced retry_after_ms = `retry_after_ms` (> 0).
// Always in [N, N + N * retry_after_jitter], N clamped to max_retry_after_ms.
inline int64_t RetryAfterDelayMs(const BackoffPolicy& p, int64_t retry_after_ms, std::mt19937_64& rng) {
  int64_t n = std::clamp<int64_t>(retry_after_ms, 0, p.max_retry_after_ms);
  auto extra = static_cast<int64_t>(static_cast<double>(n) * std::max(p.retry_after_jitter, 0.0));
  return n + std::uniform_int_distribution<int64_t>(0, extra)(rng);
}

}  // namespace parley
