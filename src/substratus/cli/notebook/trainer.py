"""Notebook to trainer (the design's future item): on the way out of a notebook, a
``model-<epoch or branch>.yaml`` in the directory that trains the code as a Model.

- The image: the git repository and branch when the directory is a clean checkout whose branch
  is pushed (the Model is built from what the remote has: nothing local is lost); else the image
  the notebook was built from, pinned, when the directory still packs to the same md5 and the
  runtime built a real image (a registry's, or a local container engine's); else
  ``image.upload`` of the directory (``sub apply -f`` uploads it; the build is content-addressed,
  so an unchanged directory is not built twice).
- ``baseModel`` and ``trainingDataset``: the notebook's ``model`` and ``dataset`` (a blank
  dataset with a comment when the notebook had none); ``resources``, ``params`` and ``env``: the
  notebook's.
- ``command``: ``--trainer-command``, else ``python train.py`` (or the one top-level script
  whose name says train), from the image's working directory.
"""

from __future__ import annotations

import copy
import re
import shlex
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from substratus.cli.notebook.spec import API_VERSION, has_dockerfile
from substratus.cli.targets import UsageError
from substratus.core.client import Client
from substratus.storage import pack_context

PROCESS_BUILDS = ("venv:", "dir:")  # local builds that are no image a manifest can name


def _git(directory: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(directory), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_source(directory: Path) -> tuple[dict[str, str] | None, str]:
    """``image.git`` for a clean, pushed checkout, else None and why not."""
    top = _git(directory, "rev-parse", "--show-toplevel")
    if top is None:
        return None, "not a git checkout"
    branch = _git(directory, "symbolic-ref", "--short", "-q", "HEAD")
    if not branch:
        return None, "HEAD is not on a branch"
    remote = _git(directory, "config", f"branch.{branch}.remote")
    url = _git(directory, "remote", "get-url", remote) if remote else None
    if not url:
        return None, f"branch {branch} has no upstream remote"
    if _git(directory, "status", "--porcelain", "--untracked-files=normal", "--", "."):
        return None, "the checkout has uncommitted changes"
    if _git(directory, "rev-parse", "HEAD") != _git(directory, "rev-parse", "@{upstream}"):
        return None, f"branch {branch} is not pushed to {remote}"
    source = {"url": url, "branch": branch}
    rel = Path(directory).resolve().relative_to(Path(top).resolve()).as_posix()
    if rel != ".":
        source["path"] = rel
    return source, f"{url} branch {branch}"


def trainer_command(directory: Path, given: str | None) -> list[str]:
    if given:
        return shlex.split(given)
    if (directory / "train.py").is_file():
        return ["python", "train.py"]
    candidates = sorted(p.name for p in directory.glob("*.py") if "train" in p.stem.lower())
    if len(candidates) == 1:
        return ["python", candidates[0]]
    found = f" (found {', '.join(candidates)})" if candidates else ""
    raise UsageError(f"no training script to run{found}: pass --trainer-command 'python X.py'")


def _suffix(directory: Path, git: dict[str, str] | None) -> str:
    if git is not None:
        text = re.sub(r"[^a-z0-9-]+", "-", git["branch"].lower()).strip("-")
        if text:
            return text[:40].rstrip("-")
    return str(int(time.time()))


def _image(
    nb: dict[str, Any], directory: Path, git: dict[str, str] | None
) -> tuple[dict[str, Any], str]:
    if git is not None:
        return {"git": git}, "built from the git branch"
    built = str((nb.get("status") or {}).get("image") or "")
    upload = ((nb.get("spec") or {}).get("image") or {}).get("upload") or {}
    if built and not built.startswith(PROCESS_BUILDS) and upload.get("md5"):
        with tempfile.TemporaryDirectory(prefix="substratus-trainer-") as tmp:
            md5 = pack_context(directory, Path(tmp) / "context.tar.gz")
        if md5 == upload["md5"]:
            return {"name": built}, "the image the notebook was built from (the same files)"
    return {"upload": {}}, "built from this directory when applied (sub apply -f uploads it)"


def trainer_manifest(
    nb: dict[str, Any], directory: Path, command: list[str], git: dict[str, str] | None
) -> tuple[str, str]:
    """(file name, YAML text) of the trainer Model for a notebook."""
    nspec = nb.get("spec") or {}
    suffix = _suffix(directory, git)
    name = f"{nb['metadata']['name'][: 62 - len(suffix)]}-{suffix}".strip("-")
    image, how = _image(nb, directory, git)
    spec: dict[str, Any] = {"image": image, "command": command}
    if nspec.get("model"):
        spec["baseModel"] = copy.deepcopy(nspec["model"])
    spec["trainingDataset"] = copy.deepcopy(nspec.get("dataset") or {})
    for key in ("resources", "params", "env"):
        spec[key] = copy.deepcopy(nspec.get(key) or {})
    body = {
        "apiVersion": API_VERSION,
        "kind": "Model",
        "metadata": {"name": name, "namespace": nb["metadata"]["namespace"]},
        "spec": spec,
    }
    text = yaml.safe_dump(body, sort_keys=False)
    if not nspec.get("dataset"):
        text = text.replace(
            "  trainingDataset: {}\n",
            "  # The notebook had no dataset: name the Dataset to train on.\n"
            "  trainingDataset: {}\n",
        )
    if "upload" in image and not has_dockerfile(directory):
        how += "; on a cluster the directory needs a Dockerfile to be built"
    header = (
        f"# Trains the code of notebook/{nb['metadata']['name']} as a Model: "
        f"sub apply -f model-{suffix}.yaml\n# image: {how}.\n"
    )
    return f"model-{suffix}.yaml", header + text


def write_trainer(c: Client, namespace: str, name: str, directory: Path, opts: Any) -> Path:
    nb = c.get("Notebook", namespace, name)
    command = trainer_command(directory, getattr(opts, "trainer_command", None))
    git, _why = git_source(directory)
    filename, text = trainer_manifest(nb, directory, command, git)
    path = directory / filename
    path.write_text(text)
    return path
