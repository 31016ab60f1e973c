// Retention (issue 12): the disappearing-messages timer, and the two
// background steps that make expired and deleted messages leave the store.
//
// Expiry. A message's expiry is fixed when it is stored (store.h
// "Retention"). Every expiry_interval_ms this node asks the store to
// tombstone up to kExpiryBatch expired messages (one transaction of its own,
// never shared with sends, so a send waits at most one bounded step);
// when a step was full the next one follows at once. Each expired message
// is a delete for everyone made by the store itself, so every member it is
// visible to gets a kDelete event, published here like a sender's delete:
// clients need nothing new to drop it, and the event says
// "reason":"expired" (encode.cc). A device offline at expiry reads the same
// event and the tombstone from sync, history and snapshots; the text is
// gone from the store before any of them can return it.
//
// Purge. A tombstone still holds its edit rows and search rows until the
// purge removes them, purge_delay_ms after the delete, kPurgeBatch at a
// time. The messages row itself stays (a small tombstone): its seq keeps the
// log gapless and its deduplication key keeps a retry's original ack.
//
// Stream trimming. Each user's event stream is a delivery log, not history
// (history is the conversations' message logs): an entry only serves
// devices that have not applied it yet. The trim job walks the users in id
// order, kTrimUsersPerStep per step and at most kTrimBatch entries removed
// per step (one store transaction of its own, like the purge), removing
// entries older than the horizon or beyond the per-user cap unless a device
// seen within the grace still needs them, and raising the user's floor.
// After a pass over every user it pauses stream_trim_interval_ms. A sync
// below the floor fails `cursor_too_old` (the store refuses it, in the
// snapshot it reads the page from), and the device takes a snapshot.
// Nothing is published: no device is told about a trim, since none that
// is still catching up within the grace loses anything.
//
// In a cluster every node runs every step; the store hands each row to one
// node (PostgreSQL: FOR UPDATE SKIP LOCKED).
//
// Compaction (the cold tier, store.h "Cold tier"). Every
// compact_interval_ms this node asks the store to compact up to
// kCompactBatch messages older than cold_after_ms into compressed blocks,
// in a transaction of its own like the two steps above; a full step is
// followed at once by the next. Nothing is published: reads page the texts
// back, so no client sees a difference. Both backends have a cold tier; a
// store without one (a test double, Store::HasColdTier) never starts the step.

#include <limits>

#include <spdlog/spdlog.h>

#include "core/chat_service.h"
#include "protocol/encode.h"
#include "protocol/limits.h"
#include "store/change_events.h"

namespace parley::core {

using protocol::JsonWriter;

void ChatService::DoSetDisappearing(const ClientPtr& c, Req req) {
  auto r = std::get<protocol::SetDisappearingRequest>(req.body);
  const int64_t now = clock_.NowMillis();
  store_.SetDisappearing(c->user_id, r.conversation_id, r.seconds, now,
                         OnCore<store::SocialResult>([this, c, req, r, now](Result<store::SocialResult> res) {
                           if (!res) {
                             // Do not tell a non-member whether the conversation exists.
                             if (res.error().code() == ErrorCode::kUnknownConversation)
                               return Fail(c, req,
                                           Status(ErrorCode::kNotMember, "you are not a member of this conversation"));
                             return Fail(c, req, res.error());
                           }
                           Respond(c, req, [&](JsonWriter& w) {
                             w.Field("conversation_id", r.conversation_id)
                                 .Field("seconds", r.seconds)
                                 .Field("changed", res->changed);
                           });
                           if (!res->changed) return;
                           store::StreamEvent e;
                           e.kind = store::EventKind::kDisappearing;
                           e.conversation_id = r.conversation_id;
                           e.created_at = now;
                           e.receipt_user_id = c->user_id;
                           e.disappearing_s = r.seconds;
                           PublishEvents(std::move(e), res->positions);
                         }));
}

void ChatService::StartRetention() {
  core_.Post([this] {
    ExpireStep(/*repeat=*/true, nullptr);
    PurgeStep(/*repeat=*/true, nullptr);
    if (config_.retention.stream_retention_ms > 0 || config_.retention.stream_max_entries > 0)
      TrimStep(/*repeat=*/true, nullptr);
    CompactStep(/*repeat=*/true, nullptr);
  });
}

void ChatService::RunTrimForTest(std::function<void(int64_t, bool)> done) {
  core_.Post([this, done = std::move(done)] { TrimStep(/*repeat=*/false, done); });
}

void ChatService::RunCompactionForTest(std::function<void(int)> done) {
  core_.Post([this, done = std::move(done)] { CompactStep(/*repeat=*/false, done); });
}

void ChatService::RunExpiryForTest(std::function<void(int)> done) {
  core_.Post([this, done = std::move(done)] { ExpireStep(/*repeat=*/false, done); });
}

void ChatService::RunPurgeForTest(std::function<void(int)> done) {
  core_.Post([this, done = std::move(done)] { PurgeStep(/*repeat=*/false, done); });
}

void ChatService::StepFailed(Counter& failures, std::string_view event, const Status& error) {
  failures.Inc();
  // A step cut short by the shutdown is not a failure worth a warning.
  if (!stopping_ && error.code() != ErrorCode::kShuttingDown)
    spdlog::warn("event={} error=\"{}\"", event, error.ToString());
}

void ChatService::ExpireStep(bool repeat, std::function<void(int)> done) {
  if (stopping_) return;
  store_.ExpireMessages(
      clock_.NowMillis(), RetentionConfig::kExpiryBatch,
      OnCore<store::ExpireProgress>([this, repeat, done](Result<store::ExpireProgress> r) {
        bool more = false;
        int count = -1;
        if (!r) {
          StepFailed(expiry_failures_, "expiry_failed", r.error());
        } else {
          count = static_cast<int>(r->expired.size());
          expired_messages_.Inc(count);
          more = r->more;
          for (const store::ChangeResult& x : r->expired) PublishChange(protocol::ChangeKind::kDelete, x);
          if (count > 0) spdlog::debug("event=messages_expired count={} more={}", count, more);
        }
        if (done) done(count);
        if (!repeat || stopping_) return;
        core_.PostAfter(more ? 0 : config_.retention.expiry_interval_ms,
                        [this] { ExpireStep(/*repeat=*/true, nullptr); });
      }));
}

void ChatService::PurgeStep(bool repeat, std::function<void(int)> done) {
  if (stopping_) return;
  store_.PurgeDeleted(
      clock_.NowMillis() - config_.retention.purge_delay_ms, RetentionConfig::kPurgeBatch,
      OnCore<store::PurgeProgress>([this, repeat, done](Result<store::PurgeProgress> r) {
        bool full = false;
        int count = -1;
        if (!r) {
          StepFailed(purge_failures_, "purge_failed", r.error());
        } else {
          count = r->purged;
          CountPurge(*r);
          purge_backlog_.Set(r->backlog);
          full = r->purged >= RetentionConfig::kPurgeBatch;
        }
        if (done) done(count);
        if (!repeat || stopping_) return;
        core_.PostAfter(full ? 0 : config_.retention.purge_interval_ms, [this] { PurgeStep(/*repeat=*/true, nullptr); });
      }));
}

void ChatService::TrimStep(bool repeat, std::function<void(int64_t, bool)> done) {
  if (stopping_) return;
  const RetentionConfig& rc = config_.retention;
  const int64_t now = clock_.NowMillis();
  store::TrimRequest req;
  req.after_user = trim_after_user_;
  req.max_users = RetentionConfig::kTrimUsersPerStep;
  req.max_entries = RetentionConfig::kTrimBatch;
  req.older_than = rc.stream_retention_ms > 0 ? now - rc.stream_retention_ms : 0;
  req.max_entries_per_user = rc.stream_max_entries;
  req.protect_seen_since =
      rc.stream_device_grace_ms > 0 ? now - rc.stream_device_grace_ms : std::numeric_limits<int64_t>::max();
  store_.TrimStreams(req, OnCore<store::TrimProgress>([this, repeat, done](Result<store::TrimProgress> r) {
    int64_t removed = -1;
    bool pass_done = false;
    bool more = false;
    if (!r) {
      StepFailed(stream_trim_failures_, "stream_trim_failed", r.error());
    } else {
      removed = r->trimmed;
      stream_trimmed_.Inc(r->trimmed);
      stream_trim_users_.Inc(r->users_trimmed);
      trim_after_user_ = r->next_after_user;
      more = r->more;
      pass_done = !more && r->next_after_user == 0;
      if (pass_done) stream_trim_passes_.Inc();
      if (removed > 0)
        spdlog::debug("event=streams_trimmed entries={} users={} more={}", removed, r->users_trimmed, more);
    }
    if (done) done(removed, pass_done);
    if (!repeat || stopping_) return;
    // Within a pass, full step or not, a short pause: a backlog (a large
    // store trimmed for the first time) drains at a bounded rate, leaving
    // the writer to sends. After a pass (or a failure): the interval.
    int64_t pause = RetentionConfig::kTrimStepPauseMs;
    if (pass_done || removed < 0) pause = config_.retention.stream_trim_interval_ms;
    core_.PostAfter(pause, [this] { TrimStep(/*repeat=*/true, nullptr); });
  }));
}

void ChatService::CompactStep(bool repeat, std::function<void(int)> done) {
  if (stopping_) return;
  const int64_t cold_after = config_.retention.cold_after_ms;
  if (cold_after <= 0 || !store_.HasColdTier()) {
    if (done) done(0);
    return;
  }
  store::CompactRequest req;
  req.stored_before = clock_.NowMillis() - cold_after;
  req.due_before = req.stored_before - cold_after / RetentionConfig::kColdGatherDivisor;
  req.max_messages = RetentionConfig::kCompactBatch;
  store_.CompactMessages(req, OnCore<store::CompactProgress>([this, repeat, done](Result<store::CompactProgress> r) {
    bool more = false;
    int count = -1;
    if (!r) {
      StepFailed(cold_failures_, "compaction_failed", r.error());
    } else {
      count = r->messages;
      cold_messages_.Inc(r->messages);
      cold_edits_.Inc(r->edits);
      cold_blocks_.Inc(r->blocks);
      cold_bytes_before_.Inc(r->raw_bytes);
      cold_bytes_after_.Inc(r->compressed_bytes);
      more = r->more;
      if (count > 0)
        spdlog::debug("event=messages_compacted count={} edits={} blocks={} bytes_before={} bytes_after={} more={}",
                      count, r->edits, r->blocks, r->raw_bytes, r->compressed_bytes, more);
    }
    if (done) done(count);
    if (!repeat || stopping_) return;
    core_.PostAfter(more ? 0 : config_.retention.compact_interval_ms, [this] { CompactStep(/*repeat=*/true, nullptr); });
  }));
}

void CountPurge(const store::PurgeProgress& p) {
  static Counter& messages = Metrics::Default().GetCounter("parley_purge_messages_total",
                                                           "Tombstones whose remaining data this node's purge removed");
  static Counter& edits = Metrics::Default().GetCounter("parley_purge_edit_rows_total",
                                                        "Edit-history rows (message_edits) removed by the purge");
  static Counter& search = Metrics::Default().GetCounter("parley_purge_search_rows_total",
                                                         "Message-search index rows removed by the purge");
  static Counter& cold = Metrics::Default().GetCounter(
      "parley_purge_cold_texts_total", "Texts of purged tombstones removed from cold blocks by the purge");
  messages.Inc(p.purged);
  edits.Inc(p.edits_removed);
  search.Inc(p.search_removed);
  cold.Inc(p.cold_removed);
}

}  // namespace parley::core
