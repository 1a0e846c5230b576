#!/usr/bin/env bash
# The TypeScript SDK's suites (compiled by build.sh) against the cluster that
# isorun-run-with-cluster started: node's test runner, one file at a time.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
shopt -s nullglob
files=(.test-build/test/*.test.js)
((${#files[@]} > 0)) || { echo "no compiled tests in .test-build/test: run scripts/build.sh" >&2; exit 1; }
exec node --test --test-concurrency=1 --test-reporter=spec "${files[@]}"
