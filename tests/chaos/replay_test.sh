#!/usr/bin/env bash
# A saved chaos run replays (docs/checker.md, "Chaos runs"): a short run with
# --keep is saved with its plan; --replay of the saved directory plays the
# same plan (the replay saves an identical plan.json) and passes; the saved
# histories and state re-check offline with parley-check --state.
# Usage: replay_test.sh PARLEY_CHAOS PARLEYD PARLEY_CHECK
set -euo pipefail
chaos=$1 parleyd=$2 check=$3
out=$(mktemp -d /tmp/parley-chaos-replay-XXXXXX)
trap 'rm -rf "$out"' EXIT
"$chaos" --parleyd "$parleyd" --checker "$check" --duration-s 4 --users 3 --devices 1 --seed 4242 --keep --out "$out/first"
first=$(ls -d "$out"/first/seed-4242-*)
"$chaos" --parleyd "$parleyd" --checker "$check" --replay "$first" --keep --out "$out/again"
again=$(ls -d "$out"/again/seed-4242-*)
cmp "$first/plan.json" "$again/plan.json"
grep -q '"op"' "$first/driver.log"
# The plan of seed 4242 holds a raw double send (the same client id sent
# twice at once, then again after a reconnect).
grep -q '"raw_double"' "$first/plan.json"
ls "$first"/histories/*.jsonl >/dev/null
"$check" --histories "$first/histories" --state "$first/state.json"
# A plan that does not parse is refused with exit 2 and a message naming it.
mkdir -p "$out/bad" && echo '{"version": 99}' > "$out/bad/plan.json"
set +e
msg=$("$chaos" --parleyd "$parleyd" --checker "$check" --replay "$out/bad" 2>&1)
rc=$?
set -e
[ "$rc" = 2 ] || { echo "bad plan: exit $rc, expected 2"; exit 1; }
echo "$msg" | grep -q "plan.json" || { echo "bad plan: message does not name the file: $msg"; exit 1; }
echo "replay OK"
