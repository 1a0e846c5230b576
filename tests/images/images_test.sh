#!/usr/bin/env bash
# The service images (ctest label `images`): builds them (scripts/images.sh, cached in
# BUILD/images), pushes them to a registry of its own and pulls them back, then starts each under
# runc as the chart runs it (non-root, read-only root filesystem, but the runner) against a real
# PostgreSQL and each other:
#   ctl        `isorunctl migrate` on a fresh database exits 0
#   quota, scheduler, lifecycle, runner (simulated driver)
#              answer grpc.health.v1.Health/Check with SERVING (HTTP/2 gRPC request by curl)
#   gateway    answers GET /healthz with 200
# Prints image_<name>_bytes=N (compressed, as pushed). Usage: images_test.sh REPO BUILD_DIR.
# Exit 77 (skipped) without root, the image tools or ISORUN_TEST_DATABASE_URL.
set -euo pipefail

REPO="$1"
BUILD="$2"
export ISORUN_REPO="$REPO"
# shellcheck source=scripts/images.sh
source "$REPO/scripts/images.sh"

skip() {
  echo "SKIP: $*"
  exit 77
}
fail() {
  echo "FAIL: $*" >&2
  exit 1
}
[[ "$(id -u)" == 0 ]] || skip "needs root (runc)"
for tool in runc umoci skopeo docker-registry curl psql jq strip; do
  command -v "$tool" >/dev/null 2>&1 || skip "$tool not found (./isorun deps installs it)"
done
[[ -n "${ISORUN_TEST_DATABASE_URL:-}" ]] || skip "ISORUN_TEST_DATABASE_URL unset (run through ./isorun test)"

WORK="$(mktemp -d -t isorun-images-test.XXXXXX)"
RUNC_ROOT="$WORK/runc"
PREFIX="isorun-img-$$"
DB="isorun_images_$$"
REGISTRY_DIR="$WORK/registry"
REGISTRY_PID=""
declare -a STARTED=()
cleanup() {
  local rc=$? id
  set +e
  for id in "${STARTED[@]}"; do
    runc --root "$RUNC_ROOT" kill "$id" KILL >/dev/null 2>&1
    runc --root "$RUNC_ROOT" delete -f "$id" >/dev/null 2>&1
  done
  if [[ -n "$REGISTRY_PID" ]]; then
    kill "$REGISTRY_PID" 2>/dev/null
    wait "$REGISTRY_PID" 2>/dev/null
  fi
  psql -q "$ISORUN_TEST_DATABASE_URL" -c "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1
  if ((rc != 0)); then
    for f in "$WORK"/*.log; do
      [[ -e "$f" ]] && { echo "--- $(basename "$f")"; tail -20 "$f"; }
    done
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT

# Build (cached), push to a registry of this test, and pull back what runs below.
images_build "$BUILD/bin" "$BUILD/images"
for name in "${IMAGES_NAMES[@]}"; do
  printf 'image_%s_bytes=%s\n' "$name" "$(images_size "$BUILD/images/layout" "$name")"
done
free_port() { bash -c "source '$REPO/scripts/lib.sh'; pick_free_port"; }
port="$(free_port)"
bash "$REPO/scripts/registry.sh" serve "$REGISTRY_DIR" "$port" </dev/null >"$WORK/registry.log" 2>&1 &
REGISTRY_PID=$!
for ((i = 0; i < 100; i++)); do
  curl -sf -o /dev/null "http://127.0.0.1:$port/v2/" && break
  kill -0 "$REGISTRY_PID" 2>/dev/null || fail "the registry exited"
  sleep 0.1
done
registry="127.0.0.1:$port"
images_push "$BUILD/images/layout" "$registry" test
pulled="$WORK/pulled"
for name in "${IMAGES_NAMES[@]}"; do
  skopeo copy -q --src-tls-verify=false "docker://$registry/isorun-$name:test" "oci:$pulled:$name" ||
    fail "pull of isorun-$name:test"
done
echo "pushed to and pulled from $registry: ${IMAGES_NAMES[*]}"

# A database of this test.
psql -q "$ISORUN_TEST_DATABASE_URL" -c "CREATE DATABASE $DB" >/dev/null || fail "CREATE DATABASE"
DB_URL="$(sed -E "s#^(postgres(ql)?://[^/]+)/[^?]*#\1/$DB#" <<<"$ISORUN_TEST_DATABASE_URL")"

# bundle NAME: unpacks the pulled image NAME into a runc bundle configured as the chart runs it.
bundle() {
  local name="$1" dir="$WORK/bundle-$1" readonly=true
  umoci unpack --image "$pulled:$name" "$dir" >/dev/null || fail "umoci unpack $name"
  [[ "$name" == runner ]] && readonly=false
  # The host's network (the probes below reach loopback), a read-only root with a tmpfs /tmp.
  jq --argjson ro "$readonly" '
    .linux.namespaces |= map(select(.type != "network"))
    | .root.readonly = $ro
    | .process.terminal = false
    | .mounts += [{destination: "/tmp", type: "tmpfs", source: "tmpfs",
                   options: ["nosuid", "nodev", "mode=1777", "size=65536k"]}]' \
    "$dir/config.json" >"$dir/config.json.new" && mv "$dir/config.json.new" "$dir/config.json"
}

# setenv NAME VAR=VALUE...: adds environment variables to the bundle's process.
setenv() {
  local dir="$WORK/bundle-$1"
  shift
  local e
  for e in "$@"; do
    jq --arg e "$e" '.process.env += [$e]' "$dir/config.json" >"$dir/config.json.new" &&
      mv "$dir/config.json.new" "$dir/config.json"
  done
}

start() {
  local name="$1" id="$PREFIX-$1"
  runc --root "$RUNC_ROOT" run -d --bundle "$WORK/bundle-$name" "$id" \
    </dev/null >"$WORK/$name.log" 2>&1 || fail "runc run $name"
  STARTED+=("$id")
}

# grpc_health NAME PORT: waits (up to 30 s) for SERVING from grpc.health.v1.Health/Check.
grpc_health() {
  local name="$1" port="$2" i answer=""
  # An empty HealthCheckRequest in gRPC's framing: not compressed, length 0.
  printf '\x00\x00\x00\x00\x00' >"$WORK/health.req"
  for ((i = 0; i < 150; i++)); do
    answer="$(curl -s --max-time 2 --http2-prior-knowledge -H 'content-type: application/grpc' \
      -H 'te: trailers' --data-binary @"$WORK/health.req" \
      "http://127.0.0.1:$port/grpc.health.v1.Health/Check" | od -An -tx1 | tr -d ' \n')" || true
    # HealthCheckResponse{status: SERVING}: frame of 2 bytes, field 1 = 1.
    if [[ "$answer" == 00000000020801 ]]; then
      echo "$name: grpc.health.v1 SERVING on port $port"
      return 0
    fi
    runc --root "$RUNC_ROOT" state "$PREFIX-$name" 2>/dev/null | grep -q '"status": "running"' ||
      fail "$name exited before it served"
    sleep 0.2
  done
  fail "$name: no SERVING answer on port $port (last: ${answer:-none})"
}

# ctl: migrations, in the foreground.
bundle ctl
jq --arg url "ISORUN_DATABASE_URL=$DB_URL" '.process.args += ["migrate"] | .process.env += [$url]' \
  "$WORK/bundle-ctl/config.json" >"$WORK/bundle-ctl/config.json.new" &&
  mv "$WORK/bundle-ctl/config.json.new" "$WORK/bundle-ctl/config.json"
runc --root "$RUNC_ROOT" run --bundle "$WORK/bundle-ctl" "$PREFIX-ctl" </dev/null >"$WORK/ctl.log" 2>&1 ||
  fail "isorunctl migrate in the ctl image failed"
runc --root "$RUNC_ROOT" delete -f "$PREFIX-ctl" >/dev/null 2>&1 || true
echo "ctl: isorunctl migrate applied the schema"

q="$(free_port)" s="$(free_port)" l="$(free_port)" r="$(free_port)" g="$(free_port)"
bundle quota
setenv quota "ISORUN_GRPC_ADDR=127.0.0.1:$q" "ISORUN_METRICS_ADDR=" "ISORUN_DATABASE_URL=$DB_URL"
start quota
grpc_health quota "$q"

bundle scheduler
setenv scheduler "ISORUN_GRPC_ADDR=127.0.0.1:$s" "ISORUN_METRICS_ADDR=" "ISORUN_ADMIN_HTTP_ADDR=" \
  "ISORUN_DATABASE_URL=$DB_URL"
start scheduler
grpc_health scheduler "$s"

bundle lifecycle
setenv lifecycle "ISORUN_GRPC_ADDR=127.0.0.1:$l" "ISORUN_METRICS_ADDR=" "ISORUN_DATABASE_URL=$DB_URL" \
  "ISORUN_QUOTA_ADDR=127.0.0.1:$q" "ISORUN_SCHEDULER_ADDR=127.0.0.1:$s"
start lifecycle
grpc_health lifecycle "$l"

bundle runner
setenv runner "ISORUN_GRPC_ADDR=127.0.0.1:$r" "ISORUN_METRICS_ADDR=" "ISORUN_SCHEDULER_ADDR=127.0.0.1:$s" \
  "ISORUN_DRIVER=sim" "ISORUN_RUNNER_NAME=$PREFIX-runner"
start runner
grpc_health runner "$r"

bundle gateway
setenv gateway "ISORUN_HTTP_ADDR=127.0.0.1:$g" "ISORUN_METRICS_ADDR=" "ISORUN_DATABASE_URL=$DB_URL" \
  "ISORUN_LIFECYCLE_ADDR=127.0.0.1:$l" "ISORUN_QUOTA_ADDR=127.0.0.1:$q"
start gateway
code=""
for ((i = 0; i < 150; i++)); do
  code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$g/healthz")" || true
  [[ "$code" == 200 ]] && break
  runc --root "$RUNC_ROOT" state "$PREFIX-gateway" 2>/dev/null | grep -q '"status": "running"' ||
    fail "gateway exited before it served"
  sleep 0.2
done
[[ "$code" == 200 ]] || fail "gateway: /healthz answered ${code:-nothing}"
echo "gateway: GET /healthz 200 on port $g"

# The runner registered with the scheduler in the image next to it.
for ((i = 0; i < 50; i++)); do
  n="$(psql -At "$DB_URL" -c "SELECT count(*) FROM scheduler.runners WHERE name = '$PREFIX-runner'" 2>/dev/null)" || n=0
  [[ "$n" == 1 ]] && break
  sleep 0.2
done
[[ "$n" == 1 ]] || fail "the runner did not register with the scheduler"
echo "runner: registered with the scheduler"
echo "images test passed"
