#!/usr/bin/env bash
# A throw-away PostgreSQL 15 server for tests: never the system cluster.
#
#   scripts/pg_test_server.sh start [--owner-pid PID]
#       Installs PostgreSQL through scripts/setup.sh if it is missing, runs
#       initdb into a fresh temporary directory and starts the server on a
#       free localhost port and a Unix socket in that directory. Prints one
#       line of KEY=VALUE pairs:  dir=... port=... url=postgresql://...
#       (the url names the `postgres` database as the superuser `postgres`).
#       With --owner-pid, a watchdog stops the server and removes the
#       directory once that process is gone (a killed test leaks nothing).
#   scripts/pg_test_server.sh stop DIR
#       Stops the server started in DIR (immediate shutdown) and removes DIR.
#   scripts/pg_test_server.sh halt DIR
#       Stops the server started in DIR (immediate shutdown: like a crash,
#       every session is cut) and keeps DIR: "PostgreSQL gone" tests.
#   scripts/pg_test_server.sh resume DIR
#       Starts the halted server in DIR again, on the same port and socket.
#
# PostgreSQL refuses to run as root: as root the server runs as the
# `postgres` system user (created by the Debian package) through runuser;
# as any other user it runs as that user. fsync is off (a test server's data
# need not survive a machine crash; the store's own durability logic is
# unchanged: it still waits for COMMIT).
set -euo pipefail

PG_VERSION=15
PG_BIN=/usr/lib/postgresql/${PG_VERSION}/bin
# How long start waits for the server to accept connections.
START_TIMEOUT_S=30

die() { echo "pg_test_server: $*" >&2; exit 1; }

as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Starts the server of DIR on PORT (and records the port for resume).
pg_start() {
  local dir="$1" port="$2"
  echo "$port" >"$dir/port"
  as_owner "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t "$START_TIMEOUT_S" start -o \
    "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off \
     -c max_connections=200 -c shared_buffers=64MB" >/dev/null 2>&1
}

cmd_start() {
  local owner_pid=""
  while (($#)); do
    case "$1" in
      --owner-pid) owner_pid="$2"; shift 2 ;;
      *) die "unknown argument $1" ;;
    esac
  done
  if [ ! -x "$PG_BIN/initdb" ] || [ ! -f /usr/include/postgresql/libpq-fe.h ]; then
    "$(dirname "$0")/setup.sh" >&2
  fi
  [ -x "$PG_BIN/initdb" ] || die "initdb not found in $PG_BIN after set-up"

  local dir
  dir=$(mktemp -d /tmp/parley-pg-XXXXXX)
  chmod 755 "$dir"
  if [ "$(id -u)" -eq 0 ]; then chown postgres:postgres "$dir"; fi

  # initdb once per machine (it is the slow part of a start): later starts
  # copy the cached cluster. The cache is filled atomically (initdb into a
  # temporary directory, then rename), so concurrent starts are safe.
  local cache="${PARLEY_PG_INITDB_CACHE:-/tmp/parley-pg-initdb-${PG_VERSION}-$(id -u)}"
  local owner; owner=$(id -un); [ "$(id -u)" -eq 0 ] && owner=postgres
  # A cache someone else planted in /tmp is not ours: ignore it.
  if [ -e "$cache" ] && [ "$(stat -c %U "$cache")" != "$owner" ]; then
    cache=$(mktemp -d /tmp/parley-pg-initdb-private-XXXXXX) && rmdir "$cache"
  fi
  if [ ! -f "$cache/data/PG_VERSION" ]; then
    local fresh
    fresh=$(mktemp -d /tmp/parley-pg-initdb-XXXXXX)
    chmod 755 "$fresh"
    if [ "$(id -u)" -eq 0 ]; then chown postgres:postgres "$fresh"; fi
    as_owner "$PG_BIN/initdb" -D "$fresh/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 --no-sync \
      >"$fresh/initdb.log" 2>&1 || { cat "$fresh/initdb.log" >&2; rm -rf "$fresh" "$dir"; die "initdb failed"; }
    mv -T "$fresh" "$cache" 2>/dev/null || rm -rf "$fresh"  # another start won the race
  fi
  cp -a "$cache/data" "$dir/data" || { rm -rf "$dir"; die "cannot copy $cache/data"; }

  # A port chosen free can be taken before the server binds it: retry.
  local port="" started=0
  for _attempt in 1 2 3 4 5; do
    port=$(free_port)
    if pg_start "$dir" "$port"; then
      started=1
      break
    fi
  done
  if [ "$started" -ne 1 ]; then
    cat "$dir/server.log" >&2 || true
    rm -rf "$dir"
    die "postgres did not start"
  fi

  if [ -n "$owner_pid" ]; then
    # Detached from our stdout so the caller's read of it ends.
    (
      while kill -0 "$owner_pid" 2>/dev/null; do sleep 1; done
      as_owner "$PG_BIN/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
      rm -rf "$dir"
    ) </dev/null >/dev/null 2>&1 &
    disown
  fi
  echo "dir=$dir port=$port url=postgresql://postgres@/postgres?host=$dir&port=$port"
}

cmd_stop() {
  local dir="${1:-}"
  [ -n "$dir" ] && [ -d "$dir/data" ] || die "stop needs the directory start printed"
  as_owner "$PG_BIN/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}

cmd_halt() {
  local dir="${1:-}"
  [ -n "$dir" ] && [ -d "$dir/data" ] || die "halt needs the directory start printed"
  as_owner "$PG_BIN/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || die "pg_ctl stop failed"
}

cmd_resume() {
  local dir="${1:-}"
  [ -n "$dir" ] && [ -f "$dir/port" ] || die "resume needs the directory start printed"
  pg_start "$dir" "$(cat "$dir/port")" || { cat "$dir/server.log" >&2 || true; die "postgres did not start again"; }
}

case "${1:-}" in
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  halt) shift; cmd_halt "$@" ;;
  resume) shift; cmd_resume "$@" ;;
  *) die "usage: $0 start [--owner-pid PID] | stop DIR | halt DIR | resume DIR" ;;
esac
