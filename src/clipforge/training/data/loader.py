"""``create_train_loader``: a ``DataConfig`` plus a transform and a tokenizer -> batches for one rank and epoch.

What resuming reproduces (``start_batch=K`` yields exactly batches ``K..`` of an uninterrupted epoch, given
the same seed, epoch, rank and world size):

- ``csv`` and ``synthetic``: exact for any ``workers`` (batches are addressed by index).
- ``webdataset``: exact when ``workers`` is unchanged (each worker owns a shard stream); skipping costs
  reading the consumed raw bytes without decoding them, or nothing per shard with ``shuffle_buffer=0`` and a
  ``sizes.json``. Not exact after a batch in which every sample was unusable (logged), or if shards changed.
"""
from __future__ import annotations

import dataclasses
import logging
import math

import torch
from torch.utils.data import DataLoader

from clipforge.config import ConfigError

from clipforge.data.shards import check_local_shards, expand_shards, read_total_size

from .batch import DataStats, EpochPlan, ImageTransform, Tokenize, derive_seed, new_counts
from .captions import create_caption_transform
from .config import DataConfig
from .indexed import IndexedBatches, SyntheticSource, load_csv
from .tar_stream import TarBatches, TarFormat

logger = logging.getLogger("clipforge.data")


class TrainLoader:
    """Iterable of ``(images (B,3,H,W) float, tokens (B,L) long)`` for one rank and one epoch.

    ``num_batches`` is per rank per epoch and equal on all ranks; iteration starts at ``start_batch``.
    ``next_batch`` is the index of the batch after the last one delivered (the position to checkpoint);
    ``stats`` sums what was skipped or filled, over all workers.
    """

    def __init__(self, loader: DataLoader, plan: EpochPlan, kind: str, workers: int, initial: DataStats):
        self._loader, self.plan, self.kind, self.workers = loader, plan, kind, workers
        self.initial = dataclasses.replace(initial)  # found while loading the source (e.g. empty CSV rows)
        self.stats = initial
        self.next_batch = plan.start_batch

    @property
    def num_batches(self) -> int:
        return self.plan.num_batches

    @property
    def num_samples(self) -> int:
        """Samples per epoch over all ranks: the requested count rounded up to whole global batches."""
        return self.plan.num_samples

    def __len__(self) -> int:
        return self.plan.num_batches - self.plan.start_batch

    def __iter__(self):
        self.next_batch = self.plan.start_batch
        for images, tokens, counts in self._loader:
            self.stats.add(counts)
            self.next_batch += 1
            yield images, tokens
        if self.stats.skipped or self.stats.shard_errors:
            logger.warning("data (rank %d, epoch %d): skipped %s", self.plan.rank, self.plan.epoch,
                           self.stats.summary())

    def state_dict(self) -> dict:
        """The data position to store in a checkpoint; turn it back into a start with ``resume_batch``."""
        return {"epoch": self.plan.epoch, "next_batch": self.next_batch, "seed": self.plan.seed,
                "world_size": self.plan.world_size, "workers": self.workers, "kind": self.kind,
                "batch_size": self.plan.batch_size}


def resume_batch(state: dict, cfg: DataConfig, *, epoch: int, world_size: int) -> int:
    """``start_batch`` for ``create_train_loader`` in ``epoch`` from a checkpointed ``TrainLoader.state_dict()``.

    Unchanged settings give the exact position. When the global batch changed, the number of samples already
    consumed is kept (rounded down to whole batches); when the seed, or for WebDataset the worker count,
    changed, the position is kept but the order is not the interrupted one: both are logged.
    """
    if state["epoch"] != epoch:
        return 0
    changed = [key for key, now in (("seed", cfg.seed), ("kind", cfg.kind)) if state.get(key) != now]
    if cfg.kind == "webdataset" and state.get("workers") != cfg.workers:
        changed.append("workers")
    if changed:
        logger.warning("resuming data with changed %s: same position, but not the interrupted sample order",
                       ", ".join(changed))
    old_global = state.get("batch_size", cfg.batch_size) * state.get("world_size", world_size)
    new_global = cfg.batch_size * world_size
    if old_global == new_global:
        return int(state["next_batch"])
    logger.warning("global batch changed from %d to %d: resuming after the same number of samples",
                   old_global, new_global)
    return int(state["next_batch"]) * old_global // new_global


def create_train_loader(cfg: DataConfig, *, image_transform: ImageTransform, tokenize: Tokenize, rank: int = 0,
                        world_size: int = 1, epoch: int = 0, start_batch: int = 0) -> TrainLoader:
    """Build the loader for one rank and epoch; every input problem is raised here, before any reading."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    cfg.check_ready()
    if cfg.kind == "webdataset":
        dataset, plan, initial = _tar_dataset(cfg, image_transform, tokenize, rank, world_size, epoch, start_batch)
        sampler = None
    else:
        dataset, plan, initial = _indexed_dataset(cfg, image_transform, tokenize, rank, world_size, epoch,
                                                  start_batch)
        sampler = range(plan.start_batch, plan.num_batches)
    # An own generator: DataLoader draws worker base seeds from it instead of the caller's global RNG.
    generator = torch.Generator().manual_seed(derive_seed(cfg.seed, epoch, rank, 0xD17A))
    loader = DataLoader(dataset, batch_size=None, sampler=sampler, num_workers=cfg.workers,
                        pin_memory=torch.cuda.is_available(), generator=generator)
    return TrainLoader(loader, plan, cfg.kind, cfg.workers, initial)


def split_global_batch(global_batch_size: int, world_size: int, accum_steps: int = 1) -> int:
    """Per-rank, per-step batch size (``DataConfig.batch_size``) for a global batch; raises if it does not
    divide evenly, since uneven ranks would break feature gathering and change the effective batch."""
    parts = world_size * accum_steps
    if global_batch_size < 1 or world_size < 1 or accum_steps < 1:
        raise ConfigError(f"global batch {global_batch_size}, world_size {world_size} and accum_steps "
                          f"{accum_steps} must all be positive")
    if global_batch_size % parts:
        lower, upper = global_batch_size // parts * parts, -(-global_batch_size // parts) * parts
        raise ConfigError(f"global batch {global_batch_size} is not divisible by world_size {world_size} x "
                          f"accum_steps {accum_steps} = {parts}; use {lower or parts} or {upper}")
    return global_batch_size // parts


def _make_plan(cfg: DataConfig, num_samples: int | None, rank: int, world_size: int, epoch: int,
               start_batch: int) -> EpochPlan:
    if num_samples is None:
        raise ConfigError("the number of training samples is unknown: set data.num_samples, or put a sizes.json "
                          "({shard name: count}) or __len__ file next to the shards")
    global_batch = cfg.batch_size * world_size
    if num_samples < global_batch:
        raise ConfigError(f"data.num_samples={num_samples} is smaller than one global batch "
                          f"(batch_size {cfg.batch_size} x world_size {world_size} = {global_batch}); "
                          "lower data.batch_size or add data")
    # Round up and let the last batches wrap around: no sample is dropped and all ranks get equal counts.
    num_batches = math.ceil(num_samples / global_batch)
    if not 0 <= start_batch <= num_batches:
        raise ValueError(f"start_batch={start_batch} is outside the epoch's [0, {num_batches}] batches")
    return EpochPlan(seed=cfg.seed, epoch=epoch, rank=rank, world_size=world_size, batch_size=cfg.batch_size,
                     num_batches=num_batches, start_batch=start_batch)


def _indexed_dataset(cfg, image_transform, tokenize, rank, world_size, epoch, start_batch):
    if cfg.kind == "csv":
        source = load_csv(cfg.sources(), cfg.csv_separator, cfg.csv_image_key, cfg.csv_caption_key)
        initial = DataStats(missing_fields=source.missing_captions)
    else:
        source, initial = SyntheticSource(cfg.num_samples), DataStats()
    plan = _make_plan(cfg, cfg.num_samples or len(source), rank, world_size, epoch, start_batch)
    return IndexedBatches(source, plan, image_transform, tokenize, cfg.text_mask_prob,
                          caption_transform_for(cfg)), plan, initial


def _tar_dataset(cfg, image_transform, tokenize, rank, world_size, epoch, start_batch):
    shards = expand_shards(cfg.sources(), cfg.source_weights())
    check_local_shards(shards)
    readers = world_size * max(1, cfg.workers)
    if not cfg.resampled and len(shards.urls) < readers:
        raise ConfigError(f"{len(shards.urls)} shards cannot give each of {world_size} ranks x "
                          f"{max(1, cfg.workers)} workers its own shard: use more shards, fewer data.workers, "
                          "or data.resampled=true")
    balance = None
    if cfg.balance_from:
        from clipforge.curation.online import OnlineBalance

        balance = OnlineBalance(cfg.balance_from, cfg.balance_t, cfg.seed, cfg.balance_per_language)
    # a balanced epoch is as long as the samples the rule is expected to keep
    num_samples = cfg.num_samples or (balance.expected_samples(shards.urls) if balance is not None else
                                      read_total_size(shards, cfg.sources()))
    plan = _make_plan(cfg, num_samples, rank, world_size, epoch, start_batch)
    fmt = TarFormat(image_keys=_keys(cfg.wds_image_key), caption_keys=_keys(cfg.wds_caption_key),
                    shuffle_buffer=cfg.shuffle_buffer, resampled=cfg.resampled, balance=balance)
    dataset = TarBatches(shards, plan, fmt, image_transform, tokenize, cfg.text_mask_prob, caption_transform_for(cfg))
    return dataset, plan, DataStats()


def caption_transform_for(cfg):
    """The data section's caption transforms (class captions, synonyms), or None."""
    return create_caption_transform(cfg.class_captions, cfg.class_templates, cfg.synonym_prob, cfg.synonyms,
                                    cfg.protected_words)


def _keys(spec: str) -> tuple[str, ...]:
    return tuple(k.strip().lower() for k in spec.split(";") if k.strip())


def preview_captions(cfg: DataConfig, count: int) -> list[tuple[str, str]]:
    """(caption as stored, caption after the data section's transforms, or "(skipped)") for the first ``count``
    samples in source order (``clipforge train --print-augmented N``). An illustration of what the transforms do:
    training draws from each sample's own seed (seed, epoch, rank, worker and position in the shuffled stream), so
    the same caption gets other draws there."""
    cfg.check_ready()
    transform = caption_transform_for(cfg)
    if cfg.kind == "webdataset":
        from .tar_stream import read_shard

        fmt = TarFormat(image_keys=_keys(cfg.wds_image_key), caption_keys=_keys(cfg.wds_caption_key))
        urls = expand_shards(cfg.sources(), None).urls
        raws = (raw for url in urls for raw in read_shard(url, fmt, new_counts()))
    elif cfg.kind == "csv":
        source = load_csv(cfg.sources(), cfg.csv_separator, cfg.csv_image_key, cfg.csv_caption_key)
        raws = (source.raw(i) for i in range(len(source)))
    else:
        raws = (SyntheticSource(cfg.num_samples).raw(i) for i in range(cfg.num_samples))
    out = []
    for position, raw in enumerate(raws):
        if len(out) >= count:
            break
        if raw.caption and raw.caption.strip():
            caption = raw.caption.strip()
            seed = derive_seed(cfg.seed, 0, 0, 0, position)
            after = transform(caption, seed) if transform is not None else caption
            out.append((caption, after if after is not None else "(skipped: not a class index)"))
    return out
