// PushDispatcher: takes due jobs from the store's push queue and hands them
// to a PushProvider, with bounded in-flight work.
//
// Each round claims at most (max_in_flight - in flight) jobs through a lease
// (store.h ClaimPushJobs: node id + expiry, so in a cluster each job goes to
// one node and a dead node's claims expire), sends them, and records each
// outcome (CompletePush): delivered, retry at now + backoff (exponential from
// backoff_initial_ms, capped at backoff_max_ms, with jitter: a uniform draw
// in [half, all] of it), rejected, or gone. Rounds run every poll_ms and
// whenever Wake() is called (core queued something). Nothing waits in memory
// beyond the jobs in flight: a dead provider leaves the jobs in the store,
// backing off, and delivery of messages never waits for pushes.
//
// Threading: everything runs on its own io_context thread (Start/Stop from
// the owner's thread; Wake from any thread). Store completions are posted
// back to it.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <atomic>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <thread>

#include "common/metrics.h"
#include "push/provider.h"
#include "store/store.h"

namespace parley::push {

struct DispatcherConfig {
  std::string node_id;            // this node's lease owner name (unique per process)
  int poll_ms = 1'000;            // how often the queue is looked at without a Wake
  int64_t lease_ms = 60'000;      // a claim's lease; must outlast one attempt
  int max_in_flight = 64;         // attempts at once (memory bound)
  int64_t backoff_initial_ms = 1'000;
  int64_t backoff_max_ms = 300'000;
  int max_attempts = 10;          // a job that failed this often is dropped
  int64_t coalesce_ms = 10'000;   // as core's PushConfig
};

class PushDispatcher {
 public:
  // `provider` runs its requests on io() (create it with that io_context).
  PushDispatcher(store::Store& store, DispatcherConfig config);
  ~PushDispatcher();  // Stop()s

  boost::asio::io_context& io() { return io_; }
  // REQUIRES: called once, before Start.
  void SetProvider(std::unique_ptr<PushProvider> provider) { provider_ = std::move(provider); }

  void Start();
  // Stops the thread; attempts in flight are abandoned (their leases expire
  // and another round, here after a restart or on another node, sends them).
  void Stop();
  // Any thread: run a round soon.
  void Wake();

 private:
  void Round();
  void ScheduleTimer();
  void OnClaimed(Result<std::vector<store::PushJob>> jobs);
  void OnSent(const store::PushJob& job, SendResult r);
  int64_t Backoff(int attempts);

  store::Store& store_;
  const DispatcherConfig config_;
  std::unique_ptr<PushProvider> provider_;
  boost::asio::io_context io_;
  boost::asio::steady_timer timer_;
  std::thread thread_;
  std::atomic<bool> stopping_{false};
  // Below: only on io_'s thread.
  bool claiming_ = false;
  bool again_ = false;  // a Wake came while claiming
  int in_flight_ = 0;
  std::minstd_rand rng_{std::random_device{}()};

  Gauge& in_flight_gauge_;
  Gauge& pending_gauge_;
  Gauge& leased_gauge_;
  Gauge& endpoints_gauge_;
  Counter& claimed_;
  Counter& previews_left_out_;
};

}  // namespace parley::push
