"""TFRecord files and the ``tf.train.Example`` messages in them, read without TensorFlow.

A TFRecord file is a sequence of records: an 8-byte little-endian payload length, the masked CRC-32C of those 8
bytes, the payload, the masked CRC-32C of the payload. ``record_locations`` walks a file by seeking over payloads
and checks every length's CRC (a cheap 8-byte check that catches a cut or garbled file); payload CRCs are not
checked (that would read every image byte twice in Python).

``parse_example`` decodes the protobuf wire format of ``tf.train.Example`` (features -> map of name ->
bytes/float/int64 list) directly; ``wanted`` names the features to keep (the others are skipped, not decoded or
copied). Anything that does not parse as an Example is a ``RecordError``.
"""
from __future__ import annotations

import struct
from typing import Iterable, Iterator

from clipforge.data.tar import read_location

_HEADER = 12  # uint64 length + uint32 masked CRC of the length
_FOOTER = 4  # uint32 masked CRC of the payload


class RecordError(ValueError):
    """A TFRecord file that is cut short or whose framing does not check out."""


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``: pure Python, meant for the 8-byte length fields."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC: rotate right by 15 and add a constant, so CRCs of CRCs stay informative."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record_locations(path: str) -> Iterator[tuple[int, int]]:
    """``(payload offset, payload length)`` of each record in ``path``, in order; a damaged or cut record raises
    ``RecordError`` after the good ones before it were yielded."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        position = 0
        while position < size:
            f.seek(position)
            header = f.read(_HEADER)
            if len(header) < _HEADER:
                raise RecordError(f"{path}: record header cut short at byte {position}")
            length_bytes = header[:8]
            if struct.unpack("<I", header[8:])[0] != masked_crc(length_bytes):
                raise RecordError(f"{path}: record length at byte {position} fails its CRC (damaged file)")
            length = struct.unpack("<Q", length_bytes)[0]
            end = position + _HEADER + length + _FOOTER
            if end > size:
                raise RecordError(f"{path}: record at byte {position} runs past the end of the file (cut short)")
            yield position + _HEADER, length
            position = end


def read_payload(path: str, offset: int, length: int) -> bytes:
    """The payload at a location ``record_locations`` found; a file cut short since raises ``OSError``."""
    return read_location((path, offset, length))


def iter_payloads(path: str) -> Iterator[tuple[int, int, bytes]]:
    """``(offset, length, payload)`` for each record of ``path``: one sequential read of the file."""
    with open(path, "rb") as f:
        for offset, length in record_locations(path):
            f.seek(offset)
            yield offset, length, f.read(length)


# ----------------------------------------------------------------------------------- protobuf wire format


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise RecordError("protobuf varint cut short")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise RecordError("protobuf varint longer than 10 bytes")


def _fields(data: memoryview) -> Iterator[tuple[int, int, object]]:
    """``(field number, wire type, value)``: ints for varint/fixed fields, memoryviews for length-delimited."""
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            size, pos = _varint(data, pos)
            if pos + size > end:
                raise RecordError("protobuf field runs past its message")
            value, pos = data[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        else:
            raise RecordError(f"unsupported protobuf wire type {wire}")
        if pos > end:
            raise RecordError("protobuf field runs past its message")
        yield number, wire, value


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


_ITEM_WIRES = {1: (2,), 2: (2, 5), 3: (2, 0)}  # bytes: length-delimited; floats, int64: packed or one by one


def _feature_values(feature: memoryview) -> list:
    """The values of one ``tf.train.Feature``: bytes (1), float (2) or int64 (3) list, packed or not."""
    for kind, kind_wire, inner in _fields(feature):
        if kind not in _ITEM_WIRES or kind_wire != 2:
            raise RecordError(f"not a tf.train.Feature (field {kind}, wire type {kind_wire})")
        values: list = []
        for number, wire, item in _fields(inner):
            if number != 1:
                continue
            if wire not in _ITEM_WIRES[kind]:
                raise RecordError(f"feature list item of wire type {wire} where {_ITEM_WIRES[kind]} belong")
            if kind == 1:
                values.append(bytes(item))
            elif kind == 2:
                raw = bytes(item)
                if len(raw) % 4:
                    raise RecordError("packed float list whose length is not a multiple of 4")
                values.extend(struct.unpack(f"<{len(raw) // 4}f", raw))
            elif kind == 3:
                if wire == 2:
                    pos = 0
                    while pos < len(item):
                        number_value, pos = _varint(item, pos)
                        values.append(_signed64(number_value))
                else:
                    values.append(_signed64(item))
        return values
    return []  # a Feature with no list set


def parse_example(payload: bytes, wanted: Iterable[str] | None = None) -> dict[str, list]:
    """The features of a serialized ``tf.train.Example`` as ``{name: list of bytes | float | int}``; only the
    names in ``wanted`` when given."""
    try:
        return _parse_example(payload, None if wanted is None else set(wanted))
    except (UnicodeDecodeError, struct.error) as e:
        raise RecordError(f"not a tf.train.Example ({e})") from None


def _parse_example(payload: bytes, keep: set[str] | None) -> dict[str, list]:
    out: dict[str, list] = {}
    for number, wire, features in _fields(memoryview(payload)):
        if number != 1 or wire != 2:
            continue
        for entry_number, entry_wire, entry in _fields(features):
            if entry_number != 1 or entry_wire != 2:
                continue
            name, value = None, None
            for part, part_wire, content in _fields(entry):
                if part == 1 and part_wire == 2:
                    name = bytes(content).decode("utf-8")
                elif part == 2 and part_wire == 2:
                    value = content
            if name is not None and (keep is None or name in keep):
                out[name] = _feature_values(value) if value is not None else []
    return out
