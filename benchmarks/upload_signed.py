"""A build context's upload through its signed URL against a plain PUT of the same bytes to the
same server, side by side.

    python benchmarks/upload_signed.py [--mb 200] [--runs 3]

Servers (real, on loopback, from tests/integration/servers.py): SeaweedFS (S3), Azurite (Azure)
and the operator's own upload endpoint (over a file store). For each, ``--mb`` MB of random
bytes go up:

- signed: what ``sub apply`` does, ``storage.upload_to_signed_url`` with the md5 as
  ``Content-MD5`` and a progress callback (Azure: one PUT up to 256 MiB, then 32 MiB blocks,
  four at a time; ``--mb 400`` shows the blocks);
- plain: one ``httpx.put`` of the file to a URL signed without an md5 (S3, the endpoint) or to
  a SAS (Azure), no progress, no md5.

Each figure is the best of ``--runs``, the two taking turns; the ratio is signed throughput /
plain throughput (the target is at least 0.9).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from substratus.runtimes.kubernetes.uploadserver import UploadEndpoint  # noqa: E402
from substratus.storage import ArtifactStore, file_md5, upload_to_signed_url  # noqa: E402
from tests.integration.servers import Azurite, SeaweedS3  # noqa: E402


def best(runs: int, fn: Callable[[], None]) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def plain_put(url: str, path: Path, headers: dict[str, str]) -> None:
    with open(path, "rb") as f:
        r = httpx.put(url, content=f, headers=headers, timeout=300)
    r.raise_for_status()


def measure(
    label: str,
    store: ArtifactStore,
    sign: Callable[[str, str | None], str],
    src: Path,
    runs: int,
    plain_headers: dict[str, str],
) -> tuple[str, float, float]:
    md5 = file_md5(src)
    signed_url = sign(store.base_url + f"/.uploads/bench/models/m/{md5}.tar.gz", md5)
    plain_url = sign(store.base_url + "/.uploads/bench/models/m/plain.tar.gz", None)
    signed_s = plain_s = float("inf")
    for _ in range(runs):  # taking turns
        plain_s = min(plain_s, best(1, lambda: plain_put(plain_url, src, plain_headers)))
        signed_s = min(
            signed_s,
            best(
                1, lambda: upload_to_signed_url(signed_url, src, md5=md5, progress=lambda n: None)
            ),
        )
    return label, signed_s, plain_s


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-upload-"))
    src = tmp / "context.tar.gz"
    with open(src, "wb") as f:
        for _ in range(a.mb):
            f.write(os.urandom(1_000_000))
    size_mb = src.stat().st_size / 1e6
    rows = []

    s3 = SeaweedS3()
    s3.start()
    try:
        os.environ.update(s3.env)
        s3.create_bucket("bench")
        store = ArtifactStore("s3://bench/sub")
        sign_s3 = lambda u, m: store.signed_upload_url(u, 600, m)  # noqa: E731
        rows.append(measure("S3 (SeaweedFS)", store, sign_s3, src, a.runs, {}))
    finally:
        s3.stop()

    az = Azurite()
    az.start()
    try:
        os.environ.update(az.env)
        az.create_bucket("bench")
        azs = ArtifactStore("az://bench/sub")
        sign_az = lambda u, m: azs.signed_upload_url(u, 600, m)  # noqa: E731
        blob = {"x-ms-blob-type": "BlockBlob"}
        rows.append(measure("Azure (Azurite)", azs, sign_az, src, a.runs, blob))
    finally:
        az.stop()

    files = ArtifactStore(f"file://{tmp}/bucket")
    ep = UploadEndpoint(files, os.urandom(24), "http://127.0.0.1")
    port = ep.serve("127.0.0.1", 0)
    ep.public_url = f"http://127.0.0.1:{port}"
    try:
        sign_ep = lambda u, m: ep.sign(u, 600, m)  # noqa: E731
        rows.append(measure("operator endpoint", files, sign_ep, src, a.runs, {}))
    finally:
        ep.stop()

    print(f"\nupload of a {size_mb:.0f} MB context, best of {a.runs}")
    print(f"{'server':<20} {'signed MB/s':>12} {'plain MB/s':>11} {'ratio':>6}")
    for label, signed_s, plain_s in rows:
        ratio = plain_s / signed_s
        print(f"{label:<20} {size_mb / signed_s:>12.0f} {size_mb / plain_s:>11.0f} {ratio:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
