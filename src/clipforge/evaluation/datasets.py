"""Benchmark datasets read from local folders in their published layouts.

Layouts (``root`` is the dataset's folder):
- ``wds``: clip_benchmark's WebDataset export: ``root/<split>/nshards.txt``, ``root/<split>/0.tar`` ...,
  optional ``classnames.txt``, ``zeroshot_classification_templates.txt``, ``dataset_type.txt``.
- ``cifar``: the python pickle batches (``cifar-10-batches-py/test_batch`` or ``cifar-100-python/test``).
- ``imagefolder``: ``root[/<split>]/<class>/<image>``, optional ``classnames.txt`` (one per line, in sorted
  folder order); folders named 0..N-1 are read as numeric labels (the ImageNetV2 layout).
- ``voc``: ``root/VOCdevkit/VOC2007/{Annotations,ImageSets/Main,JPEGImages}``.
- ``captions``: an annotation file of image,caption lines (Flickr/Karpathy ``.txt``, ``.csv``) or COCO-style JSON.

Images that fail to decode are skipped and counted: the dataset returns None and ``collate_skipping`` drops it.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import pickle
import tarfile
import xml.etree.ElementTree as ET
from collections import OrderedDict
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from clipforge.evaluation import suites

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm")


class DatasetNotFound(FileNotFoundError):
    """The dataset is not on disk in any layout clipforge reads; the message says where to put it."""


@dataclasses.dataclass
class LoadedDataset:
    """A dataset ready to evaluate: the torch dataset plus what the task needs to know about it."""

    name: str
    task: str  # "classification" | "retrieval"
    dataset: torch.utils.data.Dataset
    classnames: list[str] | None = None
    templates: list[str] | None = None
    multilabel: bool = False
    source: str = ""  # the folder or file it was read from (part of the feature-cache key)


class ImageDataset(torch.utils.data.Dataset):
    """Samples read by ``read(sample) -> PIL.Image``; a sample that cannot be read yields None (counted later)."""

    def __init__(self, samples: Sequence, targets: Sequence, read: Callable, transform: Callable | None):
        if len(samples) != len(targets):
            raise ValueError(f"{len(samples)} images but {len(targets)} targets")
        self.samples, self.targets, self.read, self.transform = samples, targets, read, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        try:
            image = self.read(self.samples[index]).convert("RGB")
        except (OSError, ValueError, SyntaxError, tarfile.TarError, Image.DecompressionBombError):
            return None  # undecodable: skipped and counted by collate_skipping
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]


def collate_skipping(batch: list):
    """Stack a batch, dropping None samples: returns (images, targets, skipped)."""
    kept = [item for item in batch if item is not None]
    skipped = len(batch) - len(kept)
    if not kept:
        return torch.empty(0), [], skipped
    images = torch.stack([torch.as_tensor(item[0]) for item in kept])
    first = kept[0][1]
    if isinstance(first, (list, tuple)):
        return images, [list(item[1]) for item in kept], skipped
    if isinstance(first, torch.Tensor):
        return images, torch.stack([item[1] for item in kept]), skipped
    return images, torch.tensor([int(item[1]) for item in kept]), skipped


def _open_file(sample) -> Image.Image:
    path, box = sample if isinstance(sample, tuple) else (sample, None)
    image = Image.open(path)
    return image.crop(box) if box is not None else image


def _read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


# ---------------------------------------------------------------- classification layouts
def _cifar_files(root: str, split: str) -> tuple[list[str], str] | None:
    for sub, names, meta in (("cifar-10-batches-py", {"train": [f"data_batch_{i}" for i in range(1, 6)],
                                                       "test": ["test_batch"]}, "batches.meta"),
                             ("cifar-100-python", {"train": ["train"], "test": ["test"]}, "meta")):
        for base in (os.path.join(root, sub), root):
            files = [os.path.join(base, n) for n in names.get(split, [])]
            if files and all(os.path.isfile(f) for f in files):
                return files, os.path.join(base, meta)
    return None


def read_cifar(root: str, split: str, transform) -> tuple[ImageDataset, list[str] | None] | None:
    """CIFAR-10/100 python pickle batches -> dataset and the label names stored in the meta file."""
    found = _cifar_files(root, split)
    if found is None:
        return None
    files, meta_path = found
    arrays, labels = [], []
    for path in files:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        arrays.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))  # (N, C, H, W)
        labels.extend(entry["labels"] if "labels" in entry else entry["fine_labels"])
    data = np.concatenate(arrays).transpose(0, 2, 3, 1)  # (N, H, W, C) for PIL
    names = None
    if os.path.exists(meta_path):
        with open(meta_path, "rb") as f:
            meta = pickle.load(f, encoding="latin1")
        names = meta.get("label_names") or meta.get("fine_label_names")
    return ImageDataset(list(range(len(data))), labels, _ArrayImages(data), transform), names


class _ArrayImages:
    """Reads image ``i`` of an (N, H, W, 3) uint8 array; a class, not a closure, so spawned workers can pickle it."""

    def __init__(self, data: np.ndarray):
        self.data = data

    def __call__(self, index: int) -> Image.Image:
        return Image.fromarray(self.data[index])


def _class_folders(base: str) -> list[str]:
    return sorted(d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d)) and not d.startswith("."))


def read_imagefolder(root: str, split: str, transform) -> tuple[ImageDataset, list[str]] | None:
    """``root[/split]/<class>/<image>`` -> dataset and class names (``classnames.txt`` if present)."""
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
    names = _user_classnames(root)
    if names is None:
        names = None if numeric else [f.replace("_", " ") for f in folders]
    elif not numeric and len(names) != len(folders):
        raise ValueError(f"{os.path.join(root, 'classnames.txt')} lists {len(names)} class names but {base} has "
                         f"{len(folders)} class folders: give one name per folder, in sorted folder order")
    return ImageDataset(paths, labels, _open_file, transform), names


def _user_classnames(root: str) -> list[str] | None:
    path = os.path.join(root, "classnames.txt")
    return _read_lines(path) if os.path.exists(path) else None


VOC_CLASSES = suites.get_classnames("voc2007")


def read_voc(root: str, split: str, transform, multilabel: bool) -> ImageDataset | None:
    """PASCAL VOC 2007: one sample per object box (cropped, single label) or per image (multi-hot labels)."""
    base = os.path.join(root, "VOCdevkit", "VOC2007")
    split_file = os.path.join(base, "ImageSets", "Main", f"{VOC_CLASSES[0]}_{split}.txt")
    if not os.path.exists(split_file):
        return None
    ids = [line.split()[0] for line in _read_lines(split_file)]
    samples, targets = [], []
    for image_id in ids:
        objects = ET.parse(os.path.join(base, "Annotations", image_id + ".xml")).findall("object")
        path = os.path.join(base, "JPEGImages", image_id + ".jpg")
        boxes = [(VOC_CLASSES.index(o.find("name").text.strip()),
                  tuple(int(float(o.find("bndbox").find(k).text)) for k in ("xmin", "ymin", "xmax", "ymax")))
                 for o in objects]
        if multilabel:
            hot = torch.zeros(len(VOC_CLASSES))
            hot[[c for c, _ in boxes]] = 1
            samples.append(path)
            targets.append(hot)
        else:
            samples.extend((path, box) for _, box in boxes)
            targets.extend(c for c, _ in boxes)
    return ImageDataset(samples, targets, _open_file, transform)


# ---------------------------------------------------------------- WebDataset (clip_benchmark export)
def read_wds(root: str, split: str, transform) -> tuple[ImageDataset, dict] | None:
    """clip_benchmark's WebDataset layout, indexed once so samples can be read in any order by any worker."""
    nshards_path = os.path.join(root, split, "nshards.txt")
    if not os.path.exists(nshards_path):
        return None
    nshards = int(_read_lines(nshards_path)[0])
    kind_path = os.path.join(root, "dataset_type.txt")
    kind = _read_lines(kind_path)[0].lower() if os.path.exists(kind_path) else "classification"
    groups: OrderedDict[str, dict] = OrderedDict()
    for shard in range(nshards):
        tar_path = os.path.join(root, split, f"{shard}.tar")
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                if member.isfile():
                    key, _, ext = os.path.basename(member.name).partition(".")
                    groups.setdefault(f"{shard}/{key}", {})[ext.lower()] = (tar_path, member.offset_data,
                                                                            member.size)
    samples, targets = [], []
    label_ext = {"retrieval": "txt", "multilabel": "npy"}.get(kind, "cls")
    for key, parts in groups.items():
        image = next((parts[e] for e in ("webp", "png", "jpg", "jpeg") if e in parts), None)
        if image is None or label_ext not in parts:
            continue
        samples.append(image)
        targets.append(_wds_target(_read_member(parts[label_ext]), label_ext))
    meta = {"kind": kind}
    for field, name in (("classnames", "classnames.txt"), ("templates", "zeroshot_classification_templates.txt")):
        if os.path.exists(os.path.join(root, name)):
            meta[field] = _read_lines(os.path.join(root, name))
    return ImageDataset(samples, targets, _open_member, transform), meta


def _open_member(location: tuple[str, int, int]) -> Image.Image:
    return Image.open(io.BytesIO(_read_member(location)))


def _read_member(location: tuple[str, int, int]) -> bytes:
    path, offset, size = location
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def _wds_target(raw: bytes, ext: str):
    if ext == "txt":
        return [line for line in raw.decode("utf-8").splitlines() if line.strip()]
    if ext == "npy":
        return torch.from_numpy(np.load(io.BytesIO(raw))).float()
    return int(raw.decode().strip())


# ---------------------------------------------------------------- captions
def read_captions(annotation: str, image_root: str, transform) -> ImageDataset:
    """Image-caption pairs grouped per image, from a ``.txt``/``.csv`` (image,caption) or a ``.json`` file."""
    if annotation.endswith(".json"):
        pairs = _json_pairs(annotation)
    elif annotation.endswith(".txt"):  # Flickr/Karpathy: a header, then name,caption with unquoted commas
        lines = _read_lines(annotation)[1:]
        pairs = [(image, caption.strip()) for image, _, caption in (line.partition(",") for line in lines)]
    else:
        with open(annotation, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
        if not rows:
            raise ValueError(f"{annotation} is empty: expected a header line then image,caption lines")
        header = [h.strip().lower() for h in rows[0]]
        image_col = next((header.index(h) for h in ("image", "filepath", "file_name", "filename")
                          if h in header), 0)
        caption_col = next((header.index(h) for h in ("caption", "title", "text") if h in header), 1)
        # captions may contain commas: everything after the image column belongs to the caption
        pairs = [(r[image_col], ",".join(r[caption_col:]).strip()) for r in rows[1:] if len(r) > caption_col]
    grouped: OrderedDict[str, list[str]] = OrderedDict()
    for image, caption in pairs:
        grouped.setdefault(image.strip(), []).append(caption)
    folder = image_root
    if grouped and not os.path.exists(os.path.join(folder, next(iter(grouped)))):
        alt = os.path.join(image_root, "Images")  # the Kaggle Flickr archives put images under Images/
        folder = alt if os.path.isdir(alt) else folder
    paths = [os.path.join(folder, name) for name in grouped]
    return ImageDataset(paths, list(grouped.values()), _open_file, transform)


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


# ---------------------------------------------------------------- finding and loading a dataset
def _read_layout(layout: str, root: str, split: str, transform, spec: suites.DatasetSpec):
    """(dataset, classnames or None, templates or None) if ``root`` holds ``layout``, else None."""
    if layout == "wds":
        found = read_wds(root, split, transform)
        return None if found is None else (found[0], found[1].get("classnames"), found[1].get("templates"))
    if layout == "cifar":
        found = read_cifar(root, split, transform)
        return None if found is None else (found[0], found[1], None)
    if layout in ("imagefolder", "imagenet", "imagenetv2"):
        sub = os.path.join(root, "ImageNetV2-matched-frequency")
        found = read_imagefolder(sub if layout == "imagenetv2" and os.path.isdir(sub) else root, split, transform)
        return None if found is None else (found[0], found[1], None)
    if layout == "voc":
        found = read_voc(root, split, transform, spec.multilabel)
        return None if found is None else (found, None, None)
    annotation, images = _caption_files(layout, root, split, spec.name)
    return None if annotation is None else (read_captions(annotation, images, transform), None, None)


def _caption_files(layout: str, root: str, split: str, name: str) -> tuple[str | None, str]:
    if os.path.isfile(root):  # a user's annotation file, images next to it
        return root, os.path.dirname(root)
    if layout == "coco":
        path = os.path.join(root, f"coco_{split}_karpathy.json")
        images = os.path.join(root, "train2014" if split == "train" else "val2014")
        return (path if os.path.exists(path) else None), images
    for candidate in (f"{name}_{split}_karpathy.txt", "captions.csv", "captions.txt", "captions.json"):
        if os.path.exists(os.path.join(root, candidate)):
            return os.path.join(root, candidate), root
    return None, root


def _custom_spec(name: str) -> tuple[suites.DatasetSpec, str]:
    kind, _, path = name.partition(":")
    layouts = {"folder": ("cifar", "imagefolder"), "wds": ("wds",), "captions": ("captions",)}
    if kind not in layouts or not path:
        raise KeyError(f"'{name}': a dataset of your own is folder:PATH, wds:PATH or captions:PATH")
    task = "retrieval" if kind == "captions" else "classification"
    return suites.DatasetSpec(name=name, task=task, key="", title=os.path.basename(path.rstrip("/")),
                              layouts=layouts[kind]), path


def _where_to_put(spec: suites.DatasetSpec, root: str, split: str) -> str:
    hints = {"wds": f"{root}/{split}/nshards.txt + {root}/{split}/0.tar ... (clip_benchmark WebDataset export"
                    + (f", e.g. hf-hub dataset {spec.hub_repo}" if spec.hub_repo else "") + ")",
             "cifar": f"{root}/cifar-10-batches-py/test_batch (or cifar-100-python/test): the python pickle batches",
             "imagefolder": f"{root}/{split}/<class>/<image> (+ optional {root}/classnames.txt)",
             "imagenet": f"{root}/val/<wnid>/<image>",
             "imagenetv2": f"{root}/ImageNetV2-matched-frequency/<label id>/<image>.jpeg",
             "voc": f"{root}/VOCdevkit/VOC2007/{{Annotations,ImageSets/Main,JPEGImages}}",
             "coco": f"{root}/coco_{split}_karpathy.json + {root}/val2014/<images>",
             "captions": f"{root}/{spec.name}_{split}_karpathy.txt or {root}/captions.csv (image,caption lines) "
                         f"+ the images in {root}"}
    return "\n  ".join(hints[layout] for layout in spec.layouts)


def download(spec: suites.DatasetSpec, root: str, split: str) -> None:
    """Fetch a dataset into ``root``: torchvision's downloader for CIFAR, else the clip_benchmark hub export."""
    if spec.key in ("cifar10", "cifar100") and not spec.name.startswith("vtab/"):
        import torchvision.datasets as tvd
        cls = tvd.CIFAR10 if spec.key == "cifar10" else tvd.CIFAR100
        cls(root=root, train=split == "train", download=True)
        return
    if not spec.hub_repo:
        raise DatasetNotFound(f"'{spec.name}' has no download source; put it in place by hand")
    from huggingface_hub import snapshot_download
    snapshot_download(repo_id=spec.hub_repo, repo_type="dataset", local_dir=root,
                      allow_patterns=[f"{split}/*", "*.txt"])


def load_dataset(name: str, root: str, split: str = "test", transform: Callable | None = None,
                 allow_download: bool = False) -> LoadedDataset:
    """Find dataset ``name`` (a shipped name or folder:/wds:/captions:PATH) under ``root`` and load it."""
    spec, root = _custom_spec(name) if ":" in name else (suites.resolve(name), root)
    found = _first_layout(spec, root, split, transform)
    if found is None and allow_download:
        try:
            download(spec, root, split)
        except Exception as e:  # offline, gated repo...: fall through to the layout message
            reason = f" (download failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        else:
            reason = ""
        found = _first_layout(spec, root, split, transform)
    else:
        reason = "" if allow_download else " (downloads are off; pass --download to fetch it)"
    if found is None:
        raise DatasetNotFound(f"dataset '{spec.name}' split '{split}' not found under {root}{reason}. "
                              f"Put it there in one of these layouts:\n  {_where_to_put(spec, root, split)}")
    dataset, classnames, templates = found
    if len(dataset) == 0:
        raise ValueError(f"dataset '{spec.name}' at {root} has no samples for split '{split}'")
    if spec.task == "retrieval" or isinstance(dataset.targets[0], list):  # a wds export may hold captions
        return LoadedDataset(spec.name, "retrieval", dataset, source=os.path.abspath(root))
    classnames = classnames if classnames or not spec.key else suites.get_classnames(spec.key)
    user_names = _user_classnames(root) if not spec.key and os.path.isdir(root) else None
    if user_names is not None:
        if classnames and len(user_names) != len(classnames):
            raise ValueError(f"{os.path.join(root, 'classnames.txt')} lists {len(user_names)} class names but the "
                             f"data defines {len(classnames)} classes: give exactly one name per class")
        classnames = user_names
    _check_labels(spec.name, dataset, classnames)
    if templates is None:
        custom = os.path.join(root, "templates.txt") if os.path.isdir(root) else ""
        templates = _read_lines(custom) if custom and os.path.exists(custom) else suites.get_templates(
            spec.key or "imagenet1k")
    return LoadedDataset(spec.name, "classification", dataset, list(classnames), list(templates), spec.multilabel,
                         os.path.abspath(root))


def _first_layout(spec, root, split, transform):
    if not os.path.exists(root):
        return None
    for layout in spec.layouts:
        found = _read_layout(layout, root, split, transform, spec)
        if found is not None:
            return found
    return None


def _check_labels(name: str, dataset: ImageDataset, classnames: Sequence[str] | None) -> None:
    if not classnames:
        raise ValueError(f"dataset '{name}' has no class names: add a classnames.txt, one name per line")
    first = dataset.targets[0]
    if isinstance(first, torch.Tensor):  # multi-hot
        width = int(first.numel())
        if width != len(classnames):
            raise ValueError(f"'{name}': labels have {width} classes but there are {len(classnames)} class names")
        return
    top = max(int(t) for t in dataset.targets)
    if top >= len(classnames) or min(int(t) for t in dataset.targets) < 0:
        raise ValueError(f"'{name}': labels go up to {top} but the classnames list has {len(classnames)} entries: "
                         "the classnames file does not match the labels (one name per class, in label order)")
