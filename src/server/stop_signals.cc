#include "server/stop_signals.h"

#include <pthread.h>

#include <utility>

namespace parley::server {

StopSignals::StopSignals() {
  sigemptyset(&set_);
  sigaddset(&set_, SIGTERM);
  sigaddset(&set_, SIGINT);
  sigaddset(&set_, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set_, nullptr);
  thread_ = std::thread([this] { Run(); });
}

StopSignals::~StopSignals() { Stop(); }

void StopSignals::Handle(std::function<void(int)> on_signal) {
  std::lock_guard lock(mu_);
  on_signal_ = std::move(on_signal);
}

void StopSignals::Run() {
  for (;;) {
    int sig = 0;
    if (sigwait(&set_, &sig) != 0) continue;
    std::function<void(int)> on_signal;
    {
      std::lock_guard lock(mu_);
      if (stopping_) return;
      on_signal = on_signal_;
    }
    if (on_signal) {
      on_signal(sig);
      continue;
    }
    // Not handled yet: the default action, as if it had never been blocked.
    // Unblocked in this thread only and raised to it, the signal is
    // delivered before raise returns.
    ::signal(sig, SIG_DFL);
    sigset_t one;
    sigemptyset(&one);
    sigaddset(&one, sig);
    pthread_sigmask(SIG_UNBLOCK, &one, nullptr);
    ::raise(sig);
    pthread_sigmask(SIG_BLOCK, &one, nullptr);  // SIGHUP's default, say, may one day be ignored
  }
}

void StopSignals::Stop() {
  if (!thread_.joinable()) return;
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  // To the signal thread itself: its sigwait returns, and it sees stopping_.
  pthread_kill(thread_.native_handle(), SIGTERM);
  thread_.join();
}

}  // namespace parley::server
