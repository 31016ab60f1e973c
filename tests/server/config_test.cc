// parleyd's configuration (server/config.h): the insecure test-and-benchmark
// options (cheap password hashing, relaxed rate limits) are never on unless
// explicitly given, on the command line or through their environment
// variables; with nothing given, passwords get Argon2id's interactive cost
// and every rate limit its documented default.
#include "common/this_thread.h"
#include "server/config.h"

#include <gtest/gtest.h>

#include <sched.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

extern char** environ;

namespace parley::server {
namespace {

class ConfigTest : public ::testing::Test {
 protected:
  // Whatever the environment running the tests holds (PARLEY_* variables
  // configure parleyd), each test starts from none.
  void SetUp() override {
    std::vector<std::string> names;
    for (char** e = environ; *e != nullptr; ++e) {
      std::string entry(*e);
      if (entry.rfind("PARLEY_", 0) == 0) names.push_back(entry.substr(0, entry.find('=')));
    }
    for (const std::string& n : names) unsetenv(n.c_str());
  }

  ServerConfig Parse(std::vector<std::string> args) {
    args.insert(args.begin(), "parleyd");
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    int exit_code = -1;
    Result<ServerConfig> c = ParseConfig(static_cast<int>(argv.size()), argv.data(), &exit_code);
    EXPECT_TRUE(c.has_value()) << c.error().message();
    EXPECT_EQ(exit_code, -1);
    return c.has_value() ? *c : ServerConfig{};
  }

  // Each rate limit of `got` as `want`'s times `factor`.
  static void ExpectLimits(const core::RateLimits& got, const core::RateLimits& want, double factor) {
    const std::pair<const core::RateLimit*, const core::RateLimit*> pairs[] = {
        {&got.send_per_device, &want.send_per_device},
        {&got.send_per_user, &want.send_per_user},
        {&got.search_per_user, &want.search_per_user},
        {&got.social_per_user, &want.social_per_user},
        {&got.failed_login_per_username, &want.failed_login_per_username},
        {&got.failed_login_per_address, &want.failed_login_per_address},
        {&got.register_per_address, &want.register_per_address},
        {&got.typing_per_device, &want.typing_per_device},
        {&got.presence_per_device, &want.presence_per_device},
    };
    for (size_t i = 0; i < std::size(pairs); ++i) {
      EXPECT_DOUBLE_EQ(pairs[i].first->per_second, pairs[i].second->per_second * factor) << "limit #" << i;
      EXPECT_DOUBLE_EQ(pairs[i].first->burst, pairs[i].second->burst * factor) << "limit #" << i;
    }
  }
};

TEST_F(ConfigTest, NoFlagsMeansInteractivePasswordCostAndDefaultRateLimits) {
  ServerConfig c = Parse({});
  EXPECT_EQ(c.core.password_cost, core::PasswordCost::kInteractive);
  EXPECT_EQ(c.admin.password_cost, core::PasswordCost::kInteractive);  // the admin bulk path too
  EXPECT_TRUE(c.admin.token.empty());                                  // admin API off
  ExpectLimits(c.core.rate_limits, core::RateLimits{}, 1);
  // The documented defaults themselves (docs/protocol.md, "Rate limits").
  EXPECT_DOUBLE_EQ(c.core.rate_limits.send_per_device.per_second, 50);
  EXPECT_DOUBLE_EQ(c.core.rate_limits.search_per_user.burst, 20);
  EXPECT_DOUBLE_EQ(c.core.rate_limits.social_per_user.per_second, 2);
}

TEST_F(ConfigTest, OtherOptionsNeverTurnOnTheInsecureOnes) {
  ServerConfig c = Parse({"--admin-token", "secret", "--admin-max-bulk-users", "50000", "--rate-limit",
                          "send_per_user=7/9", "--hash-threads", "4"});
  EXPECT_EQ(c.core.password_cost, core::PasswordCost::kInteractive);
  EXPECT_EQ(c.admin.password_cost, core::PasswordCost::kInteractive);
  core::RateLimits want;
  want.send_per_user = {7, 9};
  ExpectLimits(c.core.rate_limits, want, 1);
}

TEST_F(ConfigTest, FastHashingOnlyWhenGivenAndAloneDoesNotRelaxLimits) {
  ServerConfig c = Parse({"--insecure-fast-password-hashing"});
  EXPECT_EQ(c.core.password_cost, core::PasswordCost::kInsecureFast);
  EXPECT_EQ(c.admin.password_cost, core::PasswordCost::kInsecureFast);
  ExpectLimits(c.core.rate_limits, core::RateLimits{}, 1);
}

TEST_F(ConfigTest, RelaxedLimitsOnlyWhenGivenAndAloneKeepInteractiveHashing) {
  ServerConfig c = Parse({"--relaxed-rate-limits"});
  EXPECT_EQ(c.core.password_cost, core::PasswordCost::kInteractive);
  EXPECT_EQ(c.admin.password_cost, core::PasswordCost::kInteractive);
  ExpectLimits(c.core.rate_limits, core::RateLimits{}, 1000);
}

TEST_F(ConfigTest, TheEnvironmentVariablesAreExplicitToo) {
  setenv("PARLEY_INSECURE_FAST_PASSWORD_HASHING", "1", 1);
  setenv("PARLEY_RELAXED_RATE_LIMITS", "1", 1);
  ServerConfig on = Parse({});
  EXPECT_EQ(on.core.password_cost, core::PasswordCost::kInsecureFast);
  ExpectLimits(on.core.rate_limits, core::RateLimits{}, 1000);
  unsetenv("PARLEY_INSECURE_FAST_PASSWORD_HASHING");
  unsetenv("PARLEY_RELAXED_RATE_LIMITS");
  ServerConfig off = Parse({});
  EXPECT_EQ(off.core.password_cost, core::PasswordCost::kInteractive);
  ExpectLimits(off.core.rate_limits, core::RateLimits{}, 1);
}

// Retention (docs/operations.md "Retention"): off by default, with the
// documented step intervals and purge delay; the seconds options become ms.
TEST_F(ConfigTest, RetentionIsOffByDefaultAndItsOptionsAreInSeconds) {
  ServerConfig d = Parse({});
  EXPECT_EQ(d.core.retention.max_age_ms, 0);
  EXPECT_EQ(d.core.retention.expiry_interval_ms, 1000);
  EXPECT_EQ(d.core.retention.purge_delay_ms, 3600 * 1000);
  EXPECT_EQ(d.core.retention.purge_interval_ms, 10'000);
  ServerConfig c = Parse({"--retention-max-age-s", "86400", "--purge-delay-s", "0", "--expiry-interval-ms", "50",
                          "--purge-interval-ms", "75"});
  EXPECT_EQ(c.core.retention.max_age_ms, 86'400'000);
  EXPECT_EQ(c.core.retention.purge_delay_ms, 0);
  EXPECT_EQ(c.core.retention.expiry_interval_ms, 50);
  EXPECT_EQ(c.core.retention.purge_interval_ms, 75);
  setenv("PARLEY_RETENTION_MAX_AGE_S", "60", 1);
  EXPECT_EQ(Parse({}).core.retention.max_age_ms, 60'000);
  unsetenv("PARLEY_RETENTION_MAX_AGE_S");
}

// Stream trimming (docs/operations.md "Stream trimming"): on by default with
// a 30-day horizon and grace and a 100,000-entry cap; seconds become ms.
TEST_F(ConfigTest, StreamTrimmingKeepsThirtyDaysByDefaultAndItsOptionsAreInSeconds) {
  ServerConfig d = Parse({});
  constexpr int64_t kThirtyDaysMs = 30LL * 24 * 3600 * 1000;
  EXPECT_EQ(d.core.retention.stream_retention_ms, kThirtyDaysMs);
  EXPECT_EQ(d.core.retention.stream_device_grace_ms, kThirtyDaysMs);
  EXPECT_EQ(d.core.retention.stream_max_entries, 100'000);
  EXPECT_EQ(d.core.retention.stream_trim_interval_ms, 60'000);
  ServerConfig c = Parse({"--stream-retention-s", "1", "--stream-device-grace-s", "0", "--stream-max-entries", "0",
                          "--stream-trim-interval-ms", "50"});
  EXPECT_EQ(c.core.retention.stream_retention_ms, 1000);
  EXPECT_EQ(c.core.retention.stream_device_grace_ms, 0);
  EXPECT_EQ(c.core.retention.stream_max_entries, 0);
  EXPECT_EQ(c.core.retention.stream_trim_interval_ms, 50);
  setenv("PARLEY_STREAM_RETENTION_S", "60", 1);
  EXPECT_EQ(Parse({}).core.retention.stream_retention_ms, 60'000);
  unsetenv("PARLEY_STREAM_RETENTION_S");
}

// The cold tier (docs/operations.md "Cold tier"): 30 days by default, 0
// turns it off; seconds become ms.
TEST_F(ConfigTest, ColdTierDefaultsToThirtyDaysAndItsAgeIsInSeconds) {
  ServerConfig d = Parse({});
  EXPECT_EQ(d.core.retention.cold_after_ms, int64_t{30} * 24 * 3600 * 1000);
  EXPECT_EQ(d.core.retention.compact_interval_ms, 60'000);
  ServerConfig c = Parse({"--cold-after-s", "0", "--compact-interval-ms", "50"});
  EXPECT_EQ(c.core.retention.cold_after_ms, 0);
  EXPECT_EQ(c.core.retention.compact_interval_ms, 50);
  setenv("PARLEY_COLD_AFTER_S", "5", 1);
  EXPECT_EQ(Parse({}).core.retention.cold_after_ms, 5'000);
  unsetenv("PARLEY_COLD_AFTER_S");
}

// Admission (docs/operations.md, --max-queued-writes): on by default with
// its named bound; 0 turns it off; the environment variable works too; a
// negative bound is refused.
TEST_F(ConfigTest, TheStoreQueueBoundIsOnByDefaultAndZeroTurnsItOff) {
  EXPECT_EQ(Parse({}).core.max_queued_writes, core::CoreConfig::kDefaultMaxQueuedWrites);
  EXPECT_EQ(Parse({"--max-queued-writes", "0"}).core.max_queued_writes, 0);
  setenv("PARLEY_MAX_QUEUED_WRITES", "500", 1);
  EXPECT_EQ(Parse({}).core.max_queued_writes, 500);
  unsetenv("PARLEY_MAX_QUEUED_WRITES");
  std::vector<std::string> args = {"parleyd", "--max-queued-writes", "-1"};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  int exit_code = -1;
  EXPECT_FALSE(ParseConfig(static_cast<int>(argv.size()), argv.data(), &exit_code).has_value());
}

TEST_F(ConfigTest, MaxConnectionsDefaultsToTheFileLimitsShare) {
  EXPECT_EQ(Parse({}).gateway.max_connections, 0) << "0: the gateway derives it from the open-file limit";
  EXPECT_EQ(Parse({"--max-connections", "500"}).gateway.max_connections, 500);
  setenv("PARLEY_MAX_CONNECTIONS", "7", 1);
  EXPECT_EQ(Parse({}).gateway.max_connections, 7);
  unsetenv("PARLEY_MAX_CONNECTIONS");
}

// spdlog's level names, its own spellings "warning" and "err" too; anything
// else is refused at start (CLI11's exit code) rather than silencing the log.
TEST_F(ConfigTest, LogLevelTakesSpdlogsNamesAndRefusesOthers) {
  EXPECT_EQ(Parse({}).log_level, "info");
  for (const char* level : {"trace", "debug", "info", "warn", "warning", "error", "err", "critical", "off"})
    EXPECT_EQ(Parse({"--log-level", level}).log_level, level);
  std::vector<std::string> args = {"parleyd", "--log-level", "loud"};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  int exit_code = -1;
  EXPECT_FALSE(ParseConfig(static_cast<int>(argv.size()), argv.data(), &exit_code).has_value());
  EXPECT_NE(exit_code, -1);
  EXPECT_NE(exit_code, 0);
}

// Both follow the CPUs parleyd may use (its affinity); the readers at most
// kMaxDefaultSqliteReadConnections, and one when pinned to one CPU (the
// benchmark's parleyd, taskset to one core).
TEST_F(ConfigTest, SqliteReadConnectionsAndIoThreadsDefaults) {
  EXPECT_EQ(Parse({}).store.sqlite_read_connections,
            std::min(CpusAvailable(), store::kMaxDefaultSqliteReadConnections));
  EXPECT_EQ(Parse({}).gateway.io_threads, CpusAvailable());
  {
    cpu_set_t all;
    ASSERT_EQ(sched_getaffinity(0, sizeof(all), &all), 0);
    int first = 0;
    while (!CPU_ISSET(first, &all)) ++first;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(first, &one);
    ASSERT_EQ(sched_setaffinity(0, sizeof(one), &one), 0);
    ServerConfig pinned = Parse({});
    ASSERT_EQ(sched_setaffinity(0, sizeof(all), &all), 0);
    EXPECT_EQ(pinned.store.sqlite_read_connections, 1);
    EXPECT_EQ(pinned.gateway.io_threads, 1);
  }
  EXPECT_EQ(Parse({"--sqlite-read-connections", "4"}).store.sqlite_read_connections, 4);
  setenv("PARLEY_SQLITE_READ_CONNECTIONS", "3", 1);
  EXPECT_EQ(Parse({}).store.sqlite_read_connections, 3);
  unsetenv("PARLEY_SQLITE_READ_CONNECTIONS");
  for (const char* bad : {"0", "65"}) {
    std::vector<std::string> args = {"parleyd", "--sqlite-read-connections", bad};
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    int exit_code = -1;
    EXPECT_FALSE(ParseConfig(static_cast<int>(argv.size()), argv.data(), &exit_code).has_value()) << bad;
  }
}

// Redis's address and credentials (a cluster needs a PostgreSQL store): the
// password from the URL's userinfo (percent-decoded), or from
// --redis-password / PARLEY_REDIS_PASSWORD, which win over the URL.
TEST_F(ConfigTest, TheRedisPasswordComesFromTheUrlOrItsOptionWhichWins) {
  const std::string store = "postgresql://parley@localhost/parley";
  ServerConfig c = Parse({"--store", store, "--redis", "redis://:p%40ss@10.0.0.5:6380"});
  EXPECT_EQ(c.fabric.host, "10.0.0.5");
  EXPECT_EQ(c.fabric.port, 6380);
  EXPECT_EQ(c.fabric.username, "");
  EXPECT_EQ(c.fabric.password, "p@ss");
  c = Parse({"--store", store, "--redis", "redis://parley:pw@redis.internal"});
  EXPECT_EQ(c.fabric.host, "redis.internal");
  EXPECT_EQ(c.fabric.port, 6379);
  EXPECT_EQ(c.fabric.username, "parley");
  EXPECT_EQ(c.fabric.password, "pw");
  c = Parse({"--store", store, "--redis", "redis://[::1]:7000/"});
  EXPECT_EQ(c.fabric.host, "::1");
  EXPECT_EQ(c.fabric.port, 7000);
  EXPECT_EQ(c.fabric.password, "");
  c = Parse({"--store", store, "--redis", "redis://:old@h:1", "--redis-password", "new", "--redis-user", "u"});
  EXPECT_EQ(c.fabric.password, "new");
  EXPECT_EQ(c.fabric.username, "u");
  setenv("PARLEY_REDIS_PASSWORD", "from env", 1);
  EXPECT_EQ(Parse({"--store", store, "--redis", "10.0.0.5:6379"}).fabric.password, "from env");
  unsetenv("PARLEY_REDIS_PASSWORD");

  for (std::vector<std::string> bad : {
           std::vector<std::string>{"--redis", "redis://parley@h"},              // a user without a password
           std::vector<std::string>{"--redis", "redis://h:99999"},               // no such port
           std::vector<std::string>{"--redis", "redis://h/2"},                    // databases are not used
           std::vector<std::string>{"--redis", "h:6379", "--redis-user", "u"},  // a user without a password
       }) {
    bad.insert(bad.begin(), {"parleyd", "--store", store});
    std::vector<char*> argv;
    for (std::string& a : bad) argv.push_back(a.data());
    int exit_code = -1;
    EXPECT_FALSE(ParseConfig(static_cast<int>(argv.size()), argv.data(), &exit_code).has_value()) << bad[4];
  }
  // The error goes to the log: never the password.
  std::vector<std::string> args = {"parleyd", "--store", store, "--redis", "redis://:hunter2@h/0"};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  int exit_code = -1;
  auto refused = ParseConfig(static_cast<int>(argv.size()), argv.data(), &exit_code);
  ASSERT_FALSE(refused.has_value());
  EXPECT_EQ(refused.error().message().find("hunter2"), std::string::npos) << refused.error().message();
  EXPECT_NE(refused.error().message().find("redis://***@h/0"), std::string::npos) << refused.error().message();
}

}  // namespace
}  // namespace parley::server
