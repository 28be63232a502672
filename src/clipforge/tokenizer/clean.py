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
* ``fix_text`` fixes line by line, and ``is_bad`` on a whole text need not equal ``is_bad`` on each line, so
  non-ASCII text with newlines is checked one line at a time, as ftfy does. Without ``&`` nothing else depends on
  where the lines break.

When every step leaves the text unchanged on its first pass, ``fix_text`` returns it as is. The test suite checks
the claim on every Basic Multilingual Plane code point and on a 10,000-caption corpus.

The captions the gate sends on go through ``fix_text`` below: ftfy's own loop and fixers, each step skipped where
it is the identity, so a caption with a curly quote or an HTML entity costs a few microseconds, and only mojibake
reaches ftfy's (costly) encoding repair.
"""
from __future__ import annotations

import functools
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


def _class_body(pattern: re.Pattern) -> str:
    # ftfy keeps its quote sets as one bracketed class, e.g. "[\u02bc\u2018-\u201b]"; reuse its body verbatim.
    body = pattern.pattern
    if not (body.startswith("[") and body.endswith("]")):
        raise ImportError(f"unexpected ftfy quote pattern {body!r}; clipforge's cleaning gate needs updating")
    return body[1:-1]


_ASCII_TRIGGERS = {ord("&"), ord("\r")} | {c for c in chardata.CONTROL_CHARS if c < 0x80}  # \r: line breaks
_ASCII_TRIGGER_RE = re.compile("[" + _char_class(_ASCII_TRIGGERS) + "]")


def _class_of(table) -> str:
    """A regex class body matching the characters a ``str.translate`` table changes (it maps code points)."""
    return _char_class(c for c, to in table.items() if to != c and to != chr(c))


# ftfy's character-level fixers, in the order of its fixing loop, each with a search that finds something whenever
# the fixer can change the text: its own regex, or the characters of its translation table.
_FIXER_GATES = {
    "fix_c1_controls": _class_body(chardata.C1_CONTROL_RE),
    "fix_latin_ligatures": _class_of(chardata.LIGATURES),
    "fix_character_width": _class_of(chardata.WIDTH_MAP),
    "uncurl_quotes": _class_body(chardata.SINGLE_QUOTE_RE) + _class_body(chardata.DOUBLE_QUOTE_RE),
    "fix_line_breaks": "\r\u2028\u2029\x85",
    "fix_surrogates": "\ud800-\udfff",
    "remove_terminal_escapes": "\x1b",  # ANSI_RE needs ESC
    "remove_control_chars": _class_of(chardata.CONTROL_CHARS),
}
# Everything that can make ftfy change a text outside mojibake and normalisation: HTML entities, line breaks, and
# every character one of the character-level fixers acts on.
_UNICODE_TRIGGER_RE = re.compile("[" + _char_class(_ASCII_TRIGGERS) + "".join(_FIXER_GATES.values()) + "]")


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


@functools.lru_cache(maxsize=1 << 16)
def _is_bad_span(span: str) -> bool:
    return is_bad(span)


def _looks_bad(text: str) -> bool:
    """``is_bad(text)``, searched only near the characters that every badness pattern needs.

    A match holds one of those characters and spans at most ``_BAD_WIDTH`` characters, so it lies inside the
    window around that character; the pattern has no lookaround or ``$``, and its ``^`` can only add matches at a
    window start, so the answer is never a false "not bad". Overlapping windows are merged into spans, and the
    answer for each span is remembered: captions repeat the same accented words, so most spans were seen before.
    """
    if _BAD_WIDTH is None:
        return is_bad(text)
    width, spans, start, end = _BAD_WIDTH, [], 0, None
    for match in _MOJIBAKE_CHAR_RE.finditer(text):
        i = match.start()
        if end is not None and i - width + 1 <= end:
            end = i + width  # overlaps the current span: extend it
            continue
        if end is not None:
            spans.append(text[start:end])
        start, end = max(0, i - width + 1), i + width
    if end is None:
        return False
    spans.append(text[start:end])
    return any(map(_is_bad_span, spans))


def needs_repair(text: str) -> bool:
    """False only when ``ftfy.fix_text(text)`` is certain to return ``text`` unchanged (see module docstring)."""
    if text.isascii():
        return _ASCII_TRIGGER_RE.search(text) is not None
    if _UNICODE_TRIGGER_RE.search(text) is not None or not unicodedata.is_normalized("NFC", text):
        return True
    if "\n" not in text:
        return _looks_bad(text)
    # ftfy looks for mojibake line by line, each line with its newline (see fix_text); NFC never joins across one.
    if len(text) > _FIXER_CONFIG.max_decode_length:
        return True
    return any(map(_looks_bad, _LINE_RE.findall(text)))


_LINE_RE = re.compile("[^\n]*\n|[^\n]+")  # ftfy's segments: each line with its newline


_FIXER_CONFIG = ftfy.TextFixerConfig()
_LOCAL_FIXERS = [(getattr(ftfy_fixes, name), re.compile("[" + gate + "]").search)
                 for name, gate in _FIXER_GATES.items() if getattr(_FIXER_CONFIG, name)]
_any_local_fix = re.compile("[" + "".join(
    gate for name, gate in _FIXER_GATES.items() if getattr(_FIXER_CONFIG, name)) + "]").search


_encoding_step = getattr(ftfy, "_fix_encoding_one_step_and_explain", None)
_ENCODING_CONFIG = ftfy.TextFixerConfig(explain=False)  # what ``ftfy.fix_encoding`` runs its steps with


def _fix_encoding(text: str) -> str:
    """``ftfy.fix_encoding(text)`` for a text ``is_bad`` finds mojibake in: ftfy's own repair step, repeated until
    it changes nothing, as ftfy's loop does.

    ftfy's step returns ASCII text and text ``is_bad`` rejects unchanged (its first check), so its loop ends as soon
    as the text is either. Checking that with ``_looks_bad`` (equal to ``is_bad``) before each further step saves
    ftfy's last step: a full ``is_bad`` scan of the repaired text, about half the cost of a typical repair.
    """
    if _encoding_step is None:  # pragma: no cover - a future ftfy without the step function: its whole loop
        return ftfy.fix_encoding(text)
    while True:
        fixed = _encoding_step(text, _ENCODING_CONFIG).text
        if fixed == text or fixed.isascii() or not _looks_bad(fixed):
            return fixed
        text = fixed


def _fix_pass(text: str, unescape: bool) -> str:
    """One pass of ftfy's fixing loop (``fix_and_explain``), each step run only when it can change the text.

    The steps are ftfy's own functions; a step is skipped only where it is the identity: HTML unescaping without
    ``&`` (its pattern starts with one), encoding repair on ASCII or on text ``is_bad`` rejects (its first check),
    a character fixer without any character its regex or table acts on, NFC on normalised text.
    """
    if unescape and "&" in text:
        text = ftfy_fixes.unescape_html(text)
    if _FIXER_CONFIG.fix_encoding and not text.isascii() and _looks_bad(text):
        text = _fix_encoding(text)
    if _any_local_fix(text) is not None:
        for fixer, can_change in _LOCAL_FIXERS:
            if can_change(text) is not None:
                text = fixer(text)
    normalization = _FIXER_CONFIG.normalization
    if normalization is not None and not unicodedata.is_normalized(normalization, text):
        text = unicodedata.normalize(normalization, text)
    return text


def fix_text(text: str) -> str:
    """``ftfy.fix_text(text)`` (default configuration), with the same segments, loop and steps, in a fraction of
    the time on text that needs little or no fixing.

    ftfy fixes line by line (each segment ends after a newline, or at ``max_decode_length``), turns HTML
    unescaping off for the rest of the text once a segment holds ``<``, and repeats a pass over each segment until
    it changes nothing. All of that is kept; only the steps that cannot change a segment are skipped.
    """
    unescape = _FIXER_CONFIG.unescape_html
    out = []
    pos, end, limit = 0, len(text), _FIXER_CONFIG.max_decode_length
    while pos < end:
        stop = text.find("\n", pos) + 1 or end
        stop = min(stop, pos + limit)
        segment = text[pos:stop]
        if unescape == "auto" and "<" in segment:
            unescape = False
        while True:
            fixed = _fix_pass(segment, unescape is not False)
            if fixed == segment:
                break
            segment = fixed
        out.append(segment)
        pos = stop
    return "".join(out)


def basic_clean(text: str, repair: bool | None = None) -> str:
    """Mojibake repair, HTML unescaped twice, outer whitespace stripped: open_clip's first cleaning stage.
    ``repair``: what ``needs_repair(text)`` gives, when the caller already knows it."""
    if needs_repair(text) if repair is None else repair:
        text = fix_text(text)
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


# Text that needs no repair (``fast_path_ok``) holds no "&" (a trigger), so its cleaning is whitespace and case
# alone, and its chunks are ``text.lower().split()``: no character gains or loses whitespace by lower-casing, and
# the one context rule of ``str.lower`` (final sigma) sees the same cased neighbours whatever the whitespace between
# words. The other texts are repaired without testing again whether they need it.
def _lower_chunks(text: str) -> list[str]:
    if fast_path_ok(text):
        return text.lower().split()
    return collapse_whitespace(basic_clean(text, repair=True)).lower().split(" ")


def _whitespace_chunks(text: str) -> list[str]:
    if fast_path_ok(text):
        return text.split()
    return collapse_whitespace(basic_clean(text, repair=True)).split(" ")


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


def bulk_chunks(texts: list[str], mode: str, max_chunks: int | None = None) -> list[str] | None:
    """The space-separated chunks of every cleaned text in one stream, texts separated by a ``SEPARATOR`` chunk,
    for texts that are all ``fast_path_ok``; None for a mode without a fast path ("canonicalize").

    Equal to ``[SEPARATOR].join(clean_text(t, mode).split(" "))`` without the empty chunks, with three C-level
    string operations for the whole batch instead of a few per text. Lower-casing the joined string is the same as
    lower-casing each text: the one context rule of ``str.lower`` (final sigma) looks at neighbouring cased
    letters, and texts are joined with spaces around the separator.

    With ``max_chunks``, a text keeps only its first ``max_chunks`` chunks: every chunk gives at least one id
    (no character that CLIP's pre-tokenizer skips as whitespace survives ``str.split``), so the ids that fit in a
    context of ``max_chunks`` come from those chunks alone. Long documents then cost what their kept part costs.
    """
    if mode not in BULK_MODES:
        return None
    if max_chunks is not None:
        longest = 2 * max_chunks  # more than max_chunks chunks take at least 2 * max_chunks + 1 characters
        texts = [text if len(text) <= longest else _first_chunks(text, max_chunks) for text in texts]
    joined = f" {SEPARATOR} ".join(texts)
    return (joined.lower() if mode == "lower" else joined).split()


def _first_chunks(text: str, count: int) -> str:
    chunks = text.split(None, count)
    return " ".join(chunks[:count]) if len(chunks) > count else text


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
