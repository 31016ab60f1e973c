#!/usr/bin/env bash
# Runs the browser tests (docs/web.md): playwright-core drives Debian's
# chromium (/usr/bin/chromium) against a real parleyd that each test file
# starts. Usage: tests/browser/run.sh [PATH_TO_PARLEYD]. Needs what
# scripts/setup.sh installs (chromium, node_modules here); installs the npm
# packages itself if they are missing, never a browser.
set -euo pipefail
cd "$(dirname "$0")"
export PARLEYD="${1:-${PARLEYD:-../../build/asan/bin/parleyd}}"
PARLEYD="$(realpath "$PARLEYD")"
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
if [ ! -d node_modules/playwright-core ] || [ ! -d node_modules/axe-core ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
# parleyd under ASan: report leaks, stop at the first error.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
exec node --test --test-concurrency=1 --test-reporter=spec ./*.test.mjs
