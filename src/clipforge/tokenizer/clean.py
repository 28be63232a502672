"""Caption cleaning, identical in output to open_clip's clean modes, without running ftfy on every caption.

open_clip cleans every caption with ``ftfy.fix_text`` (mojibake repair and friends), then unescapes HTML twice,
strips, and, depending on the mode, collapses whitespace, lower-cases or removes punctuation. ftfy costs about
130 us per caption, far more than the BPE itself, yet for nearly every caption it returns its input unchanged.

``needs_repair(text)`` is a cheap test that is False only when ``ftfy.fix_text(text) == text`` is certain, so the
repair runs only on the captions it can change. Why the test is sound, step by step through ``ftfy.fix_text``
(ftfy 6.x, default config):

* ``unescape_html`` rewrites only ``&...;`` entities: ``&`` is a trigger character.
* ``fix_encoding`` returns pure-ASCII text unchanged, and any other text unless ``ftfy.badness.is_bad`` finds a
  mojibake pattern in it: non-ASCII text is checked with ``is_bad`` itself, unless it holds none of the few
  hundred characters that every pattern of ``is_bad`` needs (Latin-1 letters, box drawing, some punctuation...).
* ``fix_c1_controls``, ``fix_latin_ligatures``, ``fix_character_width``, ``uncurl_quotes``, ``fix_line_breaks``,
  ``fix_surrogates``, ``remove_terminal_escapes`` and ``remove_control_chars`` each touch only a fixed set of
  characters. The trigger class is built from ftfy's own tables, so it follows ftfy if they change.
* NFC normalisation: checked with ``unicodedata.is_normalized``.
* ``fix_text`` fixes line by line, and ``is_bad`` on a whole text need not equal ``is_bad`` on each line, so a
  newline in non-ASCII text sends it to ftfy. ASCII text may keep its newlines: ftfy skips mojibake detection on
  ASCII lines, and without ``&`` nothing else depends on where the lines break.

When every step leaves the text unchanged on its first pass, ``fix_text`` returns it as is. The test suite checks
the claim on every Basic Multilingual Plane code point and on a 10,000-caption corpus.
"""
from __future__ import annotations

import html
import operator
import re
import string
import unicodedata
from bisect import bisect_right
from itertools import accumulate, compress

import ftfy
from ftfy import badness, chardata
from ftfy import fixes as ftfy_fixes
from ftfy.badness import is_bad

CLEAN_MODES = ("lower", "whitespace", "canonicalize")


def _char_class(codepoints) -> str:
    return "".join(re.escape(chr(c)) for c in sorted(codepoints))


def _quote_class(pattern: re.Pattern) -> str:
    # ftfy keeps its quote sets as one bracketed class, e.g. "[\u02bc\u2018-\u201b]"; reuse its body verbatim.
    body = pattern.pattern
    if not (body.startswith("[") and body.endswith("]")):
        raise ImportError(f"unexpected ftfy quote pattern {body!r}; clipforge's cleaning gate needs updating")
    return body[1:-1]


_ASCII_TRIGGERS = {ord("&"), ord("\r")} | {c for c in chardata.CONTROL_CHARS if c < 0x80}  # \r: line breaks
_ASCII_TRIGGER_RE = re.compile("[" + _char_class(_ASCII_TRIGGERS) + "]")
_UNICODE_TRIGGER_RE = re.compile(
    "["
    + _char_class(
        _ASCII_TRIGGERS
        | set(chardata.CONTROL_CHARS)
        | set(chardata.LIGATURES)
        | set(chardata.WIDTH_MAP)
        | set(range(0x80, 0xA0))  # C1 controls, NEXT LINE (0x85) among them
        | {ord("\r"), ord("\n"), 0x2028, 0x2029, 0x1B}
    )
    + _quote_class(chardata.SINGLE_QUOTE_RE)
    + _quote_class(chardata.DOUBLE_QUOTE_RE)
    + "\ud800-\udfff"
    + "]"
)


def _mojibake_chars() -> str:
    """Every character that ``ftfy.badness.BADNESS_RE`` names: its category classes, expanded over the Basic
    Multilingual Plane (where all of them lie), plus the characters it spells out literally or as escapes."""
    categories = re.compile("[" + "".join(badness.MOJIBAKE_CATEGORIES.values()) + "]")
    bmp = "".join(chr(c) for c in range(0x80, 0x10000) if not 0xD800 <= c <= 0xDFFF)
    chars = set(categories.findall(bmp))
    pattern = badness.BADNESS_RE.pattern
    chars.update(c for c in pattern if not c.isascii())
    chars.update(chr(int(h, 16)) for h in re.findall(r"\\x([0-9a-fA-F]{2})|\\u([0-9a-fA-F]{4})", pattern) for h in h if h)
    chars.update(unicodedata.lookup(name) for name in re.findall(r"\\N\{([^}]+)\}", pattern))
    return "".join(sorted(chars))


# Each alternative of BADNESS_RE has a part that only these characters can match (a category class or a literal),
# so a text without any of them is not "bad" and the costly regex can be skipped.
_MOJIBAKE_CHAR_RE = re.compile("[" + "".join(re.escape(c) for c in _mojibake_chars()) + "]")


def _badness_match_width() -> int | None:
    try:
        from re import _parser as sre_parse  # Python >= 3.11
    except ImportError:  # pragma: no cover
        import sre_parse
    try:
        return int(sre_parse.parse(badness.BADNESS_RE.pattern, badness.BADNESS_RE.flags).getwidth()[1])
    except Exception:  # pragma: no cover - an unparsable future pattern: fall back to searching whole texts
        return None


_BAD_WIDTH = _badness_match_width()  # longest match of BADNESS_RE (7 characters in ftfy 6.3)


def _looks_bad(text: str) -> bool:
    """``is_bad(text)``, searched only near the characters that every badness pattern needs.

    A match holds one of those characters and spans at most ``_BAD_WIDTH`` characters, so it lies inside the
    window around that character; the pattern has no lookaround or ``$``, and its ``^`` can only add matches at a
    window start, so the answer is never a false "not bad". Many such characters (Cyrillic or Greek text): one
    search of the whole text is cheaper.
    """
    positions = [m.start() for m in _MOJIBAKE_CHAR_RE.finditer(text)]
    if not positions:
        return False
    if _BAD_WIDTH is None or len(positions) > 4:
        return is_bad(text)
    width = _BAD_WIDTH
    return any(is_bad(text[max(0, i - width + 1):i + width]) for i in positions)


def needs_repair(text: str) -> bool:
    """False only when ``ftfy.fix_text(text)`` is certain to return ``text`` unchanged (see module docstring)."""
    if text.isascii():
        return _ASCII_TRIGGER_RE.search(text) is not None
    return (
        _UNICODE_TRIGGER_RE.search(text) is not None
        or not unicodedata.is_normalized("NFC", text)
        or _looks_bad(text)
    )


_ascii_trigger_but_amp = re.compile("[" + _char_class(_ASCII_TRIGGERS - {ord("&")}) + "]").search


def _repair_ascii_entities(text: str) -> str | None:
    """``ftfy.fix_text(text)`` for one-line ASCII text whose only trigger is ``&``, or None when that is not the case.

    On such text every pass of ftfy's fixing loop changes nothing but HTML entities (the other fixes find nothing in
    ASCII, and characters an entity turns into are never consumed later), unless an entity yields a non-ASCII or
    control character: then ftfy itself runs. ftfy disables unescaping for a line holding a literal ``<``, and a
    single line means one fixing loop. HTML entities are the most frequent repair in web captions, and this path
    costs a few microseconds instead of a few hundred.
    """
    if not text.isascii() or "\n" in text or _ascii_trigger_but_amp(text) is not None:
        return None
    if "<" in text:
        return text
    while True:
        fixed = ftfy_fixes.unescape_html(text)
        if fixed == text:
            break
        text = fixed
    return text if text.isascii() and _ascii_trigger_but_amp(text) is None else None


_FIXER_CONFIG = ftfy.TextFixerConfig()
# ftfy's character-level fixers, in the order of its fixing loop, after HTML unescaping and encoding repair.
_LOCAL_FIXERS = [getattr(ftfy_fixes, name) for name in (
    "fix_c1_controls", "fix_latin_ligatures", "fix_character_width", "uncurl_quotes", "fix_line_breaks",
    "fix_surrogates", "remove_terminal_escapes", "remove_control_chars") if getattr(_FIXER_CONFIG, name)]


def _repair_one_pass(text: str) -> str | None:
    """``ftfy.fix_text(text)`` for one-line text without mojibake or ``&``, or None when that is not the case.

    On such text the first pass of ftfy's fixing loop leaves it unchanged through HTML unescaping (no ``&``) and
    encoding repair (``is_bad`` is False), then applies the character-level fixers (curly quotes, full-width
    forms, ligatures, controls...) and NFC. Those are run here, with ftfy's own functions, in its order. When the
    result passes ``needs_repair``, the loop's second pass changes nothing and ftfy would return it; otherwise
    None, and ftfy itself runs. This skips ftfy's mojibake search, most of the cost of a repair.
    """
    if "&" in text or "\n" in text or len(text) > _FIXER_CONFIG.max_decode_length or _looks_bad(text):
        return None
    for fixer in _LOCAL_FIXERS:
        text = fixer(text)
    if _FIXER_CONFIG.normalization is not None:
        text = unicodedata.normalize(_FIXER_CONFIG.normalization, text)
    return None if needs_repair(text) or "\n" in text else text


def basic_clean(text: str) -> str:
    """Mojibake repair, HTML unescaped twice, outer whitespace stripped: open_clip's first cleaning stage."""
    if needs_repair(text):
        repaired = _repair_ascii_entities(text)
        if repaired is None:
            repaired = _repair_one_pass(text)
        text = ftfy.fix_text(text) if repaired is None else repaired
    if "&" in text:
        text = html.unescape(html.unescape(text))
    return text.strip()


def collapse_whitespace(text: str) -> str:
    return " ".join(text.split())


_PUNCTUATION_TABLE = str.maketrans("", "", string.punctuation)


def canonicalize(text: str) -> str:
    """SigLIP's prompt canonicalisation: underscores to spaces, ASCII punctuation removed, lower case."""
    text = text.replace("_", " ").translate(_PUNCTUATION_TABLE).lower()
    return collapse_whitespace(text)


_ascii_trigger = _ASCII_TRIGGER_RE.search


# The two common modes inline the ASCII case (no repair, nothing to unescape, split/join also strips): the function
# call overhead of the general path is a large share of a tokenizer call on short captions.
def clean_lower(text: str) -> str:
    if text.isascii() and _ascii_trigger(text) is None:
        return " ".join(text.split()).lower()
    return collapse_whitespace(basic_clean(text)).lower()


def clean_whitespace(text: str) -> str:
    if text.isascii() and _ascii_trigger(text) is None:
        return " ".join(text.split())
    return collapse_whitespace(basic_clean(text))


def clean_canonicalize(text: str) -> str:
    return canonicalize(basic_clean(text))


_CLEAN_FNS = {"lower": clean_lower, "whitespace": clean_whitespace, "canonicalize": clean_canonicalize}


def _lower_chunks(text: str) -> list[str]:
    if text.isascii() and _ascii_trigger(text) is None:
        return text.lower().split()
    return clean_lower(text).split(" ")


def _whitespace_chunks(text: str) -> list[str]:
    if text.isascii() and _ascii_trigger(text) is None:
        return text.split()
    return clean_whitespace(text).split(" ")


def _canonicalize_chunks(text: str) -> list[str]:
    return clean_canonicalize(text).split(" ")


_CHUNK_FNS = {"lower": _lower_chunks, "whitespace": _whitespace_chunks, "canonicalize": _canonicalize_chunks}


BULK_MODES = ("lower", "whitespace")  # the clean modes that bulk_chunks supports
SEPARATOR = "\x01"  # a control character: a text holding it needs repair, so it never reaches bulk_chunks


def fast_path_ok(text: str) -> bool:
    """True for text that needs no repair; it holds no ``&`` either, so it cleans by whitespace and case alone."""
    if text.isascii():
        return _ascii_trigger(text) is None
    return not needs_repair(text)


def fast_path_flags(texts: list[str]) -> list[bool]:
    """``[fast_path_ok(text) for text in texts]``, with one search for ASCII triggers over the whole batch.

    The texts are joined without a separator: a trigger match is a single character, so it lies inside one text,
    found from the cumulative text lengths. Non-ASCII texts (a minority) then get the full per-text test.
    """
    flags = [True] * len(texts)
    joined = "".join(texts)
    ends = list(accumulate(map(len, texts)))  # text i spans joined[ends[i - 1]:ends[i]]
    search = _ASCII_TRIGGER_RE.search
    match = search(joined)
    while match is not None:
        i = bisect_right(ends, match.start())
        flags[i] = False
        match = search(joined, ends[i])  # the rest of text i cannot change its flag
    if not joined.isascii():
        for i in compress(range(len(texts)), map(operator.not_, map(str.isascii, texts))):
            if flags[i]:
                flags[i] = not needs_repair(texts[i])
    return flags


def bulk_chunks(texts: list[str], mode: str) -> list[str] | None:
    """The space-separated chunks of every cleaned text in one stream, texts separated by a ``SEPARATOR`` chunk,
    for texts that are all ``fast_path_ok``; None for a mode without a fast path ("canonicalize").

    Equal to ``[SEPARATOR].join(clean_text(t, mode).split(" "))`` without the empty chunks, with three C-level
    string operations for the whole batch instead of a few per text. Lower-casing the joined string is the same as
    lower-casing each text: the one context rule of ``str.lower`` (final sigma) looks at neighbouring cased
    letters, and texts are joined with spaces around the separator.
    """
    if mode not in BULK_MODES:
        return None
    joined = f" {SEPARATOR} ".join(texts)
    return (joined.lower() if mode == "lower" else joined).split()


def get_chunk_fn(mode: str):
    """``text -> clean_text(text, mode).split(" ")``, without building the joined string on the common path.

    (An empty text gives ``[]`` or ``[""]``; both hold no words.)
    """
    get_clean_fn(mode)  # validates the mode
    return _CHUNK_FNS[mode]


def get_clean_fn(mode: str):
    """The cleaning function of open_clip's clean mode ``mode`` ("lower", "whitespace" or "canonicalize")."""
    if mode not in _CLEAN_FNS:
        raise ValueError(f"unknown clean mode {mode!r}; choose one of {', '.join(CLEAN_MODES)}")
    return _CLEAN_FNS[mode]


def clean_text(text: str, mode: str = "lower") -> str:
    """Clean one caption exactly as open_clip's clean mode ``mode`` does."""
    return get_clean_fn(mode)(text)
