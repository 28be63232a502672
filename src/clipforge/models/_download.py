"""Getting weight files onto the local disk: Hugging Face hub files and plain URLs, with a cache.

Offline mode (``local_files_only=True`` or ``HF_HUB_OFFLINE=1`` in the environment, read at call time) makes no
network attempt at all: hub files come from the huggingface_hub cache, URL files from clipforge's cache directory.
URL downloads stream into a temporary file next to the target, are checked against the known sha256 (full hash or
published prefix) and only then renamed into place, so the cache never holds a partial or unverified file.
"""
from __future__ import annotations

import hashlib
import os
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Sequence

from clipforge.models._checkpoint_file import atomic_path

_CHUNK = 1 << 20
_TRUE = {"1", "on", "yes", "true"}


class WeightsNotCachedError(FileNotFoundError):
    """Offline (or the file is not published) and the weights are not in the local cache."""


class WeightsIntegrityError(ValueError):
    """A downloaded or cached file does not have the expected sha256 or size."""


def is_offline(local_files_only: bool = False) -> bool:
    """True when no network access may be attempted."""
    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return local_files_only or env.strip().lower() in _TRUE


def default_cache_dir() -> Path:
    """Where URL downloads go when no ``cache_dir`` is given: ``$CLIPFORGE_CACHE`` or ``~/.cache/clipforge``."""
    return Path(os.environ.get("CLIPFORGE_CACHE") or Path.home() / ".cache" / "clipforge")


def hub_file(repo_id: str, filenames: Sequence[str], *, revision: str | None = None,
             cache_dir: str | os.PathLike | None = None, local_files_only: bool = False) -> Path:
    """Path of the first of ``filenames`` that the hub repo has (or, offline, that the cache holds)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    offline = is_offline(local_files_only)
    for filename in filenames:
        try:
            return Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir,
                                        local_files_only=offline, library_name="clipforge"))
        except (LocalEntryNotFoundError, EntryNotFoundError):
            continue  # not cached / not in the repo: try the next candidate name
        except RepositoryNotFoundError:
            raise FileNotFoundError(
                f"Hugging Face hub repo '{repo_id}' does not exist or is private (if it is gated or private, log "
                f"in with `hf auth login`).") from None
    where = f"revision '{revision}' of " if revision else ""
    if offline:
        raise WeightsNotCachedError(
            f"offline mode: none of {list(filenames)} from {where}hub repo '{repo_id}' is in the cache "
            f"({cache_dir or 'the default huggingface_hub cache'}). Run once with network access (unset "
            f"HF_HUB_OFFLINE, local_files_only=False) to download it, or pass the path of a local copy.")
    raise FileNotFoundError(f"{where}hub repo '{repo_id}' has none of the files {list(filenames)}")


def url_file(url: str, *, sha256: str | None = None, cache_dir: str | os.PathLike | None = None,
             local_files_only: bool = False, timeout: float = 60.0) -> Path:
    """Download ``url`` into ``cache_dir`` (once), verified against ``sha256`` (a full hash or a prefix)."""
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise ValueError(f"weights URL must be http(s), got '{url}'")
    target = Path(cache_dir or default_cache_dir()) / _filename_of(url)
    if target.is_file():
        if sha256 is None or _file_sha256(target).startswith(sha256.lower()):
            return target
        target.unlink()  # a cached file that fails its hash is useless; drop it rather than load it
        if is_offline(local_files_only):
            raise WeightsIntegrityError(
                f"cached file {target} did not match its expected sha256 {sha256} and was removed; download it "
                f"again with network access.")
    if is_offline(local_files_only):
        raise WeightsNotCachedError(
            f"offline mode: {url} is not in the cache (expected at {target}). Run once with network access "
            f"(unset HF_HUB_OFFLINE, local_files_only=False), or download the file yourself and put it there.")
    _download(url, target, sha256, timeout)
    return target


def _filename_of(url: str) -> str:
    name = os.path.basename(urllib.parse.urlsplit(url).path)
    if not name or name in (".", ".."):
        raise ValueError(f"cannot derive a file name from URL '{url}'")
    return name


def _download(url: str, target: Path, sha256: str | None, timeout: float) -> None:
    digest = hashlib.sha256()
    with atomic_path(target) as tmp:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            expected_size = response.headers.get("Content-Length")
            received = 0
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
        if expected_size is not None and received != int(expected_size):
            raise WeightsIntegrityError(
                f"download of {url} stopped after {received} of {expected_size} bytes; nothing was written to "
                f"{target}. Try again.")
        got = digest.hexdigest()
        if sha256 is not None and not got.startswith(sha256.lower()):
            kind = "sha256" if len(sha256) == 64 else "sha256 prefix"
            raise WeightsIntegrityError(
                f"sha256 mismatch for {url}: expected {kind} {sha256}, got {got}. The download was discarded "
                f"(nothing written to {target}); retry, and if it persists the file on the server has changed.")


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
