#!/usr/bin/env bash
# Refreshes the web client's screenshots in docs/screenshots/ (the README shows
# one): builds parleyd (test tree) if needed, starts it on a free port with a
# temporary data directory, and lets Debian's chromium photograph each screen.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
PARLEY_JOBS=${PARLEY_JOBS:-2} scripts/build.sh asan parleyd
PARLEYD="$(realpath "${PARLEYD:-build/asan/bin/parleyd}")" PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 \
  node tests/browser/screenshots.mjs
