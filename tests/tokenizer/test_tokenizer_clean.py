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
    "c1\x85", "cafe\u0301", "lone\ud800", "bom\ufeff", "ǅemal", "é\rline", "ascii\rcr", "ok é\ncafÃ©",
])
def test_gate_sends_repairable_text_to_ftfy(text):
    assert clean.needs_repair(text)


@pytest.mark.parametrize("text", ["a photo of a cat", "Tabs\tand\nnew lines", "东京的夜景 😀", "नमस्ते", "café",
                                  "é\nline", "Zürich\n東京\nnaïve"])
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


@pytest.mark.parametrize("mode", ["lower", "whitespace"])
def test_chunk_functions_split_open_clips_cleaned_text(mode, corpus):
    """The chunk functions take a shortcut on text that needs no repair (lower-case then split, without collapsing
    whitespace first): their chunks are open_clip's cleaned text split at spaces, on the corpus, on every BMP
    character between words and in whitespace runs, and around final sigmas."""
    reference = require("open_clip.tokenizer").get_clean_fn(mode)
    chunks_of = clean.get_chunk_fn(mode)
    bmp = [chr(c) for c in range(0x80, 0x10000) if not 0xD800 <= c <= 0xDFFF]
    texts = list(corpus[::5]) + ["ΟΔΟΣ \u3000ΟΔΟΣ\u2003", "ΣΑΣ\u00a0Σ", " \u2028 Σ.", "\u3000\u00a0 ", "é\tÉ\u205fX"]
    texts += ["Ab " + " \u3000 ".join(bmp[i:i + 64]) + "  Σ" for i in range(0, len(bmp), 64)]
    for text in texts:
        expected = [chunk for chunk in reference(text).split(" ") if chunk]
        assert [chunk for chunk in chunks_of(text) if chunk] == expected, repr(text)


def test_unknown_clean_mode_names_the_choices():
    with pytest.raises(ValueError, match="lower, whitespace, canonicalize"):
        clean.get_clean_fn("lowercase")


_PIECES = ["&amp;", "&amp;amp;", "&lt;", "&gt;", "&quot;", "&#39;", "&#x27;", "&#0;", "&#13;", "&#10;", "&EACUTE;",
           "&eacute;", "&nbsp;", "&#x1F600;", "&#150;", "&#x26;", "amp;", "&", "&;", "<", ">", "<b>", " ", "x",
           "AT&T", "&copy", "&notanentity;", "\n", "\r\n", "\r", "cafÃ©", "â€™", "Ã", "\xa0", "\u201c", "\u2019",
           "ＦＵＬＬ", "ﬁ", "\x1b[31m", "\x85", "\x9d", "e\u0301", "\ud800", "\ud83d\ude00", "é", "東京", "\u2028",
           "\x00", "\u3000", "ǅ", "😀", "Привет"]


def test_fix_text_equals_ftfy_on_random_mixes():
    """clipforge's fix_text (ftfy's loop with steps skipped where they are the identity) against ftfy itself, on
    texts glued from the pieces each step acts on: entities, mojibake, quotes, widths, controls, line breaks."""
    import random

    rng = random.Random(5)
    changed = 0
    for _ in range(20_000):
        text = "".join(rng.choice(_PIECES) for _ in range(rng.randint(1, 14)))
        expected = ftfy.fix_text(text)
        assert clean.fix_text(text) == expected, text
        changed += expected != text
    assert changed > 10_000  # the mixes really exercise the repairs


def test_fix_text_equals_ftfy_on_the_corpus(corpus):
    diffs = [text for text in corpus if clean.fix_text(text) != ftfy.fix_text(text)]
    assert not diffs, f"{len(diffs)} texts differ, e.g. {diffs[:3]!r}"


def test_fix_text_keeps_ftfys_line_rules():
    # A "<" turns HTML unescaping off for its own line and every later one, not for the lines before it.
    text = "a &amp; b\n<p> &amp;\nc &amp; d"
    assert clean.fix_text(text) == ftfy.fix_text(text) == "a & b\n<p> &amp;\nc &amp; d"
    # Mojibake is judged line by line: one line repaired, the other left alone.
    text = "cafÃ© au lait\nplain é line"
    assert clean.fix_text(text) == ftfy.fix_text(text) == "café au lait\nplain é line"


def test_only_mojibake_reaches_ftfys_encoding_repair(monkeypatch):
    calls = []
    real = clean._fix_encoding
    monkeypatch.setattr(clean, "_fix_encoding", lambda text: calls.append(text) or real(text))
    monkeypatch.setattr(clean.ftfy, "fix_text", lambda text, *a, **k: pytest.fail(f"ftfy.fix_text on {text!r}"))
    assert clean.clean_text("\u201cQuoted\u201d ＦＵＬＬ ﬁne &amp; more\nÜber") == '"quoted" full fine & more über'
    assert calls == []
    assert clean.clean_text("cafÃ©") == "café" and calls == ["cafÃ©"]


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


@pytest.mark.parametrize("wrap", ["\u201c{}\u201d", "ＦＵＬＬ {} ﬁ &amp;", "it\u2019s {}\ncafÃ© {}", "{}\u00a0\u2018x\u2019\r\n"])
def test_fix_text_equals_ftfy_across_the_bmp(wrap):
    codepoints = [c for c in range(0x80, 0x10000) if not 0xD800 <= c <= 0xDFFF]
    texts = [wrap.format(*[" ".join(chr(c) for c in codepoints[i:i + 24])] * wrap.count("{}"))
             for i in range(0, len(codepoints), 24)]
    diffs = [text for text in texts if clean.fix_text(text) != ftfy.fix_text(text)]
    assert not diffs, f"{len(diffs)} texts differ, e.g. {diffs[:2]!r}"


def test_fix_encoding_equals_ftfys_loop():
    """clipforge's encoding repair stops once the text is ASCII or not bad, where ftfy's next step would return it
    unchanged; it must equal ``ftfy.fix_encoding`` however many steps the repair takes (mojibake of mojibake)."""
    import random

    rng = random.Random(23)
    encodings = ["latin-1", "cp1252", "cp1251", "mac_roman", "cp437", "cp1250", "iso-8859-2"]
    words = ["café", "Zürich", "it’s", "“quoted”", "señor", "Ærø", "東京", "😀", "naïve", "x", "über",
             " ", "plain words", "Привет"]
    texts = []
    for _ in range(4000):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 6)))
        for _ in range(rng.choice([1, 1, 2, 3])):  # layers of mojibake
            text = text.encode("utf-8").decode(rng.choice(encodings), errors="replace")
        texts.append(text)
    steps = sum(ftfy.fix_encoding(t) != t for t in texts)
    diffs = [t for t in texts if clean._looks_bad(t) and clean._fix_encoding(t) != ftfy.fix_encoding(t)]
    assert not diffs, f"{len(diffs)} texts differ, e.g. {diffs[:3]!r}"
    assert steps > 1000
