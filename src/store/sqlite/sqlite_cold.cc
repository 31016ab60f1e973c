// cold_body and the purge's block rewrite. The function runs a statement of
// its own on the connection that calls it (SQLite allows this for reads), so
// the block it reads is in the caller's snapshot: a reader sees the block
// its messages rows point to, and the writer sees the block its own
// uncommitted compaction wrote. Decoded blocks are cached per connection by
// (conversation, first seq, nonce); the probe reads the row's small columns
// only (data is the last column, in overflow pages SQLite then never
// touches), so a page of 50 cold messages of one block costs 50 probes and
// one read and decode of the block. cold_edit_body does the same for the
// texts of compacted edits (edit_blocks), keyed by (seq, version).
#include "store/sqlite/sqlite_cold.h"

#include <sqlite3.h>

#include <algorithm>
#include <array>
#include <map>
#include <optional>
#include <random>
#include <string_view>
#include <utility>

#include <fmt/format.h>

namespace parley::store::sqlite {

namespace {

// Decoded blocks kept per connection: a history page or a sync page spans a
// few blocks at most.
constexpr size_t kCachedBlocks = 4;

// A message block (kind of block the page-in reads): its table and codec.
struct MessageBlocks {
  using Entry = ColdEntry;
  static constexpr const char* kCoveringSql =
      "SELECT first_seq, last_seq, nonce FROM message_blocks "
      "WHERE conversation_id = ?1 AND first_seq <= ?2 ORDER BY first_seq DESC LIMIT 1";
  static constexpr const char* kDataSql =
      "SELECT data FROM message_blocks WHERE conversation_id = ?1 AND first_seq = ?2";
  static Result<std::vector<Entry>> Unpack(ColdCodec& codec, Seq first_seq, std::string_view data) {
    return codec.Unpack(first_seq, data);
  }
  // The entry of `seq` (`version` unused), or nullptr.
  static const Entry* Find(const std::vector<Entry>& entries, Seq seq, int64_t /*version*/) {
    auto it = std::lower_bound(entries.begin(), entries.end(), seq, [](const Entry& e, Seq s) { return e.seq < s; });
    return it == entries.end() || it->seq != seq ? nullptr : &*it;
  }
};

// An edit block: the same for the edits' texts, keyed (seq, version).
struct EditBlocks {
  using Entry = ColdEditEntry;
  static constexpr const char* kCoveringSql =
      "SELECT first_seq, last_seq, nonce FROM edit_blocks "
      "WHERE conversation_id = ?1 AND first_seq <= ?2 ORDER BY first_seq DESC LIMIT 1";
  static constexpr const char* kDataSql =
      "SELECT data FROM edit_blocks WHERE conversation_id = ?1 AND first_seq = ?2";
  static Result<std::vector<Entry>> Unpack(ColdCodec& codec, Seq first_seq, std::string_view data) {
    return codec.UnpackEdits(first_seq, data);
  }
  static const Entry* Find(const std::vector<Entry>& entries, Seq seq, int64_t version) {
    auto it = std::lower_bound(entries.begin(), entries.end(), std::pair{seq, version},
                               [](const Entry& e, std::pair<Seq, int64_t> k) {
                                 return std::pair{e.seq, e.version} < k;
                               });
    return it == entries.end() || it->seq != seq || it->version != version ? nullptr : &*it;
  }
};

// The errors of a page-in (cold_body's, cold_edit_body's and ReadColdBody's).
constexpr const char* kNoBlock = "cold tier: a compacted text has no block";
constexpr const char* kBlockVanished = "cold tier: a block vanished";
constexpr const char* kNotInBlock = "cold tier: a compacted text is missing from its block";

template <typename Entry>
struct CachedBlock {
  ConversationId conversation = 0;
  Seq first_seq = 0;
  int64_t nonce = 0;
  std::vector<Entry> entries;
};

// Pages texts in: the covering block of a seq, decoded (from a small cache
// when its nonce still matches), and the text's entry in it. cold_body and
// cold_edit_body keep one per connection; ReadColdBody makes one for its
// single text.
template <typename Blocks>
struct ColdPageIn {
  using Entry = typename Blocks::Entry;
  Db* db = nullptr;
  ColdCodec* codec = nullptr;
  std::array<CachedBlock<Entry>, kCachedBlocks> cache;
  size_t next = 0;  // round-robin replacement

  // The decoded block, from the cache when its nonce matches. Fails
  // kInternal if it cannot be read or does not decode.
  Result<const CachedBlock<Entry>*> Decoded(ConversationId conversation, Seq first_seq, int64_t nonce) {
    for (const CachedBlock<Entry>& b : cache) {
      if (b.conversation == conversation && b.first_seq == first_seq && b.nonce == nonce) return &b;
    }
    std::string data;
    {
      Stmt s(*db, Blocks::kDataSql);
      s.BindInt(1, conversation).BindInt(2, first_seq);
      if (!s.Step()) return Status(ErrorCode::kInternal, kBlockVanished);
      data = s.Blob(0);
    }
    Result<std::vector<Entry>> entries = Blocks::Unpack(*codec, first_seq, data);
    if (!entries) return entries.error();
    CachedBlock<Entry>& slot = cache[next];
    next = (next + 1) % cache.size();
    slot = CachedBlock<Entry>{conversation, first_seq, nonce, std::move(entries).value()};
    return &slot;
  }

  // The compacted text of (conversation, seq) (an edit block: of its edit
  // `version`), valid until the next call. Fails kInternal if it has no
  // block, or its block cannot be read, does not decode or lacks it.
  Result<const std::string*> Text(ConversationId conversation, Seq seq, int64_t version = 0) {
    Seq first_seq = 0;
    int64_t nonce = 0;
    {
      Stmt s(*db, Blocks::kCoveringSql);
      s.BindInt(1, conversation).BindInt(2, seq);
      if (!s.Step() || s.Int(1) < seq) return Status(ErrorCode::kInternal, kNoBlock);
      first_seq = s.Int(0);
      nonce = s.Int(2);
    }
    Result<const CachedBlock<Entry>*> block = Decoded(conversation, first_seq, nonce);
    if (!block) return block.error();
    const Entry* entry = Blocks::Find((*block)->entries, seq, version);
    if (entry == nullptr) return Status(ErrorCode::kInternal, kNotInBlock);
    return &entry->body;
  }
};

// The state of cold_body or cold_edit_body: the page-in state and the codec
// it uses.
template <typename Blocks>
struct ColdBodyFunction {
  ColdCodec codec;
  ColdPageIn<Blocks> state;
};

// cold_body(conversation, seq) and cold_edit_body(conversation, seq, version).
template <typename Blocks>
void ColdBody(sqlite3_context* ctx, int argc, sqlite3_value** argv) {
  for (int i = 0; i < argc; ++i) {
    if (sqlite3_value_type(argv[i]) == SQLITE_NULL) {
      sqlite3_result_null(ctx);
      return;
    }
  }
  auto* f = static_cast<ColdBodyFunction<Blocks>*>(sqlite3_user_data(ctx));
  Result<const std::string*> text = f->state.Text(sqlite3_value_int64(argv[0]), sqlite3_value_int64(argv[1]),
                                                  argc > 2 ? sqlite3_value_int64(argv[2]) : 0);
  if (!text) {
    sqlite3_result_error(ctx, text.error().message().c_str(), -1);
    return;
  }
  sqlite3_result_text64(ctx, (*text)->data(), (*text)->size(), SQLITE_TRANSIENT, SQLITE_UTF8);
}

template <typename Blocks>
Status InstallFunction(Db& db, const char* name, int args) {
  auto* f = new ColdBodyFunction<Blocks>;
  f->state.db = &db;
  f->state.codec = &f->codec;
  // SQLITE_DIRECTONLY: not callable from schema objects (triggers, views);
  // it reads tables, so it is not deterministic either.
  const int rc = sqlite3_create_function_v2(
      db.handle(), name, args, SQLITE_UTF8 | SQLITE_DIRECTONLY, f, &ColdBody<Blocks>, nullptr, nullptr,
      [](void* p) { delete static_cast<ColdBodyFunction<Blocks>*>(p); });
  if (rc != SQLITE_OK) return Status(ErrorCode::kInternal, fmt::format("cannot install {}", name));
  return Status::Ok();
}

// Removes the texts of the messages `seqs` (ascending) from the `Blocks`
// blocks that cover them; see DropFromColdBlocks.
template <typename Blocks>
Result<int64_t> DropFrom(Db& db, ColdCodec& codec, ConversationId conversation, const std::vector<Seq>& seqs,
                         const char* delete_sql, const char* update_sql,
                         Result<ColdRewrite> (ColdCodec::*without)(Seq, std::string_view, const std::vector<Seq>&)) {
  // The covering block of each seq, then one rewrite per block.
  std::map<Seq, std::vector<Seq>> by_block;
  for (Seq seq : seqs) {
    Stmt s(db, Blocks::kCoveringSql);
    s.BindInt(1, conversation).BindInt(2, seq);
    if (s.Step() && s.Int(1) >= seq) by_block[s.Int(0)].push_back(seq);
  }
  int64_t removed = 0;
  for (auto& [first_seq, drop] : by_block) {
    std::sort(drop.begin(), drop.end());
    std::string data;
    {
      Stmt s(db, Blocks::kDataSql);
      s.BindInt(1, conversation).BindInt(2, first_seq);
      if (!s.Step()) continue;
      data = s.Blob(0);
    }
    Result<ColdRewrite> block = (codec.*without)(first_seq, data, drop);
    if (!block) return block.error();
    if (block->removed == 0) continue;
    removed += block->removed;
    if (block->messages == 0) {
      Stmt d(db, delete_sql);
      d.BindInt(1, conversation).BindInt(2, first_seq);
      d.Run();
      continue;
    }
    Stmt u(db, update_sql);
    u.BindInt(1, conversation)
        .BindInt(2, first_seq)
        .BindInt(3, block->messages)
        .BindInt(4, block->raw_bytes)
        .BindBlob(5, block->data)
        .BindInt(6, NewBlockNonce());
    u.Run();
  }
  return removed;
}

}  // namespace

int64_t NewBlockNonce() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return static_cast<int64_t>(rng());
}

Status InstallColdBody(Db& db) {
  if (Status s = InstallFunction<MessageBlocks>(db, "cold_body", 2); !s.ok()) return s;
  return InstallFunction<EditBlocks>(db, "cold_edit_body", 3);
}

Result<std::string> ReadColdBody(Db& db, ColdCodec& codec, ConversationId conversation, Seq seq) {
  ColdPageIn<MessageBlocks> state;
  state.db = &db;
  state.codec = &codec;
  Result<const std::string*> text = state.Text(conversation, seq);
  if (!text) return text.error();
  return **text;
}

Result<int64_t> DropFromColdBlocks(Db& db, ColdCodec& codec, ConversationId conversation,
                                   const std::vector<Seq>& seqs) {
  Result<int64_t> texts = DropFrom<MessageBlocks>(
      db, codec, conversation, seqs, "DELETE FROM message_blocks WHERE conversation_id = ?1 AND first_seq = ?2",
      "UPDATE message_blocks SET messages = ?3, raw_bytes = ?4, data = ?5, nonce = ?6 "
      "WHERE conversation_id = ?1 AND first_seq = ?2",
      &ColdCodec::Without);
  if (!texts) return texts;
  Result<int64_t> edits = DropFrom<EditBlocks>(
      db, codec, conversation, seqs, "DELETE FROM edit_blocks WHERE conversation_id = ?1 AND first_seq = ?2",
      "UPDATE edit_blocks SET edits = ?3, raw_bytes = ?4, data = ?5, nonce = ?6 "
      "WHERE conversation_id = ?1 AND first_seq = ?2",
      &ColdCodec::EditsWithout);
  if (!edits) return edits;
  return *texts + *edits;
}

}  // namespace parley::store::sqlite
