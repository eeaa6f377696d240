"""The model loader (image ``substratusai/model-loader-huggingface``).

Imports a model into ``artifacts/``, from the Hugging Face hub or from a URL::

    python -m substratus.workloads.model_loader

Params (``params.json`` or ``PARAM_*``):

- ``name``: a Hugging Face repo id (``org/model``), with ``revision`` (default ``main``: a
  branch, tag or commit). ``HF_TOKEN`` from the environment authenticates (private and gated
  repos); ``HF_ENDPOINT`` points at another hub (a mirror, or a test server).
- ``url``: instead of ``name``, a local path, ``file://`` URL or bucket URL (``s3://``,
  ``gs://``, ``az://``, read through fsspec): one file or a directory; or one file over
  ``http://``/``https://`` (``http_file.py``).
- ``files``: glob patterns (comma/space separated, matched against the path in the repo as
  huggingface_hub does). Default: every file, except that when the source has ``*.safetensors``
  weights the other weight formats (``*.bin``, ``*.pt``, ``*.pth``, ``*.ckpt``, ``*.h5``,
  ``*.msgpack``, ``*.gguf``) are skipped, as the hub's own tooling does.
- ``convert``: ``safetensors`` turns the source's GGUF file into a transformers model
  (``config.json``, ``model.safetensors``, tokenizer) that loads in plain transformers;
  ``gguf`` keeps only the GGUF file(s), as they are (for llama.cpp). Default: keep what the
  source has.
- ``workers``: parallel downloads (default 8).

Hub downloads use ``huggingface_hub.snapshot_download`` (parallel, resumable: files finished by
an interrupted run are not fetched again, a dropped connection resumes with a range request).
Its bookkeeping (``.cache/huggingface``) and cache directory are removed once the download
succeeds, so ``artifacts/`` holds only the model. Progress lines go to stderr; the last line is
a summary (files, MB, MB/s).
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import importlib
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from substratus.workloads import http_file
from substratus.workloads.contract import (
    ParamError,
    Params,
    Progress,
    artifacts_dir,
    fail,
    redact,
    scratch_dir,
)
from substratus.workloads.gguf_convert import ConversionError

# Weight formats skipped by default when the source has safetensors weights.
OTHER_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.gguf")
CONVERSIONS = ("safetensors", "gguf")
CHUNK = 1 << 20
# Bookkeeping that is never part of a model (a git checkout, a huggingface_hub local_dir).
SKIPPED_DIRS = (".git", ".cache/huggingface")


class LoaderError(RuntimeError):
    """The source could not be read (not the params' fault, or not only)."""


@dataclass(frozen=True)
class SourceFile:
    path: str
    """Relative to the source's root, '/'-separated."""
    size: int


@dataclass(frozen=True)
class Request:
    name: str | None
    revision: str
    url: str | None
    files: list[str]
    convert: str | None
    workers: int

    @property
    def source(self) -> str:
        return redact(self.url) if self.url else f"{self.name}@{self.revision}"

    @classmethod
    def from_params(cls, params: Params) -> Request:
        name = (params.text("name") or "").strip() or None
        url = (params.text("url") or "").strip() or None
        if name and url:
            raise ParamError("params.name and params.url: give one of them, not both")
        if not name and not url:
            raise ParamError(
                "params.name or params.url: one is required (a Hugging Face repo id such as "
                "'HuggingFaceTB/SmolLM2-135M-Instruct', or the URL/path of a model file or "
                "directory)"
            )
        if name and (name.startswith("/") or "://" in name or name.count("/") > 1):
            raise ParamError(
                f"params.name: {name!r} is not a Hugging Face repo id ('org/model'); "
                "use params.url for paths and URLs"
            )
        convert = (params.text("convert") or "").strip().lower() or None
        if convert is not None and convert not in CONVERSIONS:
            raise ParamError(
                f"params.convert: {convert!r} is not one of {', '.join(CONVERSIONS)} "
                "(leave it unset to keep what the source has)"
            )
        workers = params.integer("workers", 8)
        if workers < 1:
            raise ParamError(f"params.workers: {workers} must be at least 1")
        return cls(
            name=name,
            revision=(params.text("revision") or "").strip() or "main",
            url=url,
            files=params.items("files"),
            convert=convert,
            workers=workers,
        )


# --- choosing files ----------------------------------------------------------------------------


def _pattern(p: str) -> str:
    return p + "*" if p.endswith("/") else p


def matches(path: str, patterns: list[str]) -> bool:
    """huggingface_hub's ``allow_patterns`` rule: ``fnmatchcase`` on the whole path."""
    return any(fnmatch.fnmatchcase(path, _pattern(p)) for p in patterns)


def select(files: list[SourceFile], req: Request) -> list[SourceFile]:
    """The files to fetch: ``files`` patterns, the safetensors preference, ``convert``."""
    listing = ", ".join(f.path for f in files[:12]) + (" ..." if len(files) > 12 else "")
    chosen = files
    if req.files:
        chosen = [f for f in files if matches(f.path, req.files)]
        if not chosen:
            raise ParamError(
                f"params.files: no file of {req.source} matches {' '.join(req.files)!r} "
                f"(it has: {listing or 'no files'})"
            )
    if req.convert is not None:
        ggufs = [f for f in chosen if f.path.lower().endswith(".gguf")]
        if not ggufs:
            raise ParamError(
                f"params.convert: {req.convert!r} needs a GGUF source, and {req.source} has no "
                f".gguf file{' matching params.files' if req.files else ''} "
                f"(it has: {listing or 'no files'})"
            )
        if req.convert == "safetensors" and len(ggufs) > 1:
            raise ParamError(
                f"params.files: {req.source} has {len(ggufs)} GGUF files "
                f"({', '.join(f.path for f in ggufs)}): choose the one to convert with "
                "params.files"
            )
        return ggufs
    if not req.files and any(f.path.endswith(".safetensors") for f in chosen):
        chosen = [f for f in chosen if not matches(f.path, list(OTHER_WEIGHTS))]
    return chosen


def _skipped(rel: str) -> bool:
    return any(rel == d or rel.startswith(d + "/") for d in SKIPPED_DIRS)


# --- progress ----------------------------------------------------------------------------------


def _bytes_under(root: Path) -> int:
    total = 0
    for dirpath, _, names in os.walk(root):
        for n in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, n)).st_size
    return total


@contextlib.contextmanager
def watch(what: str, root: Path, total: int, every: float = 2.0) -> Iterator[Progress]:
    """Report the bytes appearing under ``root`` (partial files included) as progress lines.

    Bytes already there (files finished by an interrupted run) are not counted.
    """
    baseline = min(_bytes_under(root), total)
    progress = Progress(what, total - baseline, every=every)
    stop = threading.Event()

    def poll() -> None:
        seen = 0
        while not stop.wait(min(every / 2, 0.5)):
            now = max(_bytes_under(root) - baseline, 0)
            if now > seen:
                progress.add(now - seen)
                seen = now

    thread = threading.Thread(target=poll, name="progress", daemon=True)
    thread.start()
    try:
        yield progress
    finally:
        stop.set()
        thread.join()


@dataclass
class Summary:
    files: int
    bytes: int
    seconds: float
    fetched: int | None = None
    """Bytes transferred, when some of the files were already there (a resumed run)."""

    def line(self, where: str) -> str:
        moved = self.bytes if self.fetched is None else self.fetched
        rate = moved / 1e6 / self.seconds if self.seconds > 0 else 0.0
        resumed = (
            f" ({moved / 1e6:.1f} MB fetched, the rest was already there)"
            if self.fetched is not None and self.fetched < self.bytes
            else ""
        )
        return (
            f"model-loader: {self.files} files, {self.bytes / 1e6:.1f} MB{resumed} in "
            f"{self.seconds:.2f} s ({rate:.1f} MB/s) -> {where}"
        )


# --- the hub -----------------------------------------------------------------------------------


def _hub_endpoint() -> str:
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


def _token() -> str | None:
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None


def _hub_error(e: Exception, req: Request) -> Exception:
    """A hub exception as a message naming the param at fault."""
    from huggingface_hub import errors

    # "Cannot find the requested files in the local cache" wraps the hub's real answer.
    while isinstance(e, errors.LocalEntryNotFoundError) and isinstance(e.__cause__, Exception):
        e = e.__cause__
    endpoint = _hub_endpoint()
    token = _token()
    if isinstance(e, errors.GatedRepoError):
        return ParamError(
            f"params.name: {req.name!r} on {endpoint} is gated: accept its terms on the hub with "
            "the account whose token is in HF_TOKEN" + ("" if token else " (HF_TOKEN is not set)")
        )
    if isinstance(e, errors.RevisionNotFoundError):
        return ParamError(
            f"params.revision: {req.revision!r} is not a branch, tag or commit of {req.name!r}"
        )
    if isinstance(e, errors.RepositoryNotFoundError):
        hint = (
            "or the token in HF_TOKEN cannot read it"
            if token
            else "or it is private or gated: set HF_TOKEN (through spec.env and a secret)"
        )
        return ParamError(
            f"params.name: repository {req.name!r} was not found on {endpoint}, {hint}"
        )
    if isinstance(e, errors.HfHubHTTPError):
        response = getattr(e, "response", None)
        status = getattr(response, "status_code", "?")
        url = str(getattr(response, "url", "")) or endpoint
        if status in (401, 403):
            return ParamError(
                f"params.name: {endpoint} refused access to {req.name!r} (HTTP {status} for "
                f"{url}): " + ("check the token in HF_TOKEN" if token else "set HF_TOKEN")
            )
        return LoaderError(f"the hub answered HTTP {status} for {url} ({req.name!r})")
    if isinstance(e, errors.LocalEntryNotFoundError | errors.OfflineModeIsEnabled):
        return LoaderError(f"cannot reach the hub at {endpoint} for {req.name!r}: {e}")
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return LoaderError(
        f"downloading {req.name!r} from {endpoint} failed: {type(e).__name__}: {text}"
    )


def hub_listing(req: Request) -> tuple[str, list[SourceFile]]:
    """The commit the revision points at, and the repo's files (path, size)."""
    assert req.name is not None
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    api = HfApi(token=_token())
    try:
        info = api.model_info(req.name, revision=req.revision)
        sha = str(info.sha or req.revision)
        files = [
            SourceFile(f.path, int(f.size or 0))
            for f in api.list_repo_tree(req.name, recursive=True, revision=sha)
            if isinstance(f, RepoFile)
        ]
    except Exception as e:
        raise _hub_error(e, req) from e
    return sha, files


def hub_download(req: Request, sha: str, files: list[SourceFile], dest: Path) -> None:
    """``snapshot_download`` of exactly ``files`` into ``dest``; no cache left behind."""
    assert req.name is not None
    from huggingface_hub import constants, snapshot_download

    # httpx assembles huggingface_hub's 10 MiB download chunks by copying through a growing
    # buffer, which halves plain-HTTP throughput (measured over loopback); 1 MiB chunks also
    # make a dropped connection resume closer to where it stopped. (Xet-stored files go through
    # hf_xet instead and are not affected.)
    constants.DOWNLOAD_CHUNK_SIZE = min(constants.DOWNLOAD_CHUNK_SIZE, CHUNK)
    # tqdm's \r bars do not belong in logs: `watch` reports progress instead.
    hf_utils: Any = importlib.import_module("huggingface_hub.utils")
    hf_utils.disable_progress_bars()
    dest.mkdir(parents=True, exist_ok=True)
    with scratch_dir("model-loader", "hf-cache") as cache:
        try:
            snapshot_download(
                req.name,
                revision=sha,
                local_dir=dest,
                cache_dir=cache,
                allow_patterns=[glob.escape(f.path) for f in files],
                max_workers=req.workers,
                token=_token(),
            )
        except Exception as e:
            raise _hub_error(e, req) from e
    # local_dir bookkeeping (resume metadata, locks): not part of the model.
    shutil.rmtree(dest / ".cache" / "huggingface", ignore_errors=True)
    with contextlib.suppress(OSError):
        (dest / ".cache").rmdir()


# --- URLs (local paths, file://, buckets) ------------------------------------------------------


@dataclass
class UrlSource:
    fs: Any
    root: str
    """The fsspec path of the directory (or of the single file)."""
    single: bool
    local: bool
    http: bool = False  # one file over HTTP(S) (http_file.py); fs is None

    def full(self, rel: str) -> str:
        return self.root if self.single else f"{self.root.rstrip('/')}/{rel}"


def url_listing(req: Request) -> tuple[UrlSource, list[SourceFile]]:
    assert req.url is not None
    if http_file.is_http(req.url):
        name = http_file.file_name(req.url)
        try:
            size = http_file.probe(req.url)
        except http_file.HttpFileError as e:
            raise LoaderError(str(e)) from None
        src = UrlSource(None, req.url, single=True, local=False, http=True)
        return src, [SourceFile(name, size or 0)]
    from substratus.storage.backends import MissingDependency, backend_for, parse_url

    try:
        loc = parse_url(req.url)
    except ValueError as e:
        raise ParamError(f"params.url: {e}") from None
    try:
        fs = backend_for(loc).filesystem()
    except (MissingDependency, ValueError) as e:
        raise ParamError(f"params.url: {req.url}: {e}") from None
    try:
        if fs.isdir(loc.path):
            prefix = loc.path.rstrip("/") + "/"
            found = fs.find(loc.path, detail=True)
            files = []
            for full, info in sorted(found.items()):
                rel = full[len(prefix) :] if full.startswith(prefix) else os.path.basename(full)
                if info.get("type", "file") == "file" and not _skipped(rel):
                    files.append(SourceFile(rel, int(info.get("size") or 0)))
            if not files:
                raise ParamError(f"params.url: {req.url} is an empty directory")
            return UrlSource(fs, loc.path, single=False, local=loc.is_local), files
        if fs.isfile(loc.path):
            size = int(fs.size(loc.path) or 0)
            name = loc.path.rstrip("/").rsplit("/", 1)[-1]
            return UrlSource(fs, loc.path, single=True, local=loc.is_local), [
                SourceFile(name, size)
            ]
    except ParamError:
        raise
    except Exception as e:
        raise LoaderError(f"params.url: cannot read {req.url}: {type(e).__name__}: {e}") from e
    raise ParamError(f"params.url: {req.url} does not exist")


def _copy_one(src: UrlSource, f: SourceFile, dest: Path) -> bool:
    """Copy one file (to ``NAME.part``, then renamed); False if already there."""
    target = dest / f.path
    if target.is_file() and target.stat().st_size == f.size:
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    if src.http:
        try:
            http_file.download(src.root, target, f.size or None)
        except http_file.HttpFileError as e:
            raise LoaderError(str(e)) from None
        return True
    part = target.with_name(target.name + ".part")
    try:
        if src.local:
            shutil.copyfile(src.full(f.path), part)
        else:
            src.fs.get_file(src.full(f.path), str(part))
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)
    return True


def url_download(req: Request, src: UrlSource, files: list[SourceFile], dest: Path) -> None:
    """Copy ``files`` into ``dest`` in parallel (those already there are kept)."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with ThreadPoolExecutor(max_workers=min(req.workers, max(len(files), 1))) as pool:
            list(pool.map(lambda f: _copy_one(src, f, dest), files))
    except OSError as e:
        raise LoaderError(f"params.url: copying from {req.url} failed: {e}") from e


# --- the run -----------------------------------------------------------------------------------


def fetch(
    req: Request,
    files: list[SourceFile],
    dest: Path,
    download: Callable[[Path], None],
) -> Summary:
    total = sum(f.size for f in files)
    started = time.monotonic()
    with watch(f"downloading {req.source}", dest, total) as progress:
        download(dest)
    assert progress.total is not None
    progress.done = progress.total
    progress.finish()
    return Summary(len(files), total, time.monotonic() - started, progress.total)


def run(req: Request, out: Path) -> Summary:
    """Import the model described by ``req`` into ``out``."""
    started = time.monotonic()
    if req.name is not None:
        sha, listing = hub_listing(req)
        print(f"model-loader: {req.name} revision {req.revision} is commit {sha}", file=sys.stderr)
        files = select(listing, req)

        def download(dest: Path) -> None:
            hub_download(req, sha, files, dest)

    else:
        src, listing = url_listing(req)
        files = select(listing, req)

        def download(dest: Path) -> None:
            url_download(req, src, files, dest)

        if req.convert == "safetensors" and src.local:
            # A local GGUF is read where it lies: no copy needed.
            from substratus.workloads.gguf_convert import convert_gguf

            convert_gguf(Path(src.full(files[0].path)), out)
            return _summary_of(out, started)

    if req.convert == "safetensors":
        from substratus.workloads.gguf_convert import convert_gguf

        with scratch_dir("model-loader", "gguf") as staging:
            fetch(req, files, staging, download)
            convert_gguf(staging / files[0].path, out)
        return _summary_of(out, started)
    return fetch(req, files, out, download)


def _summary_of(out: Path, started: float) -> Summary:
    written = [p for p in out.rglob("*") if p.is_file()]
    return Summary(len(written), sum(p.stat().st_size for p in written), time.monotonic() - started)


def main() -> int:
    try:
        req = Request.from_params(Params.load())
        out = artifacts_dir()
        summary = run(req, out)
    except ParamError as e:
        return fail(str(e))
    except (LoaderError, ConversionError) as e:
        return fail(str(e), code=1)
    except KeyboardInterrupt:
        return fail("interrupted", code=130)
    print(summary.line("artifacts/"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
