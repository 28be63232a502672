"""The ftfy gate and the clean modes, checked against ftfy and open_clip's own cleaning functions."""
import re
import sys

import ftfy
import pytest
from references import require

from clipforge.tokenizer import clean


def _safe_chunks(codepoints, size=48):
    safe = [chr(c) for c in codepoints if not 0xD800 <= c <= 0xDFFF and not clean.needs_repair("a" + chr(c))]
    return [" ".join(safe[i:i + size]) for i in range(0, len(safe), size)], len(safe)


@pytest.mark.parametrize("codepoints", [range(0, 0x10000), range(0x10000, sys.maxunicode + 1, 23)],
                         ids=["bmp", "astral-sample"])
def test_gate_never_skips_a_text_ftfy_would_change(codepoints):
    chunks, n_safe = _safe_chunks(codepoints)
    checked = 0
    for text in chunks:
        if not clean.needs_repair(text):
            assert ftfy.fix_text(text) == text, f"ftfy changes a text the gate let through: {text!r}"
            checked += 1
    # The gate must stay useful, not just sound: most single characters pass it.
    assert n_safe > 0.8 * len(codepoints)
    assert checked > 0.3 * len(chunks)


@pytest.mark.parametrize("text", [
    "cafÃ©", "â€œquotedâ€\x9d", "x &amp; y", "AT&T", "\u201ccurly\u201d", "ｆｕｌｌ", "ﬁne", "ctrl\x00", "\x1b[31mred",
    "c1\x85", "cafe\u0301", "lone\ud800", "bom\ufeff", "ǅemal", "é\nline", "é\rline", "ascii\rcr",
])
def test_gate_sends_repairable_text_to_ftfy(text):
    assert clean.needs_repair(text)


@pytest.mark.parametrize("text", ["a photo of a cat", "Tabs\tand\nnew lines", "东京的夜景 😀", "नमस्ते", "café"])
def test_gate_lets_ordinary_text_through(text):
    assert not clean.needs_repair(text)


def test_plain_captions_never_call_ftfy(monkeypatch):
    def _fail(text, *args, **kwargs):
        raise AssertionError(f"ftfy called on {text!r}")

    monkeypatch.setattr(clean.ftfy, "fix_text", _fail)
    assert clean.clean_text("  A Photo of\tTWO  dogs, 3 cats & more  ".replace("&", "and")) == \
        "a photo of two dogs, 3 cats and more"
    assert clean.clean_text("東京の夜景 😀 Über café") == "東京の夜景 😀 über café"


@pytest.mark.parametrize("mode", ["lower", "whitespace", "canonicalize"])
def test_clean_modes_match_open_clip(mode, corpus):
    reference = require("open_clip.tokenizer").get_clean_fn(mode)
    ours = clean.get_clean_fn(mode)
    subset = corpus[::3]
    diffs = [text for text in subset if ours(text) != reference(text)]
    assert not diffs, f"{len(diffs)} captions clean differently, e.g. {diffs[:3]!r}"


def test_unknown_clean_mode_names_the_choices():
    with pytest.raises(ValueError, match="lower, whitespace, canonicalize"):
        clean.get_clean_fn("lowercase")


def test_ascii_entity_shortcut_equals_ftfy():
    import random

    pieces = ["&amp;", "&amp;amp;", "&lt;", "&gt;", "&quot;", "&#39;", "&#x27;", "&#0;", "&#13;", "&#10;", "&EACUTE;",
              "&eacute;", "&nbsp;", "&#x1F600;", "&#150;", "&#x26;", "amp;", "lt;", "#39;", "&", "&;", "&#;", "<",
              ">", "<b>", " ", "x", "AT&T", "&copy", "&notanentity;", "&#x41;", "&#65", "&AMP;", "&LT;"]
    rng = random.Random(5)
    used = 0
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 8)))
        repaired = clean._repair_ascii_entities(text)
        if repaired is not None:
            used += 1
            assert repaired == ftfy.fix_text(text), text
    assert used > 1000


def test_badness_shortcut_never_misses_a_bad_text():
    import random

    from ftfy.badness import is_bad

    rng = random.Random(11)
    needed = set(clean._mojibake_chars())
    pool = "".join(sorted(needed)) + "abcxyz AZ.,!?09\t" + "東京😀éß"
    bad = 0
    for _ in range(20_000):
        text = "".join(rng.choice(pool) for _ in range(rng.randint(1, 30)))
        if is_bad(text):
            bad += 1
            assert clean._looks_bad(text), text
        if needed.isdisjoint(text):
            assert not is_bad(text), text
    assert bad > 5_000


def test_badness_categories_have_no_characters_outside_the_bmp():
    from ftfy import badness

    categories = re.compile("[" + "".join(badness.MOJIBAKE_CATEGORIES.values()) + "]")
    astral = "".join(chr(c) for c in range(0x10000, sys.maxunicode + 1))
    assert categories.search(astral) is None
    assert categories.search("".join(chr(c) for c in range(0x80))) is None  # nor ASCII ones


@pytest.mark.parametrize("wrap", ["\u201c{}\u201d", "ＦＵＬＬ {} ﬁ", "it\u2019s {}", "{}\u00a0\u2018x\u2019"])
def test_one_pass_repair_equals_ftfy_across_the_bmp(wrap):
    """The shortcut that runs only ftfy's character-level fixers agrees with ftfy whenever it answers."""
    codepoints = [c for c in range(0x80, 0x10000, 3) if not 0xD800 <= c <= 0xDFFF]
    texts = [wrap.format(" ".join(chr(c) for c in codepoints[i:i + 24])) for i in range(0, len(codepoints), 24)]
    texts += [wrap.format(chr(c)) for c in codepoints[::7]]
    answered = 0
    for text in texts:
        repaired = clean._repair_one_pass(text)
        if repaired is not None:
            assert repaired == ftfy.fix_text(text), text
            answered += 1
    assert answered > 0.3 * len(texts)  # useful, not only sound


@pytest.mark.parametrize("text", ["cafÃ©", "itâ€™s", "x &amp; \u201cy\u201d", "\u201ca\u201d\nb", "ＦＵＬＬ\r"])
def test_one_pass_repair_declines_mojibake_entities_and_lines(text):
    assert clean._repair_one_pass(text) is None


def test_curly_quotes_and_full_width_skip_ftfy(monkeypatch):
    monkeypatch.setattr(clean.ftfy, "fix_text", lambda text, *a, **k: pytest.fail(f"ftfy called on {text!r}"))
    assert clean.clean_text("\u201cQuoted\u201d ＦＵＬＬ ﬁne") == '"quoted" full fine'
