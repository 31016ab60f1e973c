// cold_body and the purge's block rewrite. The function runs a statement of
// its own on the connection that calls it (SQLite allows this for reads), so
// the block it reads is in the caller's snapshot: a reader sees the block
// its messages rows point to, and the writer sees the block its own
// uncommitted compaction wrote. Decoded blocks are cached per connection by
// (conversation, first seq, nonce); the probe reads the row's small columns
// only (data is the last column, in overflow pages SQLite then never
// touches), so a page of 50 cold messages of one block costs 50 probes and
// one read and decode of the block.
#include "store/sqlite/sqlite_cold.h"

#include <sqlite3.h>

#include <algorithm>
#include <array>
#include <map>
#include <optional>
#include <random>

namespace parley::store::sqlite {

namespace {

// Decoded blocks kept per connection: a history page or a sync page spans a
// few blocks at most.
constexpr size_t kCachedBlocks = 4;

constexpr const char* kBlockCoveringSql =
    "SELECT first_seq, last_seq, nonce FROM message_blocks "
    "WHERE conversation_id = ?1 AND first_seq <= ?2 ORDER BY first_seq DESC LIMIT 1";
constexpr const char* kBlockDataSql = "SELECT data FROM message_blocks WHERE conversation_id = ?1 AND first_seq = ?2";

// The errors of a page-in (cold_body's and ReadColdBody's).
constexpr const char* kNoBlock = "cold tier: a compacted message has no block";
constexpr const char* kBlockVanished = "cold tier: a block vanished";
constexpr const char* kNotInBlock = "cold tier: a compacted message is missing from its block";

// The entry of `seq` in a decoded block, or nullptr.
const ColdEntry* FindEntry(const std::vector<ColdEntry>& entries, Seq seq) {
  auto it = std::lower_bound(entries.begin(), entries.end(), seq,
                             [](const ColdEntry& e, Seq s) { return e.seq < s; });
  return it == entries.end() || it->seq != seq ? nullptr : &*it;
}

struct CachedBlock {
  ConversationId conversation = 0;
  Seq first_seq = 0;
  int64_t nonce = 0;
  std::vector<ColdEntry> entries;
};

// Pages texts in: the covering block of a seq, decoded (from a small cache
// when its nonce still matches), and the seq's entry in it. cold_body keeps
// one per connection; ReadColdBody makes one for its single text.
struct ColdPageIn {
  Db* db = nullptr;
  ColdCodec* codec = nullptr;
  std::array<CachedBlock, kCachedBlocks> cache;
  size_t next = 0;  // round-robin replacement

  // The decoded block, from the cache when its nonce matches. Fails
  // kInternal if it cannot be read or does not decode.
  Result<const CachedBlock*> Decoded(ConversationId conversation, Seq first_seq, int64_t nonce) {
    for (const CachedBlock& b : cache) {
      if (b.conversation == conversation && b.first_seq == first_seq && b.nonce == nonce) return &b;
    }
    std::string data;
    {
      Stmt s(*db, kBlockDataSql);
      s.BindInt(1, conversation).BindInt(2, first_seq);
      if (!s.Step()) return Status(ErrorCode::kInternal, kBlockVanished);
      data = s.Blob(0);
    }
    Result<std::vector<ColdEntry>> entries = codec->Unpack(first_seq, data);
    if (!entries) return entries.error();
    CachedBlock& slot = cache[next];
    next = (next + 1) % cache.size();
    slot = CachedBlock{conversation, first_seq, nonce, std::move(entries).value()};
    return &slot;
  }

  // The compacted text of (conversation, seq), valid until the next call.
  // Fails kInternal if it has no block, or its block cannot be read, does
  // not decode or lacks it.
  Result<const std::string*> Text(ConversationId conversation, Seq seq) {
    Seq first_seq = 0;
    int64_t nonce = 0;
    {
      Stmt s(*db, kBlockCoveringSql);
      s.BindInt(1, conversation).BindInt(2, seq);
      if (!s.Step() || s.Int(1) < seq) return Status(ErrorCode::kInternal, kNoBlock);
      first_seq = s.Int(0);
      nonce = s.Int(2);
    }
    Result<const CachedBlock*> block = Decoded(conversation, first_seq, nonce);
    if (!block) return block.error();
    const ColdEntry* entry = FindEntry((*block)->entries, seq);
    if (entry == nullptr) return Status(ErrorCode::kInternal, kNotInBlock);
    return &entry->body;
  }
};

// cold_body's state: the page-in state and the codec it uses.
struct ColdBodyFunction {
  ColdCodec codec;
  ColdPageIn state;
};

void ColdBody(sqlite3_context* ctx, int /*argc*/, sqlite3_value** argv) {
  if (sqlite3_value_type(argv[0]) == SQLITE_NULL || sqlite3_value_type(argv[1]) == SQLITE_NULL) {
    sqlite3_result_null(ctx);
    return;
  }
  auto* f = static_cast<ColdBodyFunction*>(sqlite3_user_data(ctx));
  Result<const std::string*> text = f->state.Text(sqlite3_value_int64(argv[0]), sqlite3_value_int64(argv[1]));
  if (!text) {
    sqlite3_result_error(ctx, text.error().message().c_str(), -1);
    return;
  }
  sqlite3_result_text64(ctx, (*text)->data(), (*text)->size(), SQLITE_TRANSIENT, SQLITE_UTF8);
}

}  // namespace

int64_t NewBlockNonce() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return static_cast<int64_t>(rng());
}

Status InstallColdBody(Db& db) {
  auto* f = new ColdBodyFunction;
  f->state.db = &db;
  f->state.codec = &f->codec;
  // SQLITE_DIRECTONLY: not callable from schema objects (triggers, views);
  // it reads tables, so it is not deterministic either.
  const int rc = sqlite3_create_function_v2(
      db.handle(), "cold_body", 2, SQLITE_UTF8 | SQLITE_DIRECTONLY, f, &ColdBody, nullptr, nullptr,
      [](void* p) { delete static_cast<ColdBodyFunction*>(p); });
  if (rc != SQLITE_OK) return Status(ErrorCode::kInternal, "cannot install cold_body");
  return Status::Ok();
}

Result<std::string> ReadColdBody(Db& db, ColdCodec& codec, ConversationId conversation, Seq seq) {
  ColdPageIn state;
  state.db = &db;
  state.codec = &codec;
  Result<const std::string*> text = state.Text(conversation, seq);
  if (!text) return text.error();
  return **text;
}

Result<int64_t> DropFromColdBlocks(Db& db, ColdCodec& codec, ConversationId conversation,
                                   const std::vector<Seq>& seqs) {
  // The covering block of each seq, then one rewrite per block.
  std::map<Seq, std::vector<Seq>> by_block;
  for (Seq seq : seqs) {
    Stmt s(db, kBlockCoveringSql);
    s.BindInt(1, conversation).BindInt(2, seq);
    if (s.Step() && s.Int(1) >= seq) by_block[s.Int(0)].push_back(seq);
  }
  int64_t removed = 0;
  for (auto& [first_seq, drop] : by_block) {
    std::sort(drop.begin(), drop.end());
    std::string data;
    {
      Stmt s(db, kBlockDataSql);
      s.BindInt(1, conversation).BindInt(2, first_seq);
      if (!s.Step()) continue;
      data = s.Blob(0);
    }
    Result<ColdRewrite> block = codec.Without(first_seq, data, drop);
    if (!block) return block.error();
    if (block->removed == 0) continue;
    removed += block->removed;
    if (block->messages == 0) {
      Stmt d(db, "DELETE FROM message_blocks WHERE conversation_id = ?1 AND first_seq = ?2");
      d.BindInt(1, conversation).BindInt(2, first_seq);
      d.Run();
      continue;
    }
    Stmt u(db,
           "UPDATE message_blocks SET messages = ?3, raw_bytes = ?4, data = ?5, nonce = ?6 "
           "WHERE conversation_id = ?1 AND first_seq = ?2");
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

}  // namespace parley::store::sqlite
