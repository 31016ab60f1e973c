// parley-search-bench: user search on a large directory, through parleyd's
// protocol (docs/benchmarks.md, "User search").
//
// Against a running, empty parleyd (it starts nothing itself):
//   1. provisions --users users through the admin API's bulk path
//      (POST /admin/v1/users/bulk, --batch users per request, no passwords),
//      usernames from a deterministic PRNG over syllables so that short
//      prefixes match many users, most with a display name ("First Last");
//      the searchers and the blockers get device tokens (devices: true);
//   2. makes --blockers users block every searcher (auth with their token,
//      `block`): half of them spread at random over the directory, half a
//      contiguous run in username order (the worst case for search, which
//      steps over blocked candidates one by one);
//   3. runs --queries search_users requests (1-4 letter prefixes of usernames
//      and of display-name words) closed-loop over --connections
//      authenticated connections, one request in flight per connection, and
//      times each request from before it is encoded to after its answer is
//      decoded (the SDK's Call);
//   4. checks every page as it arrives (no user who blocks the searcher,
//      never the searcher, strictly ascending usernames, every user matches
//      the query, `next` consistent), and compares a sample of pages exactly
//      with a model of the directory kept in memory.
// Prints a human table and, with --json FILE, the same figures as JSON.
// Exit codes: 0 ok; 1 a correctness check failed; 2 set-up failed (server
// unreachable, a request failed or timed out, bad options).
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "net/http_client.h"
#include "parley/connection.h"

namespace {

using nlohmann::json;
using SteadyClock = std::chrono::steady_clock;

double SecondsSince(SteadyClock::time_point t0) {
  return std::chrono::duration<double>(SteadyClock::now() - t0).count();
}

// ---------------------------------------------------------------------------
// Options

struct Options {
  std::string host = "127.0.0.1";
  uint16_t port = 0;
  std::string admin_token;
  size_t users = 1'000'000;
  size_t batch = 10'000;
  int bulk_concurrency = 2;
  size_t blockers = 1'000;
  std::string blocker_layout = "mixed";  // spread | clustered | mixed
  size_t queries = 10'000;
  size_t warmup = 500;
  size_t cluster_queries = 200;
  int connections = 1;
  int limit = 20;
  double display_name_fraction = 0.8;
  std::string display_names = "auto";  // auto | bulk | profile | none
  size_t profile_users = 10'000;
  size_t verify_sample = 200;
  uint64_t seed = 42;
  int request_timeout_ms = 10'000;
  int http_timeout_ms = 300'000;
  std::string json_path;
  int server_pid = 0;  // parleyd's pid, to report its CPU time per phase (same host only)
};

// ---------------------------------------------------------------------------
// Deterministic generator (splitmix64).

class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  size_t Below(size_t n) { return static_cast<size_t>(Next() % n); }
  bool Chance(double p) { return static_cast<double>(Next() >> 11) * 0x1.0p-53 < p; }

 private:
  uint64_t state_;
};

// Picks index i of n with probability proportional to 1/(i+1)^s: a few
// syllables and names are common, most are rare, as in real directories.
class Zipf {
 public:
  Zipf(size_t n, double s) {
    double total = 0;
    for (size_t i = 0; i < n; ++i) {
      total += 1.0 / std::pow(static_cast<double>(i + 1), s);
      cdf_.push_back(total);
    }
    for (double& c : cdf_) c /= total;
  }
  size_t Pick(Rng& rng) const {
    double u = static_cast<double>(rng.Next() >> 11) * 0x1.0p-53;
    return static_cast<size_t>(std::lower_bound(cdf_.begin(), cdf_.end(), u) - cdf_.begin());
  }

 private:
  std::vector<double> cdf_;
};

constexpr const char* kSyllables[] = {
    "ma", "ka", "ri", "an", "lo", "el", "jo", "sa", "ti", "mi", "ra", "le", "na", "ko", "be", "da", "vi", "ne",
    "to", "li", "mo", "ar", "en", "is", "ol", "ha", "ze", "fe", "go", "pa", "su", "ni", "re", "ca", "de", "lu",
    "mar", "kel", "tor", "ven", "dan", "sil", "ros", "tam", "ber", "lin", "nor", "qua", "xi", "yo", "wen", "ul",
    "ost", "ivy", "gra", "bri", "cho", "sta", "fro", "pli", "dru", "kra", "zor", "emi"};
constexpr const char* kFirstNames[] = {
    "Maria", "Jose", "Anna", "Mohammed", "Wei", "Olga", "Juan", "Fatima", "Li", "Ahmed", "Elena", "Carlos",
    "Sofia", "Ivan", "Aisha", "Luca", "Emma", "Noah", "Mia", "Liam", "Yuki", "Hiro", "Priya", "Ravi",
    "Chen", "Sara", "David", "Laura", "Pedro", "Ines", "Omar", "Leila", "Tomas", "Eva", "Marco", "Nina",
    "Ali", "Zara", "Jonas", "Lena", "Kofi", "Ama", "Diego", "Lucia", "Arjun", "Meera", "Sven", "Freya",
    "Kenji", "Aiko", "Mateo", "Julia", "Oscar", "Alice", "Bruno", "Clara", "Felix", "Greta", "Hugo", "Iris"};
constexpr const char* kLastNames[] = {
    "Garcia", "Smith", "Wang", "Kumar", "Ivanova", "Silva", "Nguyen", "Kim", "Muller", "Rossi", "Haddad",
    "Okafor", "Tanaka", "Lopez", "Novak", "Jensen", "Costa", "Singh", "Ali", "Chen", "Martin", "Bernard",
    "Dubois", "Moreau", "Kowalski", "Nowak", "Horvath", "Popescu", "Petrov", "Sato", "Suzuki", "Park",
    "Lee", "Santos", "Pereira", "Ferreira", "Alves", "Gomez", "Diaz", "Torres", "Ramirez", "Flores",
    "Cohen", "Levi", "Yilmaz", "Kaya", "Demir", "Hansen", "Larsen", "Berg", "Lind", "Virtanen", "Korhonen",
    "Murphy", "Kelly", "Walsh", "Byrne", "Mensah", "Osei", "Adeyemi", "Mbeki", "Dlamini", "Khan", "Shah",
    "Patel", "Das", "Bose", "Rahman", "Hussain", "Tran", "Pham", "Le", "Vu", "Ortiz", "Vargas", "Castro"};

std::string ToLower(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return out;
}

class NameGenerator {
 public:
  NameGenerator() : syllables_(std::size(kSyllables), 0.9), first_(std::size(kFirstNames), 0.7),
                    last_(std::size(kLastNames), 0.6) {}

  // e.g. "marito", "kelsa_vine", "anna.lo77", "rito_ber1985"; 3-32 of [a-z0-9_.], starting with a letter.
  std::string Username(Rng& rng) const {
    std::string u;
    if (rng.Chance(0.2)) {
      u = ToLower(kFirstNames[first_.Pick(rng)]);
    } else {
      size_t n = 2 + rng.Below(2);
      for (size_t i = 0; i < n; ++i) u += kSyllables[syllables_.Pick(rng)];
    }
    if (rng.Chance(0.45)) {
      u += rng.Chance(0.6) ? '_' : '.';
      if (rng.Chance(0.3)) {
        u += ToLower(kLastNames[last_.Pick(rng)]);
      } else {
        size_t n = 1 + rng.Below(3);
        for (size_t i = 0; i < n; ++i) u += kSyllables[syllables_.Pick(rng)];
      }
    }
    if (rng.Chance(0.5)) u += std::to_string(rng.Below(rng.Chance(0.5) ? 100 : 10000));
    if (u.size() > 28) u.resize(28);
    return u;
  }

  // "First Last", sometimes with a middle name; capitalised (search is case-insensitive).
  std::string DisplayName(Rng& rng) const {
    std::string d = kFirstNames[first_.Pick(rng)];
    if (rng.Chance(0.1)) d += std::string(" ") + kFirstNames[first_.Pick(rng)];
    d += std::string(" ") + kLastNames[last_.Pick(rng)];
    return d;
  }

 private:
  Zipf syllables_, first_, last_;
};

// ---------------------------------------------------------------------------
// The directory as the benchmark made it: the model that pages are checked
// against.

struct User {
  std::string username;
  std::string display;     // as sent (what the server should hold)
  bool has_device = false;  // provisioned with devices: true
  bool blocker = false;
  std::string token;
};

// Word starts in a lower-cased display name, with the store's rule: words are
// runs of [a-z0-9] and bytes >= 0x80 (docs/protocol.md, search_users).
bool IsWordByte(unsigned char ch) { return ch >= 0x80 || (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z'); }

bool DisplayWordStartsWith(std::string_view display, std::string_view q) {
  std::string lc = ToLower(display);
  for (size_t i = 0; i < lc.size(); ++i) {
    bool start = IsWordByte(static_cast<unsigned char>(lc[i])) &&
                 (i == 0 || !IsWordByte(static_cast<unsigned char>(lc[i - 1])));
    if (start && lc.compare(i, q.size(), q) == 0) return true;
  }
  return false;
}

bool Matches(std::string_view username, std::string_view display, std::string_view q_lc) {
  return username.substr(0, q_lc.size()) == q_lc || DisplayWordStartsWith(display, q_lc);
}

struct Model {
  std::vector<User> users;                       // generation (= provisioning) order
  std::vector<uint32_t> sorted;                  // indices in username order
  std::unordered_set<std::string> blocker_names;  // users who block every searcher
  std::vector<size_t> searchers;                 // indices
  size_t canary = 0;

  // The first page the server should answer: ascending username, the first
  // `limit` matching users that are neither the searcher nor a blocker;
  // `more` tells whether another match follows (next != null).
  std::vector<std::string> Expected(std::string_view q_lc, const std::string& searcher, int limit,
                                    bool* more) const {
    std::vector<std::string> out;
    *more = false;
    for (uint32_t i : sorted) {
      const User& u = users[i];
      if (u.username == searcher || u.blocker) continue;
      if (!Matches(u.username, u.display, q_lc)) continue;
      if (out.size() == static_cast<size_t>(limit)) {
        *more = true;
        break;
      }
      out.push_back(u.username);
    }
    return out;
  }
};

// ---------------------------------------------------------------------------
// Statistics

struct LatencyStats {
  size_t n = 0;
  double mean_us = 0, p50_us = 0, p90_us = 0, p99_us = 0, p999_us = 0, max_us = 0;
};

LatencyStats Summarise(std::vector<double> us) {
  LatencyStats s;
  s.n = us.size();
  if (us.empty()) return s;
  std::sort(us.begin(), us.end());
  auto rank = [&](double p) {  // nearest rank
    size_t k = static_cast<size_t>(std::ceil(p * static_cast<double>(us.size())));
    return us[std::min(us.size() - 1, k == 0 ? 0 : k - 1)];
  };
  double sum = 0;
  for (double v : us) sum += v;
  s.mean_us = sum / static_cast<double>(us.size());
  s.p50_us = rank(0.50);
  s.p90_us = rank(0.90);
  s.p99_us = rank(0.99);
  s.p999_us = rank(0.999);
  s.max_us = us.back();
  return s;
}

json ToJson(const LatencyStats& s) {
  return json{{"n", s.n},           {"mean_us", s.mean_us}, {"p50_us", s.p50_us}, {"p90_us", s.p90_us},
              {"p99_us", s.p99_us}, {"p999_us", s.p999_us}, {"max_us", s.max_us}};
}

std::string Ms(double us) {
  char b[32];
  std::snprintf(b, sizeof b, us < 10'000 ? "%.3f" : "%.1f", us / 1000.0);
  return b;
}

std::string Thousands(uint64_t v) {
  std::string digits = std::to_string(v), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out.push_back(',');
    out.push_back(digits[i]);
  }
  return out;
}

// ---------------------------------------------------------------------------
// CPU accounting per phase: parleyd's CPU time (/proc/PID/stat), this
// process's (getrusage) and the whole machine's busy time (/proc/stat, tick
// sampled), so that load from other processes on the machine shows up in the
// report instead of silently inflating the latencies.

struct CpuSnapshot {
  double server_s = 0, self_s = 0, machine_busy_s = 0;
};

CpuSnapshot TakeCpu(int server_pid) {
  CpuSnapshot c;
  const double hz = static_cast<double>(sysconf(_SC_CLK_TCK));
  if (server_pid > 0) {
    std::ifstream f("/proc/" + std::to_string(server_pid) + "/stat");
    std::string line;
    std::getline(f, line);
    size_t p = line.rfind(')');
    if (p != std::string::npos) {
      std::istringstream in(line.substr(p + 2));
      std::string field;
      std::vector<std::string> fields;
      while (in >> field) fields.push_back(field);
      // After "(comm) ": state is field 3 of the man page, utime 14, stime 15.
      if (fields.size() > 12) c.server_s = (std::stod(fields[11]) + std::stod(fields[12])) / hz;
    }
  }
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  c.self_s = static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
             static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
  std::ifstream st("/proc/stat");
  std::string cpu;
  double user = 0, nice = 0, sys = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0;
  if (st >> cpu >> user >> nice >> sys >> idle >> iowait >> irq >> softirq >> steal)
    c.machine_busy_s = (user + nice + sys + irq + softirq + steal) / hz;
  return c;
}

json CpuJson(const CpuSnapshot& a, const CpuSnapshot& b, double wall_s, bool have_server) {
  json j{{"wall_s", wall_s}, {"bench_cpu_s", b.self_s - a.self_s}, {"machine_busy_s", b.machine_busy_s - a.machine_busy_s}};
  if (have_server) {
    j["server_cpu_s"] = b.server_s - a.server_s;
    j["others_cpu_s"] = std::max(0.0, (b.machine_busy_s - a.machine_busy_s) - (b.server_s - a.server_s) -
                                          (b.self_s - a.self_s));
  }
  return j;
}

// ---------------------------------------------------------------------------
// Failures

class Violations {
 public:
  void Add(std::string what) {
    std::lock_guard lock(mu_);
    if (shown_ < 10) {
      std::cerr << "VIOLATION: " << what << "\n";
      ++shown_;
    }
    ++count_;
  }
  size_t count() const {
    std::lock_guard lock(mu_);
    return count_;
  }

 private:
  mutable std::mutex mu_;
  size_t count_ = 0;
  size_t shown_ = 0;
};

// Set-up failures end the process at once, from any thread.
[[noreturn]] void Fatal(const std::string& what) {
  std::cerr << "parley-search-bench: " << what << std::endl;
  std::fflush(stdout);
  std::_Exit(2);
}

// ---------------------------------------------------------------------------
// Protocol helpers

std::unique_ptr<parley::Connection> Authenticated(const Options& o, const std::string& token) {
  parley::ConnectOptions co;
  co.host = o.host;
  co.port = o.port;
  co.timeout_ms = 5000;
  std::string error;
  auto c = parley::Connection::Open(co, &error);
  if (!c) Fatal("cannot connect to " + o.host + ":" + std::to_string(o.port) + ": " + error);
  parley::Reply r = c->Call("auth", json{{"token", token}}, o.request_timeout_ms);
  if (!r.ok) Fatal("auth failed: " + r.code + ": " + r.message);
  return c;
}

// Runs fn(i) for i in [0, n) on `threads` threads.
template <typename Fn>
void ParallelFor(size_t n, int threads, Fn fn) {
  std::atomic<size_t> next{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&] {
      for (size_t i; (i = next.fetch_add(1)) < n;) fn(i);
    });
  for (auto& th : pool) th.join();
}

// ---------------------------------------------------------------------------
// Provisioning

// One bulk request; fills in tokens. Fatal on any failure (the directory
// would not match the model).
void BulkCreate(const Options& o, Model& m, const std::vector<size_t>& idx, bool devices, bool send_display) {
  json users = json::array();
  for (size_t i : idx) {
    json u{{"username", m.users[i].username}};
    if (send_display && !m.users[i].display.empty()) u["display_name"] = m.users[i].display;
    users.push_back(std::move(u));
  }
  json body{{"users", std::move(users)}, {"devices", devices}, {"device_name", "search-bench"}};
  parley::netutil::HttpRequest req;
  req.method = "POST";
  req.target = "/admin/v1/users/bulk";
  req.body = body.dump();
  req.authorization = "Bearer " + o.admin_token;
  req.timeout = std::chrono::milliseconds(o.http_timeout_ms);
  auto r = parley::netutil::HttpExchange({o.host, std::to_string(o.port)}, req);
  if (!r.error.empty()) Fatal("bulk request: " + r.error);
  if (r.status != 200) Fatal("bulk request answered " + std::to_string(r.status) + ": " + r.body);
  json out = json::parse(r.body, nullptr, false);
  if (out.is_discarded() || !out.contains("users") || out["users"].size() != idx.size())
    Fatal("bulk request: unexpected answer");
  for (size_t k = 0; k < idx.size(); ++k) {
    const json& u = out["users"][k];
    if (u.value("username", "") != m.users[idx[k]].username) Fatal("bulk request: answer out of order");
    if (devices) {
      if (!u.contains("token")) Fatal("bulk request: no token for " + m.users[idx[k]].username);
      m.users[idx[k]].token = u["token"].get<std::string>();
      m.users[idx[k]].has_device = true;
    }
  }
}

// Creates the users in `idx` in requests of o.batch, o.bulk_concurrency at a time.
void BulkCreateAll(const Options& o, Model& m, const std::vector<size_t>& idx, bool devices, bool send_display,
                   size_t* requests) {
  size_t n = (idx.size() + o.batch - 1) / o.batch;
  *requests += n;
  std::atomic<size_t> done_users{0};
  auto t0 = SteadyClock::now();
  ParallelFor(n, o.bulk_concurrency, [&](size_t b) {
    std::vector<size_t> part(idx.begin() + static_cast<ptrdiff_t>(b * o.batch),
                             idx.begin() + static_cast<ptrdiff_t>(std::min(idx.size(), (b + 1) * o.batch)));
    BulkCreate(o, m, part, devices, send_display);
    size_t d = done_users.fetch_add(part.size()) + part.size();
    if (idx.size() >= 100'000 && (b + 1) % 10 == 0)
      std::cerr << "  provisioned " << Thousands(d) << " / " << Thousands(idx.size()) << " (" << SecondsSince(t0)
                << " s)\n";
  });
}

// ---------------------------------------------------------------------------
// Search

struct Query {
  std::string text;  // as sent (sometimes capitalised)
  std::string lc;    // lower-cased
  std::string kind;  // "username" | "display" | "cluster"
};

struct PageCheck {
  size_t results = 0;
  bool full = false;
};

// The checks every page gets. Returns "" or what is wrong.
std::string CheckPage(const json& result, const Query& q, const std::string& searcher, const Model& m, int limit,
                      PageCheck* info) {
  if (!result.contains("users") || !result["users"].is_array()) return "no users array";
  const json& users = result["users"];
  if (users.size() > static_cast<size_t>(limit)) return "more users than the limit";
  std::string prev;
  for (const json& u : users) {
    if (!u.contains("username") || !u["username"].is_string()) return "a user without a username";
    std::string name = u["username"].get<std::string>();
    std::string display = u.value("display_name", "");
    if (m.blocker_names.count(name)) return "returned " + name + ", who blocks the searcher " + searcher;
    if (name == searcher) return "returned the searcher itself";
    if (!prev.empty() && !(prev < name)) return "not in ascending username order: " + prev + " then " + name;
    if (!Matches(name, display, q.lc)) return name + " (\"" + display + "\") does not match the query";
    prev = std::move(name);
  }
  const json& next = result.contains("next") ? result["next"] : json();
  if (!next.is_null()) {
    if (!next.is_string()) return "next is neither null nor a string";
    if (users.size() != static_cast<size_t>(limit)) return "next set on a page shorter than the limit";
    if (next.get<std::string>() != prev) return "next is not the last username of the page";
  }
  info->results = users.size();
  info->full = !next.is_null();
  return "";
}

struct Sample {
  size_t query = 0;
  std::string searcher;
  std::vector<std::string> got;
  bool more = false;
};

struct SearchRun {
  std::vector<double> latency_us;  // per query, in query order
  std::vector<PageCheck> pages;
  std::vector<Sample> samples;
  double wall_s = 0;
};

// Runs `queries` closed-loop: connection k sends queries k, k+C, k+2C, ...
// one at a time.
SearchRun RunQueries(const Options& o, const Model& m, std::vector<std::unique_ptr<parley::Connection>>& conns,
                     const std::vector<Query>& queries, const std::unordered_set<size_t>& sample_at,
                     Violations& violations) {
  SearchRun run;
  run.latency_us.assign(queries.size(), 0);
  run.pages.assign(queries.size(), PageCheck{});
  std::mutex sample_mu;
  std::atomic<bool> failed{false};
  std::string failure;
  auto t0 = SteadyClock::now();
  std::vector<std::thread> threads;
  const size_t nconn = conns.size();
  for (size_t k = 0; k < nconn; ++k) {
    threads.emplace_back([&, k] {
      parley::Connection& c = *conns[k];
      const std::string& searcher = m.users[m.searchers[k]].username;
      for (size_t i = k; i < queries.size() && !failed; i += nconn) {
        const Query& q = queries[i];
        auto start = SteadyClock::now();
        parley::Reply r = c.Call("search_users", json{{"query", q.text}, {"limit", o.limit}}, o.request_timeout_ms);
        run.latency_us[i] = std::chrono::duration<double, std::micro>(SteadyClock::now() - start).count();
        if (!r.ok) {
          std::lock_guard lock(sample_mu);
          if (!failed.exchange(true))
            failure = "search_users \"" + q.text + "\": " + r.code + ": " + r.message +
                      (r.code == "rate_limited" ? " (start parleyd with --rate-limit search_per_user=1000000/1000000)"
                                                : "");
          break;
        }
        if (std::string bad = CheckPage(r.result, q, searcher, m, o.limit, &run.pages[i]); !bad.empty())
          violations.Add("query \"" + q.text + "\" by " + searcher + ": " + bad);
        if (sample_at.count(i)) {
          Sample s{i, searcher, {}, run.pages[i].full};
          for (const json& u : r.result["users"]) s.got.push_back(u.value("username", ""));
          std::lock_guard lock(sample_mu);
          run.samples.push_back(std::move(s));
        }
        while (c.NextEvent(0)) {
        }  // searchers get no events in this scenario; never let a queue grow
      }
    });
  }
  for (auto& t : threads) t.join();
  run.wall_s = SecondsSince(t0);
  if (failed) Fatal(failure);
  return run;
}

Query MakeQuery(Rng& rng, const Model& m, size_t directory_size, bool use_display) {
  {
    const User& u = m.users[rng.Below(directory_size)];
    size_t len = 1 + rng.Below(4);
    Query q;
    if (use_display && !u.display.empty() && rng.Chance(0.5)) {
      std::vector<std::string> words;
      std::string w;
      for (char ch : u.display + " ") {
        if (ch == ' ') {
          if (!w.empty()) words.push_back(std::move(w));
          w.clear();
        } else {
          w += ch;
        }
      }
      const std::string& word = words[rng.Below(words.size())];
      q.text = word.substr(0, std::min(len, word.size()));
      q.kind = "display";
    } else {
      q.text = u.username.substr(0, std::min(len, u.username.size()));
      q.kind = "username";
    }
    q.lc = ToLower(q.text);
    // Sometimes flip the case of the first letter: search is case-insensitive.
    if (rng.Chance(0.25) && q.text[0] >= 'a' && q.text[0] <= 'z') q.text[0] = static_cast<char>(q.text[0] - 32);
    else if (rng.Chance(0.25) && q.text[0] >= 'A' && q.text[0] <= 'Z') q.text[0] = static_cast<char>(q.text[0] + 32);
    return q;
  }
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"parley-search-bench: user search on a large directory, through parleyd's protocol"};
  app.add_option("--host", o.host, "parleyd host")->capture_default_str();
  app.add_option("--port", o.port, "parleyd port")->required();
  app.add_option("--admin-token", o.admin_token, "parleyd's --admin-token")->required();
  app.add_option("--users", o.users, "directory size (users created through the bulk path)")->capture_default_str();
  app.add_option("--batch", o.batch, "users per bulk request")->capture_default_str()->check(CLI::Range(1, 1'000'000));
  app.add_option("--bulk-concurrency", o.bulk_concurrency, "bulk requests in flight")
      ->capture_default_str()->check(CLI::Range(1, 16));
  app.add_option("--blockers", o.blockers, "users who block every searcher")->capture_default_str();
  app.add_option("--blocker-layout", o.blocker_layout,
                 "spread (random), clustered (one run in username order) or mixed (half each)")
      ->capture_default_str()->check(CLI::IsMember({"spread", "clustered", "mixed"}));
  app.add_option("--queries", o.queries, "measured search_users requests")->capture_default_str();
  app.add_option("--warmup", o.warmup, "unmeasured (but checked) requests before the measured ones")
      ->capture_default_str();
  app.add_option("--cluster-queries", o.cluster_queries,
                 "extra requests at the prefix of the clustered blockers, reported apart")->capture_default_str();
  app.add_option("--connections", o.connections, "searcher connections (one searcher account each)")
      ->capture_default_str()->check(CLI::Range(1, 64));
  app.add_option("--limit", o.limit, "search_users limit")->capture_default_str()->check(CLI::Range(1, 50));
  app.add_option("--display-name-fraction", o.display_name_fraction, "share of users with a display name")
      ->capture_default_str()->check(CLI::Range(0.0, 1.0));
  app.add_option("--display-names", o.display_names,
                 "auto: through the bulk path if the server keeps them, else set_profile for --profile-users; "
                 "bulk; profile; none")
      ->capture_default_str()->check(CLI::IsMember({"auto", "bulk", "profile", "none"}));
  app.add_option("--profile-users", o.profile_users, "users given a display name by set_profile (profile mode)")
      ->capture_default_str();
  app.add_option("--verify-sample", o.verify_sample, "pages compared exactly with the model")->capture_default_str();
  app.add_option("--seed", o.seed, "PRNG seed (names, layout, queries)")->capture_default_str();
  app.add_option("--request-timeout-ms", o.request_timeout_ms, "timeout of each protocol request")
      ->capture_default_str();
  app.add_option("--http-timeout-ms", o.http_timeout_ms, "timeout of each bulk request")->capture_default_str();
  app.add_option("--json", o.json_path, "write the results as JSON to FILE");
  app.add_option("--server-pid", o.server_pid,
                 "parleyd's pid (same host): report its CPU time, and other processes' load, per phase");
  CLI11_PARSE(app, argc, argv);
  if (o.users < 10) Fatal("--users must be at least 10");
  if (o.blockers > o.users / 2) Fatal("--blockers must be at most half of --users");

  Violations violations;
  Model m;
  NameGenerator names;
  Rng rng(o.seed);

  // ---- The directory, in memory ----
  auto t_gen = SteadyClock::now();
  {
    std::unordered_set<std::string> taken;
    taken.reserve(o.users * 2);
    m.users.reserve(o.users + static_cast<size_t>(o.connections) + 1);
    while (m.users.size() < o.users) {
      User u;
      u.username = names.Username(rng);
      while (u.username.size() < 3 || taken.count(u.username)) u.username += std::to_string(rng.Below(10));
      taken.insert(u.username);
      if (rng.Chance(o.display_name_fraction)) u.display = names.DisplayName(rng);
      m.users.push_back(std::move(u));
    }
    for (int k = 0; k < o.connections; ++k) {
      User u;
      u.username = "searcher_" + std::to_string(k);
      while (taken.count(u.username)) u.username += "x";
      taken.insert(u.username);
      m.searchers.push_back(m.users.size());
      m.users.push_back(std::move(u));
    }
    User canary;
    canary.username = "canary_probe";
    while (taken.count(canary.username)) canary.username += "x";
    canary.display = "Zqxwvprobe Canary";
    m.canary = m.users.size();
    m.users.push_back(std::move(canary));
  }
  m.sorted.resize(m.users.size());
  for (uint32_t i = 0; i < m.sorted.size(); ++i) m.sorted[i] = i;
  std::sort(m.sorted.begin(), m.sorted.end(),
            [&](uint32_t a, uint32_t b) { return m.users[a].username < m.users[b].username; });

  // ---- Blockers: a contiguous run in username order and/or spread ----
  size_t n_cluster = o.blocker_layout == "clustered" ? o.blockers : o.blocker_layout == "mixed" ? o.blockers / 2 : 0;
  std::string cluster_prefix;
  std::vector<size_t> blockers;
  if (n_cluster > 0) {
    // Start at a popular two-letter prefix, a third of the way through the directory.
    std::string anchor;
    for (size_t p = m.sorted.size() / 3; p < m.sorted.size(); ++p)
      if (m.sorted[p] < o.users) {
        anchor = m.users[m.sorted[p]].username;
        break;
      }
    cluster_prefix = anchor.substr(0, 2);
    auto it = std::lower_bound(m.sorted.begin(), m.sorted.end(), cluster_prefix,
                               [&](uint32_t a, const std::string& key) { return m.users[a].username < key; });
    for (; it != m.sorted.end() && blockers.size() < n_cluster; ++it)
      if (*it < o.users) blockers.push_back(*it);
  }
  {
    std::unordered_set<size_t> chosen(blockers.begin(), blockers.end());
    while (blockers.size() < o.blockers) {
      size_t i = rng.Below(o.users);
      if (chosen.insert(i).second) blockers.push_back(i);
    }
  }
  for (size_t i : blockers) {
    m.users[i].blocker = true;
    m.blocker_names.insert(m.users[i].username);
  }
  double gen_s = SecondsSince(t_gen);
  std::cerr << "generated " << Thousands(o.users) << " usernames in " << gen_s << " s; provisioning...\n";

  // ---- Provisioning through the admin bulk path ----
  size_t requests = 0;
  const bool send_display_bulk = o.display_names == "auto" || o.display_names == "bulk";
  auto t_prov = SteadyClock::now();
  const CpuSnapshot cpu0 = TakeCpu(o.server_pid);
  {
    // First the accounts that need device tokens: searchers, canary, blockers.
    std::vector<size_t> first = m.searchers;
    first.push_back(m.canary);
    first.insert(first.end(), blockers.begin(), blockers.end());
    BulkCreateAll(o, m, first, /*devices=*/true, send_display_bulk, &requests);
  }
  double prov_first_s = SecondsSince(t_prov);

  // Does the server keep display names given in the bulk path? Search the canary's
  // unique name word.
  bool bulk_display_kept = false;
  {
    auto c = Authenticated(o, m.users[m.searchers[0]].token);
    parley::Reply r = c->Call("search_users", json{{"query", "zqxwvprobe"}}, o.request_timeout_ms);
    if (!r.ok) Fatal("search_users: " + r.code + ": " + r.message);
    for (const json& u : r.result["users"])
      if (u.value("username", "") == m.users[m.canary].username) bulk_display_kept = true;
    c->Close();
  }
  std::string display_mode = o.display_names;
  if (display_mode == "auto") display_mode = bulk_display_kept ? "bulk" : "profile";
  if (display_mode == "bulk" && !bulk_display_kept) {
    std::cerr << "parley-search-bench: the admin bulk path dropped display_name (--display-names bulk)\n";
    return 1;
  }
  if (o.display_names == "auto" && !bulk_display_kept)
    std::cerr << "note: the admin bulk path does not keep display_name; giving " << o.profile_users
              << " users display names with set_profile instead\n";

  // Which directory users get a device (for set_profile in profile mode).
  std::vector<size_t> with_device, without_device;
  {
    std::vector<char> is_special(m.users.size(), 0);
    for (size_t i : blockers) is_special[i] = 1;
    size_t want_profile = display_mode == "profile" ? std::min(o.profile_users, o.users / 2) : 0;
    Rng pick(o.seed ^ 0x5eed);
    while (with_device.size() < want_profile) {
      size_t i = pick.Below(o.users);
      if (is_special[i] || m.users[i].display.empty()) continue;
      is_special[i] = 2;
      with_device.push_back(i);
    }
    for (size_t i = 0; i < o.users; ++i)
      if (!is_special[i]) without_device.push_back(i);
  }
  auto t_prov2 = SteadyClock::now();
  BulkCreateAll(o, m, with_device, /*devices=*/true, send_display_bulk, &requests);
  BulkCreateAll(o, m, without_device, /*devices=*/false, send_display_bulk, &requests);
  double prov_s = prov_first_s + SecondsSince(t_prov2);
  const json cpu_prov = CpuJson(cpu0, TakeCpu(o.server_pid), SecondsSince(t_prov), o.server_pid > 0);
  const size_t provisioned = m.users.size();
  std::cerr << "provisioned " << Thousands(provisioned) << " users in " << prov_s << " s\n";

  // Make the model match the server's display names: in bulk mode they are as
  // sent; otherwise the server holds none but those set with set_profile.
  double profile_s = 0;
  if (display_mode != "bulk") {
    std::vector<std::string> wanted(m.users.size());
    for (size_t i : with_device) wanted[i] = m.users[i].display;
    for (User& u : m.users) u.display.clear();
    if (display_mode == "profile") {
      auto t_prof = SteadyClock::now();
      ParallelFor(with_device.size(), 8, [&](size_t k) {
        size_t i = with_device[k];
        auto c = Authenticated(o, m.users[i].token);
        parley::Reply r = c->Call("set_profile", json{{"display_name", wanted[i]}}, o.request_timeout_ms);
        if (!r.ok) Fatal("set_profile: " + r.code + ": " + r.message);
        c->Close();
      });
      for (size_t i : with_device) m.users[i].display = wanted[i];
      profile_s = SecondsSince(t_prof);
    }
  }

  // ---- Blocks: every blocker blocks every searcher ----
  auto t_block = SteadyClock::now();
  ParallelFor(blockers.size(), 8, [&](size_t k) {
    const User& b = m.users[blockers[k]];
    auto c = Authenticated(o, b.token);
    for (size_t s : m.searchers) {
      parley::Reply r = c->Call("block", json{{"username", m.users[s].username}}, o.request_timeout_ms);
      if (!r.ok)
        Fatal("block: " + r.code + ": " + r.message +
              (r.code == "rate_limited" ? " (start parleyd with --rate-limit social_per_user=1000000/1000000)" : ""));
    }
    c->Close();
  });
  double block_s = SecondsSince(t_block);
  std::cerr << Thousands(blockers.size() * m.searchers.size()) << " blocks in " << block_s << " s; searching...\n";

  // ---- Queries ----
  const bool use_display = display_mode != "none" && o.display_name_fraction > 0;
  Rng qrng(o.seed ^ 0x9e37);
  std::vector<Query> warm, measured, cluster;
  for (size_t i = 0; i < o.warmup; ++i) warm.push_back(MakeQuery(qrng, m, o.users, use_display));
  for (size_t i = 0; i < o.queries; ++i) measured.push_back(MakeQuery(qrng, m, o.users, use_display));
  if (!cluster_prefix.empty()) {
    // 1-4 letter prefixes of the first clustered blocker: every one of them
    // starts at the run of users who block the searcher.
    const std::string& first = m.users[blockers[0]].username;
    for (size_t i = 0; i < o.cluster_queries; ++i) {
      Query q;
      q.text = first.substr(0, std::min(first.size(), 1 + i % 4));
      q.lc = q.text;
      q.kind = "cluster";
      cluster.push_back(std::move(q));
    }
  }

  std::vector<std::unique_ptr<parley::Connection>> conns;
  for (size_t s : m.searchers) conns.push_back(Authenticated(o, m.users[s].token));

  std::unordered_set<size_t> sample_at;
  {
    Rng srng(o.seed ^ 0xabc);
    size_t want = std::min(o.verify_sample, measured.size());
    if (want == measured.size()) {
      for (size_t i = 0; i < want; ++i) sample_at.insert(i);
    } else {
      while (sample_at.size() < want) sample_at.insert(srng.Below(measured.size()));
    }
  }
  RunQueries(o, m, conns, warm, {}, violations);
  const CpuSnapshot cpu1 = TakeCpu(o.server_pid);
  SearchRun run = RunQueries(o, m, conns, measured, sample_at, violations);
  const json cpu_search = CpuJson(cpu1, TakeCpu(o.server_pid), run.wall_s, o.server_pid > 0);
  std::unordered_set<size_t> cluster_sample;
  for (size_t i = 0; i < std::min<size_t>(4, cluster.size()); ++i) cluster_sample.insert(i);
  std::vector<std::unique_ptr<parley::Connection>> one;
  one.push_back(std::move(conns[0]));
  SearchRun crun = RunQueries(o, m, one, cluster, cluster_sample, violations);
  conns[0] = std::move(one[0]);
  for (auto& c : conns) c->Close();

  // ---- Exact comparison of a sample with the model ----
  auto t_verify = SteadyClock::now();
  size_t compared = 0;
  auto compare = [&](const std::vector<Sample>& samples, const std::vector<Query>& qs) {
    for (const Sample& s : samples) {
      bool more = false;
      std::vector<std::string> want = m.Expected(qs[s.query].lc, s.searcher, o.limit, &more);
      ++compared;
      if (want != s.got || more != s.more) {
        std::string w, g;
        for (auto& x : want) w += x + " ";
        for (auto& x : s.got) g += x + " ";
        violations.Add("query \"" + qs[s.query].text + "\": expected [" + w + "]" + (more ? "+more" : "") +
                       " got [" + g + "]" + (s.more ? "+more" : ""));
      }
    }
  };
  compare(run.samples, measured);
  compare(crun.samples, cluster);
  double verify_s = SecondsSince(t_verify);

  // ---- Report ----
  std::vector<double> all = run.latency_us;
  LatencyStats overall = Summarise(all);
  double qps = run.wall_s > 0 ? static_cast<double>(measured.size()) / run.wall_s : 0;
  std::map<std::string, std::vector<double>> by_class;
  size_t total_results = 0, full_pages = 0;
  for (size_t i = 0; i < measured.size(); ++i) {
    by_class[measured[i].kind + " prefix"].push_back(run.latency_us[i]);
    by_class[std::to_string(measured[i].lc.size()) + "-letter query"].push_back(run.latency_us[i]);
    total_results += run.pages[i].results;
    full_pages += run.pages[i].full ? 1 : 0;
  }
  LatencyStats cl = Summarise(crun.latency_us);

  std::printf("\nparley-search-bench  users %s  blockers %s (%s, cluster at \"%s\")  connections %d  limit %d  "
              "display names: %s\n",
              Thousands(o.users).c_str(), Thousands(blockers.size()).c_str(), o.blocker_layout.c_str(),
              cluster_prefix.c_str(), o.connections, o.limit, display_mode.c_str());
  std::printf("%-34s %s users in %zu requests of <= %zu: %.1f s (%s users/s)\n", "provisioning (admin bulk)",
              Thousands(provisioned).c_str(), requests, o.batch, prov_s,
              Thousands(static_cast<uint64_t>(static_cast<double>(provisioned) / prov_s)).c_str());
  if (profile_s > 0) std::printf("%-34s %zu set_profile: %.1f s\n", "display names (protocol)", with_device.size(), profile_s);
  std::printf("%-34s %s blocks: %.1f s\n", "blocking (protocol)", Thousands(blockers.size() * m.searchers.size()).c_str(),
              block_s);
  std::printf("\n%-22s %8s %9s %9s %9s %9s %9s %9s\n", "search (ms)", "n", "mean", "p50", "p90", "p99", "p999", "max");
  auto row = [](const std::string& name, const LatencyStats& s) {
    std::printf("%-22s %8zu %9s %9s %9s %9s %9s %9s\n", name.c_str(), s.n, Ms(s.mean_us).c_str(), Ms(s.p50_us).c_str(),
                Ms(s.p90_us).c_str(), Ms(s.p99_us).c_str(), Ms(s.p999_us).c_str(), Ms(s.max_us).c_str());
  };
  row("all", overall);
  json classes = json::object();
  for (auto& [name, v] : by_class) {
    LatencyStats s = Summarise(v);
    row("  " + name, s);
    classes[name] = ToJson(s);
  }
  if (cl.n) row("cluster \"" + cluster_prefix.substr(0, 1) + "\"..4 letters", cl);
  std::printf("\nthroughput %.0f queries/s closed-loop over %d connection(s); %.1f results per page, %.0f%% full pages\n",
              qps, o.connections, static_cast<double>(total_results) / static_cast<double>(measured.size()),
              100.0 * static_cast<double>(full_pages) / static_cast<double>(measured.size()));
  if (o.server_pid > 0) {
    const double ncpu = static_cast<double>(std::max(1L, sysconf(_SC_NPROCESSORS_ONLN)));
    auto line = [&](const char* phase, const json& c, double per_unit, const char* unit) {
      double others = c["others_cpu_s"].get<double>(), wall = c["wall_s"].get<double>();
      std::printf("%-13s parleyd CPU %.1f s (%.0f%% of one core; %.0f us per %s), bench %.1f s, other processes %.1f s "
                  "(%.0f%% of the machine)%s\n",
                  phase, c["server_cpu_s"].get<double>(), 100.0 * c["server_cpu_s"].get<double>() / wall,
                  1e6 * c["server_cpu_s"].get<double>() / per_unit, unit, c["bench_cpu_s"].get<double>(), others,
                  100.0 * others / (ncpu * wall), others > 0.05 * ncpu * wall && others > 0.5 ? "  << the machine was not quiet" : "");
    };
    line("provisioning", cpu_prov, static_cast<double>(provisioned), "user");
    line("search", cpu_search, static_cast<double>(measured.size()), "query");
  }
  std::printf("checked %zu pages (+%zu warm-up), %zu compared exactly with the model: %zu violations\n",
              measured.size() + cluster.size(), warm.size(), compared, violations.count());

  if (!o.json_path.empty()) {
    json out{
        {"benchmark", "search_users"},
        {"config",
         {{"users", o.users}, {"provisioned_users", provisioned}, {"batch", o.batch},
          {"bulk_concurrency", o.bulk_concurrency}, {"blockers", blockers.size()},
          {"blocker_layout", o.blocker_layout}, {"cluster_prefix", cluster_prefix},
          {"connections", o.connections}, {"limit", o.limit}, {"queries", o.queries}, {"warmup", o.warmup},
          {"display_names", display_mode}, {"display_name_fraction", o.display_name_fraction},
          {"bulk_display_name_kept", bulk_display_kept}, {"seed", o.seed}}},
        {"provisioning", {{"seconds", prov_s}, {"requests", requests}, {"users_per_s", static_cast<double>(provisioned) / prov_s}}},
        {"set_profile_seconds", profile_s},
        {"cpu", {{"provisioning", cpu_prov}, {"search", cpu_search}}},
        {"blocking", {{"blocks", blockers.size() * m.searchers.size()}, {"seconds", block_s}}},
        {"search",
         {{"latency", ToJson(overall)}, {"wall_s", run.wall_s}, {"throughput_qps", qps}, {"by_class", classes},
          {"results_per_page", static_cast<double>(total_results) / static_cast<double>(measured.size())},
          {"full_pages", full_pages}}},
        {"cluster_search", ToJson(cl)},
        {"verification",
         {{"pages_checked", measured.size() + cluster.size() + warm.size()}, {"compared_with_model", compared},
          {"compare_seconds", verify_s}, {"violations", violations.count()}}}};
    std::ofstream f(o.json_path);
    f << out.dump(2) << "\n";
    if (!f) Fatal("cannot write " + o.json_path);
  }
  if (violations.count() > 0) {
    std::fprintf(stderr, "FAILED: %zu correctness violations\n", violations.count());
    return 1;
  }
  return 0;
}
