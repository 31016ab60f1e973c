#!/usr/bin/env bash
# Cluster scale figures (issue 10; docs/benchmarks.md, "Cluster scale (issue
# 10)"): builds parleyd and parley-bench in the Release tree, starts a
# throw-away PostgreSQL 15 and redis-server (scripts/lib/cluster_servers.sh),
# then runs parley-bench in the cluster shape (--nodes N --store --redis):
#   throughput  with 1, 2 and 3 nodes at the same offered rates (the two
#               devices of each pair on different nodes when N >= 2);
#   idle        IDLE_CONNECTIONS connections (default 100,000) over
#               IDLE_NODES nodes (default 6) and as many client processes
#               as the file limit needs: user and kernel memory per connection.
# Each step gets a fresh database and an empty Redis. parleyd nodes,
# PostgreSQL and Redis run on CPU 0, the load generator on CPU 1 (with more
# cores nothing changes: the figures are the cluster's overhead on one core).
# Writes one JSON per step, cluster.json (the summary) and prints a table,
# into build/release/bench-results/cluster/. Stops everything at the end.
#
#   scripts/bench_cluster.sh                  # full size (~5 min; wants a quiet machine)
#   SMOKE=1 scripts/bench_cluster.sh          # tiny, ~40 s: the test command's run
#
# Environment (full-size defaults in brackets):
#   NODES_LIST ["1 2 3"]  RATES ["2000,5000,10000,15000,20000"]  PAIRS [500]
#   WARMUP [2] DURATION [10] DRAIN [5]
#   IDLE_CONNECTIONS [100000]  IDLE_NODES [6]  IDLE_HOLD [30]
#   IDLE_HEARTBEAT_MS [25000]  IDLE_SETUP_TIMEOUT [1800]  STEPS ["throughput idle"]
#   RESULTS_DIR, SKIP_BUILD=1 with BIN_DIR=..., BENCH_TIMEOUT (s per step).
# Exits non-zero if a step fails: a set-up failure, a lost message (one that
# never arrived, live or through sync, within parley-bench's final drain), a
# failed request, a connection not held, a node's error log line or exit
# status; with SMOKE=1 also delivered != offered within a rate's drain.
set -euo pipefail
BENCH_NAME=bench_cluster
. "$(dirname "$0")/lib/bench_common.sh"
. "$root/scripts/lib/cluster_servers.sh"

if [ "${SMOKE:-0}" = 1 ]; then
  NODES_LIST=${NODES_LIST:-"1 2"}
  RATES=${RATES:-300}
  PAIRS=${PAIRS:-50}
  WARMUP=${WARMUP:-0.5} DURATION=${DURATION:-2} DRAIN=${DRAIN:-3}
  IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-300}
  IDLE_NODES=${IDLE_NODES:-2}
  IDLE_HOLD=${IDLE_HOLD:-2.5}
  IDLE_HEARTBEAT_MS=${IDLE_HEARTBEAT_MS:-1000}
  IDLE_SETUP_TIMEOUT=${IDLE_SETUP_TIMEOUT:-40}
  BENCH_TIMEOUT=${BENCH_TIMEOUT:-60}
else
  NODES_LIST=${NODES_LIST:-"1 2 3"}
  RATES=${RATES:-2000,5000,10000,15000,20000}
  PAIRS=${PAIRS:-500}
  WARMUP=${WARMUP:-2} DURATION=${DURATION:-10} DRAIN=${DRAIN:-5}
  IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-100000}
  IDLE_NODES=${IDLE_NODES:-6}
  IDLE_HOLD=${IDLE_HOLD:-30}
  IDLE_HEARTBEAT_MS=${IDLE_HEARTBEAT_MS:-25000}
  IDLE_SETUP_TIMEOUT=${IDLE_SETUP_TIMEOUT:-1800}
  BENCH_TIMEOUT=${BENCH_TIMEOUT:-2400}
fi
STEPS=${STEPS:-"throughput idle"}

bench_build parley-bench
bench_pinning
RESULTS_DIR=${RESULTS_DIR:-$root/build/release/bench-results/cluster}
mkdir -p "$RESULTS_DIR"
rm -f "$RESULTS_DIR"/*.json

start_cluster_servers
redis_port=${CLUSTER_REDIS##*:}
# The server side (PostgreSQL, Redis, the nodes) on CPU 0, like parleyd in
# scripts/bench.sh: every process of the running PostgreSQL (backends forked
# later inherit the postmaster's affinity) and redis-server's threads.
if [ ${#pin_server[@]} -gt 0 ]; then
  pg_pid=$(head -1 "$CLUSTER_PG_DIR/data/postmaster.pid")
  for p in "$pg_pid" $(ps -o pid= --ppid "$pg_pid"); do taskset -a -p -c 0 "$p" >/dev/null; done
  taskset -a -p -c 0 "$CLUSTER_REDIS_PID" >/dev/null
  server_cpu=(--server-cpu 0)
else
  server_cpu=()
fi

# A fresh database per step (parleyd creates the schema), an empty Redis.
step_store() {
  psql -q -v ON_ERROR_STOP=1 "$CLUSTER_STORE" -c "CREATE DATABASE $1" >/dev/null
  redis-cli -p "$redis_port" flushall >/dev/null
  echo "${CLUSTER_STORE/@\/postgres\?/@\/$1?}"
}

status=0
ran=()
run_step() {  # NAME ARGS...: one parley-bench run
  local name=$1; shift
  local store; store=$(step_store "bench_$name")
  echo "== $name"
  if timeout --kill-after=10 "$BENCH_TIMEOUT" "${pin_bench[@]}" "$bin/parley-bench" --parleyd "$bin/parleyd" \
      "${server_cpu[@]}" --store "$store" --redis "$CLUSTER_REDIS" --redis-pid "$CLUSTER_REDIS_PID" \
      --json "$RESULTS_DIR/$name.json" "$@"; then
    ran+=("$RESULTS_DIR/$name.json")
  else
    echo "$BENCH_NAME: step $name FAILED (status $?)" >&2
    [ -f "$RESULTS_DIR/$name.json" ] && ran+=("$RESULTS_DIR/$name.json")
    status=1
  fi
}

for step in $STEPS; do
  case "$step" in
    throughput)
      for n in $NODES_LIST; do
        run_step "throughput_${n}" --nodes "$n" throughput --pairs "$PAIRS" --rates "$RATES" \
          --warmup "$WARMUP" --duration "$DURATION" --drain "$DRAIN"
      done ;;
    idle)
      run_step "idle_${IDLE_NODES}" --nodes "$IDLE_NODES" idle --connections "$IDLE_CONNECTIONS" --hold "$IDLE_HOLD" \
        --heartbeat-interval-ms "$IDLE_HEARTBEAT_MS" --setup-timeout "$IDLE_SETUP_TIMEOUT" ;;
    *) echo "$BENCH_NAME: unknown step $step (throughput, idle)" >&2; exit 2 ;;
  esac
done

if [ ${#ran[@]} -gt 0 ]; then
  kept_up=()
  [ "${SMOKE:-0}" = 1 ] && kept_up=(--check-kept-up)  # its low rate must keep up
  python3 "$root/scripts/bench_cluster_report.py" --check "${kept_up[@]}" --json "$RESULTS_DIR/cluster.json" "${ran[@]}" || status=1
else
  status=1
fi
[ "$status" = 0 ] && echo "$BENCH_NAME: ok (results in $RESULTS_DIR)" || echo "$BENCH_NAME: FAILED" >&2
exit "$status"
