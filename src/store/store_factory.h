// Picks a Store backend by name. The only place that names backends.
#pragma once

#include <memory>
#include <string>

#include "common/status.h"
#include "store/store.h"

namespace parley::store {

struct StoreConfig {
  std::string backend = "sqlite";  // "sqlite" (later: "postgres")
  std::string sqlite_path;         // file of the SQLite store (created if missing)
  // Group commit: a transaction takes every queued write, up to this many.
  int commit_max_batch = 1000;
  // ... and, when fewer are queued, waits at most this long for more (0: commit
  // what is there at once; a commit in progress still lets the next batch grow).
  int commit_deadline_us = 0;
  // SQLite page cache per connection, KiB.
  int sqlite_cache_kib = 65536;
};

// Opens (creating and migrating as needed) the configured store.
// Fails kBadRequest for an unknown backend, kUnavailable/kInternal if it
// cannot be opened.
Result<std::unique_ptr<Store>> OpenStore(const StoreConfig& config);

}  // namespace parley::store
