"""WebDataset tar shards: members grouped into samples, read as a stream or indexed for random access.

A sample is the run of consecutive regular members sharing a key: the member path up to the first ``.`` of its
file name (``dir/0001.jpg`` and ``dir/0001.cls`` form sample ``dir/0001`` with fields ``jpg`` and ``cls``; field
names are lower-cased). Names such as ``__index__`` are WebDataset metadata and skipped. These are webdataset's rules.

Damage never stops a run: a shard that cannot be opened, is truncated or is not a tar archive adds one to
``counts["shard_errors"]`` (the samples before the damage are kept), and a field repeated inside one sample is
dropped and counted the same way. Member names are used only as keys: nothing is ever extracted to a path, so a
hostile name (``../../etc/passwd``) cannot write or read outside the shard.
"""
from __future__ import annotations

import logging
import os
import re
import tarfile
import zlib
from typing import IO, Callable, Iterator

logger = logging.getLogger("clipforge.data")

_META = re.compile(r"(^|/)__[^/]*__($|/)")  # webdataset's metadata members
_SPLIT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # (key, extension) of a member path, as webdataset splits it
_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, ValueError)

Location = tuple[str, int, int]  # (local tar path, offset of the data, size)


def split_name(name: str) -> tuple[str, str] | None:
    """``"dir/0001.seg.png"`` -> ``("dir/0001", "seg.png")``; None for names without an extension or metadata."""
    if _META.search(name):
        return None
    match = _SPLIT.match(name)
    return (match.group(1), match.group(2).lower()) if match else None


def _count_error(counts: dict, url: str, exc: BaseException) -> None:
    counts["shard_errors"] = counts.get("shard_errors", 0) + 1
    logger.warning("skipping unreadable data in shard %s: %s: %s", url, type(exc).__name__, exc)


def _group(members: Iterator[tuple[str, object]], url: str, counts: dict) -> Iterator[dict]:
    """Consecutive ``(name, value)`` members -> sample dicts ``{"__key__", "__url__", ext: value}``."""
    sample: dict | None = None
    for name, value in members:
        parts = split_name(name)
        if parts is None:
            continue
        key, ext = parts
        if sample is None or key != sample["__key__"]:
            if sample is not None and len(sample) > 2:
                yield sample
            sample = {"__key__": key, "__url__": url}
        if ext in sample:
            _count_error(counts, url, ValueError(f"field '{ext}' repeated in sample '{key}'"))
            continue
        sample[ext] = value
    if sample is not None and len(sample) > 2:
        yield sample


def iter_samples(stream: IO[bytes], url: str, counts: dict) -> Iterator[dict]:
    """Samples of one shard read as a stream (any source: file, pipe, network); values are bytes."""
    def members():
        try:
            with tarfile.open(fileobj=stream, mode="r|*") as tar:
                for member in tar:
                    if member.isreg():
                        yield member.name, tar.extractfile(member).read()
        except _ERRORS as exc:
            _count_error(counts, url, exc)

    yield from _group(members(), url, counts)


def index_samples(path: str | os.PathLike, counts: dict) -> Iterator[dict]:
    """Samples of a local uncompressed shard with values as ``(path, offset, size)`` locations, found by reading
    only the headers; ``read_location`` reads one value later (random access for evaluation datasets)."""
    path = os.fspath(path)

    def members():
        try:
            with tarfile.open(path, mode="r:") as tar:
                for member in tar:
                    if member.isreg():
                        yield member.name, (path, member.offset_data, member.size)
        except _ERRORS as exc:
            _count_error(counts, path, exc)

    yield from _group(members(), path, counts)


def read_location(location: Location) -> bytes:
    """The bytes at a location found by ``index_samples``; a short read (a truncated shard) raises OSError."""
    path, offset, size = location
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise OSError(f"{path} is truncated: {size} bytes expected at offset {offset}, {len(data)} found")
    return data


_COMPRESSED = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x28\xb5\x2f\xfd")  # gzip, bzip2, xz, zstd


def is_plain_tar(path: str | os.PathLike) -> bool:
    """False for a compressed file (it must be streamed, offsets mean nothing); True otherwise."""
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError:
        return False
    return not head.startswith(_COMPRESSED)


def samples_of(url: str, counts: dict, open_url: Callable[[str], IO[bytes]]) -> Iterator[dict]:
    """Stream the samples of ``url``, opened with ``open_url``; a shard that cannot be opened is counted."""
    try:
        stream = open_url(url)
    except _ERRORS as exc:
        _count_error(counts, url, exc)
        return
    try:
        yield from iter_samples(stream, url, counts)
    finally:
        stream.close()


def safe_extract(archive: str | os.PathLike, destination: str | os.PathLike) -> None:
    """Extract a downloaded archive (gzip/bzip2/xz tar) into ``destination``, refusing any member that would land
    outside it (``../`` names, absolute paths, links pointing out) or is not a plain file or folder."""
    destination = os.path.realpath(destination)
    with tarfile.open(archive, mode="r:*") as tar:
        members = tar.getmembers()
        for member in members:
            target = os.path.realpath(os.path.join(destination, member.name))
            if os.path.commonpath([destination, target]) != destination:
                raise ValueError(f"{archive}: member '{member.name}' would be written outside {destination}; "
                                 "refusing to extract this archive")
            if not (member.isfile() or member.isdir()):
                raise ValueError(f"{archive}: member '{member.name}' is a link or device; refusing to extract")
        if hasattr(tarfile, "data_filter"):
            tar.extractall(destination, members=members, filter="data")
        else:  # Python without extraction filters: the checks above already vetted every member
            tar.extractall(destination, members=members)
