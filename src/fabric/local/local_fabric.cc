#include "fabric/local/local_fabric.h"

#include <algorithm>

namespace parley::fabric {

void LocalFabric::Attach(int64_t user_id, int64_t device_id, std::shared_ptr<DeviceSink> sink) {
  std::lock_guard lock(mu_);
  users_[user_id].push_back(Entry{device_id, std::move(sink)});
}

void LocalFabric::Detach(int64_t user_id, int64_t device_id, const DeviceSink* sink) {
  std::lock_guard lock(mu_);
  auto it = users_.find(user_id);
  if (it == users_.end()) return;
  auto& v = it->second;
  v.erase(std::remove_if(v.begin(), v.end(),
                         [&](const Entry& e) { return e.device_id == device_id && e.sink.get() == sink; }),
          v.end());
  if (v.empty()) users_.erase(it);
}

std::vector<std::shared_ptr<DeviceSink>> LocalFabric::Targets(int64_t user_id) const {
  std::vector<std::shared_ptr<DeviceSink>> targets;
  std::lock_guard lock(mu_);
  auto it = users_.find(user_id);
  if (it == users_.end()) return targets;
  for (const auto& e : it->second) targets.push_back(e.sink);
  return targets;
}

void LocalFabric::Publish(int64_t user_id, SharedFrame frame, bool ephemeral) {
  for (auto& s : Targets(user_id)) s->SendFrame(frame, ephemeral);
}

void LocalFabric::PublishReceipt(int64_t user_id, SharedFrame frame,
                                 std::shared_ptr<const store::StreamEvent> receipt) {
  for (auto& s : Targets(user_id)) s->SendReceipt(frame, receipt);
}

void LocalFabric::CloseDevice(int64_t user_id, int64_t device_id, uint16_t code, std::string reason) {
  std::vector<std::shared_ptr<DeviceSink>> targets;
  {
    std::lock_guard lock(mu_);
    auto it = users_.find(user_id);
    if (it == users_.end()) return;
    for (const auto& e : it->second)
      if (e.device_id == device_id) targets.push_back(e.sink);
  }
  for (auto& s : targets) s->Close(code, reason);
}

bool LocalFabric::IsConnected(int64_t user_id) const {
  std::lock_guard lock(mu_);
  return users_.count(user_id) != 0;
}

std::vector<int64_t> LocalFabric::AttachedDevices(int64_t user_id) const {
  std::vector<int64_t> devices;
  {
    std::lock_guard lock(mu_);
    auto it = users_.find(user_id);
    if (it == users_.end()) return devices;
    for (const auto& e : it->second) devices.push_back(e.device_id);
  }
  std::sort(devices.begin(), devices.end());
  devices.erase(std::unique(devices.begin(), devices.end()), devices.end());
  return devices;
}

void LocalFabric::CloseAll(uint16_t code, std::string reason) {
  std::vector<std::shared_ptr<DeviceSink>> targets;
  {
    std::lock_guard lock(mu_);
    for (const auto& [user, v] : users_)
      for (const auto& e : v) targets.push_back(e.sink);
  }
  for (auto& s : targets) s->Close(code, reason);
}

}  // namespace parley::fabric
