#!/usr/bin/env bash
# Installs what building and testing Parley needs on Debian 12, and nothing
# that is already there. Safe to run again. Needs root (or sudo) for apt-get.
# Extra package names given as arguments are installed too (scripts/fuzz.sh
# uses this for clang).
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config
  libboost1.81-dev            # Asio/Beast (header-only, compiled once)
  libsimdjson-dev             # frame parsing
  libicu-dev                  # Unicode case folding of search words (NFKC_Casefold)
  libsqlite3-dev              # embedded store
  libzstd-dev                 # cold tier: compressed blocks of old history
  libjemalloc-dev             # parleyd's allocator in Release builds
  postgresql libpq-dev        # cluster store (libpq) and the server its tests start
  libhiredis-dev redis-server # cluster fabric (hiredis) and the server its tests start
  libsodium-dev               # Argon2id, tokens, BLAKE2b
  libssl-dev openssl          # TLS (wss/https); the TLS tests make certificates with the openssl CLI
  libspdlog-dev libfmt-dev    # logs
  libcli11-dev                # flags
  nlohmann-json3-dev          # config files and tests
  libgtest-dev libgmock-dev   # tests
  python3 python3-websockets  # the second client, written from docs/protocol.md
  curl procps iproute2         # iproute2: ss, for the compression test's bytes-on-the-wire count
  file systemd                # the .deb's dependencies (CPack, dpkg-shlibdeps) and `systemd-analyze verify` of its unit
  chromium                    # the web client's browser tests (tests/browser); Node 20 is on the machine
  "$@"
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The browser tests' npm packages (playwright-core, axe-core), project-local in
# tests/browser/node_modules, exactly as package-lock.json pins them. Never a
# browser download: they drive Debian's /usr/bin/chromium.
cd "$(dirname "$0")/../tests/browser"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "setup: node and npm (Node 20) are required for tests/browser" >&2
  exit 1
fi
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: installing tests/browser npm packages"
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error
fi
echo "setup: all build and test dependencies present"
