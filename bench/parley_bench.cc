// parley-bench: the load generator (issue 9; docs/benchmarks.md, "Load
// generator"). One scenario per run; each run starts its own parleyd
// (--parleyd PATH, optionally pinned with `taskset -c --server-cpu`) on a
// free port with a fresh data directory, provisions users and device tokens
// through the admin API's bulk path (POST /admin/v1/users/bulk), drives the
// protocol from one thread per process with bench::Loop (ws_load.h), prints
// a table and, with --json FILE, writes the figures as JSON.
//
// Scenarios (subcommands):
//   idle        hold N authenticated connections with heartbeats on, spread
//               over worker processes (this binary, `--worker-idle`); report
//               parleyd's (RSS after - RSS before) / N.
//   throughput  P pairs, ~140-byte send frames, open-loop at each offered
//               rate of --rates; recipients send delivered and read receipts;
//               latency from the intended send time to arrival at the
//               recipient (no coordinated omission); the saturation rate.
//   receipt-rtt the same at one rate; the headline is send -> the delivered
//               receipt seen by the sender.
//   reconnects  token reconnects per second (connect, upgrade, auth, drop).
//   storm       N devices connected while a sender keeps sending to them;
//               every device connection is dropped at once on the client
//               side; they reconnect with the SDK's backoff for a network
//               error (parley/backoff.h) and sync; time until all caught up.
//   backfill    a sender writes H messages to a user that never connected;
//               then its device connects and syncs: messages/s streamed.
//   hot         the pairs at a total rate, without and then with one hot pair
//               at --hot-rate beside them; compares the pairs' p99.
//   history     a store filled to --history messages (issue 12): send
//               latency, history paging and sync measured the same way at a
//               small store and at every 10x up to the full one; the ratios.
//
// The cluster shape (issue 10; docs/benchmarks.md, "Cluster scale"):
// --nodes N --store postgresql://... --redis HOST:PORT starts N parleyd
// nodes on one PostgreSQL and one Redis, provisions through node 0 and puts
// device i on node i mod N (a pair's two devices on different nodes), for
// idle, throughput, receipt-rtt and hot; figures per node and in total.
// idle also reads the kernel's memory (/proc/net/sockstat, /proc/meminfo,
// /proc/slabinfo) and, with --redis-pid, redis-server's RSS.
//
// Every scenario checks that nothing was lost (every message offered arrived
// at its recipient; no request failed) and exits 1 otherwise; 2 on a set-up
// failure. Latency percentiles are by nearest rank over every sample whose
// intended send time falls in the measured window.
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "common/child_process.h"
#include "spawn.h"
#include "net/http_client.h"
#include "parley/backoff.h"
#include "ws_load.h"

namespace parley::bench {

void SetupFailed(const std::string& why) {
  std::cerr << "parley-bench: " << why << "\n";
  std::exit(2);
}

namespace {

using nlohmann::json;

constexpr int kStartTimeoutMs = 30000;       // parleyd listening
constexpr int kStopTimeoutMs = 30000;        // parleyd exiting on SIGTERM
constexpr int kHttpTimeoutMs = 120000;       // one bulk request
constexpr size_t kBulkBatch = 5000;          // users per bulk request (parleyd's default limit: 10,000)
constexpr size_t kFdReserve = 64;            // files a process needs besides its sockets
constexpr size_t kMaxFilesPerProcess = 20000;  // issue 9: a process may hold at most 20,000 files
constexpr size_t kPortReserve = 256;         // ephemeral ports left for other connections to the same node
constexpr int64_t kSetupTimeoutNs = 120'000'000'000;  // connect + auth + conversations
constexpr size_t kConnectWindow = 256;       // connects + auths in flight during set-up
constexpr int kSyncLimit = 1000;             // events per sync page (the protocol's maximum)
constexpr size_t kFrameBytes = 140;          // target size of a send frame
constexpr size_t kBackfillWindow = 1000;     // sends in flight while writing the history

constexpr int64_t kMs = 1'000'000;
constexpr int64_t kSec = 1'000'000'000;


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

// "VmRSS:   1234 kB" -> bytes; 0 if unreadable.
int64_t ReadStatusKb(pid_t pid, const std::string& key) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + ":", 0) == 0) {
      std::istringstream s(line.substr(key.size() + 1));
      int64_t kb = 0;
      s >> kb;
      return kb * 1024;
    }
  }
  return 0;
}

// utime + stime of a process, ms.
int64_t ProcessCpuMs(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto rp = s.rfind(')');
  if (rp == std::string::npos) return 0;
  std::istringstream f(s.substr(rp + 2));
  std::string tok;
  int64_t ut = 0, st = 0;
  for (int i = 3; i <= 15 && (f >> tok); ++i) {
    if (i == 14) ut = std::stoll(tok);
    if (i == 15) st = std::stoll(tok);
  }
  return (ut + st) * 1000 / sysconf(_SC_CLK_TCK);
}

// Time every thread of a process spent runnable but waiting for a CPU
// (/proc/PID/task/*/schedstat, second field), ms: how much other processes
// delayed parleyd on a shared machine, and its threads one another on the
// one core they share (a reader under SCHED_BATCH waits for the I/O thread
// by design).
int64_t RunQueueWaitMs(pid_t pid) {
  int64_t ns = 0;
  std::error_code ec;
  for (auto& t : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/task", ec)) {
    std::ifstream in(t.path() / "schedstat");
    int64_t run = 0, wait = 0;
    if (in >> run >> wait) ns += wait;
  }
  return ns / 1'000'000;
}

struct Pct {
  size_t n = 0;
  double p50 = 0, p90 = 0, p99 = 0, p999 = 0, max = 0;  // ms
};

Pct Percentiles(std::vector<int64_t> v) {
  Pct p;
  p.n = v.size();
  if (v.empty()) return p;
  std::sort(v.begin(), v.end());
  auto at = [&](double q) {
    auto rank = static_cast<size_t>(std::ceil(q * static_cast<double>(v.size())));
    return static_cast<double>(v[std::clamp<size_t>(rank, 1, v.size()) - 1]) / 1e6;
  };
  p.p50 = at(0.5);
  p.p90 = at(0.9);
  p.p99 = at(0.99);
  p.p999 = at(0.999);
  p.max = static_cast<double>(v.back()) / 1e6;
  return p;
}

json ToJson(const Pct& p) {
  return {{"n", p.n}, {"p50_ms", p.p50}, {"p90_ms", p.p90}, {"p99_ms", p.p99}, {"p999_ms", p.p999}, {"max_ms", p.max}};
}

// ---------------------------------------------------------------------------
// parleyd.

struct Common {
  std::string parleyd;
  int server_cpu = -1;  // pin parleyd with `taskset -c N`
  int load_cpu = -1;    // pin this process (and its workers) to this CPU
  std::string work_dir;
  std::string json_out;
  std::vector<std::string> parleyd_args;
  int heartbeat_interval_ms = 0;  // 0: parleyd's default
  int heartbeat_timeout_ms = 0;
  // The cluster shape (docs/benchmarks.md, "Cluster scale"): `nodes`
  // parleyd processes on one PostgreSQL (`store`) and one Redis (`redis`).
  int nodes = 1;
  std::string store;     // empty: SQLite in the data directory (one node only)
  std::string redis;     // empty: no cluster fabric (one node only)
  pid_t redis_pid = -1;  // if known: redis-server's RSS is measured too (idle)
};

struct Server {
  std::string dir, admin_token, log;
  std::string user_tag;  // prefixed to every username provisioned (unique per run on a shared store)
  int node = 0;          // index in the cluster (0 with one node)
  uint16_t port = 0;
  pid_t pid = -1;

  void Start(const Common& c) {
    std::filesystem::create_directories(dir);
    std::string port_file = dir + "/port";
    log = dir + "/parleyd.log";
    std::vector<std::string> args;
    if (c.server_cpu >= 0) args = {"taskset", "-c", std::to_string(c.server_cpu)};
    std::vector<std::string> rest = {c.parleyd, "--listen", "127.0.0.1:0", "--port-file", port_file,
                                     "--data-dir", dir + "/data", "--admin-token", admin_token,
                                     "--insecure-fast-password-hashing", "--relaxed-rate-limits",
                                     "--log-level", "warn", "--io-threads", "1"};
    args.insert(args.end(), rest.begin(), rest.end());
    if (c.heartbeat_interval_ms) {
      args.push_back("--heartbeat-interval-ms");
      args.push_back(std::to_string(c.heartbeat_interval_ms));
      args.push_back("--heartbeat-timeout-ms");
      args.push_back(std::to_string(c.heartbeat_timeout_ms));
    }
    if (!c.store.empty()) {
      args.push_back("--store");
      args.push_back(c.store);
    }
    if (!c.redis.empty()) {
      args.push_back("--redis");
      args.push_back(c.redis);
      args.push_back("--node-id");
      args.push_back("bench-" + std::to_string(getpid()) + "-" + std::to_string(node));
    }
    for (auto& a : c.parleyd_args) args.push_back(a);
    pid = SpawnOrFail(args, false, log).pid;
    std::string why;
    port = WaitForPortFile(pid, port_file, kStartTimeoutMs, &why);
    if (port == 0 && why == "exited") SetupFailed("parleyd (node " + std::to_string(node) + ") exited during start-up (see " + log + ")");
    if (port == 0) SetupFailed("parleyd (node " + std::to_string(node) + ") did not start listening within 30 s");
  }

  bool Alive() { return pid > 0 && waitpid(pid, nullptr, WNOHANG) == 0; }

  parley::ExitStatus Terminate() { return parley::Terminate(&pid, kStopTimeoutMs); }
};

struct User {
  std::string username, token;
};

// Creates users `<tag>prefix0..<tag>prefix(n-1)` with a device token each
// (in a cluster: through node 0; every node sees them in the shared store).
std::vector<User> Provision(const Server& s, const std::string& prefix, size_t n) {
  std::vector<User> out;
  for (size_t b = 0; b < n; b += kBulkBatch) {
    json users = json::array();
    for (size_t i = b; i < std::min(n, b + kBulkBatch); ++i) users.push_back({{"username", s.user_tag + prefix + std::to_string(i)}});
    netutil::HttpRequest req;
    req.method = "POST";
    req.target = "/admin/v1/users/bulk";
    req.body = json{{"devices", true}, {"device_name", "bench"}, {"users", users}}.dump();
    req.authorization = "Bearer " + s.admin_token;
    req.timeout = std::chrono::milliseconds(kHttpTimeoutMs);
    auto r = netutil::HttpExchange(netutil::HttpEndpoint::Loopback(s.port), req);
    if (!r.error.empty() || r.status != 200) SetupFailed("bulk request: " + r.error + " " + r.body.substr(0, 300));
    json created = json::parse(r.body, nullptr, false);
    if (created.is_discarded() || created["users"].size() != users.size()) SetupFailed("bulk request: unexpected answer");
    for (auto& u : created["users"]) out.push_back({u.value("username", ""), u.value("token", "")});
  }
  return out;
}

// ---------------------------------------------------------------------------
// Fill text. The history scenario's millions of messages are what message
// search indexes, so their words are chat-like: drawn from a vocabulary of
// kFillVocabulary words with a log-uniform rank (close to Zipf's law, as word
// frequencies in text are), so a few words are in many messages and most in
// few. Two fixed words in every message would make every posting list as
// long as the store: the worst case for FTS5, not a realistic one.

constexpr uint64_t kFillVocabulary = 20000;
constexpr std::string_view kFillSyllables[] = {"ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "pe", "da", "go",
                                               "hu", "ji", "be", "zo", "fa", "ar", "el", "in", "os", "um", "ta",
                                               "re", "li", "mo", "ko", "se", "ni", "pa", "du", "ve", "ri"};

// The word of rank r (0 = the most frequent): r's base-32 digits as syllables.
std::string FillWord(uint64_t r) {
  std::string w;
  do {
    w += kFillSyllables[r % std::size(kFillSyllables)];
    r /= std::size(kFillSyllables);
  } while (r > 0);
  return w;
}

// Appends words separated by spaces while `out` stays within `limit` bytes.
void AppendFillWords(std::string& out, size_t limit, std::mt19937_64& rng) {
  std::uniform_real_distribution<double> u(0.0, 1.0);
  for (;;) {
    auto rank = static_cast<uint64_t>(std::pow(static_cast<double>(kFillVocabulary), u(rng))) - 1;
    std::string w = FillWord(rank);
    if (out.size() + w.size() + 1 > limit) return;
    out += w;
    out += ' ';
  }
}

// ---------------------------------------------------------------------------
// The fleet: devices driven by one Loop.

int64_t GetInt(simdjson::dom::element e, std::string_view key, int64_t def = 0) {
  int64_t v;
  if (e[key].get_int64().get(v)) return def;
  return v;
}
std::string_view GetStr(simdjson::dom::element e, std::string_view key) {
  std::string_view v;
  if (e[key].get_string().get(v)) return {};
  return v;
}

// kProbe: a measured request of the history scenario (history, sync), checked
// and timed by Fleet::on_probe.
enum class Req : uint8_t { kAuth, kOpenConversation, kSend, kReceipt, kSync, kPing, kProbe };

struct Pending {
  Req kind;
  int64_t arg;  // kSend: the message number, or -(route + 1) for an untracked fill message;
                // kOpenConversation: the route; kProbe: the caller's tag
};

struct Device {
  Conn conn;
  User user;
  int64_t user_id = 0;
  bool authed = false;
  int64_t applied = 0;      // highest user_seq applied (gap-free)
  bool syncing = false;     // a sync request is in flight
  bool need_sync = false;   // a gap was seen while syncing
  bool track_stream = false;  // apply the sync algorithm (storm, backfill)
  int64_t hb_interval_ns = 0, next_ping_ns = 0;
  // The reconnect storm.
  int attempt = 0;
  int64_t reconnect_at = 0;  // 0: none scheduled
  int64_t dropped_ns = 0, online_ns = 0, caught_up_ns = 0;
  std::unordered_map<int64_t, Pending> pending;
  // Receipt round trip: seq -> message number of this device's sends not yet
  // covered by the peer's delivered watermark, and that watermark.
  std::map<int64_t, int64_t> unconfirmed;
  std::set<int64_t> covered;  // user seqs folded into a coalesced receipt, not yet reached
  int64_t peer_delivered = 0;
};

struct Msg {
  int64_t intended = 0;  // ns
  int64_t arrived = 0;   // ns at the recipient; 0: not yet
  uint32_t route = 0;
  uint8_t group = 0;
  bool rtt_done = false;
  bool acked = false;  // the sender got "sent": it is durable, so it must arrive
};

struct Route {
  size_t from, to;
  int64_t conv = 0;
};

struct Stream {
  std::vector<size_t> routes;  // indexes into Fleet::routes
  double rate = 0;             // messages/s
  int64_t t0 = 0, stop = 0;    // intended times in [t0, stop)
  int64_t k = 0;               // next message of this stream
  uint8_t group = 0;
};

struct Stats {
  size_t errors = 0;
  std::vector<std::string> error_samples;
  size_t closed = 0;  // unexpected closes
  std::vector<std::string> close_samples;
  size_t pings = 0;
  size_t reconnects = 0;
  size_t sync_pages = 0, synced_messages = 0;
  size_t refused = 0;  // sends refused with a retryable `unavailable` (admission) and sent again
};

class Fleet : public Handler {
 public:
  explicit Fleet(uint16_t port) : loop_(port, this) {}

  Loop& loop() { return loop_; }
  // The cluster's nodes: device i connects to ports[i % size] (round robin:
  // consecutive devices, e.g. the two of a pair, sit on different nodes).
  // Empty: every device on the Loop's port.
  std::vector<uint16_t> ports;
  size_t NodeOf(size_t device) const { return ports.empty() ? 0 : device % ports.size(); }
  std::deque<Device> devices;
  std::vector<Route> routes;
  std::vector<Msg> msgs;
  std::vector<Stream> streams;
  Stats stats;
  bool receipts = false;        // recipients send delivered and read receipts
  bool separate_receipts = false;  // ... as two requests per message, not one
  bool heartbeats = false;
  bool reconnect_cycle = false; // reconnects scenario: drop after auth, connect again
  std::vector<size_t> cycle_tokens_next;  // per device: next token to use
  std::vector<User>* cycle_users = nullptr;
  int64_t win_start = 0, win_end = 0;  // the measured window (intended times)
  std::vector<std::vector<int64_t>> latency, rtt, lag;  // per group, ns
  size_t in_setup = 0;           // connects + auths in flight
  size_t authed = 0;
  std::deque<size_t> to_connect; // devices waiting for a set-up slot
  BackoffPolicy backoff;
  std::mt19937_64 rng{42};
  bool dropped_phase = false;    // storm: reconnect on close
  bool reconnect_on_close = false;  // throughput: a closed device (e.g. 4003 when behind) reconnects and syncs
  // backfill, history: messages still to write, in flight, written; the
  // routes they go to, in turn. Untracked fill messages (history: millions)
  // get no Msg entry: their check is the `sent` response, counted in
  // fill_acked; the history scenario's probes check what the store returns.
  int64_t backfill_left = 0;
  size_t backfill_inflight = 0;
  std::vector<size_t> backfill_routes;
  size_t backfill_next = 0;
  bool backfill_untracked = false;
  int64_t fill_acked = 0;
  // The highest seq a `sent` response named, per conversation.
  std::unordered_map<int64_t, int64_t> conv_last_seq;
  // send -> `sent` response, per group, ns (the measured window only).
  std::vector<std::vector<int64_t>> acked;
  // A kProbe answer: `ok` false for an error frame (`result` is then the
  // frame). Runs inside Poll: the element is valid only during the call.
  std::function<void(Device&, int64_t tag, bool ok, simdjson::dom::element result)> on_probe;

  void AddGroups(size_t n) {
    latency.resize(n);
    acked.resize(n);
    rtt.resize(n);
    lag.resize(n);
  }

  // Connects every device in [first, last), at most kConnectWindow at a
  // time, and waits until all are authenticated.
  void ConnectAll(size_t first, size_t last, int64_t timeout_ns = kSetupTimeoutNs) {
    for (size_t i = first; i < last; ++i) to_connect.push_back(i);
    size_t want = authed + (last - first);
    PumpUntil([&] { return authed >= want; }, NowNs() + timeout_ns, "devices authenticated");
  }

  void StartConnect(size_t i) {
    Device& d = devices[i];
    d.conn.index = i;
    if (!ports.empty()) d.conn.port = ports[NodeOf(i)];
    ++in_setup;
    loop_.Connect(d.conn);
  }

  // Pipelined open_conversation for every route; waits for all.
  void OpenConversations() {
    for (size_t r = 0; r < routes.size(); ++r) {
      Device& a = devices[routes[r].from];
      json f = {{"v", 1}, {"id", a.conn.next_id}, {"type", "open_conversation"}, {"username", devices[routes[r].to].user.username}};
      a.pending[a.conn.next_id++] = {Req::kOpenConversation, static_cast<int64_t>(r)};
      loop_.Send(a.conn, f.dump());
    }
    PumpUntil([&] {
      return std::all_of(routes.begin(), routes.end(), [](const Route& r) { return r.conv != 0; });
    }, NowNs() + kSetupTimeoutNs, "conversations opened");
  }

  // Runs the loop (sends due messages, timers) until done() or the deadline.
  // `what` names the wait for the error message; empty: a timeout is fine.
  bool PumpUntil(const std::function<bool()>& done, int64_t deadline, const std::string& what) {
    while (!done()) {
      int64_t now = NowNs();
      if (now >= deadline) {
        if (what.empty()) return false;
        SetupFailed("timed out waiting for: " + what + " (" + std::to_string(authed) + " authenticated, " +
                    std::to_string(stats.closed) + " closed" +
                    (stats.close_samples.empty() ? std::string() : ", e.g. " + stats.close_samples[0]) +
                    (stats.error_samples.empty() ? std::string() : "; error e.g. " + stats.error_samples[0]) + ")");
      }
      int64_t next = Tick(now);
      loop_.Poll(std::min(next - NowNs(), deadline - now));
    }
    return true;
  }

  // Due work; returns when the next is due.
  int64_t Tick(int64_t now) {
    int64_t next = now + 5 * kMs;
    while (in_setup < kConnectWindow && !to_connect.empty()) {
      size_t i = to_connect.front();
      to_connect.pop_front();
      StartConnect(i);
    }
    for (auto& s : streams) {
      while (s.rate > 0) {
        auto intended = s.t0 + static_cast<int64_t>(static_cast<double>(s.k) * 1e9 / s.rate);
        if (intended >= s.stop) break;
        if (intended > now) {
          next = std::min(next, intended);
          break;
        }
        SendMessage(s.routes[static_cast<size_t>(s.k) % s.routes.size()], intended, s.group, now);
        ++s.k;
      }
    }
    while (!retries_.empty() && retries_.begin()->first <= now) {
      SendMessageFrame(retries_.begin()->second);
      retries_.erase(retries_.begin());
    }
    if (!retries_.empty()) next = std::min(next, retries_.begin()->first);
    while (backfill_left > 0 && backfill_inflight < kBackfillWindow) {
      size_t route = backfill_routes[backfill_next++ % backfill_routes.size()];
      if (backfill_untracked) {
        SendFill(route);
      } else {
        SendMessage(route, now, 0, now);
      }
      --backfill_left;
      ++backfill_inflight;
    }
    if (now >= next_timer_scan_) {
      next_timer_scan_ = now + 20 * kMs;
      for (auto& d : devices) {
        if (d.reconnect_at && d.reconnect_at <= now) {
          d.reconnect_at = 0;
          ++stats.reconnects;
          loop_.Connect(d.conn);
        }
        if (heartbeats && d.authed && d.next_ping_ns && d.next_ping_ns <= now && d.conn.state == Conn::State::kOpen) {
          SendPing(d);
        }
      }
    }
    return std::min(next, next_timer_scan_);
  }

  void SendPing(Device& d) {
    char buf[64];
    int n = std::snprintf(buf, sizeof buf, R"({"v":1,"id":%lld,"type":"ping"})", static_cast<long long>(d.conn.next_id));
    d.pending[d.conn.next_id++] = {Req::kPing, 0};
    loop_.Send(d.conn, std::string_view(buf, static_cast<size_t>(n)));
    ++stats.pings;
    d.next_ping_ns = NowNs() + d.hb_interval_ns;
  }

  void SendMessage(size_t route, int64_t intended, uint8_t group, int64_t now) {
    auto mid = static_cast<int64_t>(msgs.size());
    msgs.push_back({intended, 0, static_cast<uint32_t>(route), group, false, false});
    if (intended >= win_start && intended < win_end) lag[group].push_back(now - intended);
    SendMessageFrame(mid);
  }

  // The `send` of message `mid` (client id "m<mid>", its intended time in
  // the body): the first attempt, or a retry after a refusal.
  void SendMessageFrame(int64_t mid) {
    const Msg& m = msgs[static_cast<size_t>(mid)];
    Route& r = routes[m.route];
    Device& d = devices[r.from];
    const int64_t intended = m.intended;
    char head[160];
    int n = std::snprintf(head, sizeof head,
                          R"({"v":1,"id":%lld,"type":"send","conversation_id":%lld,"client_id":"m%lld","body":"t%lld )",
                          static_cast<long long>(d.conn.next_id), static_cast<long long>(r.conv),
                          static_cast<long long>(mid), static_cast<long long>(intended));
    std::string f(head, static_cast<size_t>(n));
    while (f.size() + 2 < kFrameBytes) f.push_back('x');
    f += "\"}";
    d.pending[d.conn.next_id++] = {Req::kSend, mid};
    loop_.Send(d.conn, f);
  }

  // A fill message: no Msg entry (see backfill_untracked), client id
  // "f<n>", which recipients do not look up.
  void SendFill(size_t route) {
    Route& r = routes[route];
    Device& d = devices[r.from];
    char head[160];
    int n = std::snprintf(head, sizeof head,
                          R"({"v":1,"id":%lld,"type":"send","conversation_id":%lld,"client_id":"f%lld","body":")",
                          static_cast<long long>(d.conn.next_id), static_cast<long long>(r.conv),
                          static_cast<long long>(fill_sent_++));
    std::string f(head, static_cast<size_t>(n));
    AppendFillWords(f, kFrameBytes - 2, rng);
    f += "\"}";
    d.pending[d.conn.next_id++] = {Req::kSend, -static_cast<int64_t>(route) - 1};
    loop_.Send(d.conn, f);
  }

  void SendSync(Device& d) {
    d.syncing = true;
    d.need_sync = false;
    char buf[128];
    int n = std::snprintf(buf, sizeof buf, R"({"v":1,"id":%lld,"type":"sync","after":%lld,"limit":%d})",
                          static_cast<long long>(d.conn.next_id), static_cast<long long>(d.applied), kSyncLimit);
    d.pending[d.conn.next_id++] = {Req::kSync, 0};
    loop_.Send(d.conn, std::string_view(buf, static_cast<size_t>(n)));
  }

  void Error(const std::string& e) {
    ++stats.errors;
    if (stats.error_samples.size() < 10) stats.error_samples.push_back(e);
  }

  // ---- Handler
  void OnOpen(Conn& c) override {
    Device& d = devices[c.index];
    if (cycle_users) d.user = (*cycle_users)[cycle_tokens_next[c.index]];
    json f = {{"v", 1}, {"id", c.next_id}, {"type", "auth"}, {"token", d.user.token}};
    d.pending[c.next_id++] = {Req::kAuth, 0};
    loop_.Send(c, f.dump());
  }

  void OnClosed(Conn& c, const std::string& why) override {
    Device& d = devices[c.index];
    bool was_setup = !d.authed;
    d.authed = false;
    d.syncing = false;
    d.pending.clear();
    if (dropped_phase) {  // storm: a failed reconnect attempt; back off again
      d.reconnect_at = NowNs() + BackoffDelayMs(backoff, ++d.attempt, rng) * kMs;
      if (was_setup && in_setup) --in_setup;
      return;
    }
    if (was_setup && in_setup) --in_setup;
    ++stats.closed;
    if (stats.close_samples.size() < 10) stats.close_samples.push_back(d.user.username + ": " + why);
    if (reconnect_on_close && !was_setup) {
      // Like the SDK: back off, reconnect, sync from the last applied event.
      d.dropped_ns = NowNs();
      d.reconnect_at = d.dropped_ns + BackoffDelayMs(backoff, d.attempt++, rng) * kMs;
    }
  }

  void OnMessage(Conn& c, simdjson::dom::element f, std::string_view raw) override {
    Device& d = devices[c.index];
    std::string_view type = GetStr(f, "type");
    if (type == "event") {
      simdjson::dom::element ev;
      if (f["event"].get(ev)) return;
      OnEvent(d, ev, true);
      return;
    }
    if (type != "response" && type != "error") return;  // typing, presence
    int64_t id = GetInt(f, "id", -1);
    auto it = d.pending.find(id);
    if (it == d.pending.end()) {
      Error("unmatched answer: " + std::string(raw.substr(0, 200)));
      return;
    }
    Pending p = it->second;
    d.pending.erase(it);
    if (type == "error" && p.kind == Req::kSend && GetStr(f, "code") == "unavailable") {
      // Refused by admission (parleyd's store is behind, --max-queued-writes):
      // as the SDK's outbox, the same message again after retry_after_ms
      // plus up to 10 % jitter; it is stored once. Its latency keeps counting
      // from the intended send time. A fill message is replaced by another.
      // A backfill's retried send stays in flight until its answer.
      ++stats.refused;
      if (p.arg >= 0) {
        const auto wait = static_cast<double>(GetInt(f, "retry_after_ms", 1000) * kMs) * (1.0 + 0.1 * Uniform());
        retries_.emplace(NowNs() + static_cast<int64_t>(wait), p.arg);
      } else {
        if (backfill_inflight) --backfill_inflight;
        ++backfill_left;
      }
      return;
    }
    if (type == "error") {
      Error(d.user.username + ": " + std::string(raw.substr(0, 300)));
      if (p.kind == Req::kAuth) SetupFailed("auth failed: " + std::string(raw.substr(0, 300)));
      if (p.kind == Req::kSend && backfill_inflight) --backfill_inflight;
      if (p.kind == Req::kSync) d.syncing = false;
      if (p.kind == Req::kProbe && on_probe) on_probe(d, p.arg, false, f);
      return;
    }
    simdjson::dom::element result;
    if (f["result"].get(result)) {
      Error("response without result");
      return;
    }
    switch (p.kind) {
      case Req::kAuth: {
        d.user_id = GetInt(result, "user_id");
        d.authed = true;
        if (in_setup) --in_setup;
        ++authed;
        int64_t hb = GetInt(result, "heartbeat_interval_ms", 25000);
        d.hb_interval_ns = hb * kMs;
        d.next_ping_ns = NowNs() + static_cast<int64_t>(static_cast<double>(hb * kMs) * (0.9 + 0.1 * Uniform()));
        if (reconnect_cycle) {
          // Drop it and come back with the next token (from the loop, not
          // from inside the frame parser).
          loop_.Abort(c);
          d.authed = false;
          cycle_tokens_next[c.index] = (cycle_tokens_next[c.index] + devices.size()) % cycle_users->size();
          to_connect.push_back(c.index);
          return;
        }
        if (d.dropped_ns) {
          d.online_ns = NowNs();
          d.attempt = 0;
        }
        if (d.track_stream) {
          if (d.dropped_ns || d.applied < GetInt(result, "head")) SendSync(d);
        } else {
          d.applied = GetInt(result, "head");
        }
        return;
      }
      case Req::kOpenConversation: {
        simdjson::dom::element conv;
        if (!result["conversation"].get(conv)) routes[static_cast<size_t>(p.arg)].conv = GetInt(conv, "conversation_id");
        return;
      }
      case Req::kSend: {
        if (backfill_inflight) --backfill_inflight;
        int64_t seq = GetInt(result, "seq");
        int64_t& last = conv_last_seq[GetInt(result, "conversation_id")];
        last = std::max(last, seq);
        if (p.arg < 0) {
          ++fill_acked;
          return;
        }
        Msg& m = msgs[static_cast<size_t>(p.arg)];
        m.acked = true;
        if (m.intended >= win_start && m.intended < win_end) acked[m.group].push_back(NowNs() - m.intended);
        if (!receipts) return;
        if (seq <= d.peer_delivered) {
          RecordRtt(m, NowNs());
        } else {
          d.unconfirmed[seq] = p.arg;
        }
        return;
      }
      case Req::kSync: {
        d.syncing = false;
        ++stats.sync_pages;
        simdjson::dom::array events;
        if (!result["events"].get(events)) {
          for (auto ev : events) OnEvent(d, ev, false);
        }
        bool more = false;
        if (result["has_more"].get_bool().get(more)) more = false;
        if (more || d.need_sync) {
          SendSync(d);
        } else if (d.dropped_ns && !d.caught_up_ns) {
          d.caught_up_ns = NowNs();
        } else if (!d.caught_up_ns) {
          d.caught_up_ns = NowNs();
        }
        return;
      }
      case Req::kPing: {
        // Like the SDK: a head beyond what was applied means a live event
        // was missed (e.g. a fabric publish lost on the way): sync.
        if (!d.track_stream || !d.authed) return;
        if (GetInt(result, "head") > d.applied) {
          if (d.syncing) {
            d.need_sync = true;
          } else {
            SendSync(d);
          }
        }
        return;
      }
      case Req::kReceipt:
        return;
      case Req::kProbe:
        if (on_probe) on_probe(d, p.arg, true, result);
        return;
    }
  }

  void OnEvent(Device& d, simdjson::dom::element ev, bool live) {
    int64_t us = GetInt(ev, "user_seq");
    if (d.track_stream) {
      if (us <= d.applied) return;
      if (us > d.applied + 1) {
        if (d.syncing) {
          d.need_sync = true;
        } else if (d.authed) {
          SendSync(d);
        }
        return;
      }
      d.applied = us;
      // A coalesced receipt (live only): the user seqs it folded in count
      // as applied when their turn comes.
      simdjson::dom::array covers;
      if (!ev["also_covers"].get(covers)) {
        for (auto v : covers) {
          int64_t cv;
          if (!v.get_int64().get(cv)) d.covered.insert(cv);
        }
      }
      while (!d.covered.empty() && *d.covered.begin() <= d.applied + 1) {
        d.applied = std::max(d.applied, *d.covered.begin());
        d.covered.erase(d.covered.begin());
      }
    } else {
      d.applied = std::max(d.applied, us);
    }
    std::string_view kind = GetStr(ev, "kind");
    if (kind == "message") {
      simdjson::dom::element m;
      if (ev["message"].get(m)) return;
      if (GetInt(m, "sender_id") == d.user_id) return;
      if (!live) ++stats.synced_messages;
      std::string_view cid = GetStr(m, "client_id");
      if (cid.size() < 2 || cid[0] != 'm') return;
      auto mid = static_cast<size_t>(std::strtoll(std::string(cid.substr(1)).c_str(), nullptr, 10));
      if (mid >= msgs.size()) return;
      Msg& msg = msgs[mid];
      int64_t now = NowNs();
      if (!msg.arrived) {
        msg.arrived = now;
        if (msg.intended >= win_start && msg.intended < win_end) latency[msg.group].push_back(now - msg.intended);
      }
      if (receipts && live) {
        int64_t seq = GetInt(m, "seq");
        int64_t conv = GetInt(m, "conversation_id");
        // Like the SDK (StartReceipts): what was stored and read since the
        // last request goes out as one item, delivered and read together;
        // --separate-receipts sends them as two requests, as the figures
        // before 2026-11-30 did.
        if (separate_receipts) {
          SendReceipt(d, conv, seq, 0);
          SendReceipt(d, conv, 0, seq);
        } else {
          SendReceipt(d, conv, seq, seq);
        }
      }
    } else if (kind == "receipt" && receipts) {
      if (GetInt(ev, "user_id") == d.user_id) return;
      int64_t delivered = GetInt(ev, "delivered");
      if (delivered <= d.peer_delivered) return;
      d.peer_delivered = delivered;
      int64_t now = NowNs();
      while (!d.unconfirmed.empty() && d.unconfirmed.begin()->first <= delivered) {
        RecordRtt(msgs[static_cast<size_t>(d.unconfirmed.begin()->second)], now);
        d.unconfirmed.erase(d.unconfirmed.begin());
      }
    }
  }

  // One `receipt` request with one item; a watermark of 0 is left out.
  void SendReceipt(Device& d, int64_t conv, int64_t delivered, int64_t read) {
    char buf[256];
    int n = std::snprintf(buf, sizeof buf, R"({"v":1,"id":%lld,"type":"receipt","items":[{"conversation_id":%lld)",
                          static_cast<long long>(d.conn.next_id), static_cast<long long>(conv));
    if (delivered > 0) n += std::snprintf(buf + n, sizeof buf - static_cast<size_t>(n), R"(,"delivered":%lld)", static_cast<long long>(delivered));
    if (read > 0) n += std::snprintf(buf + n, sizeof buf - static_cast<size_t>(n), R"(,"read":%lld)", static_cast<long long>(read));
    n += std::snprintf(buf + n, sizeof buf - static_cast<size_t>(n), "}]}");
    d.pending[d.conn.next_id++] = {Req::kReceipt, 0};
    loop_.Send(d.conn, std::string_view(buf, static_cast<size_t>(n)));
  }

  void RecordRtt(Msg& m, int64_t now) {
    if (m.rtt_done) return;
    m.rtt_done = true;
    if (m.intended >= win_start && m.intended < win_end) rtt[m.group].push_back(now - m.intended);
  }

  double Uniform() { return std::uniform_real_distribution<double>(0, 1)(rng); }

 private:
  Loop loop_;
  std::multimap<int64_t, int64_t> retries_;  // refused sends: due (ns) -> message number
  int64_t next_timer_scan_ = 0;
  int64_t fill_sent_ = 0;
};

// Provisions 2*pairs users ("<prefix>N"), connects and authenticates them,
// and opens the conversation of each pair (devices 2i and 2i+1). Returns the
// index of the first route.
void AddPairs(Fleet& f, const Server& s, const std::string& prefix, size_t pairs) {
  auto users = Provision(s, prefix, 2 * pairs);
  size_t first = f.devices.size();
  for (auto& u : users) {
    f.devices.emplace_back();
    f.devices.back().user = u;
  }
  f.ConnectAll(first, f.devices.size());
  for (size_t i = 0; i < pairs; ++i) {
    f.routes.push_back({first + 2 * i, first + 2 * i + 1, 0});
  }
}

// After OpenConversations: the reverse route of each pair, so that both
// sides send.
void AddReverseRoutes(Fleet& f, size_t first_route, size_t last_route) {
  for (size_t r = first_route; r < last_route; ++r) f.routes.push_back({f.routes[r].to, f.routes[r].from, f.routes[r].conv});
}

struct PhaseResult {
  json j;
  bool ok = true;
  std::vector<std::string> failures;
};

// One measured phase: the streams run from now + warmup over duration;
// then sending stops and the tool waits up to drain for arrivals.
// Returns per-group figures.
json RunPhase(Fleet& f, std::vector<Server>& nodes, double warmup_s, double duration_s, double drain_s, std::vector<std::string>* failures,
              const std::vector<std::string>& group_names) {
  size_t first_msg = f.msgs.size();
  int64_t t0 = NowNs() + 20 * kMs;
  f.win_start = t0 + static_cast<int64_t>(warmup_s * 1e9);
  f.win_end = f.win_start + static_cast<int64_t>(duration_s * 1e9);
  for (auto& g : f.latency) g.clear();
  for (auto& g : f.acked) g.clear();
  for (auto& g : f.rtt) g.clear();
  for (auto& g : f.lag) g.clear();
  for (auto& st : f.streams) {
    st.t0 = t0;
    st.k = 0;
    st.stop = f.win_end;
  }
  size_t errors0 = f.stats.errors, closed0 = f.stats.closed;
  size_t n_nodes = nodes.size();
  std::vector<int64_t> node_cpu0(n_nodes), node_cpu1(n_nodes), node_wait0(n_nodes), node_wait1(n_nodes);
  int64_t cpu_self0 = 0, cpu_self1 = 0, spun0 = 0, spun1 = 0;
  f.PumpUntil([&] { return NowNs() >= f.win_start; }, INT64_MAX, "");
  for (size_t k = 0; k < n_nodes; ++k) {
    node_cpu0[k] = ProcessCpuMs(nodes[k].pid);
    node_wait0[k] = RunQueueWaitMs(nodes[k].pid);
  }
  cpu_self0 = ProcessCpuMs(getpid());
  spun0 = f.loop().spun_ns();
  f.PumpUntil([&] { return NowNs() >= f.win_end; }, INT64_MAX, "");
  for (size_t k = 0; k < n_nodes; ++k) {
    node_cpu1[k] = ProcessCpuMs(nodes[k].pid);
    node_wait1[k] = RunQueueWaitMs(nodes[k].pid);
  }
  cpu_self1 = ProcessCpuMs(getpid());
  spun1 = f.loop().spun_ns();
  int64_t cpu0 = 0, cpu1 = 0, wait0 = 0, wait1 = 0;  // summed over the nodes
  for (size_t k = 0; k < n_nodes; ++k) {
    cpu0 += node_cpu0[k];
    cpu1 += node_cpu1[k];
    wait0 += node_wait0[k];
    wait1 += node_wait1[k];
  }
  int64_t end_send = NowNs();
  auto all_arrived = [&] {
    for (size_t i = first_msg; i < f.msgs.size(); ++i) {
      if (!f.msgs[i].arrived) return false;
    }
    return true;
  };
  // Drain: wait for arrivals, and for the rtt receipts to settle.
  f.PumpUntil([&] { return NowNs() - end_send > 200 * kMs && all_arrived(); }, end_send + static_cast<int64_t>(drain_s * 1e9), "");
  f.PumpUntil([] { return false; }, NowNs() + 100 * kMs, "");
  json groups = json::object();
  for (size_t g = 0; g < f.latency.size(); ++g) {
    size_t offered = 0, delivered = 0, in_window = 0, sent = 0, lost = 0;
    for (size_t i = first_msg; i < f.msgs.size(); ++i) {
      const Msg& m = f.msgs[i];
      if (m.group != g) continue;
      ++sent;
      if (!m.arrived) ++lost;
      if (m.intended < f.win_start || m.intended >= f.win_end) continue;
      ++offered;
      if (m.arrived) ++delivered;
      if (m.arrived && m.arrived < f.win_end + 1 * kSec) ++in_window;
    }
    double rate = 0;
    for (auto& st : f.streams) {
      if (st.group == g) rate += st.rate;
    }
    Pct lat = Percentiles(f.latency[g]), ack = Percentiles(f.acked[g]), rt = Percentiles(f.rtt[g]), lg = Percentiles(f.lag[g]);
    bool kept_up = delivered == offered && lost == 0 && lat.p99 <= 50.0 && f.stats.closed == closed0;
    groups[group_names[g]] = {{"offered_rate", rate},
                              {"offered", offered},
                              {"delivered", delivered},
                              {"delivered_within_1s_of_window", in_window},
                              {"sent_total", sent},
                              {"not_arrived_after_drain", lost},
                              {"achieved_rate", static_cast<double>(delivered) / duration_s},
                              {"latency", ToJson(lat)},
                              {"sent_response", ToJson(ack)},
                              {"receipt_rtt", ToJson(rt)},
                              {"send_lag", ToJson(lg)},
                              {"kept_up", kept_up}};
  }
  size_t total = 0;
  for (auto& st : f.streams) total += static_cast<size_t>(st.rate * duration_s);
  // Per node: its CPU, and the messages offered in the window to devices
  // connected there (every group), their arrivals and latency.
  json per_node = json::array();
  {
    std::vector<std::vector<int64_t>> node_lat(n_nodes);
    std::vector<size_t> node_offered(n_nodes), node_delivered(n_nodes), node_devices(n_nodes);
    for (size_t i = 0; i < f.devices.size(); ++i) ++node_devices[f.NodeOf(i)];
    for (size_t i = first_msg; i < f.msgs.size(); ++i) {
      const Msg& m = f.msgs[i];
      if (m.intended < f.win_start || m.intended >= f.win_end) continue;
      size_t k = f.NodeOf(f.routes[m.route].to);
      ++node_offered[k];
      if (m.arrived) {
        ++node_delivered[k];
        node_lat[k].push_back(m.arrived - m.intended);
      }
    }
    for (size_t k = 0; k < n_nodes; ++k) {
      per_node.push_back({{"node", k},
                          {"devices", node_devices[k]},
                          {"offered_to_devices_here", node_offered[k]},
                          {"delivered_to_devices_here", node_delivered[k]},
                          {"latency_to_devices_here", ToJson(Percentiles(std::move(node_lat[k])))},
                          {"parleyd_cpu_ms", node_cpu1[k] - node_cpu0[k]},
                          {"parleyd_core_busy", static_cast<double>(node_cpu1[k] - node_cpu0[k]) / (duration_s * 1000.0)},
                          {"parleyd_runqueue_wait", static_cast<double>(node_wait1[k] - node_wait0[k]) / (duration_s * 1000.0)}});
    }
  }
  json out = {{"groups", groups},
              {"nodes", per_node},
              {"duration_s", duration_s},
              {"errors", f.stats.errors - errors0},
              {"parleyd_cpu_ms", cpu1 - cpu0},
              {"parleyd_cpu_us_per_msg", total ? 1000.0 * static_cast<double>(cpu1 - cpu0) / static_cast<double>(total) : 0},
              {"parleyd_core_busy", static_cast<double>(cpu1 - cpu0) / (duration_s * 1000.0)},
              {"parleyd_runqueue_wait", static_cast<double>(wait1 - wait0) / (duration_s * 1000.0)},
              // A spinning generator is always on its core: its busy share
              // leaves out the polls that found nothing.
              {"bench_core_busy",
               (static_cast<double>(cpu_self1 - cpu_self0) - static_cast<double>(spun1 - spun0) / 1e6) /
                   (duration_s * 1000.0)},
              {"bench_spins", f.loop().spinning()}};
  if (f.stats.errors != errors0) {
    failures->push_back(std::to_string(f.stats.errors - errors0) + " requests failed, e.g. " +
                        (f.stats.error_samples.empty() ? "" : f.stats.error_samples.back()));
  }
  return out;
}

// After every phase: waits (up to kFinalDrainNs) until every message sent
// arrived at its recipient, live or through sync after a reconnect; the
// rest are lost (a failure).
constexpr int64_t kFinalDrainNs = 60 * kSec;
constexpr int64_t kFinalPingNs = 2 * kSec;  // pings while messages are missing
size_t FinalCheck(Fleet& f, std::vector<std::string>* failures) {
  auto missing = [&] {
    return static_cast<size_t>(std::count_if(f.msgs.begin(), f.msgs.end(), [](const Msg& m) { return m.arrived == 0; }));
  };
  int64_t deadline = NowNs() + kFinalDrainNs;
  int64_t next_ping = NowNs() + kFinalPingNs;
  while (missing() && NowNs() < deadline) {
    f.PumpUntil([] { return false; }, NowNs() + 200 * kMs, "");
    if (NowNs() < next_ping) continue;
    // What a heartbeat would do, sooner: a device that missed a live event
    // learns it from the ping's head and syncs.
    for (auto& d : f.devices) {
      if (d.authed && d.track_stream) f.SendPing(d);
    }
    next_ping = NowNs() + kFinalPingNs;
  }
  size_t lost = missing();
  if (lost) {
    // Acked but never arrived breaks a guarantee; never acked means the
    // send itself failed or is still queued at a node (reported apart).
    size_t acked = static_cast<size_t>(
        std::count_if(f.msgs.begin(), f.msgs.end(), [](const Msg& m) { return m.arrived == 0 && m.acked; }));
    failures->push_back(std::to_string(lost) + " of " + std::to_string(f.msgs.size()) + " messages never arrived (" +
                        std::to_string(acked) + " of them acked as sent, " + std::to_string(lost - acked) +
                        " never acked)");
  }
  if (f.stats.closed) {
    std::printf("  %zu connections were closed by parleyd and reconnected, e.g. %s\n", f.stats.closed,
                f.stats.close_samples[0].c_str());
  }
  return lost;
}

void PrintPhase(const json& ph, const std::string& label) {
  if (ph["nodes"].size() > 1) {
    for (auto& n : ph["nodes"]) {
      std::printf("  %-14s node %zu: %zu devices, %zu/%zu delivered to them, p50 %7.3f  p99 %8.3f ms; parleyd %.0f %% of a core (%.0f %% waiting)\n",
                  "", n["node"].get<size_t>(), n["devices"].get<size_t>(), n["delivered_to_devices_here"].get<size_t>(),
                  n["offered_to_devices_here"].get<size_t>(), n["latency_to_devices_here"]["p50_ms"].get<double>(),
                  n["latency_to_devices_here"]["p99_ms"].get<double>(), 100 * n["parleyd_core_busy"].get<double>(),
                  100 * n["parleyd_runqueue_wait"].get<double>());
    }
  }
  for (auto& [name, g] : ph["groups"].items()) {
    std::printf("  %-14s %-6s %9.0f/s %8zu/%-8zu late %-6zu p50 %7.3f  p99 %8.3f  p999 %8.3f ms   rtt p50 %7.3f p99 %8.3f ms  %s\n",
                label.c_str(), name.c_str(), g["offered_rate"].get<double>(), g["delivered"].get<size_t>(),
                g["offered"].get<size_t>(), g["not_arrived_after_drain"].get<size_t>(), g["latency"]["p50_ms"].get<double>(),
                g["latency"]["p99_ms"].get<double>(), g["latency"]["p999_ms"].get<double>(),
                g["receipt_rtt"]["p50_ms"].get<double>(), g["receipt_rtt"]["p99_ms"].get<double>(),
                g["kept_up"].get<bool>() ? "kept up" : "NOT kept up");
  }
  std::printf("  %-14s %s %.0f %% of a core (and %.0f %% waiting for it: other processes or its own threads), %.1f us CPU per message; load generator %.0f %%%s\n", "",
              ph["nodes"].size() > 1 ? "parleyd (all nodes)" : "parleyd",
              100 * ph["parleyd_core_busy"].get<double>(), 100 * ph["parleyd_runqueue_wait"].get<double>(),
              ph["parleyd_cpu_us_per_msg"].get<double>(), 100 * ph["bench_core_busy"].get<double>(),
              ph["bench_spins"].get<bool>() ? " (spinning)" : "");
}

std::vector<double> ParseRates(const std::string& s) {
  std::vector<double> out;
  std::stringstream in(s);
  std::string tok;
  while (std::getline(in, tok, ',')) {
    if (!tok.empty()) out.push_back(std::stod(tok));
  }
  return out;
}

// ---------------------------------------------------------------------------
// Scenarios. Each returns its JSON; failures go to *failures.

struct Opts {
  size_t pairs = 500;
  std::string rates = "10000";
  double warmup_s = 2, duration_s = 10, drain_s = 5;
  bool receipts = true;
  bool separate_receipts = false;  // delivered and read as two requests (the figures before 2026-11-30)
  size_t connections = 10000;  // idle
  size_t per_process = 0;      // idle: connections per worker (0: as the file limit allows)
  double hold_s = 8;           // idle
  double setup_timeout_s = 600;  // idle: every worker's connections authenticated (100,000 on one shared core take minutes)
  size_t reconnect_users = 2000, concurrency = 200;  // reconnects
  size_t devices = 10000;      // storm
  double storm_rate = 2000;    // storm: messages/s to the devices
  double before_s = 2, after_s = 2;  // storm
  int64_t history = 100000;    // backfill
  double hot_rate = 10000;     // hot
  bool spin = false;           // throughput, receipt-rtt, hot: busy-poll instead of sleeping (Loop::set_spin)
};

// The cluster's ports (for Fleet::ports), empty with one node.
std::vector<uint16_t> ClusterPorts(const std::vector<Server>& nodes) {
  std::vector<uint16_t> out;
  if (nodes.size() > 1) {
    for (auto& n : nodes) out.push_back(n.port);
  }
  return out;
}

void CheckAlive(std::vector<Server>& nodes) {
  for (auto& n : nodes) {
    if (!n.Alive()) SetupFailed("parleyd (node " + std::to_string(n.node) + ") died (see " + n.log + ")");
  }
}

json ScenarioThroughput(const Common& c, std::vector<Server>& nodes, const Opts& o, bool rtt_headline, std::vector<std::string>* failures) {
  Server& s = nodes[0];
  Fleet f(s.port);
  f.ports = ClusterPorts(nodes);
  f.receipts = o.receipts;
  f.separate_receipts = o.separate_receipts;
  f.loop().set_spin(o.spin);
  f.AddGroups(1);
  AddPairs(f, s, "pair_", o.pairs);
  for (auto& d : f.devices) d.track_stream = true;
  f.reconnect_on_close = true;
  f.OpenConversations();
  // Both directions, except for the receipt round trip: a member's sends
  // raise its own watermarks, which would confirm the peer's messages early.
  if (!rtt_headline) AddReverseRoutes(f, 0, f.routes.size());
  Stream st;
  for (size_t r = 0; r < f.routes.size(); ++r) st.routes.push_back(r);
  f.streams.push_back(st);
  json rows = json::array();
  double saturation = 0;
  std::printf("parley-bench %s: %zu pairs, receipts: %s, %.1f s warm-up + %.1f s measured per rate\n",
              rtt_headline ? "receipt-rtt" : "throughput", o.pairs, !o.receipts ? "no" : o.separate_receipts ? "delivered, read (two requests)" : "delivered+read (one request)",
              o.warmup_s, o.duration_s);
  if (nodes.size() > 1) {
    std::printf("  %zu parleyd nodes; devices round robin, the two of each pair on different nodes (delivery crosses Redis)\n",
                nodes.size());
  }
  for (double rate : ParseRates(o.rates)) {
    f.streams[0].rate = rate;
    auto ph = RunPhase(f, nodes, o.warmup_s, o.duration_s, o.drain_s, failures, {"pairs"});
    ph["offered_rate"] = rate;
    PrintPhase(ph, std::to_string(static_cast<int64_t>(rate)) + "/s");
    if (ph["groups"]["pairs"]["kept_up"].get<bool>() && ph["errors"].get<size_t>() == 0) saturation = std::max(saturation, rate);
    rows.push_back(ph);
    CheckAlive(nodes);
  }
  (void)c;
  std::printf("  saturation (highest offered rate with delivered == offered and p99 <= 50 ms): %.0f msgs/s\n", saturation);
  if (f.stats.refused) {
    std::printf("  %zu sends refused while parleyd's store was behind (--max-queued-writes) and sent again after its retry_after_ms\n",
                f.stats.refused);
  }
  size_t lost = FinalCheck(f, failures);
  if (f.stats.synced_messages) {
    // Live events a node could not deliver (e.g. a route that expired while
    // it was behind) reach the device through sync: the SDK's rule.
    std::printf("  %zu messages arrived through sync, not live (a missed live event, found by a ping's head or a gap)\n",
                f.stats.synced_messages);
  }
  return {{"pairs", o.pairs}, {"nodes", nodes.size()}, {"receipts", o.receipts}, {"separate_receipts", o.separate_receipts}, {"rates", rows}, {"saturation_rate", saturation}, {"lost", lost},
          {"closed", f.stats.closed}, {"synced_messages", f.stats.synced_messages}, {"sync_pages", f.stats.sync_pages},
          {"refused", f.stats.refused}};
}

json ScenarioHot(const Common&, std::vector<Server>& nodes, const Opts& o, std::vector<std::string>* failures) {
  Server& s = nodes[0];
  Fleet f(s.port);
  f.ports = ClusterPorts(nodes);
  f.receipts = o.receipts;
  f.separate_receipts = o.separate_receipts;
  f.loop().set_spin(o.spin);
  f.AddGroups(2);
  AddPairs(f, s, "pair_", o.pairs);
  AddPairs(f, s, "hot_", 1);
  for (auto& d : f.devices) d.track_stream = true;
  f.reconnect_on_close = true;
  f.OpenConversations();
  AddReverseRoutes(f, 0, f.routes.size());
  Stream pairs, hot;
  for (size_t r = 0; r < f.routes.size(); ++r) {
    if (r == o.pairs || r == 2 * o.pairs + 1) {
      hot.routes.push_back(r);
    } else {
      pairs.routes.push_back(r);
    }
  }
  hot.group = 1;
  double rate = ParseRates(o.rates).at(0);
  pairs.rate = rate;
  f.streams = {pairs, hot};
  std::printf("parley-bench hot: %zu pairs at %.0f msgs/s in total, then beside one pair at %.0f msgs/s\n", o.pairs, rate,
              o.hot_rate);
  auto without = RunPhase(f, nodes, o.warmup_s, o.duration_s, o.drain_s, failures, {"pairs", "hot"});
  PrintPhase(without, "without hot");
  f.streams[1].rate = o.hot_rate;
  auto with = RunPhase(f, nodes, o.warmup_s, o.duration_s, o.drain_s, failures, {"pairs", "hot"});
  PrintPhase(with, "with hot");
  double p99a = without["groups"]["pairs"]["latency"]["p99_ms"], p99b = with["groups"]["pairs"]["latency"]["p99_ms"];
  double ratio = p99a > 0 ? p99b / p99a : 0;
  std::printf("  pairs' p99 with / without the hot pair: %.3f / %.3f ms = %.2fx (target <= 2x)\n", p99b, p99a, ratio);
  size_t lost = FinalCheck(f, failures);
  return {{"lost", lost}, {"closed", f.stats.closed}, {"pairs", o.pairs}, {"rate", rate}, {"hot_rate", o.hot_rate}, {"without_hot", without}, {"with_hot", with},
          {"p99_ratio", ratio}};
}

json ScenarioReconnects(const Common&, Server& s, const Opts& o, std::vector<std::string>*) {
  Fleet f(s.port);
  auto users = Provision(s, "recon_", o.reconnect_users);
  size_t slots = std::min(o.concurrency, users.size());
  for (size_t i = 0; i < slots; ++i) f.devices.emplace_back();
  f.cycle_users = &users;
  f.cycle_tokens_next.resize(slots);
  for (size_t i = 0; i < slots; ++i) f.cycle_tokens_next[i] = i;
  f.reconnect_cycle = true;
  // Warm-up, then measure.
  for (size_t i = 0; i < slots; ++i) f.to_connect.push_back(i);
  int64_t warm_end = NowNs() + static_cast<int64_t>(o.warmup_s * 1e9);
  f.PumpUntil([] { return false; }, warm_end, "");
  size_t a0 = f.authed;
  int64_t cpu0 = ProcessCpuMs(s.pid), wait0 = RunQueueWaitMs(s.pid);
  int64_t t0 = NowNs();
  f.PumpUntil([] { return false; }, t0 + static_cast<int64_t>(o.duration_s * 1e9), "");
  int64_t t1 = NowNs();
  size_t n = f.authed - a0;
  int64_t cpu1 = ProcessCpuMs(s.pid), wait1 = RunQueueWaitMs(s.pid);
  double wait_share = static_cast<double>(wait1 - wait0) / (static_cast<double>(t1 - t0) / 1e6);
  double busy = static_cast<double>(cpu1 - cpu0) / (static_cast<double>(t1 - t0) / 1e6);
  double per_s = static_cast<double>(n) / (static_cast<double>(t1 - t0) / 1e9);
  std::printf("parley-bench reconnects: %zu connections in flight over %zu tokens\n", slots, users.size());
  std::printf("  %zu token reconnects (TCP connect, WebSocket upgrade, auth, drop) in %.1f s: %.0f /s; parleyd %.0f us CPU each\n",
              n, static_cast<double>(t1 - t0) / 1e9, per_s, n ? 1000.0 * static_cast<double>(cpu1 - cpu0) / static_cast<double>(n) : 0.0);
  std::printf("  parleyd %.0f %% of its core (and %.0f %% waiting for it: other processes or its own threads)\n", 100 * busy,
              100 * wait_share);
  return {{"concurrency", slots}, {"users", users.size()}, {"reconnects", n}, {"duration_s", static_cast<double>(t1 - t0) / 1e9},
          {"reconnects_per_s", per_s}, {"parleyd_cpu_us_per_reconnect", n ? 1000.0 * static_cast<double>(cpu1 - cpu0) / static_cast<double>(n) : 0.0},
          {"parleyd_core_busy", busy}, {"parleyd_runqueue_wait", wait_share},
          {"closed", f.stats.closed}, {"errors", f.stats.errors}};
}

json ScenarioStorm(const Common&, Server& s, const Opts& o, std::vector<std::string>* failures) {
  if (o.devices + kFdReserve > kMaxFilesPerProcess) SetupFailed("storm: at most " + std::to_string(kMaxFilesPerProcess - kFdReserve) + " devices (one process)");
  Fleet f(s.port);
  f.AddGroups(1);
  auto users = Provision(s, "dev_", o.devices);
  auto sender = Provision(s, "sender_", 1);
  for (auto& u : users) {
    f.devices.emplace_back();
    f.devices.back().user = u;
    f.devices.back().track_stream = true;
  }
  f.devices.emplace_back();
  f.devices.back().user = sender[0];
  size_t sidx = o.devices;
  int64_t t_setup = NowNs();
  f.ConnectAll(0, f.devices.size());
  for (size_t i = 0; i < o.devices; ++i) f.routes.push_back({sidx, i, 0});
  f.OpenConversations();
  double connect_s = static_cast<double>(NowNs() - t_setup) / 1e9;
  // Bring every device to its head (the conversation events).
  for (size_t i = 0; i < o.devices; ++i) f.SendSync(f.devices[i]);
  f.PumpUntil([&] { return std::none_of(f.devices.begin(), f.devices.end(), [](const Device& d) { return d.syncing; }); },
              NowNs() + kSetupTimeoutNs, "initial sync");
  for (auto& d : f.devices) d.caught_up_ns = 0;
  Stream st;
  for (size_t r = 0; r < f.routes.size(); ++r) st.routes.push_back(r);
  st.rate = o.storm_rate;
  st.t0 = NowNs();
  st.stop = INT64_MAX;
  f.streams.push_back(st);
  f.win_start = st.t0;
  f.win_end = INT64_MAX;
  f.PumpUntil([] { return false; }, NowNs() + static_cast<int64_t>(o.before_s * 1e9), "");
  // The storm: every device connection dropped at once.
  int64_t t_drop = NowNs();
  f.dropped_phase = true;
  for (size_t i = 0; i < o.devices; ++i) {
    Device& d = f.devices[i];
    f.loop().Abort(d.conn);
    d.authed = false;
    d.syncing = false;
    d.pending.clear();
    d.dropped_ns = t_drop;
    d.attempt = 0;
    d.reconnect_at = t_drop + BackoffDelayMs(f.backoff, 0, f.rng) * kMs;
  }
  auto all_caught_up = [&] {
    for (size_t i = 0; i < o.devices; ++i) {
      if (!f.devices[i].caught_up_ns) return false;
    }
    return true;
  };
  bool ok = f.PumpUntil(all_caught_up, t_drop + 120 * kSec, "");
  int64_t t_caught = NowNs();
  // Keep sending a little, then stop and check every message arrived.
  f.PumpUntil([] { return false; }, NowNs() + static_cast<int64_t>(o.after_s * 1e9), "");
  f.streams[0].stop = NowNs();
  int64_t stop = NowNs();
  f.PumpUntil([&] {
    return std::all_of(f.msgs.begin(), f.msgs.end(), [](const Msg& m) { return m.arrived != 0; });
  }, stop + static_cast<int64_t>(o.drain_s * 1e9), "");
  f.PumpUntil([] { return false; }, NowNs() + 100 * kMs, "");
  size_t lost = 0;
  for (auto& m : f.msgs) lost += m.arrived ? 0 : 1;
  std::vector<int64_t> caught, online, attempts;
  for (size_t i = 0; i < o.devices; ++i) {
    auto& d = f.devices[i];
    if (d.caught_up_ns) caught.push_back(d.caught_up_ns - t_drop);
    if (d.online_ns) online.push_back(d.online_ns - t_drop);
  }
  Pct pc = Percentiles(caught), po = Percentiles(online);
  double storm_s = static_cast<double>(t_caught - t_drop) / 1e9;
  if (!ok) failures->push_back("storm: " + std::to_string(o.devices - caught.size()) + " devices never caught up");
  if (lost) failures->push_back("storm: " + std::to_string(lost) + " of " + std::to_string(f.msgs.size()) + " messages never arrived");
  if (f.stats.errors) failures->push_back("storm: " + std::to_string(f.stats.errors) + " requests failed, e.g. " + f.stats.error_samples[0]);
  std::printf("parley-bench storm: %zu devices (set-up %.1f s), a sender at %.0f msgs/s to them; all dropped at once\n",
              o.devices, connect_s, o.storm_rate);
  std::printf("  every device caught up %.3f s after the drop (online: p50 %.0f ms, max %.0f ms; caught up: p50 %.0f ms, p99 %.0f ms)\n",
              storm_s, po.p50, po.max, pc.p50, pc.p99);
  std::printf("  %zu reconnect attempts, %zu sync pages, %zu messages via sync; %zu of %zu messages arrived\n",
              f.stats.reconnects, f.stats.sync_pages, f.stats.synced_messages, f.msgs.size() - lost, f.msgs.size());
  return {{"devices", o.devices}, {"rate", o.storm_rate}, {"caught_up_s", storm_s}, {"all_caught_up", ok},
          {"online_after_drop", ToJson(po)}, {"caught_up_after_drop", ToJson(pc)}, {"reconnect_attempts", f.stats.reconnects},
          {"sync_pages", f.stats.sync_pages}, {"messages", f.msgs.size()}, {"lost", lost}, {"errors", f.stats.errors}};
}

json ScenarioBackfill(const Common&, Server& s, const Opts& o, std::vector<std::string>* failures) {
  Fleet f(s.port);
  f.AddGroups(1);
  auto users = Provision(s, "hist_", 2);
  for (auto& u : users) {
    f.devices.emplace_back();
    f.devices.back().user = u;
  }
  f.devices[1].track_stream = true;
  f.ConnectAll(0, 1);  // the sender only: the reader has never connected
  f.routes.push_back({0, 1, 0});
  f.OpenConversations();
  f.win_start = 0;
  f.win_end = INT64_MAX;
  int64_t t0 = NowNs();
  f.backfill_left = o.history;
  f.backfill_routes = {0};
  f.PumpUntil([&] { return f.backfill_left == 0 && f.backfill_inflight == 0; }, NowNs() + 600 * kSec, "the history written");
  double write_s = static_cast<double>(NowNs() - t0) / 1e9;
  // The fresh device: connect, auth, sync from 0 until has_more is false.
  int64_t t1 = NowNs();
  f.ConnectAll(1, 2);
  f.PumpUntil([&] { return f.devices[1].caught_up_ns != 0; }, NowNs() + 600 * kSec, "the backfill");
  double read_s = static_cast<double>(f.devices[1].caught_up_ns - t1) / 1e9;
  size_t got = f.stats.synced_messages;
  size_t lost = 0;
  for (auto& m : f.msgs) lost += m.arrived ? 0 : 1;
  if (got != static_cast<size_t>(o.history) || lost) {
    failures->push_back("backfill: the device got " + std::to_string(got) + " of " + std::to_string(o.history) + " messages");
  }
  if (f.stats.errors) failures->push_back("backfill: " + std::to_string(f.stats.errors) + " requests failed, e.g. " + f.stats.error_samples[0]);
  double rate = static_cast<double>(got) / read_s;
  std::printf("parley-bench backfill: %lld messages written in %.1f s (%.0f msgs/s, %zu in flight)\n",
              static_cast<long long>(o.history), write_s, static_cast<double>(o.history) / write_s, kBackfillWindow);
  std::printf("  a fresh device synced %zu messages (%zu pages of %d) in %.2f s: %.0f msgs/s\n", got, f.stats.sync_pages,
              kSyncLimit, read_s, rate);
  if (f.stats.refused) {
    std::printf("  %zu sends refused while parleyd's store was behind (--max-queued-writes) and sent again after its retry_after_ms\n",
                f.stats.refused);
  }
  return {{"history", o.history}, {"write_s", write_s}, {"write_rate", static_cast<double>(o.history) / write_s},
          {"read_s", read_s}, {"backfill_rate", rate}, {"received", got}, {"sync_pages", f.stats.sync_pages},
          {"refused", f.stats.refused}};
}

// ---------------------------------------------------------------------------
// Scale of history (issue 12 item 10; docs/benchmarks.md, "Scale of
// history"). One store filled in steps (--small, then ×10 each step, up to
// --history messages); at each step the same probes run, one after the
// other so that they do not disturb each other:
//   send     the pairs, open loop at --rate for --duration (RunPhase): send
//            -> `sent` response and send -> arrival at the recipient;
//   history  closed loop (one request in flight) on the long conversation:
//            its newest page, then pages at random depths;
//   sync     closed loop on the fill sender's user stream (it holds every
//            fill message): a device --behind events behind its head syncs
//            to it in pages (each page timed, and the whole catch-up); pages
//            at random depths; a fresh device's first page (after = 0).
// Every answer is checked (right seqs, contiguous, in order, has_more
// right); an error or a wrong page fails the run.
//
// The fill goes from one device (pair 0's first member, "A0") with the
// backfill's 1,000 sends in flight, round robin over --conversations
// conversations: about a tenth to A0's conversation with pair 0's second
// member (the long conversation, which the send probe also measures), the
// rest to conversations with users that never connect (their messages are
// stored, as for a phone that is off). A0's own user stream therefore grows
// by every fill message.

constexpr int kHistoryPageLimit = 50;        // the protocol's default `history` limit
constexpr int kProbeSyncLimit = 200;         // the protocol's default `sync` limit
constexpr size_t kLongShareEvery = 9;        // 1 long-conversation message per 9 others: ~10 %
constexpr int64_t kProbeTimeoutNs = 30 * kSec;   // one probe request answered
constexpr int64_t kFillProgressNs = 10 * kSec;   // a progress line while filling
constexpr int64_t kFillStallNs = 60 * kSec;      // no `sent` for this long: the fill failed
constexpr size_t kProbeFailureSamples = 5;       // wrong answers quoted per run

// The machine's busy time (/proc/stat, all CPUs), ms: minus parleyd's and
// this process's own, what other processes took.
int64_t MachineBusyMs() {
  std::ifstream st("/proc/stat");
  std::string cpu;
  int64_t user = 0, nice = 0, sys = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0;
  if (!(st >> cpu >> user >> nice >> sys >> idle >> iowait >> irq >> softirq >> steal)) return 0;
  return (user + nice + sys + irq + softirq + steal) * 1000 / sysconf(_SC_CLK_TCK);
}

int64_t DirBytes(const std::string& dir) {
  int64_t n = 0;
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec); !ec && it != std::filesystem::recursive_directory_iterator();
       it.increment(ec)) {
    if (it->is_regular_file(ec)) n += static_cast<int64_t>(it->file_size(ec));
  }
  return n;
}

// Closed-loop requests from one device: one in flight, each checked when it
// is answered. `Ask` returns the latency in ns, or -1 after a failure (an
// error frame or a wrong page, recorded).
class Prober {
 public:
  Prober(Fleet& f, Device& d, std::vector<std::string>* failures) : f_(f), d_(d), failures_(failures) {
    f_.on_probe = [this](Device&, int64_t tag, bool ok, simdjson::dom::element r) {
      if (tag != tag_) return;
      answered_ns_ = NowNs();
      answered_ = true;
      if (!ok) {
        Fail(what_ + ": " + simdjson::minify(r));
      } else if (check_) {
        std::string why = check_(r);
        if (!why.empty()) Fail(what_ + ": " + why);
        else ok_ = true;
      } else {
        ok_ = true;
      }
    };
  }
  ~Prober() { f_.on_probe = nullptr; }

  // `body` is the request without its envelope, e.g. R"("type":"sync","after":3)".
  int64_t Ask(const std::string& what, const std::string& body, std::function<std::string(simdjson::dom::element)> check) {
    what_ = what;
    check_ = std::move(check);
    answered_ = ok_ = false;
    ++tag_;
    int64_t id = d_.conn.next_id++;
    d_.pending[id] = {Req::kProbe, tag_};
    std::string frame = R"({"v":1,"id":)" + std::to_string(id) + "," + body + "}";
    int64_t t0 = NowNs();
    f_.loop().Send(d_.conn, frame);
    f_.loop().Flush();
    f_.PumpUntil([&] { return answered_; }, t0 + kProbeTimeoutNs, what + " answered");
    return ok_ ? answered_ns_ - t0 : -1;
  }
  size_t failed() const { return failed_; }

 private:
  void Fail(const std::string& why) {
    if (failed_++ < kProbeFailureSamples) failures_->push_back(why.substr(0, 400));
  }
  Fleet& f_;
  Device& d_;
  std::vector<std::string>* failures_;
  std::string what_;
  std::function<std::string(simdjson::dom::element)> check_;
  int64_t tag_ = 0, answered_ns_ = 0;
  bool answered_ = false, ok_ = false;
  size_t failed_ = 0;
};

// A `history` page: messages seq (expected_last - n + 1) .. expected_last
// of `conv`, ascending and contiguous, n = min(limit, expected_last);
// has_more iff seq 1 is not included.
std::string CheckHistoryPage(simdjson::dom::element r, int64_t conv, int64_t expected_last) {
  simdjson::dom::array msgs;
  if (r["messages"].get(msgs)) return "no messages";
  int64_t want_n = std::min<int64_t>(kHistoryPageLimit, expected_last);
  int64_t n = 0, prev = expected_last - want_n;
  for (auto m : msgs) {
    int64_t seq = GetInt(m, "seq", -1);
    if (seq != prev + 1) return "seq " + std::to_string(seq) + " after " + std::to_string(prev);
    if (GetInt(m, "conversation_id") != conv) return "a message of another conversation";
    prev = seq;
    ++n;
  }
  if (n != want_n || prev != expected_last) {
    return std::to_string(n) + " messages ending at seq " + std::to_string(prev) + ", expected " + std::to_string(want_n) +
           " ending at " + std::to_string(expected_last);
  }
  bool more = false;
  if (r["has_more"].get_bool().get(more)) return "no has_more";
  if (more != (expected_last - want_n > 0)) return "has_more wrong";
  return "";
}

// A `sync` page after `after`: user seqs after+1 .. next, contiguous, at
// most the limit; has_more false only at the head; a short page only at
// the end. Stores next and head.
std::string CheckSyncPage(simdjson::dom::element r, int64_t after, int64_t* next, int64_t* head, bool* more) {
  simdjson::dom::array evs;
  if (r["events"].get(evs)) return "no events";
  int64_t prev = after, n = 0;
  for (auto e : evs) {
    int64_t us = GetInt(e, "user_seq", -1);
    if (us != prev + 1) return "user_seq " + std::to_string(us) + " after " + std::to_string(prev);
    prev = us;
    ++n;
  }
  *next = GetInt(r, "next", -1);
  *head = GetInt(r, "head", -1);
  if (r["has_more"].get_bool().get(*more)) return "no has_more";
  if (*next != prev) return "next " + std::to_string(*next) + ", last event " + std::to_string(prev);
  if (n > kProbeSyncLimit) return "more events than the limit";
  if (!*more && *next != *head) return "has_more false at " + std::to_string(*next) + " below head " + std::to_string(*head);
  if (*more && n != kProbeSyncLimit) return "a short page with has_more";
  return "";
}

// The words the search probe looks for: with AppendFillWords' distribution
// (about 8 words a message), one is in roughly 1 of 4 fill messages and one
// in roughly 1 of 5,000.
constexpr uint64_t kSearchFrequentRank = 1;
constexpr uint64_t kSearchRareRank = 4000;
constexpr int kSearchPageLimit = 20;

// A `search_messages` page for `word`: at most the limit, every message's
// body holds a word starting with `word` (the fill's words are lower-case
// ASCII, so folding changes nothing), newest first by (conversation, seq)
// within a conversation; `want_some`: at least one result.
std::string CheckSearchPage(simdjson::dom::element r, const std::string& word, bool want_some) {
  simdjson::dom::array msgs;
  if (r["messages"].get(msgs)) return "no messages";
  size_t n = 0;
  std::map<int64_t, int64_t> last_seq;  // per conversation: the previous result's seq
  for (auto m : msgs) {
    std::string body(GetStr(m, "body"));
    bool found = false;
    for (size_t at = body.find(word); at != std::string::npos && !found; at = body.find(word, at + 1))
      found = at == 0 || body[at - 1] == ' ';
    if (!found) return "a result without \"" + word + "\": " + body;
    int64_t conv = GetInt(m, "conversation_id"), seq = GetInt(m, "seq");
    auto [it, first] = last_seq.emplace(conv, seq);
    if (!first && seq >= it->second) return "results of a conversation not newest first";
    it->second = seq;
    ++n;
  }
  if (n > static_cast<size_t>(kSearchPageLimit)) return "more results than the limit";
  if (want_some && n == 0) return "no result for \"" + word + "\"";
  return "";
}

// The measurements of a probe: JSON key, label.
const std::vector<std::pair<std::string, std::string>> kHistoryFigures = {
    {"send_sent_response", "send -> sent"},
    {"send_arrival", "send -> arrival"},
    {"history_newest", "history, newest page"},
    {"history_random", "history, random depth"},
    {"sync_behind_page", "sync page, behind"},
    {"sync_behind_catch_up", "sync catch-up (behind)"},
    {"sync_random_page", "sync page, random depth"},
    {"sync_fresh_first_page", "sync, fresh first page"},
    {"search_frequent", "search, a frequent word"},
    {"search_rare", "search, a rare word"}};


double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[(v.size() - 1) / 2];
}

constexpr int64_t kSettleSampleNs = 500 * kMs;  // parleyd's CPU sampled this often while settling
constexpr double kSettleBusyShare = 0.10;       // settled: parleyd used less of its core than this
constexpr int64_t kSettleMaxNs = 60 * kSec;     // wait for parleyd to idle at most this long
constexpr int64_t kSettleIndexMaxNs = 30 * 60 * kSec;  // wait for the search backlog at most this long

// The value of one unlabelled metric from parleyd's /metrics, or -1.
double ScrapeMetric(const Server& s, std::string_view name) {
  netutil::HttpRequest req;
  req.method = "GET";
  req.target = "/metrics";
  req.timeout = std::chrono::milliseconds(kHttpTimeoutMs);
  auto r = netutil::HttpExchange(netutil::HttpEndpoint::Loopback(s.port), req);
  if (!r.error.empty() || r.status != 200) return -1;
  std::istringstream in(r.body);
  for (std::string line; std::getline(in, line);) {
    if (line.size() > name.size() && line.compare(0, name.size(), name) == 0 && line[name.size()] == ' ')
      return std::strtod(line.c_str() + name.size() + 1, nullptr);
  }
  return -1;
}

// Keeps the loop running until the search indexer has worked off the fill
// (parley_search_index_backlog is 0: its steps share the store's writer
// with the probes' sends) and then until parleyd is nearly idle (the WAL
// checkpoint runs on a thread of its own); returns the seconds it took.
double Settle(Fleet& f, const Server& s) {
  int64_t t0 = NowNs();
  while (NowNs() - t0 < kSettleIndexMaxNs && ScrapeMetric(s, "parley_search_index_backlog") > 0)
    f.PumpUntil([] { return false; }, NowNs() + kSettleSampleNs, "");
  int64_t t1 = NowNs();
  while (NowNs() - t1 < kSettleMaxNs) {
    int64_t cpu0 = ProcessCpuMs(s.pid), w0 = NowNs();
    f.PumpUntil([] { return false; }, w0 + kSettleSampleNs, "");
    double share = static_cast<double>(ProcessCpuMs(s.pid) - cpu0) / (static_cast<double>(NowNs() - w0) / 1e6);
    if (share < kSettleBusyShare) break;
  }
  return static_cast<double>(NowNs() - t0) / 1e9;
}

struct HistoryOpts {
  int64_t small = 10000;         // the first probe's store size (messages written by the fill)
  size_t conversations = 100;    // fill conversations (the long one included)
  double rate = 1000;            // the send probe's total rate, msgs/s
  int64_t behind = 1000;         // events the syncing device is behind its head
  size_t requests = 1000;        // samples per history / sync measurement
  size_t repeats = 1;            // probe sets per store size (the figures: medians over them)
};

json ScenarioHistory(const Common&, std::vector<Server>& nodes, const Opts& o, const HistoryOpts& h, std::vector<std::string>* failures) {
  Server& s = nodes[0];
  if (h.conversations < 2) SetupFailed("history: --conversations must be at least 2 (the long one and another)");
  Fleet f(s.port);
  f.receipts = o.receipts;
  f.separate_receipts = o.separate_receipts;
  f.heartbeats = true;          // the fill of 10 M messages outlasts parleyd's heartbeat timeout
  f.reconnect_on_close = true;
  f.AddGroups(1);
  AddPairs(f, s, "hpair_", o.pairs);
  for (size_t i = 1; i < f.devices.size(); ++i) f.devices[i].track_stream = true;
  // A0 sends the whole fill: the sync algorithm on its own stream would
  // chase millions of its own events; its figures come from the probes.
  auto others = Provision(s, "hfill_", h.conversations - 1);
  size_t first_other = f.devices.size();
  for (auto& u : others) {
    f.devices.emplace_back();
    f.devices.back().user = u;
  }
  for (size_t i = 0; i < others.size(); ++i) f.routes.push_back({0, first_other + i, 0});
  f.OpenConversations();
  size_t first_other_route = o.pairs;
  AddReverseRoutes(f, 0, o.pairs);
  Stream st;
  st.rate = h.rate;
  for (size_t r = 0; r < o.pairs; ++r) st.routes.push_back(r);
  for (size_t r = o.pairs + others.size(); r < f.routes.size(); ++r) st.routes.push_back(r);
  f.streams.push_back(st);
  for (size_t i = 0; i < others.size(); ++i) {
    if (i % kLongShareEvery == 0) f.backfill_routes.push_back(0);
    f.backfill_routes.push_back(first_other_route + i);
  }
  f.backfill_untracked = true;
  const int64_t long_conv = f.routes[0].conv;
  Device& a0 = f.devices[0];
  std::mt19937_64 rng(12);

  std::vector<int64_t> sizes;
  for (int64_t n = std::min(h.small, o.history); n < o.history; n *= 10) sizes.push_back(n);
  sizes.push_back(o.history);
  std::printf("parley-bench history: a store filled to %s messages over %zu conversations (~1/%zu to the long one);\n"
              "  probes at", std::to_string(o.history).c_str(), h.conversations, kLongShareEvery + 1);
  for (auto n : sizes) std::printf(" %lld", static_cast<long long>(n));
  std::printf(" messages: sends (%zu pairs, %.0f msgs/s, %.1f s), history pages (limit %d), sync (%lld behind, pages of %d)\n",
              o.pairs, h.rate, o.duration_s, kHistoryPageLimit, static_cast<long long>(h.behind), kProbeSyncLimit);

  json probes = json::array();
  double fill_s = 0;
  int64_t fill_cpu_ms = 0;
  for (int64_t target : sizes) {
    // ---- Fill up to `target` (its rate is reported, not a figure).
    int64_t t_fill = NowNs(), cpu_fill0 = ProcessCpuMs(s.pid), start = f.fill_acked;
    f.backfill_left = target - f.fill_acked;
    int64_t last_progress = f.fill_acked, last_progress_ns = NowNs();
    auto filled = [&] { return f.backfill_left == 0 && f.backfill_inflight == 0; };
    while (!filled()) {
      f.PumpUntil(filled, NowNs() + kFillProgressNs, "");
      CheckAlive(nodes);
      if (f.fill_acked != last_progress) {
        last_progress = f.fill_acked;
        last_progress_ns = NowNs();
      } else if (NowNs() - last_progress_ns > kFillStallNs) {
        failures->push_back("history: the fill stalled at " + std::to_string(f.fill_acked) + " messages");
        return {{"history", o.history}, {"probes", probes}};
      }
      if (!filled()) {
        double el = static_cast<double>(NowNs() - t_fill) / 1e9;
        std::printf("  filling: %lld / %lld messages, %.0f msgs/s, data %.2f GB\n", static_cast<long long>(f.fill_acked),
                    static_cast<long long>(target), static_cast<double>(f.fill_acked - start) / el,
                    static_cast<double>(DirBytes(s.dir + "/data")) / 1e9);
      }
    }
    double step_s = static_cast<double>(NowNs() - t_fill) / 1e9;
    fill_s += step_s;
    fill_cpu_ms += ProcessCpuMs(s.pid) - cpu_fill0;
    if (f.fill_acked != target) {
      failures->push_back("history: " + std::to_string(target - f.fill_acked) + " fill sends failed (of " +
                          std::to_string(target) + ")");
    }
    if (target > start) {
      std::printf("  filled to %lld messages: %lld in %.1f s (%.0f msgs/s)\n", static_cast<long long>(target),
                  static_cast<long long>(target - start), step_s, static_cast<double>(target - start) / step_s);
    }

    // ---- Settle: the fill leaves work behind (the WAL checkpoint runs on a
    // thread of its own); the probes measure the store at rest, not that.
    double settle_s = Settle(f, s);
    // ---- Probe, --repeats times; each figure is the median over the
    // repeats (a burst of other processes' load spoils one, not the median).
    json reps = json::array();
    for (size_t rep = 0; rep < h.repeats; ++rep) {
      int64_t cpu0 = ProcessCpuMs(s.pid), self0 = ProcessCpuMs(getpid()), busy0 = MachineBusyMs(), wall0 = NowNs();
      json send = RunPhase(f, nodes, o.warmup_s, o.duration_s, o.drain_s, failures, {"pairs"});
      PrintPhase(send, std::to_string(target));
      CheckAlive(nodes);
      Prober pr(f, a0, failures);
      std::vector<int64_t> hist_newest, hist_random, sync_page, sync_round, sync_random, fresh;
      int64_t conv_last = f.conv_last_seq[long_conv];
      auto history_body = [&](int64_t before) {
        std::string b = R"("type":"history","conversation_id":)" + std::to_string(long_conv) + R"(,"limit":)" +
                        std::to_string(kHistoryPageLimit);
        if (before) b += R"(,"before":)" + std::to_string(before);
        return b;
      };
      for (size_t i = 0; i < h.requests; ++i) {
        int64_t ns = pr.Ask("history (newest)", history_body(0),
                            [&](simdjson::dom::element r) { return CheckHistoryPage(r, long_conv, conv_last); });
        if (ns >= 0) hist_newest.push_back(ns);
      }
      for (size_t i = 0; i < h.requests && conv_last >= 2; ++i) {
        int64_t before = std::uniform_int_distribution<int64_t>(2, conv_last)(rng);
        int64_t ns = pr.Ask("history (before " + std::to_string(before) + ")", history_body(before),
                            [&](simdjson::dom::element r) { return CheckHistoryPage(r, long_conv, before - 1); });
        if (ns >= 0) hist_random.push_back(ns);
      }
      auto sync_body = [](int64_t after) {
        return R"("type":"sync","after":)" + std::to_string(after) + R"(,"limit":)" + std::to_string(kProbeSyncLimit);
      };
      int64_t next = 0, head = 0;
      bool more = false;
      // A fresh device's first page (this also learns the head).
      for (size_t i = 0; i < h.requests; ++i) {
        int64_t ns = pr.Ask("sync (fresh device)", sync_body(0),
                            [&](simdjson::dom::element r) { return CheckSyncPage(r, 0, &next, &head, &more); });
        if (ns >= 0) fresh.push_back(ns);
      }
      // A device `behind` events behind the head catches up, page by page;
      // rounds until `requests` pages were timed.
      int64_t behind = std::min(h.behind, head);
      for (size_t pages = 0; pages < h.requests && behind > 0;) {
        int64_t after = head - behind, round = 0, target_head = head;
        do {
          int64_t at = after;
          int64_t ns = pr.Ask("sync (behind, after " + std::to_string(at) + ")", sync_body(at),
                              [&](simdjson::dom::element r) { return CheckSyncPage(r, at, &next, &head, &more); });
          if (ns < 0) break;
          sync_page.push_back(ns);
          round += ns;
          ++pages;
          after = next;
        } while (more);
        if (after < target_head) failures->push_back("history: a device behind stopped at " + std::to_string(after));
        sync_round.push_back(round);
        if (pr.failed()) break;
      }
      // Pages at random depths of the stream (a device back after a long time).
      for (size_t i = 0; i < h.requests && head > 0; ++i) {
        int64_t after = std::uniform_int_distribution<int64_t>(0, head - 1)(rng);
        int64_t ns = pr.Ask("sync (after " + std::to_string(after) + ")", sync_body(after),
                            [&](simdjson::dom::element r) { return CheckSyncPage(r, after, &next, &head, &more); });
        if (ns >= 0) sync_random.push_back(ns);
      }
      // Message search over A0's conversations (every fill message is
      // A0's): the newest page of a frequent and of a rare word.
      std::vector<int64_t> search_frequent, search_rare;
      for (auto [rank, out] : {std::pair{kSearchFrequentRank, &search_frequent}, std::pair{kSearchRareRank, &search_rare}}) {
        const std::string word = FillWord(rank);
        const bool want_some = rank == kSearchFrequentRank;
        for (size_t i = 0; i < h.requests; ++i) {
          int64_t ns = pr.Ask("search_messages \"" + word + "\"",
                              R"("type":"search_messages","query":")" + word + R"(","limit":)" + std::to_string(kSearchPageLimit),
                              [&](simdjson::dom::element r) { return CheckSearchPage(r, word, want_some); });
          if (ns >= 0) out->push_back(ns);
        }
      }
      double wall = static_cast<double>(NowNs() - wall0) / 1e3 / 1e3;  // ms
      int64_t cpu = ProcessCpuMs(s.pid) - cpu0, self = ProcessCpuMs(getpid()) - self0, busy = MachineBusyMs() - busy0;
      double other_share = std::max<double>(0, static_cast<double>(busy - cpu - self)) / (wall * static_cast<double>(std::thread::hardware_concurrency()));
      int64_t data = DirBytes(s.dir + "/data");
      int64_t stored = f.fill_acked + static_cast<int64_t>(f.msgs.size());
      const json& g = send["groups"]["pairs"];
      json p = {{"fill_messages", target},
                {"messages_in_store", stored},
                {"long_conversation_messages", conv_last},
                {"stream_head", head},
                {"data_bytes", data},
                {"data_bytes_per_message", static_cast<double>(data) / static_cast<double>(stored)},
                {"parleyd_rss", ReadStatusKb(s.pid, "VmRSS")},
                {"send", send},
                {"send_sent_response", g["sent_response"]},
                {"send_arrival", g["latency"]},
                {"history_newest", ToJson(Percentiles(hist_newest))},
                {"history_random", ToJson(Percentiles(hist_random))},
                {"sync_behind_page", ToJson(Percentiles(sync_page))},
                {"sync_behind_catch_up", ToJson(Percentiles(sync_round))},
                {"sync_random_page", ToJson(Percentiles(sync_random))},
                {"sync_fresh_first_page", ToJson(Percentiles(fresh))},
                {"search_frequent", ToJson(Percentiles(search_frequent))},
                {"search_rare", ToJson(Percentiles(search_rare))},
                {"parleyd_core_busy", static_cast<double>(cpu) / wall},
                {"other_processes_machine_share", other_share}};
      std::printf("  probe at %lld messages: long conversation %lld messages, stream head %lld, data %.1f MB (%.0f B/message), "
                  "parleyd RSS %.1f MB, other processes %.0f %% of the machine\n",
                  static_cast<long long>(target), static_cast<long long>(conv_last), static_cast<long long>(head),
                  static_cast<double>(data) / 1e6, p["data_bytes_per_message"].get<double>(),
                  static_cast<double>(p["parleyd_rss"].get<int64_t>()) / 1e6, 100 * other_share);
      reps.push_back(p);
    }
    json p = reps.back();
    for (auto& [key, label] : kHistoryFigures) {
      (void)label;
      std::vector<double> p50s, p99s;
      size_t n = 0;
      for (auto& r : reps) {
        p50s.push_back(r[key]["p50_ms"]);
        p99s.push_back(r[key]["p99_ms"]);
        n += r[key]["n"].get<size_t>();
      }
      p[key] = {{"p50_ms", Median(p50s)}, {"p99_ms", Median(p99s)}, {"n", n}, {"repeats", reps.size()}};
    }
    p.erase("send");
    p["repeats"] = reps;
    p["settle_s"] = settle_s;
    // The medians at once: a run stopped before the end keeps them in its log.
    std::printf("  at %lld messages (settled in %.1f s; median of %zu), p50/p99 ms:", static_cast<long long>(target), settle_s, reps.size());
    for (auto& [key, label] : kHistoryFigures) {
      std::printf(" %s %.2f/%.1f;", label.c_str(), p[key]["p50_ms"].get<double>(), p[key]["p99_ms"].get<double>());
    }
    std::printf("\n");
    probes.push_back(p);
  }

  // ---- The table: p50 / p99 per probe size, and the ratio last / first.
  const auto& rows = kHistoryFigures;
  std::printf("\n  %-26s", "p50 / p99 ms at");
  for (auto& p : probes) std::printf(" %20lld", static_cast<long long>(p["fill_messages"].get<int64_t>()));
  std::printf("   ratio last/first p50, p99\n");
  json ratios = json::object();
  for (auto& [key, label] : rows) {
    std::printf("  %-26s", label.c_str());
    for (auto& p : probes) std::printf("    %7.3f / %7.3f", p[key]["p50_ms"].get<double>(), p[key]["p99_ms"].get<double>());
    if (!probes.empty()) {
      const json& a = probes.front()[key];
      const json& b = probes.back()[key];
      auto ratio = [](double x, double y) { return x > 0 ? y / x : 0.0; };
      double r50 = ratio(a["p50_ms"], b["p50_ms"]), r99 = ratio(a["p99_ms"], b["p99_ms"]);
      ratios[key] = {{"p50", r50}, {"p99", r99}};
      std::printf("   x%.2f, x%.2f", r50, r99);
    }
    std::printf("\n");
  }
  std::printf("  fill: %lld messages in %.1f s (%.0f msgs/s, %zu in flight, parleyd %.0f us CPU per message)\n",
              static_cast<long long>(f.fill_acked), fill_s, static_cast<double>(f.fill_acked) / fill_s, kBackfillWindow,
              f.fill_acked ? 1000.0 * static_cast<double>(fill_cpu_ms) / static_cast<double>(f.fill_acked) : 0.0);
  size_t lost = FinalCheck(f, failures);
  return {{"history", o.history},
          {"conversations", h.conversations},
          {"pairs", o.pairs},
          {"rate", h.rate},
          {"behind", h.behind},
          {"requests", h.requests},
          {"repeats", h.repeats},
          {"history_page_limit", kHistoryPageLimit},
          {"sync_page_limit", kProbeSyncLimit},
          {"fill", {{"messages", f.fill_acked}, {"seconds", fill_s}, {"rate", static_cast<double>(f.fill_acked) / fill_s},
                    {"parleyd_cpu_us_per_message", f.fill_acked ? 1000.0 * static_cast<double>(fill_cpu_ms) / static_cast<double>(f.fill_acked) : 0.0}}},
          {"probes", probes},
          {"ratios", ratios},
          {"data_bytes", probes.empty() ? 0 : probes.back()["data_bytes"].get<int64_t>()},
          {"lost", lost},
          {"closed", f.stats.closed},
          {"errors", f.stats.errors}};
}

// Idle: worker processes hold the connections. Worker: `--worker-idle
// PORTS TOKENS FIRST COUNT TIMEOUT_S`; PORTS is the nodes' ports,
// comma-separated; the device with global number i connects to
// PORTS[i % nodes]; all must authenticate within TIMEOUT_S.
int RunIdleWorker(const std::string& ports_csv, const std::string& tokens_file, size_t first, size_t count, double timeout_s) {
  RaiseFileLimit();
  std::vector<uint16_t> ports;
  {
    std::stringstream in(ports_csv);
    std::string tok;
    while (std::getline(in, tok, ',')) ports.push_back(static_cast<uint16_t>(std::stoi(tok)));
  }
  if (ports.empty()) {
    std::cerr << "worker: no ports\n";
    return 2;
  }
  Fleet f(ports[0]);
  f.heartbeats = true;
  {
    std::ifstream in(tokens_file);
    std::string line;
    for (size_t i = 0; std::getline(in, line); ++i) {
      if (i >= first && i < first + count) {
        f.devices.emplace_back();
        f.devices.back().user = {"idle" + std::to_string(i), line};
        f.devices.back().conn.port = ports[i % ports.size()];
      }
    }
  }
  if (f.devices.size() != count) {
    std::cerr << "worker: too few tokens\n";
    return 2;
  }
  // A connection closed during set-up (e.g. by parleyd's heartbeat timeout
  // while this process or the node was starved of CPU) is not retried: the
  // run fails at once, saying why, instead of waiting for the deadline.
  for (size_t i = 0; i < count; ++i) f.to_connect.push_back(i);
  f.PumpUntil([&] { return f.authed >= count || f.stats.closed > 0; }, NowNs() + static_cast<int64_t>(timeout_s * 1e9),
              "devices authenticated");
  if (f.stats.closed) {
    std::cerr << "parley-bench idle worker: " << f.stats.closed << " connections closed during set-up (" << f.authed << " of "
              << count << " authenticated), e.g. " << f.stats.close_samples[0] << "\n";
    return 2;
  }
  std::cout << "ready" << std::endl;
  f.loop().WatchExtra(0);
  while (true) {
    int64_t next = f.Tick(NowNs());
    f.loop().Poll(next - NowNs());
    if (f.loop().extra_ready()) break;
  }
  size_t open = f.loop().open_conns();
  std::vector<size_t> open_by_node(ports.size());
  for (size_t j = 0; j < f.devices.size(); ++j) {
    if (f.devices[j].conn.state == Conn::State::kOpen) ++open_by_node[(first + j) % ports.size()];
  }
  std::cout << json{{"open", open}, {"open_by_node", open_by_node}, {"closed", f.stats.closed}, {"pings", f.stats.pings},
                    {"errors", f.stats.errors}, {"close_samples", f.stats.close_samples}}
                   .dump()
            << std::endl;
  _exit(0);
}

// The machine's kernel memory that idle connections cost, read before and
// after (docs/benchmarks.md, "Cluster scale", what is counted). -1: not
// readable.
struct KernelMem {
  int64_t sockets_used = -1;   // /proc/net/sockstat "sockets: used" (this network namespace)
  int64_t tcp_inuse = -1;      // /proc/net/sockstat "TCP: inuse" (this network namespace)
  int64_t tcp_mem_bytes = -1;  // /proc/net/sockstat "TCP: mem" pages x page size (TCP buffer memory, the machine's)
  int64_t slab_bytes = -1;     // /proc/meminfo "Slab" (every kernel object cache of the machine)
  std::map<std::string, int64_t> caches;  // /proc/slabinfo: active objects x object size, per socket-related cache
};

// The kernel object caches one TCP connection's end fills: its socket
// (TCP), the socket's inode and dentry, its file, and its epoll item.
const char* const kSocketCaches[] = {"TCP", "sock_inode_cache", "dentry", "filp", "eventpoll_epi", "eventpoll_pwq"};

KernelMem ReadKernelMem() {
  KernelMem k;
  {
    std::ifstream in("/proc/net/sockstat");
    std::string line;
    while (std::getline(in, line)) {
      std::istringstream s(line);
      std::string head, key;
      int64_t v = 0;
      s >> head;
      while (s >> key >> v) {
        if (head == "sockets:" && key == "used") k.sockets_used = v;
        if (head == "TCP:" && key == "inuse") k.tcp_inuse = v;
        if (head == "TCP:" && key == "mem") k.tcp_mem_bytes = v * sysconf(_SC_PAGESIZE);
      }
    }
  }
  {
    std::ifstream in("/proc/meminfo");
    std::string key;
    int64_t kb = 0;
    std::string unit;
    while (in >> key >> kb) {
      std::getline(in, unit);
      if (key == "Slab:") k.slab_bytes = kb * 1024;
    }
  }
  {
    std::ifstream in("/proc/slabinfo");
    std::string line;
    while (std::getline(in, line)) {
      std::istringstream s(line);
      std::string name;
      int64_t active = 0, total = 0, size = 0;
      if (!(s >> name >> active >> total >> size)) continue;
      for (const char* c : kSocketCaches) {
        if (name == c) k.caches[name] = active * size;
      }
    }
  }
  return k;
}

// (after - before) / n, or null when either is unknown.
json PerConn(int64_t before, int64_t after, size_t n) {
  if (before < 0 || after < 0 || n == 0) return nullptr;
  return static_cast<double>(after - before) / static_cast<double>(n);
}

json ScenarioIdle(const Common& c, std::vector<Server>& nodes, const Opts& o, std::vector<std::string>* failures) {
  Server& s = nodes[0];
  size_t n_nodes = nodes.size();
  rlim_t files = RaiseFileLimit();
  size_t cap = std::min<size_t>(kMaxFilesPerProcess, files) - kFdReserve;
  // Each node holds its share of the connections: within its file limit,
  // and within the ephemeral ports towards its one address (every client
  // socket to 127.0.0.1:PORT needs its own local port).
  size_t per_node = (o.connections + n_nodes - 1) / n_nodes;
  size_t min_nodes = (o.connections + cap - 1) / cap;
  if (per_node > cap) {
    SetupFailed("idle: " + std::to_string(o.connections) + " connections over " + std::to_string(n_nodes) + " node(s) is " +
                std::to_string(per_node) + " per node, more than a process's file limit allows (" + std::to_string(cap) +
                " sockets): use --nodes " + std::to_string(min_nodes) + " or more");
  }
  {
    std::ifstream in("/proc/sys/net/ipv4/ip_local_port_range");
    size_t lo = 0, hi = 0;
    if (in >> lo >> hi && hi >= lo) {
      size_t range = hi - lo + 1;
      if (per_node + kPortReserve > range) {
        SetupFailed("idle: " + std::to_string(per_node) + " connections per node, but the ephemeral port range (" +
                    std::to_string(lo) + "-" + std::to_string(hi) + ") gives at most " + std::to_string(range - kPortReserve) +
                    " per destination port: use more nodes or widen net.ipv4.ip_local_port_range");
      }
    }
  }
  size_t per = o.per_process ? std::min(o.per_process, cap) : cap;
  size_t procs = (o.connections + per - 1) / per;
  per = (o.connections + procs - 1) / procs;
  auto users = Provision(s, "idle_", o.connections);
  std::string tokens_file = c.work_dir + "/idle_tokens";
  {
    std::ofstream out(tokens_file);
    for (auto& u : users) out << u.token << "\n";
  }
  std::string ports_csv;
  for (auto& n : nodes) ports_csv += (ports_csv.empty() ? "" : ",") + std::to_string(n.port);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  std::vector<int64_t> rss0(n_nodes), anon0(n_nodes), rss1(n_nodes), anon1(n_nodes);
  for (size_t k = 0; k < n_nodes; ++k) {
    rss0[k] = ReadStatusKb(nodes[k].pid, "VmRSS");
    anon0[k] = ReadStatusKb(nodes[k].pid, "RssAnon");
  }
  int64_t redis0 = c.redis_pid > 0 ? ReadStatusKb(c.redis_pid, "VmRSS") : -1;
  KernelMem km0 = ReadKernelMem();
  std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  std::vector<Child> workers;
  int64_t t0 = NowNs();
  for (size_t first = 0; first < o.connections; first += per) {
    size_t n = std::min(per, o.connections - first);
    workers.push_back(SpawnOrFail({self, "--worker-idle", ports_csv, tokens_file, std::to_string(first), std::to_string(n),
                                   std::to_string(o.setup_timeout_s)},
                                  true, ""));
  }
  for (auto& w : workers) {
    // A little longer than the worker's own deadline, so that it can say why.
    if (w.ReadLine(static_cast<int>((o.setup_timeout_s + 30) * 1000)) != "ready") {
      SetupFailed("an idle worker's connections did not all authenticate (its message above; --setup-timeout " +
                  std::to_string(static_cast<int64_t>(o.setup_timeout_s)) + " s)");
    }
  }
  double connect_s = static_cast<double>(NowNs() - t0) / 1e9;
  std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<int64_t>(o.hold_s * 1000)));
  for (size_t k = 0; k < n_nodes; ++k) {
    rss1[k] = ReadStatusKb(nodes[k].pid, "VmRSS");
    anon1[k] = ReadStatusKb(nodes[k].pid, "RssAnon");
  }
  int64_t redis1 = c.redis_pid > 0 ? ReadStatusKb(c.redis_pid, "VmRSS") : -1;
  KernelMem km1 = ReadKernelMem();
  size_t open = 0, closed = 0, pings = 0, errors = 0;
  std::vector<size_t> open_by_node(n_nodes);
  for (auto& w : workers) {
    if (write(w.in, "stop\n", 5) != 5) SetupFailed("worker pipe");
    json r = json::parse(w.ReadLine(30000), nullptr, false);
    if (!r.is_object()) SetupFailed("an idle worker gave no report");
    open += r.value("open", size_t{0});
    closed += r.value("closed", size_t{0});
    pings += r.value("pings", size_t{0});
    errors += r.value("errors", size_t{0});
    for (size_t k = 0; k < n_nodes && k < r["open_by_node"].size(); ++k) open_by_node[k] += r["open_by_node"][k].get<size_t>();
    if (r.value("closed", size_t{0})) std::cerr << "closes: " << r["close_samples"].dump() << "\n";
    waitpid(w.pid, nullptr, 0);
  }
  int64_t rss_delta = 0, anon_delta = 0;
  json per_node_json = json::array();
  for (size_t k = 0; k < n_nodes; ++k) {
    rss_delta += rss1[k] - rss0[k];
    anon_delta += anon1[k] - anon0[k];
    per_node_json.push_back({{"node", k}, {"port", nodes[k].port}, {"open_at_end", open_by_node[k]}, {"rss_before", rss0[k]},
                             {"rss_after", rss1[k]}, {"bytes_per_connection", PerConn(rss0[k], rss1[k], open_by_node[k])},
                             {"anon_bytes_per_connection", PerConn(anon0[k], anon1[k], open_by_node[k])}});
  }
  double per_conn = static_cast<double>(rss_delta) / static_cast<double>(o.connections);
  double per_conn_anon = static_cast<double>(anon_delta) / static_cast<double>(o.connections);
  if (open != o.connections || closed) {
    failures->push_back("idle: " + std::to_string(open) + " of " + std::to_string(o.connections) + " connections open at the end, " +
                        std::to_string(closed) + " closed");
  }
  if (errors) failures->push_back("idle: " + std::to_string(errors) + " requests failed");
  // Kernel: both ends of every connection live on this machine (the client
  // socket in a worker, the server socket in parleyd) and hold the same
  // objects, so the server's share is half of the measured difference.
  json caches = json::object();
  int64_t caches_delta = 0;
  bool caches_known = !km0.caches.empty() && !km1.caches.empty();
  for (const char* name : kSocketCaches) {
    auto a = km0.caches.find(name), b = km1.caches.find(name);
    if (a == km0.caches.end() || b == km1.caches.end()) continue;
    caches[name] = PerConn(a->second, b->second, o.connections);
    caches_delta += b->second - a->second;
  }
  json kernel = {{"sockets_used_delta", km0.sockets_used >= 0 ? json(km1.sockets_used - km0.sockets_used) : json(nullptr)},
                 {"tcp_inuse_delta", km0.tcp_inuse >= 0 ? json(km1.tcp_inuse - km0.tcp_inuse) : json(nullptr)},
                 {"tcp_buffer_bytes_per_connection_both_ends", PerConn(km0.tcp_mem_bytes, km1.tcp_mem_bytes, o.connections)},
                 {"slab_bytes_per_connection_both_ends", PerConn(km0.slab_bytes, km1.slab_bytes, o.connections)},
                 {"socket_caches_bytes_per_connection_both_ends", caches_known ? json(static_cast<double>(caches_delta) / static_cast<double>(o.connections)) : json(nullptr)},
                 {"socket_caches", caches}};
  json redis = nullptr;
  if (redis0 >= 0 && redis1 >= 0) {
    redis = {{"rss_before", redis0}, {"rss_after", redis1}, {"bytes_per_connection", PerConn(redis0, redis1, o.connections)}};
  }
  std::printf("parley-bench idle: %zu authenticated connections to %zu parleyd node%s in %zu worker processes (connected in %.1f s), held %.0f s, %zu heartbeats\n",
              o.connections, n_nodes, n_nodes > 1 ? "s" : "", workers.size(), connect_s, o.hold_s, pings);
  if (n_nodes > 1) {
    for (auto& n : per_node_json) {
      std::printf("  node %zu: %zu connections, RSS %.1f -> %.1f MB\n", n["node"].get<size_t>(), n["open_at_end"].get<size_t>(),
                  static_cast<double>(n["rss_before"].get<int64_t>()) / 1e6, static_cast<double>(n["rss_after"].get<int64_t>()) / 1e6);
    }
  }
  std::printf("  parleyd RSS %s%.1f -> %.1f MB: %.0f bytes per connection (anonymous: %.0f bytes)\n", n_nodes > 1 ? "(all nodes) " : "",
              static_cast<double>(std::accumulate(rss0.begin(), rss0.end(), int64_t{0})) / 1e6,
              static_cast<double>(std::accumulate(rss1.begin(), rss1.end(), int64_t{0})) / 1e6, per_conn, per_conn_anon);
  auto show = [](const json& v) { return v.is_null() ? std::string("n/a") : std::to_string(std::llround(v.get<double>())); };
  std::printf("  kernel, both ends of a connection (client and server socket on this machine): socket caches %s bytes, all slab %s bytes, TCP buffers %s bytes; %s TCP sockets more in use\n",
              show(kernel["socket_caches_bytes_per_connection_both_ends"]).c_str(), show(kernel["slab_bytes_per_connection_both_ends"]).c_str(),
              show(kernel["tcp_buffer_bytes_per_connection_both_ends"]).c_str(),
              kernel["tcp_inuse_delta"].is_null() ? "n/a" : std::to_string(kernel["tcp_inuse_delta"].get<int64_t>()).c_str());
  if (!redis.is_null()) {
    std::printf("  redis-server RSS %.1f -> %.1f MB: %s bytes per connection\n", static_cast<double>(redis0) / 1e6,
                static_cast<double>(redis1) / 1e6, show(redis["bytes_per_connection"]).c_str());
  }
  return {{"connections", o.connections}, {"nodes", n_nodes}, {"processes", workers.size()}, {"hold_s", o.hold_s}, {"heartbeats", pings},
          {"connect_s", connect_s},
          {"rss_before", std::accumulate(rss0.begin(), rss0.end(), int64_t{0})}, {"rss_after", std::accumulate(rss1.begin(), rss1.end(), int64_t{0})},
          {"bytes_per_connection", per_conn}, {"anon_bytes_per_connection", per_conn_anon}, {"per_node", per_node_json},
          {"kernel", kernel}, {"redis", redis}, {"open_at_end", open}, {"closed", closed}};
}

}  // namespace
}  // namespace parley::bench

int main(int argc, char** argv) {
  using namespace parley::bench;
  signal(SIGPIPE, SIG_IGN);
  setvbuf(stdout, nullptr, _IOLBF, 0);  // progress lines appear as they are printed, also into a pipe
  if (argc == 7 && std::string(argv[1]) == "--worker-idle") {
    return RunIdleWorker(argv[2], argv[3], std::stoul(argv[4]), std::stoul(argv[5]), std::stod(argv[6]));
  }
  Common c;
  Opts o;
  CLI::App app{"parley-bench: parleyd's load generator (docs/benchmarks.md, \"Load generator\")"};
  app.require_subcommand(1);
  // scripts/bench.sh passes its defaults first and the user's arguments
  // after them: the last value given wins.
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  app.fallthrough();  // the common options may also follow the scenario
  app.add_option("--parleyd", c.parleyd, "path of the parleyd binary to start")->required();
  app.add_option("--server-cpu", c.server_cpu, "pin parleyd (every thread) to this CPU with taskset");
  app.add_option("--load-cpu", c.load_cpu, "pin this process (and its workers) to this CPU");
  app.add_option("--work-dir", c.work_dir, "directory for parleyd's data and log (default: a new temporary one, removed)");
  app.add_option("--json", c.json_out, "write the figures to this file as JSON");
  app.add_option("--parleyd-arg", c.parleyd_args, "extra parleyd argument (repeatable)")->allow_extra_args(false);
  app.add_option("--nodes", c.nodes, "cluster shape: start this many parleyd nodes (needs --store and --redis when > 1)")
      ->check(CLI::Range(1, 64));
  app.add_option("--store", c.store, "parleyd's --store for every node: a postgresql:// URL (default: SQLite, one node)");
  app.add_option("--redis", c.redis, "parleyd's --redis for every node: the cluster's Redis, HOST:PORT");
  app.add_option("--redis-pid", c.redis_pid, "redis-server's process id: idle measures its RSS too");
  auto* thr = app.add_subcommand("throughput", "P pairs, open-loop at each offered rate; latency, receipts, saturation");
  auto* rtt = app.add_subcommand("receipt-rtt", "send -> the delivered receipt seen by the sender, at one rate");
  auto* hot = app.add_subcommand("hot", "the pairs' p99 without and with one hot pair beside them");
  for (auto* sc : {thr, rtt, hot}) {
    sc->add_option("--pairs", o.pairs, "conversation pairs (two devices each)")->check(CLI::Range(1, 9000));
    sc->add_option("--rates", o.rates, "offered rates, msgs/s, comma-separated (hot, receipt-rtt: the first)");
    sc->add_option("--warmup", o.warmup_s, "seconds before each measured window");
    sc->add_option("--duration", o.duration_s, "measured seconds per rate");
    sc->add_option("--drain", o.drain_s, "seconds to wait for arrivals after sending stops");
    sc->add_flag("--no-receipts{false}", o.receipts, "recipients send no receipts");
    sc->add_flag("--separate-receipts", o.separate_receipts,
                 "recipients send delivered and read as two requests (default: one, as the SDK does)");
    sc->add_flag("--spin", o.spin,
                 "busy-poll instead of sleeping between sends, so that parleyd's sends need not wake this core "
                 "(the reference prototype's method; docs/benchmarks.md)");
  }
  hot->add_option("--hot-rate", o.hot_rate, "the hot pair's rate, msgs/s");
  auto* idle = app.add_subcommand("idle", "N authenticated idle connections with heartbeats: parleyd's memory per connection");
  idle->add_option("--connections", o.connections, "connections")->check(CLI::Range(1, 1000000));
  idle->add_option("--per-process", o.per_process, "connections per worker process (at most 20,000 files each)");
  idle->add_option("--hold", o.hold_s, "seconds to hold them after all authenticated");
  idle->add_option("--setup-timeout", o.setup_timeout_s, "seconds for every worker's connections to authenticate")
      ->check(CLI::Range(1.0, 86400.0));
  idle->add_option("--heartbeat-interval-ms", c.heartbeat_interval_ms, "parleyd's heartbeat interval (the clients follow it)");
  auto* rec = app.add_subcommand("reconnects", "token reconnects per second (connect, upgrade, auth, drop)");
  rec->add_option("--users", o.reconnect_users, "tokens cycled through");
  rec->add_option("--concurrency", o.concurrency, "reconnects in flight");
  rec->add_option("--warmup", o.warmup_s, "seconds before measuring");
  rec->add_option("--duration", o.duration_s, "measured seconds");
  auto* storm = app.add_subcommand("storm", "drop every device's connection at once; time until all caught up");
  storm->add_option("--devices", o.devices, "devices (one process: at most 19,936)")->check(CLI::Range(1, 19936));
  storm->add_option("--rate", o.storm_rate, "messages/s from the sender to the devices, throughout");
  storm->add_option("--before", o.before_s, "seconds of traffic before the drop");
  storm->add_option("--after", o.after_s, "seconds of traffic after all caught up");
  storm->add_option("--drain", o.drain_s, "seconds to wait for arrivals after sending stops");
  auto* back = app.add_subcommand("backfill", "messages/s streamed to a fresh device with a long history");
  back->add_option("--history", o.history, "messages in the history")->check(CLI::Range(1, 10000000));
  HistoryOpts ho;
  auto* hist = app.add_subcommand("history", "send latency, history paging and sync at a small and a large store (issue 12)");
  hist->add_option("--history", o.history, "messages the store is filled to")->check(CLI::Range(int64_t{1}, int64_t{100000000}));
  hist->add_option("--small", ho.small, "the first probe's size; then x10 per probe up to --history")->check(CLI::Range(int64_t{1}, int64_t{100000000}));
  hist->add_option("--conversations", ho.conversations, "conversations the fill is spread over (the long one included)")
      ->check(CLI::Range(2, 100000));
  hist->add_option("--pairs", o.pairs, "pairs the send probe runs on (pair 0's conversation is the long one)")->check(CLI::Range(1, 9000));
  hist->add_option("--rate", ho.rate, "the send probe's total rate, msgs/s");
  hist->add_option("--warmup", o.warmup_s, "seconds before each send probe's measured window");
  hist->add_option("--duration", o.duration_s, "measured seconds of each send probe");
  hist->add_option("--drain", o.drain_s, "seconds to wait for arrivals after a send probe");
  hist->add_option("--behind", ho.behind, "events the syncing device is behind its head");
  hist->add_option("--requests", ho.requests, "timed requests per history / sync measurement")->check(CLI::Range(1, 1000000));
  hist->add_option("--repeats", ho.repeats, "probe sets per store size; each figure is the median over them")->check(CLI::Range(1, 100));
  hist->add_flag("--no-receipts{false}", o.receipts, "recipients send no receipts");
  CLI11_PARSE(app, argc, argv);

  if (c.load_cpu >= 0) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(c.load_cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0) SetupFailed("--load-cpu: sched_setaffinity failed");
  }
  std::string name = app.get_subcommands()[0]->get_name();
  if (name == "idle" && c.heartbeat_interval_ms == 0) c.heartbeat_interval_ms = 2000;
  if (c.heartbeat_interval_ms) c.heartbeat_timeout_ms = 3 * c.heartbeat_interval_ms;
  RaiseFileLimit();
  bool own_dir = c.work_dir.empty();
  if (own_dir) {
    std::string tmpl = (std::filesystem::temp_directory_path() / "parley-bench.XXXXXX").string();
    if (!mkdtemp(tmpl.data())) SetupFailed("mkdtemp failed");
    c.work_dir = tmpl;
  }
  if (c.nodes > 1 && (c.redis.empty() || c.store.rfind("postgres", 0) != 0)) {
    SetupFailed("--nodes " + std::to_string(c.nodes) + " needs --store postgresql://... and --redis HOST:PORT");
  }
  if (c.nodes > 1 && name != "throughput" && name != "receipt-rtt" && name != "hot" && name != "idle") {
    SetupFailed(name + ": one node only (--nodes > 1: idle, throughput, receipt-rtt, hot)");
  }
  // Every node gets the same arguments (and admin token); users are
  // provisioned through node 0. On a shared store the usernames carry a tag
  // unique to this run, so that runs against one database do not collide.
  std::vector<Server> nodes(static_cast<size_t>(c.nodes));
  std::string admin_token = "parley-bench-" + std::to_string(getpid()) + "-" + std::to_string(NowNs());
  std::string user_tag;
  if (!c.store.empty()) {
    char tag[16];
    std::snprintf(tag, sizeof tag, "r%06llx_", static_cast<unsigned long long>((NowNs() ^ getpid()) & 0xffffff));
    user_tag = tag;
  }
  for (size_t k = 0; k < nodes.size(); ++k) {
    Server& n = nodes[k];
    n.node = static_cast<int>(k);
    n.dir = nodes.size() == 1 ? c.work_dir : c.work_dir + "/node" + std::to_string(k);
    n.admin_token = admin_token;
    n.user_tag = user_tag;
    n.Start(c);
  }
  Server& s = nodes[0];

  std::vector<std::string> failures;
  json result;
  if (name == "throughput") result = ScenarioThroughput(c, nodes, o, false, &failures);
  if (name == "receipt-rtt") {
    o.rates = std::to_string(static_cast<int64_t>(ParseRates(o.rates).at(0)));
    result = ScenarioThroughput(c, nodes, o, true, &failures);
  }
  if (name == "hot") result = ScenarioHot(c, nodes, o, &failures);
  if (name == "idle") result = ScenarioIdle(c, nodes, o, &failures);
  if (name == "reconnects") result = ScenarioReconnects(c, s, o, &failures);
  if (name == "storm") result = ScenarioStorm(c, s, o, &failures);
  if (name == "backfill") result = ScenarioBackfill(c, s, o, &failures);
  if (name == "history") result = ScenarioHistory(c, nodes, o, ho, &failures);

  int64_t hwm = 0, cpu = 0;
  json node_figures = json::array();
  for (auto& n : nodes) {
    std::string which = nodes.size() > 1 ? "parleyd (node " + std::to_string(n.node) + ")" : "parleyd";
    if (!n.Alive()) failures.push_back(which + " died during the run (see " + n.log + ")");
    int64_t h = ReadStatusKb(n.pid, "VmHWM"), u = ProcessCpuMs(n.pid);
    hwm += h;
    cpu += u;
    node_figures.push_back({{"node", n.node}, {"port", n.port}, {"peak_rss", h}, {"cpu_s", static_cast<double>(u) / 1000.0}});
  }
  // Every node is told at once (a cluster drains in parallel), then each
  // is waited for.
  for (auto& n : nodes) {
    if (n.pid > 0) kill(n.pid, SIGTERM);
  }
  for (auto& n : nodes) {
    std::string which = nodes.size() > 1 ? "parleyd (node " + std::to_string(n.node) + ")" : "parleyd";
    parley::ExitStatus st = n.Terminate();
    if (!st.ok()) failures.push_back(which + " on SIGTERM: " + st.Describe() + " (see " + n.log + ")");
    std::ifstream log(n.log);
    std::string line;
    size_t shown = 0;
    while (std::getline(log, line)) {
      if (line.find("level=error") != std::string::npos || line.find("level=critical") != std::string::npos) {
        if (shown++ < 5) failures.push_back(which + " logged: " + line.substr(0, 300));
      }
    }
  }
  if (nodes.size() > 1) {
    std::printf("  parleyd, %zu nodes: peak RSS %.1f MB summed, %.1f s CPU in all\n", nodes.size(), static_cast<double>(hwm) / 1e6,
                static_cast<double>(cpu) / 1000.0);
  } else {
    std::printf("  parleyd: peak RSS %.1f MB, %.1f s CPU in all\n", static_cast<double>(hwm) / 1e6, static_cast<double>(cpu) / 1000.0);
  }
  json out = {{"scenario", name}, {"result", result}, {"parleyd_peak_rss", hwm}, {"parleyd_cpu_s", static_cast<double>(cpu) / 1000.0},
              {"server_cpu", c.server_cpu}, {"load_cpu", c.load_cpu}, {"nodes", node_figures},
              {"store", c.store.empty() ? "sqlite" : "postgresql"}, {"redis", !c.redis.empty()},
              {"failures", failures}, {"ok", failures.empty()}};
  if (!c.json_out.empty()) std::ofstream(c.json_out) << out.dump(2) << "\n";
  // A failed run keeps its directory: the node logs are the evidence.
  if (own_dir && failures.empty()) std::filesystem::remove_all(c.work_dir);
  if (!failures.empty()) std::printf("  logs kept in %s\n", c.work_dir.c_str());
  if (!failures.empty()) {
    for (auto& f : failures) std::fprintf(stderr, "FAIL: %s\n", f.c_str());
    return 1;
  }
  std::printf("  ok\n");
  return 0;
}
