"""The embedding step: read each image's bytes, hash, decode and preprocess them, encode, normalise.

Two engines run the same step and yield the same ``Outcome`` stream:

- ``embed_local``: a torch DataLoader whose workers read, hash, decode and preprocess (overlapping the model), the
  model in this process. Under torchrun each rank gets every world-size-th job (``shard_jobs``).
- ``embed_with_ray``: a Ray Data job, the reading as tasks and the model in an actor pool (``map_batches`` with
  ``concurrency``), for clusters that run Ray.

A job whose file changed on disk (stamp differs) but whose bytes hash to the stored sha1 yields ``same``: it is not
decoded nor encoded. An unreadable, truncated or missing image yields ``failed`` with the reason; never an error.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from clipforge.data.images import ImageReadError, read_image
from clipforge.search.sources import Item, read_bytes


@dataclasses.dataclass(frozen=True)
class Job:
    item: Item
    old_sha1: str | None = None  # the stored hash when only the stamp changed


@dataclasses.dataclass
class Outcome:
    index: int  # position in the job list
    status: str  # "image" | "same" | "failed"
    vector: np.ndarray | None = None
    info: dict = dataclasses.field(default_factory=dict)  # sha1, size, width, height | kind, message


def shard_jobs(jobs: Sequence[Job], rank: int, world: int) -> list[int]:
    """The job indices rank ``rank`` of ``world`` embeds."""
    return list(range(rank, len(jobs), world))


def prepare(job: Job, transform: Callable) -> tuple[str, object, dict]:
    """(status, pixels, info) for one job; never raises for bad images."""
    try:
        data = read_bytes(job.item.location)
    except OSError as e:
        return "failed", None, {"kind": "missing" if isinstance(e, FileNotFoundError) else "unreadable",
                                "message": f"{type(e).__name__}: {e}"}
    sha1 = hashlib.sha1(data).hexdigest()
    if job.old_sha1 is not None and job.old_sha1 == sha1:
        return "same", None, {"sha1": sha1, "size": len(data)}
    try:
        image = read_image(data)
    except ImageReadError as e:
        return "failed", None, {"kind": e.kind, "message": str(e)}
    info = {"sha1": sha1, "size": len(data), "width": image.width, "height": image.height}
    try:
        pixels = transform(image)
    except Exception as e:  # a pathological image (e.g. 1x40000) must not end the run  # noqa: BLE001
        return "failed", None, {"kind": "undecodable", "message": f"preprocessing failed: {type(e).__name__}: {e}"}
    return "image", pixels, info


class _Prepared(torch.utils.data.Dataset):
    def __init__(self, jobs: Sequence[Job], indices: Sequence[int], transform: Callable):
        self.jobs, self.indices, self.transform = jobs, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        index = self.indices[i]
        status, pixels, info = prepare(self.jobs[index], self.transform)
        return index, status, pixels, info


def _collate(batch: list):
    images = [b for b in batch if b[1] == "image"]
    pixels = torch.stack([torch.as_tensor(b[2]) for b in images]) if images else None
    return pixels, images, [b for b in batch if b[1] != "image"]


def normalise(features: torch.Tensor) -> np.ndarray:
    features = features.float()
    return torch.nn.functional.normalize(features, dim=-1).cpu().numpy()


def embed_local(jobs: Sequence[Job], indices: Sequence[int], encode_image: Callable, transform: Callable,
                batch_size: int = 64, workers: int = 1) -> Iterator[list[Outcome]]:
    """Outcomes of ``jobs[indices]``, one list per batch (see module doc)."""
    loader = torch.utils.data.DataLoader(_Prepared(jobs, indices, transform), batch_size=batch_size,
                                         num_workers=workers, collate_fn=_collate,
                                         persistent_workers=False, prefetch_factor=4 if workers else None)
    for pixels, images, others in loader:
        out = [Outcome(index, status, None, info) for index, status, _, info in others]
        if pixels is not None:
            with torch.no_grad():
                vectors = normalise(encode_image(pixels))
            out += [Outcome(b[0], "image", v, b[3]) for b, v in zip(images, vectors)]
        yield out


# ----------------------------------------------------------------------------------------------------- Ray


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ImportError("the Ray engine needs Ray Data: pip install 'ray[data]'") from None
    return ray


def _ray_prepare(batch: dict, transform: Callable) -> dict:
    out = {"index": [], "status": [], "pixels": [], "info": []}
    for index, job in zip(batch["index"], batch["job"]):
        status, pixels, info = prepare(job, transform)
        out["index"].append(int(index))
        out["status"].append(status)
        out["pixels"].append(None if pixels is None else np.asarray(pixels, dtype=np.float32))
        out["info"].append(info)
    return {"index": np.array(out["index"], dtype=np.int64), "status": np.array(out["status"], dtype=object),
            "pixels": np.array(out["pixels"] + [None], dtype=object)[:-1], "info": np.array(out["info"], dtype=object)}


class _RayEncoder:
    """One model per actor; ``load`` builds (encode_image, transform) from the model spec."""

    def __init__(self, load: Callable):
        self.encode_image, _ = load()

    def __call__(self, batch: dict) -> dict:
        keep = [i for i, s in enumerate(batch["status"]) if s == "image"]
        vectors = np.zeros((len(batch["index"]), 0), dtype=np.float32)
        if keep:
            pixels = torch.from_numpy(np.stack([batch["pixels"][i] for i in keep]))
            with torch.no_grad():
                encoded = normalise(self.encode_image(pixels))
            vectors = np.zeros((len(batch["index"]), encoded.shape[1]), dtype=np.float32)
            vectors[keep] = encoded
        return {"index": batch["index"], "status": batch["status"], "info": batch["info"],
                "vector": [vectors[i] if s == "image" else None for i, s in enumerate(batch["status"])]}


def embed_with_ray(jobs: Sequence[Job], indices: Sequence[int], load: Callable, transform: Callable,
                   batch_size: int = 64, actors: int = 1, address: str | None = None,
                   num_cpus: int | None = None) -> Iterator[list[Outcome]]:
    """The same outcomes as ``embed_local``, computed by a Ray Data job (reading as tasks, encoding in ``actors``
    actors). Connects to ``address`` (``auto`` for a running cluster) or starts a local Ray instance."""
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        ray.init(address=address, num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 ignore_reinit_error=True)
        started = True
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        dataset = ray.data.from_items([{"index": int(i), "job": jobs[i]} for i in indices])
        dataset = dataset.map_batches(_ray_prepare, batch_size=batch_size, batch_format="numpy",
                                      fn_kwargs={"transform": transform})
        dataset = dataset.map_batches(_RayEncoder, batch_size=batch_size, batch_format="numpy",
                                      concurrency=actors, fn_constructor_kwargs={"load": load})
        for batch in dataset.iter_batches(batch_size=batch_size, batch_format="numpy"):
            yield [Outcome(int(i), str(s), None if v is None else np.asarray(v, dtype=np.float32), dict(info))
                   for i, s, v, info in zip(batch["index"], batch["status"], batch["vector"], batch["info"])]
    finally:
        if started:
            ray.shutdown()
