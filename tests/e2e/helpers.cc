#include "e2e/helpers.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>

#include <cstdio>
#include <regex>
#include <set>
#include <sstream>

#include "net/http_client.h"

namespace parley::testing {

namespace {
std::string BodyOf(const netutil::HttpResponse& r, int* status) {
  if (status) *status = r.status;
  return r.body;
}
}  // namespace

std::string HttpGet(uint16_t port, const std::string& path, int* status) {
  return BodyOf(netutil::HttpGet(netutil::HttpEndpoint::Loopback(port), path), status);
}

std::string HttpGetAuthorized(uint16_t port, const std::string& path, const std::string& authorization, int* status) {
  return BodyOf(netutil::HttpGet(netutil::HttpEndpoint::Loopback(port), path, authorization), status);
}

std::string HttpPost(uint16_t port, const std::string& path, const std::string& body, const std::string& authorization,
                     int* status) {
  return BodyOf(netutil::HttpPost(netutil::HttpEndpoint::Loopback(port), path, body, authorization), status);
}

double MetricSum(const std::string& text, const std::string& name) {
  std::istringstream in(text);
  std::string line;
  double sum = 0;
  while (std::getline(in, line)) {
    if (line.rfind(name, 0) != 0 || line.size() <= name.size()) continue;
    char next = line[name.size()];
    if (next != ' ' && next != '{') continue;
    sum += std::stod(line.substr(line.rfind(' ') + 1));
  }
  return sum;
}

std::vector<std::string> PrometheusFormatProblems(const std::string& text) {
  static const std::regex kSample(R"(^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[a-zA-Z_][a-zA-Z0-9_]*="[^"]*"(,[a-zA-Z_][a-zA-Z0-9_]*="[^"]*")*\})? (-?[0-9.e+]+|\+Inf|NaN)$)");
  static const std::regex kMeta(R"(^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.+)$)");
  std::vector<std::string> problems;
  std::set<std::string> typed;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    std::smatch m;
    if (line.empty()) continue;
    if (line[0] == '#') {
      if (!std::regex_match(line, m, kMeta)) problems.push_back("bad comment: " + line);
      else if (m[1] == "TYPE") typed.insert(m[2]);
      continue;
    }
    if (!std::regex_match(line, m, kSample)) {
      problems.push_back("bad sample: " + line);
      continue;
    }
    std::string name = m[1];
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
      std::string s(suffix);
      if (!typed.count(name) && name.size() > s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0)
        name = name.substr(0, name.size() - s.size());
    }
    if (!typed.count(name)) problems.push_back("sample before its TYPE: " + line);
  }
  return problems;
}

double MetricValue(const std::string& text, const std::string& sample) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(sample + " ", 0) == 0) return std::stod(line.substr(sample.size() + 1));
  }
  return -1;
}

std::string Shell(const std::string& cmd, int* rc) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) {
    if (rc) *rc = -1;
    return out;
  }
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int status = pclose(p);
  if (rc) *rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return out;
}

namespace {
// The number `cmd` (a database's command-line client) prints.
int64_t NumberPrintedBy(const std::string& cmd) {
  int rc = 0;
  std::string out = Shell(cmd, &rc);
  EXPECT_EQ(rc, 0) << cmd << ": " << out;
  try {
    return std::stoll(out);
  } catch (const std::exception&) {
    ADD_FAILURE() << cmd << " printed '" << out << "'";
    return -1;
  }
}
}  // namespace

int64_t StoreCount(const ServerProcess& s, const std::string& sql) {
  return s.postgres_url().empty()
             ? NumberPrintedBy("sqlite3 -readonly '" + s.dir() + "/data/parley.db' \"" + sql + "\"")
             : PostgresNumber(s.postgres_url(), sql);
}

int64_t SearchIndexCount(const ServerProcess& s, const std::string& sql) {
  // SQLite keeps the index in a file of its own (sqlite_search.h).
  return s.postgres_url().empty()
             ? NumberPrintedBy("sqlite3 -readonly '" + s.dir() + "/data/parley.db.search' \"" + sql + "\"")
             : PostgresNumber(s.postgres_url(), sql);
}

int64_t PostgresNumber(const std::string& url, const std::string& sql) {
  return NumberPrintedBy("psql '" + url + "' -tAc \"" + sql + "\"");
}

void MakeCertificate(const std::string& base) {
  int rc = 0;
  std::string out = Shell("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 "
                          "-subj /CN=localhost -addext subjectAltName=IP:127.0.0.1,DNS:localhost -keyout '" +
                              base + ".key' -out '" + base + ".crt' 2>&1",
                          &rc);
  ASSERT_EQ(rc, 0) << out;
}

int TcpConnect(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    int err = errno;
    ::close(fd);
    errno = err;
    return -1;
  }
  return fd;
}

bool ReadableNow(int fd) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, 0) > 0;
}

std::string ReadUntilClosed(int fd, int timeout_ms) {
  std::string got;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return got;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) return got;
    char buf[4096];
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) return got;  // closed (or reset)
    got.append(buf, static_cast<size_t>(n));
  }
}

}  // namespace parley::testing
