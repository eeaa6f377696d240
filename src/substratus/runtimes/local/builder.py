"""Image builds for the local runtime: a thread per build, recorded as a run of role "build"."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from substratus.api.kinds import Resource
from substratus.runtimes.local.builds import (
    BuildFailed,
    build_from_git,
    build_from_upload,
)
from substratus.runtimes.local.db import Run
from substratus.runtimes.local.engines import EngineError
from substratus.storage import file_md5

if TYPE_CHECKING:
    from substratus.runtimes.local.runner import Runner

log = logging.getLogger("substratus.supervisor")


def start_build(runner: Runner, obj: Resource, source: str) -> None:
    """Record a build run and build in a thread; the result lands in the runs table."""
    label = "build"
    _, log_file, exit_file = runner.run_dir(obj, label)
    run = runner.db.add_run(
        kind=obj.KIND,
        namespace=obj.metadata.namespace,
        name=obj.metadata.name,
        role="build",
        generation=obj.metadata.generation or 1,
        attempt=1,
        workdir="",
        log=str(log_file.relative_to(runner.paths.home)),
        exit_file=str(exit_file),
        started_at=time.time(),
        result={"source": source},
    )
    threading.Thread(
        target=_build,
        args=(runner, obj, run, log_file, source),
        name=f"build-{run.id}",
        daemon=True,
    ).start()


def _build(runner: Runner, obj: Resource, run: Run, log_file: Path, source: str) -> None:
    cache = runner.paths.build_cache
    tag = f"{obj.metadata.namespace}-{obj.PLURAL}-{obj.metadata.name}"
    try:
        engine = runner.ctl.engine()
        with open(log_file, "a") as out:
            if obj.spec.image.git is not None:
                built = build_from_git(obj.spec.image.git, cache, engine, out, tag_name=tag)
            else:
                tarball = _fetch_upload(runner, obj)
                try:
                    built = build_from_upload(tarball, cache, engine, out, tag_name=tag)
                finally:
                    # A copy downloaded from a bucket: the build cache keeps what it unpacked.
                    if tarball.is_relative_to(runner.paths.cache / "uploads"):
                        tarball.unlink(missing_ok=True)
    except (BuildFailed, EngineError, OSError, ValueError) as exc:
        _failed(runner, run, str(exc))
    except Exception as exc:  # never leave the object "Building" forever
        log.exception("building %s failed", obj.key)
        _failed(runner, run, f"{type(exc).__name__}: {exc}")
    else:
        result = {
            "source": source,
            "ref": built.ref,
            "kind": built.kind,
            "root": str(built.root),
            "python": str(built.python) if built.python else None,
        }
        runner.db.update_run(
            run.id,
            only_if_phase="running",
            phase="succeeded",
            finished_at=time.time(),
            result=result,
        )
    finally:
        runner.ctl.enqueue(obj.key)


def _failed(runner: Runner, run: Run, message: str) -> None:
    runner.db.update_run(
        run.id, only_if_phase="running", phase="failed", message=message, finished_at=time.time()
    )


def _fetch_upload(runner: Runner, obj: Resource) -> Path:
    url = runner.ctl.upload_url(obj)
    assert url is not None and obj.spec.image.upload is not None
    local = runner.ctl.uploads.local_path(url)
    if local is None:
        local = runner.paths.cache / "uploads" / Path(url).name
        runner.ctl.uploads.get_file(url, local)
    expected = obj.spec.image.upload.md5
    if expected:
        actual = file_md5(local)  # streamed: an upload may be larger than memory
        if actual != expected:
            raise ValueError(
                f"spec.image.upload.md5: the uploaded context has md5 {actual}, expected {expected}"
            )
    return local
