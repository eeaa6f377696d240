"""Write images/requirements/*.txt from pyproject.toml: what each built-in image pip-installs.

    python images/requirements.py           # rewrite them
    python images/requirements.py --check   # exit 1 if they differ from pyproject.toml

Every version the images install is pinned once, in pyproject.toml: the extras (``torch``,
``models``, ``data``, ``train``, ``serve``, ``notebook``; a part may name others as
``substratus[...]``) and ``[tool.substratus.images]`` (the pip in the images' venv). A Dockerfile
copies the files it needs and installs them in this order, each its own layer, so images that
share a part share its layer: ``pip.txt``, then ``torch.txt`` (from the index its
``TORCH_INDEX_URL`` names), then ``<image>.txt``, then the project itself.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "images" / "requirements"
# Image (its images/ directory, or DIR-STAGE for a stage) -> the extras it installs besides
# torch (torch.txt, installed apart from its own index).
IMAGES: dict[str, tuple[str, ...]] = {
    "base": ("train", "serve"),
    "model-loader-huggingface": ("models",),
    "dataset-loader": ("data",),
    "model-trainer-huggingface": ("train",),
    "model-server": ("serve",),
    "notebook-jupyter": ("notebook",),
    "notebook": ("train",),  # on top of notebook-jupyter
    "notebook-gpu": ("notebook", "train"),
}
HEADER = "# Generated from pyproject.toml by `python images/requirements.py`. Do not edit.\n"
_SELF = re.compile(r"^substratus\[([^\]]+)\]$")


def expand(extras: dict[str, list[str]], names: tuple[str, ...]) -> list[str]:
    """The pinned requirements of ``names``, with the parts they name, each once, sorted."""
    out: dict[str, str] = {}
    todo = list(names)
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name not in extras:
            raise SystemExit(f"requirements.py: pyproject.toml has no extra {name!r}")
        for req in extras[name]:
            if m := _SELF.match(req):
                todo += [p.strip() for p in m.group(1).split(",")]
                continue
            if "==" not in req:
                raise SystemExit(f"requirements.py: {name}: {req!r} is not pinned (==)")
            out[req.split("==", 1)[0].lower()] = req
    return [out[k] for k in sorted(out)]


def files() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = project["project"]["optional-dependencies"]
    images = project["tool"]["substratus"]["images"]
    text = {
        "pip.txt": f"pip=={images['pip']}\n",
        "torch.txt": "\n".join(expand(extras, ("torch",))) + "\n",
        # Compiled in the image by hack/llamacpp.sh (images/model-server).
        "llamacpp.txt": "\n".join(expand(extras, ("llamacpp",))) + "\n",
    }
    for image, names in IMAGES.items():
        text[f"{image}.txt"] = "\n".join(expand(extras, names)) + "\n"
    return {name: HEADER + body for name, body in text.items()}


def main(argv: list[str]) -> int:
    wanted = files()
    if "--check" in argv:
        have = {p.name for p in OUT.glob("*.txt")}
        stale = sorted(
            n for n, t in wanted.items() if not (OUT / n).is_file() or (OUT / n).read_text() != t
        )
        extra = sorted(have - set(wanted))
        for name in stale:
            print(f"stale: images/requirements/{name} (run python images/requirements.py)")
        for name in extra:
            print(f"left over: images/requirements/{name}")
        return 1 if stale or extra else 0
    OUT.mkdir(exist_ok=True)
    for name, text in wanted.items():
        (OUT / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
