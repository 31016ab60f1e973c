// sdk_fleet_helper: runs many parley::Client devices in one process for the
// reconnect-spread test (reconnect_spread_e2e_test.cc). A child process, so
// that thousands of devices spread over several processes.
//
//   sdk_fleet_helper PORT TOKENS_FILE FIRST COUNT
//
// Reads COUNT tokens (one per line) starting at line FIRST, starts one Client
// per token (cache in memory), prints "online" once all are online, then waits
// for a line "check" on stdin. It then waits until every client went through
// a disconnect and is online again, checks that each one has applied its
// whole stream (applied == the head a ping reports), and prints one JSON line:
//   {"closed_ms":[...],"attempt_ms":[...],"resumed":N,"received":M,"errors":[...]}
// where closed_ms is when each client saw the server close (steady clock, ms,
// shared by every process on the machine), attempt_ms when it next started
// connecting, resumed how many caught up fully, received how many hold at
// least one message. Exits with _exit (no per-client teardown: the test only
// needs the numbers).
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <iostream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "parley/client.h"

namespace {

constexpr int kOnlineTimeoutMs = 120000;
constexpr int kCatchUpTimeoutMs = 60000;

int64_t SteadyMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

struct Track {
  std::mutex mu;
  bool was_online = false;
  int64_t closed_ms = 0;   // first kWaiting after being online
  int64_t attempt_ms = 0;  // first kConnecting after that
  bool back_online = false;
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5) {
    std::cerr << "usage: sdk_fleet_helper PORT TOKENS_FILE FIRST COUNT\n";
    return 2;
  }
  auto port = static_cast<uint16_t>(std::stoi(argv[1]));
  size_t first = std::stoul(argv[3]), count = std::stoul(argv[4]);
  std::vector<std::string> tokens;
  {
    std::ifstream in(argv[2]);
    std::string line;
    for (size_t i = 0; std::getline(in, line); ++i) {
      if (i >= first && i < first + count) tokens.push_back(line);
    }
  }
  std::vector<std::unique_ptr<Track>> tracks;
  std::vector<std::unique_ptr<parley::Client>> clients;
  for (size_t i = 0; i < tokens.size(); ++i) {
    tracks.push_back(std::make_unique<Track>());
    Track* t = tracks.back().get();
    parley::ClientOptions o;
    o.port = port;
    o.db_path = ":memory:";
    o.token = tokens[i];
    o.request_timeout_ms = 30000;
    o.connect_timeout_ms = 10000;
    o.on_state = [t](parley::ClientState s, const std::string&) {
      std::lock_guard lock(t->mu);
      if (s == parley::ClientState::kOnline) {
        if (t->closed_ms) t->back_online = true;
        t->was_online = true;
      } else if (s == parley::ClientState::kWaiting && t->was_online && !t->closed_ms) {
        t->closed_ms = SteadyMs();
      } else if (s == parley::ClientState::kConnecting && t->closed_ms && !t->attempt_ms) {
        t->attempt_ms = SteadyMs();
      }
    };
    std::string err;
    auto c = parley::Client::Open(std::move(o), &err);
    if (!c) {
      std::cerr << "open: " << err << "\n";
      _exit(1);
    }
    c->Start();
    clients.push_back(std::move(c));
  }
  for (auto& c : clients) {
    if (!c->WaitOnline(kOnlineTimeoutMs)) {
      std::cerr << "a client did not get online: " << c->last_error() << "\n";
      _exit(1);
    }
  }
  std::cout << "online" << std::endl;

  std::string cmd;
  std::getline(std::cin, cmd);
  nlohmann::json errors = nlohmann::json::array();
  auto deadline = SteadyMs() + kCatchUpTimeoutMs;
  for (auto& t : tracks) {
    while (SteadyMs() < deadline) {
      {
        std::lock_guard lock(t->mu);
        if (t->back_online) break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  int resumed = 0, received = 0;
  for (size_t i = 0; i < clients.size(); ++i) {
    auto& c = clients[i];
    parley::Reply r;
    for (int tries = 0; tries < 50; ++tries) {
      c->WaitOnline(static_cast<int>(std::max<int64_t>(1, deadline - SteadyMs())));
      r = c->Request("ping");
      if (r.ok) break;
    }
    if (!r.ok) {
      errors.push_back("client " + std::to_string(first + i) + ": ping failed: " + r.code + " " + c->last_error());
      continue;
    }
    int64_t head = r.result.value("head", int64_t{0});
    if (c->WaitApplied(head, static_cast<int>(std::max<int64_t>(1, deadline - SteadyMs())))) {
      ++resumed;
    } else {
      errors.push_back("client " + std::to_string(first + i) + ": applied " + std::to_string(c->applied()) +
                       " < head " + std::to_string(head));
    }
    for (const auto& conv : c->Conversations()) {
      if (conv.last_seq > 0) {
        ++received;
        break;
      }
    }
  }
  nlohmann::json closed = nlohmann::json::array(), attempts = nlohmann::json::array();
  for (auto& t : tracks) {
    std::lock_guard lock(t->mu);
    closed.push_back(t->closed_ms);
    attempts.push_back(t->attempt_ms);
  }
  std::cout << nlohmann::json{{"closed_ms", closed}, {"attempt_ms", attempts}, {"resumed", resumed},
                              {"received", received}, {"errors", errors}}
                   .dump()
            << std::endl;
  _exit(0);
}
