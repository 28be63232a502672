"""Shard lists: brace expansion, weights, sample counts, opening URLs, and who reads which shard."""
from __future__ import annotations

import ast
import json
import os
import random
from dataclasses import dataclass
from typing import IO, Iterator
from urllib.parse import urlparse

from clipforge.config import ConfigError

from .batch import derive_seed

_LOCAL_SCHEMES = ("", "file")
_WDS_SCHEMES = ("pipe", "http", "https", "gs", "ais", "hf", "sftp", "ftps", "scp")


@dataclass(frozen=True)
class ShardList:
    """Expanded shard URLs, one weight per shard, and per-shard sample counts when known."""

    urls: tuple[str, ...]
    weights: tuple[float, ...]
    sizes: tuple[int, ...] | None

    @property
    def total_size(self) -> int | None:
        return sum(self.sizes) if self.sizes is not None else None


def _braceexpand(pattern: str) -> list[str]:
    try:
        import braceexpand  # comes with webdataset (the "train" extra)
    except ImportError:
        raise ImportError("WebDataset shard lists need webdataset: pip install 'clipforge[train]'") from None
    return list(braceexpand.braceexpand(pattern))


def expand_shards(sources: list[str], weights: list[float] | None = None) -> ShardList:
    """Expand ``::``-separated sources with brace ranges; every shard inherits its source's weight."""
    urls, shard_weights, sizes = [], [], []
    for i, source in enumerate(sources):
        expanded = _braceexpand(source)
        urls += expanded
        shard_weights += [1.0 if weights is None else weights[i]] * len(expanded)
        source_sizes = _read_sizes(expanded)
        sizes = None if sizes is None or source_sizes is None else sizes + source_sizes
    if not urls:
        raise ConfigError("data.train expands to an empty shard list; check the brace pattern")
    return ShardList(tuple(urls), tuple(shard_weights), tuple(sizes) if sizes is not None else None)


def check_local_shards(shards: ShardList) -> None:
    """Fail before any work when local shard files are missing (remote URLs are checked when read)."""
    local = [u for u in shards.urls if urlparse(u).scheme in _LOCAL_SCHEMES]
    missing = [u for u in local if not os.path.isfile(_local_path(u))]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise FileNotFoundError(f"{len(missing)} of {len(shards.urls)} shards do not exist or are not files: "
                                f"{', '.join(missing[:3])}{more}. Check data.train")


def _local_path(url: str) -> str:
    return urlparse(url).path if url.startswith("file:") else url


def _read_sizes(urls: list[str]) -> list[int] | None:
    """Per-shard counts from ``sizes.json`` ({shard basename: count}) next to local shards, if present.

    A ``__len__`` file (total count only) gives no per-shard counts; ``read_total_size`` uses it.
    """
    if any(urlparse(u).scheme not in _LOCAL_SCHEMES for u in urls):
        return None
    folder = os.path.dirname(_local_path(urls[0]))
    path = os.path.join(folder, "sizes.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        table = json.load(f)
    names = [os.path.basename(u) for u in urls]
    if not all(n in table for n in names):
        return None
    return [int(table[n]) for n in names]


def read_total_size(shards: ShardList, sources: list[str]) -> int | None:
    """Total sample count from ``sizes.json``, else from ``__len__`` files next to each source."""
    if shards.total_size is not None:
        return shards.total_size
    total = 0
    for source in sources:
        first = _braceexpand(source)[0]
        path = os.path.join(os.path.dirname(_local_path(first)), "__len__")
        if urlparse(first).scheme not in _LOCAL_SCHEMES or not os.path.exists(path):
            return None
        with open(path) as f:
            total += int(ast.literal_eval(f.read().strip()))
    return total


def open_url(url: str) -> IO[bytes]:
    """Open a shard for reading: local paths and ``pipe:``/http/gs/hf via webdataset, others via fsspec."""
    import webdataset as wds

    scheme = urlparse(url).scheme
    if scheme in _LOCAL_SCHEMES or scheme in _WDS_SCHEMES:
        return wds.gopen(url, "rb")
    try:
        import fsspec
    except ImportError:
        raise ValueError(f"cannot open {url!r}: scheme '{scheme}' needs fsspec (pip install fsspec)") from None
    return fsspec.open(url, "rb").open()


def epoch_shard_order(num_shards: int, seed: int, epoch: int) -> list[int]:
    """The shard permutation every rank agrees on for an epoch."""
    order = list(range(num_shards))
    random.Random(derive_seed(seed, epoch, 0x5A4D)).shuffle(order)
    return order


def worker_shards(num_shards: int, seed: int, epoch: int, rank: int, world_size: int, worker: int,
                  num_workers: int) -> list[int]:
    """The disjoint shard indices that (rank, worker) reads this epoch.

    Same rule as webdataset's ``split_by_node`` then ``split_by_worker`` (every k-th shard), applied to a
    per-epoch permutation, with rank and worker given explicitly so that a resumed loader can re-map them.
    """
    order = epoch_shard_order(num_shards, seed, epoch)
    return order[rank::world_size][worker::num_workers]


def shard_cycles(shards: list[int], seed: int, epoch: int, rank: int, worker: int) -> Iterator[tuple[int, int]]:
    """(cycle, shard) forever: pass 0 reads ``shards`` in order, later passes reshuffle them.

    A reader that needs more samples than its shards hold wraps around instead of stopping, so every rank
    delivers the same number of batches and none waits forever in a collective.
    """
    cycle = 0
    while True:
        order = list(shards)
        if cycle > 0:
            random.Random(derive_seed(seed, epoch, rank, worker, cycle)).shuffle(order)
        for shard in order:
            yield cycle, shard
        cycle += 1


def resampled_shards(weights: tuple[float, ...], seed: int, epoch: int, rank: int,
                     worker: int) -> Iterator[tuple[int, int]]:
    """(0, shard) forever, drawn with replacement by weight; each (rank, worker) has its own stream."""
    rng = random.Random(derive_seed(seed, epoch, rank, worker, 0x5E5A))
    population = range(len(weights))
    while True:
        yield 0, rng.choices(population, weights=weights, k=1)[0]
