// parley-reconnect-bench: a restart of parleyd with thousands of connected
// SDK devices (docs/benchmarks.md, "Reconnect spread"; issue 5's restart
// test). Unlike the other tools it starts parleyd itself, because it has to
// restart it at a chosen moment:
//
//   1. starts parleyd (--parleyd PATH) on a free port with a fresh data
//      directory and --shutdown-retry-after-ms R;
//   2. bulk-provisions --devices users with one device token each through the
//      admin API (POST /admin/v1/users/bulk), plus one sender;
//   3. runs the devices as parley::Client instances (cache in memory) in
//      --processes worker processes (this binary again, `--worker`), as many
//      as the open-file limit requires, and waits until all are online;
//   4. SIGTERMs parleyd (every connection gets close 4001 with
//      {"retry_after_ms":R}), starts it again on the same port and data
//      directory, and, before the window opens, sends one message to each of
//      --messaged devices (spread over the fleet): events those devices miss
//      while away (checked: no device came back before parleyd was, and
//      every messaged device was still away when its message was sent);
//   5. each worker records, per device, when it saw the close (kWaiting) and
//      when it next started connecting (kConnecting), waits until every
//      device is online again, asks the server for its stream head (`ping`)
//      and waits until the device has applied it, and counts the messages
//      from the sender in its cache;
//   6. checks: every device's reconnect delay (attempt - close) is at least
//      R and at most 2R + --slack-ms (the SDK waits R plus up to 100 %
//      jitter); in 100 ms buckets of that delay no bucket holds more than
//      --max-bucket-percent of the devices, and at least --min-window-percent
//      of the window's buckets are used; in 100 ms buckets of absolute time
//      (what the server sees) no bucket holds more than --max-bucket-percent
//      either; every device resumed (applied == head); exactly the messaged
//      devices hold exactly one message from the sender.
// Prints a table and, with --json FILE, the figures as JSON. Exit codes:
// 0 ok; 1 a check failed; 2 set-up failed (parleyd did not start, a
// provisioning request failed, a device never got online).
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "common/child_process.h"
#include "spawn.h"
#include "net/http_client.h"
#include "parley/client.h"
#include "parley/connection.h"

namespace parley::bench {
void SetupFailed(const std::string& why) {
  std::cerr << "parley-reconnect-bench: " << why << "\n";
  std::exit(2);
}
}  // namespace parley::bench

namespace {

using parley::bench::SetupFailed;
using parley::bench::SpawnOrFail;

using nlohmann::json;
using parley::Child;
using parley::Spawn;
using parley::SpawnOptions;

constexpr int64_t kBucketMs = 100;
constexpr int kStartTimeoutMs = 30000;        // parleyd listening
constexpr int kStopTimeoutMs = 30000;         // parleyd exiting on SIGTERM
constexpr std::chrono::milliseconds kHttpTimeout{60000};  // one bulk request
constexpr size_t kBulkBatch = 5000;           // users per bulk request (<= parleyd's default 10,000)
constexpr int kWorkerLineTimeoutMs = 120000;  // "online" / the report from a worker
constexpr int kFdsPerProcessReserve = 256;    // files a worker needs besides one socket per device
constexpr const char* kSender = "fleet_sender";

int64_t SteadyMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}


std::string DeviceName(size_t i) { return "fleet" + std::to_string(i); }

// CPU time (user + system) this process used so far, ms.
int64_t CpuMs() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  auto ms = [](const timeval& tv) { return int64_t{tv.tv_sec} * 1000 + tv.tv_usec / 1000; };
  return ms(ru.ru_utime) + ms(ru.ru_stime);
}

// Raises the soft open-file limit to the hard one; returns the new soft limit.
rlim_t RaiseFileLimit() {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return 1024;
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    getrlimit(RLIMIT_NOFILE, &rl);
  }
  return rl.rlim_cur;
}

// ---------------------------------------------------------------------------
// Worker: many devices in one process.

struct Track {
  std::mutex mu;
  bool was_online = false;
  int64_t closed_ms = 0;   // first kWaiting after being online
  int64_t attempt_ms = 0;  // first kConnecting after that
  int64_t online_ms = 0;   // online again after that
};

// Reads COUNT tokens from line FIRST of TOKENS; prints "online" once every
// device is online, then waits for a line on stdin ("check") and prints one
// JSON report line (with the CPU the process used to get every device
// online, and in all). Exits with _exit (no per-client teardown).
int RunWorker(uint16_t port, const std::string& tokens_file, size_t first, size_t count, int catch_up_timeout_ms) {
  std::vector<std::string> tokens;
  {
    std::ifstream in(tokens_file);
    std::string line;
    for (size_t i = 0; std::getline(in, line); ++i) {
      if (i >= first && i < first + count) tokens.push_back(line);
    }
  }
  if (tokens.size() != count) {
    std::cerr << "worker: " << tokens_file << " has too few tokens\n";
    _exit(2);
  }
  std::vector<std::unique_ptr<Track>> tracks;
  std::vector<std::unique_ptr<parley::Client>> clients;
  for (size_t i = 0; i < tokens.size(); ++i) {
    tracks.push_back(std::make_unique<Track>());
    Track* t = tracks.back().get();
    parley::ClientOptions o;
    o.port = port;
    o.db_path = ":memory:";
    o.token = tokens[i];
    o.request_timeout_ms = 30000;
    o.connect_timeout_ms = 10000;
    o.on_state = [t](parley::ClientState s, const std::string&) {
      std::lock_guard lock(t->mu);
      if (s == parley::ClientState::kOnline) {
        if (t->closed_ms && !t->online_ms) t->online_ms = SteadyMs();
        t->was_online = true;
      } else if (s == parley::ClientState::kWaiting && t->was_online && !t->closed_ms) {
        t->closed_ms = SteadyMs();
      } else if (s == parley::ClientState::kConnecting && t->closed_ms && !t->attempt_ms) {
        t->attempt_ms = SteadyMs();
      }
    };
    std::string err;
    auto c = parley::Client::Open(std::move(o), &err);
    if (!c) {
      std::cerr << "worker: open: " << err << "\n";
      _exit(2);
    }
    c->Start();
    clients.push_back(std::move(c));
  }
  for (auto& c : clients) {
    if (!c->WaitOnline(kWorkerLineTimeoutMs)) {
      std::cerr << "worker: a device did not get online: " << c->last_error() << "\n";
      _exit(2);
    }
  }
  int64_t cpu_online = CpuMs();
  std::cout << "online" << std::endl;

  std::string cmd;
  std::getline(std::cin, cmd);
  json errors = json::array();
  int64_t deadline = SteadyMs() + catch_up_timeout_ms;
  for (auto& t : tracks) {
    while (SteadyMs() < deadline) {
      {
        std::lock_guard lock(t->mu);
        if (t->online_ms) break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  json resumed = json::array(), from_sender = json::array();
  for (size_t i = 0; i < clients.size(); ++i) {
    auto& c = clients[i];
    auto left = [&] { return static_cast<int>(std::max<int64_t>(1, deadline - SteadyMs())); };
    parley::Reply r;
    while (SteadyMs() < deadline) {
      c->WaitOnline(left());
      r = c->Request("ping");
      if (r.ok) break;
    }
    bool ok = false;
    if (!r.ok) {
      errors.push_back(DeviceName(first + i) + ": ping failed: " + r.code + " " + c->last_error());
    } else {
      int64_t head = r.result.value("head", int64_t{0});
      ok = c->WaitApplied(head, left());
      if (!ok) {
        errors.push_back(DeviceName(first + i) + ": applied " + std::to_string(c->applied()) + " < head " +
                         std::to_string(head));
      }
    }
    resumed.push_back(ok);
    int got = 0;
    for (const auto& m : c->Messages(kSender, 0, 100)) {
      if (!m.outgoing && m.body == "while you were away, " + DeviceName(first + i)) ++got;
    }
    from_sender.push_back(got);
  }
  json closed = json::array(), attempts = json::array(), online = json::array();
  for (auto& t : tracks) {
    std::lock_guard lock(t->mu);
    closed.push_back(t->closed_ms);
    attempts.push_back(t->attempt_ms);
    online.push_back(t->online_ms);
  }
  std::cout << json{{"cpu_online_ms", cpu_online}, {"cpu_ms", CpuMs()}, {"closed_ms", closed}, {"attempt_ms", attempts}, {"online_ms", online}, {"resumed", resumed},
                    {"from_sender", from_sender}, {"errors", errors}}
                   .dump()
            << std::endl;
  _exit(0);
}

// ---------------------------------------------------------------------------
// Child processes.

struct Server {
  std::string parleyd, dir, admin_token;
  int64_t retry_after_ms = 0;
  uint16_t port = 0;
  pid_t pid = -1;

  void Start() {
    std::string port_file = dir + "/port";
    std::filesystem::remove(port_file);
    std::vector<std::string> args = {parleyd,
                                     "--listen", "127.0.0.1:" + std::to_string(port),
                                     "--port-file", port_file,
                                     "--data-dir", dir + "/data",
                                     "--admin-token", admin_token,
                                     "--shutdown-retry-after-ms", std::to_string(retry_after_ms),
                                     "--insecure-fast-password-hashing",
                                     "--relaxed-rate-limits",
                                     "--log-level", "warn"};
    pid = SpawnOrFail(args, false, dir + "/parleyd.log").pid;
    std::string why;
    port = parley::WaitForPortFile(pid, port_file, kStartTimeoutMs, &why);
    if (port == 0 && why == "exited") SetupFailed("parleyd exited during start-up (see " + dir + "/parleyd.log)");
    if (port == 0) SetupFailed("parleyd did not start listening within 30 s");
  }

  // SIGTERM; returns the exit status (-1: killed after the timeout).
  parley::ExitStatus Terminate() { return parley::Terminate(&pid, kStopTimeoutMs); }
};

struct Options {
  std::string parleyd;
  std::string work_dir;
  size_t devices = 5000;
  size_t processes = 0;  // 0: as the open-file limit requires, at least 2
  int64_t retry_after_ms = 6000;
  size_t messaged = 100;
  int64_t slack_ms = 500;
  double max_bucket_percent = 5;
  double min_window_percent = 80;
  int catch_up_timeout_ms = 60000;
  std::string json_out;
};

}  // namespace

int main(int argc, char** argv) {
  // Worker mode (internal): parley-reconnect-bench --worker PORT TOKENS FIRST COUNT CATCH_UP_MS
  if (argc == 7 && std::string(argv[1]) == "--worker") {
    RaiseFileLimit();
    return RunWorker(static_cast<uint16_t>(std::stoi(argv[2])), argv[3], std::stoul(argv[4]), std::stoul(argv[5]),
                     std::stoi(argv[6]));
  }
  Options o;
  CLI::App app{"parley-reconnect-bench: restart parleyd under thousands of SDK devices and check the reconnect spread"};
  app.add_option("--parleyd", o.parleyd, "path of the parleyd binary to start")->required();
  app.add_option("--work-dir", o.work_dir, "directory for parleyd's data, logs and the tokens (default: a new temporary one)");
  app.add_option("--devices", o.devices, "SDK devices (one user each)")->check(CLI::Range(1, 100000));
  app.add_option("--processes", o.processes, "worker processes (0: as the open-file limit requires, at least 2)");
  app.add_option("--retry-after-ms", o.retry_after_ms, "parleyd's --shutdown-retry-after-ms")->check(CLI::Range(100, 600000));
  app.add_option("--messaged", o.messaged, "devices that get a message while they are away");
  app.add_option("--slack-ms", o.slack_ms, "scheduling slack allowed past the window's end");
  app.add_option("--max-bucket-percent", o.max_bucket_percent, "most reconnects in one 100 ms bucket, % of devices");
  app.add_option("--min-window-percent", o.min_window_percent, "least share of the window's 100 ms buckets used, %");
  app.add_option("--catch-up-timeout-ms", o.catch_up_timeout_ms, "how long the devices get to come back and catch up");
  app.add_option("--json", o.json_out, "write the figures to this file as JSON");
  CLI11_PARSE(app, argc, argv);
  if (o.messaged > o.devices) SetupFailed("--messaged is larger than --devices");

  rlim_t files = RaiseFileLimit();
  if (files < o.devices + kFdsPerProcessReserve) {
    SetupFailed("the open-file limit (" + std::to_string(files) + ") is below what parleyd needs for " +
                std::to_string(o.devices) + " connections");
  }
  size_t per_process_max = files - kFdsPerProcessReserve;
  size_t processes = o.processes ? o.processes : std::max<size_t>(2, (o.devices + per_process_max - 1) / per_process_max);
  if ((o.devices + processes - 1) / processes > per_process_max) SetupFailed("too few --processes for the open-file limit");

  bool own_dir = o.work_dir.empty();
  if (own_dir) {
    std::string tmpl = (std::filesystem::temp_directory_path() / "parley-reconnect-bench.XXXXXX").string();
    if (!mkdtemp(tmpl.data())) SetupFailed("mkdtemp failed");
    o.work_dir = tmpl;
  }
  std::string self = std::filesystem::read_symlink("/proc/self/exe").string();

  Server s;
  s.parleyd = o.parleyd;
  s.dir = o.work_dir;
  s.admin_token = "reconnect-bench-" + std::to_string(getpid()) + "-" + std::to_string(SteadyMs());
  s.retry_after_ms = o.retry_after_ms;
  int64_t t_start = SteadyMs();
  s.Start();

  // Provisioning: users without passwords, one device token each; the
  // sender last.
  std::string tokens_file = o.work_dir + "/tokens";
  std::string sender_token;
  {
    std::ofstream out(tokens_file);
    for (size_t b = 0; b <= o.devices; b += kBulkBatch) {
      json users = json::array();
      for (size_t i = b; i < std::min(o.devices, b + kBulkBatch); ++i) users.push_back({{"username", DeviceName(i)}});
      if (b + kBulkBatch > o.devices) users.push_back({{"username", kSender}});
      if (users.empty()) break;
      parley::netutil::HttpRequest req;
      req.method = "POST";
      req.target = "/admin/v1/users/bulk";
      req.body = json{{"devices", true}, {"device_name", "fleet"}, {"users", users}}.dump();
      req.authorization = "Bearer " + s.admin_token;
      req.timeout = kHttpTimeout;
      auto r = parley::netutil::HttpExchange(parley::netutil::HttpEndpoint::Loopback(s.port), req);
      if (!r.error.empty() || r.status != 200) SetupFailed("bulk request: " + r.error + " " + r.body.substr(0, 300));
      json created = json::parse(r.body, nullptr, false);
      if (created.is_discarded() || created["users"].size() != users.size()) SetupFailed("bulk request: unexpected answer");
      for (auto& u : created["users"]) {
        if (u.value("username", "") == kSender) {
          sender_token = u.value("token", "");
        } else {
          out << u.value("token", "") << "\n";
        }
      }
    }
  }
  int64_t t_provisioned = SteadyMs();

  std::vector<Child> workers;
  size_t per = (o.devices + processes - 1) / processes;
  for (size_t first = 0; first < o.devices; first += per) {
    size_t count = std::min(per, o.devices - first);
    workers.push_back(SpawnOrFail({self, "--worker", std::to_string(s.port), tokens_file, std::to_string(first),
                             std::to_string(count), std::to_string(o.catch_up_timeout_ms)},
                            true, ""));
  }
  for (auto& w : workers) {
    if (w.ReadLine(kWorkerLineTimeoutMs) != "online") SetupFailed("a worker's devices did not all get online");
  }
  int64_t t_online = SteadyMs();

  // The restart.
  int64_t t_term = SteadyMs();
  parley::ExitStatus term_status = s.Terminate();
  if (!term_status.ok()) SetupFailed("parleyd did not exit cleanly on SIGTERM: " + term_status.Describe());
  int64_t t_stopped = SteadyMs();
  s.Start();
  int64_t t_restarted = SteadyMs();

  // Events the messaged devices miss while away.
  {
    parley::ConnectOptions co;
    co.port = s.port;
    std::string err;
    auto c = parley::Connection::Open(co, &err);
    if (!c) SetupFailed("sender: " + err);
    auto a = c->Call("auth", {{"token", sender_token}});
    if (!a.ok) SetupFailed("sender auth: " + a.code + " " + a.message);
    std::vector<int64_t> ids;
    for (size_t k = 0; k < o.messaged; ++k) {
      std::string to = DeviceName(k * (o.devices / o.messaged));
      ids.push_back(c->Start("send", {{"to", to}, {"client_id", "away-" + std::to_string(k)},
                                     {"body", "while you were away, " + to}}));
    }
    for (auto id : ids) {
      auto r = c->Await(id, 30000);
      if (!r.ok) SetupFailed("sender: send failed: " + r.code + " " + r.message);
    }
  }
  int64_t t_sent = SteadyMs();

  std::vector<int64_t> closed, attempts, online;
  std::vector<bool> resumed;
  std::vector<int> from_sender;
  std::vector<std::string> errors;
  int64_t cpu_online = 0, cpu_all = 0;
  for (auto& w : workers) {
    if (write(w.in, "check\n", 6) != 6) SetupFailed("worker pipe");
  }
  for (auto& w : workers) {
    std::string line = w.ReadLine(o.catch_up_timeout_ms + kWorkerLineTimeoutMs);
    json r = json::parse(line, nullptr, false);
    if (!r.is_object()) SetupFailed("a worker gave no report: " + line.substr(0, 200));
    cpu_online += r.value("cpu_online_ms", int64_t{0});
    cpu_all += r.value("cpu_ms", int64_t{0});
    for (auto& v : r["closed_ms"]) closed.push_back(v);
    for (auto& v : r["attempt_ms"]) attempts.push_back(v);
    for (auto& v : r["online_ms"]) online.push_back(v);
    for (auto& v : r["resumed"]) resumed.push_back(v.get<bool>());
    for (auto& v : r["from_sender"]) from_sender.push_back(v);
    for (auto& e : r["errors"]) errors.push_back(e);
    int st;
    waitpid(w.pid, &st, 0);
  }
  int64_t t_done = SteadyMs();
  s.Terminate();
  rusage server_ru{};
  getrusage(RUSAGE_CHILDREN, &server_ru);  // parleyd (both runs) and the workers
  auto tv_ms = [](const timeval& tv) { return int64_t{tv.tv_sec} * 1000 + tv.tv_usec / 1000; };
  int64_t cpu_server = tv_ms(server_ru.ru_utime) + tv_ms(server_ru.ru_stime) - cpu_all;

  // Checks.
  std::vector<std::string> failures;
  auto fail = [&](const std::string& f) {
    if (failures.size() < 20) failures.push_back(f);
  };
  if (closed.size() != o.devices) fail("reports cover " + std::to_string(closed.size()) + " devices");
  const int64_t r_ms = o.retry_after_ms;
  std::map<int64_t, size_t> delay_buckets, abs_buckets;
  int64_t t0 = 0, min_delay = INT64_MAX, max_delay = 0, last_online = 0;
  for (size_t i = 0; i < closed.size(); ++i) {
    if (closed[i] > 0 && (t0 == 0 || closed[i] < t0)) t0 = closed[i];
  }
  size_t resumed_n = 0, messaged_ok = 0;
  for (size_t i = 0; i < closed.size(); ++i) {
    if (!closed[i] || !attempts[i] || !online[i]) {
      fail(DeviceName(i) + ": never went through close -> reconnect -> online");
      continue;
    }
    int64_t d = attempts[i] - closed[i];
    min_delay = std::min(min_delay, d);
    max_delay = std::max(max_delay, d);
    last_online = std::max(last_online, online[i] - t0);
    if (d < r_ms) fail(DeviceName(i) + ": reconnected " + std::to_string(d) + " ms after the close, before the window");
    if (d > 2 * r_ms + o.slack_ms) fail(DeviceName(i) + ": reconnected " + std::to_string(d) + " ms after the close, past the window");
    ++delay_buckets[d / kBucketMs];
    ++abs_buckets[(attempts[i] - t0) / kBucketMs];
    if (resumed[i]) ++resumed_n;
    bool messaged = o.messaged && i % (o.devices / o.messaged) == 0 && i / (o.devices / o.messaged) < o.messaged;
    if (from_sender[i] == (messaged ? 1 : 0)) {
      if (messaged) ++messaged_ok;
    } else {
      fail(DeviceName(i) + ": holds " + std::to_string(from_sender[i]) + " messages from the sender, expected " +
           (messaged ? "1" : "0"));
    }
  }
  for (auto& e : errors) fail(e);
  // The measurement is valid only if no device came back before parleyd
  // was (it would have met a refused connection), and if every messaged
  // device was still away when its message was sent.
  size_t early = 0, messaged_live = 0;
  for (size_t i = 0; i < closed.size(); ++i) {
    if (attempts[i] && attempts[i] < t_restarted) ++early;
    bool messaged = o.messaged && i % (o.devices / o.messaged) == 0 && i / (o.devices / o.messaged) < o.messaged;
    if (messaged && attempts[i] && attempts[i] < t_sent) ++messaged_live;
  }
  if (early || messaged_live) {
    fail(std::to_string(early) + " devices reconnected before parleyd was back, " + std::to_string(messaged_live) +
         " messaged devices before their message was sent (parleyd back after " + std::to_string(t_restarted - t0) +
         " ms, messages sent after " + std::to_string(t_sent - t0) + " ms): raise --retry-after-ms");
  }
  if (resumed_n != o.devices) fail(std::to_string(o.devices - resumed_n) + " devices did not catch up to their head");
  size_t max_delay_bucket = 0, max_abs_bucket = 0, window_used = 0;
  const int64_t window_buckets = r_ms / kBucketMs;
  for (auto& [b, n] : delay_buckets) {
    max_delay_bucket = std::max(max_delay_bucket, n);
    if (b >= r_ms / kBucketMs && b < 2 * r_ms / kBucketMs) ++window_used;
  }
  for (auto& [b, n] : abs_buckets) max_abs_bucket = std::max(max_abs_bucket, n);
  auto limit = static_cast<size_t>(static_cast<double>(o.devices) * o.max_bucket_percent / 100.0);
  if (max_delay_bucket > limit) {
    fail("a 100 ms bucket of reconnect delays holds " + std::to_string(max_delay_bucket) + " devices (limit " +
         std::to_string(limit) + ")");
  }
  if (max_abs_bucket > limit) {
    fail("a 100 ms bucket of reconnect times holds " + std::to_string(max_abs_bucket) + " devices (limit " +
         std::to_string(limit) + ")");
  }
  double used_pct = 100.0 * static_cast<double>(window_used) / static_cast<double>(window_buckets);
  if (used_pct < o.min_window_percent) {
    fail("the reconnects use " + std::to_string(window_used) + " of the window's " + std::to_string(window_buckets) +
         " buckets");
  }

  auto secs = [](int64_t a, int64_t b) { return static_cast<double>(b - a) / 1000.0; };
  json figures = {{"devices", o.devices},
                  {"processes", workers.size()},
                  {"retry_after_ms", r_ms},
                  {"provision_s", secs(t_start, t_provisioned)},
                  {"online_s", secs(t_provisioned, t_online)},
                  {"shutdown_s", secs(t_term, t_stopped)},
                  {"restart_s", secs(t_stopped, t_restarted)},
                  {"send_away_s", secs(t_restarted, t_sent)},
                  {"catch_up_s", secs(t_sent, t_done)},
                  {"total_s", secs(t_start, t_done)},
                  {"device_start_cpu_ms", static_cast<double>(cpu_online) / static_cast<double>(o.devices)},
                  {"workers_cpu_s", static_cast<double>(cpu_all) / 1000.0},
                  {"parleyd_cpu_s", static_cast<double>(cpu_server) / 1000.0},
                  {"back_after_first_close_ms", t_sent - t0},
                  {"min_delay_ms", min_delay},
                  {"max_delay_ms", max_delay},
                  {"last_online_after_close_ms", last_online},
                  {"max_bucket_delay", max_delay_bucket},
                  {"max_bucket_time", max_abs_bucket},
                  {"bucket_limit", limit},
                  {"window_buckets_used", window_used},
                  {"window_buckets", window_buckets},
                  {"resumed", resumed_n},
                  {"messaged", o.messaged},
                  {"messaged_received", messaged_ok},
                  {"failures", failures}};
  std::printf("parley-reconnect-bench: %zu devices in %zu processes, retry_after_ms %lld\n", o.devices, workers.size(),
              static_cast<long long>(r_ms));
  std::printf("  provisioning %.1f s, all online %.1f s, SIGTERM to exit %.1f s, restart %.1f s, catch-up %.1f s, total %.1f s\n",
              secs(t_start, t_provisioned), secs(t_provisioned, t_online), secs(t_term, t_stopped),
              secs(t_stopped, t_restarted), secs(t_sent, t_done), secs(t_start, t_done));
  std::printf("  CPU: %.2f ms per device to get online (SDK side), workers %.1f s, parleyd %.1f s\n",
              static_cast<double>(cpu_online) / static_cast<double>(o.devices), static_cast<double>(cpu_all) / 1000.0,
              static_cast<double>(cpu_server) / 1000.0);
  std::printf("  parleyd back and the messages sent %lld ms after the first close\n", static_cast<long long>(t_sent - t0));
  std::printf("  reconnect delay after the close: %lld..%lld ms (window %lld..%lld)\n", static_cast<long long>(min_delay),
              static_cast<long long>(max_delay), static_cast<long long>(r_ms), static_cast<long long>(2 * r_ms));
  std::printf("  fullest 100 ms bucket: %zu by delay, %zu by time (limit %zu); window buckets used %zu / %lld (%.0f %%)\n",
              max_delay_bucket, max_abs_bucket, limit, window_used, static_cast<long long>(window_buckets), used_pct);
  std::printf("  resumed %zu / %zu; messaged while away %zu / %zu received\n", resumed_n, o.devices, messaged_ok, o.messaged);
  if (!o.json_out.empty()) {
    std::ofstream(o.json_out) << figures.dump(2) << "\n";
  }
  if (own_dir) std::filesystem::remove_all(o.work_dir);
  if (!failures.empty()) {
    for (auto& f : failures) std::fprintf(stderr, "FAIL: %s\n", f.c_str());
    return 1;
  }
  std::printf("  ok\n");
  return 0;
}
