"""Reading a split of a hub dataset from the cache Hugging Face ``datasets`` wrote, without ``datasets``.

``load_dataset("ORG/NAME", cache_dir=ROOT)`` (clip_benchmark's Winoground) leaves the prepared data in
``ROOT/ORG___NAME/<config>/<version>/<hash>/``: ``dataset_info.json`` (features, and per split its examples and
``shard_lengths``) and the split's rows as Arrow IPC *streams*: ``<name>-<split>.arrow``, or
``<name>-<split>-00000-of-00003.arrow`` ... when it was written in several shards (``shard_lengths`` has more than
one entry). An ``Image`` column is a struct of ``bytes`` (the encoded file) and ``path`` (set instead of the bytes
when a loading script pointed at a file on disk). Reading needs pyarrow only; rows stay in the memory-mapped files
until an image is decoded.
"""
from __future__ import annotations

import glob
import json
import os
import re
from typing import Sequence

from PIL import Image, ImageOps

from clipforge._optional import require
from clipforge.data.images import ImageReadError, read_image
from clipforge.evaluation.datasets import DatasetNotFound

_HINT = ("reading the Hugging Face datasets cache needs pyarrow: pip install pyarrow (part of 'clipforge[search]'; "
         "'datasets' installs it too)")
_CAPITALS = (re.compile(r"([A-Z]+)([A-Z][a-z])"), re.compile(r"([a-z\d])([A-Z])"))


def _snake(name: str) -> str:
    """The lower-case, '_'-separated form ``datasets`` gives a repository name in its folder and file names."""
    for pattern in _CAPITALS:
        name = pattern.sub(r"\1_\2", name)
    return name.lower()


def cache_folder(root: str, repo_id: str) -> str:
    """``ROOT/ORG___NAME``: where ``datasets`` keeps every prepared version of ``repo_id``."""
    org, _, name = repo_id.rpartition("/")
    return os.path.join(root, f"{org}___{_snake(name)}" if org else _snake(name))


def _info(folder: str) -> dict | None:
    try:
        with open(os.path.join(folder, "dataset_info.json"), encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict):
        return None
    if isinstance(info.get("splits"), list):  # the list form SplitDict also reads
        info["splits"] = {entry.get("name"): entry for entry in info["splits"] if isinstance(entry, dict)}
    return info if isinstance(info.get("splits"), dict) else None


def prepared_folder(root: str, repo_id: str, name: str) -> tuple[str, dict]:
    """The newest complete ``<config>/<version>/<hash>`` folder of ``repo_id`` under ``root`` and its
    ``dataset_info.json``, as ``datasets`` picks the cache offline (latest modified). None there: DatasetNotFound
    (one line for dataset ``name``: where the cache was looked for and how to make it)."""
    base = cache_folder(root, repo_id)
    found = [(path, info) for path in glob.glob(os.path.join(glob.escape(base), "*", "*", "*"))
             if os.path.isdir(path) and not path.endswith(".incomplete") and (info := _info(path)) is not None]
    if not found:
        what = "has no prepared copy (no <config>/<version>/<hash>/dataset_info.json in it)" \
            if os.path.isdir(base) else "not found"
        raise DatasetNotFound(f"dataset '{name}': {base} {what}; expected the Hugging Face datasets cache of "
                              f"{repo_id} there: create it with datasets.load_dataset(\"{repo_id}\", "
                              f"cache_dir=\"{root}\")")
    return max(found, key=lambda item: os.path.getmtime(item[0]))


def split_files(folder: str, info: dict, split: str, repo_id: str) -> list[str]:
    """The Arrow files of ``split``, in order (``datasets``' names for one file or ``-SSSSS-of-NNNNN`` shards)."""
    splits = info["splits"]
    if split not in splits:
        raise ValueError(f"{folder}/dataset_info.json: {repo_id} has no '{split}' split (it has: "
                         f"{', '.join(sorted(splits))})")
    entry = splits[split] if isinstance(splits[split], dict) else {}
    prefix = os.path.join(folder, f"{_snake(entry.get('dataset_name') or repo_id.rpartition('/')[2])}-{split}")
    shards = entry.get("shard_lengths") or []
    files = [f"{prefix}-{i:05d}-of-{len(shards):05d}.arrow" for i in range(len(shards))] if len(shards) > 1 \
        else [f"{prefix}.arrow"]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise DatasetNotFound(f"{missing[0]} is missing ({len(missing)} of the {len(files)} Arrow file(s) "
                              f"dataset_info.json lists for '{split}'); delete {folder} and load {repo_id} again")
    return files


def _exif_upright(image: Image.Image) -> Image.Image:
    """Turned as its EXIF orientation says (as ``datasets``' Image feature decodes), then RGB."""
    if image.getexif().get(Image.ExifTags.Base.Orientation) is not None:
        image = ImageOps.exif_transpose(image)
    return image.convert("RGB")


class ArrowImages:
    """Decodes the image of a sample ``(file index, row, column)``; files are opened (memory-mapped) on first use in
    each process, so DataLoader workers receive only the paths."""

    def __init__(self, files: Sequence[str]):
        self.files = list(files)
        self._tables: dict[int, object] = {}

    def __getstate__(self):
        return {"files": self.files, "_tables": {}}

    def table(self, index: int):
        if index not in self._tables:
            pa = require("pyarrow", "pyarrow.ipc", hint=_HINT)
            self._tables[index] = pa.ipc.open_stream(pa.memory_map(self.files[index])).read_all()
        return self._tables[index]

    def __call__(self, sample: tuple[int, int, str]) -> Image.Image:
        index, row, column = sample
        value = self.table(index).column(column)[row].as_py() or {}
        data = value.get("bytes") or value.get("path")
        if data is None:  # skipped and counted like an undecodable file
            raise ImageReadError("missing", f"{self.files[index]} row {row}: '{column}' has neither bytes nor a path")
        return read_image(data, convert=_exif_upright)


def read_columns(files: Sequence[str], columns: Sequence[str], text: Sequence[str], repo_id: str,
                 ) -> tuple[ArrowImages, list[tuple[int, int]], dict[str, list]]:
    """(image reader, ``(file index, row)`` of every row, the ``text`` columns as lists). A file without one of
    ``columns`` is a one-line ValueError: the cache holds another dataset."""
    images = ArrowImages(files)
    rows, values = [], {name: [] for name in text}
    for index, path in enumerate(files):
        try:
            table = images.table(index)
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError, a truncated file an OSError
            raise ValueError(f"{path} is not a readable Arrow stream ({e}); delete its folder and load {repo_id} "
                             "again") from None
        missing = [name for name in columns if name not in table.column_names]
        if missing:
            raise ValueError(f"{path} has no column(s) {', '.join(missing)} (it has {', '.join(table.column_names)})"
                             f": this cache does not hold {repo_id}; load it again into its own folder")
        rows += [(index, row) for row in range(table.num_rows)]
        for name in text:
            values[name] += table.column(name).to_pylist()
    return images, rows, values
