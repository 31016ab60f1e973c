// parley-check: the delivery checker (docs/checker.md).
//
//   parley-check --histories DIR (--server http://HOST:PORT --admin-token TOKEN | --state FILE)
//                [--save-state FILE] [--json] [--max-findings N]
//
// Exit status: 0 when every failure count is zero, 1 when any is not, 2 on
// bad input (unreadable or malformed history or state, server unreachable or
// refusing the admin token).
#include <netdb.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "checker.h"

namespace {

using nlohmann::json;

constexpr int kExportPageRows = 5000;      // rows per export request (the server allows up to 10,000)
constexpr int kHttpTimeoutSeconds = 30;    // per request, send and receive each

const char* const kTables[] = {"devices", "members", "messages", "withheld", "stream", "heads", "receipts", "blocks"};

// GET over plain HTTP/1.1 with Connection: close. Returns false and sets
// *error on a network failure; *status and *body otherwise.
bool HttpGet(const std::string& host, const std::string& port, const std::string& target, const std::string& token,
             int* status, std::string* body, std::string* error) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &res); rc != 0) {
    *error = "cannot resolve " + host + ": " + gai_strerror(rc);
    return false;
  }
  int fd = -1;
  for (addrinfo* a = res; a; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
    if (fd < 0) continue;
    timeval tv{kHttpTimeoutSeconds, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) break;
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  if (fd < 0) {
    *error = "cannot connect to " + host + ":" + port;
    return false;
  }
  std::string req = "GET " + target + " HTTP/1.1\r\nHost: " + host + "\r\nConnection: close\r\nAuthorization: Bearer " +
                    token + "\r\n\r\n";
  for (size_t off = 0; off < req.size();) {
    ssize_t w = write(fd, req.data() + off, req.size() - off);
    if (w <= 0) {
      close(fd);
      *error = "write to " + host + ":" + port + " failed";
      return false;
    }
    off += static_cast<size_t>(w);
  }
  std::string resp;
  char buf[65536];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0) resp.append(buf, static_cast<size_t>(n));
  close(fd);
  if (n < 0) {
    *error = "read from " + host + ":" + port + " failed or timed out";
    return false;
  }
  auto hdr_end = resp.find("\r\n\r\n");
  if (resp.size() < 12 || resp.compare(0, 5, "HTTP/") != 0 || hdr_end == std::string::npos) {
    *error = "not an HTTP response from " + host + ":" + port;
    return false;
  }
  *status = std::atoi(resp.substr(9, 3).c_str());
  *body = resp.substr(hdr_end + 4);
  return true;
}

// Fetches every export table, page by page, into the saved-state shape.
bool FetchState(const std::string& server, const std::string& token, json* out, std::string* error) {
  const std::string prefix = "http://";
  if (server.compare(0, prefix.size(), prefix) != 0) {
    *error = "--server must be http://HOST:PORT";
    return false;
  }
  std::string hostport = server.substr(prefix.size());
  if (auto slash = hostport.find('/'); slash != std::string::npos) hostport.resize(slash);
  auto colon = hostport.rfind(':');
  std::string host = colon == std::string::npos ? hostport : hostport.substr(0, colon);
  std::string port = colon == std::string::npos ? "80" : hostport.substr(colon + 1);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  json tables = json::object();
  for (const char* t : kTables) {
    json table = {{"columns", json::array()}, {"rows", json::array()}};
    std::string after;
    while (true) {
      std::string target = "/admin/v1/export?table=" + std::string(t) + "&limit=" + std::to_string(kExportPageRows);
      if (!after.empty()) target += "&after=" + after;
      int status = 0;
      std::string body;
      if (!HttpGet(host, port, target, token, &status, &body, error)) return false;
      json page = json::parse(body, nullptr, false);
      if (status != 200 || page.is_discarded() || !page.is_object()) {
        *error = "GET " + target + " answered " + std::to_string(status) + ": " + body.substr(0, 300);
        return false;
      }
      table["columns"] = page.value("columns", json::array());
      for (auto& r : page["rows"]) table["rows"].push_back(std::move(r));
      if (!page.value("has_more", false)) break;
      after = page.value("next", "");
      if (after.empty()) {
        *error = "GET " + target + ": has_more without next";
        return false;
      }
    }
    tables[t] = std::move(table);
  }
  *out = {{"format", "parley-export-1"}, {"server", server}, {"tables", std::move(tables)}};
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"parley-check: checks SDK delivery histories against the server's final state (docs/checker.md)"};
  std::string histories, server, token, state_file, save_state;
  bool as_json = false;
  size_t max_findings = 50;
  app.add_option("--histories", histories, "directory of history files, one per device (*.jsonl)")->required();
  app.add_option("--server", server, "parleyd to read the final state from, http://HOST:PORT");
  app.add_option("--admin-token", token, "the server's admin token");
  app.add_option("--state", state_file, "read the final state from this saved export instead of a server");
  app.add_option("--save-state", save_state, "write the final state read from the server to this file");
  app.add_flag("--json", as_json, "print the counts as one JSON object");
  app.add_option("--max-findings", max_findings, "findings printed (without --json)")->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  auto fail_input = [](const std::string& msg) {
    std::cerr << "parley-check: " << msg << "\n";
    return 2;
  };
  if (state_file.empty() == server.empty()) return fail_input("give exactly one of --server and --state");
  if (!server.empty() && token.empty()) return fail_input("--server needs --admin-token");

  std::string error;
  std::vector<parley::checker::DeviceHistory> hs;
  if (!parley::checker::LoadHistoryDir(histories, &hs, &error)) return fail_input(error);
  json raw;
  if (!state_file.empty()) {
    if (!parley::checker::LoadStateFile(state_file, &raw, &error)) return fail_input(error);
  } else if (!FetchState(server, token, &raw, &error)) {
    return fail_input(error);
  }
  if (!save_state.empty()) {
    std::ofstream out(save_state, std::ios::binary | std::ios::trunc);
    out << raw.dump() << "\n";
    if (!out) return fail_input("cannot write " + save_state);
  }
  parley::checker::ServerState state;
  if (!parley::checker::ParseState(raw, &state, &error)) return fail_input(error);
  parley::checker::Report report;
  if (!parley::checker::Check(hs, state, &report, &error)) return fail_input(error);
  if (as_json) {
    std::cout << parley::checker::CountsJson(report.counts).dump() << "\n";
  } else {
    std::cout << parley::checker::FormatReport(report, max_findings);
  }
  return report.counts.ok() ? 0 : 1;
}
