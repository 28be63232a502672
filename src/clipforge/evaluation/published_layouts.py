"""Readers for the layouts published classification sets have on disk after torchvision or clip_benchmark fetched
them: the folder a clip_benchmark user passes as ``--dataset_root`` is the folder these read, without torchvision.

Every reader takes ``(root, split, spec)`` and returns ``layouts.Found``, or None when its layout is not there. A
layout that is there but broken (an annotation file that does not parse, a label that names no class) is a one-line
``ValueError`` naming the file and what to do. Labels, class names and sample sets are those of clip_benchmark 1.6.2
(torchvision's classes underneath); the ImageNet variants label a WordNet-id folder by its id rather than by its
position among the folders present, which is the same on a complete copy and right on a partial one.
"""
from __future__ import annotations

import csv
import gzip
import json
import os
from typing import Callable

import numpy as np
import torch

from clipforge.evaluation import suites, wordnet_ids
from clipforge.evaluation.layouts import IMAGE_EXTENSIONS, ArrayImages, Found, OpenFile, read_imagefolder, read_lines


def _found(paths: list[str], labels: list[int], classnames: list[str] | None = None) -> Found:
    return Found(paths, OpenFile(), labels=torch.tensor(labels, dtype=torch.long), classnames=classnames)


def _images_in(folder: str) -> list[str]:
    return sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))


def _json(path: str, fix: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); {fix}") from None


def _class_of(names: dict[str, int], name: str, where: str, fix: str) -> int:
    if name not in names:
        raise ValueError(f"{where}: class '{name}' is not one of the {len(names)} classes; {fix}")
    return names[name]


# ------------------------------------------------------------------------------------------ ImageNet family


def read_wnid_folders(root: str, split: str, spec: suites.DatasetSpec) -> Found | None:
    """``root/<wnid>/<image>`` (ImageNet-A/-R/-O, ImageNet-Sketch; also the archive's own top folder under root):
    label = the wnid's place among the set's sorted ids."""
    wnids = wordnet_ids.SUBSETS.get(spec.name, wordnet_ids.IMAGENET_1K)
    index = {w: i for i, w in enumerate(wnids)}
    archive = {"imagenet_sketch": "sketch"}.get(spec.name, spec.name)
    for base in (root, os.path.join(root, archive)):
        folders = [d for d in sorted(os.listdir(base)) if os.path.isdir(os.path.join(base, d))] \
            if os.path.isdir(base) else []
        if folders and any(d in index for d in folders):
            break
    else:
        return None
    unknown = [d for d in folders if d not in index and not d.startswith(".")]
    if unknown:
        raise ValueError(f"{base}: folder(s) {', '.join(unknown[:3])} are not among the {len(wnids)} WordNet ids of "
                         f"'{spec.name}'; move them out (each class folder is named by its wnid, e.g. {wnids[0]})")
    paths, labels = [], []
    for folder in folders:
        files = _images_in(os.path.join(base, folder)) if folder in index else []
        paths += files
        labels += [index[folder]] * len(files)
    return _found(paths, labels)


def read_babel_imagenet(root: str, split: str, spec: suites.DatasetSpec) -> Found | None:
    """Babel-ImageNet: ImageNet's ``root/val/<wnid>/`` (``train/`` for train), only the classes ``spec.language``
    names, relabelled in their ImageNet order (clip_benchmark's BabelImageNet on a complete ImageNet)."""
    base = os.path.join(root, "train" if split == "train" else "val")
    found = read_wnid_folders(base, split, suites.DatasetSpec("imagenet1k", "classification")) \
        if os.path.isdir(base) else None
    if found is None:
        return None
    ids = suites.get_class_ids(spec.key)
    label_of = torch.full((len(wordnet_ids.IMAGENET_1K),), -1, dtype=torch.long)
    label_of[ids] = torch.arange(len(ids))
    labels = label_of[found.labels]
    keep = (labels >= 0).nonzero().flatten().tolist()
    return Found([found.samples[i] for i in keep], found.read, labels=labels[keep])


def read_objectnet(root: str, split: str, spec: suites.DatasetSpec) -> Found | None:
    """ObjectNet 1.0 as clip_benchmark unpacks it: ``root/objectnet-1.0/images/<folder>/<image>`` and the mapping
    files (``folder_to_objectnet_label.json``, ``objectnet_to_imagenet_1k.json``) in ``root``. Only the 113 classes
    that map to ImageNet are kept; class i is the i-th of their folders in sorted order."""
    images = os.path.join(root, "objectnet-1.0", "images")
    if not os.path.isdir(images):
        return None
    fix = "copy the mapping files from objectnet-1.0/mappings/ into the dataset folder again"
    mappings = next((d for d in (root, os.path.join(root, "objectnet-1.0", "mappings"))
                     if os.path.isfile(os.path.join(d, "objectnet_to_imagenet_1k.json"))), None)
    if mappings is None or not os.path.isfile(os.path.join(mappings, "folder_to_objectnet_label.json")):
        raise ValueError(f"{root}: ObjectNet images are there but not folder_to_objectnet_label.json and "
                         f"objectnet_to_imagenet_1k.json; {fix}")
    folder_names = _json(os.path.join(mappings, "folder_to_objectnet_label.json"), fix)
    mapped = _json(os.path.join(mappings, "objectnet_to_imagenet_1k.json"), fix)
    folder_of = {name: folder for folder, name in folder_names.items()}
    missing = [name for name in mapped if name not in folder_of]
    if missing:
        raise ValueError(f"{mappings}: objectnet_to_imagenet_1k.json names {missing[:3]}, which no folder has in "
                         f"folder_to_objectnet_label.json; {fix}")
    folders = sorted({folder_of[name] for name in mapped})
    paths, labels = [], []
    for label, folder in enumerate(folders):
        files = _images_in(os.path.join(images, folder)) if os.path.isdir(os.path.join(images, folder)) else []
        paths += files
        labels += [label] * len(files)
    return _found(paths, labels, [folder_names[f].lower() for f in folders])


# --------------------------------------------------------------------------------- torchvision's layouts


def read_cars(root: str, split: str, spec: suites.DatasetSpec) -> Found | None:
    """Stanford Cars: ``root/stanford_cars/{devkit/cars_meta.mat, cars_test_annos_withlabels.mat, cars_test/}``
    (train: ``devkit/cars_train_annos.mat`` + ``cars_train/``). The annotations are MATLAB files: read by scipy."""
    base = os.path.join(root, "stanford_cars")
    annotations = os.path.join(base, "devkit", "cars_train_annos.mat") if split == "train" else \
        os.path.join(base, "cars_test_annos_withlabels.mat")
    if not os.path.isfile(annotations):
        return None
    from clipforge._optional import require
    sio = require("scipy.io", hint="Stanford Cars' annotations are MATLAB files, read by scipy: pip install scipy "
                                   "(part of 'clipforge[eval]')")
    meta = os.path.join(base, "devkit", "cars_meta.mat")
    try:
        rows = np.atleast_1d(sio.loadmat(annotations, squeeze_me=True)["annotations"])
        names = [str(n) for n in np.atleast_1d(sio.loadmat(meta, squeeze_me=True)["class_names"])]
        images = os.path.join(base, "cars_train" if split == "train" else "cars_test")
        samples = [(os.path.join(images, str(row["fname"])), int(row["class"]) - 1) for row in rows]
    except (OSError, ValueError, KeyError, TypeError) as e:  # scipy raises several kinds for a damaged .mat
        raise ValueError(f"{annotations} or {meta} cannot be read as the Stanford Cars devkit ({type(e).__name__}: "
                         f"{e}); fetch the devkit and the test annotations again") from None
    return _found([p for p, _ in samples], [c for _, c in samples], names)


def read_fgvc_aircraft(root: str, split: str, spec: suites.DatasetSpec) -> Found | None:
    """FGVC-Aircraft 2013b at the variant level: ``root/fgvc-aircraft-2013b/data/{variants.txt,
    images_variant_<split>.txt, images/}``."""
    data = os.path.join(root, "fgvc-aircraft-2013b", "data")
    labels_file = os.path.join(data, f"images_variant_{split}.txt")
    if not os.path.isfile(labels_file):
        return None
    with open(os.path.join(data, "variants.txt"), encoding="utf-8") as f:
        classes = [line.strip() for line in f]
    index = {name: i for i, name in enumerate(classes)}
    paths, labels = [], []
    fix = "the file must list '<image id> <variant>' lines whose variants are in variants.txt"
    for number, line in enumerate(read_lines(labels_file), 1):
        image, _, variant = line.partition(" ")
        paths.append(os.path.join(data, "images", image + ".jpg"))
        labels.append(_class_of(index, variant, f"{labels_file} line {number}", fix))
    return _found(paths, labels, classes)


def read_food101(root: str, split: str, spec: suites.DatasetSpec) -> Found | None:
    """Food-101: ``root/food-101/{meta/<split>.json, images/<class>/<id>.jpg}``; names with spaces for '_'."""
    base = os.path.join(root, "food-101")
    meta = os.path.join(base, "meta", f"{split}.json")
    if not os.path.isfile(meta):
        return None
    listing = _json(meta, "extract meta/ from the Food-101 archive again")
    if not isinstance(listing, dict):
        raise ValueError(f"{meta} is not Food-101's {{class: [image ids]}} listing; extract it again")
    classes = sorted(listing)
    paths, labels = [], []
    for name, images in listing.items():
        paths += [os.path.join(base, "images", *f"{image}.jpg".split("/")) for image in images]
        labels += [classes.index(name)] * len(images)
    return _found(paths, labels, [c.replace("_", " ") for c in classes])


def read_gtsrb(root: str, split: str, spec: suites.DatasetSpec) -> Found | None:
    """GTSRB: test ``root/gtsrb/{GT-final_test.csv, GTSRB/Final_Test/Images/}``, train
    ``root/gtsrb/GTSRB/Training/<class id>/*.ppm``."""
    base = os.path.join(root, "gtsrb")
    if split == "train":
        found = read_imagefolder(os.path.join(base, "GTSRB"), "Training")
        return None if found is None else Found(found.samples, found.read, labels=found.labels)
    table = os.path.join(base, "GT-final_test.csv")
    if not os.path.isfile(table):
        return None
    with open(table, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter=";", skipinitialspace=True))
    if rows and not {"Filename", "ClassId"} <= set(rows[0]):
        raise ValueError(f"{table}: no Filename and ClassId columns (';'-separated); use GT-final_test.csv from the "
                         "GTSRB test archive")
    images = os.path.join(base, "GTSRB", "Final_Test", "Images")
    try:
        labels = [int(row["ClassId"]) for row in rows]
    except (TypeError, ValueError):
        raise ValueError(f"{table}: a ClassId is not a number; use GT-final_test.csv from the archive") from None
    return _found([os.path.join(images, row["Filename"]) for row in rows], labels)


def _idx_array(path: str) -> np.ndarray:
    """An IDX file of unsigned bytes (MNIST's format), plain or gzip-compressed."""
    opener: Callable = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (MNIST's format); fetch it again")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path} holds {body.size} bytes for shape {shape}: the file is truncated; fetch it again")
    return body.reshape(shape)


def read_mnist(root: str, split: str, spec: suites.DatasetSpec) -> Found | None:
    """MNIST: ``root/MNIST/raw/t10k-images-idx3-ubyte`` + ``t10k-labels-idx1-ubyte`` (``train-*`` for train)."""
    raw, prefix = os.path.join(root, "MNIST", "raw"), "train" if split == "train" else "t10k"
    found = []
    for kind in ("images-idx3", "labels-idx1"):
        name = os.path.join(raw, f"{prefix}-{kind}-ubyte")
        found.append(next((p for p in (name, name + ".gz") if os.path.isfile(p)), None))
    if None in found:
        return None
    images, labels = _idx_array(found[0]), _idx_array(found[1])
    if images.ndim != 3 or len(images) != len(labels):
        raise ValueError(f"{raw}: {len(images)} images and {len(labels)} labels; the two files must be one split's")
    return Found(list(range(len(images))), ArrayImages(images), labels=torch.from_numpy(labels.astype(np.int64)))


def read_stl10(root: str, split: str, spec: suites.DatasetSpec) -> Found | None:
    """STL-10: ``root/stl10_binary/{test_X.bin, test_y.bin, class_names.txt}`` (``train_*`` for train)."""
    base = os.path.join(root, "stl10_binary")
    prefix = "train" if split == "train" else "test"
    images, targets = os.path.join(base, f"{prefix}_X.bin"), os.path.join(base, f"{prefix}_y.bin")
    if not (os.path.isfile(images) and os.path.isfile(targets)):
        return None
    pixels = np.fromfile(images, dtype=np.uint8)
    labels = np.fromfile(targets, dtype=np.uint8).astype(np.int64) - 1  # stored 1..10
    if pixels.size % (3 * 96 * 96) or pixels.size // (3 * 96 * 96) != len(labels):
        raise ValueError(f"{images} does not hold one 3x96x96 image per label of {targets}; fetch the binaries again")
    data = np.ascontiguousarray(pixels.reshape(-1, 3, 96, 96).transpose(0, 3, 2, 1))  # column-major CHW -> (N, H, W, C)
    names_file = os.path.join(base, "class_names.txt")
    names = read_lines(names_file) if os.path.isfile(names_file) else None
    return Found(list(range(len(data))), ArrayImages(data), labels=torch.from_numpy(labels), classnames=names)


def read_sun397(root: str, split: str, spec: suites.DatasetSpec) -> Found | None:
    """SUN397: ``root/SUN397/{ClassName.txt, <letter>/<class>[/<sub>]/sun_*.jpg}``. There is no split: every
    image is read for any split (as clip_benchmark does); names with spaces for '_' and '/'."""
    base = os.path.join(root, "SUN397")
    listing = os.path.join(base, "ClassName.txt")
    if not os.path.isfile(listing):
        return None
    classes = [line[3:].strip() for line in read_lines(listing)]  # "/a/abbey" -> "abbey"
    index = {name: i for i, name in enumerate(classes)}
    paths, labels = [], []
    for folder, _, files in sorted(os.walk(base)):
        for name in sorted(f for f in files if f.startswith("sun_") and f.endswith(".jpg")):
            path = os.path.join(folder, name)
            category = "/".join(os.path.relpath(folder, base).split(os.sep)[1:])
            paths.append(path)
            labels.append(_class_of(index, category, path, "its folder must be one listed in ClassName.txt"))
    return _found(paths, labels, [c.replace("_", " ").replace("/", " ") for c in classes])


def read_country211(root: str, split: str, spec: suites.DatasetSpec) -> Found | None:
    """Country211: ``root/country211/{train,valid,test}/<country code>/<image>``."""
    base = os.path.join(root, "country211")
    if not os.path.isdir(os.path.join(base, {"val": "valid"}.get(split, split))):
        return None
    return read_imagefolder(base, {"val": "valid"}.get(split, split))


def read_renderedsst2(root: str, split: str, spec: suites.DatasetSpec) -> Found | None:
    """Rendered SST2: ``root/rendered-sst2/{train,valid,test}/{negative,positive}/*.png``."""
    base, folder = os.path.join(root, "rendered-sst2"), {"val": "valid"}.get(split, split)
    if not os.path.isdir(os.path.join(base, folder)):
        return None
    found = read_imagefolder(base, folder)
    if found is None:
        return None
    return Found(found.samples, found.read, labels=found.labels, classnames=["negative", "positive"])


READERS: dict[str, Callable[[str, str, suites.DatasetSpec], Found | None]] = {
    "wnid_folders": read_wnid_folders, "babel_imagenet": read_babel_imagenet, "objectnet": read_objectnet,
    "cars": read_cars, "fgvc_aircraft": read_fgvc_aircraft, "food101": read_food101, "gtsrb": read_gtsrb, "mnist": read_mnist,
    "stl10": read_stl10, "sun397": read_sun397, "country211": read_country211, "renderedsst2": read_renderedsst2,
}

HINTS = {  # where each layout's files go, for the DatasetNotFound message
    "wnid_folders": "{root}/<wnid>/<image> (the archive's WordNet-id folders, e.g. {root}/n01498041/)",
    "babel_imagenet": "{root}/val/<wnid>/<image> (ImageNet's folder: the data root's imagenet1k folder)",
    "objectnet": "{root}/objectnet-1.0/images/<folder>/<image> + {root}/folder_to_objectnet_label.json and "
                 "{root}/objectnet_to_imagenet_1k.json (from objectnet-1.0/mappings/)",
    "cars": "{root}/stanford_cars/{{devkit/cars_meta.mat, cars_test_annos_withlabels.mat, cars_test/}} "
            "(torchvision's StanfordCars layout)",
    "fgvc_aircraft": "{root}/fgvc-aircraft-2013b/data/{{variants.txt, images_variant_{split}.txt, images/}}",
    "food101": "{root}/food-101/{{meta/{split}.json, images/<class>/<id>.jpg}}",
    "gtsrb": "{root}/gtsrb/{{GT-final_test.csv, GTSRB/Final_Test/Images/}} (train: gtsrb/GTSRB/Training/<class>/)",
    "mnist": "{root}/MNIST/raw/{{t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte}} (train: train-*; .gz also read)",
    "stl10": "{root}/stl10_binary/{{test_X.bin, test_y.bin, class_names.txt}}",
    "sun397": "{root}/SUN397/{{ClassName.txt, <letter>/<class>/sun_*.jpg}}",
    "country211": "{root}/country211/{split}/<country code>/<image>",
    "renderedsst2": "{root}/rendered-sst2/{{train,valid,test}}/{{negative,positive}}/*.png",
}
