"""The Qdrant backend: the same snapshot and ``search`` interface, vectors held by a Qdrant collection.

For collections beyond one machine's memory: a Qdrant server (``url``), or Qdrant's embedded local mode (``path``,
used by the tests). A point's id is a UUID derived from its key, its payload is the key's metadata row plus
``prefixes`` (every folder prefix of the key, so a path-prefix filter is an exact keyword match). Each index run
syncs only the difference: points of new or changed rows are upserted, points of keys no longer indexed deleted.
"""
from __future__ import annotations

import uuid
from typing import Sequence

import numpy as np

_NAMESPACE = uuid.UUID("6f1d3c1e-8a55-4f0e-9d3e-2b7c4a9f5e10")
_BATCH = 256


def import_qdrant():
    try:
        import qdrant_client
        import qdrant_client.models
    except ImportError:
        raise ImportError("the Qdrant backend needs qdrant-client: pip install 'clipforge[qdrant]'") from None
    return qdrant_client


def point_id(key: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, key))


def prefixes(key: str) -> list[str]:
    """``"a/b/c.jpg"`` -> ``["a/", "a/b/"]``: what a path-prefix filter matches."""
    parts = key.split("/")[:-1]
    return ["/".join(parts[:i]) + "/" for i in range(1, len(parts) + 1)]


def connect(url: str | None = None, path: str | None = None):
    client_module = import_qdrant()
    return client_module.QdrantClient(url=url) if url else client_module.QdrantClient(path=path)


def collection_name(config) -> str:
    return config.qdrant_collection or "clipforge"


def _payload(columns: dict[str, list], i: int) -> dict:
    payload = {name: values[i] for name, values in columns.items()}
    payload["prefixes"] = prefixes(payload["key"])
    return payload


def sync(config, vectors, keys: Sequence[str], columns: dict[str, list], current: dict,
         previous: dict | None) -> dict:
    """Bring the collection to exactly ``keys`` (``vectors[ids]`` gives their vectors, read on demand); returns the
    snapshot's index.json content."""
    models = import_qdrant().models
    client = connect(config.qdrant_url, config.qdrant_path)
    name = collection_name(config)
    try:
        if not client.collection_exists(name):
            client.create_collection(name, vectors_config=models.VectorParams(size=int(vectors.shape[1]),
                                                                              distance=models.Distance.DOT))
            previous = None  # a new collection holds nothing, whatever the last snapshot says
        changed = [i for i, key in enumerate(keys) if previous is None or previous.get(key) != current[key]]
        for start in range(0, len(changed), _BATCH):
            batch = changed[start:start + _BATCH]
            chunk = vectors[np.array(batch, dtype=np.int64)]
            client.upsert(name, points=[models.PointStruct(id=point_id(keys[i]), vector=v.tolist(),
                                                           payload=_payload(columns, i)) for i, v in zip(batch, chunk)])
        stale = [point_id(k) for k in (previous or {}) if k not in current]
        for start in range(0, len(stale), _BATCH):
            client.delete(name, points_selector=models.PointIdsList(points=stale[start:start + _BATCH]))
        count = client.count(name, exact=True).count
    finally:
        client.close()
    if count != len(keys):
        raise RuntimeError(f"Qdrant collection {name!r} holds {count} points, {len(keys)} expected: another writer "
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
        return [(float(p.score), {k: v for k, v in (p.payload or {}).items() if k != "prefixes"})
                for p in result.points]

    def close(self) -> None:
        self.client.close()
