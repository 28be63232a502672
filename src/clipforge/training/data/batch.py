"""Sample decoding and batch assembly shared by every source.

Every random choice in the pipeline draws from a seed derived from the sample's or batch's identity
(seed, epoch, rank, position), never from process-global state, so a batch is the same whichever process
builds it and whenever: that is what makes resuming mid-epoch exact.
"""
from __future__ import annotations

import contextlib
import logging
import random
from dataclasses import dataclass, fields
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from clipforge.data.images import ImageReadError, read_image

from .text import mask_tokens

logger = logging.getLogger("clipforge.data")

ImageTransform = Callable[[Image.Image], torch.Tensor]
Tokenize = Callable[[list[str]], torch.Tensor]


@dataclass
class DataStats:
    """Counts of what the pipeline read and skipped (summed over workers in the main process)."""

    samples: int = 0           # good samples delivered in batches
    corrupt_images: int = 0    # image bytes or file that PIL could not decode
    missing_images: int = 0    # image files that do not exist (CSV rows naming a missing path)
    oversized_images: int = 0  # images over Pillow's decompression-bomb pixel limit
    missing_fields: int = 0    # samples without an image or caption (or an empty or non-UTF-8 caption)
    shard_errors: int = 0      # shards that could not be opened or were truncated / unreadable
    filled: int = 0            # batch slots filled by repeating a good sample of the same batch
    balanced_out: int = 0      # samples left out this epoch by data.balance_from

    def add(self, counts: dict) -> None:
        for key, value in counts.items():
            setattr(self, key, getattr(self, key) + int(value))

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def skipped(self) -> int:
        return self.corrupt_images + self.missing_images + self.oversized_images + self.missing_fields

    def summary(self) -> str:
        """``"3 corrupt images, 1 missing image file, ..."`` for the non-zero skip counts."""
        parts = [(self.corrupt_images, "undecodable images"), (self.missing_images, "missing image files"),
                 (self.oversized_images, "images over the pixel limit"),
                 (self.missing_fields, "samples without an image or caption"),
                 (self.shard_errors, "damaged shards"), (self.filled, "batch slots filled by repeats")]
        return ", ".join(f"{n} {what}" for n, what in parts if n) or "nothing"


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integer parts; different part tuples give independent streams."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFFFFFFFFFF for p in parts]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


_kept = 0  # depth of ``generators_kept`` blocks; inside one, ``seeded`` only reseeds


@contextlib.contextmanager
def generators_kept():
    """Save torch's CPU, ``random``'s and numpy's generator states once for a block of ``seeded`` calls (one
    batch: saving and restoring per sample cost about 5% of a small-image pipeline) and restore them after."""
    global _kept
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    _kept += 1
    try:
        yield
    finally:
        _kept -= 1
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


@contextlib.contextmanager
def seeded(seed: int):
    """Seed torch, ``random`` and numpy for the block; the caller's generators are restored after it, or after
    the enclosing ``generators_kept`` block.

    Transforms (torchvision) and tokenizer reductions draw from the global generators, so they are seeded
    per sample; restoring keeps the training process's own random stream untouched when workers=0.
    """
    with contextlib.nullcontext() if _kept else generators_kept():
        # The CPU generator only: torch.manual_seed would also seed (and lazily trace) every accelerator,
        # which costs about a millisecond per call; image transforms run on the CPU.
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % (2**32))
        yield


_SKIP_COUNTER = {"missing": "missing_images", "undecodable": "corrupt_images", "too_large": "oversized_images"}


@dataclass
class RawSample:
    """One sample before decoding: image bytes or path, caption (None when missing)."""

    image: bytes | str | None
    caption: str | None


def prepare_sample(raw: RawSample, transform: ImageTransform, seed: int, counts: dict,
                   caption_transform: Optional[Callable[[str, int], str]] = None):
    """(image tensor, caption) or None when the sample is unusable; the reason goes into ``counts``.
    ``caption_transform(caption, seed)`` (training.data.captions) rewrites the caption with the sample's seed."""
    if raw.image is None or raw.caption is None or not raw.caption.strip():
        counts["missing_fields"] += 1
        return None
    caption = raw.caption.strip()
    if caption_transform is not None:
        caption = caption_transform(caption, seed)
        if caption is None:  # the transform found the caption unusable (e.g. a label that names no class)
            counts["missing_fields"] += 1
            return None
    # A transform with ``decode`` + ``finish`` (transforms.TrainTransform) crops while decoding: the crop is drawn
    # from the file's header, so a large JPEG can be decoded at reduced size. Both draw from the sample's seed.
    crops_while_decoding = hasattr(transform, "decode") and hasattr(transform, "finish")
    with seeded(seed):
        try:
            image = read_image(raw.image, decode=transform.decode if crops_while_decoding else None)
        except ImageReadError as exc:
            counts[_SKIP_COUNTER[exc.kind]] += 1
            logger.debug("skipping image: %s", exc)
            return None
        return (transform.finish(image) if crops_while_decoding else transform(image)), caption


@dataclass(frozen=True)
class EpochPlan:
    """Which batches one rank reads in one epoch; every source derives its order from these numbers."""

    seed: int
    epoch: int
    rank: int
    world_size: int
    batch_size: int
    num_batches: int      # per rank, the same on every rank
    start_batch: int = 0  # batches already consumed (resume)

    @property
    def num_samples(self) -> int:
        return self.num_batches * self.batch_size * self.world_size

    def batch_seed(self, batch: int) -> int:
        return derive_seed(self.seed, self.epoch, self.rank, batch, 0xB47C)


def new_counts() -> dict:
    return {f.name: 0 for f in fields(DataStats)}


def collate(items: Sequence, batch_size: int, tokenize: Tokenize, mask_prob: float, batch_seed: int,
            counts: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``batch_size`` samples; missing ones (None) are replaced by good ones of the same batch.

    Filling keeps every batch full (all ranks must agree on shapes for feature gathering) without reading
    further samples, so each batch consumes a fixed slice of the stream and resume offsets stay exact.
    """
    good = [item for item in items if item is not None]
    if not good:
        raise ValueError("collate needs at least one good sample")
    picked = [item if item is not None else good[i % len(good)] for i, item in enumerate(items)]
    counts["filled"] += len(picked) - len(good)
    counts["samples"] += len(good)
    images = torch.stack([image for image, _ in picked])  # (B, 3, H, W)
    captions = [caption for _, caption in picked]
    with seeded(batch_seed):
        tokens = tokenize(captions)
    tokens = _check_tokens(tokens, batch_size)
    if mask_prob > 0:
        generator = torch.Generator().manual_seed(derive_seed(batch_seed, 1))
        tokens = mask_tokens(tokens, mask_prob, generator=generator)
    return images, tokens


def _check_tokens(tokens, batch_size: int) -> torch.Tensor:
    if not isinstance(tokens, torch.Tensor):
        tokens = torch.as_tensor(tokens)
    if tokens.dim() != 2 or tokens.shape[0] != batch_size:
        raise ValueError(f"tokenize must return a (N, L) tensor for N captions; got shape {tuple(tokens.shape)} "
                         f"for {batch_size} captions")
    return tokens.long()


def first_good(candidates: Iterator[RawSample], transform: ImageTransform, seeds: Iterator[int], counts: dict,
               limit: int = 10_000, caption_transform=None) -> Optional[tuple]:
    """The first usable sample of ``candidates`` (used when a whole batch was unusable)."""
    for _, raw, seed in zip(range(limit), candidates, seeds):
        item = prepare_sample(raw, transform, seed, counts, caption_transform)
        if item is not None:
            return item
    return None
