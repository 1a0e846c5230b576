# shellcheck shell=bash
# Configures (once) and builds the tree with CMake and Ninja. Sourced by ./isorun.

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=scripts/deps.sh
source "$(dirname "${BASH_SOURCE[0]}")/deps.sh"

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
    log "configuring $b"
    cmake -S "$ISORUN_REPO" -B "$b" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo ||
      die "cmake configure failed"
  fi
  log "building $b"
  cmake --build "$b" -j2 || die "build failed"
  build_dashboard
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
