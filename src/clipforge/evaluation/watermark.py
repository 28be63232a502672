"""ImageNet-W: ImageNet's images with a translucent text watermark, drawn by the ``imagenet_w`` package.

clip_benchmark puts ``imagenet_w.AddWatermark(crop size)`` into the model's preprocessing just before its
normalisation step; ``watermarked(transform)`` does the same to any evaluation transform: clipforge's
(``transforms.create_eval_transform`` / ``create_eval_array_transform``: the mark is drawn on the cropped PIL
image) or a torchvision ``Compose`` ending in ``ToTensor`` + ``Normalize`` (drawn on the tensor, as clip_benchmark
does; both give the same pixels, since ``ToTensor``'s ``/ 255`` is undone exactly). The mark's size follows the
image it meets, which after the crop is the crop size clip_benchmark reads from ``CenterCrop``. The transform given
is copied, never changed, so other datasets keep the plain preprocessing.

``imagenet_w`` is optional: it is imported only for this dataset (``pip install imagenet-w``).
"""
from __future__ import annotations

import copy
from typing import Callable

from PIL import Image

from clipforge._optional import require
from clipforge.transforms import ToNormalizedArray

HINT = "imagenet-w draws its watermark with the imagenet_w package: pip install imagenet-w"


def _normalizes(step) -> bool:
    from torchvision.transforms import Normalize

    return isinstance(step, (ToNormalizedArray, Normalize))


class Watermark:
    """``imagenet_w.AddWatermark`` sized by the image: a PIL image or a (3, H, W) tensor in, the same kind out.
    The package and its font are loaded on first use in each process (DataLoader workers get only this class)."""

    def __init__(self):
        self._marks: dict[int, Callable] = {}

    def __getstate__(self):
        return {"_marks": {}}

    def __call__(self, image):
        size = min(image.size) if isinstance(image, Image.Image) else min(image.shape[-2:])
        if size not in self._marks:
            self._marks[size] = require("imagenet_w", hint=HINT).AddWatermark(size)
        return self._marks[size](image)

    def __repr__(self):
        return "Watermark(imagenet_w.AddWatermark)"


def watermarked(transform: Callable | None) -> Callable:
    """A copy of ``transform`` with ``Watermark`` inserted before its (last) normalisation step; with no transform,
    the mark alone (drawn on the image as read). A transform without a step list or without a normalisation step
    is a one-line ValueError."""
    require("imagenet_w", hint=HINT)  # missing: said now, before any image is encoded
    if transform is None:
        return Watermark()
    attribute = next((name for name in ("transforms", "steps") if isinstance(getattr(transform, name, None), list)),
                     None)
    steps = getattr(transform, attribute) if attribute else []
    where = [i for i, step in enumerate(steps) if _normalizes(step)]
    if not where:
        raise ValueError(f"imagenet-w: the watermark goes between the crop and the normalisation, but the "
                         f"{type(transform).__name__} transform has no list of steps with a normalisation step "
                         "(torchvision's Normalize or clipforge's ToNormalizedTensor); pass an evaluation transform "
                         "with one")
    marked = copy.copy(transform)
    setattr(marked, attribute, steps[:where[-1]] + [Watermark()] + steps[where[-1]:])
    return marked
