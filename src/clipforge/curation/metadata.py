"""Metadata: the list of entries (words, phrases, titles) captions are matched against.

Accepted files: a JSON list of strings (MetaCLIP's ``metadata.json`` layout, 500k entries), a JSON object with an
``entries`` list, or a text file with one entry per line (``#`` comments, blank lines ignored). Entries are kept
verbatim (matching is case-sensitive and whitespace-exact, as in MetaCLIP); duplicates are merged into their first
occurrence and reported, since one string can only be one entry (MetaCLIP's two matchers disagree on duplicates: the
per-entry search reports every copy, the automaton only the last one added).
"""
from __future__ import annotations

import collections
import dataclasses
import json
from pathlib import Path


class CurationError(ValueError):
    """Bad curation input: the message names the problem and the fix."""


@dataclasses.dataclass(frozen=True)
class Metadata:
    entries: tuple[str, ...]
    duplicates: dict[str, int]   # entry -> how many extra copies were merged
    dropped_empty: int            # blank entries ignored
    source: str

    def __len__(self) -> int:
        return len(self.entries)


def _read(path: Path) -> list:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise CurationError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); give a JSON list of strings "
                                "or a text file with one entry per line") from None
        if isinstance(data, dict):
            data = data.get("entries")
        if not isinstance(data, list):
            raise CurationError(f"{path}: expected a JSON list of strings (or {{\"entries\": [...]}})")
        return data
    return [line.rstrip("\r\n") for line in text.splitlines() if not line.startswith("#")]


def from_entries(entries, source: str = "<list>") -> Metadata:
    """Metadata from strings: blanks dropped, duplicates merged (first occurrence kept) and counted."""
    bad = [e for e in entries if not isinstance(e, str)]
    if bad:
        raise CurationError(f"{source}: entries must be strings, found {type(bad[0]).__name__} {bad[0]!r}")
    kept = [e for e in entries if e.strip()]
    counts = collections.Counter(kept)
    unique = tuple(dict.fromkeys(kept))
    if not unique:
        raise CurationError(f"{source}: no metadata entries (empty list); give at least one word or phrase")
    return Metadata(unique, {e: c - 1 for e, c in counts.items() if c > 1}, len(entries) - len(kept), source)


def load_metadata(path: str | Path) -> Metadata:
    path = Path(path)
    if not path.is_file():
        raise CurationError(f"metadata file not found: {path} (a JSON list or one entry per line; "
                            "`clipforge curate metadata` builds one)")
    return from_entries(_read(path), str(path))
