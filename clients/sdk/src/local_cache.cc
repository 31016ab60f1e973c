// LocalCache over sqlite3. Design: one file, WAL, synchronous=FULL (the
// outbox is a promise to the user: a composed message must survive a crash of
// the client or of the machine). Statements are prepared once per cache and
// reused (StatementCache): preparing them on every call was a large share of
// a client's CPU when applying events and on start-up. Inside this file
// SQLite failures are thrown as SqlError and caught at each public method,
// which rolls its transaction back and returns a LocalError; no exception
// leaves the class.
//
// Own-message status is stored (messages.status) so that a status callback
// fires exactly when it changes: a receipt or a message from the peer raises
// the peer's watermarks, and every own message at or below them that is not
// withheld (blocking, docs/protocol.md) moves to delivered/read.
#include "local_cache.h"

#include "history.h"
#include "protocol/message_edits.h"

#include <algorithm>
#include <climits>
#include <set>
#include <stdexcept>

namespace parley::sdk {

using nlohmann::json;

namespace {

struct SqlError : std::runtime_error {
  SqlError(int rc_in, const std::string& what) : std::runtime_error(what), rc(rc_in) {}
  int rc;
};

// One statement, prepared for this use only, or borrowed from the cache's
// StatementCache (prepared once, reset and unbound when the Stmt ends; a
// statement still in use, e.g. by an enclosing loop, is prepared afresh).
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) : db_(db) { Prepare(sql); }
  // `sql` must be a string literal: its address is the cache key.
  Stmt(sqlite3* db, StatementCache& cache, const char* sql) : db_(db) {
    CachedStatement& e = cache[sql];
    if (e.stmt && !e.busy) {
      s_ = e.stmt;
    } else {
      Prepare(sql);
      if (e.stmt) return;  // busy: this one stays private
      e.stmt = s_;
    }
    e.busy = true;
    entry_ = &e;
  }
  ~Stmt() {
    if (entry_) {
      sqlite3_reset(s_);
      sqlite3_clear_bindings(s_);
      entry_->busy = false;
    } else {
      sqlite3_finalize(s_);
    }
  }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  Stmt& Bind(int i, int64_t v) {
    sqlite3_bind_int64(s_, i, v);
    return *this;
  }
  Stmt& Bind(int i, const std::string& v) {
    sqlite3_bind_text(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  // True while a row is available.
  bool Step() {
    int rc = sqlite3_step(s_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    throw SqlError(rc, sqlite3_errmsg(db_));
  }
  void Run() {
    while (Step()) {
    }
  }
  int64_t Int(int i) { return sqlite3_column_int64(s_, i); }
  sqlite3_stmt* raw() { return s_; }
  std::string Text(int i) {
    auto p = sqlite3_column_text(s_, i);
    return p ? std::string(reinterpret_cast<const char*>(p), static_cast<size_t>(sqlite3_column_bytes(s_, i)))
             : std::string();
  }

 private:
  void Prepare(const char* sql) {
    int rc = sqlite3_prepare_v2(db_, sql, -1, &s_, nullptr);
    if (rc != SQLITE_OK) throw SqlError(rc, std::string("prepare: ") + sqlite3_errmsg(db_) + " in " + sql);
  }

  sqlite3* db_;
  sqlite3_stmt* s_ = nullptr;
  CachedStatement* entry_ = nullptr;  // set when borrowed from a cache
};

void Exec(sqlite3* db, const char* sql) {
  char* err = nullptr;
  int rc = sqlite3_exec(db, sql, nullptr, nullptr, &err);
  if (rc != SQLITE_OK) {
    std::string msg = err ? err : "sqlite error";
    sqlite3_free(err);
    throw SqlError(rc, msg);
  }
}

LocalError ToLocalError(const SqlError& e) {
  if ((e.rc & 0xff) == SQLITE_FULL) {
    return {kErrLocalStorageFull,
            "the local cache is full (no space left on the disk, or its size cap reached): nothing was changed"};
  }
  return {kErrLocalStorage, std::string("local cache error: ") + e.what()};
}

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS conversations(
  id INTEGER PRIMARY KEY, peer_id INTEGER NOT NULL DEFAULT 0, peer TEXT NOT NULL DEFAULT '',
  created_at INTEGER NOT NULL DEFAULT 0, last_seq INTEGER NOT NULL DEFAULT 0,
  hidden_unread INTEGER NOT NULL DEFAULT 0, hidden_below INTEGER NOT NULL DEFAULT 0,
  draft TEXT NOT NULL DEFAULT '', draft_updated_at INTEGER NOT NULL DEFAULT 0,
  disappearing_s INTEGER NOT NULL DEFAULT 0,
  summary_unread INTEGER NOT NULL DEFAULT -1, summarised INTEGER NOT NULL DEFAULT 0,
  selected_head INTEGER NOT NULL DEFAULT 0, paged_head INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS conversations_by_peer ON conversations(peer);
CREATE TABLE IF NOT EXISTS messages(
  conversation_id INTEGER NOT NULL, seq INTEGER NOT NULL, sender_id INTEGER NOT NULL,
  client_id TEXT NOT NULL, body TEXT NOT NULL, ts INTEGER NOT NULL, status INTEGER NOT NULL,
  version INTEGER NOT NULL DEFAULT 0, edited_at INTEGER NOT NULL DEFAULT 0, deleted INTEGER NOT NULL DEFAULT 0,
  hidden INTEGER NOT NULL DEFAULT 0, expires_at INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY(conversation_id, seq)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS messages_by_client_id ON messages(client_id);
CREATE INDEX IF NOT EXISTS messages_expiring ON messages(expires_at) WHERE expires_at > 0 AND deleted = 0;
CREATE TABLE IF NOT EXISTS receipts(
  conversation_id INTEGER NOT NULL, user_id INTEGER NOT NULL,
  delivered INTEGER NOT NULL, read INTEGER NOT NULL,
  PRIMARY KEY(conversation_id, user_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS withheld(
  conversation_id INTEGER NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY(conversation_id, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox(
  local_id INTEGER PRIMARY KEY AUTOINCREMENT, client_id TEXT NOT NULL UNIQUE, peer TEXT NOT NULL,
  body TEXT NOT NULL, created_at INTEGER NOT NULL, failed INTEGER NOT NULL DEFAULT 0,
  error_code TEXT NOT NULL DEFAULT '', error_message TEXT NOT NULL DEFAULT '',
  cleared_draft TEXT, cleared_draft_at INTEGER NOT NULL DEFAULT 0, attempted INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS draft_outbox(
  peer TEXT PRIMARY KEY, text TEXT NOT NULL, set_at INTEGER NOT NULL, gen INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS opened(conversation_id INTEGER PRIMARY KEY, opened_at INTEGER NOT NULL);
)sql";

// Schema 1 -> 2: edits and deletes.
constexpr const char* kSchemaV2 = R"sql(
ALTER TABLE messages ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN edited_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN hidden INTEGER NOT NULL DEFAULT 0;
)sql";

// Schema 2 -> 3: unread messages older than the cached ones (see
// ConversationRowLocked).
constexpr const char* kSchemaV3 = R"sql(
ALTER TABLE conversations ADD COLUMN hidden_unread INTEGER NOT NULL DEFAULT 0;
ALTER TABLE conversations ADD COLUMN hidden_below INTEGER NOT NULL DEFAULT 0;
)sql";

// Schema 3 -> 4: drafts. conversations.draft is the server's draft (the
// last `draft` event or the snapshot); draft_outbox holds the drafts set on
// this device and not yet saved (one row per peer, coalesced).
constexpr const char* kSchemaV4 = R"sql(
ALTER TABLE conversations ADD COLUMN draft TEXT NOT NULL DEFAULT '';
ALTER TABLE conversations ADD COLUMN draft_updated_at INTEGER NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS draft_outbox(
  peer TEXT PRIMARY KEY, text TEXT NOT NULL, set_at INTEGER NOT NULL, gen INTEGER NOT NULL) WITHOUT ROWID;
)sql";

// Schema 4 -> 5: retention and selective sync (issue 12).
// Retention: a message's expires_at (0: never); the partial index holds only
// those still to drop. The conversation's disappearing timer, as the server
// last said.
// Selective sync: summary_unread is the server's unread count from the last
// summary (-1: none; the cached messages count), kept current by full events
// after it; summarised: 1 while messages up to last_seq may be missing
// (summaries came instead of them), 2 once OpenConversation paged them
// (cached messages older than the pages may still miss edits that came as
// summaries: HistoryView names both), 0 never summarised. selected_head: the
// head the server named when OpenConversation selected it; a summary at or
// below it was made before (it may arrive after the pages) and does not mark
// the conversation summarised again.
constexpr const char* kSchemaV5 = R"sql(
ALTER TABLE messages ADD COLUMN expires_at INTEGER NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS messages_expiring ON messages(expires_at) WHERE expires_at > 0 AND deleted = 0;
ALTER TABLE conversations ADD COLUMN disappearing_s INTEGER NOT NULL DEFAULT 0;
ALTER TABLE conversations ADD COLUMN summary_unread INTEGER NOT NULL DEFAULT -1;
ALTER TABLE conversations ADD COLUMN summarised INTEGER NOT NULL DEFAULT 0;
ALTER TABLE conversations ADD COLUMN selected_head INTEGER NOT NULL DEFAULT 0;
)sql";

// Schema 5 -> 6: the conversations the app opened (selective sync), selected
// again by every session. Not stream-derived: a snapshot leaves it alone.
constexpr const char* kSchemaV6 = R"sql(
CREATE TABLE IF NOT EXISTS opened(conversation_id INTEGER PRIMARY KEY, opened_at INTEGER NOT NULL);
)sql";

// Schema 6 -> 7: the server's draft a queued message cleared on screen
// (outbox.cleared_draft; NULL: none), put back if the server refuses the
// message (it then never cleared its draft, and no `draft` event says so).
// cleared_draft_at: the draft_updated_at the clearing wrote.
constexpr const char* kSchemaV7 = R"sql(
ALTER TABLE outbox ADD COLUMN cleared_draft TEXT;
ALTER TABLE outbox ADD COLUMN cleared_draft_at INTEGER NOT NULL DEFAULT 0;
)sql";

// Schema 7 -> 8: paged_head, the selected_head OpenConversation (or a
// session's fill) last paged at. A summary made before the selection (at or
// below selected_head) arriving after the selection's answer changes no
// count only if the conversation was paged since that selection (or the
// cache holds its last message); else its messages are missing.
constexpr const char* kSchemaV8 = R"sql(
ALTER TABLE conversations ADD COLUMN paged_head INTEGER NOT NULL DEFAULT 0;
)sql";

// Schema 8 -> 9: outbox.attempted, 1 from the moment a send of the message
// goes out until an answer says it was not stored (a refusal). The server
// may have stored it, so the outbox's maximum age does not fail it; kept in
// the file because the answer may come to a later process (a `parley send`
// run, the app started again).
constexpr const char* kSchemaV9 = R"sql(
ALTER TABLE outbox ADD COLUMN attempted INTEGER NOT NULL DEFAULT 0;
)sql";

}  // namespace

// RAII BEGIN IMMEDIATE ... COMMIT; rolls back unless committed.
class LocalCache::Tx {
 public:
  explicit Tx(sqlite3* db) : db_(db) { Exec(db_, "BEGIN IMMEDIATE"); }
  ~Tx() {
    if (!done_) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  }
  void Commit() {
    Exec(db_, "COMMIT");
    done_ = true;
  }

 private:
  sqlite3* db_;
  bool done_ = false;
};

std::unique_ptr<LocalCache> LocalCache::Open(const std::string& path, int64_t max_pages, LocalError* error) {
  sqlite3* db = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                           nullptr);
  if (rc != SQLITE_OK) {
    if (error) *error = {kErrLocalStorage, "cannot open " + path + ": " + (db ? sqlite3_errmsg(db) : "out of memory")};
    sqlite3_close(db);
    return nullptr;
  }
  std::unique_ptr<LocalCache> c(new LocalCache(db));
  try {
    sqlite3_extended_result_codes(db, 1);
    sqlite3_busy_timeout(db, 5000);
    Exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;");
    if (max_pages > 0) Exec(db, ("PRAGMA max_page_count=" + std::to_string(max_pages)).c_str());
    int64_t version = 0;
    {
      Stmt s(db, "PRAGMA user_version");
      if (s.Step()) version = s.Int(0);
    }
    if (version > kSchemaVersion) {
      if (error) *error = {kErrLocalStorage, path + " was written by a newer SDK (schema " + std::to_string(version) + ")"};
      return nullptr;
    }
    if (version < kSchemaVersion) {
      Tx tx(db);
      if (version < 1) {
        Exec(db, kSchema);  // the current schema in one go
      } else {
        if (version < 2) Exec(db, kSchemaV2);
        if (version < 3) Exec(db, kSchemaV3);
        if (version < 4) Exec(db, kSchemaV4);
        if (version < 5) Exec(db, kSchemaV5);
        if (version < 6) Exec(db, kSchemaV6);
        if (version < 7) Exec(db, kSchemaV7);
        if (version < 8) Exec(db, kSchemaV8);
        if (version < 9) Exec(db, kSchemaV9);
      }
      Exec(db, ("PRAGMA user_version=" + std::to_string(kSchemaVersion)).c_str());
      tx.Commit();
    }
    std::string me = c->MetaLocked("user_id");
    c->me_ = me.empty() ? 0 : std::stoll(me);
  } catch (const SqlError& e) {
    if (error) *error = ToLocalError(e);
    return nullptr;
  }
  return c;
}

LocalCache::~LocalCache() {
  for (auto& [sql, e] : stmts_) sqlite3_finalize(e.stmt);
  sqlite3_close(db_);
}

std::string LocalCache::MetaLocked(const std::string& key) {
  Stmt s(db_, stmts_, "SELECT value FROM meta WHERE key=?");
  s.Bind(1, key);
  return s.Step() ? s.Text(0) : std::string();
}

void LocalCache::SetMetaLocked(const std::string& key, const std::string& value) {
  Stmt s(db_, stmts_, "INSERT INTO meta(key,value) VALUES(?,?) ON CONFLICT(key) DO UPDATE SET value=excluded.value");
  s.Bind(1, key).Bind(2, value).Run();
}

void LocalCache::SetIdentity(int64_t user_id, const std::string& username, int64_t device_id) {
  std::lock_guard lock(mu_);
  try {
    if (MetaLocked("user_id") == std::to_string(user_id) && MetaLocked("username") == username &&
        MetaLocked("device_id") == std::to_string(device_id)) {
      return;  // unchanged: no write (each commit is an fsync)
    }
    Tx tx(db_);
    SetMetaLocked("user_id", std::to_string(user_id));
    SetMetaLocked("username", username);
    SetMetaLocked("device_id", std::to_string(device_id));
    tx.Commit();
  } catch (const SqlError&) {
    // Identity is also kept in memory; a full disk only loses it for offline runs.
  }
  me_ = user_id;
}

int64_t LocalCache::user_id() {
  std::lock_guard lock(mu_);
  return me_;
}

std::string LocalCache::username() {
  std::lock_guard lock(mu_);
  try {
    return MetaLocked("username");
  } catch (const SqlError&) {
    return "";
  }
}

int64_t LocalCache::device_id() {
  std::lock_guard lock(mu_);
  try {
    auto v = MetaLocked("device_id");
    return v.empty() ? 0 : std::stoll(v);
  } catch (const SqlError&) {
    return 0;
  }
}

std::optional<int64_t> LocalCache::AppliedLocked() {
  const std::string v = MetaLocked("applied");
  if (v.empty()) return std::nullopt;
  return std::stoll(v);
}

std::optional<int64_t> LocalCache::applied() {
  std::lock_guard lock(mu_);
  try {
    return AppliedLocked();
  } catch (const SqlError&) {
    return std::nullopt;
  }
}

bool LocalCache::AddOutbox(const OutboxRow& row, LocalError* error) {
  std::lock_guard lock(mu_);
  try {
    Tx tx(db_);
    // The server clears the draft when it stores the message (and says so
    // with a `draft` event), so the screen clears it now. If the server
    // refuses the message, nothing clears it there: FailOutbox puts the
    // server's draft back. Kept with the row: the draft this clearing hid,
    // or the one an earlier queued message to the peer hid (still pending).
    std::optional<std::string> cleared;
    int64_t cleared_at = row.created_at;
    {
      Stmt q(db_, stmts_, "SELECT draft FROM conversations WHERE peer=? AND draft<>'' ORDER BY id LIMIT 1");
      q.Bind(1, row.peer);
      if (q.Step()) cleared = q.Text(0);
    }
    if (!cleared) {
      Stmt q(db_, stmts_,
             "SELECT cleared_draft, cleared_draft_at FROM outbox WHERE peer=? AND failed=0 AND cleared_draft IS NOT NULL "
             "ORDER BY local_id DESC LIMIT 1");
      q.Bind(1, row.peer);
      if (q.Step()) {
        cleared = q.Text(0);
        cleared_at = q.Int(1);
      }
    }
    Stmt s(db_, stmts_,
           "INSERT INTO outbox(client_id, peer, body, created_at, cleared_draft, cleared_draft_at) VALUES(?,?,?,?,?,?)");
    s.Bind(1, row.client_id).Bind(2, row.peer).Bind(3, row.body).Bind(4, row.created_at);
    if (cleared) {
      s.Bind(5, *cleared);
    } else {
      sqlite3_bind_null(s.raw(), 5);
    }
    s.Bind(6, cleared_at).Run();
    // An unsaved draft must not be sent after the message either.
    Stmt d(db_, stmts_, "DELETE FROM draft_outbox WHERE peer=?");
    d.Bind(1, row.peer).Run();
    Stmt c(db_, stmts_, "UPDATE conversations SET draft='', draft_updated_at=? WHERE peer=? AND draft<>''");
    c.Bind(1, row.created_at).Bind(2, row.peer).Run();
    tx.Commit();
    return true;
  } catch (const SqlError& e) {
    if (error) *error = ToLocalError(e);
    return false;
  }
}

std::vector<OutboxRow> LocalCache::Outbox(bool include_failed) {
  std::lock_guard lock(mu_);
  std::vector<OutboxRow> out;
  try {
    Stmt s(db_, stmts_, include_failed
                    ? "SELECT local_id, client_id, peer, body, created_at, failed, error_code, error_message, attempted "
                      "FROM outbox ORDER BY local_id"
                    : "SELECT local_id, client_id, peer, body, created_at, failed, error_code, error_message, attempted "
                      "FROM outbox WHERE failed=0 ORDER BY local_id");
    while (s.Step()) {
      out.push_back(
          {s.Int(0), s.Text(1), s.Text(2), s.Text(3), s.Int(4), s.Int(5) != 0, s.Text(6), s.Text(7), s.Int(8) != 0});
    }
  } catch (const SqlError&) {
  }
  return out;
}

bool LocalCache::FailOutbox(const std::string& client_id, const std::string& code, const std::string& message,
                            LocalError* error) {
  std::lock_guard lock(mu_);
  try {
    Tx tx(db_);
    Stmt s(db_, stmts_, "UPDATE outbox SET failed=1, error_code=?, error_message=?, attempted=0 WHERE client_id=?");
    s.Bind(1, code).Bind(2, message).Bind(3, client_id).Run();
    // The message will never be stored, so the server kept its draft: show it
    // again, unless a `draft` event changed it since the clearing (its
    // draft_updated_at is then another) or another queued message to the
    // peer may still clear it on the server.
    Stmt r(db_, stmts_,
           "UPDATE conversations SET draft=o.cleared_draft "
           "FROM outbox o WHERE o.client_id=? AND o.cleared_draft IS NOT NULL AND conversations.peer=o.peer "
           "AND conversations.draft='' AND conversations.draft_updated_at=o.cleared_draft_at "
           "AND NOT EXISTS(SELECT 1 FROM outbox p WHERE p.peer=o.peer AND p.failed=0)");
    r.Bind(1, client_id).Run();
    tx.Commit();
    return true;
  } catch (const SqlError& e) {
    if (error) *error = ToLocalError(e);
    return false;
  }
}

bool LocalCache::RetryFailedOutbox(const std::string& client_id, int64_t now) {
  std::lock_guard lock(mu_);
  try {
    Stmt s(db_, stmts_,
           "UPDATE outbox SET failed=0, error_code='', error_message='', created_at=? WHERE client_id=? AND failed=1");
    s.Bind(1, now).Bind(2, client_id).Run();
    return sqlite3_changes(db_) > 0;
  } catch (const SqlError&) {
    return false;
  }
}

bool LocalCache::SetOutboxAttempted(const std::string& client_id, bool attempted, LocalError* error) {
  std::lock_guard lock(mu_);
  try {
    Stmt s(db_, stmts_, "UPDATE outbox SET attempted=? WHERE client_id=?");
    s.Bind(1, int64_t{attempted}).Bind(2, client_id).Run();
    return true;
  } catch (const SqlError& e) {
    if (error) *error = ToLocalError(e);
    return false;
  }
}

bool LocalCache::DiscardFailedOutbox(const std::string& client_id) {
  std::lock_guard lock(mu_);
  try {
    Stmt s(db_, stmts_, "DELETE FROM outbox WHERE client_id=? AND failed=1");
    s.Bind(1, client_id).Run();
    return sqlite3_changes(db_) > 0;
  } catch (const SqlError&) {
    return false;
  }
}

bool LocalCache::SetPendingDraft(const std::string& peer, const std::string& text, int64_t now, LocalError* error) {
  std::lock_guard lock(mu_);
  try {
    // Always queued, also when the cached server draft has this text: the
    // cache may be behind (set offline, before a sync), and the server
    // answers `changed: false` without an event when it already has it.
    Stmt s(db_, stmts_,
           "INSERT INTO draft_outbox(peer, text, set_at, gen) VALUES(?,?,?,1) ON CONFLICT(peer) DO UPDATE SET "
           "text=excluded.text, set_at=excluded.set_at, gen=gen+1");
    s.Bind(1, peer).Bind(2, text).Bind(3, now).Run();
    return true;
  } catch (const SqlError& e) {
    if (error) *error = ToLocalError(e);
    return false;
  }
}

std::vector<DraftRow> LocalCache::PendingDrafts() {
  std::lock_guard lock(mu_);
  std::vector<DraftRow> out;
  try {
    Stmt s(db_, stmts_, "SELECT peer, text, set_at, gen FROM draft_outbox ORDER BY set_at");
    while (s.Step()) out.push_back({s.Text(0), s.Text(1), s.Int(2), s.Int(3)});
  } catch (const SqlError&) {
  }
  return out;
}

void LocalCache::DraftSaved(const std::string& peer, int64_t gen, int64_t conversation_id, const std::string& text,
                            int64_t user_seq, int64_t now) {
  std::lock_guard lock(mu_);
  try {
    Tx tx(db_);
    {
      // Gone: a Compose dropped it (the send clears the server's draft,
      // and its `draft` event says so); the saved text is stale already.
      Stmt p(db_, stmts_, "SELECT gen FROM draft_outbox WHERE peer=?");
      p.Bind(1, peer);
      if (!p.Step()) return;
    }
    // The server held `text` when it wrote the event at `user_seq`. Until
    // the cache applies that event, `text` is shown, so the composer does
    // not fall back to an older server text when the row goes. Once it is
    // applied, the cache holds that event's draft or a newer one (a `draft`
    // event carries the draft as the server read it), and this answer may
    // come after it and after later events: in a cluster another node's
    // event, or a sync read, can overtake the answer. No event (the server
    // already had `text`): the event that set it is in the stream, so the
    // cache shows it, or something newer, once it reaches that event.
    if (user_seq > AppliedLocked().value_or(0)) {
      Stmt u(db_, stmts_, "UPDATE conversations SET draft=?, draft_updated_at=? WHERE id=?");
      u.Bind(1, text).Bind(2, now).Bind(3, conversation_id).Run();
    }
    Stmt d(db_, stmts_, "DELETE FROM draft_outbox WHERE peer=? AND gen=?");
    d.Bind(1, peer).Bind(2, gen).Run();
    tx.Commit();
  } catch (const SqlError&) {
  }
}

void LocalCache::DropPendingDraft(const std::string& peer, int64_t gen) {
  std::lock_guard lock(mu_);
  try {
    Stmt d(db_, stmts_, "DELETE FROM draft_outbox WHERE peer=? AND gen=?");
    d.Bind(1, peer).Bind(2, gen).Run();
  } catch (const SqlError&) {
  }
}

std::string LocalCache::Draft(const std::string& peer) {
  std::lock_guard lock(mu_);
  try {
    Stmt p(db_, stmts_, "SELECT text FROM draft_outbox WHERE peer=?");
    p.Bind(1, peer);
    if (p.Step()) return p.Text(0);
    Stmt c(db_, stmts_, "SELECT draft FROM conversations WHERE peer=? ORDER BY id LIMIT 1");
    c.Bind(1, peer);
    return c.Step() ? c.Text(0) : std::string();
  } catch (const SqlError&) {
    return "";
  }
}

std::string LocalCache::ShownDraftLocked(int64_t conversation_id) {
  Stmt s(db_, stmts_,
         "SELECT COALESCE(d.text, c.draft) FROM conversations c LEFT JOIN draft_outbox d ON d.peer=c.peer AND c.peer<>'' "
         "WHERE c.id=?");
  s.Bind(1, conversation_id);
  return s.Step() ? s.Text(0) : std::string();
}

nlohmann::json LocalCache::HistoryView() {
  std::lock_guard lock(mu_);
  json held = json::array(), messages = json::array(), drafts = json::array(), summarised = json::array(),
       timers = json::array();
  try {
    // Held seqs as ranges (a cache holds runs of seqs), then in full only the
    // messages an edit or delete changed: a view stays small on a big cache.
    Stmt h(db_, stmts_, "SELECT conversation_id, seq FROM messages ORDER BY conversation_id, seq");
    int64_t conv = 0, lo = 0, hi = -1;
    json ranges = json::array();
    auto flush = [&] {
      if (hi >= lo) ranges.push_back({lo, hi});
      if (!ranges.empty()) held.push_back({{"conversation_id", conv}, {"ranges", std::move(ranges)}});
      ranges = json::array();
    };
    while (h.Step()) {
      const int64_t c = h.Int(0), seq = h.Int(1);
      if (c != conv) {
        flush();
        conv = c;
        lo = seq;
      } else if (seq != hi + 1) {
        ranges.push_back({lo, hi});
        lo = seq;
      }
      hi = seq;
    }
    flush();
    Stmt m(db_, stmts_,
           "SELECT conversation_id, seq, version, deleted, hidden, body FROM messages "
           "WHERE version > 0 OR deleted <> 0 OR hidden <> 0 ORDER BY conversation_id, seq");
    while (m.Step()) {
      messages.push_back({{"conversation_id", m.Int(0)},
                          {"seq", m.Int(1)},
                          {"version", m.Int(2)},
                          {"deleted", m.Int(3) != 0},
                          {"hidden", m.Int(4) != 0},
                          {"body_hash", TextHash(m.Text(5))}});
    }
    Stmt c(db_, stmts_,
           "SELECT c.id, c.draft, d.peer IS NOT NULL FROM conversations c LEFT JOIN draft_outbox d "
           "ON d.peer=c.peer AND c.peer<>'' ORDER BY c.id");
    while (c.Step()) {
      drafts.push_back({{"conversation_id", c.Int(0)}, {"draft_hash", TextHash(c.Text(1))}, {"pending", c.Int(2) != 0}});
    }
    // Selective sync: conversations this cache ever kept as summaries; their
    // cached messages may miss edits and deletes the summaries stood for.
    Stmt su(db_, stmts_, "SELECT id FROM conversations WHERE summarised <> 0 ORDER BY id");
    while (su.Step()) summarised.push_back(su.Int(0));
    // Retention: each conversation's timer, as the last `disappearing` event
    // (or snapshot) left it; every device of a user must end with the same.
    Stmt t(db_, stmts_, "SELECT id, disappearing_s FROM conversations ORDER BY id");
    while (t.Step()) timers.push_back({{"conversation_id", t.Int(0)}, {"seconds", t.Int(1)}});
  } catch (const SqlError&) {
    return {{"held", json::array()}, {"messages", json::array()}, {"drafts", json::array()}, {"timers", json::array()}};
  }
  json view = {{"held", std::move(held)}, {"messages", std::move(messages)}, {"drafts", std::move(drafts)},
               {"timers", std::move(timers)}};
  if (!summarised.empty()) view["summarised"] = std::move(summarised);
  return view;
}

std::string LocalCache::PeerOf(int64_t conversation_id) {
  std::lock_guard lock(mu_);
  try {
    Stmt s(db_, stmts_, "SELECT peer FROM conversations WHERE id=?");
    s.Bind(1, conversation_id);
    return s.Step() ? s.Text(0) : std::string();
  } catch (const SqlError&) {
    return "";
  }
}

MessageStatus LocalCache::OwnStatusLocked(int64_t conversation_id, int64_t seq) {
  {
    Stmt w(db_, stmts_, "SELECT 1 FROM withheld WHERE conversation_id=? AND seq=?");
    w.Bind(1, conversation_id).Bind(2, seq);
    if (w.Step()) return MessageStatus::kSent;
  }
  Stmt s(db_, stmts_, "SELECT MAX(delivered), MAX(read) FROM receipts WHERE conversation_id=? AND user_id<>?");
  s.Bind(1, conversation_id).Bind(2, me_);
  if (!s.Step()) return MessageStatus::kSent;
  if (s.Int(1) >= seq) return MessageStatus::kRead;
  if (s.Int(0) >= seq) return MessageStatus::kDelivered;
  return MessageStatus::kSent;
}

void LocalCache::InsertConversationLocked(const json& c, bool from_stream) {
  int64_t id = c.value("conversation_id", int64_t{0});
  if (id <= 0) return;
  int64_t peer_id = 0;
  std::string peer;
  for (const auto& m : c.value("members", json::array())) {
    if (m.value("user_id", int64_t{0}) != me_) {
      peer_id = m.value("user_id", int64_t{0});
      peer = m.value("username", "");
    }
  }
  // The timer of a known conversation follows the stream only: an answer
  // (open_conversation) read before a `disappearing` event may be handled
  // after it, and must not bring the older value back.
  Stmt s(db_, stmts_,
         from_stream
             ? "INSERT INTO conversations(id, peer_id, peer, created_at, last_seq, disappearing_s) VALUES(?,?,?,?,?,?) "
               "ON CONFLICT(id) DO UPDATE SET peer_id=excluded.peer_id, peer=excluded.peer, "
               "created_at=excluded.created_at, last_seq=MAX(last_seq, excluded.last_seq), "
               "disappearing_s=excluded.disappearing_s"
             : "INSERT INTO conversations(id, peer_id, peer, created_at, last_seq, disappearing_s) VALUES(?,?,?,?,?,?) "
               "ON CONFLICT(id) DO UPDATE SET peer_id=excluded.peer_id, peer=excluded.peer, "
               "created_at=excluded.created_at, last_seq=MAX(last_seq, excluded.last_seq)");
  s.Bind(1, id).Bind(2, peer_id).Bind(3, peer).Bind(4, c.value("created_at", int64_t{0}))
      .Bind(5, c.value("last_seq", int64_t{0}))
      .Bind(6, c.value("disappearing_s", int64_t{0}))
      .Run();
}

void LocalCache::InsertMessageLocked(const json& m, std::vector<StatusUpdate>* updates) {
  int64_t conv = m.value("conversation_id", int64_t{0});
  int64_t seq = m.value("seq", int64_t{0});
  int64_t sender = m.value("sender_id", int64_t{0});
  std::string client_id = m.value("client_id", "");
  {
    Stmt c(db_, stmts_, "INSERT INTO conversations(id) VALUES(?) ON CONFLICT(id) DO NOTHING");
    c.Bind(1, conv).Run();
    Stmt u(db_, stmts_, "UPDATE conversations SET last_seq=MAX(last_seq, ?) WHERE id=?");
    u.Bind(1, seq).Bind(2, conv).Run();
  }
  bool own = sender == me_;
  MessageStatus status = own ? OwnStatusLocked(conv, seq) : MessageStatus::kSent;
  const bool deleted = m.value("deleted", false);
  const int64_t version = m.value("version", int64_t{0});
  Stmt s(db_, stmts_,
         "INSERT INTO messages(conversation_id, seq, sender_id, client_id, body, ts, status, version, edited_at, "
         "deleted, expires_at) VALUES(?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING");
  s.Bind(1, conv).Bind(2, seq).Bind(3, sender).Bind(4, client_id).Bind(5, m.value("body", ""))
      .Bind(6, m.value("ts", int64_t{0}))
      .Bind(7, static_cast<int64_t>(status))
      .Bind(8, version)
      .Bind(9, m.value("edited_at", int64_t{0}))
      .Bind(10, static_cast<int64_t>(deleted ? 1 : 0))
      .Bind(11, m.value("expires_at", int64_t{0}))
      .Run();
  bool inserted = sqlite3_changes(db_) > 0;
  // Known already: a message object read later (sync, history) shows the
  // message as it is now; fold it in like an edit or delete.
  if (!inserted && (version > 0 || deleted))
    ChangeMessageLocked(conv, seq, deleted, version, m.value("body", ""), m.value("edited_at", int64_t{0}));
  if (!own) return;
  // An own message (this device's ack or event, or another device's send):
  // it leaves the outbox the moment the cache knows it was stored.
  bool was_queued = false;
  {
    Stmt d(db_, stmts_, "DELETE FROM outbox WHERE client_id=?");
    d.Bind(1, client_id).Run();
    was_queued = sqlite3_changes(db_) > 0;
  }
  if ((inserted || was_queued) && updates) {
    Stmt p(db_, stmts_, "SELECT peer FROM conversations WHERE id=?");
    p.Bind(1, conv);
    std::string peer = p.Step() ? p.Text(0) : "";
    updates->push_back({client_id, peer, conv, seq, status, "", ""});
  }
}

void LocalCache::RaiseWatermarksLocked(int64_t conv, int64_t user, int64_t delivered, int64_t read,
                                       std::vector<StatusUpdate>* updates) {
  {
    Stmt c(db_, stmts_, "INSERT INTO conversations(id) VALUES(?) ON CONFLICT(id) DO NOTHING");
    c.Bind(1, conv).Run();
    Stmt s(db_, stmts_,
           "INSERT INTO receipts(conversation_id, user_id, delivered, read) VALUES(?,?,?,?) "
           "ON CONFLICT DO UPDATE SET delivered=MAX(delivered, excluded.delivered), read=MAX(read, excluded.read)");
    s.Bind(1, conv).Bind(2, user).Bind(3, std::max(delivered, read)).Bind(4, read).Run();
  }
  if (user == me_) return;
  // Own messages whose stored status is below what the watermarks now say.
  Stmt q(db_, stmts_,
         "SELECT m.seq, m.client_id, m.status FROM messages m WHERE m.conversation_id=? AND m.sender_id=? "
         "AND m.seq<=? AND m.status<? AND NOT EXISTS (SELECT 1 FROM withheld w WHERE w.conversation_id=m.conversation_id "
         "AND w.seq=m.seq) ORDER BY m.seq");
  q.Bind(1, conv).Bind(2, me_).Bind(3, std::max(delivered, read)).Bind(4, static_cast<int64_t>(MessageStatus::kRead));
  std::vector<std::pair<int64_t, std::string>> rows;
  while (q.Step()) rows.emplace_back(q.Int(0), q.Text(1));
  if (rows.empty()) return;
  std::string peer;
  {
    Stmt p(db_, stmts_, "SELECT peer FROM conversations WHERE id=?");
    p.Bind(1, conv);
    peer = p.Step() ? p.Text(0) : "";
  }
  for (auto& [seq, client_id] : rows) {
    MessageStatus now = OwnStatusLocked(conv, seq);
    Stmt u(db_, stmts_, "UPDATE messages SET status=? WHERE conversation_id=? AND seq=? AND status<?");
    u.Bind(1, static_cast<int64_t>(now)).Bind(2, conv).Bind(3, seq).Bind(4, static_cast<int64_t>(now)).Run();
    if (sqlite3_changes(db_) > 0 && updates) updates->push_back({client_id, peer, conv, seq, now, "", ""});
  }
}

void LocalCache::ApplyOneLocked(const json& e, ApplyOutcome* out) {
  std::string kind = e.value("kind", "");
  auto add_withheld = [&](int64_t conv) {
    for (const auto& w : e.value("withheld", json::array())) {
      Stmt s(db_, stmts_, "INSERT INTO withheld(conversation_id, seq) VALUES(?,?) ON CONFLICT DO NOTHING");
      s.Bind(1, conv).Bind(2, w.get<int64_t>()).Run();
    }
  };
  if (kind == "summary") {
    // The conversation's current last seq and unread count, in place of its
    // events (selective sync): its messages up to last_seq may be missing.
    // One made before the conversation was selected (at or below
    // selected_head) that arrives after its pages changes no count: the
    // cache holds every unread message then, and the summary's count, read
    // later than its place in the stream, may already include messages that
    // arrive in full after it (they would count twice). That holds when the
    // conversation was paged since that selection (paged_head) or the cache
    // holds its last message; with nothing paged (it was not summarised when
    // the selection's answer came) its messages are missing, as for any
    // summary.
    int64_t conv = e.value("conversation_id", int64_t{0});
    const int64_t last_seq = e.value("last_seq", int64_t{0});
    Stmt c(db_, stmts_, "INSERT INTO conversations(id) VALUES(?) ON CONFLICT(id) DO NOTHING");
    c.Bind(1, conv).Run();
    bool keep = false;
    {
      Stmt k(db_, stmts_,
             "SELECT ?2 <= c.selected_head AND c.summarised <> 1 AND (c.paged_head >= c.selected_head OR "
             "COALESCE((SELECT MAX(seq) FROM messages m WHERE m.conversation_id=c.id), 0) >= ?3) "
             "FROM conversations c WHERE c.id=?1");
      k.Bind(1, conv).Bind(2, e.value("user_seq", int64_t{0})).Bind(3, last_seq);
      keep = k.Step() && k.Int(0) != 0;
    }
    Stmt u(db_, stmts_,
           "UPDATE conversations SET last_seq=MAX(last_seq, ?1), summary_unread=CASE WHEN ?2 THEN summary_unread "
           "ELSE ?3 END, summarised=CASE WHEN ?2 THEN summarised ELSE 1 END WHERE id=?4");
    u.Bind(1, last_seq).Bind(2, int64_t{keep ? 1 : 0}).Bind(3, e.value("unread", int64_t{0})).Bind(4, conv).Run();
    return;
  }
  if (kind == "message") {
    const json& m = e["message"];
    int64_t conv = m.value("conversation_id", int64_t{0});
    int64_t seq = m.value("seq", int64_t{0});
    int64_t sender = m.value("sender_id", int64_t{0});
    // After a summary the server's count goes on: one more from the peer;
    // none after an own send (sending reads everything before it).
    Stmt su(db_, stmts_,
            "UPDATE conversations SET summary_unread=CASE WHEN ? THEN summary_unread+1 ELSE 0 END "
            "WHERE id=? AND summary_unread>=0");
    su.Bind(1, sender != me_ ? 1 : 0).Bind(2, conv).Run();
    add_withheld(conv);
    InsertMessageLocked(m, &out->updates);
    // Sending reads everything before it (docs/protocol.md, "message").
    RaiseWatermarksLocked(conv, sender, seq, seq, &out->updates);
    if (sender != me_) {
      auto& r = out->received[conv];
      r = std::max(r, seq);
    }
  } else if (kind == "receipt") {
    int64_t conv = e.value("conversation_id", int64_t{0});
    if (e.value("user_id", int64_t{0}) == me_) {
      // My own read watermark is known again: read to the end, nothing is
      // unread; else the cached messages count from here on.
      Stmt su(db_, stmts_,
              "UPDATE conversations SET summary_unread=CASE WHEN ?>=last_seq THEN 0 ELSE -1 END "
              "WHERE id=? AND summary_unread>=0");
      su.Bind(1, e.value("read", int64_t{0})).Bind(2, conv).Run();
    }
    add_withheld(conv);
    RaiseWatermarksLocked(conv, e.value("user_id", int64_t{0}), e.value("delivered", int64_t{0}),
                          e.value("read", int64_t{0}), &out->updates);
  } else if (kind == "conversation") {
    InsertConversationLocked(e["conversation"]);
  } else if (kind == "edit" || kind == "delete") {
    // An edit that carries deleted_at was read after the message expired:
    // a tombstone, as the delete that follows (docs/protocol.md, edit events).
    auto changed = ChangeMessageLocked(e.value("conversation_id", int64_t{0}), e.value("seq", int64_t{0}),
                                       kind == "delete" || e.contains("deleted_at"), e.value("version", int64_t{0}),
                                       e.value("body", ""),
                                       e.value("edited_at", int64_t{0}));
    if (changed) out->changed.push_back(std::move(*changed));
  } else if (kind == "delete_for_me") {
    const int64_t conv = e.value("conversation_id", int64_t{0}), seq = e.value("seq", int64_t{0});
    auto hidden = HideMessageLocked(conv, seq);
    if (hidden && !hidden->outgoing) {
      // While the server's count stands, an unread message deleted for me
      // leaves it (the server's count never includes those).
      Stmt su(db_, stmts_,
              "UPDATE conversations SET summary_unread=MAX(0, summary_unread-1) WHERE id=? AND summary_unread>0 "
              "AND ? > COALESCE((SELECT read FROM receipts WHERE conversation_id=? AND user_id=?), 0)");
      su.Bind(1, conv).Bind(2, seq).Bind(3, conv).Bind(4, me_).Run();
    }
    if (hidden) out->changed.push_back(std::move(*hidden));
  } else if (kind == "draft") {
    // The conversation's current draft as the server read it: applied in
    // stream order, the last one is the newest (docs/protocol.md, set_draft).
    int64_t conv = e.value("conversation_id", int64_t{0});
    Stmt c(db_, stmts_, "INSERT INTO conversations(id) VALUES(?) ON CONFLICT(id) DO NOTHING");
    c.Bind(1, conv).Run();
    Stmt u(db_, stmts_, "UPDATE conversations SET draft=?, draft_updated_at=? WHERE id=?");
    u.Bind(1, e.value("text", "")).Bind(2, e.value("updated_at", int64_t{0})).Bind(3, conv).Run();
  } else if (kind == "disappearing") {
    int64_t conv = e.value("conversation_id", int64_t{0});
    Stmt c(db_, stmts_, "INSERT INTO conversations(id) VALUES(?) ON CONFLICT(id) DO NOTHING");
    c.Bind(1, conv).Run();
    Stmt u(db_, stmts_, "UPDATE conversations SET disappearing_s=? WHERE id=?");
    u.Bind(1, e.value("seconds", int64_t{0})).Bind(2, conv).Run();
  }
  // Other kinds (profile, contact, block, and kinds added later) change no
  // cached table; they still advance the cursor and reach on_event.
}

CachedMessage LocalCache::MessageRowLocked(int64_t conversation_id, int64_t seq) {
  CachedMessage m;
  Stmt s(db_, stmts_,
         "SELECT sender_id, client_id, body, ts, status, version, edited_at, deleted, hidden, expires_at FROM messages "
         "WHERE conversation_id=? AND seq=?");
  s.Bind(1, conversation_id).Bind(2, seq);
  if (!s.Step()) return m;
  m.conversation_id = conversation_id;
  m.seq = seq;
  m.sender_id = s.Int(0);
  m.outgoing = m.sender_id == me_;
  m.client_id = s.Text(1);
  m.body = s.Text(2);
  m.ts = s.Int(3);
  m.status = static_cast<MessageStatus>(s.Int(4));
  m.version = s.Int(5);
  m.edited_at = s.Int(6);
  m.deleted = s.Int(7) != 0;
  m.hidden = s.Int(8) != 0;
  m.expires_at = s.Int(9);
  return m;
}

std::optional<CachedMessage> LocalCache::ChangeMessageLocked(int64_t conversation_id, int64_t seq, bool deleted,
                                                             int64_t version, const std::string& body,
                                                             int64_t edited_at) {
  CachedMessage m = MessageRowLocked(conversation_id, seq);
  if (m.seq == 0) return std::nullopt;  // not cached: its state comes with it when it is paged in
  protocol::LocalMessageState state{m.body, m.version, m.deleted, m.edited_at};
  if (!protocol::ApplyChange(state, protocol::ReceivedChange{deleted, version, body, edited_at})) {
    // Nothing to show changed, but a tombstone still takes the version the
    // server gave its delete: a message that became a tombstone here at its
    // expires_at (ExpireMessages, or a read masked by the server) before the
    // expiry's delete event came ends at that event's version, as on the
    // devices that applied the event to the live message.
    if (state.version != m.version) {
      Stmt u(db_, stmts_, "UPDATE messages SET version=? WHERE conversation_id=? AND seq=?");
      u.Bind(1, state.version).Bind(2, conversation_id).Bind(3, seq).Run();
    }
    return std::nullopt;
  }
  Stmt u(db_, stmts_, "UPDATE messages SET body=?, version=?, edited_at=?, deleted=? WHERE conversation_id=? AND seq=?");
  u.Bind(1, state.body).Bind(2, state.version).Bind(3, state.edited_at)
      .Bind(4, static_cast<int64_t>(state.deleted ? 1 : 0))
      .Bind(5, conversation_id)
      .Bind(6, seq)
      .Run();
  m.body = state.body;
  m.version = state.version;
  m.edited_at = state.edited_at;
  m.deleted = state.deleted;
  return m;
}

std::optional<CachedMessage> LocalCache::HideMessageLocked(int64_t conversation_id, int64_t seq) {
  Stmt u(db_, stmts_, "UPDATE messages SET hidden=1 WHERE conversation_id=? AND seq=? AND hidden=0");
  u.Bind(1, conversation_id).Bind(2, seq).Run();
  if (sqlite3_changes(db_) == 0) return std::nullopt;
  return MessageRowLocked(conversation_id, seq);
}

bool LocalCache::ApplyEvents(const std::vector<json>& events, ApplyOutcome* out, LocalError* error) {
  std::lock_guard lock(mu_);
  try {
    Tx tx(db_);
    int64_t applied = AppliedLocked().value_or(0);
    // By user seq; events at or below the cursor were seen already (live
    // and sync overlap). A coalesced receipt's also_covers are applied
    // when their turn comes (nothing else arrives for them).
    std::map<int64_t, const json*> next;
    for (const auto& e : events) {
      int64_t us = e.value("user_seq", int64_t{0});
      if (us > applied) next.emplace(us, &e);
    }
    std::set<int64_t> covered = covered_;
    ApplyOutcome local;
    std::map<int64_t, std::string> drafts_before;  // conversation -> shown draft before this batch
    while (true) {
      auto it = next.find(applied + 1);
      if (covered.count(applied + 1)) {
        // Folded into an earlier coalesced receipt (or a summary) that was
        // applied: a copy of it (a sync after a drop re-reads from the
        // contiguous cursor) was seen already and is dropped.
        if (it != next.end()) next.erase(it);
      } else if (it != next.end()) {
        if (it->second->value("kind", "") == "draft") {
          int64_t conv = it->second->value("conversation_id", int64_t{0});
          if (!drafts_before.count(conv)) drafts_before[conv] = ShownDraftLocked(conv);
        }
        ApplyOneLocked(*it->second, &local);
        for (const auto& c : it->second->value("also_covers", json::array())) {
          if (c.is_number_integer() && c.get<int64_t>() > applied + 1) covered.insert(c.get<int64_t>());
        }
        // A summary (selective sync) stands for every user seq of its ranges.
        for (const auto& r : it->second->value("covers", json::array())) {
          if (!r.is_array() || r.size() != 2) continue;
          for (int64_t c = std::max(r[0].get<int64_t>(), applied + 2); c <= r[1].get<int64_t>(); ++c) covered.insert(c);
        }
        local.applied.push_back(*it->second);
        next.erase(it);
      } else {
        break;
      }
      ++applied;
    }
    local.gap = !next.empty();
    for (auto& [conv, before] : drafts_before) {
      if (ShownDraftLocked(conv) != before) local.drafts.push_back(ConversationRowLocked(conv));
    }
    covered.erase(covered.begin(), covered.upper_bound(applied));
    SetMetaLocked("applied", std::to_string(applied));
    tx.Commit();
    covered_ = std::move(covered);
    *out = std::move(local);
    return true;
  } catch (const SqlError& e) {
    if (error) *error = ToLocalError(e);
    return false;
  } catch (const json::exception& e) {
    if (error) *error = {kErrLocalStorage, std::string("malformed event from the server: ") + e.what()};
    return false;
  }
}

bool LocalCache::ApplySnapshot(const json& snap, ApplyOutcome* out, LocalError* error) {
  std::lock_guard lock(mu_);
  try {
    Tx tx(db_);
    std::map<int64_t, std::string> drafts_before;
    {
      std::vector<int64_t> ids;
      Stmt s(db_, stmts_, "SELECT id FROM conversations");
      while (s.Step()) ids.push_back(s.Int(0));
      for (int64_t id : ids) drafts_before[id] = ShownDraftLocked(id);
    }
    Exec(db_, "DELETE FROM conversations; DELETE FROM messages; DELETE FROM receipts; DELETE FROM withheld;");
    ApplyOutcome local;
    for (const auto& entry : snap.value("conversations", json::array())) {
      const json& c = entry["conversation"];
      InsertConversationLocked(c);
      int64_t conv = c.value("conversation_id", int64_t{0});
      for (const auto& w : entry.value("watermarks", json::array())) {
        // Seqs below this member's watermark that stay "sent" forever (a
        // past block): known before any status is computed.
        for (const auto& seq : w.value("withheld", json::array())) {
          Stmt s(db_, stmts_, "INSERT INTO withheld(conversation_id, seq) VALUES(?,?) ON CONFLICT DO NOTHING");
          s.Bind(1, conv).Bind(2, seq.get<int64_t>()).Run();
        }
        RaiseWatermarksLocked(conv, w.value("user_id", int64_t{0}), w.value("delivered", int64_t{0}),
                              w.value("read", int64_t{0}), nullptr);
      }
      for (const auto& m : entry.value("messages", json::array())) {
        InsertMessageLocked(m, &local.updates);
        if (m.value("sender_id", int64_t{0}) != me_) {
          auto& r = local.received[conv];
          r = std::max(r, m.value("seq", int64_t{0}));
        }
      }
      RecordHiddenUnreadLocked(conv, entry.value("unread", int64_t{0}));
      const json draft = entry.value("draft", json::object());
      Stmt d(db_, stmts_, "UPDATE conversations SET draft=?, draft_updated_at=? WHERE id=?");
      d.Bind(1, draft.value("text", "")).Bind(2, draft.value("updated_at", int64_t{0})).Bind(3, conv).Run();
      drafts_before.try_emplace(conv, "");
    }
    for (auto& [conv, before] : drafts_before) {
      std::string now = ShownDraftLocked(conv);
      if (now != before) local.drafts.push_back(ConversationRowLocked(conv));
    }
    SetMetaLocked("applied", std::to_string(snap.value("head", int64_t{0})));
    tx.Commit();
    covered_.clear();
    *out = std::move(local);
    return true;
  } catch (const SqlError& e) {
    if (error) *error = ToLocalError(e);
    return false;
  } catch (const json::exception& e) {
    if (error) *error = {kErrLocalStorage, std::string("malformed snapshot from the server: ") + e.what()};
    return false;
  }
}

bool LocalCache::StoreHistory(int64_t conversation_id, const json& messages, const json& withheld,
                              LocalError* error) {
  std::lock_guard lock(mu_);
  try {
    Tx tx(db_);
    for (const auto& seq : withheld) {
      if (!seq.is_number_integer()) continue;
      Stmt s(db_, stmts_, "INSERT INTO withheld(conversation_id, seq) VALUES(?,?) ON CONFLICT DO NOTHING");
      s.Bind(1, conversation_id).Bind(2, seq.get<int64_t>()).Run();
    }
    for (const auto& m : messages) {
      if (m.value("conversation_id", int64_t{0}) != conversation_id) continue;
      InsertMessageLocked(m, nullptr);
    }
    tx.Commit();
    return true;
  } catch (const SqlError& e) {
    if (error) *error = ToLocalError(e);
    return false;
  }
}

bool LocalCache::StoreConversation(const json& conversation, LocalError* error) {
  std::lock_guard lock(mu_);
  try {
    InsertConversationLocked(conversation, /*from_stream=*/false);
    return true;
  } catch (const SqlError& e) {
    if (error) *error = ToLocalError(e);
    return false;
  }
}

bool LocalCache::RecordSent(const std::string& client_id, const json& ack, std::vector<StatusUpdate>* updates,
                            LocalError* error) {
  std::lock_guard lock(mu_);
  try {
    Tx tx(db_);
    Stmt s(db_, stmts_, "SELECT peer, body FROM outbox WHERE client_id=?");
    s.Bind(1, client_id);
    if (!s.Step()) return true;  // already recorded through its message event
    std::string peer = s.Text(0), body = s.Text(1);
    int64_t conv = ack.value("conversation_id", int64_t{0});
    {
      Stmt c(db_, stmts_, "INSERT INTO conversations(id, peer) VALUES(?,?) ON CONFLICT(id) DO UPDATE SET "
                  "peer=CASE WHEN peer='' THEN excluded.peer ELSE peer END");
      c.Bind(1, conv).Bind(2, peer).Run();
    }
    json m = {{"conversation_id", conv}, {"seq", ack.value("seq", int64_t{0})}, {"sender_id", me_},
              {"client_id", client_id}, {"body", body}, {"ts", ack.value("ts", int64_t{0})},
              {"expires_at", ack.value("expires_at", int64_t{0})}};
    InsertMessageLocked(m, updates);
    tx.Commit();
    return true;
  } catch (const SqlError& e) {
    if (error) *error = ToLocalError(e);
    return false;
  }
}

// The snapshot's unread count of `conv` (the server's, DESIGN.md) can cover
// messages older than the ones it sent (snapshot_messages per conversation):
// those are kept as a number, hidden_unread, standing for the unread
// messages below hidden_below (the oldest cached seq, or last_seq + 1 when
// none is cached), until the read watermark passes them. As in the web
// client (web/js/state.js, hiddenUnread).
void LocalCache::RecordHiddenUnreadLocked(int64_t conv, int64_t server_unread) {
  int64_t below = 0, last_seq = 0, my_read = 0, local = 0;
  {
    Stmt s(db_, stmts_, "SELECT last_seq FROM conversations WHERE id=?");
    s.Bind(1, conv);
    if (!s.Step()) return;
    last_seq = s.Int(0);
  }
  {
    Stmt s(db_, stmts_, "SELECT MIN(seq) FROM messages WHERE conversation_id=?");
    s.Bind(1, conv);
    below = s.Step() && s.Int(0) > 0 ? s.Int(0) : last_seq + 1;
  }
  {
    Stmt s(db_, stmts_, "SELECT read FROM receipts WHERE conversation_id=? AND user_id=?");
    s.Bind(1, conv).Bind(2, me_);
    if (s.Step()) my_read = s.Int(0);
  }
  {
    Stmt s(db_, stmts_,
           "SELECT COUNT(*) FROM messages WHERE conversation_id=? AND sender_id<>? AND seq>? AND hidden=0");
    s.Bind(1, conv).Bind(2, me_).Bind(3, my_read);
    if (s.Step()) local = s.Int(0);
  }
  Stmt u(db_, stmts_, "UPDATE conversations SET hidden_unread=?, hidden_below=? WHERE id=?");
  u.Bind(1, std::max<int64_t>(0, server_unread - local)).Bind(2, below).Bind(3, conv).Run();
}

CachedConversation LocalCache::ConversationRowLocked(int64_t id) {
  CachedConversation c;
  Stmt s(db_, stmts_,
         "SELECT c.id, c.peer_id, c.peer, c.last_seq, c.hidden_unread, c.hidden_below, c.draft, c.draft_updated_at, "
         "d.text, d.set_at, c.disappearing_s, c.summary_unread, c.summarised FROM conversations c "
         "LEFT JOIN draft_outbox d ON d.peer=c.peer AND c.peer<>'' WHERE c.id=?");
  s.Bind(1, id);
  if (!s.Step()) return c;
  c.conversation_id = s.Int(0);
  c.peer_id = s.Int(1);
  c.peer = s.Text(2);
  c.last_seq = s.Int(3);
  const int64_t hidden_unread = s.Int(4), hidden_below = s.Int(5);
  c.draft_pending = sqlite3_column_type(s.raw(), 8) != SQLITE_NULL;
  c.draft = c.draft_pending ? s.Text(8) : s.Text(6);
  c.draft_updated_at = c.draft_pending ? s.Int(9) : s.Int(7);
  c.disappearing_s = s.Int(10);
  const int64_t summary_unread = s.Int(11);
  c.summarised = s.Int(12) == 1;
  Stmt r(db_, stmts_, "SELECT user_id, delivered, read FROM receipts WHERE conversation_id=?");
  r.Bind(1, id);
  while (r.Step()) {
    if (r.Int(0) == me_) {
      c.my_read = r.Int(2);
    } else {
      c.peer_delivered = std::max(c.peer_delivered, r.Int(1));
      c.peer_read = std::max(c.peer_read, r.Int(2));
    }
  }
  // While the read watermark is below the snapshot's hidden unread messages,
  // they count as hidden_unread (at most one per seq left between the
  // watermark and hidden_below) and only the cached ones from hidden_below
  // up are counted (history paged in below it is not counted twice).
  const bool hidden = hidden_unread > 0 && c.my_read < hidden_below - 1;
  Stmt u(db_, stmts_, "SELECT COUNT(*) FROM messages WHERE conversation_id=? AND sender_id<>? AND seq>? AND hidden=0");
  u.Bind(1, id).Bind(2, me_).Bind(3, hidden ? hidden_below - 1 : c.my_read);
  if (u.Step()) c.unread = u.Int(0) + (hidden ? std::min(hidden_unread, hidden_below - 1 - c.my_read) : 0);
  if (summary_unread >= 0) c.unread = summary_unread;  // the server's count (selective sync)
  Stmt t(db_, stmts_, "SELECT MAX(ts) FROM messages WHERE conversation_id=?");
  t.Bind(1, id);
  if (t.Step()) c.last_ts = t.Int(0);
  return c;
}

void LocalCache::MarkSelected(int64_t conversation_id, int64_t head) {
  std::lock_guard lock(mu_);
  Stmt u(db_, stmts_, "UPDATE conversations SET selected_head=MAX(selected_head, ?) WHERE id=?");
  u.Bind(1, head).Bind(2, conversation_id).Run();
}

bool LocalCache::FillReached(int64_t conversation_id, int64_t oldest) {
  std::lock_guard lock(mu_);
  try {
    Stmt s(db_, stmts_,
           "SELECT COALESCE((SELECT MAX(seq) FROM messages WHERE conversation_id=?1 AND seq<?2), 0), "
           "COALESCE((SELECT read FROM receipts WHERE conversation_id=?1 AND user_id=?3), 0)");
    s.Bind(1, conversation_id).Bind(2, oldest).Bind(3, me_);
    if (!s.Step()) return false;
    return oldest <= s.Int(0) + 1 || oldest <= s.Int(1) + 1;
  } catch (const SqlError&) {
    return false;
  }
}

void LocalCache::MarkPaged(int64_t conversation_id, int64_t oldest, bool all_unread_held) {
  std::lock_guard lock(mu_);
  try {
    Tx tx(db_);
    // Stopped before every unread message was held: the ones older than
    // the pages are kept as a number below them (hidden_unread,
    // hidden_below, as after a snapshot); the cached ones from `oldest` up
    // count one by one.
    if (!all_unread_held) {
      Stmt s(db_, stmts_,
             "SELECT c.summary_unread, (SELECT COUNT(*) FROM messages m WHERE m.conversation_id=c.id AND "
             "m.sender_id<>?2 AND m.hidden=0 AND m.seq>=?3 AND m.seq>COALESCE((SELECT read FROM receipts r WHERE "
             "r.conversation_id=c.id AND r.user_id=?2), 0)) FROM conversations c WHERE c.id=?1");
      s.Bind(1, conversation_id).Bind(2, me_).Bind(3, oldest);
      if (s.Step() && s.Int(0) >= 0) {
        Stmt u(db_, stmts_, "UPDATE conversations SET hidden_unread=?, hidden_below=? WHERE id=?");
        u.Bind(1, std::max<int64_t>(0, s.Int(0) - s.Int(1))).Bind(2, oldest).Bind(3, conversation_id).Run();
      }
    }
    // 2: paged after summaries (no longer shown as summarised; the view
    // record still names it, see HistoryView). The cached messages count
    // again: every unread one is among them.
    Stmt u(db_, stmts_, "UPDATE conversations SET summarised=2, summary_unread=-1, paged_head=selected_head WHERE id=?");
    u.Bind(1, conversation_id).Run();
    tx.Commit();
  } catch (const SqlError&) {
    // Left summarised: the next OpenConversation or session pages it again.
  }
}

void LocalCache::AddOpened(int64_t conversation_id, int64_t now) {
  std::lock_guard lock(mu_);
  try {
    Stmt u(db_, stmts_,
           "INSERT INTO opened(conversation_id, opened_at) VALUES(?,?) "
           "ON CONFLICT(conversation_id) DO UPDATE SET opened_at=excluded.opened_at");
    u.Bind(1, conversation_id).Bind(2, now).Run();
  } catch (const SqlError&) {
    // Kept in memory for this Client; a full disk only loses it for the next.
  }
}

std::vector<int64_t> LocalCache::Summarised() {
  std::lock_guard lock(mu_);
  std::vector<int64_t> out;
  try {
    Stmt s(db_, stmts_, "SELECT id FROM conversations WHERE summarised=1 ORDER BY id");
    while (s.Step()) out.push_back(s.Int(0));
  } catch (const SqlError&) {
  }
  return out;
}

std::vector<int64_t> LocalCache::Opened() {
  std::lock_guard lock(mu_);
  std::vector<int64_t> out;
  try {
    Stmt s(db_, stmts_, "SELECT conversation_id FROM opened ORDER BY opened_at DESC, conversation_id DESC");
    while (s.Step()) out.push_back(s.Int(0));
  } catch (const SqlError&) {
  }
  return out;
}

std::vector<CachedConversation> LocalCache::Conversations() {
  std::lock_guard lock(mu_);
  std::vector<CachedConversation> out;
  try {
    std::vector<int64_t> ids;
    Stmt s(db_, stmts_, "SELECT id FROM conversations");
    while (s.Step()) ids.push_back(s.Int(0));
    for (int64_t id : ids) out.push_back(ConversationRowLocked(id));
    std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
      return a.last_ts != b.last_ts ? a.last_ts > b.last_ts : a.conversation_id > b.conversation_id;
    });
  } catch (const SqlError&) {
  }
  return out;
}

std::optional<CachedConversation> LocalCache::ConversationWith(const std::string& peer) {
  std::lock_guard lock(mu_);
  try {
    Stmt s(db_, stmts_, "SELECT id FROM conversations WHERE peer=? ORDER BY id LIMIT 1");
    s.Bind(1, peer);
    if (!s.Step()) return std::nullopt;
    return ConversationRowLocked(s.Int(0));
  } catch (const SqlError&) {
    return std::nullopt;
  }
}

// Retention (issue 12; docs/protocol.md "Retention"): a message leaves the
// device at its expires_at by the device's clock, whether or not the
// server's delete event has arrived: its text is dropped and it becomes a
// tombstone, as a delete for everyone makes it (the event, when it comes,
// changes nothing more). The partial index holds only what is left to drop.
std::vector<CachedMessage> LocalCache::ExpireMessages(int64_t now) {
  std::lock_guard lock(mu_);
  std::vector<CachedMessage> changed;
  try {
    Tx tx(db_);
    ExpireLocked(now, &changed);
    tx.Commit();
  } catch (const SqlError&) {
    changed.clear();
  }
  return changed;
}

void LocalCache::ExpireLocked(int64_t now, std::vector<CachedMessage>* changed) {
  std::vector<std::pair<int64_t, int64_t>> keys;
  {
    Stmt s(db_, stmts_,
           "SELECT conversation_id, seq FROM messages INDEXED BY messages_expiring "
           "WHERE expires_at > 0 AND deleted = 0 AND expires_at <= ?");
    s.Bind(1, now);
    while (s.Step()) keys.emplace_back(s.Int(0), s.Int(1));
  }
  for (const auto& [conv, seq] : keys) {
    Stmt u(db_, stmts_, "UPDATE messages SET body='', deleted=1 WHERE conversation_id=? AND seq=?");
    u.Bind(1, conv).Bind(2, seq).Run();
    if (changed) {
      CachedMessage m = MessageRowLocked(conv, seq);
      if (m.seq != 0) changed->push_back(std::move(m));
    }
  }
}

int64_t LocalCache::NextExpiry() {
  std::lock_guard lock(mu_);
  try {
    Stmt s(db_, stmts_,
           "SELECT min(expires_at) FROM messages INDEXED BY messages_expiring WHERE expires_at > 0 AND deleted = 0");
    if (s.Step()) return s.Int(0);
  } catch (const SqlError&) {
  }
  return 0;
}

std::vector<CachedMessage> LocalCache::Messages(int64_t conversation_id, int64_t before, int limit, int64_t now) {
  std::lock_guard lock(mu_);
  std::vector<CachedMessage> out;
  try {
    Stmt s(db_, stmts_,
           "SELECT seq, sender_id, client_id, body, ts, status, version, edited_at, deleted, expires_at FROM messages "
           "WHERE conversation_id=? AND seq<? AND hidden=0 ORDER BY seq DESC LIMIT ?");
    s.Bind(1, conversation_id).Bind(2, before > 0 ? before : INT64_MAX).Bind(3, static_cast<int64_t>(limit));
    while (s.Step()) {
      CachedMessage m;
      m.conversation_id = conversation_id;
      m.seq = s.Int(0);
      m.sender_id = s.Int(1);
      m.outgoing = m.sender_id == me_;
      m.client_id = s.Text(2);
      m.body = s.Text(3);
      m.ts = s.Int(4);
      m.status = static_cast<MessageStatus>(s.Int(5));
      m.version = s.Int(6);
      m.edited_at = s.Int(7);
      m.deleted = s.Int(8) != 0;
      m.expires_at = s.Int(9);
      // Past its expiry but not dropped yet (the client's timer runs next):
      // never shown with its text.
      if (now > 0 && m.expires_at != 0 && m.expires_at <= now) {
        m.deleted = true;
        m.body.clear();
      }
      out.push_back(std::move(m));
    }
  } catch (const SqlError&) {
  }
  std::reverse(out.begin(), out.end());
  return out;
}

std::optional<StatusUpdate> LocalCache::StatusOf(const std::string& client_id) {
  std::lock_guard lock(mu_);
  try {
    {
      Stmt s(db_, stmts_, "SELECT peer, failed, error_code, error_message FROM outbox WHERE client_id=?");
      s.Bind(1, client_id);
      if (s.Step()) {
        StatusUpdate u{client_id, s.Text(0), 0, 0, s.Int(1) ? MessageStatus::kFailed : MessageStatus::kPending,
                       s.Text(2), s.Text(3)};
        return u;
      }
    }
    Stmt m(db_, stmts_,
           "SELECT m.conversation_id, m.seq, m.status, c.peer FROM messages m LEFT JOIN conversations c "
           "ON c.id=m.conversation_id WHERE m.client_id=? AND m.sender_id=?");
    m.Bind(1, client_id).Bind(2, me_);
    if (m.Step()) {
      return StatusUpdate{client_id, m.Text(3), m.Int(0), m.Int(1), static_cast<MessageStatus>(m.Int(2)), "", ""};
    }
  } catch (const SqlError&) {
  }
  return std::nullopt;
}

}  // namespace parley::sdk
