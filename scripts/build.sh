#!/usr/bin/env bash
# Configures and builds one tree. Usage: scripts/build.sh asan|release [ninja targets...]
#   asan    -> build/asan     (Debug, ASan + UBSan, tests, modules as shared libraries) — what the test suite runs
#   release -> build/release  (Release, no tests)            — what you run and ship
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:?usage: scripts/build.sh asan|release [targets...]}; shift || true
jobs=${PARLEY_JOBS:-$(nproc)}
case "$kind" in
  asan)    args=(-DCMAKE_BUILD_TYPE=Debug -DPARLEY_SANITIZE=ON -DPARLEY_BUILD_TESTS=ON -DPARLEY_SHARED_LIBS=ON) ;;
  release) args=(-DCMAKE_BUILD_TYPE=Release -DPARLEY_SANITIZE=OFF -DPARLEY_BUILD_TESTS=OFF -DPARLEY_SHARED_LIBS=OFF) ;;
  *) echo "unknown build kind: $kind" >&2; exit 2 ;;
esac
export CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/parley-ccache}
# Both trees' objects take about 1 GB in the cache (compressed); the bound
# keeps it from growing towards ccache's default 5 GB on a small disk.
export CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-2G}
# Paths under the checkout are hashed relative to it, so clones in other
# directories (a fresh clone's check, a second worktree) reuse the cache.
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$PWD}
# The Debug tree's objects too (-g would hash the build directory): their
# debug info then names the directory of whichever checkout compiled them
# first; file names in it stay relative to the tree.
export CCACHE_NOHASHDIR=${CCACHE_NOHASHDIR:-1}
# Configured every time (a second or two), so that a tree made before a
# change of these options takes it.
cmake -S . -B "build/$kind" -G Ninja "${args[@]}" >/dev/null
ninja -C "build/$kind" -j"$jobs" "$@"
