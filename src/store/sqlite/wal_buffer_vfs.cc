// See wal_buffer_vfs.h.

#include "store/sqlite/wal_buffer_vfs.h"

#include <sqlite3.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include <sched.h>

#include "common/metrics.h"

namespace parley::store::sqlite {
namespace {

constexpr const char* kVfsName = "parley-walbuf";

struct Counters {
  Counter& sqlite_writes = Metrics::Default().GetCounter(
      "parley_store_wal_sqlite_writes_total", "Writes SQLite made to WAL files (frame headers and pages).");
  Counter& os_writes = Metrics::Default().GetCounter(
      "parley_store_wal_os_writes_total",
      "Write calls that reached the operating system for WAL files, after the store gathered each commit's frames.");
  Counter& yields = Metrics::Default().GetCounter(
      "parley_store_checkpoint_yields_total",
      "Times the SQLite checkpointer gave up the core between pages it copies (--sqlite-checkpoint-yield-pages).");
};

Counters& Stats() {
  static Counters counters;
  return counters;
}

sqlite3_vfs* g_real = nullptr;  // the default VFS, set once by registration

// YieldEveryWalReads of this thread, and its reads since its last yield.
thread_local const std::atomic<int>* t_yield_every = nullptr;
thread_local int t_reads_since_yield = 0;

// A WAL file: our header, then the real file in the same allocation.
struct WalFile {
  sqlite3_file base;   // base.pMethods = &kWalMethods
  sqlite3_file* real;  // the default VFS's file, right after this struct
  char* buf;           // kWalBufferBytes, allocated on the first write
  size_t len;          // bytes gathered
  sqlite3_int64 off;   // file offset of buf[0]
};

constexpr size_t kRealFileOffset = (sizeof(WalFile) + 7) & ~size_t{7};

WalFile* Wal(sqlite3_file* f) { return reinterpret_cast<WalFile*>(f); }

int Flush(WalFile* w) {
  if (w->len == 0) return SQLITE_OK;
  const int amt = static_cast<int>(w->len);
  w->len = 0;
  Stats().os_writes.Inc();
  return w->real->pMethods->xWrite(w->real, w->buf, amt, w->off);
}

int Close(sqlite3_file* f) {
  WalFile* w = Wal(f);
  int rc = Flush(w);
  int close_rc = w->real->pMethods->xClose(w->real);
  std::free(w->buf);
  w->buf = nullptr;
  return rc != SQLITE_OK ? rc : close_rc;
}

int Read(sqlite3_file* f, void* data, int amt, sqlite3_int64 ofst) {
  WalFile* w = Wal(f);
  if (t_yield_every != nullptr) {
    const int every = t_yield_every->load(std::memory_order_relaxed);
    if (every > 0 && ++t_reads_since_yield >= every) {
      t_reads_since_yield = 0;
      Stats().yields.Inc();
      sched_yield();
    }
  }
  if (w->len > 0 && ofst < w->off + static_cast<sqlite3_int64>(w->len) && w->off < ofst + amt) {
    if (int rc = Flush(w); rc != SQLITE_OK) return rc;
  }
  return w->real->pMethods->xRead(w->real, data, amt, ofst);
}

int Write(sqlite3_file* f, const void* data, int amt, sqlite3_int64 ofst) {
  WalFile* w = Wal(f);
  Stats().sqlite_writes.Inc();
  const auto n = static_cast<size_t>(amt);
  if (w->len > 0 && ofst == w->off + static_cast<sqlite3_int64>(w->len) && w->len + n <= kWalBufferBytes) {
    std::memcpy(w->buf + w->len, data, n);
    w->len += n;
    return SQLITE_OK;
  }
  if (int rc = Flush(w); rc != SQLITE_OK) return rc;
  if (n >= kWalBufferBytes) {
    Stats().os_writes.Inc();
    return w->real->pMethods->xWrite(w->real, data, amt, ofst);
  }
  if (w->buf == nullptr) {
    w->buf = static_cast<char*>(std::malloc(kWalBufferBytes));
    if (w->buf == nullptr) return SQLITE_IOERR_NOMEM;
  }
  std::memcpy(w->buf, data, n);
  w->len = n;
  w->off = ofst;
  return SQLITE_OK;
}

int Truncate(sqlite3_file* f, sqlite3_int64 size) {
  WalFile* w = Wal(f);
  if (int rc = Flush(w); rc != SQLITE_OK) return rc;
  return w->real->pMethods->xTruncate(w->real, size);
}

int Sync(sqlite3_file* f, int flags) {
  WalFile* w = Wal(f);
  if (int rc = Flush(w); rc != SQLITE_OK) return rc;
  return w->real->pMethods->xSync(w->real, flags);
}

int FileSize(sqlite3_file* f, sqlite3_int64* size) {
  WalFile* w = Wal(f);
  if (int rc = Flush(w); rc != SQLITE_OK) return rc;
  return w->real->pMethods->xFileSize(w->real, size);
}

// The rest is the real file's, unchanged.
int Lock(sqlite3_file* f, int level) { return Wal(f)->real->pMethods->xLock(Wal(f)->real, level); }
int Unlock(sqlite3_file* f, int level) { return Wal(f)->real->pMethods->xUnlock(Wal(f)->real, level); }
int CheckReservedLock(sqlite3_file* f, int* out) {
  return Wal(f)->real->pMethods->xCheckReservedLock(Wal(f)->real, out);
}
int FileControl(sqlite3_file* f, int op, void* arg) {
  return Wal(f)->real->pMethods->xFileControl(Wal(f)->real, op, arg);
}
int SectorSize(sqlite3_file* f) { return Wal(f)->real->pMethods->xSectorSize(Wal(f)->real); }
int DeviceCharacteristics(sqlite3_file* f) {
  return Wal(f)->real->pMethods->xDeviceCharacteristics(Wal(f)->real);
}
int ShmMap(sqlite3_file* f, int region, int size, int extend, void volatile** out) {
  return Wal(f)->real->pMethods->xShmMap(Wal(f)->real, region, size, extend, out);
}
int ShmLock(sqlite3_file* f, int offset, int n, int flags) {
  return Wal(f)->real->pMethods->xShmLock(Wal(f)->real, offset, n, flags);
}
void ShmBarrier(sqlite3_file* f) { Wal(f)->real->pMethods->xShmBarrier(Wal(f)->real); }
int ShmUnmap(sqlite3_file* f, int del) { return Wal(f)->real->pMethods->xShmUnmap(Wal(f)->real, del); }
// Memory-mapped reads of a WAL file would bypass the buffer: refuse them
// (SQLite then reads with xRead; it maps only database files anyway).
int Fetch(sqlite3_file*, sqlite3_int64, int, void** out) {
  *out = nullptr;
  return SQLITE_OK;
}
int Unfetch(sqlite3_file*, sqlite3_int64, void*) { return SQLITE_OK; }

const sqlite3_io_methods kWalMethods = {
    3,        Close,   Read,    Write,   Truncate, Sync,       FileSize,   Lock,
    Unlock,   CheckReservedLock, FileControl,   SectorSize, DeviceCharacteristics,
    ShmMap,   ShmLock, ShmBarrier, ShmUnmap, Fetch,  Unfetch};

int Open(sqlite3_vfs*, const char* name, sqlite3_file* f, int flags, int* out_flags) {
  if ((flags & SQLITE_OPEN_WAL) == 0) return g_real->xOpen(g_real, name, f, flags, out_flags);
  WalFile* w = Wal(f);
  w->real = reinterpret_cast<sqlite3_file*>(reinterpret_cast<char*>(f) + kRealFileOffset);
  w->buf = nullptr;
  w->len = 0;
  w->off = 0;
  w->base.pMethods = nullptr;  // SQLite calls xClose only when set: not for a failed open
  w->real->pMethods = nullptr;
  int rc = g_real->xOpen(g_real, name, w->real, flags, out_flags);
  if (rc != SQLITE_OK) {
    if (w->real->pMethods != nullptr) w->real->pMethods->xClose(w->real);
    return rc;
  }
  w->base.pMethods = &kWalMethods;
  return SQLITE_OK;
}

// Everything else is the default VFS's.
int Delete(sqlite3_vfs*, const char* name, int sync_dir) { return g_real->xDelete(g_real, name, sync_dir); }
int Access(sqlite3_vfs*, const char* name, int flags, int* out) { return g_real->xAccess(g_real, name, flags, out); }
int FullPathname(sqlite3_vfs*, const char* name, int n, char* out) {
  return g_real->xFullPathname(g_real, name, n, out);
}
void* DlOpen(sqlite3_vfs*, const char* name) { return g_real->xDlOpen(g_real, name); }
void DlError(sqlite3_vfs*, int n, char* out) { g_real->xDlError(g_real, n, out); }
void (*DlSym(sqlite3_vfs*, void* handle, const char* sym))(void) { return g_real->xDlSym(g_real, handle, sym); }
void DlClose(sqlite3_vfs*, void* handle) { g_real->xDlClose(g_real, handle); }
int Randomness(sqlite3_vfs*, int n, char* out) { return g_real->xRandomness(g_real, n, out); }
int Sleep(sqlite3_vfs*, int us) { return g_real->xSleep(g_real, us); }
int CurrentTime(sqlite3_vfs*, double* out) { return g_real->xCurrentTime(g_real, out); }
int GetLastError(sqlite3_vfs*, int n, char* out) { return g_real->xGetLastError(g_real, n, out); }
int CurrentTimeInt64(sqlite3_vfs*, sqlite3_int64* out) { return g_real->xCurrentTimeInt64(g_real, out); }

sqlite3_vfs g_vfs;

}  // namespace

const char* WalBufferVfsName() {
  static std::once_flag once;
  std::call_once(once, [] {
    g_real = sqlite3_vfs_find(nullptr);
    g_vfs = sqlite3_vfs{};
    g_vfs.iVersion = 2;  // up to xCurrentTimeInt64; no system-call overrides
    g_vfs.szOsFile = static_cast<int>(kRealFileOffset) + g_real->szOsFile;
    g_vfs.mxPathname = g_real->mxPathname;
    g_vfs.zName = kVfsName;
    g_vfs.xOpen = Open;
    g_vfs.xDelete = Delete;
    g_vfs.xAccess = Access;
    g_vfs.xFullPathname = FullPathname;
    g_vfs.xDlOpen = DlOpen;
    g_vfs.xDlError = DlError;
    g_vfs.xDlSym = DlSym;
    g_vfs.xDlClose = DlClose;
    g_vfs.xRandomness = Randomness;
    g_vfs.xSleep = Sleep;
    g_vfs.xCurrentTime = CurrentTime;
    g_vfs.xGetLastError = GetLastError;
    g_vfs.xCurrentTimeInt64 = CurrentTimeInt64;
    sqlite3_vfs_register(&g_vfs, /*makeDflt=*/0);
    Stats();  // the metrics exist from the start
  });
  return kVfsName;
}

void YieldEveryWalReads(const std::atomic<int>* reads) {
  t_yield_every = reads;
  t_reads_since_yield = 0;
}

}  // namespace parley::store::sqlite
