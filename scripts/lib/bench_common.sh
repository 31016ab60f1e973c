# Sourced by the benchmark scripts (scripts/bench.sh, bench_search.sh,
# bench_reconnect.sh): the shared preamble. Expects `set -euo pipefail` and
# BENCH_NAME (the prefix of messages) set by the caller.
#
#   bench_build TOOL...      build parleyd and TOOL in the Release tree, unless
#                            SKIP_BUILD=1 (then BIN_DIR=... names binaries
#                            built elsewhere); sets $bin; checks they exist.
#   bench_json_out NAME      sets $JSON_OUT (default
#                            build/release/bench-results/NAME.json), makes its dir.
#   bench_pinning            sets the arrays pin_server=(taskset -c 0) and
#                            pin_bench=(taskset -c 1), empty (with a warning)
#                            without taskset or a second CPU.
# Benchmarks run on the Release tree (-O3, no sanitizers): what ships.

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
root=$(pwd)
BENCH_NAME=${BENCH_NAME:-bench}

bench_build() {
  if [ "${SKIP_BUILD:-0}" != 1 ]; then
    scripts/build.sh release parleyd "$@"
  fi
  bin=${BIN_DIR:-$root/build/release/bin}
  local b
  for b in parleyd "$@"; do
    [ -x "$bin/$b" ] || { echo "$BENCH_NAME: $bin/$b is missing" >&2; exit 2; }
  done
}

bench_json_out() {
  JSON_OUT=${JSON_OUT:-$root/build/release/bench-results/$1.json}
  mkdir -p "$(dirname "$JSON_OUT")"
}

bench_pinning() {
  if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
    pin_server=(taskset -c 0); pin_bench=(taskset -c 1)
  else
    echo "$BENCH_NAME: taskset or a second CPU missing: running unpinned" >&2
    pin_server=(); pin_bench=()
  fi
}
