// The Store: everything Parley keeps durably. A purely abstract interface;
// backends (store/sqlite, store/postgres) are final classes in their own
// targets, chosen by name through store/store_factory.h. Core never includes a
// backend header.
//
// Shape. The store is laid out so that a wide-row store could implement it:
// messages are keyed by (conversation id, seq), user streams by (user id,
// user seq); no operation on the message path needs a transaction across
// conversations (batching several in one commit is allowed, and done).
//
// Asynchrony. Every operation returns at once and completes later by calling
// `done` exactly once, on a thread of the store's own (never the caller's).
// `done` must not block; callers re-post to their executor (common/executor.h,
// BindTo). No caller thread ever blocks on storage.
//
// Durability. A write operation's `done` runs only after its effects are
// durable (committed with full fsync). Writes are group-committed: many
// operations may share one transaction; if that transaction fails, every
// operation in it fails with the same Status.
//
// Order. Write operations submitted from one thread are applied in submission
// order. A read submitted after a write's `done` has run sees that write.
//
// Errors: Status codes from common/error_code.h (kUnknownUser,
// kUsernameTaken, kNotMember, kUnknownConversation, kStorageFull,
// kUnavailable, kInternal, ...). Each method names the ones it returns.
#pragma once

#include <functional>
#include <optional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"
#include "store/types.h"

namespace parley::store {

template <typename T>
using Callback = std::function<void(Result<T>)>;
using StatusCallback = std::function<void(Status)>;

struct Empty {};

// Counters a backend exposes about its own work, for tests and metrics.
struct StoreStats {
  uint64_t commits = 0;           // transactions committed
  uint64_t rows_read_sync = 0;    // backend-counted rows visited by ReadStream (SQLite: VM steps)
  uint64_t full_scan_steps = 0;   // backend-counted full-scan steps by ReadStream (SQLite)
  uint64_t queued_writes = 0;     // write operations queued, not yet taken by the writer (admission, see core)
};

class Store {
 public:
  virtual ~Store() = default;

  // ---- Accounts and devices ----

  // Creates a user. `username` is already canonical. Fails kUsernameTaken.
  virtual void CreateUser(std::string username, std::string password_hash, int64_t now,
                          Callback<UserRecord> done) = 0;
  // Fails kUnknownUser.
  virtual void GetUserByName(std::string username, Callback<UserRecord> done) = 0;
  virtual void GetUserById(UserId id, Callback<UserRecord> done) = 0;

  // Creates a device for `user_id` with the token's hash (the token itself is
  // never stored). Its cursor starts at the user's current head. Fails
  // kUnknownUser. `verified_hash`, when not empty, is the password hash a
  // login verified: the device is created only if it is still the user's
  // (in the same write), else kBadCredentials, so a login that raced a
  // password change cannot add a device the change did not revoke.
  virtual void CreateDevice(UserId user_id, std::string name, std::string platform, std::string token_hash,
                            std::string verified_hash, int64_t now, Callback<DeviceRecord> done) = 0;
  // The live (not revoked) device holding this token hash, its user and the
  // user's stream head, in one read (a reconnect's only store round trip
  // before it is answered). Fails kInvalidToken.
  virtual void GetAuthContext(std::string token_hash, Callback<AuthContext> done) = 0;
  // The user's live devices, ascending id.
  virtual void ListDevices(UserId user_id, Callback<std::vector<DeviceRecord>> done) = 0;
  // Revokes a device of `user_id`: its token stops working and its cursor is
  // dropped. Fails kUnknownDevice if it is not a live device of that user.
  virtual void RevokeDevice(UserId user_id, DeviceId device_id, StatusCallback done) = 0;
  // Records that the device acknowledged its stream up to `user_seq`
  // (monotonic: a lower value changes nothing) and when it was last seen.
  // Fails kUnknownDevice if it is not a live device.
  virtual void SetCursor(DeviceId device_id, UserSeq user_seq, int64_t now, StatusCallback done) = 0;

  // ---- Conversations and messages ----

  // The direct (1:1) conversation of two distinct users, created (with a
  // conversation event in both users' streams) if it does not exist yet.
  // Fails kUnknownUser.
  virtual void OpenDirect(UserId a, UserId b, int64_t now, Callback<OpenResult> done) = 0;
  // Fails kUnknownConversation.
  virtual void GetConversation(ConversationId id, Callback<ConversationRecord> done) = 0;

  // Appends a message: deduplicates on (conversation, sender, client id),
  // assigns the next conversation seq, appends a message event to every
  // member's stream and advances the sender's own watermarks to the new seq,
  // all in one transaction. A duplicate returns the original message and
  // appends nothing. Blocking: a member who blocks the sender gets no event
  // and never sees the message (it is withheld from them: not in their
  // history, snapshot, unread count or conversation order); a sender who
  // blocks another member is refused (kBlocked). Fails kUnknownConversation,
  // kNotMember, kBlocked.
  virtual void AppendMessage(NewMessage msg, Callback<AppendResult> done) = 0;

  // Raises a device's watermarks (monotonic per device; values above the
  // last seq visible to the user, i.e. not withheld from them by a block, are
  // clamped to it), recomputes the user's
  // aggregate (max over devices, never lowered) and, when the aggregate moved,
  // appends a receipt event to every member's stream. Fails
  // kUnknownConversation, kNotMember, kUnknownDevice (not a live device of
  // update.user_id).
  virtual void UpdateReceipt(ReceiptUpdate update, Callback<ReceiptResult> done) = 0;

  // Edits, deletes for everyone and deletes-for-me (issue 12). Decides with
  // protocol::DecideChange on the message as stored, inside the transaction
  // that writes the change, so changes to one message are ordered by commit
  // (two nodes: by the message's row lock). kEdit: a new version, the text
  // replaced (the old texts kept per version until a delete), a kEdit event
  // to every member the message is visible to. kDelete: a tombstone (body
  // and every edit's text emptied, deleted_at set; the row and its seq stay;
  // the purge of the data is issue 12's soft-delete item), a kDelete event
  // likewise. kDeleteForMe: the message is hidden from the user's views
  // (history, snapshot, lists, unread counts, and later edit/delete events),
  // a kDeleteForMe event in the user's own stream. A message withheld from
  // the user (a block) is kUnknownMessage to them. Fails
  // kUnknownConversation, kNotMember, kUnknownMessage, kForbidden,
  // kMessageDeleted, kEditWindowClosed, kDeleteWindowClosed.
  virtual void ChangeMessage(MessageChange change, Callback<ChangeResult> done) = 0;

  // Sets (or, with empty text, clears) the user's draft in a conversation
  // they are a member of; changed and one kDraft position in the user's own
  // stream when the text differs from the stored one. Last writer in the
  // store's order wins. A send by the user clears it (AppendResult::draft_cleared).
  virtual void SetDraft(UserId user_id, ConversationId conversation_id, std::string text, int64_t now,
                        Callback<SocialResult> done) = 0;

  // Messages of a conversation visible to `viewer` (withheld ones skipped)
  // with seq < before (before = 0: from the newest), newest `limit` of them,
  // returned in ascending seq; MessageRecord::stays_sent marks those withheld
  // from another member whose delivered watermark passed them. Fails
  // kUnknownConversation.
  virtual void History(ConversationId id, UserId viewer, Seq before, int limit,
                       Callback<std::vector<MessageRecord>> done) = 0;

  // ---- Streams and sync ----

  // Events of `user_id` with user_seq > after, ascending, at most `limit`.
  // Work is proportional to the events returned, not to history size.
  // StreamPage::floor is the lowest user seq still kept (TrimStreams).
  // Fails kCursorTooOld when after + 1 < floor: entries after the cursor
  // were trimmed, so the page could not be contiguous.
  virtual void ReadStream(UserId user_id, UserSeq after, int limit, Callback<StreamPage> done) = 0;
  // The user's head user seq (0 if the stream is empty).
  virtual void GetHead(UserId user_id, Callback<UserSeq> done) = 0;
  // Conversation list with summaries for a new device; `latest_per_conversation`
  // newest messages of each.
  virtual void GetSnapshot(UserId user_id, int latest_per_conversation, Callback<Snapshot> done) = 0;

  // Selective sync (issue 12 item 3): for each of `ids` the user is a member
  // of, its last seq visible to the user and the user's unread count, exactly
  // as GetSnapshot's summaries count them (withheld messages and messages
  // the user deleted for themself never count, nor show in last_seq). In the
  // order of `ids`; ids of conversations the user is not a member of (or
  // that do not exist) are left out. Work per id: one probe for the last
  // seq and a range scan of the unread tail, independent of history size.
  virtual void GetConversationStates(UserId user_id, std::vector<ConversationId> ids,
                                     Callback<std::vector<ConversationState>> done) = 0;

  // ---- Profiles, contacts, blocking, search (issue 3) ----
  //
  // Profiles under a block (DESIGN.md "Blocking"): while X blocks V, V keeps
  // X's profile as it was when the block began. Every profile of X produced
  // for V is that one: SetProfile appends V no event, and the results and
  // stored events of V's AddContact/RemoveContact/Block/Unblock naming X,
  // V's ListContacts and ListBlocked, and GetProfiles with viewer V show the
  // profile at the block's start. Once X unblocks V, V sees X's current
  // profile again: Unblock appends V a kProfile event with it when it
  // differs (display name or about) from the kept one and V is in X's
  // profile audience (shares a conversation with X or has X as a contact);
  // SocialResult::target_profile/target_position name it.

  // Sets the user's display name and/or about text (nullopt: unchanged).
  // When something changed, appends a kProfile event to the streams of the
  // user and of every user who shares a conversation with them or has them as
  // a contact, except users the user has blocked. Fails kUnknownUser.
  virtual void SetProfile(UserId user_id, std::optional<std::string> display_name, std::optional<std::string> about,
                          int64_t now, Callback<SocialResult> done) = 0;
  // Profiles of the given users as `viewer` sees them (see above; viewer 0:
  // every current profile), unknown ids left out, in the given order.
  virtual void GetProfiles(UserId viewer, std::vector<UserId> ids, Callback<std::vector<ProfileRecord>> done) = 0;

  // Adds `contact` to `owner`'s contacts; kContact event (flag true) in the
  // owner's stream. The result's and event's profile are the contact's as the
  // owner sees it (see above). Fails kUnknownUser, kSelfContact, kAlreadyContact.
  virtual void AddContact(UserId owner, UserId contact, int64_t now, Callback<SocialResult> done) = 0;
  // Fails kNotContact.
  virtual void RemoveContact(UserId owner, UserId contact, int64_t now, Callback<SocialResult> done) = 0;
  // Ascending username.
  virtual void ListContacts(UserId owner, Callback<std::vector<ContactRecord>> done) = 0;

  // `owner` blocks `target`; kBlock event (flag true) in the owner's stream.
  // While it lasts, target's messages to owner are withheld from owner (see
  // AppendMessage) and owner cannot send to target. Fails kUnknownUser,
  // kSelfBlock, kAlreadyBlocked.
  virtual void Block(UserId owner, UserId target, int64_t now, Callback<SocialResult> done) = 0;
  // Fails kNotBlocked. Messages withheld during the block stay withheld.
  virtual void Unblock(UserId owner, UserId target, int64_t now, Callback<SocialResult> done) = 0;
  // The users `owner` blocks, ascending username.
  virtual void ListBlocked(UserId owner, Callback<std::vector<ProfileRecord>> done) = 0;

  // Users whose username starts with `query` or one of whose display-name
  // words starts with it (caseless: `query` is already folded by
  // FoldForSearch, common/text_fold.h, as name_words.h folds the words),
  // ascending username, after `after` (a previous page's `next`), at most
  // `limit`; never the searcher, never a user who blocks the searcher. Must
  // stay fast (p99 ≤ 5 ms) on a directory of 1,000,000 users.
  virtual void SearchUsers(UserId searcher, std::string query, std::string after, int limit,
                           Callback<SearchPage> done) = 0;

  // The user's conversations ordered by the last activity visible to them
  // (newest first; ties by conversation id descending), starting after the
  // cursor (before_activity = 0: from the newest), each with its latest
  // `latest_per_conversation` visible messages, watermarks and unread count.
  virtual void ListConversations(UserId user_id, int64_t before_activity, ConversationId before_id, int limit,
                                 int latest_per_conversation, Callback<ConversationPage> done) = 0;

  // ---- Message search (issue 12; docs/architecture.md "Message search") ----
  //
  // Messages are indexed off the send path: AppendMessage and the edits and
  // deletes of ChangeMessage only queue the message's key (search_queue);
  // IndexSearch, run by a background SearchIndexer (store/search_indexer.h),
  // indexes the queued messages' current text later, in bounded steps. What
  // a search returns is checked against the message as stored when it runs,
  // so only how soon a new or edited text is found depends on the indexer:
  // the searcher must be a member; withheld messages (a block) and those
  // the searcher deleted for themself never match; deleted-for-everyone
  // messages never match; an edited message matches its indexed version
  // only, i.e. nothing until its new text is indexed, never its old text.

  // See MessageSearchQuery / MessageSearchPage. With a conversation_id,
  // fails kUnknownConversation, kNotMember.
  virtual void SearchMessages(MessageSearchQuery query, Callback<MessageSearchPage> done) = 0;
  // Indexes up to `max_entries` queued entries (oldest first) in a
  // transaction of its own, never shared with other writes; in a cluster
  // each entry is taken by one node.
  virtual void IndexSearch(int max_entries, Callback<SearchIndexProgress> done) = 0;

  // ---- Retention (issue 12; docs/architecture.md "Retention") ----
  //
  // Disappearing messages, the server-wide maximum age, soft delete and the
  // asynchronous purge. A message's expiry is fixed when it is stored
  // (MessageRecord::expires_at: the commit time + the conversation's timer,
  // or + NewMessage::max_age_ms if sooner). Two background steps, each a
  // transaction of its own never shared with sends, in bounded batches:
  // ExpireMessages tombstones expired messages exactly as a delete for
  // everyone does (the body and every edit's text go at once, a kDelete
  // event to each member the message is visible to); PurgeDeleted later
  // removes what a tombstone still holds (edit rows, search rows). The
  // messages row stays as a small tombstone for good: its seq keeps the
  // conversation's log gapless, and its deduplication key (conversation,
  // sender, client id) keeps answering a retry with the original ack.

  // Sets the conversation's disappearing timer (seconds; 0: off; the caller
  // checks the range). When it changed, appends a kDisappearing event to
  // every member's stream. Fails kUnknownConversation, kNotMember.
  virtual void SetDisappearing(UserId user_id, ConversationId conversation_id, int64_t seconds, int64_t now,
                               Callback<SocialResult> done) = 0;
  // Tombstones up to `max_messages` messages with 0 < expires_at <= now that
  // are not deleted yet, oldest expiry first, in one transaction of its own.
  // In a cluster each message is taken by one node.
  virtual void ExpireMessages(int64_t now, int max_messages, Callback<ExpireProgress> done) = 0;
  // Purges up to `max_messages` tombstones deleted at or before
  // `deleted_before` and not purged yet: their message_edits rows, search
  // index rows, queued search entries and texts kept in cold blocks are
  // removed and the row is marked purged; in one transaction of its own.
  virtual void PurgeDeleted(int64_t deleted_before, int max_messages, Callback<PurgeProgress> done) = 0;

  // ---- Stream trimming (issue 12; docs/architecture.md "Stream trimming") ----
  //
  // Removes old user-stream entries (TrimRequest says which) of up to
  // req.max_users users with id > req.after_user, ascending, at most
  // req.max_entries entries in all, oldest first per user, and raises each
  // such user's floor (the lowest user seq kept) past them; in one
  // transaction of its own, never shared with sends. The head does not
  // change (when every entry went, the floor is head + 1 and new entries
  // go on from the head); a floor never falls. In a cluster a user whose
  // head row another node or a batch holds is skipped until the next pass.
  virtual void TrimStreams(TrimRequest req, Callback<TrimProgress> done) = 0;

  // ---- Cold tier (issue 12 item 6; docs/architecture.md "Cold tier") ----
  //
  // Old history is compacted into compressed blocks per conversation; reads
  // page it back transparently: every read that returns a text (history,
  // sync, snapshots, lists, search, push previews, the message timeline,
  // deduplicated sends and changes) returns exactly what it returned before
  // the compaction. What stays in the message's row: every key (the
  // deduplication key included), times, version and tombstone state, so
  // edits, deletes, expiry and the purge work on compacted messages; an edit
  // or a delete writes the message's text back into its row (the block's copy
  // becomes an old version, like message_edits' texts) and the purge of a
  // deleted message removes its text from its block too. The texts of the
  // message's edits (message_edits, read by kEdit events) are compacted with
  // it into an edit block and follow the same rules: a later edit is a hot
  // row, a delete empties every edit text at once, the purge removes them
  // from their edit block.

  // Compacts as CompactRequest says, in one transaction of its own (never
  // shared with sends). The default fails kUnavailable (a store without a
  // cold tier: test doubles).
  virtual void CompactMessages(CompactRequest /*req*/, Callback<CompactProgress> done) {
    done(Status(ErrorCode::kUnavailable, "this store has no cold tier"));
  }
  // Whether CompactMessages does anything (any thread).
  virtual bool HasColdTier() const { return false; }

  // ---- Password and provisioning ----

  // Replaces the password hash and revokes every live device of the user
  // except `keep_device` (0: all). Returns the revoked device ids.
  virtual void ChangePassword(UserId user_id, std::string new_hash, DeviceId keep_device, int64_t now,
                              Callback<std::vector<DeviceId>> done) = 0;
  // Creates many users (and optionally one device each) in one transaction;
  // fails as a whole (kUsernameTaken naming the first taken name) if any
  // username exists. Results in input order.
  virtual void BulkCreateUsers(std::vector<NewBulkUser> users, int64_t now,
                               Callback<std::vector<BulkUserResult>> done) = 0;

  // ---- Presence (issue 4) ----

  // Sets who sees the user's presence and last seen. When it changed, appends
  // a kPrivacy event to the user's own stream (their other devices follow).
  // The result's profile is the user's own. Fails kUnknownUser.
  virtual void SetPresenceVisibility(UserId user_id, PresenceVisibility visibility, int64_t now,
                                     Callback<SocialResult> done) = 0;
  // Records when the user was last online; an older value than the stored
  // one changes nothing, nor does any for a disabled account (an erase
  // removed its last seen; the connections closed by the disable must not
  // bring it back). Fails kUnknownUser.
  virtual void SetLastSeen(UserId user_id, int64_t last_seen, StatusCallback done) = 0;
  // For each of `ids` that exists, in the given order: whether `viewer` may
  // see its presence and its last seen (0 when not visible). Visible means:
  // neither blocks the other, and the user's setting is kEveryone, or
  // kContacts with `viewer` in the user's contacts.
  virtual void GetPresence(UserId viewer, std::vector<UserId> ids, Callback<std::vector<PresenceRecord>> done) = 0;

  // ---- Message timeline (issue 8) ----

  // When message (id, seq) was accepted and stored, and, for each member and
  // each of its live devices, when the device's delivered and read
  // watermarks first covered it (UpdateReceipt logs every move of a device's
  // watermarks with its time). Fails kUnknownConversation, kUnknownMessage.
  virtual void GetMessageTimeline(ConversationId id, Seq seq, Callback<MessageTimeline> done) = 0;

  // ---- Operations (admin API) ----

  // Disables (or re-enables) a user: a disabled user's GetUserByName /
  // GetUserById records say so (core refuses login and auth). With
  // `revoke_devices`, also revokes every live device. Fails kUnknownUser.
  virtual void SetUserDisabled(UserId user_id, bool disabled, bool revoke_devices,
                               Callback<DisableResult> done) = 0;
  // The account part of erasing a user (docs/operations.md "User erase"):
  // revokes every device and blanks their names; removes the user's
  // contacts, blocks (both directions), drafts, push endpoints and mutes,
  // receipt log, name index and own stream; blanks the profile, the
  // password and last seen, disables the account and renames it
  // kErasedUsernamePrefix + id; rewrites the profile snapshots other users'
  // streams hold of it (contact, block and profile events) to the blank
  // one. Conversations, memberships, watermarks and messages stay: the
  // caller tombstones the messages (ChangeMessage, a delete for everyone).
  // Fails kUnknownUser.
  virtual void EraseAccount(UserId user_id, int64_t now, Callback<EraseResult> done) = 0;
  // Counts and size of the store (counts may take a scan of small tables).
  virtual void GetStoreSummary(Callback<StoreSummary> done) = 0;
  virtual void GetSchemaStatus(Callback<SchemaStatus> done) = 0;
  // Writes a consistent copy of the whole store to `path` (which must not
  // exist) while it keeps serving (SQLite: the online backup API, on a
  // thread of its own). Fails kBadRequest (path exists / cannot be written,
  // or the backend has no such thing: PostgreSQL, use pg_dump), kUnavailable
  // (another backup is running).
  virtual void Backup(std::string path, Callback<BackupResult> done) = 0;

  // ---- Export (admin API, delivery checker) ----

  // One page of `table` (types.h, ExportTable): rows whose key (the first
  // ExportKeyColumns(table) columns) is above `after` (empty: from the start;
  // otherwise exactly that many values), ascending by key, at most `limit`
  // (REQUIRES: limit >= 1). Read in one snapshot per page, not across pages:
  // export a quiescent store for a consistent whole. Fails kBadRequest on a
  // wrong `after` size. The default fails kUnavailable (a store that cannot
  // export, e.g. a test double); both backends implement it. Defined here,
  // inline, so that Store keeps no key function (its vtable and typeinfo
  // come with every user of the header, as before).
  virtual void Export(ExportTable /*table*/, std::vector<int64_t> /*after*/, int /*limit*/,
                      Callback<ExportPage> done) {
    done(Status(ErrorCode::kUnavailable, "this store cannot export"));
  }

  // ---- Push notifications (issue 11; docs/architecture.md "Push") ----
  //
  // Endpoints (one per device), per-conversation mutes, the per-user
  // previews setting, and the durable queue of pending pushes with leases.
  // Defaults fail kUnavailable (test doubles); both backends implement them.
  // Revoking a device (unlink, logout, password change, disable) removes its
  // endpoint and its pending job in the same transaction.

  // Registers (or replaces) the push endpoint of a live device of `user_id`;
  // its health record starts afresh when the provider or token changed.
  // Fails kUnknownDevice.
  virtual void SetPushEndpoint(UserId /*user_id*/, DeviceId /*device_id*/, std::string /*provider*/,
                               std::string /*token*/, int64_t /*now*/, StatusCallback done) {
    done(Status(ErrorCode::kUnavailable, "this store has no push queue"));
  }
  // Removes the device's endpoint and pending job; true if there was one.
  // Fails kUnknownDevice (not a live device of that user).
  virtual void RemovePushEndpoint(UserId /*user_id*/, DeviceId /*device_id*/, Callback<bool> done) {
    done(Status(ErrorCode::kUnavailable, "this store has no push queue"));
  }
  // Mutes or unmutes a conversation for the user; when it changed, appends
  // a kMute event to the user's own stream (their devices follow). Fails
  // kUnknownConversation, kNotMember.
  virtual void SetMuted(UserId /*user_id*/, ConversationId /*conversation_id*/, bool /*muted*/, int64_t /*now*/,
                        Callback<SocialResult> done) {
    done(Status(ErrorCode::kUnavailable, "this store has no push queue"));
  }
  // Turns message previews in the user's pushes on or off; when it changed,
  // appends a kPushPreviews event to the user's stream. Fails kUnknownUser.
  virtual void SetPushPreviews(UserId /*user_id*/, bool /*previews*/, int64_t /*now*/, Callback<SocialResult> done) {
    done(Status(ErrorCode::kUnavailable, "this store has no push queue"));
  }
  // The user's settings: previews on, and the conversations they muted.
  virtual void GetPushSettings(UserId /*user_id*/, Callback<std::pair<bool, std::vector<ConversationId>>> done) {
    done(Status(ErrorCode::kUnavailable, "this store has no push queue"));
  }
  // Push health of the user's live devices that have an endpoint, ascending id.
  virtual void ListPushHealth(UserId /*user_id*/, Callback<std::vector<PushHealth>> done) {
    done(Status(ErrorCode::kUnavailable, "this store has no push queue"));
  }
  // Queues (or updates, coalescing) one job per device of req.user_id that
  // has an endpoint and is not in req.skip_devices, unless the user muted
  // the conversation. Idempotent per (device, conversation, seq, kind): a job
  // already pending with that key, or that key already delivered last, is
  // not queued again. A job's due time is max(now, the device's last
  // delivered push + coalesce_ms); an update keeps the due time and bumps the
  // version. A kBadge request does not replace a pending kMessage job (that
  // job carries the latest badge when it is sent). Returns how many jobs
  // were queued or updated.
  virtual void EnqueuePush(PushRequest /*req*/, Callback<int> done) {
    done(Status(ErrorCode::kUnavailable, "this store has no push queue"));
  }
  // Claims up to `limit` due jobs (due_at <= now) not held by an unexpired
  // lease: each is leased to `node` until now + lease_ms, so that in a
  // cluster each job is claimed by one node at a time and a dead node's
  // claims expire. Oldest due first. The jobs carry the latest state (badge
  // = the user's unread total now; alert false when the message was read).
  // A preview whose compacted text cannot be paged in (a missing or corrupt
  // block; on PostgreSQL also a message another node is changing right
  // then) does not fail the claim: that job comes back without its preview,
  // with preview_error saying why, to be sent at once rather than wait out
  // its lease.
  virtual void ClaimPushJobs(std::string /*node*/, int64_t /*now*/, int64_t /*lease_ms*/, int /*limit*/,
                             Callback<std::vector<PushJob>> done) {
    done(Status(ErrorCode::kUnavailable, "this store has no push queue"));
  }
  // Records the outcome of sending a claimed job, and the device's health.
  // Applies to the job only while `node` still holds its lease (else only
  // the health is recorded). kDelivered deletes the job unless it was
  // updated since the claim (version moved: it stays, due at now +
  // coalesce_ms); kRetry releases the lease with due_at = retry_at, or drops
  // the job once it failed max_attempts times; kRejected drops it; kGone
  // drops it and removes the endpoint.
  virtual void CompletePush(PushCompletion /*c*/, StatusCallback done) {
    done(Status(ErrorCode::kUnavailable, "this store has no push queue"));
  }
  // Counts for metrics; `leased`: jobs whose lease runs past `now`.
  virtual void GetPushQueueStats(int64_t /*now*/, Callback<PushQueueStats> done) {
    done(Status(ErrorCode::kUnavailable, "this store has no push queue"));
  }

  // ---- Lifecycle ----

  // Completes when every write submitted before it is durable.
  virtual void Flush(StatusCallback done) = 0;
  // Fails every write queued but not yet taken into a commit with `why`
  // (a Flush queued behind them completes with `why` too); the batch being
  // committed is not touched. Their callbacks run on the calling thread.
  // Returns how many were failed. For a shutdown that cannot wait for a
  // backlog: nothing failed here was acknowledged, so a client's retry
  // (same client id) is safe.
  virtual size_t AbandonQueuedWrites(const Status& /*why*/) { return 0; }
  // Counters of the backend's own work (any thread).
  virtual StoreStats Stats() const = 0;
};

}  // namespace parley::store
