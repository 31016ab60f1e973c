#!/usr/bin/env bash
# The load generator's benchmarks (issue 9; docs/benchmarks.md, "Load
# generator"): builds parleyd and parley-bench in the Release tree, then runs
# each scenario with a fresh parleyd pinned to CPU 0 (`taskset -c 0`, every
# thread, --io-threads 1; SQLite in WAL mode with synchronous=FULL, parleyd's
# only setting) and the load generator pinned to CPU 1. Writes one JSON file
# per scenario, a summary table and an SVG plot of latency against offered
# load (scripts/bench_report.py) into build/release/bench-results/.
#
#   scripts/bench.sh                        # every scenario at full size (~5 min, plus history: 10M messages, 15+ min)
#   SMOKE=1 scripts/bench.sh                # every scenario small, a few s each: the test command's run
#   scripts/bench.sh throughput --rates 5000,10000,20000 --duration 30   # one scenario, extra args to it
#
# Scenarios: idle throughput receipt-rtt reconnects storm backfill hot history
# (history: a 10,000,000-message store by default, ~5 min of it filling).
# Environment: SMOKE=1, SCENARIOS="..." (the ones to run), RESULTS_DIR,
# SKIP_BUILD=1 with BIN_DIR=..., BENCH_TIMEOUT (seconds per scenario).
# Exits non-zero if the build failed or any scenario failed (lost messages,
# failed requests, parleyd errors or exit status).
set -euo pipefail
BENCH_NAME=bench
. "$(dirname "$0")/lib/bench_common.sh"

all="idle throughput receipt-rtt reconnects storm backfill hot history"
only=""
if [ $# -gt 0 ] && [[ " $all " == *" $1 "* ]]; then only=$1; shift; fi
SCENARIOS=${only:-${SCENARIOS:-$all}}

if [ "${SMOKE:-0}" = 1 ]; then
  BENCH_TIMEOUT=${BENCH_TIMEOUT:-60}
  declare -A args=(
    [idle]="--connections 300 --hold 2.5 --heartbeat-interval-ms 1000"
    [throughput]="--pairs 50 --rates 500,1500 --warmup 0.5 --duration 2 --drain 3"
    # receipt-rtt's recipients send delivered and read as two requests, so
    # the smoke runs both receipt modes (throughput sends them as one).
    [receipt-rtt]="--pairs 20 --rates 500 --warmup 0.5 --duration 2 --drain 3 --separate-receipts"
    [reconnects]="--users 200 --concurrency 50 --warmup 0.5 --duration 2"
    [storm]="--devices 500 --rate 500 --before 1 --after 1"
    # backfill's writer (1,000 sends in flight) against a store queue bound
    # of 3: parleyd refuses most sends with a retryable `unavailable`
    # (admission), the tool sends them again after the wait, and every
    # message must still reach the fresh device exactly once.
    [backfill]="--history 5000 --parleyd-arg=--max-queued-writes=3 --parleyd-arg=--unavailable-retry-after-ms=20"
    # hot's generator busy-polls (--spin), so the smoke runs both loops.
    [hot]="--pairs 20 --rates 500 --hot-rate 500 --warmup 0.5 --duration 2 --drain 3 --spin"
    [history]="--history 20000 --small 2000 --conversations 20 --pairs 5 --rate 500 --warmup 0.3 --duration 1 --drain 3 --requests 50"
  )
else
  BENCH_TIMEOUT=${BENCH_TIMEOUT:-900}
  declare -A args=(
    [idle]="--connections 10000 --hold 8"
    [throughput]="--pairs 500 --rates 5000,10000,20000,30000,40000,50000 --duration 10"
    [receipt-rtt]="--pairs 500 --rates 10000 --duration 10"
    [reconnects]="--users 2000 --concurrency 200 --duration 10"
    [storm]="--devices 10000 --rate 2000"
    [backfill]="--history 100000"
    [hot]="--pairs 500 --rates 10000 --hot-rate 10000 --duration 10"
    [history]="--history 10000000 --small 10000 --conversations 100 --pairs 20 --rate 1000 --duration 5 --repeats 3"
  )
fi

bench_build parley-bench
bench_pinning
RESULTS_DIR=${RESULTS_DIR:-$root/build/release/bench-results}
mkdir -p "$RESULTS_DIR"
server_cpu=()
[ ${#pin_server[@]} -gt 0 ] && server_cpu=(--server-cpu 0)

status=0
ran=()
for s in $SCENARIOS; do
  [ -n "${args[$s]+x}" ] || { echo "bench: unknown scenario $s (one of: $all)" >&2; exit 2; }
  echo "== $s"
  # shellcheck disable=SC2086  # the defaults are a list of flags
  if timeout --kill-after=10 "$BENCH_TIMEOUT" "${pin_bench[@]}" "$bin/parley-bench" --parleyd "$bin/parleyd" \
      "${server_cpu[@]}" --json "$RESULTS_DIR/$s.json" "$s" ${args[$s]} "$@"; then
    ran+=("$RESULTS_DIR/$s.json")
  else
    rc=$?
    echo "bench: scenario $s FAILED (status $rc)" >&2
    status=1
  fi
done
if [ ${#ran[@]} -gt 0 ] && command -v python3 >/dev/null; then
  python3 scripts/bench_report.py --svg "$RESULTS_DIR/latency.svg" "${ran[@]}" || status=1
fi
[ "$status" = 0 ] && echo "bench: ok (results in $RESULTS_DIR)" || echo "bench: FAILED" >&2
exit "$status"
