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


_COMPRESSED = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x28\xb5\x2f\xfd")  # gzip, bzip2, xz, zstd
_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_REGULAR = (b"0", b"\0", b"7")  # tarfile's regular types but the old GNU sparse format, which is refused
_META_KINDS = (b"L", b"K", b"x", b"g")  # headers describing the next member (or all of them), not members
_NO_DATA = (b"1", b"2", b"3", b"4", b"5", b"6")  # links, devices, folders, FIFOs: tarfile reads no data for them


class _Replay:
    """A read-only stream that gives ``head`` again before the rest of ``stream``."""

    def __init__(self, head: bytes, stream: IO[bytes]):
        self.head, self.stream = head, stream

    def read(self, size: int = -1) -> bytes:
        if not self.head:
            return self.stream.read(size)
        if size < 0:
            data, self.head = self.head + self.stream.read(), b""
            return data
        data, self.head = self.head[:size], self.head[size:]
        return data + (self.stream.read(size - len(data)) if len(data) < size else b"")


def _read_exact(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    if len(data) >= size:
        return data
    parts, have = [data], len(data)
    while have < size:  # pipes and sockets may return less than asked before the end
        more = stream.read(size - have)
        if not more:
            break
        parts.append(more)
        have += len(more)
    return b"".join(parts)


def _field(raw: bytes) -> bytes:
    end = raw.find(b"\0")
    return raw if end < 0 else raw[:end]


def _number(raw: bytes) -> int:
    """A header number: octal text, or GNU's base-256 (first byte 0x80 / 0xff) as tarfile reads it."""
    if raw[0] in (0o200, 0o377):
        value = int.from_bytes(raw[1:], "big")
        return value - (256 ** (len(raw) - 1)) if raw[0] == 0o377 else value
    return int(_field(raw).decode("ascii").strip() or "0", 8)


def _checksum_ok(header: bytes) -> bool:
    """The stored sum equals the header's bytes summed with the checksum field as spaces (unsigned, or signed
    as some old tars wrote it; tarfile accepts both)."""
    stored = _number(header[148:156])
    unsigned = sum(header) - sum(header[148:156]) + 256
    if stored == unsigned:
        return True
    return stored == unsigned - 256 * sum(1 for b in header[:148] + header[156:] if b >= 128)


def _pax_records(data: bytes) -> dict[str, str]:
    """``"%d key=value\n"`` records of a pax extended header."""
    records, pos = {}, 0
    while pos < len(data) and data[pos:pos + 1] != b"\0":
        space = data.find(b" ", pos)
        length = int(data[pos:space]) if space > pos and data[pos:space].isdigit() else 0
        if length <= 0 or pos + length > len(data):
            break  # what does not parse ends the records, as tarfile reads them
        key, _, value = data[space + 1:pos + length - 1].partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


def _plain_members(stream: IO[bytes], first: bytes) -> Iterator[tuple[str, bytes]]:
    """``(name, data)`` of the regular members of an uncompressed tar stream whose first block is ``first``.

    The same members, names and bytes as ``tarfile`` in stream mode (ustar prefixes, GNU long names, pax
    ``path`` / ``size`` records, base-256 sizes), read with one slice per header field instead of a full
    ``TarInfo`` each: about five times less Python per member. Where tarfile would end an archive silently at
    a bad checksum or a cut header after the first member, this raises, so the damage is counted."""
    header, long_name, pax = first, None, {}
    while True:
        if len(header) < _BLOCK:
            if not header:
                return  # the archive ends without its two zero blocks, which tarfile accepts too
            raise tarfile.ReadError("truncated header")
        if header == _ZERO_BLOCK:
            return
        if not _checksum_ok(header):
            raise tarfile.ReadError("bad checksum in a member header")
        kind = header[156:157]
        size = int(pax["size"]) if "size" in pax and kind not in _META_KINDS else _number(header[124:136])
        if size < 0:
            raise tarfile.ReadError("negative member size")
        if kind in _NO_DATA:
            data = b""
        else:
            data = _read_exact(stream, size)
            if len(data) < size:
                raise tarfile.ReadError("unexpected end of data")
            padding = -size % _BLOCK
            if padding and len(_read_exact(stream, padding)) < padding:
                raise tarfile.ReadError("unexpected end of data")
        if kind == b"L":  # GNU long name of the next member
            long_name = _field(data).decode("utf-8", "surrogateescape")
        elif kind == b"x":  # pax extended header of the next member
            pax = _pax_records(data)
        elif kind in _META_KINDS:  # a GNU long link name, a global pax header: nothing a sample uses
            pass
        elif kind == b"S":
            raise tarfile.ReadError("GNU sparse members are not supported in shards")
        else:
            if kind in _REGULAR:
                name = _field(header[:100]).decode("utf-8", "surrogateescape")
                prefix = _field(header[345:500]).decode("utf-8", "surrogateescape")
                if prefix:
                    name = prefix + "/" + name
                if long_name is not None:
                    name = long_name
                if "path" in pax:
                    name = pax["path"]
                if not (kind == b"\0" and name.endswith("/")):  # old V7 tars mark folders by a trailing slash
                    yield name, data
            long_name, pax = None, {}
        header = _read_exact(stream, _BLOCK)


def iter_samples(stream: IO[bytes], url: str, counts: dict) -> Iterator[dict]:
    """Samples of one shard read as a stream (any source: file, pipe, network); values are bytes."""
    def members():
        try:
            first = _read_exact(stream, _BLOCK)
            if first and not first.startswith(_COMPRESSED) and len(first) == _BLOCK:
                yield from _plain_members(stream, first)
                return
            with tarfile.open(fileobj=_Replay(first, stream), mode="r|*") as tar:  # compressed (or not a tar)
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
