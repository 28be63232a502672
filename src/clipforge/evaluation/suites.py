"""Benchmark definitions: which datasets exist, their task, class names, prompt templates and layouts.

Class names and templates are shipped as JSON data (``data/classnames.json``, ``data/templates.json``) with the
same keys as clip_benchmark so that numbers are comparable with published tables. Dataset names are the ones
clip_benchmark users type (``cifar10``, ``vtab/cifar10``, ``mscoco_captions``); the ``vtab/`` prefix only selects
the VTAB split of the same data, so both names share class names and templates.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from importlib import resources
from typing import Literal

Task = Literal["zeroshot_classification", "zeroshot_retrieval", "linear_probe"]


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One benchmark dataset. ``key`` names its class names and templates in the shipped JSON files."""

    name: str
    task: Literal["classification", "retrieval"]
    key: str = ""
    title: str = ""
    layouts: tuple[str, ...] = ("wds", "imagefolder")
    hub_repo: str = ""
    multilabel: bool = False
    folder: str = ""  # sub-folder of the data root; defaults to the name with '/' as '_'

    @property
    def directory(self) -> str:
        return self.folder or self.name.replace("/", "_")


def _cls(name: str, key: str = "", layouts=("wds", "imagefolder"), hub: str = "", **kw) -> DatasetSpec:
    key = key or name.split("/", 1)[-1]
    hub = hub or "clip-benchmark/wds_" + name.replace("/", "-")
    return DatasetSpec(name=name, task="classification", key=key, title=name, layouts=tuple(layouts),
                       hub_repo=hub, **kw)


def _ret(name: str, title: str, layouts: tuple[str, ...]) -> DatasetSpec:
    return DatasetSpec(name=name, task="retrieval", title=title, layouts=("wds",) + layouts,
                       hub_repo="clip-benchmark/wds_" + name)


_VTAB = ["caltech101", "cifar10", "cifar100", "dtd", "flowers", "pets", "svhn", "eurosat", "resisc45", "pcam",
         "diabetic_retinopathy", "clevr_count_all", "clevr_closest_object_distance", "dsprites_label_x_position",
         "dsprites_label_orientation", "smallnorb_label_azimuth", "smallnorb_label_elevation", "dmlab",
         "kitti_closest_vehicle_distance"]

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in [
    _cls("imagenet1k", layouts=("wds", "imagenet", "imagefolder")),
    _cls("imagenetv2", key="imagenet1k", layouts=("wds", "imagenetv2", "imagefolder")),
    _cls("voc2007", layouts=("wds", "voc")),
    _cls("voc2007_multilabel", key="voc2007", layouts=("wds", "voc"), multilabel=True, folder="voc2007"),
    _cls("cifar10", layouts=("wds", "cifar", "imagefolder")),
    _cls("cifar100", layouts=("wds", "cifar", "imagefolder")),
    *[_cls(f"vtab/{name}", layouts=("wds", "cifar", "imagefolder") if name.startswith("cifar") else
           ("wds", "imagefolder")) for name in _VTAB],
    _ret("mscoco_captions", "COCO Caption", ("coco", "captions")),
    _ret("flickr8k", "Flickr 8k", ("captions",)),
    _ret("flickr30k", "Flickr 30k", ("captions",)),
]}

SUITES: dict[str, list[str]] = {
    "vtab": [f"vtab/{name}" for name in _VTAB],
    "retrieval": ["mscoco_captions", "flickr8k", "flickr30k"],
    # the three tables of the published CLIP benchmark, in its column order
    "classification": ["imagenetv2", "voc2007"] + [f"vtab/{name}" for name in _VTAB],
}


@functools.lru_cache(maxsize=None)
def _load_json(filename: str) -> dict:
    return json.loads(resources.files("clipforge.evaluation").joinpath("data", filename).read_text("utf-8"))


def get_classnames(key: str) -> list[str]:
    """Shipped class names for ``key`` (a dataset name or its short key)."""
    table = _load_json("classnames.json")
    key = resolve(key).key if key in DATASETS else key
    if key not in table:
        raise KeyError(f"no shipped class names for '{key}'. Known: {', '.join(sorted(table))}. "
                       "For your own dataset put a classnames.txt (one name per line) next to the data.")
    return list(table[key])


def get_templates(key: str, strict: bool = False) -> list[str]:
    """Shipped prompt templates for ``key``; ``{c}`` marks the class name.

    A dataset without its own set uses ImageNet's 80, as clip_benchmark does; with ``strict`` an unknown key is
    an error instead (for a template set the user named).
    """
    table = _load_json("templates.json")
    key = resolve(key).key if key in DATASETS else key
    if strict and key not in table:
        raise KeyError(f"no shipped template set '{key}'. Known: {', '.join(sorted(table))}")
    return list(table.get(key, table["imagenet1k"]))


def resolve(name: str) -> DatasetSpec:
    """The spec for dataset ``name``; a name clipforge does not ship is an error naming the known ones."""
    if name in DATASETS:
        return DATASETS[name]
    raise KeyError(f"unknown dataset '{name}'. Known datasets: {', '.join(sorted(DATASETS))}; "
                   f"suites: {', '.join(sorted(SUITES))}. For your own data use 'folder:PATH' "
                   "(ImageFolder + classnames.txt) or 'captions:PATH' (image,caption CSV).")


def expand(names: list[str]) -> list[str]:
    """Expand suite names (``vtab``, ``retrieval``) into dataset names, keeping order and dropping repeats."""
    out: list[str] = []
    for name in names:
        for item in SUITES.get(name, [name]):
            if item not in out:
                out.append(item)
    return out
