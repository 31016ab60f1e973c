// RedisFabric's shared rate-limit buckets (Fabric::ReconcileRateLimits)
// against a real redis-server (redis_test_server.h): two fabrics stand for
// two nodes debiting one bucket; Redis gone and back. User changes between
// two nodes; the devices attached to a node (AttachedDevices). Routing, presence and pub/sub are covered end
// to end by cluster_e2e_test.
#include "fabric/redis/redis_fabric.h"

#include <hiredis/hiredis.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <mutex>
#include <thread>

#include "common/metrics.h"
#include "fabric/redis_test_server.h"

namespace parley::fabric {
namespace {

using parley::testing::RedisTestServer;
using SteadyClock = std::chrono::steady_clock;

std::unique_ptr<RedisFabric> StartNode(const RedisTestServer& redis, const std::string& id) {
  RedisFabricConfig config;
  EXPECT_TRUE(ParseRedisAddress(redis.address(), &config).ok());
  config.node_id = id;
  auto fabric = RedisFabric::Start(config);
  EXPECT_TRUE(fabric.has_value()) << fabric.error().ToString();
  return fabric ? std::move(*fabric) : nullptr;
}

Result<std::vector<double>> Reconcile(Fabric& f, std::vector<RateUsage> usage) {
  auto promise = std::make_shared<std::promise<Result<std::vector<double>>>>();
  auto future = promise->get_future();
  f.ReconcileRateLimits(std::move(usage), [promise](Result<std::vector<double>> r) { promise->set_value(std::move(r)); });
  if (future.wait_for(std::chrono::seconds(5)) != std::future_status::ready)
    return Status(ErrorCode::kInternal, "no answer within 5 s");
  return future.get();
}

// PTTL of `key` in milliseconds (-2: no such key).
long long Pttl(const RedisTestServer& redis, const std::string& key) {
  redisContext* c = redisConnect("127.0.0.1", redis.port());
  if (c == nullptr || c->err) return -100;
  auto* r = static_cast<redisReply*>(redisCommand(c, "PTTL %s", key.c_str()));
  long long v = r != nullptr && r->type == REDIS_REPLY_INTEGER ? r->integer : -100;
  if (r) freeReplyObject(r);
  redisFree(c);
  return v;
}

TEST(RedisFabricRateTest, TwoNodesDebitOneBucketAndEachLearnsTheClusterLevel) {
  RedisTestServer redis;
  auto a = StartNode(redis, "node-a");
  auto b = StartNode(redis, "node-b");
  ASSERT_TRUE(a && b);
  ASSERT_TRUE(a->SharesRateLimits());
  // 10 per second, burst 10. Refill between calls is at most a few tokens
  // per 100 ms of wall time: the checks allow for a slow machine.
  auto usage = [](const std::string& bucket, double used) { return RateUsage{bucket, used, 10, 10}; };

  // Refill since node A's script ran: at most the time since before it was
  // sent (its reply may come back late on a busy machine).
  const auto t1 = SteadyClock::now();
  auto l1 = Reconcile(*a, {usage("send_per_user:u1", 6)});
  ASSERT_TRUE(l1.has_value()) << l1.error().ToString();
  ASSERT_EQ(l1->size(), 1u);
  EXPECT_GE((*l1)[0], 4.0);
  EXPECT_LT((*l1)[0], 5.0);  // a full bucket (10) less 6, plus a little refill

  // Node B's use and node A's meet in one bucket; B sees both.
  auto l2 = Reconcile(*b, {usage("send_per_user:u1", 6), usage("search_per_user:u1", 1)});
  ASSERT_TRUE(l2.has_value()) << l2.error().ToString();
  ASSERT_EQ(l2->size(), 2u);
  double refill = 10.0 * std::chrono::duration<double>(SteadyClock::now() - t1).count();
  EXPECT_GE((*l2)[0], -2.0);
  EXPECT_LE((*l2)[0], -2.0 + refill + 0.1) << "the bucket was owed: 10 - 6 - 6";
  EXPECT_GE((*l2)[1], 9.0);  // another limit's bucket is another bucket
  EXPECT_LE((*l2)[1], 9.0);

  // The bucket is kept while not full, with its time to full as TTL.
  long long ttl = Pttl(redis, "parley:rl:send_per_user:u1");
  EXPECT_GT(ttl, 1'000);
  EXPECT_LE(ttl, 1'200 + 1'000) << "about (10 - -2) / 10 s to full, plus a second";

  // However much the nodes over-admit, the debt is bounded.
  auto l3 = Reconcile(*a, {usage("send_per_user:u1", 1'000)});
  ASSERT_TRUE(l3.has_value());
  EXPECT_EQ((*l3)[0], -Fabric::kMaxRateDebtBursts * 10.0);

  // Nothing used, nothing owed: a reconciliation of no buckets answers none.
  auto l4 = Reconcile(*a, {});
  ASSERT_TRUE(l4.has_value());
  EXPECT_TRUE(l4->empty());
}

TEST(RedisFabricRateTest, ManyBucketsAreSplitOverSeveralScriptsInOrder) {
  RedisTestServer redis;
  auto a = StartNode(redis, "node-a");
  ASSERT_TRUE(a);
  std::vector<RateUsage> usage;
  const size_t n = RedisFabric::kRateBucketsPerScript * 2 + 7;
  for (size_t i = 0; i < n; ++i) usage.push_back(RateUsage{"k:" + std::to_string(i), static_cast<double>(i % 5), 1, 100});
  auto levels = Reconcile(*a, usage);
  ASSERT_TRUE(levels.has_value()) << levels.error().ToString();
  ASSERT_EQ(levels->size(), n);
  for (size_t i = 0; i < n; ++i) ASSERT_EQ((*levels)[i], 100.0 - static_cast<double>(i % 5)) << "bucket " << i;
  EXPECT_EQ(Pttl(redis, "parley:rl:k:0"), -2) << "a full bucket is not kept";
}

TEST(RedisFabricRateTest, RedisGoneFailsUnavailableAndTheBucketsComeBackWithIt) {
  RedisTestServer redis;
  auto a = StartNode(redis, "node-a");
  ASSERT_TRUE(a);
  ASSERT_TRUE(Reconcile(*a, {RateUsage{"b", 3, 1, 10}}).has_value());
  redis.Stop();
  auto start = SteadyClock::now();
  auto down = Reconcile(*a, {RateUsage{"b", 1, 1, 10}});
  ASSERT_FALSE(down.has_value());
  EXPECT_EQ(down.error().code(), ErrorCode::kUnavailable) << down.error().ToString();
  EXPECT_LT(SteadyClock::now() - start, std::chrono::seconds(1)) << "a node must not wait for a dead Redis";

  redis.Start();  // empty: buckets were not persisted, so they read as full
  // The fabric reconnects within its retry interval (500 ms).
  Result<std::vector<double>> up = Status(ErrorCode::kUnavailable, "not tried");
  auto deadline = SteadyClock::now() + std::chrono::seconds(5);
  while (!up.has_value() && SteadyClock::now() < deadline) {
    up = Reconcile(*a, {RateUsage{"b", 2, 1, 10}});
    if (!up.has_value()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_TRUE(up.has_value()) << "still failing 5 s after Redis came back: " << up.error().ToString();
  EXPECT_EQ((*up)[0], 8.0);
}

// Each kind of user change one node publishes reaches the other as it was
// sent (the presence channel's `v`, `e` and `r` messages).
TEST(RedisFabricUserChangeTest, EachKindOfChangeReachesTheOtherNode) {
  RedisTestServer redis;
  auto a = StartNode(redis, "node-a");
  auto b = StartNode(redis, "node-b");
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  std::mutex mu;
  std::vector<Fabric::UserChange> got;
  b->OnRemoteUserChange([&](const Fabric::UserChange& c) {
    std::lock_guard lock(mu);
    if (c.kind != Fabric::UserChange::Kind::kAnything) got.push_back(c);
  });
  using Kind = Fabric::UserChange::Kind;
  const std::vector<Fabric::UserChange> sent = {
      {Kind::kVisibility, 7, 9}, {Kind::kErased, 8, 0}, {Kind::kRevoked, 42, 0}};
  for (const auto& c : sent) a->PublishUserChange(c);
  auto deadline = SteadyClock::now() + std::chrono::seconds(3);
  while (SteadyClock::now() < deadline) {
    {
      std::lock_guard lock(mu);
      if (got.size() >= sent.size()) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  std::lock_guard lock(mu);
  ASSERT_EQ(got.size(), sent.size());
  for (size_t i = 0; i < sent.size(); ++i) {
    EXPECT_EQ(got[i].kind, sent[i].kind) << i;
    EXPECT_EQ(got[i].user_id, sent[i].user_id) << i;
    EXPECT_EQ(got[i].viewer, sent[i].viewer) << i;
  }
}

// Redis with a password (requirepass): a node that gives it works as
// without one; a node that gives none or a wrong one does not start, and
// Start's error says what Redis refused.
TEST(RedisFabricAuthTest, ANodeWithThePasswordWorksAndOneWithoutIsRefusedSayingWhy) {
  RedisTestServer redis({"--requirepass", "s3cret"});
  RedisFabricConfig config;
  ASSERT_TRUE(ParseRedisAddress("redis://:s3cret@" + redis.address(), &config).ok());
  config.node_id = "node-a";
  auto a = RedisFabric::Start(config);
  ASSERT_TRUE(a.has_value()) << a.error().ToString();
  config.node_id = "node-b";
  auto b = RedisFabric::Start(config);
  ASSERT_TRUE(b.has_value()) << b.error().ToString();
  std::promise<Fabric::UserChange> got;
  (*b)->OnRemoteUserChange([&got, once = std::make_shared<std::once_flag>()](const Fabric::UserChange& c) {
    if (c.kind == Fabric::UserChange::Kind::kErased) std::call_once(*once, [&] { got.set_value(c); });
  });
  (*a)->PublishUserChange({Fabric::UserChange::Kind::kErased, 8, 0});
  auto future = got.get_future();
  ASSERT_EQ(future.wait_for(std::chrono::seconds(3)), std::future_status::ready) << "nothing crossed an AUTHed Redis";
  EXPECT_EQ(future.get().user_id, 8);

  for (const std::string& password : {std::string(), std::string("wrong")}) {
    RedisFabricConfig refused;
    ASSERT_TRUE(ParseRedisAddress(redis.address(), &refused).ok());
    refused.password = password;
    refused.node_id = "node-c";
    auto c = RedisFabric::Start(refused, /*connect_timeout_ms=*/1500);
    ASSERT_FALSE(c.has_value());
    EXPECT_NE(c.error().message().find(password.empty() ? "NOAUTH" : "WRONGPASS"), std::string::npos)
        << c.error().message();
  }
}

// An ACL user (Redis 6+) as docs/operations.md suggests one works; one
// without the right to Parley's channels is refused at SUBSCRIBE (which
// hiredis answers by dropping the connection), and Start says so.
TEST(RedisFabricAuthTest, AnAclUserWithParleysKeysAndChannelsWorksAndOneWithoutTheChannelsIsRefused) {
  RedisTestServer redis;
  const std::string made = redis.Command(
      "ACL SETUSER parley on >pw ~parley:* &parley:* +@all\r\n"
      "ACL SETUSER nochannels on >pw ~parley:* resetchannels +@all");
  ASSERT_EQ(made, "+OK\r\n+OK\r\n");
  RedisFabricConfig config;
  ASSERT_TRUE(ParseRedisAddress("redis://parley:pw@" + redis.address(), &config).ok());
  config.node_id = "node-a";
  auto a = RedisFabric::Start(config);
  ASSERT_TRUE(a.has_value()) << a.error().ToString();
  auto limits = Reconcile(**a, {{"send_per_user:acl", 1, 10, 10}});
  ASSERT_TRUE(limits.has_value()) << "the rate script (EVAL on parley: keys) was refused: " << limits.error().ToString();

  ASSERT_TRUE(ParseRedisAddress("redis://nochannels:pw@" + redis.address(), &config).ok());
  config.node_id = "node-b";
  auto b = RedisFabric::Start(config, /*connect_timeout_ms=*/1500);
  ASSERT_FALSE(b.has_value());
  EXPECT_NE(b.error().message().find("SUBSCRIBE: NOPERM"), std::string::npos) << b.error().message();
}

// --redis may name the host: it is resolved (off the fabric's thread) at
// every attempt. `localhost` comes from /etc/hosts, without DNS.
TEST(RedisFabricAuthTest, AHostNameIsResolved) {
  RedisTestServer redis;
  RedisFabricConfig config;
  ASSERT_TRUE(ParseRedisAddress("localhost:" + std::to_string(redis.port()), &config).ok());
  ASSERT_EQ(config.host, "localhost");
  config.node_id = "node-a";
  config.reconnect_ms = 50;
  auto a = RedisFabric::Start(config);
  ASSERT_TRUE(a.has_value()) << a.error().ToString();
  auto limits = Reconcile(**a, {{"send_per_user:name", 1, 10, 10}});
  EXPECT_TRUE(limits.has_value()) << limits.error().ToString();
}

// A Redis restarted with data loads it before it serves, answering
// -LOADING meanwhile: a node starting then waits for it (retrying), without
// counting a refusal or blaming its password or ACL.
TEST(RedisFabricAuthTest, ANodeWaitsForARedisThatIsLoadingItsDataSet) {
  // 2,000 keys loaded at 1 ms each (a debug setting of Redis), answering
  // clients every KiB read meanwhile.
  RedisTestServer redis({"--key-load-delay", "1000", "--loading-process-events-interval-bytes", "1024"});
  ASSERT_EQ(redis.Command("EVAL \"for i = 1, 2000 do redis.call('SET', 'k' .. i, i) end\" 0\r\nSAVE"), "$-1\r\n+OK\r\n")
      << "the data set was not saved";
  redis.Stop();
  redis.Start();
  ASSERT_EQ(redis.Command("PING").rfind("-LOADING", 0), 0u) << "Redis is not loading: the test tests nothing";
  Counter& refusals = Metrics::Default().GetCounter("parley_fabric_redis_refusals_total", "");
  const uint64_t refused_before = refusals.value();
  RedisFabricConfig config;
  ASSERT_TRUE(ParseRedisAddress(redis.address(), &config).ok());
  config.node_id = "node-a";
  config.reconnect_ms = 50;
  const auto start = SteadyClock::now();
  auto node = RedisFabric::Start(config, /*connect_timeout_ms=*/15'000);
  ASSERT_TRUE(node.has_value()) << node.error().ToString();
  EXPECT_EQ(redis.Command("PING"), "+PONG\r\n");
  EXPECT_GT(SteadyClock::now() - start, std::chrono::milliseconds(200)) << "the node did not wait";
  EXPECT_EQ(refusals.value(), refused_before) << "a loading Redis counted as refusing the node";
}

// A Redis whose password changes under a running node (an operator's
// rotation): its connections, once cut, are refused, which it counts and
// retries; once the password it has is valid again it comes back by itself.
TEST(RedisFabricAuthTest, ARefusedNodeRetriesAndComesBackWhenThePasswordIsMended) {
  RedisTestServer redis({"--requirepass", "one"});
  RedisFabricConfig config;
  ASSERT_TRUE(ParseRedisAddress(redis.address(), &config).ok());
  config.password = "one";
  config.node_id = "node-a";
  config.reconnect_ms = 50;
  auto node = RedisFabric::Start(config);
  ASSERT_TRUE(node.has_value()) << node.error().ToString();
  Gauge& up = Metrics::Default().GetGauge("parley_fabric_redis_up", "");
  Counter& refusals = Metrics::Default().GetCounter("parley_fabric_redis_refusals_total", "");
  ASSERT_EQ(up.value(), 1);
  const uint64_t refused_before = refusals.value();

  const std::string rotated =
      redis.Command("AUTH one\r\nCONFIG SET requirepass two\r\nCLIENT KILL TYPE pubsub\r\nCLIENT KILL TYPE normal");
  ASSERT_EQ(rotated.rfind("+OK\r\n+OK\r\n:", 0), 0u) << rotated;
  auto wait = [](auto pred) {
    auto deadline = SteadyClock::now() + std::chrono::seconds(5);
    while (!pred() && SteadyClock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    return pred();
  };
  EXPECT_TRUE(wait([&] { return refusals.value() >= refused_before + 3; })) << "not refused again and again";
  EXPECT_EQ(up.value(), 0);
  ASSERT_EQ(redis.Command("AUTH two\r\nCONFIG SET requirepass one").rfind("+OK\r\n+OK", 0), 0u);
  EXPECT_TRUE(wait([&] { return up.value() == 1; })) << "the node did not come back once its password was valid";
}

// Two live processes under one node id (a misconfiguration that mixes their
// frames, routes and presence) are noticed by both from each other's
// snapshot; a node alone never counts itself.
TEST(RedisFabricNodeIdTest, TwoLiveProcessesWithOneNodeIdAreCounted) {
  RedisTestServer redis;
  Counter& duplicates = Metrics::Default().GetCounter("parley_fabric_duplicate_node_id_total", "");
  RedisFabricConfig config;
  ASSERT_TRUE(ParseRedisAddress(redis.address(), &config).ok());
  config.node_id = "node-a";
  config.refresh_interval_ms = 50;
  config.route_ttl_ms = 200;
  auto first = RedisFabric::Start(config);
  ASSERT_TRUE(first.has_value()) << first.error().ToString();
  const uint64_t before = duplicates.value();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // six snapshots of its own, heard back
  EXPECT_EQ(duplicates.value(), before) << "a node alone took its own snapshots for another's";
  auto second = RedisFabric::Start(config);
  ASSERT_TRUE(second.has_value()) << second.error().ToString();
  auto deadline = SteadyClock::now() + std::chrono::seconds(3);
  while (duplicates.value() < before + 2 && SteadyClock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_GE(duplicates.value(), before + 2) << "two processes under node-a did not notice each other";
}

struct NullSink final : DeviceSink {
  void SendFrame(SharedFrame, bool) override {}
  void Close(uint16_t, std::string) override {}
};

// Nodes that start together (a cluster-wide restart) each say hello; a
// running node answers the hellos it hears together with one snapshot, not
// one each (N nodes would publish N² snapshots: past Redis' output limit for
// subscribers, which then cuts every node's subscription).
TEST(RedisFabricHelloTest, HellosHeardTogetherAreAnsweredWithOneSnapshot) {
  RedisTestServer redis;
  auto a = StartNode(redis, "node-a");
  ASSERT_NE(a, nullptr);
  // A plain subscriber counts node-a's snapshots from now on.
  redisContext* watch = redisConnect("127.0.0.1", redis.port());
  ASSERT_TRUE(watch != nullptr && watch->err == 0);
  freeReplyObject(redisCommand(watch, "SUBSCRIBE parley:presence"));
  redisSetTimeout(watch, timeval{1, 500'000});
  constexpr int kStarting = 6;
  std::vector<std::future<std::unique_ptr<RedisFabric>>> starting;
  for (int i = 0; i < kStarting; ++i)
    starting.push_back(std::async(std::launch::async, [&redis, i] { return StartNode(redis, "node-" + std::to_string(i)); }));
  std::vector<std::unique_ptr<RedisFabric>> nodes;
  for (auto& f : starting) nodes.push_back(f.get());
  int hellos = 0, snapshots = 0;
  void* r = nullptr;
  while (redisGetReply(watch, &r) == REDIS_OK) {  // until 1.5 s pass in silence
    auto* reply = static_cast<redisReply*>(r);
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 3) {
      const std::string text(reply->element[2]->str, reply->element[2]->len);
      // node-a's own hello may still be on its way when the watcher subscribes.
      if (text.rfind("h node-", 0) == 0 && text.rfind("h node-a", 0) != 0) ++hellos;
      if (text.rfind("s node-a ", 0) == 0) ++snapshots;
    }
    freeReplyObject(reply);
  }
  redisFree(watch);
  EXPECT_EQ(hellos, kStarting);
  EXPECT_GE(snapshots, 1) << "node-a never answered the hellos";
  EXPECT_LE(snapshots, 2) << "node-a answered " << kStarting << " hellos heard together one by one";
}

// Counts the frames a node hands to a device.
struct CountingSink final : DeviceSink {
  std::atomic<int> frames{0};
  void SendFrame(SharedFrame, bool) override { ++frames; }
  void Close(uint16_t, std::string) override {}
};

// Route scores are expiry times every node compares with "now": they follow
// Redis' clock, not each node's. A node whose clock runs a minute behind
// (more than a route TTL) once wrote routes the others took for expired, so
// nothing reached its devices live; one a minute ahead pruned the others'.
TEST(RedisFabricClockTest, ANodeWhoseClockIsWrongStillGetsLiveFramesAndKeepsTheOthersRoutes) {
  RedisTestServer redis;
  for (int64_t skew : {int64_t{-60'000}, int64_t{60'000}}) {
    RedisFabricConfig config;
    ASSERT_TRUE(ParseRedisAddress(redis.address(), &config).ok());
    config.node_id = "node-a";
    auto a = RedisFabric::Start(config);
    ASSERT_TRUE(a.has_value()) << a.error().ToString();
    config.node_id = "node-b";
    config.clock_skew_ms = skew;
    auto b = RedisFabric::Start(config);
    ASSERT_TRUE(b.has_value()) << b.error().ToString();
    auto on_b = std::make_shared<CountingSink>();
    auto on_a = std::make_shared<CountingSink>();
    (*b)->Attach(42, 7, on_b);
    (*a)->Attach(43, 8, on_a);
    auto deadline = SteadyClock::now() + std::chrono::seconds(5);
    while (!((*a)->IsConnected(42) && (*b)->IsConnected(43)) && SteadyClock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    ASSERT_TRUE((*a)->IsConnected(42) && (*b)->IsConnected(43)) << "presence never crossed";
    // Both ways, a few times over a refresh (the skewed node re-writes its
    // routes and prunes everyone's expired ones on each).
    for (int i = 0; i < 3; ++i) {
      (*a)->Publish(42, std::make_shared<const std::string>("to b"));
      (*b)->Publish(43, std::make_shared<const std::string>("to a"));
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
    }
    deadline = SteadyClock::now() + std::chrono::seconds(3);
    while ((on_b->frames < 3 || on_a->frames < 3) && SteadyClock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    EXPECT_EQ(on_b->frames.load(), 3) << "skew " << skew << ": frames for the skewed node's device";
    EXPECT_EQ(on_a->frames.load(), 3) << "skew " << skew << ": frames for the other node's device";
    (*a)->Detach(43, 8, on_a.get());
    (*b)->Detach(42, 7, on_b.get());
  }
}

// A figure (`calls`, `rejected_calls`) of `command` in Redis's INFO
// commandstats (a command never called is not listed: 0).
long long CommandCalls(const RedisTestServer& redis, const std::string& command, const std::string& figure = "calls") {
  const std::string info = redis.Command("INFO commandstats");
  const size_t line = info.find("cmdstat_" + command + ":");
  if (line == std::string::npos) return 0;
  const size_t at = info.find(figure + "=", line);
  return at == std::string::npos ? 0 : std::stoll(info.substr(at + figure.size() + 1));
}

// Waits until `sink` has had `n` frames (5 s at most); returns its count.
int WaitFrames(const CountingSink& sink, int n) {
  const auto deadline = SteadyClock::now() + std::chrono::seconds(5);
  while (sink.frames < n && SteadyClock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  return sink.frames.load();
}

// Frames to other nodes go through the route script by its SHA-1 (EVALSHA;
// each command connection loads the script first), not whole with every
// frame. After a SCRIPT FLUSH (Redis forgot it) a frame meets NOSCRIPT and is
// sent again whole, so it still arrives; the next ones go by the SHA-1 again.
// A node whose ACL refuses EVALSHA, or SCRIPT, sends the script whole, and
// its frames arrive as well.
TEST(RedisFabricRouteTest, FramesGoByTheScriptsShaAndArriveAfterAScriptFlushAndWithoutEvalsha) {
  RedisTestServer redis;
  ASSERT_EQ(redis.Command("ACL SETUSER noevalsha on >pw ~parley:* &parley:* +@all -evalsha\r\n"
                          "ACL SETUSER noscript on >pw ~parley:* &parley:* +@all -script"),
            "+OK\r\n+OK\r\n");
  auto a = StartNode(redis, "node-a");
  auto b = StartNode(redis, "node-b");
  ASSERT_TRUE(a && b);
  auto on_b = std::make_shared<CountingSink>();
  b->Attach(42, 7, on_b);
  const auto deadline = SteadyClock::now() + std::chrono::seconds(5);
  while (!a->IsConnected(42) && SteadyClock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ASSERT_TRUE(a->IsConnected(42)) << "presence never crossed";
  const auto frame = std::make_shared<const std::string>("to b");
  a->Publish(42, frame);
  ASSERT_EQ(WaitFrames(*on_b, 1), 1);

  const long long eval0 = CommandCalls(redis, "eval"), evalsha0 = CommandCalls(redis, "evalsha");
  for (int i = 0; i < 5; ++i) a->Publish(42, frame);
  ASSERT_EQ(WaitFrames(*on_b, 6), 6);
  EXPECT_EQ(CommandCalls(redis, "evalsha") - evalsha0, 5);
  EXPECT_EQ(CommandCalls(redis, "eval"), eval0) << "a frame was sent with the whole script";

  ASSERT_EQ(redis.Command("SCRIPT FLUSH"), "+OK\r\n");
  for (int i = 0; i < 3; ++i) a->Publish(42, frame);
  EXPECT_EQ(WaitFrames(*on_b, 9), 9) << "a frame that met NOSCRIPT was lost";
  a->Publish(42, frame);
  ASSERT_EQ(WaitFrames(*on_b, 10), 10);
  // The first NOSCRIPT's frame went whole (loading the script again); those
  // sent behind it by SHA-1 before its answer came may have met it as well.
  EXPECT_GE(CommandCalls(redis, "eval") - eval0, 1);
  EXPECT_LE(CommandCalls(redis, "eval") - eval0, 3);

  for (const std::string user : {"noevalsha", "noscript"}) {
    RedisFabricConfig config;
    ASSERT_TRUE(ParseRedisAddress("redis://" + user + ":pw@" + redis.address(), &config).ok());
    config.node_id = "node-" + user;
    auto c = RedisFabric::Start(config);
    ASSERT_TRUE(c.has_value()) << c.error().ToString();
    const auto until = SteadyClock::now() + std::chrono::seconds(5);
    while (!(*c)->IsConnected(42) && SteadyClock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    ASSERT_TRUE((*c)->IsConnected(42)) << user;
    const long long refused = CommandCalls(redis, "evalsha", "rejected_calls");
    const int before = on_b->frames.load();
    for (int i = 0; i < 3; ++i) (*c)->Publish(42, frame);
    EXPECT_EQ(WaitFrames(*on_b, before + 3), before + 3) << user << ": frames lost";
    if (user == "noevalsha") {
      // Once SCRIPT LOAD's answer is in, its frames meet the refusal (and
      // still arrive, sent whole).
      for (int i = 0; i < 50 && CommandCalls(redis, "evalsha", "rejected_calls") == refused; ++i) {
        const int n = on_b->frames.load();
        (*c)->Publish(42, frame);
        ASSERT_EQ(WaitFrames(*on_b, n + 1), n + 1) << user << ": a frame lost";
      }
      EXPECT_GT(CommandCalls(redis, "evalsha", "rejected_calls"), refused) << "no frame went by EVALSHA: nothing was tested";
    }
  }
  b->Detach(42, 7, on_b.get());
}

// What a node's re-check after a cut judges (ChatService::RecheckUserDevices):
// the devices attached here, each once however many connections it has,
// gone when its last connection is detached.
TEST(RedisFabricAttachTest, AttachedDevicesListsEachDeviceOnThisNodeOnce) {
  RedisTestServer redis;
  auto node = StartNode(redis, "node-a");
  ASSERT_NE(node, nullptr);
  auto a = std::make_shared<NullSink>(), b = std::make_shared<NullSink>(), c = std::make_shared<NullSink>();
  node->Attach(7, 30, a);
  node->Attach(7, 10, b);
  node->Attach(7, 30, c);  // a second connection of device 30 (a reconnect)
  node->Attach(8, 20, std::make_shared<NullSink>());
  EXPECT_EQ(node->AttachedDevices(7), (std::vector<int64_t>{10, 30}));
  node->Detach(7, 30, a.get());
  EXPECT_EQ(node->AttachedDevices(7), (std::vector<int64_t>{10, 30}));
  node->Detach(7, 30, c.get());
  node->Detach(7, 10, b.get());
  EXPECT_TRUE(node->AttachedDevices(7).empty());
  EXPECT_EQ(node->AttachedDevices(8), (std::vector<int64_t>{20}));
  EXPECT_TRUE(node->AttachedDevices(9).empty());
}

}  // namespace
}  // namespace parley::fabric
