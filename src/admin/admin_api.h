// The admin API: HTTP endpoints under /admin/v1/ on parleyd's own port,
// authorised by the admin token from the server's config (Authorization:
// Bearer <token>). Disabled (404) when no token is configured. The admin tool
// and the benchmarks use it, so it works in every deployment shape.
//
// Endpoints (docs/operations.md, "Admin API"):
//   POST /admin/v1/users/bulk   create many users (and a device token each)
//   Operations (issue 8; OpsRoute and the Ops* methods):
//   POST   /admin/v1/users                         create one user
//   GET    /admin/v1/users/{username}              a user and its state
//   POST   /admin/v1/users/{username}/disable      refuse login/auth, close its connections
//   POST   /admin/v1/users/{username}/enable
//   DELETE /admin/v1/users/{username}              disable and revoke every device
//   GET    /admin/v1/users/{username}/devices
//   DELETE /admin/v1/users/{username}/devices/{id} revoke one device, close it
//   GET    /admin/v1/messages/{conversation}/{seq}/timeline
//   GET    /admin/v1/store/stats
//   GET    /admin/v1/store/schema
//   POST   /admin/v1/store/backup                  online backup into the backup dir
//   GET  /admin/v1/export       one page of a table of the store (the delivery
//                               checker's view of the server, docs/checker.md)
//
// Thread-safety: Handle may be called from any thread; work runs on the
// hashing pool and the store's threads; `respond` is called from one of them.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

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
  // Where POST /admin/v1/store/backup writes (created if missing); "" = the
  // data dir's "backups" folder (set by the server config).
  std::string backup_dir;
  // Rows per export page: the default and the most a request may ask for.
  int default_export_rows = 1'000;
  int max_export_rows = 10'000;
};

// Closes the live connections of these devices of a user (the chat
// service's CloseDevices); any thread.
// `disabled`: the account was disabled and its tokens kept (close 4005,
// reconnect later), not revoked (4002).
using CloseDevicesFn =
    std::function<void(int64_t user_id, std::vector<int64_t> devices, std::string reason, bool disabled)>;
// Tells the chat service an account was erased (its UserErased); any thread.
using UserErasedFn = std::function<void(int64_t user_id)>;

class AdminApi {
 public:
  AdminApi(store::Store& store, WorkerPool& pool, const Clock& clock, AdminConfig config);

  void Handle(gateway::HttpRequest request, std::function<void(gateway::HttpResponse)> respond);
  // Whether `authorization` (the header) carries the admin token: only such
  // requests may send large bodies (gateway::HttpBodyLimit).
  bool Authorized(const std::string& authorization) const;

  // Set once before serving: how disabling a user or revoking a device
  // closes its connections. Unset: they stay open until they next
  // authenticate.
  void SetCloseDevices(CloseDevicesFn fn) { close_devices_ = std::move(fn); }
  // Set once before serving: what the chat service must forget of an erased
  // account (its name, which a new account may take; its presence).
  void SetUserErased(UserErasedFn fn) { user_erased_ = std::move(fn); }

 private:
  using Respond = std::function<void(gateway::HttpResponse)>;
  void BulkCreateUsers(const std::string& body, std::function<void(gateway::HttpResponse)> respond);
  void Export(const std::string& query, std::function<void(gateway::HttpResponse)> respond);

  // Operations endpoints (admin_ops.cc). Returns false when `path` is not one
  // of them.
  bool OpsRoute(const gateway::HttpRequest& req, const std::string& path, Respond& respond);
  void OpsCreateUser(const std::string& body, Respond respond);
  void OpsGetUser(const std::string& username, Respond respond);
  void OpsSetDisabled(const std::string& username, bool disabled, bool revoke, Respond respond);
  void OpsListDevices(const std::string& username, Respond respond);
  void OpsRevokeDevice(const std::string& username, int64_t device_id, Respond respond);
  void OpsTimeline(int64_t conversation_id, int64_t seq, Respond respond);
  void OpsStats(Respond respond);
  void OpsSchema(Respond respond);
  void OpsBackup(const std::string& body, Respond respond);
  // Compliance erase (admin_erase.cc).
  struct UserErase;
  void OpsEraseUser(const std::string& username, Respond respond);
  void EraseListConversations(std::shared_ptr<UserErase> x, int64_t before_activity, int64_t before_id);
  void EraseMessages(std::shared_ptr<UserErase> x, store::Seq before);
  void ErasePurge(std::shared_ptr<UserErase> x, int64_t now);
  void EraseCheck(std::shared_ptr<UserErase> x, size_t conversation, store::Seq before);
  void EraseFailed(std::shared_ptr<UserErase> x, const char* step, const Status& error);
  // Compliance export (admin_export.cc).
  struct UserExport;
  void OpsExportUser(const std::string& username, Respond respond);
  void ExportDevices(std::shared_ptr<UserExport> x);
  void ExportConversations(std::shared_ptr<UserExport> x, int64_t before_activity, int64_t before_id);
  void OpsExportConversation(const std::string& username, int64_t conversation_id, const std::string& query,
                             Respond respond);

  store::Store& store_;
  WorkerPool& pool_;
  const Clock& clock_;
  const AdminConfig config_;
  CloseDevicesFn close_devices_;
  UserErasedFn user_erased_;
};

}  // namespace parley::admin
