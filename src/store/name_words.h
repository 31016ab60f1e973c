// Display-name words for user search, shared by every Store backend so that
// search matches the same users whatever the store.
//
// A display name's words: folded for caseless matching (FoldForSearch,
// common/text_fold.h: Unicode NFKC_Casefold, the folding the search query
// gets too), then split on ASCII whitespace and punctuation; bytes of
// multi-byte UTF-8 characters count as word characters. Each distinct word contributes its prefixes (at character
// boundaries, up to kMaxIndexedPrefix bytes) to a backend's prefix index, so
// a word-prefix query is one equality seek ordered by username. A longer
// query seeks its first kMaxIndexedPrefix bytes and checks the full words
// (NameHasWordWithPrefix).
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace parley::store {

inline constexpr size_t kMaxIndexedPrefix = 12;

// The distinct words of `name`, folded, ascending.
std::vector<std::string> NameWords(std::string_view name);
// `text` cut to at most `max` bytes, never inside a UTF-8 character.
std::string_view Utf8Prefix(std::string_view text, size_t max);
// The distinct indexed prefixes of the words of `display_name`.
std::vector<std::string> NamePrefixes(std::string_view display_name);
bool NameHasWordWithPrefix(std::string_view display_name, std::string_view prefix);
// Message search (issue 12): the words of a message body or of a search
// query, split as NameWords splits (fold, then ASCII whitespace and
// punctuation separate; other characters are word characters), each cut to
// kMaxIndexedWordBytes at a character boundary (a longer query word still
// matches as a prefix), distinct, ascending. Every backend indexes and
// queries exactly these words, so both find the same messages.
inline constexpr size_t kMaxIndexedWordBytes = 64;
std::vector<std::string> MessageWords(std::string_view text);
// Whether a canonical username (protocol::CanonicalUsername: a-z, 0-9, '_',
// '.') can start with `query`. When it cannot, search skips the username
// scan, whose upper bound (PrefixEnd) would not even be valid UTF-8 for some
// non-ASCII queries (PostgreSQL refuses such a parameter).
bool UsernameCouldStartWith(std::string_view query);
// The least string greater than every string starting with `prefix`, or
// nullopt when there is none ("" or all 0xff bytes).
std::optional<std::string> PrefixEnd(std::string prefix);

}  // namespace parley::store
