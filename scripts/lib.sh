# shellcheck shell=bash
# Shared helpers for ./isorun and its scripts: logging, paths, TCP ports, waiting.
# Sourced, never run. Safe to source more than once.

[[ -n "${_ISORUN_LIB_SH:-}" ]] && return 0
_ISORUN_LIB_SH=1

ISORUN_REPO="${ISORUN_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)}"
ISORUN_BUILD_DIR="${ISORUN_BUILD_DIR:-$ISORUN_REPO/build}"
ISORUN_BIN_DIR="${ISORUN_BIN_DIR:-$ISORUN_BUILD_DIR/bin}"
# Absolute: tests run from the build folder, and services are started from other folders.
ISORUN_BUILD_DIR="$(realpath -m -- "$ISORUN_BUILD_DIR")"
ISORUN_BIN_DIR="$(realpath -m -- "$ISORUN_BIN_DIR")"

log() { printf '[isorun %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
warn() { log "warning: $*"; }
die() { log "error: $*"; exit 1; }

is_root() { [[ "$(id -u)" == 0 ]]; }

# Absolute path of $1, which need not exist yet.
abspath() {
  local p="$1"
  [[ "$p" == /* ]] || p="$PWD/$p"
  # Resolve the existing prefix so that the same folder always gives the same path.
  local dir="$p" rest=""
  while [[ ! -d "$dir" ]]; do
    rest="/$(basename "$dir")$rest"
    dir="$(dirname "$dir")"
  done
  printf '%s%s\n' "$(cd "$dir" && pwd -P)" "$rest"
}

# True when something accepts TCP connections on HOST:PORT.
tcp_open() {
  local host="$1" port="$2"
  (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
}

# Prints a TCP port on 127.0.0.1 that is free right now.
pick_free_port() {
  local port
  if command -v python3 >/dev/null 2>&1 &&
     port="$(python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])' 2>/dev/null)" && [[ "$port" =~ ^[0-9]+$ ]]; then
    printf '%s\n' "$port"
    return 0
  fi
  local i
  for ((i = 0; i < 200; i++)); do
    port=$((20000 + RANDOM % 30000))
    if ! tcp_open 127.0.0.1 "$port"; then
      printf '%s\n' "$port"
      return 0
    fi
  done
  die "could not find a free TCP port on 127.0.0.1"
}

# Prints the last lines of a log file, indented, to stderr.
show_log_tail() {
  local file="$1" lines="${2:-40}"
  if [[ -s "$file" ]]; then
    log "last $lines lines of $file:"
    tail -n "$lines" "$file" | sed 's/^/    | /' >&2
  else
    log "($file is empty or missing)"
  fi
}

# wait_for_tcp NAME HOST PORT PID LOGFILE [TIMEOUT_SEC]
# Waits until HOST:PORT accepts TCP. Dies, showing the log tail, if PID exits or time runs out.
wait_for_tcp() {
  local name="$1" host="$2" port="$3" pid="$4" logfile="$5" timeout="${6:-${ISORUN_START_TIMEOUT:-60}}"
  local deadline=$((SECONDS + timeout))
  until tcp_open "$host" "$port"; do
    if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
      show_log_tail "$logfile"
      die "$name exited before listening on $host:$port (log: $logfile)"
    fi
    if ((SECONDS >= deadline)); then
      show_log_tail "$logfile"
      die "$name did not listen on $host:$port within ${timeout}s (log: $logfile)"
    fi
    sleep 0.1
  done
}

# wait_for_http NAME URL PID LOGFILE [TIMEOUT_SEC]: waits until URL answers 2xx.
wait_for_http() {
  local name="$1" url="$2" pid="$3" logfile="$4" timeout="${5:-${ISORUN_START_TIMEOUT:-60}}"
  local deadline=$((SECONDS + timeout))
  until curl -sf -o /dev/null --max-time 2 "$url"; do
    if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
      show_log_tail "$logfile"
      die "$name exited before $url answered (log: $logfile)"
    fi
    if ((SECONDS >= deadline)); then
      show_log_tail "$logfile"
      log "last answer from $url:"
      curl -s --max-time 2 -i "$url" 2>&1 | sed 's/^/    | /' >&2 || true
      die "$name: $url did not answer 2xx within ${timeout}s (log: $logfile)"
    fi
    sleep 0.2
  done
}

# sanitize_mode MODE: `build` and `test` with --sanitize=MODE work in a tree of their own,
# instrumented: address (AddressSanitizer with LeakSanitizer, plus UndefinedBehaviorSanitizer)
# in build-asan/, thread (ThreadSanitizer) in build-tsan/. See sanitize_cmake_flags in build.sh.
sanitize_mode() {
  case "$1" in
    address | asan) ISORUN_SANITIZE=address; ISORUN_BUILD_DIR="$ISORUN_REPO/build-asan" ;;
    thread | tsan) ISORUN_SANITIZE=thread; ISORUN_BUILD_DIR="$ISORUN_REPO/build-tsan" ;;
    *) die "--sanitize takes address or thread, not '$1'" ;;
  esac
  ISORUN_BIN_DIR="$ISORUN_BUILD_DIR/bin"
  export ISORUN_SANITIZE ISORUN_BUILD_DIR ISORUN_BIN_DIR
}
