// Start-up order: store (so a bad data dir fails before we listen), fabric,
// hashing pool, gateway, core. Shutdown (SIGTERM/SIGINT) is the reverse:
// stop accepting; core refuses new requests, flushes the store and answers
// what was in flight; every connection is closed with kServerShutdown and a
// retry-after; the io threads stop once connections are gone; the store is
// destroyed last, which commits and joins its threads.
#include "server/app.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>

#include <signal.h>
#include <unistd.h>

#include "admin/admin_api.h"
#include "common/metrics.h"
#include "common/worker_pool.h"
#include "core/accounts.h"
#include "core/chat_service.h"
#include "fabric/local/local_fabric.h"
#include "fabric/redis/redis_fabric.h"
#include "gateway/gateway.h"
#include "gateway/static_files.h"
#include "protocol/encode.h"
#include "push/dispatcher.h"
#include "push/webhook.h"
#include "server/stop_signals.h"
#ifdef PARLEY_FAULT_SWITCHES
#include "store/fault_store.h"
#include "store/search_indexer.h"
#endif

namespace parley::server {
namespace {

// Process gauges, refreshed at each scrape from /proc (Linux).
void UpdateProcessMetrics() {
  static Gauge& rss = Metrics::Default().GetGauge("parley_process_resident_memory_bytes",
                                                  "Resident set size of the parleyd process");
  static Gauge& fds = Metrics::Default().GetGauge("parley_process_open_fds", "Open file descriptors (sockets included)");
  std::ifstream statm("/proc/self/statm");
  int64_t size_pages = 0, resident_pages = 0;
  if (statm >> size_pages >> resident_pages) rss.Set(resident_pages * sysconf(_SC_PAGESIZE));
  std::error_code ec;
  int64_t n = 0;
  for (std::filesystem::directory_iterator it("/proc/self/fd", ec), end; !ec && it != end; it.increment(ec)) ++n;
  if (!ec) fds.Set(n);
}

struct SignalsStoppedFirst {
  StopSignals& signals;
  ~SignalsStoppedFirst() { signals.Stop(); }
};

}  // namespace

int RunServer(const ServerConfig& config) {
  // First: every thread started below inherits the signals' block. Until
  // Handle (the server is up), a signal ends the process as by default.
  StopSignals signals;
  auto logger = spdlog::stderr_color_mt("parleyd");
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e%z level=%l %v");
  spdlog::set_level(spdlog::level::from_str(config.log_level));

  // A connection is a file: the soft limit (often 1,024) up to the hard one.
  const int64_t file_limit = gateway::RaiseFileLimit();
  if (config.gateway.max_connections > gateway::DefaultMaxConnections(file_limit)) {
    spdlog::warn("event=max_connections_above_file_limit max_connections={} file_limit={} note=\"past the file "
                 "limit accepts fail (retried every 100 ms) instead of refusing with 503\"",
                 config.gateway.max_connections, file_limit);
  }
  if (Status s = core::InitSodium(); !s.ok()) {
    spdlog::critical("event=start_failed error=\"{}\"", s.ToString());
    return 1;
  }
  if (config.core.password_cost == core::PasswordCost::kInsecureFast)
    spdlog::warn("event=insecure_fast_password_hashing note=\"for tests and benchmarks only; never in production\"");

  std::error_code fs_ec;
  std::filesystem::create_directories(config.data_dir, fs_ec);
  if (fs_ec) {
    spdlog::critical("event=start_failed error=\"cannot create data dir {}: {}\"", config.data_dir, fs_ec.message());
    return 1;
  }
  auto store = store::OpenStore(config.store);
  if (!store) {
    spdlog::critical("event=start_failed error=\"store: {}\"", store.error().ToString());
    return 1;
  }

  store::Store* store_for_service = store->get();
#ifdef PARLEY_FAULT_SWITCHES
  std::unique_ptr<store::FaultStore> fault_store;
  if (!config.faults.empty()) {
    std::vector<store::FaultSwitch> switches;
    for (const auto& f : config.faults) switches.push_back(*store::ParseFaultSwitch(f));
    fault_store = std::make_unique<store::FaultStore>(**store, std::move(switches));
    store_for_service = fault_store.get();
    spdlog::warn("event=fault_switches faults=\"{}\" note=\"test build: faults are injected on purpose\"",
                 fmt::join(config.faults, ","));
  }
#endif
  // Single node: the in-process table. Cluster (--redis): through Redis; a
  // node that cannot reach Redis at start does not start.
  std::unique_ptr<fabric::Fabric> fabric_owner;
  fabric::RedisFabric* redis_fabric = nullptr;
  if (config.redis.empty()) {
    fabric_owner = std::make_unique<fabric::LocalFabric>();
  } else {
    auto redis = fabric::RedisFabric::Start(config.fabric);
    if (!redis) {
      spdlog::critical("event=start_failed error=\"fabric: {}\"", redis.error().ToString());
      return 1;
    }
    redis_fabric = redis->get();
    fabric_owner = std::move(*redis);
    spdlog::info("event=cluster_fabric redis={}:{} node_id={}", config.fabric.host, config.fabric.port,
                 config.fabric.node_id);
  }
  fabric::Fabric& fabric = *fabric_owner;
  auto hash_pool = std::make_unique<WorkerPool>(config.hash_threads);
  gateway::Gateway gw(config.gateway);
  // The signal thread posts to the gateway: it ends before the gateway goes,
  // however RunServer returns.
  const SignalsStoppedFirst signals_stopped_first{signals};
  core::ChatService chat(gw.CoreExecutor(), *store_for_service, fabric, *hash_pool, SystemClock::Instance(), config.core);

  // Push notifications (issue 11): a dispatcher on a thread of its own,
  // woken by core when it queues jobs.
  std::unique_ptr<push::PushDispatcher> pusher;
  if (config.core.push.enabled) {
    push::DispatcherConfig pc;
    pc.node_id = config.push.node_id;
    if (pc.node_id.empty()) {
      char host[256] = {0};
      gethostname(host, sizeof host - 1);
      pc.node_id = fmt::format("{}-{}-{:08x}", host, getpid(), std::random_device{}());
    }
    pc.poll_ms = config.push.poll_ms;
    pc.lease_ms = config.push.lease_ms;
    pc.max_in_flight = config.push.max_in_flight;
    pc.backoff_initial_ms = config.push.backoff_initial_ms;
    pc.backoff_max_ms = config.push.backoff_max_ms;
    pc.max_attempts = config.push.max_attempts;
    pc.coalesce_ms = config.core.push.coalesce_ms;
    pusher = std::make_unique<push::PushDispatcher>(*store_for_service, pc);
    auto provider = push::WebhookProvider::Create(
        pusher->io(), push::WebhookConfig{config.push.webhook_url, config.push.webhook_secret, config.push.timeout_ms,
                                           config.push.webhook_ca_file});
    if (!provider) {
      spdlog::critical("event=start_failed error=\"push: {}\"", provider.error().ToString());
      return 1;
    }
    pusher->SetProvider(std::move(*provider));
    chat.SetPushQueuedHook([p = pusher.get()] { p->Wake(); });
    pusher->Start();
    spdlog::info("event=push_enabled node_id={} url={} coalesce_ms={}", pc.node_id, config.push.webhook_url,
                 pc.coalesce_ms);
  }

  // Message search (issue 12): the index is filled off the send path.
  store::SearchIndexer search_indexer(*store_for_service, SystemClock::Instance(), config.search_index);
  search_indexer.Start();
  // Retention (issue 12): expiry and purge steps on the core executor.
  chat.StartRetention();

  admin::AdminApi admin_api(*store_for_service, *hash_pool, SystemClock::Instance(), config.admin);
  admin_api.SetCloseDevices([&chat](int64_t user_id, std::vector<int64_t> devices, std::string reason, bool disabled) {
    chat.CloseDevices(user_id, std::move(devices), std::move(reason), disabled);
  });
  admin_api.SetUserErased([&chat](int64_t user_id) { chat.UserErased(user_id); });
  std::string web_root = config.web_root.empty() ? gateway::DefaultWebRoot() : config.web_root;
  if (web_root == "none") web_root.clear();
  gateway::StaticFiles web(web_root);
  if (!web_root.empty() && web.root().empty()) {
    spdlog::critical("event=start_failed error=\"web root {} is not a directory\"", web_root);
    return 1;
  }
  auto http = [&admin_api, &web](gateway::HttpRequest req, std::function<void(gateway::HttpResponse)> respond) {
    gateway::HttpResponse r;
    std::string path = req.target.substr(0, req.target.find('?'));
    if (path.rfind("/admin/", 0) == 0) return admin_api.Handle(std::move(req), std::move(respond));
    if (req.method != "GET" && req.method != "HEAD") {
      r.status = 405;
      r.body = "method not allowed\n";
    } else if (path == "/healthz") {
      r.status = 200;
      r.body = "ok\n";
    } else if (path == "/metrics") {
      r.status = 200;
      r.content_type = "text/plain; version=0.0.4; charset=utf-8";
      UpdateProcessMetrics();
      r.body = Metrics::Default().RenderPrometheus();
    } else {
      web.Serve(req, &r);  // leaves the 404 in place when it does not serve
    }
    respond(std::move(r));
  };
  // Only an admin request with the right token may send a large body.
  auto body_limit = [&admin_api](const gateway::HttpRequest& head) {
    return head.target.rfind("/admin/", 0) == 0 && admin_api.Authorized(head.authorization)
               ? gateway::kMaxHttpBodyBytes
               : gateway::kMaxPlainHttpBodyBytes;
  };
  bool shutting_down = false;
  const auto on_signal = [&](int sig) {
    if (sig == SIGHUP) {
      // Reload the TLS files; the gateway logs and counts the result and
      // keeps the old certificate if the new one does not load.
      if (gw.tls()) {
        (void)gw.ReloadTls();
      } else {
        spdlog::info("event=sighup_ignored reason=\"TLS is not configured; nothing to reload\"");
      }
      return;
    }
    if (shutting_down) return;
    shutting_down = true;
    spdlog::info("event=shutdown_started signal={}", sig);
    gw.StopAccepting();
    chat.Shutdown([&] {
      gw.CloseAll(static_cast<uint16_t>(protocol::CloseCode::kServerShutdown),
                  protocol::RetryAfterReason(config.core.shutdown_retry_after_ms));
      gw.StopWhenDrained(config.shutdown_drain_ms);
    });
  };
  // Before the server says it listens: a supervisor may signal it as soon
  // as it does. A signal taken before Run waits in the control executor.
  signals.Handle([&](int sig) { gw.ControlExecutor().Post([&on_signal, sig] { on_signal(sig); }); });
  if (Status s = gw.Start(&chat, http, body_limit); !s.ok()) {
    spdlog::critical("event=start_failed error=\"{}\"", s.ToString());
    return 1;
  }
  spdlog::info(
      "event=listening address={}:{} tls={} data_dir={} store={} io_threads={} web_root={} file_limit={} "
      "max_connections={}",
      config.gateway.host, gw.BoundPort(), gw.tls() ? "on" : "off", config.data_dir, config.store.backend,
      config.gateway.io_threads, web.root().empty() ? "none" : web.root(), file_limit, gw.MaxConnections());
  std::cout << "parleyd listening on " << (gw.tls() ? "https://" : "http://") << config.gateway.host << ":" << gw.BoundPort() << std::endl;
  if (!config.port_file.empty()) {
    std::string tmp = config.port_file + ".tmp";
    std::ofstream(tmp) << gw.BoundPort() << "\n";
    std::filesystem::rename(tmp, config.port_file, fs_ec);
  }

  gw.Run();
  // A signal from here on is never delivered (a second SIGTERM during the
  // teardown no longer kills the process: StopSignals).
  signals.Stop();
  // Teardown order matters: hashing jobs and store completions post to the
  // core executor, which the gateway owns, and reference the chat service. So
  // the pool and the store (which commits what is queued and joins its
  // threads) go first, while the gateway and the chat service still exist;
  // what they post lands in a stopped io_context and is simply dropped.
  hash_pool.reset();
  // The dispatcher stops before the store goes (its attempts in flight are
  // abandoned: their leases expire), and is destroyed after it (late store
  // completions only read its stopping flag).
  if (pusher) pusher->Stop();
  search_indexer.Stop();
  store->reset();
  pusher.reset();
  // No frame from another node may reach a connection once the gateway is
  // gone: the fabric's Redis thread stops here.
  if (redis_fabric != nullptr) redis_fabric->Stop();
  spdlog::info("event=shutdown_complete");
  return 0;
}

}  // namespace parley::server
