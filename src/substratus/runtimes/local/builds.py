"""Turning `spec.image` build sources (git, upload) into something runnable on this machine.

A source directory becomes, in this order of preference:
- a container image, when a container engine is present and the directory has a Dockerfile
  (or Containerfile);
- a Python virtual environment, when it has a pyproject.toml or requirements.txt;
- the directory itself ("dir"), run with the platform's own Python environment.

Everything is cached under one `cache` directory, keyed by what identifies the source (the
commit sha and path for git, the md5 for an upload), so building the same source twice is a
no-op. Entries appear atomically: a checkout or an unpacked upload is made in `cache/tmp/` and
renamed into place when complete; a venv (which cannot be moved, its scripts name their own path)
is made in a fresh directory and published by atomically placing a symlink to it. A build killed
half-way leaves only garbage that is never taken for a finished entry, and that the next build
of the same key removes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TextIO

from substratus.api.common import GitSource
from substratus.core.redaction import redact_userinfo
from substratus.runtimes.local.engines import BuildFailed, Engine, stream_command
from substratus.storage import file_md5, unpack_context

__all__ = [
    "BuildFailed",
    "BuiltImage",
    "build_dir",
    "build_from_git",
    "build_from_upload",
]

LOCAL_REGISTRY = "substratus.local"
GIT_TIMEOUT_S = 120.0
TMP_MAX_AGE_S = 24 * 3600
DOCKERFILES = ("Dockerfile", "Containerfile")
PYTHON_PROJECT_FILES = ("pyproject.toml", "requirements.txt")

_SHA_RE = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
_SCP_LIKE_RE = re.compile(r"^[^/]+:")  # [user@]host:path, git's ssh shorthand (":" before "/")


@dataclass(frozen=True)
class BuiltImage:
    """What a build produced. `ref` is what goes into status.image."""

    ref: str  # "substratus.local/<name>:<hash12>", "venv:<hash12>" or "dir:<hash12>"
    kind: Literal["container", "venv", "dir"]
    root: Path  # the source directory (after the git path is applied / the upload unpacked)
    python: Path | None = None  # the venv's python, for kind == "venv"


# --- helpers ---------------------------------------------------------------------------------


def _hash12(*parts: str | bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()[:12]


def _tag_component(name: str) -> str:
    """A name usable as an image repository path component: lowercase letters, digits, '-'."""
    cleaned = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return cleaned[:120] or "image"


def _is_local_path(url: str) -> bool:
    return "://" not in url and not _SCP_LIKE_RE.match(url)


def _git_env() -> dict[str, str]:
    env = dict(os.environ)
    env["GIT_TERMINAL_PROMPT"] = "0"  # never wait for a password on a terminal
    env["GIT_ALLOW_PROTOCOL"] = "file:git:http:https:ssh"  # no ext:: (runs commands) etc.
    env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes -o ConnectTimeout=30")
    env["LC_ALL"] = "C"  # English messages, which we quote
    return env


def _git_error_line(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("warning:", "hint:", "Cloning"))]
    line = (useful or lines or ["no error message"])[0]
    return line.removeprefix("fatal: ").removeprefix("error: ")


def _mkdir_tmp(cache: Path, prefix: str) -> Path:
    tmp_root = cache / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    # Left by builds that were killed; no build runs for a day.
    cutoff = time.time() - TMP_MAX_AGE_S
    for old in tmp_root.iterdir():
        with contextlib.suppress(OSError):
            if old.lstat().st_mtime < cutoff:
                shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=tmp_root))


def _publish_dir(tmp: Path, final: Path) -> Path:
    """Rename a complete `tmp` into `final`; if another build got there first, keep theirs."""
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return final


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock (released by the kernel if the process dies) on `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# --- git -------------------------------------------------------------------------------------


def _ls_remote(url: str, git: GitSource) -> tuple[str, str]:
    """The full ref name that `git` asks for in `url` (branch, tag or HEAD) and its commit sha."""
    shown = redact_userinfo(git.url)
    if git.tag:
        patterns = [f"refs/tags/{git.tag}", f"refs/tags/{git.tag}^{{}}"]
        field, what = "image.git.tag", f"no tag {git.tag!r}"
    elif git.branch:
        patterns = [f"refs/heads/{git.branch}"]
        field, what = "image.git.branch", f"no branch {git.branch!r}"
    else:
        patterns = ["HEAD"]
        field, what = "image.git.url", "no commits (no HEAD)"
    try:
        result = subprocess.run(
            ["git", "ls-remote", "--", url, *patterns],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            env=_git_env(),
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BuildFailed(
            f"image.git.url: cannot clone {shown}: no answer within {GIT_TIMEOUT_S:g} s"
        ) from exc
    except FileNotFoundError as exc:
        raise BuildFailed("image.git: git is not installed on this machine") from exc
    if result.returncode != 0:
        raise BuildFailed(
            f"image.git.url: cannot clone {shown}: "
            + redact_userinfo(_git_error_line(result.stderr))
        )
    refs: dict[str, str] = {}
    for line in result.stdout.splitlines():
        sha, _, ref = line.partition("\t")
        if _SHA_RE.match(sha):
            refs[ref] = sha
    # An annotated tag's own object is not a commit: prefer the peeled ("^{}") entry.
    for ref in reversed(patterns):
        if ref in refs:
            return patterns[0], refs[ref]
    raise BuildFailed(f"{field}: {shown} has {what}")


def _git_step(argv: list[str], log: TextIO, shown_url: str) -> None:
    log.write("$ " + " ".join(redact_userinfo(part) for part in argv) + "\n")
    log.flush()
    result = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        env=_git_env(),
        check=False,
    )
    log.write(redact_userinfo(result.stdout + result.stderr))
    log.flush()
    if result.returncode != 0:
        raise BuildFailed(
            f"image.git.url: cannot clone {shown_url}: "
            + redact_userinfo(_git_error_line(result.stderr))
        )


def _clone(url: str, git: GitSource, ref: str, sha: str, cache: Path, log: TextIO) -> Path:
    """A checkout of `sha` (what `ref` names) under cache/git/, unless it is there already.

    A shallow clone of exactly `ref` (refs/heads/B, refs/tags/T or HEAD): `git clone --branch`
    would take a branch over a tag of the same name.
    """
    final = cache / "git" / sha
    if final.is_dir():
        log.write(f"using cached checkout of {sha} in {final}\n")
        log.flush()
        return final
    tmp = _mkdir_tmp(cache, f"git-{sha[:12]}-")
    checkout = tmp / "src"
    shown = redact_userinfo(git.url)
    try:
        _git_step(["git", "-c", "init.defaultBranch=main", "init", "-q", str(checkout)], log, shown)
        fetch = ["git", "-C", str(checkout), "-c", "http.lowSpeedLimit=1000"]
        fetch += ["-c", "http.lowSpeedTime=60", "fetch", "--depth", "1", "--no-tags", "--quiet"]
        _git_step([*fetch, "--", url, ref], log, shown)
        checkout_cmd = ["git", "-C", str(checkout), "checkout", "-q", "--detach", "FETCH_HEAD"]
        _git_step(checkout_cmd, log, shown)
        head = subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if head != sha:
            # The ref moved between ls-remote and fetch: file the checkout under what we got.
            log.write(f"{ref} moved from {sha} to {head} while cloning\n")
            final = cache / "git" / head
            if final.is_dir():
                return final
        return _publish_dir(checkout, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_from_git(
    git: GitSource, cache: Path, engine: Engine | None, log: TextIO, *, tag_name: str
) -> BuiltImage:
    """Clone `git` (shallow, the branch or tag it names) and build the directory it selects.

    The commit is resolved with `git ls-remote` first, so a commit already built is not cloned
    again. Errors name the field at fault: image.git.url, .branch, .tag or .path.
    """
    cache = Path(cache)
    url = git.url
    if _is_local_path(url):
        url = str(Path(url).expanduser().absolute())
    ref, sha = _ls_remote(url, git)
    checkout = _clone(url, git, ref, sha, cache, log)
    sha = checkout.name
    src = checkout
    if git.path:
        src = checkout / git.path
        inside = src.resolve().is_relative_to(checkout.resolve())
        if not inside or not src.is_dir():
            raise BuildFailed(
                f"image.git.path: {git.path!r} is not a directory in {redact_userinfo(git.url)} "
                f"at commit {sha[:12]}"
            )
    source = f"git {redact_userinfo(git.url)} at {sha[:12]}" + (
        f" path {git.path}" if git.path else ""
    )
    return build_dir(
        src, cache, engine, log, tag_name=tag_name, key=f"git:{sha}:{git.path or ''}", source=source
    )


# --- upload ----------------------------------------------------------------------------------


def build_from_upload(
    tarball: Path, cache: Path, engine: Engine | None, log: TextIO, *, tag_name: str
) -> BuiltImage:
    """Unpack an uploaded (gzipped) tarball safely and build it. Cached by the tarball's md5."""
    cache = Path(cache)
    try:
        md5 = file_md5(Path(tarball))
    except OSError as exc:
        raise BuildFailed(f"image.upload: cannot read the uploaded tarball: {exc}") from exc
    final = cache / "uploads" / md5
    if final.is_dir():
        log.write(f"using cached upload {md5} in {final}\n")
        log.flush()
    else:
        tmp = _mkdir_tmp(cache, f"upload-{md5[:12]}-")
        try:
            unpacked = tmp / "src"
            unpacked.mkdir()
            log.write(f"unpacking upload {md5}\n")
            log.flush()
            try:
                unpack_context(Path(tarball), unpacked)
            except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
                raise BuildFailed(
                    f"image.upload: the uploaded file is not a valid build context tarball: {exc}"
                ) from exc
            _publish_dir(unpacked, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return build_dir(
        final, cache, engine, log, tag_name=tag_name, key=f"upload:{md5}", source=f"upload {md5}"
    )


# --- a directory -----------------------------------------------------------------------------


def _dockerfile(src: Path) -> Path | None:
    for name in DOCKERFILES:
        if (src / name).is_file():
            return src / name
    return None


def _venv_key(src: Path, key: str) -> str:
    parts: list[str | bytes] = [key, sys.version, sys.executable]
    for name in PYTHON_PROJECT_FILES:
        path = src / name
        parts += [name, path.read_bytes() if path.is_file() else b"<absent>"]
    return _hash12(*parts)


def _pip_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH", "PIP_USER", "PIP_TARGET", "PIP_PREFIX"):
        env.pop(name, None)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _build_venv(src: Path, cache: Path, log: TextIO, *, key: str, source: str) -> BuiltImage:
    h12 = _venv_key(src, key)
    venvs = cache / "venvs"
    link = venvs / h12
    python = link / "bin" / "python"
    image = BuiltImage(ref=f"venv:{h12}", kind="venv", root=src, python=python)
    if link.is_symlink() and python.exists():
        log.write(f"using cached venv {link}\n")
        log.flush()
        return image
    with _locked(venvs / f"{h12}.lock"):
        if link.is_symlink() and python.exists():  # built by another process meanwhile
            log.write(f"using cached venv {link}\n")
            log.flush()
            return image
        # Whatever is here is left from a killed build: nobody else holds the lock.
        for stale in venvs.glob(f"{h12}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        for stale in venvs.glob(f".{h12}.link-*"):
            stale.unlink(missing_ok=True)
        if link.is_symlink():
            link.unlink()
        target = venvs / f"{h12}-{uuid.uuid4().hex[:8]}"
        try:
            _install_venv(src, target, cache, log, source=source)
            tmp_link = venvs / f".{h12}.link-{uuid.uuid4().hex[:8]}"
            tmp_link.symlink_to(target.name)
            os.replace(tmp_link, link)  # the atomic step that makes the venv visible
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
    return image


def _install_venv(src: Path, target: Path, cache: Path, log: TextIO, *, source: str) -> None:
    env = _pip_env()
    stream_command(
        [sys.executable, "-m", "venv", str(target)],
        log,
        what=f"image: creating a venv for {source}",
        env=env,
    )
    vpython = str(target / "bin" / "python")
    pip = [vpython, "-m", "pip", "install", "--progress-bar", "off"]
    try:
        # Old pips (as ensurepip installs) can backtrack for many minutes on big dependency sets.
        stream_command([*pip, "-U", "pip"], log, what="upgrading pip", env=env)
    except BuildFailed as exc:
        log.write(f"warning: {str(exc).splitlines()[0]}; going on with the pip the venv has\n")
        log.flush()
    if (src / "requirements.txt").is_file():
        stream_command(
            [*pip, "-r", "requirements.txt"],
            log,
            what=f"image: pip install -r requirements.txt of {source}",
            cwd=src,
            env=env,
        )
    if (src / "pyproject.toml").is_file():
        # Build from a copy: setuptools writes build/ and *.egg-info into the tree it builds.
        tmp = _mkdir_tmp(cache, "project-")
        try:
            copy = tmp / "src"
            shutil.copytree(src, copy, symlinks=True, ignore=shutil.ignore_patterns(".git"))
            stream_command(
                [*pip, str(copy)],
                log,
                what=f"image: pip install of the project in {source}",
                cwd=copy,
                env=env,
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def build_dir(
    src: Path,
    cache: Path,
    engine: Engine | None,
    log: TextIO,
    *,
    tag_name: str,
    key: str,
    source: str | None = None,
) -> BuiltImage:
    """Build the directory `src`, whose content `key` identifies (e.g. a commit sha and path).

    `tag_name` names the container image; `source` describes `src` in messages.
    """
    src = Path(src)
    cache = Path(cache)
    source = source or str(src)
    if not src.is_dir():
        raise BuildFailed(f"image: {source} is not a directory")
    dockerfile = _dockerfile(src)
    if engine is not None and dockerfile is not None:
        ref = f"{LOCAL_REGISTRY}/{_tag_component(tag_name)}:{_hash12(key)}"
        if engine.image_exists(ref):
            log.write(f"using cached image {ref}\n")
            log.flush()
        else:
            default = dockerfile.name == "Dockerfile"
            engine.build(src, ref, log, dockerfile=None if default else dockerfile)
        return BuiltImage(ref=ref, kind="container", root=src)
    if any((src / name).is_file() for name in PYTHON_PROJECT_FILES):
        return _build_venv(src, cache, log, key=key, source=source)
    if dockerfile is not None:
        raise BuildFailed(
            f"image: building {source} needs podman or docker (it has a {dockerfile.name} and "
            "no pyproject.toml/requirements.txt to run it as a Python project)"
        )
    return BuiltImage(ref=f"dir:{_hash12(key)}", kind="dir", root=src)
