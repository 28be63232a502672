"""Getting weight files onto the local disk: Hugging Face hub files and plain URLs, with a cache.

Offline mode (``local_files_only=True`` or ``HF_HUB_OFFLINE=1`` in the environment, read at call time) makes no
network attempt at all: hub files come from the huggingface_hub cache, URL files from clipforge's cache directory.
URL downloads stream into a temporary file next to the target, are checked against the known sha256 (full hash or
published prefix) and only then renamed into place, so the cache never holds a partial or unverified file.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Sequence

from clipforge._atomic import atomic_path

_CHUNK = 1 << 20
_TRUE = {"1", "on", "yes", "true"}


class WeightsNotCachedError(FileNotFoundError):
    """Offline (or the file is not published) and the weights are not in the local cache."""


class HubUnreachableError(WeightsNotCachedError):
    """The hub could not be reached and the file is not in the cache."""


class HubRepoNotFoundError(FileNotFoundError):
    """The hub repo does not exist (or is private/gated without credentials)."""


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
    offline = is_offline(local_files_only)
    for filename in filenames:
        found = _cached_hub_file(repo_id, filename, revision, cache_dir) if offline else \
            _download_hub_file(repo_id, filename, revision, cache_dir)
        if found is not None:
            return found
    where = f"revision '{revision}' of " if revision else ""
    if offline:
        raise WeightsNotCachedError(
            f"offline mode: none of {list(filenames)} from {where}hub repo '{repo_id}' is in the cache "
            f"({cache_dir or 'the default huggingface_hub cache'}). Run once with network access (unset "
            f"HF_HUB_OFFLINE, local_files_only=False) to download it, or pass the path of a local copy.")
    raise FileNotFoundError(f"{where}hub repo '{repo_id}' has none of the files {list(filenames)}")


def _cached_hub_file(repo_id: str, filename: str, revision: str | None, cache_dir) -> Path | None:
    # A pure file-system lookup. hf_hub_download(local_files_only=True) is not enough for "zero network": with
    # huggingface_hub 2.4 it still builds request headers, whose agent detection fetches a registry from the hub.
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision)
    return Path(found) if isinstance(found, str) else None


def _download_hub_file(repo_id: str, filename: str, revision: str | None, cache_dir) -> Path | None:
    """The file from the hub (or its cache); None when the repo has no such file."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir,
                                    library_name="clipforge"))
    except LocalEntryNotFoundError as e:  # huggingface_hub's way of saying "no connection and not cached"
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise HubUnreachableError(
            f"could not reach the Hugging Face hub for '{repo_id}' ({filename}) and it is not in the cache "
            f"({cache_dir or 'the default huggingface_hub cache'}): {reason}") from None
    except EntryNotFoundError:
        return None
    except RepositoryNotFoundError:
        raise HubRepoNotFoundError(
            f"Hugging Face hub repo '{repo_id}' does not exist or is private (if it is gated or private, log "
            f"in with `hf auth login`).") from None


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
        try:
            expected_size, received = _stream(url, tmp, digest, timeout)
        except http.client.IncompleteRead:
            raise _cut_short(url, target) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            raise ConnectionError(f"could not download {url}: {getattr(e, 'reason', e)}. Nothing was written to "
                                  f"{target}; check the network (or use a local copy of the file).") from None
        if expected_size is not None and received != int(expected_size):
            raise _cut_short(url, target)
        got = digest.hexdigest()
        if sha256 is not None and not got.startswith(sha256.lower()):
            kind = "sha256" if len(sha256) == 64 else "sha256 prefix"
            raise WeightsIntegrityError(
                f"sha256 mismatch for {url}: expected {kind} {sha256}, got {got}. The download was discarded "
                f"(nothing written to {target}); retry, and if it persists the file on the server has changed.")


def _cut_short(url: str, target: Path) -> WeightsIntegrityError:
    return WeightsIntegrityError(f"download of {url} ended before the announced size; nothing was written to "
                                 f"{target}. Try again.")


def _stream(url: str, tmp: Path, digest, timeout: float) -> tuple[str | None, int]:
    """Copy the response body to ``tmp`` while hashing it; returns (declared length, bytes received)."""
    received = 0
    with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
        expected_size = response.headers.get("Content-Length")
        while chunk := response.read(_CHUNK):
            out.write(chunk)
            digest.update(chunk)
            received += len(chunk)
    return expected_size, received


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
