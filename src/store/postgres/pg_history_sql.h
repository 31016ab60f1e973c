// The SQL of the PostgreSQL store's history reads, in one place for the
// store (pg_store.cc) and for the test that pins their query plans
// (pg_store_test, "HistoryAndPageInUseTheirIndexes"; the cold page-in's
// statement is pg_cold.h's ColdPageInSql). Internal to the PostgreSQL
// backend; plain constants, safe on any thread.
#pragma once

// What MessageAt reads (table alias m), in order; the last, m.cold, says
// whether the text is in a block (ColdAt; pg_store.cc "Cold tier").
#define PARLEY_MESSAGE_COLUMNS \
  "m.conversation_id, m.seq, m.sender_id, m.sender_device_id, m.client_id, m.body, m.created_at, m.version, " \
  "m.edited_at, m.deleted_at, m.expires_at, m.cold"

namespace parley::store::postgres {

// A history page: the $4 newest messages of conversation $1 below seq $2
// that are not withheld from viewer $3, newest first. Backwards on the
// messages' primary key within the conversation's partition; each candidate
// probes withheld's primary key.
inline constexpr const char* kHistoryPageSql =
    "SELECT " PARLEY_MESSAGE_COLUMNS " "
    "FROM messages m WHERE m.conversation_id = $1 AND m.seq < $2 AND NOT EXISTS (SELECT 1 FROM withheld w "
    "WHERE w.conversation_id = $1 AND w.user_id = $3 AND w.seq = m.seq) ORDER BY m.seq DESC LIMIT $4";

// The seqs of conversation $1 withheld from user $2 (and not hidden by them)
// in ($3, $4], ascending: a range scan of withheld's primary key (a history
// page's "stays sent").
inline constexpr const char* kWithheldInSql =
    "SELECT seq FROM withheld WHERE conversation_id = $1 AND user_id = $2 AND seq > $3 AND seq <= $4 "
    "AND hidden_at = 0 ORDER BY seq";

}  // namespace parley::store::postgres
