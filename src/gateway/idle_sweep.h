// The heartbeat timeout's clock (GatewayConfig::idle_timeout_ms;
// docs/architecture.md, "Heartbeat timeout").
//
// A connection from which nothing has been read for the heartbeat timeout is
// dropped. One sweep per gateway checks every connection kIdleSweepsPerTimeout
// times per timeout; each sweep first advances a tick, and a connection
// records the tick it last heard its peer at with one relaxed store per frame
// read. Beast's idle timer, which this replaces, was re-armed by every read
// (a timer-queue removal and insertion and a cancelled handler run per
// frame), and each idle connection held its pending wait.
#pragma once

#include <chrono>
#include <cstdint>

namespace parley::gateway {

// Sweeps per heartbeat timeout: a silent connection goes between one timeout
// and (1 + 1/kIdleSweepsPerTimeout) timeouts after the last frame it sent.
inline constexpr uint32_t kIdleSweepsPerTimeout = 4;

// The sweep's period: a quarter of the timeout, rounded up, so that
// kIdleSweepsPerTimeout periods are never shorter than the timeout.
constexpr std::chrono::milliseconds IdleSweepPeriod(int idle_timeout_ms) {
  const int64_t ms = idle_timeout_ms > 0 ? idle_timeout_ms : 1;
  return std::chrono::milliseconds((ms + kIdleSweepsPerTimeout - 1) / kIdleSweepsPerTimeout);
}

// Whether a connection last heard at tick `heard` has been silent for at least
// a whole timeout at tick `now`. The frame that recorded `heard` was read
// before tick heard + 1 began; kIdleSweepsPerTimeout whole periods have
// passed since that tick once `now` is past heard + kIdleSweepsPerTimeout.
// Unsigned arithmetic: correct across the counter's wrap.
constexpr bool SilentForTimeout(uint32_t now, uint32_t heard) {
  return static_cast<uint32_t>(now - heard) > kIdleSweepsPerTimeout;
}

}  // namespace parley::gateway
