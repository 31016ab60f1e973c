// utf8_fuzz: protocol::IsValidUtf8 against a reference validator, and
// JsonWriter::String on UTF-8 text.
//
// The first input byte picks how the rest becomes a byte string:
//   0x00-0x7f  the rest, as raw bytes;
//   0x80-0xbf  the rest as 3-byte little-endian values (masked to 21 bits),
//              each encoded the naive way in its shortest length: this also
//              produces surrogates and values above U+10FFFF;
//   0xc0-0xff  the rest as 4-byte groups (value: 3 bytes, length: 1 byte),
//              encoded in a chosen length that may be overlong.
// For the generated strings the fuzzer knows the answer; for all it checks:
//  - IsValidUtf8(s) == the RFC 3629 reference (also on the suffixes from 1..3,
//    which moves the SIMD block boundaries);
//  - valid s: JsonWriter::String(s) is valid UTF-8 and JSON, and simdjson
//    reads it back as exactly s;
//  - invalid s: the writer copies bytes >= 0x80 verbatim, so simdjson must
//    reject its output as invalid UTF-8 (the writer never launders text).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz_common.h"
#include "protocol/frames.h"
#include "protocol/json_writer.h"

namespace {

using parley::fuzz::Escaped;
using parley::fuzz::ReferenceIsValidUtf8;

// Builds the string to test; *expected is set when the answer is known by
// construction (-1: unknown, 0: invalid, 1: valid).
std::string Build(std::string_view in, int* expected) {
  *expected = -1;
  if (in.empty()) return std::string();
  auto mode = static_cast<unsigned char>(in[0]);
  std::string_view rest = in.substr(1);
  if (mode < 0x80) return std::string(rest);

  std::string out;
  bool valid = true;
  size_t group = mode < 0xc0 ? 3 : 4;
  for (size_t i = 0; i + group <= rest.size(); i += group) {
    uint32_t cp = static_cast<unsigned char>(rest[i]) | (static_cast<uint32_t>(static_cast<unsigned char>(rest[i + 1])) << 8) |
                  (static_cast<uint32_t>(static_cast<unsigned char>(rest[i + 2]) & 0x1f) << 16);
    int shortest = parley::fuzz::ShortestUtf8Length(cp);
    int len = shortest;
    if (group == 4) {
      len = 1 + static_cast<unsigned char>(rest[i + 3]) % 4;
      if (len < shortest) len = shortest;  // cannot fit: keep it honest
    }
    parley::fuzz::AppendUtf8Raw(out, cp, len);
    if (len != shortest || (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff) valid = false;
  }
  *expected = valid ? 1 : 0;
  return out;
}

void CheckValidator(std::string_view s) {
  bool ref = ReferenceIsValidUtf8(s);
  bool got = parley::protocol::IsValidUtf8(s);
  CHECK(ref == got, "IsValidUtf8=" + std::to_string(got) + " reference=" + std::to_string(ref) + " on " + Escaped(s));
}

void CheckWriter(std::string_view s, bool valid) {
  parley::protocol::JsonWriter w;
  w.String(s);
  const std::string& json = w.str();
  simdjson::dom::element e;
  auto err = parley::fuzz::ParseJson(json, &e);
  if (!valid) {
    CHECK(err == simdjson::UTF8_ERROR, std::string("writer output of invalid UTF-8 parsed as: ") +
                                           simdjson::error_message(err) + ": " + Escaped(json));
    return;
  }
  CHECK(ReferenceIsValidUtf8(json), "writer output is not UTF-8: " + Escaped(json));
  CHECK(err == simdjson::SUCCESS, std::string(simdjson::error_message(err)) + ": " + Escaped(json));
  std::string_view back;
  CHECK(e.get_string().get(back) == simdjson::SUCCESS, Escaped(json));
  CHECK(back == s, "writer round trip changed " + Escaped(s) + " into " + Escaped(back));
  // No raw control characters may reach the output (RFC 8259 section 7).
  for (char c : json) CHECK(static_cast<unsigned char>(c) >= 0x20, "raw control character in " + Escaped(json));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  int expected = -1;
  std::string s = Build(in, &expected);
  bool ref = ReferenceIsValidUtf8(s);
  if (expected != -1)
    CHECK(ref == (expected == 1), "reference validator disagrees with construction on " + Escaped(s));

  CheckValidator(s);
  for (size_t skip = 1; skip <= 3 && skip < s.size(); ++skip) CheckValidator(std::string_view(s).substr(skip));
  // The raw input too, when a mode byte turned it into something else.
  if (expected != -1) CheckValidator(in);

  CheckWriter(s, ref);
  return 0;
}
