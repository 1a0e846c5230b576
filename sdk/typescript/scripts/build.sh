#!/usr/bin/env bash
# Installs the SDK's npm packages from package-lock.json (again only when the lock file changed)
# and compiles the SDK (dist/) and its tests (.test-build/). Run by ctest (sdk_typescript_build).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v npm >/dev/null || { echo "npm is missing: ./isorun deps installs it" >&2; exit 1; }
stamp=node_modules/.isorun-installed
want="$(sha256sum package.json package-lock.json | sha256sum | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  npm ci --no-audit --no-fund
  printf '%s\n' "$want" >"$stamp"
fi
npx --no-install tsc -p tsconfig.json
npx --no-install tsc -p tsconfig.test.json
# The README's examples must type-check against the SDK as it is.
node scripts/readme-examples.mjs
npx --no-install tsc -p tsconfig.readme.json
echo "built $(pwd)/dist and .test-build"
