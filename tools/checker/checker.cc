// The checks, in three passes (docs/checker.md, "What is checked"):
//
//  1. The server on its own: duplicate (conversation, sender, client id)
//     rows; every member's stream holds each message visible to them exactly
//     once (lost / duplicated / leaks); streams have no gaps below their
//     head; receipt events of a stream never go backwards; a message its
//     sender stored under a disappearing timer has an expiry, and one that
//     expired well before the export is deleted in every stream it reached
//     (expired_shown).
//  2. Each device's history, replayed in file order: the applied user seqs
//     follow each other (gaps), message deliveries are never repeated
//     (duplicated) and rise per conversation (reordered), never reach a
//     non-member or a blocker the message was withheld from (leaks), receipt
//     watermarks never fall (receipt_regressions); acks match the server
//     (lost); compose order matches seq order (reordered). A device whose
//     history ends caught up must hold every message of its stream up to the
//     caught-up head (lost), and when that head is the server's head its
//     receipt view must equal the stream's (receipt_divergences). A message
//     a device knows deleted for everyone never comes back (resurrections);
//     a sync page or snapshot answered after a message expired never
//     carries its text (expired_shown).
//  3. Each user's current devices, from their final `view` records: every
//     message at the version and deleted state of the user's stream, one
//     text per version, hidden exactly where the user deleted it for
//     themself, and each conversation's draft the last one in server order
//     (version_divergences, resurrections, hidden_divergences,
//     draft_divergences); no text of a message its clock saw expire, which
//     may be a tombstone before the server's delete event came
//     (expired_shown), and each conversation's disappearing timer the last
//     one its user's stream set (timer_divergences).
//
// One defect is counted once, in one category: a user seq the device never
// applied is a gap, not also a lost message; a stream entry the server never
// wrote is counted by pass 1, not again for each device.
#include "checker.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace parley::checker {

using nlohmann::json;

namespace {

constexpr int64_t kKindMessage = 1;  // store::EventKind::kMessage
constexpr int64_t kKindReceipt = 2;  // store::EventKind::kReceipt
constexpr int64_t kKindEdit = 10;        // store::EventKind::kEdit (delivered: the new version)
constexpr int64_t kKindDelete = 11;      // store::EventKind::kDelete (delivered: the tombstone's version)
constexpr int64_t kKindDeleteForMe = 12; // store::EventKind::kDeleteForMe
constexpr int64_t kKindDraft = 13;       // store::EventKind::kDraft
constexpr int64_t kKindTimer = 14;       // store::EventKind::kDisappearing (delivered: the seconds; 0: off)
// Retention (docs/checker.md, "Expiry"). History `ts` values (the devices'
// wall clocks, not their skewed app clocks) and the server's expires_at are
// compared across machines' clocks: only a record this long after a
// message's expiry counts as after it.
constexpr int64_t kExpiryClockSlackMs = 1000;
// The server's expiry step runs every --expiry-interval-ms (1 s by default):
// a message expired this long before the export must be deleted in every
// stream it reached.
constexpr int64_t kExpiryGraceMs = 3000;

std::string Where(const Record& r) { return r.file + ":" + std::to_string(r.line); }

std::string MsgName(int64_t conv, int64_t seq) {
  return "message " + std::to_string(conv) + "/" + std::to_string(seq);
}

bool IsInt(const json& j, const char* key) { return j.contains(key) && j[key].is_number_integer(); }

// Field checks for each record kind: a record missing what its kind needs is
// malformed input (exit 2), not a failed check.
std::string Validate(const json& j) {
  if (!j.is_object()) return "not a JSON object";
  for (const char* k : {"n", "ts", "user", "device"}) {
    if (!IsInt(j, k)) return std::string("missing integer field \"") + k + "\"";
  }
  if (!j.contains("ev") || !j["ev"].is_string()) return "missing string field \"ev\"";
  std::string ev = j["ev"];
  auto need_ints = [&](std::initializer_list<const char*> keys) -> std::string {
    for (const char* k : keys) {
      if (!IsInt(j, k)) return "\"" + ev + "\" record without integer \"" + k + "\"";
    }
    return "";
  };
  auto need_str = [&](const char* k) -> std::string {
    if (!j.contains(k) || !j[k].is_string()) return "\"" + ev + "\" record without string \"" + k + "\"";
    return "";
  };
  // Optional fields (added with edits and deletes; older files lack them):
  // when present they must have their type.
  auto opt_ok = [](const json& o, const char* k, json::value_t t) {
    if (!o.contains(k)) return true;
    if (t == json::value_t::number_integer) return o[k].is_number_integer();
    return o[k].type() == t;
  };
  auto check_message = [&](const json& m) -> std::string {
    if (!m.is_object() || !IsInt(m, "conversation_id") || !IsInt(m, "seq") || !IsInt(m, "sender_id") ||
        !m.contains("client_id") || !m["client_id"].is_string() ||
        !opt_ok(m, "version", json::value_t::number_integer) || !opt_ok(m, "deleted", json::value_t::boolean) ||
        !opt_ok(m, "body_hash", json::value_t::string))
      return "\"" + ev + "\" record with a malformed message";
    return "";
  };
  if (ev == "compose") {
    if (auto e = need_str("client_id"); !e.empty()) return e;
    if (auto e = need_str("peer"); !e.empty()) return e;
    return need_ints({"order"});
  }
  if (ev == "send" || ev == "send_failed") return need_str("client_id");
  if (ev == "ack") {
    if (auto e = need_str("client_id"); !e.empty()) return e;
    return need_ints({"conversation_id", "seq"});
  }
  if (ev == "open" || ev == "resume") {
    if (!j.contains("cursor") || !(j["cursor"].is_null() || j["cursor"].is_number_integer()))
      return "\"" + ev + "\" record without \"cursor\" (integer or null)";
    return "";
  }
  if (ev == "caught_up") return need_ints({"head", "applied"});
  if (ev == "snapshot") {
    if (auto e = need_ints({"head"}); !e.empty()) return e;
    if (!j.contains("messages") || !j["messages"].is_array() || !j.contains("watermarks") ||
        !j["watermarks"].is_array())
      return "\"snapshot\" record without \"messages\" and \"watermarks\" arrays";
    for (const auto& m : j["messages"]) {
      if (auto e = check_message(m); !e.empty()) return e;
    }
    for (const auto& w : j["watermarks"]) {
      if (!w.is_object() || !IsInt(w, "conversation_id") || !IsInt(w, "user_id") || !IsInt(w, "delivered") ||
          !IsInt(w, "read"))
        return "\"snapshot\" record with a malformed watermark";
    }
    return "";
  }
  if (ev == "history") {
    if (!j.contains("messages") || !j["messages"].is_array()) return "\"history\" record without \"messages\"";
    for (const auto& m : j["messages"]) {
      if (auto e = check_message(m); !e.empty()) return e;
    }
    return "";
  }
  if (ev == "event") {
    if (auto e = need_ints({"user_seq"}); !e.empty()) return e;
    if (auto e = need_str("kind"); !e.empty()) return e;
    if (auto e = need_str("source"); !e.empty()) return e;
    if (j["kind"] == "message") {
      if (!j.contains("message")) return "\"event\" message record without \"message\"";
      if (auto e = check_message(j["message"]); !e.empty()) return e;
    }
    if (j["kind"] == "receipt") {
      if (auto e = need_ints({"conversation_id", "user_id", "delivered", "read"}); !e.empty()) return e;
    }
    if (!opt_ok(j, "conversation_id", json::value_t::number_integer) ||
        !opt_ok(j, "seq", json::value_t::number_integer) || !opt_ok(j, "version", json::value_t::number_integer) ||
        !opt_ok(j, "body_hash", json::value_t::string) || !opt_ok(j, "draft_hash", json::value_t::string) ||
        !opt_ok(j, "seconds", json::value_t::number_integer))
      return "\"event\" record with a malformed conversation_id, seq, version, body_hash, draft_hash or seconds";
    if (j.contains("also_covers") && !j["also_covers"].is_array()) return "\"also_covers\" is not an array";
    if (j["kind"] == "summary") {
      // Selective sync: a summary stands for the user seqs of its ranges.
      if (auto e = need_ints({"conversation_id"}); !e.empty()) return e;
      bool ok = j.contains("covers") && j["covers"].is_array() && !j["covers"].empty();
      for (size_t i = 0; ok && i < j["covers"].size(); ++i) {
        const json& range = j["covers"][i];
        ok = range.is_array() && range.size() == 2 && range[0].is_number_integer() && range[1].is_number_integer() &&
             range[0].get<int64_t>() <= range[1].get<int64_t>();
      }
      if (!ok) return "\"event\" summary record without well-formed \"covers\" ranges";
    }
    if (j.contains("withheld")) {
      if (!j["withheld"].is_array()) return "\"withheld\" is not an array";
      for (const auto& w : j["withheld"]) {
        if (!w.is_number_integer()) return "\"withheld\" holds a non-integer";
      }
    }
    return "";
  }
  if (ev == "view") {
    if (!j.contains("messages") || !j["messages"].is_array() || !j.contains("drafts") || !j["drafts"].is_array())
      return "\"view\" record without \"messages\" and \"drafts\" arrays";
    for (const auto& m : j["messages"]) {
      if (!m.is_object() || !IsInt(m, "conversation_id") || !IsInt(m, "seq") || !IsInt(m, "version") ||
          !m.contains("deleted") || !m["deleted"].is_boolean() || !m.contains("hidden") || !m["hidden"].is_boolean() ||
          !m.contains("body_hash") || !m["body_hash"].is_string())
        return "\"view\" record with a malformed message";
    }
    for (const auto& d : j["drafts"]) {
      if (!d.is_object() || !IsInt(d, "conversation_id") || !d.contains("draft_hash") || !d["draft_hash"].is_string())
        return "\"view\" record with a malformed draft";
    }
    if (!opt_ok(j, "clock", json::value_t::number_integer)) return "\"view\" record whose \"clock\" is not an integer";
    if (j.contains("timers")) {
      if (!j["timers"].is_array()) return "\"view\" record whose \"timers\" is not an array";
      for (const auto& t : j["timers"]) {
        if (!t.is_object() || !IsInt(t, "conversation_id") || !IsInt(t, "seconds"))
          return "\"view\" record with a malformed timer";
      }
    }
    if (j.contains("summarised")) {
      if (!j["summarised"].is_array()) return "\"view\" record whose \"summarised\" is not an array";
      for (const auto& c : j["summarised"]) {
        if (!c.is_number_integer()) return "\"view\" record whose \"summarised\" holds a non-integer";
      }
    }
    if (j.contains("held")) {
      if (!j["held"].is_array()) return "\"view\" record whose \"held\" is not an array";
      for (const auto& h : j["held"]) {
        bool ok = h.is_object() && IsInt(h, "conversation_id") && h.contains("ranges") && h["ranges"].is_array();
        for (size_t i = 0; ok && i < h["ranges"].size(); ++i) {
          const json& range = h["ranges"][i];
          ok = range.is_array() && range.size() == 2 && range[0].is_number_integer() && range[1].is_number_integer();
        }
        if (!ok) return "\"view\" record with a malformed \"held\" entry";
      }
    }
    return "";
  }
  return "";  // disconnect, stop and kinds added later: nothing to check
}

}  // namespace

bool LoadHistoryFile(const std::string& path, DeviceHistory* out, std::string* error) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    *error = path + ": cannot read the history file";
    return false;
  }
  out->file = path;
  out->records.clear();
  std::string line;
  int64_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.empty()) continue;
    json j = json::parse(line, nullptr, false);
    // A last line without '\n' that does not parse was torn by a kill in
    // the middle of a write (the SDK cuts it off when it reopens the file).
    if (j.is_discarded() && in.eof()) break;
    std::string problem = j.is_discarded() ? "not valid JSON" : Validate(j);
    if (!problem.empty()) {
      *error = path + ":" + std::to_string(line_no) + ": " + problem;
      return false;
    }
    out->records.push_back({path, line_no, std::move(j)});
  }
  if (in.bad()) {
    *error = path + ": read error";
    return false;
  }
  return true;
}

bool LoadHistoryDir(const std::string& dir, std::vector<DeviceHistory>* out, std::string* error) {
  std::error_code ec;
  std::vector<std::string> files;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    if (entry.is_regular_file() && entry.path().extension() == ".jsonl") files.push_back(entry.path().string());
  }
  if (ec) {
    *error = dir + ": cannot list the histories directory (" + ec.message() + ")";
    return false;
  }
  if (files.empty()) {
    *error = dir + ": no *.jsonl history files";
    return false;
  }
  std::sort(files.begin(), files.end());
  for (const auto& f : files) {
    DeviceHistory h;
    if (!LoadHistoryFile(f, &h, error)) return false;
    out->push_back(std::move(h));
  }
  return true;
}

bool LoadStateFile(const std::string& path, json* raw, std::string* error) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    *error = path + ": cannot read the state file";
    return false;
  }
  std::stringstream ss;
  ss << in.rdbuf();
  *raw = json::parse(ss.str(), nullptr, false);
  if (raw->is_discarded()) {
    *error = path + ": not valid JSON";
    return false;
  }
  return true;
}

bool ParseState(const json& j, ServerState* out, std::string* error) {
  if (!j.is_object() || j.value("format", "") != "parley-export-1" || !j.contains("tables") ||
      !j["tables"].is_object()) {
    *error = "state: expected {\"format\":\"parley-export-1\",\"tables\":{...}}";
    return false;
  }
  const json& tables = j["tables"];
  if (j.contains("exported_at")) {
    if (!j["exported_at"].is_number_integer()) {
      *error = "state: \"exported_at\" is not an integer";
      return false;
    }
    out->exported_at = j["exported_at"];
  }
  // Each table's rows as arrays of the named columns.
  auto rows_of = [&](const char* name, std::vector<std::string> want, bool text_last,
                     std::vector<std::vector<int64_t>>* ints, std::vector<std::string>* texts) -> bool {
    if (!tables.contains(name) || !tables[name].is_object()) {
      *error = std::string("state: table \"") + name + "\" is missing";
      return false;
    }
    const json& t = tables[name];
    if (!t.contains("columns") || t["columns"] != json(want) || !t.contains("rows") || !t["rows"].is_array()) {
      *error = std::string("state: table \"") + name + "\" must have columns " + json(want).dump() + " and rows";
      return false;
    }
    size_t row_no = 0;
    for (const auto& r : t["rows"]) {
      ++row_no;
      bool ok = r.is_array() && r.size() == want.size();
      std::vector<int64_t> v;
      for (size_t i = 0; ok && i < want.size(); ++i) {
        bool last_text = text_last && i + 1 == want.size();
        if (last_text) {
          ok = r[i].is_string();
          if (ok) texts->push_back(r[i]);
        } else {
          ok = r[i].is_number_integer();
          if (ok) v.push_back(r[i].get<int64_t>());
        }
      }
      if (!ok) {
        *error = std::string("state: table \"") + name + "\" row " + std::to_string(row_no) + " is malformed";
        return false;
      }
      ints->push_back(std::move(v));
    }
    return true;
  };
  std::vector<std::vector<int64_t>> rows;
  std::vector<std::string> texts;
  if (!rows_of("devices", {"id", "user_id", "revoked"}, false, &rows, &texts)) return false;
  for (auto& r : rows) out->device_user[r[0]] = r[1];
  rows.clear();
  if (!rows_of("members", {"conversation_id", "user_id"}, false, &rows, &texts)) return false;
  for (auto& r : rows) out->members[r[0]].insert(r[1]);
  rows.clear();
  // Exports made before retention have no expires_at column: nothing in
  // them expires.
  const std::vector<std::string> kMessagesBefore = {"conversation_id", "seq", "sender_id", "sender_device_id",
                                                    "client_id"};
  const bool with_expiry = !(tables.contains("messages") && tables["messages"].is_object() &&
                             tables["messages"].value("columns", json()) == json(kMessagesBefore));
  if (!rows_of("messages",
               with_expiry ? std::vector<std::string>{"conversation_id", "seq", "sender_id", "sender_device_id",
                                                      "expires_at", "client_id"}
                           : kMessagesBefore,
               true, &rows, &texts))
    return false;
  for (size_t i = 0; i < rows.size(); ++i)
    out->messages[{rows[i][0], rows[i][1]}] = {rows[i][2], rows[i][3], texts[i], with_expiry ? rows[i][4] : 0};
  rows.clear();
  if (!rows_of("withheld", {"conversation_id", "user_id", "seq"}, false, &rows, &texts)) return false;
  for (auto& r : rows) out->withheld.insert({r[0], r[1], r[2]});
  rows.clear();
  if (!rows_of("stream",
               {"user_id", "user_seq", "kind", "conversation_id", "seq", "receipt_user_id", "delivered", "read"},
               false, &rows, &texts))
    return false;
  for (auto& r : rows) out->streams[r[0]][r[1]] = {r[2], r[3], r[4], r[5], r[6], r[7]};
  rows.clear();
  // `floor` came with stream trimming; a state saved before it has two columns.
  const bool has_floor = tables.contains("heads") && tables["heads"].is_object() &&
                         tables["heads"].value("columns", json::array()).size() == 3;
  if (!rows_of("heads", has_floor ? std::vector<std::string>{"user_id", "head", "floor"}
                                  : std::vector<std::string>{"user_id", "head"},
               false, &rows, &texts))
    return false;
  for (auto& r : rows) {
    out->heads[r[0]] = r[1];
    if (has_floor && r[2] > 1) out->floors[r[0]] = r[2];
  }
  rows.clear();
  if (!rows_of("receipts", {"conversation_id", "user_id", "delivered", "read"}, false, &rows, &texts)) return false;
  for (auto& r : rows) out->receipts[{r[0], r[1]}] = {r[2], r[3]};
  rows.clear();
  if (!rows_of("blocks", {"owner_id", "target_id"}, false, &rows, &texts)) return false;
  for (auto& r : rows) out->blocks.insert({r[0], r[1]});
  return true;
}

namespace {

struct Checker {
  const ServerState& s;
  Report* report;

  // (user, conversation, seq) -> user seq of the message event in that user's stream.
  std::map<std::tuple<int64_t, int64_t, int64_t>, int64_t> stream_msg;
  // (sender, client id) -> seqs stored (with their conversation).
  std::map<std::pair<int64_t, std::string>, std::vector<std::pair<int64_t, int64_t>>> by_client_id;
  // Users whose stream the server wrote with a gap at these user seqs (pass 1).
  std::set<std::pair<int64_t, int64_t>> server_missing;
  // (sender, client id) the server pass counted as duplicated.
  std::set<std::pair<int64_t, std::string>> server_dup_ids;
  // (sender, client id) -> the first ack's (conversation, seq), and how many acks.
  std::map<std::pair<int64_t, std::string>, std::pair<int64_t, int64_t>> first_ack;
  std::map<std::pair<int64_t, std::string>, int64_t> ack_count;
  // Receipt leaks counted, once each: (conversation, user, seq, what).
  std::set<std::tuple<int64_t, int64_t, int64_t, int>> receipt_leaks_seen;
  // Withheld seqs seen correctly listed: (conversation, user, seq).
  std::set<std::tuple<int64_t, int64_t, int64_t>> withheld_listed;
  // Edits, deletes and deletes for me in each user's stream (pass 1):
  // (user, conversation, seq) -> the message's final state for that user.
  struct Change {
    int64_t version = 0;      // the highest version an edit or delete event carries
    int64_t deleted_at = 0;   // user seq of the delete event (0: not deleted)
    int64_t hidden_at = 0;    // user seq of the delete_for_me event (0: not hidden)
  };
  std::map<std::tuple<int64_t, int64_t, int64_t>, Change> changes;
  // (user, conversation) -> user seq of the last `draft` event: the last
  // writer in server order.
  std::map<std::pair<int64_t, int64_t>, int64_t> last_draft;
  // (user, user seq) of a draft event -> the draft fingerprints devices read in it.
  std::map<std::pair<int64_t, int64_t>, std::set<std::string>> draft_read;
  // Retention: (user, conversation) -> the seconds of the last timer event
  // in the user's stream (absent: never set); conversation -> (seq,
  // expires_at) of its expiring messages, by seq.
  std::map<std::pair<int64_t, int64_t>, int64_t> last_timer;
  std::map<int64_t, std::vector<std::pair<int64_t, int64_t>>> expiring;
  // Devices whose final view pass 3 compares: finished at their user's
  // head with nothing skipped, their `view` record after the last caught_up.
  struct ViewDevice {
    int64_t user = 0;
    const Record* view = nullptr;
  };
  std::vector<ViewDevice> view_devices;

  void Fail(int64_t Counts::*field, const char* category, std::string detail) {
    ++(report->counts.*field);
    report->findings.push_back({category, std::move(detail)});
  }

  bool Member(int64_t conv, int64_t user) const {
    auto it = s.members.find(conv);
    return it != s.members.end() && it->second.count(user);
  }
  bool Withheld(int64_t conv, int64_t user, int64_t seq) const { return s.withheld.count({conv, user, seq}) > 0; }

  void ServerPass() {
    report->counts.messages = static_cast<int64_t>(s.messages.size());
    for (const auto& [key, m] : s.messages) by_client_id[{m.sender_id, m.client_id}].push_back(key);
    for (const auto& [k, seqs] : by_client_id) {
      std::map<int64_t, int64_t> per_conv;
      for (auto& [conv, seq] : seqs) {
        if (++per_conv[conv] > 1) {
          server_dup_ids.insert(k);
          Fail(&Counts::duplicated, "duplicated",
               "server: " + MsgName(conv, seq) + " repeats client id \"" + k.second + "\" of user " +
                   std::to_string(k.first));
        }
      }
    }
    for (const auto& [user, entries] : s.streams) {
      // A trimmed stream starts at its floor: entries below it are gone on
      // purpose, the ones from it on must all be there.
      auto fl = s.floors.find(user);
      int64_t prev = fl == s.floors.end() ? 0 : fl->second - 1;
      bool first = fl == s.floors.end();
      std::map<std::pair<int64_t, int64_t>, std::pair<int64_t, int64_t>> last_receipt;
      std::map<int64_t, std::pair<int64_t, int64_t>> timer;  // conv -> (seconds, user seq) so far in this stream
      for (const auto& [useq, e] : entries) {
        // A stream may start above 1 only where old entries were pruned.
        if (!first && useq > prev + 1) {
          for (int64_t u = prev + 1; u < useq; ++u) {
            server_missing.insert({user, u});
            Fail(&Counts::gaps, "gaps", "server: user " + std::to_string(user) + "'s stream has no user seq " +
                                            std::to_string(u));
          }
        }
        first = false;
        prev = useq;
        if (e.kind == kKindMessage) {
          auto key = std::make_tuple(user, e.conversation_id, e.seq);
          if (stream_msg.count(key)) {
            Fail(&Counts::duplicated, "duplicated",
                 "server: user " + std::to_string(user) + "'s stream holds " + MsgName(e.conversation_id, e.seq) +
                     " twice (user seqs " + std::to_string(stream_msg[key]) + ", " + std::to_string(useq) + ")");
            continue;
          }
          stream_msg[key] = useq;
          // A message its sender stored while the conversation's timer was
          // on (server order: the sender's stream) must expire.
          auto m = s.messages.find({e.conversation_id, e.seq});
          auto t = timer.find(e.conversation_id);
          if (m != s.messages.end() && m->second.sender_id == user && t != timer.end() && t->second.first > 0 &&
              m->second.expires_at == 0) {
            Fail(&Counts::expired_shown, "expired_shown",
                 "server: " + MsgName(e.conversation_id, e.seq) + " was stored while the conversation's timer was " +
                     std::to_string(t->second.first) + " s (user " + std::to_string(user) + "'s stream, user seq " +
                     std::to_string(t->second.second) + "), but never expires");
          }
          if (!Member(e.conversation_id, user) || Withheld(e.conversation_id, user, e.seq)) {
            Fail(&Counts::leaks, "leaks",
                 "server: user " + std::to_string(user) + "'s stream holds " + MsgName(e.conversation_id, e.seq) +
                     (Member(e.conversation_id, user) ? ", withheld from them" : ", not their conversation"));
          }
        } else if (e.kind == kKindEdit || e.kind == kKindDelete || e.kind == kKindDeleteForMe) {
          auto [c, fresh] = changes.insert({{user, e.conversation_id, e.seq}, Change{}});
          if (fresh) ++report->counts.changed_messages;
          if (e.kind == kKindDeleteForMe) {
            if (!c->second.hidden_at) c->second.hidden_at = useq;
          } else {
            c->second.version = std::max(c->second.version, e.delivered);
            if (e.kind == kKindDelete && !c->second.deleted_at) c->second.deleted_at = useq;
          }
        } else if (e.kind == kKindTimer) {
          timer[e.conversation_id] = {e.delivered, useq};
          last_timer[{user, e.conversation_id}] = e.delivered;
          if (e.receipt_user_id == user) ++report->counts.timer_changes;  // the setter's copy: once per change
        } else if (e.kind == kKindDraft) {
          auto [d, fresh] = last_draft.insert({{user, e.conversation_id}, useq});
          if (fresh) ++report->counts.draft_conversations;
          d->second = std::max(d->second, useq);
        } else if (e.kind == kKindReceipt) {
          auto& last = last_receipt[{e.conversation_id, e.receipt_user_id}];
          if (e.delivered < last.first || e.read < last.second) {
            Fail(&Counts::receipt_regressions, "receipt_regressions",
                 "server: user " + std::to_string(user) + "'s stream at user seq " + std::to_string(useq) +
                     " lowers user " + std::to_string(e.receipt_user_id) + "'s watermarks in conversation " +
                     std::to_string(e.conversation_id));
          }
          last = {std::max(last.first, e.delivered), std::max(last.second, e.read)};
        }
      }
      auto h = s.heads.find(user);
      if (h != s.heads.end() && !entries.empty() && h->second > prev) {
        for (int64_t u = prev + 1; u <= h->second; ++u) {
          server_missing.insert({user, u});
          Fail(&Counts::gaps, "gaps", "server: user " + std::to_string(user) + "'s stream has no user seq " +
                                          std::to_string(u) + " (head " + std::to_string(h->second) + ")");
        }
      }
    }
    // Every message is in the stream of every member it is visible to,
    // unless its entry was trimmed: a conversation's message entries follow
    // its seqs in a stream, so in a trimmed stream a missing message is lost
    // only if an older message of its conversation is still there. One that
    // expired well before the export is deleted there (the member's devices
    // would keep its text otherwise: a stream that never deletes it makes
    // nothing delete it on a device whose clock is behind).
    std::map<std::pair<int64_t, int64_t>, int64_t> lowest_kept;  // (user, conv) -> lowest message seq kept
    for (const auto& [k, useq] : stream_msg) {
      auto [it, fresh] = lowest_kept.insert({{std::get<0>(k), std::get<1>(k)}, std::get<2>(k)});
      if (!fresh) it->second = std::min(it->second, std::get<2>(k));
    }
    for (const auto& [key, m] : s.messages) {
      const bool expired = m.expires_at != 0 && s.exported_at != 0 && m.expires_at <= s.exported_at - kExpiryGraceMs;
      if (m.expires_at != 0) {
        ++report->counts.expiring_messages;
        expiring[key.first].push_back({key.second, m.expires_at});
      }
      if (expired) ++report->counts.expired_messages;
      auto mit = s.members.find(key.first);
      if (mit == s.members.end()) continue;
      for (int64_t user : mit->second) {
        if (Withheld(key.first, user, key.second)) continue;
        if (s.floors.count(user)) {
          auto low = lowest_kept.find({user, key.first});
          if (low == lowest_kept.end() || low->second > key.second) continue;  // trimmed
        }
        if (!stream_msg.count({user, key.first, key.second})) {
          Fail(&Counts::lost, "lost",
               "server: " + MsgName(key.first, key.second) + " is not in the stream of member " + std::to_string(user));
          continue;
        }
        auto c = changes.find({user, key.first, key.second});
        const bool gone = c != changes.end() && (c->second.deleted_at || c->second.hidden_at);
        if (expired && !gone) {
          Fail(&Counts::expired_shown, "expired_shown",
               "server: " + MsgName(key.first, key.second) + " expired at " + std::to_string(m.expires_at) + ", " +
                   std::to_string(s.exported_at - m.expires_at) + " ms before the export, but user " +
                   std::to_string(user) + "'s stream has no delete for it");
        }
      }
    }
  }

  struct Device {
    std::string file;
    int64_t user = 0, device = 0;
    bool applied_known = false;
    int64_t applied = 0;
    int64_t start = 0;  // user seqs at or below it are not this device's to hold
    std::set<int64_t> covered;                    // also_covers (and summary covers) above applied
    // Selective sync: user seqs a summary stood for (their events never reach
    // this device: not lost, and not part of its receipt view).
    std::set<int64_t> summarised;
    std::set<int64_t> gap_seqs;                   // user seqs skipped (counted as gaps)
    std::vector<std::pair<int64_t, int64_t>> unrecorded;  // (lo, hi]: applied by the cache, not in the file
    std::set<std::pair<int64_t, int64_t>> held;   // (conv, seq) this epoch
    std::map<int64_t, int64_t> last_seq;          // conv -> highest seq delivered this epoch
    std::map<std::pair<int64_t, int64_t>, std::pair<int64_t, int64_t>> view;          // (conv, user) -> watermarks
    std::map<std::pair<int64_t, int64_t>, std::pair<int64_t, int64_t>> event_view;    // from receipt events only
    bool finished = false;
    int64_t caught_head = 0;
    // Withheld lists (DESIGN.md "Blocking"): (conv, user) -> that user's
    // delivered watermark as this device knows it (absent: not known yet),
    // and the seqs listed as withheld from them so far.
    std::map<std::pair<int64_t, int64_t>, int64_t> wh_base;
    std::map<std::pair<int64_t, int64_t>, std::set<int64_t>> wh_listed;
    // (conv, seq) this device learnt were deleted for everyone (a delete
    // event, a tombstone): final, across snapshots and restarts.
    std::set<std::pair<int64_t, int64_t>> dead;
    // The `ts` of the last `resume`: every sync page and snapshot after it
    // was answered after then (0: no connection recorded yet).
    int64_t answered_after = 0;
    const Record* final_view = nullptr;  // the `view` record after the last caught_up
  };

  bool Unrecorded(const Device& d, int64_t useq) const {
    for (auto& [lo, hi] : d.unrecorded) {
      if (useq > lo && useq <= hi) return true;
    }
    return false;
  }

  // A message reaching the device (event, snapshot or history page).
  void Deliver(Device& d, const Record& r, const json& m, const char* how, bool count_order) {
    int64_t conv = m["conversation_id"], seq = m["seq"];
    std::string client_id = m["client_id"];
    auto it = s.messages.find({conv, seq});
    if (it == s.messages.end() || it->second.client_id != client_id) {
      Fail(&Counts::phantoms, "phantoms",
           Where(r) + ": " + how + " of " + MsgName(conv, seq) + " (client id \"" + client_id +
               "\") that the server does not hold");
      return;
    }
    if (!Member(conv, d.user)) {
      Fail(&Counts::leaks, "leaks",
           Where(r) + ": " + how + " of " + MsgName(conv, seq) + " to user " + std::to_string(d.user) +
               ", not a member");
      return;
    }
    if (Withheld(conv, d.user, seq)) {
      Fail(&Counts::leaks, "leaks",
           Where(r) + ": " + how + " of " + MsgName(conv, seq) + ", withheld from user " + std::to_string(d.user) +
               " (a block)");
      return;
    }
    if (!count_order) return;  // history pages: checked for leaks only
    ++report->counts.delivered;
    if (!d.held.insert({conv, seq}).second) {
      Fail(&Counts::duplicated, "duplicated", Where(r) + ": " + how + " of " + MsgName(conv, seq) + " again");
      return;
    }
    auto& last = d.last_seq[conv];
    if (seq < last) {
      Fail(&Counts::reordered, "reordered",
           Where(r) + ": " + how + " of " + MsgName(conv, seq) + " after seq " + std::to_string(last));
    }
    last = std::max(last, seq);
    // A message also means: its sender's watermarks are at least its seq.
    auto& w = d.view[{conv, it->second.sender_id}];
    w = {std::max(w.first, seq), std::max(w.second, seq)};
  }

  // A message record as the device received it (event, snapshot, history
  // page): a tombstone has no body, and a message the device knows deleted
  // is never shown undeleted again. A history page may have been read before
  // a delete the device applied meanwhile (`may_be_stale`): its undeleted
  // messages prove nothing.
  void Tombstone(Device& d, const Record& r, const json& m, const char* how, bool may_be_stale) {
    const auto key = std::make_pair(m["conversation_id"].get<int64_t>(), m["seq"].get<int64_t>());
    if (m.value("deleted", false)) {
      if (!m.value("body_hash", std::string()).empty()) {
        Fail(&Counts::resurrections, "resurrections",
             Where(r) + ": " + how + " of " + MsgName(key.first, key.second) + ", a tombstone that carries a body");
      }
      d.dead.insert(key);
    } else if (d.dead.count(key) && !may_be_stale) {
      Fail(&Counts::resurrections, "resurrections",
           Where(r) + ": " + how + " shows " + MsgName(key.first, key.second) +
               " undeleted after the device learnt it was deleted for everyone");
    }
  }

  // Retention: a sync page or a snapshot answered after a message's
  // expires_at never carries its text (the server shows it as the tombstone
  // it is about to become). Judged by the `resume` before the answer, which
  // was written before the request went out; a message the device already
  // knew deleted counts as a resurrection instead.
  void ExpiredAnswer(Device& d, const Record& r, int64_t conv, int64_t seq, bool shows_text, const char* how) {
    if (!shows_text || d.answered_after == 0 || d.dead.count({conv, seq})) return;
    auto it = s.messages.find({conv, seq});
    if (it == s.messages.end() || it->second.expires_at == 0) return;
    if (d.answered_after < it->second.expires_at + kExpiryClockSlackMs) return;
    Fail(&Counts::expired_shown, "expired_shown",
         Where(r) + ": " + how + " carries the text of " + MsgName(conv, seq) + ", answered after " +
             std::to_string(d.answered_after) + " (resume), " + std::to_string(d.answered_after - it->second.expires_at) +
             " ms after it expired");
  }

  // An edit, delete, delete_for_me or draft event (fields optional: older
  // histories lack them).
  void ChangeEvent(Device& d, const Record& r, const std::string& kind, int64_t useq) {
    const json& j = r.j;
    if (!IsInt(j, "conversation_id")) return;
    const int64_t conv = j["conversation_id"];
    if (kind == "draft") {
      if (j.contains("draft_hash")) draft_read[{d.user, useq}].insert(j["draft_hash"].get<std::string>());
      return;
    }
    if (!IsInt(j, "seq")) return;
    const auto key = std::make_pair(conv, j["seq"].get<int64_t>());
    if (kind == "delete") {
      d.dead.insert(key);
    } else if (kind == "edit" && d.dead.count(key) && !j.value("body_hash", std::string()).empty()) {
      Fail(&Counts::resurrections, "resurrections",
           Where(r) + ": an edit brings a text back to " + MsgName(key.first, key.second) +
               ", which the device knew deleted for everyone");
    } else if (kind == "edit" && j.value("source", "") == "sync") {
      ExpiredAnswer(d, r, key.first, key.second, !j.value("body_hash", std::string()).empty(), "a synced edit");
    }
  }

  void Watermark(Device& d, const Record& r, int64_t conv, int64_t user, int64_t delivered, int64_t read,
                 bool from_event) {
    auto& w = d.view[{conv, user}];
    if (delivered < w.first || read < w.second) {
      Fail(&Counts::receipt_regressions, "receipt_regressions",
           Where(r) + ": user " + std::to_string(user) + "'s watermarks in conversation " + std::to_string(conv) +
               " went from " + std::to_string(w.first) + "/" + std::to_string(w.second) + " to " +
               std::to_string(delivered) + "/" + std::to_string(read));
    }
    w = {std::max(w.first, delivered), std::max(w.second, read)};
    if (from_event) {
      auto& e = d.event_view[{conv, user}];
      e = {std::max(e.first, delivered), std::max(e.second, read)};
    }
  }

  void ReceiptLeak(const Record& r, int64_t conv, int64_t user, int64_t seq, int what, const std::string& detail) {
    if (!receipt_leaks_seen.insert({conv, user, seq, what}).second) return;  // counted once, on the first device
    Fail(&Counts::receipt_leaks, "receipt_leaks", Where(r) + ": " + detail);
  }

  // An event that sets `user`'s delivered watermark in `conv` to `delivered`
  // (a receipt event, or the user's own message event) must list in
  // `withheld` exactly the seqs withheld from that user that it newly
  // covers, each once (docs/protocol.md, "block, unblock"): those stay
  // "sent" for their sender. A seq it covers without listing it would show
  // its sender that the blocker got it.
  void WithheldList(Device& d, const Record& r, int64_t conv, int64_t user, int64_t delivered) {
    std::set<int64_t> listed;
    if (r.j.contains("withheld")) {
      for (const auto& w : r.j["withheld"]) listed.insert(w.get<int64_t>());
    }
    const auto key = std::make_pair(conv, user);
    auto& before = d.wh_listed[key];
    const std::string who = "user " + std::to_string(user) + " in conversation " + std::to_string(conv);
    for (int64_t seq : listed) {
      if (!Withheld(conv, user, seq)) {
        ReceiptLeak(r, conv, user, seq, 1,
                    "lists seq " + std::to_string(seq) + " as withheld from " + who + ", which it is not");
      } else if (before.count(seq)) {
        ReceiptLeak(r, conv, user, seq, 2, "lists seq " + std::to_string(seq) + " withheld from " + who + " again");
      } else if (seq > delivered) {
        ReceiptLeak(r, conv, user, seq, 3,
                    "lists seq " + std::to_string(seq) + " withheld from " + who + " above the watermark " +
                        std::to_string(delivered) + " it sets");
      } else {
        before.insert(seq);
        if (withheld_listed.insert({conv, user, seq}).second) ++report->counts.withheld_listed;
      }
    }
    auto b = d.wh_base.find(key);
    if (b != d.wh_base.end() && delivered > b->second) {
      for (auto it = s.withheld.upper_bound({conv, user, b->second});
           it != s.withheld.end() && std::get<0>(*it) == conv && std::get<1>(*it) == user &&
           std::get<2>(*it) <= delivered;
           ++it) {
        int64_t seq = std::get<2>(*it);
        if (listed.count(seq) || before.count(seq)) continue;
        ReceiptLeak(r, conv, user, seq, 0,
                    "moves the delivered watermark of " + who + " from " + std::to_string(b->second) + " to " +
                        std::to_string(delivered) + " over seq " + std::to_string(seq) +
                        ", withheld from them, without listing it in \"withheld\"");
      }
    }
    if (b == d.wh_base.end()) d.wh_base[key] = delivered;
    else b->second = std::max(b->second, delivered);
  }

  void Cursor(Device& d, const json& cursor) {
    if (cursor.is_null()) return;  // a new cache: a snapshot follows
    int64_t c = cursor;
    if (!d.applied_known) {
      d.applied_known = true;
      d.applied = d.start = c;
      return;
    }
    if (c > d.applied) {
      // Killed between the cache and the file: events went unrecorded, so
      // the watermarks known for withheld lists start over.
      d.unrecorded.push_back({d.applied, c});
      d.wh_base.clear();
      d.wh_listed.clear();
    }
    d.applied = std::max(d.applied, c);
  }

  void Event(Device& d, const Record& r) {
    const json& j = r.j;
    int64_t u = j["user_seq"];
    if (d.applied_known && u <= d.applied) {
      Fail(&Counts::duplicated, "duplicated",
           Where(r) + ": user seq " + std::to_string(u) + " applied again (applied up to " +
               std::to_string(d.applied) + ")");
      return;
    }
    if (d.applied_known) {
      for (int64_t x = d.applied + 1; x < u; ++x) {
        if (d.covered.count(x)) continue;
        if (server_missing.count({d.user, x})) continue;  // the server never wrote it (pass 1)
        d.gap_seqs.insert(x);
        Fail(&Counts::gaps, "gaps", Where(r) + ": user seq " + std::to_string(x) + " was never applied");
      }
    } else {
      d.applied_known = true;  // a history that starts mid-stream (no open/resume record)
      d.start = u - 1;
    }
    d.applied = u;
    d.covered.erase(d.covered.begin(), d.covered.upper_bound(u));
    if (j.contains("also_covers")) {
      for (const auto& c : j["also_covers"]) {
        if (c.is_number_integer() && c.get<int64_t>() > u) d.covered.insert(c.get<int64_t>());
      }
    }
    if (j["kind"] == "summary") {
      for (const auto& range : j["covers"]) {
        for (int64_t x = range[0].get<int64_t>(); x <= range[1].get<int64_t>(); ++x) {
          d.summarised.insert(x);
          if (x > u) d.covered.insert(x);
        }
      }
    }
    // The cache applied the covered seqs with this one: those right above it
    // are applied (a resume from the last of them is not an unrecorded range).
    while (!d.covered.empty() && *d.covered.begin() == d.applied + 1) {
      d.applied = *d.covered.begin();
      d.covered.erase(d.covered.begin());
    }
    std::string kind = j["kind"];
    if (kind == "message") {
      const json& m = j["message"];
      const std::string how = j["source"].get<std::string>() + " delivery";
      if (j["source"] == "sync")
        ExpiredAnswer(d, r, m["conversation_id"], m["seq"], !m.value("deleted", false), how.c_str());
      Tombstone(d, r, m, how.c_str(), false);
      Deliver(d, r, m, how.c_str(), true);
      WithheldList(d, r, m["conversation_id"], m["sender_id"], m["seq"]);
    } else if (kind == "receipt") {
      Watermark(d, r, j["conversation_id"], j["user_id"], j["delivered"], j["read"], true);
      WithheldList(d, r, j["conversation_id"], j["user_id"], j["delivered"]);
    } else if (kind == "edit" || kind == "delete" || kind == "delete_for_me" || kind == "draft") {
      ChangeEvent(d, r, kind, u);
    }
  }

  void Snapshot(Device& d, const Record& r) {
    const json& j = r.j;
    d.held.clear();
    d.last_seq.clear();
    d.covered.clear();
    d.summarised.clear();
    d.unrecorded.clear();
    d.event_view.clear();
    d.wh_base.clear();
    d.wh_listed.clear();
    d.applied_known = true;
    d.applied = d.start = j["head"];
    for (const auto& m : j["messages"]) {
      ExpiredAnswer(d, r, m["conversation_id"], m["seq"], !m.value("deleted", false), "a snapshot");
      Tombstone(d, r, m, "snapshot delivery", false);
      Deliver(d, r, m, "snapshot delivery", true);
    }
    for (const auto& w : j["watermarks"]) {
      Watermark(d, r, w["conversation_id"], w["user_id"], w["delivered"], w["read"], false);
      d.wh_base[{w["conversation_id"].get<int64_t>(), w["user_id"].get<int64_t>()}] = w["delivered"].get<int64_t>();
    }
  }

  // A device whose history ends caught up holds every message of its stream
  // in (start, head], and, at the server's head, its receipt view is the stream's.
  void Finish(Device& d) {
    if (d.applied < d.caught_head) {
      for (int64_t x = d.applied + 1; x <= d.caught_head; ++x) {
        if (server_missing.count({d.user, x})) continue;
        d.gap_seqs.insert(x);
        Fail(&Counts::gaps, "gaps", d.file + ": caught up at head " + std::to_string(d.caught_head) +
                                        " but user seq " + std::to_string(x) + " was never applied");
      }
    }
    auto sit = s.streams.find(d.user);
    if (sit == s.streams.end()) return;
    std::map<std::pair<int64_t, int64_t>, std::pair<int64_t, int64_t>> stream_view;
    for (auto it = sit->second.upper_bound(d.start); it != sit->second.end() && it->first <= d.caught_head; ++it) {
      const StreamEntry& e = it->second;
      if (d.summarised.count(it->first)) continue;  // a summary stood for it: not this device's to hold
      if (e.kind == kKindReceipt) {
        auto& w = stream_view[{e.conversation_id, e.receipt_user_id}];
        w = {std::max(w.first, e.delivered), std::max(w.second, e.read)};
      }
      if (e.kind != kKindMessage) continue;
      if (d.gap_seqs.count(it->first) || Unrecorded(d, it->first)) continue;
      if (!d.held.count({e.conversation_id, e.seq})) {
        Fail(&Counts::lost, "lost",
             d.file + ": finished (caught up at " + std::to_string(d.caught_head) + ") without " +
                 MsgName(e.conversation_id, e.seq) + " (user seq " + std::to_string(it->first) + ")");
      }
    }
    auto h = s.heads.find(d.user);
    // Convergence is judged only for a device that applied its whole window
    // (a gap or unrecorded records are counted, or excused, above).
    if (h == s.heads.end() || h->second != d.caught_head || !d.unrecorded.empty() || !d.gap_seqs.empty()) return;
    ++report->counts.current_devices;
    for (const auto& [k, w] : stream_view) {
      auto e = d.event_view.find(k);
      std::pair<int64_t, int64_t> mine = e == d.event_view.end() ? std::pair<int64_t, int64_t>{0, 0} : e->second;
      if (mine != w) {
        Fail(&Counts::receipt_divergences, "receipt_divergences",
             d.file + ": user " + std::to_string(k.second) + "'s watermarks in conversation " +
                 std::to_string(k.first) + " end at " + std::to_string(mine.first) + "/" +
                 std::to_string(mine.second) + ", the stream says " + std::to_string(w.first) + "/" +
                 std::to_string(w.second));
      }
    }
  }

  bool DevicePass(const DeviceHistory& h, std::string* error,
                  std::set<std::pair<int64_t, std::string>>* acked) {
    Device d;
    d.file = h.file;
    for (const auto& r : h.records) {
      int64_t u = r.j["user"], dev = r.j["device"];
      if ((u && d.user && u != d.user) || (dev && d.device && dev != d.device)) {
        *error = Where(r) + ": a second identity (user " + std::to_string(u) + ", device " + std::to_string(dev) +
                 ") in a file of user " + std::to_string(d.user) + ", device " + std::to_string(d.device) +
                 ": one history file per device";
        return false;
      }
      if (u) d.user = u;
      if (dev) d.device = dev;
    }
    ++report->counts.devices;
    // Compose order per peer, and acks.
    std::map<std::string, std::vector<std::pair<std::string, const Record*>>> composed;  // peer -> client ids
    std::string last_ev;
    for (const auto& r : h.records) {
      const json& j = r.j;
      std::string ev = j["ev"];
      if (ev != "stop" && ev != "view") last_ev = ev;
      if (ev == "compose") {
        composed[j["peer"]].push_back({j["client_id"], &r});
      } else if (ev == "ack") {
        int64_t conv = j["conversation_id"], seq = j["seq"];
        std::string cid = j["client_id"];
        if (acked->insert({d.user, cid}).second) ++report->counts.acked;
        auto it = s.messages.find({conv, seq});
        bool wrong = it == s.messages.end() || it->second.client_id != cid || it->second.sender_id != d.user;
        if (wrong) {
          Fail(&Counts::lost, "lost",
               Where(r) + ": acked " + MsgName(conv, seq) + " (client id \"" + cid + "\") " +
                   (it == s.messages.end() ? "is not on the server" : "holds another message on the server"));
        }
        // A resend (same client id, any connection or device of the user)
        // is acknowledged with the first ack's seq: one message.
        const auto id = std::make_pair(d.user, cid);
        if (++ack_count[id] == 2) ++report->counts.resent;
        auto [first, inserted] = first_ack.insert({id, {conv, seq}});
        if (!inserted && first->second != std::make_pair(conv, seq) && !wrong && !server_dup_ids.count(id)) {
          Fail(&Counts::duplicated, "duplicated",
               Where(r) + ": a resend of client id \"" + cid + "\" acked as " + MsgName(conv, seq) +
                   ", the first ack said " + MsgName(first->second.first, first->second.second));
        }
      } else if (ev == "open" || ev == "resume") {
        Cursor(d, j["cursor"]);
        if (ev == "resume") d.answered_after = j["ts"];
      } else if (ev == "snapshot") {
        Snapshot(d, r);
      } else if (ev == "event") {
        Event(d, r);
      } else if (ev == "history") {
        for (const auto& m : j["messages"]) {
          Tombstone(d, r, m, "history page", true);
          Deliver(d, r, m, "history page", false);
        }
      } else if (ev == "caught_up") {
        d.caught_head = std::max(j["head"].get<int64_t>(), j["applied"].get<int64_t>());
        d.final_view = nullptr;
      } else if (ev == "view") {
        d.final_view = &r;
      }
    }
    // Compose order: the server's seqs follow it, per conversation.
    for (const auto& [peer, ids] : composed) {
      std::map<int64_t, int64_t> max_seq;  // conv -> highest seq so far
      for (const auto& [cid, rec] : ids) {
        auto it = by_client_id.find({d.user, cid});
        if (it == by_client_id.end()) continue;
        auto [conv, seq] = it->second.front();
        auto& m = max_seq[conv];
        if (seq < m) {
          Fail(&Counts::reordered, "reordered",
               Where(*rec) + ": composed after a message that got seq " + std::to_string(m) + ", stored at " +
                   MsgName(conv, seq));
        }
        m = std::max(m, seq);
      }
    }
    d.finished = last_ev == "caught_up" && d.user != 0;
    if (d.finished) {
      ++report->counts.finished_devices;
      Finish(d);
      auto head = s.heads.find(d.user);
      if (d.final_view && head != s.heads.end() && head->second == d.caught_head && d.gap_seqs.empty())
        view_devices.push_back({d.user, d.final_view});
    }
    return true;
  }

  // Pass 3: the final views of each user's current devices against the
  // user's stream, and against each other.
  void ViewPass() {
    std::map<int64_t, std::vector<const ViewDevice*>> by_user;
    for (const auto& v : view_devices) by_user[v.user].push_back(&v);
    for (const auto& [user, devices] : by_user) {
      // (conv, seq, version) -> the first device's text fingerprint, and where.
      std::map<std::tuple<int64_t, int64_t, int64_t>, std::pair<std::string, std::string>> text_of;
      // conv -> the draft every device must show (from the last draft event
      // as devices read it; else the first device's, so they agree).
      std::map<int64_t, std::pair<std::string, std::string>> draft_of;
      for (auto it = last_draft.lower_bound({user, INT64_MIN}); it != last_draft.end() && it->first.first == user;
           ++it) {
        auto read = draft_read.find({user, it->second});
        if (read == draft_read.end()) continue;
        if (read->second.size() > 1) {
          Fail(&Counts::draft_divergences, "draft_divergences",
               "user " + std::to_string(user) + "'s devices read different drafts in conversation " +
                   std::to_string(it->first.second) + "'s last draft event (user seq " + std::to_string(it->second) +
                   ")");
        }
        draft_of[it->first.second] = {*read->second.begin(), "the last draft event (user seq " +
                                                                  std::to_string(it->second) + ")"};
      }
      for (const ViewDevice* v : devices) {
        ++report->counts.views;
        const Record& r = *v->view;
        // Selective sync: conversations the device kept as summaries are
        // not synced in full, so their cached messages are not judged.
        std::set<int64_t> summarised;
        for (const auto& c : r.j.value("summarised", json::array())) summarised.insert(c.get<int64_t>());
        // Retention: the device's clock when it wrote the view (0: not
        // recorded; expiry is then not judged on this view).
        const int64_t clock = r.j.value("clock", int64_t{0});
        std::set<std::pair<int64_t, int64_t>> listed;
        for (const auto& m : r.j["messages"]) {
          listed.insert({m["conversation_id"].get<int64_t>(), m["seq"].get<int64_t>()});
          if (summarised.count(m["conversation_id"].get<int64_t>())) {
            // Not synced in full, but its cached texts expire all the same.
            ExpiredInView(user, r, m["conversation_id"], m["seq"], !m["body_hash"].get<std::string>().empty(), clock);
            continue;
          }
          ViewMessage(user, r, m, clock, &text_of);
        }
        // Held, but not listed: unedited, undeleted and shown on this
        // device. Each message the user's stream changed must not be one.
        std::map<int64_t, std::vector<std::pair<int64_t, int64_t>>> held;  // conv -> [lo, hi] ranges
        for (const auto& h : r.j.value("held", json::array())) {
          for (const auto& range : h["ranges"])
            held[h["conversation_id"].get<int64_t>()].push_back({range[0].get<int64_t>(), range[1].get<int64_t>()});
        }
        for (auto c = changes.lower_bound({user, INT64_MIN, INT64_MIN});
             c != changes.end() && std::get<0>(c->first) == user; ++c) {
          const int64_t conv = std::get<1>(c->first), seq = std::get<2>(c->first);
          if (listed.count({conv, seq}) || !Held(held, conv, seq) || summarised.count(conv)) continue;
          ViewMessage(user, r, AsSent(conv, seq), clock, &text_of);
        }
        // Held unlisted (with its text) after its expiry by this device's
        // clock: what the changes above did not judge already.
        for (const auto& [conv, ranges] : held) {
          auto e = expiring.find(conv);
          if (e == expiring.end() || clock == 0) continue;
          for (const auto& [seq, expires_at] : e->second) {
            if (expires_at > clock || listed.count({conv, seq}) || !Held(held, conv, seq)) continue;
            if (summarised.count(conv)) {
              ExpiredInView(user, r, conv, seq, true, clock);
            } else if (!changes.count({user, conv, seq})) {
              ViewMessage(user, r, AsSent(conv, seq), clock, &text_of);
            }
          }
        }
        // Each conversation's timer is the last one the user's stream set
        // (0 where it never set one); timer events always arrive in full. In
        // a trimmed stream with no timer event left for a conversation the
        // timer is unknown, and not judged (as drafts below).
        if (r.j.contains("timers")) {
          std::map<int64_t, int64_t> shown;
          for (const auto& t : r.j["timers"]) shown[t["conversation_id"].get<int64_t>()] = t["seconds"];
          std::set<int64_t> timer_convs;
          for (const auto& [conv, seconds] : shown) {
            if (seconds != 0) timer_convs.insert(conv);
          }
          for (auto it = last_timer.lower_bound({user, INT64_MIN}); it != last_timer.end() && it->first.first == user;
               ++it)
            timer_convs.insert(it->first.second);
          for (int64_t conv : timer_convs) {
            auto want = last_timer.find({user, conv});
            if (want == last_timer.end() && s.floors.count(user)) continue;
            const int64_t want_s = want == last_timer.end() ? 0 : want->second;
            const int64_t mine = shown.count(conv) ? shown[conv] : 0;
            if (mine != want_s) {
              Fail(&Counts::timer_divergences, "timer_divergences",
                   Where(r) + ": conversation " + std::to_string(conv) + "'s disappearing timer is " +
                       std::to_string(mine) + " s, the user's stream last set " + std::to_string(want_s) + " s");
            }
          }
        }
        std::map<int64_t, std::string> mine;
        for (const auto& dr : r.j["drafts"]) mine[dr["conversation_id"].get<int64_t>()] = dr["draft_hash"];
        std::set<int64_t> convs;
        for (const auto& [conv, hash] : mine) {
          if (!hash.empty()) convs.insert(conv);
        }
        for (auto it = last_draft.lower_bound({user, INT64_MIN}); it != last_draft.end() && it->first.first == user;
             ++it)
          convs.insert(it->first.second);
        for (int64_t conv : convs) {
          const std::string shown = mine.count(conv) ? mine[conv] : "";
          auto want = draft_of.find(conv);
          if (want == draft_of.end()) {
            // No draft event read by any device: a conversation never
            // drafted in must show none; else (or when the user's stream
            // was trimmed, so its draft events may be gone) the devices
            // must agree.
            if (!last_draft.count({user, conv}) && !s.floors.count(user)) {
              want = draft_of.insert({conv, {"", "the stream (no draft event)"}}).first;
            } else {
              draft_of[conv] = {shown, Where(r)};
              continue;
            }
          }
          if (shown != want->second.first) {
            Fail(&Counts::draft_divergences, "draft_divergences",
                 Where(r) + ": the draft of conversation " + std::to_string(conv) + " is " + HashName(shown) +
                     ", " + want->second.second + " says " + HashName(want->second.first));
          }
        }
      }
    }
  }

  static bool Held(const std::map<int64_t, std::vector<std::pair<int64_t, int64_t>>>& held, int64_t conv,
                   int64_t seq) {
    auto it = held.find(conv);
    if (it == held.end()) return false;
    for (const auto& [lo, hi] : it->second) {
      if (seq >= lo && seq <= hi) return true;
    }
    return false;
  }

  static std::string HashName(const std::string& hash) { return hash.empty() ? "none" : "\"" + hash + "\""; }

  // A held message the view does not list: as sent, shown, with its text.
  static json AsSent(int64_t conv, int64_t seq) {
    return {{"conversation_id", conv}, {"seq", seq}, {"version", 0}, {"deleted", false}, {"hidden", false},
            {"body_hash", ""}};
  }

  // The expires_at of a message of the server when `clock` (a device's
  // clock; 0: unknown) has passed it, else 0.
  int64_t ExpiredBy(int64_t conv, int64_t seq, int64_t clock) const {
    auto it = s.messages.find({conv, seq});
    if (clock == 0 || it == s.messages.end() || it->second.expires_at == 0 || it->second.expires_at > clock) return 0;
    return it->second.expires_at;
  }

  // Retention in a final view: a device holds no text of a message whose
  // expires_at its own clock has passed (it drops it then, event or not).
  // Returns whether it counted one.
  bool ExpiredInView(int64_t user, const Record& r, int64_t conv, int64_t seq, bool holds_text, int64_t clock) {
    const int64_t expires_at = ExpiredBy(conv, seq, clock);
    if (!holds_text || expires_at == 0 || !Member(conv, user) || Withheld(conv, user, seq)) return false;
    Fail(&Counts::expired_shown, "expired_shown",
         Where(r) + ": " + MsgName(conv, seq) + " still has its text at the device's clock " + std::to_string(clock) +
             ", " + std::to_string(clock - expires_at) + " ms after it expired");
    return true;
  }

  void ViewMessage(int64_t user, const Record& r, const json& m, int64_t clock,
                   std::map<std::tuple<int64_t, int64_t, int64_t>, std::pair<std::string, std::string>>* text_of) {
    const int64_t conv = m["conversation_id"], seq = m["seq"], version = m["version"];
    const bool deleted = m["deleted"], hidden = m["hidden"];
    const std::string body = m["body_hash"];
    // Pending sends, messages the server does not hold or never showed the
    // user: counted by the delivery checks, not here.
    if (seq <= 0 || !s.messages.count({conv, seq}) || !Member(conv, user) || Withheld(conv, user, seq)) return;
    static const Change kUnchanged;
    auto it = changes.find({user, conv, seq});
    const Change& want = it == changes.end() ? kUnchanged : it->second;
    const std::string what = Where(r) + ": " + MsgName(conv, seq);
    // A trimmed stream (a floor above 1) may have lost the events of older
    // changes: what it still says is a lower bound. A device ahead of it
    // is not judged against it (the devices are still held to one text per
    // version below).
    const bool trimmed = s.floors.count(user) > 0;
    if (trimmed && hidden && !want.hidden_at) return;
    if (trimmed && !want.hidden_at && version >= want.version && (deleted || !want.deleted_at) &&
        (version > want.version || deleted != (want.deleted_at != 0))) {
      if (version == 0) return;
      auto [first, inserted] = text_of->insert({{conv, seq, version}, {body, Where(r)}});
      if (!inserted && first->second.first != body) {
        Fail(&Counts::version_divergences, "version_divergences",
             what + " at version " + std::to_string(version) + " has text " + HashName(body) + ", " +
                 first->second.second + " has " + HashName(first->second.first));
      }
      return;
    }
    if (want.hidden_at || hidden) {
      if (!hidden) {
        Fail(&Counts::hidden_divergences, "hidden_divergences",
             what + " is shown, but the user deleted it for themself (user seq " + std::to_string(want.hidden_at) +
                 ")");
      } else if (!want.hidden_at) {
        Fail(&Counts::hidden_divergences, "hidden_divergences",
             what + " is hidden, but the user never deleted it for themself");
      } else {
        ExpiredInView(user, r, conv, seq, !body.empty(), clock);  // hidden, but its text must still go
      }
      return;  // later edits and deletes do not reach a hidden message
    }
    if (want.deleted_at && (!deleted || !body.empty())) {
      Fail(&Counts::resurrections, "resurrections",
           what + (deleted ? " is a tombstone with a body" : " shows a body") +
               ", but it was deleted for everyone (user seq " + std::to_string(want.deleted_at) + ")");
      return;
    }
    if (ExpiredInView(user, r, conv, seq, !deleted || !body.empty(), clock)) return;
    // Expired by the device's clock before the server's delete event came
    // (the expiry step runs about every --expiry-interval-ms; a clock ahead
    // runs early): a tombstone at the version the stream has so far is right.
    if (deleted && !want.deleted_at && ExpiredBy(conv, seq, clock) != 0 && version == want.version) return;
    if (deleted != (want.deleted_at != 0) || version != want.version) {
      Fail(&Counts::version_divergences, "version_divergences",
           what + " ends at version " + std::to_string(version) + (deleted ? " (deleted)" : "") +
               ", the user's stream says " + std::to_string(want.version) + (want.deleted_at ? " (deleted)" : ""));
      return;
    }
    if (version == 0) return;  // the text as sent: the message's identity is checked by the delivery checks
    auto [first, inserted] = text_of->insert({{conv, seq, version}, {body, Where(r)}});
    if (!inserted && first->second.first != body) {
      Fail(&Counts::version_divergences, "version_divergences",
           what + " at version " + std::to_string(version) + " has text " + HashName(body) + ", " +
               first->second.second + " has " + HashName(first->second.first));
    }
  }
};

}  // namespace

bool Check(const std::vector<DeviceHistory>& histories, const ServerState& state, Report* report, std::string* error) {
  Checker c{state, report, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}};
  c.ServerPass();
  std::set<std::pair<int64_t, std::string>> acked;
  for (const auto& h : histories) {
    if (!c.DevicePass(h, error, &acked)) return false;
  }
  c.ViewPass();
  return true;
}

json CountsJson(const Counts& c) {
  return {{"devices", c.devices},
          {"finished_devices", c.finished_devices},
          {"current_devices", c.current_devices},
          {"messages", c.messages},
          {"acked", c.acked},
          {"delivered", c.delivered},
          {"resent", c.resent},
          {"withheld_listed", c.withheld_listed},
          {"lost", c.lost},
          {"duplicated", c.duplicated},
          {"reordered", c.reordered},
          {"gaps", c.gaps},
          {"leaks", c.leaks},
          {"receipt_regressions", c.receipt_regressions},
          {"receipt_divergences", c.receipt_divergences},
          {"phantoms", c.phantoms},
          {"receipt_leaks", c.receipt_leaks},
          {"views", c.views},
          {"changed_messages", c.changed_messages},
          {"draft_conversations", c.draft_conversations},
          {"version_divergences", c.version_divergences},
          {"resurrections", c.resurrections},
          {"hidden_divergences", c.hidden_divergences},
          {"draft_divergences", c.draft_divergences},
          {"timer_changes", c.timer_changes},
          {"expiring_messages", c.expiring_messages},
          {"expired_messages", c.expired_messages},
          {"expired_shown", c.expired_shown},
          {"timer_divergences", c.timer_divergences},
          {"ok", c.ok()}};
}

std::string FormatReport(const Report& r, size_t max_findings) {
  std::ostringstream out;
  const Counts& c = r.counts;
  out << "devices " << c.devices << " (finished " << c.finished_devices << ", at the final head "
      << c.current_devices << "), server messages " << c.messages
      << ", delivered " << c.delivered << ", resent " << c.resent << " (acked more than once, held to the first ack's seq)"
      << ", withheld seqs listed " << c.withheld_listed << "\n";
  out << "acked " << c.acked << "  lost " << c.lost << "  duplicated " << c.duplicated << "  reordered "
      << c.reordered << "  gaps " << c.gaps << "  leaks " << c.leaks << "  receipt_regressions "
      << c.receipt_regressions << "  receipt_divergences " << c.receipt_divergences << "  phantoms " << c.phantoms
      << "  receipt_leaks " << c.receipt_leaks << "\n";
  out << "final views " << c.views << ", messages edited/deleted/hidden " << c.changed_messages
      << ", drafted conversations " << c.draft_conversations << "\n";
  out << "version_divergences " << c.version_divergences << "  resurrections " << c.resurrections
      << "  hidden_divergences " << c.hidden_divergences << "  draft_divergences " << c.draft_divergences << "\n";
  out << "timer changes " << c.timer_changes << ", expiring messages " << c.expiring_messages << " (expired before the export "
      << c.expired_messages << ")\n";
  out << "expired_shown " << c.expired_shown << "  timer_divergences " << c.timer_divergences << "\n";
  for (size_t i = 0; i < r.findings.size() && i < max_findings; ++i) {
    out << r.findings[i].category << ": " << r.findings[i].detail << "\n";
  }
  if (r.findings.size() > max_findings) out << "... and " << (r.findings.size() - max_findings) << " more\n";
  out << (c.ok() ? "OK" : "FAILED") << "\n";
  return out.str();
}

}  // namespace parley::checker
