"""Near-duplicate groups of an index: images whose embeddings' cosine similarity reaches a threshold.

Each image's ``neighbours`` nearest others are found (exactly up to 50,000 images, with an HNSW graph beyond),
pairs at or above ``threshold`` are joined (union-find), and every group of two or more is reported with a
suggested image to keep (the largest in pixels, then the first key) and each member's similarity to it.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from clipforge.search import faiss_index
from clipforge.search.index import Index

_EXACT_LIMIT = 50_000
_CHUNK = 2048


@dataclasses.dataclass(frozen=True)
class Group:
    keep: str
    members: tuple[tuple[str, float], ...]  # (key, cosine similarity to ``keep``), keep first

    def to_dict(self) -> dict:
        return {"keep": self.keep, "size": len(self.members),
                "members": [{"key": k, "similarity": round(s, 6)} for k, s in self.members]}


def _find(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def _pairs(vectors: np.ndarray, threshold: float, neighbours: int) -> list[tuple[int, int]]:
    faiss = faiss_index.import_faiss()
    n, d = vectors.shape
    if n <= _EXACT_LIMIT:
        index = faiss.IndexFlatIP(d)
    else:
        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = max(128, 4 * neighbours)  # near-duplicates are close: a wide beam finds them all
    index.add(vectors)
    k = min(n, neighbours + 1)
    pairs = []
    for start in range(0, n, _CHUNK):
        scores, ids = index.search(vectors[start:start + _CHUNK], k)
        for q, (row_scores, row_ids) in enumerate(zip(scores, ids)):
            i = start + q
            pairs += [(i, int(j)) for s, j in zip(row_scores, row_ids) if j >= 0 and j != i and s >= threshold]
    return pairs


def near_duplicates(index: Index, threshold: float = 0.95, neighbours: int = 10) -> list[Group]:
    """Groups of near-duplicates, largest first (see module doc)."""
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {threshold}")
    if neighbours < 1:
        raise ValueError(f"neighbours must be >= 1, got {neighbours}")
    n = len(index)
    vectors = np.ascontiguousarray(index.vectors(np.arange(n)))
    parent = np.arange(n)
    for i, j in _pairs(vectors, threshold, neighbours):
        a, b = _find(parent, i), _find(parent, j)
        if a != b:
            parent[max(a, b)] = min(a, b)
    roots = np.array([_find(parent, i) for i in range(n)])
    pixels = [(w or 0) * (h or 0) for w, h in zip(index.metadata["width"], index.metadata["height"])]
    order = np.argsort(roots, kind="stable")
    _, starts, counts = np.unique(roots[order], return_index=True, return_counts=True)
    groups = []
    for start, count in zip(starts, counts):
        if count < 2:
            continue
        members = order[start:start + count]
        keep = min(members, key=lambda m: (-pixels[m], index.keys[m]))
        sims = vectors[members] @ vectors[keep]
        ordered = sorted(zip(members, sims), key=lambda ms: (ms[0] != keep, -ms[1], index.keys[ms[0]]))
        groups.append(Group(index.keys[keep], tuple((index.keys[m], float(s)) for m, s in ordered)))
    return sorted(groups, key=lambda g: (-len(g.members), g.keep))
