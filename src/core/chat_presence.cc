// ChatService: presence requests (docs/protocol.md, "Presence"). The state
// machine itself (coalescing, per-subscriber rate) is PresenceTracker; this
// file connects it to connections, the store's visibility rules and last
// seen.
#include <spdlog/spdlog.h>

#include "core/chat_service.h"
#include "protocol/encode.h"

namespace parley::core {

using protocol::JsonWriter;

bool ChatService::NoteForeground(int64_t user_id, int64_t device_id, bool foreground) {
  if (foreground) {
    auto& devices = foreground_[user_id];
    bool first = devices.empty();
    devices[device_id]++;
    return first;
  }
  auto it = foreground_.find(user_id);
  if (it == foreground_.end()) return false;
  auto d = it->second.find(device_id);
  if (d != it->second.end() && --d->second <= 0) it->second.erase(d);
  if (!it->second.empty()) return false;
  foreground_.erase(it);
  return true;
}

void ChatService::SetForeground(const ClientPtr& c, bool counted) {
  if (c->user_id == 0 || c->counted_foreground == counted) return;
  c->counted_foreground = counted;
  if (NoteForeground(c->user_id, c->device_id, counted)) fabric_.SetLocalOnline(c->user_id, counted);
  if (counted) return presence_.ForegroundEnter(c->user_id);
  int64_t last_seen = presence_.ForegroundLeave(c->user_id);
  if (last_seen == 0) return;
  NoteLastSeen(c->user_id, last_seen);
}

// A reconnecting device (a flaky network, a reconnect storm) leaves and
// comes back many times a minute; each leave used to be a store write and a
// commit of its own. Now a user's changes within the flush interval make one.
void ChatService::NoteLastSeen(int64_t user_id, int64_t last_seen) {
  int64_t& pending = pending_last_seen_[user_id];
  pending = std::max(pending, last_seen);
  if (stopping_ || config_.presence.last_seen_flush_ms <= 0) return FlushLastSeen();
  if (last_seen_flush_due_) return;
  last_seen_flush_due_ = true;
  core_.PostAfter(config_.presence.last_seen_flush_ms, [this] { FlushLastSeen(); });
}

void ChatService::FlushLastSeen() {
  last_seen_flush_due_ = false;
  for (const auto& [user, last_seen] : pending_last_seen_) {
    last_seen_writes_.Inc();
    store_.SetLastSeen(user, last_seen, [user](Status s) {
      // A user deleted since they left has no last seen to keep.
      if (!s.ok() && s.code() != ErrorCode::kUnknownUser)
        spdlog::warn("event=last_seen_not_stored user_id={} error=\"{}\"", user, s.ToString());
    });
  }
  pending_last_seen_.clear();
}

// Before auth it only sets how the connection will count once authenticated
// (a device woken in the background connects without showing online).
void ChatService::DoSetAppState(const ClientPtr& c, Req req) {
  c->foreground = std::get<protocol::SetAppStateRequest>(req.body).foreground;
  SetForeground(c, c->foreground);
  Respond(c, req, nullptr);
}

void ChatService::DoSetPrivacy(const ClientPtr& c, Req req) {
  auto visibility = static_cast<store::PresenceVisibility>(std::get<protocol::SetPrivacyRequest>(req.body).presence);
  store_.SetPresenceVisibility(
      c->user_id, visibility, clock_.NowMillis(),
      OnCore<store::SocialResult>([this, c, req, visibility](Result<store::SocialResult> r) {
        if (!r) return Fail(c, req, r.error());
        Respond(c, req, [&](JsonWriter& w) { w.Field("presence", protocol::PresenceVisibilityName(visibility)); });
        if (!r->changed) return;
        store::StreamEvent e;
        e.kind = store::EventKind::kPrivacy;
        e.created_at = clock_.NowMillis();
        e.presence_visibility = visibility;
        PublishEvents(std::move(e), r->positions);
        UserChanged({fabric::Fabric::UserChange::Kind::kVisibility, c->user_id, 0});
      }));
}

// A connection's later subscribe_presence replaces its earlier one, but their
// reads complete in any order: the one issued last is installed, and an
// earlier one whose read lands after it is answered without being installed.
// A visibility change that completed while the read was in flight found no
// watcher to re-check (RecheckPresence notes it in visibility_changes_):
// what the read said of those users is read again once it is installed.
void ChatService::DoSubscribePresence(const ClientPtr& c, Req req) {
  std::vector<int64_t> ids = std::get<protocol::SubscribePresenceRequest>(req.body).user_ids;
  const uint64_t as_of = ++presence_reads_;
  const ChangeNotes::Read noted_as_of = visibility_changes_.Begin();
  store_.GetPresence(
      c->user_id, ids,
      OnCore<std::vector<store::PresenceRecord>>([this, c, req, as_of,
                                                  noted_as_of](Result<std::vector<store::PresenceRecord>> r) {
        std::vector<int64_t> changed_since;  // users whose visibility changed after this read was issued
        if (r && !c->closed && as_of > c->presence_as_of) {
          for (const auto& rec : *r)
            if (visibility_changes_.ChangedSince(noted_as_of, rec.user_id)) changed_since.push_back(rec.user_id);
        }
        visibility_changes_.End(noted_as_of);
        if (!r) return Fail(c, req, r.error());
        if (c->closed) return;
        std::vector<int64_t> users;
        std::vector<bool> visible;
        std::vector<PresenceView> shown;
        for (const auto& rec : *r) {
          users.push_back(rec.user_id);
          visible.push_back(rec.visible);
          shown.push_back(presence_.View(rec.user_id, rec.visible, rec.last_seen));
        }
        if (as_of > c->presence_as_of) {
          c->presence_as_of = as_of;
          presence_.Subscribe(c->id, users, visible, shown, as_of);
          if (users.empty()) presence_subscribers_.erase(c->id);
          else presence_subscribers_[c->id] = c;
        }
        Respond(c, req, [&](JsonWriter& w) {
          w.Key("presence").BeginArray();
          for (size_t i = 0; i < users.size(); ++i)
            protocol::WritePresence(w, users[i], shown[i].online, shown[i].last_seen);
          w.EndArray();
        });
        if (!changed_since.empty()) RereadVisibility(c, std::move(changed_since));
      }));
}

// Two changes in a row (a privacy flip, block then unblock) each re-read the
// visibility of every watcher; the tracker keeps the answer of the read
// issued last (as_of), whichever lands last.
void ChatService::RecheckPresence(int64_t watched, int64_t viewer) {
  visibility_changes_.Note(watched);
  for (PresenceTracker::SubscriberId s : presence_.Watchers(watched)) {
    auto it = presence_subscribers_.find(s);
    if (it == presence_subscribers_.end()) continue;
    if (viewer != 0 && it->second->user_id != viewer) continue;
    RereadVisibility(it->second, {watched});
  }
}

// Every subscription, as it is when its batch is issued: one installed
// after the walk started read after the change, or reads again
// (visibility_changes_, noted as anyone's change).
void ChatService::RecheckAllPresence() {
  visibility_changes_.Note(0);
  if (presence_walk_) {
    presence_walk_->again = true;
    return;
  }
  auto walk = std::make_shared<PacedWalk>();
  for (const auto& [id, client] : presence_subscribers_) walk->keys.push_back(static_cast<int64_t>(id));
  walk->visit = [this](int64_t key, std::function<void()> done) {
    const auto id = static_cast<uint64_t>(key);
    auto it = presence_subscribers_.find(id);
    if (it == presence_subscribers_.end()) return done();
    RereadVisibility(it->second, presence_.Watched(id), std::move(done));
  };
  walk->finished = [this](bool again) {
    presence_walk_.reset();
    if (again) RecheckAllPresence();
  };
  presence_walk_ = walk;
  WalkPaced(std::move(walk));
}

void ChatService::RereadVisibility(const ClientPtr& client, std::vector<int64_t> users, std::function<void()> done) {
  if (users.empty()) {
    if (done) done();
    return;
  }
  const uint64_t as_of = ++presence_reads_;
  store_.GetPresence(client->user_id, std::move(users),
                     OnCore<std::vector<store::PresenceRecord>>(
                         [this, s = client->id, as_of, done = std::move(done)](
                             Result<std::vector<store::PresenceRecord>> r) {
                           if (r) {
                             for (const auto& rec : *r) presence_.SetVisible(s, rec.user_id, rec.visible, as_of);
                           }
                           if (done) done();
                         }));
}

}  // namespace parley::core
