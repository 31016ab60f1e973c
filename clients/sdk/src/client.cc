// Client: the worker loop. One thread per Client runs, forever until Stop:
//
//   connect -> auth -> catch up (snapshot for a new cache, then sync pages
//   from the applied cursor) -> online loop -> closed -> wait (backoff or the
//   server's retry_after_ms) -> connect ...
//
// The online loop wakes on any incoming frame (Connection's activity
// callback), on Compose/MarkRead/Stop, or when its next timer is due (at
// most kIdleTickMs while requests are in flight or the outbox holds
// messages; else the heartbeat), and each time:
// applies queued live events (a gap triggers a sync), collects answers to its
// requests (sends, receipts, acks, pings) without blocking, expires and pumps
// the outbox (first pending message of each peer, one in flight per peer),
// reports delivered/read watermarks, acks the cursor, pings on the heartbeat.
//
// Trade-off kept on purpose: one send in flight per peer costs one round
// trip (and one server group commit) per message to the same peer, but a
// retryable failure (rate_limited, storage_full, a lost connection) can never
// let a later message overtake an earlier one. Different peers drain in
// parallel.
#include "parley/client.h"

#include <cctype>
#include <cstdint>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "history.h"
#include "local_cache.h"

namespace parley {

using nlohmann::json;

namespace {

constexpr int kIdleTickMs = 1000;          // the online loop's longest sleep while it has work pending
constexpr int kPollMs = 100;               // Wait* helpers re-check at least this often
constexpr int kDefaultHeartbeatMs = 25000;  // until the auth result says otherwise
constexpr int kDefaultHeartbeatTimeoutMs = 60000;
constexpr size_t kMaxReceiptItems = 256;    // protocol limit per receipt request
constexpr size_t kMaxBodyBytes = 16384;     // protocol limit (docs/protocol.md, "Limits")
constexpr int kMaxSnapshotRetries = 3;
constexpr size_t kMaxSyncSelection = 256;  // protocol limit: conversations in one select_sync selection
constexpr int kMaxHistoryPage = 200;        // protocol limit: history `limit`
// Selective sync: a summarised conversation, once selected, is paged until
// the cache holds every unread message, at most this many pages (10,000
// messages); past it the older unread ones are kept as a count.
constexpr int kMaxFillPages = 50;
constexpr int kAckIntervalMs = 1000;       // cursor acks are batched: at most one per second (and one on Stop)
constexpr int kStopFlushTimeoutMs = 2000;   // Stop waits this long for final receipts and the cursor ack      // cursor_ahead -> snapshot -> sync, at most this often per session

int64_t SystemNowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

int64_t SteadyMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

bool ValidUtf8(const std::string& s) {
  size_t i = 0, n = s.size();
  while (i < n) {
    auto c = static_cast<unsigned char>(s[i]);
    int len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
    if (len == 0 || i + static_cast<size_t>(len) > n) return false;
    uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1f) : len == 3 ? (c & 0x0f) : (c & 0x07);
    for (int k = 1; k < len; ++k) {
      auto cc = static_cast<unsigned char>(s[i + static_cast<size_t>(k)]);
      if ((cc >> 6) != 0x2) return false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff)) {
      return false;
    }
    i += static_cast<size_t>(len);
  }
  return true;
}

std::string Lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// retry_after_ms from an error frame or a close reason ({"retry_after_ms":N}).
std::optional<int64_t> RetryAfterOf(const json& j) {
  if (j.is_object() && j.contains("retry_after_ms") && j["retry_after_ms"].is_number_integer()) {
    return j["retry_after_ms"].get<int64_t>();
  }
  return std::nullopt;
}

std::optional<int64_t> RetryAfterOfReason(const std::string& reason) {
  json j = json::parse(reason, nullptr, false);
  if (j.is_discarded()) return std::nullopt;
  return RetryAfterOf(j);
}

// 32 bits from the system's random source. One std::random_device for the
// process: constructing one costs a CPUID probe and a file open, and every
// Client::Open and Compose used to pay it (a VM traps CPUID).
uint32_t SystemRandom32() {
  static std::mutex mu;
  static std::random_device rd;
  std::lock_guard lock(mu);
  return rd();
}

std::string NewClientId() {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string id;
  for (int i = 0; i < 4; ++i) {
    uint32_t v = SystemRandom32();
    for (int k = 0; k < 8; ++k) {
      id.push_back(kHex[v & 0xf]);
      v >>= 4;
    }
  }
  return id;
}

}  // namespace

const char* MessageStatusName(MessageStatus s) {
  switch (s) {
    case MessageStatus::kPending: return "pending";
    case MessageStatus::kSent: return "sent";
    case MessageStatus::kDelivered: return "delivered";
    case MessageStatus::kRead: return "read";
    case MessageStatus::kFailed: return "failed";
  }
  return "unknown";
}

const char* ClientStateName(ClientState s) {
  switch (s) {
    case ClientState::kStopped: return "stopped";
    case ClientState::kConnecting: return "connecting";
    case ClientState::kOnline: return "online";
    case ClientState::kWaiting: return "waiting";
    case ClientState::kRevoked: return "revoked";
    case ClientState::kDisabled: return "disabled";
  }
  return "unknown";
}

struct Client::Impl {
  ClientOptions opt;
  std::unique_ptr<sdk::LocalCache> cache;
  // Retention (issue 12): the earliest expires_at of a cached message still
  // to drop (0: none; -1: not known, read it from the cache). Reset to -1
  // whenever messages may have been cached (events, acks, history).
  std::atomic<int64_t> next_expiry{-1};
  std::unique_ptr<sdk::HistoryRecorder> history;  // null unless opt.history_path is set
  std::mutex compose_mu;  // Compose: the outbox order and the recorded compose order agree
  std::mt19937_64 rng;  // worker thread only
  // Worker thread only: peer (or "draft:" + peer) -> steady ms before which
  // its next send (or draft save) waits, after a retryable refusal. Kept
  // across reconnects: a server's rate_limited wait outlives the connection.
  std::map<std::string, int64_t> hold_until;
  // Worker thread only: client ids of sends that went out and got no answer
  // yet, in this session or an earlier one (the connection dropped first);
  // an earlier process's are outbox.attempted (see Unanswered). The server may
  // have stored them, so the outbox's maximum age does not fail them: the
  // next answer (the original ack for a retry) decides.
  std::set<std::string> unanswered_sends;

  mutable std::mutex mu;  // guards everything below
  std::condition_variable cv;  // worker wake-ups and every Wait*
  bool wake = false;
  bool stopping = false;
  bool started = false;
  ClientState state = ClientState::kStopped;
  std::string last_error;
  std::shared_ptr<Connection> conn;  // set while online
  size_t endpoint = 0;  // index in opt.endpoints of the node that served last (worker thread)
  std::shared_ptr<Connection> session_conn;  // set from connect to close (DropConnectionForTest)
  std::map<int64_t, int64_t> pending_read;  // conversation -> seq (MarkRead)
  // Stored but not reported delivered when a session ended (its receipt
  // failed or was in flight): the next session reports it. Worker thread.
  std::map<int64_t, int64_t> unreported_delivered;
  std::vector<StatusUpdate> queued_updates;  // from Compose, emitted by the worker
  // Selective sync: the current session's selection as the server answered
  // it (the conversations the app opened are kept in the cache: Opened).
  std::set<int64_t> selection;
  // A summary of a selected conversation was applied (one made before the
  // selection, arriving after its answer): FillSelected pages it. Worker thread.
  bool summary_of_selected = false;
  std::thread worker;

  int64_t Now() { return opt.now_ms ? opt.now_ms() : SystemNowMs(); }

  // Appends a history record (docs/checker.md) when recording.
  void Record(const char* ev, json fields = json::object()) {
    if (history) history->Record(ev, std::move(fields));
  }

  void Wake() {
    {
      std::lock_guard lock(mu);
      wake = true;
    }
    cv.notify_all();
  }

  bool Stopping() {
    std::lock_guard lock(mu);
    return stopping;
  }

  void SetState(ClientState s, const std::string& detail) {
    bool changed;
    {
      std::lock_guard lock(mu);
      bool detailed = s == ClientState::kWaiting || s == ClientState::kRevoked || s == ClientState::kDisabled;
      changed = state != s || (detailed && last_error != detail);
      state = s;
      if (detailed) last_error = detail;
    }
    cv.notify_all();
    if (changed && opt.on_state) opt.on_state(s, detail);
  }

  void Emit(const std::vector<StatusUpdate>& updates) {
    if (!opt.on_status) return;
    for (const auto& u : updates) opt.on_status(u);
  }

  void EmitDrafts(const std::vector<CachedConversation>& drafts) {
    if (!opt.on_draft_changed) return;
    for (const auto& c : drafts) opt.on_draft_changed(c);
  }

  void EmitQueued() {
    std::vector<StatusUpdate> q;
    {
      std::lock_guard lock(mu);
      q.swap(queued_updates);
    }
    Emit(q);
  }

  // Sleeps up to ms; returns true if Stop was called.
  bool SleepOrStop(int64_t ms) {
    std::unique_lock lock(mu);
    cv.wait_for(lock, std::chrono::milliseconds(ms), [&] { return stopping; });
    return stopping;
  }

  struct SessionEnd {
    bool stopped = false;
    bool revoked = false;
    bool disabled = false;  // the operator disabled the account: wait, keep everything
    bool healthy = false;  // got online: the backoff starts over
    std::optional<int64_t> retry_after;
    std::string why;
    int close_code = 0;  // the server's close code, when it closed
  };

  void Run() {
    int attempt = 0;
    EmitQueued();
    // Start set kConnecting already, so the loop's first SetState below
    // changes nothing and does not call on_state: announce it here.
    if (opt.on_state) opt.on_state(ClientState::kConnecting, "");
    while (!Stopping()) {
      SetState(ClientState::kConnecting, "");
      SessionEnd end = Session();
      std::shared_ptr<Connection> last, last_session;
      {
        std::lock_guard lock(mu);
        last.swap(conn);
        last_session.swap(session_conn);
      }
      last.reset();  // outside mu: a closing Connection calls Wake()
      last_session.reset();
      if (end.stopped) break;
      Record("disconnect", {{"code", end.close_code}, {"why", end.why}, {"revoked", end.revoked}});
      if (end.revoked) {
        SetState(ClientState::kRevoked, end.why);
        std::unique_lock lock(mu);
        cv.wait(lock, [&] { return stopping; });
        break;
      }
      if (end.healthy) attempt = 0;
      int64_t delay = end.retry_after ? RetryAfterDelayMs(opt.backoff, *end.retry_after, rng)
                                      : BackoffDelayMs(opt.backoff, attempt++, rng);
      SetState(end.disabled ? ClientState::kDisabled : ClientState::kWaiting, end.why);
      ExpireOldOutbox();
      if (SleepOrStop(delay)) break;
    }
    SetState(ClientState::kStopped, "");
  }

  SessionEnd Closed(const Connection& c, const std::string& fallback) {
    SessionEnd end;
    uint16_t code = c.close_code();
    std::string reason = c.close_reason();
    end.close_code = code;
    if (code == 4002) {
      end.revoked = true;
      end.why = "this device was logged out or unlinked (close 4002): log in again";
      return end;
    }
    end.retry_after = RetryAfterOfReason(reason);
    if (code == 4005) {
      end.disabled = true;
      end.why = "the operator disabled this account (close 4005): trying again later, nothing local is lost";
      return end;
    }
    end.why = code ? "connection closed by the server (" + std::to_string(code) + (reason.empty() ? "" : " " + reason) + ")"
                   : fallback;
    return end;
  }

  // Drops the text of every cached message whose expires_at has passed and
  // reports each through on_message_changed; keeps next_expiry current.
  void ExpireDue() {
    if (next_expiry.load() < 0) next_expiry = cache->NextExpiry();
    const int64_t e = next_expiry.load();
    if (e == 0 || e > Now()) return;
    std::vector<CachedMessage> expired = cache->ExpireMessages(Now());
    next_expiry = cache->NextExpiry();
    if (opt.on_message_changed) {
      for (const auto& m : expired) opt.on_message_changed(m);
    }
  }

  // Applies events (live or a sync page). Returns false on a local error.
  // *gap is set when an event beyond applied+1 was met.
  bool Apply(const std::vector<json>& events, const char* source, std::map<int64_t, int64_t>* to_deliver, bool* gap,
             std::string* why) {
    sdk::ApplyOutcome out;
    sdk::LocalError err;
    if (!cache->ApplyEvents(events, &out, &err)) {
      *why = "local cache: " + err.message;
      return false;
    }
    if (gap) *gap = out.gap;
    {
      std::lock_guard lock(mu);
      for (const auto& e : events) {
        if (e.value("kind", "") == "summary" && selection.count(e.value("conversation_id", int64_t{0})))
          summary_of_selected = true;
      }
    }
    for (auto& [c, s] : out.received) {
      auto& d = (*to_deliver)[c];
      d = std::max(d, s);
    }
    if (history) {
      for (const auto& e : out.applied) RecordEvent(e, source);
    }
    Emit(out.updates);
    next_expiry = -1;
    if (opt.on_message_changed) {
      for (const auto& m : out.changed) opt.on_message_changed(m);
    }
    EmitDrafts(out.drafts);
    if (opt.on_event) {
      for (const auto& e : out.applied) opt.on_event(e);
    }
    cv.notify_all();  // WaitApplied
    return true;
  }

  bool Snapshot(Connection& c, std::map<int64_t, int64_t>* to_deliver, std::string* why) {
    Reply r = c.Call("snapshot", {{"messages", opt.snapshot_messages}}, opt.request_timeout_ms);
    if (!r.ok) {
      *why = "snapshot failed: " + r.code + " " + r.message;
      return false;
    }
    sdk::ApplyOutcome out;
    sdk::LocalError err;
    if (!cache->ApplySnapshot(r.result, &out, &err)) {
      *why = err.message;
      return false;
    }
    for (auto& [conv, s] : out.received) (*to_deliver)[conv] = std::max((*to_deliver)[conv], s);
    if (history) RecordSnapshot(r.result);
    Emit(out.updates);
    EmitDrafts(out.drafts);
    return true;
  }

  // History records of applied events and snapshots (docs/checker.md).
  // Edited or deleted messages also carry "version", "deleted" and
  // "body_hash" (the checker holds a deleted message to its tombstone).
  static json MessageFields(const json& m) {
    json f = {{"conversation_id", m.value("conversation_id", int64_t{0})},
              {"seq", m.value("seq", int64_t{0})},
              {"sender_id", m.value("sender_id", int64_t{0})},
              {"sender_device_id", m.value("sender_device_id", int64_t{0})},
              {"client_id", m.value("client_id", "")}};
    const int64_t version = m.value("version", int64_t{0});
    const bool deleted = m.value("deleted", false);
    if (version > 0 || deleted) {
      f["version"] = version;
      f["deleted"] = deleted;
      f["body_hash"] = sdk::TextHash(m.value("body", ""));
    }
    return f;
  }

  void RecordEvent(const json& e, const char* source) {
    std::string kind = e.value("kind", "");
    json rec = {{"source", source}, {"user_seq", e.value("user_seq", int64_t{0})}, {"kind", kind}};
    if (kind == "message" && e.contains("message")) {
      rec["message"] = MessageFields(e["message"]);
    } else if (kind == "receipt") {
      rec["conversation_id"] = e.value("conversation_id", int64_t{0});
      rec["user_id"] = e.value("user_id", int64_t{0});
      rec["delivered"] = e.value("delivered", int64_t{0});
      rec["read"] = e.value("read", int64_t{0});
    } else if (kind == "conversation" && e.contains("conversation")) {
      rec["conversation_id"] = e["conversation"].value("conversation_id", int64_t{0});
    } else if (kind == "edit" || kind == "delete" || kind == "delete_for_me") {
      rec["conversation_id"] = e.value("conversation_id", int64_t{0});
      rec["seq"] = e.value("seq", int64_t{0});
      if (kind != "delete_for_me") rec["version"] = e.value("version", int64_t{0});
      if (kind == "edit") rec["body_hash"] = sdk::TextHash(e.value("body", ""));
    } else if (kind == "draft") {
      rec["conversation_id"] = e.value("conversation_id", int64_t{0});
      rec["draft_hash"] = sdk::TextHash(e.value("text", ""));
    } else if (kind == "disappearing") {
      rec["conversation_id"] = e.value("conversation_id", int64_t{0});
      rec["seconds"] = e.value("seconds", int64_t{0});
    } else if (kind == "summary") {
      rec["conversation_id"] = e.value("conversation_id", int64_t{0});
      rec["covers"] = e.value("covers", json::array());
    }
    if (e.contains("also_covers")) rec["also_covers"] = e["also_covers"];
    if (e.contains("withheld")) rec["withheld"] = e["withheld"];
    Record("event", std::move(rec));
  }

  void RecordSnapshot(const json& snap) {
    json messages = json::array(), watermarks = json::array(), conversations = json::array();
    for (const auto& c : snap.value("conversations", json::array())) {
      int64_t conv = c.value("conversation", json::object()).value("conversation_id", int64_t{0});
      conversations.push_back(conv);
      for (const auto& m : c.value("messages", json::array())) messages.push_back(MessageFields(m));
      for (const auto& w : c.value("watermarks", json::array())) {
        watermarks.push_back({{"conversation_id", conv},
                              {"user_id", w.value("user_id", int64_t{0})},
                              {"delivered", w.value("delivered", int64_t{0})},
                              {"read", w.value("read", int64_t{0})}});
      }
    }
    Record("snapshot", {{"head", snap.value("head", int64_t{0})}, {"conversations", conversations},
                        {"messages", messages}, {"watermarks", watermarks}});
  }

  // Selective sync: states this session's selection (the selection is per
  // connection, docs/protocol.md "select_sync") before the first sync page.
  // The conversations the app opened are selected again in every session
  // (the newest first, as many as the selection holds besides the recent
  // ones); every selected one starts at the answer's head.
  bool SelectSync(Connection& c, std::string* why) {
    json ids = json::array();
    for (int64_t id : cache->Opened()) {
      if (ids.size() + static_cast<size_t>(opt.sync_recent_conversations) >= kMaxSyncSelection) break;
      ids.push_back(id);
    }
    json fields = {{"recent", opt.sync_recent_conversations}};
    if (!ids.empty()) fields["conversations"] = ids;
    Reply r = c.Call("select_sync", fields, opt.request_timeout_ms);
    if (!r.ok && r.code == "not_member" && !ids.empty()) {
      // One the app opened is not the user's any more: the recent ones now,
      // the others again when the app opens them.
      r = c.Call("select_sync", {{"recent", opt.sync_recent_conversations}}, opt.request_timeout_ms);
    }
    if (!r.ok) {
      *why = "select_sync failed: " + r.code + " " + r.message;
      return false;
    }
    const int64_t head = r.result.value("head", int64_t{0});
    std::set<int64_t> now;
    for (const auto& id : r.result.value("conversations", json::array())) {
      now.insert(id.get<int64_t>());
      cache->MarkSelected(id.get<int64_t>(), head);
    }
    std::lock_guard lock(mu);
    selection = std::move(now);
    return true;
  }

  // Selective sync: pages a summarised conversation's history (through
  // `call`, on the app's or the worker's thread) from the newest until the
  // cache holds every unread message (the pages join the cached messages or
  // reach my read watermark) or the first message, at most kMaxFillPages;
  // then the cached messages count again (LocalCache::MarkPaged). Returns
  // false with *error set when a page failed (the conversation stays
  // summarised: the next open or session pages it again).
  bool Fill(const std::function<Reply(const json&)>& call, int64_t id, Reply* error) {
    int64_t before = 0, oldest = 0;
    bool held = false;
    for (int page = 0; page < kMaxFillPages && !held; ++page) {
      json fields = {{"conversation_id", id}, {"limit", kMaxHistoryPage}};
      if (before > 0) fields["before"] = before;
      Reply r = call(fields);
      if (!r.ok) {
        if (error) *error = r;
        return false;
      }
      const json messages = r.result.value("messages", json::array());
      if (history) {
        json ms = json::array();
        for (const auto& m : messages) ms.push_back(MessageFields(m));
        Record("history", {{"conversation_id", id}, {"messages", ms}});
      }
      sdk::LocalError err;
      if (!cache->StoreHistory(id, messages, r.result.value("withheld", json::array()), &err)) {
        if (error) *error = Reply{false, json(), err.code, err.message, json()};
        return false;
      }
      next_expiry = -1;
      if (messages.empty() || !r.result.value("has_more", false)) {
        held = true;  // the first message reached: nothing older exists
        if (!messages.empty()) oldest = messages.front().value("seq", int64_t{0});
        break;
      }
      before = oldest = messages.front().value("seq", int64_t{0});
      held = cache->FillReached(id, oldest);
    }
    cache->MarkPaged(id, oldest, held);
    return true;
  }

  // Pages the selected conversations that are still summarised (selected
  // by `recent` after summaries stood for them), so that a selected
  // conversation's count always comes from complete messages. Worker thread.
  void FillSelected(Connection& c) {
    std::set<int64_t> ids;
    {
      std::lock_guard lock(mu);
      ids = selection;
    }
    auto call = [&](const json& fields) { return c.Call("history", fields, opt.request_timeout_ms); };
    for (int64_t id : cache->Summarised()) {
      if (!ids.count(id)) continue;
      if (!Fill(call, id, nullptr) || Stopping()) return;
    }
  }

  // Loops sync pages from the applied cursor until has_more is false.
  // final_sync: run even though Stop was called (the recorder's last sync).
  bool SyncLoop(Connection& c, std::map<int64_t, int64_t>* to_deliver, std::string* why, bool final_sync = false) {
    int snapshots = 0;
    while (final_sync || !Stopping()) {
      if (!cache->applied()) {
        if (!Snapshot(c, to_deliver, why)) return false;
      }
      int64_t after = cache->applied().value_or(0);
      Reply r = c.Call("sync", {{"after", after}, {"limit", opt.sync_page_limit}}, opt.request_timeout_ms);
      if (!r.ok) {
        if ((r.code == "cursor_ahead" || r.code == "cursor_too_old") && snapshots++ < kMaxSnapshotRetries) {
          if (!Snapshot(c, to_deliver, why)) return false;
          continue;
        }
        *why = "sync failed: " + r.code + " " + r.message;
        return false;
      }
      std::vector<json> events(r.result["events"].begin(), r.result["events"].end());
      bool gap = false;
      if (!Apply(events, "sync", to_deliver, &gap, why)) return false;
      if (!r.result.value("has_more", false)) {
        Record("caught_up", {{"head", r.result.value("head", int64_t{0})}, {"applied", cache->applied().value_or(0)}});
        return true;
      }
    }
    return true;
  }

  enum class Kind { kSend, kReceipt, kAck, kPing, kDraft, kOpen };
  struct InFlight {
    InFlight() = default;
    InFlight(Kind k, int64_t started, std::string cid, std::string p, int64_t g = 0, int64_t conv = 0,
             std::string t = {})
        : kind(k), started_ms(started), client_id(std::move(cid)), peer(std::move(p)), gen(g), conversation_id(conv),
          text(std::move(t)) {}
    Kind kind = Kind::kPing;
    int64_t started_ms = 0;
    std::string client_id, peer;
    // kDraft: the draft's generation, conversation and text
    int64_t gen = 0, conversation_id = 0;
    std::string text;
    // kReceipt: what the request reports, conversation -> (delivered, read),
    // to report again if it fails retryably or is lost with the connection.
    std::map<int64_t, std::pair<int64_t, int64_t>> receipts;
    // kSend: no earlier send of the message was left unanswered, so a
    // refusal of this one says the server does not have it.
    bool first_attempt = false;
  };

  // Receipts a request failed to report (a retryable error, or the
  // connection lost while it was in flight) go back to be reported again:
  // delivered into `to_deliver`, read into pending_read. Watermarks are
  // cumulative, so merging keeps the highest. Worker thread.
  void ReportAgain(const std::map<int64_t, std::pair<int64_t, int64_t>>& items, std::map<int64_t, int64_t>* to_deliver) {
    std::lock_guard lock(mu);
    for (const auto& [conv, dr] : items) {
      if (dr.first > 0) (*to_deliver)[conv] = std::max((*to_deliver)[conv], dr.first);
      if (dr.second > 0) pending_read[conv] = std::max(pending_read[conv], dr.second);
    }
  }

  // When a session ends: the receipts it did not report (in flight, or not
  // started) go to the next session. Worker thread.
  void CarryOver(const std::map<int64_t, InFlight>& inflight, std::map<int64_t, int64_t>& to_deliver) {
    for (const auto& [id, f] : inflight) {
      if (f.kind == Kind::kReceipt) ReportAgain(f.receipts, &to_deliver);
    }
    for (const auto& [conv, s] : to_deliver) unreported_delivered[conv] = std::max(unreported_delivered[conv], s);
  }

  // The connection of a new session: the endpoint that served last, else
  // the next ones in order (ClientOptions::endpoints). When every endpoint
  // refused with a Retry-After (at its connection limit), *retry_after is the
  // soonest of them. Worker thread.
  std::shared_ptr<Connection> OpenAnyEndpoint(std::string* why, std::optional<int64_t>* retry_after) {
    std::vector<std::string> targets = opt.endpoints;
    if (targets.empty()) targets.push_back(opt.host + ":" + std::to_string(opt.port));
    std::string errors;
    bool every_one_said_when = true;
    int64_t soonest = 0;
    for (size_t i = 0; i < targets.size(); ++i) {
      size_t at = (endpoint + i) % targets.size();
      ConnectOptions co;
      co.host = opt.host;
      co.port = opt.port;
      if (!opt.endpoints.empty() && !ParseServerAddress(targets[at], &co)) {
        errors += (errors.empty() ? "" : "; ") + targets[at] + ": not an address";
        continue;
      }
      co.tls = co.tls || opt.tls;
      co.ca_file = opt.ca_file;
      co.verify_peer = opt.verify_peer;
      co.timeout_ms = opt.connect_timeout_ms;
      std::string err;
      int64_t said = 0;
      std::shared_ptr<Connection> c(Connection::Open(co, &err, &said).release());
      if (c) {
        endpoint = at;
        return c;
      }
      errors += (errors.empty() ? "" : "; ") + targets[at] + " (" + err + ")";
      if (said <= 0) every_one_said_when = false;
      soonest = soonest == 0 ? said : std::min(soonest, said);
    }
    *why = "server unreachable at " + errors;
    if (every_one_said_when && soonest > 0) *retry_after = soonest;
    return nullptr;
  }

  SessionEnd Session() {
    SessionEnd end;
    std::shared_ptr<Connection> c = OpenAnyEndpoint(&end.why, &end.retry_after);
    if (!c) return end;
    c->SetActivityCallback([this] { Wake(); });
    {
      std::lock_guard lock(mu);
      session_conn = c;
    }
    Reply auth = c->Call("auth", {{"token", opt.token}}, opt.request_timeout_ms);
    if (!auth.ok) {
      if (auth.code == "invalid_token") {
        end.revoked = true;
        end.why = "the device token was refused (invalid_token): log in again";
        return end;
      }
      if (c->closed()) return Closed(*c, "connection lost during auth");
      end.retry_after = RetryAfterOf(auth.frame);
      end.disabled = auth.code == "user_disabled";
      end.why = "auth failed: " + auth.code + " " + auth.message;
      return end;
    }
    cache->SetIdentity(auth.result.value("user_id", int64_t{0}), auth.result.value("username", ""),
                       auth.result.value("device_id", int64_t{0}));
    if (history) {
      history->SetIdentity(cache->user_id(), cache->device_id());
      auto applied = cache->applied();
      Record("resume", {{"cursor", applied ? json(*applied) : json(nullptr)}});
    }
    int heartbeat_ms = auth.result.value("heartbeat_interval_ms", kDefaultHeartbeatMs);
    int heartbeat_timeout_ms = auth.result.value("heartbeat_timeout_ms", kDefaultHeartbeatTimeoutMs);

    if (opt.sync_recent_conversations > 0 && !SelectSync(*c, &end.why)) {
      if (c->closed()) return Closed(*c, end.why);
      c->Abort();
      return end;
    }
    // What earlier sessions stored but could not report goes first.
    std::map<int64_t, int64_t> to_deliver;
    to_deliver.swap(unreported_delivered);
    if (!SyncLoop(*c, &to_deliver, &end.why)) {
      unreported_delivered.swap(to_deliver);
      if (c->closed()) return Closed(*c, end.why);
      c->Abort();
      return end;
    }
    if (opt.sync_recent_conversations > 0) FillSelected(*c);
    summary_of_selected = false;  // the fill above paged them
    {
      std::lock_guard lock(mu);
      conn = c;
    }
    SetState(ClientState::kOnline, "");
    end.healthy = true;

    std::map<int64_t, InFlight> inflight;
    std::set<std::string> busy_peers;
    std::set<std::string> draft_busy;  // peers with a set_draft or open_conversation in flight
    std::map<std::string, int> peer_attempts;
    int64_t acked = 0;
    int64_t last_ack = 0;
    int64_t last_ping = SteadyMs();
    bool ping_out = false;
    int64_t receipts_hold_until = 0;  // steady ms (a receipt failed retryably)

    while (true) {
      if (Stopping()) {
        // Recording: end the history with a caught_up record (a finished
        // device, docs/checker.md) — one last sync before closing.
        if (history) {
          std::string ignored;
          SyncLoop(*c, &to_deliver, &ignored, /*final_sync=*/true);
        }
        FlushOnStop(*c, &to_deliver, acked);
        c->SetActivityCallback({});
        c->Close();
        end.stopped = true;
        return end;
      }
      EmitQueued();
      // 1. Live events, and `head` notices (the server was cut off from
      // its other nodes: live events may have been lost; behind it, sync).
      std::vector<json> batch;
      int64_t noticed_head = 0;
      while (auto f = c->NextEvent(0)) {
        const std::string type = f->value("type", "");
        if (type == "event" && f->contains("event")) batch.push_back((*f)["event"]);
        else if (type == "head") noticed_head = std::max(noticed_head, f->value("head", int64_t{0}));
      }
      if (!batch.empty()) {
        bool gap = false;
        if (!Apply(batch, "live", &to_deliver, &gap, &end.why)) {
          CarryOver(inflight, to_deliver);
          c->Abort();
          return end;
        }
        if (gap && !SyncLoop(*c, &to_deliver, &end.why)) break;
      }
      if (summary_of_selected) {
        summary_of_selected = false;
        FillSelected(*c);
      }
      // 1b. Retention: cached messages leave the device at their
      // expires_at (docs/protocol.md "Retention"), whether or not the
      // server's delete event has come.
      ExpireDue();
      // 2. Answers.
      int64_t now_steady = SteadyMs();
      bool need_sync = noticed_head > cache->applied().value_or(0);  // synced at the end of step 2, as for a ping
      bool abort = false;
      for (auto it = inflight.begin(); it != inflight.end();) {
        Reply r = c->Await(it->first, 0);
        if (r.timed_out()) {
          int limit = it->second.kind == Kind::kPing ? heartbeat_timeout_ms : opt.request_timeout_ms;
          if (now_steady - it->second.started_ms > limit) abort = true;
          ++it;
          continue;
        }
        const InFlight& f = it->second;
        if (f.kind == Kind::kSend) {
          busy_peers.erase(f.peer);
          HandleSendReply(f, r, &peer_attempts);
        } else if (f.kind == Kind::kPing) {
          ping_out = false;
          if (r.ok && r.result.value("head", int64_t{0}) > cache->applied().value_or(0)) need_sync = true;
        } else if (f.kind == Kind::kDraft || f.kind == Kind::kOpen) {
          draft_busy.erase(f.peer);
          HandleDraftReply(f, r);
        } else if (f.kind == Kind::kReceipt && !r.ok && r.frame.is_object() && r.frame.value("retryable", false)) {
          // Not stored (e.g. `unavailable`): report it again after the
          // server's retry-after, or the sender's tick would stay behind.
          ReportAgain(f.receipts, &to_deliver);
          receipts_hold_until = now_steady + r.frame.value("retry_after_ms", int64_t{kIdleTickMs});
        }
        it = inflight.erase(it);
      }
      if (c->closed()) break;
      if (abort) {
        end.why = "no answer from the server in time: reconnecting";
        c->Abort();
        break;
      }
      if (need_sync && !SyncLoop(*c, &to_deliver, &end.why)) break;
      // 3. Outbox: expire, then the first pending message of each idle peer.
      // A message sent without an answer yet is not expired (see
      // unanswered_sends), so it is never reported failed and then sent.
      std::set<std::string> seen;
      std::vector<StatusUpdate> expired;
      size_t outbox_rows = 0;
      for (const auto& row : cache->Outbox(false)) {
        ++outbox_rows;
        if (TooOld(row) && !Unanswered(row)) {
          expired.push_back(Expire(row));
          continue;
        }
        if (!seen.insert(row.peer).second) continue;
        if (busy_peers.count(row.peer)) continue;
        auto h = hold_until.find(row.peer);
        if (h != hold_until.end() && h->second > now_steady) continue;
        // Recorded in the file before it goes out: a later process must
        // not expire it either. Should that write fail, this process still
        // knows (the set), and the send goes ahead.
        const bool first_attempt = unanswered_sends.insert(row.client_id).second && !row.attempted;
        if (first_attempt) cache->SetOutboxAttempted(row.client_id, true, nullptr);
        int64_t id = c->Start("send", {{"to", row.peer}, {"client_id", row.client_id}, {"body", row.body}});
        Record("send", {{"client_id", row.client_id}, {"peer", row.peer}});
        inflight[id] = {Kind::kSend, now_steady, row.client_id, row.peer};
        inflight[id].first_attempt = first_attempt;
        busy_peers.insert(row.peer);
      }
      Emit(expired);
      // 3b. Drafts: the newest unsaved text of each idle peer, once it is
      // draft_debounce_ms old (coalesced: one request in flight per peer).
      int64_t next_draft = INT64_MAX;  // steady ms when a debounced draft is due
      for (const auto& d : cache->PendingDrafts()) {
        if (draft_busy.count(d.peer)) continue;
        auto h = hold_until.find("draft:" + d.peer);
        if (h != hold_until.end() && h->second > now_steady) continue;
        int64_t due_in = d.set_at + opt.draft_debounce_ms - Now();
        if (due_in > 0) {
          next_draft = std::min(next_draft, now_steady + due_in);
          continue;
        }
        auto conv = cache->ConversationWith(d.peer);
        if (!conv) {
          // A conversation not known here yet: open it first.
          inflight[c->Start("open_conversation", {{"username", d.peer}})] = {Kind::kOpen, now_steady, "", d.peer};
        } else {
          int64_t id = c->Start("set_draft", {{"conversation_id", conv->conversation_id}, {"text", d.text}});
          inflight[id] = {Kind::kDraft, now_steady, "", d.peer, d.gen, conv->conversation_id, d.text};
        }
        draft_busy.insert(d.peer);
      }
      // 4. Receipts: delivered for what was stored, read for what MarkRead said.
      if (now_steady >= receipts_hold_until) {
        for (auto& [id, items] : StartReceipts(*c, &to_deliver)) {
          InFlight& f = inflight[id] = {Kind::kReceipt, now_steady, "", ""};
          f.receipts = std::move(items);
        }
      }
      // 5. Cursor ack, at most every kAckIntervalMs (each ack is a server write).
      int64_t applied_now = cache->applied().value_or(0);
      if (applied_now > acked && now_steady - last_ack >= kAckIntervalMs) {
        last_ack = now_steady;
        inflight[c->Start("ack", {{"user_seq", applied_now}})] = {Kind::kAck, now_steady, "", ""};
        acked = applied_now;
      }
      // 6. Heartbeat.
      if (!ping_out && now_steady - last_ping >= heartbeat_ms) {
        inflight[c->Start("ping")] = {Kind::kPing, now_steady, "", ""};
        ping_out = true;
        last_ping = now_steady;
      }
      // 7. Sleep until something happens or the next timer is due. With
      // requests in flight or messages queued, at most kIdleTickMs (request
      // timeouts, the outbox's maximum age); an idle client sleeps until its
      // heartbeat: thousands of idle clients in one process (many accounts,
      // the load generator) cost no wake-ups and no cache queries.
      int64_t next = now_steady + (inflight.empty() && !outbox_rows ? heartbeat_ms : kIdleTickMs);
      if (!ping_out) next = std::min<int64_t>(next, last_ping + heartbeat_ms);
      if (applied_now > acked) next = std::min(next, last_ack + kAckIntervalMs);
      std::erase_if(hold_until, [&](const auto& h) { return h.second <= now_steady; });
      for (auto& [peer, t] : hold_until) next = std::min(next, t);
      // A receipt held back after a retryable failure is due then: without
      // this an idle client slept until its heartbeat (or the next event)
      // before reporting it again, the sender's tick at "sent" meanwhile.
      if (receipts_hold_until > now_steady) next = std::min(next, receipts_hold_until);
      next = std::min(next, next_draft);
      if (int64_t e = next_expiry.load(); e > 0)
        next = std::min(next, now_steady + std::max<int64_t>(0, e - Now()));
      int64_t sleep_ms = std::max<int64_t>(1, next - SteadyMs());
      std::unique_lock lock(mu);
      cv.wait_for(lock, std::chrono::milliseconds(sleep_ms), [&] { return wake || stopping; });
      wake = false;
    }
    CarryOver(inflight, to_deliver);
    if (c->closed()) {
      auto closed = Closed(*c, end.why.empty() ? "connection lost" : end.why);
      closed.healthy = true;
      return closed;
    }
    c->Abort();
    return end;
  }

  // Starts `receipt` requests (at most kMaxReceiptItems items each) for
  // what was stored (`to_deliver`, emptied; reported only with
  // auto_report_delivered) and what MarkRead asked for; returns each one's
  // id and what it reports (conversation -> (delivered, read)).
  using ReceiptItems = std::map<int64_t, std::pair<int64_t, int64_t>>;
  std::vector<std::pair<int64_t, ReceiptItems>> StartReceipts(Connection& c, std::map<int64_t, int64_t>* to_deliver) {
    ReceiptItems m;
    if (opt.auto_report_delivered) {
      for (auto& [conv, s] : *to_deliver) m[conv].first = s;
    }
    to_deliver->clear();
    {
      std::lock_guard lock(mu);
      for (auto& [conv, s] : pending_read) m[conv].second = s;
      pending_read.clear();
    }
    std::vector<std::pair<int64_t, ReceiptItems>> requests;
    json items = json::array();
    ReceiptItems reported;
    auto start = [&] {
      requests.emplace_back(c.Start("receipt", {{"items", items}}), std::move(reported));
      items = json::array();
      reported.clear();
    };
    for (auto& [conv, dr] : m) {
      if (dr.first <= 0 && dr.second <= 0) continue;
      json item = {{"conversation_id", conv}};
      if (dr.first > 0) item["delivered"] = dr.first;
      if (dr.second > 0) item["read"] = dr.second;
      items.push_back(item);
      reported[conv] = dr;
      if (items.size() == kMaxReceiptItems) start();
    }
    if (!items.empty()) start();
    return requests;
  }

  // Before closing on Stop: report what was received/read and ack the
  // cursor, waiting a bounded time (a CLI run exits right after).
  void FlushOnStop(Connection& c, std::map<int64_t, int64_t>* to_deliver, int64_t acked) {
    std::vector<int64_t> ids;
    for (const auto& request : StartReceipts(c, to_deliver)) ids.push_back(request.first);
    int64_t applied_now = cache->applied().value_or(0);
    if (applied_now > acked) ids.push_back(c.Start("ack", {{"user_seq", applied_now}}));
    auto deadline = SteadyMs() + kStopFlushTimeoutMs;
    for (int64_t id : ids) c.Await(id, static_cast<int>(std::max<int64_t>(1, deadline - SteadyMs())));
  }

  bool TooOld(const sdk::OutboxRow& row) { return Now() - row.created_at > opt.outbox_max_age_ms; }

  // A send of it went out without an answer, from this process or another
  // one using the cache file.
  bool Unanswered(const sdk::OutboxRow& row) { return row.attempted || unanswered_sends.count(row.client_id) > 0; }

  // Between connections (nothing in flight): marks what passed the outbox's
  // maximum age failed now, so an app that stays offline hears of it within
  // one retry interval rather than at the next connection.
  void ExpireOldOutbox() {
    std::vector<StatusUpdate> expired;
    std::set<std::string> queued;
    for (const auto& row : cache->Outbox(false)) {
      queued.insert(row.client_id);
      if (TooOld(row) && !Unanswered(row)) expired.push_back(Expire(row));
    }
    std::erase_if(unanswered_sends, [&](const std::string& id) { return !queued.count(id); });
    Emit(expired);
    if (!expired.empty()) cv.notify_all();  // WaitOutboxDrained
  }

  StatusUpdate Expire(const sdk::OutboxRow& row) {
    std::string msg = "not sent within the outbox's maximum age (" + std::to_string(opt.outbox_max_age_ms / 1000) + " s)";
    sdk::LocalError err;
    cache->FailOutbox(row.client_id, kErrExpired, msg, &err);
    Record("send_failed", {{"client_id", row.client_id}, {"peer", row.peer}, {"code", kErrExpired}});
    return {row.client_id, row.peer, 0, 0, MessageStatus::kFailed, kErrExpired, msg};
  }

  void HandleSendReply(const InFlight& f, const Reply& r, std::map<std::string, int>* attempts) {
    if (r.ok) {
      (*attempts)[f.peer] = 0;
      std::vector<StatusUpdate> updates;
      sdk::LocalError err;
      next_expiry = -1;
      if (!cache->RecordSent(f.client_id, r.result, &updates, &err)) {
        // Not recorded locally (disk full): the message stays queued, still
        // unanswered as far as the maximum age goes (the server has it), and
        // the retry gets the original ack back (same client id).
        std::lock_guard lock(mu);
        last_error = err.message;
        hold_until[f.peer] = SteadyMs() + BackoffDelayMs(opt.backoff, (*attempts)[f.peer]++, rng);
        return;
      }
      unanswered_sends.erase(f.client_id);
      Record("ack", {{"client_id", f.client_id},
                     {"peer", f.peer},
                     {"conversation_id", r.result.value("conversation_id", int64_t{0})},
                     {"seq", r.result.value("seq", int64_t{0})},
                     {"duplicate", r.result.value("duplicate", false)}});
      Emit(updates);
      cv.notify_all();  // WaitOutboxDrained
      return;
    }
    if (r.code == "closed" || r.code == "timeout") return;  // retried on the next connection
    bool retryable = r.frame.is_object() && r.frame.value("retryable", false);
    if (retryable) {
      // Refused before the server looked for the client id (a rate limit, an
      // overload): this attempt is not stored, but an earlier unanswered one
      // may be, and still counts.
      if (f.first_attempt) {
        unanswered_sends.erase(f.client_id);
        cache->SetOutboxAttempted(f.client_id, false, nullptr);
      }
      auto ra = RetryAfterOf(r.frame);
      int64_t delay = ra ? RetryAfterDelayMs(opt.backoff, *ra, rng) : BackoffDelayMs(opt.backoff, (*attempts)[f.peer]++, rng);
      hold_until[f.peer] = SteadyMs() + delay;
      return;
    }
    unanswered_sends.erase(f.client_id);  // FailOutbox clears outbox.attempted
    sdk::LocalError err;
    cache->FailOutbox(f.client_id, r.code, r.message, &err);
    Record("send_failed", {{"client_id", f.client_id}, {"peer", f.peer}, {"code", r.code}});
    Emit({{f.client_id, f.peer, 0, 0, MessageStatus::kFailed, r.code, r.message}});
    cv.notify_all();
  }

  // set_draft / open_conversation answers (a draft's peer). A lost
  // connection or a retryable error keeps the draft for a later attempt;
  // any other error drops it (the server will never take it).
  void HandleDraftReply(const InFlight& f, const Reply& r) {
    if (r.ok) {
      if (f.kind == Kind::kOpen) {
        sdk::LocalError err;
        cache->StoreConversation(r.result.value("conversation", json::object()), &err);
      } else {
        cache->DraftSaved(f.peer, f.gen, f.conversation_id, f.text,
                          r.result.value("changed", false) ? r.result.value("user_seq", int64_t{0}) : 0, Now());
        cv.notify_all();  // WaitDraftsSaved
      }
      Wake();  // a newer text may be waiting
      return;
    }
    if (r.code == "closed" || r.code == "timeout") return;
    if (r.frame.is_object() && r.frame.value("retryable", false)) {
      auto ra = RetryAfterOf(r.frame);
      hold_until["draft:" + f.peer] =
          SteadyMs() + (ra ? RetryAfterDelayMs(opt.backoff, *ra, rng) : BackoffDelayMs(opt.backoff, 0, rng));
      return;
    }
    for (const auto& d : cache->PendingDrafts()) {
      if (d.peer == f.peer) cache->DropPendingDraft(d.peer, f.kind == Kind::kDraft ? f.gen : d.gen);
    }
    {
      std::lock_guard lock(mu);
      last_error = "draft for " + f.peer + " not saved: " + r.code + " " + r.message;
    }
    cv.notify_all();
  }
};

Client::Client() : impl_(std::make_unique<Impl>()) {}

Client::~Client() { Stop(); }

void Client::DropConnectionForTest() {
  std::shared_ptr<Connection> c;
  {
    std::lock_guard lock(impl_->mu);
    c = impl_->session_conn;
  }
  if (c) c->Abort();
}

std::unique_ptr<Client> Client::Open(ClientOptions options, std::string* error) {
  if (options.db_path.empty()) {
    if (error) *error = "ClientOptions.db_path is required";
    return nullptr;
  }
  sdk::LocalError err;
  auto cache = sdk::LocalCache::Open(options.db_path, options.cache_max_pages, &err);
  if (!cache) {
    if (error) *error = err.message;
    return nullptr;
  }
  std::unique_ptr<Client> c(new Client());
  if (!options.history_path.empty()) {
    std::string herr;
    c->impl_->history = sdk::HistoryRecorder::Open(options.history_path, &herr);
    if (!c->impl_->history) {
      if (error) *error = herr;
      return nullptr;
    }
    c->impl_->history->SetIdentity(cache->user_id(), cache->device_id());
    auto applied = cache->applied();
    c->impl_->history->Record("open", {{"cursor", applied ? json(*applied) : json(nullptr)}});
  }
  c->impl_->cache = std::move(cache);
  uint64_t seed = options.random_seed ? options.random_seed : (uint64_t{SystemRandom32()} << 32) ^ SystemRandom32();
  c->impl_->rng.seed(seed);
  c->impl_->opt = std::move(options);
  return c;
}

Reply Client::Register(const std::string& host, uint16_t port, const std::string& username,
                       const std::string& password, int timeout_ms) {
  ConnectOptions co;
  co.host = host;
  co.port = port;
  co.timeout_ms = timeout_ms;
  return Register(co, username, password, timeout_ms);
}

Reply Client::Register(const ConnectOptions& server, const std::string& username, const std::string& password,
                       int timeout_ms) {
  std::string err;
  auto c = Connection::Open(server, &err);
  if (!c)
    return Reply{false, json(), kErrUnreachable,
                 "server unreachable at " + server.host + ":" + std::to_string(server.port) + " (" + err + ")", json()};
  return c->Call("register", {{"username", username}, {"password", password}}, timeout_ms);
}

LoginResult Client::Login(const std::string& host, uint16_t port, const std::string& username,
                          const std::string& password, const std::string& device_name, const std::string& platform,
                          int timeout_ms) {
  ConnectOptions co;
  co.host = host;
  co.port = port;
  co.timeout_ms = timeout_ms;
  return Login(co, username, password, device_name, platform, timeout_ms);
}

LoginResult Client::Login(const ConnectOptions& server, const std::string& username, const std::string& password,
                          const std::string& device_name, const std::string& platform, int timeout_ms) {
  LoginResult out;
  std::string err;
  auto c = Connection::Open(server, &err);
  if (!c) {
    out.code = kErrUnreachable;
    out.message = "server unreachable at " + server.host + ":" + std::to_string(server.port) + " (" + err + ")";
    return out;
  }
  Reply r = c->Call("login", {{"username", username}, {"password", password}, {"device_name", device_name},
                              {"platform", platform}}, timeout_ms);
  if (!r.ok) {
    out.code = r.code;
    out.message = r.message;
    return out;
  }
  out.ok = true;
  out.user_id = r.result.value("user_id", int64_t{0});
  out.device_id = r.result.value("device_id", int64_t{0});
  out.username = r.result.value("username", "");
  out.token = r.result.value("token", "");
  c->Close();
  return out;
}

void Client::Start() {
  std::lock_guard lock(impl_->mu);
  if (impl_->started || impl_->opt.token.empty()) return;
  impl_->started = true;
  impl_->stopping = false;
  // Connecting from the moment Start returns, not from when the worker first
  // runs: a caller that checks state() at once (as the checker's self-test
  // does before it waits for every started device) must not see the last
  // run's kStopped. The worker announces it (Run): callbacks run there.
  impl_->state = ClientState::kConnecting;
  impl_->worker = std::thread([m = impl_.get()] { m->Run(); });
}

void Client::Stop() {
  {
    std::lock_guard lock(impl_->mu);
    if (!impl_->started) return;
    impl_->stopping = true;
  }
  impl_->cv.notify_all();
  if (impl_->worker.joinable()) impl_->worker.join();
  // The cache's final view (messages, drafts, timers), for the checker's
  // convergence checks: after the last sync, so it is what the device shows.
  // Messages past their expires_at leave first (the loop's timer may not
  // have run since they came), and the view says by which clock ("clock":
  // the checker holds every message expired by then to a tombstone).
  if (impl_->history) {
    const int64_t now = impl_->Now();
    std::vector<CachedMessage> expired = impl_->cache->ExpireMessages(now);
    impl_->next_expiry = -1;
    if (impl_->opt.on_message_changed) {
      for (const auto& m : expired) impl_->opt.on_message_changed(m);
    }
    json view = impl_->cache->HistoryView();
    view["clock"] = now;
    impl_->Record("view", std::move(view));
  }
  impl_->Record("stop");
  std::lock_guard lock(impl_->mu);
  impl_->started = false;
  impl_->stopping = false;
}

ComposeResult Client::Compose(const std::string& peer, const std::string& body) {
  ComposeResult out;
  if (body.empty() || body.size() > kMaxBodyBytes || !ValidUtf8(body)) {
    out.code = "bad_request";
    out.message = "a message body is 1-" + std::to_string(kMaxBodyBytes) + " bytes of UTF-8";
    return out;
  }
  if (peer.empty()) {
    out.code = "bad_request";
    out.message = "no recipient";
    return out;
  }
  sdk::OutboxRow row;
  row.client_id = NewClientId();
  row.peer = Lower(peer);
  row.body = body;
  row.created_at = impl_->Now();
  sdk::LocalError err;
  {
    std::lock_guard compose_lock(impl_->compose_mu);
    if (!impl_->cache->AddOutbox(row, &err)) {
      out.code = err.code;
      out.message = err.message;
      return out;
    }
    if (impl_->history) {
      impl_->history->Record("compose", {{"client_id", row.client_id},
                                         {"peer", row.peer},
                                         {"order", impl_->history->NextComposeOrder(row.peer)}});
    }
  }
  out.ok = true;
  out.client_id = row.client_id;
  {
    std::lock_guard lock(impl_->mu);
    impl_->queued_updates.push_back({row.client_id, row.peer, 0, 0, MessageStatus::kPending, "", ""});
  }
  impl_->Wake();
  return out;
}

void Client::MarkRead(int64_t conversation_id, int64_t seq) {
  {
    std::lock_guard lock(impl_->mu);
    auto& r = impl_->pending_read[conversation_id];
    r = std::max(r, seq);
  }
  impl_->Wake();
}

DraftResult Client::SetDraft(const std::string& peer_in, const std::string& text) {
  DraftResult out;
  if (text.size() > kMaxBodyBytes || !ValidUtf8(text)) {
    out.code = "bad_request";
    out.message = "a draft is 0-" + std::to_string(kMaxBodyBytes) + " bytes of UTF-8";
    return out;
  }
  std::string peer = Lower(peer_in);
  if (peer.empty()) {
    out.code = "bad_request";
    out.message = "no conversation";
    return out;
  }
  sdk::LocalError err;
  if (!impl_->cache->SetPendingDraft(peer, text, impl_->Now(), &err)) {
    out.code = err.code;
    out.message = err.message;
    return out;
  }
  out.ok = true;
  impl_->Wake();
  return out;
}

DraftResult Client::SetDraft(int64_t conversation_id, const std::string& text) {
  std::string peer = impl_->cache->PeerOf(conversation_id);
  if (peer.empty()) {
    DraftResult out;
    out.code = "bad_request";
    out.message = "conversation " + std::to_string(conversation_id) + " is not in the local cache";
    return out;
  }
  return SetDraft(peer, text);
}

std::string Client::Draft(const std::string& peer) { return impl_->cache->Draft(Lower(peer)); }

size_t Client::PendingDraftCount() { return impl_->cache->PendingDrafts().size(); }

Reply Client::Request(const std::string& type, json fields, int timeout_ms) {
  std::shared_ptr<Connection> c;
  {
    std::lock_guard lock(impl_->mu);
    c = impl_->conn;
  }
  if (!c) return Reply{false, json(), kErrOffline, "not connected to the server", json()};
  return c->Call(type, std::move(fields), timeout_ms > 0 ? timeout_ms : impl_->opt.request_timeout_ms);
}

std::vector<CachedMessage> Client::OpenConversation(const std::string& peer_in, int limit, Reply* error) {
  std::string peer = Lower(peer_in);
  auto conv = impl_->cache->ConversationWith(peer);
  if (impl_->opt.sync_recent_conversations <= 0 || !conv) {
    return conv ? impl_->cache->Messages(conv->conversation_id, 0, limit) : std::vector<CachedMessage>{};
  }
  const int64_t id = conv->conversation_id;
  bool selected = false;
  {
    std::lock_guard lock(impl_->mu);
    selected = impl_->selection.count(id) != 0;
  }
  if (!selected) {
    // Selected first, then paged: whatever is stored after the answer
    // arrives in full, and the pages hold everything before.
    Reply r = Request("select_sync", {{"add", {id}}});
    if (!r.ok) {
      if (error) *error = r;
      return impl_->cache->Messages(id, 0, limit);
    }
    impl_->cache->MarkSelected(id, r.result.value("head", int64_t{0}));
    impl_->cache->AddOpened(id, impl_->Now());
    std::lock_guard lock(impl_->mu);
    for (const auto& x : r.result.value("conversations", json::array())) impl_->selection.insert(x.get<int64_t>());
  } else {
    impl_->cache->AddOpened(id, impl_->Now());  // selected as recent now; opened: selected in every session
  }
  // Whether it is summarised now, not when it was looked up: a summary may
  // have been applied while the selection was on its way.
  conv = impl_->cache->ConversationWith(peer);
  if (conv && conv->summarised) {
    // From the newest back until the cache holds every unread message
    // (beyond `limit` if need be: the count comes from the messages then).
    impl_->Fill([&](const json& fields) { return Request("history", fields); }, id, error);
  }
  return impl_->cache->Messages(id, 0, limit, impl_->Now());
}

std::vector<CachedMessage> Client::History(const std::string& peer_in, int64_t before, int limit, bool* has_more,
                                           Reply* error) {
  std::string peer = Lower(peer_in);
  if (has_more) *has_more = false;
  auto conv = impl_->cache->ConversationWith(peer);
  int64_t conv_id = conv ? conv->conversation_id : 0;
  if (!conv_id) {
    Reply r = Request("open_conversation", {{"username", peer}});
    if (!r.ok) {
      if (error) *error = r;
      return {};
    }
    sdk::LocalError err;
    impl_->cache->StoreConversation(r.result["conversation"], &err);
    conv_id = r.result["conversation"].value("conversation_id", int64_t{0});
  }
  json fields = {{"conversation_id", conv_id}, {"limit", limit}};
  if (before > 0) fields["before"] = before;
  Reply r = Request("history", fields);
  if (!r.ok) {
    if (error) *error = r;
    return {};
  }
  sdk::LocalError err;
  if (impl_->history) {
    json ms = json::array();
    for (const auto& m : r.result.value("messages", json::array())) ms.push_back(Impl::MessageFields(m));
    impl_->Record("history", {{"conversation_id", conv_id}, {"messages", ms}});
  }
  if (!impl_->cache->StoreHistory(conv_id, r.result["messages"], r.result.value("withheld", json::array()), &err) && error) {
    *error = Reply{false, json(), err.code, err.message, json()};
  }
  if (has_more) *has_more = r.result.value("has_more", false);
  impl_->next_expiry = -1;
  return impl_->cache->Messages(conv_id, before, limit, impl_->Now());
}

std::vector<CachedConversation> Client::Conversations() { return impl_->cache->Conversations(); }

std::optional<CachedConversation> Client::ConversationWith(const std::string& peer) {
  return impl_->cache->ConversationWith(Lower(peer));
}

std::vector<CachedMessage> Client::Messages(const std::string& peer_in, int64_t before, int limit) {
  std::string peer = Lower(peer_in);
  std::vector<CachedMessage> out;
  if (auto conv = impl_->cache->ConversationWith(peer))
    out = impl_->cache->Messages(conv->conversation_id, before, limit, impl_->Now());
  if (before == 0) {
    for (const auto& row : impl_->cache->Outbox(true)) {
      if (row.peer != peer) continue;
      CachedMessage m;
      m.outgoing = true;
      m.sender_id = impl_->cache->user_id();
      m.client_id = row.client_id;
      m.body = row.body;
      m.ts = row.created_at;
      m.status = row.failed ? MessageStatus::kFailed : MessageStatus::kPending;
      m.error_code = row.error_code;
      out.push_back(std::move(m));
    }
  }
  return out;
}

std::vector<StatusUpdate> Client::Outbox() {
  std::vector<StatusUpdate> out;
  for (const auto& row : impl_->cache->Outbox(true)) {
    out.push_back({row.client_id, row.peer, 0, 0, row.failed ? MessageStatus::kFailed : MessageStatus::kPending,
                   row.error_code, row.error_message});
  }
  return out;
}

size_t Client::PendingCount() { return impl_->cache->Outbox(false).size(); }

bool Client::RetryFailed(const std::string& client_id) {
  if (!impl_->cache->RetryFailedOutbox(client_id, impl_->Now())) return false;
  impl_->Wake();
  return true;
}

bool Client::DiscardFailed(const std::string& client_id) { return impl_->cache->DiscardFailedOutbox(client_id); }

std::optional<StatusUpdate> Client::StatusOf(const std::string& client_id) { return impl_->cache->StatusOf(client_id); }

ClientState Client::state() const {
  std::lock_guard lock(impl_->mu);
  return impl_->state;
}

std::string Client::last_error() const {
  std::lock_guard lock(impl_->mu);
  return impl_->last_error;
}

int64_t Client::user_id() const { return impl_->cache->user_id(); }
std::string Client::username() const { return impl_->cache->username(); }
int64_t Client::device_id() const { return impl_->cache->device_id(); }
int64_t Client::applied() const { return impl_->cache->applied().value_or(0); }

bool Client::WaitOnline(int timeout_ms) {
  std::unique_lock lock(impl_->mu);
  impl_->cv.wait_for(lock, std::chrono::milliseconds(timeout_ms), [&] {
    return impl_->state == ClientState::kOnline || impl_->state == ClientState::kRevoked ||
           impl_->state == ClientState::kDisabled;
  });
  return impl_->state == ClientState::kOnline;
}

bool Client::WaitOutboxDrained(int timeout_ms) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (PendingCount() > 0) {
    std::unique_lock lock(impl_->mu);
    if (impl_->cv.wait_until(lock, std::min(deadline, std::chrono::steady_clock::now() + std::chrono::milliseconds(kPollMs))) ==
            std::cv_status::timeout &&
        std::chrono::steady_clock::now() >= deadline) {
      lock.unlock();
      return PendingCount() == 0;
    }
  }
  return true;
}

bool Client::WaitDraftsSaved(int timeout_ms) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (PendingDraftCount() > 0) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::unique_lock lock(impl_->mu);
    impl_->cv.wait_for(lock, std::chrono::milliseconds(kPollMs));
  }
  return true;
}

bool Client::WaitApplied(int64_t user_seq, int timeout_ms) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (applied() < user_seq) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::unique_lock lock(impl_->mu);
    impl_->cv.wait_for(lock, std::chrono::milliseconds(kPollMs));
  }
  return true;
}

}  // namespace parley
