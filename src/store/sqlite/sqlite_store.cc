// SqliteStore: design.
//
// One file, two connections, two threads. The writer thread owns the only
// read-write connection, so SQLite never sees two writers and every write
// transaction is BEGIN IMMEDIATE without lock contention. It group-commits:
// whatever is queued when it wakes (up to commit_max_batch) goes into one
// transaction, and the fsync of that COMMIT is shared by all of it; a
// conversation's seqs are assigned in commit order because one thread assigns
// them. Each reader thread owns a read-only connection; under WAL it reads
// the last committed snapshot without blocking the writer, so sync and
// history never wait behind a commit, nor behind another reader's long read.
//
// Expected failures (unknown user, not a member, a taken username, ...) are
// found by reading before writing, so a failing operation writes nothing and
// its batch commits the others; an operation never needs its own SAVEPOINT.
// Any SQLite error, by contrast, fails the whole batch: it is rolled back and
// every operation in it gets that error.
//
// The writer caches, per conversation, its last seq, last activity and
// members (with each member's last visible activity, user_receipts row,
// highest seq withheld by a block and draft flag), per user the head user
// seq and the top of their conversation list ("Member activity"), per
// (owner, target) pair looked up whether a block exists, and each
// live device with its watermarks per conversation ("Device watermarks").
// Every write to those rows runs on this thread, so a send or a receipt
// reads none of them (issue 9); the rows are still written in the
// operation's own statements (write-through).
// The conversation's own fields and the heads are write-behind: an operation
// updates the cache and marks the entry dirty; the dirty entries are written to
// conversations/members/user_heads once per batch, just before COMMIT, so a batch of
// N messages into one conversation updates its row once. After a rollback the
// caches may hold uncommitted values and are dropped whole (reloaded lazily);
// they are also dropped between batches when they grow past a bound.
//
// Schema (version kSchemaVersion, recorded in PRAGMA user_version; kMigrations
// below is the list of numbered steps, each applied in its own transaction;
// step 2 added profiles, contacts, blocks, withheld, name_prefixes and
// members.last_activity_at to version-1 files in place; step 3 added the
// blocks.shown_* columns, filled from the owner's profile at migration; step
// 4 presence; step 5 users.disabled, messages.accepted_at/stored_at and
// receipt_log; step 8 re-indexed non-ASCII display names after Unicode
// case folding):
//   users(id PK, username UNIQUE, password_hash, created_at, display_name,
//           about, profile_updated_at)
//   devices(id PK, user_id, name, platform, token_hash BLOB UNIQUE (NULL once
//           revoked), created_at, last_seen_at, cursor, revoked)
//           + devices_by_user(user_id)
//   conversations(id PK, direct_key UNIQUE ("min:max" of the two user ids of
//           a direct conversation), last_seq, created_at, last_activity_at)
//   members(conversation_id, user_id, last_activity_at = the member's last
//           visible activity, or earlier for their top conversation: see
//           "Member activity") PK(conversation_id, user_id), WITHOUT ROWID
//           + members_by_user(user_id, conversation_id)
//           + members_by_activity(user_id, last_activity_at, conversation_id)
//           (the conversation list is a range scan of it)
//   messages(conversation_id, seq, sender_id, sender_device_id, client_id,
//           body, created_at) PK(conversation_id, seq), WITHOUT ROWID
//           + UNIQUE messages_dedup(conversation_id, sender_id, client_id)
//   user_events(user_id, user_seq, kind, conversation_id, seq,
//           receipt_user_id (kProfile/kContact/kBlock: the subject user),
//           delivered (those kinds: the flag), read, created_at, data (see
//           "Event payloads")) PK(user_id, user_seq), WITHOUT ROWID
//   user_heads(user_id PK, head)
//   device_receipts(device_id, conversation_id, delivered, read)
//           PK(device_id, conversation_id), WITHOUT ROWID: since step 23
//           a lower bound only, written by no receipt ("Device watermarks")
//   user_receipts(conversation_id, user_id, delivered, read, announced =
//           delivered as the other member's stream last carried it)
//           PK(conversation_id, user_id), WITHOUT ROWID
//   receipt_log(conversation_id, device_id, delivered, read, at)
//           PK(conversation_id, device_id, delivered, read), WITHOUT ROWID:
//           every move of a device's watermarks with its time (one row per
//           UpdateReceipt that moved them). The message timeline's first
//           delivered/read time of a device is one probe of each (step 16
//           dropped the index on read: see Reader::Timeline).
//   contacts(owner_id, contact_id, added_at) PK(owner_id, contact_id),
//           WITHOUT ROWID + contacts_by_contact(contact_id, owner_id)
//   blocks(owner_id, target_id, created_at, shown_display_name, shown_about,
//           shown_updated_at = the owner's profile when the block began, which
//           is what the target keeps seeing of the owner while it lasts)
//           PK(owner_id, target_id), WITHOUT ROWID
//   withheld(conversation_id, user_id, seq) PK(conversation_id, user_id, seq),
//           WITHOUT ROWID: messages withheld from a member who blocked the
//           sender. Views of a conversation (history, latest, unread) probe
//           it per message; "stay sent" lists are range scans of it.
//   name_prefixes(prefix, username, user_id) PK(prefix, username), WITHOUT
//           ROWID: every prefix (up to kMaxIndexedPrefix bytes) of every
//           display-name word, so search pages in username order.
//   push_endpoints(device_id PK, user_id, provider, token, registered_at,
//           health: last_attempt_at, last_result, last_success_at,
//           failure_count; the key of the last push delivered:
//           last_conversation_id, last_seq, last_kind)
//           + push_endpoints_by_user(user_id, device_id)
//   push_jobs(device_id PK, user_id, conversation_id, seq, kind, due_at,
//           attempts, lease_owner, lease_until, version, created_at)
//           + push_jobs_by_due(due_at): at most one pending push per device
//           (coalescing), claimed through a lease (step 6, with push_mutes
//           and users.push_previews; see "Push" at the end of this file)
//   push_mutes(user_id, conversation_id) PK(both), WITHOUT ROWID
//   step 7 (issue 12): messages.version/edited_at/deleted_at;
//   message_edits(conversation_id, seq, version, client_id, editor_device_id,
//           body, created_at) PK(conversation_id, seq, version), WITHOUT
//           ROWID + UNIQUE message_edits_dedup(conversation_id, seq,
//           client_id): every accepted edit (its text, emptied by a delete
//           for everyone), the body of kEdit events and the edits' dedup;
//   withheld.hidden_at: 0 = withheld by a block; > 0 = the user deleted the
//           message for themself then (hidden from every view like a
//           withheld one, but never listed as "stays sent").
//   step 9 (issue 12): drafts(user_id, conversation_id, text, updated_at)
//           PK(user_id, conversation_id), WITHOUT ROWID: a user's current
//           draft per conversation, no history; kDraft events read it.
//   step 10 (issue 12, message search; see "Message search" below):
//   search_queue(id INTEGER PRIMARY KEY AUTOINCREMENT, conversation_id, seq,
//           queued_at): messages whose text the search index must (re)read
//           (AUTOINCREMENT until step 19);
//   message_search: FTS5 table (words, conversation_id UNINDEXED, seq
//           UNINDEXED, version UNINDEXED; tokenize 'ascii'), rowid = doc id;
//   message_search_docs(conversation_id, seq, doc_id) PK(conversation_id,
//           seq), WITHOUT ROWID: the doc id of each indexed message.
//   step 12 (issue 12, retention; see "Retention" below):
//   conversations.disappearing_s; messages.expires_at, purged_at;
//   messages_expiring(expires_at) WHERE expires_at > 0 AND deleted_at = 0;
//   messages_to_purge(deleted_at) WHERE deleted_at > 0 AND purged_at = 0.
//   step 13 (issue 12, the cold tier; see "Cold tier" below):
//   messages.cold (1: the text is in a block, body = ''); conversations.
//           hot_since (created_at of the oldest message not compacted yet;
//           0: none) and cold_through (every seq up to it was considered)
//           + conversations_cold_due(hot_since) WHERE hot_since > 0;
//   message_blocks(conversation_id, first_seq, last_seq, messages,
//           raw_bytes, created_at, nonce, data) PK(conversation_id,
//           first_seq), WITHOUT ROWID: the zstd blocks (store/cold_block.h);
//           nonce: random, new at every write of the block (sqlite_cold.h).
//   step 14 (issue 12, stream trimming; see "Stream trimming" below):
//   user_heads.stream_floor: the lowest user seq still kept in user_events
//   (1 until the first trim; head + 1 when every entry was trimmed).
//   step 15 (issue 12): message_search rebuilt with FTS5 prefix indexes
//           (prefix = '1 2 3'), every message queued for indexing again.
//   step 16 (issue 9): receipt_log_by_read dropped.
//   step 17 (issue 9): no table changes; user_heads.head becomes a lower
//   bound (see "Stream heads"), so a file this version wrote is refused by
//   older servers, which would take it for the head and number new entries
//   again from there.
//   step 18 (issue 12, the cold tier's edit texts; see "Cold tier" below):
//   message_edits.cold (1: the text is in an edit block, body = '');
//   edit_blocks(conversation_id, first_seq, last_seq, edits, raw_bytes,
//           created_at, nonce, data) PK(conversation_id, first_seq), WITHOUT
//           ROWID: the edits' zstd blocks (store/cold_block.h), one per
//           compacted message range that had edits.
//   step 19 (issue 9): search_queue without AUTOINCREMENT; the writer
//           numbers its entries (see "Message search").
//   step 20 (issue 9): messages.search_doc, the message's FTS5 doc id (its
//           first queue id, written by its INSERT; 0 for rows stored before
//           this step, whose doc id, if any, stays in message_search_docs,
//           now only read).
//   step 21 (issue 9): the index moves to a search file of its own
//           (sqlite_search.h): message_search and message_search_docs
//           dropped; search_file(token): the token of the search file that
//           belongs to this store ('' here, so the server rebuilds it:
//           every live message queued again, each with a doc id of its own).
//   step 22 (issue 9): no table changes; conversations.last_seq and
//   conversations.last_activity_at become lower bounds (see "Conversation
//   heads"), so a file this version wrote is refused by older servers,
//   which would take them for the conversation's and number new messages
//   again from there.
//   step 23 (issue 9): no table changes; device_receipts becomes a lower
//   bound (see "Device watermarks"), so older servers, which would read a
//   device's watermarks from it alone, are refused the file.
//
// Device watermarks. A device's delivered and read watermarks in a
// conversation are the larger of its device_receipts row (written by
// servers before step 23) and its newest receipt_log row (one seek of that
// primary key, from its end: both watermarks only rise, so the last row in
// key order holds the largest of each). A receipt that moves them writes
// the log row only. Rows leave receipt_log only with their device (an
// erase revokes the user's devices first), and a revoked device's
// watermarks are never read again. Writing device_receipts at every receipt
// cost one more upsert per receipt (docs/benchmarks.md, "The search writer
// without a delete per new message; device watermarks from the receipt
// log").
//
// Stream heads. A user's head (the newest user seq) is the larger of
// user_heads.head and the user_seq of their newest user_events entry
// (PARLEY_STREAM_HEAD: one seek of the primary key). Appending an entry
// writes only the entry: the writer inserts a user's user_heads row once,
// with their first entry, and otherwise writes head only when TrimStreams
// deletes entries (the exact head, in the same transaction), so the head
// never falls behind what trimming removed. Writing the head at every
// commit cost one more B-tree leaf per user per commit: 9 % of parleyd's
// instructions per message at low load (docs/benchmarks.md).
//
// Conversation heads. A conversation's last seq and last activity are the
// larger of its conversations row's columns and its newest message's seq
// and created_at (PARLEY_CONVERSATION_LAST_SEQ, PARLEY_CONVERSATION_ACTIVITY
// in sqlite_store.h: one seek of the messages primary key; message rows are
// never deleted, a purge or the cold tier only empties their text). A send
// writes only its message: the row is written at the conversation's
// creation, and the columns stay lower bounds. Writing them at every commit
// cost one more UPDATE and B-tree leaf per conversation per commit
// (docs/benchmarks.md, "Conversation heads from the newest message").
//
// Member activity. members.last_activity_at orders a member's conversation
// list (members_by_activity, ties by conversation id) and is the list's page
// cursor. A message visible to a member moves their activity, but the
// writer leaves the row alone when the conversation is already on top of
// their list (the largest (last_activity_at, conversation_id) of their
// rows, which it keeps per user with the top's exact time: read once, the
// newest message visible to them there) and the new time is not below the
// stored one: it would not change the order. So the row of a member's top
// conversation may be older than its newest message; no other row is. A
// row that would rise above a top's stale one (another conversation's new
// activity, a new conversation) is written only after the top's exact time
// is: the stored order stays the order of the exact times, ties and a
// clock that went back included. A summary shows the exact time: the later
// of the stored one and the newest message visible to the member (message
// rows are never deleted). A chat that goes on in one conversation, the
// usual case, writes no members row per message: writing it cost an UPDATE
// of members and of members_by_activity (a B-tree leaf of each) per member
// per commit (docs/benchmarks.md, "Member activity without a write per
// message"). No schema step: a server before it orders the list the same,
// and shows a member's top conversation with the time of its stored row
// until its next message there.
//
// Blocking. While A blocks B, B's message to A is stored and takes a seq,
// but A gets no event, no activity bump and a withheld row; A's own sends to
// B are refused. A member's activity (members.last_activity_at) moves only
// with messages visible to them, so the list order never leaks a withheld
// message.
//
// Profiles under a block. While A blocks B, B keeps A's profile as it was
// when the block began (DESIGN.md "Blocking"): SetProfile sends B no kProfile
// event, and every other profile of A produced for B (the results and stored
// events of B's contact and block operations on A, ListContacts, ListBlocked,
// GetProfiles with viewer B) takes display name, about and updated_at from
// the blocks row (owner A, target B) instead of users: one primary-key probe
// of blocks per profile, LEFT JOINed and COALESCEd. After the unblock B sees
// A's current profile again; if it differs from the kept one and B is in
// A's profile audience, Unblock appends B the kProfile event B missed.
//
// Seqs under a block. What a viewer is told of a conversation's length is the
// last seq not withheld from them (LastSeqVisibleTo: summaries, OpenDirect),
// and their receipts are clamped to it, so A's watermark cannot pass B's
// withheld messages while they are the newest: the "withheld" lists that
// reach B (events, and summaries/history for a later device) only ever name
// seqs that A's watermark passed after the unblock.
//
// Message search (store.h "Message search"; sqlite_search.h). Sending pays
// one row: the writer appends (conversation id, seq) to search_queue in the
// message's transaction (an append at the end of a rowid B-tree) and
// nothing else; an edit or a delete for everyone queues the key again. The
// index is in a file of its own with a writer of its own (SearchWriter, on
// the `store-search` thread at the lowest priority: kSearchNice), which
// takes the entries past its done_id with their texts (handed over in
// memory by this writer once they commit: SearchHandoff; or read through
// the store file attached read-only), and replaces each message's FTS5 row:
// the words of MessageWords (folded with ICU, split on ASCII punctuation;
// non-ASCII characters are word characters, hence the FTS5 'ascii'
// tokenizer over the already folded words), with the message's version. So
// this writer never runs FTS5 work, and the index's pages never go through
// this file's WAL and checkpoints (until step 21 the index was here, and its
// steps held this writer while sends waited: a quarter of p99 at 5,000
// msgs/s; docs/benchmarks.md). This writer trims the queue up to the
// search file's committed done_id (TrimSearchQueue, a solo write at most
// every kSearchTrimInterval or kSearchTrimEntries entries). A message's doc
// id is its send's queue id, written in its own row (messages.search_doc),
// so doc ids follow the order messages were stored and a search pages
// newest first on the FTS5 rowid. Queue ids (and so doc ids) are never
// handed out twice: the counter starts above the queue's highest id and the
// search file's done_id, and only grows (NextSearchId). A search steps the
// FTS5 matches (reading the search file, attached to every reader as
// `search`) backwards from the cursor and checks each candidate against the
// store as it is (membership, withheld, deleted_at = 0, version = the
// indexed one); it visits at most kMaxSearchCandidates candidates per page.
// The two files are read in two snapshots, which the check makes harmless: a
// row the store does not confirm is skipped.
//
// Retention (store.h "Retention"). A send reads the conversation's timer
// from the writer's cached conversation (no extra statement) and writes
// expires_at in the message's own INSERT; a message that never expires
// (timer off, no server-wide maximum) is not in messages_expiring at all.
// ExpireMessages and PurgeDeleted are solo writes like TrimSearchQueue, each a
// range scan of its partial index: an expiry is ChangeMessage's delete for
// everyone (MessageChange::expiry), so the tombstone, the search re-queue
// and the members' kDelete events are exactly a sender's delete's.
//
// Stream trimming (store.h "Stream trimming"). TrimStreams is a solo write
// too. It walks user_heads in user id order from the caller's position; per
// user it reads the lowest cursor of the devices that still need entries
// (devices_by_user), then steps user_events up from the floor on the primary
// key while entries are trimmable, deletes that range and raises
// user_heads.stream_floor in the same transaction. Entries are appended in
// commit order, so created_at rises with user_seq and the first entry inside
// the horizon ends the scan: a step's cost follows what it removes plus one
// row per user visited. The writer's head cache is not touched: the step
// writes the head it read (PARLEY_STREAM_HEAD) into user_heads with the new
// floor, which is the head the cache holds (a solo write: no other write
// shares its transaction). ReadStream reads the floor with the
// head in its snapshot and refuses a cursor below it (kCursorTooOld).
//
// Cold tier (store.h "Cold tier", sqlite_cold.h). CompactMessages is a solo
// write like the retention steps: the conversations whose oldest hot
// message is due (a range scan of conversations_cold_due, oldest first),
// each from cold_through + 1 upwards in blocks of up to kColdBlockMessages
// consecutive messages stored before the cut-off; a block holds the texts
// of the live (not deleted) messages of its range, each of which becomes
// body = '', cold = 1. Tombstones in the range stay as they are. Reads get
// the text back through cold_body (PARLEY_MESSAGE_BODY). An edit or a
// delete writes the new text (or '') into the row with cold = 0: the row
// wins over the block, whose copy is then an old version until the purge of
// a deleted message rewrites the block without it. A send pays one extra
// statement only when the conversation had no hot message (hot_since 0).
// The edits of a block's messages (message_edits rows with a text) go into
// an edit block of the same range in the same step (edit_blocks; each row
// becomes body = '', cold = 1); the stream read pages a kEdit event's text
// back through cold_edit_body. An edit made later is a new hot row; a delete
// empties every edit row with cold = 0, and the purge rewrites the edit
// block without the message's edits, as for its text.
//
// Search merges two lazily stepped scans in username order (the username
// index from the query, and name_prefixes at prefix = query), skipping the
// searcher and probing blocks per candidate: a page visits O(limit) rows
// whatever the directory size.
//
// Every message key leads with the conversation id and every stream key with
// the user id, so the same layout maps onto a wide-row store (partition key,
// clustering key) and onto PostgreSQL partitioned by those ids. Sync is a
// range scan of user_events on its primary key joined to messages by theirs:
// its cost follows the events returned, never the size of history.
//
// Left open on purpose: the reader is a single thread (enough for one file; a pool of read connections is the next
// step if reads ever queue). A view of a conversation steps over the messages
// withheld from the viewer one by one (cheap probes, but proportional to
// them), and search steps over candidates who block the searcher likewise;
// both are rare enough not to need their own index yet.

#include "store/sqlite/sqlite_store.h"

#include <algorithm>
#include <cassert>
#include <climits>
#include <chrono>
#include <cstdint>
#include <fmt/format.h>
#include <limits>
#include <map>
#include <optional>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <sqlite3.h>
#include <spdlog/spdlog.h>

#include "common/id_hash.h"
#include "common/this_thread.h"
#include "protocol/message_edits.h"
#include "store/auth_read.h"
#include "store/change_events.h"
#include "store/commit_pacer.h"
#include "store/name_words.h"
#include "store/sqlite/sqlite_backup.h"
#include "store/sqlite/sqlite_cold.h"
#include "store/sqlite/sqlite_db.h"
#include "store/sqlite/sqlite_search.h"
#include "store/sqlite/wal_buffer_vfs.h"
#include "store/store_threads.h"

namespace parley::store {

using sqlite::Db;
using sqlite::StepCounter;
using sqlite::Stmt;

namespace {

// The writer's caches are dropped between batches beyond these sizes, so
// memory stays bounded however many conversations and users there are.
constexpr size_t kMaxCachedConversations = 65536;
constexpr size_t kMaxCachedHeads = 262144;
constexpr size_t kMaxCachedTops = 262144;  // users whose top conversation the writer knows ("Member activity")
// (owner, target) pairs whose blocks row the writer has looked up.
constexpr size_t kMaxCachedBlockPairs = 262144;
// Live devices, and their device_receipts rows (all devices together).
constexpr size_t kMaxCachedDevices = 65536;
constexpr size_t kMaxCachedDeviceReceipts = 262144;

// The FTS5 query of a message search: every word as a prefix, all required.
// Words hold only [0-9a-z] and non-ASCII bytes (MessageWords), so quoting
// needs no escapes.
std::string FtsQuery(const std::vector<std::string>& words) {
  std::string q;
  for (const std::string& w : words) {
    if (!q.empty()) q += " AND ";
    q += '"';
    q += w;
    q += "\"*";
  }
  return q;
}

// Re-indexes the display-name words of every user whose name is not pure
// ASCII with today's folding (step 8); the step's SQL has deleted their rows.
Status ReindexNonAsciiNames(Db& db);

struct Migration {
  int version;
  const char* sql;
  // Run after `sql`, inside the step's transaction; null: none.
  Status (*code)(Db&) = nullptr;
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
    // Issue 3: profiles, contacts, blocking, search, per-member activity.
    {2, R"sql(
ALTER TABLE users ADD COLUMN display_name TEXT NOT NULL DEFAULT '';
ALTER TABLE users ADD COLUMN about TEXT NOT NULL DEFAULT '';
ALTER TABLE users ADD COLUMN profile_updated_at INTEGER NOT NULL DEFAULT 0;
CREATE TABLE name_prefixes(
  prefix TEXT NOT NULL,
  username TEXT NOT NULL,
  user_id INTEGER NOT NULL,
  PRIMARY KEY(prefix, username)) WITHOUT ROWID;
CREATE TABLE contacts(
  owner_id INTEGER NOT NULL,
  contact_id INTEGER NOT NULL,
  added_at INTEGER NOT NULL,
  PRIMARY KEY(owner_id, contact_id)) WITHOUT ROWID;
CREATE INDEX contacts_by_contact ON contacts(contact_id, owner_id);
CREATE TABLE blocks(
  owner_id INTEGER NOT NULL,
  target_id INTEGER NOT NULL,
  created_at INTEGER NOT NULL,
  PRIMARY KEY(owner_id, target_id)) WITHOUT ROWID;
CREATE TABLE withheld(
  conversation_id INTEGER NOT NULL,
  user_id INTEGER NOT NULL,
  seq INTEGER NOT NULL,
  PRIMARY KEY(conversation_id, user_id, seq)) WITHOUT ROWID;
ALTER TABLE members ADD COLUMN last_activity_at INTEGER NOT NULL DEFAULT 0;
UPDATE members SET last_activity_at =
  (SELECT c.last_activity_at FROM conversations c WHERE c.id = members.conversation_id);
CREATE INDEX members_by_activity ON members(user_id, last_activity_at, conversation_id);
)sql"},
    // What the blocked user keeps seeing of the blocker: the blocker's profile
    // when the block began (existing blocks: the profile now).
    {3, R"sql(
ALTER TABLE blocks ADD COLUMN shown_display_name TEXT NOT NULL DEFAULT '';
ALTER TABLE blocks ADD COLUMN shown_about TEXT NOT NULL DEFAULT '';
ALTER TABLE blocks ADD COLUMN shown_updated_at INTEGER NOT NULL DEFAULT 0;
UPDATE blocks SET shown_display_name = u.display_name, shown_about = u.about,
  shown_updated_at = u.profile_updated_at
  FROM users u WHERE u.id = blocks.owner_id;
)sql"},
    // Presence: who may see it (PresenceVisibility) and when the user was
    // last online.
    {4, R"sql(
ALTER TABLE users ADD COLUMN presence_visibility INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN last_seen INTEGER NOT NULL DEFAULT 0;
)sql"},
    // Issue 8: the message timeline (accepted/stored times, every move of a
    // device's watermarks with its time) and disabled users.
    {5, R"sql(
ALTER TABLE users ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN accepted_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN stored_at INTEGER NOT NULL DEFAULT 0;
CREATE TABLE receipt_log(
  conversation_id INTEGER NOT NULL,
  device_id INTEGER NOT NULL,
  delivered INTEGER NOT NULL,
  read INTEGER NOT NULL,
  at INTEGER NOT NULL,
  PRIMARY KEY(conversation_id, device_id, delivered, read)) WITHOUT ROWID;
CREATE INDEX receipt_log_by_read ON receipt_log(conversation_id, device_id, read);
)sql"},
    // Issue 11: push notifications (endpoints with their health, the queue
    // of pending pushes with leases, mutes, the previews setting).
    {6, R"sql(
CREATE TABLE push_endpoints(
  device_id INTEGER PRIMARY KEY,
  user_id INTEGER NOT NULL,
  provider TEXT NOT NULL,
  token TEXT NOT NULL,
  registered_at INTEGER NOT NULL,
  last_attempt_at INTEGER NOT NULL DEFAULT 0,
  last_result TEXT NOT NULL DEFAULT '',
  last_success_at INTEGER NOT NULL DEFAULT 0,
  failure_count INTEGER NOT NULL DEFAULT 0,
  last_conversation_id INTEGER NOT NULL DEFAULT 0,
  last_seq INTEGER NOT NULL DEFAULT 0,
  last_kind INTEGER NOT NULL DEFAULT 0);
CREATE INDEX push_endpoints_by_user ON push_endpoints(user_id, device_id);
CREATE TABLE push_jobs(
  device_id INTEGER PRIMARY KEY,
  user_id INTEGER NOT NULL,
  conversation_id INTEGER NOT NULL,
  seq INTEGER NOT NULL,
  kind INTEGER NOT NULL,
  due_at INTEGER NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  lease_owner TEXT NOT NULL DEFAULT '',
  lease_until INTEGER NOT NULL DEFAULT 0,
  version INTEGER NOT NULL DEFAULT 1,
  created_at INTEGER NOT NULL);
CREATE INDEX push_jobs_by_due ON push_jobs(due_at);
CREATE TABLE push_mutes(
  user_id INTEGER NOT NULL,
  conversation_id INTEGER NOT NULL,
  PRIMARY KEY(user_id, conversation_id)) WITHOUT ROWID;
ALTER TABLE users ADD COLUMN push_previews INTEGER NOT NULL DEFAULT 1;
)sql"},
    // Issue 12: edits, deletes for everyone (tombstones) and deletes-for-me
    // (withheld rows with hidden_at > 0).
    {7, R"sql(
ALTER TABLE messages ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN edited_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN deleted_at INTEGER NOT NULL DEFAULT 0;
CREATE TABLE message_edits(
  conversation_id INTEGER NOT NULL,
  seq INTEGER NOT NULL,
  version INTEGER NOT NULL,
  client_id TEXT NOT NULL,
  editor_device_id INTEGER NOT NULL,
  body TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  PRIMARY KEY(conversation_id, seq, version)) WITHOUT ROWID;
CREATE UNIQUE INDEX message_edits_dedup ON message_edits(conversation_id, seq, client_id);
ALTER TABLE withheld ADD COLUMN hidden_at INTEGER NOT NULL DEFAULT 0;
)sql"},
    // Unicode case folding of display-name words (common/text_fold.h): the
    // words of non-ASCII names were indexed lower-cased in ASCII only, so
    // their name_prefixes rows are dropped and re-made. ASCII names fold as
    // before and keep their rows.
    {8, R"sql(
DELETE FROM name_prefixes WHERE user_id IN
  (SELECT id FROM users WHERE length(CAST(display_name AS BLOB)) <> length(display_name));
)sql",
     &ReindexNonAsciiNames},
    // Issue 12: drafts, one per user and conversation (no history).
    {9, R"sql(
CREATE TABLE drafts(
  user_id INTEGER NOT NULL,
  conversation_id INTEGER NOT NULL,
  text TEXT NOT NULL,
  updated_at INTEGER NOT NULL,
  PRIMARY KEY(user_id, conversation_id)) WITHOUT ROWID;
)sql"},
    // Issue 12: full-text search of messages, indexed off the send path.
    // Messages stored before this step are queued, so the indexer indexes
    // the existing history in the background.
    {10, R"sql(
CREATE TABLE search_queue(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  conversation_id INTEGER NOT NULL,
  seq INTEGER NOT NULL,
  queued_at INTEGER NOT NULL);
CREATE VIRTUAL TABLE message_search USING fts5(
  words, conversation_id UNINDEXED, seq UNINDEXED, version UNINDEXED, tokenize = 'ascii');
CREATE TABLE message_search_docs(
  conversation_id INTEGER NOT NULL,
  seq INTEGER NOT NULL,
  doc_id INTEGER NOT NULL,
  PRIMARY KEY(conversation_id, seq)) WITHOUT ROWID;
INSERT INTO search_queue(conversation_id, seq, queued_at)
  SELECT conversation_id, seq, stored_at FROM messages WHERE deleted_at = 0 ORDER BY stored_at, conversation_id, seq;
)sql"},
    // Issue 3: user_receipts.announced, the user's delivered watermark as
    // the other member's stream last carried it (see AppendMessage). A
    // message hidden from the other member raises the sender's delivered
    // watermark without an event in the other member's stream, so the seqs
    // withheld from the sender that it covers must be listed there later.
    {11, R"sql(
ALTER TABLE user_receipts ADD COLUMN announced INTEGER NOT NULL DEFAULT 0;
UPDATE user_receipts SET announced = delivered;
)sql"},
    // Issue 12: retention. The conversation's disappearing timer; each
    // message's expiry (0: never) and when its tombstone was purged (0: not
    // yet). Two partial indexes hold only the rows the background steps look
    // for, so they stay small and a send into a conversation without a timer
    // adds nothing to them.
    {12, R"sql(
ALTER TABLE conversations ADD COLUMN disappearing_s INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN expires_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN purged_at INTEGER NOT NULL DEFAULT 0;
CREATE INDEX messages_expiring ON messages(expires_at) WHERE expires_at > 0 AND deleted_at = 0;
CREATE INDEX messages_to_purge ON messages(deleted_at) WHERE deleted_at > 0 AND purged_at = 0;
)sql"},
    // Issue 12: the cold tier. Existing conversations become due from their
    // first message, so an upgraded store compacts its old history in the
    // background, in bounded steps, once compaction is on. The partial index
    // changes only when a conversation's oldest hot message does (a
    // compaction, or the first send after one), never per send.
    {13, R"sql(
ALTER TABLE messages ADD COLUMN cold INTEGER NOT NULL DEFAULT 0;
ALTER TABLE conversations ADD COLUMN hot_since INTEGER NOT NULL DEFAULT 0;
ALTER TABLE conversations ADD COLUMN cold_through INTEGER NOT NULL DEFAULT 0;
UPDATE conversations SET hot_since = coalesce(
  (SELECT m.created_at FROM messages m WHERE m.conversation_id = conversations.id ORDER BY m.seq LIMIT 1), 0);
CREATE INDEX conversations_cold_due ON conversations(hot_since) WHERE hot_since > 0;
CREATE TABLE message_blocks(
  conversation_id INTEGER NOT NULL,
  first_seq INTEGER NOT NULL,
  last_seq INTEGER NOT NULL,
  messages INTEGER NOT NULL,
  raw_bytes INTEGER NOT NULL,
  created_at INTEGER NOT NULL,
  nonce INTEGER NOT NULL,
  data BLOB NOT NULL,
  PRIMARY KEY(conversation_id, first_seq)) WITHOUT ROWID;
)sql"},
    // Issue 12: stream trimming. Each user's floor, the lowest user seq still
    // kept; 1 = nothing trimmed.
    {14, R"sql(
ALTER TABLE user_heads ADD COLUMN stream_floor INTEGER NOT NULL DEFAULT 1;
)sql"},
    // Issue 12: FTS5 prefix indexes for query words of 1 to 3 characters.
    // Without them FTS5 answers a prefix query by merging the whole doclist
    // of every term with that prefix before it yields the newest match: at
    // 10,000,000 messages a two-letter word took ~0.5 s of the reader. With
    // them it reads one doclist, lazily, newest first. The table is rebuilt
    // and every message queued again in stored order, so doc ids (which
    // order results) follow storage as before; until the indexer has caught
    // up, older messages are missing from results (docs/operations.md).
    {15, R"sql(
DROP TABLE message_search;
CREATE VIRTUAL TABLE message_search USING fts5(
  words, conversation_id UNINDEXED, seq UNINDEXED, version UNINDEXED, tokenize = 'ascii', prefix = '1 2 3');
DELETE FROM message_search_docs;
DELETE FROM search_queue;
INSERT INTO search_queue(conversation_id, seq, queued_at)
  SELECT conversation_id, seq, stored_at FROM messages WHERE deleted_at = 0 ORDER BY stored_at, conversation_id, seq;
)sql"},
    // Issue 9: receipt_log's second index goes. A device's log rows rise in
    // both watermarks and each row's delivered is at least its read, so the
    // first row whose read covers a seq is found through the primary key
    // (see Reader::Timeline); the index cost every receipt one more B-tree
    // leaf written, about one page per message.
    {16, R"sql(
DROP INDEX receipt_log_by_read;
)sql"},
    // Issue 9: user_heads.head is a lower bound from here on ("Stream
    // heads"); nothing to change in the file, the version keeps older
    // servers out.
    {17, R"sql(
SELECT 1;
)sql"},
    // Issue 12: the cold tier takes edit texts too ("Cold tier"). Edits of
    // messages compacted before this step stay in their rows (cold = 0),
    // read as before: a compaction never goes back below cold_through.
    {18, R"sql(
ALTER TABLE message_edits ADD COLUMN cold INTEGER NOT NULL DEFAULT 0;
CREATE TABLE edit_blocks(
  conversation_id INTEGER NOT NULL,
  first_seq INTEGER NOT NULL,
  last_seq INTEGER NOT NULL,
  edits INTEGER NOT NULL,
  raw_bytes INTEGER NOT NULL,
  created_at INTEGER NOT NULL,
  nonce INTEGER NOT NULL,
  data BLOB NOT NULL,
  PRIMARY KEY(conversation_id, first_seq)) WITHOUT ROWID;
)sql"},
    // Issue 9: search_queue without AUTOINCREMENT (see "Message search"):
    // the writer numbers entries itself, so no commit writes sqlite_sequence.
    // Queued entries keep their ids; dropping the table drops its
    // sqlite_sequence row.
    {19, R"sql(
CREATE TABLE search_queue_v19(
  id INTEGER PRIMARY KEY,
  conversation_id INTEGER NOT NULL,
  seq INTEGER NOT NULL,
  queued_at INTEGER NOT NULL);
INSERT INTO search_queue_v19(id, conversation_id, seq, queued_at)
  SELECT id, conversation_id, seq, queued_at FROM search_queue;
DROP TABLE search_queue;
ALTER TABLE search_queue_v19 RENAME TO search_queue;
)sql"},
    // Issue 9: each message's search doc id in its own row, written by the
    // send (see "Message search"). Rows stored before keep 0 and their doc
    // id in message_search_docs, which nothing writes from here on; the
    // step rewrites no message, so it is instant on any file.
    {20, R"sql(
ALTER TABLE messages ADD COLUMN search_doc INTEGER NOT NULL DEFAULT 0;
)sql"},
    // Issue 9: the index moves to a search file of its own (sqlite_search.h,
    // "Message search"). The empty token makes the server build that file
    // from the whole history when it opens the store.
    {21, R"sql(
DROP TABLE message_search;
DROP TABLE message_search_docs;
CREATE TABLE search_file(token TEXT NOT NULL);
INSERT INTO search_file(token) VALUES('');
)sql"},
    // Issue 9: conversations.last_seq and last_activity_at are lower bounds
    // from here on ("Conversation heads"); nothing to change in the file,
    // the version keeps older servers out.
    {22, R"sql(
SELECT 1;
)sql"},
    // Issue 9: device_receipts is a lower bound from here on ("Device
    // watermarks"); nothing to change in the file, the version keeps older
    // servers out.
    {23, R"sql(
SELECT 1;
)sql"},
};
static_assert(std::size(kMigrations) > 0 &&
                  kMigrations[std::size(kMigrations) - 1].version == SqliteStore::kSchemaVersion,
              "the last migration step defines kSchemaVersion");

// Applies the steps above `db`'s version up to `target`, each in its own
// transaction.
Status Migrate(Db& db, int target = SqliteStore::kSchemaVersion) {
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
    if (m.version <= current || m.version > target) continue;
    Status s;
    if (m.code == nullptr) {
      s = db.Exec(fmt::format("BEGIN IMMEDIATE; {} PRAGMA user_version = {}; COMMIT;", m.sql, m.version).c_str());
    } else {
      s = db.Exec(fmt::format("BEGIN IMMEDIATE; {}", m.sql).c_str());
      if (s.ok()) s = m.code(db);
      if (s.ok()) s = db.Exec(fmt::format("PRAGMA user_version = {}; COMMIT;", m.version).c_str());
    }
    if (!s.ok()) {
      if (db.in_transaction()) db.ExecIgnoringErrors("ROLLBACK");
      return Status(ErrorCode::kInternal, fmt::format("schema migration {} failed: {}", m.version, s.message()));
    }
  }
  return Status::Ok();
}

Status ReindexNonAsciiNames(Db& db) {
  Stmt users(db,
             "SELECT id, username, display_name FROM users "
             "WHERE length(CAST(display_name AS BLOB)) <> length(display_name)");
  while (users.Step()) {
    const std::string username = users.Text(1);
    for (const std::string& prefix : NamePrefixes(users.Text(2))) {
      Stmt s(db, "INSERT OR IGNORE INTO name_prefixes(prefix, username, user_id) VALUES(?1, ?2, ?3)");
      s.BindText(1, prefix).BindText(2, username).BindInt(3, users.Int(0));
      s.Run();
    }
  }
  return db.failed() ? db.error() : Status::Ok();
}

std::string DirectKey(UserId a, UserId b) { return fmt::format("{}:{}", std::min(a, b), std::max(a, b)); }

// The head of the user of user_heads row `h` (a table alias): see "Stream
// heads".
#define PARLEY_STREAM_HEAD(h) \
  "max(" h ".head, COALESCE((SELECT e.user_seq FROM user_events e WHERE e.user_id = " h ".user_id " \
  "ORDER BY e.user_seq DESC LIMIT 1), 0))"

// The columns MessageAt reads, in order (of table alias m).
#define PARLEY_MESSAGE_COLUMNS \
  "m.conversation_id, m.seq, m.sender_id, m.sender_device_id, m.client_id, " PARLEY_MESSAGE_BODY("m") ", " \
  "m.created_at, m.version, " \
  "m.edited_at, m.deleted_at, m.expires_at"
constexpr int kMessageColumnCount = 11;

// Columns: PARLEY_MESSAGE_COLUMNS, starting at `col`.
MessageRecord MessageAt(const Stmt& s, int col) {
  MessageRecord m;
  m.conversation_id = s.Int(col);
  m.seq = s.Int(col + 1);
  m.sender_id = s.Int(col + 2);
  m.sender_device_id = s.Int(col + 3);
  m.client_id = s.Text(col + 4);
  m.body = s.Text(col + 5);
  m.created_at = s.Int(col + 6);
  m.version = s.Int(col + 7);
  m.edited_at = s.Int(col + 8);
  m.deleted_at = s.Int(col + 9);
  m.expires_at = s.Int(col + 10);
  return m;
}

// Columns: id, username, password_hash, created_at, display_name, about,
// presence_visibility, last_seen, disabled.
UserRecord UserAt(const Stmt& s) {
  return UserRecord{s.Int(0), s.Text(1), s.Text(2), s.Int(3), s.Text(4), s.Text(5),
                    static_cast<PresenceVisibility>(s.Int(6)), s.Int(7), s.Int(8) != 0};
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

// Columns: id, username, display_name, about, profile_updated_at, from `col`.
ProfileRecord ProfileAt(const Stmt& s, int col) {
  ProfileRecord p;
  p.user_id = s.Int(col);
  p.username = s.Text(col + 1);
  p.display_name = s.Text(col + 2);
  p.about = s.Text(col + 3);
  p.updated_at = s.Int(col + 4);
  return p;
}

// ---- Event payloads (user_events.data) ----
//
// kMessage/kReceipt: the withheld seqs as a JSON array ("[4,5]"), NULL when
// empty. kProfile/kContact/kBlock: the profile as it was, a JSON object
// {"n": username, "d": display name, "a": about, "t": updated_at}, read back
// with json_extract; the subject's id is in receipt_user_id and the flag in
// delivered.

std::string SeqListJson(const std::vector<Seq>& seqs) {
  std::string out = "[";
  for (size_t i = 0; i < seqs.size(); ++i) {
    if (i > 0) out += ',';
    out += std::to_string(seqs[i]);
  }
  out += ']';
  return out;
}

// The newest message of `conversation` not withheld from `user` by a block:
// its seq, what `user` may know of the conversation's length (DESIGN.md
// "Blocking"), and its time, their last activity there ("Member activity");
// zeros: none. Backwards on the messages' primary key, one withheld probe
// per message, so it costs the trailing withheld messages plus one.
struct NewestVisible {
  Seq seq = 0;
  int64_t created_at = 0;
};
NewestVisible NewestVisibleTo(Db& db, ConversationId conversation, UserId user, StepCounter* counter = nullptr) {
  Stmt s(db,
         "SELECT m.seq, m.created_at FROM messages m WHERE m.conversation_id = ?1 AND NOT EXISTS (SELECT 1 "
         "FROM withheld w WHERE w.conversation_id = ?1 AND w.user_id = ?2 AND w.seq = m.seq AND w.hidden_at = 0) "
         "ORDER BY m.seq DESC LIMIT 1",
         counter);
  s.BindInt(1, conversation).BindInt(2, user);
  return s.Step() ? NewestVisible{s.Int(0), s.Int(1)} : NewestVisible{};
}

// NewestVisibleTo's seq.
Seq LastSeqVisibleTo(Db& db, ConversationId conversation, UserId user, StepCounter* counter = nullptr) {
  return NewestVisibleTo(db, conversation, user, counter).seq;
}

// Seqs of `conversation` withheld from `user` by a block in (after, upto],
// ascending: a range scan of withheld's primary key.
std::vector<Seq> WithheldIn(Db& db, ConversationId conversation, UserId user, Seq after, Seq upto) {
  std::vector<Seq> seqs;
  if (upto <= after) return seqs;
  Stmt s(db,
         "SELECT seq FROM withheld WHERE conversation_id = ?1 AND user_id = ?2 AND seq > ?3 AND seq <= ?4 "
         "AND hidden_at = 0 ORDER BY seq");
  s.BindInt(1, conversation).BindInt(2, user).BindInt(3, after).BindInt(4, upto);
  while (s.Step()) seqs.push_back(s.Int(0));
  return seqs;
}

std::vector<Seq> ParseSeqList(std::string_view text) {
  std::vector<Seq> seqs;
  Seq v = 0;
  bool in_number = false;
  for (char ch : text) {
    if (ch >= '0' && ch <= '9') {
      v = v * 10 + (ch - '0');
      in_number = true;
    } else if (in_number) {
      seqs.push_back(v);
      v = 0;
      in_number = false;
    }
  }
  if (in_number) seqs.push_back(v);
  return seqs;
}

void AppendJsonString(std::string& out, std::string_view text) {
  out += '"';
  for (char raw : text) {
    auto ch = static_cast<unsigned char>(raw);
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += raw;
    } else if (ch < 0x20) {
      out += fmt::format("\\u{:04x}", ch);
    } else {
      out += raw;
    }
  }
  out += '"';
}

std::string ProfileJson(const ProfileRecord& p) {
  std::string out = "{\"n\":";
  AppendJsonString(out, p.username);
  out += ",\"d\":";
  AppendJsonString(out, p.display_name);
  out += ",\"a\":";
  AppendJsonString(out, p.about);
  out += fmt::format(",\"t\":{}}}", p.updated_at);
  return out;
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
  // Runs in a transaction of its own (background work: IndexSearch).
  bool solo = false;
};

template <typename T>
class SqliteStore::TypedWriteOp : public WriteOp {
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

 protected:
  std::optional<Result<T>> result_;

 private:
  std::function<Result<T>(Writer&)> body_;
  Callback<T> done_;
};

// A receipt. CommitBatch merges the receipts of one device for one
// conversation that share a batch into the first of them: a client that
// sends "delivered" and then "read" for the message it just showed (the
// usual case) costs one watermark update and one event per member, not two.
// Moving the later receipt up within its own transaction is safe: its seqs
// name messages committed before this batch began (a client learns a seq only
// after its commit), so no op between the two can change how it is clamped,
// and watermarks are maxima, so the stored outcome is the same.
class SqliteStore::ReceiptWriteOp final : public TypedWriteOp<ReceiptResult> {
 public:
  ReceiptWriteOp(ReceiptUpdate update, Callback<ReceiptResult> done);
  const ReceiptUpdate& update() const { return update_; }
  // Folds `later` (same device and conversation, later in the batch) into this one.
  void Absorb(ReceiptWriteOp& later) {
    update_.delivered = std::max(update_.delivered, later.update_.delivered);
    update_.read = std::max(update_.read, later.update_.read);
    update_.now = std::max(update_.now, later.update_.now);
    later.merged_into_ = this;
  }
  void Apply(Writer& writer) override;

 private:
  ReceiptUpdate update_;
  ReceiptWriteOp* merged_into_ = nullptr;  // set: this receipt's effect is that op's
};

class SqliteStore::Writer {
 public:
  // `first_search_id`: the first search_queue id to hand out (FirstSearchId).
  // `search_handoff`: where committed queue entries go for the search
  // writer (nullptr: nowhere; it reads the queue through the store).
  Writer(std::unique_ptr<Db> db, const Clock& clock, int64_t first_search_id,
         std::shared_ptr<sqlite::SearchHandoff> search_handoff)
      : db_(std::move(db)),
        clock_(clock),
        next_search_id_(first_search_id),
        search_handoff_(std::move(search_handoff)) {}
  sqlite3* handle() { return db_->handle(); }

  // Applies `ops` in one transaction; returns its outcome.
  Status CommitBatch(const std::vector<std::unique_ptr<WriteOp>>& ops);

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
  Result<int64_t> SetMaxPageCount(int64_t pages);
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
  Result<Empty> CompletePush(const PushCompletion& c);
  // Message search (see "Message search"): queues `m`, as it is now, for
  // indexing under `doc_id` (nullopt: a new message, whose doc id is the
  // entry's id; 0: none, see sqlite_search.cc), and keeps the entry for the
  // handoff once the batch commits. Returns the entry's id.
  int64_t QueueSearch(const MessageRecord& m, std::optional<int64_t> doc_id, int64_t now);
  // The next search_queue id (also a new message's doc id).
  int64_t NextSearchId();
  // Removes the queue's entries up to `done_id`, which the search file has
  // committed as indexed (sqlite_search.h).
  Result<Empty> TrimSearchQueue(int64_t done_id);
  // Retention (see "Retention").
  Result<SocialResult> SetDisappearing(UserId user_id, ConversationId conversation_id, int64_t seconds, int64_t now);
  Result<ExpireProgress> ExpireMessages(int64_t now, int max);
  // `search_rows`: the purged messages' index rows, for the search writer
  // to remove (SqliteStore::PurgeDeleted).
  Result<PurgeProgress> PurgeDeleted(int64_t deleted_before, int max, std::vector<sqlite::SearchRow>* search_rows);
  Result<TrimProgress> TrimStreams(const TrimRequest& req);
  // The cold tier (see "Cold tier").
  Result<CompactProgress> CompactMessages(const CompactRequest& req);
  Status CompactEdits(ConversationId conversation, const std::vector<ColdEntry>& entries, CompactProgress* progress);
  // The two kinds of cold block the compaction writes.
  enum class BlockKind { kMessages, kEdits };
  // Writes a new block of `kind` of `conversation`: `count` texts (messages
  // or edits) from `first_seq` to `last_seq`, `raw_bytes` before compression,
  // compressed `data`, made at the batch's time with a fresh nonce.
  void InsertBlock(BlockKind kind, ConversationId conversation, Seq first_seq, Seq last_seq, int64_t count,
                   int64_t raw_bytes, const std::string& data);

 private:
  // Deletes the device's push endpoint and pending job; true if it had an endpoint.
  bool RemovePush(DeviceId device_id);
  // A member's last visible activity (members.last_activity_at).
  struct MemberActivity {
    int64_t at = 0;
    bool dirty = false;  // not yet written
  };
  // What else the writer keeps of a member, write-through: the rows behind
  // it change only on this thread, so a send or a receipt reads none of them.
  struct MemberState {
    // The member's user_receipts row (zeros while there is none).
    Seq delivered = 0;
    Seq read = 0;
    Seq announced = 0;
    // The highest seq withheld from the member by a block (withheld rows with
    // hidden_at = 0; 0: none). Nothing above it is withheld from them, which
    // is all a send or a receipt needs to know in the usual case.
    Seq last_withheld = 0;
    bool has_draft = false;  // the member has a drafts row here
  };
  struct Conversation {
    ConversationId id = 0;
    Seq last_seq = 0;
    int64_t created_at = 0;
    int64_t last_activity_at = 0;
    std::vector<MemberRecord> members;      // ascending user id
    std::vector<MemberActivity> activity;   // parallel to members
    std::vector<MemberState> state;         // parallel to members
    int64_t disappearing_s = 0;             // written at once by SetDisappearing (never dirty)
    int64_t hot_since = 0;                  // written at once (a send into a fully cold one, a compaction)
    bool dirty = false;                     // something above not yet written
  };
  struct Head {
    UserSeq seq = 0;
    bool dirty = false;
    bool stored = false;  // the user has a user_heads row
  };

  // A device that is not revoked, with the device_receipts rows of it the
  // writer has read or written (absent: not looked up yet).
  struct LiveDevice {
    UserId user_id = 0;
    std::unordered_map<ConversationId, Watermarks> receipts;
  };

  // The result of a retry of `msg` (same conversation, sender and client
  // id): the stored message, duplicate = true; nullopt if none is stored.
  std::optional<AppendResult> StoredRetry(const NewMessage& msg);
  // The cached conversation, loaded on a miss; nullptr if it does not exist.
  Conversation* FindConversation(ConversationId id);
  static bool IsMember(const Conversation& c, UserId user);
  // The index of `user` in c.members; REQUIRES: IsMember(c, user).
  static size_t MemberIndex(const Conversation& c, UserId user);
  // The cached live device, loaded on a miss; nullptr if it does not exist or
  // is revoked.
  LiveDevice* FindLiveDevice(DeviceId id);
  // The device's watermarks in `conversation` (device_receipts), loaded on a miss.
  Watermarks& DeviceReceipt(LiveDevice& device, DeviceId id, ConversationId conversation);
  // LastSeqVisibleTo for member `i` of `c`, without a read when nothing is
  // withheld from them at the conversation's last seq.
  Seq LastSeqVisible(const Conversation& c, size_t i);
  std::optional<std::string> Username(UserId user);
  // Whether `hash` is the user's password hash (CreateDevice's check).
  bool PasswordHashIs(UserId user, const std::string& hash);
  Head& HeadOf(UserId user);
  // The user's top conversation: the largest (last_activity_at,
  // conversation_id) of their members rows ("Member activity"); id 0 while
  // they have none.
  struct Top {
    int64_t at = 0;  // as stored
    ConversationId id = 0;
    int64_t exact = 0;  // its activity; above `at` while the row is behind
  };
  // The user's top, loaded on a miss (with its exact activity: the newest
  // message visible to them there).
  Top& TopOf(UserId user);
  // Writes (at, conversation) as the activity of one of the user's members
  // rows: first the top's exact time, if the row would rise above the top's
  // stored one; then the row itself (`insert`: a new members row).
  void WriteActivity(UserId user, ConversationId conversation, int64_t at, bool insert);
  std::optional<ProfileRecord> Profile(UserId user);
  // `user`'s profile as `viewer` sees it: as it was when the block began if
  // `user` blocks `viewer` (see "Profiles under a block").
  std::optional<ProfileRecord> ProfileFor(UserId user, UserId viewer);
  bool Blocks(UserId owner, UserId target);
  // `viewer` gets `user`'s profile changes (SetProfile's audience, blocks
  // aside): they share a conversation, or `viewer` has `user` as a contact.
  bool InProfileAudience(UserId user, UserId viewer);
  // Removes the draft of member `i` of `c`; true if there was one.
  bool ClearDraft(Conversation& c, size_t i);
  // Seqs of `c` withheld from its member `i` in (after, upto], ascending;
  // no read when nothing above `after` is withheld from them.
  std::vector<Seq> WithheldBetween(const Conversation& c, size_t i, Seq after, Seq upto);
  // Revokes a live device: token and cursor dropped, its watermarks deleted.
  // Revokes every live device of the user; returns their ids, ascending.
  std::vector<DeviceId> RevokeLiveDevices(UserId user_id);
  void Revoke(DeviceId device_id);
  void IndexName(UserId user, const std::string& username, const std::string& display_name, bool add);
  // Appends one event to `user`'s stream at head + 1; `data` (may be null) is
  // the kind's payload (see "Event payloads").
  StreamPosition AppendEvent(UserId user, EventKind kind, ConversationId conversation, Seq seq, UserId receipt_user,
                             Watermarks receipt, int64_t now, const std::string* data = nullptr);
  // A kContact/kBlock event in the owner's stream about `subject`.
  SocialResult AppendSocialEvent(UserId owner, EventKind kind, const ProfileRecord& subject, bool flag, int64_t now);
  void MarkDirty(Conversation& c);
  // The first receipt of each (device, conversation) in `ops` absorbs the
  // later ones (ReceiptWriteOp).
  void MergeReceipts(const std::vector<std::unique_ptr<WriteOp>>& ops);
  void WriteDirty();
  void DropCaches();
  static ConversationRecord ToRecord(const Conversation& c);

  std::unique_ptr<Db> db_;
  const Clock& clock_;
  int64_t batch_now_ = 0;  // clock_ when the current batch began: its messages' stored_at
  std::unordered_map<ConversationId, Conversation> conversations_;
  std::unordered_map<UserId, Head> heads_;
  std::unordered_map<UserId, Top> tops_;
  // Whether a blocks row (owner, target) exists, per pair looked up; Block,
  // Unblock and EraseAccount (which drops every cache) keep it current.
  std::unordered_map<std::pair<UserId, UserId>, bool, IdPairHash> blocks_;
  // Live devices looked up; Revoke removes one (with its receipts).
  std::unordered_map<DeviceId, LiveDevice> devices_;
  size_t cached_device_receipts_ = 0;  // receipts in devices_, all devices together
  std::vector<ConversationId> dirty_conversations_;
  std::vector<UserId> dirty_heads_;
  int64_t next_search_id_;  // the next search_queue id (NextSearchId)
  std::shared_ptr<sqlite::SearchHandoff> search_handoff_;  // may be nullptr
  // The batch's queue entries, appended to search_handoff_ if it commits.
  std::vector<sqlite::SearchEntry> search_pending_;
  ColdCodec cold_codec_;  // compaction and the purge's block rewrites
  Counter& merged_receipts_ = Metrics::Default().GetCounter(
      "parley_store_merged_receipts_total",
      "Receipts applied as part of an earlier receipt of the same device and conversation in their commit.");
};

// The body reads update_ when it runs, after construction (and after any Absorb).
SqliteStore::ReceiptWriteOp::ReceiptWriteOp(ReceiptUpdate update, Callback<ReceiptResult> done)
    : TypedWriteOp([this](Writer& w) { return w.UpdateReceipt(update_); }, std::move(done)), update_(update) {}

void SqliteStore::ReceiptWriteOp::Apply(Writer& writer) {
  if (merged_into_ == nullptr) {
    TypedWriteOp::Apply(writer);
    return;
  }
  // Applied (earlier in this batch) by the op it was merged into: the same
  // outcome, but that op's events are the ones to publish.
  const Result<ReceiptResult>& merged = *merged_into_->result_;
  if (!merged.has_value()) {
    result_.emplace(merged.error());
    return;
  }
  ReceiptResult r;
  r.aggregate = merged->aggregate;
  result_.emplace(std::move(r));
}

void SqliteStore::Writer::MergeReceipts(const std::vector<std::unique_ptr<WriteOp>>& ops) {
  std::map<std::pair<DeviceId, ConversationId>, ReceiptWriteOp*> first;
  size_t receipts = 0;
  for (const auto& op : ops) {
    auto* r = dynamic_cast<ReceiptWriteOp*>(op.get());
    if (r == nullptr) continue;
    ++receipts;
    auto [it, inserted] = first.try_emplace({r->update().device_id, r->update().conversation_id}, r);
    if (!inserted) it->second->Absorb(*r);
  }
  merged_receipts_.Inc(receipts - first.size());
}

Status SqliteStore::Writer::CommitBatch(const std::vector<std::unique_ptr<WriteOp>>& ops) {
  db_->ClearError();
  if (conversations_.size() > kMaxCachedConversations || heads_.size() > kMaxCachedHeads ||
      tops_.size() > kMaxCachedTops || blocks_.size() > kMaxCachedBlockPairs || devices_.size() > kMaxCachedDevices ||
      cached_device_receipts_ > kMaxCachedDeviceReceipts)
    DropCaches();
  MergeReceipts(ops);
  // A batch that fails gives its search queue ids back (none was committed),
  // so the queue stays one range of ids for the backlog's count.
  const int64_t next_search_id = next_search_id_;
  Stmt(*db_, "BEGIN IMMEDIATE").Run();
  batch_now_ = clock_.NowMillis();
  for (const auto& op : ops) {
    if (db_->failed()) break;
    op->Apply(*this);
  }
  WriteDirty();
  Stmt(*db_, "COMMIT").Run();
  if (!db_->failed()) {
    if (!search_pending_.empty()) search_handoff_->Append(std::exchange(search_pending_, {}));
    return Status::Ok();
  }
  Status error = db_->TakeError();
  DropCaches();
  next_search_id_ = next_search_id;
  search_pending_.clear();
  return error;
}

SqliteStore::Writer::Conversation* SqliteStore::Writer::FindConversation(ConversationId id) {
  auto it = conversations_.find(id);
  if (it != conversations_.end()) return &it->second;
  Conversation c;
  c.id = id;
  {
    Stmt s(*db_,
           "SELECT " PARLEY_CONVERSATION_LAST_SEQ("c") ", c.created_at, " PARLEY_CONVERSATION_ACTIVITY(
               "c") ", c.disappearing_s, c.hot_since FROM conversations c WHERE c.id = ?1");
    s.BindInt(1, id);
    if (!s.Step()) return nullptr;
    c.last_seq = s.Int(0);
    c.created_at = s.Int(1);
    c.last_activity_at = s.Int(2);
    c.disappearing_s = s.Int(3);
    c.hot_since = s.Int(4);
  }
  {
    // With each member's MemberState: their user_receipts row, the highest
    // seq withheld from them by a block, whether they have a draft here.
    Stmt s(*db_,
           "SELECT m.user_id, u.username, m.last_activity_at, r.delivered, r.read, r.announced, "
           "(SELECT max(w.seq) FROM withheld w WHERE w.conversation_id = m.conversation_id "
           "AND w.user_id = m.user_id AND w.hidden_at = 0), "
           "EXISTS(SELECT 1 FROM drafts d WHERE d.user_id = m.user_id AND d.conversation_id = m.conversation_id) "
           "FROM members m JOIN users u ON u.id = m.user_id "
           "LEFT JOIN user_receipts r ON r.conversation_id = m.conversation_id AND r.user_id = m.user_id "
           "WHERE m.conversation_id = ?1 ORDER BY m.user_id");
    s.BindInt(1, id);
    while (s.Step()) {
      c.members.push_back(MemberRecord{s.Int(0), s.Text(1)});
      c.activity.push_back(MemberActivity{s.Int(2), false});
      c.state.push_back(MemberState{s.Int(3), s.Int(4), s.Int(5), s.Int(6), s.Int(7) != 0});
    }
  }
  if (db_->failed()) return nullptr;
  return &conversations_.emplace(id, std::move(c)).first->second;
}

bool SqliteStore::Writer::IsMember(const Conversation& c, UserId user) {
  return std::any_of(c.members.begin(), c.members.end(), [user](const MemberRecord& m) { return m.user_id == user; });
}

size_t SqliteStore::Writer::MemberIndex(const Conversation& c, UserId user) {
  auto it = std::find_if(c.members.begin(), c.members.end(), [user](const MemberRecord& m) { return m.user_id == user; });
  return static_cast<size_t>(it - c.members.begin());
}

SqliteStore::Writer::LiveDevice* SqliteStore::Writer::FindLiveDevice(DeviceId id) {
  auto it = devices_.find(id);
  if (it != devices_.end()) return &it->second;
  // Only live devices are cached: one created later is found by the next
  // miss, and Revoke removes one that stops being live.
  Stmt s(*db_, "SELECT user_id FROM devices WHERE id = ?1 AND revoked = 0");
  s.BindInt(1, id);
  if (!s.Step()) return nullptr;
  return &devices_.emplace(id, LiveDevice{s.Int(0), {}}).first->second;
}

Watermarks& SqliteStore::Writer::DeviceReceipt(LiveDevice& device, DeviceId id, ConversationId conversation) {
  auto it = device.receipts.find(conversation);
  if (it != device.receipts.end()) return it->second;
  // "Device watermarks": the larger of the row and the newest log row (no
  // row at all: max() is NULL, read as 0).
  Watermarks w;
  Stmt s(*db_,
         "SELECT max(delivered), max(read) FROM ("
         "SELECT delivered, read FROM device_receipts WHERE device_id = ?1 AND conversation_id = ?2 UNION ALL "
         "SELECT * FROM (SELECT delivered, read FROM receipt_log WHERE conversation_id = ?2 AND device_id = ?1 "
         "ORDER BY delivered DESC, read DESC LIMIT 1))");
  s.BindInt(1, id).BindInt(2, conversation);
  if (s.Step()) w = Watermarks{s.Int(0), s.Int(1)};
  ++cached_device_receipts_;
  return device.receipts.emplace(conversation, w).first->second;
}

Seq SqliteStore::Writer::LastSeqVisible(const Conversation& c, size_t i) {
  // Every seq up to last_seq is a message (rows are never deleted), so when
  // the last one is not withheld it is the answer.
  if (c.state[i].last_withheld < c.last_seq) return c.last_seq;
  return LastSeqVisibleTo(*db_, c.id, c.members[i].user_id);
}

std::optional<std::string> SqliteStore::Writer::Username(UserId user) {
  Stmt s(*db_, "SELECT username FROM users WHERE id = ?1");
  s.BindInt(1, user);
  if (!s.Step()) return std::nullopt;
  return s.Text(0);
}

bool SqliteStore::Writer::PasswordHashIs(UserId user, const std::string& hash) {
  Stmt s(*db_, "SELECT 1 FROM users WHERE id = ?1 AND password_hash = ?2");
  s.BindInt(1, user).BindText(2, hash);
  return s.Step();
}

SqliteStore::Writer::Head& SqliteStore::Writer::HeadOf(UserId user) {
  auto it = heads_.find(user);
  if (it != heads_.end()) return it->second;
  Head h;
  Stmt s(*db_, "SELECT " PARLEY_STREAM_HEAD("h") " FROM user_heads h WHERE h.user_id = ?1");
  s.BindInt(1, user);
  if (s.Step()) {
    h.seq = s.Int(0);
    h.stored = true;
  }
  return heads_.emplace(user, h).first->second;
}

SqliteStore::Writer::Top& SqliteStore::Writer::TopOf(UserId user) {
  auto it = tops_.find(user);
  if (it != tops_.end()) return it->second;
  Top top;
  {
    // The first row of the conversation list's own scan (members_by_activity).
    Stmt s(*db_,
           "SELECT last_activity_at, conversation_id FROM members WHERE user_id = ?1 "
           "ORDER BY last_activity_at DESC, conversation_id DESC LIMIT 1");
    s.BindInt(1, user);
    if (s.Step()) top = Top{s.Int(0), s.Int(1), s.Int(0)};
  }
  if (top.id != 0) top.exact = std::max(top.at, NewestVisibleTo(*db_, top.id, user).created_at);
  return tops_.emplace(user, top).first->second;
}

void SqliteStore::Writer::WriteActivity(UserId user, ConversationId conversation, int64_t at, bool insert) {
  Top& top = TopOf(user);  // before the row changes: the top as it stands
  if (top.id != conversation && top.exact > top.at && std::pair(at, conversation) > std::pair(top.at, top.id)) {
    // The row would pass the top's stale one: the top's exact time first,
    // so that the stored order stays the order of the exact times (ties
    // and a clock that went back included).
    Stmt s(*db_, "UPDATE members SET last_activity_at = ?3 WHERE conversation_id = ?1 AND user_id = ?2");
    s.BindInt(1, top.id).BindInt(2, user).BindInt(3, top.exact);
    s.Run();
    top.at = top.exact;
  }
  Stmt s(*db_, insert ? "INSERT INTO members(conversation_id, user_id, last_activity_at) VALUES(?1, ?2, ?3)"
                      : "UPDATE members SET last_activity_at = ?3 WHERE conversation_id = ?1 AND user_id = ?2");
  s.BindInt(1, conversation).BindInt(2, user).BindInt(3, at);
  s.Run();
  if (conversation == top.id) {
    tops_.erase(user);  // written below its stored time (the clock went back): found again when needed
  } else if (std::pair(at, conversation) > std::pair(top.at, top.id)) {
    top = Top{at, conversation, at};
  }
}

std::optional<ProfileRecord> SqliteStore::Writer::Profile(UserId user) {
  Stmt s(*db_, "SELECT id, username, display_name, about, profile_updated_at FROM users WHERE id = ?1");
  s.BindInt(1, user);
  if (!s.Step()) return std::nullopt;
  return ProfileAt(s, 0);
}

std::optional<ProfileRecord> SqliteStore::Writer::ProfileFor(UserId user, UserId viewer) {
  Stmt s(*db_,
         "SELECT u.id, u.username, COALESCE(b.shown_display_name, u.display_name), COALESCE(b.shown_about, u.about), "
         "COALESCE(b.shown_updated_at, u.profile_updated_at) FROM users u "
         "LEFT JOIN blocks b ON b.owner_id = u.id AND b.target_id = ?2 WHERE u.id = ?1");
  s.BindInt(1, user).BindInt(2, viewer);
  if (!s.Step()) return std::nullopt;
  return ProfileAt(s, 0);
}

bool SqliteStore::Writer::Blocks(UserId owner, UserId target) {
  auto it = blocks_.find({owner, target});
  if (it != blocks_.end()) return it->second;
  Stmt s(*db_, "SELECT 1 FROM blocks WHERE owner_id = ?1 AND target_id = ?2");
  s.BindInt(1, owner).BindInt(2, target);
  const bool blocks = s.Step();
  blocks_.emplace(std::pair{owner, target}, blocks);
  return blocks;
}

std::vector<Seq> SqliteStore::Writer::WithheldBetween(const Conversation& c, size_t i, Seq after, Seq upto) {
  if (c.state[i].last_withheld <= after) return {};
  return WithheldIn(*db_, c.id, c.members[i].user_id, after, upto);
}

std::vector<DeviceId> SqliteStore::Writer::RevokeLiveDevices(UserId user_id) {
  std::vector<DeviceId> ids;
  {
    Stmt s(*db_, "SELECT id FROM devices WHERE user_id = ?1 AND revoked = 0 ORDER BY id");
    s.BindInt(1, user_id);
    while (s.Step()) ids.push_back(s.Int(0));
  }
  for (DeviceId id : ids) Revoke(id);
  return ids;
}

void SqliteStore::Writer::Revoke(DeviceId device_id) {
  {
    Stmt s(*db_, "UPDATE devices SET token_hash = NULL, revoked = 1, cursor = 0 WHERE id = ?1");
    s.BindInt(1, device_id);
    s.Run();
  }
  // The device's own watermarks go with it (its receipt_log rows stay, for
  // the timeline; nothing reads a revoked device's watermarks); the user's
  // aggregates stay (they never go backwards).
  {
    Stmt s(*db_, "DELETE FROM device_receipts WHERE device_id = ?1");
    s.BindInt(1, device_id);
    s.Run();
  }
  if (auto it = devices_.find(device_id); it != devices_.end()) {
    cached_device_receipts_ -= it->second.receipts.size();
    devices_.erase(it);
  }
  RemovePush(device_id);
}

void SqliteStore::Writer::IndexName(UserId user, const std::string& username, const std::string& display_name,
                                    bool add) {
  for (const std::string& prefix : NamePrefixes(display_name)) {
    if (add) {
      Stmt s(*db_, "INSERT OR IGNORE INTO name_prefixes(prefix, username, user_id) VALUES(?1, ?2, ?3)");
      s.BindText(1, prefix).BindText(2, username).BindInt(3, user);
      s.Run();
    } else {
      Stmt s(*db_, "DELETE FROM name_prefixes WHERE prefix = ?1 AND username = ?2");
      s.BindText(1, prefix).BindText(2, username);
      s.Run();
    }
  }
}

StreamPosition SqliteStore::Writer::AppendEvent(UserId user, EventKind kind, ConversationId conversation, Seq seq,
                                                UserId receipt_user, Watermarks receipt, int64_t now,
                                                const std::string* data) {
  Head& head = HeadOf(user);
  UserSeq user_seq = head.seq + 1;
  Stmt s(*db_,
         "INSERT INTO user_events(user_id, user_seq, kind, conversation_id, seq, receipt_user_id, delivered, read, "
         "created_at, data) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)");
  s.BindInt(1, user)
      .BindInt(2, user_seq)
      .BindInt(3, static_cast<int64_t>(kind))
      .BindInt(4, conversation)
      .BindInt(5, seq)
      .BindInt(6, receipt_user)
      .BindInt(7, receipt.delivered)
      .BindInt(8, receipt.read)
      .BindInt(9, now);
  if (data != nullptr) {
    s.BindText(10, *data);
  } else {
    s.BindNull(10);
  }
  s.Run();
  head.seq = user_seq;
  if (!head.stored && !head.dirty) {
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
    Conversation& c = it->second;
    // The conversation's own last seq and activity need no write: its newest
    // message records both ("Conversation heads").
    for (size_t i = 0; i < c.members.size(); ++i) {
      if (!c.activity[i].dirty) continue;
      c.activity[i].dirty = false;
      const UserId user = c.members[i].user_id;
      const int64_t at = c.activity[i].at;
      // Already on top of the member's list: a later time keeps the order
      // without a write; the summary reads the exact time from the newest
      // message visible to them ("Member activity").
      Top& top = TopOf(user);
      if (top.id == id && at >= top.at) {
        top.exact = at;
        continue;
      }
      WriteActivity(user, id, at, /*insert=*/false);
    }
    c.dirty = false;
  }
  dirty_conversations_.clear();
  // Only users without a user_heads row yet: an entry is its own record of
  // the head ("Stream heads").
  for (UserId user : dirty_heads_) {
    auto it = heads_.find(user);
    if (it == heads_.end()) continue;
    Stmt s(*db_,
           "INSERT INTO user_heads(user_id, head) VALUES(?1, ?2) "
           "ON CONFLICT(user_id) DO UPDATE SET head = max(head, excluded.head)");
    s.BindInt(1, user).BindInt(2, it->second.seq);
    s.Run();
    it->second.dirty = false;
    it->second.stored = true;
  }
  dirty_heads_.clear();
}

void SqliteStore::Writer::DropCaches() {
  conversations_.clear();
  heads_.clear();
  tops_.clear();
  blocks_.clear();
  devices_.clear();
  cached_device_receipts_ = 0;
  dirty_conversations_.clear();
  dirty_heads_.clear();
}

ConversationRecord SqliteStore::Writer::ToRecord(const Conversation& c) {
  ConversationRecord r;
  r.id = c.id;
  r.members = c.members;
  r.last_seq = c.last_seq;
  r.created_at = c.created_at;
  r.disappearing_s = c.disappearing_s;
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
  return UserRecord{db_->last_insert_rowid(), username, password_hash, now, "", ""};
}

Result<DeviceRecord> SqliteStore::Writer::CreateDevice(UserId user_id, const std::string& name,
                                                       const std::string& platform, const std::string& token_hash,
                                                       const std::string& verified_hash, int64_t now) {
  if (!Username(user_id)) return Status(ErrorCode::kUnknownUser, "unknown user");
  if (!verified_hash.empty() && !PasswordHashIs(user_id, verified_hash)) {
    return Status(ErrorCode::kBadCredentials, "the password changed while logging in; log in with the new one");
  }
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
  Revoke(device_id);
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
      OpenResult found{ToRecord(*c), false, {}};
      // As the opener may see it: nothing withheld from them shows.
      found.conversation.last_seq = LastSeqVisible(*c, MemberIndex(*c, a));
      return found;
    }
  }
  Conversation c;
  c.created_at = now;
  c.last_activity_at = now;
  c.members = {MemberRecord{a, *name_a}, MemberRecord{b, *name_b}};
  if (b < a) std::swap(c.members[0], c.members[1]);
  c.activity = {MemberActivity{now, false}, MemberActivity{now, false}};
  c.state.resize(c.members.size());  // no receipts, withheld rows or drafts yet
  {
    Stmt s(*db_,
           "INSERT INTO conversations(direct_key, last_seq, created_at, last_activity_at) VALUES(?1, 0, ?2, ?2)");
    s.BindText(1, key).BindInt(2, now);
    s.Run();
    c.id = db_->last_insert_rowid();
  }
  for (const MemberRecord& m : c.members) WriteActivity(m.user_id, c.id, now, /*insert=*/true);
  OpenResult result;
  result.created = true;
  for (const MemberRecord& m : c.members) {
    result.positions.push_back(AppendEvent(m.user_id, EventKind::kConversation, c.id, 0, 0, {}, now));
  }
  result.conversation = ToRecord(c);
  conversations_.insert_or_assign(c.id, std::move(c));
  return result;
}

std::optional<AppendResult> SqliteStore::Writer::StoredRetry(const NewMessage& msg) {
  Stmt s(*db_,
         "SELECT " PARLEY_MESSAGE_COLUMNS " FROM messages m "
         "WHERE m.conversation_id = ?1 AND m.sender_id = ?2 AND m.client_id = ?3");
  s.BindInt(1, msg.conversation_id).BindInt(2, msg.sender_id).BindText(3, msg.client_id);
  if (!s.Step()) return std::nullopt;
  return AppendResult{MessageAt(s, 0), true, {}, {}, std::nullopt};
}

Result<AppendResult> SqliteStore::Writer::AppendMessage(const NewMessage& msg) {
  Conversation* c = FindConversation(msg.conversation_id);
  if (c == nullptr) return Status(ErrorCode::kUnknownConversation, "unknown conversation");
  if (!IsMember(*c, msg.sender_id)) return Status(ErrorCode::kNotMember, "sender is not a member");
  // Blocking: the sender may not reach a member they block; a member who
  // blocks the sender does not see the message. A retry of a message stored
  // before the block still gets its stored copy.
  std::vector<bool> hidden(c->members.size(), false);
  for (size_t i = 0; i < c->members.size(); ++i) {
    UserId member = c->members[i].user_id;
    if (member == msg.sender_id) continue;
    if (Blocks(msg.sender_id, member)) {
      if (std::optional<AppendResult> retry = StoredRetry(msg)) return *std::move(retry);
      return Status(ErrorCode::kBlocked, "the sender blocks a member; unblock first");
    }
    hidden[i] = Blocks(member, msg.sender_id);
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
  const int64_t stored_at = std::max(batch_now_, msg.now);
  m.expires_at = ExpiresAt(stored_at, c->disappearing_s, msg.max_age_ms);
  {
    // A retry (the same conversation, sender and client id) is found by the
    // insert itself, on messages_dedup, instead of by a read before it: one
    // seek of that index per send, not two (the read was 8 % of the writer's
    // instructions for a send; callgrind, docs/benchmarks.md). The message's
    // search doc id is the queue id QueueSearch takes next, queued only if
    // the row went in.
    const int64_t search_doc = next_search_id_;
    Stmt s(*db_,
           "INSERT INTO messages(conversation_id, seq, sender_id, sender_device_id, client_id, body, created_at, "
           "accepted_at, stored_at, expires_at, search_doc) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) "
           "ON CONFLICT(conversation_id, sender_id, client_id) DO NOTHING");
    s.BindInt(1, m.conversation_id)
        .BindInt(2, m.seq)
        .BindInt(3, m.sender_id)
        .BindInt(4, m.sender_device_id)
        .BindText(5, m.client_id)
        .BindText(6, m.body)
        .BindInt(7, m.created_at)
        .BindInt(8, msg.accepted_at != 0 ? msg.accepted_at : msg.now)
        .BindInt(9, stored_at)
        .BindInt(10, m.expires_at)
        .BindInt(11, search_doc);
    s.Run();
    if (db_->failed()) return AppendResult{};  // the batch fails; nothing of it is kept
    if (db_->Changes() == 0) {
      if (std::optional<AppendResult> retry = StoredRetry(msg)) return *std::move(retry);
      return Status(ErrorCode::kInternal, "a send conflicted with no stored message");
    }
    const int64_t queued = QueueSearch(m, /*doc_id=*/std::nullopt, stored_at);
    assert(queued == search_doc);
    (void)queued;
  }
  if (c->hot_since == 0) {
    // The conversation had no hot message: this one starts its next round
    // of compaction (see "Cold tier").
    c->hot_since = m.created_at;
    Stmt s(*db_, "UPDATE conversations SET hot_since = ?2 WHERE id = ?1");
    s.BindInt(1, m.conversation_id).BindInt(2, m.created_at);
    s.Run();
  }
  c->last_seq = m.seq;
  c->last_activity_at = msg.now;
  for (size_t i = 0; i < c->members.size(); ++i) {
    if (hidden[i]) {
      Stmt s(*db_, "INSERT INTO withheld(conversation_id, user_id, seq) VALUES(?1, ?2, ?3)");
      s.BindInt(1, m.conversation_id).BindInt(2, c->members[i].user_id).BindInt(3, m.seq);
      s.Run();
      c->state[i].last_withheld = m.seq;
    } else {
      c->activity[i] = MemberActivity{msg.now, true};
    }
  }
  MarkDirty(*c);
  // Sending means the sender has seen everything up to their own message; no
  // receipt event, since the sender's devices learn it from the message event
  // itself. Seqs withheld from the sender that this newly covers (they were
  // blocking the other member and have unblocked) ride on the message events:
  // in the sender's stream those above its old delivered watermark; in the
  // other member's, those above `announced`, the watermark that stream last
  // carried. The two differ after messages hidden from the other member
  // (a mutual block): they raised the sender's watermark with no event there.
  const size_t sender_index = MemberIndex(*c, m.sender_id);
  MemberState& sender_state = c->state[sender_index];
  const Seq old_delivered = sender_state.delivered;
  const Seq old_announced = sender_state.announced;
  const std::vector<Seq> unannounced = WithheldBetween(*c, sender_index, old_announced, m.seq);
  const std::vector<Seq> own = SeqsAbove(unannounced, old_delivered);
  bool announced = false;
  for (size_t i = 0; i < c->members.size(); ++i) {
    if (hidden[i]) continue;
    const bool sender = c->members[i].user_id == m.sender_id;
    announced = announced || !sender;
    const std::vector<Seq>& list = sender ? own : unannounced;
    std::string data;
    if (!list.empty()) data = SeqListJson(list);
    result.positions.push_back(AppendEvent(c->members[i].user_id, EventKind::kMessage, m.conversation_id, m.seq, 0,
                                           {}, msg.now, list.empty() ? nullptr : &data));
    if (!unannounced.empty()) result.withheld.push_back(list);  // nothing to list: no allocation (the usual send)
  }
  ClearIfNoneListed(result.withheld);
  Stmt s(*db_,
         "INSERT INTO user_receipts(conversation_id, user_id, delivered, read, announced) VALUES(?1, ?2, ?3, ?3, ?4) "
         "ON CONFLICT(conversation_id, user_id) DO UPDATE SET delivered = max(delivered, excluded.delivered), "
         "read = max(read, excluded.read), announced = max(announced, excluded.announced)");
  s.BindInt(1, m.conversation_id).BindInt(2, m.sender_id).BindInt(3, m.seq).BindInt(4, announced ? m.seq : 0);
  s.Run();
  sender_state.delivered = std::max(sender_state.delivered, m.seq);
  sender_state.read = std::max(sender_state.read, m.seq);
  sender_state.announced = std::max(sender_state.announced, announced ? m.seq : 0);
  if (ClearDraft(*c, sender_index))
    result.draft_cleared = AppendEvent(m.sender_id, EventKind::kDraft, m.conversation_id, 0, 0, {}, msg.now);
  return result;
}

Result<ReceiptResult> SqliteStore::Writer::UpdateReceipt(const ReceiptUpdate& update) {
  Conversation* c = FindConversation(update.conversation_id);
  if (c == nullptr) return Status(ErrorCode::kUnknownConversation, "unknown conversation");
  if (!IsMember(*c, update.user_id)) return Status(ErrorCode::kNotMember, "not a member");
  LiveDevice* live = FindLiveDevice(update.device_id);
  if (live == nullptr || live->user_id != update.user_id)
    return Status(ErrorCode::kUnknownDevice, "no such live device of this user");
  const size_t index = MemberIndex(*c, update.user_id);
  MemberState& state = c->state[index];
  // Clamped to the last seq the user may see: a watermark of theirs never
  // passes messages withheld from them while those are the newest (it would
  // tell the sender, through the receipt's "withheld" list, that they are
  // blocked).
  Seq last = c->last_seq;
  if (std::max(update.read, update.delivered) > 0) last = LastSeqVisible(*c, index);
  Seq read = std::clamp<Seq>(update.read, 0, last);
  Seq delivered = std::clamp<Seq>(std::max(update.delivered, read), 0, last);

  Watermarks& cached_device = DeviceReceipt(*live, update.device_id, update.conversation_id);
  const Watermarks device = cached_device;
  Watermarks new_device{std::max(device.delivered, delivered), std::max(device.read, read)};
  if (new_device.delivered != device.delivered || new_device.read != device.read) {
    cached_device = new_device;
    // Every move of a device's watermarks, with its time: the timeline's
    // source, and the record of the watermarks ("Device watermarks").
    Stmt log(*db_,
             "INSERT OR IGNORE INTO receipt_log(conversation_id, device_id, delivered, read, at) "
             "VALUES(?1, ?2, ?3, ?4, ?5)");
    log.BindInt(1, update.conversation_id)
        .BindInt(2, update.device_id)
        .BindInt(3, new_device.delivered)
        .BindInt(4, new_device.read)
        .BindInt(5, update.now);
    log.Run();
  }

  const Watermarks aggregate{state.delivered, state.read};
  const Seq announced = state.announced;
  ReceiptResult result;
  result.aggregate = Watermarks{std::max(aggregate.delivered, new_device.delivered),
                                std::max(aggregate.read, new_device.read)};
  if (result.aggregate.delivered == aggregate.delivered && result.aggregate.read == aggregate.read) return result;

  result.changed = true;
  result.read_changed = result.aggregate.read != aggregate.read;
  {
    Stmt s(*db_,
           "INSERT INTO user_receipts(conversation_id, user_id, delivered, read, announced) VALUES(?1, ?2, ?3, ?4, ?3) "
           "ON CONFLICT(conversation_id, user_id) DO UPDATE SET delivered = excluded.delivered, "
           "read = excluded.read, announced = excluded.announced");
    s.BindInt(1, update.conversation_id).BindInt(2, update.user_id).BindInt(3, result.aggregate.delivered).BindInt(
        4, result.aggregate.read);
    s.Run();
    state.delivered = result.aggregate.delivered;
    state.read = result.aggregate.read;
    state.announced = result.aggregate.delivered;
  }
  // "Stay sent forever": seqs withheld from this user that the delivered
  // watermark now covers go with the receipt, so the other members keep
  // showing them as merely sent. The user's own stream lists those above
  // its old delivered watermark; the other member's those above `announced`
  // (AppendMessage). Every member gets the receipt, so both are now current.
  const std::vector<Seq> unannounced = WithheldBetween(*c, index, announced, result.aggregate.delivered);
  const std::vector<Seq> own = SeqsAbove(unannounced, aggregate.delivered);
  for (const MemberRecord& member : c->members) {
    const std::vector<Seq>& list = member.user_id == update.user_id ? own : unannounced;
    std::string data;
    if (!list.empty()) data = SeqListJson(list);
    result.positions.push_back(AppendEvent(member.user_id, EventKind::kReceipt, update.conversation_id, 0,
                                           update.user_id, result.aggregate, update.now,
                                           list.empty() ? nullptr : &data));
    if (!unannounced.empty()) result.withheld.push_back(list);
  }
  ClearIfNoneListed(result.withheld);
  return result;
}

// Edits and deletes (issue 12). The rules are protocol::DecideChange's; this
// reads what they need (the message row, the edit's dedup key, whether the
// message is withheld from or hidden by the actor) and writes the outcome.
// The writer thread orders changes to one message: "server order" is the
// order of this function's calls.
Result<ChangeResult> SqliteStore::Writer::ChangeMessage(const MessageChange& change) {
  Conversation* c = FindConversation(change.conversation_id);
  if (c == nullptr) return Status(ErrorCode::kUnknownConversation, "unknown conversation");
  if (!IsMember(*c, change.user_id)) return Status(ErrorCode::kNotMember, "not a member");
  ChangeResult result;
  int64_t search_doc = 0;
  {
    Stmt s(*db_,
           "SELECT " PARLEY_MESSAGE_COLUMNS ", m.search_doc FROM messages m WHERE m.conversation_id = ?1 AND m.seq = ?2");
    s.BindInt(1, change.conversation_id).BindInt(2, change.seq);
    if (!s.Step()) return Status(ErrorCode::kUnknownMessage, "no message with this seq in the conversation");
    result.message = MessageAt(s, 0);
    search_doc = s.Int(kMessageColumnCount);
  }
  MessageRecord& m = result.message;
  const auto kind = static_cast<protocol::ChangeKind>(change.kind);
  int64_t hidden_at = 0;
  {
    Stmt s(*db_, "SELECT hidden_at FROM withheld WHERE conversation_id = ?1 AND user_id = ?2 AND seq = ?3");
    s.BindInt(1, change.conversation_id).BindInt(2, change.user_id).BindInt(3, change.seq);
    if (s.Step()) {
      hidden_at = s.Int(0);
      // Withheld by a block: to this user the message does not exist.
      if (hidden_at == 0) return Status(ErrorCode::kUnknownMessage, "no message with this seq in the conversation");
    }
  }
  int64_t same_client_version = 0, same_client_at = 0;
  if (kind == protocol::ChangeKind::kEdit) {
    Stmt s(*db_, "SELECT version, created_at FROM message_edits WHERE conversation_id = ?1 AND seq = ?2 AND client_id = ?3");
    s.BindInt(1, change.conversation_id).BindInt(2, change.seq).BindText(3, change.client_id);
    if (s.Step()) {
      same_client_version = s.Int(0);
      same_client_at = s.Int(1);
    }
  }
  if (Status s = DecideStoredChange(change, m, hidden_at, same_client_version, same_client_at, &result); !s.ok())
    return s;
  if (result.duplicate) return result;
  const int64_t version = result.version;
  if (kind == protocol::ChangeKind::kDeleteForMe) {
    Stmt s(*db_, "INSERT INTO withheld(conversation_id, user_id, seq, hidden_at) VALUES(?1, ?2, ?3, ?4)");
    s.BindInt(1, change.conversation_id).BindInt(2, change.user_id).BindInt(3, change.seq).BindInt(4, change.now);
    s.Run();
    result.positions.push_back(
        AppendEvent(change.user_id, EventKind::kDeleteForMe, change.conversation_id, change.seq, 0, {}, change.now));
    return result;
  }
  const EventKind event = kind == protocol::ChangeKind::kEdit ? EventKind::kEdit : EventKind::kDelete;
  if (kind == protocol::ChangeKind::kEdit) {
    Stmt ins(*db_,
             "INSERT INTO message_edits(conversation_id, seq, version, client_id, editor_device_id, body, created_at) "
             "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)");
    ins.BindInt(1, change.conversation_id)
        .BindInt(2, change.seq)
        .BindInt(3, version)
        .BindText(4, change.client_id)
        .BindInt(5, change.device_id)
        .BindText(6, change.body)
        .BindInt(7, change.now);
    ins.Run();
    Stmt up(*db_, "UPDATE messages SET body = ?3, cold = 0, version = ?4, edited_at = ?5 "
                  "WHERE conversation_id = ?1 AND seq = ?2");
    up.BindInt(1, change.conversation_id).BindInt(2, change.seq).BindText(3, change.body).BindInt(4, version).BindInt(
        5, change.now);
    up.Run();
  } else {
    // A tombstone: the row keeps its seq; every text of the message goes
    // (a cold copy leaves its block at the purge).
    Stmt up(*db_,
            "UPDATE messages SET body = '', cold = 0, version = ?3, deleted_at = ?4 "
            "WHERE conversation_id = ?1 AND seq = ?2");
    up.BindInt(1, change.conversation_id).BindInt(2, change.seq).BindInt(3, version).BindInt(4, change.now);
    up.Run();
    Stmt edits(*db_, "UPDATE message_edits SET body = '', cold = 0 WHERE conversation_id = ?1 AND seq = ?2");
    edits.BindInt(1, change.conversation_id).BindInt(2, change.seq);
    edits.Run();
  }
  ApplyStoredChange(change, version, &m);
  QueueSearch(m, search_doc, change.now);
  // Every member the message is visible to: not withheld from them by a
  // block, not deleted by them for themselves.
  // One primary-key probe of withheld per member.
  for (const MemberRecord& member : c->members) {
    Stmt w(*db_, "SELECT 1 FROM withheld WHERE conversation_id = ?1 AND user_id = ?2 AND seq = ?3");
    w.BindInt(1, change.conversation_id).BindInt(2, member.user_id).BindInt(3, change.seq);
    if (w.Step()) continue;
    result.positions.push_back(AppendEvent(member.user_id, event, change.conversation_id, change.seq, 0,
                                           Watermarks{version, 0}, change.now));
  }
  return result;
}

// ---- Retention (see "Retention") ----

Result<SocialResult> SqliteStore::Writer::SetDisappearing(UserId user_id, ConversationId conversation_id,
                                                          int64_t seconds, int64_t now) {
  Conversation* c = FindConversation(conversation_id);
  if (c == nullptr) return Status(ErrorCode::kUnknownConversation, "no such conversation");
  if (!IsMember(*c, user_id)) return Status(ErrorCode::kNotMember, "you are not a member of this conversation");
  SocialResult result;
  if (c->disappearing_s == seconds) return result;
  Stmt s(*db_, "UPDATE conversations SET disappearing_s = ?2 WHERE id = ?1");
  s.BindInt(1, conversation_id).BindInt(2, seconds);
  s.Run();
  // The cache is dropped whole if the batch rolls back (CommitBatch).
  c->disappearing_s = seconds;
  result.changed = true;
  // The actor travels in receipt_user_id and the timer in `delivered`, as
  // kMute's flag does.
  for (const MemberRecord& m : c->members) {
    result.positions.push_back(AppendEvent(m.user_id, EventKind::kDisappearing, conversation_id, 0, user_id,
                                           Watermarks{seconds, 0}, now));
  }
  return result;
}

Result<ExpireProgress> SqliteStore::Writer::ExpireMessages(int64_t now, int max) {
  struct Key {
    ConversationId conversation;
    Seq seq;
    UserId sender;
  };
  std::vector<Key> keys;
  {
    // The partial index holds only expiring, undeleted messages.
    Stmt s(*db_,
           "SELECT conversation_id, seq, sender_id FROM messages INDEXED BY messages_expiring "
           "WHERE expires_at > 0 AND deleted_at = 0 AND expires_at <= ?1 ORDER BY expires_at LIMIT ?2");
    s.BindInt(1, now).BindInt(2, static_cast<int64_t>(std::max(1, max)) + 1);
    while (s.Step()) keys.push_back(Key{s.Int(0), s.Int(1), s.Int(2)});
  }
  ExpireProgress progress;
  if (keys.size() > static_cast<size_t>(std::max(1, max))) {
    keys.pop_back();
    progress.more = true;
  }
  for (const Key& k : keys) {
    Result<ChangeResult> r = ChangeMessage(ExpiryDelete(k.conversation, k.seq, k.sender, now));
    if (!r) return r.error();
    if (!r->duplicate) progress.expired.push_back(std::move(r).value());
  }
  return progress;
}

Result<PurgeProgress> SqliteStore::Writer::PurgeDeleted(int64_t deleted_before, int max,
                                                        std::vector<sqlite::SearchRow>* search_rows) {
  std::vector<std::pair<ConversationId, Seq>> keys;
  {
    Stmt s(*db_,
           "SELECT conversation_id, seq FROM messages INDEXED BY messages_to_purge "
           "WHERE deleted_at > 0 AND purged_at = 0 AND deleted_at <= ?1 ORDER BY deleted_at LIMIT ?2");
    s.BindInt(1, deleted_before).BindInt(2, std::max(1, max));
    while (s.Step()) keys.emplace_back(s.Int(0), s.Int(1));
  }
  PurgeProgress progress;
  std::map<ConversationId, std::vector<Seq>> cold;  // every purged seq, per conversation: its text may be in a block
  for (const auto& [conversation, seq] : keys) {
    cold[conversation].push_back(seq);
    {
      Stmt s(*db_, "DELETE FROM message_edits WHERE conversation_id = ?1 AND seq = ?2");
      s.BindInt(1, conversation).BindInt(2, seq);
      s.Run();
      progress.edits_removed += db_->Changes();
    }
    {
      // Normally gone already (the delete queued the message and the search
      // writer dropped it); if the purge runs first, the search writer
      // removes it right after this commit (SqliteStore::PurgeDeleted). A
      // queued entry left behind finds the tombstone and indexes nothing.
      Stmt s(*db_, "SELECT search_doc FROM messages WHERE conversation_id = ?1 AND seq = ?2");
      s.BindInt(1, conversation).BindInt(2, seq);
      if (s.Step() && s.Int(0) != 0) search_rows->push_back(sqlite::SearchRow{s.Int(0), conversation, seq});
    }
    // The body is already empty (the delete emptied it); the row stays as
    // the tombstone that keeps the seq and the deduplication key.
    Stmt u(*db_, "UPDATE messages SET body = '', purged_at = ?3 WHERE conversation_id = ?1 AND seq = ?2");
    u.BindInt(1, conversation).BindInt(2, seq).BindInt(3, std::max<int64_t>(1, batch_now_));
    u.Run();
    ++progress.purged;
  }
  for (const auto& [conversation, seqs] : cold) {
    Result<int64_t> removed = sqlite::DropFromColdBlocks(*db_, cold_codec_, conversation, seqs);
    if (!removed) return removed.error();
    progress.cold_removed += *removed;
  }
  {
    Stmt s(*db_,
           "SELECT count(*) FROM messages INDEXED BY messages_to_purge "
           "WHERE deleted_at > 0 AND purged_at = 0 AND deleted_at <= ?1");
    s.BindInt(1, deleted_before);
    if (s.Step()) progress.backlog = s.Int(0);
  }
  return progress;
}

Result<TrimProgress> SqliteStore::Writer::TrimStreams(const TrimRequest& req) {
  struct User {
    UserId id;
    UserSeq head;
    UserSeq floor;
  };
  std::vector<User> users;
  {
    Stmt s(*db_,
           "SELECT h.user_id, " PARLEY_STREAM_HEAD("h") ", h.stream_floor FROM user_heads h WHERE h.user_id > ?1 "
           "ORDER BY h.user_id LIMIT ?2");
    s.BindInt(1, req.after_user).BindInt(2, std::max(1, req.max_users));
    while (s.Step()) users.push_back(User{s.Int(0), s.Int(1), s.Int(2)});
  }
  TrimProgress progress;
  int64_t budget = std::max(1, req.max_entries);
  for (const User& u : users) {
    if (budget == 0) {
      progress.more = true;
      break;
    }
    ++progress.users_visited;
    progress.next_after_user = u.id;
    // Nothing at or above the head goes, nor what a recently seen device
    // has not acknowledged.
    UserSeq limit = u.head;
    {
      Stmt s(*db_,
             "SELECT min(cursor) FROM devices WHERE user_id = ?1 AND revoked = 0 AND last_seen_at >= ?2");
      s.BindInt(1, u.id).BindInt(2, req.protect_seen_since);
      if (s.Step() && !s.IsNull(0)) limit = std::min(limit, s.Int(0));
    }
    UserSeq to = u.floor - 1;
    bool budget_hit = false;
    {
      Stmt s(*db_,
             "SELECT user_seq, created_at FROM user_events WHERE user_id = ?1 AND user_seq >= ?2 AND user_seq <= ?3 "
             "ORDER BY user_seq LIMIT ?4");
      s.BindInt(1, u.id).BindInt(2, u.floor).BindInt(3, limit).BindInt(4, budget + 1);
      int64_t taken = 0;
      while (s.Step()) {
        const UserSeq seq = s.Int(0);
        if (!req.Trimmable(seq, s.Int(1), u.head)) break;
        if (taken == budget) {
          budget_hit = true;
          break;
        }
        to = seq;
        ++taken;
      }
    }
    if (to >= u.floor) {
      Stmt d(*db_, "DELETE FROM user_events WHERE user_id = ?1 AND user_seq >= ?2 AND user_seq <= ?3");
      d.BindInt(1, u.id).BindInt(2, u.floor).BindInt(3, to);
      d.Run();
      const int64_t removed = db_->Changes();
      // The exact head goes with the floor: the entries that carried it may
      // be gone now ("Stream heads").
      Stmt f(*db_,
             "UPDATE user_heads SET stream_floor = max(stream_floor, ?2), head = max(head, ?3) WHERE user_id = ?1");
      f.BindInt(1, u.id).BindInt(2, to + 1).BindInt(3, u.head);
      f.Run();
      progress.trimmed += removed;
      budget -= std::min(budget, removed);
      ++progress.users_trimmed;
    }
    if (budget_hit) {
      // This user has more to trim: the next step starts with them again.
      progress.next_after_user = u.id - 1;
      progress.more = true;
      break;
    }
  }
  if (!progress.more && users.size() < static_cast<size_t>(std::max(1, req.max_users))) progress.next_after_user = 0;
  return progress;
}

// ---- Cold tier (see "Cold tier") ----

Result<CompactProgress> SqliteStore::Writer::CompactMessages(const CompactRequest& req) {
  const int max = std::max(1, req.max_messages);
  CompactProgress progress;
  // A block that could pass the step's budget waits for the next step; the
  // first block of a step always goes, so every step progresses.
  auto out_of_budget = [&] { return progress.blocks > 0 && progress.messages + kColdBlockMessages > max; };
  std::vector<std::pair<ConversationId, Seq>> due;  // (conversation, cold_through), oldest hot message first
  {
    // One more than a step may visit tells whether more are due.
    Stmt s(*db_,
           "SELECT id, cold_through FROM conversations INDEXED BY conversations_cold_due "
           "WHERE hot_since > 0 AND hot_since < ?1 ORDER BY hot_since LIMIT ?2");
    s.BindInt(1, req.due_before).BindInt(2, static_cast<int64_t>(max) + 1);
    while (s.Step()) due.emplace_back(s.Int(0), s.Int(1));
  }
  struct Row {
    Seq seq;
    std::string body;
    bool live;  // not deleted, not cold already, has a text: goes into the block
  };
  for (size_t i = 0; i < due.size(); ++i) {
    if (i == static_cast<size_t>(max) || out_of_budget()) {
      progress.more = true;
      break;
    }
    auto [conversation, through] = due[i];
    ++progress.conversations;
    int64_t next_hot = 0;  // created_at of the first message left hot (0: none)
    while (true) {
      if (out_of_budget()) {
        // Stopped mid-conversation: it stays due from `through` + 1.
        Stmt s(*db_, "SELECT created_at FROM messages WHERE conversation_id = ?1 AND seq > ?2 ORDER BY seq LIMIT 1");
        s.BindInt(1, conversation).BindInt(2, through);
        if (s.Step()) next_hot = s.Int(0);
        progress.more = true;
        break;
      }
      std::vector<Row> rows;
      bool younger = false;
      {
        Stmt s(*db_,
               "SELECT seq, body, created_at, deleted_at = 0 AND cold = 0 AND body <> '' FROM messages "
               "WHERE conversation_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3");
        s.BindInt(1, conversation).BindInt(2, through).BindInt(3, kColdBlockMessages);
        while (s.Step()) {
          if (s.Int(2) >= req.stored_before) {
            next_hot = s.Int(2);
            younger = true;
            break;
          }
          rows.push_back(Row{s.Int(0), s.Text(1), s.Int(3) != 0});
        }
      }
      std::vector<ColdEntry> entries;
      for (Row& r : rows) {
        if (r.live) entries.push_back(ColdEntry{r.seq, std::move(r.body)});
      }
      if (!entries.empty()) {
        int64_t raw = 0;
        Result<std::string> packed = cold_codec_.Pack(entries.front().seq, entries, &raw);
        if (!packed) return packed.error();
        InsertBlock(BlockKind::kMessages, conversation, entries.front().seq, entries.back().seq,
                    static_cast<int64_t>(entries.size()), raw, *packed);
        for (const ColdEntry& e : entries) {
          Stmt u(*db_, "UPDATE messages SET body = '', cold = 1 WHERE conversation_id = ?1 AND seq = ?2");
          u.BindInt(1, conversation).BindInt(2, e.seq);
          u.Run();
        }
        ++progress.blocks;
        progress.messages += static_cast<int>(entries.size());
        progress.raw_bytes += raw;
        progress.compressed_bytes += static_cast<int64_t>(packed->size());
        if (Status s = CompactEdits(conversation, entries, &progress); !s.ok()) return s;
      }
      if (!rows.empty()) through = rows.back().seq;
      if (younger || rows.size() < static_cast<size_t>(kColdBlockMessages)) break;
    }
    {
      Stmt s(*db_, "UPDATE conversations SET cold_through = ?2, hot_since = ?3 WHERE id = ?1");
      s.BindInt(1, conversation).BindInt(2, through).BindInt(3, next_hot);
      s.Run();
    }
    // The cache is dropped whole if the batch rolls back (CommitBatch).
    if (auto it = conversations_.find(conversation); it != conversations_.end()) it->second.hot_since = next_hot;
  }
  return progress;
}

// The edits of the messages of a block being made (`entries`: their seqs,
// ascending) go into an edit block of the same range: the rows with a text
// (a deleted message's are empty already; none above cold_through is cold),
// one range scan of message_edits' primary key.
Status SqliteStore::Writer::CompactEdits(ConversationId conversation, const std::vector<ColdEntry>& entries,
                                         CompactProgress* progress) {
  std::vector<ColdEditEntry> edits;
  {
    Stmt s(*db_,
           "SELECT seq, version, body FROM message_edits WHERE conversation_id = ?1 AND seq >= ?2 AND seq <= ?3 "
           "AND cold = 0 AND body <> '' ORDER BY seq, version");
    s.BindInt(1, conversation).BindInt(2, entries.front().seq).BindInt(3, entries.back().seq);
    while (s.Step()) {
      const Seq seq = s.Int(0);
      auto it = std::lower_bound(entries.begin(), entries.end(), seq,
                                 [](const ColdEntry& e, Seq x) { return e.seq < x; });
      if (it != entries.end() && it->seq == seq) edits.push_back(ColdEditEntry{seq, s.Int(1), s.Text(2)});
    }
  }
  if (edits.empty()) return Status::Ok();
  int64_t raw = 0;
  Result<std::string> packed = cold_codec_.PackEdits(edits.front().seq, edits, &raw);
  if (!packed) return packed.error();
  InsertBlock(BlockKind::kEdits, conversation, edits.front().seq, edits.back().seq,
              static_cast<int64_t>(edits.size()), raw, *packed);
  for (const ColdEditEntry& e : edits) {
    Stmt u(*db_,
           "UPDATE message_edits SET body = '', cold = 1 WHERE conversation_id = ?1 AND seq = ?2 AND version = ?3");
    u.BindInt(1, conversation).BindInt(2, e.seq).BindInt(3, e.version);
    u.Run();
  }
  progress->edits += static_cast<int>(edits.size());
  progress->raw_bytes += raw;
  progress->compressed_bytes += static_cast<int64_t>(packed->size());
  return Status::Ok();
}

void SqliteStore::Writer::InsertBlock(BlockKind kind, ConversationId conversation, Seq first_seq, Seq last_seq,
                                      int64_t count, int64_t raw_bytes, const std::string& data) {
  // The two tables differ only in their name and count column: one complete,
  // fixed statement each, chosen here (nothing of the SQL is built).
  constexpr std::string_view kMessageBlockSql =
      "INSERT INTO message_blocks(conversation_id, first_seq, last_seq, messages, raw_bytes, data, created_at, nonce) "
      "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
  constexpr std::string_view kEditBlockSql =
      "INSERT INTO edit_blocks(conversation_id, first_seq, last_seq, edits, raw_bytes, data, created_at, nonce) "
      "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
  Stmt s(*db_, kind == BlockKind::kMessages ? kMessageBlockSql : kEditBlockSql);
  s.BindInt(1, conversation)
      .BindInt(2, first_seq)
      .BindInt(3, last_seq)
      .BindInt(4, count)
      .BindInt(5, raw_bytes)
      .BindBlob(6, data)
      .BindInt(7, batch_now_)
      .BindInt(8, sqlite::NewBlockNonce());
  s.Run();
}

int64_t SqliteStore::Writer::NextSearchId() { return next_search_id_++; }

namespace {

// The first search_queue id a writer may hand out: above every id handed out
// before, since the queue keeps the entries past the search file's done_id
// and is trimmed only up to it (sqlite_search.h). Read once at open, before
// the search writer can advance done_id and a trim empty the queue; the
// counter then only grows (a failed batch gives back only ids that no
// commit holds: CommitBatch), so a committed id is never handed out twice,
// which the search writer relies on.
Result<int64_t> FirstSearchId(Db& db, int64_t search_done_id) {
  Stmt s(db, "SELECT COALESCE(max(id), 0) FROM search_queue");
  const int64_t queued = s.Step() ? s.Int(0) : 0;
  if (db.failed()) return db.error();
  return std::max(queued, search_done_id) + 1;
}

}  // namespace

int64_t SqliteStore::Writer::QueueSearch(const MessageRecord& m, std::optional<int64_t> doc_id, int64_t now) {
  const int64_t id = NextSearchId();
  Stmt s(*db_, "INSERT INTO search_queue(id, conversation_id, seq, queued_at) VALUES(?1, ?2, ?3, ?4)");
  s.BindInt(1, id).BindInt(2, m.conversation_id).BindInt(3, m.seq).BindInt(4, now);
  s.Run();
  if (search_handoff_ != nullptr) {
    search_pending_.push_back(sqlite::SearchEntry{id, doc_id.value_or(id), m.conversation_id, m.seq, m.version,
                                                  now, m.deleted_at != 0 ? std::string() : m.body});
  }
  return id;
}

Result<Empty> SqliteStore::Writer::TrimSearchQueue(int64_t done_id) {
  Stmt s(*db_, "DELETE FROM search_queue WHERE id <= ?1");
  s.BindInt(1, done_id);
  s.Run();
  return Empty{};
}

Result<SocialResult> SqliteStore::Writer::SetProfile(UserId user_id, const std::optional<std::string>& display_name,
                                                     const std::optional<std::string>& about, int64_t now) {
  std::optional<ProfileRecord> old = Profile(user_id);
  if (!old) return Status(ErrorCode::kUnknownUser, "unknown user");
  SocialResult result;
  result.profile = *old;
  ProfileRecord& p = result.profile;
  if (display_name) p.display_name = *display_name;
  if (about) p.about = *about;
  if (p.display_name == old->display_name && p.about == old->about) return result;
  result.changed = true;
  p.updated_at = now;
  {
    Stmt s(*db_, "UPDATE users SET display_name = ?2, about = ?3, profile_updated_at = ?4 WHERE id = ?1");
    s.BindInt(1, user_id).BindText(2, p.display_name).BindText(3, p.about).BindInt(4, now);
    s.Run();
  }
  if (p.display_name != old->display_name) {
    IndexName(user_id, p.username, old->display_name, /*add=*/false);
    IndexName(user_id, p.username, p.display_name, /*add=*/true);
  }
  // Audience: the user, everyone sharing a conversation with them, everyone
  // who has them as a contact; minus whom the user blocks. Ascending id.
  std::vector<UserId> audience{user_id};
  {
    Stmt s(*db_,
           "SELECT DISTINCT o.user_id FROM members m JOIN members o ON o.conversation_id = m.conversation_id "
           "WHERE m.user_id = ?1 AND o.user_id <> ?1");
    s.BindInt(1, user_id);
    while (s.Step()) audience.push_back(s.Int(0));
  }
  {
    Stmt s(*db_, "SELECT owner_id FROM contacts WHERE contact_id = ?1");
    s.BindInt(1, user_id);
    while (s.Step()) audience.push_back(s.Int(0));
  }
  std::vector<UserId> blocked;
  {
    Stmt s(*db_, "SELECT target_id FROM blocks WHERE owner_id = ?1");
    s.BindInt(1, user_id);
    while (s.Step()) blocked.push_back(s.Int(0));
  }
  std::sort(audience.begin(), audience.end());
  audience.erase(std::unique(audience.begin(), audience.end()), audience.end());
  std::string data = ProfileJson(p);
  for (UserId to : audience) {
    if (std::find(blocked.begin(), blocked.end(), to) != blocked.end()) continue;
    result.positions.push_back(AppendEvent(to, EventKind::kProfile, 0, 0, user_id, {}, now, &data));
  }
  return result;
}

SocialResult SqliteStore::Writer::AppendSocialEvent(UserId owner, EventKind kind, const ProfileRecord& subject,
                                                    bool flag, int64_t now) {
  SocialResult result;
  result.changed = true;
  result.profile = subject;
  std::string data = ProfileJson(subject);
  result.positions.push_back(
      AppendEvent(owner, kind, 0, 0, subject.user_id, Watermarks{flag ? 1 : 0, 0}, now, &data));
  return result;
}

Result<SocialResult> SqliteStore::Writer::AddContact(UserId owner, UserId contact, int64_t now) {
  if (owner == contact) return Status(ErrorCode::kSelfContact, "cannot add oneself as a contact");
  std::optional<ProfileRecord> subject = ProfileFor(contact, owner);
  if (!subject || !Username(owner)) return Status(ErrorCode::kUnknownUser, "unknown user");
  {
    Stmt s(*db_, "SELECT 1 FROM contacts WHERE owner_id = ?1 AND contact_id = ?2");
    s.BindInt(1, owner).BindInt(2, contact);
    if (s.Step()) return Status(ErrorCode::kAlreadyContact, "already a contact");
  }
  Stmt s(*db_, "INSERT INTO contacts(owner_id, contact_id, added_at) VALUES(?1, ?2, ?3)");
  s.BindInt(1, owner).BindInt(2, contact).BindInt(3, now);
  s.Run();
  return AppendSocialEvent(owner, EventKind::kContact, *subject, true, now);
}

Result<SocialResult> SqliteStore::Writer::RemoveContact(UserId owner, UserId contact, int64_t now) {
  {
    Stmt s(*db_, "SELECT 1 FROM contacts WHERE owner_id = ?1 AND contact_id = ?2");
    s.BindInt(1, owner).BindInt(2, contact);
    if (!s.Step()) return Status(ErrorCode::kNotContact, "not a contact");
  }
  std::optional<ProfileRecord> subject = ProfileFor(contact, owner);
  if (!subject) return Status(ErrorCode::kInternal, "contact vanished");
  Stmt s(*db_, "DELETE FROM contacts WHERE owner_id = ?1 AND contact_id = ?2");
  s.BindInt(1, owner).BindInt(2, contact);
  s.Run();
  return AppendSocialEvent(owner, EventKind::kContact, *subject, false, now);
}

Result<SocialResult> SqliteStore::Writer::Block(UserId owner, UserId target, int64_t now) {
  if (owner == target) return Status(ErrorCode::kSelfBlock, "cannot block oneself");
  std::optional<ProfileRecord> subject = ProfileFor(target, owner);
  if (!subject || !Username(owner)) return Status(ErrorCode::kUnknownUser, "unknown user");
  if (Blocks(owner, target)) return Status(ErrorCode::kAlreadyBlocked, "already blocked");
  // The target keeps the owner's profile as it is now.
  Stmt s(*db_,
         "INSERT INTO blocks(owner_id, target_id, created_at, shown_display_name, shown_about, shown_updated_at) "
         "SELECT id, ?2, ?3, display_name, about, profile_updated_at FROM users WHERE id = ?1");
  s.BindInt(1, owner).BindInt(2, target).BindInt(3, now);
  s.Run();
  blocks_[{owner, target}] = true;
  return AppendSocialEvent(owner, EventKind::kBlock, *subject, true, now);
}

Result<SocialResult> SqliteStore::Writer::Unblock(UserId owner, UserId target, int64_t now) {
  if (!Blocks(owner, target)) return Status(ErrorCode::kNotBlocked, "not blocked");
  std::optional<ProfileRecord> subject = ProfileFor(target, owner);
  if (!subject) return Status(ErrorCode::kInternal, "blocked user vanished");
  // The profile the target kept during the block, and the current one.
  std::optional<ProfileRecord> kept = ProfileFor(owner, target);
  std::optional<ProfileRecord> current = Profile(owner);
  Stmt s(*db_, "DELETE FROM blocks WHERE owner_id = ?1 AND target_id = ?2");
  s.BindInt(1, owner).BindInt(2, target);
  s.Run();
  blocks_[{owner, target}] = false;
  SocialResult result = AppendSocialEvent(owner, EventKind::kBlock, *subject, false, now);
  if (kept && current && (kept->display_name != current->display_name || kept->about != current->about) &&
      InProfileAudience(owner, target)) {
    // The owner changed their profile during the block: the target gets the
    // kProfile event it missed (store.h, "Profiles under a block").
    std::string data = ProfileJson(*current);
    result.target_profile = *current;
    result.target_position = AppendEvent(target, EventKind::kProfile, 0, 0, owner, {}, now, &data);
  }
  return result;
}

bool SqliteStore::Writer::InProfileAudience(UserId user, UserId viewer) {
  {
    Stmt s(*db_,
           "SELECT 1 FROM members m JOIN members o ON o.conversation_id = m.conversation_id "
           "WHERE m.user_id = ?1 AND o.user_id = ?2 LIMIT 1");
    s.BindInt(1, user).BindInt(2, viewer);
    if (s.Step()) return true;
  }
  Stmt s(*db_, "SELECT 1 FROM contacts WHERE owner_id = ?1 AND contact_id = ?2");
  s.BindInt(1, viewer).BindInt(2, user);
  return s.Step();
}

Result<SocialResult> SqliteStore::Writer::SetPresenceVisibility(UserId user_id, PresenceVisibility visibility,
                                                                int64_t now) {
  std::optional<ProfileRecord> profile = Profile(user_id);
  if (!profile) return Status(ErrorCode::kUnknownUser, "unknown user");
  SocialResult result;
  result.profile = *profile;
  Stmt s(*db_, "UPDATE users SET presence_visibility = ?2 WHERE id = ?1 AND presence_visibility <> ?2");
  s.BindInt(1, user_id).BindInt(2, static_cast<int64_t>(visibility));
  s.Run();
  if (db_->Changes() == 0) return result;
  result.changed = true;
  result.positions.push_back(AppendEvent(user_id, EventKind::kPrivacy, 0, 0, user_id,
                                         Watermarks{static_cast<int64_t>(visibility), 0}, now));
  return result;
}

Result<Empty> SqliteStore::Writer::SetLastSeen(UserId user_id, int64_t last_seen) {
  if (!Username(user_id)) return Status(ErrorCode::kUnknownUser, "unknown user");
  Stmt s(*db_, "UPDATE users SET last_seen = ?2 WHERE id = ?1 AND last_seen < ?2 AND disabled = 0");
  s.BindInt(1, user_id).BindInt(2, last_seen);
  s.Run();
  return Empty{};
}

Result<std::vector<DeviceId>> SqliteStore::Writer::ChangePassword(UserId user_id, const std::string& new_hash,
                                                                  DeviceId keep_device) {
  if (!Username(user_id)) return Status(ErrorCode::kUnknownUser, "unknown user");
  {
    Stmt s(*db_, "UPDATE users SET password_hash = ?2 WHERE id = ?1");
    s.BindInt(1, user_id).BindText(2, new_hash);
    s.Run();
  }
  std::vector<DeviceId> revoked;
  {
    Stmt s(*db_, "SELECT id FROM devices WHERE user_id = ?1 AND revoked = 0 AND id <> ?2 ORDER BY id");
    s.BindInt(1, user_id).BindInt(2, keep_device);
    while (s.Step()) revoked.push_back(s.Int(0));
  }
  for (DeviceId id : revoked) Revoke(id);
  return revoked;
}

Result<std::vector<BulkUserResult>> SqliteStore::Writer::BulkCreateUsers(const std::vector<NewBulkUser>& users,
                                                                         int64_t now) {
  // Check everything first, so a failure writes nothing.
  {
    std::unordered_set<std::string_view> seen;
    seen.reserve(users.size());
    std::vector<std::string_view> tokens;
    for (const NewBulkUser& u : users) {
      // The first name in input order that is taken, by the directory or by
      // an earlier entry of the list.
      Stmt s(*db_, "SELECT 1 FROM users WHERE username = ?1");
      s.BindText(1, u.username);
      if (s.Step() || !seen.insert(u.username).second) {
        return Status(ErrorCode::kUsernameTaken, fmt::format("username {} is taken", u.username));
      }
      if (!u.token_hash.empty()) tokens.push_back(u.token_hash);
    }
    std::sort(tokens.begin(), tokens.end());
    if (std::adjacent_find(tokens.begin(), tokens.end()) != tokens.end()) {
      return Status(ErrorCode::kInternal, "device token hash repeated in the list");
    }
    for (std::string_view token : tokens) {
      Stmt s(*db_, "SELECT 1 FROM devices WHERE token_hash = ?1");
      s.BindBlob(1, token);
      if (s.Step()) return Status(ErrorCode::kInternal, "device token hash already in use");
    }
  }
  std::vector<BulkUserResult> results;
  results.reserve(users.size());
  for (const NewBulkUser& u : users) {
    BulkUserResult r;
    {
      Stmt s(*db_,
             "INSERT INTO users(username, password_hash, created_at, display_name, profile_updated_at) "
             "VALUES(?1, ?2, ?3, ?4, ?5)");
      s.BindText(1, u.username).BindText(2, u.password_hash).BindInt(3, now).BindText(4, u.display_name).BindInt(
          5, u.display_name.empty() ? 0 : now);
      s.Run();
      r.user_id = db_->last_insert_rowid();
    }
    if (!u.display_name.empty()) IndexName(r.user_id, u.username, u.display_name, /*add=*/true);
    if (!u.token_hash.empty()) {
      Stmt s(*db_,
             "INSERT INTO devices(user_id, name, platform, token_hash, created_at, last_seen_at, cursor, revoked) "
             "VALUES(?1, ?2, 'bulk', ?3, ?4, ?4, 0, 0)");
      s.BindInt(1, r.user_id).BindText(2, u.device_name).BindBlob(3, u.token_hash).BindInt(4, now);
      s.Run();
      r.device_id = db_->last_insert_rowid();
    }
    results.push_back(r);
  }
  return results;
}

Result<int64_t> SqliteStore::Writer::SetMaxPageCount(int64_t pages) {
  // PRAGMA arguments cannot be bound; `pages` is an integer, so formatting is safe.
  std::string sql = fmt::format("PRAGMA max_page_count = {}", pages);
  if (Status s = db_->Exec(sql.c_str()); !s.ok()) return s;
  Stmt s(*db_, "PRAGMA max_page_count");
  return s.Step() ? s.Int(0) : 0;
}

Result<DisableResult> SqliteStore::Writer::SetUserDisabled(UserId user_id, bool disabled, bool revoke_devices) {
  DisableResult result;
  {
    Stmt s(*db_, "SELECT disabled FROM users WHERE id = ?1");
    s.BindInt(1, user_id);
    if (!s.Step()) return Status(ErrorCode::kUnknownUser, "unknown user");
    result.changed = (s.Int(0) != 0) != disabled;
  }
  if (result.changed) {
    Stmt s(*db_, "UPDATE users SET disabled = ?2 WHERE id = ?1");
    s.BindInt(1, user_id).BindInt(2, disabled ? 1 : 0);
    s.Run();
  }
  if (revoke_devices) result.revoked = RevokeLiveDevices(user_id);
  return result;
}

Result<EraseResult> SqliteStore::Writer::EraseAccount(UserId user_id, int64_t now) {
  EraseResult result;
  {
    Stmt s(*db_, "SELECT username FROM users WHERE id = ?1");
    s.BindInt(1, user_id);
    if (!s.Step()) return Status(ErrorCode::kUnknownUser, "unknown user");
    result.username = s.Text(0);
  }
  result.erased_username = kErasedUsernamePrefix + std::to_string(user_id);
  // Whose streams may hold a snapshot of the profile: the profile's
  // audience (InProfileAudience) and both sides of its blocks.
  std::vector<UserId> peers;
  {
    Stmt s(*db_,
           "SELECT o.user_id FROM members m JOIN members o ON o.conversation_id = m.conversation_id "
           "WHERE m.user_id = ?1 AND o.user_id <> ?1 UNION SELECT owner_id FROM contacts WHERE contact_id = ?1 "
           "UNION SELECT owner_id FROM blocks WHERE target_id = ?1 UNION SELECT target_id FROM blocks WHERE owner_id = ?1");
    s.BindInt(1, user_id);
    while (s.Step()) peers.push_back(s.Int(0));
  }
  result.revoked = RevokeLiveDevices(user_id);
  auto run = [&](const char* sql) {
    Stmt s(*db_, sql);
    s.BindInt(1, user_id);
    s.Run();
    return static_cast<int64_t>(sqlite3_changes(db_->handle()));
  };
  run("DELETE FROM receipt_log WHERE device_id IN (SELECT id FROM devices WHERE user_id = ?1)");
  result.devices = run("UPDATE devices SET name = '', platform = '' WHERE user_id = ?1");
  result.contacts = run("DELETE FROM contacts WHERE owner_id = ?1 OR contact_id = ?1");
  result.blocks = run("DELETE FROM blocks WHERE owner_id = ?1 OR target_id = ?1");
  result.drafts = run("DELETE FROM drafts WHERE user_id = ?1");
  run("DELETE FROM push_mutes WHERE user_id = ?1");
  run("DELETE FROM name_prefixes WHERE user_id = ?1");
  result.stream_events = run("DELETE FROM user_events WHERE user_id = ?1");
  {
    Stmt s(*db_,
           "UPDATE users SET username = ?2, password_hash = '', display_name = '', about = '', profile_updated_at = ?3, "
           "last_seen = 0, presence_visibility = ?4, disabled = 1 WHERE id = ?1");
    s.BindInt(1, user_id)
        .BindText(2, result.erased_username)
        .BindInt(3, now)
        .BindInt(4, static_cast<int>(PresenceVisibility::kNobody));
    s.Run();
  }
  const std::string blank = ProfileJson(ProfileRecord{user_id, result.erased_username, "", "", now});
  for (UserId peer : peers) {
    Stmt s(*db_,
           "UPDATE user_events SET data = ?3 WHERE user_id = ?1 AND kind IN (?4, ?5, ?6) AND receipt_user_id = ?2");
    s.BindInt(1, peer)
        .BindInt(2, user_id)
        .BindText(3, blank)
        .BindInt(4, static_cast<int>(EventKind::kProfile))
        .BindInt(5, static_cast<int>(EventKind::kContact))
        .BindInt(6, static_cast<int>(EventKind::kBlock));
    s.Run();
  }
  // Cached conversations hold member usernames: write what is pending and
  // drop them, so the next read has the new name.
  WriteDirty();
  DropCaches();
  return result;
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
    return db_->TakeError();
  }

  Result<UserRecord> UserByName(const std::string& username);
  Result<UserRecord> UserById(UserId id);
  Result<MessageTimeline> Timeline(ConversationId id, Seq seq);
  Result<StoreSummary> Summary();
  Result<SchemaStatus> Schema();
  Result<DeviceRecord> DeviceByToken(const std::string& token_hash);
  Result<std::vector<DeviceRecord>> Devices(UserId user_id);
  Result<ConversationRecord> Conversation(ConversationId id, StepCounter* counter = nullptr);
  Result<std::vector<MessageRecord>> History(ConversationId id, UserId viewer, Seq before, int limit);
  Result<StreamPage> ReadStream(UserId user_id, UserSeq after, int limit, StepCounter* counter);
  UserSeq Head(UserId user_id, StepCounter* counter = nullptr);
  Result<ExportPage> Export(ExportTable table, const std::vector<int64_t>& after, int limit);
  Result<Snapshot> GetSnapshot(UserId user_id, int latest_per_conversation);
  Result<std::vector<ConversationState>> ConversationStates(UserId user_id, const std::vector<ConversationId>& ids);
  Result<ConversationPage> ListConversations(UserId user_id, int64_t before_activity, ConversationId before_id,
                                            int limit, int latest_per_conversation);
  Result<std::vector<ProfileRecord>> Profiles(UserId viewer, const std::vector<UserId>& ids);
  Result<std::vector<ContactRecord>> Contacts(UserId owner);
  Result<std::vector<ProfileRecord>> Blocked(UserId owner);
  Result<SearchPage> SearchUsers(UserId searcher, const std::string& query, const std::string& after, int limit,
                                 StepCounter* counter);
  Result<std::vector<PresenceRecord>> Presence(UserId viewer, const std::vector<UserId>& ids);
  Result<std::vector<PushHealth>> PushHealthOf(UserId user_id);
  Result<std::pair<bool, std::vector<ConversationId>>> PushSettings(UserId user_id);
  Result<PushQueueStats> PushStats(int64_t now);
  Result<MessageSearchPage> SearchMessages(const MessageSearchQuery& q);

 private:
  // The newest `limit` messages visible to `viewer` with seq < before,
  // ascending.
  std::vector<MessageRecord> Visible(ConversationId id, UserId viewer, Seq before, int limit);
  // One conversation as `user_id` sees it; `activity`: their last visible activity.
  std::optional<ConversationSummary> Summary(UserId user_id, ConversationId id, int64_t activity, int latest);

  std::unique_ptr<Db> db_;
};

Result<UserRecord> SqliteStore::Reader::UserByName(const std::string& username) {
  Stmt s(*db_,
         "SELECT id, username, password_hash, created_at, display_name, about, presence_visibility, last_seen, "
         "disabled FROM users WHERE username = ?1");
  s.BindText(1, username);
  if (!s.Step()) return Status(ErrorCode::kUnknownUser, "unknown user");
  return UserAt(s);
}

Result<UserRecord> SqliteStore::Reader::UserById(UserId id) {
  Stmt s(*db_, "SELECT id, username, password_hash, created_at, display_name, about, presence_visibility, last_seen, "
         "disabled FROM users WHERE id = ?1");
  s.BindInt(1, id);
  if (!s.Step()) return Status(ErrorCode::kUnknownUser, "unknown user");
  return UserAt(s);
}

Result<MessageTimeline> SqliteStore::Reader::Timeline(ConversationId id, Seq seq) {
  MessageTimeline t;
  {
    Stmt s(*db_,
           "SELECT " PARLEY_MESSAGE_COLUMNS ", m.accepted_at, m.stored_at FROM messages m "
           "WHERE m.conversation_id = ?1 AND m.seq = ?2");
    s.BindInt(1, id).BindInt(2, seq);
    if (!s.Step()) {
      Stmt c(*db_, "SELECT 1 FROM conversations WHERE id = ?1");
      c.BindInt(1, id);
      if (!c.Step()) return Status(ErrorCode::kUnknownConversation, "unknown conversation");
      return Status(ErrorCode::kUnknownMessage, "no message with this seq in the conversation");
    }
    t.message = MessageAt(s, 0);
    t.accepted_at = s.Int(kMessageColumnCount);
    t.stored_at = s.Int(kMessageColumnCount + 1);
  }
  {
    Stmt s(*db_,
           "SELECT m.user_id, u.username, EXISTS(SELECT 1 FROM withheld w WHERE w.conversation_id = m.conversation_id "
           "AND w.user_id = m.user_id AND w.seq = ?2 AND w.hidden_at = 0) FROM members m JOIN users u ON u.id = m.user_id "
           "WHERE m.conversation_id = ?1 ORDER BY m.user_id");
    s.BindInt(1, id).BindInt(2, seq);
    while (s.Step()) t.members.push_back(MemberTimeline{s.Int(0), s.Text(1), s.Int(2) != 0, {}});
  }
  for (MemberTimeline& member : t.members) {
    Stmt s(*db_, "SELECT id, name, platform FROM devices WHERE user_id = ?1 AND revoked = 0 ORDER BY id");
    s.BindInt(1, member.user_id);
    while (s.Step()) {
      DeviceTimeline d;
      d.device_id = s.Int(0);
      d.name = s.Text(1);
      d.platform = s.Text(2);
      member.devices.push_back(std::move(d));
    }
    for (DeviceTimeline& d : member.devices) {
      if (d.device_id == t.message.sender_device_id) {
        d.sending_device = true;
        d.delivered_at = d.read_at = t.stored_at;
        continue;
      }
      if (member.withheld) continue;
      // A device's log rows rise in both watermarks over time, so the first
      // row in key order that covers seq is the earliest. Every row's
      // delivered is at least its read (UpdateReceipt raises delivered to
      // read), so a row whose read covers seq has delivered >= seq too: the
      // read probe seeks the primary key there and steps over the rows
      // delivered but not yet read.
      Stmt del(*db_,
               "SELECT at FROM receipt_log WHERE conversation_id = ?1 AND device_id = ?2 AND delivered >= ?3 "
               "ORDER BY delivered LIMIT 1");
      del.BindInt(1, id).BindInt(2, d.device_id).BindInt(3, seq);
      if (del.Step()) d.delivered_at = del.Int(0);
      Stmt rd(*db_,
              "SELECT at FROM receipt_log WHERE conversation_id = ?1 AND device_id = ?2 AND delivered >= ?3 "
              "AND read >= ?3 ORDER BY delivered, read LIMIT 1");
      rd.BindInt(1, id).BindInt(2, d.device_id).BindInt(3, seq);
      if (rd.Step()) d.read_at = rd.Int(0);
    }
  }
  return t;
}

Result<StoreSummary> SqliteStore::Reader::Summary() {
  StoreSummary out;
  out.backend = "sqlite";
  {
    Stmt s(*db_, "SELECT count(*), COALESCE(sum(disabled), 0) FROM users");
    if (s.Step()) {
      out.users = s.Int(0);
      out.disabled_users = s.Int(1);
    }
  }
  {
    Stmt s(*db_, "SELECT count(*) FROM devices WHERE revoked = 0");
    if (s.Step()) out.live_devices = s.Int(0);
  }
  {
    Stmt s(*db_, "SELECT count(*), COALESCE(sum(" PARLEY_CONVERSATION_LAST_SEQ("c") "), 0) FROM conversations c");
    if (s.Step()) {
      out.conversations = s.Int(0);
      out.messages = s.Int(1);
    }
  }
  {
    Stmt s(*db_, "SELECT COALESCE(sum(" PARLEY_STREAM_HEAD("h") " - h.stream_floor + 1), 0) FROM user_heads h");
    if (s.Step()) out.stream_events = s.Int(0);
  }
  {
    Stmt s(*db_, "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()");
    if (s.Step()) out.bytes = s.Int(0);
  }
  return out;
}

Result<SchemaStatus> SqliteStore::Reader::Schema() {
  SchemaStatus out;
  out.backend = "sqlite";
  Stmt s(*db_, "PRAGMA user_version");
  if (s.Step()) out.current = static_cast<int>(s.Int(0));
  out.latest = SqliteStore::kSchemaVersion;
  for (const Migration& m : kMigrations)
    if (m.version > out.current) out.pending.push_back(m.version);
  return out;
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
    Stmt s(*db_,
           "SELECT " PARLEY_CONVERSATION_LAST_SEQ("c") ", c.created_at, " PARLEY_CONVERSATION_ACTIVITY(
               "c") ", c.disappearing_s FROM conversations c WHERE c.id = ?1",
           counter);
    s.BindInt(1, id);
    if (!s.Step()) return Status(ErrorCode::kUnknownConversation, "unknown conversation");
    c.last_seq = s.Int(0);
    c.created_at = s.Int(1);
    c.last_activity_at = s.Int(2);
    c.disappearing_s = s.Int(3);
  }
  Stmt s(*db_,
         "SELECT m.user_id, u.username FROM members m JOIN users u ON u.id = m.user_id "
         "WHERE m.conversation_id = ?1 ORDER BY m.user_id",
         counter);
  s.BindInt(1, id);
  while (s.Step()) c.members.push_back(MemberRecord{s.Int(0), s.Text(1)});
  return c;
}

std::vector<MessageRecord> SqliteStore::Reader::Visible(ConversationId id, UserId viewer, Seq before, int limit) {
  std::vector<MessageRecord> out;
  if (limit <= 0) return out;
  // Backwards on the messages' primary key; each candidate costs one probe
  // of withheld's primary key, so a page reads `limit` visible messages plus
  // the withheld ones between them.
  Stmt s(*db_,
         "SELECT " PARLEY_MESSAGE_COLUMNS " "
         "FROM messages m WHERE m.conversation_id = ?1 AND m.seq < ?2 AND NOT EXISTS (SELECT 1 FROM withheld w "
         "WHERE w.conversation_id = ?1 AND w.user_id = ?3 AND w.seq = m.seq) ORDER BY m.seq DESC LIMIT ?4");
  s.BindInt(1, id).BindInt(2, before > 0 ? before : std::numeric_limits<Seq>::max()).BindInt(3, viewer).BindInt(
      4, limit);
  while (s.Step()) out.push_back(MessageAt(s, 0));
  std::reverse(out.begin(), out.end());
  return out;
}

Result<std::vector<MessageRecord>> SqliteStore::Reader::History(ConversationId id, UserId viewer, Seq before,
                                                               int limit) {
  {
    Stmt s(*db_, "SELECT 1 FROM conversations WHERE id = ?1");
    s.BindInt(1, id);
    if (!s.Step()) return Status(ErrorCode::kUnknownConversation, "unknown conversation");
  }
  std::vector<MessageRecord> page = Visible(id, viewer, before, limit);
  if (page.empty()) return page;
  // "Stays sent": within the page's range, the seqs withheld from another
  // member that their delivered watermark covers (one range scan per member).
  std::vector<Seq> stay;
  {
    Stmt s(*db_,
           "SELECT m.user_id, coalesce(r.delivered, 0) FROM members m LEFT JOIN user_receipts r "
           "ON r.conversation_id = m.conversation_id AND r.user_id = m.user_id "
           "WHERE m.conversation_id = ?1 AND m.user_id <> ?2");
    s.BindInt(1, id).BindInt(2, viewer);
    while (s.Step()) {
      std::vector<Seq> seqs =
          WithheldIn(*db_, id, s.Int(0), page.front().seq - 1, std::min(page.back().seq, s.Int(1)));
      stay.insert(stay.end(), seqs.begin(), seqs.end());
    }
  }
  for (MessageRecord& m : page) m.stays_sent = std::find(stay.begin(), stay.end(), m.seq) != stay.end();
  return page;
}

Result<MessageSearchPage> SqliteStore::Reader::SearchMessages(const MessageSearchQuery& q) {
  if (q.conversation_id != 0) {
    {
      Stmt s(*db_, "SELECT 1 FROM conversations WHERE id = ?1");
      s.BindInt(1, q.conversation_id);
      if (!s.Step()) return Status(ErrorCode::kUnknownConversation, "unknown conversation");
    }
    Stmt s(*db_, "SELECT 1 FROM members WHERE conversation_id = ?1 AND user_id = ?2");
    s.BindInt(1, q.conversation_id).BindInt(2, q.searcher);
    if (!s.Step()) return Status(ErrorCode::kNotMember, "not a member of this conversation");
  }
  MessageSearchPage page;
  if (q.words.empty() || q.limit <= 0) return page;
  // Backwards on the FTS5 rowid (the doc id) from the cursor; every
  // candidate is checked against the store as it is now (see "Message
  // search"): a member, not withheld from or hidden by the searcher, not
  // deleted, and still the indexed version (an edit not yet re-indexed
  // matches nothing).
  Stmt s(*db_,
         "SELECT rowid, conversation_id, seq, version FROM message_search "
         "WHERE message_search MATCH ?1 AND rowid < ?2 ORDER BY rowid DESC");
  s.BindText(1, FtsQuery(q.words)).BindInt(2, q.before > 0 ? q.before : std::numeric_limits<int64_t>::max());
  int candidates = 0;
  int64_t last_doc = 0;
  while (s.Step()) {
    if (static_cast<int>(page.messages.size()) == q.limit || candidates == kMaxSearchCandidates) {
      page.next = last_doc;  // further candidates exist
      break;
    }
    ++candidates;
    last_doc = s.Int(0);
    const ConversationId conversation = s.Int(1);
    if (q.conversation_id != 0 && conversation != q.conversation_id) continue;
    Stmt m(*db_,
           "SELECT " PARLEY_MESSAGE_COLUMNS " FROM messages m "
           "JOIN members mb ON mb.conversation_id = m.conversation_id AND mb.user_id = ?3 "
           "WHERE m.conversation_id = ?1 AND m.seq = ?2 AND m.deleted_at = 0 AND m.version = ?4 "
           "AND NOT EXISTS (SELECT 1 FROM withheld w WHERE w.conversation_id = ?1 AND w.user_id = ?3 "
           "AND w.seq = ?2)");
    m.BindInt(1, conversation).BindInt(2, s.Int(2)).BindInt(3, q.searcher).BindInt(4, s.Int(3));
    if (m.Step()) {
      page.messages.push_back(MessageAt(m, 0));
      page.doc_ids.push_back(last_doc);
    }
  }
  // As History shows them: "stays sent" when withheld from another member
  // whose delivered watermark passed it.
  for (MessageRecord& m : page.messages) {
    Stmt w(*db_,
           "SELECT 1 FROM members mb JOIN withheld w ON w.conversation_id = mb.conversation_id "
           "AND w.user_id = mb.user_id AND w.seq = ?2 AND w.hidden_at = 0 "
           "JOIN user_receipts r ON r.conversation_id = mb.conversation_id AND r.user_id = mb.user_id "
           "WHERE mb.conversation_id = ?1 AND mb.user_id <> ?3 AND r.delivered >= ?2");
    w.BindInt(1, m.conversation_id).BindInt(2, m.seq).BindInt(3, q.searcher);
    m.stays_sent = w.Step();
  }
  return page;
}

UserSeq SqliteStore::Reader::Head(UserId user_id, StepCounter* counter) {
  Stmt s(*db_, "SELECT " PARLEY_STREAM_HEAD("h") " FROM user_heads h WHERE h.user_id = ?1", counter);
  s.BindInt(1, user_id);
  return s.Step() ? s.Int(0) : 0;
}

Result<ExportPage> SqliteStore::Reader::Export(ExportTable table, const std::vector<int64_t>& after, int limit) {
  // One literal per table (Db caches statements by their text); the key
  // comparison is a row value, which SQLite answers from the primary key.
  static constexpr const char* kSql[kExportTableCount] = {
      "SELECT id, user_id, revoked FROM devices WHERE id > ?1 ORDER BY id LIMIT ?2",
      "SELECT conversation_id, user_id FROM members WHERE (conversation_id, user_id) > (?1, ?2) "
      "ORDER BY conversation_id, user_id LIMIT ?3",
      "SELECT conversation_id, seq, sender_id, sender_device_id, expires_at, client_id FROM messages "
      "WHERE (conversation_id, seq) > (?1, ?2) ORDER BY conversation_id, seq LIMIT ?3",
      "SELECT conversation_id, user_id, seq FROM withheld WHERE (conversation_id, user_id, seq) > (?1, ?2, ?3) "
      "AND hidden_at = 0 ORDER BY conversation_id, user_id, seq LIMIT ?4",
      "SELECT user_id, user_seq, kind, conversation_id, seq, receipt_user_id, delivered, read FROM user_events "
      "WHERE (user_id, user_seq) > (?1, ?2) ORDER BY user_id, user_seq LIMIT ?3",
      "SELECT h.user_id, " PARLEY_STREAM_HEAD("h") ", h.stream_floor FROM user_heads h WHERE h.user_id > ?1 "
      "ORDER BY h.user_id LIMIT ?2",
      "SELECT conversation_id, user_id, delivered, read FROM user_receipts WHERE (conversation_id, user_id) > (?1, ?2) "
      "ORDER BY conversation_id, user_id LIMIT ?3",
      "SELECT owner_id, target_id FROM blocks WHERE (owner_id, target_id) > (?1, ?2) ORDER BY owner_id, target_id "
      "LIMIT ?3",
  };
  const int keys = ExportKeyColumns(table);
  const auto columns = ExportColumns(table);
  const bool has_text = table == ExportTable::kMessages;
  const int ints = static_cast<int>(columns.size()) - (has_text ? 1 : 0);
  Stmt s(*db_, kSql[static_cast<int>(table)]);
  for (int i = 0; i < keys; ++i) s.BindInt(i + 1, after.empty() ? INT64_MIN : after[static_cast<size_t>(i)]);
  s.BindInt(keys + 1, static_cast<int64_t>(limit) + 1);
  ExportPage page;
  while (s.Step()) {
    if (static_cast<int>(page.rows.size()) == limit) {
      page.has_more = true;
      break;
    }
    ExportRow row;
    for (int c = 0; c < ints; ++c) row.values.push_back(s.Int(c));
    if (has_text) row.text = s.Text(ints);
    page.rows.push_back(std::move(row));
  }
  return page;
}

Result<StreamPage> SqliteStore::Reader::ReadStream(UserId user_id, UserSeq after, int limit, StepCounter* counter) {
  StreamPage page;
  {
    // Head and floor from one row, in the page's snapshot: a trim that
    // commits later cannot open a gap in this page.
    Stmt s(*db_, "SELECT " PARLEY_STREAM_HEAD("h") ", h.stream_floor FROM user_heads h WHERE h.user_id = ?1",
           counter);
    s.BindInt(1, user_id);
    if (s.Step()) {
      page.head = s.Int(0);
      page.floor = s.Int(1);
    }
  }
  if (after + 1 < page.floor) {
    return Status(ErrorCode::kCursorTooOld,
                  fmt::format("the stream keeps user seqs from {} on; take a snapshot", page.floor));
  }
  if (limit <= 0) {
    page.has_more = page.head > after;
    return page;
  }
  {
    // A range scan of the user's stream on its primary key, each message
    // event joined to its message by primary key: one probe per event.
    Stmt s(*db_,
           "SELECT e.user_seq, e.kind, e.conversation_id, e.seq, e.receipt_user_id, e.delivered, e.read, "
           "e.created_at, " PARLEY_EDIT_BODY("x") ", x.created_at, m.conversation_id IS NOT NULL, "
           "" PARLEY_MESSAGE_COLUMNS ", e.data, "
           "CASE WHEN e.kind >= 4 THEN json_extract(e.data, '$.n') END, "
           "CASE WHEN e.kind >= 4 THEN json_extract(e.data, '$.d') END, "
           "CASE WHEN e.kind >= 4 THEN json_extract(e.data, '$.a') END, "
           "CASE WHEN e.kind >= 4 THEN json_extract(e.data, '$.t') END, "
           "d.text, d.updated_at "
           "FROM user_events e LEFT JOIN messages m "
           "ON e.kind IN (1, 10, 11) AND m.conversation_id = e.conversation_id AND m.seq = e.seq "
           "LEFT JOIN message_edits x ON e.kind = 10 AND x.conversation_id = e.conversation_id AND x.seq = e.seq "
           "AND x.version = e.delivered "
           "LEFT JOIN drafts d ON e.kind = 13 AND d.user_id = e.user_id AND d.conversation_id = e.conversation_id "
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
      constexpr int kM = 11;                       // first message column
      constexpr int kData = kM + kMessageColumnCount;  // e.data, then the profile's four
      const bool has_message = s.Int(10) != 0;
      if (e.kind == EventKind::kMessage && has_message) e.message = MessageAt(s, kM);
      if ((e.kind == EventKind::kEdit || e.kind == EventKind::kDelete) && has_message) {
        e.message = ChangeEventMessage(e.kind, MessageAt(s, kM), s.Int(5), e.created_at, s.Text(8));
      }
      if (e.kind == EventKind::kDeleteForMe) e.message = HideEventMessage(e.conversation_id, s.Int(3));
      if (e.kind == EventKind::kReceipt) {
        e.receipt_user_id = s.Int(4);
        e.receipt = Watermarks{s.Int(5), s.Int(6)};
      }
      if ((e.kind == EventKind::kMessage || e.kind == EventKind::kReceipt) && !s.IsNull(kData)) {
        e.withheld = ParseSeqList(s.Text(kData));
      }
      if (e.kind == EventKind::kProfile || e.kind == EventKind::kContact || e.kind == EventKind::kBlock) {
        e.profile = ProfileRecord{s.Int(4), s.Text(kData + 1), s.Text(kData + 2), s.Text(kData + 3), s.Int(kData + 4)};
        e.flag = s.Int(5) != 0;
      }
      if (e.kind == EventKind::kPrivacy) e.presence_visibility = static_cast<PresenceVisibility>(s.Int(5));
      if (e.kind == EventKind::kMute || e.kind == EventKind::kPushPreviews) e.flag = s.Int(5) != 0;
      if (e.kind == EventKind::kDisappearing) {
        e.receipt_user_id = s.Int(4);
        e.disappearing_s = s.Int(5);
      }
      if (e.kind == EventKind::kDraft) {
        // No row: cleared since (or by this event); its time is the event's.
        const int kDraftText = kData + 5;
        e.draft = s.IsNull(kDraftText) ? DraftRecord{"", e.created_at}
                                       : DraftRecord{s.Text(kDraftText), s.Int(kDraftText + 1)};
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

std::optional<ConversationSummary> SqliteStore::Reader::Summary(UserId user_id, ConversationId id,
                                                                int64_t activity, int latest) {
  Result<ConversationRecord> c = Conversation(id);
  if (!c.has_value()) return std::nullopt;
  ConversationSummary summary;
  summary.conversation = std::move(c).value();
  // The member's activity as stored orders the list; the exact one is the
  // later of it and their newest visible message ("Member activity").
  const NewestVisible newest = NewestVisibleTo(*db_, id, user_id);
  summary.conversation.last_activity_at = std::max(activity, newest.created_at);
  summary.conversation.last_seq = newest.seq;
  summary.latest = Visible(id, user_id, 0, latest);
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
  // What stays "sent" forever: as the members' receipt events listed it.
  for (const auto& [member, wm] : summary.watermarks) {
    summary.withheld.push_back(member == user_id ? std::vector<Seq>{} : WithheldIn(*db_, id, member, 0, wm.delivered));
  }
  {
    // A range scan over the unread tail only, skipping what is withheld.
    Stmt s(*db_,
           "SELECT count(*) FROM messages m WHERE m.conversation_id = ?1 AND m.seq > ?2 AND m.sender_id <> ?3 "
           "AND NOT EXISTS (SELECT 1 FROM withheld w WHERE w.conversation_id = ?1 AND w.user_id = ?3 "
           "AND w.seq = m.seq)");
    s.BindInt(1, id).BindInt(2, own_read).BindInt(3, user_id);
    if (s.Step()) summary.unread = s.Int(0);
  }
  {
    Stmt s(*db_, "SELECT text, updated_at FROM drafts WHERE user_id = ?1 AND conversation_id = ?2");
    s.BindInt(1, user_id).BindInt(2, id);
    if (s.Step()) summary.draft = DraftRecord{s.Text(0), s.Int(1)};
  }
  return summary;
}

// Summary's last_seq and unread, nothing else: a selective device's summary.
Result<std::vector<ConversationState>> SqliteStore::Reader::ConversationStates(UserId user_id,
                                                                                const std::vector<ConversationId>& ids) {
  std::vector<ConversationState> states;
  for (ConversationId id : ids) {
    Seq own_read = 0;
    {
      Stmt s(*db_,
             "SELECT coalesce(r.read, 0) FROM members m LEFT JOIN user_receipts r "
             "ON r.conversation_id = m.conversation_id AND r.user_id = m.user_id "
             "WHERE m.conversation_id = ?1 AND m.user_id = ?2");
      s.BindInt(1, id).BindInt(2, user_id);
      if (!s.Step()) continue;  // not a member (or no such conversation)
      own_read = s.Int(0);
    }
    ConversationState state;
    state.conversation_id = id;
    state.last_seq = LastSeqVisibleTo(*db_, id, user_id);
    {
      // Summary's count: the unread tail only, skipping what is withheld or hidden.
      Stmt s(*db_,
             "SELECT count(*) FROM messages m WHERE m.conversation_id = ?1 AND m.seq > ?2 AND m.sender_id <> ?3 "
             "AND NOT EXISTS (SELECT 1 FROM withheld w WHERE w.conversation_id = ?1 AND w.user_id = ?3 "
             "AND w.seq = m.seq)");
      s.BindInt(1, id).BindInt(2, own_read).BindInt(3, user_id);
      if (s.Step()) state.unread = s.Int(0);
    }
    states.push_back(state);
  }
  return states;
}

Result<Snapshot> SqliteStore::Reader::GetSnapshot(UserId user_id, int latest_per_conversation) {
  Snapshot snap;
  snap.head = Head(user_id);
  std::vector<std::pair<ConversationId, int64_t>> ids;
  {
    // The user's own activity order (members_by_activity), the same as
    // ListConversations.
    Stmt s(*db_,
           "SELECT conversation_id, last_activity_at FROM members WHERE user_id = ?1 "
           "ORDER BY last_activity_at DESC, conversation_id DESC");
    s.BindInt(1, user_id);
    while (s.Step()) ids.emplace_back(s.Int(0), s.Int(1));
  }
  for (const auto& [id, activity] : ids) {
    std::optional<ConversationSummary> summary = Summary(user_id, id, activity, latest_per_conversation);
    if (summary) snap.conversations.push_back(std::move(*summary));
  }
  return snap;
}

Result<ConversationPage> SqliteStore::Reader::ListConversations(UserId user_id, int64_t before_activity,
                                                                ConversationId before_id, int limit,
                                                                int latest_per_conversation) {
  ConversationPage page;
  if (limit <= 0) return page;
  if (before_activity == 0) {
    before_activity = std::numeric_limits<int64_t>::max();
    before_id = std::numeric_limits<ConversationId>::max();
  }
  std::vector<std::pair<ConversationId, int64_t>> ids;
  {
    // A backwards range scan of members_by_activity from the cursor.
    Stmt s(*db_,
           "SELECT conversation_id, last_activity_at FROM members WHERE user_id = ?1 AND last_activity_at <= ?2 "
           "AND (last_activity_at < ?2 OR conversation_id < ?3) "
           "ORDER BY last_activity_at DESC, conversation_id DESC LIMIT ?4");
    s.BindInt(1, user_id).BindInt(2, before_activity).BindInt(3, before_id).BindInt(4,
                                                                                  static_cast<int64_t>(limit) + 1);
    while (s.Step()) ids.emplace_back(s.Int(0), s.Int(1));
  }
  if (ids.size() > static_cast<size_t>(limit)) {
    page.has_more = true;
    ids.pop_back();
  }
  for (const auto& [id, activity] : ids) {
    std::optional<ConversationSummary> summary = Summary(user_id, id, activity, latest_per_conversation);
    if (summary) page.conversations.push_back(std::move(*summary));
  }
  if (page.has_more && !ids.empty()) {
    page.next_activity = ids.back().second;
    page.next_id = ids.back().first;
  }
  return page;
}

Result<std::vector<ProfileRecord>> SqliteStore::Reader::Profiles(UserId viewer, const std::vector<UserId>& ids) {
  std::vector<ProfileRecord> out;
  for (UserId id : ids) {
    // viewer 0 matches no blocks row (ids start at 1): current profiles.
    Stmt s(*db_,
           "SELECT u.id, u.username, COALESCE(b.shown_display_name, u.display_name), "
           "COALESCE(b.shown_about, u.about), COALESCE(b.shown_updated_at, u.profile_updated_at) FROM users u "
           "LEFT JOIN blocks b ON b.owner_id = u.id AND b.target_id = ?2 WHERE u.id = ?1");
    s.BindInt(1, id).BindInt(2, viewer);
    if (s.Step()) out.push_back(ProfileAt(s, 0));
  }
  return out;
}

Result<std::vector<PresenceRecord>> SqliteStore::Reader::Presence(UserId viewer, const std::vector<UserId>& ids) {
  std::vector<PresenceRecord> out;
  for (UserId id : ids) {
    Stmt s(*db_,
           "SELECT u.presence_visibility, u.last_seen, "
           "EXISTS(SELECT 1 FROM contacts c WHERE c.owner_id = u.id AND c.contact_id = ?2), "
           "EXISTS(SELECT 1 FROM blocks b WHERE (b.owner_id = u.id AND b.target_id = ?2) "
           "OR (b.owner_id = ?2 AND b.target_id = u.id)) FROM users u WHERE u.id = ?1");
    s.BindInt(1, id).BindInt(2, viewer);
    if (!s.Step()) continue;
    auto visibility = static_cast<PresenceVisibility>(s.Int(0));
    bool allowed = visibility == PresenceVisibility::kEveryone ||
                   (visibility == PresenceVisibility::kContacts && s.Int(2) != 0);
    bool visible = id == viewer || (allowed && s.Int(3) == 0);
    out.push_back(PresenceRecord{id, visible, visible ? s.Int(1) : 0});
  }
  return out;
}

Result<std::vector<ContactRecord>> SqliteStore::Reader::Contacts(UserId owner) {
  std::vector<ContactRecord> out;
  Stmt s(*db_,
         "SELECT u.id, u.username, COALESCE(b.shown_display_name, u.display_name), "
         "COALESCE(b.shown_about, u.about), COALESCE(b.shown_updated_at, u.profile_updated_at), c.added_at "
         "FROM contacts c JOIN users u ON u.id = c.contact_id "
         "LEFT JOIN blocks b ON b.owner_id = c.contact_id AND b.target_id = c.owner_id "
         "WHERE c.owner_id = ?1 ORDER BY u.username");
  s.BindInt(1, owner);
  while (s.Step()) out.push_back(ContactRecord{ProfileAt(s, 0), s.Int(5)});
  return out;
}

Result<std::vector<ProfileRecord>> SqliteStore::Reader::Blocked(UserId owner) {
  std::vector<ProfileRecord> out;
  Stmt s(*db_,
         "SELECT u.id, u.username, COALESCE(r.shown_display_name, u.display_name), "
         "COALESCE(r.shown_about, u.about), COALESCE(r.shown_updated_at, u.profile_updated_at) FROM blocks b "
         "JOIN users u ON u.id = b.target_id "
         "LEFT JOIN blocks r ON r.owner_id = b.target_id AND r.target_id = b.owner_id "  // mutual: what they show owner
         "WHERE b.owner_id = ?1 ORDER BY u.username");
  s.BindInt(1, owner);
  while (s.Step()) out.push_back(ProfileAt(s, 0));
  return out;
}

Result<SearchPage> SqliteStore::Reader::SearchUsers(UserId searcher, const std::string& query,
                                                    const std::string& after, int limit, StepCounter* counter) {
  SearchPage page;
  if (limit <= 0) return page;
  // Two scans in username order, merged: usernames from `max(query, after)`
  // on the users' username index, and users one of whose name words starts
  // with the query on name_prefixes' primary key (prefix, username). Both are
  // stepped lazily, so a page visits about `limit` rows of each however many
  // users match; each candidate costs one probe of blocks' primary key.
  const std::optional<std::string> end = PrefixEnd(query);
  Stmt by_name(*db_,
               end ? std::string_view("SELECT id, username, display_name, about, profile_updated_at FROM users "
                                      "WHERE username >= ?1 AND username < ?2 ORDER BY username")
                   : std::string_view("SELECT id, username, display_name, about, profile_updated_at FROM users "
                                      "WHERE username >= ?1 ORDER BY username"),
               counter);
  by_name.BindText(1, std::max(query, after));
  if (end) by_name.BindText(2, *end);
  const std::string_view key = Utf8Prefix(query, kMaxIndexedPrefix);
  const bool key_is_query = key.size() == query.size();
  Stmt by_word(*db_,
               "SELECT u.id, u.username, u.display_name, u.about, u.profile_updated_at FROM name_prefixes p "
               "CROSS JOIN users u ON u.id = p.user_id WHERE p.prefix = ?1 AND p.username >= ?2 "
               "ORDER BY p.username",
               counter);
  by_word.BindText(1, key).BindText(2, after);

  bool name_row = UsernameCouldStartWith(query) && by_name.Step();
  bool word_row = !key.empty() && by_word.Step();
  while (page.users.size() <= static_cast<size_t>(limit) && (name_row || word_row)) {
    std::string name_user = name_row ? by_name.Text(1) : std::string();
    std::string word_user = word_row ? by_word.Text(1) : std::string();
    ProfileRecord candidate;
    bool match = true;
    if (name_row && (!word_row || name_user <= word_user)) {
      candidate = ProfileAt(by_name, 0);
      if (word_row && word_user == name_user) word_row = by_word.Step();
      name_row = by_name.Step();
    } else {
      candidate = ProfileAt(by_word, 0);
      match = key_is_query || NameHasWordWithPrefix(candidate.display_name, query);
      word_row = by_word.Step();
    }
    if (!match || candidate.user_id == searcher || candidate.username == after) continue;
    {
      Stmt s(*db_, "SELECT 1 FROM blocks WHERE owner_id = ?1 AND target_id = ?2", counter);
      s.BindInt(1, candidate.user_id).BindInt(2, searcher);
      if (s.Step()) continue;  // the candidate blocks the searcher
    }
    page.users.push_back(std::move(candidate));
  }
  if (page.users.size() > static_cast<size_t>(limit)) {
    page.users.pop_back();
    page.next = page.users.back().username;
  }
  return page;
}

// ---------------------------------------------------------------------------
// SqliteStore: queues and threads

Result<std::unique_ptr<SqliteStore>> SqliteStore::Open(const StoreConfig& config) {
  Result<std::unique_ptr<Db>> write_db = Db::Open(config.sqlite_path, /*read_only=*/false, config.sqlite_cache_kib,
                                                       config.sqlite_page_size);
  if (!write_db.has_value()) return write_db.error();
  if (Status s = Migrate(**write_db); !s.ok()) return s;
  if (Status s = sqlite::InstallColdBody(**write_db); !s.ok()) return s;
  const Clock& clock = config.clock != nullptr ? *config.clock : SystemClock::Instance();
  Result<sqlite::OpenedSearchFile> search = sqlite::OpenSearchFile(**write_db, config.sqlite_path, clock.NowMillis());
  if (!search.has_value()) return search.error();
  // Opened after migration (and the search file): a read-only connection
  // cannot create a file or switch it to WAL.
  std::vector<std::unique_ptr<Reader>> readers;
  const int n = std::clamp(config.sqlite_read_connections, 1, kMaxSqliteReadConnections);
  for (int i = 0; i < n; ++i) {
    Result<std::unique_ptr<Db>> read_db = Db::Open(config.sqlite_path, /*read_only=*/true, config.sqlite_cache_kib);
    if (!read_db.has_value()) return read_db.error();
    if (Status s = sqlite::InstallColdBody(**read_db); !s.ok()) return s;
    if (Status s = sqlite::AttachSearchFile(**read_db, config.sqlite_path); !s.ok()) return s;
    readers.push_back(std::make_unique<Reader>(std::move(read_db).value()));
  }
  std::unique_ptr<Db> checkpoint_db;
  if (config.sqlite_checkpoint_pages > 0) {
    Result<std::unique_ptr<Db>> db = Db::Open(config.sqlite_path, /*read_only=*/false, kCheckpointerCacheKib);
    if (!db.has_value()) return db.error();
    checkpoint_db = std::move(db).value();
  }
  Result<int64_t> first_search_id = FirstSearchId(**write_db, search->done_id);
  if (!first_search_id.has_value()) return first_search_id.error();
  // Every entry committed from here on has an id of first_search_id or
  // above; those before are in the queue only (sqlite_search.h, "The texts
  // in memory").
  std::shared_ptr<sqlite::SearchHandoff> handoff;
  if (config.sqlite_search_handoff_kib > 0)
    handoff = std::make_shared<sqlite::SearchHandoff>(*first_search_id - 1,
                                                      static_cast<size_t>(config.sqlite_search_handoff_kib) << 10);
  auto writer = std::make_unique<Writer>(std::move(write_db).value(), clock, *first_search_id, handoff);
  return std::unique_ptr<SqliteStore>(
      new SqliteStore(config, std::move(writer), std::move(readers), std::move(checkpoint_db),
                      std::make_unique<sqlite::SearchWriter>(std::move(search->db), std::move(handoff))));
}

SqliteStore::SqliteStore(const StoreConfig& config, std::unique_ptr<Writer> writer,
                         std::vector<std::unique_ptr<Reader>> readers, std::unique_ptr<Db> checkpoint_db,
                         std::unique_ptr<sqlite::SearchWriter> search_writer)
    : source_path_(config.sqlite_path),
      max_batch_(std::max(1, config.commit_max_batch)),
      deadline_us_(std::max(0, config.commit_deadline_us)),
      adaptive_wait_us_(std::max(0, config.commit_adaptive_wait_us)),
      loaded_wait_us_(std::max(0, config.commit_loaded_wait_us)),
      writer_(std::move(writer)),
      after_read_for_test_(config.sqlite_after_read_for_test),
      checkpoint_pages_(checkpoint_db != nullptr ? config.sqlite_checkpoint_pages : 0),
      checkpoint_yield_pages_(std::max(0, config.sqlite_checkpoint_yield_pages)),
      checkpoint_yield_now_(checkpoint_yield_pages_),
      checkpoint_db_(std::move(checkpoint_db)),
      next_checkpoint_at_(checkpoint_pages_),
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
      checkpoints_total_(Metrics::Default().GetCounter(
          "parley_store_checkpoints_total", "SQLite WAL checkpoints run by the store's checkpointer thread.")),
      writer_checkpoints_total_(Metrics::Default().GetCounter(
          "parley_store_writer_checkpoints_total",
          "SQLite WAL checkpoints the writer ran itself: the pages committed while the checkpointer ran, or the "
          "whole WAL once it reached its hard limit.")),
      checkpoint_seconds_(Metrics::Default().GetHistogram(
          "parley_store_checkpoint_seconds", "Time of one SQLite WAL checkpoint on the checkpointer thread, seconds.",
          {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5})),
      writer_checkpoint_seconds_(Metrics::Default().GetHistogram(
          "parley_store_writer_checkpoint_seconds",
          "Time of one SQLite WAL checkpoint the writer ran itself (in its commit: sends wait behind it), seconds.",
          {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25})),
      wal_pages_(Metrics::Default().GetGauge("parley_store_wal_pages", "Pages in the SQLite WAL after the last commit.")),
      wal_pages_written_(Metrics::Default().GetCounter(
          "parley_store_wal_pages_written_total",
          "Pages the SQLite writer's commits wrote to the WAL (with the checkpointer on; per message stored: the "
          "store's write amplification).")),
      write_queue_(queue_depth_),
      search_pool_([&] {
        std::vector<std::unique_ptr<sqlite::SearchWriter>> one;
        one.push_back(std::move(search_writer));
        return one;
      }()),
      read_pool_(std::move(readers), config.sqlite_before_read_for_test) {
  if (checkpoint_pages_ > 0) {
    // Replaces SQLite's automatic checkpoint (which is itself a WAL hook).
    sqlite3_wal_hook(writer_->handle(), &SqliteStore::OnWalCommit, this);
    checkpoint_thread_ = std::thread([this] {
      SetCurrentThreadName("store-ckpt");
      RunCheckpointer();
    });
  }
  writer_thread_ = std::thread([this] {
    SetCurrentThreadName("store-writer");
    RunWriter();
  });
  read_pool_.Start("store-reader", config.reader_sched_batch);
  search_pool_.Start("store-search", /*sched_batch=*/true, kSearchNice);
}

SqliteStore::~SqliteStore() {
  std::thread backup;
  {
    std::lock_guard lock(backup_mu_);
    backup = std::move(backup_thread_);
  }
  if (backup.joinable()) backup.join();
  write_queue_.Stop();
  writer_thread_.join();
  // The search writer and the readers stop next: writes' callbacks may
  // still have queued their jobs (a purge's row removals, reads). A trim the
  // search writer queues now fails kShuttingDown: the next start trims.
  search_pool_.Stop();
  read_pool_.Stop();
  if (checkpoint_thread_.joinable()) {
    {
      std::lock_guard lock(checkpoint_mu_);
      checkpoint_stopping_ = true;
    }
    checkpoint_cv_.notify_all();
    checkpoint_thread_.join();
  }
}

int SqliteStore::OnWalCommit(void* self, sqlite3* db, const char* schema, int pages) {
  auto* store = static_cast<SqliteStore*>(self);
  store->wal_pages_.Set(pages);
  // The commit's frames: what the WAL grew by, or all of it if the commit
  // started the WAL again from its beginning (a checkpoint had copied every
  // page); the next request to the checkpointer is then due at the threshold.
  const bool restarted = pages < store->last_wal_pages_;
  store->wal_pages_written_.Inc(static_cast<uint64_t>(restarted ? pages : pages - store->last_wal_pages_));
  if (restarted) store->next_checkpoint_at_ = store->checkpoint_pages_;
  store->last_wal_pages_ = pages;
  // The checkpointer finished: copy here the pages committed while it ran
  // (few). Only a checkpoint with no commit in between copies the whole
  // WAL, and only then does the next transaction start the WAL again from
  // its beginning instead of making it longer.
  if (store->tail_wanted_.exchange(false, std::memory_order_acq_rel)) {
    store->WriterCheckpoint(db, schema);
    return SQLITE_OK;
  }
  // A yielding checkpointer gives way to every runnable thread, so under a
  // sustained load near saturation it could fall further behind with each
  // pass; and while it runs, the writer's own checkpoint below returns
  // SQLITE_BUSY. Past the hard limit it therefore copies without yielding
  // (its fair share of the core, as before yields existed) until a
  // checkpoint lets the WAL start again from its beginning.
  const bool behind = pages >= store->checkpoint_pages_ * kWalHardLimitFactor;
  store->checkpoint_yield_now_.store(behind ? 0 : store->checkpoint_yield_pages_, std::memory_order_relaxed);
  if (behind) {
    // The checkpointer has fallen far behind: copy back here (what SQLite's
    // own automatic checkpoint does), so the WAL cannot grow without bound.
    // A checkpoint already running on the checkpointer makes this one return
    // SQLITE_BUSY at once; the next commit tries again.
    store->WriterCheckpoint(db, schema);
    return SQLITE_OK;
  }
  // Until a checkpoint leaves nothing behind the WAL only grows, so ask
  // again only after another quarter of the threshold (a reader's open
  // snapshot can stop a checkpoint short), not after every commit.
  if (pages >= store->next_checkpoint_at_) {
    store->next_checkpoint_at_ = pages + std::max(1, store->checkpoint_pages_ / 4);
    bool wake = false;
    {
      std::lock_guard lock(store->checkpoint_mu_);
      wake = !store->checkpoint_wanted_;
      store->checkpoint_wanted_ = true;
    }
    if (wake) store->checkpoint_cv_.notify_one();
  }
  return SQLITE_OK;
}

void SqliteStore::WriterCheckpoint(sqlite3* db, const char* schema) {
  auto start = std::chrono::steady_clock::now();
  if (sqlite3_wal_checkpoint_v2(db, schema, SQLITE_CHECKPOINT_PASSIVE, nullptr, nullptr) != SQLITE_OK) return;
  std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
  writer_checkpoints_total_.Inc();
  writer_checkpoint_seconds_.Observe(took.count());
}

void SqliteStore::RunCheckpointer() {
  // A checkpoint copies thousands of pages in one call, and this thread
  // shares the core with the I/O and writer threads: without a yield it
  // would hold the core for a whole scheduler slice while messages wait.
  // OnWalCommit turns the yields off while the checkpointer is behind.
  sqlite::YieldEveryWalReads(&checkpoint_yield_now_);
  for (;;) {
    {
      std::unique_lock lock(checkpoint_mu_);
      checkpoint_cv_.wait(lock, [this] { return checkpoint_wanted_ || checkpoint_stopping_; });
      if (checkpoint_stopping_) return;
      checkpoint_wanted_ = false;
    }
    auto start = std::chrono::steady_clock::now();
    int rc = sqlite3_wal_checkpoint_v2(checkpoint_db_->handle(), nullptr, SQLITE_CHECKPOINT_PASSIVE, nullptr, nullptr);
    if (rc == SQLITE_OK) {
      // SQLite syncs the database file only at the end of a checkpoint that
      // copied the whole WAL. Under load commits land while this one runs,
      // so that sync fell to the writer's next tail checkpoint (OnWalCommit),
      // which then flushed every page copied here (up to the threshold's
      // 128 MiB) while sends waited behind it. Flushed here, off the
      // writer's path, the tail leaves it only its own pages.
      // A failure is not fatal: the WAL keeps the pages, and the writer's
      // tail checkpoint syncs again.
      if (Status s = checkpoint_db_->SyncDatabaseFile(); !s.ok()) {
        spdlog::warn("event=checkpoint_sync_failed error=\"{}\"", s.message());
      }
    }
    std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
    if (rc == SQLITE_OK) {
      checkpoints_total_.Inc();
      checkpoint_seconds_.Observe(took.count());
      tail_wanted_.store(true, std::memory_order_release);
    } else if (rc != SQLITE_BUSY) {
      // Not fatal: the WAL keeps every committed page, and the writer's hard
      // limit checkpoints if this keeps failing.
      spdlog::warn("event=checkpoint_failed error=\"{}\"", sqlite3_errmsg(checkpoint_db_->handle()));
    }
  }
}

template <typename T>
void SqliteStore::SubmitWrite(std::function<Result<T>(Writer&)> body, Callback<T> done, bool solo) {
  auto op = std::make_unique<TypedWriteOp<T>>(std::move(body), std::move(done));
  op->solo = solo;
  Enqueue(std::move(op));
}

void SqliteStore::Enqueue(std::unique_ptr<WriteOp> op) { write_queue_.Push(std::move(op)); }

template <typename T>
void SqliteStore::SubmitRead(std::function<Result<T>(Reader&)> body, Callback<T> done) {
  read_pool_.Submit([this, body = std::move(body), done = std::move(done)](Reader* reader) {
    if (reader == nullptr) return done(Status(ErrorCode::kShuttingDown, "store is closing"));
    Result<T> result = reader->Run<T>(body);
    if (after_read_for_test_) after_read_for_test_();
    done(std::move(result));
  });
}

void SqliteStore::RunWriter() {
  CommitPacer pacer(max_batch_, deadline_us_, adaptive_wait_us_, loaded_wait_us_);
  write_queue_.Run(pacer, static_cast<size_t>(max_batch_), [&](std::vector<std::unique_ptr<WriteOp>>& batch) {
    const auto start = std::chrono::steady_clock::now();
    Status status = writer_->CommitBatch(batch);
    const auto ran = std::chrono::steady_clock::now() - start;
    pacer.Ran(ran);
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
                               std::string verified_hash, int64_t now, Callback<DeviceRecord> done) {
  SubmitWrite<DeviceRecord>(
      [user_id, name = std::move(name), platform = std::move(platform), token_hash = std::move(token_hash),
       verified_hash = std::move(verified_hash),
       now](Writer& w) { return w.CreateDevice(user_id, name, platform, token_hash, verified_hash, now); },
      std::move(done));
}

void SqliteStore::GetAuthContext(std::string token_hash, Callback<AuthContext> done) {
  SubmitRead<AuthContext>(
      [token_hash = std::move(token_hash)](Reader& r) { return ReadAuthContext(r, token_hash); }, std::move(done));
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
  Enqueue(std::make_unique<ReceiptWriteOp>(update, std::move(done)));
}

void SqliteStore::ChangeMessage(MessageChange change, Callback<ChangeResult> done) {
  SubmitWrite<ChangeResult>([change = std::move(change)](Writer& w) { return w.ChangeMessage(change); },
                            std::move(done));
}

void SqliteStore::History(ConversationId id, UserId viewer, Seq before, int limit,
                          Callback<std::vector<MessageRecord>> done) {
  SubmitRead<std::vector<MessageRecord>>(
      [id, viewer, before, limit](Reader& r) { return r.History(id, viewer, before, limit); }, std::move(done));
}

void SqliteStore::SearchMessages(MessageSearchQuery query, Callback<MessageSearchPage> done) {
  SubmitRead<MessageSearchPage>([query = std::move(query)](Reader& r) { return r.SearchMessages(query); },
                                std::move(done));
}

void SqliteStore::SetDisappearing(UserId user_id, ConversationId conversation_id, int64_t seconds, int64_t now,
                                  Callback<SocialResult> done) {
  SubmitWrite<SocialResult>([user_id, conversation_id, seconds, now](
                                Writer& w) { return w.SetDisappearing(user_id, conversation_id, seconds, now); },
                            std::move(done));
}

void SqliteStore::ExpireMessages(int64_t now, int max_messages, Callback<ExpireProgress> done) {
  SubmitWrite<ExpireProgress>([now, max_messages](Writer& w) { return w.ExpireMessages(now, max_messages); },
                              std::move(done), /*solo=*/true);
}

void SqliteStore::PurgeDeleted(int64_t deleted_before, int max_messages, Callback<PurgeProgress> done) {
  // Then the search writer removes the purged messages' index rows, if the
  // delete's queue entry has not removed them yet ("Message search").
  auto rows = std::make_shared<std::vector<sqlite::SearchRow>>();
  SubmitWrite<PurgeProgress>(
      [deleted_before, max_messages, rows](Writer& w) {
        rows->clear();
        return w.PurgeDeleted(deleted_before, max_messages, rows.get());
      },
      [this, rows, done = std::move(done)](Result<PurgeProgress> purged) {
        if (!purged.has_value() || rows->empty()) return done(std::move(purged));
        search_pool_.Submit([rows, purged = std::move(purged), done](sqlite::SearchWriter* w) mutable {
          // The purge itself committed: a failure here leaves rows that the
          // delete's queue entry removes, and every search skips (deleted).
          if (w != nullptr) {
            Result<int64_t> removed = w->RemoveRows(*rows);
            if (removed.has_value()) {
              purged->search_removed += *removed;
            } else {
              spdlog::warn("event=search_rows_removal_failed error=\"{}\"", removed.error().ToString());
            }
          }
          done(std::move(purged));
        });
      },
      /*solo=*/true);
}

void SqliteStore::TrimStreams(TrimRequest req, Callback<TrimProgress> done) {
  SubmitWrite<TrimProgress>([req](Writer& w) { return w.TrimStreams(req); }, std::move(done), /*solo=*/true);
}

void SqliteStore::CompactMessages(CompactRequest req, Callback<CompactProgress> done) {
  SubmitWrite<CompactProgress>([req](Writer& w) { return w.CompactMessages(req); }, std::move(done), /*solo=*/true);
}

void SqliteStore::IndexSearch(int max_entries, Callback<SearchIndexProgress> done) {
  search_pool_.Submit([this, max_entries, done = std::move(done)](sqlite::SearchWriter* w) {
    if (w == nullptr) return done(Status(ErrorCode::kShuttingDown, "store is closing"));
    Result<SearchIndexProgress> progress = w->Index(max_entries);
    if (progress.has_value()) MaybeTrimSearchQueue(progress->done_id);
    done(std::move(progress));
  });
}

void SqliteStore::MaybeTrimSearchQueue(int64_t done_id) {
  if (done_id <= search_trimmed_) return;
  const auto now = std::chrono::steady_clock::now();
  if (done_id - search_trimmed_ < kSearchTrimEntries && now - search_trimmed_at_ < kSearchTrimInterval) return;
  search_trimmed_ = done_id;
  search_trimmed_at_ = now;
  // A failed trim is retried by the next one, which deletes up to a later
  // done_id.
  SubmitWrite<Empty>([done_id](Writer& w) { return w.TrimSearchQueue(done_id); },
                     [](Result<Empty> r) {
                       if (!r.has_value() && r.error().code() != ErrorCode::kShuttingDown)
                         spdlog::warn("event=search_queue_trim_failed error=\"{}\"", r.error().ToString());
                     },
                     /*solo=*/true);
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

void SqliteStore::Export(ExportTable table, std::vector<int64_t> after, int limit, Callback<ExportPage> done) {
  if (!after.empty() && static_cast<int>(after.size()) != ExportKeyColumns(table)) {
    return done(Status(ErrorCode::kBadRequest, "after needs one value per key column"));
  }
  SubmitRead<ExportPage>(
      [table, after = std::move(after), limit](Reader& r) { return r.Export(table, after, std::max(1, limit)); },
      std::move(done));
}

void SqliteStore::GetConversationStates(UserId user_id, std::vector<ConversationId> ids,
                                        Callback<std::vector<ConversationState>> done) {
  SubmitRead<std::vector<ConversationState>>(
      [user_id, ids = std::move(ids)](Reader& r) { return r.ConversationStates(user_id, ids); }, std::move(done));
}

void SqliteStore::GetSnapshot(UserId user_id, int latest_per_conversation, Callback<Snapshot> done) {
  SubmitRead<Snapshot>(
      [user_id, latest_per_conversation](Reader& r) { return r.GetSnapshot(user_id, latest_per_conversation); },
      std::move(done));
}

void SqliteStore::SetProfile(UserId user_id, std::optional<std::string> display_name,
                             std::optional<std::string> about, int64_t now, Callback<SocialResult> done) {
  SubmitWrite<SocialResult>(
      [user_id, display_name = std::move(display_name), about = std::move(about), now](Writer& w) {
        return w.SetProfile(user_id, display_name, about, now);
      },
      std::move(done));
}

void SqliteStore::GetProfiles(UserId viewer, std::vector<UserId> ids, Callback<std::vector<ProfileRecord>> done) {
  SubmitRead<std::vector<ProfileRecord>>(
      [viewer, ids = std::move(ids)](Reader& r) { return r.Profiles(viewer, ids); }, std::move(done));
}

void SqliteStore::AddContact(UserId owner, UserId contact, int64_t now, Callback<SocialResult> done) {
  SubmitWrite<SocialResult>([owner, contact, now](Writer& w) { return w.AddContact(owner, contact, now); },
                            std::move(done));
}

void SqliteStore::RemoveContact(UserId owner, UserId contact, int64_t now, Callback<SocialResult> done) {
  SubmitWrite<SocialResult>([owner, contact, now](Writer& w) { return w.RemoveContact(owner, contact, now); },
                            std::move(done));
}

void SqliteStore::ListContacts(UserId owner, Callback<std::vector<ContactRecord>> done) {
  SubmitRead<std::vector<ContactRecord>>([owner](Reader& r) { return r.Contacts(owner); }, std::move(done));
}

void SqliteStore::Block(UserId owner, UserId target, int64_t now, Callback<SocialResult> done) {
  SubmitWrite<SocialResult>([owner, target, now](Writer& w) { return w.Block(owner, target, now); },
                            std::move(done));
}

void SqliteStore::Unblock(UserId owner, UserId target, int64_t now, Callback<SocialResult> done) {
  SubmitWrite<SocialResult>([owner, target, now](Writer& w) { return w.Unblock(owner, target, now); },
                            std::move(done));
}

void SqliteStore::ListBlocked(UserId owner, Callback<std::vector<ProfileRecord>> done) {
  SubmitRead<std::vector<ProfileRecord>>([owner](Reader& r) { return r.Blocked(owner); }, std::move(done));
}

void SqliteStore::SearchUsers(UserId searcher, std::string query, std::string after, int limit,
                              Callback<SearchPage> done) {
  SubmitRead<SearchPage>(
      [this, searcher, query = std::move(query), after = std::move(after), limit](Reader& r) {
        StepCounter counter;
        Result<SearchPage> page = r.SearchUsers(searcher, query, after, limit, &counter);
        search_steps_.fetch_add(counter.vm_steps, std::memory_order_relaxed);
        return page;
      },
      std::move(done));
}

void SqliteStore::ListConversations(UserId user_id, int64_t before_activity, ConversationId before_id, int limit,
                                    int latest_per_conversation, Callback<ConversationPage> done) {
  SubmitRead<ConversationPage>(
      [user_id, before_activity, before_id, limit, latest_per_conversation](Reader& r) {
        return r.ListConversations(user_id, before_activity, before_id, limit, latest_per_conversation);
      },
      std::move(done));
}

void SqliteStore::ChangePassword(UserId user_id, std::string new_hash, DeviceId keep_device, int64_t /*now*/,
                                 Callback<std::vector<DeviceId>> done) {
  SubmitWrite<std::vector<DeviceId>>(
      [user_id, new_hash = std::move(new_hash), keep_device](Writer& w) {
        return w.ChangePassword(user_id, new_hash, keep_device);
      },
      std::move(done));
}

void SqliteStore::BulkCreateUsers(std::vector<NewBulkUser> users, int64_t now,
                                  Callback<std::vector<BulkUserResult>> done) {
  SubmitWrite<std::vector<BulkUserResult>>(
      [users = std::move(users), now](Writer& w) { return w.BulkCreateUsers(users, now); }, std::move(done));
}

void SqliteStore::SetPresenceVisibility(UserId user_id, PresenceVisibility visibility, int64_t now,
                                        Callback<SocialResult> done) {
  SubmitWrite<SocialResult>(
      [user_id, visibility, now](Writer& w) { return w.SetPresenceVisibility(user_id, visibility, now); },
      std::move(done));
}

void SqliteStore::SetLastSeen(UserId user_id, int64_t last_seen, StatusCallback done) {
  SubmitWrite<Empty>([user_id, last_seen](Writer& w) { return w.SetLastSeen(user_id, last_seen); },
                     ToEmptyCallback(std::move(done)));
}

void SqliteStore::GetPresence(UserId viewer, std::vector<UserId> ids, Callback<std::vector<PresenceRecord>> done) {
  SubmitRead<std::vector<PresenceRecord>>([viewer, ids = std::move(ids)](Reader& r) { return r.Presence(viewer, ids); },
                                          std::move(done));
}

void SqliteStore::GetMessageTimeline(ConversationId id, Seq seq, Callback<MessageTimeline> done) {
  SubmitRead<MessageTimeline>([id, seq](Reader& r) { return r.Timeline(id, seq); }, std::move(done));
}

void SqliteStore::SetUserDisabled(UserId user_id, bool disabled, bool revoke_devices, Callback<DisableResult> done) {
  SubmitWrite<DisableResult>(
      [user_id, disabled, revoke_devices](Writer& w) { return w.SetUserDisabled(user_id, disabled, revoke_devices); },
      std::move(done));
}

void SqliteStore::EraseAccount(UserId user_id, int64_t now, Callback<EraseResult> done) {
  SubmitWrite<EraseResult>([user_id, now](Writer& w) { return w.EraseAccount(user_id, now); }, std::move(done));
}

void SqliteStore::GetStoreSummary(Callback<StoreSummary> done) {
  SubmitRead<StoreSummary>([](Reader& r) { return r.Summary(); }, std::move(done));
}

void SqliteStore::GetSchemaStatus(Callback<SchemaStatus> done) {
  SubmitRead<SchemaStatus>([](Reader& r) { return r.Schema(); }, std::move(done));
}

// The online backup runs on a thread of its own with its own connection to
// the file: under WAL it reads one snapshot while the writer keeps
// committing (the copy is the store as of the backup's start), and neither
// the writer nor a reader thread waits for it. It copies into `path`.tmp,
// fsyncs it (journal_mode stays WAL in the copy's header) and renames it
// into place, so `path` is either absent or a complete backup.
void SqliteStore::Backup(std::string path, Callback<BackupResult> done) {
  std::lock_guard lock(backup_mu_);
  if (backup_running_) {
    done(Status(ErrorCode::kUnavailable, "a backup is already running; retry when it is done"));
    return;
  }
  if (backup_thread_.joinable()) backup_thread_.join();
  backup_running_ = true;
  backup_thread_ = std::thread([this, path = std::move(path), done = std::move(done)] {
    SetCurrentThreadName("store-backup");
    Result<BackupResult> r = sqlite::BackupFile(source_path_, path);
    {
      std::lock_guard finished(backup_mu_);
      backup_running_ = false;
    }
    done(std::move(r));
  });
}

size_t SqliteStore::AbandonQueuedWrites(const Status& why) {
  return write_queue_.FailQueued(why);
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
  s.queued_writes = static_cast<uint64_t>(std::max<int64_t>(0, queue_depth_.value()));
  return s;
}

uint64_t SqliteStore::SearchStepsForTest() const { return search_steps_.load(std::memory_order_relaxed); }

Status SqliteStore::CreateAtSchemaVersionForTest(const std::string& path, int version) {
  Result<std::unique_ptr<Db>> db = Db::Open(path, /*read_only=*/false, 1024);
  if (!db.has_value()) return db.error();
  return Migrate(**db, version);
}

void SqliteStore::SetMaxPageCountForTest(int64_t pages, Callback<int64_t> done) {
  SubmitWrite<int64_t>([pages](Writer& w) { return w.SetMaxPageCount(pages); }, std::move(done));
}

// ---------------------------------------------------------------------------
// Push (issue 11; docs/architecture.md "Push").
//
// push_jobs holds at most one row per device: a new request for a device
// that already has a pending job updates that row (the latest conversation
// and seq; kBadge never replaces kMessage) and bumps its version, which is
// how a burst coalesces into one push per device per window. The window is
// the due time: max(now, the device's last delivered push + coalesce_ms).
// A claim sets lease_owner/lease_until; a lease that expired (its node died
// or hung) makes the job claimable again. The badge, the alert flag and the
// preview are read when the job is claimed, so a push carries the state at
// the time it is sent, not when it was queued.

namespace {

// The user's unread total: per conversation, visible messages not by the
// user above the user's read watermark (as in a summary's unread count).
int64_t UnreadTotal(Db& db, UserId user_id) {
  Stmt s(db,
         "SELECT coalesce(sum((SELECT count(*) FROM messages m WHERE m.conversation_id = mb.conversation_id "
         "AND m.seq > coalesce(r.read, 0) AND m.sender_id <> ?1 AND NOT EXISTS (SELECT 1 FROM withheld w "
         "WHERE w.conversation_id = m.conversation_id AND w.user_id = ?1 AND w.seq = m.seq))), 0) "
         "FROM members mb LEFT JOIN user_receipts r ON r.conversation_id = mb.conversation_id AND r.user_id = ?1 "
         "WHERE mb.user_id = ?1");
  s.BindInt(1, user_id);
  return s.Step() ? s.Int(0) : 0;
}

}  // namespace

bool SqliteStore::Writer::RemovePush(DeviceId device_id) {
  {
    Stmt s(*db_, "DELETE FROM push_jobs WHERE device_id = ?1");
    s.BindInt(1, device_id);
    s.Run();
  }
  Stmt s(*db_, "DELETE FROM push_endpoints WHERE device_id = ?1");
  s.BindInt(1, device_id);
  s.Run();
  return db_->Changes() > 0;
}

Result<Empty> SqliteStore::Writer::SetPushEndpoint(UserId user_id, DeviceId device_id, const std::string& provider,
                                                   const std::string& token, int64_t now) {
  {
    Stmt s(*db_, "SELECT 1 FROM devices WHERE id = ?1 AND user_id = ?2 AND revoked = 0");
    s.BindInt(1, device_id).BindInt(2, user_id);
    if (!s.Step()) return Status(ErrorCode::kUnknownDevice, "no such live device of this user");
  }
  {
    Stmt s(*db_, "SELECT 1 FROM push_endpoints WHERE device_id = ?1 AND provider = ?2 AND token = ?3");
    s.BindInt(1, device_id).BindText(2, provider).BindText(3, token);
    if (s.Step()) return Empty{};  // the same endpoint again: health kept
  }
  RemovePush(device_id);
  Stmt s(*db_,
         "INSERT INTO push_endpoints(device_id, user_id, provider, token, registered_at) VALUES(?1, ?2, ?3, ?4, ?5)");
  s.BindInt(1, device_id).BindInt(2, user_id).BindText(3, provider).BindText(4, token).BindInt(5, now);
  s.Run();
  return Empty{};
}

Result<bool> SqliteStore::Writer::RemovePushEndpoint(UserId user_id, DeviceId device_id) {
  {
    Stmt s(*db_, "SELECT 1 FROM devices WHERE id = ?1 AND user_id = ?2 AND revoked = 0");
    s.BindInt(1, device_id).BindInt(2, user_id);
    if (!s.Step()) return Status(ErrorCode::kUnknownDevice, "no such live device of this user");
  }
  return RemovePush(device_id);
}

Result<SocialResult> SqliteStore::Writer::SetMuted(UserId user_id, ConversationId conversation_id, bool muted,
                                                   int64_t now) {
  Conversation* c = FindConversation(conversation_id);
  if (c == nullptr) return Status(ErrorCode::kUnknownConversation, "no such conversation");
  if (!IsMember(*c, user_id)) return Status(ErrorCode::kNotMember, "you are not a member of this conversation");
  SocialResult result;
  if (muted) {
    Stmt s(*db_, "INSERT OR IGNORE INTO push_mutes(user_id, conversation_id) VALUES(?1, ?2)");
    s.BindInt(1, user_id).BindInt(2, conversation_id);
    s.Run();
  } else {
    Stmt s(*db_, "DELETE FROM push_mutes WHERE user_id = ?1 AND conversation_id = ?2");
    s.BindInt(1, user_id).BindInt(2, conversation_id);
    s.Run();
  }
  if (db_->Changes() == 0) return result;
  result.changed = true;
  // The setting travels in `delivered`, as kPrivacy's does.
  result.positions.push_back(
      AppendEvent(user_id, EventKind::kMute, conversation_id, 0, user_id, Watermarks{muted ? 1 : 0, 0}, now));
  return result;
}

Result<SocialResult> SqliteStore::Writer::SetDraft(UserId user_id, ConversationId conversation_id,
                                                   const std::string& text, int64_t now) {
  Conversation* c = FindConversation(conversation_id);
  if (c == nullptr) return Status(ErrorCode::kUnknownConversation, "no such conversation");
  if (!IsMember(*c, user_id)) return Status(ErrorCode::kNotMember, "you are not a member of this conversation");
  SocialResult result;
  const size_t index = MemberIndex(*c, user_id);
  if (text.empty()) {
    if (!ClearDraft(*c, index)) return result;
  } else {
    // Rewritten only when the text differs: a retried set changes nothing.
    Stmt s(*db_,
           "INSERT INTO drafts(user_id, conversation_id, text, updated_at) VALUES(?1, ?2, ?3, ?4) "
           "ON CONFLICT(user_id, conversation_id) DO UPDATE SET text = excluded.text, updated_at = excluded.updated_at "
           "WHERE text <> excluded.text");
    s.BindInt(1, user_id).BindInt(2, conversation_id).BindText(3, text).BindInt(4, now);
    s.Run();
    c->state[index].has_draft = true;
    if (db_->Changes() == 0) return result;
  }
  result.changed = true;
  result.positions.push_back(AppendEvent(user_id, EventKind::kDraft, conversation_id, 0, 0, {}, now));
  return result;
}

bool SqliteStore::Writer::ClearDraft(Conversation& c, size_t i) {
  // Most sends have no draft to clear: no statement for them.
  if (!c.state[i].has_draft) return false;
  Stmt s(*db_, "DELETE FROM drafts WHERE user_id = ?1 AND conversation_id = ?2");
  s.BindInt(1, c.members[i].user_id).BindInt(2, c.id);
  s.Run();
  c.state[i].has_draft = false;
  return db_->Changes() > 0;
}

Result<SocialResult> SqliteStore::Writer::SetPushPreviews(UserId user_id, bool previews, int64_t now) {
  if (!Username(user_id)) return Status(ErrorCode::kUnknownUser, "unknown user");
  SocialResult result;
  Stmt s(*db_, "UPDATE users SET push_previews = ?2 WHERE id = ?1 AND push_previews <> ?2");
  s.BindInt(1, user_id).BindInt(2, previews ? 1 : 0);
  s.Run();
  if (db_->Changes() == 0) return result;
  result.changed = true;
  result.positions.push_back(
      AppendEvent(user_id, EventKind::kPushPreviews, 0, 0, user_id, Watermarks{previews ? 1 : 0, 0}, now));
  return result;
}

Result<int> SqliteStore::Writer::EnqueuePush(const PushRequest& req) {
  {
    Stmt s(*db_, "SELECT 1 FROM push_mutes WHERE user_id = ?1 AND conversation_id = ?2");
    s.BindInt(1, req.user_id).BindInt(2, req.conversation_id);
    if (s.Step()) return 0;
  }
  struct Target {
    DeviceId device;
    int64_t last_success_at;
    bool already_sent;
  };
  std::vector<Target> targets;
  {
    Stmt s(*db_,
           "SELECT device_id, last_success_at, last_conversation_id = ?2 AND last_seq = ?3 AND last_kind = ?4 "
           "FROM push_endpoints WHERE user_id = ?1 ORDER BY device_id");
    s.BindInt(1, req.user_id).BindInt(2, req.conversation_id).BindInt(3, req.seq).BindInt(
        4, static_cast<int64_t>(req.kind));
    while (s.Step()) {
      DeviceId d = s.Int(0);
      if (std::find(req.skip_devices.begin(), req.skip_devices.end(), d) != req.skip_devices.end()) continue;
      targets.push_back(Target{d, s.Int(1), s.Int(2) != 0});
    }
  }
  int queued = 0;
  for (const Target& t : targets) {
    if (t.already_sent) continue;
    int64_t due = std::max(req.now, t.last_success_at + req.coalesce_ms);
    // A pending job with the same key is left alone (idempotent); a badge
    // never replaces a message (the message's push carries the badge).
    Stmt s(*db_,
           "INSERT INTO push_jobs(device_id, user_id, conversation_id, seq, kind, due_at, created_at) "
           "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7) "
           "ON CONFLICT(device_id) DO UPDATE SET conversation_id = excluded.conversation_id, seq = excluded.seq, "
           "kind = excluded.kind, version = version + 1 "
           "WHERE NOT (conversation_id = excluded.conversation_id AND seq = excluded.seq AND kind = excluded.kind) "
           "AND NOT (kind = 1 AND excluded.kind = 2)");
    s.BindInt(1, t.device).BindInt(2, req.user_id).BindInt(3, req.conversation_id).BindInt(4, req.seq).BindInt(
        5, static_cast<int64_t>(req.kind)).BindInt(6, due).BindInt(7, req.now);
    s.Run();
    queued += static_cast<int>(db_->Changes());
  }
  return queued;
}

Result<std::vector<PushJob>> SqliteStore::Writer::ClaimPushJobs(const std::string& node, int64_t now,
                                                                int64_t lease_ms, int limit) {
  std::vector<PushJob> jobs;
  {
    Stmt s(*db_,
           "SELECT j.device_id, j.user_id, e.provider, e.token, j.conversation_id, j.seq, j.kind, j.version, "
           "j.attempts, j.created_at FROM push_jobs j JOIN push_endpoints e ON e.device_id = j.device_id "
           "WHERE j.due_at <= ?1 AND j.lease_until <= ?1 ORDER BY j.due_at, j.device_id LIMIT ?2");
    s.BindInt(1, now).BindInt(2, limit);
    while (s.Step()) {
      PushJob j;
      j.device_id = s.Int(0);
      j.user_id = s.Int(1);
      j.provider = s.Text(2);
      j.token = s.Text(3);
      j.conversation_id = s.Int(4);
      j.seq = s.Int(5);
      j.kind = static_cast<PushKind>(s.Int(6));
      j.version = s.Int(7);
      j.attempts = static_cast<int>(s.Int(8));
      j.created_at = s.Int(9);
      jobs.push_back(std::move(j));
    }
  }
  for (PushJob& j : jobs) {
    {
      Stmt s(*db_, "UPDATE push_jobs SET lease_owner = ?2, lease_until = ?3 WHERE device_id = ?1");
      s.BindInt(1, j.device_id).BindText(2, node).BindInt(3, now + lease_ms);
      s.Run();
    }
    {
      Stmt s(*db_, "SELECT push_previews FROM users WHERE id = ?1");
      s.BindInt(1, j.user_id);
      j.previews = !s.Step() || s.Int(0) != 0;
    }
    j.badge = UnreadTotal(*db_, j.user_id);
    if (j.kind != PushKind::kMessage) continue;
    Seq read = 0;
    {
      Stmt s(*db_, "SELECT read FROM user_receipts WHERE conversation_id = ?1 AND user_id = ?2");
      s.BindInt(1, j.conversation_id).BindInt(2, j.user_id);
      if (s.Step()) read = s.Int(0);
    }
    j.alert = j.seq > read;
    // The body raw, not PARLEY_MESSAGE_BODY: a compacted text is paged in
    // below, where a block that cannot be read costs the preview only.
    bool cold = false;
    {
      Stmt s(*db_,
             "SELECT m.sender_id, m.body, u.username, u.display_name, m.cold FROM messages m "
             "JOIN users u ON u.id = m.sender_id "
             "WHERE m.conversation_id = ?1 AND m.seq = ?2");
      s.BindInt(1, j.conversation_id).BindInt(2, j.seq);
      if (s.Step()) {
        j.sender_id = s.Int(0);
        j.sender_display_name = s.Text(3).empty() ? s.Text(2) : s.Text(3);
        if (j.previews && j.alert) j.preview = s.Text(1);
        cold = s.Int(4) != 0;
      }
    }
    if (cold && j.previews && j.alert) {
      Result<std::string> text = sqlite::ReadColdBody(*db_, cold_codec_, j.conversation_id, j.seq);
      if (text) {
        j.preview = std::move(text).value();
      } else {
        j.preview_error = text.error().ToString();  // (a database error fails the whole batch anyway)
      }
    }
  }
  return jobs;
}

Result<Empty> SqliteStore::Writer::CompletePush(const PushCompletion& c) {
  bool owned = false;
  int64_t version = 0, attempts = 0;
  {
    Stmt s(*db_, "SELECT lease_owner = ?2, version, attempts FROM push_jobs WHERE device_id = ?1");
    s.BindInt(1, c.device_id).BindText(2, c.node);
    if (s.Step()) {
      owned = s.Int(0) != 0;
      version = s.Int(1);
      attempts = s.Int(2);
    }
  }
  bool ok = c.outcome == PushOutcome::kDelivered;
  {
    Stmt s(*db_,
           "UPDATE push_endpoints SET last_attempt_at = ?2, last_result = ?3, "
           "last_success_at = CASE WHEN ?4 THEN ?2 ELSE last_success_at END, "
           "failure_count = failure_count + CASE WHEN ?4 THEN 0 ELSE 1 END, "
           "last_conversation_id = CASE WHEN ?4 THEN ?5 ELSE last_conversation_id END, "
           "last_seq = CASE WHEN ?4 THEN ?6 ELSE last_seq END, "
           "last_kind = CASE WHEN ?4 THEN ?7 ELSE last_kind END WHERE device_id = ?1");
    s.BindInt(1, c.device_id).BindInt(2, c.now).BindText(3, ok ? "ok" : c.result).BindInt(4, ok ? 1 : 0).BindInt(
        5, c.conversation_id).BindInt(6, c.seq).BindInt(7, static_cast<int64_t>(c.kind));
    s.Run();
  }
  if (!owned) return Empty{};
  auto drop = [&] {
    Stmt s(*db_, "DELETE FROM push_jobs WHERE device_id = ?1");
    s.BindInt(1, c.device_id);
    s.Run();
  };
  switch (c.outcome) {
    case PushOutcome::kDelivered:
      if (version == c.version) {
        drop();
      } else {
        Stmt s(*db_,
               "UPDATE push_jobs SET lease_owner = '', lease_until = 0, attempts = 0, due_at = ?2 WHERE device_id = ?1");
        s.BindInt(1, c.device_id).BindInt(2, c.now + c.coalesce_ms);
        s.Run();
      }
      break;
    case PushOutcome::kRetry:
      if (attempts + 1 >= c.max_attempts) {
        drop();
      } else {
        Stmt s(*db_,
               "UPDATE push_jobs SET lease_owner = '', lease_until = 0, attempts = attempts + 1, due_at = ?2 "
               "WHERE device_id = ?1");
        s.BindInt(1, c.device_id).BindInt(2, c.retry_at);
        s.Run();
      }
      break;
    case PushOutcome::kRejected: drop(); break;
    case PushOutcome::kGone: RemovePush(c.device_id); break;
  }
  return Empty{};
}

Result<std::vector<PushHealth>> SqliteStore::Reader::PushHealthOf(UserId user_id) {
  std::vector<PushHealth> out;
  Stmt s(*db_,
         "SELECT e.device_id, e.provider, e.registered_at, e.last_attempt_at, e.last_result, e.last_success_at, "
         "e.failure_count, EXISTS(SELECT 1 FROM push_jobs j WHERE j.device_id = e.device_id) "
         "FROM push_endpoints e WHERE e.user_id = ?1 ORDER BY e.device_id");
  s.BindInt(1, user_id);
  while (s.Step())
    out.push_back(PushHealth{s.Int(0), s.Text(1), s.Int(2), s.Int(3), s.Text(4), s.Int(5), s.Int(6), s.Int(7) != 0});
  return out;
}

Result<std::pair<bool, std::vector<ConversationId>>> SqliteStore::Reader::PushSettings(UserId user_id) {
  std::pair<bool, std::vector<ConversationId>> out{true, {}};
  {
    Stmt s(*db_, "SELECT push_previews FROM users WHERE id = ?1");
    s.BindInt(1, user_id);
    if (!s.Step()) return Status(ErrorCode::kUnknownUser, "unknown user");
    out.first = s.Int(0) != 0;
  }
  Stmt s(*db_, "SELECT conversation_id FROM push_mutes WHERE user_id = ?1 ORDER BY conversation_id");
  s.BindInt(1, user_id);
  while (s.Step()) out.second.push_back(s.Int(0));
  return out;
}

Result<PushQueueStats> SqliteStore::Reader::PushStats(int64_t now) {
  PushQueueStats st;
  {
    Stmt s(*db_, "SELECT count(*), coalesce(sum(lease_until > ?1), 0) FROM push_jobs");
    s.BindInt(1, now);
    if (s.Step()) {
      st.pending = s.Int(0);
      st.leased = s.Int(1);
    }
  }
  Stmt s(*db_, "SELECT count(*) FROM push_endpoints");
  if (s.Step()) st.endpoints = s.Int(0);
  return st;
}

void SqliteStore::SetPushEndpoint(UserId user_id, DeviceId device_id, std::string provider, std::string token,
                                  int64_t now, StatusCallback done) {
  SubmitWrite<Empty>(
      [user_id, device_id, provider = std::move(provider), token = std::move(token), now](Writer& w) {
        return w.SetPushEndpoint(user_id, device_id, provider, token, now);
      },
      ToEmptyCallback(std::move(done)));
}

void SqliteStore::RemovePushEndpoint(UserId user_id, DeviceId device_id, Callback<bool> done) {
  SubmitWrite<bool>([user_id, device_id](Writer& w) { return w.RemovePushEndpoint(user_id, device_id); },
                    std::move(done));
}

void SqliteStore::SetMuted(UserId user_id, ConversationId conversation_id, bool muted, int64_t now,
                           Callback<SocialResult> done) {
  SubmitWrite<SocialResult>(
      [user_id, conversation_id, muted, now](Writer& w) { return w.SetMuted(user_id, conversation_id, muted, now); },
      std::move(done));
}

void SqliteStore::SetDraft(UserId user_id, ConversationId conversation_id, std::string text, int64_t now,
                           Callback<SocialResult> done) {
  SubmitWrite<SocialResult>([user_id, conversation_id, text = std::move(text), now](
                                Writer& w) { return w.SetDraft(user_id, conversation_id, text, now); },
                            std::move(done));
}

void SqliteStore::SetPushPreviews(UserId user_id, bool previews, int64_t now, Callback<SocialResult> done) {
  SubmitWrite<SocialResult>([user_id, previews, now](Writer& w) { return w.SetPushPreviews(user_id, previews, now); },
                            std::move(done));
}

void SqliteStore::GetPushSettings(UserId user_id, Callback<std::pair<bool, std::vector<ConversationId>>> done) {
  SubmitRead<std::pair<bool, std::vector<ConversationId>>>([user_id](Reader& r) { return r.PushSettings(user_id); },
                                                          std::move(done));
}

void SqliteStore::ListPushHealth(UserId user_id, Callback<std::vector<PushHealth>> done) {
  SubmitRead<std::vector<PushHealth>>([user_id](Reader& r) { return r.PushHealthOf(user_id); }, std::move(done));
}

void SqliteStore::EnqueuePush(PushRequest req, Callback<int> done) {
  SubmitWrite<int>([req = std::move(req)](Writer& w) { return w.EnqueuePush(req); }, std::move(done));
}

void SqliteStore::ClaimPushJobs(std::string node, int64_t now, int64_t lease_ms, int limit,
                                Callback<std::vector<PushJob>> done) {
  SubmitWrite<std::vector<PushJob>>(
      [node = std::move(node), now, lease_ms, limit](Writer& w) { return w.ClaimPushJobs(node, now, lease_ms, limit); },
      std::move(done));
}

void SqliteStore::CompletePush(PushCompletion c, StatusCallback done) {
  SubmitWrite<Empty>([c = std::move(c)](Writer& w) { return w.CompletePush(c); }, ToEmptyCallback(std::move(done)));
}

void SqliteStore::GetPushQueueStats(int64_t now, Callback<PushQueueStats> done) {
  SubmitRead<PushQueueStats>([now](Reader& r) { return r.PushStats(now); }, std::move(done));
}

}  // namespace parley::store
