"""The Qdrant backend: the same snapshot and ``search`` interface, vectors held by a Qdrant collection.

For collections beyond one machine's memory: a Qdrant server (``url``), or Qdrant's embedded local mode (``path``,
used by the tests). A point's id is a UUID derived from its key, its payload is the key's metadata row plus
``prefixes`` (every folder prefix of the key, so a path-prefix filter is an exact keyword match) and ``row`` (the
part and row it was written from). Each index run reads the point ids and rows the collection holds (scroll) and
syncs the difference: points of new or changed rows are upserted, every other point deleted, so a crash, a run with
the faiss backend in between or a damaged collection leave nothing stale. The default collection is named after the
index (``clipforge-<id>``), so two indexes never share one by accident.
"""
from __future__ import annotations

import uuid
from typing import Sequence

import numpy as np

from clipforge._optional import require

_NAMESPACE = uuid.UUID("6f1d3c1e-8a55-4f0e-9d3e-2b7c4a9f5e10")
_BATCH = 256


def import_qdrant():
    return require("qdrant_client", "qdrant_client.models",
                   hint="the Qdrant backend needs qdrant-client: pip install 'clipforge[qdrant]'")


def point_id(key: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, key))


def prefixes(key: str) -> list[str]:
    """``"a/b/c.jpg"`` -> ``["a/", "a/b/"]``: what a path-prefix filter matches."""
    parts = key.split("/")[:-1]
    return ["/".join(parts[:i]) + "/" for i in range(1, len(parts) + 1)]


def connect(url: str | None = None, path: str | None = None):
    client_module = import_qdrant()
    return client_module.QdrantClient(url=url) if url else client_module.QdrantClient(path=path)


def check_reachable(url: str | None, path: str | None) -> None:
    """Fail before any embedding when the server cannot be reached."""
    try:
        client = connect(url, path)
        client.get_collections()
        client.close()
    except ImportError:
        raise
    except Exception as e:  # connection refused, bad URL, a locked embedded folder  # noqa: BLE001
        raise ConnectionError(f"cannot use Qdrant at {url or path}: {type(e).__name__}: {e}; check --qdrant-url "
                              "or --qdrant-path") from None


def _existing(client, name: str) -> dict[str, str]:
    """point id -> the (part:row) it was written from, for every point the collection holds."""
    found, offset = {}, None
    while True:
        points, offset = client.scroll(name, limit=1024, offset=offset, with_payload=["row"], with_vectors=False)
        found.update({str(p.id): (p.payload or {}).get("row") for p in points})
        if offset is None:
            return found


def _payload(columns: dict[str, list], i: int) -> dict:
    payload = {name: values[i] for name, values in columns.items()}
    payload["prefixes"] = prefixes(payload["key"])
    return payload


def sync(config, vectors, keys: Sequence[str], columns: dict[str, list], current: dict, name: str) -> dict:
    """Bring the collection to exactly ``keys`` (``vectors[ids]`` gives their vectors, read on demand); returns the
    snapshot's index.json content."""
    models = import_qdrant().models
    client = connect(config.qdrant_url, config.qdrant_path)
    try:
        if not client.collection_exists(name):
            client.create_collection(name, vectors_config=models.VectorParams(size=int(vectors.shape[1]),
                                                                              distance=models.Distance.DOT))
        # what the collection holds, not what the last snapshot says: a crash, a run with another backend or a
        # deleted collection in between cannot leave stale or missing points
        existing = _existing(client, name)
        rows = {key: f"{current[key][0]}:{current[key][1]}" for key in keys}
        changed = [i for i, key in enumerate(keys) if existing.get(point_id(key)) != rows[key]]
        for start in range(0, len(changed), _BATCH):
            batch = changed[start:start + _BATCH]
            chunk = vectors[np.array(batch, dtype=np.int64)]
            client.upsert(name, points=[models.PointStruct(id=point_id(keys[i]), vector=v.tolist(),
                                                           payload={**_payload(columns, i), "row": rows[keys[i]]})
                                        for i, v in zip(batch, chunk)])
        wanted = {point_id(k) for k in keys}
        stale = [pid for pid in existing if pid not in wanted]
        for start in range(0, len(stale), _BATCH):
            client.delete(name, points_selector=models.PointIdsList(points=stale[start:start + _BATCH]))
        count = client.count(name, exact=True).count
    finally:
        client.close()
    if count != len(keys):
        raise ValueError(f"Qdrant collection {name!r} holds {count} points, {len(keys)} expected: another writer "
                           "uses it; give this index its own --qdrant-collection")
    return {"backend": "qdrant", "url": config.qdrant_url, "path": config.qdrant_path, "collection": name,
            "count": len(keys), "dim": int(vectors.shape[1]), "metric": "inner_product",
            "upserted": len(changed), "deleted": len(stale)}


def _filter(where: dict[str, object] | None, prefix: str | None):
    models = import_qdrant().models
    must = [models.FieldCondition(key=k, match=models.MatchValue(value=v)) for k, v in (where or {}).items()]
    if prefix:
        must.append(models.FieldCondition(key="prefixes", match=models.MatchValue(value=prefix)))
    return models.Filter(must=must) if must else None


class QdrantSearcher:
    def __init__(self, info: dict):
        self.client = connect(info.get("url"), info.get("path"))
        self.name = info["collection"]

    def search(self, query: np.ndarray, k: int, where: dict | None = None, prefix: str | None = None
               ) -> list[tuple[float, dict]]:
        result = self.client.query_points(self.name, query=np.asarray(query, dtype=np.float32).tolist(), limit=k,
                                          query_filter=_filter(where, prefix), with_payload=True)
        return [(float(p.score), {k: v for k, v in (p.payload or {}).items() if k not in ("prefixes", "row")})
                for p in result.points]

    def close(self) -> None:
        self.client.close()
