#!/usr/bin/env bash
# shellcheck shell=bash
# A local OCI registry (Debian's docker-registry, distribution 2.8) on loopback, with the test
# images built from Debian's busybox-static by umoci and pushed by skopeo:
#   busybox:1.36  busybox-static alone (about 1 MB compressed)
#   fat:1.0       busybox plus a layer of $ISORUN_FAT_IMAGE_MB MiB of random data (default 48), so
#                 that cold pulls and cache eviction are measurable
#
# Sourced (by ./isorun's cluster script) it defines functions; run, it is a small CLI:
#   scripts/registry.sh start DIR PORT   start (or reuse) a registry with data in DIR in the
#                                        background, push the images; prints host:port
#   scripts/registry.sh stop DIR         stop the registry started with DIR (keeps its data)
#   scripts/registry.sh status DIR       print host:port and exit 0 if it runs
#   scripts/registry.sh serve DIR PORT   run the registry in the foreground (exec; for callers
#                                        that own the process, like the C++ test fixtures)
#   scripts/registry.sh push DIR [ADDR]  wait for the registry of DIR (at ADDR) and push missing
#                                        images; prints host:port
#   scripts/registry.sh push-unique DIR ADDR NAME COUNT
#                                        push COUNT images NAME:TAG, each busybox:1.36 plus a tiny
#                                        layer of its own (a fresh digest no cache holds: cold
#                                        starts for benchmarks); prints NAME:TAG, one a line
# start and push are idempotent: a second start with the same DIR reuses the running registry and
# pushes only missing images. Images are built once into $ISORUN_TEST_IMAGES_DIR (default DIR/build),
# which several registries may share (tests do): building takes a lock.

if [[ -z "${_ISORUN_LIB_SH:-}" ]]; then
  # shellcheck source=scripts/lib.sh
  source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
fi

ISORUN_FAT_IMAGE_MB="${ISORUN_FAT_IMAGE_MB:-48}"
REGISTRY_IMAGES=(busybox:1.36 fat:1.0)

registry_check_tools() {
  local t missing=()
  for t in docker-registry skopeo umoci; do
    command -v "$t" >/dev/null 2>&1 || missing+=("$t")
  done
  [[ -x /bin/busybox ]] && file_is_static /bin/busybox || missing+=(busybox-static)
  ((${#missing[@]} == 0)) ||
    die "registry needs: ${missing[*]} (apt-get install docker-registry skopeo umoci busybox-static)"
}

# True when $1 is a statically linked executable (busybox-static, not the dynamic busybox).
file_is_static() {
  # ldd fails on a static executable ("not a dynamic executable").
  ! ldd "$1" >/dev/null 2>&1
}

# registry_pid DIR: prints the pid of the registry of DIR if it runs.
registry_pid() {
  local dir="$1" pid
  pid="$(cat "$dir/registry.pid" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  # Only if that pid still runs docker-registry with our config (pids are reused).
  [[ "$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline")" == *"$dir/config.yml"* ]] || return 1
  printf '%s\n' "$pid"
}

# registry_address DIR: host:port of the registry of DIR (from its config).
registry_address() {
  sed -n 's/^  addr: *//p' "$1/config.yml" 2>/dev/null
}

# Changes whenever the recipe below changes, so a shared build dir is rebuilt.
REGISTRY_RECIPE="v1 fat=${ISORUN_FAT_IMAGE_MB}MiB"

# registry_build_dir DIR: where the images of the registry of DIR are built.
registry_build_dir() {
  printf '%s\n' "${ISORUN_TEST_IMAGES_DIR:-$1/build}"
}

# registry_build_images DIR: builds the test images into the OCI layout BUILD/layout (once).
registry_build_images() {
  local build
  build="$(registry_build_dir "$1")"
  mkdir -p "$(dirname "$build")"
  (
    flock 9
    registry_build_images_locked "$build"
  ) 9>"$build.lock"
}

registry_build_images_locked() {
  local build="$1"
  local layout="$build/layout" work="$build/work"
  if [[ "$(cat "$build/done" 2>/dev/null)" == "$REGISTRY_RECIPE" ]]; then
    return 0
  fi
  rm -rf "$build"
  mkdir -p "$build"
  log "building test images (busybox:1.36, fat:1.0) in $build"
  umoci init --layout "$layout" || die "umoci init failed"
  umoci new --image "$layout:base" || die "umoci new failed"
  umoci config --image "$layout:base" --config.cmd /bin/sh --config.workingdir / \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin ||
    die "umoci config failed"
  umoci unpack --image "$layout:base" "$work" >/dev/null || die "umoci unpack failed"
  local root="$work/rootfs"
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,root,tmp,proc,sys,dev,home,var/tmp}
  chmod 1777 "$root/tmp" "$root/var/tmp"
  chmod 0700 "$root/root"
  cp /bin/busybox "$root/bin/busybox"
  local applet
  while read -r applet; do
    [[ -n "$applet" && "$applet" != bin/busybox ]] || continue
    [[ -e "$root/$applet" ]] && continue
    # Absolute links: they resolve inside the container's root.
    ln -s /bin/busybox "$root/$applet"
  done < <(/bin/busybox --list-full)
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
    >"$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
  printf 'sandbox\n' >"$root/etc/hostname"
  printf '127.0.0.1 localhost sandbox\n::1 localhost\n' >"$root/etc/hosts"
  umoci repack --refresh-bundle --image "$layout:busybox-1.36" "$work" || die "umoci repack failed"
  # fat:1.0 = busybox + one layer of random (incompressible) data.
  mkdir -p "$root/opt/fat"
  head -c "$((ISORUN_FAT_IMAGE_MB * 1024 * 1024))" /dev/urandom >"$root/opt/fat/blob.bin"
  umoci repack --image "$layout:fat-1.0" "$work" || die "umoci repack (fat) failed"
  rm -rf "$work"
  printf '%s\n' "$REGISTRY_RECIPE" >"$build/done"
}

# registry_push_images DIR: pushes every test image the registry of DIR does not have yet.
registry_push_images() {
  local dir="$1" addr image tag build
  addr="$(registry_address "$dir")"
  build="$(registry_build_dir "$dir")"
  for image in "${REGISTRY_IMAGES[@]}"; do
    if skopeo inspect --tls-verify=false --raw "docker://$addr/$image" >/dev/null 2>&1; then
      continue
    fi
    registry_build_images "$dir"
    tag="${image/:/-}"
    skopeo copy -q --dest-tls-verify=false "oci:$build/layout:$tag" "docker://$addr/$image" ||
      die "skopeo could not push $image to $addr"
    log "pushed $addr/$image"
  done
}

# registry_push_unique DIR ADDR NAME COUNT: pushes COUNT images NAME:<nonce>-<i> to ADDR, each
# busybox:1.36 plus one layer holding /etc/isorun-unique with its own tag, so each has a digest
# (and a layer) that no runner has cached. The busybox layer itself is shared, as it would be
# between real images of one base. Prints NAME:TAG, one a line.
registry_push_unique() {
  local dir="$1" addr="$2" name="$3" count="$4"
  [[ -n "$dir" && -n "$addr" && -n "$name" && "$count" =~ ^[0-9]+$ ]] ||
    die "usage: registry_push_unique DIR ADDR NAME COUNT"
  registry_build_images "$dir"
  local build tmp nonce i tag
  build="$(registry_build_dir "$dir")"
  tmp="$(mktemp -d -t isorun-unique.XXXXXX)"
  skopeo copy -q "oci:$build/layout:busybox-1.36" "oci:$tmp/layout:base" >&2 ||
    { rm -rf "$tmp"; die "skopeo could not copy the busybox image"; }
  nonce="$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
  for ((i = 1; i <= count; i++)); do
    tag="u$nonce-$i"
    mkdir -p "$tmp/layer-$i/etc"
    printf '%s\n' "$tag" >"$tmp/layer-$i/etc/isorun-unique"
    tar --numeric-owner --owner=0 --group=0 -C "$tmp/layer-$i" -cf "$tmp/layer-$i.tar" \
      etc/isorun-unique
    umoci raw add-layer --image "$tmp/layout:base" --tag "$tag" "$tmp/layer-$i.tar" >&2 ||
      { rm -rf "$tmp"; die "umoci could not add a layer"; }
    skopeo copy -q --dest-tls-verify=false "oci:$tmp/layout:$tag" "docker://$addr/$name:$tag" >&2 ||
      { rm -rf "$tmp"; die "skopeo could not push $name:$tag to $addr"; }
    printf '%s:%s\n' "$name" "$tag"
  done
  rm -rf "$tmp"
}

# registry_start DIR PORT: starts the registry (or reuses the one running with DIR) and pushes the
# test images. Prints host:port on stdout.
registry_start() {
  local dir="$1" port="$2"
  [[ -n "$dir" && -n "$port" ]] || die "usage: registry_start DIR PORT"
  registry_check_tools
  mkdir -p "$dir"
  dir="$(abspath "$dir")"
  local pid addr
  if pid="$(registry_pid "$dir")"; then
    addr="$(registry_address "$dir")"
    if [[ "$addr" != "127.0.0.1:$port" ]]; then
      log "registry of $dir runs on $addr, not port $port: restarting it"
      registry_stop "$dir"
    fi
  fi
  if ! pid="$(registry_pid "$dir")"; then
    registry_write_config "$dir" "$port"
    setsid docker-registry serve "$dir/config.yml" </dev/null >>"$dir/registry.log" 2>&1 9>&- &
    pid=$!
    echo "$pid" >"$dir/registry.pid"
    wait_for_http docker-registry "http://127.0.0.1:$port/v2/" "$pid" "$dir/registry.log" 30
  fi
  registry_push_images "$dir"
  registry_address "$dir"
}

# registry_write_config DIR PORT
registry_write_config() {
  local dir="$1" port="$2"
  mkdir -p "$dir/storage"
  cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/storage
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
EOF
}

# registry_stop DIR: stops the registry of DIR (SIGTERM, then SIGKILL after 5 s). Keeps its data.
registry_stop() {
  local dir="$1" pid i
  dir="$(abspath "$dir")"
  pid="$(registry_pid "$dir")" || { rm -f "$dir/registry.pid"; return 0; }
  kill -TERM "$pid" 2>/dev/null
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$dir/registry.pid"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  set -euo pipefail
  case "${1:-}" in
    start) registry_start "${2:-}" "${3:-}" ;;
    stop) registry_stop "${2:?usage: registry.sh stop DIR}" ;;
    status)
      d="$(abspath "${2:?usage: registry.sh status DIR}")"
      registry_pid "$d" >/dev/null && registry_address "$d"
      ;;
    serve)
      registry_check_tools
      mkdir -p "${2:?usage: registry.sh serve DIR PORT}"
      d="$(abspath "$2")"
      registry_write_config "$d" "${3:?usage: registry.sh serve DIR PORT}"
      echo "$$" >"$d/registry.pid"
      exec docker-registry serve "$d/config.yml"
      ;;
    push)
      d="$(abspath "${2:?usage: registry.sh push DIR [HOST:PORT]}")"
      a="${3:-$(registry_address "$d")}"
      [[ -n "$a" ]] || die "no registry config in $d"
      [[ "$a" == "$(registry_address "$d")" ]] || die "the registry of $d is not at $a"
      wait_for_http docker-registry "http://$a/v2/" "" "$d/registry.log" 30
      registry_push_images "$d"
      printf '%s\n' "$a"
      ;;
    push-unique)
      usage="usage: registry.sh push-unique DIR HOST:PORT NAME COUNT"
      registry_check_tools
      registry_push_unique "$(abspath "${2:?$usage}")" "${3:?$usage}" "${4:?$usage}" "${5:?$usage}"
      ;;
    *)
      echo "usage: $0 start DIR PORT | stop DIR | status DIR | serve DIR PORT | push DIR |" \
        "push-unique DIR ADDR NAME COUNT" >&2
      exit 2
      ;;
  esac
fi
