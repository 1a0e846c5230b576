#!/usr/bin/env bash
# ./isorun bench quota [--clients N] [--seconds S]: admissions per second through the quota
# service's gRPC API for one hot tenant and for 1,000 tenants, on a throwaway PostgreSQL, and the
# rate check's latency; prints admits_per_sec_hot, admits_per_sec_spread, p99_ms_hot,
# ratecheck_p50_us.
set -euo pipefail
: "${ISORUN_REPO:?run through ./isorun bench quota}"
# shellcheck source=scripts/pg.sh
source "$ISORUN_REPO/scripts/pg.sh"
tmp="$(mktemp -d -t isorun-bench.XXXXXX)"
chmod 0755 "$tmp"
cleanup() { pg_stop; rm -rf "$tmp"; }
trap cleanup EXIT
pg_throwaway "$tmp"
"$ISORUN_BIN_DIR/isorun-quota-load" "$@"
