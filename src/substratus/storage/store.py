"""The artifact store: versioned directories of files under a base URL, committed atomically.

Layout: ``<base>/<namespace>/<plural>/<name>/<version>/...`` with the version's
``substratus-manifest.json`` written last. A version is *committed* once its manifest exists;
readers ignore versions without one, and a committed version is never modified.

Every method takes full URLs (any supported scheme), so one store can read what another wrote;
the base URL only decides where :meth:`ArtifactStore.object_url` puts new objects.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import re
import shutil
import threading
import uuid
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from substratus.api.kinds import UploadParts
from substratus.storage import signed
from substratus.storage.backends import Location, S3Backend, backend_for, parse_url
from substratus.storage.manifest import (
    CHUNK,
    MANIFEST_NAME,
    FileEntry,
    Manifest,
    hash_file,
    list_files,
    now_iso,
)

__all__ = ["ArtifactStore", "Committed", "Progress", "StorageError", "upload_to_signed_url"]

Progress = Callable[[int, int], None]
"""``progress(bytes_done, bytes_total)``; may be called from worker threads (one at a time)."""

# A multipart upload's parts: at least this large, at most this many (URLs in the status).
PART_BYTES = 64 << 20
MAX_PARTS = 100

# Parallel transfers for object stores (files at a time); local copies run one at a time.
REMOTE_WORKERS = 8


class StorageError(RuntimeError):
    """A storage operation failed; the message names the URL and the reason."""


@dataclass(frozen=True)
class Committed:
    url: str
    """The version's URL, ending with '/'."""
    manifest: Manifest


@contextlib.contextmanager
def _errors(action: str, url: str) -> Iterator[None]:
    """Turn backend exceptions (OSError, SDK errors, missing extras) into StorageError."""
    try:
        yield
    except StorageError:
        raise
    except FileNotFoundError as e:
        raise StorageError(f"cannot {action} {url}: not found ({e})") from e
    except PermissionError as e:
        raise StorageError(f"cannot {action} {url}: permission denied ({e})") from e
    except Exception as e:
        raise StorageError(f"cannot {action} {url}: {type(e).__name__}: {e}") from e


def _segment(value: str, what: str) -> str:
    if not value or "/" in value or "\\" in value or value in (".", "..") or "\x00" in value:
        raise StorageError(f"invalid {what} {value!r}: must be a non-empty name without '/'")
    return value


def _natural_key(name: str) -> list[tuple[int, int | str]]:
    """Sort ``v2`` before ``v10`` and timestamps in order."""
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", name) if p]


class _Counter:
    """Thread-safe progress accounting."""

    def __init__(self, total: int, callback: Progress | None) -> None:
        self.total = total
        self.done = 0
        self.callback = callback
        self.lock = threading.Lock()

    def add(self, n: int) -> None:
        if self.callback is None:
            return
        with self.lock:
            self.done += n
            self.callback(self.done, self.total)


def _run_all(fns: list[Callable[[], Any]], workers: int) -> list[Any]:
    """Run ``fns`` on a thread pool; the first exception cancels the rest and is raised."""
    if workers <= 1 or len(fns) <= 1:
        return [fn() for fn in fns]
    with ThreadPoolExecutor(max_workers=min(workers, len(fns))) as pool:
        futures = [pool.submit(fn) for fn in fns]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for f in pending:
            f.cancel()
        for f in futures:
            if f in done and (exc := f.exception()) is not None:
                raise exc  # the pool's exit waits for transfers already running
        return [f.result() for f in futures]


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _copy_hashing(src: Path, dst: Path, counter: _Counter) -> FileEntry:
    """Copy ``src`` to ``dst`` (durably), hashing on the way."""
    h = hashlib.sha256()
    size = 0
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        while chunk := fi.read(CHUNK):
            h.update(chunk)
            fo.write(chunk)
            size += len(chunk)
            counter.add(len(chunk))
        fo.flush()
        os.fsync(fo.fileno())
    return FileEntry(path="", size=size, sha256=h.hexdigest())


def _atomic_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_exclusive(path: Path, data: bytes) -> None:
    """Write ``path`` durably and atomically; ``FileExistsError`` if it exists already."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)  # atomic, and never replaces an existing file
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


class ArtifactStore:
    """Artifacts of objects under ``base_url`` (``file://``, ``s3://``, ``gs://``, ``az://``).

    A plain path is taken as ``file://``. Cloud packages are imported on first use.
    """

    def __init__(self, base_url: str) -> None:
        try:
            loc = parse_url(base_url)
        except ValueError as e:
            raise StorageError(str(e)) from None
        self.base_url = loc.url
        self.location = loc

    def __repr__(self) -> str:
        return f"ArtifactStore({self.base_url!r})"

    # -- URLs -------------------------------------------------------------------------------

    def object_url(self, namespace: str, plural: str, name: str) -> str:
        """``<base>/<namespace>/<plural>/<name>/``."""
        parts = [
            _segment(namespace, "namespace"),
            _segment(plural, "plural"),
            _segment(name, "name"),
        ]
        return f"{self.base_url.rstrip('/')}/{'/'.join(parts)}/"

    @staticmethod
    def version_url(object_url: str, version: str) -> str:
        return f"{object_url.rstrip('/')}/{_segment(version, 'version')}/"

    @staticmethod
    def _parse(url: str) -> Location:
        try:
            return parse_url(url)
        except ValueError as e:
            raise StorageError(str(e)) from None

    def _fs(self, loc: Location) -> Any:
        return backend_for(loc).filesystem()

    def local_path(self, url: str) -> Path | None:
        """The local directory or file of a ``file://`` URL (or plain path); else ``None``."""
        loc = self._parse(url)
        return Path(loc.path) if loc.is_local else None

    # -- commit -----------------------------------------------------------------------------

    def commit(
        self,
        local_dir: Path,
        object_url: str,
        version: str,
        *,
        move: bool = False,
        progress: Progress | None = None,
    ) -> Committed:
        """Store every file of ``local_dir`` as ``<object_url><version>/``, manifest last.

        ``move=True`` with a ``file://`` store renames the files into place (same file system)
        instead of copying; elsewhere it is ignored. A version that is already committed is
        never modified (``StorageError``); leftovers of an interrupted commit are replaced.
        """
        local_dir = Path(local_dir)
        url = self.version_url(object_url, version)
        if not local_dir.is_dir():
            raise StorageError(f"cannot commit {local_dir} to {url}: not a directory")
        loc = self._parse(url)
        if loc.is_local:
            src, dst = local_dir.resolve(), Path(loc.path).resolve()
            if src == dst or src.is_relative_to(dst) or dst.is_relative_to(src):
                raise StorageError(f"cannot commit {local_dir} to {url}: the two overlap")
        with _errors("commit to", url):
            files = list_files(local_dir)
            total = sum(p.stat().st_size for _, p in files)
            counter = _Counter(total, progress)
            if progress is not None:
                progress(0, total)
            fs = self._fs(loc)
            if fs.exists(f"{loc.path}/{MANIFEST_NAME}"):
                raise StorageError(
                    f"cannot commit to {url}: that version is already committed, and committed "
                    "versions are never modified"
                )
            if fs.exists(loc.path):  # an interrupted commit's leftovers
                self._rm(fs, loc)
            if loc.is_local:
                entries = self._commit_local(files, Path(loc.path), move, counter)
            else:
                entries = self._upload(fs, files, loc, counter)
            manifest = Manifest(files=tuple(entries), created=now_iso())
            data = manifest.to_json().encode()
            if loc.is_local:
                try:
                    _write_exclusive(Path(loc.path) / MANIFEST_NAME, data)
                except FileExistsError:
                    raise StorageError(
                        f"cannot commit to {url}: another commit of that version won the race"
                    ) from None
            else:
                fs.pipe_file(f"{loc.path}/{MANIFEST_NAME}", data)
        return Committed(url=url, manifest=manifest)

    @staticmethod
    def _commit_local(
        files: list[tuple[str, Path]], root: Path, move: bool, counter: _Counter
    ) -> list[FileEntry]:
        root.mkdir(parents=True, exist_ok=True)
        entries: list[FileEntry] = []
        moved: list[tuple[Path, Path]] = []
        try:
            for rel, src in files:
                dst = root / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                if move and not src.is_symlink():
                    size, digest = hash_file(src, counter.add)
                    try:
                        os.rename(src, dst)
                        moved.append((dst, src))
                    except OSError as e:
                        if e.errno != errno.EXDEV:
                            raise
                        shutil.copyfile(src, dst)  # another file system: copy instead
                    entries.append(FileEntry(rel, size, digest))
                else:
                    copied = _copy_hashing(src, dst, counter)
                    entries.append(FileEntry(rel, copied.size, copied.sha256))
        except BaseException:
            for dst, src in reversed(moved):  # give the caller its files back
                with contextlib.suppress(OSError):
                    os.rename(dst, src)
            raise
        for d in {(root / rel).parent for rel, _ in files} | {root}:
            _fsync_dir(d)
        return entries

    @staticmethod
    def _upload(
        fs: Any, files: list[tuple[str, Path]], loc: Location, counter: _Counter
    ) -> list[FileEntry]:
        def one(rel: str, src: Path) -> FileEntry:
            h = hashlib.sha256()
            size = 0
            with open(src, "rb") as fi, fs.open(f"{loc.path}/{rel}", "wb") as fo:
                while chunk := fi.read(CHUNK):
                    h.update(chunk)
                    fo.write(chunk)
                    size += len(chunk)
                    counter.add(len(chunk))
            return FileEntry(rel, size, h.hexdigest())

        return _run_all([functools.partial(one, r, s) for r, s in files], REMOTE_WORKERS)

    # -- read -------------------------------------------------------------------------------

    def read_manifest(self, version_url: str) -> Manifest | None:
        """The version's manifest, or ``None`` if it is not committed (or does not exist)."""
        loc = self._parse(version_url)
        with _errors("read the manifest of", version_url):
            fs = self._fs(loc)
            try:
                text = fs.cat_file(f"{loc.path}/{MANIFEST_NAME}")
            except FileNotFoundError:
                return None
            try:
                return Manifest.from_json(text)
            except ValueError as e:
                raise StorageError(f"invalid manifest in {version_url}: {e}") from None

    def _require_manifest(self, version_url: str) -> Manifest:
        m = self.read_manifest(version_url)
        if m is None:
            raise StorageError(f"{version_url} is not committed: it has no {MANIFEST_NAME}")
        return m

    def fetch(self, version_url: str, dest: Path, *, progress: Progress | None = None) -> Path:
        """A local directory with the version's files.

        For ``file://`` the store's own directory is returned (nothing is copied, ``dest`` is
        unused). Otherwise the files are downloaded into ``dest`` and checked against the
        manifest's sha256; files already there with the right size and sha256 are kept (so
        ``dest`` works as a cache). The manifest is written into ``dest`` too. Other files in
        ``dest`` are left alone.
        """
        manifest = self._require_manifest(version_url)
        loc = self._parse(version_url)
        counter = _Counter(manifest.total_size, progress)
        if progress is not None:
            progress(0, manifest.total_size)
        if loc.is_local:
            root = Path(loc.path)
            for entry in manifest.files:
                p = root / entry.path
                try:
                    size = p.stat().st_size
                except OSError:
                    size = -1
                if size != entry.size:
                    raise StorageError(
                        f"{version_url} is damaged: {entry.path} is missing or not "
                        f"{entry.size} bytes"
                    )
            counter.add(manifest.total_size)
            return root
        dest = Path(dest)
        with _errors("fetch", version_url):
            fs = self._fs(loc)
            dest.mkdir(parents=True, exist_ok=True)
            _run_all(
                [
                    functools.partial(self._download, fs, loc, version_url, e, dest, counter)
                    for e in manifest.files
                ],
                REMOTE_WORKERS,
            )
            manifest_path = dest / MANIFEST_NAME
            tmp = dest / f".{MANIFEST_NAME}.tmp-{uuid.uuid4().hex[:8]}"
            tmp.write_text(manifest.to_json())
            os.replace(tmp, manifest_path)
        return dest

    @staticmethod
    def _download(
        fs: Any, loc: Location, url: str, entry: FileEntry, dest: Path, counter: _Counter
    ) -> None:
        target = dest / entry.path
        if target.is_file() and target.stat().st_size == entry.size:
            _, digest = hash_file(target)
            if digest == entry.sha256:
                counter.add(entry.size)
                return
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.part-{uuid.uuid4().hex[:8]}")
        try:
            h = hashlib.sha256()
            size = 0
            with fs.open(f"{loc.path}/{entry.path}", "rb") as fi, open(tmp, "wb") as fo:
                while chunk := fi.read(CHUNK):
                    h.update(chunk)
                    fo.write(chunk)
                    size += len(chunk)
                    counter.add(len(chunk))
            if size != entry.size or h.hexdigest() != entry.sha256:
                raise StorageError(
                    f"{url}{entry.path} does not match the manifest: got {size} bytes with "
                    f"sha256 {h.hexdigest()}, expected {entry.size} bytes with {entry.sha256}"
                )
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    def versions(self, object_url: str) -> list[str]:
        """Names of the committed versions under ``object_url``, in natural order."""
        loc = self._parse(object_url)
        with _errors("list versions of", object_url):
            fs = self._fs(loc)
            try:
                entries = fs.ls(loc.path, detail=True)
            except FileNotFoundError:
                return []
            names = {
                e["name"].rstrip("/").rsplit("/", 1)[-1]
                for e in entries
                if e.get("type") == "directory"
            }
            names.discard("")
            committed = [n for n in names if fs.exists(f"{loc.path}/{n}/{MANIFEST_NAME}")]
        return sorted(committed, key=_natural_key)

    # -- delete -----------------------------------------------------------------------------

    def _rm(self, fs: Any, loc: Location) -> None:
        if loc.is_bucket_root:
            raise StorageError(f"refusing to delete a whole bucket or file system: {loc.url}")
        if loc.is_local:
            p = Path(loc.path)
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
            return
        with contextlib.suppress(FileNotFoundError):
            fs.rm(loc.path, recursive=True)

    def delete(self, object_url: str) -> None:
        """Remove everything under ``object_url``; nothing there is fine."""
        loc = self._parse(object_url)
        with _errors("delete", object_url):
            self._rm(self._fs(loc), loc)

    def prune(self, object_url: str, keep: str) -> None:
        """Remove every version under ``object_url`` but ``keep`` (which must be committed),
        leftovers of interrupted commits included."""
        if self.read_manifest(self.version_url(object_url, keep)) is None:
            raise StorageError(
                f"refusing to prune {object_url}: the version to keep, {keep!r}, is not committed"
            )
        self.retain_only(object_url, {keep})

    def retain_only(self, object_url: str, keep: Collection[str]) -> None:
        """Remove everything under ``object_url`` but the versions named in ``keep``."""
        for name in keep:
            _segment(name, "version")
        loc = self._parse(object_url)
        with _errors("prune", object_url):
            fs = self._fs(loc)
            try:
                entries = fs.ls(loc.path, detail=False)
            except FileNotFoundError:
                return
            names = {e.rstrip("/").rsplit("/", 1)[-1] for e in entries}
            for name in sorted(names - {*keep, ""}):
                self._rm(fs, loc.child(name))

    # -- single files and signed URLs -------------------------------------------------------

    def signed_upload_url(self, url: str, expires_s: int = 3600, md5: str | None = None) -> str:
        """A URL that accepts one HTTP ``PUT`` of the object at ``url`` (for ``file://``, the
        URL itself; see :func:`upload_to_signed_url`), bound to ``md5`` (hex) where the
        scheme allows."""
        loc = self._parse(url)
        if loc.is_local:
            return loc.url
        content_md5 = signed.md5_base64(md5) if md5 else None
        with _errors("sign an upload URL for", url):
            return backend_for(loc).signed_put_url(loc.path, expires_s, content_md5)

    def takes_parts(self, url: str) -> bool:
        """Whether uploads to ``url`` can go up in signed parts (S3's multipart uploads)."""
        return self._parse(url).scheme == "s3"

    def signed_upload_parts(self, url: str, expires_s: int, size: int) -> UploadParts:
        """A multipart upload of ``size`` bytes to ``url`` (S3): parts of at least 64 MiB, at
        most 100 of them, each with its signed PUT URL, and the signed URL completing it."""
        loc = self._parse(url)
        part = max(PART_BYTES, -(-size // MAX_PARTS))
        count = max(1, -(-size // part))
        backend = backend_for(loc)
        if not isinstance(backend, S3Backend):
            raise StorageError(f"cannot upload to {url} in parts: not an s3:// URL")
        with _errors("start a multipart upload of", url):
            upload_id, urls, complete = backend.signed_multipart(loc.path, expires_s, count)
        return UploadParts(upload_id=upload_id, part_size=part, urls=urls, complete_url=complete)

    def put_file(self, local: Path, url: str) -> None:
        loc = self._parse(url)
        with _errors("upload to", url):
            if loc.is_local:
                _atomic_copy(Path(local), Path(loc.path))
            else:
                self._fs(loc).put_file(str(local), loc.path)

    def get_file(self, url: str, local: Path) -> None:
        loc = self._parse(url)
        local = Path(local)
        with _errors("download", url):
            if loc.is_local:
                _atomic_copy(Path(loc.path), local)
                return
            local.parent.mkdir(parents=True, exist_ok=True)
            tmp = local.with_name(f".{local.name}.part-{uuid.uuid4().hex[:8]}")
            try:
                self._fs(loc).get_file(loc.path, str(tmp))
                os.replace(tmp, local)
            finally:
                tmp.unlink(missing_ok=True)

    def exists(self, url: str) -> bool:
        """Whether an object (or any object under a directory URL) exists."""
        loc = self._parse(url)
        with _errors("check", url):
            return bool(self._fs(loc).exists(loc.path))


def upload_to_signed_url(
    signed_url: str,
    path: Path,
    *,
    md5: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Upload one file to a URL from :meth:`ArtifactStore.signed_upload_url`.

    ``file://``: an atomic copy (temp file and rename). ``http(s)://``: a streamed ``PUT``
    with ``md5`` (hex) as ``Content-MD5`` (:mod:`substratus.storage.signed`).
    """
    path = Path(path)
    if not path.is_file():
        raise StorageError(f"cannot upload {path}: not a file")
    if urlsplit(signed_url).scheme == "file":
        try:
            dest = parse_url(signed_url)
        except ValueError as e:
            raise StorageError(str(e)) from None
        with _errors("upload to", signed_url):
            _atomic_copy(path, Path(dest.path))
        if progress is not None:
            progress(path.stat().st_size)
        return
    try:
        signed.upload_to_signed_url(signed_url, path, md5=md5, progress=progress)
    except (signed.SignedUploadError, OSError) as e:
        raise StorageError(str(e)) from e
