#include "server/stop_signals.h"

#include <pthread.h>

#include <utility>

namespace parley::server {

StopSignals::StopSignals() {
  sigemptyset(&set_);
  sigemptyset(&ignored_);
  for (int sig : {SIGTERM, SIGINT, SIGHUP}) {
    sigaddset(&set_, sig);
    // Ignored by whoever started us (nohup, a background job of a script):
    // the kernel still queues a blocked signal that is ignored, and sigwait
    // takes it.
    struct sigaction action {};
    if (sigaction(sig, nullptr, &action) == 0 && action.sa_handler == SIG_IGN) sigaddset(&ignored_, sig);
  }
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
    // Not handled yet: its action, as if it had never been blocked (ignored,
    // or the default: unblocked in this thread only and raised to it, the
    // signal is delivered before raise returns).
    if (sigismember(&ignored_, sig)) continue;
    sigset_t one;
    sigemptyset(&one);
    sigaddset(&one, sig);
    pthread_sigmask(SIG_UNBLOCK, &one, nullptr);
    ::raise(sig);
    pthread_sigmask(SIG_BLOCK, &one, nullptr);
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
