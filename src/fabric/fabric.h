// The Fabric: where devices are connected, and getting events to them.
//
// Single node: LocalFabric (fabric/local) keeps an in-process table. Cluster:
// RedisFabric (fabric/redis) routes to the node holding each device through
// Redis (docs/architecture.md, "Cluster fabric"). Either way, live delivery is an optimisation (DESIGN.md, guarantee 7): a frame the
// fabric drops is recovered by sync, so nothing here is durable.
//
// Thread-safety: every method may be called from any thread.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "store/types.h"

namespace parley::fabric {

using SharedFrame = std::shared_ptr<const std::string>;

// Tokens a node took from one shared rate-limit bucket since it last
// reconciled it (Fabric::ReconcileRateLimits).
struct RateUsage {
  std::string bucket;  // limit name and key, e.g. "send_per_user:u42"
  double used = 0;
  double per_second = 1;
  double burst = 1;
};

// One live, authenticated connection of a device, as the gateway exposes it.
// Implementations queue and return at once; they never block.
class DeviceSink {
 public:
  virtual ~DeviceSink() = default;
  // Queues a text frame for the device. Frames arrive in call order.
  // Ephemeral frames (typing) may be dropped when the connection is behind.
  virtual void SendFrame(SharedFrame frame, bool ephemeral = false) = 0;
  // Queues a receipt event (`frame` is its encoding). While it waits, a
  // later receipt for the same conversation and user may be merged into it
  // (overload order, docs/architecture.md "Backpressure"). By default it is
  // an ordinary durable frame.
  virtual void SendReceipt(SharedFrame frame, std::shared_ptr<const store::StreamEvent> /*receipt*/) {
    SendFrame(std::move(frame));
  }
  // Sends what is queued, then closes with `code` and `reason`.
  virtual void Close(uint16_t code, std::string reason) = 0;
};

class Fabric {
 public:
  virtual ~Fabric() = default;

  // The device is connected through `sink` (a device may have several
  // connections for a moment, e.g. during a reconnect; each is attached).
  virtual void Attach(int64_t user_id, int64_t device_id, std::shared_ptr<DeviceSink> sink) = 0;
  // Removes that one connection; unknown ones are ignored.
  virtual void Detach(int64_t user_id, int64_t device_id, const DeviceSink* sink) = 0;

  // Sends `frame` to every attached connection of every device of the user.
  virtual void Publish(int64_t user_id, SharedFrame frame, bool ephemeral = false) = 0;
  // Publish to this node's connections only: for what only this node may
  // have missed (a `head` notice after a cut). A single node's Publish is
  // that already.
  virtual void PublishHere(int64_t user_id, SharedFrame frame, bool ephemeral = false) {
    Publish(user_id, std::move(frame), ephemeral);
  }
  // Publish for a receipt event: the sinks may coalesce it (SendReceipt).
  virtual void PublishReceipt(int64_t user_id, SharedFrame frame, std::shared_ptr<const store::StreamEvent> receipt) = 0;

  // Closes every connection of the device (unlink, logout).
  virtual void CloseDevice(int64_t user_id, int64_t device_id, uint16_t code, std::string reason) = 0;

  // Whether the user has any connection attached, on any node. Never blocks:
  // a cluster fabric answers from a local cache (its staleness is documented
  // with the backend); a wrong "no" only defers delivery to the next sync.
  virtual bool IsConnected(int64_t user_id) const = 0;
  // The devices with a connection attached on this node, ascending, each
  // once. Empty when the user has none here.
  virtual std::vector<int64_t> AttachedDevices(int64_t user_id) const = 0;

  // Cluster presence. A single node needs none of it (the defaults do
  // nothing): its PresenceTracker sees every connection itself.
  // This node's foreground state for `user_id` changed (first connection of
  // the user here entered the foreground / last one left it).
  virtual void SetLocalOnline(int64_t /*user_id*/, bool /*online*/) {}
  // `fn` is called, on any thread, when the user becomes online on at least
  // one other node (true) or on none any more (false). Set once, before the
  // first Attach; users already known to be online elsewhere (the other
  // nodes answer a starting node's hello within a round trip and 200 ms)
  // are reported to it then.
  // nullptr unsets it: no call after that returns. `node_lost`: the user
  // went offline because the node it was online on was lost (forgotten
  // after a route TTL without a goodbye: killed or cut off), so that node
  // stored no last seen for it; otherwise false (the node where the user
  // went offline stores it).
  using RemotePresenceFn = std::function<void(int64_t user_id, bool online, bool node_lost)>;
  virtual void OnRemotePresence(RemotePresenceFn /*fn*/) {}
  // Something other nodes hold in memory about a user changed through this
  // node: who may see their presence (kVisibility: a privacy setting; with
  // `viewer`, a contact or block between the two), or the account was
  // erased (kErased: its name is free for a new account), or devices of the
  // user were revoked or the account disabled (kRevoked: an `auth` in
  // flight on another node may have read the device before, and must check
  // again once it lands). kAnything: such notices may have been lost (the
  // fabric was cut off from the others for a while), so anything may have
  // changed, revocations included.
  struct UserChange {
    enum class Kind { kVisibility, kErased, kRevoked, kAnything };
    Kind kind = Kind::kAnything;
    int64_t user_id = 0;
    int64_t viewer = 0;  // kVisibility: only this user's view changed (0: anyone's)
  };
  // Tells every other node (best effort, like every fabric message).
  virtual void PublishUserChange(const UserChange& /*change*/) {}
  // `fn` is called, on any thread, for each other node's PublishUserChange,
  // and with kAnything when some may have been lost. Set once, before the
  // first Attach.
  using RemoteUserChangeFn = std::function<void(const UserChange& change)>;
  virtual void OnRemoteUserChange(RemoteUserChangeFn /*fn*/) {}

  // Closes every attached connection (shutdown).
  virtual void CloseAll(uint16_t code, std::string reason) = 0;

  // Shared rate limits (docs/architecture.md, "Shared rate limits"). Whether
  // this fabric keeps rate-limit buckets shared by every node; if not (a
  // single node), the caller's local buckets are the whole truth.
  virtual bool SharesRateLimits() const { return false; }
  // A bucket shared by the nodes never owes more than this many bursts.
  static constexpr int kMaxRateDebtBursts = 4;
  // Debits each shared bucket by its `used` tokens (after refilling it at
  // `per_second` up to `burst` by the shared clock) and answers each
  // bucket's level afterwards, in order: tokens left, negative when the
  // nodes together took more than it held (never below -kMaxRateDebtBursts
  // bursts). `done` runs once, on any thread; it fails kUnavailable when the
  // shared store cannot be reached (then nothing was debited, or the debit
  // is unknown: the caller limits locally until a later call succeeds).
  using RateLevelsCallback = std::function<void(Result<std::vector<double>>)>;
  virtual void ReconcileRateLimits(std::vector<RateUsage> /*usage*/, RateLevelsCallback done) {
    done(Status(ErrorCode::kUnavailable, "this fabric shares no rate limits"));
  }
};

}  // namespace parley::fabric
