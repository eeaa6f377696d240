"""What a real node changes on the host, recorded before it starts and put back after it stops.

A kubelet, containerd, kube-proxy and the CNI plugins write outside their own directories: kernel
settings (the kubelet's ``setupKernelTunables``), cgroups, network namespaces, a bridge, iptables
chains (and the nf_tables tables iptables-nft registers for them), fixed paths such as
``/var/lib/kubelet`` and ``/run/containerd``. :class:`Baseline` is the host as it was; the
``remove_*``/``restore_*`` functions undo what is new, touching only what the node made (its
network name, its bridge, ``KUBE-*`` chains, namespaces named ``cni-*``), so podman's own CNI
chains and anything else on the machine are left alone; :func:`leftovers` says what is still
there, for the tests that check teardown.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

# What the kubelet sets (setupKernelTunables; protectKernelDefaults would refuse to start
# instead). Teardown puts back a value only while it is still the kubelet's: one that something
# else changed since is left alone. (IPv4 forwarding, which the bridge plugin turns on as podman
# and every container engine do, stays on.)
KUBELET_SYSCTLS = {
    "vm.overcommit_memory": "1",
    "vm.panic_on_oom": "0",
    "kernel.panic": "10",
    "kernel.panic_on_oops": "1",
    "kernel.keys.root_maxkeys": "1000000",
    "kernel.keys.root_maxbytes": "25000000",
}
# Written by the kubelet and containerd whatever their configured directories are.
HOST_PATHS = (
    "/var/lib/kubelet",
    "/var/log/containers",
    "/var/log/pods",
    "/run/containerd",
    "/opt/containerd",
)
# libcni's cache, shared with podman: only the node's files go, and the directories if empty.
CNI_CACHE = Path("/var/lib/cni")
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_NAMES = ("kubepods", "kubepods.slice", "k8s.io")
NETNS_DIR = Path("/run/netns")
IPTABLES = ("iptables", "ip6tables")


@dataclass
class Baseline:
    sysctls: dict[str, str] = field(default_factory=dict)
    absent_paths: list[str] = field(default_factory=list)
    absent_cgroups: list[str] = field(default_factory=list)
    netns: list[str] = field(default_factory=list)
    iptables: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    nft_tables: list[str] = field(default_factory=list)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: Path) -> Baseline:
        return cls(**json.loads(path.read_text()))


def snapshot() -> Baseline:
    return Baseline(
        sysctls={k: v for k in KUBELET_SYSCTLS if (v := read_sysctl(k)) is not None},
        absent_paths=[p for p in (*HOST_PATHS, str(CNI_CACHE)) if not os.path.lexists(p)],
        absent_cgroups=[str(c) for c in _cgroup_candidates() if not c.exists()],
        netns=sorted(_netns()),
        iptables={cmd: iptables_save(cmd) for cmd in IPTABLES if shutil.which(cmd)},
        nft_tables=nft_tables(),
    )


def read_sysctl(key: str) -> str | None:
    try:
        return (Path("/proc/sys") / key.replace(".", "/")).read_text().strip()
    except OSError:
        return None


def _cgroup_candidates() -> list[Path]:
    if not CGROUP_ROOT.is_dir():
        return []
    hierarchies = [CGROUP_ROOT] + [p for p in CGROUP_ROOT.iterdir() if p.is_dir()]
    return [h / n for h in hierarchies for n in CGROUP_NAMES]


def _netns() -> set[str]:
    try:
        return {p.name for p in NETNS_DIR.iterdir()}
    except OSError:
        return set()


def iptables_save(cmd: str) -> dict[str, list[str]]:
    """``{table: [":CHAIN POLICY", "-A ..." ...]}`` without counters (read-only)."""
    try:
        out = subprocess.run(
            [f"{cmd}-save"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    tables: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in out.splitlines():
        if line.startswith("*"):
            current = tables.setdefault(line[1:], [])
        elif current is not None and line.startswith(":"):
            current.append(line.rsplit(" [", 1)[0])
        elif current is not None and line.startswith("-A "):
            current.append(line)
    return tables


def nft_tables() -> list[str]:
    if not shutil.which("nft"):
        return []
    r = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, timeout=30)
    return sorted(line.strip() for line in r.stdout.splitlines() if line.startswith("table "))


# ---------------------------------------------------------------------------------------------
# Undoing


def pids_of(state: Path, executables: set[str]) -> list[int]:
    """The node's own processes: one of its binaries, with its state directory on the command
    line (every one it starts has: a config file, a socket). Not a `tail -f` of its log, not
    another node's kubelet."""
    needle = str(state).encode()
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if needle in (d / "cmdline").read_bytes() and os.readlink(d / "exe") in executables:
                found.append(int(d.name))
    return found


def cgroup_pids(before: Baseline) -> list[int]:
    """Processes in the node's pod cgroups (containers whose shim is gone included): only
    cgroups that did not exist before the node started, never another kubelet's."""
    pids: set[int] = set()
    for c in map(Path, before.absent_cgroups):
        if c.is_dir():
            for procs in c.rglob("cgroup.procs"):
                with contextlib.suppress(OSError, ValueError):
                    pids.update(int(p) for p in procs.read_text().split())
    return sorted(pids)


def kill_all(pids: list[int], grace: float = 0) -> None:
    """SIGTERM (when ``grace``), then SIGKILL what is left."""
    sigs = [signal.SIGTERM, signal.SIGKILL] if grace else [signal.SIGKILL]
    for sig in sigs:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + (grace if sig == signal.SIGTERM else 5)
        while time.monotonic() < deadline and any(alive(p) for p in pids):
            time.sleep(0.1)


def alive(pid: int) -> bool:
    """Running (a zombie is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def mounts_under(*dirs: Path) -> list[str]:
    """Mount points at or below ``dirs``, deepest first."""
    prefixes = [str(d).rstrip("/") for d in dirs]
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if any(point == p or point.startswith(p + "/") for p in prefixes):
            found.append(point)
    return sorted(set(found), key=lambda p: (-p.count("/"), p))


def unmount_under(*dirs: Path) -> None:
    for point in mounts_under(*dirs):
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=30)


def netns_of(pids: list[int]) -> set[str]:
    """The names (in /run/netns) of the network namespaces these processes are in."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            inodes.add(os.stat(f"/proc/{pid}/ns/net").st_ino)
    names = set()
    for name in _netns():
        with contextlib.suppress(OSError):
            if os.stat(NETNS_DIR / name).st_ino in inodes:
                names.add(name)
    return names


def remove_netns(names: set[str]) -> None:
    """The pods' network namespaces that CNI DEL did not remove (the node was killed)."""
    for name in sorted(names & _netns()):
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=30)
        with contextlib.suppress(OSError):
            (NETNS_DIR / name).unlink()


def remove_link(name: str) -> None:
    if Path("/sys/class/net", name).exists():
        subprocess.run(["ip", "link", "delete", name], capture_output=True, timeout=30)


PORTMAP_CHAINS = ("CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-MASQ", "CNI-HOSTPORT-SETMARK")


def _our_chains(
    table: list[str], before: list[str], network: str
) -> tuple[list[list[str]], list[str]]:
    """New jump rules to delete and new chains to remove in one table: ``KUBE-*`` chains (one
    node per machine: kube-proxy's are the node's), ``CNI-*`` chains that a rule naming
    ``network`` jumps to (podman's rules name ``podman``), and portmap's chains, which every CNI
    network shares, only if they are new and hold no other network's rules."""
    old = set(before)
    new_chains = [line[1:].split()[0] for line in table if line.startswith(":") and line not in old]
    ours = {c for c in new_chains if c.startswith("KUBE-")}
    marker = f'name: \\"{network}\\"'
    for line in table:
        if line.startswith("-A ") and marker in line:
            m = re.search(r" -j (CNI-\S+)", line)
            if m and m.group(1) in new_chains:
                ours.add(m.group(1))
    portmap = [c for c in PORTMAP_CHAINS if c in new_chains]
    shared = any(
        line.startswith(f"-A {PORTMAP_CHAINS[0]} ") and marker not in line for line in table
    )
    if portmap and not shared:
        ours |= set(portmap)
    rules = []
    for line in table:
        if not line.startswith("-A ") or line in old:
            continue
        argv = shlex.split(line)
        target = argv[argv.index("-j") + 1] if "-j" in argv else ""
        if argv[1] not in ours and (target in ours or marker in line):
            rules.append(["-D", *argv[1:]])
    return rules, sorted(ours)


def remove_iptables(before: Baseline, network: str) -> None:
    for cmd, tables in ((c, iptables_save(c)) for c in before.iptables):
        for name, lines in tables.items():
            rules, chains = _our_chains(lines, before.iptables[cmd].get(name, []), network)
            for rule in rules:
                subprocess.run([cmd, "-w", "-t", name, *rule], capture_output=True, timeout=30)
            for op in ("-F", "-X"):
                for chain in chains:
                    subprocess.run(
                        [cmd, "-w", "-t", name, op, chain], capture_output=True, timeout=30
                    )


def remove_nft_tables(before: Baseline) -> None:
    """Tables iptables-nft registered for the node's chains, once they hold no rules."""
    for line in sorted(set(nft_tables()) - set(before.nft_tables)):
        _, family, name = line.split()
        listing = subprocess.run(
            ["nft", "list", "table", family, name], capture_output=True, text=True, timeout=30
        ).stdout
        body = [
            s
            for s in (x.strip() for x in listing.splitlines())
            if s and s != "}" and not s.startswith(("table ", "chain ", "type "))
        ]
        if not body:
            subprocess.run(
                ["nft", "delete", "table", family, name], capture_output=True, timeout=30
            )


def _changed_by_kubelet(key: str, before: str) -> bool:
    now = read_sysctl(key)
    return now != before and now == KUBELET_SYSCTLS.get(key)


def restore_sysctls(before: Baseline) -> None:
    for key, value in before.sysctls.items():
        if _changed_by_kubelet(key, value):
            with contextlib.suppress(OSError):
                (Path("/proc/sys") / key.replace(".", "/")).write_text(value)


def remove_cgroups(before: Baseline) -> None:
    for path in map(Path, before.absent_cgroups):
        if path.is_dir():
            for d in sorted(
                (p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)
            ):
                with contextlib.suppress(OSError):
                    d.rmdir()
            with contextlib.suppress(OSError):
                path.rmdir()


def remove_host_paths(before: Baseline) -> None:
    for path in before.absent_paths:
        if path != str(CNI_CACHE) and os.path.lexists(path):
            unmount_under(Path(path))
            shutil.rmtree(path, ignore_errors=True)


def remove_cni_cache(before: Baseline, network: str) -> None:
    """libcni's cached results for the node's network, then its directories if they were not
    there before and are left empty."""
    results = CNI_CACHE / "results"
    for f in results.glob(f"{network}-*"):
        container = f.name.removeprefix(f"{network}-").rsplit("-", 1)[0]
        for g in (f, results / f"cni-loopback-{container}-lo"):
            with contextlib.suppress(OSError):
                g.unlink()
    if str(CNI_CACHE) in before.absent_paths:
        for d in (results, CNI_CACHE):
            with contextlib.suppress(OSError):
                d.rmdir()


def leftovers(
    before: Baseline, state: Path, network: str, bridge: str, executables: set[str]
) -> list[str]:
    """What the node left on the host, as sentences (empty: the host is as it was)."""
    found = []
    if pids := pids_of(state, executables):
        found.append(f"processes still running: {pids}")
    if pids := cgroup_pids(before):
        found.append(f"processes in pod cgroups: {pids}")
    if points := mounts_under(state, *(Path(p) for p in before.absent_paths)):
        found.append(f"mounts: {points}")
    if names := sorted(n for n in _netns() - set(before.netns) if n.startswith("cni-")):
        found.append(f"network namespaces: {names}")
    if Path("/sys/class/net", bridge).exists():
        found.append(f"bridge {bridge}")
    for cmd, tables in before.iptables.items():
        now = iptables_save(cmd)
        for name, lines in now.items():
            rules, chains = _our_chains(lines, tables.get(name, []), network)
            if rules or chains:
                found.append(f"{cmd} -t {name}: chains {chains}, rules {len(rules)}")
    if new_tables := sorted(set(nft_tables()) - set(before.nft_tables)):
        found.append(f"nft tables: {new_tables}")
    for key, value in before.sysctls.items():
        if _changed_by_kubelet(key, value):
            found.append(f"sysctl {key} is {read_sysctl(key)}, was {value}")
    if cgroups := [c for c in before.absent_cgroups if Path(c).exists()]:
        found.append(f"cgroups: {cgroups}")
    shared = str(CNI_CACHE)  # checked by its files above: podman may have made it meanwhile
    if paths := [p for p in before.absent_paths if p != shared and os.path.lexists(p)]:
        found.append(f"paths: {paths}")
    if cached := sorted(p.name for p in (CNI_CACHE / "results").glob(f"{network}-*")):
        found.append(f"CNI cache: {cached}")
    if state.exists():
        found.append(f"state directory {state}")
    return found
