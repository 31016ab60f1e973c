// Drafts in the SDK (issue 12 item 2; docs/protocol.md, set_draft) against a
// real parleyd: two devices of one user, the draft set on one reaching the
// other live, after an offline resync and through a fresh device's snapshot;
// a send clearing it everywhere; drafts set offline saved once, coalesced.
#include <sqlite3.h>

#include "sdk/sdk_test_util.h"

namespace parley::testing {
namespace {

constexpr int kDebounceMs = 50;  // short for tests; the default is kDefaultDraftDebounceMs

std::string LoginDevice(ServerProcess& s, const std::string& user, const std::string& name) {
  auto r = Client::Login("127.0.0.1", s.port(), user, "correct horse", name, "gtest");
  EXPECT_TRUE(r.ok) << r.code << ": " << r.message;
  return r.token;
}

// Records on_draft_changed callbacks.
struct DraftLog {
  std::mutex mu;
  std::vector<CachedConversation> all;
  void Add(const CachedConversation& c) {
    std::lock_guard lock(mu);
    all.push_back(c);
  }
  size_t size() {
    std::lock_guard lock(mu);
    return all.size();
  }
  std::string last() {
    std::lock_guard lock(mu);
    return all.empty() ? "<none>" : all.back().draft;
  }
};

// The `draft` events of alice's stream, through a separate raw connection.
std::vector<json> DraftEvents(ServerProcess& s, const std::string& user) {
  Device d = Login(s, user, "inspector");
  std::vector<json> out;
  for (auto& e : SyncAll(*d.conn, 0)) {
    if (e["kind"] == "draft") out.push_back(e);
  }
  return out;
}

TEST(DraftsSdkE2E, ADraftReachesTheOtherDeviceLiveAfterResyncAndBySnapshotAndASendClearsIt) {
  ServerProcess s;
  std::string a1_token = RegisterAndLogin(s, "alice");
  std::string a2_token = LoginDevice(s, "alice", "a2");
  Register(s, "bob");
  TempDir dir;
  DraftLog log1, log2;
  auto o1 = OptionsFor(s, dir / "a1.db", a1_token);
  o1.draft_debounce_ms = kDebounceMs;
  o1.on_draft_changed = [&](const CachedConversation& c) { log1.Add(c); };
  auto o2 = OptionsFor(s, dir / "a2.db", a2_token);
  o2.draft_debounce_ms = kDebounceMs;
  o2.on_draft_changed = [&](const CachedConversation& c) { log2.Add(c); };
  auto a1 = OpenClient(o1);
  auto a2 = OpenClient(o2);
  a1->Start();
  a2->Start();
  ASSERT_TRUE(a1->WaitOnline(5000));
  ASSERT_TRUE(a2->WaitOnline(5000));

  // A draft in a conversation neither device knows yet: a1 opens it first.
  ASSERT_TRUE(a1->SetDraft("Bob", "see you at").ok);
  EXPECT_EQ(a1->Draft("bob"), "see you at") << "shown at once, before the server has it";
  ASSERT_TRUE(a1->WaitDraftsSaved(5000));
  ASSERT_TRUE(Eventually([&] { return a2->Draft("bob") == "see you at"; }, 5000));
  auto c2 = a2->ConversationWith("bob");
  ASSERT_TRUE(c2.has_value());
  EXPECT_EQ(c2->draft, "see you at");
  EXPECT_FALSE(c2->draft_pending);
  EXPECT_GT(c2->draft_updated_at, 0);
  ASSERT_TRUE(Eventually([&] { return log2.last() == "see you at"; }, 5000));
  EXPECT_EQ(log2.all.back().peer, "bob");
  auto c1 = a1->ConversationWith("bob");
  ASSERT_TRUE(c1.has_value());
  EXPECT_EQ(c1->draft, "see you at");
  EXPECT_FALSE(c1->draft_pending);

  // a2 offline; a1 changes the draft twice; a2 catches up by sync.
  a2->Stop();
  ASSERT_TRUE(a1->SetDraft("bob", "see you at 7").ok);
  ASSERT_TRUE(a1->SetDraft(c1->conversation_id, "see you at 8").ok);
  ASSERT_TRUE(a1->WaitDraftsSaved(5000));
  a2->Start();
  ASSERT_TRUE(a2->WaitOnline(5000));
  EXPECT_EQ(a2->Draft("bob"), "see you at 8");
  ASSERT_TRUE(Eventually([&] { return log2.last() == "see you at 8"; }, 5000));
  // The device's own writes and their echoes never came back as changes.
  EXPECT_EQ(log1.size(), 0u) << log1.last();

  // A new device starts from a snapshot, which carries the draft.
  auto o3 = OptionsFor(s, dir / "a3.db", LoginDevice(s, "alice", "a3"));
  auto a3 = OpenClient(o3);
  a3->Start();
  ASSERT_TRUE(a3->WaitOnline(5000));
  EXPECT_EQ(a3->Draft("bob"), "see you at 8");

  // Sending clears it: at once on the sender, by the server's event elsewhere.
  ASSERT_TRUE(a2->Compose("bob", "see you at 8").ok);
  EXPECT_EQ(a2->Draft("bob"), "");
  ASSERT_TRUE(a2->WaitOutboxDrained(5000));
  ASSERT_TRUE(Eventually([&] { return a1->Draft("bob").empty() && a3->Draft("bob").empty(); }, 5000))
      << a1->Draft("bob") << " / " << a3->Draft("bob");
  ASSERT_TRUE(Eventually([&] { return log1.last().empty(); }, 5000));
  auto events = DraftEvents(s, "alice");
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back()["text"], "");
}

TEST(DraftsSdkE2E, DraftsSetOfflineAreSavedOnceWhenOnlineAndTheLastLocalWriteWins) {
  ServerProcess s;
  std::string a1_token = RegisterAndLogin(s, "alice");
  std::string a2_token = LoginDevice(s, "alice", "a2");
  Register(s, "bob");
  TempDir dir;
  auto o1 = OptionsFor(s, dir / "a1.db", a1_token);
  o1.draft_debounce_ms = kDebounceMs;
  auto o2 = OptionsFor(s, dir / "a2.db", a2_token);
  o2.draft_debounce_ms = kDebounceMs;
  auto a1 = OpenClient(o1);
  auto a2 = OpenClient(o2);
  a2->Start();
  ASSERT_TRUE(a2->WaitOnline(5000));
  ASSERT_TRUE(a2->Compose("bob", "hello").ok);
  ASSERT_TRUE(a2->WaitOutboxDrained(5000));

  // a1 has never been online: keystrokes pile up locally as one draft.
  for (const char* t : {"w", "wh", "wha", "what", "what about"}) ASSERT_TRUE(a1->SetDraft("bob", t).ok);
  EXPECT_EQ(a1->PendingDraftCount(), 1u);
  EXPECT_EQ(a1->Draft("bob"), "what about");
  // Meanwhile a2 saves another draft; a1's is later in server order, so it wins.
  ASSERT_TRUE(a2->SetDraft("bob", "from a2").ok);
  ASSERT_TRUE(a2->WaitDraftsSaved(5000));
  ASSERT_EQ(DraftEvents(s, "alice").size(), 1u);

  a1->Start();
  ASSERT_TRUE(a1->WaitOnline(5000));
  EXPECT_EQ(a1->Draft("bob"), "what about") << "the unsaved local text wins over the synced one";
  ASSERT_TRUE(a1->WaitDraftsSaved(5000));
  ASSERT_TRUE(Eventually([&] { return a2->Draft("bob") == "what about"; }, 5000)) << a2->Draft("bob");
  EXPECT_EQ(a1->Draft("bob"), "what about");

  // Typing while online: debounced, one request for the burst.
  for (const char* t : {"what about n", "what about no", "what about noon"}) ASSERT_TRUE(a1->SetDraft("bob", t).ok);
  ASSERT_TRUE(a1->WaitDraftsSaved(5000));
  ASSERT_TRUE(Eventually([&] { return a2->Draft("bob") == "what about noon"; }, 5000));
  // Setting the text the server already has: saved (the cache may be
  // behind), but the server appends no event.
  ASSERT_TRUE(a1->SetDraft("bob", "what about noon").ok);
  ASSERT_TRUE(a1->WaitDraftsSaved(5000));

  auto events = DraftEvents(s, "alice");
  std::vector<std::string> texts;
  for (auto& e : events) texts.push_back(e["text"]);
  // Each draft event carries the current draft when read: the count is what matters.
  EXPECT_EQ(texts.size(), 3u) << "a2's, a1's offline burst once, a1's online burst once";
  EXPECT_EQ(texts.back(), "what about noon");

  // Bad input is refused locally and changes nothing.
  EXPECT_EQ(a1->SetDraft("bob", std::string(16385, 'x')).code, "bad_request");
  EXPECT_EQ(a1->SetDraft("bob", std::string("\xff")).code, "bad_request");
  EXPECT_EQ(a1->SetDraft(int64_t{999}, "x").code, "bad_request");
  EXPECT_EQ(a1->Draft("bob"), "what about noon");
}

// A cache written by the SDK before drafts (schema 3) is migrated in place
// (to the current schema): its data stays, and drafts work.
TEST(DraftsSdkE2E, ACacheOfSchemaThreeIsMigratedAndKeepsItsData) {
  TempDir dir;
  const std::string path = dir / "v3.db";
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  const char* v3 = R"sql(
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE conversations(
  id INTEGER PRIMARY KEY, peer_id INTEGER NOT NULL DEFAULT 0, peer TEXT NOT NULL DEFAULT '',
  created_at INTEGER NOT NULL DEFAULT 0, last_seq INTEGER NOT NULL DEFAULT 0,
  hidden_unread INTEGER NOT NULL DEFAULT 0, hidden_below INTEGER NOT NULL DEFAULT 0);
CREATE INDEX conversations_by_peer ON conversations(peer);
CREATE TABLE messages(
  conversation_id INTEGER NOT NULL, seq INTEGER NOT NULL, sender_id INTEGER NOT NULL,
  client_id TEXT NOT NULL, body TEXT NOT NULL, ts INTEGER NOT NULL, status INTEGER NOT NULL,
  version INTEGER NOT NULL DEFAULT 0, edited_at INTEGER NOT NULL DEFAULT 0, deleted INTEGER NOT NULL DEFAULT 0,
  hidden INTEGER NOT NULL DEFAULT 0, PRIMARY KEY(conversation_id, seq)) WITHOUT ROWID;
CREATE INDEX messages_by_client_id ON messages(client_id);
CREATE TABLE receipts(conversation_id INTEGER NOT NULL, user_id INTEGER NOT NULL, delivered INTEGER NOT NULL,
  read INTEGER NOT NULL, PRIMARY KEY(conversation_id, user_id)) WITHOUT ROWID;
CREATE TABLE withheld(conversation_id INTEGER NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY(conversation_id, seq)) WITHOUT ROWID;
CREATE TABLE outbox(local_id INTEGER PRIMARY KEY AUTOINCREMENT, client_id TEXT NOT NULL UNIQUE, peer TEXT NOT NULL,
  body TEXT NOT NULL, created_at INTEGER NOT NULL, failed INTEGER NOT NULL DEFAULT 0,
  error_code TEXT NOT NULL DEFAULT '', error_message TEXT NOT NULL DEFAULT '');
INSERT INTO meta VALUES('user_id','1'),('username','alice'),('device_id','1'),('applied','7');
INSERT INTO conversations(id, peer_id, peer, last_seq) VALUES(3, 2, 'bob', 1);
INSERT INTO messages(conversation_id, seq, sender_id, client_id, body, ts, status) VALUES(3, 1, 2, 'c1', 'hi', 5, 1);
INSERT INTO outbox(client_id, peer, body, created_at) VALUES('c2', 'bob', 'queued', 6);
PRAGMA user_version=3;
)sql";
  ASSERT_EQ(sqlite3_exec(db, v3, nullptr, nullptr, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
  sqlite3_close(db);

  ClientOptions o;
  o.db_path = path;
  auto c = OpenClient(o);
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->applied(), 7);
  ASSERT_EQ(c->Messages("bob", 0, 10).size(), 2u);  // the cached message and the queued one
  EXPECT_EQ(c->Messages("bob", 0, 10)[0].expires_at, 0) << "schema 5: an old message never expires";
  auto conv = c->ConversationWith("bob");
  ASSERT_TRUE(conv.has_value());
  EXPECT_EQ(conv->draft, "");
  ASSERT_TRUE(c->SetDraft("bob", "kept").ok);
  EXPECT_EQ(c->ConversationWith("bob")->draft, "kept");
  EXPECT_TRUE(c->ConversationWith("bob")->draft_pending);
  EXPECT_EQ(c->PendingDraftCount(), 1u);
  c.reset();
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, nullptr), SQLITE_OK);
  ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
  EXPECT_EQ(sqlite3_column_int(st, 0), 9) << "through 4 (drafts), 5 (retention and selective sync), 6 (opened "
                                              "conversations), 7 (drafts a refused message had cleared), 8 "
                                              "(conversations.paged_head) to 9 (outbox.attempted)";
  sqlite3_finalize(st);
  ASSERT_EQ(sqlite3_prepare_v2(db, "SELECT paged_head FROM conversations WHERE id=3", -1, &st, nullptr), SQLITE_OK)
      << sqlite3_errmsg(db);
  ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
  EXPECT_EQ(sqlite3_column_int(st, 0), 0);
  sqlite3_finalize(st);
  // The queued message was never sent by this SDK (it was offline here).
  ASSERT_EQ(sqlite3_prepare_v2(db, "SELECT attempted FROM outbox WHERE client_id='c2'", -1, &st, nullptr), SQLITE_OK)
      << sqlite3_errmsg(db);
  ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
  EXPECT_EQ(sqlite3_column_int(st, 0), 0);
  sqlite3_finalize(st);
  sqlite3_close(db);
  // Reopened: the unsaved draft is still there, to be sent when online.
  auto again = OpenClient(o);
  EXPECT_EQ(again->Draft("bob"), "kept");
  EXPECT_EQ(again->PendingDraftCount(), 1u);
}

}  // namespace
}  // namespace parley::testing
