#include "common/metrics.h"

#include <algorithm>
#include <cmath>
#include <fmt/format.h>

namespace parley {

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), buckets_(new std::atomic<uint64_t>[bounds_.size() + 1]) {
  std::sort(bounds_.begin(), bounds_.end());
  for (size_t i = 0; i <= bounds_.size(); ++i) buckets_[i].store(0);
}

void Histogram::Observe(double v) {
  size_t i = std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin();
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
  if (v > 0) sum_micros_.fetch_add(static_cast<uint64_t>(std::llround(v * 1e6)), std::memory_order_relaxed);
}

double Histogram::sum() const { return static_cast<double>(sum_micros_.load(std::memory_order_relaxed)) / 1e6; }

Metrics& Metrics::Default() {
  static Metrics* m = new Metrics();  // never destroyed: metrics outlive every thread
  return *m;
}

Metrics::Entry* Metrics::Find(const std::string& name, const std::string& labels) {
  for (auto& e : entries_)
    if (e->name == name && e->labels == labels) return e.get();
  return nullptr;
}

Counter& Metrics::GetCounter(const std::string& name, const std::string& help, const std::string& labels) {
  std::lock_guard lock(mu_);
  if (Entry* e = Find(name, labels)) return *e->counter;
  auto e = std::make_unique<Entry>(Entry{name, help, labels, Kind::kCounter, std::make_unique<Counter>(), nullptr, nullptr});
  Counter& c = *e->counter;
  entries_.push_back(std::move(e));
  return c;
}

Gauge& Metrics::GetGauge(const std::string& name, const std::string& help, const std::string& labels) {
  std::lock_guard lock(mu_);
  if (Entry* e = Find(name, labels)) return *e->gauge;
  auto e = std::make_unique<Entry>(Entry{name, help, labels, Kind::kGauge, nullptr, std::make_unique<Gauge>(), nullptr});
  Gauge& g = *e->gauge;
  entries_.push_back(std::move(e));
  return g;
}

Histogram& Metrics::GetHistogram(const std::string& name, const std::string& help, std::vector<double> bounds) {
  std::lock_guard lock(mu_);
  if (Entry* e = Find(name, "")) return *e->histogram;
  auto e = std::make_unique<Entry>(
      Entry{name, help, "", Kind::kHistogram, nullptr, nullptr, std::make_unique<Histogram>(std::move(bounds))});
  Histogram& h = *e->histogram;
  entries_.push_back(std::move(e));
  return h;
}

std::string Metrics::RenderPrometheus() const {
  std::lock_guard lock(mu_);
  // Same-named series (different labels) must be adjacent under one HELP/TYPE.
  std::vector<const Entry*> sorted;
  for (const auto& e : entries_) sorted.push_back(e.get());
  std::stable_sort(sorted.begin(), sorted.end(), [](const Entry* a, const Entry* b) { return a->name < b->name; });
  std::string out;
  std::string last_name;
  for (const Entry* e : sorted) {
    if (e->name != last_name) {
      static constexpr const char* kTypes[] = {"counter", "gauge", "histogram"};
      out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", e->name, e->help, e->name, kTypes[static_cast<int>(e->kind)]);
      last_name = e->name;
    }
    std::string lbl = e->labels.empty() ? "" : "{" + e->labels + "}";
    switch (e->kind) {
      case Kind::kCounter: out += fmt::format("{}{} {}\n", e->name, lbl, e->counter->value()); break;
      case Kind::kGauge: out += fmt::format("{}{} {}\n", e->name, lbl, e->gauge->value()); break;
      case Kind::kHistogram: {
        const Histogram& h = *e->histogram;
        uint64_t cum = 0;
        for (size_t i = 0; i < h.bounds().size(); ++i) {
          cum += h.bucket(i);
          out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", e->name, h.bounds()[i], cum);
        }
        cum += h.bucket(h.bounds().size());
        out += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n{}_sum {}\n{}_count {}\n", e->name, cum, e->name, h.sum(),
                           e->name, h.count());
        break;
      }
    }
  }
  return out;
}

}  // namespace parley
