#!/usr/bin/env bash
# Reconnect spread (docs/benchmarks.md, "Reconnect spread"; issue 5's restart
# test): builds the Release tree's parleyd and parley-reconnect-bench, which
# starts parleyd with a fresh data directory, provisions DEVICES SDK devices
# through the admin API, runs them in worker processes, restarts parleyd
# (SIGTERM: close 4001 with retry_after_ms) and checks that the reconnects
# spread over the announced window and that every device resumed with
# nothing missed. Exits non-zero if the build, the set-up or any check failed.
#
#   scripts/bench_reconnect.sh                        # 5,000 devices (the test command's run)
#   DEVICES=20000 scripts/bench_reconnect.sh --retry-after-ms 5000   # extra args go to the tool
#
# Release, not the ASan tree: under ASan a device costs ~10x the CPU to
# start, and 5,000 of them would take minutes (docs/sdk.md, "Tests").
# Environment: DEVICES, JSON_OUT (default
# build/release/bench-results/reconnect.json), SKIP_BUILD=1 with BIN_DIR=...,
# BENCH_TIMEOUT (seconds for the whole run, default 300).
set -euo pipefail
BENCH_NAME=bench_reconnect
. "$(dirname "$0")/lib/bench_common.sh"
DEVICES=${DEVICES:-5000}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-300}
bench_build parley-reconnect-bench
bench_json_out reconnect
exec timeout --kill-after=10 "$BENCH_TIMEOUT" "$bin/parley-reconnect-bench" --parleyd "$bin/parleyd" \
  --devices "$DEVICES" --json "$JSON_OUT" "$@"
