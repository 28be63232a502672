"""Basic statistics of a model, as the published CLIP benchmark reports them.

- Disk usage (MB): size of the weight file(s), in MiB.
- Peak RAM usage (GB): the highest process RSS seen while loading the model and encoding texts and images at
  batch size 8, minus the RSS before loading, in GiB. RSS is sampled by a background thread.
- Peak VRAM usage (GB): ``torch.cuda.max_memory_allocated`` over the same work, minus what was allocated before,
  in GiB; "n/a" without CUDA.
"""
from __future__ import annotations

import os
import threading
from typing import Callable

import torch

from clipforge.evaluation.features import Encoders
from clipforge.models._checkpoint_file import SHARD_INDEX_SUFFIX, CheckpointFileError, shard_files

MIB = 1024 ** 2
GIB = 1024 ** 3


def disk_usage_mb(path: str | os.PathLike | None) -> float | None:
    """Size in MiB of a weights file (a shard index: with every shard it names), or of every file under a folder;
    None when there is no local file."""
    if not path or not os.path.exists(path):
        return None
    if os.path.isfile(path):
        return (os.path.getsize(path) + sum(map(os.path.getsize, _shards(path)))) / MIB
    total = 0
    for folder, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(folder, f)) for f in files)
    return total / MIB


def _shards(path: str | os.PathLike) -> list[str]:
    """The existing files a transformers shard index (``*.index.json``) names; none for other files."""
    if not str(path).endswith(SHARD_INDEX_SUFFIX):
        return []
    try:
        names = shard_files(path)
    except (OSError, CheckpointFileError):
        return []
    folder = os.path.dirname(os.fspath(path))
    return [p for p in (os.path.join(folder, n) for n in names) if os.path.isfile(p)]


class PeakRSS:
    """Context manager sampling this process's RSS every ``interval`` seconds; ``peak`` holds the maximum."""

    def __init__(self, interval: float = 0.005):
        import psutil  # the eval extra; only needed when statistics are asked for
        self._process = psutil.Process()
        self.interval = interval
        self.start = self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


def resource_usage(load: Callable[[], Encoders], texts: list[str] | None = None, batch_size: int = 8,
                   device: str = "cpu") -> dict[str, float | str | None]:
    """Measure disk, peak RAM delta and peak VRAM delta for loading a model and encoding one batch each way.

    ``load()`` returns the model's ``Encoders``; it is called inside the measurement so that loading the
    weights counts, as in the published tables.
    """
    texts = (texts or ["a photo of a cat."])
    texts = (texts * batch_size)[:batch_size]
    cuda = device.startswith("cuda") and torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        vram_before = torch.cuda.memory_allocated(device)
    with PeakRSS() as rss, torch.no_grad():
        encoders = load()
        size = encoders.image_size
        height, width = (size, size) if isinstance(size, int) else size
        encoders.encode_text(encoders.tokenize(texts))
        encoders.encode_image(torch.rand(batch_size, 3, height, width))
        if cuda:
            torch.cuda.synchronize(device)
    vram = (torch.cuda.max_memory_allocated(device) - vram_before) / GIB if cuda else "n/a"
    return {"disk_usage_mb": disk_usage_mb(encoders.weights_path), "peak_ram_gb": (rss.peak - rss.start) / GIB,
            "peak_vram_gb": vram}
