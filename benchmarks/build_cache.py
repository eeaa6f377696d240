"""A rebuild with the registry layer cache against the first build of the same context, as the
operator's build Jobs run them: each build a fresh rootless BuildKit (``buildctl-daemonless.sh``
in our image, hack/images.sh buildkit, with the build Job's security settings), so the registry
cache (``--export-cache``/``--import-cache type=registry``) is the only cache there is.

    python benchmarks/build_cache.py [--layer-mb 100]

Needs root, podman and the images of ``bash hack/images.sh buildkit`` and ``bash hack/node.sh``
(the toolbox image, a busybox base pushed to a local registry as ``toolbox``). The context's
Dockerfile has an expensive step (``RUN`` writing ``--layer-mb`` MB and checksumming it) and a
cheap one (``COPY`` of a file the second build changes). Prints both builds' seconds.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.kube.registry import LocalRegistry  # noqa: E402

IMAGE = "substratus.local/buildkit:latest"


def build(ctx: Path, registry: str, tag: str) -> float:
    repo = f"{registry}/bench/images"
    cache = f"type=registry,ref={repo}:buildcache,registry.insecure=true"
    toml = ctx.parent / "buildkitd.toml"
    toml.write_text(f'[registry."{registry}"]\n  http = true\n  insecure = true\n')
    argv = [
        "podman", "run", "--rm", "--network", "host",
        "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
        "-e", "BUILDKITD_FLAGS=--oci-worker-no-process-sandbox --config /cfg/buildkitd.toml",
        "-v", f"{ctx}:/ctx:ro", "-v", f"{toml}:/cfg/buildkitd.toml:ro",
        "--entrypoint", "buildctl-daemonless.sh", IMAGE,
        "build", "--frontend", "dockerfile.v0", "--local", "context=/ctx",
        "--local", "dockerfile=/ctx",
        "--output", f"type=image,name={repo}:{tag},push=true,registry.insecure=true",
        "--export-cache", f"{cache},mode=max", "--import-cache", cache,
    ]  # fmt: skip
    t0 = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"build failed:\n{done.stderr[-3000:]}")
    return took


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layer-mb", type=int, default=100)
    a = ap.parse_args()
    registry = LocalRegistry().start()
    try:
        busybox = Path("/bin/busybox").read_bytes()
        applets = ("sh", "dd", "sha256sum", "cat")
        links = {f"bin/{x}": "busybox" for x in applets}
        registry.push("toolbox", "latest", {"bin/busybox": busybox}, ["sh"], links)
        ctx = Path(tempfile.mkdtemp(prefix="bench-build-")) / "ctx"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text(
            f"FROM {registry.address}/toolbox:latest\n"
            f"RUN dd if=/dev/urandom of=/blob bs=1M count={a.layer_mb} && sha256sum /blob\n"
            "COPY app.txt /app.txt\n"
        )
        (ctx / "app.txt").write_text("one\n")
        first = build(ctx, registry.address, "first")
        (ctx / "app.txt").write_text("two\n")
        second = build(ctx, registry.address, "second")
    finally:
        registry.stop()
    print(f"\nbuild of a context with a {a.layer_mb} MB RUN layer, a fresh BuildKit each time")
    print(f"{'first build (no cache)':<40} {first:>7.1f} s")
    print(f"{'rebuild, one file changed (registry cache)':<40} {second:>7.1f} s")
    print(f"{'ratio':<40} {first / second:>7.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
