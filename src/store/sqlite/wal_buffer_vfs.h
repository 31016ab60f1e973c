// WalBufferVfs: an SQLite VFS shim that gathers a connection's writes to its
// WAL file into one write per commit (docs/architecture.md, "The store's
// writer").
//
// Why: a commit appends every page it changed to the WAL as a frame, and
// SQLite writes each frame with two calls (its 24-byte header, then the
// page). A chat message changes about six B-tree leaves, so at a few
// thousand messages a second the writer spent a large part of its time in
// those small pwrite calls. Through this shim the frames of a commit are
// copied into a buffer and written with one call when SQLite syncs the WAL.
//
// How: files opened with SQLITE_OPEN_WAL get a buffer of kWalBufferBytes;
// every other file is the default VFS's own, untouched. Contiguous writes
// are appended to the buffer; the buffer is written out (one call) before a
// write that does not continue it or would overflow it, before a read that
// overlaps it, and before xSync, xTruncate, xFileSize and xClose.
//
// Correctness rests on one invariant: **the connection runs with
// synchronous=FULL** (Db::Open sets it on every writable connection). Then
// SQLite syncs the WAL at every commit before it publishes the new frames
// in the WAL index, so by the time any other connection can read a frame,
// the frame has left the buffer; frames a transaction spills before its
// commit are read back only through the same file handle, which flushes an
// overlapping buffer first. A failed buffered write surfaces as the error of
// the call that flushed it (a write or the sync), which fails the commit as
// a failed pwrite would have.
//
// Yielding reads: a thread may ask the shim to give up the core
// (sched_yield) after every N WAL reads it makes (YieldEveryWalReads). The
// store's checkpointer does: a checkpoint reads each frame it copies back
// through here, so it then copies N pages at a time and lets the I/O and
// writer threads run in between, instead of holding the core for a whole
// scheduler slice (docs/architecture.md, the "WAL checkpointer" thread).
//
// Thread-safety: registration is once per process (thread-safe); each file
// handle is used by its one connection's thread, as SQLite's own are; the
// yield setting is per thread.
#pragma once

#include <atomic>
#include <cstddef>

namespace parley::store::sqlite {

// Bytes of WAL frames a file handle gathers before it writes them out (a
// commit larger than this is written in several calls). Below 128 KiB: the
// unix VFS writes at most 0x1ffff bytes per call (it masks the length to 17
// bits and reports a longer write as a full disk). 120 KiB holds 29 frames
// of 4 KiB pages.
inline constexpr size_t kWalBufferBytes = 120 << 10;

// Registers the shim over the default VFS (once) and returns its name for
// sqlite3_open_v2.
const char* WalBufferVfsName();

// From now on the calling thread yields the core after every `*reads` reads
// of WAL files through the shim, reading `*reads` at each read so that its
// owner may change it at any time (0 or less: no yields); nullptr: never
// yields, the default of every thread. `reads` must outlive the setting.
void YieldEveryWalReads(const std::atomic<int>* reads);

}  // namespace parley::store::sqlite
