// The user erase (admin/admin_erase.cc; docs/operations.md "User erase")
// when a step of its purge fails. The real admin API over a real store, with
// a FaultStore (store/fault_store.h) between them that fails PurgeDeleted
// steps: the first one, a later one, or every one. The erase must answer the
// error (never "verified"), name the erased name a re-run needs, leave other
// users' data as it was, and a re-run after the fault clears must finish the
// purge and verify. A step the database committed whose answer was lost is
// an error too, and its re-run finds nothing more to purge. What the failed
// purge left is read where it is: the texts of the user's compacted messages
// in their conversation's cold blocks, which no read of the store shows.
//
// Every test runs on both backends (parameterised like the store
// conformance suite): SQLite in a temporary file, and PostgreSQL in a fresh
// database of its own on the real server the process starts
// (store/pg_test_server.h; never skipped: if it cannot start, the
// PostgreSQL tests fail). tests/admin/CMakeLists.txt registers each backend
// as a CTest test of its own (admin_erase_test, admin_erase_test_postgres).
#include <gtest/gtest.h>
#include <libpq-fe.h>
#include <nlohmann/json.hpp>
#include <sqlite3.h>

#include <chrono>
#include <functional>
#include <future>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "admin/admin_api.h"
#include "common/clock.h"
#include "common/worker_pool.h"
#include "core/chat_service.h"
#include "protocol/message_edits.h"
#include "store/cold_block.h"
#include "store/fault_store.h"
#include "store/pg_test_server.h"
#include "store/store_factory.h"
#include "store/store_test_util.h"

namespace parley::admin {
namespace {

using nlohmann::json;
using store::testing::Await;
using store::testing::Must;

constexpr const char* kToken = "erase-fault-token";
// How long an erase may take before the test gives up on its answer.
constexpr auto kAnswerTimeout = std::chrono::seconds(60);
// Messages per history page the test reads.
constexpr int kReadPage = 500;
// The erase's purge step (admin_erase.cc: the retention job's batch).
constexpr int kPurgeStep = core::RetentionConfig::kPurgeBatch;

// The backends, by StoreConfig::backend name (the tests' parameter).
constexpr const char* kSqlite = "sqlite";
constexpr const char* kPostgres = "postgres";

struct Answer {
  int status = 0;
  json body;
};

// A cold block as stored: its key (first seq) and its data.
using StoredBlock = std::pair<store::Seq, std::string>;

// The message blocks of `conv` in the SQLite file `path`, through a
// read-only connection of their own.
std::vector<StoredBlock> SqliteBlocks(const std::string& path, store::ConversationId conv) {
  std::vector<StoredBlock> blocks;
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK) {
    ADD_FAILURE() << "cannot open the store read-only: " << sqlite3_errmsg(db);
    sqlite3_close(db);
    return blocks;
  }
  sqlite3_stmt* stmt = nullptr;
  const char* sql = "SELECT first_seq, data FROM message_blocks WHERE conversation_id = ?";
  EXPECT_EQ(sqlite3_prepare_v2(db, sql, -1, &stmt, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
  sqlite3_bind_int64(stmt, 1, conv);
  while (stmt != nullptr && sqlite3_step(stmt) == SQLITE_ROW) {
    blocks.emplace_back(sqlite3_column_int64(stmt, 0),
                        std::string(static_cast<const char*>(sqlite3_column_blob(stmt, 1)),
                                    static_cast<size_t>(sqlite3_column_bytes(stmt, 1))));
  }
  sqlite3_finalize(stmt);
  sqlite3_close(db);
  return blocks;
}

// The message blocks of `conv` in the PostgreSQL database `url`, through a
// connection of their own (binary results: data is the block's bytes).
std::vector<StoredBlock> PostgresBlocks(const std::string& url, store::ConversationId conv) {
  std::vector<StoredBlock> blocks;
  PGconn* conn = PQconnectdb(url.c_str());
  if (PQstatus(conn) != CONNECTION_OK) {
    ADD_FAILURE() << "cannot connect to the store's database: " << PQerrorMessage(conn);
    PQfinish(conn);
    return blocks;
  }
  const std::string id = std::to_string(conv);
  const char* params[] = {id.c_str()};
  // first_seq as text, so that only data needs the binary format's care.
  PGresult* r = PQexecParams(conn, "SELECT first_seq::text, data FROM message_blocks WHERE conversation_id = $1", 1,
                             nullptr, params, nullptr, nullptr, /*resultFormat=*/1);
  if (PQresultStatus(r) != PGRES_TUPLES_OK) {
    ADD_FAILURE() << "cannot read the blocks: " << PQerrorMessage(conn);
  } else {
    for (int i = 0; i < PQntuples(r); ++i) {
      blocks.emplace_back(std::stoll(std::string(PQgetvalue(r, i, 0), static_cast<size_t>(PQgetlength(r, i, 0)))),
                          std::string(PQgetvalue(r, i, 1), static_cast<size_t>(PQgetlength(r, i, 1))));
    }
  }
  PQclear(r);
  PQfinish(conn);
  return blocks;
}

class EraseFaultTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    store::StoreConfig sc;
    sc.backend = GetParam();
    if (GetParam() == kPostgres) {
      // A fresh database per test, a copy of one migrated once per process.
      store::testing::PgTestServer& server = store::testing::PgTestServer::Get();
      ASSERT_TRUE(server.ok()) << "no PostgreSQL test server";
      const std::string schema = server.Template("parley_erase_template", [](const std::string& url) {
        store::StoreConfig init;
        init.backend = kPostgres;
        init.postgres_url = url;
        Result<std::unique_ptr<store::Store>> migrated = store::OpenStore(init);
        EXPECT_TRUE(migrated.has_value()) << migrated.error().ToString();
      });
      pg_url_ = server.Database("erase_" + std::to_string(std::hash<std::string>()(dir_.path())), schema);
      sc.postgres_url = pg_url_;
    } else {
      sc.sqlite_path = dir_.path() + "/parley.db";
    }
    Result<std::unique_ptr<store::Store>> s = store::OpenStore(sc);
    ASSERT_TRUE(s.has_value()) << s.error().ToString();
    store_ = std::move(*s);
    fault_ = std::make_unique<store::FaultStore>(*store_);
    AdminConfig ac;
    ac.token = kToken;
    admin_ = std::make_unique<AdminApi>(*fault_, pool_, SystemClock::Instance(), ac);
  }
  void TearDown() override {
    admin_.reset();
    fault_.reset();
    store_.reset();
  }

  // ivy and jack share conv_ij: 2 * `ivys` messages, every other one ivy's;
  // jack and kim share conv_jk: 10 messages, every other one kim's. Every
  // text is compacted into cold blocks; then kim deletes one of hers for
  // everyone, so a block holds the text of another user's tombstone too
  // (the erase's purge takes it, as the retention job would later).
  void Populate(int ivys) {
    ivy_ = store::testing::MakeUser(*store_, "ivy");
    jack_ = store::testing::MakeUser(*store_, "jack");
    kim_ = store::testing::MakeUser(*store_, "kim");
    const store::DeviceRecord ivy_dev = store::testing::MakeDevice(*store_, ivy_.id, "ti");
    const store::DeviceRecord jack_dev = store::testing::MakeDevice(*store_, jack_.id, "tj");
    const store::DeviceRecord kim_dev = store::testing::MakeDevice(*store_, kim_.id, "tk");
    conv_ij_ = store::testing::Open(*store_, ivy_.id, jack_.id).conversation.id;
    conv_jk_ = store::testing::Open(*store_, jack_.id, kim_.id).conversation.id;
    const int64_t now = SystemClock::Instance().NowMillis();
    constexpr int kOtherMessages = 10;
    // Queued at once: the store commits them in a few batches.
    store::testing::Collector<store::AppendResult> sent(static_cast<size_t>(2 * ivys + kOtherMessages));
    size_t slot = 0;
    for (int i = 0; i < 2 * ivys; ++i) {
      const bool ivys_turn = i % 2 == 0;
      store_->AppendMessage(
          store::testing::Msg(conv_ij_, ivys_turn ? ivy_.id : jack_.id, ivys_turn ? ivy_dev.id : jack_dev.id,
                              "ij" + std::to_string(i), (ivys_turn ? "ivy says " : "jack says ") + std::to_string(i),
                              now),
          sent.Slot(slot++));
    }
    for (int i = 0; i < kOtherMessages; ++i) {
      const bool kims_turn = i % 2 == 0;
      store_->AppendMessage(
          store::testing::Msg(conv_jk_, kims_turn ? kim_.id : jack_.id, kims_turn ? kim_dev.id : jack_dev.id,
                              "jk" + std::to_string(i), (kims_turn ? "kim says " : "jack tells kim ") + std::to_string(i),
                              now),
          sent.Slot(slot++));
    }
    for (auto& r : sent.Wait()) ASSERT_TRUE(r.has_value() && r->has_value()) << "a send failed";
    CompactEverything();
    ASSERT_EQ(BlockTexts(conv_ij_).size(), static_cast<size_t>(2 * ivys)) << "every text in a block";

    store::MessageChange del;
    del.kind = static_cast<int>(protocol::ChangeKind::kDelete);
    del.conversation_id = conv_jk_;
    for (const store::MessageRecord& m : History(conv_jk_)) {
      if (m.sender_id == kim_.id && del.seq == 0) del.seq = m.seq;
    }
    del.user_id = kim_.id;
    del.device_id = kim_dev.id;
    del.now = SystemClock::Instance().NowMillis();
    del.delete_window_ms = std::numeric_limits<int64_t>::max();
    ASSERT_TRUE(Await<store::ChangeResult>([&](auto cb) { store_->ChangeMessage(del, cb); }).has_value());
    kims_deleted_ = del.seq;
  }

  void CompactEverything() {
    store::CompactRequest req;
    req.stored_before = req.due_before = SystemClock::Instance().NowMillis() + 1;
    req.max_messages = 100'000;
    for (bool more = true; more;) {
      Result<store::CompactProgress> p = Await<store::CompactProgress>([&](auto cb) { store_->CompactMessages(req, cb); });
      ASSERT_TRUE(p.has_value()) << p.error().ToString();
      more = p->more;
    }
  }

  // POST /admin/v1/users/{name}/erase, as parley-admin sends it.
  Answer Erase(const std::string& name) {
    auto promise = std::make_shared<std::promise<gateway::HttpResponse>>();
    std::future<gateway::HttpResponse> future = promise->get_future();
    gateway::HttpRequest req;
    req.method = "POST";
    req.target = "/admin/v1/users/" + name + "/erase";
    req.authorization = std::string("Bearer ") + kToken;
    admin_->Handle(req, [promise](gateway::HttpResponse r) { promise->set_value(std::move(r)); });
    if (future.wait_for(kAnswerTimeout) != std::future_status::ready) {
      ADD_FAILURE() << "no answer to the erase of " << name;
      return {};
    }
    gateway::HttpResponse r = future.get();
    Answer a{r.status, json::parse(r.body, nullptr, false)};
    EXPECT_FALSE(a.body.is_discarded()) << r.body;
    return a;
  }

  // Every message of `conv` as the store holds it (viewer 0), ascending seq.
  std::vector<store::MessageRecord> History(store::ConversationId conv) {
    std::vector<store::MessageRecord> all;
    for (store::Seq before = 0;;) {
      std::vector<store::MessageRecord> page = store::testing::History(*store_, conv, before, kReadPage);
      all.insert(all.begin(), page.begin(), page.end());
      if (static_cast<int>(page.size()) < kReadPage || page.front().seq == 1) break;
      before = page.front().seq;
    }
    return all;
  }

  // Every text still in a cold block of `conv`, decoded with the store's own
  // codec (read through a connection of its own): seq -> text.
  std::map<store::Seq, std::string> BlockTexts(store::ConversationId conv) {
    std::map<store::Seq, std::string> texts;
    const std::vector<StoredBlock> blocks =
        GetParam() == kPostgres ? PostgresBlocks(pg_url_, conv) : SqliteBlocks(dir_.path() + "/parley.db", conv);
    store::ColdCodec codec;
    for (const auto& [first, data] : blocks) {
      Result<std::vector<store::ColdEntry>> entries = codec.Unpack(first, data);
      EXPECT_TRUE(entries.has_value()) << "block " << first << " of " << conv << " does not decode";
      if (!entries) continue;
      for (store::ColdEntry& e : *entries) texts[e.seq] = std::move(e.body);
    }
    return texts;
  }

  int IvysTextsInBlocks() {
    int n = 0;
    for (const auto& [seq, text] : BlockTexts(conv_ij_)) n += text.rfind("ivy says ", 0) == 0;
    return n;
  }

  // What the other users have: every record of jack's and kim's
  // conversation and jack's messages to ivy, as one line each.
  std::vector<std::string> OthersData() {
    std::vector<std::string> out;
    for (store::ConversationId conv : {conv_ij_, conv_jk_}) {
      for (const store::MessageRecord& m : History(conv)) {
        if (m.sender_id == ivy_.id) continue;
        out.push_back(std::to_string(conv) + "/" + std::to_string(m.seq) + " from " + std::to_string(m.sender_id) +
                      " id=" + m.client_id + " body=[" + m.body + "] v=" + std::to_string(m.version) +
                      " deleted=" + std::to_string(m.deleted_at));
      }
    }
    return out;
  }

  // The texts the other users' blocks must keep: every live text of theirs.
  std::map<store::Seq, std::string> LiveTexts(store::ConversationId conv) {
    std::map<store::Seq, std::string> texts;
    for (const store::MessageRecord& m : History(conv))
      if (m.sender_id != ivy_.id && m.deleted_at == 0) texts[m.seq] = m.body;
    return texts;
  }

  // ivy's messages are all tombstones without a text (the messages step ran).
  void ExpectIvysMessagesDeleted() {
    for (const store::MessageRecord& m : History(conv_ij_)) {
      if (m.sender_id != ivy_.id) continue;
      EXPECT_NE(m.deleted_at, 0) << m.seq;
      EXPECT_EQ(m.body, "") << m.seq;
    }
  }

  // The error of an erase stopped by a failed purge step: the store's code,
  // never "verified", and the erased name a re-run must use.
  void ExpectPurgeFailure(const Answer& a, int http_status, const std::string& code) {
    EXPECT_EQ(a.status, http_status) << a.body.dump();
    EXPECT_EQ(a.body.value("code", ""), code) << a.body.dump();
    EXPECT_EQ(a.body.value("verified", true), false) << a.body.dump();
    EXPECT_EQ(a.body.value("failed_step", ""), "purge") << a.body.dump();
    EXPECT_EQ(a.body.value("user_id", int64_t{0}), ivy_.id) << a.body.dump();
    EXPECT_EQ(a.body.value("username", ""), ErasedName()) << a.body.dump();
    EXPECT_NE(a.body.value("message", "").find("run it again on " + ErasedName()), std::string::npos)
        << a.body.dump();
    EXPECT_FALSE(a.body.contains("removed")) << "an erase that stopped reports no result";
  }

  // A finished erase: verified, nothing left.
  void ExpectVerified(const Answer& a) {
    EXPECT_EQ(a.status, 200) << a.body.dump();
    EXPECT_EQ(a.body.value("verified", false), true) << a.body.dump();
    EXPECT_EQ(a.body["left"].value("tombstones_unpurged", int64_t{-1}), 0) << a.body.dump();
    EXPECT_EQ(a.body["left"].value("message_bodies", int64_t{-1}), 0) << a.body.dump();
  }

  std::string ErasedName() const { return store::kErasedUsernamePrefix + std::to_string(ivy_.id); }

  store::testing::TempDir dir_;
  std::string pg_url_;  // the test's database on PostgreSQL
  WorkerPool pool_{1};
  std::unique_ptr<store::Store> store_;
  std::unique_ptr<store::FaultStore> fault_;
  std::unique_ptr<AdminApi> admin_;
  store::UserRecord ivy_, jack_, kim_;
  store::ConversationId conv_ij_ = 0;
  store::ConversationId conv_jk_ = 0;
  store::Seq kims_deleted_ = 0;
};

// The first purge step fails once: the answer is the store's error, not
// "verified"; ivy's texts are still in the blocks (the purge did nothing),
// the other users' data is as it was, and her old name no longer finds
// her. The re-run on the erased name purges everything and verifies.
TEST_P(EraseFaultTest, FailedPurgeStepAnswersTheErrorAndARerunOnTheErasedNameFinishes) {
  constexpr int kIvys = 20;
  Populate(kIvys);
  const std::vector<std::string> others = OthersData();
  const std::map<store::Seq, std::string> jk_blocks = BlockTexts(conv_jk_);
  ASSERT_EQ(jk_blocks.count(kims_deleted_), 1u) << "kim's deleted text waits in its block for a purge";
  fault_->FailPurges(0, 1, Status(ErrorCode::kUnavailable, "injected: purge step failed"));

  const Answer failed = Erase("ivy");
  ExpectPurgeFailure(failed, 503, "unavailable");
  EXPECT_EQ(failed.body.value("erased_username", ""), "ivy");
  EXPECT_EQ(fault_->PurgesFailed(), 1);
  ExpectIvysMessagesDeleted();
  EXPECT_EQ(IvysTextsInBlocks(), kIvys) << "the failed step purged nothing";
  EXPECT_EQ(OthersData(), others);
  EXPECT_EQ(BlockTexts(conv_jk_), jk_blocks);

  // The old name is free: a re-run must name the erased one, as the error said.
  const Answer by_old_name = Erase("ivy");
  EXPECT_EQ(by_old_name.status, 404) << by_old_name.body.dump();
  EXPECT_EQ(by_old_name.body.value("code", ""), "unknown_user");

  const Answer rerun = Erase(ErasedName());
  ExpectVerified(rerun);
  EXPECT_EQ(rerun.body["removed"]["messages_deleted"], 0) << "the failed run deleted them";
  EXPECT_EQ(rerun.body["removed"]["tombstones_purged"], kIvys + 1) << "ivy's and kim's";
  EXPECT_EQ(rerun.body["removed"]["cold_texts_removed"], kIvys + 1);
  EXPECT_EQ(IvysTextsInBlocks(), 0);
  std::map<store::Seq, std::string> jacks;
  for (const store::MessageRecord& m : History(conv_ij_))
    if (m.sender_id == jack_.id) jacks[m.seq] = m.body;
  EXPECT_EQ(BlockTexts(conv_ij_), jacks) << "only jack's texts are left in ivy's conversation";
  EXPECT_EQ(BlockTexts(conv_jk_), LiveTexts(conv_jk_)) << "kim's deleted text purged, every live text kept";
  EXPECT_EQ(OthersData(), others);
}

// A purge step fails after an earlier one succeeded: the erase must not take
// the failure for the end of the purge (some of ivy's texts are still in
// the blocks) nor answer with the steps that did succeed. The re-run
// purges what the failed step left.
TEST_P(EraseFaultTest, FailureOfALaterPurgeStepIsNotTakenForTheEndOfThePurge) {
  constexpr int kIvys = kPurgeStep + 44;  // two steps: a full one, then the rest
  Populate(kIvys);
  const std::vector<std::string> others = OthersData();
  fault_->FailPurges(1, 1, Status(ErrorCode::kUnavailable, "injected: purge step failed"));

  ExpectPurgeFailure(Erase("ivy"), 503, "unavailable");
  EXPECT_EQ(fault_->PurgesFailed(), 1);
  ExpectIvysMessagesDeleted();
  const int left = IvysTextsInBlocks();
  EXPECT_GT(left, 0) << "the second step's share is still in the blocks";
  EXPECT_LT(left, kIvys) << "the first step purged its share";
  EXPECT_EQ(OthersData(), others);

  const Answer rerun = Erase(ErasedName());
  ExpectVerified(rerun);
  EXPECT_EQ(rerun.body["removed"]["tombstones_purged"], kIvys + 1 - kPurgeStep) << "what the first step left";
  EXPECT_EQ(IvysTextsInBlocks(), 0);
  EXPECT_EQ(BlockTexts(conv_jk_), LiveTexts(conv_jk_));
  EXPECT_EQ(OthersData(), others);
}

// Every purge step fails (a store that cannot purge): every run answers the
// error and none claims "verified"; nothing of the other users changes. Once
// the fault clears, a re-run finishes and verifies.
TEST_P(EraseFaultTest, PurgeThatKeepsFailingIsNeverVerifiedAndLosesNothing) {
  constexpr int kIvys = 20;
  Populate(kIvys);
  const std::vector<std::string> others = OthersData();
  const std::map<store::Seq, std::string> jk_blocks = BlockTexts(conv_jk_);
  fault_->FailPurges(0, store::FaultStore::kFailEveryPurge, Status(ErrorCode::kInternal, "injected: disk I/O error"));

  ExpectPurgeFailure(Erase("ivy"), 500, "internal");
  ExpectPurgeFailure(Erase(ErasedName()), 500, "internal");
  EXPECT_EQ(fault_->PurgesFailed(), 2);
  ExpectIvysMessagesDeleted();
  EXPECT_EQ(IvysTextsInBlocks(), kIvys);
  EXPECT_EQ(OthersData(), others);
  EXPECT_EQ(BlockTexts(conv_jk_), jk_blocks);

  fault_->FailPurges(0, 0, Status::Ok());
  const Answer rerun = Erase(ErasedName());
  ExpectVerified(rerun);
  EXPECT_EQ(rerun.body["removed"]["tombstones_purged"], kIvys + 1);
  EXPECT_EQ(IvysTextsInBlocks(), 0);
  EXPECT_EQ(BlockTexts(conv_jk_), LiveTexts(conv_jk_));
  EXPECT_EQ(OthersData(), others);
  EXPECT_EQ(fault_->PurgesFailed(), 2) << "cleared: no step failed since";
}

// A purge step the database committed whose answer was lost (the erase
// saw an error although its purge is done): the erase answers the error, as
// for any failed step, since it cannot tell what the step did; ivy's texts
// are gone from the blocks all the same. The re-run on the erased name
// finds nothing more to purge and verifies.
TEST_P(EraseFaultTest, PurgeCommittedButItsAnswerLostIsVerifiedByARerunWithNothingToPurge) {
  constexpr int kIvys = 20;
  Populate(kIvys);
  const std::vector<std::string> others = OthersData();
  fault_->LosePurgeAnswers(0, 1, Status(ErrorCode::kUnavailable, "injected: purge answer lost"));

  ExpectPurgeFailure(Erase("ivy"), 503, "unavailable");
  EXPECT_EQ(fault_->PurgesFailed(), 1);
  ExpectIvysMessagesDeleted();
  EXPECT_EQ(IvysTextsInBlocks(), 0) << "the step committed its purge";
  EXPECT_EQ(BlockTexts(conv_jk_), LiveTexts(conv_jk_)) << "kim's deleted text purged by the same step";
  EXPECT_EQ(OthersData(), others);

  const Answer rerun = Erase(ErasedName());
  ExpectVerified(rerun);
  EXPECT_EQ(rerun.body["removed"]["messages_deleted"], 0) << "the failed run deleted them";
  EXPECT_EQ(rerun.body["removed"]["tombstones_purged"], 0) << "the lost step purged them all";
  EXPECT_EQ(rerun.body["removed"]["cold_texts_removed"], 0);
  EXPECT_EQ(IvysTextsInBlocks(), 0);
  EXPECT_EQ(BlockTexts(conv_jk_), LiveTexts(conv_jk_));
  EXPECT_EQ(OthersData(), others);
  EXPECT_EQ(fault_->PurgesFailed(), 1) << "one step's answer lost, no more";
}

INSTANTIATE_TEST_SUITE_P(Backends, EraseFaultTest, ::testing::Values(kSqlite, kPostgres),
                         [](const ::testing::TestParamInfo<std::string>& param_info) { return param_info.param; });

}  // namespace
}  // namespace parley::admin
