"""What this machine offers workloads: GPUs (by index), memory and disk."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from functools import cache
from pathlib import Path

from substratus.core.observed import Capacity


@cache
def gpu_indices() -> tuple[int, ...]:
    """NVIDIA GPUs visible to the supervisor (none when nvidia-smi is absent or fails)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return ()
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(i for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU "))


def total_memory_gb() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9


class GpuPool:
    def __init__(self, indices: tuple[int, ...]):
        self._free = list(indices)
        self._lock = threading.Lock()

    def take(self, count: int) -> list[int]:
        with self._lock:
            if count > len(self._free):
                raise RuntimeError(f"{count} GPUs requested, {len(self._free)} free")
            taken, self._free = self._free[:count], self._free[count:]
            return taken

    def claim(self, indices: list[int]) -> None:
        """Mark GPUs used by a process recovered after a restart."""
        with self._lock:
            self._free = [i for i in self._free if i not in indices]

    def give_back(self, indices: list[int]) -> None:
        with self._lock:
            self._free = sorted(set(self._free) | set(indices))

    def free(self) -> int:
        with self._lock:
            return len(self._free)


def capacity(pool: GpuPool, home: Path) -> Capacity:
    return Capacity(
        gpus=pool.free(),
        memory_gb=total_memory_gb(),
        disk_gb=shutil.disk_usage(home).free / 1e9,
    )
