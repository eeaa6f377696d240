"""The build Job's context step (``podhelper context``), run here as its container runs it: an
uploaded tarball fetched from a store, checked against its md5 before it is unpacked; a
repository cloned at the commit the operator resolved."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from substratus.runtimes.kubernetes.podhelper import main
from substratus.storage import ArtifactStore, file_md5, pack_context

pytestmark = pytest.mark.integration


def stored_context(tmp_path: Path, files: dict[str, str]) -> tuple[str, str]:
    src = tmp_path / "src"
    for name, text in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(text)
    tarball = tmp_path / "ctx.tar.gz"
    md5 = pack_context(src, tarball)
    url = f"file://{tmp_path}/bucket/.uploads/team/models/m/{md5}.tar.gz"
    ArtifactStore(url).put_file(tarball, url)
    return url, md5


def test_upload_is_checked_then_unpacked(tmp_path: Path) -> None:
    files = {"Dockerfile": "FROM x\n", "train.py": "print(1)\n", "secret.txt": "no"}
    url, md5 = stored_context(tmp_path, {**files, ".dockerignore": "secret.txt\n"})
    dest = tmp_path / "workspace" / "context"
    assert main(["context", "--dest", str(dest), "--upload", url, "--md5", md5]) == 0
    assert (dest / "train.py").read_text() == "print(1)\n"
    assert not (dest / "secret.txt").exists()  # left out when packed
    assert not (dest.parent / "context.tar.gz").exists()


def test_md5_mismatch_names_the_field_and_unpacks_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, md5 = stored_context(tmp_path, {"Dockerfile": "FROM x\n"})
    dest = tmp_path / "workspace" / "context"
    other = "f" * 32
    assert main(["context", "--dest", str(dest), "--upload", url, "--md5", other]) == 3
    err = capsys.readouterr().err
    assert f"spec.image.upload.md5: the uploaded context has md5 {md5}, expected {other}" in err
    assert not dest.exists()


def test_a_hostile_tarball_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b"owned"
        info = tarfile.TarInfo("../../escape.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    tarball = tmp_path / "bad.tar.gz"
    tarball.write_bytes(buf.getvalue())
    url = f"file://{tmp_path}/bucket/bad.tar.gz"
    ArtifactStore(url).put_file(tarball, url)
    dest = tmp_path / "w" / "context"
    code = main(["context", "--dest", str(dest), "--upload", url, "--md5", file_md5(tarball)])
    assert code == 3
    assert "spec.image.upload: not a valid build context tarball" in capsys.readouterr().err
    assert not (tmp_path / "escape.txt").exists()


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def two_commits(tmp_path: Path) -> tuple[Path, str, str]:
    """A repository on ``main``: a commit tagged v1 (annotated), then another."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "t@example.com")
    git(repo, "config", "user.name", "t")
    (repo / "Dockerfile").write_text("FROM x\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "one")
    first = git(repo, "rev-parse", "HEAD")
    git(repo, "tag", "-a", "v1", "-m", "annotated")  # ls-remote shows the tag object too
    (repo / "Dockerfile").write_text("FROM y\n")
    git(repo, "commit", "-qam", "two")
    return repo, first, git(repo, "rev-parse", "HEAD")


def test_git_clone_at_the_resolved_commit(tmp_path: Path) -> None:
    # The branch moved on after the operator resolved it to the first commit.
    repo, first, _ = two_commits(tmp_path)
    dest = tmp_path / "w" / "context"
    args = ["context", "--dest", str(dest), "--git", f"file://{repo}", "--ref", "main"]
    assert main([*args, "--commit", first]) == 0
    assert (dest / "Dockerfile").read_text() == "FROM x\n"
    assert not (dest / ".git").exists()


def test_git_failure_says_what_failed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "w" / "context"
    url = f"file://user:hunter2@{tmp_path}/missing"
    assert main(["context", "--dest", str(dest), "--git", url]) == 3
    err = capsys.readouterr().err
    assert "spec.image.git: git clone failed" in err
    assert "hunter2" not in err


def test_the_operator_resolves_branches_and_tags_with_ls_remote(tmp_path: Path) -> None:
    from substratus.api.common import GitSource
    from substratus.runtimes.kubernetes.builder import Builder
    from substratus.runtimes.kubernetes.children import Children
    from substratus.runtimes.kubernetes.config import OperatorConfig
    from substratus.runtimes.kubernetes.imageconfig import ImageConfigs

    repo, first, second = two_commits(tmp_path)
    cfg = OperatorConfig(artifact_url="s3://b", helper_image="h")
    builder = Builder(None, cfg, Children(), ImageConfigs(), lambda p, c: "")  # type: ignore[arg-type]
    url = f"file://{repo}"
    assert builder.resolve(GitSource(url=url, branch="main")) == second
    assert builder.resolve(GitSource(url=url)) == second  # the default branch
    assert builder.resolve(GitSource(url=url, tag="v1")) == first  # peeled to its commit
    assert builder.resolve(GitSource(url=url, branch="nope")) is None
    assert builder.resolve(GitSource(url=f"file://{tmp_path}/missing")) is None
