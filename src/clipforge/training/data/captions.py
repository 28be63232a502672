"""Caption transforms applied per sample before tokenizing, seeded by the seed the pipeline derives for each sample
(seed, epoch, and the sample's place in the stream: rank and, for WebDataset, worker and position), so a rerun with
the same settings, or a resumed run, sees the same captions as an uninterrupted one.

- ``ClassCaptions`` (FLYP-style fine-tuning): the caption member holds a class index (``.cls``); it becomes a
  template filled with the class name, the template drawn per sample.
- ``SynonymReplacer``: each word that has synonyms is replaced by one of them with probability ``prob``; words
  inside protected phrases (class names) are never touched. Synonyms come from a word list or from WordNet
  through nltk (``pip install nltk`` plus its ``wordnet`` data).
"""
from __future__ import annotations

import json
import logging
import random
import re
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence

from clipforge.config import ConfigError

logger = logging.getLogger("clipforge.data")

CaptionTransform = Callable[[str, int], str]
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")


def _read_lines(path: str, what: str) -> list[str]:
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"{what} file '{path}' not found")
    return [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]


class ClassCaptions:
    """``"3"`` -> ``"a photo of a blue circle."``: class index -> a seeded template with the class name. A label
    that is not an index of the class names gives None: the sample is skipped and counted, like an empty caption."""

    def __init__(self, classnames: Sequence[str], templates: Sequence[str]):
        if not classnames:
            raise ConfigError("data.class_captions names an empty class-names file")
        bad = [t for t in templates if "{}" not in t]
        if not templates or bad:
            raise ConfigError(f"every class-caption template needs a '{{}}' for the class name, got {bad[:1] or []}")
        self.classnames, self.templates = list(classnames), list(templates)
        self._warned = False

    def __call__(self, caption: str, seed: int) -> Optional[str]:
        label = caption.strip()
        if not label.isdigit() or int(label) >= len(self.classnames):
            if not self._warned:
                self._warned = True
                logger.warning("data.class_captions: caption member %r is not an index of the %d class names "
                               "(such samples are skipped and counted; is data.wds_caption_key=cls?)",
                               caption[:40], len(self.classnames))
            return None
        return random.Random(seed).choice(self.templates).format(self.classnames[int(label)])


def load_word_list(path: str) -> dict[str, list[str]]:
    """Synonyms from JSON (``{"word": ["synonym", ...]}``) or lines ``word: synonym, synonym``."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"synonym list '{path}' not found (give a JSON object or 'word: syn, syn' lines, or "
                          "data.synonyms=wordnet)")
    text = file.read_text(encoding="utf-8")
    if file.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"synonym list '{path}' is not valid JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
            raise ConfigError(f"synonym list '{path}' must be a JSON object of word -> list of synonyms")
        return {k.lower(): [str(s) for s in v if str(s).strip()] for k, v in data.items()}
    table = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        word, sep, rest = line.partition(":") if ":" in line else line.partition("\t")
        if not sep or not word.strip():
            raise ConfigError(f"synonym list '{path}' line {number}: expected 'word: synonym, synonym'")
        table[word.strip().lower()] = [s.strip() for s in rest.split(",") if s.strip()]
    return table


# function words WordNet would still "replace" (a -> angstrom, in -> inch, it -> information technology)
_STOP_WORDS = frozenset("""a an the and or but if of in on at to by for with from into onto over under about as is are
was were be been being am it its this that these those there here he she they we you i me him her them us my his
their our your not no do does did has have had will would can could shall should may might must up down out off
""".split())


class WordNetSynonyms(Mapping):
    """Synonyms of a word from WordNet's synsets (lemma names, underscores as spaces), looked up lazily; function
    words and words of two letters or fewer get none."""

    def __init__(self):
        try:
            from nltk.corpus import wordnet
        except ImportError:
            raise ConfigError("data.synonyms=wordnet needs nltk: pip install nltk (or give a word-list file)") \
                from None
        try:
            wordnet.ensure_loaded()
        except LookupError:
            raise ConfigError("nltk's WordNet data is not installed: run python -c \"import nltk; "
                              "nltk.download('wordnet')\" (or give data.synonyms a word-list file)") from None
        self._cache: dict[str, list[str]] = {}

    def __getitem__(self, word: str) -> list[str]:
        if len(word) <= 2 or word in _STOP_WORDS:
            return []
        if word not in self._cache:
            from nltk.corpus import wordnet

            names = {lemma.name().replace("_", " ") for synset in wordnet.synsets(word) for lemma in synset.lemmas()}
            self._cache[word] = sorted(n for n in names if n.lower() != word)
        return self._cache[word]

    def get(self, word, default=None):
        return self[word] or default

    def __iter__(self):
        return iter(self._cache)

    def __len__(self) -> int:
        return len(self._cache)

    def __reduce__(self):  # DataLoader workers rebuild it (nltk's reader does not pickle)
        return (WordNetSynonyms, ())


class SynonymReplacer:
    """Replace words by synonyms with probability ``prob`` each, never inside ``protected`` phrases."""

    def __init__(self, synonyms: Mapping[str, list[str]], prob: float, protected: Iterable[str] = ()):
        if not 0.0 <= prob <= 1.0:
            raise ConfigError(f"synonym probability must be in [0, 1], got {prob}")
        self.synonyms, self.prob = synonyms, prob
        phrases = sorted({p.strip().lower() for p in protected if p.strip()}, key=len, reverse=True)
        self._protected = re.compile(r"\b(?:" + "|".join(re.escape(p) for p in phrases) + r")\b",
                                     re.IGNORECASE) if phrases else None

    def __call__(self, caption: str, seed: int) -> str:
        rng = random.Random(seed ^ 0x5E7)
        guarded = [m.span() for m in self._protected.finditer(caption)] if self._protected else []
        out, last = [], 0
        for match in _WORD.finditer(caption):
            start, end = match.span()
            choices = None if any(a <= start < b for a, b in guarded) else \
                self.synonyms.get(match.group().lower())
            if choices and rng.random() < self.prob:
                out += [caption[last:start], _same_case(match.group(), rng.choice(choices))]
                last = end
        return "".join(out) + caption[last:]


def _same_case(original: str, replacement: str) -> str:
    return replacement[:1].upper() + replacement[1:] if original[:1].isupper() else replacement


class Chain:
    """Caption transforms applied in order, each with its own derived seed."""

    def __init__(self, steps: Sequence[CaptionTransform]):
        self.steps = list(steps)

    def __call__(self, caption: str, seed: int) -> Optional[str]:
        for k, step in enumerate(self.steps):
            caption = step(caption, seed + k)
            if caption is None:
                return None
        return caption


def protected_phrases(entries: Sequence[str]) -> list[str]:
    """Protected words / phrases; an entry ``@FILE`` adds the lines of FILE (e.g. a class-names file)."""
    out = []
    for entry in entries:
        out += _read_lines(entry[1:], "data.protected_words") if entry.startswith("@") else [entry]
    return out


def create_caption_transform(class_captions: Optional[str], class_templates: Optional[str], synonym_prob: float,
                             synonyms: Optional[str], protected: Sequence[str]) -> Optional[CaptionTransform]:
    """The data section's caption transforms (class captions first, then synonyms), or None when none is on."""
    steps: list[CaptionTransform] = []
    classnames: list[str] = []
    if class_captions:
        classnames = _read_lines(class_captions, "data.class_captions")
        templates = _read_lines(class_templates, "data.class_templates") if class_templates else ["a photo of a {}."]
        steps.append(ClassCaptions(classnames, templates))
    if synonym_prob > 0:
        table = WordNetSynonyms() if synonyms == "wordnet" else load_word_list(synonyms)
        steps.append(SynonymReplacer(table, synonym_prob, [*classnames, *protected_phrases(protected)]))
    if not steps:
        return None
    return steps[0] if len(steps) == 1 else Chain(steps)
