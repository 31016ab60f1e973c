// The Store conformance suite: the contract of store/store.h, checked through
// the interface only (save a few cold-tier tests that look at or break the
// stored blocks through Backend::sql), for every backend. A backend joins by
// adding an entry to Backends(); each test gets a fresh, empty store of its
// own (PostgreSQL: a fresh database on a real server that the test starts,
// pg_test_server.h).

#include <gtest/gtest.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <libpq-fe.h>
#include <sqlite3.h>

#include <algorithm>
#include <limits>
#include <cstdio>
#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/text_fold.h"
#include "store/change_events.h"
#include "store/cold_block.h"
#include "store/store.h"
#include "store/name_words.h"
#include "store/store_factory.h"
#include "store/pg_test_server.h"
#include "store/sqlite/sqlite_backup.h"
#include "store/sqlite/sqlite_store.h"
#include "store/store_test_util.h"
#include "protocol/edit_vectors.h"
#include "test_paths.h"

namespace parley::store {
namespace {

using namespace parley::store::testing;  // NOLINT: test helpers

// The stores' clock (it stamps messages' stored_at): fixed, so the tests
// can tell it from the caller's times.
constexpr int64_t kStoreClockMillis = 5'000;
class FixedClock final : public Clock {
 public:
  int64_t NowMillis() const override { return kStoreClockMillis; }
};
FixedClock fixed_clock;

using SqlRows = std::vector<std::vector<std::string>>;

struct Backend {
  std::string name;
  // Opens the backend's store keeping its data under `dir`; opening the same
  // dir again reopens the same data. `config` carries the test's settings
  // (e.g. a commit deadline); the backend fills in its own fields.
  std::function<Result<std::unique_ptr<Store>>(const std::string& dir, StoreConfig config)> open;
  // Runs `sql` on the data of the store opened on `dir` (closed by then) and
  // returns its rows, each column as text (NULL as ""), failing the test on
  // an error. Only for the few tests that must look under the interface (the
  // texts left in cold blocks) or break what it cannot (a block gone); the
  // SQL must read the same on both backends.
  std::function<SqlRows(const std::string& dir, const std::string& sql)> sql;
  // The SQL of a blob column's bytes as upper-case hex.
  std::function<std::string(const std::string& column)> hex;
};

// The database of the PostgreSQL store of data dir `dir`.
std::string PgDatabaseOf(const std::string& dir) { return fmt::format("t_{:x}", std::hash<std::string>()(dir)); }

SqlRows SqliteSql(const std::string& dir, const std::string& sql) {
  SqlRows out;
  sqlite3* db = nullptr;
  if (sqlite3_open((dir + "/data/parley.db").c_str(), &db) != SQLITE_OK) {
    ADD_FAILURE() << "cannot open the SQLite file: " << sqlite3_errmsg(db);
    sqlite3_close(db);
    return out;
  }
  sqlite3_stmt* stmt = nullptr;
  if (sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr) != SQLITE_OK) {
    ADD_FAILURE() << sql << ": " << sqlite3_errmsg(db);
  } else {
    int rc = SQLITE_ROW;
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
      std::vector<std::string> row;
      for (int i = 0; i < sqlite3_column_count(stmt); ++i) {
        const unsigned char* text = sqlite3_column_text(stmt, i);
        row.emplace_back(text == nullptr ? "" : reinterpret_cast<const char*>(text));
      }
      out.push_back(std::move(row));
    }
    if (rc != SQLITE_DONE) ADD_FAILURE() << sql << ": " << sqlite3_errmsg(db);
  }
  sqlite3_finalize(stmt);
  sqlite3_close(db);
  return out;
}

SqlRows PostgresSql(const std::string& dir, const std::string& sql) {
  SqlRows out;
  PGconn* conn = PQconnectdb(PgTestServer::Get().UrlOf(PgDatabaseOf(dir)).c_str());
  if (PQstatus(conn) != CONNECTION_OK) {
    ADD_FAILURE() << "cannot connect: " << PQerrorMessage(conn);
  } else {
    PGresult* r = PQexec(conn, sql.c_str());
    const ExecStatusType status = PQresultStatus(r);
    if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK) {
      ADD_FAILURE() << sql << ": " << PQerrorMessage(conn);
    } else {
      for (int i = 0; i < PQntuples(r); ++i) {
        std::vector<std::string> row;
        for (int j = 0; j < PQnfields(r); ++j) row.emplace_back(PQgetvalue(r, i, j));
        out.push_back(std::move(row));
      }
    }
    PQclear(r);
  }
  PQfinish(conn);
  return out;
}

std::vector<Backend> Backends() {
  return {
      {"sqlite",
       [](const std::string& dir, StoreConfig config) {
         config.backend = "sqlite";
         config.sqlite_path = dir + "/data/parley.db";  // the factory creates data/
         config.sqlite_cache_kib = 4096;
         config.clock = &fixed_clock;
         return OpenStore(config);
       },
       SqliteSql, [](const std::string& column) { return "hex(" + column + ")"; }},
      {"postgres",
       [](const std::string& dir, StoreConfig config) -> Result<std::unique_ptr<Store>> {
         // One database per data dir, on the process's test server.
         PgTestServer& server = PgTestServer::Get();
         if (!server.ok()) return Status(ErrorCode::kUnavailable, "no PostgreSQL test server");
         config.backend = "postgres";
         // Each test's database copies one already migrated (migrations
         // themselves are tested in pg_store_test).
         std::string schema = server.Template("parley_conformance_template", [](const std::string& url) {
           StoreConfig init;
           init.backend = "postgres";
           init.postgres_url = url;
           Result<std::unique_ptr<Store>> store = OpenStore(init);
           EXPECT_TRUE(store.has_value()) << store.error().ToString();
         });
         config.clock = &fixed_clock;
         config.postgres_url = server.Database(PgDatabaseOf(dir), schema);
         return OpenStore(config);
       },
       PostgresSql, [](const std::string& column) { return "upper(encode(" + column + ", 'hex'))"; }},
  };
}

class StoreConformance : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override { Reopen(); }
  void TearDown() override { store_.reset(); }

  // Closes the store (finishing its queued work) and opens the same data again.
  void Reopen(StoreConfig config = {}) {
    store_.reset();
    Result<std::unique_ptr<Store>> opened = GetParam().open(dir_.path(), std::move(config));
    ASSERT_TRUE(opened.has_value()) << opened.error().ToString();
    store_ = std::move(opened).value();
  }

  Store& store() { return *store_; }

  // Backend::sql on this test's data: the store is closed for it, then
  // opened again.
  SqlRows RawSql(const std::string& sql) {
    store_.reset();
    SqlRows rows = GetParam().sql(dir_.path(), sql);
    Reopen();
    return rows;
  }

  // A change of message `seq` in conv_ by `user` on `device`.
  MessageChange ChangeOf(protocol::ChangeKind kind, const UserRecord& user, const DeviceRecord& device, Seq seq,
                         int64_t now) const {
    MessageChange c;
    c.kind = static_cast<int>(kind);
    c.conversation_id = conv_;
    c.seq = seq;
    c.user_id = user.id;
    c.device_id = device.id;
    c.now = now;
    return c;
  }

  // An edit by alice (alice_dev_) of her message `seq` in conv_, well inside
  // the edit and delete windows.
  MessageChange AliceEdits(Seq seq, std::string client_id, std::string body, int64_t now) const {
    MessageChange edit = ChangeOf(protocol::ChangeKind::kEdit, alice_, alice_dev_, seq, now);
    edit.client_id = std::move(client_id);
    edit.body = std::move(body);
    edit.edit_window_ms = edit.delete_window_ms = 60'000;
    return edit;
  }

  // Bob (bob_dev_) deletes message `seq` of conv_ for himself.
  MessageChange BobHides(Seq seq, int64_t now) const {
    return ChangeOf(protocol::ChangeKind::kDeleteForMe, bob_, bob_dev_, seq, now);
  }

  // Three users with devices; alice and bob share conv_.
  void SetUpConversation() {
    alice_ = MakeUser(store(), "alice");
    bob_ = MakeUser(store(), "bob");
    carol_ = MakeUser(store(), "carol");
    alice_dev_ = MakeDevice(store(), alice_.id, "ta");
    bob_dev_ = MakeDevice(store(), bob_.id, "tb");
    bob_dev2_ = MakeDevice(store(), bob_.id, "tb2");
    carol_dev_ = MakeDevice(store(), carol_.id, "tc");
    conv_ = Open(store(), alice_.id, bob_.id).conversation.id;
  }

  AppendResult Send(const UserRecord& from, const DeviceRecord& dev, const std::string& client_id,
                    int64_t now = 2000) {
    return Must(Append(store(), Msg(conv_, from.id, dev.id, client_id, "body " + client_id, now)));
  }

  // A mutual block, the sequence chaos_short found (issue 3): alice's 2 and
  // 3 are withheld from bob (he blocked her); he unblocks; she blocks him, so
  // his 4 and 5 are hidden from her. His send of 4 raises his delivered
  // watermark over 2 and 3, but that message event reaches only his own
  // stream. She then unblocks him.
  void MutualBlock() {
    SetUpConversation();
    Send(alice_, alice_dev_, "a1");  // seq 1
    ASSERT_TRUE(Block(store(), bob_.id, alice_.id).has_value());
    Send(alice_, alice_dev_, "a2");  // 2, withheld from bob
    Send(alice_, alice_dev_, "a3");  // 3, withheld from bob
    ASSERT_TRUE(Unblock(store(), bob_.id, alice_.id).has_value());
    ASSERT_TRUE(Block(store(), alice_.id, bob_.id).has_value());
    AppendResult b4 = Send(bob_, bob_dev_, "b4");  // 4, hidden from alice
    ASSERT_EQ(b4.message.seq, 4);
    // bob's own stream has 2 and 3 listed now (above his delivered 1).
    EXPECT_EQ(b4.withheld, (std::vector<std::vector<Seq>>{{2, 3}}));
    Send(bob_, bob_dev_, "b5");  // 5, hidden from alice
    ASSERT_TRUE(Unblock(store(), alice_.id, bob_.id).has_value());
  }

  // An event that reached alice's and bob's streams (`positions`, with its
  // per-stream `withheld` lists): alice's lists `expected`, bob's nothing,
  // and each stored event reads as it went live.
  void ExpectListedOnlyInAlicesStream(const std::vector<StreamPosition>& positions,
                                      const std::vector<std::vector<Seq>>& withheld, const std::vector<Seq>& expected) {
    ASSERT_EQ(positions.size(), 2u);
    ASSERT_EQ(withheld.size(), 2u);
    for (size_t i = 0; i < 2; ++i) {
      const bool alices = positions[i].user_id == alice_.id;
      EXPECT_EQ(withheld[i], alices ? expected : std::vector<Seq>{}) << "stream of " << positions[i].user_id;
      StreamPage page = ReadStream(store(), positions[i].user_id, positions[i].user_seq - 1, 1);
      ASSERT_EQ(page.events.size(), 1u);
      EXPECT_EQ(page.events[0].withheld, withheld[i]) << "sync reads what went live";
    }
  }

  UserRecord alice_, bob_, carol_;
  DeviceRecord alice_dev_, bob_dev_, bob_dev2_, carol_dev_;
  ConversationId conv_ = 0;

  TempDir dir_;
  std::unique_ptr<Store> store_;
};

// ---- Users ----

TEST_P(StoreConformance, CreatesAndLooksUpUsers) {
  UserRecord alice = MakeUser(store(), "alice", 111);
  EXPECT_GT(alice.id, 0);
  EXPECT_EQ(alice.username, "alice");
  EXPECT_EQ(alice.created_at, 111);
  UserRecord bob = MakeUser(store(), "bob");
  EXPECT_NE(alice.id, bob.id);

  UserRecord by_name = Must(Await<UserRecord>([&](auto cb) { store().GetUserByName("alice", cb); }));
  EXPECT_EQ(by_name.id, alice.id);
  EXPECT_EQ(by_name.password_hash, "hash-of-alice");
  UserRecord by_id = Must(Await<UserRecord>([&](auto cb) { store().GetUserById(bob.id, cb); }));
  EXPECT_EQ(by_id.username, "bob");
}

TEST_P(StoreConformance, RejectsTakenUsername) {
  MakeUser(store(), "alice");
  Result<UserRecord> again = Await<UserRecord>([&](auto cb) { store().CreateUser("alice", "other", 5, cb); });
  ASSERT_FALSE(again.has_value());
  EXPECT_EQ(again.error().code(), ErrorCode::kUsernameTaken);
  // The failure is the op's alone: the store keeps working.
  EXPECT_GT(MakeUser(store(), "bob").id, 0);
}

TEST_P(StoreConformance, UnknownUsersAreReported) {
  Result<UserRecord> by_name = Await<UserRecord>([&](auto cb) { store().GetUserByName("nobody", cb); });
  ASSERT_FALSE(by_name.has_value());
  EXPECT_EQ(by_name.error().code(), ErrorCode::kUnknownUser);
  Result<UserRecord> by_id = Await<UserRecord>([&](auto cb) { store().GetUserById(4242, cb); });
  ASSERT_FALSE(by_id.has_value());
  EXPECT_EQ(by_id.error().code(), ErrorCode::kUnknownUser);
  Result<DeviceRecord> device =
      Await<DeviceRecord>([&](auto cb) { store().CreateDevice(4242, "x", "y", "token", "", 1, cb); });
  ASSERT_FALSE(device.has_value());
  EXPECT_EQ(device.error().code(), ErrorCode::kUnknownUser);
}

// ---- Devices ----

TEST_P(StoreConformance, FindsDevicesByTokenAndListsLiveOnes) {
  UserRecord alice = MakeUser(store(), "alice");
  // Token hashes are bytes, not text.
  const std::string hash1("\x01\x00\xff\x10", 4);
  const std::string hash2("\x02\x00\xff\x10", 4);
  DeviceRecord d1 = MakeDevice(store(), alice.id, hash1, 500);
  DeviceRecord d2 = MakeDevice(store(), alice.id, hash2, 600);
  EXPECT_EQ(d1.user_id, alice.id);
  EXPECT_EQ(d1.created_at, 500);

  DeviceRecord found = Must(DeviceByToken(store(), hash2));
  EXPECT_EQ(found.id, d2.id);
  EXPECT_EQ(found.user_id, alice.id);
  EXPECT_EQ(found.name, "phone");

  // The auth read carries the device's user and that user's stream head.
  UserRecord bob = MakeUser(store(), "bob");
  Open(store(), alice.id, bob.id);  // puts a conversation event in alice's stream
  AuthContext auth = Must(Await<AuthContext>([&](auto cb) { store().GetAuthContext(hash2, cb); }));
  EXPECT_EQ(auth.device.id, d2.id);
  EXPECT_EQ(auth.user.id, alice.id);
  EXPECT_EQ(auth.user.username, "alice");
  EXPECT_EQ(auth.head, Head(store(), alice.id));
  EXPECT_GT(auth.head, 0);

  Result<DeviceRecord> unknown = DeviceByToken(store(), std::string("\x03\x00", 2));
  ASSERT_FALSE(unknown.has_value());
  EXPECT_EQ(unknown.error().code(), ErrorCode::kInvalidToken);

  std::vector<DeviceRecord> list =
      Must(Await<std::vector<DeviceRecord>>([&](auto cb) { store().ListDevices(alice.id, cb); }));
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].id, d1.id);
  EXPECT_EQ(list[1].id, d2.id);
}

TEST_P(StoreConformance, NewDeviceCursorStartsAtUserHead) {
  UserRecord alice = MakeUser(store(), "alice");
  UserRecord bob = MakeUser(store(), "bob");
  DeviceRecord first = MakeDevice(store(), alice.id, "t1");
  EXPECT_EQ(first.cursor, 0);
  OpenResult conv = Open(store(), alice.id, bob.id);
  ASSERT_TRUE(Append(store(), Msg(conv.conversation.id, alice.id, first.id, "m1", "hi")).has_value());
  DeviceRecord second = MakeDevice(store(), alice.id, "t2");
  EXPECT_EQ(second.cursor, 2);  // conversation event + message event
  EXPECT_EQ(second.cursor, Head(store(), alice.id));
}

TEST_P(StoreConformance, RevokedDeviceLosesTokenAndCursor) {
  UserRecord alice = MakeUser(store(), "alice");
  UserRecord bob = MakeUser(store(), "bob");
  DeviceRecord phone = MakeDevice(store(), alice.id, "t-phone");
  DeviceRecord laptop = MakeDevice(store(), alice.id, "t-laptop");
  DeviceRecord bobs = MakeDevice(store(), bob.id, "t-bob");
  ConversationId c = Open(store(), alice.id, bob.id).conversation.id;
  ASSERT_TRUE(AwaitStatus([&](auto cb) { store().SetCursor(phone.id, 1, 5000, cb); }).ok());

  // Only the owner can revoke.
  EXPECT_EQ(AwaitStatus([&](auto cb) { store().RevokeDevice(bob.id, phone.id, cb); }).code(),
            ErrorCode::kUnknownDevice);
  ASSERT_TRUE(AwaitStatus([&](auto cb) { store().RevokeDevice(alice.id, phone.id, cb); }).ok());

  Result<DeviceRecord> by_token = DeviceByToken(store(), "t-phone");
  ASSERT_FALSE(by_token.has_value());
  EXPECT_EQ(by_token.error().code(), ErrorCode::kInvalidToken);
  std::vector<DeviceRecord> list =
      Must(Await<std::vector<DeviceRecord>>([&](auto cb) { store().ListDevices(alice.id, cb); }));
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].id, laptop.id);
  // A revoked device can do nothing any more.
  EXPECT_EQ(AwaitStatus([&](auto cb) { store().SetCursor(phone.id, 2, 6000, cb); }).code(),
            ErrorCode::kUnknownDevice);
  Result<ReceiptResult> receipt = UpdateReceipt(store(), Receipt(alice.id, phone.id, c, 0, 0));
  ASSERT_FALSE(receipt.has_value());
  EXPECT_EQ(receipt.error().code(), ErrorCode::kUnknownDevice);
  EXPECT_EQ(AwaitStatus([&](auto cb) { store().RevokeDevice(alice.id, phone.id, cb); }).code(),
            ErrorCode::kUnknownDevice);
  // Other devices are untouched.
  EXPECT_EQ(Must(DeviceByToken(store(), "t-bob")).id, bobs.id);
}

TEST_P(StoreConformance, CursorIsMonotonic) {
  UserRecord alice = MakeUser(store(), "alice");
  DeviceRecord d = MakeDevice(store(), alice.id, "t", 100);
  ASSERT_TRUE(AwaitStatus([&](auto cb) { store().SetCursor(d.id, 5, 200, cb); }).ok());
  ASSERT_TRUE(AwaitStatus([&](auto cb) { store().SetCursor(d.id, 3, 300, cb); }).ok());
  DeviceRecord now = Must(DeviceByToken(store(), "t"));
  EXPECT_EQ(now.cursor, 5);
  EXPECT_EQ(now.last_seen_at, 300);
  EXPECT_EQ(AwaitStatus([&](auto cb) { store().SetCursor(9999, 1, 1, cb); }).code(), ErrorCode::kUnknownDevice);
}

// ---- Conversations ----

TEST_P(StoreConformance, OpenDirectIsIdempotentAndAnnouncedToBoth) {
  UserRecord alice = MakeUser(store(), "alice");
  UserRecord bob = MakeUser(store(), "bob");
  OpenResult first = Open(store(), bob.id, alice.id, 700);
  EXPECT_TRUE(first.created);
  ASSERT_EQ(first.conversation.members.size(), 2u);
  EXPECT_EQ(first.conversation.members[0].user_id, alice.id);  // ordered by user id
  EXPECT_EQ(first.conversation.members[0].username, "alice");
  EXPECT_EQ(first.conversation.members[1].username, "bob");
  EXPECT_EQ(first.conversation.last_seq, 0);
  EXPECT_EQ(first.conversation.created_at, 700);
  EXPECT_EQ(first.conversation.last_activity_at, 700);
  ASSERT_EQ(first.positions.size(), 2u);
  EXPECT_EQ(first.positions[0].user_id, alice.id);
  EXPECT_EQ(first.positions[0].user_seq, 1);
  EXPECT_EQ(first.positions[1].user_id, bob.id);
  EXPECT_EQ(first.positions[1].user_seq, 1);

  OpenResult again = Open(store(), alice.id, bob.id, 800);
  EXPECT_FALSE(again.created);
  EXPECT_EQ(again.conversation.id, first.conversation.id);
  EXPECT_TRUE(again.positions.empty());
  EXPECT_EQ(Head(store(), alice.id), 1);
  EXPECT_EQ(Head(store(), bob.id), 1);

  for (UserId user : {alice.id, bob.id}) {
    StreamPage page = ReadStream(store(), user, 0, 10);
    ASSERT_EQ(page.events.size(), 1u);
    const StreamEvent& e = page.events[0];
    EXPECT_EQ(e.kind, EventKind::kConversation);
    EXPECT_EQ(e.user_seq, 1);
    EXPECT_EQ(e.conversation_id, first.conversation.id);
    EXPECT_EQ(e.created_at, 700);
    ASSERT_TRUE(e.conversation.has_value());
    ASSERT_EQ(e.conversation->members.size(), 2u);
    EXPECT_EQ(e.conversation->members[1].username, "bob");
  }

  ConversationRecord got =
      Must(Await<ConversationRecord>([&](auto cb) { store().GetConversation(first.conversation.id, cb); }));
  EXPECT_EQ(got.members.size(), 2u);
  EXPECT_EQ(got.created_at, 700);
}

TEST_P(StoreConformance, OpenDirectRejectsSelfAndUnknownUsers) {
  UserRecord alice = MakeUser(store(), "alice");
  Result<OpenResult> self = Await<OpenResult>([&](auto cb) { store().OpenDirect(alice.id, alice.id, 1, cb); });
  ASSERT_FALSE(self.has_value());
  EXPECT_EQ(self.error().code(), ErrorCode::kSelfConversation);
  Result<OpenResult> unknown = Await<OpenResult>([&](auto cb) { store().OpenDirect(alice.id, 777, 1, cb); });
  ASSERT_FALSE(unknown.has_value());
  EXPECT_EQ(unknown.error().code(), ErrorCode::kUnknownUser);
  EXPECT_EQ(Head(store(), alice.id), 0);
  Result<ConversationRecord> missing = Await<ConversationRecord>([&](auto cb) { store().GetConversation(31337, cb); });
  ASSERT_FALSE(missing.has_value());
  EXPECT_EQ(missing.error().code(), ErrorCode::kUnknownConversation);
}

// ---- Messages ----



TEST_P(StoreConformance, AppendAssignsGaplessSeqsAndStreamsToBothMembers) {
  SetUpConversation();
  for (int i = 1; i <= 5; ++i) {
    const UserRecord& from = i % 2 ? alice_ : bob_;
    AppendResult r = Send(from, i % 2 ? alice_dev_ : bob_dev_, "c" + std::to_string(i), 2000 + i);
    EXPECT_FALSE(r.duplicate);
    EXPECT_EQ(r.message.seq, i);
    EXPECT_EQ(r.message.sender_id, from.id);
    ASSERT_EQ(r.positions.size(), 2u);
    EXPECT_EQ(r.positions[0].user_id, alice_.id);
    EXPECT_EQ(r.positions[0].user_seq, i + 1);  // after the conversation event
    EXPECT_EQ(r.positions[1].user_id, bob_.id);
    EXPECT_EQ(r.positions[1].user_seq, i + 1);
  }
  ConversationRecord c = Must(Await<ConversationRecord>([&](auto cb) { store().GetConversation(conv_, cb); }));
  EXPECT_EQ(c.last_seq, 5);
  EXPECT_EQ(c.last_activity_at, 2005);

  StreamPage page = ReadStream(store(), bob_.id, 1, 100);
  ASSERT_EQ(page.events.size(), 5u);
  EXPECT_EQ(page.head, 6);
  EXPECT_FALSE(page.has_more);
  for (int i = 0; i < 5; ++i) {
    const StreamEvent& e = page.events[static_cast<size_t>(i)];
    EXPECT_EQ(e.kind, EventKind::kMessage);
    EXPECT_EQ(e.user_seq, i + 2);
    EXPECT_EQ(e.conversation_id, conv_);
    ASSERT_TRUE(e.message.has_value());
    EXPECT_EQ(e.message->seq, i + 1);
    EXPECT_EQ(e.message->client_id, "c" + std::to_string(i + 1));
    EXPECT_EQ(e.message->body, "body c" + std::to_string(i + 1));
    EXPECT_EQ(e.message->created_at, 2001 + i);
  }
  EXPECT_EQ(Head(store(), carol_.id), 0);  // not a member: nothing in her stream
}

TEST_P(StoreConformance, DuplicateReturnsOriginalAndAppendsNothing) {
  SetUpConversation();
  AppendResult first = Send(alice_, alice_dev_, "same");
  Send(bob_, bob_dev_, "other");
  UserSeq alice_head = Head(store(), alice_.id);
  UserSeq bob_head = Head(store(), bob_.id);

  AppendResult retry = Must(Append(store(), Msg(conv_, alice_.id, alice_dev_.id, "same", "changed body", 9999)));
  EXPECT_TRUE(retry.duplicate);
  EXPECT_EQ(retry.message.seq, first.message.seq);
  EXPECT_EQ(retry.message.body, "body same");
  EXPECT_EQ(retry.message.created_at, first.message.created_at);
  EXPECT_TRUE(retry.positions.empty());
  EXPECT_EQ(Head(store(), alice_.id), alice_head);
  EXPECT_EQ(Head(store(), bob_.id), bob_head);

  // The key includes the sender: bob may reuse alice's client id.
  AppendResult bobs = Send(bob_, bob_dev_, "same");
  EXPECT_FALSE(bobs.duplicate);
  EXPECT_EQ(bobs.message.seq, 3);

  // Duplicates queued together (one batch) still store one message.
  Collector<AppendResult> both(2);
  store().AppendMessage(Msg(conv_, alice_.id, alice_dev_.id, "twice", "x"), both.Slot(0));
  store().AppendMessage(Msg(conv_, alice_.id, alice_dev_.id, "twice", "x"), both.Slot(1));
  auto& results = both.Wait();
  ASSERT_TRUE(results[0]->has_value() && results[1]->has_value());
  EXPECT_FALSE((*results[0])->duplicate);
  EXPECT_TRUE((*results[1])->duplicate);
  EXPECT_EQ((*results[0])->message.seq, 4);
  EXPECT_EQ((*results[1])->message.seq, 4);
  EXPECT_EQ(History(store(), conv_, 0, 100).size(), 4u);

  // Once alice blocks bob she may not send to him, but a retry of a message
  // stored before the block still gets its stored copy.
  ASSERT_TRUE(Block(store(), alice_.id, bob_.id).has_value());
  AppendResult late = Must(Append(store(), Msg(conv_, alice_.id, alice_dev_.id, "same", "x")));
  EXPECT_TRUE(late.duplicate);
  EXPECT_EQ(late.message.seq, first.message.seq);
  Result<AppendResult> refused = Append(store(), Msg(conv_, alice_.id, alice_dev_.id, "new", "x"));
  ASSERT_FALSE(refused.has_value());
  EXPECT_EQ(refused.error().code(), ErrorCode::kBlocked);
}

TEST_P(StoreConformance, NonMembersAndUnknownConversationsAreRefused) {
  SetUpConversation();
  Result<AppendResult> outsider = Append(store(), Msg(conv_, carol_.id, carol_dev_.id, "x", "hi"));
  ASSERT_FALSE(outsider.has_value());
  EXPECT_EQ(outsider.error().code(), ErrorCode::kNotMember);
  Result<AppendResult> nowhere = Append(store(), Msg(424242, alice_.id, alice_dev_.id, "x", "hi"));
  ASSERT_FALSE(nowhere.has_value());
  EXPECT_EQ(nowhere.error().code(), ErrorCode::kUnknownConversation);
  Result<std::vector<MessageRecord>> history =
      Await<std::vector<MessageRecord>>([&](auto cb) { store().History(424242, 0, 0, 10, cb); });
  ASSERT_FALSE(history.has_value());
  EXPECT_EQ(history.error().code(), ErrorCode::kUnknownConversation);
  // Nothing was written.
  EXPECT_EQ(Send(alice_, alice_dev_, "first").message.seq, 1);
  EXPECT_EQ(Head(store(), carol_.id), 0);
}

TEST_P(StoreConformance, ConcurrentAppendsGetEverySeqOnce) {
  SetUpConversation();
  constexpr int kPerThread = 1000;
  std::vector<std::vector<Seq>> seqs(2);
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      const UserRecord& from = t == 0 ? alice_ : bob_;
      const DeviceRecord& dev = t == 0 ? alice_dev_ : bob_dev_;
      Collector<AppendResult> results(kPerThread);
      for (int i = 0; i < kPerThread; ++i) {
        store().AppendMessage(Msg(conv_, from.id, dev.id, "t" + std::to_string(t) + "-" + std::to_string(i), "x"),
                              results.Slot(static_cast<size_t>(i)));
      }
      for (auto& r : results.Wait()) seqs[static_cast<size_t>(t)].push_back(r->has_value() ? (*r)->message.seq : -1);
    });
  }
  for (auto& th : threads) th.join();
  std::vector<Seq> all;
  for (auto& per_thread : seqs) {
    // Writes from one thread apply in submission order.
    EXPECT_TRUE(std::is_sorted(per_thread.begin(), per_thread.end()));
    all.insert(all.end(), per_thread.begin(), per_thread.end());
  }
  std::sort(all.begin(), all.end());
  ASSERT_EQ(all.size(), 2u * kPerThread);
  for (size_t i = 0; i < all.size(); ++i) ASSERT_EQ(all[i], static_cast<Seq>(i + 1));
  EXPECT_EQ(Head(store(), alice_.id), 2 * kPerThread + 1);
  EXPECT_EQ(Head(store(), bob_.id), 2 * kPerThread + 1);
}

// ---- Receipts ----

TEST_P(StoreConformance, ReceiptsAreMonotonicAndReadImpliesDelivered) {
  SetUpConversation();
  for (int i = 0; i < 5; ++i) Send(alice_, alice_dev_, "m" + std::to_string(i));
  ReceiptResult r = Must(UpdateReceipt(store(), Receipt(bob_.id, bob_dev_.id, conv_, 0, 3)));
  EXPECT_TRUE(r.changed);
  EXPECT_EQ(r.aggregate.delivered, 3);
  EXPECT_EQ(r.aggregate.read, 3);
  UserSeq alice_head = Head(store(), alice_.id);
  UserSeq bob_head = Head(store(), bob_.id);

  ReceiptResult older = Must(UpdateReceipt(store(), Receipt(bob_.id, bob_dev_.id, conv_, 2, 2)));
  EXPECT_FALSE(older.changed);
  EXPECT_EQ(older.aggregate.read, 3);
  EXPECT_TRUE(older.positions.empty());
  EXPECT_EQ(Head(store(), alice_.id), alice_head);
  EXPECT_EQ(Head(store(), bob_.id), bob_head);

  ReceiptResult delivered = Must(UpdateReceipt(store(), Receipt(bob_.id, bob_dev_.id, conv_, 5, 0)));
  EXPECT_TRUE(delivered.changed);
  EXPECT_EQ(delivered.aggregate.delivered, 5);
  EXPECT_EQ(delivered.aggregate.read, 3);
}

TEST_P(StoreConformance, AggregateIsTheMaximumOverDevices) {
  SetUpConversation();
  for (int i = 0; i < 5; ++i) Send(alice_, alice_dev_, "m" + std::to_string(i));
  EXPECT_TRUE(Must(UpdateReceipt(store(), Receipt(bob_.id, bob_dev_.id, conv_, 0, 4))).changed);
  // The second device is behind: its watermark moves, the aggregate does not.
  ReceiptResult behind = Must(UpdateReceipt(store(), Receipt(bob_.id, bob_dev2_.id, conv_, 0, 2)));
  EXPECT_FALSE(behind.changed);
  EXPECT_EQ(behind.aggregate.read, 4);
  ReceiptResult ahead = Must(UpdateReceipt(store(), Receipt(bob_.id, bob_dev2_.id, conv_, 0, 5)));
  EXPECT_TRUE(ahead.changed);
  EXPECT_EQ(ahead.aggregate.read, 5);
  EXPECT_EQ(ahead.aggregate.delivered, 5);
  // Revoking the device that holds the maximum never lowers the aggregate.
  ASSERT_TRUE(AwaitStatus([&](auto cb) { store().RevokeDevice(bob_.id, bob_dev2_.id, cb); }).ok());
  ReceiptResult after = Must(UpdateReceipt(store(), Receipt(bob_.id, bob_dev_.id, conv_, 0, 4)));
  EXPECT_FALSE(after.changed);
  EXPECT_EQ(after.aggregate.read, 5);
}

TEST_P(StoreConformance, ReceiptsAreClampedToLastSeq) {
  SetUpConversation();
  for (int i = 0; i < 3; ++i) Send(alice_, alice_dev_, "m" + std::to_string(i));
  ReceiptResult r = Must(UpdateReceipt(store(), Receipt(bob_.id, bob_dev_.id, conv_, 100, 50)));
  EXPECT_TRUE(r.changed);
  EXPECT_EQ(r.aggregate.delivered, 3);
  EXPECT_EQ(r.aggregate.read, 3);
  // Once more messages arrive, the clamped watermark did not jump ahead of them.
  Send(alice_, alice_dev_, "m3");
  ReceiptResult next = Must(UpdateReceipt(store(), Receipt(bob_.id, bob_dev_.id, conv_, 4, 0)));
  EXPECT_TRUE(next.changed);
  EXPECT_EQ(next.aggregate.delivered, 4);
  EXPECT_EQ(next.aggregate.read, 3);
}

TEST_P(StoreConformance, ReceiptChangesReachBothMembersStreams) {
  SetUpConversation();
  Send(alice_, alice_dev_, "m1");
  Send(alice_, alice_dev_, "m2");
  ReceiptResult r = Must(UpdateReceipt(store(), Receipt(bob_.id, bob_dev_.id, conv_, 2, 1, 4444)));
  ASSERT_TRUE(r.changed);
  ASSERT_EQ(r.positions.size(), 2u);
  EXPECT_EQ(r.positions[0].user_id, alice_.id);
  EXPECT_EQ(r.positions[1].user_id, bob_.id);
  for (const StreamPosition& pos : r.positions) {
    StreamPage page = ReadStream(store(), pos.user_id, pos.user_seq - 1, 10);
    ASSERT_EQ(page.events.size(), 1u);
    const StreamEvent& e = page.events[0];
    EXPECT_EQ(e.kind, EventKind::kReceipt);
    EXPECT_EQ(e.user_seq, pos.user_seq);
    EXPECT_EQ(e.conversation_id, conv_);
    EXPECT_EQ(e.receipt_user_id, bob_.id);
    EXPECT_EQ(e.receipt.delivered, 2);
    EXPECT_EQ(e.receipt.read, 1);
    EXPECT_EQ(e.created_at, 4444);
  }
}

TEST_P(StoreConformance, ReceiptsOutsideTheConversationAreRefused) {
  SetUpConversation();
  Send(alice_, alice_dev_, "m1");
  Result<ReceiptResult> outsider = UpdateReceipt(store(), Receipt(carol_.id, carol_dev_.id, conv_, 1, 1));
  ASSERT_FALSE(outsider.has_value());
  EXPECT_EQ(outsider.error().code(), ErrorCode::kNotMember);
  Result<ReceiptResult> nowhere = UpdateReceipt(store(), Receipt(bob_.id, bob_dev_.id, 999999, 1, 1));
  ASSERT_FALSE(nowhere.has_value());
  EXPECT_EQ(nowhere.error().code(), ErrorCode::kUnknownConversation);
  // Somebody else's device.
  Result<ReceiptResult> foreign = UpdateReceipt(store(), Receipt(bob_.id, alice_dev_.id, conv_, 1, 1));
  ASSERT_FALSE(foreign.has_value());
  EXPECT_EQ(foreign.error().code(), ErrorCode::kUnknownDevice);
}

// ---- History and sync ----

TEST_P(StoreConformance, HistoryPagesBackwardsOverTheWholeHistoryOnce) {
  SetUpConversation();
  constexpr int kMessages = 23;
  for (int i = 1; i <= kMessages; ++i) Send(i % 3 ? alice_ : bob_, i % 3 ? alice_dev_ : bob_dev_, std::to_string(i));
  std::vector<std::vector<MessageRecord>> pages;
  Seq before = 0;
  for (;;) {
    std::vector<MessageRecord> page = History(store(), conv_, before, 5);
    if (page.empty()) break;
    ASSERT_TRUE(std::is_sorted(page.begin(), page.end(),
                               [](const MessageRecord& a, const MessageRecord& b) { return a.seq < b.seq; }));
    before = page.front().seq;
    pages.push_back(std::move(page));
    ASSERT_LE(pages.size(), 10u);
  }
  EXPECT_EQ(pages.front().size(), 5u);
  EXPECT_EQ(pages.front().back().seq, kMessages);  // first page: the newest
  std::vector<Seq> all;
  for (auto it = pages.rbegin(); it != pages.rend(); ++it) {
    for (const MessageRecord& m : *it) all.push_back(m.seq);
  }
  ASSERT_EQ(all.size(), static_cast<size_t>(kMessages));
  for (int i = 0; i < kMessages; ++i) EXPECT_EQ(all[static_cast<size_t>(i)], i + 1);
  EXPECT_TRUE(History(store(), conv_, 0, 0).empty());
}

TEST_P(StoreConformance, ReadStreamPagesAreContiguousWithHasMore) {
  SetUpConversation();
  for (int i = 1; i <= 25; ++i) Send(alice_, alice_dev_, std::to_string(i));
  // bob: 1 conversation event + 25 messages.
  UserSeq after = 0;
  std::vector<UserSeq> seen;
  std::vector<bool> has_more;
  for (int guard = 0; guard < 10; ++guard) {
    StreamPage page = ReadStream(store(), bob_.id, after, 10);
    EXPECT_EQ(page.head, 26);
    has_more.push_back(page.has_more);
    for (const StreamEvent& e : page.events) seen.push_back(e.user_seq);
    if (!page.has_more) break;
    after = page.events.back().user_seq;
  }
  EXPECT_EQ(has_more, (std::vector<bool>{true, true, false}));
  ASSERT_EQ(seen.size(), 26u);
  for (size_t i = 0; i < seen.size(); ++i) EXPECT_EQ(seen[i], static_cast<UserSeq>(i + 1));
  // A page that ends exactly at the head has nothing more.
  StreamPage exact = ReadStream(store(), bob_.id, 16, 10);
  EXPECT_EQ(exact.events.size(), 10u);
  EXPECT_FALSE(exact.has_more);
  StreamPage at_head = ReadStream(store(), bob_.id, 26, 10);
  EXPECT_TRUE(at_head.events.empty());
  EXPECT_FALSE(at_head.has_more);
}

TEST_P(StoreConformance, SnapshotCountsUnreadAndOrdersByActivity) {
  SetUpConversation();
  for (int i = 1; i <= 3; ++i) Send(alice_, alice_dev_, "a" + std::to_string(i), 2000 + i);
  for (int i = 1; i <= 2; ++i) Send(bob_, bob_dev_, "b" + std::to_string(i), 2010 + i);
  ConversationId with_carol = Open(store(), alice_.id, carol_.id, 2500).conversation.id;
  ASSERT_TRUE(Append(store(), Msg(with_carol, carol_.id, carol_dev_.id, "c1", "hey", 3000)).has_value());

  Snapshot snap = Must(Await<Snapshot>([&](auto cb) { store().GetSnapshot(alice_.id, 2, cb); }));
  EXPECT_EQ(snap.head, Head(store(), alice_.id));
  ASSERT_EQ(snap.conversations.size(), 2u);
  EXPECT_EQ(snap.conversations[0].conversation.id, with_carol);  // most recent activity first
  EXPECT_EQ(snap.conversations[0].unread, 1);
  const ConversationSummary& ab = snap.conversations[1];
  EXPECT_EQ(ab.conversation.id, conv_);
  EXPECT_EQ(ab.conversation.last_seq, 5);
  ASSERT_EQ(ab.latest.size(), 2u);
  EXPECT_EQ(ab.latest[0].seq, 4);
  EXPECT_EQ(ab.latest[1].seq, 5);
  // alice's sends advanced her own read watermark to 3: bob's 4 and 5 are unread.
  EXPECT_EQ(ab.unread, 2);
  ASSERT_EQ(ab.watermarks.size(), 2u);
  EXPECT_EQ(ab.watermarks[0].first, alice_.id);
  EXPECT_EQ(ab.watermarks[0].second.read, 3);
  EXPECT_EQ(ab.watermarks[0].second.delivered, 3);
  EXPECT_EQ(ab.watermarks[1].first, bob_.id);
  EXPECT_EQ(ab.watermarks[1].second.read, 5);  // bob sent the last message

  // Own messages are never unread, and sending marks what came before as read.
  Snapshot bobs = Must(Await<Snapshot>([&](auto cb) { store().GetSnapshot(bob_.id, 10, cb); }));
  ASSERT_EQ(bobs.conversations.size(), 1u);
  EXPECT_EQ(bobs.conversations[0].unread, 0);
  EXPECT_EQ(bobs.conversations[0].latest.size(), 5u);

  ASSERT_TRUE(Must(UpdateReceipt(store(), Receipt(alice_.id, alice_dev_.id, conv_, 0, 4))).changed);
  Snapshot later = Must(Await<Snapshot>([&](auto cb) { store().GetSnapshot(alice_.id, 2, cb); }));
  EXPECT_EQ(later.conversations[1].unread, 1);
}

// Selective sync's summaries (issue 12 item 3): last seq and unread count as
// the snapshot has them, blocks and deletes-for-me honoured, non-members left out.
TEST_P(StoreConformance, ConversationStatesMatchTheSnapshotAndHonourVisibility) {
  SetUpConversation();
  for (int i = 1; i <= 2; ++i) Send(alice_, alice_dev_, "a" + std::to_string(i), 2000 + i);
  for (int i = 1; i <= 3; ++i) Send(bob_, bob_dev_, "b" + std::to_string(i), 2010 + i);  // seqs 3..5
  ConversationId with_carol = Open(store(), bob_.id, carol_.id, 2500).conversation.id;
  ConversationId alice_carol = Open(store(), alice_.id, carol_.id, 2600).conversation.id;
  ASSERT_TRUE(Append(store(), Msg(alice_carol, carol_.id, carol_dev_.id, "c1", "hey", 3000)).has_value());
  auto states = [&](UserId user, std::vector<ConversationId> ids) {
    return Must(Await<std::vector<ConversationState>>([&](auto cb) { store().GetConversationStates(user, ids, cb); }));
  };

  // In the order asked; not-member and unknown ids left out.
  std::vector<ConversationState> got = states(alice_.id, {alice_carol, with_carol, 999999, conv_});
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].conversation_id, alice_carol);
  EXPECT_EQ(got[0].last_seq, 1);
  EXPECT_EQ(got[0].unread, 1);
  EXPECT_EQ(got[1].conversation_id, conv_);
  EXPECT_EQ(got[1].last_seq, 5);
  EXPECT_EQ(got[1].unread, 3);
  EXPECT_TRUE(states(alice_.id, {}).empty());
  // The same values as the snapshot's, for every conversation.
  for (const ConversationSummary& s : GetSnapshot(store(), alice_.id, 0).conversations) {
    std::vector<ConversationState> one = states(alice_.id, {s.conversation.id});
    ASSERT_EQ(one.size(), 1u);
    EXPECT_EQ(one[0].last_seq, s.conversation.last_seq);
    EXPECT_EQ(one[0].unread, s.unread);
  }

  // A read moves the count; a delete-for-me of an unread message drops it
  // from the count (not from last_seq, as in the snapshot).
  ASSERT_TRUE(Must(UpdateReceipt(store(), Receipt(alice_.id, alice_dev_.id, conv_, 0, 3))).changed);
  EXPECT_EQ(states(alice_.id, {conv_})[0].unread, 2);
  MessageChange hide = ChangeOf(protocol::ChangeKind::kDeleteForMe, alice_, alice_dev_, 4, 4000);
  ASSERT_TRUE(Await<ChangeResult>([&](auto cb) { store().ChangeMessage(hide, cb); }).has_value());
  got = states(alice_.id, {conv_});
  EXPECT_EQ(got[0].unread, 1);
  Snapshot snap = GetSnapshot(store(), alice_.id, 0);
  for (const ConversationSummary& s : snap.conversations) {
    if (s.conversation.id != conv_) continue;
    EXPECT_EQ(got[0].last_seq, s.conversation.last_seq);
    EXPECT_EQ(got[0].unread, s.unread);
  }

  // Messages withheld by a block never show, neither as last_seq nor unread.
  ASSERT_TRUE(Block(store(), alice_.id, bob_.id).has_value());
  Send(bob_, bob_dev_, "b4", 5000);  // seq 6, withheld from alice
  got = states(alice_.id, {conv_});
  EXPECT_EQ(got[0].last_seq, 5);
  EXPECT_EQ(got[0].unread, 1);
  std::vector<ConversationState> bobs = states(bob_.id, {conv_});
  ASSERT_EQ(bobs.size(), 1u);
  EXPECT_EQ(bobs[0].last_seq, 6);
  EXPECT_EQ(bobs[0].unread, 0);
}

TEST_P(StoreConformance, SendingAdvancesOwnReadWatermark) {
  SetUpConversation();
  for (int i = 1; i <= 3; ++i) Send(alice_, alice_dev_, "a" + std::to_string(i));
  Snapshot before = Must(Await<Snapshot>([&](auto cb) { store().GetSnapshot(bob_.id, 0, cb); }));
  ASSERT_EQ(before.conversations.size(), 1u);
  EXPECT_EQ(before.conversations[0].unread, 3);
  EXPECT_TRUE(before.conversations[0].latest.empty());
  Send(bob_, bob_dev_, "reply");
  Snapshot after = Must(Await<Snapshot>([&](auto cb) { store().GetSnapshot(bob_.id, 0, cb); }));
  EXPECT_EQ(after.conversations[0].unread, 0);
  // No receipt event for it: bob's stream only gained the message.
  EXPECT_EQ(Head(store(), bob_.id), 5);
}

// ---- Profiles ----

TEST_P(StoreConformance, ProfilesAreSetReadAndShownOnUsers) {
  UserRecord alice = MakeUser(store(), "alice");
  UserRecord bob = MakeUser(store(), "bob");
  EXPECT_EQ(alice.display_name, "");
  SocialResult set = Must(SetProfile(store(), alice.id, "Alice Liddell", std::nullopt, 6000));
  EXPECT_TRUE(set.changed);
  EXPECT_EQ(set.profile.user_id, alice.id);
  EXPECT_EQ(set.profile.username, "alice");
  EXPECT_EQ(set.profile.display_name, "Alice Liddell");
  EXPECT_EQ(set.profile.about, "");
  EXPECT_EQ(set.profile.updated_at, 6000);
  SocialResult about = Must(SetProfile(store(), alice.id, std::nullopt, "down the rabbit hole", 6100));
  EXPECT_TRUE(about.changed);
  EXPECT_EQ(about.profile.display_name, "Alice Liddell");  // nullopt: unchanged
  EXPECT_EQ(about.profile.about, "down the rabbit hole");

  // Setting what is already there changes nothing and appends nothing.
  UserSeq head = Head(store(), alice.id);
  SocialResult same = Must(SetProfile(store(), alice.id, "Alice Liddell", "down the rabbit hole", 6200));
  EXPECT_FALSE(same.changed);
  EXPECT_TRUE(same.positions.empty());
  EXPECT_EQ(same.profile.updated_at, 6100);
  EXPECT_EQ(Head(store(), alice.id), head);

  UserRecord by_name = Must(Await<UserRecord>([&](auto cb) { store().GetUserByName("alice", cb); }));
  EXPECT_EQ(by_name.display_name, "Alice Liddell");
  EXPECT_EQ(by_name.about, "down the rabbit hole");
  UserRecord by_id = Must(Await<UserRecord>([&](auto cb) { store().GetUserById(alice.id, cb); }));
  EXPECT_EQ(by_id.display_name, "Alice Liddell");

  // In the given order; unknown ids left out.
  std::vector<ProfileRecord> profiles = Must(
      Await<std::vector<ProfileRecord>>([&](auto cb) { store().GetProfiles(0, {bob.id, 4242, alice.id}, cb); }));
  ASSERT_EQ(profiles.size(), 2u);
  EXPECT_EQ(profiles[0].username, "bob");
  EXPECT_EQ(profiles[0].display_name, "");
  EXPECT_EQ(profiles[1].display_name, "Alice Liddell");
  EXPECT_EQ(profiles[1].updated_at, 6100);

  Result<SocialResult> unknown = SetProfile(store(), 4242, "x", std::nullopt);
  ASSERT_FALSE(unknown.has_value());
  EXPECT_EQ(unknown.error().code(), ErrorCode::kUnknownUser);

  Reopen();
  EXPECT_EQ(Must(Await<UserRecord>([&](auto cb) { store().GetUserById(alice.id, cb); })).about,
            "down the rabbit hole");
}

TEST_P(StoreConformance, ProfileChangeReachesItsAudienceOnceEach) {
  SetUpConversation();  // alice and bob share conv_
  UserRecord dave = MakeUser(store(), "dave");
  UserRecord erin = MakeUser(store(), "erin");
  UserRecord frank = MakeUser(store(), "frank");
  ASSERT_TRUE(AddContact(store(), carol_.id, alice_.id).has_value());  // carol has alice as a contact
  Open(store(), alice_.id, dave.id);                                  // dave shares a conversation...
  ASSERT_TRUE(AddContact(store(), dave.id, alice_.id).has_value());   // ...and has her as a contact
  Open(store(), alice_.id, erin.id);                                  // erin shares one, but alice blocks her
  ASSERT_TRUE(Block(store(), alice_.id, erin.id).has_value());
  ASSERT_TRUE(AddContact(store(), alice_.id, frank.id).has_value());  // alice's contact, not the reverse
  UserSeq erin_head = Head(store(), erin.id);
  UserSeq frank_head = Head(store(), frank.id);

  SocialResult r = Must(SetProfile(store(), alice_.id, "Alice", "hi", 7000));
  ASSERT_TRUE(r.changed);
  std::vector<UserId> got;
  for (const StreamPosition& pos : r.positions) got.push_back(pos.user_id);
  std::vector<UserId> want{alice_.id, bob_.id, carol_.id, dave.id};
  std::sort(got.begin(), got.end());
  std::sort(want.begin(), want.end());
  EXPECT_EQ(got, want);
  EXPECT_EQ(Head(store(), erin.id), erin_head);
  EXPECT_EQ(Head(store(), frank.id), frank_head);
  for (const StreamPosition& pos : r.positions) {
    EXPECT_EQ(Head(store(), pos.user_id), pos.user_seq);
    StreamPage page = ReadStream(store(), pos.user_id, pos.user_seq - 1, 10);
    ASSERT_EQ(page.events.size(), 1u);
    const StreamEvent& e = page.events[0];
    EXPECT_EQ(e.kind, EventKind::kProfile);
    EXPECT_EQ(e.created_at, 7000);
    ASSERT_TRUE(e.profile.has_value());
    EXPECT_EQ(e.profile->user_id, alice_.id);
    EXPECT_EQ(e.profile->username, "alice");
    EXPECT_EQ(e.profile->display_name, "Alice");
    EXPECT_EQ(e.profile->about, "hi");
    EXPECT_EQ(e.profile->updated_at, 7000);
  }
  // The event keeps the profile as it was, also after a later change.
  UserSeq first = r.positions[0].user_seq;
  ASSERT_TRUE(Must(SetProfile(store(), alice_.id, "Alice \"Quoted\" \\ \x01", std::nullopt, 7100)).changed);
  StreamPage old = ReadStream(store(), alice_.id, first - 1, 10);
  ASSERT_EQ(old.events.size(), 2u);
  EXPECT_EQ(old.events[0].profile->display_name, "Alice");
  EXPECT_EQ(old.events[1].profile->display_name, "Alice \"Quoted\" \\ \x01");
}

// ---- Contacts ----

TEST_P(StoreConformance, ContactsAreAddedListedAndRemovedWithEvents) {
  UserRecord alice = MakeUser(store(), "alice");
  UserRecord zed = MakeUser(store(), "zed");
  UserRecord bob = MakeUser(store(), "bob");
  ASSERT_TRUE(SetProfile(store(), zed.id, "Zed", std::nullopt).has_value());
  UserSeq zed_head = Head(store(), zed.id);

  SocialResult added = Must(AddContact(store(), alice.id, zed.id, 8000));
  EXPECT_TRUE(added.changed);
  EXPECT_EQ(added.profile.user_id, zed.id);
  EXPECT_EQ(added.profile.display_name, "Zed");
  ASSERT_EQ(added.positions.size(), 1u);
  EXPECT_EQ(added.positions[0].user_id, alice.id);
  ASSERT_TRUE(AddContact(store(), alice.id, bob.id, 8100).has_value());
  EXPECT_EQ(Head(store(), zed.id), zed_head);  // only the owner's stream

  StreamPage page = ReadStream(store(), alice.id, 0, 10);
  ASSERT_EQ(page.events.size(), 2u);
  EXPECT_EQ(page.events[0].kind, EventKind::kContact);
  EXPECT_TRUE(page.events[0].flag);
  ASSERT_TRUE(page.events[0].profile.has_value());
  EXPECT_EQ(page.events[0].profile->user_id, zed.id);
  EXPECT_EQ(page.events[0].profile->display_name, "Zed");
  EXPECT_EQ(page.events[0].created_at, 8000);

  std::vector<ContactRecord> list =
      Must(Await<std::vector<ContactRecord>>([&](auto cb) { store().ListContacts(alice.id, cb); }));
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].profile.username, "bob");  // ascending username
  EXPECT_EQ(list[0].added_at, 8100);
  EXPECT_EQ(list[1].profile.username, "zed");
  EXPECT_EQ(list[1].profile.display_name, "Zed");

  auto code = [](const Result<SocialResult>& r) { return r.has_value() ? ErrorCode::kOk : r.error().code(); };
  EXPECT_EQ(code(AddContact(store(), alice.id, zed.id)), ErrorCode::kAlreadyContact);
  EXPECT_EQ(code(AddContact(store(), alice.id, alice.id)), ErrorCode::kSelfContact);
  EXPECT_EQ(code(AddContact(store(), alice.id, 4242)), ErrorCode::kUnknownUser);
  EXPECT_EQ(code(Await<SocialResult>([&](auto cb) { store().RemoveContact(zed.id, alice.id, 1, cb); })),
            ErrorCode::kNotContact);

  SocialResult removed =
      Must(Await<SocialResult>([&](auto cb) { store().RemoveContact(alice.id, zed.id, 8200, cb); }));
  EXPECT_TRUE(removed.changed);
  ASSERT_EQ(removed.positions.size(), 1u);
  StreamPage last = ReadStream(store(), alice.id, removed.positions[0].user_seq - 1, 10);
  ASSERT_EQ(last.events.size(), 1u);
  EXPECT_EQ(last.events[0].kind, EventKind::kContact);
  EXPECT_FALSE(last.events[0].flag);
  EXPECT_EQ(last.events[0].profile->user_id, zed.id);
  list = Must(Await<std::vector<ContactRecord>>([&](auto cb) { store().ListContacts(alice.id, cb); }));
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].profile.username, "bob");
  EXPECT_EQ(code(Await<SocialResult>([&](auto cb) { store().RemoveContact(alice.id, zed.id, 1, cb); })),
            ErrorCode::kNotContact);
}

// ---- Blocking ----

TEST_P(StoreConformance, BlocksAreListedAndAnnouncedToTheOwnerOnly) {
  UserRecord alice = MakeUser(store(), "alice");
  UserRecord zed = MakeUser(store(), "zed");
  UserRecord bob = MakeUser(store(), "bob");
  SocialResult blocked = Must(Block(store(), alice.id, zed.id, 9000));
  EXPECT_TRUE(blocked.changed);
  EXPECT_EQ(blocked.profile.user_id, zed.id);
  ASSERT_EQ(blocked.positions.size(), 1u);
  EXPECT_EQ(blocked.positions[0].user_id, alice.id);
  ASSERT_TRUE(Block(store(), alice.id, bob.id).has_value());
  EXPECT_EQ(Head(store(), zed.id), 0);

  StreamPage page = ReadStream(store(), alice.id, 0, 10);
  ASSERT_EQ(page.events.size(), 2u);
  EXPECT_EQ(page.events[0].kind, EventKind::kBlock);
  EXPECT_TRUE(page.events[0].flag);
  EXPECT_EQ(page.events[0].profile->username, "zed");

  std::vector<ProfileRecord> list =
      Must(Await<std::vector<ProfileRecord>>([&](auto cb) { store().ListBlocked(alice.id, cb); }));
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].username, "bob");
  EXPECT_EQ(list[1].username, "zed");

  auto code = [](const Result<SocialResult>& r) { return r.has_value() ? ErrorCode::kOk : r.error().code(); };
  EXPECT_EQ(code(Block(store(), alice.id, zed.id)), ErrorCode::kAlreadyBlocked);
  EXPECT_EQ(code(Block(store(), alice.id, alice.id)), ErrorCode::kSelfBlock);
  EXPECT_EQ(code(Block(store(), alice.id, 4242)), ErrorCode::kUnknownUser);
  EXPECT_EQ(code(Unblock(store(), zed.id, alice.id)), ErrorCode::kNotBlocked);

  SocialResult unblocked = Must(Unblock(store(), alice.id, zed.id, 9100));
  ASSERT_EQ(unblocked.positions.size(), 1u);
  StreamPage last = ReadStream(store(), alice.id, unblocked.positions[0].user_seq - 1, 10);
  ASSERT_EQ(last.events.size(), 1u);
  EXPECT_EQ(last.events[0].kind, EventKind::kBlock);
  EXPECT_FALSE(last.events[0].flag);
  EXPECT_EQ(last.events[0].profile->user_id, zed.id);
  EXPECT_EQ(code(Unblock(store(), alice.id, zed.id)), ErrorCode::kNotBlocked);
  list = Must(Await<std::vector<ProfileRecord>>([&](auto cb) { store().ListBlocked(alice.id, cb); }));
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].username, "bob");
}

// DESIGN.md "Blocking": while alice blocks bob, bob keeps her profile as it
// was when the block began, wherever the store shows it to him; others see
// her changes; after the unblock bob sees her current profile again.
TEST_P(StoreConformance, BlockedUserKeepsTheBlockersProfileAsItWas) {
  SetUpConversation();  // alice and bob share conv_
  ASSERT_TRUE(Must(SetProfile(store(), alice_.id, "Alice", "before", 6000)).changed);
  ASSERT_TRUE(AddContact(store(), carol_.id, alice_.id, 6050).has_value());
  ASSERT_TRUE(Block(store(), alice_.id, bob_.id, 6100).has_value());
  UserSeq bob_head = Head(store(), bob_.id);
  SocialResult changed = Must(SetProfile(store(), alice_.id, "Alicia", "after", 6200));
  ASSERT_TRUE(changed.changed);
  EXPECT_EQ(Head(store(), bob_.id), bob_head);  // no kProfile event for bob

  auto expect_old = [&](const ProfileRecord& p, const std::string& where) {
    EXPECT_EQ(p.user_id, alice_.id) << where;
    EXPECT_EQ(p.username, "alice") << where;
    EXPECT_EQ(p.display_name, "Alice") << where;
    EXPECT_EQ(p.about, "before") << where;
    EXPECT_EQ(p.updated_at, 6000) << where;
  };
  auto expect_new = [&](const ProfileRecord& p, const std::string& where) {
    EXPECT_EQ(p.user_id, alice_.id) << where;
    EXPECT_EQ(p.display_name, "Alicia") << where;
    EXPECT_EQ(p.about, "after") << where;
    EXPECT_EQ(p.updated_at, 6200) << where;
  };
  auto contacts = [&](UserId owner) {
    return Must(Await<std::vector<ContactRecord>>([&](auto cb) { store().ListContacts(owner, cb); }));
  };
  auto profiles = [&](UserId viewer) {
    return Must(
        Await<std::vector<ProfileRecord>>([&](auto cb) { store().GetProfiles(viewer, {carol_.id, alice_.id}, cb); }));
  };

  // bob adds alice: result and stored event carry the old profile.
  SocialResult added = Must(AddContact(store(), bob_.id, alice_.id, 6300));
  ASSERT_TRUE(added.changed);
  expect_old(added.profile, "AddContact result");
  ASSERT_EQ(added.positions.size(), 1u);
  StreamPage page = ReadStream(store(), bob_.id, added.positions[0].user_seq - 1, 10);
  ASSERT_EQ(page.events.size(), 1u);
  EXPECT_EQ(page.events[0].kind, EventKind::kContact);
  ASSERT_TRUE(page.events[0].profile.has_value());
  expect_old(*page.events[0].profile, "kContact event");

  std::vector<ContactRecord> bobs = contacts(bob_.id);
  ASSERT_EQ(bobs.size(), 1u);
  expect_old(bobs[0].profile, "bob's ListContacts");
  std::vector<ProfileRecord> seen = profiles(bob_.id);
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].user_id, carol_.id);  // nobody else is affected
  expect_old(seen[1], "GetProfiles(viewer bob)");

  // Everyone else sees the change.
  std::vector<ContactRecord> carols = contacts(carol_.id);
  ASSERT_EQ(carols.size(), 1u);
  expect_new(carols[0].profile, "carol's ListContacts");
  expect_new(profiles(carol_.id)[1], "GetProfiles(viewer carol)");
  expect_new(profiles(0)[1], "GetProfiles(viewer 0)");
  expect_new(profiles(alice_.id)[1], "GetProfiles(viewer alice)");

  // A second change during the block still does not reach bob.
  ASSERT_TRUE(Must(SetProfile(store(), alice_.id, std::nullopt, "later", 6400)).changed);
  expect_old(profiles(bob_.id)[1], "after a second change");

  // bob blocks alice back: his block event and list show the old profile too.
  SocialResult back = Must(Block(store(), bob_.id, alice_.id, 6500));
  expect_old(back.profile, "Block result");
  page = ReadStream(store(), bob_.id, back.positions[0].user_seq - 1, 10);
  ASSERT_EQ(page.events.size(), 1u);
  EXPECT_EQ(page.events[0].kind, EventKind::kBlock);
  expect_old(*page.events[0].profile, "kBlock event");
  std::vector<ProfileRecord> blocked =
      Must(Await<std::vector<ProfileRecord>>([&](auto cb) { store().ListBlocked(bob_.id, cb); }));
  ASSERT_EQ(blocked.size(), 1u);
  expect_old(blocked[0], "bob's ListBlocked");
  ASSERT_TRUE(Unblock(store(), bob_.id, alice_.id, 6550).has_value());

  // Removing the contact while blocked: the old profile as well.
  SocialResult removed =
      Must(Await<SocialResult>([&](auto cb) { store().RemoveContact(bob_.id, alice_.id, 6600, cb); }));
  expect_old(removed.profile, "RemoveContact result");
  page = ReadStream(store(), bob_.id, removed.positions[0].user_seq - 1, 10);
  ASSERT_EQ(page.events.size(), 1u);
  expect_old(*page.events[0].profile, "kContact removal event");
  ASSERT_TRUE(AddContact(store(), bob_.id, alice_.id, 6700).has_value());

  // It survives a reopen.
  Reopen();
  expect_old(contacts(bob_.id)[0].profile, "bob's ListContacts after reopen");

  // After the unblock bob sees alice's current profile, and her later changes.
  ASSERT_TRUE(Unblock(store(), alice_.id, bob_.id, 6800).has_value());
  bobs = contacts(bob_.id);
  ASSERT_EQ(bobs.size(), 1u);
  EXPECT_EQ(bobs[0].profile.display_name, "Alicia");
  EXPECT_EQ(bobs[0].profile.about, "later");
  EXPECT_EQ(bobs[0].profile.updated_at, 6400);
  EXPECT_EQ(profiles(bob_.id)[1].about, "later");
  SocialResult again = Must(SetProfile(store(), alice_.id, "Ally", std::nullopt, 6900));
  bool reached_bob = false;
  for (const StreamPosition& pos : again.positions) reached_bob |= pos.user_id == bob_.id;
  EXPECT_TRUE(reached_bob);
  EXPECT_EQ(contacts(bob_.id)[0].profile.display_name, "Ally");

  // A new block freezes the profile as it is then.
  ASSERT_TRUE(Block(store(), alice_.id, bob_.id, 7000).has_value());
  ASSERT_TRUE(SetProfile(store(), alice_.id, "Al", std::nullopt, 7100).has_value());
  EXPECT_EQ(contacts(bob_.id)[0].profile.display_name, "Ally");
  EXPECT_EQ(contacts(carol_.id)[0].profile.display_name, "Al");
}

TEST_P(StoreConformance, BlockedSendersMessagesAreWithheldFromTheBlocker) {
  SetUpConversation();  // conv_: alice + bob
  ConversationId with_carol = Open(store(), alice_.id, carol_.id, 1500).conversation.id;
  Send(alice_, alice_dev_, "a1", 2000);  // seq 1, visible to both
  ASSERT_TRUE(Append(store(), Msg(with_carol, carol_.id, carol_dev_.id, "c1", "hey", 2500)).has_value());
  ASSERT_TRUE(Block(store(), alice_.id, bob_.id).has_value());
  UserSeq alice_head = Head(store(), alice_.id);
  UserSeq bob_head = Head(store(), bob_.id);

  // bob's sends are acked, take seqs, and reach only his own stream.
  AppendResult b2 = Send(bob_, bob_dev_, "b2", 3000);
  AppendResult b3 = Send(bob_, bob_dev_, "b3", 3100);
  EXPECT_EQ(b2.message.seq, 2);
  EXPECT_EQ(b3.message.seq, 3);
  ASSERT_EQ(b2.positions.size(), 1u);
  EXPECT_EQ(b2.positions[0].user_id, bob_.id);
  EXPECT_EQ(b2.positions[0].user_seq, bob_head + 1);
  EXPECT_TRUE(b2.withheld.empty());
  EXPECT_EQ(Head(store(), alice_.id), alice_head);
  StreamPage bobs = ReadStream(store(), bob_.id, bob_head, 10);
  ASSERT_EQ(bobs.events.size(), 2u);
  EXPECT_EQ(bobs.events[0].message->seq, 2);
  EXPECT_EQ(bobs.events[1].message->seq, 3);

  // Not in alice's history, snapshot, unread count or conversation order.
  std::vector<MessageRecord> alice_view = History(store(), conv_, 0, 10, alice_.id);
  ASSERT_EQ(alice_view.size(), 1u);
  EXPECT_EQ(alice_view[0].seq, 1);
  EXPECT_EQ(History(store(), conv_, 0, 10, bob_.id).size(), 3u);
  Snapshot snap = GetSnapshot(store(), alice_.id, 5);
  ASSERT_EQ(snap.conversations.size(), 2u);
  EXPECT_EQ(snap.conversations[0].conversation.id, with_carol);  // bob's later sends did not reorder
  const ConversationSummary& ab = snap.conversations[1];
  EXPECT_EQ(ab.conversation.id, conv_);
  EXPECT_EQ(ab.conversation.last_activity_at, 2000);
  EXPECT_EQ(ab.unread, 0);
  ASSERT_EQ(ab.latest.size(), 1u);
  EXPECT_EQ(ab.latest[0].seq, 1);
  ConversationPage list = ListConversations(store(), alice_.id, 0, 0, 10, 5);
  ASSERT_EQ(list.conversations.size(), 2u);
  EXPECT_EQ(list.conversations[0].conversation.id, with_carol);
  EXPECT_EQ(list.conversations[1].unread, 0);
  EXPECT_EQ(list.conversations[1].latest.size(), 1u);
  // bob sees his conversation as usual.
  Snapshot bob_snap = GetSnapshot(store(), bob_.id, 5);
  ASSERT_EQ(bob_snap.conversations.size(), 1u);
  EXPECT_EQ(bob_snap.conversations[0].latest.size(), 3u);
  EXPECT_EQ(bob_snap.conversations[0].conversation.last_activity_at, 3100);

  // The blocker cannot send; nothing is written.
  Result<AppendResult> refused = Append(store(), Msg(conv_, alice_.id, alice_dev_.id, "a-x", "hello?"));
  ASSERT_FALSE(refused.has_value());
  EXPECT_EQ(refused.error().code(), ErrorCode::kBlocked);
  EXPECT_EQ(Head(store(), alice_.id), alice_head);
  EXPECT_EQ(Send(bob_, bob_dev_, "b4", 3200).message.seq, 4);

  // After the unblock the withheld messages stay hidden; new ones are visible.
  ASSERT_TRUE(Unblock(store(), alice_.id, bob_.id).has_value());
  alice_head = Head(store(), alice_.id);
  AppendResult b5 = Send(bob_, bob_dev_, "b5", 4000);
  ASSERT_EQ(b5.positions.size(), 2u);
  EXPECT_EQ(b5.positions[0].user_id, alice_.id);
  EXPECT_EQ(b5.positions[0].user_seq, alice_head + 1);
  alice_view = History(store(), conv_, 0, 10, alice_.id);
  ASSERT_EQ(alice_view.size(), 2u);
  EXPECT_EQ(alice_view[0].seq, 1);
  EXPECT_EQ(alice_view[1].seq, 5);
  // Paging skips withheld ones and still fills the page.
  std::vector<MessageRecord> older = History(store(), conv_, 5, 1, alice_.id);
  ASSERT_EQ(older.size(), 1u);
  EXPECT_EQ(older[0].seq, 1);
  snap = GetSnapshot(store(), alice_.id, 5);
  EXPECT_EQ(snap.conversations[0].conversation.id, conv_);
  EXPECT_EQ(snap.conversations[0].unread, 1);
  EXPECT_EQ(snap.conversations[0].conversation.last_activity_at, 4000);

  // alice's whole stream is gapless and holds no withheld message.
  StreamPage all = ReadStream(store(), alice_.id, 0, 100);
  ASSERT_EQ(all.events.size(), static_cast<size_t>(all.head));
  for (size_t i = 0; i < all.events.size(); ++i) {
    EXPECT_EQ(all.events[i].user_seq, static_cast<UserSeq>(i + 1));
    if (all.events[i].kind == EventKind::kMessage && all.events[i].conversation_id == conv_) {
      EXPECT_TRUE(all.events[i].message->seq == 1 || all.events[i].message->seq == 5);
    }
  }
}

TEST_P(StoreConformance, ReceiptsCarryNewlyCoveredWithheldSeqsLiveAndInSync) {
  SetUpConversation();
  Send(alice_, alice_dev_, "a1");  // seq 1
  ASSERT_TRUE(Block(store(), alice_.id, bob_.id).has_value());
  Send(bob_, bob_dev_, "b2");  // 2, withheld from alice
  Send(bob_, bob_dev_, "b3");  // 3, withheld from alice
  ASSERT_TRUE(Unblock(store(), alice_.id, bob_.id).has_value());
  Send(bob_, bob_dev_, "b4");  // 4, visible

  // alice's device reports delivery of what it saw (up to 4): 2 and 3 stay "sent".
  ReceiptResult r = Must(UpdateReceipt(store(), Receipt(alice_.id, alice_dev_.id, conv_, 4, 0)));
  ASSERT_TRUE(r.changed);
  EXPECT_EQ(r.aggregate.delivered, 4);
  EXPECT_EQ(r.withheld, (std::vector<std::vector<Seq>>{{2, 3}, {2, 3}}));
  ASSERT_EQ(r.positions.size(), 2u);
  for (size_t i = 0; i < r.positions.size(); ++i) {
    StreamPage page = ReadStream(store(), r.positions[i].user_id, r.positions[i].user_seq - 1, 1);
    ASSERT_EQ(page.events.size(), 1u);
    EXPECT_EQ(page.events[0].kind, EventKind::kReceipt);
    EXPECT_EQ(page.events[0].withheld, r.withheld[i]);
  }
  // Only newly covered seqs are listed: a read receipt lists nothing more.
  ReceiptResult read = Must(UpdateReceipt(store(), Receipt(alice_.id, alice_dev_.id, conv_, 0, 4)));
  ASSERT_TRUE(read.changed);
  EXPECT_TRUE(read.withheld.empty());
  StreamPage page = ReadStream(store(), bob_.id, read.positions[1].user_seq - 1, 1);
  ASSERT_EQ(page.events.size(), 1u);
  EXPECT_TRUE(page.events[0].withheld.empty());
  // bob's own receipts never list anything (nothing is withheld from him).
  ReceiptResult bobs = Must(UpdateReceipt(store(), Receipt(bob_.id, bob_dev_.id, conv_, 4, 4)));
  EXPECT_TRUE(bobs.withheld.empty());
}

TEST_P(StoreConformance, SendCoveringWithheldSeqsListsThemOnItsMessageEvents) {
  SetUpConversation();
  Send(alice_, alice_dev_, "a1");  // seq 1
  ASSERT_TRUE(Block(store(), alice_.id, bob_.id).has_value());
  Send(bob_, bob_dev_, "b2");
  Send(bob_, bob_dev_, "b3");
  ASSERT_TRUE(Unblock(store(), alice_.id, bob_.id).has_value());

  // alice's send raises her own watermarks to 4, over 2 and 3.
  AppendResult a4 = Send(alice_, alice_dev_, "a4");
  EXPECT_EQ(a4.message.seq, 4);
  ASSERT_EQ(a4.positions.size(), 2u);
  ASSERT_EQ(a4.withheld.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(a4.withheld[i], (std::vector<Seq>{2, 3}));
    StreamPage page = ReadStream(store(), a4.positions[i].user_id, a4.positions[i].user_seq - 1, 1);
    ASSERT_EQ(page.events.size(), 1u);
    EXPECT_EQ(page.events[0].kind, EventKind::kMessage);
    EXPECT_EQ(page.events[0].withheld, a4.withheld[i]);
  }
  // Listed once: the next send and a receipt list nothing.
  AppendResult a5 = Send(alice_, alice_dev_, "a5");
  EXPECT_TRUE(a5.withheld.empty());
  StreamPage page = ReadStream(store(), bob_.id, a5.positions[1].user_seq - 1, 1);
  EXPECT_TRUE(page.events[0].withheld.empty());
  EXPECT_FALSE(Must(UpdateReceipt(store(), Receipt(alice_.id, alice_dev_.id, conv_, 5, 5))).changed);
  // Watermarks were never lowered.
  Snapshot snap = GetSnapshot(store(), alice_.id, 0);
  EXPECT_EQ(snap.conversations[0].watermarks[0].second.delivered, 5);
  EXPECT_EQ(snap.conversations[0].watermarks[0].second.read, 5);
}

// The withheld seqs of `member`'s watermark entry in `s` (bob's or alice's).
std::vector<Seq> StaySent(const ConversationSummary& s, UserId member) {
  EXPECT_EQ(s.withheld.size(), s.watermarks.size());
  for (size_t i = 0; i < s.watermarks.size() && i < s.withheld.size(); ++i)
    if (s.watermarks[i].first == member) return s.withheld[i];
  ADD_FAILURE() << "no watermark entry for " << member;
  return {};
}

// How often each seq is listed as withheld in `user`'s whole stream.
std::map<Seq, int> ListedInStream(Store& store, UserId user) {
  std::map<Seq, int> listed;
  for (const StreamEvent& e : ReadStream(store, user, 0, 1000).events) {
    for (Seq seq : e.withheld) ++listed[seq];
  }
  return listed;
}

TEST_P(StoreConformance, AMessageHiddenByAMutualBlockLeavesItsListForTheOtherMembersNextEvent) {
  MutualBlock();
  // bob's 6 is visible to alice: its event in her stream moves bob's
  // watermark from 1 (the last her stream carried) to 6, over 2 and 3.
  AppendResult b6 = Send(bob_, bob_dev_, "b6");
  ExpectListedOnlyInAlicesStream(b6.positions, b6.withheld, {2, 3});
  // Listed once per stream, whatever follows.
  EXPECT_TRUE(Send(bob_, bob_dev_, "b7").withheld.empty());
  EXPECT_TRUE(Must(UpdateReceipt(store(), Receipt(bob_.id, bob_dev_.id, conv_, 7, 7))).withheld.empty());
  Send(alice_, alice_dev_, "a8");
  EXPECT_TRUE(Must(UpdateReceipt(store(), Receipt(bob_.id, bob_dev_.id, conv_, 8, 8))).withheld.empty());
  // Each stream lists bob's 2 and 3 once, and alice's 4 and 5 (her own
  // send raised her watermark over them) once.
  EXPECT_EQ(ListedInStream(store(), alice_.id), (std::map<Seq, int>{{2, 1}, {3, 1}, {4, 1}, {5, 1}}));
  EXPECT_EQ(ListedInStream(store(), bob_.id), (std::map<Seq, int>{{2, 1}, {3, 1}, {4, 1}, {5, 1}}));
}

TEST_P(StoreConformance, AMessageHiddenByAMutualBlockLeavesItsListForTheOtherMembersNextReceipt) {
  MutualBlock();
  // This time bob's watermark next moves by a receipt: alice writes 6, his
  // device reports it. His stream lists nothing new (his delivered was 5);
  // hers lists 2 and 3 (it last carried his 1).
  Send(alice_, alice_dev_, "a6");
  ReceiptResult r = Must(UpdateReceipt(store(), Receipt(bob_.id, bob_dev_.id, conv_, 6, 0)));
  ASSERT_TRUE(r.changed);
  ExpectListedOnlyInAlicesStream(r.positions, r.withheld, {2, 3});
  EXPECT_TRUE(Must(UpdateReceipt(store(), Receipt(bob_.id, bob_dev_.id, conv_, 6, 6))).withheld.empty());
  EXPECT_TRUE(Send(bob_, bob_dev_, "b7").withheld.empty());
  // Each stream lists bob's 2 and 3 once, and alice's 4 and 5 (her own
  // send raised her watermark over them) once.
  EXPECT_EQ(ListedInStream(store(), alice_.id), (std::map<Seq, int>{{2, 1}, {3, 1}, {4, 1}, {5, 1}}));
  EXPECT_EQ(ListedInStream(store(), bob_.id), (std::map<Seq, int>{{2, 1}, {3, 1}, {4, 1}, {5, 1}}));
  // A new device of alice's sees the same in her summary.
  EXPECT_EQ(StaySent(GetSnapshot(store(), alice_.id, 5).conversations[0], bob_.id), (std::vector<Seq>{2, 3}));
}

TEST_P(StoreConformance, TheBlockersLastSeqAndReceiptsNeverPassWithheldMessages) {
  SetUpConversation();
  Send(alice_, alice_dev_, "a1");  // seq 1; alice's watermarks are 1
  ASSERT_TRUE(Block(store(), alice_.id, bob_.id).has_value());
  Send(bob_, bob_dev_, "b2");  // 2, withheld from alice
  Send(bob_, bob_dev_, "b3");  // 3, withheld from alice
  UserSeq bob_head = Head(store(), bob_.id);

  // alice is told of no seq beyond what she sees; bob of all of them.
  EXPECT_EQ(GetSnapshot(store(), alice_.id, 5).conversations[0].conversation.last_seq, 1);
  EXPECT_EQ(ListConversations(store(), alice_.id, 0, 0, 10, 1).conversations[0].conversation.last_seq, 1);
  EXPECT_EQ(Open(store(), alice_.id, bob_.id).conversation.last_seq, 1);
  EXPECT_EQ(GetSnapshot(store(), bob_.id, 5).conversations[0].conversation.last_seq, 3);
  EXPECT_EQ(Open(store(), bob_.id, alice_.id).conversation.last_seq, 3);

  // A receipt up to the raw last seq is clamped to 1: nothing moves, bob
  // gets no receipt (and so no "withheld" list revealing the block).
  for (DeviceId dev : {alice_dev_.id, MakeDevice(store(), alice_.id, "ta2").id}) {
    ReceiptResult r = Must(UpdateReceipt(store(), Receipt(alice_.id, dev, conv_, 3, 3)));
    EXPECT_FALSE(r.changed);
    EXPECT_EQ(r.aggregate.delivered, 1);
    EXPECT_EQ(r.aggregate.read, 1);
    EXPECT_TRUE(r.withheld.empty());
  }
  EXPECT_EQ(Head(store(), bob_.id), bob_head);
  Snapshot bob_snap = GetSnapshot(store(), bob_.id, 5);
  EXPECT_TRUE(StaySent(bob_snap.conversations[0], alice_.id).empty());
  for (const MessageRecord& m : History(store(), conv_, 0, 10, bob_.id)) EXPECT_FALSE(m.stays_sent) << m.seq;

  // Still so after the unblock until a newer message is visible to alice.
  ASSERT_TRUE(Unblock(store(), alice_.id, bob_.id).has_value());
  EXPECT_FALSE(Must(UpdateReceipt(store(), Receipt(alice_.id, alice_dev_.id, conv_, 3, 3))).changed);
  Send(bob_, bob_dev_, "b4");  // 4, visible
  EXPECT_EQ(GetSnapshot(store(), alice_.id, 5).conversations[0].conversation.last_seq, 4);
  ReceiptResult r = Must(UpdateReceipt(store(), Receipt(alice_.id, alice_dev_.id, conv_, 9, 9)));
  ASSERT_TRUE(r.changed);
  EXPECT_EQ(r.aggregate.read, 4);
  EXPECT_EQ(r.withheld, (std::vector<std::vector<Seq>>{{2, 3}, {2, 3}}));
}

TEST_P(StoreConformance, SummariesAndHistoryListTheSeqsThatStaySentForANewDevice) {
  SetUpConversation();
  Send(alice_, alice_dev_, "a1");  // seq 1
  ASSERT_TRUE(Block(store(), alice_.id, bob_.id).has_value());
  Send(bob_, bob_dev_, "b2");
  Send(bob_, bob_dev_, "b3");
  ASSERT_TRUE(Unblock(store(), alice_.id, bob_.id).has_value());
  Send(bob_, bob_dev_, "b4");  // 4
  // Before alice's watermark passes them nothing is listed.
  EXPECT_TRUE(StaySent(GetSnapshot(store(), bob_.id, 5).conversations[0], alice_.id).empty());
  ASSERT_TRUE(Must(UpdateReceipt(store(), Receipt(alice_.id, alice_dev_.id, conv_, 4, 4))).changed);

  // bob's summaries (snapshot and list) name 2 and 3 in alice's entry, the
  // same seqs as the receipt event; his own entry lists nothing.
  for (const ConversationSummary& sum :
       {GetSnapshot(store(), bob_.id, 5).conversations[0], ListConversations(store(), bob_.id, 0, 0, 10, 1).conversations[0]}) {
    EXPECT_EQ(StaySent(sum, alice_.id), (std::vector<Seq>{2, 3}));
    EXPECT_TRUE(StaySent(sum, bob_.id).empty());
    EXPECT_EQ(sum.conversation.last_seq, 4);
  }
  // alice's summary never lists them (nothing is withheld from bob).
  ConversationSummary alices = GetSnapshot(store(), alice_.id, 5).conversations[0];
  EXPECT_TRUE(StaySent(alices, alice_.id).empty());
  EXPECT_TRUE(StaySent(alices, bob_.id).empty());
  // History marks them, on every page.
  std::vector<MessageRecord> h = History(store(), conv_, 0, 10, bob_.id);
  ASSERT_EQ(h.size(), 4u);
  std::vector<bool> stay;
  for (const MessageRecord& m : h) stay.push_back(m.stays_sent);
  EXPECT_EQ(stay, (std::vector<bool>{false, true, true, false}));
  std::vector<MessageRecord> older = History(store(), conv_, 3, 1, bob_.id);
  ASSERT_EQ(older.size(), 1u);
  EXPECT_EQ(older[0].seq, 2);
  EXPECT_TRUE(older[0].stays_sent);
  for (const MessageRecord& m : History(store(), conv_, 0, 10, alice_.id)) EXPECT_FALSE(m.stays_sent) << m.seq;
  // A later block of bob by alice does not add seqs beyond her watermark.
  ASSERT_TRUE(Block(store(), alice_.id, bob_.id).has_value());
  Send(bob_, bob_dev_, "b5");
  EXPECT_EQ(StaySent(GetSnapshot(store(), bob_.id, 5).conversations[0], alice_.id), (std::vector<Seq>{2, 3}));
  Reopen();
  EXPECT_EQ(StaySent(GetSnapshot(store(), bob_.id, 5).conversations[0], alice_.id), (std::vector<Seq>{2, 3}));
}

TEST_P(StoreConformance, UnblockSendsTheTargetTheProfileItMissedIfInTheAudience) {
  SetUpConversation();  // alice and bob share conv_
  UserRecord dave = MakeUser(store(), "dave");  // knows nothing of alice
  ASSERT_TRUE(Must(SetProfile(store(), alice_.id, "Alice", "before", 6000)).changed);
  // No change during the block: no event.
  ASSERT_TRUE(Block(store(), alice_.id, bob_.id, 6100).has_value());
  SocialResult plain = Must(Unblock(store(), alice_.id, bob_.id, 6150));
  EXPECT_FALSE(plain.target_position.has_value());
  ASSERT_EQ(plain.positions.size(), 1u);
  EXPECT_EQ(plain.positions[0].user_id, alice_.id);

  ASSERT_TRUE(Block(store(), alice_.id, bob_.id, 6200).has_value());
  ASSERT_TRUE(Block(store(), alice_.id, dave.id, 6200).has_value());
  ASSERT_TRUE(Must(SetProfile(store(), alice_.id, "Alicia", "after", 6300)).changed);
  UserSeq bob_head = Head(store(), bob_.id);
  UserSeq dave_head = Head(store(), dave.id);
  SocialResult un = Must(Unblock(store(), alice_.id, bob_.id, 6400));
  ASSERT_TRUE(un.target_position.has_value());
  ASSERT_TRUE(un.target_profile.has_value());
  EXPECT_EQ(un.target_position->user_id, bob_.id);
  EXPECT_EQ(un.target_position->user_seq, bob_head + 1);
  EXPECT_EQ(un.target_profile->display_name, "Alicia");
  StreamPage page = ReadStream(store(), bob_.id, bob_head, 10);
  ASSERT_EQ(page.events.size(), 1u);
  EXPECT_EQ(page.events[0].kind, EventKind::kProfile);
  ASSERT_TRUE(page.events[0].profile.has_value());
  EXPECT_EQ(page.events[0].profile->user_id, alice_.id);
  EXPECT_EQ(page.events[0].profile->display_name, "Alicia");
  EXPECT_EQ(page.events[0].profile->about, "after");
  EXPECT_EQ(page.events[0].profile->updated_at, 6300);
  // dave is not in alice's audience: no event (it would reveal the block).
  SocialResult stranger = Must(Unblock(store(), alice_.id, dave.id, 6500));
  EXPECT_FALSE(stranger.target_position.has_value());
  EXPECT_EQ(Head(store(), dave.id), dave_head);
}

// ---- Search ----

TEST_P(StoreConformance, SearchMatchesUsernameAndNameWordPrefixes) {
  UserRecord me = MakeUser(store(), "annie");
  UserRecord ann = MakeUser(store(), "ann");
  UserRecord anna = MakeUser(store(), "anna_k");
  UserRecord bob = MakeUser(store(), "bob");
  UserRecord carl = MakeUser(store(), "carl");
  UserRecord dora = MakeUser(store(), "dora");
  UserRecord zed = MakeUser(store(), "zed");
  ASSERT_TRUE(SetProfile(store(), bob.id, "Bob ANNEXE-Smith", std::nullopt).has_value());
  ASSERT_TRUE(SetProfile(store(), carl.id, "Carl von Annenberg-Thelonious-Extraordinaire", std::nullopt).has_value());
  ASSERT_TRUE(SetProfile(store(), dora.id, "Dora Explorer", std::nullopt).has_value());
  ASSERT_TRUE(SetProfile(store(), zed.id, "zed", std::nullopt).has_value());

  auto names = [](const SearchPage& page) {
    std::vector<std::string> out;
    for (const ProfileRecord& p : page.users) out.push_back(p.username);
    return out;
  };
  // Username prefix or a word prefix, ascending username, never the searcher.
  SearchPage all = Search(store(), me.id, "ann", "", 10);
  EXPECT_EQ(names(all), (std::vector<std::string>{"ann", "anna_k", "bob", "carl"}));
  EXPECT_EQ(all.next, "");
  EXPECT_EQ(all.users[2].display_name, "Bob ANNEXE-Smith");
  // Punctuation splits words; case does not matter; the whole word list counts.
  EXPECT_EQ(names(Search(store(), me.id, "smi", "", 10)), (std::vector<std::string>{"bob"}));
  EXPECT_EQ(names(Search(store(), me.id, "thelon", "", 10)), (std::vector<std::string>{"carl"}));
  // Longer than the indexed prefix: checked against the full word.
  EXPECT_EQ(names(Search(store(), me.id, "extraordinaire", "", 10)), (std::vector<std::string>{"carl"}));
  EXPECT_TRUE(Search(store(), me.id, "extraordinairex", "", 10).users.empty());
  EXPECT_TRUE(Search(store(), me.id, "nobody", "", 10).users.empty());
  // A user matching both ways appears once.
  EXPECT_EQ(names(Search(store(), me.id, "zed", "", 10)), (std::vector<std::string>{"zed"}));
  EXPECT_EQ(names(Search(store(), ann.id, "ann", "", 10)), (std::vector<std::string>{"anna_k", "annie", "bob", "carl"}));

  // Pages follow each other without overlap or loss.
  SearchPage p1 = Search(store(), me.id, "ann", "", 2);
  EXPECT_EQ(names(p1), (std::vector<std::string>{"ann", "anna_k"}));
  EXPECT_EQ(p1.next, "anna_k");
  SearchPage p2 = Search(store(), me.id, "ann", p1.next, 2);
  EXPECT_EQ(names(p2), (std::vector<std::string>{"bob", "carl"}));
  EXPECT_EQ(p2.next, "");  // nothing after carl
  SearchPage p3 = Search(store(), me.id, "ann", "bob", 2);
  EXPECT_EQ(names(p3), (std::vector<std::string>{"carl"}));

  // A user who blocks the searcher is left out (for that searcher only);
  // whom the searcher blocks is still found.
  ASSERT_TRUE(Block(store(), bob.id, me.id).has_value());
  ASSERT_TRUE(Block(store(), me.id, carl.id).has_value());
  EXPECT_EQ(names(Search(store(), me.id, "ann", "", 10)), (std::vector<std::string>{"ann", "anna_k", "carl"}));
  EXPECT_EQ(names(Search(store(), me.id, "ann", "", 2)), (std::vector<std::string>{"ann", "anna_k"}));
  EXPECT_EQ(names(Search(store(), me.id, "ann", "anna_k", 2)), (std::vector<std::string>{"carl"}));
  EXPECT_EQ(names(Search(store(), ann.id, "ann", "", 10)), (std::vector<std::string>{"anna_k", "annie", "bob", "carl"}));

  // Renaming moves the user in the index.
  ASSERT_TRUE(SetProfile(store(), dora.id, "Dora Annihilator", std::nullopt).has_value());
  ASSERT_TRUE(SetProfile(store(), carl.id, "Carl", std::nullopt).has_value());
  EXPECT_EQ(names(Search(store(), me.id, "ann", "", 10)), (std::vector<std::string>{"ann", "anna_k", "dora"}));
  EXPECT_TRUE(Search(store(), me.id, "expl", "", 10).users.empty());
}

// Display-name words match whatever their case in any script: the store
// indexes words folded by FoldForSearch (Unicode NFKC_Casefold), the folding
// the protocol gives the query (SearchUsersRequest::query).
TEST_P(StoreConformance, SearchMatchesNonAsciiNameWordsWhateverTheirCase) {
  UserRecord me = MakeUser(store(), "searcher");
  UserRecord fr = MakeUser(store(), "fr1");
  UserRecord gr = MakeUser(store(), "gr1");
  UserRecord ru = MakeUser(store(), "ru1");
  UserRecord en = MakeUser(store(), "en1");
  ASSERT_TRUE(SetProfile(store(), fr.id, "Élodie Ñúñez-GARÇON", std::nullopt).has_value());
  ASSERT_TRUE(SetProfile(store(), gr.id, "ΣΟΦΊΑ Παπαδοπούλου", std::nullopt).has_value());
  ASSERT_TRUE(SetProfile(store(), ru.id, "Дмитрий ИВАНОВ", std::nullopt).has_value());
  ASSERT_TRUE(SetProfile(store(), en.id, "Eloise", std::nullopt).has_value());
  std::vector<NewBulkUser> bulk(1);
  bulk[0].username = "de1";
  bulk[0].password_hash = "h";
  bulk[0].display_name = "Jürgen STRAẞE";
  ASSERT_TRUE(Await<std::vector<BulkUserResult>>([&](auto cb) { store().BulkCreateUsers(bulk, 100, cb); })
                  .has_value());

  auto found = [&](const std::string& query) {
    std::vector<std::string> out;
    for (const ProfileRecord& p : Search(store(), me.id, FoldForSearch(query), "", 10).users) out.push_back(p.username);
    return out;
  };
  using V = std::vector<std::string>;
  EXPECT_EQ(found("élodie"), V{"fr1"});
  EXPECT_EQ(found("ÉLODIE"), V{"fr1"});
  EXPECT_EQ(found("E\u0301lo"), V{"fr1"});  // decomposed é
  EXPECT_EQ(found("ñúñ"), V{"fr1"});
  EXPECT_EQ(found("garçon"), V{"fr1"});
  EXPECT_EQ(found("σοφία"), V{"gr1"});
  EXPECT_EQ(found("Σο"), V{"gr1"});
  EXPECT_EQ(found("ΠΑΠΑΔΟΠΟΎΛΟΥ"), V{"gr1"});  // longer than the indexed prefix
  EXPECT_EQ(found("дмитрий"), V{"ru1"});
  EXPECT_EQ(found("иванов"), V{"ru1"});
  EXPECT_EQ(found("jürgen"), V{"de1"});
  EXPECT_EQ(found("strasse"), V{"de1"});
  EXPECT_EQ(found("elo"), V{"en1"});  // folding is not accent stripping
  EXPECT_TRUE(found("παπαδοπούλουx").empty());

  // Renaming drops the old folded words from the index.
  ASSERT_TRUE(SetProfile(store(), fr.id, "Émilie", std::nullopt).has_value());
  EXPECT_TRUE(found("élodie").empty());
  EXPECT_TRUE(found("garçon").empty());
  EXPECT_EQ(found("ÉMI"), V{"fr1"});
  // Blocking filters these matches as any other.
  ASSERT_TRUE(Block(store(), ru.id, me.id).has_value());
  EXPECT_TRUE(found("ДМИТРИЙ").empty());
}

// ---- Conversation list ----

TEST_P(StoreConformance, ListConversationsOrdersByActivityAndPages) {
  UserRecord me = MakeUser(store(), "me");
  DeviceRecord dev = MakeDevice(store(), me.id, "tme");
  std::vector<ConversationId> convs;
  for (int i = 0; i < 5; ++i) {
    UserRecord other = MakeUser(store(), "u" + std::to_string(i));
    convs.push_back(Open(store(), me.id, other.id, 1000).conversation.id);  // all at the same time: ties by id
  }
  // Activity: convs[1] newest, then convs[3]; the rest tie at 1000.
  ASSERT_TRUE(Append(store(), Msg(convs[3], me.id, dev.id, "x", "x", 2000)).has_value());
  ASSERT_TRUE(Append(store(), Msg(convs[1], me.id, dev.id, "y", "y", 3000)).has_value());
  std::vector<ConversationId> want{convs[1], convs[3], convs[4], convs[2], convs[0]};

  std::vector<ConversationId> got;
  ConversationPage page = ListConversations(store(), me.id, 0, 0, 2, 1);
  for (int guard = 0; guard < 10; ++guard) {
    EXPECT_LE(page.conversations.size(), 2u);
    for (const ConversationSummary& c : page.conversations) got.push_back(c.conversation.id);
    if (!page.has_more) break;
    EXPECT_EQ(page.next_id, page.conversations.back().conversation.id);
    EXPECT_EQ(page.next_activity, page.conversations.back().conversation.last_activity_at);
    page = ListConversations(store(), me.id, page.next_activity, page.next_id, 2, 1);
  }
  EXPECT_EQ(got, want);
  ConversationPage first = ListConversations(store(), me.id, 0, 0, 10, 1);
  EXPECT_FALSE(first.has_more);
  ASSERT_EQ(first.conversations.size(), 5u);
  EXPECT_EQ(first.conversations[0].conversation.last_activity_at, 3000);
  ASSERT_EQ(first.conversations[0].latest.size(), 1u);
  EXPECT_EQ(first.conversations[0].latest[0].body, "y");
  EXPECT_EQ(first.conversations[0].unread, 0);
  ASSERT_EQ(first.conversations[0].watermarks.size(), 2u);
  EXPECT_TRUE(first.conversations[2].latest.empty());
  // The snapshot uses the same order.
  Snapshot snap = GetSnapshot(store(), me.id, 0);
  std::vector<ConversationId> snap_order;
  for (const ConversationSummary& c : snap.conversations) snap_order.push_back(c.conversation.id);
  EXPECT_EQ(snap_order, want);
  EXPECT_TRUE(ListConversations(store(), 4242, 0, 0, 10, 1).conversations.empty());
}

// A chat that stays in one conversation, then moves to another and back:
// each summary shows its newest message's time, and the list (walked one
// conversation per page) follows those times, with nothing twice.
TEST_P(StoreConformance, ListConversationsFollowsAChatThatStaysOnTop) {
  UserRecord me = MakeUser(store(), "me");
  UserRecord a = MakeUser(store(), "a");
  UserRecord b = MakeUser(store(), "b");
  DeviceRecord dev = MakeDevice(store(), me.id, "tme");
  DeviceRecord a_dev = MakeDevice(store(), a.id, "ta");
  ConversationId ca = Open(store(), me.id, a.id, 1000).conversation.id;
  ConversationId cb = Open(store(), me.id, b.id, 1000).conversation.id;
  using Order = std::vector<std::pair<ConversationId, int64_t>>;
  auto walk = [&](UserId user) {
    Order got;
    ConversationPage page = ListConversations(store(), user, 0, 0, 1, 1);
    for (int guard = 0; guard < 10; ++guard) {
      for (const ConversationSummary& s : page.conversations) got.emplace_back(s.conversation.id, s.conversation.last_activity_at);
      if (!page.has_more) break;
      page = ListConversations(store(), user, page.next_activity, page.next_id, 1, 1);
    }
    return got;
  };
  for (int64_t t = 2000; t < 2500; t += 100) {
    ASSERT_TRUE(Append(store(), Msg(ca, t % 200 ? a.id : me.id, t % 200 ? a_dev.id : dev.id, "a" + std::to_string(t), "x", t))
                    .has_value());
  }
  EXPECT_EQ(walk(me.id), (Order{{ca, 2400}, {cb, 1000}}));
  EXPECT_EQ(walk(a.id), (Order{{ca, 2400}}));
  ASSERT_TRUE(Append(store(), Msg(cb, me.id, dev.id, "b3000", "x", 3000)).has_value());
  EXPECT_EQ(walk(me.id), (Order{{cb, 3000}, {ca, 2400}}));
  for (int64_t t : {3100, 3200}) {
    ASSERT_TRUE(Append(store(), Msg(ca, me.id, dev.id, "a" + std::to_string(t), "x", t)).has_value());
  }
  EXPECT_EQ(walk(me.id), (Order{{ca, 3200}, {cb, 3000}}));
  Snapshot snap = GetSnapshot(store(), me.id, 1);
  ASSERT_EQ(snap.conversations.size(), 2u);
  EXPECT_EQ(snap.conversations[0].conversation.id, ca);
  EXPECT_EQ(snap.conversations[0].conversation.last_activity_at, 3200);
  ASSERT_EQ(snap.conversations[0].latest.size(), 1u);
  EXPECT_EQ(snap.conversations[0].latest[0].body, "x");
  EXPECT_EQ(snap.conversations[0].latest[0].created_at, 3200);
}

// ---- Password and provisioning ----

TEST_P(StoreConformance, ChangePasswordRevokesEveryOtherDevice) {
  UserRecord alice = MakeUser(store(), "alice");
  UserRecord bob = MakeUser(store(), "bob");
  DeviceRecord d1 = MakeDevice(store(), alice.id, "t1");
  DeviceRecord d2 = MakeDevice(store(), alice.id, "t2");
  DeviceRecord d3 = MakeDevice(store(), alice.id, "t3");
  DeviceRecord bobs = MakeDevice(store(), bob.id, "tb");
  std::vector<DeviceId> revoked = Must(Await<std::vector<DeviceId>>(
      [&](auto cb) { store().ChangePassword(alice.id, "new-hash", d2.id, 9000, cb); }));
  EXPECT_EQ(revoked, (std::vector<DeviceId>{d1.id, d3.id}));
  EXPECT_EQ(Must(Await<UserRecord>([&](auto cb) { store().GetUserById(alice.id, cb); })).password_hash, "new-hash");
  std::vector<DeviceRecord> live =
      Must(Await<std::vector<DeviceRecord>>([&](auto cb) { store().ListDevices(alice.id, cb); }));
  ASSERT_EQ(live.size(), 1u);
  EXPECT_EQ(live[0].id, d2.id);
  EXPECT_FALSE(DeviceByToken(store(), "t1").has_value());
  EXPECT_EQ(AwaitStatus([&](auto cb) { store().SetCursor(d3.id, 1, 1, cb); }).code(), ErrorCode::kUnknownDevice);
  EXPECT_TRUE(DeviceByToken(store(), "tb").has_value());
  (void)bobs;
  // keep 0: every device goes.
  revoked = Must(
      Await<std::vector<DeviceId>>([&](auto cb) { store().ChangePassword(alice.id, "newer", 0, 9100, cb); }));
  EXPECT_EQ(revoked, (std::vector<DeviceId>{d2.id}));
  EXPECT_TRUE(Must(Await<std::vector<DeviceRecord>>([&](auto cb) { store().ListDevices(alice.id, cb); })).empty());
  Result<std::vector<DeviceId>> unknown =
      Await<std::vector<DeviceId>>([&](auto cb) { store().ChangePassword(4242, "x", 0, 1, cb); });
  ASSERT_FALSE(unknown.has_value());
  EXPECT_EQ(unknown.error().code(), ErrorCode::kUnknownUser);
}

// A login creates its device only while the password hash it verified is
// still the user's: one that raced a password change gets no device (the
// change could not revoke it), and nothing is written.
TEST_P(StoreConformance, CreateDeviceWithAVerifiedHashFailsOnceThePasswordChanged) {
  UserRecord alice = MakeUser(store(), "alice");
  auto create = [&](const std::string& token, const std::string& verified) {
    return Await<DeviceRecord>([&](auto cb) { store().CreateDevice(alice.id, "laptop", "web", token, verified, 2000, cb); });
  };
  DeviceRecord first = Must(create("t1", "hash-of-alice"));
  EXPECT_EQ(first.user_id, alice.id);
  Must(Await<std::vector<DeviceId>>([&](auto cb) { store().ChangePassword(alice.id, "new-hash", first.id, 3000, cb); }));
  Result<DeviceRecord> late = create("t2", "hash-of-alice");
  ASSERT_FALSE(late.has_value());
  EXPECT_EQ(late.error().code(), ErrorCode::kBadCredentials) << late.error().ToString();
  EXPECT_FALSE(DeviceByToken(store(), "t2").has_value());
  std::vector<DeviceRecord> live =
      Must(Await<std::vector<DeviceRecord>>([&](auto cb) { store().ListDevices(alice.id, cb); }));
  ASSERT_EQ(live.size(), 1u);
  EXPECT_EQ(live[0].id, first.id);
  // With the new hash, and with no check at all (provisioning), it works.
  EXPECT_TRUE(create("t3", "new-hash").has_value());
  EXPECT_TRUE(create("t4", "").has_value());
}

TEST_P(StoreConformance, BulkCreateUsersIsAllOrNothing) {
  MakeUser(store(), "taken");
  auto bulk = [](std::vector<std::string> names) {
    std::vector<NewBulkUser> users;
    for (const std::string& n : names) {
      NewBulkUser u;
      u.username = n;
      u.password_hash = "h-" + n;
      u.token_hash = "tok-" + n;
      u.device_name = "bench";
      u.display_name = "Name " + n;
      users.push_back(std::move(u));
    }
    return users;
  };
  Result<std::vector<BulkUserResult>> clash = Await<std::vector<BulkUserResult>>(
      [&](auto cb) { store().BulkCreateUsers(bulk({"b1", "b2", "taken", "b3"}), 100, cb); });
  ASSERT_FALSE(clash.has_value());
  EXPECT_EQ(clash.error().code(), ErrorCode::kUsernameTaken);
  EXPECT_NE(clash.error().message().find("taken"), std::string::npos);
  EXPECT_FALSE(Await<UserRecord>([&](auto cb) { store().GetUserByName("b1", cb); }).has_value());
  Result<std::vector<BulkUserResult>> twice = Await<std::vector<BulkUserResult>>(
      [&](auto cb) { store().BulkCreateUsers(bulk({"c1", "c2", "c1"}), 100, cb); });
  ASSERT_FALSE(twice.has_value());
  EXPECT_EQ(twice.error().code(), ErrorCode::kUsernameTaken);
  EXPECT_NE(twice.error().message().find("c1"), std::string::npos);
  EXPECT_FALSE(Await<UserRecord>([&](auto cb) { store().GetUserByName("c2", cb); }).has_value());

  std::vector<NewBulkUser> ok = bulk({"d1", "d2", "d3"});
  ok[1].token_hash.clear();  // no device for d2
  std::vector<BulkUserResult> made =
      Must(Await<std::vector<BulkUserResult>>([&](auto cb) { store().BulkCreateUsers(ok, 100, cb); }));
  ASSERT_EQ(made.size(), 3u);
  EXPECT_EQ(made[1].device_id, 0);
  UserRecord d1 = Must(Await<UserRecord>([&](auto cb) { store().GetUserByName("d1", cb); }));
  EXPECT_EQ(d1.id, made[0].user_id);
  EXPECT_EQ(d1.password_hash, "h-d1");
  EXPECT_EQ(d1.display_name, "Name d1");
  DeviceRecord dev = Must(DeviceByToken(store(), "tok-d3"));
  EXPECT_EQ(dev.id, made[2].device_id);
  EXPECT_EQ(dev.user_id, made[2].user_id);
  EXPECT_EQ(dev.cursor, 0);
  EXPECT_TRUE(Must(Await<std::vector<DeviceRecord>>([&](auto cb) { store().ListDevices(made[1].user_id, cb); }))
                  .empty());
  // Bulk users are searchable by their display names.
  SearchPage found = Search(store(), d1.id, "name", "", 10);
  ASSERT_EQ(found.users.size(), 2u);
  EXPECT_EQ(found.users[0].username, "d2");
}

// ---- Presence ----

TEST_P(StoreConformance, PresenceVisibilityFollowsTheSettingContactsAndBlocks) {
  UserRecord alice = MakeUser(store(), "alice");
  UserRecord bob = MakeUser(store(), "bob");
  UserRecord carol = MakeUser(store(), "carol");
  auto presence = [&](UserId viewer, std::vector<UserId> ids) {
    return Must(Await<std::vector<PresenceRecord>>([&](auto cb) { store().GetPresence(viewer, ids, cb); }));
  };
  auto set = [&](UserId user, PresenceVisibility v, int64_t now) {
    return Must(Await<SocialResult>([&](auto cb) { store().SetPresenceVisibility(user, v, now, cb); }));
  };
  ASSERT_TRUE(Await<Empty>([&](auto cb) {
                store().SetLastSeen(alice.id, 5000, [cb](Status s) {
                  cb(s.ok() ? Result<Empty>(Empty{}) : Result<Empty>(s));
                });
              }).has_value());
  // Default: everyone; unknown ids are left out; order is kept.
  std::vector<PresenceRecord> seen = presence(bob.id, {alice.id, 4242, carol.id});
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].user_id, alice.id);
  EXPECT_TRUE(seen[0].visible);
  EXPECT_EQ(seen[0].last_seen, 5000);
  EXPECT_EQ(seen[1].user_id, carol.id);
  EXPECT_EQ(seen[1].last_seen, 0);

  // An older last seen changes nothing.
  store().SetLastSeen(alice.id, 4000, [](Status) {});
  EXPECT_EQ(presence(bob.id, {alice.id})[0].last_seen, 5000);

  // Contacts only: bob is alice's contact, carol is not.
  ASSERT_TRUE(AddContact(store(), alice.id, bob.id).has_value());
  SocialResult changed = set(alice.id, PresenceVisibility::kContacts, 6000);
  EXPECT_TRUE(changed.changed);
  ASSERT_EQ(changed.positions.size(), 1u);
  EXPECT_EQ(changed.positions[0].user_id, alice.id);
  EXPECT_FALSE(set(alice.id, PresenceVisibility::kContacts, 6100).changed);
  EXPECT_TRUE(presence(bob.id, {alice.id})[0].visible);
  EXPECT_FALSE(presence(carol.id, {alice.id})[0].visible);
  EXPECT_EQ(presence(carol.id, {alice.id})[0].last_seen, 0) << "last seen leaked to a non-contact";
  EXPECT_TRUE(presence(alice.id, {alice.id})[0].visible) << "users always see themselves";

  // A block hides it in both directions.
  ASSERT_TRUE(Block(store(), bob.id, alice.id).has_value());
  EXPECT_FALSE(presence(bob.id, {alice.id})[0].visible);
  EXPECT_FALSE(presence(alice.id, {bob.id})[0].visible);
  ASSERT_TRUE(Unblock(store(), bob.id, alice.id).has_value());
  EXPECT_TRUE(presence(bob.id, {alice.id})[0].visible);

  // Nobody.
  set(alice.id, PresenceVisibility::kNobody, 7000);
  EXPECT_FALSE(presence(bob.id, {alice.id})[0].visible);

  // The setting is on the user and in their own stream.
  UserRecord reread = Must(Await<UserRecord>([&](auto cb) { store().GetUserById(alice.id, cb); }));
  EXPECT_EQ(reread.presence_visibility, PresenceVisibility::kNobody);
  EXPECT_EQ(reread.last_seen, 5000);
  StreamPage page = ReadStream(store(), alice.id, 0, 10);
  std::vector<PresenceVisibility> settings;
  for (const auto& e : page.events)
    if (e.kind == EventKind::kPrivacy) settings.push_back(e.presence_visibility);
  EXPECT_EQ(settings, (std::vector<PresenceVisibility>{PresenceVisibility::kContacts, PresenceVisibility::kNobody}));
  EXPECT_EQ(Head(store(), carol.id), 0) << "a privacy change reached another user's stream";

  EXPECT_EQ(Await<SocialResult>([&](auto cb) {
              store().SetPresenceVisibility(4242, PresenceVisibility::kNobody, 1, cb);
            }).error().code(),
            ErrorCode::kUnknownUser);
}

// ---- Durability and lifecycle ----

// The admin export (the delivery checker's view): every table, keyset pages
// in key order, the same rows whatever the page size.
TEST_P(StoreConformance, ExportPagesEveryTableInKeyOrder) {
  SetUpConversation();  // conv_: alice + bob
  Send(alice_, alice_dev_, "a1", 2000);  // seq 1
  ASSERT_TRUE(Block(store(), alice_.id, bob_.id).has_value());
  Send(bob_, bob_dev_, "b2", 2100);  // seq 2, withheld from alice
  ASSERT_TRUE(UpdateReceipt(store(), Receipt(bob_.id, bob_dev_.id, conv_, 1, 1)).has_value());

  auto all = [&](ExportTable t, int page) {
    std::vector<ExportRow> rows;
    std::vector<int64_t> after;
    for (int guard = 0; guard < 1000; ++guard) {
      ExportPage p = Must(Await<ExportPage>([&](auto cb) { store().Export(t, after, page, cb); }));
      EXPECT_LE(static_cast<int>(p.rows.size()), page);
      for (auto& r : p.rows) rows.push_back(r);
      if (!p.has_more) break;
      EXPECT_FALSE(p.rows.empty());
      after.assign(p.rows.back().values.begin(), p.rows.back().values.begin() + ExportKeyColumns(t));
    }
    return rows;
  };
  auto values = [](const std::vector<ExportRow>& rows) {
    std::vector<std::vector<int64_t>> v;
    for (auto& r : rows) v.push_back(r.values);
    return v;
  };
  for (int t = 0; t < kExportTableCount; ++t) {
    auto table = static_cast<ExportTable>(t);
    EXPECT_EQ(ExportTableFromName(ExportTableName(table)), table);
    auto big = all(table, 1000);
    EXPECT_EQ(values(all(table, 1)), values(big)) << ExportTableName(table);
    for (size_t i = 1; i < big.size(); ++i) {
      std::vector<int64_t> a(big[i - 1].values.begin(), big[i - 1].values.begin() + ExportKeyColumns(table));
      std::vector<int64_t> b(big[i].values.begin(), big[i].values.begin() + ExportKeyColumns(table));
      EXPECT_LT(a, b) << ExportTableName(table);
    }
    for (auto& r : big) {
      EXPECT_EQ(r.values.size(), ExportColumns(table).size() - (table == ExportTable::kMessages ? 1 : 0));
    }
  }
  EXPECT_FALSE(ExportTableFromName("users").has_value());

  auto messages = all(ExportTable::kMessages, 1);
  ASSERT_EQ(messages.size(), 2u);
  EXPECT_EQ(messages[0].values, (std::vector<int64_t>{conv_, 1, alice_.id, alice_dev_.id, 0}));
  EXPECT_EQ(messages[0].text, "a1");
  EXPECT_EQ(messages[1].values, (std::vector<int64_t>{conv_, 2, bob_.id, bob_dev_.id, 0}));
  EXPECT_EQ(messages[1].text, "b2");
  EXPECT_EQ(values(all(ExportTable::kMembers, 1)), (std::vector<std::vector<int64_t>>{{conv_, alice_.id}, {conv_, bob_.id}}));
  EXPECT_EQ(values(all(ExportTable::kWithheld, 1)), (std::vector<std::vector<int64_t>>{{conv_, alice_.id, 2}}));
  EXPECT_EQ(values(all(ExportTable::kBlocks, 1)), (std::vector<std::vector<int64_t>>{{alice_.id, bob_.id}}));
  auto devices = values(all(ExportTable::kDevices, 2));
  ASSERT_EQ(devices.size(), 4u);
  EXPECT_EQ(devices[0], (std::vector<int64_t>{alice_dev_.id, alice_.id, 0}));
  // The stream and heads agree with ReadStream and GetHead.
  auto heads = values(all(ExportTable::kHeads, 1));
  auto stream = values(all(ExportTable::kStream, 3));
  for (const UserRecord* u : {&alice_, &bob_}) {
    UserSeq head = Head(store(), u->id);
    EXPECT_NE(std::find(heads.begin(), heads.end(), std::vector<int64_t>{u->id, head, 1}), heads.end());
    StreamPage page = ReadStream(store(), u->id, 0, 100);
    std::vector<std::vector<int64_t>> mine;
    for (auto& row : stream) {
      if (row[0] == u->id) mine.push_back(row);
    }
    ASSERT_EQ(mine.size(), page.events.size());
    for (size_t i = 0; i < mine.size(); ++i) {
      const StreamEvent& e = page.events[i];
      EXPECT_EQ(mine[i][1], e.user_seq);
      EXPECT_EQ(mine[i][2], static_cast<int64_t>(e.kind));
      if (e.kind == EventKind::kMessage) {
        EXPECT_EQ(mine[i][3], e.message->conversation_id);
        EXPECT_EQ(mine[i][4], e.message->seq);
      }
      if (e.kind == EventKind::kReceipt) {
        EXPECT_EQ(mine[i][5], e.receipt_user_id);
        EXPECT_EQ(mine[i][6], e.receipt.delivered);
        EXPECT_EQ(mine[i][7], e.receipt.read);
      }
    }
  }
  auto receipts = values(all(ExportTable::kReceipts, 1));
  EXPECT_NE(std::find(receipts.begin(), receipts.end(), std::vector<int64_t>{conv_, bob_.id, 2, 2}), receipts.end());
  // A wrong `after` is refused.
  Result<ExportPage> bad = Await<ExportPage>([&](auto cb) { store().Export(ExportTable::kMessages, {1}, 10, cb); });
  ASSERT_FALSE(bad.has_value());
  EXPECT_EQ(bad.error().code(), ErrorCode::kBadRequest);
}

// A shutdown that cannot wait for a backlog (ChatService::Shutdown): what
// the writer has not taken into a commit fails with the given status and
// leaves nothing behind (a Flush queued behind it too); what was committed
// stays, and the store goes on working.
TEST_P(StoreConformance, AbandonQueuedWritesFailsWhatTheWriterHasNotTaken) {
  UserRecord before = MakeUser(store(), "before");
  StoreConfig held;
  held.commit_deadline_us = 60'000'000;  // the writer holds each batch open this long
  Reopen(held);
  constexpr size_t kQueued = 5;
  Collector<UserRecord> created(kQueued);
  for (size_t i = 0; i < kQueued; ++i) {
    store().CreateUser("queued" + std::to_string(i), "hash", 1'000, created.Slot(i));
  }
  auto flushed = std::make_shared<std::promise<Status>>();
  std::future<Status> flush_result = flushed->get_future();
  store().Flush([flushed](Status s) { flushed->set_value(std::move(s)); });
  Status why(ErrorCode::kShuttingDown, "the server is shutting down");
  EXPECT_EQ(store().AbandonQueuedWrites(why), kQueued + 1);
  for (auto& r : created.Wait()) {
    ASSERT_TRUE(r.has_value());
    ASSERT_FALSE(r->has_value()) << "a queued write was committed";
    EXPECT_EQ(r->error().code(), ErrorCode::kShuttingDown);
  }
  EXPECT_EQ(flush_result.get().code(), ErrorCode::kShuttingDown);
  EXPECT_EQ(store().AbandonQueuedWrites(why), 0u);  // nothing left

  Reopen();
  for (size_t i = 0; i < kQueued; ++i) {
    Result<UserRecord> r = Await<UserRecord>([&](auto cb) { store().GetUserByName("queued" + std::to_string(i), cb); });
    ASSERT_FALSE(r.has_value()) << "an abandoned write was stored";
    EXPECT_EQ(r.error().code(), ErrorCode::kUnknownUser);
  }
  EXPECT_EQ(Must(Await<UserRecord>([&](auto cb) { store().GetUserByName("before", cb); })).id, before.id);
  MakeUser(store(), "after");  // and it takes writes again
}

TEST_P(StoreConformance, AckedWritesSurviveReopenAndSeqsContinue) {
  SetUpConversation();
  for (int i = 1; i <= 5; ++i) Send(alice_, alice_dev_, std::to_string(i));
  ASSERT_TRUE(Must(UpdateReceipt(store(), Receipt(bob_.id, bob_dev_.id, conv_, 0, 5))).changed);
  ASSERT_TRUE(AwaitStatus([&](auto cb) { store().SetCursor(bob_dev_.id, 4, 7000, cb); }).ok());
  UserSeq bob_head = Head(store(), bob_.id);

  Reopen();

  EXPECT_EQ(Must(Await<UserRecord>([&](auto cb) { store().GetUserByName("carol", cb); })).id, carol_.id);
  DeviceRecord dev = Must(DeviceByToken(store(), "tb"));
  EXPECT_EQ(dev.cursor, 4);
  EXPECT_EQ(Head(store(), bob_.id), bob_head);
  std::vector<MessageRecord> history = History(store(), conv_, 0, 100);
  ASSERT_EQ(history.size(), 5u);
  EXPECT_EQ(history.back().seq, 5);

  AppendResult next = Send(alice_, alice_dev_, "after-restart");
  EXPECT_EQ(next.message.seq, 6);
  ASSERT_EQ(next.positions.size(), 2u);
  EXPECT_EQ(next.positions[1].user_seq, bob_head + 1);
  // A retry from before the restart still gets its original seq back.
  AppendResult retry = Must(Append(store(), Msg(conv_, alice_.id, alice_dev_.id, "3", "again")));
  EXPECT_TRUE(retry.duplicate);
  EXPECT_EQ(retry.message.seq, 3);
  // Watermarks survived too: the older receipt changes nothing.
  EXPECT_FALSE(Must(UpdateReceipt(store(), Receipt(bob_.id, bob_dev_.id, conv_, 0, 5))).changed);
  EXPECT_FALSE(Open(store(), alice_.id, bob_.id).created);
}

TEST_P(StoreConformance, WritesQueuedBeforeCloseAreCommitted) {
  SetUpConversation();
  Collector<AppendResult> results(50);
  for (int i = 0; i < 50; ++i) {
    store().AppendMessage(Msg(conv_, alice_.id, alice_dev_.id, std::to_string(i), "x"),
                          results.Slot(static_cast<size_t>(i)));
  }
  Reopen();  // the destructor finishes queued work before closing
  for (auto& r : results.Wait()) EXPECT_TRUE(r->has_value());
  EXPECT_EQ(History(store(), conv_, 0, 100).size(), 50u);
}

TEST_P(StoreConformance, FlushCompletesAfterEarlierWrites) {
  SetUpConversation();
  constexpr int kWrites = 50;
  std::atomic<int> completed{0};
  for (int i = 0; i < kWrites; ++i) {
    store().AppendMessage(Msg(conv_, alice_.id, alice_dev_.id, std::to_string(i), "x"),
                          [&completed](Result<AppendResult> r) {
                            if (r.has_value()) completed.fetch_add(1);
                          });
  }
  int seen_at_flush = -1;
  Status flushed = AwaitStatus([&](auto cb) {
    store().Flush([&, cb](Status s) {
      seen_at_flush = completed.load();
      cb(std::move(s));
    });
  });
  EXPECT_TRUE(flushed.ok()) << flushed.ToString();
  EXPECT_EQ(seen_at_flush, kWrites);
  EXPECT_EQ(History(store(), conv_, 0, 100).size(), static_cast<size_t>(kWrites));
}

// ---- Message timeline and operations (issue 8) ----

MessageTimeline Timeline(Store& s, ConversationId c, Seq seq) {
  return Must(Await<MessageTimeline>([&](auto cb) { s.GetMessageTimeline(c, seq, cb); }));
}

const DeviceTimeline* FindDevice(const MessageTimeline& t, DeviceId id) {
  for (const auto& m : t.members)
    for (const auto& d : m.devices)
      if (d.device_id == id) return &d;
  return nullptr;
}

TEST_P(StoreConformance, MessageTimelineShowsEachDevicesDeliveryAndRead) {
  SetUpConversation();
  NewMessage m = Msg(conv_, alice_.id, alice_dev_.id, "m1", "one", 2000);
  m.accepted_at = 1990;
  Must(Append(store(), m));
  Send(alice_, alice_dev_, "m2", 2100);
  Send(alice_, alice_dev_, "m3", 2200);
  Must(UpdateReceipt(store(), Receipt(bob_.id, bob_dev_.id, conv_, 2, 0, 3000)));
  Must(UpdateReceipt(store(), Receipt(bob_.id, bob_dev2_.id, conv_, 3, 0, 3100)));
  Must(UpdateReceipt(store(), Receipt(bob_.id, bob_dev_.id, conv_, 0, 1, 3200)));
  Must(UpdateReceipt(store(), Receipt(bob_.id, bob_dev_.id, conv_, 0, 3, 3300)));
  // A watermark that does not move logs nothing (its time is not taken).
  Must(UpdateReceipt(store(), Receipt(bob_.id, bob_dev2_.id, conv_, 2, 0, 3400)));

  MessageTimeline t1 = Timeline(store(), conv_, 1);
  EXPECT_EQ(t1.message.sender_id, alice_.id);
  EXPECT_EQ(t1.message.client_id, "m1");
  EXPECT_EQ(t1.accepted_at, 1990);
  EXPECT_EQ(t1.stored_at, kStoreClockMillis);  // the store's clock at the commit batch
  ASSERT_EQ(t1.members.size(), 2u);
  EXPECT_EQ(t1.members[0].user_id, alice_.id);
  EXPECT_EQ(t1.members[1].user_id, bob_.id);
  EXPECT_EQ(t1.members[1].username, "bob");
  ASSERT_EQ(t1.members[1].devices.size(), 2u);
  const DeviceTimeline* sender = FindDevice(t1, alice_dev_.id);
  ASSERT_NE(sender, nullptr);
  EXPECT_TRUE(sender->sending_device);
  EXPECT_EQ(sender->delivered_at, kStoreClockMillis);
  const DeviceTimeline* b1 = FindDevice(t1, bob_dev_.id);
  const DeviceTimeline* b2 = FindDevice(t1, bob_dev2_.id);
  ASSERT_NE(b1, nullptr);
  ASSERT_NE(b2, nullptr);
  EXPECT_FALSE(b1->sending_device);
  EXPECT_EQ(b1->name, "phone");
  EXPECT_EQ(b1->delivered_at, 3000);
  EXPECT_EQ(b1->read_at, 3200);
  EXPECT_EQ(b2->delivered_at, 3100);
  EXPECT_EQ(b2->read_at, 0);

  MessageTimeline t3 = Timeline(store(), conv_, 3);
  EXPECT_EQ(t3.accepted_at, 2200);  // no accepted_at given: the message's time
  EXPECT_EQ(FindDevice(t3, bob_dev_.id)->delivered_at, 3300);  // read implies delivered
  EXPECT_EQ(FindDevice(t3, bob_dev_.id)->read_at, 3300);
  EXPECT_EQ(FindDevice(t3, bob_dev2_.id)->delivered_at, 3100);
  EXPECT_EQ(FindDevice(t3, bob_dev2_.id)->read_at, 0);

  Result<MessageTimeline> none = Await<MessageTimeline>([&](auto cb) { store().GetMessageTimeline(conv_, 9, cb); });
  ASSERT_FALSE(none.has_value());
  EXPECT_EQ(none.error().code(), ErrorCode::kUnknownMessage);
  Result<MessageTimeline> no_conv =
      Await<MessageTimeline>([&](auto cb) { store().GetMessageTimeline(conv_ + 100, 1, cb); });
  ASSERT_FALSE(no_conv.has_value());
  EXPECT_EQ(no_conv.error().code(), ErrorCode::kUnknownConversation);

  // A revoked device drops out of the timeline.
  EXPECT_TRUE(AwaitStatus([&](auto cb) { store().RevokeDevice(bob_.id, bob_dev2_.id, cb); }).ok());
  EXPECT_EQ(FindDevice(Timeline(store(), conv_, 1), bob_dev2_.id), nullptr);
}

TEST_P(StoreConformance, MessageTimelineOfAWithheldMessageShowsNoDelivery) {
  SetUpConversation();
  Must(Block(store(), bob_.id, alice_.id));
  Send(alice_, alice_dev_, "hidden", 2000);
  Must(Unblock(store(), bob_.id, alice_.id));
  Send(alice_, alice_dev_, "seen", 2100);
  Must(UpdateReceipt(store(), Receipt(bob_.id, bob_dev_.id, conv_, 0, 2, 3000)));
  MessageTimeline hidden = Timeline(store(), conv_, 1);
  ASSERT_EQ(hidden.members.size(), 2u);
  EXPECT_TRUE(hidden.members[1].withheld);
  EXPECT_EQ(FindDevice(hidden, bob_dev_.id)->delivered_at, 0);
  EXPECT_EQ(FindDevice(hidden, bob_dev_.id)->read_at, 0);
  MessageTimeline seen = Timeline(store(), conv_, 2);
  EXPECT_FALSE(seen.members[1].withheld);
  EXPECT_EQ(FindDevice(seen, bob_dev_.id)->read_at, 3000);
}

TEST_P(StoreConformance, DisablingAUserIsRecordedAndDeletingRevokesItsDevices) {
  UserRecord alice = MakeUser(store(), "alice");
  DeviceRecord d1 = MakeDevice(store(), alice.id, "t1");
  DeviceRecord d2 = MakeDevice(store(), alice.id, "t2");
  auto set = [&](bool disabled, bool revoke) {
    return Await<DisableResult>([&](auto cb) { store().SetUserDisabled(alice.id, disabled, revoke, cb); });
  };
  DisableResult r = Must(set(true, false));
  EXPECT_TRUE(r.changed);
  EXPECT_TRUE(r.revoked.empty());
  EXPECT_TRUE(Must(Await<UserRecord>([&](auto cb) { store().GetUserByName("alice", cb); })).disabled);
  EXPECT_TRUE(Must(Await<UserRecord>([&](auto cb) { store().GetUserById(alice.id, cb); })).disabled);
  EXPECT_EQ(Must(Await<std::vector<DeviceRecord>>([&](auto cb) { store().ListDevices(alice.id, cb); })).size(), 2u);
  EXPECT_FALSE(Must(set(true, false)).changed);
  // A disabled account keeps no last seen from the connections its disable
  // closed (an erase removed it: it must not come back).
  auto set_last_seen = [&](int64_t at) {
    return Await<Empty>([&](auto cb) {
      store().SetLastSeen(alice.id, at, [cb](Status s) { cb(s.ok() ? Result<Empty>(Empty{}) : Result<Empty>(s)); });
    });
  };
  ASSERT_TRUE(set_last_seen(9000).has_value());
  EXPECT_EQ(Must(Await<UserRecord>([&](auto cb) { store().GetUserById(alice.id, cb); })).last_seen, 0);
  r = Must(set(true, true));  // delete: disable and revoke
  EXPECT_FALSE(r.changed);
  EXPECT_EQ(r.revoked, (std::vector<DeviceId>{d1.id, d2.id}));
  EXPECT_TRUE(Must(Await<std::vector<DeviceRecord>>([&](auto cb) { store().ListDevices(alice.id, cb); })).empty());
  EXPECT_FALSE(DeviceByToken(store(), "t1").has_value());
  EXPECT_TRUE(Must(set(false, false)).changed);
  EXPECT_FALSE(Must(Await<UserRecord>([&](auto cb) { store().GetUserByName("alice", cb); })).disabled);
  ASSERT_TRUE(set_last_seen(9500).has_value());
  EXPECT_EQ(Must(Await<UserRecord>([&](auto cb) { store().GetUserById(alice.id, cb); })).last_seen, 9500);
  Result<DisableResult> unknown =
      Await<DisableResult>([&](auto cb) { store().SetUserDisabled(alice.id + 100, true, false, cb); });
  ASSERT_FALSE(unknown.has_value());
  EXPECT_EQ(unknown.error().code(), ErrorCode::kUnknownUser);
}

TEST_P(StoreConformance, SummaryCountsAndSchemaIsCurrent) {
  SetUpConversation();
  Send(alice_, alice_dev_, "a");
  Send(bob_, bob_dev_, "b");
  Must(Await<DisableResult>([&](auto cb) { store().SetUserDisabled(carol_.id, true, true, cb); }));
  StoreSummary s = Must(Await<StoreSummary>([&](auto cb) { store().GetStoreSummary(cb); }));
  EXPECT_EQ(s.backend, GetParam().name);
  EXPECT_EQ(s.users, 3);
  EXPECT_EQ(s.disabled_users, 1);
  EXPECT_EQ(s.live_devices, 3);  // carol's went with the delete
  EXPECT_EQ(s.conversations, 1);
  EXPECT_EQ(s.messages, 2);
  EXPECT_EQ(s.stream_events, 2 + 2 + 2);  // the conversation event and two messages, for each of alice and bob
  EXPECT_GT(s.bytes, 0);
  SchemaStatus schema = Must(Await<SchemaStatus>([&](auto cb) { store().GetSchemaStatus(cb); }));
  EXPECT_EQ(schema.backend, GetParam().name);
  EXPECT_GE(schema.current, 1);
  EXPECT_EQ(schema.current, schema.latest);
  EXPECT_TRUE(schema.pending.empty());
}

TEST_P(StoreConformance, OnlineBackupCopiesTheStoreOrIsRefusedClearly) {
  SetUpConversation();
  Send(alice_, alice_dev_, "before-backup");
  std::string path = dir_.path() + "/backup.db";
  Result<BackupResult> b = Await<BackupResult>([&](auto cb) { store().Backup(path, cb); });
  if (GetParam().name == "postgres") {
    ASSERT_FALSE(b.has_value());
    EXPECT_EQ(b.error().code(), ErrorCode::kBadRequest);
    EXPECT_NE(b.error().message().find("pg_dump"), std::string::npos);
    return;
  }
  ASSERT_TRUE(b.has_value()) << b.error().ToString();
  EXPECT_EQ(b->path, path);
  EXPECT_GT(b->bytes, 0);
  // The store keeps working, and the copy is a complete, intact store.
  Send(alice_, alice_dev_, "after-backup");
  Result<sqlite::StoreFileInfo> info = sqlite::CheckStoreFile(path, SqliteStore::kSchemaVersion);
  ASSERT_TRUE(info.has_value()) << info.error().ToString();
  EXPECT_EQ(info->messages, 1);
  EXPECT_EQ(info->users, 3);
  // An existing file is never overwritten.
  Result<BackupResult> again = Await<BackupResult>([&](auto cb) { store().Backup(path, cb); });
  ASSERT_FALSE(again.has_value());
  EXPECT_EQ(again.error().code(), ErrorCode::kBadRequest);
  // Not a store: a clear error.
  std::string junk = dir_.path() + "/junk.db";
  { std::FILE* f = std::fopen(junk.c_str(), "w"); std::fputs("not a database at all", f); std::fclose(f); }
  Result<sqlite::StoreFileInfo> bad = sqlite::CheckStoreFile(junk, SqliteStore::kSchemaVersion);
  ASSERT_FALSE(bad.has_value());
  EXPECT_EQ(bad.error().code(), ErrorCode::kBadRequest);
}

// ---- Push notifications (issue 11) ----

// ---- Edits and deletes (issue 12) ----

// One user's copy of the vector's message, from a stream event.
void ApplyEvent(parley::testing::DeviceView& view, const StreamEvent& e) {
  switch (e.kind) {
    case EventKind::kMessage:
      view.OnMessage(e.message->body, e.message->version, e.message->deleted_at != 0);
      break;
    case EventKind::kEdit: view.OnEdit(e.message->version, e.message->body, e.message->edited_at); break;
    case EventKind::kDelete: view.OnDelete(e.message->version); break;
    case EventKind::kDeleteForMe: view.OnDeleteForMe(); break;
    default: break;
  }
}

// Every row of docs/protocol.md's test-vector table ("Edits and deletes"),
// through the Store interface: each step's answer, then each user's final
// state as their stream gives it (applied in order, and in reverse order:
// the rules do not depend on arrival order) and as their history shows it.
TEST_P(StoreConformance, EditAndDeleteTestVectorsOfTheProtocolDocumentHold) {
  using parley::testing::EditOp;
  EXPECT_EQ(parley::testing::MissingDocRows(parley::testing::SourceDir()), std::vector<int>{})
      << "docs/protocol.md lacks these rows of tests/protocol/edit_vectors.h (RenderRow)";
  constexpr int64_t kEditWindow = protocol::ChangeWindows::kDefaultEditWindowMs;
  constexpr int64_t kDeleteWindow = protocol::ChangeWindows::kDefaultDeleteWindowMs;
  constexpr int64_t kSent = 10'000;
  for (const parley::testing::EditVector& v : parley::testing::EditVectors()) {
    SCOPED_TRACE(parley::testing::RenderRow(v));
    const std::string n = std::to_string(v.id);
    UserRecord alice = MakeUser(store(), "alice" + n);
    UserRecord bob = MakeUser(store(), "bob" + n);
    DeviceRecord a1 = MakeDevice(store(), alice.id, "a1-" + n);
    DeviceRecord a2 = MakeDevice(store(), alice.id, "a2-" + n);
    DeviceRecord b1 = MakeDevice(store(), bob.id, "b1-" + n);
    ConversationId conv = Open(store(), alice.id, bob.id).conversation.id;
    if (v.bob_blocks_alice) {
      ASSERT_TRUE(Block(store(), bob.id, alice.id).has_value());
    }
    AppendResult m = Must(Append(store(), Msg(conv, alice.id, a1.id, "m", "m", kSent)));
    for (size_t i = 0; i < v.steps.size(); ++i) {
      const parley::testing::EditStep& step = v.steps[i];
      MessageChange ch;
      ch.kind = step.op == EditOp::kEdit     ? static_cast<int>(protocol::ChangeKind::kEdit)
                : step.op == EditOp::kDelete ? static_cast<int>(protocol::ChangeKind::kDelete)
                                             : static_cast<int>(protocol::ChangeKind::kDeleteForMe);
      ch.conversation_id = conv;
      ch.seq = m.message.seq;
      const bool is_bob = step.actor == parley::testing::Actor::kB1;
      ch.user_id = is_bob ? bob.id : alice.id;
      ch.device_id = is_bob ? b1.id : step.actor == parley::testing::Actor::kA1 ? a1.id : a2.id;
      ch.client_id = step.client_id.empty() ? "e" + std::to_string(i) : step.client_id;
      ch.body = step.body;
      const int64_t offset = static_cast<int64_t>(i) + 1;
      ch.now = kSent + offset +
               (step.when == parley::testing::When::kAfterEditWindow     ? kEditWindow
                : step.when == parley::testing::When::kAfterDeleteWindow ? kDeleteWindow
                                                                         : 1000);
      ch.edit_window_ms = kEditWindow;
      ch.delete_window_ms = kDeleteWindow;
      Result<ChangeResult> r = Await<ChangeResult>([&](auto cb) { store().ChangeMessage(ch, cb); });
      std::string got;
      if (!r) {
        got = std::string(ErrorCodeName(r.error().code()));
      } else if (step.op == EditOp::kDeleteForMe) {
        got = r->duplicate ? "dup" : "ok";
        if (!r->duplicate) {
          EXPECT_EQ(r->positions.size(), 1u) << "delete for me reaches only its user";
        }
      } else {
        got = "v" + std::to_string(r->version) + (r->duplicate ? " dup" : "");
        if (r->duplicate) {
          EXPECT_TRUE(r->positions.empty()) << "a duplicate appends nothing";
        }
      }
      EXPECT_EQ(got, step.expect) << "step " << i + 1;
    }
    for (const auto& [user, expected] : {std::pair{alice.id, v.alice}, std::pair{bob.id, v.bob}}) {
      SCOPED_TRACE(user == alice.id ? "alice" : "bob");
      std::vector<StreamEvent> events;
      for (StreamEvent& e : ReadStream(store(), user, 0, 100).events)
        if (e.conversation_id == conv && e.kind != EventKind::kConversation) events.push_back(std::move(e));
      parley::testing::DeviceView forward, backward;
      for (const StreamEvent& e : events) ApplyEvent(forward, e);
      for (auto it = events.rbegin(); it != events.rend(); ++it) ApplyEvent(backward, *it);
      EXPECT_EQ(forward.Render(), expected);
      EXPECT_EQ(backward.Render(), expected);
      EXPECT_FALSE(forward.leaked) << "an edit or delete reached a user who did not have the message";
      std::vector<MessageRecord> history = History(store(), conv, 0, 10, user);
      if (expected == "hidden" || expected == "absent") {
        EXPECT_TRUE(history.empty()) << "history shows a message hidden from or withheld from the user";
      } else {
        ASSERT_EQ(history.size(), 1u);
        parley::testing::DeviceView h;
        h.OnMessage(history[0].body, history[0].version, history[0].deleted_at != 0);
        EXPECT_EQ(h.Render(), expected) << "history";
        if (history[0].deleted_at != 0) {
          EXPECT_EQ(history[0].body, "") << "a tombstone keeps no text";
        }
      }
    }
  }
}

// A delete for everyone leaves a tombstone: the seq stays (no gap), the body
// is gone from history, snapshot and sync, including from the edit events
// that carried older texts.
TEST_P(StoreConformance, DeleteLeavesATombstoneWithoutAnyText) {
  SetUpConversation();
  Send(alice_, alice_dev_, "m1", 2000);
  Seq seq = Send(alice_, alice_dev_, "m2", 2000).message.seq;
  Send(alice_, alice_dev_, "m3", 2000);
  MessageChange edit = AliceEdits(seq, "e1", "secret draft", 3000);
  ChangeResult edited = Must(Await<ChangeResult>([&](auto cb) { store().ChangeMessage(edit, cb); }));
  EXPECT_EQ(edited.version, 1);
  EXPECT_EQ(edited.message.body, "secret draft");
  EXPECT_EQ(edited.positions.size(), 2u);
  MessageChange del = edit;
  del.kind = static_cast<int>(protocol::ChangeKind::kDelete);
  del.now = 4000;
  ChangeResult deleted = Must(Await<ChangeResult>([&](auto cb) { store().ChangeMessage(del, cb); }));
  EXPECT_EQ(deleted.version, 2);
  EXPECT_EQ(deleted.message.deleted_at, 4000);
  std::vector<MessageRecord> history = History(store(), conv_, 0, 10, bob_.id);
  ASSERT_EQ(history.size(), 3u);
  EXPECT_EQ(history[1].seq, seq);
  EXPECT_EQ(history[1].body, "");
  EXPECT_EQ(history[1].deleted_at, 4000);
  EXPECT_EQ(history[1].version, 2);
  EXPECT_EQ(history[2].body, "body m3");
  for (const StreamEvent& e : ReadStream(store(), bob_.id, 0, 100).events) {
    if (!e.message || e.message->seq != seq) continue;
    EXPECT_EQ(e.message->body, "") << "kind " << static_cast<int>(e.kind);
  }
  Snapshot snap = Must(Await<Snapshot>([&](auto cb) { store().GetSnapshot(bob_.id, 10, cb); }));
  ASSERT_EQ(snap.conversations.size(), 1u);
  for (const MessageRecord& msg : snap.conversations[0].latest)
    if (msg.seq == seq) {
      EXPECT_EQ(msg.body, "");
    }
  // Unknown messages and outsiders.
  MessageChange missing = edit;
  missing.seq = 99;
  Result<ChangeResult> r = Await<ChangeResult>([&](auto cb) { store().ChangeMessage(missing, cb); });
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), ErrorCode::kUnknownMessage);
  MessageChange outsider = edit;
  outsider.user_id = carol_.id;
  outsider.device_id = carol_dev_.id;
  r = Await<ChangeResult>([&](auto cb) { store().ChangeMessage(outsider, cb); });
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), ErrorCode::kNotMember);
}

// Delete for me hides the message from the user's views only: history,
// snapshot, unread count; the other member still sees it, and the
// message's "withheld" bookkeeping for blocks is untouched.
TEST_P(StoreConformance, DeleteForMeHidesFromTheUsersViewsOnly) {
  SetUpConversation();
  Send(alice_, alice_dev_, "m1", 2000);
  Seq seq = Send(alice_, alice_dev_, "m2", 2000).message.seq;
  MessageChange hide = BobHides(seq, 3000);
  ChangeResult r = Must(Await<ChangeResult>([&](auto cb) { store().ChangeMessage(hide, cb); }));
  ASSERT_EQ(r.positions.size(), 1u);
  EXPECT_EQ(r.positions[0].user_id, bob_.id);
  EXPECT_EQ(History(store(), conv_, 0, 10, bob_.id).size(), 1u);
  EXPECT_EQ(History(store(), conv_, 0, 10, alice_.id).size(), 2u);
  Snapshot snap = Must(Await<Snapshot>([&](auto cb) { store().GetSnapshot(bob_.id, 10, cb); }));
  ASSERT_EQ(snap.conversations.size(), 1u);
  EXPECT_EQ(snap.conversations[0].unread, 1) << "a message deleted for me is not unread";
  // Bob reading past it lists nothing as withheld (that is for blocks).
  ReceiptResult read = Must(UpdateReceipt(store(), Receipt(bob_.id, bob_dev_.id, conv_, seq, seq)));
  EXPECT_TRUE(read.withheld.empty());
}

// ---- Erase (issue 12 item 7; docs/operations.md "User erase") ----

TEST_P(StoreConformance, EraseAccountRemovesTheAccountsDataAndKeepsItsConversations) {
  SetUpConversation();
  ASSERT_TRUE(SetProfile(store(), alice_.id, std::string("Alice Private"), std::string("about me")).has_value());
  ASSERT_TRUE(AddContact(store(), alice_.id, bob_.id).has_value());
  ASSERT_TRUE(AddContact(store(), carol_.id, alice_.id).has_value());
  ASSERT_TRUE(Block(store(), alice_.id, carol_.id).has_value());
  Send(alice_, alice_dev_, "a1");
  ASSERT_TRUE(Await<SocialResult>([&](auto cb) { store().SetDraft(alice_.id, conv_, "half", 5100, cb); }).has_value());
  ASSERT_FALSE(Search(store(), bob_.id, "alice", "", 10).users.empty());

  EraseResult r = Must(Await<EraseResult>([&](auto cb) { store().EraseAccount(alice_.id, 6000, cb); }));
  const std::string erased = kErasedUsernamePrefix + std::to_string(alice_.id);
  EXPECT_EQ(r.username, "alice");
  EXPECT_EQ(r.erased_username, erased);
  EXPECT_EQ(r.revoked, (std::vector<DeviceId>{alice_dev_.id}));
  EXPECT_EQ(r.devices, 1);
  EXPECT_EQ(r.contacts, 2);
  EXPECT_EQ(r.blocks, 1);
  EXPECT_EQ(r.drafts, 1);
  EXPECT_GT(r.stream_events, 0);

  // The account: no longer found by its name; a blank, disabled record.
  EXPECT_EQ(Await<UserRecord>([&](auto cb) { store().GetUserByName("alice", cb); }).error().code(),
            ErrorCode::kUnknownUser);
  UserRecord u = Must(Await<UserRecord>([&](auto cb) { store().GetUserById(alice_.id, cb); }));
  EXPECT_EQ(u.username, erased);
  EXPECT_EQ(u.display_name, "");
  EXPECT_EQ(u.about, "");
  EXPECT_EQ(u.password_hash, "");
  EXPECT_TRUE(u.disabled);
  EXPECT_TRUE(Search(store(), bob_.id, "alice", "", 10).users.empty());
  EXPECT_TRUE(Must(Await<std::vector<DeviceRecord>>([&](auto cb) { store().ListDevices(alice_.id, cb); })).empty());
  EXPECT_TRUE(Must(Await<std::vector<ContactRecord>>([&](auto cb) { store().ListContacts(carol_.id, cb); })).empty());
  EXPECT_TRUE(Must(Await<std::vector<ProfileRecord>>([&](auto cb) { store().ListBlocked(alice_.id, cb); })).empty());
  EXPECT_TRUE(ReadStream(store(), alice_.id, 0, 100).events.empty()) << "the user's own stream is gone";
  // Other streams' snapshots of the profile are the blank one.
  for (const StreamEvent& e : ReadStream(store(), carol_.id, 0, 100).events) {
    if (e.profile && e.profile->user_id == alice_.id) {
      EXPECT_EQ(e.profile->username, erased);
      EXPECT_EQ(e.profile->display_name, "");
    }
  }
  // Kept: the conversation, its members (under the new name), the message.
  ConversationRecord c = Must(Await<ConversationRecord>([&](auto cb) { store().GetConversation(conv_, cb); }));
  ASSERT_EQ(c.members.size(), 2u);
  for (const MemberRecord& m : c.members) EXPECT_EQ(m.username, m.user_id == alice_.id ? erased : "bob");
  EXPECT_EQ(Open(store(), bob_.id, alice_.id).conversation.id, conv_);
  ASSERT_EQ(History(store(), conv_, 0, 10).size(), 1u);
  // The name is free again.
  EXPECT_NE(MakeUser(store(), "alice").id, alice_.id);
  EXPECT_EQ(Await<EraseResult>([&](auto cb) { store().EraseAccount(999'999, 6000, cb); }).error().code(),
            ErrorCode::kUnknownUser);
}

// ---- Drafts (issue 12; docs/protocol.md "set_draft") ----

TEST_P(StoreConformance, DraftsAreLastWriterWinsReadCurrentAndClearedBySend) {
  SetUpConversation();
  auto set = [&](UserId user, const std::string& text, int64_t now) {
    return Await<SocialResult>([&](auto cb) { store().SetDraft(user, conv_, text, now, cb); });
  };
  auto last_event = [&](UserId user) {
    StreamPage page = ReadStream(store(), user, 0, 1000);
    EXPECT_FALSE(page.events.empty());
    return page.events.empty() ? StreamEvent{} : page.events.back();
  };
  auto draft_of = [&](UserId user) {
    Snapshot snap = Must(Await<Snapshot>([&](auto cb) { store().GetSnapshot(user, 1, cb); }));
    EXPECT_EQ(snap.conversations.size(), 1u);
    return snap.conversations.empty() ? DraftRecord{} : snap.conversations[0].draft;
  };
  // Nothing to clear: no event.
  EXPECT_FALSE(Must(set(alice_.id, "", 2000)).changed);

  SocialResult first = Must(set(alice_.id, "see you", 2100));
  ASSERT_TRUE(first.changed);
  ASSERT_EQ(first.positions.size(), 1u);
  EXPECT_EQ(first.positions[0].user_id, alice_.id);
  StreamEvent e = last_event(alice_.id);
  EXPECT_EQ(e.kind, EventKind::kDraft);
  EXPECT_EQ(e.user_seq, first.positions[0].user_seq);
  EXPECT_EQ(e.conversation_id, conv_);
  ASSERT_TRUE(e.draft.has_value());
  EXPECT_EQ(e.draft->text, "see you");
  EXPECT_EQ(e.draft->updated_at, 2100);
  // The same text again (a retry, or another device): nothing changes.
  EXPECT_FALSE(Must(set(alice_.id, "see you", 2200)).changed);
  // The later write wins, and every draft event reads the current draft.
  ASSERT_TRUE(Must(set(alice_.id, "see you at 8", 2300)).changed);
  int drafts = 0;
  for (const StreamEvent& ev : ReadStream(store(), alice_.id, 0, 1000).events) {
    if (ev.kind != EventKind::kDraft) continue;
    ++drafts;
    ASSERT_TRUE(ev.draft.has_value());
    EXPECT_EQ(ev.draft->text, "see you at 8");
  }
  EXPECT_EQ(drafts, 2);
  EXPECT_EQ(draft_of(alice_.id).text, "see you at 8");
  EXPECT_EQ(draft_of(alice_.id).updated_at, 2300);
  ConversationPage listed = ListConversations(store(), alice_.id, 0, 0, 10, 1);
  ASSERT_EQ(listed.conversations.size(), 1u);
  EXPECT_EQ(listed.conversations[0].draft.text, "see you at 8");
  // Drafts are per user: bob sees none, and his send clears nothing of alice's.
  EXPECT_EQ(draft_of(bob_.id).text, "");
  AppendResult bobs = Send(bob_, bob_dev_, "b1", 2400);
  EXPECT_FALSE(bobs.draft_cleared.has_value());
  EXPECT_EQ(draft_of(alice_.id).text, "see you at 8");

  // alice's send clears her draft: a kDraft event after the message's.
  AppendResult sent = Send(alice_, alice_dev_, "a1", 2500);
  ASSERT_TRUE(sent.draft_cleared.has_value());
  EXPECT_EQ(sent.draft_cleared->user_id, alice_.id);
  UserSeq message_seq = 0;
  for (const StreamPosition& p : sent.positions)
    if (p.user_id == alice_.id) message_seq = p.user_seq;
  EXPECT_EQ(sent.draft_cleared->user_seq, message_seq + 1);
  e = last_event(alice_.id);
  EXPECT_EQ(e.kind, EventKind::kDraft);
  ASSERT_TRUE(e.draft.has_value());
  EXPECT_EQ(e.draft->text, "");
  EXPECT_EQ(draft_of(alice_.id).text, "");
  // A retried send (a duplicate) clears nothing, even a draft written since.
  ASSERT_TRUE(Must(set(alice_.id, "next", 2600)).changed);
  AppendResult dup = Send(alice_, alice_dev_, "a1", 2700);
  EXPECT_TRUE(dup.duplicate);
  EXPECT_FALSE(dup.draft_cleared.has_value());
  EXPECT_EQ(draft_of(alice_.id).text, "next");

  // Only members, and the draft survives a reopen.
  Result<SocialResult> outsider = set(carol_.id, "hi", 2800);
  ASSERT_FALSE(outsider.has_value());
  EXPECT_EQ(outsider.error().code(), ErrorCode::kNotMember);
  Result<SocialResult> unknown =
      Await<SocialResult>([&](auto cb) { store().SetDraft(alice_.id, conv_ + 1000, "x", 2800, cb); });
  ASSERT_FALSE(unknown.has_value());
  EXPECT_EQ(unknown.error().code(), ErrorCode::kUnknownConversation);
  Reopen();
  EXPECT_EQ(draft_of(alice_.id).text, "next");
}

// ---- Message search (issue 12; store.h "Message search") ----

Result<MessageSearchPage> SearchMsgs(Store& s, UserId searcher, const std::string& query, ConversationId conv = 0,
                                     int64_t before = 0, int limit = 20) {
  MessageSearchQuery q;
  q.searcher = searcher;
  q.words = MessageWords(query);
  q.conversation_id = conv;
  q.before = before;
  q.limit = limit;
  return Await<MessageSearchPage>([&](auto cb) { s.SearchMessages(q, cb); });
}

std::vector<Seq> Seqs(const MessageSearchPage& page) {
  std::vector<Seq> out;
  for (const MessageRecord& m : page.messages) out.push_back(m.seq);
  return out;
}

// Runs the indexer's steps (`batch` entries each) until the queue is empty;
// returns how many steps it took.
int IndexAll(Store& s, int batch = 100) {
  for (int steps = 1; steps < 1000; ++steps) {
    SearchIndexProgress p = Must(Await<SearchIndexProgress>([&](auto cb) { s.IndexSearch(batch, cb); }));
    if (p.backlog == 0) return steps;
    EXPECT_EQ(p.indexed, batch) << "a step that leaves a backlog takes a full batch";
    EXPECT_GT(p.oldest_queued_at, 0);
  }
  ADD_FAILURE() << "the search queue never drained";
  return 0;
}

TEST_P(StoreConformance, MessageSearchFindsOnlyOwnConversationsAfterIndexingNewestFirstPaged) {
  SetUpConversation();
  ConversationId conv2 = Open(store(), alice_.id, carol_.id).conversation.id;
  Send(alice_, alice_dev_, "x0");  // "body x0": no match
  Must(Append(store(), Msg(conv_, alice_.id, alice_dev_.id, "m1", "Hello WÖRLD, the Meeting is at 10", 2000)));
  Must(Append(store(), Msg(conv_, bob_.id, bob_dev_.id, "m2", "meetings tomorrow?", 2001)));
  Must(Append(store(), Msg(conv2, alice_.id, alice_dev_.id, "m3", "meeting with carol", 2002)));
  // Sending only queued them: nothing is found before the indexer ran.
  EXPECT_TRUE(Must(SearchMsgs(store(), bob_.id, "meeting")).messages.empty());
  Reopen();  // the queue is durable
  EXPECT_EQ(IndexAll(store(), 2), 2);  // 4 entries, 2 per step

  MessageSearchPage page = Must(SearchMsgs(store(), bob_.id, "MEET"));
  EXPECT_EQ(Seqs(page), (std::vector<Seq>{3, 2})) << "prefix match, caseless, newest first, not carol's";
  EXPECT_EQ(page.next, 0);
  ASSERT_EQ(page.messages.size(), 2u);
  EXPECT_EQ(page.messages[0].body, "meetings tomorrow?");
  EXPECT_EQ(page.messages[0].sender_id, bob_.id);
  EXPECT_EQ(page.messages[0].conversation_id, conv_);
  EXPECT_EQ(page.messages[0].created_at, 2001);
  EXPECT_EQ(Seqs(Must(SearchMsgs(store(), bob_.id, "wörld hello"))), (std::vector<Seq>{2})) << "all words, folded";
  EXPECT_TRUE(Must(SearchMsgs(store(), bob_.id, "hello tomorrow")).messages.empty());
  EXPECT_TRUE(Must(SearchMsgs(store(), bob_.id, "carol")).messages.empty()) << "another user's conversation";
  // Pages of one.
  MessageSearchPage first = Must(SearchMsgs(store(), bob_.id, "meeting", 0, 0, 1));
  EXPECT_EQ(Seqs(first), (std::vector<Seq>{3}));
  ASSERT_NE(first.next, 0);
  MessageSearchPage second = Must(SearchMsgs(store(), bob_.id, "meeting", 0, first.next, 1));
  EXPECT_EQ(Seqs(second), (std::vector<Seq>{2}));
  if (second.next != 0) {
    EXPECT_TRUE(Must(SearchMsgs(store(), bob_.id, "meeting", 0, second.next, 1)).messages.empty());
  }
  // Alice sees both of her conversations; restricted to one, only it.
  page = Must(SearchMsgs(store(), alice_.id, "meeting"));
  ASSERT_EQ(page.messages.size(), 3u);
  EXPECT_EQ(page.messages[0].conversation_id, conv2);
  EXPECT_EQ(Seqs(Must(SearchMsgs(store(), alice_.id, "meeting", conv_))), (std::vector<Seq>{3, 2}));
  // A conversation one is not in, or none at all.
  Result<MessageSearchPage> r = SearchMsgs(store(), carol_.id, "meeting", conv_);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), ErrorCode::kNotMember);
  r = SearchMsgs(store(), carol_.id, "meeting", 987654);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), ErrorCode::kUnknownConversation);
}

// Doc ids keep following the order messages were stored after the queue
// has drained and the store has reopened (no id is handed out twice).
TEST_P(StoreConformance, MessageSearchStaysNewestFirstAfterTheQueueDrainsAndTheStoreReopens) {
  SetUpConversation();
  Seq first = Must(Append(store(), Msg(conv_, alice_.id, alice_dev_.id, "q1", "quartz one", 2000))).message.seq;
  Seq second = Must(Append(store(), Msg(conv_, bob_.id, bob_dev_.id, "q2", "quartz two", 2001))).message.seq;
  IndexAll(store());
  Reopen();
  Seq third = Must(Append(store(), Msg(conv_, alice_.id, alice_dev_.id, "q3", "quartz three", 2002))).message.seq;
  IndexAll(store());
  EXPECT_EQ(Seqs(Must(SearchMsgs(store(), bob_.id, "quartz"))), (std::vector<Seq>{third, second, first}));
  EXPECT_EQ(Seqs(Must(SearchMsgs(store(), bob_.id, "one"))), (std::vector<Seq>{first}));
}

// A page visits at most kMaxSearchCandidates matches: a word common in
// conversations the searcher is not in ends a page early, empty, with a
// cursor, and the searcher's own older match is found on a later page.
TEST_P(StoreConformance, MessageSearchPagesStopAtTheCandidateCapWithACursor) {
  SetUpConversation();
  Seq own = Must(Append(store(), Msg(conv_, alice_.id, alice_dev_.id, "own", "zebra crossing", 2000))).message.seq;
  ConversationId others = Open(store(), alice_.id, carol_.id).conversation.id;
  const size_t n = kMaxSearchCandidates + 5;
  Collector<AppendResult> appended(n);
  for (size_t i = 0; i < n; ++i) {
    store().AppendMessage(Msg(others, alice_.id, alice_dev_.id, "z" + std::to_string(i), "zebra " + std::to_string(i), 3000),
                          appended.Slot(i));
  }
  for (auto& r : appended.Wait()) ASSERT_TRUE(r->has_value());
  IndexAll(store(), 500);

  MessageSearchPage first = Must(SearchMsgs(store(), bob_.id, "zebra"));
  EXPECT_TRUE(first.messages.empty()) << "carol's conversation holds every candidate of this page";
  ASSERT_NE(first.next, 0) << "a capped page says where to go on";
  MessageSearchPage second = Must(SearchMsgs(store(), bob_.id, "zebra", 0, first.next));
  EXPECT_EQ(Seqs(second), (std::vector<Seq>{own}));
  if (second.next != 0) {
    EXPECT_TRUE(Must(SearchMsgs(store(), bob_.id, "zebra", 0, second.next)).messages.empty());
  }
  // Alice, a member of both, gets full pages.
  EXPECT_EQ(Must(SearchMsgs(store(), alice_.id, "zebra")).messages.size(), 20u);
}

TEST_P(StoreConformance, MessageSearchNeverMatchesWithheldDeletedOrOldEditedText) {
  SetUpConversation();
  // Withheld by a block: never found by the blocker, also after the unblock.
  Must(Block(store(), bob_.id, alice_.id));
  Seq withheld = Must(Append(store(), Msg(conv_, alice_.id, alice_dev_.id, "w", "secret plan", 2000))).message.seq;
  Must(Unblock(store(), bob_.id, alice_.id));
  Seq seq = Must(Append(store(), Msg(conv_, alice_.id, alice_dev_.id, "a", "apple pie", 2001))).message.seq;
  IndexAll(store());
  EXPECT_TRUE(Must(SearchMsgs(store(), bob_.id, "plan")).messages.empty());
  EXPECT_EQ(Seqs(Must(SearchMsgs(store(), alice_.id, "plan"))), (std::vector<Seq>{withheld}));
  EXPECT_EQ(Seqs(Must(SearchMsgs(store(), bob_.id, "apple"))), (std::vector<Seq>{seq}));

  // An edit: the old text stops matching at once; the new one once indexed.
  MessageChange edit = AliceEdits(seq, "e1", "Banana bread", 3000);
  Must(Await<ChangeResult>([&](auto cb) { store().ChangeMessage(edit, cb); }));
  EXPECT_TRUE(Must(SearchMsgs(store(), bob_.id, "apple")).messages.empty());
  IndexAll(store());
  EXPECT_TRUE(Must(SearchMsgs(store(), bob_.id, "apple")).messages.empty());
  MessageSearchPage page = Must(SearchMsgs(store(), bob_.id, "banana"));
  ASSERT_EQ(Seqs(page), (std::vector<Seq>{seq}));
  // Exactly as history shows it.
  std::vector<MessageRecord> history = History(store(), conv_, 0, 10, bob_.id);
  ASSERT_FALSE(history.empty());
  EXPECT_EQ(page.messages[0].body, history.back().body);
  EXPECT_EQ(page.messages[0].version, history.back().version);
  EXPECT_EQ(page.messages[0].edited_at, history.back().edited_at);

  // Delete for me hides it from that user only.
  MessageChange hide = BobHides(seq, edit.now);
  Must(Await<ChangeResult>([&](auto cb) { store().ChangeMessage(hide, cb); }));
  EXPECT_TRUE(Must(SearchMsgs(store(), bob_.id, "banana")).messages.empty());
  EXPECT_EQ(Seqs(Must(SearchMsgs(store(), alice_.id, "banana"))), (std::vector<Seq>{seq}));

  // Delete for everyone: gone at once, and after indexing.
  MessageChange del = edit;
  del.kind = static_cast<int>(protocol::ChangeKind::kDelete);
  del.now = 4000;
  Must(Await<ChangeResult>([&](auto cb) { store().ChangeMessage(del, cb); }));
  EXPECT_TRUE(Must(SearchMsgs(store(), alice_.id, "banana")).messages.empty());
  IndexAll(store());
  EXPECT_TRUE(Must(SearchMsgs(store(), alice_.id, "banana")).messages.empty());
  EXPECT_TRUE(Must(SearchMsgs(store(), alice_.id, "bread")).messages.empty());
}

// ---- Retention (issue 12): disappearing timers, expiry, purge ----

Result<SocialResult> SetTimer(Store& s, UserId user, ConversationId conv, int64_t seconds, int64_t now = 3000) {
  return Await<SocialResult>([&](auto cb) { s.SetDisappearing(user, conv, seconds, now, cb); });
}

ExpireProgress ExpireAt(Store& s, int64_t now, int max = 100) {
  return Must(Await<ExpireProgress>([&](auto cb) { s.ExpireMessages(now, max, cb); }));
}

PurgeProgress PurgeBefore(Store& s, int64_t deleted_before, int max = 100) {
  return Must(Await<PurgeProgress>([&](auto cb) { s.PurgeDeleted(deleted_before, max, cb); }));
}

TEST_P(StoreConformance, DisappearingTimerIsStoredAnnouncedToBothMembersAndRefusedToOutsiders) {
  SetUpConversation();
  SocialResult set = Must(SetTimer(store(), bob_.id, conv_, 60));
  EXPECT_TRUE(set.changed);
  ASSERT_EQ(set.positions.size(), 2u);  // both members' streams
  for (const StreamPosition& p : set.positions) {
    StreamPage page = ReadStream(store(), p.user_id, p.user_seq - 1, 1);
    ASSERT_EQ(page.events.size(), 1u);
    const StreamEvent& e = page.events[0];
    EXPECT_EQ(e.kind, EventKind::kDisappearing);
    EXPECT_EQ(e.conversation_id, conv_);
    EXPECT_EQ(e.disappearing_s, 60);
    EXPECT_EQ(e.receipt_user_id, bob_.id) << "who set it";
    EXPECT_EQ(e.created_at, 3000);
  }
  // The same setting again changes nothing and appends nothing.
  UserSeq head = Head(store(), alice_.id);
  SocialResult again = Must(SetTimer(store(), alice_.id, conv_, 60));
  EXPECT_FALSE(again.changed);
  EXPECT_TRUE(again.positions.empty());
  EXPECT_EQ(Head(store(), alice_.id), head);
  // Shown on the conversation, its summaries and the conversation list.
  EXPECT_EQ(Must(Await<ConversationRecord>([&](auto cb) { store().GetConversation(conv_, cb); })).disappearing_s, 60);
  Snapshot snap = Must(Await<Snapshot>([&](auto cb) { store().GetSnapshot(alice_.id, 5, cb); }));
  ASSERT_EQ(snap.conversations.size(), 1u);
  EXPECT_EQ(snap.conversations[0].conversation.disappearing_s, 60);
  ConversationPage list =
      Must(Await<ConversationPage>([&](auto cb) { store().ListConversations(bob_.id, 0, 0, 10, 1, cb); }));
  ASSERT_EQ(list.conversations.size(), 1u);
  EXPECT_EQ(list.conversations[0].conversation.disappearing_s, 60);
  // Outsiders and unknown conversations.
  Result<SocialResult> r = SetTimer(store(), carol_.id, conv_, 10);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), ErrorCode::kNotMember);
  r = SetTimer(store(), alice_.id, conv_ + 1000, 10);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), ErrorCode::kUnknownConversation);
  // Off again.
  EXPECT_TRUE(Must(SetTimer(store(), alice_.id, conv_, 0)).changed);
  EXPECT_EQ(Must(Await<ConversationRecord>([&](auto cb) { store().GetConversation(conv_, cb); })).disappearing_s, 0);
}

TEST_P(StoreConformance, MessagesExpireAtCommitTimePlusTheTimerOrTheServerMaximumIfSooner) {
  SetUpConversation();
  // The store's clock (kStoreClockMillis) is the commit time: stored_at.
  EXPECT_EQ(Send(alice_, alice_dev_, "before").message.expires_at, 0) << "no timer, no maximum: never";
  Must(SetTimer(store(), alice_.id, conv_, 60));
  AppendResult timed = Send(alice_, alice_dev_, "timed");
  EXPECT_EQ(timed.message.expires_at, kStoreClockMillis + 60'000);
  NewMessage capped = Msg(conv_, bob_.id, bob_dev_.id, "capped", "x");
  capped.max_age_ms = 10'000;
  EXPECT_EQ(Must(Append(store(), capped)).message.expires_at, kStoreClockMillis + 10'000);
  NewMessage longer = Msg(conv_, bob_.id, bob_dev_.id, "longer", "x");
  longer.max_age_ms = 600'000;
  EXPECT_EQ(Must(Append(store(), longer)).message.expires_at, kStoreClockMillis + 60'000);
  Must(SetTimer(store(), alice_.id, conv_, 0));
  NewMessage max_only = Msg(conv_, bob_.id, bob_dev_.id, "max-only", "x");
  max_only.max_age_ms = 20'000;
  EXPECT_EQ(Must(Append(store(), max_only)).message.expires_at, kStoreClockMillis + 20'000);
  // Shown in history and in the message events; a retry returns it too.
  std::vector<MessageRecord> history = History(store(), conv_, 0, 10, bob_.id);
  ASSERT_EQ(history.size(), 5u);
  EXPECT_EQ(history[0].expires_at, 0);
  EXPECT_EQ(history[1].expires_at, kStoreClockMillis + 60'000);
  for (const StreamEvent& e : ReadStream(store(), bob_.id, 0, 100).events)
    if (e.kind == EventKind::kMessage && e.message->seq == timed.message.seq) {
      EXPECT_EQ(e.message->expires_at, kStoreClockMillis + 60'000);
    }
  AppendResult dup = Must(Append(store(), Msg(conv_, alice_.id, alice_dev_.id, "timed", "body timed")));
  EXPECT_TRUE(dup.duplicate);
  EXPECT_EQ(dup.message.expires_at, kStoreClockMillis + 60'000);
}

// The delivery checker's view of retention (docs/checker.md): each
// message's expires_at in the export, and the timer changes as `stream`
// rows (kind kDisappearing: the actor in receipt_user_id, the seconds in
// delivered) in every member's stream.
TEST_P(StoreConformance, ExportCarriesEachMessagesExpiryAndTheTimerChanges) {
  SetUpConversation();
  Send(alice_, alice_dev_, "plain");  // seq 1: never expires
  Must(SetTimer(store(), bob_.id, conv_, 60));
  Send(alice_, alice_dev_, "timed");  // seq 2
  Must(SetTimer(store(), alice_.id, conv_, 0));
  ExportPage m = Must(Await<ExportPage>([&](auto cb) { store().Export(ExportTable::kMessages, {}, 10, cb); }));
  ASSERT_EQ(m.rows.size(), 2u);
  EXPECT_EQ(ExportColumns(ExportTable::kMessages)[4], "expires_at");
  EXPECT_EQ(m.rows[0].values[4], 0);
  EXPECT_EQ(m.rows[1].values[4], kStoreClockMillis + 60'000);
  EXPECT_EQ(m.rows[1].text, "timed");
  ExportPage st = Must(Await<ExportPage>([&](auto cb) { store().Export(ExportTable::kStream, {}, 100, cb); }));
  std::map<int64_t, std::vector<std::pair<int64_t, int64_t>>> timers;  // user -> (actor, seconds), in order
  for (const ExportRow& r : st.rows) {
    if (r.values[2] != static_cast<int64_t>(EventKind::kDisappearing)) continue;
    EXPECT_EQ(r.values[3], conv_);
    timers[r.values[0]].push_back({r.values[5], r.values[6]});
  }
  const std::vector<std::pair<int64_t, int64_t>> want = {{bob_.id, 60}, {alice_.id, 0}};
  EXPECT_EQ(timers[alice_.id], want);
  EXPECT_EQ(timers[bob_.id], want);
}

TEST_P(StoreConformance, ExpiryTombstonesExpiredMessagesInBoundedStepsWithADeleteEventToEachMember) {
  SetUpConversation();
  ConversationId other = Open(store(), alice_.id, carol_.id).conversation.id;
  Must(Append(store(), Msg(other, alice_.id, alice_dev_.id, "o1", "other words")));
  Send(alice_, alice_dev_, "kept");  // before the timer: never expires
  Must(SetTimer(store(), bob_.id, conv_, 1));
  const int64_t expires = kStoreClockMillis + 1000;
  std::vector<Seq> timed;
  for (const char* id : {"t1", "t2", "t3"}) {
    AppendResult a = Must(Append(store(), Msg(conv_, alice_.id, alice_dev_.id, id, "vanishing words")));
    EXPECT_EQ(a.message.expires_at, expires);
    timed.push_back(a.message.seq);
  }
  IndexAll(store());
  EXPECT_EQ(Seqs(Must(SearchMsgs(store(), bob_.id, "vanishing"))).size(), 3u);

  EXPECT_TRUE(ExpireAt(store(), expires - 1).expired.empty()) << "not before expires_at";
  ExpireProgress first = ExpireAt(store(), expires, 2);
  ASSERT_EQ(first.expired.size(), 2u);
  EXPECT_TRUE(first.more) << "a full step says more are waiting";
  ExpireProgress second = ExpireAt(store(), expires + 5);
  ASSERT_EQ(second.expired.size(), 1u);
  EXPECT_FALSE(second.more);
  EXPECT_TRUE(ExpireAt(store(), expires + 10).expired.empty()) << "each message expires once";
  std::vector<Seq> expired_seqs;
  for (const ExpireProgress* step : {&first, &second})
    for (const ChangeResult& x : step->expired) {
      expired_seqs.push_back(x.message.seq);
      EXPECT_EQ(x.message.body, "");
      EXPECT_EQ(x.message.expires_at, expires);
      EXPECT_GE(x.message.deleted_at, expires);
      EXPECT_EQ(x.version, 1);
      ASSERT_EQ(x.positions.size(), 2u) << "a delete event to each member";
      for (const StreamPosition& p : x.positions) {
        StreamPage page = ReadStream(store(), p.user_id, p.user_seq - 1, 1);
        ASSERT_EQ(page.events.size(), 1u);
        EXPECT_EQ(page.events[0].kind, EventKind::kDelete);
        ASSERT_TRUE(page.events[0].message.has_value());
        EXPECT_TRUE(DeletedByExpiry(*page.events[0].message)) << "reads as an expiry";
      }
    }
  std::sort(expired_seqs.begin(), expired_seqs.end());
  EXPECT_EQ(expired_seqs, timed);

  // A device that syncs or pages history now gets tombstones, never the text.
  for (const StreamEvent& e : ReadStream(store(), bob_.id, 0, 100).events)
    if (e.message && e.conversation_id == conv_ && e.message->seq != 1) {
      EXPECT_EQ(e.message->body, "") << "kind " << static_cast<int>(e.kind);
    }
  std::vector<MessageRecord> history = History(store(), conv_, 0, 10, bob_.id);
  ASSERT_EQ(history.size(), 4u);
  EXPECT_EQ(history[0].body, "body kept");
  for (size_t i = 1; i < history.size(); ++i) {
    EXPECT_EQ(history[i].body, "");
    EXPECT_TRUE(DeletedByExpiry(history[i]));
  }
  // Search stops matching at once and after indexing; the other
  // conversation is untouched.
  EXPECT_TRUE(Must(SearchMsgs(store(), bob_.id, "vanishing")).messages.empty());
  IndexAll(store());
  EXPECT_TRUE(Must(SearchMsgs(store(), alice_.id, "vanishing")).messages.empty());
  EXPECT_EQ(Seqs(Must(SearchMsgs(store(), carol_.id, "other"))).size(), 1u);
  std::vector<MessageRecord> other_history = History(store(), other, 0, 10, carol_.id);
  ASSERT_EQ(other_history.size(), 1u);
  EXPECT_EQ(other_history[0].body, "other words");
  EXPECT_EQ(other_history[0].deleted_at, 0);
}

TEST_P(StoreConformance, PurgeRemovesATombstonesDataInBatchesKeepsOthersAndTheOriginalAck) {
  SetUpConversation();
  ConversationId other = Open(store(), alice_.id, carol_.id).conversation.id;
  Seq other_seq = Must(Append(store(), Msg(other, alice_.id, alice_dev_.id, "o1", "other words"))).message.seq;
  MessageChange other_edit = AliceEdits(other_seq, "oe1", "other edited", 3000);
  other_edit.conversation_id = other;
  Must(Await<ChangeResult>([&](auto cb) { store().ChangeMessage(other_edit, cb); }));
  AppendResult sent = Send(alice_, alice_dev_, "m1");
  Seq seq = sent.message.seq;
  Must(Await<ChangeResult>([&](auto cb) { store().ChangeMessage(AliceEdits(seq, "e1", "edited secret", 3000), cb); }));
  Must(Await<ChangeResult>([&](auto cb) { store().ChangeMessage(AliceEdits(seq, "e2", "edited again", 3001), cb); }));
  IndexAll(store());
  MessageChange del = AliceEdits(seq, "", "", 4000);
  del.kind = static_cast<int>(protocol::ChangeKind::kDelete);
  Must(Await<ChangeResult>([&](auto cb) { store().ChangeMessage(del, cb); }));

  PurgeProgress early = PurgeBefore(store(), 3999);
  EXPECT_EQ(early.purged, 0) << "not before the delay has passed";
  EXPECT_EQ(early.backlog, 0);
  PurgeProgress p = PurgeBefore(store(), 4000);
  EXPECT_EQ(p.purged, 1);
  EXPECT_EQ(p.edits_removed, 2) << "both edit rows of the deleted message";
  EXPECT_EQ(p.search_removed, 1) << "its search row (not re-indexed since the delete)";
  EXPECT_EQ(p.backlog, 0);
  PurgeProgress again = PurgeBefore(store(), 10'000);
  EXPECT_EQ(again.purged, 0) << "a tombstone is purged once";

  // The tombstone stays: its seq in history, its dedup key: a retry of the
  // purged message's client id gets the original ack.
  std::vector<MessageRecord> history = History(store(), conv_, 0, 10, bob_.id);
  ASSERT_EQ(history.size(), 1u);
  EXPECT_EQ(history[0].seq, seq);
  EXPECT_EQ(history[0].body, "");
  EXPECT_EQ(history[0].deleted_at, 4000);
  AppendResult retry = Must(Append(store(), Msg(conv_, alice_.id, alice_dev_.id, "m1", "body m1", 9000)));
  EXPECT_TRUE(retry.duplicate);
  EXPECT_EQ(retry.message.seq, seq);
  EXPECT_EQ(retry.message.created_at, sent.message.created_at);
  EXPECT_EQ(retry.message.client_id, "m1");
  EXPECT_TRUE(retry.positions.empty());
  // The next message still takes the next seq (the log stays gapless).
  EXPECT_EQ(Send(alice_, alice_dev_, "m2").message.seq, seq + 1);
  // The other conversation keeps its edit (its edit event still reads the
  // text from the edit rows) and stays searchable.
  bool saw_other_edit = false;
  for (const StreamEvent& e : ReadStream(store(), carol_.id, 0, 100).events)
    if (e.kind == EventKind::kEdit) {
      EXPECT_EQ(e.message->body, "other edited");
      saw_other_edit = true;
    }
  EXPECT_TRUE(saw_other_edit);
  IndexAll(store());
  EXPECT_EQ(Seqs(Must(SearchMsgs(store(), carol_.id, "edited"))), (std::vector<Seq>{other_seq}));
  EXPECT_TRUE(Must(SearchMsgs(store(), alice_.id, "secret", conv_)).messages.empty());
}

// Many tombstones purge in bounded steps, the backlog counting down.
TEST_P(StoreConformance, PurgeTakesAtMostItsBatchPerStep) {
  SetUpConversation();
  for (int i = 0; i < 5; ++i) {
    Seq seq = Send(alice_, alice_dev_, "m" + std::to_string(i)).message.seq;
    MessageChange del = AliceEdits(seq, "", "", 4000 + i);
    del.kind = static_cast<int>(protocol::ChangeKind::kDelete);
    Must(Await<ChangeResult>([&](auto cb) { store().ChangeMessage(del, cb); }));
  }
  PurgeProgress a = PurgeBefore(store(), 10'000, 2);
  EXPECT_EQ(a.purged, 2);
  EXPECT_EQ(a.backlog, 3);
  PurgeProgress b = PurgeBefore(store(), 10'000, 2);
  EXPECT_EQ(b.purged, 2);
  EXPECT_EQ(b.backlog, 1);
  PurgeProgress c = PurgeBefore(store(), 10'000, 2);
  EXPECT_EQ(c.purged, 1);
  EXPECT_EQ(c.backlog, 0);
}

// ---- Cold tier (issue 12 item 6): compaction into compressed blocks ----
//
// Every backend has one (Store::HasColdTier): SQLite pages texts back in a
// SQL function, PostgreSQL in C++ after each query.

// Everything a MessageRecord carries, as one line, so that a whole read can be
// compared before and after a compaction.
std::string Dump(const MessageRecord& m) {
  return fmt::format("{}/{} from {}:{} id={} body=[{}] at={} v={} edited={} deleted={} expires={} stays_sent={}",
                     m.conversation_id, m.seq, m.sender_id, m.sender_device_id, m.client_id, m.body, m.created_at,
                     m.version, m.edited_at, m.deleted_at, m.expires_at, m.stays_sent);
}

std::vector<std::string> Dump(const std::vector<MessageRecord>& ms) {
  std::vector<std::string> out;
  for (const MessageRecord& m : ms) out.push_back(Dump(m));
  return out;
}

std::vector<std::string> Dump(const StreamPage& page) {
  std::vector<std::string> out;
  for (const StreamEvent& e : page.events) {
    out.push_back(fmt::format("{} kind={} conv={} at={} withheld={} {}", e.user_seq, static_cast<int>(e.kind),
                              e.conversation_id, e.created_at, fmt::join(e.withheld, ","),
                              e.message ? Dump(*e.message) : "-"));
  }
  return out;
}

std::vector<std::string> Dump(const Snapshot& s) {
  std::vector<std::string> out;
  for (const ConversationSummary& c : s.conversations) {
    out.push_back(fmt::format("conv {} last={} unread={}", c.conversation.id, c.conversation.last_seq, c.unread));
    for (const std::string& m : Dump(c.latest)) out.push_back(m);
  }
  return out;
}

class ColdTierConformance : public StoreConformance {
 protected:
  CompactProgress Compact(int64_t stored_before, int64_t due_before, int max = 100'000) {
    CompactRequest req;
    req.stored_before = stored_before;
    req.due_before = due_before;
    req.max_messages = max;
    return Must(Await<CompactProgress>([&](auto cb) { store().CompactMessages(req, cb); }));
  }
  // Compacts every message stored before `t`, in as many steps as it takes.
  CompactProgress CompactAllBefore(int64_t t) {
    CompactProgress total;
    for (int guard = 0; guard < 100; ++guard) {
      CompactProgress p = Compact(t, t);
      total.messages += p.messages;
      total.blocks += p.blocks;
      total.edits += p.edits;
      total.raw_bytes += p.raw_bytes;
      total.compressed_bytes += p.compressed_bytes;
      if (!p.more) return total;
    }
    ADD_FAILURE() << "compaction never finished";
    return total;
  }

  // Every read that returns texts, as alice and bob see them: history in
  // pages of 7, both streams whole, snapshots, the conversation list, a
  // search, the message timeline of a few messages and the export.
  std::vector<std::string> EveryRead() {
    std::vector<std::string> out;
    for (UserId viewer : {alice_.id, bob_.id, UserId{0}}) {
      for (Seq before = 0;;) {
        std::vector<MessageRecord> page = History(store(), conv_, before, 7, viewer);
        for (const std::string& m : Dump(page)) out.push_back("history " + m);
        if (page.empty() || page.front().seq == 1) break;
        before = page.front().seq;
      }
    }
    for (UserId user : {alice_.id, bob_.id}) {
      for (UserSeq after = 0;;) {
        StreamPage page = ReadStream(store(), user, after, 50);
        for (const std::string& e : Dump(page)) out.push_back("stream " + e);
        if (!page.has_more) break;
        after = page.events.back().user_seq;
      }
      for (const std::string& s : Dump(GetSnapshot(store(), user, 20))) out.push_back("snapshot " + s);
      ConversationPage list = ListConversations(store(), user, 0, 0, 10, 5);
      for (const ConversationSummary& c : list.conversations)
        for (const std::string& m : Dump(c.latest)) out.push_back("list " + m);
      for (MessageSearchPage page{};;) {
        page = Must(SearchMsgs(store(), user, "word", 0, page.next, 10));
        for (const std::string& m : Dump(page.messages)) out.push_back("search " + m);
        if (page.next == 0) break;
      }
    }
    for (Seq seq : {1, 2, 100, 200}) {
      MessageTimeline t = Must(Await<MessageTimeline>([&](auto cb) { store().GetMessageTimeline(conv_, seq, cb); }));
      out.push_back(fmt::format("timeline {} accepted={} stored={}", Dump(t.message), t.accepted_at, t.stored_at));
    }
    for (std::vector<int64_t> after;;) {
      ExportPage p = Must(Await<ExportPage>([&](auto cb) { store().Export(ExportTable::kMessages, after, 64, cb); }));
      for (const ExportRow& r : p.rows) out.push_back(fmt::format("export {} {}", fmt::join(r.values, ","), r.text));
      if (!p.has_more) break;
      after.assign(p.rows.back().values.begin(), p.rows.back().values.begin() + 2);
    }
    return out;
  }

  // Every text still in a block of `conversation` (decoded), by seq.
  std::map<Seq, std::string> BlockTexts(ConversationId conversation) {
    std::map<Seq, std::string> out;
    ColdCodec codec;
    for (const std::vector<std::string>& row :
         RawSql(fmt::format("SELECT first_seq, {} FROM message_blocks WHERE conversation_id = {}",
                            GetParam().hex("data"), conversation))) {
      std::string data;
      for (size_t i = 0; i + 1 < row[1].size(); i += 2)
        data.push_back(static_cast<char>(std::stoi(row[1].substr(i, 2), nullptr, 16)));
      Result<std::vector<ColdEntry>> entries = codec.Unpack(std::stoll(row[0]), data);
      EXPECT_TRUE(entries.has_value()) << "block " << row[0] << " of " << conversation;
      if (!entries) continue;
      for (ColdEntry& e : *entries) out[e.seq] = std::move(e.body);
    }
    return out;
  }

  // Every edit text still in an edit block of `conversation` (decoded), by
  // (seq, version).
  std::map<std::pair<Seq, int64_t>, std::string> EditBlockTexts(ConversationId conversation) {
    std::map<std::pair<Seq, int64_t>, std::string> out;
    ColdCodec codec;
    for (const std::vector<std::string>& row :
         RawSql(fmt::format("SELECT first_seq, {} FROM edit_blocks WHERE conversation_id = {}",
                            GetParam().hex("data"), conversation))) {
      std::string data;
      for (size_t i = 0; i + 1 < row[1].size(); i += 2)
        data.push_back(static_cast<char>(std::stoi(row[1].substr(i, 2), nullptr, 16)));
      Result<std::vector<ColdEditEntry>> entries = codec.UnpackEdits(std::stoll(row[0]), data);
      EXPECT_TRUE(entries.has_value()) << "edit block " << row[0] << " of " << conversation;
      if (!entries) continue;
      for (ColdEditEntry& e : *entries) out[{e.seq, e.version}] = std::move(e.body);
    }
    return out;
  }

  // A text of about 140 bytes, different per message, with a search word in
  // some and bytes that must survive untouched (non-ASCII, quotes, NUL-free
  // control characters).
  static std::string Text(int i) {
    std::string t = fmt::format("message {} — «grüße» \"quoted\" \t tab; ", i);
    if (i % 5 == 0) t += "word ";
    while (t.size() < 140) t += fmt::format("{}-{} ", i * 7919 % 1000, t.size());
    return t;
  }
};

TEST_P(ColdTierConformance, CompactedHistoryPagesBackIdenticallyToWhatWasStored) {
  SetUpConversation();
  constexpr int kMessages = 300;  // more than two blocks
  for (int i = 1; i <= kMessages; ++i) {
    const UserRecord& from = i % 3 == 0 ? bob_ : alice_;
    const DeviceRecord& dev = i % 3 == 0 ? bob_dev_ : alice_dev_;
    Must(Append(store(), Msg(conv_, from.id, dev.id, "c" + std::to_string(i), Text(i), 2000 + i)));
    if (i == 150) {
      ASSERT_TRUE(Block(store(), bob_.id, alice_.id).has_value());  // 151 withheld from bob
    }
    if (i == 151) {
      ASSERT_TRUE(Unblock(store(), bob_.id, alice_.id).has_value());
    }
  }
  // Already changed before the compaction: an edit, a delete, a delete-for-me.
  Must(Await<ChangeResult>([&](auto cb) { store().ChangeMessage(AliceEdits(10, "e10", "edited word ten", 2500), cb); }));
  MessageChange del = AliceEdits(11, "", "", 2501);
  del.kind = static_cast<int>(protocol::ChangeKind::kDelete);
  Must(Await<ChangeResult>([&](auto cb) { store().ChangeMessage(del, cb); }));
  Must(Await<ChangeResult>([&](auto cb) { store().ChangeMessage(BobHides(12, 2502), cb); }));
  ASSERT_TRUE(UpdateReceipt(store(), Receipt(bob_.id, bob_dev_.id, conv_, 200, 100)).has_value());
  IndexAll(store(), 500);
  const std::vector<std::string> before = EveryRead();
  ASSERT_GT(before.size(), 1000u);

  CompactProgress p = CompactAllBefore(1'000'000);
  EXPECT_EQ(p.messages, kMessages - 1) << "every live message; the tombstone has no text";
  EXPECT_EQ(p.blocks, 3);
  EXPECT_LT(p.compressed_bytes, p.raw_bytes);
  EXPECT_GT(p.raw_bytes, kMessages * 100);
  EXPECT_EQ(EveryRead(), before) << "every read returns exactly what it did before";
  Reopen();  // fresh connections: nothing served from a cache
  EXPECT_EQ(EveryRead(), before);
  // Compacted once: a second pass finds nothing due.
  CompactProgress again = Compact(1'000'000, 1'000'000);
  EXPECT_EQ(again.messages, 0);
  EXPECT_FALSE(again.more);
  // Search still finds compacted texts (the index was made before) and a
  // re-index reads them back from the blocks.
  MessageChange edit = AliceEdits(20, "e20", "fresh word twenty", 5000);
  Must(Await<ChangeResult>([&](auto cb) { store().ChangeMessage(edit, cb); }));
  IndexAll(store(), 500);
  EXPECT_EQ(Must(SearchMsgs(store(), bob_.id, "fresh")).messages.size(), 1u);
  EXPECT_EQ(Must(SearchMsgs(store(), bob_.id, "word", 0, 0, 100)).messages.size(), 60u) << "every fifth message";
}

TEST_P(ColdTierConformance, EditsDeletesExpiryAndPurgeWorkOnCompactedMessages) {
  SetUpConversation();
  for (int i = 1; i <= 10; ++i) {
    NewMessage m = Msg(conv_, alice_.id, alice_dev_.id, "m" + std::to_string(i), Text(i), 2000 + i);
    if (i == 9) m.max_age_ms = 100'000;  // expires at kStoreClockMillis + 100 s
    Must(Append(store(), m));
  }
  IndexAll(store());
  ASSERT_EQ(CompactAllBefore(1'000'000).messages, 10);

  // An edit of a compacted message: the new text everywhere, a retry of it is
  // a duplicate with the same answer, the old text no longer found.
  ChangeResult e = Must(Await<ChangeResult>([&](auto cb) { store().ChangeMessage(AliceEdits(3, "e3", "new word", 6000), cb); }));
  EXPECT_EQ(e.message.body, "new word");
  ChangeResult e_again =
      Must(Await<ChangeResult>([&](auto cb) { store().ChangeMessage(AliceEdits(3, "e3", "new word", 6001), cb); }));
  EXPECT_TRUE(e_again.duplicate);
  EXPECT_EQ(e_again.message.body, "new word");
  std::vector<MessageRecord> history = History(store(), conv_, 0, 20, bob_.id);
  ASSERT_EQ(history.size(), 10u);
  EXPECT_EQ(history[2].body, "new word");
  EXPECT_EQ(history[2].version, 1);
  EXPECT_EQ(history[1].body, Text(2)) << "its neighbours still come from the block";
  IndexAll(store());
  EXPECT_EQ(Seqs(Must(SearchMsgs(store(), bob_.id, "new"))), (std::vector<Seq>{3}));
  // The edit event read through sync carries the edit's text.
  bool saw_edit = false;
  for (const StreamEvent& ev : ReadStream(store(), bob_.id, 0, 100).events)
    if (ev.kind == EventKind::kEdit) {
      EXPECT_EQ(ev.message->body, "new word");
      saw_edit = true;
    }
  EXPECT_TRUE(saw_edit);

  // A delete for everyone: a tombstone at once; the purge then removes the
  // text from its block too, and the block's other texts still read back.
  MessageChange del = AliceEdits(5, "", "", 6002);
  del.kind = static_cast<int>(protocol::ChangeKind::kDelete);
  ChangeResult d = Must(Await<ChangeResult>([&](auto cb) { store().ChangeMessage(del, cb); }));
  EXPECT_EQ(d.message.body, "");
  EXPECT_EQ(History(store(), conv_, 6, 1, bob_.id)[0].body, "");
  // Delete for me hides a compacted message from bob only.
  Must(Await<ChangeResult>([&](auto cb) { store().ChangeMessage(BobHides(6, 6003), cb); }));
  EXPECT_EQ(History(store(), conv_, 0, 20, bob_.id).size(), 9u);
  EXPECT_EQ(History(store(), conv_, 0, 20, alice_.id).size(), 10u);

  // Expiry of a compacted message: tombstoned, a delete event per member.
  ExpireProgress x = ExpireAt(store(), kStoreClockMillis + 100'000);
  ASSERT_EQ(x.expired.size(), 1u);
  EXPECT_EQ(x.expired[0].message.seq, 9);
  EXPECT_EQ(x.expired[0].message.body, "");
  EXPECT_EQ(x.expired[0].positions.size(), 2u);

  PurgeProgress purge = PurgeBefore(store(), 1'000'000);
  EXPECT_EQ(purge.purged, 2);
  EXPECT_EQ(purge.cold_removed, 2) << "the deleted and the expired texts left their block";
  history = History(store(), conv_, 0, 20, alice_.id);
  ASSERT_EQ(history.size(), 10u);
  for (int i = 1; i <= 10; ++i) {
    const std::string expected = i == 3 ? "new word" : (i == 5 || i == 9) ? "" : Text(i);
    EXPECT_EQ(history[i - 1].body, expected) << "seq " << i;
  }
  Reopen();
  EXPECT_EQ(Dump(History(store(), conv_, 0, 20, alice_.id)), Dump(history));
  IndexAll(store());
  EXPECT_TRUE(Must(SearchMsgs(store(), alice_.id, "word")).messages.size() == 2u)
      << "seq 3's new text and seq 10's; seq 5's (deleted) never";
}

TEST_P(ColdTierConformance, ARetriedSendGetsItsOriginalAckAfterCompaction) {
  SetUpConversation();
  AppendResult sent = Must(Append(store(), Msg(conv_, alice_.id, alice_dev_.id, "once", Text(1), 2000)));
  Send(bob_, bob_dev_, "other", 2001);
  ASSERT_EQ(CompactAllBefore(1'000'000).messages, 2);
  AppendResult retry = Must(Append(store(), Msg(conv_, alice_.id, alice_dev_.id, "once", "a different text", 9000)));
  EXPECT_TRUE(retry.duplicate);
  EXPECT_TRUE(retry.positions.empty());
  EXPECT_EQ(Dump(retry.message), Dump(sent.message)) << "the original ack, text included";
  EXPECT_EQ(Send(alice_, alice_dev_, "next", 9001).message.seq, 3) << "nothing appended by the retry";
}

TEST_P(ColdTierConformance, CompactionTakesOnlyOldMessagesInBoundedStepsAndWaitsToGatherABlock) {
  SetUpConversation();
  constexpr int kOld = kColdBlockMessages * 2 + 10;
  for (int i = 1; i <= kOld; ++i) Send(alice_, alice_dev_, "o" + std::to_string(i), 1000 + i);
  Send(bob_, bob_dev_, "young", 50'000);
  // The oldest message was stored at 1001: not due before that.
  EXPECT_EQ(Compact(40'000, 1001).messages, 0);
  // A step's budget: one block per step here.
  CompactProgress first = Compact(40'000, 1002, kColdBlockMessages);
  EXPECT_EQ(first.messages, kColdBlockMessages);
  EXPECT_EQ(first.blocks, 1);
  EXPECT_TRUE(first.more);
  // Stopped mid-conversation, it stays due from its first hot message.
  CompactProgress second = Compact(40'000, 40'000, kColdBlockMessages);
  EXPECT_EQ(second.messages, kColdBlockMessages);
  EXPECT_TRUE(second.more);
  CompactProgress third = Compact(40'000, 40'000, kColdBlockMessages);
  EXPECT_EQ(third.messages, 10) << "the rest, up to the first younger message";
  EXPECT_FALSE(third.more);
  // The young message stays hot until it is old enough.
  EXPECT_EQ(Compact(40'000, 40'000).messages, 0);
  EXPECT_EQ(Compact(60'000, 60'000).messages, 1);
  // A send into a conversation whose history is all cold starts the next round.
  Send(alice_, alice_dev_, "later", 70'000);
  EXPECT_EQ(Compact(60'000, 60'000).messages, 0);
  EXPECT_EQ(Compact(80'000, 80'000).messages, 1);
  std::vector<MessageRecord> history = History(store(), conv_, 0, 5, alice_.id);
  ASSERT_EQ(history.size(), 5u);
  EXPECT_EQ(history[4].body, "body later");
  EXPECT_EQ(history[3].body, "body young");
  EXPECT_EQ(history[2].body, "body o" + std::to_string(kOld));
}

// The writer's own reads of a compacted text: a retried edit and a delete
// for me answer with the stored text, and the search indexer reads texts
// compacted before it got to them.
TEST_P(ColdTierConformance, ChangesAndTheIndexerReadCompactedTextsBack) {
  SetUpConversation();
  for (int i = 1; i <= 3; ++i)
    Must(Append(store(), Msg(conv_, alice_.id, alice_dev_.id, "m" + std::to_string(i), Text(i) + " findme", 2000 + i)));
  Must(Await<ChangeResult>([&](auto cb) { store().ChangeMessage(AliceEdits(1, "e1", "edited word", 2500), cb); }));
  ASSERT_EQ(CompactAllBefore(1'000'000).messages, 3) << "before the indexer ran";
  ChangeResult retry =
      Must(Await<ChangeResult>([&](auto cb) { store().ChangeMessage(AliceEdits(1, "e1", "edited word", 2600), cb); }));
  EXPECT_TRUE(retry.duplicate);
  EXPECT_EQ(retry.message.body, "edited word");
  ChangeResult hide = Must(Await<ChangeResult>([&](auto cb) { store().ChangeMessage(BobHides(2, 2700), cb); }));
  EXPECT_EQ(hide.message.body, Text(2) + " findme");
  IndexAll(store());
  MessageSearchPage found = Must(SearchMsgs(store(), alice_.id, "findme"));
  ASSERT_EQ(found.messages.size(), 2u) << "seq 1's text is the edit's";
  EXPECT_EQ(found.messages[0].body, Text(3) + " findme");
  EXPECT_EQ(found.messages[1].body, Text(2) + " findme");
  EXPECT_EQ(Seqs(Must(SearchMsgs(store(), alice_.id, "edited"))), (std::vector<Seq>{1}));
}

TEST_P(ColdTierConformance, APushOfACompactedMessagePreviewsItsText) {
  SetUpConversation();
  ASSERT_TRUE(
      AwaitStatus([&](auto cb) { store().SetPushEndpoint(bob_.id, bob_dev_.id, "webhook", "tok", 1000, cb); }).ok());
  Must(Append(store(), Msg(conv_, alice_.id, alice_dev_.id, "p1", Text(1), 2000)));
  ASSERT_EQ(CompactAllBefore(1'000'000).messages, 1);
  const PushRequest req = MessagePush(bob_.id, conv_, 1, 10'000, 10'000);
  ASSERT_EQ(Must(Await<int>([&](auto cb) { store().EnqueuePush(req, cb); })), 1);
  std::vector<PushJob> jobs = Must(
      Await<std::vector<PushJob>>([&](auto cb) { store().ClaimPushJobs("node-a", 10'001, 30'000, 10, cb); }));
  ASSERT_EQ(jobs.size(), 1u);
  EXPECT_EQ(jobs[0].preview, Text(1));
  EXPECT_EQ(jobs[0].preview_error, "");
}

// Erasing a user whose messages are compacted (docs/operations.md "User
// erase"), as the admin erase does it: the account, then a delete for
// everyone of each of the user's messages, whatever the delete window.
// The other member then reads tombstones where the user's messages were
// (same seqs, no text, no gap) and their own messages as they were; the
// erased texts leave the blocks at the purge, which rewrites each block
// with the other member's texts only.
TEST_P(ColdTierConformance, ErasingAUserWhoseMessagesAreCompactedLeavesNoTextOfTheirsInABlock) {
  SetUpConversation();
  constexpr int kMessages = kColdBlockMessages + 20;  // two blocks
  for (int i = 1; i <= kMessages; ++i) {
    const bool alices = i % 3 != 0;
    Must(Append(store(), Msg(conv_, alices ? alice_.id : bob_.id, alices ? alice_dev_.id : bob_dev_.id,
                             "c" + std::to_string(i), Text(i), 2000 + i)));
  }
  IndexAll(store());
  ASSERT_EQ(CompactAllBefore(1'000'000).messages, kMessages);
  ASSERT_EQ(BlockTexts(conv_).size(), static_cast<size_t>(kMessages));

  Must(Await<EraseResult>([&](auto cb) { store().EraseAccount(alice_.id, 6000, cb); }));
  int deleted = 0;
  for (const MessageRecord& m : History(store(), conv_, 0, kMessages, /*viewer=*/0)) {
    if (m.sender_id != alice_.id) continue;
    MessageChange del = ChangeOf(protocol::ChangeKind::kDelete, alice_, alice_dev_, m.seq, 6001);
    del.device_id = m.sender_device_id;
    del.delete_window_ms = std::numeric_limits<int64_t>::max();
    EXPECT_FALSE(Must(Await<ChangeResult>([&](auto cb) { store().ChangeMessage(del, cb); })).duplicate);
    ++deleted;
  }
  ASSERT_EQ(deleted, kMessages - kMessages / 3);

  // Bob's view: every seq, the erased user's messages as tombstones from
  // the erased account, his own texts as they were; search finds only his.
  auto expect_bobs_view = [&] {
    std::vector<MessageRecord> history = History(store(), conv_, 0, kMessages, bob_.id);
    ASSERT_EQ(history.size(), static_cast<size_t>(kMessages));
    for (int i = 1; i <= kMessages; ++i) {
      const MessageRecord& m = history[static_cast<size_t>(i - 1)];
      EXPECT_EQ(m.seq, i);
      if (i % 3 != 0) {
        EXPECT_EQ(m.sender_id, alice_.id);
        EXPECT_EQ(m.body, "") << "seq " << i;
        EXPECT_GT(m.deleted_at, 0) << "seq " << i;
      } else {
        EXPECT_EQ(m.body, Text(i)) << "seq " << i;
        EXPECT_EQ(m.deleted_at, 0);
      }
    }
    IndexAll(store());
    for (const MessageRecord& m : Must(SearchMsgs(store(), bob_.id, "word", 0, 0, 100)).messages)
      EXPECT_EQ(m.seq % 3, 0) << "an erased text found by search: seq " << m.seq;
  };
  expect_bobs_view();
  EXPECT_EQ(Must(Await<UserRecord>([&](auto cb) { store().GetUserById(alice_.id, cb); })).username,
            kErasedUsernamePrefix + std::to_string(alice_.id));

  // The purge takes the erased texts out of their blocks; only bob's stay.
  PurgeProgress purge = PurgeBefore(store(), 1'000'000, 1000);
  EXPECT_EQ(purge.purged, deleted);
  EXPECT_EQ(purge.cold_removed, deleted);
  std::map<Seq, std::string> bobs;
  for (int i = 3; i <= kMessages; i += 3) bobs[i] = Text(i);
  EXPECT_EQ(BlockTexts(conv_), bobs);
  expect_bobs_view();
}

// Edit texts (message_edits) are compacted with their messages: after the
// step no edit text is left in the hot table, each is in the edit block of
// its message range, and every read (the kEdit events of the streams above
// all) returns exactly what it did before. An edit made after the
// compaction is a hot row again and the compacted ones still page back.
// Before, edit texts stayed hot for good.
TEST_P(ColdTierConformance, CompactedEditTextsLeaveTheHotTableAndPageBackIdentically) {
  SetUpConversation();
  constexpr int kMessages = 220;  // two message ranges, both with edits (EveryRead reads seq 200)
  for (int i = 1; i <= kMessages; ++i) {
    const bool alices = i % 3 != 0;
    Must(Append(store(), Msg(conv_, alices ? alice_.id : bob_.id, alices ? alice_dev_.id : bob_dev_.id,
                             "c" + std::to_string(i), Text(i), 2000 + i)));
  }
  // Alice edits 2 twice, 4 once and 140 once; bob edits his 3; alice edits
  // 7 and then deletes it (a deleted message's edit texts are empty).
  std::map<std::pair<Seq, int64_t>, std::string> edited;
  auto edit = [&](const UserRecord& user, const DeviceRecord& dev, Seq seq, const std::string& body, int64_t now) {
    MessageChange c = ChangeOf(protocol::ChangeKind::kEdit, user, dev, seq, now);
    c.client_id = fmt::format("e{}-{}", seq, now);
    c.body = body;
    c.edit_window_ms = c.delete_window_ms = 60'000;
    SCOPED_TRACE(fmt::format("edit of {} at {}", seq, now));
    ChangeResult r = Must(Await<ChangeResult>([&](auto cb) { store().ChangeMessage(c, cb); }));
    edited[{seq, r.version}] = body;
  };
  edit(alice_, alice_dev_, 2, "two, first edit " + Text(1002), 5000);
  edit(alice_, alice_dev_, 2, "two, second edit «ü» " + Text(2002), 5001);
  edit(alice_, alice_dev_, 4, "four edited word", 5002);
  edit(alice_, alice_dev_, 140, "one hundred forty edited", 5003);
  edit(bob_, bob_dev_, 3, "bob's three edited", 5004);
  edit(alice_, alice_dev_, 7, "seven edited, then deleted", 5005);
  edited.erase({7, 1});
  MessageChange del = AliceEdits(7, "", "", 5006);
  del.kind = static_cast<int>(protocol::ChangeKind::kDelete);
  Must(Await<ChangeResult>([&](auto cb) { store().ChangeMessage(del, cb); }));
  IndexAll(store(), 500);
  const std::vector<std::string> before = EveryRead();
  for (const auto& [key, body] : edited) {
    EXPECT_NE(std::find_if(before.begin(), before.end(),
                           [&](const std::string& line) { return line.find(body) != std::string::npos; }),
              before.end())
        << "the edit of " << key.first << " is read before the compaction";
  }

  CompactProgress p = CompactAllBefore(1'000'000);
  EXPECT_EQ(p.messages, kMessages - 1);
  EXPECT_EQ(p.edits, static_cast<int>(edited.size())) << "every edit with a text; 7's was emptied by its delete";
  EXPECT_EQ(RawSql(fmt::format("SELECT count(*) FROM message_edits WHERE conversation_id = {} AND body <> ''", conv_)),
            (SqlRows{{"0"}}))
      << "no edit text left in the hot table";
  EXPECT_EQ(RawSql(fmt::format("SELECT count(*) FROM edit_blocks WHERE conversation_id = {}", conv_)),
            (SqlRows{{"2"}}))
      << "one edit block per compacted range with edits";
  EXPECT_EQ(EditBlockTexts(conv_), edited);
  EXPECT_EQ(EveryRead(), before) << "every read, the edit events' texts included, returns what it did before";
  Reopen();  // fresh connections: nothing served from a cache
  EXPECT_EQ(EveryRead(), before);

  // A later edit: a hot row, its event carries its text; the compacted
  // edits of the same message still page back in the older events.
  edit(alice_, alice_dev_, 2, "two, third edit", 9000);
  std::vector<std::string> edit_texts;
  for (const StreamEvent& ev : ReadStream(store(), bob_.id, 0, 1000).events)
    if (ev.kind == EventKind::kEdit && ev.message->seq == 2) edit_texts.push_back(ev.message->body);
  EXPECT_EQ(edit_texts, (std::vector<std::string>{edited[{2, 1}], edited[{2, 2}], "two, third edit"}));
  EXPECT_EQ(History(store(), conv_, 3, 1, bob_.id)[0].body, "two, third edit");
  EXPECT_EQ(Compact(1'000'000, 1'000'000).edits, 0) << "a compaction never goes back below cold_through";

  // A compacted edit whose edit block is gone fails the read (corruption is
  // never shown as an empty text); history, which reads no edit text, is
  // unaffected.
  ASSERT_EQ(RawSql(fmt::format("DELETE FROM edit_blocks WHERE conversation_id = {}", conv_)).size(), 0u);
  Result<StreamPage> broken = Await<StreamPage>([&](auto cb) { store().ReadStream(bob_.id, 0, 1000, cb); });
  ASSERT_FALSE(broken.has_value());
  EXPECT_EQ(broken.error().code(), ErrorCode::kInternal) << broken.error().message();
  EXPECT_EQ(History(store(), conv_, 3, 1, bob_.id)[0].body, "two, third edit");
}

// A delete for everyone, an expiry and the erase of a user remove compacted
// edit texts as they do compacted message texts: at once from every read,
// and from the edit blocks at the purge, which rewrites each edit block with
// the other edits only (or deletes it once empty).
TEST_P(ColdTierConformance, DeletesExpiryAndEraseRemoveCompactedEditTextsFromTheirBlocksAtThePurge) {
  SetUpConversation();
  for (int i = 1; i <= 10; ++i) {
    const bool alices = i != 8;
    NewMessage m = Msg(conv_, alices ? alice_.id : bob_.id, alices ? alice_dev_.id : bob_dev_.id,
                       "m" + std::to_string(i), Text(i), 2000 + i);
    if (i == 9) m.max_age_ms = 100'000;  // expires at kStoreClockMillis + 100 s
    Must(Append(store(), m));
  }
  Must(Await<ChangeResult>([&](auto cb) { store().ChangeMessage(AliceEdits(3, "e3", "three edited", 5000), cb); }));
  Must(Await<ChangeResult>([&](auto cb) { store().ChangeMessage(AliceEdits(5, "e5a", "five edited", 5001), cb); }));
  Must(Await<ChangeResult>([&](auto cb) { store().ChangeMessage(AliceEdits(5, "e5b", "five again", 5002), cb); }));
  Must(Await<ChangeResult>([&](auto cb) { store().ChangeMessage(AliceEdits(9, "e9", "nine edited", 5003), cb); }));
  MessageChange bobs = ChangeOf(protocol::ChangeKind::kEdit, bob_, bob_dev_, 8, 5004);
  bobs.client_id = "e8";
  bobs.body = "eight edited by bob";
  bobs.edit_window_ms = bobs.delete_window_ms = 60'000;
  Must(Await<ChangeResult>([&](auto cb) { store().ChangeMessage(bobs, cb); }));
  CompactProgress p = CompactAllBefore(1'000'000);
  ASSERT_EQ(p.messages, 10);
  ASSERT_EQ(p.edits, 5);
  using Edits = std::map<std::pair<Seq, int64_t>, std::string>;
  ASSERT_EQ(EditBlockTexts(conv_), (Edits{{{3, 1}, "three edited"},
                                          {{5, 1}, "five edited"},
                                          {{5, 2}, "five again"},
                                          {{8, 1}, "eight edited by bob"},
                                          {{9, 1}, "nine edited"}}));

  // The texts of the edits of 5 (deleted) and 9 (expired) go from every read at once.
  MessageChange del = AliceEdits(5, "", "", 6000);
  del.kind = static_cast<int>(protocol::ChangeKind::kDelete);
  Must(Await<ChangeResult>([&](auto cb) { store().ChangeMessage(del, cb); }));
  ASSERT_EQ(ExpireAt(store(), kStoreClockMillis + 100'000).expired.size(), 1u);
  auto edit_events = [&] {
    std::map<std::pair<Seq, int64_t>, std::string> out;
    for (const StreamEvent& ev : ReadStream(store(), bob_.id, 0, 1000).events)
      if (ev.kind == EventKind::kEdit) out[{ev.message->seq, ev.message->version}] = ev.message->body;
    return out;
  };
  const Edits after_delete{{{3, 1}, "three edited"},
                           {{5, 1}, ""},
                           {{5, 2}, ""},
                           {{8, 1}, "eight edited by bob"},
                           {{9, 1}, ""}};
  EXPECT_EQ(edit_events(), after_delete);

  // The purge takes them out of the edit block; the others still page back.
  PurgeProgress purge = PurgeBefore(store(), 1'000'000);
  EXPECT_EQ(purge.purged, 2);
  EXPECT_EQ(purge.cold_removed, 2 + 3) << "two message texts and three edit texts";
  EXPECT_EQ(EditBlockTexts(conv_), (Edits{{{3, 1}, "three edited"}, {{8, 1}, "eight edited by bob"}}));
  Reopen();
  // The purge removed 5's and 9's edit rows: their events carry no text.
  EXPECT_EQ(edit_events(), (Edits{{{3, 1}, "three edited"},
                                  {{5, 1}, ""},
                                  {{5, 2}, ""},
                                  {{8, 1}, "eight edited by bob"},
                                  {{9, 1}, ""}}));

  // Erasing alice: her messages are deleted and purged; no edit text of
  // hers is left in a block, bob's edit stays and reads back.
  Must(Await<EraseResult>([&](auto cb) { store().EraseAccount(alice_.id, 7000, cb); }));
  for (const MessageRecord& m : History(store(), conv_, 0, 20, /*viewer=*/0)) {
    if (m.sender_id != alice_.id || m.deleted_at != 0) continue;
    MessageChange d = ChangeOf(protocol::ChangeKind::kDelete, alice_, alice_dev_, m.seq, 7001);
    d.delete_window_ms = std::numeric_limits<int64_t>::max();
    EXPECT_FALSE(Must(Await<ChangeResult>([&](auto cb) { store().ChangeMessage(d, cb); })).duplicate);
  }
  purge = PurgeBefore(store(), 1'000'000);
  EXPECT_EQ(purge.purged, 7);
  EXPECT_EQ(purge.cold_removed, 7 + 1) << "seven message texts and 3's edit";
  EXPECT_EQ(EditBlockTexts(conv_), (Edits{{{8, 1}, "eight edited by bob"}}));
  EXPECT_EQ(BlockTexts(conv_), (std::map<Seq, std::string>{{8, "eight edited by bob"}}))
      << "8 was edited before the compaction: its block holds its current text";
  Reopen();
  const std::map<std::pair<Seq, int64_t>, std::string> events = edit_events();
  EXPECT_EQ(events.at({8, 1}), "eight edited by bob");
  EXPECT_EQ(events.at({3, 1}), "");

  // Bob's edit goes too once his message is deleted and purged: the edit
  // block, now empty, is deleted.
  MessageChange bob_del = ChangeOf(protocol::ChangeKind::kDelete, bob_, bob_dev_, 8, 8000);
  bob_del.delete_window_ms = std::numeric_limits<int64_t>::max();
  Must(Await<ChangeResult>([&](auto cb) { store().ChangeMessage(bob_del, cb); }));
  EXPECT_EQ(PurgeBefore(store(), 1'000'000).cold_removed, 2);
  EXPECT_EQ(RawSql(fmt::format("SELECT count(*) FROM edit_blocks WHERE conversation_id = {}", conv_)),
            (SqlRows{{"0"}}));
}

// A compacted text that cannot be paged in when its push is claimed (here
// its block is gone; on PostgreSQL also a message another node is changing
// then: PgStoreTest.APushOfAMessageAnotherNodeIsChangingGoesWithoutItsPreview)
// costs that push its preview only: the claim still leases and returns it,
// to be sent now, and the other jobs of the claim keep theirs. Before, the
// claim failed as a whole: on PostgreSQL after writing its leases, so every
// job of it waited out its lease; on SQLite rolled back, so the next claim
// failed the same way.
TEST_P(ColdTierConformance, APushWhoseCompactedTextCannotBePagedInIsClaimedWithoutItsPreview) {
  SetUpConversation();
  ASSERT_TRUE(
      AwaitStatus([&](auto cb) { store().SetPushEndpoint(bob_.id, bob_dev_.id, "webhook", "tok", 1000, cb); }).ok());
  ASSERT_TRUE(
      AwaitStatus([&](auto cb) { store().SetPushEndpoint(carol_.id, carol_dev_.id, "webhook", "tc", 1000, cb); }).ok());
  Must(Append(store(), Msg(conv_, alice_.id, alice_dev_.id, "p1", Text(1), 2000)));
  ASSERT_EQ(CompactAllBefore(1'000'000).messages, 1);
  const ConversationId with_carol = Open(store(), alice_.id, carol_.id, 2500).conversation.id;
  Must(Append(store(), Msg(with_carol, alice_.id, alice_dev_.id, "p2", Text(2), 3000)));  // stays hot
  ASSERT_EQ(RawSql(fmt::format("DELETE FROM message_blocks WHERE conversation_id = {}", conv_)).size(), 0u);

  for (auto [user, conversation] : {std::pair{bob_.id, conv_}, std::pair{carol_.id, with_carol}}) {
    const PushRequest req = MessagePush(user, conversation, 1, 10'000, 10'000);
    ASSERT_EQ(Must(Await<int>([&](auto cb) { store().EnqueuePush(req, cb); })), 1);
  }
  std::vector<PushJob> jobs = Must(
      Await<std::vector<PushJob>>([&](auto cb) { store().ClaimPushJobs("node-a", 10'001, 30'000, 10, cb); }));
  ASSERT_EQ(jobs.size(), 2u);
  std::sort(jobs.begin(), jobs.end(), [](const PushJob& a, const PushJob& b) { return a.user_id < b.user_id; });
  const PushJob& bobs = jobs[0];
  EXPECT_EQ(bobs.user_id, bob_.id);
  EXPECT_TRUE(bobs.alert) << "a notification all the same";
  EXPECT_EQ(bobs.sender_id, alice_.id);
  EXPECT_EQ(bobs.sender_display_name, "alice");
  EXPECT_EQ(bobs.badge, 1);
  EXPECT_EQ(bobs.preview, "");
  EXPECT_NE(bobs.preview_error.find("cold tier"), std::string::npos) << bobs.preview_error;
  EXPECT_EQ(jobs[1].user_id, carol_.id);
  EXPECT_EQ(jobs[1].preview, Text(2)) << "the claim's other jobs keep their previews";
  EXPECT_EQ(jobs[1].preview_error, "");

  // Leased like any claim: not claimed again meanwhile, and its outcome
  // recorded as for any push.
  EXPECT_TRUE(Must(Await<std::vector<PushJob>>([&](auto cb) {
                store().ClaimPushJobs("node-b", 10'002, 30'000, 10, cb);
              })).empty());
  for (const PushJob& j : jobs) {
    PushCompletion c = CompletionOf(j, "node-a", PushOutcome::kDelivered, "200", 10'003);
    c.coalesce_ms = 10'000;
    ASSERT_TRUE(AwaitStatus([&](auto cb) { store().CompletePush(c, cb); }).ok());
  }
  EXPECT_TRUE(Must(Await<std::vector<PushJob>>([&](auto cb) {
                store().ClaimPushJobs("node-b", 100'000, 30'000, 10, cb);
              })).empty());
}

INSTANTIATE_TEST_SUITE_P(Backends, ColdTierConformance, ::testing::ValuesIn(Backends()),
                         [](const ::testing::TestParamInfo<Backend>& param_info) { return param_info.param.name; });

class PushConformance : public StoreConformance {
 protected:
  static constexpr int64_t kWindow = 10'000;
  static constexpr int64_t kLease = 30'000;

  void Endpoint(const UserRecord& u, const DeviceRecord& d, const std::string& token = "") {
    ASSERT_TRUE(AwaitStatus([&](auto cb) {
                  store().SetPushEndpoint(u.id, d.id, "webhook", token.empty() ? "tok-" + std::to_string(d.id) : token,
                                          1000, cb);
                }).ok());
  }
  int Enqueue(UserId user, Seq seq, int64_t now, std::vector<DeviceId> skip = {},
              PushKind kind = PushKind::kMessage) {
    const PushRequest r = MessagePush(user, conv_, seq, now, kWindow, std::move(skip), kind);
    return Must(Await<int>([&](auto cb) { store().EnqueuePush(r, cb); }));
  }
  std::vector<PushJob> Claim(const std::string& node, int64_t now, int limit = 10) {
    return Must(Await<std::vector<PushJob>>([&](auto cb) { store().ClaimPushJobs(node, now, kLease, limit, cb); }));
  }
  void Complete(const std::string& node, const PushJob& j, PushOutcome outcome, int64_t now, int64_t retry_at = 0,
                const std::string& result = "500") {
    PushCompletion c = CompletionOf(j, node, outcome, result, now);
    c.retry_at = retry_at;
    c.max_attempts = 3;
    c.coalesce_ms = kWindow;
    ASSERT_TRUE(AwaitStatus([&](auto cb) { store().CompletePush(c, cb); }).ok());
  }
  std::vector<PushHealth> Health(UserId user) {
    return Must(Await<std::vector<PushHealth>>([&](auto cb) { store().ListPushHealth(user, cb); }));
  }
};

TEST_P(PushConformance, QueuesOneJobPerRegisteredDeviceNotSkippedAndCarriesTheLatestState) {
  SetUpConversation();
  ASSERT_TRUE(SetProfile(store(), alice_.id, std::string("Alice A."), std::nullopt).has_value());
  Endpoint(bob_, bob_dev_);
  Endpoint(bob_, bob_dev2_);
  Send(alice_, alice_dev_, "m1");
  // bob_dev2_ is in the foreground: skipped.
  EXPECT_EQ(Enqueue(bob_.id, 1, 10'000, {bob_dev2_.id}), 1);
  // The same key again is idempotent.
  EXPECT_EQ(Enqueue(bob_.id, 1, 10'001, {bob_dev2_.id}), 0);
  // A second message coalesces into the same job (latest state).
  Send(alice_, alice_dev_, "m2");
  EXPECT_EQ(Enqueue(bob_.id, 2, 10'002, {bob_dev2_.id}), 1);
  std::vector<PushJob> jobs = Claim("node-a", 10'003);
  ASSERT_EQ(jobs.size(), 1u);
  const PushJob& j = jobs[0];
  EXPECT_EQ(j.device_id, bob_dev_.id);
  EXPECT_EQ(j.user_id, bob_.id);
  EXPECT_EQ(j.provider, "webhook");
  EXPECT_EQ(j.token, "tok-" + std::to_string(bob_dev_.id));
  EXPECT_EQ(j.conversation_id, conv_);
  EXPECT_EQ(j.seq, 2);
  EXPECT_EQ(j.kind, PushKind::kMessage);
  EXPECT_TRUE(j.alert);
  EXPECT_EQ(j.sender_id, alice_.id);
  EXPECT_EQ(j.sender_display_name, "Alice A.");
  EXPECT_EQ(j.preview, "body m2");
  EXPECT_EQ(j.badge, 2);
  // Leased: another node cannot claim it while the lease lasts.
  EXPECT_TRUE(Claim("node-b", 10'004).empty());
  Complete("node-a", j, PushOutcome::kDelivered, 10'005, 0, "200");
  std::vector<PushHealth> h = Health(bob_.id);
  ASSERT_EQ(h.size(), 2u);
  EXPECT_EQ(h[0].device_id, bob_dev_.id);
  EXPECT_EQ(h[0].last_result, "ok");
  EXPECT_EQ(h[0].last_attempt_at, 10'005);
  EXPECT_EQ(h[0].last_success_at, 10'005);
  EXPECT_EQ(h[0].failure_count, 0);
  EXPECT_FALSE(h[0].pending);
  EXPECT_EQ(h[1].last_attempt_at, 0);
  // Delivered: the same key is not queued again; the next message is due
  // one window after the last push.
  EXPECT_EQ(Enqueue(bob_.id, 2, 10'006), 1);  // only bob_dev2_ now (not skipped)
  Send(alice_, alice_dev_, "m3");
  EXPECT_EQ(Enqueue(bob_.id, 3, 10'007, {bob_dev2_.id}), 1);
  EXPECT_EQ(Claim("node-a", 10'008).size(), 1u);  // bob_dev2_'s (due now); bob_dev_'s waits
  jobs = Claim("node-a", 10'005 + kWindow);
  ASSERT_EQ(jobs.size(), 1u);
  EXPECT_EQ(jobs[0].device_id, bob_dev_.id);
  EXPECT_EQ(jobs[0].seq, 3);
  EXPECT_EQ(jobs[0].badge, 3);
}

TEST_P(PushConformance, MutedConversationsQueueNothingAndTheSettingIsAnEvent) {
  SetUpConversation();
  Endpoint(bob_, bob_dev_);
  UserSeq head = Head(store(), bob_.id);
  SocialResult m = Must(Await<SocialResult>([&](auto cb) { store().SetMuted(bob_.id, conv_, true, 3000, cb); }));
  EXPECT_TRUE(m.changed);
  ASSERT_EQ(m.positions.size(), 1u);
  StreamPage page = ReadStream(store(), bob_.id, head, 10);
  ASSERT_EQ(page.events.size(), 1u);
  EXPECT_EQ(page.events[0].kind, EventKind::kMute);
  EXPECT_EQ(page.events[0].conversation_id, conv_);
  EXPECT_TRUE(page.events[0].flag);
  // Muting again changes nothing.
  EXPECT_FALSE(Must(Await<SocialResult>([&](auto cb) { store().SetMuted(bob_.id, conv_, true, 3001, cb); })).changed);
  Send(alice_, alice_dev_, "m1");
  EXPECT_EQ(Enqueue(bob_.id, 1, 10'000), 0);
  EXPECT_TRUE(Claim("n", 20'000).empty());
  // A non-member cannot mute it.
  Result<SocialResult> not_member =
      Await<SocialResult>([&](auto cb) { store().SetMuted(carol_.id, conv_, true, 3002, cb); });
  ASSERT_FALSE(not_member.has_value());
  EXPECT_EQ(not_member.error().code(), ErrorCode::kNotMember);
  // Previews off: an event, and claimed jobs carry no preview.
  ASSERT_TRUE(Must(Await<SocialResult>([&](auto cb) { store().SetMuted(bob_.id, conv_, false, 3003, cb); })).changed);
  ASSERT_TRUE(Must(Await<SocialResult>([&](auto cb) { store().SetPushPreviews(bob_.id, false, 3004, cb); })).changed);
  auto settings = Must(
      Await<std::pair<bool, std::vector<ConversationId>>>([&](auto cb) { store().GetPushSettings(bob_.id, cb); }));
  EXPECT_FALSE(settings.first);
  EXPECT_TRUE(settings.second.empty());
  page = ReadStream(store(), bob_.id, Head(store(), bob_.id) - 1, 10);
  ASSERT_EQ(page.events.size(), 1u);
  EXPECT_EQ(page.events[0].kind, EventKind::kPushPreviews);
  EXPECT_FALSE(page.events[0].flag);
  EXPECT_EQ(Enqueue(bob_.id, 1, 10'001), 1);
  std::vector<PushJob> jobs = Claim("n", 20'000);
  ASSERT_EQ(jobs.size(), 1u);
  EXPECT_FALSE(jobs[0].previews);
  EXPECT_TRUE(jobs[0].alert);
  EXPECT_EQ(jobs[0].preview, "");
  EXPECT_EQ(jobs[0].sender_display_name, "alice");
}

TEST_P(PushConformance, RetriesBackOffExpiredLeasesAreReclaimedAndGoneRemovesTheEndpoint) {
  SetUpConversation();
  Endpoint(bob_, bob_dev_);
  Send(alice_, alice_dev_, "m1");
  ASSERT_EQ(Enqueue(bob_.id, 1, 10'000), 1);
  std::vector<PushJob> jobs = Claim("node-a", 10'000);
  ASSERT_EQ(jobs.size(), 1u);
  // node-a dies: after the lease expires node-b claims the job.
  EXPECT_TRUE(Claim("node-b", 10'000 + kLease - 1).empty());
  jobs = Claim("node-b", 10'000 + kLease);
  ASSERT_EQ(jobs.size(), 1u);
  // node-a's late completion no longer applies to the job.
  Complete("node-a", jobs[0], PushOutcome::kDelivered, 10'000 + kLease, 0, "200");
  EXPECT_TRUE(Health(bob_.id)[0].pending);
  // A retry: released, due at retry_at, counted as a failure.
  int64_t t = 50'000;
  Complete("node-b", jobs[0], PushOutcome::kRetry, t, t + 400, "500");
  std::vector<PushHealth> h = Health(bob_.id);
  EXPECT_EQ(h[0].last_result, "500");
  EXPECT_EQ(h[0].failure_count, 1);
  EXPECT_TRUE(h[0].pending);
  EXPECT_TRUE(Claim("node-b", t + 399).empty());
  jobs = Claim("node-b", t + 400);
  ASSERT_EQ(jobs.size(), 1u);
  EXPECT_EQ(jobs[0].attempts, 1);
  Complete("node-b", jobs[0], PushOutcome::kRetry, t + 500, t + 600, "timeout");
  jobs = Claim("node-b", t + 600);
  ASSERT_EQ(jobs.size(), 1u);
  // The third failure (max_attempts 3) drops the job.
  Complete("node-b", jobs[0], PushOutcome::kRetry, t + 700, t + 800, "503");
  h = Health(bob_.id);
  EXPECT_EQ(h[0].failure_count, 3);
  EXPECT_FALSE(h[0].pending);
  EXPECT_TRUE(Claim("node-b", t + 10'000).empty());
  // 410: the endpoint goes.
  Send(alice_, alice_dev_, "m2");
  ASSERT_EQ(Enqueue(bob_.id, 2, t + 20'000), 1);
  jobs = Claim("node-b", t + 20'000);
  ASSERT_EQ(jobs.size(), 1u);
  Complete("node-b", jobs[0], PushOutcome::kGone, t + 20'001, 0, "410");
  EXPECT_TRUE(Health(bob_.id).empty());
  EXPECT_EQ(Enqueue(bob_.id, 2, t + 30'000), 0);
}

TEST_P(PushConformance, AReadMakesTheQueuedMessageSilentAndUnlinkRemovesTheEndpoint) {
  SetUpConversation();
  Endpoint(bob_, bob_dev_);
  Endpoint(bob_, bob_dev2_);
  Send(alice_, alice_dev_, "m1");
  ASSERT_EQ(Enqueue(bob_.id, 1, 10'000, {bob_dev2_.id}), 1);
  // bob reads on his other device before the push goes out; a badge request
  // does not replace the pending message job.
  ASSERT_TRUE(UpdateReceipt(store(), Receipt(bob_.id, bob_dev2_.id, conv_, 1, 1)).has_value());
  EXPECT_EQ(Enqueue(bob_.id, 1, 10'001, {bob_dev2_.id}, PushKind::kBadge), 0);
  std::vector<PushJob> jobs = Claim("n", 10'002);
  ASSERT_EQ(jobs.size(), 1u);
  EXPECT_EQ(jobs[0].kind, PushKind::kMessage);
  EXPECT_FALSE(jobs[0].alert);
  EXPECT_EQ(jobs[0].preview, "");
  EXPECT_EQ(jobs[0].badge, 0);
  // A withheld message counts in no badge.
  ASSERT_TRUE(Block(store(), bob_.id, alice_.id).has_value());
  Send(alice_, alice_dev_, "withheld");
  EXPECT_EQ(Claim("n", 10'002 + kLease)[0].badge, 0);
  // Unlinking removes the endpoint and its job.
  ASSERT_TRUE(AwaitStatus([&](auto cb) { store().RevokeDevice(bob_.id, bob_dev_.id, cb); }).ok());
  std::vector<PushHealth> h = Health(bob_.id);
  ASSERT_EQ(h.size(), 1u);
  EXPECT_EQ(h[0].device_id, bob_dev2_.id);
  EXPECT_TRUE(Claim("n", 10'003 + 2 * kLease).empty());
  // Removing: true once, false after; an unknown device is refused.
  EXPECT_TRUE(Must(Await<bool>([&](auto cb) { store().RemovePushEndpoint(bob_.id, bob_dev2_.id, cb); })));
  EXPECT_FALSE(Must(Await<bool>([&](auto cb) { store().RemovePushEndpoint(bob_.id, bob_dev2_.id, cb); })));
  Result<bool> unknown = Await<bool>([&](auto cb) { store().RemovePushEndpoint(bob_.id, bob_dev_.id, cb); });
  ASSERT_FALSE(unknown.has_value());
  EXPECT_EQ(unknown.error().code(), ErrorCode::kUnknownDevice);
  PushQueueStats st = Must(Await<PushQueueStats>([&](auto cb) { store().GetPushQueueStats(0, cb); }));
  EXPECT_EQ(st.pending, 0);
  EXPECT_EQ(st.endpoints, 0);
}

TEST_P(PushConformance, TwoNodesClaimingTogetherNeverTakeTheSameJobAndJobsSurviveAReopen) {
  SetUpConversation();
  std::vector<DeviceRecord> devices;
  for (int i = 0; i < 12; ++i) {
    devices.push_back(MakeDevice(store(), bob_.id, "bd" + std::to_string(i)));
    Endpoint(bob_, devices.back());
  }
  Send(alice_, alice_dev_, "m1");
  ASSERT_EQ(Enqueue(bob_.id, 1, 10'000), 12);
  Reopen();
  PushQueueStats st = Must(Await<PushQueueStats>([&](auto cb) { store().GetPushQueueStats(10'000, cb); }));
  EXPECT_EQ(st.pending, 12);
  EXPECT_EQ(st.leased, 0);
  EXPECT_EQ(st.endpoints, 12);
  std::vector<PushJob> a, b;
  std::thread ta([&] { for (int i = 0; i < 6; ++i) for (auto& j : Claim("node-a", 10'001, 2)) a.push_back(j); });
  std::thread tb([&] { for (int i = 0; i < 6; ++i) for (auto& j : Claim("node-b", 10'001, 2)) b.push_back(j); });
  ta.join();
  tb.join();
  std::vector<DeviceId> ids;
  for (auto& j : a) ids.push_back(j.device_id);
  for (auto& j : b) ids.push_back(j.device_id);
  std::sort(ids.begin(), ids.end());
  EXPECT_EQ(ids.size(), 12u);
  EXPECT_EQ(std::unique(ids.begin(), ids.end()), ids.end());
}

// ---- Stream trimming (issue 12): floors, cursor_too_old ----

// A trim that looks at every user, with no cap and no device protecting
// anything unless the test says so.
TrimRequest TrimOlderThan(int64_t older_than) {
  TrimRequest r;
  r.max_users = 100;
  r.max_entries = 1000;
  r.older_than = older_than;
  r.protect_seen_since = std::numeric_limits<int64_t>::max();
  return r;
}

TrimProgress Trim(Store& s, const TrimRequest& r) {
  return Must(Await<TrimProgress>([&](auto cb) { s.TrimStreams(r, cb); }));
}

Result<StreamPage> TryReadStream(Store& s, UserId user, UserSeq after, int limit) {
  return Await<StreamPage>([&](auto cb) { s.ReadStream(user, after, limit, cb); });
}

TEST_P(StoreConformance, TrimRemovesEntriesOlderThanTheHorizonRaisesTheFloorAndRefusesOlderCursors) {
  SetUpConversation();  // the conversation event: user seq 1 of alice and bob, at 1000
  for (int i = 0; i < 5; ++i) Send(alice_, alice_dev_, "old" + std::to_string(i), 2000);  // 2..6
  for (int i = 0; i < 3; ++i) Send(bob_, bob_dev_, "new" + std::to_string(i), 9000);    // 7..9
  ConversationId other = Open(store(), bob_.id, carol_.id, 9000).conversation.id;        // bob 10, carol 1
  ASSERT_EQ(Head(store(), bob_.id), 10);
  EXPECT_EQ(ReadStream(store(), bob_.id, 0, 1).floor, 1) << "nothing trimmed yet";

  TrimProgress p = Trim(store(), TrimOlderThan(5000));
  EXPECT_EQ(p.trimmed, 12);  // 1..6 of alice and of bob; carol's entry is new
  EXPECT_EQ(p.users_trimmed, 2);
  EXPECT_EQ(p.users_visited, 3);
  EXPECT_EQ(p.next_after_user, 0) << "the pass reached the last user";
  EXPECT_FALSE(p.more);
  for (const UserRecord& u : {alice_, bob_}) {
    // The head stays; a page from the floor is contiguous.
    StreamPage page = ReadStream(store(), u.id, 6, 100);
    EXPECT_EQ(page.floor, 7);
    ASSERT_FALSE(page.events.empty());
    EXPECT_EQ(page.events.front().user_seq, 7);
    for (size_t i = 1; i < page.events.size(); ++i) EXPECT_EQ(page.events[i].user_seq, page.events[i - 1].user_seq + 1);
    EXPECT_EQ(page.events.back().user_seq, page.head);
    // Below the floor: cursor_too_old, never a page with a gap.
    for (UserSeq after : {UserSeq{0}, UserSeq{5}}) {
      Result<StreamPage> old = TryReadStream(store(), u.id, after, 100);
      ASSERT_FALSE(old.has_value()) << "after " << after;
      EXPECT_EQ(old.error().code(), ErrorCode::kCursorTooOld);
    }
  }
  EXPECT_EQ(Head(store(), bob_.id), 10);
  // carol is untouched.
  StreamPage carol = ReadStream(store(), carol_.id, 0, 10);
  EXPECT_EQ(carol.floor, 1);
  ASSERT_EQ(carol.events.size(), 1u);
  EXPECT_EQ(carol.events[0].conversation_id, other);
  // The history itself is not the stream: every message is still there.
  EXPECT_EQ(History(store(), conv_, 0, 100, bob_.id).size(), 8u);
  // The summary counts what is kept.
  StoreSummary summary = Must(Await<StoreSummary>([&](auto cb) { store().GetStoreSummary(cb); }));
  EXPECT_EQ(summary.stream_events, 3 + 4 + 1);
  // Again: nothing more is old; the floor never falls, and survives a reopen.
  EXPECT_EQ(Trim(store(), TrimOlderThan(5000)).trimmed, 0);
  Reopen();
  EXPECT_EQ(ReadStream(store(), alice_.id, 6, 10).floor, 7);
  // New entries go on from the head.
  Send(alice_, alice_dev_, "after-trim", 9500);
  StreamPage page = ReadStream(store(), alice_.id, 9, 10);
  ASSERT_EQ(page.events.size(), 1u);
  EXPECT_EQ(page.events[0].user_seq, 10);
}

// A trim may take every entry of a stream, the newest too: the head must
// not fall back with them, not even once the store is reopened (on SQLite
// the head is derived from the newest entry, and the trim stores it).
TEST_P(StoreConformance, TheHeadSurvivesATrimOfEveryEntryAndAReopen) {
  SetUpConversation();  // user seq 1 of alice and bob, at 1000
  for (int i = 0; i < 4; ++i) Send(alice_, alice_dev_, "m" + std::to_string(i), 2000);  // 2..5
  ASSERT_EQ(Head(store(), alice_.id), 5);
  EXPECT_EQ(Trim(store(), TrimOlderThan(5000)).trimmed, 10);  // both streams, whole
  for (bool reopened : {false, true}) {
    if (reopened) Reopen();
    for (const UserRecord& u : {alice_, bob_}) {
      EXPECT_EQ(Head(store(), u.id), 5) << "reopened " << reopened;
      StreamPage page = ReadStream(store(), u.id, 5, 10);
      EXPECT_EQ(page.head, 5);
      EXPECT_EQ(page.floor, 6);
      EXPECT_TRUE(page.events.empty());
    }
    StoreSummary summary = Must(Await<StoreSummary>([&](auto cb) { store().GetStoreSummary(cb); }));
    EXPECT_EQ(summary.stream_events, 0);
  }
  // New entries go on after the old head, never over it.
  Send(bob_, bob_dev_, "after", 9000);
  for (const UserRecord& u : {alice_, bob_}) {
    StreamPage page = ReadStream(store(), u.id, 5, 10);
    ASSERT_EQ(page.events.size(), 1u);
    EXPECT_EQ(page.events[0].user_seq, 6);
    EXPECT_EQ(page.head, 6);
  }
  // A device made now starts at the head.
  DeviceRecord tablet = MakeDevice(store(), alice_.id, "tablet-token", 9000);
  EXPECT_EQ(tablet.cursor, 6);
}

TEST_P(StoreConformance, TrimKeepsWhatADeviceSeenWithinTheGraceHasNotAcknowledged) {
  SetUpConversation();  // devices seen at 1000 with cursor 0
  for (int i = 0; i < 5; ++i) Send(alice_, alice_dev_, "m" + std::to_string(i), 2000);  // 2..6 of both
  // Every device was seen since 500: each one's cursor (0) holds everything.
  TrimRequest all_recent = TrimOlderThan(5000);
  all_recent.protect_seen_since = 500;
  EXPECT_EQ(Trim(store(), all_recent).trimmed, 0);
  // bob's phone acknowledged up to 3 at 9500; his second device and alice's
  // were last seen at 1000, before the grace.
  ASSERT_TRUE(AwaitStatus([&](auto cb) { store().SetCursor(bob_dev_.id, 3, 9500, cb); }).ok());
  TrimRequest grace = TrimOlderThan(5000);
  grace.protect_seen_since = 9000;
  TrimProgress p = Trim(store(), grace);
  EXPECT_EQ(p.trimmed, 6 + 3);
  EXPECT_EQ(ReadStream(store(), alice_.id, 6, 10).floor, 7);
  StreamPage bob = ReadStream(store(), bob_.id, 3, 10);
  EXPECT_EQ(bob.floor, 4) << "bob's phone still needs 4..6";
  ASSERT_EQ(bob.events.size(), 3u);
  EXPECT_EQ(bob.events[0].user_seq, 4);
  // bob's second device comes back and acknowledges 4: the lowest cursor
  // of the recent devices (3) still holds.
  ASSERT_TRUE(AwaitStatus([&](auto cb) { store().SetCursor(bob_dev2_.id, 4, 9800, cb); }).ok());
  EXPECT_EQ(Trim(store(), grace).trimmed, 0);
  // A revoked device holds nothing back.
  ASSERT_TRUE(AwaitStatus([&](auto cb) { store().RevokeDevice(bob_.id, bob_dev_.id, cb); }).ok());
  EXPECT_EQ(Trim(store(), grace).trimmed, 1);
  EXPECT_EQ(ReadStream(store(), bob_.id, 4, 10).floor, 5);
}

TEST_P(StoreConformance, TrimCapsEachUsersStreamInBoundedStepsAndResumesWhereItStopped) {
  SetUpConversation();
  for (int i = 0; i < 20; ++i) Send(alice_, alice_dev_, "m" + std::to_string(i), 2000);  // 2..21 of both
  TrimRequest r = TrimOlderThan(0);  // no time horizon
  r.max_entries_per_user = 5;
  r.max_entries = 4;
  r.max_users = 2;
  int64_t total = 0;
  int steps = 0;
  bool pass_done = false;
  while (!pass_done && steps < 100) {
    TrimProgress p = Trim(store(), r);
    ++steps;
    EXPECT_LE(p.trimmed, 4) << "a step removes at most its batch";
    total += p.trimmed;
    r.after_user = p.next_after_user;
    pass_done = !p.more && p.next_after_user == 0;
  }
  EXPECT_TRUE(pass_done);
  EXPECT_EQ(total, 16 + 16);
  EXPECT_GE(steps, 8);
  for (const UserRecord& u : {alice_, bob_}) {
    StreamPage page = ReadStream(store(), u.id, 16, 100);
    EXPECT_EQ(page.floor, 17) << "the newest 5 of 21 are kept";
    EXPECT_EQ(page.events.size(), 5u);
  }
  EXPECT_EQ(ReadStream(store(), carol_.id, 0, 10).floor, 1);
}

INSTANTIATE_TEST_SUITE_P(Backends, PushConformance, ::testing::ValuesIn(Backends()),
                         [](const ::testing::TestParamInfo<Backend>& param_info) { return param_info.param.name; });

INSTANTIATE_TEST_SUITE_P(Backends, StoreConformance, ::testing::ValuesIn(Backends()),
                         [](const ::testing::TestParamInfo<Backend>& param_info) { return param_info.param.name; });

}  // namespace
}  // namespace parley::store
