"""What the trainer leaves in artifacts/: the model (merged, adapter alone, or full), a note of
the base for an adapter, metrics.json and loss.png."""

from __future__ import annotations

import gc
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from substratus.workloads.training.config import TrainConfig
from substratus.workloads.training.inputs import ModelInfo
from substratus.workloads.training.loop import Device, Outcome, say, torch_dtype

CHECKPOINTS = "checkpoints"
STAGING = ".saving"
BASE_NOTE = "base_model.json"


def clean_outputs(artifacts: Path) -> None:
    """Remove what an earlier attempt left, except its checkpoints (a retry resumes from them)."""
    for entry in artifacts.iterdir():
        if entry.name == CHECKPOINTS:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_identity(info: ModelInfo) -> dict[str, Any]:
    weights = sorted(
        (p.name, p.stat().st_size)
        for p in info.path.iterdir()
        if p.suffix in (".safetensors", ".bin") and p.is_file()
    )
    return {"config_sha256": file_sha256(info.path / "config.json"), "weights": weights}


def _cast(model: Any, info: ModelInfo) -> Any:
    """Back to the base's dtype (a float32 copy of a bfloat16 model is twice its size)."""
    dtype = torch_dtype(info.dtype)
    return model.to(dtype) if dtype is not None else model


def save_model(
    outcome: Outcome,
    tokenizer: Any,
    info: ModelInfo,
    config: TrainConfig,
    device: Device,
    artifacts: Path,
) -> str:
    """Write the model into a staging directory, then move it into artifacts/; returns a
    description of what was saved."""
    staging = artifacts / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    model = outcome.trainer.accelerator.unwrap_model(outcome.trainer.model)
    outcome.trainer = outcome.model = None
    if config.uses_lora and not config.merge:
        model.peft_config["default"].base_model_name_or_path = str(
            info.config.get("_name_or_path") or info.path
        )
        model.save_pretrained(staging)
        (staging / "README.md").unlink(missing_ok=True)  # PEFT's blank model card
        note = {
            "adapter": "a LoRA adapter alone (params.merge=false): load it over its base model",
            "method": config.method,
            "base_model": {
                "model_type": info.model_type,
                "name_or_path": info.config.get("_name_or_path"),
                "mounted_at": str(info.path),
                **model_identity(info),
            },
            "load": "PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), "
            "'artifacts/')",
        }
        (staging / BASE_NOTE).write_text(json.dumps(note, indent=2) + "\n")
        what = "LoRA adapter (merge=false)"
    else:
        if config.method == "qlora":
            model = _reload_unquantized(model, info, device, staging)
        if config.uses_lora:
            model = model.merge_and_unload()
            what = f"{config.method} adapter merged into the base"
        else:
            what = "fully fine-tuned model"
        model = _cast(model, info)
        model.config.use_cache = True
        model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    del model
    gc.collect()
    for entry in staging.iterdir():
        entry.replace(artifacts / entry.name)
    staging.rmdir()
    return what


def _reload_unquantized(model: Any, info: ModelInfo, device: Device, staging: Path) -> Any:
    """A 4-bit base does not merge cleanly: merge the adapter into the base at its own dtype."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = staging / "adapter.tmp"
    model.save_pretrained(adapter)
    del model
    gc.collect()
    torch.cuda.empty_cache()
    dtype = torch_dtype(info.dtype) or (torch.bfloat16 if device.bf16 else torch.float16)
    base = AutoModelForCausalLM.from_pretrained(
        info.path, dtype=dtype, device_map={"": torch.cuda.current_device()}
    )
    merged = PeftModel.from_pretrained(base, adapter)
    shutil.rmtree(adapter)
    return merged


def write_metrics(artifacts: Path, outcome: Outcome, extra: dict[str, Any]) -> None:
    document = {"history": outcome.history, "summary": outcome.summary, **extra}
    (artifacts / "metrics.json").write_text(json.dumps(document, indent=2) + "\n")


def plot_loss(artifacts: Path, outcome: Outcome, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        say("loss.png: skipped (matplotlib is not installed)")
        return False
    points = [h for h in outcome.history if h["loss"] is not None]
    steps = [h["step"] for h in points]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ax.plot(
        steps,
        [h["loss"] for h in points],
        color="tab:blue",
        marker="o" if len(points) <= 50 else None,
        markersize=3,
        label="training loss",
    )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    if outcome.resumed_from:
        ax.axvline(outcome.resumed_from, color="gray", linestyle="--", linewidth=1)
        ax.annotate(
            f"resumed at step {outcome.resumed_from}",
            (outcome.resumed_from, 0.98),
            xycoords=("data", "axes fraction"),
            fontsize=8,
            color="gray",
            ha="left",
            va="top",
        )
    rates = [h["learning_rate"] for h in points if h["learning_rate"] is not None]
    if len(rates) == len(points) and points:
        lr_ax = ax.twinx()
        lr_ax.plot(steps, rates, color="tab:orange", alpha=0.6, linewidth=1, label="learning rate")
        lr_ax.set_ylabel("learning rate", color="tab:orange")
        lr_ax.tick_params(axis="y", colors="tab:orange")
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(artifacts / "loss.png")
    plt.close(fig)
    return True
