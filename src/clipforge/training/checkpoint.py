"""Training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint holds the model, optimizer, grad scaler, the step, the data position, every RNG state and the resolved
run config. Files are written atomically (temp file + rename) and only the last K are kept. Model weights are stored
in the open_clip key layout under ``state_dict``, so open_clip tools can read them too.
"""
from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from clipforge._atomic import torch_save_atomic
from clipforge.models._checkpoint_file import DAMAGED_FILE_ERRORS

_NAME = re.compile(r"^step_(\d+)(\.pt)?$")  # a file (full state) or a folder (FSDP2 shards, torch DCP)


def rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    # numpy's key array is stored as a tensor so that the checkpoint loads with weights_only=True.
    numpy_state = (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(directory: Path, step: int, payload: dict[str, Any], keep_last: int) -> Path:
    path = directory / f"step_{step:08d}.pt"
    torch_save_atomic(payload, path)
    prune(directory, keep_last)
    return path


def prune(directory: Path, keep_last: int) -> None:
    for old in list_checkpoints(directory)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old) if old.is_dir() else old.unlink(missing_ok=True)


def save_sharded(directory: Path, step: int, shards: dict[str, Any], meta: dict[str, Any], *, is_main: bool,
                 keep_last: int, barrier) -> Path:
    """FSDP2: every rank writes its shards with torch.distributed.checkpoint into a temporary folder, which
    the main rank renames into place once all ranks are done (a crash never leaves a half checkpoint)."""
    import torch.distributed.checkpoint as dcp

    final = directory / f"step_{step:08d}"
    tmp = directory / f".step_{step:08d}.tmp"
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    dcp.save(shards, checkpoint_id=str(tmp))
    if is_main:
        torch_save_atomic(meta, tmp / "meta.pt")
    barrier()
    if is_main:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        prune(directory, keep_last)
    barrier()
    return final


def load_sharded(path: Path, shards: dict[str, Any]) -> dict[str, Any]:
    """Fill ``shards`` (this rank's state-dict templates) in place from a sharded checkpoint; return its meta."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    meta = load_checkpoint(path / "meta.pt")  # a damaged folder fails here first, as a ValueError
    try:
        dcp.load(shards, checkpoint_id=str(path))
    except (CheckpointException, OSError, RuntimeError) as e:
        raise ValueError(f"cannot read sharded checkpoint '{path}' ({type(e).__name__}); it may be incomplete: "
                         "delete it to resume from the previous one") from None
    return meta


def latest_checkpoint(directory: Path) -> Optional[Path]:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint with the safe loader (no code runs)."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except DAMAGED_FILE_ERRORS as e:
        raise ValueError(f"cannot read checkpoint '{path}' ({type(e).__name__}: {e}). It may be truncated; "
                         "delete it to resume from the previous one.") from None

