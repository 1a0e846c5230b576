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
}
