// See sqlite_search.h.

#include "store/sqlite/sqlite_search.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <filesystem>
#include <optional>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

#include "store/name_words.h"
#include "store/sqlite/sqlite_cold.h"

namespace parley::store::sqlite {
namespace {

// PRAGMA user_version of a search file this code writes; a file with another
// version is rebuilt.
constexpr int kSearchSchemaVersion = 1;

// Page cache of the search writer's connection.
constexpr int kSearchWriterCacheKib = 4096;

// The search file's schema. message_search: the words of MessageWords,
// folded already (so FTS5's 'ascii' tokenizer), with prefix indexes for query
// words of 1 to 3 characters (without them FTS5 answers a short prefix by
// merging the doclist of every term with that prefix before it yields the
// newest match). The rowid is the message's doc id.
constexpr const char* kSearchSchema = R"sql(
BEGIN IMMEDIATE;
CREATE TABLE search_state(token TEXT NOT NULL, done_id INTEGER NOT NULL);
CREATE VIRTUAL TABLE message_search USING fts5(
  words, conversation_id UNINDEXED, seq UNINDEXED, version UNINDEXED, tokenize = 'ascii', prefix = '1 2 3');
PRAGMA user_version = {};
)sql";

void RemoveSearchFiles(const std::string& path) {
  std::error_code ec;
  for (const char* suffix : {"", "-wal", "-shm", "-journal"}) std::filesystem::remove(path + suffix, ec);
}

// The token and done_id of the search file at `path`, if it is one of this
// version; nullopt otherwise (missing, damaged, another version).
struct SearchFileState {
  std::string token;
  int64_t done_id = 0;
};
std::optional<SearchFileState> ReadSearchState(Db& db) {
  {
    Stmt s(db, "PRAGMA user_version");
    if (!s.Step() || s.Int(0) != kSearchSchemaVersion) return std::nullopt;
  }
  Stmt s(db, "SELECT token, done_id FROM search_state");
  if (!s.Step()) return std::nullopt;
  SearchFileState state{s.Text(0), s.Int(1)};
  if (db.failed()) return std::nullopt;
  return state;
}

// Queues every live message of the store for indexing in one transaction
// and records `token` as its search file's. Every live message gets a doc id
// of its own first: 0 (a message stored before schema step 20) or one that
// another live message shares (handed out again by a server before step 21)
// becomes a new id above every doc id in the file, in stored order.
Result<int64_t> RequeueEverything(Db& store, const std::string& token, int64_t now) {
  if (Status s = store.Exec("BEGIN IMMEDIATE; DELETE FROM search_queue;"); !s.ok()) return s;
  // Errors are sticky (sqlite_db.h): checked once, after COMMIT.
  (void)store.Exec(
      "UPDATE messages SET search_doc = 0 WHERE deleted_at = 0 AND search_doc IN ("
      "SELECT search_doc FROM messages WHERE deleted_at = 0 AND search_doc <> 0 "
      "GROUP BY search_doc HAVING count(*) > 1)");
  int64_t base = 0;
  {
    Stmt s(store, "SELECT COALESCE(max(search_doc), 0) FROM messages");
    if (s.Step()) base = s.Int(0);
  }
  {
    Stmt s(store,
           "UPDATE messages SET search_doc = ?1 + r.n FROM (SELECT conversation_id, seq, "
           "row_number() OVER (ORDER BY stored_at, conversation_id, seq) AS n FROM messages "
           "WHERE deleted_at = 0 AND search_doc = 0) AS r "
           "WHERE messages.conversation_id = r.conversation_id AND messages.seq = r.seq");
    s.BindInt(1, base);
    s.Run();
  }
  {
    Stmt s(store,
           "INSERT INTO search_queue(id, conversation_id, seq, queued_at) "
           "SELECT search_doc, conversation_id, seq, ?1 FROM messages WHERE deleted_at = 0 ORDER BY search_doc");
    s.BindInt(1, now);
    s.Run();
  }
  const int64_t queued = store.Changes();
  {
    Stmt s(store, "UPDATE search_file SET token = ?1");
    s.BindText(1, token);
    s.Run();
  }
  (void)store.Exec("COMMIT");
  if (!store.failed()) return queued;
  return store.TakeError();
}

std::string NewToken(Db& store) {
  Stmt s(store, "SELECT lower(hex(randomblob(16)))");
  return s.Step() ? s.Text(0) : std::string();
}

}  // namespace

std::string SearchFilePath(const std::string& store_path) { return store_path + ".search"; }

std::string JoinWords(const std::vector<std::string>& words) {
  std::string out;
  for (const std::string& w : words) {
    if (!out.empty()) out += ' ';
    out += w;
  }
  return out;
}

Result<OpenedSearchFile> OpenSearchFile(Db& store, const std::string& store_path, int64_t now) {
  const std::string path = SearchFilePath(store_path);
  std::string store_token;
  {
    Stmt s(store, "SELECT token FROM search_file");
    if (s.Step()) store_token = s.Text(0);
  }
  if (store.failed()) return store.error();
  OpenedSearchFile out;
  std::error_code ec;
  if (!store_token.empty() && std::filesystem::exists(path, ec)) {
    // A file SQLite cannot open (not a database, damaged) is built again
    // like a missing one: it holds nothing the store file does not.
    Result<std::unique_ptr<Db>> db = Db::Open(path, /*read_only=*/false, kSearchWriterCacheKib);
    if (db.has_value()) {
      std::optional<SearchFileState> state = ReadSearchState(**db);
      (*db)->ClearError();
      if (state.has_value() && state->token == store_token) {
        out.db = std::move(db).value();
        out.done_id = state->done_id;
      }
    } else {
      spdlog::warn("event=search_file_unreadable path=\"{}\" error=\"{}\"", path, db.error().message());
    }
  }
  if (out.db == nullptr) {
    // Missing, unreadable, another store's, or another version: built again
    // (see the header).
    const std::string token = NewToken(store);
    if (token.empty()) return Status(ErrorCode::kInternal, "cannot make a search file token");
    RemoveSearchFiles(path);
    Result<int64_t> queued = RequeueEverything(store, token, now);
    if (!queued.has_value()) return queued.error();
    Result<std::unique_ptr<Db>> db = Db::Open(path, /*read_only=*/false, kSearchWriterCacheKib);
    if (!db.has_value()) return db.error();
    if (Status s = (*db)->Exec(fmt::format(kSearchSchema, kSearchSchemaVersion).c_str()); !s.ok()) return s;
    {
      Stmt s(**db, "INSERT INTO search_state(token, done_id) VALUES(?1, 0)");
      s.BindText(1, token);
      s.Run();
    }
    if (Status s = (*db)->Exec("COMMIT"); !s.ok()) return s;
    out.db = std::move(db).value();
    spdlog::info("event=search_file_built path=\"{}\" queued={}", path, *queued);
  }
  {
    Stmt s(*out.db, "ATTACH DATABASE ?1 AS store");
    s.BindText(1, store_path);
    s.Run();
  }
  if (Status s = InstallColdBody(*out.db); !s.ok()) return s;
  if (out.db->failed()) return out.db->error();
  return out;
}

Status AttachSearchFile(Db& reader, const std::string& store_path) {
  Stmt s(reader, "ATTACH DATABASE ?1 AS search");
  s.BindText(1, SearchFilePath(store_path));
  s.Run();
  return reader.failed() ? reader.error() : Status::Ok();
}

SearchHandoff::SearchHandoff(int64_t complete_after, size_t max_bytes)
    : max_bytes_(max_bytes),
      overflows_(Metrics::Default().GetCounter(
          "parley_search_handoff_overflows_total",
          "Times the message-search handoff was full when the store's writer appended a commit's entries (the "
          "search writer then read them through the store).")),
      complete_after_(complete_after) {}

void SearchHandoff::Append(std::vector<SearchEntry> entries) {
  if (entries.empty()) return;
  size_t cost = 0;
  for (const SearchEntry& e : entries) cost += Cost(e);
  std::lock_guard lock(mu_);
  if (bytes_.load(std::memory_order_relaxed) + cost > max_bytes_) {
    // Dropped with what waits before it: the search writer reads the queue
    // through the store up to here (and drops what it holds up to here),
    // then takes the next commits' entries.
    size_t dropped = 0;
    for (const SearchEntry& e : waiting_) dropped += Cost(e);
    waiting_.clear();
    bytes_.fetch_sub(dropped, std::memory_order_relaxed);
    complete_after_ = entries.back().id;
    overflows_.Inc();
    return;
  }
  bytes_.fetch_add(cost, std::memory_order_relaxed);
  for (SearchEntry& e : entries) waiting_.push_back(std::move(e));
}

bool SearchHandoff::Take(int64_t done_id, int max, Taken* out) {
  std::vector<SearchEntry> arrived;
  int64_t complete_after = 0;
  {
    std::lock_guard lock(mu_);
    arrived.swap(waiting_);
    complete_after = complete_after_;
  }
  for (SearchEntry& e : arrived) held_.push_back(std::move(e));
  // What a done_id covers is indexed; what an overflow dropped is read
  // through the store.
  const int64_t covered = std::max(done_id, complete_after);
  size_t freed = 0;
  while (!held_.empty() && held_.front().id <= covered) {
    freed += Cost(held_.front());
    held_.pop_front();
  }
  bytes_.fetch_sub(freed, std::memory_order_relaxed);
  if (complete_after > done_id) return false;
  const size_t n = std::min(held_.size(), static_cast<size_t>(std::max(1, max)));
  out->entries.assign(held_.begin(), held_.begin() + static_cast<std::ptrdiff_t>(n));
  out->backlog = static_cast<int64_t>(held_.size() - n);
  out->oldest_queued_at = n < held_.size() ? held_[n].queued_at : 0;
  return true;
}

struct SearchWriter::Doc {
  int64_t doc_id = 0;
  ConversationId conversation = 0;
  Seq seq = 0;
  std::vector<std::string> words;  // empty: deleted, or no words
  int64_t version = 0;
};

constexpr const char* kEntriesHelp =
    "Message-search queue entries the search writer took, by where it read them: from the store writer's commits "
    "in memory, or through the store file.";

SearchWriter::SearchWriter(std::unique_ptr<Db> db, std::shared_ptr<SearchHandoff> handoff)
    : db_(std::move(db)),
      handoff_(std::move(handoff)),
      from_memory_(Metrics::Default().GetCounter(
          "parley_search_index_entries_total",
          kEntriesHelp,
          "source=\"memory\"")),
      from_store_(Metrics::Default().GetCounter(
          "parley_search_index_entries_total",
          kEntriesHelp,
          "source=\"store\"")) {}

Result<std::vector<SearchWriter::Doc>> SearchWriter::ReadFromStore(int64_t done_id, int max,
                                                                  SearchIndexProgress* progress) {
  // A read snapshot of the store file held only while it reads, never
  // during the FTS5 work, since this thread runs at the lowest priority and
  // a snapshot it held while preempted would keep the store's checkpoints
  // from letting its WAL start over. An entry queued after the snapshot is
  // past the new done_id and taken by the next step.
  std::vector<Doc> docs;
  // Deferred, never IMMEDIATE on this connection: that would take the write
  // lock of the attached store file too.
  Stmt(*db_, "BEGIN").Run();
  {
    std::unordered_set<int64_t> seen;  // doc ids taken by this step
    Stmt q(*db_, "SELECT id, conversation_id, seq FROM store.search_queue WHERE id > ?1 ORDER BY id LIMIT ?2");
    q.BindInt(1, done_id).BindInt(2, std::max(1, max));
    while (q.Step()) {
      ++progress->indexed;
      progress->done_id = q.Int(0);
      Doc doc;
      doc.conversation = q.Int(1);
      doc.seq = q.Int(2);
      Stmt s(*db_, "SELECT " PARLEY_MESSAGE_BODY("m") ", m.version, m.search_doc, m.deleted_at FROM store.messages m "
                   "WHERE m.conversation_id = ?1 AND m.seq = ?2");
      s.BindInt(1, doc.conversation).BindInt(2, doc.seq);
      if (!s.Step()) continue;  // no such message
      doc.doc_id = s.Int(2);
      // No doc id: a message stored before schema step 20 and deleted since
      // (OpenSearchFile gives every live one its own).
      if (doc.doc_id == 0) continue;
      // A message queued twice in one step is indexed once, as it is now.
      if (!seen.insert(doc.doc_id).second) continue;
      if (s.Int(3) == 0) {
        doc.words = MessageWords(s.Text(0));
        doc.version = s.Int(1);
      }
      docs.push_back(std::move(doc));
    }
  }
  if (progress->indexed > 0) done_id = progress->done_id;
  progress->done_id = done_id;
  {
    // The store's writer hands out ids in commit order without repeats, so
    // the entries past done_id are the range (done_id, max] less the few ids
    // of batches that rolled back: two B-tree seeks, over-counting by those.
    Stmt s(*db_,
           "SELECT COALESCE((SELECT max(id) FROM store.search_queue) - ?1, 0), "
           "COALESCE((SELECT queued_at FROM store.search_queue WHERE id > ?1 ORDER BY id LIMIT 1), 0)");
    s.BindInt(1, done_id);
    if (s.Step()) {
      progress->backlog = std::max<int64_t>(0, s.Int(0));
      progress->oldest_queued_at = s.Int(1);
    }
  }
  Stmt(*db_, "COMMIT").Run();
  if (Status s = db_->TakeError(); !s.ok()) return s;
  from_store_.Inc(static_cast<uint64_t>(progress->indexed));
  return docs;
}

Result<SearchIndexProgress> SearchWriter::Index(int max) {
  // Reads the step's entries (from the handoff, or through the store:
  // ReadFromStore), then writes the search file alone. Nothing else writes
  // the search file, so done_id cannot change in between.
  db_->ClearError();
  if (!done_id_.has_value()) {
    Stmt s(*db_, "SELECT done_id FROM search_state");
    if (s.Step()) done_id_ = s.Int(0);
    if (Status st = db_->TakeError(); !st.ok()) return st;
    if (!done_id_.has_value()) return Status(ErrorCode::kInternal, "the search file has no state row");
  }
  SearchIndexProgress progress;
  progress.done_id = *done_id_;
  std::vector<Doc> docs;
  SearchHandoff::Taken taken;
  if (handoff_ != nullptr && handoff_->Take(*done_id_, max, &taken)) {
    progress.indexed = static_cast<int>(taken.entries.size());
    progress.backlog = taken.backlog;
    progress.oldest_queued_at = taken.oldest_queued_at;
    if (progress.indexed == 0) return progress;
    progress.done_id = taken.entries.back().id;
    from_memory_.Inc(taken.entries.size());
    // In queue order, a message queued twice in one step ends as its last
    // entry left it (see "The texts in memory").
    std::unordered_map<int64_t, size_t> at;  // doc id -> its Doc in docs
    for (const SearchEntry& e : taken.entries) {
      if (e.doc_id == 0) continue;  // see ReadFromStore
      Doc doc;
      doc.doc_id = e.doc_id;
      doc.conversation = e.conversation;
      doc.seq = e.seq;
      doc.words = MessageWords(e.body);  // none: no row
      doc.version = e.version;
      auto [it, added] = at.emplace(e.doc_id, docs.size());
      if (added) {
        docs.push_back(std::move(doc));
      } else {
        docs[it->second] = std::move(doc);
      }
    }
  } else {
    Result<std::vector<Doc>> read = ReadFromStore(*done_id_, max, &progress);
    if (!read.has_value()) return read.error();
    if (progress.indexed == 0) return progress;
    docs = std::move(read).value();
  }

  if (!top_doc_.has_value()) {
    // FTS5 walks its rows by rowid from either end: one row read.
    Stmt s(*db_, "SELECT rowid FROM message_search ORDER BY rowid DESC LIMIT 1");
    top_doc_ = s.Step() ? s.Int(0) : 0;
  }
  int64_t top_doc = *top_doc_;
  Stmt(*db_, "BEGIN").Run();
  for (const Doc& doc : docs) {
    if (doc.doc_id <= top_doc) {
      // Its earlier text, if it was indexed. Doc ids are never handed out
      // twice (see the header), so the row at its doc id is its own.
      Stmt s(*db_, "DELETE FROM message_search WHERE rowid = ?1");
      s.BindInt(1, doc.doc_id);
      s.Run();
    }
    if (doc.words.empty()) continue;  // deleted, or no words: not in the index
    Stmt s(*db_, "INSERT INTO message_search(rowid, words, conversation_id, seq, version) VALUES(?1, ?2, ?3, ?4, ?5)");
    s.BindInt(1, doc.doc_id)
        .BindText(2, JoinWords(doc.words))
        .BindInt(3, doc.conversation)
        .BindInt(4, doc.seq)
        .BindInt(5, doc.version);
    s.Run();
    top_doc = std::max(top_doc, doc.doc_id);
  }
  {
    Stmt s(*db_, "UPDATE search_state SET done_id = ?1");
    s.BindInt(1, progress.done_id);
    s.Run();
  }
  Stmt(*db_, "COMMIT").Run();
  if (Status s = db_->TakeError(); !s.ok()) {
    done_id_.reset();  // both read again by the next step
    top_doc_.reset();
    return s;
  }
  done_id_ = progress.done_id;
  top_doc_ = top_doc;
  return progress;
}

Result<int64_t> SearchWriter::RemoveRows(const std::vector<SearchRow>& rows) {
  db_->ClearError();
  Stmt(*db_, "BEGIN").Run();  // deferred: see Index
  int64_t removed = 0;
  for (const SearchRow& r : rows) {
    Stmt s(*db_, "DELETE FROM message_search WHERE rowid = ?1 AND conversation_id = ?2 AND seq = ?3");
    s.BindInt(1, r.doc_id).BindInt(2, r.conversation).BindInt(3, r.seq);
    s.Run();
    removed += db_->Changes();
  }
  Stmt(*db_, "COMMIT").Run();
  if (Status s = db_->TakeError(); !s.ok()) return s;
  return removed;
}

}  // namespace parley::store::sqlite
