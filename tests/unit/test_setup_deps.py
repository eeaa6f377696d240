"""What the README's first command installs is enough for what it runs.

`bash hack/quickstart.sh` sets up with `hack/setup.sh` (no --test): the project's non-test
extras and the quickstart's model. Every package that the quickstart, the examples, the CLI,
the supervisor or a built-in workload imports must come from that set, never from the `test`
extra alone (as `openai` once did: the quickstart then failed on a fresh machine after three
minutes of work). Read from the installed packages' own metadata, offline.
"""

from __future__ import annotations

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
# Modules that are optional at run time: imported only where present, with a clear message
# otherwise (GPU or natively built engines), so no set-up installs them.
OPTIONAL = {"vllm", "llama_cpp", "bitsandbytes", "sentence_transformers", "substratus"}


def _setup_line(name: str) -> str:
    text = (ROOT / "hack" / "setup.sh").read_text()
    match = re.search(rf'^{name}="([^"]+)"', text, re.MULTILINE)
    assert match, f"hack/setup.sh sets no {name}"
    return match.group(1)


def _fresh_setup() -> set[str]:
    """Distributions that `hack/setup.sh` without --test installs: the closure of the
    project's requirements with its default extras, and the packages it names itself."""
    extras = set(_setup_line("extras").split(","))
    script = (ROOT / "hack" / "setup.sh").read_text()
    model = re.search(r'--no-deps "([A-Za-z0-9_.-]+)==', script)  # the quickstart's model
    todo = [("substratus", extras)] + ([(model.group(1), set())] if model else [])
    seen: set[str] = set()
    while todo:
        name, wanted = todo.pop()  # wanted: the extras asked of it
        key = _norm(name)
        if key in seen and not wanted:
            continue
        seen.add(key)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            req = Requirement(text)
            envs = [{"extra": e} for e in wanted] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                todo.append((req.name, set(req.extras)))
    return seen


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imports(paths: list[Path]) -> dict[str, str]:
    """Top-level modules imported anywhere in ``paths`` (functions included) -> one file."""
    found: dict[str, str] = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def test_the_quickstart_needs_nothing_that_only_the_test_set_up_installs() -> None:
    sources = [
        *sorted((ROOT / "src" / "substratus").rglob("*.py")),
        *sorted((ROOT / "examples").rglob("*.py")),
    ]
    installed = _fresh_setup()
    owners = metadata.packages_distributions()
    missing = []
    for module, where in sorted(_imports(sources).items()):
        if module in sys.stdlib_module_names or module in OPTIONAL:
            continue
        dists = owners.get(module)
        assert dists, f"{where} imports {module!r}, which no installed package provides"
        if not any(_norm(d) in installed for d in dists):
            missing.append(f"{module} ({', '.join(dists)}), imported by {where}")
    assert not missing, "hack/setup.sh without --test does not install: " + "; ".join(missing)


def test_the_check_sees_a_test_only_package() -> None:
    # The check itself: pytest is installed here, and only by the test extra.
    assert "pytest" not in _fresh_setup()
    assert "openai" in _fresh_setup()
    assert "torch" in _fresh_setup()
