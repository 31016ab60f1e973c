#!/usr/bin/env bash
# Builds Parley's libFuzzer targets (tests/fuzz, a small standalone clang 14
# tree in build/fuzz: protocol + UTF-8 code only, ASan + UBSan) and runs each
# one for FUZZ_SECONDS (default 20) on a copy of its seed corpus.
# Exits non-zero if any target crashes, leaks, times out or runs out of memory.
#
#   scripts/fuzz.sh                          # every target, 20 s each
#   FUZZ_SECONDS=3600 scripts/fuzz.sh        # longer fuzzing: one hour each
#   FUZZ_SECONDS=600 scripts/fuzz.sh utf8_fuzz   # only the named targets
#
# Environment: FUZZ_SECONDS (per target), FUZZ_KEEP_CORPUS=1 (grow
# build/fuzz/corpus/<target> across runs instead of restarting from the seeds),
# FUZZ_ARGS (extra libFuzzer flags, e.g. "-seed=1234" to repeat a run).
#
# When a target crashes, its input is kept as build/fuzz/crashes/<target>/crash-*
# (or leak-*, timeout-*, oom-*) and the script prints how to replay it:
#   build/fuzz/<target> build/fuzz/crashes/<target>/crash-<sha1>
# To turn a crash into a regression test:
#   1. add the input to the seed corpus, under a name that says what it is:
#        cp build/fuzz/crashes/<target>/crash-<sha1> tests/fuzz/corpus/<target>/<what-it-is>
#      (every later fuzz run starts by re-running it);
#   2. add a unit test under tests/protocol (frames_test.cc, encode_test.cc)
#      that feeds the same bytes to the function and states the expected
#      outcome, so the g++/ASan test suite (scripts/test.sh) catches it too;
#   3. fix src/, then check: build/fuzz/<target> <the input>  (exit 0).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD=$ROOT/build/fuzz
SECONDS_PER_TARGET=${FUZZ_SECONDS:-20}
ALL_TARGETS=(frame_decode_fuzz request_roundtrip_fuzz utf8_fuzz)
TARGETS=("$@")
((${#TARGETS[@]})) || TARGETS=("${ALL_TARGETS[@]}")
for t in "${TARGETS[@]}"; do
  [[ " ${ALL_TARGETS[*]} " == *" $t "* ]] || { echo "fuzz: unknown target '$t' (have: ${ALL_TARGETS[*]})" >&2; exit 2; }
done

# --- dependencies (installs only what is missing) ---------------------------
"$ROOT"/scripts/setup.sh clang-14 libclang-rt-14-dev >/dev/null

# --- configure and build ----------------------------------------------------
start=$(date +%s)
mkdir -p "$BUILD"
if [ ! -f "$BUILD/build.ninja" ]; then
  CC=clang-14 CXX=clang++-14 cmake -S tests/fuzz -B "$BUILD" -G Ninja \
    -DCMAKE_CXX_COMPILER=clang++-14 -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$BUILD/configure.log" 2>&1 ||
    { cat "$BUILD/configure.log" >&2; echo "fuzz: configure failed" >&2; exit 1; }
fi
ninja -C "$BUILD" "${TARGETS[@]}" >"$BUILD/build.log" 2>&1 ||
  { tail -n 60 "$BUILD/build.log" >&2; echo "fuzz: build failed (log: $BUILD/build.log)" >&2; exit 1; }
echo "fuzz: built ${TARGETS[*]} in $(($(date +%s) - start)) s"

# --- run --------------------------------------------------------------------
failed=()
for t in "${TARGETS[@]}"; do
  seeds=$ROOT/tests/fuzz/corpus/$t
  corpus=$BUILD/corpus/$t
  crashes=$BUILD/crashes/$t
  log=$BUILD/logs/$t.log
  [ -d "$seeds" ] || { echo "fuzz: no seed corpus $seeds" >&2; exit 1; }
  [ "${FUZZ_KEEP_CORPUS:-0}" = 1 ] || rm -rf "$corpus"
  mkdir -p "$corpus" "$crashes" "$(dirname "$log")"
  cp -n "$seeds"/* "$corpus"/ 2>/dev/null || true
  dict=()
  case $t in
    frame_decode_fuzz | request_roundtrip_fuzz) dict=(-dict="$ROOT/tests/fuzz/frames.dict") ;;
  esac
  rc=0
  # shellcheck disable=SC2086  # FUZZ_ARGS is a list of flags
  "$BUILD/$t" "$corpus" "${dict[@]}" -max_total_time="$SECONDS_PER_TARGET" -timeout=5 -rss_limit_mb=2048 \
    -artifact_prefix="$crashes/" -print_final_stats=1 ${FUZZ_ARGS:-} >"$log" 2>&1 || rc=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' "$log" | tail -1 || true)
  seed=$(sed -n 's/^INFO: Seed: //p' "$log" | head -1)
  if [ "$rc" -eq 0 ]; then
    echo "fuzz: $t: ok, ${runs:-?} runs in ${SECONDS_PER_TARGET} s (${speed:-?}/s), ${cov:-no stats}, seed ${seed:-?}"
  else
    failed+=("$t")
    echo "fuzz: $t: FAILED (exit $rc) after ${runs:-?} runs, seed ${seed:-?}; log: $log"
    # The report: from the sanitizer's or the CHECK's first line to the artifact.
    grep -E '^==[0-9]+==|CHECK failed|runtime error|ERROR: libFuzzer|^SUMMARY' "$log" | head -5 | sed 's/^/    /'
    # The first stack's frames outside libFuzzer, the sanitizers and libc.
    awk '/^ *#[0-9]+ /{f=1; print; next} f{exit}' "$log" |
      grep -vE 'fuzzer::|__sanitizer|__asan|__ubsan|libc\.so|nptl/|signal/|stdlib/abort|csu/|_start | in main ' | head -12 | sed 's/^ */      /'
    grep -oE "Test unit written to [^ ]+" "$log" | sed 's/^Test unit written to //' | while read -r a; do
      echo "    input: $a"
      echo "    replay: $BUILD/$t $a"
      echo "    (then: cp $a tests/fuzz/corpus/$t/<name> and add a test under tests/protocol)"
    done
  fi
done

if ((${#failed[@]})); then
  echo "fuzz: ${#failed[@]} of ${#TARGETS[@]} targets failed: ${failed[*]}"
  exit 1
fi
echo "fuzz: all ${#TARGETS[@]} targets passed (${SECONDS_PER_TARGET} s each)"
