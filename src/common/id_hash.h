// Hash of a pair of 64-bit ids (conversation and user, owner and target) for
// unordered containers keyed by both.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <utility>

namespace parley {

struct IdPairHash {
  size_t operator()(const std::pair<int64_t, int64_t>& p) const noexcept {
    // Fibonacci multiplier: spreads the first id before mixing in the second.
    return std::hash<uint64_t>{}(static_cast<uint64_t>(p.first) * 0x9E3779B97F4A7C15ULL ^
                                 static_cast<uint64_t>(p.second));
  }
};

}  // namespace parley
