// The delivery checker's logic (the `parley-check` tool, docs/checker.md):
// reads the SDK's per-device histories (ClientOptions::history_path) and the
// server's final state (the admin API's /admin/v1/export tables) and counts
// violations of the delivery guarantees of DESIGN.md: lost, duplicated,
// reordered, gaps, leaks, receipt regressions and divergences, receipt
// leaks (withheld seqs not kept "sent" by the events' `withheld` lists), and
// for edits, deletes and drafts, devices of a user that do not converge on
// their stream's final view (version, resurrection, hidden and draft
// divergences); for retention, expired texts that are still shown and
// devices whose conversation timers diverge.
//
// Pure functions over in-memory data: no I/O except LoadHistoryFile and
// LoadStateFile, which read one file each. Not thread-safe beyond that (no
// shared state). Errors (unreadable file, malformed line) come back as a
// message naming the file and line; the caller exits 2.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

namespace parley::checker {

// The server's final state, from the export tables.
struct ServerMessage {
  int64_t sender_id = 0;
  int64_t sender_device_id = 0;
  std::string client_id;
  int64_t expires_at = 0;  // when it expires (server ms since epoch); 0: never (or an export without the column)
};

struct StreamEntry {
  // store::EventKind: 1 message, 2 receipt, ... 10 edit, 11 delete, 12 delete for me, 13 draft, 14 timer
  int64_t kind = 0;
  int64_t conversation_id = 0;
  int64_t seq = 0;   // message, edit, delete, delete for me: the message's seq
  int64_t receipt_user_id = 0;  // receipt: whose watermarks; timer: who set it
  // receipt: the watermark; edit and delete: the message's new version;
  // timer (`disappearing`): its seconds (0: off)
  int64_t delivered = 0;
  int64_t read = 0;
};

struct ServerState {
  std::map<int64_t, int64_t> device_user;                          // device id -> user id
  std::map<int64_t, std::set<int64_t>> members;                    // conversation -> users
  std::map<std::pair<int64_t, int64_t>, ServerMessage> messages;   // (conversation, seq)
  std::set<std::tuple<int64_t, int64_t, int64_t>> withheld;        // (conversation, user, seq)
  std::map<int64_t, std::map<int64_t, StreamEntry>> streams;       // user -> user seq -> entry
  std::map<int64_t, int64_t> heads;                                // user -> head user seq
  // user -> lowest user seq still kept (the stream was trimmed below it;
  // absent: 1, nothing trimmed). From the export's optional third `heads`
  // column, `floor`.
  std::map<int64_t, int64_t> floors;
  std::map<std::pair<int64_t, int64_t>, std::pair<int64_t, int64_t>> receipts;  // (conv, user) -> (delivered, read)
  std::set<std::pair<int64_t, int64_t>> blocks;                    // (owner, target)
  // When the export was read (the reader's clock, ms since epoch; 0: not
  // known, as in a state saved before it was recorded): messages expired
  // well before it must be deleted in the streams.
  int64_t exported_at = 0;
};

// One record of a history file, with where it came from.
struct Record {
  std::string file;
  int64_t line = 0;
  nlohmann::json j;
};

struct DeviceHistory {
  std::string file;
  std::vector<Record> records;
};

struct Counts {
  // What was checked.
  int64_t devices = 0;
  int64_t finished_devices = 0;
  int64_t current_devices = 0;  // finished at their user's final head: receipt views compared
  int64_t messages = 0;  // on the server
  int64_t acked = 0;     // distinct messages acknowledged to some device
  int64_t delivered = 0; // message deliveries applied by devices (live, sync, snapshot)
  int64_t resent = 0;    // messages acknowledged more than once (resends), every ack checked against the first
  int64_t withheld_listed = 0;  // (conversation, user, seq) withheld seqs seen listed in a receipt/message event
  int64_t views = 0;             // current devices whose final `view` record was compared
  int64_t changed_messages = 0;  // (user, message) pairs the user's stream edits, deletes or hides
  int64_t draft_conversations = 0;  // (user, conversation) pairs with a `draft` event in the user's stream
  int64_t timer_changes = 0;      // disappearing timers set or turned off (one per change, from the setter's stream)
  int64_t expiring_messages = 0;  // messages on the server with an expires_at
  int64_t expired_messages = 0;   // ... expired long enough before the export to be judged deleted
  // Failures (any non-zero fails the check).
  int64_t lost = 0;
  int64_t duplicated = 0;
  int64_t reordered = 0;
  int64_t gaps = 0;
  int64_t leaks = 0;
  int64_t receipt_regressions = 0;
  int64_t receipt_divergences = 0;
  int64_t phantoms = 0;  // a device applied a message the server does not have
  // A withheld seq whose watermark crossing reached a device without being
  // listed in the event's `withheld` (its sender would see it delivered),
  // or a listed seq that is not withheld, or listed twice.
  int64_t receipt_leaks = 0;
  // Edits, deletes and drafts (docs/checker.md, "Final views"): a current
  // device whose message ends at another version or deleted state than its
  // user's stream says (or another text at the same version than another
  // device of the user); a message deleted for everyone that shows a body or
  // comes back undeleted on a device; a message deleted for me shown on one
  // of the user's devices (or hidden where it never was); a device whose
  // draft of a conversation is not the last one in server order.
  int64_t version_divergences = 0;
  int64_t resurrections = 0;
  int64_t hidden_divergences = 0;
  int64_t draft_divergences = 0;
  // Retention (docs/checker.md, "Expiry"): the text of a message after its
  // expires_at — in a sync page or snapshot answered after it, in a device's
  // final view at or after it by the device's clock, in a stream that still
  // has no delete for it long after it, or a message stored under a timer
  // that never expires; and a device whose conversation timer is not the
  // last one its user's stream set.
  int64_t expired_shown = 0;
  int64_t timer_divergences = 0;

  bool ok() const {
    return lost == 0 && duplicated == 0 && reordered == 0 && gaps == 0 && leaks == 0 && receipt_regressions == 0 &&
           receipt_divergences == 0 && phantoms == 0 && receipt_leaks == 0 && version_divergences == 0 &&
           resurrections == 0 && hidden_divergences == 0 && draft_divergences == 0 && expired_shown == 0 &&
           timer_divergences == 0;
  }
};

struct Finding {
  std::string category;  // a Counts failure field name
  std::string detail;    // what and where (file:line when a record is to blame)
};

struct Report {
  Counts counts;
  std::vector<Finding> findings;  // one per counted failure, in the order found
};

// Reads one history file (JSONL). Returns false and sets *error
// ("FILE:LINE: what") on an unreadable file or a malformed record.
bool LoadHistoryFile(const std::string& path, DeviceHistory* out, std::string* error);
// Every *.jsonl file in `dir` (sorted by name); false on an error or none found.
bool LoadHistoryDir(const std::string& dir, std::vector<DeviceHistory>* out, std::string* error);

// The saved export: {"format":"parley-export-1","exported_at":MS,"tables":{NAME:{"columns":[...],"rows":[...]}}}
// ("exported_at" optional; the messages table with or without "expires_at").
bool ParseState(const nlohmann::json& j, ServerState* out, std::string* error);
bool LoadStateFile(const std::string& path, nlohmann::json* raw, std::string* error);

// Runs every check. Returns false and sets *error when the histories
// contradict themselves (one file holding two devices).
bool Check(const std::vector<DeviceHistory>& histories, const ServerState& state, Report* report, std::string* error);

// {"acked":..,"lost":..,...,"ok":true}
nlohmann::json CountsJson(const Counts& c);
// Human-readable lines: counts, then up to `max_findings` findings.
std::string FormatReport(const Report& r, size_t max_findings);

}  // namespace parley::checker
