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

tmp="$(mktemp -d -t isorun-bench.XXXXXX)"
chmod 0755 "$tmp"
cleanup() { pg_stop; rm -rf "$tmp"; }
trap cleanup EXIT
pg_throwaway "$tmp"

out="$("$ISORUN_BIN_DIR/isorun-create-load" --clients="$clients" --seconds="$seconds" "${args[@]}")"
if ((tls)); then
  CLUSTER_DATA="$tmp"
  cluster_tls_certs
  tls_out="$("$ISORUN_BIN_DIR/isorun-create-load" --clients="$clients" --seconds="$seconds" \
    --tls_dir="$tmp/tls" "${args[@]}")"
  sed 's/^/plain_/' <<<"$out"
  sed 's/^/tls_/' <<<"$tls_out"
  plain="$(sed -n 's/^creates_per_sec=//p' <<<"$out")"
  with="$(sed -n 's/^creates_per_sec=//p' <<<"$tls_out")"
  awk -v p="$plain" -v t="$with" 'BEGIN { printf "tls_cost_pct=%.1f\n", (p > 0 ? 100 * (p - t) / p : 0) }'
  sum_cpu() { sed -n 's/^cpu_ms_per_create{[^}]*}=//p' | awk '{ s += $1 } END { printf "%.3f", s }'; }
  awk -v p="$(sum_cpu <<<"$out")" -v t="$(sum_cpu <<<"$tls_out")" \
    'BEGIN { printf "tls_cpu_ms_per_create_delta=%.3f\n", t - p }'
else
  printf '%s\n' "$out"
fi
creates="$(sed -n 's/^creates_per_sec=//p' <<<"$out")"

bin="$(pg_bindir)"
pg_ensure_db "$PG_PORT" pgbench >/dev/null
"$bin/pgbench" -h 127.0.0.1 -p "$PG_PORT" -U isorun -i -s 10 -q pgbench >/dev/null 2>&1
tps="$("$bin/pgbench" -h 127.0.0.1 -p "$PG_PORT" -U isorun -N -c "$clients" -j 2 -T "$seconds" pgbench 2>/dev/null |
  sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -1)"
printf 'pgbench_tps=%.0f\n' "$tps"
awk -v c="$creates" -v t="$tps" 'BEGIN { printf "ratio=%.3f\n", (t > 0 ? c / t : 0) }'
