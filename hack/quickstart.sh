#!/usr/bin/env bash
# Set up, then run examples/quickstart on the local runtime, offline, on CPU: a Dataset, the
# SmolLM2-135M-Instruct base Model, a LoRA fine-tune of it and a Server, then a question to it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python examples/quickstart/run.py "$@"
