"""What this machine offers workloads: GPUs (by index), memory and disk."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from functools import cache
from pathlib import Path

from substratus.core.observed import Capacity
from substratus.core.reconcile import gpu_type_matches


@cache
def detect_gpus() -> dict[int, str]:
    """NVIDIA GPUs visible to the supervisor by index, with their model names (none when
    nvidia-smi is absent or fails)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return {}
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return {}
    # "GPU 0: NVIDIA L4 (UUID: GPU-...)"
    found = {}
    for line in out.stdout.splitlines():
        head, sep, rest = line.partition(": ")
        if sep and head.startswith("GPU ") and head[4:].isdigit():
            found[int(head[4:])] = rest.split(" (UUID", 1)[0]
    return found


def total_memory_gb() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9


class GpuPool:
    def __init__(self, gpus: dict[int, str]):
        self._names = dict(gpus)
        self._free = sorted(gpus)
        self._lock = threading.Lock()

    def take(self, count: int, gpu_type: str | None = None) -> list[int]:
        with self._lock:
            fits = [
                i
                for i in self._free
                if gpu_type is None or gpu_type_matches(gpu_type, self._names[i])
            ]
            if count > len(fits):
                raise RuntimeError(
                    f"spec.resources.gpu: {count} {gpu_type or 'GPU'} requested, {len(fits)} free"
                )
            taken = fits[:count]
            self._free = [i for i in self._free if i not in taken]
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

    def free_models(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._names[i] for i in self._free)


def capacity(pool: GpuPool, home: Path) -> Capacity:
    return Capacity(
        gpus=pool.free(),
        gpu_models=pool.free_models(),
        memory_gb=total_memory_gb(),
        disk_gb=shutil.disk_usage(home).free / 1e9,
    )
