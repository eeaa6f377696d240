#!/usr/bin/env bash
# Builds, once, the pinned Kubernetes control plane that the tests under tests/kube/ start:
#   core: etcd, kube-apiserver                          (a real API server to test against)
#   full: core + kube-controller-manager, kube-scheduler, kwok
#         (Jobs, scheduling, simulated nodes with nvidia.com/gpu capacity)
#         + kubelet, kube-proxy, pause, registry (the real node of tests/kube/node.py, which
#         also needs hack/node.sh, and the local image registry)
#         + buildkitd, buildctl, rootlesskit, buildctl-daemonless.sh (rootless BuildKit, for
#         the image hack/images.sh buildkit that in-cluster builds run)
#         + helm (the chart's lint, render and install in tests/kube)
# from Go modules (hack/control-plane/*/go.mod; versions in hack/control-plane/versions.env)
# into ${SUBSTRATUS_KUBE_CACHE:-${XDG_CACHE_HOME:-~/.cache}/substratus-test/kube}/<kubernetes version>/.
#
# Binaries already there (with a matching version stamp) are reused: a second run does
# nothing. Each build goes to a temp dir and is moved into place when complete, so an
# interrupted run leaves nothing half-built. If KUBEBUILDER_ASSETS holds envtest's
# kube-apiserver and etcd, those are used and not built.
#
# usage: hack/control-plane.sh [core|full] [--check] [--print-dir]
#   --check      build nothing; exit 1 (listing them) if binaries are missing
#   --print-dir  print the cache directory and exit
# Go build settings pass through the environment (GOFLAGS=-p=1 to use one core).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src="$here/control-plane"
# shellcheck source=control-plane/versions.env
. "$src/versions.env"

set_name=full check=0 print_dir=0
for arg in "$@"; do
  case "$arg" in
    core | full) set_name=$arg ;;
    --check) check=1 ;;
    --print-dir) print_dir=1 ;;
    -h | --help) sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "control-plane.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

cache_root="${SUBSTRATUS_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/substratus-test/kube}"
dest="$cache_root/$KUBERNETES_VERSION"
if [ "$print_dir" = 1 ]; then
  echo "$dest"
  exit 0
fi

# binary -> "module dir|package|version"
declare -A spec=(
  [etcd]="etcd|go.etcd.io/etcd/server/v3|$ETCD_VERSION"
  [kube-apiserver]="kubernetes|k8s.io/kubernetes/cmd/kube-apiserver|$KUBERNETES_VERSION"
  [kube-controller-manager]="kubernetes|k8s.io/kubernetes/cmd/kube-controller-manager|$KUBERNETES_VERSION"
  [kube-scheduler]="kubernetes|k8s.io/kubernetes/cmd/kube-scheduler|$KUBERNETES_VERSION"
  [kwok]="kwok|sigs.k8s.io/kwok/cmd/kwok|$KWOK_VERSION"
  [kubelet]="kubernetes|k8s.io/kubernetes/cmd/kubelet|$KUBERNETES_VERSION"
  [kube-proxy]="kubernetes|k8s.io/kubernetes/cmd/kube-proxy|$KUBERNETES_VERSION"
  [registry]="registry|github.com/distribution/distribution/v3/cmd/registry|$REGISTRY_VERSION"
  [pause]="pause|substratus.test/control-plane/pause|$PAUSE_VERSION"
  [buildkitd]="buildkit|github.com/moby/buildkit/cmd/buildkitd|$BUILDKIT_VERSION"
  [buildctl]="buildkit|github.com/moby/buildkit/cmd/buildctl|$BUILDKIT_VERSION"
  [rootlesskit]="buildkit|github.com/rootless-containers/rootlesskit/v3/cmd/rootlesskit|$ROOTLESSKIT_VERSION"
  [helm]="helm|helm.sh/helm/v3/cmd/helm|$HELM_VERSION"
)
wanted=(etcd kube-apiserver)
[ "$set_name" = full ] && wanted+=(kube-controller-manager kube-scheduler kwok kubelet kube-proxy registry pause buildkitd buildctl rootlesskit helm)

assets="${KUBEBUILDER_ASSETS:-}"
from_assets() { [ -n "$assets" ] && [ -x "$assets/$1" ]; }
present() { # binary in the cache with the expected version stamp
  local v="${spec[$1]##*|}"
  [ -x "$dest/$1" ] && [ "$(cat "$dest/.$1.version" 2>/dev/null)" = "$v" ]
}

missing=()
for b in "${wanted[@]}"; do
  if { [ "$b" = etcd ] || [ "$b" = kube-apiserver ]; } && from_assets "$b"; then
    echo "$b: using KUBEBUILDER_ASSETS ($assets/$b)"
  elif present "$b"; then
    echo "$b: cached ($dest/$b)"
  else
    missing+=("$b")
  fi
done
if [ "${#missing[@]}" = 0 ]; then
  exit 0
fi
if [ "$check" = 1 ]; then
  echo "missing: ${missing[*]} (run hack/control-plane.sh $set_name)" >&2
  exit 1
fi

go_bin="$(command -v go || true)"
[ -z "$go_bin" ] && [ -x /usr/local/go/bin/go ] && go_bin=/usr/local/go/bin/go
if [ -z "$go_bin" ]; then
  echo "control-plane.sh: Go is needed to build ${missing[*]} (https://go.dev/doc/install)" >&2
  exit 3
fi

# The go.mod files must pin what versions.env says.
check_pin() {
  if ! grep -qE "^[[:space:]]*(require[[:space:]]+)?$2 $3( |$)" "$src/$1/go.mod"; then
    echo "control-plane.sh: $src/$1/go.mod does not pin $2 $3 (versions.env)" >&2
    exit 2
  fi
}
check_pin kubernetes k8s.io/kubernetes "$KUBERNETES_VERSION"
check_pin etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
check_pin kwok sigs.k8s.io/kwok "$KWOK_VERSION"
check_pin registry github.com/distribution/distribution/v3 "$REGISTRY_VERSION"
check_pin buildkit github.com/moby/buildkit "$BUILDKIT_VERSION"
check_pin buildkit github.com/rootless-containers/rootlesskit/v3 "$ROOTLESSKIT_VERSION"
check_pin helm helm.sh/helm/v3 "$HELM_VERSION"

mkdir -p "$dest"
tmp="$(mktemp -d "$cache_root/.build.XXXXXX")" # same filesystem as $dest: mv is a rename
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# One builder at a time per cache (a concurrent second run waits, then finds them cached).
if command -v flock >/dev/null; then
  exec 9>"$cache_root/.lock"
  flock 9
  still=()
  for b in "${missing[@]}"; do
    present "$b" || still+=("$b")
  done
  [ "${#still[@]}" = 0 ] && exit 0
  missing=("${still[@]}")
fi

kv="$KUBERNETES_VERSION" minor="${KUBERNETES_VERSION#v*.}"
minor="${minor%%.*}" major="${KUBERNETES_VERSION#v}"
major="${major%%.*}"
kube_x=""
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  kube_x+=" -X $p.gitVersion=$kv -X $p.gitMajor=$major -X $p.gitMinor=$minor"
  kube_x+=" -X $p.gitTreeState=clean"
done

export CGO_ENABLED=0 GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
export GOTMPDIR="$tmp" # go's work files go with the temp dir, also when interrupted
export GOFLAGS="${GOFLAGS:-} -mod=readonly -trimpath"
# A private build cache (about 4.5 GB for the full set), kept while a build is unfinished so
# a rerun resumes, removed once everything is built. An explicit GOCACHE is used and kept.
own_gocache=0
if [ -z "${GOCACHE:-}" ]; then
  export GOCACHE="$cache_root/.gocache"
  own_gocache=1
fi

for mod in etcd kubernetes kwok registry pause buildkit helm; do
  bins=() pkgs=()
  for b in "${missing[@]}"; do
    IFS='|' read -r m pkg _ <<<"${spec[$b]}"
    [ "$m" = "$mod" ] && bins+=("$b") && pkgs+=("$pkg")
  done
  [ "${#bins[@]}" = 0 ] && continue
  ldflags="-s -w" tags=""
  [ "$mod" = kubernetes ] && ldflags+="$kube_x"
  if [ "$mod" = buildkit ]; then # as BuildKit's own Dockerfile builds buildkitd
    ldflags+=" -X github.com/moby/buildkit/version.Version=$BUILDKIT_VERSION"
    tags="osusergo netgo static_build seccomp"
  fi
  if [ "$mod" = helm ]; then # as Helm's Makefile: its version, and the Kubernetes version
    # that `helm template` and `helm lint` assume without a cluster (from its client-go)
    cg="$(cd "$src/$mod" && "$go_bin" list -m -f '{{.Version}}' k8s.io/client-go)"
    cg="${cg#v0.}"
    ldflags+=" -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
    for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
      ldflags+=" -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=${cg%%.*}"
    done
  fi
  echo "building ${bins[*]} ($mod module, $("$go_bin" env GOVERSION))..."
  t0=$(date +%s)
  if [ "${#bins[@]}" = 1 ]; then
    out="$tmp/${bins[0]}"
  else
    out="$tmp/"
  fi
  (cd "$src/$mod" && "$go_bin" build -tags "$tags" -ldflags "$ldflags" -o "$out" "${pkgs[@]}")
  if [ "$mod" = buildkit ]; then # the script the rootless image runs, from the same module
    moddir="$(cd "$src/$mod" && "$go_bin" list -m -f '{{.Dir}}' github.com/moby/buildkit)"
    install -m 0755 "$moddir/examples/buildctl-daemonless/buildctl-daemonless.sh" "$tmp/"
    mv -f "$tmp/buildctl-daemonless.sh" "$dest/buildctl-daemonless.sh"
  fi
  # Each built binary moves into place, then its stamp: no stamp, no reuse.
  for b in "${bins[@]}"; do
    mv -f "$tmp/$b" "$dest/$b"
    echo "${spec[$b]##*|}" >"$tmp/.$b.version"
    mv -f "$tmp/.$b.version" "$dest/.$b.version"
  done
  echo "built ${bins[*]} in $(($(date +%s) - t0))s"
done
if [ "$own_gocache" = 1 ]; then
  rm -rf "$GOCACHE"
fi
du -sh "$dest"
