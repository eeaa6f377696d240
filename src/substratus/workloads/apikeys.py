"""API keys (``API_KEYS``) for the server and the autoscaling proxy in front of it: read once,
checked in constant time. The proxy checks them too, so a request without a key never wakes a
Server scaled to zero."""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping

from substratus.core.contract import API_KEYS_ENV
from substratus.workloads.contract import ParamError

MIN_API_KEY_LENGTH = 16
PROTECTED_PREFIX = "/v1/"


def read_keys(env: Mapping[str, str] = os.environ) -> tuple[str, ...]:
    """The keys in ``API_KEYS`` (comma or space separated); none: no key is asked for."""
    raw = env.get(API_KEYS_ENV, "")
    keys = tuple(k for k in raw.replace(",", " ").split() if k)
    if raw.strip() and not keys:
        raise ParamError(f"{API_KEYS_ENV}: holds no key")
    for i, key in enumerate(keys):
        if len(key) < MIN_API_KEY_LENGTH:
            raise ParamError(
                f"{API_KEYS_ENV}: key {i + 1} has {len(key)} characters; an API key needs at "
                f"least {MIN_API_KEY_LENGTH} (e.g. `openssl rand -hex 24`)"
            )
        if not key.isascii() or not key.isprintable():
            raise ParamError(f"{API_KEYS_ENV}: key {i + 1} has characters a header cannot carry")
    return keys


def allowed(keys: tuple[bytes, ...], header: str | None) -> bool:
    """Whether ``Authorization: header`` carries one of ``keys`` as a Bearer token."""
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    token = given.strip().encode("ascii", "replace")
    # Every key compared, so the time taken says nothing of which one nearly matched.
    return sum(hmac.compare_digest(token, key) for key in keys) > 0


def refusal(header: str | None) -> str:
    """Why a request to a protected path was refused."""
    if header is None:
        return "no API key: send one as `Authorization: Bearer KEY` (the openai client's api_key)"
    return "Incorrect API key provided"
