"""MetaCLIP's balancing: keep a sample when one of its entries passes a draw with probability ``min(1, t / count)``.

An entry seen at most ``t`` times keeps all its samples; above ``t`` each of a sample's entries passes independently
with probability ``t / count``, so a sample with entries ``e1..ek`` survives with ``1 - prod(1 - p_e)``; a sample
matching nothing is dropped. MetaCLIP draws from an unseeded global generator in file order; here every draw is a
hash of (seed, epoch, the sample's identity, the entry), so the kept set depends on the seed only: not on shard
order, worker count or how shards are split between ranks. The identity of a sample is its shard's name and its
position in the shard.

MetaCLIP 2 balances each language with its own threshold: ``tail_share(counts, t)`` is the share of matches an
English ``t`` keeps (``sum(min(c, t)) / sum(c)``); ``threshold_for_share(counts, share)`` finds the ``t`` that gives
another language's counts the same share.
"""
from __future__ import annotations

import hashlib

import numpy as np

from clipforge.curation.metadata import CurationError

_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijective 64-bit mixer, vectorised."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= _M1
        x ^= x >> np.uint64(27)
        x *= _M2
        x ^= x >> np.uint64(31)
    return x


def _hash64(text: str) -> np.uint64:
    return np.uint64(int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little"))


def sample_ids(shard: str, n: int) -> np.ndarray:
    """64-bit identities of the ``n`` samples of ``shard`` (by name and position)."""
    with np.errstate(over="ignore"):
        return _mix(_hash64(shard) + np.arange(n, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))


def check_threshold(t: float) -> float:
    if not (isinstance(t, (int, float)) and np.isfinite(t) and t > 0):
        raise CurationError(f"--t must be a positive number (MetaCLIP uses 20000 for 400M pairs), got {t!r}")
    return float(t)


def keep_probabilities(counts: np.ndarray, t: float) -> np.ndarray:
    """Per entry: 1 up to ``t`` matches, ``t / count`` above."""
    t = check_threshold(t)
    counts = np.asarray(counts, dtype=np.float64)
    return np.where(counts <= t, 1.0, t / np.maximum(counts, 1.0))


def uniforms(ids: np.ndarray, entries: np.ndarray, seed: int, epoch: int = 0) -> np.ndarray:
    """One uniform [0, 1) draw per (sample identity, entry) pair."""
    with np.errstate(over="ignore"):
        salt = _mix(np.array([seed * 1_000_003 + epoch], dtype=np.uint64))[0]
        x = _mix(ids ^ _mix(entries.astype(np.uint64) + salt))
    return (x >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def keep_mask(offsets: np.ndarray, entry_ids: np.ndarray, ids: np.ndarray, probabilities: np.ndarray, seed: int,
              epoch: int = 0) -> np.ndarray:
    """Which samples survive: ``offsets``/``entry_ids`` are a shard's matches (CSR), ``ids`` its sample identities."""
    n = len(offsets) - 1
    owner = np.repeat(np.arange(n), np.diff(offsets))
    passed = uniforms(ids[owner], entry_ids, seed, epoch) < probabilities[entry_ids]
    keep = np.zeros(n, dtype=bool)
    keep[owner[passed]] = True
    return keep


def expected_kept(offsets: np.ndarray, entry_ids: np.ndarray, probabilities: np.ndarray) -> tuple[float, float]:
    """Mean and variance of the number of kept samples (independent draws): sum of 1 - prod(1 - p)."""
    n = len(offsets) - 1
    owner = np.repeat(np.arange(n), np.diff(offsets))
    log_miss = np.bincount(owner, weights=np.log1p(-np.minimum(probabilities[entry_ids], 1 - 1e-15)), minlength=n)
    survive = np.where(np.diff(offsets) > 0, 1 - np.exp(log_miss), 0.0)
    return float(survive.sum()), float((survive * (1 - survive)).sum())


def tail_share(counts: np.ndarray, t: float) -> float:
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    return float(np.minimum(counts, t).sum() / total) if total else 1.0


def threshold_for_share(counts: np.ndarray, share: float, iterations: int = 64) -> float:
    """The ``t`` at which ``tail_share(counts, t)`` reaches ``share`` (MetaCLIP 2's p-to-t mapping), by bisection."""
    counts = np.asarray(counts, dtype=np.float64)
    low, high = 0.0, max(float(counts.max(initial=0.0)), 1.0)
    for _ in range(iterations):
        mid = (low + high) / 2
        low, high = (mid, high) if tail_share(counts, mid) < share else (low, mid)
    return high
