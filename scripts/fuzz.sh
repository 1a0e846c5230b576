# shellcheck shell=bash
# `./isorun fuzz`: builds the fuzz targets with clang and libFuzzer (AddressSanitizer and
# UndefinedBehaviorSanitizer) in their own build folder and runs them. Sourced by ./isorun.
#   ./isorun fuzz --list                  target names, one a line
#   ./isorun fuzz NAME [--seconds N]      one target for N seconds (default 60)
#   ./isorun fuzz --all [--seconds N]     every target, N seconds each
#   --runs N [--seed S]                   instead of a time: exactly N inputs from seed S (1),
#                                         reproducible; what ./isorun test runs (fuzz_smoke)
# Each run starts from the committed seed corpus (fuzz/corpus/NAME) plus what earlier runs
# found (build-fuzz/corpus/NAME), and prints key=value lines: fuzz_target, execs, execs_per_sec,
# corpus, crashes. A crash or leak leaves its input in build-fuzz/findings/NAME and fails.

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=scripts/deps.sh
source "$(dirname "${BASH_SOURCE[0]}")/deps.sh"

FUZZ_BUILD_DIR="${ISORUN_FUZZ_BUILD_DIR:-$ISORUN_REPO/build-fuzz}"

fuzz_targets() {
  sed -n 's/^set(ISORUN_FUZZ_TARGETS \(.*\))$/\1/p' "$ISORUN_REPO/fuzz/CMakeLists.txt" | tr ' ' '\n'
}

fuzz_build() {
  deps_install
  command -v clang++-14 >/dev/null 2>&1 || die "clang++-14 not found (Debian package clang-14)"
  export CCACHE_BASEDIR="$ISORUN_REPO" CCACHE_NOHASHDIR=1
  export CCACHE_DIR="${CCACHE_DIR:-${HOME:-/root}/.cache/ccache}"
  if [[ ! -f "$FUZZ_BUILD_DIR/build.ninja" ]]; then
    log "configuring $FUZZ_BUILD_DIR (clang, libFuzzer, address and undefined sanitizers)"
    CC=clang-14 CXX=clang++-14 cmake -S "$ISORUN_REPO" -B "$FUZZ_BUILD_DIR" -G Ninja \
      -DCMAKE_BUILD_TYPE=RelWithDebInfo -DISORUN_FUZZ=ON -DISORUN_SANITIZE=address,undefined \
      -DCMAKE_CXX_FLAGS="-fno-sanitize-recover=undefined" >/dev/null ||
      die "cmake configure of $FUZZ_BUILD_DIR failed"
  fi
  log "building the fuzz targets in $FUZZ_BUILD_DIR"
  cmake --build "$FUZZ_BUILD_DIR" -j2 --target fuzz_all || die "fuzz build failed"
}

# fuzz_run NAME SECONDS RUNS SEED: prints the figures; returns non-zero on a finding. RUNS > 0
# runs exactly that many inputs from SEED (reproducible: a fresh checkout starts from the same
# seed corpus) instead of running for SECONDS.
fuzz_run() {
  local name="$1" seconds="$2" runs="$3" seed="$4"
  local bin="$FUZZ_BUILD_DIR/bin/fuzz_$name"
  [[ -x "$bin" ]] || die "unknown fuzz target '$name' (./isorun fuzz --list)"
  local corpus="$FUZZ_BUILD_DIR/corpus/$name" findings="$FUZZ_BUILD_DIR/findings/$name"
  local logfile="$FUZZ_BUILD_DIR/logs/$name.log"
  mkdir -p "$corpus" "$findings" "$(dirname "$logfile")"
  local status=0 budget=(-max_total_time="$seconds")
  ((runs > 0)) && budget=(-runs="$runs" -seed="$seed")
  # -detect_leaks stays on (LeakSanitizer); -rss_limit_mb bounds a target that hoards memory.
  local t0 t1
  t0="$(date +%s%N)"
  ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=0" \
    UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
    "$bin" "${budget[@]}" -rss_limit_mb=2048 -max_len=65536 -timeout=10 \
    -print_final_stats=1 -artifact_prefix="$findings/" \
    "$corpus" "$ISORUN_REPO/fuzz/corpus/$name" >"$logfile" 2>&1 || status=$?
  t1="$(date +%s%N)"
  local execs rate
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$logfile" | tail -1)"
  # libFuzzer's own rate divides by whole seconds (0 for a run under one); this one divides by
  # the run's wall time, start-up and corpus loading included.
  [[ -n "$execs" ]] && rate=$((execs * 1000000000 / (t1 - t0 > 0 ? t1 - t0 : 1)))
  local crashes
  crashes="$(find "$findings" -type f | wc -l)"
  if [[ -z "$execs" || -z "$rate" ]]; then
    warn "fuzz_$name printed no statistics; its log: $logfile"
    tail -30 "$logfile" >&2
    return 1
  fi
  printf 'fuzz_target=%s execs=%s execs_per_sec=%s corpus=%s crashes=%s\n' \
    "$name" "$execs" "$rate" "$(find "$corpus" -type f | wc -l)" "$crashes"
  if ((status != 0 || crashes > 0)); then
    warn "fuzz_$name found a problem (exit $status); inputs in $findings; its log: $logfile"
    grep -m1 -A25 'ERROR: \|check failed\|runtime error' "$logfile" >&2 || tail -30 "$logfile" >&2
    return 1
  fi
}

run_fuzz() {
  local seconds=60 runs=0 seed=1 all=0 names=()
  while (($#)); do
    case "$1" in
      --list) fuzz_targets; return 0 ;;
      --seconds) seconds="${2:?--seconds takes a number}"; shift ;;
      --runs) runs="${2:?--runs takes a number}"; shift ;;
      --seed) seed="${2:?--seed takes a number}"; shift ;;
      --all) all=1 ;;
      -*) die "unknown option $1 (./isorun fuzz --list | NAME [--seconds N] | --all [--seconds N])" ;;
      *) names+=("$1") ;;
    esac
    shift
  done
  [[ "$seconds" =~ ^[0-9]+$ && "$seconds" -gt 0 ]] || die "--seconds takes a whole number > 0"
  [[ "$runs" =~ ^[0-9]+$ ]] || die "--runs takes a whole number"
  [[ "$seed" =~ ^[0-9]+$ && "$seed" -gt 0 ]] || die "--seed takes a whole number > 0"
  if ((all)); then mapfile -t names < <(fuzz_targets); fi
  ((${#names[@]})) || die "name a target (./isorun fuzz --list) or --all"
  local known
  known="$(fuzz_targets)"
  local n
  for n in "${names[@]}"; do
    grep -qxF -- "$n" <<<"$known" || die "unknown fuzz target '$n' (./isorun fuzz --list)"
  done
  fuzz_build
  local failed=0
  for n in "${names[@]}"; do
    fuzz_run "$n" "$seconds" "$runs" "$seed" || failed=$((failed + 1))
  done
  ((failed == 0)) || die "$failed fuzz target(s) found problems"
}
