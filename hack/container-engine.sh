#!/usr/bin/env bash
# Make podman usable on a Debian 12 machine (run as root) with no image registry in reach, and
# import a tiny local base image that the container tests build FROM. Idempotent: run it again and
# it changes nothing. About 15 s on a fresh machine (apt), under 1 s once done.
#
#   hack/container-engine.sh            # install + configure + import localhost/substratus-busybox
#   podman run --rm localhost/substratus-busybox:latest echo ok
#
# Why each step:
# - runc, pinned as the runtime: crun (podman's first choice when installed) refuses the cgroup
#   layout of these VMs.
# - default_ulimits: podman raises a container's nofile limit to 1048576 by default, above the hard
#   limit these VMs give processes (20000), and every container then fails to start with
#   "runc create failed: ... error setting rlimits ... operation not permitted".
# - containernetworking-plugins: the bridge/portmap plugins that `-p 127.0.0.1:H:C` needs.
# - catatonit: the init process for `run --init`, so that `stop` (SIGTERM) ends a program that is
#   PID 1 and installs no handler, instead of waiting 10 s for SIGKILL.
# - busybox-static: a static busybox is a whole root filesystem in one file; `podman import`
#   turns it into an image without any registry.
set -euo pipefail

BASE_IMAGE="${SUBSTRATUS_BASE_IMAGE:-localhost/substratus-busybox:latest}"
CONF_DIR=/etc/containers/containers.conf.d
CONF_FILE="$CONF_DIR/50-substratus.conf"

if [[ $(id -u) -ne 0 ]]; then
  echo "run as root (it installs Debian packages and writes $CONF_FILE)" >&2
  exit 1
fi

missing=()
for pkg in podman runc conmon containernetworking-plugins catatonit busybox-static; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
    missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

want=$(
  cat <<'EOF'
# Written by substratus hack/container-engine.sh
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
EOF
)
mkdir -p "$CONF_DIR"
if [[ ! -f $CONF_FILE ]] || [[ $(cat "$CONF_FILE") != "$want" ]]; then
  printf '%s\n' "$want" >"$CONF_FILE"
  echo "wrote $CONF_FILE"
fi

podman info >/dev/null

if ! podman image exists "$BASE_IMAGE"; then
  rootfs=$(mktemp -d)
  trap 'rm -rf "$rootfs"' EXIT
  mkdir -p "$rootfs"/{bin,etc,tmp,content}
  chmod 1777 "$rootfs/tmp"
  cp /bin/busybox "$rootfs/bin/busybox"
  for applet in $("$rootfs/bin/busybox" --list); do
    [[ -e $rootfs/bin/$applet ]] || ln -s busybox "$rootfs/bin/$applet"
  done
  echo 'root:x:0:0:root:/:/bin/sh' >"$rootfs/etc/passwd"
  echo 'root:x:0:' >"$rootfs/etc/group"
  tar -C "$rootfs" -c . |
    podman import --change 'CMD ["/bin/sh"]' --change 'ENV PATH=/bin' - "$BASE_IMAGE" >/dev/null
  echo "imported $BASE_IMAGE"
fi

podman run --rm "$BASE_IMAGE" true
echo "podman is ready; base image: $BASE_IMAGE"
