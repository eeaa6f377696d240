"""Pure parts of the test node: which iptables chains are the node's to remove (and which are
podman's to keep), and the OCI archives hack/ociarchive.py writes for `ctr images import`."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
from pathlib import Path

from tests.kube.hoststate import _our_chains

REPO = Path(__file__).resolve().parents[2]

BEFORE = [
    ":PREROUTING ACCEPT",
    ":POSTROUTING ACCEPT",
    ":CNI-HOSTPORT-DNAT -",
    ":CNI-abc123 -",
    "-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT",
    '-A POSTROUTING -s 10.88.0.2/32 -m comment --comment "name: \\"podman\\" id: \\"p1\\"" '
    "-j CNI-abc123",
]
NOW = [
    *BEFORE,
    ":KUBE-SERVICES -",
    ":KUBE-SVC-X -",
    ":CNI-def456 -",
    ":CNI-DN-789 -",
    ":CNI-podman2 -",
    ":CNI-DN-podman -",
    '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
    '-A POSTROUTING -s 10.245.0.4/32 -m comment --comment "name: \\"substratus-node\\" '
    'id: \\"c1\\"" -j CNI-def456',
    '-A POSTROUTING -s 10.88.0.3/32 -m comment --comment "name: \\"podman\\" id: \\"p2\\"" '
    "-j CNI-podman2",
    '-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \\"substratus-node\\" '
    'id: \\"c1\\"" -m multiport --dports 18080 -j CNI-DN-789',
    '-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \\"podman\\" '
    'id: \\"p2\\"" -m multiport --dports 8080 -j CNI-DN-podman',
    "-A KUBE-SERVICES -j KUBE-SVC-X",
    "-A CNI-def456 -d 10.245.0.0/24 -j ACCEPT",
]


def test_only_the_nodes_new_chains_and_the_rules_that_jump_to_them_are_removed() -> None:
    rules, chains = _our_chains(NOW, BEFORE, "substratus-node")
    assert chains == ["CNI-DN-789", "CNI-def456", "KUBE-SERVICES", "KUBE-SVC-X"]
    # podman's chains, old and new, are not the node's; rules inside removed chains go with
    # the chain (flushed), so only jumps from chains that stay are deleted one by one.
    assert [r[:2] for r in rules] == [
        ["-D", "PREROUTING"],
        ["-D", "POSTROUTING"],
        ["-D", "CNI-HOSTPORT-DNAT"],
    ]
    assert rules[1][-2:] == ["-j", "CNI-def456"]
    assert 'name: "substratus-node" id: "c1"' in rules[1]  # quoting survives for iptables -D


def test_nothing_is_removed_when_nothing_is_new() -> None:
    assert _our_chains(BEFORE, BEFORE, "substratus-node") == ([], [])


PORTMAP = [
    ":PREROUTING ACCEPT",
    ":CNI-HOSTPORT-DNAT -",
    ":CNI-HOSTPORT-MASQ -",
    ":CNI-HOSTPORT-SETMARK -",
    ":CNI-DN-1 -",
    "-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT",
    "-A CNI-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j MASQUERADE",
    '-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \\"substratus-node\\" '
    'id: \\"c1\\"" -m multiport --dports 18080 -j CNI-DN-1',
]
PODMAN_PORT = (
    '-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \\"podman\\" id: \\"p\\"" '
    "-m multiport --dports 8080 -j CNI-DN-2"
)


def test_portmaps_shared_chains_go_only_when_new_and_holding_nothing_else() -> None:
    base = [":PREROUTING ACCEPT"]
    rules, chains = _our_chains(PORTMAP, base, "substratus-node")
    assert chains == ["CNI-DN-1", "CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-MASQ", "CNI-HOSTPORT-SETMARK"]
    assert [r[1] for r in rules] == ["PREROUTING"]
    # A podman container publishes a port through the same chains meanwhile: only ours go.
    rules, chains = _our_chains([*PORTMAP, ":CNI-DN-2 -", PODMAN_PORT], base, "substratus-node")
    assert chains == ["CNI-DN-1"]
    assert [r[1] for r in rules] == ["CNI-HOSTPORT-DNAT"]


def test_ociarchive_writes_an_oci_layout_with_every_name(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "bin" / "hello").write_text("#!/bin/sh\necho hi\n")
    out = tmp_path / "image.tar"
    argv = [sys.executable, str(REPO / "hack" / "ociarchive.py"), str(rootfs), str(out)]
    names = ["substratus.local/hello:1", "substratus.local/hello:latest"]
    subprocess.run([*argv, *names, "--cmd", '["/bin/hello"]'], check=True, capture_output=True)
    with tarfile.open(out) as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        manifests = index["manifests"]
        assert [m["annotations"]["io.containerd.image.name"] for m in manifests] == names
        manifest_blob = tar.extractfile("blobs/sha256/" + manifests[0]["digest"][7:]).read()  # type: ignore[union-attr]
        manifest = json.loads(manifest_blob)
        for ref in (manifest["config"], *manifest["layers"]):
            data = tar.extractfile("blobs/sha256/" + ref["digest"][7:]).read()  # type: ignore[union-attr]
            assert "sha256:" + hashlib.sha256(data).hexdigest() == ref["digest"]
            assert len(data) == ref["size"]
        config = json.loads(
            tar.extractfile("blobs/sha256/" + manifest["config"]["digest"][7:]).read()
        )  # type: ignore[union-attr]
    assert config["config"]["Cmd"] == ["/bin/hello"]
    # Reproducible: the same tree gives the same image.
    again = tmp_path / "again.tar"
    subprocess.run([*argv[:-1], str(again), *names, "--cmd", '["/bin/hello"]'], check=True)
    with tarfile.open(again) as tar:
        assert (
            json.load(tar.extractfile("index.json"))["manifests"][0]["digest"]
            == manifests[0]["digest"]
        )  # type: ignore[arg-type]
