// A thin wrapper over one SQLite connection, internal to the SQLite store.
//
// Db owns a connection and its cache of prepared statements (prepared once
// with SQLITE_PREPARE_PERSISTENT, keyed by the SQL text, finalized when the
// Db is destroyed). Stmt borrows a cached statement for one use and resets it
// (clearing bindings) when it goes out of scope.
//
// Errors are sticky: the first SQLite failure on a connection is recorded in
// the Db (mapped to a Status: SQLITE_FULL -> kStorageFull, anything else ->
// kInternal) and every later Stmt call becomes a no-op that yields no rows,
// until ClearError(). Callers run a whole unit of work (one write batch, one
// read) and check failed() once at its end, instead of threading a Status
// through every statement. Expected outcomes (no row, a duplicate) are never
// errors here: the store checks for them before writing.
//
// Thread-safety: none. A Db and its Stmts are used by exactly one thread
// (the store's writer or its reader); the connection is opened NOMUTEX.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>

#include "common/status.h"

struct sqlite3;
struct sqlite3_stmt;

namespace parley::store::sqlite {

// The page cache's truncations at the ends of write transactions, over the
// whole process: passed on to SQLite's page cache (which then walks what it
// holds), and skipped because no cached page could be past the limit
// (sqlite_db.cc, PageCacheLayer).
struct PageCacheTruncations {
  uint64_t passed = 0;
  uint64_t skipped = 0;
};
PageCacheTruncations PageCacheTruncationsForTest();

// VM steps and full-scan steps of the statements run for one operation.
struct StepCounter {
  uint64_t vm_steps = 0;
  uint64_t full_scan_steps = 0;
};

class Db {
 public:
  // Opens `path` (read-write and created if missing, or read-only) and applies
  // the per-connection pragmas. `page_size` (bytes; 0: SQLite's default)
  // applies only when this creates the database: a database keeps the page
  // size it was created with. Fails kUnavailable if the file cannot be
  // opened.
  static Result<std::unique_ptr<Db>> Open(const std::string& path, bool read_only, int cache_kib, int page_size = 0);
  ~Db();
  Db(const Db&) = delete;
  Db& operator=(const Db&) = delete;

  // Runs SQL text of one or more statements without caching (pragmas, DDL,
  // migrations). Records and returns the error, if any.
  Status Exec(const char* sql);
  // Runs `sql` outside the sticky-error path (ROLLBACK after a failure).
  void ExecIgnoringErrors(const char* sql);

  // The cached statement for `sql`, preparing it on first use; nullptr (and
  // an error recorded) if it does not prepare. REQUIRES: `sql` has static
  // storage (a string literal): it is the cache key.
  sqlite3_stmt* Cached(std::string_view sql);

  // Records `rc` (the connection's current error) unless an error is already
  // recorded.
  void Fail(int rc);
  bool failed() const { return !error_.ok(); }
  const Status& error() const { return error_; }
  void ClearError() { error_ = Status::Ok(); }
  // Ends a unit of work that failed: rolls back the transaction still open
  // (SQLite may have rolled it back already, as it does on some I/O and
  // full errors), clears the recorded error and returns it (Ok if none).
  Status TakeError();

  bool in_transaction() const;
  int64_t last_insert_rowid() const;
  sqlite3* handle() { return db_; }
  // Rows changed by the last INSERT, UPDATE or DELETE.
  int64_t Changes();
  // Flushes the database file (not the WAL) to the disk through SQLite's
  // VFS, as a checkpoint's own sync would. Fails kInternal (also for an
  // in-memory database, which has no file).
  Status SyncDatabaseFile();

 private:
  explicit Db(sqlite3* db) : db_(db) {}

  sqlite3* db_;
  // Keyed by the SQL literal's address and length, not its text: hashing a
  // statement's text at every use was 2 % of the writer's instructions.
  // Literals have static storage, so an address always holds the same text
  // (debug builds check it at every hit).
  struct SqlKey {
    const char* data;
    size_t size;
    bool operator==(const SqlKey&) const = default;
  };
  struct SqlKeyHash {
    size_t operator()(const SqlKey& k) const {
      return std::hash<const void*>{}(k.data) ^ (k.size * 0x9E3779B97F4A7C15ULL);
    }
  };
  std::unordered_map<SqlKey, sqlite3_stmt*, SqlKeyHash> stmts_;
  Status error_;
};

// One use of a cached statement. REQUIRES: text bound with BindText/BindBlob
// may be released at once (SQLite copies it).
class Stmt {
 public:
  // `counter`, when set, receives this use's VM and full-scan steps.
  Stmt(Db& db, std::string_view sql, StepCounter* counter = nullptr);
  ~Stmt();
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  // Parameters are 1-based, as in SQLite.
  Stmt& BindInt(int index, int64_t value);
  Stmt& BindText(int index, std::string_view text);
  Stmt& BindBlob(int index, std::string_view bytes);
  Stmt& BindNull(int index);

  // Advances to the next row: true if there is one; false when done or after
  // an error (recorded in the Db).
  bool Step();
  // Steps to the end (statements that return no rows).
  void Run();

  // Columns of the current row, 0-based.
  int64_t Int(int col) const;
  std::string Text(int col) const;
  std::string Blob(int col) const;
  bool IsNull(int col) const;

 private:
  Db& db_;
  sqlite3_stmt* stmt_;
  StepCounter* counter_;
};

}  // namespace parley::store::sqlite
