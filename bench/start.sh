#!/usr/bin/env bash
# ./isorun bench start [--warm N] [--cold N] [--execs N]: sandbox start and exec latency with
# real runc sandboxes, through the public HTTP API, one client:
#   warm_start_*  POST /v1/sandboxes of busybox:1.36 (cached on the runner) until the answer to
#                 its first exec (`true`) has arrived
#   cold_start_*  the same for images no runner has cached: before the run this script pushes N
#                 images (default 5), each busybox plus one tiny layer of its own, so each is a
#                 fresh manifest digest the runner must pull and unpack (the busybox layer blob
#                 itself is shared, as between real images of one base)
#   exec_*        round trips of `true` in one running sandbox
# and the machine's own floor in the same run: runc_exec_ms (`runc exec` of `true` in that
# sandbox, timed directly), runc_run_ms (`runc run -d` of the same image, as the runner timed it
# for each warm start), host_fork_exec_ms (fork+exec of `true` on the host), with the load
# average before and after. pool_start_* is not printed: runners keep no pools yet.
# against a throwaway cluster (PostgreSQL, quota, scheduler, lifecycle, gateway, one runc runner)
# and a local registry. Needs root, runc, skopeo, umoci, docker-registry and busybox-static.
# Prints warm_start_p50_ms, warm_start_p99_ms, cold_start_p50_ms, exec_p50_ms, exec_p99_ms (and
# the create/first-exec split of the warm start), one key=value a line; before them
# breakdown_<step>_p50_ms: 20 more warm starts with each step timed on its own, every service
# called directly as the lifecycle calls it (quota admit, scheduler place, runner start and exec,
# runc exec on the host, lifecycle create and exec without the gateway, runc run and bundle times
# from the runner's log); --breakdown=0 skips them.
set -euo pipefail
: "${ISORUN_REPO:?run through ./isorun bench start}"
# shellcheck source=scripts/pg.sh
source "$ISORUN_REPO/scripts/pg.sh"
# shellcheck source=scripts/registry.sh
source "$ISORUN_REPO/scripts/registry.sh"

warm=40
cold=5
execs=200
args=()
while (($#)); do
  case "$1" in
    --warm) warm="$2"; shift 2 ;;
    --warm=*) warm="${1#*=}"; shift ;;
    --cold) cold="$2"; shift 2 ;;
    --cold=*) cold="${1#*=}"; shift ;;
    --execs) execs="$2"; shift 2 ;;
    --execs=*) execs="${1#*=}"; shift ;;
    *) args+=("$1"); shift ;;
  esac
done

is_root || die "bench start runs real sandboxes: run it as root"
command -v runc >/dev/null || die "bench start needs runc (apt-get install runc)"
registry_check_tools

tmp="$(mktemp -d -t isorun-bench-start.XXXXXX)"
chmod 0755 "$tmp"
cleanup() {
  registry_stop "$tmp/registry" || true
  pg_stop
  rm -rf "$tmp"
}
trap cleanup EXIT
pg_throwaway "$tmp"

# The test images are built once and shared with the test suites.
export ISORUN_TEST_IMAGES_DIR="${ISORUN_TEST_IMAGES_DIR:-/tmp/isorun-test-images}"
registry="$(registry_start "$tmp/registry" "$(pick_free_port)")"
cold_images=""
if ((cold > 0)); then
  log "pushing $cold images of fresh digests for the cold starts"
  cold_images="$(registry_push_unique "$tmp/registry" "$registry" cold "$cold" | paste -sd, -)"
fi

"$ISORUN_BIN_DIR/isorun-start-load" --registry="$registry" --cold_images="$cold_images" \
  --warm="$warm" --execs="$execs" "${args[@]}"
