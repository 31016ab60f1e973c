// PostgresStore: the Store of the cluster shape, one PostgreSQL 15 database
// shared by every parleyd node. Implements store/store.h with the same
// semantics as SqliteStore (the conformance suite runs against both);
// store/store_factory.h picks it for a postgres:// or postgresql:// URL.
//
// Threads. The store runs threads of its own and does nothing on the
// caller's thread but queue:
//   - the writer owns one connection. It takes every queued write (up to
//     StoreConfig::commit_max_batch, waiting up to commit_deadline_us for
//     more), applies them all in one transaction and only then calls each
//     operation's `done`, on the writer thread. Writes whose results are not
//     needed are sent in libpq pipelines, and COMMIT goes out with the last
//     of them. If the transaction fails, every operation in it fails with the
//     same Status (kUnavailable when the server is unreachable — retryable,
//     nothing was acknowledged —, kStorageFull when its disk is full,
//     kInternal otherwise); a serialization failure or deadlock against
//     another node is retried a few times first (kMaxBatchAttempts), then
//     fails kUnavailable. Each batch first locks the rows its operations
//     declared (LockSet), sorted, so that batches of different nodes do not
//     deadlock on each other.
//   - StoreConfig::postgres_read_connections readers, one connection each,
//     serve reads from one FIFO queue, each read in its own REPEATABLE READ
//     READ ONLY transaction (a consistent snapshot), calling `done` on the
//     reader's thread.
// A read submitted after a write's `done` has run sees that write.
//
// Several nodes. Nothing that another node may change is cached: sequence
// numbers are assigned under row locks in the database (the conversation
// row, the user's head row), so N parleyd nodes on one database keep every
// sequence gapless and deduplication exact. Only conversation members (never
// changed once created) are cached.
//
// Lifetime. The destructor finishes every queued operation, then joins the
// threads. REQUIRES: the store is not destroyed from one of its own
// callbacks. Operations submitted after the threads exited fail
// kShuttingDown on the submitting thread.
//
// Thread-safety: every public method may be called from any thread.
#pragma once

#include <atomic>
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

namespace parley::store {

class PostgresStore final : public Store {
 public:
  // The schema version a fully migrated database records in schema_version.
  static constexpr int kSchemaVersion = 13;
  // Hash partitions of messages and withheld (by conversation id) and of
  // user_events (by user id). Fixed by the schema: changing it is a
  // migration that re-partitions.
  static constexpr int kPartitions = 16;
  // A batch failing on a serialization failure or deadlock (another node
  // took the same rows) is retried this many times in all; then its
  // operations fail kUnavailable (retryable).
  static constexpr int kMaxBatchAttempts = 3;

  // Connects to config.postgres_url and migrates the database. Fails
  // kUnavailable if it cannot connect, kInternal if it cannot be migrated
  // (e.g. it is newer than this binary).
  static Result<std::unique_ptr<PostgresStore>> Open(const StoreConfig& config);

  ~PostgresStore() override;
  PostgresStore(const PostgresStore&) = delete;
  PostgresStore& operator=(const PostgresStore&) = delete;

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

  // Test-only: migrates the database at `url` to schema `version` exactly,
  // as an older server would have left it.
  static Status MigrateToVersionForTest(const std::string& url, int version);
  // Test-only: statements the writer connection has sent so far.
  uint64_t WriterStatementsForTest() const;

 private:
  class Writer;
  class Reader;
  class WriteOp;
  template <typename T>
  class TypedWriteOp;
  // The rows a write will lock, taken in one global order at the start of
  // its batch (see CommitBatch in the .cc): conversations, then users' stream
  // heads (a conversation brings its members), then devices.
  struct LockSet {
    std::vector<ConversationId> conversations;
    std::vector<UserId> users;
    std::vector<DeviceId> devices;
  };

  PostgresStore(const StoreConfig& config, std::unique_ptr<Writer> writer,
                std::vector<std::unique_ptr<Reader>> readers);

  template <typename T>
  // `solo`: in a transaction of its own (background work, IndexSearch).
  void SubmitWrite(std::function<Result<T>(Writer&)> body, Callback<T> done, LockSet locks = {}, bool solo = false);
  template <typename T>
  void SubmitRead(std::function<Result<T>(Reader&)> body, Callback<T> done);

  void RunWriter();

  const int max_batch_;
  const int deadline_us_;
  const int adaptive_wait_us_;
  const int loaded_wait_us_;
  std::unique_ptr<Writer> writer_;  // used only by writer_thread_

  std::atomic<uint64_t> commits_{0};
  std::atomic<uint64_t> rows_read_sync_{0};
  std::atomic<uint64_t> writer_statements_{0};

  // Process-wide metrics (Metrics::Default()), shared with the SQLite store.
  Counter& commits_total_;
  Histogram& commit_batch_size_;
  Histogram& commit_seconds_;
  Counter& messages_stored_;
  Histogram& sync_rows_read_;
  Gauge& queue_depth_;

  WriteQueue<WriteOp> write_queue_;  // drained by writer_thread_
  ReadPool<Reader> read_pool_;       // the readers and their threads (store-reader/i)
  std::thread writer_thread_;
};

}  // namespace parley::store
