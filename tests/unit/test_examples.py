"""Every manifest under examples/ is valid, and names only built-in images that exist."""

from __future__ import annotations

from pathlib import Path
from string import Template

import pytest

from substratus.api import parse_documents
from substratus.core.images import BUILTIN_IMAGES, image_repository

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((ROOT / "examples").rglob("*.yaml"))


def test_there_are_examples() -> None:
    assert len(MANIFESTS) >= 10


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_example_is_valid(path: Path) -> None:
    text = Template(path.read_text()).safe_substitute(
        QUICKSTART_DIR="/q", SMOLLM2_GGUF_URL="file:///q/m.gguf"
    )
    for obj in parse_documents(text, str(path)):
        name = obj.spec.image.name
        if name and name.startswith("substratusai/"):
            assert image_repository(name) in BUILTIN_IMAGES
