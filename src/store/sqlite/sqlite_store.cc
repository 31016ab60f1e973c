// SqliteStore: design.
//
// One file, two connections, two threads. The writer thread owns the only
// read-write connection, so SQLite never sees two writers and every write
// transaction is BEGIN IMMEDIATE without lock contention. It group-commits:
// whatever is queued when it wakes (up to commit_max_batch) goes into one
// transaction, and the fsync of that COMMIT is shared by all of it; a
// conversation's seqs are assigned in commit order because one thread assigns
// them. The reader thread owns a read-only connection; under WAL it reads the
// last committed snapshot without blocking the writer, so sync and history
// never wait behind a commit.
//
// Expected failures (unknown user, not a member, a taken username, ...) are
// found by reading before writing, so a failing operation writes nothing and
// its batch commits the others; an operation never needs its own SAVEPOINT.
// Any SQLite error, by contrast, fails the whole batch: it is rolled back and
// every operation in it gets that error.
//
// The writer caches, per conversation, its last seq, last activity and
// members, and per user the head user seq. An operation updates the cache
// and marks the entry dirty; the dirty entries are written to
// conversations/user_heads once per batch, just before COMMIT, so a batch of
// N messages into one conversation updates its row once. After a rollback the
// caches may hold uncommitted values and are dropped whole (reloaded lazily);
// they are also dropped between batches when they grow past a bound.
//
// Schema (version kSchemaVersion, recorded in PRAGMA user_version; kMigrations
// below is the list of numbered steps, each applied in its own transaction):
//   users(id PK, username UNIQUE, password_hash, created_at)
//   devices(id PK, user_id, name, platform, token_hash BLOB UNIQUE (NULL once
//           revoked), created_at, last_seen_at, cursor, revoked)
//           + devices_by_user(user_id)
//   conversations(id PK, direct_key UNIQUE ("min:max" of the two user ids of
//           a direct conversation), last_seq, created_at, last_activity_at)
//   members(conversation_id, user_id) PK(conversation_id, user_id), WITHOUT
//           ROWID + members_by_user(user_id, conversation_id)
//   messages(conversation_id, seq, sender_id, sender_device_id, client_id,
//           body, created_at) PK(conversation_id, seq), WITHOUT ROWID
//           + UNIQUE messages_dedup(conversation_id, sender_id, client_id)
//   user_events(user_id, user_seq, kind, conversation_id, seq,
//           receipt_user_id, delivered, read, created_at, data (NULL; kept
//           for later event kinds)) PK(user_id, user_seq), WITHOUT ROWID
//   user_heads(user_id PK, head)
//   device_receipts(device_id, conversation_id, delivered, read)
//           PK(device_id, conversation_id), WITHOUT ROWID
//   user_receipts(conversation_id, user_id, delivered, read)
//           PK(conversation_id, user_id), WITHOUT ROWID
// Every message key leads with the conversation id and every stream key with
// the user id, so the same layout maps onto a wide-row store (partition key,
// clustering key) and onto PostgreSQL partitioned by those ids. Sync is a
// range scan of user_events on its primary key joined to messages by theirs:
// its cost follows the events returned, never the size of history.
//
// Left open on purpose: events and messages are never purged yet (retention
// and "cursor too old" come with the retention feature), and the reader is a
// single thread (enough for one file; a pool of read connections is the next
// step if reads ever queue).

#include "store/sqlite/sqlite_store.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <fmt/format.h>
#include <limits>
#include <optional>
#include <unordered_map>
#include <utility>

#include "store/sqlite/sqlite_db.h"

namespace parley::store {

using sqlite::Db;
using sqlite::StepCounter;
using sqlite::Stmt;

namespace {

// The writer's caches are dropped between batches beyond these sizes, so
// memory stays bounded however many conversations and users there are.
constexpr size_t kMaxCachedConversations = 65536;
constexpr size_t kMaxCachedHeads = 262144;

struct Migration {
  int version;
  const char* sql;
};

constexpr Migration kMigrations[] = {
    {1, R"sql(
CREATE TABLE users(
  id INTEGER PRIMARY KEY,
  username TEXT NOT NULL UNIQUE,
  password_hash TEXT NOT NULL,
  created_at INTEGER NOT NULL);
CREATE TABLE devices(
  id INTEGER PRIMARY KEY,
  user_id INTEGER NOT NULL,
  name TEXT NOT NULL,
  platform TEXT NOT NULL,
  token_hash BLOB UNIQUE,
  created_at INTEGER NOT NULL,
  last_seen_at INTEGER NOT NULL,
  cursor INTEGER NOT NULL,
  revoked INTEGER NOT NULL DEFAULT 0);
CREATE INDEX devices_by_user ON devices(user_id);
CREATE TABLE conversations(
  id INTEGER PRIMARY KEY,
  direct_key TEXT UNIQUE,
  last_seq INTEGER NOT NULL,
  created_at INTEGER NOT NULL,
  last_activity_at INTEGER NOT NULL);
CREATE TABLE members(
  conversation_id INTEGER NOT NULL,
  user_id INTEGER NOT NULL,
  PRIMARY KEY(conversation_id, user_id)) WITHOUT ROWID;
CREATE INDEX members_by_user ON members(user_id, conversation_id);
CREATE TABLE messages(
  conversation_id INTEGER NOT NULL,
  seq INTEGER NOT NULL,
  sender_id INTEGER NOT NULL,
  sender_device_id INTEGER NOT NULL,
  client_id TEXT NOT NULL,
  body TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  PRIMARY KEY(conversation_id, seq)) WITHOUT ROWID;
CREATE UNIQUE INDEX messages_dedup ON messages(conversation_id, sender_id, client_id);
CREATE TABLE user_events(
  user_id INTEGER NOT NULL,
  user_seq INTEGER NOT NULL,
  kind INTEGER NOT NULL,
  conversation_id INTEGER NOT NULL,
  seq INTEGER NOT NULL DEFAULT 0,
  receipt_user_id INTEGER NOT NULL DEFAULT 0,
  delivered INTEGER NOT NULL DEFAULT 0,
  read INTEGER NOT NULL DEFAULT 0,
  created_at INTEGER NOT NULL,
  data TEXT,
  PRIMARY KEY(user_id, user_seq)) WITHOUT ROWID;
CREATE TABLE user_heads(
  user_id INTEGER PRIMARY KEY,
  head INTEGER NOT NULL);
CREATE TABLE device_receipts(
  device_id INTEGER NOT NULL,
  conversation_id INTEGER NOT NULL,
  delivered INTEGER NOT NULL,
  read INTEGER NOT NULL,
  PRIMARY KEY(device_id, conversation_id)) WITHOUT ROWID;
CREATE TABLE user_receipts(
  conversation_id INTEGER NOT NULL,
  user_id INTEGER NOT NULL,
  delivered INTEGER NOT NULL,
  read INTEGER NOT NULL,
  PRIMARY KEY(conversation_id, user_id)) WITHOUT ROWID;
)sql"},
};
static_assert(std::size(kMigrations) > 0 &&
                  kMigrations[std::size(kMigrations) - 1].version == SqliteStore::kSchemaVersion,
              "the last migration step defines kSchemaVersion");

Status Migrate(Db& db) {
  int64_t current = 0;
  {
    Stmt s(db, "PRAGMA user_version");
    if (s.Step()) current = s.Int(0);
  }
  if (db.failed()) return db.error();
  if (current > SqliteStore::kSchemaVersion) {
    return Status(ErrorCode::kInternal, fmt::format("store schema version {} is newer than this server's {}", current,
                                                    SqliteStore::kSchemaVersion));
  }
  for (const Migration& m : kMigrations) {
    if (m.version <= current) continue;
    std::string sql = fmt::format("BEGIN IMMEDIATE; {} PRAGMA user_version = {}; COMMIT;", m.sql, m.version);
    if (Status s = db.Exec(sql.c_str()); !s.ok()) {
      if (db.in_transaction()) db.ExecIgnoringErrors("ROLLBACK");
      return Status(ErrorCode::kInternal, fmt::format("schema migration {} failed: {}", m.version, s.message()));
    }
  }
  return Status::Ok();
}

std::string DirectKey(UserId a, UserId b) { return fmt::format("{}:{}", std::min(a, b), std::max(a, b)); }

// Columns: conversation_id, seq, sender_id, sender_device_id, client_id, body,
// created_at, starting at `col`.
MessageRecord MessageAt(const Stmt& s, int col) {
  MessageRecord m;
  m.conversation_id = s.Int(col);
  m.seq = s.Int(col + 1);
  m.sender_id = s.Int(col + 2);
  m.sender_device_id = s.Int(col + 3);
  m.client_id = s.Text(col + 4);
  m.body = s.Text(col + 5);
  m.created_at = s.Int(col + 6);
  return m;
}

DeviceRecord DeviceAt(const Stmt& s) {
  DeviceRecord d;
  d.id = s.Int(0);
  d.user_id = s.Int(1);
  d.name = s.Text(2);
  d.platform = s.Text(3);
  d.created_at = s.Int(4);
  d.last_seen_at = s.Int(5);
  d.cursor = s.Int(6);
  return d;
}

Callback<Empty> ToEmptyCallback(StatusCallback done) {
  return [done = std::move(done)](Result<Empty> r) { done(r.has_value() ? Status::Ok() : r.error()); };
}

}  // namespace

// ---------------------------------------------------------------------------
// Write operations

class SqliteStore::WriteOp {
 public:
  virtual ~WriteOp() = default;
  // Runs inside the batch's transaction. SQLite errors are sticky in the
  // writer's Db and fail the batch; expected failures become this op's result.
  virtual void Apply(Writer& writer) = 0;
  // After COMMIT (batch ok) or ROLLBACK (batch = the transaction's error).
  virtual void Finish(const Status& batch) = 0;
};

template <typename T>
class SqliteStore::TypedWriteOp final : public WriteOp {
 public:
  TypedWriteOp(std::function<Result<T>(Writer&)> body, Callback<T> done)
      : body_(std::move(body)), done_(std::move(done)) {}
  void Apply(Writer& writer) override { result_.emplace(body_(writer)); }
  void Finish(const Status& batch) override {
    if (!batch.ok() || !result_.has_value()) {
      done_(Result<T>(batch.ok() ? Status(ErrorCode::kInternal, "write not applied") : batch));
      return;
    }
    done_(std::move(*result_));
  }

 private:
  std::function<Result<T>(Writer&)> body_;
  Callback<T> done_;
  std::optional<Result<T>> result_;
};

class SqliteStore::Writer {
 public:
  explicit Writer(std::unique_ptr<Db> db) : db_(std::move(db)) {}

  // Applies `ops` in one transaction; returns its outcome.
  Status CommitBatch(const std::vector<std::unique_ptr<WriteOp>>& ops);

  Result<UserRecord> CreateUser(const std::string& username, const std::string& password_hash, int64_t now);
  Result<DeviceRecord> CreateDevice(UserId user_id, const std::string& name, const std::string& platform,
                                    const std::string& token_hash, int64_t now);
  Result<Empty> RevokeDevice(UserId user_id, DeviceId device_id);
  Result<Empty> SetCursor(DeviceId device_id, UserSeq user_seq, int64_t now);
  Result<OpenResult> OpenDirect(UserId a, UserId b, int64_t now);
  Result<AppendResult> AppendMessage(const NewMessage& msg);
  Result<ReceiptResult> UpdateReceipt(const ReceiptUpdate& update);
  Result<int64_t> SetMaxPageCount(int64_t pages);

 private:
  struct Conversation {
    ConversationId id = 0;
    Seq last_seq = 0;
    int64_t created_at = 0;
    int64_t last_activity_at = 0;
    std::vector<MemberRecord> members;  // ascending user id
    bool dirty = false;                 // last_seq/last_activity_at not yet written
  };
  struct Head {
    UserSeq seq = 0;
    bool dirty = false;
  };

  // The cached conversation, loaded on a miss; nullptr if it does not exist.
  Conversation* FindConversation(ConversationId id);
  static bool IsMember(const Conversation& c, UserId user);
  std::optional<std::string> Username(UserId user);
  Head& HeadOf(UserId user);
  // Appends one event to `user`'s stream at head + 1.
  StreamPosition AppendEvent(UserId user, EventKind kind, ConversationId conversation, Seq seq, UserId receipt_user,
                             Watermarks receipt, int64_t now);
  void MarkDirty(Conversation& c);
  void WriteDirty();
  void DropCaches();
  static ConversationRecord ToRecord(const Conversation& c);

  std::unique_ptr<Db> db_;
  std::unordered_map<ConversationId, Conversation> conversations_;
  std::unordered_map<UserId, Head> heads_;
  std::vector<ConversationId> dirty_conversations_;
  std::vector<UserId> dirty_heads_;
};

Status SqliteStore::Writer::CommitBatch(const std::vector<std::unique_ptr<WriteOp>>& ops) {
  db_->ClearError();
  if (conversations_.size() > kMaxCachedConversations || heads_.size() > kMaxCachedHeads) DropCaches();
  Stmt(*db_, "BEGIN IMMEDIATE").Run();
  for (const auto& op : ops) {
    if (db_->failed()) break;
    op->Apply(*this);
  }
  WriteDirty();
  Stmt(*db_, "COMMIT").Run();
  if (!db_->failed()) return Status::Ok();
  Status error = db_->error();
  // SQLite may already have rolled back (it does on some I/O and full errors).
  if (db_->in_transaction()) db_->ExecIgnoringErrors("ROLLBACK");
  DropCaches();
  db_->ClearError();
  return error;
}

SqliteStore::Writer::Conversation* SqliteStore::Writer::FindConversation(ConversationId id) {
  auto it = conversations_.find(id);
  if (it != conversations_.end()) return &it->second;
  Conversation c;
  c.id = id;
  {
    Stmt s(*db_, "SELECT last_seq, created_at, last_activity_at FROM conversations WHERE id = ?1");
    s.BindInt(1, id);
    if (!s.Step()) return nullptr;
    c.last_seq = s.Int(0);
    c.created_at = s.Int(1);
    c.last_activity_at = s.Int(2);
  }
  {
    Stmt s(*db_,
           "SELECT m.user_id, u.username FROM members m JOIN users u ON u.id = m.user_id "
           "WHERE m.conversation_id = ?1 ORDER BY m.user_id");
    s.BindInt(1, id);
    while (s.Step()) c.members.push_back(MemberRecord{s.Int(0), s.Text(1)});
  }
  if (db_->failed()) return nullptr;
  return &conversations_.emplace(id, std::move(c)).first->second;
}

bool SqliteStore::Writer::IsMember(const Conversation& c, UserId user) {
  return std::any_of(c.members.begin(), c.members.end(), [user](const MemberRecord& m) { return m.user_id == user; });
}

std::optional<std::string> SqliteStore::Writer::Username(UserId user) {
  Stmt s(*db_, "SELECT username FROM users WHERE id = ?1");
  s.BindInt(1, user);
  if (!s.Step()) return std::nullopt;
  return s.Text(0);
}

SqliteStore::Writer::Head& SqliteStore::Writer::HeadOf(UserId user) {
  auto it = heads_.find(user);
  if (it != heads_.end()) return it->second;
  Head h;
  Stmt s(*db_, "SELECT head FROM user_heads WHERE user_id = ?1");
  s.BindInt(1, user);
  if (s.Step()) h.seq = s.Int(0);
  return heads_.emplace(user, h).first->second;
}

StreamPosition SqliteStore::Writer::AppendEvent(UserId user, EventKind kind, ConversationId conversation, Seq seq,
                                                UserId receipt_user, Watermarks receipt, int64_t now) {
  Head& head = HeadOf(user);
  UserSeq user_seq = head.seq + 1;
  Stmt s(*db_,
         "INSERT INTO user_events(user_id, user_seq, kind, conversation_id, seq, receipt_user_id, delivered, read, "
         "created_at) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)");
  s.BindInt(1, user)
      .BindInt(2, user_seq)
      .BindInt(3, static_cast<int64_t>(kind))
      .BindInt(4, conversation)
      .BindInt(5, seq)
      .BindInt(6, receipt_user)
      .BindInt(7, receipt.delivered)
      .BindInt(8, receipt.read)
      .BindInt(9, now);
  s.Run();
  head.seq = user_seq;
  if (!head.dirty) {
    head.dirty = true;
    dirty_heads_.push_back(user);
  }
  return StreamPosition{user, user_seq};
}

void SqliteStore::Writer::MarkDirty(Conversation& c) {
  if (c.dirty) return;
  c.dirty = true;
  dirty_conversations_.push_back(c.id);
}

void SqliteStore::Writer::WriteDirty() {
  for (ConversationId id : dirty_conversations_) {
    auto it = conversations_.find(id);
    if (it == conversations_.end()) continue;
    Stmt s(*db_, "UPDATE conversations SET last_seq = ?2, last_activity_at = ?3 WHERE id = ?1");
    s.BindInt(1, id).BindInt(2, it->second.last_seq).BindInt(3, it->second.last_activity_at);
    s.Run();
    it->second.dirty = false;
  }
  dirty_conversations_.clear();
  for (UserId user : dirty_heads_) {
    auto it = heads_.find(user);
    if (it == heads_.end()) continue;
    Stmt s(*db_,
           "INSERT INTO user_heads(user_id, head) VALUES(?1, ?2) "
           "ON CONFLICT(user_id) DO UPDATE SET head = excluded.head");
    s.BindInt(1, user).BindInt(2, it->second.seq);
    s.Run();
    it->second.dirty = false;
  }
  dirty_heads_.clear();
}

void SqliteStore::Writer::DropCaches() {
  conversations_.clear();
  heads_.clear();
  dirty_conversations_.clear();
  dirty_heads_.clear();
}

ConversationRecord SqliteStore::Writer::ToRecord(const Conversation& c) {
  ConversationRecord r;
  r.id = c.id;
  r.members = c.members;
  r.last_seq = c.last_seq;
  r.created_at = c.created_at;
  r.last_activity_at = c.last_activity_at;
  return r;
}

Result<UserRecord> SqliteStore::Writer::CreateUser(const std::string& username, const std::string& password_hash,
                                                   int64_t now) {
  {
    Stmt s(*db_, "SELECT 1 FROM users WHERE username = ?1");
    s.BindText(1, username);
    if (s.Step()) return Status(ErrorCode::kUsernameTaken, "username is taken");
  }
  Stmt s(*db_, "INSERT INTO users(username, password_hash, created_at) VALUES(?1, ?2, ?3)");
  s.BindText(1, username).BindText(2, password_hash).BindInt(3, now);
  s.Run();
  return UserRecord{db_->last_insert_rowid(), username, password_hash, now};
}

Result<DeviceRecord> SqliteStore::Writer::CreateDevice(UserId user_id, const std::string& name,
                                                       const std::string& platform, const std::string& token_hash,
                                                       int64_t now) {
  if (!Username(user_id)) return Status(ErrorCode::kUnknownUser, "unknown user");
  {
    Stmt s(*db_, "SELECT 1 FROM devices WHERE token_hash = ?1");
    s.BindBlob(1, token_hash);
    if (s.Step()) return Status(ErrorCode::kInternal, "device token hash already in use");
  }
  DeviceRecord d;
  d.user_id = user_id;
  d.name = name;
  d.platform = platform;
  d.created_at = now;
  d.last_seen_at = now;
  d.cursor = HeadOf(user_id).seq;
  Stmt s(*db_,
         "INSERT INTO devices(user_id, name, platform, token_hash, created_at, last_seen_at, cursor, revoked) "
         "VALUES(?1, ?2, ?3, ?4, ?5, ?5, ?6, 0)");
  s.BindInt(1, user_id).BindText(2, name).BindText(3, platform).BindBlob(4, token_hash).BindInt(5, now).BindInt(
      6, d.cursor);
  s.Run();
  d.id = db_->last_insert_rowid();
  return d;
}

Result<Empty> SqliteStore::Writer::RevokeDevice(UserId user_id, DeviceId device_id) {
  {
    Stmt s(*db_, "SELECT 1 FROM devices WHERE id = ?1 AND user_id = ?2 AND revoked = 0");
    s.BindInt(1, device_id).BindInt(2, user_id);
    if (!s.Step()) return Status(ErrorCode::kUnknownDevice, "no such live device of this user");
  }
  {
    Stmt s(*db_, "UPDATE devices SET token_hash = NULL, revoked = 1, cursor = 0 WHERE id = ?1");
    s.BindInt(1, device_id);
    s.Run();
  }
  // The device's own watermarks go with it; the user's aggregates stay (they
  // never go backwards).
  Stmt s(*db_, "DELETE FROM device_receipts WHERE device_id = ?1");
  s.BindInt(1, device_id);
  s.Run();
  return Empty{};
}

Result<Empty> SqliteStore::Writer::SetCursor(DeviceId device_id, UserSeq user_seq, int64_t now) {
  {
    Stmt s(*db_, "SELECT 1 FROM devices WHERE id = ?1 AND revoked = 0");
    s.BindInt(1, device_id);
    if (!s.Step()) return Status(ErrorCode::kUnknownDevice, "no such live device");
  }
  Stmt s(*db_,
         "UPDATE devices SET cursor = max(cursor, ?2), last_seen_at = max(last_seen_at, ?3) WHERE id = ?1");
  s.BindInt(1, device_id).BindInt(2, user_seq).BindInt(3, now);
  s.Run();
  return Empty{};
}

Result<OpenResult> SqliteStore::Writer::OpenDirect(UserId a, UserId b, int64_t now) {
  if (a == b) return Status(ErrorCode::kSelfConversation, "a direct conversation needs two distinct users");
  std::optional<std::string> name_a = Username(a);
  std::optional<std::string> name_b = Username(b);
  if (!name_a || !name_b) return Status(ErrorCode::kUnknownUser, "unknown user");
  std::string key = DirectKey(a, b);
  {
    Stmt s(*db_, "SELECT id FROM conversations WHERE direct_key = ?1");
    s.BindText(1, key);
    if (s.Step()) {
      ConversationId id = s.Int(0);
      Conversation* c = FindConversation(id);
      if (c == nullptr) return Status(ErrorCode::kInternal, "conversation vanished");
      return OpenResult{ToRecord(*c), false, {}};
    }
  }
  Conversation c;
  c.created_at = now;
  c.last_activity_at = now;
  c.members = {MemberRecord{a, *name_a}, MemberRecord{b, *name_b}};
  if (b < a) std::swap(c.members[0], c.members[1]);
  {
    Stmt s(*db_,
           "INSERT INTO conversations(direct_key, last_seq, created_at, last_activity_at) VALUES(?1, 0, ?2, ?2)");
    s.BindText(1, key).BindInt(2, now);
    s.Run();
    c.id = db_->last_insert_rowid();
  }
  for (const MemberRecord& m : c.members) {
    Stmt s(*db_, "INSERT INTO members(conversation_id, user_id) VALUES(?1, ?2)");
    s.BindInt(1, c.id).BindInt(2, m.user_id);
    s.Run();
  }
  OpenResult result;
  result.created = true;
  for (const MemberRecord& m : c.members) {
    result.positions.push_back(AppendEvent(m.user_id, EventKind::kConversation, c.id, 0, 0, {}, now));
  }
  result.conversation = ToRecord(c);
  conversations_.insert_or_assign(c.id, std::move(c));
  return result;
}

Result<AppendResult> SqliteStore::Writer::AppendMessage(const NewMessage& msg) {
  Conversation* c = FindConversation(msg.conversation_id);
  if (c == nullptr) return Status(ErrorCode::kUnknownConversation, "unknown conversation");
  if (!IsMember(*c, msg.sender_id)) return Status(ErrorCode::kNotMember, "sender is not a member");
  {
    Stmt s(*db_,
           "SELECT conversation_id, seq, sender_id, sender_device_id, client_id, body, created_at FROM messages "
           "WHERE conversation_id = ?1 AND sender_id = ?2 AND client_id = ?3");
    s.BindInt(1, msg.conversation_id).BindInt(2, msg.sender_id).BindText(3, msg.client_id);
    if (s.Step()) return AppendResult{MessageAt(s, 0), true, {}};
  }
  AppendResult result;
  MessageRecord& m = result.message;
  m.conversation_id = msg.conversation_id;
  m.seq = c->last_seq + 1;
  m.sender_id = msg.sender_id;
  m.sender_device_id = msg.sender_device_id;
  m.client_id = msg.client_id;
  m.body = msg.body;
  m.created_at = msg.now;
  {
    Stmt s(*db_,
           "INSERT INTO messages(conversation_id, seq, sender_id, sender_device_id, client_id, body, created_at) "
           "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)");
    s.BindInt(1, m.conversation_id)
        .BindInt(2, m.seq)
        .BindInt(3, m.sender_id)
        .BindInt(4, m.sender_device_id)
        .BindText(5, m.client_id)
        .BindText(6, m.body)
        .BindInt(7, m.created_at);
    s.Run();
  }
  c->last_seq = m.seq;
  c->last_activity_at = msg.now;
  MarkDirty(*c);
  for (const MemberRecord& member : c->members) {
    result.positions.push_back(
        AppendEvent(member.user_id, EventKind::kMessage, m.conversation_id, m.seq, 0, {}, msg.now));
  }
  // Sending means the sender has seen everything up to their own message; no
  // event, since the sender's devices learn it from the message event itself.
  Stmt s(*db_,
         "INSERT INTO user_receipts(conversation_id, user_id, delivered, read) VALUES(?1, ?2, ?3, ?3) "
         "ON CONFLICT(conversation_id, user_id) DO UPDATE SET delivered = max(delivered, excluded.delivered), "
         "read = max(read, excluded.read)");
  s.BindInt(1, m.conversation_id).BindInt(2, m.sender_id).BindInt(3, m.seq);
  s.Run();
  return result;
}

Result<ReceiptResult> SqliteStore::Writer::UpdateReceipt(const ReceiptUpdate& update) {
  Conversation* c = FindConversation(update.conversation_id);
  if (c == nullptr) return Status(ErrorCode::kUnknownConversation, "unknown conversation");
  if (!IsMember(*c, update.user_id)) return Status(ErrorCode::kNotMember, "not a member");
  {
    Stmt s(*db_, "SELECT 1 FROM devices WHERE id = ?1 AND user_id = ?2 AND revoked = 0");
    s.BindInt(1, update.device_id).BindInt(2, update.user_id);
    if (!s.Step()) return Status(ErrorCode::kUnknownDevice, "no such live device of this user");
  }
  Seq read = std::clamp<Seq>(update.read, 0, c->last_seq);
  Seq delivered = std::clamp<Seq>(std::max(update.delivered, read), 0, c->last_seq);

  Watermarks device;
  {
    Stmt s(*db_, "SELECT delivered, read FROM device_receipts WHERE device_id = ?1 AND conversation_id = ?2");
    s.BindInt(1, update.device_id).BindInt(2, update.conversation_id);
    if (s.Step()) device = Watermarks{s.Int(0), s.Int(1)};
  }
  Watermarks new_device{std::max(device.delivered, delivered), std::max(device.read, read)};
  if (new_device.delivered != device.delivered || new_device.read != device.read) {
    Stmt s(*db_,
           "INSERT INTO device_receipts(device_id, conversation_id, delivered, read) VALUES(?1, ?2, ?3, ?4) "
           "ON CONFLICT(device_id, conversation_id) DO UPDATE SET delivered = excluded.delivered, "
           "read = excluded.read");
    s.BindInt(1, update.device_id).BindInt(2, update.conversation_id).BindInt(3, new_device.delivered).BindInt(
        4, new_device.read);
    s.Run();
  }

  Watermarks aggregate;
  {
    Stmt s(*db_, "SELECT delivered, read FROM user_receipts WHERE conversation_id = ?1 AND user_id = ?2");
    s.BindInt(1, update.conversation_id).BindInt(2, update.user_id);
    if (s.Step()) aggregate = Watermarks{s.Int(0), s.Int(1)};
  }
  ReceiptResult result;
  result.aggregate = Watermarks{std::max(aggregate.delivered, new_device.delivered),
                                std::max(aggregate.read, new_device.read)};
  if (result.aggregate.delivered == aggregate.delivered && result.aggregate.read == aggregate.read) return result;

  result.changed = true;
  {
    Stmt s(*db_,
           "INSERT INTO user_receipts(conversation_id, user_id, delivered, read) VALUES(?1, ?2, ?3, ?4) "
           "ON CONFLICT(conversation_id, user_id) DO UPDATE SET delivered = excluded.delivered, "
           "read = excluded.read");
    s.BindInt(1, update.conversation_id).BindInt(2, update.user_id).BindInt(3, result.aggregate.delivered).BindInt(
        4, result.aggregate.read);
    s.Run();
  }
  for (const MemberRecord& member : c->members) {
    result.positions.push_back(AppendEvent(member.user_id, EventKind::kReceipt, update.conversation_id, 0,
                                           update.user_id, result.aggregate, update.now));
  }
  return result;
}

Result<int64_t> SqliteStore::Writer::SetMaxPageCount(int64_t pages) {
  // PRAGMA arguments cannot be bound; `pages` is an integer, so formatting is safe.
  std::string sql = fmt::format("PRAGMA max_page_count = {}", pages);
  if (Status s = db_->Exec(sql.c_str()); !s.ok()) return s;
  Stmt s(*db_, "PRAGMA max_page_count");
  return s.Step() ? s.Int(0) : 0;
}

// ---------------------------------------------------------------------------
// Reads

class SqliteStore::Reader {
 public:
  explicit Reader(std::unique_ptr<Db> db) : db_(std::move(db)) {}

  // Runs `body` in one read transaction (one snapshot); a SQLite failure
  // replaces its result.
  template <typename T>
  Result<T> Run(const std::function<Result<T>(Reader&)>& body) {
    db_->ClearError();
    Stmt(*db_, "BEGIN").Run();
    Result<T> result = body(*this);
    Stmt(*db_, "COMMIT").Run();
    if (!db_->failed()) return result;
    Status error = db_->error();
    if (db_->in_transaction()) db_->ExecIgnoringErrors("ROLLBACK");
    db_->ClearError();
    return error;
  }

  Result<UserRecord> UserByName(const std::string& username);
  Result<UserRecord> UserById(UserId id);
  Result<DeviceRecord> DeviceByToken(const std::string& token_hash);
  Result<std::vector<DeviceRecord>> Devices(UserId user_id);
  Result<ConversationRecord> Conversation(ConversationId id, StepCounter* counter = nullptr);
  Result<std::vector<MessageRecord>> History(ConversationId id, Seq before, int limit);
  Result<StreamPage> ReadStream(UserId user_id, UserSeq after, int limit, StepCounter* counter);
  UserSeq Head(UserId user_id, StepCounter* counter = nullptr);
  Result<Snapshot> GetSnapshot(UserId user_id, int latest_per_conversation);

 private:
  std::unique_ptr<Db> db_;
};

Result<UserRecord> SqliteStore::Reader::UserByName(const std::string& username) {
  Stmt s(*db_, "SELECT id, username, password_hash, created_at FROM users WHERE username = ?1");
  s.BindText(1, username);
  if (!s.Step()) return Status(ErrorCode::kUnknownUser, "unknown user");
  return UserRecord{s.Int(0), s.Text(1), s.Text(2), s.Int(3)};
}

Result<UserRecord> SqliteStore::Reader::UserById(UserId id) {
  Stmt s(*db_, "SELECT id, username, password_hash, created_at FROM users WHERE id = ?1");
  s.BindInt(1, id);
  if (!s.Step()) return Status(ErrorCode::kUnknownUser, "unknown user");
  return UserRecord{s.Int(0), s.Text(1), s.Text(2), s.Int(3)};
}

Result<DeviceRecord> SqliteStore::Reader::DeviceByToken(const std::string& token_hash) {
  Stmt s(*db_,
         "SELECT id, user_id, name, platform, created_at, last_seen_at, cursor FROM devices "
         "WHERE token_hash = ?1 AND revoked = 0");
  s.BindBlob(1, token_hash);
  if (!s.Step()) return Status(ErrorCode::kInvalidToken, "invalid token");
  return DeviceAt(s);
}

Result<std::vector<DeviceRecord>> SqliteStore::Reader::Devices(UserId user_id) {
  Stmt s(*db_,
         "SELECT id, user_id, name, platform, created_at, last_seen_at, cursor FROM devices "
         "WHERE user_id = ?1 AND revoked = 0 ORDER BY id");
  s.BindInt(1, user_id);
  std::vector<DeviceRecord> out;
  while (s.Step()) out.push_back(DeviceAt(s));
  return out;
}

Result<ConversationRecord> SqliteStore::Reader::Conversation(ConversationId id, StepCounter* counter) {
  ConversationRecord c;
  c.id = id;
  {
    Stmt s(*db_, "SELECT last_seq, created_at, last_activity_at FROM conversations WHERE id = ?1", counter);
    s.BindInt(1, id);
    if (!s.Step()) return Status(ErrorCode::kUnknownConversation, "unknown conversation");
    c.last_seq = s.Int(0);
    c.created_at = s.Int(1);
    c.last_activity_at = s.Int(2);
  }
  Stmt s(*db_,
         "SELECT m.user_id, u.username FROM members m JOIN users u ON u.id = m.user_id "
         "WHERE m.conversation_id = ?1 ORDER BY m.user_id",
         counter);
  s.BindInt(1, id);
  while (s.Step()) c.members.push_back(MemberRecord{s.Int(0), s.Text(1)});
  return c;
}

Result<std::vector<MessageRecord>> SqliteStore::Reader::History(ConversationId id, Seq before, int limit) {
  {
    Stmt s(*db_, "SELECT 1 FROM conversations WHERE id = ?1");
    s.BindInt(1, id);
    if (!s.Step()) return Status(ErrorCode::kUnknownConversation, "unknown conversation");
  }
  std::vector<MessageRecord> out;
  if (limit <= 0) return out;
  Stmt s(*db_,
         "SELECT conversation_id, seq, sender_id, sender_device_id, client_id, body, created_at FROM messages "
         "WHERE conversation_id = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3");
  s.BindInt(1, id).BindInt(2, before > 0 ? before : std::numeric_limits<Seq>::max()).BindInt(3, limit);
  while (s.Step()) out.push_back(MessageAt(s, 0));
  std::reverse(out.begin(), out.end());
  return out;
}

UserSeq SqliteStore::Reader::Head(UserId user_id, StepCounter* counter) {
  Stmt s(*db_, "SELECT head FROM user_heads WHERE user_id = ?1", counter);
  s.BindInt(1, user_id);
  return s.Step() ? s.Int(0) : 0;
}

Result<StreamPage> SqliteStore::Reader::ReadStream(UserId user_id, UserSeq after, int limit, StepCounter* counter) {
  StreamPage page;
  page.head = Head(user_id, counter);
  if (limit <= 0) {
    page.has_more = page.head > after;
    return page;
  }
  {
    // A range scan of the user's stream on its primary key, each message
    // event joined to its message by primary key: one probe per event.
    Stmt s(*db_,
           "SELECT e.user_seq, e.kind, e.conversation_id, e.seq, e.receipt_user_id, e.delivered, e.read, "
           "e.created_at, m.conversation_id, m.seq, m.sender_id, m.sender_device_id, m.client_id, m.body, "
           "m.created_at FROM user_events e LEFT JOIN messages m "
           "ON e.kind = 1 AND m.conversation_id = e.conversation_id AND m.seq = e.seq "
           "WHERE e.user_id = ?1 AND e.user_seq > ?2 ORDER BY e.user_seq LIMIT ?3",
           counter);
    // One row beyond the page tells whether more follow.
    s.BindInt(1, user_id).BindInt(2, after).BindInt(3, static_cast<int64_t>(limit) + 1);
    while (s.Step()) {
      if (page.events.size() == static_cast<size_t>(limit)) {
        page.has_more = true;
        break;
      }
      StreamEvent e;
      e.user_seq = s.Int(0);
      e.kind = static_cast<EventKind>(s.Int(1));
      e.conversation_id = s.Int(2);
      e.created_at = s.Int(7);
      if (e.kind == EventKind::kMessage && !s.IsNull(8)) e.message = MessageAt(s, 8);
      if (e.kind == EventKind::kReceipt) {
        e.receipt_user_id = s.Int(4);
        e.receipt = Watermarks{s.Int(5), s.Int(6)};
      }
      page.events.push_back(std::move(e));
    }
  }
  for (StreamEvent& e : page.events) {
    if (e.kind != EventKind::kConversation) continue;
    Result<ConversationRecord> c = Conversation(e.conversation_id, counter);
    if (c.has_value()) e.conversation = std::move(c).value();
  }
  return page;
}

Result<Snapshot> SqliteStore::Reader::GetSnapshot(UserId user_id, int latest_per_conversation) {
  Snapshot snap;
  snap.head = Head(user_id);
  std::vector<ConversationId> ids;
  {
    Stmt s(*db_,
           "SELECT c.id FROM members m JOIN conversations c ON c.id = m.conversation_id "
           "WHERE m.user_id = ?1 ORDER BY c.last_activity_at DESC, c.id DESC");
    s.BindInt(1, user_id);
    while (s.Step()) ids.push_back(s.Int(0));
  }
  for (ConversationId id : ids) {
    Result<ConversationRecord> c = Conversation(id);
    if (!c.has_value()) continue;
    ConversationSummary summary;
    summary.conversation = std::move(c).value();
    if (latest_per_conversation > 0) {
      Stmt s(*db_,
             "SELECT conversation_id, seq, sender_id, sender_device_id, client_id, body, created_at FROM messages "
             "WHERE conversation_id = ?1 ORDER BY seq DESC LIMIT ?2");
      s.BindInt(1, id).BindInt(2, latest_per_conversation);
      while (s.Step()) summary.latest.push_back(MessageAt(s, 0));
      std::reverse(summary.latest.begin(), summary.latest.end());
    }
    Seq own_read = 0;
    {
      Stmt s(*db_,
             "SELECT m.user_id, coalesce(r.delivered, 0), coalesce(r.read, 0) FROM members m "
             "LEFT JOIN user_receipts r ON r.conversation_id = m.conversation_id AND r.user_id = m.user_id "
             "WHERE m.conversation_id = ?1 ORDER BY m.user_id");
      s.BindInt(1, id);
      while (s.Step()) {
        summary.watermarks.emplace_back(s.Int(0), Watermarks{s.Int(1), s.Int(2)});
        if (s.Int(0) == user_id) own_read = s.Int(2);
      }
    }
    {
      // A range scan over the unread tail only.
      Stmt s(*db_, "SELECT count(*) FROM messages WHERE conversation_id = ?1 AND seq > ?2 AND sender_id <> ?3");
      s.BindInt(1, id).BindInt(2, own_read).BindInt(3, user_id);
      if (s.Step()) summary.unread = s.Int(0);
    }
    snap.conversations.push_back(std::move(summary));
  }
  return snap;
}

// ---------------------------------------------------------------------------
// SqliteStore: queues and threads

Result<std::unique_ptr<SqliteStore>> SqliteStore::Open(const StoreConfig& config) {
  Result<std::unique_ptr<Db>> write_db = Db::Open(config.sqlite_path, /*read_only=*/false, config.sqlite_cache_kib);
  if (!write_db.has_value()) return write_db.error();
  if (Status s = Migrate(**write_db); !s.ok()) return s;
  // Opened after migration: a read-only connection cannot create the file or
  // switch it to WAL.
  Result<std::unique_ptr<Db>> read_db = Db::Open(config.sqlite_path, /*read_only=*/true, config.sqlite_cache_kib);
  if (!read_db.has_value()) return read_db.error();
  return std::unique_ptr<SqliteStore>(new SqliteStore(config, std::make_unique<Writer>(std::move(write_db).value()),
                                                      std::make_unique<Reader>(std::move(read_db).value())));
}

SqliteStore::SqliteStore(const StoreConfig& config, std::unique_ptr<Writer> writer, std::unique_ptr<Reader> reader)
    : max_batch_(std::max(1, config.commit_max_batch)),
      deadline_us_(std::max(0, config.commit_deadline_us)),
      writer_(std::move(writer)),
      reader_(std::move(reader)),
      commits_total_(Metrics::Default().GetCounter("parley_store_commits_total", "Store transactions committed.")),
      commit_batch_size_(Metrics::Default().GetHistogram("parley_store_commit_batch_size",
                                                         "Write operations per store transaction.",
                                                         {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000})),
      commit_seconds_(Metrics::Default().GetHistogram(
          "parley_store_commit_seconds", "Time to apply and commit one store transaction, seconds.",
          {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1})),
      messages_stored_(Metrics::Default().GetCounter("parley_messages_stored_total",
                                                     "New (non-duplicate) messages committed to the store.")),
      sync_rows_read_(Metrics::Default().GetHistogram("parley_sync_rows_read",
                                                      "Backend rows visited (SQLite VM steps) per stream read.",
                                                      {10, 20, 50, 100, 200, 500, 1000, 5000, 10000, 100000})),
      queue_depth_(Metrics::Default().GetGauge("parley_store_queue_depth", "Write operations queued in the store.")) {
  writer_thread_ = std::thread([this] { RunWriter(); });
  reader_thread_ = std::thread([this] { RunReader(); });
}

SqliteStore::~SqliteStore() {
  {
    std::lock_guard lock(write_mu_);
    write_stopping_ = true;
  }
  write_cv_.notify_all();
  writer_thread_.join();
  // The reader stops second: writes' callbacks may still have queued reads.
  {
    std::lock_guard lock(read_mu_);
    read_stopping_ = true;
  }
  read_cv_.notify_all();
  reader_thread_.join();
}

template <typename T>
void SqliteStore::SubmitWrite(std::function<Result<T>(Writer&)> body, Callback<T> done) {
  auto op = std::make_unique<TypedWriteOp<T>>(std::move(body), std::move(done));
  {
    std::lock_guard lock(write_mu_);
    if (!writer_exited_) {
      write_queue_.push_back(std::move(op));
      queue_depth_.Add(1);
    }
  }
  if (op != nullptr) {  // not queued: the writer is gone
    op->Finish(Status(ErrorCode::kShuttingDown, "store is closing"));
    return;
  }
  write_cv_.notify_one();
}

template <typename T>
void SqliteStore::SubmitRead(std::function<Result<T>(Reader&)> body, Callback<T> done) {
  bool queued = false;
  {
    std::lock_guard lock(read_mu_);
    if (!reader_exited_) {
      read_queue_.push_back(
          [body = std::move(body), done = std::move(done)](Reader& reader) { done(reader.Run<T>(body)); });
      queued = true;
    }
  }
  if (!queued) {
    done(Status(ErrorCode::kShuttingDown, "store is closing"));
    return;
  }
  read_cv_.notify_one();
}

void SqliteStore::RunWriter() {
  std::vector<std::unique_ptr<WriteOp>> batch;
  const size_t max_batch = static_cast<size_t>(max_batch_);
  for (;;) {
    {
      std::unique_lock lock(write_mu_);
      write_cv_.wait(lock, [this] { return !write_queue_.empty() || write_stopping_; });
      if (write_queue_.empty()) {
        writer_exited_ = true;
        return;
      }
      if (deadline_us_ > 0 && write_queue_.size() < max_batch && !write_stopping_) {
        write_cv_.wait_until(lock, std::chrono::steady_clock::now() + std::chrono::microseconds(deadline_us_),
                             [&] { return write_queue_.size() >= max_batch || write_stopping_; });
      }
      size_t n = std::min(write_queue_.size(), max_batch);
      for (size_t i = 0; i < n; ++i) {
        batch.push_back(std::move(write_queue_.front()));
        write_queue_.pop_front();
      }
      queue_depth_.Add(-static_cast<int64_t>(n));
    }
    auto start = std::chrono::steady_clock::now();
    Status status = writer_->CommitBatch(batch);
    std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
    commit_batch_size_.Observe(static_cast<double>(batch.size()));
    if (status.ok()) {
      commits_.fetch_add(1, std::memory_order_relaxed);
      commits_total_.Inc();
      commit_seconds_.Observe(took.count());
    }
    for (auto& op : batch) op->Finish(status);
    batch.clear();
  }
}

void SqliteStore::RunReader() {
  for (;;) {
    ReadJob job;
    {
      std::unique_lock lock(read_mu_);
      read_cv_.wait(lock, [this] { return !read_queue_.empty() || read_stopping_; });
      if (read_queue_.empty()) {
        reader_exited_ = true;
        return;
      }
      job = std::move(read_queue_.front());
      read_queue_.pop_front();
    }
    job(*reader_);
  }
}

// ---------------------------------------------------------------------------
// Store operations: capture the arguments, queue, and return.

void SqliteStore::CreateUser(std::string username, std::string password_hash, int64_t now,
                             Callback<UserRecord> done) {
  SubmitWrite<UserRecord>(
      [username = std::move(username), password_hash = std::move(password_hash), now](Writer& w) {
        return w.CreateUser(username, password_hash, now);
      },
      std::move(done));
}

void SqliteStore::GetUserByName(std::string username, Callback<UserRecord> done) {
  SubmitRead<UserRecord>([username = std::move(username)](Reader& r) { return r.UserByName(username); },
                         std::move(done));
}

void SqliteStore::GetUserById(UserId id, Callback<UserRecord> done) {
  SubmitRead<UserRecord>([id](Reader& r) { return r.UserById(id); }, std::move(done));
}

void SqliteStore::CreateDevice(UserId user_id, std::string name, std::string platform, std::string token_hash,
                               int64_t now, Callback<DeviceRecord> done) {
  SubmitWrite<DeviceRecord>(
      [user_id, name = std::move(name), platform = std::move(platform), token_hash = std::move(token_hash),
       now](Writer& w) { return w.CreateDevice(user_id, name, platform, token_hash, now); },
      std::move(done));
}

void SqliteStore::GetDeviceByToken(std::string token_hash, Callback<DeviceRecord> done) {
  SubmitRead<DeviceRecord>([token_hash = std::move(token_hash)](Reader& r) { return r.DeviceByToken(token_hash); },
                           std::move(done));
}

void SqliteStore::ListDevices(UserId user_id, Callback<std::vector<DeviceRecord>> done) {
  SubmitRead<std::vector<DeviceRecord>>([user_id](Reader& r) { return r.Devices(user_id); }, std::move(done));
}

void SqliteStore::RevokeDevice(UserId user_id, DeviceId device_id, StatusCallback done) {
  SubmitWrite<Empty>([user_id, device_id](Writer& w) { return w.RevokeDevice(user_id, device_id); },
                     ToEmptyCallback(std::move(done)));
}

void SqliteStore::SetCursor(DeviceId device_id, UserSeq user_seq, int64_t now, StatusCallback done) {
  SubmitWrite<Empty>([device_id, user_seq, now](Writer& w) { return w.SetCursor(device_id, user_seq, now); },
                     ToEmptyCallback(std::move(done)));
}

void SqliteStore::OpenDirect(UserId a, UserId b, int64_t now, Callback<OpenResult> done) {
  SubmitWrite<OpenResult>([a, b, now](Writer& w) { return w.OpenDirect(a, b, now); }, std::move(done));
}

void SqliteStore::GetConversation(ConversationId id, Callback<ConversationRecord> done) {
  SubmitRead<ConversationRecord>([id](Reader& r) { return r.Conversation(id); }, std::move(done));
}

void SqliteStore::AppendMessage(NewMessage msg, Callback<AppendResult> done) {
  SubmitWrite<AppendResult>([msg = std::move(msg)](Writer& w) { return w.AppendMessage(msg); },
                            [this, done = std::move(done)](Result<AppendResult> r) {
                              if (r.has_value() && !r->duplicate) messages_stored_.Inc();
                              done(std::move(r));
                            });
}

void SqliteStore::UpdateReceipt(ReceiptUpdate update, Callback<ReceiptResult> done) {
  SubmitWrite<ReceiptResult>([update](Writer& w) { return w.UpdateReceipt(update); }, std::move(done));
}

void SqliteStore::History(ConversationId id, Seq before, int limit, Callback<std::vector<MessageRecord>> done) {
  SubmitRead<std::vector<MessageRecord>>([id, before, limit](Reader& r) { return r.History(id, before, limit); },
                                         std::move(done));
}

void SqliteStore::ReadStream(UserId user_id, UserSeq after, int limit, Callback<StreamPage> done) {
  SubmitRead<StreamPage>(
      [this, user_id, after, limit](Reader& r) {
        StepCounter counter;
        Result<StreamPage> page = r.ReadStream(user_id, after, limit, &counter);
        rows_read_sync_.fetch_add(counter.vm_steps, std::memory_order_relaxed);
        full_scan_steps_.fetch_add(counter.full_scan_steps, std::memory_order_relaxed);
        sync_rows_read_.Observe(static_cast<double>(counter.vm_steps));
        return page;
      },
      std::move(done));
}

void SqliteStore::GetHead(UserId user_id, Callback<UserSeq> done) {
  SubmitRead<UserSeq>([user_id](Reader& r) -> Result<UserSeq> { return r.Head(user_id); }, std::move(done));
}

void SqliteStore::GetSnapshot(UserId user_id, int latest_per_conversation, Callback<Snapshot> done) {
  SubmitRead<Snapshot>(
      [user_id, latest_per_conversation](Reader& r) { return r.GetSnapshot(user_id, latest_per_conversation); },
      std::move(done));
}

void SqliteStore::Flush(StatusCallback done) {
  // An op that writes nothing: its batch commits only after every earlier one.
  SubmitWrite<Empty>([](Writer&) -> Result<Empty> { return Empty{}; }, ToEmptyCallback(std::move(done)));
}

StoreStats SqliteStore::Stats() const {
  StoreStats s;
  s.commits = commits_.load(std::memory_order_relaxed);
  s.rows_read_sync = rows_read_sync_.load(std::memory_order_relaxed);
  s.full_scan_steps = full_scan_steps_.load(std::memory_order_relaxed);
  return s;
}

void SqliteStore::SetMaxPageCountForTest(int64_t pages, Callback<int64_t> done) {
  SubmitWrite<int64_t>([pages](Writer& w) { return w.SetMaxPageCount(pages); }, std::move(done));
}

}  // namespace parley::store
