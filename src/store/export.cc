// The export tables' names and columns (types.h, ExportTable). Shared by
// both backends (they write their own SQL) and the admin API.
#include "store/types.h"

namespace parley::store {

namespace {

struct TableSpec {
  const char* name;
  std::vector<std::string> columns;
  int key_columns;
};

const TableSpec& Spec(ExportTable t) {
  static const TableSpec kSpecs[kExportTableCount] = {
      {"devices", {"id", "user_id", "revoked"}, 1},
      {"members", {"conversation_id", "user_id"}, 2},
      {"messages", {"conversation_id", "seq", "sender_id", "sender_device_id", "expires_at", "client_id"}, 2},
      {"withheld", {"conversation_id", "user_id", "seq"}, 3},
      {"stream", {"user_id", "user_seq", "kind", "conversation_id", "seq", "receipt_user_id", "delivered", "read"}, 2},
      {"heads", {"user_id", "head", "floor"}, 1},
      {"receipts", {"conversation_id", "user_id", "delivered", "read"}, 2},
      {"blocks", {"owner_id", "target_id"}, 2},
  };
  return kSpecs[static_cast<int>(t)];
}

}  // namespace

const char* ExportTableName(ExportTable t) { return Spec(t).name; }

std::optional<ExportTable> ExportTableFromName(const std::string& name) {
  for (int i = 0; i < kExportTableCount; ++i) {
    if (name == Spec(static_cast<ExportTable>(i)).name) return static_cast<ExportTable>(i);
  }
  return std::nullopt;
}

std::vector<std::string> ExportColumns(ExportTable t) { return Spec(t).columns; }

int ExportKeyColumns(ExportTable t) { return Spec(t).key_columns; }

}  // namespace parley::store
