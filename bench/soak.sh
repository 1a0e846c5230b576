#!/usr/bin/env bash
# ./isorun bench soak [--minutes N] [--workers W] [--kill_every_sec S] [--seed X]: mixed load on
# real runc sandboxes through the public API and the public-URL proxy (creates, execs, streams,
# proxied HTTP, hibernate/resume, deletes) while a random service (quota, scheduler, lifecycle,
# gateway or the runner) is killed with SIGKILL every minute and started again; then everything
# is deleted and what is left behind is counted once the cluster settles (see
# bench/soak_load.cc). Prints requests=, errors_<status>=, kills=, leak_<kind>= and leaks=, one
# key=value a line; exits non-zero when anything leaked or an answer was wrong. Needs root, runc
# and the image tools.
set -euo pipefail
: "${ISORUN_REPO:?run through ./isorun bench soak}"
# shellcheck source=scripts/pg.sh
source "$ISORUN_REPO/scripts/pg.sh"
# shellcheck source=scripts/registry.sh
source "$ISORUN_REPO/scripts/registry.sh"

args=()
while (($#)); do
  case "$1" in
    --minutes) args+=("--minutes=$2"); shift 2 ;;
    --workers) args+=("--workers=$2"); shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done

is_root || die "bench soak runs real sandboxes: run it as root"
command -v runc >/dev/null || die "bench soak needs runc (./isorun deps)"
registry_check_tools

tmp="$(mktemp -d -t isorun-bench-soak.XXXXXX)"
chmod 0755 "$tmp"
cleanup() {
  registry_stop "$tmp/registry" || true
  pg_stop
  rm -rf "$tmp"
}
trap cleanup EXIT
pg_throwaway "$tmp"

export ISORUN_TEST_IMAGES_DIR="${ISORUN_TEST_IMAGES_DIR:-/tmp/isorun-test-images}"
registry="$(registry_start "$tmp/registry" "$(pick_free_port)")"
"$ISORUN_BIN_DIR/isorun-soak-load" --registry="$registry" "${args[@]}"
