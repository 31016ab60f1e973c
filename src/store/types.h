// Records that cross the Store interface. Plain values; no behaviour.
//
// Ids are 64-bit integers assigned by the store. Times are milliseconds since
// the Unix epoch, taken from the injected Clock by the caller (core), so the
// store never reads the wall clock itself.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace parley::store {

using UserId = int64_t;
using DeviceId = int64_t;
using ConversationId = int64_t;
using Seq = int64_t;      // conversation sequence number, 1-based, gapless per conversation
using UserSeq = int64_t;  // user-stream sequence number, 1-based, gapless per user

// Who sees a user's presence and last seen (DESIGN.md, "Presence
// visibility"); blocking hides it in both directions whatever the setting.
enum class PresenceVisibility : int {
  kEveryone = 0,  // the default
  kContacts = 1,  // users the user has in their contacts
  kNobody = 2,
};

struct UserRecord {
  UserId id = 0;
  std::string username;       // canonical (lower-case) form
  std::string password_hash;  // libsodium crypto_pwhash_str output
  int64_t created_at = 0;
  std::string display_name;   // "" until set
  std::string about;          // "" until set
  PresenceVisibility presence_visibility = PresenceVisibility::kEveryone;
  int64_t last_seen = 0;      // when the user was last online; 0: never recorded
  bool disabled = false;      // an operator disabled the account: no login, no auth
};

// One user's presence as one viewer may see it.
struct PresenceRecord {
  UserId user_id = 0;
  bool visible = false;   // the user's setting and blocks let the viewer see it
  int64_t last_seen = 0;  // 0: never recorded (also when not visible)
};

// What other users see of a user.
struct ProfileRecord {
  UserId user_id = 0;
  std::string username;
  std::string display_name;
  std::string about;
  int64_t updated_at = 0;
};

struct ContactRecord {
  ProfileRecord profile;
  int64_t added_at = 0;
};

struct DeviceRecord {
  DeviceId id = 0;
  UserId user_id = 0;
  std::string name;
  std::string platform;
  int64_t created_at = 0;
  int64_t last_seen_at = 0;
  UserSeq cursor = 0;  // last user seq the device acknowledged
};

// What authenticating a connection with a device token needs, read in one
// consistent snapshot (Store::GetAuthContext).
struct AuthContext {
  DeviceRecord device;
  UserRecord user;
  UserSeq head = 0;  // the user's stream head
};

struct MemberRecord {
  UserId user_id = 0;
  std::string username;
};

struct ConversationRecord {
  ConversationId id = 0;
  std::vector<MemberRecord> members;  // ordered by user id
  // The last conversation seq. In what is produced for one user (summaries,
  // OpenDirect's result) it is the last seq visible to that user: seqs
  // withheld from them by a block never show, not even as a count
  // (DESIGN.md "Blocking").
  Seq last_seq = 0;
  int64_t created_at = 0;
  int64_t last_activity_at = 0;  // time of the last message (created_at if none)
  // The disappearing-messages timer (issue 12), seconds; 0: off. Messages
  // sent while it is set expire this long after they are stored.
  int64_t disappearing_s = 0;
};

// A stored message. `seq` is its conversation seq.
struct MessageRecord {
  ConversationId conversation_id = 0;
  Seq seq = 0;
  UserId sender_id = 0;
  DeviceId sender_device_id = 0;
  std::string client_id;
  std::string body;      // the current text ("" once deleted for everyone)
  int64_t created_at = 0;
  // Edits and deletes (issue 12; protocol/message_edits.h): the version of
  // the current text (0: never edited; each edit and the delete take the
  // next one), when it was last edited, and when it was deleted for everyone
  // (0: not deleted; a deleted message is a tombstone: it keeps its seq and
  // metadata, its body is gone).
  int64_t version = 0;
  int64_t edited_at = 0;
  int64_t deleted_at = 0;
  // Disappearing messages and the server-wide maximum age (issue 12): when
  // the message expires (server time at its commit + the conversation's
  // timer, or the server's maximum age if that is sooner); 0: never. The
  // expiry job tombstones it then (a delete for everyone, deleted_at >=
  // expires_at, which is how an expiry reads apart from a sender's delete).
  int64_t expires_at = 0;
  // Set only by History, for its viewer: the message is withheld from another
  // member whose delivered watermark has passed it, so it stays "sent"
  // forever (DESIGN.md "Blocking"; the same rule as StreamEvent::withheld).
  bool stays_sent = false;
};

// Per-user aggregate watermarks in one conversation (max over the user's devices).
struct Watermarks {
  Seq delivered = 0;
  Seq read = 0;
};

enum class EventKind : int {
  kMessage = 1,       // a message visible to the user (their own included)
  kReceipt = 2,       // a member's aggregate watermarks changed
  kConversation = 3,  // the user became a member of a conversation
  kProfile = 4,       // a user's profile changed (the user's own, or someone they know)
  kContact = 5,       // the user added or removed a contact
  kBlock = 6,         // the user blocked or unblocked someone
  kPrivacy = 7,       // the user changed their presence visibility
  kMute = 8,          // the user muted or unmuted a conversation (push, issue 11)
  kPushPreviews = 9,  // the user turned message previews in pushes on or off
  kEdit = 10,         // a message visible to the user was edited (issue 12)
  kDelete = 11,       // a message visible to the user was deleted for everyone
  kDeleteForMe = 12,  // the user deleted a message for themself (on any of their devices)
  kDraft = 13,        // the user's draft in a conversation changed (set, or cleared by a send)
  kDisappearing = 14, // a member set a conversation's disappearing-messages timer (issue 12)
};

// A user's unsent text in one conversation, shared by all of their devices
// (issue 12; docs/protocol.md "Drafts"). Empty text: no draft.
struct DraftRecord {
  std::string text;
  int64_t updated_at = 0;  // when it was last set or cleared (server time)
};

// One entry of a user's event stream. Which fields are set depends on kind:
//   kMessage:      conversation_id, message, withheld
//   kReceipt:      conversation_id, receipt_user_id, receipt, withheld
//   kConversation: conversation_id, conversation
//   kProfile:      profile (as it was after the change)
//   kContact:      profile (of the contact), flag (true: added, false: removed)
//   kBlock:        profile (of the blocked user), flag (true: blocked, false: unblocked)
//   kPrivacy:      presence_visibility (the new setting)
//   kMute:         conversation_id, flag (true: muted)
//   kPushPreviews: flag (true: previews on)
//   kEdit:         conversation_id, message (conversation_id, seq, sender_id,
//                  version = the edit's, body = the edit's text, edited_at)
//   kDelete:       conversation_id, message (conversation_id, seq, sender_id,
//                  version = the delete's, deleted_at; body "")
//   kDeleteForMe:  conversation_id, message (conversation_id, seq; deleted_at =
//                  when the user hid it)
//   kDraft:        conversation_id, draft: the conversation's draft as it is
//                  when the event is read (drafts keep no history: every
//                  draft event of a conversation reads the current one, so the
//                  last applied is the newest whatever the order of reading)
//   kDisappearing: conversation_id, receipt_user_id (the member who set it),
//                  disappearing_s (the new timer, seconds; 0: off)
// An edit event read after the message was deleted carries an empty body
// (the delete removed every text of the message).
// kContact/kBlock profiles are as the stream's user saw them then: as it was
// when the block began if the subject blocked them (store.h, "Profiles under a
// block").
//
// `withheld` (blocking, DESIGN.md "Blocking"): the actor's watermark (the
// receipt's user, or a message's sender, whose send raises their own
// watermarks) now covers these seqs, which were withheld from the actor; they
// stay "sent" forever for everyone else. Only seqs this stream has not had
// listed are (above the actor's delivered watermark as this stream last
// carried it), so each is listed once per stream, and the list reads the
// same live and in sync. The actor's own stream carries every move of their
// watermark; the other member's misses those made by messages hidden from
// them (a mutual block), so its lists can reach further back.
struct StreamEvent {
  UserSeq user_seq = 0;
  EventKind kind = EventKind::kMessage;
  ConversationId conversation_id = 0;
  int64_t created_at = 0;
  std::optional<MessageRecord> message;
  UserId receipt_user_id = 0;
  Watermarks receipt;
  std::optional<ConversationRecord> conversation;
  std::vector<Seq> withheld;
  std::optional<ProfileRecord> profile;
  bool flag = false;
  PresenceVisibility presence_visibility = PresenceVisibility::kEveryone;
  std::optional<DraftRecord> draft;
  int64_t disappearing_s = 0;  // kDisappearing
  // Never stored: set by a gateway that merged later receipt events (same
  // conversation and user) into this one while they waited to be sent; their
  // user seqs, which the device will not get live.
  std::vector<UserSeq> also_covers;
};

// Where an append landed in one user's stream.
struct StreamPosition {
  UserId user_id = 0;
  UserSeq user_seq = 0;
};

// ---- Requests and results of the write operations ----

struct NewMessage {
  ConversationId conversation_id = 0;
  UserId sender_id = 0;
  DeviceId sender_device_id = 0;
  std::string client_id;
  std::string body;
  int64_t now = 0;
  int64_t accepted_at = 0;  // when core received the send request (0: = now)
  // The server-wide maximum age of a message, milliseconds (0: none): the
  // message expires this long after it is stored, or sooner by the
  // conversation's timer (ConversationRecord::disappearing_s).
  int64_t max_age_ms = 0;
};

// An edit, a delete for everyone or a delete-for-me of message
// (conversation_id, seq) by `user_id` (issue 12; protocol/message_edits.h).
struct MessageChange {
  int kind = 1;  // protocol::ChangeKind: 1 edit, 2 delete for everyone, 3 delete for me
  ConversationId conversation_id = 0;
  Seq seq = 0;
  UserId user_id = 0;
  DeviceId device_id = 0;
  std::string client_id;  // kEdit: the edit's idempotency id
  std::string body;       // kEdit: the new text
  int64_t now = 0;
  int64_t edit_window_ms = 0;    // the server's windows (protocol::ChangeWindows)
  int64_t delete_window_ms = 0;
  // A delete for everyone by the expiry job (ExpireMessages), not by a user:
  // no window, no actor rule; a message already deleted is a duplicate.
  bool expiry = false;
};

struct ChangeResult {
  // The message after the change (a tombstone after a delete); for a
  // duplicate, as it is now. For kEdit/kDelete `version` and the time are
  // the change's own (edited_at / deleted_at).
  MessageRecord message;
  int64_t version = 0;     // the change's version (kEdit, kDelete)
  int64_t changed_at = 0;  // when the change was accepted (the original time for a duplicate)
  bool duplicate = false;  // accepted before: nothing was appended
  // One event per receiving user, ascending user id: kEdit/kDelete go to every
  // member the message is visible to (not withheld from them by a block, not
  // deleted by them for themselves); kDeleteForMe only to the acting user.
  std::vector<StreamPosition> positions;
};

// The seqs of `seqs` (ascending) above `floor`: a withheld list as a stream
// that already had those up to `floor` listed reads it.
inline std::vector<Seq> SeqsAbove(const std::vector<Seq>& seqs, Seq floor) {
  std::vector<Seq> above;
  for (Seq s : seqs) {
    if (s > floor) above.push_back(s);
  }
  return above;
}

// Per-position withheld lists (AppendResult, ReceiptResult) are left empty
// when every list is: clears `lists` then.
inline void ClearIfNoneListed(std::vector<std::vector<Seq>>& lists) {
  for (const std::vector<Seq>& l : lists) {
    if (!l.empty()) return;
  }
  lists.clear();
}

struct AppendResult {
  MessageRecord message;  // the stored message (the original one for a duplicate)
  bool duplicate = false;  // true: (conversation, sender, client id) was already stored
  // One entry per member the message is visible to, in member order (the
  // sender always; a member who blocks the sender never); empty for a
  // duplicate (nothing new was appended).
  std::vector<StreamPosition> positions;
  // Per position: the seqs withheld from the sender that the sender's own
  // watermark now covers (see StreamEvent::withheld); usually empty. Same
  // length as positions, or empty when all are empty.
  std::vector<std::vector<Seq>> withheld;
  // Set when the send cleared the sender's draft in the conversation: the
  // kDraft event that announces it, in the sender's stream after the message.
  std::optional<StreamPosition> draft_cleared;
};

struct ReceiptUpdate {
  UserId user_id = 0;
  DeviceId device_id = 0;
  ConversationId conversation_id = 0;
  // 0 = no change; clamped to the last seq visible to the user (seqs
  // withheld from them by a block are never passed by their own watermarks
  // while they are the newest, so a receipt never reveals a block).
  Seq delivered = 0;
  Seq read = 0;       // 0 = no change; read implies delivered; clamped likewise
  int64_t now = 0;
};

struct ReceiptResult {
  bool changed = false;       // the user's aggregate moved
  bool read_changed = false;  // ... and its read watermark did
  Watermarks aggregate;       // the user's aggregate after the update
  // When changed: one receipt event per member, in member order.
  std::vector<StreamPosition> positions;
  // Per position: the seqs withheld from the user that the new aggregate
  // newly covers for that stream (see StreamEvent::withheld). Same length as
  // positions, or empty when all are empty.
  std::vector<std::vector<Seq>> withheld;
};

// Result of a profile, contact or block change.
struct SocialResult {
  bool changed = false;     // false: it was already so (nothing appended)
  ProfileRecord profile;    // the changed user's profile (profile change), or the contact's / blocked user's
                            // as the acting user sees it (store.h, "Profiles under a block")
  // When changed: where the event landed, one per receiving user.
  std::vector<StreamPosition> positions;
  // Unblock only: the owner's current profile and where a kProfile event
  // with it landed in the target's stream (the owner changed it during the
  // block and the target is in its audience); unset otherwise.
  std::optional<ProfileRecord> target_profile;
  std::optional<StreamPosition> target_position;
};

// A page of user search results.
struct SearchPage {
  std::vector<ProfileRecord> users;  // ascending username
  std::string next;                  // pass as `after` for the next page; "" when there is none
};

// ---- Message search (issue 12; docs/architecture.md "Message search") ----

// A search of the messages of `searcher`'s own conversations. `words` are
// the query's words as MessageWords (store/name_words.h) splits them: folded,
// distinct; each must match the start of a word of the message (a prefix
// match), all of them in the same message.
struct MessageSearchQuery {
  UserId searcher = 0;
  std::vector<std::string> words;    // non-empty
  ConversationId conversation_id = 0;  // 0: every conversation of the searcher
  int64_t before = 0;                // a previous page's `next`; 0: from the newest
  int limit = 0;
};

// Index matches a message search visits per page at most (the candidates it
// checks against membership and visibility), on every backend; past it the
// page ends early with a cursor, so one page's work is bounded however common
// the words are in conversations the searcher is not in.
inline constexpr int kMaxSearchCandidates = 2000;

struct MessageSearchPage {
  // Matching messages, newest indexed first (the order the store first
  // indexed them, which is the order it stored them); each exactly as
  // History shows it to the searcher.
  std::vector<MessageRecord> messages;
  // The search doc id of each message (parallel to `messages`): a page cut
  // after message i goes on with `before` = doc_ids[i].
  std::vector<int64_t> doc_ids;
  // Pass as `before` for the next page; 0 when there is none. A page may
  // hold fewer than `limit` messages and still have a next one (a backend
  // bounds the candidates it visits per page, kMaxSearchCandidates).
  int64_t next = 0;
};

// Work done by one IndexSearch step and what is left.
struct SearchIndexProgress {
  int indexed = 0;                // queue entries taken by this step
  int64_t backlog = 0;            // entries still queued after it
  int64_t oldest_queued_at = 0;   // when the oldest of them was queued (0: none)
  int64_t done_id = 0;            // SQLite: the last queue id indexed (sqlite_search.h); 0 elsewhere
};

// ---- Retention (issue 12; docs/architecture.md "Retention") ----

// Work done by one ExpireMessages step: every message it tombstoned, each as
// ChangeMessage's kDelete result (positions: one delete event per member the
// message is visible to).
struct ExpireProgress {
  std::vector<ChangeResult> expired;
  bool more = false;  // further expired messages are waiting (the step was full)
};

// Work done by one PurgeDeleted step.
struct PurgeProgress {
  int purged = 0;               // tombstones whose data this step removed
  int64_t edits_removed = 0;    // message_edits rows removed
  int64_t search_removed = 0;   // search index rows (and queued entries) removed
  int64_t backlog = 0;          // tombstones deleted before the cutoff still waiting
  int64_t cold_removed = 0;     // texts removed from cold blocks (cold tier; message and edit texts)
};

// ---- Cold tier (issue 12 item 6; docs/architecture.md "Cold tier") ----

// One compaction step. A conversation is taken once its oldest message not
// yet compacted was stored before `due_before`; then its messages stored
// before `stored_before` (ascending seq, up to the first younger one) are
// compacted into blocks of up to kColdBlockMessages (store/cold_block.h).
// REQUIRES: due_before <= stored_before. A due time earlier than the age
// itself lets a conversation gather a block's worth of old messages instead
// of being compacted one message at a time (core's rule: chat_retention.cc).
struct CompactRequest {
  int64_t stored_before = 0;
  int64_t due_before = 0;
  int max_messages = 0;  // the step stops before a block that would pass it (at least one block)
};

// Work done by one CompactMessages step.
struct CompactProgress {
  int messages = 0;              // texts moved into blocks
  int blocks = 0;                // blocks written
  int edits = 0;                 // edit texts moved into edit blocks (with their messages')
  int conversations = 0;         // conversations visited
  int64_t raw_bytes = 0;         // the blocks' size before compression (edit blocks included)
  int64_t compressed_bytes = 0;  // and after
  bool more = false;             // conversations still due (the step was full)
};

// ---- Stream trimming (issue 12; docs/architecture.md "Stream trimming") ----

// One TrimStreams step: which users to look at and what may go. A user's
// entry is trimmable when it is older than the horizon (created_at <
// older_than) or beyond the per-user cap (user_seq <= head - max_entries),
// unless a live device seen at or after protect_seen_since has not
// acknowledged it yet (user_seq > that device's cursor).
struct TrimRequest {
  UserId after_user = 0;          // visit users with id > after_user, ascending
  int max_users = 0;              // at most this many users per step (>= 1)
  int max_entries = 0;            // at most this many entries removed per step (>= 1)
  int64_t older_than = 0;         // entries created before this (ms) may go; 0: no time horizon
  int64_t max_entries_per_user = 0;  // keep at least the newest this many; 0: no cap
  int64_t protect_seen_since = 0; // devices seen at or after this (ms) keep what they still need

  // Whether the entry `seq`, created at `created_at`, of a stream whose head
  // is `head` is past the horizon or the cap (devices may still keep it).
  bool Trimmable(UserSeq seq, int64_t created_at, UserSeq head) const {
    return (older_than > 0 && created_at < older_than) ||
           (max_entries_per_user > 0 && seq <= head - max_entries_per_user);
  }
};

// Work done by one TrimStreams step.
struct TrimProgress {
  int64_t trimmed = 0;        // stream entries removed
  int users_trimmed = 0;      // users whose floor rose
  int users_visited = 0;      // users looked at
  UserId next_after_user = 0; // pass this as after_user next; 0: the pass reached the last user
  bool more = false;          // the entry budget ran out: call again at once
};

struct NewBulkUser {
  std::string username;       // canonical
  std::string password_hash;
  std::string token_hash;     // "" = create no device
  std::string device_name;
  std::string display_name;   // "" = none; set without a profile event (a new user has no audience)
};
struct BulkUserResult {
  UserId user_id = 0;
  DeviceId device_id = 0;  // 0 if no device was requested
};

struct OpenResult {
  ConversationRecord conversation;
  bool created = false;
  // When created: one conversation event per member, in member order.
  std::vector<StreamPosition> positions;
};

struct StreamPage {
  std::vector<StreamEvent> events;  // ascending user_seq, contiguous
  UserSeq head = 0;                 // the user's head user seq when the page was read
  UserSeq floor = 1;                // the lowest user seq still kept (head + 1 when all are trimmed)
  bool has_more = false;            // events after the last one exist
};

// A conversation as a new device first sees it.
struct ConversationSummary {
  // last_activity_at: of the last message visible to the user; last_seq: the
  // last seq visible to them.
  ConversationRecord conversation;
  std::vector<MessageRecord> latest;  // the newest messages, ascending seq
  std::vector<std::pair<UserId, Watermarks>> watermarks;  // each member's aggregate
  // Parallel to watermarks: the seqs withheld from that member (a block) that
  // its delivered watermark covers, ascending; they stay "sent" forever. The
  // union of the `withheld` lists of that member's receipt and message
  // events; always empty for the user themself.
  std::vector<std::vector<Seq>> withheld;
  int64_t unread = 0;  // visible messages not by the user above the user's read watermark
  DraftRecord draft;   // the user's draft in it (empty text: none)
};

// Where a conversation stands for one user, as a selective device's summary
// carries it (issue 12 item 3; docs/protocol.md "select_sync").
struct ConversationState {
  ConversationId conversation_id = 0;
  Seq last_seq = 0;    // the last seq visible to the user (ConversationSummary's)
  int64_t unread = 0;  // as ConversationSummary::unread counts it
};

struct ConversationPage {
  std::vector<ConversationSummary> conversations;  // latest visible activity first
  // Cursor for the next page: the last entry's place in the order, (its
  // activity as the store orders it, conversation id); has_more false when
  // there is none. Pass it back as it is: for the user's top conversation
  // the stored activity may be older than the summary's last_activity_at
  // (SQLite: "Member activity" in sqlite_store.cc).
  int64_t next_activity = 0;
  ConversationId next_id = 0;
  bool has_more = false;
};

// ---- Message timeline (issue 8) ----

// One device's receipt of one message: when its watermarks first covered it
// (0: not yet). The sending device has both at the message's stored_at.
struct DeviceTimeline {
  DeviceId device_id = 0;
  std::string name;
  std::string platform;
  bool sending_device = false;
  int64_t delivered_at = 0;
  int64_t read_at = 0;
};

struct MemberTimeline {
  UserId user_id = 0;
  std::string username;
  // The message is withheld from this member (they block the sender): never
  // delivered; its devices' times stay 0.
  bool withheld = false;
  std::vector<DeviceTimeline> devices;  // live devices, ascending id
};

struct MessageTimeline {
  MessageRecord message;
  int64_t accepted_at = 0;  // core received the send request
  int64_t stored_at = 0;    // the store wrote it in the transaction that made it durable
  std::vector<MemberTimeline> members;  // ascending user id
};

// ---- Operations (admin) ----

struct StoreSummary {
  std::string backend;      // "sqlite" or "postgres"
  int64_t users = 0;
  int64_t disabled_users = 0;
  int64_t live_devices = 0;
  int64_t conversations = 0;
  int64_t messages = 0;     // sum of the conversations' last seqs
  int64_t stream_events = 0;  // stream entries kept: the sum over users of head - floor + 1
  int64_t bytes = 0;        // database size on disk
};

struct SchemaStatus {
  std::string backend;
  int current = 0;  // the store's schema version
  int latest = 0;   // the newest version this build knows
  std::vector<int> pending;  // known versions not applied yet (applied on the next open)
};

struct BackupResult {
  std::string path;
  int64_t bytes = 0;
  int64_t pages = 0;
  int64_t took_ms = 0;
};

// Result of disabling (or enabling) a user.
struct DisableResult {
  bool changed = false;              // false: it already was so
  std::vector<DeviceId> revoked;     // devices revoked (when asked to)
};

// What EraseAccount removed (admin API, docs/operations.md "User erase").
struct EraseResult {
  std::string username;           // the name the account had
  std::string erased_username;    // its name now (kErasedUsernamePrefix + id)
  std::vector<DeviceId> revoked;  // devices that were live (their connections must close)
  int64_t devices = 0;            // device rows anonymised (live or not)
  int64_t contacts = 0;           // contact rows removed, both directions
  int64_t blocks = 0;             // block rows removed, both directions
  int64_t drafts = 0;
  int64_t stream_events = 0;      // events of the user's own stream removed
};

// An erased account's username: this prefix and its id. '~' is not allowed
// in usernames (protocol::CanonicalUsername), so no one can register it.
inline constexpr const char* kErasedUsernamePrefix = "~erased-";

struct Snapshot {
  UserSeq head = 0;
  std::vector<ConversationSummary> conversations;  // most recent activity first
};


// ---- Push notifications (issue 11; docs/architecture.md "Push") ----

// What a push job is about: a new message (an alert), or only the badge (a
// silent push after a read on another device).
enum class PushKind : int {
  kMessage = 1,
  kBadge = 2,
};

// A request to push to a user's devices, made by core after a message or a
// read committed. The store turns it into at most one pending job per device
// (push_jobs, keyed by device): a device that already has a pending job gets
// that job updated to the latest state (coalescing) instead of a second one.
struct PushRequest {
  UserId user_id = 0;
  ConversationId conversation_id = 0;
  Seq seq = 0;               // the message's seq (kMessage) or the new read watermark (kBadge)
  PushKind kind = PushKind::kMessage;
  std::vector<DeviceId> skip_devices;  // in the foreground (or the device that read): no push
  int64_t now = 0;
  // A device's next push is due no earlier than its last one + this
  // (one push per device per window).
  int64_t coalesce_ms = 0;
};

// One claimed job, with everything the provider needs.
struct PushJob {
  DeviceId device_id = 0;
  UserId user_id = 0;
  std::string provider;  // as the device registered it ("webhook", "apns", "fcm")
  std::string token;     // the device's push token (or URL)
  ConversationId conversation_id = 0;
  Seq seq = 0;
  PushKind kind = PushKind::kMessage;
  // kMessage only: false when the message was read (on another device)
  // before the job was sent; such a push goes out silent, with the badge.
  bool alert = false;
  UserId sender_id = 0;             // kMessage
  std::string sender_display_name;  // the sender's display name, or username when none
  bool previews = true;             // the user's setting
  std::string preview;              // the message body when previews are on and alert; else ""
  // Set when the preview was left out because the message's compacted text
  // could not be paged in (Store::ClaimPushJobs): why, for the log.
  std::string preview_error;
  int64_t badge = 0;                // the user's unread total when claimed
  int64_t version = 0;              // bumped by each update of the job (see CompletePush)
  int attempts = 0;                 // failed attempts so far
  int64_t created_at = 0;           // when the job was first queued
};

enum class PushOutcome : int {
  kDelivered = 0,  // the provider took it (2xx)
  kRetry = 1,      // 5xx, timeout, connection failure: try again at retry_at
  kRejected = 2,   // other 4xx: dropped, no retry
  kGone = 3,       // 410: the endpoint is removed
};

struct PushCompletion {
  DeviceId device_id = 0;
  std::string node;         // the claiming node
  int64_t version = 0;      // the claimed job's version
  ConversationId conversation_id = 0;  // the claimed job's key, recorded as the last one sent
  Seq seq = 0;
  PushKind kind = PushKind::kMessage;
  PushOutcome outcome = PushOutcome::kDelivered;
  std::string result;       // short text for the health record: "200", "500", "timeout", ...
  int64_t now = 0;
  int64_t retry_at = 0;     // kRetry: when to try again
  int max_attempts = 0;     // kRetry: a job that failed this many times is dropped
  int64_t coalesce_ms = 0;  // kDelivered on an updated job: its next push is due at now + this
};

// A device's push endpoint and its health, for its user's devices.
struct PushHealth {
  DeviceId device_id = 0;
  std::string provider;
  int64_t registered_at = 0;
  int64_t last_attempt_at = 0;   // 0: never tried
  std::string last_result;       // "" (never), "ok", or the failure ("500", "timeout", "410", ...)
  int64_t last_success_at = 0;
  int64_t failure_count = 0;     // failed attempts since registration
  bool pending = false;          // a job is queued for the device
};

struct PushQueueStats {
  int64_t pending = 0;    // jobs queued
  int64_t leased = 0;     // jobs held by a node's unexpired lease
  int64_t endpoints = 0;  // registered endpoints
};

// ---- Export (the admin API's /admin/v1/export, read by the delivery
// checker, docs/checker.md) ----
//
// Each table is read in pages ordered by its key columns (the first
// ExportKeyColumns(table) columns), keyset-paginated: a page holds the rows
// whose key is above `after`. All values are integers except the last column
// of kMessages (client_id), returned in ExportRow::text.
enum class ExportTable : int {
  kDevices = 0,   // id, user_id, revoked (0/1)
  kMembers,       // conversation_id, user_id
  kMessages,      // conversation_id, seq, sender_id, sender_device_id, expires_at (0: never), client_id (text)
  kWithheld,      // conversation_id, user_id, seq: the message is withheld from user_id (a block)
  kStream,        // user_id, user_seq, kind (EventKind), conversation_id, seq (kMessage, kEdit..kDeleteForMe),
                  // receipt_user_id, delivered, read (kReceipt; kEdit/kDelete: version in delivered;
                  // kDisappearing: the actor in receipt_user_id, the timer's seconds in delivered)
  kHeads,         // user_id, head, floor (the lowest user seq kept)
  kReceipts,      // conversation_id, user_id, delivered, read: the user's aggregate watermarks
  kBlocks,        // owner_id, target_id
};
inline constexpr int kExportTableCount = 8;

struct ExportRow {
  std::vector<int64_t> values;  // the integer columns, in order
  std::string text;             // kMessages: client_id
};

struct ExportPage {
  std::vector<ExportRow> rows;
  bool has_more = false;  // more rows after the last one
};

// The table's name in the admin API ("devices", "members", "messages",
// "withheld", "stream", "heads", "receipts", "blocks").
const char* ExportTableName(ExportTable t);
// Parses a name; nullopt if unknown.
std::optional<ExportTable> ExportTableFromName(const std::string& name);
// Column names, in order (kMessages ends with "client_id").
std::vector<std::string> ExportColumns(ExportTable t);
// How many leading columns form the key (and `after`).
int ExportKeyColumns(ExportTable t);

}  // namespace parley::store
