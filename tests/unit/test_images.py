"""images/: one Dockerfile per built-in image, each running exactly the catalog's module.

The images cannot be built here (no registry for base images), so their Dockerfiles are read:
the catalog (src/substratus/core/images.py) and images/ must not drift apart.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from substratus.core.images import BUILTIN_IMAGES

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "images"
LABEL = "ai.substratus.images"
PINNED = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["substratus"]["images"]
SERVER_PORTS = {"substratus.workloads.server": "8080", "substratus.workloads.notebook": "8888"}
# Images of the platform itself, not workloads a manifest names: the operator (which is also the
# contract's helper in every workload pod).
PLATFORM_IMAGES = {"substratusai/operator": "substratus.runtimes.kubernetes"}


@dataclass
class Dockerfile:
    path: Path
    instructions: list[tuple[str, str]]  # (INSTRUCTION, arguments), continuations joined

    @classmethod
    def read(cls, path: Path) -> Dockerfile:
        instructions: list[tuple[str, str]] = []
        pending = ""
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue  # comments may sit inside a continued instruction too
            if line.endswith("\\"):
                pending += line[:-1].strip() + " "
                continue
            text = pending + line
            pending = ""
            word, _, rest = text.partition(" ")
            instructions.append((word.upper(), rest.strip()))
        assert not pending, f"{path}: dangling line continuation"
        return cls(path, instructions)

    def all(self, name: str) -> list[str]:
        return [args for word, args in self.instructions if word == name]

    def last(self, name: str) -> str | None:
        found = self.all(name)
        return found[-1] if found else None

    def exec_form(self, name: str) -> list[str] | None:
        args = self.last(name)
        if args is None:
            return None
        value = json.loads(args)  # exec (JSON) form only: signals reach the process
        assert isinstance(value, list) and all(isinstance(v, str) for v in value)
        return value

    def base_image(self) -> str:
        """The final FROM (through earlier stages), with ARG defaults declared before the
        first FROM substituted."""
        defaults: dict[str, str] = {}
        for word, args in self.instructions:
            if word == "FROM":
                break
            if word == "ARG" and "=" in args:
                key, _, value = args.partition("=")
                defaults[key.strip()] = value.strip()
        stages: dict[str, str] = {}  # FROM IMAGE AS NAME: a later FROM NAME builds on IMAGE
        for args in self.all("FROM"):
            words = args.split()
            image = stages.get(words[0], words[0])
            if len(words) == 3 and words[1].upper() == "AS":
                stages[words[2]] = image
        return re.sub(r"\$\{?(\w+)\}?", lambda m: defaults.get(m.group(1), m.group(0)), image)

    def images(self) -> list[str]:
        for args in self.all("LABEL"):
            for token in shlex.split(args):
                key, _, value = token.partition("=")
                if key == LABEL:
                    return value.split()
        return []


def dockerfiles() -> list[Dockerfile]:
    return [Dockerfile.read(p) for p in sorted(IMAGES.glob("*/Dockerfile"))]


def by_image() -> dict[str, Dockerfile]:
    found: dict[str, Dockerfile] = {}
    for df in dockerfiles():
        for name in df.images():
            assert name not in found, f"{name} is built by {found[name].path} and {df.path}"
            found[name] = df
    return found


def test_every_catalog_image_has_a_dockerfile_running_its_module() -> None:
    built = by_image()
    for name, module in BUILTIN_IMAGES.items():
        assert name in built, f"{name}: no images/*/Dockerfile with {LABEL} naming it"
        df = built[name]
        entrypoint = df.exec_form("ENTRYPOINT")
        assert entrypoint == ["python", "-m", module], f"{df.path}: ENTRYPOINT {entrypoint}"


def test_no_stale_dockerfiles() -> None:
    subdirs = sorted(p.name for p in IMAGES.iterdir() if p.is_dir() and p.name != "requirements")
    with_dockerfile = sorted(df.path.parent.name for df in dockerfiles())
    assert subdirs == with_dockerfile, "a directory under images/ without a Dockerfile"
    for df in dockerfiles():
        names = df.images()
        assert names, f"{df.path}: no LABEL {LABEL}=... naming the catalog image(s) it builds"
        stale = [n for n in names if n not in BUILTIN_IMAGES and n not in PLATFORM_IMAGES]
        assert not stale, f"{df.path}: builds {stale}, which src/substratus/core/images.py lacks"
        # The directory is named after the first image it builds.
        assert df.path.parent.name == names[0].rsplit("/", 1)[-1], df.path


def test_platform_images_run_their_module() -> None:
    built = by_image()
    for name, module in PLATFORM_IMAGES.items():
        assert name not in BUILTIN_IMAGES, f"{name}: a platform image is not a workload"
        assert built[name].exec_form("ENTRYPOINT") == ["python", "-m", module], name


def test_catalog_modules_exist() -> None:
    for name, module in {**BUILTIN_IMAGES, **PLATFORM_IMAGES}.items():
        rel = Path("src", *module.split("."))
        assert (ROOT / rel.with_suffix(".py")).exists() or (ROOT / rel / "__main__.py").exists(), (
            f"{name}: module {module} not found under src/"
        )


@pytest.mark.parametrize("df", dockerfiles(), ids=lambda df: df.path.parent.name)
def test_dockerfile_follows_the_contract(df: Dockerfile) -> None:
    where = df.path.relative_to(ROOT)
    base = df.base_image()
    if df.path.parent.name.endswith("-gpu"):
        assert re.fullmatch(r"nvidia/cuda:[\w.]+-runtime-[\w.]+", base), f"{where}: FROM {base}"
    else:
        assert base == PINNED["base"], f"{where}: FROM {base}, not pyproject.toml's"

    # The project itself, from the repository root as the build context.
    copied = " ".join(df.all("COPY"))
    assert "pyproject.toml" in copied and "README.md" in copied and "src/" in copied, where
    runs = " ".join(df.all("RUN"))
    extras = "kubernetes,s3,gcs,azure" if PLATFORM_IMAGES.keys() & df.images() else "s3,gcs,azure"
    assert f'pip install ".[{extras}]"' in runs, f"{where}: does not install the project"
    ignore = df.path.with_name("Dockerfile.dockerignore").read_text().split()
    assert "*" in ignore and "!src" in ignore and "!pyproject.toml" in ignore, where
    assert "!images/requirements" in ignore, where

    # Versions come from pyproject.toml, through images/requirements/, never written here.
    pinned = re.findall(r"[\w.-]+==[\w.+-]+", runs)
    assert not pinned, f"{where}: pins {pinned}: put them in pyproject.toml"
    own = f"{df.path.parent.name}.txt"  # the operator's libraries are the project's extras
    wanted = {"pip.txt"} | ({own} if (IMAGES / "requirements" / own).is_file() else set())
    installed = set(re.findall(r"-r /tmp/requirements/([\w.-]+)", runs))
    assert wanted <= installed, f"{where}: installs {installed}, not {wanted}"

    assert df.last("WORKDIR") == "/content", where
    user = df.last("USER")
    assert user is not None and user.split(":")[0].isdigit() and user.split(":")[0] != "0", (
        f"{where}: USER must be a numeric non-root UID, got {user!r}"
    )
    # USER comes after every RUN that needs root (apt, chown).
    last_user = max(i for i, (w, _) in enumerate(df.instructions) if w == "USER")
    assert all(
        "chown" not in a and "apt-get" not in a
        for w, a in df.instructions[last_user:]
        if w == "RUN"
    ), where

    entrypoint = df.exec_form("ENTRYPOINT")
    assert entrypoint is not None and entrypoint[:2] == ["python", "-m"], where
    port = SERVER_PORTS.get(entrypoint[2])
    exposed = " ".join(df.all("EXPOSE")).split()
    if port is None:
        assert exposed == [], f"{where}: a job exposes no port"
    else:
        assert exposed == [port], f"{where}: EXPOSE {exposed}, want {port}"
        healthcheck = df.last("HEALTHCHECK")
        assert healthcheck is not None and port in healthcheck, where
        probe = "/api" if port == "8888" else "/'"
        assert probe in healthcheck, f"{where}: HEALTHCHECK does not probe {probe}"


def test_the_requirements_are_pyprojects() -> None:
    r = subprocess.run(
        [sys.executable, str(IMAGES / "requirements.py"), "--check"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert (
        (IMAGES / "requirements" / "torch.txt").read_text().splitlines()[-1].startswith("torch==")
    )


def test_the_workload_images_share_their_first_layers() -> None:
    """Every image but the notebooks' starts with the same instructions (the venv and its pip;
    then torch for those that have it), so that a builder makes those layers once."""
    shared = [df for df in dockerfiles() if not df.path.parent.name.startswith("notebook")]
    assert len(shared) >= 6

    def prefix(df: Dockerfile, upto: str) -> list[tuple[str, str]]:
        end = next(i for i, (w, a) in enumerate(df.instructions) if w == "RUN" and upto in a)
        return df.instructions[: end + 1]

    first = prefix(shared[0], "pip.txt")
    for df in shared[1:]:
        assert prefix(df, "pip.txt") == first, f"{df.path}: its first layers differ"
    with_torch = [df for df in shared if "torch.txt" in " ".join(df.all("RUN"))]
    assert len(with_torch) >= 4
    torch = {tuple(prefix(df, "torch.txt")[len(first) :]) for df in with_torch}
    assert len(torch) == 2, torch  # the CUDA wheel (PyPI) and the CPU one


def test_readme_has_a_build_command_per_image() -> None:
    readme = (IMAGES / "README.md").read_text()
    assert "repository root" in readme
    for name, df in by_image().items():
        rel = df.path.relative_to(ROOT)
        commands = [line for line in readme.splitlines() if f"-f {rel}" in line]
        assert commands, f"images/README.md: no build command for {rel}"
        assert any(re.search(rf"-t {re.escape(name)}(\s|$)", c) for c in commands), (
            f"images/README.md: no build command tags {name}"
        )
        assert commands[0].rstrip().endswith(" ."), "build context must be the repository root"


def test_the_release_workflow_builds_and_tags_every_image(tmp_path: Path) -> None:
    """The release workflow's build step, run by bash with ``docker`` recording its arguments
    (no registry here): every built-in and platform image is pushed, tagged with the version."""
    import yaml

    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "release.yml").read_text())
    step = next(s for s in workflow["jobs"]["images"]["steps"] if s.get("name") == "Build and push")
    script = 'docker() { printf "%s\\n" "$*" >> "$CALLS"; }\n' + step["run"]
    calls = tmp_path / "docker-calls.txt"
    env = {
        "PATH": "/usr/bin:/bin",
        "CALLS": str(calls),
        "IMAGE_REGISTRY": "registry.example/acme",
        "VERSION": "9.8.7",
        "GITHUB_SERVER_URL": "https://github.com",
        "GITHUB_REPOSITORY": "acme/substratus",
    }
    r = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    pushed = calls.read_text()
    for name in [*BUILTIN_IMAGES, *PLATFORM_IMAGES]:
        short = name.split("/", 1)[1]
        assert f"-t registry.example/acme/{short}:9.8.7 " in pushed, f"{name} is not released"
    assert pushed.count("buildx build --push") == len(dockerfiles())
    # The chart job lints with the Helm the tests build (hack/control-plane/versions.env).
    versions = (ROOT / "hack" / "control-plane" / "versions.env").read_text()
    helm = re.search(r"^HELM_VERSION=(\S+)", versions, re.M)
    chart_steps = workflow["jobs"]["chart"]["steps"]
    setup = next(s for s in chart_steps if str(s.get("uses", "")).startswith("azure/setup-helm"))
    assert helm is not None and setup["with"]["version"] == helm.group(1)
