"""Metadata: the list of entries (words, phrases, titles) captions are matched against.

Accepted files: a JSON list of strings (MetaCLIP's ``metadata.json`` layout, 500k entries), a JSON object with an
``entries`` list, or a text file with one entry per line (``#`` comments, blank lines ignored). Entries are kept
verbatim (matching is case-sensitive and whitespace-exact, as in MetaCLIP); duplicates are merged into their first
occurrence and reported, since one string can only be one entry (MetaCLIP's two matchers disagree on duplicates: the
per-entry search reports every copy, the automaton only the last one added).

MetaCLIP 2 keeps one list per language: ``load_metadata_lists(FOLDER)`` reads every ``LANG.json`` / ``LANG.txt`` of
a folder (the file name is the language code captions carry; ``other`` serves captions of languages without a list);
a single file is one list for every caption (``ALL``).
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


ALL = "*"


def load_metadata_lists(path: str | Path) -> dict[str, Metadata]:
    """Language code -> its list (a folder of per-language files), or ``{ALL: list}`` for one file."""
    path = Path(path)
    if not path.is_dir():
        return {ALL: load_metadata(path)}
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".json", ".txt") and not p.name.startswith("."))
    if not files:
        raise CurationError(f"{path}: no LANG.json or LANG.txt metadata files in this folder")
    stems = [p.stem for p in files]
    if len(set(stems)) != len(stems):
        raise CurationError(f"{path}: two files for one language ({sorted(s for s in stems if stems.count(s) > 1)[0]})")
    return {p.stem: load_metadata(p) for p in files}
