// PostgresStore: design.
//
// The same operations as SqliteStore, in the same order of checks and with
// the same results, on PostgreSQL through libpq. Differences come from
// PostgreSQL being shared by several parleyd nodes and being a network hop
// away:
//
// Sequence numbers are assigned in the database. AppendMessage locks its
// conversation's row (SELECT ... FOR UPDATE) before the dedup check, so two
// nodes appending to one conversation serialize there; the next seq is
// last_seq + 1 under that lock. A user-stream entry takes its user seq from
// user_heads in the same statement that inserts it (an upsert of head + 1 in
// a CTE), which locks that user's head row until the batch commits.
//
// Lock order. A batch holds many operations, each locking rows as it goes;
// two nodes' batches locking the same rows in different orders deadlock
// (PostgreSQL notices after deadlock_timeout, 1 s by default, and aborts
// one). So each operation declares what it will lock (LockSet: its
// conversation, its users, its devices) and a batch takes all of those
// first, in one order on every node: conversations by id, then the stream
// heads of their members and of the declared users by id, then devices by
// id (LockInOrder). Everything the operations lock afterwards is either
// already held or guarded by a row already held (a conversation guards its
// messages, members, withheld seqs and receipt rows; a user's head guards
// that user's own rows). What is still not declared (the stream heads of a
// profile change's audience; a user's first head row, created by its first
// event) can still deadlock: such a batch is rolled back and retried
// (kMaxBatchAttempts), its operations applied again from scratch, and then
// fails kUnavailable (retryable). chaos_cluster_short found the deadlocks:
// before LockInOrder a 25-second run on three nodes logged hundreds.
//
// Round trips. Expected failures are found by reading before writing, as in
// SQLite, so an operation that fails writes nothing. Writes whose results
// are not needed are deferred (PgConn::Defer) and sent with the next read in
// one libpq pipeline; BEGIN is deferred too, and COMMIT is sent with the
// batch's last writes. A message into a direct conversation costs about six
// round trips inside a batch that is shared by everything queued with it.
//
// Schema (version kSchemaVersion, recorded in schema_version; kMigrations
// is the list of numbered steps, each in its own transaction, all under an
// advisory lock so that nodes starting together migrate once):
//   users(id PK identity, username UNIQUE COLLATE "C", password_hash,
//         created_at, display_name, about, profile_updated_at,
//         presence_visibility, last_seen (both step 2))
//   devices(id PK identity, user_id, name, platform, token_hash bytea UNIQUE
//         (NULL once revoked), created_at, last_seen_at, cursor, revoked)
//         + devices_by_user(user_id)
//   conversations(id PK identity, last_seq, created_at, last_activity_at)
//   direct_conversations(low_user_id, high_user_id, conversation_id)
//         PK(low_user_id, high_user_id): the one direct conversation of a pair
//   members(conversation_id, user_id, last_activity_at) PK(conversation_id,
//         user_id) + members_by_activity(user_id, last_activity_at,
//         conversation_id)
//   messages(conversation_id, seq, sender_id, sender_device_id, client_id,
//         body, created_at) PK(conversation_id, seq),
//         UNIQUE(conversation_id, sender_id, client_id);
//         PARTITION BY HASH(conversation_id), kPartitions partitions
//   withheld(conversation_id, user_id, seq) PK(conversation_id, user_id, seq);
//         PARTITION BY HASH(conversation_id)
//   user_events(user_id, user_seq, kind, conversation_id, seq,
//         subject_user_id, delivered, read, created_at, withheld bigint[],
//         profile_username, profile_display_name, profile_about,
//         profile_updated_at) PK(user_id, user_seq);
//         PARTITION BY HASH(user_id)
//   user_heads(user_id PK, head)
//   device_receipts(device_id, conversation_id, delivered, read) PK(both)
//   user_receipts(conversation_id, user_id, delivered, read, announced
//         (step 9: delivered as the other member's stream last carried it))
//         PK(both)
//   receipt_log(conversation_id, device_id, delivered, read, at)
//         PK(conversation_id, device_id, delivered, read)
//         + receipt_log_by_read(conversation_id, device_id, read);
//         PARTITION BY HASH(conversation_id) (step 3, with users.disabled
//         and messages.accepted_at/stored_at): see SqliteStore
//   contacts(owner_id, contact_id, added_at) PK(both)
//         + contacts_by_contact(contact_id, owner_id)
//   blocks(owner_id, target_id, created_at, shown_display_name, shown_about,
//         shown_updated_at) PK(both)
//   name_prefixes(prefix, username, user_id) PK(prefix, username): the
//         prefixes of the folded display-name words (store/name_words.h;
//         step 6 re-made those of non-ASCII names after Unicode folding)
//   push_endpoints, push_jobs, push_mutes, users.push_previews (step 4):
//         as in SqliteStore (issue 11); claims lock with SKIP LOCKED
//   messages.version/edited_at/deleted_at, message_edits(conversation_id,
//         seq, version, client_id, editor_device_id, body, created_at)
//         PK(conversation_id, seq, version), UNIQUE(conversation_id, seq,
//         client_id), PARTITION BY HASH(conversation_id), and
//         withheld.hidden_at (step 5, issue 12): as in SqliteStore
//   drafts(user_id, conversation_id, text, updated_at) PK(user_id,
//         conversation_id), PARTITION BY HASH(user_id) (step 7, issue 12)
//   search_queue(conversation_id, seq, id (sequence search_queue_ids),
//         queued_at) PK(conversation_id, id) + search_queue_by_id(id);
//         message_search(conversation_id, seq, doc_id, version, words
//         tsvector) PK(conversation_id, seq) + GIN message_search_words(words);
//         both PARTITION BY HASH(conversation_id) (step 8, issue 12: message
//         search; see "Message search" below)
//   conversations.disappearing_s, messages.expires_at/purged_at and the
//         partial indexes messages_expiring(expires_at) and
//         messages_to_purge(deleted_at) (step 10, issue 12: retention, as in
//         SqliteStore; the expiry and purge steps claim rows FOR UPDATE SKIP
//         LOCKED, so nodes take disjoint batches)
//   messages.cold, conversations.hot_since/cold_through +
//         conversations_cold_due(hot_since) WHERE hot_since > 0, and
//         message_blocks(conversation_id, first_seq, last_seq, messages,
//         raw_bytes, created_at, nonce, data bytea STORAGE EXTERNAL)
//         PK(conversation_id, first_seq), PARTITION BY HASH(conversation_id)
//         (step 11, issue 12: the cold tier, as SqliteStore's step 13; see
//         "Cold tier" below). Step 11 landed after step 12, so Migrate
//         applies every step schema_version does not list, not only those
//         above the newest.
//   user_heads.stream_floor (step 12, issue 12: stream trimming, as in
//         SqliteStore's step 14): the lowest user seq still kept. TrimStreams
//         claims head rows FOR UPDATE SKIP LOCKED, so a user whose head a
//         batch (or another node's trim) holds is skipped until the next
//         pass, never waited for
//   message_edits.cold and edit_blocks(conversation_id, first_seq,
//         last_seq, edits, raw_bytes, created_at, nonce, data bytea STORAGE
//         EXTERNAL) PK(conversation_id, first_seq), PARTITION BY
//         HASH(conversation_id) (step 13, issue 12: the cold tier's edit
//         texts, as SqliteStore's step 18; see "Cold tier" below)
// Every key of a partitioned table leads with its partition key, and every
// table holding conversation data has the conversation id in its primary
// key, so the layout can be distributed (Citus) by conversation id and by
// user id.
//
// Message search (store.h "Message search"; SqliteStore describes the
// design). Sending only queues (conversation id, seq) in search_queue, in
// the message's transaction; IndexSearch runs as a write of its own (never
// batched with sends) and claims the oldest queued entries FOR UPDATE SKIP
// LOCKED, so several nodes index disjoint entries. Each message's row holds
// array_to_tsvector(MessageWords(body)): the words are made in C++ exactly
// as for SQLite (ICU folding; PostgreSQL's own parser and lower() are not
// used), and a query is a tsquery of the words as prefixes ('w':* & ...).
// Two nodes may index the same message from two entries (its send and its
// edit) concurrently, so the upsert keeps the row with the higher version
// (a deleted message keeps a row with an empty tsvector, its version the
// delete's); doc_id is the first entry's id and never changes, which is the
// newest-first order of results. A search is one statement: the GIN index
// finds the matches, the newest kMaxSearchCandidates of them are joined to
// members, messages and withheld.
//
// Cold tier (store.h "Cold tier"; pg_cold.h). As SqliteStore's: a solo
// step compacts the texts of old messages into zstd blocks, the row wins
// over its block after an edit or a delete, and the purge rewrites a block
// without a deleted text. SQL cannot call zstd, so reads page cold texts in
// after each query (ColdTexts::Fill, one query per page). A send sets
// hot_since in the UPDATE of its conversation it makes anyway.
// The edit texts of a block's messages go into an edit block in the same
// step (CompactEdits), read back after the stream read only
// (FillColdEdits); a delete empties them with cold = false, the purge
// rewrites their edit block.
//
// Why compaction is safe next to other nodes. Compaction turns a live row
// into (body '', cold) and puts its text into a block; what must not happen
// is a text packed from a row version that another transaction is
// replacing (an edit's new text, a delete's tombstone, an expiry) and then
// marked cold over it, which would show the old text again, or a deleted
// text left in a block after the purge. So:
//   - A step claims one conversation at a time, FOR UPDATE SKIP LOCKED, just
//     before compacting it, and holds it to the end of its transaction.
//     Sends, edits and deletes by users take that lock first in their
//     batches (LockSet), so none of them runs inside a compacted
//     conversation, and no two nodes compact one conversation (so block
//     keys and cold_through never race).
//   - Expiry and purge do not take the conversation; they claim message
//     rows FOR UPDATE SKIP LOCKED. The step reads the messages it compacts
//     FOR UPDATE SKIP LOCKED too: a message an expiry or a purge holds is
//     skipped, and since seqs are gapless the skip shows as a gap, where
//     the block ends and the conversation waits for a later step (from
//     that message: hot_since is its time). A row the step has locked
//     cannot be expired until the step commits, and then reads as cold: the
//     expiry's delete writes '' with cold = false, the row wins.
//   - The step never waits: its conversation and message locks are SKIP
//     LOCKED, and its blocks are new keys above cold_through that only a
//     compaction of the same conversation could insert. So it is in no
//     lock cycle, and a send waits behind it at most one bounded step.
//   - Purges rewriting one block (two nodes purging two texts of it) lock
//     it FOR UPDATE and read it as the other left it, so neither rewrite is
//     lost; they lock blocks in (conversation, message blocks before edit
//     blocks, first seq) order, so two purges cannot deadlock, and nothing
//     else locks a block.
//   - The step packs the edit rows of the messages whose rows it holds:
//     an edit of them waits for the conversation, a delete or an expiry
//     for the message row, so no edit text is packed while it changes.
//   - A purge of a message the step has not passed (seq above cold_through)
//     touches no block: a delete never puts a text into one, and a row
//     deleted before the step reached it is a tombstone the step skips.
// Tested by PgStoreTest.CompactionSkipsWhatAnotherNodeHoldsAndNeverWaitsForIt
// (deterministic, another session holding the rows) and
// TwoNodesCompactingWhileMessagesChangeKeepEveryText (a race, checked by
// its outcome).
//
// Event payloads are columns, not JSON: kMessage/kReceipt carry `withheld`,
// kProfile/kContact/kBlock carry the profile_* columns (the subject's id in
// subject_user_id and the flag in delivered).
//
// Left open on purpose: as in SQLite, messages rows are never deleted (a
// purged message stays as its deduplication tombstone); reads are one statement per round trip (a summary of a conversation
// costs a few); and the writer is one connection per node (the database
// serializes nodes on the rows they share, nothing else).

#include "store/postgres/pg_store.h"

#include <algorithm>
#include <climits>
#include <chrono>
#include <cstdint>
#include <fmt/format.h>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "common/this_thread.h"
#include "protocol/message_edits.h"
#include "store/auth_read.h"
#include "store/change_events.h"
#include "store/commit_pacer.h"
#include "store/name_words.h"
#include "store/postgres/pg_cold.h"
#include "store/postgres/pg_conn.h"
#include "store/postgres/pg_history_sql.h"
#include "store/store_threads.h"

namespace parley::store {

using postgres::ColdEditText;
using postgres::ColdText;
using postgres::ColdTexts;
using postgres::kHistoryPageSql;
using postgres::kWithheldInSql;
using postgres::PgConn;
using postgres::PgParams;
using postgres::PgRows;

namespace {

// Bound of the writer's member cache (conversations); dropped whole past it.
constexpr size_t kMaxCachedConversations = 65536;
// Rows fetched per round trip by each of search's two ordered scans.
constexpr int kSearchChunk = 64;
// Key of the advisory lock held while migrating (any constant unique to us).
constexpr int64_t kMigrationLockKey = 0x7061726c6579;  // "parley"
// Seconds a connection attempt may take.
constexpr int kConnectTimeoutS = 10;

// The kPartitions hash partitions of `table` (declared PARTITION BY HASH).
std::string PartitionsSql(const char* table) {
  std::string sql;
  for (int i = 0; i < PostgresStore::kPartitions; ++i) {
    sql += fmt::format("CREATE TABLE {0}_p{1} PARTITION OF {0} FOR VALUES WITH (MODULUS {2}, REMAINDER {1});\n",
                       table, i, PostgresStore::kPartitions);
  }
  return sql;
}

std::string SchemaV1() {
  std::string sql = R"sql(
CREATE TABLE users(
  id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
  username text COLLATE "C" NOT NULL UNIQUE,
  password_hash text NOT NULL,
  created_at bigint NOT NULL,
  display_name text NOT NULL DEFAULT '',
  about text NOT NULL DEFAULT '',
  profile_updated_at bigint NOT NULL DEFAULT 0);
CREATE TABLE devices(
  id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
  user_id bigint NOT NULL,
  name text NOT NULL,
  platform text NOT NULL,
  token_hash bytea UNIQUE,
  created_at bigint NOT NULL,
  last_seen_at bigint NOT NULL,
  cursor bigint NOT NULL DEFAULT 0,
  revoked boolean NOT NULL DEFAULT false);
CREATE INDEX devices_by_user ON devices(user_id);
CREATE TABLE conversations(
  id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
  last_seq bigint NOT NULL DEFAULT 0,
  created_at bigint NOT NULL,
  last_activity_at bigint NOT NULL);
CREATE TABLE direct_conversations(
  low_user_id bigint NOT NULL,
  high_user_id bigint NOT NULL,
  conversation_id bigint NOT NULL,
  PRIMARY KEY(low_user_id, high_user_id));
CREATE TABLE members(
  conversation_id bigint NOT NULL,
  user_id bigint NOT NULL,
  last_activity_at bigint NOT NULL,
  PRIMARY KEY(conversation_id, user_id));
CREATE INDEX members_by_activity ON members(user_id, last_activity_at, conversation_id);
CREATE TABLE messages(
  conversation_id bigint NOT NULL,
  seq bigint NOT NULL,
  sender_id bigint NOT NULL,
  sender_device_id bigint NOT NULL,
  client_id text NOT NULL,
  body text NOT NULL,
  created_at bigint NOT NULL,
  PRIMARY KEY(conversation_id, seq),
  UNIQUE(conversation_id, sender_id, client_id)) PARTITION BY HASH(conversation_id);
CREATE TABLE withheld(
  conversation_id bigint NOT NULL,
  user_id bigint NOT NULL,
  seq bigint NOT NULL,
  PRIMARY KEY(conversation_id, user_id, seq)) PARTITION BY HASH(conversation_id);
CREATE TABLE user_events(
  user_id bigint NOT NULL,
  user_seq bigint NOT NULL,
  kind smallint NOT NULL,
  conversation_id bigint NOT NULL DEFAULT 0,
  seq bigint NOT NULL DEFAULT 0,
  subject_user_id bigint NOT NULL DEFAULT 0,
  delivered bigint NOT NULL DEFAULT 0,
  read bigint NOT NULL DEFAULT 0,
  created_at bigint NOT NULL,
  withheld bigint[],
  profile_username text,
  profile_display_name text,
  profile_about text,
  profile_updated_at bigint,
  PRIMARY KEY(user_id, user_seq)) PARTITION BY HASH(user_id);
CREATE TABLE user_heads(
  user_id bigint PRIMARY KEY,
  head bigint NOT NULL);
CREATE TABLE device_receipts(
  device_id bigint NOT NULL,
  conversation_id bigint NOT NULL,
  delivered bigint NOT NULL,
  read bigint NOT NULL,
  PRIMARY KEY(device_id, conversation_id));
CREATE TABLE user_receipts(
  conversation_id bigint NOT NULL,
  user_id bigint NOT NULL,
  delivered bigint NOT NULL,
  read bigint NOT NULL,
  PRIMARY KEY(conversation_id, user_id));
CREATE TABLE contacts(
  owner_id bigint NOT NULL,
  contact_id bigint NOT NULL,
  added_at bigint NOT NULL,
  PRIMARY KEY(owner_id, contact_id));
CREATE INDEX contacts_by_contact ON contacts(contact_id, owner_id);
CREATE TABLE blocks(
  owner_id bigint NOT NULL,
  target_id bigint NOT NULL,
  created_at bigint NOT NULL,
  shown_display_name text NOT NULL,
  shown_about text NOT NULL,
  shown_updated_at bigint NOT NULL,
  PRIMARY KEY(owner_id, target_id));
CREATE TABLE name_prefixes(
  prefix text COLLATE "C" NOT NULL,
  username text COLLATE "C" NOT NULL,
  user_id bigint NOT NULL,
  PRIMARY KEY(prefix, username));
)sql";
  sql += PartitionsSql("messages");
  sql += PartitionsSql("withheld");
  sql += PartitionsSql("user_events");
  return sql;
}

// Presence: who may see it (PresenceVisibility) and when the user was last
// online.
std::string SchemaV2() {
  return "ALTER TABLE users ADD COLUMN presence_visibility smallint NOT NULL DEFAULT 0;\n"
         "ALTER TABLE users ADD COLUMN last_seen bigint NOT NULL DEFAULT 0;\n";
}

// Issue 8: the message timeline (accepted/stored times, every move of a
// device's watermarks with its time) and disabled users.
std::string SchemaV3() {
  std::string sql = R"sql(
ALTER TABLE users ADD COLUMN disabled boolean NOT NULL DEFAULT false;
ALTER TABLE messages ADD COLUMN accepted_at bigint NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN stored_at bigint NOT NULL DEFAULT 0;
CREATE TABLE receipt_log(
  conversation_id bigint NOT NULL,
  device_id bigint NOT NULL,
  delivered bigint NOT NULL,
  read bigint NOT NULL,
  at bigint NOT NULL,
  PRIMARY KEY(conversation_id, device_id, delivered, read)) PARTITION BY HASH(conversation_id);
CREATE INDEX receipt_log_by_read ON receipt_log(conversation_id, device_id, read);
)sql";
  sql += PartitionsSql("receipt_log");
  return sql;
}

struct Migration {
  int version;
  std::string (*sql)();
  // Run after `sql`, inside the step's transaction; null: none.
  Status (*code)(PgConn&) = nullptr;
};

// Issue 11: push notifications (see SqliteStore's step 6 and "Push" at the
// end of this file). Tables keyed by device or user are small and not
// partitioned.
std::string SchemaV4() {
  return R"sql(
CREATE TABLE push_endpoints(
  device_id bigint PRIMARY KEY,
  user_id bigint NOT NULL,
  provider text NOT NULL,
  token text NOT NULL,
  registered_at bigint NOT NULL,
  last_attempt_at bigint NOT NULL DEFAULT 0,
  last_result text NOT NULL DEFAULT '',
  last_success_at bigint NOT NULL DEFAULT 0,
  failure_count bigint NOT NULL DEFAULT 0,
  last_conversation_id bigint NOT NULL DEFAULT 0,
  last_seq bigint NOT NULL DEFAULT 0,
  last_kind smallint NOT NULL DEFAULT 0);
CREATE INDEX push_endpoints_by_user ON push_endpoints(user_id, device_id);
CREATE TABLE push_jobs(
  device_id bigint PRIMARY KEY,
  user_id bigint NOT NULL,
  conversation_id bigint NOT NULL,
  seq bigint NOT NULL,
  kind smallint NOT NULL,
  due_at bigint NOT NULL,
  attempts integer NOT NULL DEFAULT 0,
  lease_owner text NOT NULL DEFAULT '',
  lease_until bigint NOT NULL DEFAULT 0,
  version bigint NOT NULL DEFAULT 1,
  created_at bigint NOT NULL);
CREATE INDEX push_jobs_by_due ON push_jobs(due_at);
CREATE TABLE push_mutes(
  user_id bigint NOT NULL,
  conversation_id bigint NOT NULL,
  PRIMARY KEY(user_id, conversation_id));
ALTER TABLE users ADD COLUMN push_previews boolean NOT NULL DEFAULT true;
)sql";
}

// Issue 12: edits, deletes for everyone (tombstones) and deletes-for-me
// (withheld rows with hidden_at > 0); see SqliteStore's step 7.
std::string SchemaV5() {
  std::string sql = R"sql(
ALTER TABLE messages ADD COLUMN version bigint NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN edited_at bigint NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN deleted_at bigint NOT NULL DEFAULT 0;
CREATE TABLE message_edits(
  conversation_id bigint NOT NULL,
  seq bigint NOT NULL,
  version bigint NOT NULL,
  client_id text NOT NULL,
  editor_device_id bigint NOT NULL,
  body text NOT NULL,
  created_at bigint NOT NULL,
  PRIMARY KEY(conversation_id, seq, version),
  UNIQUE(conversation_id, seq, client_id)) PARTITION BY HASH(conversation_id);
ALTER TABLE withheld ADD COLUMN hidden_at bigint NOT NULL DEFAULT 0;
)sql";
  sql += PartitionsSql("message_edits");
  return sql;
}

// Unicode case folding of display-name words (common/text_fold.h; see
// SqliteStore's step 8): the name_prefixes rows of non-ASCII names were made
// lower-cased in ASCII only, so they are dropped and ReindexNonAsciiNames
// re-makes them. ASCII names fold as before and keep their rows.
std::string SchemaV6() {
  return R"sql(
DELETE FROM name_prefixes WHERE user_id IN
  (SELECT id FROM users WHERE display_name !~ '^[ -~]*$');
)sql";
}

constexpr int kReindexPageUsers = 1000;

Status ReindexNonAsciiNames(PgConn& db) {
  int64_t after = 0;
  while (!db.failed()) {
    PgRows rows = db.Query(
        "SELECT id, username, display_name FROM users WHERE id > $1 AND "
        "display_name !~ '^[ -~]*$' ORDER BY id LIMIT $2",
        PgParams().Int(after).Int(kReindexPageUsers));
    for (int i = 0; i < rows.size(); ++i) {
      after = rows.Int(i, 0);
      for (const std::string& prefix : NamePrefixes(rows.Text(i, 2))) {
        db.Defer("INSERT INTO name_prefixes(prefix, username, user_id) VALUES($1, $2, $3) ON CONFLICT DO NOTHING",
                 PgParams().Text(prefix).Text(rows.Text(i, 1)).Int(after));
      }
    }
    db.Flush();
    if (rows.size() < kReindexPageUsers) break;
  }
  return db.failed() ? db.error() : Status::Ok();
}

// Issue 12: drafts, one per user and conversation (no history), with the
// user's stream (same partition key, so the stream's join stays local).
std::string SchemaV7() {
  std::string sql = R"sql(
CREATE TABLE drafts(
  user_id bigint NOT NULL,
  conversation_id bigint NOT NULL,
  text text NOT NULL,
  updated_at bigint NOT NULL,
  PRIMARY KEY(user_id, conversation_id)) PARTITION BY HASH(user_id);
)sql";
  sql += PartitionsSql("drafts");
  return sql;
}

// Issue 12: full-text search of messages, indexed off the send path.
// Messages stored before this step are queued, so the indexer indexes the
// existing history in the background.
std::string SchemaV8() {
  std::string sql = R"sql(
CREATE SEQUENCE search_queue_ids;
CREATE TABLE search_queue(
  conversation_id bigint NOT NULL,
  seq bigint NOT NULL,
  id bigint NOT NULL DEFAULT nextval('search_queue_ids'),
  queued_at bigint NOT NULL,
  PRIMARY KEY(conversation_id, id)) PARTITION BY HASH(conversation_id);
CREATE INDEX search_queue_by_id ON search_queue(id);
CREATE TABLE message_search(
  conversation_id bigint NOT NULL,
  seq bigint NOT NULL,
  doc_id bigint NOT NULL,
  version bigint NOT NULL,
  words tsvector NOT NULL,
  PRIMARY KEY(conversation_id, seq)) PARTITION BY HASH(conversation_id);
CREATE INDEX message_search_words ON message_search USING gin(words);
)sql";
  sql += PartitionsSql("search_queue");
  sql += PartitionsSql("message_search");
  sql += R"sql(
INSERT INTO search_queue(conversation_id, seq, queued_at)
  SELECT conversation_id, seq, stored_at FROM messages WHERE deleted_at = 0 ORDER BY stored_at, conversation_id, seq;
)sql";
  return sql;
}

// Issue 3: user_receipts.announced, the user's delivered watermark as the
// other member's stream last carried it (SqliteStore's step 11 says why).
std::string SchemaV9() {
  return R"sql(
ALTER TABLE user_receipts ADD COLUMN announced bigint NOT NULL DEFAULT 0;
UPDATE user_receipts SET announced = delivered;
)sql";
}

// Issue 12: retention (SqliteStore's step 12 says why). The partial indexes
// hold only the rows the background steps look for.
std::string SchemaV10() {
  return R"sql(
ALTER TABLE conversations ADD COLUMN disappearing_s bigint NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN expires_at bigint NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN purged_at bigint NOT NULL DEFAULT 0;
CREATE INDEX messages_expiring ON messages(expires_at) WHERE expires_at > 0 AND deleted_at = 0;
CREATE INDEX messages_to_purge ON messages(deleted_at) WHERE deleted_at > 0 AND purged_at = 0;
)sql";
}

// Issue 12: the cold tier (SqliteStore's step 13 says why; see "Cold tier"
// below). Existing conversations become due from their first message, so an
// upgraded database compacts its old history in the background, in bounded
// steps, once compaction is on. Adding a column with a constant default
// rewrites no table. The blocks are compressed already, so their column is
// stored out of line without TOAST's own compression (EXTERNAL).
std::string SchemaV11() {
  std::string sql = R"sql(
ALTER TABLE messages ADD COLUMN cold boolean NOT NULL DEFAULT false;
ALTER TABLE conversations ADD COLUMN hot_since bigint NOT NULL DEFAULT 0;
ALTER TABLE conversations ADD COLUMN cold_through bigint NOT NULL DEFAULT 0;
UPDATE conversations c SET hot_since = COALESCE(
  (SELECT m.created_at FROM messages m WHERE m.conversation_id = c.id ORDER BY m.seq LIMIT 1), 0);
CREATE INDEX conversations_cold_due ON conversations(hot_since) WHERE hot_since > 0;
CREATE TABLE message_blocks(
  conversation_id bigint NOT NULL,
  first_seq bigint NOT NULL,
  last_seq bigint NOT NULL,
  messages integer NOT NULL,
  raw_bytes bigint NOT NULL,
  created_at bigint NOT NULL,
  nonce bigint NOT NULL,
  data bytea NOT NULL,
  PRIMARY KEY(conversation_id, first_seq)) PARTITION BY HASH(conversation_id);
)sql";
  sql += PartitionsSql("message_blocks");
  sql += "ALTER TABLE message_blocks ALTER COLUMN data SET STORAGE EXTERNAL;\n";
  return sql;
}

// Issue 12: stream trimming (SqliteStore's step 14 says why).
std::string SchemaV12() {
  return R"sql(
ALTER TABLE user_heads ADD COLUMN stream_floor bigint NOT NULL DEFAULT 1;
)sql";
}

// Issue 12: the cold tier takes edit texts too (SqliteStore's step 18; see
// "Cold tier" below). Edits of messages compacted before this step stay in
// their rows, read as before. Their blocks are stored as message_blocks'.
std::string SchemaV13() {
  std::string sql = R"sql(
ALTER TABLE message_edits ADD COLUMN cold boolean NOT NULL DEFAULT false;
CREATE TABLE edit_blocks(
  conversation_id bigint NOT NULL,
  first_seq bigint NOT NULL,
  last_seq bigint NOT NULL,
  edits integer NOT NULL,
  raw_bytes bigint NOT NULL,
  created_at bigint NOT NULL,
  nonce bigint NOT NULL,
  data bytea NOT NULL,
  PRIMARY KEY(conversation_id, first_seq)) PARTITION BY HASH(conversation_id);
)sql";
  sql += PartitionsSql("edit_blocks");
  sql += "ALTER TABLE edit_blocks ALTER COLUMN data SET STORAGE EXTERNAL;\n";
  return sql;
}

// The tsquery of a message search: every word as a prefix, all required.
// Words hold only [0-9a-z] and non-ASCII characters (MessageWords), so
// quoting needs no escapes.
std::string TsQuery(const std::vector<std::string>& words) {
  std::string q;
  for (const std::string& w : words) {
    if (!q.empty()) q += " & ";
    q += '\'';
    q += w;
    q += "':*";
  }
  return q;
}

const Migration kMigrations[] = {
    {1, &SchemaV1},
    {2, &SchemaV2},
    {3, &SchemaV3},
    {4, &SchemaV4},
    {5, &SchemaV5},
    {6, &SchemaV6, &ReindexNonAsciiNames},
    {7, &SchemaV7},
    {8, &SchemaV8},
    {9, &SchemaV9},
    {10, &SchemaV10},
    {11, &SchemaV11},
    {12, &SchemaV12},
    {13, &SchemaV13},
};

// Applies the steps above the database's version up to `target`, each in its
// own transaction, holding an advisory lock so concurrent nodes migrate once.
Status Migrate(PgConn& db, int target) {
  db.ClearError();
  if (Status s = db.Exec(fmt::format("SELECT pg_advisory_lock({})", kMigrationLockKey)); !s.ok()) return s;
  auto unlock = [&] {
    db.ClearError();
    db.ExecIgnoringErrors(fmt::format("SELECT pg_advisory_unlock({})", kMigrationLockKey).c_str());
  };
  Status status = db.Exec(
      "CREATE TABLE IF NOT EXISTS schema_version(version integer PRIMARY KEY, applied_at timestamptz NOT NULL "
      "DEFAULT now())");
  // Step numbers are given to parallel changes ahead of time, so a database
  // may hold a step without an earlier one (step 11, the cold tier, landed
  // after step 12): every step not recorded yet is applied, in order.
  int64_t current = 0;
  std::set<int64_t> applied;
  if (status.ok()) {
    PgRows rows = db.Query("SELECT version FROM schema_version");
    for (int i = 0; i < rows.size(); ++i) {
      applied.insert(rows.Int(i, 0));
      current = std::max(current, rows.Int(i, 0));
    }
    status = db.failed() ? db.error() : Status::Ok();
  }
  if (status.ok() && current > PostgresStore::kSchemaVersion) {
    status = Status(ErrorCode::kInternal, fmt::format("store schema version {} is newer than this server's {}",
                                                      current, PostgresStore::kSchemaVersion));
  }
  for (const Migration& m : kMigrations) {
    if (!status.ok()) break;
    if (applied.count(m.version) != 0 || m.version > target) continue;
    Status s;
    if (m.code == nullptr) {
      s = db.Exec(fmt::format("BEGIN; {} INSERT INTO schema_version(version) VALUES ({}); COMMIT;", m.sql(),
                              m.version));
    } else {
      s = db.Exec(fmt::format("BEGIN; {}", m.sql()));
      if (s.ok()) s = m.code(db);
      if (s.ok()) s = db.Exec(fmt::format("INSERT INTO schema_version(version) VALUES ({}); COMMIT;", m.version));
    }
    if (!s.ok()) {
      db.ExecIgnoringErrors("ROLLBACK");
      status = Status(ErrorCode::kInternal, fmt::format("schema migration {} failed: {}", m.version, s.message()));
    }
  }
  unlock();
  return status;
}

constexpr const char* kMessageColumns =
    "conversation_id, seq, sender_id, sender_device_id, client_id, body, created_at";

// PARLEY_MESSAGE_COLUMNS (pg_history_sql.h) has this many.
constexpr int kMessageColumnCount = 12;

MessageRecord MessageAt(const PgRows& r, int row, int col) {
  MessageRecord m;
  m.conversation_id = r.Int(row, col);
  m.seq = r.Int(row, col + 1);
  m.sender_id = r.Int(row, col + 2);
  m.sender_device_id = r.Int(row, col + 3);
  m.client_id = r.Text(row, col + 4);
  m.body = r.Text(row, col + 5);
  m.created_at = r.Int(row, col + 6);
  m.version = r.Int(row, col + 7);
  m.edited_at = r.Int(row, col + 8);
  m.deleted_at = r.Int(row, col + 9);
  m.expires_at = r.Int(row, col + 10);
  return m;
}

// Whether the message MessageAt read at (row, col) has its text in a block:
// its body is '' until ColdTexts::Fill pages it in.
bool ColdAt(const PgRows& r, int row, int col) { return r.Bool(row, col + 11); }

DeviceRecord DeviceAt(const PgRows& r, int row) {
  DeviceRecord d;
  d.id = r.Int(row, 0);
  d.user_id = r.Int(row, 1);
  d.name = r.Text(row, 2);
  d.platform = r.Text(row, 3);
  d.created_at = r.Int(row, 4);
  d.last_seen_at = r.Int(row, 5);
  d.cursor = r.Int(row, 6);
  return d;
}

// Columns: id, username, display_name, about, profile_updated_at, from `col`.
ProfileRecord ProfileAt(const PgRows& r, int row, int col) {
  ProfileRecord p;
  p.user_id = r.Int(row, col);
  p.username = r.Text(row, col + 1);
  p.display_name = r.Text(row, col + 2);
  p.about = r.Text(row, col + 3);
  p.updated_at = r.Int(row, col + 4);
  return p;
}

// Columns: id, username, password_hash, created_at, display_name, about,
// presence_visibility, last_seen.
constexpr const char* kUserColumns =
    "id, username, password_hash, created_at, display_name, about, presence_visibility, last_seen, disabled";

UserRecord UserAt(const PgRows& r, int row) {
  return UserRecord{r.Int(row, 0), r.Text(row, 1), r.Text(row, 2), r.Int(row, 3), r.Text(row, 4), r.Text(row, 5),
                    static_cast<PresenceVisibility>(r.Int(row, 6)), r.Int(row, 7), r.Bool(row, 8)};
}

// `user`'s profile as `viewer` sees it ($1 user, $2 viewer): as it was when
// the block began if `user` blocks `viewer`.
constexpr const char* kProfileForSql =
    "SELECT u.id, u.username, COALESCE(b.shown_display_name, u.display_name), COALESCE(b.shown_about, u.about), "
    "COALESCE(b.shown_updated_at, u.profile_updated_at) FROM users u "
    "LEFT JOIN blocks b ON b.owner_id = u.id AND b.target_id = $2 WHERE u.id = $1";

// The last seq of conversation $1 not withheld from user $2 by a block (NULL:
// none), as SqliteStore's LastSeqVisibleTo: backwards on the messages'
// primary key, one withheld probe per message.
constexpr const char* kLastVisibleSeqSql =
    "(SELECT m.seq FROM messages m WHERE m.conversation_id = $1 AND NOT EXISTS (SELECT 1 FROM withheld w "
    "WHERE w.conversation_id = $1 AND w.user_id = $2 AND w.seq = m.seq AND w.hidden_at = 0) "
    "ORDER BY m.seq DESC LIMIT 1)";

Seq LastSeqVisibleTo(PgConn& db, ConversationId conversation, UserId user) {
  PgRows r = db.Query(std::string("SELECT COALESCE(") + kLastVisibleSeqSql + ", 0)",
                      PgParams().Int(conversation).Int(user));
  return r.empty() ? 0 : r.Int(0, 0);
}

// Seqs of `conversation` withheld from `user` by a block in (after, upto],
// ascending.
std::vector<Seq> WithheldIn(PgConn& db, ConversationId conversation, UserId user, Seq after, Seq upto) {
  std::vector<Seq> seqs;
  if (upto <= after) return seqs;
  PgRows rows = db.Query(kWithheldInSql, PgParams().Int(conversation).Int(user).Int(after).Int(upto));
  for (int i = 0; i < rows.size(); ++i) seqs.push_back(rows.Int(i, 0));
  return seqs;
}

Callback<Empty> ToEmptyCallback(StatusCallback done) {
  return [done = std::move(done)](Result<Empty> r) { done(r.has_value() ? Status::Ok() : r.error()); };
}

}  // namespace

// ---------------------------------------------------------------------------
// Write operations

class PostgresStore::WriteOp {
 public:
  virtual ~WriteOp() = default;
  LockSet locks;  // what Apply will lock; taken first, in order, by CommitBatch
  // Runs inside the batch's transaction; may run again if the batch is
  // retried. Database errors are sticky in the writer's PgConn and fail the
  // batch; expected failures become this op's result.
  virtual void Apply(Writer& writer) = 0;
  virtual void Finish(const Status& batch) = 0;
  // Runs in a transaction of its own (background work: IndexSearch).
  bool solo = false;
};

template <typename T>
class PostgresStore::TypedWriteOp final : public WriteOp {
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

class PostgresStore::Writer {
 public:
  Writer(std::unique_ptr<PgConn> db, const Clock& clock) : db_(std::move(db)), clock_(clock) {}

  // Applies `ops` in one transaction (retrying it on a conflict); returns its
  // outcome.
  Status CommitBatch(const std::vector<std::unique_ptr<WriteOp>>& ops);
  uint64_t statements() const { return db_->statements(); }
  // Locks, in this order, the rows `ops` declared (each kind sorted): their
  // conversations, the stream heads of those conversations' members and of
  // the declared users, and the declared devices. Rows that do not exist yet
  // are not locked (the first append creates a head row).
  void LockInOrder(const std::vector<std::unique_ptr<WriteOp>>& ops);

  Result<UserRecord> CreateUser(const std::string& username, const std::string& password_hash, int64_t now);
  Result<DeviceRecord> CreateDevice(UserId user_id, const std::string& name, const std::string& platform,
                                    const std::string& token_hash, const std::string& verified_hash, int64_t now);
  Result<Empty> RevokeDevice(UserId user_id, DeviceId device_id);
  Result<Empty> SetCursor(DeviceId device_id, UserSeq user_seq, int64_t now);
  Result<OpenResult> OpenDirect(UserId a, UserId b, int64_t now);
  Result<AppendResult> AppendMessage(const NewMessage& msg);
  Result<ReceiptResult> UpdateReceipt(const ReceiptUpdate& update);
  Result<ChangeResult> ChangeMessage(const MessageChange& change);
  Result<SocialResult> SetProfile(UserId user_id, const std::optional<std::string>& display_name,
                                  const std::optional<std::string>& about, int64_t now);
  Result<SocialResult> AddContact(UserId owner, UserId contact, int64_t now);
  Result<SocialResult> RemoveContact(UserId owner, UserId contact, int64_t now);
  Result<SocialResult> Block(UserId owner, UserId target, int64_t now);
  Result<SocialResult> Unblock(UserId owner, UserId target, int64_t now);
  Result<std::vector<DeviceId>> ChangePassword(UserId user_id, const std::string& new_hash, DeviceId keep_device);
  Result<std::vector<BulkUserResult>> BulkCreateUsers(const std::vector<NewBulkUser>& users, int64_t now);
  Result<SocialResult> SetPresenceVisibility(UserId user_id, PresenceVisibility visibility, int64_t now);
  Result<Empty> SetLastSeen(UserId user_id, int64_t last_seen);
  Result<DisableResult> SetUserDisabled(UserId user_id, bool disabled, bool revoke_devices);
  Result<EraseResult> EraseAccount(UserId user_id, int64_t now);

  // Push notifications (issue 11): see "Push" at the end of this file.
  Result<Empty> SetPushEndpoint(UserId user_id, DeviceId device_id, const std::string& provider,
                                const std::string& token, int64_t now);
  Result<bool> RemovePushEndpoint(UserId user_id, DeviceId device_id);
  Result<SocialResult> SetMuted(UserId user_id, ConversationId conversation_id, bool muted, int64_t now);
  Result<SocialResult> SetDraft(UserId user_id, ConversationId conversation_id, const std::string& text, int64_t now);
  Result<SocialResult> SetPushPreviews(UserId user_id, bool previews, int64_t now);
  Result<int> EnqueuePush(const PushRequest& req);
  Result<std::vector<PushJob>> ClaimPushJobs(const std::string& node, int64_t now, int64_t lease_ms, int limit);
  // Pages in the claimed jobs' compacted previews (`jobs` parallel to
  // `cold`); a text that cannot be paged in leaves its job's preview out.
  void FillPreviews(const std::vector<ColdText>& cold, const std::vector<PushJob*>& jobs);
  Result<Empty> CompletePush(const PushCompletion& c);
  // Message search (see "Message search"): queues a message for indexing;
  // indexes up to `max` queued entries.
  void QueueSearch(ConversationId conversation, Seq seq, int64_t now);
  Result<SearchIndexProgress> IndexSearch(int max);
  // Retention (store.h "Retention").
  Result<SocialResult> SetDisappearing(UserId user_id, ConversationId conversation_id, int64_t seconds, int64_t now);
  Result<ExpireProgress> ExpireMessages(int64_t now, int max);
  Result<PurgeProgress> PurgeDeleted(int64_t deleted_before, int max);
  Result<TrimProgress> TrimStreams(const TrimRequest& req);
  // The cold tier (see "Cold tier").
  Result<CompactProgress> CompactMessages(const CompactRequest& req);
  Status CompactEdits(ConversationId conversation, const std::vector<int64_t>& seqs, CompactProgress* progress);
  // The two kinds of cold block the compaction writes.
  enum class BlockKind { kMessages, kEdits };
  // Queues (Defer) the insert of a new block of `kind` of `conversation`:
  // `count` texts (messages or edits) from `first_seq` to `last_seq`,
  // `raw_bytes` before compression, compressed `data`, made at the batch's
  // time with a fresh nonce.
  void InsertBlock(BlockKind kind, ConversationId conversation, Seq first_seq, Seq last_seq, int64_t count,
                   int64_t raw_bytes, const std::string& data);

 private:
  // A conversation's members (never change once created), ascending user id.
  struct Members {
    std::vector<MemberRecord> members;
  };

  // The cached members of `id`, loaded on a miss; nullptr if it does not exist.
  const Members* FindMembers(ConversationId id);
  static bool IsMember(const Members& c, UserId user);
  std::optional<std::string> Username(UserId user);
  // Whether `hash` is the user's password hash (CreateDevice's check); locks
  // the users row until the batch commits, so a concurrent ChangePassword on
  // another node either waits for this device (and revokes it) or is seen.
  bool PasswordHashIs(UserId user, const std::string& hash);
  UserSeq Head(UserId user);
  std::optional<ProfileRecord> Profile(UserId user);
  std::optional<ProfileRecord> ProfileFor(UserId user, UserId viewer);
  bool Blocks(UserId owner, UserId target);
  std::vector<Seq> WithheldBetween(ConversationId conversation, UserId user, Seq after, Seq upto);
  // `viewer` gets `user`'s profile changes (SetProfile's audience, blocks
  // aside): they share a conversation, or `viewer` has `user` as a contact.
  bool InProfileAudience(UserId user, UserId viewer);
  // Revokes every live device of the user; returns their ids, ascending.
  std::vector<DeviceId> RevokeLiveDevices(UserId user_id);
  void Revoke(DeviceId device_id);
  void IndexName(UserId user, const std::string& username, const std::string& display_name, bool add);
  // Appends the same event to the stream of each of `users` (ascending id)
  // at its head + 1, in one statement; returns the positions in that order.
  std::vector<StreamPosition> AppendEvents(const std::vector<UserId>& users, EventKind kind,
                                           ConversationId conversation, Seq seq, UserId subject, Watermarks receipt,
                                           int64_t now, const std::vector<Seq>* withheld = nullptr,
                                           const ProfileRecord* profile = nullptr);
  // As AppendEvents, with a withheld list per user (parallel to `users`, or
  // empty for none): one statement when the lists are equal, else one per user.
  std::vector<StreamPosition> AppendEventsWithheld(const std::vector<UserId>& users,
                                                   const std::vector<std::vector<Seq>>& withheld, EventKind kind,
                                                   ConversationId conversation, Seq seq, UserId subject,
                                                   Watermarks receipt, int64_t now);
  StreamPosition AppendEvent(UserId user, EventKind kind, ConversationId conversation, Seq seq, UserId subject,
                             Watermarks receipt, int64_t now, const std::vector<Seq>* withheld = nullptr,
                             const ProfileRecord* profile = nullptr) {
    std::vector<StreamPosition> p =
        AppendEvents({user}, kind, conversation, seq, subject, receipt, now, withheld, profile);
    return p.empty() ? StreamPosition{user, 0} : p[0];
  }
  SocialResult AppendSocialEvent(UserId owner, EventKind kind, const ProfileRecord& subject, bool flag, int64_t now);

  std::unique_ptr<PgConn> db_;
  const Clock& clock_;
  int64_t batch_now_ = 0;  // clock_ when the current batch began: its messages' stored_at
  std::unordered_map<ConversationId, Members> members_;
  ColdTexts cold_;  // pages cold texts in; its codec makes and rewrites blocks
};

Status PostgresStore::Writer::CommitBatch(const std::vector<std::unique_ptr<WriteOp>>& ops) {
  if (members_.size() > kMaxCachedConversations) members_.clear();
  Status error;
  for (int attempt = 1; attempt <= kMaxBatchAttempts; ++attempt) {
    db_->ClearError();
    if (!db_->EnsureConnected()) return Status(ErrorCode::kUnavailable, "postgres: not connected");
    db_->Defer("BEGIN");
    batch_now_ = clock_.NowMillis();
    LockInOrder(ops);
    for (const auto& op : ops) {
      if (db_->failed()) break;
      op->Apply(*this);
    }
    db_->Defer("COMMIT");
    db_->Flush();
    if (!db_->failed()) return Status::Ok();
    error = db_->error();
    const bool retry = postgres::IsRetryableConflict(db_->sqlstate());
    db_->ClearError();
    db_->ExecIgnoringErrors("ROLLBACK");
    // A failed batch may have cached members of a conversation it created.
    members_.clear();
    if (!retry) break;
    if (attempt == kMaxBatchAttempts)
      error = Status(ErrorCode::kUnavailable, "the database is busy with conflicting writes from other nodes; retry");
  }
  db_->ClearError();
  return error;
}

void PostgresStore::Writer::LockInOrder(const std::vector<std::unique_ptr<WriteOp>>& ops) {
  std::vector<ConversationId> conversations;
  std::vector<UserId> users;
  std::vector<DeviceId> devices;
  for (const auto& op : ops) {
    conversations.insert(conversations.end(), op->locks.conversations.begin(), op->locks.conversations.end());
    users.insert(users.end(), op->locks.users.begin(), op->locks.users.end());
    devices.insert(devices.end(), op->locks.devices.begin(), op->locks.devices.end());
  }
  auto unique_sorted = [](auto& v) {
    std::sort(v.begin(), v.end());
    v.erase(std::unique(v.begin(), v.end()), v.end());
  };
  unique_sorted(conversations);
  for (ConversationId id : conversations) {
    if (const Members* m = FindMembers(id)) {
      for (const MemberRecord& member : m->members) users.push_back(member.user_id);
    }
  }
  unique_sorted(users);
  unique_sorted(devices);
  // ORDER BY ... FOR UPDATE locks the rows as the sort returns them.
  if (!conversations.empty())
    db_->Defer("SELECT 1 FROM conversations WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE",
               PgParams().IntArray(conversations));
  if (!users.empty())
    db_->Defer("SELECT 1 FROM user_heads WHERE user_id = ANY($1::bigint[]) ORDER BY user_id FOR UPDATE",
               PgParams().IntArray(users));
  if (!devices.empty())
    db_->Defer("SELECT 1 FROM devices WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE",
               PgParams().IntArray(devices));
}

const PostgresStore::Writer::Members* PostgresStore::Writer::FindMembers(ConversationId id) {
  auto it = members_.find(id);
  if (it != members_.end()) return &it->second;
  PgRows rows = db_->Query(
      "SELECT m.user_id, u.username FROM members m JOIN users u ON u.id = m.user_id "
      "WHERE m.conversation_id = $1 ORDER BY m.user_id",
      PgParams().Int(id));
  if (rows.empty()) return nullptr;  // every conversation has members
  Members c;
  for (int i = 0; i < rows.size(); ++i) c.members.push_back(MemberRecord{rows.Int(i, 0), rows.Text(i, 1)});
  return &members_.emplace(id, std::move(c)).first->second;
}

bool PostgresStore::Writer::IsMember(const Members& c, UserId user) {
  return std::any_of(c.members.begin(), c.members.end(), [user](const MemberRecord& m) { return m.user_id == user; });
}

std::optional<std::string> PostgresStore::Writer::Username(UserId user) {
  PgRows rows = db_->Query("SELECT username FROM users WHERE id = $1", PgParams().Int(user));
  if (rows.empty()) return std::nullopt;
  return rows.Text(0, 0);
}

bool PostgresStore::Writer::PasswordHashIs(UserId user, const std::string& hash) {
  return !db_->Query("SELECT 1 FROM users WHERE id = $1 AND password_hash = $2 FOR SHARE",
                     PgParams().Int(user).Text(hash))
              .empty();
}

UserSeq PostgresStore::Writer::Head(UserId user) {
  PgRows rows = db_->Query("SELECT head FROM user_heads WHERE user_id = $1", PgParams().Int(user));
  return rows.empty() ? 0 : rows.Int(0, 0);
}

std::optional<ProfileRecord> PostgresStore::Writer::Profile(UserId user) {
  PgRows rows = db_->Query("SELECT id, username, display_name, about, profile_updated_at FROM users WHERE id = $1",
                           PgParams().Int(user));
  if (rows.empty()) return std::nullopt;
  return ProfileAt(rows, 0, 0);
}

std::optional<ProfileRecord> PostgresStore::Writer::ProfileFor(UserId user, UserId viewer) {
  PgRows rows = db_->Query(kProfileForSql, PgParams().Int(user).Int(viewer));
  if (rows.empty()) return std::nullopt;
  return ProfileAt(rows, 0, 0);
}

bool PostgresStore::Writer::Blocks(UserId owner, UserId target) {
  return !db_->Query("SELECT 1 FROM blocks WHERE owner_id = $1 AND target_id = $2",
                     PgParams().Int(owner).Int(target))
              .empty();
}

std::vector<Seq> PostgresStore::Writer::WithheldBetween(ConversationId conversation, UserId user, Seq after,
                                                        Seq upto) {
  return WithheldIn(*db_, conversation, user, after, upto);
}

bool PostgresStore::Writer::InProfileAudience(UserId user, UserId viewer) {
  return !db_->Query(
                 "SELECT 1 FROM members m JOIN members o ON o.conversation_id = m.conversation_id "
                 "WHERE m.user_id = $1 AND o.user_id = $2 UNION ALL "
                 "SELECT 1 FROM contacts WHERE owner_id = $2 AND contact_id = $1 LIMIT 1",
                 PgParams().Int(user).Int(viewer))
              .empty();
}

std::vector<DeviceId> PostgresStore::Writer::RevokeLiveDevices(UserId user_id) {
  PgRows d = db_->Query("SELECT id FROM devices WHERE user_id = $1 AND NOT revoked ORDER BY id", PgParams().Int(user_id));
  std::vector<DeviceId> ids;
  for (int i = 0; i < d.size(); ++i) ids.push_back(d.Int(i, 0));
  for (DeviceId id : ids) Revoke(id);
  return ids;
}

void PostgresStore::Writer::Revoke(DeviceId device_id) {
  db_->Defer("UPDATE devices SET token_hash = NULL, revoked = true, cursor = 0 WHERE id = $1",
             PgParams().Int(device_id));
  // The device's own watermarks go with it; the user's aggregates stay.
  db_->Defer("DELETE FROM device_receipts WHERE device_id = $1", PgParams().Int(device_id));
  // So do its push endpoint and pending push.
  db_->Defer("DELETE FROM push_jobs WHERE device_id = $1", PgParams().Int(device_id));
  db_->Defer("DELETE FROM push_endpoints WHERE device_id = $1", PgParams().Int(device_id));
}

void PostgresStore::Writer::IndexName(UserId user, const std::string& username, const std::string& display_name,
                                      bool add) {
  for (const std::string& prefix : NamePrefixes(display_name)) {
    if (add) {
      db_->Defer(
          "INSERT INTO name_prefixes(prefix, username, user_id) VALUES($1, $2, $3) ON CONFLICT DO NOTHING",
          PgParams().Text(prefix).Text(username).Int(user));
    } else {
      db_->Defer("DELETE FROM name_prefixes WHERE prefix = $1 AND username = $2",
                 PgParams().Text(prefix).Text(username));
    }
  }
}

std::vector<StreamPosition> PostgresStore::Writer::AppendEvents(const std::vector<UserId>& users, EventKind kind,
                                                                ConversationId conversation, Seq seq, UserId subject,
                                                                Watermarks receipt, int64_t now,
                                                                const std::vector<Seq>* withheld,
                                                                const ProfileRecord* profile) {
  std::vector<StreamPosition> positions;
  if (users.empty()) return positions;
  // The head rows' upsert takes each user seq and locks the row until
  // COMMIT, so concurrent nodes append to one stream one after the other;
  // users are locked in ascending id order, the same on every node.
  PgParams p;
  p.IntArray(users)
      .Int(static_cast<int64_t>(kind))
      .Int(conversation)
      .Int(seq)
      .Int(subject)
      .Int(receipt.delivered)
      .Int(receipt.read)
      .Int(now);
  if (withheld != nullptr && !withheld->empty()) {
    p.IntArray(*withheld);
  } else {
    p.Null();
  }
  if (profile != nullptr) {
    p.Text(profile->username).Text(profile->display_name).Text(profile->about).Int(profile->updated_at);
  } else {
    p.Null().Null().Null().Null();
  }
  PgRows rows = db_->Query(
      "WITH h AS (INSERT INTO user_heads AS h(user_id, head) SELECT u, 1 FROM unnest($1::bigint[]) AS u ORDER BY u "
      "ON CONFLICT(user_id) DO UPDATE SET head = h.head + 1 RETURNING user_id, head) "
      "INSERT INTO user_events(user_id, user_seq, kind, conversation_id, seq, subject_user_id, delivered, read, "
      "created_at, withheld, profile_username, profile_display_name, profile_about, profile_updated_at) "
      "SELECT h.user_id, h.head, $2::smallint, $3::bigint, $4::bigint, $5::bigint, $6::bigint, $7::bigint, "
      "$8::bigint, $9::bigint[], $10::text, $11::text, $12::text, $13::bigint FROM h RETURNING user_id, user_seq",
      p);
  for (int i = 0; i < rows.size(); ++i) positions.push_back(StreamPosition{rows.Int(i, 0), rows.Int(i, 1)});
  std::sort(positions.begin(), positions.end(),
            [](const StreamPosition& x, const StreamPosition& y) { return x.user_id < y.user_id; });
  return positions;
}

std::vector<StreamPosition> PostgresStore::Writer::AppendEventsWithheld(
    const std::vector<UserId>& users, const std::vector<std::vector<Seq>>& withheld, EventKind kind,
    ConversationId conversation, Seq seq, UserId subject, Watermarks receipt, int64_t now) {
  if (std::all_of(withheld.begin(), withheld.end(), [&](const std::vector<Seq>& w) { return w == withheld[0]; })) {
    return AppendEvents(users, kind, conversation, seq, subject, receipt, now, withheld.empty() ? nullptr : &withheld[0]);
  }
  std::vector<StreamPosition> positions;
  for (size_t i = 0; i < users.size(); ++i)
    positions.push_back(AppendEvent(users[i], kind, conversation, seq, subject, receipt, now, &withheld[i]));
  return positions;
}

Result<UserRecord> PostgresStore::Writer::CreateUser(const std::string& username, const std::string& password_hash,
                                                     int64_t now) {
  if (!db_->Query("SELECT 1 FROM users WHERE username = $1", PgParams().Text(username)).empty()) {
    return Status(ErrorCode::kUsernameTaken, "username is taken");
  }
  PgRows rows = db_->Query("INSERT INTO users(username, password_hash, created_at) VALUES($1, $2, $3) RETURNING id",
                           PgParams().Text(username).Text(password_hash).Int(now));
  return UserRecord{rows.empty() ? 0 : rows.Int(0, 0), username, password_hash, now, "", ""};
}

Result<DeviceRecord> PostgresStore::Writer::CreateDevice(UserId user_id, const std::string& name,
                                                         const std::string& platform, const std::string& token_hash,
                                                         const std::string& verified_hash, int64_t now) {
  if (!Username(user_id)) return Status(ErrorCode::kUnknownUser, "unknown user");
  if (!verified_hash.empty() && !PasswordHashIs(user_id, verified_hash)) {
    return Status(ErrorCode::kBadCredentials, "the password changed while logging in; log in with the new one");
  }
  if (!db_->Query("SELECT 1 FROM devices WHERE token_hash = $1", PgParams().Bytes(token_hash)).empty()) {
    return Status(ErrorCode::kInternal, "device token hash already in use");
  }
  DeviceRecord d;
  d.user_id = user_id;
  d.name = name;
  d.platform = platform;
  d.created_at = now;
  d.last_seen_at = now;
  d.cursor = Head(user_id);
  PgRows rows = db_->Query(
      "INSERT INTO devices(user_id, name, platform, token_hash, created_at, last_seen_at, cursor, revoked) "
      "VALUES($1, $2, $3, $4, $5, $5, $6, false) RETURNING id",
      PgParams().Int(user_id).Text(name).Text(platform).Bytes(token_hash).Int(now).Int(d.cursor));
  d.id = rows.empty() ? 0 : rows.Int(0, 0);
  return d;
}

Result<Empty> PostgresStore::Writer::RevokeDevice(UserId user_id, DeviceId device_id) {
  if (db_->Query("SELECT 1 FROM devices WHERE id = $1 AND user_id = $2 AND NOT revoked",
                 PgParams().Int(device_id).Int(user_id))
          .empty()) {
    return Status(ErrorCode::kUnknownDevice, "no such live device of this user");
  }
  Revoke(device_id);
  return Empty{};
}

Result<Empty> PostgresStore::Writer::SetCursor(DeviceId device_id, UserSeq user_seq, int64_t now) {
  // One statement: the row count tells whether the device is live.
  PgRows rows = db_->Query(
      "UPDATE devices SET cursor = GREATEST(cursor, $2), last_seen_at = GREATEST(last_seen_at, $3) "
      "WHERE id = $1 AND NOT revoked RETURNING 1",
      PgParams().Int(device_id).Int(user_seq).Int(now));
  if (rows.empty() && !db_->failed()) return Status(ErrorCode::kUnknownDevice, "no such live device");
  return Empty{};
}

Result<OpenResult> PostgresStore::Writer::OpenDirect(UserId a, UserId b, int64_t now) {
  if (a == b) return Status(ErrorCode::kSelfConversation, "a direct conversation needs two distinct users");
  std::optional<std::string> name_a = Username(a);
  std::optional<std::string> name_b = Username(b);
  if (!name_a || !name_b) return Status(ErrorCode::kUnknownUser, "unknown user");
  const UserId low = std::min(a, b);
  const UserId high = std::max(a, b);
  auto existing = [&]() -> std::optional<Result<OpenResult>> {
    PgRows rows = db_->Query(
        "SELECT c.id, c.last_seq, c.created_at, c.last_activity_at, c.disappearing_s FROM direct_conversations d "
        "JOIN conversations c ON c.id = d.conversation_id WHERE d.low_user_id = $1 AND d.high_user_id = $2",
        PgParams().Int(low).Int(high));
    if (rows.empty()) return std::nullopt;
    ConversationRecord r;
    r.id = rows.Int(0, 0);
    // As the opener may see it: nothing withheld from them shows.
    r.last_seq = LastSeqVisibleTo(*db_, r.id, a);
    r.created_at = rows.Int(0, 2);
    r.last_activity_at = rows.Int(0, 3);
    r.disappearing_s = rows.Int(0, 4);
    const Members* m = FindMembers(r.id);
    if (m == nullptr) return Result<OpenResult>(Status(ErrorCode::kInternal, "conversation vanished"));
    r.members = m->members;
    return Result<OpenResult>(OpenResult{std::move(r), false, {}});
  };
  if (auto found = existing()) return std::move(*found);
  // Claim the pair first: another node opening the same pair waits here on
  // the key and then finds the conversation (ON CONFLICT DO NOTHING).
  PgRows conv = db_->Query(
      "INSERT INTO conversations(last_seq, created_at, last_activity_at) VALUES(0, $1, $1) RETURNING id",
      PgParams().Int(now));
  if (conv.empty()) return Status(ErrorCode::kInternal, "cannot create conversation");
  const ConversationId id = conv.Int(0, 0);
  PgRows claimed = db_->Query(
      "INSERT INTO direct_conversations(low_user_id, high_user_id, conversation_id) VALUES($1, $2, $3) "
      "ON CONFLICT DO NOTHING RETURNING conversation_id",
      PgParams().Int(low).Int(high).Int(id));
  if (claimed.empty()) {
    if (db_->failed()) return Status(ErrorCode::kInternal, "cannot create conversation");
    // Another node won the race; drop ours (the batch stays consistent).
    db_->Defer("DELETE FROM conversations WHERE id = $1", PgParams().Int(id));
    if (auto found = existing()) return std::move(*found);
    return Status(ErrorCode::kInternal, "conversation vanished");
  }
  ConversationRecord r;
  r.id = id;
  r.created_at = now;
  r.last_activity_at = now;
  r.members = {MemberRecord{low, low == a ? *name_a : *name_b}, MemberRecord{high, high == a ? *name_a : *name_b}};
  for (const MemberRecord& m : r.members) {
    db_->Defer("INSERT INTO members(conversation_id, user_id, last_activity_at) VALUES($1, $2, $3)",
               PgParams().Int(id).Int(m.user_id).Int(now));
  }
  OpenResult result;
  result.created = true;
  result.positions = AppendEvents({low, high}, EventKind::kConversation, id, 0, 0, {}, now);
  members_.insert_or_assign(id, Members{r.members});
  result.conversation = std::move(r);
  return result;
}

Result<AppendResult> PostgresStore::Writer::AppendMessage(const NewMessage& msg) {
  const Members* c = FindMembers(msg.conversation_id);
  if (c == nullptr) return Status(ErrorCode::kUnknownConversation, "unknown conversation");
  if (!IsMember(*c, msg.sender_id)) return Status(ErrorCode::kNotMember, "sender is not a member");
  std::vector<int64_t> others;
  for (const MemberRecord& m : c->members) {
    if (m.user_id != msg.sender_id) others.push_back(m.user_id);
  }
  // One round trip (pipelined with the batch's earlier writes). First the
  // locks, each in a statement of its own: the conversation's row, which
  // orders appends from every node, and the sender's receipt row (created
  // if missing), which orders this append with the sender's receipts on any
  // node. Then, in a statement that starts once both are held (and so, under
  // READ COMMITTED, reads everything their previous holders committed): the
  // duplicate, if any; who blocks whom; and the seqs withheld from the sender
  // that the new message's seq newly covers, for the sender's stream (above
  // its delivered watermark) and the other member's (above `announced`; see
  // SqliteStore). Reading those
  // in the locking statement itself would read the sender's delivered
  // watermark as of before the wait: two nodes appending the sender's
  // messages at once would both list the same withheld seqs (found by
  // chaos_cluster_short: `receipt_leaks`, "listed again"). A duplicate
  // committed by another node while this waited for the lock is seen here
  // too, or caught by the unique key, and the batch is retried (it then
  // takes the duplicate path).
  db_->Defer("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE", PgParams().Int(msg.conversation_id));
  db_->Defer(
      "INSERT INTO user_receipts(conversation_id, user_id, delivered, read) VALUES($1, $2, 0, 0) "
      "ON CONFLICT DO NOTHING",
      PgParams().Int(msg.conversation_id).Int(msg.sender_id));
  db_->Defer("SELECT 1 FROM user_receipts WHERE conversation_id = $1 AND user_id = $2 FOR UPDATE",
             PgParams().Int(msg.conversation_id).Int(msg.sender_id));
  PgRows st = db_->Query(
      "SELECT c.last_seq, d.seq, d.sender_device_id, d.client_id, d.body, d.created_at, "
      "EXISTS(SELECT 1 FROM blocks b WHERE b.owner_id = $2 AND b.target_id = ANY($4::bigint[])), "
      "ARRAY(SELECT b.owner_id FROM blocks b WHERE b.target_id = $2 AND b.owner_id = ANY($4::bigint[])), "
      "ARRAY(SELECT w.seq FROM withheld w WHERE w.conversation_id = $1 AND w.user_id = $2 AND w.hidden_at = 0 "
      "  AND w.seq > r.announced AND w.seq <= c.last_seq + 1 ORDER BY w.seq), "
      "EXISTS(SELECT 1 FROM drafts dr WHERE dr.user_id = $2 AND dr.conversation_id = $1), r.delivered, "
      "c.disappearing_s, d.expires_at, d.version, d.edited_at, d.deleted_at, d.cold "
      "FROM conversations c JOIN user_receipts r ON r.conversation_id = c.id AND r.user_id = $2 "
      "LEFT JOIN messages d ON d.conversation_id = c.id AND d.sender_id = $2 "
      "AND d.client_id = $3 WHERE c.id = $1",
      PgParams().Int(msg.conversation_id).Int(msg.sender_id).Text(msg.client_id).IntArray(others));
  if (st.empty()) {
    if (db_->failed()) return Status(ErrorCode::kInternal, "store error");
    return Status(ErrorCode::kUnknownConversation, "unknown conversation");
  }
  const Seq last_seq = st.Int(0, 0);
  if (!st.IsNull(0, 1)) {
    MessageRecord dup;
    dup.conversation_id = msg.conversation_id;
    dup.seq = st.Int(0, 1);
    dup.sender_id = msg.sender_id;
    dup.sender_device_id = st.Int(0, 2);
    dup.client_id = st.Text(0, 3);
    dup.body = st.Text(0, 4);
    dup.created_at = st.Int(0, 5);
    dup.expires_at = st.Int(0, 12);
    dup.version = st.Int(0, 13);
    dup.edited_at = st.Int(0, 14);
    dup.deleted_at = st.Int(0, 15);
    // A retried send of a compacted message: its original ack, text included.
    if (st.Bool(0, 16)) {
      if (Status s = cold_.Fill(*db_, {ColdText{dup.conversation_id, dup.seq, &dup.body}}, /*lock_rows=*/true);
          !s.ok())
        return s;
    }
    return AppendResult{std::move(dup), true, {}, {}, std::nullopt};
  }
  // Blocking: the sender may not reach a member they block; a member who
  // blocks the sender does not see the message.
  if (st.Bool(0, 6)) return Status(ErrorCode::kBlocked, "the sender blocks a member; unblock first");
  const std::vector<int64_t> blockers = st.IntArray(0, 7);
  const std::vector<Seq> unannounced = st.IntArray(0, 8);
  const bool had_draft = st.Bool(0, 9);
  const std::vector<Seq> own = SeqsAbove(unannounced, st.Int(0, 10));

  AppendResult result;
  MessageRecord& m = result.message;
  m.conversation_id = msg.conversation_id;
  m.seq = last_seq + 1;
  m.sender_id = msg.sender_id;
  m.sender_device_id = msg.sender_device_id;
  m.client_id = msg.client_id;
  m.body = msg.body;
  m.created_at = msg.now;
  m.expires_at = ExpiresAt(std::max(batch_now_, msg.now), st.Int(0, 11), msg.max_age_ms);
  db_->Defer(fmt::format("INSERT INTO messages({}, accepted_at, stored_at, expires_at) "
                         "VALUES($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                         kMessageColumns),
             PgParams()
                 .Int(m.conversation_id)
                 .Int(m.seq)
                 .Int(m.sender_id)
                 .Int(m.sender_device_id)
                 .Text(m.client_id)
                 .Text(m.body)
                 .Int(m.created_at)
                 .Int(msg.accepted_at != 0 ? msg.accepted_at : msg.now)
                 .Int(std::max(batch_now_, msg.now))
                 .Int(m.expires_at));
  // A conversation without a hot message (hot_since 0: its first message,
  // or the first after all was compacted) starts its next round of
  // compaction with this one (see "Cold tier"); otherwise hot_since keeps
  // its value and the update stays HOT.
  db_->Defer(
      "UPDATE conversations SET last_seq = $2, last_activity_at = $3, "
      "hot_since = CASE WHEN hot_since = 0 THEN $4 ELSE hot_since END WHERE id = $1",
      PgParams().Int(m.conversation_id).Int(m.seq).Int(msg.now).Int(m.created_at));
  QueueSearch(m.conversation_id, m.seq, std::max(batch_now_, msg.now));
  std::vector<int64_t> visible;
  std::vector<std::vector<Seq>> lists;
  for (const MemberRecord& member : c->members) {
    if (std::find(blockers.begin(), blockers.end(), member.user_id) != blockers.end()) {
      db_->Defer("INSERT INTO withheld(conversation_id, user_id, seq) VALUES($1, $2, $3)",
                 PgParams().Int(m.conversation_id).Int(member.user_id).Int(m.seq));
    } else {
      visible.push_back(member.user_id);
      // Nothing to list (the usual send): no lists, one statement.
      if (!unannounced.empty()) lists.push_back(member.user_id == m.sender_id ? own : unannounced);
    }
  }
  const bool announced = visible.size() > 1;
  db_->Defer(
      "UPDATE members SET last_activity_at = $3 WHERE conversation_id = $1 AND user_id = ANY($2::bigint[])",
      PgParams().Int(m.conversation_id).IntArray(visible).Int(msg.now));
  // Sending means the sender has seen everything up to their own message
  // (the row exists: it was locked above).
  db_->Defer(
      "UPDATE user_receipts SET delivered = GREATEST(delivered, $3), read = GREATEST(read, $3), "
      "announced = GREATEST(announced, $4) WHERE conversation_id = $1 AND user_id = $2",
      PgParams().Int(m.conversation_id).Int(m.sender_id).Int(m.seq).Int(announced ? m.seq : 0));
  result.positions =
      AppendEventsWithheld(visible, lists, EventKind::kMessage, m.conversation_id, m.seq, 0, {}, msg.now);
  result.withheld = std::move(lists);
  ClearIfNoneListed(result.withheld);
  // Sending clears the sender's draft (SetDraft locks the conversation too,
  // so none can appear between the read above and this delete).
  if (had_draft) {
    db_->Defer("DELETE FROM drafts WHERE user_id = $1 AND conversation_id = $2",
               PgParams().Int(m.sender_id).Int(m.conversation_id));
    result.draft_cleared = AppendEvent(m.sender_id, EventKind::kDraft, m.conversation_id, 0, 0, {}, msg.now);
  }
  return result;
}

Result<ReceiptResult> PostgresStore::Writer::UpdateReceipt(const ReceiptUpdate& update) {
  const Members* c = FindMembers(update.conversation_id);
  if (c == nullptr) return Status(ErrorCode::kUnknownConversation, "unknown conversation");
  if (!IsMember(*c, update.user_id)) return Status(ErrorCode::kNotMember, "not a member");
  if (db_->Query("SELECT 1 FROM devices WHERE id = $1 AND user_id = $2 AND NOT revoked",
                 PgParams().Int(update.device_id).Int(update.user_id))
          .empty()) {
    return Status(ErrorCode::kUnknownDevice, "no such live device of this user");
  }
  // The user's aggregate row, created if missing and locked: receipt changes
  // of one user in one conversation are decided one at a time, on any node.
  db_->Defer(
      "INSERT INTO user_receipts(conversation_id, user_id, delivered, read) VALUES($1, $2, 0, 0) "
      "ON CONFLICT DO NOTHING",
      PgParams().Int(update.conversation_id).Int(update.user_id));
  PgRows state = db_->Query(
      // Clamped to the last seq the user may see (as SqliteStore): their
      // watermark never passes messages withheld from them while those are
      // the newest, which would reveal the block to the sender.
      std::string("SELECT r.delivered, r.read, COALESCE(") + kLastVisibleSeqSql +
          ", 0), COALESCE(d.delivered, 0), COALESCE(d.read, 0), r.announced "
      "FROM user_receipts r JOIN conversations c ON c.id = r.conversation_id "
      "LEFT JOIN device_receipts d ON d.device_id = $3 AND d.conversation_id = r.conversation_id "
      "WHERE r.conversation_id = $1 AND r.user_id = $2 FOR UPDATE OF r",
      PgParams().Int(update.conversation_id).Int(update.user_id).Int(update.device_id));
  if (state.empty()) return Status(ErrorCode::kInternal, "receipt state missing");
  const Watermarks aggregate{state.Int(0, 0), state.Int(0, 1)};
  const Seq last_seq = state.Int(0, 2);
  const Watermarks device{state.Int(0, 3), state.Int(0, 4)};
  const Seq announced = state.Int(0, 5);
  Seq read = std::clamp<Seq>(update.read, 0, last_seq);
  Seq delivered = std::clamp<Seq>(std::max(update.delivered, read), 0, last_seq);

  Watermarks new_device{std::max(device.delivered, delivered), std::max(device.read, read)};
  if (new_device.delivered != device.delivered || new_device.read != device.read) {
    db_->Defer(
        "INSERT INTO device_receipts(device_id, conversation_id, delivered, read) VALUES($1, $2, $3, $4) "
        "ON CONFLICT(device_id, conversation_id) DO UPDATE SET delivered = GREATEST(device_receipts.delivered, "
        "excluded.delivered), read = GREATEST(device_receipts.read, excluded.read)",
        PgParams().Int(update.device_id).Int(update.conversation_id).Int(new_device.delivered).Int(new_device.read));
    // The timeline's source: every move of a device's watermarks, with its time.
    db_->Defer(
        "INSERT INTO receipt_log(conversation_id, device_id, delivered, read, at) VALUES($1, $2, $3, $4, $5) "
        "ON CONFLICT DO NOTHING",
        PgParams()
            .Int(update.conversation_id)
            .Int(update.device_id)
            .Int(new_device.delivered)
            .Int(new_device.read)
            .Int(update.now));
  }
  ReceiptResult result;
  result.aggregate = Watermarks{std::max(aggregate.delivered, new_device.delivered),
                                std::max(aggregate.read, new_device.read)};
  if (result.aggregate.delivered == aggregate.delivered && result.aggregate.read == aggregate.read) return result;

  result.changed = true;
  result.read_changed = result.aggregate.read != aggregate.read;
  db_->Defer(
      "UPDATE user_receipts SET delivered = $3, read = $4, announced = $3 WHERE conversation_id = $1 AND user_id = $2",
      PgParams()
          .Int(update.conversation_id)
          .Int(update.user_id)
          .Int(result.aggregate.delivered)
          .Int(result.aggregate.read));
  // As SqliteStore: the user's own stream lists what is above its old
  // delivered watermark, the other member's what is above `announced`.
  const std::vector<Seq> unannounced =
      WithheldBetween(update.conversation_id, update.user_id, announced, result.aggregate.delivered);
  const std::vector<Seq> own = SeqsAbove(unannounced, aggregate.delivered);
  std::vector<UserId> members;
  for (const MemberRecord& member : c->members) {
    members.push_back(member.user_id);
    if (!unannounced.empty()) result.withheld.push_back(member.user_id == update.user_id ? own : unannounced);
  }
  result.positions = AppendEventsWithheld(members, result.withheld, EventKind::kReceipt, update.conversation_id, 0,
                                          update.user_id, result.aggregate, update.now);
  ClearIfNoneListed(result.withheld);
  return result;
}

// Edits and deletes (issue 12), as SqliteStore::Writer::ChangeMessage. The
// message's row lock (FOR UPDATE) orders changes to one message across
// nodes; a second edit with the same client id committed by another node
// meanwhile hits the unique key and the batch is retried (then a duplicate).
Result<ChangeResult> PostgresStore::Writer::ChangeMessage(const MessageChange& change) {
  const Members* c = FindMembers(change.conversation_id);
  if (c == nullptr) return Status(ErrorCode::kUnknownConversation, "unknown conversation");
  if (!IsMember(*c, change.user_id)) return Status(ErrorCode::kNotMember, "not a member");
  std::vector<int64_t> member_ids;
  for (const MemberRecord& member : c->members) member_ids.push_back(member.user_id);
  PgRows st = db_->Query(
      "SELECT " PARLEY_MESSAGE_COLUMNS ", "
      "(SELECT w.hidden_at FROM withheld w WHERE w.conversation_id = $1 AND w.user_id = $3 AND w.seq = $2), "
      "(SELECT x.version FROM message_edits x WHERE x.conversation_id = $1 AND x.seq = $2 AND x.client_id = $4), "
      "(SELECT x.created_at FROM message_edits x WHERE x.conversation_id = $1 AND x.seq = $2 AND x.client_id = $4), "
      "ARRAY(SELECT u FROM unnest($5::bigint[]) AS u WHERE EXISTS (SELECT 1 FROM withheld w "
      "  WHERE w.conversation_id = $1 AND w.user_id = u AND w.seq = $2)) "
      "FROM messages m WHERE m.conversation_id = $1 AND m.seq = $2 FOR UPDATE OF m",
      PgParams().Int(change.conversation_id).Int(change.seq).Int(change.user_id).Text(change.client_id).IntArray(
          member_ids));
  if (st.empty()) {
    if (db_->failed()) return Status(ErrorCode::kInternal, "store error");
    return Status(ErrorCode::kUnknownMessage, "no message with this seq in the conversation");
  }
  ChangeResult result;
  result.message = MessageAt(st, 0, 0);
  MessageRecord& m = result.message;
  constexpr int kX = kMessageColumnCount;
  const bool withheld_row = !st.IsNull(0, kX);
  const int64_t hidden_at = withheld_row ? st.Int(0, kX) : 0;
  // Withheld by a block: to this user the message does not exist.
  if (withheld_row && hidden_at == 0)
    return Status(ErrorCode::kUnknownMessage, "no message with this seq in the conversation");
  const auto kind = static_cast<protocol::ChangeKind>(change.kind);
  const bool earlier_edit = !st.IsNull(0, kX + 1);
  const std::vector<int64_t> invisible = st.IntArray(0, kX + 3);
  if (Status s = DecideStoredChange(change, m, hidden_at, earlier_edit ? st.Int(0, kX + 1) : 0,
                                    earlier_edit ? st.Int(0, kX + 2) : 0, &result);
      !s.ok())
    return s;
  // A duplicate and a delete for me answer with the message as stored: a
  // compacted text is paged in (under the row lock taken above).
  if ((result.duplicate || kind == protocol::ChangeKind::kDeleteForMe) && ColdAt(st, 0, 0)) {
    if (Status s = cold_.Fill(*db_, {ColdText{m.conversation_id, m.seq, &m.body}}, /*lock_rows=*/true); !s.ok())
      return s;
  }
  if (result.duplicate) return result;
  const int64_t version = result.version;
  if (kind == protocol::ChangeKind::kDeleteForMe) {
    db_->Defer("INSERT INTO withheld(conversation_id, user_id, seq, hidden_at) VALUES($1, $2, $3, $4)",
               PgParams().Int(change.conversation_id).Int(change.user_id).Int(change.seq).Int(change.now));
    result.positions.push_back(
        AppendEvent(change.user_id, EventKind::kDeleteForMe, change.conversation_id, change.seq, 0, {}, change.now));
    return result;
  }
  const EventKind event = kind == protocol::ChangeKind::kEdit ? EventKind::kEdit : EventKind::kDelete;
  if (kind == protocol::ChangeKind::kEdit) {
    db_->Defer(
        "INSERT INTO message_edits(conversation_id, seq, version, client_id, editor_device_id, body, created_at) "
        "VALUES($1, $2, $3, $4, $5, $6, $7)",
        PgParams()
            .Int(change.conversation_id)
            .Int(change.seq)
            .Int(version)
            .Text(change.client_id)
            .Int(change.device_id)
            .Text(change.body)
            .Int(change.now));
    // The row wins over a block (see "Cold tier"): the new text goes into
    // the row, and a block's copy is an old version from now on.
    db_->Defer(
        "UPDATE messages SET body = $3, cold = false, version = $4, edited_at = $5 "
        "WHERE conversation_id = $1 AND seq = $2",
        PgParams().Int(change.conversation_id).Int(change.seq).Text(change.body).Int(version).Int(change.now));
  } else {
    // A tombstone: the row keeps its seq; every text of the message goes
    // (a cold copy leaves its block at the purge).
    db_->Defer(
        "UPDATE messages SET body = '', cold = false, version = $3, deleted_at = $4 "
        "WHERE conversation_id = $1 AND seq = $2",
        PgParams().Int(change.conversation_id).Int(change.seq).Int(version).Int(change.now));
    db_->Defer("UPDATE message_edits SET body = '', cold = false WHERE conversation_id = $1 AND seq = $2",
               PgParams().Int(change.conversation_id).Int(change.seq));
  }
  QueueSearch(change.conversation_id, change.seq, change.now);
  ApplyStoredChange(change, version, &m);
  // Every member the message is visible to: not withheld from them by a
  // block, not deleted by them for themselves.
  std::vector<UserId> visible;
  for (const MemberRecord& member : c->members) {
    if (std::find(invisible.begin(), invisible.end(), member.user_id) == invisible.end())
      visible.push_back(member.user_id);
  }
  result.positions =
      AppendEvents(visible, event, change.conversation_id, change.seq, 0, Watermarks{version, 0}, change.now);
  return result;
}

Result<SocialResult> PostgresStore::Writer::SetProfile(UserId user_id, const std::optional<std::string>& display_name,
                                                       const std::optional<std::string>& about, int64_t now) {
  // Locks the user's row: two nodes changing one profile apply in turn.
  PgRows cur = db_->Query(
      "SELECT id, username, display_name, about, profile_updated_at FROM users WHERE id = $1 FOR UPDATE",
      PgParams().Int(user_id));
  if (cur.empty()) return Status(ErrorCode::kUnknownUser, "unknown user");
  const ProfileRecord old = ProfileAt(cur, 0, 0);
  SocialResult result;
  result.profile = old;
  ProfileRecord& p = result.profile;
  if (display_name) p.display_name = *display_name;
  if (about) p.about = *about;
  if (p.display_name == old.display_name && p.about == old.about) return result;
  result.changed = true;
  p.updated_at = now;
  db_->Defer("UPDATE users SET display_name = $2, about = $3, profile_updated_at = $4 WHERE id = $1",
             PgParams().Int(user_id).Text(p.display_name).Text(p.about).Int(now));
  if (p.display_name != old.display_name) {
    IndexName(user_id, p.username, old.display_name, /*add=*/false);
    IndexName(user_id, p.username, p.display_name, /*add=*/true);
  }
  // Audience: the user, everyone sharing a conversation with them, everyone
  // who has them as a contact; minus whom the user blocks. Ascending id.
  PgRows audience = db_->Query(
      "SELECT $1::bigint AS id UNION "
      "SELECT o.user_id FROM members m JOIN members o ON o.conversation_id = m.conversation_id "
      "WHERE m.user_id = $1 AND o.user_id <> $1 UNION "
      "SELECT owner_id FROM contacts WHERE contact_id = $1 "
      "EXCEPT SELECT target_id FROM blocks WHERE owner_id = $1 ORDER BY 1",
      PgParams().Int(user_id));
  std::vector<UserId> to;
  for (int i = 0; i < audience.size(); ++i) to.push_back(audience.Int(i, 0));
  result.positions = AppendEvents(to, EventKind::kProfile, 0, 0, user_id, {}, now, nullptr, &p);
  return result;
}

SocialResult PostgresStore::Writer::AppendSocialEvent(UserId owner, EventKind kind, const ProfileRecord& subject,
                                                      bool flag, int64_t now) {
  SocialResult result;
  result.changed = true;
  result.profile = subject;
  result.positions.push_back(
      AppendEvent(owner, kind, 0, 0, subject.user_id, Watermarks{flag ? 1 : 0, 0}, now, nullptr, &subject));
  return result;
}

Result<SocialResult> PostgresStore::Writer::AddContact(UserId owner, UserId contact, int64_t now) {
  if (owner == contact) return Status(ErrorCode::kSelfContact, "cannot add oneself as a contact");
  std::optional<ProfileRecord> subject = ProfileFor(contact, owner);
  if (!subject || !Username(owner)) return Status(ErrorCode::kUnknownUser, "unknown user");
  PgRows added = db_->Query(
      "INSERT INTO contacts(owner_id, contact_id, added_at) VALUES($1, $2, $3) ON CONFLICT DO NOTHING RETURNING 1",
      PgParams().Int(owner).Int(contact).Int(now));
  if (added.empty()) {
    if (db_->failed()) return Status(ErrorCode::kInternal, "store error");
    return Status(ErrorCode::kAlreadyContact, "already a contact");
  }
  return AppendSocialEvent(owner, EventKind::kContact, *subject, true, now);
}

Result<SocialResult> PostgresStore::Writer::RemoveContact(UserId owner, UserId contact, int64_t now) {
  PgRows removed = db_->Query("DELETE FROM contacts WHERE owner_id = $1 AND contact_id = $2 RETURNING 1",
                              PgParams().Int(owner).Int(contact));
  if (removed.empty()) {
    if (db_->failed()) return Status(ErrorCode::kInternal, "store error");
    return Status(ErrorCode::kNotContact, "not a contact");
  }
  std::optional<ProfileRecord> subject = ProfileFor(contact, owner);
  if (!subject) return Status(ErrorCode::kInternal, "contact vanished");
  return AppendSocialEvent(owner, EventKind::kContact, *subject, false, now);
}

Result<SocialResult> PostgresStore::Writer::Block(UserId owner, UserId target, int64_t now) {
  if (owner == target) return Status(ErrorCode::kSelfBlock, "cannot block oneself");
  std::optional<ProfileRecord> subject = ProfileFor(target, owner);
  if (!subject || !Username(owner)) return Status(ErrorCode::kUnknownUser, "unknown user");
  // The target keeps the owner's profile as it is now.
  PgRows added = db_->Query(
      "INSERT INTO blocks(owner_id, target_id, created_at, shown_display_name, shown_about, shown_updated_at) "
      "SELECT id, $2, $3, display_name, about, profile_updated_at FROM users WHERE id = $1 "
      "ON CONFLICT DO NOTHING RETURNING 1",
      PgParams().Int(owner).Int(target).Int(now));
  if (added.empty()) {
    if (db_->failed()) return Status(ErrorCode::kInternal, "store error");
    return Status(ErrorCode::kAlreadyBlocked, "already blocked");
  }
  return AppendSocialEvent(owner, EventKind::kBlock, *subject, true, now);
}

Result<SocialResult> PostgresStore::Writer::Unblock(UserId owner, UserId target, int64_t now) {
  // The profile as the owner saw it while blocking, read before the row goes.
  if (!Blocks(owner, target)) return Status(ErrorCode::kNotBlocked, "not blocked");
  std::optional<ProfileRecord> subject = ProfileFor(target, owner);
  if (!subject) return Status(ErrorCode::kInternal, "blocked user vanished");
  // The profile the target kept during the block, and the current one.
  std::optional<ProfileRecord> kept = ProfileFor(owner, target);
  std::optional<ProfileRecord> current = Profile(owner);
  const bool missed = kept && current &&
                      (kept->display_name != current->display_name || kept->about != current->about) &&
                      InProfileAudience(owner, target);
  db_->Defer("DELETE FROM blocks WHERE owner_id = $1 AND target_id = $2", PgParams().Int(owner).Int(target));
  SocialResult result = AppendSocialEvent(owner, EventKind::kBlock, *subject, false, now);
  if (missed) {
    // The owner changed their profile during the block: the target gets the
    // kProfile event it missed (store.h, "Profiles under a block").
    result.target_profile = *current;
    result.target_position = AppendEvent(target, EventKind::kProfile, 0, 0, owner, {}, now, nullptr, &*current);
  }
  return result;
}

Result<std::vector<DeviceId>> PostgresStore::Writer::ChangePassword(UserId user_id, const std::string& new_hash,
                                                                    DeviceId keep_device) {
  if (!Username(user_id)) return Status(ErrorCode::kUnknownUser, "unknown user");
  db_->Defer("UPDATE users SET password_hash = $2 WHERE id = $1", PgParams().Int(user_id).Text(new_hash));
  std::vector<DeviceId> revoked;
  PgRows rows = db_->Query("SELECT id FROM devices WHERE user_id = $1 AND NOT revoked AND id <> $2 ORDER BY id",
                           PgParams().Int(user_id).Int(keep_device));
  for (int i = 0; i < rows.size(); ++i) revoked.push_back(rows.Int(i, 0));
  for (DeviceId id : revoked) Revoke(id);
  return revoked;
}

Result<std::vector<BulkUserResult>> PostgresStore::Writer::BulkCreateUsers(const std::vector<NewBulkUser>& users,
                                                                           int64_t now) {
  // Check everything first (one query per list), so a failure writes nothing.
  {
    std::unordered_set<std::string_view> seen;
    seen.reserve(users.size());
    std::string array = "{";
    for (size_t i = 0; i < users.size(); ++i) {
      if (i > 0) array += ',';
      array += '"';
      for (char ch : users[i].username) {
        if (ch == '"' || ch == '\\') array += '\\';
        array += ch;
      }
      array += '"';
    }
    array += '}';
    PgRows taken = db_->Query("SELECT username FROM users WHERE username = ANY($1::text[])", PgParams().Text(array));
    std::unordered_set<std::string> taken_names;
    for (int i = 0; i < taken.size(); ++i) taken_names.insert(taken.Text(i, 0));
    std::vector<std::string_view> tokens;
    for (const NewBulkUser& u : users) {
      // The first name in input order that is taken, by the directory or by
      // an earlier entry of the list.
      if (taken_names.count(u.username) > 0 || !seen.insert(u.username).second) {
        return Status(ErrorCode::kUsernameTaken, fmt::format("username {} is taken", u.username));
      }
      if (!u.token_hash.empty()) tokens.push_back(u.token_hash);
    }
    std::sort(tokens.begin(), tokens.end());
    if (std::adjacent_find(tokens.begin(), tokens.end()) != tokens.end()) {
      return Status(ErrorCode::kInternal, "device token hash repeated in the list");
    }
    for (std::string_view token : tokens) {
      if (!db_->Query("SELECT 1 FROM devices WHERE token_hash = $1", PgParams().Bytes(token)).empty()) {
        return Status(ErrorCode::kInternal, "device token hash already in use");
      }
    }
  }
  std::vector<BulkUserResult> results;
  results.reserve(users.size());
  for (const NewBulkUser& u : users) {
    BulkUserResult r;
    PgRows user = db_->Query(
        "INSERT INTO users(username, password_hash, created_at, display_name, profile_updated_at) "
        "VALUES($1, $2, $3, $4, $5) RETURNING id",
        PgParams().Text(u.username).Text(u.password_hash).Int(now).Text(u.display_name).Int(
            u.display_name.empty() ? 0 : now));
    r.user_id = user.empty() ? 0 : user.Int(0, 0);
    if (!u.display_name.empty()) IndexName(r.user_id, u.username, u.display_name, /*add=*/true);
    if (!u.token_hash.empty()) {
      PgRows dev = db_->Query(
          "INSERT INTO devices(user_id, name, platform, token_hash, created_at, last_seen_at, cursor, revoked) "
          "VALUES($1, $2, 'bulk', $3, $4, $4, 0, false) RETURNING id",
          PgParams().Int(r.user_id).Text(u.device_name).Bytes(u.token_hash).Int(now));
      r.device_id = dev.empty() ? 0 : dev.Int(0, 0);
    }
    results.push_back(r);
  }
  return results;
}

Result<SocialResult> PostgresStore::Writer::SetPresenceVisibility(UserId user_id, PresenceVisibility visibility,
                                                                  int64_t now) {
  // Locks the user's row: changes from several nodes apply in turn.
  PgRows cur = db_->Query(
      "SELECT id, username, display_name, about, profile_updated_at, presence_visibility FROM users WHERE id = $1 "
      "FOR UPDATE",
      PgParams().Int(user_id));
  if (cur.empty()) return Status(ErrorCode::kUnknownUser, "unknown user");
  SocialResult result;
  result.profile = ProfileAt(cur, 0, 0);
  if (cur.Int(0, 5) == static_cast<int64_t>(visibility)) return result;
  db_->Defer("UPDATE users SET presence_visibility = $2 WHERE id = $1",
             PgParams().Int(user_id).Int(static_cast<int64_t>(visibility)));
  result.changed = true;
  // The setting travels in `delivered`, as in SqliteStore.
  result.positions.push_back(AppendEvent(user_id, EventKind::kPrivacy, 0, 0, user_id,
                                         Watermarks{static_cast<int64_t>(visibility), 0}, now));
  return result;
}

Result<DisableResult> PostgresStore::Writer::SetUserDisabled(UserId user_id, bool disabled, bool revoke_devices) {
  PgRows r = db_->Query("SELECT disabled FROM users WHERE id = $1 FOR UPDATE", PgParams().Int(user_id));
  if (r.empty()) {
    if (db_->failed()) return Status(ErrorCode::kInternal, "store error");
    return Status(ErrorCode::kUnknownUser, "unknown user");
  }
  DisableResult result;
  result.changed = r.Bool(0, 0) != disabled;
  if (result.changed) db_->Defer("UPDATE users SET disabled = $2 WHERE id = $1", PgParams().Int(user_id).Bool(disabled));
  if (revoke_devices) result.revoked = RevokeLiveDevices(user_id);
  return result;
}

// As SqliteStore::Writer::EraseAccount.
Result<EraseResult> PostgresStore::Writer::EraseAccount(UserId user_id, int64_t now) {
  PgRows u = db_->Query("SELECT username FROM users WHERE id = $1 FOR UPDATE", PgParams().Int(user_id));
  if (u.empty()) {
    if (db_->failed()) return Status(ErrorCode::kInternal, "store error");
    return Status(ErrorCode::kUnknownUser, "unknown user");
  }
  EraseResult result;
  result.username = u.Text(0, 0);
  result.erased_username = kErasedUsernamePrefix + std::to_string(user_id);
  PgRows p = db_->Query(
      "SELECT o.user_id FROM members m JOIN members o ON o.conversation_id = m.conversation_id "
      "WHERE m.user_id = $1 AND o.user_id <> $1 UNION SELECT owner_id FROM contacts WHERE contact_id = $1 "
      "UNION SELECT owner_id FROM blocks WHERE target_id = $1 UNION SELECT target_id FROM blocks WHERE owner_id = $1",
      PgParams().Int(user_id));
  std::vector<int64_t> peers;
  for (int i = 0; i < p.size(); ++i) peers.push_back(p.Int(i, 0));
  result.revoked = RevokeLiveDevices(user_id);
  // Each statement counts the rows it changed.
  auto count = [&](const std::string& change) {
    PgRows r = db_->Query("WITH c AS (" + change + " RETURNING 1) SELECT count(*) FROM c", PgParams().Int(user_id));
    return r.empty() ? int64_t{0} : r.Int(0, 0);
  };
  count("DELETE FROM receipt_log WHERE device_id IN (SELECT id FROM devices WHERE user_id = $1)");
  result.devices = count("UPDATE devices SET name = '', platform = '' WHERE user_id = $1");
  result.contacts = count("DELETE FROM contacts WHERE owner_id = $1 OR contact_id = $1");
  result.blocks = count("DELETE FROM blocks WHERE owner_id = $1 OR target_id = $1");
  result.drafts = count("DELETE FROM drafts WHERE user_id = $1");
  count("DELETE FROM push_mutes WHERE user_id = $1");
  count("DELETE FROM name_prefixes WHERE user_id = $1");
  result.stream_events = count("DELETE FROM user_events WHERE user_id = $1");
  db_->Defer(
      "UPDATE users SET username = $2, password_hash = '', display_name = '', about = '', profile_updated_at = $3, "
      "last_seen = 0, presence_visibility = $4, disabled = true WHERE id = $1",
      PgParams()
          .Int(user_id)
          .Text(result.erased_username)
          .Int(now)
          .Int(static_cast<int>(PresenceVisibility::kNobody)));
  db_->Defer(
      "UPDATE user_events SET profile_username = $3, profile_display_name = '', profile_about = '', "
      "profile_updated_at = $4 WHERE user_id = ANY($1::bigint[]) AND subject_user_id = $2 AND kind IN (4, 5, 6)",
      PgParams().IntArray(peers).Int(user_id).Text(result.erased_username).Int(now));
  // Cached members hold usernames.
  members_.clear();
  return result;
}

Result<Empty> PostgresStore::Writer::SetLastSeen(UserId user_id, int64_t last_seen) {
  // One statement; monotonic. The row count cannot tell "unknown" from "not
  // newer", so an unknown user is checked by the second statement.
  PgRows r = db_->Query(
      "WITH u AS (UPDATE users SET last_seen = $2 WHERE id = $1 AND last_seen < $2 AND NOT disabled RETURNING 1) "
      "SELECT EXISTS(SELECT 1 FROM u) OR EXISTS(SELECT 1 FROM users WHERE id = $1)",
      PgParams().Int(user_id).Int(last_seen));
  if (!db_->failed() && (r.empty() || !r.Bool(0, 0))) return Status(ErrorCode::kUnknownUser, "unknown user");
  return Empty{};
}

// ---------------------------------------------------------------------------
// Reads

void PostgresStore::Writer::QueueSearch(ConversationId conversation, Seq seq, int64_t now) {
  db_->Defer("INSERT INTO search_queue(conversation_id, seq, queued_at) VALUES($1, $2, $3)",
             PgParams().Int(conversation).Int(seq).Int(now));
}

Result<SearchIndexProgress> PostgresStore::Writer::IndexSearch(int max) {
  // Oldest first; entries another node has claimed are skipped.
  PgRows rows = db_->Query(
      "WITH q AS (SELECT conversation_id, seq, id FROM search_queue ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) "
      "SELECT q.conversation_id, q.seq, q.id, m.body, COALESCE(m.version, 0), m.deleted_at IS NULL OR m.deleted_at <> 0, "
      "COALESCE(m.purged_at, 0) <> 0, COALESCE(m.cold, false) "
      "FROM q LEFT JOIN messages m ON m.conversation_id = q.conversation_id AND m.seq = q.seq ORDER BY q.id",
      PgParams().Int(std::max(1, max)));
  // Compacted texts (a history queued again, or indexed late) are paged in
  // first, all in one query.
  std::vector<std::string> cold_bodies(static_cast<size_t>(rows.size()));
  std::vector<ColdText> cold;
  for (int i = 0; i < rows.size(); ++i) {
    if (rows.Bool(i, 7) && !rows.Bool(i, 5))
      cold.push_back(ColdText{rows.Int(i, 0), rows.Int(i, 1), &cold_bodies[static_cast<size_t>(i)]});
  }
  if (Status s = cold_.Fill(*db_, cold, /*lock_rows=*/true); !s.ok()) return s;
  std::vector<int64_t> ids;
  std::unordered_set<std::string> done;  // "conversation:seq" indexed by this step
  for (int i = 0; i < rows.size(); ++i) {
    ids.push_back(rows.Int(i, 2));
    const ConversationId conversation = rows.Int(i, 0);
    const Seq seq = rows.Int(i, 1);
    if (!done.insert(fmt::format("{}:{}", conversation, seq)).second) continue;
    if (rows.Bool(i, 6)) {
      // Purged (retention) before this entry was taken: it has no row.
      db_->Defer("DELETE FROM message_search WHERE conversation_id = $1 AND seq = $2",
                 PgParams().Int(conversation).Int(seq));
      continue;
    }
    std::string words;
    if (!rows.Bool(i, 5)) {
      for (const std::string& w :
           MessageWords(rows.Bool(i, 7) ? cold_bodies[static_cast<size_t>(i)] : rows.Text(i, 3))) {
        if (!words.empty()) words += ' ';
        words += w;
      }
    }
    // A deleted message keeps a row with no words and the delete's version,
    // so an older text indexed late by another node cannot come back.
    db_->Defer(
        "INSERT INTO message_search(conversation_id, seq, doc_id, version, words) "
        "VALUES($1, $2, $3, $4, array_to_tsvector(string_to_array($5, ' ')::text[])) "
        "ON CONFLICT (conversation_id, seq) DO UPDATE SET version = excluded.version, words = excluded.words "
        "WHERE message_search.version <= excluded.version",
        PgParams().Int(conversation).Int(seq).Int(rows.Int(i, 2)).Int(rows.Int(i, 4)).Text(words));
  }
  SearchIndexProgress progress;
  progress.indexed = static_cast<int>(ids.size());
  if (!ids.empty()) db_->Defer("DELETE FROM search_queue WHERE id = ANY($1::bigint[])", PgParams().IntArray(ids));
  PgRows left = db_->Query(
      "SELECT count(*), COALESCE((SELECT queued_at FROM search_queue ORDER BY id LIMIT 1), 0) FROM search_queue");
  if (!left.empty()) {
    progress.backlog = left.Int(0, 0);
    progress.oldest_queued_at = left.Int(0, 1);
  }
  return progress;
}

// ---- Retention (store.h "Retention"), as SqliteStore's ----

Result<SocialResult> PostgresStore::Writer::SetDisappearing(UserId user_id, ConversationId conversation_id,
                                                            int64_t seconds, int64_t now) {
  const Members* c = FindMembers(conversation_id);
  if (c == nullptr) return Status(ErrorCode::kUnknownConversation, "no such conversation");
  if (!IsMember(*c, user_id)) return Status(ErrorCode::kNotMember, "you are not a member of this conversation");
  SocialResult result;
  // The conversation's row lock orders this with sends on every node: a
  // message stored after it commits reads the new timer.
  PgRows r = db_->Query(
      "UPDATE conversations SET disappearing_s = $2 WHERE id = $1 AND disappearing_s <> $2 RETURNING 1",
      PgParams().Int(conversation_id).Int(seconds));
  if (r.empty()) {
    if (db_->failed()) return Status(ErrorCode::kInternal, "store error");
    return result;
  }
  result.changed = true;
  std::vector<UserId> to;
  for (const MemberRecord& m : c->members) to.push_back(m.user_id);
  result.positions =
      AppendEvents(to, EventKind::kDisappearing, conversation_id, 0, user_id, Watermarks{seconds, 0}, now);
  return result;
}

Result<ExpireProgress> PostgresStore::Writer::ExpireMessages(int64_t now, int max) {
  const int limit = std::max(1, max);
  // Oldest expiry first; rows another node is expiring are skipped.
  PgRows rows = db_->Query(
      "SELECT conversation_id, seq, sender_id FROM messages WHERE expires_at > 0 AND deleted_at = 0 "
      "AND expires_at <= $1 ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED",
      PgParams().Int(now).Int(static_cast<int64_t>(limit) + 1));
  if (db_->failed()) return Status(ErrorCode::kInternal, "store error");
  ExpireProgress progress;
  const int n = std::min(rows.size(), limit);
  progress.more = rows.size() > limit;
  for (int i = 0; i < n; ++i) {
    Result<ChangeResult> r = ChangeMessage(ExpiryDelete(rows.Int(i, 0), rows.Int(i, 1), rows.Int(i, 2), now));
    if (!r) return r.error();
    if (!r->duplicate) progress.expired.push_back(std::move(r).value());
  }
  return progress;
}

Result<PurgeProgress> PostgresStore::Writer::PurgeDeleted(int64_t deleted_before, int max) {
  // The third column: whether a compaction has passed the message (its text
  // may be in a block; a delete never moves a text into one).
  PgRows rows = db_->Query(
      "SELECT m.conversation_id, m.seq, m.seq <= c.cold_through FROM messages m "
      "JOIN conversations c ON c.id = m.conversation_id "
      "WHERE m.deleted_at > 0 AND m.purged_at = 0 AND m.deleted_at <= $1 "
      "ORDER BY m.deleted_at LIMIT $2 FOR UPDATE OF m SKIP LOCKED",
      PgParams().Int(deleted_before).Int(std::max(1, max)));
  if (db_->failed()) return Status(ErrorCode::kInternal, "store error");
  PurgeProgress progress;
  // Per conversation, ascending: the blocks are locked in one order (see
  // "Cold tier").
  std::map<ConversationId, std::vector<Seq>> cold;
  for (int i = 0; i < rows.size(); ++i) {
    const ConversationId conversation = rows.Int(i, 0);
    const Seq seq = rows.Int(i, 1);
    if (rows.Bool(i, 2)) cold[conversation].push_back(seq);
    PgRows edits = db_->Query("DELETE FROM message_edits WHERE conversation_id = $1 AND seq = $2 RETURNING 1",
                              PgParams().Int(conversation).Int(seq));
    progress.edits_removed += edits.size();
    // The indexer leaves a deleted message a row without words (so a late
    // old text cannot come back); the purge removes it. A late indexer on
    // another node could write it again: a search still checks deleted_at.
    PgRows search = db_->Query("DELETE FROM message_search WHERE conversation_id = $1 AND seq = $2 RETURNING 1",
                               PgParams().Int(conversation).Int(seq));
    progress.search_removed += search.size();
    db_->Defer("UPDATE messages SET body = '', purged_at = $3 WHERE conversation_id = $1 AND seq = $2",
               PgParams().Int(conversation).Int(seq).Int(std::max<int64_t>(1, batch_now_)));
    ++progress.purged;
  }
  for (const auto& [conversation, seqs] : cold) {
    Result<int64_t> removed = postgres::DropFromColdBlocks(*db_, cold_.codec(), conversation, seqs);
    if (!removed) return removed.error();
    progress.cold_removed += *removed;
  }
  PgRows left = db_->Query(
      "SELECT count(*) FROM messages WHERE deleted_at > 0 AND purged_at = 0 AND deleted_at <= $1",
      PgParams().Int(deleted_before));
  if (!left.empty()) progress.backlog = left.Int(0, 0);
  if (db_->failed()) return Status(ErrorCode::kInternal, "store error");
  return progress;
}

Result<TrimProgress> PostgresStore::Writer::TrimStreams(const TrimRequest& req) {
  // SKIP LOCKED: a user whose head row a send's batch or another node holds
  // is left for the next pass, so a trim never waits behind delivery.
  PgRows users = db_->Query(
      "SELECT user_id, head, stream_floor FROM user_heads WHERE user_id > $1 ORDER BY user_id LIMIT $2 "
      "FOR UPDATE SKIP LOCKED",
      PgParams().Int(req.after_user).Int(std::max(1, req.max_users)));
  if (db_->failed()) return Status(ErrorCode::kInternal, "store error");
  TrimProgress progress;
  int64_t budget = std::max(1, req.max_entries);
  for (int i = 0; i < users.size(); ++i) {
    if (budget == 0) {
      progress.more = true;
      break;
    }
    const UserId user = users.Int(i, 0);
    const UserSeq head = users.Int(i, 1);
    const UserSeq floor = users.Int(i, 2);
    ++progress.users_visited;
    progress.next_after_user = user;
    UserSeq limit = head;
    PgRows protect = db_->Query(
        "SELECT min(cursor) FROM devices WHERE user_id = $1 AND NOT revoked AND last_seen_at >= $2",
        PgParams().Int(user).Int(req.protect_seen_since));
    if (!protect.empty() && !protect.IsNull(0, 0)) limit = std::min(limit, protect.Int(0, 0));
    PgRows rows = db_->Query(
        "SELECT user_seq, created_at FROM user_events WHERE user_id = $1 AND user_seq >= $2 AND user_seq <= $3 "
        "ORDER BY user_seq LIMIT $4",
        PgParams().Int(user).Int(floor).Int(limit).Int(budget + 1));
    UserSeq to = floor - 1;
    bool budget_hit = false;
    int64_t taken = 0;
    for (int j = 0; j < rows.size(); ++j) {
      const UserSeq seq = rows.Int(j, 0);
      if (!req.Trimmable(seq, rows.Int(j, 1), head)) break;
      if (taken == budget) {
        budget_hit = true;
        break;
      }
      to = seq;
      ++taken;
    }
    if (to >= floor) {
      PgRows removed = db_->Query(
          "DELETE FROM user_events WHERE user_id = $1 AND user_seq >= $2 AND user_seq <= $3 RETURNING 1",
          PgParams().Int(user).Int(floor).Int(to));
      db_->Defer("UPDATE user_heads SET stream_floor = $2 WHERE user_id = $1 AND stream_floor < $2",
                 PgParams().Int(user).Int(to + 1));
      progress.trimmed += removed.size();
      budget -= std::min<int64_t>(budget, removed.size());
      ++progress.users_trimmed;
    }
    if (budget_hit) {
      progress.next_after_user = user - 1;
      progress.more = true;
      break;
    }
  }
  if (!progress.more && users.size() < std::max(1, req.max_users)) progress.next_after_user = 0;
  if (db_->failed()) return Status(ErrorCode::kInternal, "store error");
  return progress;
}

// ---- Cold tier (see "Cold tier") ----

Result<CompactProgress> PostgresStore::Writer::CompactMessages(const CompactRequest& req) {
  const int max = std::max(1, req.max_messages);
  CompactProgress progress;
  // A block that could pass the step's budget waits for the next step; the
  // first block of a step always goes, so every step progresses.
  auto out_of_budget = [&] { return progress.blocks > 0 && progress.messages + kColdBlockMessages > max; };
  // Candidates, oldest hot message first, unlocked: each is locked (or
  // skipped) only when the step comes to it, so a step holds no more
  // conversations than it compacts. One more than a step may visit tells
  // whether more are due.
  PgRows due = db_->Query(
      "SELECT id FROM conversations WHERE hot_since > 0 AND hot_since < $1 ORDER BY hot_since LIMIT $2",
      PgParams().Int(req.due_before).Int(static_cast<int64_t>(max) + 1));
  if (db_->failed()) return Status(ErrorCode::kInternal, "store error");
  struct Row {
    Seq seq;
    std::string body;
    bool live;  // not deleted, not cold already, has a text: goes into the block
  };
  for (int i = 0; i < due.size(); ++i) {
    if (i == max || out_of_budget()) {
      progress.more = true;
      break;
    }
    const ConversationId conversation = due.Int(i, 0);
    // Skipped if a batch (a send, a change) or another node's compaction
    // holds it; re-checked, since it may have been compacted meanwhile.
    PgRows c = db_->Query(
        "SELECT cold_through FROM conversations WHERE id = $1 AND hot_since > 0 AND hot_since < $2 "
        "FOR UPDATE SKIP LOCKED",
        PgParams().Int(conversation).Int(req.due_before));
    if (c.empty()) continue;
    Seq through = c.Int(0, 0);
    ++progress.conversations;
    bool find_next_hot = false;  // stopped before the conversation's end: read where its hot part starts
    int64_t next_hot = 0;        // created_at of the first message left hot (0: none)
    while (true) {
      if (out_of_budget()) {
        // Stopped mid-conversation: it stays due from `through` + 1.
        find_next_hot = true;
        progress.more = true;
        break;
      }
      // SKIP LOCKED: a message an expiry or a purge holds is not waited
      // for; seqs are gapless, so a skipped one shows as a gap, and the
      // block ends before it.
      PgRows r = db_->Query(
          "SELECT seq, body, created_at, deleted_at = 0 AND NOT cold AND body <> '' FROM messages "
          "WHERE conversation_id = $1 AND seq > $2 ORDER BY seq LIMIT $3 FOR UPDATE SKIP LOCKED",
          PgParams().Int(conversation).Int(through).Int(kColdBlockMessages));
      if (db_->failed()) return Status(ErrorCode::kInternal, "store error");
      std::vector<Row> rows;
      bool stop = false;
      for (int j = 0; j < r.size(); ++j) {
        const Seq seq = r.Int(j, 0);
        if (seq != through + 1 + static_cast<Seq>(rows.size())) {
          find_next_hot = true;  // a locked message: the rest waits for a later step
          stop = true;
          break;
        }
        if (r.Int(j, 2) >= req.stored_before) {
          next_hot = r.Int(j, 2);
          stop = true;
          break;
        }
        rows.push_back(Row{seq, r.Text(j, 1), r.Bool(j, 3)});
      }
      std::vector<ColdEntry> entries;
      for (Row& row : rows) {
        if (row.live) entries.push_back(ColdEntry{row.seq, std::move(row.body)});
      }
      if (!entries.empty()) {
        int64_t raw = 0;
        Result<std::string> packed = cold_.codec().Pack(entries.front().seq, entries, &raw);
        if (!packed) return packed.error();
        std::vector<int64_t> seqs;
        for (const ColdEntry& e : entries) seqs.push_back(e.seq);
        InsertBlock(BlockKind::kMessages, conversation, entries.front().seq, entries.back().seq,
                    static_cast<int64_t>(entries.size()), raw, *packed);
        db_->Defer("UPDATE messages SET body = '', cold = true WHERE conversation_id = $1 AND seq = ANY($2::bigint[])",
                   PgParams().Int(conversation).IntArray(seqs));
        ++progress.blocks;
        progress.messages += static_cast<int>(entries.size());
        progress.raw_bytes += raw;
        progress.compressed_bytes += static_cast<int64_t>(packed->size());
        if (Status s = CompactEdits(conversation, seqs, &progress); !s.ok()) return s;
      }
      if (!rows.empty()) through = rows.back().seq;
      if (stop || r.size() < kColdBlockMessages) break;
    }
    if (find_next_hot) {
      PgRows n = db_->Query(
          "SELECT created_at FROM messages WHERE conversation_id = $1 AND seq > $2 ORDER BY seq LIMIT 1",
          PgParams().Int(conversation).Int(through));
      if (!n.empty()) next_hot = n.Int(0, 0);
    }
    db_->Defer("UPDATE conversations SET cold_through = $2, hot_since = $3 WHERE id = $1",
               PgParams().Int(conversation).Int(through).Int(next_hot));
  }
  if (db_->failed()) return Status(ErrorCode::kInternal, "store error");
  return progress;
}

// The edits of the messages of a block being made (`seqs`, ascending) go
// into an edit block of the same range: the rows with a text (a deleted
// message's are empty already). The step holds the conversation and these
// messages' rows, so no edit, delete or expiry of them runs meanwhile (see
// "Cold tier").
Status PostgresStore::Writer::CompactEdits(ConversationId conversation, const std::vector<int64_t>& seqs,
                                           CompactProgress* progress) {
  PgRows r = db_->Query(
      "SELECT seq, version, body FROM message_edits WHERE conversation_id = $1 AND seq = ANY($2::bigint[]) "
      "AND NOT cold AND body <> '' ORDER BY seq, version",
      PgParams().Int(conversation).IntArray(seqs));
  if (db_->failed()) return Status(ErrorCode::kInternal, "store error");
  if (r.empty()) return Status::Ok();
  std::vector<ColdEditEntry> edits;
  std::vector<int64_t> edit_seqs, edit_versions;
  for (int i = 0; i < r.size(); ++i) {
    edits.push_back(ColdEditEntry{r.Int(i, 0), r.Int(i, 1), r.Text(i, 2)});
    edit_seqs.push_back(r.Int(i, 0));
    edit_versions.push_back(r.Int(i, 1));
  }
  int64_t raw = 0;
  Result<std::string> packed = cold_.codec().PackEdits(edits.front().seq, edits, &raw);
  if (!packed) return packed.error();
  InsertBlock(BlockKind::kEdits, conversation, edits.front().seq, edits.back().seq, static_cast<int64_t>(edits.size()),
              raw, *packed);
  db_->Defer(
      "UPDATE message_edits x SET body = '', cold = true FROM unnest($2::bigint[], $3::bigint[]) AS u(s, v) "
      "WHERE x.conversation_id = $1 AND x.seq = u.s AND x.version = u.v",
      PgParams().Int(conversation).IntArray(edit_seqs).IntArray(edit_versions));
  progress->edits += static_cast<int>(edits.size());
  progress->raw_bytes += raw;
  progress->compressed_bytes += static_cast<int64_t>(packed->size());
  return Status::Ok();
}

void PostgresStore::Writer::InsertBlock(BlockKind kind, ConversationId conversation, Seq first_seq, Seq last_seq,
                                        int64_t count, int64_t raw_bytes, const std::string& data) {
  // The two tables differ only in their name and count column: one complete,
  // fixed statement each, chosen here (nothing of the SQL is built).
  constexpr std::string_view kMessageBlockSql =
      "INSERT INTO message_blocks(conversation_id, first_seq, last_seq, messages, raw_bytes, created_at, nonce, data) "
      "VALUES($1, $2, $3, $4, $5, $6, $7, $8)";
  constexpr std::string_view kEditBlockSql =
      "INSERT INTO edit_blocks(conversation_id, first_seq, last_seq, edits, raw_bytes, created_at, nonce, data) "
      "VALUES($1, $2, $3, $4, $5, $6, $7, $8)";
  db_->Defer(kind == BlockKind::kMessages ? kMessageBlockSql : kEditBlockSql,
             PgParams()
                 .Int(conversation)
                 .Int(first_seq)
                 .Int(last_seq)
                 .Int(count)
                 .Int(raw_bytes)
                 .Int(batch_now_)
                 .Int(postgres::NewBlockNonce())
                 .Bytes(data));
}

class PostgresStore::Reader {
 public:
  explicit Reader(std::unique_ptr<PgConn> db) : db_(std::move(db)) {}

  // Runs `body` in one REPEATABLE READ READ ONLY transaction (one snapshot);
  // a database failure replaces its result.
  template <typename T>
  Result<T> Run(const std::function<Result<T>(Reader&)>& body) {
    db_->ClearError();
    if (!db_->EnsureConnected()) return Status(ErrorCode::kUnavailable, "postgres: not connected");
    db_->Defer("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY");
    Result<T> result = body(*this);
    db_->Defer("COMMIT");
    db_->Flush();
    if (!db_->failed()) return result;
    Status error = db_->error();
    db_->ClearError();
    db_->ExecIgnoringErrors("ROLLBACK");
    return error;
  }

  Result<UserRecord> UserByName(const std::string& username);
  Result<UserRecord> UserById(UserId id);
  Result<MessageTimeline> Timeline(ConversationId id, Seq seq);
  Result<StoreSummary> Summary();
  Result<SchemaStatus> Schema();
  Result<DeviceRecord> DeviceByToken(const std::string& token_hash);
  Result<std::vector<DeviceRecord>> Devices(UserId user_id);
  Result<ConversationRecord> Conversation(ConversationId id);
  Result<std::vector<MessageRecord>> History(ConversationId id, UserId viewer, Seq before, int limit);
  Result<StreamPage> ReadStream(UserId user_id, UserSeq after, int limit, uint64_t* rows_read);
  UserSeq Head(UserId user_id);
  Result<Snapshot> GetSnapshot(UserId user_id, int latest_per_conversation);
  Result<std::vector<ConversationState>> ConversationStates(UserId user_id, const std::vector<ConversationId>& ids);
  Result<ConversationPage> ListConversations(UserId user_id, int64_t before_activity, ConversationId before_id,
                                            int limit, int latest_per_conversation);
  Result<std::vector<ProfileRecord>> Profiles(UserId viewer, const std::vector<UserId>& ids);
  Result<std::vector<ContactRecord>> Contacts(UserId owner);
  Result<std::vector<ProfileRecord>> Blocked(UserId owner);
  Result<SearchPage> SearchUsers(UserId searcher, const std::string& query, const std::string& after, int limit);
  Result<ExportPage> Export(ExportTable table, const std::vector<int64_t>& after, int limit);
  Result<MessageSearchPage> SearchMessages(const MessageSearchQuery& q);
  Result<std::vector<PresenceRecord>> Presence(UserId viewer, const std::vector<UserId>& ids);
  // Push reads (issue 11) query through it directly.
  PgConn& db() { return *db_; }

 private:
  Result<std::vector<MessageRecord>> Visible(ConversationId id, UserId viewer, Seq before, int limit);
  // nullopt: the conversation vanished (not an error).
  Result<std::optional<ConversationSummary>> Summary(UserId user_id, ConversationId id, int64_t activity,
                                                     int latest);

  std::unique_ptr<PgConn> db_;
  ColdTexts cold_;  // pages the texts of compacted messages in (see "Cold tier")
};

Result<MessageTimeline> PostgresStore::Reader::Timeline(ConversationId id, Seq seq) {
  MessageTimeline t;
  PgRows m = db_->Query("SELECT " PARLEY_MESSAGE_COLUMNS ", m.accepted_at, m.stored_at FROM messages m "
                        "WHERE m.conversation_id = $1 AND m.seq = $2",
                        PgParams().Int(id).Int(seq));
  if (m.empty()) {
    if (db_->failed()) return Status(ErrorCode::kInternal, "store error");
    if (db_->Query("SELECT 1 FROM conversations WHERE id = $1", PgParams().Int(id)).empty())
      return Status(ErrorCode::kUnknownConversation, "unknown conversation");
    return Status(ErrorCode::kUnknownMessage, "no message with this seq in the conversation");
  }
  t.message = MessageAt(m, 0, 0);
  if (ColdAt(m, 0, 0)) {
    if (Status s = cold_.Fill(*db_, {ColdText{id, seq, &t.message.body}}, /*lock_rows=*/false); !s.ok()) return s;
  }
  t.accepted_at = m.Int(0, kMessageColumnCount);
  t.stored_at = m.Int(0, kMessageColumnCount + 1);
  // Members with their live devices (one row per device; a member without
  // one has a NULL device), and whether the message is withheld from them.
  PgRows r = db_->Query(
      "SELECT mb.user_id, u.username, EXISTS(SELECT 1 FROM withheld w WHERE w.conversation_id = mb.conversation_id "
      "AND w.user_id = mb.user_id AND w.seq = $2 AND w.hidden_at = 0), d.id, d.name, d.platform "
      "FROM members mb JOIN users u ON u.id = mb.user_id "
      "LEFT JOIN devices d ON d.user_id = mb.user_id AND NOT d.revoked "
      "WHERE mb.conversation_id = $1 ORDER BY mb.user_id, d.id",
      PgParams().Int(id).Int(seq));
  for (int i = 0; i < r.size(); ++i) {
    if (t.members.empty() || t.members.back().user_id != r.Int(i, 0))
      t.members.push_back(MemberTimeline{r.Int(i, 0), r.Text(i, 1), r.Bool(i, 2), {}});
    if (r.IsNull(i, 3)) continue;
    DeviceTimeline d;
    d.device_id = r.Int(i, 3);
    d.name = r.Text(i, 4);
    d.platform = r.Text(i, 5);
    t.members.back().devices.push_back(std::move(d));
  }
  for (MemberTimeline& member : t.members) {
    for (DeviceTimeline& d : member.devices) {
      if (d.device_id == t.message.sender_device_id) {
        d.sending_device = true;
        d.delivered_at = d.read_at = t.stored_at;
        continue;
      }
      if (member.withheld) continue;
      // A device's log rows rise in both watermarks over time, so the first
      // row (in either index's order) that covers seq is the earliest.
      PgRows at = db_->Query(
          "SELECT (SELECT at FROM receipt_log WHERE conversation_id = $1 AND device_id = $2 AND delivered >= $3 "
          "ORDER BY delivered LIMIT 1), (SELECT at FROM receipt_log WHERE conversation_id = $1 AND device_id = $2 "
          "AND read >= $3 ORDER BY read LIMIT 1)",
          PgParams().Int(id).Int(d.device_id).Int(seq));
      if (at.empty()) continue;
      if (!at.IsNull(0, 0)) d.delivered_at = at.Int(0, 0);
      if (!at.IsNull(0, 1)) d.read_at = at.Int(0, 1);
    }
  }
  return t;
}

Result<StoreSummary> PostgresStore::Reader::Summary() {
  StoreSummary out;
  out.backend = "postgres";
  PgRows r = db_->Query(
      "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM users WHERE disabled), "
      "(SELECT count(*) FROM devices WHERE NOT revoked), (SELECT count(*) FROM conversations), "
      "(SELECT COALESCE(sum(last_seq), 0)::bigint FROM conversations), "
      "(SELECT COALESCE(sum(head - stream_floor + 1), 0)::bigint FROM user_heads), pg_database_size(current_database())");
  if (r.empty()) return Status(ErrorCode::kInternal, "store error");
  out.users = r.Int(0, 0);
  out.disabled_users = r.Int(0, 1);
  out.live_devices = r.Int(0, 2);
  out.conversations = r.Int(0, 3);
  out.messages = r.Int(0, 4);
  out.stream_events = r.Int(0, 5);
  out.bytes = r.Int(0, 6);
  return out;
}

Result<SchemaStatus> PostgresStore::Reader::Schema() {
  SchemaStatus out;
  out.backend = "postgres";
  PgRows r = db_->Query("SELECT version FROM schema_version");
  if (db_->failed()) return Status(ErrorCode::kInternal, "store error");
  std::set<int64_t> applied;
  for (int i = 0; i < r.size(); ++i) {
    applied.insert(r.Int(i, 0));
    out.current = std::max(out.current, static_cast<int>(r.Int(i, 0)));
  }
  out.latest = PostgresStore::kSchemaVersion;
  // As Migrate: a step not recorded is pending even below the newest one.
  for (const Migration& m : kMigrations)
    if (applied.count(m.version) == 0) out.pending.push_back(m.version);
  return out;
}

Result<ExportPage> PostgresStore::Reader::Export(ExportTable table, const std::vector<int64_t>& after, int limit) {
  static constexpr const char* kSql[kExportTableCount] = {
      "SELECT id, user_id, CASE WHEN revoked THEN 1 ELSE 0 END FROM devices WHERE id > $1 ORDER BY id LIMIT $2",
      "SELECT conversation_id, user_id FROM members WHERE (conversation_id, user_id) > ($1, $2) "
      "ORDER BY conversation_id, user_id LIMIT $3",
      "SELECT conversation_id, seq, sender_id, sender_device_id, expires_at, client_id FROM messages "
      "WHERE (conversation_id, seq) > ($1, $2) ORDER BY conversation_id, seq LIMIT $3",
      "SELECT conversation_id, user_id, seq FROM withheld WHERE (conversation_id, user_id, seq) > ($1, $2, $3) "
      "AND hidden_at = 0 ORDER BY conversation_id, user_id, seq LIMIT $4",
      "SELECT user_id, user_seq, kind, conversation_id, seq, subject_user_id, delivered, read FROM user_events "
      "WHERE (user_id, user_seq) > ($1, $2) ORDER BY user_id, user_seq LIMIT $3",
      "SELECT user_id, head, stream_floor FROM user_heads WHERE user_id > $1 ORDER BY user_id LIMIT $2",
      "SELECT conversation_id, user_id, delivered, read FROM user_receipts WHERE (conversation_id, user_id) > ($1, $2) "
      "ORDER BY conversation_id, user_id LIMIT $3",
      "SELECT owner_id, target_id FROM blocks WHERE (owner_id, target_id) > ($1, $2) ORDER BY owner_id, target_id "
      "LIMIT $3",
  };
  const int keys = ExportKeyColumns(table);
  const auto columns = ExportColumns(table);
  const bool has_text = table == ExportTable::kMessages;
  const int ints = static_cast<int>(columns.size()) - (has_text ? 1 : 0);
  PgParams params;
  for (int i = 0; i < keys; ++i) params.Int(after.empty() ? INT64_MIN : after[static_cast<size_t>(i)]);
  params.Int(static_cast<int64_t>(limit) + 1);
  PgRows rows = db_->Query(kSql[static_cast<int>(table)], params);
  ExportPage page;
  for (int r = 0; r < rows.size(); ++r) {
    if (r == limit) {
      page.has_more = true;
      break;
    }
    ExportRow row;
    for (int c = 0; c < ints; ++c) row.values.push_back(rows.Int(r, c));
    if (has_text) row.text = rows.Text(r, ints);
    page.rows.push_back(std::move(row));
  }
  return page;
}

Result<UserRecord> PostgresStore::Reader::UserByName(const std::string& username) {
  PgRows r = db_->Query(fmt::format("SELECT {} FROM users WHERE username = $1", kUserColumns),
                        PgParams().Text(username));
  if (r.empty()) return Status(ErrorCode::kUnknownUser, "unknown user");
  return UserAt(r, 0);
}

Result<UserRecord> PostgresStore::Reader::UserById(UserId id) {
  PgRows r = db_->Query(fmt::format("SELECT {} FROM users WHERE id = $1", kUserColumns), PgParams().Int(id));
  if (r.empty()) return Status(ErrorCode::kUnknownUser, "unknown user");
  return UserAt(r, 0);
}

Result<DeviceRecord> PostgresStore::Reader::DeviceByToken(const std::string& token_hash) {
  PgRows r = db_->Query(
      "SELECT id, user_id, name, platform, created_at, last_seen_at, cursor FROM devices "
      "WHERE token_hash = $1 AND NOT revoked",
      PgParams().Bytes(token_hash));
  if (r.empty()) return Status(ErrorCode::kInvalidToken, "invalid token");
  return DeviceAt(r, 0);
}

Result<std::vector<DeviceRecord>> PostgresStore::Reader::Devices(UserId user_id) {
  PgRows r = db_->Query(
      "SELECT id, user_id, name, platform, created_at, last_seen_at, cursor FROM devices "
      "WHERE user_id = $1 AND NOT revoked ORDER BY id",
      PgParams().Int(user_id));
  std::vector<DeviceRecord> out;
  for (int i = 0; i < r.size(); ++i) out.push_back(DeviceAt(r, i));
  return out;
}

Result<ConversationRecord> PostgresStore::Reader::Conversation(ConversationId id) {
  // One round trip: the conversation row joined to its members.
  PgRows r = db_->Query(
      "SELECT c.last_seq, c.created_at, c.last_activity_at, m.user_id, u.username, c.disappearing_s "
      "FROM conversations c "
      "JOIN members m ON m.conversation_id = c.id JOIN users u ON u.id = m.user_id "
      "WHERE c.id = $1 ORDER BY m.user_id",
      PgParams().Int(id));
  if (r.empty()) return Status(ErrorCode::kUnknownConversation, "unknown conversation");
  ConversationRecord c;
  c.id = id;
  c.last_seq = r.Int(0, 0);
  c.created_at = r.Int(0, 1);
  c.last_activity_at = r.Int(0, 2);
  c.disappearing_s = r.Int(0, 5);
  for (int i = 0; i < r.size(); ++i) c.members.push_back(MemberRecord{r.Int(i, 3), r.Text(i, 4)});
  return c;
}

Result<std::vector<MessageRecord>> PostgresStore::Reader::Visible(ConversationId id, UserId viewer, Seq before,
                                                                 int limit) {
  std::vector<MessageRecord> out;
  if (limit <= 0) return out;
  PgRows r = db_->Query(
      kHistoryPageSql,
      PgParams().Int(id).Int(before > 0 ? before : std::numeric_limits<Seq>::max()).Int(viewer).Int(limit));
  for (int i = r.size() - 1; i >= 0; --i) out.push_back(MessageAt(r, i, 0));
  std::vector<ColdText> cold;
  for (int i = 0; i < r.size(); ++i) {
    MessageRecord& m = out[static_cast<size_t>(r.size() - 1 - i)];
    if (ColdAt(r, i, 0)) cold.push_back(ColdText{m.conversation_id, m.seq, &m.body});
  }
  if (Status s = cold_.Fill(*db_, cold, /*lock_rows=*/false); !s.ok()) return s;
  return out;
}

Result<std::vector<MessageRecord>> PostgresStore::Reader::History(ConversationId id, UserId viewer, Seq before,
                                                                 int limit) {
  if (db_->Query("SELECT 1 FROM conversations WHERE id = $1", PgParams().Int(id)).empty()) {
    return Status(ErrorCode::kUnknownConversation, "unknown conversation");
  }
  Result<std::vector<MessageRecord>> visible = Visible(id, viewer, before, limit);
  if (!visible) return visible.error();
  std::vector<MessageRecord> page = std::move(visible).value();
  if (page.empty()) return page;
  // "Stays sent": within the page's range, the seqs withheld from another
  // member that their delivered watermark covers (one range scan per member).
  std::vector<Seq> stay;
  PgRows r = db_->Query(
      "SELECT m.user_id, COALESCE(r.delivered, 0) FROM members m LEFT JOIN user_receipts r "
      "ON r.conversation_id = m.conversation_id AND r.user_id = m.user_id "
      "WHERE m.conversation_id = $1 AND m.user_id <> $2",
      PgParams().Int(id).Int(viewer));
  for (int i = 0; i < r.size(); ++i) {
    std::vector<Seq> seqs = WithheldIn(*db_, id, r.Int(i, 0), page.front().seq - 1, std::min(page.back().seq, r.Int(i, 1)));
    stay.insert(stay.end(), seqs.begin(), seqs.end());
  }
  for (MessageRecord& m : page) m.stays_sent = std::find(stay.begin(), stay.end(), m.seq) != stay.end();
  return page;
}

Result<MessageSearchPage> PostgresStore::Reader::SearchMessages(const MessageSearchQuery& q) {
  if (q.conversation_id != 0) {
    if (db_->Query("SELECT 1 FROM conversations WHERE id = $1", PgParams().Int(q.conversation_id)).empty())
      return Status(ErrorCode::kUnknownConversation, "unknown conversation");
    if (db_->Query("SELECT 1 FROM members WHERE conversation_id = $1 AND user_id = $2",
                   PgParams().Int(q.conversation_id).Int(q.searcher))
            .empty())
      return Status(ErrorCode::kNotMember, "not a member of this conversation");
  }
  MessageSearchPage page;
  if (q.words.empty() || q.limit <= 0) return page;
  // The newest kMaxSearchCandidates matches below the cursor (the GIN index
  // answers the match; a top-N sort orders them), each checked against the
  // store as it is (see "Message search"): a member, not withheld from or
  // hidden by the searcher, not deleted, and still the indexed version.
  // Every row also carries how many candidates there were and the oldest of
  // them (one row of NULLs when none is visible), so a page whose candidates
  // ran out at the cap says where to go on.
  PgRows r = db_->Query(
      "WITH c AS (SELECT doc_id, conversation_id, seq, version FROM message_search "
      "WHERE words @@ $2::tsquery AND doc_id < $3 AND ($4::bigint = 0 OR conversation_id = $4::bigint) "
      "ORDER BY doc_id DESC LIMIT $6), "
      "v AS (SELECT s.doc_id, " PARLEY_MESSAGE_COLUMNS " FROM c s "
      "JOIN members mb ON mb.conversation_id = s.conversation_id AND mb.user_id = $1 "
      "JOIN messages m ON m.conversation_id = s.conversation_id AND m.seq = s.seq "
      "WHERE m.deleted_at = 0 AND m.version = s.version "
      "AND NOT EXISTS (SELECT 1 FROM withheld w WHERE w.conversation_id = s.conversation_id AND w.user_id = $1 "
      "AND w.seq = s.seq) ORDER BY s.doc_id DESC LIMIT $5) "
      "SELECT n.candidates, n.oldest, v.* FROM (SELECT count(*) AS candidates, min(doc_id) AS oldest FROM c) n "
      "LEFT JOIN v ON true ORDER BY v.doc_id DESC",
      PgParams()
          .Int(q.searcher)
          .Text(TsQuery(q.words))
          .Int(q.before > 0 ? q.before : std::numeric_limits<int64_t>::max())
          .Int(q.conversation_id)
          .Int(q.limit + 1)
          .Int(kMaxSearchCandidates));
  const bool found = r.size() > 0 && !r.IsNull(0, 2);
  const int rows = found ? r.size() : 0;
  for (int i = 0; i < rows && i < q.limit; ++i) {
    page.messages.push_back(MessageAt(r, i, 3));
    page.doc_ids.push_back(r.Int(i, 2));
  }
  std::vector<ColdText> cold;
  for (size_t i = 0; i < page.messages.size(); ++i) {
    MessageRecord& m = page.messages[i];
    if (ColdAt(r, static_cast<int>(i), 3)) cold.push_back(ColdText{m.conversation_id, m.seq, &m.body});
  }
  if (Status s = cold_.Fill(*db_, cold, /*lock_rows=*/false); !s.ok()) return s;
  if (rows > q.limit) {
    page.next = r.Int(q.limit - 1, 2);
  } else if (r.size() > 0 && r.Int(0, 0) == kMaxSearchCandidates) {
    page.next = r.Int(0, 1);  // the cap was reached: older candidates may exist
  }
  // As History shows them: "stays sent" when withheld from another member
  // whose delivered watermark passed it.
  for (MessageRecord& m : page.messages) {
    m.stays_sent = !db_->Query(
                           "SELECT 1 FROM members mb JOIN withheld w ON w.conversation_id = mb.conversation_id "
                           "AND w.user_id = mb.user_id AND w.seq = $2 AND w.hidden_at = 0 "
                           "JOIN user_receipts r ON r.conversation_id = mb.conversation_id AND r.user_id = mb.user_id "
                           "WHERE mb.conversation_id = $1 AND mb.user_id <> $3 AND r.delivered >= $2",
                           PgParams().Int(m.conversation_id).Int(m.seq).Int(q.searcher))
                           .empty();
  }
  return page;
}

UserSeq PostgresStore::Reader::Head(UserId user_id) {
  PgRows r = db_->Query("SELECT head FROM user_heads WHERE user_id = $1", PgParams().Int(user_id));
  return r.empty() ? 0 : r.Int(0, 0);
}

Result<StreamPage> PostgresStore::Reader::ReadStream(UserId user_id, UserSeq after, int limit, uint64_t* rows_read) {
  StreamPage page;
  {
    // Head and floor in the page's snapshot (REPEATABLE READ): a trim that
    // commits later cannot open a gap in this page.
    PgRows h = db_->Query("SELECT head, stream_floor FROM user_heads WHERE user_id = $1", PgParams().Int(user_id));
    if (!h.empty()) {
      page.head = h.Int(0, 0);
      page.floor = h.Int(0, 1);
    }
  }
  *rows_read += 1;
  if (after + 1 < page.floor) {
    return Status(ErrorCode::kCursorTooOld,
                  fmt::format("the stream keeps user seqs from {} on; take a snapshot", page.floor));
  }
  if (limit <= 0) {
    page.has_more = page.head > after;
    return page;
  }
  // A range scan of the user's stream (one partition) on its primary key,
  // each message event joined to its message by primary key.
  PgRows r = db_->Query(
      "SELECT e.user_seq, e.kind, e.conversation_id, e.seq, e.subject_user_id, e.delivered, e.read, e.created_at, "
      "x.body, m.conversation_id IS NOT NULL, e.withheld, COALESCE(x.cold, false), "
      "e.profile_username, e.profile_display_name, e.profile_about, e.profile_updated_at, " PARLEY_MESSAGE_COLUMNS ", "
      "dr.text, dr.updated_at "
      "FROM user_events e LEFT JOIN messages m "
      "ON e.kind IN (1, 10, 11) AND m.conversation_id = e.conversation_id AND m.seq = e.seq "
      "LEFT JOIN message_edits x ON e.kind = 10 AND x.conversation_id = e.conversation_id AND x.seq = e.seq "
      "AND x.version = e.delivered "
      "LEFT JOIN drafts dr ON e.kind = 13 AND dr.user_id = e.user_id AND dr.conversation_id = e.conversation_id "
      "WHERE e.user_id = $1 AND e.user_seq > $2 ORDER BY e.user_seq LIMIT $3",
      PgParams().Int(user_id).Int(after).Int(static_cast<int64_t>(limit) + 1));
  *rows_read += static_cast<uint64_t>(r.size());
  std::vector<int> cold_rows;       // rows of message events whose text is in a block
  std::vector<int> cold_edit_rows;  // rows of edit events whose edit's text is in an edit block
  for (int i = 0; i < r.size(); ++i) {
    if (page.events.size() == static_cast<size_t>(limit)) {
      page.has_more = true;
      break;
    }
    StreamEvent e;
    e.user_seq = r.Int(i, 0);
    e.kind = static_cast<EventKind>(r.Int(i, 1));
    e.conversation_id = r.Int(i, 2);
    e.created_at = r.Int(i, 7);
    constexpr int kM = 16;  // first message column
    const bool has_message = r.Bool(i, 9);
    if (e.kind == EventKind::kMessage && has_message) {
      e.message = MessageAt(r, i, kM);
      if (ColdAt(r, i, kM)) cold_rows.push_back(i);
    }
    if ((e.kind == EventKind::kEdit || e.kind == EventKind::kDelete) && has_message) {
      e.message = ChangeEventMessage(e.kind, MessageAt(r, i, kM), r.Int(i, 5), e.created_at,
                                     r.IsNull(i, 8) ? std::string() : r.Text(i, 8));
      if (e.kind == EventKind::kEdit && r.Bool(i, 11)) cold_edit_rows.push_back(i);
    }
    if (e.kind == EventKind::kDeleteForMe) e.message = HideEventMessage(e.conversation_id, r.Int(i, 3));
    if (e.kind == EventKind::kReceipt) {
      e.receipt_user_id = r.Int(i, 4);
      e.receipt = Watermarks{r.Int(i, 5), r.Int(i, 6)};
    }
    if (e.kind == EventKind::kMessage || e.kind == EventKind::kReceipt) e.withheld = r.IntArray(i, 10);
    if (e.kind == EventKind::kProfile || e.kind == EventKind::kContact || e.kind == EventKind::kBlock) {
      e.profile = ProfileRecord{r.Int(i, 4), r.Text(i, 12), r.Text(i, 13), r.Text(i, 14), r.Int(i, 15)};
      e.flag = r.Int(i, 5) != 0;
    }
    if (e.kind == EventKind::kPrivacy) e.presence_visibility = static_cast<PresenceVisibility>(r.Int(i, 5));
    if (e.kind == EventKind::kMute || e.kind == EventKind::kPushPreviews) e.flag = r.Int(i, 5) != 0;
    if (e.kind == EventKind::kDisappearing) {
      e.receipt_user_id = r.Int(i, 4);
      e.disappearing_s = r.Int(i, 5);
    }
    if (e.kind == EventKind::kDraft) {
      // No row: cleared since (or by this event); its time is the event's.
      constexpr int kDraftText = kM + kMessageColumnCount;
      e.draft = r.IsNull(i, kDraftText) ? DraftRecord{"", e.created_at}
                                        : DraftRecord{r.Text(i, kDraftText), r.Int(i, kDraftText + 1)};
    }
    page.events.push_back(std::move(e));
  }
  {
    // Row i is event i (one event per row, in order).
    std::vector<ColdText> cold;
    for (int i : cold_rows) {
      MessageRecord& m = *page.events[static_cast<size_t>(i)].message;
      cold.push_back(ColdText{m.conversation_id, m.seq, &m.body});
    }
    if (Status s = cold_.Fill(*db_, cold, /*lock_rows=*/false); !s.ok()) return s;
    std::vector<ColdEditText> cold_edits;
    for (int i : cold_edit_rows) {
      MessageRecord& m = *page.events[static_cast<size_t>(i)].message;
      cold_edits.push_back(ColdEditText{m.conversation_id, m.seq, m.version, &m.body});
    }
    if (Status s = postgres::FillColdEdits(*db_, cold_.codec(), cold_edits); !s.ok()) return s;
  }
  for (StreamEvent& e : page.events) {
    if (e.kind != EventKind::kConversation) continue;
    Result<ConversationRecord> c = Conversation(e.conversation_id);
    if (c.has_value()) e.conversation = std::move(c).value();
  }
  return page;
}

Result<std::optional<ConversationSummary>> PostgresStore::Reader::Summary(UserId user_id, ConversationId id,
                                                                         int64_t activity, int latest) {
  Result<ConversationRecord> c = Conversation(id);
  if (!c.has_value()) return std::optional<ConversationSummary>();
  ConversationSummary summary;
  summary.conversation = std::move(c).value();
  summary.conversation.last_activity_at = activity;
  summary.conversation.last_seq = LastSeqVisibleTo(*db_, id, user_id);
  Result<std::vector<MessageRecord>> visible = Visible(id, user_id, 0, latest);
  if (!visible) return visible.error();
  summary.latest = std::move(visible).value();
  Seq own_read = 0;
  {
    PgRows r = db_->Query(
        "SELECT m.user_id, COALESCE(r.delivered, 0), COALESCE(r.read, 0) FROM members m "
        "LEFT JOIN user_receipts r ON r.conversation_id = m.conversation_id AND r.user_id = m.user_id "
        "WHERE m.conversation_id = $1 ORDER BY m.user_id",
        PgParams().Int(id));
    for (int i = 0; i < r.size(); ++i) {
      summary.watermarks.emplace_back(r.Int(i, 0), Watermarks{r.Int(i, 1), r.Int(i, 2)});
      if (r.Int(i, 0) == user_id) own_read = r.Int(i, 2);
    }
  }
  // What stays "sent" forever: as the members' receipt events listed it.
  for (const auto& [member, wm] : summary.watermarks) {
    summary.withheld.push_back(member == user_id ? std::vector<Seq>{} : WithheldIn(*db_, id, member, 0, wm.delivered));
  }
  {
    // A range scan over the unread tail only, skipping what is withheld.
    PgRows r = db_->Query(
        "SELECT count(*) FROM messages m WHERE m.conversation_id = $1 AND m.seq > $2 AND m.sender_id <> $3 "
        "AND NOT EXISTS (SELECT 1 FROM withheld w WHERE w.conversation_id = $1 AND w.user_id = $3 "
        "AND w.seq = m.seq)",
        PgParams().Int(id).Int(own_read).Int(user_id));
    if (!r.empty()) summary.unread = r.Int(0, 0);
  }
  {
    PgRows r = db_->Query("SELECT text, updated_at FROM drafts WHERE user_id = $1 AND conversation_id = $2",
                          PgParams().Int(user_id).Int(id));
    if (!r.empty()) summary.draft = DraftRecord{r.Text(0, 0), r.Int(0, 1)};
  }
  return std::optional<ConversationSummary>(std::move(summary));
}

// Summary's last_seq and unread, nothing else: a selective device's summary.
Result<std::vector<ConversationState>> PostgresStore::Reader::ConversationStates(
    UserId user_id, const std::vector<ConversationId>& ids) {
  std::vector<ConversationState> states;
  for (ConversationId id : ids) {
    Seq own_read = 0;
    {
      PgRows r = db_->Query(
          "SELECT COALESCE(r.read, 0) FROM members m LEFT JOIN user_receipts r "
          "ON r.conversation_id = m.conversation_id AND r.user_id = m.user_id "
          "WHERE m.conversation_id = $1 AND m.user_id = $2",
          PgParams().Int(id).Int(user_id));
      if (r.empty()) continue;  // not a member (or no such conversation)
      own_read = r.Int(0, 0);
    }
    ConversationState state;
    state.conversation_id = id;
    state.last_seq = LastSeqVisibleTo(*db_, id, user_id);
    {
      // Summary's count: the unread tail only, skipping what is withheld or hidden.
      PgRows r = db_->Query(
          "SELECT count(*) FROM messages m WHERE m.conversation_id = $1 AND m.seq > $2 AND m.sender_id <> $3 "
          "AND NOT EXISTS (SELECT 1 FROM withheld w WHERE w.conversation_id = $1 AND w.user_id = $3 "
          "AND w.seq = m.seq)",
          PgParams().Int(id).Int(own_read).Int(user_id));
      if (!r.empty()) state.unread = r.Int(0, 0);
    }
    states.push_back(state);
  }
  return states;
}

Result<Snapshot> PostgresStore::Reader::GetSnapshot(UserId user_id, int latest_per_conversation) {
  Snapshot snap;
  snap.head = Head(user_id);
  PgRows r = db_->Query(
      "SELECT conversation_id, last_activity_at FROM members WHERE user_id = $1 "
      "ORDER BY last_activity_at DESC, conversation_id DESC",
      PgParams().Int(user_id));
  for (int i = 0; i < r.size(); ++i) {
    Result<std::optional<ConversationSummary>> summary =
        Summary(user_id, r.Int(i, 0), r.Int(i, 1), latest_per_conversation);
    if (!summary) return summary.error();
    if (*summary) snap.conversations.push_back(std::move(**summary));
  }
  return snap;
}

Result<ConversationPage> PostgresStore::Reader::ListConversations(UserId user_id, int64_t before_activity,
                                                                  ConversationId before_id, int limit,
                                                                  int latest_per_conversation) {
  ConversationPage page;
  if (limit <= 0) return page;
  if (before_activity == 0) {
    before_activity = std::numeric_limits<int64_t>::max();
    before_id = std::numeric_limits<ConversationId>::max();
  }
  // A backwards range scan of members_by_activity from the cursor.
  PgRows r = db_->Query(
      "SELECT conversation_id, last_activity_at FROM members WHERE user_id = $1 "
      "AND (last_activity_at, conversation_id) < ($2, $3) "
      "ORDER BY last_activity_at DESC, conversation_id DESC LIMIT $4",
      PgParams().Int(user_id).Int(before_activity).Int(before_id).Int(static_cast<int64_t>(limit) + 1));
  std::vector<std::pair<ConversationId, int64_t>> ids;
  for (int i = 0; i < r.size(); ++i) ids.emplace_back(r.Int(i, 0), r.Int(i, 1));
  if (ids.size() > static_cast<size_t>(limit)) {
    page.has_more = true;
    ids.pop_back();
  }
  for (const auto& [id, activity] : ids) {
    Result<std::optional<ConversationSummary>> summary = Summary(user_id, id, activity, latest_per_conversation);
    if (!summary) return summary.error();
    if (*summary) page.conversations.push_back(std::move(**summary));
  }
  if (page.has_more && !ids.empty()) {
    page.next_activity = ids.back().second;
    page.next_id = ids.back().first;
  }
  return page;
}

Result<std::vector<ProfileRecord>> PostgresStore::Reader::Profiles(UserId viewer, const std::vector<UserId>& ids) {
  std::vector<ProfileRecord> out;
  for (UserId id : ids) {
    // viewer 0 matches no blocks row (ids start at 1): current profiles.
    PgRows r = db_->Query(kProfileForSql, PgParams().Int(id).Int(viewer));
    if (!r.empty()) out.push_back(ProfileAt(r, 0, 0));
  }
  return out;
}

Result<std::vector<PresenceRecord>> PostgresStore::Reader::Presence(UserId viewer, const std::vector<UserId>& ids) {
  // One round trip for the whole list; rows come back in the given order.
  PgRows r = db_->Query(
      "SELECT u.id, u.presence_visibility, u.last_seen, "
      "EXISTS(SELECT 1 FROM contacts c WHERE c.owner_id = u.id AND c.contact_id = $2), "
      "EXISTS(SELECT 1 FROM blocks b WHERE (b.owner_id = u.id AND b.target_id = $2) "
      "OR (b.owner_id = $2 AND b.target_id = u.id)) "
      "FROM unnest($1::bigint[]) WITH ORDINALITY AS q(id, n) JOIN users u ON u.id = q.id ORDER BY q.n",
      PgParams().IntArray(ids).Int(viewer));
  std::vector<PresenceRecord> out;
  for (int i = 0; i < r.size(); ++i) {
    const UserId id = r.Int(i, 0);
    auto visibility = static_cast<PresenceVisibility>(r.Int(i, 1));
    bool allowed = visibility == PresenceVisibility::kEveryone ||
                   (visibility == PresenceVisibility::kContacts && r.Bool(i, 3));
    bool visible = id == viewer || (allowed && !r.Bool(i, 4));
    out.push_back(PresenceRecord{id, visible, visible ? r.Int(i, 2) : 0});
  }
  return out;
}

Result<std::vector<ContactRecord>> PostgresStore::Reader::Contacts(UserId owner) {
  PgRows r = db_->Query(
      "SELECT u.id, u.username, COALESCE(b.shown_display_name, u.display_name), "
      "COALESCE(b.shown_about, u.about), COALESCE(b.shown_updated_at, u.profile_updated_at), c.added_at "
      "FROM contacts c JOIN users u ON u.id = c.contact_id "
      "LEFT JOIN blocks b ON b.owner_id = c.contact_id AND b.target_id = c.owner_id "
      "WHERE c.owner_id = $1 ORDER BY u.username",
      PgParams().Int(owner));
  std::vector<ContactRecord> out;
  for (int i = 0; i < r.size(); ++i) out.push_back(ContactRecord{ProfileAt(r, i, 0), r.Int(i, 5)});
  return out;
}

Result<std::vector<ProfileRecord>> PostgresStore::Reader::Blocked(UserId owner) {
  PgRows r = db_->Query(
      "SELECT u.id, u.username, COALESCE(r.shown_display_name, u.display_name), "
      "COALESCE(r.shown_about, u.about), COALESCE(r.shown_updated_at, u.profile_updated_at) FROM blocks b "
      "JOIN users u ON u.id = b.target_id "
      "LEFT JOIN blocks r ON r.owner_id = b.target_id AND r.target_id = b.owner_id "
      "WHERE b.owner_id = $1 ORDER BY u.username",
      PgParams().Int(owner));
  std::vector<ProfileRecord> out;
  for (int i = 0; i < r.size(); ++i) out.push_back(ProfileAt(r, i, 0));
  return out;
}

namespace {

// One of search's two scans in username order, fetched kSearchChunk rows per
// round trip. Columns of `sql`: id, username, display_name, about,
// profile_updated_at, blocks_searcher; parameters: $1 lower bound, $2 true if
// the bound is inclusive, $3 searcher, $4 chunk size, $5 `extra`.
class SearchScan {
 public:
  SearchScan(PgConn& db, const char* sql, std::string bound, UserId searcher, std::string extra)
      : db_(db), sql_(sql), bound_(std::move(bound)), searcher_(searcher), extra_(std::move(extra)) {}

  // Whether there is a current row (fetching the next chunk if needed).
  bool Valid() {
    if (pos_ < rows_.size()) return true;
    if (exhausted_) return false;
    Fetch();
    return pos_ < rows_.size();
  }
  // The current row: a profile and whether that user blocks the searcher.
  const std::pair<ProfileRecord, bool>& Row() const { return rows_[pos_]; }
  void Next() { ++pos_; }

 private:
  void Fetch() {
    rows_.clear();
    pos_ = 0;
    PgRows r = db_.Query(sql_, PgParams().Text(bound_).Bool(inclusive_).Int(searcher_).Int(kSearchChunk).Text(extra_));
    for (int i = 0; i < r.size(); ++i) rows_.emplace_back(ProfileAt(r, i, 0), r.Bool(i, 5));
    if (r.size() < kSearchChunk) exhausted_ = true;
    if (!rows_.empty()) {
      bound_ = rows_.back().first.username;
      inclusive_ = false;
    }
  }

  PgConn& db_;
  const char* sql_;
  std::string bound_;
  bool inclusive_ = true;
  UserId searcher_;
  std::string extra_;
  std::vector<std::pair<ProfileRecord, bool>> rows_;
  size_t pos_ = 0;
  bool exhausted_ = false;
};

}  // namespace

Result<SearchPage> PostgresStore::Reader::SearchUsers(UserId searcher, const std::string& query,
                                                      const std::string& after, int limit) {
  SearchPage page;
  if (limit <= 0) return page;
  // Two scans in username order, merged as in SqliteStore: usernames from
  // max(query, after) on the username index, and users one of whose name
  // words starts with the query on name_prefixes' primary key. Each is
  // fetched a chunk at a time, so a page reads about `limit` rows of each
  // however many users match; whether a candidate blocks the searcher comes
  // with its row.
  const std::optional<std::string> end = PrefixEnd(query);
  const std::string_view key = Utf8Prefix(query, kMaxIndexedPrefix);
  const bool key_is_query = key.size() == query.size();
  // $5: the prefix end ("" = none).
  SearchScan by_name(*db_,
                     "SELECT u.id, u.username, u.display_name, u.about, u.profile_updated_at, "
                     "EXISTS(SELECT 1 FROM blocks b WHERE b.owner_id = u.id AND b.target_id = $3) FROM users u "
                     "WHERE (u.username > $1 OR ($2 AND u.username = $1)) AND ($5 = '' OR u.username < $5) "
                     "ORDER BY u.username LIMIT $4",
                     std::max(query, after), searcher, end ? *end : std::string());
  // $5: the prefix key.
  SearchScan by_word(*db_,
                     "SELECT u.id, u.username, u.display_name, u.about, u.profile_updated_at, "
                     "EXISTS(SELECT 1 FROM blocks b WHERE b.owner_id = u.id AND b.target_id = $3) "
                     "FROM name_prefixes p JOIN users u ON u.id = p.user_id "
                     "WHERE p.prefix = $5 AND (p.username > $1 OR ($2 AND p.username = $1)) "
                     "ORDER BY p.username LIMIT $4",
                     after, searcher, std::string(key));
  bool name_row = UsernameCouldStartWith(query) && by_name.Valid();
  bool word_row = !key.empty() && by_word.Valid();
  while (page.users.size() <= static_cast<size_t>(limit) && (name_row || word_row)) {
    std::string name_user = name_row ? by_name.Row().first.username : std::string();
    std::string word_user = word_row ? by_word.Row().first.username : std::string();
    ProfileRecord candidate;
    bool blocks_searcher = false;
    bool match = true;
    if (name_row && (!word_row || name_user <= word_user)) {
      candidate = by_name.Row().first;
      blocks_searcher = by_name.Row().second;
      if (word_row && word_user == name_user) {
        by_word.Next();
        word_row = by_word.Valid();
      }
      by_name.Next();
      name_row = by_name.Valid();
    } else {
      candidate = by_word.Row().first;
      blocks_searcher = by_word.Row().second;
      match = key_is_query || NameHasWordWithPrefix(candidate.display_name, query);
      by_word.Next();
      word_row = by_word.Valid();
    }
    if (!match || candidate.user_id == searcher || candidate.username == after || blocks_searcher) continue;
    page.users.push_back(std::move(candidate));
  }
  if (page.users.size() > static_cast<size_t>(limit)) {
    page.users.pop_back();
    page.next = page.users.back().username;
  }
  return page;
}

// ---------------------------------------------------------------------------
// PostgresStore: queues and threads

Result<std::unique_ptr<PostgresStore>> PostgresStore::Open(const StoreConfig& config) {
  Result<std::unique_ptr<PgConn>> write_db = PgConn::Connect(config.postgres_url, kConnectTimeoutS);
  if (!write_db.has_value()) return write_db.error();
  if (Status s = Migrate(**write_db, kSchemaVersion); !s.ok()) return s;
  std::vector<std::unique_ptr<Reader>> readers;
  const int n = std::max(1, config.postgres_read_connections);
  for (int i = 0; i < n; ++i) {
    Result<std::unique_ptr<PgConn>> read_db = PgConn::Connect(config.postgres_url, kConnectTimeoutS);
    if (!read_db.has_value()) return read_db.error();
    readers.push_back(std::make_unique<Reader>(std::move(read_db).value()));
  }
  return std::unique_ptr<PostgresStore>(
      new PostgresStore(config, std::make_unique<Writer>(std::move(write_db).value(), config.clock != nullptr ? *config.clock : SystemClock::Instance()), std::move(readers)));
}

PostgresStore::PostgresStore(const StoreConfig& config, std::unique_ptr<Writer> writer,
                             std::vector<std::unique_ptr<Reader>> readers)
    : max_batch_(std::max(1, config.commit_max_batch)),
      deadline_us_(std::max(0, config.commit_deadline_us)),
      adaptive_wait_us_(std::max(0, config.commit_adaptive_wait_us)),
      loaded_wait_us_(std::max(0, config.commit_loaded_wait_us)),
      writer_(std::move(writer)),
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
      queue_depth_(Metrics::Default().GetGauge("parley_store_queue_depth", "Write operations queued in the store.")),
      write_queue_(queue_depth_),
      read_pool_(std::move(readers)) {
  writer_thread_ = std::thread([this] {
    SetCurrentThreadName("store-writer");
    RunWriter();
  });
  read_pool_.Start("store-reader", config.reader_sched_batch);
}

PostgresStore::~PostgresStore() {
  write_queue_.Stop();
  writer_thread_.join();
  // The readers stop second: writes' callbacks may still have queued reads.
  read_pool_.Stop();
}

template <typename T>
void PostgresStore::SubmitWrite(std::function<Result<T>(Writer&)> body, Callback<T> done, LockSet locks, bool solo) {
  auto op = std::make_unique<TypedWriteOp<T>>(std::move(body), std::move(done));
  op->locks = std::move(locks);
  op->solo = solo;
  write_queue_.Push(std::move(op));
}

template <typename T>
void PostgresStore::SubmitRead(std::function<Result<T>(Reader&)> body, Callback<T> done) {
  read_pool_.Submit([body = std::move(body), done = std::move(done)](Reader* reader) {
    if (reader == nullptr) return done(Status(ErrorCode::kShuttingDown, "store is closing"));
    done(reader->Run<T>(body));
  });
}

void PostgresStore::RunWriter() {
  CommitPacer pacer(max_batch_, deadline_us_, adaptive_wait_us_, loaded_wait_us_);
  write_queue_.Run(pacer, static_cast<size_t>(max_batch_), [&](std::vector<std::unique_ptr<WriteOp>>& batch) {
    const auto start = std::chrono::steady_clock::now();
    Status status = writer_->CommitBatch(batch);
    const auto ran = std::chrono::steady_clock::now() - start;
    pacer.Ran(ran);
    writer_statements_.store(writer_->statements(), std::memory_order_relaxed);
    commit_batch_size_.Observe(static_cast<double>(batch.size()));
    if (status.ok()) {
      commits_.fetch_add(1, std::memory_order_relaxed);
      commits_total_.Inc();
      commit_seconds_.Observe(std::chrono::duration<double>(ran).count());
    }
    return status;
  });
}

// ---------------------------------------------------------------------------
// Store operations: capture the arguments, queue, and return.

void PostgresStore::CreateUser(std::string username, std::string password_hash, int64_t now,
                               Callback<UserRecord> done) {
  SubmitWrite<UserRecord>(
      [username = std::move(username), password_hash = std::move(password_hash), now](Writer& w) {
        return w.CreateUser(username, password_hash, now);
      },
      std::move(done));
}

void PostgresStore::GetUserByName(std::string username, Callback<UserRecord> done) {
  SubmitRead<UserRecord>([username = std::move(username)](Reader& r) { return r.UserByName(username); },
                         std::move(done));
}

void PostgresStore::GetUserById(UserId id, Callback<UserRecord> done) {
  SubmitRead<UserRecord>([id](Reader& r) { return r.UserById(id); }, std::move(done));
}

void PostgresStore::CreateDevice(UserId user_id, std::string name, std::string platform, std::string token_hash,
                                 std::string verified_hash, int64_t now, Callback<DeviceRecord> done) {
  SubmitWrite<DeviceRecord>(
      [user_id, name = std::move(name), platform = std::move(platform), token_hash = std::move(token_hash),
       verified_hash = std::move(verified_hash),
       now](Writer& w) { return w.CreateDevice(user_id, name, platform, token_hash, verified_hash, now); },
      std::move(done), LockSet{{}, {user_id}, {}});
}

void PostgresStore::GetAuthContext(std::string token_hash, Callback<AuthContext> done) {
  SubmitRead<AuthContext>(
      [token_hash = std::move(token_hash)](Reader& r) { return ReadAuthContext(r, token_hash); }, std::move(done));
}

void PostgresStore::ListDevices(UserId user_id, Callback<std::vector<DeviceRecord>> done) {
  SubmitRead<std::vector<DeviceRecord>>([user_id](Reader& r) { return r.Devices(user_id); }, std::move(done));
}

void PostgresStore::RevokeDevice(UserId user_id, DeviceId device_id, StatusCallback done) {
  SubmitWrite<Empty>([user_id, device_id](Writer& w) { return w.RevokeDevice(user_id, device_id); },
                     ToEmptyCallback(std::move(done)), LockSet{{}, {user_id}, {device_id}});
}

void PostgresStore::SetCursor(DeviceId device_id, UserSeq user_seq, int64_t now, StatusCallback done) {
  SubmitWrite<Empty>([device_id, user_seq, now](Writer& w) { return w.SetCursor(device_id, user_seq, now); },
                     ToEmptyCallback(std::move(done)), LockSet{{}, {}, {device_id}});
}

void PostgresStore::OpenDirect(UserId a, UserId b, int64_t now, Callback<OpenResult> done) {
  SubmitWrite<OpenResult>([a, b, now](Writer& w) { return w.OpenDirect(a, b, now); }, std::move(done),
                          LockSet{{}, {a, b}, {}});
}

void PostgresStore::GetConversation(ConversationId id, Callback<ConversationRecord> done) {
  SubmitRead<ConversationRecord>([id](Reader& r) { return r.Conversation(id); }, std::move(done));
}

void PostgresStore::AppendMessage(NewMessage msg, Callback<AppendResult> done) {
  ConversationId conversation = msg.conversation_id;
  SubmitWrite<AppendResult>([msg = std::move(msg)](Writer& w) { return w.AppendMessage(msg); },
                            [this, done = std::move(done)](Result<AppendResult> r) {
                              if (r.has_value() && !r->duplicate) messages_stored_.Inc();
                              done(std::move(r));
                            },
                            LockSet{{conversation}, {}, {}});
}

void PostgresStore::UpdateReceipt(ReceiptUpdate update, Callback<ReceiptResult> done) {
  SubmitWrite<ReceiptResult>([update](Writer& w) { return w.UpdateReceipt(update); }, std::move(done),
                             LockSet{{update.conversation_id}, {}, {update.device_id}});
}

void PostgresStore::ChangeMessage(MessageChange change, Callback<ChangeResult> done) {
  ConversationId conversation = change.conversation_id;
  SubmitWrite<ChangeResult>([change = std::move(change)](Writer& w) { return w.ChangeMessage(change); },
                            std::move(done), LockSet{{conversation}, {}, {}});
}

void PostgresStore::History(ConversationId id, UserId viewer, Seq before, int limit,
                            Callback<std::vector<MessageRecord>> done) {
  SubmitRead<std::vector<MessageRecord>>(
      [id, viewer, before, limit](Reader& r) { return r.History(id, viewer, before, limit); }, std::move(done));
}

void PostgresStore::SearchMessages(MessageSearchQuery query, Callback<MessageSearchPage> done) {
  SubmitRead<MessageSearchPage>([query = std::move(query)](Reader& r) { return r.SearchMessages(query); },
                                std::move(done));
}

void PostgresStore::SetDisappearing(UserId user_id, ConversationId conversation_id, int64_t seconds, int64_t now,
                                    Callback<SocialResult> done) {
  SubmitWrite<SocialResult>([user_id, conversation_id, seconds, now](
                                Writer& w) { return w.SetDisappearing(user_id, conversation_id, seconds, now); },
                            std::move(done), LockSet{{conversation_id}, {}, {}});
}

void PostgresStore::ExpireMessages(int64_t now, int max_messages, Callback<ExpireProgress> done) {
  SubmitWrite<ExpireProgress>([now, max_messages](Writer& w) { return w.ExpireMessages(now, max_messages); },
                              std::move(done), {}, /*solo=*/true);
}

void PostgresStore::CompactMessages(CompactRequest req, Callback<CompactProgress> done) {
  SubmitWrite<CompactProgress>([req](Writer& w) { return w.CompactMessages(req); }, std::move(done), {},
                               /*solo=*/true);
}

void PostgresStore::PurgeDeleted(int64_t deleted_before, int max_messages, Callback<PurgeProgress> done) {
  SubmitWrite<PurgeProgress>(
      [deleted_before, max_messages](Writer& w) { return w.PurgeDeleted(deleted_before, max_messages); },
      std::move(done), {}, /*solo=*/true);
}

void PostgresStore::TrimStreams(TrimRequest req, Callback<TrimProgress> done) {
  SubmitWrite<TrimProgress>([req](Writer& w) { return w.TrimStreams(req); }, std::move(done), {}, /*solo=*/true);
}

void PostgresStore::IndexSearch(int max_entries, Callback<SearchIndexProgress> done) {
  SubmitWrite<SearchIndexProgress>([max_entries](Writer& w) { return w.IndexSearch(max_entries); }, std::move(done),
                                   {}, /*solo=*/true);
}

void PostgresStore::ReadStream(UserId user_id, UserSeq after, int limit, Callback<StreamPage> done) {
  SubmitRead<StreamPage>(
      [this, user_id, after, limit](Reader& r) {
        uint64_t rows = 0;
        Result<StreamPage> page = r.ReadStream(user_id, after, limit, &rows);
        rows_read_sync_.fetch_add(rows, std::memory_order_relaxed);
        sync_rows_read_.Observe(static_cast<double>(rows));
        return page;
      },
      std::move(done));
}

void PostgresStore::GetHead(UserId user_id, Callback<UserSeq> done) {
  SubmitRead<UserSeq>([user_id](Reader& r) -> Result<UserSeq> { return r.Head(user_id); }, std::move(done));
}

void PostgresStore::Export(ExportTable table, std::vector<int64_t> after, int limit, Callback<ExportPage> done) {
  if (!after.empty() && static_cast<int>(after.size()) != ExportKeyColumns(table)) {
    return done(Status(ErrorCode::kBadRequest, "after needs one value per key column"));
  }
  SubmitRead<ExportPage>(
      [table, after = std::move(after), limit](Reader& r) { return r.Export(table, after, std::max(1, limit)); },
      std::move(done));
}

void PostgresStore::GetConversationStates(UserId user_id, std::vector<ConversationId> ids,
                                          Callback<std::vector<ConversationState>> done) {
  SubmitRead<std::vector<ConversationState>>(
      [user_id, ids = std::move(ids)](Reader& r) { return r.ConversationStates(user_id, ids); }, std::move(done));
}

void PostgresStore::GetSnapshot(UserId user_id, int latest_per_conversation, Callback<Snapshot> done) {
  SubmitRead<Snapshot>(
      [user_id, latest_per_conversation](Reader& r) { return r.GetSnapshot(user_id, latest_per_conversation); },
      std::move(done));
}

void PostgresStore::SetProfile(UserId user_id, std::optional<std::string> display_name,
                               std::optional<std::string> about, int64_t now, Callback<SocialResult> done) {
  SubmitWrite<SocialResult>(
      [user_id, display_name = std::move(display_name), about = std::move(about), now](Writer& w) {
        return w.SetProfile(user_id, display_name, about, now);
      },
      std::move(done), LockSet{{}, {user_id}, {}});
}

void PostgresStore::GetProfiles(UserId viewer, std::vector<UserId> ids, Callback<std::vector<ProfileRecord>> done) {
  SubmitRead<std::vector<ProfileRecord>>(
      [viewer, ids = std::move(ids)](Reader& r) { return r.Profiles(viewer, ids); }, std::move(done));
}

void PostgresStore::AddContact(UserId owner, UserId contact, int64_t now, Callback<SocialResult> done) {
  SubmitWrite<SocialResult>([owner, contact, now](Writer& w) { return w.AddContact(owner, contact, now); },
                            std::move(done), LockSet{{}, {owner, contact}, {}});
}

void PostgresStore::RemoveContact(UserId owner, UserId contact, int64_t now, Callback<SocialResult> done) {
  SubmitWrite<SocialResult>([owner, contact, now](Writer& w) { return w.RemoveContact(owner, contact, now); },
                            std::move(done), LockSet{{}, {owner, contact}, {}});
}

void PostgresStore::ListContacts(UserId owner, Callback<std::vector<ContactRecord>> done) {
  SubmitRead<std::vector<ContactRecord>>([owner](Reader& r) { return r.Contacts(owner); }, std::move(done));
}

void PostgresStore::Block(UserId owner, UserId target, int64_t now, Callback<SocialResult> done) {
  SubmitWrite<SocialResult>([owner, target, now](Writer& w) { return w.Block(owner, target, now); },
                            std::move(done), LockSet{{}, {owner, target}, {}});
}

void PostgresStore::Unblock(UserId owner, UserId target, int64_t now, Callback<SocialResult> done) {
  SubmitWrite<SocialResult>([owner, target, now](Writer& w) { return w.Unblock(owner, target, now); },
                            std::move(done), LockSet{{}, {owner, target}, {}});
}

void PostgresStore::ListBlocked(UserId owner, Callback<std::vector<ProfileRecord>> done) {
  SubmitRead<std::vector<ProfileRecord>>([owner](Reader& r) { return r.Blocked(owner); }, std::move(done));
}

void PostgresStore::SearchUsers(UserId searcher, std::string query, std::string after, int limit,
                                Callback<SearchPage> done) {
  SubmitRead<SearchPage>([searcher, query = std::move(query), after = std::move(after), limit](
                             Reader& r) { return r.SearchUsers(searcher, query, after, limit); },
                         std::move(done));
}

void PostgresStore::ListConversations(UserId user_id, int64_t before_activity, ConversationId before_id, int limit,
                                      int latest_per_conversation, Callback<ConversationPage> done) {
  SubmitRead<ConversationPage>(
      [user_id, before_activity, before_id, limit, latest_per_conversation](Reader& r) {
        return r.ListConversations(user_id, before_activity, before_id, limit, latest_per_conversation);
      },
      std::move(done));
}

void PostgresStore::ChangePassword(UserId user_id, std::string new_hash, DeviceId keep_device, int64_t /*now*/,
                                   Callback<std::vector<DeviceId>> done) {
  SubmitWrite<std::vector<DeviceId>>(
      [user_id, new_hash = std::move(new_hash), keep_device](Writer& w) {
        return w.ChangePassword(user_id, new_hash, keep_device);
      },
      std::move(done), LockSet{{}, {user_id}, {}});
}

void PostgresStore::BulkCreateUsers(std::vector<NewBulkUser> users, int64_t now,
                                    Callback<std::vector<BulkUserResult>> done) {
  SubmitWrite<std::vector<BulkUserResult>>(
      [users = std::move(users), now](Writer& w) { return w.BulkCreateUsers(users, now); }, std::move(done));
}

void PostgresStore::SetPresenceVisibility(UserId user_id, PresenceVisibility visibility, int64_t now,
                                          Callback<SocialResult> done) {
  SubmitWrite<SocialResult>(
      [user_id, visibility, now](Writer& w) { return w.SetPresenceVisibility(user_id, visibility, now); },
      std::move(done), LockSet{{}, {user_id}, {}});
}

void PostgresStore::SetLastSeen(UserId user_id, int64_t last_seen, StatusCallback done) {
  SubmitWrite<Empty>([user_id, last_seen](Writer& w) { return w.SetLastSeen(user_id, last_seen); },
                     ToEmptyCallback(std::move(done)), LockSet{{}, {user_id}, {}});
}

void PostgresStore::GetPresence(UserId viewer, std::vector<UserId> ids, Callback<std::vector<PresenceRecord>> done) {
  SubmitRead<std::vector<PresenceRecord>>(
      [viewer, ids = std::move(ids)](Reader& r) { return r.Presence(viewer, ids); }, std::move(done));
}

void PostgresStore::GetMessageTimeline(ConversationId id, Seq seq, Callback<MessageTimeline> done) {
  SubmitRead<MessageTimeline>([id, seq](Reader& r) { return r.Timeline(id, seq); }, std::move(done));
}

void PostgresStore::SetUserDisabled(UserId user_id, bool disabled, bool revoke_devices,
                                    Callback<DisableResult> done) {
  SubmitWrite<DisableResult>(
      [user_id, disabled, revoke_devices](Writer& w) { return w.SetUserDisabled(user_id, disabled, revoke_devices); },
      std::move(done), LockSet{{}, {user_id}, {}});
}

void PostgresStore::EraseAccount(UserId user_id, int64_t now, Callback<EraseResult> done) {
  SubmitWrite<EraseResult>([user_id, now](Writer& w) { return w.EraseAccount(user_id, now); }, std::move(done),
                           LockSet{{}, {user_id}, {}});
}

void PostgresStore::GetStoreSummary(Callback<StoreSummary> done) {
  SubmitRead<StoreSummary>([](Reader& r) { return r.Summary(); }, std::move(done));
}

void PostgresStore::GetSchemaStatus(Callback<SchemaStatus> done) {
  SubmitRead<SchemaStatus>([](Reader& r) { return r.Schema(); }, std::move(done));
}

void PostgresStore::Backup(std::string /*path*/, Callback<BackupResult> done) {
  done(Status(ErrorCode::kBadRequest,
              "the PostgreSQL store is backed up with PostgreSQL's own tools (pg_dump, pg_basebackup); see "
              "docs/operations.md"));
}

size_t PostgresStore::AbandonQueuedWrites(const Status& why) {
  return write_queue_.FailQueued(why);
}

void PostgresStore::Flush(StatusCallback done) {
  // An op that writes nothing: its batch commits only after every earlier one.
  SubmitWrite<Empty>([](Writer&) -> Result<Empty> { return Empty{}; }, ToEmptyCallback(std::move(done)));
}

StoreStats PostgresStore::Stats() const {
  StoreStats s;
  s.commits = commits_.load(std::memory_order_relaxed);
  s.rows_read_sync = rows_read_sync_.load(std::memory_order_relaxed);
  s.queued_writes = static_cast<uint64_t>(std::max<int64_t>(0, queue_depth_.value()));
  return s;
}

uint64_t PostgresStore::WriterStatementsForTest() const { return writer_statements_.load(std::memory_order_relaxed); }

Status PostgresStore::MigrateToVersionForTest(const std::string& url, int version) {
  Result<std::unique_ptr<PgConn>> db = PgConn::Connect(url, kConnectTimeoutS);
  if (!db.has_value()) return db.error();
  return Migrate(**db, version);
}

// ---------------------------------------------------------------------------
// Push (issue 11): the same rules as SqliteStore's "Push". Claims take the
// due rows with FOR UPDATE SKIP LOCKED, so two nodes claiming at once take
// different jobs; the committed lease then keeps others off until it expires.

namespace {

const char kUnreadTotalSql[] =
    "SELECT coalesce(sum((SELECT count(*) FROM messages m WHERE m.conversation_id = mb.conversation_id "
    "AND m.seq > coalesce(r.read, 0) AND m.sender_id <> $1 AND NOT EXISTS (SELECT 1 FROM withheld w "
    "WHERE w.conversation_id = m.conversation_id AND w.user_id = $1 AND w.seq = m.seq))), 0)::bigint "
    "FROM members mb LEFT JOIN user_receipts r ON r.conversation_id = mb.conversation_id AND r.user_id = $1 "
    "WHERE mb.user_id = $1";

}  // namespace

Result<Empty> PostgresStore::Writer::SetPushEndpoint(UserId user_id, DeviceId device_id, const std::string& provider,
                                                     const std::string& token, int64_t now) {
  if (db_->Query("SELECT 1 FROM devices WHERE id = $1 AND user_id = $2 AND NOT revoked FOR UPDATE",
                 PgParams().Int(device_id).Int(user_id))
          .empty()) {
    return Status(ErrorCode::kUnknownDevice, "no such live device of this user");
  }
  if (!db_->Query("SELECT 1 FROM push_endpoints WHERE device_id = $1 AND provider = $2 AND token = $3",
                  PgParams().Int(device_id).Text(provider).Text(token))
           .empty()) {
    return Empty{};  // the same endpoint again: health kept
  }
  db_->Defer("DELETE FROM push_jobs WHERE device_id = $1", PgParams().Int(device_id));
  db_->Defer("DELETE FROM push_endpoints WHERE device_id = $1", PgParams().Int(device_id));
  db_->Defer("INSERT INTO push_endpoints(device_id, user_id, provider, token, registered_at) VALUES($1, $2, $3, $4, $5)",
             PgParams().Int(device_id).Int(user_id).Text(provider).Text(token).Int(now));
  return Empty{};
}

Result<bool> PostgresStore::Writer::RemovePushEndpoint(UserId user_id, DeviceId device_id) {
  if (db_->Query("SELECT 1 FROM devices WHERE id = $1 AND user_id = $2 AND NOT revoked",
                 PgParams().Int(device_id).Int(user_id))
          .empty()) {
    return Status(ErrorCode::kUnknownDevice, "no such live device of this user");
  }
  db_->Defer("DELETE FROM push_jobs WHERE device_id = $1", PgParams().Int(device_id));
  return !db_->Query("DELETE FROM push_endpoints WHERE device_id = $1 RETURNING 1", PgParams().Int(device_id)).empty();
}

Result<SocialResult> PostgresStore::Writer::SetMuted(UserId user_id, ConversationId conversation_id, bool muted,
                                                     int64_t now) {
  const Members* c = FindMembers(conversation_id);
  if (c == nullptr) return Status(ErrorCode::kUnknownConversation, "no such conversation");
  if (!IsMember(*c, user_id)) return Status(ErrorCode::kNotMember, "you are not a member of this conversation");
  SocialResult result;
  PgRows r = muted ? db_->Query("INSERT INTO push_mutes(user_id, conversation_id) VALUES($1, $2) ON CONFLICT DO NOTHING "
                                "RETURNING 1",
                                PgParams().Int(user_id).Int(conversation_id))
                   : db_->Query("DELETE FROM push_mutes WHERE user_id = $1 AND conversation_id = $2 RETURNING 1",
                                PgParams().Int(user_id).Int(conversation_id));
  if (r.empty()) return result;
  result.changed = true;
  result.positions.push_back(
      AppendEvent(user_id, EventKind::kMute, conversation_id, 0, user_id, Watermarks{muted ? 1 : 0, 0}, now));
  return result;
}

Result<SocialResult> PostgresStore::Writer::SetDraft(UserId user_id, ConversationId conversation_id,
                                                     const std::string& text, int64_t now) {
  const Members* c = FindMembers(conversation_id);
  if (c == nullptr) return Status(ErrorCode::kUnknownConversation, "no such conversation");
  if (!IsMember(*c, user_id)) return Status(ErrorCode::kNotMember, "you are not a member of this conversation");
  SocialResult result;
  // Rewritten only when the text differs: a retried set changes nothing.
  PgRows r = text.empty()
                 ? db_->Query("DELETE FROM drafts WHERE user_id = $1 AND conversation_id = $2 RETURNING 1",
                              PgParams().Int(user_id).Int(conversation_id))
                 : db_->Query("INSERT INTO drafts AS d(user_id, conversation_id, text, updated_at) VALUES($1, $2, $3, $4) "
                              "ON CONFLICT(user_id, conversation_id) DO UPDATE SET text = excluded.text, "
                              "updated_at = excluded.updated_at WHERE d.text <> excluded.text RETURNING 1",
                              PgParams().Int(user_id).Int(conversation_id).Text(text).Int(now));
  if (r.empty()) return result;
  result.changed = true;
  result.positions.push_back(AppendEvent(user_id, EventKind::kDraft, conversation_id, 0, 0, {}, now));
  return result;
}

Result<SocialResult> PostgresStore::Writer::SetPushPreviews(UserId user_id, bool previews, int64_t now) {
  PgRows cur = db_->Query("SELECT push_previews FROM users WHERE id = $1 FOR UPDATE", PgParams().Int(user_id));
  if (cur.empty()) return Status(ErrorCode::kUnknownUser, "unknown user");
  SocialResult result;
  if (cur.Bool(0, 0) == previews) return result;
  db_->Defer("UPDATE users SET push_previews = $2 WHERE id = $1", PgParams().Int(user_id).Bool(previews));
  result.changed = true;
  result.positions.push_back(
      AppendEvent(user_id, EventKind::kPushPreviews, 0, 0, user_id, Watermarks{previews ? 1 : 0, 0}, now));
  return result;
}

Result<int> PostgresStore::Writer::EnqueuePush(const PushRequest& req) {
  if (!db_->Query("SELECT 1 FROM push_mutes WHERE user_id = $1 AND conversation_id = $2",
                  PgParams().Int(req.user_id).Int(req.conversation_id))
           .empty()) {
    return 0;
  }
  PgRows t = db_->Query(
      "SELECT device_id, last_success_at, (last_conversation_id = $2 AND last_seq = $3 AND last_kind = $4)::int "
      "FROM push_endpoints WHERE user_id = $1 ORDER BY device_id",
      PgParams().Int(req.user_id).Int(req.conversation_id).Int(req.seq).Int(static_cast<int64_t>(req.kind)));
  int queued = 0;
  for (int i = 0; i < t.size(); ++i) {
    DeviceId d = t.Int(i, 0);
    if (std::find(req.skip_devices.begin(), req.skip_devices.end(), d) != req.skip_devices.end()) continue;
    if (t.Int(i, 2) != 0) continue;
    int64_t due = std::max(req.now, t.Int(i, 1) + req.coalesce_ms);
    PgRows r = db_->Query(
        "INSERT INTO push_jobs AS j(device_id, user_id, conversation_id, seq, kind, due_at, created_at) "
        "VALUES($1, $2, $3, $4, $5, $6, $7) "
        "ON CONFLICT(device_id) DO UPDATE SET conversation_id = excluded.conversation_id, seq = excluded.seq, "
        "kind = excluded.kind, version = j.version + 1 "
        "WHERE NOT (j.conversation_id = excluded.conversation_id AND j.seq = excluded.seq AND j.kind = excluded.kind) "
        "AND NOT (j.kind = 1 AND excluded.kind = 2) RETURNING 1",
        PgParams().Int(d).Int(req.user_id).Int(req.conversation_id).Int(req.seq).Int(static_cast<int64_t>(req.kind))
            .Int(due).Int(req.now));
    queued += r.size();
  }
  return queued;
}

Result<std::vector<PushJob>> PostgresStore::Writer::ClaimPushJobs(const std::string& node, int64_t now,
                                                                  int64_t lease_ms, int limit) {
  PgRows r = db_->Query(
      "WITH c AS (SELECT device_id FROM push_jobs WHERE due_at <= $1 AND lease_until <= $1 "
      "ORDER BY due_at, device_id LIMIT $2 FOR UPDATE SKIP LOCKED) "
      "UPDATE push_jobs j SET lease_owner = $3, lease_until = $4 FROM c, push_endpoints e "
      "WHERE j.device_id = c.device_id AND e.device_id = j.device_id "
      "RETURNING j.device_id, j.user_id, e.provider, e.token, j.conversation_id, j.seq, j.kind, j.version, "
      "j.attempts, j.created_at, j.due_at",
      PgParams().Int(now).Int(limit).Text(node).Int(now + lease_ms));
  std::vector<PushJob> jobs;
  for (int i = 0; i < r.size(); ++i) {
    PushJob j;
    j.device_id = r.Int(i, 0);
    j.user_id = r.Int(i, 1);
    j.provider = r.Text(i, 2);
    j.token = r.Text(i, 3);
    j.conversation_id = r.Int(i, 4);
    j.seq = r.Int(i, 5);
    j.kind = static_cast<PushKind>(r.Int(i, 6));
    j.version = r.Int(i, 7);
    j.attempts = static_cast<int>(r.Int(i, 8));
    j.created_at = r.Int(i, 9);
    jobs.push_back(std::move(j));
  }
  std::sort(jobs.begin(), jobs.end(), [](const PushJob& a, const PushJob& b) { return a.device_id < b.device_id; });
  std::vector<ColdText> cold;  // previews of compacted messages, paged in at the end
  std::vector<PushJob*> cold_jobs;  // parallel to `cold`
  for (PushJob& j : jobs) {
    PgRows u = db_->Query("SELECT push_previews FROM users WHERE id = $1", PgParams().Int(j.user_id));
    j.previews = u.empty() || u.Bool(0, 0);
    PgRows b = db_->Query(kUnreadTotalSql, PgParams().Int(j.user_id));
    j.badge = b.empty() ? 0 : b.Int(0, 0);
    if (j.kind != PushKind::kMessage) continue;
    PgRows rd = db_->Query("SELECT read FROM user_receipts WHERE conversation_id = $1 AND user_id = $2",
                           PgParams().Int(j.conversation_id).Int(j.user_id));
    j.alert = j.seq > (rd.empty() ? 0 : rd.Int(0, 0));
    PgRows m = db_->Query(
        "SELECT m.sender_id, m.body, u.username, u.display_name, m.cold FROM messages m "
        "JOIN users u ON u.id = m.sender_id WHERE m.conversation_id = $1 AND m.seq = $2",
        PgParams().Int(j.conversation_id).Int(j.seq));
    if (!m.empty()) {
      j.sender_id = m.Int(0, 0);
      j.sender_display_name = m.Text(0, 3).empty() ? m.Text(0, 2) : m.Text(0, 3);
      if (j.previews && j.alert) {
        j.preview = m.Text(0, 1);
        if (m.Bool(0, 4)) {
          cold.push_back(ColdText{j.conversation_id, j.seq, &j.preview});
          cold_jobs.push_back(&j);
        }
      }
    }
  }
  FillPreviews(cold, cold_jobs);
  if (db_->failed()) return db_->error();
  return jobs;
}

void PostgresStore::Writer::FillPreviews(const std::vector<ColdText>& cold, const std::vector<PushJob*>& jobs) {
  // One page-in for the whole claim, as a read would. It fails as a whole,
  // and the leases are already written: failing the claim would leave all
  // its jobs waiting out their leases. So a text that cannot be paged in
  // costs its own preview only (PushJob::preview_error), and the push goes
  // out at once without it. Per text, the row is read again first (this
  // statement sees what committed since): the usual cause is another node
  // editing or deleting the message right now, and once that committed the
  // row holds the current text ('' after a delete).
  if (cold_.Fill(*db_, cold, /*lock_rows=*/true).ok() || db_->failed()) return;
  for (size_t i = 0; i < cold.size(); ++i) {
    PushJob& j = *jobs[i];
    PgRows m = db_->Query("SELECT body, cold FROM messages WHERE conversation_id = $1 AND seq = $2",
                          PgParams().Int(cold[i].conversation).Int(cold[i].seq));
    if (db_->failed()) return;
    if (!m.empty() && !m.Bool(0, 1)) {
      j.preview = m.Text(0, 0);
      continue;
    }
    if (Status s = cold_.Fill(*db_, {cold[i]}, /*lock_rows=*/true); !s.ok()) {
      if (db_->failed()) return;
      j.preview.clear();
      j.preview_error = s.ToString();
    }
  }
}

Result<Empty> PostgresStore::Writer::CompletePush(const PushCompletion& c) {
  PgRows cur = db_->Query("SELECT (lease_owner = $2)::int, version, attempts FROM push_jobs WHERE device_id = $1 FOR UPDATE",
                          PgParams().Int(c.device_id).Text(c.node));
  bool owned = !cur.empty() && cur.Int(0, 0) != 0;
  bool ok = c.outcome == PushOutcome::kDelivered;
  db_->Defer(
      "UPDATE push_endpoints SET last_attempt_at = $2, last_result = $3, "
      "last_success_at = CASE WHEN $4 THEN $2 ELSE last_success_at END, "
      "failure_count = failure_count + CASE WHEN $4 THEN 0 ELSE 1 END, "
      "last_conversation_id = CASE WHEN $4 THEN $5 ELSE last_conversation_id END, "
      "last_seq = CASE WHEN $4 THEN $6 ELSE last_seq END, "
      "last_kind = CASE WHEN $4 THEN $7 ELSE last_kind END WHERE device_id = $1",
      PgParams().Int(c.device_id).Int(c.now).Text(ok ? "ok" : c.result).Bool(ok).Int(c.conversation_id).Int(c.seq)
          .Int(static_cast<int64_t>(c.kind)));
  if (!owned) return Empty{};
  int64_t version = cur.Int(0, 1), attempts = cur.Int(0, 2);
  auto drop = [&] { db_->Defer("DELETE FROM push_jobs WHERE device_id = $1", PgParams().Int(c.device_id)); };
  switch (c.outcome) {
    case PushOutcome::kDelivered:
      if (version == c.version) {
        drop();
      } else {
        db_->Defer("UPDATE push_jobs SET lease_owner = '', lease_until = 0, attempts = 0, due_at = $2 WHERE device_id = $1",
                   PgParams().Int(c.device_id).Int(c.now + c.coalesce_ms));
      }
      break;
    case PushOutcome::kRetry:
      if (attempts + 1 >= c.max_attempts) {
        drop();
      } else {
        db_->Defer(
            "UPDATE push_jobs SET lease_owner = '', lease_until = 0, attempts = attempts + 1, due_at = $2 "
            "WHERE device_id = $1",
            PgParams().Int(c.device_id).Int(c.retry_at));
      }
      break;
    case PushOutcome::kRejected: drop(); break;
    case PushOutcome::kGone:
      drop();
      db_->Defer("DELETE FROM push_endpoints WHERE device_id = $1", PgParams().Int(c.device_id));
      break;
  }
  return Empty{};
}

void PostgresStore::SetPushEndpoint(UserId user_id, DeviceId device_id, std::string provider, std::string token,
                                    int64_t now, StatusCallback done) {
  SubmitWrite<Empty>(
      [user_id, device_id, provider = std::move(provider), token = std::move(token), now](Writer& w) {
        return w.SetPushEndpoint(user_id, device_id, provider, token, now);
      },
      ToEmptyCallback(std::move(done)), LockSet{{}, {}, {device_id}});
}

void PostgresStore::RemovePushEndpoint(UserId user_id, DeviceId device_id, Callback<bool> done) {
  SubmitWrite<bool>([user_id, device_id](Writer& w) { return w.RemovePushEndpoint(user_id, device_id); },
                    std::move(done), LockSet{{}, {}, {device_id}});
}

void PostgresStore::SetMuted(UserId user_id, ConversationId conversation_id, bool muted, int64_t now,
                             Callback<SocialResult> done) {
  SubmitWrite<SocialResult>(
      [user_id, conversation_id, muted, now](Writer& w) { return w.SetMuted(user_id, conversation_id, muted, now); },
      std::move(done), LockSet{{}, {user_id}, {}});
}

void PostgresStore::SetDraft(UserId user_id, ConversationId conversation_id, std::string text, int64_t now,
                             Callback<SocialResult> done) {
  // The conversation's lock orders it against the user's sends there, which
  // clear the draft.
  SubmitWrite<SocialResult>([user_id, conversation_id, text = std::move(text), now](
                                Writer& w) { return w.SetDraft(user_id, conversation_id, text, now); },
                            std::move(done), LockSet{{conversation_id}, {user_id}, {}});
}

void PostgresStore::SetPushPreviews(UserId user_id, bool previews, int64_t now, Callback<SocialResult> done) {
  SubmitWrite<SocialResult>([user_id, previews, now](Writer& w) { return w.SetPushPreviews(user_id, previews, now); },
                            std::move(done), LockSet{{}, {user_id}, {}});
}

void PostgresStore::GetPushSettings(UserId user_id, Callback<std::pair<bool, std::vector<ConversationId>>> done) {
  using Settings = std::pair<bool, std::vector<ConversationId>>;
  SubmitRead<Settings>(
      [user_id](Reader& r) -> Result<Settings> {
        PgRows u = r.db().Query("SELECT push_previews FROM users WHERE id = $1", PgParams().Int(user_id));
        if (u.empty()) return Status(ErrorCode::kUnknownUser, "unknown user");
        Settings out{u.Bool(0, 0), {}};
        PgRows m = r.db().Query("SELECT conversation_id FROM push_mutes WHERE user_id = $1 ORDER BY conversation_id",
                                PgParams().Int(user_id));
        for (int i = 0; i < m.size(); ++i) out.second.push_back(m.Int(i, 0));
        return out;
      },
      std::move(done));
}

void PostgresStore::ListPushHealth(UserId user_id, Callback<std::vector<PushHealth>> done) {
  SubmitRead<std::vector<PushHealth>>(
      [user_id](Reader& r) -> Result<std::vector<PushHealth>> {
        PgRows h = r.db().Query(
            "SELECT e.device_id, e.provider, e.registered_at, e.last_attempt_at, e.last_result, e.last_success_at, "
            "e.failure_count, EXISTS(SELECT 1 FROM push_jobs j WHERE j.device_id = e.device_id)::int "
            "FROM push_endpoints e WHERE e.user_id = $1 ORDER BY e.device_id",
            PgParams().Int(user_id));
        std::vector<PushHealth> out;
        for (int i = 0; i < h.size(); ++i)
          out.push_back(PushHealth{h.Int(i, 0), h.Text(i, 1), h.Int(i, 2), h.Int(i, 3), h.Text(i, 4), h.Int(i, 5),
                                   h.Int(i, 6), h.Int(i, 7) != 0});
        return out;
      },
      std::move(done));
}

void PostgresStore::EnqueuePush(PushRequest req, Callback<int> done) {
  UserId user = req.user_id;
  SubmitWrite<int>([req = std::move(req)](Writer& w) { return w.EnqueuePush(req); }, std::move(done),
                   LockSet{{}, {user}, {}});
}

void PostgresStore::ClaimPushJobs(std::string node, int64_t now, int64_t lease_ms, int limit,
                                  Callback<std::vector<PushJob>> done) {
  SubmitWrite<std::vector<PushJob>>(
      [node = std::move(node), now, lease_ms, limit](Writer& w) { return w.ClaimPushJobs(node, now, lease_ms, limit); },
      std::move(done));
}

void PostgresStore::CompletePush(PushCompletion c, StatusCallback done) {
  DeviceId device = c.device_id;
  SubmitWrite<Empty>([c = std::move(c)](Writer& w) { return w.CompletePush(c); }, ToEmptyCallback(std::move(done)),
                     LockSet{{}, {}, {device}});
}

void PostgresStore::GetPushQueueStats(int64_t now, Callback<PushQueueStats> done) {
  SubmitRead<PushQueueStats>(
      [now](Reader& r) -> Result<PushQueueStats> {
        PushQueueStats st;
        PgRows j = r.db().Query(
            "SELECT count(*), count(*) FILTER (WHERE lease_until > $1), (SELECT count(*) FROM push_endpoints) "
            "FROM push_jobs",
            PgParams().Int(now));
        if (!j.empty()) {
          st.pending = j.Int(0, 0);
          st.leased = j.Int(0, 1);
          st.endpoints = j.Int(0, 2);
        }
        return st;
      },
      std::move(done));
}

}  // namespace parley::store
