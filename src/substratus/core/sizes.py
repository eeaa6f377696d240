"""Byte counts as Kubernetes quantities (binary suffixes), as status.diskSize shows them."""

from __future__ import annotations

_UNITS = ["", "Ki", "Mi", "Gi", "Ti", "Pi"]


def human_size(n: int) -> str:
    value = float(n)
    for unit in _UNITS:
        if value < 1024 or unit == _UNITS[-1]:
            if unit == "":
                return str(int(value))
            text = f"{value:.1f}".removesuffix(".0")
            return f"{text}{unit}"
        value /= 1024
    raise AssertionError("unreachable")
