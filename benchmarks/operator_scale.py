"""1,000 Models applied at once to a real control plane with kwok nodes, against creating the
same 1,000 Jobs directly with a plain client (the floor).

    python benchmarks/operator_scale.py [--objects 1000] [--threads 16]

Needs the binaries of `bash hack/control-plane.sh` and the test extra (`hack/setup.sh --test`).
Starts etcd, kube-apiserver, controller-manager, scheduler and kwok (tests/kube/cluster.py),
ten simulated nodes, and the operator as a process with its ServiceAccount's permissions
(deploy/operator/rbac.yaml). kwok runs no containers, so each Model's artifacts are committed
to the (file://) bucket beforehand, at the version its first Job commits to: a Model then goes
Model -> Job -> pod (kwok: Running, Succeeded) -> Job Complete -> Ready from its manifest.

Prints, side by side: create->Job p50/p99 (the create call's return to the Job's ADDED event on
a watch, both on this machine's clock), the time until every object has its Job (and, for
Models, a written status, then Ready), and the operator's peak RSS. The anchor to beat is
controller-runtime's reported ~39 s for 1,000 objects reconciled to steady state on one node.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lightkube.generic_resource import create_namespaced_resource  # noqa: E402
from lightkube.resources.batch_v1 import Job  # noqa: E402

from tests.kube.cluster import ControlPlane  # noqa: E402
from tests.kube.operatorproc import start_operator, stop_operator  # noqa: E402

MODEL = create_namespaced_resource("substratus.ai", "v1", "Model", "models")

NODES = 10  # kwok nodes of 110 pods each
IMAGE = "substratus.local/toolbox:latest"
VERBOSE = False  # --verbose: the operator's log tail and when Models became Ready


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Watch(threading.Thread):
    """Records when each object of a kind is first seen with ``key(obj)`` set on a watch."""

    def __init__(
        self,
        plane: ControlPlane,
        resource: Any,
        ns: str,
        key: Callable[[dict[str, Any]], str | None],
    ) -> None:
        super().__init__(daemon=True)
        self.client = client(plane)
        self.resource, self.ns, self.key = resource, ns, key
        self.seen: dict[str, float] = {}

    def run(self) -> None:
        try:
            for _, obj in self.client.watch(self.resource, namespace=self.ns):
                now = time.perf_counter()
                k = self.key(obj.to_dict())
                if k is not None and k not in self.seen:
                    self.seen[k] = now
        except Exception:  # the control plane stops at the end
            return


def client(plane: ControlPlane) -> Any:
    from lightkube import Client, KubeConfig

    return Client(config=KubeConfig.from_file(plane.kubeconfig), field_manager="bench")


def create_all(
    plane: ControlPlane, path: str, docs: list[dict[str, Any]], threads: int
) -> dict[str, float]:
    """POST every doc from ``threads`` threads; when each create returned."""
    from lightkube.codecs import from_dict

    api = client(plane)
    done: dict[str, float] = {}

    def one(doc: dict[str, Any]) -> None:
        api.create(from_dict(doc))
        done[doc["metadata"]["name"]] = time.perf_counter()

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, docs))
    return done


def job_doc(ns: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "main", "image": IMAGE, "command": ["true"]}],
                }
            },
        },
    }


def model_doc(ns: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "substratus.ai/v1",
        "kind": "Model",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"image": {"name": IMAGE}, "command": ["true"]},
    }


def namespace(plane: ControlPlane, name: str) -> None:
    plane.kubectl("create", "namespace", name)


def bench_plain_jobs(plane: ControlPlane, n: int, threads: int) -> dict[str, Any]:
    ns = "bench-jobs"
    namespace(plane, ns)

    def complete(o: dict[str, Any]) -> str | None:
        conditions = (o.get("status") or {}).get("conditions") or []
        done = any(c["type"] == "Complete" and c["status"] == "True" for c in conditions)
        return o["metadata"]["name"] if done else None

    jobs = Watch(plane, Job, ns, lambda o: o["metadata"]["name"])
    completes = Watch(plane, Job, ns, complete)
    jobs.start()
    completes.start()
    time.sleep(1)  # the watches are established
    t0 = time.perf_counter()
    created = create_all(plane, ns, [job_doc(ns, f"j{i}") for i in range(n)], threads)
    deadline = time.monotonic() + 900
    while len(completes.seen) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    lat = [jobs.seen[k] - created[k] for k in created]
    return {
        "lat": lat,
        "all_jobs": max(jobs.seen.values()) - t0,
        "all_done": max(completes.seen.values()) - t0,
    }


def bench_operator(plane: ControlPlane, n: int, threads: int, work: Path) -> dict[str, Any]:
    from substratus.storage import ArtifactStore

    ns = "bench-models"
    namespace(plane, ns)
    bucket = f"file://{work / 'bucket'}"
    store = ArtifactStore(bucket)
    files = work / "artifact"
    files.mkdir()
    (files / "weights.bin").write_bytes(b"w")
    for i in range(n):
        store.commit(files, store.object_url(ns, "models", f"m{i}"), "g1-a1-k8s")
    settings = {
        "SUBSTRATUS_ARTIFACT_URL": bucket,
        "SUBSTRATUS_HELPER_IMAGE": "substratus.local/helper:bench",
        "SUBSTRATUS_NAMESPACES": ns,
    }
    (work / "operator").mkdir()
    proc = start_operator(plane, work / "operator", settings)
    try:
        owner = "substratus.ai/object-name"
        jobs = Watch(plane, Job, ns, lambda o: (o["metadata"].get("annotations") or {}).get(owner))

        def written(o: dict[str, Any]) -> str | None:
            status = o.get("status") or {}
            return o["metadata"]["name"] if status.get("observedGeneration") else None

        def ready(o: dict[str, Any]) -> str | None:
            return o["metadata"]["name"] if (o.get("status") or {}).get("ready") else None

        statuses, readies = Watch(plane, MODEL, ns, written), Watch(plane, MODEL, ns, ready)
        for w in (jobs, statuses, readies):
            w.start()
        time.sleep(1)  # the watches are established
        peak = 0
        t0 = time.perf_counter()
        readies.seen.clear()
        created = create_all(plane, ns, [model_doc(ns, f"m{i}") for i in range(n)], threads)
        deadline = time.monotonic() + 600
        while len(readies.seen) < n and time.monotonic() < deadline and proc.alive():
            peak = max(peak, _rss_kb(proc.pid))
            time.sleep(0.1)
        peak = max(peak, _hwm_kb(proc.pid))
        if len(readies.seen) < n:
            raise RuntimeError(f"{len(readies.seen)}/{n} Ready; operator log:\n{proc.tail(30)}")
        lat = [jobs.seen[k] - created[k] for k in created]
        both = [max(jobs.seen[k], statuses.seen[k]) for k in created]
        return {
            "lat": lat,
            "all_jobs": max(jobs.seen.values()) - t0,
            "all_status": max(both) - t0,
            "all_ready": max(readies.seen.values()) - t0,
            "rss_mb": peak / 1024,
        }
    finally:
        stop_operator(proc)
        if VERBOSE:
            print(proc.tail(80), file=sys.stderr)
            ready_at = sorted(v - t0 for v in readies.seen.values())
            print(
                "ready at (s):",
                [
                    round(ready_at[int(q * (len(ready_at) - 1))], 1)
                    for q in (0, 0.1, 0.5, 0.9, 0.99, 1)
                ],
                file=sys.stderr,
            )


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _rss_kb(pid: int) -> int:
    return _status_kb(pid, "VmRSS:")


def _hwm_kb(pid: int) -> int:
    return _status_kb(pid, "VmHWM:")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    global VERBOSE
    VERBOSE = args.verbose
    n = args.objects
    plane = ControlPlane()
    with tempfile.TemporaryDirectory(prefix="substratus-bench-") as tmp:
        try:
            plane.start()
            plane.start_nodes()
            for i in range(NODES):
                plane.create_kwok_node(f"kwok-bench-{i}")
            plane.kubectl("apply", "-f", str(REPO / "deploy" / "crds"))
            plane.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
            plain = bench_plain_jobs(plane, n, args.threads)
            ours = bench_operator(plane, n, args.threads, Path(tmp))
        finally:
            plane.stop()
    print(f"{n} objects created from {args.threads} threads, kwok nodes, one machine")
    print(
        f"{'':34} {'create->Job p50':>16} {'p99':>9} {'all Jobs':>9} {'all status':>11} "
        f"{'all Ready':>10} {'peak RSS':>9}"
    )
    print(
        f"{'plain client, Jobs (the floor)':34} {statistics.median(plain['lat']) * 1e3:>13.0f} ms"
        f" {pct(plain['lat'], 0.99) * 1e3:>6.0f} ms {plain['all_jobs']:>7.1f} s {'':>11}"
        f" {plain['all_done']:>8.1f} s"
    )
    print(
        f"{'operator, Models':34} {statistics.median(ours['lat']) * 1e3:>13.0f} ms"
        f" {pct(ours['lat'], 0.99) * 1e3:>6.0f} ms {ours['all_jobs']:>7.1f} s"
        f" {ours['all_status']:>9.1f} s {ours['all_ready']:>8.1f} s {ours['rss_mb']:>6.0f} MB"
    )
    print(f"{'controller-runtime (reported)':34} {'':>16} {'':>9} {'':>9} {'~39 s':>11}")


if __name__ == "__main__":
    main()
