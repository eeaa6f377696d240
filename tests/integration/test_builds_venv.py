"""Venv builds with real git, real pip (setuptools and pip come from PyPI) and real processes."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from substratus.api.common import GitSource
from substratus.runtimes.local.builds import BuildFailed, BuiltImage, build_from_git
from tests.integration.build_fixtures import make_repo

pytestmark = pytest.mark.integration

PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "demo-trainer"
version = "0.1.0"
dependencies = []

[project.scripts]
demo-train = "demo_trainer:main"

[tool.setuptools]
packages = ["demo_trainer"]
"""

PACKAGE = """\
VALUE = 42


def main() -> None:
    print("trained", VALUE)
"""


def run_python(image: BuiltImage, code: str, cwd: Path) -> str:
    assert image.python is not None
    out = subprocess.run(
        [str(image.python), "-c", code],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_pyproject_project_becomes_a_venv(tmp_path: Path) -> None:
    sha = make_repo(
        tmp_path / "repo",
        {
            "trainer/pyproject.toml": PYPROJECT,
            "trainer/demo_trainer/__init__.py": PACKAGE,
            "trainer/Dockerfile": "FROM python:3.11\n",  # no engine: run as a Python project
            "README.md": "demo\n",
        },
    )
    cache = tmp_path / "cache"
    source = GitSource(url=(tmp_path / "repo").as_uri(), path="trainer")
    log = io.StringIO()
    image = build_from_git(source, cache, None, log, tag_name="trainer")
    assert image.kind == "venv"
    assert image.ref.startswith("venv:")
    assert image.root == cache / "git" / sha / "trainer"
    assert image.python is not None and image.python.is_relative_to(cache / "venvs")
    assert "Successfully installed demo-trainer-0.1.0" in log.getvalue()
    # Installed into the venv, not imported from the source tree: run from elsewhere.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = "import sys, demo_trainer; print(demo_trainer.VALUE, sys.prefix != sys.base_prefix)"
    assert run_python(image, code, elsewhere) == "42 True"
    # The console script's shebang names the venv where it was built, which is still there.
    script = image.python.parent / "demo-train"
    out = subprocess.run([str(script)], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "trained 42", out.stderr
    # setuptools wrote its build files into a copy, not into the cached checkout.
    assert sorted(p.name for p in image.root.iterdir()) == [
        "Dockerfile",
        "demo_trainer",
        "pyproject.toml",
    ]

    started = time.monotonic()
    again_log = io.StringIO()
    again = build_from_git(source, cache, None, again_log, tag_name="trainer")
    elapsed = time.monotonic() - started
    assert again == image
    assert "using cached checkout" in again_log.getvalue()
    assert "using cached venv" in again_log.getvalue()
    assert "pip" not in again_log.getvalue()
    assert elapsed < 5, f"a cached build took {elapsed:.1f} s"


def test_empty_requirements_becomes_a_venv(tmp_path: Path) -> None:
    make_repo(tmp_path / "repo", {"requirements.txt": "", "job.py": "print('job ran')\n"})
    cache = tmp_path / "cache"
    source = GitSource(url=str(tmp_path / "repo"))
    image = build_from_git(source, cache, None, io.StringIO(), tag_name="job")
    assert image.kind == "venv" and image.python is not None
    out = run_python(image, "import sys; print(sys.prefix)", image.root)
    assert Path(out).resolve().parent == (cache / "venvs").resolve()
    job = subprocess.run(
        [str(image.python), "job.py"], cwd=image.root, capture_output=True, text=True, timeout=60
    )
    assert job.stdout == "job ran\n"
    log = io.StringIO()
    assert build_from_git(source, cache, None, log, tag_name="job") == image
    assert "using cached venv" in log.getvalue()


def test_failing_pip_install_names_the_step_and_publishes_nothing(tmp_path: Path) -> None:
    make_repo(tmp_path / "repo", {"requirements.txt": "./no-such-directory\n"})
    cache = tmp_path / "cache"
    log = io.StringIO()
    with pytest.raises(BuildFailed) as info:
        build_from_git(GitSource(url=str(tmp_path / "repo")), cache, None, log, tag_name="x")
    message = str(info.value)
    assert message.startswith("image: pip install -r requirements.txt of git ")
    assert "no-such-directory" in message  # pip's own complaint, from the log tail
    venvs = cache / "venvs"
    assert [p.name for p in venvs.iterdir() if not p.name.endswith(".lock")] == []


KILLABLE_BUILD = """
import io, pathlib, sys
from substratus.api.common import GitSource
from substratus.runtimes.local.builds import build_from_git
build_from_git(GitSource(url=sys.argv[1]), pathlib.Path(sys.argv[2]), None, io.StringIO(),
               tag_name="x")
"""


def test_killed_venv_build_is_not_taken_for_a_finished_one(tmp_path: Path) -> None:
    make_repo(tmp_path / "repo", {"requirements.txt": "", "job.py": "print(1)\n"})
    cache = tmp_path / "cache"
    venvs = cache / "venvs"
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(KILLABLE_BUILD), str(tmp_path / "repo"), str(cache)],
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (venvs.is_dir() and any(venvs.glob("*-*/bin/python"))):
            assert proc.poll() is None, "the build ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)  # mid-way: venv half made, pip not yet upgraded
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    leftovers = [p for p in venvs.iterdir() if p.is_dir() and not p.is_symlink()]
    assert leftovers, "the killed build left nothing: it was not killed mid-way"
    assert not [p for p in venvs.iterdir() if p.is_symlink()]  # nothing published

    log = io.StringIO()
    image = build_from_git(GitSource(url=str(tmp_path / "repo")), cache, None, log, tag_name="x")
    assert "using cached venv" not in log.getvalue()
    assert image.python is not None
    assert run_python(image, "print('ok')", tmp_path) == "ok"
    for stale in leftovers:
        assert not stale.exists()  # removed by the next build of the same key
