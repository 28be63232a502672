"""The TensorFlow Datasets layout: what ``tensorflow_datasets`` leaves in its data dir after ``download_and_prepare``,
read without TensorFlow. clip_benchmark reads ``vtab/cub`` and ``vtab/inaturalist`` only this way (through
task_adaptation, with ``--dataset_root`` as the TFDS data dir), so the folder a clip_benchmark user has is this one:

    <root>/<builder>/<version>/dataset_info.json, features.json, [label.labels.txt,]
                               <builder>-<split>.tfrecord-00000-of-000NN ...

``SOURCES`` says, as data, which builder and version each dataset name reads and which TFDS split expression
(task_adaptation's VTAB splits, e.g. ``train[:90%]``) each clipforge split is. Percent slices round to the closest
example as TFDS does, and the records come in TFDS' reading order (shard files interleaved 16 records at a time).
Records hold ``tf.train.Example`` messages (``clipforge.data.tfrecord``); the image feature is the encoded file,
decoded to TensorFlow's RGB pixels (JPEG through simplejpeg with libjpeg's fast integer DCT, others with Pillow).
Loading reads every record once to learn its label. Class names are the ``label`` feature's (``label.labels.txt`` or
the names in ``features.json``); a label feature with only a class count gets the names ``"0"``, ``"1"``, ... as in
TFDS (and so in clip_benchmark's prompts); a ``classnames.txt`` in the dataset folder overrides them.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import re

import torch
from PIL import Image

from clipforge.data import tfrecord
from clipforge.data.images import ImageReadError, read_image
from clipforge.evaluation.layouts import Found

logger = logging.getLogger("clipforge.evaluation")


@dataclasses.dataclass(frozen=True)
class TfdsSource:
    """A TFDS builder, the version clip_benchmark reads, and the TFDS split expression of each clipforge split."""

    builder: str
    version: str
    splits: dict[str, str]
    image: str = "image"
    label: str = "label"


def _vtab_splits(test: str) -> dict[str, str]:
    """task_adaptation's splits for a set without a validation split: 90% of train to train, the rest to val."""
    return {"train": "train[:90%]", "val": "train[90%:]", "trainval": "train", "test": test}


SOURCES: dict[str, TfdsSource] = {
    "vtab/cub": TfdsSource("caltech_birds2011", "0.1.1", _vtab_splits("test")),
    "vtab/inaturalist": TfdsSource("i_naturalist2017", "0.1.0", _vtab_splits("validation")),
}

HINT = ("{root}/<builder>/<version>/ (TensorFlow Datasets' data dir after download_and_prepare, as clip_benchmark "
        "reads it: e.g. {root}/caltech_birds2011/0.1.1/dataset_info.json + *.tfrecord-* shards)")

_SPLIT = re.compile(r"^(?P<name>[\w.-]+)(?:\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\])?$")


class RecordImages:
    """Decodes the image feature of the record at ``(path, offset, length)``; a class, so spawned DataLoader
    workers can pickle it."""

    def __init__(self, feature: str):
        self.feature = feature

    def __call__(self, location: tuple[str, int, int]) -> Image.Image:
        path, offset, length = location
        try:
            values = tfrecord.parse_example(tfrecord.read_payload(path, offset, length), (self.feature,))
            if not values.get(self.feature):
                raise ValueError(f"no '{self.feature}' feature")
            return decode_like_tensorflow(values[self.feature][0])
        except (OSError, ValueError) as e:  # cut file, damaged record, undecodable image: skipped and counted
            raise ImageReadError("undecodable", f"{path}: record at byte {offset}: {e}") from None


_warned_decoder = False


def decode_like_tensorflow(data: bytes) -> Image.Image:
    """An encoded image as RGB, with TensorFlow's pixels: ``tf.io.decode_image`` decodes JPEG with libjpeg's fast
    integer DCT and fancy upsampling (Pillow's accurate DCT differs by a few levels), which simplejpeg reproduces
    exactly; other formats are lossless and decode the same in Pillow."""
    global _warned_decoder
    if data[:3] == b"\xff\xd8\xff":
        try:
            import simplejpeg
        except ImportError:
            if not _warned_decoder:
                _warned_decoder = True
                logger.warning("simplejpeg is not installed: JPEGs of TFDS sets decode with Pillow, a few levels "
                               "off TensorFlow's pixels (pip install 'clipforge[eval]' for the same pixels)")
        else:
            try:
                return Image.fromarray(simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=True,
                                                              fastupsample=False))
            except ValueError:  # e.g. CMYK: Pillow converts it
                pass
    return read_image(data)


def _version_dir(root: str, source: TfdsSource) -> str | None:
    """The folder holding the builder's ``dataset_info.json``: ``root`` as the data dir, the builder's folder or
    the version folder itself. Another version of the builder is a one-line error (the splits differ)."""
    for folder in (os.path.join(root, source.builder, source.version), os.path.join(root, source.version), root):
        if os.path.isfile(os.path.join(folder, "dataset_info.json")):
            info = _info(folder)
            if info.get("name") == source.builder and str(info.get("version", source.version)) == source.version:
                return folder
    others = sorted({os.path.basename(os.path.dirname(p)) for base in (root, os.path.join(root, source.builder))
                     for p in glob.glob(os.path.join(glob.escape(base), "*", "dataset_info.json"))
                     if _info(os.path.dirname(p)).get("name") == source.builder})
    if others:
        raise ValueError(f"{root} holds {source.builder} version {', '.join(others)}, but this dataset reads version "
                         f"{source.version} (the one clip_benchmark's VTAB loader asks for): prepare that version "
                         f"with tensorflow_datasets (tfds.builder('{source.builder}:{source.version}', "
                         f"data_dir=...).download_and_prepare())")
    return None


def _info(folder: str) -> dict:
    path = os.path.join(folder, "dataset_info.json")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not readable JSON ({e}); prepare the dataset again with tensorflow_datasets") \
            from None


def _shards(folder: str, info: dict, source: TfdsSource, split: str) -> list[str]:
    kind = info.get("fileFormat", "tfrecord")
    if kind != "tfrecord":
        raise ValueError(f"{folder} stores its records as {kind}; clipforge reads TFDS' tfrecord shards: prepare it "
                         f"with download_and_prepare(file_format='tfrecord')")
    paths = sorted(glob.glob(os.path.join(glob.escape(folder), f"{glob.escape(source.builder)}-{split}.tfrecord-*")))
    if not paths:
        known = [s.get("name") for s in info.get("splits", [])]
        raise ValueError(f"{folder} has no '{split}' split shards (its splits: {', '.join(map(str, known))}); "
                         "prepare the dataset again with tensorflow_datasets")
    return paths


def _bound(text: str | None, total: int, default: int) -> int:
    if not text:
        return default
    value = int(round(int(text[:-1]) * total / 100.0)) if text.endswith("%") else int(text)
    return max(0, min(total, value + total if value < 0 else value))


def class_names(folder: str, label: str) -> list[str] | None:
    """The label feature's names: ``<label>.labels.txt``, else names or a class count from ``features.json``."""
    names_file = os.path.join(folder, f"{label}.labels.txt")
    if os.path.isfile(names_file):
        with open(names_file, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    path = os.path.join(folder, "features.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        features = json.load(f)
    spec = features.get("featuresDict", {}).get("features", {}).get(label, {}).get("classLabel")
    if spec is None:  # TFDS before 4.5: {"type": ..., "content": {name: {"type": ..., "content": {...}}}}
        spec = features.get("content", {}).get(label, {}).get("content", {})
    names = spec.get("names")
    count = spec.get("numClasses", spec.get("num_classes"))
    if names:
        return list(names)
    return [str(i) for i in range(int(count))] if count is not None else None


def _shard_lengths(info: dict, split: str, count: int) -> list[int] | None:
    """Records per shard file as ``dataset_info.json`` lists them (None when it does not, or not for every file)."""
    for entry in info.get("splits", []):
        if entry.get("name") == split:
            lengths = [int(n) for n in entry.get("shardLengths", [])]
            return lengths if len(lengths) == count else None
    return None


def _read_shard(path: str, label: str) -> tuple[list[tuple[tuple[str, int, int], int]], bool]:
    """``((path, offset, length), label)`` of each record up to the first damaged one; and whether one was."""
    records = []
    try:
        for offset, length, payload in tfrecord.iter_payloads(path):
            values = tfrecord.parse_example(payload, (label,)).get(label)
            if not values:
                raise tfrecord.RecordError(f"{path}: record at byte {offset} has no '{label}' feature")
            records.append(((path, offset, length), int(values[0])))
    except tfrecord.RecordError as e:
        logger.warning("%s; the records after it in this shard are skipped", e)
        return records, True
    return records, False


def interleave(files: list[list], cycle: int = 16, block: int = 16) -> list:
    """The order of ``tf.data``'s deterministic ``interleave`` (TFDS reads shard files this way: 16 files open,
    16 records from each in turn). Stepped one record at a time as tf.data does: a slot whose file has run out is
    closed when next visited and refilled with the next file the next time the cycle comes back to it."""
    slots: list[list | None] = [None] * cycle
    positions = [0] * cycle
    pending = iter(files)
    end_of_input, open_files, index, in_block = False, 0, 0, 0
    out: list = []
    while not end_of_input or open_files:
        current = slots[index]
        if current is not None and positions[index] < len(current):
            out.append(current[positions[index]])
            positions[index] += 1
            in_block += 1
            if in_block == block:
                index, in_block = (index + 1) % cycle, 0
        elif current is not None:  # ran out: close it and move on
            slots[index], open_files = None, open_files - 1
            index, in_block = (index + 1) % cycle, 0
        elif not end_of_input:
            opened = next(pending, None)
            if opened is None:
                end_of_input = True
            else:
                slots[index], positions[index], open_files = opened, 0, open_files + 1
        else:
            index, in_block = (index + 1) % cycle, 0
    return out


def read_tfds(root: str, split: str, source: TfdsSource) -> Found | None:
    """The records of ``split`` (a clipforge split name, mapped through ``source.splits``) under ``root``, in the
    order TFDS reads them (``interleave``). Percent slices are taken over the split's record count in
    ``dataset_info.json`` (the split TFDS would read even if a shard here is damaged); damaged records are dropped
    afterwards and counted."""
    folder = _version_dir(root, source) if os.path.isdir(root) else None
    if folder is None:
        return None
    if split not in source.splits:
        raise ValueError(f"split '{split}' is not one of {', '.join(source.splits)} for {source.builder}")
    match = _SPLIT.match(source.splits[split])
    if match is None:
        raise ValueError(f"cannot read the TFDS split expression '{source.splits[split]}'")
    info = _info(folder)
    paths = _shards(folder, info, source, match["name"])
    shards, damaged = [], 0
    for path in paths:
        records, broken = _read_shard(path, source.label)
        shards.append(records)
        damaged += broken
    lengths = _shard_lengths(info, match["name"], len(paths)) or [len(records) for records in shards]
    total = sum(lengths)
    start, stop = _bound(match["start"], total, 0), _bound(match["stop"], total, total)
    files, first = [], 0  # each file's records inside [start, stop) of the split's global record order
    for records, length in zip(shards, lengths):
        lo, hi = max(start - first, 0), min(stop - first, length)
        if hi > lo:
            files.append(records[lo:hi])  # a damaged shard holds fewer records: its missing ones drop out
        first += length
    chosen = interleave(files)
    names = class_names(folder, source.label)
    if names is not None and all(name.isdigit() for name in names):
        logger.warning("%s stores no class names for its labels, only ids: prompts name the classes '0', '1', ... "
                       "as in clip_benchmark. For real names put a classnames.txt (one name per line, in label "
                       "order) in %s", source.builder, root)
    return Found([location for location, _ in chosen], RecordImages(source.image),
                 labels=torch.tensor([label for _, label in chosen], dtype=torch.long), classnames=names,
                 shard_errors=damaged)
