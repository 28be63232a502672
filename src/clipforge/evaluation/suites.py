"""Benchmark definitions: which datasets exist, their task, class names, prompt templates and layouts.

Class names and templates are shipped as JSON data (``data/classnames.json``, ``data/templates.json``) with the
same keys as clip_benchmark so that numbers are comparable with published tables. Dataset names are the ones
clip_benchmark users type (``cifar10``, ``vtab/cifar10``, ``mscoco_captions``); the ``vtab/`` prefix only selects
the VTAB split of the same data, so both names share class names and templates.

Multilingual sets take a language the way clip_benchmark's ``--language`` does, as part of the name:
``xtd10/de``, ``crossmodal3600/ja``, ``xtd200/deu_Latn``, ``flickr30k/zh`` (codes in ``languages``); the bare name
is English. Every language of a set is read from the set's one folder (``xtd10``), as clip_benchmark does.

SugarCrepe is ``sugar_crepe/<task>`` (``SUGAR_CREPE_TASKS``, clip_benchmark's names; the ``sugar_crepe`` suite is
all seven), scored with clip_benchmark's ``image_caption_selection`` task (``evaluation.caption_selection``). All
tasks are read from one folder, ``sugar_crepe``: ``<task>.json`` files + ``val2017/``. Winoground is scored by the
same task, read from the Hugging Face ``datasets`` cache clip_benchmark leaves in its folder (``evaluation.hf_cache``);
clipforge's own ``compositionality`` suite is Winoground and SugarCrepe's seven tasks.

``imagenet-w`` is ImageNet-1k's folder read again with ImageNet-W's watermark drawn on every image after the crop,
before normalisation (``evaluation.watermark``, the ``imagenet_w`` package).

``vtab/cub`` and ``vtab/inaturalist`` are read where clip_benchmark reads them, in TensorFlow Datasets' data dir
(``evaluation.tfds_layout``: caltech_birds2011 0.1.1 and i_naturalist2017 0.1.0, task_adaptation's splits).
"""
from __future__ import annotations

import dataclasses
import functools
import json
from importlib import resources
from typing import Literal

from clipforge.evaluation import languages as langs

Task = Literal["zeroshot_classification", "zeroshot_retrieval", "linear_probe", "image_caption_selection"]


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One benchmark dataset. ``key`` names its class names and templates in the shipped JSON files."""

    name: str
    task: Literal["classification", "retrieval", "caption_selection"]
    key: str = ""
    title: str = ""
    layouts: tuple[str, ...] = ("wds", "imagefolder")
    hub_repo: str = ""
    multilabel: bool = False
    folder: str = ""  # sub-folder of the data root; defaults to the name with '/' as '_'
    languages: tuple[str, ...] = ()  # a multilingual set's language codes (clip_benchmark's)
    language: str = ""  # the language this spec reads, for a multilingual set
    watermark: bool = False  # ImageNet-W: imagenet_w's watermark drawn between the crop and the normalisation

    @property
    def directory(self) -> str:
        return self.folder or self.name.replace("/", "_")


def _cls(name: str, key: str = "", layouts=("wds", "imagefolder"), hub: str = "", **kw) -> DatasetSpec:
    key = key or name.split("/", 1)[-1]
    hub = "" if hub == "none" else hub or "clip-benchmark/wds_" + name.replace("/", "-")
    return DatasetSpec(name=name, task="classification", key=key, title=name, layouts=tuple(layouts),
                       hub_repo=hub, **kw)


def _ret(name: str, title: str, layouts: tuple[str, ...], languages: tuple[str, ...] = (),
         language: str = "") -> DatasetSpec:
    return DatasetSpec(name=name, task="retrieval", title=title, layouts=("wds",) + layouts,
                       hub_repo="clip-benchmark/wds_" + name, languages=languages, language=language)


def _multilingual(name: str, title: str, languages: tuple[str, ...], english: str = "en") -> DatasetSpec:
    """A retrieval set read from clip_benchmark's per-language annotation files (``evaluation.multilingual``)."""
    return DatasetSpec(name=name, task="retrieval", title=title, layouts=("multilingual",), languages=languages,
                       language=english)


SUGAR_CREPE_TASKS = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")


def _selection(task: str) -> DatasetSpec:
    """A SugarCrepe task: every task is read from the one ``sugar_crepe`` folder (``evaluation.caption_selection``)."""
    return DatasetSpec(name=f"sugar_crepe/{task}", task="caption_selection", title=f"SugarCrepe {task}",
                       layouts=("sugar_crepe",), folder="sugar_crepe")


class _Catalogue(dict):
    """The shipped datasets by name. A multilingual set is listed once (iteration, ``len``) and is also found as
    ``NAME/LANGUAGE``: ``in``, ``[]`` and ``get`` make that spec on request (same folder, the language set)."""

    def __missing__(self, name: str) -> DatasetSpec:
        base, _, language = name.rpartition("/")
        spec = dict.get(self, base)
        if spec is None or language not in spec.languages:
            raise KeyError(name)
        if language == spec.language:  # the bare name's language: the same data (a clip_benchmark export too)
            return dataclasses.replace(spec, name=name, folder=spec.directory)
        key = f"{base}/{language}" if spec.key == f"{base}/{spec.language}" else spec.key  # per-language names
        return dataclasses.replace(spec, name=name, key=key, language=language, folder=spec.directory, hub_repo="",
                                   title=f"{spec.title} ({language})",
                                   layouts=tuple(layout for layout in spec.layouts if layout != "wds"))

    def __contains__(self, name: object) -> bool:
        return dict.__contains__(self, name) or (isinstance(name, str) and self.get(name) is not None)

    def get(self, name, default=None):
        try:
            return self[name]
        except KeyError:
            return default


_VARIANTS = ("wds", "wnid_folders")  # the ImageNet variants: the clip_benchmark export, or the archive's folders

_VTAB = ["caltech101", "cifar10", "cifar100", "dtd", "flowers", "pets", "svhn", "eurosat", "resisc45", "pcam",
         "diabetic_retinopathy", "clevr_count_all", "clevr_closest_object_distance", "dsprites_label_x_position",
         "dsprites_label_orientation", "smallnorb_label_azimuth", "smallnorb_label_elevation", "dmlab",
         "kitti_closest_vehicle_distance"]

DATASETS: dict[str, DatasetSpec] = _Catalogue({spec.name: spec for spec in [
    _cls("imagenet1k", layouts=("wds", "imagenet", "imagefolder")),
    _cls("imagenet-w", key="imagenet1k", layouts=("wds", "imagenet", "imagefolder"), folder="imagenet1k",
         hub="clip-benchmark/wds_imagenet1k", watermark=True),  # ImageNet's own folder, watermarked when read
    _cls("imagenetv2", key="imagenet1k", layouts=("wds", "imagenetv2", "imagefolder")),
    _cls("imagenet_sketch", key="imagenet1k", layouts=_VARIANTS),
    _cls("imagenet-a", layouts=_VARIANTS),
    _cls("imagenet-r", layouts=_VARIANTS),
    _cls("imagenet-o", layouts=_VARIANTS),
    _cls("objectnet", layouts=("wds", "objectnet")),
    _cls("cars", layouts=("wds", "cars")),
    _cls("fgvc_aircraft", layouts=("wds", "fgvc_aircraft")),
    _cls("food101", layouts=("wds", "food101")),
    _cls("sun397", layouts=("wds", "sun397")),
    _cls("stl10", layouts=("wds", "stl10")),
    _cls("mnist", layouts=("wds", "mnist")),
    _cls("gtsrb", layouts=("wds", "gtsrb")),
    _cls("country211", layouts=("wds", "country211")),
    _cls("renderedsst2", layouts=("wds", "renderedsst2")),
    _cls("fer2013", layouts=("wds", "imagefolder")),
    _cls("babel_imagenet", key="babel_imagenet/en", layouts=("babel_imagenet",), hub="none", folder="imagenet1k",
         languages=langs.BABEL_IMAGENET, language="en"),
    _cls("voc2007", layouts=("wds", "voc")),
    _cls("voc2007_multilabel", key="voc2007", layouts=("wds", "voc"), multilabel=True, folder="voc2007"),
    _cls("cifar10", layouts=("wds", "cifar", "imagefolder")),
    _cls("cifar100", layouts=("wds", "cifar", "imagefolder")),
    *[_cls(f"vtab/{name}", layouts=("wds", "cifar", "imagefolder") if name.startswith("cifar") else
           ("wds", "imagefolder")) for name in _VTAB],
    # read by clip_benchmark only through TFDS (task_adaptation's VTAB splits): no shipped names, ImageNet's templates
    *[DatasetSpec(name=f"vtab/{name}", task="classification", title=f"vtab/{name}", layouts=("tfds", "wds",
                  "imagefolder")) for name in ("cub", "inaturalist")],
    _ret("mscoco_captions", "COCO Caption", ("coco", "captions")),
    _ret("flickr8k", "Flickr 8k", ("captions",), langs.FLICKR, "en"),
    _ret("flickr30k", "Flickr 30k", ("captions",), langs.FLICKR, "en"),
    _multilingual("crossmodal3600", "Crossmodal-3600", langs.CROSSMODAL3600),
    _multilingual("xtd10", "XTD10", langs.XTD10),
    _multilingual("multilingual_mscoco_captions", "Multilingual MS-COCO", langs.XTD10),
    _multilingual("xtd200", "XTD200", langs.FLORES200, "eng_Latn"),
    _multilingual("flickr30k-200", "Flickr30k-200", langs.FLORES200, "eng_Latn"),
    *[_selection(task) for task in SUGAR_CREPE_TASKS],
    DatasetSpec(name="winoground", task="caption_selection", title="Winoground", layouts=("hf_cache",)),
]})

SUITES: dict[str, list[str]] = {
    "vtab": [f"vtab/{name}" for name in _VTAB],
    "retrieval": ["mscoco_captions", "flickr8k", "flickr30k"],
    # the three tables of the published CLIP benchmark, in its column order
    "classification": ["imagenetv2", "voc2007"] + [f"vtab/{name}" for name in _VTAB],
    # clip_benchmark's collections of the same names (its vtab+ reads VTAB's sets through TFDS: here vtab/)
    "imagenet_robustness": ["imagenetv2", "imagenet_sketch", "imagenet-a", "imagenet-r", "objectnet"],
    "vtab+": ["imagenet1k", "imagenetv2", "imagenet_sketch", "imagenet-a", "imagenet-r", "objectnet", "fer2013",
              "voc2007", "voc2007_multilabel", "sun397", "cars", "fgvc_aircraft", "mnist", "stl10", "gtsrb",
              "country211", "renderedsst2"] + [f"vtab/{name}" for name in _VTAB],
    "multilingual_retrieval": ["crossmodal3600", "xtd10", "multilingual_mscoco_captions", "xtd200",
                               "flickr30k-200"],
    "sugar_crepe": [f"sugar_crepe/{task}" for task in SUGAR_CREPE_TASKS],
    # clipforge's own: the image-caption selection sets clip_benchmark reads (it has no collection of them)
    "compositionality": ["winoground"] + [f"sugar_crepe/{task}" for task in SUGAR_CREPE_TASKS],
}


@functools.lru_cache(maxsize=None)
def _load_json(filename: str) -> dict:
    return json.loads(resources.files("clipforge.evaluation").joinpath("data", filename).read_text("utf-8"))


def get_classnames(key: str) -> list[str]:
    """Shipped class names for ``key`` (a dataset name or its short key)."""
    return [name for name in _names(key) if name is not None]


def get_class_ids(key: str) -> list[int]:
    """The ImageNet class ids a Babel-ImageNet language names (its list holds null for the others), in order."""
    return [i for i, name in enumerate(_names(key)) if name is not None]


def _names(key: str) -> list[str | None]:
    table = _load_json("classnames.json")
    key = resolve(key).key if key in DATASETS else key
    if key not in table:
        known = sorted(k for k in table if not k.startswith("babel_imagenet/")) + ["babel_imagenet/<language>"]
        raise KeyError(f"no shipped class names for '{key}'. Known: {', '.join(known)}. "
                       "For your own dataset put a classnames.txt (one name per line) next to the data.")
    return table[key]


def get_templates(key: str, strict: bool = False) -> list[str]:
    """Shipped prompt templates for ``key``; ``{c}`` marks the class name.

    A dataset without its own set uses ImageNet's 80, as clip_benchmark does; with ``strict`` an unknown key is
    an error instead (for a template set the user named).
    """
    table = _load_json("templates.json")
    key = resolve(key).key if key in DATASETS else key
    if strict and key not in table:
        known = sorted(k for k in table if not k.startswith("babel_imagenet/")) + ["babel_imagenet/<language>"]
        raise KeyError(f"no shipped template set '{key}'. Known: {', '.join(known)}")
    return list(table.get(key, table["imagenet1k"]))


def resolve(name: str) -> DatasetSpec:
    """The spec for dataset ``name`` (``NAME/LANGUAGE`` for a multilingual set); a name clipforge does not ship is
    an error naming the known ones."""
    if name in DATASETS:
        return DATASETS[name]
    base, _, language = name.rpartition("/")
    if base == "sugar_crepe":
        raise KeyError(f"unknown SugarCrepe task '{language}'; choose one of "
                       f"{', '.join(SUITES['sugar_crepe'])} (or the suite sugar_crepe for all of them)")
    spec = dict.get(DATASETS, base)
    if spec is not None and spec.languages:
        raise KeyError(f"'{language}' is not a language of '{base}'; it has: {' '.join(spec.languages)} "
                       f"(name one as {base}/{spec.languages[0]})")
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
