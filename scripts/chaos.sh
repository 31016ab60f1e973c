#!/usr/bin/env bash
# Long chaos run (docs/checker.md, "Chaos runs"): builds the test tree's
# parleyd (with its fault switches), parley-chaos and parley-check, then runs
# a randomised workload with faults for --minutes (default 30), seed chosen at
# random and printed unless given, and checks it. Exits with the checker's
# result (0 pass, 1 fail, 2 could not run). A failing run is saved under
# chaos-runs/ (override with --out DIR) with the command that replays it.
#
#   scripts/chaos.sh                                   # 30 minutes, 16 users x 3 devices
#   scripts/chaos.sh --minutes 5 --seed 42             # shorter, a chosen seed
#   scripts/chaos.sh --minutes 30 --store postgresql://...   # against PostgreSQL
#   scripts/chaos.sh --minutes 30 --nodes 3            # cluster shape: starts its own PostgreSQL and Redis
#   build/asan/bin/parley-chaos --replay chaos-runs/seed-42-...   # replay a saved run
#
# Extra arguments go to parley-chaos (--users, --devices, --keep, --out ...).
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=30
nodes=1
args=()
users=(--users 16) devices=(--devices 3) out=(--out chaos-runs)
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes=${2:?--minutes needs a value}; shift 2 ;;
    --users) users=(--users "${2:?}"); shift 2 ;;
    --devices) devices=(--devices "${2:?}"); shift 2 ;;
    --out) out=(--out "${2:?}"); shift 2 ;;
    --nodes) nodes=${2:?--nodes needs a value}; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
[ "${SKIP_BUILD:-0}" = 1 ] || PARLEY_JOBS=${PARLEY_JOBS:-2} scripts/build.sh asan parleyd parley-chaos parley-check
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
if [ "$nodes" -gt 1 ]; then
  # The cluster shape: N nodes on a throw-away PostgreSQL and Redis (stopped
  # when this script exits).
  source scripts/lib/cluster_servers.sh
  start_cluster_servers
  args+=(--nodes "$nodes" --redis "$CLUSTER_REDIS" --store "$CLUSTER_STORE")
fi
start=$(date -u +%Y-%m-%dT%H:%M:%SZ)
set +e
build/asan/bin/parley-chaos --duration-s $((minutes * 60)) "${users[@]}" "${devices[@]}" "${out[@]}" "${args[@]}" \
  2>&1 | tee build/asan/chaos-last.txt
rc=${PIPESTATUS[0]}
set -e
echo "chaos.sh: started $start, finished $(date -u +%Y-%m-%dT%H:%M:%SZ), exit $rc (output: build/asan/chaos-last.txt)"
exit "$rc"
