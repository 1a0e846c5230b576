#!/usr/bin/env bash
# shellcheck disable=SC2031 # variables changed in subshells are meant to stay there
# Checks ./isorun's own machinery without the C++ binaries: port picking, PostgreSQL start/stop as
# the right user (data folder reachable or not), the test runner's cleanup, and `up` with fake
# services (ready env file, second-start lock, SIGTERM cleanup, a dying child, data reuse).
# Run: ./isorun selftest     Prints 'N passed, N failed' and exits non-zero on a failure.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
# shellcheck source=scripts/pg.sh
source "$REPO/scripts/pg.sh"

PASSED=0 FAILED=0
ok() { PASSED=$((PASSED + 1)); printf 'ok   %s\n' "$*"; }
bad() { FAILED=$((FAILED + 1)); printf 'FAIL %s\n' "$*"; }
check() { # check NAME CMD...
  local name="$1"; shift
  if "$@"; then ok "$name"; else bad "$name"; fi
}

# Job control: background jobs get their own process group and do not ignore SIGINT, as a command
# in a terminal would not.
set -m

WORK="$(mktemp -d -t isorun-selftest.XXXXXX)"
chmod 0755 "$WORK"
UP_PID=""
cleanup() {
  [[ -n "$UP_PID" ]] && kill -TERM "$UP_PID" 2>/dev/null && wait "$UP_PID" 2>/dev/null
  # Whatever a failed check left running from this run's folder (stand-in services, PostgreSQL).
  local f pid
  for f in /proc/[0-9]*/cmdline; do
    pid="${f#/proc/}" pid="${pid%/cmdline}"
    [[ "$pid" != "$$" ]] && tr '\0' ' ' 2>/dev/null <"$f" | grep -qF -- "$WORK/" && kill -TERM "$pid" 2>/dev/null
  done
  if [[ "${ISORUN_SELFTEST_KEEP:-0}" == 1 ]]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

psql_ok() { "$(pg_bindir)/psql" -h 127.0.0.1 -p "$1" -U isorun -d "$2" -XtAc 'select 1' 2>/dev/null | grep -qx 1; }
owner_of() { stat -c %U "$1"; }
user="$(pg_os_user)"

echo "== ports"
p="$(pick_free_port)"
check "pick_free_port gives a number ($p)" test -n "$p" -a "$p" -gt 0
check "that port is free" bash -c "! (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null"

echo "== PostgreSQL, data folder reachable by $user"
(
  set -e
  pg_prepare "$WORK/data"
  [[ "$PG_DATA" == "$WORK/data/pg" ]] || { echo "PG_DATA=$PG_DATA"; exit 1; }
  [[ "$(owner_of "$PG_DATA")" == "$user" ]]
  [[ "$(stat -c %a "$WORK/data")" == 755 ]]
  port="$(pick_free_port)"
  pg_start "$port" "$WORK/data/pg.log"
  psql_ok "$port" postgres
  [[ "$(ps -o user= -p "$(pg_pid)")" == "$user" ]]
  pg_ensure_db "$port" isorun
  pg_ensure_db "$port" isorun
  psql_ok "$port" isorun
  "$(pg_bindir)/psql" -h 127.0.0.1 -p "$port" -U isorun -d isorun -XtAc 'show fsync' | grep -qx on
  "$(pg_bindir)/psql" -h 127.0.0.1 -p "$port" -U isorun -d isorun -XtAc 'show max_connections' | grep -qx 300
  pg_stop
  pg_running && exit 1
  psql_ok "$port" postgres && exit 1
  # second start reuses the data (no second initdb)
  n="$(grep -c 'initdb' "$WORK/data/pg.log" || true)"
  pg_start "$port" "$WORK/data/pg.log"
  psql_ok "$port" isorun
  [[ "$(grep -c 'initdb' "$WORK/data/pg.log" || true)" == "$n" ]]
  pg_stop
) >"$WORK/pg1.out" 2>&1
check "initdb, start as $user, select 1, createdb once, fsync on, stop, restart reusing data" test $? = 0 ||
  tail -20 "$WORK/pg1.out"

if is_root; then
  echo "== PostgreSQL, data folder behind a 0700 parent"
  mkdir -m 0700 "$WORK/private"
  (
    set -e
    pg_prepare "$WORK/private/data"
    hash="$(printf '%s' "$WORK/private/data" | sha1sum | cut -c1-12)"
    [[ "$PG_DATA" == "/var/lib/isorun/pg-$hash" ]] || { echo "PG_DATA=$PG_DATA"; exit 1; }
    [[ "$(stat -c '%a %U' "$PG_DATA")" == "700 isorun" ]]
    port="$(pick_free_port)"
    pg_start "$port" "$WORK/private/data/pg.log"
    psql_ok "$port" postgres
    pg_stop
    pg_running && exit 1
    rm -rf "$PG_DATA"
  ) >"$WORK/pg2.out" 2>&1
  check "relocates pgdata to /var/lib/isorun/pg-<sha1>, starts, stops" test $? = 0 || tail -20 "$WORK/pg2.out"
  grep -q 'is not reachable by user isorun' "$WORK/pg2.out"
  check "says so in a log line" test $? = 0
fi

echo "== ./isorun test cleanup (build and ctest stubbed)"
mkdir -p "$WORK/stubbin"
cat >"$WORK/stubbin/ctest" <<'STUB'
#!/usr/bin/env bash
echo "TMP=$TEST_TMP PGDATA=$PG_DATA URL=$ISORUN_TEST_DATABASE_URL BIN=$ISORUN_BIN_DIR ARGS=$*"
port="${ISORUN_TEST_DATABASE_URL##*:}"; port="${port%%/*}"
"$(pg_bindir)/psql" -h 127.0.0.1 -p "$port" -U isorun -d postgres -XtAc 'select 1' | grep -qx 1 || exit 99
if [[ -n "${STUB_SLEEP:-}" ]]; then sleep "$STUB_SLEEP" & wait; fi
exit "${STUB_RC:-0}"
STUB
chmod +x "$WORK/stubbin/ctest"
cat >"$WORK/test-stub.sh" <<STUB
source "$REPO/scripts/test.sh"
build_all() { :; }
export -f pg_bindir
export TEST_TMP PG_DATA PATH="$WORK/stubbin:\$PATH"
run_tests "\$@"
STUB
field() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" "$2"; }
bash "$WORK/test-stub.sh" -L unit >"$WORK/t1.out" 2>&1; rc=$?
check "exit status 0 passes through" test "$rc" = 0
check "ctest args: defaults then -L unit" grep -q 'ARGS=--test-dir .* --output-on-failure -j2 --timeout 300 --output-junit .*/junit.xml -L unit$' "$WORK/t1.out"
check "ISORUN_TEST_DATABASE_URL ends in /postgres" grep -q 'URL=postgresql://isorun@127.0.0.1:[0-9]*/postgres ' "$WORK/t1.out"
tmp="$(field TMP "$WORK/t1.out")"
check "temp folder removed" test -n "$tmp" -a ! -e "$tmp"
STUB_RC=3 bash "$WORK/test-stub.sh" >"$WORK/t2.out" 2>&1; rc=$?
check "failing ctest status (3) passes through" test "$rc" = 3
tmp="$(field TMP "$WORK/t2.out")"
check "temp folder removed after failure" test -n "$tmp" -a ! -e "$tmp"
for sig in TERM INT; do
  STUB_SLEEP=30 bash "$WORK/test-stub.sh" >"$WORK/sig.out" 2>&1 &
  spid=$!
  # starting its PostgreSQL can take long on a busy machine
  for _ in $(seq 600); do grep -q 'TMP=' "$WORK/sig.out" && break; sleep 0.1; done
  sleep 0.2
  tmp="$(field TMP "$WORK/sig.out")"
  pgdata="$(field PGDATA "$WORK/sig.out")"
  t0=$SECONDS
  kill "-$sig" "$spid"; wait "$spid"; rc=$?
  check "SIG$sig: exit status $rc (130 or 143) within 10s" test "$rc" -ge 130 -a $((SECONDS - t0)) -lt 10
  check "SIG$sig: temp folder removed" test -n "$tmp" -a ! -e "$tmp"
  check "SIG$sig: no postgres left on $pgdata" test -z "$(pgrep -f -- "-D $pgdata" || true)"
done

echo "== ./isorun up with fake services"
FAKE="$WORK/fakebin"
mkdir -p "$FAKE" "$WORK/fakestate"
cat >"$FAKE/fake-service.py" <<'PY'
import http.server, os, socketserver, sys, threading
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
name = os.path.basename(sys.argv[0])
with open(os.environ["FAKE_STATE"] + "/argv." + args.get("runner_name", name), "w") as f:
    f.write(" ".join(sys.argv[1:]) + "\nDB=" + os.environ.get("ISORUN_DATABASE_URL", "") +
            "\nDATA_DIR=" + os.environ.get("ISORUN_DATA_DIR", "") + "\n")
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok\n")
    def log_message(self, *a): pass
servers = []
for k in ("grpc_addr", "http_addr", "metrics_addr"):
    if k in args:
        host, port = args[k].rsplit(":", 1)
        socketserver.TCPServer.allow_reuse_address = True
        s = http.server.ThreadingHTTPServer((host, int(port)), H)
        threading.Thread(target=s.serve_forever, daemon=True).start()
        servers.append(s)
print(name, "listening", flush=True)
import signal
signal.sigwait([signal.SIGTERM, signal.SIGINT])
print(name, "stopping", flush=True)
PY
for b in isorun-quota isorun-scheduler isorun-lifecycle isorun-runner isorun-gateway; do
  # shellcheck disable=SC2016 # $0 and $@ belong to the generated script
  printf '#!/bin/sh\nexec python3 -c "import sys; sys.argv[0]=\\"%s\\"; exec(open(\\"%s\\").read())" "$0" "$@"\n' \
    "$b" "$FAKE/fake-service.py" >"$FAKE/$b"
  chmod +x "$FAKE/$b"
done
cat >"$FAKE/isorunctl" <<'SH'
#!/usr/bin/env bash
# fake isorunctl: remembers tenants and keys in $FAKE_STATE
set -e
s="$FAKE_STATE"
echo "isorunctl $* DB=$ISORUN_DATABASE_URL" >>"$s/ctl.calls"
case "$1 ${2:-}" in
  "migrate "*) echo "migrations applied" ;;
  "tenants list") echo "NAME MAX_CONCURRENT"; cat "$s/tenants" 2>/dev/null || true ;;
  "tenants create") echo "$3 10" >>"$s/tenants"; echo "created $3" ;;
  "keys create") n=$(( $(cat "$s/keyn" 2>/dev/null || echo 0) + 1 )); echo "$n" >"$s/keyn"
                 echo "key$n local 2026-01-01T00:00:00Z -" >>"$s/keys"; echo "isr_local_key${n}_Secret0123456789abcdef" ;;
  "keys list") echo "KEY_ID REGION CREATED_AT REVOKED_AT"; cat "$s/keys" 2>/dev/null || true ;;
  "operators create-token") echo "isro_tok1_Secret0123456789abcdefSecret0123456789abcdef" ;;
  "keys revoke") sed -i "s/^$3 \(.*\) -\$/$3 \1 2026-01-02T00:00:00Z/" "$s/keys"; echo "revoked key $3" ;;
  *) echo "fake isorunctl: $*" >&2; exit 2 ;;
esac
SH
chmod +x "$FAKE/isorunctl"

export FAKE_STATE="$WORK/fakestate"
export ISORUN_SKIP_BUILD=1 ISORUN_BIN_DIR="$FAKE" ISORUN_DATA_DIR="$WORK/updata" ISORUN_START_TIMEOUT=20
ISORUN_PG_PORT="$(pick_free_port)"; export ISORUN_PG_PORT
for k in QUOTA SCHEDULER LIFECYCLE RUNNER_1 RUNNER_2 GATEWAY_HTTP GATEWAY_PUBLIC GATEWAY_METRICS \
  SCHEDULER_ADMIN QUOTA_METRICS SCHEDULER_METRICS LIFECYCLE_METRICS RUNNER_1_METRICS RUNNER_2_METRICS \
  RUNNER_1_TUNNEL RUNNER_2_TUNNEL; do
  export "ISORUN_PORT_$k=$(pick_free_port)"
done

start_up() { # start_up LOGFILE: runs ./isorun up in the background, waits for the env file
  "$REPO/isorun" up >"$1" 2>&1 &
  UP_PID=$!
  local i
  for ((i = 0; i < 600; i++)); do
    [[ -f "$ISORUN_DATA_DIR/env" ]] && return 0
    kill -0 "$UP_PID" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
stop_up() { # stop_up SIGNAL: sets RC to the exit status
  kill "-$1" "$UP_PID"
  RC=0
  wait "$UP_PID" || RC=$?
  UP_PID=""
}
all_ports_closed() {
  local k v
  for k in "${!ISORUN_PORT_@}" ISORUN_PG_PORT; do
    [[ "$k" == ISORUN_PORT_GATEWAY_PUBLIC ]] && continue
    v="${!k}"
    if (exec 3<>"/dev/tcp/127.0.0.1/$v") 2>/dev/null; then echo "still open: $k=$v"; return 1; fi
  done
}

if start_up "$WORK/up1.log"; then ok "up: ready, env written"; else bad "up: not ready"; tail -30 "$WORK/up1.log"; fi
envf="$ISORUN_DATA_DIR/env"
absent=""
for v in ISORUN_API_URL ISORUN_API_KEY ISORUN_PUBLIC_URL ISORUN_DATABASE_URL ISORUN_REGISTRY \
  ISORUN_GRPC_QUOTA ISORUN_GRPC_SCHEDULER ISORUN_GRPC_LIFECYCLE ISORUN_GRPC_RUNNER_1 ISORUN_GRPC_RUNNER_2 \
  ISORUN_METRICS_GATEWAY ISORUN_METRICS_QUOTA ISORUN_METRICS_SCHEDULER ISORUN_METRICS_LIFECYCLE \
  ISORUN_METRICS_RUNNER_1 ISORUN_METRICS_RUNNER_2; do
  grep -q "^$v=" "$envf" 2>/dev/null || absent+=" $v"
done
check "env has every variable${absent:+ (missing:$absent)}" test -z "$absent"
check "env key is the saved dev key" grep -qx "ISORUN_API_KEY=$(cat "$ISORUN_DATA_DIR/dev.key" 2>/dev/null)" "$envf"
check "dev.key mode 600" test "$(stat -c %a "$ISORUN_DATA_DIR/dev.key" 2>/dev/null)" = 600
check "env metrics URL form" grep -qx "ISORUN_METRICS_QUOTA=http://127.0.0.1:$ISORUN_PORT_QUOTA_METRICS/metrics" "$envf"
check "database URL" grep -qx "ISORUN_DATABASE_URL=postgresql://isorun@127.0.0.1:$ISORUN_PG_PORT/isorun" "$envf"
check "tenant dev created with --max-concurrent 10" grep -q 'tenants create dev --max-concurrent 10' "$FAKE_STATE/ctl.calls"
# The driver is runc where this machine can run sandboxes (root, runc), with its data folder and
# sandbox range; the simulated one otherwise. TLS files come last either way.
check "runner-2 flags" grep -qE -- " --grpc_addr=127.0.0.1:$ISORUN_PORT_RUNNER_2 --metrics_addr=127.0.0.1:$ISORUN_PORT_RUNNER_2_METRICS --scheduler_addr=127.0.0.1:$ISORUN_PORT_SCHEDULER --runner_name=runner-2 --region=local --tunnel_addr=127.0.0.1:$ISORUN_PORT_RUNNER_2_TUNNEL (--driver=sim|--driver=runc .* --data_dir=$ISORUN_DATA_DIR/runner-2 --sandbox_network=100.96.2.0/24) --tls_cert_file=$ISORUN_DATA_DIR/tls/runner.crt --tls_key_file=$ISORUN_DATA_DIR/tls/runner.key --tls_ca_file=$ISORUN_DATA_DIR/tls/ca.crt$" "$FAKE_STATE/argv.runner-2"
check "services get ISORUN_DATABASE_URL" grep -qx "DB=postgresql://isorun@127.0.0.1:$ISORUN_PG_PORT/isorun" "$FAKE_STATE/argv.isorun-gateway"
check "services do not get ISORUN_DATA_DIR" grep -qx "DATA_DIR=" "$FAKE_STATE/argv.isorun-gateway"
check "ctl reads the env file" bash -c "'$REPO/isorun' ctl tenants list | grep -q '^dev '"
"$REPO/isorun" up >"$WORK/up-second.log" 2>&1; rc=$?
check "second up fails (status $rc) while one runs" test "$rc" != 0
check "second up says why" grep -q 'already running' "$WORK/up-second.log"
check "first up still ready after the second failed" test -f "$envf"
stop_up TERM
check "SIGTERM: exit status 0" test "$RC" = 0
check "SIGTERM: env removed" test ! -e "$envf"
check "SIGTERM: every port closed, PostgreSQL stopped" all_ports_closed
check "SIGTERM: gateway stopped first" bash -c "grep -o 'stopping [a-z0-9-]* (pid' '$WORK/up1.log' | head -1 | grep -q gateway"

key1="$(cat "$ISORUN_DATA_DIR/dev.key")"
if start_up "$WORK/up2.log"; then ok "up again: ready"; else bad "up again: not ready"; tail -30 "$WORK/up2.log"; fi
check "up again: reuses the key" test "$(cat "$ISORUN_DATA_DIR/dev.key")" = "$key1"
check "up again: tenant created once" test "$(grep -c 'tenants create' "$FAKE_STATE/ctl.calls")" = 1
check "up again: no second initdb" bash -c "! grep -q 'pg: initdb' '$WORK/up2.log'"
runner1="$(cat "$ISORUN_DATA_DIR/run/runner-1.pid")"
kill -KILL "$runner1"
rc=0; wait "$UP_PID" || rc=$?; UP_PID=""
check "a child dies: up exits non-zero ($rc)" test "$rc" != 0
check "a child dies: says which" grep -q 'runner-1 (pid [0-9]*) exited unexpectedly' "$WORK/up2.log"
check "a child dies: env removed, every port closed" bash -c "test ! -e '$envf'" 
check "a child dies: everything stopped" all_ports_closed

# A revoked dev key is replaced; PostgreSQL dying stops everything.
"$FAKE/isorunctl" keys revoke "$(cut -d_ -f3 "$ISORUN_DATA_DIR/dev.key")" >/dev/null
if start_up "$WORK/up3.log"; then ok "up a third time: ready"; else bad "up a third time: not ready"; fi
check "revoked key replaced by a new one" grep -qx 'ISORUN_API_KEY=isr_local_key2_.*' "$envf"
check "key file has the new key" grep -q '^isr_local_key2_' "$ISORUN_DATA_DIR/dev.key"
(cd / && if is_root; then runuser -u isorun -- "$(pg_bindir)/pg_ctl" -D "$ISORUN_DATA_DIR/pg" stop -m immediate
  else "$(pg_bindir)/pg_ctl" -D "$ISORUN_DATA_DIR/pg" stop -m immediate; fi) >/dev/null
rc=0; wait "$UP_PID" || rc=$?; UP_PID=""
check "PostgreSQL dies: up exits non-zero ($rc)" test "$rc" != 0
check "PostgreSQL dies: says so" grep -q 'PostgreSQL (pid [0-9]*) exited unexpectedly' "$WORK/up3.log"
check "PostgreSQL dies: everything stopped" all_ports_closed

# A killed `up` (SIGKILL: no cleanup) leaves processes; the next `up` stops them first.
if start_up "$WORK/up4.log"; then ok "up a fourth time: ready"; else bad "up a fourth time: not ready"; fi
old_quota="$(cat "$ISORUN_DATA_DIR/run/quota.pid")"
kill -KILL "$UP_PID"; wait "$UP_PID" 2>/dev/null; UP_PID=""
check "after SIGKILL of up, its quota still runs" kill -0 "$old_quota"
rm -f "$ISORUN_DATA_DIR/env"
if start_up "$WORK/up5.log"; then ok "up after a SIGKILLed up: ready"; else bad "up after a SIGKILLed up: not ready"; tail -20 "$WORK/up5.log"; fi
check "the leftover quota was stopped" bash -c "! kill -0 $old_quota 2>/dev/null"
check "says so" grep -q 'left over from an earlier run' "$WORK/up5.log"
stop_up TERM
check "then SIGTERM: exit status 0" test "$RC" = 0
check "then SIGTERM: everything stopped" all_ports_closed

# INT (Ctrl-C) works too.
if start_up "$WORK/up6.log"; then ok "up once more: ready"; else bad "up once more: not ready"; fi
stop_up INT
check "SIGINT: exit status 0" test "$RC" = 0
check "SIGINT: everything stopped" all_ports_closed

echo "$PASSED passed, $FAILED failed"
((FAILED == 0))
