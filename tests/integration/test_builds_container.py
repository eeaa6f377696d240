"""A real container engine: build an image from git, run it with a mount, env and a port, stop it.

Needs podman or docker answering on this machine (hack/container-engine.sh sets podman up on
Debian) and a static busybox to make a base image from; skipped with the reason otherwise.
"""

from __future__ import annotations

import io
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from substratus.api.common import GitSource
from substratus.runtimes.local import engines
from substratus.runtimes.local.builds import BuildFailed, build_from_git
from substratus.runtimes.local.engines import Engine, EngineError, detect_engine
from tests.integration.build_fixtures import ensure_base_image, free_port, make_repo

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    engines.clear_engine_cache()
    try:
        found = detect_engine()
    except EngineError as exc:
        pytest.skip(f"no usable container engine: {exc}")
    if found is None and os.environ.get(engines.ENGINE_ENV, "").lower() == "none":
        pytest.skip(f"{engines.ENGINE_ENV}=none")
    if found is None:
        pytest.skip(
            "no container engine answers (`podman info`/`docker info`); "
            "run hack/container-engine.sh as root to set podman up"
        )
    if ensure_base_image(found) is None:
        pytest.skip("no static busybox (Debian busybox-static) to make a local base image from")
    yield found
    engines.clear_engine_cache()


def dockerfile(base: str) -> str:
    return (
        f"FROM {base}\n"
        "RUN mkdir -p /srv && echo built-by-dockerfile > /srv/built.txt\n"
        "COPY serve.sh /srv/serve.sh\n"
        'CMD ["/bin/sh", "/srv/serve.sh"]\n'
    )


SERVE = """\
cp /content/data/in.txt /content/artifacts/copied.txt
echo "$GREETING" > /content/artifacts/env.txt
cat /srv/built.txt
pwd
touch /content/data/x 2>/dev/null && echo data-writable || echo data-read-only
mkdir -p /tmp/www && cp /content/data/in.txt /tmp/www/index.html
exec httpd -f -p 8080 -h /tmp/www
"""


def test_build_and_run_a_container(engine: Engine, tmp_path: Path) -> None:
    base = ensure_base_image(engine)
    assert base is not None
    make_repo(
        tmp_path / "repo",
        {"image/Dockerfile": dockerfile(base), "image/serve.sh": SERVE, "README.md": "x\n"},
    )
    cache = tmp_path / "cache"
    source = GitSource(url=(tmp_path / "repo").as_uri(), path="image")
    name = f"t{uuid.uuid4().hex[:8]}"
    log = io.StringIO()
    image = build_from_git(source, cache, engine, log, tag_name=f"Test-{name}")
    try:
        assert image.kind == "container"
        assert image.ref.startswith(f"substratus.local/test-{name}:")
        assert engine.image_exists(image.ref)
        assert "built-by-dockerfile" in log.getvalue()  # the RUN step ran

        again = io.StringIO()
        assert build_from_git(source, cache, engine, again, tag_name=f"Test-{name}") == image
        assert "using cached image" in again.getvalue()

        data = tmp_path / "data"
        data.mkdir()
        (data / "in.txt").write_text("hello from the host\n")
        artifacts = tmp_path / "artifacts"
        artifacts.mkdir()
        port = free_port()
        argv = engine.run_argv(
            image.ref,
            None,
            name=name,
            mounts=[(data, "/content/data", True), (artifacts, "/content/artifacts", False)],
            env={"GREETING": "hi there"},
            ports={port: 8080},
        )
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, proc.communicate()[0]
                try:
                    response = httpx.get(f"http://127.0.0.1:{port}/index.html", timeout=2)
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "the container never served its port"
                    time.sleep(0.2)
            assert response.status_code == 200
            assert response.text == "hello from the host\n"
            assert (artifacts / "copied.txt").read_text() == "hello from the host\n"
            assert (artifacts / "env.txt").read_text() == "hi there\n"
            started = time.monotonic()
            engine.stop(name)
            output, _ = proc.communicate(timeout=60)
            stopped_in = time.monotonic() - started
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert "built-by-dockerfile\n/content\ndata-read-only\n" in output
        if engine.init:  # SIGTERM reached httpd, which is not PID 1: no 10 s wait for SIGKILL
            assert stopped_in < engines.STOP_TIMEOUT_S - 2, f"stop took {stopped_in:.1f} s"
        engine.stop(name)  # already gone: fine
        # --rm: the name is free again.
        check = subprocess.run([engine.binary, "container", "inspect", name], capture_output=True)
        assert check.returncode != 0
    finally:
        subprocess.run([engine.binary, "rmi", "-f", image.ref], capture_output=True)


def test_exit_status_and_output_flow_through(engine: Engine) -> None:
    base = ensure_base_image(engine)
    assert base is not None
    name = f"t{uuid.uuid4().hex[:8]}"
    argv = engine.run_argv(
        base,
        ["sh", "-c", 'echo "to stdout $X"; echo to-stderr >&2; exit 3'],
        name=name,
        mounts=[],
        env={"X": "1"},
        ports={},
    )
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3
    assert done.stdout == "to stdout 1\n"
    assert done.stderr.endswith("to-stderr\n")


def test_failed_build_reports_the_engine_error(engine: Engine, tmp_path: Path) -> None:
    base = ensure_base_image(engine)
    make_repo(tmp_path / "repo", {"Dockerfile": f"FROM {base}\nRUN echo about to fail; exit 7\n"})
    with pytest.raises(BuildFailed) as info:
        build_from_git(
            GitSource(url=str(tmp_path / "repo")),
            tmp_path / "cache",
            engine,
            io.StringIO(),
            tag_name="broken",
        )
    message = str(info.value)
    assert f"image: {engine.name} build of substratus.local/broken:" in message
    assert "about to fail" in message
    # The failed step's container is removed too (--force-rm).
    ps = subprocess.run(
        [
            engine.binary,
            "ps",
            "-a",
            "--no-trunc",
            "--filter",
            f"ancestor={base}",
            "--format",
            "{{.Command}}",
        ],
        capture_output=True,
        text=True,
    )
    assert "about to fail" not in ps.stdout
