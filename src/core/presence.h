// PresenceTracker: who is online, as subscribers are told it.
//
// A user is online while at least one of their devices is connected in the
// foreground. Going offline is announced only after `coalesce_ms` without a
// foreground device, so a flap shorter than that (a reconnect, a tab switch)
// is never broadcast; coming back inside that window cancels the pending
// offline and nothing is sent at all.
//
// Subscribers (one per connection that sent `subscribe_presence`) watch a set
// of users. Each (subscriber, watched user) pair gets at most one update per
// `min_update_interval_ms`: a change inside the interval is held and, when
// the interval ends, the then-current state is sent if it still differs from
// what the subscriber last got. A watched user the subscriber may not see
// (ChatService decides, from the store's visibility rules) always reads as
// offline with no last seen.
//
// No storage and no sockets here: ChatService persists last seen and turns
// `Deliver` calls into frames. Threading: every method runs on the core
// executor, and so do the timers it posts.
#pragma once

#include <cstdint>
#include <functional>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "common/clock.h"
#include "common/executor.h"

namespace parley::core {

struct PresenceConfig {
  // An offline period shorter than this is not broadcast (--presence-coalesce-ms).
  int64_t coalesce_ms = 5'000;
  // Per watched user per subscriber (--presence-min-interval-ms).
  int64_t min_update_interval_ms = 2'000;
  // A user's last seen (stored when their last foreground connection here
  // leaves) is written to the store at most this long after it changes, for
  // every user changed meanwhile at once, and at a graceful shutdown
  // (--last-seen-flush-ms; 0: at once). Viewers on this node read the
  // in-memory time meanwhile; a crash loses at most this much of it.
  int64_t last_seen_flush_ms = 1'000;
};

// What one subscriber is told about one user.
struct PresenceView {
  bool online = false;
  int64_t last_seen = 0;  // 0: unknown or not visible; never set while online
  bool operator==(const PresenceView&) const = default;
};

class PresenceTracker {
 public:
  using SubscriberId = uint64_t;
  // Sends one update about `user` to `subscriber`.
  using Deliver = std::function<void(SubscriberId subscriber, int64_t user, PresenceView view)>;

  PresenceTracker(Executor& core, const Clock& clock, PresenceConfig config, Deliver deliver);

  // A connection of `user` entered the foreground (connected, or switched to
  // foreground).
  void ForegroundEnter(int64_t user);
  // A foreground connection of `user` left it (disconnected, or switched to
  // background). Returns the user's new last-seen time when this was their
  // last foreground connection (the caller stores it), else 0.
  int64_t ForegroundLeave(int64_t user);

  // What a subscriber allowed (`visible`) or not sees of `user` now. Seeds
  // the last seen from the store when this node has none yet.
  PresenceView View(int64_t user, bool visible, int64_t stored_last_seen = 0);

  // Replaces the subscriber's watched set. `visible[i]` tells whether it may
  // see `users[i]`; `shown[i]` is what it was just told (the subscribe
  // response), so only later changes are sent. `as_of`: the order of the
  // store read the visibility came from (see SetVisible).
  void Subscribe(SubscriberId subscriber, const std::vector<int64_t>& users, const std::vector<bool>& visible,
                 const std::vector<PresenceView>& shown, uint64_t as_of);
  void Unsubscribe(SubscriberId subscriber);
  // The subscriber's visibility of `user` changed (privacy setting, contacts,
  // blocks); an update follows if what it sees changed. `as_of` orders the
  // store reads visibility comes from (the caller counts them as it issues
  // them): reads complete in any order, so an answer from a read issued
  // before the one the current visibility came from (this call's or
  // Subscribe's) is older news and ignored.
  void SetVisible(SubscriberId subscriber, int64_t user, bool visible, uint64_t as_of);
  // Who watches `user` (to re-check visibility after a settings change).
  std::vector<SubscriberId> Watchers(int64_t user) const;
  // Whom `subscriber` watches (to re-check all of it).
  std::vector<int64_t> Watched(SubscriberId subscriber) const;

  size_t tracked_users() const { return users_.size(); }

 private:
  struct UserState {
    int foreground = 0;            // foreground connections right now
    bool announced_online = false;  // what subscribers are told
    int64_t last_seen = 0;
    uint64_t offline_generation = 0;  // a newer one cancels a pending offline
    std::unordered_set<SubscriberId> watchers;
  };
  struct Watch {
    bool visible = false;
    uint64_t visible_as_of = 0;  // the read `visible` came from
    PresenceView sent;
    int64_t sent_at = 0;  // 0: nothing sent since subscribing
    bool flush_pending = false;
  };

  void Notify(int64_t user);
  void Offer(SubscriberId subscriber, int64_t user);
  void MaybeForget(int64_t user);

  Executor& core_;
  const Clock& clock_;
  const PresenceConfig config_;
  Deliver deliver_;
  std::unordered_map<int64_t, UserState> users_;
  std::unordered_map<SubscriberId, std::unordered_map<int64_t, Watch>> subscriptions_;
};

}  // namespace parley::core
