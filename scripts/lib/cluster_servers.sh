# Sourced by the scripts that run parleyd in the cluster shape on this
# machine (scripts/chaos.sh --nodes N, tests/chaos/cluster_chaos_test.sh):
# a throw-away PostgreSQL (scripts/pg_test_server.sh) and a throw-away
# redis-server, both in temporary directories, both stopped (and removed) when
# the calling shell exits. Expects `set -euo pipefail`.
#
#   start_cluster_servers    sets CLUSTER_STORE (a postgresql:// URL) and
#                            CLUSTER_REDIS (127.0.0.1:PORT); installs an EXIT trap.

# How long redis-server may take to answer PING.
REDIS_START_TIMEOUT_S=20

start_cluster_servers() {
  local root pg_line
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
  [ -x /usr/bin/redis-server ] || "$root/scripts/setup.sh" >&2
  pg_line=$("$root/scripts/pg_test_server.sh" start --owner-pid $$)
  CLUSTER_PG_DIR=${pg_line#dir=}
  CLUSTER_PG_DIR=${CLUSTER_PG_DIR%% *}
  CLUSTER_STORE=${pg_line##* url=}
  CLUSTER_REDIS_DIR=$(mktemp -d /tmp/parley-redis-XXXXXX)
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
  /usr/bin/redis-server --port "$port" --bind 127.0.0.1 --dir "$CLUSTER_REDIS_DIR" --save '' --appendonly no \
    --daemonize no --protected-mode no --logfile "$CLUSTER_REDIS_DIR/redis.log" &
  CLUSTER_REDIS_PID=$!
  trap stop_cluster_servers EXIT
  CLUSTER_REDIS=127.0.0.1:$port
  local deadline=$((SECONDS + REDIS_START_TIMEOUT_S))
  until [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ]; do
    if [ $SECONDS -ge $deadline ] || ! kill -0 "$CLUSTER_REDIS_PID" 2>/dev/null; then
      cat "$CLUSTER_REDIS_DIR/redis.log" >&2 || true
      echo "cluster_servers: redis-server did not start" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "cluster servers: PostgreSQL $CLUSTER_STORE, Redis $CLUSTER_REDIS" >&2
}

stop_cluster_servers() {
  [ -n "${CLUSTER_REDIS_PID:-}" ] && kill "$CLUSTER_REDIS_PID" 2>/dev/null && wait "$CLUSTER_REDIS_PID" 2>/dev/null
  [ -n "${CLUSTER_REDIS_DIR:-}" ] && rm -rf "$CLUSTER_REDIS_DIR"
  [ -n "${CLUSTER_PG_DIR:-}" ] && "$(dirname "${BASH_SOURCE[0]}")/../pg_test_server.sh" stop "$CLUSTER_PG_DIR"
  return 0
}
