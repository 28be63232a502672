"""The quickstart dataset: coloured shapes at known positions, with captions that describe them.

``generate_shapes_dataset`` writes WebDataset shards ``train-000000.tar ...`` and ``val-000000.tar ...``
(members ``<key>.jpg``, ``<key>.txt``, ``<key>.cls``, ``<key>.json``), a ``sizes.json`` with per-shard
counts (so the loader knows the epoch length) and ``dataset.json`` with class names and prompt templates
for zero-shot evaluation. ``cls`` indexes ``"<colour> <shape>"`` classes. Output is byte-identical for a
seed. The task is small enough for a tiny CLIP to learn on a CPU in minutes.
"""
from __future__ import annotations

import io
import json
import os
import random
import tarfile
from dataclasses import dataclass

from PIL import Image, ImageDraw
from clipforge._atomic import atomic_open, write_text_atomic
from clipforge.progress import progress

SHAPES = ("circle", "square", "triangle", "cross")
COLORS = {"red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 60, 220),
          "yellow": (235, 215, 20), "purple": (140, 40, 170), "orange": (245, 130, 20)}
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
SIZES = ("small", "large")
TEMPLATES = (
    "a {color} {shape} in the {position}",
    "a photo of a {size} {color} {shape} on the {position}",
    "a {size} {color} {shape} at the {position} of the image",
    "{color} {shape}, {position}",
    "there is a {color} {shape} in the {position} corner",
    "a drawing of a {color} {shape}",
    "the {position} has a {size} {color} {shape}",
)
ZERO_SHOT_TEMPLATES = ("a {}.", "a photo of a {}.", "a drawing of a {}.")
_BACKGROUNDS = ((250, 250, 250), (235, 235, 235), (245, 240, 230), (225, 230, 235))
# the "shifted" variant (a distribution shift for fine-tuning demos): dark backgrounds, outlined shapes
_DARK_BACKGROUNDS = ((25, 25, 30), (45, 40, 35), (20, 35, 45), (50, 50, 50))
VARIANTS = ("plain", "shifted")


@dataclass(frozen=True)
class ShapeSample:
    shape: str
    color: str
    position: str
    size: str
    caption: str

    @property
    def label(self) -> int:
        return list(COLORS).index(self.color) * len(SHAPES) + SHAPES.index(self.shape)


def class_names() -> list[str]:
    """Zero-shot class names in ``cls`` order: colour-major, then shape."""
    return [f"{color} {shape}" for color in COLORS for shape in SHAPES]


def sample_attributes(rng: random.Random) -> ShapeSample:
    shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
    position, size = rng.choice(POSITIONS), rng.choice(SIZES)
    caption = rng.choice(TEMPLATES).format(shape=shape, color=color, position=position, size=size)
    return ShapeSample(shape, color, position, size, caption)


def draw_sample(sample: ShapeSample, image_size: int, rng: random.Random, variant: str = "plain") -> Image.Image:
    """Draw the shape in its quadrant with a little jitter; the shape never crosses the image centre. The
    ``shifted`` variant draws outlines on dark backgrounds (same classes, another look)."""
    shifted = variant == "shifted"
    image = Image.new("RGB", (image_size, image_size), rng.choice(_DARK_BACKGROUNDS if shifted else _BACKGROUNDS))
    half = image_size / 2
    extent = half * (0.8 if sample.size == "large" else 0.45)  # side of the shape's bounding box
    slack = half - extent
    x0 = (half if "right" in sample.position else 0) + rng.uniform(0.1, 0.9) * slack
    y0 = (half if "bottom" in sample.position else 0) + rng.uniform(0.1, 0.9) * slack
    box = (x0, y0, x0 + extent, y0 + extent)
    _draw_shape(ImageDraw.Draw(image), sample.shape, box, COLORS[sample.color],
                outline=max(2, round(extent / 7)) if shifted else 0)
    return image


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple, color: tuple, outline: int = 0) -> None:
    """A filled shape, or its outline ``outline`` pixels wide."""
    x0, y0, x1, y1 = box
    paint = {"outline": color, "width": outline} if outline else {"fill": color}
    if shape == "circle":
        draw.ellipse(box, **paint)
    elif shape == "square":
        draw.rectangle(box, **paint)
    elif shape == "triangle":  # apex up
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], **paint)
    elif outline:  # cross: the outline of the two bars' union
        third = (x1 - x0) / 3
        points = [(x0 + third, y0), (x1 - third, y0), (x1 - third, y0 + third), (x1, y0 + third), (x1, y1 - third),
                  (x1 - third, y1 - third), (x1 - third, y1), (x0 + third, y1), (x0 + third, y1 - third),
                  (x0, y1 - third), (x0, y0 + third), (x0 + third, y0 + third)]
        draw.polygon(points, **paint)
    else:  # cross: two bars a third of the box wide
        third = (x1 - x0) / 3
        draw.rectangle((x0 + third, y0, x1 - third, y1), fill=color)
        draw.rectangle((x0, y0 + third, x1, y1 - third), fill=color)


def _encode(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    if image_format == "jpg":
        image.save(buffer, format="JPEG", quality=92)
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed metadata keeps shards byte-identical
    tar.addfile(info, io.BytesIO(data))


def _write_shard(path: str, members: list[tuple[str, bytes]]) -> None:
    with atomic_open(path) as f, tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            _add_member(tar, name, data)


def _write_json(path: str, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True))


def _write_split(out_dir: str, split: str, count: int, shard_size: int, image_size: int, image_format: str,
                 rng: random.Random, bar, variant: str = "plain") -> dict[str, int]:
    sizes = {}
    for shard, start in enumerate(range(0, count, shard_size)):
        members = []
        for index in range(start, min(count, start + shard_size)):
            sample = sample_attributes(rng)
            image = draw_sample(sample, image_size, rng, variant)
            key = f"{split}{index:07d}"
            meta = {"shape": sample.shape, "color": sample.color, "position": sample.position, "size": sample.size}
            members += [(f"{key}.{image_format}", _encode(image, image_format)),
                        (f"{key}.txt", sample.caption.encode()), (f"{key}.cls", str(sample.label).encode()),
                        (f"{key}.json", json.dumps(meta, sort_keys=True).encode())]
            bar.update(1)
        name = f"{split}-{shard:06d}.tar"
        _write_shard(os.path.join(out_dir, name), members)
        sizes[name] = min(count, start + shard_size) - start
    return sizes


def generate_shapes_dataset(out_dir: str, n_train: int, n_val: int, image_size: int = 64, seed: int = 0,
                            shard_size: int = 1000, image_format: str = "jpg", show_progress: bool = False,
                            variant: str = "plain") -> dict:
    """Write the shapes dataset to ``out_dir`` and return its description (also saved as dataset.json).

    The returned dict has ``train`` / ``val`` brace specs for ``DataConfig.train``, ``num_train`` /
    ``num_val``, ``classnames``, ``templates`` and the attribute vocabularies. ``classnames.txt`` and
    ``templates.txt`` are written next to the shards, so ``wds:<val spec>`` is a complete evaluation set for
    ``clipforge benchmark`` and the ``eval`` section of a training run.
    """
    if n_train < 1 or n_val < 0:
        raise ValueError(f"n_train must be >= 1 and n_val >= 0, got n_train={n_train}, n_val={n_val}")
    if shard_size < 1 or image_size < 16:
        raise ValueError(f"shard_size must be >= 1 and image_size >= 16, got {shard_size}, {image_size}")
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {list(VARIANTS)}, got {variant!r}")
    os.makedirs(out_dir, exist_ok=True)
    # Separate streams per split: changing n_train never changes the validation images.
    train_rng, val_rng = random.Random(f"{seed}-train"), random.Random(f"{seed}-val")
    with progress(total=n_train + n_val, desc="shapes dataset", unit="img", enabled=show_progress) as bar:
        sizes = _write_split(out_dir, "train", n_train, shard_size, image_size, image_format, train_rng, bar, variant)
        sizes.update(_write_split(out_dir, "val", n_val, shard_size, image_size, image_format, val_rng, bar, variant))
    info = {
        "train": _spec("train", _ceil_div(n_train, shard_size)),
        "val": _spec("val", _ceil_div(n_val, shard_size)) if n_val else None,
        "num_train": n_train, "num_val": n_val, "image_size": image_size, "seed": seed, "variant": variant,
        "classnames": class_names(), "templates": list(ZERO_SHOT_TEMPLATES), "label_key": "cls",
        "shapes": list(SHAPES), "colors": list(COLORS), "positions": list(POSITIONS), "sizes": list(SIZES),
    }
    _write_json(os.path.join(out_dir, "sizes.json"), sizes)
    write_text_atomic(os.path.join(out_dir, "classnames.txt"), "\n".join(class_names()) + "\n")
    write_text_atomic(os.path.join(out_dir, "templates.txt"), "\n".join(ZERO_SHOT_TEMPLATES) + "\n")
    # Shard patterns are stored relative to the folder (it can move) and returned absolute.
    _write_json(os.path.join(out_dir, "dataset.json"), info)
    return _absolute(info, out_dir)


def _ceil_div(count: int, size: int) -> int:
    return -(-count // size)


def _spec(split: str, num_shards: int) -> str:
    last = num_shards - 1
    return f"{split}-{{000000..{last:06d}}}.tar" if last > 0 else f"{split}-000000.tar"


def _absolute(info: dict, out_dir: str) -> dict:
    folder = os.path.abspath(out_dir)
    return {**info, **{k: os.path.join(folder, info[k]) for k in ("train", "val") if info[k]}}


def load_shapes_info(out_dir: str) -> dict:
    """Read the ``dataset.json`` written by ``generate_shapes_dataset``."""
    path = os.path.join(out_dir, "dataset.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: run generate_shapes_dataset({out_dir!r}, ...) first")
    with open(path) as f:
        return _absolute(json.load(f), out_dir)
