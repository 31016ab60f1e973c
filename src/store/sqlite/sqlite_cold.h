// The SQLite store's cold tier (issue 12 item 6; docs/architecture.md "Cold
// tier"), internal to the SQLite backend.
//
// A compacted message keeps its messages row (keys, dedup key, times,
// version, tombstone state) with body = '' and cold = 1; its text is in the
// message_blocks row of its conversation whose range covers its seq (one
// zstd block of up to kColdBlockMessages consecutive messages,
// store/cold_block.h). Reads never see the difference: every statement that
// reads a text reads PARLEY_MESSAGE_BODY, which for a cold row calls the SQL
// function cold_body(conversation_id, seq) installed on both connections.
// cold_body looks the block up by primary key, decodes it (a few decoded
// blocks are kept per connection, keyed by the block's nonce, a random
// number drawn anew at every write of a block, so a history page of one
// block reads and decodes its data once, and a block rewritten or rolled
// back and made again is never read stale) and returns the text byte for
// byte. A cold row without a block, or a block that does not decode, fails
// the statement (kInternal): corruption is never shown as an empty text.
//
// Compacted edits likewise: a message_edits row with cold = 1 keeps body =
// '' and its text is in the edit_blocks row of its conversation whose range
// covers its seq (an edit block of store/cold_block.h, keyed by seq and
// version); PARLEY_EDIT_BODY reads it through cold_edit_body(conversation_id,
// seq, version), with its own cache of decoded blocks and the same errors.
//
// Thread-safety: as Db's; the functions' state belongs to their connection.
#pragma once

#include <string>
#include <vector>

#include "common/status.h"
#include "store/cold_block.h"
#include "store/sqlite/sqlite_db.h"
#include "store/types.h"

namespace parley::store::sqlite {

// A message's current text, of the messages row aliased `m`.
#define PARLEY_MESSAGE_BODY(m) \
  "CASE WHEN " m ".cold > 0 THEN cold_body(" m ".conversation_id, " m ".seq) ELSE " m ".body END"

// An edit's text, of the message_edits row aliased `x`.
#define PARLEY_EDIT_BODY(x) \
  "CASE WHEN " x ".cold > 0 THEN cold_edit_body(" x ".conversation_id, " x ".seq, " x ".version) ELSE " x ".body END"

// A block's nonce: random, drawn for every write of a block (the key of
// the decoded blocks cold_body keeps).
int64_t NewBlockNonce();

// Installs cold_body and cold_edit_body on `db`. Fails kInternal if SQLite
// refuses.
Status InstallColdBody(Db& db);

// The text of the compacted message (conversation, seq), read and decoded
// from its block in C++ rather than through cold_body, for a caller that
// must go on after a missing or corrupt block (a push preview, which is
// then left out): such a block fails kInternal here without failing a
// statement. Database errors are recorded in `db` (sticky).
Result<std::string> ReadColdBody(Db& db, ColdCodec& codec, ConversationId conversation, Seq seq);

// Removes the texts of `seqs` (ascending; messages of `conversation` deleted
// and being purged), and the texts of their edits, from the blocks that
// cover them (message and edit blocks): each such block is decoded,
// rewritten without them, or deleted once empty. Returns how many texts
// were removed (message and edit texts). Errors are recorded in `db` (sticky) or returned
// (a block that does not decode).
Result<int64_t> DropFromColdBlocks(Db& db, ColdCodec& codec, ConversationId conversation,
                                   const std::vector<Seq>& seqs);

}  // namespace parley::store::sqlite
