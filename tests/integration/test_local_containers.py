"""Foreign images and Dockerfile builds run by the local runtime under a real podman/docker.

Skipped, with the reason, where no container engine answers (hack/container-engine.sh sets
podman up on Debian as root).
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from substratus.runtimes.local import engines
from substratus.runtimes.local.engines import EngineError, detect_engine
from tests.conftest import Local
from tests.integration.build_fixtures import ensure_base_image, make_repo

pytestmark = pytest.mark.integration


@pytest.fixture
def image(local: Local, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv("SUBSTRATUS_CONTAINER_ENGINE")
    engines.clear_engine_cache()
    try:
        engine = detect_engine()
    except EngineError as exc:
        pytest.skip(f"no usable container engine: {exc}")
    if engine is None:
        pytest.skip("no container engine answers; run hack/container-engine.sh as root")
    base = ensure_base_image(engine)
    if base is None:
        pytest.skip("no static busybox to make a local base image from")
    return base


def out_dir(obj: dict[str, object]) -> Path:
    status = obj["status"]
    assert isinstance(status, dict)
    return Path(str(status["url"]).removeprefix("file://"))


def test_foreign_image_runs_in_a_container(local: Local, image: str) -> None:
    script = "echo $PARAM_GREETING > artifacts/g; cp params.json artifacts/; pwd > artifacts/pwd"
    local.apply(
        "Model",
        "c",
        {"image": {"name": image}, "command": ["sh", "-c", script], "params": {"greeting": "hi"}},
    )
    obj = local.wait("Model", "c", timeout=120)
    out = out_dir(obj)
    assert (out / "g").read_text() == "hi\n"
    assert (out / "pwd").read_text() == "/content\n"
    assert '"greeting": "hi"' in (out / "params.json").read_text()


def test_git_source_with_a_dockerfile_is_built_by_the_engine(
    local: Local, image: str, tmp_path: Path
) -> None:
    make_repo(
        tmp_path / "repo",
        {
            "Dockerfile": f'FROM {image}\nCOPY job.sh /job.sh\nCMD ["/bin/sh", "/job.sh"]\n',
            "job.sh": "echo from-dockerfile > /content/artifacts/out\n",
        },
    )
    local.apply("Dataset", "d", {"image": {"git": {"url": (tmp_path / "repo").as_uri()}}})
    obj = local.wait("Dataset", "d", timeout=180)
    assert obj["status"]["image"].startswith("substratus.local/")
    assert (out_dir(obj) / "out").read_text() == "from-dockerfile\n"


def test_container_server_is_published_on_loopback(local: Local, image: str) -> None:
    local.apply(
        "Model",
        "m",
        {
            "image": {"name": "substratusai/base"},
            "command": ["sh", "-c", "echo weights > artifacts/w"],
        },
    )
    local.wait("Model", "m")
    serve = (
        "mkdir -p /tmp/w && cp /model/saved/w /tmp/w/index.html && exec httpd -f -p 8080 -h /tmp/w"
    )
    local.apply(
        "Server", "s", {"image": {"name": image}, "model": "m", "command": ["sh", "-c", serve]}
    )
    obj = local.wait("Server", "s", timeout=120)
    with urllib.request.urlopen(obj["status"]["url"] + "/", timeout=5) as resp:
        assert resp.read() == b"weights\n"
