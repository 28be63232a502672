"""Atomic file writes: a file appears whole under its name or not at all (temp file in the same folder, then
``os.replace``; the temp file is removed on any failure). Every module that writes user-visible files uses these."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

import torch


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``destination``; it replaces ``destination`` only if the block succeeds.
    For writers that take a path (safetensors, torch.save, tarfile)."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".partial")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, destination)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_open(destination: str | os.PathLike, mode: str = "wb", **kwargs) -> Iterator[IO]:
    """``open()`` for writing whose result only appears at ``destination`` once the block succeeds (fsync'd)."""
    with atomic_path(destination) as tmp:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def torch_save_atomic(obj: object, destination: str | os.PathLike) -> None:
    with atomic_open(destination) as f:
        torch.save(obj, f)


def write_text_atomic(destination: str | os.PathLike, text: str) -> None:
    with atomic_open(destination, "w", encoding="utf-8") as f:
        f.write(text)
