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

struct UserRecord {
  UserId id = 0;
  std::string username;       // canonical (lower-case) form
  std::string password_hash;  // libsodium crypto_pwhash_str output
  int64_t created_at = 0;
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

struct MemberRecord {
  UserId user_id = 0;
  std::string username;
};

struct ConversationRecord {
  ConversationId id = 0;
  std::vector<MemberRecord> members;  // ordered by user id
  Seq last_seq = 0;
  int64_t created_at = 0;
  int64_t last_activity_at = 0;  // time of the last message (created_at if none)
};

// A stored message. `seq` is its conversation seq.
struct MessageRecord {
  ConversationId conversation_id = 0;
  Seq seq = 0;
  UserId sender_id = 0;
  DeviceId sender_device_id = 0;
  std::string client_id;
  std::string body;
  int64_t created_at = 0;
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
};

// One entry of a user's event stream. Which fields are set depends on kind:
//   kMessage:      conversation_id, message
//   kReceipt:      conversation_id, receipt_user_id, receipt
//   kConversation: conversation_id, conversation
struct StreamEvent {
  UserSeq user_seq = 0;
  EventKind kind = EventKind::kMessage;
  ConversationId conversation_id = 0;
  int64_t created_at = 0;
  std::optional<MessageRecord> message;
  UserId receipt_user_id = 0;
  Watermarks receipt;
  std::optional<ConversationRecord> conversation;
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
};

struct AppendResult {
  MessageRecord message;  // the stored message (the original one for a duplicate)
  bool duplicate = false;  // true: (conversation, sender, client id) was already stored
  // One entry per member, in member order; empty for a duplicate (nothing new
  // was appended).
  std::vector<StreamPosition> positions;
};

struct ReceiptUpdate {
  UserId user_id = 0;
  DeviceId device_id = 0;
  ConversationId conversation_id = 0;
  Seq delivered = 0;  // 0 = no change; clamped to the conversation's last seq
  Seq read = 0;       // 0 = no change; read implies delivered
  int64_t now = 0;
};

struct ReceiptResult {
  bool changed = false;  // the user's aggregate moved
  Watermarks aggregate;  // the user's aggregate after the update
  // When changed: one receipt event per member, in member order.
  std::vector<StreamPosition> positions;
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
  bool has_more = false;            // events after the last one exist
};

// A conversation as a new device first sees it.
struct ConversationSummary {
  ConversationRecord conversation;
  std::vector<MessageRecord> latest;  // the newest messages, ascending seq
  std::vector<std::pair<UserId, Watermarks>> watermarks;  // each member's aggregate
  int64_t unread = 0;  // messages not by the user above the user's read watermark
};

struct Snapshot {
  UserSeq head = 0;
  std::vector<ConversationSummary> conversations;  // most recent activity first
};

}  // namespace parley::store
