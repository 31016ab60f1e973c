// A thin wrapper over one libpq connection, internal to the PostgreSQL store.
//
// PgConn owns a PGconn and its cache of prepared statements (prepared on
// first use, named by a counter, keyed by the SQL text). Statements take
// their parameters as PgParams (text, or raw bytes for bytea) and return a
// PgRows (the whole result, text format; values read by row and column).
//
// Two ways to run a statement:
//   - Query(): its rows are needed now. Any deferred statements are sent
//     first, so it sees their effects.
//   - Defer(): a write whose result is not needed (an INSERT, an UPDATE). It
//     is queued and sent with the next Query() or Flush(), all queued
//     statements together in one libpq pipeline: one round trip for many.
//
// Errors are sticky, as in the SQLite backend's Db: the first failure is
// recorded (mapped to a Status, see MapError) and every later call becomes a
// no-op that yields no rows, until ClearError(). Callers run a unit of work
// (a write batch, a read) and check failed() once at its end. sqlstate()
// tells a retryable conflict (serialization failure, deadlock) from others.
//
// Thread-safety: none. A PgConn is used by exactly one thread (the store's
// writer or one of its readers).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/status.h"

struct pg_conn;
struct pg_result;

namespace parley::store::postgres {

// Parameters of one statement, $1.. in order.
class PgParams {
 public:
  PgParams& Int(int64_t v);
  PgParams& Text(std::string_view v);
  PgParams& Bytes(std::string_view v);  // bytea, sent in binary
  PgParams& Bool(bool v);
  PgParams& Null();
  PgParams& IntArray(const std::vector<int64_t>& v);  // bigint[]

  size_t size() const { return values_.size(); }
  const char* const* values() const;
  const int* lengths() const { return lengths_.data(); }
  const int* formats() const { return formats_.data(); }

 private:
  std::vector<std::optional<std::string>> values_;
  std::vector<int> lengths_;
  std::vector<int> formats_;
  mutable std::vector<const char*> pointers_;
};

// The rows of one result (text format). Empty after an error.
class PgRows {
 public:
  PgRows() = default;
  explicit PgRows(pg_result* result);
  ~PgRows();
  PgRows(PgRows&& other) noexcept;
  PgRows& operator=(PgRows&& other) noexcept;
  PgRows(const PgRows&) = delete;
  PgRows& operator=(const PgRows&) = delete;

  int size() const;
  bool empty() const { return size() == 0; }
  bool IsNull(int row, int col) const;
  int64_t Int(int row, int col) const;  // 0 for NULL
  std::string Text(int row, int col) const;
  bool Bool(int row, int col) const;
  // A bytea column's bytes (the text form, "\\x" and hex, decoded); "" for
  // NULL or a value that does not decode.
  std::string Bytes(int row, int col) const;
  // A bigint[] column (text form "{1,2}") as values; empty for NULL.
  std::vector<int64_t> IntArray(int row, int col) const;

 private:
  pg_result* result_ = nullptr;
};

class PgConn {
 public:
  // TCP settings of every session unless the URL sets its own (libpq's
  // keepalives_* and tcp_user_timeout; ignored on Unix sockets): a server
  // that vanishes from the network without a reset (a partition, a dead
  // machine) is noticed after about 10 + 3 x 5 s of silence while a result
  // is awaited, or 15 s of unacknowledged data, instead of the kernel's
  // default of many minutes; the operation then fails kUnavailable.
  static constexpr int kKeepalivesIdleS = 10;
  static constexpr int kKeepalivesIntervalS = 5;
  static constexpr int kKeepalivesCount = 3;
  static constexpr int kTcpUserTimeoutMs = 15'000;

  // Connects to `url` (a libpq connection string or URI). Fails kUnavailable.
  static Result<std::unique_ptr<PgConn>> Connect(const std::string& url, int connect_timeout_s);
  ~PgConn();
  PgConn(const PgConn&) = delete;
  PgConn& operator=(const PgConn&) = delete;

  // Runs the prepared statement for `sql` and returns its rows. REQUIRES:
  // `sql` is one statement.
  PgRows Query(std::string_view sql, const PgParams& params = PgParams());
  // Queues a write to be sent with the next Query/Flush (see above).
  void Defer(std::string_view sql, PgParams params = PgParams());
  // Sends every deferred statement (one pipeline) and waits for them.
  void Flush();
  // Runs SQL text of one or more statements without preparing or
  // parameters (DDL, BEGIN/COMMIT). Records and returns the error, if any.
  Status Exec(const std::string& sql);
  // Runs `sql` outside the sticky-error path (ROLLBACK after a failure).
  void ExecIgnoringErrors(const char* sql);

  bool failed() const { return !error_.ok(); }
  const Status& error() const { return error_; }
  // SQLSTATE of the recorded error ("" if none or not from the server).
  const std::string& sqlstate() const { return sqlstate_; }
  void ClearError();
  // Drops deferred statements (after a failed batch).
  void DiscardDeferred() { deferred_.clear(); }

  // True if the connection is usable; otherwise tries to reconnect (the
  // prepared statement cache is dropped with the old session). A session
  // the server closed while it was idle counts as unusable. REQUIRES: no
  // statement in flight (between units of work).
  bool EnsureConnected();
  // Statements sent to the server since the connection was opened.
  uint64_t statements() const { return statements_; }

 private:
  explicit PgConn(pg_conn* conn) : conn_(conn) {}
  // Whether the server closed this idle session (a zero-timeout poll; reads
  // what arrived).
  bool PeerClosed();
  // The name of `sql`'s prepared statement, preparing it if needed; "" on error.
  const std::string* Prepared(std::string_view sql);
  struct Deferred;
  // Sends `batch` (deferred statements, then `last_sql` if not null) in one
  // pipeline and waits for all of it; returns the last statement's rows.
  PgRows RunPipeline(const std::vector<Deferred>& batch, const std::string* last_sql, const PgParams* last_params);
  void Record(pg_result* result, const char* what);
  void RecordConnectionError(const char* what);

  struct Deferred {
    std::string sql;
    PgParams params;
  };

  pg_conn* conn_;
  std::unordered_map<std::string, std::string> prepared_;  // SQL text -> statement name
  std::vector<Deferred> deferred_;
  Status error_;
  std::string sqlstate_;
  uint64_t statements_ = 0;
};

// The Status for an error with SQLSTATE `sqlstate`: disk full -> kStorageFull,
// connection failures, shutdown and too many connections -> kUnavailable,
// anything else -> kInternal.
Status MapError(const std::string& sqlstate, const std::string& message);

// SQLSTATEs a whole batch may be retried on: serialization failure,
// deadlock detected (another node locked the same rows in another order),
// and unique violation (another node inserted the same key after this
// transaction read it; the retry reads it and takes the expected path:
// duplicate message, username taken, ...).
bool IsRetryableConflict(const std::string& sqlstate);

}  // namespace parley::store::postgres
