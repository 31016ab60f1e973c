// A restart of parleyd with 5,000 connected SDK devices: the devices come
// back spread over the window the server announced (close 4001 with
// {"retry_after_ms":N}: the SDK waits N plus up to 100 % jitter), and every
// device resumes with nothing missed. Devices are bulk-provisioned through
// the admin API and run in several sdk_fleet_helper processes.
#include <poll.h>

#include <fstream>

#include "sdk/sdk_test_util.h"

namespace parley::testing {
namespace {

constexpr int kDevices = 5000;
constexpr int kProcesses = 4;  // 1,250 devices (2,500 threads, 1,250 sockets) each
constexpr int64_t kRetryAfterMs = 3000;
constexpr int64_t kBucketMs = 100;
constexpr int kMessaged = 100;  // devices that get a message while they are away
constexpr int kReadTimeoutMs = 150000;
const char* const kAdminToken = "fleet-admin-token";

struct Helper {
  pid_t pid = -1;
  int in = -1;   // its stdin
  int out = -1;  // its stdout
  std::string buffered;

  // One line from its stdout, or "" on timeout/EOF.
  std::string ReadLine(int timeout_ms) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (true) {
      auto nl = buffered.find('\n');
      if (nl != std::string::npos) {
        std::string line = buffered.substr(0, nl);
        buffered.erase(0, nl + 1);
        return line;
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
      if (left <= 0) return "";
      pollfd p{out, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(left)) <= 0) continue;
      char buf[65536];
      ssize_t n = read(out, buf, sizeof buf);
      if (n <= 0) return "";
      buffered.append(buf, static_cast<size_t>(n));
    }
  }
};

Helper SpawnHelper(uint16_t port, const std::string& tokens, int first, int count) {
  Helper h;
  int to_child[2], from_child[2];
  if (pipe(to_child) != 0 || pipe(from_child) != 0) return h;
  std::vector<std::string> args = {std::string(PARLEY_BIN_DIR) + "/sdk_fleet_helper", std::to_string(port), tokens,
                                   std::to_string(first), std::to_string(count)};
  pid_t parent = getpid();
  h.pid = fork();
  if (h.pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    dup2(to_child[0], 0);
    dup2(from_child[1], 1);
    close(to_child[1]);
    close(from_child[0]);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execve(argv[0], argv.data(), environ);
    _exit(127);
  }
  close(to_child[0]);
  close(from_child[1]);
  h.in = to_child[1];
  h.out = from_child[0];
  return h;
}

TEST(ReconnectSpreadE2E, FiveThousandDevicesReconnectAcrossTheAnnouncedWindowAndMissNothing) {
  ServerProcess s({"--admin-token", kAdminToken, "--shutdown-retry-after-ms", std::to_string(kRetryAfterMs)});
  TempDir dir;

  // Bulk provisioning: users without passwords, one device token each.
  json users = json::array();
  for (int i = 0; i < kDevices; ++i) users.push_back({{"username", "fleet" + std::to_string(i)}});
  int status = 0;
  std::string resp = HttpPost(s.port(), "/admin/v1/users/bulk",
                              json{{"devices", true}, {"device_name", "fleet"}, {"users", users}}.dump(),
                              std::string("Bearer ") + kAdminToken, &status);
  ASSERT_EQ(status, 200) << resp.substr(0, 300);
  json created = json::parse(resp);
  ASSERT_EQ(created["users"].size(), static_cast<size_t>(kDevices));
  std::string tokens = dir / "tokens";
  {
    std::ofstream out(tokens);
    for (auto& u : created["users"]) out << u["token"].get<std::string>() << "\n";
  }
  Register(s, "sender");

  std::vector<Helper> helpers;
  constexpr int kPer = kDevices / kProcesses;
  for (int p = 0; p < kProcesses; ++p) helpers.push_back(SpawnHelper(s.port(), tokens, p * kPer, kPer));
  for (auto& h : helpers) {
    ASSERT_GT(h.pid, 0);
    ASSERT_EQ(h.ReadLine(kReadTimeoutMs), "online");
  }

  // The restart: SIGTERM closes every connection with 4001 and the window.
  ASSERT_EQ(s.Terminate(), 0);
  s.Start();
  // Events the devices miss while away (sent before the window opens).
  Device sender = Login(s, "sender");
  std::vector<int64_t> ids;
  for (int i = 0; i < kMessaged; ++i) {
    ids.push_back(sender.conn->Start("send", {{"to", "fleet" + std::to_string(i * (kDevices / kMessaged))},
                                              {"client_id", "away-" + std::to_string(i)}, {"body", "while you were away"}}));
  }
  for (auto id : ids) ASSERT_TRUE(sender.conn->Await(id, 30000).ok);

  std::vector<int64_t> closed, attempts;
  int resumed = 0, received = 0;
  for (auto& h : helpers) {
    ASSERT_EQ(write(h.in, "check\n", 6), 6);
    std::string line = h.ReadLine(kReadTimeoutMs);
    json r = json::parse(line, nullptr, false);
    ASSERT_TRUE(r.is_object()) << line;
    EXPECT_TRUE(r["errors"].empty()) << r["errors"].dump().substr(0, 1000);
    for (auto& v : r["closed_ms"]) closed.push_back(v);
    for (auto& v : r["attempt_ms"]) attempts.push_back(v);
    resumed += r["resumed"].get<int>();
    received += r["received"].get<int>();
    int st;
    waitpid(h.pid, &st, 0);
  }
  EXPECT_EQ(resumed, kDevices);
  EXPECT_EQ(received, kMessaged);

  // Reconnect attempts relative to the first close, in 100 ms buckets.
  ASSERT_EQ(attempts.size(), static_cast<size_t>(kDevices));
  int64_t t0 = *std::min_element(closed.begin(), closed.end());
  ASSERT_GT(t0, 0);
  std::map<int64_t, int> buckets;
  for (size_t i = 0; i < attempts.size(); ++i) {
    ASSERT_GT(attempts[i], 0) << "device " << i << " never reconnected";
    EXPECT_GE(attempts[i] - closed[i], kRetryAfterMs) << "device " << i << " came back before the window";
    ++buckets[(attempts[i] - t0) / kBucketMs];
  }
  int max_bucket = 0, used = 0;
  for (auto& [b, n] : buckets) {
    max_bucket = std::max(max_bucket, n);
    if (b >= kRetryAfterMs / kBucketMs && b < 2 * kRetryAfterMs / kBucketMs) ++used;
  }
  EXPECT_LE(max_bucket, kDevices / 20) << "a 100 ms bucket holds more than 5 % of the reconnects";
  EXPECT_GE(used, static_cast<int>(kRetryAfterMs / kBucketMs) * 8 / 10) << "the reconnects use less than 80 % of the window";
}

}  // namespace
}  // namespace parley::testing
