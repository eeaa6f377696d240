"""Builds from git and uploads with real git, real tarballs and real (killed) processes.

No network and no pip here: these builds end as "dir" builds or fail before installing
anything. Venv and container builds are in tests/integration/test_builds_*.py.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest

from substratus.api.common import GitSource
from substratus.runtimes.local import engines
from substratus.runtimes.local.builds import (
    BuildFailed,
    BuiltImage,
    build_dir,
    build_from_git,
    build_from_upload,
)
from substratus.runtimes.local.engines import Engine, EngineError, detect_engine

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV}
    out = subprocess.run(
        ["git", "-C", str(repo), *args], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def commit(repo: Path, files: dict[str, str], message: str) -> str:
    for name, content in files.items():
        path = repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> dict[str, object]:
    """main: v1 (tagged v1, annotated) then v2 (tagged light); branch feature off v1."""
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    first = commit(path, {"app.py": "VERSION = 1\n", "sub/task.py": "print('sub 1')\n"}, "v1")
    git(path, "tag", "-a", "v1", "-m", "release 1")
    git(path, "checkout", "-q", "-b", "feature")
    feature = commit(path, {"app.py": "VERSION = 'feature'\n"}, "feature")
    git(path, "checkout", "-q", "main")
    second = commit(path, {"app.py": "VERSION = 2\n", "sub/task.py": "print('sub 2')\n"}, "v2")
    git(path, "tag", "light")
    return {"path": path, "v1": first, "feature": feature, "v2": second}


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def build(source: GitSource, cache: Path) -> tuple[BuiltImage, str]:
    log = io.StringIO()
    image = build_from_git(source, cache, None, log, tag_name="demo")
    return image, log.getvalue()


def version(image: BuiltImage) -> str:
    return (image.root / "app.py").read_text().strip()


# --- git sources ---------------------------------------------------------------------------


def test_plain_path_builds_default_branch_as_dir(repo: dict[str, object], cache: Path) -> None:
    image, log = build(GitSource(url=str(repo["path"])), cache)
    assert image.kind == "dir"
    assert image.python is None
    assert image.ref.startswith("dir:") and len(image.ref) == len("dir:") + 12
    assert version(image) == "VERSION = 2"
    assert image.root == cache / "git" / str(repo["v2"])
    assert "git" in log and " fetch " in log
    # A shallow clone: one commit, not the history.
    assert git(image.root, "rev-list", "--count", "HEAD") == "1"


def test_relative_plain_path(
    repo: dict[str, object], cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = Path(str(repo["path"]))
    monkeypatch.chdir(path.parent)
    image, _ = build(GitSource(url=path.name), cache)
    assert version(image) == "VERSION = 2"


def test_file_url_branch(repo: dict[str, object], cache: Path) -> None:
    url = Path(str(repo["path"])).as_uri()
    image, _ = build(GitSource(url=url, branch="feature"), cache)
    assert version(image) == "VERSION = 'feature'"
    assert image.root.name == repo["feature"]


def test_annotated_tag_resolves_to_its_commit(repo: dict[str, object], cache: Path) -> None:
    url = Path(str(repo["path"])).as_uri()
    image, _ = build(GitSource(url=url, tag="v1"), cache)
    assert version(image) == "VERSION = 1"
    assert image.root.name == repo["v1"]  # the commit, not the tag object


def test_lightweight_tag_by_plain_path(repo: dict[str, object], cache: Path) -> None:
    image, _ = build(GitSource(url=str(repo["path"]), tag="light"), cache)
    assert image.root.name == repo["v2"]


def test_branch_and_tag_of_the_same_name_are_told_apart(
    repo: dict[str, object], cache: Path
) -> None:
    path = Path(str(repo["path"]))
    git(path, "tag", "dup", str(repo["v1"]))
    git(path, "branch", "dup", str(repo["feature"]))
    tagged, _ = build(GitSource(url=str(path), tag="dup"), cache)
    branch, _ = build(GitSource(url=str(path), branch="dup"), cache)
    assert (tagged.root.name, branch.root.name) == (repo["v1"], repo["feature"])


def test_path_selects_a_subdirectory(repo: dict[str, object], cache: Path) -> None:
    image, _ = build(GitSource(url=str(repo["path"]), tag="v1", path="sub"), cache)
    assert image.root == cache / "git" / str(repo["v1"]) / "sub"
    assert (image.root / "task.py").read_text() == "print('sub 1')\n"
    whole, _ = build(GitSource(url=str(repo["path"]), tag="v1"), cache)
    assert whole.ref != image.ref  # same commit, different build


def test_missing_path_names_the_field(repo: dict[str, object], cache: Path) -> None:
    with pytest.raises(BuildFailed, match=r"^image\.git\.path: 'nope/deeper' is not a directory"):
        build(GitSource(url=str(repo["path"]), path="nope/deeper"), cache)
    with pytest.raises(BuildFailed, match=r"^image\.git\.path: 'app.py'"):
        build(GitSource(url=str(repo["path"]), path="app.py"), cache)


def test_path_symlink_out_of_the_repository_is_refused(
    repo: dict[str, object], cache: Path
) -> None:
    path = Path(str(repo["path"]))
    (path / "escape").symlink_to("/etc")
    git(path, "add", "escape")
    git(path, "commit", "-q", "-m", "symlink")
    with pytest.raises(BuildFailed, match=r"^image\.git\.path: 'escape'"):
        build(GitSource(url=str(path), path="escape"), cache)


def test_missing_branch_and_tag_name_their_fields(repo: dict[str, object], cache: Path) -> None:
    with pytest.raises(BuildFailed, match=r"^image\.git\.branch: .* has no branch 'gone'"):
        build(GitSource(url=str(repo["path"]), branch="gone"), cache)
    with pytest.raises(BuildFailed, match=r"^image\.git\.tag: .* has no tag 'v9'"):
        build(GitSource(url=str(repo["path"]), tag="v9"), cache)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("/nonexistent/repo", "does not appear to be a git repository"),
        ("file:///nonexistent/repo", "does not appear to be a git repository"),
        ("https://invalid.invalid/x.git", "invalid.invalid"),
    ],
)
def test_uncloneable_url_names_the_field(cache: Path, url: str, reason: str) -> None:
    started = time.monotonic()
    with pytest.raises(BuildFailed, match=r"^image\.git\.url: cannot clone ") as info:
        build(GitSource(url=url), cache)
    assert reason in str(info.value)
    assert time.monotonic() - started < 30
    assert not (cache / "git").exists()


def test_not_a_repository(tmp_path: Path, cache: Path) -> None:
    (tmp_path / "plain").mkdir()
    with pytest.raises(BuildFailed, match=r"^image\.git\.url: cannot clone .*not .*git repository"):
        build(GitSource(url=str(tmp_path / "plain")), cache)


def test_url_that_looks_like_an_option_is_a_path(tmp_path: Path, cache: Path) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(BuildFailed, match=r"^image\.git\.url: "):
        build(GitSource(url=f"--upload-pack=touch {marker}"), cache)
    assert not marker.exists()


def test_password_in_url_is_not_repeated(cache: Path) -> None:
    with pytest.raises(BuildFailed) as info:
        build(GitSource(url="https://user:s3cret@invalid.invalid/x.git"), cache)
    assert "s3cret" not in str(info.value)


def test_second_build_of_the_same_commit_is_a_cache_hit(
    repo: dict[str, object], cache: Path
) -> None:
    source = GitSource(url=str(repo["path"]), branch="main")
    first, _ = build(source, cache)
    marker = first.root / "untracked-marker"
    marker.write_text("still here")
    inode = first.root.stat().st_ino
    second, log = build(source, cache)
    assert second == first
    assert "using cached checkout" in log
    assert " fetch " not in log
    assert first.root.stat().st_ino == inode and marker.exists()
    assert [p.name for p in (cache / "git").iterdir()] == [str(repo["v2"])]
    assert list((cache / "tmp").iterdir()) == []


def test_new_commit_is_a_new_build(repo: dict[str, object], cache: Path) -> None:
    source = GitSource(url=str(repo["path"]))
    first, _ = build(source, cache)
    third = commit(Path(str(repo["path"])), {"app.py": "VERSION = 3\n"}, "v3")
    second, _ = build(source, cache)
    assert second.ref != first.ref
    assert second.root.name == third and version(second) == "VERSION = 3"
    assert version(first) == "VERSION = 2"  # the old checkout is untouched


SLOW_GIT = """\
#!/bin/sh
# Real git, but once the checkout is on disk it hangs, so that the build can be killed right there.
"{real}" "$@"
rc=$?
case " $* " in *" checkout "*) touch "{flag}"; sleep 60;; esac
exit $rc
"""


def test_killed_clone_leaves_no_cache_entry(
    repo: dict[str, object], cache: Path, tmp_path: Path
) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    flag = tmp_path / "cloned"
    real = subprocess.run(["which", "git"], capture_output=True, text=True).stdout.strip()
    (bindir / "git").write_text(SLOW_GIT.format(real=real, flag=flag))
    (bindir / "git").chmod(0o755)
    script = textwrap.dedent(
        f"""
        import io, pathlib
        from substratus.api.common import GitSource
        from substratus.runtimes.local.builds import build_from_git
        build_from_git(GitSource(url={str(repo["path"])!r}), pathlib.Path({str(cache)!r}),
                       None, io.StringIO(), tag_name="demo")
        """
    )
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not flag.exists():
            assert proc.poll() is None, "the build ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # The clone is complete on disk, but the build has not finished: kill everything.
        assert any((cache / "tmp").iterdir())
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert not (cache / "git").exists() or list((cache / "git").iterdir()) == []
    image, log = build(GitSource(url=str(repo["path"])), cache)
    assert "using cached" not in log
    assert version(image) == "VERSION = 2"


# --- uploads -------------------------------------------------------------------------------


def make_tarball(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))
    return path


def test_upload_round_trip(tmp_path: Path, cache: Path) -> None:
    files = {"train.py": b"print('hi')\n", "conf/params.yaml": b"epochs: 1\n"}
    tarball = make_tarball(tmp_path / "ctx.tar.gz", files)
    log = io.StringIO()
    image = build_from_upload(tarball, cache, None, log, tag_name="nb")
    assert image.kind == "dir"
    assert {
        str(p.relative_to(image.root)): p.read_bytes() for p in image.root.rglob("*") if p.is_file()
    } == files
    again_log = io.StringIO()
    again = build_from_upload(tarball, cache, None, again_log, tag_name="nb")
    assert again == image
    assert "using cached upload" in again_log.getvalue()
    other = build_from_upload(
        make_tarball(tmp_path / "other.tar.gz", {"train.py": b"print('bye')\n"}),
        cache,
        None,
        io.StringIO(),
        tag_name="nb",
    )
    assert other.ref != image.ref and other.root != image.root


def test_upload_with_a_path_outside_is_refused(tmp_path: Path, cache: Path) -> None:
    tarball = make_tarball(tmp_path / "evil.tar.gz", {"../../escaped.txt": b"x"})
    with pytest.raises(BuildFailed, match=r"^image\.upload: "):
        build_from_upload(tarball, cache, None, io.StringIO(), tag_name="nb")
    assert not list(tmp_path.rglob("escaped.txt"))
    assert not (cache / "uploads").exists()
    assert list((cache / "tmp").iterdir()) == []


def test_upload_that_is_not_a_tarball(tmp_path: Path, cache: Path) -> None:
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"this is not gzip")
    with pytest.raises(BuildFailed, match=r"^image\.upload: .*not a valid build context"):
        build_from_upload(junk, cache, None, io.StringIO(), tag_name="nb")


# --- directory rules -------------------------------------------------------------------------


def test_dockerfile_without_an_engine_fails_clearly(repo: dict[str, object], cache: Path) -> None:
    path = Path(str(repo["path"]))
    commit(path, {"Dockerfile": "FROM scratch\n"}, "dockerfile")
    with pytest.raises(BuildFailed) as info:
        build(GitSource(url=str(path)), cache)
    message = str(info.value)
    assert message.startswith("image: building git ")
    assert "needs podman or docker" in message
    assert "no pyproject.toml/requirements.txt" in message


def test_dockerfile_with_an_engine_builds_a_container(tmp_path: Path, cache: Path) -> None:
    """With an engine, a Dockerfile wins; the engine is a real CLI (a script) that logs calls."""
    calls = tmp_path / "calls"
    fake = tmp_path / "podman"
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> "{calls}"\n'
        'case "$1" in image) exit 1;; build) echo "STEP 1/1: FROM x";; esac\n'
    )
    fake.chmod(0o755)
    src = tmp_path / "src"
    src.mkdir()
    (src / "Dockerfile").write_text("FROM x\n")
    (src / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    log = io.StringIO()
    image = build_dir(src, cache, Engine("podman", str(fake)), log, tag_name="My_Model.v2", key="k")
    assert image.kind == "container"
    assert image.root == src and image.python is None
    assert image.ref.startswith("substratus.local/my-model-v2:")
    assert f"build --force-rm --tag {image.ref} {src}" in calls.read_text()
    assert "STEP 1/1" in log.getvalue()


def test_engine_build_failure_carries_the_log_tail(tmp_path: Path) -> None:
    fake = tmp_path / "docker"
    fake.write_text(
        "#!/bin/sh\nfor i in $(seq 1 50); do echo line $i; done\necho 'Error: base gone' >&2\n"
        "exit 125\n"
    )
    fake.chmod(0o755)
    log = io.StringIO()
    with pytest.raises(BuildFailed) as info:
        Engine("docker", str(fake)).build(tmp_path, "substratus.local/x:1", log)
    message = str(info.value)
    assert "docker build of substratus.local/x:1 failed (exit status 125)" in message
    assert "Error: base gone" in message and "line 50" in message
    assert "line 10\n" not in message  # only the tail
    assert "line 10\n" in log.getvalue()  # the log has it all


def test_missing_directory_is_refused(tmp_path: Path, cache: Path) -> None:
    with pytest.raises(BuildFailed, match=r"^image: .*gone is not a directory"):
        build_dir(tmp_path / "gone", cache, None, io.StringIO(), tag_name="x", key="k")


def test_plain_directory_is_a_dir_build(tmp_path: Path, cache: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "run.sh").write_text("echo hi\n")
    image = build_dir(src, cache, None, io.StringIO(), tag_name="x", key="one")
    assert image == BuiltImage(ref=image.ref, kind="dir", root=src, python=None)
    assert build_dir(src, cache, None, io.StringIO(), tag_name="x", key="one").ref == image.ref
    assert build_dir(src, cache, None, io.StringIO(), tag_name="x", key="two").ref != image.ref


# --- engines -------------------------------------------------------------------------------


@pytest.fixture
def fresh_engine_cache() -> object:
    engines.clear_engine_cache()
    yield None
    engines.clear_engine_cache()


@pytest.mark.usefixtures("fresh_engine_cache")
def test_detect_engine_none_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "podman"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("SUBSTRATUS_CONTAINER_ENGINE", "none")
    assert detect_engine() is None
    monkeypatch.setenv("SUBSTRATUS_CONTAINER_ENGINE", "NONE")
    assert detect_engine() is None


@pytest.mark.usefixtures("fresh_engine_cache")
def test_detect_engine_prefers_podman_that_answers_and_caches(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls = tmp_path / "calls"
    for name, rc in (("podman", 1), ("docker", 0)):
        script = tmp_path / name
        script.write_text(f'#!/bin/sh\necho "{name} $*" >> "{calls}"\nexit {rc}\n')
        script.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("SUBSTRATUS_CONTAINER_ENGINE", raising=False)
    first = detect_engine()
    assert first == Engine("docker", str(tmp_path / "docker"), init=True)  # podman failed `info`
    assert detect_engine() is first
    assert calls.read_text().splitlines() == ["podman info", "docker info"]  # probed once
    (tmp_path / "podman").write_text("#!/bin/sh\nexit 0\n")
    engines.clear_engine_cache()
    podman = detect_engine()
    assert podman is not None
    assert (podman.name, podman.binary) == ("podman", str(tmp_path / "podman"))


@pytest.mark.usefixtures("fresh_engine_cache")
def test_detect_engine_ignores_an_engine_that_hangs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    script = tmp_path / "podman"
    script.write_text("#!/bin/sh\nexec sleep 30\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(engines, "INFO_TIMEOUT_S", 0.5)
    monkeypatch.delenv("SUBSTRATUS_CONTAINER_ENGINE", raising=False)
    started = time.monotonic()
    assert detect_engine() is None
    assert time.monotonic() - started < 10


@pytest.mark.usefixtures("fresh_engine_cache")
def test_forced_engine_that_is_missing_or_unknown_raises(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("SUBSTRATUS_CONTAINER_ENGINE", "docker")
    with pytest.raises(EngineError, match="SUBSTRATUS_CONTAINER_ENGINE=docker, but docker is not"):
        detect_engine()
    monkeypatch.setenv("SUBSTRATUS_CONTAINER_ENGINE", "lxc")
    with pytest.raises(EngineError, match="use podman, docker or none"):
        detect_engine()


def test_run_argv_shape() -> None:
    podman = Engine("podman", "/usr/bin/podman")
    argv = podman.run_argv(
        "substratus.local/x:abc",
        ["python", "train.py"],
        name="sub-model-x",
        mounts=[(Path("/data/in"), "/content/data", True), (Path("/data/out"), "/out", False)],
        env={"PARAM_EPOCHS": "1", "A": "b=c"},
        ports={18080: 8080},
        gpus=[1],
        memory_bytes=2_000_000_000,
        cpus=1.5,
    )
    assert argv == [
        "/usr/bin/podman", "run", "--rm", "--name", "sub-model-x", "-w", "/content",
        "-v", "/data/in:/content/data:ro", "-v", "/data/out:/out",
        "-e", "PARAM_EPOCHS=1", "-e", "A=b=c",
        "-p", "127.0.0.1:18080:8080",
        "--memory", "2000000000", "--cpus", "1.5",
        "--device", "nvidia.com/gpu=1",
        "substratus.local/x:abc", "python", "train.py",
    ]  # fmt: skip
    docker = Engine("docker", "/usr/bin/docker")
    argv = docker.run_argv(
        "img", None, name="n", mounts=[], env={}, ports={8081: 8080}, workdir="/w", bind="::1"
    )
    assert argv == [
        "/usr/bin/docker", "run", "--rm", "--name", "n", "-w", "/w",
        "-p", "[::1]:8081:8080", "img",
    ]  # fmt: skip
    with_init = Engine("podman", "/usr/bin/podman", init=True)
    argv = with_init.run_argv("img", ["true"], name="n", mounts=[], env={}, ports={})
    assert argv[5:9] == ["-w", "/content", "--init", "img"]


# No GPU exists on the machines that run these tests: what is checked is the argv that hands
# the engine exactly the allocated devices (two one-GPU containers must not share GPU 0).
def test_containers_get_exactly_the_allocated_gpus() -> None:
    docker = Engine("docker", "/usr/bin/docker")
    argv = docker.run_argv("img", None, name="n", mounts=[], env={}, ports={}, gpus=[0, 2])
    assert argv[argv.index("--gpus") + 1] == '"device=0,2"'
    assert docker.run_argv("img", None, name="n", mounts=[], env={}, ports={}, gpus=[3])[-3:] == [
        "--gpus",
        '"device=3"',
        "img",
    ]
    podman = Engine("podman", "/usr/bin/podman")
    argv = podman.run_argv("img", None, name="n", mounts=[], env={}, ports={}, gpus=[1, 3])
    devices = [argv[i + 1] for i, a in enumerate(argv) if a == "--device"]
    assert devices == ["nvidia.com/gpu=1", "nvidia.com/gpu=3"]
    for engine in (docker, podman):
        argv = engine.run_argv("img", None, name="n", mounts=[], env={}, ports={}, gpus=[])
        assert "--gpus" not in argv and "--device" not in argv


def test_stop_ignores_a_container_that_does_not_exist(tmp_path: Path) -> None:
    fake = tmp_path / "podman"
    fake.write_text(
        "#!/bin/sh\n"
        'echo "Error: no container with name or ID \\"$3\\" found: no such container" >&2\n'
        "exit 125\n"
    )
    fake.chmod(0o755)
    Engine("podman", str(fake)).stop("gone")
