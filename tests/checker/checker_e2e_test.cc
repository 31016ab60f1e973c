// parley-check end to end: a real parleyd, SDK clients recording histories
// (ClientOptions::history_path), messages both ways, receipts, a block (a
// withheld message), a device that stops and comes back, and a kill -9 of
// the server (every client resumes). Then parley-check runs as a process
// against the live server: every count zero, exit 0. Then on a copy of the
// histories with one delivery duplicated, from the saved state: exit 1 and
// duplicated = 1; and on a malformed line: exit 2 naming file and line.
// A second run covers expiry: a disappearing timer, a device offline at the
// expiry, one whose clock runs ahead.
#include <chrono>
#include <filesystem>
#include <fstream>
#include <tuple>

#include "sdk/sdk_test_util.h"
#include "test_paths.h"

namespace parley::testing {
namespace {

constexpr const char* kAdminToken = "checker-admin-token-0123456789";

struct ProcResult {
  int exit_code = -1;
  std::string out, err;
};

// Runs parley-check with `args` to completion (stdout/stderr to files).
ProcResult RunCheck(const TempDir& dir, const std::vector<std::string>& args) {
  static int counter = 0;
  std::string out = dir / ("check-out-" + std::to_string(counter)), err = dir / ("check-err-" + std::to_string(counter));
  ++counter;
  std::vector<std::string> all = {parley::testing::BinDir() + "/parley-check"};
  all.insert(all.end(), args.begin(), args.end());
  SpawnOptions options;
  options.stdout_path = out;
  options.stderr_path = err;
  options.truncate = true;
  pid_t pid = Spawn(std::move(all), options).pid;
  ProcResult r;
  int status = 0;
  if (pid > 0 && waitpid(pid, &status, 0) == pid) r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = Slurp(out);
  r.err = Slurp(err);
  return r;
}

struct Dev {
  std::string name;
  std::unique_ptr<Client> client;
};

int64_t SystemMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// A history file's records.
std::vector<json> ReadHistory(const std::string& path) {
  std::ifstream in(path);
  std::vector<json> out;
  std::string line;
  while (std::getline(in, line)) out.push_back(json::parse(line));
  return out;
}

class CheckerE2eTest : public ::testing::Test {
 protected:
  explicit CheckerE2eTest(std::vector<std::string> args = {"--admin-token", kAdminToken})
      : server_(std::move(args)) {}

  // `skew_ms`: the device's clock (ClientOptions::now_ms) is off by this much.
  Dev Open(const std::string& user, const std::string& name, const std::string& token, int64_t skew_ms = 0) {
    ClientOptions o = OptionsFor(server_, dir_ / (name + ".db"), token);
    o.history_path = histories() + "/" + name + ".jsonl";
    if (skew_ms != 0) o.now_ms = [skew_ms] { return SystemMs() + skew_ms; };
    Dev d{name, OpenClient(std::move(o))};
    d.client->Start();
    EXPECT_TRUE(d.client->WaitOnline(10000)) << user << " " << name;
    return d;
  }

  std::string histories() const { return dir_.path() + "/histories"; }

  TempDir dir_;
  ServerProcess server_;
};

TEST_F(CheckerE2eTest, CleanRunPassesAndATamperedHistoryFails) {
  std::filesystem::create_directories(histories());
  std::string alice_token = RegisterAndLogin(server_, "alice");
  std::string bob_token = RegisterAndLogin(server_, "bob");
  std::string carol_token = RegisterAndLogin(server_, "carol");
  auto bob2 = Client::Login("127.0.0.1", server_.port(), "bob", "correct horse", "bob-2", "gtest");
  ASSERT_TRUE(bob2.ok);

  std::vector<Dev> devs;
  devs.push_back(Open("alice", "alice-1", alice_token));
  devs.push_back(Open("bob", "bob-1", bob_token));
  devs.push_back(Open("bob", "bob-2", bob2.token));
  devs.push_back(Open("carol", "carol-1", carol_token));
  Client& alice = *devs[0].client;
  Client& bob1 = *devs[1].client;
  Client& bob2c = *devs[2].client;
  Client& carol = *devs[3].client;

  int sent = 0;
  for (int i = 0; i < 3; ++i, ++sent) ASSERT_TRUE(alice.Compose("bob", "a->b " + std::to_string(i)).ok);
  for (int i = 0; i < 2; ++i, ++sent) ASSERT_TRUE(bob1.Compose("alice", "b->a " + std::to_string(i)).ok);
  ASSERT_TRUE(alice.Compose("carol", "before the block").ok);
  ++sent;
  ASSERT_TRUE(alice.WaitOutboxDrained(10000));
  ASSERT_TRUE(bob1.WaitOutboxDrained(10000));

  // Receipts: bob reads alice's messages on one device, alice reads bob's.
  ASSERT_TRUE(Eventually([&] { return bob1.Messages("alice", 0, 50).size() == 5; }, 10000));
  auto conv = bob1.ConversationWith("alice");
  ASSERT_TRUE(conv.has_value());
  bob1.MarkRead(conv->conversation_id, conv->last_seq);
  ASSERT_TRUE(Eventually([&] { return alice.Messages("bob", 0, 50).size() == 5; }, 10000));
  alice.MarkRead(conv->conversation_id, conv->last_seq);

  // A block: carol blocks alice; alice's next message to carol is withheld.
  ASSERT_TRUE(Eventually([&] { return carol.ConversationWith("alice").has_value(); }, 10000));
  Reply r = carol.Request("block", {{"username", "alice"}});
  ASSERT_TRUE(r.ok) << r.code << " " << r.message;
  ASSERT_TRUE(alice.Compose("carol", "withheld from carol").ok);
  ++sent;
  ASSERT_TRUE(alice.WaitOutboxDrained(10000));

  // A device away and back: bob-2 stops, misses two messages, resumes.
  bob2c.Stop();
  for (int i = 0; i < 2; ++i, ++sent) ASSERT_TRUE(alice.Compose("bob", "while bob-2 is away " + std::to_string(i)).ok);
  ASSERT_TRUE(alice.WaitOutboxDrained(10000));
  bob2c.Start();
  ASSERT_TRUE(bob2c.WaitOnline(10000));

  // The server crashes; every client reconnects and resumes.
  server_.Kill9();
  ASSERT_TRUE(alice.Compose("bob", "composed while the server is down").ok);
  ++sent;
  server_.Start();
  for (auto& d : devs) ASSERT_TRUE(d.client->WaitOnline(15000)) << d.name;
  ASSERT_TRUE(alice.WaitOutboxDrained(15000));
  ASSERT_TRUE(Eventually([&] { return bob2c.Messages("alice", 0, 50).size() == 8; }, 10000));

  // Edits and deletes (docs/protocol.md, "Edits and deletes") and a draft:
  // alice edits her first message to bob and deletes her second for
  // everyone, bob deletes her third for himself on bob-1 and starts a
  // draft there; bob-2 must end with the same view.
  std::vector<CachedMessage> to_bob;
  for (auto& m : alice.Messages("bob", 0, 50))
    if (m.outgoing && m.seq > 0) to_bob.push_back(m);
  ASSERT_GE(to_bob.size(), 3u);
  Reply edit = alice.Request("edit_message", {{"conversation_id", to_bob[0].conversation_id},
                                              {"seq", to_bob[0].seq},
                                              {"client_id", "e2e-edit-1"},
                                              {"body", "a->b 0, edited"}});
  ASSERT_TRUE(edit.ok) << edit.code << " " << edit.message;
  Reply del = alice.Request("delete_message", {{"conversation_id", to_bob[1].conversation_id},
                                               {"seq", to_bob[1].seq},
                                               {"for", "everyone"}});
  ASSERT_TRUE(del.ok) << del.code << " " << del.message;
  Reply hide = bob1.Request("delete_message", {{"conversation_id", to_bob[2].conversation_id},
                                               {"seq", to_bob[2].seq},
                                               {"for", "me"}});
  ASSERT_TRUE(hide.ok) << hide.code << " " << hide.message;
  ASSERT_TRUE(bob1.SetDraft("alice", "half a thought").ok);
  ASSERT_TRUE(bob1.WaitDraftsSaved(10000));

  for (auto& d : devs) d.client->Stop();
  // Stopping reports the last receipts, which move the streams on: one more
  // round (nothing left to report) ends every device at its user's final head.
  for (auto& d : devs) d.client->Start();
  for (auto& d : devs) ASSERT_TRUE(d.client->WaitOnline(10000)) << d.name;
  for (auto& d : devs) d.client->Stop();

  // The histories hold what happened: live and sync deliveries, acks, the
  // disconnect of the crash with the resume after it.
  std::map<std::string, int> kinds;
  for (auto& d : devs) {
    std::ifstream in(histories() + "/" + d.name + ".jsonl");
    std::string line;
    while (std::getline(in, line)) {
      json j = json::parse(line);
      std::string k = j["ev"].get<std::string>();
      if (k == "event") k += "/" + j["source"].get<std::string>() + "/" + j["kind"].get<std::string>();
      ++kinds[k];
    }
  }
  EXPECT_GE(kinds["event/live/message"], 1);
  EXPECT_GE(kinds["event/sync/message"], 1);  // bob-2 came back to two missed messages
  EXPECT_GE(kinds["event/live/receipt"] + kinds["event/sync/receipt"], 1);
  EXPECT_GE(kinds["ack"], sent);
  EXPECT_EQ(kinds["compose"], sent);
  EXPECT_GE(kinds["disconnect"], 4);
  EXPECT_GE(kinds["resume"], 4 + 4 + 4 + 1);  // start, after the crash, the second round, bob-2's return

  // Every history ends caught up (Stop's last sync), then the final view.
  for (auto& d : devs) {
    std::ifstream in(histories() + "/" + d.name + ".jsonl");
    std::string line;
    std::vector<std::string> tail;
    while (std::getline(in, line)) {
      tail.push_back(line);
      if (tail.size() > 3) tail.erase(tail.begin());
    }
    ASSERT_EQ(tail.size(), 3u) << d.name;
    EXPECT_EQ(json::parse(tail[2])["ev"], "stop") << d.name;
    EXPECT_EQ(json::parse(tail[1])["ev"], "view") << d.name;
    EXPECT_EQ(json::parse(tail[0])["ev"], "caught_up") << d.name;
  }

  std::string server_url = "http://127.0.0.1:" + std::to_string(server_.port());
  std::string state = dir_ / "state.json";
  ProcResult ok = RunCheck(dir_, {"--histories", histories(), "--server", server_url, "--admin-token", kAdminToken,
                                  "--json", "--save-state", state});
  ASSERT_EQ(ok.exit_code, 0) << ok.out << ok.err << "\n"
                             << RunCheck(dir_, {"--histories", histories(), "--state", state}).out;
  json counts = json::parse(ok.out);
  for (const char* k : {"lost", "duplicated", "reordered", "gaps", "leaks", "receipt_regressions",
                        "receipt_divergences", "phantoms", "receipt_leaks", "version_divergences", "resurrections",
                        "hidden_divergences", "draft_divergences", "expired_shown", "timer_divergences"}) {
    EXPECT_EQ(counts[k], 0) << k;
  }
  EXPECT_EQ(counts["views"], 4);
  EXPECT_EQ(counts["changed_messages"], 2 + 3);  // alice: the edit and the delete; bob: those and his hide
  EXPECT_EQ(counts["draft_conversations"], 1);
  EXPECT_EQ(counts["acked"], sent);
  EXPECT_EQ(counts["messages"], sent);
  EXPECT_EQ(counts["devices"], 4);
  EXPECT_EQ(counts["finished_devices"], 4);
  EXPECT_EQ(counts["current_devices"], 4);
  EXPECT_GT(counts["delivered"].get<int64_t>(), 3 * sent / 2);

  // The text report on the saved state says the same.
  ProcResult text = RunCheck(dir_, {"--histories", histories(), "--state", state});
  EXPECT_EQ(text.exit_code, 0) << text.out << text.err;
  EXPECT_NE(text.out.find("\nOK\n"), std::string::npos) << text.out;

  // bob-2's final view holds what bob-1 did and alice did: the edit, the
  // tombstone, the hide and bob's draft (so the zeros above compared something).
  auto last_view = [&](const std::string& name) {
    std::ifstream in(histories() + "/" + name + ".jsonl");
    std::string line;
    json view;
    while (std::getline(in, line)) {
      json j = json::parse(line);
      if (j["ev"] == "view") view = j;
    }
    return view;
  };
  json bob2_view = last_view("bob-2");
  std::map<int64_t, json> listed;
  for (const auto& m : bob2_view["messages"]) listed[m["seq"].get<int64_t>()] = m;
  ASSERT_TRUE(listed.count(to_bob[0].seq) && listed.count(to_bob[1].seq) && listed.count(to_bob[2].seq))
      << bob2_view.dump();
  EXPECT_EQ(listed[to_bob[0].seq]["version"], 1);
  EXPECT_NE(listed[to_bob[0].seq]["body_hash"], "");
  EXPECT_EQ(listed[to_bob[1].seq]["deleted"], true);
  EXPECT_EQ(listed[to_bob[1].seq]["body_hash"], "");
  EXPECT_EQ(listed[to_bob[2].seq]["hidden"], true);
  ASSERT_EQ(bob2_view["drafts"].size(), 1u) << bob2_view.dump();
  EXPECT_NE(bob2_view["drafts"][0]["draft_hash"], "");
  ASSERT_FALSE(bob2_view["held"].empty());

  // Tampered views: bob-2 kept the edited message as sent (it is held, so
  // unlisted means version 0), and lost bob's draft.
  {
    std::string stale = dir_ / "stale-view";
    std::filesystem::create_directories(stale);
    for (auto& d : devs) {
      std::ifstream in(histories() + "/" + d.name + ".jsonl");
      std::ofstream out(stale + "/" + d.name + ".jsonl");
      std::string line;
      while (std::getline(in, line)) {
        json j = json::parse(line);
        if (d.name == "bob-2" && j["ev"] == "view" && j == bob2_view) {
          json kept = json::array();
          for (const auto& m : j["messages"])
            if (m["seq"] != to_bob[0].seq) kept.push_back(m);
          j["messages"] = kept;
          j["drafts"][0]["draft_hash"] = "";
        }
        out << j.dump() << "\n";
      }
    }
    ProcResult sv = RunCheck(dir_, {"--histories", stale, "--state", state, "--json"});
    EXPECT_EQ(sv.exit_code, 1) << sv.out << sv.err;
    json sc = json::parse(sv.out);
    EXPECT_EQ(sc["version_divergences"], 1) << sv.out;
    EXPECT_EQ(sc["draft_divergences"], 1) << sv.out;
    EXPECT_EQ(sc["resurrections"], 0) << sv.out;
    EXPECT_EQ(sc["hidden_divergences"], 0) << sv.out;
  }

  // Tampered: one of bob-1's message deliveries recorded twice.
  std::string tampered = dir_ / "tampered";
  std::filesystem::create_directories(tampered);
  for (auto& d : devs) {
    std::filesystem::copy_file(histories() + "/" + d.name + ".jsonl", tampered + "/" + d.name + ".jsonl");
  }
  {
    std::ifstream in(histories() + "/bob-1.jsonl");
    std::vector<std::string> lines;
    std::string line;
    bool done = false;
    while (std::getline(in, line)) {
      lines.push_back(line);
      json j = json::parse(line);
      if (!done && j["ev"] == "event" && j["kind"] == "message") {
        lines.push_back(line);
        done = true;
      }
    }
    ASSERT_TRUE(done);
    std::ofstream out(tampered + "/bob-1.jsonl", std::ios::trunc);
    for (auto& l : lines) out << l << "\n";
  }
  ProcResult dup = RunCheck(dir_, {"--histories", tampered, "--state", state, "--json"});
  EXPECT_EQ(dup.exit_code, 1) << dup.out << dup.err;
  json dc = json::parse(dup.out);
  EXPECT_EQ(dc["duplicated"], 1);
  for (const char* k : {"lost", "reordered", "gaps", "leaks", "receipt_regressions", "receipt_divergences", "phantoms",
                        "receipt_leaks", "version_divergences", "resurrections", "hidden_divergences",
                        "draft_divergences"}) {
    EXPECT_EQ(dc[k], 0) << k;
  }

  // Malformed: a line that is not JSON: exit 2, the file and line named.
  {
    std::ofstream out(tampered + "/carol-1.jsonl", std::ios::app);
    out << "{oops\n";
  }
  ProcResult bad = RunCheck(dir_, {"--histories", tampered, "--state", state});
  EXPECT_EQ(bad.exit_code, 2) << bad.out << bad.err;
  EXPECT_NE(bad.err.find("carol-1.jsonl:"), std::string::npos) << bad.err;
  EXPECT_NE(bad.err.find("not valid JSON"), std::string::npos) << bad.err;

  // A wrong admin token is bad input too.
  ProcResult refused = RunCheck(dir_, {"--histories", histories(), "--server", server_url, "--admin-token", "wrong"});
  EXPECT_EQ(refused.exit_code, 2) << refused.out << refused.err;
}

// Expiry end to end (docs/checker.md, "Expiry"): bob sets a 1 s timer on
// his conversation with alice; alice's message expires while bob-2 is
// offline and is deleted by the server (its expiry step every 50 ms);
// bob-1's clock is an hour ahead, so it drops the text on arrival, before
// the delete event; bob-2 comes back after the expiry and gets only the
// tombstone. alice turns the timer off and sends once more. Every device
// converges (tombstone at the delete's version, the timer off) and the
// check passes; the same histories with the text put back in bob-2's
// catch-up give expired_shown 1.
class CheckerExpiryE2eTest : public CheckerE2eTest {
 protected:
  CheckerExpiryE2eTest() : CheckerE2eTest({"--admin-token", kAdminToken, "--expiry-interval-ms", "50"}) {}
};

TEST_F(CheckerExpiryE2eTest, AnExpiryConvergesEverywhereAndAnExpiredTextComingBackIsShown) {
  constexpr int64_t kHourMs = 3600 * 1000;
  std::filesystem::create_directories(histories());
  std::string alice_token = RegisterAndLogin(server_, "alice");
  std::string bob_token = RegisterAndLogin(server_, "bob");
  auto bob2_login = Client::Login("127.0.0.1", server_.port(), "bob", "correct horse", "bob-2", "gtest");
  ASSERT_TRUE(bob2_login.ok);
  std::vector<Dev> devs;
  devs.push_back(Open("alice", "alice-1", alice_token));
  devs.push_back(Open("bob", "bob-1", bob_token, kHourMs));
  devs.push_back(Open("bob", "bob-2", bob2_login.token));
  Client& alice = *devs[0].client;
  Client& bob1 = *devs[1].client;
  Client& bob2 = *devs[2].client;

  ASSERT_TRUE(alice.Compose("bob", "before the timer").ok);
  ASSERT_TRUE(alice.WaitOutboxDrained(10000));
  ASSERT_TRUE(Eventually([&] { return bob1.ConversationWith("alice").has_value(); }, 10000));
  const int64_t conv = bob1.ConversationWith("alice")->conversation_id;
  Reply set = bob1.Request("set_disappearing", {{"conversation_id", conv}, {"seconds", 1}});
  ASSERT_TRUE(set.ok) << set.code << " " << set.message;
  ASSERT_TRUE(Eventually([&] { auto c = alice.ConversationWith("bob"); return c && c->disappearing_s == 1; }, 10000));
  ASSERT_TRUE(Eventually([&] { auto c = bob2.ConversationWith("alice"); return c && c->disappearing_s == 1; }, 10000));

  bob2.Stop();  // offline until after the expiry
  ASSERT_TRUE(alice.Compose("bob", "vanishing words").ok);
  ASSERT_TRUE(alice.WaitOutboxDrained(10000));
  int64_t seq = 0, expires_at = 0;
  for (const auto& m : alice.Messages("bob", 0, 10))
    if (m.outgoing && m.seq > 0) std::tie(seq, expires_at) = std::make_pair(m.seq, m.expires_at);
  ASSERT_GT(expires_at, 0);
  // The server's delete reaches the online devices; bob-2 comes back after
  // it (past the checker's clock slack).
  auto deleted_on = [&](Client& c, const std::string& peer) {
    for (const auto& m : c.Messages(peer, 0, 10))
      if (m.seq == seq) return m.deleted && m.body.empty() && m.version == 1;
    return false;
  };
  ASSERT_TRUE(Eventually([&] { return deleted_on(alice, "bob") && deleted_on(bob1, "alice"); }, 15000));
  ASSERT_TRUE(Eventually([&] { return SystemMs() >= expires_at + 1500; }, 5000));
  bob2.Start();
  ASSERT_TRUE(bob2.WaitOnline(10000));
  ASSERT_TRUE(Eventually([&] { return deleted_on(bob2, "alice"); }, 10000));

  ASSERT_TRUE(alice.Request("set_disappearing", {{"conversation_id", conv}, {"seconds", 0}}).ok);
  ASSERT_TRUE(alice.Compose("bob", "after the timer").ok);
  ASSERT_TRUE(alice.WaitOutboxDrained(10000));
  ASSERT_TRUE(Eventually([&] { return bob2.Messages("alice", 0, 10).size() == 3; }, 10000));
  // Long enough after the expiry that the checker holds the streams to it.
  ASSERT_TRUE(Eventually([&] { return SystemMs() >= expires_at + 3500; }, 5000));
  for (auto& d : devs) d.client->Stop();
  for (auto& d : devs) d.client->Start();
  for (auto& d : devs) ASSERT_TRUE(d.client->WaitOnline(10000)) << d.name;
  for (auto& d : devs) d.client->Stop();

  // Each view: the tombstone at the delete's version, the timer off, its clock.
  for (auto& d : devs) {
    json view;
    for (const json& j : ReadHistory(histories() + "/" + d.name + ".jsonl"))
      if (j["ev"] == "view") view = j;
    ASSERT_TRUE(view.contains("clock")) << d.name << " " << view.dump();
    bool listed = false;
    for (const auto& m : view["messages"])
      if (m["seq"] == seq) {
        listed = true;
        EXPECT_EQ(m["deleted"], true) << d.name;
        EXPECT_EQ(m["body_hash"], "") << d.name;
        EXPECT_EQ(m["version"], 1) << d.name << ": the expiry's delete event set the version";
      }
    EXPECT_TRUE(listed) << d.name << " " << view.dump();
    EXPECT_EQ(view["timers"], json::parse("[{\"conversation_id\":" + std::to_string(conv) + ",\"seconds\":0}]"))
        << d.name;
  }

  std::string server_url = "http://127.0.0.1:" + std::to_string(server_.port());
  std::string state = dir_ / "state.json";
  ProcResult ok = RunCheck(dir_, {"--histories", histories(), "--server", server_url, "--admin-token", kAdminToken,
                                  "--json", "--save-state", state});
  ASSERT_EQ(ok.exit_code, 0) << ok.out << ok.err << "\n"
                             << RunCheck(dir_, {"--histories", histories(), "--state", state}).out;
  json counts = json::parse(ok.out);
  EXPECT_EQ(counts["views"], 3);
  EXPECT_EQ(counts["timer_changes"], 2);
  EXPECT_EQ(counts["expiring_messages"], 1);
  EXPECT_EQ(counts["expired_messages"], 1);
  EXPECT_EQ(counts["expired_shown"], 0);
  EXPECT_EQ(counts["timer_divergences"], 0);

  // bob-2's catch-up with the text put back in the message event its sync
  // carried: read after the expiry, so the text came back.
  std::string tampered = dir_ / "tampered";
  std::filesystem::create_directories(tampered);
  bool put_back = false;
  for (auto& d : devs) {
    std::ofstream out(tampered + "/" + d.name + ".jsonl");
    for (json j : ReadHistory(histories() + "/" + d.name + ".jsonl")) {
      if (d.name == "bob-2" && !put_back && j["ev"] == "event" && j["source"] == "sync" && j["kind"] == "message" &&
          j["message"]["seq"] == seq) {
        for (const char* k : {"version", "deleted", "body_hash"}) j["message"].erase(k);
        put_back = true;
      }
      out << j.dump() << "\n";
    }
  }
  ASSERT_TRUE(put_back) << "bob-2 synced the expired message";
  ProcResult back = RunCheck(dir_, {"--histories", tampered, "--state", state, "--json"});
  EXPECT_EQ(back.exit_code, 1) << back.out << back.err;
  json bc = json::parse(back.out);
  EXPECT_EQ(bc["expired_shown"], 1) << back.out;
  for (const char* k : {"lost", "duplicated", "reordered", "gaps", "leaks", "phantoms", "version_divergences",
                        "resurrections", "timer_divergences"}) {
    EXPECT_EQ(bc[k], 0) << k;
  }
}

// The recorder on its own (no server: Compose works offline): a reopened
// file continues its record numbers and compose orders, and a torn last line
// left by a crash is cut off.
TEST(HistoryRecorderTest, ReopenContinuesNumbersAndCutsATornLine) {
  TempDir dir;
  std::string path = dir / "h.jsonl";
  auto open = [&] {
    ClientOptions o;
    o.db_path = dir / "cache.db";
    o.history_path = path;
    return OpenClient(o);
  };
  {
    auto c = open();
    ASSERT_TRUE(c->Compose("bob", "one").ok);
    ASSERT_TRUE(c->Compose("bob", "two").ok);
    ASSERT_TRUE(c->Compose("carol", "three").ok);
  }
  { std::ofstream(path, std::ios::app) << R"({"n":99,"ts":1,"us)"; }
  {
    auto c = open();
    ASSERT_TRUE(c->Compose("bob", "four").ok);
  }
  std::ifstream in(path);
  std::vector<json> recs;
  std::string line;
  while (std::getline(in, line)) recs.push_back(json::parse(line));
  ASSERT_EQ(recs.size(), 6u);
  for (size_t i = 0; i < recs.size(); ++i) EXPECT_EQ(recs[i]["n"], static_cast<int64_t>(i + 1));
  EXPECT_EQ(recs[0]["ev"], "open");
  EXPECT_TRUE(recs[0]["cursor"].is_null());
  EXPECT_EQ(recs[3]["ev"], "compose");
  EXPECT_EQ(recs[3]["peer"], "carol");
  EXPECT_EQ(recs[3]["order"], 1);
  EXPECT_EQ(recs[4]["ev"], "open");
  EXPECT_EQ(recs[5]["ev"], "compose");
  EXPECT_EQ(recs[5]["peer"], "bob");
  EXPECT_EQ(recs[5]["order"], 3);
  // A complete line that is not JSON is refused.
  { std::ofstream(path, std::ios::app) << "garbage\n"; }
  ClientOptions o;
  o.db_path = dir / "cache.db";
  o.history_path = path;
  std::string err;
  EXPECT_EQ(Client::Open(o, &err), nullptr);
  EXPECT_EQ(err, path + ":7: not a JSON object");
}

}  // namespace
}  // namespace parley::testing
