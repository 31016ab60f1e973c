// Message search's own database file (issue 9; docs/architecture.md
// "Message search"; the seed's "stream to a separate search index").
//
// The FTS5 index lives in a file of its own next to the store,
// SearchFilePath(store), written by a writer of its own (SearchWriter, on the
// store's `store-search` thread at the lowest priority), so the store's
// writer never waits behind FTS5 work, and the index's pages never go
// through the store's WAL or its checkpoints. The store's file keeps what
// the send path writes: the queue (search_queue: one row per send, edit or
// delete) and each message's doc id (messages.search_doc). The search file
// holds the index (message_search) and, in search_state, how far into the
// queue it has indexed (done_id) and the token of the store file it belongs
// to.
//
// Consistency. The search writer reads the queue and the messages' text
// through the store file attached to its connection, in a read transaction
// of its own (a snapshot held only while it reads: at the lowest priority a
// snapshot held through the FTS5 work could be held for long, and would keep
// the store's WAL from starting over), then commits the index rows and
// done_id together in the search file (synchronous=FULL), so after a crash
// it goes on from the last committed done_id. The store's writer trims
// queue entries at or below a committed done_id only (TrimSearchQueue), so
// an entry never leaves the queue before its index rows are on disk. Queue
// ids are handed out by the store's writer in commit order and never again
// (its counter starts above the queue's highest id and the search file's
// done_id, and only grows), so the entries past done_id are exactly those
// not indexed yet.
//
// Which index belongs to which store. The store file records the token of
// its search file (search_file.token). OpenSearchFile rebuilds the search
// file when it is missing or cannot be opened (damaged), when the tokens
// differ, or when the store file's token is empty (schema step 21, a
// backup: BackupFile clears the copy's token, so a restored store never
// trusts an index built from a later state): it deletes the file, queues
// every live message again in one store transaction that also writes a new
// token, and creates the file with that token and done_id 0. The search
// writer then indexes the whole history in the background; until it has,
// older messages are missing from results (docs/operations.md).
//
// The texts in memory (SearchHandoff). Reading the queue and each message
// through the store file was about half of the search writer's work: every
// store commit leaves that connection's page cache stale, so each step read
// its pages again. So the store's writer also hands each committed entry,
// with the text it queued, to the search writer in memory, and the search
// writer reads the store only for entries the handoff does not hold: those
// queued before this process started (the durable queue stays the crash
// path), or dropped because the handoff was full. Indexing the entries in
// queue order with the text each one carried ends where reading each
// message's current text does: every change of a text (an edit, a delete,
// an expiry) queues an entry of its own after the ones before it, a purge
// removes only deleted messages (whose delete entry removes their row), and
// a compaction into the cold tier moves a text without changing it. On the
// way it may differ for a moment: a send and its delete indexed in two
// steps leave the row in between, where reading the current text would not
// have written it; searches never show it (each result is checked against
// the store: deleted_at = 0).
//
// Thread-safety: SearchHandoff is thread-safe. Otherwise none; each object
// is used by one thread. The free functions run while the store opens,
// before its threads start.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "common/metrics.h"
#include "common/status.h"
#include "store/sqlite/sqlite_db.h"
#include "store/types.h"

namespace parley::store::sqlite {

// The search file of the store file at `store_path`: `store_path` + ".search"
// (SQLite adds its own -wal and -shm next to it).
std::string SearchFilePath(const std::string& store_path);

// Opens (creating or rebuilding, see above) the search file of the store
// whose writer connection is `store`, at schema version 21 or later. `now`
// stamps re-queued entries. Returns the search file's connection for the
// search writer, with the store file attached as `store`.
struct OpenedSearchFile {
  std::unique_ptr<Db> db;
  int64_t done_id = 0;  // the search file's done_id: the store's writer hands out queue ids above it
};
Result<OpenedSearchFile> OpenSearchFile(Db& store, const std::string& store_path, int64_t now);

// Attaches the search file of `store_path` to a reader's connection as
// `search`, so message_search resolves there.
Status AttachSearchFile(Db& reader, const std::string& store_path);

// The index's text of a message: MessageWords joined by single spaces.
std::string JoinWords(const std::vector<std::string>& words);

// A message's index row: its doc id and its key.
struct SearchRow {
  int64_t doc_id = 0;
  ConversationId conversation = 0;
  Seq seq = 0;
};

// A committed queue entry, with what the search writer would otherwise read
// of its message through the store.
struct SearchEntry {
  int64_t id = 0;      // the queue id
  int64_t doc_id = 0;  // the message's doc id (0: none, skipped)
  ConversationId conversation = 0;
  Seq seq = 0;
  int64_t version = 0;
  int64_t queued_at = 0;
  std::string body;  // the message's text as the entry was queued (empty when deleted: no words, no row)
};

// Committed entries from the store's writer to the search writer (see "The
// texts in memory" above). It holds every committed entry with an id above
// complete_after, less those the search writer has committed as indexed,
// up to a byte limit; when an append would pass the limit it drops the
// entries waiting and that batch, and complete_after moves to the batch's
// last id (the search writer reads those through the store).
//
// The search writer runs at the lowest priority, so it holds the lock only
// to swap the waiting entries out (the store's writer, which appends under
// it, must never wait for a preempted search writer): it keeps what it
// swapped out in a queue of its own until a done_id covers them.
class SearchHandoff {
 public:
  // `complete_after`: every entry committed from now on has a larger id (the
  // store's writer hands out ids from complete_after + 1). `max_bytes`: the
  // limit on the texts held (plus a fixed cost per entry).
  SearchHandoff(int64_t complete_after, size_t max_bytes);

  // The store's writer, after a commit: that commit's entries, ids
  // ascending, each above every id appended before.
  void Append(std::vector<SearchEntry> entries);

  // The search writer, whose committed done_id is `done_id`: forgets the
  // entries up to it, and if it holds every committed entry past it, copies
  // up to `max` of them (oldest first) into `out` and returns true, with how
  // many it holds past those and when the oldest of them was queued (0:
  // none). Returns false when some are only in the store. Entries stay
  // until a later call's done_id covers them, so a step whose commit fails
  // takes them again. Called by one thread only.
  struct Taken {
    std::vector<SearchEntry> entries;
    int64_t backlog = 0;
    int64_t oldest_queued_at = 0;
  };
  bool Take(int64_t done_id, int max, Taken* out);

 private:
  static size_t Cost(const SearchEntry& e) { return sizeof(SearchEntry) + e.body.size(); }

  const size_t max_bytes_;
  // parley_search_handoff_overflows_total: appends that found it full (the
  // search writer then reads the dropped entries through the store).
  Counter& overflows_;
  std::mutex mu_;
  std::vector<SearchEntry> waiting_;  // guarded by mu_: appended, not yet swapped out
  int64_t complete_after_;            // guarded by mu_
  std::atomic<size_t> bytes_{0};      // Cost of waiting_ and held_
  std::deque<SearchEntry> held_;      // used by Take only: swapped out, not yet covered by a done_id
};

// The search file's writer (see above).
class SearchWriter {
 public:
  // `handoff`: the store writer's committed entries in memory; nullptr:
  // every step reads the queue through the store.
  SearchWriter(std::unique_ptr<Db> db, std::shared_ptr<SearchHandoff> handoff);

  // Indexes up to `max` queue entries past done_id (oldest first): each
  // message's text replaces its row (a deleted message, or one with no
  // words, loses it). The entries come from the handoff when it holds them
  // all, else from a read transaction of both files (each message's current
  // text); then a write transaction of the search file alone.
  // progress.done_id is the done_id it committed.
  Result<SearchIndexProgress> Index(int max);

  // Removes these messages' rows (a purge's, which may run before the
  // delete's queue entry is indexed). One transaction. Returns how many
  // rows there were.
  Result<int64_t> RemoveRows(const std::vector<SearchRow>& rows);

 private:
  struct Doc;
  // A step's entries read through the store file (see Index).
  Result<std::vector<Doc>> ReadFromStore(int64_t done_id, int max, SearchIndexProgress* progress);

  std::unique_ptr<Db> db_;
  std::shared_ptr<SearchHandoff> handoff_;
  // The search file's done_id as last read or committed (nullopt: read it
  // again; only this writer changes it).
  std::optional<int64_t> done_id_;
  // At least the largest doc id with a row in message_search (nullopt: read
  // it again). A doc id above it has never been indexed (doc ids are handed
  // out ascending and never twice), so its step skips the DELETE of its
  // earlier row: a new message, the common case, is one INSERT. Rows
  // removed since (RemoveRows) leave it an upper bound, which is all the
  // skip needs.
  std::optional<int64_t> top_doc_;
  // parley_search_index_entries_total{source="memory"|"store"}: queue
  // entries the steps took from the handoff, and through the store.
  Counter& from_memory_;
  Counter& from_store_;
};

}  // namespace parley::store::sqlite
