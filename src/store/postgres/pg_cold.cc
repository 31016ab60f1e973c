// Paging cold texts back and the purge's block rewrite. The page-in is one
// statement whatever the page: the covering block of each wanted seq is
// found by a backwards probe of message_blocks' primary key (one per seq,
// inside the conversation's partition), the distinct blocks are joined back
// and returned once each, with their data only when this connection has not
// got them decoded already.
#include "store/postgres/pg_cold.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <random>
#include <string_view>
#include <utility>

namespace parley::store::postgres {

namespace {

// $1, $2: the wanted (conversation, seq) pairs; $3..$5: the cached blocks'
// (conversation, first seq, nonce). Rows: kind 0 = a wanted row that is
// still cold (and, with the lock, locked by this transaction) as (kind,
// conversation, seq); kind 1 = a block as (kind, conversation, first seq,
// last seq, nonce, data or NULL when cached).
// Each wanted row and each block is found by primary key in a LATERAL
// subquery with LIMIT (which the planner cannot pull up into a join): a
// nested loop of index probes, each pruned to one partition at run time,
// whatever the statistics say (a hash join would scan every partition).
constexpr const char* kWantedPlain =
    "k AS MATERIALIZED (SELECT u.c, u.s FROM unnest($1::bigint[], $2::bigint[]) AS u(c, s)), ";
constexpr const char* kWantedLocked =
    "k AS (SELECT m.c, m.s FROM unnest($1::bigint[], $2::bigint[]) AS u(c, s) CROSS JOIN LATERAL "
    "(SELECT x.conversation_id AS c, x.seq AS s FROM messages x WHERE x.conversation_id = u.c AND x.seq = u.s "
    "AND x.cold LIMIT 1 FOR SHARE SKIP LOCKED) m), ";
constexpr const char* kBlocksOfWanted =
    "need AS MATERIALIZED (SELECT DISTINCT k.c, (SELECT b.first_seq FROM message_blocks b WHERE b.conversation_id = k.c "
    "AND b.first_seq <= k.s ORDER BY b.first_seq DESC LIMIT 1) AS f FROM k) "
    "SELECT 0, k.c, k.s, NULL::bigint, NULL::bigint, NULL::bytea FROM k "
    "UNION ALL "
    "SELECT 1, b.conversation_id, b.first_seq, b.last_seq, b.nonce, "
    "CASE WHEN EXISTS (SELECT 1 FROM unnest($3::bigint[], $4::bigint[], $5::bigint[]) AS x(c, f, n) "
    "WHERE x.c = b.conversation_id AND x.f = b.first_seq AND x.n = b.nonce) THEN NULL ELSE b.data END "
    "FROM need CROSS JOIN LATERAL (SELECT y.conversation_id, y.first_seq, y.last_seq, y.nonce, y.data "
    "FROM message_blocks y WHERE y.conversation_id = need.c AND y.first_seq = need.f LIMIT 1) b";

Status Corrupt(const char* why) { return Status(ErrorCode::kInternal, fmt::format("cold tier: {}", why)); }

}  // namespace

const std::string& ColdPageInSql(bool lock_rows) {
  static const std::string kPlainSql = std::string("WITH ") + kWantedPlain + kBlocksOfWanted;
  static const std::string kLockedSql = std::string("WITH ") + kWantedLocked + kBlocksOfWanted;
  return lock_rows ? kLockedSql : kPlainSql;
}

Status ColdTexts::Fill(PgConn& db, const std::vector<ColdText>& texts, bool lock_rows) {
  if (texts.empty()) return Status::Ok();
  std::vector<int64_t> conversations, seqs, cached_c, cached_f, cached_n;
  for (const ColdText& t : texts) {
    conversations.push_back(t.conversation);
    seqs.push_back(t.seq);
  }
  for (const Block& b : cache_) {
    if (b.conversation == 0) continue;
    cached_c.push_back(b.conversation);
    cached_f.push_back(b.first_seq);
    cached_n.push_back(b.nonce);
  }
  PgRows r = db.Query(ColdPageInSql(lock_rows), PgParams()
                                                             .IntArray(conversations)
                                                             .IntArray(seqs)
                                                             .IntArray(cached_c)
                                                             .IntArray(cached_f)
                                                             .IntArray(cached_n));
  if (db.failed()) return db.error();
  // The page's blocks by (conversation, first seq): cached ones in place,
  // decoded ones in `fresh` (reserved: pointers into it stay valid).
  std::vector<Block> fresh;
  fresh.reserve(static_cast<size_t>(r.size()));
  std::map<std::pair<ConversationId, Seq>, const Block*> blocks;
  std::map<std::pair<ConversationId, Seq>, bool> still_cold;
  for (int i = 0; i < r.size(); ++i) {
    const ConversationId conversation = r.Int(i, 1);
    if (r.Int(i, 0) == 0) {
      still_cold[{conversation, r.Int(i, 2)}] = true;
      continue;
    }
    const Seq first_seq = r.Int(i, 2);
    const int64_t nonce = r.Int(i, 4);
    const Block* block = nullptr;
    if (r.IsNull(i, 5)) {
      for (const Block& b : cache_) {
        if (b.conversation == conversation && b.first_seq == first_seq && b.nonce == nonce) block = &b;
      }
      if (block == nullptr) return Corrupt("a cached block vanished");
    } else {
      Result<std::vector<ColdEntry>> entries = codec_.Unpack(first_seq, r.Bytes(i, 5));
      if (!entries) return entries.error();
      fresh.push_back(Block{conversation, first_seq, r.Int(i, 3), nonce, std::move(entries).value()});
      block = &fresh.back();
    }
    blocks[{conversation, first_seq}] = block;
  }
  for (const ColdText& t : texts) {
    if (still_cold.count({t.conversation, t.seq}) == 0) {
      // Not cold any more, or (with the lock) held by another transaction:
      // changed since this transaction read it.
      if (lock_rows) return Status(ErrorCode::kUnavailable, "a compacted message changed while it was read; retry");
      return Corrupt("a compacted message has no row");
    }
    auto it = blocks.upper_bound({t.conversation, t.seq});
    if (it == blocks.begin() || (--it)->first.first != t.conversation || it->second->last_seq < t.seq)
      return Corrupt("a compacted message has no block");
    const std::vector<ColdEntry>& entries = it->second->entries;
    auto e = std::lower_bound(entries.begin(), entries.end(), t.seq,
                              [](const ColdEntry& x, Seq s) { return x.seq < s; });
    if (e == entries.end() || e->seq != t.seq) return Corrupt("a compacted message is missing from its block");
    *t.body = e->body;
  }
  // Keep the blocks decoded now for the next page (the last few of them).
  const size_t keep = std::min(fresh.size(), kCachedBlocks);
  for (size_t i = fresh.size() - keep; i < fresh.size(); ++i) {
    cache_[next_] = std::move(fresh[i]);
    next_ = (next_ + 1) % cache_.size();
  }
  return Status::Ok();
}

int64_t NewBlockNonce() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return static_cast<int64_t>(rng());
}

namespace {

// A table of blocks the purge rewrites: its name, its count column and the
// codec's rewrite.
struct BlockTable {
  const char* name;
  const char* count_column;
  Result<ColdRewrite> (ColdCodec::*without)(Seq, std::string_view, const std::vector<Seq>&);
};

constexpr BlockTable kMessageBlocks{"message_blocks", "messages", &ColdCodec::Without};
constexpr BlockTable kEditBlocks{"edit_blocks", "edits", &ColdCodec::EditsWithout};

Result<int64_t> DropFrom(PgConn& db, ColdCodec& codec, const BlockTable& table, ConversationId conversation,
                         const std::vector<Seq>& drop) {
  // The covering block of each seq (one backwards probe each, then one
  // index scan for them all), locked in ascending first seq. Under
  // READ COMMITTED a block another purge is rewriting is waited for and
  // then read as that purge left it (or skipped if it deleted it), so
  // neither rewrite is lost.
  PgRows r = db.Query(
      fmt::format("SELECT b.first_seq, b.last_seq, b.data FROM {0} b WHERE b.conversation_id = $1 "
                  "AND b.first_seq = ANY(ARRAY(SELECT (SELECT x.first_seq FROM {0} x WHERE x.conversation_id = $1 "
                  "AND x.first_seq <= s ORDER BY x.first_seq DESC LIMIT 1) FROM unnest($2::bigint[]) AS s)) "
                  "ORDER BY b.first_seq FOR UPDATE OF b",
                  table.name),
      PgParams().Int(conversation).IntArray(drop));
  if (db.failed()) return db.error();
  int64_t removed = 0;
  for (int i = 0; i < r.size(); ++i) {
    const Seq first_seq = r.Int(i, 0);
    Result<ColdRewrite> block = (codec.*table.without)(first_seq, r.Bytes(i, 2), drop);
    if (!block) return block.error();
    if (block->removed == 0) continue;
    removed += block->removed;
    if (block->messages == 0) {
      db.Defer(fmt::format("DELETE FROM {} WHERE conversation_id = $1 AND first_seq = $2", table.name),
               PgParams().Int(conversation).Int(first_seq));
      continue;
    }
    // last_seq stays an upper bound.
    db.Defer(fmt::format("UPDATE {} SET {} = $3, raw_bytes = $4, data = $5, nonce = $6 "
                         "WHERE conversation_id = $1 AND first_seq = $2",
                         table.name, table.count_column),
             PgParams()
                 .Int(conversation)
                 .Int(first_seq)
                 .Int(block->messages)
                 .Int(block->raw_bytes)
                 .Bytes(block->data)
                 .Int(NewBlockNonce()));
  }
  return removed;
}

}  // namespace

Result<int64_t> DropFromColdBlocks(PgConn& db, ColdCodec& codec, ConversationId conversation,
                                   const std::vector<Seq>& seqs) {
  if (seqs.empty()) return int64_t{0};
  std::vector<Seq> drop = seqs;
  std::sort(drop.begin(), drop.end());
  Result<int64_t> texts = DropFrom(db, codec, kMessageBlocks, conversation, drop);
  if (!texts) return texts;
  Result<int64_t> edits = DropFrom(db, codec, kEditBlocks, conversation, drop);
  if (!edits) return edits;
  return *texts + *edits;
}

const char* ColdEditPageInSql() {
  // $1, $2: the wanted (conversation, seq) pairs. Rows: each covering edit
  // block once, as (conversation, first seq, last seq, data). As the page-in
  // of message texts: the covering block of each wanted seq by a backwards
  // probe of the primary key, each distinct block by primary key in a
  // LATERAL subquery (index probes pruned to one partition at run time).
  return "WITH need AS MATERIALIZED (SELECT DISTINCT u.c, (SELECT y.first_seq FROM edit_blocks y "
         "WHERE y.conversation_id = u.c AND y.first_seq <= u.s ORDER BY y.first_seq DESC LIMIT 1) AS f "
         "FROM unnest($1::bigint[], $2::bigint[]) AS u(c, s)) "
         "SELECT b.conversation_id, b.first_seq, b.last_seq, b.data FROM need CROSS JOIN LATERAL "
         "(SELECT y.conversation_id, y.first_seq, y.last_seq, y.data FROM edit_blocks y "
         "WHERE y.conversation_id = need.c AND y.first_seq = need.f LIMIT 1) b";
}

Status FillColdEdits(PgConn& db, ColdCodec& codec, const std::vector<ColdEditText>& texts) {
  if (texts.empty()) return Status::Ok();
  std::vector<int64_t> conversations, seqs;
  for (const ColdEditText& t : texts) {
    conversations.push_back(t.conversation);
    seqs.push_back(t.seq);
  }
  PgRows r = db.Query(ColdEditPageInSql(), PgParams().IntArray(conversations).IntArray(seqs));
  if (db.failed()) return db.error();
  struct EditBlock {
    Seq last_seq = 0;
    std::vector<ColdEditEntry> entries;
  };
  std::map<std::pair<ConversationId, Seq>, EditBlock> blocks;
  for (int i = 0; i < r.size(); ++i) {
    const Seq first_seq = r.Int(i, 1);
    Result<std::vector<ColdEditEntry>> entries = codec.UnpackEdits(first_seq, r.Bytes(i, 3));
    if (!entries) return entries.error();
    blocks[{r.Int(i, 0), first_seq}] = EditBlock{r.Int(i, 2), std::move(entries).value()};
  }
  for (const ColdEditText& t : texts) {
    auto it = blocks.upper_bound({t.conversation, t.seq});
    if (it == blocks.begin() || (--it)->first.first != t.conversation || it->second.last_seq < t.seq)
      return Corrupt("a compacted edit has no block");
    const std::vector<ColdEditEntry>& entries = it->second.entries;
    auto e = std::lower_bound(entries.begin(), entries.end(), std::pair{t.seq, t.version},
                              [](const ColdEditEntry& x, std::pair<Seq, int64_t> k) {
                                return std::pair{x.seq, x.version} < k;
                              });
    if (e == entries.end() || e->seq != t.seq || e->version != t.version)
      return Corrupt("a compacted edit is missing from its block");
    *t.body = e->body;
  }
  return Status::Ok();
}

}  // namespace parley::store::postgres
