// PushProvider: sends one push job somewhere (a webhook, an APNs/FCM relay).
// The dispatcher (push/dispatcher.h) owns the retry policy; a provider only
// reports how one attempt went.
//
// Thread-safety: Send may be called from the dispatcher's thread only; `done`
// runs exactly once, on a thread of the provider's (never inside Send).
#pragma once

#include <functional>
#include <string>

#include "store/types.h"

namespace parley::push {

struct SendResult {
  store::PushOutcome outcome = store::PushOutcome::kRetry;
  // For the device's health record and logs: the HTTP status ("200",
  // "500"), or "timeout", "connect", "resolve", ...
  std::string result;
};

class PushProvider {
 public:
  virtual ~PushProvider() = default;
  // One attempt to deliver `job` (attempt = job.attempts + 1).
  virtual void Send(const store::PushJob& job, std::function<void(SendResult)> done) = 0;
};

}  // namespace parley::push
