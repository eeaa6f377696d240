"""An image built in the cluster for real, on the real node: ``sub apply`` of a directory with
``image.upload`` packs it, uploads it through the signed URL, and the operator's build Job runs
rootless BuildKit (built from its Go modules into our own image, hack/images.sh buildkit) in a
pod: its Dockerfile starts ``FROM`` an image the node's registry serves under the name the dev
cluster gives it (``substratus.local/toolbox``, through a mirror), runs a ``RUN`` step and
copies the context (``.dockerignore`` honoured); the image is pushed to that registry, pulled by
the node, and run by the Model's Job, which commits an artifact. A second Model from the same
directory is not built again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kube.conftest import node_image
from tests.kube.node import RealNode
from tests.kube.operatorproc import node_settings, read, running_operator
from tests.kube.registry import LocalRegistry

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

DOCKERFILE = """\
FROM substratus.local/toolbox:latest
RUN echo built by buildkit > /built.txt
COPY . /ctx/
"""
SCRIPT = "cat /built.txt > artifacts/out.txt && ls /ctx >> artifacts/out.txt\n"


@pytest.fixture(scope="module")
def build_registry(kube_node: RealNode) -> Iterator[LocalRegistry]:
    """A registry on the node's address: the build pod pushes to it, the node pulls from it,
    and it serves the toolbox image as the dev cluster's registry does."""
    registry = LocalRegistry(host=kube_node.ip).start()
    kube_node.trust_registry(registry.address)
    busybox = Path("/bin/busybox").read_bytes()
    applets = ("sh", "echo", "cat", "ls", "mkdir", "cp")
    registry.push(
        "toolbox",
        "latest",
        {"bin/busybox": busybox},
        ["sh"],
        {f"bin/{a}": "busybox" for a in applets},
    )
    try:
        yield registry
    finally:
        registry.stop()


def sub(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "sub"), *args],
        capture_output=True,
        text=True,
        timeout=800,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("SUBSTRATUS_")}, **env},
    )


def context(tmp_path: Path) -> Path:
    d = tmp_path / "ctx"
    d.mkdir()
    (d / "Dockerfile").write_text(DOCKERFILE)
    (d / "train.sh").write_text(SCRIPT)
    (d / ".dockerignore").write_text("notes.txt\n")
    (d / "notes.txt").write_text("not for the image")
    docs = [
        {
            "apiVersion": "substratus.ai/v1",
            "kind": "Model",
            "metadata": {"name": name},
            "spec": {"image": {"upload": {}}, "command": ["sh", "/ctx/train.sh"]},
        }
        for name in ("built", "again")
    ]
    (d / "built.yaml").write_text(yaml.safe_dump(docs[0]))
    (d / "again.yaml").write_text(yaml.safe_dump(docs[1]))
    return d


def test_a_context_is_built_with_rootless_buildkit_pushed_pulled_and_run(
    kube_node: RealNode,
    substratus_crds: list[str],
    operator_image: str,
    node_bucket: Any,
    build_registry: LocalRegistry,
    kube_namespace: str,
    tmp_path: Path,
) -> None:
    plane, ns = kube_node.plane, kube_namespace
    buildkit = next(n for n in node_image(kube_node, "buildkit") if n.endswith("-rootless"))
    settings = node_settings(
        node_bucket,
        operator_image,
        SUBSTRATUS_REGISTRY=f"{build_registry.address}/builds",
        SUBSTRATUS_INSECURE_REGISTRIES=build_registry.address,
        SUBSTRATUS_REGISTRY_MIRRORS=json.dumps({"substratus.local": build_registry.address}),
        SUBSTRATUS_BUILD_IMAGE=buildkit,
    )
    ctx = context(tmp_path)
    cluster = ["--kubeconfig", str(plane.kubeconfig), "--context", "substratus-test", "-n", ns]
    (tmp_path / "operator").mkdir()
    with running_operator(plane, tmp_path / "operator", settings) as operator:
        applied = sub(
            "apply", "-f", str(ctx / "built.yaml"), *cluster, "--wait", "--timeout", "10m",
            env=node_bucket.env,
        )  # fmt: skip
        logs = plane.kubectl(
            "logs", "-n", ns, "-l", "substratus.ai/role=build", "-c", "build", "--tail=60",
            check=False,
        )  # fmt: skip
        assert applied.returncode == 0, (
            applied.stdout[-2000:] + applied.stderr[-2000:] + logs.stdout + operator.tail(30)
        )
        model = json.loads(plane.kubectl("get", "-n", ns, "model", "built", "-o", "json").stdout)
        status = model["status"]
        md5 = model["spec"]["image"]["upload"]["md5"]
        repo = f"{build_registry.address}/builds/{ns}/images"
        assert status["image"].startswith(f"{repo}@sha256:")
        assert f"md5-{md5}" in build_registry.tags(f"builds/{ns}/images")
        out = read(node_bucket, status["url"] + "out.txt").decode()
        lines = out.splitlines()
        assert lines[0] == "built by buildkit"  # the RUN step ran
        assert "train.sh" in lines and "Dockerfile" in lines
        assert "notes.txt" not in lines  # .dockerignore
        # The build's log: shown by sub apply as it ran (through the same calls as sub logs),
        # and there for kubectl logs.
        assert "substratus-context: unpacked" in applied.stderr, applied.stderr[-3000:]
        assert "exporting to image" in applied.stderr, applied.stderr[-3000:]
        assert "exporting to image" in logs.stdout, logs.stdout + logs.stderr
        jobs = plane.kubectl(
            "get", "jobs", "-n", ns, "-l", "substratus.ai/role=build", "-o", "name"
        )
        assert len(jobs.stdout.split()) == 1

        # The same directory for another object: the image is there, nothing is built.
        again = sub(
            "apply", "-f", str(ctx / "again.yaml"), *cluster, "--wait", "--timeout", "5m",
            env=node_bucket.env,
        )  # fmt: skip
        assert again.returncode == 0, again.stdout + again.stderr + operator.tail(30)
        second = json.loads(plane.kubectl("get", "-n", ns, "model", "again", "-o", "json").stdout)
        assert second["status"]["image"] == status["image"]
        jobs = plane.kubectl(
            "get", "jobs", "-n", ns, "-l", "substratus.ai/role=build", "-o", "name"
        )
        assert len(jobs.stdout.split()) == 1  # still only the first object's build
