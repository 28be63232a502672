"""Who reads which shard: per-epoch shard order, the split over ranks and loader workers, resampling.

Shard lists themselves (patterns, sizes, opening) are ``clipforge.data.shards``.
"""
from __future__ import annotations

import random
from typing import Iterator

from .batch import derive_seed


def epoch_shard_order(num_shards: int, seed: int, epoch: int) -> list[int]:
    """The shard permutation every rank agrees on for an epoch."""
    order = list(range(num_shards))
    random.Random(derive_seed(seed, epoch, 0x5A4D)).shuffle(order)
    return order


def worker_shards(num_shards: int, seed: int, epoch: int, rank: int, world_size: int, worker: int,
                  num_workers: int) -> list[int]:
    """The disjoint shard indices that (rank, worker) reads this epoch.

    Same rule as webdataset's ``split_by_node`` then ``split_by_worker`` (every k-th shard), applied to a
    per-epoch permutation, with rank and worker given explicitly so that a resumed loader can re-map them.
    """
    order = epoch_shard_order(num_shards, seed, epoch)
    return order[rank::world_size][worker::num_workers]


def shard_cycles(shards: list[int], seed: int, epoch: int, rank: int, worker: int) -> Iterator[tuple[int, int]]:
    """(cycle, shard) forever: pass 0 reads ``shards`` in order, later passes reshuffle them.

    A reader that needs more samples than its shards hold wraps around instead of stopping, so every rank
    delivers the same number of batches and none waits forever in a collective.
    """
    cycle = 0
    while True:
        order = list(shards)
        if cycle > 0:
            random.Random(derive_seed(seed, epoch, rank, worker, cycle)).shuffle(order)
        for shard in order:
            yield cycle, shard
        cycle += 1


def resampled_shards(weights: tuple[float, ...], seed: int, epoch: int, rank: int,
                     worker: int) -> Iterator[tuple[int, int]]:
    """(0, shard) forever, drawn with replacement by weight; each (rank, worker) has its own stream."""
    rng = random.Random(derive_seed(seed, epoch, rank, worker, 0x5E5A))
    population = range(len(weights))
    while True:
        yield 0, rng.choices(population, weights=weights, k=1)[0]
