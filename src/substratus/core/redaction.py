"""Credentials out of what is shown: URLs may carry user:password (or a token) in them."""

from __future__ import annotations

import re

_USERINFO_RE = re.compile(r"([a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)


def redact_userinfo(text: str) -> str:
    """``text`` with the user:password (or token) of any URL in it replaced, for messages and
    logs."""
    return _USERINFO_RE.sub(r"\1***@", text)
