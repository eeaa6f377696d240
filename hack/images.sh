#!/usr/bin/env bash
# Builds the project's built-in workload images (images/NAME/Dockerfile) with podman, with no
# container registry in reach, and caches each as an image archive that a test node imports
# with `ctr -n k8s.io images import` (docker-archive format: it keeps every tag):
#   base: substratus.local/python:3.11-bookworm, a debootstrap'd Debian 12 (its python3 is
#         3.11) standing in for python:3.11-slim; cached as python-3.11-bookworm-<key>.tar, so
#         a machine whose podman storage was wiped loads it again without debootstrap
#   NAME: built FROM that base (--build-arg BASE_IMAGE), tagged docker.io/<name>:latest and
#         docker.io/<name>:<version in pyproject.toml> for each name in its Dockerfile's
#         LABEL ai.substratus.images; cached as NAME-<key>.tar
#   NAME:STAGE: only that stage of a multi-stage Dockerfile (--target), tagged
#         substratus.local/NAME-STAGE:latest (never a catalog name: it is not the whole
#         image); cached as NAME-STAGE-<key>.tar
# in ${SUBSTRATUS_IMAGE_CACHE:-${XDG_CACHE_HOME:-~/.cache}/substratus-test/images}/.
#
# <key> hashes the Dockerfile, its Dockerfile.dockerignore, the files that lets into the build
# context (pyproject.toml, README.md, src/) and the base's recipe: an archive with the current
# key is reused (a second run does nothing), older archives of the same image are removed.
# Archives are written under a temp name and renamed when complete. Prints one line per image:
# the archive path (build output goes to stderr). Needs root and debootstrap for the base.
# notebook-gpu is not built: its CUDA base comes from a registry. buildkit (only when named) is
# rootless BuildKit for the tests' in-cluster builds: hack/buildkit/Dockerfile with the binaries
# of hack/control-plane.sh as its context, tagged substratus.local/buildkit:<version>-rootless.
#
# usage: hack/images.sh [--print-dir] [--check] [all | NAME | NAME:STAGE ...]     (default: all)
#   --check      build nothing; exit 1 (listing them) if archives are missing
#   --print-dir  print the cache directory and exit
# Environment: SUBSTRATUS_IMAGE_CACHE, DEBIAN_MIRROR (http://deb.debian.org/debian),
# SUBSTRATUS_BUILD_CA (a CA bundle mounted, read-only, over the build's
# /etc/ssl/certs/ca-certificates.crt; default: the host pip's cert, if it has one).
set -euo pipefail
shopt -s inherit_errexit

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

check=0 print_dir=0 asked=()
for arg in "$@"; do
  case "$arg" in
    --check) check=1 ;;
    --print-dir) print_dir=1 ;;
    -h | --help) sed -n '2,28p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "images.sh: unknown option: $arg" >&2; exit 2 ;;
    *) asked+=("$arg") ;;
  esac
done

cache="${SUBSTRATUS_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/substratus-test/images}"
if [ "$print_dir" = 1 ]; then
  echo "$cache"
  exit 0
fi

# Which images: every images/*/Dockerfile but notebook-gpu for `all`.
all=()
for df in images/*/Dockerfile; do
  n="${df#images/}" n="${n%/Dockerfile}"
  [ "$n" = notebook-gpu ] || all+=("$n")
done
[ "${#asked[@]}" = 0 ] && asked=(all)
names=()
for a in "${asked[@]}"; do
  if [ "$a" = all ]; then
    names+=("${all[@]}")
  elif [ "$a" = notebook-gpu ]; then
    echo "images.sh: notebook-gpu is not built here: its base (nvidia/cuda, CUDA_IMAGE) comes" \
      "from a registry; build it with 'docker build -f images/notebook-gpu/Dockerfile .'" \
      "where one is reachable" >&2
    exit 2
  elif [ "$a" = buildkit ]; then
    names+=(buildkit)
  elif [ -f "images/${a%%:*}/Dockerfile" ]; then
    if [[ "$a" == *:* ]] && ! grep -qiE "^FROM .* AS ${a#*:}\$" "images/${a%%:*}/Dockerfile"; then
      echo "images.sh: images/${a%%:*}/Dockerfile has no stage '${a#*:}'" >&2
      exit 2
    fi
    names+=("$a")
  else
    echo "images.sh: no images/$a/Dockerfile (images: ${all[*]})" >&2
    exit 2
  fi
done
mapfile -t names < <(printf '%s\n' "${names[@]}" | awk '!seen[$0]++')

# The base: its key is a function of this recipe (bump BASE_REV when changing how it is made).
BASE_IMAGE=substratus.local/python:3.11-bookworm
BASE_REV=1
SUITE=bookworm
# busybox-static: the operator's contract helper copies its static shell into workload pods
# (src/substratus/runtimes/kubernetes/podhelper.py), so an image built here can be the helper.
INCLUDE=python3,python3-venv,python-is-python3,ca-certificates,passwd,busybox-static
base_key="$(printf '%s\n' "$BASE_IMAGE" "$BASE_REV" "$SUITE" "$INCLUDE" | sha256sum | cut -c1-16)"
base_tar="$cache/python-3.11-bookworm-$base_key.tar"
KEY_REV=1 # bump when the way images are built or tagged changes

version="$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n1)"
[ -n "$version" ] || { echo "images.sh: no version in pyproject.toml" >&2; exit 2; }

# The files a Dockerfile.dockerignore lets into the context. The ignore files here are
# allow-lists: '*', then '!PATH' for what is sent, then '**/NAME' for what is left out below it.
context_files() {
  local line only=() prune=() star=0
  while IFS= read -r line || [ -n "$line" ]; do
    line="${line#"${line%%[![:space:]]*}"}" line="${line%"${line##*[![:space:]]}"}"
    case "$line" in
      '' | '#'*) ;;
      '*') star=1 ;;
      '!'*) only+=("${line#!}") ;;
      '**/'*) prune+=(-o -name "${line#'**/'}") ;;
      *) echo "images.sh: $1: pattern '$line' not understood (only '*', '!PATH', '**/NAME')" >&2
        return 2 ;;
    esac
  done <"$1"
  if [ "$star" = 0 ] || [ "${#only[@]}" = 0 ]; then
    echo "images.sh: $1 must start with '*' and let in paths with '!PATH'" >&2
    return 2
  fi
  find "${only[@]}" \( -false "${prune[@]}" \) -prune -o \( -type f -o -type l \) -print |
    LC_ALL=C sort
}

# shellcheck source=control-plane/versions.env
. hack/control-plane/versions.env
kube_bin="$(bash hack/control-plane.sh --print-dir)"
BUILDKIT_FILES=(buildkitd buildctl rootlesskit buildctl-daemonless.sh)

image_key() { # $1: NAME or NAME:STAGE
  if [ "$1" = buildkit ]; then
    {
      echo "$KEY_REV $base_key buildkit $BUILDKIT_VERSION $ROOTLESSKIT_VERSION"
      sha256sum hack/buildkit/Dockerfile
      cat "$kube_bin"/.{buildkitd,buildctl,rootlesskit}.version 2>/dev/null
    } | sha256sum | cut -c1-16
    return
  fi
  local df="images/${1%%:*}/Dockerfile" files
  files="$(context_files "$df.dockerignore")"
  {
    echo "$KEY_REV $base_key $1"
    sha256sum "$df" "$df.dockerignore"
    # shellcheck disable=SC2086 # one path a line, none with spaces
    printf '%s\n' $files | xargs -r -d '\n' sha256sum --
  } | sha256sum | cut -c1-16
}

declare -A archive
missing=()
for n in "${names[@]}"; do
  if [ "$n" = buildkit ]; then
    for f in "${BUILDKIT_FILES[@]}"; do
      [ -x "$kube_bin/$f" ] ||
        { echo "images.sh: $kube_bin/$f is missing: run bash hack/control-plane.sh" >&2; exit 2; }
    done
  elif [ ! -f "images/${n%%:*}/Dockerfile.dockerignore" ]; then
    echo "images.sh: images/${n%%:*}/Dockerfile.dockerignore is missing (the whole checkout" \
      "would be the build context)" >&2
    exit 2
  fi
  archive[$n]="$cache/${n/:/-}-$(image_key "$n").tar"
  [ -f "${archive[$n]}" ] || missing+=("$n")
done

if [ "${#missing[@]}" = 0 ]; then
  for n in "${names[@]}"; do echo "${archive[$n]}"; done
  exit 0
fi
if [ "$check" = 1 ]; then
  for n in "${missing[@]}"; do echo "missing: ${archive[$n]}" >&2; done
  echo "(run hack/images.sh ${missing[*]})" >&2
  exit 1
fi

command -v podman >/dev/null || { echo "images.sh: podman is needed (hack/container-engine.sh)" >&2; exit 3; }
mkdir -p "$cache"
work="$(mktemp -d "$cache/.build.XXXXXX")" # same filesystem as the archives: mv is a rename
rootfs=""
cleanup() {
  if [ -n "$rootfs" ] && [ -d "$rootfs" ]; then
    # An interrupted debootstrap may leave proc/sys mounted in the rootfs.
    awk -v r="$rootfs/" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r |
      while read -r m; do umount -l "$m" || true; done
    rm -rf --one-file-system "$rootfs"
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# One builder at a time per cache (a concurrent second run waits, then finds them cached).
if command -v flock >/dev/null; then
  exec 9>"$cache/.lock"
  flock 9
fi

# Remove NAME's archives other than $2 (keys are 16 hex digits).
prune_old() {
  local f base
  for f in "$cache/$1"-*.tar; do
    base="${f##*/}"
    [[ "$base" =~ ^$1-[0-9a-f]{16}\.tar$ ]] && [ "$f" != "$2" ] && rm -f "$f"
  done
  return 0
}

ensure_base() {
  local have t0
  have="$(podman image inspect --format '{{index .Labels "ai.substratus.base-key"}}' \
    "$BASE_IMAGE" 2>/dev/null || true)"
  [ "$have" = "$base_key" ] && return 0
  if [ -f "$base_tar" ]; then
    echo "loading $BASE_IMAGE from $base_tar" >&2
    podman load -q -i "$base_tar" >&2
    return 0
  fi
  [ "$(id -u)" = 0 ] || { echo "images.sh: debootstrap needs root" >&2; exit 3; }
  if ! command -v debootstrap >/dev/null && command -v apt-get >/dev/null; then
    echo "installing debootstrap" >&2
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap; } >&2
  fi
  command -v debootstrap >/dev/null ||
    { echo "images.sh: debootstrap is needed for the base image (apt-get install debootstrap)" >&2; exit 3; }
  t0=$(date +%s)
  rootfs="$(mktemp -d "${TMPDIR:-/tmp}/substratus-rootfs.XXXXXX")"
  echo "debootstrap $SUITE (minbase + $INCLUDE) for $BASE_IMAGE..." >&2
  if ! debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$rootfs" \
    "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$work/debootstrap.log" 2>&1; then
    tail -n 30 "$work/debootstrap.log" >&2
    echo "images.sh: debootstrap failed" >&2
    exit 1
  fi
  # Small, like Debian's slim images: no docs, man pages or locales (now or from later
  # installs), no apt lists or caches; no host files (debootstrap copies resolv.conf, hostname).
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/substratus-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
EOF
  cat >"$rootfs/etc/apt/apt.conf.d/substratus-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  find "$rootfs/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
  find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$rootfs"/usr/share/{man,groff,info,lintian,locale}/* \
    "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/cache/debconf/*-old \
    "$rootfs"/var/log/* "$rootfs"/etc/resolv.conf "$rootfs"/etc/hostname
  mkdir -p "$rootfs/var/lib/apt/lists/partial"
  tar -C "$rootfs" --numeric-owner --exclude='./dev/*' --exclude='./proc/*' \
    --exclude='./sys/*' -cf - . |
    podman import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV LANG=C.UTF-8' \
      --change "LABEL ai.substratus.base-key=$base_key" \
      --change 'CMD ["python3"]' - "$BASE_IMAGE" >/dev/null
  rm -rf --one-file-system "$rootfs"
  rootfs=""
  podman save -q --format docker-archive -o "$work/base.tar" "$BASE_IMAGE"
  mv -f "$work/base.tar" "$base_tar"
  prune_old python-3.11-bookworm "$base_tar"
  echo "made $BASE_IMAGE in $(($(date +%s) - t0))s ($(du -h "$base_tar" | cut -f1) archive)" >&2
}

# The host's CA bundle for HTTPS from RUN steps (pip), where the host's pip names one: mounted
# read-only over the image's bundle for the build only, never part of an image.
ca="${SUBSTRATUS_BUILD_CA:-${PIP_CERT:-}}"
if [ -z "$ca" ] && [ -f /etc/pip.conf ]; then
  ca="$(sed -n 's/^[[:space:]]*cert[[:space:]]*=[[:space:]]*\(.*[^[:space:]]\)[[:space:]]*$/\1/p' \
    /etc/pip.conf | head -n1)"
fi
mounts=()
if [ -n "$ca" ] && [ -f "$ca" ]; then
  mounts=(-v "$ca:/etc/ssl/certs/ca-certificates.crt:ro")
fi

base_ready=0
for n in "${names[@]}"; do
  if [ -f "${archive[$n]}" ]; then # made by a run we waited for
    echo "${archive[$n]}"
    continue
  fi
  if [ "$base_ready" = 0 ]; then
    ensure_base
    base_ready=1
  fi
  df="images/${n%%:*}/Dockerfile"
  tags=() target=()
  if [ "$n" = buildkit ]; then
    ctx="$work/buildkit"
    mkdir -p "$ctx"
    cp hack/buildkit/Dockerfile "$ctx/"
    for f in "${BUILDKIT_FILES[@]}"; do cp "$kube_bin/$f" "$ctx/"; done
    tags=("substratus.local/buildkit:$BUILDKIT_VERSION-rootless" "substratus.local/buildkit:latest")
    echo "building buildkit (${tags[*]})..." >&2
    t0=$(date +%s)
    podman build --pull=never -f "$ctx/Dockerfile" --build-arg "BASE_IMAGE=$BASE_IMAGE" \
      "${mounts[@]}" "${tags[@]/#/--tag=}" "$ctx" >&2
    podman save -q --format docker-archive -o "$work/buildkit.tar" "${tags[@]}"
    mv -f "$work/buildkit.tar" "${archive[$n]}"
    prune_old buildkit "${archive[$n]}"
    echo "built buildkit in $(($(date +%s) - t0))s ($(du -h "${archive[$n]}" | cut -f1))" >&2
    echo "${archive[$n]}"
    continue
  fi
  if [[ "$n" == *:* ]]; then
    tags=("substratus.local/${n/:/-}:latest") target=(--target "${n#*:}")
  else
    read -ra labels <<<"$(sed -n 's/^LABEL ai\.substratus\.images="\(.*\)"$/\1/p' "$df")"
    [ "${#labels[@]}" -gt 0 ] || { echo "images.sh: $df has no LABEL ai.substratus.images" >&2; exit 2; }
    for l in "${labels[@]}"; do tags+=("docker.io/$l:latest" "docker.io/$l:$version"); done
  fi
  echo "building $n (${tags[*]})..." >&2
  t0=$(date +%s)
  for try in 1 2 3; do
    podman build --pull=never -f "$df" --ignorefile "$df.dockerignore" "${target[@]}" \
      --build-arg "BASE_IMAGE=$BASE_IMAGE" "${mounts[@]}" \
      "${tags[@]/#/--tag=}" . >&2
    # A file edited during the build may or may not be in the image: build again (podman's
    # layer cache redoes only what changed) until the key holds from start to end.
    key_now="$cache/${n/:/-}-$(image_key "$n").tar"
    [ "$key_now" = "${archive[$n]}" ] && break
    [ "$try" = 3 ] && { echo "images.sh: $n: its files keep changing; try again later" >&2; exit 1; }
    echo "images.sh: $n: its files changed during the build; building again" >&2
    archive[$n]="$key_now"
  done
  # docker-archive: one image with every tag as a RepoTag (an oci-archive keeps one name).
  podman save -q --format docker-archive -o "$work/${n/:/-}.tar" "${tags[@]}"
  mv -f "$work/${n/:/-}.tar" "${archive[$n]}"
  prune_old "${n/:/-}" "${archive[$n]}"
  echo "built $n in $(($(date +%s) - t0))s ($(du -h "${archive[$n]}" | cut -f1))" >&2
  echo "${archive[$n]}"
done
