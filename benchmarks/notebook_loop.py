"""The notebook loop on the local runtime, side by side with doing it by hand.

    python benchmarks/notebook_loop.py [--files 50] [--mb 200] [--samples 30]

1. Start: ``sub notebook --no-browser`` on a directory of ``--files`` small files, to the URL
   printed (the directory packed, uploaded, built, the notebook started, the files synced),
   then to the page rendered with the file list (headless Chromium, when installed); against
   ``python -m jupyterlab`` started by hand on the same directory (to ``/api`` answering, then the
   page).
2. Upload: a directory of ``--mb`` MB (10 MB files of random bytes) packed and sent through its
   signed URL as `sub notebook` and `sub apply` do (``pack_context`` + ``upload_to_signed_url``,
   with Content-MD5) against one plain PUT of the packed bytes, to SeaweedFS (S3) on loopback.
3. Sync latency, through the running `sub notebook`: a local edit until Jupyter serves it, and
   an edit through Jupyter's contents API until the local file has it (p50 and p95 of
   ``--samples``); against the floor, one contents-API PUT and GET of the same file.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from substratus.cli.notebook.sides import JupyterTree  # noqa: E402
from substratus.storage import ArtifactStore, pack_context, upload_to_signed_url  # noqa: E402
from tests.integration.servers import SeaweedS3  # noqa: E402


def wait(predicate: Callable[[], bool], timeout: float = 300, step: float = 0.005) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        try:
            if predicate():
                return time.perf_counter() - t0
        except Exception:
            pass
        time.sleep(step)
    raise TimeoutError("timed out")


def page_seconds(url: str, profile: Path) -> float | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        return None
    t0 = time.perf_counter()
    dom = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
         "--virtual-time-budget=20000", "--dump-dom", url],
        capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    if "file-000.py" not in dom:
        raise RuntimeError("the page did not list the files")
    return time.perf_counter() - t0


def make_files(directory: Path, n: int) -> None:
    directory.mkdir(parents=True)
    for i in range(n):
        (directory / f"file-{i:03d}.py").write_text(f"# file {i}\nVALUE = {i}\n" * 20)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def start_by_hand(directory: Path, tmp: Path) -> tuple[float, float | None]:
    port = 18888
    token = uuid.uuid4().hex
    env = dict(os.environ, JUPYTER_TOKEN=token, JUPYTER_CONFIG_DIR=str(tmp / "jcfg"))
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--ServerApp.port={port}",
         f"--ServerApp.root_dir={directory}", "--ServerApp.ip=127.0.0.1", "--allow-root"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    try:
        wait(lambda: httpx.get(f"http://127.0.0.1:{port}/api", timeout=1).status_code == 200)
        ready = time.perf_counter() - t0
        page = page_seconds(f"http://127.0.0.1:{port}/lab?token={token}", tmp / "chromium-hand")
        return ready, page
    finally:
        proc.terminate()
        proc.wait(30)


def upload(mb: int, tmp: Path) -> tuple[float, float, float, int]:
    src = tmp / "big"
    src.mkdir()
    for i in range(mb // 10):
        (src / f"shard-{i:02d}.bin").write_bytes(os.urandom(10 * 1024 * 1024))
    s3 = SeaweedS3()
    s3.start()
    try:
        os.environ.update(s3.env)
        s3.create_bucket("bench")
        store = ArtifactStore("s3://bench")
        tarball = tmp / "context.tar.gz"
        t0 = time.perf_counter()
        md5 = pack_context(src, tarball)
        packed = time.perf_counter() - t0
        url = store.signed_upload_url(f"s3://bench/u/{md5}.tar.gz", 600, md5)
        t0 = time.perf_counter()
        upload_to_signed_url(url, tarball, md5=md5, progress=lambda n: None)
        sent = time.perf_counter() - t0
        plain_url = store.signed_upload_url("s3://bench/u/plain.tar.gz", 600, None)
        t0 = time.perf_counter()
        with open(tarball, "rb") as f:
            httpx.put(plain_url, content=f, timeout=300).raise_for_status()
        plain = time.perf_counter() - t0
        return packed, sent, plain, tarball.stat().st_size
    finally:
        s3.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=50)
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--samples", type=int, default=30)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-notebook-"))
    env = dict(
        os.environ,
        SUBSTRATUS_HOME=str(tmp / "home"),
        XDG_STATE_HOME=str(tmp / "state"),
        SUBSTRATUS_CONTAINER_ENGINE="none",
    )
    code = tmp / "code"
    make_files(code, args.files)

    hand_ready, hand_page = start_by_hand(code, tmp)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "substratus.cli.main", "notebook", "-f", str(code),
         "--no-browser", "--no-trainer"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    url = ""
    while not url.startswith("http://"):
        url = proc.stdout.readline()
        if not url:
            raise SystemExit("sub notebook printed no URL")
    ours_ready = time.perf_counter() - t0
    url = url.strip()
    ours_page = page_seconds(url, tmp / "chromium-ours")
    base, token = url.split("/lab?token=")
    jupyter = JupyterTree(base, token)
    target = code / "file-000.py"

    there, back, floor = [], [], []
    for i in range(args.samples):
        text = f"edit {i} here\n"
        target.write_text(text)
        there.append(wait(lambda t=text: jupyter.read("file-000.py") == t.encode()))
        text = f"edit {i} in the notebook\n".encode()
        t0 = time.perf_counter()
        jupyter.write("file-001.py", text)
        wait(lambda t=text: (code / "file-001.py").read_bytes() == t)
        back.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        jupyter.write("floor.txt", text)
        jupyter.read("floor.txt")
        floor.append(time.perf_counter() - t0)
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    proc.wait(120)
    packed, sent, plain, size = upload(args.mb, tmp)
    shutil.rmtree(tmp, ignore_errors=True)

    def page(v: float | None) -> str:
        return f"{v:.2f} s" if v is not None else "(no chromium)"

    print(f"start ({args.files} files)            sub notebook        jupyter lab by hand")
    print(f"  to the URL / to /api          {ours_ready:8.2f} s          {hand_ready:8.2f} s")
    print(f"  + page with the file list     {page(ours_page):>10}          {page(hand_page):>10}")
    print(f"upload ({args.mb} MB directory, {size / 1e6:.0f} MB packed, S3 on loopback)")
    print(f"  pack                          {packed:8.2f} s")
    print(
        f"  signed PUT with Content-MD5   {sent:8.2f} s ({size / 1e6 / sent:6.1f} MB/s)   "
        f"plain PUT {plain:.2f} s ({size / 1e6 / plain:6.1f} MB/s): {plain / sent:.2f}x"
    )
    ms = lambda v: f"{v * 1000:7.0f} ms"  # noqa: E731
    print(f"sync latency ({args.samples} samples)       p50          p95")
    for label, values in (
        ("  local edit -> notebook     ", there),
        ("  notebook edit -> local     ", back),
        ("  floor: one PUT + GET        ", floor),
    ):
        print(f"{label}{ms(statistics.median(values))}   {ms(percentile(values, 0.95))}")


if __name__ == "__main__":
    main()
