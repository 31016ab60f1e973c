// Tests of what only the SQLite backend has: the work a sync does (counted in
// SQLite VM steps), the schema version, group commit, and a transaction that
// fails. Behaviour common to every backend lives in store_conformance_test.cc.

#include "store/sqlite/sqlite_store.h"

#include <gtest/gtest.h>
#include <sqlite3.h>

#include <chrono>
#include <memory>
#include <string>

#include "common/metrics.h"
#include "store/store_test_util.h"

namespace parley::store {
namespace {

using namespace parley::store::testing;  // NOLINT: test helpers

std::unique_ptr<SqliteStore> OpenSqlite(const std::string& path, int max_batch = 1000, int deadline_us = 0) {
  StoreConfig config;
  config.sqlite_path = path;
  config.commit_max_batch = max_batch;
  config.commit_deadline_us = deadline_us;
  config.sqlite_cache_kib = 8192;
  Result<std::unique_ptr<SqliteStore>> store = SqliteStore::Open(config);
  if (!store.has_value()) {
    ADD_FAILURE() << store.error().ToString();
    return nullptr;
  }
  return std::move(store).value();
}

// Queues `n` messages from `from` at once and waits for all of them.
void SendMany(Store& store, ConversationId c, UserId from, DeviceId dev, int n, const std::string& prefix,
              const std::string& body = "x") {
  Collector<AppendResult> results(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    store.AppendMessage(Msg(c, from, dev, prefix + std::to_string(i), body), results.Slot(static_cast<size_t>(i)));
  }
  for (auto& r : results.Wait()) {
    if (!r->has_value()) ADD_FAILURE() << r->error().ToString();
  }
}

struct SyncCost {
  uint64_t vm_steps = 0;
  uint64_t full_scan_steps = 0;
  size_t events = 0;
};

// bob's device is at his head, `history` messages into the conversation; then
// he misses 10 more and syncs from his cursor.
SyncCost SyncAfterMissingTen(int history) {
  TempDir dir;
  std::unique_ptr<SqliteStore> store = OpenSqlite(dir.path() + "/parley.db");
  if (!store) return {};
  UserRecord alice = MakeUser(*store, "alice");
  UserRecord bob = MakeUser(*store, "bob");
  DeviceRecord alice_dev = MakeDevice(*store, alice.id, "ta");
  ConversationId c = Open(*store, alice.id, bob.id).conversation.id;
  SendMany(*store, c, alice.id, alice_dev.id, history, "old-");
  DeviceRecord bob_dev = MakeDevice(*store, bob.id, "tb");  // cursor = bob's head now
  SendMany(*store, c, alice.id, alice_dev.id, 10, "new-");

  StoreStats before = store->Stats();
  StreamPage page = ReadStream(*store, bob.id, bob_dev.cursor, 100);
  StoreStats after = store->Stats();
  EXPECT_FALSE(page.has_more);
  EXPECT_EQ(page.head, history + 11);
  return SyncCost{after.rows_read_sync - before.rows_read_sync, after.full_scan_steps - before.full_scan_steps,
                  page.events.size()};
}

TEST(SqliteStoreTest, SyncWorkDoesNotGrowWithHistory) {
  auto start = std::chrono::steady_clock::now();
  SyncCost small = SyncAfterMissingTen(100);
  SyncCost big = SyncAfterMissingTen(100000);
  EXPECT_EQ(small.events, 10u);
  EXPECT_EQ(big.events, 10u);
  EXPECT_GT(small.vm_steps, 0u);
  EXPECT_EQ(big.vm_steps, small.vm_steps);
  EXPECT_EQ(big.full_scan_steps, small.full_scan_steps);
  EXPECT_EQ(big.full_scan_steps, 0u);
  // A few dozen VM steps per event, not thousands.
  EXPECT_LT(small.vm_steps, 1000u);
  RecordProperty("vm_steps_for_10_events", static_cast<int>(small.vm_steps));
  RecordProperty("seconds", static_cast<int>(std::chrono::duration_cast<std::chrono::seconds>(
                                                 std::chrono::steady_clock::now() - start)
                                                 .count()));
}

TEST(SqliteStoreTest, RecordsSchemaVersionAndRefusesNewerFiles) {
  TempDir dir;
  const std::string path = dir.path() + "/parley.db";
  {
    std::unique_ptr<SqliteStore> store = OpenSqlite(path);
    ASSERT_NE(store, nullptr);
    MakeUser(*store, "alice");
  }
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  auto query_int = [db](const char* sql) {
    sqlite3_stmt* stmt = nullptr;
    int64_t v = -1;
    if (sqlite3_prepare_v2(db, sql, -1, &stmt, nullptr) == SQLITE_OK && sqlite3_step(stmt) == SQLITE_ROW) {
      v = sqlite3_column_int64(stmt, 0);
    }
    sqlite3_finalize(stmt);
    return v;
  };
  EXPECT_EQ(query_int("PRAGMA user_version"), SqliteStore::kSchemaVersion);
  EXPECT_EQ(query_int("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'user_events'"), 1);
  EXPECT_EQ(query_int("SELECT count(*) FROM users"), 1);

  // Reopening migrates nothing and loses nothing.
  sqlite3_close(db);
  {
    std::unique_ptr<SqliteStore> store = OpenSqlite(path);
    ASSERT_NE(store, nullptr);
    EXPECT_TRUE(Await<UserRecord>([&](auto cb) { store->GetUserByName("alice", cb); }).has_value());
  }
  // A file from a newer server is refused rather than misread.
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "PRAGMA user_version = 99", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(db);
  StoreConfig config;
  config.sqlite_path = path;
  Result<std::unique_ptr<SqliteStore>> newer = SqliteStore::Open(config);
  ASSERT_FALSE(newer.has_value());
  EXPECT_EQ(newer.error().code(), ErrorCode::kInternal);
}

TEST(SqliteStoreTest, GroupCommitsQueuedWrites) {
  TempDir dir;
  std::unique_ptr<SqliteStore> store = OpenSqlite(dir.path() + "/parley.db");
  ASSERT_NE(store, nullptr);
  UserRecord alice = MakeUser(*store, "alice");
  UserRecord bob = MakeUser(*store, "bob");
  DeviceRecord dev = MakeDevice(*store, alice.id, "ta");
  ConversationId c = Open(*store, alice.id, bob.id).conversation.id;
  Histogram& batch_sizes = Metrics::Default().GetHistogram("parley_store_commit_batch_size", "", {});
  Counter& stored = Metrics::Default().GetCounter("parley_messages_stored_total", "");
  uint64_t batches_before = batch_sizes.count();
  uint64_t stored_before = stored.value();

  uint64_t commits_before = store->Stats().commits;
  SendMany(*store, c, alice.id, dev.id, 1000, "m");
  uint64_t commits = store->Stats().commits - commits_before;
  EXPECT_GE(commits, 1u);
  EXPECT_LE(commits, 100u);
  EXPECT_EQ(Head(*store, bob.id), 1001);
  EXPECT_EQ(stored.value() - stored_before, 1000u);
  EXPECT_EQ(batch_sizes.count() - batches_before, commits);
  RecordProperty("commits_for_1000_appends", static_cast<int>(commits));

  // A duplicate is not a new stored message.
  ASSERT_TRUE(Must(Append(*store, Msg(c, alice.id, dev.id, "m7", "x"))).duplicate);
  EXPECT_EQ(stored.value() - stored_before, 1000u);

  std::string text = Metrics::Default().RenderPrometheus();
  for (const char* name :
       {"parley_store_commits_total", "parley_store_commit_batch_size", "parley_store_commit_seconds",
        "parley_messages_stored_total", "parley_sync_rows_read", "parley_store_queue_depth"}) {
    EXPECT_NE(text.find(name), std::string::npos) << name;
  }
}

TEST(SqliteStoreTest, DeadlineGathersWritesIntoOneCommit) {
  TempDir dir;
  // Every transaction waits up to 10 s for 20 writes: the 20 queued below
  // must go into exactly one commit, the moment the 20th arrives.
  std::unique_ptr<SqliteStore> store = OpenSqlite(dir.path() + "/parley.db", 20, 10'000'000);
  ASSERT_NE(store, nullptr);
  uint64_t before = store->Stats().commits;
  Collector<UserRecord> users(20);
  for (size_t i = 0; i < 20; ++i) store->CreateUser("u" + std::to_string(i), "h", 1, users.Slot(i));
  for (auto& r : users.Wait()) EXPECT_TRUE(r->has_value());
  EXPECT_EQ(store->Stats().commits - before, 1u);
}

TEST(SqliteStoreTest, FailedTransactionFailsItsWholeBatchAndLaterWritesWork) {
  TempDir dir;
  // A 200 ms deadline gathers everything queued at once into one transaction.
  std::unique_ptr<SqliteStore> store = OpenSqlite(dir.path() + "/parley.db", 1000, 200'000);
  ASSERT_NE(store, nullptr);
  UserRecord alice = MakeUser(*store, "alice");
  UserRecord bob = MakeUser(*store, "bob");
  DeviceRecord dev = MakeDevice(*store, alice.id, "ta");
  ConversationId c = Open(*store, alice.id, bob.id).conversation.id;
  SendMany(*store, c, alice.id, dev.id, 5, "before-");
  UserSeq bob_head = Head(*store, bob.id);

  // Freeze the file at its current size.
  int64_t limit = Must(Await<int64_t>([&](auto cb) { store->SetMaxPageCountForTest(1, cb); }));
  EXPECT_GT(limit, 1);

  // Large bodies need new pages; the user in the same batch fails with them.
  const std::string big(16 * 1024, 'b');
  Collector<AppendResult> appends(10);
  Collector<UserRecord> user(1);
  auto send_big = [&](size_t i) {
    store->AppendMessage(Msg(c, alice.id, dev.id, "big" + std::to_string(i), big), appends.Slot(i));
  };
  for (size_t i = 0; i < 5; ++i) send_big(i);
  store->CreateUser("zed", "h", 1, user.Slot(0));
  for (size_t i = 5; i < 10; ++i) send_big(i);
  for (auto& r : appends.Wait()) {
    ASSERT_FALSE(r->has_value());
    EXPECT_EQ(r->error().code(), ErrorCode::kStorageFull) << r->error().ToString();
  }
  ASSERT_FALSE(user.Wait()[0]->has_value());
  EXPECT_EQ(user.Wait()[0]->error().code(), ErrorCode::kStorageFull);

  // Earlier data is intact and nothing of the failed batch is visible.
  std::vector<MessageRecord> history = History(*store, c, 0, 100);
  ASSERT_EQ(history.size(), 5u);
  EXPECT_EQ(history.back().client_id, "before-4");
  EXPECT_EQ(Head(*store, bob.id), bob_head);
  EXPECT_FALSE(Await<UserRecord>([&](auto cb) { store->GetUserByName("zed", cb); }).has_value());

  // With room again, writes work and seqs continue without a gap.
  EXPECT_GT(Must(Await<int64_t>([&](auto cb) { store->SetMaxPageCountForTest(1 << 30, cb); })), limit);
  AppendResult next = Must(Append(*store, Msg(c, alice.id, dev.id, "big0", big)));
  EXPECT_FALSE(next.duplicate);
  EXPECT_EQ(next.message.seq, 6);
  ASSERT_EQ(next.positions.size(), 2u);
  EXPECT_EQ(next.positions[1].user_seq, bob_head + 1);
  EXPECT_GT(MakeUser(*store, "zed").id, 0);
  EXPECT_EQ(History(*store, c, 0, 100).size(), 6u);
}

}  // namespace
}  // namespace parley::store
