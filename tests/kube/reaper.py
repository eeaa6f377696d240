"""The real node's teardown, and the reaper process that runs it (see :mod:`tests.kube.node`).

``python -m tests.kube.reaper STATE_DIR`` waits for EOF on its stdin (the test process closed
the pipe, or died), then runs :func:`teardown` and writes ``<STATE_DIR>.report.json``: what it
could not undo (empty when the host is as it was). It inherits the machine's node lock from the
test process and holds it until the teardown is done. ``python -m tests.kube.reaper clean``
tears down what a run left whose reaper could not finish.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from tests.kube import hoststate

STATE_PREFIX = "substratus-node-"
# Fixed, not under $TMPDIR: `sudo` resets TMPDIR, and a dev cluster and a test run must see
# the same lock.
LOCK = Path("/run/lock/substratus-node.lock")


def state_root() -> Path:
    return Path(tempfile.gettempdir())


def take_lock(timeout: float) -> IO[str]:
    """One node per machine. Waits ``timeout`` seconds for another's teardown, then raises
    ``TimeoutError``."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    f = open(LOCK, "a")  # noqa: SIM115
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return f
        except BlockingIOError:
            if time.monotonic() > deadline:
                f.close()
                raise TimeoutError(f"another real node holds {LOCK}") from None
            time.sleep(0.2)


def lock_free(wait: float = 0) -> bool:
    """Whether no node holds the machine, waiting up to ``wait`` seconds for a teardown."""
    try:
        take_lock(wait).close()
    except TimeoutError:
        return False
    except OSError:
        return True
    return True


def clean_stale_states() -> None:
    """Tear down every state directory left behind. Call with the lock held: then no node is
    running, since a node's reaper holds the lock until its teardown is done."""
    for path in state_root().glob(f"{STATE_PREFIX}*"):
        if path.is_dir():
            teardown(path)
        elif path.suffix in (".json", ".log"):  # a report or a reaper's log nobody read
            path.unlink(missing_ok=True)


def report_path(state: Path) -> Path:
    return state.parent / f"{state.name}.report.json"


def log_path(state: Path) -> Path:
    return state.parent / f"{state.name}.reaper.log"


def read_report(state: Path) -> list[str]:
    path = report_path(state)
    try:
        report = list(json.loads(path.read_text()))
    except (OSError, ValueError):
        return [f"no teardown report ({path}; see {log_path(state)})"]
    path.unlink(missing_ok=True)
    if not report:
        log_path(state).unlink(missing_ok=True)
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


def _drain(state: Path, info: dict[str, Any], tasks: Callable[[], list[str]]) -> None:
    """While the API server and the kubelet answer: no new pods, and every pod stopped by the
    kubelet itself (StopPodSandbox runs CNI DEL: addresses, rules, namespaces go)."""
    api = _Api(state, info["api"])
    node = info["node"]
    api("PATCH", f"/api/v1/nodes/{node}", {"spec": {"unschedulable": True}})
    selector = urllib.parse.quote(f"spec.nodeName={node}")
    for pod in api("GET", f"/api/v1/pods?fieldSelector={selector}")["items"]:
        meta = pod["metadata"]
        with contextlib.suppress(urllib.error.HTTPError):
            path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
            api("DELETE", f"{path}?gracePeriodSeconds=0")
    deadline = time.monotonic() + 30
    while tasks() and time.monotonic() < deadline:
        time.sleep(0.5)
    with contextlib.suppress(urllib.error.HTTPError):
        api("DELETE", f"/api/v1/nodes/{node}")


def teardown(state: Path) -> list[str]:
    """Stop everything the node in ``state`` started and undo its changes to the host; return
    what is left, and any step that failed (empty when the host is as it was). Every step runs
    even when one before it failed. Idempotent; call with the node lock."""
    try:
        info = json.loads((state / "node.json").read_text())
        before = hoststate.Baseline.load(state / "baseline.json")
    except (OSError, ValueError):
        shutil.rmtree(state, ignore_errors=True)
        return []
    sock = state / "containerd" / "containerd.sock"
    ctr = [info["ctr"], "--address", str(sock), "-n", "k8s.io"]
    executables = set(info["executables"])
    errors: list[str] = []

    def step(what: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception as e:
            errors.append(f"{what}: {type(e).__name__}: {e}")

    def tasks() -> list[str]:
        if not sock.exists():
            return []
        r = subprocess.run(
            [*ctr, "tasks", "list", "-q"], capture_output=True, text=True, timeout=10
        )
        return r.stdout.split() if r.returncode == 0 else []

    def kill_tasks() -> None:
        for task in tasks():
            subprocess.run(
                [*ctr, "tasks", "kill", "-s", "SIGKILL", task], capture_output=True, timeout=10
            )

    def kill_the_rest() -> None:
        # Container processes (in the node's pod cgroups) and shims (their command lines name
        # this state directory, their binary is ours).
        for _ in range(3):
            left = set(hoststate.cgroup_pids(before))
            left |= set(hoststate.pids_of(state, executables))
            if not left:
                return
            hoststate.kill_all(sorted(left))

    # Namespaces are known by the processes in them: read before anything is killed.
    netns: set[str] = set()
    step(
        "finding the pods' network namespaces",
        lambda: netns.update(hoststate.netns_of(hoststate.cgroup_pids(before))),
    )
    with contextlib.suppress(urllib.error.URLError, OSError, ValueError, KeyError):
        _drain(state, info, tasks)  # the API server may be gone (a killed test process)
    # kube-proxy's own --cleanup is not used: it removes every KUBE-* chain and IPVS service
    # on the host, and loads ip_vs. remove_iptables removes only the chains that are new.
    step("stopping kube-proxy", lambda: _stop_pid(state, "kube-proxy", grace=5))
    step("stopping the kubelet", lambda: _stop_pid(state, "kubelet", grace=10))
    step("killing containers", kill_tasks)
    step("stopping containerd", lambda: _stop_pid(state, "containerd", grace=10))
    step("killing leftover processes", kill_the_rest)
    step("unmounting", lambda: hoststate.unmount_under(state))
    step("removing network namespaces", lambda: hoststate.remove_netns(netns))
    step("removing the bridge", lambda: hoststate.remove_link(info["bridge"]))
    step("removing iptables rules", lambda: hoststate.remove_iptables(before, info["network"]))
    step("removing nft tables", lambda: hoststate.remove_nft_tables(before))
    step("removing the CNI cache", lambda: hoststate.remove_cni_cache(before, info["network"]))
    step("restoring sysctls", lambda: hoststate.restore_sysctls(before))
    step("removing cgroups", lambda: hoststate.remove_cgroups(before))
    step("removing host paths", lambda: hoststate.remove_host_paths(before))
    shutil.rmtree(state, ignore_errors=True)
    left = hoststate.leftovers(before, state, info["network"], info["bridge"], executables)
    return errors + left


def _reap(state: Path) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while sys.stdin.buffer.read(65536):
        pass
    report = teardown(state)  # the node lock, inherited, is released when this process exits
    tmp = report_path(state).with_suffix(".part")
    tmp.write_text(json.dumps(report))
    tmp.replace(report_path(state))
    for line in report:
        print(f"left behind: {line}", flush=True)


def _main(argv: Sequence[str]) -> None:
    if len(argv) == 1 and argv[0] == "clean":
        with contextlib.closing(take_lock(timeout=600)):
            clean_stale_states()
        return
    if len(argv) == 1:
        _reap(Path(argv[0]))
        return
    print("usage: python -m tests.kube.reaper STATE_DIR | clean", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    _main(sys.argv[1:])
