// RedisFabric: the Fabric of the cluster shape (issue 10). Several parleyd
// nodes share one PostgreSQL (the durable log) and one Redis, which carries
// only what may be lost (DESIGN.md, guarantee 7: sync recovers it):
//
//   parley:route:{user}   sorted set, member "NODE|DEVICE", score = the
//                         entry's expiry (ms since epoch). Written on Attach,
//                         removed on Detach, re-written by every node each
//                         refresh interval (so a killed node's entries expire
//                         after route_ttl_ms); the key itself has a TTL too.
//   parley:node:{NODE}    pub/sub channel of one node: frames for devices
//                         connected there, and device closes.
//   parley:presence       pub/sub channel of every node: which users are
//                         connected / in the foreground on which node
//                         (transitions at once, a full snapshot each refresh
//                         interval, a "hello" that asks every node for one)
//                         and users changed through a node (who may see
//                         their presence; an erased account): every node
//                         updates what it holds. A node's hello after a cut,
//                         or this node's own re-subscription, means some may
//                         have been missed: Fabric::UserChange::kAnything.
//   parley:rl:{LIMIT}:{KEY}  hash {t: tokens, at: ms}: a rate-limit bucket
//                         shared by every node (per user, username or
//                         address), refilled by Redis' clock; its TTL is its
//                         time to full (a missing bucket is a full one).
//
// Shared rate limits: ReconcileRateLimits runs one Lua script per up to
// kRateBucketsPerScript buckets that refills, debits and returns each
// bucket (docs/architecture.md, "Shared rate limits").
//
// Publish delivers to this node's connections directly, then (if the
// presence cache says another node holds one of the user's devices) runs one
// Lua script on Redis that reads the user's routes and PUBLISHes the frame
// to each other node's channel: one round trip, in call order (one command
// connection), so a user's frames keep their order end to end.
//
// IsConnected never blocks: local table, or the presence cache. Staleness of
// the cache: transitions arrive within a Redis round trip; a node that starts
// learns the others' users when they answer its hello (about one round
// trip); a killed node's users read as connected until route_ttl_ms passes
// without a snapshot from it. A wrong "not connected" only skips a live
// publish, which the device's next sync recovers.
//
// While Redis is unreachable: local delivery goes on, remote publishes are
// dropped (counted), and the connections retry every reconnect_ms; on
// reconnect the node re-subscribes, re-writes its routes, says hello.
//
// Threading: every Fabric method may be called from any thread. Redis I/O
// runs on one thread of its own (a Boost.Asio io_context driving hiredis'
// async API); the remote presence and user-change callbacks and remote
// frames are delivered from it. Boost and hiredis stay in the .cc file.
#pragma once

#include <memory>
#include <string>

#include "common/status.h"
#include "fabric/fabric.h"

namespace parley::fabric {

struct RedisFabricConfig {
  std::string host = "127.0.0.1";
  int port = 6379;
  // Sent with AUTH on each connection before anything else when not empty
  // (Redis's requirepass, or an ACL user's password with `username`).
  // parleyd: the userinfo of a redis:// URL, or --redis-password
  // (PARLEY_REDIS_PASSWORD), --redis-user.
  std::string username;
  std::string password;
  // This node's id, unique among the live nodes (letters, digits, '-', '_',
  // '.', ':'). parleyd: --node-id.
  std::string node_id;
  // A route entry (and a node's presence) lives this long without a refresh
  // (--redis-route-ttl-ms).
  int route_ttl_ms = 15'000;
  // Each node re-writes its routes and publishes its presence snapshot this
  // often (--redis-refresh-ms). Must be well below route_ttl_ms.
  int refresh_interval_ms = 5'000;
  // Delay between attempts to reach Redis again after losing it.
  int reconnect_ms = 500;
  // Test builds only (parleyd --fault fabric_drop_publish@N): the Nth durable
  // frame this node would publish to other nodes is dropped instead.
  int64_t drop_publish_at = 0;
  // Test builds only (--fault fabric_mute_at_close@N): at the Nth device
  // close this node would send to another node, it stops sending anything
  // to Redis, that close included: as if it died right after committing the
  // change (the revocation's broadcast does not go out either).
  int64_t mute_at_close = 0;
  // Tests only: added to this node's wall clock, as if it were set wrong
  // (route scores follow Redis' clock whatever this is).
  int64_t clock_skew_ms = 0;
};

// Parses "HOST:PORT" or "redis://[[USER]:PASSWORD@]HOST[:PORT]" (port 6379;
// USER and PASSWORD percent-decoded; an IPv6 HOST in brackets).
Status ParseRedisAddress(const std::string& text, RedisFabricConfig* config);

// Checks the node id and the timing settings (Start checks them too).
Status ValidateRedisFabricConfig(const RedisFabricConfig& config);

class RedisFabric final : public Fabric {
 public:
  // Starts the I/O thread and connects. Fails if Redis cannot be reached
  // within `connect_timeout_ms` (a node must not start blind); later losses
  // are survived (see above).
  static Result<std::unique_ptr<RedisFabric>> Start(RedisFabricConfig config, int connect_timeout_ms = 5'000);
  // Says goodbye (removes this node's routes, tells the others its users are
  // gone) within a short bound, then stops the I/O thread.
  ~RedisFabric() override;
  // The same, now: after Stop nothing reaches the attached sinks from other
  // nodes and nothing more is sent. Idempotent; the destructor calls it.
  // Call it from a thread other than the fabric's.
  void Stop();

  void Attach(int64_t user_id, int64_t device_id, std::shared_ptr<DeviceSink> sink) override;
  void Detach(int64_t user_id, int64_t device_id, const DeviceSink* sink) override;
  void Publish(int64_t user_id, SharedFrame frame, bool ephemeral = false) override;
  void PublishHere(int64_t user_id, SharedFrame frame, bool ephemeral = false) override;
  void PublishReceipt(int64_t user_id, SharedFrame frame, std::shared_ptr<const store::StreamEvent> receipt) override;
  void CloseDevice(int64_t user_id, int64_t device_id, uint16_t code, std::string reason) override;
  bool IsConnected(int64_t user_id) const override;
  std::vector<int64_t> AttachedDevices(int64_t user_id) const override;
  void CloseAll(uint16_t code, std::string reason) override;
  void SetLocalOnline(int64_t user_id, bool online) override;
  void OnRemotePresence(RemotePresenceFn fn) override;
  void PublishUserChange(const UserChange& change) override;
  void OnRemoteUserChange(RemoteUserChangeFn fn) override;
  bool SharesRateLimits() const override { return true; }
  void ReconcileRateLimits(std::vector<RateUsage> usage, RateLevelsCallback done) override;

  // Buckets per script call: a reconciliation of more is split, so that no
  // one script keeps Redis busy for long.
  static constexpr size_t kRateBucketsPerScript = 500;

  struct Impl;

 private:
  explicit RedisFabric(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace parley::fabric
