// See search_indexer.h.

#include "store/search_indexer.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <optional>

#include "common/this_thread.h"

namespace parley::store {

SearchIndexer::SearchIndexer(Store& store, const Clock& clock, SearchIndexerConfig config)
    : store_(store),
      clock_(clock),
      config_(config),
      backlog_(Metrics::Default().GetGauge("parley_search_index_backlog",
                                           "Messages queued for the message-search index, not yet indexed.")),
      lag_ms_(Metrics::Default().GetGauge(
          "parley_search_index_lag_milliseconds",
          "Age of the oldest message queued for the message-search index, milliseconds (0: none queued).")),
      indexed_(Metrics::Default().GetCounter("parley_search_indexed_total",
                                             "Message-search queue entries indexed by this node.")),
      failures_(Metrics::Default().GetCounter("parley_search_index_failures_total",
                                              "Message-search index steps that failed (retried later).")) {}

SearchIndexer::~SearchIndexer() { Stop(); }

void SearchIndexer::Start() {
  thread_ = std::thread([this] {
    SetCurrentThreadName("search-index");
    Run();
  });
}

void SearchIndexer::Stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void SearchIndexer::Run() {
  const int batch = std::max(1, config_.batch);
  for (;;) {
    std::optional<Result<SearchIndexProgress>> result;
    {
      std::unique_lock lock(mu_);
      if (stopping_) return;
    }
    store_.IndexSearch(batch, [this, &result](Result<SearchIndexProgress> r) {
      std::lock_guard lock(mu_);
      result.emplace(std::move(r));
      cv_.notify_all();
    });
    bool full = false;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return result.has_value(); });  // the store always completes (also when closing)
      if (result->has_value()) {
        const SearchIndexProgress& p = **result;
        indexed_.Inc(p.indexed);
        backlog_.Set(p.backlog);
        lag_ms_.Set(p.oldest_queued_at > 0 ? std::max<int64_t>(0, clock_.NowMillis() - p.oldest_queued_at) : 0);
        full = p.indexed >= batch;
      } else {
        failures_.Inc();
        if (!stopping_ && result->error().code() != ErrorCode::kShuttingDown)
          spdlog::warn("event=search_index_failed error=\"{}\"", result->error().ToString());
      }
      if (!full) cv_.wait_for(lock, std::chrono::milliseconds(config_.interval_ms), [this] { return stopping_; });
    }
  }
}

}  // namespace parley::store
