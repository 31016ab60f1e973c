// Shared by core's unit tests: a hand-drained executor, a sink that records
// frames, and the ChatService fixture (a real SQLite store in a temporary
// directory, the in-process fabric, no sockets), optionally with the store
// behind a FaultStore (store/fault_store.h) for the fault tests.
#pragma once

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <condition_variable>
#include <deque>
#include <filesystem>
#include <mutex>

#include "core/chat_service.h"
#include "fabric/local/local_fabric.h"
#include "store/fault_store.h"
#include "store/store_factory.h"

namespace parley::core::testing {

using nlohmann::json;

// A serial executor drained by the test thread: RunUntil runs posted work
// until a condition holds.
class ManualExecutor final : public Executor {
 public:
  void Post(std::function<void()> fn) override {
    {
      std::lock_guard lock(mu_);
      q_.push_back(std::move(fn));
      ++posted_;
    }
    cv_.notify_all();
  }
  // Delayed work runs as soon as the test drains (tests do not wait for time).
  void PostAfter(int64_t, std::function<void()> fn) override { Post(std::move(fn)); }
  bool RunUntil(const std::function<bool()>& done, int timeout_ms = 10000) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (!done()) {
      std::function<void()> fn;
      {
        std::unique_lock lock(mu_);
        if (!cv_.wait_until(lock, deadline, [&] { return !q_.empty(); })) return done();
        fn = std::move(q_.front());
        q_.pop_front();
      }
      fn();
    }
    return true;
  }
  // Functions posted so far (a store completion coming back is one).
  uint64_t posted() {
    std::lock_guard lock(mu_);
    return posted_;
  }
  // Runs what is queued, and what that queues, until nothing is; never waits.
  void RunPending() {
    for (;;) {
      std::function<void()> fn;
      {
        std::lock_guard lock(mu_);
        if (q_.empty()) return;
        fn = std::move(q_.front());
        q_.pop_front();
      }
      fn();
    }
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> q_;
  uint64_t posted_ = 0;
};

class FakeSink final : public fabric::DeviceSink {
 public:
  void SendFrame(fabric::SharedFrame f, bool) override {
    std::lock_guard lock(mu);
    frames.push_back(json::parse(*f));
  }
  void Close(uint16_t c, std::string) override {
    std::lock_guard lock(mu);
    close_code = c;
  }
  std::optional<json> Find(const std::function<bool(const json&)>& pred) {
    std::lock_guard lock(mu);
    for (auto& f : frames)
      if (pred(f)) return f;
    return std::nullopt;
  }
  size_t Count(const std::function<bool(const json&)>& pred) {
    std::lock_guard lock(mu);
    size_t n = 0;
    for (auto& f : frames) n += pred(f) ? 1 : 0;
    return n;
  }
  std::mutex mu;
  std::vector<json> frames;
  uint16_t close_code = 0;
};

// LocalFabric that lets a test play another node's user changes
// (Fabric::OnRemoteUserChange), as RedisFabric delivers them.
class TestFabric final : public fabric::LocalFabric {
 public:
  void OnRemoteUserChange(RemoteUserChangeFn fn) override { remote_ = std::move(fn); }
  // As if another node published `change` (or the fabric was cut: kAnything).
  void DeliverRemote(const UserChange& change) {
    if (remote_) remote_(change);
  }

 private:
  RemoteUserChangeFn remote_;
};

class ChatServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(InitSodium().ok());
    char tmpl[] = "/tmp/parley-core-XXXXXX";
    dir_ = mkdtemp(tmpl);
    store::StoreConfig sc;
    sc.sqlite_path = dir_ + "/parley.db";
    sc.clock = clock_;
    if (sqlite_read_connections_ > 0) sc.sqlite_read_connections = sqlite_read_connections_;
    sc.sqlite_before_read_for_test = before_read_for_test_;
    sc.sqlite_after_read_for_test = after_read_for_test_;
    auto s = store::OpenStore(sc);
    ASSERT_TRUE(s.has_value()) << s.error().ToString();
    store_ = std::move(*s);
    fault_ = std::make_unique<store::FaultStore>(*store_, switches_);
    CoreConfig cc;
    cc.password_cost = PasswordCost::kInsecureFast;
    cc.cluster = cluster_;
    if (recheck_batch_ > 0) cc.recheck_batch = recheck_batch_;
    store::Store& used = with_fault_store_ ? static_cast<store::Store&>(*fault_) : *store_;
    chat_ = std::make_unique<ChatService>(exec_, used, fabric_, pool_, *clock_, cc);
  }
  void TearDown() override {
    chat_.reset();
    if (fault_) fault_->ReleaseWrites();  // held completions post to exec_, which is still alive
    fault_.reset();
    store_.reset();
    std::filesystem::remove_all(dir_);
  }

  struct Conn {
    std::shared_ptr<FakeSink> sink;
    std::shared_ptr<Client> client;
  };
  Conn Open() {
    Conn c;
    c.sink = std::make_shared<FakeSink>();
    c.client = chat_->Connect(c.sink);
    return c;
  }
  // Sends a request and drains the executor until its response or error arrives.
  json Call(Conn& c, const std::string& type, json fields = json::object()) {
    int id = next_id_++;
    fields["v"] = 1;
    fields["id"] = id;
    fields["type"] = type;
    chat_->OnFrame(c.client, fields.dump());
    std::optional<json> got;
    exec_.RunUntil([&] { return (got = c.sink->Find([&](const json& f) { return f.value("id", json()) == id; })).has_value(); });
    EXPECT_TRUE(got.has_value()) << "no answer to " << type;
    return got.value_or(json());
  }
  Conn LoggedIn(const std::string& user, bool do_register = true) {
    Conn c = Open();
    if (do_register) {
      auto r = Call(c, "register", {{"username", user}, {"password", "password123"}});
      EXPECT_EQ(r["type"], "response") << r.dump();
    }
    auto l = Call(c, "login", {{"username", user}, {"password", "password123"}, {"device_name", "d"}});
    EXPECT_EQ(l["type"], "response") << l.dump();
    return c;
  }

  ManualExecutor exec_;
  // The clock of the store and the service; subclasses may point it at
  // their own (set in the constructor).
  const Clock* clock_ = &SystemClock::Instance();
  TestFabric fabric_;
  WorkerPool pool_{1};
  std::string dir_;
  std::unique_ptr<store::Store> store_;
  // Subclasses set these in their constructor: the store's read connections
  // (0: its default) and its test hooks (store_factory.h), and
  // CoreConfig::cluster.
  int sqlite_read_connections_ = 0;
  int recheck_batch_ = 0;  // CoreConfig::recheck_batch (0: its default)
  std::function<void()> before_read_for_test_;
  std::function<void()> after_read_for_test_;
  bool cluster_ = false;
  // Subclasses that test faults set these in their constructor: the service
  // then talks to the store through fault_ (store/fault_store.h).
  bool with_fault_store_ = false;
  std::vector<store::FaultSwitch> switches_;
  std::unique_ptr<store::FaultStore> fault_;
  std::unique_ptr<ChatService> chat_;
  int next_id_ = 1;
};

}  // namespace parley::core::testing
