#!/usr/bin/env bash
# Prepares, once, what the tests' real Kubernetes node (tests/kube/node.py) needs beyond the Go
# binaries of hack/control-plane.sh (kubelet, kube-proxy, pause, registry: run that first):
#   - Debian packages: runc, containernetworking-plugins (bridge, host-local, loopback,
#     portmap), iptables, nftables (teardown removes the empty tables iptables-nft registers),
#     conntrack (kube-proxy), busybox-static (the toolbox image);
#   - containerd from Debian's package, extracted into the cache, not installed: no service is
#     registered or started, the node starts its own with private directories;
#   - the images every pod needs, made locally (no registry is pulled from) as OCI archives for
#     `ctr images import`: substratus.local/pause (hack/control-plane/pause) and
#     substratus.local/toolbox:latest (a busybox shell).
# into ${SUBSTRATUS_NODE_CACHE:-${XDG_CACHE_HOME:-~/.cache}/substratus-test/node}/.
# A second run does nothing. Needs root (apt) on Debian 12.
#
# usage: hack/node.sh [--check] [--print-dir]
#   --check      change nothing; exit 1 (naming them) if parts are missing
#   --print-dir  print the cache directory and exit
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=control-plane/versions.env
. "$here/control-plane/versions.env"

check=0
for arg in "$@"; do
  case "$arg" in
    --check) check=1 ;;
    --print-dir)
      echo "${SUBSTRATUS_NODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/substratus-test/node}"
      exit 0
      ;;
    -h | --help) sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "node.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

cache="${SUBSTRATUS_NODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/substratus-test/node}"
kube_bin="$(bash "$here/control-plane.sh" --print-dir)"
packages=(runc containernetworking-plugins iptables nftables conntrack busybox-static)
toolbox_key() { cat /bin/busybox "$here/ociarchive.py" 2>/dev/null | sha256sum | cut -c1-12; }

missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
    missing+=("package:$pkg")
done
want_containerd=$(apt-cache policy containerd 2>/dev/null | sed -n 's/^ *Candidate: //p')
have_containerd=$(cat "$cache/containerd/.version" 2>/dev/null || true)
if [ ! -x "$cache/containerd/usr/bin/containerd" ] || { [ -n "$want_containerd" ] &&
  [ "$want_containerd" != "(none)" ] && [ "$have_containerd" != "$want_containerd" ]; }; then
  missing+=(containerd)
fi
[ -f "$cache/images/pause-$PAUSE_VERSION.tar" ] || missing+=(image:pause)
[ -f "$cache/images/toolbox-$(toolbox_key).tar" ] || missing+=(image:toolbox)

if [ "${#missing[@]}" = 0 ]; then
  echo "node: ready ($cache; containerd $have_containerd)"
  exit 0
fi
if [ "$check" = 1 ]; then
  echo "node: missing ${missing[*]} (run: sudo bash hack/node.sh)" >&2
  exit 1
fi
if [ "$(id -u)" != 0 ]; then
  echo "node.sh: run as root (it installs Debian packages); missing: ${missing[*]}" >&2
  exit 1
fi

mkdir -p "$cache/images"
exec 9>"$cache/.lock"
flock 9

need=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
  echo "installing: ${need[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi

if [[ " ${missing[*]} " == *" containerd "* ]]; then
  tmp=$(mktemp -d "$cache/.containerd.XXXXXX")
  chmod 755 "$tmp" # apt-get download drops to the _apt user
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && { apt-get download -q containerd || { apt-get update -q && apt-get download -q containerd; }; })
  deb=$(ls "$tmp"/containerd_*.deb)
  dpkg -x "$deb" "$tmp/root"
  version=$(dpkg-deb -f "$deb" Version)
  mkdir -p "$tmp/new/usr"
  mv "$tmp/root/usr/bin" "$tmp/new/usr/bin"
  echo "$version" >"$tmp/new/.version"
  rm -rf "$cache/containerd"
  mv "$tmp/new" "$cache/containerd"
  echo "containerd $version: $cache/containerd/usr/bin"
fi

if [ ! -f "$cache/images/pause-$PAUSE_VERSION.tar" ]; then
  if [ ! -x "$kube_bin/pause" ]; then
    echo "node.sh: $kube_bin/pause is not built: run bash hack/control-plane.sh first" >&2
    exit 1
  fi
  root=$(mktemp -d)
  cp "$kube_bin/pause" "$root/pause"
  python3 "$here/ociarchive.py" "$root" "$cache/images/pause-$PAUSE_VERSION.tar" \
    "substratus.local/pause:$PAUSE_VERSION" --entrypoint '["/pause"]'
  rm -rf "$root"
fi

toolbox="$cache/images/toolbox-$(toolbox_key).tar" # after busybox-static is installed
if [ ! -f "$toolbox" ]; then
  # A busybox shell and its applets (sh, wget, httpd, nc, dd, ...): what test pods and a
  # person poking at the dev cluster need. /tmp is world-writable for non-root pods.
  root=$(mktemp -d)
  mkdir -p "$root"/{bin,etc,tmp,root,proc,sys,dev}
  chmod 1777 "$root/tmp"
  cp /bin/busybox "$root/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
  rm -f "$cache"/images/toolbox-*.tar
  python3 "$here/ociarchive.py" "$root" "$toolbox" \
    substratus.local/toolbox:latest --cmd '["sh"]'
  rm -rf "$root"
fi
echo "node: ready ($cache)"
