// Helpers shared by the end-to-end tests: accounts, logged-in devices, waiting
// for events, fetching /metrics.
#pragma once

#include <chrono>
#include <functional>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "e2e/server_process.h"
#include "parley/connection.h"

namespace parley::testing {

using nlohmann::json;

struct Device {
  std::unique_ptr<Connection> conn;
  int64_t user_id = 0;
  int64_t device_id = 0;
  std::string token;
  int64_t head = 0;
};

inline void Register(ServerProcess& s, const std::string& user, const std::string& password = "correct horse") {
  auto c = s.Connect();
  auto r = c->Call("register", {{"username", user}, {"password", password}});
  ASSERT_TRUE(r.ok) << r.code << ": " << r.message;
}

inline Device Login(ServerProcess& s, const std::string& user, const std::string& device_name = "test",
                    const std::string& password = "correct horse") {
  Device d;
  d.conn = s.Connect();
  auto r = d.conn->Call("login", {{"username", user}, {"password", password}, {"device_name", device_name},
                                  {"platform", "gtest"}});
  EXPECT_TRUE(r.ok) << r.code << ": " << r.message;
  if (!r.ok) return d;
  d.user_id = r.result["user_id"];
  d.device_id = r.result["device_id"];
  d.token = r.result["token"];
  d.head = r.result["head"];
  return d;
}

// A fresh connection for an existing device token.
inline Device Reconnect(ServerProcess& s, const Device& old) {
  Device d;
  d.conn = s.Connect();
  auto r = d.conn->Call("auth", {{"token", old.token}});
  EXPECT_TRUE(r.ok) << r.code << ": " << r.message;
  d.user_id = old.user_id;
  d.device_id = old.device_id;
  d.token = old.token;
  if (r.ok) d.head = r.result["head"];
  return d;
}

// Waits for the next server-initiated frame (event, typing...) matching
// `pred`, skipping others. Returns the whole frame.
inline std::optional<json> WaitFrame(Connection& c, const std::function<bool(const json&)>& pred,
                                     int timeout_ms = 5000) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (true) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return std::nullopt;
    auto f = c.NextEvent(static_cast<int>(left.count()));
    if (!f) return std::nullopt;
    if (pred(*f)) return f;
  }
}

// Waits for the next stream event matching `pred`. Returns the event object.
inline std::optional<json> WaitEvent(Connection& c, const std::function<bool(const json&)>& pred,
                                     int timeout_ms = 5000) {
  auto f = WaitFrame(c, [&](const json& frame) { return frame["type"] == "event" && pred(frame["event"]); }, timeout_ms);
  if (!f) return std::nullopt;
  return (*f)["event"];
}

inline std::function<bool(const json&)> IsMessage(int64_t seq) {
  return [seq](const json& e) { return e["kind"] == "message" && e["message"]["seq"] == seq; };
}

inline std::function<bool(const json&)> IsReceipt(int64_t user_id, const std::string& field, int64_t at_least) {
  return [=](const json& e) { return e["kind"] == "receipt" && e["user_id"] == user_id && e[field] >= at_least; };
}

// Pulls the whole stream after `after` through sync pages; returns the events.
inline std::vector<json> SyncAll(Connection& c, int64_t after, int limit = 200) {
  std::vector<json> out;
  for (int guard = 0; guard < 100000; ++guard) {
    auto r = c.Call("sync", {{"after", after}, {"limit", limit}});
    EXPECT_TRUE(r.ok) << r.code << ": " << r.message;
    if (!r.ok) break;
    for (auto& e : r.result["events"]) out.push_back(e);
    after = r.result["next"];
    if (!r.result["has_more"].get<bool>()) break;
  }
  return out;
}

// Polls `pred` every 10 ms until it holds or timeout_ms passes.
template <typename Pred>
bool Eventually(Pred pred, int timeout_ms) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (!pred()) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

// GET http://127.0.0.1:port/path (src/net/http_client.h); returns the body ("" on failure).
std::string HttpGet(uint16_t port, const std::string& path, int* status = nullptr);
// GET with an Authorization header (e.g. "Bearer TOKEN" for the admin API).
std::string HttpGetAuthorized(uint16_t port, const std::string& path, const std::string& authorization,
                              int* status = nullptr);
// POST with a body and an Authorization header; returns the response body.
std::string HttpPost(uint16_t port, const std::string& path, const std::string& body, const std::string& authorization,
                     int* status = nullptr);
// The value of one Prometheus sample line (name with labels exactly), or -1.
double MetricValue(const std::string& metrics_text, const std::string& sample);
// The sum of every sample of metric `name`, whatever its labels (0 if none).
double MetricSum(const std::string& metrics_text, const std::string& name);
// Problems with `metrics_text` as Prometheus text format 0.0.4 (empty: none):
// each sample line is `name[{labels}] value`, each name has HELP and TYPE
// lines before its first sample, values are numbers.
std::vector<std::string> PrometheusFormatProblems(const std::string& metrics_text);

// A plain TCP connection to 127.0.0.1:port; -1 with errno set when refused.
int TcpConnect(uint16_t port);
// Whether `fd` has something to read now (data, or the peer's close): a
// connection the server answered and closed at once, as past its
// --max-connections.
bool ReadableNow(int fd);
// Everything `fd` reads until the peer closes or `timeout_ms` passes.
std::string ReadUntilClosed(int fd, int timeout_ms);

// Runs a shell command; returns its stdout (and the exit status in *rc).
std::string Shell(const std::string& cmd, int* rc = nullptr);
// One number from the server's database (SQLite file or PostgreSQL), read
// with the command-line client, as an operator would check it; -1 (and a
// test failure) if it prints something else.
int64_t StoreCount(const ServerProcess& s, const std::string& sql);
// Like StoreCount, over message search's index: with SQLite its own file
// (parley.db.search), with PostgreSQL the store's database.
int64_t SearchIndexCount(const ServerProcess& s, const std::string& sql);
// The same from the PostgreSQL database at `url` (a cluster's, which no one
// ServerProcess owns), read with psql.
int64_t PostgresNumber(const std::string& url, const std::string& sql);
// A fresh self-signed certificate (EC P-256) for 127.0.0.1 and localhost,
// made with the openssl CLI: <base>.crt and <base>.key.
void MakeCertificate(const std::string& base);

}  // namespace parley::testing
