# shellcheck shell=bash
# `./isorun up`: the whole local cluster in the foreground. Sourced by ./isorun.

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=scripts/pg.sh
source "$(dirname "${BASH_SOURCE[0]}")/pg.sh"
# shellcheck source=scripts/build.sh
source "$(dirname "${BASH_SOURCE[0]}")/build.sh"
# shellcheck source=scripts/registry.sh
source "$(dirname "${BASH_SOURCE[0]}")/registry.sh"

# Every port of the local cluster, in one place. Each can be overridden with ISORUN_PORT_<KEY>
# (e.g. ISORUN_PORT_GATEWAY_HTTP=18080); PostgreSQL's with ISORUN_PG_PORT.
declare -A CLUSTER_PORT_DEFAULTS=(
  [QUOTA]=7001 [QUOTA_METRICS]=9101
  [SCHEDULER]=7002 [SCHEDULER_METRICS]=9102 [SCHEDULER_ADMIN]=9202
  [LIFECYCLE]=7003 [LIFECYCLE_METRICS]=9103
  [RUNNER_1]=7101 [RUNNER_1_METRICS]=9111 [RUNNER_1_TUNNEL]=7111
  [RUNNER_2]=7102 [RUNNER_2_METRICS]=9112 [RUNNER_2_TUNNEL]=7112
  [GATEWAY_HTTP]=8080 [GATEWAY_METRICS]=9100 [GATEWAY_PUBLIC]=8081
  [REGISTRY]=5050
)
# The runner's data folder: sandboxes run as uid 100000+, which must reach it. Under a folder
# they cannot traverse (/root, a mktemp folder) it moves to /var/lib/isorun, as PostgreSQL's does.
cluster_runner_dir() {
  local dir="$CLUSTER_DATA/runner-$1"
  if is_root && ! setpriv --reuid=100000 --regid=100000 --clear-groups test -x "$CLUSTER_DATA" 2>/dev/null; then
    local hash
    hash="$(printf '%s' "$CLUSTER_DATA" | sha1sum | cut -c1-12)"
    dir="/var/lib/isorun/runners-$hash/runner-$1"
    mkdir -p "$(dirname "$dir")" && chmod 0755 /var/lib/isorun "$(dirname "$dir")"
  fi
  printf '%s\n' "$dir"
}

cluster_port() {
  local var="ISORUN_PORT_$1"
  printf '%s\n' "${!var:-${CLUSTER_PORT_DEFAULTS[$1]}}"
}

# `up --replicas N`: replica i (2..N) of quota, scheduler, lifecycle and gateway listens on each
# of the first replica's ports plus 10000 * (i - 1) (so N is at most 5). Runners are not
# replicated: they are the machines.
CLUSTER_REPLICAS=1
cluster_replica_port() { # KEY I
  printf '%s\n' "$(($(cluster_port "$1") + 10000 * ($2 - 1)))"
}
# cluster_replica_name NAME I: quota, quota-2, ...
cluster_replica_name() {
  if (($2 == 1)); then printf '%s\n' "$1"; else printf '%s\n' "$1-$2"; fi
}
# cluster_replica_list KEY: 127.0.0.1:P1,127.0.0.1:P2,... over every replica
cluster_replica_list() {
  local i out=""
  for ((i = 1; i <= CLUSTER_REPLICAS; i++)); do
    out+="${out:+,}127.0.0.1:$(cluster_replica_port "$1" "$i")"
  done
  printf '%s\n' "$out"
}

# Variables of this script that must not reach the services, whose flags also read ISORUN_<FLAG>.
CLUSTER_PRIVATE_ENV=(ISORUN_DATA_DIR ISORUN_PG_PORT ISORUN_START_TIMEOUT ISORUN_BUILD_DIR ISORUN_BIN_DIR
  ISORUN_REPO ISORUN_SKIP_BUILD ISORUN_API_KEY ISORUN_API_URL ISORUN_PUBLIC_URL ISORUN_REGISTRY
  ISORUN_RUNNER_DRIVER ISORUN_TEST_IMAGES_DIR ISORUN_FAT_IMAGE_MB ISORUN_ADMIN_TOKEN)

CLUSTER_DATA=""
CLUSTER_TICK_PID=""
CLUSTER_PG_PID=""
CLUSTER_REGISTRY=""  # host:port of the registry this `up` started (or reused)
declare -a CLUSTER_ORDER=()  # started process names, in start order
declare -A CLUSTER_PIDS=()

# Kills processes recorded in $DATA/run by an earlier `up` that was itself killed (SIGKILL, crash).
cluster_kill_leftovers() {
  local f pid name
  for f in "$CLUSTER_DATA"/run/*.pid; do
    [[ -e "$f" ]] || continue
    pid="$(cat "$f" 2>/dev/null)" || true
    name="$(basename "$f" .pid)"
    rm -f "$f"
    [[ "$pid" =~ ^[0-9]+$ ]] || continue
    # Only if that pid still runs one of our binaries (pids are reused).
    if [[ "$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline")" == *"$ISORUN_BIN_DIR/"* ]]; then
      log "stopping $name (pid $pid) left over from an earlier run"
      cluster_stop_pid "$name" "$pid"
    fi
  done
}

# cluster_stop_pid NAME PID: SIGTERM, then SIGKILL after 10 s.
cluster_stop_pid() {
  local name="$1" pid="$2" i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    warn "$name (pid $pid) did not stop within 10s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

# cluster_start NAME BINARY ARGS...: starts BINARY in the background (own session, so that a
# terminal's Ctrl-C reaches only this script, which then stops everything in order).
cluster_start() {
  local name="$1" binary="$2"
  shift 2
  local exe="$ISORUN_BIN_DIR/$binary" logfile="$CLUSTER_DATA/logs/$name.log"
  [[ -x "$exe" ]] || die "$exe not found; was it built? (ls $ISORUN_BIN_DIR)"
  [[ -f "$logfile" ]] && mv -f "$logfile" "$logfile.1"
  local unset_args=() v
  for v in "${CLUSTER_PRIVATE_ENV[@]}"; do unset_args+=(-u "$v"); done
  for v in "${!CLUSTER_PORT_DEFAULTS[@]}"; do unset_args+=(-u "ISORUN_PORT_$v"); done
  log "starting $name: $binary $*"
  env "${unset_args[@]}" setsid "$exe" "$@" </dev/null >>"$logfile" 2>&1 9>&- &
  local pid=$!
  CLUSTER_PIDS[$name]=$pid
  CLUSTER_ORDER+=("$name")
  printf '%s\n' "$pid" >"$CLUSTER_DATA/run/$name.pid"
}

cluster_require_free() {
  local name="$1" port
  shift
  for port in "$@"; do
    if tcp_open 127.0.0.1 "$port"; then
      die "port 127.0.0.1:$port (for $name) is already in use by another process; stop it or set ISORUN_PORT_* (see ./isorun help)"
    fi
  done
}

cluster_on_signal() {
  log "signal received: stopping the local cluster"
  exit 0
}

cluster_cleanup() {
  local rc=$?
  trap '' INT TERM
  set +e
  [[ -n "$CLUSTER_TICK_PID" ]] && kill "$CLUSTER_TICK_PID" 2>/dev/null
  rm -f "$CLUSTER_DATA/env"
  local i name
  for ((i = ${#CLUSTER_ORDER[@]} - 1; i >= 0; i--)); do
    name="${CLUSTER_ORDER[i]}"
    [[ -n "${CLUSTER_PIDS[$name]:-}" ]] || continue
    log "stopping $name (pid ${CLUSTER_PIDS[$name]})"
    cluster_stop_pid "$name" "${CLUSTER_PIDS[$name]}"
    rm -f "$CLUSTER_DATA/run/$name.pid"
  done
  pg_stop
  [[ -n "$CLUSTER_REGISTRY" ]] && registry_stop "$CLUSTER_DATA/registry"
  rm -f "$CLUSTER_DATA/up.pid"
  if ((rc == 0)); then log "stopped"; else log "stopped (exit status $rc)"; fi
  exit "$rc"
}

# The local CA and one certificate per service identity (gateway, lifecycle, quota, scheduler,
# runner, admin) in $DATA/tls, made once with openssl and reused while they verify against the CA.
# Each names its identity as URI SAN isorun://<identity> and is valid for 127.0.0.1 and localhost.
cluster_tls_certs() {
  local dir="$CLUSTER_DATA/tls" id
  mkdir -p "$dir"
  chmod 0700 "$dir"
  if [[ ! -s "$dir/ca.crt" || ! -s "$dir/ca.key" ]]; then
    log "making a local CA for mutual TLS in $dir"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
      -subj "/CN=isorun local CA" -keyout "$dir/ca.key" -out "$dir/ca.crt" >/dev/null 2>&1 ||
      die "openssl could not make the CA"
  fi
  for id in gateway lifecycle quota scheduler runner admin; do
    if [[ -s "$dir/$id.crt" && -s "$dir/$id.key" ]] &&
       openssl verify -CAfile "$dir/ca.crt" "$dir/$id.crt" >/dev/null 2>&1; then
      continue
    fi
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,URI:isorun://%s\n' "$id" >"$dir/$id.ext"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$id" \
      -keyout "$dir/$id.key" -out "$dir/$id.csr" >/dev/null 2>&1 &&
      openssl x509 -req -in "$dir/$id.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
        -days 825 -extfile "$dir/$id.ext" -out "$dir/$id.crt" >/dev/null 2>&1 ||
      die "openssl could not make the certificate of $id"
    rm -f "$dir/$id.csr" "$dir/$id.ext"
  done
  chmod 0600 "$dir"/*.key
}

# cluster_tls_args IDENTITY: the TLS flags of a service with that identity.
cluster_tls_args() {
  local dir="$CLUSTER_DATA/tls"
  printf '%s\n' "--tls_cert_file=$dir/$1.crt" "--tls_key_file=$dir/$1.key" "--tls_ca_file=$dir/ca.crt"
}

# isorunctl with the cluster's database; its output goes to logs/isorunctl.log unless captured.
cluster_ctl() {
  "$ISORUN_BIN_DIR/isorunctl" "$@" 2>>"$CLUSTER_DATA/logs/isorunctl.log"
}

# Creates an operator token if there is none in the data folder; prints it. Only its hash is in
# the database, so the file is the one place it is kept (mode 0600, like dev.key).
cluster_operator_token() {
  local file="$CLUSTER_DATA/admin.token"
  if [[ -s "$file" ]] && [[ "$(cat "$file")" =~ ^isro_[A-Za-z0-9]+_[A-Za-z0-9]+$ ]]; then
    cat "$file"
    return 0
  fi
  log "creating an operator token (ISORUN_ADMIN_TOKEN)"
  local token
  token="$(cluster_ctl operators create-token --name local-up)" || {
    show_log_tail "$CLUSTER_DATA/logs/isorunctl.log" 20
    die "isorunctl operators create-token failed"
  }
  token="$(tr -d '[:space:]' <<<"$token")"
  (umask 077 && printf '%s\n' "$token" >"$file.tmp")
  mv -f "$file.tmp" "$file"
  printf '%s\n' "$token"
}

# Creates the dev tenant and its key if missing; prints the key.
cluster_dev_tenant() {
  local keyfile="$CLUSTER_DATA/dev.key" tenants
  tenants="$(cluster_ctl tenants list)" || {
    show_log_tail "$CLUSTER_DATA/logs/isorunctl.log" 20
    die "isorunctl tenants list failed"
  }
  local new_tenant=0
  if ! awk '$1 == "dev" { found = 1 } END { exit !found }' <<<"$tenants"; then
    log "creating tenant dev (max 10 concurrent sandboxes)"
    cluster_ctl tenants create dev --max-concurrent 10 >>"$CLUSTER_DATA/logs/isorunctl.log" || {
      show_log_tail "$CLUSTER_DATA/logs/isorunctl.log" 20
      die "isorunctl tenants create dev failed"
    }
    new_tenant=1
  fi
  local need_key=1
  if ((new_tenant == 0)) && [[ -s "$keyfile" ]]; then
    need_key=0
    # Key format isr_<region>_<keyId>_<secret>: check that keyId is still listed and not revoked.
    local key_id keys
    key_id="$(cut -d_ -f3 "$keyfile")"
    if keys="$(cluster_ctl keys list dev)"; then
      # Usable when a row names key_id and its REVOKED* column, if there is one, is empty or "-".
      if ! awk -v id="$key_id" '
          NR == 1 { for (i = 1; i <= NF; i++) if (toupper($i) ~ /REVOK/) col = i; next }
          { for (i = 1; i <= NF; i++) if ($i == id) { found = 1; if (col && $col != "-" && $col != "") revoked = 1 } }
          END { exit !(found && !revoked) }' <<<"$keys"; then
        log "the key in $keyfile is unknown or revoked; making a new one"
        need_key=1
      fi
    else
      warn "isorunctl keys list dev failed; reusing $keyfile as is"
    fi
  fi
  if ((need_key)); then
    log "creating an API key for tenant dev"
    local key
    key="$(cluster_ctl keys create dev --region local)" || {
      show_log_tail "$CLUSTER_DATA/logs/isorunctl.log" 20
      die "isorunctl keys create dev failed"
    }
    key="$(tr -d '[:space:]' <<<"$key")"
    [[ "$key" =~ ^isr_local_[A-Za-z0-9]+_[A-Za-z0-9]+$ ]] ||
      warn "the new key does not look like isr_local_<keyId>_<secret>"
    (umask 077 && printf '%s\n' "$key" >"$keyfile.tmp")
    mv -f "$keyfile.tmp" "$keyfile"
  fi
  chmod 0600 "$keyfile"
  tr -d '[:space:]' <"$keyfile"
}

cluster_up() {
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --replicas) CLUSTER_REPLICAS="${2:-}"; shift 2 || die "--replicas needs a number" ;;
      --replicas=*) CLUSTER_REPLICAS="${1#--replicas=}"; shift ;;
      *) die "unknown option of up: $1 (up [--replicas N])" ;;
    esac
  done
  [[ "$CLUSTER_REPLICAS" =~ ^[1-5]$ ]] || die "--replicas must be 1 to 5"
  CLUSTER_DATA="$(abspath "${ISORUN_DATA_DIR:-$ISORUN_REPO/.data}")"
  local pg_port="${ISORUN_PG_PORT:-5433}"
  [[ -d "$CLUSTER_DATA" ]] || { mkdir -p "$CLUSTER_DATA" && chmod 0755 "$CLUSTER_DATA"; }
  mkdir -p "$CLUSTER_DATA/logs" "$CLUSTER_DATA/run"

  # One `up` per data folder: the lock is released by the kernel when this script ends, however.
  exec 9>"$CLUSTER_DATA/up.lock"
  if ! flock -n 9; then
    local other
    other="$(cat "$CLUSTER_DATA/up.pid" 2>/dev/null || echo '?')"
    if [[ "$other" =~ ^[0-9]+$ ]] && ! kill -0 "$other" 2>/dev/null; then
      die "$CLUSTER_DATA/up.lock is held by processes left over from an earlier './isorun up' (pid $other, gone); find them with: ls -l /proc/[0-9]*/fd 2>/dev/null | grep up.lock"
    fi
    die "another './isorun up' (pid $other) is already running on $CLUSTER_DATA; stop it first (Ctrl-C there, or kill -TERM $other), or use another ISORUN_DATA_DIR and ports"
  fi
  printf '%s\n' "$$" >"$CLUSTER_DATA/up.pid"
  trap cluster_on_signal INT TERM
  trap cluster_cleanup EXIT
  rm -f "$CLUSTER_DATA/env"
  cluster_kill_leftovers

  build_all

  local q s l r1 r2 gh gp qm sm lm r1m r2m gm sa
  q="$(cluster_port QUOTA)" s="$(cluster_port SCHEDULER)" l="$(cluster_port LIFECYCLE)"
  sa="$(cluster_port SCHEDULER_ADMIN)"
  r1="$(cluster_port RUNNER_1)" r2="$(cluster_port RUNNER_2)"
  gh="$(cluster_port GATEWAY_HTTP)" gp="$(cluster_port GATEWAY_PUBLIC)"
  qm="$(cluster_port QUOTA_METRICS)" sm="$(cluster_port SCHEDULER_METRICS)" lm="$(cluster_port LIFECYCLE_METRICS)"
  r1m="$(cluster_port RUNNER_1_METRICS)" r2m="$(cluster_port RUNNER_2_METRICS)" gm="$(cluster_port GATEWAY_METRICS)"
  local r1t r2t
  r1t="$(cluster_port RUNNER_1_TUNNEL)" r2t="$(cluster_port RUNNER_2_TUNNEL)"
  cluster_require_free cluster "$q" "$s" "$l" "$r1" "$r2" "$gh" "$gp" "$qm" "$sm" "$lm" "$r1m" "$r2m" "$gm" "$sa" \
    "$r1t" "$r2t"
  local i key
  for ((i = 2; i <= CLUSTER_REPLICAS; i++)); do
    for key in QUOTA QUOTA_METRICS SCHEDULER SCHEDULER_METRICS SCHEDULER_ADMIN LIFECYCLE \
      LIFECYCLE_METRICS GATEWAY_HTTP GATEWAY_METRICS GATEWAY_PUBLIC; do
      cluster_require_free "replica $i" "$(cluster_replica_port "$key" "$i")"
    done
  done
  # What clients are given: every replica (a list; services/kit MakeChannel).
  local quotas schedulers lifecycles
  quotas="$(cluster_replica_list QUOTA)" schedulers="$(cluster_replica_list SCHEDULER)"
  lifecycles="$(cluster_replica_list LIFECYCLE)"

  # PostgreSQL
  pg_prepare "$CLUSTER_DATA"
  pg_start "$pg_port" "$CLUSTER_DATA/logs/postgres.log"
  CLUSTER_PG_PID="$(pg_pid)" || true
  pg_ensure_db "$pg_port" isorun
  export ISORUN_DATABASE_URL
  ISORUN_DATABASE_URL="$(pg_url "$pg_port" isorun)"

  # Schema and the dev tenant
  log "applying migrations"
  cluster_ctl migrate >>"$CLUSTER_DATA/logs/isorunctl.log" || {
    show_log_tail "$CLUSTER_DATA/logs/isorunctl.log" 30
    die "isorunctl migrate failed"
  }
  local api_key admin_token
  api_key="$(cluster_dev_tenant)"
  admin_token="$(cluster_operator_token)"

  # Mutual TLS between the services (ISORUN_TLS=false in this environment turns it off).
  cluster_tls_certs
  local -a tls_quota tls_scheduler tls_lifecycle tls_runner tls_gateway
  mapfile -t tls_quota < <(cluster_tls_args quota)
  mapfile -t tls_scheduler < <(cluster_tls_args scheduler)
  mapfile -t tls_lifecycle < <(cluster_tls_args lifecycle)
  mapfile -t tls_runner < <(cluster_tls_args runner)
  mapfile -t tls_gateway < <(cluster_tls_args gateway)

  # Services, in dependency order; each must listen before the next starts.
  local h=127.0.0.1
  local name
  for ((i = 1; i <= CLUSTER_REPLICAS; i++)); do
    name="$(cluster_replica_name quota "$i")"
    cluster_start "$name" isorun-quota --grpc_addr="$h:$(cluster_replica_port QUOTA "$i")" \
      --metrics_addr="$h:$(cluster_replica_port QUOTA_METRICS "$i")" "${tls_quota[@]}"
    wait_for_tcp "$name" "$h" "$(cluster_replica_port QUOTA "$i")" "${CLUSTER_PIDS[$name]}" "$CLUSTER_DATA/logs/$name.log"
  done
  # Scheduler replicas: the first to take the leader lock places, the others refuse (retryable).
  for ((i = 1; i <= CLUSTER_REPLICAS; i++)); do
    name="$(cluster_replica_name scheduler "$i")"
    cluster_start "$name" isorun-scheduler --grpc_addr="$h:$(cluster_replica_port SCHEDULER "$i")" \
      --metrics_addr="$h:$(cluster_replica_port SCHEDULER_METRICS "$i")" \
      --admin_http_addr="$h:$(cluster_replica_port SCHEDULER_ADMIN "$i")" "${tls_scheduler[@]}"
    wait_for_tcp "$name" "$h" "$(cluster_replica_port SCHEDULER "$i")" "${CLUSTER_PIDS[$name]}" "$CLUSTER_DATA/logs/$name.log"
  done
  # The gateway's public-URL proxy reaches sandbox ports through the runners' tunnel listeners,
  # which accept only connections that present this secret (new for every start; given to the
  # runners and the gateway in the environment, not on their command lines).
  export ISORUN_TUNNEL_TOKEN
  ISORUN_TUNNEL_TOKEN="$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
  # Registries images may come from: by default the local one this `up` serves.
  local registries="${ISORUN_REGISTRIES:-$h:$(cluster_port REGISTRY)}"
  for ((i = 1; i <= CLUSTER_REPLICAS; i++)); do
    name="$(cluster_replica_name lifecycle "$i")"
    cluster_start "$name" isorun-lifecycle --grpc_addr="$h:$(cluster_replica_port LIFECYCLE "$i")" \
      --metrics_addr="$h:$(cluster_replica_port LIFECYCLE_METRICS "$i")" \
      --quota_addr="$quotas" --scheduler_addr="$schedulers" "${tls_lifecycle[@]}" \
      --public_url_template="http://{port}-{publicId}.localhost:$gp" --registries="$registries"
    wait_for_tcp "$name" "$h" "$(cluster_replica_port LIFECYCLE "$i")" "${CLUSTER_PIDS[$name]}" "$CLUSTER_DATA/logs/$name.log"
  done
  # Real sandboxes need root and the image tools; otherwise the simulated driver.
  local driver="${ISORUN_RUNNER_DRIVER:-}"
  if [[ -z "$driver" ]]; then
    driver=runc
    if ! is_root; then
      warn "not root: runners use the simulated driver (no real sandboxes); run as root for runc"
      driver=sim
    elif ! command -v runc >/dev/null || ! command -v skopeo >/dev/null ||
         ! command -v umoci >/dev/null || ! command -v docker-registry >/dev/null; then
      warn "runc, skopeo, umoci or docker-registry missing: runners use the simulated driver"
      driver=sim
    fi
  fi
  local -a driver_args=(--driver=sim)
  if [[ "$driver" == runc ]]; then
    log "starting the image registry (builds the test images on first use)"
    CLUSTER_REGISTRY="$(registry_start "$CLUSTER_DATA/registry" "$(cluster_port REGISTRY)")" ||
      die "the image registry did not start (log: $CLUSTER_DATA/registry/registry.log)"
    # The local registry serves plain HTTP: the only one reached without TLS verification.
    driver_args=(--driver=runc --registry="$CLUSTER_REGISTRY" --registries="$registries"
                 --insecure_registries="$CLUSTER_REGISTRY")
  fi
  local n port mport tport
  for n in 1 2; do
    port="$(cluster_port "RUNNER_$n")" mport="$(cluster_port "RUNNER_${n}_METRICS")"
    tport="$(cluster_port "RUNNER_${n}_TUNNEL")"
    local -a data_args=()
    # Each runner its own sandbox addresses (README: "Sandbox networks"); ISORUN_EGRESS_DENY and
    # ISORUN_DNS_UPSTREAM reach the runners as their --egress_deny and --dns_upstream.
    [[ "$driver" == runc ]] &&
      data_args=(--data_dir="$(cluster_runner_dir "$n")" --sandbox_network="100.96.$n.0/24")
    cluster_start "runner-$n" isorun-runner --grpc_addr="$h:$port" --metrics_addr="$h:$mport" \
      --scheduler_addr="$schedulers" --runner_name="runner-$n" --region=local --tunnel_addr="$h:$tport" \
      "${driver_args[@]}" "${data_args[@]}" "${tls_runner[@]}"
  done
  for n in 1 2; do
    port="$(cluster_port "RUNNER_$n")"
    wait_for_tcp "runner-$n" "$h" "$port" "${CLUSTER_PIDS[runner-$n]}" "$CLUSTER_DATA/logs/runner-$n.log"
  done
  # The operator routes ask the scheduler replicas' admin listeners in turn (followers answer 503).
  local admins=""
  for ((i = 1; i <= CLUSTER_REPLICAS; i++)); do
    admins+="${admins:+,}http://$h:$(cluster_replica_port SCHEDULER_ADMIN "$i")"
  done
  local extra_gateways="" ghi gpi
  for ((i = 1; i <= CLUSTER_REPLICAS; i++)); do
    name="$(cluster_replica_name gateway "$i")"
    ghi="$(cluster_replica_port GATEWAY_HTTP "$i")" gpi="$(cluster_replica_port GATEWAY_PUBLIC "$i")"
    cluster_start "$name" isorun-gateway --http_addr="$h:$ghi" \
      --metrics_addr="$h:$(cluster_replica_port GATEWAY_METRICS "$i")" \
      --lifecycle_addr="$lifecycles" --quota_addr="$quotas" --region=local \
      --scheduler_admin_url="$admins" --dashboard_dir="$ISORUN_BUILD_DIR/dashboard" "${tls_gateway[@]}" \
      --public_addr="$h:$gpi" --public_domain=localhost
    wait_for_tcp "$name" "$h" "$ghi" "${CLUSTER_PIDS[$name]}" "$CLUSTER_DATA/logs/$name.log"
    wait_for_http "$name" "http://$h:$ghi/healthz" "${CLUSTER_PIDS[$name]}" "$CLUSTER_DATA/logs/$name.log"
    if ((i > 1)); then
      extra_gateways+="    API replica  http://$h:$ghi   (public URLs http://$h:$gpi)"$'\n'
    fi
  done

  # Ready: the env file for tools and tests.
  (
    umask 077
    cat >"$CLUSTER_DATA/env.tmp" <<ENV
ISORUN_API_URL=http://$h:$gh
ISORUN_API_KEY=$api_key
ISORUN_PUBLIC_URL=http://$h:$gp
ISORUN_DATABASE_URL=$ISORUN_DATABASE_URL
ISORUN_REGISTRY=$CLUSTER_REGISTRY
ISORUN_ADMIN_TOKEN=$admin_token
ISORUN_TLS_DIR=$CLUSTER_DATA/tls
ISORUN_GRPC_QUOTA=$quotas
ISORUN_GRPC_SCHEDULER=$schedulers
ISORUN_GRPC_LIFECYCLE=$lifecycles
ISORUN_GRPC_RUNNER_1=$h:$r1
ISORUN_GRPC_RUNNER_2=$h:$r2
ISORUN_METRICS_GATEWAY=http://$h:$gm/metrics
ISORUN_METRICS_QUOTA=http://$h:$qm/metrics
ISORUN_METRICS_SCHEDULER=http://$h:$sm/metrics
ISORUN_METRICS_LIFECYCLE=http://$h:$lm/metrics
ISORUN_METRICS_RUNNER_1=http://$h:$r1m/metrics
ISORUN_METRICS_RUNNER_2=http://$h:$r2m/metrics
ENV
  )
  mv -f "$CLUSTER_DATA/env.tmp" "$CLUSTER_DATA/env"

  local rel="$CLUSTER_DATA"
  [[ "$rel" == "$PWD"/* ]] && rel="${rel#"$PWD"/}"
  cat >&2 <<BANNER

  Isorun local cluster is ready.
    API          http://$h:$gh   (tenant dev, key in $rel/dev.key)
    dashboard    http://$h:$gh/dashboard/   (operator token in $rel/admin.token)
    public URLs  http://$h:$gp
${extra_gateways}    replicas     $CLUSTER_REPLICAS of quota, scheduler, lifecycle and gateway
    PostgreSQL   $ISORUN_DATABASE_URL
    environment  source $rel/env
    logs         $rel/logs/
  Ctrl-C stops everything.

BANNER

  # Watch: any child that ends, or PostgreSQL going away, stops the whole cluster.
  local done_pid status name
  while true; do
    sleep 2 9>&- &
    CLUSTER_TICK_PID=$!
    status=0
    done_pid=""
    wait -n -p done_pid "${CLUSTER_PIDS[@]}" "$CLUSTER_TICK_PID" 2>/dev/null || status=$?
    if [[ "$done_pid" == "$CLUSTER_TICK_PID" ]]; then
      if [[ -n "$CLUSTER_PG_PID" ]] && ! kill -0 "$CLUSTER_PG_PID" 2>/dev/null; then
        show_log_tail "$CLUSTER_DATA/logs/postgres.log" 30
        log "PostgreSQL (pid $CLUSTER_PG_PID) exited unexpectedly; stopping everything"
        exit 1
      fi
      continue
    fi
    for name in "${CLUSTER_ORDER[@]}"; do
      if [[ "${CLUSTER_PIDS[$name]}" == "$done_pid" ]]; then
        show_log_tail "$CLUSTER_DATA/logs/$name.log" 30
        log "$name (pid $done_pid) exited unexpectedly with status $status; stopping everything"
        CLUSTER_PIDS[$name]=""
        exit 1
      fi
    done
  done
}
