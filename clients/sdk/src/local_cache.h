// LocalCache: the SDK's SQLite file — the cache (conversations, messages,
// receipts, the applied cursor) and the durable outbox. Internal to the SDK.
//
// Every method is thread-safe (one mutex around the one sqlite3 handle) and
// returns errors as a LocalError (code kErrLocalStorageFull when SQLite says
// SQLITE_FULL, kErrLocalStorage otherwise); a failed method leaves the file as
// it was (each one is a single transaction). Events and the cursor move in the
// same transaction, so a crash never applies an event twice or skips one.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "parley/client.h"

namespace parley::sdk {

struct LocalError {
  std::string code;
  std::string message;
};

struct OutboxRow {
  int64_t local_id = 0;
  std::string client_id;
  std::string peer;
  std::string body;
  int64_t created_at = 0;
  bool failed = false;
  std::string error_code, error_message;
  // A send of it went out and no answer said whether the server stored it
  // (kept across processes): the maximum age does not fail it.
  bool attempted = false;
};

// A draft set on this device and not yet saved on the server (one per
// peer: a newer SetDraft replaces the text and bumps gen).
struct DraftRow {
  std::string peer;
  std::string text;
  int64_t set_at = 0;  // local ms of the last SetDraft
  int64_t gen = 0;
};

// What applying a batch of stream events produced.
struct ApplyOutcome {
  std::vector<StatusUpdate> updates;          // status changes of own messages
  std::map<int64_t, int64_t> received;        // conversation -> highest seq received from others
  std::vector<nlohmann::json> applied;        // the events applied (not the dropped duplicates)
  bool gap = false;                           // some events were beyond a missing user seq
  std::vector<CachedMessage> changed;         // cached messages an edit/delete/delete_for_me changed
  std::vector<CachedConversation> drafts;     // conversations whose shown draft changed (draft events, snapshot)
};

// A prepared statement kept for reuse (local_cache.cc's Stmt), keyed by the
// address of its SQL literal; `busy` while a Stmt uses it.
struct CachedStatement {
  sqlite3_stmt* stmt = nullptr;
  bool busy = false;
};
using StatementCache = std::map<const char*, CachedStatement>;

class LocalCache {
 public:
  // 2: edits and deletes (messages.version, ...); 3: conversations.hidden_unread/hidden_below;
  // 4: drafts (conversations.draft, draft_updated_at; the draft_outbox table)
  // 5: retention (messages.expires_at, conversations.disappearing_s) and selective sync
  //    (conversations.summary_unread, summarised, selected_head)
  // 6: the conversations the app opened (the opened table), selected again by every session
  // 7: an outbox send remembers the draft it cleared (outbox.cleared_draft, cleared_draft_at)
  // 8: conversations.paged_head (a late summary with nothing paged marks its messages missing)
  // 9: outbox.attempted (a send went out unanswered; the maximum age waits for the answer)
  static constexpr int kSchemaVersion = 9;

  static std::unique_ptr<LocalCache> Open(const std::string& path, int64_t max_pages, LocalError* error);
  ~LocalCache();

  // Identity and cursor ("meta" table).
  void SetIdentity(int64_t user_id, const std::string& username, int64_t device_id);
  int64_t user_id();
  std::string username();
  int64_t device_id();
  // The highest applied user seq; nullopt if the cache never synced (new device).
  std::optional<int64_t> applied();

  // Outbox. Adding a message also drops the peer's unsaved draft and
  // clears its shown one (a send clears the draft, docs/protocol.md).
  bool AddOutbox(const OutboxRow& row, LocalError* error);
  std::vector<OutboxRow> Outbox(bool include_failed);
  bool FailOutbox(const std::string& client_id, const std::string& code, const std::string& message,
                  LocalError* error);
  // A failed entry queued again (same client id and place, its age counted
  // from `now`), or removed; false if `client_id` is not a failed entry.
  bool RetryFailedOutbox(const std::string& client_id, int64_t now);
  // Records that a send of `client_id` went out (true) or that an answer
  // said it was not stored (false); see OutboxRow::attempted.
  bool SetOutboxAttempted(const std::string& client_id, bool attempted, LocalError* error);
  bool DiscardFailedOutbox(const std::string& client_id);
  // The send of `client_id` was acknowledged: the outbox row becomes a message.
  bool RecordSent(const std::string& client_id, const nlohmann::json& ack, std::vector<StatusUpdate>* updates,
                  LocalError* error);

  // Drafts. SetPendingDraft records a local draft for `peer` (replacing an
  // unsaved one). DraftSaved: set_draft of generation `gen` was
  // accepted, its `draft` event at user seq `user_seq` (0: the server
  // already had `text`, no event); the pending row goes if it is still that
  // generation. DropPendingDraft: the server refused it.
  bool SetPendingDraft(const std::string& peer, const std::string& text, int64_t now, LocalError* error);
  std::vector<DraftRow> PendingDrafts();
  void DraftSaved(const std::string& peer, int64_t gen, int64_t conversation_id, const std::string& text,
                  int64_t user_seq, int64_t now);
  void DropPendingDraft(const std::string& peer, int64_t gen);
  std::string Draft(const std::string& peer);

  // Applies stream events in user-seq order; events at or below the cursor
  // are dropped; user seqs named by a coalesced receipt's also_covers count
  // as applied when reached, and a copy of one (a sync after a drop) is
  // dropped too; stops at the first gap (out->gap; the rest stay unapplied).
  // Advances the cursor.
  bool ApplyEvents(const std::vector<nlohmann::json>& events, ApplyOutcome* out, LocalError* error);
  // Replaces the stream-derived state with a snapshot (outbox untouched).
  bool ApplySnapshot(const nlohmann::json& snapshot, ApplyOutcome* out, LocalError* error);
  // Stores a page of history (messages are immutable; existing rows kept).
  // `withheld`: the response's seqs that stay "sent" forever (may be empty).
  bool StoreHistory(int64_t conversation_id, const nlohmann::json& messages, const nlohmann::json& withheld,
                    LocalError* error);
  // Records a conversation learnt from an answer (open_conversation), out of
  // stream order: a known conversation keeps its disappearing timer (the
  // stream's `disappearing` events decide it, an answer may be older).
  bool StoreConversation(const nlohmann::json& conversation, LocalError* error);

  std::vector<CachedConversation> Conversations();
  std::optional<CachedConversation> ConversationWith(const std::string& peer);
  // `now` > 0: messages whose expires_at passed by then read as tombstones
  // (ExpireMessages, run by the client's loop, drops their text for good).
  std::vector<CachedMessage> Messages(int64_t conversation_id, int64_t before, int limit, int64_t now = 0);
  // Retention (issue 12): drops the text of every message whose expires_at
  // is at or before `now` (it becomes a tombstone, as after a delete for
  // everyone); returns them as they are now. NextExpiry: the earliest
  // expires_at still to come (0: none).
  std::vector<CachedMessage> ExpireMessages(int64_t now);
  int64_t NextExpiry();
  std::optional<StatusUpdate> StatusOf(const std::string& client_id);
  // Selective sync: whether history pages whose oldest message is `oldest`
  // have joined the cached messages (the newest cached one below them is
  // oldest - 1) or reached my read watermark (every unread message is held).
  bool FillReached(int64_t conversation_id, int64_t oldest);
  // Selective sync: the conversation's messages were paged after summaries,
  // down to `oldest` (clears CachedConversation::summarised). The unread
  // count comes from the cached messages again; if the pages did not hold
  // every unread one (`all_unread_held` false), the server's count of the
  // rest is kept below `oldest`, as after a snapshot.
  void MarkPaged(int64_t conversation_id, int64_t oldest, bool all_unread_held);
  // Selective sync: the conversations the app opened, selected again by
  // every session (kept across restarts and snapshots). Opened: newest first.
  void AddOpened(int64_t conversation_id, int64_t now);
  std::vector<int64_t> Opened();
  // Selective sync: the conversations whose messages up to last_seq may be
  // missing (CachedConversation::summarised), ascending.
  std::vector<int64_t> Summarised();
  // Selective sync: the conversation is selected from user seq `head` on
  // (select_sync's answer); summaries at or below it no longer mark it.
  void MarkSelected(int64_t conversation_id, int64_t head);
  std::string PeerOf(int64_t conversation_id);
  // The device's final view for the delivery history's `view` record
  // (docs/checker.md): the seqs of every cached message, hidden ones
  // included, as {"conversation_id","ranges":[[lo,hi],...]}; the edited,
  // deleted or hidden ones in full as
  // {"conversation_id","seq","version","deleted","hidden","body_hash"}; and
  // every conversation's draft as the server has it here (pending local
  // text aside) as {"conversation_id","draft_hash","pending"}; every
  // conversation's disappearing timer as {"conversation_id","seconds"}.
  // Returns {"held":[...],"messages":[...],"drafts":[...],"timers":[...]};
  // on a SQLite error, empty arrays.
  nlohmann::json HistoryView();

 private:
  explicit LocalCache(sqlite3* db) : db_(db) {}
  class Tx;
  std::string MetaLocked(const std::string& key);
  // The applied cursor (meta `applied`); nullopt before the first snapshot.
  std::optional<int64_t> AppliedLocked();
  void SetMetaLocked(const std::string& key, const std::string& value);
  void ApplyOneLocked(const nlohmann::json& event, ApplyOutcome* out);
  // from_stream: a snapshot entry or a `conversation` event (its timer is
  // current in stream order); else an answer (see StoreConversation).
  void InsertConversationLocked(const nlohmann::json& conversation, bool from_stream = true);
  void InsertMessageLocked(const nlohmann::json& m, std::vector<StatusUpdate>* updates);
  // Folds an edit or delete (protocol::ApplyChange) into a cached message;
  // returns it when it changed.
  std::optional<CachedMessage> ChangeMessageLocked(int64_t conversation_id, int64_t seq, bool deleted, int64_t version,
                                                   const std::string& body, int64_t edited_at);
  std::optional<CachedMessage> HideMessageLocked(int64_t conversation_id, int64_t seq);
  CachedMessage MessageRowLocked(int64_t conversation_id, int64_t seq);
  void ExpireLocked(int64_t now, std::vector<CachedMessage>* changed);
  void RaiseWatermarksLocked(int64_t conversation_id, int64_t user_id, int64_t delivered, int64_t read,
                             std::vector<StatusUpdate>* updates);
  MessageStatus OwnStatusLocked(int64_t conversation_id, int64_t seq);
  // Keeps the part of a snapshot entry's unread count that its cached
  // messages do not show (conversations.hidden_unread, hidden_below).
  void RecordHiddenUnreadLocked(int64_t conversation_id, int64_t server_unread);
  CachedConversation ConversationRowLocked(int64_t conversation_id);
  // The draft shown for a conversation: the pending one of its peer, else the server's.
  std::string ShownDraftLocked(int64_t conversation_id);

  std::mutex mu_;  // guards db_ and every statement
  sqlite3* db_;
  StatementCache stmts_;  // finalized before db_ is closed
  int64_t me_ = 0;  // cached user id (meta "user_id")
  std::set<int64_t> covered_;  // user seqs above the cursor covered by a coalesced receipt
};

}  // namespace parley::sdk
