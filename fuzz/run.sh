#!/usr/bin/env bash
# Coverage-guided fuzzing with AFL++ through cargo-afl, on the stable toolchain.
#
#   fuzz/run.sh TARGET SECONDS     one target (exposition, spec, request, reference)
#   fuzz/run.sh all SECONDS        every target for SECONDS, several at once
#
# With MODELDEPLOY_FUZZ_KEEP=1, a target that found nothing has what it
# learnt kept: its queue and the committed corpus, minimised together by
# afl-cmin, become fuzz/corpus/TARGET (the hand-written seeds keep their
# names; inputs the fuzzer made are named found-<sha1 prefix>).
#
# Builds the targets with `cargo afl build --release`, then runs `cargo afl
# fuzz` from the committed corpus (fuzz/corpus/TARGET) with the target's
# dictionary for SECONDS of fuzzing, and prints one line of statistics per
# target. Targets run side by side, MODELDEPLOY_FUZZ_JOBS at a time (default:
# one per CPU). Findings land in fuzz/out/TARGET/default/{crashes,hangs}; the
# script names each one and exits 1 when there are any. Keep each one with a
# name saying what it is in fuzz/regressions/TARGET/ with its fix; `cargo
# test --test fuzz_regressions` replays them without AFL.
#
# The build goes to CARGO_TARGET_DIR when set (CI keeps it in its cache, so
# only the first run on a machine pays for the instrumented dependencies).
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
jobs=${MODELDEPLOY_FUZZ_JOBS:-$(nproc)}
[[ $jobs =~ ^[0-9]+$ && $jobs -gt 0 ]] || {
  echo "fuzz: MODELDEPLOY_FUZZ_JOBS must be a whole number above 0, not '$jobs'" >&2
  exit 2
}

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
# Naming the host as the target keeps cargo-afl's RUSTFLAGS (instrumentation,
# opt-level 3, one codegen unit) to the code the targets run: build scripts
# and proc macros are then built plainly, as for any release build.
host=$(rustc -vV | sed -n 's/^host: //p')
cargo afl build --release --locked --bins --target "$host"
bin_dir=${CARGO_TARGET_DIR:-target}/$host/release
# How to name a binary from the repository root.
shown_bin_dir=$bin_dir
[[ $bin_dir == /* ]] || shown_bin_dir=fuzz/$bin_dir

# Unattended on a shared machine: no screen UI, no core pinning, no CPU
# governor or core-dump checks. A run stalled by a loaded machine is not a
# hang: one is kept only if it still runs after 10 s.
export AFL_NO_UI=1 AFL_NO_AFFINITY=1 AFL_SKIP_CPUFREQ=1
export AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export AFL_HANG_TMOUT=${AFL_HANG_TMOUT:-10000}

# Fuzzes one target; afl-fuzz's output goes to out/TARGET.log, its exit
# status to out/TARGET.status.
fuzz_one() {
  local target=$1 status=0
  rm -rf "out/$target"
  cargo afl fuzz -i "corpus/$target" -o "out/$target" -x "dict/$target.dict" \
    -V "$seconds" -- "$bin_dir/$target" >"out/$target.log" 2>&1 || status=$?
  echo "$status" >"out/$target.status"
}

stat() { sed -n "s/^$1 *: //p" "$2"; }

# Prints a target's line and its findings; fails when it has any.
report() {
  local target=$1 stats=out/$1/default/fuzzer_stats crashes hangs
  if [[ $(cat "out/$target.status" 2>/dev/null) != 0 || ! -f $stats ]]; then
    tail -n 30 "out/$target.log" >&2
    echo "fuzz: $target: afl-fuzz failed (fuzz/out/$target.log)" >&2
    return 1
  fi
  crashes=$(stat saved_crashes "$stats")
  hangs=$(stat saved_hangs "$stats")
  printf 'fuzz: %s: %ss, %s execs (%s/s), corpus %s, edges %s, crashes %s, hangs %s\n' \
    "$target" "$(stat run_time "$stats")" "$(stat execs_done "$stats")" \
    "$(stat execs_per_sec "$stats")" "$(stat corpus_count "$stats")" \
    "$(stat bitmap_cvg "$stats")" "$crashes" "$hangs"
  [[ $crashes == 0 && $hangs == 0 ]] && return 0
  local finding
  for finding in "out/$target"/default/{crashes,hangs}/id:*; do
    [[ -e $finding ]] || continue
    echo "  finding: fuzz/$finding"
    # The log may outlive the machine: the input, to recreate it with `base64 -d`.
    echo "    base64: $(head -c 4096 "$finding" | base64 -w0)"
  done
  echo "  replay: $shown_bin_dir/$target < FINDING; keep it, named for what it is," \
    "in fuzz/regressions/$target/ with its fix (cargo test --test fuzz_regressions replays it)"
  return 1
}

# Replaces corpus/TARGET with the smallest set of the committed corpus and
# the last run's queue that covers what both cover.
keep_corpus() {
  local target=$1 all=out/$target/keep-in min=out/$target/keep-min file name
  rm -rf "$all" "$min"
  mkdir -p "$all"
  cp "corpus/$target"/* "$all"/
  for file in "out/$target"/default/queue/id:*; do
    [[ -f $file ]] || continue
    name=found-$(sha1sum "$file" | cut -c1-12)
    [[ -e $all/$name ]] || cp "$file" "$all/$name"
  done
  # The shell afl-cmin that cargo-afl built with AFL++: its Python
  # successor found no coverage at all for the request and reference
  # targets. -e: edges only, not hit counts, for a small corpus.
  local cmin
  cmin=$(find "${XDG_DATA_HOME:-$HOME/.local/share}/afl.rs" -name afl-cmin.bash -path '*/bin/*' 2>/dev/null | head -n 1)
  [[ -n $cmin ]] || { echo "fuzz: afl-cmin.bash not found under afl.rs's data folder" >&2; return 1; }
  PATH="$(dirname "$cmin"):$PATH" AFL_NO_UI=1 "$cmin" -e -i "$all" -o "$min" -- "$bin_dir/$target" >"out/$target.cmin.log" 2>&1 || {
    tail -n 20 "out/$target.cmin.log" >&2
    echo "fuzz: $target: afl-cmin failed (fuzz/out/$target.cmin.log)" >&2
    return 1
  }
  # Seeds are documented by name: they stay even where others cover them.
  for file in "corpus/$target"/*; do
    cp -n "$file" "$min"/
  done
  rm -rf "corpus/$target"
  mv "$min" "corpus/$target"
  echo "fuzz: $target: corpus kept, $(ls "corpus/$target" | wc -l) inputs"
}

mkdir -p out
running=0
for target in "${selected[@]}"; do
  if ((running >= jobs)); then
    wait -n || true
    running=$((running - 1))
  fi
  fuzz_one "$target" &
  running=$((running + 1))
done
wait || true

failed=0
for target in "${selected[@]}"; do
  if report "$target"; then
    [[ ${MODELDEPLOY_FUZZ_KEEP:-} == 1 ]] && { keep_corpus "$target" || failed=1; }
  else
    failed=1
  fi
done
exit "$failed"
