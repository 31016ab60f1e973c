// The connection wrapper keeps SQLite's C API in one file. Statements are
// prepared once per connection (SQLITE_PREPARE_PERSISTENT tells SQLite they
// will be reused, so it allocates them outside its lookaside) and reset after
// every use, which also releases the read snapshot a half-stepped SELECT
// would otherwise hold. Errors are sticky per connection so that the store's
// code reads as straight-line SQL; see sqlite_db.h.

#include "store/sqlite/sqlite_db.h"

#include <sqlite3.h>

#include <atomic>
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

// The page cache: SQLite's own (pcache1), behind a thin layer that skips
// the walks of its hash table a commit does not need.
//
// At the end of every write transaction the pager truncates its page cache
// to the database's size (pager_end_transaction: xTruncate(dbSize + 1)).
// pcache1 skips that when no page it ever held since its last truncation
// had a larger number (its iMaxKey), walks the few hash slots past the size
// when the largest is close, and otherwise walks its whole hash table. A
// B-tree balance that renumbers its new pages into ascending order swaps
// two of them through a temporary number, the lock-byte page's (PENDING_BYTE
// / page size + 1: 262,145 with 4 KiB pages), far past any database here;
// so after almost every commit of the store's writer (each splits some
// leaves) pcache1 walked all of its thousands of cached pages: 5.6 % of the
// writer's CPU with 2,600 pages cached, more as the cache fills
// (docs/benchmarks.md, "The page cache's walk at every commit").
//
// So this layer keeps its own bound: the largest number a page got from a
// fetch that may create it or from a rekey, leaving out the temporary
// number, which a balance always moves its page away from again. Pages keyed
// with the temporary number are counted (a fetch that may create one adds,
// a rekey away from it takes one away; a page fetched at it and then
// discarded, which only a corrupt database makes the pager do, stays counted,
// which only costs walks). A truncation is passed on to pcache1 when a page
// at or past its limit may exist: the bound is at or past it, or a page may
// be at the temporary number; otherwise no cached page can be at or past it
// and there is nothing to remove. Every other method is pcache1's.
struct PageCacheLayer {
  sqlite3_pcache* inner;
  unsigned max_key;       // no page has a larger number, but for the temporary one
  unsigned temp_key;      // the balance's temporary number for this page size
  unsigned temp_pages;    // pages that may be at temp_key
};

sqlite3_pcache_methods2 g_pcache1;  // SQLite's own, read before initialisation
std::atomic<uint64_t> g_truncations_passed{0};
std::atomic<uint64_t> g_truncations_skipped{0};

// SQLite's PENDING_BYTE (a compile-time constant of the library, changed
// only by its test builds): the lock-byte page is PENDING_BYTE / page size + 1.
constexpr unsigned kPendingByte = 0x40000000;

PageCacheLayer* Layer(sqlite3_pcache* p) { return reinterpret_cast<PageCacheLayer*>(p); }

int LayerInit(void*) { return g_pcache1.xInit(g_pcache1.pArg); }
void LayerShutdown(void*) { g_pcache1.xShutdown(g_pcache1.pArg); }

sqlite3_pcache* LayerCreate(int page_size, int extra, int purgeable) {
  sqlite3_pcache* inner = g_pcache1.xCreate(page_size, extra, purgeable);
  if (inner == nullptr) return nullptr;
  auto* layer = static_cast<PageCacheLayer*>(sqlite3_malloc(sizeof(PageCacheLayer)));
  if (layer == nullptr) {
    g_pcache1.xDestroy(inner);
    return nullptr;
  }
  const unsigned temp_key = page_size > 0 ? kPendingByte / static_cast<unsigned>(page_size) + 1 : 0;
  *layer = PageCacheLayer{inner, 0, temp_key, 0};
  return reinterpret_cast<sqlite3_pcache*>(layer);
}

void LayerCachesize(sqlite3_pcache* p, int pages) { g_pcache1.xCachesize(Layer(p)->inner, pages); }
int LayerPagecount(sqlite3_pcache* p) { return g_pcache1.xPagecount(Layer(p)->inner); }

sqlite3_pcache_page* LayerFetch(sqlite3_pcache* p, unsigned key, int create) {
  PageCacheLayer* layer = Layer(p);
  if (create != 0) {
    if (key == layer->temp_key) {
      ++layer->temp_pages;
    } else if (key > layer->max_key) {
      layer->max_key = key;
    }
  }
  return g_pcache1.xFetch(layer->inner, key, create);
}

void LayerUnpin(sqlite3_pcache* p, sqlite3_pcache_page* page, int discard) {
  g_pcache1.xUnpin(Layer(p)->inner, page, discard);
}

void LayerRekey(sqlite3_pcache* p, sqlite3_pcache_page* page, unsigned old_key, unsigned new_key) {
  PageCacheLayer* layer = Layer(p);
  if (old_key == layer->temp_key && layer->temp_pages > 0) --layer->temp_pages;
  if (new_key == layer->temp_key) {
    ++layer->temp_pages;
  } else if (new_key > layer->max_key) {
    layer->max_key = new_key;
  }
  g_pcache1.xRekey(layer->inner, page, old_key, new_key);
}

void LayerTruncate(sqlite3_pcache* p, unsigned limit) {
  PageCacheLayer* layer = Layer(p);
  const bool temp_in_range = layer->temp_pages > 0 && layer->temp_key >= limit;
  if (layer->max_key < limit && !temp_in_range) {
    g_truncations_skipped.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  g_truncations_passed.fetch_add(1, std::memory_order_relaxed);
  g_pcache1.xTruncate(layer->inner, limit);
  if (layer->max_key >= limit) layer->max_key = limit > 0 ? limit - 1 : 0;  // the pager passes size + 1 >= 1
  if (layer->temp_key >= limit) layer->temp_pages = 0;
}

void LayerDestroy(sqlite3_pcache* p) {
  g_pcache1.xDestroy(Layer(p)->inner);
  sqlite3_free(p);
}

void LayerShrink(sqlite3_pcache* p) { g_pcache1.xShrink(Layer(p)->inner); }

// Process-wide SQLite settings, before SQLite initialises (the first open or
// VFS lookup). Memory statistics off: with them on (SQLite's default) every
// allocation SQLite makes takes a global mutex to count itself, one lock and
// unlock per allocation on the writer's hot path, and nothing here reads the
// statistics (sqlite3_status, sqlite3_memory_used, heap limits). The page
// cache behind PageCacheLayer (above). If something initialised SQLite
// first the calls are refused and change nothing.
void ConfigureSqliteOnce() {
  static std::once_flag once;
  std::call_once(once, [] {
    sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
    if (sqlite3_config(SQLITE_CONFIG_GETPCACHE2, &g_pcache1) != SQLITE_OK || g_pcache1.xFetch == nullptr) return;
    static const sqlite3_pcache_methods2 layer = {.iVersion = 1,
                                                  .pArg = nullptr,
                                                  .xInit = LayerInit,
                                                  .xShutdown = LayerShutdown,
                                                  .xCreate = LayerCreate,
                                                  .xCachesize = LayerCachesize,
                                                  .xPagecount = LayerPagecount,
                                                  .xFetch = LayerFetch,
                                                  .xUnpin = LayerUnpin,
                                                  .xRekey = LayerRekey,
                                                  .xTruncate = LayerTruncate,
                                                  .xDestroy = LayerDestroy,
                                                  .xShrink = LayerShrink};
    sqlite3_config(SQLITE_CONFIG_PCACHE2, &layer);
  });
}

}  // namespace

PageCacheTruncations PageCacheTruncationsForTest() {
  return PageCacheTruncations{g_truncations_passed.load(std::memory_order_relaxed),
                              g_truncations_skipped.load(std::memory_order_relaxed)};
}

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
