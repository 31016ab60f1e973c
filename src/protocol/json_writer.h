// A small, allocation-light JSON writer for outgoing frames (the hot path).
// It writes into one std::string; commas are managed by a nesting stack.
// Strings are escaped per RFC 8259; they must already be valid UTF-8 (every
// string Parley writes was validated on the way in or is its own text).
// Not thread-safe; one writer per frame.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace parley::protocol {

class JsonWriter {
 public:
  JsonWriter() { out_.reserve(256); }

  JsonWriter& BeginObject();
  JsonWriter& EndObject();
  JsonWriter& BeginArray();
  JsonWriter& EndArray();
  // Inline so that for a literal key (nearly every key: the protocol's own
  // names) the compiler folds the check for characters to escape and the
  // copy's length away.
  JsonWriter& Key(std::string_view k) {
    if (k.size() > kShortKey || !IsPlainKey(k)) return EscapedKey(k);
    Separate();
    char buf[kShortKey + 3];
    buf[0] = '"';
    std::memcpy(buf + 1, k.data(), k.size());
    buf[k.size() + 1] = '"';
    buf[k.size() + 2] = ':';
    out_.append(buf, k.size() + 3);
    after_key_ = true;
    return *this;
  }
  JsonWriter& String(std::string_view s);
  JsonWriter& Int(int64_t v);
  JsonWriter& Bool(bool v);
  JsonWriter& Null();
  // Writes an already-encoded JSON value verbatim.
  JsonWriter& Raw(std::string_view json);

  // Shorthands for "key": value.
  JsonWriter& Field(std::string_view k, std::string_view v) { return Key(k).String(v); }
  JsonWriter& Field(std::string_view k, const char* v) { return Key(k).String(v); }
  JsonWriter& Field(std::string_view k, int64_t v) { return Key(k).Int(v); }
  JsonWriter& Field(std::string_view k, int v) { return Key(k).Int(v); }
  JsonWriter& Field(std::string_view k, bool v) { return Key(k).Bool(v); }

  const std::string& str() const { return out_; }
  size_t size() const { return out_.size(); }

  // A place to come back to: Rewind drops everything written since Here(),
  // which must have been taken inside the container that is open at Rewind.
  struct Mark {
    size_t bytes = 0;
    size_t depth = 0;
    bool first = true;
    bool after_key = false;
  };
  Mark Here() const { return Mark{out_.size(), first_.size(), first_.empty() || first_.back() != 0, after_key_}; }
  void Rewind(const Mark& m);
  std::string Take() { return std::move(out_); }

 private:
  // Keys are short names of the protocol's own ("seq", "user_id"): a frame
  // has dozens, so the usual one is written with a single append.
  static constexpr size_t kShortKey = 48;
  static constexpr bool IsPlainKey(std::string_view k) {
    for (char ch : k) {
      auto c = static_cast<unsigned char>(ch);
      if (c < 0x20 || c == '"' || c == '\\') return false;
    }
    return true;
  }
  // A key that is long or needs escaping: written as a JSON string.
  JsonWriter& EscapedKey(std::string_view k);
  void Separate() {
    if (after_key_) {
      after_key_ = false;
      return;
    }
    if (!first_.empty()) {
      if (first_.back() == 0) out_.push_back(',');
      first_.back() = 0;
    }
  }

  std::string out_;
  // Per open container, whether nothing was written in it yet ('\1') or
  // something was ('\0'). A std::string for its inline storage: no
  // allocation up to 15 levels, and byte access where std::vector<bool>'s
  // bit arithmetic was most of the cost of a comma (callgrind, 2026-12-03).
  std::string first_;
  bool after_key_ = false;
};

}  // namespace parley::protocol
