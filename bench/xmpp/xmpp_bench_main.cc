// parley-xmpp-bench: the 1:1 throughput scenario against an XMPP server
// (ejabberd, Prosody), for the side-by-side table in docs/benchmarks.md.
// The driver is parley_xmpp_driver (xmpp_driver.h); this file is its command
// line and its output.
//
//   parley-xmpp-bench --port 5222 --register            # register 2P users (XEP-0077), then run
//   parley-xmpp-bench --port 5222 --rates 1000,5000,10000 --duration 12 --server-pid PID --json out.json
//
// Prints one human line per rate and, with --json FILE, this document
// (times in ms, rates in messages/s; docs/benchmarks.md describes it):
//   {"tool": "parley-xmpp-bench", "label": ..., "server": {"host", "port", "domain", "pid"},
//    "pairs", "stanza_bytes", "receipts", "warmup_s", "duration_s", "drain_s", "p99_limit_ms",
//    "register": {"created", "existed", "failed", "seconds"} | null,
//    "login": {"users", "seconds"},
//    "points": [{"offered_per_s", "sent", "delivered", "sent_per_s", "delivered_per_s",
//                "arrival_per_s", "lost", "latency_ms": {"count", "p50", "p90", "p99", "p999", "max"},
//                "receipts", "receipt_rtt_ms": {...} | null, "server_cpu_percent" | null,
//                "server_rss_mb" | null, "gen_cpu_percent", "machine_busy_percent",
//                "other_cpu_percent", "max_send_lag_ms", "dropped_bytes", "error_stanzas",
//                "connections_lost", "ok"}],
//    "saturation_per_s": highest offered rate with ok == true (0 if none)}
// A point is "ok" when every message of the window was delivered
// (delivered == sent, nothing dropped, no error bounce, no connection lost)
// and p99 <= --p99-limit-ms. CPU figures are % of one core over the window;
// other_cpu_percent is the machine's busy time minus the server's and the
// driver's: how much other work (builds, tests) shared the machine.
// Exit codes: 0 ran (whatever the figures); 2 set-up failed (registration or login).
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "xmpp_driver.h"

namespace {

using nlohmann::json;
using parley::xmppbench::LatencySummary;
using parley::xmppbench::RatePoint;

json LatencyJson(const LatencySummary& s) {
  return {{"count", s.count}, {"p50", s.p50}, {"p90", s.p90}, {"p99", s.p99}, {"p999", s.p999}, {"max", s.max}};
}

bool PointOk(const RatePoint& p, double p99_limit_ms) {
  return p.sent > 0 && p.delivered == p.sent && p.dropped_bytes == 0 && p.connections_lost == 0 && p.error_stanzas == 0 &&
         p.latency.p99 <= p99_limit_ms;
}

}  // namespace

int main(int argc, char** argv) {
  parley::xmppbench::DriverOptions opt;
  std::string rates_arg = "1000,5000,10000";
  std::string json_path;
  std::string label;
  bool do_register = false;
  bool register_only = false;
  bool keep_going = false;
  double p99_limit_ms = 50;
  int port = opt.port;

  CLI::App app{"parley-xmpp-bench: open-loop 1:1 message throughput and latency against an XMPP server"};
  app.add_option("--host", opt.host, "server address")->capture_default_str();
  app.add_option("--port", port, "c2s port")->capture_default_str()->check(CLI::Range(1, 65535));
  app.add_option("--domain", opt.domain, "XMPP domain")->capture_default_str();
  app.add_option("--user-prefix", opt.user_prefix, "users are PREFIX<n>")->capture_default_str();
  app.add_option("--first-user", opt.first_user, "first n")->capture_default_str();
  app.add_option("--password", opt.password, "every user's password")->capture_default_str();
  app.add_option("--pairs", opt.pairs, "pairs of users (2P connections)")->capture_default_str()->check(
      CLI::Range(1, 100000));
  app.add_option("--stanza-bytes", opt.stanza_bytes, "size of each message stanza written")->capture_default_str();
  app.add_option("--rates", rates_arg, "offered rates to sweep, messages/s over all pairs, comma-separated")
      ->capture_default_str();
  app.add_option("--warmup", opt.warmup_s, "seconds of load before each measurement window")->capture_default_str();
  app.add_option("--duration", opt.duration_s, "measurement window per rate, seconds")->capture_default_str();
  app.add_option("--drain", opt.drain_s, "seconds to wait for the window's messages after it")->capture_default_str();
  app.add_option("--p99-limit-ms", p99_limit_ms, "p99 bound for the saturation throughput")->capture_default_str();
  app.add_flag("--receipts", opt.receipts, "ask for and send XEP-0184 receipts; report send -> receipt");
  app.add_option("--concurrency", opt.connect_concurrency, "logins / registrations in flight")->capture_default_str();
  app.add_option("--login-timeout", opt.login_timeout_s, "seconds for all logins (or registrations)")
      ->capture_default_str();
  app.add_option("--server-pid", opt.server_pid, "server process for CPU % and RSS (/proc/PID)");
  app.add_flag("--register", do_register, "register the users (XEP-0077) before the run; existing ones are fine");
  app.add_flag("--register-only", register_only, "register the users and exit");
  app.add_flag("--keep-going", keep_going,
               "sweep every rate even after one lost messages (by default the sweep stops there: the server is "
               "still working off that backlog, so higher rates would measure it, not themselves)");
  app.add_option("--label", label, "a name for this run in the output");
  app.add_option("--json", json_path, "write the results here");
  CLI11_PARSE(app, argc, argv);
  opt.port = static_cast<uint16_t>(port);

  std::vector<double> rates;
  {
    std::stringstream ss(rates_arg);
    std::string item;
    while (std::getline(ss, item, ',')) {
      try {
        const double r = std::stod(item);
        if (r <= 0) throw std::invalid_argument("not positive");
        rates.push_back(r);
      } catch (const std::exception&) {
        std::cerr << "parley-xmpp-bench: bad rate '" << item << "' in --rates\n";
        return 2;
      }
    }
  }

  parley::xmppbench::XmppDriver driver(opt);
  json out = {{"tool", "parley-xmpp-bench"},
              {"label", label},
              {"server", {{"host", opt.host}, {"port", opt.port}, {"domain", opt.domain}, {"pid", opt.server_pid}}},
              {"pairs", opt.pairs},
              {"stanza_bytes", opt.stanza_bytes},
              {"receipts", opt.receipts},
              {"warmup_s", opt.warmup_s},
              {"duration_s", opt.duration_s},
              {"drain_s", opt.drain_s},
              {"p99_limit_ms", p99_limit_ms},
              {"register", nullptr}};
  const auto write_json = [&] {
    if (json_path.empty()) return;
    std::ofstream f(json_path);
    f << out.dump(2) << "\n";
  };

  if (do_register || register_only) {
    const auto reg = driver.Register();
    std::cout << fmt::format("register: {} created, {} existed, {} failed in {:.1f} s ({:.0f} users/s)\n", reg.created,
                             reg.existed, reg.failed, reg.seconds,
                             (reg.created + reg.existed) / std::max(reg.seconds, 1e-9));
    out["register"] = {
        {"created", reg.created}, {"existed", reg.existed}, {"failed", reg.failed}, {"seconds", reg.seconds}};
    if (reg.failed > 0) {
      std::cerr << "parley-xmpp-bench: registration failed: " << reg.first_error << "\n";
      write_json();
      return 2;
    }
    if (register_only) {
      write_json();
      return 0;
    }
  }

  std::string error;
  double login_s = 0;
  if (!driver.Login(&error, &login_s)) {
    std::cerr << "parley-xmpp-bench: login failed: " << error << "\n";
    return 2;
  }
  std::cout << fmt::format("login: {} users online in {:.1f} s\n", 2 * opt.pairs, login_s);
  out["login"] = {{"users", 2 * opt.pairs}, {"seconds", login_s}};

  out["points"] = json::array();
  double saturation = 0;
  for (const double rate : rates) {
    const RatePoint p = driver.RunRate(rate);
    const bool ok = PointOk(p, p99_limit_ms);
    if (ok) saturation = std::max(saturation, rate);
    std::string line = fmt::format(
        "{}offered {:>7.0f}/s  delivered {:>8.1f}/s ({}/{}{})  p50 {:.2f} ms  p99 {:.2f} ms  p999 {:.2f} ms",
        label.empty() ? "" : label + ": ", rate, p.delivered_per_s, p.delivered, p.sent,
        p.delivered == p.sent ? "" : ", LOST " + std::to_string(p.sent - p.delivered), p.latency.p50, p.latency.p99,
        p.latency.p999);
    if (opt.receipts) line += fmt::format("  receipt p50 {:.2f} p99 {:.2f} ms", p.receipt_rtt.p50, p.receipt_rtt.p99);
    if (p.server_cpu_percent >= 0)
      line += fmt::format("  server CPU {:.0f}%  RSS {:.0f} MB", p.server_cpu_percent, p.server_rss_mb);
    const double others = p.machine_busy_percent - p.gen_cpu_percent - std::max(p.server_cpu_percent, 0.0);
    line += fmt::format("  gen CPU {:.0f}%  others {:.0f}%  lag {:.1f} ms", p.gen_cpu_percent, others, p.max_send_lag_ms);
    if (p.error_stanzas > 0) line += fmt::format("  {} error bounces", p.error_stanzas);
    line += ok ? "" : "  [not ok]";
    std::cout << line << std::endl;
    json pj = {{"offered_per_s", rate},
               {"sent", p.sent},
               {"delivered", p.delivered},
               {"sent_per_s", p.sent_per_s},
               {"delivered_per_s", p.delivered_per_s},
               {"arrival_per_s", p.arrival_per_s},
               {"lost", p.sent - p.delivered},
               {"latency_ms", LatencyJson(p.latency)},
               {"receipts", p.receipts},
               {"receipt_rtt_ms", opt.receipts ? LatencyJson(p.receipt_rtt) : json(nullptr)},
               {"server_cpu_percent", p.server_cpu_percent >= 0 ? json(p.server_cpu_percent) : json(nullptr)},
               {"server_rss_mb", p.server_rss_mb >= 0 ? json(p.server_rss_mb) : json(nullptr)},
               {"gen_cpu_percent", p.gen_cpu_percent},
               {"max_send_lag_ms", p.max_send_lag_ms},
               {"machine_busy_percent", p.machine_busy_percent},
               {"other_cpu_percent", p.machine_busy_percent - p.gen_cpu_percent - std::max(p.server_cpu_percent, 0.0)},
               {"dropped_bytes", p.dropped_bytes},
               {"error_stanzas", p.error_stanzas},
               {"connections_lost", p.connections_lost},
               {"ok", ok}};
    out["points"].push_back(pj);
    if (!p.first_error_stanza.empty()) std::cerr << "parley-xmpp-bench: first error bounce: " << p.first_error_stanza << "\n";
    if (!keep_going && p.delivered < p.sent) {
      std::cout << "stopping the sweep: messages were lost at this rate (--keep-going to go on)" << std::endl;
      break;
    }
    if (p.connections_lost > 0) {
      std::cerr << "parley-xmpp-bench: the server closed " << p.connections_lost << " connections; stopping the sweep\n";
      break;
    }
  }
  out["saturation_per_s"] = saturation;
  std::cout << fmt::format("{}saturation (delivered == offered, p99 <= {:.0f} ms): {:.0f} msgs/s\n",
                           label.empty() ? "" : label + ": ", p99_limit_ms, saturation);
  driver.Close();
  write_json();
  return 0;
}
