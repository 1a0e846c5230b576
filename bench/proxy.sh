#!/usr/bin/env bash
# ./isorun bench proxy [--seconds S] [--connections N] [--threads T]: the public-URL proxy with a
# real sandbox. Small keep-alive GETs (Debian's wrk) to a server in the sandbox, three ways in one
# run: through the gateway's proxy, straight to the server from inside the sandbox's network
# namespace (the floor), and through Debian's nginx as a plain reverse proxy (see
# bench/proxy_load.cc for where each runs); then a 1 GiB download through the proxy and the time
# to first byte on a new port. Needs root, runc, the image tools, wrk and nginx.
# Prints proxy_rps, direct_rps, nginx_rps, proxy_ratio (to direct), proxy_vs_nginx, proxy_p50_ms,
# proxy_p99_ms, download_mib_per_sec, proxy_rss_mib (the gateway's peak RSS) and more, one
# key=value a line.
set -euo pipefail
: "${ISORUN_REPO:?run through ./isorun bench proxy}"
# shellcheck source=scripts/pg.sh
source "$ISORUN_REPO/scripts/pg.sh"
# shellcheck source=scripts/registry.sh
source "$ISORUN_REPO/scripts/registry.sh"

is_root || die "bench proxy runs real sandboxes: run it as root"
command -v runc >/dev/null || die "bench proxy needs runc (./isorun deps)"
command -v wrk >/dev/null || die "bench proxy needs wrk (./isorun deps)"
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || die "bench proxy needs nginx (./isorun deps)"
export PATH="$PATH:/usr/sbin"
registry_check_tools

tmp="$(mktemp -d -t isorun-bench-proxy.XXXXXX)"
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

"$ISORUN_BIN_DIR/isorun-proxy-load" --registry="$registry" \
  --server="$ISORUN_BIN_DIR/isorun-sandbox-http-server" "$@"
