// The admin API: HTTP endpoints under /admin/v1/ on parleyd's own port,
// authorised by the admin token from the server's config (Authorization:
// Bearer <token>). Disabled (404) when no token is configured. The admin tool
// and the benchmarks use it, so it works in every deployment shape.
//
// Endpoints (docs/operations.md, "Admin API"):
//   POST /admin/v1/users/bulk   create many users (and a device token each)
//   GET  /admin/v1/export       one page of a table of the store (the delivery
//                               checker's view of the server, docs/checker.md)
//
// Thread-safety: Handle may be called from any thread; work runs on the
// hashing pool and the store's threads; `respond` is called from one of them.
#pragma once

#include <functional>
#include <string>

#include "common/clock.h"
#include "common/worker_pool.h"
#include "core/accounts.h"
#include "gateway/gateway.h"
#include "store/store.h"

namespace parley::admin {

struct AdminConfig {
  std::string token;  // "" = admin API disabled
  core::PasswordCost password_cost = core::PasswordCost::kInteractive;
  // Most users in one bulk request.
  size_t max_bulk_users = 10'000;
  // Rows per export page: the default and the most a request may ask for.
  int default_export_rows = 1'000;
  int max_export_rows = 10'000;
};

class AdminApi {
 public:
  AdminApi(store::Store& store, WorkerPool& pool, const Clock& clock, AdminConfig config);

  void Handle(gateway::HttpRequest request, std::function<void(gateway::HttpResponse)> respond);

 private:
  void BulkCreateUsers(const std::string& body, std::function<void(gateway::HttpResponse)> respond);
  void Export(const std::string& query, std::function<void(gateway::HttpResponse)> respond);

  store::Store& store_;
  WorkerPool& pool_;
  const Clock& clock_;
  const AdminConfig config_;
};

}  // namespace parley::admin
