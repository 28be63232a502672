"""``Index``: search a folder written by ``build_index`` with text, an image or a vector, with metadata filters.

    index = Index("my-index")                       # the model recorded in the index, loaded on first query
    hits = index.search_text("a red bicycle", k=10, prefix="2024/")
    hits = index.search_image("query.jpg", k=5, where={"shard": "photos-000001.tar"})

A hit has ``score`` (cosine similarity), ``key`` and ``metadata`` (path, caption, width, height, size, mtime, sha1).
``prefix`` keeps keys starting with it (with the Qdrant backend: a folder prefix, ``"2024"`` means ``"2024/"``);
``where`` keeps rows whose columns equal the given values. Passing ``model=`` checks that it is the model the index
was made with (its weights' fingerprint) and refuses another: the vectors would not be comparable.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from clipforge.search import faiss_index
from clipforge.search.store import MANIFEST, Store, read_parquet


EXACT_FILTER_LIMIT = 50_000


class NoIndex(FileNotFoundError):
    """There is no usable index at a folder."""


@dataclasses.dataclass(frozen=True)
class Hit:
    score: float
    key: str
    metadata: dict

    def to_dict(self) -> dict:
        return {"score": self.score, "key": self.key, **{k: v for k, v in self.metadata.items() if k != "key"}}


def _check_folder(root: Path) -> None:
    if not (root / MANIFEST).exists():
        raise NoIndex(f"no index at {root}: build one with `clipforge index SRC --model MODEL --out {root}`")
    if not (root / "index" / "index.json").exists():
        raise NoIndex(f"{root} holds embeddings but no finished index (an interrupted run?): run `clipforge index` "
                      "again with the same arguments to finish it")


class Index:
    def __init__(self, root: str | os.PathLike, model: str | None = None, precision: str | None = None,
                 device: str = "cpu", loaded=None):
        self.root = Path(root)
        _check_folder(self.root)
        self.store = Store(self.root)
        snap = self.root / "index"
        self.info = json.loads((snap / "index.json").read_text())
        self.metadata = read_parquet(snap / "metadata.parquet")
        self.keys = np.array(self.metadata["key"], dtype=object)
        self.rows = np.load(snap / "rows.npy")
        self.parts = json.loads((snap / "parts.json").read_text())
        recorded = self.store.manifest["model"]
        self.model_spec = model or recorded["spec"]
        self.precision = precision or recorded["precision"]
        self.device = device
        self._loaded = loaded
        if loaded is not None or model is not None:
            self._check_model(self.model)
        self._searcher = self._open_backend()
        self._positions: dict[str, int] | None = None

    def position(self, key: str) -> int:
        """The indexed position of ``key`` (KeyError when it is not indexed)."""
        if self._positions is None:
            self._positions = {key: i for i, key in enumerate(self.keys)}
        return self._positions[key]

    def __len__(self) -> int:
        return len(self.keys)

    # ------------------------------------------------------------------------------------------------ model

    @property
    def model(self):
        if self._loaded is None:
            from clipforge.search.build import load_model

            self._loaded = load_model(self.model_spec, self.precision, self.device)
            self._check_model(self._loaded)
        return self._loaded

    def _check_model(self, loaded) -> None:
        from clipforge.search.build import check_model

        check_model(self.store, self.model_spec, self.precision, loaded.fingerprint)

    # ---------------------------------------------------------------------------------------------- backend

    def _open_backend(self):
        if self.info["backend"] == "qdrant":
            from clipforge.search.qdrant import QdrantSearcher

            return QdrantSearcher(self.info)
        index = faiss_index.load(self.root / "index" / "index.faiss")
        rerank = (lambda ids: self.vectors(ids)) if self.info.get("rerank") else None
        return faiss_index.Searcher(index, self.info.get("search_value"), rerank)

    def vectors(self, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        """float32 embeddings of indexed positions, read from the parts (memory-mapped)."""
        return self.store.gather(self.parts, self.rows[np.asarray(positions, dtype=np.int64)])

    def close(self) -> None:
        close = getattr(self._searcher, "close", None)
        if close is not None:
            close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----------------------------------------------------------------------------------------------- search

    def _mask(self, where: dict | None, prefix: str | None) -> np.ndarray | None:
        if not where and not prefix:
            return None
        mask = np.ones(len(self.keys), dtype=bool)
        if prefix:
            mask &= np.char.startswith(self.keys.astype(str), prefix)
        for column, value in (where or {}).items():
            if column not in self.metadata:
                raise KeyError(f"no metadata column {column!r}: filter on one of {', '.join(self.metadata)}")
            values = self.metadata[column]
            typed = next((type(v) for v in values if v is not None), str)
            try:
                value = typed(value) if not isinstance(value, typed) else value  # "--where width=64" is an int
            except (TypeError, ValueError):
                raise ValueError(f"--where {column}={value!r}: the column holds {typed.__name__} values") from None
            mask &= np.array([v == value for v in values], dtype=bool)
        return mask

    def search_vector(self, vector: np.ndarray, k: int = 10, where: dict | None = None,
                      prefix: str | None = None) -> list[Hit]:
        """The ``k`` nearest indexed images to one embedding (normalised here)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        query = query / max(float(np.linalg.norm(query)), 1e-12)
        if self.info["backend"] == "qdrant":
            if prefix and not prefix.endswith("/"):
                prefix += "/"
            return [Hit(score, meta["key"], meta) for score, meta in self._searcher.search(query, k, where, prefix)]
        mask = self._mask(where, prefix)
        if mask is None:
            scores, ids = self._searcher.search(query[None], k)
            return [Hit(float(s), self.keys[i], self.row(i)) for s, i in zip(scores[0], ids[0]) if i >= 0]
        allowed = np.flatnonzero(mask).astype(np.int64)
        if len(allowed) <= EXACT_FILTER_LIMIT:
            # An approximate index only looks at the candidates its beam/lists reach; a selective filter would
            # leave few of them. Up to this many allowed images, they are scored exactly instead.
            scores = self.vectors(allowed) @ query
            top = np.argsort(-scores, kind="stable")[:k]
            return [Hit(float(scores[t]), self.keys[allowed[t]], self.row(allowed[t])) for t in top]
        selector = faiss_index.import_faiss().IDSelectorBatch(allowed)
        widen = int(min(64, np.ceil(len(self.keys) / len(allowed))))  # the search parameter grows as 1/selectivity
        scores, ids = self._searcher.search(query[None], k, selector, widen)
        return [Hit(float(s), self.keys[i], self.row(i)) for s, i in zip(scores[0], ids[0]) if i >= 0]

    def row(self, i: int) -> dict:
        """The metadata of indexed position ``i``."""
        return {name: values[i] for name, values in self.metadata.items()}

    def embed_text(self, text: str) -> np.ndarray:
        import torch

        from clipforge.search.embedding import normalise

        with torch.no_grad():
            return normalise(self.model.encode_text(self.model.tokenize([text])))[0]

    def embed_image(self, image) -> np.ndarray:
        import torch

        from clipforge.data.images import read_image
        from clipforge.search.embedding import normalise

        if isinstance(image, (str, os.PathLike)):
            image = read_image(image)
        with torch.no_grad():
            return normalise(self.model.encode_image(self.model.transform(image)[None]))[0]

    def search_text(self, text: str, k: int = 10, where: dict | None = None, prefix: str | None = None) -> list[Hit]:
        return self.search_vector(self.embed_text(text), k, where, prefix)

    def search_image(self, image, k: int = 10, where: dict | None = None, prefix: str | None = None) -> list[Hit]:
        """``image``: a path or a PIL image."""
        return self.search_vector(self.embed_image(image), k, where, prefix)
