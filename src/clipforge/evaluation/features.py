"""Encoding a dataset once into feature matrices, with an optional on-disk cache.

Every metric (zero-shot, retrieval, linear probe) works on L2-normalised features, so the expensive part, running
the image tower over the dataset, is done here once and can be saved. A batch from a dataloader is
``(images, targets)`` or ``(images, targets, skipped)``, where ``skipped`` counts samples the loader dropped
because they failed to decode (see ``datasets.collate_skipping``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from clipforge._atomic import torch_save_atomic

EncodeFn = Callable[[torch.Tensor], torch.Tensor]
Progress = Callable[[int], None]


@dataclasses.dataclass
class Encoders:
    """What evaluation needs from a model: the two encoders, the tokenizer and the image preprocessing.

    ``model_id`` and ``transform_id`` name the features in the cache; ``weights_path`` is measured for disk usage.
    """

    encode_image: EncodeFn
    encode_text: EncodeFn
    tokenize: Callable[[list[str]], torch.Tensor]
    transform: Callable | None = None
    image_size: int | tuple[int, int] = 224
    model_id: str = "model"
    transform_id: str = ""
    weights_path: str | None = None


@dataclasses.dataclass
class EncodedImages:
    """Image features (N, D) with their targets: class ids (N,), multi-hot (N, C) or caption lists."""

    features: torch.Tensor
    targets: torch.Tensor | list
    skipped: int = 0


def unpack_batch(batch) -> tuple[torch.Tensor, object, int]:
    """Split a loader batch into (images, targets, skipped)."""
    if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
        raise ValueError("a batch must be (images, targets) or (images, targets, skipped); "
                         f"got {type(batch).__name__} of length {len(batch) if hasattr(batch, '__len__') else '?'}")
    if len(batch) == 3:
        return batch[0], batch[1], int(batch[2])
    return batch[0], batch[1], 0


# Texts per encode_text call. Small enough that a CPU keeps a batch's activations in cache and reuses freed pages
# (64 x 77 positions): 800 prompts through bench_eval's model took 3.7 s in batches of 64, 5.9 s in batches of 256
# (best of 4, same process, on a CPU; not measured on a GPU), and clip_benchmark encodes 80 at a time (one class's
# prompts).
TEXT_BATCH = 64


@torch.no_grad()
def encode_texts(encode_text: EncodeFn, tokenize: Callable[[list[str]], torch.Tensor], texts: list[str],
                 batch_size: int = TEXT_BATCH) -> torch.Tensor:
    """(N, D) normalised float32 text features, encoded ``batch_size`` texts at a time."""
    if not texts:
        raise ValueError("no texts to encode")
    chunks = [encode_text(tokenize(texts[i:i + batch_size])) for i in range(0, len(texts), batch_size)]
    return F.normalize(torch.cat([c.float().cpu() for c in chunks]), dim=-1)


@torch.no_grad()
def encode_images(encode_image: EncodeFn, dataloader: Iterable, progress: Progress | None = None) -> EncodedImages:
    """Run ``encode_image`` over a loader: normalised float32 features, targets and the count of skipped samples."""
    features, targets, skipped = [], [], 0
    captions = False
    for batch in dataloader:
        images, target, batch_skipped = unpack_batch(batch)
        skipped += batch_skipped
        if len(images) == 0:
            continue
        features.append(F.normalize(encode_image(images).float().cpu(), dim=-1))
        if isinstance(target, torch.Tensor):
            targets.append(target.cpu())
        else:  # retrieval: one list of captions per image
            captions = True
            targets.extend([list(t) if not isinstance(t, str) else [t] for t in target])
        if progress is not None:
            progress(len(images))
    if not features:
        raise ValueError(f"the dataset yielded no images ({skipped} skipped as undecodable): nothing to evaluate. "
                         "Check the dataset path and layout.")
    all_targets = targets if captions else torch.cat(targets)
    return EncodedImages(torch.cat(features), all_targets, skipped)


def cache_key(*parts: object) -> str:
    """A short stable file name for a (model id, dataset, split, transform description, ...) tuple."""
    text = "\x1f".join(str(p) for p in parts)
    readable = "-".join(str(p) for p in parts[:3]).replace("/", "_").replace(":", "_")[:80]
    return f"{readable}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def cached(path: str | None, compute: Callable[[], object]) -> object:
    """Load ``path`` if it exists, else compute and save it (no cache when ``path`` is None)."""
    if path is None:
        return compute()
    if os.path.exists(path):
        return torch.load(path, map_location="cpu", weights_only=True)
    value = compute()
    torch_save_atomic(value, path)
    return value
