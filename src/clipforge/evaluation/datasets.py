"""Benchmark datasets: names and specs -> loaded datasets ready to encode, read through ``evaluation.layouts``.

A dataset spec is a shipped name (``cifar10``, ``vtab/cifar10``, ``mscoco_captions``; see ``suites``) found under a
data root, or a dataset of your own: ``folder:PATH`` (image folder or CIFAR batches), ``wds:PATH`` (WebDataset
shards: a clip_benchmark export, a folder of tars, a tar, a brace pattern) or ``captions:PATH`` (a CSV/TSV/JSON
annotation file, images next to it). ``LABEL=SPEC`` names a dataset of your own in tables and logs
(``val=wds:data/val-{000000..000001}.tar``).

A loaded dataset yields ``(image tensor, index)``; the per-sample labels and captions stay in ``LoadedDataset`` and
are looked up by index after encoding, so one encoding pass serves classification and retrieval alike. Images that
fail to decode are skipped and counted: the dataset returns None and ``collate_skipping`` drops it.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import Callable, Sequence

import torch

from clipforge.data.images import ImageReadError
from clipforge.evaluation import layouts, multilingual, published_layouts, suites, tfds_layout, watermark

logger = logging.getLogger("clipforge.evaluation")
CUSTOM_KINDS = {"folder": ("cifar", "imagefolder"), "wds": ("wds",), "captions": ("captions",)}
_LABEL = re.compile(r"^([A-Za-z0-9_.\-/]+)=(.+)$")


class DatasetNotFound(FileNotFoundError):
    """The dataset is not on disk in any layout clipforge reads; the message says where to put it."""


class ImageDataset(torch.utils.data.Dataset):
    """``dataset[i] = (transform(image i), i)``; None when image ``i`` cannot be read (counted later)."""

    def __init__(self, samples: Sequence, read: Callable, transform: Callable | None):
        self.samples, self.read, self.transform = samples, read, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        try:
            image = self.read(self.samples[index])
            if image.mode != "RGB":
                image = image.convert("RGB")
        except ImageReadError:
            return None  # skipped and counted by collate_skipping
        if self.transform is not None:
            image = self.transform(image)
        return image, index


def collate_skipping(batch: list):
    """Stack a batch, dropping None samples: returns (images, indices, skipped)."""
    kept = [item for item in batch if item is not None]
    skipped = len(batch) - len(kept)
    if not kept:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    images = torch.stack([torch.as_tensor(item[0]) for item in kept])
    return images, torch.tensor([int(item[1]) for item in kept], dtype=torch.long), skipped


@dataclasses.dataclass
class LoadedDataset:
    """A dataset ready to evaluate. ``labels`` (N,) or (N, C) multi-hot and ``classnames`` for classification;
    ``captions`` (one list per image) for retrieval; a dataset may have both."""

    name: str
    dataset: ImageDataset
    labels: torch.Tensor | None = None
    captions: list[list[str]] | None = None
    classnames: list[str] | None = None
    templates: list[str] | None = None
    multilabel: bool = False
    source: str = ""  # the folder or file it was read from (part of the feature-cache key)
    shard_errors: int = 0

    @property
    def tasks(self) -> tuple[str, ...]:
        """``"classification"`` and/or ``"retrieval"``: what this data supports."""
        out = ()
        if self.labels is not None and self.classnames:
            out += ("classification",)
        if self.captions is not None:
            out += ("retrieval",)
        return out


@dataclasses.dataclass(frozen=True)
class DatasetRequest:
    """A parsed dataset spec: the suite entry (or one made for a dataset of your own) and where it lives."""

    spec: suites.DatasetSpec
    path: str | None  # the user's path for folder:/wds:/captions:, else None (found under the data root)

    @property
    def custom(self) -> bool:
        return self.path is not None


def parse_dataset(text: str) -> DatasetRequest:
    """``cifar10``, ``folder:PATH``, ``wds:PATH``, ``captions:PATH`` or ``LABEL=`` one of those."""
    label = None
    match = _LABEL.match(text)
    if match and match.group(2).partition(":")[0] in CUSTOM_KINDS:
        label, text = match.group(1), match.group(2)
    kind, sep, path = text.partition(":")
    if not sep or kind not in CUSTOM_KINDS:
        if label is not None:
            raise KeyError(f"'{label}={text}': a label names a dataset of your own (folder:, wds:, captions:)")
        return DatasetRequest(suites.resolve(text), None)
    if not path.strip():
        raise KeyError(f"'{text}': give the path after '{kind}:', e.g. {kind}:data/val")
    path = os.path.expanduser(path.strip())
    title = label or os.path.basename(path.rstrip("/")) or path
    task = "retrieval" if kind == "captions" else "classification"
    spec = suites.DatasetSpec(name=label or text, task=task, key="", title=title, layouts=CUSTOM_KINDS[kind])
    return DatasetRequest(spec, path)


def _read_layout(layout: str, root: str, split: str, spec: suites.DatasetSpec) -> layouts.Found | None:
    if layout == "wds":
        return layouts.read_wds(root, split)
    if not os.path.exists(root):
        return None
    if layout in published_layouts.READERS:
        return published_layouts.READERS[layout](root, split, spec)
    if layout == "multilingual":
        return multilingual.read_multilingual(root, split, spec)
    if layout == "tfds":
        return tfds_layout.read_tfds(root, split, tfds_layout.SOURCES[spec.name])
    if layout == "cifar":
        return layouts.read_cifar(root, split) if os.path.isdir(root) else None
    if layout in ("imagefolder", "imagenet", "imagenetv2"):
        sub = os.path.join(root, "ImageNetV2-matched-frequency")
        found = layouts.read_imagefolder(sub if layout == "imagenetv2" and os.path.isdir(sub) else root, split)
        if found is not None and found.templates is None and os.path.isdir(root):
            found.templates = layouts.side_files(root)[1]
        return found
    if layout == "voc":
        return layouts.read_voc(root, split, spec.multilabel)
    annotation, images = _caption_files(layout, root, split, spec)
    return None if annotation is None else layouts.read_captions(annotation, images)


def _karpathy_file(spec: suites.DatasetSpec, split: str) -> str:
    """``flickr30k_test_karpathy.txt``; another language's captions: ``flickr30k_test_zh.txt`` (clip_benchmark's)."""
    suffix = "karpathy" if spec.language in ("", "en") else spec.language
    return f"{spec.name.split('/', 1)[0] if spec.languages else spec.name}_{split}_{suffix}.txt"


def _caption_files(layout: str, root: str, split: str, spec: suites.DatasetSpec) -> tuple[str | None, str]:
    if os.path.isfile(root):  # a user's annotation file, images next to it
        return root, os.path.dirname(root)
    if layout == "coco":
        path = os.path.join(root, f"coco_{split}_karpathy.json")
        images = os.path.join(root, "train2014" if split == "train" else "val2014")
        return (path if os.path.exists(path) else None), images
    if spec.language not in ("", "en"):  # only the language's own file: English captions are no substitute
        path = os.path.join(root, _karpathy_file(spec, split))
        return (path if os.path.exists(path) else None), root
    for candidate in (_karpathy_file(spec, split), "captions.csv", "captions.tsv", "captions.txt",
                      "captions.json"):
        if os.path.exists(os.path.join(root, candidate)):
            return os.path.join(root, candidate), root
    return None, root


def _where_to_put(spec: suites.DatasetSpec, root: str, split: str) -> str:
    hints = {"wds": f"{root}/{split}/nshards.txt + {root}/{split}/0.tar ... (clip_benchmark WebDataset export"
                    + (f", e.g. hf-hub dataset {spec.hub_repo}" if spec.hub_repo else "")
                    + "), or WebDataset shards: a .tar, a folder of .tar files, or a brace pattern",
             "cifar": f"{root}/cifar-10-batches-py/test_batch (or cifar-100-python/test): the python pickle batches",
             "imagefolder": f"{root}/{split}/<class>/<image> (+ optional {root}/classnames.txt)",
             "imagenet": f"{root}/val/<wnid>/<image>",
             "imagenetv2": f"{root}/ImageNetV2-matched-frequency/<label id>/<image>.jpeg",
             "voc": f"{root}/VOCdevkit/VOC2007/{{Annotations,ImageSets/Main,JPEGImages}}",
             "coco": f"{root}/coco_{split}_karpathy.json + {root}/val2014/<images>",
             "captions": f"{root} as a CSV/TSV annotation file with image and caption columns, or "
                         f"{root}/{_karpathy_file(spec, split)} or {root}/captions.csv + the images in {root}"}
    if "multilingual" in spec.layouts:
        hints["multilingual"] = multilingual.hint(spec, root)
    hints["tfds"] = tfds_layout.HINT.format(root=root)
    hints.update({layout: text.format(root=root, split=split) for layout, text in published_layouts.HINTS.items()})
    return "\n  ".join(hints[layout] for layout in spec.layouts)


_CIFAR_ARCHIVES = {  # the archives torchvision's CIFAR classes download, with their published md5
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),
}


def _download_cifar(key: str, root: str) -> None:
    """The CIFAR archive, md5-checked, extracted with path checks. Not through torchvision's dataset classes:
    they unpickle the batches with ``pickle.load`` (code execution from a downloaded file)."""
    from torchvision.datasets.utils import download_url

    from clipforge.data.tar import safe_extract

    url, md5 = _CIFAR_ARCHIVES[key]
    os.makedirs(root, exist_ok=True)
    download_url(url, root, md5=md5)
    safe_extract(os.path.join(root, os.path.basename(url)), root)


def download(spec: suites.DatasetSpec, root: str, split: str) -> None:
    """Fetch a dataset into ``root``: the CIFAR archives from their site, else the clip_benchmark hub export."""
    if spec.key in _CIFAR_ARCHIVES and not spec.name.startswith("vtab/"):
        _download_cifar(spec.key, root)
        return
    if not spec.hub_repo:
        raise DatasetNotFound(f"'{spec.name}' has no download source; put it in place by hand")
    from huggingface_hub import snapshot_download
    snapshot_download(repo_id=spec.hub_repo, repo_type="dataset", local_dir=root,
                      allow_patterns=[f"{split}/*", "*.txt"])


def _first_layout(spec: suites.DatasetSpec, root: str, split: str) -> layouts.Found | None:
    for layout in spec.layouts:
        found = _read_layout(layout, root, split, spec)
        if found is not None:
            return found
    return None


def _find(spec: suites.DatasetSpec, root: str, split: str, allow_download: bool) -> layouts.Found:
    found = _first_layout(spec, root, split)
    reason = "" if allow_download or not spec.hub_repo else " (downloads are off; pass --download to fetch it)"
    if found is None and allow_download:
        try:
            download(spec, root, split)
        except (OSError, ValueError, ImportError) as e:  # offline, gated repo, no torchvision...
            first = str(e).splitlines()[0] if str(e) else ""
            reason = f" (download failed: {type(e).__name__}: {first})"
        found = _first_layout(spec, root, split)
    if found is None:
        raise DatasetNotFound(f"dataset '{spec.name}' split '{split}' not found at {root}{reason}. "
                              f"Put it there in one of these layouts:\n  {_where_to_put(spec, root, split)}")
    return found


def load_dataset(name: str, root: str | None = None, split: str = "test", transform: Callable | None = None,
                 allow_download: bool = False) -> LoadedDataset:
    """Find dataset ``name`` (a shipped name, under ``root``, or ``[LABEL=]folder:/wds:/captions:PATH``)."""
    request = parse_dataset(name)
    spec = request.spec
    if spec.task == "caption_selection":
        raise ValueError(f"'{spec.name}' is an image-caption selection set: read it with "
                         "evaluation.caption_selection (load_sugar_crepe, load_winoground), as the benchmark does")
    root = request.path if request.custom else root
    if root is None:
        raise ValueError(f"dataset '{name}' is found under a data root: pass root= (or --data-root)")
    found = _find(spec, root, split, allow_download)
    if len(found.samples) == 0:
        raise ValueError(f"dataset '{spec.name}' at {root} has no samples for split '{split}'")
    if found.shard_errors:
        logger.warning("dataset '%s': %d damaged shard(s) were cut short; their remaining samples are missing",
                       spec.name, found.shard_errors)
    if spec.watermark:  # ImageNet-W: the mark drawn after the crop, before normalisation
        transform = watermark.watermarked(transform)
    dataset = ImageDataset(found.samples, found.read, transform)
    loaded = LoadedDataset(spec.name, dataset, source=os.path.abspath(root), shard_errors=found.shard_errors,
                           multilabel=spec.multilabel)
    retrieval = spec.task == "retrieval" or found.kind == "retrieval" or request.custom
    if retrieval and found.captions is not None:
        loaded.captions = found.captions
    if spec.task == "classification" and found.labels is not None:
        _attach_classes(loaded, found, spec, root)
    if not loaded.tasks:
        wanted = "captions (txt)" if spec.task == "retrieval" else "class labels (cls) and class names"
        raise ValueError(f"dataset '{spec.name}' at {root} has no {wanted}: check the layout "
                         f"({_where_to_put(spec, root, split)})")
    return loaded


def _attach_classes(loaded: LoadedDataset, found: layouts.Found, spec: suites.DatasetSpec, root: str) -> None:
    classnames = found.classnames
    if spec.key and (not classnames or found.names_from_folders):
        classnames = suites.get_classnames(spec.key)  # shipped names beat folder names (wnids) for known sets
    user = layouts.side_files(root)[0] if os.path.isdir(root) else None
    if user is not None and user != classnames:  # a classnames.txt next to the data always wins, if it fits
        defined = len(classnames) if classnames else (found.labels.shape[1] if found.labels.ndim == 2
                                                      else int(found.labels.max()) + 1)
        if len(user) != defined:
            raise ValueError(f"{os.path.join(root, 'classnames.txt')} lists {len(user)} class names but the data "
                             f"defines {defined} classes: give exactly one name per class, in label order")
        classnames = user
    if not classnames:
        if loaded.captions is not None:
            return  # retrieval only: labels without names cannot be classified
        raise ValueError(f"dataset '{spec.name}' has no class names: add a classnames.txt (one name per line, in "
                         f"label order) next to the data")
    _check_labels(spec.name, found.labels, classnames)
    templates = found.templates or suites.get_templates(spec.key or "imagenet1k")
    loaded.labels, loaded.classnames, loaded.templates = found.labels, list(classnames), list(templates)


def _check_labels(name: str, labels: torch.Tensor, classnames: Sequence[str]) -> None:
    if labels.ndim == 2:  # multi-hot
        if labels.shape[1] != len(classnames):
            raise ValueError(f"'{name}': labels have {labels.shape[1]} classes but there are {len(classnames)} "
                             "class names")
        return
    top, bottom = int(labels.max()), int(labels.min())
    if top >= len(classnames) or bottom < 0:
        raise ValueError(f"'{name}': labels go up to {top} but the classnames list has {len(classnames)} entries: "
                         "the classnames file does not match the labels (one name per class, in label order)")
