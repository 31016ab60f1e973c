// parleyd's configuration: defaults that need no config file, overridden by
// environment variables (PARLEY_*), then by a config file (TOML/INI,
// --config), then by command-line flags (CLI11's order: a flag beats the
// file, the file beats the environment). Every option is documented in
// docs/operations.md; `parleyd --help` lists them with their defaults.
#pragma once

#include <string>
#include <vector>

#include "common/status.h"
#include "admin/admin_api.h"
#include "core/chat_service.h"
#include "fabric/redis/redis_fabric.h"
#include "gateway/gateway.h"
#include "store/search_indexer.h"
#include "store/store_factory.h"

namespace parley::server {

// Push notifications (issue 11): the webhook provider and the dispatcher
// (push/webhook.h, push/dispatcher.h). No URL: push is off (nothing queued).
struct PushOptions {
  std::string webhook_url;
  std::string webhook_secret;
  std::string webhook_ca_file;  // https: CA bundle; empty: the system's trust store
  int timeout_ms = 5'000;
  int poll_ms = 1'000;
  int64_t lease_ms = 60'000;
  int max_in_flight = 64;
  int64_t backoff_initial_ms = 1'000;
  int64_t backoff_max_ms = 300'000;
  int max_attempts = 10;
  std::string node_id;  // empty: hostname-pid-random
};

struct ServerConfig {
  std::string listen = "127.0.0.1:8080";
  std::string data_dir = "./parley-data";
  std::string log_level = "info";
  std::string port_file;  // if set, the bound port is written here once listening
  // Directory of the web client's static files, served at `/`. Empty: found
  // next to the binary (gateway::DefaultWebRoot); "none": not served.
  std::string web_root;
  int hash_threads = 2;
  int shutdown_drain_ms = 5'000;
  gateway::GatewayConfig gateway;
  store::StoreConfig store;
  core::CoreConfig core;
  admin::AdminConfig admin;
  // Cluster (docs/operations.md, "Cluster"): Redis address (--redis, empty:
  // single node, LocalFabric) and this node's fabric settings (--node-id...).
  std::string redis;
  fabric::RedisFabricConfig fabric;
  PushOptions push;
  // Message search's background indexer (store/search_indexer.h).
  store::SearchIndexerConfig search_index;
  // Test builds only (PARLEY_FAULT_SWITCHES): fault switches, "NAME@N" each
  // (store/fault_store.h). Non-empty: the store is wrapped in a FaultStore.
  std::vector<std::string> faults;
};

// Parses argv (and the environment and config file it names). Returns the
// config, or an error whose message is ready to print. `exit_code` is set
// when the process should exit at once (e.g. --help printed: 0).
Result<ServerConfig> ParseConfig(int argc, char** argv, int* exit_code);

}  // namespace parley::server
