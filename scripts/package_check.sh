#!/usr/bin/env bash
# Package check (docs/operations.md, "Installing the package"): builds the
# .deb from the Release tree (cpack, dependencies from dpkg-shlibdeps),
# checks its metadata, unpacks it with `dpkg-deb -x` into a temporary
# directory, runs that tree's parleyd on a free port with a temporary data
# directory (its default web root must be the packaged web client), checks
# /healthz and the served web client, runs a scripted conversation between
# two users with the packaged `parley` CLI (register, login, contacts, send,
# history, ticks reaching read), and checks the packaged systemd unit with
# `systemd-analyze verify` (on a copy whose ExecStart points into the
# unpacked tree, which is where the binary exists on this machine).
# Exits non-zero on any failure. Run by scripts/test.sh in the Release phase.
#
#   scripts/package_check.sh          # builds what is missing in build/release
#   SKIP_BUILD=1 scripts/package_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
tree=$root/build/release

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  scripts/build.sh release  # everything the install rules name (parleyd, parley, parley-check, ...)
fi
# build.sh configures the tree only once; cpack needs the current install
# rules (a tree configured before they existed is re-configured here).
[ -f "$tree/CPackConfig.cmake" ] || cmake "$tree" >/dev/null

work=$(mktemp -d "${TMPDIR:-/tmp}/parley-package-check.XXXXXX")
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
fail() { echo "package_check: FAIL: $*" >&2; [ -f "$work/parleyd.log" ] && tail -20 "$work/parleyd.log" >&2; exit 1; }

# 1. The package.
(cd "$tree" && cpack -G DEB -B "$work/deb" >"$work/cpack.log" 2>&1) || { cat "$work/cpack.log" >&2; fail "cpack"; }
deb=$(ls "$work"/deb/parley_*.deb 2>/dev/null | head -1)
[ -n "$deb" ] || fail "cpack made no parley_*.deb"
echo "package_check: built $(basename "$deb") ($(( $(stat -c %s "$deb") / 1024 )) KiB) in ${SECONDS} s"
depends=$(dpkg-deb -f "$deb" Depends)
for lib in libsqlite3 libpq5 libsodium libzstd1 libjemalloc2; do
  [[ "$depends" == *"$lib"* ]] || fail "Depends lacks $lib: $depends"
done
dpkg-deb -I "$deb" conffiles | grep -qx /etc/parley/parleyd.toml || fail "parleyd.toml is not a conffile"
listing=$(dpkg-deb -c "$deb")
for f in ./usr/bin/parleyd ./usr/bin/parley ./usr/bin/parley-check ./usr/share/parley/web/index.html ./usr/lib/systemd/system/parleyd.service \
         ./etc/parley/parleyd.toml ./etc/parley/parleyd.env; do
  grep -q " $f\$" <<<"$listing" || fail "$f is not in the package"
done
grep -E ' \./etc/parley/parleyd\.env$' <<<"$listing" | grep -q '^-rw-------' || fail "parleyd.env is not mode 0600"

# 2. Unpacked: parleyd with its packaged defaults (web root from the binary's location).
dpkg-deb -x "$deb" "$work/root"
bin=$work/root/usr/bin
"$bin/parleyd" --listen 127.0.0.1:0 --port-file "$work/port" --data-dir "$work/data" --log-level info \
  >"$work/parleyd.out" 2>"$work/parleyd.log" &
server_pid=$!
for _ in $(seq 300); do [ -s "$work/port" ] && break; kill -0 "$server_pid" 2>/dev/null || fail "parleyd exited"; sleep 0.1; done
[ -s "$work/port" ] || fail "parleyd did not start listening"
port=$(cat "$work/port")
grep -q "web_root=$work/root/usr/share/parley/web" "$work/parleyd.log" || fail "parleyd did not pick the packaged web root"
health=$(curl -fsS --max-time 10 "http://127.0.0.1:$port/healthz") || fail "/healthz did not answer 200"
echo "package_check: /healthz: $health"
curl -fsS --max-time 10 "http://127.0.0.1:$port/" | grep -qi '<html' || fail "the web client is not served at /"

# 3. A scripted conversation with the packaged CLI.
cli() {  # cli USER ARGS...: the packaged parley as USER (own config directory), JSON output
  local u=$1; shift
  "$bin/parley" --config-dir "$work/cfg-$u" --server "127.0.0.1:$port" --timeout 10000 --json "$@"
}
field() { python3 -c "import json,sys; d=json.loads(sys.stdin.read().strip().splitlines()[-1]); print(eval(sys.argv[1], {}, {'d': d}))" "$1"; }
for u in alice bob; do
  cli "$u" register "$u" --password "correct horse $u" >/dev/null || fail "register $u"
  cli "$u" login "$u" --password "correct horse $u" >/dev/null || fail "login $u"
done
cli alice contacts add bob >/dev/null || fail "alice adds bob"
cli bob contacts add alice >/dev/null || fail "bob adds alice"
[ "$(cli alice send bob "hello bob" | field 'd["messages"][0]["status"]')" = sent ] || fail "alice's message was not sent"
[ "$(cli bob chats | field 'd["conversations"][0]["unread"]')" = 1 ] || fail "bob does not see one unread message"
[ "$(cli bob history alice | field 'd["messages"][0]["body"]')" = "hello bob" ] || fail "bob's history lacks the message"
cli bob send alice "hi alice" >/dev/null || fail "bob's reply"
hist=$(cli alice history bob)
[ "$(field 'd["messages"][0]["status"]' <<<"$hist")" = read ] || fail "alice's tick did not reach read: $hist"
[ "$(field 'd["messages"][1]["body"]' <<<"$hist")" = "hi alice" ] || fail "alice does not see bob's reply: $hist"
echo "package_check: scripted conversation ok (register, login, contacts, send, history, read ticks)"
kill -TERM "$server_pid"
status=0; wait "$server_pid" || status=$?
server_pid=""
[ "$status" = 0 ] || fail "parleyd exited $status on SIGTERM"

# 4. The systemd unit.
unit=$work/root/usr/lib/systemd/system/parleyd.service
grep -qx 'ExecStart=/usr/bin/parleyd --config /etc/parley/parleyd.toml' "$unit" || fail "unexpected ExecStart in the unit"
mkdir -p "$work/unit"
sed "s|/usr/bin/parleyd|$bin/parleyd|" "$unit" >"$work/unit/parleyd.service"
systemd-analyze verify "$work/unit/parleyd.service" >"$work/verify.log" 2>&1 || { cat "$work/verify.log" >&2; fail "systemd-analyze verify"; }
if [ -s "$work/verify.log" ]; then cat "$work/verify.log" >&2; fail "systemd-analyze verify printed warnings"; fi
echo "package_check: systemd-analyze verify: clean"
echo "package_check: ok (${SECONDS} s)"
