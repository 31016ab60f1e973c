// Admin API, compliance erase (issue 12 item 7; docs/operations.md "User
// erase"):
//
//   POST /admin/v1/users/{username}/erase
//
// 1. The account (Store::EraseAccount, one transaction): devices revoked and
//    their connections closed, contacts, blocks, drafts, push settings, the
//    user's own stream and name index gone, the profile blank, the account
//    disabled and renamed kErasedUsernamePrefix + id.
// 2. The messages: every message the user sent is deleted for everyone
//    (Store::ChangeMessage, whatever the delete window), page by page, so
//    the other members' devices blank them as they would any deleted
//    message, and message search forgets them. Each page's deletes are
//    independent writes that the store commits in shared batches between
//    other users' writes, so an erase never holds delivery up for long.
// 3. The purge, at once (Store::PurgeDeleted up to the time of the last
//    delete, kErasePurgeBatch tombstones per step, until a step finds no
//    more): a delete empties the message's row, but a compacted message's
//    text stays in its cold block, and its edit rows and search rows stay,
//    until the purge; the retention job would only purge them
//    --purge-delay-s later (an hour by default), too late for an erasure.
//    The steps also purge other users' tombstones deleted before then,
//    which the retention job would purge later: that is harmless (their
//    delete already hid their texts from every read; the delay only spreads
//    the purge's work over time), and about as many as the deletes of the
//    last --purge-delay-s. Each step is one store transaction of its own,
//    like the retention job's.
// 4. The check: the same reads again must find no live device, contact,
//    block or message body of the user left, and the purge's last step no
//    tombstone due by then left unpurged (so no text of the user is left in
//    a cold block). The answer says what was removed and `"verified": true`
//    only if nothing is left.
//
// A failed step answers its error and stops the erase: it never goes on to
// the check, so it never answers "verified" (a purge step that failed left
// texts of the user in cold blocks, which no read shows). Once the account
// part is done the old name is free and the account answers only to its
// erased name, so the error (EraseFailed) also names the step, the user's id
// and that name, and "verified": false. The erase can be run again on the
// erased name and finishes what is left (its messages step finds only
// tombstones, its purge takes whatever the failed run left; each write of
// a step is a transaction of its own, so a failed one left nothing half
// done).
//
// Kept, by policy: the account's id and its erased name, conversations and
// memberships (the other members keep their conversation), every seq and
// client id (a tombstone per message, so no gap and dedup keys survive),
// watermarks (the other members' ticks), and what other users wrote.
// Peers' devices that are online learn of the deletes when they next sync
// (their next heartbeat at the latest), not live.
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <string>

#include "admin/admin_api.h"
#include "admin/admin_http.h"
#include "core/chat_service.h"
#include "protocol/message_edits.h"

namespace parley::admin {

using nlohmann::json;

namespace {

// Conversations and messages read per store call while erasing.
constexpr int kEraseConversationPage = 200;
constexpr int kEraseMessagePage = 500;
// Tombstones per PurgeDeleted step of the erase's purge: the retention job's
// batch, so one step holds the store no longer than one of the background
// purge's.
constexpr int kErasePurgeBatch = core::RetentionConfig::kPurgeBatch;

}  // namespace

struct AdminApi::UserErase {
  store::UserId user_id = 0;
  store::EraseResult account;
  std::vector<store::ConversationId> conversations;
  size_t next_conversation = 0;
  Respond respond;
  std::mutex mu;  // guards what the page's concurrent deletes update
  int64_t messages_deleted = 0;
  int64_t last_delete_at = 0;  // the latest `now` of the deletes
  int pending = 0;
  Status first_error;
  // The purge (no lock: its steps run one after the other).
  store::PurgeProgress purged;  // summed over the steps; backlog: the last step's
  // Left after the erase (the check).
  int64_t left_bodies = 0;
};

// Answers the error of the erase's `step` (after the account part: the
// user's name is its erased one already) and stops the erase.
void AdminApi::EraseFailed(std::shared_ptr<UserErase> x, const char* step, const Status& error) {
  const store::EraseResult& a = x->account;
  spdlog::warn("event=admin_user_erase_failed user_id={} step={} error=\"{}\"", x->user_id, step, error.ToString());
  // The error's own HTTP status and code, with what a re-run needs.
  const int status = ErrorResponse(error).status;
  json body{{"code", ErrorCodeName(error.code())},
            {"message", "the erase stopped at its " + std::string(step) + " step (" + error.message() +
                            "); nothing is verified: run it again on " + a.erased_username},
            {"user_id", x->user_id},
            {"username", a.erased_username},
            {"erased_username", a.username},
            {"failed_step", step},
            {"verified", false}};
  x->respond(JsonResponse(status, body));
}

void AdminApi::OpsEraseUser(const std::string& username, Respond respond) {
  store_.GetUserByName(username, [this, respond](Result<store::UserRecord> u) {
    if (!u) return respond(ErrorResponse(u.error()));
    auto x = std::make_shared<UserErase>();
    x->user_id = u->id;
    x->respond = respond;
    store_.EraseAccount(x->user_id, clock_.NowMillis(), [this, x](Result<store::EraseResult> r) {
      if (!r) return x->respond(ErrorResponse(r.error()));
      x->account = std::move(*r);
      if (close_devices_ && !x->account.revoked.empty())
        close_devices_(x->user_id, x->account.revoked, "account erased", false);
      if (user_erased_) user_erased_(x->user_id);
      EraseListConversations(x, 0, 0);
    });
  });
}

void AdminApi::EraseListConversations(std::shared_ptr<UserErase> x, int64_t before_activity, int64_t before_id) {
  store_.ListConversations(x->user_id, before_activity, before_id, kEraseConversationPage, 0,
                           [this, x](Result<store::ConversationPage> page) {
                             if (!page) return EraseFailed(x, "conversations", page.error());
                             for (const auto& s : page->conversations) x->conversations.push_back(s.conversation.id);
                             if (page->has_more) return EraseListConversations(x, page->next_activity, page->next_id);
                             EraseMessages(x, 0);
                           });
}

// Deletes the user's live messages in one page of conversation
// x->conversations[x->next_conversation] below `before` (0: from the
// newest), then goes on with the next page or conversation; then checks.
void AdminApi::EraseMessages(std::shared_ptr<UserErase> x, store::Seq before) {
  if (x->next_conversation == x->conversations.size()) {
    // Due: every tombstone the deletes made (and any the user's messages had
    // already). max(): a clock stepped back must not leave one out.
    return ErasePurge(x, std::max(clock_.NowMillis(), x->last_delete_at));
  }
  const store::ConversationId id = x->conversations[x->next_conversation];
  // Viewer 0: every message, also those the user deleted for themselves.
  store_.History(id, 0, before, kEraseMessagePage, [this, x, id](Result<std::vector<store::MessageRecord>> h) {
    if (!h) return EraseFailed(x, "messages", h.error());
    const bool more = static_cast<int>(h->size()) == kEraseMessagePage && h->front().seq > 1;
    const store::Seq next = more ? h->front().seq : 0;
    auto after_page = [this, x, next] {
      if (!x->first_error.ok()) return EraseFailed(x, "messages", x->first_error);
      if (next == 0) ++x->next_conversation;
      EraseMessages(x, next);
    };
    std::vector<store::MessageChange> deletes;
    for (const auto& m : *h) {
      if (m.sender_id != x->user_id || m.deleted_at != 0) continue;
      store::MessageChange c;
      c.kind = static_cast<int>(protocol::ChangeKind::kDelete);
      c.conversation_id = id;
      c.seq = m.seq;
      c.user_id = x->user_id;
      c.device_id = m.sender_device_id;
      c.now = clock_.NowMillis();
      c.delete_window_ms = std::numeric_limits<int64_t>::max();  // an erase is not bound by the window
      x->last_delete_at = std::max(x->last_delete_at, c.now);
      deletes.push_back(std::move(c));
    }
    if (deletes.empty()) return after_page();
    x->pending = static_cast<int>(deletes.size());
    for (auto& c : deletes) {
      store_.ChangeMessage(std::move(c), [x, after_page](Result<store::ChangeResult> r) {
        bool last = false;
        {
          std::lock_guard lock(x->mu);
          if (!r && x->first_error.ok()) x->first_error = r.error();
          if (r && !r->duplicate) ++x->messages_deleted;
          last = --x->pending == 0;
        }
        if (last) after_page();
      });
    }
  });
}

// One purge step of every tombstone deleted at or before `now`; the next
// follows while a step was full and some are left; then checks.
void AdminApi::ErasePurge(std::shared_ptr<UserErase> x, int64_t now) {
  store_.PurgeDeleted(now, kErasePurgeBatch, [this, x, now](Result<store::PurgeProgress> r) {
    if (!r) return EraseFailed(x, "purge", r.error());
    core::CountPurge(*r);
    x->purged.purged += r->purged;
    x->purged.edits_removed += r->edits_removed;
    x->purged.search_removed += r->search_removed;
    x->purged.cold_removed += r->cold_removed;
    x->purged.backlog = r->backlog;
    if (r->purged >= kErasePurgeBatch && r->backlog > 0) return ErasePurge(x, now);
    EraseCheck(x, 0, 0);
  });
}

// The check: reads the user's devices, contacts, blocks and every message
// again; anything left of the user makes "verified" false, and so does a
// tombstone the purge left (on PostgreSQL: one another node's purge held at
// that moment; a re-run takes it).
void AdminApi::EraseCheck(std::shared_ptr<UserErase> x, size_t conversation, store::Seq before) {
  if (conversation < x->conversations.size()) {
    const store::ConversationId id = x->conversations[conversation];
    store_.History(id, 0, before, kEraseMessagePage,
                   [this, x, conversation](Result<std::vector<store::MessageRecord>> h) {
                     if (!h) return EraseFailed(x, "check", h.error());
                     for (const auto& m : *h) {
                       if (m.sender_id == x->user_id && (m.deleted_at == 0 || !m.body.empty())) ++x->left_bodies;
                     }
                     const bool more = static_cast<int>(h->size()) == kEraseMessagePage && h->front().seq > 1;
                     if (more) return EraseCheck(x, conversation, h->front().seq);
                     EraseCheck(x, conversation + 1, 0);
                   });
    return;
  }
  store_.ListDevices(x->user_id, [this, x](Result<std::vector<store::DeviceRecord>> d) {
    if (!d) return EraseFailed(x, "check", d.error());
    const size_t devices = d->size();
    store_.ListContacts(x->user_id, [this, x, devices](Result<std::vector<store::ContactRecord>> c) {
      if (!c) return EraseFailed(x, "check", c.error());
      const size_t contacts = c->size();
      store_.ListBlocked(x->user_id, [this, x, devices, contacts](Result<std::vector<store::ProfileRecord>> b) {
        if (!b) return EraseFailed(x, "check", b.error());
        const store::EraseResult& a = x->account;
        const store::PurgeProgress& p = x->purged;
        json left{{"live_devices", devices},
                  {"contacts", contacts},
                  {"blocked", b->size()},
                  {"message_bodies", x->left_bodies},
                  {"tombstones_unpurged", p.backlog}};
        const bool verified =
            devices == 0 && contacts == 0 && b->empty() && x->left_bodies == 0 && p.backlog == 0;
        spdlog::info(
            "event=admin_user_erased user_id={} messages_deleted={} tombstones_purged={} cold_texts_removed={} "
            "verified={}",
            x->user_id, x->messages_deleted, p.purged, p.cold_removed, verified);
        x->respond(JsonResponse(200, json{{"user_id", x->user_id},
                                          {"username", a.erased_username},
                                          {"erased_username", a.username},
                                          {"removed",
                                           {{"devices_revoked", a.revoked.size()},
                                            {"devices_anonymised", a.devices},
                                            {"contacts", a.contacts},
                                            {"blocks", a.blocks},
                                            {"drafts", a.drafts},
                                            {"stream_events", a.stream_events},
                                            {"messages_deleted", x->messages_deleted},
                                            {"tombstones_purged", p.purged},
                                            {"cold_texts_removed", p.cold_removed},
                                            {"edit_rows_removed", p.edits_removed},
                                            {"search_rows_removed", p.search_removed}}},
                                          {"left", std::move(left)},
                                          {"verified", verified}}));
      });
    });
  });
}

}  // namespace parley::admin
