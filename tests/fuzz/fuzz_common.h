// Helpers shared by the fuzz targets: a CHECK that crashes with a message
// (libFuzzer keeps the input), a reference UTF-8 validator written from
// RFC 3629 independently of src/, and JSON helpers on simdjson.
#pragma once

#include <simdjson.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

namespace parley::fuzz {

[[noreturn]] inline void Fail(const char* file, int line, const char* cond, const std::string& detail) {
  std::fprintf(stderr, "\n%s:%d: CHECK failed: %s\n", file, line, cond);
  if (!detail.empty()) std::fprintf(stderr, "  %s\n", detail.c_str());
  std::fflush(stderr);
  std::abort();
}

// CHECK(cond) or CHECK(cond, detail): a broken invariant is a crash.
#define PARLEY_FUZZ_CHECK_2(cond, detail) \
  do {                                    \
    if (!(cond)) ::parley::fuzz::Fail(__FILE__, __LINE__, #cond, (detail)); \
  } while (0)
#define PARLEY_FUZZ_CHECK_1(cond) PARLEY_FUZZ_CHECK_2(cond, std::string())
#define PARLEY_FUZZ_CHECK_PICK(_1, _2, name, ...) name
#define CHECK(...) PARLEY_FUZZ_CHECK_PICK(__VA_ARGS__, PARLEY_FUZZ_CHECK_2, PARLEY_FUZZ_CHECK_1, unused)(__VA_ARGS__)

// Printable form of arbitrary bytes for failure messages.
inline std::string Escaped(std::string_view s, size_t max = 200) {
  std::string out;
  static constexpr char kHex[] = "0123456789abcdef";
  for (size_t i = 0; i < s.size() && i < max; ++i) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out.push_back(static_cast<char>(c));
    } else {
      out += "\\x";
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  if (s.size() > max) out += "...";
  return out;
}

// RFC 3629 by decoding: every sequence must decode to a scalar value
// (U+0000..U+10FFFF minus the surrogates U+D800..U+DFFF) in its shortest form.
inline bool ReferenceIsValidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    auto b0 = static_cast<unsigned char>(s[i]);
    size_t len;
    uint32_t cp;
    if (b0 < 0x80) {
      ++i;
      continue;
    } else if ((b0 & 0xe0) == 0xc0) {
      len = 2;
      cp = b0 & 0x1fu;
    } else if ((b0 & 0xf0) == 0xe0) {
      len = 3;
      cp = b0 & 0x0fu;
    } else if ((b0 & 0xf8) == 0xf0) {
      len = 4;
      cp = b0 & 0x07u;
    } else {
      return false;  // a continuation byte as lead, or 0xf8..0xff
    }
    if (s.size() - i < len) return false;  // truncated
    for (size_t k = 1; k < len; ++k) {
      auto b = static_cast<unsigned char>(s[i + k]);
      if ((b & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (b & 0x3fu);
    }
    static constexpr uint32_t kMinForLen[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMinForLen[len]) return false;           // overlong
    if (cp >= 0xd800 && cp <= 0xdfff) return false;    // surrogate
    if (cp > 0x10ffff) return false;                   // beyond Unicode
    i += len;
  }
  return true;
}

// Encodes any value below 2^21 the naive way in `len` bytes (1..4), also
// surrogates, values above U+10FFFF and overlong forms: the fuzzers use it to
// build inputs whose validity they know. Requires cp to fit in len bytes.
inline void AppendUtf8Raw(std::string& out, uint32_t cp, int len) {
  switch (len) {
    case 1:
      out.push_back(static_cast<char>(cp));
      break;
    case 2:
      out.push_back(static_cast<char>(0xc0 | (cp >> 6)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3f)));
      break;
    case 3:
      out.push_back(static_cast<char>(0xe0 | (cp >> 12)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3f)));
      break;
    default:
      out.push_back(static_cast<char>(0xf0 | (cp >> 18)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3f)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3f)));
      break;
  }
}

inline int ShortestUtf8Length(uint32_t cp) { return cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4; }

// One simdjson DOM parser per thread, reused (as src/protocol does).
inline simdjson::dom::parser& Parser() {
  thread_local simdjson::dom::parser parser;
  return parser;
}

// Parses `json` (copied into a padded buffer). The element lives until the
// next call on this thread.
inline simdjson::error_code ParseJson(std::string_view json, simdjson::dom::element* out) {
  return Parser().parse(json.data(), json.size(), true).get(*out);
}

}  // namespace parley::fuzz
