"""Run the autoscaling proxy. Its settings come from the environment the runtime sets:

- ``UPSTREAMS``: the replicas' base URLs, comma-separated; ``UPSTREAMS_FILE``: a JSON list of
  them that the runtime rewrites as replicas come and go (locally); or ``PROXY_TOKEN``: the
  operator PUTs the list to ``/_substratus/upstreams`` with this token (on a cluster);
- ``QUEUE_LIMIT``, ``QUEUE_TIMEOUT_SECONDS``, ``LOAD_WINDOW_SECONDS`` (the scale-down delay);
- ``API_KEYS``: the Server's, if it has any: a ``/v1/`` request without one is refused here,
  before it can wake a replica;
- ``PORT`` and ``HOST``, as for a Server.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from aiohttp import web

from substratus.core.autoscale import TOKEN_ENV
from substratus.workloads.apikeys import read_keys
from substratus.workloads.contract import ParamError, fail, host, port
from substratus.workloads.proxy.app import Proxy, Settings
from substratus.workloads.proxy.demand import Demand
from substratus.workloads.proxy.upstreams import Upstreams

# The window is at least a few of the runtime's polls, so a moment's burst is always seen.
MIN_WINDOW = 2.0


def _number(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(fail(f"{name}: expected a number, got {raw!r}")) from None
    if value < 0:
        raise SystemExit(fail(f"{name}: must not be negative, got {raw!r}"))
    return value


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    raw = os.environ.get("UPSTREAMS", "").split(",")
    urls = [u.strip() for u in raw if u.strip()]
    file = os.environ.get("UPSTREAMS_FILE", "").strip()
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not urls and not file and not token:
        return fail(f"set UPSTREAMS (the replicas' URLs), UPSTREAMS_FILE or {TOKEN_ENV}")
    try:
        keys = tuple(k.encode() for k in read_keys())
    except ParamError as exc:
        return fail(str(exc))
    settings = Settings(
        queue_limit=int(_number("QUEUE_LIMIT", 100)),
        queue_timeout=_number("QUEUE_TIMEOUT_SECONDS", 300),
        keys=keys,
        token=token.encode(),
    )
    window = max(MIN_WINDOW, _number("LOAD_WINDOW_SECONDS", 300))
    proxy = Proxy(Upstreams(urls, Path(file) if file else None), Demand(window), settings)
    logging.getLogger("substratus.proxy").info(
        "proxy on %s:%d for %s", host(), port(), ", ".join(urls) or file or "the operator's list"
    )
    # handler_cancellation: a held request whose client left stops waiting (and counting).
    web.run_app(
        proxy.app(), host=host(), port=port(), print=None, handler_cancellation=True,
        access_log=None,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
