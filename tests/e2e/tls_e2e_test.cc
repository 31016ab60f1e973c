// TLS and browser hardening against a real parleyd (docs/operations.md,
// "TLS" and "Origin check"): certificates are made by the test with the
// openssl CLI; wss goes through the SDK (ConnectOptions::tls), https through
// curl. The reload test replaces the certificate files under a running
// server, sends SIGHUP and checks that open connections keep working while
// new ones get the new certificate, and that a bad file keeps the old one.
#include <signal.h>
#include <stdlib.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "e2e/helpers.h"
#include "e2e/server_process.h"
#include "sdk/sdk_test_util.h"
#include "test_paths.h"

namespace parley::testing {
namespace {

namespace fs = std::filesystem;

// The certificate's SHA-256 fingerprint as the SDK reports it (lower-case
// hex, no colons), computed by openssl.
std::string Fingerprint(const std::string& cert_file) {
  std::string out = Shell("openssl x509 -in '" + cert_file + "' -noout -fingerprint -sha256");
  std::string hex;
  for (char c : out.substr(out.find('=') + 1)) {
    if (c >= 'A' && c <= 'F') hex.push_back(static_cast<char>(c - 'A' + 'a'));
    if ((c >= 'a' && c <= 'f') || (c >= '0' && c <= '9')) hex.push_back(c);
  }
  EXPECT_EQ(hex.size(), 64u) << out;
  return hex;
}

// Puts <base>.crt/.key in place as the server's files, each by an atomic
// rename (what a deploy tool or certbot hook does).
void Install(const std::string& base, const std::string& cert, const std::string& key) {
  fs::copy_file(base + ".crt", cert + ".new", fs::copy_options::overwrite_existing);
  fs::copy_file(base + ".key", key + ".new", fs::copy_options::overwrite_existing);
  fs::rename(cert + ".new", cert);
  fs::rename(key + ".new", key);
}

struct CurlReply {
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
};

// One request with curl (-k never: https is verified against `ca_file`).
CurlReply Curl(const std::string& url, const std::string& ca_file, const std::string& extra_args = "") {
  static int counter = 0;
  std::string head = "/tmp/parley-tls-curl-" + std::to_string(getpid()) + "-" + std::to_string(++counter);
  std::string cmd = "curl -sS --max-time 10 -D '" + head + "' " +
                    (ca_file.empty() ? std::string() : "--cacert '" + ca_file + "' ") + extra_args + " '" + url + "'";
  int rc = 0;
  CurlReply r;
  r.body = Shell(cmd, &rc);
  EXPECT_EQ(rc, 0) << cmd;
  std::ifstream in(head);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.rfind("HTTP/", 0) == 0) {
      r.status = std::stoi(line.substr(line.find(' ') + 1));
      r.headers.clear();
      continue;
    }
    auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string name = line.substr(0, colon);
    for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    r.headers[name] = line.substr(line.find_first_not_of(' ', colon + 1));
  }
  fs::remove(head);
  return r;
}

ConnectOptions Wss(const std::string& ca_file) {
  ConnectOptions o;
  o.tls = true;
  o.ca_file = ca_file;
  return o;
}

std::unique_ptr<Connection> Open(ServerProcess& s, ConnectOptions o, std::string* error = nullptr) {
  o.port = s.port();
  std::string err;
  auto c = Connection::Open(o, &err);
  if (error) *error = err;
  return c;
}

// Sends `body` from `from` to `to_user` and waits until `to` gets it.
void Exchange(Device& from, Device& to, const std::string& to_user, const std::string& body) {
  static int next_client_id = 0;
  auto r = from.conn->Call("send", {{"to", to_user}, {"client_id", "tls-" + std::to_string(++next_client_id)},
                                    {"body", body}});
  ASSERT_TRUE(r.ok) << r.code << ": " << r.message;
  auto e = WaitEvent(*to.conn, IsMessage(r.result["seq"]));
  ASSERT_TRUE(e.has_value()) << body;
  EXPECT_EQ((*e)["message"]["body"], body);
}

// Polls until a fresh connection is served the certificate `want` (SIGHUP
// is handled asynchronously); returns what the last connection saw.
std::string WaitForServedCertificate(ServerProcess& s, const std::string& want) {
  ConnectOptions any = Wss("");
  any.verify_peer = false;
  std::string seen;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < deadline) {
    auto c = Open(s, any);
    if (c) seen = c->peer_certificate_sha256();
    if (seen == want) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return seen;
}

double WaitForMetric(uint16_t port, const std::string& ca, const std::string& sample, double want) {
  double v = -1;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < deadline) {
    v = MetricValue(Curl("https://127.0.0.1:" + std::to_string(port) + "/metrics", ca).body, sample);
    if (v == want) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return v;
}

TEST(TlsE2E, WssWorksEndToEndAndAReloadKeepsOpenConnections) {
  TempDir dir;
  const std::string cert = dir / "server.crt", key = dir / "server.key";
  MakeCertificate(dir / "first");
  MakeCertificate(dir / "second");
  const std::string first = Fingerprint(dir / "first.crt"), second = Fingerprint(dir / "second.crt");
  ASSERT_NE(first, second);
  Install(dir / "first", cert, key);

  ServerProcess server({"--tls-cert", cert, "--tls-key", key});
  server.set_connect_options(Wss(dir / "first.crt"));
  Register(server, "alice");
  Register(server, "bob");
  Device a = Login(server, "alice");
  Device b = Login(server, "bob");
  ASSERT_TRUE(a.conn && b.conn);
  EXPECT_EQ(a.conn->peer_certificate_sha256(), first);
  Exchange(a, b, "bob", "over wss");
  Exchange(b, a, "alice", "and back");

  // The listener speaks TLS only: a plain WebSocket gets no handshake.
  ConnectOptions plain;
  plain.timeout_ms = 2000;
  std::string err;
  EXPECT_EQ(Open(server, plain, &err), nullptr);
  // The SDK verifies the server: a CA that did not sign it is refused.
  EXPECT_EQ(Open(server, Wss(dir / "second.crt"), &err), nullptr);
  EXPECT_NE(err.find("certificate verify failed"), std::string::npos) << err;

  // Reload: new files in place, SIGHUP.
  Install(dir / "second", cert, key);
  ASSERT_EQ(kill(server.pid(), SIGHUP), 0);
  EXPECT_EQ(WaitForServedCertificate(server, second), second);
  EXPECT_EQ(WaitForMetric(server.port(), dir / "second.crt", "parley_tls_reloads_total{result=\"ok\"}", 1), 1);
  // Open connections were not dropped and still carry messages both ways,
  // on the certificate they started with.
  EXPECT_FALSE(a.conn->closed());
  EXPECT_FALSE(b.conn->closed());
  Exchange(a, b, "bob", "after the reload");
  Exchange(b, a, "alice", "still here");
  EXPECT_EQ(a.conn->peer_certificate_sha256(), first);
  // New connections: the old CA no longer verifies, the new one does, and
  // the device's token works over it.
  EXPECT_EQ(Open(server, Wss(dir / "first.crt"), &err), nullptr);
  server.set_connect_options(Wss(dir / "second.crt"));
  Device a2 = Reconnect(server, a);
  ASSERT_TRUE(a2.conn);
  EXPECT_EQ(a2.conn->peer_certificate_sha256(), second);
  Exchange(b, a2, "alice", "to the new connection");

  // A bad reload keeps the certificate in use: a broken PEM, then a key
  // that does not match the certificate.
  std::ofstream(cert + ".new") << "-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n";
  fs::rename(cert + ".new", cert);
  ASSERT_EQ(kill(server.pid(), SIGHUP), 0);
  EXPECT_EQ(WaitForMetric(server.port(), dir / "second.crt", "parley_tls_reloads_total{result=\"error\"}", 1), 1);
  MakeCertificate(dir / "third");
  fs::copy_file(dir / "third.crt", cert, fs::copy_options::overwrite_existing);  // key stays second's
  ASSERT_EQ(kill(server.pid(), SIGHUP), 0);
  EXPECT_EQ(WaitForMetric(server.port(), dir / "second.crt", "parley_tls_reloads_total{result=\"error\"}", 2), 2);
  auto after_bad = Open(server, Wss(dir / "second.crt"), &err);
  ASSERT_NE(after_bad, nullptr) << err;
  EXPECT_EQ(after_bad->peer_certificate_sha256(), second);
  Exchange(a, b, "bob", "after the bad reloads");
  EXPECT_EQ(MetricValue(Curl("https://127.0.0.1:" + std::to_string(server.port()) + "/metrics", dir / "second.crt").body,
                        "parley_tls_reloads_total{result=\"ok\"}"),
            1);
}

TEST(TlsE2E, StartFailsClearlyOnUnusableCertificateFiles) {
  TempDir dir;
  MakeCertificate(dir / "one");
  MakeCertificate(dir / "two");
  struct Case {
    std::vector<std::string> args;
    std::string expect;
  } cases[] = {
      {{"--tls-cert", dir / "missing.crt", "--tls-key", dir / "one.key"}, "tls certificate"},
      {{"--tls-cert", dir / "one.crt", "--tls-key", dir / "two.key"}, "key values mismatch"},
      {{"--tls-cert", dir / "one.crt"}, "go together"},
      {{"--allowed-origins", "https://ok.example,example.org"}, "--allowed-origins"},
  };
  for (const auto& c : cases) {
    std::string cmd = parley::testing::BinDir() + "/parleyd --listen 127.0.0.1:0 --data-dir '" + (dir / "data") +
                      "' --web-root none";
    for (const auto& a : c.args) cmd += " '" + a + "'";
    int rc = 0;
    std::string out = Shell(cmd + " 2>&1 </dev/null", &rc);
    EXPECT_NE(rc, 0) << cmd;
    EXPECT_NE(out.find(c.expect), std::string::npos) << out;
  }
}

// The security headers every HTTP response carries, HSTS with TLS.
void ExpectSecurityHeaders(const CurlReply& r, bool tls, const std::string& what) {
  auto get = [&](const std::string& h) { return r.headers.count(h) ? r.headers.at(h) : std::string(); };
  EXPECT_EQ(get("x-content-type-options"), "nosniff") << what;
  EXPECT_EQ(get("referrer-policy"), "no-referrer") << what;
  EXPECT_EQ(get("x-frame-options"), "DENY") << what;
  std::string csp = get("content-security-policy");
  EXPECT_NE(csp.find("frame-ancestors 'none'"), std::string::npos) << what << ": " << csp;
  EXPECT_EQ(csp.find("unsafe-inline"), std::string::npos) << what << ": " << csp;
  EXPECT_EQ(csp.find("unsafe-eval"), std::string::npos) << what << ": " << csp;
  if (tls) {
    EXPECT_EQ(get("strict-transport-security"), "max-age=31536000") << what;
  } else {
    EXPECT_EQ(get("strict-transport-security"), "") << what;
  }
}

TEST(TlsE2E, HttpsServesHealthzAndTheWebClientWithSecurityHeaders) {
  TempDir dir;
  MakeCertificate(dir / "server");
  ServerProcess server({"--tls-cert", dir / "server.crt", "--tls-key", dir / "server.key", "--web-root",
                        parley::testing::SourceDir() + "/web"});
  const std::string base = "https://127.0.0.1:" + std::to_string(server.port());
  const std::string ca = dir / "server.crt";

  CurlReply health = Curl(base + "/healthz", ca);
  EXPECT_EQ(health.status, 200);
  EXPECT_EQ(health.body, "ok\n");
  ExpectSecurityHeaders(health, true, "/healthz");
  EXPECT_EQ(health.headers["content-security-policy"].find("default-src 'none'"), 0u);

  CurlReply index = Curl(base + "/", ca);
  EXPECT_EQ(index.status, 200);
  EXPECT_NE(index.body.find("<html"), std::string::npos);
  ExpectSecurityHeaders(index, true, "/");
  // The app's policy: scripts, styles and the WebSocket from this origin only.
  const std::string& csp = index.headers["content-security-policy"];
  EXPECT_NE(csp.find("script-src 'self'"), std::string::npos) << csp;
  EXPECT_NE(csp.find("connect-src 'self'"), std::string::npos) << csp;
  // The page itself has no inline script for the policy to block.
  EXPECT_EQ(index.body.find("<script>"), std::string::npos);

  for (const char* file : {"/js/app.js", "/css/app.css", "/sw.js", "/manifest.webmanifest", "/missing.js"}) {
    CurlReply r = Curl(base + file, ca);
    EXPECT_EQ(r.status, std::string(file) == "/missing.js" ? 404 : 200) << file;
    ExpectSecurityHeaders(r, true, file);
  }

  // Plain HTTP to the TLS port gets no answer (TLS only).
  int rc = 0;
  Shell("curl -sS --max-time 5 -o /dev/null http://127.0.0.1:" + std::to_string(server.port()) + "/healthz 2>&1", &rc);
  EXPECT_NE(rc, 0);
  // Without the CA, curl refuses the self-signed certificate: this is TLS
  // with a real certificate check, not a pass-through.
  Shell("curl -sS --max-time 5 -o /dev/null " + base + "/healthz 2>&1", &rc);
  EXPECT_NE(rc, 0);
}

TEST(TlsE2E, PlainHttpResponsesCarryTheSecurityHeadersWithoutHsts) {
  ServerProcess server({"--web-root", parley::testing::SourceDir() + "/web"});
  const std::string base = "http://127.0.0.1:" + std::to_string(server.port());
  for (const char* path : {"/", "/healthz", "/metrics", "/js/app.js", "/nowhere"}) {
    CurlReply r = Curl(base + path, "");
    ExpectSecurityHeaders(r, false, path);
  }
}

// A WebSocket upgrade by hand (curl), with the given Origin header ("" none).
CurlReply Upgrade(const std::string& base, const std::string& ca, const std::string& origin) {
  std::string headers =
      "-H 'Connection: Upgrade' -H 'Upgrade: websocket' -H 'Sec-WebSocket-Version: 13' "
      "-H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' --max-time 2 ";
  if (!origin.empty()) headers += "-H 'Origin: " + origin + "' ";
  std::string head = "/tmp/parley-tls-upgrade-" + std::to_string(getpid());
  std::string cmd = "curl -sS -D '" + head + "' " + (ca.empty() ? std::string() : "--cacert '" + ca + "' ") +
                    headers + "'" + base + "/v1/ws'";
  CurlReply r;
  r.body = Shell(cmd + " 2>/dev/null");  // a 101 ends in a timeout: the status line is what counts
  std::ifstream in(head);
  std::string line;
  if (std::getline(in, line) && line.rfind("HTTP/", 0) == 0) r.status = std::stoi(line.substr(line.find(' ') + 1));
  fs::remove(head);
  return r;
}

TEST(OriginE2E, ForeignOriginsAreRefusedWith403AndAllowedOnesConnect) {
  TempDir dir;
  MakeCertificate(dir / "server");
  const std::string ca = dir / "server.crt";
  ServerProcess server({"--tls-cert", ca, "--tls-key", dir / "server.key", "--allowed-origins",
                        "https://app.example.com,http://localhost:3000"});
  const std::string port = std::to_string(server.port());
  const std::string base = "https://127.0.0.1:" + port;
  server.set_connect_options(Wss(ca));
  Register(server, "alice");

  CurlReply refused = Upgrade(base, ca, "https://evil.example");
  EXPECT_EQ(refused.status, 403);
  EXPECT_NE(refused.body.find("origin not allowed"), std::string::npos) << refused.body;
  EXPECT_EQ(Upgrade(base, ca, "null").status, 403);
  EXPECT_EQ(Upgrade(base, ca, "https://app.example.com.evil.example").status, 403);
  EXPECT_EQ(Upgrade(base, ca, "https://127.0.0.1:1").status, 403);  // same host, another port
  EXPECT_EQ(Upgrade(base, ca, "https://app.example.com").status, 101);
  EXPECT_EQ(Upgrade(base, ca, "").status, 101);

  // Through the SDK, as a browser page would: listed, same-origin, none.
  auto connect_with = [&](const std::string& origin) {
    ConnectOptions o = Wss(ca);
    o.origin = origin;
    std::string err;
    auto c = Open(server, o, &err);
    if (!c) return false;
    auto r = c->Call("login", {{"username", "alice"}, {"password", "correct horse"}, {"device_name", "web"},
                               {"platform", "gtest"}});
    EXPECT_TRUE(r.ok) << origin << ": " << r.code;
    return r.ok;
  };
  EXPECT_TRUE(connect_with("https://APP.example.com"));
  EXPECT_TRUE(connect_with("http://localhost:3000"));
  EXPECT_TRUE(connect_with("https://127.0.0.1:" + port));
  EXPECT_TRUE(connect_with(""));
  EXPECT_FALSE(connect_with("https://evil.example"));
  EXPECT_FALSE(connect_with("http://localhost:3001"));

  std::string metrics = Curl(base + "/metrics", ca).body;
  EXPECT_EQ(MetricValue(metrics, "parley_ws_origin_refused_total"), 6);
}

TEST(OriginE2E, DefaultAllowsOnlyTheSameOriginAndClientsWithoutOne) {
  ServerProcess server;
  const std::string port = std::to_string(server.port());
  const std::string base = "http://127.0.0.1:" + port;
  EXPECT_EQ(Upgrade(base, "", "http://127.0.0.1:" + port).status, 101);
  EXPECT_EQ(Upgrade(base, "", "").status, 101);
  EXPECT_EQ(Upgrade(base, "", "https://app.example.com").status, 403);
  EXPECT_EQ(Upgrade(base, "", "http://localhost:" + port).status, 403);  // another host name is another origin
  EXPECT_EQ(MetricValue(HttpGet(server.port(), "/metrics"), "parley_ws_origin_refused_total"), 2);
}

}  // namespace
}  // namespace parley::testing
