"""An index folder on disk: the manifest, embedding parts and the searchable snapshot.

    DIR/clipforge_index.json     manifest: model (spec, precision, weights fingerprint), source, dtype, run count,
                                 dead rows per part, images that failed (with their stamp), the snapshot's summary
    DIR/parts/part-RRRRR-KKK-SSSSSS.npy      (n, d) L2-normalised embeddings (float16 or float32); run R, rank K
    DIR/parts/part-RRRRR-KKK-SSSSSS.parquet  one metadata row per image (``COLUMNS``; ``error`` set for an
                                             unreadable image, whose vector is zeros); written last: a part
                                             exists once its Parquet file does
    DIR/index/                   the snapshot search reads: index.faiss (or a Qdrant collection), rows.npy (part,
                                 row) of every indexed vector, parts.json, metadata.parquet, index.json
    DIR/report.json              the last run: counts, unreadable images with the reason, listing problems

Every file is written under a temporary name and renamed; the snapshot folder is replaced whole. A run killed at any
moment leaves complete parts (kept and reused by the next run) and the previous snapshot, still consistent: parts a
snapshot refers to are deleted only after a newer snapshot replaced it.

A key's current row is its last occurrence in part order that is not marked dead.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from clipforge._atomic import atomic_open, atomic_path, write_text_atomic
from clipforge._optional import require

MANIFEST = "clipforge_index.json"
FORMAT = 1
COLUMNS = ("key", "path", "shard", "caption", "width", "height", "size", "mtime", "sha1", "stamp_size",
           "stamp_mtime_ns", "error")
_PART = re.compile(r"^part-(\d{5})-(\d{3})-(\d{6})\.parquet$")


def import_pyarrow():
    return require("pyarrow", "pyarrow.parquet",
                   hint="index metadata is Parquet: pip install 'clipforge[search]' (pyarrow)")


def part_name(run: int, rank: int, seq: int) -> str:
    return f"part-{run:05d}-{rank:03d}-{seq:06d}"


def write_parquet(path: Path, columns: dict[str, list]) -> None:
    pa = import_pyarrow()
    table = pa.table({name: columns[name] for name in COLUMNS if name in columns})
    with atomic_path(path) as tmp:
        pa.parquet.write_table(table, tmp)


def read_parquet(path: Path) -> dict[str, list]:
    pa = import_pyarrow()
    return pa.parquet.read_table(path).to_pydict()


class Store:
    """The folder of one index; ``manifest`` is the parsed ``clipforge_index.json`` (empty for a new folder)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.parts_dir = self.root / "parts"
        self.snapshot_dir = self.root / "index"
        path = self.root / MANIFEST
        self.manifest: dict = json.loads(path.read_text()) if path.exists() else {}

    @property
    def exists(self) -> bool:
        return bool(self.manifest)

    def save_manifest(self) -> None:
        self.manifest["format"] = FORMAT
        write_text_atomic(self.root / MANIFEST, json.dumps(self.manifest, indent=1, sort_keys=True))

    # ------------------------------------------------------------------------------------------------ parts

    def part_names(self) -> list[str]:
        """Complete parts in order (run, rank, sequence); leftovers of interrupted writes are removed."""
        if not self.parts_dir.is_dir():
            return []
        names = sorted(p.name[:-len(".parquet")] for p in self.parts_dir.iterdir() if _PART.match(p.name))
        return [n for n in names if (self.parts_dir / f"{n}.npy").exists()]

    def remove_leftovers(self) -> None:
        """Temporary files of killed writes and vector files whose metadata never landed."""
        if not self.parts_dir.is_dir():
            return
        complete = set(self.part_names())
        for path in self.parts_dir.iterdir():
            stem = path.name.rsplit(".", 1)[0]
            if path.name.startswith(".") or (path.suffix == ".npy" and stem not in complete):
                path.unlink(missing_ok=True)

    def write_part(self, name: str, vectors: np.ndarray, columns: dict[str, list]) -> None:
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        with atomic_open(self.parts_dir / f"{name}.npy") as f:
            np.save(f, vectors)
        write_parquet(self.parts_dir / f"{name}.parquet", columns)

    def read_meta(self, name: str) -> dict[str, list]:
        return read_parquet(self.parts_dir / f"{name}.parquet")

    def vectors(self, name: str) -> np.ndarray:
        return np.load(self.parts_dir / f"{name}.npy", mmap_mode="r")

    def remove_part(self, name: str) -> None:
        for suffix in (".parquet", ".npy"):
            (self.parts_dir / f"{name}{suffix}").unlink(missing_ok=True)

    # ----------------------------------------------------------------------------------------------- rows

    def current_rows(self) -> tuple[list[str], dict[str, tuple[int, int]], list[dict[str, list]]]:
        """(part names, key -> (part index, row) of each key's current row, metadata per part)."""
        names = self.part_names()
        dead = {name: set(rows) for name, rows in self.manifest.get("dead", {}).items()}
        where: dict[str, tuple[int, int]] = {}
        metas = []
        for p, name in enumerate(names):
            meta = self.read_meta(name)
            metas.append(meta)
            gone = dead.get(name, ())
            for r, key in enumerate(meta["key"]):
                if r not in gone:
                    where[key] = (p, r)
        return names, where, metas

    def gather(self, names: list[str], rows: np.ndarray) -> np.ndarray:
        """float32 vectors of ``rows`` ((n, 2) part index, row), in that order."""
        dim = int(self.manifest["model"]["embed_dim"])
        out = np.empty((len(rows), dim), dtype=np.float32)
        if not len(rows):
            return out
        order = np.lexsort((rows[:, 1], rows[:, 0]))
        sorted_rows = rows[order]
        bounds = np.flatnonzero(np.diff(sorted_rows[:, 0])) + 1
        for chunk, positions in zip(np.split(sorted_rows, bounds), np.split(order, bounds)):
            out[positions] = self.vectors(names[int(chunk[0, 0])])[chunk[:, 1]]
        return out


class RowVectors:
    """The float32 vectors of ``rows`` ((n, 2) part index, row) of a store, read on demand from the memory-mapped
    parts: ``v[ids]`` and ``v[start:stop]`` work as on an (n, d) array, without holding all of them in memory."""

    def __init__(self, store: Store, names: list[str], rows: np.ndarray):
        self.store, self.names, self.rows = store, names, rows
        self.shape = (len(rows), int(store.manifest["model"]["embed_dim"]))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        return self.store.gather(self.names, self.rows[key].reshape(-1, 2))


def read_snapshot_info(root: str | os.PathLike) -> dict:
    path = Path(root) / "index" / "index.json"
    return json.loads(path.read_text()) if path.exists() else {}
