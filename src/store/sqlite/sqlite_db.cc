// The connection wrapper keeps SQLite's C API in one file. Statements are
// prepared once per connection (SQLITE_PREPARE_PERSISTENT tells SQLite they
// will be reused, so it allocates them outside its lookaside) and reset after
// every use, which also releases the read snapshot a half-stepped SELECT
// would otherwise hold. Errors are sticky per connection so that the store's
// code reads as straight-line SQL; see sqlite_db.h.

#include "store/sqlite/sqlite_db.h"

#include <sqlite3.h>

#include <cassert>
#include <cstdint>
#include <mutex>
#include <utility>

#include <fmt/format.h>

#include "store/sqlite/wal_buffer_vfs.h"

namespace parley::store::sqlite {
namespace {

// SQLITE_TRANSIENT is an old-style cast in SQLite's header; spell it here once.
sqlite3_destructor_type Transient() {
  return reinterpret_cast<sqlite3_destructor_type>(static_cast<intptr_t>(-1));
}

Status StatusFromSqlite(sqlite3* db, int rc) {
  const char* msg = db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  if ((rc & 0xff) == SQLITE_FULL) return Status(ErrorCode::kStorageFull, fmt::format("sqlite: {}", msg));
  return Status(ErrorCode::kInternal, fmt::format("sqlite ({}): {}", rc, msg));
}

// Process-wide SQLite settings, before SQLite initialises (the first open or
// VFS lookup). Memory statistics off: with them on (SQLite's default) every
// allocation SQLite makes takes a global mutex to count itself, one lock and
// unlock per allocation on the writer's hot path, and nothing here reads the
// statistics (sqlite3_status, sqlite3_memory_used, heap limits). If something
// initialised SQLite first the call is refused and changes nothing.
void ConfigureSqliteOnce() {
  static std::once_flag once;
  std::call_once(once, [] { sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0); });
}

}  // namespace

Result<std::unique_ptr<Db>> Db::Open(const std::string& path, bool read_only, int cache_kib, int page_size) {
  ConfigureSqliteOnce();
  sqlite3* raw = nullptr;
  int flags = SQLITE_OPEN_NOMUTEX | (read_only ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
  // A writable connection gathers each commit's WAL frames into one write
  // (wal_buffer_vfs.h); that needs synchronous=FULL, set below.
  int rc = sqlite3_open_v2(path.c_str(), &raw, flags, read_only ? nullptr : WalBufferVfsName());
  if (rc != SQLITE_OK) {
    Status s(ErrorCode::kUnavailable,
             fmt::format("cannot open {}: {}", path, raw != nullptr ? sqlite3_errmsg(raw) : sqlite3_errstr(rc)));
    sqlite3_close(raw);
    return s;
  }
  std::unique_ptr<Db> db(new Db(raw));
  sqlite3_extended_result_codes(raw, 1);
  // A reader may briefly meet a lock while the writer checkpoints or recovers
  // the WAL; wait rather than fail.
  sqlite3_busy_timeout(raw, 5000);
  std::string pragmas = fmt::format(
      "PRAGMA cache_size = -{};"
      "PRAGMA temp_store = MEMORY;",
      cache_kib);
  if (!read_only) {
    // Before journal_mode: switching a new database to WAL writes its first
    // page, which fixes the page size. On an existing database a no-op.
    if (page_size > 0) pragmas += fmt::format("PRAGMA page_size = {};", page_size);
    // WAL with full fsync at every commit: an acknowledged write survives a
    // power cut. Batching, not a weaker sync, is what buys throughput. The
    // WAL buffer's correctness depends on it too (wal_buffer_vfs.h).
    pragmas +=
        "PRAGMA journal_mode = WAL;"
        "PRAGMA synchronous = FULL;"
        "PRAGMA secure_delete = OFF;";
  }
  if (Status s = db->Exec(pragmas.c_str()); !s.ok()) {
    return Status(ErrorCode::kUnavailable, fmt::format("cannot configure {}: {}", path, s.message()));
  }
  return db;
}

Db::~Db() {
  for (auto& [sql, stmt] : stmts_) sqlite3_finalize(stmt);
  sqlite3_close(db_);
}

Status Db::Exec(const char* sql) {
  char* err = nullptr;
  int rc = sqlite3_exec(db_, sql, nullptr, nullptr, &err);
  sqlite3_free(err);
  if (rc != SQLITE_OK) Fail(rc);
  return rc == SQLITE_OK ? Status::Ok() : StatusFromSqlite(db_, rc);
}

void Db::ExecIgnoringErrors(const char* sql) { sqlite3_exec(db_, sql, nullptr, nullptr, nullptr); }

Status Db::TakeError() {
  if (error_.ok()) return Status::Ok();
  if (in_transaction()) ExecIgnoringErrors("ROLLBACK");
  Status error = std::exchange(error_, Status::Ok());
  return error;
}

int64_t Db::Changes() { return sqlite3_changes64(db_); }

Status Db::SyncDatabaseFile() {
  sqlite3_file* file = nullptr;
  int rc = sqlite3_file_control(db_, "main", SQLITE_FCNTL_FILE_POINTER, &file);
  if (rc != SQLITE_OK) return StatusFromSqlite(db_, rc);
  // An in-memory database has a file object without methods.
  if (file == nullptr || file->pMethods == nullptr) return Status(ErrorCode::kInternal, "sqlite: no database file to sync");
  rc = file->pMethods->xSync(file, SQLITE_SYNC_NORMAL);
  return rc == SQLITE_OK ? Status::Ok() : StatusFromSqlite(nullptr, rc);
}

sqlite3_stmt* Db::Cached(std::string_view sql) {
  const SqlKey key{sql.data(), sql.size()};
  auto it = stmts_.find(key);
  if (it != stmts_.end()) {
    // A key whose text changed means a caller broke the static-storage rule.
    // (SQLite keeps the text of the statement it prepared: `sql` up to any
    // trailing text after it.)
    assert(it->second == nullptr || sql.starts_with(sqlite3_sql(it->second)));
    return it->second;
  }
  sqlite3_stmt* stmt = nullptr;
  int rc = sqlite3_prepare_v3(db_, sql.data(), static_cast<int>(sql.size()), SQLITE_PREPARE_PERSISTENT, &stmt,
                              nullptr);
  if (rc != SQLITE_OK) {
    Fail(rc);
    return nullptr;
  }
  stmts_.emplace(key, stmt);
  return stmt;
}

void Db::Fail(int rc) {
  if (error_.ok()) error_ = StatusFromSqlite(db_, rc);
}

bool Db::in_transaction() const { return sqlite3_get_autocommit(db_) == 0; }

int64_t Db::last_insert_rowid() const { return sqlite3_last_insert_rowid(db_); }

Stmt::Stmt(Db& db, std::string_view sql, StepCounter* counter)
    : db_(db), stmt_(db.failed() ? nullptr : db.Cached(sql)), counter_(counter) {
  if (stmt_ != nullptr && counter_ != nullptr) {
    // Start this use's count at zero, whatever other operations ran before.
    sqlite3_stmt_status(stmt_, SQLITE_STMTSTATUS_VM_STEP, 1);
    sqlite3_stmt_status(stmt_, SQLITE_STMTSTATUS_FULLSCAN_STEP, 1);
  }
}

Stmt::~Stmt() {
  if (stmt_ == nullptr) return;
  if (counter_ != nullptr) {
    counter_->vm_steps += static_cast<uint64_t>(sqlite3_stmt_status(stmt_, SQLITE_STMTSTATUS_VM_STEP, 1));
    counter_->full_scan_steps += static_cast<uint64_t>(sqlite3_stmt_status(stmt_, SQLITE_STMTSTATUS_FULLSCAN_STEP, 1));
  }
  sqlite3_reset(stmt_);
  sqlite3_clear_bindings(stmt_);
}

Stmt& Stmt::BindInt(int index, int64_t value) {
  if (stmt_ != nullptr) {
    int rc = sqlite3_bind_int64(stmt_, index, value);
    if (rc != SQLITE_OK) db_.Fail(rc);
  }
  return *this;
}

Stmt& Stmt::BindText(int index, std::string_view text) {
  if (stmt_ != nullptr) {
    int rc = sqlite3_bind_text64(stmt_, index, text.data(), text.size(), Transient(), SQLITE_UTF8);
    if (rc != SQLITE_OK) db_.Fail(rc);
  }
  return *this;
}

Stmt& Stmt::BindBlob(int index, std::string_view bytes) {
  if (stmt_ != nullptr) {
    int rc = sqlite3_bind_blob64(stmt_, index, bytes.data(), bytes.size(), Transient());
    if (rc != SQLITE_OK) db_.Fail(rc);
  }
  return *this;
}

Stmt& Stmt::BindNull(int index) {
  if (stmt_ != nullptr) {
    int rc = sqlite3_bind_null(stmt_, index);
    if (rc != SQLITE_OK) db_.Fail(rc);
  }
  return *this;
}

bool Stmt::Step() {
  if (stmt_ == nullptr || db_.failed()) return false;
  int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc != SQLITE_DONE) db_.Fail(rc);
  return false;
}

void Stmt::Run() {
  while (Step()) {
  }
}

int64_t Stmt::Int(int col) const { return sqlite3_column_int64(stmt_, col); }

std::string Stmt::Text(int col) const {
  const unsigned char* p = sqlite3_column_text(stmt_, col);
  if (p == nullptr) return {};
  return std::string(reinterpret_cast<const char*>(p), static_cast<size_t>(sqlite3_column_bytes(stmt_, col)));
}

std::string Stmt::Blob(int col) const {
  const void* p = sqlite3_column_blob(stmt_, col);
  if (p == nullptr) return {};
  return std::string(static_cast<const char*>(p), static_cast<size_t>(sqlite3_column_bytes(stmt_, col)));
}

bool Stmt::IsNull(int col) const { return sqlite3_column_type(stmt_, col) == SQLITE_NULL; }

}  // namespace parley::store::sqlite
