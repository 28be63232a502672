"""Substring matching of captions against metadata entries, MetaCLIP's rules, with one automaton pass per batch.

Rules (``RULES``):

- ``metaclip1`` (MetaCLIP 1): the caption is padded with a space on each side, the characters ``, . ; : ? !`` and the
  backtick get a space on each side, tabs and line breaks become spaces; each entry is padded with one space on each
  side; case-sensitive. So ``dog`` matches "a dog." and "dog, cat" but not "dog's", "dog-friendly" or "(dog)".
- ``metaclip2`` (MetaCLIP 2): the caption as in ``metaclip1``; an entry is padded only on a side whose end character
  is not punctuation or a CJK / Thai / Lao / Burmese / Khmer / Tibetan character (scripts written without spaces).
- ``words`` (clipforge's stricter whole-word mode): caption and entries are split into words (letters and digits,
  with inner apostrophes and hyphens: ``dog's``, ``dog-friendly`` are single words) and punctuation marks; an entry
  matches a run of whole words. Unlike ``metaclip1``, "(dog)" and "\\"dog\\"" match ``dog``; like it, "dog's" does not.

Every rule counts an entry once per caption, and nested or overlapping entries all count ("golden retriever" in a
caption matches ``golden``, ``retriever`` and ``golden retriever``).

``Matcher.match(captions)`` joins a batch of prepared captions with a separator no entry contains and runs the
Aho-Corasick automaton (pyahocorasick) once over the whole string; caption boundaries come from the separator
positions, duplicates per caption are removed with numpy. There is no per-caption Python work for the MetaCLIP rules.
"""
from __future__ import annotations

import itertools
import re
import string
from typing import Sequence

import numpy as np

from clipforge._optional import require
from clipforge.curation.metadata import CurationError

RULES = ("metaclip1", "metaclip2", "words")
_SEP = "\x00"  # between captions in a batch; removed from captions, never in an entry
_WRAP = tuple((p, f" {p} ") for p in ",.;:?!`") + (("\t", " "), ("\n", " "), ("\r", " "))
_EXTRA_PUNCT = set("，。、；：？！“”‘’（）【】《》〈〉「」『』～—")
_NO_SPACE_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
                    (0x2B820, 0x2CEAF), (0x2CEB0, 0x2EBEF), (0xF900, 0xFAFF), (0x2E80, 0x2EFF), (0x2F00, 0x2FDF),
                    (0x2FF0, 0x2FFF), (0x0E00, 0x0E7F), (0x0E80, 0x0EFF), (0x1000, 0x109F), (0x1780, 0x17FF),
                    (0x0F00, 0x0FFF))
_WORDS = re.compile(r"\w+(?:['’-]\w+)*|[^\w\s]")


def import_ahocorasick():
    return require("ahocorasick", hint="caption matching needs pyahocorasick: pip install 'clipforge[curate]'")


def space_caption(text: str) -> str:
    """MetaCLIP's caption spacing (both versions). Chained ``str.replace`` (C memchr scans): 20x ``str.translate``
    with a mapping on a batch."""
    text = f" {text} "
    for old, new in _WRAP:
        if old in text:
            text = text.replace(old, new)
    return text


def _unspaced(char: str) -> bool:
    """A character that takes no padding space in MetaCLIP 2: punctuation or a script written without spaces."""
    if char in string.punctuation or char in _EXTRA_PUNCT:
        return True
    code = ord(char)
    return any(lo <= code <= hi for lo, hi in _NO_SPACE_RANGES)


def _words(text: str) -> str:
    return " " + " ".join(_WORDS.findall(text)) + " "


def pad_entry(entry: str, rule: str) -> str:
    if rule == "metaclip1":
        return f" {entry} "
    if rule == "metaclip2":
        return ("" if _unspaced(entry[0]) else " ") + entry + ("" if _unspaced(entry[-1]) else " ")
    return _words(entry)


def prepare_caption(text: str, rule: str) -> str:
    """A caption as the rule sees it. A NUL character counts as a space (the batch separator; MetaCLIP keeps it)."""
    text = text.replace(_SEP, " ")
    return _words(text) if rule == "words" else space_caption(text)


def naive_match(caption: str, entries: Sequence[str], rule: str = "metaclip1") -> list[int]:
    """The reference: one substring search per entry (MetaCLIP 1's own pure-Python matcher, generalised)."""
    prepared = prepare_caption(caption, rule)
    return [i for i, entry in enumerate(entries) if pad_entry(entry, rule) in prepared]


class Matcher:
    """An automaton over ``entries`` padded by ``rule``; ``match`` gives each caption's entry ids."""

    def __init__(self, entries: Sequence[str], rule: str = "metaclip1"):
        if rule not in RULES:
            raise CurationError(f"unknown matching rule {rule!r}: use one of {', '.join(RULES)}")
        if not entries:
            raise CurationError("no metadata entries to match")
        bad = next((e for e in entries if _SEP in e or not e.strip()), None)
        if bad is not None:
            raise CurationError(f"metadata entry {bad!r} is blank or holds a NUL character")
        ahocorasick = import_ahocorasick()
        self.rule, self.size = rule, len(entries)
        self.automaton = ahocorasick.Automaton(ahocorasick.STORE_INTS)
        padded: dict[str, int] = {}
        for i, entry in enumerate(entries):
            key = pad_entry(entry, rule)
            if key.strip() and key not in padded:  # two entries padding alike (words rule) keep the first id
                padded[key] = i
        for key, i in padded.items():
            self.automaton.add_word(key, i)
        self.automaton.make_automaton()

    def _joined(self, captions: Sequence[str]) -> str:
        if self.rule == "words":
            return _SEP.join(_words(c.replace(_SEP, " ")) for c in captions)
        joined = f" {_SEP} ".join(captions)
        if joined.count(_SEP) != len(captions) - 1:  # a caption held NUL characters: they count as spaces
            joined = f" {_SEP} ".join(c.replace(_SEP, " ") for c in captions)
        return space_caption(joined)

    def match(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(offsets, ids)``: the sorted distinct entry ids of caption ``i`` are ``ids[offsets[i]:offsets[i+1]]``."""
        n = len(captions)
        if n == 0:
            return np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int32)
        text = self._joined(captions)
        # (end, entry) pairs flattened straight into an array: no list of tuples
        hits = np.fromiter(itertools.chain.from_iterable(self.automaton.iter(text)), dtype=np.int64).reshape(-1, 2)
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        separators = np.flatnonzero(codes == 0)
        which = np.searchsorted(separators, hits[:, 0])  # separators before a match's end = its caption
        pairs = np.sort(which * self.size + hits[:, 1])
        pairs = pairs[np.concatenate([[True], pairs[1:] != pairs[:-1]])] if len(pairs) else pairs  # np.unique: 10x
        caption, ids = pairs // self.size, (pairs % self.size).astype(np.int32)
        offsets = np.searchsorted(caption, np.arange(n + 1)).astype(np.int64)
        return offsets, ids

    def match_one(self, caption: str) -> list[int]:
        offsets, ids = self.match([caption])
        return ids.tolist()


class LanguageMatcher:
    """One ``Matcher`` per language over one id space (language ``L``'s entry ``j`` is ``offset[L] + j``), MetaCLIP
    2's layout. Captions are matched against their language's list; ``other`` (when present) serves languages
    without one, otherwise such captions match nothing. With a single list (``ALL``) languages are ignored."""

    def __init__(self, lists: dict[str, Sequence[str]], rule: str = "metaclip1"):
        self.matchers, self.offsets, size = {}, {}, 0
        for language, entries in lists.items():
            self.matchers[language], self.offsets[language] = Matcher(entries, rule), size
            size += len(entries)
        self.size, self.rule = size, rule

    def match(self, captions: Sequence[str], languages: Sequence[str | None] | None = None
              ) -> tuple[np.ndarray, np.ndarray, int]:
        """``(offsets, ids, unlisted)``: CSR matches in global ids, and how many captions had no list."""
        from clipforge.curation.metadata import ALL

        if ALL in self.matchers:
            offsets, ids = self.matchers[ALL].match(captions)
            return offsets, ids, 0
        groups: dict[str, list[int]] = {}
        unlisted = 0
        for i, language in enumerate(languages if languages is not None else [None] * len(captions)):
            chosen = language if language in self.matchers else "other" if "other" in self.matchers else None
            if chosen is None:
                unlisted += 1
            else:
                groups.setdefault(chosen, []).append(i)
        owners, found = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
        for language, positions in groups.items():
            offsets, ids = self.matchers[language].match([captions[i] for i in positions])
            owners.append(np.repeat(np.asarray(positions, dtype=np.int64), np.diff(offsets)))
            found.append(ids.astype(np.int64) + self.offsets[language])
        keys = np.sort(np.concatenate(owners) * self.size + np.concatenate(found))
        owner, ids = keys // max(self.size, 1), (keys % max(self.size, 1)).astype(np.int32)
        return np.searchsorted(owner, np.arange(len(captions) + 1)).astype(np.int64), ids, unlisted
