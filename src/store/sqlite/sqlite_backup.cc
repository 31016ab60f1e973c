// Backup and check of SQLite store files. The backup copies in one
// sqlite3_backup_step(-1): a step-wise copy restarts whenever another
// connection writes between steps, which under steady load would never
// finish; one step holds one WAL read snapshot instead, which never blocks
// the writer (the WAL only grows until the copy ends and a checkpoint can
// pass it).
#include "store/sqlite/sqlite_backup.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fmt/format.h>

#include "store/sqlite/sqlite_store.h"

namespace parley::store::sqlite {
namespace {

// Closes a connection when it goes out of scope.
struct Conn {
  sqlite3* db = nullptr;
  ~Conn() { sqlite3_close(db); }
};

Status Fail(sqlite3* db, const std::string& what) {
  return Status(ErrorCode::kInternal, fmt::format("{}: {}", what, db != nullptr ? sqlite3_errmsg(db) : "?"));
}

// fsyncs a file or directory; false on failure.
bool SyncPath(const std::string& path, bool directory) {
  int fd = ::open(path.c_str(), directory ? O_RDONLY | O_DIRECTORY : O_RDONLY);
  if (fd < 0) return false;
  bool ok = ::fsync(fd) == 0;
  ::close(fd);
  return ok;
}

// Runs a query expected to answer one integer; `fallback` if no row.
int64_t QueryInt(sqlite3* db, const char* sql, int64_t fallback) {
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v2(db, sql, -1, &st, nullptr) != SQLITE_OK) return fallback;
  int64_t v = fallback;
  if (sqlite3_step(st) == SQLITE_ROW) v = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  return v;
}

}  // namespace

Result<BackupResult> BackupFile(const std::string& source, const std::string& dest) {
  namespace fs = std::filesystem;
  auto start = std::chrono::steady_clock::now();
  std::error_code ec;
  if (fs::exists(dest, ec)) return Status(ErrorCode::kBadRequest, fmt::format("{} exists; choose a new name", dest));
  const std::string tmp = dest + ".tmp";
  fs::remove(tmp, ec);
  Conn src, dst;
  if (sqlite3_open_v2(source.c_str(), &src.db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, nullptr) != SQLITE_OK)
    return Fail(src.db, "cannot open the store for backup");
  sqlite3_busy_timeout(src.db, 5000);
  if (sqlite3_open_v2(tmp.c_str(), &dst.db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                      nullptr) != SQLITE_OK)
    return Status(ErrorCode::kBadRequest, fmt::format("cannot create {}: {}", tmp, sqlite3_errmsg(dst.db)));
  sqlite3_backup* b = sqlite3_backup_init(dst.db, "main", src.db, "main");
  if (b == nullptr) return Fail(dst.db, "backup init failed");
  int rc = SQLITE_OK;
  for (int attempt = 0; attempt < 100; ++attempt) {
    rc = sqlite3_backup_step(b, -1);
    if (rc != SQLITE_BUSY && rc != SQLITE_LOCKED) break;
    sqlite3_sleep(20);
  }
  int64_t pages = sqlite3_backup_pagecount(b);
  sqlite3_backup_finish(b);
  if (rc != SQLITE_DONE) {
    Status s = Fail(dst.db, fmt::format("backup failed ({})", sqlite3_errstr(rc)));
    sqlite3_close(dst.db);
    dst.db = nullptr;
    fs::remove(tmp, ec);
    return s;
  }
  // The copy is not paired with any search file: a store restored from it
  // builds its own (sqlite_search.h). The live one describes a later state.
  if (sqlite3_exec(dst.db, "UPDATE search_file SET token = ''", nullptr, nullptr, nullptr) != SQLITE_OK) {
    Status s = Fail(dst.db, "cannot clear the copy's search file token");
    sqlite3_close(dst.db);
    dst.db = nullptr;
    fs::remove(tmp, ec);
    return s;
  }
  sqlite3_close(dst.db);
  dst.db = nullptr;
  fs::remove(tmp + "-journal", ec);
  if (!SyncPath(tmp, false)) return Status(ErrorCode::kInternal, fmt::format("cannot sync {}", tmp));
  fs::rename(tmp, dest, ec);
  if (ec) return Status(ErrorCode::kInternal, fmt::format("cannot rename {} to {}: {}", tmp, dest, ec.message()));
  SyncPath(fs::path(dest).parent_path().empty() ? "." : fs::path(dest).parent_path().string(), true);
  BackupResult r;
  r.path = dest;
  r.pages = pages;
  r.bytes = static_cast<int64_t>(fs::file_size(dest, ec));
  r.took_ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count();
  return r;
}

Result<StoreFileInfo> CheckStoreFile(const std::string& path, int max_version) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return Status(ErrorCode::kBadRequest, fmt::format("{}: no such file", path));
  Conn c;
  if (sqlite3_open_v2(path.c_str(), &c.db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, nullptr) != SQLITE_OK)
    return Status(ErrorCode::kBadRequest, fmt::format("{}: cannot open: {}", path, sqlite3_errmsg(c.db)));
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v2(c.db, "PRAGMA integrity_check", -1, &st, nullptr) != SQLITE_OK)
    return Status(ErrorCode::kBadRequest, fmt::format("{}: not a SQLite database: {}", path, sqlite3_errmsg(c.db)));
  std::string verdict;
  if (sqlite3_step(st) == SQLITE_ROW) {
    const unsigned char* t = sqlite3_column_text(st, 0);
    verdict = t != nullptr ? reinterpret_cast<const char*>(t) : "";
  } else {
    verdict = sqlite3_errmsg(c.db);
  }
  sqlite3_finalize(st);
  if (verdict != "ok") return Status(ErrorCode::kBadRequest, fmt::format("{}: damaged: {}", path, verdict));
  StoreFileInfo info;
  info.schema_version = static_cast<int>(QueryInt(c.db, "PRAGMA user_version", 0));
  for (const char* table : {"users", "devices", "conversations", "members", "messages", "user_events"}) {
    std::string sql = fmt::format("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '{}'", table);
    if (QueryInt(c.db, sql.c_str(), 0) != 1)
      return Status(ErrorCode::kBadRequest, fmt::format("{}: not a Parley store (no table {})", path, table));
  }
  if (info.schema_version < 1 || info.schema_version > max_version)
    return Status(ErrorCode::kBadRequest, fmt::format("{}: schema version {} (this build knows 1 to {})", path,
                                                      info.schema_version, max_version));
  info.messages =
      QueryInt(c.db, "SELECT COALESCE(sum(" PARLEY_CONVERSATION_LAST_SEQ("c") "), 0) FROM conversations c", 0);
  info.users = QueryInt(c.db, "SELECT count(*) FROM users", 0);
  info.bytes = static_cast<int64_t>(fs::file_size(path, ec));
  return info;
}

}  // namespace parley::store::sqlite
