// FaultStore: a Store decorator that injects faults, for tests only. It
// wraps any backend (SQLite, PostgreSQL), so every fault works on both.
//
// Two uses:
//  1. Unit-level fault tests of core (tests/core): programmable faults —
//     FailNextWrites (the next N write operations fail with a given Status
//     and never reach the backend: a failed commit) and HoldWrites /
//     ReleaseWrites (write completions are held back after the backend made
//     them durable, then released in their original order: a slow commit),
//     FailNextListDevices (device-list reads fail: a re-check that cannot
//     read), FailPurges (PurgeDeleted steps fail without reaching the backend,
//     once or until cleared: the user erase's failed purge, tests/admin) and
//     LosePurgeAnswers (steps the backend ran and committed answer an error:
//     a purge whose answer was lost).
//  2. Fault switches of test builds (parleyd --fault NAME@N, compiled only
//     with the CMake option PARLEY_FAULT_SWITCHES, which the ASan test tree
//     turns on and a Release build refuses). Each switch fires at a
//     deterministic logical point, never by timing, so that the checker's
//     self-tests (tests/chaos) can assert exact counts:
//       ack_before_commit@N   the Nth AppendMessage is acknowledged (with the
//                             seq it would have taken) and never written: a
//                             server that acks before its commit and then dies
//       skip_dedup@N          the Nth AppendMessage skips deduplication: a
//                             retry of an already stored message is stored again
//                             (under the same client id, as every reader sees it)
//       drop_stream_entry@N   the Nth message event appended to a recipient's
//                             stream (not the sender's own) is never delivered,
//                             live or by sync: a hole in that user's stream
//       out_of_order@N        the Nth message event appended to a recipient's
//                             stream and the next one of the same user and
//                             conversation are delivered by sync with their
//                             messages swapped (each keeps its user seq)
//       crash_after_append@N  the process kills itself (SIGKILL) right after
//                             the Nth AppendMessage is durable, before it is
//                             acknowledged: a crash in the half-open window
//       omit_withheld@N       the Nth UpdateReceipt whose receipt events carry
//                             a `withheld` list (seqs withheld from the reader
//                             by a block) delivers them without it, live and by
//                             sync: its sender's devices see those seqs delivered
//       stall_writes@N        from the Nth write operation on, writes (and a
//                             Flush behind them) wait and never reach the
//                             backend: a store that stopped taking writes, until
//                             AbandonQueuedWrites fails them (a shutdown) or the
//                             store closes (kShuttingDown)
//       fail_receipt@N        the Nth UpdateReceipt fails with `unavailable`
//                             and never reaches the backend: a receipt a
//                             client must report again (the SDK does)
//       hold_snapshots@N      from the Nth GetSnapshot on, snapshot answers
//                             (read by the backend) are held until the next
//                             AppendMessage arrives; it releases them, in
//                             order and before its own answer, and ends the
//                             hold: slow reads that pile up on a connection
//                             (its reads-in-flight bound), at a point the test
//                             chooses instead of by timing
//     N counts from 1 within one process (a restart starts over).
//
// Thread-safety: every method may be called from any thread; the fault state
// is guarded by mu_. Completions run on the wrapped store's threads (a fault
// that answers without the backend answers from a Flush completion of it).
// Ownership: does not own the wrapped store, which must outlive it.
#pragma once

#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "store/store.h"

namespace parley::store {

enum class FaultKind : int {
  kAckBeforeCommit = 1,
  kSkipDedup = 2,
  kDropStreamEntry = 3,
  kOutOfOrder = 4,
  kCrashAfterAppend = 5,
  kOmitWithheld = 6,
  kStallWrites = 7,
  kFailReceipt = 8,
  kHoldSnapshots = 9,
};

struct FaultSwitch {
  FaultKind kind = FaultKind::kSkipDedup;
  int64_t n = 1;  // fires at the Nth occurrence (1-based)
};

const char* FaultKindName(FaultKind kind);
// Parses "NAME@N" (N >= 1). Fails kBadRequest with a message naming the
// accepted switches.
Result<FaultSwitch> ParseFaultSwitch(std::string_view spec);

class FaultStore final : public Store {
 public:
  explicit FaultStore(Store& inner, std::vector<FaultSwitch> switches = {});
  ~FaultStore() override;

  // ---- Programmable faults (unit tests) ----

  // The next `n` write operations complete with `status` without reaching
  // the backend (nothing of them is stored).
  void FailNextWrites(int n, Status status);
  // From now on, completions of write operations are held after the backend
  // made the write durable, until ReleaseWrites.
  void HoldWrites();
  // Stops holding and runs the held completions in the order the backend
  // produced them (on the calling thread).
  void ReleaseWrites();
  // Completions held right now.
  size_t HeldWrites() const;
  // Purge steps (PurgeDeleted: the retention job's and the user erase's):
  // after `pass` more steps have reached the backend, the next `n` complete
  // with `status` without reaching it (nothing of them is purged);
  // n = kFailEveryPurge: every step from then on. FailPurges(0, 0, Ok())
  // clears it. Not counted as writes (FailNextWrites leaves purges alone).
  static constexpr int kFailEveryPurge = -1;
  void FailPurges(int pass, int n, Status status);
  // As FailPurges, but the `n` steps do reach the backend, which runs and
  // commits them; only their answer is replaced with `status`. A step the
  // database committed whose answer the caller never got (a connection cut
  // after COMMIT, a node that died before answering): FailPurges cannot
  // express it, since its steps never reach the backend. Replaces an armed
  // FailPurges (and FailPurges replaces this); FailPurges(0, 0, Ok())
  // clears either.
  void LosePurgeAnswers(int pass, int n, Status status);
  // The next `n` ListDevices reads complete with `status` without reaching
  // the backend (a store that cannot be read for a moment).
  void FailNextListDevices(int n, Status status);
  // PurgeDeleted steps failed by FailPurges or LosePurgeAnswers so far.
  int64_t PurgesFailed() const;
  // How many times each switch fired so far.
  int64_t Fired(FaultKind kind) const;

  // ---- Store ----
  void CreateUser(std::string username, std::string password_hash, int64_t now, Callback<UserRecord> done) override;
  void GetUserByName(std::string username, Callback<UserRecord> done) override;
  void GetUserById(UserId id, Callback<UserRecord> done) override;
  void CreateDevice(UserId user_id, std::string name, std::string platform, std::string token_hash,
                    std::string verified_hash, int64_t now, Callback<DeviceRecord> done) override;
  void GetAuthContext(std::string token_hash, Callback<AuthContext> done) override;
  void ListDevices(UserId user_id, Callback<std::vector<DeviceRecord>> done) override;
  void RevokeDevice(UserId user_id, DeviceId device_id, StatusCallback done) override;
  void SetCursor(DeviceId device_id, UserSeq user_seq, int64_t now, StatusCallback done) override;
  void OpenDirect(UserId a, UserId b, int64_t now, Callback<OpenResult> done) override;
  void GetConversation(ConversationId id, Callback<ConversationRecord> done) override;
  void AppendMessage(NewMessage msg, Callback<AppendResult> done) override;
  void UpdateReceipt(ReceiptUpdate update, Callback<ReceiptResult> done) override;
  void ChangeMessage(MessageChange change, Callback<ChangeResult> done) override;
  void SetDraft(UserId user_id, ConversationId conversation_id, std::string text, int64_t now,
                Callback<SocialResult> done) override;
  void History(ConversationId id, UserId viewer, Seq before, int limit,
               Callback<std::vector<MessageRecord>> done) override;
  void ReadStream(UserId user_id, UserSeq after, int limit, Callback<StreamPage> done) override;
  void GetHead(UserId user_id, Callback<UserSeq> done) override;
  void GetSnapshot(UserId user_id, int latest_per_conversation, Callback<Snapshot> done) override;
  void GetConversationStates(UserId user_id, std::vector<ConversationId> ids,
                             Callback<std::vector<ConversationState>> done) override;
  void SetProfile(UserId user_id, std::optional<std::string> display_name, std::optional<std::string> about,
                  int64_t now, Callback<SocialResult> done) override;
  void GetProfiles(UserId viewer, std::vector<UserId> ids, Callback<std::vector<ProfileRecord>> done) override;
  void AddContact(UserId owner, UserId contact, int64_t now, Callback<SocialResult> done) override;
  void RemoveContact(UserId owner, UserId contact, int64_t now, Callback<SocialResult> done) override;
  void ListContacts(UserId owner, Callback<std::vector<ContactRecord>> done) override;
  void Block(UserId owner, UserId target, int64_t now, Callback<SocialResult> done) override;
  void Unblock(UserId owner, UserId target, int64_t now, Callback<SocialResult> done) override;
  void ListBlocked(UserId owner, Callback<std::vector<ProfileRecord>> done) override;
  void SearchUsers(UserId searcher, std::string query, std::string after, int limit,
                   Callback<SearchPage> done) override;
  void ListConversations(UserId user_id, int64_t before_activity, ConversationId before_id, int limit,
                         int latest_per_conversation, Callback<ConversationPage> done) override;
  void ChangePassword(UserId user_id, std::string new_hash, DeviceId keep_device, int64_t now,
                      Callback<std::vector<DeviceId>> done) override;
  void BulkCreateUsers(std::vector<NewBulkUser> users, int64_t now,
                       Callback<std::vector<BulkUserResult>> done) override;
  void SetPresenceVisibility(UserId user_id, PresenceVisibility visibility, int64_t now,
                             Callback<SocialResult> done) override;
  void SetLastSeen(UserId user_id, int64_t last_seen, StatusCallback done) override;
  void GetPresence(UserId viewer, std::vector<UserId> ids, Callback<std::vector<PresenceRecord>> done) override;
  void GetMessageTimeline(ConversationId id, Seq seq, Callback<MessageTimeline> done) override;
  void SetUserDisabled(UserId user_id, bool disabled, bool revoke_devices, Callback<DisableResult> done) override;
  void EraseAccount(UserId user_id, int64_t now, Callback<EraseResult> done) override;
  void GetStoreSummary(Callback<StoreSummary> done) override;
  void GetSchemaStatus(Callback<SchemaStatus> done) override;
  void Backup(std::string path, Callback<BackupResult> done) override;
  // The export (admin API, checker) shows what the faults made: skip_dedup
  // copies under their original client id, dropped stream entries missing.
  void Export(ExportTable table, std::vector<int64_t> after, int limit, Callback<ExportPage> done) override;
  // Push (issue 11): forwarded as they are, no faults injected.
  void SetPushEndpoint(UserId user_id, DeviceId device_id, std::string provider, std::string token, int64_t now,
                       StatusCallback done) override;
  void RemovePushEndpoint(UserId user_id, DeviceId device_id, Callback<bool> done) override;
  void SetDisappearing(UserId user_id, ConversationId conversation_id, int64_t seconds, int64_t now,
                       Callback<SocialResult> done) override;
  void ExpireMessages(int64_t now, int max_messages, Callback<ExpireProgress> done) override;
  void PurgeDeleted(int64_t deleted_before, int max_messages, Callback<PurgeProgress> done) override;
  void TrimStreams(TrimRequest req, Callback<TrimProgress> done) override;
  void CompactMessages(CompactRequest req, Callback<CompactProgress> done) override;
  bool HasColdTier() const override { return inner_.HasColdTier(); }
  void SetMuted(UserId user_id, ConversationId conversation_id, bool muted, int64_t now,
                Callback<SocialResult> done) override;
  void SetPushPreviews(UserId user_id, bool previews, int64_t now, Callback<SocialResult> done) override;
  void GetPushSettings(UserId user_id, Callback<std::pair<bool, std::vector<ConversationId>>> done) override;
  void ListPushHealth(UserId user_id, Callback<std::vector<PushHealth>> done) override;
  void EnqueuePush(PushRequest req, Callback<int> done) override;
  void ClaimPushJobs(std::string node, int64_t now, int64_t lease_ms, int limit,
                     Callback<std::vector<PushJob>> done) override;
  void CompletePush(PushCompletion c, StatusCallback done) override;
  void GetPushQueueStats(int64_t now, Callback<PushQueueStats> done) override;
  void SearchMessages(MessageSearchQuery query, Callback<MessageSearchPage> done) override;
  void IndexSearch(int max_entries, Callback<SearchIndexProgress> done) override;
  void Flush(StatusCallback done) override;
  size_t AbandonQueuedWrites(const Status& why) override;
  StoreStats Stats() const override;

 private:
  // A write: fails at once if a failure is armed, else runs `op` with a
  // completion that honours HoldWrites.
  template <typename T, typename Op>
  void Write(Callback<T> done, Op op);
  template <typename T>
  Callback<T> Held(Callback<T> done);
  void StatusWrite(StatusCallback done, const std::function<void(StatusCallback)>& op);
  bool TakeFailure(Status* status);
  // True when this purge step fails (its status in `status`); `after_commit`
  // tells whether it runs on the backend first (LosePurgeAnswers).
  bool TakePurgeFailure(Status* status, bool* after_commit);
  // FailPurges and LosePurgeAnswers: `after_commit` picks the second.
  void ArmPurgeFailures(int pass, int n, Status status, bool after_commit);
  // stall_writes: true when `fail` was kept to be called later (with the
  // status the write ends with); counts writes when `count`.
  bool Stall(std::function<void(const Status&)> fail, bool count);
  const FaultSwitch* Switch(FaultKind kind) const;

  // Message-record rewriting on the read paths (skip_dedup marks, swaps).
  void FixMessage(MessageRecord* m) const;
  void FixPage(UserId user_id, StreamPage* page) const;
  // Applies drop_stream_entry / out_of_order bookkeeping to fresh positions.
  void NotePositions(const AppendResult& r, std::vector<StreamPosition>* kept);

  Store& inner_;
  const std::vector<FaultSwitch> switches_;

  mutable std::mutex mu_;  // guards everything below
  int fail_left_ = 0;
  Status fail_status_ = Status::Ok();
  int list_devices_fail_left_ = 0;
  Status list_devices_fail_status_ = Status::Ok();
  bool holding_ = false;
  int purge_pass_left_ = 0;  // FailPurges: steps still to let through first
  int purge_fail_left_ = 0;  // then steps to fail (kFailEveryPurge: all)
  Status purge_fail_status_ = Status::Ok();
  bool purge_fail_after_commit_ = false;  // LosePurgeAnswers: run the step, then fail its answer
  int64_t purges_failed_ = 0;
  std::deque<std::function<void()>> held_;
  int64_t appends_ = 0;            // AppendMessage calls
  int64_t recipient_entries_ = 0;  // message events appended to recipients' streams
  int64_t withheld_receipts_ = 0;  // UpdateReceipt results carrying a withheld list
  std::vector<int64_t> fired_ = std::vector<int64_t>(10, 0);
  int64_t writes_ = 0;  // write operations (stall_writes)
  bool stalling_ = false;
  std::deque<std::function<void(const Status&)>> stalled_;  // their completions
  int64_t snapshots_ = 0;  // hold_snapshots: GetSnapshot calls so far
  bool holding_snapshots_ = false;
  // Their answers by the order of their GetSnapshot calls: with several
  // readers, reads complete in any order, and the switch answers in the
  // order they were asked.
  std::map<int64_t, std::function<void()>> held_snapshots_;
  std::set<std::pair<UserId, UserSeq>> dropped_;
  int64_t receipts_ = 0;  // fail_receipt: UpdateReceipt calls so far
  std::set<std::pair<UserId, UserSeq>> unlisted_;  // omit_withheld: events read without their withheld list
  // out_of_order: (user, conversation, first user seq), waiting for its
  // partner; then pairs of user seqs whose messages are swapped on reads.
  struct Swap {
    UserId user_id;
    ConversationId conversation_id;
    UserSeq first;
    UserSeq second;  // 0 until the partner is appended
  };
  std::vector<Swap> swaps_;
};

}  // namespace parley::store
