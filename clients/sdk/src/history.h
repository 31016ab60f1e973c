// HistoryRecorder: the SDK's delivery history (ClientOptions::history_path),
// one JSON object per line, read by the delivery checker (`parley-check`,
// docs/checker.md defines every record). Internal to the SDK.
//
// Append-only and written with one write(2) per record on an O_APPEND file
// descriptor (no user-space buffer), so every record that Record returned
// for survives kill -9 of the client process. Not fsynced: a machine crash may
// lose the tail (the checker then sees an unfinished device, never a wrong one).
//
// Every record carries "n" (1, 2, 3, ... per file, continued across reopens),
// "ts" (wall clock, ms since epoch), "user" and "device" (0 until the first
// auth of a new cache) and "ev" (the record's kind).
//
// Thread-safety: every method may be called from any thread (one mutex).
// Errors: Open returns nullptr and sets *error; a failed write is counted
// (write_errors) and otherwise ignored: recording never stops the client.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include <nlohmann/json.hpp>

namespace parley::sdk {

// A short fingerprint of a message body or draft text for the records
// (edits, views): 32 hex digits of a 16-byte BLAKE2b (libsodium's
// crypto_generichash at its shortest, as the server hashes tokens), "" for ""
// (a tombstone, no draft). The checker compares fingerprints, never texts.
inline constexpr size_t kTextHashBytes = 16;
std::string TextHash(const std::string& text);

class HistoryRecorder {
 public:
  // Opens (creating) `path` for appending; reads what is there to continue
  // "n" and the per-peer compose order, and cuts off a torn last line (no
  // '\n': a crash mid-write). Fails on an unreadable file or a complete line
  // that is not a JSON object.
  static std::unique_ptr<HistoryRecorder> Open(const std::string& path, std::string* error);
  ~HistoryRecorder();
  HistoryRecorder(const HistoryRecorder&) = delete;
  HistoryRecorder& operator=(const HistoryRecorder&) = delete;

  void SetIdentity(int64_t user_id, int64_t device_id);
  // Adds n, ts, user, device and "ev" to `record` and appends it.
  void Record(const std::string& ev, nlohmann::json record);
  // The next compose order for `peer` (1, 2, ... per file, per peer).
  int64_t NextComposeOrder(const std::string& peer);
  uint64_t write_errors() const;

 private:
  HistoryRecorder() = default;
  mutable std::mutex mu_;  // guards everything below
  int fd_ = -1;
  int64_t n_ = 0;
  int64_t user_ = 0, device_ = 0;
  std::map<std::string, int64_t> compose_order_;
  uint64_t write_errors_ = 0;
};

}  // namespace parley::sdk
