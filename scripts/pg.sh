# shellcheck shell=bash
# PostgreSQL 15 in a folder of our own: no system service. Sourced by ./isorun (and by bench scripts).
#
#   pg_prepare DATA_DIR   -> sets PG_DATA (the cluster folder: DATA_DIR/pg, or a fallback, see below)
#   pg_start PORT LOGFILE -> initdb PG_DATA if new, then starts it on 127.0.0.1:PORT (no Unix socket)
#   pg_ensure_db PORT DB  -> creates database DB if missing
#   pg_stop               -> fast shutdown of PG_DATA's server, if running
#   pg_url PORT DB        -> prints postgresql://isorun@127.0.0.1:PORT/DB
#
# PostgreSQL refuses to run as root. As root, the server runs as the system user `isorun` (created
# here if missing); otherwise as the current user. The superuser role is always `isorun`, trust auth,
# loopback only.

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PG_ROLE=isorun
PG_DATA="${PG_DATA:-}"

# The folder holding initdb, pg_ctl and postgres of PostgreSQL 15.
pg_bindir() {
  if [[ -n "${PG_BIN:-}" ]]; then printf '%s\n' "$PG_BIN"; return 0; fi
  local d=/usr/lib/postgresql/15/bin
  if [[ -x "$d/initdb" ]]; then printf '%s\n' "$d"; return 0; fi
  local initdb
  initdb="$(command -v initdb 2>/dev/null)" || die "PostgreSQL 15 not found (no $d/initdb, no initdb on PATH): run ./isorun deps"
  dirname "$(readlink -f "$initdb")"
}

# The OS user the server runs as.
pg_os_user() {
  if is_root; then printf 'isorun\n'; else id -un; fi
}

pg_ensure_os_user() {
  is_root || return 0
  id -u isorun >/dev/null 2>&1 && return 0
  log "creating system user isorun (PostgreSQL does not run as root)"
  useradd --system --no-create-home --shell /usr/sbin/nologin isorun ||
    id -u isorun >/dev/null 2>&1 || die "could not create user isorun"
}

# Runs a command as the server's OS user, from / (its working folder may be unreadable to that user).
pg_as_user() {
  if is_root; then
    (cd / && runuser -u isorun -- "$@")
  else
    "$@"
  fi
}

# pg_prepare DATA_DIR: chooses and creates PG_DATA for the data folder DATA_DIR.
pg_prepare() {
  local data
  data="$(abspath "$1")"
  pg_ensure_os_user
  local user
  user="$(pg_os_user)"
  [[ -d "$data" ]] || { mkdir -p "$data" && chmod 0755 "$data"; }
  if pg_as_user test -x "$data"; then
    PG_DATA="$data/pg"
    mkdir -p "$PG_DATA"
  else
    local hash
    hash="$(printf '%s' "$data" | sha1sum | cut -c1-12)"
    PG_DATA="/var/lib/isorun/pg-$hash"
    log "pg: $data is not reachable by user $user (a parent folder is not traversable);" \
      "PostgreSQL data goes in $PG_DATA instead"
    mkdir -p /var/lib/isorun
    chmod 0755 /var/lib/isorun
    mkdir -p "$PG_DATA"
  fi
  if is_root; then chown isorun: "$PG_DATA"; fi
  chmod 0700 "$PG_DATA"
  pg_as_user test -w "$PG_DATA" || die "pg: $PG_DATA is not writable by user $user"
  export PG_DATA
}

# True when a server runs on PG_DATA.
pg_running() {
  [[ -n "$PG_DATA" ]] || return 1
  local bin
  bin="$(pg_bindir)"
  pg_as_user "$bin/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1
}

# Prints the postmaster pid of PG_DATA's server, if any.
pg_pid() {
  [[ -n "$PG_DATA" ]] || return 1
  head -n1 "$PG_DATA/postmaster.pid" 2>/dev/null
}

pg_initdb() {
  local bin="$1" logfile="$2"
  local locale=(--locale=C.UTF-8)
  if [[ "$(LC_ALL=C.UTF-8 locale charmap 2>/dev/null)" != "UTF-8" ]]; then
    locale=(--no-locale)
  fi
  log "pg: initdb $PG_DATA"
  if ! pg_as_user "$bin/initdb" -D "$PG_DATA" --auth=trust --username="$PG_ROLE" --encoding=UTF8 \
    "${locale[@]}" >>"$logfile" 2>&1 9>&-; then
    show_log_tail "$logfile" 20
    die "pg: initdb failed (log: $logfile)"
  fi
}

# pg_start PORT LOGFILE
pg_start() {
  local port="$1" logfile="$2"
  [[ -n "$PG_DATA" ]] || die "pg_start: call pg_prepare first"
  local bin
  bin="$(pg_bindir)"
  mkdir -p "$(dirname "$logfile")"
  : >>"$logfile"
  if [[ ! -f "$PG_DATA/PG_VERSION" ]]; then
    if [[ -n "$(ls -A "$PG_DATA")" ]]; then
      die "pg: $PG_DATA is not empty and holds no PostgreSQL cluster; remove it or choose another data folder"
    fi
    pg_initdb "$bin" "$logfile"
  fi
  if pg_running; then
    log "pg: a server left over from an earlier run is still up on $PG_DATA; stopping it"
    pg_stop
  fi
  if tcp_open 127.0.0.1 "$port"; then
    die "pg: port $port on 127.0.0.1 is already in use (set ISORUN_PG_PORT to use another)"
  fi
  log "pg: starting PostgreSQL on 127.0.0.1:$port (data $PG_DATA, log $logfile)"
  # No -l: the log file is opened here, so it may sit where the server's user cannot reach.
  if ! pg_as_user "$bin/pg_ctl" -D "$PG_DATA" -w -t 120 \
    -o "-p $port -k '' -c listen_addresses=127.0.0.1 -c max_connections=300 -c shared_buffers=256MB -c fsync=on" \
    start >>"$logfile" 2>&1 </dev/null 9>&-; then
    show_log_tail "$logfile" 30
    die "pg: PostgreSQL did not start (log: $logfile)"
  fi
}

# pg_ensure_db PORT DB
pg_ensure_db() {
  local port="$1" db="$2" bin
  bin="$(pg_bindir)"
  local exists
  exists="$("$bin/psql" -h 127.0.0.1 -p "$port" -U "$PG_ROLE" -d postgres -XtAc \
    "select 1 from pg_database where datname = '$db'")" || die "pg: cannot connect on port $port"
  if [[ "$exists" != 1 ]]; then
    log "pg: creating database $db"
    "$bin/createdb" -h 127.0.0.1 -p "$port" -U "$PG_ROLE" "$db" || die "pg: createdb $db failed"
  fi
}

pg_stop() {
  [[ -n "$PG_DATA" ]] || return 0
  pg_running || return 0
  local bin
  bin="$(pg_bindir)"
  log "pg: stopping PostgreSQL ($PG_DATA)"
  pg_as_user "$bin/pg_ctl" -D "$PG_DATA" -w -t 60 stop -m fast >/dev/null 2>&1 9>&- ||
    warn "pg: pg_ctl stop failed for $PG_DATA"
}

pg_url() {
  printf 'postgresql://%s@127.0.0.1:%s/%s\n' "$PG_ROLE" "$1" "$2"
}

# pg_throwaway DIR: a fresh PostgreSQL with its data under DIR, on a free port (for benchmarks).
# Sets PG_PORT and exports ISORUN_TEST_DATABASE_URL (its superuser URL). Stop it with pg_stop.
pg_throwaway() {
  local dir="$1"
  pg_prepare "$dir"
  PG_PORT="$(pick_free_port)"
  pg_start "$PG_PORT" "$dir/postgres.log"
  export ISORUN_TEST_DATABASE_URL
  ISORUN_TEST_DATABASE_URL="$(pg_url "$PG_PORT" postgres)"
}
