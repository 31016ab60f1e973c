// Helpers for the store tests: turn the Store's asynchronous callbacks (which
// run on the store's own threads) into values on the test thread, and
// shorthands for the set-up every test repeats. Only the Store interface is
// used, so every backend's tests share them.
#pragma once

#include <gtest/gtest.h>

#include <stdlib.h>

#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"
#include "store/store.h"

namespace parley::store::testing {

// A fresh directory under the test temp dir, removed with its contents.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = std::filesystem::path(::testing::TempDir()) / "parley_store_XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) ADD_FAILURE() << "mkdtemp failed";
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Calls `start` with a callback and blocks until the store completes it.
// Example: Await<UserRecord>([&](auto cb) { store.GetUserById(1, cb); });
template <typename T, typename Start>
Result<T> Await(Start&& start) {
  auto promise = std::make_shared<std::promise<Result<T>>>();
  std::future<Result<T>> future = promise->get_future();
  start(Callback<T>([promise](Result<T> r) { promise->set_value(std::move(r)); }));
  return future.get();
}

template <typename Start>
Status AwaitStatus(Start&& start) {
  auto promise = std::make_shared<std::promise<Status>>();
  std::future<Status> future = promise->get_future();
  start(StatusCallback([promise](Status s) { promise->set_value(std::move(s)); }));
  return future.get();
}

// The value of `r`, or a test failure and a default value.
template <typename T>
T Must(Result<T> r) {
  if (!r.has_value()) {
    ADD_FAILURE() << "unexpected error: " << r.error().ToString();
    return T{};
  }
  return std::move(r).value();
}

// Collects the results of many operations queued at once, in slot order.
template <typename T>
class Collector {
 public:
  explicit Collector(size_t n) : results_(n) {}

  Callback<T> Slot(size_t i) {
    return [this, i](Result<T> r) {
      std::lock_guard lock(mu_);
      results_[i].emplace(std::move(r));
      if (++done_ == results_.size()) cv_.notify_all();
    };
  }
  // Blocks until every slot has completed; returns the results.
  std::vector<std::optional<Result<T>>>& Wait() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [this] { return done_ == results_.size(); });
    return results_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::optional<Result<T>>> results_;  // guarded by mu_ until Wait returns
  size_t done_ = 0;                                // guarded by mu_
};

// ---- Shorthands (a failure is reported, and a default value returned) ----

inline UserRecord MakeUser(Store& s, const std::string& name, int64_t now = 1000) {
  return Must(Await<UserRecord>([&](auto cb) { s.CreateUser(name, "hash-of-" + name, now, cb); }));
}

inline DeviceRecord MakeDevice(Store& s, UserId user, const std::string& token_hash, int64_t now = 1000) {
  return Must(Await<DeviceRecord>([&](auto cb) { s.CreateDevice(user, "phone", "test", token_hash, "", now, cb); }));
}

inline OpenResult Open(Store& s, UserId a, UserId b, int64_t now = 1000) {
  return Must(Await<OpenResult>([&](auto cb) { s.OpenDirect(a, b, now, cb); }));
}

// Users "a" and "b", a device of a's (token hash "ta") and their
// conversation: what many tests start from.
struct TwoUsers {
  UserRecord a;
  UserRecord b;
  DeviceRecord da;
  ConversationId conversation = 0;
};

inline TwoUsers MakeTwoUsers(Store& s) {
  TwoUsers t;
  t.a = MakeUser(s, "a");
  t.b = MakeUser(s, "b");
  t.da = MakeDevice(s, t.a.id, "ta");
  t.conversation = Open(s, t.a.id, t.b.id).conversation.id;
  return t;
}

inline NewMessage Msg(ConversationId c, UserId sender, DeviceId device, std::string client_id, std::string body,
                      int64_t now = 2000) {
  NewMessage m;
  m.conversation_id = c;
  m.sender_id = sender;
  m.sender_device_id = device;
  m.client_id = std::move(client_id);
  m.body = std::move(body);
  m.now = now;
  return m;
}

inline Result<AppendResult> Append(Store& s, NewMessage m) {
  return Await<AppendResult>([&](auto cb) { s.AppendMessage(std::move(m), cb); });
}

inline ReceiptUpdate Receipt(UserId user, DeviceId device, ConversationId c, Seq delivered, Seq read,
                             int64_t now = 3000) {
  ReceiptUpdate u;
  u.user_id = user;
  u.device_id = device;
  u.conversation_id = c;
  u.delivered = delivered;
  u.read = read;
  u.now = now;
  return u;
}

// The device of a token, through the only lookup by token (GetAuthContext).
inline Result<DeviceRecord> DeviceByToken(Store& s, std::string token_hash) {
  Result<AuthContext> a = Await<AuthContext>([&](auto cb) { s.GetAuthContext(std::move(token_hash), cb); });
  if (!a) return a.error();
  return a->device;
}

inline Result<ReceiptResult> UpdateReceipt(Store& s, ReceiptUpdate u) {
  return Await<ReceiptResult>([&](auto cb) { s.UpdateReceipt(u, cb); });
}

inline StreamPage ReadStream(Store& s, UserId user, UserSeq after, int limit) {
  return Must(Await<StreamPage>([&](auto cb) { s.ReadStream(user, after, limit, cb); }));
}

inline UserSeq Head(Store& s, UserId user) {
  return Must(Await<UserSeq>([&](auto cb) { s.GetHead(user, cb); }));
}

// `viewer` 0 sees every message.
inline std::vector<MessageRecord> History(Store& s, ConversationId c, Seq before, int limit, UserId viewer = 0) {
  return Must(Await<std::vector<MessageRecord>>([&](auto cb) { s.History(c, viewer, before, limit, cb); }));
}

inline Result<SocialResult> SetProfile(Store& s, UserId user, std::optional<std::string> display_name,
                                       std::optional<std::string> about, int64_t now = 5000) {
  return Await<SocialResult>([&](auto cb) { s.SetProfile(user, display_name, about, now, cb); });
}

inline Result<SocialResult> AddContact(Store& s, UserId owner, UserId contact, int64_t now = 5000) {
  return Await<SocialResult>([&](auto cb) { s.AddContact(owner, contact, now, cb); });
}

inline Result<SocialResult> Block(Store& s, UserId owner, UserId target, int64_t now = 5000) {
  return Await<SocialResult>([&](auto cb) { s.Block(owner, target, now, cb); });
}

inline Result<SocialResult> Unblock(Store& s, UserId owner, UserId target, int64_t now = 5000) {
  return Await<SocialResult>([&](auto cb) { s.Unblock(owner, target, now, cb); });
}

inline SearchPage Search(Store& s, UserId searcher, const std::string& query, const std::string& after, int limit) {
  return Must(Await<SearchPage>([&](auto cb) { s.SearchUsers(searcher, query, after, limit, cb); }));
}

inline Snapshot GetSnapshot(Store& s, UserId user, int latest) {
  return Must(Await<Snapshot>([&](auto cb) { s.GetSnapshot(user, latest, cb); }));
}

inline ConversationPage ListConversations(Store& s, UserId user, int64_t before_activity, ConversationId before_id,
                                          int limit, int latest) {
  return Must(Await<ConversationPage>(
      [&](auto cb) { s.ListConversations(user, before_activity, before_id, limit, latest, cb); }));
}

// A push of message `seq` to `user` (Store::EnqueuePush).
inline PushRequest MessagePush(UserId user, ConversationId c, Seq seq, int64_t now, int64_t coalesce_ms,
                               std::vector<DeviceId> skip_devices = {}, PushKind kind = PushKind::kMessage) {
  PushRequest r;
  r.user_id = user;
  r.conversation_id = c;
  r.seq = seq;
  r.kind = kind;
  r.skip_devices = std::move(skip_devices);
  r.now = now;
  r.coalesce_ms = coalesce_ms;
  return r;
}

// The outcome of claimed job `j`, as `node` reports it (Store::CompletePush);
// the caller sets what else the case needs (retry_at, max_attempts, ...).
inline PushCompletion CompletionOf(const PushJob& j, const std::string& node, PushOutcome outcome,
                                   std::string result, int64_t now) {
  PushCompletion c;
  c.device_id = j.device_id;
  c.node = node;
  c.version = j.version;
  c.conversation_id = j.conversation_id;
  c.seq = j.seq;
  c.kind = j.kind;
  c.outcome = outcome;
  c.result = std::move(result);
  c.now = now;
  return c;
}

}  // namespace parley::store::testing
