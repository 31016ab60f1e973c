// Tests of what only the SQLite backend has: the work a sync and a user search
// do (counted in SQLite VM steps), the schema version and its migration,
// group commit, and a transaction that fails. Behaviour common to every backend lives in store_conformance_test.cc.

#include "store/sqlite/sqlite_store.h"

#include <gtest/gtest.h>
#include <sqlite3.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <iterator>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "common/metrics.h"
#include "protocol/message_edits.h"
#include "store/sqlite/sqlite_backup.h"
#include "store/sqlite/sqlite_db.h"
#include "store/sqlite/sqlite_search.h"
#include "store/sqlite/wal_buffer_vfs.h"
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

// The schema version recorded in the file (PRAGMA user_version), -1 on error.
// The value of `PRAGMA name` on the file at `path`, or -1.
int64_t PragmaValue(const std::string& path, const std::string& name) {
  sqlite3* db = nullptr;
  int64_t v = -1;
  if (sqlite3_open(path.c_str(), &db) == SQLITE_OK) {
    sqlite3_stmt* stmt = nullptr;
    if (sqlite3_prepare_v2(db, ("PRAGMA " + name).c_str(), -1, &stmt, nullptr) == SQLITE_OK &&
        sqlite3_step(stmt) == SQLITE_ROW)
      v = sqlite3_column_int64(stmt, 0);
    sqlite3_finalize(stmt);
  }
  sqlite3_close(db);
  return v;
}

int64_t UserVersion(const std::string& path) { return PragmaValue(path, "user_version"); }

// The first row `sql` reads from the file at `path`, each column as text
// ("" for NULL); empty if the query fails or reads nothing.
std::vector<std::string> FirstRow(const std::string& path, const std::string& sql) {
  std::vector<std::string> row;
  sqlite3* db = nullptr;
  if (sqlite3_open(path.c_str(), &db) == SQLITE_OK) {
    sqlite3_stmt* stmt = nullptr;
    if (sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr) == SQLITE_OK && sqlite3_step(stmt) == SQLITE_ROW) {
      for (int i = 0; i < sqlite3_column_count(stmt); ++i) {
        const unsigned char* text = sqlite3_column_text(stmt, i);
        row.emplace_back(text ? reinterpret_cast<const char*>(text) : "");
      }
    }
    sqlite3_finalize(stmt);
  }
  sqlite3_close(db);
  return row;
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

// ---- Search cost ----

struct SearchCost {
  uint64_t vm_steps = 0;
  std::vector<std::string> first_page;
};

// A directory of `users` users provisioned in bulk, in big batches (usernames
// "al…" for even i, "user…" for odd; display names "Sam Roe" / "Alex Doe"),
// and a searcher of its own.
std::unique_ptr<SqliteStore> BuildDirectory(const TempDir& dir, int users, UserId* searcher) {
  std::unique_ptr<SqliteStore> store = OpenSqlite(dir.path() + "/parley.db");
  if (!store) return nullptr;
  constexpr int kBatch = 50000;
  for (int start = 0; start < users; start += kBatch) {
    std::vector<NewBulkUser> batch;
    for (int i = start; i < std::min(users, start + kBatch); ++i) {
      NewBulkUser u;
      u.username = (i % 2 == 0 ? "al" : "user") + std::to_string(1000000 + i);
      u.password_hash = "h";
      u.display_name = i % 2 == 0 ? "Sam Roe" : "Alex Doe";
      batch.push_back(std::move(u));
    }
    Result<std::vector<BulkUserResult>> made =
        Await<std::vector<BulkUserResult>>([&](auto cb) { store->BulkCreateUsers(std::move(batch), 1, cb); });
    if (!made.has_value()) {
      ADD_FAILURE() << made.error().ToString();
      return nullptr;
    }
  }
  *searcher = MakeUser(*store, "zz-searcher").id;
  return store;
}

// One page of 20 for `query`, with the VM steps it took.
SearchCost SearchPageCost(SqliteStore& store, UserId searcher, const std::string& query) {
  SearchCost cost;
  uint64_t before = store.SearchStepsForTest();
  SearchPage page = Search(store, searcher, query, "", 20);
  cost.vm_steps = store.SearchStepsForTest() - before;
  for (const ProfileRecord& p : page.users) cost.first_page.push_back(p.username);
  EXPECT_EQ(page.users.size(), 20u) << query;
  EXPECT_FALSE(page.next.empty()) << query;
  return cost;
}

TEST(SqliteStoreTest, SearchWorkDoesNotGrowWithDirectorySize) {
  auto start = std::chrono::steady_clock::now();
  // Broad prefixes: each matches half or all of the directory, by username
  // ("al", "user"), by a name word ("alex", "s"), or both ("al").
  const std::vector<std::string> queries{"al", "alex", "user", "s"};
  TempDir small_dir;
  TempDir big_dir;
  UserId small_searcher = 0;
  UserId big_searcher = 0;
  std::unique_ptr<SqliteStore> small = BuildDirectory(small_dir, 20000, &small_searcher);
  std::unique_ptr<SqliteStore> big = BuildDirectory(big_dir, 200000, &big_searcher);
  ASSERT_TRUE(small && big);
  for (const std::string& query : queries) {
    SearchCost small_cost = SearchPageCost(*small, small_searcher, query);
    SearchCost big_cost = SearchPageCost(*big, big_searcher, query);
    EXPECT_EQ(big_cost.first_page, small_cost.first_page) << query;
    EXPECT_GT(small_cost.vm_steps, 0u);
    // The same page costs the same VM steps however big the directory: a
    // few dozen per returned user, never a scan of the matches.
    EXPECT_EQ(big_cost.vm_steps, small_cost.vm_steps) << query;
    EXPECT_LT(small_cost.vm_steps, 100u * 21u) << query;
    RecordProperty("vm_steps_page20_" + query, static_cast<int>(big_cost.vm_steps));
  }
  // Latency on the big directory (recorded, not asserted: sanitizer builds
  // and shared machines make timings unreliable).
  const char* prefixes[] = {"a", "al", "al10", "u", "us", "user1", "s", "sa", "r", "ro", "d", "do", "alex", "x"};
  std::vector<double> latencies;
  std::string after;
  for (int i = 0; i < 300; ++i) {
    std::string q = prefixes[static_cast<size_t>(i) % std::size(prefixes)];
    auto t0 = std::chrono::steady_clock::now();
    SearchPage p = Search(*big, big_searcher, q, i % 3 == 2 ? after : "", 20);
    latencies.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
    after = p.next;
  }
  std::sort(latencies.begin(), latencies.end());
  RecordProperty("p50_us_200k", static_cast<int>(latencies[latencies.size() / 2]));
  RecordProperty("p99_us_200k", static_cast<int>(latencies[latencies.size() * 99 / 100]));
  RecordProperty("seconds", static_cast<int>(std::chrono::duration_cast<std::chrono::seconds>(
                                                 std::chrono::steady_clock::now() - start)
                                                 .count()));
}

// ---- Migration ----

TEST(SqliteStoreTest, MigratesVersion1FilesInPlace) {
  TempDir dir;
  const std::string path = dir.path() + "/parley.db";
  ASSERT_TRUE(SqliteStore::CreateAtSchemaVersionForTest(path, 1).ok());
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  // What a version-1 server leaves: two users in a direct conversation with
  // two messages, one device each.
  const char* v1 = R"sql(
INSERT INTO users(id, username, password_hash, created_at) VALUES(1, 'alice', 'ha', 10), (2, 'bob', 'hb', 11);
INSERT INTO devices(id, user_id, name, platform, token_hash, created_at, last_seen_at, cursor, revoked)
  VALUES(1, 1, 'p', 'x', x'a1', 10, 10, 0, 0), (2, 2, 'p', 'x', x'b2', 11, 11, 0, 0);
INSERT INTO conversations(id, direct_key, last_seq, created_at, last_activity_at) VALUES(1, '1:2', 2, 100, 300);
INSERT INTO members(conversation_id, user_id) VALUES(1, 1), (1, 2);
INSERT INTO messages(conversation_id, seq, sender_id, sender_device_id, client_id, body, created_at)
  VALUES(1, 1, 1, 1, 'c1', 'hi', 200), (1, 2, 2, 2, 'c2', 'yo', 300);
INSERT INTO user_events(user_id, user_seq, kind, conversation_id, seq, created_at)
  VALUES(1, 1, 3, 1, 0, 100), (1, 2, 1, 1, 1, 200), (1, 3, 1, 1, 2, 300),
        (2, 1, 3, 1, 0, 100), (2, 2, 1, 1, 1, 200), (2, 3, 1, 1, 2, 300);
INSERT INTO user_heads(user_id, head) VALUES(1, 3), (2, 3);
INSERT INTO user_receipts(conversation_id, user_id, delivered, read) VALUES(1, 1, 1, 1), (1, 2, 2, 2);
)sql";
  ASSERT_EQ(sqlite3_exec(db, v1, nullptr, nullptr, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
  sqlite3_close(db);

  std::unique_ptr<SqliteStore> store = OpenSqlite(path);
  ASSERT_NE(store, nullptr);
  UserRecord alice = Must(Await<UserRecord>([&](auto cb) { store->GetUserByName("alice", cb); }));
  EXPECT_EQ(alice.id, 1);
  EXPECT_EQ(alice.display_name, "");
  EXPECT_EQ(alice.about, "");
  // Each member's activity starts at the conversation's.
  ConversationPage list = ListConversations(*store, 1, 0, 0, 10, 5);
  ASSERT_EQ(list.conversations.size(), 1u);
  EXPECT_EQ(list.conversations[0].conversation.last_activity_at, 300);
  EXPECT_EQ(list.conversations[0].latest.size(), 2u);
  EXPECT_EQ(list.conversations[0].unread, 1);
  EXPECT_EQ(History(*store, 1, 0, 10, 1).size(), 2u);
  StreamPage page = ReadStream(*store, 2, 0, 10);
  ASSERT_EQ(page.events.size(), 3u);
  EXPECT_TRUE(page.events[2].withheld.empty());
  // The new features work on the old data.
  ASSERT_TRUE(SetProfile(*store, 1, "Alice A", std::nullopt).has_value());
  EXPECT_EQ(Search(*store, 2, "alice", "", 5).users.size(), 1u);
  ASSERT_TRUE(Block(*store, 1, 2).has_value());
  AppendResult withheld = Must(Append(*store, Msg(1, 2, 2, "c3", "still there?", 400)));
  EXPECT_EQ(withheld.message.seq, 3);
  EXPECT_EQ(withheld.positions.size(), 1u);
  EXPECT_EQ(History(*store, 1, 0, 10, 1).size(), 2u);
  store.reset();

  EXPECT_EQ(UserVersion(path), SqliteStore::kSchemaVersion);
}

TEST(SqliteStoreTest, MigratesVersion2BlocksToKeepTheBlockersProfile) {
  TempDir dir;
  const std::string path = dir.path() + "/parley.db";
  ASSERT_TRUE(SqliteStore::CreateAtSchemaVersionForTest(path, 2).ok());
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  // What a version-2 server leaves: alice (with a profile) blocks bob, who
  // has her as a contact; carol has her as a contact too.
  const char* v2 = R"sql(
INSERT INTO users(id, username, password_hash, created_at, display_name, about, profile_updated_at)
  VALUES(1, 'alice', 'ha', 10, 'Alice', 'before', 50), (2, 'bob', 'hb', 11, '', '', 0),
        (3, 'carol', 'hc', 12, '', '', 0);
INSERT INTO contacts(owner_id, contact_id, added_at) VALUES(2, 1, 60), (3, 1, 61);
INSERT INTO blocks(owner_id, target_id, created_at) VALUES(1, 2, 70);
)sql";
  ASSERT_EQ(sqlite3_exec(db, v2, nullptr, nullptr, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
  sqlite3_close(db);

  std::unique_ptr<SqliteStore> store = OpenSqlite(path);
  ASSERT_NE(store, nullptr);
  auto contact_of = [&](UserId owner) {
    std::vector<ContactRecord> list =
        Must(Await<std::vector<ContactRecord>>([&](auto cb) { store->ListContacts(owner, cb); }));
    EXPECT_EQ(list.size(), 1u);
    return list.empty() ? ProfileRecord{} : list[0].profile;
  };
  // The existing block keeps alice's profile as it was at migration.
  ASSERT_TRUE(SetProfile(*store, 1, "Alicia", "after", 80).has_value());
  ProfileRecord bobs = contact_of(2);
  EXPECT_EQ(bobs.display_name, "Alice");
  EXPECT_EQ(bobs.about, "before");
  EXPECT_EQ(bobs.updated_at, 50);
  EXPECT_EQ(contact_of(3).display_name, "Alicia");
  ASSERT_TRUE(Unblock(*store, 1, 2).has_value());
  EXPECT_EQ(contact_of(2).display_name, "Alicia");
  store.reset();

  EXPECT_EQ(UserVersion(path), SqliteStore::kSchemaVersion);
}

// Step 8: the name index of non-ASCII display names is re-made with Unicode
// folding (common/text_fold.h); ASCII names keep their rows.
TEST(SqliteStoreTest, MigratesVersion7NameIndexToUnicodeFolding) {
  TempDir dir;
  const std::string path = dir.path() + "/parley.db";
  ASSERT_TRUE(SqliteStore::CreateAtSchemaVersionForTest(path, 7).ok());
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  // What a version-7 server indexed: bytes >= 0x80 as they were ("Él..."),
  // ASCII lower-cased.
  const char* v7 = R"sql(
INSERT INTO users(id, username, password_hash, created_at, display_name, about, profile_updated_at)
  VALUES(1, 'searcher', 'h', 10, '', '', 0), (2, 'fr1', 'h', 11, 'Élodie Ng', '', 20),
        (3, 'en1', 'h', 12, 'Bo Ng', '', 20);
INSERT INTO name_prefixes(prefix, username, user_id) VALUES
  ('É', 'fr1', 2), ('Él', 'fr1', 2), ('Élo', 'fr1', 2), ('Élod', 'fr1', 2), ('Élodi', 'fr1', 2),
  ('Élodie', 'fr1', 2), ('n', 'fr1', 2), ('ng', 'fr1', 2),
  ('b', 'en1', 3), ('bo', 'en1', 3), ('n', 'en1', 3), ('ng', 'en1', 3);
)sql";
  ASSERT_EQ(sqlite3_exec(db, v7, nullptr, nullptr, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
  sqlite3_close(db);

  std::unique_ptr<SqliteStore> store = OpenSqlite(path);
  ASSERT_NE(store, nullptr);
  auto found = [&](const std::string& folded_query) {
    std::vector<std::string> out;
    for (const ProfileRecord& p : Search(*store, 1, folded_query, "", 10).users) out.push_back(p.username);
    return out;
  };
  EXPECT_EQ(found("élo"), std::vector<std::string>{"fr1"});
  EXPECT_EQ(found("élodie"), std::vector<std::string>{"fr1"});
  EXPECT_TRUE(found("É").empty());  // the old unfolded rows are gone
  EXPECT_EQ(found("ng"), (std::vector<std::string>{"en1", "fr1"}));
  EXPECT_EQ(found("bo"), std::vector<std::string>{"en1"});
  // The re-made rows are the ones a rename removes.
  ASSERT_TRUE(SetProfile(*store, 2, "Zoé", std::nullopt).has_value());
  EXPECT_TRUE(found("élo").empty());
  EXPECT_TRUE(found("ng").size() == 1u);
  store.reset();

  EXPECT_EQ(UserVersion(path), SqliteStore::kSchemaVersion);
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  sqlite3_stmt* stmt = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db, "SELECT count(*) FROM name_prefixes WHERE username = 'fr1'", -1, &stmt, nullptr),
            SQLITE_OK);
  ASSERT_EQ(sqlite3_step(stmt), SQLITE_ROW);
  EXPECT_EQ(sqlite3_column_int64(stmt, 0), 3);  // z, zo, zoé
  sqlite3_finalize(stmt);
  sqlite3_close(db);
}

// Creates a store file at schema `version` holding what `sql` inserts: what
// an older server left behind, for the migration tests.
void CreateAtVersion(const std::string& path, int version, const std::string& sql) {
  ASSERT_TRUE(SqliteStore::CreateAtSchemaVersionForTest(path, version).ok());
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  EXPECT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
  sqlite3_close(db);
}

// ann and ben's conversation: two messages and a deleted third.
constexpr const char* kAnnAndBensNews = R"sql(
INSERT INTO users(id, username, password_hash, created_at) VALUES(1, 'ann', 'h', 10), (2, 'ben', 'h', 10);
INSERT INTO conversations(id, direct_key, last_seq, created_at, last_activity_at) VALUES(1, '1:2', 3, 10, 30);
INSERT INTO members(conversation_id, user_id) VALUES(1, 1), (1, 2);
INSERT INTO messages(conversation_id, seq, sender_id, sender_device_id, client_id, body, created_at, stored_at, deleted_at)
  VALUES(1, 1, 1, 1, 'a', 'old news', 10, 10, 0), (1, 2, 2, 2, 'b', 'newer news', 20, 20, 0),
        (1, 3, 1, 1, 'c', '', 30, 30, 40);
)sql";

// What an older server indexed and queued of ann and ben's news: message 1
// as doc 7, message 2 still queued as entry 9.
constexpr const char* kNewsIndexedAsDoc7QueuedAs9 = R"sql(
INSERT INTO message_search(rowid, words, conversation_id, seq, version) VALUES(7, 'old news', 1, 1, 0);
INSERT INTO message_search_docs(conversation_id, seq, doc_id) VALUES(1, 1, 7);
INSERT INTO search_queue(id, conversation_id, seq, queued_at) VALUES(9, 1, 2, 20);
)sql";

void IndexAll(SqliteStore& store) {
  Must(Await<SearchIndexProgress>([&](auto cb) { store.IndexSearch(100, cb); }));
}

// "seq:body" of each message `searcher`'s search for `word` finds, newest
// first.
std::vector<std::string> Finds(SqliteStore& store, UserId searcher, const std::string& word) {
  MessageSearchQuery q;
  q.searcher = searcher;
  q.words = {word};
  q.limit = 10;
  std::vector<std::string> found;
  for (const MessageRecord& m : Must(Await<MessageSearchPage>([&](auto cb) { store.SearchMessages(q, cb); })).messages)
    found.push_back(std::to_string(m.seq) + ":" + m.body);
  return found;
}
std::vector<std::string> BenFinds(SqliteStore& store, const std::string& word) { return Finds(store, 2, word); }

// Ann (device `device`) edits or deletes her message `seq` of conversation 1.
void AnnChanges(SqliteStore& store, DeviceId device, protocol::ChangeKind kind, Seq seq, const std::string& body) {
  MessageChange ch;
  ch.kind = static_cast<int>(kind);
  ch.conversation_id = 1;
  ch.seq = seq;
  ch.user_id = 1;
  ch.device_id = device;
  ch.client_id = "change-" + std::to_string(seq) + "-" + body;
  ch.body = body;
  ch.now = 2500;
  ch.edit_window_ms = ch.delete_window_ms = 1'000'000;
  Must(Await<ChangeResult>([&](auto cb) { store.ChangeMessage(ch, cb); }));
}

// Step 10 (message search): the history a version-9 server stored is
// queued at migration and found once the indexer has run; deleted messages
// are not queued.
TEST(SqliteStoreTest, MigratesVersion9HistoryIntoTheSearchQueue) {
  TempDir dir;
  const std::string path = dir.path() + "/parley.db";
  ASSERT_NO_FATAL_FAILURE(CreateAtVersion(path, 9, kAnnAndBensNews));

  std::unique_ptr<SqliteStore> store = OpenSqlite(path);
  ASSERT_NE(store, nullptr);
  SearchIndexProgress p = Must(Await<SearchIndexProgress>([&](auto cb) { store->IndexSearch(10, cb); }));
  EXPECT_EQ(p.indexed, 2);
  EXPECT_EQ(p.backlog, 0);
  MessageSearchQuery q;
  q.searcher = 2;
  q.words = {"news"};
  q.limit = 10;
  MessageSearchPage page = Must(Await<MessageSearchPage>([&](auto cb) { store->SearchMessages(q, cb); }));
  ASSERT_EQ(page.messages.size(), 2u);
  EXPECT_EQ(page.messages[0].seq, 2) << "newest stored first";
  EXPECT_EQ(page.messages[1].body, "old news");
  store.reset();
  EXPECT_EQ(UserVersion(path), SqliteStore::kSchemaVersion);
}

// Step 18 (the cold tier's edit texts): a version-17 file's edit rows are
// hot (cold = 0) and read as before; the next compaction of their messages
// moves their texts into an edit block.
TEST(SqliteStoreTest, MigratesVersion17EditsAndCompactsThemWithTheirMessages) {
  TempDir dir;
  const std::string path = dir.path() + "/parley.db";
  ASSERT_NO_FATAL_FAILURE(CreateAtVersion(path, 17, std::string(kAnnAndBensNews) + R"sql(
UPDATE messages SET body = 'newer news, edited', version = 1, edited_at = 25 WHERE conversation_id = 1 AND seq = 2;
INSERT INTO message_edits(conversation_id, seq, version, client_id, editor_device_id, body, created_at)
  VALUES(1, 2, 1, 'e', 2, 'newer news, edited', 25);
UPDATE conversations SET hot_since = 10 WHERE id = 1;
)sql"));

  std::unique_ptr<SqliteStore> store = OpenSqlite(path);
  ASSERT_NE(store, nullptr);
  CompactRequest req;
  req.stored_before = req.due_before = 1'000;
  req.max_messages = 100;
  CompactProgress p = Must(Await<CompactProgress>([&](auto cb) { store->CompactMessages(req, cb); }));
  EXPECT_EQ(p.messages, 2);
  EXPECT_EQ(p.edits, 1);
  store.reset();
  EXPECT_EQ(UserVersion(path), SqliteStore::kSchemaVersion);
  EXPECT_EQ(FirstRow(path,
                     "SELECT (SELECT group_concat(seq || ':' || version || ':' || cold || ':' || body) "
                     "FROM message_edits), (SELECT count(*) || ':' || sum(edits) FROM edit_blocks)"),
            (std::vector<std::string>{"2:1:1:", "1:1"}));
}

// Step 19: search_queue loses AUTOINCREMENT. With step 21 the index is
// built again in a file of its own: every live message gets a doc id in its
// row, in stored order, and entries queued after the upgrade are numbered
// past them, so results stay newest first.
TEST(SqliteStoreTest, MigratesVersion18SearchQueueAndNumbersNewEntriesPastEveryDocId) {
  TempDir dir;
  const std::string path = dir.path() + "/parley.db";
  ASSERT_NO_FATAL_FAILURE(CreateAtVersion(path, 18, std::string(kAnnAndBensNews) + kNewsIndexedAsDoc7QueuedAs9));

  std::unique_ptr<SqliteStore> store = OpenSqlite(path);
  ASSERT_NE(store, nullptr);
  SearchIndexProgress p = Must(Await<SearchIndexProgress>([&](auto cb) { store->IndexSearch(10, cb); }));
  EXPECT_EQ(p.indexed, 2) << "both live messages, queued again by the rebuild";
  EXPECT_EQ(p.backlog, 0);
  DeviceRecord dev = MakeDevice(*store, 2, "tb");
  Seq newest = Must(Append(*store, Msg(1, 2, dev.id, "d", "newest news"))).message.seq;
  p = Must(Await<SearchIndexProgress>([&](auto cb) { store->IndexSearch(10, cb); }));
  EXPECT_EQ(p.indexed, 1);
  MessageSearchQuery q;
  q.searcher = 1;
  q.words = {"news"};
  q.limit = 10;
  MessageSearchPage page = Must(Await<MessageSearchPage>([&](auto cb) { store->SearchMessages(q, cb); }));
  std::vector<Seq> seqs;
  for (const MessageRecord& m : page.messages) seqs.push_back(m.seq);
  EXPECT_EQ(seqs, (std::vector<Seq>{newest, 2, 1})) << "newest stored first";
  store.reset();
  EXPECT_EQ(UserVersion(path), SqliteStore::kSchemaVersion);
  std::vector<std::string> row = FirstRow(path,
                                          "SELECT (SELECT sql FROM sqlite_master WHERE name = 'search_queue'), "
                                          "(SELECT group_concat(seq || ':' || search_doc) FROM messages WHERE search_doc > 0)");
  ASSERT_EQ(row.size(), 2u);
  EXPECT_EQ(row[0].find("AUTOINCREMENT"), std::string::npos) << row[0];
  EXPECT_EQ(row[1], "1:1,2:2,4:3") << "doc ids in the messages' rows, in stored order";
}

// Step 21: the index moves to a search file of its own. A version-20
// file's index (in the store file) is dropped and built again from the whole
// history: every live message gets a doc id of its own in its row, also one
// stored before step 20 (doc id only in message_search_docs) and two that an
// older server gave the same doc id; the store file keeps no FTS5 table, and
// an edit, a delete and a purge keep one row per live message.
TEST(SqliteStoreTest, MigratesVersion20IndexIntoASearchFileOfItsOwn) {
  TempDir dir;
  const std::string path = dir.path() + "/parley.db";
  ASSERT_NO_FATAL_FAILURE(CreateAtVersion(path, 20, std::string(kAnnAndBensNews) + kNewsIndexedAsDoc7QueuedAs9 + R"sql(
UPDATE messages SET search_doc = 9 WHERE conversation_id = 1 AND seq = 2;
INSERT INTO messages(conversation_id, seq, sender_id, sender_device_id, client_id, body, created_at, stored_at,
                     deleted_at, search_doc)
  VALUES(1, 4, 2, 2, 'd', 'latest news', 35, 35, 0, 9);
UPDATE conversations SET last_seq = 4 WHERE id = 1;
)sql"));

  std::unique_ptr<SqliteStore> store = OpenSqlite(path);
  ASSERT_NE(store, nullptr);
  DeviceRecord ann = MakeDevice(*store, 1, "ta");
  IndexAll(*store);
  EXPECT_EQ(BenFinds(*store, "news"), (std::vector<std::string>{"4:latest news", "2:newer news", "1:old news"}))
      << "every live message found once, newest stored first";
  const std::string search_path = sqlite::SearchFilePath(path);
  EXPECT_EQ(FirstRow(search_path, "SELECT group_concat(rowid || ':' || seq) FROM message_search"),
            (std::vector<std::string>{"1:1,2:2,3:4"}))
      << "message 1 (doc id only in message_search_docs) and 2 and 4 (both doc 9) get ids of their own, in stored "
         "order";
  EXPECT_EQ(FirstRow(path, "SELECT count(*) FROM sqlite_master WHERE name LIKE 'message_search%'"),
            (std::vector<std::string>{"0"}));

  AnnChanges(*store, ann.id, protocol::ChangeKind::kEdit, 1, "old news, corrected");
  IndexAll(*store);
  EXPECT_EQ(BenFinds(*store, "corrected"), (std::vector<std::string>{"1:old news, corrected"}));
  EXPECT_EQ(FirstRow(search_path, "SELECT group_concat(rowid || ':' || seq) FROM message_search"),
            (std::vector<std::string>{"1:1,2:2,3:4"}))
      << "the edit replaced message 1's row under its doc id";

  // Deleted for everyone and purged before the search writer has indexed
  // the delete: the purge removes the row itself.
  AnnChanges(*store, ann.id, protocol::ChangeKind::kDelete, 1, "");
  PurgeProgress purged = Must(Await<PurgeProgress>([&](auto cb) { store->PurgeDeleted(1'000'000, 10, cb); }));
  EXPECT_EQ(purged.search_removed, 1);
  EXPECT_EQ(BenFinds(*store, "news"), (std::vector<std::string>{"4:latest news", "2:newer news"}));
  IndexAll(*store);
  EXPECT_EQ(BenFinds(*store, "news"), (std::vector<std::string>{"4:latest news", "2:newer news"}));
  store.reset();
  EXPECT_EQ(UserVersion(path), SqliteStore::kSchemaVersion);
}

// Step 22 ("Conversation heads"): a conversation's last seq and activity
// come from its newest message, the conversations row written only at its
// creation. A version-21 row (last_seq 3, activity 30) is a lower bound that
// the messages carry on from, across a restart, in every read of them.
TEST(SqliteStoreTest, AConversationsLastSeqAndActivityComeFromItsNewestMessage) {
  TempDir dir;
  const std::string path = dir.path() + "/parley.db";
  ASSERT_NO_FATAL_FAILURE(CreateAtVersion(path, 21, kAnnAndBensNews));
  auto conversation = [](Store& store) {
    return Must(Await<ConversationRecord>([&](auto cb) { store.GetConversation(1, cb); }));
  };
  auto messages_stored = [](Store& store) {
    return Must(Await<StoreSummary>([&](auto cb) { store.GetStoreSummary(cb); })).messages;
  };
  {
    std::unique_ptr<SqliteStore> store = OpenSqlite(path);
    ASSERT_NE(store, nullptr);
    ConversationRecord c = conversation(*store);
    EXPECT_EQ(c.last_seq, 3);
    EXPECT_EQ(c.last_activity_at, 30);
    DeviceRecord ann = MakeDevice(*store, 1, "ta");
    EXPECT_EQ(Must(Append(*store, Msg(1, 1, ann.id, "d", "fresh news", 50))).message.seq, 4);
    EXPECT_EQ(Must(Append(*store, Msg(1, 1, ann.id, "e", "fresher news", 60))).message.seq, 5);
    c = conversation(*store);
    EXPECT_EQ(c.last_seq, 5);
    EXPECT_EQ(c.last_activity_at, 60);
    EXPECT_EQ(messages_stored(*store), 5);
  }
  EXPECT_EQ(FirstRow(path, "SELECT last_seq, last_activity_at FROM conversations WHERE id = 1"),
            (std::vector<std::string>{"3", "30"}))
      << "the sends wrote no conversations row";
  EXPECT_EQ(UserVersion(path), SqliteStore::kSchemaVersion);
  Result<sqlite::StoreFileInfo> info = sqlite::CheckStoreFile(path, SqliteStore::kSchemaVersion);
  ASSERT_TRUE(info.has_value()) << info.error().ToString();
  EXPECT_EQ(info->messages, 5);

  std::unique_ptr<SqliteStore> store = OpenSqlite(path);
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(conversation(*store).last_seq, 5) << "after a restart, from the messages";
  DeviceRecord ben = MakeDevice(*store, 2, "tb");
  EXPECT_EQ(Must(Append(*store, Msg(1, 2, ben.id, "f", "news to me", 70))).message.seq, 6);
  EXPECT_EQ(conversation(*store).last_activity_at, 70);
  EXPECT_EQ(messages_stored(*store), 6);
}

// Step 23 ("Device watermarks"): a device's watermarks are the larger of
// its device_receipts row (a version-22 server's, here a lower bound) and
// its newest receipt_log row. A receipt writes the log row only; after a
// reopen (the writer's cache gone) a receipt at or below the watermarks
// moves nothing and logs nothing.
TEST(SqliteStoreTest, ADevicesWatermarksComeFromTheRowAndItsNewestReceiptLogRow) {
  TempDir dir;
  const std::string path = dir.path() + "/parley.db";
  ASSERT_NO_FATAL_FAILURE(CreateAtVersion(path, 22, kAnnAndBensNews));
  DeviceId ann = 0, ben = 0;
  {
    std::unique_ptr<SqliteStore> store = OpenSqlite(path);
    ASSERT_NE(store, nullptr);
    ann = MakeDevice(*store, 1, "ta").id;
    ben = MakeDevice(*store, 2, "tb").id;
    for (const char* id : {"d", "e", "f", "g"}) Must(Append(*store, Msg(1, 2, ben, id, "more news")));  // seqs 4-7
  }
  // What a version-22 server left: ann's device at delivered 6, read 2.
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
    const std::string sql = "INSERT INTO device_receipts(device_id, conversation_id, delivered, read) VALUES(" +
                            std::to_string(ann) + ", 1, 6, 2)";
    EXPECT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
    sqlite3_close(db);
  }
  const std::string log_rows = "SELECT count(*) FROM receipt_log WHERE device_id = " + std::to_string(ann);
  const std::string row = "SELECT delivered, read FROM device_receipts WHERE device_id = " + std::to_string(ann);
  using Row = std::vector<std::string>;
  {
    std::unique_ptr<SqliteStore> store = OpenSqlite(path);
    ASSERT_NE(store, nullptr);
    // Below the row's delivered: only read moves, from the row's 2.
    ReceiptResult r = Must(UpdateReceipt(*store, Receipt(1, ann, 1, 5, 4)));
    EXPECT_EQ(r.aggregate.delivered, 6) << "the row's delivered 6 is ann's device's";
    EXPECT_EQ(r.aggregate.read, 4);
    Must(UpdateReceipt(*store, Receipt(1, ann, 1, 7, 5)));
  }
  EXPECT_EQ(FirstRow(path, log_rows), Row{"2"});
  EXPECT_EQ(FirstRow(path, row), (Row{"6", "2"})) << "receipts write the log only";
  EXPECT_EQ(UserVersion(path), SqliteStore::kSchemaVersion);

  std::unique_ptr<SqliteStore> store = OpenSqlite(path);
  ASSERT_NE(store, nullptr);
  // At or below the newest log row (7, 5): nothing moves, nothing is logged.
  EXPECT_FALSE(Must(UpdateReceipt(*store, Receipt(1, ann, 1, 6, 3))).changed);
  EXPECT_FALSE(Must(UpdateReceipt(*store, Receipt(1, ann, 1, 7, 5))).changed);
  EXPECT_EQ(FirstRow(path, log_rows), Row{"2"}) << "the watermarks came from the newest log row";
  // Past it: the log row (7, 7) is the device's new watermarks.
  EXPECT_TRUE(Must(UpdateReceipt(*store, Receipt(1, ann, 1, 0, 7))).changed);
  EXPECT_EQ(FirstRow(path, log_rows), Row{"3"});
  EXPECT_EQ(FirstRow(path, "SELECT delivered, read FROM receipt_log WHERE device_id = " + std::to_string(ann) +
                               " ORDER BY delivered DESC, read DESC LIMIT 1"),
            (Row{"7", "7"}));
}

// The search file belongs to one store file (sqlite_search.h): missing,
// another store's, or damaged, it is built again from the history at the
// next start; until the search writer has run, the history is not found.
TEST(SqliteStoreTest, TheSearchFileIsBuiltAgainWhenMissingDamagedOrAnotherStores) {
  TempDir dir;
  const std::string path = dir.path() + "/parley.db";
  const std::string other = dir.path() + "/other.db";
  ASSERT_NO_FATAL_FAILURE(CreateAtVersion(path, SqliteStore::kSchemaVersion, kAnnAndBensNews));
  std::unique_ptr<SqliteStore> store = OpenSqlite(path);
  ASSERT_NE(store, nullptr);
  IndexAll(*store);
  ASSERT_EQ(BenFinds(*store, "news"), (std::vector<std::string>{"2:newer news", "1:old news"}));
  store.reset();
  // Closed cleanly, both files are whole: their WALs checkpointed and gone.
  EXPECT_FALSE(std::filesystem::exists(path + "-wal"));
  EXPECT_FALSE(std::filesystem::exists(sqlite::SearchFilePath(path) + "-wal"));
  std::unique_ptr<SqliteStore> other_store = OpenSqlite(other);
  ASSERT_NE(other_store, nullptr);
  other_store.reset();

  // Kept: the same file, found at once.
  store = OpenSqlite(path);
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(BenFinds(*store, "news"), (std::vector<std::string>{"2:newer news", "1:old news"}));
  store.reset();

  // Missing.
  std::filesystem::remove(sqlite::SearchFilePath(path));
  store = OpenSqlite(path);
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(BenFinds(*store, "news"), std::vector<std::string>{}) << "not indexed yet";
  IndexAll(*store);
  EXPECT_EQ(BenFinds(*store, "news"), (std::vector<std::string>{"2:newer news", "1:old news"}));
  store.reset();

  // Another store's (an empty index, with that store's token).
  std::filesystem::copy_file(sqlite::SearchFilePath(other), sqlite::SearchFilePath(path),
                             std::filesystem::copy_options::overwrite_existing);
  store = OpenSqlite(path);
  ASSERT_NE(store, nullptr);
  IndexAll(*store);
  EXPECT_EQ(BenFinds(*store, "news"), (std::vector<std::string>{"2:newer news", "1:old news"}));
  EXPECT_NE(FirstRow(path, "SELECT token FROM search_file"), FirstRow(sqlite::SearchFilePath(other),
                                                                       "SELECT token FROM search_state"));
  store.reset();

  // Damaged: not a database at all.
  {
    std::ofstream out(sqlite::SearchFilePath(path), std::ios::binary | std::ios::trunc);
    out << std::string(8192, 'x');
  }
  store = OpenSqlite(path);
  ASSERT_NE(store, nullptr) << "a damaged search file does not keep the store from opening";
  IndexAll(*store);
  EXPECT_EQ(BenFinds(*store, "news"), (std::vector<std::string>{"2:newer news", "1:old news"}));
}

// A backup's copy is paired with no search file: the live one may hold rows
// and a done_id past the copy's state. A store restored from it builds its
// own, and finds what the copy holds, nothing later.
TEST(SqliteStoreTest, AStoreRestoredFromABackupBuildsItsOwnSearchFile) {
  TempDir dir;
  const std::string path = dir.path() + "/parley.db";
  const std::string copy = dir.path() + "/copy.db";
  ASSERT_NO_FATAL_FAILURE(CreateAtVersion(path, SqliteStore::kSchemaVersion, kAnnAndBensNews));
  std::unique_ptr<SqliteStore> store = OpenSqlite(path);
  ASSERT_NE(store, nullptr);
  IndexAll(*store);
  Must(Await<BackupResult>([&](auto cb) { store->Backup(copy, cb); }));
  const DeviceRecord ann = MakeDevice(*store, 1, "ta");
  Must(Append(*store, Msg(1, 1, ann.id, "later", "later news")));
  IndexAll(*store);
  EXPECT_EQ(BenFinds(*store, "news"), (std::vector<std::string>{"4:later news", "2:newer news", "1:old news"}));
  store.reset();
  EXPECT_EQ(FirstRow(copy, "SELECT token FROM search_file"), std::vector<std::string>{""});

  // Restored: the copy in place of the store, the live search file left.
  std::filesystem::copy_file(copy, path, std::filesystem::copy_options::overwrite_existing);
  std::filesystem::remove(path + "-wal");
  std::filesystem::remove(path + "-shm");
  store = OpenSqlite(path);
  ASSERT_NE(store, nullptr);
  IndexAll(*store);
  EXPECT_EQ(BenFinds(*store, "news"), (std::vector<std::string>{"2:newer news", "1:old news"}));
  const DeviceRecord ann_again = MakeDevice(*store, 1, "ta2");
  Must(Append(*store, Msg(1, 1, ann_again.id, "other", "other news")));
  IndexAll(*store);
  EXPECT_EQ(BenFinds(*store, "news"), (std::vector<std::string>{"4:other news", "2:newer news", "1:old news"}))
      << "seq 4 again, another message";
  EXPECT_EQ(BenFinds(*store, "other"), std::vector<std::string>{"4:other news"});
  EXPECT_EQ(BenFinds(*store, "later"), std::vector<std::string>{}) << "the text of the seq 4 the copy never held";
}

// Until step 21 a doc id could be handed out again after a restart when the
// message that held it had no index row any more (deleted for everyone, or
// no words). Now ids continue past the search file's done_id: a purge of
// the old message never removes a new one's row, and an edit that gives the
// old message words never takes one over.
TEST(SqliteStoreTest, ADocIdHandedOutAgainNeverCostsAnotherMessageItsIndexRow) {
  TempDir dir;
  const std::string path = dir.path() + "/parley.db";
  ASSERT_NO_FATAL_FAILURE(CreateAtVersion(path, SqliteStore::kSchemaVersion, kAnnAndBensNews));
  std::unique_ptr<SqliteStore> store = OpenSqlite(path);
  ASSERT_NE(store, nullptr);
  const DeviceRecord ann = MakeDevice(*store, 1, "ta");
  Must(Append(*store, Msg(1, 1, ann.id, "k", "kept words")));                       // doc 1
  const Seq gone = Must(Append(*store, Msg(1, 1, ann.id, "g", "gone soon"))).message.seq;  // doc 2
  const Seq smile = Must(Append(*store, Msg(1, 1, ann.id, "s", ":-)"))).message.seq;     // doc 3, no words
  IndexAll(*store);
  AnnChanges(*store, ann.id, protocol::ChangeKind::kDelete, gone, "");
  IndexAll(*store);  // the index's highest row is the kept message's

  store.reset();
  store = OpenSqlite(path);
  ASSERT_NE(store, nullptr);
  Must(Append(*store, Msg(1, 1, ann.id, "n1", "brand new")));
  Must(Append(*store, Msg(1, 1, ann.id, "n2", "another new")));
  IndexAll(*store);
  ASSERT_EQ(BenFinds(*store, "new"),
            (std::vector<std::string>{"8:another new", "7:brand new", "2:newer news", "1:old news"}));

  PurgeProgress purged = Must(Await<PurgeProgress>([&](auto cb) { store->PurgeDeleted(1'000'000, 10, cb); }));
  EXPECT_EQ(purged.purged, 2);  // and the file's deleted third message
  EXPECT_EQ(purged.search_removed, 0) << "the delete's entry removed the row already";
  AnnChanges(*store, ann.id, protocol::ChangeKind::kEdit, smile, "smile edited");
  IndexAll(*store);
  EXPECT_EQ(BenFinds(*store, "new"),
            (std::vector<std::string>{"8:another new", "7:brand new", "2:newer news", "1:old news"}));
  EXPECT_EQ(BenFinds(*store, "smile"), (std::vector<std::string>{"6:smile edited"}));
  EXPECT_EQ(BenFinds(*store, "kept"), (std::vector<std::string>{"4:kept words"}));
}

// Step 15: the search index is rebuilt with FTS5 prefix indexes; every
// message is queued again in stored order (a queued entry from before the
// upgrade goes: the requeue covers it), so results stay newest first.
TEST(SqliteStoreTest, MigratesVersion12SearchIndexToPrefixIndexes) {
  TempDir dir;
  const std::string path = dir.path() + "/parley.db";
  // What a version-12 server indexed (one message) and still had queued.
  ASSERT_NO_FATAL_FAILURE(CreateAtVersion(path, 12, std::string(kAnnAndBensNews) + R"sql(
INSERT INTO message_search(rowid, words, conversation_id, seq, version) VALUES(1, 'old news', 1, 1, 0);
INSERT INTO message_search_docs(conversation_id, seq, doc_id) VALUES(1, 1, 1);
INSERT INTO search_queue(conversation_id, seq, queued_at) VALUES(1, 2, 20);
)sql"));

  std::unique_ptr<SqliteStore> store = OpenSqlite(path);
  ASSERT_NE(store, nullptr);
  SearchIndexProgress p = Must(Await<SearchIndexProgress>([&](auto cb) { store->IndexSearch(10, cb); }));
  EXPECT_EQ(p.indexed, 2);
  EXPECT_EQ(p.backlog, 0);
  for (const char* word : {"n", "ne", "new", "news"}) {
    MessageSearchQuery q;
    q.searcher = 2;
    q.words = {word};
    q.limit = 10;
    MessageSearchPage page = Must(Await<MessageSearchPage>([&](auto cb) { store->SearchMessages(q, cb); }));
    ASSERT_EQ(page.messages.size(), 2u) << word;
    EXPECT_EQ(page.messages[0].seq, 2) << word << ": newest stored first";
    EXPECT_EQ(page.messages[1].body, "old news") << word;
  }
  store.reset();
  EXPECT_EQ(UserVersion(path), SqliteStore::kSchemaVersion);
  // The index is in the search file since step 21, with the prefix indexes.
  std::vector<std::string> sql =
      FirstRow(sqlite::SearchFilePath(path), "SELECT sql FROM sqlite_master WHERE name = 'message_search'");
  ASSERT_EQ(sql.size(), 1u);
  EXPECT_NE(sql[0].find("prefix = '1 2 3'"), std::string::npos) << sql[0];
}

// Step 11: a version-10 file's receipts count as already carried to the
// other member (`announced` = `delivered`), so an upgrade lists no withheld
// seq a second time. ann's watermark (3) passed ben's 2, withheld from her.
TEST(SqliteStoreTest, MigratesVersion10ReceiptsAsAlreadyAnnounced) {
  TempDir dir;
  const std::string path = dir.path() + "/parley.db";
  ASSERT_TRUE(SqliteStore::CreateAtSchemaVersionForTest(path, 10).ok());
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  const char* v10 = R"sql(
INSERT INTO users(id, username, password_hash, created_at) VALUES(1, 'ann', 'h', 10), (2, 'ben', 'h', 10);
INSERT INTO conversations(id, direct_key, last_seq, created_at, last_activity_at) VALUES(1, '1:2', 3, 10, 30);
INSERT INTO members(conversation_id, user_id) VALUES(1, 1), (1, 2);
INSERT INTO messages(conversation_id, seq, sender_id, sender_device_id, client_id, body, created_at, stored_at)
  VALUES(1, 1, 1, 1, 'a', 'one', 10, 10), (1, 2, 2, 2, 'b', 'two', 20, 20), (1, 3, 2, 2, 'c', 'three', 30, 30);
INSERT INTO withheld(conversation_id, user_id, seq) VALUES(1, 1, 2);
INSERT INTO user_receipts(conversation_id, user_id, delivered, read) VALUES(1, 1, 3, 3), (1, 2, 3, 3);
)sql";
  ASSERT_EQ(sqlite3_exec(db, v10, nullptr, nullptr, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
  sqlite3_close(db);

  std::unique_ptr<SqliteStore> store = OpenSqlite(path);
  ASSERT_NE(store, nullptr);
  DeviceRecord ann = MakeDevice(*store, 1, "ta");
  DeviceRecord ben = MakeDevice(*store, 2, "tb");
  ASSERT_EQ(Must(Append(*store, Msg(1, 2, ben.id, "d", "four"))).message.seq, 4);
  ReceiptResult r = Must(UpdateReceipt(*store, Receipt(1, ann.id, 1, 4, 4)));
  ASSERT_TRUE(r.changed);
  EXPECT_TRUE(r.withheld.empty()) << "2 was listed before the upgrade";
  store.reset();
  EXPECT_EQ(UserVersion(path), SqliteStore::kSchemaVersion);
}

// Step 12 (retention): a version-11 file's messages never expire, its
// conversations have no timer, and its tombstones (deleted before the
// upgrade) are in the purge's backlog: the first purge removes their edit
// rows and keeps the rows themselves (their dedup keys).
TEST(SqliteStoreTest, MigratesVersion11TombstonesIntoThePurgeBacklog) {
  TempDir dir;
  const std::string path = dir.path() + "/parley.db";
  ASSERT_TRUE(SqliteStore::CreateAtSchemaVersionForTest(path, 11).ok());
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  const char* v11 = R"sql(
INSERT INTO users(id, username, password_hash, created_at) VALUES(1, 'ann', 'h', 10), (2, 'ben', 'h', 10);
INSERT INTO conversations(id, direct_key, last_seq, created_at, last_activity_at) VALUES(1, '1:2', 2, 10, 30);
INSERT INTO members(conversation_id, user_id) VALUES(1, 1), (1, 2);
INSERT INTO messages(conversation_id, seq, sender_id, sender_device_id, client_id, body, created_at, stored_at,
                     version, deleted_at)
  VALUES(1, 1, 1, 1, 'a', 'kept', 10, 10, 0, 0), (1, 2, 1, 1, 'b', '', 20, 20, 2, 40);
INSERT INTO message_edits(conversation_id, seq, version, client_id, editor_device_id, body, created_at)
  VALUES(1, 2, 1, 'e', 1, '', 30);
)sql";
  ASSERT_EQ(sqlite3_exec(db, v11, nullptr, nullptr, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
  sqlite3_close(db);

  std::unique_ptr<SqliteStore> store = OpenSqlite(path);
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(Must(Await<ConversationRecord>([&](auto cb) { store->GetConversation(1, cb); })).disappearing_s, 0);
  EXPECT_TRUE(Must(Await<ExpireProgress>([&](auto cb) { store->ExpireMessages(1'000'000, 10, cb); })).expired.empty());
  PurgeProgress p = Must(Await<PurgeProgress>([&](auto cb) { store->PurgeDeleted(1'000'000, 10, cb); }));
  EXPECT_EQ(p.purged, 1);
  EXPECT_EQ(p.edits_removed, 1);
  AppendResult retry = Must(Append(*store, Msg(1, 1, 1, "b", "again")));
  EXPECT_TRUE(retry.duplicate);
  EXPECT_EQ(retry.message.seq, 2);
  store.reset();
  EXPECT_EQ(UserVersion(path), SqliteStore::kSchemaVersion);
}

// Step 13 (the cold tier): an existing conversation becomes due from its
// first message, so an upgraded store's old history is compacted (and still
// reads back), and its sends keep taking the next seq.
TEST(SqliteStoreTest, MigratesVersion12ConversationsIntoTheColdTier) {
  TempDir dir;
  const std::string path = dir.path() + "/parley.db";
  ASSERT_TRUE(SqliteStore::CreateAtSchemaVersionForTest(path, 12).ok());
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  const char* v12 = R"sql(
INSERT INTO users(id, username, password_hash, created_at) VALUES(1, 'ann', 'h', 10), (2, 'ben', 'h', 10);
INSERT INTO conversations(id, direct_key, last_seq, created_at, last_activity_at) VALUES(1, '1:2', 3, 10, 30);
INSERT INTO members(conversation_id, user_id) VALUES(1, 1), (1, 2);
INSERT INTO messages(conversation_id, seq, sender_id, sender_device_id, client_id, body, created_at, stored_at,
                     version, deleted_at)
  VALUES(1, 1, 1, 1, 'a', 'first text', 10, 10, 0, 0), (1, 2, 1, 1, 'b', '', 20, 20, 1, 25),
        (1, 3, 2, 2, 'c', 'third text', 30, 30, 0, 0);
)sql";
  ASSERT_EQ(sqlite3_exec(db, v12, nullptr, nullptr, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
  sqlite3_close(db);

  std::unique_ptr<SqliteStore> store = OpenSqlite(path);
  ASSERT_NE(store, nullptr);
  CompactRequest req;
  req.stored_before = req.due_before = 1'000;
  req.max_messages = 100;
  EXPECT_EQ(Must(Await<CompactProgress>([&](auto cb) { store->CompactMessages(req, cb); })).messages, 2)
      << "both live messages; the tombstone has no text";
  std::vector<MessageRecord> h = History(*store, 1, 0, 10);
  ASSERT_EQ(h.size(), 3u);
  EXPECT_EQ(h[0].body, "first text");
  EXPECT_EQ(h[1].body, "");
  EXPECT_EQ(h[1].deleted_at, 25);
  EXPECT_EQ(h[2].body, "third text");
  EXPECT_EQ(Must(Append(*store, Msg(1, 1, 1, "d", "fourth"))).message.seq, 4);
  store.reset();
  EXPECT_EQ(UserVersion(path), SqliteStore::kSchemaVersion);
}

// Step 14 (stream trimming): a version-12 file's streams start with nothing
// trimmed (floor 1), read from the start as before, and can be trimmed.
TEST(SqliteStoreTest, MigratesVersion12StreamsToAFloorOfOne) {
  TempDir dir;
  const std::string path = dir.path() + "/parley.db";
  ASSERT_TRUE(SqliteStore::CreateAtSchemaVersionForTest(path, 12).ok());
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  const char* v12 = R"sql(
INSERT INTO users(id, username, password_hash, created_at) VALUES(1, 'ann', 'h', 10);
INSERT INTO user_events(user_id, user_seq, kind, conversation_id, created_at) VALUES(1, 1, 7, 0, 10), (1, 2, 7, 0, 20);
INSERT INTO user_heads(user_id, head) VALUES(1, 2);
)sql";
  ASSERT_EQ(sqlite3_exec(db, v12, nullptr, nullptr, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
  sqlite3_close(db);

  std::unique_ptr<SqliteStore> store = OpenSqlite(path);
  ASSERT_NE(store, nullptr);
  StreamPage page = ReadStream(*store, 1, 0, 10);
  EXPECT_EQ(page.floor, 1);
  EXPECT_EQ(page.events.size(), 2u);
  TrimRequest r;
  r.max_users = 10;
  r.max_entries = 10;
  r.older_than = 15;
  r.protect_seen_since = std::numeric_limits<int64_t>::max();
  EXPECT_EQ(Must(Await<TrimProgress>([&](auto cb) { store->TrimStreams(r, cb); })).trimmed, 1);
  EXPECT_EQ(ReadStream(*store, 1, 1, 10).floor, 2);
  store.reset();
  EXPECT_EQ(UserVersion(path), SqliteStore::kSchemaVersion);
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

TEST(SqliteStoreTest, ANewDatabaseTakesTheConfiguredPageSizeAndAnExistingOneKeepsItsOwn) {
  TempDir dir;
  const std::string path = dir.path() + "/parley.db";
  StoreConfig config;
  config.sqlite_path = path;
  config.sqlite_page_size = 1024;
  {
    Result<std::unique_ptr<SqliteStore>> store = SqliteStore::Open(config);
    ASSERT_TRUE(store.has_value()) << store.error().ToString();
    Must(Await<UserRecord>([&](auto cb) { (*store)->CreateUser("alice", "h", 1, cb); }));
  }
  EXPECT_EQ(PragmaValue(path, "page_size"), 1024);
  EXPECT_EQ(UserVersion(path), SqliteStore::kSchemaVersion);
  // Reopened with another setting: the file keeps its page size and its data.
  config.sqlite_page_size = 8192;
  {
    Result<std::unique_ptr<SqliteStore>> store = SqliteStore::Open(config);
    ASSERT_TRUE(store.has_value()) << store.error().ToString();
    EXPECT_TRUE(Await<UserRecord>([&](auto cb) { (*store)->GetUserByName("alice", cb); }).has_value());
  }
  EXPECT_EQ(PragmaValue(path, "page_size"), 1024);
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

// A read that takes long (here: held in the test hook on its reader's
// thread) holds up only its own read connection. With one connection every
// later read waited behind it: a broad search or a large snapshot delayed
// every login and sync.
TEST(SqliteStoreTest, ALongReadHoldsUpOnlyItsOwnReadConnection) {
  for (const int connections : {2, 1}) {
    SCOPED_TRACE(connections);
    TempDir dir;
    std::atomic<bool> armed{false};
    std::promise<void> release;
    std::shared_future<void> released = release.get_future().share();
    std::promise<void> held;
    // Declared before the store: its readers may still answer into them.
    std::promise<Result<UserRecord>> slow;
    std::promise<Result<UserRecord>> quick;
    std::future<Result<UserRecord>> quick_done = quick.get_future();
    StoreConfig config;
    config.sqlite_path = dir.path() + "/parley.db";
    config.sqlite_cache_kib = 8192;
    config.sqlite_read_connections = connections;
    // The first read after arming stops on its reader until released.
    config.sqlite_before_read_for_test = [&] {
      if (!armed.exchange(false)) return;
      held.set_value();
      released.wait();
    };
    Result<std::unique_ptr<SqliteStore>> opened = SqliteStore::Open(config);
    ASSERT_TRUE(opened.has_value()) << opened.error().ToString();
    SqliteStore& store = **opened;
    // Whatever fails below, the held read is let go before the store's
    // destructor waits for its readers.
    bool let_go = false;
    auto let_go_once = [&] {
      if (!std::exchange(let_go, true)) release.set_value();
    };
    struct OnExit {
      std::function<void()> run;
      ~OnExit() { run(); }
    } on_exit{let_go_once};
    UserRecord alice = MakeUser(store, "alice");

    armed = true;
    store.GetUserById(alice.id, [&](Result<UserRecord> r) { slow.set_value(std::move(r)); });
    held.get_future().wait();
    store.GetUserByName("alice", [&](Result<UserRecord> r) { quick.set_value(std::move(r)); });
    if (connections > 1) {
      ASSERT_EQ(quick_done.wait_for(std::chrono::seconds(10)), std::future_status::ready)
          << "a read waited behind another reader's long read";
    } else {
      EXPECT_EQ(quick_done.wait_for(std::chrono::milliseconds(300)), std::future_status::timeout)
          << "with one read connection a read overtook the one holding it";
    }
    let_go_once();
    Result<UserRecord> quick_result = quick_done.get();
    ASSERT_TRUE(quick_result.has_value()) << quick_result.error().ToString();
    EXPECT_EQ(quick_result->id, alice.id);
    Result<UserRecord> slow_result = slow.get_future().get();
    ASSERT_TRUE(slow_result.has_value()) << slow_result.error().ToString();
    EXPECT_EQ(slow_result->username, "alice");
  }
}

TEST(SqliteStoreTest, EachCommitsWalFramesReachTheOsInOneWriteAndSurviveAReopen) {
  TempDir dir;
  const std::string path = dir.path() + "/parley.db";
  Counter& sqlite_writes = Metrics::Default().GetCounter("parley_store_wal_sqlite_writes_total", "");
  Counter& os_writes = Metrics::Default().GetCounter("parley_store_wal_os_writes_total", "");
  UserRecord bob;
  {
    std::unique_ptr<SqliteStore> store = OpenSqlite(path);
    ASSERT_NE(store, nullptr);
    UserRecord alice = MakeUser(*store, "alice");
    bob = MakeUser(*store, "bob");
    DeviceRecord dev = MakeDevice(*store, alice.id, "ta");
    ConversationId c = Open(*store, alice.id, bob.id).conversation.id;
    uint64_t commits_before = store->Stats().commits;
    uint64_t sqlite_before = sqlite_writes.value(), os_before = os_writes.value();
    SendMany(*store, c, alice.id, dev.id, 1000, "m");
    uint64_t commits = store->Stats().commits - commits_before;
    uint64_t by_sqlite = sqlite_writes.value() - sqlite_before, to_os = os_writes.value() - os_before;
    // SQLite writes each frame in two calls (header, page); the OS gets one
    // write per commit, or one per kWalBufferBytes of frames in a larger
    // commit (1,000 messages to one conversation share their pages: ~40
    // frames, ~165 KB).
    const uint64_t frame_bytes = (by_sqlite / 2) * (4096 + 24);
    EXPECT_GE(to_os, commits);
    EXPECT_LE(to_os, commits + frame_bytes / sqlite::kWalBufferBytes + 1);
    EXPECT_GT(by_sqlite, 4 * to_os);
    // The reader connection sees every commit: the frames left the buffer
    // before SQLite published them.
    EXPECT_EQ(Head(*store, bob.id), 1001);
  }
  // Durable: a new process's store reads everything back from the file.
  std::unique_ptr<SqliteStore> store = OpenSqlite(path);
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(Head(*store, bob.id), 1001);
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

// Message search's index step runs on the search file's own writer
// (sqlite_search.h), never on the store's: the writes queued around it
// commit in one batch, as if it were not there.
TEST(SqliteStoreTest, TheSearchIndexStepNeverTakesATurnOfTheStoresWriter) {
  TempDir dir;
  // A 200 ms deadline gathers everything queued at once into one transaction.
  std::unique_ptr<SqliteStore> store = OpenSqlite(dir.path() + "/parley.db", 1000, 200'000);
  ASSERT_NE(store, nullptr);
  uint64_t before = store->Stats().commits;
  Collector<UserRecord> users(20);
  Collector<SearchIndexProgress> step(1);
  for (size_t i = 0; i < 10; ++i) store->CreateUser("u" + std::to_string(i), "h", 1, users.Slot(i));
  store->IndexSearch(100, step.Slot(0));
  for (size_t i = 10; i < 20; ++i) store->CreateUser("u" + std::to_string(i), "h", 1, users.Slot(i));
  for (auto& r : users.Wait()) EXPECT_TRUE(r->has_value());
  for (auto& r : step.Wait()) EXPECT_TRUE(r->has_value());
  EXPECT_EQ(store->Stats().commits - before, 1u);
}

// "Member activity": a message in the conversation on top of a member's
// list leaves their members row alone (the file keeps the older time), the
// summary still shows the newest message's time, and the order and the
// pages follow the exact times: also across a restart (the writer reads the
// top again), when one commit moves the top and another conversation of the
// same member, when another conversation's time ties with the top's newest
// message, and when the clock went back below it.
TEST(SqliteStoreTest, MemberActivityOfTheTopConversationIsNotRewrittenAndTheOrderHolds) {
  TempDir dir;
  const std::string path = dir.path() + "/parley.db";
  UserRecord me, a, b, c;
  ConversationId ca = 0, cb = 0, cc = 0;
  DeviceId me_dev = 0;
  auto stored_activity = [&](ConversationId conv) {
    sqlite3* db = nullptr;
    int64_t v = -1;
    EXPECT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
    sqlite3_stmt* stmt = nullptr;
    std::string sql = "SELECT last_activity_at FROM members WHERE conversation_id = " + std::to_string(conv) +
                      " AND user_id = " + std::to_string(me.id);
    if (sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr) == SQLITE_OK && sqlite3_step(stmt) == SQLITE_ROW) {
      v = sqlite3_column_int64(stmt, 0);
    }
    sqlite3_finalize(stmt);
    sqlite3_close(db);
    return v;
  };
  // The list, one conversation per page, with the time each shows.
  auto walk = [&](Store& store) {
    std::vector<std::pair<ConversationId, int64_t>> got;
    ConversationPage page = ListConversations(store, me.id, 0, 0, 1, 1);
    for (int guard = 0; guard < 10; ++guard) {
      for (const ConversationSummary& s : page.conversations) got.emplace_back(s.conversation.id, s.conversation.last_activity_at);
      if (!page.has_more) break;
      page = ListConversations(store, me.id, page.next_activity, page.next_id, 1, 1);
    }
    return got;
  };
  using Order = std::vector<std::pair<ConversationId, int64_t>>;
  {
    std::unique_ptr<SqliteStore> store = OpenSqlite(path);
    ASSERT_NE(store, nullptr);
    me = MakeUser(*store, "me");
    a = MakeUser(*store, "a");
    b = MakeUser(*store, "b");
    c = MakeUser(*store, "c");
    me_dev = MakeDevice(*store, me.id, "tme").id;
    ca = Open(*store, me.id, a.id, 1000).conversation.id;
    cb = Open(*store, me.id, b.id, 1000).conversation.id;
    cc = Open(*store, me.id, c.id, 1000).conversation.id;
    // The first message makes ca the top (written); the next ones do not
    // write it again.
    for (int64_t t : {2000, 2100, 2200}) {
      ASSERT_TRUE(Append(*store, Msg(ca, me.id, me_dev, "a" + std::to_string(t), "x", t)).has_value());
    }
    EXPECT_EQ(stored_activity(ca), 2000);
    EXPECT_EQ(walk(*store), (Order{{ca, 2200}, {cc, 1000}, {cb, 1000}}));
    Snapshot snap = GetSnapshot(*store, me.id, 0);
    ASSERT_EQ(snap.conversations.size(), 3u);
    EXPECT_EQ(snap.conversations[0].conversation.id, ca);
    EXPECT_EQ(snap.conversations[0].conversation.last_activity_at, 2200);
    // Another conversation takes the top (written, exact), and back.
    ASSERT_TRUE(Append(*store, Msg(cb, me.id, me_dev, "b2300", "x", 2300)).has_value());
    EXPECT_EQ(stored_activity(cb), 2300);
    EXPECT_EQ(walk(*store), (Order{{cb, 2300}, {ca, 2200}, {cc, 1000}}));
    ASSERT_TRUE(Append(*store, Msg(ca, me.id, me_dev, "a2400", "x", 2400)).has_value());
    ASSERT_TRUE(Append(*store, Msg(ca, me.id, me_dev, "a2450", "x", 2450)).has_value());
    EXPECT_EQ(stored_activity(ca), 2400);
    EXPECT_EQ(walk(*store), (Order{{ca, 2450}, {cb, 2300}, {cc, 1000}}));
  }
  // A new writer finds the top in the file. Everything queued below goes
  // into one commit (a 200 ms deadline gathers it).
  std::unique_ptr<SqliteStore> store = OpenSqlite(path, 1000, 200'000);
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(Append(*store, Msg(ca, me.id, me_dev, "a2500", "x", 2500)).has_value());
  EXPECT_EQ(stored_activity(ca), 2400);
  const uint64_t commits_before = store->Stats().commits;
  Collector<AppendResult> sends(3);
  store->AppendMessage(Msg(ca, me.id, me_dev, "a2600", "x", 2600), sends.Slot(0));
  store->AppendMessage(Msg(cc, me.id, me_dev, "c2700", "x", 2700), sends.Slot(1));
  store->AppendMessage(Msg(ca, me.id, me_dev, "a2800", "x", 2800), sends.Slot(2));
  for (auto& r : sends.Wait()) ASSERT_TRUE(r->has_value());
  EXPECT_EQ(store->Stats().commits - commits_before, 1u);
  // Had ca been left at 2500, cc (2700) would stand above it.
  EXPECT_EQ(stored_activity(ca), 2800);
  EXPECT_EQ(stored_activity(cc), 2700);
  EXPECT_EQ(walk(*store), (Order{{ca, 2800}, {cc, 2700}, {cb, 2300}}));
  // A tie: cc (the larger id) on top, its row behind at 3000; ca at the
  // millisecond of cc's newest message stays below it, as ties go by id.
  ASSERT_TRUE(Append(*store, Msg(cc, me.id, me_dev, "c3000", "x", 3000)).has_value());
  ASSERT_TRUE(Append(*store, Msg(cc, me.id, me_dev, "c3100", "x", 3100)).has_value());
  EXPECT_EQ(stored_activity(cc), 3000);
  ASSERT_TRUE(Append(*store, Msg(ca, me.id, me_dev, "a3100", "x", 3100)).has_value());
  EXPECT_EQ(stored_activity(cc), 3100);  // written first, exact
  EXPECT_EQ(walk(*store), (Order{{cc, 3100}, {ca, 3100}, {cb, 2300}}));
  // The clock went back: cb at 3200 after cc's 3300 (its row at 3100).
  ASSERT_TRUE(Append(*store, Msg(cc, me.id, me_dev, "c3300", "x", 3300)).has_value());
  EXPECT_EQ(stored_activity(cc), 3100);
  ASSERT_TRUE(Append(*store, Msg(cb, me.id, me_dev, "b3200", "x", 3200)).has_value());
  EXPECT_EQ(stored_activity(cc), 3300);
  EXPECT_EQ(walk(*store), (Order{{cc, 3300}, {cb, 3200}, {ca, 3100}}));
  // The other member's top is their only conversation: never rewritten
  // after its creation, shown exact.
  ConversationPage theirs = ListConversations(*store, a.id, 0, 0, 10, 1);
  ASSERT_EQ(theirs.conversations.size(), 1u);
  EXPECT_EQ(theirs.conversations[0].conversation.last_activity_at, 3100);
}

// A device's "delivered" and "read" for the same conversation that share a
// commit are applied as one receipt: one watermark update, one event per
// member; both requests succeed with the aggregate, only the first carries
// the events (core publishes those), and read_changed tells core to update
// the other devices' badges. Another device's receipt in the same commit is
// its own.
TEST(SqliteStoreTest, ReceiptsOfOneDeviceInOneCommitAreMergedIntoOne) {
  TempDir dir;
  // A 200 ms deadline gathers everything queued at once into one transaction.
  std::unique_ptr<SqliteStore> store = OpenSqlite(dir.path() + "/parley.db", 1000, 200'000);
  ASSERT_NE(store, nullptr);
  UserRecord alice = MakeUser(*store, "alice");
  UserRecord bob = MakeUser(*store, "bob");
  DeviceRecord alice_dev = MakeDevice(*store, alice.id, "ta");
  DeviceRecord bob_phone = MakeDevice(*store, bob.id, "tb1");
  DeviceRecord bob_laptop = MakeDevice(*store, bob.id, "tb2");
  ConversationId c = Open(*store, alice.id, bob.id).conversation.id;
  SendMany(*store, c, alice.id, alice_dev.id, 3, "m");
  const UserSeq alice_head = Head(*store, alice.id);
  const UserSeq bob_head = Head(*store, bob.id);
  Counter& merged = Metrics::Default().GetCounter("parley_store_merged_receipts_total", "");
  const uint64_t merged_before = merged.value();
  const uint64_t commits_before = store->Stats().commits;

  Collector<ReceiptResult> results(3);
  store->UpdateReceipt(Receipt(bob.id, bob_phone.id, c, 2, 0), results.Slot(0));
  store->UpdateReceipt(Receipt(bob.id, bob_laptop.id, c, 1, 1), results.Slot(1));
  store->UpdateReceipt(Receipt(bob.id, bob_phone.id, c, 3, 3, 3001), results.Slot(2));
  auto r = results.Wait();
  EXPECT_EQ(store->Stats().commits - commits_before, 1u);
  ASSERT_TRUE(r[0]->has_value() && r[1]->has_value() && r[2]->has_value());

  // The phone's two receipts: the first carries the merged effect.
  const ReceiptResult& first = r[0]->value();
  EXPECT_TRUE(first.changed);
  EXPECT_TRUE(first.read_changed);
  EXPECT_EQ(first.aggregate.delivered, 3);
  EXPECT_EQ(first.aggregate.read, 3);
  ASSERT_EQ(first.positions.size(), 2u);
  const ReceiptResult& second = r[2]->value();
  EXPECT_FALSE(second.changed);
  EXPECT_TRUE(second.positions.empty());
  EXPECT_EQ(second.aggregate.delivered, 3);
  EXPECT_EQ(second.aggregate.read, 3);
  // The laptop's receipt was applied on its own, after the phone's merged
  // one had already raised the aggregate past it.
  EXPECT_FALSE(r[1]->value().changed);
  EXPECT_EQ(merged.value() - merged_before, 1u);

  // One receipt event per stream, with both watermarks.
  EXPECT_EQ(Head(*store, alice.id), alice_head + 1);
  EXPECT_EQ(Head(*store, bob.id), bob_head + 1);
  StreamPage page = ReadStream(*store, alice.id, alice_head, 10);
  ASSERT_EQ(page.events.size(), 1u);
  EXPECT_EQ(page.events[0].kind, EventKind::kReceipt);
  EXPECT_EQ(page.events[0].receipt.delivered, 3);
  EXPECT_EQ(page.events[0].receipt.read, 3);
}

// With a small threshold the checkpointer copies the WAL back many times
// while messages are written; the WAL file stays within the hard limit and
// everything written is in the database after a reopen.
TEST(SqliteStoreTest, CheckpointsTheWalInTheBackgroundAndKeepsItBounded) {
  TempDir dir;
  const std::string path = dir.path() + "/parley.db";
  constexpr int kPages = 64;
  Counter& background = Metrics::Default().GetCounter("parley_store_checkpoints_total", "");
  Counter& written = Metrics::Default().GetCounter("parley_store_wal_pages_written_total", "");
  Counter& by_writer = Metrics::Default().GetCounter("parley_store_writer_checkpoints_total", "");
  Histogram& by_writer_seconds = Metrics::Default().GetHistogram("parley_store_writer_checkpoint_seconds", "", {});
  const uint64_t background_before = background.value();
  const uint64_t written_before = written.value();
  const uint64_t by_writer_before = by_writer.value();
  const uint64_t by_writer_timed_before = by_writer_seconds.count();
  UserId bob_id = 0;
  {
    StoreConfig config;
    config.sqlite_path = path;
    config.sqlite_cache_kib = 8192;
    config.sqlite_checkpoint_pages = kPages;
    std::unique_ptr<SqliteStore> store = std::move(SqliteStore::Open(config)).value();
    UserRecord alice = MakeUser(*store, "alice");
    UserRecord bob = MakeUser(*store, "bob");
    bob_id = bob.id;
    DeviceRecord dev = MakeDevice(*store, alice.id, "ta");
    ConversationId c = Open(*store, alice.id, bob.id).conversation.id;
    for (int round = 0; round < 40; ++round) {
      // One commit each (the batch is smaller than commit_max_batch).
      SendMany(*store, c, alice.id, dev.id, 50, "r" + std::to_string(round) + "-", std::string(200, 'x'));
    }
    EXPECT_EQ(Head(*store, bob.id), 1 + 40 * 50);
    EXPECT_GT(background.value() - background_before, 3u);
    // The writer copied the pages committed while the checkpointer ran (the
    // tail) at least once, and each of its checkpoints was timed: sends
    // wait behind them.
    EXPECT_GT(by_writer.value() - by_writer_before, 0u);
    EXPECT_EQ(by_writer_seconds.count() - by_writer_timed_before, by_writer.value() - by_writer_before);
    // 2,000 messages of 200 bytes are far more than the WAL ever holds at
    // once: the pages written count every commit's, across restarts.
    EXPECT_GT(written.value() - written_before, static_cast<uint64_t>(SqliteStore::kWalHardLimitFactor * kPages));
    // At most the hard limit plus one commit (200 pages is ample for 50
    // messages), in frames of a 4 KiB page and a 24-byte header, after the
    // WAL's 32-byte file header.
    const auto bound = static_cast<uintmax_t>((SqliteStore::kWalHardLimitFactor * kPages + 200) * (4096 + 24) + 32);
    EXPECT_LE(std::filesystem::file_size(path + "-wal"), bound);
  }
  std::unique_ptr<SqliteStore> reopened = OpenSqlite(path);
  ASSERT_NE(reopened, nullptr);
  EXPECT_EQ(Head(*reopened, bob_id), 1 + 40 * 50);
}

// The checkpointer gives up the core after every N pages it copies
// (--sqlite-checkpoint-yield-pages), and only the checkpointer: the writer's
// own small checkpoints and its commits never yield. With N = 0 it never does.
// The names of this process's threads, as /proc shows them.
std::vector<std::string> ThreadNames() {
  std::vector<std::string> names;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream in(task.path() / "comm");
    std::string name;
    std::getline(in, name);
    names.push_back(name);
  }
  return names;
}

TEST(SqliteStoreTest, ItsThreadsAreNamedForTopAndPerf) {
  TempDir dir;
  StoreConfig config;
  config.sqlite_path = dir.path() + "/parley.db";
  std::unique_ptr<SqliteStore> store = std::move(SqliteStore::Open(config)).value();
  // Each thread names itself as it starts, which may be just after Open.
  const std::vector<std::string> wanted = {"store-writer", "store-reader/0", "store-ckpt"};
  std::vector<std::string> names;
  for (int i = 0; i < 500; ++i) {
    names = ThreadNames();
    if (std::all_of(wanted.begin(), wanted.end(),
                    [&](const std::string& w) { return std::count(names.begin(), names.end(), w) > 0; })) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  for (const std::string& name : wanted) EXPECT_EQ(std::count(names.begin(), names.end(), name), 1) << name;
}

TEST(SqliteStoreTest, TheCheckpointerYieldsBetweenThePagesItCopies) {
  Counter& background = Metrics::Default().GetCounter("parley_store_checkpoints_total", "");
  Counter& yields = Metrics::Default().GetCounter("parley_store_checkpoint_yields_total", "");
  struct Run {
    uint64_t checkpoints;
    uint64_t yields;
  };
  constexpr int kMaxRounds = 400;
  auto run = [&](int yield_pages) {
    TempDir dir;
    StoreConfig config;
    config.sqlite_path = dir.path() + "/parley.db";
    config.sqlite_cache_kib = 8192;
    config.sqlite_checkpoint_pages = 64;
    config.sqlite_checkpoint_yield_pages = yield_pages;
    const uint64_t background_before = background.value();
    const uint64_t yields_before = yields.value();
    {
      std::unique_ptr<SqliteStore> store = std::move(SqliteStore::Open(config)).value();
      UserRecord alice = MakeUser(*store, "alice");
      UserRecord bob = MakeUser(*store, "bob");
      DeviceRecord dev = MakeDevice(*store, alice.id, "ta");
      ConversationId c = Open(*store, alice.id, bob.id).conversation.id;
      // Rounds until the checkpointer has run four times (on a loaded
      // machine it may run late and copy several rounds at once).
      for (int round = 0; round < kMaxRounds && background.value() - background_before < 4; ++round) {
        SendMany(*store, c, alice.id, dev.id, 50, "r" + std::to_string(round) + "-", std::string(200, 'x'));
      }
    }  // the destructor joins the checkpointer: its counts are final
    return Run{background.value() - background_before, yields.value() - yields_before};
  };
  Run never = run(0);
  EXPECT_GE(never.checkpoints, 4u);
  EXPECT_EQ(never.yields, 0u);
  // Each background checkpoint here copies dozens of distinct pages (the
  // threshold is 64 and every commit adds 50 new messages), so at least
  // several yields each.
  Run every2 = run(2);
  EXPECT_GE(every2.checkpoints, 4u);
  EXPECT_GE(every2.yields, 4 * every2.checkpoints);
}

// The yield setting is read at every WAL read, so its owner (the store, which
// turns the checkpointer's yields off while the WAL is past its hard limit)
// can change it while a checkpoint runs.
TEST(WalBufferVfsTest, AThreadYieldsAfterEveryNWalReadsWhileItsSettingSaysSo) {
  TempDir dir;
  std::unique_ptr<sqlite::Db> db = std::move(sqlite::Db::Open(dir.path() + "/t.db", false, 1024)).value();
  ASSERT_TRUE(db->Exec("PRAGMA wal_autocheckpoint = 0; CREATE TABLE t(x BLOB);").ok());
  Counter& yields = Metrics::Default().GetCounter("parley_store_checkpoint_yields_total", "");
  std::atomic<int> every{2};
  sqlite::YieldEveryWalReads(&every);
  struct Reset {
    ~Reset() { sqlite::YieldEveryWalReads(nullptr); }
  } reset;
  // A checkpoint reads every frame it copies through the shim: count them.
  auto fill_and_checkpoint = [&] {
    EXPECT_TRUE(db->Exec("BEGIN; WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 40) "
                         "INSERT INTO t SELECT randomblob(3000) FROM n; COMMIT;")
                    .ok());
    int copied = 0;
    EXPECT_EQ(sqlite3_wal_checkpoint_v2(db->handle(), nullptr, SQLITE_CHECKPOINT_PASSIVE, nullptr, &copied),
              SQLITE_OK);
    return copied;
  };
  uint64_t before = yields.value();
  int copied = fill_and_checkpoint();
  ASSERT_GE(copied, 40);
  EXPECT_GE(yields.value() - before, static_cast<uint64_t>(copied / 2 - 1));
  EXPECT_LE(yields.value() - before, static_cast<uint64_t>(copied));
  every = 0;  // off, the same thread and setting
  before = yields.value();
  ASSERT_GE(fill_and_checkpoint(), 40);
  EXPECT_EQ(yields.value() - before, 0u);
}

// The checkpointer flushes the database file itself after each checkpoint
// (through SQLite's VFS, as a checkpoint's own sync would).
TEST(SqliteDbTest, SyncDatabaseFileFlushesTheDatabaseFileOfAnOpenConnection) {
  TempDir dir;
  std::unique_ptr<sqlite::Db> db = std::move(sqlite::Db::Open(dir.path() + "/t.db", false, 1024)).value();
  ASSERT_TRUE(db->Exec("CREATE TABLE t(x); INSERT INTO t VALUES(1); PRAGMA wal_checkpoint(PASSIVE);").ok());
  EXPECT_TRUE(db->SyncDatabaseFile().ok());
  // An in-memory database has no file to sync: an error, not a crash.
  std::unique_ptr<sqlite::Db> memory = std::move(sqlite::Db::Open(":memory:", false, 1024)).value();
  Status s = memory->SyncDatabaseFile();
  EXPECT_EQ(s.code(), ErrorCode::kInternal) << s.ToString();
}

// The page-cache layer (sqlite_db.cc, PageCacheLayer): commits that split
// leaves of a table with random keys (so balances swap page numbers through
// the lock-byte page's) skip the walk of the page cache, and a rollback
// that shrinks the database still drops the pages past it, so the pages
// handed out again after it are read as they are now.
TEST(SqliteDbTest, CommitsSkipThePageCacheWalkAndARollbackStillDropsThePagesPastTheFile) {
  TempDir dir;
  std::unique_ptr<sqlite::Db> db = std::move(sqlite::Db::Open(dir.path() + "/t.db", false, 8192)).value();
  ASSERT_TRUE(db->Exec("CREATE TABLE t(k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID").ok());
  // One statement per row (a statement over a CTE would add caches of its
  // own temporary tables to the counts).
  uint64_t next_key = 0x9E3779B97F4A7C15ULL;
  auto insert = [&](int rows, int64_t* count) {
    for (int i = 0; i < rows; ++i) {
      next_key = next_key * 6364136223846793005ULL + 1442695040888963407ULL;  // scattered keys
      sqlite::Stmt s(*db, "INSERT INTO t(k, v) VALUES(?1, zeroblob(100))");
      s.BindBlob(1, std::string_view(reinterpret_cast<const char*>(&next_key), sizeof(next_key)));
      s.Run();
    }
    ASSERT_FALSE(db->failed()) << db->error().ToString();
    *count += rows;
  };
  auto commit_of = [&](int rows, int64_t* count) {
    ASSERT_TRUE(db->Exec("BEGIN").ok());
    insert(rows, count);
    ASSERT_TRUE(db->Exec("COMMIT").ok());
  };
  int64_t rows = 0;
  const sqlite::PageCacheTruncations before = sqlite::PageCacheTruncationsForTest();
  for (int i = 0; i < 20; ++i) commit_of(300, &rows);
  const sqlite::PageCacheTruncations committed = sqlite::PageCacheTruncationsForTest();
  EXPECT_GE(committed.skipped - before.skipped, 20u);
  EXPECT_EQ(committed.passed - before.passed, 0u);

  // A transaction that grows the file by hundreds of pages, rolled back:
  // its pages are dropped, and the next inserts use those numbers again.
  ASSERT_TRUE(db->Exec("BEGIN").ok());
  int64_t rolled_back = 0;
  insert(3000, &rolled_back);
  ASSERT_TRUE(db->Exec("ROLLBACK").ok());
  EXPECT_GE(sqlite::PageCacheTruncationsForTest().passed - committed.passed, 1u);
  for (int i = 0; i < 10; ++i) commit_of(300, &rows);
  {
    sqlite::Stmt s(*db, "PRAGMA integrity_check");
    ASSERT_TRUE(s.Step());
    EXPECT_EQ(s.Text(0), "ok");
  }
  {
    sqlite::Stmt s(*db, "SELECT count(*), sum(length(v)) FROM t");
    ASSERT_TRUE(s.Step());
    EXPECT_EQ(s.Int(0), rows);
    EXPECT_EQ(s.Int(1), rows * 100);
  }
  // And as another connection reads the file.
  db.reset();
  EXPECT_EQ(FirstRow(dir.path() + "/t.db", "PRAGMA integrity_check"), std::vector<std::string>{"ok"});
  EXPECT_EQ(FirstRow(dir.path() + "/t.db", "SELECT count(*) FROM t"), std::vector<std::string>{std::to_string(rows)});
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

// ---- The writer's caches (issue 9) ----
// The writer keeps blocks, live devices, device and user watermarks and the
// withheld seqs of cached conversations in memory instead of reading them at
// every send and receipt. Each test below changes one of them through another
// operation, in the next commit or in the same one, or in a commit that fails,
// and checks the next send or receipt sees the table as it is.

// A store whose writer waits up to 200 ms to gather what is queued at once
// into one transaction.
std::unique_ptr<SqliteStore> OpenGathering(const TempDir& dir) {
  return OpenSqlite(dir.path() + "/parley.db", 1000, 200'000);
}

// alice and bob, a device each, and their conversation.
struct AliceAndBob {
  UserRecord alice, bob;
  DeviceRecord alice_dev, bob_dev;
  ConversationId c = 0;
};
AliceAndBob MakeAliceAndBob(Store& store) {
  AliceAndBob p;
  p.alice = MakeUser(store, "alice");
  p.bob = MakeUser(store, "bob");
  p.alice_dev = MakeDevice(store, p.alice.id, "ta");
  p.bob_dev = MakeDevice(store, p.bob.id, "tb");
  p.c = Open(store, p.alice.id, p.bob.id).conversation.id;
  return p;
}

// The writer numbers search_queue entries itself (schema step 19): a batch
// that fails after queueing gives its numbers back, so the queue stays one
// contiguous range of ids, which the indexer's backlog count relies on.
TEST(SqliteStoreTest, AFailedBatchGivesItsSearchQueueIdsBack) {
  TempDir dir;
  std::unique_ptr<SqliteStore> store = OpenGathering(dir);
  ASSERT_NE(store, nullptr);
  AliceAndBob p = MakeAliceAndBob(*store);
  SendMany(*store, p.c, p.alice.id, p.alice_dev.id, 3, "before-");
  int64_t limit = Must(Await<int64_t>([&](auto cb) { store->SetMaxPageCountForTest(1, cb); }));
  // One batch: two small messages are queued, then a large one needs new
  // pages and the whole batch fails.
  Collector<AppendResult> appends(3);
  store->AppendMessage(Msg(p.c, p.alice.id, p.alice_dev.id, "s1", "small"), appends.Slot(0));
  store->AppendMessage(Msg(p.c, p.alice.id, p.alice_dev.id, "s2", "small"), appends.Slot(1));
  store->AppendMessage(Msg(p.c, p.alice.id, p.alice_dev.id, "big", std::string(64 * 1024, 'b')), appends.Slot(2));
  for (auto& r : appends.Wait()) {
    ASSERT_FALSE(r->has_value());
    EXPECT_EQ(r->error().code(), ErrorCode::kStorageFull);
  }
  EXPECT_GT(Must(Await<int64_t>([&](auto cb) { store->SetMaxPageCountForTest(1 << 30, cb); })), limit);
  Must(Append(*store, Msg(p.c, p.alice.id, p.alice_dev.id, "after", "after")));
  // Queued: the three before and the one after, nothing of the failed batch.
  SearchIndexProgress progress = Must(Await<SearchIndexProgress>([&](auto cb) { store->IndexSearch(1, cb); }));
  EXPECT_EQ(progress.indexed, 1);
  EXPECT_EQ(progress.backlog, 3);
  progress = Must(Await<SearchIndexProgress>([&](auto cb) { store->IndexSearch(10, cb); }));
  EXPECT_EQ(progress.indexed, 3);
  EXPECT_EQ(progress.backlog, 0);
}

// A retry is found by the message insert itself (ON CONFLICT on
// messages_dedup): it takes no search_queue id, in its own batch or in the
// batch of the original, and the next message's doc id follows on.
TEST(SqliteStoreTest, RetriesQueueNothingForSearch) {
  TempDir dir;
  const std::string path = dir.path() + "/parley.db";
  std::unique_ptr<SqliteStore> store = OpenSqlite(path);
  ASSERT_NE(store, nullptr);
  AliceAndBob p = MakeAliceAndBob(*store);
  Must(Append(*store, Msg(p.c, p.alice.id, p.alice_dev.id, "a", "first")));
  AppendResult retry = Must(Append(*store, Msg(p.c, p.alice.id, p.alice_dev.id, "a", "first")));
  EXPECT_TRUE(retry.duplicate);
  Collector<AppendResult> both(2);
  store->AppendMessage(Msg(p.c, p.alice.id, p.alice_dev.id, "b", "second"), both.Slot(0));
  store->AppendMessage(Msg(p.c, p.alice.id, p.alice_dev.id, "b", "second"), both.Slot(1));
  auto& results = both.Wait();
  ASSERT_TRUE(results[0]->has_value() && results[1]->has_value());
  EXPECT_TRUE((*results[1])->duplicate);
  Must(Append(*store, Msg(p.c, p.alice.id, p.alice_dev.id, "c", "third")));
  ASSERT_TRUE(AwaitStatus([&](auto cb) { store->Flush(cb); }).ok());
  store.reset();
  EXPECT_EQ(FirstRow(path, "SELECT group_concat(id) FROM (SELECT id FROM search_queue ORDER BY id)"),
            (std::vector<std::string>{"1,2,3"}));
  EXPECT_EQ(FirstRow(path, "SELECT group_concat(search_doc) FROM (SELECT search_doc FROM messages ORDER BY seq)"),
            (std::vector<std::string>{"1,2,3"}));
}

// The store's writer trims the queue only up to the done_id the search file
// committed; entries past it stay queued (and are indexed after a restart).
TEST(SqliteStoreTest, TheSearchQueueIsTrimmedOnlyUpToWhatTheSearchFileCommitted) {
  TempDir dir;
  const std::string path = dir.path() + "/parley.db";
  std::unique_ptr<SqliteStore> store = OpenSqlite(path);
  ASSERT_NE(store, nullptr);
  AliceAndBob p = MakeAliceAndBob(*store);
  SendMany(*store, p.c, p.alice.id, p.alice_dev.id, 5, "m", "tidings");
  SearchIndexProgress progress = Must(Await<SearchIndexProgress>([&](auto cb) { store->IndexSearch(2, cb); }));
  EXPECT_EQ(progress.indexed, 2);
  EXPECT_EQ(progress.backlog, 3);
  // The first step queues a trim (none ran yet); Flush waits for it.
  ASSERT_TRUE(AwaitStatus([&](auto cb) { store->Flush(cb); }).ok());
  EXPECT_EQ(FirstRow(path, "SELECT group_concat(id) FROM search_queue"), (std::vector<std::string>{"3,4,5"}));
  EXPECT_EQ(FirstRow(sqlite::SearchFilePath(path), "SELECT done_id FROM search_state"),
            (std::vector<std::string>{"2"}));
  store.reset();

  store = OpenSqlite(path);
  ASSERT_NE(store, nullptr);
  progress = Must(Await<SearchIndexProgress>([&](auto cb) { store->IndexSearch(10, cb); }));
  EXPECT_EQ(progress.indexed, 3);
  EXPECT_EQ(progress.backlog, 0);
  MessageSearchQuery q;
  q.searcher = p.bob.id;
  q.words = {"tidings"};
  q.limit = 10;
  EXPECT_EQ(Must(Await<MessageSearchPage>([&](auto cb) { store->SearchMessages(q, cb); })).messages.size(), 5u);
  // A new message's id follows the queue's, past every doc id.
  Must(Append(*store, Msg(p.c, p.alice.id, p.alice_dev.id, "m6", "tidings")));
  store.reset();
  EXPECT_EQ(FirstRow(path, "SELECT max(search_doc) FROM messages"), std::vector<std::string>{"6"});
}

// ---- The texts in memory (sqlite_search.h, "The texts in memory") ----

Counter& SearchEntriesFrom(const std::string& source) {
  return Metrics::Default().GetCounter("parley_search_index_entries_total", "", "source=\"" + source + "\"");
}

// Sends, an edit and a delete, all committed before the search writer runs:
// one step takes them from memory in queue order, reads nothing through the
// store, and ends where reading each message's current text would.
TEST(SqliteStoreTest, TheSearchWriterTakesCommittedTextsFromMemoryInQueueOrder) {
  TempDir dir;
  std::unique_ptr<SqliteStore> store = OpenSqlite(dir.path() + "/parley.db");
  ASSERT_NE(store, nullptr);
  AliceAndBob p = MakeAliceAndBob(*store);
  const uint64_t memory0 = SearchEntriesFrom("memory").value(), store0 = SearchEntriesFrom("store").value();
  Seq pie = Must(Append(*store, Msg(p.c, p.alice.id, p.alice_dev.id, "a", "apple pie"))).message.seq;
  Seq tart = Must(Append(*store, Msg(p.c, p.alice.id, p.alice_dev.id, "b", "cherry tart"))).message.seq;
  Must(Append(*store, Msg(p.c, p.alice.id, p.alice_dev.id, "c", "plum jam")));
  MessageChange edit;
  edit.kind = static_cast<int>(protocol::ChangeKind::kEdit);
  edit.conversation_id = p.c;
  edit.seq = pie;
  edit.user_id = p.alice.id;
  edit.device_id = p.alice_dev.id;
  edit.client_id = "edit-pie";
  edit.body = "banana bread";
  edit.now = 2500;
  edit.edit_window_ms = edit.delete_window_ms = 1'000'000;
  Must(Await<ChangeResult>([&](auto cb) { store->ChangeMessage(edit, cb); }));
  MessageChange del = edit;
  del.kind = static_cast<int>(protocol::ChangeKind::kDelete);
  del.seq = tart;
  del.client_id = "delete-tart";
  Must(Await<ChangeResult>([&](auto cb) { store->ChangeMessage(del, cb); }));

  // One step: two of the messages are queued twice (sent, then edited or
  // deleted), and each ends as its last entry left it.
  SearchIndexProgress progress = Must(Await<SearchIndexProgress>([&](auto cb) { store->IndexSearch(100, cb); }));
  EXPECT_EQ(progress.indexed, 5);
  EXPECT_EQ(progress.backlog, 0);
  EXPECT_EQ(progress.oldest_queued_at, 0);
  EXPECT_EQ(SearchEntriesFrom("memory").value() - memory0, 5u);
  EXPECT_EQ(SearchEntriesFrom("store").value() - store0, 0u);
  EXPECT_TRUE(Finds(*store, p.bob.id, "apple").empty());
  EXPECT_EQ(Finds(*store, p.bob.id, "banana"), (std::vector<std::string>{std::to_string(pie) + ":banana bread"}));
  EXPECT_TRUE(Finds(*store, p.bob.id, "cherry").empty());
  EXPECT_EQ(Finds(*store, p.bob.id, "plum"), (std::vector<std::string>{std::to_string(tart + 1) + ":plum jam"}));

  // A step smaller than what waits: the backlog is exact (the entries held).
  SendMany(*store, p.c, p.alice.id, p.alice_dev.id, 3, "later-", "fig roll");
  progress = Must(Await<SearchIndexProgress>([&](auto cb) { store->IndexSearch(1, cb); }));
  EXPECT_EQ(progress.indexed, 1);
  EXPECT_EQ(progress.backlog, 2);
  EXPECT_GT(progress.oldest_queued_at, 0);
  progress = Must(Await<SearchIndexProgress>([&](auto cb) { store->IndexSearch(100, cb); }));
  EXPECT_EQ(progress.indexed, 2);
  EXPECT_EQ(Finds(*store, p.bob.id, "fig").size(), 3u);
  // An idle step reads nothing either.
  progress = Must(Await<SearchIndexProgress>([&](auto cb) { store->IndexSearch(100, cb); }));
  EXPECT_EQ(progress.indexed, 0);
  EXPECT_EQ(SearchEntriesFrom("memory").value() - memory0, 8u);
  EXPECT_EQ(SearchEntriesFrom("store").value() - store0, 0u);
}

// A step skips the DELETE of a doc id above every indexed one (a new
// message); an edit or a delete of a message indexed in an earlier step, or
// before the store reopened (the bound read from the file), still replaces
// its row.
TEST(SqliteStoreTest, AnEditOrDeleteAfterAnEarlierStepOrAReopenReplacesTheIndexedRow) {
  TempDir dir;
  const std::string path = dir.path() + "/parley.db";
  std::unique_ptr<SqliteStore> store = OpenSqlite(path);
  ASSERT_NE(store, nullptr);
  AliceAndBob p = MakeAliceAndBob(*store);
  ASSERT_EQ(p.c, 1);  // AnnChanges' conversation and user
  ASSERT_EQ(p.alice.id, 1);
  // The index's own rows (searches also check each match against the store,
  // so a stale row would not show there).
  auto rows = [&](const std::string& match) {
    return FirstRow(sqlite::SearchFilePath(path), "SELECT count(*) FROM message_search" +
                                                      (match.empty() ? "" : " WHERE message_search MATCH '" + match + "'"));
  };
  using Row = std::vector<std::string>;
  Seq pie = Must(Append(*store, Msg(p.c, p.alice.id, p.alice_dev.id, "a", "apple pie"))).message.seq;
  Seq tart = Must(Append(*store, Msg(p.c, p.alice.id, p.alice_dev.id, "b", "cherry tart"))).message.seq;
  IndexAll(*store);
  ASSERT_EQ(Finds(*store, p.bob.id, "apple").size(), 1u);
  EXPECT_EQ(rows(""), Row{"2"});

  // Indexed in the step before: the bound that step left covers it.
  AnnChanges(*store, p.alice_dev.id, protocol::ChangeKind::kEdit, pie, "banana bread");
  IndexAll(*store);
  EXPECT_TRUE(Finds(*store, p.bob.id, "apple").empty());
  EXPECT_EQ(Finds(*store, p.bob.id, "banana"), (std::vector<std::string>{std::to_string(pie) + ":banana bread"}));
  EXPECT_EQ(rows("apple"), Row{"0"});
  EXPECT_EQ(rows(""), Row{"2"});

  // After a reopen: the bound comes from the search file.
  store.reset();
  store = OpenSqlite(path);
  ASSERT_NE(store, nullptr);
  AnnChanges(*store, p.alice_dev.id, protocol::ChangeKind::kEdit, pie, "carrot cake");
  AnnChanges(*store, p.alice_dev.id, protocol::ChangeKind::kDelete, tart, "");
  Seq jam = Must(Append(*store, Msg(p.c, p.alice.id, p.alice_dev.id, "c", "plum jam"))).message.seq;
  IndexAll(*store);
  EXPECT_TRUE(Finds(*store, p.bob.id, "banana").empty());
  EXPECT_TRUE(Finds(*store, p.bob.id, "cherry").empty());
  EXPECT_EQ(Finds(*store, p.bob.id, "carrot"), (std::vector<std::string>{std::to_string(pie) + ":carrot cake"}));
  EXPECT_EQ(Finds(*store, p.bob.id, "plum"), (std::vector<std::string>{std::to_string(jam) + ":plum jam"}));
  EXPECT_EQ(rows("banana"), Row{"0"});
  EXPECT_EQ(rows("cherry"), Row{"0"});
  EXPECT_EQ(rows(""), Row{"2"});
}

// A handoff too small for what waits: it drops what it holds, the search
// writer reads those entries through the store, and then takes the next
// commits' from memory again. Nothing is lost.
TEST(SqliteStoreTest, AFullSearchHandoffLeavesItsEntriesToTheStoreAndLosesNone) {
  TempDir dir;
  StoreConfig config;
  config.sqlite_path = dir.path() + "/parley.db";
  config.sqlite_cache_kib = 8192;
  config.sqlite_search_handoff_kib = 1;
  std::unique_ptr<SqliteStore> store = std::move(SqliteStore::Open(config)).value();
  AliceAndBob p = MakeAliceAndBob(*store);
  const uint64_t memory0 = SearchEntriesFrom("memory").value(), store0 = SearchEntriesFrom("store").value();
  Counter& overflows = Metrics::Default().GetCounter("parley_search_handoff_overflows_total", "");
  const uint64_t overflows0 = overflows.value();
  const std::string long_text = "saga " + std::string(600, 'z');
  for (int i = 0; i < 3; ++i)  // one commit each: the second does not fit beside the first
    Must(Append(*store, Msg(p.c, p.alice.id, p.alice_dev.id, "long" + std::to_string(i), long_text)));
  EXPECT_GE(overflows.value() - overflows0, 1u);
  SearchIndexProgress progress = Must(Await<SearchIndexProgress>([&](auto cb) { store->IndexSearch(100, cb); }));
  EXPECT_EQ(progress.indexed, 3);
  EXPECT_EQ(progress.backlog, 0);
  EXPECT_EQ(SearchEntriesFrom("store").value() - store0, 3u);
  EXPECT_EQ(SearchEntriesFrom("memory").value() - memory0, 0u);

  Must(Append(*store, Msg(p.c, p.alice.id, p.alice_dev.id, "short", "short saga")));
  progress = Must(Await<SearchIndexProgress>([&](auto cb) { store->IndexSearch(100, cb); }));
  EXPECT_EQ(progress.indexed, 1);
  EXPECT_EQ(SearchEntriesFrom("memory").value() - memory0, 1u) << "caught up: from memory again";
  EXPECT_EQ(Finds(*store, p.bob.id, "saga").size(), 4u);
}

// The handoff's own rules: an entry stays until a done_id covers it (a step
// whose commit failed takes it again), and after an overflow it answers
// only once done_id has reached what it dropped.
TEST(SearchHandoffTest, KeepsEntriesUntilADoneIdCoversThemAndAnswersOnlyWhenComplete) {
  auto entry = [](int64_t id, std::string body) {
    sqlite::SearchEntry e;
    e.id = e.doc_id = id;
    e.queued_at = 100 + id;
    e.body = std::move(body);
    return e;
  };
  sqlite::SearchHandoff handoff(/*complete_after=*/10, /*max_bytes=*/4 * (sizeof(sqlite::SearchEntry) + 8));
  sqlite::SearchHandoff::Taken taken;
  EXPECT_TRUE(handoff.Take(10, 5, &taken));
  EXPECT_TRUE(taken.entries.empty());
  EXPECT_FALSE(handoff.Take(9, 5, &taken)) << "entry 10 is in the store only";

  // One commit's entries, ids first..last.
  auto append = [&](int64_t first, int64_t last, const std::string& body) {
    std::vector<sqlite::SearchEntry> batch;
    for (int64_t id = first; id <= last; ++id) batch.push_back(entry(id, body));
    handoff.Append(std::move(batch));
  };
  append(11, 12, "b");
  append(13, 13, "c");
  ASSERT_TRUE(handoff.Take(10, 2, &taken));
  ASSERT_EQ(taken.entries.size(), 2u);
  EXPECT_EQ(taken.entries[0].id, 11);
  EXPECT_EQ(taken.entries[1].body, "b");
  EXPECT_EQ(taken.backlog, 1);
  EXPECT_EQ(taken.oldest_queued_at, 113);
  // The step's commit failed: done_id is still 10, and it takes them again.
  ASSERT_TRUE(handoff.Take(10, 2, &taken));
  ASSERT_EQ(taken.entries.size(), 2u);
  EXPECT_EQ(taken.entries[0].id, 11);
  ASSERT_TRUE(handoff.Take(12, 5, &taken));
  ASSERT_EQ(taken.entries.size(), 1u);
  EXPECT_EQ(taken.entries[0].id, 13);
  EXPECT_EQ(taken.backlog, 0);
  EXPECT_EQ(taken.oldest_queued_at, 0);

  // Past its limit (four entries): with 13 to 15 held, the batch 16 to 19
  // does not fit, so it drops them all, and until done_id reaches 19 they
  // are read through the store.
  append(14, 15, "x");
  append(16, 19, "y");
  EXPECT_FALSE(handoff.Take(12, 5, &taken));
  EXPECT_FALSE(handoff.Take(18, 5, &taken));
  append(20, 20, "z");
  ASSERT_TRUE(handoff.Take(19, 5, &taken));
  ASSERT_EQ(taken.entries.size(), 1u);
  EXPECT_EQ(taken.entries[0].id, 20);
}

TEST(SqliteStoreTest, AReceiptFromADeviceRevokedAfterItsLastReceiptIsRefused) {
  TempDir dir;
  std::unique_ptr<SqliteStore> store = OpenGathering(dir);
  ASSERT_NE(store, nullptr);
  UserRecord alice = MakeUser(*store, "alice");
  UserRecord bob = MakeUser(*store, "bob");
  UserRecord carol = MakeUser(*store, "carol");
  DeviceRecord alice_dev = MakeDevice(*store, alice.id, "ta");
  DeviceRecord phone = MakeDevice(*store, bob.id, "tb1");
  DeviceRecord laptop = MakeDevice(*store, bob.id, "tb2");
  ConversationId with_alice = Open(*store, alice.id, bob.id).conversation.id;
  ConversationId with_carol = Open(*store, carol.id, bob.id).conversation.id;
  SendMany(*store, with_alice, alice.id, alice_dev.id, 3, "a");
  DeviceRecord carol_dev = MakeDevice(*store, carol.id, "tc");
  SendMany(*store, with_carol, carol.id, carol_dev.id, 3, "c");
  ASSERT_TRUE(UpdateReceipt(*store, Receipt(bob.id, phone.id, with_alice, 1, 0)).has_value());
  ASSERT_TRUE(UpdateReceipt(*store, Receipt(bob.id, laptop.id, with_alice, 1, 0)).has_value());

  // In the next commit.
  ASSERT_TRUE(AwaitStatus([&](auto cb) { store->RevokeDevice(bob.id, phone.id, cb); }).ok());
  Result<ReceiptResult> refused = UpdateReceipt(*store, Receipt(bob.id, phone.id, with_alice, 2, 0));
  ASSERT_FALSE(refused.has_value());
  EXPECT_EQ(refused.error().code(), ErrorCode::kUnknownDevice);

  // In the same commit as receipts before and after it (in another
  // conversation, so the two are not merged into one).
  const uint64_t commits_before = store->Stats().commits;
  Collector<ReceiptResult> receipts(2);
  std::promise<Status> revoked;
  store->UpdateReceipt(Receipt(bob.id, laptop.id, with_alice, 2, 0), receipts.Slot(0));
  store->RevokeDevice(bob.id, laptop.id, [&revoked](Status s) { revoked.set_value(std::move(s)); });
  store->UpdateReceipt(Receipt(bob.id, laptop.id, with_carol, 2, 0), receipts.Slot(1));
  auto& r = receipts.Wait();
  EXPECT_TRUE(revoked.get_future().get().ok());
  EXPECT_EQ(store->Stats().commits - commits_before, 1u);
  ASSERT_TRUE(r[0]->has_value()) << r[0]->error().ToString();
  EXPECT_EQ(r[0]->value().aggregate.delivered, 2);
  ASSERT_FALSE(r[1]->has_value());
  EXPECT_EQ(r[1]->error().code(), ErrorCode::kUnknownDevice);
}

TEST(SqliteStoreTest, ASendAfterABlockOrAnUnblockFollowsIt) {
  TempDir dir;
  std::unique_ptr<SqliteStore> store = OpenGathering(dir);
  ASSERT_NE(store, nullptr);
  auto [alice, bob, alice_dev, bob_dev, c] = MakeAliceAndBob(*store);
  // Both directions looked up: neither blocks the other.
  ASSERT_EQ(Must(Append(*store, Msg(c, alice.id, alice_dev.id, "a1", "x"))).positions.size(), 2u);
  ASSERT_EQ(Must(Append(*store, Msg(c, bob.id, bob_dev.id, "b1", "x"))).positions.size(), 2u);

  // Each in the next commit.
  ASSERT_TRUE(Block(*store, bob.id, alice.id).has_value());
  AppendResult hidden = Must(Append(*store, Msg(c, alice.id, alice_dev.id, "a2", "x")));
  ASSERT_EQ(hidden.positions.size(), 1u);  // alice's stream only: withheld from bob
  EXPECT_EQ(hidden.positions[0].user_id, alice.id);
  Result<AppendResult> refused = Append(*store, Msg(c, bob.id, bob_dev.id, "b2", "x"));
  ASSERT_FALSE(refused.has_value());
  EXPECT_EQ(refused.error().code(), ErrorCode::kBlocked);
  ASSERT_TRUE(Unblock(*store, bob.id, alice.id).has_value());
  EXPECT_EQ(Must(Append(*store, Msg(c, alice.id, alice_dev.id, "a3", "x"))).positions.size(), 2u);
  EXPECT_EQ(Must(Append(*store, Msg(c, bob.id, bob_dev.id, "b3", "x"))).positions.size(), 2u);

  // All in one commit: each send sees the block state the operations before
  // it in the commit left.
  const uint64_t commits_before = store->Stats().commits;
  Collector<AppendResult> sends(4);
  Collector<SocialResult> social(2);
  store->AppendMessage(Msg(c, alice.id, alice_dev.id, "a4", "x"), sends.Slot(0));
  store->Block(bob.id, alice.id, 5000, social.Slot(0));
  store->AppendMessage(Msg(c, alice.id, alice_dev.id, "a5", "x"), sends.Slot(1));
  store->AppendMessage(Msg(c, bob.id, bob_dev.id, "b5", "x"), sends.Slot(2));
  store->Unblock(bob.id, alice.id, 5000, social.Slot(1));
  store->AppendMessage(Msg(c, alice.id, alice_dev.id, "a6", "x"), sends.Slot(3));
  auto& s = sends.Wait();
  for (auto& r : social.Wait()) EXPECT_TRUE(r->has_value());
  EXPECT_EQ(store->Stats().commits - commits_before, 1u);
  ASSERT_TRUE(s[0]->has_value() && s[1]->has_value() && s[3]->has_value());
  EXPECT_EQ(s[0]->value().positions.size(), 2u);
  EXPECT_EQ(s[1]->value().positions.size(), 1u);
  ASSERT_FALSE(s[2]->has_value());
  EXPECT_EQ(s[2]->error().code(), ErrorCode::kBlocked);
  EXPECT_EQ(s[3]->value().positions.size(), 2u);
}

// A commit that fails leaves the writer's memory as the file is: the
// watermarks and the block it wrote are rolled back, and the next commit
// starts from what is on disk.
TEST(SqliteStoreTest, WatermarksAndBlocksOfAFailedCommitAreReadAgainFromTheFile) {
  TempDir dir;
  std::unique_ptr<SqliteStore> store = OpenGathering(dir);
  ASSERT_NE(store, nullptr);
  auto [alice, bob, alice_dev, bob_dev, c] = MakeAliceAndBob(*store);
  SendMany(*store, c, alice.id, alice_dev.id, 5, "m");
  ASSERT_EQ(Must(UpdateReceipt(*store, Receipt(bob.id, bob_dev.id, c, 1, 1))).aggregate.read, 1);

  // Freeze the file; large bodies after the receipt and the block need new
  // pages and fail their commit.
  int64_t limit = Must(Await<int64_t>([&](auto cb) { store->SetMaxPageCountForTest(1, cb); }));
  const std::string big(16 * 1024, 'b');
  Collector<ReceiptResult> receipt(1);
  Collector<SocialResult> block(1);
  Collector<AppendResult> appends(5);
  store->UpdateReceipt(Receipt(bob.id, bob_dev.id, c, 4, 4), receipt.Slot(0));
  store->Block(bob.id, alice.id, 5000, block.Slot(0));
  for (size_t i = 0; i < 5; ++i) {
    store->AppendMessage(Msg(c, alice.id, alice_dev.id, "big" + std::to_string(i), big), appends.Slot(i));
  }
  for (auto& r : appends.Wait()) EXPECT_FALSE(r->has_value());
  ASSERT_FALSE(receipt.Wait()[0]->has_value());
  EXPECT_EQ(receipt.Wait()[0]->error().code(), ErrorCode::kStorageFull);
  ASSERT_FALSE(block.Wait()[0]->has_value());
  ASSERT_GT(Must(Await<int64_t>([&](auto cb) { store->SetMaxPageCountForTest(1 << 30, cb); })), limit);

  // The device is at 1 again, not at the rolled-back 4: a receipt of 2 moves
  // it and the aggregate, and alice is told.
  const UserSeq alice_head = Head(*store, alice.id);
  ReceiptResult next = Must(UpdateReceipt(*store, Receipt(bob.id, bob_dev.id, c, 2, 2)));
  EXPECT_TRUE(next.changed);
  EXPECT_EQ(next.aggregate.delivered, 2);
  EXPECT_EQ(next.aggregate.read, 2);
  StreamPage page = ReadStream(*store, alice.id, alice_head, 10);
  ASSERT_EQ(page.events.size(), 1u);
  EXPECT_EQ(page.events[0].kind, EventKind::kReceipt);
  EXPECT_EQ(page.events[0].receipt.read, 2);
  // bob does not block alice: her next message reaches him.
  EXPECT_EQ(Must(Append(*store, Msg(c, alice.id, alice_dev.id, "after", "x"))).positions.size(), 2u);
}

}  // namespace
}  // namespace parley::store
