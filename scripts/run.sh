#!/usr/bin/env bash
# Quick start, command 1: installs what is missing, builds the Release tree and
# runs parleyd with its embedded defaults (127.0.0.1:8080, data in
# ./parley-data). Extra arguments go to parleyd (see `parleyd --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh release parleyd
exec build/release/bin/parleyd "$@"
