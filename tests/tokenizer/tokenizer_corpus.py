"""A deterministic corpus of hostile captions for tokenizer parity tests.

Each category targets one stage of the reference pipeline (ftfy repair, HTML unescaping, whitespace, case,
the pre-tokenizer regex, byte-level BPE, truncation). ``make_corpus`` mixes them, and also glues fragments of
different categories together so that scripts and repairs meet inside one caption.
"""
from __future__ import annotations

import random

SUBJECTS = ["a dog", "two cats", "the Eiffel Tower", "an old man", "a red car", "my grandmother", "a bowl of soup",
            "three kids", "a mountain lake", "the skyline of New York", "an astronaut", "a wooden chair"]
VERBS = ["sitting on", "running through", "next to", "painted on", "flying over", "hiding under", "made of"]
OBJECTS = ["the beach", "a snowy field", "a kitchen table", "the moon", "a busy street", "some grass", "a boat"]
STYLES = ["photo of", "painting of", "close-up of", "blurry picture of", "sketch of", "3D render of"]
PUNCT = ["!", "?", "...", "--", ";", ":", "(", ")", "[x]", "{y}", "#tag", "@user", "$9.99", "50%", "a/b", "*",
         "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "''", "\"quoted\"", "_under_score_", "~~", "^", "|", "\\"]
ACCENTED = ["café", "naïve", "Zürich", "São Paulo", "crème brûlée", "Ångström", "façade", "jalapeño", "Łódź",
            "Dvořák", "İstanbul", "straße", "ÉCOLE", "cafe\u0301", "Øresund", "Þórr", "ǅemal", "ﬁne ﬂour"]
EMOJI = ["😀", "🐶🐱", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷", "❤️", "🎉🎉🎉", "☕", "🧑🏿‍🚀", "✔", "©", "™", "🏳️‍🌈"]
CJK = ["東京の夜景", "一只猫坐在桌子上", "서울의 거리", "カタカナ", "ひらがな", "漢字テスト", "ＦＵＬＬ ｗｉｄｔｈ",
       "半角ｶﾀｶﾅ", "中文，标点。", "「引用」", "𠀋𡈽 rare ideographs"]
SCRIPTS = ["مرحبا بالعالم", "القطة على الطاولة", "नमस्ते दुनिया", "एक कुत्ता घास पर", "Привет мир", "Ελληνικά",
           "שלום עולם", "สวัสดีครับ", "ქართული", "አማርኛ", "தமிழ்", "ছবি", "Tiếng Việt có dấu"]
HTML = ["&amp;", "&lt;b&gt;bold&lt;/b&gt;", "&#39;", "&#x27;", "&quot;hi&quot;", "&nbsp;", "&amp;amp;", "&amp;lt;",
        "&amp;amp;amp;", "<b>bold</b>", "<br/>", "<a href=\"x.html\">link</a>", "&copy; 2020", "&eacute;t&eacute;",
        "&hellip;", "&#8217;", "&#x1F600;", "&notanentity;", "& loose", "AT&T", "&LT;", "&EACUTE;", "<p>&amp;</p>"]
STRANGE = ["\u201ccurly\u201d", "\u2018single\u2019", "it\u2019s", "\x1b[31mred\x1b[0m", "ctrl\x00char", "bell\x07",
           "c1\x85line", "c1\x80\x9f", "bom\ufeff", "soft\u00adhyphen", "zero\u200bwidth", "nbsp\u00a0here",
           "ideo\u3000space", "line\u2028sep", "para\u2029sep", "tab\there", "cr\rlf\r\n", "\x1c\x1d\x1e\x1f",
           "vt\x0bff\x0c", "lone\ud800surrogate", "pair\ud83d\ude00", "\ufff9anchor", "del\x7f", "\u0130\u0131",
           "ſ's long s", "K\u212a kelvin", "<start_of_text>", "<END_OF_TEXT>", "a<end_of_text>b", "x'<start_of_text>"]
WHITESPACE = ["   ", "\t\t", "\n\n", " \u00a0 ", "\u3000", "\r\n", "\u2003\u2009", "\x0b", "\u200b"]


def _caption(rng: random.Random) -> str:
    text = f"{rng.choice(STYLES)} {rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}"
    return text.capitalize() if rng.random() < 0.5 else text.upper() if rng.random() < 0.1 else text


def _mojibake(rng: random.Random, text: str) -> str:
    encoding = rng.choice(["latin-1", "cp1252", "cp1252", "cp1251", "mac_roman", "cp437"])
    return text.encode("utf-8").decode(encoding, errors="replace")


def _number(rng: random.Random) -> str:
    return rng.choice([str(rng.randint(0, 10**rng.randint(1, 12))), f"{rng.random() * 1000:.3f}",
                       f"{rng.randint(1, 12)}/{rng.randint(1, 28)}/19{rng.randint(10, 99)}", "٣٤٥", "१२३", "½", "²",
                       "Ⅻ", "①", "1,000,000", "-42", "+3.5e-10", "0x1F"])


def _random_unicode(rng: random.Random) -> str:
    chars = []
    for _ in range(rng.randint(1, 12)):
        plane = rng.random()
        cp = rng.randint(0x20, 0x7FF) if plane < 0.4 else rng.randint(0x800, 0xFFFF) if plane < 0.9 \
            else rng.randint(0x10000, 0x10FFFF)
        chars.append(chr(cp))
    return "".join(chars)


FRAGMENTS = {
    "plain": _caption,
    "punct": lambda rng: rng.choice(PUNCT) + _caption(rng) + rng.choice(PUNCT),
    "number": lambda rng: f"{_number(rng)} {rng.choice(SUBJECTS)}",
    "accent": lambda rng: rng.choice(ACCENTED),
    "emoji": lambda rng: rng.choice(EMOJI),
    "cjk": lambda rng: rng.choice(CJK),
    "script": lambda rng: rng.choice(SCRIPTS),
    "html": lambda rng: rng.choice(HTML),
    "mojibake": lambda rng: _mojibake(rng, rng.choice(ACCENTED + EMOJI + CJK + SCRIPTS + ["“quotes”", "it’s"])),
    "strange": lambda rng: rng.choice(STRANGE),
    "whitespace": lambda rng: rng.choice(WHITESPACE),
    "unicode": _random_unicode,
}


def make_corpus(n: int = 12_000, seed: int = 1234) -> list[str]:
    """``n`` captions: one category at a time, mixes of categories, empties and captions far past 77 tokens."""
    rng = random.Random(seed)
    names = sorted(FRAGMENTS)
    corpus = ["", " ", "\t\n", "&amp;", "<start_of_text>", "a" * 500, "ab" * 300 + " " + "é" * 200]
    while len(corpus) < n:
        kind = rng.random()
        if kind < 0.45:  # one category
            text = FRAGMENTS[names[len(corpus) % len(names)]](rng)
        elif kind < 0.9:  # several categories glued with varied separators
            parts = [FRAGMENTS[rng.choice(names)](rng) for _ in range(rng.randint(2, 6))]
            text = "".join(p + rng.choice([" ", "", "  ", "\t", ", ", "\n"]) for p in parts)
        else:  # far longer than the context
            text = " ".join(FRAGMENTS[rng.choice(names)](rng) for _ in range(rng.randint(20, 60)))
        corpus.append(text)
    return corpus
