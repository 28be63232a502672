"""How many CPU threads torch should use.

On a CPU whose cores are already busy, torch's default (one thread per core) is a trap: its OpenMP threads spin
waiting for each other while other processes hold the cores. Measured on this project's 2-core machines with both
cores busy: a tiny-ViT training step ran at 16-22 samples/s with torch's default 2 threads and at 714 samples/s
with 1 thread. ``auto_threads`` therefore leaves out the cores other processes keep busy, measured from
``/proc/stat`` over a tenth of a second (time spent waiting for disks is not busy: the load average counts it,
which once made an idle machine look fully loaded); elsewhere from the 1-minute load average.
"""
from __future__ import annotations

import os
import time

import torch

_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # user, nice, system, irq, softirq, steal in /proc/stat (not idle, not iowait)


def _cpu_times() -> tuple[int, int] | None:
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return sum(fields[i] for i in _BUSY_FIELDS if i < len(fields)), sum(fields)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; the platform's processor string elsewhere), for benchmark headers."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        return platform.processor() or "unknown"


def busy_cores(interval: float = 0.1) -> float | None:
    """How many cores other processes keep busy right now (None when it cannot be told)."""
    before = _cpu_times()
    if before is None:
        try:
            return os.getloadavg()[0]
        except (AttributeError, OSError):
            return None
    time.sleep(interval)
    after = _cpu_times()
    total = after[1] - before[1]
    return (after[0] - before[0]) / total * (os.cpu_count() or 1) if total > 0 else 0.0


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def auto_threads() -> int:
    """Cores not already busy, at least 1 and at most torch's default."""
    default = torch.get_num_threads()
    busy = busy_cores()
    if busy is None:
        return default
    return max(1, min(default, round(available_cores() - busy)))


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads: ``threads``, or ``auto_threads()`` when None. Returns the number set."""
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1 (or unset for automatic), got {threads}")
    chosen = threads if threads is not None else auto_threads()
    torch.set_num_threads(chosen)
    return chosen
