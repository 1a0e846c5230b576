# shellcheck shell=bash
# `./isorun images`: the service images as OCI images, without a container engine. Sourced by
# ./isorun; the Dockerfile builds the same images where Docker runs.
#
# Each image's root filesystem is the binary (stripped) plus exactly the shared libraries ldd
# reports for it, from this Debian 12 machine (the packages scripts/deps.sh installs): no package
# manager, shell or mirror is involved, so a build takes seconds and needs no network. Layers:
#   base      the libraries of all isorun binaries, /etc/passwd (root, nonroot 65532), CA
#             certificates: shared by every image
#   <name>    one layer: the binary (runner: also runc, skopeo, umoci and their own libraries, the
#             sandbox init and skopeo's policy)
# Images: gateway, lifecycle, quota, scheduler, runner, ctl, named isorun-<name>:<tag> when pushed.

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

IMAGES_NAMES=(gateway lifecycle quota scheduler runner ctl)
# Bumped whenever what goes into an image changes (the cache key also covers the binaries).
IMAGES_RECIPE=v2

images_binary() {
  case "$1" in
    ctl) printf 'isorunctl\n' ;;
    *) printf 'isorun-%s\n' "$1" ;;
  esac
}

images_check_tools() {
  local t missing=()
  for t in umoci skopeo ldd strip sha256sum jq; do
    command -v "$t" >/dev/null 2>&1 || missing+=("$t")
  done
  ((${#missing[@]} == 0)) || die "images need: ${missing[*]} (./isorun deps)"
}

# images_libs FILE...: the shared libraries (and the loader) the files load, one path a line.
images_libs() {
  local f
  for f in "$@"; do
    ldd "$f" 2>/dev/null | awk '
      $2 == "=>" && $3 ~ /^\// { print $3 }
      $1 ~ /^\// { print $1 }'
  done | sort -u
}

# images_put ROOT FILE [DEST]: copies FILE (symlinks followed) into ROOT at DEST (default: its own
# path with its folder resolved, so /lib/x/libc.so.6 lands in usr/lib/x on merged-/usr Debian).
images_put() {
  local root="$1" file="$2" dest="${3:-}"
  if [[ -z "$dest" ]]; then
    dest="$(realpath "$(dirname "$file")")/$(basename "$file")"
  fi
  mkdir -p "$root$(dirname "$dest")"
  cp -L --preserve=mode "$file" "$root$dest"
}

# images_put_binary ROOT FILE DEST: a stripped copy (the build's binaries carry debug info).
images_put_binary() {
  local root="$1" file="$2" dest="$3"
  mkdir -p "$root$(dirname "$dest")"
  strip --strip-unneeded -o "$root$dest" "$file"
  chmod 0755 "$root$dest"
}

# images_base_files ROOT: what every image has besides libraries.
images_base_files() {
  local root="$1"
  mkdir -p "$root"/{usr/bin,usr/sbin,usr/lib,usr/lib64,usr/local/bin,etc/ssl/certs,tmp,var/tmp}
  ln -s usr/bin "$root/bin"
  ln -s usr/sbin "$root/sbin"
  ln -s usr/lib "$root/lib"
  ln -s usr/lib64 "$root/lib64"
  chmod 1777 "$root/tmp" "$root/var/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin\n' \
    >"$root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
  printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
  # PostgreSQL with sslmode=verify-full and registries over HTTPS verify against these.
  [[ -f /etc/ssl/certs/ca-certificates.crt ]] && cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
  return 0
}

# images_build BIN_DIR OUT: builds every image into the OCI layout OUT/layout (tags = names),
# unless OUT/done says the same recipe and binaries were built already.
images_build() {
  local bin="$1" out="$2"
  images_check_tools
  local name b
  local -a binaries=()
  for name in "${IMAGES_NAMES[@]}"; do
    b="$bin/$(images_binary "$name")"
    [[ -x "$b" ]] || die "$b not found: run ./isorun build"
    binaries+=("$b")
  done
  [[ -x "$bin/isorun-sandbox-init" ]] || die "$bin/isorun-sandbox-init not found: run ./isorun build"
  local runner_tools=() t
  for t in runc skopeo umoci; do
    runner_tools+=("$(command -v "$t")") || die "$t not found (./isorun deps)"
  done
  local key
  key="$IMAGES_RECIPE $(sha256sum "${binaries[@]}" "$bin/isorun-sandbox-init" "${runner_tools[@]}" | awk '{ print $1 }' | sha256sum | cut -c1-16)"
  if [[ "$(cat "$out/done" 2>/dev/null)" == "$key" ]]; then
    log "images in $out are up to date"
    return 0
  fi
  rm -rf "$out"
  mkdir -p "$out"
  local layout="$out/layout" work="$out/work"
  umoci init --layout "$layout" >/dev/null || die "umoci init failed"
  umoci new --image "$layout:empty" >/dev/null || die "umoci new failed"

  # base: every library of the isorun binaries, in one layer all images share (a node running
  # several services pulls it once); each image adds its binary alone.
  local -a shared=()
  mapfile -t shared < <(images_libs "${binaries[@]}")
  umoci unpack --image "$layout:empty" "$work/base" >/dev/null || die "umoci unpack failed"
  images_base_files "$work/base/rootfs"
  local lib
  for lib in "${shared[@]}"; do images_put "$work/base/rootfs" "$lib"; done
  umoci repack --image "$layout:base" "$work/base" >/dev/null || die "umoci repack (base) failed"
  rm -rf "$work/base"

  for name in "${IMAGES_NAMES[@]}"; do
    b="$bin/$(images_binary "$name")"
    local dir="$work/$name" root
    umoci unpack --image "$layout:base" "$dir" >/dev/null || die "umoci unpack failed"
    root="$dir/rootfs"
    local -a files=("$b")
    images_put_binary "$root" "$b" "/usr/local/bin/$(basename "$b")"
    if [[ "$name" == runner ]]; then
      images_put_binary "$root" "$bin/isorun-sandbox-init" /usr/local/bin/isorun-sandbox-init
      for t in "${runner_tools[@]}"; do
        images_put "$root" "$t" "/usr/bin/$(basename "$t")"
        files+=("$t")
      done
      mkdir -p "$root/etc/containers"
      [[ -f /etc/containers/policy.json ]] && cp /etc/containers/policy.json "$root/etc/containers/"
      mkdir -p "$root/var/lib/isorun/runner"
    fi
    for lib in $(images_libs "${files[@]}"); do
      [[ -e "$root$(realpath "$(dirname "$lib")")/$(basename "$lib")" ]] || images_put "$root" "$lib"
    done
    umoci repack --image "$layout:$name" "$dir" >/dev/null || die "umoci repack ($name) failed"
    rm -rf "$dir"
    local user=65532:65532
    [[ "$name" == runner ]] && user=0:0
    umoci config --image "$layout:$name" --tag "$name" \
      --config.entrypoint "/usr/local/bin/$(basename "$b")" --config.user "$user" \
      --config.workingdir / --config.env PATH=/usr/local/bin:/usr/bin:/usr/sbin \
      --config.label "org.opencontainers.image.title=isorun-$name" \
      --config.label "org.opencontainers.image.source=isorun" >/dev/null || die "umoci config ($name) failed"
  done
  umoci rm --image "$layout:empty" >/dev/null 2>&1 || true
  umoci gc --layout "$layout" >/dev/null 2>&1 || true
  printf '%s\n' "$key" >"$out/done"
  log "built images in $layout: ${IMAGES_NAMES[*]}"
}

# images_size LAYOUT NAME: compressed bytes of the image (its layers and config), as pushed.
images_size() {
  local layout="$1" name="$2" index manifest
  index="$(jq -r --arg n "$name" '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $n) | .digest' "$layout/index.json")"
  manifest="$layout/blobs/sha256/${index#sha256:}"
  jq '[.layers[].size, .config.size] | add' "$manifest"
}

# images_push LAYOUT REGISTRY TAG: pushes every image as REGISTRY/isorun-<name>:TAG.
images_push() {
  local layout="$1" registry="$2" tag="$3" name
  for name in "${IMAGES_NAMES[@]}"; do
    skopeo copy -q --dest-tls-verify=false "oci:$layout:$name" \
      "docker://$registry/isorun-$name:$tag" || die "skopeo copy of $name to $registry failed"
  done
}

# ./isorun images [--no-push] [--tag TAG]: build, then push to the local registry (the one of
# `./isorun up`, data in <data dir>/registry, port ISORUN_PORT_REGISTRY or 5050; started if it
# does not run, and left running), and print each image's size.
images_main() {
  local push=1 tag="${ISORUN_IMAGE_TAG:-dev}"
  while (($#)); do
    case "$1" in
      --no-push) push=0 ;;
      --tag) tag="$2"; shift ;;
      *) die "usage: ./isorun images [--no-push] [--tag TAG]" ;;
    esac
    shift
  done
  # shellcheck source=scripts/build.sh
  source "$ISORUN_REPO/scripts/build.sh"
  build_all
  local out="$ISORUN_BUILD_DIR/images"
  images_build "$ISORUN_BIN_DIR" "$out"
  local name
  for name in "${IMAGES_NAMES[@]}"; do
    printf 'image_%s_bytes=%s\n' "$name" "$(images_size "$out/layout" "$name")"
  done
  ((push)) || return 0
  # shellcheck source=scripts/registry.sh
  source "$ISORUN_REPO/scripts/registry.sh"
  local data registry
  data="$(abspath "${ISORUN_DATA_DIR:-$ISORUN_REPO/.data}")"
  registry="$(registry_start "$data/registry" "${ISORUN_PORT_REGISTRY:-5050}")" ||
    die "the local registry did not start (log: $data/registry/registry.log)"
  images_push "$out/layout" "$registry" "$tag"
  for name in "${IMAGES_NAMES[@]}"; do
    printf '%s/isorun-%s:%s\n' "$registry" "$name" "$tag"
  done
  log "pushed; the registry keeps running (stop: scripts/registry.sh stop $data/registry)"
}
