#!/usr/bin/env bash
# Coverage-guided fuzzing with AFL++ through cargo-afl, on the stable toolchain.
#
#   fuzz/run.sh TARGET SECONDS     one target (exposition, spec, request, reference)
#   fuzz/run.sh all SECONDS        each target in turn, SECONDS each
#
# Builds the targets with `cargo afl build --release`, then runs `cargo afl
# fuzz` from the committed corpus (fuzz/corpus/TARGET) with the target's
# dictionary for SECONDS of fuzzing, and prints one line of statistics per
# target. Findings land in fuzz/out/TARGET/default/{crashes,hangs}; the
# script exits 1 when there are any. Keep each one with a name saying what it
# is in fuzz/regressions/TARGET/ with its fix; `cargo test --test
# fuzz_regressions` replays them without AFL.
#
# Without cargo-afl the script skips with one line, or fails when
# MODELDEPLOY_REQUIRE_TOOLS=1. Install: `cargo install cargo-afl --locked`
# (it builds its own AFL++ on install).
set -euo pipefail
cd "$(dirname "$0")"

TARGETS=(exposition spec request reference)

usage() {
  local IFS='|'
  echo "usage: fuzz/run.sh {${TARGETS[*]}|all} SECONDS" >&2
  exit 2
}

[[ $# -eq 2 && $2 =~ ^[0-9]+$ && $2 -gt 0 ]] || usage
if [[ $1 == all ]]; then
  selected=("${TARGETS[@]}")
elif [[ " ${TARGETS[*]} " == *" $1 "* ]]; then
  selected=("$1")
else
  usage
fi
seconds=$2

missing() {
  if [[ ${MODELDEPLOY_REQUIRE_TOOLS:-} == 1 ]]; then
    echo "fuzz: FAILED, $1 (MODELDEPLOY_REQUIRE_TOOLS=1)" >&2
    exit 1
  fi
  echo "fuzz: skipped, $1"
  exit 0
}

cargo afl --version >/dev/null 2>&1 ||
  missing "cargo-afl is not installed (cargo install cargo-afl --locked)"
# `cargo afl fuzz` runs the AFL++ that cargo-afl built; `afl-fuzz -h` exits 1.
afl_help=$(cargo afl fuzz -h 2>&1 || true)
[[ $afl_help == *"-V seconds"* ]] ||
  missing "cargo afl has no afl-fuzz (cargo afl config --build)"

export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1}
cargo afl build --release --locked --bins

# A shared machine: no core pinning, no CPU governor or core-dump checks,
# no screen UI.
export AFL_NO_UI=1 AFL_NO_AFFINITY=1 AFL_SKIP_CPUFREQ=1
export AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1

stat() { sed -n "s/^$1 *: //p" "$2"; }

findings=0
for target in "${selected[@]}"; do
  out=out/$target
  rm -rf "$out"
  mkdir -p out
  log=$(mktemp)
  if ! cargo afl fuzz -i "corpus/$target" -o "$out" -x "dict/$target.dict" \
    -V "$seconds" -- "target/release/$target" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "fuzz: $target: afl-fuzz failed" >&2
    rm -f "$log"
    exit 1
  fi
  rm -f "$log"
  stats=$out/default/fuzzer_stats
  crashes=$(stat saved_crashes "$stats")
  hangs=$(stat saved_hangs "$stats")
  printf 'fuzz: %s: %ss, %s execs (%s/s), corpus %s, edges %s, crashes %s, hangs %s\n' \
    "$target" "$(stat run_time "$stats")" "$(stat execs_done "$stats")" \
    "$(stat execs_per_sec "$stats")" "$(stat corpus_count "$stats")" \
    "$(stat bitmap_cvg "$stats")" "$crashes" "$hangs"
  if [[ $crashes != 0 || $hangs != 0 ]]; then
    findings=1
    for finding in "$out"/default/crashes/id:* "$out"/default/hangs/id:*; do
      [[ -e $finding ]] && echo "  finding: fuzz/$finding"
    done
  fi
done
exit "$findings"
