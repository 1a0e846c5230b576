#!/usr/bin/env bash
# ./isorun bench scheduler [ARGS]: placement decisions per second on a simulated fleet of 10,000
# runners and 500 Zipf-popular images (isorun-scheduler-bench): the pure policy on one thread
# (placements_per_sec, p50_us, p99_us, warm_ratio, oracle_warm_ratio), then through the gRPC
# service with an in-memory store (grpc_*) and with Postgres (grpc_pg_*, on a throwaway
# PostgreSQL). ARGS go to the binary (--runners, --images, --zipf_s, --utilization, --cache_gb,
# --regions, --grpc_seconds, --grpc_clients, policy knobs; --help lists them). Set
# ISORUN_BENCH_NO_PG=1 to skip the Postgres pass.
set -euo pipefail
: "${ISORUN_REPO:?run through ./isorun bench scheduler}"
: "${ISORUN_BIN_DIR:?run through ./isorun bench scheduler}"

if [[ -n "${ISORUN_BENCH_NO_PG:-}" ]]; then
  unset ISORUN_TEST_DATABASE_URL
  exec "$ISORUN_BIN_DIR/isorun-scheduler-bench" "$@"
fi

# shellcheck source=scripts/pg.sh
source "$ISORUN_REPO/scripts/pg.sh"
tmp="$(mktemp -d -t isorun-bench.XXXXXX)"
chmod 0755 "$tmp"
cleanup() { pg_stop; rm -rf "$tmp"; }
trap cleanup EXIT
pg_throwaway "$tmp"
"$ISORUN_BIN_DIR/isorun-scheduler-bench" "$@"
