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
from pathlib import Path

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
