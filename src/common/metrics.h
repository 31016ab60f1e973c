// A small metrics registry, rendered in the Prometheus text format at
// /metrics. Counters, gauges and fixed-bucket histograms; every metric has a
// name and a help text (documented in docs/operations.md).
//
// Thread-safety: metric objects are lock-free (relaxed atomics) and may be
// updated from any thread. Registration takes the registry's mutex; do it at
// start-up and keep the returned reference (metrics live as long as the
// registry, which for Metrics::Default() is the process).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace parley {

class Counter {
 public:
  void Inc(uint64_t n = 1) { v_.fetch_add(n, std::memory_order_relaxed); }
  uint64_t value() const { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> v_{0};
};

class Gauge {
 public:
  void Set(int64_t v) { v_.store(v, std::memory_order_relaxed); }
  void Add(int64_t n) { v_.fetch_add(n, std::memory_order_relaxed); }
  int64_t value() const { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<int64_t> v_{0};
};

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void Observe(double v);
  const std::vector<double>& bounds() const { return bounds_; }
  uint64_t bucket(size_t i) const { return buckets_[i].load(std::memory_order_relaxed); }
  uint64_t count() const { return count_.load(std::memory_order_relaxed); }
  double sum() const;

 private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;  // bounds_.size() + 1 (+Inf)
  std::atomic<uint64_t> count_{0};
  std::atomic<uint64_t> sum_micros_{0};  // sum * 1e6, so it stays an atomic integer
};

class Metrics {
 public:
  static Metrics& Default();

  // Returns the metric registered under `name`, creating it on first use.
  // `labels` is a preformatted label set such as `type="send"` (or empty).
  Counter& GetCounter(const std::string& name, const std::string& help, const std::string& labels = "");
  Gauge& GetGauge(const std::string& name, const std::string& help, const std::string& labels = "");
  Histogram& GetHistogram(const std::string& name, const std::string& help, std::vector<double> bounds);

  // The whole registry in the Prometheus text exposition format 0.0.4.
  std::string RenderPrometheus() const;

 private:
  enum class Kind { kCounter, kGauge, kHistogram };
  struct Entry {
    std::string name, help, labels;
    Kind kind;
    std::unique_ptr<Counter> counter;
    std::unique_ptr<Gauge> gauge;
    std::unique_ptr<Histogram> histogram;
  };
  Entry* Find(const std::string& name, const std::string& labels);

  mutable std::mutex mu_;
  std::vector<std::unique_ptr<Entry>> entries_;  // guarded by mu_; order of registration
};

}  // namespace parley
