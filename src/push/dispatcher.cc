// PushDispatcher (see the header for the design).
#include "push/dispatcher.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>

#include <algorithm>
#include <chrono>

#include "common/this_thread.h"

namespace parley::push {

namespace {

int64_t NowMillis() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

const char* OutcomeName(store::PushOutcome o) {
  switch (o) {
    case store::PushOutcome::kDelivered: return "delivered";
    case store::PushOutcome::kRetry: return "retry";
    case store::PushOutcome::kRejected: return "rejected";
    case store::PushOutcome::kGone: return "gone";
  }
  return "unknown";
}

Counter& Attempts(store::PushOutcome o) {
  return Metrics::Default().GetCounter("parley_push_attempts_total",
                                       "Push attempts by outcome (delivered, retry, rejected, gone)",
                                       fmt::format("outcome=\"{}\"", OutcomeName(o)));
}

}  // namespace

PushDispatcher::PushDispatcher(store::Store& store, DispatcherConfig config)
    : store_(store),
      config_(std::move(config)),
      timer_(io_),
      in_flight_gauge_(Metrics::Default().GetGauge("parley_push_in_flight", "Push attempts in flight on this node")),
      pending_gauge_(Metrics::Default().GetGauge("parley_push_queue_pending", "Push jobs in the store's queue")),
      leased_gauge_(Metrics::Default().GetGauge("parley_push_queue_leased",
                                                "Push jobs in the queue held by an unexpired lease (any node)")),
      endpoints_gauge_(Metrics::Default().GetGauge("parley_push_endpoints", "Registered push endpoints")),
      claimed_(Metrics::Default().GetCounter("parley_push_claimed_total", "Push jobs claimed by this node")),
      previews_left_out_(Metrics::Default().GetCounter(
          "parley_push_previews_left_out_total",
          "Pushes sent without their preview because the compacted text could not be paged in")) {
  for (auto o : {store::PushOutcome::kDelivered, store::PushOutcome::kRetry, store::PushOutcome::kRejected,
                 store::PushOutcome::kGone})
    Attempts(o);
}

PushDispatcher::~PushDispatcher() { Stop(); }

void PushDispatcher::Start() {
  boost::asio::post(io_, [this] {
    Round();
    ScheduleTimer();
  });
  thread_ = std::thread([this] {
    SetCurrentThreadName("push");
    auto guard = boost::asio::make_work_guard(io_);
    io_.run();
  });
}

void PushDispatcher::Stop() {
  if (stopping_.exchange(true)) return;
  io_.stop();
  if (thread_.joinable()) thread_.join();
}

void PushDispatcher::Wake() {
  if (stopping_) return;
  boost::asio::post(io_, [this] { Round(); });
}

void PushDispatcher::ScheduleTimer() {
  timer_.expires_after(std::chrono::milliseconds(config_.poll_ms));
  timer_.async_wait([this](boost::system::error_code ec) {
    if (ec || stopping_) return;
    Round();
    // The queue's gauges, once per poll (any node's jobs count).
    store_.GetPushQueueStats(NowMillis(), [this](Result<store::PushQueueStats> st) {
      if (!st) return;
      pending_gauge_.Set(st->pending);
      leased_gauge_.Set(st->leased);
      endpoints_gauge_.Set(st->endpoints);
    });
    ScheduleTimer();
  });
}

void PushDispatcher::Round() {
  if (stopping_ || provider_ == nullptr) return;
  if (claiming_) {
    again_ = true;
    return;
  }
  int room = config_.max_in_flight - in_flight_;
  if (room <= 0) return;  // the next completion starts a round
  claiming_ = true;
  store_.ClaimPushJobs(config_.node_id, NowMillis(), config_.lease_ms, room,
                       [this](Result<std::vector<store::PushJob>> jobs) {
                         if (stopping_) return;
                         boost::asio::post(io_, [this, jobs = std::move(jobs)]() mutable {
                           OnClaimed(std::move(jobs));
                         });
                       });
}

void PushDispatcher::OnClaimed(Result<std::vector<store::PushJob>> jobs) {
  claiming_ = false;
  if (!jobs) {
    spdlog::warn("event=push_claim_failed node={} error=\"{}\"", config_.node_id, jobs.error().ToString());
    return;
  }
  int room = config_.max_in_flight - in_flight_;
  bool full_page = !jobs->empty() && static_cast<int>(jobs->size()) >= room;
  for (store::PushJob& job : *jobs) {
    in_flight_++;
    in_flight_gauge_.Set(in_flight_);
    claimed_.Inc();
    if (!job.preview_error.empty()) {
      // Sent now all the same (store.h ClaimPushJobs): a notification on
      // time matters more than its text.
      previews_left_out_.Inc();
      spdlog::warn("event=push_preview_left_out device_id={} conversation_id={} seq={} error=\"{}\"", job.device_id,
                   job.conversation_id, job.seq, job.preview_error);
    }
    provider_->Send(job, [this, job](SendResult r) {
      // The provider runs on io_: already on this thread.
      OnSent(job, std::move(r));
    });
  }
  if (again_ || full_page) {
    again_ = false;
    Round();
  }
}

int64_t PushDispatcher::Backoff(int attempts) {
  int64_t d = config_.backoff_initial_ms;
  for (int i = 0; i < attempts && d < config_.backoff_max_ms; ++i) d *= 2;
  d = std::min(d, config_.backoff_max_ms);
  // Jitter: uniform in [d/2, d], so retries of many devices spread out.
  return std::uniform_int_distribution<int64_t>(d / 2, d)(rng_);
}

void PushDispatcher::OnSent(const store::PushJob& job, SendResult r) {
  in_flight_--;
  in_flight_gauge_.Set(in_flight_);
  Attempts(r.outcome).Inc();
  int64_t now = NowMillis();
  store::PushCompletion c;
  c.device_id = job.device_id;
  c.node = config_.node_id;
  c.version = job.version;
  c.conversation_id = job.conversation_id;
  c.seq = job.seq;
  c.kind = job.kind;
  c.outcome = r.outcome;
  c.result = r.result;
  c.now = now;
  c.retry_at = now + Backoff(job.attempts);
  c.max_attempts = config_.max_attempts;
  c.coalesce_ms = config_.coalesce_ms;
  auto level = r.outcome == store::PushOutcome::kDelivered ? spdlog::level::debug : spdlog::level::info;
  spdlog::log(level, "event=push_attempt device_id={} conversation_id={} seq={} attempt={} outcome={} result={}",
              job.device_id, job.conversation_id, job.seq, job.attempts + 1, OutcomeName(r.outcome), r.result);
  store_.CompletePush(std::move(c), [this, device = job.device_id](Status s) {
    if (!s.ok()) spdlog::warn("event=push_complete_failed device_id={} error=\"{}\"", device, s.ToString());
    if (stopping_) return;
    boost::asio::post(io_, [this] { Round(); });
  });
}

}  // namespace parley::push
