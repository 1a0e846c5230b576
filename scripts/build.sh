# shellcheck shell=bash
# Configures (once) and builds the tree with CMake and Ninja. Sourced by ./isorun.

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=scripts/deps.sh
source "$(dirname "${BASH_SOURCE[0]}")/deps.sh"

# The CMake options of a sanitizer build (ISORUN_SANITIZE=address or thread; see
# sanitize_mode in lib.sh), one a line; nothing for the regular build.
# -O1 -g1: what the sanitizers need for exact reports with line numbers, at a fraction of the
# compile time of -O2 -g (these trees are compiled from scratch whenever the flags change).
sanitize_cmake_flags() {
  case "${ISORUN_SANITIZE:-}" in
    "") ;;
    address)
      printf '%s\n' -DISORUN_SANITIZE=address,undefined \
        -DCMAKE_CXX_FLAGS=-fno-sanitize-recover=undefined \
        "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1 -DNDEBUG"
      ;;
    thread)
      printf '%s\n' -DISORUN_SANITIZE=thread "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1 -DNDEBUG"
      ;;
    *) die "unknown sanitizer mode '$ISORUN_SANITIZE' (address or thread)" ;;
  esac
}

build_all() {
  if [[ "${ISORUN_SKIP_BUILD:-0}" == 1 ]]; then
    log "ISORUN_SKIP_BUILD=1: using the binaries in $ISORUN_BIN_DIR as they are"
    return 0
  fi
  deps_install
  export CCACHE_BASEDIR="$ISORUN_REPO"
  # Debug builds would otherwise hash the build folder's path into every key: a second checkout
  # (a worktree, CI's fresh clone) would then miss the cache for every file.
  export CCACHE_NOHASHDIR=1
  export CCACHE_DIR="${CCACHE_DIR:-${HOME:-/root}/.cache/ccache}"
  local b="$ISORUN_BUILD_DIR"
  if [[ ! -f "$b/build.ninja" ]]; then
    if [[ -f "$b/CMakeCache.txt" ]] && ! grep -q '^CMAKE_GENERATOR:INTERNAL=Ninja$' "$b/CMakeCache.txt"; then
      die "$b was configured with another generator than Ninja; remove it (rm -rf $b) and build again"
    fi
    log "configuring $b${ISORUN_SANITIZE:+ (sanitizers: $ISORUN_SANITIZE)}"
    local flags=()
    mapfile -t flags < <(sanitize_cmake_flags)
    cmake -S "$ISORUN_REPO" -B "$b" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "${flags[@]}" ||
      die "cmake configure failed"
  fi
  log "building $b"
  # The ThreadSanitizer tree builds only the concurrency tests (and what they link); the
  # sanitizer trees need no dashboard (no browser test runs there).
  local targets=()
  [[ "${ISORUN_SANITIZE:-}" == thread ]] && targets=(--target tsan_tests)
  cmake --build "$b" -j2 "${targets[@]}" || die "build failed"
  [[ -n "${ISORUN_SANITIZE:-}" ]] || build_dashboard
}

# The web dashboard (dashboard/): npm ci from its lock file, then type-check and bundle into
# $ISORUN_BUILD_DIR/dashboard, which the gateway serves. Without node or the npm registry the
# gateway serves no dashboard and the browser tests skip, saying so; nothing else depends on it.
build_dashboard() {
  local src="$ISORUN_REPO/dashboard" out="$ISORUN_BUILD_DIR/dashboard"
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    warn "node or npm not found: the dashboard is not built"
    return 0
  fi
  # npm ci only when the lock file changed since the last install.
  local stamp="$src/node_modules/.isorun-lock"
  if [[ ! -f "$stamp" ]] || ! cmp -s "$src/package-lock.json" "$stamp"; then
    log "installing the dashboard's packages (npm ci)"
    if ! (cd "$src" && npm ci --no-audit --no-fund --loglevel=error >/dev/null); then
      warn "npm ci failed in dashboard/: the dashboard is not built"
      return 0
    fi
    cp -f "$src/package-lock.json" "$stamp"
  fi
  (cd "$src" && npx --no-install tsc --noEmit -p . && node build.mjs "$out" >/dev/null) ||
    die "the dashboard does not build (dashboard/: tsc and build.mjs)"
}
