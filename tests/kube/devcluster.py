"""A cluster to try the operator by hand, as ``kind create cluster`` is used elsewhere.

``python -m tests.kube.devcluster up|down|status`` (``hack/dev-cluster.sh`` runs it): ``up``
starts, in a background process that holds them, the control plane with kwok's GPU node(s), the
real node (:mod:`tests.kube.node`), the local registry (on the node's address), an
S3-compatible bucket (SeaweedFS), then applies our CRDs, loads the images built by
``hack/images.sh`` into the node and pushes them (up to 2 GiB each) to the registry, so an
image build's ``FROM substratus.local/...`` or ``FROM docker.io/substratusai/...`` finds them
through the operator's registry mirrors, runs the operator from the working tree, configured to
build images with rootless BuildKit and push them to that registry (its helper and BuildKit
images built first; ``--no-operator`` leaves it out), writes a
kubeconfig and prints ``export KUBECONFIG=...`` on stdout (everything else goes to stderr, so a
shell can ``eval`` it). ``up`` when it is already up prints the same line. ``down`` stops the
background process, which tears everything down (the node's teardown included) and exits.

State (kubeconfig, ``cluster.json``, the log) lives in ``$SUBSTRATUS_DEV_CLUSTER_DIR``, by default
``~/.local/state/substratus/dev-cluster``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.kube.cluster import REPO, ControlPlane, Proc, dump_logs
from tests.kube.hoststate import alive
from tests.kube.node import RealNode, host_ip
from tests.kube.operatorproc import start_operator, stop_operator
from tests.kube.registry import LocalRegistry

BUCKET = "substratus"


def state_dir() -> Path:
    default = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return Path(
        os.environ.get("SUBSTRATUS_DEV_CLUSTER_DIR") or default / "substratus" / "dev-cluster"
    )


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _read_info(d: Path) -> dict[str, Any] | None:
    """cluster.json, if the process that wrote it still runs (it survives a reboot or a
    SIGKILL: its PID may be another process's by now)."""
    try:
        info: dict[str, Any] = json.loads((d / "cluster.json").read_text())
        pid = int(info["pid"])
    except (OSError, ValueError, KeyError):
        return None
    return info if pid == _serving_pid(d) else None


def image_archives() -> list[Path]:
    """The archives hack/images.sh has built (its base image included: a FROM for builds)."""
    r = subprocess.run(
        ["bash", "hack/images.sh", "--print-dir"], cwd=REPO, capture_output=True, text=True
    )
    d = Path(r.stdout.strip()) if r.returncode == 0 else None
    return sorted(d.glob("*.tar")) if d and d.is_dir() else []


HELPER = "operator"  # images/: the project, the bucket libraries and a static busybox
HOME_CLASS, HOME_VOLUMES = "substratus-dev-home", 8  # static volumes for Notebooks' homes


def ensure_helper_image() -> None:
    """The operator's contract helper and the rootless BuildKit image builds run (hack/images.sh
    builds them once; minutes the first time)."""
    for name in (HELPER, "buildkit"):
        _say(f"image {name}: bash hack/images.sh {name} (cached after the first time)")
        subprocess.run(["bash", "hack/images.sh", name], cwd=REPO, check=True, stdout=sys.stderr)


SERVED_MAX_BYTES = 2 << 30  # larger archives are loaded into the node but not pushed


def serve_images(registry: LocalRegistry, archives: list[Path]) -> list[str]:
    """Push what the node loaded into the registry too, so a build's ``FROM`` finds it through
    the mirrors (substratus.local and docker.io); archives over 2 GiB are left out (said)."""
    served = []
    for archive in archives:
        if archive.stat().st_size > SERVED_MAX_BYTES:
            _say(f"not pushed to the registry (over 2 GiB): {archive.name}")
            continue
        served += registry.push_archive(archive)
    return served


def serve(d: Path, gpu_nodes: int, with_operator: bool) -> None:
    """The background process: start everything, write cluster.json, wait for SIGTERM."""
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    plane = ControlPlane()
    # On the node's address: build pods push to it (they cannot reach the host's loopback).
    registry = LocalRegistry(host=host_ip() or "127.0.0.1")
    node: RealNode | None = None
    bucket: Any = None
    operator: Proc | None = None
    try:
        plane.start()
        plane.start_nodes()
        for i in range(1, gpu_nodes):
            plane.create_gpu_node(f"kwok-gpu-{i}", 8)
        _say(f"control plane {plane.url} ready in {plane.startup_s + plane.nodes_startup_s:.1f}s")
        registry.start()
        _say(f"registry {registry.address}")
        node = RealNode(plane, registry=registry.address).start()
        _say(f"node {node.name} ({node.ip}) Ready in {node.startup_s:.1f}s")
        from tests.integration.servers import SeaweedS3

        bucket = SeaweedS3(host=node.ip)
        bucket.start()
        bucket.create_bucket(BUCKET)
        _say(f"bucket s3://{BUCKET} at {bucket.endpoint}")
        plane.kubectl("apply", "-f", str(REPO / "deploy" / "crds"))
        images = [*node.images()]
        archives = image_archives()
        for archive in archives:
            images += node.load_image(archive)
            _say(f"loaded {archive.name}")
        assert node.parts is not None
        served = serve_images(registry, [*node.parts.images, *archives])
        _say(f"registry serves {len(served)} images to builds")
        buildkit = next((i for i in images if i.startswith("substratus.local/buildkit:v")), None)
        node.add_volumes(HOME_CLASS, HOME_VOLUMES)  # Notebooks' homes
        if with_operator:
            settings = {
                **bucket.env,
                "SUBSTRATUS_ARTIFACT_URL": f"s3://{BUCKET}",
                "SUBSTRATUS_HELPER_IMAGE": f"docker.io/substratusai/{HELPER}:latest",
                "SUBSTRATUS_NOTEBOOK_STORAGE_CLASS": HOME_CLASS,
                # Builds push here, and their FROM images come from here.
                "SUBSTRATUS_REGISTRY": f"{registry.address}/builds",
                "SUBSTRATUS_INSECURE_REGISTRIES": registry.address,
                "SUBSTRATUS_REGISTRY_MIRRORS": json.dumps(
                    {"substratus.local": registry.address, "docker.io": registry.address}
                ),
                **({"SUBSTRATUS_BUILD_IMAGE": buildkit} if buildkit else {}),
            }
            operator = start_operator(plane, d, settings)
            _say(f"operator pid {operator.pid}, log {d / 'operator.log'}")
        kubeconfig = d / "kubeconfig"
        kubeconfig.write_text(plane.kubeconfig.read_text())
        kubeconfig.chmod(0o600)
        info = {
            "pid": os.getpid(),
            "kubeconfig": str(kubeconfig),
            "api": plane.url,
            "node": node.name,
            "node_ip": node.ip,
            "registry": registry.address,
            "served": sorted(served),
            "bucket": {"url": f"s3://{BUCKET}", **bucket.env},
            "images": sorted(i for i in set(images) if not i.startswith("sha256:")),
            "operator": {"pid": operator.pid, "log": str(operator.log)} if operator else None,
            "started": time.time(),
        }
        tmp = d / "cluster.json.part"
        tmp.write_text(json.dumps(info, indent=1))
        tmp.replace(d / "cluster.json")
        _say("ready")
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass
    except BaseException:
        _say(dump_logs(plane))
        raise
    finally:
        (d / "cluster.json").unlink(missing_ok=True)
        if operator is not None:
            stop_operator(operator)
        if node is not None:
            left = node.stop()
            for line in left:
                _say(f"left behind: {line}")
        if bucket is not None:
            bucket.stop()
        registry.stop()
        plane.stop()
        _say("stopped" if stopping else "exited")


def up(d: Path, gpu_nodes: int, timeout: float, with_operator: bool) -> int:
    d.mkdir(parents=True, exist_ok=True)
    lock = open(d / ".lock", "a")  # noqa: SIM115 - two `up` at once start one cluster
    fcntl.flock(lock, fcntl.LOCK_EX)
    info = _read_info(d)
    if info is None and _serving_pid(d):
        _say("a dev cluster is still starting or stopping; try again in a minute")
        return 1
    if info is None:
        if with_operator:
            ensure_helper_image()
        (d / "cluster.json").unlink(missing_ok=True)
        log = d / "cluster.log"
        with open(log, "wb") as out:
            daemon = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.kube.devcluster",
                    "serve",
                    f"--gpu-nodes={gpu_nodes}",
                    *([] if with_operator else ["--no-operator"]),
                ],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives this command and the shell's Ctrl-C
                env=dict(os.environ, SUBSTRATUS_DEV_CLUSTER_DIR=str(d)),
            )
        _say(f"starting (log: {log})...")
        deadline = time.monotonic() + timeout
        while (info := _read_info(d)) is None:
            if daemon.poll() is not None or time.monotonic() > deadline:
                if daemon.poll() is None:
                    daemon.terminate()  # it tears down what it started
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        daemon.wait(timeout=200)
                _say(f"the dev cluster did not start; the end of {log}:")
                _say("\n".join(log.read_text(errors="replace").splitlines()[-40:]))
                return 1
            time.sleep(0.5)
        _say(
            f"up: node {info['node']} Ready, registry {info['registry']}, "
            f"bucket {info['bucket']['url']}"
        )
    else:
        _say(f"already up (pid {info['pid']})")
    print(f"export KUBECONFIG={info['kubeconfig']}")
    return 0


def down(d: Path, timeout: float) -> int:
    pid = _serving_pid(d)
    if not pid:
        _say("not running")
        return 0
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            _say(
                f"pid {pid} did not stop in {timeout:.0f}s; "
                "killing it (the node's reaper cleans up)"
            )
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.2)
    log = d / "cluster.log"
    left = (
        [
            line
            for line in log.read_text(errors="replace").splitlines()
            if line.startswith("left behind")
        ]
        if log.exists()
        else []
    )
    for line in left:
        _say(line)
    _say("down")
    return 1 if left else 0


def _serving_pid(d: Path) -> int:
    """The background process serving ``d``, found by its command line and environment (also
    while it starts, before cluster.json exists); 0 if none."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (proc / "cmdline").read_bytes().split(b"\0")
                env = (proc / "environ").read_bytes()
                if b"tests.kube.devcluster" in argv and b"serve" in argv and str(d).encode() in env:
                    return int(proc.name)
    return 0


def status(d: Path) -> int:
    info = _read_info(d)
    if info is None:
        print("down")
        return 3
    age = time.time() - float(info["started"])
    print(f"up for {age / 60:.0f} min (pid {info['pid']})")
    print(f"  KUBECONFIG={info['kubeconfig']}")
    print(f"  API server   {info['api']}")
    print(f"  real node    {info['node']} ({info['node_ip']})")
    print(f"  registry     {info['registry']}")
    print(f"  bucket       {info['bucket']['url']} at {info['bucket']['AWS_ENDPOINT_URL_S3']}")
    print(f"  images       {', '.join(info['images'])}")
    operator = info.get("operator")
    print(
        f"  operator     pid {operator['pid']}, log {operator['log']}"
        if operator
        else "  operator     not run (--no-operator)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="hack/dev-cluster.sh", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start (or find) the dev cluster; print export KUBECONFIG=...")
    p_up.add_argument(
        "--gpu-nodes", type=int, default=1, help="kwok nodes with 8 nvidia.com/gpu each"
    )
    p_up.add_argument("--timeout", type=float, default=300)
    p_up.add_argument(
        "--no-operator", action="store_true", help="do not run the operator from the working tree"
    )
    sub.add_parser("down", help="stop everything it started")
    sub.add_parser("status", help="what runs, and where")
    p_serve = sub.add_parser("serve", help=argparse.SUPPRESS)
    p_serve.add_argument("--gpu-nodes", type=int, default=1)
    p_serve.add_argument("--no-operator", action="store_true")
    a = ap.parse_args(argv)
    d = state_dir()
    if a.command == "up":
        return up(d, max(a.gpu_nodes, 1), a.timeout, not a.no_operator)
    if a.command == "down":
        return down(d, timeout=240)
    if a.command == "status":
        return status(d)
    serve(d, max(a.gpu_nodes, 1), not a.no_operator)
    return 0


if __name__ == "__main__":
    sys.exit(main())
