"""Building a metadata list, MetaCLIP's recipe: WordNet lemmas, frequent words and strongly associated word pairs
of a text corpus (MetaCLIP used English Wikipedia: unigrams seen at least 100 times, bigrams by pointwise mutual
information), and article titles; merged, de-duplicated, with the count each source gave.

``example_metadata()`` is the small list shipped for trying things out (``curation/data/example_metadata.json``,
1,642 visual concepts: the class names of the zero-shot benchmark datasets as clip_benchmark names them and the
quickstart's colours and shapes; written by ``tools/make_example_metadata.py``, provenance inside the file).
"""
from __future__ import annotations

import collections
import json
import math
import re
from pathlib import Path
from typing import Iterable

from clipforge.curation.metadata import CurationError

_TOKEN = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*", re.UNICODE)


EXAMPLE = Path(__file__).with_name("data") / "example_metadata.json"


def example_metadata() -> list[str]:
    """The shipped example list (its provenance is in the file)."""
    return list(json.loads(EXAMPLE.read_text(encoding="utf-8"))["entries"])


def wordnet_lemmas() -> list[str]:
    """Every WordNet lemma name (underscores as spaces), through nltk."""
    try:
        from nltk.corpus import wordnet
        lemmas = [name.replace("_", " ") for synset in wordnet.all_synsets() for name in synset.lemma_names()]
    except ImportError:
        raise ImportError("WordNet entries need nltk: pip install nltk") from None
    except LookupError:
        raise CurationError("nltk's WordNet data is not installed: run python -c \"import nltk; "
                            "nltk.download('wordnet')\" (or leave --wordnet out)") from None
    return list(dict.fromkeys(lemmas))


def corpus_entries(lines: Iterable[str], min_count: int = 100, min_pmi: float = 5.0) -> tuple[list[str], list[str]]:
    """Unigrams seen ``min_count`` times, and bigrams seen ``min_count`` times whose pointwise mutual information
    ``ln(p(ab) / (p(a) p(b)))`` is at least ``min_pmi``."""
    words, pairs = collections.Counter(), collections.Counter()
    for line in lines:
        tokens = _TOKEN.findall(line)
        words.update(tokens)
        pairs.update(zip(tokens, tokens[1:]))
    total_words, total_pairs = sum(words.values()), max(sum(pairs.values()), 1)
    unigrams = [w for w, c in words.most_common() if c >= min_count]
    bigrams = []
    for (a, b), c in pairs.most_common():
        if c < min_count:
            break
        pmi = math.log((c / total_pairs) / ((words[a] / total_words) * (words[b] / total_words)))
        if pmi >= min_pmi:
            bigrams.append(f"{a} {b}")
    return unigrams, bigrams


def titles(path: str | Path, min_views: int = 0) -> list[str]:
    """Titles, one per line, optionally ``title<TAB>views`` (kept at ``min_views`` or more)."""
    kept = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        title, _, views = line.partition("\t")
        if title.strip() and (not views.strip() or not views.strip().isdigit() or int(views) >= min_views):
            kept.append(title.strip().replace("_", " "))
    return kept


def build(sources: dict[str, list[str]]) -> tuple[list[str], dict[str, int]]:
    """Entries of every source in order, de-duplicated; how many each source added."""
    seen: dict[str, None] = {}
    added = {}
    for name, entries in sources.items():
        before = len(seen)
        seen.update(dict.fromkeys(e for e in entries if e.strip()))
        added[name] = len(seen) - before
    if not seen:
        raise CurationError("no metadata entries from any source: give --example, --wordnet, --corpus, --titles "
                            "or --add")
    return list(seen), added
