"""Shard lists: brace expansion, ``::``-joined sources with weights, per-shard sample counts, opening shards.

``expand_shards(["data/train-{000000..000099}.tar", "pipe:cat extra-{0..3}.tar"])`` gives every shard URL with its
source's weight and, when a ``sizes.json`` ({shard file name: count}) lies next to local shards, their sizes.
"""
from __future__ import annotations

import ast
import json
import os
from dataclasses import dataclass
from typing import IO
from urllib.parse import urlparse

from clipforge.config import ConfigError

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
        import braceexpand  # in the "train" and "eval" extras (webdataset depends on it too)
    except ImportError:
        raise ImportError("shard patterns need braceexpand: pip install 'clipforge[train]' or 'clipforge[eval]'") \
            from None
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
        raise ConfigError(f"{'::'.join(sources)} expands to an empty shard list; check the brace pattern")
    return ShardList(tuple(urls), tuple(shard_weights), tuple(sizes) if sizes is not None else None)


def check_local_shards(shards: ShardList) -> None:
    """Fail before any work when local shard files are missing (remote URLs are checked when read)."""
    local = [u for u in shards.urls if urlparse(u).scheme in _LOCAL_SCHEMES]
    missing = [u for u in local if not os.path.isfile(_local_path(u))]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise FileNotFoundError(f"{len(missing)} of {len(shards.urls)} shards do not exist or are not files: "
                                f"{', '.join(missing[:3])}{more}. Check the path or pattern")


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
    """Open a shard for reading: local paths directly, ``pipe:``/http/gs/hf via webdataset, others via fsspec."""
    scheme = urlparse(url).scheme
    if scheme in _LOCAL_SCHEMES:
        return open(_local_path(url), "rb")
    if scheme in _WDS_SCHEMES:
        try:
            import webdataset as wds
        except ImportError:
            raise ImportError(f"reading {scheme}: shards needs webdataset: pip install 'clipforge[train]'") from None
        return wds.gopen(url, "rb")
    try:
        import fsspec
    except ImportError:
        raise ValueError(f"cannot open {url!r}: scheme '{scheme}' needs fsspec (pip install fsspec)") from None
    return fsspec.open(url, "rb").open()
