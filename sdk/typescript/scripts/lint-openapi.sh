#!/usr/bin/env bash
# Lints services/gateway/openapi.json with Redocly CLI (installed from the lock file by build.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export REDOCLY_TELEMETRY=off REDOCLY_SUPPRESS_UPDATE_NOTICE=true
exec npx --no-install redocly lint --config redocly.yaml ../../services/gateway/openapi.json
