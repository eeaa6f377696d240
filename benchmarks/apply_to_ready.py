"""apply -> Ready wall time of a no-op Model, against running the same command directly.

    python benchmarks/apply_to_ready.py [--runs 20]

Prints p50/p95 side by side: the local runtime (through its client API, as `sub` uses it),
the `sub` CLI end to end (two processes: apply, then wait), and plain subprocess.run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMAND = ["true"]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def wait_ready(client: object, name: str, generation: int) -> None:
    for event in client.watch("Model", "default", name, timeout=60):  # type: ignore[attr-defined]
        obj = event.get("object")
        if not obj:
            continue
        st = obj.get("status") or {}
        if st.get("ready") and st.get("observedGeneration") == generation:
            return
        reason = next((c["reason"] for c in st.get("conditions", []) if c["type"] == "Ready"), "")
        if reason == "JobFailed":
            raise RuntimeError(st)
    raise TimeoutError(name)


def bench_runtime(runs: int) -> list[float]:
    from substratus.runtimes.local.client import LocalClient

    client = LocalClient()
    client.health()  # start the supervisor outside the timed region
    times = []
    for i in range(runs + 1):
        doc = {
            "apiVersion": "substratus.ai/v1",
            "kind": "Model",
            "metadata": {"name": f"noop-{i}"},
            "spec": {"image": {"name": "substratusai/base"}, "command": COMMAND},
        }
        t0 = time.perf_counter()
        client.apply(doc)
        wait_ready(client, f"noop-{i}", 1)
        if i:  # the first run warms caches
            times.append(time.perf_counter() - t0)
    return times


def bench_cli(runs: int, manifest_dir: Path) -> list[float]:
    times = []
    for i in range(runs):
        path = manifest_dir / f"cli-{i}.yaml"
        path.write_text(
            "apiVersion: substratus.ai/v1\nkind: Model\n"
            f"metadata: {{name: cli-{i}}}\n"
            'spec: {image: {name: substratusai/base}, command: ["true"]}\n'
        )
        t0 = time.perf_counter()
        sub = [sys.executable, "-m", "substratus.cli.main"]
        subprocess.run([*sub, "apply", "-f", str(path)], check=True, capture_output=True)
        subprocess.run(
            [*sub, "wait", f"model/cli-{i}", "--timeout", "60s"], check=True, capture_output=True
        )
        times.append(time.perf_counter() - t0)
    return times


def bench_subprocess(runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(COMMAND, check=True)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--cli-runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="substratus-bench-") as home:
        os.environ["SUBSTRATUS_HOME"] = home
        from substratus.runtimes.local.client import LocalClient

        try:
            results = {
                "subprocess.run (baseline)": bench_subprocess(args.runs),
                "local runtime apply->Ready": bench_runtime(args.runs),
                "sub apply + sub wait (CLI)": bench_cli(args.cli_runs, Path(home)),
            }
        finally:
            LocalClient(autostart=False).shutdown()
            time.sleep(0.5)
    base50 = statistics.median(results["subprocess.run (baseline)"])
    print(f"{'':32} {'runs':>5} {'p50 ms':>9} {'p95 ms':>9} {'p50 overhead ms':>16}")
    for label, values in results.items():
        p50, p95 = statistics.median(values), pct(values, 0.95)
        print(
            f"{label:32} {len(values):>5} {p50 * 1e3:>9.1f} {p95 * 1e3:>9.1f} "
            f"{(p50 - base50) * 1e3:>16.1f}"
        )


if __name__ == "__main__":
    main()
