"""Render the plain manifests of deploy/operator/ from the Helm chart, for users without Helm.

    python hack/render_deploy.py           # rewrite deploy/operator/*.yaml
    python hack/render_deploy.py --check   # exit 1 if they differ from the chart's rendering

``helm template`` of charts/substratus with its defaults (release ``substratus`` in
``substratus-system``, CRDs left to deploy/crds), split by template: the namespaces and RBAC go
to rbac.yaml, the rest to deployment.yaml. Helm comes from $HELM, else PATH, else the tests'
cache (hack/control-plane.sh builds it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "substratus"
OUT = REPO / "deploy" / "operator"
RELEASE, NAMESPACE = "substratus", "substratus-system"
# Which rendered templates go to which file.
FILES = {
    "rbac.yaml": ["builds-namespace.yaml", "serviceaccount.yaml", "rbac.yaml"],
    "deployment.yaml": ["configmap.yaml", "deployment.yaml", "services.yaml"],
}
HEADERS = {
    "rbac.yaml": """\
# The operator's namespace, identity and the least it needs, rendered from charts/substratus by
# `python hack/render_deploy.py` (helm template with the chart's defaults): do not edit by hand.
# With Helm, install the chart instead (docs/install.md). Without it:
#
#   kubectl apply --server-side -f deploy/crds
#   kubectl apply -f deploy/operator/rbac.yaml
#   kubectl create secret generic substratus-operator-bucket -n substratus-system \\
#     --from-literal=AWS_ACCESS_KEY_ID=... --from-literal=AWS_SECRET_ACCESS_KEY=...
#   kubectl apply -f deploy/operator/deployment.yaml   # set artifact_url in it first
apiVersion: v1
kind: Namespace
metadata:
  name: substratus-system
""",
    "deployment.yaml": """\
# The operator's settings, Deployment and Services, rendered from charts/substratus by
# `python hack/render_deploy.py` (helm template with the chart's defaults): do not edit the
# rendering, except for the settings in the ConfigMap. Set `artifact_url` there first (your
# bucket): without it the operator exits at once, naming the setting
# (`kubectl logs -n substratus-system deploy/substratus-operator`). The bucket's credentials go
# in the Secret substratus-operator-bucket (see rbac.yaml), which this Deployment reads.
""",
}


def helm_binary() -> str:
    found = os.environ.get("HELM") or shutil.which("helm")
    if found:
        return found
    cache = subprocess.run(
        ["bash", str(REPO / "hack" / "control-plane.sh"), "--print-dir"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    path = Path(cache) / "helm"
    if not path.is_file():
        sys.exit("render_deploy: no helm (set HELM, put it on PATH or run hack/control-plane.sh)")
    return str(path)


def kube_version() -> str:
    """The tests' Kubernetes version (the chart asks for 1.30 or newer)."""
    for line in (REPO / "hack" / "control-plane" / "versions.env").read_text().splitlines():
        if line.startswith("KUBERNETES_VERSION="):
            return line.split("=", 1)[1]
    raise SystemExit("render_deploy: no KUBERNETES_VERSION in hack/control-plane/versions.env")


def render() -> dict[str, str]:
    """File name -> its text."""
    out = subprocess.run(
        [
            helm_binary(),
            "template",
            RELEASE,
            str(CHART),
            "--namespace",
            NAMESPACE,
            "--kube-version",
            kube_version(),
            "--set",
            "plainManifests=true",
            "--set",
            "crds.install=false",
            # The plain manifests read the bucket's keys from this Secret, when it exists.
            "--set",
            "bucket.credentialsSecret=substratus-operator-bucket",
        ],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        sys.exit(f"render_deploy: helm template failed:\n{out.stderr}")
    by_template: dict[str, list[str]] = {}
    for doc in out.stdout.split("\n---\n"):
        lines = doc.strip("-\n").splitlines()
        if not lines or not lines[0].startswith("# Source: "):
            continue
        template = lines[0].removeprefix("# Source: ").split("/templates/", 1)[1]
        body = "\n".join(lines[1:]).strip()
        if any(line.strip() and not line.startswith("#") for line in lines[1:]):
            by_template.setdefault(template, []).append(body)
    unplaced = set(by_template) - {t for ts in FILES.values() for t in ts}
    if unplaced:
        sys.exit(f"render_deploy: templates with no file in deploy/operator: {sorted(unplaced)}")
    files = {}
    for name, templates in FILES.items():
        docs = [body for t in templates for body in by_template.get(t, [])]
        files[name] = HEADERS[name] + "".join(f"---\n{d}\n" for d in docs)
    return files


def main(argv: list[str]) -> int:
    files = render()
    if "--check" in argv:
        stale = [n for n, text in files.items() if (OUT / n).read_text() != text]
        for name in stale:
            print(f"stale: deploy/operator/{name} (run python hack/render_deploy.py)")
        return 1 if stale else 0
    for name, text in files.items():
        (OUT / name).write_text(text)
        print(f"deploy/operator/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
