// Online backup and offline checks of a SQLite store file (issue 8): what
// the admin API's backup endpoint and `parley-admin restore` rely on.
//
// Functions, no state; each opens its own connections. Thread-safe. Errors:
// kBadRequest (a path that exists or cannot be written, a file that is not a
// Parley store or is damaged), kInternal (SQLite failed).
#pragma once

#include <cstdint>
#include <string>

#include "common/status.h"
#include "store/types.h"

namespace parley::store::sqlite {

// Copies the database at `source` into a new file `dest` with SQLite's
// online backup API: one read snapshot (under WAL the writer keeps
// committing meanwhile), written to `dest`.tmp, synced and renamed into
// place, so `dest` is either absent or complete. REQUIRES: `dest` does not
// exist.
Result<BackupResult> BackupFile(const std::string& source, const std::string& dest);

// What CheckStoreFile found.
struct StoreFileInfo {
  int schema_version = 0;
  int64_t bytes = 0;
  int64_t messages = 0;  // sum of the conversations' last seqs (PARLEY_CONVERSATION_LAST_SEQ)
  int64_t users = 0;
};

// Checks that `path` is an intact Parley SQLite store (PRAGMA
// integrity_check, the tables the server needs, a schema version no newer
// than `max_version`). Opens the file read-write (SQLite may create and
// remove -wal/-shm files next to it) but changes nothing in it.
Result<StoreFileInfo> CheckStoreFile(const std::string& path, int max_version);

}  // namespace parley::store::sqlite
