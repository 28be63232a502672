"""faiss indexes over L2-normalised embeddings (inner product = cosine): choosing, building, tuning, searching.

The choice follows faiss's own guidelines ("Guidelines to choose an index" in its wiki) with the collection size n,
the dimension d and a memory budget:

- n <= 20,000: exact ``Flat`` (a query costs n*d multiply-adds, under a few milliseconds);
- the full vectors fit in the budget: ``HNSW32`` up to 2M vectors (best speed/recall when memory allows), else
  ``IVF{nlist},Flat`` with nlist ~ 4*sqrt(n), rounded to a power of two;
- they do not fit: ``OPQ{m},IVF{nlist},PQ{m}`` with m bytes per vector chosen to fit, searched for more candidates
  than asked and re-ranked exactly with the vectors read from disk (the parts, memory-mapped).

``--index-type`` takes ``flat``, ``hnsw``, ``ivf``, ``ivfpq``, ``opq`` or any faiss factory string. The search
parameter (``efSearch`` for HNSW, ``nprobe`` for IVF) is tuned at build time: the smallest value whose recall@10
against exact search reaches ``target_recall`` on every query set: queries among the data, queries off the data, and
text embeddings of generic prompts when the caller gives them (text queries sit apart from image embeddings, and
an index tuned on image-like queries alone under-serves them), then one step more as a margin.
The chosen factory string, parameters, reason and the measured recall are recorded in ``index.json``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import tempfile
import time
from typing import Callable, Iterator

import numpy as np

from clipforge._optional import require

FLAT_LIMIT = 20_000
HNSW_LIMIT = 2_000_000
OPQ_MIN = 1_000  # OPQ trains a 256-centroid quantiser for its rotation
TYPES = ("auto", "flat", "hnsw", "ivf", "ivfpq", "opq")
_TUNE_QUERIES = 256
_ADD_CHUNK = 65536


def import_faiss():
    return require("faiss", hint="indexes are built with faiss: pip install 'clipforge[search]' (faiss-cpu)")


@dataclasses.dataclass(frozen=True)
class Choice:
    factory: str
    reason: str
    rerank: bool = False  # compressed codes: re-rank candidates with exact vectors


def _pow2(x: float) -> int:
    return 1 << max(0, int(round(math.log2(max(1.0, x)))))


def _nlist(n: int) -> int:
    # 4*sqrt(n) lists, with at least 39 training points per list (faiss warns below that)
    return max(1, min(_pow2(4 * math.sqrt(n)), _pow2(n / 39) if n >= 78 else 1))


def _pq_shape(n: int, d: int, bytes_budget: float | None) -> tuple[int, int]:
    """(m sub-quantisers, bits each): m divides d, fits the budget, bits so each codebook has >= 39 points."""
    bits = max(4, min(8, int(math.log2(max(16, n / 39)))))
    candidates = [m for m in (64, 48, 32, 24, 16, 12, 8, 4) if d % m == 0 and m <= d // 2] or [1]
    for m in candidates:
        if bytes_budget is None or n * m * bits / 8 <= bytes_budget:
            return m, bits
    return candidates[-1], bits


def choose(n: int, d: int, index_type: str = "auto", memory_budget: float | None = None) -> Choice:
    """The index for ``n`` vectors of dimension ``d`` (see module doc)."""
    kind = index_type.lower()
    flat_bytes = n * d * 4
    if kind == "auto":
        if n <= FLAT_LIMIT and (memory_budget is None or flat_bytes <= memory_budget):
            return Choice("Flat", f"{n} vectors <= {FLAT_LIMIT}: exact search is fast enough")
        if memory_budget is None or flat_bytes * 1.5 <= memory_budget:
            if n <= HNSW_LIMIT:
                return Choice("HNSW32", f"{n} vectors, full vectors fit in memory: HNSW graph")
            return Choice(f"IVF{_nlist(n)},Flat", f"{n} vectors > {HNSW_LIMIT}: inverted lists over full vectors")
        kind = "opq"
        reason = f"full vectors ({flat_bytes / 2**30:.1f} GiB) exceed the memory budget: compressed codes"
    else:
        reason = f"--index-type {index_type}"
    if kind == "flat":
        return Choice("Flat", reason)
    if kind == "hnsw":
        return Choice("HNSW32", reason)
    if kind == "ivf":
        return Choice(f"IVF{_nlist(n)},Flat", reason)
    if kind in ("ivfpq", "opq"):
        m, bits = _pq_shape(n, d, memory_budget)
        if kind == "opq" and n < OPQ_MIN:
            kind, reason = "ivfpq", reason + f"; no OPQ rotation under {OPQ_MIN} vectors (too few to train it)"
        prefix = f"OPQ{m}," if kind == "opq" else ""
        # "np": no polysemous training (it only serves Hamming-distance filtering, which is not used; 15x faster)
        return Choice(f"{prefix}IVF{_nlist(n)},PQ{m}x{bits}np", reason, rerank=True)
    return Choice(index_type, reason, rerank="PQ" in index_type or "SQ" in index_type)


def check_index_type(index_type: str, dim: int) -> None:
    """Refuse an unknown --index-type before any embedding is done."""
    if index_type.lower() in TYPES:
        return
    faiss = import_faiss()
    try:
        faiss.index_factory(dim, index_type, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else ""
        raise ValueError(f"--index-type {index_type!r} is neither one of {', '.join(TYPES)} nor a faiss factory "
                         f"string for {dim}-d vectors ({first})") from None


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[list[str]]:
    """Capture what faiss's C++ code prints on stderr (clustering warnings) so logs stay readable."""
    captured: list[str] = []
    try:
        fd = os.dup(2)
    except OSError:
        yield captured
        return
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(fd, 2)
            os.close(fd)
            tmp.seek(0)
            captured += sorted(set(tmp.read().decode(errors="replace").splitlines()))


def tuning_queries(vectors: np.ndarray, count: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Two query sets made from the collection: ``among`` (midpoints of random pairs: queries among the data) and
    ``away`` (data points moved as far again in a random direction: queries off the data, as text queries are
    from image embeddings)."""
    rng = np.random.default_rng(seed)
    n, d = vectors.shape
    a, b = rng.integers(0, n, count), rng.integers(0, n, count)
    noise = rng.standard_normal((count, d)).astype(np.float32)
    sets = {"among": vectors[a] + vectors[b],
            "away": vectors[a] + noise / np.linalg.norm(noise, axis=1, keepdims=True)}
    return {name: q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12) for name, q in sets.items()}


def exact_top_k(queries: np.ndarray, vectors: np.ndarray, k: int, chunk: int = 65536) -> np.ndarray:
    """Ids of the exact top ``k`` inner products, best first, computed over chunks of the collection."""
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_ids = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(vectors), chunk):
        scores = queries @ vectors[start:start + chunk].T
        take = min(k, scores.shape[1])
        top = np.argpartition(-scores, take - 1, axis=1)[:, :take]
        best_scores = np.concatenate([best_scores, np.take_along_axis(scores, top, 1)], axis=1)
        best_ids = np.concatenate([best_ids, top + start], axis=1)
        keep = np.argsort(-best_scores, axis=1, kind="stable")[:, :k]
        best_scores, best_ids = np.take_along_axis(best_scores, keep, 1), np.take_along_axis(best_ids, keep, 1)
    return best_ids


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k]) & set(t)) / k for f, t in zip(found, truth)]))


def _param_name(index) -> str | None:
    faiss = import_faiss()
    if faiss.try_extract_index_ivf(index) is not None:
        return "nprobe"
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexPreTransform) else index
    return "efSearch" if hasattr(inner, "hnsw") else None


def search_parameters(index, value: int | None, selector=None):
    faiss = import_faiss()
    name = _param_name(index)
    if name == "nprobe":
        nlist = faiss.extract_index_ivf(index).nlist
        return faiss.SearchParametersIVF(sel=selector, nprobe=min(nlist, int(value or 1)))
    if name == "efSearch":
        return faiss.SearchParametersHNSW(sel=selector, efSearch=int(value or 16))
    return faiss.SearchParameters(sel=selector) if selector is not None else None


class Searcher:
    """A faiss index plus how to search it: the tuned parameter and exact re-ranking for compressed codes."""

    def __init__(self, index, param: int | None, rerank: Callable[[np.ndarray], np.ndarray] | None = None,
                 rerank_factor: int = 10):
        self.index, self.param, self.rerank, self.rerank_factor = index, param, rerank, rerank_factor

    def search(self, queries: np.ndarray, k: int, selector=None, widen: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` (scores, ids); ``widen`` multiplies the search parameter (for filtered searches)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(k, self.index.ntotal)
        fetch = min(self.index.ntotal, k * self.rerank_factor) if self.rerank is not None else k
        params = search_parameters(self.index, None if self.param is None else self.param * widen, selector)
        scores, ids = self.index.search(queries, fetch, params=params)
        if self.rerank is None:
            return scores, ids
        return self._rerank(queries, ids, k)

    def _rerank(self, queries: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        out_ids = np.full((len(queries), k), -1, dtype=np.int64)
        for q, row in enumerate(ids):
            valid = row[row >= 0]
            if not len(valid):
                continue
            exact = self.rerank(valid) @ queries[q]
            top = np.argsort(-exact, kind="stable")[:k]
            out_scores[q, :len(top)], out_ids[q, :len(top)] = exact[top], valid[top]
        return out_scores, out_ids


def build(vectors, choice: Choice, target_recall: float = 0.95,
          rerank: Callable[[np.ndarray], np.ndarray] | None = None, seed: int = 0,
          queries: dict[str, np.ndarray] | None = None) -> tuple[object, dict]:
    """Train, fill and tune an index over ``vectors`` (float32, normalised; an array or anything indexable like one,
    e.g. ``store.RowVectors`` reading from disk); returns (index, info for index.json)."""
    faiss = import_faiss()
    n, d = vectors.shape
    start = time.perf_counter()
    index = faiss.index_factory(d, choice.factory, faiss.METRIC_INNER_PRODUCT)
    with quiet_native_stderr() as native:
        if not index.is_trained:
            rng = np.random.default_rng(seed)
            sample = np.arange(n) if n <= 200_000 else np.sort(rng.choice(n, 200_000, replace=False))
            index.train(np.ascontiguousarray(vectors[sample]))
        hnsw = _hnsw(index)
        if hnsw is not None:
            hnsw.efConstruction = 80
        for start in range(0, n, _ADD_CHUNK):  # in chunks: ``vectors`` may be read from disk on demand
            index.add(np.ascontiguousarray(vectors[start:start + _ADD_CHUNK]))
    info = {"factory": choice.factory, "reason": choice.reason, "metric": "inner_product", "count": int(n),
            "dim": int(d), "rerank": bool(choice.rerank), "build_seconds": round(time.perf_counter() - start, 3),
            "native_messages": native[:5]}
    param, recalls = tune(index, vectors, target_recall, rerank if choice.rerank else None, queries)
    info.update({"search_parameter": _param_name(index), "search_value": param,
                 "tuned_recall_at_10": min(recalls.values()), "tuned_recall_by_queries": recalls,
                 "target_recall": target_recall})
    return index, info


def _hnsw(index):
    faiss = import_faiss()
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexPreTransform) else index
    return getattr(inner, "hnsw", None)


def tune(index, vectors: np.ndarray, target: float, rerank=None,
         queries: dict[str, np.ndarray] | None = None) -> tuple[int | None, dict[str, float]]:
    """The smallest search parameter whose recall@10 reaches ``target`` on every query set: the collection-made
    ones (``tuning_queries``) plus ``queries`` given by the caller (e.g. text embeddings of generic prompts)."""
    name = _param_name(index)
    n = len(vectors)
    sets = {**tuning_queries(vectors, min(_TUNE_QUERIES, max(1, n))), **(queries or {})}
    k = min(10, n)
    truths = {s: exact_top_k(q, vectors, k) for s, q in sets.items()}

    def recalls(value):
        searcher = Searcher(index, value, rerank)
        return {s: round(recall_at(searcher.search(q, k)[1], truths[s]), 4) for s, q in sets.items()}

    if name is None:
        return None, recalls(None)
    if name == "nprobe":
        nlist = import_faiss().extract_index_ivf(index).nlist
        values = sorted({min(nlist, 1 << i) for i in range(0, int(math.log2(max(1, nlist))) + 1)} | {nlist})
    else:
        values = [16, 32, 64, 128, 256, 512, 1024]
    found = {}
    for i, value in enumerate(values):
        found = recalls(value)
        if min(found.values()) >= target:
            # one step more: the margin for queries unlike the tuning sets (measured: class prompts over
            # near-identical images needed twice the efSearch that generic prompts did)
            margin = values[min(i + 1, len(values) - 1)]
            return margin, recalls(margin)
    return values[-1], found


def save(index, path) -> None:
    import_faiss().write_index(index, str(path))


def load(path):
    return import_faiss().read_index(str(path))
