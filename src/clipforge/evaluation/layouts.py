"""One reader per on-disk dataset layout; the benchmark and the trainer's evaluation both read through these.

Every reader takes the dataset's folder (or file / shard pattern) and a split and returns ``Found`` (or None when
the layout is not there): the samples, how to read one image, per-sample labels and/or captions, and any class
names or templates the data ships. Layouts:

- ``wds``: clip_benchmark's WebDataset export (``root/<split>/nshards.txt``, ``root/<split>/0.tar`` ...) or any
  WebDataset shards (``root`` a tar file, a folder of tars, a brace pattern, ``::``-joined): ``cls`` members are
  labels, ``txt`` members captions (one per line); ``classnames.txt`` / ``templates.txt`` next to the shards;
- ``cifar``: the python pickle batches, read without running code (``clipforge.data.pickles``);
- ``imagefolder``: ``root[/<split>]/<class>/<image>``, optional ``classnames.txt``; numeric folders are label ids;
- ``voc``: ``root/VOCdevkit/VOC2007/{Annotations,ImageSets/Main,JPEGImages}``;
- ``captions``: an annotation file of image/caption rows (CSV or TSV with a header, Flickr/Karpathy ``.txt``) or
  COCO-style JSON.
"""
from __future__ import annotations

import dataclasses
import glob
import io
import json
import logging
import os
import xml.etree.ElementTree as ET
from collections import OrderedDict
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from clipforge.data import shards as shard_lists
from clipforge.data import tar as tars
from clipforge.data.images import ImageReadError, read_image
from clipforge.data.pickles import load_data_pickle
from clipforge.data.tables import read_table
from clipforge.evaluation import suites

logger = logging.getLogger("clipforge.evaluation")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm")
_IMAGE_FIELDS = ("webp", "png", "jpg", "jpeg")
CLASSNAME_FILES = ("classnames.txt",)
TEMPLATE_FILES = ("templates.txt", "zeroshot_classification_templates.txt")


@dataclasses.dataclass
class Found:
    """A layout's content: ``read(samples[i]) -> PIL image``; ``labels`` (N,) class ids or (N, C) multi-hot;
    ``captions`` one list per sample; ``shard_errors`` damaged shards that were cut short."""

    samples: Sequence
    read: Callable[[Any], Image.Image]
    labels: torch.Tensor | None = None
    captions: list[list[str]] | None = None
    classnames: list[str] | None = None
    templates: list[str] | None = None
    kind: str = ""  # what the data says it is ("retrieval" in a clip_benchmark export), if anything
    shard_errors: int = 0
    names_from_folders: bool = False  # class names made from folder names, not given by a file


def read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def _first_file(folder: str, names: Sequence[str]) -> str | None:
    return next((os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))), None)


def side_files(folder: str) -> tuple[list[str] | None, list[str] | None]:
    """(class names, templates) shipped next to the data, if any."""
    names, templates = _first_file(folder, CLASSNAME_FILES), _first_file(folder, TEMPLATE_FILES)
    return (read_lines(names) if names else None), (read_lines(templates) if templates else None)


class OpenFile:
    """Reads a path (or ``(path, box)`` to crop); a class, so spawned DataLoader workers can pickle it."""

    def __call__(self, sample) -> Image.Image:
        path, box = sample if isinstance(sample, tuple) else (sample, None)
        image = read_image(path)
        return image.crop(box) if box is not None else image


class ReadBytes:
    """Decodes a sample held as bytes or as a ``(tar path, offset, size)`` location in a shard."""

    def __call__(self, sample) -> Image.Image:
        try:
            data = sample if isinstance(sample, (bytes, bytearray)) else tars.read_location(sample)
        except OSError as e:  # a shard truncated inside this image's bytes: skipped and counted like bad bytes
            raise ImageReadError("undecodable", str(e)) from None
        return read_image(data)


class ArrayImages:
    """Reads image ``i`` of an (N, H, W, 3) uint8 array."""

    def __init__(self, data: np.ndarray):
        self.data = data

    def __call__(self, index: int) -> Image.Image:
        return Image.fromarray(self.data[index])


# ------------------------------------------------------------------------------------------------ CIFAR


def _cifar_files(root: str, split: str) -> tuple[list[str], str] | None:
    for sub, names, meta in (("cifar-10-batches-py", {"train": [f"data_batch_{i}" for i in range(1, 6)],
                                                       "test": ["test_batch"]}, "batches.meta"),
                             ("cifar-100-python", {"train": ["train"], "test": ["test"]}, "meta")):
        for base in (os.path.join(root, sub), root):
            files = [os.path.join(base, n) for n in names.get(split, [])]
            if files and all(os.path.isfile(f) for f in files):
                return files, os.path.join(base, meta)
    return None


def read_cifar(root: str, split: str) -> Found | None:
    """CIFAR-10/100 python pickle batches, with the label names stored in the meta file."""
    found = _cifar_files(root, split)
    if found is None:
        return None
    files, meta_path = found
    arrays, labels = [], []
    for path in files:
        entry = load_data_pickle(path)
        if not isinstance(entry, dict) or "data" not in entry:
            raise ValueError(f"{path} is not a CIFAR batch (a dict with 'data' and 'labels')")
        arrays.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))  # (N, C, H, W)
        labels.extend(entry["labels"] if "labels" in entry else entry["fine_labels"])
    data = np.concatenate(arrays).transpose(0, 2, 3, 1)  # (N, H, W, C) for PIL
    names = None
    if os.path.exists(meta_path):
        meta = load_data_pickle(meta_path)
        names = meta.get("label_names") or meta.get("fine_label_names") if isinstance(meta, dict) else None
    return Found(list(range(len(data))), ArrayImages(data), labels=torch.tensor(labels), classnames=names)


# ----------------------------------------------------------------------------------------- image folders


def _class_folders(base: str) -> list[str]:
    return sorted(d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d)) and not d.startswith("."))


def read_imagefolder(root: str, split: str) -> Found | None:
    """``root[/split]/<class>/<image>`` with class names from ``classnames.txt`` or the folder names."""
    bases = [os.path.join(root, s) for s in (split, "val" if split == "test" else split)]
    split_names = {"train", "val", "validation", "test"}
    if split == "test" and os.path.isdir(root) and not split_names & set(_class_folders(root)):
        bases.append(root)  # a flat <class>/<image> folder is a test set
    base = next((b for b in bases if os.path.isdir(b) and _class_folders(b)), None)
    if base is None:
        return None
    folders = _class_folders(base)
    numeric = all(f.isdigit() for f in folders)
    if numeric:  # ImageNetV2 names its folders by label id; lexical order would scramble them
        folders = sorted(folders, key=int)
    paths, labels = [], []
    for index, folder in enumerate(folders):
        label = int(folder) if numeric else index
        for name in sorted(os.listdir(os.path.join(base, folder))):
            if name.lower().endswith(IMAGE_EXTENSIONS):
                paths.append(os.path.join(base, folder, name))
                labels.append(label)
    names, templates = side_files(root)
    from_folders = names is None
    if from_folders:
        names = None if numeric else [f.replace("_", " ") for f in folders]
    elif not numeric and len(names) != len(folders):
        raise ValueError(f"{os.path.join(root, 'classnames.txt')} lists {len(names)} class names but {base} has "
                         f"{len(folders)} class folders: give one name per folder, in sorted folder order")
    return Found(paths, OpenFile(), labels=torch.tensor(labels, dtype=torch.long), classnames=names,
                 templates=templates, names_from_folders=from_folders)


# ---------------------------------------------------------------------------------------------- VOC 2007


def read_voc(root: str, split: str, multilabel: bool) -> Found | None:
    """PASCAL VOC 2007: one sample per object box (cropped, single label) or per image (multi-hot labels)."""
    classes = suites.get_classnames("voc2007")
    base = os.path.join(root, "VOCdevkit", "VOC2007")
    split_file = os.path.join(base, "ImageSets", "Main", f"{classes[0]}_{split}.txt")
    if not os.path.exists(split_file):
        return None
    samples, targets = [], []
    for image_id in [line.split()[0] for line in read_lines(split_file)]:
        objects = ET.parse(os.path.join(base, "Annotations", image_id + ".xml")).findall("object")
        path = os.path.join(base, "JPEGImages", image_id + ".jpg")
        boxes = [(classes.index(o.find("name").text.strip()),
                  tuple(int(float(o.find("bndbox").find(k).text)) for k in ("xmin", "ymin", "xmax", "ymax")))
                 for o in objects]
        if multilabel:
            hot = torch.zeros(len(classes))
            hot[[c for c, _ in boxes]] = 1
            samples.append(path)
            targets.append(hot)
        else:
            samples.extend((path, box) for _, box in boxes)
            targets.extend(torch.tensor(c) for c, _ in boxes)
    return Found(samples, OpenFile(), labels=torch.stack(targets) if targets else None)


# ------------------------------------------------------------------------------------------- WebDataset


def _shard_urls(root: str, split: str) -> tuple[list[str], str, str] | None:
    """(shard paths, folder holding class names/templates, kind) for the forms ``read_wds`` accepts."""
    export = os.path.join(root, split, "nshards.txt")
    if os.path.isfile(export):  # clip_benchmark's export
        count = int(read_lines(export)[0])
        kind_file = os.path.join(root, "dataset_type.txt")
        kind = read_lines(kind_file)[0].lower() if os.path.exists(kind_file) else ""
        return [os.path.join(root, split, f"{i}.tar") for i in range(count)], root, kind
    if os.path.isdir(root):
        found = sorted(glob.glob(os.path.join(glob.escape(root), "*.tar")))
        return (found, root, "") if found else None
    if "{" in root or "::" in root or root.endswith((".tar", ".tar.gz", ".tgz")):
        urls = list(shard_lists.expand_shards([s for s in root.split("::") if s.strip()]).urls)
        return urls, os.path.dirname(urls[0]), ""
    return None


def _raw(value) -> bytes:
    return bytes(value) if isinstance(value, (bytes, bytearray)) else tars.read_location(value)


def _sample_targets(sample: dict) -> tuple[Any, list[str] | None]:
    """(label: class id, multi-hot tensor or None, captions or None); unreadable fields count as absent."""
    label = texts = None
    try:
        if "cls" in sample:
            label = int(_raw(sample["cls"]).decode("utf-8").strip())
        elif "npy" in sample:  # clip_benchmark's multi-label exports
            label = torch.from_numpy(np.load(io.BytesIO(_raw(sample["npy"])), allow_pickle=False)).float()
        if "txt" in sample:
            texts = [t.strip() for t in _raw(sample["txt"]).decode("utf-8").splitlines() if t.strip()] or None
    except (ValueError, UnicodeDecodeError, OSError):
        return None, None
    return label, texts


def read_wds(root: str, split: str) -> Found | None:
    """WebDataset shards (see module doc). Plain local tars are indexed (images are read on demand); compressed
    or remote shards are read into memory. A truncated shard keeps the samples before the damage, counted."""
    located = _shard_urls(root, split)
    if located is None:
        return None
    urls, folder, kind = located
    shard_lists.check_local_shards(shard_lists.expand_shards(urls))
    counts = {"shard_errors": 0}
    samples, labels, captions, skipped = [], [], [], 0
    for url in urls:
        local = os.path.isfile(url)
        stream = tars.index_samples(url, counts) if local and tars.is_plain_tar(url) else \
            tars.samples_of(url, counts, shard_lists.open_url)
        for sample in stream:
            image = next((sample[f] for f in _IMAGE_FIELDS if f in sample), None)
            label, texts = _sample_targets(sample)
            if image is None or (label is None and not texts):
                skipped += 1
                continue
            samples.append(image)
            labels.append(label)
            captions.append(texts)
    if skipped:
        logger.warning("%s: %d samples without an image or a readable label/caption were skipped", root, skipped)
    names, templates = side_files(folder)
    label_tensor = None
    if labels and all(v is not None for v in labels):
        label_tensor = torch.stack(labels) if isinstance(labels[0], torch.Tensor) else torch.tensor(labels)
    caption_lists = captions if captions and all(captions) else None
    return Found(samples, ReadBytes(), labels=label_tensor, captions=caption_lists, classnames=names,
                 templates=templates, kind=kind, shard_errors=counts["shard_errors"])


# ----------------------------------------------------------------------------------------------- captions


def read_captions(annotation: str, image_root: str) -> Found:
    """Image-caption pairs grouped per image, from a CSV/TSV (image + caption columns), a Flickr/Karpathy
    ``.txt`` or a ``.json`` file."""
    if annotation.endswith(".json"):
        pairs = _json_pairs(annotation)
    elif annotation.endswith(".txt") and not _looks_tabular(annotation):
        lines = read_lines(annotation)[1:]  # Flickr/Karpathy: a header, then name,caption with unquoted commas
        pairs = [(image, caption.strip()) for image, _, caption in (line.partition(",") for line in lines)]
    else:
        pairs = _table_pairs(annotation)
    grouped: OrderedDict[str, list[str]] = OrderedDict()
    for image, caption in pairs:
        if caption.strip():
            grouped.setdefault(image.strip(), []).append(caption.strip())
    folder = image_root
    if grouped and not os.path.exists(os.path.join(folder, next(iter(grouped)))):
        alt = os.path.join(image_root, "Images")  # the Kaggle Flickr archives put images under Images/
        folder = alt if os.path.isdir(alt) else folder
    paths = [name if os.path.isabs(name) else os.path.join(folder, name) for name in grouped]
    return Found(paths, OpenFile(), captions=list(grouped.values()))


def _looks_tabular(path: str) -> bool:
    with open(path, encoding="utf-8", errors="replace") as f:
        return "\t" in f.readline()


def _table_pairs(path: str) -> list[tuple[str, str]]:
    table = read_table(path)
    image_col = table.column("image", "filepath", "file_name", "filename", "path") or table.columns[0]
    caption_col = table.column("caption", "title", "text", "txt") or (table.columns[1] if len(table.columns) > 1
                                                                      else None)
    if caption_col is None:
        raise ValueError(f"{path}: no caption column (expected one named caption, title or text; the columns are "
                         f"{list(table.columns)} split by {table.separator!r})")
    if table.bad_rows:
        logger.warning("%s: skipped %d rows that are not UTF-8 text (lines %s)", path, len(table.bad_rows),
                       ", ".join(map(str, table.bad_rows[:10])))
    last = table.columns.index(caption_col) == len(table.columns) - 1
    pairs = []
    for row in table.rows:
        caption = row.get(caption_col) or ""
        if last and row.get(None):  # unquoted commas: everything after the image column belongs to the caption
            caption = table.separator.join([caption, *row[None]])
        pairs.append((row.get(image_col) or "", caption))
    return pairs


def _json_pairs(path: str) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if isinstance(data, dict) and "annotations" in data:  # COCO: images[id, file_name] + annotations
        names = {img["id"]: img["file_name"] for img in data["images"]}
        return [(names[a["image_id"]], a["caption"]) for a in data["annotations"]]
    pairs = []
    for item in data:  # [{"image": ..., "caption": str | [str]}]
        captions = item["caption"] if isinstance(item["caption"], list) else [item["caption"]]
        pairs.extend((item["image"], c) for c in captions)
    return pairs


__all__ = ["Found", "read_cifar", "read_imagefolder", "read_voc", "read_wds", "read_captions", "side_files",
           "read_lines", "IMAGE_EXTENSIONS"]
