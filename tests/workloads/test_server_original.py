"""The server as the original project's images ran it: Basaran's MODEL_LOAD_IN_{8,4}BIT env,
the llama-cpp image (llama.cpp by default, params.n_gpu_layers, a GGUF file named model.bin)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from substratus.workloads.contract import ParamError
from substratus.workloads.server.config import ServerConfig, load_config, quantization
from substratus.workloads.server.engines import (
    Capabilities,
    ModelFiles,
    choose_engine,
    inspect_model_dir,
    plan,
    quantization_method,
)
from substratus.workloads.server.engines.base import StartupError
from substratus.workloads.server.engines.llamacpp import LlamaCppEngine

IMAGE_ORIGIN = "the image substratusai/model-server-llama-cpp"
GGUF_BYTES = b"GGUF\x03\x00\x00\x00"


# --- Basaran's quantization switches -------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, (None, "spec.quantization.bits")),
        ({"MODEL_LOAD_IN_8BIT": "true"}, (8, "env.MODEL_LOAD_IN_8BIT")),
        ({"MODEL_LOAD_IN_4BIT": "True"}, (4, "env.MODEL_LOAD_IN_4BIT")),
        ({"MODEL_LOAD_IN_4BIT": "false", "MODEL_LOAD_IN_8BIT": "1"}, (8, "env.MODEL_LOAD_IN_8BIT")),
        ({"QUANTIZATION_BITS": "8"}, (8, "spec.quantization.bits")),
        # Both saying the same is no conflict; the design's field is the one named.
        ({"QUANTIZATION_BITS": "4", "MODEL_LOAD_IN_4BIT": "true"}, (4, "spec.quantization.bits")),
    ],
)
def test_basaran_env_means_quantization_bits(
    env: dict[str, str], expected: tuple[int | None, str]
) -> None:
    assert quantization(env) == expected


@pytest.mark.parametrize(
    ("env", "words"),
    [
        (
            {"MODEL_LOAD_IN_4BIT": "true", "MODEL_LOAD_IN_8BIT": "true"},
            ["env.MODEL_LOAD_IN_8BIT and env.MODEL_LOAD_IN_4BIT", "only one"],
        ),
        (
            {"QUANTIZATION_BITS": "4", "MODEL_LOAD_IN_8BIT": "true"},
            ["env.MODEL_LOAD_IN_8BIT", "8-bit", "spec.quantization.bits", "4"],
        ),
        ({"MODEL_LOAD_IN_8BIT": "maybe"}, ["env.MODEL_LOAD_IN_8BIT", "'maybe'", "true or false"]),
    ],
)
def test_basaran_env_conflicts_are_refused(env: dict[str, str], words: list[str]) -> None:
    with pytest.raises(ParamError) as info:
        quantization(env)
    for word in words:
        assert word in str(info.value)


def test_quantization_errors_name_the_env_that_asked() -> None:
    with pytest.raises(StartupError) as info:
        quantization_method("transformers", 4, Capabilities(), "env.MODEL_LOAD_IN_4BIT")
    assert str(info.value).startswith("env.MODEL_LOAD_IN_4BIT (4-bit) is not supported")
    with pytest.raises(StartupError, match=r"remove env\.MODEL_LOAD_IN_8BIT"):
        quantization_method("transformers", 8, Capabilities(gpu=True), "env.MODEL_LOAD_IN_8BIT")
    assert quantization_method("transformers", 8, Capabilities(), "env.X") == "dynamic-int8"


# --- the llama-cpp image -------------------------------------------------------------------


def run_dir(tmp_path: Path, params: dict[str, Any]) -> Path:
    (tmp_path / "params.json").write_text(json.dumps(params))
    return tmp_path


def test_llama_cpp_image_defaults_to_llamacpp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    root = run_dir(tmp_path, {"n_gpu_layers": 30})
    config = load_config(root, default_engine="llamacpp", engine_origin=IMAGE_ORIGIN)
    assert (config.engine, config.engine_origin, config.n_gpu_layers) == (
        "llamacpp",
        IMAGE_ORIGIN,
        30,
    )
    # An explicit params.engine still wins, and is then what errors name.
    root = run_dir(tmp_path, {"engine": "transformers"})
    config = load_config(root, default_engine="llamacpp", engine_origin=IMAGE_ORIGIN)
    assert (config.engine, config.engine_origin, config.n_gpu_layers) == (
        "transformers",
        "params.engine",
        None,
    )
    with pytest.raises(ParamError, match=r"params\.n_gpu_layers: -2 must be -1"):
        load_config(run_dir(tmp_path, {"n_gpu_layers": -2}))
    with pytest.raises(ParamError, match=r"params\.n_gpu_layers: 'all' is not an integer"):
        load_config(run_dir(tmp_path, {"n_gpu_layers": "all"}))


def test_missing_llama_cpp_names_the_image() -> None:
    files = ModelFiles(Path("model"), transformers=False, gguf=(Path("model/model.bin"),))
    with pytest.raises(StartupError) as info:
        choose_engine("llamacpp", files, Capabilities(), IMAGE_ORIGIN)
    message = str(info.value)
    assert message.startswith(f"{IMAGE_ORIGIN} (as params.engine=llamacpp) needs llama-cpp-python")
    assert "pip install llama-cpp-python" in message
    assert choose_engine("llamacpp", files, Capabilities(llamacpp=True), IMAGE_ORIGIN) == "llamacpp"


def test_gguf_named_model_bin_is_found_by_its_content(tmp_path: Path) -> None:
    # The original's llama2-13b-chat-gguf example imports `files: model.bin`, a GGUF file.
    (tmp_path / "model.bin").write_bytes(GGUF_BYTES)
    files = inspect_model_dir(tmp_path)
    assert files.gguf == (tmp_path / "model.bin",) and not files.transformers
    # A PyTorch checkpoint named model.bin (a zip) beside config.json stays a transformers model.
    torch_dir = tmp_path / "torch"
    torch_dir.mkdir()
    (torch_dir / "config.json").write_text("{}")
    (torch_dir / "pytorch_model.bin").write_bytes(b"PK\x03\x04rest")
    files = inspect_model_dir(torch_dir)
    assert files.transformers and files.gguf == ()


def config_for(model: Path, **kw: Any) -> ServerConfig:
    return ServerConfig(model_dir=model, served_model_name="m", **kw)


def test_n_gpu_layers_reaches_llama_cpp_and_only_it(tmp_path: Path) -> None:
    gguf = tmp_path / "model.bin"
    gguf.write_bytes(GGUF_BYTES)
    engine = LlamaCppEngine(config_for(tmp_path, n_gpu_layers=30), gguf, gpu=True)
    assert engine._gpu_layers() == 30
    assert LlamaCppEngine(config_for(tmp_path), gguf, gpu=True)._gpu_layers() == -1
    assert LlamaCppEngine(config_for(tmp_path), gguf, gpu=False)._gpu_layers() == 0
    chosen = plan(config_for(tmp_path, n_gpu_layers=30), Capabilities(llamacpp=True))
    assert (chosen.engine, chosen.gguf) == ("llamacpp", gguf)
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "model.safetensors").write_bytes(b"")
    with pytest.raises(StartupError, match=r"params\.n_gpu_layers: only the llama\.cpp engine"):
        plan(config_for(hf, n_gpu_layers=30), Capabilities(llamacpp=True))


def run_module(
    module: str, root: Path, hide: str = "", **env: str
) -> subprocess.CompletedProcess[str]:
    """``python -m module`` in ``root``; ``hide``: a package made unimportable, as if absent."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PARAM_", "MODEL_LOAD"))}
    clean.pop("QUANTIZATION_BITS", None)
    clean.update({"PORT": "0", "HOST": "127.0.0.1", **env})
    code = f"import runpy, sys; sys.modules[{hide!r}] = None; " if hide else "import runpy; "
    code += f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_llama_cpp_image_process_without_llama_cpp(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.bin").write_bytes(GGUF_BYTES)
    done = run_module(
        "substratus.workloads.server.llama_cpp", run_dir(tmp_path, {}), hide="llama_cpp"
    )
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    assert "Traceback" not in out, out
    assert f"{IMAGE_ORIGIN} (as params.engine=llamacpp) needs llama-cpp-python" in out


def test_basaran_4bit_on_cpu_process_names_the_env(tmp_path: Path) -> None:
    if Path("/dev/nvidia0").exists():
        pytest.skip("a GPU is present: 4-bit goes to bitsandbytes there")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (model / "model.safetensors").write_bytes(b"")
    done = run_module(
        "substratus.workloads.server", run_dir(tmp_path, {}), MODEL_LOAD_IN_4BIT="true"
    )
    out = done.stdout + done.stderr
    assert done.returncode != 0 and "Traceback" not in out, out
    assert "env.MODEL_LOAD_IN_4BIT (4-bit) is not supported by the transformers engine" in out
