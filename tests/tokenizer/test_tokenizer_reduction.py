"""Reduction strategies against open_clip's, with the same seeds; syntax with a stand-in nltk module."""
import random
import sys
import types

import pytest
from references import require
import torch

from clipforge.tokenizer import ClipTokenizer, create_tokenizer, get_reduction

CAPTIONS = ["a short one", "", "word " * 10, " ".join(f"w{i} tok{i}" for i in range(60)),
            "the quick brown fox jumps over the lazy dog " * 5, "東京 " * 40]


def _seeded(fn, seed=7):
    random.seed(seed)
    torch.manual_seed(seed)
    return fn()


@pytest.mark.parametrize("name", ["simple", "random", "shuffle"])
def test_random_strategies_match_open_clip_under_the_same_seed(name):
    open_clip_tokenizer = require("open_clip.tokenizer")
    ours = ClipTokenizer(reduction=name, context_length=12)
    theirs = open_clip_tokenizer.SimpleTokenizer(reduction_mask=name, context_length=12)
    for seed in range(5):
        a = _seeded(lambda: ours(CAPTIONS), seed)
        b = _seeded(lambda: theirs(CAPTIONS), seed)
        assert torch.equal(a, b), (name, seed)


@pytest.mark.parametrize("name", ["simple", "random", "shuffle"])
def test_reduced_rows_are_well_formed(name):
    tok = ClipTokenizer(reduction=name, context_length=12)
    text = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
            "quebec romeo sierra tango uniform victor whiskey yankee zulu")
    full = tok.encode(text)
    assert len(set(full)) == len(full) > 10
    rows = tok([text] * 20)
    assert (rows[:, 0] == tok.sot_token_id).all() and (rows[:, -1] == tok.eot_token_id).all()
    kept = rows[:, 1:-1]
    assert all(set(r.tolist()) <= set(full) for r in kept)
    if name == "random":  # order kept: positions in the original sequence increase
        positions = [[full.index(t) for t in r.tolist()] for r in kept]
        assert all(p == sorted(p) for p in positions)
    assert len({tuple(r.tolist()) for r in rows}) > 1  # really random across calls
    short = tok(["a cat"])[0]
    assert short.tolist()[:4] == [tok.sot_token_id, *tok.encode("a cat"), tok.eot_token_id]


class _FakeNltk(types.ModuleType):
    """Enough of nltk for the syntax strategy: whitespace words, tags chosen from the word's first letter."""

    def __init__(self):
        super().__init__("nltk")
        self.tokenize = types.SimpleNamespace(word_tokenize=lambda text: text.split())
        self.download = lambda *args, **kwargs: True

    @staticmethod
    def pos_tag(words):
        tags = {"c": "NN", "d": "NNS", "r": "JJ", "s": "VBG"}
        return [(w, tags.get(w[:1], "DT")) for w in words]


def test_syntax_strategy_matches_open_clip_with_the_same_tagger(monkeypatch):
    open_clip_tokenizer = require("open_clip.tokenizer")
    monkeypatch.setitem(sys.modules, "nltk", _FakeNltk())
    texts = ["the red cat sitting on a red mat with the dog and the sleepy cat", "a cat", "the the the cat"]
    for length in (5, 8, 30):
        ours = ClipTokenizer(reduction="syntax")(texts, context_length=length)
        theirs = open_clip_tokenizer.SimpleTokenizer(reduction_mask="syntax")(texts, context_length=length)
        assert torch.equal(ours, theirs), length
    kept = ClipTokenizer(reduction="syntax").decode(ClipTokenizer(reduction="syntax")(texts[0], context_length=5)[0])
    assert kept == "cat dog cat"  # nouns first, original order


def test_syntax_without_nltk_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "nltk", None)  # makes `import nltk` fail
    tok = create_tokenizer("clip", reduction="syntax")
    with pytest.raises(ImportError, match="pip install nltk"):
        tok(["a cat"])


def test_unknown_reduction_lists_the_choices():
    with pytest.raises(ValueError, match="simple, random, shuffle, syntax"):
        get_reduction("drop")
    with pytest.raises(ValueError, match="only available for the CLIP tokenizer"):
        create_tokenizer("some/repo", reduction="random")
