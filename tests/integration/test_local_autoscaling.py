"""Autoscaling on the local runtime, with the real built-in server on a tiny model: a Server at
zero replicas answers a burst through its proxy (the supervisor starts replicas), honours the
queue limit, and goes back to zero after the delay."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Local
from tests.integration.test_local_services import server_pids
from tests.prometheus import sample
from tests.workloads.tiny import make_tiny_llama

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

AUTOSCALING = {
    "minReplicas": 0,
    "maxReplicas": 2,
    "targetInFlight": 8,
    "scaleDownDelaySeconds": 3,
    "queueLimit": 32,
    "queueTimeoutSeconds": 180,
}


async def burst(url: str, n: int) -> list[Any]:
    """``n`` completions at once; each result is the completion or the error it raised."""
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=240)
    async with client:
        calls = [
            client.completions.create(
                model="auto", prompt=f"Hello {i}", max_tokens=4, temperature=0
            )
            for i in range(n)
        ]
        return await asyncio.gather(*calls, return_exceptions=True)


def wait_for(what: str, check: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return value


def logs(local: Local) -> str:
    """The proxy's and the replicas' logs (their last lines), to say what went wrong."""
    found = sorted((local.paths.logs / "default" / "servers" / "auto").glob("*.log"))
    return "\n".join(f"== {p.name}\n" + "\n".join(p.read_text().splitlines()[-25:]) for p in found)


def test_scale_from_zero_under_a_burst_then_back_to_zero(local: Local, tmp_path: Path) -> None:
    tiny = make_tiny_llama(tmp_path / "tiny")
    copy = ["cp", "-r", f"{tiny}/.", "artifacts/"]
    local.apply("Model", "tiny", {"image": "substratusai/base", "command": copy})
    local.wait("Model", "tiny")
    spec = {
        "image": "substratusai/model-server",
        "model": "tiny",
        "params": {"max_batch_size": 16},
        "autoscaling": AUTOSCALING,
    }
    local.apply("Server", "auto", spec)
    obj = local.wait("Server", "auto")
    url = obj["status"]["url"]
    assert "scaled to zero" in obj["status"]["conditions"][0]["message"]
    assert server_pids(local, "auto") == []
    assert httpx.get(url + "/").status_code == 200  # the proxy's probe wakes nothing
    time.sleep(1)
    assert server_pids(local, "auto") == []

    # 32 requests at zero replicas: all held, all answered, by at most maxReplicas replicas.
    results = asyncio.run(burst(url, 32))
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, (errors[:3], logs(local))
    assert all(r.choices[0].text for r in results)
    metrics = httpx.get(url + "/_substratus/metrics").text
    assert sample(metrics, "substratus_proxy_queued_seconds_count") == 32
    assert sample(metrics, "substratus_proxy_requests_total", code="200") == 32
    assert len(server_pids(local, "auto")) == 2  # 32 / 8 = 4, capped at maxReplicas
    assert local.get("Server", "auto")["status"]["url"] == url  # the address never moved
    # A stream comes through the proxy as the replica sends it, chunk by chunk.
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "Hi"}], max_tokens=6, stream=True
    )
    chunks = [c for c in stream if c.choices and c.choices[0].delta.content]
    assert len(chunks) >= 2

    # Nothing for the delay: back to zero, processes gone, still Ready at the same address.
    wait_for("scale to zero", lambda: server_pids(local, "auto") == [], timeout=60)
    obj = local.wait(
        "Server", "auto", lambda o: "scaled to zero" in o["status"]["conditions"][0]["message"]
    )
    assert obj["status"]["ready"] is True and obj["status"]["url"] == url

    # Over the queue limit while at zero: the excess is refused at once, with the reason.
    results = asyncio.run(burst(url, 40))
    refused = [r for r in results if isinstance(r, openai.APIStatusError)]
    answered = [r for r in results if not isinstance(r, BaseException)]
    assert len(refused) == 8 and len(answered) == 32, (results, logs(local))
    for error in refused:
        assert error.status_code == 503
        assert error.response.headers["x-substratus-reason"] == "queue_full"
        assert "queueLimit 32" in error.message
