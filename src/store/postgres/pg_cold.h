// The PostgreSQL store's cold tier (issue 12 item 6; docs/architecture.md
// "Cold tier"), internal to the PostgreSQL backend.
//
// As in SQLite (store/sqlite/sqlite_cold.h), a compacted message keeps its
// messages row (keys, dedup key, times, version, tombstone state) with
// body = '' and cold = true; its text is in the message_blocks row of its
// conversation whose range covers its seq: one zstd block (bytea, the
// shared codec of store/cold_block.h) of up to kColdBlockMessages
// consecutive messages. SQL cannot call zstd, so texts are paged back in
// C++: every statement that reads a text also reads m.cold, and after it
// ColdTexts::Fill fills in the texts of the cold rows with one more query
// for the whole page, which returns each block the page needs once.
//
// Decoded blocks are cached per connection, keyed by (conversation, first
// seq, nonce); the nonce is random and drawn anew at every write of a block,
// so a rewritten block (the purge) is never served stale. The query sends
// the cached keys and gets NULL instead of the data of a block it has, so a
// history read in pages of one block transfers and decodes it once.
//
// Consistency. Fill runs in its caller's transaction. A reader's is one
// REPEATABLE READ snapshot: the rows and the blocks it sees agree. The
// writer's is READ COMMITTED, a snapshot per statement, so a message read
// as cold by one statement could be deleted and purged by another node
// before the next one reads its block. With `lock_rows` the query first
// locks the rows it pages in (FOR SHARE SKIP LOCKED: no wait, so no lock
// cycle with a batch holding stream heads): a locked row that is still cold
// cannot lose its text before this transaction ends, and a row that is
// locked by another transaction or no longer cold makes Fill fail
// kUnavailable (retryable; the retry reads the row as it is now).
//
// Errors: a cold row whose block is missing, or a block that does not
// decode or lacks the text, fails Fill with kInternal: corruption is never
// shown as an empty text. A database error is the connection's (sticky).
//
// Thread-safety: as PgConn's; one ColdTexts per connection.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "store/cold_block.h"
#include "store/postgres/pg_conn.h"
#include "store/types.h"

namespace parley::store::postgres {

// A text to page in: message (conversation, seq), whose row is cold, and
// where its text goes.
struct ColdText {
  ConversationId conversation = 0;
  Seq seq = 0;
  std::string* body = nullptr;
};

class ColdTexts {
 public:
  // Fills every `texts[i].body` from its block (see above). REQUIRES: each
  // row was read as cold in the current transaction.
  Status Fill(PgConn& db, const std::vector<ColdText>& texts, bool lock_rows);
  // The codec, for the writer's compaction and purge.
  ColdCodec& codec() { return codec_; }

 private:
  // Decoded blocks kept per connection: a history or sync page spans a few.
  static constexpr size_t kCachedBlocks = 4;
  struct Block {
    ConversationId conversation = 0;  // 0: an empty slot
    Seq first_seq = 0;
    Seq last_seq = 0;
    int64_t nonce = 0;
    std::vector<ColdEntry> entries;
  };

  ColdCodec codec_;
  std::array<Block, kCachedBlocks> cache_;
  size_t next_ = 0;  // round-robin replacement
};

// The page-in statement Fill runs, the variant that locks the rows it pages
// in or the plain one (parameters as described in pg_cold.cc). Exposed for
// the test that pins its plan (pg_store_test).
const std::string& ColdPageInSql(bool lock_rows);

// A compacted edit's text to page in: edit `version` of message
// (conversation, seq), whose message_edits row is cold, and where its text
// goes.
struct ColdEditText {
  ConversationId conversation = 0;
  Seq seq = 0;
  int64_t version = 0;
  std::string* body = nullptr;
};

// Fills every `texts[i].body` from its edit block (edit_blocks; the edit
// blocks of store/cold_block.h) with one query for them all, which returns
// each block they need once. No cache: only the stream's kEdit events read
// edit texts, a few per page. REQUIRES: each row was read as cold in the
// current transaction, a reader's snapshot (the rows and the blocks agree;
// the writer never reads edit texts). Fails kInternal as Fill does: a
// missing block or text is corruption, never an empty text.
Status FillColdEdits(PgConn& db, ColdCodec& codec, const std::vector<ColdEditText>& texts);

// The statement FillColdEdits runs (parameters as described in pg_cold.cc).
// Exposed for the test that pins its plan (pg_store_test).
const char* ColdEditPageInSql();

// A block's nonce: random, drawn for every write of a block.
int64_t NewBlockNonce();

// Removes the texts of `seqs` (messages of `conversation` deleted and being
// purged), and the texts of their edits, from the blocks that cover them:
// each such block is locked (FOR UPDATE, the message blocks then the edit
// blocks, each in ascending first seq: two purges rewriting one block apply
// in turn and cannot deadlock, see pg_store.cc "Cold tier"), decoded, and
// rewritten without them or deleted once empty. Returns how many texts were
// removed (message and edit texts).
// Database errors are the connection's (sticky); a block that does not
// decode fails kInternal.
Result<int64_t> DropFromColdBlocks(PgConn& db, ColdCodec& codec, ConversationId conversation,
                                   const std::vector<Seq>& seqs);

}  // namespace parley::store::postgres
