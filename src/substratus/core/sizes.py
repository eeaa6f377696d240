"""Byte counts as Kubernetes quantities (binary suffixes), as status.diskSize shows them."""

from __future__ import annotations

_UNITS = ("Ki", "Mi", "Gi", "Ti", "Pi", "Ei")


def human_size(n: int) -> str:
    """A byte count as a Kubernetes quantity: ``0``, ``512``, ``1Ki``, ``1.5Gi``, ``27Gi``.

    Binary suffixes, at most one decimal (rounded half up); the integer when it is exact.
    """
    if n < 0:
        raise ValueError(f"size must not be negative, got {n}")
    if n < 1024:
        return str(n)
    unit = 0
    while unit + 1 < len(_UNITS) and n >= 1024 ** (unit + 2):
        unit += 1
    # Tenths of the unit, rounded half up with integers only (no float error on huge sizes).
    base = 1024 ** (unit + 1)
    tenths = (n * 10 + base // 2) // base
    if tenths >= 10240 and unit + 1 < len(_UNITS):  # 1023.96Ki rounds to 1Mi, not "1024Ki"
        unit += 1
        base *= 1024
        tenths = (n * 10 + base // 2) // base
    whole, frac = divmod(tenths, 10)
    return f"{whole}{_UNITS[unit]}" if frac == 0 else f"{whole}.{frac}{_UNITS[unit]}"
