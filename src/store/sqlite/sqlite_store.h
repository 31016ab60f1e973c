// SqliteStore: the Store of the single-node shape, one SQLite file in WAL
// mode. Implements store/store.h; core reaches it only through that interface
// (store/store_factory.h picks it by the name "sqlite").
//
// Threads. The store runs threads of its own and does nothing on the
// caller's thread but queue:
//   - the writer owns the read-write connection. It takes every queued write
//     (up to StoreConfig::commit_max_batch, waiting up to commit_deadline_us
//     for more when fewer are queued), applies them all in one
//     BEGIN IMMEDIATE ... COMMIT (synchronous=FULL) and only then calls each
//     operation's `done`, on the writer thread. If the transaction fails,
//     every operation in it fails with the same Status (kStorageFull when the
//     disk or the page limit is full, kInternal otherwise). Expected
//     per-operation failures (kUsernameTaken, kNotMember, ...) fail only that
//     operation.
//   - StoreConfig::sqlite_read_connections readers, each owning a read-only
//     connection, serve reads from one FIFO queue, each read in its own read
//     transaction (a consistent snapshot), calling `done` on that reader's
//     thread. Reads may therefore complete out of order; a long one holds up
//     only its own reader.
//   - the checkpointer (unless StoreConfig::sqlite_checkpoint_pages is 0)
//     owns a third connection and copies the WAL back into the database file
//     whenever a commit leaves the WAL at or above sqlite_checkpoint_pages
//     pages (a PASSIVE checkpoint: it never blocks the writer or the reader).
//     The writer then never checkpoints in its commit path, and a page that
//     several commits rewrote is copied once per checkpoint, not once per
//     1,000 pages as SQLite's default automatic checkpoint would. After each
//     background checkpoint the writer copies the few pages committed while
//     it ran (a WAL starts again from its beginning only after a checkpoint
//     that left nothing behind), and if the WAL reaches kWalHardLimitFactor
//     times the threshold (readers holding old snapshots, a checkpointer
//     starved of CPU) the writer checkpoints all of it, so the WAL stays
//     bounded. The checkpointer yields the core after every
//     sqlite_checkpoint_yield_pages pages it copies (wal_buffer_vfs.h),
//     except while the WAL is past that hard limit.
//   - the search writer owns the search file's connection (sqlite_search.h)
//     and runs IndexSearch and a purge's index-row removals, at the lowest
//     priority (kSearchNice), so FTS5 work never holds up the writer.
// A read submitted after a write's `done` has run sees that write.
//
// Lifetime. The destructor finishes every queued operation (writes are
// committed), then joins both threads. REQUIRES: the store is not destroyed
// from one of its own callbacks. Operations submitted while the destructor
// runs, other than from the store's own callbacks, fail kShuttingDown on the
// submitting thread.
//
// Thread-safety: every public method may be called from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/metrics.h"
#include "common/status.h"
#include "store/store.h"
#include "store/store_factory.h"
#include "store/store_threads.h"

struct sqlite3;

// The last seq and the last activity of the conversation of conversations
// row `c` (a table alias): the larger of the row's column and its newest
// message's (one seek of the messages primary key). Since schema step 22 the
// writer does not write either column after the conversation's creation: a
// message row is its own record of both (sqlite_store.cc, "Conversation
// heads").
#define PARLEY_CONVERSATION_LAST_SEQ(c) \
  "max(" c ".last_seq, COALESCE((SELECT lm.seq FROM messages lm WHERE lm.conversation_id = " c ".id " \
  "ORDER BY lm.seq DESC LIMIT 1), 0))"
#define PARLEY_CONVERSATION_ACTIVITY(c) \
  "max(" c ".last_activity_at, COALESCE((SELECT lm.created_at FROM messages lm WHERE lm.conversation_id = " c \
  ".id ORDER BY lm.seq DESC LIMIT 1), 0))"

namespace parley::store {
namespace sqlite {
class Db;
class SearchWriter;
struct SearchRow;
}  // namespace sqlite

class SqliteStore final : public Store {
 public:
  // The schema version a fully migrated file records in PRAGMA user_version.
  static constexpr int kSchemaVersion = 23;
  // The writer checkpoints itself when the WAL holds this many times
  // StoreConfig::sqlite_checkpoint_pages.
  static constexpr int kWalHardLimitFactor = 4;
  // Page cache of the checkpointer's connection: a checkpoint copies pages
  // from the WAL to the file without going through it.
  static constexpr int kCheckpointerCacheKib = 1024;
  // The search writer's nice value (the lowest priority; it also runs under
  // SCHED_BATCH): it indexes in the time the core has to spare, so sends
  // never wait for FTS5 work, and past saturation messages become
  // searchable later (parley_search_index_lag_milliseconds) instead.
  static constexpr int kSearchNice = 19;
  // The writer trims the search queue up to the search file's done_id once
  // this long has passed since the last trim, or once this many entries are
  // waiting to be trimmed (each trim is a transaction of its own).
  static constexpr std::chrono::milliseconds kSearchTrimInterval{1000};
  static constexpr int64_t kSearchTrimEntries = 4096;

  // Opens (creating and migrating) the file at config.sqlite_path; the parent
  // directory must exist. Fails kUnavailable if the file cannot be opened,
  // kInternal if it cannot be migrated (e.g. it is newer than this binary).
  static Result<std::unique_ptr<SqliteStore>> Open(const StoreConfig& config);

  ~SqliteStore() override;
  SqliteStore(const SqliteStore&) = delete;
  SqliteStore& operator=(const SqliteStore&) = delete;

  void CreateUser(std::string username, std::string password_hash, int64_t now, Callback<UserRecord> done) override;
  void GetUserByName(std::string username, Callback<UserRecord> done) override;
  void GetUserById(UserId id, Callback<UserRecord> done) override;
  void CreateDevice(UserId user_id, std::string name, std::string platform, std::string token_hash,
                    std::string verified_hash, int64_t now, Callback<DeviceRecord> done) override;
  void GetAuthContext(std::string token_hash, Callback<AuthContext> done) override;
  void ListDevices(UserId user_id, Callback<std::vector<DeviceRecord>> done) override;
  void RevokeDevice(UserId user_id, DeviceId device_id, StatusCallback done) override;
  void SetCursor(DeviceId device_id, UserSeq user_seq, int64_t now, StatusCallback done) override;
  void OpenDirect(UserId a, UserId b, int64_t now, Callback<OpenResult> done) override;
  void GetConversation(ConversationId id, Callback<ConversationRecord> done) override;
  void AppendMessage(NewMessage msg, Callback<AppendResult> done) override;
  void UpdateReceipt(ReceiptUpdate update, Callback<ReceiptResult> done) override;
  void ChangeMessage(MessageChange change, Callback<ChangeResult> done) override;
  void SetDraft(UserId user_id, ConversationId conversation_id, std::string text, int64_t now,
                Callback<SocialResult> done) override;
  void History(ConversationId id, UserId viewer, Seq before, int limit,
               Callback<std::vector<MessageRecord>> done) override;
  void ReadStream(UserId user_id, UserSeq after, int limit, Callback<StreamPage> done) override;
  void SearchMessages(MessageSearchQuery query, Callback<MessageSearchPage> done) override;
  void SetDisappearing(UserId user_id, ConversationId conversation_id, int64_t seconds, int64_t now,
                       Callback<SocialResult> done) override;
  void ExpireMessages(int64_t now, int max_messages, Callback<ExpireProgress> done) override;
  void PurgeDeleted(int64_t deleted_before, int max_messages, Callback<PurgeProgress> done) override;
  void TrimStreams(TrimRequest req, Callback<TrimProgress> done) override;
  void CompactMessages(CompactRequest req, Callback<CompactProgress> done) override;
  bool HasColdTier() const override { return true; }
  void IndexSearch(int max_entries, Callback<SearchIndexProgress> done) override;
  void GetHead(UserId user_id, Callback<UserSeq> done) override;
  void Export(ExportTable table, std::vector<int64_t> after, int limit, Callback<ExportPage> done) override;
  void GetSnapshot(UserId user_id, int latest_per_conversation, Callback<Snapshot> done) override;
  void GetConversationStates(UserId user_id, std::vector<ConversationId> ids,
                             Callback<std::vector<ConversationState>> done) override;
  void SetProfile(UserId user_id, std::optional<std::string> display_name, std::optional<std::string> about,
                  int64_t now, Callback<SocialResult> done) override;
  void GetProfiles(UserId viewer, std::vector<UserId> ids, Callback<std::vector<ProfileRecord>> done) override;
  void AddContact(UserId owner, UserId contact, int64_t now, Callback<SocialResult> done) override;
  void RemoveContact(UserId owner, UserId contact, int64_t now, Callback<SocialResult> done) override;
  void ListContacts(UserId owner, Callback<std::vector<ContactRecord>> done) override;
  void Block(UserId owner, UserId target, int64_t now, Callback<SocialResult> done) override;
  void Unblock(UserId owner, UserId target, int64_t now, Callback<SocialResult> done) override;
  void ListBlocked(UserId owner, Callback<std::vector<ProfileRecord>> done) override;
  void SearchUsers(UserId searcher, std::string query, std::string after, int limit,
                   Callback<SearchPage> done) override;
  void ListConversations(UserId user_id, int64_t before_activity, ConversationId before_id, int limit,
                         int latest_per_conversation, Callback<ConversationPage> done) override;
  void ChangePassword(UserId user_id, std::string new_hash, DeviceId keep_device, int64_t now,
                      Callback<std::vector<DeviceId>> done) override;
  void BulkCreateUsers(std::vector<NewBulkUser> users, int64_t now,
                       Callback<std::vector<BulkUserResult>> done) override;
  void SetPresenceVisibility(UserId user_id, PresenceVisibility visibility, int64_t now,
                             Callback<SocialResult> done) override;
  void SetLastSeen(UserId user_id, int64_t last_seen, StatusCallback done) override;
  void GetPresence(UserId viewer, std::vector<UserId> ids, Callback<std::vector<PresenceRecord>> done) override;
  void GetMessageTimeline(ConversationId id, Seq seq, Callback<MessageTimeline> done) override;
  void SetUserDisabled(UserId user_id, bool disabled, bool revoke_devices, Callback<DisableResult> done) override;
  void EraseAccount(UserId user_id, int64_t now, Callback<EraseResult> done) override;
  void GetStoreSummary(Callback<StoreSummary> done) override;
  void GetSchemaStatus(Callback<SchemaStatus> done) override;
  void Backup(std::string path, Callback<BackupResult> done) override;
  void SetPushEndpoint(UserId user_id, DeviceId device_id, std::string provider, std::string token, int64_t now,
                       StatusCallback done) override;
  void RemovePushEndpoint(UserId user_id, DeviceId device_id, Callback<bool> done) override;
  void SetMuted(UserId user_id, ConversationId conversation_id, bool muted, int64_t now,
                Callback<SocialResult> done) override;
  void SetPushPreviews(UserId user_id, bool previews, int64_t now, Callback<SocialResult> done) override;
  void GetPushSettings(UserId user_id, Callback<std::pair<bool, std::vector<ConversationId>>> done) override;
  void ListPushHealth(UserId user_id, Callback<std::vector<PushHealth>> done) override;
  void EnqueuePush(PushRequest req, Callback<int> done) override;
  void ClaimPushJobs(std::string node, int64_t now, int64_t lease_ms, int limit,
                     Callback<std::vector<PushJob>> done) override;
  void CompletePush(PushCompletion c, StatusCallback done) override;
  void GetPushQueueStats(int64_t now, Callback<PushQueueStats> done) override;
  void Flush(StatusCallback done) override;
  size_t AbandonQueuedWrites(const Status& why) override;
  StoreStats Stats() const override;

  // Test-only: sets PRAGMA max_page_count on the write connection, as a write
  // operation queued behind earlier ones. SQLite never lowers the limit below
  // the file's current size, so a tiny value freezes the file where it is and
  // the next write that needs a new page fails kStorageFull. `done` gets the
  // limit now in force.
  void SetMaxPageCountForTest(int64_t pages, Callback<int64_t> done);

  // Test-only: SQLite VM steps taken by every SearchUsers so far.
  uint64_t SearchStepsForTest() const;
  // Test-only: creates (or migrates) the file at `path` to schema `version`
  // exactly, as an older server would have left it.
  static Status CreateAtSchemaVersionForTest(const std::string& path, int version);

 private:
  class Writer;  // the writer thread's connection, caches and write logic
  class Reader;  // a reader thread's connection and read logic
  class WriteOp;
  template <typename T>
  class TypedWriteOp;
  class ReceiptWriteOp;

  SqliteStore(const StoreConfig& config, std::unique_ptr<Writer> writer,
              std::vector<std::unique_ptr<Reader>> readers, std::unique_ptr<sqlite::Db> checkpoint_db,
              std::unique_ptr<sqlite::SearchWriter> search_writer);

  // Queue a write whose body runs on the writer thread inside a transaction.
  // `solo`: in a transaction of its own (background work, IndexSearch).
  template <typename T>
  void SubmitWrite(std::function<Result<T>(Writer&)> body, Callback<T> done, bool solo = false);
  void Enqueue(std::unique_ptr<WriteOp> op);
  // Queue a read whose body runs on a reader thread inside a read transaction.
  template <typename T>
  void SubmitRead(std::function<Result<T>(Reader&)> body, Callback<T> done);

  void RunWriter();
  void RunCheckpointer();
  // A PASSIVE checkpoint on the writer's connection, in its WAL hook (timed:
  // the commit that runs it waits for it).
  void WriterCheckpoint(sqlite3* db, const char* schema);
  // On the search thread after a step committed `done_id`: queues a
  // TrimSearchQueue when one is due (kSearchTrimInterval, kSearchTrimEntries).
  void MaybeTrimSearchQueue(int64_t done_id);
  // sqlite3_wal_hook on the writer's connection: runs after every commit
  // with the WAL's size in pages.
  static int OnWalCommit(void* self, sqlite3* db, const char* schema, int pages);

  const std::string source_path_;
  const int max_batch_;
  const int deadline_us_;
  const int adaptive_wait_us_;
  const int loaded_wait_us_;
  std::unique_ptr<Writer> writer_;  // used only by writer_thread_
  const std::function<void()> after_read_for_test_;  // StoreConfig::sqlite_after_read_for_test
  const int checkpoint_pages_;      // 0: no checkpointer; the writer checkpoints (SQLite's default)
  const int checkpoint_yield_pages_;  // StoreConfig::sqlite_checkpoint_yield_pages
  // What the checkpointer yields after now: checkpoint_yield_pages_, or 0
  // while the WAL is past its hard limit (set by OnWalCommit).
  std::atomic<int> checkpoint_yield_now_;
  std::unique_ptr<sqlite::Db> checkpoint_db_;  // used only by checkpoint_thread_
  // Used only by OnWalCommit, on the writer thread.
  int last_wal_pages_ = 0;
  int next_checkpoint_at_;  // WAL pages at which to ask the checkpointer
  // Set by the checkpointer after each checkpoint: the writer copies what
  // was committed meanwhile.
  std::atomic<bool> tail_wanted_{false};

  // State below is guarded by checkpoint_mu_.
  std::mutex checkpoint_mu_;
  std::condition_variable checkpoint_cv_;
  bool checkpoint_wanted_ = false;
  bool checkpoint_stopping_ = false;

  // The online backup's thread (one backup at a time).
  std::mutex backup_mu_;
  std::thread backup_thread_;
  bool backup_running_ = false;

  std::atomic<uint64_t> commits_{0};
  std::atomic<uint64_t> rows_read_sync_{0};
  std::atomic<uint64_t> full_scan_steps_{0};
  std::atomic<uint64_t> search_steps_{0};

  // Process-wide metrics (Metrics::Default()), shared by every store instance.
  Counter& commits_total_;
  Histogram& commit_batch_size_;
  Histogram& commit_seconds_;
  Counter& messages_stored_;
  Histogram& sync_rows_read_;
  Gauge& queue_depth_;
  Counter& checkpoints_total_;
  Counter& writer_checkpoints_total_;
  Histogram& checkpoint_seconds_;
  Histogram& writer_checkpoint_seconds_;
  Gauge& wal_pages_;
  Counter& wal_pages_written_;

  // Used only on the search thread (MaybeTrimSearchQueue).
  int64_t search_trimmed_ = 0;  // the done_id of the last trim queued
  std::chrono::steady_clock::time_point search_trimmed_at_{};

  WriteQueue<WriteOp> write_queue_;  // drained by writer_thread_
  // The search file's writer on a thread of its own (store-search/0, at
  // kSearchNice; sqlite_search.h): IndexSearch and a purge's row removals.
  // Declared before the readers so that its connection, the search file's
  // only writable one, closes after theirs: the last connection to close
  // checkpoints the file's WAL and deletes it.
  ReadPool<sqlite::SearchWriter> search_pool_;
  ReadPool<Reader> read_pool_;  // the readers and their threads (store-reader/i)
  std::thread writer_thread_;
  std::thread checkpoint_thread_;
};

}  // namespace parley::store
