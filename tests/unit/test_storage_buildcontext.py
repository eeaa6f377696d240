from __future__ import annotations

import hashlib
import io
import os
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from substratus.storage import ContextTooLarge, DockerIgnore, pack_context, unpack_context
from substratus.storage.buildcontext import UnsafeMember, unpack_limit

# (patterns, path, excluded?) after Docker's own patternmatcher cases and documentation.
CASES: list[tuple[list[str], str, bool]] = [
    (["*.go"], "a.go", True),
    (["*.go"], "sub/a.go", False),  # '*' stays within the top level
    (["**/*.go"], "a.go", True),  # '**' matches zero directories too
    (["**/*.go"], "x/y/a.go", True),
    (["**"], "anything/at/all", True),
    (["dir/**"], "dir/a/b", True),
    (["dir/**"], "dirx/a", False),
    (["**/dir/file"], "a/b/dir/file", True),
    (["**/dir/file"], "dir/file", True),
    (["**/dir/file"], "dir/x/file", False),
    (["**/dir2/*"], "dir/dir2/dir3/file", True),  # a parent directory matches
    (["**file"], "dir/file", True),
    (["*/temp*"], "somedir/temporary.txt", True),
    (["*/temp*"], "temp", False),
    (["*/temp*"], "a/b/temp", False),
    (["*/*/temp*"], "a/b/temp.txt", True),
    (["temp?"], "tempa", True),
    (["temp?"], "temp", False),
    (["temp?"], "tempab", False),
    (["temp?"], "temp/", False),
    (["[a-c]x"], "bx", True),
    (["[^a]x"], "ax", False),
    (["[^a]x"], "bx", True),
    (["a\\*"], "a*", True),
    (["a\\*"], "ab", False),
    (["file.txt"], "fileXtxt", False),  # '.' is literal
    (["dir/"], "dir/x", True),  # trailing slash is cleaned away; children of a match go too
    (["/abs"], "abs", True),  # leading slash is relative to the context
    (["./rel/../other"], "other", True),
    (["  spaced  "], "spaced", True),
    (["# comment"], "# comment", False),
    (["*.md", "!README.md"], "README.md", False),
    (["*.md", "!README.md"], "x.md", True),
    (["*.md", "!README*.md", "README-secret.md"], "README-secret.md", True),
    (["*.md", "!README*.md", "README-secret.md"], "README-public.md", False),
    (["docs", "!docs/keep.txt"], "docs/keep.txt", False),
    (["docs", "!docs/keep.txt"], "docs/other.txt", True),
    (["!docs/keep.txt", "docs"], "docs/keep.txt", True),  # the last match wins
    (["**", "!src/**", "src/**/*.pyc"], "src/a.py", False),
    (["**", "!src/**", "src/**/*.pyc"], "src/x/b.pyc", True),
    (["**", "!src/**", "src/**/*.pyc"], "other.txt", True),
]


@pytest.mark.parametrize(("patterns", "path", "excluded"), CASES)
def test_dockerignore_matching(patterns: list[str], path: str, excluded: bool) -> None:
    ignore = DockerIgnore.parse("\n".join(patterns) + "\n")
    assert ignore.excluded(path) is excluded


def test_dockerignore_parse_details() -> None:
    ignore = DockerIgnore.parse("\ufeff# a comment\n\n  \n*.tmp\r\n !  keep.tmp\n")
    assert [(p.text, p.exclusion) for p in ignore.patterns] == [
        ("*.tmp", False),
        ("keep.tmp", True),
    ]
    with pytest.raises(ValueError, match="illegal exclusion"):
        DockerIgnore.parse("!\n")


def _context(root: Path) -> Path:
    files = {
        "Dockerfile": "FROM scratch\n",
        ".dockerignore": "\n".join(
            [
                "# build junk",
                "*.log",
                "!keep.log",
                "secrets/",
                "**/__pycache__",
                "node_modules",
                "Dockerfile",
                ".dockerignore",
            ]
        ),
        "app/main.py": "print('hi')\n",
        "app/__pycache__/main.cpython-311.pyc": "junk",
        "app/deep/__pycache__/x.pyc": "junk",
        "build.log": "noise",
        "keep.log": "wanted",
        "app/debug.log": "nested logs are not matched by a top-level *.log",
        "secrets/key": "hunter2",
        "node_modules/pkg/index.js": "x",
    }
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    (root / "empty-dir").mkdir()
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o775)
    (root / "link").symlink_to("app/main.py")
    return root


def _members(tarball: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(tarball, "r:gz") as tar:
        return {m.name: m for m in tar.getmembers()}


def test_pack_honours_dockerignore(tmp_path: Path) -> None:
    ctx = _context(tmp_path / "ctx")
    out = tmp_path / "ctx.tar.gz"
    md5 = pack_context(ctx, out)
    assert md5 == hashlib.md5(out.read_bytes()).hexdigest()
    members = _members(out)
    assert sorted(members) == [
        ".dockerignore",  # always sent, though it ignores itself
        "Dockerfile",  # likewise
        "app",
        "app/debug.log",
        "app/deep",  # kept: not excluded itself, though now empty
        "app/main.py",
        "empty-dir",
        "keep.log",
        "link",
        "run.sh",
    ]
    assert members["link"].issym() and members["link"].linkname == "app/main.py"
    assert members["run.sh"].mode == 0o755
    assert members["app/main.py"].mode == 0o644
    assert members["app"].isdir() and members["app"].mode == 0o755
    for m in members.values():
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")


def test_pack_is_deterministic(tmp_path: Path) -> None:
    a = _context(tmp_path / "a")
    time.sleep(0.01)
    b = _context(tmp_path / "b")
    os.utime(b / "app" / "main.py", (1_000_000, 1_000_000))
    (b / "app" / "main.py").chmod(0o600)  # only the executable bit is kept
    md5_a = pack_context(a, tmp_path / "a.tgz")
    assert pack_context(b, tmp_path / "b.tgz") == md5_a
    assert (tmp_path / "a.tgz").read_bytes() == (tmp_path / "b.tgz").read_bytes()
    (b / "build.log").write_text("ignored files do not count")
    assert pack_context(b, tmp_path / "b.tgz") == md5_a
    (b / "app" / "main.py").write_text("print('changed')\n")
    assert pack_context(b, tmp_path / "b.tgz") != md5_a


def test_pack_into_the_context_itself(tmp_path: Path) -> None:
    ctx = _context(tmp_path / "ctx")
    out = ctx / "out" / "ctx.tar.gz"
    pack_context(ctx, out)
    assert "out/ctx.tar.gz" not in _members(out)
    pack_context(ctx, out)  # the previous tarball is not packed either
    assert "out/ctx.tar.gz" not in _members(out)


def test_pack_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pack_context(tmp_path / "missing", tmp_path / "x.tgz")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="not a directory"):
        pack_context(tmp_path / "file", tmp_path / "x.tgz")


@pytest.fixture(params=["filters", "legacy"])
def extraction(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways unpack_context works: with tarfile's extraction filters, and by its own
    checks on a Python without them (3.11 before 3.11.4, as Debian 12's)."""
    if request.param == "legacy":
        monkeypatch.delattr(tarfile, "data_filter")
    return str(request.param)


def test_unpack_round_trip(tmp_path: Path, extraction: str) -> None:
    ctx = _context(tmp_path / "ctx")
    pack_context(ctx, tmp_path / "ctx.tgz")
    dest = tmp_path / "unpacked"
    unpack_context(tmp_path / "ctx.tgz", dest)
    assert (dest / "app" / "main.py").read_text() == "print('hi')\n"
    assert (dest / "link").resolve() == (dest / "app" / "main.py").resolve()
    assert os.access(dest / "run.sh", os.X_OK)
    assert not (dest / "secrets").exists()


def _evil_tarball(path: Path, member: tarfile.TarInfo, data: bytes = b"pwned") -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        if member.isreg():
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
        else:
            tar.addfile(member)
    path.write_bytes(buf.getvalue())
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


@pytest.mark.parametrize(
    "member",
    [
        _info("../escaped"),
        _info("a/../../escaped"),
        _info("/tmp/substratus-absolute-escape"),
        _info("abslink", tarfile.SYMTYPE, "/etc/passwd"),
        _info("uplink", tarfile.SYMTYPE, "../../escaped"),
        _info("hardlink", tarfile.LNKTYPE, "../escaped"),
        _info("dev", tarfile.CHRTYPE),
        _info("fifo", tarfile.FIFOTYPE),
    ],
    ids=lambda m: m.name,
)
def test_unpack_rejects_escapes(tmp_path: Path, member: tarfile.TarInfo, extraction: str) -> None:
    tarball = _evil_tarball(tmp_path / "evil.tgz", member)
    dest = tmp_path / "deep" / "dest"
    refused = tarfile.FilterError if extraction == "filters" else UnsafeMember
    with pytest.raises(refused):
        unpack_context(tarball, dest)
    assert not (tmp_path / "escaped").exists()
    assert not (tmp_path / "deep" / "escaped").exists()
    assert not Path("/tmp/substratus-absolute-escape").exists()


def test_pack_keeps_a_dockerfile_in_an_ignored_folder(tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    (ctx / "docker").mkdir(parents=True)
    (ctx / "docker" / "Dockerfile").write_text("FROM scratch\n")
    (ctx / "docker" / "other").write_text("x")
    (ctx / ".dockerignore").write_text("docker\n")
    pack_context(ctx, tmp_path / "out.tgz", dockerfile="docker/Dockerfile")
    assert sorted(_members(tmp_path / "out.tgz")) == [
        ".dockerignore",
        "docker",
        "docker/Dockerfile",
    ]


class _Zeros(io.RawIOBase):
    """``size`` zero bytes, streamed: a bomb is made without holding it in memory."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        n = min(len(buf), self.left)
        buf[:n] = bytes(n)
        self.left -= n
        return n


def test_unpack_refuses_an_archive_bomb_before_writing_it(tmp_path: Path, extraction: str) -> None:
    size = 200 * 2**20  # 200 MiB of zeros gzip to about 200 KiB: 1000x
    info = tarfile.TarInfo("zeros.bin")
    info.size = size
    bomb = tmp_path / "bomb.tgz"
    with tarfile.open(bomb, mode="w:gz") as tar:
        tar.addfile(info, io.BufferedReader(_Zeros(size)))
    assert bomb.stat().st_size < size / 500
    dest = tmp_path / "dest"
    with pytest.raises(ContextTooLarge, match="unpacks to more than 64 MiB"):
        unpack_context(bomb, dest)
    assert not (dest / "zeros.bin").exists()
    # An explicit, larger limit lets it through: the bound, not the contents, refused it.
    unpack_context(bomb, dest, max_bytes=size)
    assert (dest / "zeros.bin").stat().st_size == size


def test_unpack_limit_scales_with_the_archive() -> None:
    assert unpack_limit(1000) == 64 * 2**20  # small contexts: the floor
    assert unpack_limit(2**30) == 20 * 2**30  # capped, whatever the ratio
    assert unpack_limit(10 * 2**20) == 1000 * 2**20  # 100x in between
