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
# --tls: the same run twice, in plain text and then with mutual TLS on every connection of the
# cluster, the public-URL tunnel included (certificates made with openssl as ./isorun up does);
# every line of each run is prefixed plain_ or tls_, then what the tunnel's TLS costs:
# tls_cost_pct (proxied requests per second lost), tls_added_p50_ms, tls_download_cost_pct and
# tls_ttfb_new_port_added_ms (a new port needs a new tunnel, so a handshake).
set -euo pipefail
: "${ISORUN_REPO:?run through ./isorun bench proxy}"
# shellcheck source=scripts/pg.sh
source "$ISORUN_REPO/scripts/pg.sh"
# shellcheck source=scripts/registry.sh
source "$ISORUN_REPO/scripts/registry.sh"
# shellcheck source=scripts/cluster.sh
source "$ISORUN_REPO/scripts/cluster.sh"  # cluster_tls_certs, for --tls

tls=0
args=()
while (($#)); do
  case "$1" in
    --tls) tls=1; shift ;;
    *) args+=("$1"); shift ;;
  esac
done

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

run() {
  "$ISORUN_BIN_DIR/isorun-proxy-load" --registry="$registry" \
    --server="$ISORUN_BIN_DIR/isorun-sandbox-http-server" "${args[@]}" "$@"
}
if ((!tls)); then
  run
  exit
fi
# A failed run still prints what it measured; the script fails at the end.
status=0
plain_out="$(run)" || status=$?
CLUSTER_DATA="$tmp"
cluster_tls_certs
tls_out="$(run --tls_dir="$tmp/tls")" || status=$?
sed 's/^/plain_/' <<<"$plain_out"
sed 's/^/tls_/' <<<"$tls_out"
# Each figure the comparison needs was measured (a positive number) or the run fails.
val() {
  local v
  v="$(sed -n "s/^$1=//p" <<<"$2")"
  [[ "$v" =~ ^[0-9]+([.][0-9]+)?$ ]] && awk -v v="$v" 'BEGIN { exit !(v > 0) }' ||
    die "bench proxy: $1 was not measured (read '$v')"
  printf '%s' "$v"
}
# (assignments, so that a value not measured stops the script under set -e)
p="$(val proxy_rps "$plain_out")"
t="$(val proxy_rps "$tls_out")"
p50p="$(val proxy_p50_ms "$plain_out")"
p50t="$(val proxy_p50_ms "$tls_out")"
dp="$(val download_mib_per_sec "$plain_out")"
dt="$(val download_mib_per_sec "$tls_out")"
fp="$(val ttfb_new_port_p50_ms "$plain_out")"
ft="$(val ttfb_new_port_p50_ms "$tls_out")"
awk -v p="$p" -v t="$t" -v p50p="$p50p" -v p50t="$p50t" -v dp="$dp" -v dt="$dt" -v fp="$fp" \
  -v ft="$ft" \
  'BEGIN {
     printf "tls_cost_pct=%.1f\n", 100 * (p - t) / p
     printf "tls_added_p50_ms=%.3f\n", p50t - p50p
     printf "tls_download_cost_pct=%.1f\n", 100 * (dp - dt) / dp
     printf "tls_ttfb_new_port_added_ms=%.2f\n", ft - fp
   }'
exit "$status"
