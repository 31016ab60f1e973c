// The cold tier's block codec: a small length-prefixed layout inside one zstd
// frame. Contexts are kept per codec because zstd allocates a few hundred KiB
// per context, which a codec per thread pays once rather than per block.
#include "store/cold_block.h"

#include <algorithm>

#include <zstd.h>

#include <fmt/format.h>

namespace parley::store {

namespace {

// The largest block raw form Unpack accepts: kColdBlockMessages texts of the
// protocol's longest text with room to spare. A frame that claims more is
// corrupt, not a reason to allocate it.
constexpr uint64_t kMaxRawBlockBytes = uint64_t{64} << 20;

void PutVarint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

bool GetVarint(std::string_view& in, uint64_t* v) {
  uint64_t result = 0;
  for (int shift = 0; shift <= 63 && !in.empty(); shift += 7) {
    const auto byte = static_cast<uint8_t>(in.front());
    in.remove_prefix(1);
    result |= uint64_t{byte & 0x7fu} << shift;
    if ((byte & 0x80) == 0) {
      *v = result;
      return true;
    }
  }
  return false;
}

Status Corrupt(const char* why) { return Status(ErrorCode::kInternal, fmt::format("cold block: {}", why)); }

}  // namespace

struct ColdCodec::Contexts {
  ZSTD_CCtx* c = ZSTD_createCCtx();
  ZSTD_DCtx* d = ZSTD_createDCtx();
  ~Contexts() {
    ZSTD_freeCCtx(c);
    ZSTD_freeDCtx(d);
  }
};

ColdCodec::ColdCodec() : z_(std::make_unique<Contexts>()) {}
ColdCodec::~ColdCodec() = default;

Result<std::string> ColdCodec::Compress(const std::string& raw) {
  std::string out(ZSTD_compressBound(raw.size()), '\0');
  const size_t n = ZSTD_compressCCtx(z_->c, out.data(), out.size(), raw.data(), raw.size(), kColdZstdLevel);
  if (ZSTD_isError(n)) return Status(ErrorCode::kInternal, fmt::format("zstd: {}", ZSTD_getErrorName(n)));
  out.resize(n);
  return out;
}

Result<std::string> ColdCodec::Decompress(std::string_view data) {
  const unsigned long long size = ZSTD_getFrameContentSize(data.data(), data.size());
  if (size == ZSTD_CONTENTSIZE_ERROR || size == ZSTD_CONTENTSIZE_UNKNOWN || size > kMaxRawBlockBytes)
    return Corrupt("bad frame header");
  std::string raw(static_cast<size_t>(size), '\0');
  const size_t n = ZSTD_decompressDCtx(z_->d, raw.data(), raw.size(), data.data(), data.size());
  if (ZSTD_isError(n) || n != raw.size()) return Corrupt("frame does not decompress");
  return raw;
}

Result<std::string> ColdCodec::Pack(Seq first_seq, const std::vector<ColdEntry>& entries, int64_t* raw_bytes) {
  std::string raw;
  raw.push_back(static_cast<char>(kColdBlockFormat));
  for (const ColdEntry& e : entries) {
    PutVarint(raw, static_cast<uint64_t>(e.seq - first_seq));
    PutVarint(raw, e.body.size());
    raw += e.body;
  }
  if (raw_bytes != nullptr) *raw_bytes = static_cast<int64_t>(raw.size());
  return Compress(raw);
}

Result<std::vector<ColdEntry>> ColdCodec::Unpack(Seq first_seq, std::string_view data) {
  Result<std::string> raw = Decompress(data);
  if (!raw) return raw.error();
  std::string_view in(*raw);
  if (in.empty() || static_cast<uint8_t>(in.front()) != kColdBlockFormat) return Corrupt("unknown format");
  in.remove_prefix(1);
  std::vector<ColdEntry> entries;
  while (!in.empty()) {
    uint64_t delta = 0, len = 0;
    if (!GetVarint(in, &delta) || !GetVarint(in, &len) || len > in.size()) return Corrupt("truncated entry");
    entries.push_back(ColdEntry{first_seq + static_cast<Seq>(delta), std::string(in.substr(0, len))});
    in.remove_prefix(len);
  }
  return entries;
}

Result<std::string> ColdCodec::PackEdits(Seq first_seq, const std::vector<ColdEditEntry>& entries,
                                         int64_t* raw_bytes) {
  std::string raw;
  raw.push_back(static_cast<char>(kColdEditBlockFormat));
  for (const ColdEditEntry& e : entries) {
    PutVarint(raw, static_cast<uint64_t>(e.seq - first_seq));
    PutVarint(raw, static_cast<uint64_t>(e.version));
    PutVarint(raw, e.body.size());
    raw += e.body;
  }
  if (raw_bytes != nullptr) *raw_bytes = static_cast<int64_t>(raw.size());
  return Compress(raw);
}

Result<std::vector<ColdEditEntry>> ColdCodec::UnpackEdits(Seq first_seq, std::string_view data) {
  Result<std::string> raw = Decompress(data);
  if (!raw) return raw.error();
  std::string_view in(*raw);
  if (in.empty() || static_cast<uint8_t>(in.front()) != kColdEditBlockFormat) return Corrupt("unknown format");
  in.remove_prefix(1);
  std::vector<ColdEditEntry> entries;
  while (!in.empty()) {
    uint64_t delta = 0, version = 0, len = 0;
    if (!GetVarint(in, &delta) || !GetVarint(in, &version) || !GetVarint(in, &len) || len > in.size())
      return Corrupt("truncated entry");
    entries.push_back(ColdEditEntry{first_seq + static_cast<Seq>(delta), static_cast<int64_t>(version),
                                    std::string(in.substr(0, len))});
    in.remove_prefix(len);
  }
  return entries;
}

Result<ColdRewrite> ColdCodec::EditsWithout(Seq first_seq, std::string_view data, const std::vector<Seq>& drop) {
  Result<std::vector<ColdEditEntry>> entries = UnpackEdits(first_seq, data);
  if (!entries) return entries.error();
  const size_t before = entries->size();
  std::erase_if(*entries,
                [&](const ColdEditEntry& e) { return std::binary_search(drop.begin(), drop.end(), e.seq); });
  ColdRewrite out;
  out.removed = static_cast<int64_t>(before - entries->size());
  out.messages = static_cast<int64_t>(entries->size());
  if (out.removed == 0 || entries->empty()) return out;
  Result<std::string> packed = PackEdits(first_seq, *entries, &out.raw_bytes);
  if (!packed) return packed.error();
  out.data = std::move(*packed);
  return out;
}

Result<ColdRewrite> ColdCodec::Without(Seq first_seq, std::string_view data, const std::vector<Seq>& drop) {
  Result<std::vector<ColdEntry>> entries = Unpack(first_seq, data);
  if (!entries) return entries.error();
  const size_t before = entries->size();
  std::erase_if(*entries, [&](const ColdEntry& e) { return std::binary_search(drop.begin(), drop.end(), e.seq); });
  ColdRewrite out;
  out.removed = static_cast<int64_t>(before - entries->size());
  out.messages = static_cast<int64_t>(entries->size());
  if (out.removed == 0 || entries->empty()) return out;
  Result<std::string> packed = Pack(first_seq, *entries, &out.raw_bytes);
  if (!packed) return packed.error();
  out.data = std::move(*packed);
  return out;
}

}  // namespace parley::store
