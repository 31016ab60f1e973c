// LocalFabric: the in-process Fabric of the single-node shape. A table from
// user id to that user's attached connections, under one mutex; fan-out
// copies the recipients under the lock and calls the sinks after releasing it.
#pragma once

#include <mutex>
#include <unordered_map>
#include <vector>

#include "fabric/fabric.h"

namespace parley::fabric {

class LocalFabric : public Fabric {
 public:
  void Attach(int64_t user_id, int64_t device_id, std::shared_ptr<DeviceSink> sink) override;
  void Detach(int64_t user_id, int64_t device_id, const DeviceSink* sink) override;
  void Publish(int64_t user_id, SharedFrame frame, bool ephemeral = false) override;
  void PublishReceipt(int64_t user_id, SharedFrame frame, std::shared_ptr<const store::StreamEvent> receipt) override;
  void CloseDevice(int64_t user_id, int64_t device_id, uint16_t code, std::string reason) override;
  bool IsConnected(int64_t user_id) const override;
  std::vector<int64_t> AttachedDevices(int64_t user_id) const override;
  void CloseAll(uint16_t code, std::string reason) override;

 private:
  struct Entry {
    int64_t device_id;
    std::shared_ptr<DeviceSink> sink;
  };
  std::vector<std::shared_ptr<DeviceSink>> Targets(int64_t user_id) const;

  mutable std::mutex mu_;
  std::unordered_map<int64_t, std::vector<Entry>> users_;  // guarded by mu_
};

}  // namespace parley::fabric
