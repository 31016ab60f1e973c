#include "core/presence.h"

#include <algorithm>
#include <utility>

namespace parley::core {

PresenceTracker::PresenceTracker(Executor& core, const Clock& clock, PresenceConfig config, Deliver deliver)
    : core_(core), clock_(clock), config_(config), deliver_(std::move(deliver)) {}

void PresenceTracker::ForegroundEnter(int64_t user) {
  UserState& st = users_[user];
  if (++st.foreground != 1) return;
  ++st.offline_generation;  // back inside the window: the pending offline is dropped
  if (st.announced_online) return;
  st.announced_online = true;
  Notify(user);
}

int64_t PresenceTracker::ForegroundLeave(int64_t user) {
  auto it = users_.find(user);
  if (it == users_.end() || it->second.foreground == 0) return 0;
  UserState& st = it->second;
  if (--st.foreground != 0) return 0;
  st.last_seen = clock_.NowMillis();
  uint64_t generation = ++st.offline_generation;
  core_.PostAfter(config_.coalesce_ms, [this, user, generation] {
    auto found = users_.find(user);
    if (found == users_.end()) return;
    UserState& s = found->second;
    if (s.offline_generation != generation || s.foreground != 0 || !s.announced_online) return;
    s.announced_online = false;
    Notify(user);
    MaybeForget(user);
  });
  return st.last_seen;
}

PresenceView PresenceTracker::View(int64_t user, bool visible, int64_t stored_last_seen) {
  if (!visible) return {};
  auto it = users_.find(user);
  if (it == users_.end()) return PresenceView{false, stored_last_seen};
  const UserState& st = it->second;
  if (st.announced_online) return PresenceView{true, 0};
  return PresenceView{false, std::max(st.last_seen, stored_last_seen)};
}

void PresenceTracker::Subscribe(SubscriberId subscriber, const std::vector<int64_t>& users,
                                const std::vector<bool>& visible, const std::vector<PresenceView>& shown,
                                uint64_t as_of) {
  Unsubscribe(subscriber);
  if (users.empty()) return;
  auto& watches = subscriptions_[subscriber];
  for (size_t i = 0; i < users.size(); ++i) {
    Watch& w = watches[users[i]];
    w.visible = visible[i];
    w.visible_as_of = as_of;
    w.sent = shown[i];
    UserState& st = users_[users[i]];
    if (shown[i].last_seen > st.last_seen) st.last_seen = shown[i].last_seen;
    st.watchers.insert(subscriber);
  }
}

void PresenceTracker::Unsubscribe(SubscriberId subscriber) {
  auto it = subscriptions_.find(subscriber);
  if (it == subscriptions_.end()) return;
  for (const auto& [user, watch] : it->second) {
    auto u = users_.find(user);
    if (u == users_.end()) continue;
    u->second.watchers.erase(subscriber);
    MaybeForget(user);
  }
  subscriptions_.erase(it);  // a pending flush finds nothing and stops
}

void PresenceTracker::SetVisible(SubscriberId subscriber, int64_t user, bool visible, uint64_t as_of) {
  auto s = subscriptions_.find(subscriber);
  if (s == subscriptions_.end()) return;
  auto w = s->second.find(user);
  if (w == s->second.end() || as_of <= w->second.visible_as_of) return;
  w->second.visible_as_of = as_of;
  if (w->second.visible == visible) return;
  w->second.visible = visible;
  Offer(subscriber, user);
}

std::vector<PresenceTracker::SubscriberId> PresenceTracker::Watchers(int64_t user) const {
  auto it = users_.find(user);
  if (it == users_.end()) return {};
  return {it->second.watchers.begin(), it->second.watchers.end()};
}

std::vector<int64_t> PresenceTracker::Watched(SubscriberId subscriber) const {
  std::vector<int64_t> users;
  auto s = subscriptions_.find(subscriber);
  if (s == subscriptions_.end()) return users;
  for (const auto& [user, watch] : s->second) users.push_back(user);
  return users;
}

void PresenceTracker::Notify(int64_t user) {
  for (SubscriberId s : Watchers(user)) Offer(s, user);
}

// Sends the subscriber what it should now see of `user`, unless it already
// has that, or it got an update less than min_update_interval_ms ago (then a
// flush is scheduled for the end of the interval, which re-offers).
void PresenceTracker::Offer(SubscriberId subscriber, int64_t user) {
  auto s = subscriptions_.find(subscriber);
  if (s == subscriptions_.end()) return;
  auto w = s->second.find(user);
  if (w == s->second.end()) return;
  Watch& watch = w->second;
  if (watch.flush_pending) return;
  PresenceView now_view = View(user, watch.visible);
  if (now_view == watch.sent) return;
  int64_t now = clock_.NowMillis();
  int64_t wait = watch.sent_at == 0 ? 0 : watch.sent_at + config_.min_update_interval_ms - now;
  if (wait > 0) {
    watch.flush_pending = true;
    core_.PostAfter(wait, [this, subscriber, user] {
      auto sub = subscriptions_.find(subscriber);
      if (sub == subscriptions_.end()) return;
      auto found = sub->second.find(user);
      if (found == sub->second.end()) return;
      found->second.flush_pending = false;
      Offer(subscriber, user);
    });
    return;
  }
  watch.sent = now_view;
  watch.sent_at = now;
  deliver_(subscriber, user, now_view);
}

// Drops the state of a user nobody watches and who is offline for good: the
// store keeps their last seen.
void PresenceTracker::MaybeForget(int64_t user) {
  auto it = users_.find(user);
  if (it == users_.end()) return;
  const UserState& st = it->second;
  if (st.foreground == 0 && !st.announced_online && st.watchers.empty()) users_.erase(it);
}

}  // namespace parley::core
