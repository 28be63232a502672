"""Multilingual retrieval sets (Crossmodal-3600, XTD10, multilingual MS-COCO, XTD200, Flickr30k-200) as clip_benchmark
leaves them in a dataset's folder, one image and one caption per sample, as clip_benchmark scores them.

clip_benchmark's first run of a language downloads the captions and writes ``<prefix>-<language>.json`` (the image
paths and one caption each) next to the images; later runs read that file. clipforge reads the same file, never
downloads, and finds an image whose stored path is gone (the folder moved) under the set's images folder by name.
Crossmodal-3600 ships all languages in one file, so its raw download (``xm3600/captions.jsonl`` +
``xm3600/images/``) is read directly too: a language clip_benchmark has not run yet needs no network.
"""
from __future__ import annotations

import json
import logging
import os

from clipforge.evaluation import suites
from clipforge.evaluation.layouts import Found, OpenFile

logger = logging.getLogger("clipforge.evaluation")

# name -> (annotation file clip_benchmark writes, with {} the language; images folder under the dataset folder)
FILES = {
    "crossmodal3600": ("crossmodal3600_captions-{}.json", "xm3600/images"),
    "xtd10": ("xtd10-{}.json", "xtd10/images"),
    "multilingual_mscoco_captions": ("multilingual_mscoco_captions-{}.json", "multilingual_mscoco/images"),
    "xtd200": ("xtd200-{}.json", "xtd200/images"),
    "flickr30k-200": ("flickr30k_200-{}.json", "flickr30k-200/images"),
}


def _base(spec: suites.DatasetSpec) -> str:
    return spec.name.split("/", 1)[0]


def _image_path(stored: str, root: str, images: str) -> str:
    """The stored path if it is there (clip_benchmark stores root-joined paths, relative to where it ran when its
    root was), else the image of that name in the set's images folder."""
    moved = os.path.join(root, images, os.path.basename(stored))
    if os.path.isabs(stored) and os.path.exists(stored):
        return stored
    return moved if os.path.exists(moved) or not os.path.exists(stored) else stored


def _annotation_file(path: str, root: str, images: str) -> Found:
    fix = "delete it and run clip_benchmark once for this language to write it again"
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); {fix}") from None
    paths, captions = (data.get("image_paths"), data.get("annotations")) if isinstance(data, dict) else (None, None)
    if not isinstance(paths, list) or not isinstance(captions, list) or len(paths) != len(captions):
        raise ValueError(f"{path} is not clip_benchmark's annotation file (lists 'image_paths' and 'annotations' of "
                         f"equal length); {fix}")
    return Found([_image_path(str(p), root, images) for p in paths], OpenFile(),
                 captions=[[str(c)] for c in captions])


def _crossmodal_raw(root: str, language: str) -> Found | None:
    """``xm3600/captions.jsonl``: the first caption in ``language`` of every image present (clip_benchmark's
    choice when it writes its annotation file)."""
    listing, images = os.path.join(root, "xm3600", "captions.jsonl"), os.path.join(root, "xm3600", "images")
    if not os.path.isfile(listing):
        return None
    paths, captions, missing = [], [], 0
    with open(listing, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                key, caption = item["image/key"], item[language]["caption"][0]
            except (ValueError, KeyError, IndexError, TypeError):
                raise ValueError(f"{listing} line {number}: not a Crossmodal-3600 record with 'image/key' and "
                                 f"'{language}' captions; download captions.jsonl again") from None
            path = os.path.join(images, f"{key}.jpg")
            if not os.path.exists(path):
                missing += 1
                continue
            paths.append(path)
            captions.append([caption])
    if missing:
        logger.warning("%s: %d images listed in captions.jsonl are missing and were left out", images, missing)
    return Found(paths, OpenFile(), captions=captions)


def read_multilingual(root: str, split: str, spec: suites.DatasetSpec) -> Found | None:
    """The set's annotation file for ``spec.language`` in ``root`` (or Crossmodal-3600's raw download)."""
    template, images = FILES[_base(spec)]
    path = os.path.join(root, template.format(spec.language))
    if os.path.isfile(path):
        return _annotation_file(path, root, images)
    if _base(spec) == "crossmodal3600":
        return _crossmodal_raw(root, spec.language)
    return None


def hint(spec: suites.DatasetSpec, root: str) -> str:
    """Where the files go, for the DatasetNotFound message."""
    template, images = FILES[_base(spec)]
    text = (f"{root}/{template.format(spec.language)} (written by clip_benchmark's first run with --language "
            f"{spec.language}) + {root}/{images}/")
    if _base(spec) == "crossmodal3600":
        text += f", or {root}/xm3600/captions.jsonl + {root}/xm3600/images/ (the Crossmodal-3600 download)"
    return text
