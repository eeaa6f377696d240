"""GPU requests on the local runtime.

No GPU exists on these machines, so a stand-in `nvidia-smi` on PATH reports two L4s: this is
the one boundary faked here. Everything past it (allocation, CUDA_VISIBLE_DEVICES, the
InsufficientGPU condition) is the real supervisor.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Local

pytestmark = pytest.mark.integration

FAKE_SMI = """#!/bin/sh
echo "GPU 0: NVIDIA L4 (UUID: GPU-00000000-0000-0000-0000-000000000000)"
echo "GPU 1: NVIDIA L4 (UUID: GPU-11111111-1111-1111-1111-111111111111)"
"""
SHOW = ["sh", "-c", "printf '%s' \"$CUDA_VISIBLE_DEVICES\" > artifacts/cuda; sleep 0.5"]


@pytest.fixture
def two_l4(local: Local, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Local:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(FAKE_SMI)
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path('/usr/bin')}:{Path('/bin')}")
    return local


def cuda(obj: dict[str, object]) -> str:
    status = obj["status"]
    assert isinstance(status, dict)
    return (Path(str(status["url"]).removeprefix("file://")) / "cuda").read_text()


def test_gpus_are_allocated_and_hidden_from_others(two_l4: Local) -> None:
    gpu = {"type": "nvidia-l4", "count": 1}
    base = {"name": "substratusai/base"}
    two_l4.apply("Model", "a", {"image": base, "command": SHOW, "resources": {"gpu": gpu}})
    two_l4.apply("Model", "b", {"image": base, "command": SHOW, "resources": {"gpu": gpu}})
    two_l4.apply("Model", "cpu", {"image": base, "command": SHOW})
    a, b = two_l4.wait("Model", "a"), two_l4.wait("Model", "b")
    assert sorted([cuda(a), cuda(b)]) == ["0", "1"]  # running together, on different GPUs
    assert cuda(two_l4.wait("Model", "cpu")) == ""


def test_unmet_gpu_request_is_reported(two_l4: Local) -> None:
    spec = {
        "image": {"name": "substratusai/base"},
        "command": SHOW,
        "resources": {"gpu": {"type": "nvidia-a100", "count": 1}},
    }
    two_l4.apply("Model", "big", spec)
    obj = two_l4.wait_reason("Model", "big", "InsufficientGPU")
    message = obj["status"]["conditions"][0]["message"]
    assert "nvidia-a100" in message and "NVIDIA L4" in message
