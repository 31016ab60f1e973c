#!/usr/bin/env bash
# User-search benchmark (docs/benchmarks.md): builds the Release tree, starts
# parleyd on a free port with a fresh data directory, pinned to CPU 0, runs
# parley-search-bench pinned to CPU 1, stops parleyd with SIGTERM and cleans
# up. Exits non-zero if the build, the server or any check failed.
#
#   scripts/bench_search.sh                     # 1,000,000 users, 10,000 queries (a few minutes)
#   SMOKE=1 scripts/bench_search.sh             # 2,000 users, 500 queries: the test command's smoke run
#   USERS=200000 QUERIES=20000 scripts/bench_search.sh --connections 2   # extra args go to the bench
#
# parleyd runs with --io-threads 1 (it has one core) and the search and social
# rate limits lifted: the benchmark measures search, not the limiter's refusals.
#
# Environment: USERS, QUERIES, BLOCKERS, WARMUP, CONNECTIONS, SMOKE=1,
# JSON_OUT (default build/release/bench-results/search.json), PARLEYD_ARGS
# (extra parleyd flags), SKIP_BUILD=1 with BIN_DIR=... (use binaries built
# elsewhere), BENCH_TIMEOUT (seconds for the whole bench run).
set -euo pipefail
BENCH_NAME=bench_search
. "$(dirname "$0")/lib/bench_common.sh"

if [ "${SMOKE:-0}" = 1 ]; then
  USERS=${USERS:-2000}; QUERIES=${QUERIES:-500}; BLOCKERS=${BLOCKERS:-50}; WARMUP=${WARMUP:-50}
  extra_defaults=(--batch 500 --cluster-queries 40 --verify-sample 1000000 --profile-users 200)
  BENCH_TIMEOUT=${BENCH_TIMEOUT:-60}
else
  USERS=${USERS:-1000000}; QUERIES=${QUERIES:-10000}; BLOCKERS=${BLOCKERS:-1000}; WARMUP=${WARMUP:-500}
  extra_defaults=()
  BENCH_TIMEOUT=${BENCH_TIMEOUT:-3600}
fi
CONNECTIONS=${CONNECTIONS:-1}

bench_build parley-search-bench
bench_json_out search

# CPU pinning: parleyd (every thread) on CPU 0, the load on CPU 1.
bench_pinning

work=$(mktemp -d "${TMPDIR:-/tmp}/parley-bench-search.XXXXXX")
server_pid=""
stop_server() {  # SIGTERM, then SIGKILL after 20 s; returns parleyd's exit status
  local pid=$server_pid status=0
  [ -n "$pid" ] || return 0
  server_pid=""
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "bench_search: parleyd did not stop within 20 s; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || status=$?
  return "$status"
}
cleanup() {
  stop_server || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
# shellcheck disable=SC2086  # PARLEYD_ARGS is a list of flags
"${pin_server[@]}" "$bin/parleyd" --listen 127.0.0.1:0 --port-file "$work/port" --data-dir "$work/data" \
  --admin-token "$token" --insecure-fast-password-hashing --log-level warn --io-threads 1 \
  --rate-limit search_per_user=1000000/1000000 --rate-limit social_per_user=1000000/1000000 \
  ${PARLEYD_ARGS:-} 2>"$work/parleyd.log" &
server_pid=$!

port=""
for _ in $(seq 300); do  # up to 30 s
  if [ -s "$work/port" ]; then port=$(cat "$work/port"); break; fi
  kill -0 "$server_pid" 2>/dev/null || { echo "bench_search: parleyd exited at start-up:" >&2; cat "$work/parleyd.log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$port" ] || { echo "bench_search: parleyd did not listen within 30 s" >&2; exit 1; }

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
ticks0=$(cpu_ticks "$server_pid")
t0=$(date +%s.%N)
status=0
timeout --kill-after=10 "$BENCH_TIMEOUT" "${pin_bench[@]}" "$bin/parley-search-bench" \
  --port "$port" --admin-token "$token" --users "$USERS" --queries "$QUERIES" --blockers "$BLOCKERS" \
  --warmup "$WARMUP" --connections "$CONNECTIONS" --json "$JSON_OUT" --server-pid "$server_pid" "${extra_defaults[@]}" "$@" || status=$?
t1=$(date +%s.%N)
ticks1=$(cpu_ticks "$server_pid")

if kill -0 "$server_pid" 2>/dev/null; then
  hwm=$(awk '/VmHWM/ {print $2, $3}' "/proc/$server_pid/status")
  db=$(du -sh "$work/data" | cut -f1)
  hz=$(getconf CLK_TCK)
  echo "parleyd: peak RSS $hwm, data dir $db, CPU $(awk -v a="$ticks0" -v b="$ticks1" -v h="$hz" 'BEGIN {printf "%.1f", (b - a) / h}') s over $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}') s of bench"
else
  echo "bench_search: parleyd died during the run:" >&2
  tail -20 "$work/parleyd.log" >&2
  status=1
fi
if grep -Eq 'level=(error|critical)' "$work/parleyd.log"; then
  echo "bench_search: parleyd logged errors:" >&2
  grep -E 'level=(error|critical)' "$work/parleyd.log" | head -20 >&2
  status=1
fi
stop_status=0
stop_server || stop_status=$?
if [ "$stop_status" != 0 ]; then
  echo "bench_search: parleyd exited with status $stop_status on SIGTERM" >&2
  status=1
fi
[ "$status" = 124 ] && echo "bench_search: the bench did not finish within $BENCH_TIMEOUT s" >&2
[ "$status" = 0 ] && echo "bench_search: ok (results in $JSON_OUT)" || echo "bench_search: FAILED (status $status)" >&2
exit "$status"
