"""A real Kubernetes node for the tests: containerd, runc, a CNI bridge, a kubelet and kube-proxy.

:class:`RealNode` joins a :class:`~tests.kube.cluster.ControlPlane` and runs real containers from
images made locally (``hack/node.sh``: the pause and toolbox images; ``hack/images.sh``: ours).
Everything lives under a private state directory (``$TMPDIR/substratus-node-<pid>-*``): the
kubelet's root and certificates, containerd's state and sockets, the CNI configuration
(:mod:`tests.kube.nodeconfig`) and address leases, logs; but containerd's root, the imported
images, is kept in the node cache between sessions (:mod:`tests.kube.imagestore`). One node
per machine at a time (a lock file), since the kubelet and kube-proxy also change the host
(see :mod:`tests.kube.hoststate`).

Teardown is one code path, :func:`tests.kube.reaper.teardown`, run by a small reaper process that
outlives the test process: :meth:`RealNode.stop` closes a pipe and waits for it; when the test
process is killed the pipe closes all the same (and the kernel has already killed containerd, the
kubelet and kube-proxy, started with ``PR_SET_PDEATHSIG``), so the reaper cleans up then.

Needs Linux, root and cgroups; :func:`machine_problem` says why a machine cannot run it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NoReturn

from tests.kube import hoststate, imagestore, nodeconfig, reaper
from tests.kube.cluster import (
    REPO,
    ControlPlane,
    ControlPlaneUnavailable,
    Proc,
    find_binaries,
    free_port,
    pinned_versions,
    spawn,
)
from tests.kube.nodeconfig import BRIDGE, NETWORK

__all__ = ["BRIDGE", "NETWORK", "NODE_NAME", "TOOLBOX_IMAGE", "RealNode", "machine_problem"]

NODE_NAME = "substratus-node"
TOOLBOX_IMAGE = "substratus.local/toolbox:latest"
NODE_SCRIPT = "hack/node.sh"


class NodeUnavailable(ControlPlaneUnavailable):
    """The real node cannot run here (not root, no cgroups, parts not prepared)."""


# ---------------------------------------------------------------------------------------------
# What it needs


def machine_problem() -> str | None:
    """Why this machine cannot run a real node at all (a reason to skip), or None."""
    if not sys.platform.startswith("linux"):
        return "a real node needs Linux"
    if os.geteuid() != 0:
        return "a real node needs root (containerd, runc, network namespaces, iptables)"
    if not (
        Path("/sys/fs/cgroup/memory").is_dir() or Path("/sys/fs/cgroup/cgroup.controllers").exists()
    ):
        return "a real node needs cgroups (no memory controller under /sys/fs/cgroup)"
    if host_ip() is None:
        return "a real node needs a non-loopback IPv4 address (the kubelet refuses loopback)"
    # A reaper may still be finishing a teardown: give it a minute.
    if not reaper.lock_free(wait=60):
        return (
            f"another real node holds this machine ({reaper.LOCK}): a dev cluster? "
            "(bash hack/dev-cluster.sh down)"
        )
    if others := _running("kubelet"):
        return f"a kubelet not started by these tests runs here (pid {others[0]})"
    return None


def unprepared(reason: str) -> NoReturn:
    """Parts not built: an error under CI (which prepares them), a skip elsewhere."""
    import pytest

    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def skip_unless_a_node_can_run() -> None:
    """For tests that start their own node: skip where the machine cannot run one (with the
    reason), fail under CI where its parts are missing."""
    import pytest

    if problem := machine_problem():
        pytest.skip(problem)
    try:
        find_node_parts()
    except NodeUnavailable as e:
        unprepared(str(e))


def _running(comm: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if d.name.isdigit() and (d / "comm").read_text().strip() == comm:
                pids.append(int(d.name))
    return pids


def host_ip() -> str | None:
    """The address of the interface with the default route (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
        except OSError:
            return None
        ip = str(s.getsockname()[0])
    return None if ip.startswith("127.") else ip


def _normalized(name: str) -> str:
    """A docker reference as containerd writes it (docker.io/library/ for bare names)."""
    first = name.split("/", 1)[0]
    if "/" in name and ("." in first or ":" in first or first == "localhost"):
        return name
    return f"docker.io/{name}" if "/" in name else f"docker.io/library/{name}"


def node_cache() -> Path:
    """Where ``hack/node.sh`` puts containerd and the node's images (same rule as the script)."""
    root = os.environ.get("SUBSTRATUS_NODE_CACHE")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = str(Path(xdg) / "substratus-test" / "node")
    return Path(root).expanduser()


@dataclass(frozen=True)
class NodeParts:
    kubelet: Path
    kube_proxy: Path
    containerd_bin: Path  # containerd, containerd-shim-runc-v2, ctr
    runc: Path
    cni_bin: Path
    images: tuple[Path, ...]  # pause and toolbox archives

    @property
    def executables(self) -> set[str]:
        names = ("containerd", "containerd-shim", "containerd-shim-runc-v2")
        return {str(self.kubelet), str(self.kube_proxy)} | {
            str(self.containerd_bin / n) for n in names
        }


def find_node_parts() -> NodeParts:
    bins = find_binaries(("kubelet", "kube-proxy"))
    cache = node_cache()
    ctrd = cache / "containerd" / "usr" / "bin"
    runc = shutil.which("runc") or "/usr/sbin/runc"
    cni = Path("/usr/lib/cni")
    pause = cache / "images" / f"pause-{pinned_versions()['PAUSE_VERSION']}.tar"
    toolbox = sorted((cache / "images").glob("toolbox-*.tar"))
    missing = [
        what
        for what, ok in (
            (f"containerd in {ctrd}", (ctrd / "containerd").is_file()),
            (f"runc ({runc})", Path(runc).is_file()),
            (f"CNI plugins in {cni}", (cni / "bridge").is_file()),
            (f"the pause image {pause}", pause.is_file()),
            (f"the toolbox image in {cache / 'images'}", bool(toolbox)),
            ("iptables", bool(shutil.which("iptables"))),
        )
        if not ok
    ]
    if missing:
        raise NodeUnavailable(
            f"the real node is not prepared: missing {', '.join(missing)}. "
            f"Run `sudo bash {NODE_SCRIPT}` once (after `bash hack/control-plane.sh`)."
        )
    return NodeParts(
        kubelet=bins["kubelet"],
        kube_proxy=bins["kube-proxy"],
        containerd_bin=ctrd,
        runc=Path(runc),
        cni_bin=cni,
        images=(pause, toolbox[-1]),
    )


# ---------------------------------------------------------------------------------------------
# The node


class RealNode:
    """A kubelet with containerd on this machine, registered as ``NODE_NAME`` with ``plane``.

    After :meth:`start`: ``name``, ``ip`` (the node's InternalIP), ``state`` (its directory),
    :meth:`ctr` (containerd's CLI on its socket), :meth:`load_image`. ``startup_s`` is the time
    from starting containerd to the node being Ready.
    """

    def __init__(self, plane: ControlPlane, registry: str | None = None) -> None:
        self.plane = plane
        self.registry = registry  # host:port of a plain-HTTP registry the node may pull from
        self.name = NODE_NAME
        self.ip = ""
        self.state = Path()
        self.store = node_cache() / "containerd-root"  # containerd's root: kept (imagestore)
        self.parts: NodeParts | None = None
        self.procs: list[Proc] = []
        self.startup_s = 0.0
        self._reaper: subprocess.Popen[bytes] | None = None
        self._lock: IO[str] | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, timeout: float = 120) -> RealNode:
        problem = machine_problem()
        if problem:
            raise NodeUnavailable(problem)
        assert self.plane.pki is not None and self.plane.url, "start the control plane first"
        self.parts = find_node_parts()
        self.ip = host_ip() or ""
        try:
            self._lock = reaper.take_lock(timeout=60)
        except TimeoutError as e:
            raise NodeUnavailable(f"{e}: a dev cluster? (bash hack/dev-cluster.sh down)") from None
        t0 = time.monotonic()
        try:
            reaper.clean_stale_states()
            self.state = Path(tempfile.mkdtemp(prefix=f"{reaper.STATE_PREFIX}{os.getpid()}-"))
            for d in ("logs", "pids", "pki", "cni/net.d", "cni/ipam", "kubelet", "pod-logs"):
                (self.state / d).mkdir(parents=True, exist_ok=True)
            hoststate.snapshot().save(self.state / "baseline.json")
            self._write_state()
            self._start_reaper()
            self._start_containerd()
            for archive in self.parts.images:
                self.load_image(archive)
            self._start_kubelet(timeout)
            self._start_kube_proxy(timeout)
        except BaseException as e:
            for line in self.stop():
                e.add_note(f"teardown after the failed start left: {line}")
            raise
        self.startup_s = time.monotonic() - t0
        return self

    def stop(self) -> list[str]:
        """Tear down (see the module's docstring); return what was left on the host, if any."""
        process, self._reaper = self._reaper, None
        report: list[str] = []
        if process is not None:
            assert process.stdin is not None
            process.stdin.close()  # EOF: the reaper tears down now
            try:
                process.wait(timeout=180)
            except subprocess.TimeoutExpired:
                process.kill()
                report.append("the reaper did not finish in 180 s")
            report += reaper.read_report(self.state)
        elif self.state.name and self.state.exists():
            report += reaper.teardown(self.state)
        self.procs = []
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        return report

    # -- using it --------------------------------------------------------------------------------

    def ctr(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        assert self.parts is not None
        argv = [
            str(self.parts.containerd_bin / "ctr"),
            "--address",
            str(self._socket),
            "-n",
            "k8s.io",
            *args,
        ]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
        return r

    def load_image(self, archive: Path) -> list[str]:
        """Import an OCI or docker archive into the node's containerd, unless an earlier
        session did (the store outlives sessions: :mod:`tests.kube.imagestore`); return the
        image names."""
        done = imagestore.already_imported(self.store, archive, self.ctr)
        if done is not None:
            return done
        before = imagestore.digests(self.ctr)
        self.ctr("images", "import", str(archive), timeout=900)
        after = imagestore.digests(self.ctr)
        names = sorted(n for n, d in after.items() if before.get(n) != d)
        names = names or self.images_in(archive)
        imagestore.record(self.store, archive, names, self.ctr)
        return names

    def images(self) -> list[str]:
        return self.ctr("images", "list", "-q").stdout.split()

    @staticmethod
    def images_in(archive: Path) -> list[str]:
        """The names in an OCI archive's index (hack/ociarchive.py's) or a docker archive's
        manifest (hack/images.sh's), as containerd names them."""
        with tarfile.open(archive) as tar:
            names = tar.getnames()
            if "index.json" in names:
                member = tar.extractfile("index.json")
                index = json.load(member) if member else {}
                return [
                    m.get("annotations", {}).get("io.containerd.image.name", "")
                    for m in index.get("manifests", [])
                ]
            member = tar.extractfile("manifest.json")
            manifest = json.load(member) if member else []
        return sorted(_normalized(tag) for m in manifest for tag in m.get("RepoTags") or [])

    def add_volumes(self, storage_class: str, count: int, size: str = "1Gi") -> None:
        """A StorageClass with ``count`` static hostPath volumes in the node's directory (no
        provisioner runs here): a claim of that class binds one, as on a cluster."""
        paths = []
        for i in range(count):
            path = self.state / "volumes" / f"{storage_class}-{i}"
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o777)  # hostPath volumes get no fsGroup ownership
            paths.append(str(path))
        self.plane.kubectl("apply", "-f", "-", input=static_volumes(storage_class, paths, size))

    def remove_volumes(self, storage_class: str, count: int) -> None:
        pvs = [f"pv/{storage_class}-{i}" for i in range(count)]
        self.plane.kubectl(
            "delete", f"storageclass/{storage_class}", *pvs, "--wait=false", check=False
        )

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} (pid {p.pid})\n{p.tail(40)}" for p in self.procs)

    # -- internals ------------------------------------------------------------------------------

    @property
    def _socket(self) -> Path:
        return self.state / "containerd" / "containerd.sock"

    def _write_state(self) -> None:
        pki = self.plane.pki
        assert pki is not None
        # The reaper talks to the API server after the control plane's directory may be gone.
        for src, name in (
            (pki.ca_crt, "ca.crt"),
            (pki.admin_crt, "admin.crt"),
            (pki.admin_key, "admin.key"),
        ):
            shutil.copy(src, self.state / "pki" / name)
        assert self.parts is not None
        (self.state / "node.json").write_text(
            json.dumps(
                {
                    "api": self.plane.url,
                    "node": self.name,
                    "network": NETWORK,
                    "bridge": BRIDGE,
                    "kube_proxy": str(self.parts.kube_proxy),
                    "ctr": str(self.parts.containerd_bin / "ctr"),
                    "executables": sorted(self.parts.executables),
                },
                indent=1,
            )
        )

    def _start_reaper(self) -> None:
        assert self._lock is not None
        with open(reaper.log_path(self.state), "ab") as log:
            self._reaper = subprocess.Popen(
                [sys.executable, "-m", "tests.kube.reaper", str(self.state)],
                cwd=REPO,
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # not killed with the test process's group (Ctrl-C)
                # The machine's node lock goes with it: held until its teardown is done, even
                # when this process dies first.
                pass_fds=(self._lock.fileno(),),
            )

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        proc = spawn(name, argv, self.state / "logs" / f"{name}.log", cwd=self.state, env=env)
        (self.state / "pids" / f"{name}.pid").write_text(str(proc.pid))
        self.procs.append(proc)
        return proc

    def _wait(self, what: str, ready: Callable[[], object], timeout: float, proc: Proc) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.tail()}")
            with contextlib.suppress(Exception):
                if ready():
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: not ready in {timeout:.0f}s\n{self.logs()}")
            time.sleep(0.2)

    def trust_registry(self, address: str) -> None:
        """Let the node pull from another plain-HTTP registry (containerd reads its hosts
        directory at each pull: no restart)."""
        hosts = self.state / "containerd" / "certs.d" / address
        hosts.mkdir(parents=True, exist_ok=True)
        (hosts / "hosts.toml").write_text(nodeconfig.registry_hosts(address))

    def _start_containerd(self) -> None:
        assert self.parts is not None
        d = self.state / "containerd"
        d.mkdir(exist_ok=True)
        conflist = self.state / "cni" / "net.d" / "10-substratus-node.conflist"
        conflist.write_text(nodeconfig.cni_conflist(self.state / "cni" / "ipam"))
        hosts = self.state / "containerd" / "certs.d"
        if self.registry:
            (hosts / self.registry).mkdir(parents=True)
            (hosts / self.registry / "hosts.toml").write_text(
                nodeconfig.registry_hosts(self.registry)
            )
        pause = RealNode.images_in(self.parts.images[0])[0]
        (d / "config.toml").write_text(
            nodeconfig.containerd_config(
                self.state, self.store, pause, self.parts.runc, self.parts.cni_bin, hosts
            )
        )
        env = dict(os.environ, PATH=f"{self.parts.containerd_bin}:{os.environ.get('PATH', '')}")
        proc = self._spawn(
            "containerd",
            [str(self.parts.containerd_bin / "containerd"), "--config", str(d / "config.toml")],
            env=env,
        )
        self._wait("containerd", lambda: self.ctr("version", timeout=5) and True, 30, proc)
        imagestore.forget_containers(self.ctr)

    def _start_kubelet(self, timeout: float) -> None:
        assert self.parts is not None and self.plane.pki is not None
        port, healthz = free_port(), free_port()
        config = self.state / "kubelet" / "config.yaml"
        config.write_text(
            nodeconfig.kubelet_config(
                self.state, self._socket, self.ip, port, healthz, self.plane.pki.ca_crt
            )
        )
        proc = self._spawn(
            "kubelet",
            [
                str(self.parts.kubelet),
                f"--config={config}",
                f"--kubeconfig={self.plane.kubeconfig}",
                f"--root-dir={self.state / 'kubelet'}",
                f"--cert-dir={self.state / 'kubelet' / 'pki'}",
                f"--hostname-override={self.name}",
                f"--node-ip={self.ip}",
                "--v=1",
            ],
        )
        self._wait("node Ready", lambda: self.plane._node_ready(self.name), timeout, proc)

    def _start_kube_proxy(self, timeout: float) -> None:
        assert self.parts is not None
        healthz, metrics = free_port(), free_port()
        config = self.state / "kube-proxy.yaml"
        config.write_text(
            nodeconfig.kube_proxy_config(self.plane.kubeconfig, self.name, healthz, metrics)
        )
        proc = self._spawn(
            "kube-proxy", [str(self.parts.kube_proxy), f"--config={config}", "--v=1"]
        )

        def healthy() -> bool:
            url = f"http://127.0.0.1:{healthz}/healthz"
            with urllib.request.urlopen(url, timeout=2) as r:
                return bool(r.status == 200)

        self._wait("kube-proxy", healthy, timeout, proc)


def static_volumes(storage_class: str, paths: list[str], size: str) -> str:
    """A StorageClass with no provisioner and one hostPath PersistentVolume per path, named
    ``<class>-<i>``, as a manifest for ``kubectl apply``."""
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": storage_class},
            "provisioner": "kubernetes.io/no-provisioner",
            "volumeBindingMode": "Immediate",
        }
    ]
    for i, path in enumerate(paths):
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": f"{storage_class}-{i}"},
                "spec": {
                    "storageClassName": storage_class,
                    "capacity": {"storage": size},
                    "accessModes": ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "hostPath": {"path": path, "type": "Directory"},
                },
            }
        )
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})
