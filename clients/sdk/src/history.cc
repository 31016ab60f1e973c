// HistoryRecorder: see history.h. Reopening scans the existing file once
// (the client's own history: small next to its cache) so that record numbers
// and compose orders continue where a killed process left them.
#include "history.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <sodium.h>
#include <cstring>
#include <fstream>

namespace parley::sdk {

static_assert(kTextHashBytes >= crypto_generichash_BYTES_MIN && kTextHashBytes <= crypto_generichash_BYTES_MAX);

std::string TextHash(const std::string& text) {
  if (text.empty()) return "";
  unsigned char h[kTextHashBytes];
  crypto_generichash(h, sizeof h, reinterpret_cast<const unsigned char*>(text.data()), text.size(), nullptr, 0);
  char hex[2 * kTextHashBytes + 1];
  sodium_bin2hex(hex, sizeof hex, h, sizeof h);
  return hex;
}

using nlohmann::json;

std::unique_ptr<HistoryRecorder> HistoryRecorder::Open(const std::string& path, std::string* error) {
  std::unique_ptr<HistoryRecorder> h(new HistoryRecorder());
  // Byte length of the complete lines (each ends with '\n'); a torn last line
  // (a crash in the middle of a write) is cut off before appending.
  int64_t complete = 0;
  bool torn = false;
  {
    std::ifstream in(path, std::ios::binary);
    if (in) {
      std::string line;
      int64_t line_no = 0;
      while (std::getline(in, line)) {
        ++line_no;
        if (in.eof()) {  // no '\n' after this line
          torn = true;
          break;
        }
        complete += static_cast<int64_t>(line.size()) + 1;
        if (line.empty()) continue;
        json j = json::parse(line, nullptr, false);
        if (j.is_discarded() || !j.is_object()) {
          if (error) *error = path + ":" + std::to_string(line_no) + ": not a JSON object";
          return nullptr;
        }
        h->n_ = std::max(h->n_, j.value("n", int64_t{0}));
        if (j.value("ev", "") == "compose") {
          auto& o = h->compose_order_[j.value("peer", "")];
          o = std::max(o, j.value("order", int64_t{0}));
        }
      }
    }
  }
  h->fd_ = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (h->fd_ < 0) {
    if (error) *error = "cannot open history file " + path + ": " + std::strerror(errno);
    return nullptr;
  }
  if (torn && ::ftruncate(h->fd_, complete) != 0) {
    if (error) *error = "cannot cut the torn last line of " + path + ": " + std::strerror(errno);
    return nullptr;
  }
  return h;
}

HistoryRecorder::~HistoryRecorder() {
  if (fd_ >= 0) ::close(fd_);
}

void HistoryRecorder::SetIdentity(int64_t user_id, int64_t device_id) {
  std::lock_guard lock(mu_);
  user_ = user_id;
  device_ = device_id;
}

void HistoryRecorder::Record(const std::string& ev, json record) {
  int64_t ts = std::chrono::duration_cast<std::chrono::milliseconds>(
                   std::chrono::system_clock::now().time_since_epoch())
                   .count();
  std::lock_guard lock(mu_);
  json line = {{"n", ++n_}, {"ts", ts}, {"user", user_}, {"device", device_}, {"ev", ev}};
  for (auto& [k, v] : record.items()) line[k] = std::move(v);
  std::string s = line.dump() + "\n";
  size_t off = 0;
  while (off < s.size()) {
    ssize_t w = ::write(fd_, s.data() + off, s.size() - off);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      ++write_errors_;
      return;
    }
    off += static_cast<size_t>(w);
  }
}

int64_t HistoryRecorder::NextComposeOrder(const std::string& peer) {
  std::lock_guard lock(mu_);
  return ++compose_order_[peer];
}

uint64_t HistoryRecorder::write_errors() const {
  std::lock_guard lock(mu_);
  return write_errors_;
}

}  // namespace parley::sdk
