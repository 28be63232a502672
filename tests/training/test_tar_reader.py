"""The shard stream reader (``data.tar.iter_samples``) against Python's tarfile: the same regular members, names
and bytes on archives of every format tarfile writes, and damage counted instead of read past."""
import gzip
import io
import random
import tarfile

import pytest

from clipforge.data import tar as tars


def _archive(members, fmt, compress=False, global_headers=None) -> bytes:
    """members: (name, bytes | "dir" | ("symlink", target) | ("hardlink", target))"""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt, pax_headers=global_headers) as tar:
        for name, payload in members:
            try:  # ustar cannot hold long names and links: those members are left out (nothing is written)
                tarfile.TarInfo(name).tobuf(fmt, "utf-8", "surrogateescape")
                if isinstance(payload, tuple):
                    info = tarfile.TarInfo(name)
                    info.linkname = payload[1]
                    info.tobuf(fmt, "utf-8", "surrogateescape")
            except ValueError:
                continue
            info = tarfile.TarInfo(name)
            if payload == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif isinstance(payload, tuple):
                info.type = tarfile.SYMTYPE if payload[0] == "symlink" else tarfile.LNKTYPE
                info.linkname = payload[1]
                tar.addfile(info)
            else:
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    data = buffer.getvalue()
    return gzip.compress(data) if compress else data


def _tarfile_members(data: bytes):
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|*") as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar if m.isreg()]


def _ours(data: bytes, chunk: int | None = None):
    stream = io.BytesIO(data) if chunk is None else _Trickle(data, chunk)
    counts = {"shard_errors": 0}
    samples = list(tars.iter_samples(stream, "shard.tar", counts))
    return samples, counts["shard_errors"]


class _Trickle:
    """A pipe-like stream that returns at most ``chunk`` bytes per read."""

    def __init__(self, data, chunk):
        self.data, self.chunk, self.pos = data, chunk, 0

    def read(self, size=-1):
        size = len(self.data) - self.pos if size < 0 else min(size, self.chunk)
        out = self.data[self.pos:self.pos + size]
        self.pos += len(out)
        return out


def _members(seed: int):
    rng = random.Random(seed)
    members = []
    for i in range(40):
        folder = rng.choice(["", "a/", "deep/" * rng.randint(1, 30), "ünï/çødé/", "x" * rng.randint(90, 160) + "/"])
        key = f"{folder}{i:05d}"
        for ext in rng.sample(["jpg", "txt", "json", "cls", "seg.png"], rng.randint(1, 3)):
            size = rng.choice([0, 1, 511, 512, 513, 1024, rng.randint(0, 5000)])
            members.append((f"{key}.{ext}", bytes(rng.getrandbits(8) for _ in range(size))))
        if rng.random() < 0.2:
            members.append((f"{folder}dir{i}", "dir"))
        if rng.random() < 0.1:
            members.append((f"{key}.lnk", (rng.choice(["symlink", "hardlink"]), f"{key}.jpg")))
    return members


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
@pytest.mark.parametrize("seed", [0, 1])
def test_the_same_members_as_tarfile(fmt, seed):
    data = _archive(_members(seed), fmt)
    expected = tars._group(iter(_tarfile_members(data)), "shard.tar", {"shard_errors": 0})
    expected = list(expected)
    for chunk in (None, 7, 700):
        samples, errors = _ours(data, chunk)
        assert errors == 0
        assert samples == expected and len(samples) > 20


def test_a_global_pax_header_is_skipped():
    members = _members(4)
    data = _archive(members, tarfile.PAX_FORMAT, global_headers={"comment": "written by a shard writer"})
    assert data[156:157] == b"g"
    samples, errors = _ours(data)
    assert errors == 0 and samples == list(tars._group(iter(_tarfile_members(data)), "shard.tar", {}))


def test_compressed_shards_still_read():
    members = _members(3)
    samples, errors = _ours(_archive(members, tarfile.PAX_FORMAT, compress=True))
    assert errors == 0 and samples == list(tars._group(iter(_tarfile_members(
        _archive(members, tarfile.PAX_FORMAT))), "shard.tar", {}))


def test_base_256_and_signed_fields():
    assert tars._number(b"\x80" + (12345).to_bytes(11, "big")) == 12345
    assert tars._number(b"0000644\x00") == 0o644
    header = bytearray(_archive([("é" * 10 + ".txt", b"x")], tarfile.GNU_FORMAT)[:512])
    assert tars._checksum_ok(bytes(header))
    signed = sum(b - 256 if b >= 128 else b for b in header[:148] + header[156:]) + 256
    header[148:156] = f"{signed:06o}".encode() + b"\x00 " if signed >= 0 else header[148:156]
    assert tars._checksum_ok(bytes(header))
    header[0] ^= 1
    assert not tars._checksum_ok(bytes(header))


@pytest.mark.parametrize("damage", ["cut_data", "cut_header", "bad_checksum", "garbage", "empty"])
def test_damage_is_counted_and_earlier_samples_kept(damage):
    data = _archive([(f"{i:04d}.{ext}", b"%d" % i * 300) for i in range(6) for ext in ("jpg", "txt")],
                    tarfile.USTAR_FORMAT)
    third = 4 * 1024  # members are 1 header + 1 data block each: the third sample starts after 4 members
    damaged = {"cut_data": data[:third + 700], "cut_header": data[:third + 100],
               "bad_checksum": data[:third + 148] + b"7" + data[third + 149:],
               "garbage": b"\x07" * 2000, "empty": b""}[damage]
    samples, errors = _ours(damaged)
    assert errors == 1
    assert [s["__key__"] for s in samples] == ([] if damage in ("garbage", "empty") else ["0000", "0001"])


def test_pax_records_end_at_what_does_not_parse():
    assert tars._pax_records(b"14 path=p.jpg\nzz") == {"path": "p.jpg"}
    assert tars._pax_records(b"99 path=p.jpg\n") == {}


def test_a_negative_size_is_damage_not_a_read_of_everything():
    data = bytearray(_archive([("0000.jpg", b"x" * 10), ("0000.txt", b"a cat")], tarfile.USTAR_FORMAT))
    header = data[1024:1536]  # the second member's header
    header[124:136] = b"\xff" * 12
    header[148:156] = b" " * 8
    header[148:156] = f"{sum(header):06o}".encode() + b"\x00 "
    data[1024:1536] = header
    samples, errors = _ours(bytes(data))
    assert errors == 1 and samples == [{"__key__": "0000", "__url__": "shard.tar", "jpg": b"x" * 10}]
