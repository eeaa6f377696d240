"""20 no-op Models through the operator on a real node, against 20 bare Jobs running the same
command: the overhead of the contract (fetching, committing to the bucket, reporting).

    sudo .venv/bin/python benchmarks/operator_real_node.py [--objects 20]

Needs root and what the node tests need (`bash hack/control-plane.sh`, `bash hack/node.sh`,
`bash hack/images.sh operator`). Starts the tests' control plane, kwok, a real node
(kubelet, containerd), an S3-compatible bucket (SeaweedFS) and the operator, then:
- bare: N Jobs running `true` in the toolbox image, created at once; until all are Complete;
- operator: N Models running `true` in the same image, applied at once; until all are Ready
  (init container, the command, the committer writing the manifest, the status).
Prints wall time until all done, and per-object p50/p95 (create -> done).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lightkube import Client, KubeConfig  # noqa: E402
from lightkube.codecs import from_dict  # noqa: E402
from lightkube.generic_resource import create_namespaced_resource  # noqa: E402
from lightkube.resources.batch_v1 import Job  # noqa: E402

from tests.kube.cluster import ControlPlane  # noqa: E402
from tests.kube.node import TOOLBOX_IMAGE, RealNode, machine_problem  # noqa: E402
from tests.kube.operatorproc import node_settings, start_operator, stop_operator  # noqa: E402

MODEL = create_namespaced_resource("substratus.ai", "v1", "Model", "models")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(
    plane: ControlPlane, resource: Any, ns: str, docs: list[dict[str, Any]], done: Any
) -> tuple[float, list[float]]:
    """Create ``docs`` at once; wall time until ``done(obj)`` holds for all, and each one's."""
    client = Client(config=KubeConfig.from_file(plane.kubeconfig), field_manager="bench")
    finished: dict[str, float] = {}
    all_done = threading.Event()

    def watch() -> None:
        try:
            for _, obj in client.watch(resource, namespace=ns):
                d = obj.to_dict()
                name = d["metadata"]["name"]
                if name not in finished and done(d):
                    finished[name] = time.perf_counter()
                    if len(finished) == len(docs):
                        all_done.set()
                        return
        except Exception:
            return

    threading.Thread(target=watch, daemon=True).start()
    time.sleep(1)
    created: dict[str, float] = {}
    t0 = time.perf_counter()

    def create(doc: dict[str, Any]) -> None:
        created[doc["metadata"]["name"]] = time.perf_counter()
        client.create(from_dict(doc))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, docs))
    if not all_done.wait(600):
        raise RuntimeError(f"{len(finished)}/{len(docs)} done after 10 minutes")
    return max(finished.values()) - t0, [finished[k] - created[k] for k in created]


def job_complete(d: dict[str, Any]) -> bool:
    conds = (d.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Complete" and c["status"] == "True" for c in conds)


def model_ready(d: dict[str, Any]) -> bool:
    return bool((d.get("status") or {}).get("ready"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--objects", type=int, default=20)
    args = parser.parse_args()
    problem = machine_problem()
    if problem:
        sys.exit(f"operator_real_node: {problem}")
    import subprocess

    archive = subprocess.run(
        ["bash", "hack/images.sh", "operator"], cwd=REPO, capture_output=True, text=True
    )
    if archive.returncode != 0:
        sys.exit(f"hack/images.sh operator failed:\n{archive.stderr[-2000:]}")
    from tests.integration.servers import SeaweedS3

    n = args.objects
    plane = ControlPlane()
    node: RealNode | None = None
    bucket: Any = None
    operator = None
    with tempfile.TemporaryDirectory(prefix="substratus-bench-") as tmp:
        try:
            plane.start()
            plane.start_nodes()
            node = RealNode(plane).start()
            helper = next(
                i
                for i in node.load_image(Path(archive.stdout.strip().splitlines()[-1]))
                if i.endswith(":latest")
            )
            bucket = SeaweedS3(host=node.ip)
            bucket.start()
            bucket.create_bucket("artifacts")
            plane.kubectl("apply", "-f", str(REPO / "deploy" / "crds"))
            plane.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
            operator = start_operator(plane, Path(tmp), node_settings(bucket, helper))
            for ns in ("bench-warm", "bench-jobs", "bench-models"):
                plane.kubectl("create", "namespace", ns)
            container = {"name": "main", "image": TOOLBOX_IMAGE, "command": ["true"]}
            container["imagePullPolicy"] = "Never"

            def job(ns: str, name: str) -> dict[str, Any]:
                pod = {"restartPolicy": "Never", "containers": [container]}
                return {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "metadata": {"name": name, "namespace": ns},
                    "spec": {"backoffLimit": 0, "template": {"spec": pod}},
                }

            def model(ns: str, name: str) -> dict[str, Any]:
                spec = {"image": {"name": TOOLBOX_IMAGE}, "command": ["true"]}
                return {
                    "apiVersion": "substratus.ai/v1",
                    "kind": "Model",
                    "metadata": {"name": name, "namespace": ns},
                    "spec": spec,
                }

            # One of each first: images into the page cache, the bucket warm.
            run(plane, Job, "bench-warm", [job("bench-warm", "warm")], job_complete)
            run(plane, MODEL, "bench-warm", [model("bench-warm", "warm")], model_ready)
            bare = run(
                plane,
                Job,
                "bench-jobs",
                [job("bench-jobs", f"j{i}") for i in range(n)],
                job_complete,
            )
            ours = run(
                plane,
                MODEL,
                "bench-models",
                [model("bench-models", f"m{i}") for i in range(n)],
                model_ready,
            )
        finally:
            if operator is not None:
                stop_operator(operator)
            if node is not None:
                node.stop()
            if bucket is not None:
                bucket.stop()
            plane.stop()
    print(f"{n} no-op objects (`true` in the toolbox image) at once on one real node")
    print(f"{'':34} {'all done':>9} {'p50':>8} {'p95':>8}")
    for label, (wall, each) in (
        ("bare Jobs (kubelet, containerd)", bare),
        ("Models through the operator", ours),
    ):
        print(
            f"{label:34} {wall:>7.1f} s {statistics.median(each):>6.1f} s {pct(each, 0.95):>6.1f} s"
        )


if __name__ == "__main__":
    main()
