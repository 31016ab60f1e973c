#!/usr/bin/env bash
# parleyd's memory per WebSocket connection with and without permessage-deflate
# (docs/benchmarks.md, "WebSocket compression"). For each configuration it
# starts a Release parleyd pinned to core 0, opens CONNECTIONS connections with
# bench/ws_deflate_memory.py (python3-websockets, from scripts/setup.sh) pinned
# to core 1, each authenticated and served one search page, and prints the RSS
# growth per connection.
#
#   scripts/bench_deflate.sh                  # 2,000 connections per configuration
#   CONNECTIONS=5000 SKIP_BUILD=1 scripts/bench_deflate.sh
set -euo pipefail
BENCH_NAME=bench_deflate
# shellcheck source=scripts/lib/bench_common.sh
source "$(dirname "$0")/lib/bench_common.sh"
CONNECTIONS=${CONNECTIONS:-2000}
bench_build
bench_pinning

work=$(mktemp -d /tmp/parley-deflate-XXXXXX)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill -TERM "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# name | client flag | parleyd flags
configs=(
  "plain|--plain|"
  "offered, server declines||"
  "deflate defaults (window 15, mem level 4)||--ws-deflate"
  "deflate window 10, mem level 1||--ws-deflate --ws-deflate-window-bits 10 --ws-deflate-mem-level 1"
  "deflate, no context takeover||--ws-deflate --ws-deflate-no-context-takeover"
)
printf '%-45s %12s %12s\n' configuration negotiated "B/conn"
for c in "${configs[@]}"; do
  IFS='|' read -r name client_flag server_flags <<<"$c"
  rm -rf "$work/data" "$work/port"
  token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  # shellcheck disable=SC2086  # server_flags is a list of flags
  "${pin_server[@]}" "$bin/parleyd" --listen 127.0.0.1:0 --port-file "$work/port" --data-dir "$work/data" \
    --admin-token "$token" --insecure-fast-password-hashing --log-level warn --io-threads 1 \
    --rate-limit search_per_user=1000000/1000000 $server_flags 2>"$work/parleyd.log" &
  server_pid=$!
  for _ in $(seq 300); do [ -s "$work/port" ] && break; sleep 0.1; done
  [ -s "$work/port" ] || { echo "bench_deflate: parleyd did not start:" >&2; cat "$work/parleyd.log" >&2; exit 1; }
  # shellcheck disable=SC2086
  out=$("${pin_bench[@]}" /usr/bin/python3 bench/ws_deflate_memory.py --port "$(cat "$work/port")" \
    --admin-token "$token" --pid "$server_pid" --connections "$CONNECTIONS" $client_flag)
  field() { /usr/bin/python3 -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$out" "$1"; }
  printf '%-45s %12s %12s\n' "$name" "$(field negotiated)" "$(field per_connection_bytes)"
  kill -TERM "$server_pid"; wait "$server_pid" || true; server_pid=""
done
