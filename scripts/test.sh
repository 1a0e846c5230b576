# shellcheck shell=bash
# `./isorun test`: every ctest test against a throwaway PostgreSQL. Sourced by ./isorun.

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=scripts/pg.sh
source "$(dirname "${BASH_SOURCE[0]}")/pg.sh"
# shellcheck source=scripts/build.sh
source "$(dirname "${BASH_SOURCE[0]}")/build.sh"

TEST_TMP=""
TEST_CTEST_PID=""

test_cleanup() {
  local rc=$?
  trap '' INT TERM
  set +e
  if [[ -n "$TEST_CTEST_PID" ]]; then
    log "stopping ctest and its tests"
    kill -TERM -- "-$TEST_CTEST_PID" 2>/dev/null
    local i
    for ((i = 0; i < 50; i++)); do
      kill -0 -- "-$TEST_CTEST_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL -- "-$TEST_CTEST_PID" 2>/dev/null
    wait "$TEST_CTEST_PID" 2>/dev/null
  fi
  pg_stop
  if [[ -n "$TEST_TMP" ]]; then
    if ((rc != 0)) && [[ -s "$TEST_TMP/postgres.log" && -d "$ISORUN_BUILD_DIR" ]]; then
      mkdir -p "$ISORUN_BUILD_DIR/Testing"
      cp -f "$TEST_TMP/postgres.log" "$ISORUN_BUILD_DIR/Testing/postgres.log" &&
        log "PostgreSQL's log of this run: $ISORUN_BUILD_DIR/Testing/postgres.log"
    fi
    # PG_DATA sits outside TEST_TMP when TEST_TMP was not reachable by the server's user.
    if [[ -n "$PG_DATA" && "$PG_DATA" != "$TEST_TMP"/* && "$PG_DATA" == /var/lib/isorun/pg-* ]]; then
      rm -rf "$PG_DATA"
    fi
    rm -rf "$TEST_TMP"
  fi
  exit "$rc"
}

# Where every instrumented process of a sanitizer run writes its reports (one file per process).
SANITIZE_REPORTS=""

# sanitize_test_env ARRAY: sets the sanitizers' options for the tests and every process they start
# (the services inherit them), and puts the ctest selection of the mode into ARRAY. Reports go to
# files, not stderr: a service's report would otherwise end in a log that a passing test never
# shows. Suppressions (scripts/sanitizers/) name third-party code only, never ours. Options already
# in ASAN_OPTIONS, LSAN_OPTIONS, UBSAN_OPTIONS or TSAN_OPTIONS come last and so win (e.g.
# ASAN_OPTIONS=fast_unwind_on_malloc=0 for whole stacks through libraries without frame pointers).
sanitize_test_env() {
  local -n sel="$1"
  local supp="$ISORUN_REPO/scripts/sanitizers"
  SANITIZE_REPORTS="$ISORUN_BUILD_DIR/Testing/sanitizer"
  rm -rf "$SANITIZE_REPORTS"
  mkdir -p "$SANITIZE_REPORTS"
  chmod 0777 "$SANITIZE_REPORTS"
  local common="log_path=$SANITIZE_REPORTS/report:log_exe_name=1:print_stacktrace=1"
  case "$ISORUN_SANITIZE" in
    address)
      export ASAN_OPTIONS="$common:detect_leaks=1:halt_on_error=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
      export LSAN_OPTIONS="suppressions=$supp/lsan.supp:print_suppressions=0${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
      export UBSAN_OPTIONS="$common:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
      sel=(-L 'unit|pg|e2e')
      log "AddressSanitizer and UndefinedBehaviorSanitizer: unit, pg and e2e tests"
      ;;
    thread)
      # Debian's gRPC, protobuf and abseil are not instrumented: TSan sees neither their
      # accesses nor their atomics, only the libc calls they make (memcpy, sendmsg, free), which
      # then look like races with each other. ignore_noninstrumented_modules drops what those
      # calls do; our own code's accesses are all still checked.
      export TSAN_OPTIONS="$common:halt_on_error=1:second_deadlock_stack=1:ignore_noninstrumented_modules=1:suppressions=$supp/tsan.supp${TSAN_OPTIONS:+:$TSAN_OPTIONS}"
      sel=(-L tsan)
      log "ThreadSanitizer: the concurrency tests (label tsan)"
      ;;
  esac
}

# sanitize_reports: prints every report of the run; false when there is one.
sanitize_reports() {
  local files=()
  mapfile -t files < <(find "$SANITIZE_REPORTS" -type f -size +0 | sort)
  if ((${#files[@]} == 0)); then
    log "sanitizers ($ISORUN_SANITIZE): no report"
    return 0
  fi
  local f
  for f in "${files[@]}"; do
    log "sanitizer report $f:"
    head -n 80 "$f" | sed 's/^/    | /' >&2
  done
  warn "sanitizers ($ISORUN_SANITIZE): ${#files[@]} report(s), in $SANITIZE_REPORTS"
  return 1
}

# run_tests [CTEST_ARGS...]
run_tests() {
  build_all
  TEST_TMP="$(mktemp -d -t isorun-test.XXXXXX)"
  chmod 0755 "$TEST_TMP"
  trap test_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  pg_prepare "$TEST_TMP"
  local port
  port="$(pick_free_port)"
  pg_start "$port" "$TEST_TMP/postgres.log"
  export ISORUN_TEST_DATABASE_URL
  ISORUN_TEST_DATABASE_URL="$(pg_url "$port" postgres)"
  export ISORUN_BIN_DIR ISORUN_REPO
  # The runner's e2e tests build their test images once here (shared by their registries).
  export ISORUN_TEST_IMAGES_DIR="${ISORUN_TEST_IMAGES_DIR:-$ISORUN_BUILD_DIR/test-images}"
  log "tests use $ISORUN_TEST_DATABASE_URL"
  # ctest runs in a session of its own, so that on SIGINT or SIGTERM the trap can stop it and every
  # test it started (a signal interrupts `wait` at once, not a foreground command).
  local status=0 junit="$ISORUN_BUILD_DIR/Testing/junit.xml"
  rm -f "$junit"
  local select=()
  [[ -n "${ISORUN_SANITIZE:-}" ]] && sanitize_test_env select
  setsid ctest --test-dir "$ISORUN_BUILD_DIR" --output-on-failure -j2 --timeout 300 \
    --output-junit "$junit" "${select[@]}" "$@" &
  TEST_CTEST_PID=$!
  wait "$TEST_CTEST_PID" || status=$?
  TEST_CTEST_PID=""
  if [[ -n "${ISORUN_SANITIZE:-}" ]] && ! sanitize_reports; then
    ((status != 0)) || status=1
  fi
  # Every skipped test with its reason; under CI as root (where every tool and privilege is
  # present) a skip fails the run, so "100% passed" never hides a suite that did not run.
  local report_args=()
  if [[ "${CI:-}" == true ]] && is_root; then report_args+=(--fail-on-skip); fi
  if [[ -f "$junit" ]]; then
    python3 "$ISORUN_REPO/scripts/test_report.py" "$junit" "${report_args[@]}" || {
      ((status != 0)) || status=1
    }
  elif ((status == 0)); then
    warn "ctest wrote no report ($junit)"
  fi
  exit "$status"
}
