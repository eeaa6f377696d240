"""The notebook image (``substratusai/notebook``, ``substratusai/notebook-gpu``): JupyterLab
serving the working directory under the container contract.

``python -m substratus.workloads.notebook`` replaces itself with JupyterLab (so signals reach
Jupyter directly) serving ``$PORT`` (default 8888) on ``$HOST`` with the working directory as
its root, where ``model/`` and ``data/`` are mounted and ``artifacts/`` is collected.

- ``NOTEBOOK_TOKEN`` is required; without one the notebook refuses to start (never an open
  server). It reaches Jupyter through ``JUPYTER_TOKEN`` (the environment, not the command
  line, so it is not in ``ps`` or the logs).
- ``GET /api`` answers 200 without a token once the server is up (the readiness probe); every
  other endpoint needs the token (``allow_unauthenticated_access=False``).
- Nothing reaches the network on its own: no news feed, no update check, the read-only
  extension manager (no PyPI lookups). Jupyter Server itself sends no telemetry.
- Jupyter's config, data and runtime directories (and IPython's, unless ``IPYTHONDIR`` is set)
  live in a private temporary directory, never in the user's home, so the user's own Jupyter
  config does not leak in and parallel notebooks do not collide.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from substratus.workloads import contract

DEFAULT_PORT = 8888
TOKEN_VAR = "NOTEBOOK_TOKEN"
# The Python of the image's own environment (a build's venv), for the notebook's kernel.
KERNEL_PYTHON_VAR = "NOTEBOOK_KERNEL_PYTHON"

# JupyterLab's own user settings, written into the private config dir: no news prompt, no
# update check from the browser either.
_LAB_USER_SETTINGS: dict[str, dict[str, object]] = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}


def jupyter_command(root: Path, host: str, port: int, python: str | None = None) -> list[str]:
    """The JupyterLab command line (no secrets on it)."""
    return [
        python or sys.executable,
        "-m",
        "jupyterlab",
        f"--ServerApp.ip={host}",
        f"--ServerApp.port={port}",
        # Exactly $PORT or fail: the runtime probes and routes to the port it handed out.
        "--ServerApp.port_retries=0",
        f"--ServerApp.root_dir={root}",
        "--ServerApp.open_browser=False",
        # Containers (and the local runtime's bind mounts) may run as root.
        "--ServerApp.allow_root=True",
        # Every endpoint without an explicit rule needs the token; /api stays open.
        "--ServerApp.allow_unauthenticated_access=False",
        # The platform owns the lifecycle (delete or suspend the Notebook).
        "--ServerApp.quit_button=False",
        # Nothing phones home: no news feed, no update check, no PyPI extension search.
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
    ]


def jupyter_env(token: str, state: Path, base: Mapping[str, str]) -> dict[str, str]:
    """The environment for JupyterLab: the token and private state directories."""
    env = dict(base)
    env.pop("JUPYTER_TOKEN_FILE", None)
    env["JUPYTER_TOKEN"] = token
    env["JUPYTER_CONFIG_DIR"] = str(state / "config")
    env["JUPYTER_DATA_DIR"] = str(state / "data")
    env["JUPYTER_RUNTIME_DIR"] = str(state / "runtime")
    env["JUPYTER_PLATFORM_DIRS"] = "1"
    # Our private data dir before the environment's: a kernel written there (the image's own
    # Python, write_kernel_spec) wins over the one ipykernel installed beside Jupyter.
    env["JUPYTER_PREFER_ENV_PATH"] = "0"
    env.setdefault("IPYTHONDIR", str(state / "ipython"))
    # jupyter-lsp runs `npm prefix --global` where npm exists: keep npm's cache and log out
    # of the home directory and npm from asking the registry for its own updates.
    env.setdefault("NPM_CONFIG_CACHE", str(state / "npm"))
    env.setdefault("NPM_CONFIG_UPDATE_NOTIFIER", "false")
    return env


def prepare_state(state: Path) -> None:
    """Create the private Jupyter directories and JupyterLab's user settings in them."""
    for name in ("config", "data", "runtime"):
        (state / name).mkdir(mode=0o700, parents=True, exist_ok=True)
    settings = state / "config" / "lab" / "user-settings"
    for rel, values in _LAB_USER_SETTINGS.items():
        path = settings / rel
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values, indent=2) + "\n")


def write_kernel_spec(state: Path, kernel_python: str) -> str:
    """Make the default kernel (``python3``) run in ``kernel_python``'s environment, so the
    notebook imports what the image installed. With ipykernel there, that Python runs the
    kernel; without it, this one does, with that environment's packages first on its path.
    Returns a line for the log saying which."""
    probe = (
        "import importlib.util, json, site; "
        "print(json.dumps([importlib.util.find_spec('ipykernel') is not None, "
        "site.getsitepackages()]))"
    )
    try:
        out = subprocess.run(
            [kernel_python, "-c", probe], capture_output=True, text=True, timeout=60, check=True
        ).stdout
        has_ipykernel, site_packages = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        return f"kernel: {kernel_python} cannot be used ({exc}); the default kernel is used"
    launcher = ["-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec: dict[str, object] = {"display_name": "Python 3", "language": "python"}
    if has_ipykernel:
        spec["argv"] = [kernel_python, *launcher]
        note = f"kernel: {kernel_python}"
    else:
        spec["argv"] = [sys.executable, *launcher]
        spec["env"] = {"PYTHONPATH": os.pathsep.join(site_packages)}
        note = f"kernel: {sys.executable} with the packages of {kernel_python} (no ipykernel there)"
    kernel_dir = state / "data" / "kernels" / "python3"
    kernel_dir.mkdir(parents=True, exist_ok=True)
    (kernel_dir / "kernel.json").write_text(json.dumps(spec, indent=2) + "\n")
    return note


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args:
        return contract.fail(
            f"the notebook takes no arguments (got {' '.join(args)!r}); "
            "set spec.command to run a server of your own"
        )
    token = os.environ.get(TOKEN_VAR, "").strip()
    if not token:
        return contract.fail(
            f"{TOKEN_VAR} is not set: refusing to start a notebook server without a token "
            f"(set {TOKEN_VAR} to a secret string)"
        )
    if importlib.util.find_spec("jupyterlab") is None:
        return contract.fail(
            f"jupyterlab is not installed for {sys.executable} (pip install jupyterlab)"
        )
    try:
        port = contract.port(default=DEFAULT_PORT)
    except ValueError:
        return contract.fail(f"PORT: {os.environ.get('PORT')!r} is not a port number")
    if not 0 < port < 65536:
        return contract.fail(f"PORT: {port} is not a port number (1-65535)")
    host = contract.host()
    root = contract.content_dir().resolve()
    state = Path(tempfile.mkdtemp(prefix="substratus-notebook-"))
    prepare_state(state)
    kernel_python = os.environ.get(KERNEL_PYTHON_VAR)
    if kernel_python:
        print(write_kernel_spec(state, kernel_python), file=sys.stderr, flush=True)
    command = jupyter_command(root, host, port)
    env = jupyter_env(token, state, os.environ)
    mounted = [name for name in ("model", "data") if (root / name).is_dir()]
    print(
        f"notebook: JupyterLab on http://{host}:{port}/lab serving {root} "
        f"(mounted: {', '.join(mounted) or 'nothing'}; token from {TOKEN_VAR}; "
        f"Jupyter state in {state})",
        file=sys.stderr,
        flush=True,
    )
    sys.stdout.flush()
    os.execve(command[0], command, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
