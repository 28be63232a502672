"""How many CPU threads torch should use.

On a CPU whose cores are already busy, torch's default (one thread per core) is a trap: its OpenMP threads spin
waiting for each other while other processes hold the cores. Measured on this project's 2-core machines with both
cores busy: a tiny-ViT training step ran at 16-22 samples/s with torch's default 2 threads and at 714 samples/s
with 1 thread. ``auto_threads`` therefore leaves out the cores the load average says are taken.
"""
from __future__ import annotations

import os

import torch


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def auto_threads() -> int:
    """Cores not already busy (1-minute load average), at least 1 and at most torch's default."""
    default = torch.get_num_threads()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return default
    idle = round(available_cores() - load)
    return max(1, min(default, idle))


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads: ``threads``, or ``auto_threads()`` when None. Returns the number set."""
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1 (or unset for automatic), got {threads}")
    chosen = threads if threads is not None else auto_threads()
    torch.set_num_threads(chosen)
    return chosen
