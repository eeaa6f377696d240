"""A real Kubernetes node for the tests: containerd, runc, a CNI bridge, a kubelet and kube-proxy.

:class:`RealNode` joins a :class:`~tests.kube.cluster.ControlPlane` and runs real containers from
images made locally (``hack/node.sh``: the pause and toolbox images; ``hack/images.sh``: ours).
Everything lives under a private state directory (``$TMPDIR/substratus-node-<pid>-*``): the
kubelet's root and certificates, containerd's root, state and sockets, the CNI configuration
and address leases, logs. One node per machine at a time (a lock file), since the kubelet and
kube-proxy also change the host (see :mod:`tests.kube.hoststate`).

Teardown is one code path, :func:`teardown`, run by a small reaper process that outlives the test
process: :meth:`RealNode.stop` closes a pipe and waits for it; when the test process is killed the
pipe closes all the same (and the kernel has already killed containerd, the kubelet and
kube-proxy, started with ``PR_SET_PDEATHSIG``), so the reaper cleans up then. It cordons the node
and deletes its pods while the API server answers (the kubelet then stops each sandbox, which runs
CNI DEL), stops kube-proxy (and removes its rules), the kubelet and containerd by PID, kills any
container process or shim left, unmounts what is under the state directory, removes the pods'
network namespaces, the bridge, the node's iptables chains and empty nf_tables tables, restores
the kernel settings the kubelet changed, removes the pod cgroups and the fixed host paths that did
not exist before, then checks (:func:`tests.kube.hoststate.leftovers`) and reports what remains.
A state directory left by a run whose reaper could not finish is cleaned by the next start.

Needs Linux, root and cgroups; :func:`machine_problem` says why a machine cannot run it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tests.kube import hoststate
from tests.kube.cluster import (
    REPO,
    ControlPlane,
    ControlPlaneUnavailable,
    Proc,
    _die_with_parent,
    find_binaries,
    free_port,
    pinned_versions,
)

NODE_NAME = "substratus-node"
NETWORK = "substratus-node"  # the CNI network's name: its iptables rules carry it
BRIDGE = "substratus0"
POD_CIDR = "10.245.0.0/24"  # apart from kwok's 10.244.0.0/16 and podman's 10.88.0.0/16
TOOLBOX_IMAGE = "substratus.local/toolbox:latest"
_STATE_PREFIX = "substratus-node-"
_LOCK = Path(tempfile.gettempdir()) / "substratus-node.lock"
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
    if _lock_free() and (others := _running("kubelet")):
        return f"a kubelet not started by these tests runs here (pid {others[0]})"
    return None


def _running(comm: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if d.name.isdigit() and (d / "comm").read_text().strip() == comm:
                pids.append(int(d.name))
    return pids


def _lock_free() -> bool:
    """No node of these tests holds the machine (so any kubelet running is someone else's)."""
    try:
        with open(_LOCK, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


def host_ip() -> str | None:
    """The address of the interface with the default route (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
        except OSError:
            return None
        ip = str(s.getsockname()[0])
    return None if ip.startswith("127.") else ip


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
        self._lock = _take_lock(timeout=120)
        t0 = time.monotonic()
        try:
            clean_stale_states()
            self.state = Path(tempfile.mkdtemp(prefix=f"{_STATE_PREFIX}{os.getpid()}-"))
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
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0
        return self

    def stop(self) -> list[str]:
        """Tear down (see the module's docstring); return what was left on the host, if any."""
        reaper, self._reaper = self._reaper, None
        report: list[str] = []
        if reaper is not None:
            assert reaper.stdin is not None
            reaper.stdin.close()  # EOF: the reaper tears down now
            try:
                reaper.wait(timeout=180)
            except subprocess.TimeoutExpired:
                reaper.kill()
                report.append("the reaper did not finish in 180 s")
            report += _read_report(self.state)
        elif self.state.name and self.state.exists():
            report += teardown(self.state)
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
        """Import an OCI or docker archive into the node's containerd; return the image names."""
        before = set(self.images())
        self.ctr("images", "import", str(archive))
        return sorted(set(self.images()) - before) or self.images_in(archive)

    def images(self) -> list[str]:
        return self.ctr("images", "list", "-q").stdout.split()

    @staticmethod
    def images_in(archive: Path) -> list[str]:
        import tarfile

        with tarfile.open(archive) as tar:
            member = tar.extractfile("index.json")
            index = json.load(member) if member else {}
        return [
            m.get("annotations", {}).get("io.containerd.image.name", "")
            for m in index.get("manifests", [])
        ]

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
        log = open(self.state.parent / f"{self.state.name}.reaper.log", "ab")  # noqa: SIM115
        with log:
            self._reaper = subprocess.Popen(
                [sys.executable, "-m", "tests.kube.node", "reap", str(self.state)],
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
        log_path = self.state / "logs" / f"{name}.log"
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                argv,
                cwd=self.state,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
                env=env,
            )
        (self.state / "pids" / f"{name}.pid").write_text(str(popen.pid))
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def _wait(self, what: str, ready: Any, timeout: float, proc: Proc) -> None:
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

    def _start_containerd(self) -> None:
        assert self.parts is not None
        d = self.state / "containerd"
        d.mkdir(exist_ok=True)
        (self.state / "cni" / "net.d" / "10-substratus-node.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "1.0.0",
                    "name": NETWORK,
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": BRIDGE,
                            "isGateway": True,
                            "ipMasq": True,
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "dataDir": str(self.state / "cni" / "ipam"),
                                "ranges": [[{"subnet": POD_CIDR}]],
                                "routes": [{"dst": "0.0.0.0/0"}],
                            },
                        },
                        {"type": "portmap", "capabilities": {"portMappings": True}},
                    ],
                }
            )
        )
        hosts = self.state / "containerd" / "certs.d"
        if self.registry:
            host_dir = hosts / self.registry
            host_dir.mkdir(parents=True)
            (host_dir / "hosts.toml").write_text(
                f'server = "http://{self.registry}"\n\n'
                f'[host."http://{self.registry}"]\n'
                '  capabilities = ["pull", "resolve", "push"]\n'
            )
        pause = RealNode.images_in(self.parts.images[0])[0]
        (d / "config.toml").write_text(
            containerd_config(self.state, pause, self.parts.runc, self.parts.cni_bin, hosts)
        )
        env = dict(os.environ, PATH=f"{self.parts.containerd_bin}:{os.environ.get('PATH', '')}")
        proc = self._spawn(
            "containerd",
            [str(self.parts.containerd_bin / "containerd"), "--config", str(d / "config.toml")],
            env=env,
        )
        self._wait("containerd", lambda: self.ctr("version", timeout=5) and True, 30, proc)

    def _start_kubelet(self, timeout: float) -> None:
        assert self.parts is not None and self.plane.pki is not None
        port, healthz = free_port(), free_port()
        config = self.state / "kubelet" / "config.yaml"
        config.write_text(
            kubelet_config(self.state, self._socket, self.ip, port, healthz, self.plane.pki.ca_crt)
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
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\n"
            "kind: KubeProxyConfiguration\n"
            f'clientConnection: {{kubeconfig: "{self.plane.kubeconfig}"}}\n'
            f"hostnameOverride: {self.name}\n"
            "mode: iptables\n"
            f"clusterCIDR: {POD_CIDR}\n"
            "bindAddress: 127.0.0.1\n"
            f"healthzBindAddress: 127.0.0.1:{healthz}\n"
            f"metricsBindAddress: 127.0.0.1:{metrics}\n"
            # Zeros leave the host's conntrack settings alone; no route_localnet either.
            "conntrack: {maxPerCore: 0, min: 0,"
            " tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}\n"
            "iptables: {localhostNodePorts: false}\n"
        )
        proc = self._spawn(
            "kube-proxy", [str(self.parts.kube_proxy), f"--config={config}", "--v=1"]
        )

        def healthy() -> bool:
            url = f"http://127.0.0.1:{healthz}/healthz"
            with urllib.request.urlopen(url, timeout=2) as r:
                return bool(r.status == 200)

        self._wait("kube-proxy", healthy, timeout, proc)


def containerd_config(state: Path, pause: str, runc: Path, cni_bin: Path, hosts: Path) -> str:
    """containerd 1.6's configuration (version 2): every directory and socket private."""
    d = state / "containerd"
    return f"""version = 2
root = "{d / "root"}"
state = "{d / "state"}"
oom_score = 0
[grpc]
  address = "{d / "containerd.sock"}"
[ttrpc]
  address = "{d / "containerd.sock.ttrpc"}"
[debug]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{d / "opt"}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  # No CAP_SYS_RESOURCE in these VMs: runc cannot lower oom_score_adj (the sandbox asks for -998).
  restrict_oom_score_adj = true
  enable_cdi = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{state / "cni" / "net.d"}"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{hosts}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "{runc}"
"""


def kubelet_config(
    state: Path, socket_path: Path, ip: str, port: int, healthz: int, ca: Path
) -> str:
    return f"""apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroup v1 here: 1.35+ refuses it unless told (it then only warns).
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix://{socket_path}
address: {ip}
port: {port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz}
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: "{ca}"}}
authorization: {{mode: Webhook}}
podLogsDir: {state / "pod-logs"}
volumePluginDir: {state / "kubelet" / "volume-plugins"}
resolvConf: /etc/resolv.conf
clusterDomain: cluster.local
registerNode: true
makeIPTablesUtilChains: false
# Never garbage-collect images: they are imported, not pulled, and cannot come back.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {{memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}}
shutdownGracePeriod: 0s
"""


# ---------------------------------------------------------------------------------------------
# Teardown


def _take_lock(timeout: float) -> IO[str]:
    """One node per machine; a second start waits for the first one's teardown."""
    f = open(_LOCK, "a")  # noqa: SIM115
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return f
        except BlockingIOError:
            if time.monotonic() > deadline:
                f.close()
                raise NodeUnavailable(
                    f"another real node runs on this machine (lock {_LOCK}); stop it first"
                ) from None
            time.sleep(0.5)


def _owner(state: Path) -> int:
    try:
        return int(state.name.removeprefix(_STATE_PREFIX).split("-", 1)[0])
    except ValueError:
        return 0


def clean_stale_states() -> None:
    """Tear down state directories whose test process is gone (call with the lock held)."""
    for state in Path(tempfile.gettempdir()).glob(f"{_STATE_PREFIX}*"):
        if _pid_alive(_owner(state)):
            continue
        if state.is_dir():
            teardown(state)
        elif state.suffix in (".json", ".log"):  # a reaper's report nobody read
            state.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _report_path(state: Path) -> Path:
    return state.parent / f"{state.name}.report.json"


def _read_report(state: Path) -> list[str]:
    path = _report_path(state)
    try:
        report = list(json.loads(path.read_text()))
    except (OSError, ValueError):
        return [f"no teardown report ({path})"]
    path.unlink(missing_ok=True)
    log = state.parent / f"{state.name}.reaper.log"
    if not report:
        log.unlink(missing_ok=True)
    return report


class _Api:
    """Just enough of the API for teardown, with the admin certificate kept in the state."""

    def __init__(self, state: Path, url: str) -> None:
        self.url = url
        pki = state / "pki"
        self.ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self.ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))

    def __call__(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        ctype = "application/merge-patch+json" if method == "PATCH" else "application/json"
        req.add_header("Content-Type", ctype)
        with urllib.request.urlopen(req, context=self.ctx, timeout=5) as r:
            return json.loads(r.read() or b"null")


def _stop_pid(state: Path, name: str, grace: float) -> None:
    """Stop a process of this node by its PID file, if it is still that process."""
    try:
        pid = int((state / "pids" / f"{name}.pid").read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return
    if str(state).encode() in cmdline:  # not a reused PID
        hoststate.kill_all([pid], grace=grace)


def teardown(state: Path) -> list[str]:
    """Stop everything the node in ``state`` started and undo its changes to the host; return
    what is left (empty when the host is as it was). Idempotent; call with the node lock."""
    try:
        info = json.loads((state / "node.json").read_text())
        before = hoststate.Baseline.load(state / "baseline.json")
    except (OSError, ValueError):
        shutil.rmtree(state, ignore_errors=True)
        return []
    ctr = [info["ctr"], "--address", str(state / "containerd" / "containerd.sock"), "-n", "k8s.io"]

    def tasks() -> list[str]:
        r = subprocess.run(
            [*ctr, "tasks", "list", "-q"], capture_output=True, text=True, timeout=10
        )
        return r.stdout.split() if r.returncode == 0 else []

    # 1. While the API server and the kubelet answer: no new pods, and every pod stopped by the
    #    kubelet itself (StopPodSandbox runs CNI DEL: addresses, rules, namespaces go).
    with contextlib.suppress(urllib.error.URLError, OSError, ValueError):
        api = _Api(state, info["api"])
        node = info["node"]
        api("PATCH", f"/api/v1/nodes/{node}", {"spec": {"unschedulable": True}})
        selector = urllib.parse.quote(f"spec.nodeName={node}")
        for pod in api("GET", f"/api/v1/pods?fieldSelector={selector}")["items"]:
            meta = pod["metadata"]
            with contextlib.suppress(urllib.error.HTTPError):
                api(
                    "DELETE",
                    f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}?gracePeriodSeconds=0",
                )
        deadline = time.monotonic() + 30
        while tasks() and time.monotonic() < deadline:
            time.sleep(0.5)
        with contextlib.suppress(urllib.error.HTTPError):
            api("DELETE", f"/api/v1/nodes/{node}")
    # 2. kube-proxy, then its rules; the kubelet; what containers remain; containerd.
    _stop_pid(state, "kube-proxy", grace=5)
    kp_config = state / "kube-proxy.yaml"
    if kp_config.exists():
        subprocess.run(
            [info["kube_proxy"], f"--config={kp_config}", "--cleanup"],
            capture_output=True,
            timeout=60,
        )
    _stop_pid(state, "kubelet", grace=10)
    for task in tasks():
        subprocess.run(
            [*ctr, "tasks", "kill", "-s", "SIGKILL", task], capture_output=True, timeout=10
        )
    _stop_pid(state, "containerd", grace=10)
    # 3. Anything still running: container processes (in the pod cgroups), shims (their command
    #    lines name this state directory), a kubelet whose PID file was not written.
    executables = set(info["executables"])
    for _ in range(3):
        left = sorted(
            set(hoststate.cgroup_pids(before))
            | set(hoststate.pids_referring_to(state, executables))
        )
        if not left:
            break
        hoststate.kill_all(left)
    # 4. The host.
    hoststate.unmount_under(state)
    hoststate.remove_netns(before)
    hoststate.remove_link(info["bridge"])
    hoststate.remove_iptables(before, info["network"])
    hoststate.remove_nft_tables(before)
    hoststate.remove_cni_cache(before, info["network"])
    hoststate.restore_sysctls(before)
    hoststate.remove_cgroups(before)
    hoststate.remove_host_paths(before)
    shutil.rmtree(state, ignore_errors=True)
    return hoststate.leftovers(before, state, info["network"], info["bridge"], executables)


def _reap(state: Path) -> None:
    """The reaper: wait for EOF on stdin (the test process stopped or died), then tear down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while sys.stdin.buffer.read(65536):
        pass
    report = teardown(state)  # the node lock, inherited, is released when this process exits
    tmp = _report_path(state).with_suffix(".part")
    tmp.write_text(json.dumps(report))
    tmp.replace(_report_path(state))
    for line in report:
        print(f"left behind: {line}", flush=True)


def _main(argv: Sequence[str]) -> None:
    if len(argv) == 2 and argv[0] == "reap":
        _reap(Path(argv[1]))
        return
    if argv and argv[0] == "clean":  # by hand: tear down what a dead run left
        with contextlib.closing(_take_lock(timeout=600)):
            clean_stale_states()
        return
    print("usage: python -m tests.kube.node reap STATE_DIR | clean", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    _main(sys.argv[1:])
