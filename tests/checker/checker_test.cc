// The checker's logic on small handcrafted histories and states: a clean
// case, then one planted defect per category, each asserting that exact
// count in its category and zero in every other.
#include "checker.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

namespace parley::checker {
namespace {

using nlohmann::json;

// Users: alice 1 (device 11), bob 2 (devices 21, 22), carol 3 (device 31), dave 4.
// Conversation 100: alice and bob; 200: carol and dave, carol blocks dave.
json Msg(int64_t conv, int64_t seq, int64_t sender, int64_t device, const std::string& cid) {
  return {{"conversation_id", conv}, {"seq", seq}, {"sender_id", sender}, {"sender_device_id", device}, {"client_id", cid}};
}

json BaseState() {
  json t;
  t["devices"] = {{"columns", {"id", "user_id", "revoked"}}, {"rows", {{11, 1, 0}, {21, 2, 0}, {22, 2, 0}, {31, 3, 0}, {41, 4, 0}}}};
  t["members"] = {{"columns", {"conversation_id", "user_id"}}, {"rows", {{100, 1}, {100, 2}, {200, 3}, {200, 4}}}};
  t["messages"] = {{"columns", {"conversation_id", "seq", "sender_id", "sender_device_id", "client_id"}},
                   {"rows", {{100, 1, 1, 11, "a1"}, {100, 2, 1, 11, "a2"}, {100, 3, 2, 21, "b1"},
                             {200, 1, 3, 31, "c1"}, {200, 2, 4, 41, "d1"}}}};
  t["withheld"] = {{"columns", {"conversation_id", "user_id", "seq"}}, {"rows", {{200, 3, 2}}}};
  json stream = json::array();
  for (int64_t u : {1, 2}) {
    stream.push_back({u, 1, 3, 100, 0, 0, 0, 0});
    stream.push_back({u, 2, 1, 100, 1, 0, 0, 0});
    stream.push_back({u, 3, 1, 100, 2, 0, 0, 0});
    stream.push_back({u, 4, 1, 100, 3, 0, 0, 0});
    stream.push_back({u, 5, 2, 100, 0, 2, 3, 3});  // bob read up to 3 (from device 22's report)
  }
  for (int64_t u : {3, 4}) {
    stream.push_back({u, 1, 3, 200, 0, 0, 0, 0});
    stream.push_back({u, 2, 1, 200, 1, 0, 0, 0});
  }
  stream.push_back({4, 3, 1, 200, 2, 0, 0, 0});  // withheld from carol: only in dave's stream
  t["stream"] = {{"columns", {"user_id", "user_seq", "kind", "conversation_id", "seq", "receipt_user_id", "delivered", "read"}},
                 {"rows", stream}};
  t["heads"] = {{"columns", {"user_id", "head"}}, {"rows", {{1, 5}, {2, 5}, {3, 2}, {4, 3}}}};
  t["receipts"] = {{"columns", {"conversation_id", "user_id", "delivered", "read"}},
                   {"rows", {{100, 1, 2, 2}, {100, 2, 3, 3}, {200, 3, 2, 1}, {200, 4, 2, 2}}}};
  t["blocks"] = {{"columns", {"owner_id", "target_id"}}, {"rows", {{3, 4}}}};
  return {{"format", "parley-export-1"}, {"tables", t}};
}

json Ev(int64_t u, const char* source, const json& msg) {
  return {{"ev", "event"}, {"source", source}, {"user_seq", u}, {"kind", "message"}, {"message", msg}};
}
json ConvEv(int64_t u, int64_t conv) {
  return {{"ev", "event"}, {"source", "sync"}, {"user_seq", u}, {"kind", "conversation"}, {"conversation_id", conv}};
}
json ReceiptEv(int64_t u, int64_t conv, int64_t user, int64_t d, int64_t r) {
  return {{"ev", "event"}, {"source", "live"}, {"user_seq", u}, {"kind", "receipt"}, {"conversation_id", conv},
          {"user_id", user}, {"delivered", d}, {"read", r}};
}
json Snap(int64_t head, json messages, json watermarks) {
  return {{"ev", "snapshot"}, {"head", head}, {"conversations", json::array()}, {"messages", messages}, {"watermarks", watermarks}};
}
json Caught(int64_t head) { return {{"ev", "caught_up"}, {"head", head}, {"applied", head}}; }
json Resume() { return {{"ev", "resume"}, {"cursor", nullptr}}; }

struct Histories {
  std::map<std::string, std::vector<json>> files;  // name -> records (without n/ts/user/device)
  std::map<std::string, std::pair<int64_t, int64_t>> ids;

  std::vector<DeviceHistory> Build() const {
    std::vector<DeviceHistory> out;
    for (const auto& [name, recs] : files) {
      DeviceHistory h;
      h.file = name;
      int64_t n = 0;
      for (const auto& r : recs) {
        json j = r;
        j["n"] = ++n;
        if (!j.contains("ts")) j["ts"] = 1000 + n;  // a test that judges by time sets its own
        j["user"] = ids.at(name).first;
        j["device"] = ids.at(name).second;
        h.records.push_back({name, n, j});
      }
      out.push_back(std::move(h));
    }
    return out;
  }
};

Histories BaseHistories() {
  Histories h;
  h.ids = {{"alice-11.jsonl", {1, 11}}, {"bob-21.jsonl", {2, 21}}, {"bob-22.jsonl", {2, 22}}, {"carol-31.jsonl", {3, 31}}};
  json a1 = Msg(100, 1, 1, 11, "a1"), a2 = Msg(100, 2, 1, 11, "a2"), b1 = Msg(100, 3, 2, 21, "b1");
  h.files["alice-11.jsonl"] = {
      {{"ev", "open"}, {"cursor", nullptr}},
      {{"ev", "compose"}, {"client_id", "a1"}, {"peer", "bob"}, {"order", 1}},
      {{"ev", "compose"}, {"client_id", "a2"}, {"peer", "bob"}, {"order", 2}},
      Resume(), Snap(0, json::array(), json::array()), Caught(0),
      {{"ev", "send"}, {"client_id", "a1"}, {"peer", "bob"}},
      ConvEv(1, 100), Ev(2, "live", a1),
      {{"ev", "ack"}, {"client_id", "a1"}, {"peer", "bob"}, {"conversation_id", 100}, {"seq", 1}, {"duplicate", false}},
      {{"ev", "disconnect"}, {"code", 1006}, {"why", "lost"}, {"revoked", false}},
      {{"ev", "resume"}, {"cursor", 2}},
      {{"ev", "send"}, {"client_id", "a2"}, {"peer", "bob"}},
      {{"ev", "ack"}, {"client_id", "a2"}, {"peer", "bob"}, {"conversation_id", 100}, {"seq", 2}, {"duplicate", false}},
      Ev(3, "sync", a2), Ev(4, "live", b1), ReceiptEv(5, 100, 2, 3, 3), Caught(5), {{"ev", "stop"}}};
  h.files["bob-21.jsonl"] = {
      Resume(), Snap(0, json::array(), json::array()), ConvEv(1, 100), Ev(2, "sync", a1), Ev(3, "sync", a2), Caught(3),
      {{"ev", "compose"}, {"client_id", "b1"}, {"peer", "alice"}, {"order", 1}},
      {{"ev", "send"}, {"client_id", "b1"}, {"peer", "alice"}},
      Ev(4, "live", b1),
      {{"ev", "ack"}, {"client_id", "b1"}, {"peer", "alice"}, {"conversation_id", 100}, {"seq", 3}, {"duplicate", false}},
      ReceiptEv(5, 100, 2, 3, 3), Caught(5)};
  h.files["bob-22.jsonl"] = {
      Resume(),
      Snap(3, {a1, a2}, {{{"conversation_id", 100}, {"user_id", 1}, {"delivered", 2}, {"read", 2}}}),
      Ev(4, "live", b1), ReceiptEv(5, 100, 2, 3, 3), Caught(5), {{"ev", "stop"}}};
  h.files["carol-31.jsonl"] = {Resume(), Snap(0, json::array(), json::array()), ConvEv(1, 200),
                               Ev(2, "sync", Msg(200, 1, 3, 31, "c1")), Caught(2)};
  return h;
}

Report CheckAll(const Histories& h, const json& state_json = BaseState()) {
  ServerState state;
  std::string error;
  EXPECT_TRUE(ParseState(state_json, &state, &error)) << error;
  Report r;
  EXPECT_TRUE(Check(h.Build(), state, &r, &error)) << error;
  return r;
}

// Every failure count but `only` is zero, and `only` is `expected`.
void ExpectOnly(const Report& r, const std::string& only, int64_t expected) {
  json c = CountsJson(r.counts);
  for (const char* k : {"lost", "duplicated", "reordered", "gaps", "leaks", "receipt_regressions",
                        "receipt_divergences", "phantoms", "receipt_leaks", "version_divergences", "resurrections",
                        "hidden_divergences", "draft_divergences", "expired_shown", "timer_divergences"}) {
    EXPECT_EQ(c[k].get<int64_t>(), k == only ? expected : 0) << k << "\n" << FormatReport(r, 20);
  }
  EXPECT_EQ(r.counts.ok(), expected == 0);
}

TEST(CheckerTest, CleanHistoriesPass) {
  Report r = CheckAll(BaseHistories());
  ExpectOnly(r, "", 0);
  EXPECT_EQ(r.counts.devices, 4);
  EXPECT_EQ(r.counts.finished_devices, 4);
  EXPECT_EQ(r.counts.current_devices, 4);
  EXPECT_EQ(r.counts.acked, 3);
  EXPECT_EQ(r.counts.messages, 5);
  EXPECT_EQ(r.counts.delivered, 3 + 3 + 3 + 1);
}

TEST(CheckerTest, AckedMessageMissingOnServerIsLost) {
  Histories h = BaseHistories();
  auto& a = h.files["alice-11.jsonl"];
  a.insert(a.end() - 2, json{{"ev", "ack"}, {"client_id", "a3"}, {"peer", "bob"}, {"conversation_id", 100}, {"seq", 4},
                         {"duplicate", false}});
  Report r = CheckAll(h);
  ExpectOnly(r, "lost", 1);
  EXPECT_EQ(r.counts.acked, 4);
}

TEST(CheckerTest, MessageMissingFromAMembersStreamIsLost) {
  json s = BaseState();
  auto& rows = s["tables"]["stream"]["rows"];
  // Carol's stream loses the entry of 200/1 (user seq 2): the head moves down
  // with it, so there is no gap, only a missing message.
  rows.erase(std::remove(rows.begin(), rows.end(), json{3, 2, 1, 200, 1, 0, 0, 0}), rows.end());
  s["tables"]["heads"]["rows"] = {{1, 5}, {2, 5}, {3, 1}, {4, 3}};
  Histories h = BaseHistories();
  h.files["carol-31.jsonl"] = {Resume(), Snap(0, json::array(), json::array()), ConvEv(1, 200), Caught(1)};
  Report r = CheckAll(h, s);
  ExpectOnly(r, "lost", 1);
}

// Stream trimming (docs/operations.md "Stream trimming"): alice's entries
// 1-3 (the conversation, 100/1 and 100/2) were trimmed, her floor is 4.
json TrimmedAliceState(int64_t floor) {
  json s = BaseState();
  auto& rows = s["tables"]["stream"]["rows"];
  rows.erase(std::remove_if(rows.begin(), rows.end(), [](const json& r) { return r[0] == 1 && r[1] <= 3; }), rows.end());
  s["tables"]["heads"] = {{"columns", {"user_id", "head", "floor"}},
                          {"rows", {{1, 5, floor}, {2, 5, 1}, {3, 2, 1}, {4, 3, 1}}}};
  return s;
}

TEST(CheckerTest, EntriesBelowATrimmedStreamsFloorAreNeitherGapsNorLost) {
  Report r = CheckAll(BaseHistories(), TrimmedAliceState(4));
  ExpectOnly(r, "", 0);
}

TEST(CheckerTest, AnEntryMissingAtTheFloorIsStillAGap) {
  // The floor says 3 is kept, but it is not there.
  Report r = CheckAll(BaseHistories(), TrimmedAliceState(3));
  EXPECT_EQ(r.counts.gaps, 1) << FormatReport(r, 20);
}

TEST(CheckerTest, DeliveryAppliedTwiceIsDuplicated) {
  Histories h = BaseHistories();
  auto& b = h.files["bob-21.jsonl"];
  b.insert(b.begin() + 5, b[4]);  // user seq 3 (message 100/2) recorded twice
  Report r = CheckAll(h);
  ExpectOnly(r, "duplicated", 1);
}

TEST(CheckerTest, RepeatedClientIdOnServerIsDuplicated) {
  json s = BaseState();
  s["tables"]["messages"]["rows"].push_back({100, 4, 1, 11, "a2"});
  s["tables"]["members"]["rows"] = {{100, 1}, {100, 2}, {200, 3}, {200, 4}};
  // The extra copy is in both streams too (so nothing else is missing).
  for (int64_t u : {1, 2}) s["tables"]["stream"]["rows"].push_back({u, 6, 1, 100, 4, 0, 0, 0});
  s["tables"]["heads"]["rows"] = {{1, 6}, {2, 6}, {3, 2}, {4, 3}};
  Report r = CheckAll(BaseHistories(), s);
  // Devices caught up at 5: the copy at user seq 6 is outside their windows.
  ExpectOnly(r, "duplicated", 1);
}

TEST(CheckerTest, ComposeOrderNotKeptIsReordered) {
  Histories h = BaseHistories();
  auto& a = h.files["alice-11.jsonl"];
  std::swap(a[1]["client_id"], a[2]["client_id"]);  // a2 composed first, stored second
  Report r = CheckAll(h);
  ExpectOnly(r, "reordered", 1);
}

TEST(CheckerTest, DeliveryBelowAnEarlierSeqIsReordered) {
  Histories h = BaseHistories();
  auto& b = h.files["bob-21.jsonl"];
  // The events at user seqs 2 and 3 carry 100/2 then 100/1.
  std::swap(b[3]["message"], b[4]["message"]);
  Report r = CheckAll(h);
  ExpectOnly(r, "reordered", 1);
}

TEST(CheckerTest, SkippedUserSeqIsAGap) {
  Histories h = BaseHistories();
  auto& b = h.files["bob-21.jsonl"];
  b.erase(b.begin() + 4);  // user seq 3 never applied
  Report r = CheckAll(h);
  ExpectOnly(r, "gaps", 1);
}

TEST(CheckerTest, WithheldMessageReachingTheBlockerIsALeak) {
  Histories h = BaseHistories();
  auto& c = h.files["carol-31.jsonl"];
  c.insert(c.end() - 1, json{{"ev", "history"}, {"conversation_id", 200}, {"messages", {Msg(200, 2, 4, 41, "d1")}}});
  Report r = CheckAll(h);
  ExpectOnly(r, "leaks", 1);
}

TEST(CheckerTest, MessageReachingANonMemberIsALeak) {
  Histories h = BaseHistories();
  auto& a = h.files["alice-11.jsonl"];
  a.insert(a.end() - 2, json{{"ev", "history"}, {"conversation_id", 200}, {"messages", {Msg(200, 1, 3, 31, "c1")}}});
  Report r = CheckAll(h);
  ExpectOnly(r, "leaks", 1);
}

TEST(CheckerTest, WatermarkGoingDownIsARegression) {
  Histories h = BaseHistories();
  auto& b = h.files["bob-22.jsonl"];
  // The snapshot says bob's watermarks were 4/4; the later event says 3/3.
  b[1]["watermarks"].push_back({{"conversation_id", 100}, {"user_id", 2}, {"delivered", 4}, {"read", 4}});
  Report r = CheckAll(h);
  ExpectOnly(r, "receipt_regressions", 1);
}

TEST(CheckerTest, FinalWatermarksDifferentFromTheStreamDiverge) {
  Histories h = BaseHistories();
  auto& b = h.files["bob-22.jsonl"];
  b[3]["user_id"] = 1;  // the receipt at user seq 5 recorded as alice's, not bob's
  Report r = CheckAll(h);
  ExpectOnly(r, "receipt_divergences", 1);
}

TEST(CheckerTest, MessageTheServerDoesNotHoldIsAPhantom) {
  Histories h = BaseHistories();
  auto& a = h.files["alice-11.jsonl"];
  a.insert(a.end() - 2, json{{"ev", "history"}, {"conversation_id", 100}, {"messages", {Msg(100, 9, 2, 21, "zz")}}});
  Report r = CheckAll(h);
  ExpectOnly(r, "phantoms", 1);
}

TEST(CheckerTest, UnfinishedDeviceIsNotHeldToTheWholeStream) {
  Histories h = BaseHistories();
  auto& b = h.files["bob-22.jsonl"];
  b.erase(b.begin() + 2, b.end());  // snapshot only: killed before catching up
  Report r = CheckAll(h);
  ExpectOnly(r, "", 0);
  EXPECT_EQ(r.counts.finished_devices, 3);
}

TEST(CheckerTest, RecordsLostToAClientKillAreNotGaps) {
  Histories h = BaseHistories();
  auto& b = h.files["bob-21.jsonl"];
  // Killed after the cache applied user seqs 4-5 but before recording them;
  // the restarted client resumes from cursor 5.
  b.erase(b.begin() + 8, b.end());
  b.push_back({{"ev", "open"}, {"cursor", 5}});
  b.push_back({{"ev", "resume"}, {"cursor", 5}});
  b.push_back(Caught(5));
  Report r = CheckAll(h);
  ExpectOnly(r, "", 0);
}

// The server coalesced two receipt entries into one live event (user seq 6,
// "also_covers" 7): the cache applied both, so the resume from cursor 7 that
// follows is not a gap in the records, and the device ends current.
TEST(CheckerTest, ACoalescedReceiptAppliesTheSeqsItCovers) {
  json state = BaseState();
  json& rows = state["tables"]["stream"]["rows"];
  rows.push_back({2, 6, 2, 100, 0, 1, 3, 2});  // alice's device reports delivered 3, read 2
  rows.push_back({2, 7, 2, 100, 0, 1, 3, 3});  // then read 3
  state["tables"]["heads"]["rows"] = {{1, 5}, {2, 7}, {3, 2}, {4, 3}};
  state["tables"]["receipts"]["rows"] = {{100, 1, 3, 3}, {100, 2, 3, 3}, {200, 3, 2, 1}, {200, 4, 2, 2}};
  Histories h = BaseHistories();
  json coalesced = ReceiptEv(6, 100, 1, 3, 3);
  coalesced["also_covers"] = {7};
  auto& b22 = h.files["bob-22.jsonl"];
  b22.pop_back();  // stop
  b22.push_back(coalesced);
  b22.push_back({{"ev", "stop"}});
  b22.push_back({{"ev", "resume"}, {"cursor", 7}});
  b22.push_back(Caught(7));
  b22.push_back({{"ev", "stop"}});
  auto& b21 = h.files["bob-21.jsonl"];
  b21.push_back(ReceiptEv(6, 100, 1, 3, 2));
  b21.push_back(ReceiptEv(7, 100, 1, 3, 3));
  b21.push_back(Caught(7));
  Report r = CheckAll(h, state);
  ExpectOnly(r, "", 0);
  EXPECT_EQ(r.counts.finished_devices, 4);
  EXPECT_EQ(r.counts.current_devices, 4) << FormatReport(r, 20);
}

// Selective sync: bob's device 22 gets conversation 100's message and
// receipt as one summary covering user seqs 4-5. Nothing is lost, no gap,
// and its receipt view is judged only on what it got in full.
json SummaryEv(int64_t u, int64_t conv, json covers) {
  return {{"ev", "event"}, {"source", "sync"}, {"user_seq", u}, {"kind", "summary"}, {"conversation_id", conv},
          {"covers", std::move(covers)}};
}

TEST(CheckerTest, ASummaryAppliesTheSeqsItCoversAndTheirMessagesAreNotLost) {
  Histories h = BaseHistories();
  h.files["bob-22.jsonl"] = {Resume(),
                             Snap(3, {Msg(100, 1, 1, 11, "a1"), Msg(100, 2, 1, 11, "a2")},
                                  {{{"conversation_id", 100}, {"user_id", 1}, {"delivered", 2}, {"read", 2}}}),
                             SummaryEv(4, 100, {{4, 5}}), Caught(5), {{"ev", "stop"}}};
  Report r = CheckAll(h);
  ExpectOnly(r, "", 0);
  EXPECT_EQ(r.counts.current_devices, 4) << FormatReport(r, 20);
  // A summary that leaves a seq uncovered does not hide the gap.
  h.files["bob-22.jsonl"][2] = SummaryEv(4, 100, {{4, 4}});
  ExpectOnly(CheckAll(h), "gaps", 1);
  // Malformed covers are bad input.
  char tmpl[] = "/tmp/parley-checker-XXXXXX";
  std::string dir = mkdtemp(tmpl);
  std::string path = dir + "/d.jsonl";
  {
    std::ofstream out(path);
    out << R"({"n":1,"ts":1,"user":2,"device":22,"ev":"event","source":"live","user_seq":4,"kind":"summary",)"
        << R"("conversation_id":100,"covers":[[5,4]]})" << "\n";
  }
  DeviceHistory bad;
  std::string error;
  EXPECT_FALSE(LoadHistoryFile(path, &bad, &error));
  EXPECT_EQ(error, path + ":1: \"event\" summary record without well-formed \"covers\" ranges");
  std::filesystem::remove_all(dir);
}

// A raw connection of alice's (device 12) sends a1 again, twice at once,
// and once more after a reconnect: every ack carries the first ack's seq.
TEST(CheckerTest, ResendsAckedWithTheFirstSeqAreOneMessage) {
  Histories h = BaseHistories();
  h.ids["alice-raw.jsonl"] = {1, 12};
  json send = {{"ev", "send"}, {"client_id", "a1"}, {"peer", "bob"}};
  json ack = {{"ev", "ack"}, {"client_id", "a1"}, {"peer", "bob"}, {"conversation_id", 100}, {"seq", 1},
              {"duplicate", true}};
  h.files["alice-raw.jsonl"] = {send, send, ack, ack, send, ack};
  Report r = CheckAll(h);
  ExpectOnly(r, "", 0);
  EXPECT_EQ(r.counts.resent, 1);
  EXPECT_EQ(r.counts.acked, 3);
}

// The server stored a resend again (a second a2 at seq 4) and acked it with
// that seq: one defect, counted once (the server's duplicate), not again for
// the ack that differs from the first.
TEST(CheckerTest, ResendStoredTwiceIsOneDuplicate) {
  json s = BaseState();
  s["tables"]["messages"]["rows"].push_back({100, 4, 1, 11, "a2"});
  for (int64_t u : {1, 2}) s["tables"]["stream"]["rows"].push_back({u, 6, 1, 100, 4, 0, 0, 0});
  s["tables"]["heads"]["rows"] = {{1, 6}, {2, 6}, {3, 2}, {4, 3}};
  Histories h = BaseHistories();
  h.ids["alice-raw.jsonl"] = {1, 12};
  h.files["alice-raw.jsonl"] = {{{"ev", "send"}, {"client_id", "a2"}, {"peer", "bob"}},
                                {{"ev", "ack"}, {"client_id", "a2"}, {"peer", "bob"}, {"conversation_id", 100},
                                 {"seq", 4}, {"duplicate", false}}};
  Report r = CheckAll(h, s);
  ExpectOnly(r, "duplicated", 1);
  EXPECT_EQ(r.counts.resent, 1);
}

// Conversation 200 after carol unblocked dave: dave's 200/2 stays withheld
// from carol; his 200/3 reaches her, and her receipt (delivered 3) moves
// her watermark from 1 (her own 200/1) over 2. `withheld` is that event's list.
std::pair<Histories, json> WithheldCase(const json& withheld) {
  json s = BaseState();
  auto& t = s["tables"];
  t["messages"]["rows"].push_back({200, 3, 4, 41, "d2"});
  t["stream"]["rows"].push_back({3, 3, 1, 200, 3, 0, 0, 0});
  t["stream"]["rows"].push_back({3, 4, 2, 200, 0, 3, 3, 1});
  t["stream"]["rows"].push_back({4, 4, 1, 200, 3, 0, 0, 0});
  t["stream"]["rows"].push_back({4, 5, 2, 200, 0, 3, 3, 1});
  t["heads"]["rows"] = {{1, 5}, {2, 5}, {3, 4}, {4, 5}};
  t["receipts"]["rows"] = {{100, 1, 2, 2}, {100, 2, 3, 3}, {200, 3, 3, 1}, {200, 4, 3, 3}};
  t["blocks"]["rows"] = json::array();
  Histories h = BaseHistories();
  json receipt = ReceiptEv(4, 200, 3, 3, 1);
  if (!withheld.is_null()) receipt["withheld"] = withheld;
  h.files["carol-31.jsonl"] = {Resume(), Snap(0, json::array(), json::array()), ConvEv(1, 200),
                               Ev(2, "sync", Msg(200, 1, 3, 31, "c1")), Ev(3, "live", Msg(200, 3, 4, 41, "d2")),
                               receipt, Caught(4)};
  return {h, s};
}

TEST(CheckerTest, WithheldSeqListedByTheCrossingReceiptPasses) {
  auto [h, s] = WithheldCase({2});
  Report r = CheckAll(h, s);
  ExpectOnly(r, "", 0);
  EXPECT_EQ(r.counts.withheld_listed, 1);
}

TEST(CheckerTest, ReceiptCrossingAWithheldSeqWithoutListingItIsAReceiptLeak) {
  auto [h, s] = WithheldCase(nullptr);
  Report r = CheckAll(h, s);
  ExpectOnly(r, "receipt_leaks", 1);
  EXPECT_EQ(r.counts.withheld_listed, 0);
}

TEST(CheckerTest, ListingASeqThatIsNotWithheldIsAReceiptLeak) {
  auto [h, s] = WithheldCase({1, 2});
  Report r = CheckAll(h, s);
  ExpectOnly(r, "receipt_leaks", 1);
  EXPECT_EQ(r.counts.withheld_listed, 1);
}

TEST(CheckerTest, ListingAWithheldSeqTwiceIsAReceiptLeak) {
  auto [h, s] = WithheldCase({2});
  auto& c = h.files["carol-31.jsonl"];
  json again = ReceiptEv(5, 200, 3, 3, 2);  // carol reads up to 2: the same list again
  again["withheld"] = {2};
  c.insert(c.end() - 1, again);
  c.back() = Caught(5);
  s["tables"]["stream"]["rows"].push_back({3, 5, 2, 200, 0, 3, 3, 2});
  s["tables"]["stream"]["rows"].push_back({4, 6, 2, 200, 0, 3, 3, 2});
  s["tables"]["heads"]["rows"] = {{1, 5}, {2, 5}, {3, 5}, {4, 6}};
  s["tables"]["receipts"]["rows"] = {{100, 1, 2, 2}, {100, 2, 3, 3}, {200, 3, 3, 2}, {200, 4, 3, 3}};
  Report r = CheckAll(h, s);
  ExpectOnly(r, "receipt_leaks", 1);
}

// Edits, deletes and drafts on top of the base case (docs/checker.md,
// "Final views"): alice edits a1 (version 1) and deletes a2 for everyone
// (version 1); bob deletes b1 for himself and saves two drafts in
// conversation 100 from his devices, "y" last in server order. Every
// device but carol's then ends with a `view` record.
json ChangeEv(int64_t u, const char* kind, int64_t seq, int64_t version, const std::string& body_hash) {
  json e = {{"ev", "event"}, {"source", "live"}, {"user_seq", u}, {"kind", kind}, {"conversation_id", 100},
            {"seq", seq}};
  if (std::string(kind) != "delete_for_me") e["version"] = version;
  if (std::string(kind) == "edit") e["body_hash"] = body_hash;
  return e;
}
json DraftEv(int64_t u, const std::string& hash) {
  return {{"ev", "event"}, {"source", "sync"}, {"user_seq", u}, {"kind", "draft"}, {"conversation_id", 100},
          {"draft_hash", hash}};
}
json ViewMsg(int64_t seq, int64_t version, bool deleted, bool hidden, const std::string& hash) {
  return {{"conversation_id", 100}, {"seq", seq}, {"version", version}, {"deleted", deleted}, {"hidden", hidden},
          {"body_hash", hash}};
}
// Every device holds 100/1-3; `messages` lists the edited, deleted or hidden ones.
json View(json messages, const std::string& draft) {
  return {{"ev", "view"},
          {"held", {{{"conversation_id", 100}, {"ranges", {{1, 3}}}}}},
          {"messages", messages},
          {"drafts", {{{"conversation_id", 100}, {"draft_hash", draft}, {"pending", false}}}}};
}

json ChangesState() {
  json s = BaseState();
  auto& rows = s["tables"]["stream"]["rows"];
  for (int64_t u : {1, 2}) {
    rows.push_back({u, 6, 10, 100, 1, 0, 1, 0});  // edit of 100/1: version 1
    rows.push_back({u, 7, 11, 100, 2, 0, 1, 0});  // delete of 100/2: version 1
  }
  rows.push_back({2, 8, 12, 100, 3, 0, 0, 0});    // bob deletes 100/3 for himself
  rows.push_back({2, 9, 13, 100, 0, 0, 0, 0});    // bob's draft "x"
  rows.push_back({2, 10, 13, 100, 0, 0, 0, 0});   // bob's draft "y": the last writer
  s["tables"]["heads"]["rows"] = {{1, 7}, {2, 10}, {3, 2}, {4, 3}};
  return s;
}

// Each device's file after the base case: its change events, caught up
// again, then `bob22_view` (or the correct view) and stop.
Histories ChangesHistories(json bob22_view = nullptr) {
  Histories h = BaseHistories();
  auto strip_stop = [](std::vector<json>& f) {
    if (f.back()["ev"] == "stop") f.pop_back();
  };
  auto& a = h.files["alice-11.jsonl"];
  strip_stop(a);
  a.push_back(ChangeEv(6, "edit", 1, 1, "hx1"));
  a.push_back(ChangeEv(7, "delete", 2, 1, ""));
  a.push_back(Caught(7));
  a.push_back(View({ViewMsg(1, 1, false, false, "hx1"), ViewMsg(2, 1, true, false, "")}, ""));
  a.push_back({{"ev", "stop"}});
  const json bob_view = View({ViewMsg(1, 1, false, false, "hx1"), ViewMsg(2, 1, true, false, ""),
                              ViewMsg(3, 0, false, true, "hb1")},
                             "hy");
  for (const char* name : {"bob-21.jsonl", "bob-22.jsonl"}) {
    auto& b = h.files[name];
    strip_stop(b);
    b.push_back(ChangeEv(6, "edit", 1, 1, "hx1"));
    b.push_back(ChangeEv(7, "delete", 2, 1, ""));
    b.push_back(ChangeEv(8, "delete_for_me", 3, 0, ""));
    b.push_back(DraftEv(9, "hx"));
    b.push_back(DraftEv(10, "hy"));
    b.push_back(Caught(10));
    b.push_back(std::string(name) == "bob-22.jsonl" && !bob22_view.is_null() ? bob22_view : bob_view);
    b.push_back({{"ev", "stop"}});
  }
  return h;
}

TEST(CheckerTest, ConvergedEditsDeletesAndDraftsPass) {
  Report r = CheckAll(ChangesHistories(), ChangesState());
  ExpectOnly(r, "", 0);
  EXPECT_EQ(r.counts.current_devices, 4);
  EXPECT_EQ(r.counts.views, 3);             // carol's history has no view: not compared
  EXPECT_EQ(r.counts.changed_messages, 5);  // alice: 100/1, 100/2; bob: those and 100/3
  EXPECT_EQ(r.counts.draft_conversations, 1);
}

TEST(CheckerTest, DeviceThatKeptAnOldVersionDiverges) {
  // 100/1 held but not listed: still as sent (version 0).
  Report r = CheckAll(ChangesHistories(View({ViewMsg(2, 1, true, false, ""), ViewMsg(3, 0, false, true, "hb1")}, "hy")),
                      ChangesState());
  ExpectOnly(r, "version_divergences", 1);
  EXPECT_NE(FormatReport(r, 5).find("message 100/1 ends at version 0, the user's stream says 1"), std::string::npos)
      << FormatReport(r, 5);
  // The same version with another text than the user's other device.
  r = CheckAll(ChangesHistories(View({ViewMsg(1, 1, false, false, "hz1"), ViewMsg(2, 1, true, false, ""),
                                      ViewMsg(3, 0, false, true, "hb1")},
                                     "hy")),
               ChangesState());
  ExpectOnly(r, "version_divergences", 1);
}

TEST(CheckerTest, AViewOfASummarisedConversationIsNotJudged) {
  // Bob's device 22 kept conversation 100 as summaries (selective sync):
  // its cached 100/1 is still as sent, which is no divergence there.
  json stale = View({ViewMsg(2, 1, true, false, ""), ViewMsg(3, 0, false, true, "hb1")}, "hy");
  stale["summarised"] = {100};
  Report r = CheckAll(ChangesHistories(stale), ChangesState());
  ExpectOnly(r, "", 0);
}

TEST(CheckerTest, DeletedMessageWhoseBodyReappearsIsAResurrection) {
  // In the final view: the message deleted for everyone shows its text.
  Report r = CheckAll(ChangesHistories(View({ViewMsg(1, 1, false, false, "hx1"), ViewMsg(2, 0, false, false, "ha2"),
                                             ViewMsg(3, 0, false, true, "hb1")},
                                            "hy")),
                      ChangesState());
  ExpectOnly(r, "resurrections", 1);
  // Held and not listed: shown as sent, text and all.
  r = CheckAll(ChangesHistories(View({ViewMsg(1, 1, false, false, "hx1"), ViewMsg(3, 0, false, true, "hb1")}, "hy")),
               ChangesState());
  ExpectOnly(r, "resurrections", 1);
  // On the way: after the delete, a snapshot brings 100/2 back undeleted.
  Histories h = ChangesHistories();
  auto& b = h.files["bob-22.jsonl"];
  json a1 = Msg(100, 1, 1, 11, "a1");
  a1["version"] = 1;
  a1["deleted"] = false;
  a1["body_hash"] = "hx1";
  b.insert(b.end() - 2, Resume());
  b.insert(b.end() - 2, Snap(10, {a1, Msg(100, 2, 1, 11, "a2")}, json::array()));
  b.insert(b.end() - 2, Caught(10));
  r = CheckAll(h, ChangesState());
  ExpectOnly(r, "resurrections", 1);
  EXPECT_NE(FormatReport(r, 5).find("snapshot delivery shows message 100/2 undeleted"), std::string::npos)
      << FormatReport(r, 5);
}

TEST(CheckerTest, DivergingDraftsAreCounted) {
  // bob-22 ends with "x", the draft bob's other device overwrote.
  Report r = CheckAll(ChangesHistories(View({ViewMsg(1, 1, false, false, "hx1"), ViewMsg(2, 1, true, false, ""),
                                             ViewMsg(3, 0, false, true, "hb1")},
                                            "hx")),
                      ChangesState());
  ExpectOnly(r, "draft_divergences", 1);
}

TEST(CheckerTest, HiddenMessageVisibleOnOneOfTheUsersDevicesDiverges) {
  // 100/3 held, not listed: shown.
  Report r = CheckAll(ChangesHistories(View({ViewMsg(1, 1, false, false, "hx1"), ViewMsg(2, 1, true, false, "")}, "hy")),
                      ChangesState());
  ExpectOnly(r, "hidden_divergences", 1);
  // The same, listed.
  r = CheckAll(ChangesHistories(View({ViewMsg(1, 1, false, false, "hx1"), ViewMsg(2, 1, true, false, ""),
                                      ViewMsg(3, 0, false, false, "hb1")},
                                     "hy")),
               ChangesState());
  ExpectOnly(r, "hidden_divergences", 1);
  // A device that does not hold it (a snapshot after the hide) is right.
  json bare = View({ViewMsg(1, 1, false, false, "hx1"), ViewMsg(2, 1, true, false, "")}, "hy");
  bare["held"] = {{{"conversation_id", 100}, {"ranges", {{1, 2}}}}};
  r = CheckAll(ChangesHistories(bare), ChangesState());
  ExpectOnly(r, "", 0);
  // Hidden on a device of alice, who never deleted it for herself.
  Histories h = ChangesHistories();
  h.files["alice-11.jsonl"][h.files["alice-11.jsonl"].size() - 2] =
      View({ViewMsg(1, 1, false, false, "hx1"), ViewMsg(2, 1, true, false, ""), ViewMsg(3, 0, false, true, "hb1")},
           "");
  r = CheckAll(h, ChangesState());
  ExpectOnly(r, "hidden_divergences", 1);
}

TEST(CheckerTest, ViewBeforeTheLastCatchUpIsNotCompared) {
  // A view recorded by an earlier Stop (the device came back online and
  // caught up since) says nothing about the final state.
  Histories h = ChangesHistories();
  auto& b = h.files["bob-22.jsonl"];
  b.pop_back();                            // stop
  b.back() = View(json::array(), "hx");    // an earlier Stop's view ...
  b.push_back({{"ev", "resume"}, {"cursor", 10}});
  b.push_back(Caught(10));                 // ... then online again, and no view at the end
  b.push_back({{"ev", "stop"}});
  Report r = CheckAll(h, ChangesState());
  ExpectOnly(r, "", 0);
  EXPECT_EQ(r.counts.views, 2);
}

// Expiry on top of the base case (docs/checker.md, "Expiry"): bob sets a
// 5 s timer in conversation 100 (user seq 6), sends b2 = 100/4 (7), which
// expires at kExpiresAt and is deleted by the server (8, version 1);
// alice turns the timer off (9). alice-11 and bob-21 get it all live;
// bob-22 was offline at the expiry and catches up by sync on a connection
// opened after it: the message as the tombstone it became, then the
// delete. Each ends with a view at its own clock.
constexpr int64_t kExpiresAt = 1'800'000'000'000;
constexpr int64_t kAfterExpiry = kExpiresAt + 5000;  // bob-22's resume: well after the expiry

json TimerEv(int64_t u, const char* source, int64_t seconds) {
  return {{"ev", "event"}, {"source", source}, {"user_seq", u}, {"kind", "disappearing"}, {"conversation_id", 100},
          {"seconds", seconds}};
}
json B2() { return Msg(100, 4, 2, 21, "b2"); }
json B2Tombstone() {
  json m = B2();
  m["version"] = 0;
  m["deleted"] = true;
  m["body_hash"] = "";
  return m;
}
json ExpiryView(json messages, int64_t clock, int64_t timer = 0) {
  return {{"ev", "view"},
          {"held", {{{"conversation_id", 100}, {"ranges", {{1, 4}}}}}},
          {"messages", messages},
          {"drafts", json::array()},
          {"timers", {{{"conversation_id", 100}, {"seconds", timer}}}},
          {"clock", clock}};
}
json ExpiredView(int64_t clock) { return ExpiryView({ViewMsg(4, 1, true, false, "")}, clock); }

// `with_delete`: the server's expiry step ran (user seq 8); otherwise the
// stream stops before it and the timer goes off at 8. `exported_at`: the
// export's time.
json ExpiryState(bool with_delete = true, int64_t exported_at = kExpiresAt + 60'000, int64_t expires_at = kExpiresAt) {
  json s = BaseState();
  auto& m = s["tables"]["messages"];
  m["columns"] = {"conversation_id", "seq", "sender_id", "sender_device_id", "expires_at", "client_id"};
  json rows = json::array();
  for (auto r : m["rows"]) {
    r.insert(r.begin() + 4, 0);
    rows.push_back(r);
  }
  rows.push_back({100, 4, 2, 21, expires_at, "b2"});
  m["rows"] = rows;
  auto& stream = s["tables"]["stream"]["rows"];
  const int64_t head = with_delete ? 9 : 8;
  for (int64_t u : {1, 2}) {
    stream.push_back({u, 6, 14, 100, 0, 2, 5, 0});  // bob sets 5 s
    stream.push_back({u, 7, 1, 100, 4, 0, 0, 0});   // b2
    if (with_delete) stream.push_back({u, 8, 11, 100, 4, 0, 1, 0});  // its expiry: version 1
    stream.push_back({u, head, 14, 100, 0, 1, 0, 0});  // alice turns it off
  }
  s["tables"]["heads"]["rows"] = {{1, head}, {2, head}, {3, 2}, {4, 3}};
  s["exported_at"] = exported_at;
  return s;
}

// bob-22's catch-up after the expiry: `b2` is the message as the sync (or,
// with `snapshot`, a snapshot at head 7) carried it.
Histories ExpiryHistories(json b2_synced = B2Tombstone(), bool snapshot = false) {
  Histories h = BaseHistories();
  auto strip_stop = [](std::vector<json>& f) {
    if (f.back()["ev"] == "stop") f.pop_back();
  };
  for (const char* name : {"alice-11.jsonl", "bob-21.jsonl"}) {
    auto& f = h.files[name];
    strip_stop(f);
    f.push_back(TimerEv(6, "live", 5));
    f.push_back(Ev(7, "live", B2()));
    f.push_back(ChangeEv(8, "delete", 4, 1, ""));
    f.push_back(TimerEv(9, "live", 0));
    f.push_back(Caught(9));
    f.push_back(ExpiredView(kExpiresAt + 100));
    f.push_back({{"ev", "stop"}});
  }
  auto& b = h.files["bob-22.jsonl"];
  b.push_back({{"ev", "open"}, {"cursor", 5}});  // back after the expiry
  json resume = {{"ev", "resume"}, {"cursor", 5}, {"ts", kAfterExpiry}};
  if (snapshot) {
    resume["cursor"] = nullptr;
    b.push_back(resume);
    json a1 = Msg(100, 1, 1, 11, "a1"), a2 = Msg(100, 2, 1, 11, "a2"), b1 = Msg(100, 3, 2, 21, "b1");
    b.push_back(Snap(7, {a1, a2, b1, b2_synced}, {{{"conversation_id", 100}, {"user_id", 1}, {"delivered", 2}, {"read", 2}}}));
  } else {
    b.push_back(resume);
    b.push_back(TimerEv(6, "sync", 5));
    b.push_back({{"ev", "event"}, {"source", "sync"}, {"user_seq", 7}, {"kind", "message"}, {"message", b2_synced}});
  }
  json del = ChangeEv(8, "delete", 4, 1, "");
  del["source"] = "sync";
  b.push_back(del);
  b.push_back(TimerEv(9, "sync", 0));
  b.push_back(Caught(9));
  b.push_back(ExpiredView(kAfterExpiry + 100));
  b.push_back({{"ev", "stop"}});
  return h;
}

TEST(CheckerTest, AnExpiryEveryDeviceConvergesOnPasses) {
  Report r = CheckAll(ExpiryHistories(), ExpiryState());
  ExpectOnly(r, "", 0);
  EXPECT_EQ(r.counts.current_devices, 4);
  EXPECT_EQ(r.counts.views, 3);
  EXPECT_EQ(r.counts.timer_changes, 2);
  EXPECT_EQ(r.counts.expiring_messages, 1);
  EXPECT_EQ(r.counts.expired_messages, 1);
  // The same through a snapshot; and an export without its time or the
  // expires_at column (an older server) judges what it can.
  ExpectOnly(CheckAll(ExpiryHistories(B2Tombstone(), true), ExpiryState()), "", 0);
  json old = ExpiryState();
  old.erase("exported_at");
  r = CheckAll(ExpiryHistories(), old);
  ExpectOnly(r, "", 0);
  EXPECT_EQ(r.counts.expired_messages, 0);
}

TEST(CheckerTest, AnExpiredTextReappearingAfterAReconnectIsShown) {
  // The sync on bob-22's new connection, answered after the expiry,
  // carries b2's text.
  Report r = CheckAll(ExpiryHistories(B2()), ExpiryState());
  ExpectOnly(r, "expired_shown", 1);
  EXPECT_NE(FormatReport(r, 5).find("sync delivery carries the text of message 100/4"), std::string::npos)
      << FormatReport(r, 5);
  // The same in a snapshot (a new cache after the expiry).
  r = CheckAll(ExpiryHistories(B2(), true), ExpiryState());
  ExpectOnly(r, "expired_shown", 1);
  EXPECT_NE(FormatReport(r, 5).find("a snapshot carries the text of message 100/4"), std::string::npos)
      << FormatReport(r, 5);
  // Read before the expiry (a resume before it): the text was still right.
  Histories h = ExpiryHistories(B2());
  for (auto& rec : h.files["bob-22.jsonl"])
    if (rec["ev"] == "resume" && rec.contains("ts")) rec["ts"] = kExpiresAt - 2000;
  ExpectOnly(CheckAll(h, ExpiryState()), "", 0);
  // A device that had learnt it was deleted sees it come back: a resurrection.
  h = ExpiryHistories();
  auto& b = h.files["bob-22.jsonl"];
  b.insert(b.end() - 2, json{{"ev", "resume"}, {"cursor", nullptr}, {"ts", kAfterExpiry + 50}});
  b.insert(b.end() - 2, Snap(9, {B2()}, json::array()));
  b.insert(b.end() - 2, Caught(9));
  ExpectOnly(CheckAll(h, ExpiryState()), "resurrections", 1);
}

TEST(CheckerTest, ATextKeptInAFinalViewAfterItsExpiryIsShown) {
  // Before the server's delete: the tombstone a device's clock made at the
  // expiry is right, and so is the text on a device whose clock is behind.
  json before = ExpiryState(/*with_delete=*/false, kExpiresAt + 1000);
  Histories h = ExpiryHistories();
  for (const char* name : {"alice-11.jsonl", "bob-21.jsonl", "bob-22.jsonl"}) {
    auto& f = h.files[name];
    f.erase(std::remove_if(f.begin(), f.end(), [](const json& j) { return j.value("kind", "") == "delete"; }), f.end());
    f[f.size() - 4]["user_seq"] = 8;  // the timer off
    f[f.size() - 3] = Caught(8);
  }
  h.files["alice-11.jsonl"][h.files["alice-11.jsonl"].size() - 2] =
      ExpiryView({ViewMsg(4, 0, true, false, "")}, kExpiresAt + 10);  // expired here, by its clock
  h.files["bob-21.jsonl"][h.files["bob-21.jsonl"].size() - 2] = ExpiryView(json::array(), kExpiresAt - 10);
  h.files["bob-22.jsonl"][h.files["bob-22.jsonl"].size() - 2] =
      ExpiryView({ViewMsg(4, 0, true, false, "")}, kAfterExpiry);
  ExpectOnly(CheckAll(h, before), "", 0);
  // Its text still held (listed or not) at a clock past the expiry.
  h.files["bob-21.jsonl"][h.files["bob-21.jsonl"].size() - 2] = ExpiryView(json::array(), kExpiresAt + 10);
  Report r = CheckAll(h, before);
  ExpectOnly(r, "expired_shown", 1);
  EXPECT_NE(FormatReport(r, 5).find("message 100/4 still has its text at the device's clock"), std::string::npos)
      << FormatReport(r, 5);
  h.files["bob-21.jsonl"][h.files["bob-21.jsonl"].size() - 2] =
      ExpiryView({ViewMsg(4, 0, false, true, "hb2")}, kExpiresAt + 10);  // hidden, text kept
  before["tables"]["stream"]["rows"].push_back({2, 9, 12, 100, 4, 0, 0, 0});
  before["tables"]["heads"]["rows"] = {{1, 8}, {2, 9}, {3, 2}, {4, 3}};
  for (const char* name : {"bob-21.jsonl", "bob-22.jsonl"}) {
    auto& f = h.files[name];
    f.insert(f.end() - 3, ChangeEv(9, "delete_for_me", 4, 0, ""));
    f[f.size() - 3] = Caught(9);
  }
  h.files["bob-22.jsonl"][h.files["bob-22.jsonl"].size() - 2] =
      ExpiryView({ViewMsg(4, 0, true, true, "")}, kAfterExpiry);
  ExpectOnly(CheckAll(h, before), "expired_shown", 1);
  // A tombstone on a device whose clock has not reached the expiry, with
  // no delete in the stream: a divergence, as before.
  h = ExpiryHistories();
  for (const char* name : {"alice-11.jsonl", "bob-21.jsonl", "bob-22.jsonl"}) {
    auto& f = h.files[name];
    f.erase(std::remove_if(f.begin(), f.end(), [](const json& j) { return j.value("kind", "") == "delete"; }), f.end());
    f[f.size() - 4]["user_seq"] = 8;
    f[f.size() - 3] = Caught(8);
    f[f.size() - 2] = ExpiryView(json::array(), kExpiresAt - 10);
  }
  h.files["alice-11.jsonl"][h.files["alice-11.jsonl"].size() - 2] =
      ExpiryView({ViewMsg(4, 0, true, false, "")}, kExpiresAt - 10);
  ExpectOnly(CheckAll(h, ExpiryState(false, kExpiresAt + 1000)), "version_divergences", 1);
}

TEST(CheckerTest, AServerThatNeverExpiresAMessageIsCounted) {
  // No delete long after the expiry: one per member's stream (the devices'
  // tombstones, made by their clocks, are right).
  Histories h = ExpiryHistories();
  for (const char* name : {"alice-11.jsonl", "bob-21.jsonl", "bob-22.jsonl"}) {
    auto& f = h.files[name];
    f.erase(std::remove_if(f.begin(), f.end(), [](const json& j) { return j.value("kind", "") == "delete"; }), f.end());
    f[f.size() - 4]["user_seq"] = 8;
    f[f.size() - 3] = Caught(8);
    f[f.size() - 2] = ExpiryView({ViewMsg(4, 0, true, false, "")}, kAfterExpiry + 100);
  }
  Report r = CheckAll(h, ExpiryState(/*with_delete=*/false));
  ExpectOnly(r, "expired_shown", 2);
  EXPECT_NE(FormatReport(r, 5).find("but user 1's stream has no delete for it"), std::string::npos) << FormatReport(r, 5);
  // A message stored under the timer without an expiry (its sender's
  // stream orders it after the timer).
  r = CheckAll(ExpiryHistories(), ExpiryState(true, kExpiresAt + 60'000, /*expires_at=*/0));
  ExpectOnly(r, "expired_shown", 1);
  EXPECT_NE(FormatReport(r, 5).find("was stored while the conversation's timer was 5 s"), std::string::npos)
      << FormatReport(r, 5);
}

TEST(CheckerTest, ADeviceLeftWithAnotherTimerDiverges) {
  Histories h = ExpiryHistories();
  h.files["bob-22.jsonl"][h.files["bob-22.jsonl"].size() - 2] =
      ExpiryView({ViewMsg(4, 1, true, false, "")}, kAfterExpiry + 100, /*timer=*/5);
  Report r = CheckAll(h, ExpiryState());
  ExpectOnly(r, "timer_divergences", 1);
  EXPECT_NE(FormatReport(r, 5).find("conversation 100's disappearing timer is 5 s, the user's stream last set 0 s"),
            std::string::npos)
      << FormatReport(r, 5);
}

TEST(CheckerTest, MalformedLineNamesFileAndLine) {
  char tmpl[] = "/tmp/parley-checker-XXXXXX";
  std::string dir = mkdtemp(tmpl);
  std::string path = dir + "/d.jsonl";
  {
    std::ofstream out(path);
    out << R"({"n":1,"ts":1,"user":1,"device":2,"ev":"open","cursor":null})" << "\n";
    out << R"({"n":2,"ts":1,"user":1,"device":2,"ev":"event","source":"live","kind":"message"})" << "\n";
  }
  DeviceHistory h;
  std::string error;
  EXPECT_FALSE(LoadHistoryFile(path, &h, &error));
  EXPECT_EQ(error, path + ":2: \"event\" record without integer \"user_seq\"");
  {
    std::ofstream out(path);
    out << "{not json\n";
  }
  EXPECT_FALSE(LoadHistoryFile(path, &h, &error));
  EXPECT_EQ(error, path + ":1: not valid JSON");
  {
    std::ofstream out(path);
    out << R"({"n":1,"ts":1,"user":1,"device":2,"ev":"view","held":[{"conversation_id":1,"ranges":[[1]]}],)"
        << R"("messages":[],"drafts":[]})" << "\n";
  }
  EXPECT_FALSE(LoadHistoryFile(path, &h, &error));
  EXPECT_EQ(error, path + ":1: \"view\" record with a malformed \"held\" entry");
  // A torn last line (no newline: a kill in the middle of a write) is skipped.
  {
    std::ofstream out(path);
    out << R"({"n":1,"ts":1,"user":1,"device":2,"ev":"open","cursor":null})" << "\n" << R"({"n":2,"ts":1,"us)";
  }
  EXPECT_TRUE(LoadHistoryFile(path, &h, &error)) << error;
  EXPECT_EQ(h.records.size(), 1u);
  std::vector<DeviceHistory> all;
  EXPECT_FALSE(LoadHistoryDir(dir + "/missing", &all, &error));
  EXPECT_NE(error.find("missing"), std::string::npos);
  std::filesystem::remove_all(dir);
}

TEST(CheckerTest, TwoDevicesInOneFileIsBadInput) {
  Histories h = BaseHistories();
  auto built = h.Build();
  built[0].records.back().j["device"] = 99;
  ServerState state;
  std::string error;
  ASSERT_TRUE(ParseState(BaseState(), &state, &error)) << error;
  Report r;
  EXPECT_FALSE(Check(built, state, &r, &error));
  EXPECT_NE(error.find("one history file per device"), std::string::npos) << error;
}

TEST(CheckerTest, MalformedStateIsRejected) {
  json s = BaseState();
  s["tables"]["messages"]["rows"].push_back({100, "x"});
  ServerState state;
  std::string error;
  EXPECT_FALSE(ParseState(s, &state, &error));
  EXPECT_EQ(error, "state: table \"messages\" row 6 is malformed");
  s = BaseState();
  s["tables"].erase("blocks");
  EXPECT_FALSE(ParseState(s, &state, &error));
  EXPECT_EQ(error, "state: table \"blocks\" is missing");
}

}  // namespace
}  // namespace parley::checker
