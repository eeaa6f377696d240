"""A local image registry for the tests: the CNCF distribution registry on loopback, plain HTTP.

Built by ``hack/control-plane.sh`` from ``github.com/distribution/distribution/v3``. The real
node (:mod:`tests.kube.node`, told its address) pulls from it and the host pushes to it; pods
cannot reach loopback, so in-cluster builds will need it on the node's address.
Storage is a temporary directory; the process dies with the test process (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import shutil
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.kube.cluster import Proc, find_binaries, free_port, spawn


class LocalRegistry:
    """After :meth:`start`: ``address`` (``127.0.0.1:PORT``, for image names) and ``url``."""

    def __init__(self) -> None:
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
        self.address = f"127.0.0.1:{port}"
        config = self.tmp / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log: {level: warn, accesslog: {disabled: true}}\n"
            "storage:\n"
            f"  filesystem: {{rootdirectory: {self.tmp / 'data'}}}\n"
            "  delete: {enabled: true}\n"
            "http:\n"
            f"  addr: {self.address}\n"
            f"  debug: {{addr: 127.0.0.1:{debug}}}\n"
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
