// Protocol v1: the frames the server sends (responses, errors, events) and
// the WebSocket close codes. Formats are documented in docs/protocol.md.
//
// Events are serialised once per user (their user_seq differs per user) and
// shared by every device of that user. Pure functions; safe on any thread.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "protocol/json_writer.h"
#include "store/types.h"

namespace parley::protocol {

// WebSocket close codes Parley uses (besides RFC 6455's own 1000-1011).
enum class CloseCode : uint16_t {
  kNormal = 1000,
  kInvalidUtf8Frame = 1007,    // a text frame that is not UTF-8 (RFC 6455)
  kTooBig = 1009,              // frame above kHardMaxFrameBytes (RFC 6455)
  kServerShutdown = 4001,      // reconnect later: wait the reason's retry_after_ms (with jitter)
  kDeviceRevoked = 4002,       // logged out or unlinked: the token is gone, do not reconnect with it
  kResync = 4003,              // the server could not keep up with this connection: reconnect and sync
  kHeartbeatTimeout = 4004,    // nothing heard from the client within the heartbeat timeout
  kAccountDisabled = 4005,     // the operator disabled the account; the token is kept: reconnect after retry_after_ms
};

// {"v":1,"type":"response","id":<id>,"op":"<type>","result":{...}}
// `fill` writes the fields of "result" (the writer is inside that object).
std::string EncodeResponse(std::string_view id_json, std::string_view op, const std::function<void(JsonWriter&)>& fill);

// {"v":1,"type":"error","id":<id or null>,"op":"<type or null>","code":"...","message":"...","retryable":bool
//  [,"retry_after_ms":N]}
std::string EncodeError(std::string_view id_json, std::string_view op, const Status& status, int64_t retry_after_ms = 0);

// {"v":1,"type":"event","event":{...}}
std::string EncodeEvent(const store::StreamEvent& event);

// The wire name of an event kind ("message", "edit", ...), and every kind
// (docs_test checks that docs/protocol.md documents each).
std::string_view EventKindName(store::EventKind kind);
const std::vector<store::EventKind>& AllEventKinds();

// The object of one event (as in "event" above and in sync pages).
void WriteEvent(JsonWriter& w, const store::StreamEvent& event);
void WriteMessage(JsonWriter& w, const store::MessageRecord& m);
// `with_state`: include last_seq (responses and snapshots). Conversation
// events leave it out so that an event reads the same live and through sync.
void WriteConversation(JsonWriter& w, const store::ConversationRecord& c, bool with_state = true);

// Selective sync (issue 12 item 3): a conversation the device does not sync
// in full, in place of its events. `covers` are inclusive, ascending,
// disjoint ranges of user seqs; the entry's user_seq is the first covered.
//   {"user_seq":F,"kind":"summary","conversation_id":C,"last_seq":S,"unread":U,"covers":[[F,T],...]}
using SeqRanges = std::vector<std::pair<int64_t, int64_t>>;
// The kinds a selective device gets as a summary when their conversation is
// not selected: message, receipt, edit, delete, delete_for_me (the same
// list as PeekEventFrame's, protocol/frames.h). Every other kind (conversation,
// profile, contact, block, privacy, mute, push_previews, draft,
// disappearing) is always sent in full: small, and about the user rather than
// a conversation's log. So is an event that lists withheld seqs (blocking).
bool SummarisedInSelectiveSync(const store::StreamEvent& e);
void WriteSyncSummary(JsonWriter& w, const store::ConversationState& state, const SeqRanges& covers);
// The live form: {"v":1,"type":"event","event":<summary covering user_seq alone>}.
std::string EncodeSummaryEvent(const store::ConversationState& state, int64_t user_seq);

// {"user_id", "username", "display_name", "about"}
void WriteProfile(JsonWriter& w, const store::ProfileRecord& p);
// A conversation-list entry or snapshot entry.
void WriteSummary(JsonWriter& w, const store::ConversationSummary& s);
// The fields of a history response: "messages", "has_more" and, when any
// message of the page stays "sent" forever (MessageRecord::stays_sent),
// "withheld": their seqs. Only the newest messages of the page that fit in
// `max_bytes` (at least one): the older ones are the next page's.
void WriteHistory(JsonWriter& w, const std::vector<store::MessageRecord>& page, size_t max_bytes);
// The fields of a search_messages response: "messages", "next" and, when
// any stays "sent" forever, "withheld" ({conversation_id, seq} each). Only
// the first messages of the page that fit in `max_bytes` (at least one):
// "next" then goes on after the last of them.
void WriteSearchResults(JsonWriter& w, const store::MessageSearchPage& page, size_t max_bytes);

// How many of `count` items fit in `budget` bytes when the n-th is written by
// `write(writer, n)` as an element of an array: at least one (so that a page
// always moves its cursor).
template <typename Write>
size_t ItemsThatFit(size_t count, size_t budget, Write&& write) {
  JsonWriter scratch;
  scratch.BeginArray();
  size_t used = 0;
  for (size_t n = 0; n < count; ++n) {
    const JsonWriter::Mark mark = scratch.Here();
    write(scratch, n);
    used += scratch.size() - mark.bytes + 1;  // and its comma
    scratch.Rewind(mark);
    if (used > budget) return n == 0 ? 1 : n;
  }
  return count;
}

// Writes a page of `count` items with `write_page(writer, n)` (n: how many
// to include); when it comes out larger than `budget` bytes, rewinds and
// writes it again with only the items that fit, measured one by one with
// `write_item(writer, i)` in the order they are kept (i = 0 the first kept).
// So the common page is written once, and only an oversize one twice.
template <typename WritePage, typename WriteItem>
void WritePageWithin(JsonWriter& w, size_t count, size_t budget, WritePage&& write_page, WriteItem&& write_item) {
  const JsonWriter::Mark start = w.Here();
  write_page(w, count);
  if (w.size() - start.bytes <= budget) return;
  const size_t fit = ItemsThatFit(count, budget, write_item);
  w.Rewind(start);
  write_page(w, fit);
}

// {"v":1,"type":"typing","conversation_id":C,"user_id":U,"state":"start"|"stop","expires_in_ms":N}
// Ephemeral: not in the user stream, no user_seq.
std::string EncodeTyping(int64_t conversation_id, int64_t user_id, bool typing, int64_t expires_in_ms);

// {"v":1,"type":"head","head":N}: the user's newest user seq, sent unasked
// after this node was cut off from the others (live events may have been
// lost on the way); a device behind it syncs (docs/protocol.md, "Frames").
std::string EncodeHeadNotice(int64_t head);

// {"v":1,"type":"presence","user_id":U,"online":B[,"last_seen":T]}
// Ephemeral. `last_seen` 0 (unknown or not visible) leaves the field out.
std::string EncodePresence(int64_t user_id, bool online, int64_t last_seen);
// The wire word of a presence visibility setting: everyone, contacts, nobody.
std::string_view PresenceVisibilityName(store::PresenceVisibility v);
// One entry of a presence list: {"user_id":U,"online":B[,"last_seen":T]}.
void WritePresence(JsonWriter& w, int64_t user_id, bool online, int64_t last_seen);
// A device's push endpoint health (list_devices' "push"; issue 11).
void WritePushHealth(JsonWriter& w, const store::PushHealth& h);

// The JSON reason text for a close frame that asks the client to wait:
// {"retry_after_ms":N}
std::string RetryAfterReason(int64_t retry_after_ms);

}  // namespace parley::protocol
