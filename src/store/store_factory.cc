// The factory is the only code that knows every backend by name; core links
// parley_store and names a backend only in its config.

#include "store/store_factory.h"

#include <filesystem>
#include <fmt/format.h>
#include <system_error>

#include "store/postgres/pg_store.h"
#include "store/sqlite/sqlite_store.h"

namespace parley::store {

Result<std::unique_ptr<Store>> OpenStore(const StoreConfig& config) {
  if (config.backend == "sqlite") {
    if (config.sqlite_path.empty()) return Status(ErrorCode::kBadRequest, "sqlite_path is empty");
    std::filesystem::path parent = std::filesystem::path(config.sqlite_path).parent_path();
    if (!parent.empty()) {
      std::error_code ec;
      std::filesystem::create_directories(parent, ec);
      if (ec) {
        return Status(ErrorCode::kUnavailable,
                      fmt::format("cannot create directory {}: {}", parent.string(), ec.message()));
      }
    }
    Result<std::unique_ptr<SqliteStore>> store = SqliteStore::Open(config);
    if (!store.has_value()) return store.error();
    return std::unique_ptr<Store>(std::move(store).value());
  }
  if (config.backend == "postgres") {
    if (config.postgres_url.empty()) return Status(ErrorCode::kBadRequest, "postgres_url is empty");
    Result<std::unique_ptr<PostgresStore>> store = PostgresStore::Open(config);
    if (!store.has_value()) return store.error();
    return std::unique_ptr<Store>(std::move(store).value());
  }
  return Status(ErrorCode::kBadRequest, fmt::format("unknown store backend '{}'", config.backend));
}

bool IsPostgresUrl(const std::string& url) {
  return url.rfind("postgres://", 0) == 0 || url.rfind("postgresql://", 0) == 0;
}

}  // namespace parley::store
