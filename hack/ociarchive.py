#!/usr/bin/env python3
"""Write a directory as a one-layer OCI image archive, with no registry and no container engine.

    python3 hack/ociarchive.py ROOTFS OUT.tar NAME [NAME...] [--entrypoint JSON] [--cmd JSON]
        [--env K=V ...] [--user UID:GID] [--workdir DIR]

The archive is what ``ctr -n k8s.io images import`` reads (an OCI layout in a tar file); each
NAME (``substratus.local/toolbox:latest``) becomes an image name in containerd. The layer is
reproducible: files sorted, owned by root, mtime 0, so the same ROOTFS gives the same digest.
Standard library only: hack/node.sh runs it before any venv exists.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def layer_tar(rootfs: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for root, dirs, files in os.walk(rootfs):
            dirs.sort()
            for name in sorted(dirs + files):
                path = Path(root, name)
                info = tar.gettarinfo(str(path), arcname=str(path.relative_to(rootfs)))
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mtime = 0
                if info.isreg():
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
    return buf.getvalue()


def blob(data: bytes) -> tuple[str, bytes]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def compact(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def write_archive(rootfs: Path, out: Path, names: list[str], config: dict[str, object]) -> str:
    """Write the archive; return the manifest digest."""
    layer_digest, layer = blob(layer_tar(rootfs))
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "hack/ociarchive.py"}],
    }
    config_digest, config_bytes = blob(compact(image_config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": config_digest, "size": len(config_bytes)},
        "layers": [{"mediaType": LAYER, "digest": layer_digest, "size": len(layer)}],
    }
    manifest_digest, manifest_bytes = blob(compact(manifest))
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [
            {
                "mediaType": MANIFEST,
                "digest": manifest_digest,
                "size": len(manifest_bytes),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1],
                },
            }
            for name in names
        ],
    }
    tmp = out.with_name(out.name + ".part")
    with tarfile.open(tmp, "w") as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add("index.json", compact(index))
        for digest, data in (
            (layer_digest, layer),
            (config_digest, config_bytes),
            (manifest_digest, manifest_bytes),
        ):
            add("blobs/sha256/" + digest.split(":", 1)[1], data)
    tmp.replace(out)
    return manifest_digest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("rootfs", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("names", nargs="+", help="image names with a tag (registry/name:tag)")
    ap.add_argument("--entrypoint", type=json.loads)
    ap.add_argument("--cmd", type=json.loads)
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("--user")
    ap.add_argument("--workdir")
    a = ap.parse_args()
    for name in a.names:
        if ":" not in name.rsplit("/", 1)[-1]:
            ap.error(f"{name}: give a tag (name:tag)")
    config: dict[str, object] = {"Env": [f"PATH={DEFAULT_PATH}", *a.env]}
    for key, value in (
        ("Entrypoint", a.entrypoint),
        ("Cmd", a.cmd),
        ("User", a.user),
        ("WorkingDir", a.workdir),
    ):
        if value is not None:
            config[key] = value
    digest = write_archive(a.rootfs, a.out, a.names, config)
    print(f"{a.out}: {' '.join(a.names)} {digest}")


if __name__ == "__main__":
    main()
