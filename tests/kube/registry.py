"""A local image registry for the tests: the CNCF distribution registry on loopback, plain HTTP.

Built by ``hack/control-plane.sh`` from ``github.com/distribution/distribution/v3``. The real
node (:mod:`tests.kube.node`, told its address) pulls from it and the host pushes to it; pods
cannot reach loopback, so in-cluster builds will need it on the node's address.
Storage is a temporary directory; the process dies with the test process (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.kube.cluster import Proc, find_binaries, free_port, spawn


class LocalRegistry:
    """After :meth:`start`: ``address`` (``HOST:PORT``, for image names) and ``url``. ``host``:
    where it listens (loopback by default; the node's address for pods, which cannot reach
    the host's loopback)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.address = ""
        self.tmp: Path | None = None
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def start(self, timeout: float = 30) -> LocalRegistry:
        binary = find_binaries(("registry",))["registry"]
        self.tmp = Path(tempfile.mkdtemp(prefix="substratus-registry-"))
        port, debug = free_port(), free_port()
        self.address = f"{self.host}:{port}"
        config = self.tmp / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log: {level: warn, accesslog: {disabled: true}}\n"
            "storage:\n"
            f"  filesystem: {{rootdirectory: {self.tmp / 'data'}}}\n"
            "  delete: {enabled: true}\n"
            "http:\n"
            f"  addr: {self.address}\n"
            f"  debug: {{addr: {self.host}:{debug}}}\n"
        )
        self.proc = spawn(
            "registry", [str(binary), "serve", str(config)], self.tmp / "registry.log"
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.url + "/v2/", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            if not self.proc.alive() or time.monotonic() > deadline:
                tail = self.proc.tail()
                self.stop()
                raise RuntimeError(f"the registry did not start:\n{tail}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc = None
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def push(
        self,
        repository: str,
        tag: str,
        files: dict[str, bytes],
        cmd: list[str],
        links: dict[str, str] | None = None,
    ) -> str:
        """Push a one-layer image (``files`` at its root, executable; ``links`` name ->
        target; ``cmd`` its CMD) through the registry's HTTP API, as a client would; returns
        its manifest digest."""
        layer_buf = io.BytesIO()
        with tarfile.open(fileobj=layer_buf, mode="w:gz") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o755
                tar.addfile(info, io.BytesIO(data))
            for name, target in (links or {}).items():
                info = tarfile.TarInfo(name)
                info.type, info.linkname = tarfile.SYMTYPE, target
                tar.addfile(info)
            tmp = tarfile.TarInfo("tmp")
            tmp.type, tmp.mode = tarfile.DIRTYPE, 0o1777
            tar.addfile(tmp)
        layer = layer_buf.getvalue()
        diff_id = "sha256:" + hashlib.sha256(gzip.decompress(layer)).hexdigest()
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {"Cmd": cmd},
                "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            }
        ).encode()
        base = f"{self.url}/v2/{repository}"
        with httpx.Client(timeout=30) as http:
            for blob in (layer, config):
                start = http.post(f"{base}/blobs/uploads/")
                start.raise_for_status()
                location = start.headers["Location"]
                if location.startswith("/"):
                    location = self.url + location
                sep = "&" if "?" in location else "?"
                digest = "sha256:" + hashlib.sha256(blob).hexdigest()
                http.put(f"{location}{sep}digest={digest}", content=blob).raise_for_status()
            manifest = json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {
                        "mediaType": "application/vnd.oci.image.config.v1+json",
                        "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
                        "size": len(config),
                    },
                    "layers": [
                        {
                            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                            "digest": "sha256:" + hashlib.sha256(layer).hexdigest(),
                            "size": len(layer),
                        }
                    ],
                }
            ).encode()
            headers = {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
            r = http.put(f"{base}/manifests/{tag}", content=manifest, headers=headers)
            r.raise_for_status()
            return str(r.headers["Docker-Content-Digest"])

    def tags(self, repository: str) -> list[str]:
        with httpx.Client(timeout=10) as http:
            r = http.get(f"{self.url}/v2/{repository}/tags/list")
            if r.status_code == 404:
                return []
            r.raise_for_status()
            return sorted(r.json().get("tags") or [])

    def push_archive(self, archive: Path) -> list[str]:
        """Push every image of an image archive (hack/images.sh's docker archives,
        hack/ociarchive.py's OCI layouts) under its own names without their registry
        (``docker.io/substratusai/base:latest`` as ``substratusai/base:latest``, for a mirror of
        docker.io; ``substratus.local/toolbox:latest`` as ``toolbox:latest``). Layers stream
        from the archive; returns the repository:tag names pushed."""
        pushed = []
        with tarfile.open(archive) as tar, httpx.Client(timeout=300) as http:
            names = set(tar.getnames())
            if "index.json" in names:
                index = json.load(_member(tar, "index.json"))
                for entry in index.get("manifests") or []:
                    name = (entry.get("annotations") or {}).get("io.containerd.image.name", "")
                    manifest_bytes = _member(tar, _blob(entry["digest"])).read()
                    manifest = json.loads(manifest_bytes)
                    repo, tag = _repository(name)
                    for blob in [manifest["config"], *manifest["layers"]]:
                        self._upload_blob(http, tar, repo, _blob(blob["digest"]), blob["digest"])
                    self._put_manifest(http, repo, tag, manifest_bytes, entry["mediaType"])
                    pushed.append(f"{repo}:{tag}")
                return pushed
            for image in json.load(_member(tar, "manifest.json")):
                layers = []
                for path in image["Layers"]:
                    digest = self._upload_blob(http, tar, "", path, None)
                    layers.append((digest, tar.getmember(path).size))
                config = _member(tar, image["Config"]).read()
                manifest = json.dumps(
                    {
                        "schemaVersion": 2,
                        "mediaType": OCI_MANIFEST,
                        "config": {
                            "mediaType": "application/vnd.oci.image.config.v1+json",
                            "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
                            "size": len(config),
                        },
                        "layers": [
                            {
                                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                                "digest": d,
                                "size": n,
                            }
                            for d, n in layers
                        ],
                    }
                ).encode()
                for name in image.get("RepoTags") or []:
                    repo, tag = _repository(name)
                    self._mount(http, repo, [d for d, _ in layers])
                    self._put_blob(http, repo, config)
                    self._put_manifest(http, repo, tag, manifest, OCI_MANIFEST)
                    pushed.append(f"{repo}:{tag}")
        return pushed

    # A layer goes up once, to a staging repository, and is mounted into each repository.
    _STAGING = "substratus-staging"

    def _upload_blob(
        self, http: httpx.Client, tar: tarfile.TarFile, repo: str, path: str, digest: str | None
    ) -> str:
        if digest is None:
            sha = hashlib.sha256()
            for chunk in _chunks(_member(tar, path)):
                sha.update(chunk)
            digest = "sha256:" + sha.hexdigest()
        target = repo or self._STAGING
        if http.head(f"{self.url}/v2/{target}/blobs/{digest}").status_code == 200:
            return digest
        start = http.post(f"{self.url}/v2/{target}/blobs/uploads/")
        start.raise_for_status()
        location = start.headers["Location"]
        location = self.url + location if location.startswith("/") else location
        sep = "&" if "?" in location else "?"
        size = tar.getmember(path).size
        http.put(
            f"{location}{sep}digest={digest}",
            content=_chunks(_member(tar, path)),
            headers={"Content-Length": str(size)},
        ).raise_for_status()
        return digest

    def _mount(self, http: httpx.Client, repo: str, digests: list[str]) -> None:
        for digest in digests:
            r = http.post(
                f"{self.url}/v2/{repo}/blobs/uploads/",
                params={"mount": digest, "from": self._STAGING},
            )
            if r.status_code != 201:
                raise RuntimeError(f"cannot mount {digest} into {repo}: {r.status_code}")

    def _put_blob(self, http: httpx.Client, repo: str, data: bytes) -> None:
        start = http.post(f"{self.url}/v2/{repo}/blobs/uploads/")
        start.raise_for_status()
        location = start.headers["Location"]
        location = self.url + location if location.startswith("/") else location
        sep = "&" if "?" in location else "?"
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        http.put(f"{location}{sep}digest={digest}", content=data).raise_for_status()

    def _put_manifest(
        self, http: httpx.Client, repo: str, tag: str, manifest: bytes, media: str
    ) -> None:
        r = http.put(
            f"{self.url}/v2/{repo}/manifests/{tag}",
            content=manifest,
            headers={"Content-Type": media},
        )
        if r.status_code >= 300:
            raise RuntimeError(f"cannot push {repo}:{tag}: {r.status_code} {r.text[:300]}")


OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _member(tar: tarfile.TarFile, name: str) -> Any:
    f = tar.extractfile(name)
    if f is None:
        raise RuntimeError(f"{name}: not a file in the archive")
    return f


def _chunks(f: Any) -> Iterator[bytes]:
    while chunk := f.read(1 << 20):
        yield chunk


def _blob(digest: str) -> str:
    return "blobs/" + digest.replace(":", "/", 1)


def _repository(name: str) -> tuple[str, str]:
    """``host/path:tag`` -> (``path``, ``tag``): the name a mirror of that host serves."""
    name = name.removeprefix("docker.io/").removeprefix("substratus.local/")
    repo, _, tag = name.rpartition(":")
    if "/" in tag or not repo:
        repo, tag = name, "latest"
    return repo, tag
