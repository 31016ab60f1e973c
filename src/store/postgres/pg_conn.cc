// PgConn: libpq in blocking mode on the store's own threads. Statements are
// prepared once per session (PQprepare) and run with PQexecPrepared; deferred
// writes go out together in libpq's pipeline mode (PQenterPipelineMode ...
// PQpipelineSync), so a batch of N inserts costs one round trip, not N.

#include "store/postgres/pg_conn.h"

#include <libpq-fe.h>
#include <poll.h>

#include <fmt/format.h>

#include <cstdlib>
#include <cstring>

namespace parley::store::postgres {

// ---- PgParams ----

PgParams& PgParams::Int(int64_t v) {
  values_.emplace_back(std::to_string(v));
  lengths_.push_back(0);
  formats_.push_back(0);
  return *this;
}

PgParams& PgParams::Text(std::string_view v) {
  values_.emplace_back(std::string(v));
  lengths_.push_back(0);
  formats_.push_back(0);
  return *this;
}

PgParams& PgParams::Bytes(std::string_view v) {
  values_.emplace_back(std::string(v));
  lengths_.push_back(static_cast<int>(v.size()));
  formats_.push_back(1);
  return *this;
}

PgParams& PgParams::Bool(bool v) {
  values_.emplace_back(v ? "t" : "f");
  lengths_.push_back(0);
  formats_.push_back(0);
  return *this;
}

PgParams& PgParams::Null() {
  values_.emplace_back(std::nullopt);
  lengths_.push_back(0);
  formats_.push_back(0);
  return *this;
}

PgParams& PgParams::IntArray(const std::vector<int64_t>& v) {
  std::string text = "{";
  for (size_t i = 0; i < v.size(); ++i) {
    if (i > 0) text += ',';
    text += std::to_string(v[i]);
  }
  text += '}';
  return Text(text);
}

const char* const* PgParams::values() const {
  pointers_.clear();
  for (const auto& v : values_) pointers_.push_back(v ? v->c_str() : nullptr);
  return pointers_.data();
}

// ---- PgRows ----

PgRows::PgRows(pg_result* result) : result_(result) {}
PgRows::~PgRows() {
  if (result_ != nullptr) PQclear(result_);
}
PgRows::PgRows(PgRows&& other) noexcept : result_(other.result_) { other.result_ = nullptr; }
PgRows& PgRows::operator=(PgRows&& other) noexcept {
  if (this != &other) {
    if (result_ != nullptr) PQclear(result_);
    result_ = other.result_;
    other.result_ = nullptr;
  }
  return *this;
}

int PgRows::size() const { return result_ == nullptr ? 0 : PQntuples(result_); }

bool PgRows::IsNull(int row, int col) const { return PQgetisnull(result_, row, col) != 0; }

int64_t PgRows::Int(int row, int col) const {
  if (IsNull(row, col)) return 0;
  return std::strtoll(PQgetvalue(result_, row, col), nullptr, 10);
}

std::string PgRows::Text(int row, int col) const {
  return std::string(PQgetvalue(result_, row, col), static_cast<size_t>(PQgetlength(result_, row, col)));
}

bool PgRows::Bool(int row, int col) const { return !IsNull(row, col) && PQgetvalue(result_, row, col)[0] == 't'; }

std::string PgRows::Bytes(int row, int col) const {
  if (IsNull(row, col)) return {};
  size_t n = 0;
  unsigned char* raw = PQunescapeBytea(reinterpret_cast<const unsigned char*>(PQgetvalue(result_, row, col)), &n);
  if (raw == nullptr) return {};
  std::string out(reinterpret_cast<const char*>(raw), n);
  PQfreemem(raw);
  return out;
}

std::vector<int64_t> PgRows::IntArray(int row, int col) const {
  std::vector<int64_t> out;
  if (IsNull(row, col)) return out;
  const char* p = PQgetvalue(result_, row, col);
  int64_t v = 0;
  bool in_number = false;
  bool negative = false;
  for (; *p != '\0'; ++p) {
    if (*p >= '0' && *p <= '9') {
      v = v * 10 + (*p - '0');
      in_number = true;
    } else if (*p == '-') {
      negative = true;
    } else if (in_number) {
      out.push_back(negative ? -v : v);
      v = 0;
      in_number = false;
      negative = false;
    }
  }
  if (in_number) out.push_back(negative ? -v : v);
  return out;
}

// ---- errors ----

Status MapError(const std::string& sqlstate, const std::string& message) {
  if (sqlstate == "53100") return Status(ErrorCode::kStorageFull, message);  // disk_full
  // 08: connection exception; 57P01-3: admin/crash shutdown, cannot connect
  // now; 53300: too many connections.
  if (sqlstate.empty() || sqlstate.compare(0, 2, "08") == 0 || sqlstate.compare(0, 3, "57P") == 0 ||
      sqlstate == "53300") {
    return Status(ErrorCode::kUnavailable, message);
  }
  return Status(ErrorCode::kInternal, message);
}

bool IsRetryableConflict(const std::string& sqlstate) {
  return sqlstate == "40001" || sqlstate == "40P01" || sqlstate == "23505";
}

// ---- PgConn ----

Result<std::unique_ptr<PgConn>> PgConn::Connect(const std::string& url, int connect_timeout_s) {
  // expand_dbname = 1: `dbname` holds the whole URL / connection string.
  // Keywords are processed in order and the last value wins, so `dbname`
  // comes last: what the URL says overrides these defaults.
  std::string timeout = std::to_string(connect_timeout_s);
  std::string idle = std::to_string(kKeepalivesIdleS), interval = std::to_string(kKeepalivesIntervalS),
              count = std::to_string(kKeepalivesCount), user_timeout = std::to_string(kTcpUserTimeoutMs);
  const char* keys[] = {"connect_timeout",     "application_name", "keepalives_idle", "keepalives_interval",
                        "keepalives_count",    "tcp_user_timeout", "dbname",          nullptr};
  const char* values[] = {timeout.c_str(), "parleyd",           idle.c_str(), interval.c_str(),
                          count.c_str(),   user_timeout.c_str(), url.c_str(), nullptr};
  PGconn* conn = PQconnectdbParams(keys, values, 1);
  if (conn == nullptr) return Status(ErrorCode::kUnavailable, "postgres: out of memory");
  if (PQstatus(conn) != CONNECTION_OK) {
    std::string message = PQerrorMessage(conn);
    PQfinish(conn);
    while (!message.empty() && message.back() == '\n') message.pop_back();
    return Status(ErrorCode::kUnavailable, "postgres: cannot connect: " + message);
  }
  auto pg = std::unique_ptr<PgConn>(new PgConn(conn));
  // Our own sessions speak UTF-8 and never see a server-side default that
  // could change the meaning of a statement.
  if (Status s = pg->Exec("SET client_encoding = 'UTF8'; SET synchronous_commit = on; SET client_min_messages = warning"); !s.ok()) return s;
  return pg;
}

PgConn::~PgConn() { PQfinish(conn_); }

void PgConn::ClearError() {
  error_ = Status::Ok();
  sqlstate_.clear();
}

void PgConn::RecordConnectionError(const char* what) {
  if (failed()) return;
  std::string message = PQerrorMessage(conn_);
  while (!message.empty() && message.back() == '\n') message.pop_back();
  sqlstate_.clear();
  error_ = Status(ErrorCode::kUnavailable, fmt::format("postgres {}: {}", what, message));
}

void PgConn::Record(pg_result* result, const char* what) {
  if (failed()) return;
  if (result == nullptr) {
    RecordConnectionError(what);
    return;
  }
  const char* state = PQresultErrorField(result, PG_DIAG_SQLSTATE);
  sqlstate_ = state != nullptr ? state : "";
  std::string message = PQresultErrorMessage(result);
  while (!message.empty() && message.back() == '\n') message.pop_back();
  if (PQstatus(conn_) != CONNECTION_OK) {
    error_ = Status(ErrorCode::kUnavailable, fmt::format("postgres {}: {}", what, message));
    return;
  }
  Status mapped = MapError(sqlstate_, fmt::format("postgres {}: {}", what, message));
  error_ = mapped;
}

bool PgConn::PeerClosed() {
  int fd = PQsocket(conn_);
  if (fd < 0) return true;
  // An idle session that has something to read: a notice, or the server's
  // goodbye (a FATAL message, then end of file) after a restart, a failover
  // or pg_terminate_backend. A hang-up is final; otherwise read what came
  // (PQconsumeInput fails at end of file) and look again.
  constexpr int kMaxIdleReads = 4;
  for (int i = 0; i < kMaxIdleReads; ++i) {
    pollfd p{fd, static_cast<short>(POLLIN | POLLRDHUP), 0};
    if (poll(&p, 1, 0) <= 0) return false;  // nothing (more) arrived while idle: presumed alive
    if ((p.revents & (POLLHUP | POLLRDHUP | POLLERR)) != 0) return true;
    if (PQconsumeInput(conn_) == 0 || PQstatus(conn_) != CONNECTION_OK) return true;
  }
  return false;
}

bool PgConn::EnsureConnected() {
  // A session left in pipeline mode by a failure cannot run anything else:
  // start a fresh one, as after a lost connection. So is a session the
  // server closed while it was idle (found without sending anything, so
  // that the first statement after a database restart does not fail).
  if (PQstatus(conn_) == CONNECTION_OK && PQpipelineStatus(conn_) == PQ_PIPELINE_OFF && !PeerClosed()) return true;
  PQreset(conn_);
  prepared_.clear();
  if (PQstatus(conn_) != CONNECTION_OK) return false;
  PGresult* r = PQexec(conn_, "SET client_encoding = 'UTF8'; SET synchronous_commit = on; SET client_min_messages = warning");
  bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
  PQclear(r);
  return ok;
}

const std::string* PgConn::Prepared(std::string_view sql) {
  auto it = prepared_.find(std::string(sql));
  if (it != prepared_.end()) return &it->second;
  std::string name = fmt::format("p{}", prepared_.size() + 1);
  std::string text(sql);
  PGresult* r = PQprepare(conn_, name.c_str(), text.c_str(), 0, nullptr);
  ++statements_;
  if (PQresultStatus(r) != PGRES_COMMAND_OK) {
    Record(r, "prepare");
    PQclear(r);
    return nullptr;
  }
  PQclear(r);
  return &prepared_.emplace(std::move(text), std::move(name)).first->second;
}

PgRows PgConn::Query(std::string_view sql, const PgParams& params) {
  std::vector<Deferred> batch;
  batch.swap(deferred_);
  if (failed()) return PgRows();
  std::string text(sql);
  return RunPipeline(batch, &text, &params);
}

void PgConn::Defer(std::string_view sql, PgParams params) {
  if (failed()) return;
  deferred_.push_back(Deferred{std::string(sql), std::move(params)});
}

void PgConn::Flush() {
  if (deferred_.empty()) return;
  std::vector<Deferred> batch;
  batch.swap(deferred_);
  if (failed()) return;
  RunPipeline(batch, nullptr, nullptr);
}

PgRows PgConn::RunPipeline(const std::vector<Deferred>& batch, const std::string* last_sql,
                           const PgParams* last_params) {
  // Prepare first: PQprepare is synchronous (once per statement per session).
  std::vector<const std::string*> names;
  names.reserve(batch.size() + 1);
  for (const Deferred& d : batch) {
    const std::string* name = Prepared(d.sql);
    if (name == nullptr) return PgRows();
    names.push_back(name);
  }
  if (last_sql != nullptr) {
    const std::string* name = Prepared(*last_sql);
    if (name == nullptr) return PgRows();
    names.push_back(name);
  }
  const size_t total = names.size();
  auto params_of = [&](size_t i) -> const PgParams& { return i < batch.size() ? batch[i].params : *last_params; };
  auto ok_status = [](ExecStatusType st) { return st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK; };
  if (total == 1) {
    // One statement: no pipeline needed.
    const PgParams& p = params_of(0);
    PGresult* r =
        PQexecPrepared(conn_, names[0]->c_str(), static_cast<int>(p.size()), p.values(), p.lengths(), p.formats(), 0);
    ++statements_;
    if (!ok_status(PQresultStatus(r))) {
      Record(r, "statement");
      PQclear(r);
      return PgRows();
    }
    return PgRows(r);
  }
  if (PQenterPipelineMode(conn_) != 1) {
    RecordConnectionError("pipeline");
    return PgRows();
  }
  size_t sent = 0;
  for (size_t i = 0; i < total; ++i) {
    const PgParams& p = params_of(i);
    if (PQsendQueryPrepared(conn_, names[i]->c_str(), static_cast<int>(p.size()), p.values(), p.lengths(),
                            p.formats(), 0) != 1) {
      RecordConnectionError("pipeline send");
      break;
    }
    ++sent;
  }
  statements_ += sent;
  bool synced = PQpipelineSync(conn_) == 1;
  if (!synced) RecordConnectionError("pipeline sync");
  PgRows last;
  // Every statement's result (each followed by a NULL), then the sync marker.
  for (size_t i = 0; i < sent; ++i) {
    PGresult* r = PQgetResult(conn_);
    if (r == nullptr) {
      RecordConnectionError("pipeline result");
      synced = false;
      break;
    }
    ExecStatusType st = PQresultStatus(r);
    if (!ok_status(st) && st != PGRES_PIPELINE_ABORTED) Record(r, "statement");
    if (i + 1 == total && last_sql != nullptr && ok_status(st)) {
      last = PgRows(r);
    } else {
      PQclear(r);
    }
    while ((r = PQgetResult(conn_)) != nullptr) PQclear(r);
  }
  // Bounded: a broken connection yields NULLs, never the marker.
  constexpr int kMaxEmptyResults = 16;
  for (int empty = 0; synced && empty < kMaxEmptyResults;) {
    PGresult* r = PQgetResult(conn_);
    if (r == nullptr) {
      if (PQstatus(conn_) != CONNECTION_OK) break;
      ++empty;
      continue;
    }
    ExecStatusType st = PQresultStatus(r);
    PQclear(r);
    if (st == PGRES_PIPELINE_SYNC) break;
  }
  if (PQexitPipelineMode(conn_) != 1) RecordConnectionError("pipeline exit");
  if (failed()) return PgRows();
  return last;
}

Status PgConn::Exec(const std::string& sql) {
  Flush();
  if (failed()) return error_;
  PGresult* r = PQexec(conn_, sql.c_str());
  ++statements_;
  ExecStatusType st = PQresultStatus(r);
  if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) Record(r, "exec");
  PQclear(r);
  return failed() ? error_ : Status::Ok();
}

void PgConn::ExecIgnoringErrors(const char* sql) {
  deferred_.clear();
  if (PQstatus(conn_) != CONNECTION_OK) return;
  PGresult* r = PQexec(conn_, sql);
  PQclear(r);
}

}  // namespace parley::store::postgres
