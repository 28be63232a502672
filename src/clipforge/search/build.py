"""``build_index``: a collection -> embedding parts -> a searchable snapshot, resumable and incremental.

A run lists the collection, compares each image with the row stored for its key (size and mtime of the file that
holds it; when those differ, the sha1 of its bytes), embeds only new or changed images, records unreadable ones as
rows with an ``error`` (not retried until their file changes), drops keys no longer in the collection, and writes a
new snapshot (faiss index or Qdrant collection + metadata). Under torchrun every rank embeds its share of the work
into its own parts and rank 0 writes the snapshot; with ``engine="ray"`` the embedding is a Ray Data job.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from clipforge import dist
from clipforge._atomic import atomic_directory, write_text_atomic
from clipforge.models.fingerprint import weights_fingerprint
from clipforge.progress import progress
from clipforge.search import embedding, faiss_index, sources
from clipforge.search.store import MANIFEST, RowVectors, Store, part_name, read_parquet, write_parquet

logger = logging.getLogger("clipforge.search")
DTYPES = ("float16", "float32")
# Generic text queries the search parameter is also tuned on (with up to 128 of the collection's captions)
_NOUNS = ("dog", "cat", "car", "person", "tree", "house", "bird", "flower", "boat", "street", "beach", "mountain",
          "city at night", "red shape", "blue object", "green field", "child", "bicycle", "plate of food", "book",
          "computer", "chair", "horse", "airplane", "circle", "square", "drawing", "painting", "logo", "landscape",
          "portrait", "text document")
TUNING_PROMPTS = tuple(f"a photo of a {noun}." for noun in _NOUNS) + tuple(f"a {noun}" for noun in _NOUNS)
ENGINES = ("local", "ray")
BACKENDS = ("faiss", "qdrant")


class IndexMismatch(ValueError):
    """An existing index was made with another model (or storage type): its vectors cannot be mixed."""


@dataclasses.dataclass(frozen=True)
class IndexConfig:
    model: str
    precision: str = "fp32"
    device: str = "cpu"
    dtype: str = "float16"  # how embeddings are stored in the parts
    index_type: str = "auto"  # see faiss_index.TYPES, or a faiss factory string
    memory_budget_gb: float | None = None  # for the automatic index choice; None: no limit
    target_recall: float = 0.95  # recall@10 the search parameter is tuned to
    batch_size: int = 64
    workers: int | None = None  # DataLoader workers reading and decoding; None: automatic
    part_size: int = 4096  # images per part file: what an interrupted run can lose
    engine: str = "local"
    ray_address: str | None = None
    ray_actors: int = 1
    backend: str = "faiss"
    qdrant_url: str | None = None
    qdrant_path: str | None = None
    qdrant_collection: str | None = None
    path_column: str | None = None
    caption_column: str | None = None
    show_progress: bool = True

    def check(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.engine not in ENGINES:
            raise ValueError(f"engine {self.engine!r} is not one of {', '.join(ENGINES)}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend {self.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.backend == "qdrant" and not (self.qdrant_url or self.qdrant_path):
            raise ValueError("the qdrant backend needs --qdrant-url URL (a server) or --qdrant-path DIR (embedded)")
        for name in ("batch_size", "part_size", "ray_actors"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.target_recall <= 1:
            raise ValueError(f"target recall must be in (0, 1], got {self.target_recall}")


# --------------------------------------------------------------------------------------------------- model


@dataclasses.dataclass
class LoadedModel:
    encode_image: Callable
    encode_text: Callable
    tokenize: Callable
    transform: Callable
    embed_dim: int
    fingerprint: str


def load_model(spec: str, precision: str = "fp32", device: str = "cpu") -> LoadedModel:
    from clipforge.evaluation.benchmark import make_encoders
    from clipforge.models.factory import create_model_and_transforms, get_tokenizer

    model, _, preprocess = create_model_and_transforms(spec, device=device, precision=precision)
    model.eval()
    encoders = make_encoders(model, get_tokenizer(spec), preprocess, spec, device, precision)
    return LoadedModel(encoders.encode_image, encoders.encode_text, encoders.tokenize, preprocess,
                       int(model.config.embed_dim), weights_fingerprint(model))


class ModelLoader:
    """Picklable ``() -> (encode_image, transform)`` for Ray actors."""

    def __init__(self, spec: str, precision: str, device: str):
        self.spec, self.precision, self.device = spec, precision, device

    def __call__(self):
        loaded = load_model(self.spec, self.precision, self.device)
        return loaded.encode_image, loaded.transform


def check_model(store: Store, spec: str, precision: str, fingerprint: str) -> None:
    recorded = store.manifest.get("model", {})
    if recorded and recorded.get("fingerprint") != fingerprint:
        raise IndexMismatch(
            f"{store.root} was indexed with model {recorded.get('spec')!r} ({recorded.get('precision')}), not "
            f"{spec!r} ({precision}): its vectors are not comparable with this model's. Use --model "
            f"{recorded.get('spec')!r} --precision {recorded.get('precision')}, or index into a new folder")


# ---------------------------------------------------------------------------------------------------- plan


@dataclasses.dataclass
class Plan:
    jobs: list[embedding.Job]
    kept: int
    failed_before: int
    changed: int


def make_plan(collection: sources.Collection, where: dict, metas: list[dict]) -> Plan:
    jobs, kept, failed_before, changed = [], 0, 0, 0
    for item in collection.items:
        place = where.get(item.key)
        if place is None:
            jobs.append(embedding.Job(item))
            continue
        meta, row = metas[place[0]], place[1]
        stamp = (meta["stamp_size"][row], meta["stamp_mtime_ns"][row])
        error = meta["error"][row]
        io_error = error is not None and error.startswith(("missing", "unreadable"))  # may be fixed, stamp unchanged
        same_caption = meta["caption"][row] == item.caption
        if tuple(stamp) == tuple(item.stamp) and item.stamp != (-1, -1) and not io_error and same_caption:
            if error is None:
                kept += 1
            else:
                failed_before += 1
            continue
        changed += 1
        jobs.append(embedding.Job(item, old_sha1=meta["sha1"][row] if meta["error"][row] is None else None))
    return Plan(jobs, kept, failed_before, changed)


# --------------------------------------------------------------------------------------------------- parts


class PartWriter:
    """Collects rows and writes a part every ``part_size`` of them (an interrupted run loses at most one)."""

    def __init__(self, store: Store, run: int, rank: int, dim: int, dtype: str, part_size: int):
        self.store, self.run, self.rank, self.dim = store, run, rank, dim
        self.dtype, self.part_size = np.dtype(dtype), part_size
        self.vectors: list[np.ndarray] = []
        self.rows: list[dict] = []
        self.seq = 0

    def add(self, vector: np.ndarray | None, row: dict) -> None:
        self.vectors.append(np.zeros(self.dim, np.float32) if vector is None else vector)
        self.rows.append(row)
        if len(self.rows) >= self.part_size:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        columns = {name: [r.get(name) for r in self.rows] for name in self.rows[0]}
        self.store.write_part(part_name(self.run, self.rank, self.seq), np.stack(self.vectors).astype(self.dtype),
                              columns)
        self.seq += 1
        self.vectors, self.rows = [], []


def _row(item: sources.Item, info: dict, error: str | None = None) -> dict:
    # the file holding the image: itself, or its shard (a tar path, or the shard name for streamed shards)
    path = item.location if isinstance(item.location, str) else \
        item.location[0] if isinstance(item.location, tuple) else (item.shard or "")
    return {"key": item.key, "path": path, "shard": item.shard, "caption": item.caption,
            "width": info.get("width"), "height": info.get("height"), "size": info.get("size"),
            "mtime": item.stamp[1] / 1e9 if item.stamp[1] >= 0 else None, "sha1": info.get("sha1"),
            "stamp_size": item.stamp[0], "stamp_mtime_ns": item.stamp[1], "error": error}


def _record(outcomes: list[embedding.Outcome], jobs: Sequence[embedding.Job], writer: PartWriter,
            old: Callable[[str], tuple[np.ndarray, dict]], counts: dict) -> None:
    for out in outcomes:
        item = jobs[out.index].item
        if out.status == "image":
            writer.add(out.vector, _row(item, out.info))
            counts["embedded"] += 1
        elif out.status == "same":
            vector, shape = old(item.key)
            writer.add(vector, _row(item, {**out.info, **shape}))
            counts["unchanged_bytes"] += 1
        else:
            writer.add(None, _row(item, {}, error=f"{out.info['kind']}: {out.info['message']}"))
            counts["failed"] += 1


# ---------------------------------------------------------------------------------------------------- run


def _default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2) // 2))


def _open_store(out: Path) -> Store:
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file: choose a folder for the index")
    if out.is_dir() and any(p.name != LOCK for p in out.iterdir()) and not (out / MANIFEST).exists():
        raise FileExistsError(f"{out} is not empty and holds no clipforge index: choose an empty or new folder")
    return Store(out)


def _start_run(store: Store, config: IndexConfig, loaded: LoadedModel, src: str, kind: str) -> int:
    store.root.mkdir(parents=True, exist_ok=True)
    store.remove_leftovers()
    if store.exists and store.manifest.get("dtype") != config.dtype:
        raise IndexMismatch(f"{store.root} stores {store.manifest.get('dtype')} embeddings, not {config.dtype}: "
                            f"pass --dtype {store.manifest.get('dtype')} or index into a new folder")
    store.manifest.update({
        "model": {"spec": config.model, "precision": config.precision, "fingerprint": loaded.fingerprint,
                  "embed_dim": loaded.embed_dim},
        "source": {"src": os.path.abspath(src) if "://" not in src else src, "kind": kind},
        "dtype": config.dtype, "runs": int(store.manifest.get("runs", 0)) + 1,
    })
    store.manifest.setdefault("dead", {})
    store.manifest.setdefault("id", uuid.uuid4().hex[:16])  # names this index's Qdrant collection by default
    store.save_manifest()
    return store.manifest["runs"]


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


def _init_distributed(world: int) -> None:
    if world > 1 and not dist.is_initialized():
        torch.distributed.init_process_group("gloo")


def _embed(config: IndexConfig, jobs, indices, loaded: LoadedModel):
    if config.engine == "ray":
        return embedding.embed_with_ray(jobs, indices, ModelLoader(config.model, config.precision, config.device),
                                        loaded.transform, config.batch_size, config.ray_actors, config.ray_address)
    workers = _default_workers() if config.workers is None else config.workers
    return embedding.embed_local(jobs, indices, loaded.encode_image, loaded.transform, config.batch_size, workers)


def build_index(src: str, out: str | os.PathLike, config: IndexConfig,
                loaded: LoadedModel | None = None) -> dict:
    """Index the collection at ``src`` into ``out`` (see module doc); returns the run report (also report.json)."""
    config.check()
    start = time.perf_counter()
    rank, local_rank, world = dist.read_environment()
    _init_distributed(world)
    if world > 1 and config.device == "cuda":  # one GPU per rank, as torchrun places them
        config = dataclasses.replace(config, device=f"cuda:{local_rank % torch.cuda.device_count()}")
    store = _open_store(Path(out))
    collection = sources.list_items(src, config.path_column, config.caption_column)
    if not collection.items:
        raise FileNotFoundError(f"no images found in {src} (looked for {', '.join(sources.IMAGE_EXTENSIONS)}); "
                                "check the path")
    loaded = loaded or load_model(config.model, config.precision, config.device)
    check_model(store, config.model, config.precision, loaded.fingerprint)
    if config.backend == "faiss":
        faiss_index.check_index_type(config.index_type, loaded.embed_dim)
    else:
        from clipforge.search import qdrant

        qdrant.check_reachable(config.qdrant_url, config.qdrant_path)
    with _lock(Path(out), rank):
        return _run(src, out, config, loaded, collection, start, rank, world)


LOCK = ".clipforge_index.lock"


@contextlib.contextmanager
def _lock(out: Path, rank: int):
    """One writing run per index folder (rank 0 holds it for its ranks): a second run is refused, not interleaved."""
    if rank != 0:
        yield
        return
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOCK, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FileExistsError(f"another clipforge index run is writing {out}: wait for it to finish") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(src: str, out, config: IndexConfig, loaded: LoadedModel, collection: sources.Collection, start: float,
         rank: int, world: int) -> dict:
    if rank == 0:
        _start_run(Store(out), config, loaded, src, collection.kind)
    _barrier(world)
    store = Store(out)
    run = store.manifest["runs"]
    names, where, metas = store.current_rows()
    plan = make_plan(collection, where, metas)
    indices = embedding.shard_jobs(plan.jobs, rank, world)
    counts = {"embedded": 0, "unchanged_bytes": 0, "failed": 0}
    writer = PartWriter(store, run, rank, loaded.embed_dim, config.dtype, config.part_size)

    def old(key: str) -> tuple[np.ndarray, dict]:
        p, r = where[key]
        shape = {"width": metas[p]["width"][r], "height": metas[p]["height"][r]}
        return np.asarray(store.vectors(names[p])[r], dtype=np.float32), shape

    with progress(total=len(indices), desc="index", unit="img", enabled=config.show_progress and rank == 0) as bar:
        for outcomes in _embed(config, plan.jobs, indices, loaded):
            _record(outcomes, plan.jobs, writer, old, counts)
            bar.update(len(outcomes))
    writer.flush()
    _barrier(world)
    counts = _sum_counts(counts, world)
    if rank != 0:
        return {}
    snapshot = finalize(Store(out), collection, config, loaded)
    report = {"source": src, "kind": collection.kind, "items": len(collection.items), "run": run,
              "world_size": world, "engine": config.engine, "kept": plan.kept, "changed": plan.changed,
              "new": len(plan.jobs) - plan.changed, "skipped_failed_before": plan.failed_before, **counts,
              "dropped": snapshot.pop("dropped"), "indexed": snapshot["count"],
              "seconds": round(time.perf_counter() - start, 3), "unreadable": snapshot.pop("unreadable"),
              "listing_problems": list(collection.problems), "index": snapshot}
    write_text_atomic(Path(out) / "report.json", json.dumps(report, indent=1))
    return report


def _sum_counts(counts: dict, world: int) -> dict:
    if world == 1:
        return counts
    keys = sorted(counts)
    total = torch.tensor([counts[k] for k in keys], dtype=torch.long)
    torch.distributed.all_reduce(total)
    return dict(zip(keys, total.tolist()))


# ------------------------------------------------------------------------------------------------ snapshot


def _live(collection: sources.Collection, names: list[str], where: dict, metas: list[dict]):
    present = {item.key for item in collection.items}
    live, unreadable = [], []
    for key in sorted(where):
        if key not in present:
            continue
        p, r = where[key]
        (unreadable if metas[p]["error"][r] is not None else live).append(key)
    dead: dict[str, list[int]] = {}
    for p, (name, meta) in enumerate(zip(names, metas)):
        rows = [r for r, key in enumerate(meta["key"]) if where.get(key) != (p, r) or key not in present]
        if rows:
            dead[name] = rows
    return live, unreadable, dead


def text_queries(loaded: LoadedModel | None, captions: Sequence[str | None], seed: int = 0) -> np.ndarray | None:
    """Normalised text embeddings of the generic prompts and up to 128 of the collection's captions."""
    if loaded is None:
        return None
    known = sorted({c for c in captions if c})
    rng = np.random.default_rng(seed)
    picked = [known[i] for i in rng.permutation(len(known))[:128]]
    texts = list(TUNING_PROMPTS) + picked
    with torch.no_grad():
        return np.concatenate([embedding.normalise(loaded.encode_text(loaded.tokenize(texts[i:i + 64])))
                               for i in range(0, len(texts), 64)])


def finalize(store: Store, collection: sources.Collection, config: IndexConfig,
             loaded: LoadedModel | None = None) -> dict:
    """Write the snapshot for the current rows, mark the others dead, delete parts nothing refers to."""
    names, where, metas = store.current_rows()
    live, unreadable, dead = _live(collection, names, where, metas)
    if not live:
        raise FileNotFoundError(f"none of the {len(collection.items)} images of {collection.root} could be read "
                                f"(first: {_first_error(unreadable, where, metas)}); see {store.root}/report.json")
    rows = np.array([where[k] for k in live], dtype=np.int64).reshape(-1, 2)
    vectors = RowVectors(store, names, rows)
    columns = {c: [metas[p][c][r] for p, r in rows] for c in metas[0] if c not in ("error",)}
    previous = _previous_keys(store)
    with atomic_directory(store.snapshot_dir) as tmp:
        np.save(tmp / "rows.npy", rows)
        (tmp / "parts.json").write_text(json.dumps(names))
        write_parquet(tmp / "metadata.parquet", columns)
        queries = text_queries(loaded, columns["caption"]) if config.backend == "faiss" else None
        info = _write_backend(tmp, vectors, config, names, rows, live, columns, store.manifest["id"], queries)
        (tmp / "index.json").write_text(json.dumps(info, indent=1))
    listed = set(live) | set(unreadable)
    dropped = sum(1 for k in previous if k not in listed)
    store.manifest["dead"] = dead
    store.manifest["snapshot"] = {k: info[k] for k in ("backend", "factory", "count") if k in info}
    store.save_manifest()
    for p, name in enumerate(names):
        if len(dead.get(name, ())) == len(metas[p]["key"]):
            store.remove_part(name)
    return {**info, "dropped": dropped,
            "unreadable": [{"key": k, "error": metas[where[k][0]]["error"][where[k][1]]} for k in unreadable]}


def _first_error(keys, where, metas) -> str:
    if not keys:
        return "none"
    p, r = where[keys[0]]
    return f"{keys[0]}: {metas[p]['error'][r]}"


def _previous_keys(store: Store) -> list[str]:
    """The keys the current snapshot indexes (before it is replaced)."""
    meta_path = store.snapshot_dir / "metadata.parquet"
    return read_parquet(meta_path)["key"] if meta_path.exists() else []


def _write_backend(tmp: Path, vectors: RowVectors, config: IndexConfig, names, rows, live, columns, store_id: str,
                   text: np.ndarray | None) -> dict:
    if config.backend == "qdrant":
        from clipforge.search import qdrant

        current = {k: (names[p], int(r)) for k, (p, r) in zip(live, rows)}
        name = config.qdrant_collection or f"clipforge-{store_id}"
        return qdrant.sync(config, vectors, live, columns, current, name)
    budget = None if config.memory_budget_gb is None else config.memory_budget_gb * 2**30
    choice = faiss_index.choose(len(vectors), vectors.shape[1], config.index_type, budget)
    if not choice.rerank:  # the index holds every vector anyway: read them once
        vectors = vectors[np.arange(len(vectors))]
    queries = {"text": text} if text is not None and len(text) else None
    index, info = faiss_index.build(vectors, choice, config.target_recall, rerank=lambda ids: vectors[ids],
                                    queries=queries)
    faiss_index.save(index, tmp / "index.faiss")
    return {"backend": "faiss", **info}
