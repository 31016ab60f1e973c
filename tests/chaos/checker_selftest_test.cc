// The checker is itself tested (issue 6, item 4): for each fault switch of
// the test build (store/fault_store.h, docs/checker.md "Fault switches"), a
// small fixed workload runs against a real parleyd started with that switch,
// through SDK clients that record their histories; then parley-check reads
// the histories and the server's state and must report the exact count in
// the right category and zero in every other. A run without a switch, with a
// crash in the half-open window, must report nothing at all.
#include <sys/wait.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "e2e/server_process.h"
#include "parley/client.h"
#include "test_paths.h"

namespace parley::testing {
namespace {

using nlohmann::json;

constexpr const char* kAdminToken = "checker-selftest";
// Every failure count of parley-check --json (docs/checker.md).
const char* const kFailureCounts[] = {"lost",          "duplicated",          "reordered",          "gaps",
                                      "leaks",         "phantoms",            "receipt_regressions", "receipt_divergences",
                                      "receipt_leaks", "version_divergences", "resurrections",       "hidden_divergences",
                                      "draft_divergences"};

// True once the process has exited (a zombie counts: it is not running).
bool Exited(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string s((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  auto close = s.rfind(')');
  return s.empty() || (close != std::string::npos && close + 2 < s.size() && s[close + 2] == 'Z');
}

class CheckerSelfTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/parley-selftest-XXXXXX";
    dir_ = mkdtemp(tmpl);
    std::filesystem::create_directories(dir_ + "/histories");
  }
  void TearDown() override {
    clients_.clear();
    server_.reset();
    unsetenv("PARLEY_FAULTS");
    if (!HasFailure()) std::filesystem::remove_all(dir_);
    else std::cerr << "kept " << dir_ << " (histories, checker output)\n";
  }

  // Starts parleyd with these fault switches (PARLEY_FAULTS, read at start).
  static void SetFaults(const std::string& faults) {
    if (faults.empty()) unsetenv("PARLEY_FAULTS");
    else setenv("PARLEY_FAULTS", faults.c_str(), 1);
  }
  void StartServer(const std::string& faults) {
    SetFaults(faults);
    server_ = std::make_unique<ServerProcess>(std::vector<std::string>{"--admin-token", kAdminToken});
  }
  // After a crash switch fired: restart on the same port and data with other switches.
  void RestartServer(const std::string& faults) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (!Exited(server_->pid()) && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    ASSERT_TRUE(Exited(server_->pid())) << "parleyd did not crash at its crash point";
    SetFaults(faults);
    server_->Restart();
  }

  void Users(std::initializer_list<const char*> names) {
    for (const char* n : names) ASSERT_TRUE(Client::Register("127.0.0.1", server_->port(), n, "selftest pw").ok) << n;
  }
  // A device of `user` recording its history; started unless `start` is false.
  Client& Device(const std::string& user, bool start = true, bool report_delivered = true) {
    LoginResult l = Client::Login("127.0.0.1", server_->port(), user, "selftest pw", user + "-dev", "test");
    EXPECT_TRUE(l.ok) << l.code << " " << l.message;
    ClientOptions o;
    o.port = server_->port();
    o.db_path = dir_ + "/" + user + std::to_string(clients_.size()) + ".db";
    o.token = l.token;
    o.backoff.initial_ms = 20;
    o.backoff.max_ms = 200;
    o.auto_report_delivered = report_delivered;
    o.history_path = dir_ + "/histories/" + user + std::to_string(clients_.size()) + ".jsonl";
    std::string err;
    clients_.push_back(Client::Open(o, &err));
    EXPECT_NE(clients_.back(), nullptr) << err;
    if (start) clients_.back()->Start();
    return *clients_.back();
  }
  // A device of `user` that took its first snapshot and went offline: when
  // started again it catches up by sync.
  Client& OfflineWithCache(const std::string& user, bool report_delivered = true) {
    Client& c = Device(user, true, report_delivered);
    EXPECT_TRUE(c.WaitOnline(10000));
    c.Stop();
    return c;
  }
  // Waits until every started device has drained its outbox and applied its
  // user's head.
  void Settle() {
    for (auto& c : clients_) {
      if (c->state() == ClientState::kStopped) continue;
      ASSERT_TRUE(c->WaitOnline(20000)) << c->last_error();
      ASSERT_TRUE(c->WaitOutboxDrained(20000));
    }
    for (auto& c : clients_) {
      if (c->state() == ClientState::kStopped) continue;
      Reply p;
      for (int i = 0; i < 50 && !p.ok; ++i) {
        p = c->Request("ping");
        if (!p.ok) std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
      ASSERT_TRUE(p.ok) << p.code << " " << p.message;
      c->WaitApplied(p.result.value("head", int64_t{0}), 5000);  // a hole keeps a device below its head
    }
    // A clean Stop reports what is still unreported (receipts, the cursor)
    // and ends each history with a last sync (caught_up). A receipt that
    // lands after another device stopped leaves that device short of the
    // server's head: its receipt view is then not judged, which no count
    // here depends on; a test that needs a receipt seen waits for it
    // (WaitDelivered).
    for (auto& c : clients_) c->Stop();
  }
  // Waits until `c`'s newest message to `peer` shows delivered (or read).
  static bool WaitDelivered(Client& c, const std::string& peer, int timeout_ms) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    do {
      std::vector<CachedMessage> last = c.Messages(peer, 0, 1);
      if (!last.empty() && last.back().outgoing &&
          (last.back().status == MessageStatus::kDelivered || last.back().status == MessageStatus::kRead))
        return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    } while (std::chrono::steady_clock::now() < deadline);
    return false;
  }

  // Runs parley-check --json; returns its report (and exit code in *rc).
  json Check(int* rc) {
    std::string out = dir_ + "/check.json";
    std::string cmd = parley::testing::BinDir() + "/parley-check --histories '" + dir_ + "/histories' --server http://127.0.0.1:" +
                      std::to_string(server_->port()) + " --admin-token " + kAdminToken + " --json > '" + out + "' 2> '" +
                      dir_ + "/check.err'";
    int status = std::system(cmd.c_str());
    *rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    std::ifstream in(out);
    json j = json::parse(in, nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << "parley-check --json printed no JSON (exit " << *rc << ")";
    return j;
  }
  static int64_t Count(const json& report, const std::string& name) {
    const json& counts = report.contains("counts") ? report["counts"] : report;
    EXPECT_TRUE(counts.contains(name)) << "no '" << name << "' in " << report.dump();
    return counts.value(name, int64_t{-1});
  }
  // The exact counts in `expected`, zero in every other failure category.
  json ExpectOnly(const std::map<std::string, int64_t>& expected, int64_t acked) {
    int rc = -1;
    json report = Check(&rc);
    SCOPED_TRACE(report.dump());
    bool any = false;
    for (const char* name : kFailureCounts) {
      auto it = expected.find(name);
      int64_t want = it == expected.end() ? 0 : it->second;
      any = any || want != 0;
      EXPECT_EQ(Count(report, name), want) << name;
    }
    EXPECT_EQ(Count(report, "acked"), acked);
    EXPECT_EQ(rc, any ? 1 : 0);
    return report;
  }

  // alice writes first (every device learns her delivered watermark: seq
  // 1), then blocks bob; bob's next two messages (seqs 2, 3) are withheld
  // from her. After the unblock bob sends a third (seq 4): alice's device
  // reports it delivered, and that receipt moves her watermark from 1 to 4
  // over 2 and 3, so it must list them in "withheld" (bob's devices keep
  // them "sent").
  void BlockWithholdThenDeliver() {
    Users({"alice", "bob"});
    Client& a = Device("alice");
    Client& b = Device("bob");
    ASSERT_TRUE(a.WaitOnline(10000));
    ASSERT_TRUE(b.WaitOnline(10000));
    ASSERT_TRUE(a.Compose("bob", "hi bob").ok);
    ASSERT_TRUE(a.WaitOutboxDrained(10000));
    Reply blocked = a.Request("block", {{"username", "bob"}});
    ASSERT_TRUE(blocked.ok) << blocked.code;
    for (const char* body : {"withheld one", "withheld two"}) ASSERT_TRUE(b.Compose("alice", body).ok);
    ASSERT_TRUE(b.WaitOutboxDrained(10000));
    Reply unblocked = a.Request("unblock", {{"username", "bob"}});
    ASSERT_TRUE(unblocked.ok) << unblocked.code;
    ASSERT_TRUE(b.Compose("alice", "after the block").ok);
    ASSERT_TRUE(b.WaitOutboxDrained(10000));
    // alice's device reports it delivered: the receipt that crosses 2 and 3.
    ASSERT_TRUE(WaitDelivered(b, "alice", 10000));
    Settle();
  }

  std::string dir_;
  std::unique_ptr<ServerProcess> server_;
  std::vector<std::unique_ptr<Client>> clients_;
};

// No switch; a crash right after the first message is durable, before its
// ack. On resume the sender's device finds the message in its stream (sent,
// with no ack record: acked counts the second message only); nothing is
// lost or doubled.
TEST_F(CheckerSelfTest, CorrectServerWithCrashInHalfOpenWindowReportsNothing) {
  StartServer("crash_after_append@1");
  Users({"alice", "bob"});
  Client& a = Device("alice");
  Device("bob");
  Device("bob");
  ASSERT_TRUE(a.WaitOnline(10000));
  ASSERT_TRUE(a.Compose("bob", "one").ok);
  RestartServer("");
  ASSERT_TRUE(a.Compose("bob", "two").ok);
  Settle();
  ExpectOnly({}, 1);
}

// A resend of an acknowledged message with the same client id (from a
// second connection of the sender, as a retry racing its ack would be) is
// the second append: skip_dedup@2 stores it again.
TEST_F(CheckerSelfTest, SkipDedupIsReportedAsOneDuplicate) {
  StartServer("skip_dedup@2");
  Users({"alice", "bob"});
  Client& a = Device("alice");
  Device("bob");
  ASSERT_TRUE(a.WaitOnline(10000));
  ComposeResult one = a.Compose("bob", "one");
  ASSERT_TRUE(one.ok);
  ASSERT_TRUE(a.WaitOutboxDrained(10000));
  LoginResult l = Client::Login("127.0.0.1", server_->port(), "alice", "selftest pw", "resender", "test");
  ASSERT_TRUE(l.ok);
  auto raw = server_->Connect();
  ASSERT_TRUE(raw->Call("auth", {{"token", l.token}}).ok);
  Reply again = raw->Call("send", {{"to", "bob"}, {"client_id", one.client_id}, {"body", "one"}});
  ASSERT_TRUE(again.ok) << again.code;
  EXPECT_FALSE(again.result.value("duplicate", true));  // the switch fired: not deduplicated
  EXPECT_EQ(again.result.value("seq", 0), 2);
  Settle();
  ExpectOnly({{"duplicated", 1}}, 1);
}

// The last message is acked and never stored.
TEST_F(CheckerSelfTest, AckBeforeCommitIsReportedAsOneLoss) {
  StartServer("ack_before_commit@3");
  Users({"alice", "bob"});
  Client& a = Device("alice");
  Device("bob");
  ASSERT_TRUE(a.WaitOnline(10000));
  for (const char* body : {"one", "two", "three"}) ASSERT_TRUE(a.Compose("bob", body).ok);
  Settle();
  ExpectOnly({{"lost", 1}}, 3);
}

// bob is offline while alice sends two messages; the second one's entry in
// bob's stream is never delivered. bob reports no receipts, so nothing comes
// after the hole: one gap (the hole) and one message lost for bob.
TEST_F(CheckerSelfTest, DroppedStreamEntryIsReportedAsOneGap) {
  StartServer("drop_stream_entry@2");
  Users({"alice", "bob"});
  Client& a = Device("alice");
  Client& b = OfflineWithCache("bob", /*report_delivered=*/false);
  ASSERT_TRUE(a.WaitOnline(10000));
  for (const char* body : {"one", "two"}) ASSERT_TRUE(a.Compose("bob", body).ok);
  ASSERT_TRUE(a.WaitOutboxDrained(10000));
  b.Start();
  Settle();
  ExpectOnly({{"gaps", 1}, {"lost", 1}}, 2);
}

// bob is offline while alice sends three messages; his sync delivers the
// second and third swapped.
TEST_F(CheckerSelfTest, OutOfOrderDeliveryIsReportedAsOneReordering) {
  StartServer("out_of_order@2");
  Users({"alice", "bob"});
  Client& a = Device("alice");
  Client& b = OfflineWithCache("bob");
  ASSERT_TRUE(a.WaitOnline(10000));
  for (const char* body : {"one", "two", "three"}) ASSERT_TRUE(a.Compose("bob", body).ok);
  ASSERT_TRUE(a.WaitOutboxDrained(10000));
  b.Start();
  Settle();
  ExpectOnly({{"reordered", 1}}, 3);
}

// Receipts' withheld lists on a correct server: the seqs withheld from
// alice are listed once when her watermark passes them; nothing to report,
// and the checker saw both listed.
TEST_F(CheckerSelfTest, WithheldSeqsListedInTheCrossingReceiptReportNothing) {
  StartServer("");
  BlockWithholdThenDeliver();
  json report = ExpectOnly({}, 4);
  EXPECT_EQ(Count(report, "withheld_listed"), 2);
}

// omit_withheld@1: the receipt that moves alice's watermark over seqs 2
// and 3 reaches both users' devices without its list: bob would see his
// withheld messages delivered. Each seq counts once (not per device).
TEST_F(CheckerSelfTest, OmittedWithheldListIsReportedAsTwoReceiptLeaks) {
  StartServer("omit_withheld@1");
  BlockWithholdThenDeliver();
  json report = ExpectOnly({{"receipt_leaks", 2}}, 4);
  EXPECT_EQ(Count(report, "withheld_listed"), 0);
}

}  // namespace
}  // namespace parley::testing
