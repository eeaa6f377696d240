"""The container contract's parameters: PARAM_* environment and params.json."""

from __future__ import annotations

import json

from substratus.api.common import Params


def param_value(value: str | int | float | bool) -> str:
    # Booleans as JSON would write them, so `true`, not Python's `True`.
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def params_env(params: Params) -> dict[str, str]:
    """The seed's rule: ``PARAM_{upper(key)}={value}``."""
    return {f"PARAM_{key.upper()}": param_value(value) for key, value in params.items()}


def params_json(params: Params) -> str:
    return json.dumps(params, indent=2, sort_keys=True) + "\n"
