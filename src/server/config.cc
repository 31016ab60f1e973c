#include "server/config.h"

#ifdef PARLEY_FAULT_SWITCHES
#include "store/fault_store.h"
#endif

#include <CLI/CLI.hpp>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <string_view>

#include "common/this_thread.h"
#include "net/http_client.h"

namespace parley::server {

Result<ServerConfig> ParseConfig(int argc, char** argv, int* exit_code) {
  ServerConfig c;
  // One event loop per CPU this process may run on (taskset, a container's
  // cpuset); the SQLite store's readers follow the same count, capped
  // (store::DefaultSqliteReadConnections, StoreConfig's default).
  c.gateway.io_threads = CpusAvailable();
  bool fast_hashing = false;

  CLI::App app{"parleyd: the Parley messaging server"};
  app.set_config("--config", "", "Config file (TOML or INI; keys are the long option names)")->envname("PARLEY_CONFIG");
  app.add_option("--listen", c.listen, "Address and port to listen on (port 0: any free port)")
      ->envname("PARLEY_LISTEN")
      ->capture_default_str();
  app.add_option("--data-dir", c.data_dir, "Directory of the store and other data (created if missing)")
      ->envname("PARLEY_DATA_DIR")
      ->capture_default_str();
  app.add_option("--log-level", c.log_level, "trace, debug, info, warn, error, critical or off")
      ->envname("PARLEY_LOG_LEVEL")
      // spdlog's own spellings "warning" and "err" too (spdlog::level::from_str).
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "warning", "error", "err", "critical", "off"}))
      ->capture_default_str();
  app.add_option("--max-connections", c.gateway.max_connections,
                 "Most TCP connections open at once (HTTP and WebSocket); past it new ones get 503 with "
                 "Retry-After (TLS: closed). 0 = the open-file limit minus a reserve for the store and logs")
      ->envname("PARLEY_MAX_CONNECTIONS")
      ->check(CLI::Range(int64_t{0}, int64_t{100'000'000}))
      ->capture_default_str();
  app.add_option("--port-file", c.port_file, "Write the bound port to this file once listening")
      ->envname("PARLEY_PORT_FILE");
  app.add_option("--web-root", c.web_root,
                 "Directory of the web client served at / (default: share/parley/web or the repository's web/ "
                 "found from the binary's location; 'none': do not serve it)")
      ->envname("PARLEY_WEB_ROOT");
  app.add_option("--tls-cert", c.gateway.tls_cert_file,
                 "PEM certificate chain; with --tls-key the listener serves TLS only (https, wss). Reloaded on SIGHUP")
      ->envname("PARLEY_TLS_CERT");
  app.add_option("--tls-key", c.gateway.tls_key_file, "PEM private key of --tls-cert (reloaded on SIGHUP)")
      ->envname("PARLEY_TLS_KEY");
  app.add_option("--allowed-origins", c.gateway.allowed_origins,
                 "Comma-separated origins (scheme://host[:port]) whose web pages may open a WebSocket besides the "
                 "server's own; '*': any. Default: same origin only (and clients that send no Origin)")
      ->envname("PARLEY_ALLOWED_ORIGINS")
      ->delimiter(',');
  app.add_option("--io-threads", c.gateway.io_threads, "I/O threads (one event loop each); default: one per core")
      ->envname("PARLEY_IO_THREADS")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  app.add_option("--io-sched-batch", c.gateway.io_sched_batch,
                 "Run the I/O threads and the store's reader threads under SCHED_BATCH, so that an arriving "
                 "frame does not preempt the store's writer, nor a queued read the I/O thread, on a shared core "
                 "(true/false)")
      ->envname("PARLEY_IO_SCHED_BATCH")
      ->capture_default_str();
  app.add_option("--hash-threads", c.hash_threads, "Threads for password hashing (Argon2id)")
      ->envname("PARLEY_HASH_THREADS")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  app.add_option("--max-outbound-queue-bytes", c.gateway.max_outbound_queue_bytes,
                 "Per-connection outbound queue limit; above it the connection is closed with the resync code")
      ->envname("PARLEY_MAX_OUTBOUND_QUEUE_BYTES")
      ->check(CLI::Range(gateway::GatewayConfig::kMinOutboundQueueBytes, size_t{1} << 32))
      ->capture_default_str();
  app.add_option("--resync-retry-after-ms", c.gateway.resync_retry_after_ms,
                 "Retry-after told to connections closed with 4003 (resync) because they fell behind")
      ->envname("PARLEY_RESYNC_RETRY_AFTER_MS")
      ->check(CLI::Range(0, 600'000))
      ->capture_default_str();
  app.add_option("--socket-send-buffer", c.gateway.socket_send_buffer, "SO_SNDBUF per connection, bytes (0: system default)")
      ->envname("PARLEY_SOCKET_SEND_BUFFER")
      ->check(CLI::Range(0, 64 << 20))
      ->capture_default_str();
  auto& deflate = c.gateway.ws_deflate;
  app.add_flag("--ws-deflate", deflate.enabled,
               "Offer permessage-deflate (RFC 7692) to WebSocket clients that ask for it (costs memory per "
               "connection: docs/operations.md, \"Compression\")")
      ->envname("PARLEY_WS_DEFLATE");
  app.add_option("--ws-deflate-window-bits", deflate.window_bits, "LZ77 window of permessage-deflate, 2^N bytes")
      ->envname("PARLEY_WS_DEFLATE_WINDOW_BITS")
      ->check(CLI::Range(gateway::WsDeflateConfig::kMinWindowBits, gateway::WsDeflateConfig::kMaxWindowBits))
      ->capture_default_str();
  app.add_option("--ws-deflate-mem-level", deflate.mem_level, "zlib memory level of permessage-deflate")
      ->envname("PARLEY_WS_DEFLATE_MEM_LEVEL")
      ->check(CLI::Range(gateway::WsDeflateConfig::kMinMemLevel, gateway::WsDeflateConfig::kMaxMemLevel))
      ->capture_default_str();
  app.add_option("--ws-deflate-level", deflate.level, "zlib compression level of permessage-deflate (0-9)")
      ->envname("PARLEY_WS_DEFLATE_LEVEL")
      ->check(CLI::Range(0, 9))
      ->capture_default_str();
  app.add_option("--ws-deflate-min-bytes", deflate.min_bytes, "Frames shorter than this are sent uncompressed")
      ->envname("PARLEY_WS_DEFLATE_MIN_BYTES")
      ->check(CLI::Range(size_t{0}, size_t{1} << 24))
      ->capture_default_str();
  app.add_flag("--ws-deflate-no-context-takeover", deflate.no_context_takeover,
               "Reset the compressor after every frame: less memory between frames, worse ratio")
      ->envname("PARLEY_WS_DEFLATE_NO_CONTEXT_TAKEOVER");
  app.add_option("--heartbeat-interval-ms", c.core.heartbeat_interval_ms, "Heartbeat interval announced to clients")
      ->envname("PARLEY_HEARTBEAT_INTERVAL_MS")
      ->check(CLI::Range(1'000, 3'600'000))
      ->capture_default_str();
  app.add_option("--heartbeat-timeout-ms", c.core.heartbeat_timeout_ms,
                 "A connection silent this long is dropped (must exceed the interval)")
      ->envname("PARLEY_HEARTBEAT_TIMEOUT_MS")
      ->check(CLI::Range(2'000, 7'200'000))
      ->capture_default_str();
  app.add_option("--shutdown-retry-after-ms", c.core.shutdown_retry_after_ms,
                 "Retry-after told to clients when the server shuts down")
      ->envname("PARLEY_SHUTDOWN_RETRY_AFTER_MS")
      ->check(CLI::Range(0, 600'000))
      ->capture_default_str();
  app.add_option("--shutdown-flush-ms", c.core.shutdown_flush_ms,
                 "On shutdown, how long the store may commit its queued writes; the rest fail with shutting_down")
      ->envname("PARLEY_SHUTDOWN_FLUSH_MS")
      ->check(CLI::Range(0, 600'000))
      ->capture_default_str();
  app.add_option("--unavailable-retry-after-ms", c.core.unavailable_retry_after_ms,
                 "Retry-after told to clients in `unavailable` errors (the store, e.g. PostgreSQL, is unreachable)")
      ->envname("PARLEY_UNAVAILABLE_RETRY_AFTER_MS")
      ->check(CLI::Range(1, 600'000))
      ->capture_default_str();
  app.add_option("--max-queued-writes", c.core.max_queued_writes,
                 "While the store holds this many queued writes, send, edit_message, delete_message, "
                 "open_conversation and set_draft are refused with `unavailable` (retryable); 0: no bound")
      ->envname("PARLEY_MAX_QUEUED_WRITES")
      ->check(CLI::Range(int64_t{0}, int64_t{100'000'000}))
      ->capture_default_str();
  app.add_option("--typing-expiry-ms", c.core.typing_expiry_ms,
                 "A typing indicator expires on its own after this long (a stop is sent)")
      ->envname("PARLEY_TYPING_EXPIRY_MS")
      ->check(CLI::Range(int64_t{100}, int64_t{60'000}))
      ->capture_default_str();
  app.add_option("--edit-window-ms", c.core.change_windows.edit_ms,
                 "A message may be edited by its sender for this long after it was sent")
      ->envname("PARLEY_EDIT_WINDOW_MS")
      ->check(CLI::Range(int64_t{0}, int64_t{10} * 365 * 24 * 3600 * 1000))
      ->capture_default_str();
  app.add_option("--delete-window-ms", c.core.change_windows.delete_ms,
                 "A message may be deleted for everyone by its sender for this long after it was sent")
      ->envname("PARLEY_DELETE_WINDOW_MS")
      ->check(CLI::Range(int64_t{0}, int64_t{10} * 365 * 24 * 3600 * 1000))
      ->capture_default_str();
  // Retention (issue 12; docs/operations.md "Retention").
  constexpr int64_t kMaxRetentionSeconds = int64_t{100} * 365 * 24 * 3600;
  int64_t retention_max_age_s = 0;
  app.add_option("--retention-max-age-s", retention_max_age_s,
                 "Every message expires (is deleted for everyone) this long after it is stored, whatever the "
                 "conversation's disappearing timer; 0 = no maximum")
      ->envname("PARLEY_RETENTION_MAX_AGE_S")
      ->check(CLI::Range(int64_t{0}, kMaxRetentionSeconds))
      ->capture_default_str();
  app.add_option("--expiry-interval-ms", c.core.retention.expiry_interval_ms,
                 "Pause of the background expiry step when nothing more has expired (how late an expired message "
                 "can still be in the store)")
      ->envname("PARLEY_EXPIRY_INTERVAL_MS")
      ->check(CLI::Range(int64_t{10}, int64_t{3'600'000}))
      ->capture_default_str();
  int64_t purge_delay_s = c.core.retention.purge_delay_ms / 1000;
  app.add_option("--purge-delay-s", purge_delay_s,
                 "A deleted or expired message's remaining data (edit history, search rows) is purged this long "
                 "after the delete; 0 = at the next purge step")
      ->envname("PARLEY_PURGE_DELAY_S")
      ->check(CLI::Range(int64_t{0}, kMaxRetentionSeconds))
      ->capture_default_str();
  app.add_option("--purge-interval-ms", c.core.retention.purge_interval_ms,
                 "Pause of the background purge step when it has caught up")
      ->envname("PARLEY_PURGE_INTERVAL_MS")
      ->check(CLI::Range(int64_t{10}, int64_t{3'600'000}))
      ->capture_default_str();
  int64_t stream_retention_s = c.core.retention.stream_retention_ms / 1000;
  app.add_option("--stream-retention-s", stream_retention_s,
                 "User-stream entries older than this are trimmed (unless a device seen within "
                 "--stream-device-grace-s still needs them); a device whose cursor is below what is kept gets "
                 "cursor_too_old and takes a snapshot; 0 = no time horizon")
      ->envname("PARLEY_STREAM_RETENTION_S")
      ->check(CLI::Range(int64_t{0}, kMaxRetentionSeconds))
      ->capture_default_str();
  app.add_option("--stream-max-entries", c.core.retention.stream_max_entries,
                 "Keep at most this many newest entries of each user's stream (older ones are trimmed unless a "
                 "device seen within --stream-device-grace-s still needs them); 0 = no cap")
      ->envname("PARLEY_STREAM_MAX_ENTRIES")
      ->check(CLI::Range(int64_t{0}, int64_t{1'000'000'000}))
      ->capture_default_str();
  int64_t stream_device_grace_s = c.core.retention.stream_device_grace_ms / 1000;
  app.add_option("--stream-device-grace-s", stream_device_grace_s,
                 "A live device seen within this long keeps every stream entry it has not acknowledged, whatever "
                 "the horizon and the cap; 0 = no device holds entries back")
      ->envname("PARLEY_STREAM_DEVICE_GRACE_S")
      ->check(CLI::Range(int64_t{0}, kMaxRetentionSeconds))
      ->capture_default_str();
  app.add_option("--stream-trim-interval-ms", c.core.retention.stream_trim_interval_ms,
                 "Pause of the stream trim job after a pass over every user")
      ->envname("PARLEY_STREAM_TRIM_INTERVAL_MS")
      ->check(CLI::Range(int64_t{10}, int64_t{86'400'000}))
      ->capture_default_str();
  // The cold tier (issue 12; docs/operations.md "Cold tier").
  int64_t cold_after_s = c.core.retention.cold_after_ms / 1000;
  app.add_option("--cold-after-s", cold_after_s,
                 "Texts of messages older than this are compacted into compressed blocks per conversation "
                 "(read back transparently); 0 = off")
      ->envname("PARLEY_COLD_AFTER_S")
      ->check(CLI::Range(int64_t{0}, kMaxRetentionSeconds))
      ->capture_default_str();
  app.add_option("--compact-interval-ms", c.core.retention.compact_interval_ms,
                 "Pause of the background compaction step when nothing more is due")
      ->envname("PARLEY_COMPACT_INTERVAL_MS")
      ->check(CLI::Range(int64_t{10}, int64_t{3'600'000}))
      ->capture_default_str();
  app.add_option("--presence-coalesce-ms", c.core.presence.coalesce_ms,
                 "An offline period shorter than this is not broadcast (presence flap coalescing)")
      ->envname("PARLEY_PRESENCE_COALESCE_MS")
      ->check(CLI::Range(int64_t{0}, int64_t{600'000}))
      ->capture_default_str();
  app.add_option("--presence-min-interval-ms", c.core.presence.min_update_interval_ms,
                 "At most one presence update per watched user per subscriber this often")
      ->envname("PARLEY_PRESENCE_MIN_INTERVAL_MS")
      ->check(CLI::Range(int64_t{0}, int64_t{600'000}))
      ->capture_default_str();
  app.add_option("--last-seen-flush-ms", c.core.presence.last_seen_flush_ms,
                 "Write users' last seen times to the store at most this long after they change, all at once (0: at "
                 "once)")
      ->envname("PARLEY_LAST_SEEN_FLUSH_MS")
      ->check(CLI::Range(int64_t{0}, int64_t{60'000}))
      ->capture_default_str();
  app.add_option("--shutdown-drain-ms", c.shutdown_drain_ms, "Longest wait for connections to close on shutdown")
      ->envname("PARLEY_SHUTDOWN_DRAIN_MS")
      ->check(CLI::Range(0, 600'000))
      ->capture_default_str();
  int64_t idle_expiry_s = 0;
  app.add_option("--device-idle-expiry-s", idle_expiry_s,
                 "Revoke a device token unused (no auth or ack) for this many seconds; 0: tokens never expire by time")
      ->envname("PARLEY_DEVICE_IDLE_EXPIRY_S")
      ->check(CLI::Range(int64_t{0}, int64_t{10} * 365 * 86400))
      ->capture_default_str();
  app.add_option("--commit-max-batch", c.store.commit_max_batch, "Most writes in one store transaction (group commit)")
      ->envname("PARLEY_COMMIT_MAX_BATCH")
      ->check(CLI::Range(1, 100'000))
      ->capture_default_str();
  app.add_option("--commit-deadline-us", c.store.commit_deadline_us,
                 "Longest wait for a group commit to fill (0: commit what is queued)")
      ->envname("PARLEY_COMMIT_DEADLINE_US")
      ->check(CLI::Range(0, 1'000'000))
      ->capture_default_str();
  app.add_option("--commit-adaptive-wait-us", c.store.commit_adaptive_wait_us,
                 "With no --commit-deadline-us: longest wait for a group commit to fill, taken only while commits "
                 "are small and more writes are arriving (0: never wait)")
      ->envname("PARLEY_COMMIT_ADAPTIVE_WAIT_US")
      ->check(CLI::Range(0, 100'000))
      ->capture_default_str();
  app.add_option("--commit-loaded-wait-us", c.store.commit_loaded_wait_us,
                 "With the adaptive wait: its longest wait while the store's writer is busy most of the time, "
                 "for a larger commit (0: the wait does not grow with the load)")
      ->envname("PARLEY_COMMIT_LOADED_WAIT_US")
      ->check(CLI::Range(0, 100'000))
      ->capture_default_str();
  std::string store_spec = "sqlite";
  app.add_option("--store", store_spec,
                 "Store: 'sqlite' (a file in --data-dir) or a PostgreSQL URL postgres://... / postgresql://... "
                 "(the database must exist; its schema is created and migrated at start)")
      ->envname("PARLEY_STORE")
      ->capture_default_str();
  app.add_option("--pg-read-connections", c.store.postgres_read_connections,
                 "PostgreSQL store: connections (one thread each) serving reads; writes use one more")
      ->envname("PARLEY_PG_READ_CONNECTIONS")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  app.add_option("--sqlite-read-connections", c.store.sqlite_read_connections,
                 "SQLite store: read-only connections (one thread each) serving reads; a long read (a large "
                 "snapshot, a broad search) holds up only its own. Default: one per CPU this process may use (its "
                 "affinity), at most " +
                     std::to_string(store::kMaxDefaultSqliteReadConnections))
      ->envname("PARLEY_SQLITE_READ_CONNECTIONS")
      ->check(CLI::Range(1, store::kMaxSqliteReadConnections))
      ->capture_default_str();
  app.add_option("--sqlite-cache-kib", c.store.sqlite_cache_kib, "SQLite page cache per connection, KiB")
      ->envname("PARLEY_SQLITE_CACHE_KIB")
      ->check(CLI::Range(1024, 16 << 20))
      ->capture_default_str();
  app.add_option("--sqlite-checkpoint-pages", c.store.sqlite_checkpoint_pages,
                 "SQLite: checkpoint the WAL on a background thread once it holds this many pages (0: the writer "
                 "checkpoints every 1,000 pages itself, SQLite's default)")
      ->envname("PARLEY_SQLITE_CHECKPOINT_PAGES")
      ->check(CLI::Range(0, 1 << 20))
      ->capture_default_str();
  app.add_option("--sqlite-checkpoint-yield-pages", c.store.sqlite_checkpoint_yield_pages,
                 "SQLite: the background checkpointer yields the core after every N pages it copies, so the I/O and "
                 "writer threads run in between (0: never yields)")
      ->envname("PARLEY_SQLITE_CHECKPOINT_YIELD_PAGES")
      ->check(CLI::Range(0, 1 << 20))
      ->capture_default_str();
  app.add_option("--sqlite-search-handoff-kib", c.store.sqlite_search_handoff_kib,
                 "SQLite: the store's writer hands committed messages' texts to the search indexer in memory, up to "
                 "this many KiB not indexed yet (past it, and after a restart, the indexer reads them from the store "
                 "file); 0: the indexer always reads the store file")
      ->envname("PARLEY_SQLITE_SEARCH_HANDOFF_KIB")
      ->check(CLI::Range(0, 1 << 22))
      ->capture_default_str();
  app.add_option("--sqlite-page-size", c.store.sqlite_page_size,
                 "SQLite page size in bytes for a new database (an existing database keeps its own)")
      ->envname("PARLEY_SQLITE_PAGE_SIZE")
      ->check(CLI::IsMember({512, 1024, 2048, 4096, 8192, 16384, 32768, 65536}))
      ->capture_default_str();
  app.add_option("--admin-token", c.admin.token,
                 "Token that authorises the admin API (Authorization: Bearer ...); empty: admin API disabled")
      ->envname("PARLEY_ADMIN_TOKEN");
  app.add_option("--backup-dir", c.admin.backup_dir,
                 "Directory the admin API's online backup writes into (created if missing); default DATA_DIR/backups")
      ->envname("PARLEY_BACKUP_DIR");
  app.add_option("--admin-max-bulk-users", c.admin.max_bulk_users, "Most users in one admin bulk request")
      ->envname("PARLEY_ADMIN_MAX_BULK_USERS")
      ->check(CLI::Range(size_t{1}, size_t{1'000'000}))
      ->capture_default_str();
  // Push notifications (issue 11; docs/operations.md "Push notifications").
  app.add_option("--push-webhook-url", c.push.webhook_url,
                 "Push: POST each push to this http:// or https:// URL (your APNs/FCM relay); empty: push is off")
      ->envname("PARLEY_PUSH_WEBHOOK_URL");
  app.add_option("--push-webhook-ca", c.push.webhook_ca_file,
                 "Push: CA certificates (PEM) an https:// webhook's certificate must chain to; default: the "
                 "system's trust store")
      ->envname("PARLEY_PUSH_WEBHOOK_CA");
  app.add_option("--push-webhook-secret", c.push.webhook_secret,
                 "Push: HMAC-SHA256 key signing each webhook body (required with --push-webhook-url)")
      ->envname("PARLEY_PUSH_WEBHOOK_SECRET");
  app.add_option("--push-coalesce-ms", c.core.push.coalesce_ms,
                 "Push: at most one push per device per this window (a burst sends the latest state once)")
      ->envname("PARLEY_PUSH_COALESCE_MS")
      ->check(CLI::Range(int64_t{0}, int64_t{3'600'000}))
      ->capture_default_str();
  app.add_option("--push-timeout-ms", c.push.timeout_ms, "Push: timeout of one webhook attempt (connect to response)")
      ->envname("PARLEY_PUSH_TIMEOUT_MS")
      ->check(CLI::Range(10, 300'000))
      ->capture_default_str();
  app.add_option("--search-index-interval-ms", c.search_index.interval_ms,
                 "Message search: pause of the background indexer when its queue is empty (the usual lag before a "
                 "new or edited message can be found)")
      ->envname("PARLEY_SEARCH_INDEX_INTERVAL_MS")
      ->check(CLI::Range(10, 60'000))
      ->capture_default_str();
  app.add_option("--search-index-batch", c.search_index.batch,
                 "Message search: messages indexed per background step (one transaction of its own)")
      ->envname("PARLEY_SEARCH_INDEX_BATCH")
      ->check(CLI::Range(1, 10'000))
      ->capture_default_str();
  app.add_option("--push-poll-ms", c.push.poll_ms, "Push: how often the queue is polled for due jobs")
      ->envname("PARLEY_PUSH_POLL_MS")
      ->check(CLI::Range(10, 60'000))
      ->capture_default_str();
  app.add_option("--push-lease-ms", c.push.lease_ms,
                 "Push: a claimed job's lease; a node that dies releases its claims when it expires (> timeout)")
      ->envname("PARLEY_PUSH_LEASE_MS")
      ->check(CLI::Range(int64_t{100}, int64_t{3'600'000}))
      ->capture_default_str();
  app.add_option("--push-max-in-flight", c.push.max_in_flight, "Push: most webhook attempts in flight on this node")
      ->envname("PARLEY_PUSH_MAX_IN_FLIGHT")
      ->check(CLI::Range(1, 10'000))
      ->capture_default_str();
  app.add_option("--push-backoff-initial-ms", c.push.backoff_initial_ms,
                 "Push: first retry delay after a 5xx or timeout (doubles per attempt, with jitter)")
      ->envname("PARLEY_PUSH_BACKOFF_INITIAL_MS")
      ->check(CLI::Range(int64_t{1}, int64_t{3'600'000}))
      ->capture_default_str();
  app.add_option("--push-backoff-max-ms", c.push.backoff_max_ms, "Push: longest retry delay")
      ->envname("PARLEY_PUSH_BACKOFF_MAX_MS")
      ->check(CLI::Range(int64_t{1}, int64_t{86'400'000}))
      ->capture_default_str();
  app.add_option("--push-max-attempts", c.push.max_attempts, "Push: a push that failed this many times is dropped")
      ->envname("PARLEY_PUSH_MAX_ATTEMPTS")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  app.add_option("--push-node-id", c.push.node_id,
                 "Push: this node's name in claim leases (unique per process); default hostname-pid-random")
      ->envname("PARLEY_PUSH_NODE_ID");
  std::vector<std::string> rate_limits;
  app.add_option("--rate-limit", rate_limits,
                 "Override a rate limit: NAME=PER_SECOND/BURST (repeatable). Names: send_per_device, send_per_user, "
                 "search_per_user, social_per_user, typing_per_device, presence_per_device, failed_login_per_username, failed_login_per_address, "
                 "register_per_address")
      ->envname("PARLEY_RATE_LIMIT");
  bool relaxed_limits = false;
  app.add_flag("--relaxed-rate-limits", relaxed_limits,
               "TESTS AND BENCHMARKS ONLY: multiply every rate limit by 1000")
      ->envname("PARLEY_RELAXED_RATE_LIMITS");
  app.add_flag("--insecure-fast-password-hashing", fast_hashing,
               "TESTS AND BENCHMARKS ONLY: Argon2id with minimal cost, so accounts can be made quickly")
      ->envname("PARLEY_INSECURE_FAST_PASSWORD_HASHING");
  // Cluster (docs/operations.md, "Cluster").
  app.add_option("--redis", c.redis,
                 "Redis of the cluster, HOST:PORT or redis://[[USER]:PASSWORD@]HOST[:PORT]; empty: a single node (no "
                 "Redis)")
      ->envname("PARLEY_REDIS");
  std::string redis_user, redis_password;
  app.add_option("--redis-user", redis_user, "The Redis ACL user the nodes AUTH as (with --redis-password)")
      ->envname("PARLEY_REDIS_USER");
  app.add_option("--redis-password", redis_password,
                 "The password sent with AUTH to Redis (requirepass, or the ACL user's); prefer the environment "
                 "variable, which other users cannot read from the process list")
      ->envname("PARLEY_REDIS_PASSWORD");
  app.add_option("--node-id", c.fabric.node_id,
                 "This node's id in the cluster, unique among live nodes (default: HOSTNAME-PID)")
      ->envname("PARLEY_NODE_ID");
  app.add_option("--redis-route-ttl-ms", c.fabric.route_ttl_ms,
                 "How long a node's device routes and presence live in Redis without a refresh")
      ->envname("PARLEY_REDIS_ROUTE_TTL_MS")
      ->capture_default_str();
  app.add_option("--redis-refresh-ms", c.fabric.refresh_interval_ms,
                 "How often a node re-writes its routes and publishes its presence snapshot")
      ->envname("PARLEY_REDIS_REFRESH_MS")
      ->capture_default_str();
  app.add_option("--recheck-batch", c.core.recheck_batch,
                 "Cluster: after a Redis cut, how many connected users (and presence subscriptions) a node re-reads "
                 "at a time for changes it may have missed")
      ->envname("PARLEY_RECHECK_BATCH")
      ->check(CLI::Range(1, 100'000))
      ->capture_default_str();
  app.add_option("--rate-limit-sync-ms", c.core.rate_limit_sync_ms,
                 "Cluster: how often a node reconciles its per-user and per-address rate-limit buckets with the "
                 "others' through Redis (0: never; each node then limits alone)")
      ->envname("PARLEY_RATE_LIMIT_SYNC_MS")
      ->check(CLI::Range(0, 60'000))
      ->capture_default_str();
#ifdef PARLEY_FAULT_SWITCHES
  app.add_option("--fault", c.faults,
                 "TEST BUILDS ONLY: inject a fault, NAME@N (repeatable; docs/checker.md, \"Fault switches\")")
      ->envname("PARLEY_FAULTS")
      ->delimiter(',');
#endif

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    *exit_code = app.exit(e);
    return Status(ErrorCode::kBadRequest, e.what());
  }

  auto colon = c.listen.rfind(':');
  if (colon == std::string::npos) return Status(ErrorCode::kBadRequest, "--listen must be HOST:PORT");
  c.gateway.host = c.listen.substr(0, colon);
  if (c.gateway.host.size() > 2 && c.gateway.host.front() == '[') c.gateway.host = c.gateway.host.substr(1, c.gateway.host.size() - 2);
  try {
    int port = std::stoi(c.listen.substr(colon + 1));
    if (port < 0 || port > 65535) throw std::out_of_range("port");
    c.gateway.port = static_cast<uint16_t>(port);
  } catch (const std::exception&) {
    return Status(ErrorCode::kBadRequest, "--listen port must be 0-65535");
  }
  if (c.gateway.tls_cert_file.empty() != c.gateway.tls_key_file.empty())
    return Status(ErrorCode::kBadRequest, "--tls-cert and --tls-key go together: give both or neither");
  for (auto& origin : c.gateway.allowed_origins) {
    if (!gateway::ValidAllowedOrigin(origin))
      return Status(ErrorCode::kBadRequest,
                    "--allowed-origins entries must be '*' or scheme://host[:port] (http or https, no path): '" +
                        origin + "'");
  }
  if (c.core.heartbeat_timeout_ms <= c.core.heartbeat_interval_ms)
    return Status(ErrorCode::kBadRequest, "--heartbeat-timeout-ms must be larger than --heartbeat-interval-ms");
  c.gateway.idle_timeout_ms = c.core.heartbeat_timeout_ms;
  c.core.max_page_bytes = std::min(protocol::kMaxPageBytes, c.gateway.max_outbound_queue_bytes / 4);
  if (!c.redis.empty()) {
    if (Status st = fabric::ParseRedisAddress(c.redis, &c.fabric); !st.ok()) return st;
    if (!redis_password.empty()) c.fabric.password = redis_password;
    if (!redis_user.empty()) c.fabric.username = redis_user;
    if (!c.fabric.username.empty() && c.fabric.password.empty())
      return Status(ErrorCode::kBadRequest, "--redis-user needs a password (--redis-password or the redis:// URL)");
    if (c.fabric.node_id.empty()) {
      char host[256] = {};
      gethostname(host, sizeof host - 1);
      c.fabric.node_id = std::string(host) + "-" + std::to_string(getpid());
    }
    if (Status st = fabric::ValidateRedisFabricConfig(c.fabric); !st.ok()) return st;
    c.core.cluster = true;
  }
  if (!c.push.webhook_url.empty()) {
    std::string error;
    auto endpoint = netutil::ParseHttpUrl(c.push.webhook_url, &error, nullptr, /*allow_https=*/true);
    if (!endpoint)
      return Status(ErrorCode::kBadRequest, "--push-webhook-url must be an http:// or https:// URL (" + error + ")");
    if (!c.push.webhook_ca_file.empty() && !endpoint->tls)
      return Status(ErrorCode::kBadRequest, "--push-webhook-ca needs an https:// --push-webhook-url");
    if (c.push.webhook_secret.empty())
      return Status(ErrorCode::kBadRequest, "--push-webhook-url needs --push-webhook-secret (the signing key)");
    if (c.push.lease_ms <= c.push.timeout_ms)
      return Status(ErrorCode::kBadRequest, "--push-lease-ms must be larger than --push-timeout-ms");
    if (c.push.backoff_max_ms < c.push.backoff_initial_ms)
      return Status(ErrorCode::kBadRequest, "--push-backoff-max-ms must be at least --push-backoff-initial-ms");
    c.core.push.enabled = true;
  }
#ifdef PARLEY_FAULT_SWITCHES
  // fabric_drop_publish@N and fabric_mute_at_close@N are the fabric's
  // (RedisFabricConfig::drop_publish_at, mute_at_close), every other switch
  // the store's.
  for (auto it = c.faults.begin(); it != c.faults.end();) {
    const std::pair<std::string_view, int64_t*> fabric_faults[] = {
        {"fabric_drop_publish@", &c.fabric.drop_publish_at}, {"fabric_mute_at_close@", &c.fabric.mute_at_close}};
    bool taken = false;
    for (const auto& [prefix, at] : fabric_faults) {
      if (it->rfind(prefix, 0) != 0) continue;
      try {
        *at = std::stoll(it->substr(prefix.size()));
      } catch (const std::exception&) {
        *at = 0;
      }
      if (*at <= 0) return Status(ErrorCode::kBadRequest, "--fault: " + std::string(prefix) + "N needs N >= 1");
      taken = true;
    }
    if (taken) it = c.faults.erase(it);
    else ++it;
  }
  for (const auto& f : c.faults) {
    auto parsed = store::ParseFaultSwitch(f);
    if (!parsed) return Status(ErrorCode::kBadRequest, "--fault: " + parsed.error().message());
  }
#endif
  c.core.device_idle_expiry_ms = idle_expiry_s * 1000;
  c.core.retention.max_age_ms = retention_max_age_s * 1000;
  c.core.retention.purge_delay_ms = purge_delay_s * 1000;
  c.core.retention.stream_retention_ms = stream_retention_s * 1000;
  c.core.retention.stream_device_grace_ms = stream_device_grace_s * 1000;
  c.core.retention.cold_after_ms = cold_after_s * 1000;
  auto& rl = c.core.rate_limits;
  std::pair<const char*, core::RateLimit*> named[] = {
      {"send_per_device", &rl.send_per_device},
      {"send_per_user", &rl.send_per_user},
      {"search_per_user", &rl.search_per_user},
      {"social_per_user", &rl.social_per_user},
      {"failed_login_per_username", &rl.failed_login_per_username},
      {"failed_login_per_address", &rl.failed_login_per_address},
      {"register_per_address", &rl.register_per_address},
      {"typing_per_device", &rl.typing_per_device},
      {"presence_per_device", &rl.presence_per_device},
  };
  if (relaxed_limits)
    for (auto& [name, limit] : named) {
      limit->per_second *= 1000;
      limit->burst *= 1000;
    }
  for (const auto& spec : rate_limits) {
    auto eq = spec.find('='), slash = spec.find('/');
    core::RateLimit* target = nullptr;
    for (auto& [name, limit] : named)
      if (eq != std::string::npos && spec.compare(0, eq, name) == 0 && std::strlen(name) == eq) target = limit;
    double per_second = 0, burst = 0;
    try {
      if (target && slash != std::string::npos && slash > eq) {
        per_second = std::stod(spec.substr(eq + 1, slash - eq - 1));
        burst = std::stod(spec.substr(slash + 1));
      }
    } catch (const std::exception&) {
      target = nullptr;
    }
    if (!target || per_second <= 0 || burst < 1)
      return Status(ErrorCode::kBadRequest, "--rate-limit must be NAME=PER_SECOND/BURST with a known name, "
                                            "PER_SECOND > 0 and BURST >= 1: '" + spec + "'");
    target->per_second = per_second;
    target->burst = burst;
  }
  c.core.password_cost = fast_hashing ? core::PasswordCost::kInsecureFast : core::PasswordCost::kInteractive;
  c.admin.password_cost = c.core.password_cost;
  c.store.sqlite_path = c.data_dir + "/parley.db";
  c.store.reader_sched_batch = c.gateway.io_sched_batch;
  if (c.admin.backup_dir.empty()) c.admin.backup_dir = c.data_dir + "/backups";
  if (store::IsPostgresUrl(store_spec)) {
    c.store.backend = "postgres";
    c.store.postgres_url = store_spec;
  } else if (store_spec != "sqlite") {
    return Status(ErrorCode::kBadRequest,
                  "--store must be 'sqlite' or a postgres:// or postgresql:// URL: '" + store_spec + "'");
  }
  // Nodes of a cluster share one durable log: a node's own SQLite file
  // would give each node different data under one fabric.
  if (!c.redis.empty() && c.store.backend != "postgres")
    return Status(ErrorCode::kBadRequest, "--redis (a cluster) needs a PostgreSQL --store shared by every node");
  return c;
}

}  // namespace parley::server
