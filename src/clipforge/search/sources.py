"""What a collection holds: an image folder, a CSV/TSV of paths, or WebDataset shards, as a list of ``Item``.

``list_items(src)`` decides the kind from ``src`` (a folder; a ``.csv``/``.tsv`` file; a ``.tar`` file, a brace
pattern or a ``wds:`` prefix) and returns one ``Item`` per image with what incremental indexing compares: the
``stamp`` (size and mtime of the file that holds the image: the image itself, or its shard). Listing never reads
image bytes, except for shards that are compressed or remote (they are streamed, their images kept in memory).

Keys are stable names: a folder item's key is its path relative to the folder (``/`` separated), a table item's key
is the path as written in the table, a shard item's key is ``<shard file name>/<sample key>``.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from clipforge.data import shards as shard_lists
from clipforge.data import tables
from clipforge.data import tar as tars

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_SHARD_IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif")
_SHARD_TEXT_FIELDS = ("txt", "caption", "text")
_PATH_COLUMNS = ("filepath", "path", "image", "image_path", "file", "filename", "url")
_CAPTION_COLUMNS = ("caption", "title", "text", "txt", "description")


class SourceError(ValueError):
    """The collection cannot be listed: the message names the problem and the fix."""


@dataclasses.dataclass(frozen=True)
class Item:
    """One image of a collection. ``location`` is what ``read_bytes`` needs: a file path, a ``(tar, offset, size)``
    triple, or the bytes themselves (streamed shards). ``stamp`` = (size, mtime_ns) of the holding file."""

    key: str
    location: object
    stamp: tuple[int, int]
    caption: str | None = None
    shard: str | None = None


@dataclasses.dataclass(frozen=True)
class Collection:
    kind: str  # "folder" | "table" | "shards"
    root: str
    items: tuple[Item, ...]
    problems: tuple[str, ...] = ()  # rows without a path, damaged shards: listed in the report


def read_bytes(location: object) -> bytes:
    """The encoded bytes of an item (raises OSError when the file is gone or the shard truncated)."""
    if isinstance(location, (bytes, bytearray)):
        return bytes(location)
    if isinstance(location, tuple):
        return tars.read_location(location)
    with open(location, "rb") as f:
        return f.read()


def _stamp(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def list_folder(root: str) -> Collection:
    items = []
    root = os.path.abspath(root)  # stored paths stay valid from any working directory (the service reads them)
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            path = os.path.join(folder, name)
            try:
                stamp = _stamp(path)
            except OSError:  # vanished or a dangling link: not part of the collection
                continue
            items.append(Item(Path(os.path.relpath(path, root)).as_posix(), path, stamp))
    return Collection("folder", root, tuple(items))


def list_table(path: str, path_column: str | None = None, caption_column: str | None = None) -> Collection:
    table = tables.read_table(path)
    path_col = path_column or table.column(*_PATH_COLUMNS)
    if path_col is None or path_col not in table.columns:
        raise SourceError(f"{path}: no image path column among {', '.join(table.columns)}; name it one of "
                          f"{', '.join(_PATH_COLUMNS)} or pass --path-column")
    caption_col = caption_column or table.column(*_CAPTION_COLUMNS)
    if caption_column and caption_column not in table.columns:
        raise SourceError(f"{path}: --caption-column {caption_column!r} is not a column ({', '.join(table.columns)})")
    base = os.path.dirname(os.path.abspath(path))
    items, problems, seen = [], [f"line {n}: not UTF-8" for n in table.bad_rows], set()
    for number, row in enumerate(table.rows, start=2):
        written = (row.get(path_col) or "").strip()
        if not written:
            problems.append(f"line {number}: empty {path_col}")
            continue
        if written in seen:
            problems.append(f"line {number}: {written} listed again (first row kept)")
            continue
        seen.add(written)
        full = written if os.path.isabs(written) else os.path.join(base, written)
        try:
            stamp = _stamp(full)
        except OSError:
            stamp = (-1, -1)  # missing: read fails later, counted as unreadable
        caption = row.get(caption_col) if caption_col else None
        items.append(Item(written, full, stamp, caption=caption))
    return Collection("table", path, tuple(items), tuple(problems))


def _sample_item(sample: dict, shard: str, stamp: tuple[int, int]) -> Item | None:
    image_field = next((f for f in _SHARD_IMAGE_FIELDS if f in sample), None)
    if image_field is None:
        return None
    text_field = next((f for f in _SHARD_TEXT_FIELDS if f in sample), None)
    caption = None
    if text_field is not None:
        value = sample[text_field]
        raw = value if isinstance(value, bytes) else read_bytes(value)
        caption = raw.decode("utf-8", errors="replace").strip()
    name = os.path.basename(shard)
    return Item(f"{name}/{sample['__key__']}", sample[image_field], stamp, caption=caption, shard=name)


def list_shards(spec: str) -> Collection:
    shard_list = shard_lists.expand_shards([spec])
    shard_lists.check_local_shards(shard_list)
    urls = shard_list.urls
    names = [os.path.basename(u) for u in urls]
    if len(set(names)) != len(names):
        raise SourceError(f"{spec}: two shards share a file name; keys are <shard name>/<sample key>, so shard "
                          "names must be unique")
    items, counts, problems = [], {"shard_errors": 0}, []
    for url in urls:
        local = os.path.isfile(url)
        stamp = _stamp(url) if local else (-1, -1)
        before = counts["shard_errors"]
        samples = tars.index_samples(url, counts) if local and tars.is_plain_tar(url) else \
            tars.samples_of(url, counts, shard_lists.open_url)
        for sample in samples:
            item = _sample_item(sample, url, stamp)
            if item is None:
                problems.append(f"{os.path.basename(url)}/{sample['__key__']}: no image field")
            else:
                items.append(item)
        if counts["shard_errors"] > before:
            problems.append(f"{url}: damaged shard, the samples before the damage were kept")
    return Collection("shards", spec, tuple(items), tuple(problems))


def list_items(src: str, path_column: str | None = None, caption_column: str | None = None) -> Collection:
    """The collection at ``src`` (see module doc); errors name what was expected."""
    spec = src[4:] if src.startswith("wds:") else src
    if src.startswith("wds:") or spec.endswith((".tar", ".tgz", ".tar.gz")) or "{" in spec or "::" in spec:
        return list_shards(spec)
    if os.path.isdir(src):
        return list_folder(src)
    if os.path.isfile(src):
        if src.lower().endswith((".csv", ".tsv", ".txt")):
            return list_table(src, path_column, caption_column)
        raise SourceError(f"{src} is a file clipforge does not read as a collection: give a folder of images, a "
                          ".csv/.tsv table of paths or WebDataset .tar shards")
    raise FileNotFoundError(f"{src} does not exist: give a folder of images, a .csv/.tsv table of paths or "
                            "WebDataset shards (e.g. 'data/shard-{000000..000009}.tar')")
