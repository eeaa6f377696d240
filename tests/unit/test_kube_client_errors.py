"""The CLI's cluster client turns the API server's refusals into the Client interface's errors,
for lists too (lightkube's are lazy), and waits out a 429 as client-go does. The API server is
a stub here: a 429 cannot be provoked from the test control plane on demand."""

from __future__ import annotations

from typing import Any

import httpx2
import pytest
from lightkube import ApiError

from substratus.cli import kube
from substratus.core.client import ClientError


def _error(code: int, retry_after: str | None = None) -> ApiError:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "slow down",
            "reason": "TooManyRequests", "code": code}  # fmt: skip
    headers = {"Retry-After": retry_after} if retry_after else {}
    request = httpx2.Request("GET", "https://k/apis/substratus.ai/v1/models")
    return ApiError(request, httpx2.Response(code, json=body, headers=headers, request=request))


class Lists:
    """lightkube's Client.list: lazy, its error raised while iterating."""

    def __init__(self, errors: list[ApiError]) -> None:
        self.errors = errors
        self.calls = 0

    def list(self, resource: Any, **_: Any) -> Any:
        self.calls += 1

        def items() -> Any:
            if self.errors:
                raise self.errors.pop(0)
            yield from ()

        return items()


def client(k: Lists) -> kube.KubeClient:
    c = object.__new__(kube.KubeClient)
    c.context, c.k = "test", k  # type: ignore[assignment]
    return c


def test_a_429_is_waited_out_as_the_server_asks(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(kube.time, "sleep", slept.append)
    k = Lists([_error(429, "2"), _error(429)])
    assert client(k).list_objects("models", "default") == []
    assert k.calls == 3 and slept == [2.0, 1.0]


def test_a_refusal_while_listing_is_a_client_error_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kube.time, "sleep", lambda _: None)
    with pytest.raises(ClientError, match="slow down"):
        client(Lists([_error(429)] * 10)).list_objects("models", "default")
    with pytest.raises(ClientError, match="slow down"):
        client(Lists([_error(500)])).list_objects("models", None)
