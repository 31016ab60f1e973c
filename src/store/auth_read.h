// The read behind Store::GetAuthContext, shared by the backends: both
// readers answer DeviceByToken, UserById and Head inside one read
// transaction, so the three come from one snapshot.
#pragma once

#include <string>
#include <utility>

#include "common/status.h"
#include "store/types.h"

namespace parley::store {

// Reader: a backend's reader with DeviceByToken(hash) -> Result<DeviceRecord>,
// UserById(id) -> Result<UserRecord> and Head(id) -> UserSeq.
template <typename Reader>
Result<AuthContext> ReadAuthContext(Reader& r, const std::string& token_hash) {
  AuthContext a;
  Result<DeviceRecord> device = r.DeviceByToken(token_hash);
  if (!device) return device.error();
  a.device = std::move(device).value();
  Result<UserRecord> user = r.UserById(a.device.user_id);
  if (!user) return user.error();
  a.user = std::move(user).value();
  a.head = r.Head(a.device.user_id);
  return a;
}

}  // namespace parley::store
