"""The notebook loop against the real control plane and the real node.

`kubectl open notebook -f .`: kubectl finds our plugin on PATH, the plugin uses the kubeconfig's
current context, the operator runs the Notebook (the stock notebook image: the directory has no
Dockerfile) with the model its model.yaml names, and the plugin port-forwards to the pod through
the API server, syncs the directory both ways through Jupyter, rides out the pod being replaced,
and on Ctrl-C syncs the last change back and suspends the Notebook.

`sub --context … notebook -f DIR` on a directory with a Dockerfile (``FROM`` the notebook
image, which the node's registry serves): the directory goes up through a URL signed by the
real S3-compatible server, rootless BuildKit builds it in a pod, and the notebook runs that
image, with the directory's files synced in.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from substratus.cli.notebook.sides import JupyterTree
from tests.kube.cluster import REPO, Proc, find_kubectl
from tests.kube.conftest import node_image
from tests.kube.node import TOOLBOX_IMAGE, RealNode
from tests.kube.operatorproc import apply, node_settings, read, running_operator, wait_for
from tests.kube.registry import LocalRegistry
from tests.kube.test_operator_notebook import pods
from tests.kube.test_real_builds import build_registry

__all__ = ["build_registry"]  # a fixture of this module too

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

MODEL_YAML = """\
apiVersion: substratus.ai/v1
kind: Model
metadata: {name: lab-tuned}
spec:
  image: {upload: {}}
  baseModel: {name: weights}
  resources: {disk: 1}
"""


@pytest.fixture(scope="module")
def notebook_base(kube_node: RealNode, build_registry: LocalRegistry) -> str:
    """The notebook image (its JupyterLab stage) in the node's registry, for a Dockerfile's
    ``FROM substratus.local/...`` (a mirror of substratus.local)."""
    done = subprocess.run(
        ["bash", "hack/images.sh", "notebook:jupyter"],
        cwd=REPO, capture_output=True, text=True, timeout=1500, check=True,
    )  # fmt: skip
    [name] = build_registry.push_archive(Path(done.stdout.strip().splitlines()[-1]))
    return f"substratus.local/{name}"


@pytest.fixture(scope="module")
def operator(
    kube_node: RealNode,
    substratus_crds: list[str],
    operator_image: str,
    notebook_image: str,
    home_volumes: str,
    node_bucket: Any,
    build_registry: LocalRegistry,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Proc]:
    buildkit = next(n for n in node_image(kube_node, "buildkit") if n.endswith("-rootless"))
    settings = node_settings(
        node_bucket,
        operator_image,
        SUBSTRATUS_IMAGES=json.dumps({"substratusai/notebook": notebook_image}),
        SUBSTRATUS_NOTEBOOK_STORAGE_CLASS=home_volumes,
        SUBSTRATUS_NOTEBOOK_HOME_SIZE="1Gi",  # the size of the node's static volumes
        SUBSTRATUS_REGISTRY=f"{build_registry.address}/builds",
        SUBSTRATUS_INSECURE_REGISTRIES=build_registry.address,
        SUBSTRATUS_REGISTRY_MIRRORS=json.dumps({"substratus.local": build_registry.address}),
        SUBSTRATUS_BUILD_IMAGE=buildkit,
    )
    with running_operator(kube_node.plane, tmp_path_factory.mktemp("operator"), settings) as proc:
        yield proc


def line(stream: IO[str], want: Callable[[str], bool], seen: list[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = stream.readline()
        if not text:
            break
        seen.append(text)
        if want(text):
            return text.strip()
    raise AssertionError("kubectl open notebook said:\n" + "".join(seen))


def arrives(read: Callable[[], Any], want: Any, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if read() == want:
                return True
        except Exception:
            pass
        time.sleep(0.05)
    return False


def test_kubectl_open_notebook_port_forwards_syncs_and_suspends(
    operator: Proc, kube_node: RealNode, kube_namespace: str, tmp_path: Path
) -> None:
    plane, ns = kube_node.plane, kube_namespace
    weights = {
        "image": {"name": TOOLBOX_IMAGE},
        "command": ["sh", "-c", "echo w > artifacts/w.txt"],
    }
    apply(plane, ns, "Model", "weights", weights)
    wait_for(plane, operator, ns, "Model", "weights", "Succeeded", timeout=240)

    code = tmp_path / "lab"
    code.mkdir()
    (code / "model.yaml").write_text(MODEL_YAML)
    (code / "train.py").write_text("print('train')\n")
    bin_dir = Path(sys.executable).parent
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SUBSTRATUS_")},
        "KUBECONFIG": str(plane.kubeconfig),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "XDG_STATE_HOME": str(tmp_path / "state"),
    }
    assert (bin_dir / "kubectl-open-notebook").exists(), "the plugin is installed with the package"
    proc = subprocess.Popen(
        [str(find_kubectl()), "open", "notebook", "-f", str(code), "-n", ns, "--no-browser"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    seen: list[str] = []
    try:
        assert proc.stdout is not None
        url = line(proc.stdout, lambda s: s.startswith("http://127.0.0.1:"), seen, 400)
        line(proc.stdout, lambda s: s.startswith("Ctrl-C to stop"), seen, 60)
        nb = json.loads(plane.kubectl("get", "notebook", "lab", "-n", ns, "-o", "json").stdout)
        token = nb["status"]["token"]
        base = url.split("/lab?")[0]
        assert url == f"{base}/lab?token={token}"
        assert nb["spec"]["model"] == {"name": "weights"}  # from model.yaml's baseModel
        assert nb["spec"]["image"] == {"name": "substratusai/notebook"}  # no Dockerfile
        jupyter = JupyterTree(base, token)  # through the port-forward
        listing = jupyter._request("GET", "model", params={"content": "1"}).json()
        assert "w.txt" in [f["name"] for f in listing["content"]]
        assert jupyter.read("train.py") == b"print('train')\n"  # synced in

        (code / "notes.md").write_text("from my laptop\n")
        assert arrives(lambda: jupyter.read("notes.md"), b"from my laptop\n", 5)
        jupyter.write("explore.py", b"print('explored')\n")
        assert arrives(lambda: (code / "explore.py").read_bytes(), b"print('explored')\n", 5)

        # The pod is replaced (its home volume stays): the forward and the sync reach the new one.
        [old] = [p["metadata"]["name"] for p in pods(plane, ns)]
        plane.kubectl("delete", "pod", old, "-n", ns, "--wait=false")
        deadline = time.monotonic() + 240
        while True:
            current = [
                p
                for p in pods(plane, ns)
                if p["metadata"]["name"] != old
                and any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in p.get("status", {}).get("conditions", [])
                )
            ]
            if current:
                break
            assert time.monotonic() < deadline, "no new notebook pod"
            time.sleep(1)
        (code / "after.py").write_text("after the restart\n")
        fresh = JupyterTree(base, token)
        assert arrives(lambda: fresh.read("after.py"), b"after the restart\n", 60), seen
        assert fresh.read("explore.py") == b"print('explored')\n"  # the home volume kept it

        fresh.write("last.py", b"print('last')\n")
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
        seen.append(rest)
        assert proc.returncode == 0, "".join(seen)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (code / "last.py").read_text() == "print('last')\n"
    assert "notebook/lab suspended" in "".join(seen)
    wait_for(plane, operator, ns, "Notebook", "lab", "Suspended", timeout=60)


def test_sub_notebook_builds_a_directory_with_a_dockerfile_in_the_cluster(
    operator: Proc,
    kube_node: RealNode,
    kube_namespace: str,
    node_bucket: Any,
    build_registry: LocalRegistry,
    notebook_base: str,
    tmp_path: Path,
) -> None:
    plane, ns = kube_node.plane, kube_namespace
    code = tmp_path / "built-lab"
    code.mkdir()
    (code / "Dockerfile").write_text(
        f"FROM {notebook_base}\nUSER root\n"
        "RUN echo in the image > /opt/from-dockerfile.txt\nUSER 10001:10001\n"
    )
    (code / "train.py").write_text("print('train')\n")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SUBSTRATUS_")},
        **node_bucket.env,
        "XDG_STATE_HOME": str(tmp_path / "state"),
    }
    argv = [
        str(Path(sys.executable).parent / "sub"), "--kubeconfig", str(plane.kubeconfig),
        "--context", "substratus-test", "notebook", "-f", str(code), "-n", ns, "--no-browser",
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    seen: list[str] = []
    try:
        assert proc.stdout is not None
        url = line(proc.stdout, lambda s: s.startswith("http://127.0.0.1:"), seen, 600)
        line(proc.stdout, lambda s: s.startswith("Ctrl-C to stop"), seen, 60)
        nb = json.loads(
            plane.kubectl("get", "notebook", "built-lab", "-n", ns, "-o", "json").stdout
        )
        md5 = nb["spec"]["image"]["upload"]["md5"]
        # Uploaded through the signed URL into the bucket, built by BuildKit, pushed, run.
        uploaded = f"s3://artifacts/.uploads/{ns}/notebooks/built-lab/{md5}.tar.gz"
        assert read(node_bucket, uploaded)[:2] == b"\x1f\x8b"
        assert "uploaded build context" in "".join(seen)
        assert nb["status"]["image"].startswith(f"{build_registry.address}/builds/{ns}/images@")
        base, token = url.split("/lab?token=")
        jupyter = JupyterTree(base, token)
        assert jupyter.read("train.py") == b"print('train')\n"
        # The pod runs the Dockerfile's image: its RUN step's file is there.
        [pod] = [
            p["metadata"]["name"]
            for p in pods(plane, ns)
            if p["metadata"]["labels"].get("substratus.ai/role") == "service"
        ]
        made = plane.kubectl(
            "exec", "-n", ns, pod, "-c", "main", "--", "cat", "/opt/from-dockerfile.txt"
        )
        assert made.stdout == "in the image\n"
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
        seen.append(rest)
        assert proc.returncode == 0, "".join(seen)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "notebook/built-lab suspended" in "".join(seen)
