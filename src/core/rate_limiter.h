// Token-bucket rate limits (issue 4): per device, per user and per source
// address, for the request kinds that cost the server or annoy other users.
//
// A bucket holds up to `burst` tokens and refills at `per_second`; each
// request takes one. An empty bucket refuses the request and says when the
// next token arrives (the error's retry_after_ms). Buckets are created on first
// use and dropped once full again (they carry no information then), so memory
// follows the keys active within about burst/per_second seconds.
//
// Cluster mode (docs/architecture.md, "Shared rate limits"): with
// CountUsage(true), Take also counts the tokens taken per key. ChatService
// hands those counts to the fabric every reconciliation interval
// (TakeUsage), which debits the cluster-wide bucket in Redis and answers its
// level; ApplyLevel then sets the local bucket to it, less what this node
// took meanwhile. The local bucket always makes the immediate decision.
//
// Thread-safety: none; ChatService uses it on its core executor only.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>

namespace parley::core {

struct RateLimit {
  double per_second = 1;
  double burst = 1;
};

class RateLimiter {
 public:
  explicit RateLimiter(RateLimit limit) : limit_(limit) {}

  // Takes a token for `key` at time `now_ms`. Returns 0 if allowed, else the
  // milliseconds until a token will be available (at least 1).
  int64_t Take(const std::string& key, int64_t now_ms);
  // Like Take, without taking: 0 if `need` tokens are available now, else
  // the milliseconds until they will be.
  int64_t Peek(const std::string& key, int64_t now_ms, double need = 1.0);

  size_t size() const { return buckets_.size(); }
  const RateLimit& limit() const { return limit_; }

  // Cluster mode: from now on Take counts the tokens it takes per key.
  void CountUsage(bool on) { count_usage_ = on; }
  // The tokens taken per key since the last call; the counts start again at
  // zero.
  std::unordered_map<std::string, double> TakeUsage();
  // Sets the bucket of `key` to the cluster-wide level `tokens` (negative:
  // tokens owed by the whole cluster), as of `now_ms`, less the tokens this
  // node took since the TakeUsage whose counts that level includes.
  void ApplyLevel(const std::string& key, double tokens, int64_t now_ms);

 private:
  struct Bucket {
    double tokens;
    int64_t at_ms;
  };
  void Sweep(int64_t now_ms);
  Bucket& Refill(const std::string& key, int64_t now_ms);

  RateLimit limit_;
  std::unordered_map<std::string, Bucket> buckets_;
  int64_t last_sweep_ms_ = 0;
  bool count_usage_ = false;
  std::unordered_map<std::string, double> usage_;  // cluster mode: tokens taken since TakeUsage
};

}  // namespace parley::core
