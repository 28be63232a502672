"""Tiny copies of clip_benchmark's datasets in the layouts torchvision and clip_benchmark leave on disk.

Each ``make_*`` writes under ``root`` what a clip_benchmark user has there (small images, the real annotation file
formats) and returns the number of samples of the test split. Images are 16x16 class-coloured patterns with
per-sample noise (``eval_fixtures._pattern``), so every sample has distinct pixels.
"""
import csv
import gzip
import json
import os

import numpy as np
import torch
from PIL import Image

from eval_fixtures import _pattern

SIZE = 16


def base_dir(path):
    os.makedirs(path, exist_ok=True)
    return path


def _save(path, label: int, index: int) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(_pattern(label % 6, 7 * label + index, SIZE)).save(path)
    return path


def make_wnid_folders(root, wnids, per_class=1):
    """``root/<wnid>/<i>.JPEG`` for every wnid (ImageNet-A/-R/-O, Sketch; ImageNet's ``val/``)."""
    for label, wnid in enumerate(wnids):
        for i in range(per_class):
            _save(os.path.join(root, wnid, f"{i}.JPEG"), label, i)
    return len(wnids) * per_class


def make_imagenet_meta(root, wnids, names):
    """torchvision ImageNet's ``meta.bin`` (wnid -> class words, validation wnids), so its class reads the folder."""
    torch.save(({w: (n,) for w, n in zip(wnids, names)}, []), os.path.join(root, "meta.bin"))


OBJECTNET_FOLDERS = {"air_freshener": "Air freshener", "alarm_clock": "Alarm clock", "banana": "Banana",
                     "bench": "Bench"}
OBJECTNET_TO_IMAGENET = {"Bench": "park bench", "Alarm clock": "analog clock; digital clock", "Banana": "banana"}


def make_objectnet(root, per_class=2):
    """``root/objectnet-1.0/images/<folder>/*.png`` + the four mapping files in ``root`` (as clip_benchmark
    copies them); 'air_freshener' maps to no ImageNet class and is left out by both readers."""
    for label, folder in enumerate(OBJECTNET_FOLDERS):
        for i in range(per_class):
            _save(os.path.join(root, "objectnet-1.0", "images", folder, f"{i}.png"), label, i)
    imagenet_names = ["analog clock", "digital clock", "banana", "park bench"]
    with open(os.path.join(root, "folder_to_objectnet_label.json"), "w") as f:
        json.dump(OBJECTNET_FOLDERS, f)
    with open(os.path.join(root, "objectnet_to_imagenet_1k.json"), "w") as f:
        json.dump(OBJECTNET_TO_IMAGENET, f)
    with open(os.path.join(root, "pytorch_to_imagenet_2012_id.json"), "w") as f:
        json.dump({str(i): i for i in range(len(imagenet_names))}, f)
    with open(os.path.join(root, "imagenet_to_label_2012_v2"), "w") as f:
        f.write("\n".join(imagenet_names) + "\n")
    return 3 * per_class


def make_cars(root, classes=("AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Audi R8 Coupe 2012"), per_class=2):
    """torchvision's StanfordCars layout: MATLAB annotation files (class ids from 1) + ``cars_test/``."""
    from scipy.io import savemat
    base = os.path.join(root, "stanford_cars")
    os.makedirs(os.path.join(base, "devkit"), exist_ok=True)
    rows = []
    for label in range(len(classes)):
        for i in range(per_class):
            name = f"{label * per_class + i + 1:05d}.jpg"
            _save(os.path.join(base, "cars_test", name), label, i)
            rows.append((name, label + 1))
    rows = rows[1::2] + rows[::2]  # the annotation order is not the class order
    table = np.array(rows, dtype=[("fname", object), ("class", object)])
    savemat(os.path.join(base, "cars_test_annos_withlabels.mat"), {"annotations": table})
    savemat(os.path.join(base, "devkit", "cars_meta.mat"), {"class_names": np.array(classes, dtype=object)})
    return len(rows)


def make_fgvc_aircraft(root, variants=("707-320", "A300B4", "Cessna 172", "F-16A/B"), per_class=2, split="test"):
    data = os.path.join(root, "fgvc-aircraft-2013b", "data")
    os.makedirs(data, exist_ok=True)
    with open(os.path.join(data, "variants.txt"), "w") as f:
        f.write("\n".join(variants) + "\n")
    lines = []
    for label, variant in enumerate(variants):
        for i in range(per_class):
            image = f"{1000000 + 10 * label + i}"
            _save(os.path.join(data, "images", image + ".jpg"), label, i)
            lines.append(f"{image} {variant}")
    with open(os.path.join(data, f"images_variant_{split}.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return len(lines)


def make_food101(root, classes=("apple_pie", "baby_back_ribs", "beignets"), per_class=2, split="test"):
    base = os.path.join(root, "food-101")
    listing = {}
    for label, name in enumerate(reversed(classes)):  # the listing's order is not the sorted class order
        listing[name] = []
        for i in range(per_class):
            _save(os.path.join(base, "images", name, f"{100 + i}.jpg"), label, i)
            listing[name].append(f"{name}/{100 + i}")
    os.makedirs(os.path.join(base, "meta"), exist_ok=True)
    with open(os.path.join(base, "meta", f"{split}.json"), "w") as f:
        json.dump(listing, f)
    return per_class * len(classes)


def make_gtsrb(root, labels=(0, 5, 5, 12, 42, 1)):
    base = os.path.join(root, "gtsrb")
    images = os.path.join(base, "GTSRB", "Final_Test", "Images")
    with open(os.path.join(base_dir(base), "GT-final_test.csv"), "w", newline="") as f:
        writer = csv.writer(f, delimiter=";")
        writer.writerow(["Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"])
        for i, label in enumerate(labels):
            _save(os.path.join(images, f"{i:05d}.ppm"), label, i)
            writer.writerow([f"{i:05d}.ppm", SIZE, SIZE, 1, 1, SIZE - 1, SIZE - 1, label])
    return len(labels)


def _idx(path, array: np.ndarray, compress=False):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_mnist(root, n_test=12, n_train=4, compress=False):
    """``root/MNIST/raw``: the four IDX files torchvision checks for (``.gz`` ones for clipforge alone)."""
    raw = base_dir(os.path.join(root, "MNIST", "raw"))
    rng = np.random.default_rng(0)
    suffix = ".gz" if compress else ""
    for prefix, n in (("t10k", n_test), ("train", n_train)):
        _idx(os.path.join(raw, f"{prefix}-images-idx3-ubyte{suffix}"), rng.integers(0, 256, (n, 28, 28)), compress)
        _idx(os.path.join(raw, f"{prefix}-labels-idx1-ubyte{suffix}"), np.arange(n) % 10, compress)
    return n_test


STL10_NAMES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


def make_stl10(root, n=10):
    base = base_dir(os.path.join(root, "stl10_binary"))
    rng = np.random.default_rng(1)
    rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8).tofile(os.path.join(base, "test_X.bin"))
    (np.arange(n, dtype=np.uint8) % 10 + 1).tofile(os.path.join(base, "test_y.bin"))
    with open(os.path.join(base, "class_names.txt"), "w") as f:
        f.write("\n".join(STL10_NAMES) + "\n")
    return n


SUN397_CLASSES = ["/a/abbey", "/a/apartment_building/outdoor", "/b/bakery/shop", "/b/beach"]


def make_sun397(root, per_class=2):
    base = base_dir(os.path.join(root, "SUN397"))
    with open(os.path.join(base, "ClassName.txt"), "w") as f:
        f.write("\n".join(SUN397_CLASSES) + "\n")
    for label, name in enumerate(SUN397_CLASSES):
        for i in range(per_class):
            _save(os.path.join(base, *name.strip("/").split("/"), f"sun_{label}{i:04d}.jpg"), label, i)
    return per_class * len(SUN397_CLASSES)


def make_class_folders(base, classes, per_class=2, ext="jpg"):
    """``base/<class>/<i>.<ext>``: torchvision's ImageFolder under Country211, Rendered SST2, FER2013."""
    for label, name in enumerate(classes):
        for i in range(per_class):
            _save(os.path.join(base, name, f"{i}.{ext}"), label, i)
    return per_class * len(classes)


def make_multilingual(root, images_folder, annotation, captions, relative_to=None):
    """clip_benchmark's annotation file for one language (image paths joined to the root it was given, one
    caption each) and the images; ``relative_to``: store paths relative to that folder (a relative root)."""
    paths = []
    for i in range(len(captions)):
        path = _save(os.path.join(root, images_folder, f"{i:03d}.jpg"), i, i)
        paths.append(os.path.relpath(path, relative_to) if relative_to else path)
    with open(os.path.join(root, annotation), "w", encoding="utf-8") as f:
        json.dump({"image_paths": paths, "annotations": list(captions), "indicies": list(range(len(paths)))}, f,
                  ensure_ascii=False)
    return len(paths)


def make_crossmodal_raw(root, languages=("en", "de"), n=5, missing=1):
    """The Crossmodal-3600 download: ``xm3600/captions.jsonl`` (every language, several captions) + images;
    ``missing`` listed images are not on disk."""
    folder = base_dir(os.path.join(root, "xm3600"))
    with open(os.path.join(folder, "captions.jsonl"), "w", encoding="utf-8") as f:
        for i in range(n + missing):
            key = f"{i:016x}"
            if i < n:
                _save(os.path.join(folder, "images", f"{key}.jpg"), i, i)
            record = {"image/key": key, **{lang: {"caption": [f"{lang} caption {i} a", f"{lang} caption {i} b"]}
                                           for lang in languages}}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return n


def make_sugar_crepe(root, task="swap_att", n=8):
    """clip_benchmark's SugarCrepe folder: ``<task>.json`` (string ids, not contiguous) + ``val2017/`` images."""
    items = {}
    for i in range(n):
        name = f"{139 + 17 * i:012d}.jpg"
        _save(os.path.join(root, "val2017", name), i, i)
        words = ["dog", "red car", "two cats", "a tree near water", "boat", "house on a hill", "sky", "bird"]
        items[str(3 * i + 1)] = {"filename": name, "caption": f"a photo of {words[i % 8]}",
                                 "negative_caption": f"a photo of {words[(3 * i + 1) % 8]}"}
    with open(os.path.join(root, f"{task}.json"), "w") as f:
        json.dump(items, f)
    return n
