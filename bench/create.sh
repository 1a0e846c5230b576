#!/usr/bin/env bash
# ./isorun bench create [--clients N] [--seconds S]: durable creates per second through the gRPC API
# against a throwaway cluster with simulated runners, then pgbench -N with the same client count on
# the same PostgreSQL; prints creates_per_sec, p50_ms, p99_ms, the CPU each process spent per create
# (cpu_ms_per_create{process}=, its destroy included), pgbench_tps and ratio. 128 clients by
# default: concurrent calls are what the control plane batches (see services/kit/batcher.h), and a
# control plane serving many tenants sees at least that many creates in flight.
# --tls: the same load twice on the same PostgreSQL, in plain text and then with mutual TLS on every
# gRPC connection (certificates made with openssl, as ./isorun up does); every line of each run is
# prefixed plain_ or tls_, then tls_cost_pct (creates per second lost to TLS) and
# tls_cpu_ms_per_create_delta (CPU of every process per create, TLS minus plain).
set -euo pipefail
: "${ISORUN_REPO:?run through ./isorun bench create}"
# shellcheck source=scripts/pg.sh
source "$ISORUN_REPO/scripts/pg.sh"
# shellcheck source=scripts/cluster.sh
source "$ISORUN_REPO/scripts/cluster.sh"  # cluster_tls_certs, for --tls

clients=128
seconds=10
tls=0
args=()
while (($#)); do
  case "$1" in
    --clients) clients="$2"; shift 2 ;;
    --clients=*) clients="${1#*=}"; shift ;;
    --seconds) seconds="$2"; shift 2 ;;
    --seconds=*) seconds="${1#*=}"; shift ;;
    --tls) tls=1; shift ;;
    *) args+=("$1"); shift ;;
  esac
done

# A figure read from a program's output must be a positive number; anything else (nothing read,
# 0) means it was not measured, and the run fails instead of printing 0.
positive() {
  [[ "$1" =~ ^[0-9]+([.][0-9]+)?$ ]] && awk -v v="$1" 'BEGIN { exit !(v > 0) }' ||
    die "bench create: $2 was not measured (read '$1')"
}

tmp="$(mktemp -d -t isorun-bench.XXXXXX)"
chmod 0755 "$tmp"
cleanup() { pg_stop; rm -rf "$tmp"; }
trap cleanup EXIT
pg_throwaway "$tmp"

# A failed load run (errors, leftovers or a figure it could not measure) still prints what it
# measured; the script fails at the end.
status=0
out="$("$ISORUN_BIN_DIR/isorun-create-load" --clients="$clients" --seconds="$seconds" "${args[@]}")" ||
  status=$?
if ((tls)); then
  CLUSTER_DATA="$tmp"
  cluster_tls_certs
  tls_out="$("$ISORUN_BIN_DIR/isorun-create-load" --clients="$clients" --seconds="$seconds" \
    --tls_dir="$tmp/tls" "${args[@]}")" || status=$?
  sed 's/^/plain_/' <<<"$out"
  sed 's/^/tls_/' <<<"$tls_out"
  plain="$(sed -n 's/^creates_per_sec=//p' <<<"$out")"
  with="$(sed -n 's/^creates_per_sec=//p' <<<"$tls_out")"
  positive "$plain" "plain creates_per_sec"
  positive "$with" "tls creates_per_sec"
  awk -v p="$plain" -v t="$with" 'BEGIN { printf "tls_cost_pct=%.1f\n", 100 * (p - t) / p }'
  sum_cpu() {
    sed -n 's/^cpu_ms_per_create{[^}]*}=//p' |
      awk '{ s += $1; n++ } END { if (n == 0) exit 1; printf "%.3f", s }'
  }
  cpu_plain="$(sum_cpu <<<"$out")" || die "bench create: no cpu_ms_per_create in the plain run"
  cpu_tls="$(sum_cpu <<<"$tls_out")" || die "bench create: no cpu_ms_per_create in the TLS run"
  awk -v p="$cpu_plain" -v t="$cpu_tls" 'BEGIN { printf "tls_cpu_ms_per_create_delta=%.3f\n", t - p }'
else
  printf '%s\n' "$out"
fi
creates="$(sed -n 's/^creates_per_sec=//p' <<<"$out")"
positive "$creates" "creates_per_sec"

bin="$(pg_bindir)"
pg_ensure_db "$PG_PORT" pgbench >/dev/null
init_out="$("$bin/pgbench" -h 127.0.0.1 -p "$PG_PORT" -U isorun -i -s 10 -q pgbench 2>&1)" ||
  die "pgbench -i failed: $init_out"
pgbench_out="$("$bin/pgbench" -h 127.0.0.1 -p "$PG_PORT" -U isorun -N -c "$clients" -j 2 \
  -T "$seconds" pgbench 2>&1)" || die "pgbench failed: $pgbench_out"
tps="$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$pgbench_out" | head -1)"
positive "$tps" "pgbench_tps (pgbench printed: $pgbench_out)"
printf 'pgbench_tps=%.0f\n' "$tps"
awk -v c="$creates" -v t="$tps" 'BEGIN { printf "ratio=%.3f\n", c / t }'
exit "$status"
