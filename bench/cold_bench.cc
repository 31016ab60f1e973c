// parley-cold-bench: bytes per message before and after the cold tier's
// compaction (issue 12 item 6; docs/benchmarks.md "Cold tier"), on the SQLite
// store or, with --postgres-url, on PostgreSQL.
//
// A storage measurement, so it drives the Store interface directly (the
// protocol adds nothing to what is on disk):
//   1. fills a fresh store in --dir with --conversations direct
//      conversations of --messages messages each, texts of about 140 bytes
//      (--text-bytes, uniform in [text/2, 3*text/2]) drawn from a fixed
//      vocabulary with Zipf-like weights (deterministic, --seed), sent
//      alternately by the two members, each with a UUID-sized client id; the
//      search indexer runs to the end, as on a server;
//   2. measures the file (VACUUM INTO a copy: the live file's free pages would
//      hide the difference) and, per table and index, the bytes of the
//      pages in use (SQLite's dbstat); on PostgreSQL, after VACUUM FULL (for
//      the same reason), the database's size and each table's with its
//      partitions, indexes and TOAST (pg_total_relation_size);
//   3. compacts everything (CompactMessages, batches of 256 as the server
//      does), timing it, and times history pages of 50 at random positions
//      before and after (medians of --pages pages);
//   4. measures again and prints both, per message.
// Exit codes: 0 ok; 1 a check failed (a message not compacted, a history
// page that reads differently after the compaction); 2 set-up failed.
// Prints a table and, with --json FILE, the figures as JSON.
#include <libpq-fe.h>
#include <sqlite3.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <iostream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "store/store.h"
#include "store/store_factory.h"

namespace {

using parley::Result;
using namespace parley::store;  // NOLINT: a tool over the store interface

// Messages per CompactMessages call: the server's batch (RetentionConfig::kCompactBatch).
constexpr int kCompactBatch = 256;
// Messages per history page timed (the protocol's default page).
constexpr int kHistoryPage = 50;
// Writes in flight while filling (the store group-commits them).
constexpr int kFillWindow = 2000;

template <typename T, typename Start>
Result<T> Await(Start&& start) {
  auto promise = std::make_shared<std::promise<Result<T>>>();
  auto future = promise->get_future();
  start(Callback<T>([promise](Result<T> r) { promise->set_value(std::move(r)); }));
  return future.get();
}

template <typename T>
T MustOk(Result<T> r, const char* what) {
  if (!r) {
    std::cerr << what << ": " << r.error().ToString() << "\n";
    std::exit(2);
  }
  return std::move(r).value();
}

// Chat-like words: the most common English words, with some chat slang,
// numbers and punctuation; drawn with Zipf-like weights (rank^-1).
const std::vector<std::string> kWords = {
    "the", "I", "to", "you", "and", "a", "it", "is", "that", "of", "in", "we", "for", "on", "be", "have", "not",
    "this", "are", "do", "with", "but", "so", "can", "at", "just", "what", "my", "me", "was", "will", "if", "get",
    "know", "all", "think", "like", "no", "yes", "ok", "there", "your", "go", "about", "out", "up", "one", "now",
    "good", "time", "how", "when", "see", "they", "he", "she", "today", "tomorrow", "meeting", "lunch", "call",
    "later", "thanks", "sure", "maybe", "sounds", "great", "let", "me", "know", "send", "file", "office", "home",
    "work", "weekend", "dinner", "coffee", "train", "late", "sorry", "morning", "tonight", "back", "need", "want",
    "said", "really", "right", "well", "going", "make", "could", "would", "should", "because", "then", "than",
    "still", "also", "here", "where", "who", "why", "people", "thing", "things", "day", "week", "next", "last",
    "new", "old", "first", "only", "some", "any", "more", "very", "much", "many", "after", "before", "again",
    "lol", "haha", "btw", "np", "idk", "omg", "ty", "pls", "hey", "hi", "bye", "love", "miss", "happy", "birthday",
    "project", "deadline", "review", "doc", "draft", "slides", "budget", "client", "team", "manager", "update",
    "photo", "video", "link", "address", "number", "price", "ticket", "flight", "hotel", "car", "bus", "rain",
    "sun", "cold", "hot", "kids", "school", "doctor", "appointment", "movie", "game", "music", "book", "read",
    "2", "3", "5", "10", "15", "30", "7pm", "8am", "Monday", "Friday", "Saturday", "June", "ok!", "yes!", "?",
    "...", ":)", ":D", "👍", "😂", "❤️", "café", "naïve", "Zürich", "München"};

class TextMaker {
 public:
  TextMaker(uint64_t seed, int mean_bytes) : rng_(seed), mean_(mean_bytes) {
    std::vector<double> w;
    for (size_t i = 0; i < kWords.size(); ++i) w.push_back(1.0 / static_cast<double>(i + 1));
    pick_ = std::discrete_distribution<size_t>(w.begin(), w.end());
  }
  std::string Next() {
    std::uniform_int_distribution<int> len(mean_ / 2, mean_ * 3 / 2);
    const size_t target = static_cast<size_t>(len(rng_));
    std::string t;
    bool sentence_start = true;
    while (t.size() < target) {
      std::string w = kWords[pick_(rng_)];
      if (sentence_start && !w.empty() && w[0] >= 'a' && w[0] <= 'z') w[0] = static_cast<char>(w[0] - 'a' + 'A');
      if (!t.empty()) t += ' ';
      t += w;
      sentence_start = rng_() % 9 == 0;
      if (sentence_start) t += rng_() % 3 == 0 ? "?" : ".";
    }
    return t;
  }
  std::string ClientId() {
    // A UUID's textual size, as clients make them.
    return fmt::format("{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}", rng_() & 0xffffffff, rng_() & 0xffff, rng_() & 0xfff,
                       rng_() & 0xfff, rng_() & 0xffffffffffff);
  }

 private:
  std::mt19937_64 rng_;
  int mean_;
  std::discrete_distribution<size_t> pick_;
};

struct Sizes {
  int64_t file_bytes = 0;                    // the VACUUMed copy
  std::map<std::string, int64_t> by_table;   // dbstat: pages in use x page size, per table/index
};

Sizes Measure(const std::string& db_path, const std::string& copy_path) {
  std::filesystem::remove(copy_path);
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(db_path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK) {
    std::cerr << "cannot open " << db_path << "\n";
    std::exit(2);
  }
  const std::string vacuum = "VACUUM INTO '" + copy_path + "'";
  char* err = nullptr;
  if (sqlite3_exec(db, vacuum.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
    std::cerr << "VACUUM INTO: " << (err != nullptr ? err : "?") << "\n";
    std::exit(2);
  }
  sqlite3_close(db);
  Sizes s;
  s.file_bytes = static_cast<int64_t>(std::filesystem::file_size(copy_path));
  if (sqlite3_open_v2(copy_path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK) std::exit(2);
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v2(db, "SELECT name, sum(pgsize) FROM dbstat GROUP BY name", -1, &st, nullptr) == SQLITE_OK) {
    while (sqlite3_step(st) == SQLITE_ROW) {
      s.by_table[reinterpret_cast<const char*>(sqlite3_column_text(st, 0))] = sqlite3_column_int64(st, 1);
    }
  } else {
    std::cerr << "dbstat unavailable: " << sqlite3_errmsg(db) << " (per-table figures left out)\n";
  }
  sqlite3_finalize(st);
  sqlite3_close(db);
  std::filesystem::remove(copy_path);
  return s;
}

// PostgreSQL's counterpart: the database after VACUUM FULL (dead tuples and
// free space would hide the difference, as free pages in SQLite), and each
// table whole (partitions, indexes, TOAST) under its parent's name.
Sizes MeasurePostgres(const std::string& url) {
  PGconn* conn = PQconnectdb(url.c_str());
  if (PQstatus(conn) != CONNECTION_OK) {
    std::cerr << "postgres: " << PQerrorMessage(conn);
    std::exit(2);
  }
  auto query = [&](const char* sql) {
    PGresult* r = PQexec(conn, sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK && PQresultStatus(r) != PGRES_COMMAND_OK) {
      std::cerr << sql << ": " << PQerrorMessage(conn);
      std::exit(2);
    }
    return r;
  };
  PQclear(query("VACUUM FULL"));
  Sizes s;
  PGresult* r = query("SELECT pg_database_size(current_database())");
  s.file_bytes = std::stoll(PQgetvalue(r, 0, 0));
  PQclear(r);
  r = query(
      "SELECT COALESCE(p.relname, c.relname), sum(pg_total_relation_size(c.oid))::bigint FROM pg_class c "
      "JOIN pg_namespace n ON n.oid = c.relnamespace LEFT JOIN pg_inherits i ON i.inhrelid = c.oid "
      "LEFT JOIN pg_class p ON p.oid = i.inhparent "
      "WHERE n.nspname = 'public' AND c.relkind = 'r' GROUP BY 1");
  for (int i = 0; i < PQntuples(r); ++i) s.by_table[PQgetvalue(r, i, 0)] = std::stoll(PQgetvalue(r, i, 1));
  PQclear(r);
  PQfinish(conn);
  return s;
}

double MedianMs(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Medians of history pages at random positions, in ms; `seen` gets every
// page's seqs and texts (the same positions for the same seed, so the pages
// before and after the compaction can be compared).
double TimeHistory(Store& store, const std::vector<ConversationId>& convs, int messages, int pages, uint64_t seed,
                   std::vector<std::string>* seen) {
  std::mt19937_64 rng(seed);
  std::vector<double> ms;
  for (int i = 0; i < pages; ++i) {
    const ConversationId c = convs[rng() % convs.size()];
    const Seq before = static_cast<Seq>(rng() % static_cast<uint64_t>(messages)) + 1;
    auto t0 = std::chrono::steady_clock::now();
    auto page = MustOk(Await<std::vector<MessageRecord>>([&](auto cb) { store.History(c, 0, before, kHistoryPage, cb); }),
                       "history");
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    for (const MessageRecord& m : page) seen->push_back(fmt::format("{}/{} {}", m.conversation_id, m.seq, m.body));
    if (page.empty() && before > 1) {
      std::cerr << "an empty history page\n";
      std::exit(1);
    }
  }
  return MedianMs(ms);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"parley-cold-bench: bytes per message before and after cold-tier compaction (SQLite, PostgreSQL)"};
  std::string dir;
  std::string postgres_url;
  int conversations = 100;
  int messages = 1000;
  int text_bytes = 140;
  int pages = 2000;
  uint64_t seed = 42;
  std::string json_out;
  app.add_option("--dir", dir, "An empty directory for the store (created)")->required();
  app.add_option("--postgres-url", postgres_url,
                 "Measure PostgreSQL instead: an empty database of its own (VACUUM FULL runs on it)");
  app.add_option("--conversations", conversations, "Direct conversations")->check(CLI::Range(1, 1'000'000));
  app.add_option("--messages", messages, "Messages per conversation")->check(CLI::Range(1, 10'000'000));
  app.add_option("--text-bytes", text_bytes, "Mean text size, bytes")->check(CLI::Range(2, 16'000));
  app.add_option("--pages", pages, "History pages timed before and after")->check(CLI::Range(1, 1'000'000));
  app.add_option("--seed", seed, "Text generator seed");
  app.add_option("--json", json_out, "Also write the figures as JSON to this file");
  CLI11_PARSE(app, argc, argv);

  std::filesystem::create_directories(dir);
  const std::string db_path = dir + "/data/parley.db";
  if (std::filesystem::exists(db_path)) {
    std::cerr << db_path << " exists: give an empty --dir\n";
    return 2;
  }
  StoreConfig config;
  config.sqlite_path = db_path;
  if (!postgres_url.empty()) {
    config.backend = "postgres";
    config.postgres_url = postgres_url;
  }
  auto measure = [&] { return postgres_url.empty() ? Measure(db_path, dir + "/measure.db") : MeasurePostgres(postgres_url); };
  std::unique_ptr<Store> store = MustOk(OpenStore(config), "open");

  // 1. Fill.
  TextMaker text(seed, text_bytes);
  std::vector<ConversationId> convs;
  int64_t now = 1'700'000'000'000;
  int64_t text_total = 0;
  const int64_t total = static_cast<int64_t>(conversations) * messages;
  auto fill0 = std::chrono::steady_clock::now();
  std::vector<std::pair<UserId, DeviceId>> members;  // two per conversation: user and device
  for (int c = 0; c < conversations; ++c) {
    std::pair<UserId, DeviceId> two[2];
    for (int k = 0; k < 2; ++k) {
      UserRecord u = MustOk(Await<UserRecord>([&](auto cb) {
                              store->CreateUser(fmt::format("u{}_{}", c, k), "hash", now, cb);
                            }),
                            "create user");
      DeviceRecord d = MustOk(Await<DeviceRecord>([&](auto cb) {
                                store->CreateDevice(u.id, "phone", "bench", fmt::format("t{}_{}", c, k), "", now, cb);
                              }),
                              "create device");
      two[k] = {u.id, d.id};
      members.push_back(two[k]);
    }
    convs.push_back(
        MustOk(Await<OpenResult>([&](auto cb) { store->OpenDirect(two[0].first, two[1].first, now, cb); }), "open")
            .conversation.id);
  }
  {
    std::atomic<int64_t> in_flight{0};
    std::atomic<bool> failed{false};
    std::mutex mu;
    std::condition_variable cv;
    // Conversations take turns, so that consecutive messages of one
    // conversation are stored apart, as on a server with many chats.
    for (int i = 0; i < messages; ++i) {
      for (int c = 0; c < conversations; ++c) {
        NewMessage m;
        m.conversation_id = convs[static_cast<size_t>(c)];
        const auto& from = members[static_cast<size_t>(c) * 2 + static_cast<size_t>(i % 2)];
        m.sender_id = from.first;
        m.sender_device_id = from.second;
        m.client_id = text.ClientId();
        m.body = text.Next();
        m.now = ++now;
        text_total += static_cast<int64_t>(m.body.size());
        {
          std::unique_lock lock(mu);
          cv.wait(lock, [&] { return in_flight.load() < kFillWindow; });
          ++in_flight;
        }
        store->AppendMessage(std::move(m), [&](Result<AppendResult> r) {
          if (!r) failed = true;
          std::lock_guard lock(mu);
          --in_flight;
          cv.notify_all();
        });
      }
    }
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return in_flight.load() == 0; });
    if (failed) {
      std::cerr << "a send failed\n";
      return 2;
    }
  }
  while (MustOk(Await<SearchIndexProgress>([&](auto cb) { store->IndexSearch(5000, cb); }), "index").backlog > 0) {
  }
  const double fill_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - fill0).count();
  std::vector<std::string> hot_pages, cold_pages;
  const double hot_history_ms = TimeHistory(*store, convs, messages, pages, seed + 1, &hot_pages);
  store.reset();  // everything checkpointed
  Sizes before = measure();

  // 3. Compact.
  store = MustOk(OpenStore(config), "reopen");
  CompactProgress sum;
  auto c0 = std::chrono::steady_clock::now();
  int steps = 0;
  std::vector<double> step_ms;  // each step holds the writer this long: what a send may wait behind it
  for (;; ++steps) {
    CompactRequest req;
    req.stored_before = req.due_before = now + 1;
    req.max_messages = kCompactBatch;
    auto s0 = std::chrono::steady_clock::now();
    CompactProgress p = MustOk(Await<CompactProgress>([&](auto cb) { store->CompactMessages(req, cb); }), "compact");
    step_ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - s0).count());
    sum.messages += p.messages;
    sum.blocks += p.blocks;
    sum.raw_bytes += p.raw_bytes;
    sum.compressed_bytes += p.compressed_bytes;
    if (!p.more) break;
  }
  const double compact_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - c0).count();
  const double cold_history_ms = TimeHistory(*store, convs, messages, pages, seed + 1, &cold_pages);
  if (cold_pages != hot_pages) {
    std::cerr << "history pages differ after the compaction\n";
    return 1;
  }
  store.reset();
  Sizes after = measure();
  if (sum.messages != total) {
    std::cerr << "compacted " << sum.messages << " of " << total << " messages\n";
    return 1;
  }

  auto per = [&](int64_t bytes) { return static_cast<double>(bytes) / static_cast<double>(total); };
  auto table_sum = [](const Sizes& s, std::initializer_list<const char*> names) {
    int64_t b = 0;
    for (const char* n : names)
      if (auto it = s.by_table.find(n); it != s.by_table.end()) b += it->second;
    return b;
  };
  // The message tables: the rows, their dedup index and the blocks.
  // (PostgreSQL: a table's figure includes its indexes.)
  const auto message_tables = {"messages", "messages_dedup", "message_blocks"};
  fmt::print("messages: {} ({} conversations x {}), text {:.1f} bytes/message on average\n", total, conversations,
             messages, per(text_total));
  fmt::print("fill {:.1f} s; compaction {:.2f} s ({:.0f} messages/s, {} steps of {}), {} blocks\n", fill_s, compact_s,
             static_cast<double>(total) / compact_s, steps + 1, kCompactBatch, sum.blocks);
  const double step_p50 = MedianMs(step_ms);
  const double step_max = *std::max_element(step_ms.begin(), step_ms.end());
  fmt::print("compaction step (commit included): {:.2f} ms median, {:.2f} ms max\n", step_p50, step_max);
  fmt::print("zstd: {:.1f} -> {:.1f} bytes/message (ratio {:.2f})\n", per(sum.raw_bytes), per(sum.compressed_bytes),
             static_cast<double>(sum.raw_bytes) / static_cast<double>(std::max<int64_t>(1, sum.compressed_bytes)));
  fmt::print("{:<34} {:>12} {:>12}\n", "bytes per message", "before", "after");
  fmt::print("{:<34} {:>12.1f} {:>12.1f}\n", postgres_url.empty() ? "whole file (VACUUMed)" : "database (VACUUM FULL)",
             per(before.file_bytes), per(after.file_bytes));
  fmt::print("{:<34} {:>12.1f} {:>12.1f}\n", "messages + dedup index + blocks", per(table_sum(before, message_tables)),
             per(table_sum(after, message_tables)));
  for (const auto& [name, bytes] : after.by_table) {
    const int64_t b = before.by_table.count(name) != 0 ? before.by_table.at(name) : 0;
    if (std::max(b, bytes) * 100 < after.file_bytes) continue;  // under 1 % of the file
    fmt::print("  {:<32} {:>12.1f} {:>12.1f}\n", name, per(b), per(bytes));
  }
  fmt::print("history page of {} (median of {}): {:.3f} ms hot, {:.3f} ms cold\n", kHistoryPage, pages,
             hot_history_ms, cold_history_ms);
  if (!json_out.empty()) {
    nlohmann::json j{{"messages", total},
                     {"text_bytes_per_message", per(text_total)},
                     {"file_bytes_per_message", {{"before", per(before.file_bytes)}, {"after", per(after.file_bytes)}}},
                     {"message_tables_bytes_per_message",
                      {{"before", per(table_sum(before, message_tables))}, {"after", per(table_sum(after, message_tables))}}},
                     {"zstd_bytes_per_message", {{"raw", per(sum.raw_bytes)}, {"compressed", per(sum.compressed_bytes)}}},
                     {"blocks", sum.blocks},
                     {"compaction_seconds", compact_s},
                     {"compaction_step_ms", {{"median", step_p50}, {"max", step_max}}},
                     {"history_page_ms", {{"hot", hot_history_ms}, {"cold", cold_history_ms}}}};
    std::ofstream(json_out) << j.dump(2) << "\n";
  }
  return 0;
}
