// The executor seam: how asynchronous completions find their way back.
//
// Core, the Store and the Fabric never include Boost.Asio. They deliver work
// through this interface; the gateway implements it over an Asio io_context's executor, and
// tests implement it with a plain queue they drain by hand (deterministic).
//
// Thread-safety: Post may be called from any thread. Functions posted to one
// Executor run one at a time, in the order posted (a serial executor).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <utility>

namespace parley {

class Executor {
 public:
  virtual ~Executor() = default;
  virtual void Post(std::function<void()> fn) = 0;
  // Runs `fn` on this executor after about `delay_ms` milliseconds.
  virtual void PostAfter(int64_t delay_ms, std::function<void()> fn) = 0;
};

// Wraps `fn` so that calling the result, from any thread, posts the call to
// `ex` with the same arguments.
template <typename... Args, typename Fn>
std::function<void(Args...)> BindTo(Executor& ex, Fn fn) {
  return [&ex, fn = std::move(fn)](Args... args) mutable {
    ex.Post([fn, ... a = std::move(args)]() mutable { fn(std::move(a)...); });
  };
}

}  // namespace parley
