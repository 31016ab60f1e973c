// Picks a Store backend by name. The only place that names backends.
#pragma once

#include <algorithm>
#include <functional>
#include <memory>
#include <string>

#include "common/clock.h"
#include "common/status.h"
#include "common/this_thread.h"
#include "store/store.h"

namespace parley::store {

// Default of StoreConfig::commit_adaptive_wait_us (--commit-adaptive-wait-us),
// chosen by measurement (docs/benchmarks.md, "Commits sized to the load, on
// a quieter machine"): at 3,000 msgs/s it halves the commits and takes 18 % of
// parleyd's CPU per message, for 0.4 ms more median latency.
inline constexpr int kDefaultCommitAdaptiveWaitUs = 300;
// Default of StoreConfig::commit_loaded_wait_us (--commit-loaded-wait-us),
// chosen by measurement (docs/benchmarks.md, "Commits sized to the writer's
// load"): the longest wait for a group commit while the writer is busy.
inline constexpr int kDefaultCommitLoadedWaitUs = 1000;
// SQLite: the WAL size, in pages, at which a background thread checkpoints it
// (copies its pages back into the database file). 32,768 pages of 4 KiB:
// 128 MiB. A checkpoint copies each page once however often it was rewritten
// since the last one, so fewer, larger checkpoints copy less: against 8,192
// pages the checkpointer's CPU per message fell by three quarters at 5,000
// msgs/s (docs/benchmarks.md, "The checkpoint threshold").
inline constexpr int kDefaultSqliteCheckpointPages = 32768;
inline constexpr int kDefaultSqlitePageSize = 4096;
// SQLite: read connections (StoreConfig::sqlite_read_connections); at most
// kMaxSqliteReadConnections. By default one per CPU the process may use
// (its affinity: taskset, a container's cpuset), at most
// kMaxDefaultSqliteReadConnections: on one CPU a second reader cannot run
// beside the first and only adds thread switches (docs/benchmarks.md, "Read
// connections"), and beyond a few, readers mostly wait for the same core
// thread that consumes their answers. Reads then complete out of order;
// core keeps what a connection asked for in request order regardless
// (core/chat_service.h, "Ordering").
inline constexpr int kMaxDefaultSqliteReadConnections = 4;
inline constexpr int kMaxSqliteReadConnections = 64;
inline int DefaultSqliteReadConnections() { return std::clamp(CpusAvailable(), 1, kMaxDefaultSqliteReadConnections); }
// SQLite: the checkpointer gives up the core after copying this many pages
// (StoreConfig::sqlite_checkpoint_yield_pages), chosen by measurement
// (docs/benchmarks.md, "The checkpointer yields").
inline constexpr int kDefaultSqliteCheckpointYieldPages = 8;
// SQLite: the most the store's writer holds in memory for the search writer
// (StoreConfig::sqlite_search_handoff_kib), KiB: the texts of committed
// messages not indexed yet, plus ~100 bytes an entry. 16 MiB is about a
// minute at 5,000 msgs/s of 140-byte texts; past it the search writer reads
// the rest through the store file, as after a restart.
inline constexpr int kDefaultSqliteSearchHandoffKib = 16384;

struct StoreConfig {
  std::string backend = "sqlite";  // "sqlite" or "postgres"
  std::string sqlite_path;         // file of the SQLite store (created if missing)
  // PostgreSQL: a libpq connection URI (postgres://... or postgresql://...)
  // or key=value connection string. The database must exist; its schema is
  // created and migrated on open.
  std::string postgres_url;
  // PostgreSQL: connections (and threads) serving reads; writes use one more.
  int postgres_read_connections = 2;
  // Group commit: a transaction takes every queued write, up to this many.
  int commit_max_batch = 1000;
  // ... and, when fewer are queued, waits at most this long for more (0: commit
  // what is there at once; a commit in progress still lets the next batch grow).
  int commit_deadline_us = 0;
  // ... or, with no fixed deadline, waits at most this long only while commits
  // are small and more writes are arriving (store/commit_pacer.h); 0: never.
  int commit_adaptive_wait_us = kDefaultCommitAdaptiveWaitUs;
  // ... growing, while the writer is busy most of the time, up to this long
  // for a batch of up to CommitPacer::kLoadedTargetBatch writes
  // (store/commit_pacer.h, "Sized to the load"); 0: waits do not grow.
  int commit_loaded_wait_us = kDefaultCommitLoadedWaitUs;
  // SQLite page cache per connection, KiB.
  int sqlite_cache_kib = 65536;
  // SQLite: read-only connections (one thread each) serving reads. Under WAL
  // each reads its own snapshot while the writer commits, so a long read
  // (a large snapshot, a broad search) holds up only its own connection:
  // with one, every login and sync queued behind it.
  int sqlite_read_connections = DefaultSqliteReadConnections();
  // Both backends: the reader threads run under SCHED_BATCH
  // (common/this_thread.h), so that a read queued by an I/O thread does not
  // preempt it on a core they share: the reader runs when the I/O thread
  // blocks or its slice ends, and takes every read queued meanwhile. parleyd
  // sets it with the I/O threads' policy (--io-sched-batch).
  bool reader_sched_batch = false;
  // Test-only: runs on the reader's thread before each read's transaction
  // (tests hold a reader busy with it), and after it, before its answer is
  // delivered (tests hold an answer read from an older snapshot while later
  // reads complete); empty in production.
  std::function<void()> sqlite_before_read_for_test;
  std::function<void()> sqlite_after_read_for_test;
  // SQLite: checkpoint the WAL on a thread of its own once it holds this many
  // pages (the writer then never copies pages back itself, unless the WAL
  // reaches kWalHardLimitFactor times this because checkpoints cannot keep
  // up); 0: the writer checkpoints after the commit that passes 1,000 pages,
  // as SQLite does by default.
  int sqlite_checkpoint_pages = kDefaultSqliteCheckpointPages;
  // SQLite: the checkpointer yields the core (sched_yield) after every this
  // many pages it copies, so a checkpoint of thousands of pages never holds
  // the core the I/O and writer threads share with it for a whole scheduler
  // slice; 0: it never yields.
  int sqlite_checkpoint_yield_pages = kDefaultSqliteCheckpointYieldPages;
  // SQLite page size, bytes, for a database this creates (an existing one
  // keeps its own). Every B-tree leaf a commit touches is written to the WAL
  // whole, so the page size scales the bytes a commit writes.
  int sqlite_page_size = kDefaultSqlitePageSize;
  // SQLite: the store's writer hands each committed message's text to the
  // search writer in memory, up to this many KiB not indexed yet, so that
  // the search writer does not read it back through the store file
  // (sqlite_search.h, "The texts in memory"); 0: it always reads the store.
  int sqlite_search_handoff_kib = kDefaultSqliteSearchHandoffKib;
  // Stamps each message's stored_at (the time its commit batch is written);
  // nullptr: the system clock. Not owned; must outlive the store.
  const Clock* clock = nullptr;
};

// Opens (creating and migrating as needed) the configured store.
// Fails kBadRequest for an unknown backend, kUnavailable/kInternal if it
// cannot be opened.
Result<std::unique_ptr<Store>> OpenStore(const StoreConfig& config);

// True if `url` names a PostgreSQL store (postgres:// or postgresql://).
bool IsPostgresUrl(const std::string& url);

}  // namespace parley::store
