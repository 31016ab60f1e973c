// What only the PostgreSQL backend has, on a real server (pg_test_server.h):
// versioned migrations (fresh, in place from an older version, repeated,
// concurrent, refused when newer), the
// partitioned schema (hash partitions, partition key in every key, rows of a
// conversation in one partition), lost connections (retryable, then
// recovered; a server restart costs no failure once it is back), group
// commit under concurrent writers, two
// stores (two parleyd nodes) on one database keeping every sequence gapless
// and deduplication exact, an unreachable server reported as retryable, and
// the query plans of the statements that page history in.

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <gtest/gtest.h>
#include <libpq-fe.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <future>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "protocol/message_edits.h"
#include "store/cold_block.h"
#include "store/pg_test_server.h"
#include "store/postgres/pg_cold.h"
#include "store/postgres/pg_history_sql.h"
#include "store/postgres/pg_store.h"
#include "store/store_factory.h"
#include "store/store_test_util.h"

namespace parley::store {
namespace {

using namespace parley::store::testing;  // NOLINT: test helpers
using postgres::ColdEditPageInSql;
using postgres::ColdPageInSql;
using postgres::kHistoryPageSql;
using postgres::kWithheldInSql;

// A fresh database per test, named after the test.
std::string FreshDatabase() {
  const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string name = "pg_";
  // PostgreSQL identifiers stop at 63 bytes; test names are unique well before.
  constexpr size_t kMaxName = 40;
  for (char ch : std::string(info->name()).substr(0, kMaxName)) {
    name += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  }
  return PgTestServer::Get().Database(name);
}

std::unique_ptr<Store> OpenPg(const std::string& url, int commit_deadline_us = 0) {
  StoreConfig config;
  config.backend = "postgres";
  config.postgres_url = url;
  config.commit_deadline_us = commit_deadline_us;
  Result<std::unique_ptr<Store>> store = OpenStore(config);
  EXPECT_TRUE(store.has_value()) << store.error().ToString();
  return store.has_value() ? std::move(store).value() : nullptr;
}

// Runs one SQL query on `url` and returns its rows as text (first column of
// each row unless `joined`, then every column joined by '|').
std::vector<std::string> Sql(const std::string& url, const std::string& query, bool joined = false) {
  std::vector<std::string> out;
  PGconn* conn = PQconnectdb(url.c_str());
  EXPECT_EQ(PQstatus(conn), CONNECTION_OK) << PQerrorMessage(conn);
  PGresult* r = PQexec(conn, query.c_str());
  ExecStatusType st = PQresultStatus(r);
  EXPECT_TRUE(st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) << query << ": " << PQerrorMessage(conn);
  for (int i = 0; st == PGRES_TUPLES_OK && i < PQntuples(r); ++i) {
    std::string row;
    for (int c = 0; c < (joined ? PQnfields(r) : 1); ++c) {
      if (c > 0) row += '|';
      row += PQgetvalue(r, i, c);
    }
    out.push_back(row);
  }
  PQclear(r);
  PQfinish(conn);
  return out;
}

TEST(PgStoreTest, MigratesAFreshDatabaseOnceAndRecordsTheVersion) {
  std::string url = FreshDatabase();
  ASSERT_NE(OpenPg(url), nullptr);
  EXPECT_EQ(Sql(url, "SELECT max(version) FROM schema_version"),
            std::vector<std::string>{std::to_string(PostgresStore::kSchemaVersion)});
  // Opening again applies nothing more. (Step numbers are given out to
  // parallel changes ahead of time, so the count is not the version.)
  const std::vector<std::string> steps = Sql(url, "SELECT count(*) FROM schema_version");
  ASSERT_NE(OpenPg(url), nullptr);
  EXPECT_EQ(Sql(url, "SELECT count(*) FROM schema_version"), steps);
}

TEST(PgStoreTest, MigratesAVersionOneDatabaseInPlaceKeepingItsData) {
  std::string url = FreshDatabase();
  // As a version-1 server left it: one user, no presence columns yet.
  ASSERT_TRUE(PostgresStore::MigrateToVersionForTest(url, 1).ok());
  EXPECT_EQ(Sql(url, "SELECT max(version) FROM schema_version"), std::vector<std::string>{"1"});
  Sql(url, "INSERT INTO users(username, password_hash, created_at) VALUES ('old', 'h', 7)");
  std::unique_ptr<Store> store = OpenPg(url);
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(Sql(url, "SELECT string_agg(version::text, ',' ORDER BY version) FROM schema_version"),
            std::vector<std::string>{"1,2,3,4,5,6,7,8,9,10,11,12,13"});
  // Step 13 (the cold tier's edit texts): every edit row hot, no edit block.
  EXPECT_EQ(Sql(url, "SELECT count(*) FROM edit_blocks"), std::vector<std::string>{"0"});
  // Step 12 (stream trimming): every stream starts with nothing trimmed.
  EXPECT_EQ(Sql(url, "SELECT column_default FROM information_schema.columns WHERE table_name = 'user_heads' "
                     "AND column_name = 'stream_floor'"),
            std::vector<std::string>{"1"});
  // Step 4 (push): an existing user has previews on.
  EXPECT_EQ(Sql(url, "SELECT push_previews::text FROM users WHERE username = 'old'"), std::vector<std::string>{"true"});
  // Step 5 (edits and deletes): the edits table, empty.
  EXPECT_EQ(Sql(url, "SELECT count(*) FROM message_edits"), std::vector<std::string>{"0"});
  // Step 7 (drafts): the drafts table, empty.
  EXPECT_EQ(Sql(url, "SELECT count(*) FROM drafts"), std::vector<std::string>{"0"});
  // Step 10 (retention): the columns and partial indexes, nothing expiring.
  EXPECT_EQ(Sql(url, "SELECT count(*) FROM messages WHERE expires_at <> 0 OR purged_at <> 0"),
            std::vector<std::string>{"0"});
  EXPECT_EQ(Sql(url, "SELECT count(*) FROM pg_indexes WHERE indexname IN ('messages_expiring', 'messages_to_purge')"),
            std::vector<std::string>{"2"});
  UserRecord old = Must(Await<UserRecord>([&](auto cb) { store->GetUserByName("old", cb); }));
  EXPECT_EQ(old.created_at, 7);
  EXPECT_EQ(old.presence_visibility, PresenceVisibility::kEveryone);
  EXPECT_EQ(old.last_seen, 0);
  EXPECT_FALSE(old.disabled);  // step 3
  // The migrated store works: new users get the next ids.
  EXPECT_GT(MakeUser(*store, "new").id, old.id);
}

// Step 6: the name index of non-ASCII display names is re-made with Unicode
// folding (common/text_fold.h); ASCII names keep their rows.
TEST(PgStoreTest, MigratesVersion5NameIndexToUnicodeFolding) {
  std::string url = FreshDatabase();
  ASSERT_TRUE(PostgresStore::MigrateToVersionForTest(url, 5).ok());
  // What a version-5 server indexed: bytes >= 0x80 as they were ("Él..."),
  // ASCII lower-cased.
  Sql(url,
      "INSERT INTO users(id, username, password_hash, created_at, display_name, about, profile_updated_at) "
      "VALUES(1, 'searcher', 'h', 10, '', '', 0), (2, 'fr1', 'h', 11, 'Élodie Ng', '', 20), "
      "(3, 'en1', 'h', 12, 'Bo Ng', '', 20)");
  Sql(url,
      "INSERT INTO name_prefixes(prefix, username, user_id) VALUES ('É', 'fr1', 2), ('Él', 'fr1', 2), "
      "('Élo', 'fr1', 2), ('Élod', 'fr1', 2), ('Élodi', 'fr1', 2), ('Élodie', 'fr1', 2), ('n', 'fr1', 2), "
      "('ng', 'fr1', 2), ('b', 'en1', 3), ('bo', 'en1', 3), ('n', 'en1', 3), ('ng', 'en1', 3)");
  Sql(url, "SELECT setval(pg_get_serial_sequence('users', 'id'), 3)");
  std::unique_ptr<Store> store = OpenPg(url);
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(Sql(url, "SELECT max(version) FROM schema_version"), std::vector<std::string>{std::to_string(PostgresStore::kSchemaVersion)});
  EXPECT_EQ(Sql(url, "SELECT string_agg(prefix, ',' ORDER BY prefix) FROM name_prefixes WHERE username = 'fr1'"),
            std::vector<std::string>{"n,ng,é,él,élo,élod,élodi,élodie"});
  EXPECT_EQ(Sql(url, "SELECT string_agg(prefix, ',' ORDER BY prefix) FROM name_prefixes WHERE username = 'en1'"),
            std::vector<std::string>{"b,bo,n,ng"});
  auto found = [&](const std::string& folded_query) {
    std::vector<std::string> out;
    for (const ProfileRecord& p : Search(*store, 1, folded_query, "", 10).users) out.push_back(p.username);
    return out;
  };
  EXPECT_EQ(found("élo"), std::vector<std::string>{"fr1"});
  EXPECT_EQ(found("ng"), (std::vector<std::string>{"en1", "fr1"}));
  // The re-made rows are the ones a rename removes.
  ASSERT_TRUE(SetProfile(*store, 2, "Zoé", std::nullopt).has_value());
  EXPECT_EQ(Sql(url, "SELECT string_agg(prefix, ',' ORDER BY prefix) FROM name_prefixes WHERE username = 'fr1'"),
            std::vector<std::string>{"z,zo,zoé"});
}

// Step 8 (message search): the history a version-7 server stored is
// queued at migration and found once the indexer has run; deleted messages
// are not queued.
TEST(PgStoreTest, MigratesVersion7HistoryIntoTheSearchQueue) {
  std::string url = FreshDatabase();
  ASSERT_TRUE(PostgresStore::MigrateToVersionForTest(url, 7).ok());
  Sql(url, "INSERT INTO users(id, username, password_hash, created_at) VALUES(1, 'ann', 'h', 10), (2, 'ben', 'h', 10)");
  Sql(url, "INSERT INTO conversations(id, last_seq, created_at, last_activity_at) VALUES(1, 3, 10, 30)");
  Sql(url, "INSERT INTO members(conversation_id, user_id, last_activity_at) VALUES(1, 1, 30), (1, 2, 30)");
  Sql(url,
      "INSERT INTO messages(conversation_id, seq, sender_id, sender_device_id, client_id, body, created_at, "
      "stored_at, deleted_at) VALUES(1, 1, 1, 1, 'a', 'old news', 10, 10, 0), (1, 2, 2, 2, 'b', 'newer news', 20, "
      "20, 0), (1, 3, 1, 1, 'c', '', 30, 30, 40)");
  std::unique_ptr<Store> store = OpenPg(url);
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
}

// Ann (user 1) and Ben (2) and their conversation 1 with three messages,
// written with SQL into a database left at an old schema step (the
// migration tests).
void SeedAnnAndBen(const std::string& url) {
  Sql(url, "INSERT INTO users(id, username, password_hash, created_at) VALUES(1, 'ann', 'h', 10), (2, 'ben', 'h', 10)");
  Sql(url, "INSERT INTO conversations(id, last_seq, created_at, last_activity_at) VALUES(1, 3, 10, 30)");
  Sql(url, "INSERT INTO direct_conversations(low_user_id, high_user_id, conversation_id) VALUES(1, 2, 1)");
  Sql(url, "INSERT INTO members(conversation_id, user_id, last_activity_at) VALUES(1, 1, 30), (1, 2, 30)");
  Sql(url,
      "INSERT INTO messages(conversation_id, seq, sender_id, sender_device_id, client_id, body, created_at, "
      "stored_at) VALUES(1, 1, 1, 1, 'a', 'one', 10, 10), (1, 2, 2, 2, 'b', 'two', 20, 20), "
      "(1, 3, 2, 2, 'c', 'three', 30, 30)");
}

// Step 9 (as SqliteStore's step 11): receipts of a version-8 database count
// as already carried to the other member, so nothing is listed twice.
TEST(PgStoreTest, MigratesVersion8ReceiptsAsAlreadyAnnounced) {
  std::string url = FreshDatabase();
  ASSERT_TRUE(PostgresStore::MigrateToVersionForTest(url, 8).ok());
  SeedAnnAndBen(url);
  Sql(url, "INSERT INTO withheld(conversation_id, user_id, seq) VALUES(1, 1, 2)");
  Sql(url, "INSERT INTO user_receipts(conversation_id, user_id, delivered, read) VALUES(1, 1, 3, 3), (1, 2, 3, 3)");
  // The identity columns continue after the rows given explicit ids.
  Sql(url, "SELECT setval(pg_get_serial_sequence('users', 'id'), 2)");
  Sql(url, "SELECT setval(pg_get_serial_sequence('conversations', 'id'), 1)");
  std::unique_ptr<Store> store = OpenPg(url);
  ASSERT_NE(store, nullptr);
  DeviceRecord ann = MakeDevice(*store, 1, "ta");
  DeviceRecord ben = MakeDevice(*store, 2, "tb");
  ASSERT_EQ(Must(Append(*store, Msg(1, 2, ben.id, "d", "four"))).message.seq, 4);
  ReceiptResult r = Must(UpdateReceipt(*store, Receipt(1, ann.id, 1, 4, 4)));
  ASSERT_TRUE(r.changed);
  EXPECT_TRUE(r.withheld.empty()) << "2 was listed before the upgrade";
}

// Step 11 (the cold tier) landed after step 12: a database a server before
// it left at 12 gets 11 now, and its conversations become due for
// compaction from their first message, as SqliteStore's step 13 does.
TEST(PgStoreTest, MigratesADatabaseAtStep12WithoutStep11IntoTheColdTier) {
  std::string url = FreshDatabase();
  ASSERT_TRUE(PostgresStore::MigrateToVersionForTest(url, 10).ok());
  Sql(url, "ALTER TABLE user_heads ADD COLUMN stream_floor bigint NOT NULL DEFAULT 1");  // step 12, as it was
  Sql(url, "INSERT INTO schema_version(version) VALUES (12)");
  SeedAnnAndBen(url);
  Sql(url, "INSERT INTO conversations(id, last_seq, created_at, last_activity_at) VALUES(2, 0, 10, 10)");
  std::unique_ptr<Store> store = OpenPg(url);
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(Sql(url, "SELECT string_agg(version::text, ',' ORDER BY version) FROM schema_version"),
            std::vector<std::string>{"1,2,3,4,5,6,7,8,9,10,11,12,13"});
  EXPECT_TRUE(Must(Await<SchemaStatus>([&](auto cb) { store->GetSchemaStatus(cb); })).pending.empty());
  EXPECT_EQ(Sql(url, "SELECT id || ':' || hot_since || ':' || cold_through FROM conversations ORDER BY id"),
            (std::vector<std::string>{"1:10:0", "2:0:0"}))
      << "due from the first message; an empty conversation is not due";
  // Blocks are compressed already: stored out of line, not compressed again.
  EXPECT_EQ(Sql(url, "SELECT DISTINCT attstorage::text FROM pg_attribute WHERE attname = 'data' AND attrelid IN "
                     "(SELECT inhrelid FROM pg_inherits WHERE inhparent = 'message_blocks'::regclass)"),
            std::vector<std::string>{"e"});
  CompactRequest req;
  req.stored_before = req.due_before = 1'000'000;
  req.max_messages = 100;
  CompactProgress p = Must(Await<CompactProgress>([&](auto cb) { store->CompactMessages(req, cb); }));
  EXPECT_EQ(p.messages, 3);
  EXPECT_EQ(p.blocks, 1);
  EXPECT_EQ(Sql(url, "SELECT count(*) FROM messages WHERE cold AND body = ''"), std::vector<std::string>{"3"});
  std::vector<MessageRecord> history = History(*store, 1, 0, 10, 1);
  ASSERT_EQ(history.size(), 3u);
  EXPECT_EQ(history[0].body, "one");
  EXPECT_EQ(history[2].body, "three");
}

TEST(PgStoreTest, NodesStartingTogetherMigrateOnce) {
  std::string url = FreshDatabase();
  constexpr int kNodes = 4;
  std::vector<std::unique_ptr<Store>> stores(kNodes);
  std::vector<std::thread> threads;
  for (int i = 0; i < kNodes; ++i) {
    threads.emplace_back([&, i] { stores[static_cast<size_t>(i)] = OpenPg(url); });
  }
  for (auto& t : threads) t.join();
  for (auto& s : stores) EXPECT_NE(s, nullptr);
  // Each step once (step numbers are given out ahead of time, so the count
  // is not the version).
  EXPECT_EQ(Sql(url, "SELECT count(*) = count(DISTINCT version) FROM schema_version"), std::vector<std::string>{"t"});
  EXPECT_EQ(Sql(url, "SELECT max(version) FROM schema_version"),
            std::vector<std::string>{std::to_string(PostgresStore::kSchemaVersion)});
}

TEST(PgStoreTest, RefusesADatabaseNewerThanThisServer) {
  std::string url = FreshDatabase();
  ASSERT_TRUE(PostgresStore::MigrateToVersionForTest(url, PostgresStore::kSchemaVersion).ok());
  Sql(url, "INSERT INTO schema_version(version) VALUES (" + std::to_string(PostgresStore::kSchemaVersion + 1) + ")");
  StoreConfig config;
  config.backend = "postgres";
  config.postgres_url = url;
  Result<std::unique_ptr<Store>> store = OpenStore(config);
  ASSERT_FALSE(store.has_value());
  EXPECT_EQ(store.error().code(), ErrorCode::kInternal);
  EXPECT_NE(store.error().message().find("newer"), std::string::npos) << store.error().message();
}

TEST(PgStoreTest, UnreachableServerIsUnavailable) {
  // The test server's socket directory with a port nothing listens on.
  PgTestServer& server = PgTestServer::Get();
  StoreConfig config;
  config.backend = "postgres";
  config.postgres_url = "postgresql://postgres@/nowhere?host=" + server.socket_dir() + "&port=1";
  Result<std::unique_ptr<Store>> store = OpenStore(config);
  ASSERT_FALSE(store.has_value());
  EXPECT_EQ(store.error().code(), ErrorCode::kUnavailable);
  EXPECT_TRUE(IsPostgresUrl(config.postgres_url));
  EXPECT_TRUE(IsPostgresUrl("postgres://db.example/parley"));
  EXPECT_FALSE(IsPostgresUrl("sqlite"));
}

TEST(PgStoreTest, LostConnectionsFailRetryablyAndRecover) {
  std::string url = FreshDatabase();
  std::unique_ptr<Store> store = OpenPg(url);
  ASSERT_NE(store, nullptr);
  auto [a, b, da, c] = MakeTwoUsers(*store);
  ASSERT_EQ(Must(Append(*store, Msg(c, a.id, da.id, "before", "x"))).message.seq, 1);

  // The server drops every session of the store (as on a failover).
  Sql(url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'parleyd' "
           "AND datname = current_database()");
  // pg_terminate_backend only signals: wait (bounded) until they are gone.
  constexpr int kMaxPolls = 500;
  for (int i = 0; i < kMaxPolls; ++i) {
    if (Sql(url, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'parleyd' "
                 "AND datname = current_database()") == std::vector<std::string>{"0"}) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  // The next write may fail, and then only as retryable `unavailable`
  // (nothing acknowledged); a retry with the same client id reconnects and
  // is stored once.
  constexpr int kAttempts = 3;
  std::optional<AppendResult> stored;
  for (int i = 0; i < kAttempts && !stored; ++i) {
    Result<AppendResult> r = Append(*store, Msg(c, a.id, da.id, "after", "y"));
    if (r.has_value()) {
      stored = std::move(r).value();
    } else {
      EXPECT_EQ(r.error().code(), ErrorCode::kUnavailable) << r.error().ToString();
    }
  }
  ASSERT_TRUE(stored.has_value());
  EXPECT_EQ(stored->message.seq, 2);
  // Reads recover the same way: each read connection fails at most once.
  const int kReadAttempts = 1 + StoreConfig().postgres_read_connections;
  Result<UserSeq> head = Status(ErrorCode::kUnavailable, "not tried");
  for (int i = 0; i < kReadAttempts && !head.has_value(); ++i) {
    head = Await<UserSeq>([&](auto cb) { store->GetHead(b.id, cb); });
    if (!head.has_value()) {
      EXPECT_EQ(head.error().code(), ErrorCode::kUnavailable) << head.error().ToString();
    }
  }
  ASSERT_TRUE(head.has_value());
  EXPECT_EQ(*head, 3);  // conversation event and two messages
  // The other read connection may still hold its dead session once.
  Result<std::vector<MessageRecord>> history = Status(ErrorCode::kUnavailable, "not tried");
  for (int i = 0; i < kReadAttempts && !history.has_value(); ++i) {
    history = Await<std::vector<MessageRecord>>([&](auto cb) { store->History(c, 0, 0, 10, cb); });
  }
  ASSERT_TRUE(history.has_value()) << history.error().ToString();
  EXPECT_EQ(history->size(), 2u);
}

// PostgreSQL stopped and started again (a restart, a crash): while it is
// down every operation fails `unavailable` at once; once it is back, every
// connection notices its dead session before using it, so the first
// operation on each succeeds — none fails for having been idle through the
// restart.
TEST(PgStoreTest, WhileTheServerIsDownOperationsAreUnavailableAndAfterItsRestartTheFirstSucceed) {
  std::unique_ptr<PgTestServer> server = PgTestServer::StartDedicated();
  ASSERT_TRUE(server->ok());
  std::string url = server->Database("restart");
  std::unique_ptr<Store> store = OpenPg(url);
  ASSERT_NE(store, nullptr);
  auto [a, b, da, c] = MakeTwoUsers(*store);
  ASSERT_EQ(Must(Append(*store, Msg(c, a.id, da.id, "m1", "before"))).message.seq, 1);

  ASSERT_TRUE(server->HaltForTest());
  auto start = std::chrono::steady_clock::now();
  Result<AppendResult> down = Append(*store, Msg(c, a.id, da.id, "m2", "during"));
  ASSERT_FALSE(down.has_value());
  EXPECT_EQ(down.error().code(), ErrorCode::kUnavailable) << down.error().ToString();
  Result<UserSeq> head = Await<UserSeq>([&](auto cb) { store->GetHead(b.id, cb); });
  ASSERT_FALSE(head.has_value());
  EXPECT_EQ(head.error().code(), ErrorCode::kUnavailable) << head.error().ToString();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2)) << "a dead server must fail fast";

  ASSERT_TRUE(server->ResumeForTest());
  // Reads at once on every read connection (one of them idle since before
  // the halt): each succeeds at its first try.
  std::vector<std::future<Result<UserSeq>>> reads;
  for (int i = 0; i < 2 * StoreConfig().postgres_read_connections; ++i) {
    reads.push_back(std::async(std::launch::async, [&] {
      return Await<UserSeq>([&](auto cb) { store->GetHead(b.id, cb); });
    }));
  }
  for (auto& r : reads) {
    Result<UserSeq> after = r.get();
    ASSERT_TRUE(after.has_value()) << "a read after the restart: " << after.error().ToString();
    EXPECT_EQ(*after, 2);  // the conversation event and m1
  }
  // The write that failed, retried: stored once, at the next seq.
  AppendResult again = Must(Append(*store, Msg(c, a.id, da.id, "m2", "during")));
  EXPECT_EQ(again.message.seq, 2);
  EXPECT_FALSE(again.duplicate);
}

TEST(PgStoreTest, MessagesAndStreamsAreHashPartitionedWithThePartitionKeyInEveryKey) {
  std::string url = FreshDatabase();
  std::unique_ptr<Store> store = OpenPg(url);
  ASSERT_NE(store, nullptr);
  const std::vector<std::pair<std::string, std::string>> partitioned = {
      {"messages", "conversation_id"}, {"withheld", "conversation_id"}, {"user_events", "user_id"},
      {"message_edits", "conversation_id"}, {"drafts", "user_id"}, {"message_blocks", "conversation_id"},
      {"edit_blocks", "conversation_id"}};
  for (const auto& [table, key] : partitioned) {
    SCOPED_TRACE(table);
    // Hash strategy, on the named key column.
    EXPECT_EQ(Sql(url,
                  "SELECT p.partstrat::text || ':' || a.attname::text FROM pg_partitioned_table p "
                  "JOIN pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0] "
                  "WHERE p.partrelid = '" + table + "'::regclass"),
              std::vector<std::string>{"h:" + key});
    EXPECT_EQ(Sql(url, "SELECT count(*) FROM pg_inherits WHERE inhparent = '" + table + "'::regclass"),
              std::vector<std::string>{std::to_string(PostgresStore::kPartitions)});
    // Every primary key and unique index leads with the partition key.
    std::vector<std::string> keys = Sql(url,
                                        "SELECT a.attname FROM pg_index i JOIN pg_attribute a "
                                        "ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
                                        "WHERE i.indrelid = '" + table + "'::regclass AND i.indisunique");
    EXPECT_FALSE(keys.empty());
    for (const std::string& k : keys) EXPECT_EQ(k, key);
  }

  // Rows land by their key: each conversation's messages in exactly one
  // partition, and many conversations spread over several partitions.
  constexpr int kUsers = 12;
  std::vector<UserRecord> users;
  for (int i = 0; i < kUsers; ++i) users.push_back(MakeUser(*store, "u" + std::to_string(i)));
  DeviceRecord dev = MakeDevice(*store, users[0].id, "t0");
  for (int i = 1; i < kUsers; ++i) {
    ConversationId c = Open(*store, users[0].id, users[static_cast<size_t>(i)].id).conversation.id;
    for (int k = 0; k < 3; ++k) Must(Append(*store, Msg(c, users[0].id, dev.id, std::to_string(k), "x")));
  }
  EXPECT_EQ(Sql(url, "SELECT max(n) FROM (SELECT count(DISTINCT tableoid) AS n FROM messages "
                     "GROUP BY conversation_id) t"),
            std::vector<std::string>{"1"});
  std::vector<std::string> used = Sql(url, "SELECT count(DISTINCT tableoid) FROM messages");
  ASSERT_EQ(used.size(), 1u);
  EXPECT_GT(std::stoi(used[0]), 1);
  std::vector<std::string> streams = Sql(url, "SELECT count(DISTINCT tableoid) FROM user_events");
  ASSERT_EQ(streams.size(), 1u);
  EXPECT_GT(std::stoi(streams[0]), 1);
  // A conversation's history reads one partition (partition pruning).
  std::vector<std::string> plan =
      Sql(url, "EXPLAIN (COSTS OFF) SELECT * FROM messages WHERE conversation_id = 1 ORDER BY seq DESC LIMIT 10");
  std::set<std::string> scanned;
  for (const std::string& line : plan) {
    std::smatch m;  // a table scan (not an index name: those go on with '_')
    if (std::regex_search(line, m, std::regex("on (messages_p[0-9]+)( |$)"))) scanned.insert(m[1]);
  }
  EXPECT_EQ(scanned.size(), 1u) << ::testing::PrintToString(plan);
}

TEST(PgStoreTest, ConcurrentWritersShareCommits) {
  std::string url = FreshDatabase();
  // A short deadline lets batches fill even on a loaded machine.
  std::unique_ptr<Store> store = OpenPg(url, /*commit_deadline_us=*/2000);
  ASSERT_NE(store, nullptr);
  auto [a, b, da, c] = MakeTwoUsers(*store);
  const uint64_t commits_before = store->Stats().commits;

  constexpr int kThreads = 4;
  constexpr int kPerThread = 100;
  std::vector<std::vector<Seq>> seqs(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      Collector<AppendResult> results(kPerThread);
      for (int i = 0; i < kPerThread; ++i) {
        store->AppendMessage(Msg(c, a.id, da.id, std::to_string(t) + "-" + std::to_string(i), "x"),
                             results.Slot(static_cast<size_t>(i)));
      }
      for (auto& r : results.Wait()) {
        EXPECT_TRUE(r->has_value());
        seqs[static_cast<size_t>(t)].push_back(r->has_value() ? (*r)->message.seq : -1);
      }
    });
  }
  for (auto& th : threads) th.join();
  std::vector<Seq> all;
  for (auto& s : seqs) all.insert(all.end(), s.begin(), s.end());
  std::sort(all.begin(), all.end());
  for (size_t i = 0; i < all.size(); ++i) ASSERT_EQ(all[i], static_cast<Seq>(i + 1));
  const uint64_t commits = store->Stats().commits - commits_before;
  EXPECT_LT(commits, static_cast<uint64_t>(kThreads * kPerThread) / 4) << "writes were not group-committed";
  // Both streams are gapless and hold every message once.
  EXPECT_EQ(Head(*store, a.id), Head(*store, b.id));
  EXPECT_EQ(Sql(url, "SELECT count(*) = max(user_seq) FROM user_events GROUP BY user_id ORDER BY 1"),
            (std::vector<std::string>{"t", "t"}));
}

TEST(PgStoreTest, TwoNodesOnOneDatabaseKeepSequencesGaplessAndDedupExact) {
  std::string url = FreshDatabase();
  std::unique_ptr<Store> node1 = OpenPg(url);
  std::unique_ptr<Store> node2 = OpenPg(url);
  ASSERT_NE(node1, nullptr);
  ASSERT_NE(node2, nullptr);
  UserRecord a = MakeUser(*node1, "a");
  UserRecord b = MakeUser(*node2, "b");
  DeviceRecord da = MakeDevice(*node1, a.id, "ta");
  DeviceRecord db = MakeDevice(*node2, b.id, "tb");
  // Both nodes open the same pair at once: one conversation.
  Collector<OpenResult> opened(2);
  node1->OpenDirect(a.id, b.id, 1000, opened.Slot(0));
  node2->OpenDirect(b.id, a.id, 1000, opened.Slot(1));
  auto& open_results = opened.Wait();
  ASSERT_TRUE(open_results[0]->has_value() && open_results[1]->has_value());
  const ConversationId c = (*open_results[0])->conversation.id;
  EXPECT_EQ((*open_results[1])->conversation.id, c);
  EXPECT_NE((*open_results[0])->created, (*open_results[1])->created);

  // Every message is sent through both nodes at once (a client retrying on
  // another node): each is stored once, and seqs stay gapless.
  constexpr int kMessages = 150;
  Collector<AppendResult> r1(kMessages), r2(kMessages);
  std::thread t1([&] {
    for (int i = 0; i < kMessages; ++i) {
      const bool from_a = i % 2 == 0;
      node1->AppendMessage(Msg(c, from_a ? a.id : b.id, from_a ? da.id : db.id, std::to_string(i), "x"),
                           r1.Slot(static_cast<size_t>(i)));
    }
  });
  std::thread t2([&] {
    for (int i = 0; i < kMessages; ++i) {
      const bool from_a = i % 2 == 0;
      node2->AppendMessage(Msg(c, from_a ? a.id : b.id, from_a ? da.id : db.id, std::to_string(i), "x"),
                           r2.Slot(static_cast<size_t>(i)));
    }
  });
  t1.join();
  t2.join();
  auto& res1 = r1.Wait();
  auto& res2 = r2.Wait();
  std::set<Seq> seqs;
  for (int i = 0; i < kMessages; ++i) {
    const auto& x = *res1[static_cast<size_t>(i)];
    const auto& y = *res2[static_cast<size_t>(i)];
    ASSERT_TRUE(x.has_value()) << x.error().ToString();
    ASSERT_TRUE(y.has_value()) << y.error().ToString();
    EXPECT_EQ(x->message.seq, y->message.seq) << "message " << i;
    EXPECT_NE(x->duplicate, y->duplicate) << "message " << i;
    seqs.insert(x->message.seq);
  }
  ASSERT_EQ(seqs.size(), static_cast<size_t>(kMessages));
  EXPECT_EQ(*seqs.begin(), 1);
  EXPECT_EQ(*seqs.rbegin(), kMessages);
  // Each user's stream: the conversation event plus one per message, gapless.
  for (UserId u : {a.id, b.id}) {
    StreamPage page = ReadStream(*node2, u, 0, 1000);
    ASSERT_EQ(page.events.size(), static_cast<size_t>(kMessages + 1));
    for (size_t i = 0; i < page.events.size(); ++i) EXPECT_EQ(page.events[i].user_seq, static_cast<UserSeq>(i + 1));
  }
}

// Retention on two nodes (issue 12): both run the expiry and purge steps at
// once on one database; each expired message is tombstoned by one node only
// (one delete event per member, no duplicate), and purged once.
// Stream trimming in a cluster: two nodes trimming the same streams while a
// third keeps sending never fail, never remove an entry twice (the head rows
// are claimed FOR UPDATE SKIP LOCKED), and end with each stream trimmed to
// its cap and contiguous from its floor.
TEST(PgStoreTest, TwoNodesTrimmingWhileSendsGoOnTrimEachEntryOnce) {
  std::string url = FreshDatabase();
  std::unique_ptr<Store> node1 = OpenPg(url);
  std::unique_ptr<Store> node2 = OpenPg(url);
  ASSERT_NE(node1, nullptr);
  ASSERT_NE(node2, nullptr);
  const auto [a, b, da, c] = MakeTwoUsers(*node1);
  constexpr int kMessages = 60;
  constexpr int64_t kCap = 10;
  std::atomic<bool> sending{true};
  std::atomic<int64_t> trimmed{0};
  auto trim = [&](Store& node) {
    TrimRequest r;
    r.max_users = 1;
    r.max_entries = 3;
    r.max_entries_per_user = kCap;
    r.protect_seen_since = std::numeric_limits<int64_t>::max();
    while (sending.load()) {
      TrimProgress p = Must(Await<TrimProgress>([&](auto cb) { node.TrimStreams(r, cb); }));
      trimmed += p.trimmed;
      r.after_user = p.next_after_user;
    }
    for (int step = 0; step < 100; ++step) {  // after the sends: finish
      TrimProgress p = Must(Await<TrimProgress>([&](auto cb) { node.TrimStreams(r, cb); }));
      trimmed += p.trimmed;
      r.after_user = p.next_after_user;
    }
  };
  std::thread t1([&] { trim(*node1); });
  std::thread t2([&] { trim(*node2); });
  for (int i = 0; i < kMessages; ++i) Must(Append(*node1, Msg(c, a.id, da.id, "m" + std::to_string(i), "x")));
  sending = false;
  t1.join();
  t2.join();
  const int64_t head = kMessages + 1;  // the conversation event, then the messages
  EXPECT_EQ(trimmed.load(), 2 * (head - kCap)) << "each entry removed once, down to the cap in both streams";
  for (UserId u : {a.id, b.id}) {
    StreamPage page = ReadStream(*node2, u, head - kCap, 100);
    EXPECT_EQ(page.floor, head - kCap + 1);
    ASSERT_EQ(page.events.size(), static_cast<size_t>(kCap));
    for (size_t i = 0; i < page.events.size(); ++i)
      EXPECT_EQ(page.events[i].user_seq, head - kCap + 1 + static_cast<int64_t>(i));
  }
}

TEST(PgStoreTest, TwoNodesExpiringAndPurgingTogetherTakeEachMessageOnce) {
  std::string url = FreshDatabase();
  std::unique_ptr<Store> node1 = OpenPg(url);
  std::unique_ptr<Store> node2 = OpenPg(url);
  ASSERT_NE(node1, nullptr);
  ASSERT_NE(node2, nullptr);
  const auto [a, b, da, c] = MakeTwoUsers(*node1);
  ASSERT_TRUE(Await<SocialResult>([&](auto cb) { node1->SetDisappearing(a.id, c, 1, 1000, cb); }).has_value());
  constexpr int kMessages = 40;
  int64_t expires = 0;
  for (int i = 0; i < kMessages; ++i) {
    AppendResult r = Must(Append(*node1, Msg(c, a.id, da.id, "m" + std::to_string(i), "x")));
    expires = std::max(expires, r.message.expires_at);
  }
  ASSERT_GT(expires, 0);
  std::vector<Seq> expired1, expired2;
  auto expire = [&](Store& node, std::vector<Seq>* out) {
    for (int step = 0; step < 20; ++step) {
      ExpireProgress p = Must(Await<ExpireProgress>([&](auto cb) { node.ExpireMessages(expires + 1, 7, cb); }));
      for (const ChangeResult& x : p.expired) {
        out->push_back(x.message.seq);
        EXPECT_EQ(x.positions.size(), 2u);
      }
    }
  };
  std::thread t1([&] { expire(*node1, &expired1); });
  std::thread t2([&] { expire(*node2, &expired2); });
  t1.join();
  t2.join();
  std::vector<Seq> all = expired1;
  all.insert(all.end(), expired2.begin(), expired2.end());
  std::sort(all.begin(), all.end());
  ASSERT_EQ(all.size(), static_cast<size_t>(kMessages)) << "node 1 took " << expired1.size();
  EXPECT_EQ(std::unique(all.begin(), all.end()), all.end()) << "a message expired twice";
  // One delete event per message in each member's stream.
  for (UserId u : {a.id, b.id}) {
    int deletes = 0;
    for (const StreamEvent& e : ReadStream(*node2, u, 0, 1000).events) deletes += e.kind == EventKind::kDelete ? 1 : 0;
    EXPECT_EQ(deletes, kMessages);
  }
  std::atomic<int> purged{0};
  auto purge = [&](Store& node) {
    for (int step = 0; step < 20; ++step)
      purged += Must(Await<PurgeProgress>([&](auto cb) { node.PurgeDeleted(expires + 1'000'000, 5, cb); })).purged;
  };
  std::thread p1([&] { purge(*node1); });
  std::thread p2([&] { purge(*node2); });
  p1.join();
  p2.join();
  EXPECT_EQ(purged.load(), kMessages);
}


// ---- Cold tier (pg_store.cc "Cold tier"): compaction next to other nodes ----

CompactProgress CompactOnce(Store& store, int64_t before, int max = 100'000) {
  CompactRequest req;
  req.stored_before = req.due_before = before;
  req.max_messages = max;
  return Must(Await<CompactProgress>([&](auto cb) { store.CompactMessages(req, cb); }));
}

// A second session, as another node's transaction holding rows.
class OtherNode {
 public:
  explicit OtherNode(const std::string& url) : conn_(PQconnectdb(url.c_str())) {
    EXPECT_EQ(PQstatus(conn_), CONNECTION_OK) << PQerrorMessage(conn_);
  }
  ~OtherNode() { PQfinish(conn_); }
  void Exec(const std::string& sql) {
    PGresult* r = PQexec(conn_, sql.c_str());
    const ExecStatusType st = PQresultStatus(r);
    EXPECT_TRUE(st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) << sql << ": " << PQerrorMessage(conn_);
    PQclear(r);
  }
  // The first column of each row of `sql`.
  std::vector<std::string> Rows(const std::string& sql) {
    std::vector<std::string> out;
    PGresult* r = PQexec(conn_, sql.c_str());
    EXPECT_EQ(PQresultStatus(r), PGRES_TUPLES_OK) << sql << ": " << PQerrorMessage(conn_);
    for (int i = 0; PQresultStatus(r) == PGRES_TUPLES_OK && i < PQntuples(r); ++i)
      out.emplace_back(PQgetvalue(r, i, 0));
    PQclear(r);
    return out;
  }

 private:
  PGconn* conn_;
};

// The compaction step never waits for a lock (so it can be in no lock cycle)
// and never packs a text another transaction is changing: a conversation a
// batch holds is skipped, and a message another node holds (an expiry, a
// purge) ends the block before it; once that node's delete commits, the
// message is a tombstone the next step passes over.
TEST(PgStoreTest, CompactionSkipsWhatAnotherNodeHoldsAndNeverWaitsForIt) {
  std::string url = FreshDatabase();
  std::unique_ptr<Store> store = OpenPg(url);
  ASSERT_NE(store, nullptr);
  const auto [a, b, da, c] = MakeTwoUsers(*store);
  constexpr int kMessages = 10;
  for (int i = 1; i <= kMessages; ++i)
    Must(Append(*store, Msg(c, a.id, da.id, "m" + std::to_string(i), "text " + std::to_string(i), 2000 + i)));
  const std::string conv = std::to_string(c);
  OtherNode other(url);

  other.Exec("BEGIN");
  other.Exec("SELECT 1 FROM conversations WHERE id = " + conv + " FOR UPDATE");
  CompactProgress held = CompactOnce(*store, 1'000'000);
  EXPECT_EQ(held.conversations, 0);
  EXPECT_EQ(held.messages, 0);
  other.Exec("ROLLBACK");

  other.Exec("BEGIN");
  other.Exec("SELECT 1 FROM messages WHERE conversation_id = " + conv + " AND seq = 5 FOR UPDATE");
  CompactProgress before_gap = CompactOnce(*store, 1'000'000);
  EXPECT_EQ(before_gap.messages, 4);
  EXPECT_EQ(before_gap.blocks, 1);
  EXPECT_EQ(Sql(url, "SELECT hot_since || ':' || cold_through FROM conversations WHERE id = " + conv),
            std::vector<std::string>{"2005:4"})
      << "still due from the held message";
  other.Exec("UPDATE messages SET body = '', deleted_at = 9000, version = 1 WHERE conversation_id = " + conv +
             " AND seq = 5");
  other.Exec("COMMIT");
  CompactProgress rest = CompactOnce(*store, 1'000'000);
  EXPECT_EQ(rest.messages, kMessages - 5);
  EXPECT_FALSE(rest.more);

  std::vector<MessageRecord> history = History(*store, c, 0, 20, a.id);
  ASSERT_EQ(history.size(), static_cast<size_t>(kMessages));
  for (int i = 1; i <= kMessages; ++i) {
    EXPECT_EQ(history[static_cast<size_t>(i - 1)].body, i == 5 ? "" : "text " + std::to_string(i)) << "seq " << i;
  }
  EXPECT_EQ(history[4].deleted_at, 9000);
  EXPECT_EQ(Sql(url, "SELECT count(*) FROM messages WHERE cold"), std::vector<std::string>{"9"});
}

// A push's compacted preview read while another node changes that message
// (here: holds its row, as an edit, a delete or an expiry does until it
// commits). The page-in does not wait for the lock (SKIP LOCKED) and the
// claim does not fail over it: the push is claimed now without its preview,
// the claim's other jobs keep theirs. Once the change committed, the next
// push of that message previews the row as it is now.
TEST(PgStoreTest, APushOfAMessageAnotherNodeIsChangingGoesWithoutItsPreview) {
  std::string url = FreshDatabase();
  std::unique_ptr<Store> store = OpenPg(url);
  ASSERT_NE(store, nullptr);
  const auto [a, b, da, c] = MakeTwoUsers(*store);
  const DeviceRecord db1 = MakeDevice(*store, b.id, "tb1");
  const DeviceRecord db2 = MakeDevice(*store, b.id, "tb2");
  for (const DeviceRecord& d : {db1, db2})
    ASSERT_TRUE(AwaitStatus([&](auto cb) { store->SetPushEndpoint(b.id, d.id, "webhook", "t", 1000, cb); }).ok());
  Must(Append(*store, Msg(c, a.id, da.id, "m1", "old text", 2001)));
  Must(Append(*store, Msg(c, a.id, da.id, "m2", "still here", 2002)));
  ASSERT_EQ(CompactOnce(*store, 1'000'000).messages, 2);
  auto enqueue = [&](Seq seq, std::vector<DeviceId> skip, int64_t now) {
    const PushRequest req = MessagePush(b.id, c, seq, now, /*coalesce_ms=*/1, std::move(skip));
    ASSERT_EQ(Must(Await<int>([&](auto cb) { store->EnqueuePush(req, cb); })), 1);
  };
  auto claim = [&](int64_t now) {
    std::vector<PushJob> jobs =
        Must(Await<std::vector<PushJob>>([&](auto cb) { store->ClaimPushJobs("node-a", now, 60'000, 10, cb); }));
    std::sort(jobs.begin(), jobs.end(), [](const PushJob& x, const PushJob& y) { return x.device_id < y.device_id; });
    return jobs;
  };
  enqueue(1, {db2.id}, 10'000);
  enqueue(2, {db1.id}, 10'000);

  OtherNode other(url);
  other.Exec("BEGIN");
  other.Exec("SELECT 1 FROM messages WHERE conversation_id = " + std::to_string(c) + " AND seq = 1 FOR UPDATE");
  const auto start = std::chrono::steady_clock::now();
  std::vector<PushJob> jobs = claim(10'001);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5)) << "waited for the lock";
  ASSERT_EQ(jobs.size(), 2u);
  EXPECT_EQ(jobs[0].seq, 1);
  EXPECT_TRUE(jobs[0].alert);
  EXPECT_EQ(jobs[0].sender_id, a.id);
  EXPECT_EQ(jobs[0].preview, "");
  EXPECT_NE(jobs[0].preview_error, "");
  EXPECT_EQ(jobs[1].seq, 2);
  EXPECT_EQ(jobs[1].preview, "still here");
  EXPECT_EQ(jobs[1].preview_error, "");
  EXPECT_EQ(Sql(url, "SELECT count(*) FROM push_jobs WHERE lease_owner = 'node-a' AND lease_until = 70001"),
            std::vector<std::string>{"2"})
      << "both leased, to be sent now";

  // The change commits (an edit: the row holds the new text); the next push
  // of that message previews it.
  other.Exec("UPDATE messages SET body = 'new text', cold = false, version = 1 WHERE conversation_id = " +
             std::to_string(c) + " AND seq = 1");
  other.Exec("COMMIT");
  for (const PushJob& j : jobs) {
    PushCompletion done = CompletionOf(j, "node-a", PushOutcome::kRetry, "500", 10'002);
    done.retry_at = 10'003;
    done.max_attempts = 5;
    ASSERT_TRUE(AwaitStatus([&](auto cb) { store->CompletePush(done, cb); }).ok());
  }
  jobs = claim(10'004);
  ASSERT_EQ(jobs.size(), 2u);
  EXPECT_EQ(jobs[0].preview, "new text");
  EXPECT_EQ(jobs[0].preview_error, "");
  EXPECT_EQ(jobs[1].preview, "still here");
}

// The bytes of every block of `conversation`, decoded: seq -> text.
std::map<Seq, std::string> BlockTexts(const std::string& url, ConversationId conversation) {
  std::map<Seq, std::string> out;
  ColdCodec codec;
  for (const std::string& row : Sql(url,
                                    "SELECT first_seq || '|' || encode(data, 'hex') FROM message_blocks "
                                    "WHERE conversation_id = " + std::to_string(conversation),
                                    true)) {
    const size_t bar = row.find('|');
    std::string data;
    for (size_t i = bar + 1; i + 1 < row.size(); i += 2)
      data.push_back(static_cast<char>(std::stoi(row.substr(i, 2), nullptr, 16)));
    Result<std::vector<ColdEntry>> entries = codec.Unpack(std::stoll(row.substr(0, bar)), data);
    EXPECT_TRUE(entries.has_value());
    if (!entries) continue;
    for (ColdEntry& e : *entries) out[e.seq] = std::move(e.body);
  }
  return out;
}

// Two nodes compacting one conversation while a third edits and deletes its
// messages, then both purging: whatever the interleaving, every message
// reads back as its last change left it, each text was compacted at most
// once, and no deleted text is left in a block after the purges.
TEST(PgStoreTest, TwoNodesCompactingWhileMessagesChangeKeepEveryText) {
  std::string url = FreshDatabase();
  std::unique_ptr<Store> node1 = OpenPg(url);
  std::unique_ptr<Store> node2 = OpenPg(url);
  std::unique_ptr<Store> node3 = OpenPg(url);
  ASSERT_NE(node1, nullptr);
  ASSERT_NE(node2, nullptr);
  ASSERT_NE(node3, nullptr);
  const auto [a, b, da, c] = MakeTwoUsers(*node1);
  constexpr int kMessages = 3 * kColdBlockMessages;
  for (int i = 1; i <= kMessages; ++i)
    Must(Append(*node1, Msg(c, a.id, da.id, "m" + std::to_string(i), "text " + std::to_string(i), 2000 + i)));
  std::map<Seq, std::string> expected;
  for (int i = 1; i <= kMessages; ++i) expected[i] = "text " + std::to_string(i);

  std::atomic<int> compacted{0};
  auto compact = [&](Store& node) {
    for (int round = 0; round < 40; ++round) compacted += CompactOnce(node, 1'000'000, kColdBlockMessages / 2).messages;
  };
  auto change = [&] {
    for (Seq seq = 3; seq <= kMessages; seq += 3) {
      MessageChange ch;
      ch.kind = static_cast<int>(seq % 2 == 0 ? protocol::ChangeKind::kEdit : protocol::ChangeKind::kDelete);
      ch.conversation_id = c;
      ch.seq = seq;
      ch.user_id = a.id;
      ch.device_id = da.id;
      ch.client_id = "e" + std::to_string(seq);
      ch.body = "edited " + std::to_string(seq);
      ch.now = 5000;
      ch.edit_window_ms = ch.delete_window_ms = 1'000'000'000;
      Must(Await<ChangeResult>([&](auto cb) { node3->ChangeMessage(ch, cb); }));
      expected[seq] = seq % 2 == 0 ? ch.body : "";
    }
  };
  std::thread t1([&] { compact(*node1); });
  std::thread t2([&] { compact(*node2); });
  std::thread t3(change);
  t1.join();
  t2.join();
  t3.join();
  // What the race left due (a message held by a change) is compacted now.
  for (int round = 0; round < 10; ++round) compacted += CompactOnce(*node1, 1'000'000).messages;
  EXPECT_LE(compacted.load(), kMessages) << "a text compacted twice";
  EXPECT_EQ(Sql(url, "SELECT count(*) FROM messages WHERE cold AND deleted_at <> 0"), std::vector<std::string>{"0"})
      << "a tombstone pointing at a block";

  auto check = [&](Store& node) {
    std::vector<MessageRecord> history = History(node, c, 0, kMessages, a.id);
    ASSERT_EQ(history.size(), static_cast<size_t>(kMessages));
    for (const MessageRecord& m : history) EXPECT_EQ(m.body, expected[m.seq]) << "seq " << m.seq;
  };
  check(*node1);
  check(*node2);

  std::atomic<int64_t> removed{0};
  auto purge = [&](Store& node) {
    for (int step = 0; step < 20; ++step)
      removed += Must(Await<PurgeProgress>([&](auto cb) { node.PurgeDeleted(1'000'000, 7, cb); })).cold_removed;
  };
  std::thread p1([&] { purge(*node1); });
  std::thread p2([&] { purge(*node2); });
  p1.join();
  p2.join();
  const std::map<Seq, std::string> blocks = BlockTexts(url, c);
  for (const auto& [seq, text] : expected) {
    if (!text.empty()) continue;
    EXPECT_EQ(blocks.count(seq), 0u) << "the deleted text of seq " << seq << " is still in a block";
  }
  // A message never changed has its own text in its block.
  for (const auto& [seq, text] : blocks) {
    if (seq % 3 != 0) {
      EXPECT_EQ(text, expected[seq]);
    }
  }
  // Each deleted text left its block once at most (one deleted before the
  // compaction reached it never was in one).
  int64_t deleted = 0;
  for (const auto& [seq, text] : expected) deleted += text.empty() ? 1 : 0;
  EXPECT_LE(removed.load(), deleted);
  EXPECT_EQ(Sql(url, "SELECT count(*) FROM messages WHERE deleted_at <> 0 AND purged_at = 0"),
            std::vector<std::string>{"0"});
  check(*node1);
}

// ---- Query plans: history pages and the cold page-in ----

// One scan node of a plan: "Seq Scan", "Index Scan", "Index Scan Backward",
// "Index Only Scan", "Bitmap Index Scan", ...; the index it reads (index
// scans only) and the table (a partition; for a bitmap index scan, the
// partition its index belongs to).
struct PlanScan {
  std::string kind, index, table;
};

// A plan: its EXPLAIN text and its scans.
struct Plan {
  std::string text;
  std::vector<PlanScan> scans;
};

// The plan of `sql` (prepared with its parameters; `args` the EXECUTE
// argument list) as PostgreSQL makes it as a custom plan (for these values)
// or a generic one: the store runs prepared statements, which the plan
// cache may turn generic after five runs, so both must be right.
Plan PlanOf(const std::string& url, const std::string& sql, const std::string& args, bool generic) {
  OtherNode session(url);
  session.Exec(std::string("SET plan_cache_mode = ") + (generic ? "force_generic_plan" : "force_custom_plan"));
  session.Exec("PREPARE q AS " + sql);
  Plan plan;
  std::vector<PlanScan>& scans = plan.scans;
  static const std::regex kIndexScan(R"(((?:Index|Index Only) Scan(?: Backward)?) using (\S+) on (\S+))");
  static const std::regex kBitmapIndexScan(R"((Bitmap Index Scan) on ((\S+_p[0-9]+)_\S+))");
  static const std::regex kHeapScan(R"(((?:Seq|Tid|Sample) Scan) on (\S+))");
  for (const std::string& line : session.Rows("EXPLAIN EXECUTE q(" + args + ")")) {
    plan.text += line + "\n";
    std::smatch m;
    if (std::regex_search(line, m, kIndexScan)) {
      scans.push_back(PlanScan{m[1], m[2], m[3]});
    } else if (std::regex_search(line, m, kBitmapIndexScan)) {
      scans.push_back(PlanScan{m[1], m[2], m[3]});
    } else if (std::regex_search(line, m, kHeapScan)) {
      scans.push_back(PlanScan{m[1], "", m[2]});
    }
    // (A Bitmap Heap Scan reads what its Bitmap Index Scan found.)
  }
  return plan;
}

// `table`'s partitions are read only through their primary keys: every scan
// of one in `plan` is an index scan (plain, index-only or bitmap) on that
// partition's primary key, none a sequential scan, and there is at least one.
void ExpectPrimaryKeyScansOnly(const Plan& plan, const std::string& table, const std::string& what) {
  const std::regex partition(table + "_p[0-9]+");
  int on_table = 0;
  for (const PlanScan& scan : plan.scans) {
    if (!std::regex_match(scan.table, partition)) continue;
    ++on_table;
    EXPECT_NE(scan.kind.find("Index"), std::string::npos)
        << what << ": " << scan.kind << " on " << scan.table << "\n" << plan.text;
    EXPECT_EQ(scan.index, scan.table + "_pkey") << what << ": " << scan.kind << " on " << scan.table << "\n"
                                                << plan.text;
  }
  EXPECT_GT(on_table, 0) << what << ": no scan of " << table << "\n" << plan.text;
}

// The statements that page history in were checked by hand with EXPLAIN;
// this pins them, on tables big enough (and analyzed) for the planner to
// choose freely: a history page walks messages' primary key backwards and
// probes withheld's; its "stays sent" ranges scan withheld's primary key;
// the cold page-in (both variants) probes messages' and message_blocks'
// primary keys per wanted seq, the edit page-in edit_blocks'. No statement
// scans a partition whole, with a custom plan or a generic one. The SQL is
// the store's own (pg_history_sql.h, ColdPageInSql, ColdEditPageInSql).
TEST(PgStoreTest, HistoryAndPageInUseTheirIndexes) {
  std::string url = FreshDatabase();
  {
    std::unique_ptr<Store> store = OpenPg(url);  // migrates
    ASSERT_NE(store, nullptr);
  }
  // In each of the 16 partitions about 3,000 messages, 1,250 blocks and
  // 1,250 withheld rows: none small enough for a sequential scan to be the
  // cheaper way. Conversation 7, the one read, has a long history (what
  // history pages are for; a page of a short one may as well read it all).
  constexpr int kConversations = 1000;
  constexpr int kMessagesEach = 50;
  constexpr int kLongHistory = 5000;
  constexpr int kBlocksEach = 20;
  constexpr int kWithheldEach = 20;
  Sql(url, fmt::format("INSERT INTO messages(conversation_id, seq, sender_id, sender_device_id, client_id, body, "
                       "created_at, cold) SELECT c, s, 1 + s % 2, 1 + s % 2, 'c' || s, repeat('x', 100), 1000 + s, "
                       "s <= 50 FROM generate_series(1, {0}) c, "
                       "generate_series(1, CASE WHEN c = 7 THEN {2} ELSE {1} END) s",
                       kConversations, kMessagesEach, kLongHistory));
  Sql(url, fmt::format("INSERT INTO message_blocks(conversation_id, first_seq, last_seq, messages, raw_bytes, "
                       "created_at, nonce, data) SELECT c, 1 + b * 10, 10 + b * 10, 10, 1000, 1, b, "
                       "decode(repeat('ab', 200), 'hex') FROM generate_series(1, {0}) c, generate_series(0, {1}) b",
                       kConversations, kBlocksEach - 1));
  Sql(url, fmt::format("INSERT INTO withheld(conversation_id, user_id, seq) SELECT c, 2, s * 3 "
                       "FROM generate_series(1, {0}) c, generate_series(1, {1}) s",
                       kConversations, kWithheldEach));
  Sql(url, fmt::format("INSERT INTO edit_blocks(conversation_id, first_seq, last_seq, edits, raw_bytes, "
                       "created_at, nonce, data) SELECT c, 1 + b * 10, 10 + b * 10, 10, 1000, 1, b, "
                       "decode(repeat('ab', 200), 'hex') FROM generate_series(1, {0}) c, generate_series(0, {1}) b",
                       kConversations, kBlocksEach - 1));
  Sql(url, "ANALYZE messages, message_blocks, edit_blocks, withheld");

  // The newest page of conversation 7 as user 2 sees it; its "stays sent"
  // range; 50 of its seqs paged in, with 2 blocks cached.
  const std::string history_args = fmt::format("7, {}, 2, 50", std::numeric_limits<int64_t>::max());
  std::vector<std::string> conversations, seqs;
  for (int seq = 1; seq <= 50; ++seq) {  // the cold half
    conversations.push_back("7");
    seqs.push_back(std::to_string(seq));
  }
  const std::string page_in_args = fmt::format("'{{{}}}', '{{{}}}', '{{7, 7}}', '{{1, 11}}', '{{0, 1}}'",
                                               fmt::join(conversations, ","), fmt::join(seqs, ","));
  for (bool generic : {false, true}) {
    const std::string mode = generic ? "generic plan" : "custom plan";
    const Plan history = PlanOf(url, kHistoryPageSql, history_args, generic);
    ExpectPrimaryKeyScansOnly(history, "messages", "history page, " + mode);
    ExpectPrimaryKeyScansOnly(history, "withheld", "history page, " + mode);
    ExpectPrimaryKeyScansOnly(PlanOf(url, kWithheldInSql, "7, 2, 30, 60", generic), "withheld",
                              "stays sent, " + mode);
    for (bool lock_rows : {false, true}) {
      const std::string what = std::string(lock_rows ? "locked" : "plain") + " page-in, " + mode;
      const Plan page_in = PlanOf(url, ColdPageInSql(lock_rows), page_in_args, generic);
      ExpectPrimaryKeyScansOnly(page_in, "message_blocks", what);
      if (lock_rows) ExpectPrimaryKeyScansOnly(page_in, "messages", what);
      for (const PlanScan& scan : page_in.scans)
        EXPECT_EQ(scan.kind.find("Seq"), std::string::npos)
            << what << ": " << scan.kind << " on " << scan.table << "\n" << page_in.text;
    }
    // The page-in of compacted edit texts (the stream's kEdit events).
    const std::string edits_args =
        fmt::format("'{{{}}}', '{{{}}}'", fmt::join(conversations, ","), fmt::join(seqs, ","));
    const Plan edit_page_in = PlanOf(url, ColdEditPageInSql(), edits_args, generic);
    ExpectPrimaryKeyScansOnly(edit_page_in, "edit_blocks", "edit page-in, " + mode);
    for (const PlanScan& scan : edit_page_in.scans)
      EXPECT_EQ(scan.kind.find("Seq"), std::string::npos)
          << "edit page-in, " << mode << ": " << scan.kind << " on " << scan.table << "\n" << edit_page_in.text;
  }
}

}  // namespace
}  // namespace parley::store
