"""Random-access sources (CSV/TSV tables, synthetic pairs) as a map-style dataset of whole batches.

Batch ``i`` of rank ``r`` is the slice ``[(i*world + r)*B, ... + B)`` of a seeded per-epoch permutation
(later laps of a longer epoch use fresh permutations), so any worker can build any batch and resuming at
batch ``K`` is exact for any number of workers.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Protocol

import torch
from PIL import Image
from torch.utils.data import Dataset

from clipforge.config import ConfigError
from clipforge.data.tables import read_table

from .batch import (EpochPlan, ImageTransform, RawSample, Tokenize, collate, derive_seed, first_good,
                    generators_kept, new_counts, prepare_sample)

logger = logging.getLogger("clipforge.data")


class IndexedSource(Protocol):
    def __len__(self) -> int: ...

    def raw(self, index: int) -> RawSample: ...


@dataclass(frozen=True)
class CsvTable:
    """Image paths and captions read from one or more CSV/TSV files."""

    paths: tuple[str, ...]
    captions: tuple[str, ...]
    missing_captions: int  # rows dropped at load: empty caption or path, or bytes that are not UTF-8

    def __len__(self) -> int:
        return len(self.paths)

    def raw(self, index: int) -> RawSample:
        return RawSample(image=self.paths[index], caption=self.captions[index])


def load_csv(files: list[str], separator: str | None, image_key: str, caption_key: str) -> CsvTable:
    """Read the tables (``separator`` None: tab or comma, from each header line); relative image paths are taken
    relative to the table's folder when they exist there. Undecodable rows are skipped, counted and logged."""
    paths, captions, missing = [], [], 0
    for file in files:
        if not os.path.isfile(file):
            raise FileNotFoundError(f"CSV file not found: {file!r}. Check data.train")
        table = read_table(file, separator)
        for key, field in ((image_key, "csv_image_key"), (caption_key, "csv_caption_key")):
            if key not in table.columns:
                raise ConfigError(f"{file}: no column {key!r} (data.{field}); the columns are {list(table.columns)} "
                                  f"when split by {table.separator!r} (data.csv_separator)")
        if table.bad_rows:
            logger.warning("%s: skipped %d rows that are not UTF-8 text (lines %s)", file, len(table.bad_rows),
                           ", ".join(map(str, table.bad_rows[:10])))
        folder = os.path.dirname(os.path.abspath(file))
        missing += len(table.bad_rows)
        for row in table.rows:
            caption = (row.get(caption_key) or "").strip()
            if not caption or not row.get(image_key):
                missing += 1
                continue
            paths.append(_resolve(row[image_key], folder))
            captions.append(caption)
    if not paths:
        raise ConfigError(f"no usable rows in {files}: every row lacks an image path or a caption")
    return CsvTable(tuple(paths), tuple(captions), missing)


def _resolve(path: str, folder: str) -> str:
    if os.path.isabs(path) or os.path.exists(path):
        return path
    return os.path.join(folder, path)


class SyntheticSource:
    """Deterministic random-colour images with numbered captions, for benchmarks and smoke tests."""

    def __init__(self, size: int, image_size: int = 224):
        self.size, self.image_size = size, image_size

    def __len__(self) -> int:
        return self.size

    def raw(self, index: int) -> RawSample:
        g = torch.Generator().manual_seed(index)
        pixels = torch.randint(0, 256, (self.image_size // 16, self.image_size // 16, 3), generator=g)
        image = Image.fromarray(pixels.to(torch.uint8).numpy()).resize((self.image_size, self.image_size))
        return RawSample(image=_encode_png(image), caption=f"synthetic image number {index}")


def _encode_png(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=0)
    return buffer.getvalue()


class IndexedBatches(Dataset):
    """``dataset[i]`` is ``(images, tokens, counts)`` for batch ``i`` of ``plan``."""

    def __init__(self, source: IndexedSource, plan: EpochPlan, image_transform: ImageTransform, tokenize: Tokenize,
                 text_mask_prob: float = 0.0, caption_transform=None):
        self.source, self.plan = source, plan
        self.image_transform, self.tokenize, self.text_mask_prob = image_transform, tokenize, text_mask_prob
        self.caption_transform = caption_transform
        self._laps: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.plan.num_batches

    def _index(self, position: int) -> int:
        lap, offset = divmod(position, len(self.source))
        if lap not in self._laps:
            g = torch.Generator().manual_seed(derive_seed(self.plan.seed, self.plan.epoch, lap, 0x1A9))
            self._laps = {lap: torch.randperm(len(self.source), generator=g)}  # keep one lap in memory
        return int(self._laps[lap][offset])

    def _prepare(self, position: int, counts: dict):
        seed = derive_seed(self.plan.seed, self.plan.epoch, position, 0x5A)
        return prepare_sample(self.source.raw(self._index(position)), self.image_transform, seed, counts,
                              self.caption_transform)

    def __getitem__(self, batch: int):
        plan = self.plan
        if not 0 <= batch < plan.num_batches:
            raise IndexError(f"batch {batch} out of range [0, {plan.num_batches})")
        start = (batch * plan.world_size + plan.rank) * plan.batch_size
        counts = new_counts()
        with generators_kept():
            items = [self._prepare(start + k, counts) for k in range(plan.batch_size)]
            if not any(item is not None for item in items):
                items[0] = self._rescue(start, counts)
            images, tokens = collate(items, plan.batch_size, self.tokenize, self.text_mask_prob,
                                     plan.batch_seed(batch), counts)
        return images, tokens, counts

    def _rescue(self, start: int, counts: dict):
        # Positions past the epoch's end are a deterministic reserve, so this stays exact on resume.
        beyond = self.plan.num_samples + start
        positions = range(beyond, beyond + 10_000)
        raws = (self.source.raw(self._index(p)) for p in positions)
        seeds = (derive_seed(self.plan.seed, self.plan.epoch, p, 0x5A) for p in positions)
        item = first_good(raws, self.image_transform, seeds, counts, caption_transform=self.caption_transform)
        if item is None:
            raise RuntimeError("no readable image found: the image paths in the CSV do not open "
                               "(check data.csv_image_key and that paths are relative to the CSV or cwd)")
        return item
