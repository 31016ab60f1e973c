// The threads every backend runs the same way (SqliteStore, PostgresStore):
// one writer draining a queue of write operations in batches, and a pool of
// readers, one connection each, sharing one FIFO of reads.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <spdlog/spdlog.h>

#include "common/metrics.h"
#include "common/status.h"
#include "common/this_thread.h"
#include "store/commit_pacer.h"

namespace parley::store {

// The writer's queue. Op needs `bool solo` (runs in a batch of its own) and
// Finish(const Status&). Any thread pushes; one writer thread runs Run.
// `depth` is the process's queue-depth gauge (parley_store_queue_depth,
// also StoreStats::queued_writes).
template <typename Op>
class WriteQueue {
 public:
  explicit WriteQueue(Gauge& depth) : depth_(depth) {}

  // Queues `op`, or finishes it at once with kShuttingDown once the writer
  // has exited.
  void Push(std::unique_ptr<Op> op) {
    bool wake = false;
    {
      std::lock_guard lock(mu_);
      if (!exited_) {
        queue_.push_back(std::move(op));
        depth_.Add(1);
        wake = queue_.size() >= notify_at_;
      }
    }
    if (op != nullptr) {  // not queued: the writer is gone
      op->Finish(Status(ErrorCode::kShuttingDown, "store is closing"));
      return;
    }
    if (wake) cv_.notify_one();
  }

  // Takes every operation still queued (the writer has not begun them) and
  // finishes each with `why`, outside the lock, on the calling thread.
  // Returns how many there were.
  size_t FailQueued(const Status& why) {
    std::deque<std::unique_ptr<Op>> taken;
    {
      std::lock_guard lock(mu_);
      taken.swap(queue_);
      depth_.Add(-static_cast<int64_t>(taken.size()));
    }
    for (auto& op : taken) op->Finish(why);
    return taken.size();
  }

  // Run returns once everything queued before this call is done.
  void Stop() {
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
  }

  // The writer thread's loop. Waits as `pacer` says, takes up to
  // `max_batch` operations (a solo one ends the batch before it and makes a
  // batch of its own), and hands them to `commit(std::vector<std::unique_ptr<Op>>&)`,
  // which applies and commits them and returns the batch's status; then
  // finishes each with that status. Returns once stopped with nothing
  // queued; later pushes are refused.
  template <typename Commit>
  void Run(CommitPacer& pacer, size_t max_batch, Commit commit) {
    std::vector<std::unique_ptr<Op>> batch;
    for (;;) {
      {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [this] { return !queue_.empty() || stopping_; });
        if (queue_.empty()) {
          exited_ = true;
          return;
        }
        CommitPacer::Wait wait = pacer.Before(queue_.size(), CommitPacer::Clock::now());
        if (wait.max.count() > 0 && !stopping_) {
          // Pushes wake this thread only once the wait's target is queued
          // (not once per write).
          notify_at_ = wait.until_queued;
          cv_.wait_for(lock, wait.max, [&] { return queue_.size() >= wait.until_queued || stopping_; });
          notify_at_ = 1;
        }
        const size_t n = std::min(queue_.size(), max_batch);
        if (n == 0) continue;  // FailQueued emptied the queue during the wait
        size_t taken = 0;
        while (taken < n) {
          if (queue_.front()->solo && taken > 0) break;
          batch.push_back(std::move(queue_.front()));
          queue_.pop_front();
          ++taken;
          if (batch.back()->solo) break;
        }
        depth_.Add(-static_cast<int64_t>(taken));
        pacer.Taken(taken, CommitPacer::Clock::now());
      }
      const Status status = commit(batch);
      for (auto& op : batch) op->Finish(status);
      batch.clear();
    }
  }

 private:
  Gauge& depth_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Op>> queue_;  // guarded by mu_, as the fields below
  size_t notify_at_ = 1;  // a push that makes the queue this long wakes the writer
  bool stopping_ = false;
  bool exited_ = false;
};

// The readers: one thread per connection, named `<name>/<i>`, all taking
// jobs from one FIFO. Conn is the backend's read connection. A job gets its
// reader's connection, or nullptr when the pool refused it (stopped).
template <typename Conn>
class ReadPool {
 public:
  using Job = std::function<void(Conn*)>;

  // `before_job`, if set, runs on the reader thread before each job (a test
  // hook: StoreConfig::sqlite_before_read_for_test).
  explicit ReadPool(std::vector<std::unique_ptr<Conn>> conns, std::function<void()> before_job = {})
      : conns_(std::move(conns)), before_job_(std::move(before_job)) {}
  ~ReadPool() { Stop(); }
  ReadPool(const ReadPool&) = delete;
  ReadPool& operator=(const ReadPool&) = delete;

  // Starts the readers, under SCHED_BATCH if `sched_batch` (StoreConfig::
  // reader_sched_batch; if the call fails they keep the normal policy), at
  // nice value `nice` if not 0 (the search writer's pool).
  void Start(std::string_view name, bool sched_batch, int nice = 0) {
    running_ = static_cast<int>(conns_.size());
    for (auto& conn : conns_) {
      Conn* c = conn.get();
      threads_.emplace_back([this, c, sched_batch, nice,
                             thread_name = std::string(name) + "/" + std::to_string(threads_.size())] {
        // Before the name, so that a named thread has its policy.
        if (sched_batch) {
          if (Status s = UseBatchScheduling(); !s.ok())
            spdlog::warn("event=reader_sched_batch_failed error=\"{}\"", s.message());
        }
        if (nice != 0) {
          if (Status s = SetCurrentThreadNice(nice); !s.ok())
            spdlog::warn("event=thread_nice_failed thread={} error=\"{}\"", thread_name, s.message());
        }
        SetCurrentThreadName(thread_name);
        Run(*c);
      });
    }
  }

  // Queues `job`; once the last reader has exited (or before Start), runs
  // job(nullptr) at once on the calling thread instead.
  void Submit(Job job) {
    {
      std::lock_guard lock(mu_);
      if (running_ > 0) {
        queue_.push_back(std::move(job));
        job = nullptr;
      }
    }
    if (job) {
      job(nullptr);
      return;
    }
    cv_.notify_one();
  }

  // Runs what is queued, then joins the readers. Idempotent.
  void Stop() {
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (std::thread& t : threads_) t.join();
    threads_.clear();
  }

 private:
  void Run(Conn& conn) {
    for (;;) {
      Job job;
      {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [this] { return !queue_.empty() || stopping_; });
        if (queue_.empty()) {
          --running_;  // the last reader out refuses further reads
          return;
        }
        job = std::move(queue_.front());
        queue_.pop_front();
      }
      if (before_job_) before_job_();
      job(&conn);
    }
  }

  std::vector<std::unique_ptr<Conn>> conns_;  // conns_[i] used only by threads_[i]
  const std::function<void()> before_job_;
  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> queue_;  // guarded by mu_, as the fields below
  bool stopping_ = false;
  int running_ = 0;  // 0: jobs are refused (not started, or the last reader has exited)
};

}  // namespace parley::store
