// See name_words.h.

#include "store/name_words.h"

#include <algorithm>

#include "common/text_fold.h"

namespace parley::store {
namespace {

bool IsWordByte(unsigned char ch) { return ch >= 0x80 || (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z'); }

}  // namespace

std::vector<std::string> NameWords(std::string_view name) {
  std::vector<std::string> words;
  std::string word;
  for (char raw : FoldForSearch(name)) {
    auto ch = static_cast<unsigned char>(raw);
    if (IsWordByte(ch)) {
      word.push_back(static_cast<char>(ch));
    } else if (!word.empty()) {
      words.push_back(std::move(word));
      word.clear();
    }
  }
  if (!word.empty()) words.push_back(std::move(word));
  std::sort(words.begin(), words.end());
  words.erase(std::unique(words.begin(), words.end()), words.end());
  return words;
}

std::vector<std::string> MessageWords(std::string_view text) {
  std::vector<std::string> words = NameWords(text);
  for (std::string& w : words) w.resize(Utf8Prefix(w, kMaxIndexedWordBytes).size());
  std::sort(words.begin(), words.end());
  words.erase(std::unique(words.begin(), words.end()), words.end());
  return words;
}

// `text` cut to at most `max` bytes, never inside a UTF-8 character.
std::string_view Utf8Prefix(std::string_view text, size_t max) {
  if (text.size() <= max) return text;
  size_t n = max;
  while (n > 0 && (static_cast<unsigned char>(text[n]) & 0xC0) == 0x80) --n;
  return text.substr(0, n);
}

// The distinct indexed prefixes of the words of `display_name`.
std::vector<std::string> NamePrefixes(std::string_view display_name) {
  std::vector<std::string> prefixes;
  for (const std::string& word : NameWords(display_name)) {
    std::string_view w = Utf8Prefix(word, kMaxIndexedPrefix);
    for (size_t n = 1; n <= w.size(); ++n) {
      if (n < w.size() && (static_cast<unsigned char>(w[n]) & 0xC0) == 0x80) continue;  // inside a character
      prefixes.emplace_back(w.substr(0, n));
    }
  }
  std::sort(prefixes.begin(), prefixes.end());
  prefixes.erase(std::unique(prefixes.begin(), prefixes.end()), prefixes.end());
  return prefixes;
}

bool NameHasWordWithPrefix(std::string_view display_name, std::string_view prefix) {
  for (const std::string& word : NameWords(display_name)) {
    if (word.compare(0, prefix.size(), prefix) == 0) return true;
  }
  return false;
}

bool UsernameCouldStartWith(std::string_view query) {
  for (char c : query) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.')) return false;
  }
  return true;
}

// The least string greater than every string starting with `prefix`, or
// nullopt when there is none ("" or all 0xff bytes).
std::optional<std::string> PrefixEnd(std::string prefix) {
  while (!prefix.empty() && static_cast<unsigned char>(prefix.back()) == 0xff) prefix.pop_back();
  if (prefix.empty()) return std::nullopt;
  prefix.back() = static_cast<char>(static_cast<unsigned char>(prefix.back()) + 1);
  return prefix;
}

}  // namespace parley::store
