"""WebDataset tar shards as an ``IterableDataset`` of ready batches, exactly resumable.

Each DataLoader worker of each rank reads its own disjoint shards (``shards.worker_shards``) as one raw
stream of undecoded samples, shuffled by a seeded buffer. Worker ``w`` builds the batches ``w, w+W, ...``
of the rank; batch ``j`` of a worker is always raw samples ``[j*B, (j+1)*B)`` of its stream (unusable
samples are filled from the same batch), so a worker's position is a plain count of raw samples.

Resuming at batch ``K`` with the same number of workers: loader worker ``u`` plays worker
``(u + K) % W`` (PyTorch hands out batches round-robin from worker 0, and batch ``K`` belongs to worker
``K % W``) and skips its consumed raw samples without decoding them; with ``shuffle_buffer=0`` and a
``sizes.json`` whole shards are skipped without being opened.
"""
from __future__ import annotations

import itertools
import logging
import random
from dataclasses import dataclass
from typing import Iterator

from torch.utils.data import IterableDataset, get_worker_info

from clipforge.data.shards import ShardList, open_url
from clipforge.data.tar import samples_of

from .batch import (EpochPlan, ImageTransform, RawSample, Tokenize, collate, derive_seed, first_good,
                    generators_kept, new_counts, prepare_sample)
from .shards import resampled_shards, shard_cycles, worker_shards

logger = logging.getLogger("clipforge.data")


@dataclass(frozen=True)
class TarFormat:
    """Which tar members hold the image and the caption (``;`` separates alternatives)."""

    image_keys: tuple[str, ...] = ("jpg", "png", "jpeg", "webp")
    caption_keys: tuple[str, ...] = ("txt",)
    shuffle_buffer: int = 1000
    resampled: bool = False
    balance: object = None  # curation.online.OnlineBalance: keep masks per shard and epoch


def read_shard(url: str, fmt: TarFormat, counts: dict) -> Iterator[RawSample]:
    """Raw (undecoded) samples of one shard."""
    for sample in samples_of(url, counts, open_url):
        yield RawSample(image=_first(sample, fmt.image_keys), caption=_caption(sample, fmt.caption_keys))


def _first(sample: dict, keys: tuple[str, ...]):
    return next((sample[k] for k in keys if k in sample), None)


def _caption(sample: dict, keys: tuple[str, ...]) -> str | None:
    data = _first(sample, keys)
    if data is None:
        return None
    try:
        return data.decode("utf-8") if isinstance(data, bytes) else str(data)
    except UnicodeDecodeError:
        return None


def buffer_shuffle(items: Iterator, size: int, rng: random.Random) -> Iterator:
    """Shuffle a stream through a buffer of ``size`` items (deterministic for a seeded ``rng``).

    Output starts once a tenth of the buffer is filled; until it is full, two items go in per item out,
    so the first batch does not wait for the whole buffer.
    """
    items = iter(items)
    buffer, start = [], max(1, size // 10)
    for item in items:
        buffer.append(item)
        if len(buffer) < size:
            buffer.extend(itertools.islice(items, 1))
        if len(buffer) >= start:
            k = rng.randrange(len(buffer))
            buffer[k], buffer[-1] = buffer[-1], buffer[k]
            yield buffer.pop()
    rng.shuffle(buffer)
    yield from buffer


class TarBatches(IterableDataset):
    """Yields ``(images, tokens, counts)`` for the batches of ``plan`` that this loader worker owns."""

    def __init__(self, shards: ShardList, plan: EpochPlan, fmt: TarFormat, image_transform: ImageTransform,
                 tokenize: Tokenize, text_mask_prob: float = 0.0, caption_transform=None):
        super().__init__()
        self.shards, self.plan, self.fmt = shards, plan, fmt
        self.image_transform, self.tokenize, self.text_mask_prob = image_transform, tokenize, text_mask_prob
        self.caption_transform = caption_transform

    def __iter__(self):
        info = get_worker_info()
        num_workers, loader_worker = (info.num_workers, info.id) if info is not None else (1, 0)
        plan = self.plan
        worker = (loader_worker + plan.start_batch) % num_workers
        consumed = len(range(worker, plan.start_batch, num_workers))  # this worker's batches before start
        counts = new_counts()
        raw = self._raw_stream(worker, num_workers, consumed * plan.batch_size, counts)
        position = consumed * plan.batch_size
        for batch in range(plan.start_batch + (worker - plan.start_batch) % num_workers, plan.num_batches,
                           num_workers):
            with generators_kept():
                chunk = list(itertools.islice(raw, plan.batch_size))
                items = [self._prepare(sample, worker, position + k, counts) for k, sample in enumerate(chunk)]
                position += len(chunk)
                if not any(item is not None for item in items):
                    items[0] = self._rescue(raw, worker, position, counts)
                images, tokens = collate(items, plan.batch_size, self.tokenize, self.text_mask_prob,
                                         plan.batch_seed(batch), counts)
            yield images, tokens, dict(counts)
            counts.update(new_counts())  # reset in place: the shard reader holds this same dict

    def _prepare(self, sample: RawSample, worker: int, position: int, counts: dict):
        plan = self.plan
        seed = derive_seed(plan.seed, plan.epoch, plan.rank, worker, position)
        return prepare_sample(sample, self.image_transform, seed, counts, self.caption_transform)

    def _rescue(self, raw: Iterator[RawSample], worker: int, position: int, counts: dict):
        # A whole batch was unusable: read ahead for one good sample. This shifts later batches of this
        # worker, so a resume past this point is no longer sample-exact (logged).
        logger.warning("a whole batch of %d samples was unusable; reading ahead (resume after this point is "
                       "approximate)", self.plan.batch_size)
        seeds = (derive_seed(self.plan.seed, self.plan.epoch, self.plan.rank, worker, position + k)
                 for k in itertools.count())
        item = first_good(raw, self.image_transform, seeds, counts, caption_transform=self.caption_transform)
        if item is None:
            raise RuntimeError("no usable sample in 10000 consecutive samples: the shards look corrupt or use "
                               f"other keys than image={self.fmt.image_keys} caption={self.fmt.caption_keys} "
                               "(set data.wds_image_key / data.wds_caption_key)")
        return item

    def _raw_stream(self, worker: int, num_workers: int, skip: int, counts: dict) -> Iterator[RawSample]:
        plan, fmt = self.plan, self.fmt
        if fmt.resampled:
            order = resampled_shards(self.shards.weights, plan.seed, plan.epoch, plan.rank, worker)
        else:
            mine = worker_shards(len(self.shards.urls), plan.seed, plan.epoch, plan.rank, plan.world_size,
                                 worker, num_workers)
            order = shard_cycles(mine, plan.seed, plan.epoch, plan.rank, worker)
        if fmt.shuffle_buffer > 0:
            rng = random.Random(derive_seed(plan.seed, plan.epoch, plan.rank, worker, 0x5B0F))
            shuffled = buffer_shuffle(self._read(order, 0, counts), fmt.shuffle_buffer, rng)
            return itertools.islice(shuffled, skip, None)  # replays raw bytes only: nothing is decoded
        return self._read(order, skip, counts)

    def _read(self, order: Iterator[tuple[int, int]], skip: int, counts: dict) -> Iterator[RawSample]:
        """Raw samples of the shards in ``order``, minus the first ``skip`` (whole shards when sizes are known)."""
        balance = self.fmt.balance
        sizes = self.shards.sizes if balance is None else None  # balanced shards are shorter than their sizes
        empty_run, limit = 0, max(100, 4 * len(self.shards.urls))
        for _, shard in order:
            if sizes is not None and skip >= sizes[shard] > 0:
                skip -= sizes[shard]
                empty_run = 0
                continue
            url = self.shards.urls[shard]
            keep = balance.mask(url, self.plan.epoch) if balance is not None else None
            count = 0
            for position, sample in enumerate(read_shard(url, self.fmt, counts)):
                if keep is not None and not (position < len(keep) and keep[position]):
                    counts["balanced_out"] += skip == 0
                    continue
                count += 1
                if skip > 0:
                    skip -= 1
                    continue
                yield sample
            empty_run = 0 if count else empty_run + 1
            if empty_run >= limit:
                raise RuntimeError(f"{empty_run} shards in a row held no samples (e.g. {self.shards.urls[shard]}): "
                                   "the shards are empty or unreadable; check data.train")
