// The cold tier's block codec (issue 12 item 6; docs/architecture.md "Cold
// tier"): old messages' texts are kept per conversation in compressed blocks
// of consecutive seqs instead of one row each. This header is the format,
// shared by every backend; where a block lives and when it is made is each
// backend's business (SQLite: store/sqlite/sqlite_cold.h).
//
// A block is one zstd frame (level kColdZstdLevel, no dictionary) of:
//   kColdBlockFormat (1 byte), then per message, ascending seq:
//   varint(seq - first_seq), varint(byte length of the text), the text.
// `first_seq` is the block's key (it is not repeated inside). The texts come
// back byte for byte: Unpack(Pack(x)) == x.
//
// An edit block holds the texts of the edits (message_edits) of the messages
// of one compacted range, in the same kind of frame: kColdEditBlockFormat
// (1 byte), then per edit, ascending (seq, version): varint(seq - first_seq),
// varint(version), varint(byte length), the text. Its `first_seq` is its
// first edit's seq. A message has few edits (each needs a new version within
// the edit window), so a block of a message range stays about as small as
// the range's message block.
//
// Thread-safety: a ColdCodec holds zstd contexts and is used by one thread at
// a time; the free functions are pure.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "store/types.h"

namespace parley::store {

// Messages per block at most. A history page (protocol limit 100) touches one
// or two blocks; 128 texts of ~140 bytes (about 18 KiB raw) give zstd enough
// repetition to work with, while paging one message back decompresses no
// more than that.
inline constexpr int kColdBlockMessages = 128;
// zstd's level for blocks. Compaction runs in the background and a block is
// written once, so a level above zstd's default (3) is affordable; the gain
// past it is small on short texts (docs/benchmarks.md "Cold tier").
inline constexpr int kColdZstdLevel = 9;
// The first byte of a block's raw form: its layout, for a later one (a
// trained dictionary, more columns).
inline constexpr uint8_t kColdBlockFormat = 1;
// The first byte of an edit block's raw form. A different value from
// kColdBlockFormat, so a block read from the wrong table fails to decode
// instead of returning wrong texts.
inline constexpr uint8_t kColdEditBlockFormat = 2;

// One message's text in a block.
struct ColdEntry {
  Seq seq = 0;
  std::string body;
};

// One edit's text in an edit block: message `seq`'s edit `version`.
struct ColdEditEntry {
  Seq seq = 0;
  int64_t version = 0;
  std::string body;
};

// A block as the purge of deleted texts leaves it (ColdCodec::Without).
struct ColdRewrite {
  int64_t removed = 0;    // entries that went; 0: the block stays as it is
  int64_t messages = 0;   // entries left; 0 (with removed > 0): delete the block
  int64_t raw_bytes = 0;  // their size before compression
  std::string data;       // the block again, under the same key (messages > 0)
};

class ColdCodec {
 public:
  ColdCodec();
  ~ColdCodec();
  ColdCodec(const ColdCodec&) = delete;
  ColdCodec& operator=(const ColdCodec&) = delete;

  // The compressed block of `entries` (REQUIRES: non-empty, ascending seq,
  // every seq >= first_seq). `raw_bytes`, when set, receives the size before
  // compression. Fails kInternal if zstd does.
  Result<std::string> Pack(Seq first_seq, const std::vector<ColdEntry>& entries, int64_t* raw_bytes = nullptr);
  // The entries of block `data` keyed `first_seq`, ascending seq. Fails
  // kInternal on a block that does not decode (corruption).
  Result<std::vector<ColdEntry>> Unpack(Seq first_seq, std::string_view data);
  // Block `data` keyed `first_seq` without the texts of `drop` (REQUIRES:
  // sorted): the purge's rewrite, on both backends. The key stays first_seq
  // (still at or below every seq left), so the covering lookup keeps
  // finding it. Fails as Unpack and Pack do.
  Result<ColdRewrite> Without(Seq first_seq, std::string_view data, const std::vector<Seq>& drop);

  // The same three for edit blocks: REQUIRES for PackEdits: non-empty,
  // ascending (seq, version), every seq >= first_seq. EditsWithout drops
  // every edit of the messages in `drop` (sorted); ColdRewrite::messages
  // then counts the edits left.
  Result<std::string> PackEdits(Seq first_seq, const std::vector<ColdEditEntry>& entries,
                                int64_t* raw_bytes = nullptr);
  Result<std::vector<ColdEditEntry>> UnpackEdits(Seq first_seq, std::string_view data);
  Result<ColdRewrite> EditsWithout(Seq first_seq, std::string_view data, const std::vector<Seq>& drop);

 private:
  // One zstd frame of `raw`, and the raw form of frame `data`.
  Result<std::string> Compress(const std::string& raw);
  Result<std::string> Decompress(std::string_view data);

  struct Contexts;
  std::unique_ptr<Contexts> z_;
};

}  // namespace parley::store
