"""Atomic file writes: a file appears whole under its name or not at all (temp file in the same folder, then
``os.replace``; the temp file is removed on any failure). Every module that writes user-visible files uses these."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Iterator


def _mode_for(destination: Path) -> int:
    """An existing file's permissions, else what ``open()`` would give a new file (mkstemp makes it private)."""
    if destination.exists():
        return destination.stat().st_mode & 0o7777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


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
        os.chmod(tmp, _mode_for(destination))
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
    import torch  # here, so that torch-free readers (the ONNX runtime) can use this module

    with atomic_open(destination) as f:
        torch.save(obj, f)


def write_text_atomic(destination: str | os.PathLike, text: str) -> None:
    with atomic_open(destination, "w", encoding="utf-8") as f:
        f.write(text)


def check_output_folder(out: str | os.PathLike, force: bool, flag: str = "--out") -> Path:
    """``out`` as a Path, refused when it is a non-empty folder (unless ``force``), a file, or not writable."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{flag} {out} is a file, not a folder: choose a folder path")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} already exists and is not empty: choose another {flag} or pass --force to "
                              "replace it")
    parent = next((p for p in [out.parent, *out.parent.parents] if p.exists()), None)
    if parent is None or not parent.is_dir():
        raise NotADirectoryError(f"{flag} {out}: {parent} is a file, not a folder; choose a folder path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"{flag} {out}: {parent} is not writable; choose a folder you can write to")
    return out


@contextlib.contextmanager
def atomic_directory(destination: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``destination``; it replaces ``destination`` (whole) only if the
    block succeeds, so a failure leaves neither a half-written folder nor a damaged earlier one."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".partial", dir=destination.parent))
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp made it private; the result is an ordinary folder
        if destination.exists():
            old = destination.with_name(f".{destination.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            destination.rename(old)
            tmp.rename(destination)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(destination)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
