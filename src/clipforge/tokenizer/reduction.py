"""Fitting token sequences into a fixed context: truncation and open_clip's training-time reduction strategies.

Every strategy has the signature ``fn(texts, context_length, sot_token_id, eot_token_id, encode_batch)`` and
returns a ``(N, context_length)`` int64 array, where ``encode_batch(list[str]) -> list[list[int]]`` gives the ids
without special tokens. Select one by name with ``get_reduction``: "simple" (a random contiguous block), "random"
(random tokens dropped, order kept), "shuffle" (random tokens kept, order shuffled), "syntax" (nouns, then
adjectives, then verbs kept first; needs nltk). The random strategies draw from the global ``random`` and
``torch`` generators in the same order as open_clip, so a seeded run reproduces open_clip's batches exactly.
"""
from __future__ import annotations

import random
from itertools import chain
from typing import Callable, Sequence

import numpy as np

EncodeBatch = Callable[[Sequence[str]], list]
_FEW_ROWS = 4


def pack(middles: Sequence[Sequence[int]], context_length: int, sot_token_id: int, eot_token_id: int) -> np.ndarray:
    """``(N, context_length)`` int64 array of rows sot + middle + eot + zero padding; each middle must fit in
    ``context_length - 2``. Vectorised with numpy: a Python loop over rows would cost more than the BPE."""
    n = len(middles)
    if n <= _FEW_ROWS:  # row by row: numpy's fixed cost per call is most of the time for a caption or two
        out = np.zeros((n, context_length), dtype=np.int64)
        for row, middle in zip(out, middles):
            if len(middle) > context_length - 2:
                raise ValueError(f"a row of {len(middle)} ids does not fit between sot and eot in {context_length}")
            row[:len(middle) + 2] = (sot_token_id, *middle, eot_token_id)
        return out
    lengths = np.fromiter(map(len, middles), dtype=np.int64, count=n)
    if n and lengths.max() > context_length - 2:
        raise ValueError(f"a row of {lengths.max()} ids does not fit between sot and eot in {context_length}")
    total = int(lengths.sum())
    flat = np.fromiter(chain.from_iterable(middles), dtype=np.int64, count=total)
    out = np.zeros((n, context_length), dtype=np.int64)
    out[:, 0] = sot_token_id
    starts = np.cumsum(lengths) - lengths
    rows = np.repeat(np.arange(n), lengths)  # (total,) row of each id
    cols = np.arange(total) - np.repeat(starts, lengths) + 1  # (total,) column of each id, after sot
    out[rows, cols] = flat
    out[np.arange(n), lengths + 1] = eot_token_id
    return out


def truncate_ids(token_lists, context_length: int, sot_token_id: int, eot_token_id: int) -> np.ndarray:
    """sot + ids + eot, cut to ``context_length`` with eot kept in the last position (open_clip's truncation)."""
    keep = context_length - 2
    middles = [ids if len(ids) <= keep else ids[:keep] for ids in token_lists]
    return pack(middles, context_length, sot_token_id, eot_token_id)


def truncate(texts, context_length, sot_token_id, eot_token_id, encode_batch: EncodeBatch) -> np.ndarray:
    return truncate_ids(encode_batch(texts), context_length, sot_token_id, eot_token_id)


def simple(texts, context_length, sot_token_id, eot_token_id, encode_batch: EncodeBatch) -> np.ndarray:
    """Too-long captions keep a random contiguous block of ``context_length - 2`` ids."""
    keep = context_length - 2
    middles = []
    for ids in encode_batch(texts):
        if len(ids) > keep:
            start = random.randint(0, len(ids) - keep)  # both ends inclusive
            ids = ids[start:start + keep]
        middles.append(ids)
    return pack(middles, context_length, sot_token_id, eot_token_id)


def _random_keep(texts, context_length, sot_token_id, eot_token_id, encode_batch, keep_order: bool):
    import torch  # torch's generator, as open_clip draws from it; the deterministic strategies need no torch

    keep = context_length - 2
    middles = []
    for ids in encode_batch(texts):
        if len(ids) > keep:
            chosen = torch.randperm(len(ids))[:keep]
            if keep_order:
                chosen = chosen.sort().values
            ids = torch.tensor(ids, dtype=torch.long)[chosen].tolist()
        middles.append(ids)
    return pack(middles, context_length, sot_token_id, eot_token_id)


def random_drop(texts, context_length, sot_token_id, eot_token_id, encode_batch: EncodeBatch) -> np.ndarray:
    """Too-long captions keep ``context_length - 2`` random ids in their original order."""
    return _random_keep(texts, context_length, sot_token_id, eot_token_id, encode_batch, keep_order=True)


def shuffle(texts, context_length, sot_token_id, eot_token_id, encode_batch: EncodeBatch) -> np.ndarray:
    """Too-long captions keep ``context_length - 2`` random ids in random order."""
    return _random_keep(texts, context_length, sot_token_id, eot_token_id, encode_batch, keep_order=False)


def _import_nltk():
    try:
        import nltk
    except ImportError as e:
        raise ImportError(
            "the 'syntax' reduction tags parts of speech with nltk, which is not installed; "
            "install it with `pip install nltk` or choose reduction 'simple', 'random' or 'shuffle'"
        ) from e
    return nltk


def _syntax_rank(tag: str) -> int:
    for rank, prefix in enumerate(("NN", "JJ", "VB"), start=1):
        if tag.startswith(prefix):
            return rank
    return 4


def _syntax_shorten(nltk, text: str, max_words: int) -> str:
    words = nltk.tokenize.word_tokenize(text)
    ranks = np.array([_syntax_rank(tag) for _, tag in nltk.pos_tag(words)])
    # np.argsort's default (non-stable) order is what open_clip uses; a stable sort would pick other words on ties.
    chosen = sorted(np.argsort(ranks)[:max_words])
    return " ".join(str(words[i]) for i in chosen)


def syntax(texts, context_length, sot_token_id, eot_token_id, encode_batch: EncodeBatch) -> np.ndarray:
    """Words kept by part of speech (nouns, adjectives, verbs, then the rest), in their original order."""
    nltk = _import_nltk()
    try:
        shortened = [_syntax_shorten(nltk, text, context_length - 2) for text in texts]
    except LookupError as e:
        raise LookupError(
            "the 'syntax' reduction needs nltk's tokenizer and tagger data; fetch it once with "
            "`python -m nltk.downloader punkt averaged_perceptron_tagger`"
        ) from e
    # A word can still give several ids, hence the final truncation.
    return truncate(shortened, context_length, sot_token_id, eot_token_id, encode_batch)


REDUCTIONS = {"simple": simple, "random": random_drop, "shuffle": shuffle, "syntax": syntax}


def get_reduction(name: str):
    """The reduction strategy called ``name`` ("simple", "random", "shuffle" or "syntax")."""
    if name not in REDUCTIONS:
        raise ValueError(f"unknown reduction {name!r}; choose one of {', '.join(REDUCTIONS)}")
    return REDUCTIONS[name]
