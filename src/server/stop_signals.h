// SIGTERM, SIGINT and SIGHUP for parleyd, taken by one thread of its own with
// sigwait instead of a signal handler.
//
// The constructor blocks them in the calling thread, which every thread
// started after it inherits, so none of them is ever delivered to the process
// by the kernel: each waits until the signal thread takes it. Until Handle,
// the thread gives a signal the action it had when we started: the default
// (the process dies of it: a start-up that hangs, waiting for Redis say,
// stays interruptible), or none if it was ignored (nohup). After
// Stop, a signal stays pending, harmless, until the process exits. With Asio's
// signal_set, the process died of a SIGTERM that came once the gateway (which
// owned the set) was destroyed: Asio gives a signal back its default action
// when its last set goes, so a supervisor that repeated itself, or a tool that
// stopped every node and then each, turned a clean exit into death by signal.
//
// Construct it before any other thread is started.
#pragma once

#include <signal.h>

#include <functional>
#include <mutex>
#include <thread>

namespace parley::server {

class StopSignals {
 public:
  StopSignals();
  ~StopSignals();  // Stop
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

  // From now on, each signal taken is passed to `on_signal` (on the signal
  // thread).
  void Handle(std::function<void(int)> on_signal);
  // Ends the signal thread (joined). Signals sent from now on are never
  // delivered.
  void Stop();

 private:
  void Run();

  sigset_t set_;
  sigset_t ignored_;  // of set_, those ignored when we started (SIG_IGN inherited)
  std::mutex mu_;
  std::function<void(int)> on_signal_;  // guarded by mu_
  bool stopping_ = false;               // guarded by mu_
  std::thread thread_;
};

}  // namespace parley::server
