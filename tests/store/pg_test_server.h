// PgTestServer: the real PostgreSQL server the tests of this process use,
// started on first use by scripts/pg_test_server.sh (which installs
// PostgreSQL if it is missing, and runs it as the `postgres` user when we are
// root) in a temporary directory on a free port, and stopped when the
// process exits (a watchdog stops it too if the process is killed). Never
// skipped: if the server cannot start, every test that needs it fails.
//
// Each caller gets its own database (Database()), so tests never share data.
//
// A test that stops the server ("PostgreSQL gone for a while") starts one of
// its own with StartDedicated(), so that the other tests of the process keep
// theirs: HaltForTest() stops it at once (immediate shutdown, every session
// cut), ResumeForTest() starts it again on the same port and socket.
//
// Thread-safety: Get() and Database() may be called from any thread.
#pragma once

#include <libpq-fe.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>

#include <gtest/gtest.h>

#include "test_paths.h"

namespace parley::store::testing {

class PgTestServer {
 public:
  // The process's server, started on the first call. `ok()` false (and a
  // test failure recorded) if it could not start.
  static PgTestServer& Get() {
    static PgTestServer server;
    if (!server.ok()) ADD_FAILURE() << "PostgreSQL test server did not start: " << server.error_;
    return server;
  }

  // A server of the caller's own, stopped when it goes (check ok()).
  static std::unique_ptr<PgTestServer> StartDedicated() {
    return std::unique_ptr<PgTestServer>(new PgTestServer());
  }

  // Stops the server at once, keeping its data. Returns false on failure.
  bool HaltForTest() { return RunScript("halt"); }
  // Starts a halted server again (same port, socket and data).
  bool ResumeForTest() { return RunScript("resume"); }

  bool ok() const { return !url_.empty(); }
  // The `postgres` database (for administration).
  const std::string& admin_url() const { return url_; }
  const std::string& socket_dir() const { return dir_; }
  const std::string& port() const { return port_; }

  // The URL of database `name` (lower-case letters, digits, '_'), created
  // as a copy of `template_db` if it does not exist yet.
  std::string Database(const std::string& name, const std::string& template_db = "template0") {
    std::lock_guard lock(mu_);
    std::string url = UrlOf(name);
    PGconn* conn = PQconnectdb(url_.c_str());
    if (PQstatus(conn) != CONNECTION_OK) {
      ADD_FAILURE() << "cannot connect to the test server: " << PQerrorMessage(conn);
      PQfinish(conn);
      return url;
    }
    std::string check = "SELECT 1 FROM pg_database WHERE datname = '" + name + "'";
    PGresult* r = PQexec(conn, check.c_str());
    bool exists = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0;
    PQclear(r);
    if (!exists) {
      // FILE_COPY: with fsync off a plain file copy of template0 is the
      // fastest way to a fresh database.
      std::string create = "CREATE DATABASE " + name + " TEMPLATE " + template_db + " STRATEGY FILE_COPY";
      r = PQexec(conn, create.c_str());
      if (PQresultStatus(r) != PGRES_COMMAND_OK) ADD_FAILURE() << "CREATE DATABASE: " << PQerrorMessage(conn);
      PQclear(r);
    }
    PQfinish(conn);
    return url;
  }

  // The name of a template database prepared once per process by `init`
  // (called with its URL; it must close its connections before returning),
  // e.g. with a store's schema already migrated, so that each test's
  // database is a cheap file copy of it.
  template <typename Init>
  std::string Template(const std::string& name, Init&& init) {
    std::call_once(template_once_, [&] {
      std::string url = Database(name);
      init(url);
    });
    return name;
  }

  std::string UrlOf(const std::string& name) const {
    return "postgresql://postgres@/" + name + "?host=" + dir_ + "&port=" + port_;
  }

  PgTestServer(const PgTestServer&) = delete;
  PgTestServer& operator=(const PgTestServer&) = delete;
  // Stops the server and removes its directory.
  ~PgTestServer() {
    if (dir_.empty()) return;
    std::string cmd = parley::testing::SourceDir() + "/scripts/pg_test_server.sh stop " + dir_;
    if (std::system(cmd.c_str()) != 0) std::fprintf(stderr, "pg_test_server.sh stop failed\n");
  }

 private:
  PgTestServer() {
    std::string cmd = parley::testing::SourceDir() + "/scripts/pg_test_server.sh start --owner-pid " +
                      std::to_string(getpid());
    FILE* out = popen(cmd.c_str(), "r");
    if (out == nullptr) {
      error_ = "cannot run " + cmd;
      return;
    }
    std::string line;
    char buf[1024];
    while (fgets(buf, sizeof buf, out) != nullptr) line += buf;
    int rc = pclose(out);
    if (rc != 0) {
      error_ = "pg_test_server.sh start failed (see its stderr)";
      return;
    }
    dir_ = Field(line, "dir");
    port_ = Field(line, "port");
    url_ = Field(line, "url");
    if (url_.empty()) error_ = "unexpected output: " + line;
  }

  bool RunScript(const char* command) {
    if (dir_.empty()) return false;
    std::string cmd = parley::testing::SourceDir() + "/scripts/pg_test_server.sh " + command + " " + dir_;
    return std::system(cmd.c_str()) == 0;
  }

  // The value of `key=` in a line of space-separated KEY=VALUE pairs.
  static std::string Field(const std::string& line, const std::string& key) {
    size_t at = line.find(key + "=");
    while (at != std::string::npos && at > 0 && line[at - 1] != ' ') at = line.find(key + "=", at + 1);
    if (at == std::string::npos) return "";
    size_t start = at + key.size() + 1;
    size_t end = line.find_first_of(" \n", start);
    return line.substr(start, end == std::string::npos ? std::string::npos : end - start);
  }

  std::mutex mu_;
  std::once_flag template_once_;
  std::string dir_, port_, url_, error_;
};

}  // namespace parley::store::testing
