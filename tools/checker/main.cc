// parley-check: the delivery checker (docs/checker.md).
//
//   parley-check --histories DIR (--server http://HOST:PORT --admin-token TOKEN | --state FILE)
//                [--save-state FILE] [--json] [--max-findings N]
//
// Exit status: 0 when every failure count is zero, 1 when any is not, 2 on
// bad input (unreadable or malformed history or state, server unreachable or
// refusing the admin token).
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "checker.h"
#include "net/http_client.h"

namespace {

using nlohmann::json;

constexpr int kExportPageRows = 5000;      // rows per export request (the server allows up to 10,000)
constexpr std::chrono::seconds kHttpTimeout{30};  // per request

const char* const kTables[] = {"devices", "members", "messages", "withheld", "stream", "heads", "receipts", "blocks"};

// Fetches every export table, page by page, into the saved-state shape.
bool FetchState(const std::string& server, const std::string& token, json* out, std::string* error) {
  auto endpoint = parley::netutil::ParseHttpUrl(server, error);
  if (!endpoint) return false;
  // Before the first page: whatever expired by then (with the checker's
  // grace for the expiry step) is deleted in the pages read after it.
  const int64_t exported_at = std::chrono::duration_cast<std::chrono::milliseconds>(
                                  std::chrono::system_clock::now().time_since_epoch())
                                  .count();
  json tables = json::object();
  for (const char* t : kTables) {
    json table = {{"columns", json::array()}, {"rows", json::array()}};
    std::string after;
    while (true) {
      std::string target = "/admin/v1/export?table=" + std::string(t) + "&limit=" + std::to_string(kExportPageRows);
      if (!after.empty()) target += "&after=" + after;
      parley::netutil::HttpRequest req;
      req.target = target;
      req.authorization = "Bearer " + token;
      req.timeout = kHttpTimeout;
      auto res = parley::netutil::HttpExchange(*endpoint, req);
      if (!res.ok()) {
        *error = res.error;
        return false;
      }
      json page = json::parse(res.body, nullptr, false);
      if (res.status != 200 || page.is_discarded() || !page.is_object()) {
        *error = "GET " + target + " answered " + std::to_string(res.status) + ": " + res.body.substr(0, 300);
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
  *out = {{"format", "parley-export-1"}, {"server", server}, {"exported_at", exported_at}, {"tables", std::move(tables)}};
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
