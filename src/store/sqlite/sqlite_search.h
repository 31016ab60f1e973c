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
// Thread-safety: none; each object is used by one thread. The free
// functions run while the store opens, before its threads start.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

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

// The search file's writer (see above).
class SearchWriter {
 public:
  explicit SearchWriter(std::unique_ptr<Db> db) : db_(std::move(db)) {}

  // Indexes up to `max` queue entries past done_id (oldest first): each
  // message's current text replaces its row (a deleted message, or one with
  // no words, loses it). A read transaction of both files, then a write
  // transaction of the search file alone. progress.done_id is the done_id
  // it committed.
  Result<SearchIndexProgress> Index(int max);

  // Removes these messages' rows (a purge's, which may run before the
  // delete's queue entry is indexed). One transaction. Returns how many
  // rows there were.
  Result<int64_t> RemoveRows(const std::vector<SearchRow>& rows);

 private:
  std::unique_ptr<Db> db_;
};

}  // namespace parley::store::sqlite
