#!/usr/bin/env bash
# Side by side with ejabberd and Prosody (docs/benchmarks.md, "Side by side:
# ejabberd and Prosody"; issue 9). For each server and variant (no archiving,
# archiving in SQLite) it: writes the config from bench/peers/ into a fresh
# temporary directory, starts the server there as its own user (setpriv, so
# ejabberd's file limit holds: ejabberdctl's `su` would reset it to 1024)
# pinned to CPU 0, registers the users with in-band registration
# (XEP-0077), runs parley-xmpp-bench pinned to CPU 1 across a rate sweep,
# stops the server and removes the directory. Results: one JSON per run and
# a table (results.md) in $OUT_DIR.
#
#   scripts/bench_peers.sh                                   # all five runs
#   RATES=1000,5000 DURATION=5 scripts/bench_peers.sh prosody   # one server
#   scripts/bench_peers.sh ejabberd-mam prosody-mam          # chosen runs
#
# Runs: ejabberd, ejabberd-mam (archiving in SQLite), ejabberd-mam-mnesia
# (archiving in mnesia, as perf_anchors.md measured), prosody, prosody-mam
# (archiving in SQLite); default: all.
# Environment: RATES_EJABBERD, RATES_EJABBERD_MAM, RATES_EJABBERD_MAM_MNESIA,
# RATES_PROSODY, RATES_PROSODY_MAM (or RATES for all), PAIRS (500), DURATION (12),
# WARMUP (2), DRAIN (3), STANZA_BYTES (140), RECEIPTS=1, EXTRA_ARGS (more
# parley-xmpp-bench flags), OUT_DIR (default build/release/bench-results/peers),
# NICE (-19: the autogroup nice of the server and the driver, see below), SKIP_BUILD=1 with
# BIN_DIR=..., NO_INSTALL=1 (fail instead of apt-get install).
#
# This script (and nothing else in the project) installs ejabberd, prosody
# and their SQLite drivers (erlang-p1-sqlite3, lua-dbi-sqlite3) with apt-get
# if they are missing. It needs root (apt-get, setpriv). Benchmarks are not
# tests: the test command never runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

runs=("$@")
[ ${#runs[@]} -gt 0 ] || runs=(ejabberd ejabberd-mam ejabberd-mam-mnesia prosody prosody-mam)
for r in "${runs[@]}"; do
  case "$r" in ejabberd|ejabberd-mam|ejabberd-mam-mnesia|prosody|prosody-mam) ;; *) echo "bench_peers: unknown run '$r'" >&2; exit 2 ;; esac
done
PAIRS=${PAIRS:-500}
DURATION=${DURATION:-12}
WARMUP=${WARMUP:-2}
DRAIN=${DRAIN:-3}
STANZA_BYTES=${STANZA_BYTES:-140}
OUT_DIR=${OUT_DIR:-$root/build/release/bench-results/peers}
mkdir -p "$OUT_DIR"
rm -f "$OUT_DIR/fsync.txt"

[ "$(id -u)" = 0 ] || { echo "bench_peers: needs root (apt-get, setpriv to the servers' users)" >&2; exit 2; }

# 2 * PAIRS connections on each side, plus the servers' own files: the soft
# limit is often 1024, which the servers and the driver inherit.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# --- packages ---------------------------------------------------------------
need=()
for p in ejabberd erlang-p1-sqlite3 prosody lua-dbi-sqlite3; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  [ "${NO_INSTALL:-0}" != 1 ] || { echo "bench_peers: missing packages: ${need[*]}" >&2; exit 2; }
  echo "bench_peers: installing ${need[*]}"
  apt-get update -qq
  # Debian's policy-rc.d may refuse to start the services; we start our own instances.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# The packaged services must not hold the ports or the Erlang node name.
for svc in ejabberd prosody; do
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
    echo "bench_peers: the system $svc service is running; stop it first (systemctl stop $svc)" >&2; exit 2
  fi
done

# --- the load driver ---------------------------------------------------------
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  scripts/build.sh release parley-xmpp-bench
fi
bin=${BIN_DIR:-$root/build/release/bin}
[ -x "$bin/parley-xmpp-bench" ] || { echo "bench_peers: $bin/parley-xmpp-bench is missing" >&2; exit 2; }

# Priority. This kernel groups tasks by session (autogroup scheduling,
# /proc/sys/kernel/sched_autogroup_enabled): a plain `nice` only ranks tasks
# within one session, and each session gets an equal share of a core. On a
# machine shared with builds, a server at the default priority gets a
# fraction of its core and the figures measure the scheduler, not the server.
# So the server and the driver each run in their own session whose autogroup
# nice is $NICE (default -19); NICE=0 turns this off.
NICE=${NICE:--19}
set_autogroup_nice() {  # set_autogroup_nice PID
  if [ -w "/proc/$1/autogroup" ]; then echo "$NICE" >"/proc/$1/autogroup" 2>/dev/null || true; fi
}
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
  pin_server=(taskset -c 0); pin_bench=(taskset -c 1)
else
  echo "bench_peers: taskset or a second CPU missing: running unpinned" >&2
  pin_server=(); pin_bench=()
fi
# The driver: a new session (setsid), its autogroup niced, then exec'd.
run_bench() {
  # shellcheck disable=SC2016  # $0 and $@ are the inner shell's
  setsid -w bash -c 'echo "$0" >/proc/self/autogroup 2>/dev/null || true; exec "$@"' "$NICE" "${pin_bench[@]}" "$@"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() {  # wait_port PORT SECONDS
  local _
  for _ in $(seq $(($2 * 10))); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}
live_epmd() {  # pids of running epmd (not zombies, which pgrep also lists)
  { ps -C epmd -o pid=,stat= 2>/dev/null || true; } | awk '$2 !~ /Z/ {print $1}' | tail -1
}
render() {  # render TEMPLATE WORK PORT
  sed -e "s|@WORK@|$2|g" -e "s|@PORT@|$3|g" "$1"
}

work=""
server_pid=""
stop_cmd=()
cleanup() {
  # A server whose start failed half-way (inside $(start_...)) left only its pid file.
  if [ -z "$server_pid" ] && [ -n "$work" ]; then
    server_pid=$(cat "$work/run/ejabberd.pid" "$work/prosody.pid" 2>/dev/null | head -1 || true)
  fi
  if [ ${#stop_cmd[@]} -gt 0 ]; then "${stop_cmd[@]}" >/dev/null 2>&1 || true; fi
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server_pid" 2>/dev/null || true
  fi
  # ejabberdctl start leaves an epmd (Erlang's port mapper) behind: stop the one our node started.
  if [ -n "${epmd_pid:-}" ]; then kill -TERM "$epmd_pid" 2>/dev/null || true; fi
  server_pid=""; stop_cmd=(); epmd_pid=""
  [ -n "$work" ] && rm -rf "$work"
  work=""
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_ejabberd() {  # start_ejabberd MAM (none, sql, mnesia)
  local port ej
  port=$(free_port)
  mkdir -p "$work"/{spool,logs,run}
  render bench/peers/ejabberd.yml.in "$work" "$port" >"$work/ejabberd.yml"
  case "$1" in
    sql)    render bench/peers/ejabberd-mam.yml.in "$work" "$port" >>"$work/ejabberd.yml" ;;
    mnesia) render bench/peers/ejabberd-mam-mnesia.yml.in "$work" "$port" >>"$work/ejabberd.yml" ;;
  esac
  render bench/peers/ejabberdctl.cfg.in "$work" "$port" >"$work/ejabberdctl.cfg"
  chown -R ejabberd:ejabberd "$work"
  ej=(ejabberdctl --config "$work/ejabberd.yml" --ctl-config "$work/ejabberdctl.cfg" --logs "$work/logs" --spool "$work/spool")
  HOME=/var/lib/ejabberd "${pin_server[@]}" setpriv --reuid ejabberd --regid ejabberd --init-groups "${ej[@]}" start >&2
  for _ in $(seq 300); do [ -s "$work/run/ejabberd.pid" ] && break; sleep 0.1; done
  server_pid=$(cat "$work/run/ejabberd.pid" 2>/dev/null || true)
  [ -n "$server_pid" ] || { echo "bench_peers: ejabberd wrote no pid file" >&2; tail -20 "$work/logs/"*.log >&2 || true; return 1; }
  wait_port "$port" 60 || { echo "bench_peers: ejabberd did not listen on $port" >&2; tail -20 "$work/logs/"*.log >&2 || true; return 1; }
  echo "$port"
}

start_prosody() {  # start_prosody WITH_MAM
  local port cfg="$work/prosody.cfg.lua" extra=""
  port=$(free_port)
  mkdir -p "$work/data"
  [ "$1" = 1 ] && extra='; "mam"'
  render bench/peers/prosody.cfg.lua.in "$work" "$port" | sed -e "s|@EXTRA_MODULES@|$extra|" >"$cfg"
  [ "$1" = 1 ] && render bench/peers/prosody-mam.cfg.lua.in "$work" "$port" >>"$cfg"
  printf '\nVirtualHost "localhost"\n' >>"$cfg"
  chown -R prosody:prosody "$work"
  (cd "$work" && exec setsid "${pin_server[@]}" setpriv --reuid prosody --regid prosody --init-groups \
    prosody --config "$cfg" -F >"$work/prosody.out" 2>&1) &
  server_pid=$!
  wait_port "$port" 30 || { echo "bench_peers: prosody did not listen on $port" >&2; cat "$work/prosody.out" "$work/prosody.log" >&2 2>/dev/null || true; return 1; }
  # The subshell exec'd into setsid/taskset/setpriv/prosody: $! is prosody's pid.
  echo "$port"
}

status=0
summary=()
for r in "${runs[@]}"; do
  work=$(mktemp -d "${TMPDIR:-/tmp}/parley-bench-peers.XXXXXX")
  chmod 755 "$work"
  epmd_before=$(live_epmd)
  case "$r" in
    ejabberd)     port=$(start_ejabberd none) || { status=1; cleanup; continue; }; rates=${RATES_EJABBERD:-${RATES:-1000,5000,10000,12500,15000}} ;;
    ejabberd-mam) port=$(start_ejabberd sql) || { status=1; cleanup; continue; }; rates=${RATES_EJABBERD_MAM:-${RATES:-25,50,100,200}} ;;
    ejabberd-mam-mnesia) port=$(start_ejabberd mnesia) || { status=1; cleanup; continue; }; rates=${RATES_EJABBERD_MAM_MNESIA:-${RATES:-500,1000,1500,2000}} ;;
    prosody)      port=$(start_prosody 0) || { status=1; cleanup; continue; }; rates=${RATES_PROSODY:-${RATES:-1000,2000,3000,4000,5000}} ;;
    prosody-mam)  port=$(start_prosody 1) || { status=1; cleanup; continue; }; rates=${RATES_PROSODY_MAM:-${RATES:-25,50,100,200}} ;;
  esac
  # start_* ran in a subshell ($(...)): read the pid again here.
  case "$r" in
    ejabberd*) server_pid=$(cat "$work/run/ejabberd.pid")
               ej=(ejabberdctl --config "$work/ejabberd.yml" --ctl-config "$work/ejabberdctl.cfg" --logs "$work/logs" --spool "$work/spool")
               stop_cmd=(env HOME=/var/lib/ejabberd setpriv --reuid ejabberd --regid ejabberd --init-groups "${ej[@]}" stop) ;;
    prosody*)  server_pid=$(cat "$work/prosody.pid" 2>/dev/null || pgrep -n -u prosody -x lua5.4 || pgrep -n -u prosody prosody) ;;
  esac
  [ -z "$epmd_before" ] && epmd_pid=$(live_epmd)
  set_autogroup_nice "$server_pid"
  # The archiving runs commit to SQLite: what an fsync costs right now on this
  # disk (shared with other work) is part of the result.
  fsync_ms=$(python3 - "$work" <<'PY'
import os, sys, time
path = os.path.join(sys.argv[1], "fsync-probe")
fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
ts = []
for _ in range(30):
    os.write(fd, b"x" * 4096); t = time.monotonic(); os.fsync(fd); ts.append(time.monotonic() - t)
os.close(fd); os.unlink(path); ts.sort()
print(f"{ts[15] * 1e3:.2f}")
PY
)
  echo "== $r: port $port, server pid $server_pid, rates $rates, fsync p50 ${fsync_ms} ms"
  echo "$r: fsync p50 ${fsync_ms} ms (4 KiB append + fsync in the run's directory, just before the run)" >>"$OUT_DIR/fsync.txt"
  json="$OUT_DIR/$r.json"
  args=(--port "$port" --pairs "$PAIRS" --rates "$rates" --duration "$DURATION" --warmup "$WARMUP" --drain "$DRAIN"
        --stanza-bytes "$STANZA_BYTES" --server-pid "$server_pid" --label "$r" --register --json "$json")
  [ "${RECEIPTS:-0}" = 1 ] && args+=(--receipts)
  # shellcheck disable=SC2086  # EXTRA_ARGS is a list of flags
  if ! run_bench "$bin/parley-xmpp-bench" "${args[@]}" ${EXTRA_ARGS:-}; then
    echo "bench_peers: $r: parley-xmpp-bench failed" >&2; status=1
  fi
  if ! kill -0 "$server_pid" 2>/dev/null; then echo "bench_peers: $r: the server died during the run" >&2; status=1; fi
  summary+=("$json")
  cleanup
done

# --- the table ----------------------------------------------------------------
python3 - "$OUT_DIR/results.md" "${summary[@]}" <<'EOF'
import json, sys, os
out = sys.argv[1]
rows = ["| server | offered msg/s | delivered msg/s | lost | p50 ms | p99 ms | p999 ms | server CPU % | server RSS MB | driver CPU % | ok |",
        "|---|---|---|---|---|---|---|---|---|---|---|"]
sat = []
for path in sys.argv[2:]:
    if not os.path.exists(path):
        continue
    d = json.load(open(path))
    for p in d.get("points", []):
        l = p["latency_ms"]
        cpu = "" if p["server_cpu_percent"] is None else f'{p["server_cpu_percent"]:.0f}'
        rss = "" if p["server_rss_mb"] is None else f'{p["server_rss_mb"]:.0f}'
        rows.append(f'| {d["label"]} | {p["offered_per_s"]:,.0f} | {p["delivered_per_s"]:,.0f} | {p["lost"]} | {l["p50"]:.2f} | {l["p99"]:.2f} | {l["p999"]:.2f} | {cpu} | {rss} | {p["gen_cpu_percent"]:.0f} | {"yes" if p["ok"] else "no"} |')
    sat.append(f'- {d["label"]}: saturation {d.get("saturation_per_s", 0):,.0f} msgs/s (delivered == offered, p99 <= {d["p99_limit_ms"]:.0f} ms)')
text = "\n".join(rows) + "\n\n" + "\n".join(sat) + "\n"
fs = os.path.join(os.path.dirname(out), "fsync.txt")
if os.path.exists(fs):
    text += "\n" + "".join("- " + l for l in open(fs).readlines())
open(out, "w").write(text)
print(text)
EOF
echo "bench_peers: results in $OUT_DIR"
exit "$status"
