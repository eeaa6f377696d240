"""The local launch contract without a supervisor: argv/env checks, bind address, build copies,
container argv (GPUs, limits) and the process wrapper."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from substratus.api import parse_object
from substratus.api.kinds import Resource
from substratus.runtimes.local import processes
from substratus.runtimes.local.engines import Engine
from substratus.runtimes.local.launch import (
    ImageInfo,
    LaunchError,
    Mounts,
    check_exec,
    container_argv,
    prepare_workdir,
    service_url,
    workload_argv,
    workload_env,
)
from substratus.runtimes.local.resources import GpuPool

BASE = {"name": "substratusai/base"}


def make(kind: str, spec: dict[str, Any]) -> Resource:
    return parse_object(
        {"apiVersion": "substratus.ai/v1", "kind": kind, "metadata": {"name": "x"}, "spec": spec}
    )


def launch_checks(obj: Resource) -> None:
    info = ImageInfo(ref="substratusai/base", kind="builtin")
    env = workload_env(obj, info, {k: v for k, v in obj.spec.env.items() if isinstance(v, str)})
    check_exec(obj, workload_argv(obj, info), env)


# Set after validation: whatever the API accepts, the launch must not pass these on to exec.
def test_nul_byte_in_command_names_the_argument() -> None:
    obj = make("Model", {"image": BASE, "command": ["true"]})
    obj.spec.command = ["sh", "-c", "echo a\0b"]
    with pytest.raises(LaunchError, match=r"spec\.command\[2\]: contains a NUL byte"):
        launch_checks(obj)


def test_command_and_environment_too_large_together_name_the_largest() -> None:
    # Each value is under the 128 KiB per-argument bound; together they pass ARG_MAX.
    big = {f"V{i}": "x" * 100_000 for i in range(12)}  # 1.2 MB: under the object cap
    obj = make("Model", {"image": BASE, "command": ["true"], "env": big})
    with pytest.raises(LaunchError, match=r"spec\.env\.V\d+.*add up to \d+ bytes"):
        launch_checks(obj)


def test_nul_byte_in_env_names_the_variable() -> None:
    obj = make("Model", {"image": BASE, "command": ["true"], "env": {"TOKEN": "ab"}})
    obj.spec.env["TOKEN"] = "a\0b"
    with pytest.raises(LaunchError, match=r"spec\.env\.TOKEN: contains a NUL byte"):
        launch_checks(obj)


def test_argument_over_128_kib_names_the_argument() -> None:
    obj = make("Model", {"image": BASE, "command": ["echo", "x" * (128 * 1024)]})
    with pytest.raises(LaunchError, match=r"spec\.command\[1\]: 131072 bytes"):
        launch_checks(obj)
    big_param = make("Model", {"image": BASE, "command": ["true"], "params": {"p": "y" * 200_000}})
    with pytest.raises(LaunchError, match=r"spec\.params\.p: "):
        launch_checks(big_param)
    launch_checks(make("Model", {"image": BASE, "command": ["echo", "x" * 100_000]}))


def test_bind_address_is_the_projects_setting_not_an_ambient_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = make("Server", {"image": BASE, "command": ["true"], "model": "m"})
    info = ImageInfo(ref="substratusai/base", kind="builtin")
    monkeypatch.setenv("HOST", "0.0.0.0")
    monkeypatch.delenv("SUBSTRATUS_BIND_ADDRESS", raising=False)
    assert workload_env(server, info, {})["HOST"] == "127.0.0.1"
    assert service_url(8080) == "http://127.0.0.1:8080"
    monkeypatch.setenv("SUBSTRATUS_BIND_ADDRESS", "0.0.0.0")
    assert workload_env(server, info, {})["HOST"] == "0.0.0.0"
    assert service_url(8080) == "http://127.0.0.1:8080"  # reachable from here
    monkeypatch.setenv("SUBSTRATUS_BIND_ADDRESS", "::1")
    assert service_url(8080) == "http://[::1]:8080"
    monkeypatch.setenv("SUBSTRATUS_BIND_ADDRESS", "my-laptop")
    with pytest.raises(LaunchError, match="SUBSTRATUS_BIND_ADDRESS"):
        workload_env(server, info, {})


def test_workdir_gets_a_copy_of_the_build_never_a_link(tmp_path: Path) -> None:
    cache = tmp_path / "cache" / "uploads" / "0123"
    (cache / "pkg").mkdir(parents=True)
    (cache / "notes.ipynb").write_text("original")
    (cache / "pkg" / "mod.py").write_text("X = 1\n")
    (cache / "link").symlink_to("notes.ipynb")
    workdir = tmp_path / "run"
    workdir.mkdir()
    obj = make("Notebook", {"image": {"upload": {}}})
    prepare_workdir(workdir, obj, Mounts(), ImageInfo("dir:1", "dir", root=cache), bind=False)
    (workdir / "notes.ipynb").write_text("edited in Jupyter")
    (workdir / "pkg" / "mod.py").write_text("X = 2\n")
    (workdir / "pkg" / "new.py").write_text("")
    assert (cache / "notes.ipynb").read_text() == "original"
    assert (cache / "pkg" / "mod.py").read_text() == "X = 1\n"
    assert sorted(p.name for p in (cache / "pkg").iterdir()) == ["mod.py"]
    assert (workdir / "link").readlink() == Path("notes.ipynb")  # links inside stay links


# No GPU exists where these tests run: what is checked is that two one-GPU containers are
# handed the two different devices the pool allocated, not both the first.
@pytest.mark.parametrize("engine", ["docker", "podman"])
def test_each_container_gets_the_gpus_the_pool_allocated(engine: str, tmp_path: Path) -> None:
    pool = GpuPool({0: "NVIDIA L4", 1: "NVIDIA L4", 2: "NVIDIA L4"})
    obj = make("Model", {"image": {"name": "me/trainer:1"}, "resources": {"gpu": {"count": 1}}})
    info = ImageInfo(ref="me/trainer:1", kind="container")
    seen = []
    for name in ("a", "b"):
        gpus = pool.take(1)
        argv = container_argv(
            Engine(engine, f"/usr/bin/{engine}"), obj, info, tmp_path, Mounts(), {},
            port=None, name=name, gpus=gpus,
        )  # fmt: skip
        flag = "--gpus" if engine == "docker" else "--device"
        seen.append(argv[argv.index(flag) + 1])
    if engine == "docker":
        assert seen == ['"device=0"', '"device=1"']
    else:
        assert seen == ["nvidia.com/gpu=0", "nvidia.com/gpu=1"]


def test_container_gets_memory_and_cpu_limits(tmp_path: Path) -> None:
    spec = {"image": {"name": "me/x:1"}, "resources": {"memory": 2, "cpu": 0.5}}
    argv = container_argv(
        Engine("docker", "/usr/bin/docker"), make("Model", spec),
        ImageInfo(ref="me/x:1", kind="container"), tmp_path, Mounts(), {},
        port=None, name="n", gpus=[],
    )  # fmt: skip
    assert argv[argv.index("--memory") + 1] == "2000000000"
    assert argv[argv.index("--cpus") + 1] == "0.5"


def test_missing_program_is_named_not_the_exit_file(tmp_path: Path) -> None:
    log, exit_file = tmp_path / "g1-a1.log", tmp_path / "g1-a1.exit"
    popen = processes.spawn(
        ["no-such-program-xyz", "arg"], cwd=tmp_path, env={"PATH": "/usr/bin:/bin"},
        log=log, exit_file=exit_file,
    )  # fmt: skip
    assert popen.wait(timeout=10) == 127
    text = log.read_text()
    assert "no-such-program-xyz" in text and ".exit" not in text, text
    assert processes.read_exit_code(exit_file) == 127


def test_spawn_refuses_a_nul_byte_without_starting_anything(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        processes.spawn(
            ["echo", "a\0b"], cwd=tmp_path, env={}, log=tmp_path / "l", exit_file=tmp_path / "x"
        )
    time.sleep(0.1)
    assert not (tmp_path / "x").exists()


def test_a_notebook_built_as_a_venv_gets_its_kernel_python() -> None:
    venv = ImageInfo("venv:1", "venv", root=Path("/src"), python=Path("/v/bin/python"))
    nb = make("Notebook", {"image": {"upload": {}}})
    assert workload_env(nb, venv, {})["NOTEBOOK_KERNEL_PYTHON"] == "/v/bin/python"
    assert workload_argv(nb, venv)[1:] == ["-m", "substratus.workloads.notebook"]
    job = make("Model", {"image": {"upload": {}}, "command": ["train"]})
    assert "NOTEBOOK_KERNEL_PYTHON" not in workload_env(job, venv, {})
