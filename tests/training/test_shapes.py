"""The quickstart shapes dataset: files, determinism, and captions that match the pixels."""
import hashlib
import io
import json
import os
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from clipforge.training import shapes
from clipforge.evaluation.datasets import load_dataset
from clipforge.training.data import DataConfig, create_train_loader


def read_split(folder, split):
    """[(image array, caption, label, meta)] from every shard of a split, in order."""
    samples = {}
    for name in sorted(os.listdir(folder)):
        if not (name.startswith(split + "-") and name.endswith(".tar")):
            continue
        with tarfile.open(os.path.join(folder, name)) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    out = []
    for key in sorted(samples):
        s = samples[key]
        image = np.asarray(Image.open(io.BytesIO(s.get("png") or s["jpg"])).convert("RGB")).astype(int)
        out.append((image, s["txt"].decode(), int(s["cls"]), json.loads(s["json"])))
    return out


def test_writes_shards_sizes_and_info(tmp_path):
    info = shapes.generate_shapes_dataset(tmp_path, n_train=25, n_val=7, shard_size=10)
    names = sorted(os.listdir(tmp_path))
    assert names == ["classnames.txt", "dataset.json", "sizes.json", "templates.txt", "train-000000.tar",
                     "train-000001.tar", "train-000002.tar", "val-000000.tar"]
    assert (tmp_path / "classnames.txt").read_text().splitlines() == info["classnames"]
    sizes = json.loads((tmp_path / "sizes.json").read_text())
    assert sizes == {"train-000000.tar": 10, "train-000001.tar": 10, "train-000002.tar": 5, "val-000000.tar": 7}
    assert info == shapes.load_shapes_info(tmp_path)
    assert info["train"].endswith("train-{000000..000002}.tar") and info["val"].endswith("val-000000.tar")
    assert len(info["classnames"]) == len(shapes.COLORS) * len(shapes.SHAPES)
    assert len(read_split(tmp_path, "train")) == 25


def test_same_seed_gives_identical_bytes_and_other_seeds_differ(tmp_path):
    def digest(folder):
        return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in os.listdir(folder)}

    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        shapes.generate_shapes_dataset(tmp_path / name, n_train=12, n_val=4, seed=seed, shard_size=5)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a")["train-000000.tar"] != digest(tmp_path / "c")["train-000000.tar"]
    # The validation split does not depend on the size of the training split.
    shapes.generate_shapes_dataset(tmp_path / "d", n_train=3, n_val=4, seed=1, shard_size=5)
    assert digest(tmp_path / "d")["val-000000.tar"] == digest(tmp_path / "a")["val-000000.tar"]


def _shape_of(mask: np.ndarray) -> str:
    ys, xs = np.nonzero(mask)
    box = mask[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]
    h, w = box.shape
    fill = box.mean()
    corner = box[: h // 4, : w // 4].mean()
    top, bottom = box[: h // 2].mean(), box[h // 2:].mean()
    if fill > 0.9:
        return "square"
    if bottom > 1.6 * top:
        return "triangle"
    if corner < 0.1 and box[h // 2, :].mean() > 0.9:
        return "cross"
    return "circle"


def test_captions_and_labels_match_the_drawn_content(tmp_path):
    shapes.generate_shapes_dataset(tmp_path, n_train=1, n_val=120, image_size=64, seed=3, image_format="png")
    palette = {name: np.array(rgb) for name, rgb in shapes.COLORS.items()}
    classnames = shapes.class_names()
    for image, caption, label, meta in read_split(tmp_path, "val"):
        background = image[0, 0]
        mask = np.abs(image - background).sum(axis=2) > 60  # (H, W) shape pixels
        ys, xs = np.nonzero(mask)
        vertical = "bottom" if ys.mean() > 32 else "top"
        horizontal = "right" if xs.mean() > 32 else "left"
        assert meta["position"] == f"{vertical} {horizontal}"
        mean_colour = image[mask].mean(axis=0)
        nearest = min(palette, key=lambda c: np.abs(palette[c] - mean_colour).sum())
        assert nearest == meta["color"]
        assert _shape_of(mask) == meta["shape"]
        assert f"{meta['color']} {meta['shape']}" in caption
        for position in shapes.POSITIONS:
            if position in caption:
                assert position == meta["position"]
        assert classnames[label] == f"{meta['color']} {meta['shape']}"
    captions = {caption for _, caption, _, _ in read_split(tmp_path, "val")}
    assert len(captions) > 60  # varied wording, not one template


def test_generated_dataset_feeds_the_train_loader_and_eval_dataset(tmp_path):
    info = shapes.generate_shapes_dataset(tmp_path, n_train=40, n_val=10, shard_size=10)
    transform = T.Compose([T.Resize(16), T.ToTensor()])

    def tokenize(captions):
        return torch.tensor([[1, len(c.split()), 2] for c in captions])

    cfg = DataConfig(kind="webdataset", train=info["train"], batch_size=8, workers=0, shuffle_buffer=16)
    data = create_train_loader(cfg, image_transform=transform, tokenize=tokenize)
    batches = list(data)
    assert data.num_samples == 40 and len(batches) == 5 and batches[0][0].shape == (8, 3, 16, 16)
    val = load_dataset(f"wds:{info['val']}", transform=transform)
    assert len(val.dataset) == 10 and val.classnames == info["classnames"] and val.tasks == ("classification",
                                                                                              "retrieval")
    assert all(0 <= label < len(info["classnames"]) for label in val.labels.tolist())


def test_bad_arguments_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="n_train"):
        shapes.generate_shapes_dataset(tmp_path, n_train=0, n_val=1)
    with pytest.raises(ValueError, match="image_format"):
        shapes.generate_shapes_dataset(tmp_path, n_train=1, n_val=1, image_format="gif")
    with pytest.raises(FileNotFoundError, match="generate_shapes_dataset"):
        shapes.load_shapes_info(tmp_path / "nothing")
