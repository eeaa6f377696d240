"""Image build contexts: a deterministic ``.tar.gz`` of a directory, honouring ``.dockerignore``.

``sub`` packs a local directory, uploads it to a signed URL and records its md5 in
``spec.image.upload.md5``; the builder unpacks it. The same content always gives the same
tarball, and so the same md5: entries sorted, times 0, owners 0, modes normalised (0644, or 0755
for executables and directories), no name or time in the gzip header.

``.dockerignore`` follows Docker (moby/patternmatcher): one pattern per line, ``#`` starts a
comment line, surrounding whitespace is ignored, paths are cleaned (``./a/`` is ``a``, a leading
``/`` is dropped); ``*`` matches within one path segment, ``?`` one character but ``/``, ``**``
any number of segments (zero included), ``[...]`` a character class, ``\\`` escapes; a pattern
matches a path or any of its parent directories; ``!`` makes an exception; the last matching
pattern wins. ``.dockerignore`` and the Dockerfile are always sent, as Docker does.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import posixpath
import re
import stat
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

__all__ = ["ContextTooLarge", "DockerIgnore", "pack_context", "unpack_context"]

DOCKERIGNORE = ".dockerignore"


@dataclass(frozen=True)
class _Pattern:
    text: str
    exclusion: bool
    regex: re.Pattern[str]


def _translate(pattern: str) -> str:
    """A Docker ignore pattern as a regular expression (patternmatcher's ``compile``)."""
    out = "^"
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "*":
            if i + 1 < n and pattern[i + 1] == "*":
                i += 2
                if i < n and pattern[i] == "/":  # "**/" is "**"
                    i += 1
                # "**" at the end matches everything, otherwise any number of segments.
                out += ".*" if i >= n else "(.*/)?"
                continue
            out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch in ".+()|{}$":  # what Docker escapes ('^' stays, for "[^...]")
            out += "\\" + ch
        elif ch == "\\":
            if i + 1 < n:
                i += 1
                out += re.escape(pattern[i])
            else:
                out += "\\\\"
        else:  # '[' and ']' pass through as character classes, like other characters
            out += ch
        i += 1
    return out + "$"


def _clean(pattern: str) -> str:
    """Go's ``filepath.Clean`` (``posixpath.normpath`` keeps a leading ``//``)."""
    cleaned = posixpath.normpath(pattern)
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    return cleaned


class DockerIgnore:
    """Compiled ``.dockerignore`` patterns."""

    def __init__(self, patterns: list[str]) -> None:
        self.patterns: list[_Pattern] = []
        for raw in patterns:
            p = raw.strip()
            if not p:
                continue
            exclusion = p.startswith("!")
            if exclusion:
                p = p[1:].strip()
                if not p:
                    raise ValueError('illegal exclusion pattern: "!"')
            p = _clean(p)
            if len(p) > 1 and p.startswith("/"):
                p = p[1:]
            try:
                regex = re.compile(_translate(p))
            except re.error as e:
                raise ValueError(f"invalid .dockerignore pattern {raw!r}: {e}") from None
            self.patterns.append(_Pattern(p, exclusion, regex))
        self.has_exceptions = any(p.exclusion for p in self.patterns)

    @classmethod
    def parse(cls, text: str) -> DockerIgnore:
        lines = text.removeprefix("\ufeff").splitlines()
        # Comments are recognised before trimming, as Docker does.
        return cls([line for line in lines if not line.startswith("#")])

    @classmethod
    def load(cls, directory: Path) -> DockerIgnore:
        path = directory / DOCKERIGNORE
        if not path.is_file():
            return cls([])
        return cls.parse(path.read_text(encoding="utf-8", errors="surrogateescape"))

    def excluded(self, path: str) -> bool:
        """Whether the relative ``/``-separated ``path`` is excluded."""
        parts = path.split("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        result = False
        for pattern in self.patterns:
            if any(pattern.regex.match(c) for c in candidates):
                result = not pattern.exclusion
        return result


class _HashingWriter:
    """A write-only file that hashes (md5) what passes through it."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.md5 = hashlib.md5()

    def write(self, data: Any) -> int:
        self.md5.update(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def _entries(root: Path, ignore: DockerIgnore, always: set[str], skip: set[Path]) -> list[str]:
    """Relative paths to pack, parents before children, sorted at each level."""

    def visit(directory: Path, prefix: str) -> tuple[list[str], bool]:
        out: list[str] = []
        for name in sorted(os.listdir(directory)):
            rel = prefix + name
            full = directory / name
            if full in skip:  # the tarball being written
                continue
            st = os.lstat(full)
            excluded = ignore.excluded(rel) and rel not in always
            if stat.S_ISDIR(st.st_mode):
                inside = rel + "/"
                if (
                    excluded
                    and not ignore.has_exceptions
                    and not any(a.startswith(inside) for a in always)
                ):
                    continue  # nothing inside can come back
                children, any_included = visit(full, inside)
                if not excluded or any_included:
                    out.append(rel)
                    out.extend(children)
            elif (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)) and not excluded:
                out.append(rel)
        return out, bool(out)

    return visit(root, "")[0]


def _tarinfo(full: Path, rel: str) -> tarfile.TarInfo:
    st = os.lstat(full)
    info = tarfile.TarInfo(rel)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
    elif stat.S_ISLNK(st.st_mode):
        info.type = tarfile.SYMTYPE
        info.linkname = os.readlink(full)
        info.mode = 0o777
    else:
        info.type = tarfile.REGTYPE
        info.size = st.st_size
        info.mode = 0o755 if st.st_mode & 0o111 else 0o644
    return info


def pack_context(directory: Path, dest: Path, *, dockerfile: str = "Dockerfile") -> str:
    """Write a deterministic gzipped tarball of ``directory`` to ``dest``; return its md5 hex.

    Files excluded by ``directory/.dockerignore`` are left out (``.dockerignore`` and
    ``dockerfile`` are always included). ``dest`` may lie inside ``directory``.
    """
    directory = Path(directory)
    if not directory.exists():
        raise FileNotFoundError(f"build context {directory} does not exist")
    if not directory.is_dir():
        raise NotADirectoryError(f"build context {directory} is not a directory")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    root = directory.resolve()
    ignore = DockerIgnore.load(root)
    always = {DOCKERIGNORE, posixpath.normpath(dockerfile)}
    tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
    skip = {dest.resolve(), tmp.resolve()}
    try:
        with open(tmp, "wb") as raw:
            writer = _HashingWriter(raw)
            with (
                gzip.GzipFile(filename="", mode="wb", fileobj=writer, mtime=0) as gz,
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
            ):
                for rel in _entries(root, ignore, always, skip):
                    full = root / rel
                    info = _tarinfo(full, rel)
                    if info.isreg():
                        with open(full, "rb") as f:
                            tar.addfile(info, f)
                    else:
                        tar.addfile(info)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return writer.md5.hexdigest()


def _strict_data_filter(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    # The "data" filter would quietly strip a leading '/': refuse it instead.
    if member.name.startswith("/"):
        raise tarfile.AbsolutePathError(member)
    return tarfile.data_filter(member, dest)


# An upload may unpack to at most this many times its own size (source trees compress 3-10x;
# a file of zeros, 1000x), and never past MAX_UNPACKED_BYTES, whatever its ratio. Contexts
# under UNPACKED_FLOOR pass the ratio check: a tiny archive of text can compress very well.
MAX_UNPACK_RATIO = 100
UNPACKED_FLOOR = 64 * 2**20
MAX_UNPACKED_BYTES = 20 * 2**30
MAX_MEMBERS = 200_000


class ContextTooLarge(ValueError):
    """A build context would unpack to more files or bytes than allowed."""


def unpack_limit(packed_size: int) -> int:
    return min(MAX_UNPACKED_BYTES, max(UNPACKED_FLOOR, MAX_UNPACK_RATIO * packed_size))


def unpack_context(tarball: Path, dest: Path, *, max_bytes: int | None = None) -> None:
    """Extract a build context into ``dest``, refusing absolute paths, ``..``, links that
    escape ``dest`` and device files (``tarfile.FilterError``; tarfile's ``data`` filter), and
    archives that unpack past ``max_bytes`` (default :func:`unpack_limit` of the archive's
    size) or MAX_MEMBERS entries (:class:`ContextTooLarge`). Checked from the headers before
    each member is written, so an archive bomb never reaches the disk."""
    dest = Path(dest)
    limit = unpack_limit(Path(tarball).stat().st_size) if max_bytes is None else max_bytes
    total, count = 0, 0

    def account(member: tarfile.TarInfo) -> None:
        nonlocal total, count
        count += 1
        total += member.size
        if member.issparse():
            raise ContextTooLarge(f"{member.name}: sparse files are not accepted")
        if count > MAX_MEMBERS:
            raise ContextTooLarge(f"the archive holds more than {MAX_MEMBERS} entries")
        if total > limit:
            raise ContextTooLarge(
                f"the archive unpacks to more than {limit / 2**20:.0f} MiB "
                f"({Path(tarball).stat().st_size / 2**20:.1f} MiB packed)"
            )

    def bounded(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
        account(member)
        return _strict_data_filter(member, path)

    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball, "r:*") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter=bounded)
            return
        # Python 3.11 before 3.11.4 (Debian 12's 3.11.2) has no extraction filters: the data
        # filter's checks by hand, each member checked before it is written.
        root = os.path.realpath(dest)
        for member in tar:
            account(member)
            _check_member(member, root)
            tar.extract(member, dest)


class UnsafeMember(tarfile.TarError):
    """A member that would escape the context or is a special file (Pythons without
    tarfile's extraction filters; theirs raise ``tarfile.FilterError``)."""


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([root, path]) == root


def _check_member(member: tarfile.TarInfo, root: str) -> None:
    """What tarfile's ``data`` filter refuses, and its normalisation of the rest: no absolute
    names, nothing outside ``root`` (following links already written), no links pointing
    outside, no devices or FIFOs; no owner, no setuid bits, no write bits for others."""
    if member.name.startswith("/") or os.path.isabs(member.name):
        raise UnsafeMember(f"{member.name}: an absolute path")
    target = os.path.realpath(os.path.join(root, member.name))
    if not _inside(target, root):
        raise UnsafeMember(f"{member.name}: outside the context")
    if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
        raise UnsafeMember(f"{member.name}: a special file")
    if member.issym():
        if os.path.isabs(member.linkname):
            raise UnsafeMember(f"{member.name}: a link to an absolute path")
        link = os.path.realpath(os.path.join(os.path.dirname(target), member.linkname))
        if not _inside(link, root):
            raise UnsafeMember(f"{member.name}: a link outside the context")
    if member.islnk():
        link = os.path.realpath(os.path.join(root, member.linkname))
        if not _inside(link, root):
            raise UnsafeMember(f"{member.name}: a link outside the context")
    member.uid = member.gid = 0
    member.uname = member.gname = ""
    if member.isfile() or member.isdir():
        member.mode = (member.mode & 0o755) | (0o600 if member.isfile() else 0o700)
