#!/usr/bin/env bash
# A local cluster with a real node, to try the operator by hand (as `kind create cluster` is used
# elsewhere): the control plane with kwok GPU nodes, a real node (kubelet + containerd running
# real containers), a local image registry, an S3-compatible bucket, our CRDs, the images of
# hack/node.sh (substratus.local/toolbox:latest) and hack/images.sh loaded into the node (and
# pushed to the registry, so an image build's Dockerfile can start FROM them), and the operator
# run from the working tree, building images in the cluster (`up --no-operator` leaves it out).
#
#   eval "$(bash hack/dev-cluster.sh up)"    # prints: export KUBECONFIG=...
#   kubectl get nodes
#   bash hack/dev-cluster.sh status
#   bash hack/dev-cluster.sh down
#
# `up` twice is harmless (it prints the same line). Needs root, and once:
#   bash hack/setup.sh --test && bash hack/control-plane.sh && bash hack/node.sh
# (add `bash hack/images.sh all` for every built-in image, or NAME... for some).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
case "${1:-}" in
  up)
    if [ ! -x .venv/bin/python ]; then
      echo "dev-cluster.sh: no .venv: run bash hack/setup.sh --test first" >&2
      exit 1
    fi
    bash hack/control-plane.sh --check >&2
    bash hack/node.sh --check >&2
    ;;
  down | status) ;;
  *) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
exec .venv/bin/python -m tests.kube.devcluster "$@"
