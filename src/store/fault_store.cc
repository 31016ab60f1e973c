// FaultStore: see fault_store.h. Every fault is a decision taken under mu_
// when an operation is submitted or completes, counted in the order the
// backend sees operations, so a fixed workload fires it at the same point
// every time. Reads pass through, rewritten where a switch says so (the
// skip_dedup mark is stripped from client ids, dropped entries are filtered,
// swapped pairs exchange their messages, omitted withheld lists are cleared).
#include "store/fault_store.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <memory>

#include "common/metrics.h"

namespace parley::store {

namespace {

// Appended to the client id of a message stored by skip_dedup (the unique
// index would refuse the same id); stripped from every record read back, so
// clients and the admin API see two messages under one client id.
constexpr std::string_view kDupMark = "\x1f" "dup";

// The backends' write queue gauge; stalled writes count in it too.
Gauge& StoreQueueDepth() {
  return Metrics::Default().GetGauge("parley_store_queue_depth", "Write operations queued in the store.");
}

struct NamedKind {
  std::string_view name;
  FaultKind kind;
};
constexpr NamedKind kKinds[] = {
    {"ack_before_commit", FaultKind::kAckBeforeCommit}, {"skip_dedup", FaultKind::kSkipDedup},
    {"drop_stream_entry", FaultKind::kDropStreamEntry}, {"out_of_order", FaultKind::kOutOfOrder},
    {"crash_after_append", FaultKind::kCrashAfterAppend}, {"omit_withheld", FaultKind::kOmitWithheld},
    {"stall_writes", FaultKind::kStallWrites}, {"fail_receipt", FaultKind::kFailReceipt},
    {"hold_snapshots", FaultKind::kHoldSnapshots},
};

}  // namespace

const char* FaultKindName(FaultKind kind) {
  for (const auto& k : kKinds) {
    if (k.kind == kind) return k.name.data();
  }
  return "unknown";
}

Result<FaultSwitch> ParseFaultSwitch(std::string_view spec) {
  auto bad = [&] {
    std::string names;
    for (const auto& k : kKinds) names += (names.empty() ? "" : ", ") + std::string(k.name);
    return Status(ErrorCode::kBadRequest,
                  "bad fault switch '" + std::string(spec) + "': expected NAME@N (N >= 1), NAME one of " + names);
  };
  auto at = spec.find('@');
  if (at == std::string_view::npos || at + 1 >= spec.size()) return bad();
  std::string_view name = spec.substr(0, at), num = spec.substr(at + 1);
  int64_t n = 0;
  for (char ch : num) {
    if (ch < '0' || ch > '9' || n > 1'000'000'000) return bad();
    n = n * 10 + (ch - '0');
  }
  if (n < 1) return bad();
  for (const auto& k : kKinds) {
    if (k.name == name) return FaultSwitch{k.kind, n};
  }
  return bad();
}

FaultStore::FaultStore(Store& inner, std::vector<FaultSwitch> switches)
    : inner_(inner), switches_(std::move(switches)) {}

FaultStore::~FaultStore() {
  // Stalled writes never reached the backend; they end with this store (the
  // wrapped one may be gone already: parleyd closes it first).
  for (auto& fail : stalled_) fail(Status(ErrorCode::kShuttingDown, "store is closing"));
  StoreQueueDepth().Add(-static_cast<int64_t>(stalled_.size()));
  // Held snapshot answers were read; they are given now rather than lost.
  for (auto& [order, answer] : held_snapshots_) answer();
}

bool FaultStore::Stall(std::function<void(const Status&)> fail, bool count) {
  const FaultSwitch* s = Switch(FaultKind::kStallWrites);
  if (s == nullptr) return false;
  std::lock_guard lock(mu_);
  if (count && ++writes_ == s->n) {
    stalling_ = true;
    ++fired_[static_cast<size_t>(FaultKind::kStallWrites)];
  }
  if (!stalling_) return false;
  stalled_.push_back(std::move(fail));
  StoreQueueDepth().Add(1);  // queued in the store, as far as anyone can tell
  return true;
}

void FaultStore::FailNextWrites(int n, Status status) {
  std::lock_guard lock(mu_);
  fail_left_ = n;
  fail_status_ = std::move(status);
}

void FaultStore::FailNextListDevices(int n, Status status) {
  std::lock_guard lock(mu_);
  list_devices_fail_left_ = n;
  list_devices_fail_status_ = std::move(status);
}

void FaultStore::HoldWrites() {
  std::lock_guard lock(mu_);
  holding_ = true;
}

void FaultStore::ReleaseWrites() {
  std::deque<std::function<void()>> held;
  {
    std::lock_guard lock(mu_);
    holding_ = false;
    held.swap(held_);
  }
  for (auto& f : held) f();
}

size_t FaultStore::HeldWrites() const {
  std::lock_guard lock(mu_);
  return held_.size();
}

void FaultStore::FailPurges(int pass, int n, Status status) {
  ArmPurgeFailures(pass, n, std::move(status), /*after_commit=*/false);
}

void FaultStore::LosePurgeAnswers(int pass, int n, Status status) {
  ArmPurgeFailures(pass, n, std::move(status), /*after_commit=*/true);
}

void FaultStore::ArmPurgeFailures(int pass, int n, Status status, bool after_commit) {
  std::lock_guard lock(mu_);
  purge_pass_left_ = pass;
  purge_fail_left_ = n;
  purge_fail_status_ = std::move(status);
  purge_fail_after_commit_ = after_commit;
}

int64_t FaultStore::PurgesFailed() const {
  std::lock_guard lock(mu_);
  return purges_failed_;
}

bool FaultStore::TakePurgeFailure(Status* status, bool* after_commit) {
  std::lock_guard lock(mu_);
  if (purge_fail_left_ == 0) return false;
  if (purge_pass_left_ > 0) {
    --purge_pass_left_;
    return false;
  }
  if (purge_fail_left_ != kFailEveryPurge) --purge_fail_left_;
  ++purges_failed_;
  *status = purge_fail_status_;
  *after_commit = purge_fail_after_commit_;
  return true;
}

int64_t FaultStore::Fired(FaultKind kind) const {
  std::lock_guard lock(mu_);
  return fired_[static_cast<size_t>(kind)];
}

const FaultSwitch* FaultStore::Switch(FaultKind kind) const {
  for (const auto& s : switches_) {
    if (s.kind == kind) return &s;
  }
  return nullptr;
}

bool FaultStore::TakeFailure(Status* status) {
  std::lock_guard lock(mu_);
  if (fail_left_ <= 0) return false;
  --fail_left_;
  *status = fail_status_;
  return true;
}

template <typename T>
Callback<T> FaultStore::Held(Callback<T> done) {
  return [this, done = std::move(done)](Result<T> r) mutable {
    {
      std::lock_guard lock(mu_);
      if (holding_) {
        held_.push_back([done = std::move(done), r = std::move(r)]() mutable { done(std::move(r)); });
        return;
      }
    }
    done(std::move(r));
  };
}

template <typename T, typename Op>
void FaultStore::Write(Callback<T> done, Op op) {
  if (Stall([done](const Status& why) { done(why); }, true)) return;
  Status failure = Status::Ok();
  if (TakeFailure(&failure)) {
    // Answer from a thread of the store's own, as the contract says.
    inner_.Flush([done = std::move(done), failure](Status) { done(failure); });
    return;
  }
  op(Held<T>(std::move(done)));
}

void FaultStore::StatusWrite(StatusCallback done, const std::function<void(StatusCallback)>& op) {
  Write<Empty>([done = std::move(done)](Result<Empty> r) { done(r ? Status::Ok() : r.error()); },
               [&op](Callback<Empty> cb) { op([cb = std::move(cb)](Status s) { s.ok() ? cb(Empty{}) : cb(s); }); });
}

void FaultStore::FixMessage(MessageRecord* m) const {
  if (auto pos = m->client_id.find(kDupMark); pos != std::string::npos) m->client_id.resize(pos);
}

void FaultStore::FixPage(UserId user_id, StreamPage* page) const {
  std::lock_guard lock(mu_);
  auto& ev = page->events;
  if (!dropped_.empty()) {
    ev.erase(std::remove_if(ev.begin(), ev.end(),
                            [&](const StreamEvent& e) { return dropped_.count({user_id, e.user_seq}) != 0; }),
             ev.end());
  }
  for (const auto& s : swaps_) {
    if (s.user_id != user_id || s.second == 0) continue;
    auto a = std::find_if(ev.begin(), ev.end(), [&](const StreamEvent& e) { return e.user_seq == s.first; });
    auto b = std::find_if(ev.begin(), ev.end(), [&](const StreamEvent& e) { return e.user_seq == s.second; });
    if (a != ev.end() && b != ev.end()) std::swap(a->message, b->message);
  }
  for (auto& e : ev) {
    if (e.message) FixMessage(&*e.message);
    if (!unlisted_.empty() && unlisted_.count({user_id, e.user_seq})) e.withheld.clear();
  }
}

void FaultStore::NotePositions(const AppendResult& r, std::vector<StreamPosition>* kept) {
  std::lock_guard lock(mu_);
  const FaultSwitch* drop = Switch(FaultKind::kDropStreamEntry);
  const FaultSwitch* swap = Switch(FaultKind::kOutOfOrder);
  for (const auto& p : r.positions) {
    bool keep = true;
    if (p.user_id != r.message.sender_id) {
      ++recipient_entries_;
      if (drop && recipient_entries_ == drop->n) {
        dropped_.insert({p.user_id, p.user_seq});
        ++fired_[static_cast<size_t>(FaultKind::kDropStreamEntry)];
        keep = false;
      }
      if (swap) {
        for (auto& s : swaps_) {
          if (s.second == 0 && s.user_id == p.user_id && s.conversation_id == r.message.conversation_id) {
            s.second = p.user_seq;
            ++fired_[static_cast<size_t>(FaultKind::kOutOfOrder)];
          }
        }
        if (recipient_entries_ == swap->n) swaps_.push_back({p.user_id, r.message.conversation_id, p.user_seq, 0});
      }
    }
    if (keep) kept->push_back(p);
  }
}

// ---- Writes ----

void FaultStore::CreateUser(std::string username, std::string password_hash, int64_t now, Callback<UserRecord> done) {
  Write<UserRecord>(std::move(done), [&](Callback<UserRecord> cb) {
    inner_.CreateUser(std::move(username), std::move(password_hash), now, std::move(cb));
  });
}

void FaultStore::CreateDevice(UserId user_id, std::string name, std::string platform, std::string token_hash,
                              std::string verified_hash, int64_t now, Callback<DeviceRecord> done) {
  Write<DeviceRecord>(std::move(done), [&](Callback<DeviceRecord> cb) {
    inner_.CreateDevice(user_id, std::move(name), std::move(platform), std::move(token_hash), std::move(verified_hash),
                        now, std::move(cb));
  });
}

void FaultStore::RevokeDevice(UserId user_id, DeviceId device_id, StatusCallback done) {
  StatusWrite(std::move(done), [&](StatusCallback cb) { inner_.RevokeDevice(user_id, device_id, std::move(cb)); });
}

void FaultStore::SetCursor(DeviceId device_id, UserSeq user_seq, int64_t now, StatusCallback done) {
  StatusWrite(std::move(done), [&](StatusCallback cb) { inner_.SetCursor(device_id, user_seq, now, std::move(cb)); });
}

void FaultStore::OpenDirect(UserId a, UserId b, int64_t now, Callback<OpenResult> done) {
  Write<OpenResult>(std::move(done), [&](Callback<OpenResult> cb) { inner_.OpenDirect(a, b, now, std::move(cb)); });
}

void FaultStore::AppendMessage(NewMessage msg, Callback<AppendResult> done) {
  int64_t call;
  bool ack_early = false, skip_dedup = false, crash = false;
  std::map<int64_t, std::function<void()>> released;  // hold_snapshots: answered now, in call order
  {
    std::lock_guard lock(mu_);
    if (holding_snapshots_) {
      holding_snapshots_ = false;
      released.swap(held_snapshots_);
    }
    call = ++appends_;
    if (auto* s = Switch(FaultKind::kAckBeforeCommit); s && s->n == call) ack_early = true;
    if (auto* s = Switch(FaultKind::kSkipDedup); s && s->n == call) skip_dedup = true;
    if (auto* s = Switch(FaultKind::kCrashAfterAppend); s && s->n == call) crash = true;
    if (ack_early) ++fired_[static_cast<size_t>(FaultKind::kAckBeforeCommit)];
    if (skip_dedup) ++fired_[static_cast<size_t>(FaultKind::kSkipDedup)];
  }
  if (!released.empty()) {
    // From a thread of the store's own, as the contract says, and ahead of
    // this append's answer.
    inner_.Flush([released = std::move(released)](Status) mutable {
      for (auto& [order, answer] : released) answer();
    });
  }
  if (ack_early) {
    // Acknowledge with the seq the message would take; never write it.
    ConversationId conv = msg.conversation_id;
    inner_.GetConversation(conv, [msg = std::move(msg), done = std::move(done)](Result<ConversationRecord> c) mutable {
      if (!c) return done(c.error());
      AppendResult r;
      r.message.conversation_id = msg.conversation_id;
      r.message.seq = c->last_seq + 1;
      r.message.sender_id = msg.sender_id;
      r.message.sender_device_id = msg.sender_device_id;
      r.message.client_id = std::move(msg.client_id);
      r.message.body = std::move(msg.body);
      r.message.created_at = msg.now;
      done(std::move(r));
    });
    return;
  }
  if (skip_dedup) msg.client_id += kDupMark;
  Write<AppendResult>(std::move(done), [&](Callback<AppendResult> cb) {
    inner_.AppendMessage(std::move(msg), [this, cb = std::move(cb), crash](Result<AppendResult> r) mutable {
      if (r) {
        FixMessage(&r->message);
        if (!r->duplicate && (Switch(FaultKind::kDropStreamEntry) || Switch(FaultKind::kOutOfOrder))) {
          std::vector<StreamPosition> kept;
          NotePositions(*r, &kept);
          if (kept.size() != r->positions.size()) {
            // Keep withheld aligned with positions.
            std::vector<std::vector<Seq>> withheld;
            for (size_t i = 0, k = 0; i < r->positions.size() && k < kept.size(); ++i) {
              if (r->positions[i].user_seq != kept[k].user_seq || r->positions[i].user_id != kept[k].user_id) continue;
              if (i < r->withheld.size()) withheld.push_back(r->withheld[i]);
              ++k;
            }
            r->positions = std::move(kept);
            r->withheld = r->withheld.empty() ? r->withheld : std::move(withheld);
          }
        }
      }
      if (crash && r) {
        // Durable, not acknowledged: die the way kill -9 does.
        ::kill(::getpid(), SIGKILL);
      }
      cb(std::move(r));
    });
  });
}

void FaultStore::UpdateReceipt(ReceiptUpdate update, Callback<ReceiptResult> done) {
  bool fail = false;
  {
    std::lock_guard lock(mu_);
    if (auto* s = Switch(FaultKind::kFailReceipt); s && ++receipts_ == s->n) {
      fail = true;
      ++fired_[static_cast<size_t>(FaultKind::kFailReceipt)];
    }
  }
  if (fail) {
    // Answer from a thread of the store's own, as the contract says.
    inner_.Flush([done = std::move(done)](Status) {
      done(Status(ErrorCode::kUnavailable, "fault switch fail_receipt: this receipt was not stored"));
    });
    return;
  }
  Write<ReceiptResult>(std::move(done), [&](Callback<ReceiptResult> cb) {
    inner_.UpdateReceipt(update, [this, cb = std::move(cb)](Result<ReceiptResult> r) mutable {
      if (r && !r->withheld.empty()) {
        std::lock_guard lock(mu_);
        if (auto* s = Switch(FaultKind::kOmitWithheld); s && ++withheld_receipts_ == s->n) {
          // Every position's event goes out (live now, by sync later) without its list.
          for (const auto& p : r->positions) unlisted_.insert({p.user_id, p.user_seq});
          r->withheld.clear();
          ++fired_[static_cast<size_t>(FaultKind::kOmitWithheld)];
        }
      }
      cb(std::move(r));
    });
  });
}

void FaultStore::ChangeMessage(MessageChange change, Callback<ChangeResult> done) {
  Write<ChangeResult>(std::move(done),
                      [&](Callback<ChangeResult> cb) { inner_.ChangeMessage(std::move(change), std::move(cb)); });
}

void FaultStore::SetDraft(UserId user_id, ConversationId conversation_id, std::string text, int64_t now,
                          Callback<SocialResult> done) {
  Write<SocialResult>(std::move(done), [&](Callback<SocialResult> cb) {
    inner_.SetDraft(user_id, conversation_id, std::move(text), now, std::move(cb));
  });
}

void FaultStore::SetProfile(UserId user_id, std::optional<std::string> display_name, std::optional<std::string> about,
                            int64_t now, Callback<SocialResult> done) {
  Write<SocialResult>(std::move(done), [&](Callback<SocialResult> cb) {
    inner_.SetProfile(user_id, std::move(display_name), std::move(about), now, std::move(cb));
  });
}

void FaultStore::AddContact(UserId owner, UserId contact, int64_t now, Callback<SocialResult> done) {
  Write<SocialResult>(std::move(done),
                      [&](Callback<SocialResult> cb) { inner_.AddContact(owner, contact, now, std::move(cb)); });
}

void FaultStore::RemoveContact(UserId owner, UserId contact, int64_t now, Callback<SocialResult> done) {
  Write<SocialResult>(std::move(done),
                      [&](Callback<SocialResult> cb) { inner_.RemoveContact(owner, contact, now, std::move(cb)); });
}

void FaultStore::Block(UserId owner, UserId target, int64_t now, Callback<SocialResult> done) {
  Write<SocialResult>(std::move(done),
                      [&](Callback<SocialResult> cb) { inner_.Block(owner, target, now, std::move(cb)); });
}

void FaultStore::Unblock(UserId owner, UserId target, int64_t now, Callback<SocialResult> done) {
  Write<SocialResult>(std::move(done),
                      [&](Callback<SocialResult> cb) { inner_.Unblock(owner, target, now, std::move(cb)); });
}

void FaultStore::ChangePassword(UserId user_id, std::string new_hash, DeviceId keep_device, int64_t now,
                                Callback<std::vector<DeviceId>> done) {
  Write<std::vector<DeviceId>>(std::move(done), [&](Callback<std::vector<DeviceId>> cb) {
    inner_.ChangePassword(user_id, std::move(new_hash), keep_device, now, std::move(cb));
  });
}

void FaultStore::BulkCreateUsers(std::vector<NewBulkUser> users, int64_t now,
                                 Callback<std::vector<BulkUserResult>> done) {
  Write<std::vector<BulkUserResult>>(std::move(done), [&](Callback<std::vector<BulkUserResult>> cb) {
    inner_.BulkCreateUsers(std::move(users), now, std::move(cb));
  });
}

void FaultStore::SetPresenceVisibility(UserId user_id, PresenceVisibility visibility, int64_t now,
                                       Callback<SocialResult> done) {
  Write<SocialResult>(std::move(done), [&](Callback<SocialResult> cb) {
    inner_.SetPresenceVisibility(user_id, visibility, now, std::move(cb));
  });
}

void FaultStore::SetLastSeen(UserId user_id, int64_t last_seen, StatusCallback done) {
  StatusWrite(std::move(done), [&](StatusCallback cb) { inner_.SetLastSeen(user_id, last_seen, std::move(cb)); });
}

// ---- Reads ----

void FaultStore::GetUserByName(std::string username, Callback<UserRecord> done) {
  inner_.GetUserByName(std::move(username), std::move(done));
}

void FaultStore::GetUserById(UserId id, Callback<UserRecord> done) { inner_.GetUserById(id, std::move(done)); }

void FaultStore::GetAuthContext(std::string token_hash, Callback<AuthContext> done) {
  inner_.GetAuthContext(std::move(token_hash), std::move(done));
}

void FaultStore::ListDevices(UserId user_id, Callback<std::vector<DeviceRecord>> done) {
  Status failure = Status::Ok();
  {
    std::lock_guard lock(mu_);
    if (list_devices_fail_left_ > 0) {
      --list_devices_fail_left_;
      failure = list_devices_fail_status_;
    }
  }
  if (!failure.ok()) {
    // Answer from a thread of the store's own, as the contract says.
    inner_.Flush([done = std::move(done), failure](Status) { done(failure); });
    return;
  }
  inner_.ListDevices(user_id, std::move(done));
}

void FaultStore::GetConversation(ConversationId id, Callback<ConversationRecord> done) {
  inner_.GetConversation(id, std::move(done));
}

void FaultStore::History(ConversationId id, UserId viewer, Seq before, int limit,
                         Callback<std::vector<MessageRecord>> done) {
  inner_.History(id, viewer, before, limit, [this, done = std::move(done)](Result<std::vector<MessageRecord>> r) {
    if (r) {
      for (auto& m : *r) FixMessage(&m);
    }
    done(std::move(r));
  });
}

void FaultStore::ReadStream(UserId user_id, UserSeq after, int limit, Callback<StreamPage> done) {
  inner_.ReadStream(user_id, after, limit, [this, user_id, done = std::move(done)](Result<StreamPage> r) {
    if (r) FixPage(user_id, &*r);
    done(std::move(r));
  });
}

void FaultStore::GetHead(UserId user_id, Callback<UserSeq> done) { inner_.GetHead(user_id, std::move(done)); }

void FaultStore::GetConversationStates(UserId user_id, std::vector<ConversationId> ids,
                                       Callback<std::vector<ConversationState>> done) {
  inner_.GetConversationStates(user_id, std::move(ids), std::move(done));
}

void FaultStore::GetSnapshot(UserId user_id, int latest_per_conversation, Callback<Snapshot> done) {
  int64_t order = 0;  // this call's place among GetSnapshot calls (hold_snapshots)
  if (const FaultSwitch* s = Switch(FaultKind::kHoldSnapshots)) {
    std::lock_guard lock(mu_);
    order = ++snapshots_;
    if (order == s->n) {
      holding_snapshots_ = true;
      ++fired_[static_cast<size_t>(FaultKind::kHoldSnapshots)];
    }
  }
  inner_.GetSnapshot(user_id, latest_per_conversation, [this, order, done = std::move(done)](Result<Snapshot> r) mutable {
    if (r) {
      for (auto& s : r->conversations) {
        for (auto& m : s.latest) FixMessage(&m);
      }
    }
    {
      std::lock_guard lock(mu_);
      if (holding_snapshots_) {
        held_snapshots_.emplace(order, [done = std::move(done), r = std::move(r)]() mutable { done(std::move(r)); });
        return;
      }
    }
    done(std::move(r));
  });
}

void FaultStore::GetProfiles(UserId viewer, std::vector<UserId> ids, Callback<std::vector<ProfileRecord>> done) {
  inner_.GetProfiles(viewer, std::move(ids), std::move(done));
}

void FaultStore::ListContacts(UserId owner, Callback<std::vector<ContactRecord>> done) {
  inner_.ListContacts(owner, std::move(done));
}

void FaultStore::ListBlocked(UserId owner, Callback<std::vector<ProfileRecord>> done) {
  inner_.ListBlocked(owner, std::move(done));
}

void FaultStore::SearchUsers(UserId searcher, std::string query, std::string after, int limit,
                             Callback<SearchPage> done) {
  inner_.SearchUsers(searcher, std::move(query), std::move(after), limit, std::move(done));
}

void FaultStore::ListConversations(UserId user_id, int64_t before_activity, ConversationId before_id, int limit,
                                   int latest_per_conversation, Callback<ConversationPage> done) {
  inner_.ListConversations(user_id, before_activity, before_id, limit, latest_per_conversation,
                           [this, done = std::move(done)](Result<ConversationPage> r) {
                             if (r) {
                               for (auto& s : r->conversations) {
                                 for (auto& m : s.latest) FixMessage(&m);
                               }
                             }
                             done(std::move(r));
                           });
}

void FaultStore::GetPresence(UserId viewer, std::vector<UserId> ids, Callback<std::vector<PresenceRecord>> done) {
  inner_.GetPresence(viewer, std::move(ids), std::move(done));
}

void FaultStore::GetMessageTimeline(ConversationId id, Seq seq, Callback<MessageTimeline> done) {
  inner_.GetMessageTimeline(id, seq, std::move(done));
}

void FaultStore::SetUserDisabled(UserId user_id, bool disabled, bool revoke_devices, Callback<DisableResult> done) {
  Write<DisableResult>(std::move(done), [&](Callback<DisableResult> cb) {
    inner_.SetUserDisabled(user_id, disabled, revoke_devices, std::move(cb));
  });
}

void FaultStore::EraseAccount(UserId user_id, int64_t now, Callback<EraseResult> done) {
  Write<EraseResult>(std::move(done),
                     [&](Callback<EraseResult> cb) { inner_.EraseAccount(user_id, now, std::move(cb)); });
}

void FaultStore::GetStoreSummary(Callback<StoreSummary> done) { inner_.GetStoreSummary(std::move(done)); }

void FaultStore::GetSchemaStatus(Callback<SchemaStatus> done) { inner_.GetSchemaStatus(std::move(done)); }

void FaultStore::Backup(std::string path, Callback<BackupResult> done) { inner_.Backup(std::move(path), std::move(done)); }

void FaultStore::Export(ExportTable table, std::vector<int64_t> after, int limit, Callback<ExportPage> done) {
  inner_.Export(table, std::move(after), limit, [this, table, done = std::move(done)](Result<ExportPage> r) {
    if (r && table == ExportTable::kMessages) {
      for (auto& row : r->rows) {
        if (auto pos = row.text.find(kDupMark); pos != std::string::npos) row.text.resize(pos);
      }
    }
    if (r && table == ExportTable::kStream) {
      std::lock_guard lock(mu_);
      auto& rows = r->rows;
      rows.erase(std::remove_if(rows.begin(), rows.end(),
                                [&](const ExportRow& row) {
                                  return row.values.size() >= 2 && dropped_.count({row.values[0], row.values[1]}) != 0;
                                }),
                 rows.end());
    }
    done(std::move(r));
  });
}

void FaultStore::Flush(StatusCallback done) {
  if (Stall([done](const Status& why) { done(why); }, false)) return;
  inner_.Flush(std::move(done));
}

size_t FaultStore::AbandonQueuedWrites(const Status& why) {
  std::deque<std::function<void(const Status&)>> stalled;
  {
    std::lock_guard lock(mu_);
    stalled.swap(stalled_);
  }
  StoreQueueDepth().Add(-static_cast<int64_t>(stalled.size()));
  for (auto& fail : stalled) fail(why);
  return stalled.size() + inner_.AbandonQueuedWrites(why);
}

StoreStats FaultStore::Stats() const { return inner_.Stats(); }

// ---- Push (issue 11): forwarded ----

void FaultStore::SetPushEndpoint(UserId user_id, DeviceId device_id, std::string provider, std::string token,
                                 int64_t now, StatusCallback done) {
  inner_.SetPushEndpoint(user_id, device_id, std::move(provider), std::move(token), now, std::move(done));
}
void FaultStore::RemovePushEndpoint(UserId user_id, DeviceId device_id, Callback<bool> done) {
  inner_.RemovePushEndpoint(user_id, device_id, std::move(done));
}
void FaultStore::SetDisappearing(UserId user_id, ConversationId conversation_id, int64_t seconds, int64_t now,
                                 Callback<SocialResult> done) {
  Write<SocialResult>(std::move(done), [&](Callback<SocialResult> cb) {
    inner_.SetDisappearing(user_id, conversation_id, seconds, now, std::move(cb));
  });
}
void FaultStore::ExpireMessages(int64_t now, int max_messages, Callback<ExpireProgress> done) {
  inner_.ExpireMessages(now, max_messages, std::move(done));
}
void FaultStore::CompactMessages(CompactRequest req, Callback<CompactProgress> done) {
  inner_.CompactMessages(req, std::move(done));
}
void FaultStore::PurgeDeleted(int64_t deleted_before, int max_messages, Callback<PurgeProgress> done) {
  Status failure = Status::Ok();
  bool after_commit = false;
  if (TakePurgeFailure(&failure, &after_commit)) {
    if (after_commit) {
      // The backend purges and commits; its answer, success or not, is lost.
      inner_.PurgeDeleted(deleted_before, max_messages,
                          [done = std::move(done), failure](Result<PurgeProgress>) { done(failure); });
      return;
    }
    // Answer from a thread of the store's own, as the contract says.
    inner_.Flush([done = std::move(done), failure](Status) { done(failure); });
    return;
  }
  inner_.PurgeDeleted(deleted_before, max_messages, std::move(done));
}
void FaultStore::TrimStreams(TrimRequest req, Callback<TrimProgress> done) {
  inner_.TrimStreams(req, std::move(done));
}
void FaultStore::SetMuted(UserId user_id, ConversationId conversation_id, bool muted, int64_t now,
                          Callback<SocialResult> done) {
  inner_.SetMuted(user_id, conversation_id, muted, now, std::move(done));
}
void FaultStore::SetPushPreviews(UserId user_id, bool previews, int64_t now, Callback<SocialResult> done) {
  inner_.SetPushPreviews(user_id, previews, now, std::move(done));
}
void FaultStore::GetPushSettings(UserId user_id, Callback<std::pair<bool, std::vector<ConversationId>>> done) {
  inner_.GetPushSettings(user_id, std::move(done));
}
void FaultStore::ListPushHealth(UserId user_id, Callback<std::vector<PushHealth>> done) {
  inner_.ListPushHealth(user_id, std::move(done));
}
void FaultStore::EnqueuePush(PushRequest req, Callback<int> done) { inner_.EnqueuePush(std::move(req), std::move(done)); }
void FaultStore::ClaimPushJobs(std::string node, int64_t now, int64_t lease_ms, int limit,
                               Callback<std::vector<PushJob>> done) {
  inner_.ClaimPushJobs(std::move(node), now, lease_ms, limit, std::move(done));
}
void FaultStore::CompletePush(PushCompletion c, StatusCallback done) { inner_.CompletePush(std::move(c), std::move(done)); }
void FaultStore::GetPushQueueStats(int64_t now, Callback<PushQueueStats> done) {
  inner_.GetPushQueueStats(now, std::move(done));
}

void FaultStore::SearchMessages(MessageSearchQuery query, Callback<MessageSearchPage> done) {
  inner_.SearchMessages(std::move(query), std::move(done));
}

void FaultStore::IndexSearch(int max_entries, Callback<SearchIndexProgress> done) {
  inner_.IndexSearch(max_entries, std::move(done));
}

}  // namespace parley::store
