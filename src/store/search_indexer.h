// SearchIndexer: the background step that keeps message search's index
// up to date (store.h "Message search"; docs/architecture.md "Message
// search").
//
// Sending only queues a message's key; this thread calls Store::IndexSearch
// with at most `batch` entries at a time (each call one transaction of its
// own that no send shares), back to back while the previous call took a
// full batch, otherwise after `interval_ms`. So a message becomes
// searchable about `interval_ms` after it is stored when the queue is short,
// and the backlog drains at one batch per writer turn when it is not. The
// backlog and the age of its oldest entry are metrics
// (parley_search_index_backlog, parley_search_index_lag_milliseconds).
//
// Threading: one thread of its own; Start/Stop from the owner's thread. It
// blocks on its own thread waiting for the store's completion (never an I/O
// thread). REQUIRES: stopped (or destroyed) before the store goes.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>

#include "common/clock.h"
#include "common/metrics.h"
#include "store/store.h"

namespace parley::store {

struct SearchIndexerConfig {
  int interval_ms = 200;  // pause after a step that left the queue empty (or failed)
  int batch = 256;        // entries per IndexSearch step (bounds one step's transaction)
};

class SearchIndexer {
 public:
  SearchIndexer(Store& store, const Clock& clock, SearchIndexerConfig config);
  ~SearchIndexer();  // Stop()s
  SearchIndexer(const SearchIndexer&) = delete;
  SearchIndexer& operator=(const SearchIndexer&) = delete;

  void Start();
  // Waits for the step in flight, then joins the thread.
  void Stop();

 private:
  void Run();

  Store& store_;
  const Clock& clock_;
  const SearchIndexerConfig config_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;  // guarded by mu_

  Gauge& backlog_;
  Gauge& lag_ms_;
  Counter& indexed_;
  Counter& failures_;
};

}  // namespace parley::store
