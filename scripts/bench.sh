# shellcheck shell=bash
# `./isorun bench NAME [ARGS]`: runs bench/NAME.sh or build/bin/isorun-bench-NAME. Sourced by ./isorun.

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=scripts/build.sh
source "$(dirname "${BASH_SOURCE[0]}")/build.sh"

# Prints the available benchmark names, one a line.
bench_names() {
  local f
  {
    for f in "$ISORUN_REPO"/bench/*.sh; do
      [[ -e "$f" ]] && basename "$f" .sh
    done
    for f in "$ISORUN_BIN_DIR"/isorun-bench-*; do
      [[ -x "$f" ]] && basename "$f" | sed 's/^isorun-bench-//'
    done
  } | sort -u
}

run_bench() {
  local name="${1:-}"
  [[ $# -gt 0 ]] && shift
  build_all
  export ISORUN_REPO ISORUN_BUILD_DIR ISORUN_BIN_DIR
  if [[ -n "$name" && "$name" != */* ]]; then
    if [[ -f "$ISORUN_REPO/bench/$name.sh" ]]; then
      exec bash "$ISORUN_REPO/bench/$name.sh" "$@"
    elif [[ -x "$ISORUN_BIN_DIR/isorun-bench-$name" ]]; then
      exec "$ISORUN_BIN_DIR/isorun-bench-$name" "$@"
    fi
    log "unknown benchmark: $name"
  fi
  local names=()
  mapfile -t names < <(bench_names)
  {
    echo "Usage: ./isorun bench NAME [ARGS...]"
    echo "Available benchmarks:"
    if ((${#names[@]})); then printf '  %s\n' "${names[@]}"; else echo "  (none yet)"; fi
  } >&2
  exit 2
}
