"""Model loader throughput (MB/s) against a plain copy of the same files, side by side.

    python benchmarks/loader_throughput.py [--mb 200] [--files 4] [--runs 3]

Makes ``--mb`` MB of random files (a few large "weights" and small JSON files), then times:

- hub: the loader (``name``, huggingface_hub's ``snapshot_download``) against the hub-shaped
  server of ``tests/workloads/fake_hub.py`` over loopback, and a raw HTTP GET loop over the
  same files from the same server (urllib, one file after the other);
- local: the loader (``url`` = the directory) and ``shutil.copytree``.

The loader runs as users run it, ``python -m substratus.workloads.model_loader`` (process start
and imports included: "end to end"); its own summary line gives the download phase alone. Each
figure is the best of ``--runs``, plain and loader runs taking turns; the ratio is loader
throughput / plain throughput (the target is at least 0.9).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.workloads.fake_hub import FakeHub  # noqa: E402

REPO = "bench/model"


def make_files(repo: Path, total_mb: int, n_large: int) -> int:
    repo.mkdir(parents=True)
    small = {"config.json": 2_000, "tokenizer.json": 500_000, "generation_config.json": 200}
    for name, size in small.items():
        (repo / name).write_bytes(os.urandom(size))
    each = (total_mb * 1_000_000 - sum(small.values())) // n_large
    for i in range(n_large):
        with (repo / f"model-{i + 1:05d}-of-{n_large:05d}.safetensors").open("wb") as f:
            left = each
            while left:
                chunk = min(left, 8 << 20)
                f.write(os.urandom(chunk))
                left -= chunk
    return sum(p.stat().st_size for p in repo.iterdir())


def loader(run: Path, params: dict[str, str], env: dict[str, str]) -> tuple[float, float]:
    """(end-to-end seconds, download-phase seconds from the loader's summary line)."""
    run.mkdir(parents=True)
    (run / "params.json").write_text(json.dumps(params))
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "substratus.workloads.model_loader"],
        cwd=run,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    if done.returncode:
        raise RuntimeError(done.stderr)
    m = re.search(r"MB in ([\d.]+) s", done.stdout)
    return wall, float(m.group(1)) if m else wall


def http_get_loop(base: str, names: list[str], out: Path) -> None:
    out.mkdir(parents=True)
    for name in names:
        with urllib.request.urlopen(f"{base}/{name}") as r, (out / name).open("wb") as f:
            shutil.copyfileobj(r, f, 1 << 20)


def interleaved(
    runs: int, a: Callable[[int], float], b: Callable[[int], float]
) -> tuple[float, float]:
    """Best times of ``a`` and ``b`` run in turns (a shared machine's load hits both alike)."""
    ta, tb = [], []
    for i in range(runs):
        ta.append(a(i))
        tb.append(b(i))
    return min(ta), min(tb)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--files", type=int, default=4, help="large files")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workers", type=int, default=8, help="the loader's workers param")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="loader-bench-") as tmp:
        work = Path(tmp)
        repo = work / "hub" / REPO
        size = make_files(repo, args.mb, args.files)
        names = sorted(p.name for p in repo.iterdir())
        mb = size / 1e6
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PARAM_", "HF_"))}
        env["HF_HOME"] = str(work / "hf-home")
        rows: list[tuple[str, float, float, float]] = []

        with FakeHub(work / "hub") as hub:
            hub.warm()
            env["HF_ENDPOINT"] = hub.url
            sha = hub.sha(repo)
            base = f"{hub.url}/{REPO}/resolve/{sha}"

            def plain_http(i: int) -> float:
                out = work / f"get-{i}"
                t0 = time.perf_counter()
                http_get_loop(base, names, out)
                took = time.perf_counter() - t0
                shutil.rmtree(out)
                return took

            phases: list[float] = []

            def hub_loader(i: int) -> float:
                run = work / f"hub-run-{i}"
                wall, phase = loader(run, {"name": REPO, "workers": str(args.workers)}, env)
                phases.append(phase)
                shutil.rmtree(run)
                return wall

            plain, wall = interleaved(args.runs, plain_http, hub_loader)
            rows.append(("hub over loopback", plain, wall, min(phases)))

        def plain_copy(i: int) -> float:
            out = work / f"copy-{i}"
            t0 = time.perf_counter()
            shutil.copytree(repo, out)
            took = time.perf_counter() - t0
            shutil.rmtree(out)
            return took

        local_phases: list[float] = []

        def local_loader(i: int) -> float:
            run = work / f"local-run-{i}"
            wall, phase = loader(run, {"url": str(repo), "workers": str(args.workers)}, env)
            local_phases.append(phase)
            shutil.rmtree(run)
            return wall

        plain, wall = interleaved(args.runs, plain_copy, local_loader)
        rows.append(("local directory", plain, wall, min(local_phases)))

    print(
        f"{len(names)} files, {mb:.0f} MB ({args.files} large); best of {args.runs}; "
        f"loader workers={args.workers}; {os.cpu_count()} CPUs; load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'source':<20} {'plain MB/s':>11} {'loader e2e MB/s':>16} {'ratio':>6} "
        f"{'loader download MB/s':>21} {'ratio':>6}"
    )
    plain_names = {"hub over loopback": "HTTP GET loop", "local directory": "copytree"}
    for name, plain, wall, phase in rows:
        print(
            f"{name:<20} {mb / plain:>11.0f} {mb / wall:>16.0f} {plain / wall:>6.2f} "
            f"{mb / phase:>21.0f} {plain / phase:>6.2f}   (plain = {plain_names[name]})"
        )


if __name__ == "__main__":
    main()
