#!/usr/bin/env bash
# Quick start, command 2: installs what is missing, builds the test tree
# (ASan + UBSan) and runs the whole suite: unit, store conformance,
# end-to-end (real parleyd, real sockets), the Python client and the web
# client in Debian's chromium (CTest label `browser`); then the
# Release tree with the benchmarks' smoke runs, the out-of-descriptors
# end-to-end test against the Release parleyd, the 5,000-device restart
# (scripts/bench_reconnect.sh), the load generator's smoke runs
# (SMOKE=1 scripts/bench.sh), the cluster scale smoke run on PostgreSQL and
# Redis (SMOKE=1 scripts/bench_cluster.sh), the .deb check (scripts/package_check.sh),
# and the fuzz targets. Prints the
# time of each phase. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
# Each phase also prints the disk space left: a CI machine once ran out of it
# in the middle of the ASan build.
phase() { echo "== $1 ($(( $(date +%s) - t0 )) s elapsed, $(df -Ph . | awk 'NR == 2 { print $4 }') free)"; }

phase "set-up"
scripts/setup.sh

phase "build (ASan + UBSan)"
scripts/build.sh asan

phase "tests"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
cd build/asan
ctest --output-on-failure -j"${PARLEY_TEST_JOBS:-2}" --timeout 600
cd ../..

phase "Release build and benchmark smoke runs (docs/benchmarks.md)"
SMOKE=1 scripts/bench_search.sh

phase "a parleyd out of file descriptors (the Release parleyd: an ASan one cannot run out; tests/e2e/fd_limit_e2e_test.cc)"
scripts/build.sh release parleyd
PARLEY_E2E_PARLEYD="$PWD/build/release/bin/parleyd" build/asan/tests/e2e/fd_limit_e2e_test

phase "cold tier smoke: bytes per message before and after compaction, small (Release; docs/benchmarks.md, \"Cold tier\")"
scripts/build.sh release parley-cold-bench
cold_dir=$(mktemp -d)
build/release/bin/parley-cold-bench --dir "$cold_dir" --conversations 5 --messages 300 --pages 50
rm -rf "$cold_dir"

phase "reconnect spread: parleyd restart under 5,000 SDK devices (Release; docs/benchmarks.md)"
scripts/bench_reconnect.sh

phase "load generator smoke: every parley-bench scenario, small (Release; docs/benchmarks.md)"
SMOKE=1 scripts/bench.sh

phase "cluster scale smoke: 1 and 2 nodes on PostgreSQL + Redis, small (Release; docs/benchmarks.md, \"Cluster scale\")"
SMOKE=1 scripts/bench_cluster.sh

phase "package: .deb built, unpacked and run (docs/operations.md, \"Installing the package\")"
scripts/package_check.sh

phase "fuzz (libFuzzer, clang tree; FUZZ_SECONDS=${FUZZ_SECONDS:-20} per target)"
scripts/fuzz.sh

phase "done"
