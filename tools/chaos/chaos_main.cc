// parley-chaos: a randomised workload with faults against a real parleyd,
// checked by parley-check (docs/checker.md, "Chaos runs").
//
// One run:
//  1. a plan is drawn from a seed (printed first): users, devices per user
//     (each with a clock skew; one of them a slow reader), a timed list of
//     steps — sends, sends cut off by a dropped connection, devices going
//     offline and coming back (their outbox resends, delayed, with the same
//     client ids), connections dropped in the middle of a catch-up sync,
//     blocks and unblocks, read receipts, edits and deletes (for everyone
//     and for me) of earlier messages, drafts, short disappearing timers set
//     and turned off (messages expire mid-run), kill -9 of parleyd after the Nth
//     message this driver saw acknowledged — and, per parleyd incarnation, a
//     server-side crash point (the test build's --fault crash_after_append@K:
//     SIGKILL right after the Kth message is durable, before its ack);
//  2. the driver starts parleyd (and restarts it after every death, with the
//     next incarnation's crash point), provisions the users through the admin
//     API's bulk path, opens one parley::Client per device (history recorded
//     to histories/<user>.<n>.jsonl) and plays the steps;
//  3. at the end every device comes online and syncs until nothing moves
//     (and, after a wait for the last timed messages to expire, once more);
//     then parley-check reads the histories and the server's state, and the
//     driver exits with its result.
// Cluster shape (--nodes N, with --redis and a PostgreSQL --store): N
// parleyd nodes on the one store and Redis, each user's devices on different
// nodes (home node user + index, the others as the SDK's failover list),
// raw sends and blocks rotating over the nodes, and each kill step aimed at
// one node (its "node" field); every node arms the plan's crash points for
// its own incarnations.
// A failing run (or --keep) saves its directory: plan.json (seed, options,
// every step and crash point), driver.log, events/ (every callback of every
// device), histories/, parleyd.log, state.json and check.txt. `--replay DIR`
// plays DIR/plan.json again: the same workload and the same fault schedule
// (kills land after the same acknowledged message / the same append).
//
// Threads: the main thread keeps the schedule: at each step's planned time
// it hands the step to the worker that owns it and never waits for a step
// to finish. Each device has a worker (its steps run one at a time, in plan
// order: Client::Stop and Compose may block for seconds on a loaded
// machine, which delays that device only); each user's blocks and unblocks
// run in plan order on a worker of that user, its raw double sends on
// another; kills on one worker. One thread per node supervises parleyd; each Client has its
// own I/O and worker threads (callbacks). Shared state is guarded by the
// mutexes named beside it, or is atomic.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <functional>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "common/child_process.h"
#include "net/http_client.h"
#include "parley/client.h"
#include "parley/connection.h"

namespace parley::chaos {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using SteadyClock = std::chrono::steady_clock;

// ---- Limits and tuning (documented in docs/checker.md, "Chaos runs") ----
constexpr int kPlanVersion = 1;
constexpr int kStepsPerSecond = 20;           // plan density: one step every 50 ms on average
constexpr int kSecondsPerKill = 10;           // one parleyd death (crash point or kill -9) per this many seconds
constexpr int kCrashAfterAppendMin = 5;       // a crash point lands after this many appends ...
constexpr int kCrashAfterAppendMax = 60;      // ... to this many, counted from the incarnation's start
constexpr int kMaxPeersPerUser = 3;           // each user talks to a few others (conversations get long)
constexpr int64_t kMaxSkewMs = 6LL * 3600 * 1000;  // client clocks off by up to 6 h (well under the outbox age)
constexpr int kSlowReaderMs = 15;             // the slow reader's pause per applied event
constexpr int kSyncPageLimit = 7;             // small pages: a catch-up spans many sync calls
constexpr int kSelectiveRecent = 1;           // selective devices sync their most recent conversation in full
constexpr int kKillWaitMs = 3000;             // a kill step waits this long for its ack count
constexpr int kMinServeMs = 5000;             // ... and never kills an incarnation up for less than this
constexpr int kKillProgressWaitMs = 10'000;   // ... nor one that acked nothing yet, if that comes within this
constexpr int64_t kMinBlockMs = 500;          // a block lasts this long ...
constexpr int64_t kMaxBlockMs = 3000;         // ... to this long
constexpr int kSettleTimeoutMs = 120'000;     // the final catch-up fails after this long without progress
constexpr int kSettleMaxMs = 900'000;         // ... and after this long in all, progress or not
constexpr int kServerStartTimeoutMs = 120'000;  // an ASan parleyd on a loaded machine starts slowly
constexpr int kMaxStartAttempts = 3;          // parleyd restarts tried before the run gives up
constexpr int kRequestTimeoutMs = 3000;       // the SDK's per-request timeout during the run
constexpr int kRawSendTimeoutMs = 20'000;     // a raw double send retries (parleyd down) this long
constexpr int64_t kMaxRawDelayMs = 1500;      // a raw resend comes this long after its reconnect, at most
constexpr int64_t kLateStepMs = 1000;         // a step that starts this late is logged (driver.log)
constexpr int kRetryInitialMs = 100;          // raw sends and blocks retry after this long ...
constexpr int kRetryMaxMs = 2000;             // ... doubling up to this (no connection storm on a slow parleyd)
// Of every 1000 steps: sends take kSendPerMille, edits, deletes and drafts
// the rest of the first 600 (at kStepsPerSecond: 0.6 edits, 0.6 deletes and
// 0.4 drafts a second; about half the edits and deletes find their device
// offline and are skipped).
constexpr int64_t kSendPerMille = 520;
constexpr int64_t kEditPerMille = 30;
constexpr int64_t kDeletePerMille = 30;       // drafts: 600 - the three above
constexpr int kChangeTimeoutMs = 10'000;      // an edit or delete is retried (reconnecting, parleyd down) this long
constexpr int64_t kPickRange = 1000;          // an edit or delete picks its message by `pick` mod the candidates
constexpr int kChangeCandidates = 50;         // ... among the newest this many cached messages with the peer
// Retention: a disappearing timer is set about every kSecondsPerTimer
// seconds on a conversation of the step's device, short enough for its
// messages to expire mid-run (while devices are offline, dropped or
// catching up); half of them are turned off again by the peer a little
// later. parleyd's expiry step runs every kExpiryIntervalMs, longer than
// its 1 s default: for that long after a message's expiry every answer
// that reads it must mask it (show the tombstone it is about to become),
// and the checker judges the syncs and snapshots answered then. After the
// final catch-up the run waits until everything sent under a timer has
// expired (kMaxTimerS, plus the expiry step: kExpiryWaitMs) and catches up
// once more, so that every expiry is in the streams the checker judges.
constexpr int kSecondsPerTimer = 3;
constexpr int64_t kMinTimerS = 2;
constexpr int64_t kMaxTimerS = 6;
constexpr int64_t kMinTimerOnMs = 3000;       // a timer turned off stays on this long ...
constexpr int64_t kMaxTimerOnMs = 8000;       // ... to this long
constexpr int64_t kExpiryIntervalMs = 2500;   // parleyd --expiry-interval-ms
constexpr int64_t kExpiryWaitMs = kExpiryIntervalMs + 1500;

int64_t SystemNowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string Timestamp() {
  auto t = std::chrono::system_clock::now();
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
  return std::to_string(ms);
}

// ---- Plan ----

struct DeviceSpec {
  int user = 0;
  int index = 0;  // 0..devices-1 within the user
  int64_t skew_ms = 0;
  int slow_ms = 0;
};

struct Plan {
  uint64_t seed = 0;
  int users = 0;
  int devices = 0;
  int duration_s = 0;
  int nodes = 1;  // parleyd nodes (cluster shape when > 1)
  // Extra parleyd flags of every start (--parleyd-args), e.g. a short stream
  // horizon so that devices meet cursor_too_old; part of the plan so that a
  // replay runs the server the same way.
  std::vector<std::string> parleyd_args;
  std::vector<DeviceSpec> device_specs;
  std::vector<std::vector<int>> peers;  // per user
  // Per parleyd incarnation (start), its crash point (0: none).
  std::vector<int64_t> crash_after_append;
  std::vector<json> steps;  // {"t": ms, "op": ..., ...}

  json ToJson() const {
    json j = {{"version", kPlanVersion}, {"seed", seed}, {"users", users}, {"devices", devices},
              {"duration_s", duration_s}, {"nodes", nodes}, {"crash_after_append", crash_after_append},
              {"peers", peers}, {"steps", steps}, {"parleyd_args", parleyd_args}};
    j["device_specs"] = json::array();
    for (const auto& d : device_specs)
      j["device_specs"].push_back({{"user", d.user}, {"index", d.index}, {"skew_ms", d.skew_ms}, {"slow_ms", d.slow_ms}});
    return j;
  }
  static std::optional<Plan> FromJson(const json& j, std::string* error) {
    try {
      if (j.at("version").get<int>() != kPlanVersion) {
        *error = "plan version " + j.at("version").dump() + " is not " + std::to_string(kPlanVersion);
        return std::nullopt;
      }
      Plan p;
      p.seed = j.at("seed").get<uint64_t>();
      p.users = j.at("users").get<int>();
      p.devices = j.at("devices").get<int>();
      p.duration_s = j.at("duration_s").get<int>();
      p.nodes = j.value("nodes", 1);  // plans saved before the cluster shape: one node
      p.parleyd_args = j.value("parleyd_args", std::vector<std::string>{});
      p.crash_after_append = j.at("crash_after_append").get<std::vector<int64_t>>();
      p.peers = j.at("peers").get<std::vector<std::vector<int>>>();
      p.steps = j.at("steps").get<std::vector<json>>();
      for (const auto& d : j.at("device_specs"))
        p.device_specs.push_back({d.at("user").get<int>(), d.at("index").get<int>(), d.at("skew_ms").get<int64_t>(),
                                  d.at("slow_ms").get<int>()});
      if (p.users < 2 || p.devices < 1 || p.nodes < 1 ||
          static_cast<int>(p.device_specs.size()) != p.users * p.devices) {
        *error = "plan: inconsistent users/devices/nodes";
        return std::nullopt;
      }
      return p;
    } catch (const std::exception& e) {
      *error = std::string("plan: ") + e.what();
      return std::nullopt;
    }
  }
};

Plan MakePlan(uint64_t seed, int users, int devices, int duration_s, int nodes) {
  Plan p;
  p.seed = seed;
  p.users = users;
  p.devices = devices;
  p.duration_s = duration_s;
  p.nodes = nodes;
  std::mt19937_64 rng(seed);
  auto uni = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  auto chance = [&](double x) { return std::uniform_real_distribution<double>(0, 1)(rng) < x; };
  int total_devices = users * devices;
  int slow = static_cast<int>(uni(0, total_devices - 1));
  for (int u = 0; u < users; ++u) {
    for (int d = 0; d < devices; ++d) {
      DeviceSpec s{u, d, 0, 0};
      if (chance(0.5)) s.skew_ms = uni(-kMaxSkewMs, kMaxSkewMs);
      if (u * devices + d == slow) s.slow_ms = kSlowReaderMs;
      p.device_specs.push_back(s);
    }
  }
  p.peers.resize(static_cast<size_t>(users));
  for (int u = 0; u < users; ++u) {
    int want = std::min(kMaxPeersPerUser, users - 1);
    while (static_cast<int>(p.peers[static_cast<size_t>(u)].size()) < want) {
      int v = static_cast<int>(uni(0, users - 1));
      auto& mine = p.peers[static_cast<size_t>(u)];
      if (v != u && std::find(mine.begin(), mine.end(), v) == mine.end()) mine.push_back(v);
    }
  }
  int deaths = std::max(1, duration_s / kSecondsPerKill);
  int64_t total_ms = int64_t{duration_s} * 1000;
  int nsteps = duration_s * kStepsPerSecond;
  // Driver kills (after the Nth ack) take about half of the deaths; crash
  // points the other half; every incarnation but the last may carry one.
  int driver_kills = deaths / 2;
  for (int i = 0; i < deaths - driver_kills; ++i) p.crash_after_append.push_back(uni(kCrashAfterAppendMin, kCrashAfterAppendMax));
  for (int i = 0; i < driver_kills + 1; ++i) p.crash_after_append.push_back(0);
  std::shuffle(p.crash_after_append.begin(), p.crash_after_append.end() - 1, rng);
  std::vector<int64_t> kill_times;
  for (int i = 0; i < driver_kills; ++i) kill_times.push_back(uni(total_ms / 10, total_ms * 9 / 10));
  std::sort(kill_times.begin(), kill_times.end());
  size_t next_kill = 0;
  int sends = 0;
  std::vector<bool> offline(static_cast<size_t>(total_devices), false);
  std::vector<std::pair<int, int>> blocks;  // (owner, target) in force
  struct Unblock {
    int64_t t;
    int owner, target;
    bool operator<(const Unblock& o) const { return t < o.t; }
  };
  std::vector<Unblock> unblocks;  // planned, not yet emitted
  for (int i = 0; i < nsteps; ++i) {
    int64_t t = total_ms * i / nsteps;
    std::sort(unblocks.begin(), unblocks.end());
    while (!unblocks.empty() && unblocks.front().t <= t) {
      auto [ut, owner, target] = unblocks.front();
      p.steps.push_back({{"t", ut}, {"op", "unblock"}, {"user", owner}, {"target", target}});
      blocks.erase(std::find(blocks.begin(), blocks.end(), std::make_pair(owner, target)));
      unblocks.erase(unblocks.begin());
    }
    while (next_kill < kill_times.size() && kill_times[next_kill] <= t) {
      json kill = {{"t", kill_times[next_kill]}, {"op", "kill"}, {"after_acks", std::max(1, sends / 2)}};
      if (nodes > 1) kill["node"] = uni(0, nodes - 1);  // (one node: the same draws as before)
      p.steps.push_back(std::move(kill));
      ++next_kill;
    }
    int dev = static_cast<int>(uni(0, total_devices - 1));
    int user = dev / devices;
    const auto& mine = p.peers[static_cast<size_t>(user)];
    int peer = mine[static_cast<size_t>(uni(0, static_cast<int64_t>(mine.size()) - 1))];
    int64_t r = uni(0, 999);
    json s = {{"t", t}, {"dev", dev}};
    if (r < kSendPerMille) {
      s["op"] = "send";
      s["peer"] = peer;
      s["n"] = chance(0.15) ? uni(2, 6) : 1;  // sometimes a burst
      sends += s["n"].get<int>();
    } else if (r < kSendPerMille + kEditPerMille) {
      // An edit of one of this device's own earlier messages to `peer`
      // (which one: `pick`, among those the device holds when it plays).
      s["op"] = "edit";
      s["peer"] = peer;
      s["pick"] = uni(0, kPickRange - 1);
      s["client_id"] = "edit-" + std::to_string(seed) + "-" + std::to_string(i);
    } else if (r < kSendPerMille + kEditPerMille + kDeletePerMille) {
      // A delete of an earlier message: for everyone (own messages), or
      // for me (any message of the conversation).
      s["op"] = "delete";
      s["peer"] = peer;
      s["pick"] = uni(0, kPickRange - 1);
      s["for"] = chance(0.4) ? "me" : "everyone";
    } else if (r < 600) {
      // A draft set (or, sometimes, cleared) on this device.
      s["op"] = "draft";
      s["peer"] = peer;
      s["clear"] = chance(0.3);
    } else if (r < 680) {
      s["op"] = "send_drop";  // the connection drops right after the compose: mid-send
      s["peer"] = peer;
      ++sends;
    } else if (r < 760) {
      s["op"] = offline[static_cast<size_t>(dev)] ? "online" : "offline";
      offline[static_cast<size_t>(dev)] = !offline[static_cast<size_t>(dev)];
    } else if (r < 800) {
      if (!offline[static_cast<size_t>(dev)]) {
        s["op"] = "offline";  // back later with a drop in the middle of its catch-up
        offline[static_cast<size_t>(dev)] = true;
      } else {
        s["op"] = "online_drop_mid_sync";
        s["after_events"] = uni(1, 2 * kSyncPageLimit);
        offline[static_cast<size_t>(dev)] = false;
      }
    } else if (r < 860) {
      s["op"] = "drop";
    } else if (r < 940) {
      s["op"] = "read";
      s["peer"] = peer;
    } else if (r < 950) {
      // A block lasts a little while (its unblock is planned now): sends of
      // the blocked user are withheld meanwhile, the blocker's own fail.
      if (std::find(blocks.begin(), blocks.end(), std::make_pair(user, peer)) == blocks.end()) {
        s["op"] = "block";
        blocks.emplace_back(user, peer);
        unblocks.push_back({t + uni(kMinBlockMs, kMaxBlockMs), user, peer});
      } else {
        s["op"] = "read";
        s["peer"] = peer;
      }
      if (s["op"] == "block") {
        s["user"] = user;
        s["target"] = peer;
        s.erase("dev");
      }
    } else if (r < 975) {
      // The same client id sent twice at once over a raw connection (both
      // in flight: duplicated), then again on a new connection after a
      // reconnect and a pause (delayed): one message, every ack with the
      // first ack's seq (parley-check).
      s["op"] = "raw_double";
      s["user"] = user;
      s["peer"] = peer;
      s["client_id"] = "raw-" + std::to_string(seed) + "-" + std::to_string(i);
      s["delay_ms"] = uni(0, kMaxRawDelayMs);
      s.erase("dev");
    } else {
      s["op"] = "send";  // a conversation with a blocker, or just one more message
      s["peer"] = peer;
      s["n"] = 1;
      ++sends;
    }
    p.steps.push_back(std::move(s));
  }
  // Disappearing timers (drawn after the other steps, so that a seed's
  // other steps are what they were before timers joined the workload): set
  // by a device on one of its user's conversations, some turned off again
  // later from a device of the peer (any member may).
  for (int k = 0; k < std::max(1, duration_s / kSecondsPerTimer); ++k) {
    int64_t t = uni(total_ms / 20, total_ms * 8 / 10);
    int dev = static_cast<int>(uni(0, total_devices - 1));
    int user = dev / devices;
    const auto& mine = p.peers[static_cast<size_t>(user)];
    int peer = mine[static_cast<size_t>(uni(0, static_cast<int64_t>(mine.size()) - 1))];
    p.steps.push_back({{"t", t}, {"op", "timer"}, {"dev", dev}, {"peer", peer}, {"seconds", uni(kMinTimerS, kMaxTimerS)}});
    if (chance(0.5)) {
      int off_dev = peer * devices + static_cast<int>(uni(0, devices - 1));
      p.steps.push_back({{"t", std::min(total_ms, t + uni(kMinTimerOnMs, kMaxTimerOnMs))},
                         {"op", "timer"},
                         {"dev", off_dev},
                         {"peer", user},
                         {"seconds", 0}});
    }
  }
  // Blocks end before the final catch-up so that nothing stays pending for
  // ever (a blocked send fails, which the checker treats as not acked).
  for (auto [owner, target] : blocks) p.steps.push_back({{"t", total_ms}, {"op", "unblock"}, {"user", owner}, {"target", target}});
  // The schedule plays the steps in list order: by time (stable: the steps
  // above were already in order).
  std::stable_sort(p.steps.begin(), p.steps.end(),
                   [](const json& a, const json& b) { return a.at("t").get<int64_t>() < b.at("t").get<int64_t>(); });
  return p;
}

// ---- Small helpers ----

class Log {
 public:
  explicit Log(const std::string& path) : out_(path, std::ios::app) {}
  void Line(const std::string& s) {
    std::lock_guard lock(mu_);
    out_ << Timestamp() << " " << s << "\n";
    out_.flush();
  }

 private:
  std::mutex mu_;
  std::ofstream out_;
};

// A FIFO of steps run one at a time on a thread of its own, so that a slow
// step delays only the steps after it in the same queue, never the schedule.
// Thread-safety: Post and Drain may be called from any thread; the queue is
// guarded by mu_. The destructor runs what is queued, then joins.
class Worker {
 public:
  Worker() : thread_([this] { Loop(); }) {}
  ~Worker() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  void Post(std::function<void()> fn) {
    {
      std::lock_guard lock(mu_);
      queue_.push_back(std::move(fn));
    }
    cv_.notify_all();
  }
  // Waits until everything posted so far has run.
  void Drain() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [this] { return queue_.empty() && !busy_; });
  }

 private:
  void Loop() {
    std::unique_lock lock(mu_);
    while (true) {
      cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stop_, and nothing left
      auto fn = std::move(queue_.front());
      queue_.pop_front();
      busy_ = true;
      lock.unlock();
      fn();
      lock.lock();
      busy_ = false;
      cv_.notify_all();
    }
  }

  std::mutex mu_;  // guards queue_, busy_, stop_
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  bool busy_ = false;
  bool stop_ = false;
  std::thread thread_;  // last: starts after the members it uses
};

// ---- parleyd supervision ----

// One parleyd node: started, killed and restarted (on the same port) by a
// supervisor thread. `name` is "" for a single node (files parleyd.log,
// port, data/) or the node's id in a cluster (parleyd-<name>.log, ...);
// `extra_args` are added to every start (the cluster flags).
class Server {
 public:
  Server(std::string parleyd, std::string dir, std::string name, std::vector<std::string> extra_args,
         std::string admin_token, std::string store_spec, std::vector<int64_t> crash_points, Log& log)
      : parleyd_(std::move(parleyd)), dir_(std::move(dir)), name_(std::move(name)),
        suffix_(name_.empty() ? "" : "-" + name_), extra_args_(std::move(extra_args)),
        admin_token_(std::move(admin_token)), store_spec_(std::move(store_spec)),
        crash_points_(std::move(crash_points)), log_(log) {}
  ~Server() { Stop(); }

  // Starts the first incarnation and the supervisor. Returns false (error
  // in *why) if parleyd does not come up.
  bool Start(std::string* why) {
    if (!Spawn(why)) return false;
    supervisor_ = std::thread([this] { Supervise(); });
    return true;
  }

  uint16_t port() const { return port_; }
  int deaths() const { return deaths_; }
  int crashes() const { return crashes_; }

  // kill -9 once it is up (a kill lands on a running server, never on one
  // still starting); the supervisor restarts it.
  void Kill9(const std::string& why) {
    std::string ignored;
    WaitUp(&ignored, /*any_incarnation=*/true);
    std::lock_guard lock(mu_);
    if (pid_ > 0) {
      log_.Line("kill -9 parleyd" + suffix_ + " pid=" + std::to_string(pid_) + " (" + why + ")");
      kill(pid_, SIGKILL);
    }
  }

  // From now on restarts carry no crash point; if the running incarnation
  // has one armed, it is killed and restarted clean. Waits until it is up.
  bool Calm(std::string* why) {
    bool armed;
    {
      std::lock_guard lock(mu_);
      calm_ = true;
      armed = current_crash_ > 0;
    }
    if (armed) Kill9("final phase: the incarnation's crash point is disarmed");
    return WaitUp(why);
  }

  bool failed() {
    std::lock_guard lock(mu_);
    return failed_;
  }

  // Waits until the running incarnation has been up for `ms` (false if none
  // comes up in time). Kill steps use it so that a backlog of kills (a
  // loaded machine) cannot kill every restart as soon as it is up.
  bool WaitServing(int ms) {
    auto deadline = SteadyClock::now() + std::chrono::milliseconds(kServerStartTimeoutMs + ms);
    while (SteadyClock::now() < deadline) {
      {
        std::lock_guard lock(mu_);
        if (failed_) return false;
        if (pid_ > 0 && up_ && SteadyClock::now() - up_at_ >= std::chrono::milliseconds(ms)) return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }

  bool WaitUp(std::string* why, bool any_incarnation = false) {
    auto deadline = SteadyClock::now() + std::chrono::milliseconds(kServerStartTimeoutMs);
    while (SteadyClock::now() < deadline) {
      {
        std::lock_guard lock(mu_);
        if (failed_) break;
        if (pid_ > 0 && up_ && (any_incarnation || !calm_ || current_crash_ == 0)) return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    *why = "parleyd" + suffix_ + " is not up (see parleyd" + suffix_ + ".log)";
    return false;
  }

  // SIGTERM and wait for the exit; stops supervising.
  void Stop() {
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
      if (pid_ > 0) kill(pid_, SIGTERM);
    }
    if (supervisor_.joinable()) supervisor_.join();
  }

 private:
  bool Spawn(std::string* why) {
    std::string port_file = dir_ + "/port" + suffix_;
    fs::remove(port_file);
    int64_t crash = 0;
    {
      std::lock_guard lock(mu_);
      if (!calm_ && incarnation_ < crash_points_.size()) crash = crash_points_[incarnation_];
      ++incarnation_;
    }
    std::vector<std::string> args = {parleyd_, "--listen", "127.0.0.1:" + std::to_string(port_),
                                     "--data-dir", dir_ + "/data" + suffix_, "--port-file", port_file,
                                     "--insecure-fast-password-hashing", "--relaxed-rate-limits",
                                     "--admin-token", admin_token_, "--io-threads", "2", "--log-level", "warn",
                                     "--web-root", "none", "--expiry-interval-ms", std::to_string(kExpiryIntervalMs)};
    if (!store_spec_.empty()) {
      args.push_back("--store");
      args.push_back(store_spec_);
    }
    args.insert(args.end(), extra_args_.begin(), extra_args_.end());
    if (crash > 0) {
      args.push_back("--fault");
      args.push_back("crash_after_append@" + std::to_string(crash));
    }
    std::string log_path = dir_ + "/parleyd" + suffix_ + ".log";
    SpawnOptions options;
    options.stdout_path = options.stderr_path = log_path;
    pid_t pid = parley::Spawn(std::move(args), options).pid;
    if (pid < 0) {
      *why = "fork failed";
      return false;
    }
    {
      std::lock_guard lock(mu_);
      pid_ = pid;
      up_ = false;
      current_crash_ = crash;
      if (stopping_) kill(pid, SIGTERM);
    }
    log_.Line("parleyd" + suffix_ + " started pid=" + std::to_string(pid) + " incarnation=" + std::to_string(incarnation_) +
              (crash > 0 ? " crash_after_append@" + std::to_string(crash) : ""));
    auto deadline = SteadyClock::now() + std::chrono::milliseconds(kServerStartTimeoutMs);
    while (SteadyClock::now() < deadline) {
      std::ifstream in(port_file);
      int p = 0;
      if (in >> p && p > 0) {
        std::lock_guard lock(mu_);
        port_ = static_cast<uint16_t>(p);
        up_ = true;
        up_at_ = SteadyClock::now();
        return true;
      }
      int status;
      if (waitpid(pid, &status, WNOHANG) == pid) {
        std::lock_guard lock(mu_);
        pid_ = -1;
        *why = "parleyd" + suffix_ + " exited during start-up (see " + log_path + ")";
        return false;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    // Never leave it running: a second parleyd would start on the same port
    // and data beside it.
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    {
      std::lock_guard lock(mu_);
      pid_ = -1;
    }
    *why = "parleyd" + suffix_ + " did not listen within " + std::to_string(kServerStartTimeoutMs) + " ms (killed)";
    return false;
  }

  void Supervise() {
    while (true) {
      pid_t pid;
      {
        std::lock_guard lock(mu_);
        pid = pid_;
      }
      if (pid <= 0) return;
      int status = 0;
      if (waitpid(pid, &status, 0) != pid) return;
      bool stopping;
      int64_t crash;
      {
        std::lock_guard lock(mu_);
        pid_ = -1;
        up_ = false;
        stopping = stopping_;
        crash = current_crash_;
      }
      if (stopping) return;
      bool killed = WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
      ++deaths_;
      if (killed && crash > 0) ++crashes_;
      log_.Line("parleyd" + suffix_ + " died: " + std::string(WIFSIGNALED(status) ? "signal " + std::to_string(WTERMSIG(status))
                                                                   : "exit " + std::to_string(WEXITSTATUS(status))) +
                (crash > 0 ? " (crash point crash_after_append@" + std::to_string(crash) + " armed)" : ""));
      if (!killed) {
        log_.Line("parleyd" + suffix_ + " died of something other than an injected kill: a bug (see parleyd" + suffix_ +
                  ".log)");
        unexpected_ = true;
      }
      std::string why;
      bool started = false;
      for (int attempt = 0; attempt < kMaxStartAttempts && !started; ++attempt) {
        started = Spawn(&why);
        if (!started) log_.Line("restart failed: " + why);
      }
      if (!started) {
        std::lock_guard lock(mu_);
        failed_ = true;
        return;
      }
    }
  }

 public:
  std::atomic<bool> unexpected_{false};

 private:
  const std::string parleyd_, dir_, name_, suffix_;
  const std::vector<std::string> extra_args_;
  const std::string admin_token_, store_spec_;
  const std::vector<int64_t> crash_points_;
  Log& log_;
  std::thread supervisor_;
  std::atomic<int> deaths_{0}, crashes_{0};
  std::mutex mu_;  // guards everything below
  pid_t pid_ = -1;
  uint16_t port_ = 0;
  bool up_ = false;
  bool calm_ = false;
  bool stopping_ = false;
  bool failed_ = false;
  size_t incarnation_ = 0;
  int64_t current_crash_ = 0;
  SteadyClock::time_point up_at_;  // when the running incarnation came up
};

// ---- Devices ----

struct Device {
  DeviceSpec spec;
  std::string name;      // "<user>.<index>"
  std::string username;
  std::string token;
  std::unique_ptr<Client> client;
  std::atomic<bool> online{false};  // its worker, then the main thread once the workers drained
  std::atomic<int> drop_after_events{0};
  bool selective = false;  // syncs only its most recent conversation in full (selective sync)
  std::mutex log_mu;  // guards events and mine
  std::ofstream events;
  std::set<std::string> mine;  // client ids this device composed

  void Composed(const std::string& client_id) {
    std::lock_guard lock(log_mu);
    mine.insert(client_id);
  }
  // True the first time this device's own message is reported sent.
  bool FirstAck(const std::string& client_id) {
    std::lock_guard lock(log_mu);
    return mine.erase(client_id) != 0;
  }

  void Event(const json& j) {
    std::lock_guard lock(log_mu);
    events << json({{"t", SystemNowMs()}, {"e", j}}).dump() << "\n";
    events.flush();
  }
};

// A user's raw connection device (raw double sends), with the history the
// driver writes for it (the SDK's record schema: send, ack, send_failed).
// Used by the user's raw worker only.
struct RawDevice {
  std::string token;
  int64_t user_id = 0, device_id = 0;
  std::ofstream history;
  int64_t n = 0;

  void Record(const std::string& ev, json fields) {
    fields["n"] = ++n;
    fields["ts"] = SystemNowMs();
    fields["user"] = user_id;
    fields["device"] = device_id;
    fields["ev"] = ev;
    history << fields.dump() << "\n";
    history.flush();
  }
};

struct Counters {
  std::atomic<int64_t> composed{0}, acked{0}, failed{0}, drops{0}, drops_mid_sync{0}, blocks{0};
  std::atomic<int64_t> raw_doubles{0}, raw_acks{0}, raw_duplicate_acks{0}, raw_refused{0};
  std::atomic<int64_t> late_steps{0}, max_lag_ms{0};
  std::atomic<int64_t> edits{0}, deletes{0}, hides{0}, drafts{0}, changes_refused{0};
  std::atomic<int64_t> timers_set{0}, timers_off{0}, timers_refused{0};
};

struct Options {
  std::string parleyd, checker, out = "chaos-runs", replay, store, work, redis, parleyd_args;
  uint64_t seed = 0;
  bool seed_given = false;
  int duration_s = 60, users = 8, devices = 2, nodes = 1;
  bool keep = false;
};

std::string SelfDir(const char* argv0) {
  std::error_code ec;
  auto p = fs::read_symlink("/proc/self/exe", ec);
  if (ec) p = fs::absolute(argv0);
  return p.parent_path().string();
}

class Run {
 public:
  Run(Options o, Plan plan, std::string dir) : o_(std::move(o)), plan_(std::move(plan)), dir_(std::move(dir)),
                                               log_(dir_ + "/driver.log") {}

  // Returns the process exit code.
  int Go() {
    std::cout << "parley-chaos: seed=" << plan_.seed << " users=" << plan_.users << " devices/user=" << plan_.devices
              << " duration=" << plan_.duration_s << "s steps=" << plan_.steps.size()
              << " run dir=" << dir_ << std::endl;
    {
      std::ofstream(dir_ + "/plan.json") << plan_.ToJson().dump(1) << "\n";
    }
    admin_token_ = "chaos-" + std::to_string(plan_.seed);
    // A cluster: every node on the one PostgreSQL store and Redis, with
    // stable node ids (a restarted node keeps its id) and short route
    // refreshes so that a killed node's devices are forgotten quickly.
    for (int k = 0; k < plan_.nodes; ++k) {
      std::string name = plan_.nodes > 1 ? "node" + std::to_string(k) : "";
      std::vector<std::string> extra;
      if (plan_.nodes > 1)
        extra = {"--redis", o_.redis, "--node-id", "chaos-" + name, "--redis-refresh-ms", "500",
                 "--redis-route-ttl-ms", "3000"};
      extra.insert(extra.end(), plan_.parleyd_args.begin(), plan_.parleyd_args.end());
      servers_.push_back(std::make_unique<Server>(o_.parleyd, dir_, name, std::move(extra), admin_token_, o_.store,
                                                  plan_.crash_after_append, log_));
    }
    std::string why;
    for (auto& sv : servers_)
      if (!sv->Start(&why)) return Fail2(why);
    if (!Provision(&why)) return Fail2(why);
    if (!OpenDevices(&why)) return Fail2(why);
    for (size_t i = 0; i < devices_.size(); ++i) device_workers_.push_back(std::make_unique<Worker>());
    for (int u = 0; u < plan_.users; ++u) raw_workers_.push_back(std::make_unique<Worker>());
    for (int u = 0; u < plan_.users; ++u) social_workers_.push_back(std::make_unique<Worker>());
    kill_worker_ = std::make_unique<Worker>();
    t0_ = SteadyClock::now();
    const auto& t0 = t0_;
    // The schedule: each step goes to its worker at its planned time; this
    // thread never waits for a step.
    for (size_t i = 0; i < plan_.steps.size(); ++i) {
      std::this_thread::sleep_until(t0 + std::chrono::milliseconds(plan_.steps[i].at("t").get<int64_t>()));
      if (Failed()) break;
      WorkerFor(plan_.steps[i]).Post([this, i] { Play(i); });
    }
    log_.Line("steps scheduled; waiting for the workers to finish theirs");
    for (auto& w : device_workers_) w->Drain();
    for (auto& w : raw_workers_) w->Drain();
    for (auto& w : social_workers_) w->Drain();
    kill_worker_->Drain();
    log_.Line("steps done (" + std::to_string(counters_.late_steps.load()) + " started over " +
              std::to_string(kLateStepMs) + " ms late, the latest " + std::to_string(counters_.max_lag_ms.load()) +
              " ms); final catch-up");
    int settle_rc = Settle(&why);
    if (settle_rc == 0 && HasTimers()) {
      // Everything stored so far expires by now + kMaxTimerS: wait for it
      // (and the server's expiry step), then catch up with the deletes.
      log_.Line("waiting " + std::to_string(kMaxTimerS * 1000 + kExpiryWaitMs) +
                " ms for the last messages sent under a timer to expire");
      std::this_thread::sleep_for(std::chrono::milliseconds(kMaxTimerS * 1000 + kExpiryWaitMs));
      settle_rc = Settle(&why);
    }
    if (settle_rc != 0) log_.Line("settle: " + why);
    // A cleanly stopped device ends its history with a last sync
    // (caught_up): the checker checks it as a device that finished syncing.
    for (auto& d : devices_) {
      if (d->client) d->client->Stop();
    }
    // The checker runs even when the catch-up did not converge: the run
    // fails either way, but its counts say whether anything acknowledged
    // was lost, duplicated or reordered, or whether devices were merely
    // behind (docs/checker.md, "Chaos runs").
    int check_rc = Check();
    int rc = settle_rc != 0 ? 1 : check_rc;
    bool unexpected = false;
    int deaths = 0, crashes = 0;
    for (auto& sv : servers_) {
      sv->Stop();
      unexpected = unexpected || sv->unexpected_;
      deaths += sv->deaths();
      crashes += sv->crashes();
    }
    if (unexpected) {
      std::cout << "parley-chaos: parleyd died of something other than an injected kill (see parleyd.log)\n";
      rc = rc == 0 ? 1 : rc;
    }
    double secs = std::chrono::duration<double>(SteadyClock::now() - t0).count();
    std::cout << "parley-chaos: composed=" << counters_.composed << " acked(status sent)=" << counters_.acked
              << " failed=" << counters_.failed << " parleyd deaths=" << deaths
              << " (crash points=" << crashes << ", nodes=" << servers_.size() << ") drops=" << counters_.drops
              << " drops mid-sync=" << counters_.drops_mid_sync << " blocks=" << counters_.blocks
              << " raw doubles=" << counters_.raw_doubles << " (acks=" << counters_.raw_acks
              << " duplicate acks=" << counters_.raw_duplicate_acks << " refused=" << counters_.raw_refused
              << ") edits=" << counters_.edits << " deletes=" << counters_.deletes << " deletes for me="
              << counters_.hides << " (refused or unanswered=" << counters_.changes_refused
              << ") drafts=" << counters_.drafts << " timers set=" << counters_.timers_set
              << " off=" << counters_.timers_off << " (refused or unanswered=" << counters_.timers_refused
              << ") late steps=" << counters_.late_steps << " (max lag "
              << counters_.max_lag_ms << " ms)"
              << " wall=" << static_cast<int>(secs) << "s" << std::endl;
    std::cout << "parley-chaos: " << (rc == 0 ? "PASS" : "FAIL") << " seed=" << plan_.seed << std::endl;
    return rc;
  }

 private:
  int Fail2(const std::string& why) {
    std::cerr << "parley-chaos: " << why << std::endl;
    log_.Line("error: " + why);
    return 2;
  }

  std::string UserName(int u) const { return "chaos" + std::to_string(u); }

  bool HasTimers() const {
    for (const auto& s : plan_.steps)
      if (s.at("op") == "timer") return true;
    return false;
  }

  bool Failed() {
    for (auto& sv : servers_)
      if (sv->failed()) return true;
    return false;
  }
  // The port of node `i` (taken modulo the nodes: Port(user + attempt)
  // spreads a user's connections and rotates retries over the nodes).
  uint16_t Port(int64_t i) const { return servers_[static_cast<size_t>(i) % servers_.size()]->port(); }
  // A device's home node: a user's devices sit on different nodes.
  int64_t HomeNode(const DeviceSpec& spec) const { return spec.user + spec.index; }

  bool Provision(std::string* why) {
    json users = json::array();
    for (int u = 0; u < plan_.users; ++u) users.push_back({{"username", UserName(u)}, {"password", "chaos password"}});
    auto r = netutil::HttpPost(netutil::HttpEndpoint::Loopback(Port(0)), "/admin/v1/users/bulk",
                               json({{"devices", true}, {"device_name", "chaos.0"}, {"users", users}}).dump(),
                               "Bearer " + admin_token_);
    if (r.status != 200) {
      *why = "admin bulk provisioning failed: " + (r.error.empty() ? std::to_string(r.status) + " " + r.body : r.error);
      return false;
    }
    json j = json::parse(r.body, nullptr, false);
    if (j.is_discarded() || !j.contains("users")) {
      *why = "admin bulk provisioning: unexpected answer " + r.body;
      return false;
    }
    for (const auto& u : j["users"]) tokens0_[u["username"].get<std::string>()] = u["token"].get<std::string>();
    log_.Line("provisioned " + std::to_string(plan_.users) + " users");
    return true;
  }

  bool OpenDevices(std::string* why) {
    fs::create_directories(dir_ + "/histories");
    fs::create_directories(dir_ + "/events");
    fs::create_directories(dir_ + "/clients");
    for (const auto& spec : plan_.device_specs) {
      auto d = std::make_unique<Device>();
      d->spec = spec;
      d->username = UserName(spec.user);
      d->name = d->username + "." + std::to_string(spec.index);
      if (spec.index == 0) {
        d->token = tokens0_[d->username];
      } else {
        LoginResult l;
        for (int attempt = 0; attempt < 20 && !l.ok; ++attempt) {
          l = Client::Login("127.0.0.1", Port(HomeNode(spec)), d->username, "chaos password", d->name, "chaos", 10000);
          if (!l.ok) std::this_thread::sleep_for(std::chrono::milliseconds(200));
        }
        if (!l.ok) {
          *why = "login of " + d->name + " failed: " + l.code + " " + l.message;
          return false;
        }
        d->token = l.token;
      }
      d->events.open(dir_ + "/events/" + d->name + ".jsonl", std::ios::app);
      ClientOptions co;
      co.host = "127.0.0.1";
      co.port = Port(HomeNode(spec));
      // In a cluster: the home node first, then the others (the SDK fails
      // over to the next one when its node is killed).
      if (servers_.size() > 1)
        for (size_t k = 0; k < servers_.size(); ++k)
          co.endpoints.push_back("127.0.0.1:" + std::to_string(Port(HomeNode(spec) + static_cast<int64_t>(k))));
      co.db_path = dir_ + "/clients/" + d->name + ".db";
      co.token = d->token;
      co.backoff.initial_ms = 50;
      co.backoff.max_ms = 1000;
      co.request_timeout_ms = kRequestTimeoutMs;
      co.connect_timeout_ms = 2000;
      co.sync_page_limit = kSyncPageLimit;
      co.random_seed = plan_.seed * 1000 + static_cast<uint64_t>(devices_.size());
      int64_t skew = spec.skew_ms;
      co.now_ms = [skew] { return SystemNowMs() + skew; };
      co.history_path = dir_ + "/histories/" + d->name + ".jsonl";
      // Selective sync (issue 12 item 3): the last device of every other user
      // (when users have several) syncs only its most recent conversation in
      // full; the checker leaves what came as summaries out of its lost and
      // convergence checks. Derived from the plan, so a replay does the same.
      if (plan_.devices > 1 && spec.index == plan_.devices - 1 && spec.user % 2 == 1) {
        co.sync_recent_conversations = kSelectiveRecent;
        d->selective = true;
      }
      Device* raw = d.get();
      co.on_status = [this, raw](const StatusUpdate& s) {
        if (s.status == MessageStatus::kSent && raw->FirstAck(s.client_id)) ++counters_.acked;
        if (s.status == MessageStatus::kFailed) ++counters_.failed;
        raw->Event({{"status", MessageStatusName(s.status)}, {"client_id", s.client_id}, {"peer", s.peer},
                    {"conversation_id", s.conversation_id}, {"seq", s.seq}, {"error", s.error_code}});
      };
      int slow = spec.slow_ms;
      co.on_event = [this, raw, slow](const json& e) {
        raw->Event({{"event", e}});
        if (slow > 0) std::this_thread::sleep_for(std::chrono::milliseconds(slow));
        if (raw->drop_after_events.load() > 0 && --raw->drop_after_events == 0) {
          ++counters_.drops_mid_sync;
          raw->Event({{"fault", "drop_mid_sync"}});
          raw->client->DropConnectionForTest();
        }
      };
      co.on_state = [raw](ClientState s, const std::string& detail) {
        raw->Event({{"state", ClientStateName(s)}, {"detail", detail}});
      };
      std::string err;
      d->client = Client::Open(std::move(co), &err);
      if (!d->client) {
        *why = "cannot open the client cache of " + d->name + ": " + err;
        return false;
      }
      d->client->Start();
      d->online = true;
      devices_.push_back(std::move(d));
    }
    // One raw-connection device per user for the raw double sends; the
    // driver writes its history (send, ack, send_failed records).
    for (int u = 0; u < plan_.users; ++u) {
      LoginResult l;
      for (int attempt = 0; attempt < 20 && !l.ok; ++attempt) {
        l = Client::Login("127.0.0.1", Port(u), UserName(u), "chaos password", UserName(u) + ".raw", "chaos",
                          10000);
        if (!l.ok) std::this_thread::sleep_for(std::chrono::milliseconds(200));
      }
      if (!l.ok) {
        *why = "login of " + UserName(u) + ".raw failed: " + l.code + " " + l.message;
        return false;
      }
      auto rd = std::make_unique<RawDevice>();
      rd->token = l.token;
      rd->user_id = l.user_id;
      rd->device_id = l.device_id;
      rd->history.open(dir_ + "/histories/" + UserName(u) + ".raw.jsonl", std::ios::app);
      raw_.push_back(std::move(rd));
    }
    return true;
  }



  // Step i's k-th message: the same text in a replay.
  std::string Body(size_t i, int k) {
    return "chaos " + std::to_string(plan_.seed) + " #" + std::to_string(i) + "." + std::to_string(k);
  }

  Worker& WorkerFor(const json& s) {
    const std::string op = s.at("op");
    if (op == "kill") return *kill_worker_;
    if (op == "block" || op == "unblock") return *social_workers_.at(s.at("user").get<size_t>());
    if (op == "raw_double") return *raw_workers_.at(s.at("user").get<size_t>());
    return *device_workers_.at(s.at("dev").get<size_t>());
  }

  void Compose(Device& d, int peer, const std::string& body) {
    auto r = d.client->Compose(UserName(peer), body);
    if (r.ok) {
      ++counters_.composed;
      d.Composed(r.client_id);
    }
    d.Event({{"compose", r.client_id}, {"peer", UserName(peer)}, {"ok", r.ok}, {"code", r.code}});
  }

  // Plays step i on its worker.
  void Play(size_t i) {
    const json& s = plan_.steps[i];
    const std::string op = s.at("op");
    int64_t lag = std::chrono::duration_cast<std::chrono::milliseconds>(
                      SteadyClock::now() - (t0_ + std::chrono::milliseconds(s.at("t").get<int64_t>())))
                      .count();
    for (int64_t m = counters_.max_lag_ms.load(); lag > m && !counters_.max_lag_ms.compare_exchange_weak(m, lag);) {
    }
    if (lag >= kLateStepMs) ++counters_.late_steps;
    if (Failed()) return;
    log_.Line("step " + s.dump() + (lag >= kLateStepMs ? " (" + std::to_string(lag) + " ms late)" : ""));
    if (op == "kill") {
      int64_t want = s.at("after_acks");
      auto deadline = SteadyClock::now() + std::chrono::milliseconds(kKillWaitMs);
      while (counters_.acked < want && SteadyClock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(5));
      // Progress first: the incarnation has served a while and acked
      // something (bounded waits), so that late kills fired back to back
      // cannot starve every restart.
      int64_t before = counters_.acked;
      Server& victim = *servers_.at(s.value("node", size_t{0}));
      victim.WaitServing(kMinServeMs);
      auto progress = SteadyClock::now() + std::chrono::milliseconds(kKillProgressWaitMs);
      while (counters_.acked == before && SteadyClock::now() < progress && !Failed())
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      victim.Kill9("step: after " + std::to_string(counters_.acked.load()) + " acks (plan: " + std::to_string(want) + ")");
      return;
    }
    if (op == "block" || op == "unblock") return BlockOp(op, s.at("user"), s.at("target"));
    if (op == "raw_double") return RawDouble(i, s);
    Device& d = *devices_.at(s.at("dev").get<size_t>());
    if (op == "send") {
      for (int k = 0; k < s.at("n").get<int>(); ++k) Compose(d, s.at("peer"), Body(i, k));
    } else if (op == "send_drop") {
      Compose(d, s.at("peer"), Body(i, 0));
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      ++counters_.drops;
      d.Event({{"fault", "drop_mid_send"}});
      d.client->DropConnectionForTest();
    } else if (op == "drop") {
      ++counters_.drops;
      d.Event({{"fault", "drop"}});
      d.client->DropConnectionForTest();
    } else if (op == "offline") {
      d.Event({{"driver", "offline"}});
      d.client->Stop();
      d.online = false;
    } else if (op == "online" || op == "online_drop_mid_sync") {
      if (op == "online_drop_mid_sync") d.drop_after_events = s.at("after_events").get<int>();
      d.Event({{"driver", op}});
      d.client->Start();
      d.online = true;
    } else if (op == "read") {
      // A selective device opens the chat first, as an app does: it joins
      // the selection and its messages are paged in (needs the connection).
      if (d.selective && d.online) {
        Reply err;
        d.client->OpenConversation(UserName(s.at("peer")), kChangeCandidates, &err);
        d.Event({{"driver", "open_conversation"}, {"peer", UserName(s.at("peer"))}, {"code", err.code}});
      }
      if (auto c = d.client->ConversationWith(UserName(s.at("peer"))); c && c->last_seq > 0)
        d.client->MarkRead(c->conversation_id, c->last_seq);
    } else if (op == "edit" || op == "delete") {
      ChangeMessage(i, s, d);
    } else if (op == "timer") {
      SetTimer(s, d);
    } else if (op == "draft") {
      const std::string text =
          s.at("clear").get<bool>() ? "" : "chaos " + std::to_string(plan_.seed) + " draft #" + std::to_string(i);
      auto r = d.client->SetDraft(UserName(s.at("peer")), text);
      ++counters_.drafts;
      d.Event({{"draft", text}, {"peer", UserName(s.at("peer"))}, {"ok", r.ok}, {"code", r.code}});
    }
  }

  // An edit or a delete (for everyone or for me) of an earlier message with
  // the step's peer, through the SDK's request path as clients make it: the
  // message is the step's `pick` among the newest cached ones that qualify
  // (own and not deleted, for an edit or a delete for everyone). A device
  // taken offline by the plan skips it (a client cannot edit offline); one
  // reconnecting, or whose answer was lost to a parleyd death, retries the
  // same request (a retry is a duplicate: docs/protocol.md, "Edits and
  // deletes") for kChangeTimeoutMs. Refused (the edit window, a block) or
  // given up: logged and left; the checker judges what the server decided.
  void ChangeMessage(size_t i, const json& s, Device& d) {
    const std::string op = s.at("op");
    const bool for_me = op == "delete" && s.at("for") == "me";
    if (!d.online) {
      d.Event({{"change", op}, {"skipped", "the device is offline"}});
      return;
    }
    std::vector<CachedMessage> candidates;
    for (auto& m : d.client->Messages(UserName(s.at("peer")), 0, kChangeCandidates)) {
      if (m.seq > 0 && (for_me || (m.outgoing && !m.deleted))) candidates.push_back(std::move(m));
    }
    if (candidates.empty()) {
      d.Event({{"change", op}, {"skipped", "no message to change"}});
      return;
    }
    const CachedMessage& m = candidates[static_cast<size_t>(s.at("pick").get<int64_t>()) % candidates.size()];
    const bool edit = op == "edit";
    ++(edit ? counters_.edits : for_me ? counters_.hides : counters_.deletes);
    json fields = {{"conversation_id", m.conversation_id}, {"seq", m.seq}};
    if (edit) {
      fields["client_id"] = s.at("client_id");
      fields["body"] = "chaos " + std::to_string(plan_.seed) + " edit #" + std::to_string(i);
    } else {
      fields["for"] = for_me ? "me" : "everyone";
    }
    Reply r = RequestRetried(d, edit ? "edit_message" : "delete_message", fields);
    if (!r.ok) ++counters_.changes_refused;
    d.Event({{"change", for_me ? "delete_for_me" : op}, {"conversation_id", m.conversation_id}, {"seq", m.seq},
             {"ok", r.ok}, {"code", r.code}, {"result", r.result}});
  }

  // A request of a device through the SDK, retried (the same request: a
  // retry of an edit, delete or timer is a duplicate) while the device
  // reconnects or its answer was lost to a parleyd death, for
  // kChangeTimeoutMs. Returns the last answer.
  Reply RequestRetried(Device& d, const std::string& type, const json& fields) {
    Reply r;
    const auto deadline = SteadyClock::now() + std::chrono::milliseconds(kChangeTimeoutMs);
    while (!Failed()) {
      r = d.client->Request(type, fields);
      const bool again = r.code == kErrOffline || (!r.ok && (r.frame.is_null() || r.frame.value("retryable", false)));
      if (!again || SteadyClock::now() >= deadline) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(kRetryInitialMs));  // rate_limited: no busy loop
      d.client->WaitOnline(kRequestTimeoutMs);
    }
    return r;
  }

  // Sets (or, with 0 seconds, turns off) the disappearing timer of the
  // device's conversation with the step's peer, as a client does
  // (set_disappearing). A device the plan took offline, or one that has no
  // conversation with the peer yet, skips it.
  void SetTimer(const json& s, Device& d) {
    const int64_t seconds = s.at("seconds");
    if (!d.online) {
      d.Event({{"timer", seconds}, {"skipped", "the device is offline"}});
      return;
    }
    auto c = d.client->ConversationWith(UserName(s.at("peer")));
    if (!c) {
      d.Event({{"timer", seconds}, {"skipped", "no conversation with the peer yet"}});
      return;
    }
    ++(seconds > 0 ? counters_.timers_set : counters_.timers_off);
    Reply r = RequestRetried(d, "set_disappearing", {{"conversation_id", c->conversation_id}, {"seconds", seconds}});
    if (!r.ok) ++counters_.timers_refused;
    d.Event({{"timer", seconds}, {"conversation_id", c->conversation_id}, {"ok", r.ok}, {"code", r.code},
             {"result", r.result}});
  }

  // One raw double send: the same client id twice at once on one raw
  // connection, then, after a reconnect and the step's pause, once more on
  // another. A refusal (the sender blocks the peer) ends it.
  void RawDouble(size_t i, const json& s) {
    int user = s.at("user"), peer = s.at("peer");
    std::string client_id = s.at("client_id");
    RawDevice& rd = *raw_.at(static_cast<size_t>(user));
    ++counters_.raw_doubles;
    if (!RawSend(rd, peer, client_id, Body(i, 0), 2)) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(s.at("delay_ms").get<int64_t>()));
    RawSend(rd, peer, client_id, Body(i, 0), 1);
  }

  // Sends `copies` copies of one send request at once on a new connection,
  // retried on another one while parleyd is down or an answer is lost.
  // Returns false when the server refused the message for good (or gave up).
  bool RawSend(RawDevice& rd, int peer, const std::string& client_id, const std::string& body, int copies) {
    const std::string to = UserName(peer);
    auto deadline = SteadyClock::now() + std::chrono::milliseconds(kRawSendTimeoutMs);
    int pause_ms = kRetryInitialMs;
    auto pause = [&pause_ms] {
      std::this_thread::sleep_for(std::chrono::milliseconds(pause_ms));
      pause_ms = std::min(pause_ms * 2, kRetryMaxMs);
    };
    for (int64_t attempt = 0; SteadyClock::now() < deadline && !Failed(); ++attempt) {
      ConnectOptions co;
      co.port = Port(rd.user_id + attempt);
      co.timeout_ms = 2000;
      std::string err;
      auto c = Connection::Open(co, &err);
      Reply a;
      if (c) a = c->Call("auth", {{"token", rd.token}}, kRequestTimeoutMs);
      if (!a.ok) {
        pause();
        continue;
      }
      std::vector<int64_t> ids;
      for (int k = 0; k < copies; ++k) {
        rd.Record("send", {{"client_id", client_id}, {"peer", to}});
        ids.push_back(c->Start("send", {{"to", to}, {"client_id", client_id}, {"body", body}}));
      }
      bool again = false;
      std::string refused;
      for (int64_t id : ids) {
        Reply r = c->Await(id, kRequestTimeoutMs);
        if (r.ok) {
          ++counters_.raw_acks;
          bool dup = r.result.value("duplicate", false);
          if (dup) ++counters_.raw_duplicate_acks;
          rd.Record("ack", {{"client_id", client_id}, {"peer", to},
                            {"conversation_id", r.result.value("conversation_id", int64_t{0})},
                            {"seq", r.result.value("seq", int64_t{0})}, {"duplicate", dup}});
        } else if (r.frame.is_null() || r.frame.value("retryable", false)) {
          again = true;  // no answer (parleyd died, timeout) or "try again": resend
        } else {
          refused = r.code;
          rd.Record("send_failed", {{"client_id", client_id}, {"peer", to}, {"code", r.code}});
        }
      }
      if (!refused.empty()) {
        ++counters_.raw_refused;
        log_.Line("raw send " + client_id + " refused: " + refused);
        return false;
      }
      if (!again) return true;
      pause();
    }
    log_.Line("raw send " + client_id + ": gave up (no answer for " + std::to_string(kRawSendTimeoutMs / 1000) +
              " s)");
    return false;
  }

  // Blocks go through a connection of their own with the user's first
  // device token, retried while parleyd is down.
  void BlockOp(const std::string& op, int user, int target) {
    auto deadline = SteadyClock::now() + std::chrono::seconds(20);
    int pause_ms = kRetryInitialMs;
    for (int64_t attempt = 0; SteadyClock::now() < deadline && !Failed(); ++attempt) {
      ConnectOptions co;
      co.port = Port(user + attempt);
      co.timeout_ms = 2000;
      std::string err;
      auto c = Connection::Open(co, &err);
      if (c) {
        Reply a = c->Call("auth", {{"token", tokens0_[UserName(user)]}}, 3000);
        if (a.ok) {
          Reply r = c->Call(op, {{"username", UserName(target)}}, 3000);
          if (r.ok || r.code == "already_blocked" || r.code == "not_blocked") {
            ++counters_.blocks;
            log_.Line(op + " " + UserName(user) + " -> " + UserName(target) + ": " + (r.ok ? "ok" : r.code));
            return;
          }
          log_.Line(op + " failed: " + r.code + " " + r.message + " (retrying)");
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(pause_ms));
      pause_ms = std::min(pause_ms * 2, kRetryMaxMs);
    }
    log_.Line(op + " " + UserName(user) + " -> " + UserName(target) + ": gave up (no answer for 20 s)");
  }

  // Every device online, every outbox drained, every device at its user's
  // head, and nothing moving for a while.
  int Settle(std::string* why) {
    for (auto& sv : servers_)
      if (!sv->Calm(why)) return 1;
    for (auto& d : devices_) {
      d->drop_after_events = 0;
      if (!d->online) {
        d->client->Start();
        d->online = true;
      }
    }
    // A big backlog (a loaded machine, many messages queued in outboxes)
    // may take longer than kSettleTimeoutMs to drain: the deadline moves on
    // while devices make progress (fewer pending, more applied), up to
    // kSettleMaxMs in all.
    const auto start = SteadyClock::now();
    auto deadline = start + std::chrono::milliseconds(kSettleTimeoutMs);
    int64_t last_progress = -1;
    std::vector<int64_t> last;
    int stable_rounds = 0;
    while (SteadyClock::now() < deadline) {
      std::vector<int64_t> now;
      bool all = true;
      int64_t progress = 0;
      for (auto& d : devices_)
        progress += d->client->applied() -
                    static_cast<int64_t>(d->client->PendingCount() + d->client->PendingDraftCount());
      if (progress != last_progress) {
        last_progress = progress;
        deadline = std::min(start + std::chrono::milliseconds(kSettleMaxMs),
                            SteadyClock::now() + std::chrono::milliseconds(kSettleTimeoutMs));
      }
      for (auto& d : devices_) {
        if (!d->client->WaitOnline(1000)) {
          all = false;
          now.push_back(-1);
          continue;
        }
        if (d->client->PendingCount() > 0 || d->client->PendingDraftCount() > 0) all = false;
        Reply p = d->client->Request("ping");
        int64_t head = p.ok ? p.result.value("head", int64_t{-1}) : -1;
        if (head < 0 || d->client->applied() < head) all = false;
        now.push_back(head);
        now.push_back(d->client->applied());
      }
      if (all && now == last) {
        if (++stable_rounds >= 3) {
          log_.Line("settled");
          return 0;
        }
      } else {
        stable_rounds = 0;
      }
      last = now;
      std::this_thread::sleep_for(std::chrono::milliseconds(700));
    }
    *why = "devices did not converge (" + std::to_string(kSettleTimeoutMs / 1000) + " s without progress, or " +
           std::to_string(kSettleMaxMs / 1000) + " s in all)";
    std::cout << "parley-chaos: " << *why << std::endl;
    for (auto& d : devices_) {
      std::cout << "  " << d->name << " state=" << ClientStateName(d->client->state()) << " applied=" << d->client->applied()
                << " pending=" << d->client->PendingCount() << " last_error=" << d->client->last_error() << std::endl;
    }
    return 1;
  }

  // Runs parley-check on the histories against the live server; saves its
  // output. Returns its exit code.
  int Check() {
    std::string out_path = dir_ + "/check.txt";
    std::vector<std::string> args = {o_.checker, "--histories", dir_ + "/histories", "--server",
                                     "http://127.0.0.1:" + std::to_string(Port(0)), "--admin-token",
                                     admin_token_, "--save-state", dir_ + "/state.json"};
    std::string cmd;
    for (auto& a : args) cmd += "'" + a + "' ";
    log_.Line("check: " + cmd);
    int rc = std::system((cmd + "> '" + out_path + "' 2>&1").c_str());
    int code = WIFEXITED(rc) ? WEXITSTATUS(rc) : 2;
    std::ifstream in(out_path);
    std::stringstream ss;
    ss << in.rdbuf();
    std::cout << ss.str();
    if (code != 0 && code != 1) std::cout << "parley-chaos: parley-check could not check (exit " << code << ")\n";
    return code;
  }

  Options o_;
  Plan plan_;
  std::string dir_;
  Log log_;
  std::string admin_token_;
  std::vector<std::unique_ptr<Server>> servers_;  // one per node
  std::map<std::string, std::string> tokens0_;
  Counters counters_;  // before devices_: clients (destroyed first) count into it
  SteadyClock::time_point t0_;  // when the schedule started (set before any worker runs a step)
  std::vector<std::unique_ptr<Device>> devices_;
  std::vector<std::unique_ptr<RawDevice>> raw_;  // per user
  // After devices_ and raw_: destroyed (drained and joined) first.
  std::vector<std::unique_ptr<Worker>> device_workers_;  // per device
  std::vector<std::unique_ptr<Worker>> raw_workers_;     // per user
  std::vector<std::unique_ptr<Worker>> social_workers_;  // per blocking user
  std::unique_ptr<Worker> kill_worker_;
};

int Main(int argc, char** argv) {
  Options o;
  CLI::App app{"parley-chaos: a randomised workload with faults against parleyd, checked by parley-check"};
  std::string self = SelfDir(argv[0]);
  o.parleyd = self + "/parleyd";
  o.checker = self + "/parley-check";
  app.add_option("--parleyd", o.parleyd, "parleyd binary (a test build: it needs --fault)")->capture_default_str();
  app.add_option("--checker", o.checker, "parley-check binary")->capture_default_str();
  app.add_option("--seed", o.seed, "Seed of the workload and fault schedule (default: random, printed)");
  app.add_option("--duration-s", o.duration_s, "Length of the workload in seconds (the final catch-up comes after)")
      ->check(CLI::Range(1, 24 * 3600))
      ->capture_default_str();
  app.add_option("--users", o.users, "Users")->check(CLI::Range(2, 1000))->capture_default_str();
  app.add_option("--devices", o.devices, "Devices per user")->check(CLI::Range(1, 8))->capture_default_str();
  app.add_option("--store", o.store, "parleyd --store (default: SQLite in the run directory)");
  app.add_option("--nodes", o.nodes, "parleyd nodes: more than one is the cluster shape (needs --redis and a "
                                     "PostgreSQL --store); each user's devices sit on different nodes")
      ->check(CLI::Range(1, 8))
      ->capture_default_str();
  app.add_option("--redis", o.redis, "Redis HOST:PORT for a cluster (--nodes > 1)");
  app.add_option("--parleyd-args", o.parleyd_args,
                 "Extra parleyd flags for every start, separated by spaces (e.g. \"--stream-retention-s 2\"); "
                 "saved in the plan");
  app.add_option("--out", o.out, "Where failing runs are saved (one directory each)")->capture_default_str();
  app.add_option("--replay", o.replay, "Replay a saved run: its plan.json (same workload, same fault schedule)");
  app.add_flag("--keep", o.keep, "Save the run directory even when it passes");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  o.seed_given = app.count("--seed") > 0;
  for (const auto* bin : {&o.parleyd, &o.checker}) {
    if (access(bin->c_str(), X_OK) != 0) {
      std::cerr << "parley-chaos: " << *bin << " is not an executable (see --parleyd / --checker)" << std::endl;
      return 2;
    }
  }
  Plan plan;
  if (!o.replay.empty()) {
    std::ifstream in(o.replay + "/plan.json");
    json j = json::parse(in, nullptr, false);
    if (!in || j.is_discarded()) {
      std::cerr << "parley-chaos: cannot read " << o.replay << "/plan.json" << std::endl;
      return 2;
    }
    std::string err;
    auto p = Plan::FromJson(j, &err);
    if (!p) {
      std::cerr << "parley-chaos: " << o.replay << "/plan.json: " << err << std::endl;
      return 2;
    }
    plan = std::move(*p);
    std::cout << "parley-chaos: replaying " << o.replay << std::endl;
  } else {
    if (!o.seed_given) o.seed = std::random_device{}() | (uint64_t{std::random_device{}()} << 32);
    plan = MakePlan(o.seed, o.users, o.devices, o.duration_s, o.nodes);
    std::istringstream words(o.parleyd_args);
    for (std::string w; words >> w;) plan.parleyd_args.push_back(w);
  }
  if (plan.nodes > 1 && (o.redis.empty() || o.store.rfind("postgres", 0) != 0)) {
    std::cerr << "parley-chaos: " << plan.nodes << " nodes need --redis HOST:PORT and a PostgreSQL --store"
              << std::endl;
    return 2;
  }
  char tmpl[] = "/tmp/parley-chaos-XXXXXX";
  if (!mkdtemp(tmpl)) {
    std::cerr << "parley-chaos: cannot create a temporary directory" << std::endl;
    return 2;
  }
  std::string dir = tmpl;
  int rc;
  {
    Run run(o, plan, dir);
    rc = run.Go();
  }
  if (rc != 0 || o.keep) {
    std::string saved = o.out + "/seed-" + std::to_string(plan.seed) + "-" + Timestamp();
    std::error_code ec;
    fs::create_directories(saved, ec);
    fs::remove_all(dir + "/data", ec);  // the server's files stay behind (large); the logs are kept
    fs::remove_all(dir + "/clients", ec);
    fs::copy(dir, saved, fs::copy_options::recursive, ec);
    if (ec) {
      std::cout << "parley-chaos: could not save the run to " << saved << ": " << ec.message() << " (left in " << dir
                << ")" << std::endl;
      return rc;
    }
    std::cout << "parley-chaos: saved to " << fs::absolute(saved).string() << "\n  replay: parley-chaos --replay "
              << fs::absolute(saved).string() << "\n  recheck: parley-check --histories "
              << fs::absolute(saved).string() << "/histories --state " << fs::absolute(saved).string()
              << "/state.json" << std::endl;
  }
  std::error_code ec;
  fs::remove_all(dir, ec);
  return rc;
}

}  // namespace
}  // namespace parley::chaos

int main(int argc, char** argv) { return parley::chaos::Main(argc, argv); }
