"""The batched stream path with texts that need repair: cleaned once, remembered, and joined to the stream."""
import random

import pytest
import torch
from references import require

from clipforge.tokenizer import ClipTokenizer, bpe
from clipforge.tokenizer import clean

# Texts each of which needs repair (entities, mojibake, quotes, widths, controls, line breaks), with long documents.
_REPAIRS = ["&amp;", "&quot;hi&quot;", "cafÃ©", "itâ€™s", "\u201cquoted\u201d", "&#39;s", "ＦＵＬＬ", "ﬁne", "x\r\ny",
            "Ã¼ber", "â€œquotedâ€\x9d", "&#1;", "ctrl\x01char", "&lt;b&gt;", "<p>&amp;</p>", "ΟΔΟΣ &amp; ΣΟΦΙΑΣ",
            "İstanbul &nbsp;", "\u2028", "e\u0301"]
_PLAIN = ["a photo of", "Zürich", "東京の夜景", "dog", "CAT", "qqzzyx", "😀", "ΣΑΣ", "x,y", "2019", "<end_of_text>"]


def _texts(seed: int, n: int = 600) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = [rng.choice(_PLAIN + _REPAIRS) for _ in range(rng.randint(1, 8))]
        text = rng.choice([" ", "  ", "\n", "\t"]).join(parts)
        if rng.random() < 0.15:
            text = "\n".join([text] * rng.randint(10, 40))  # a document far past the context
        out.append(text)
    return out


@pytest.mark.parametrize("mode", ["lower", "whitespace"])
def test_repaired_texts_in_the_stream_match_open_clip_cold_and_warm(mode):
    open_clip_tokenizer = require("open_clip.tokenizer")
    reference = open_clip_tokenizer.SimpleTokenizer(clean=mode)
    texts = _texts(1)
    assert sum(not ok for ok in clean.fast_path_flags(texts)) > len(texts) // 2
    tok = ClipTokenizer(clean=mode)
    expected = reference(texts)
    assert torch.equal(tok(texts), expected)  # cold: every repaired text cleaned here
    assert torch.equal(tok(texts), expected)  # warm: every repaired text from the cache
    for context_length in (2, 5, 40):
        assert torch.equal(tok(texts, context_length=context_length), reference(texts, context_length=context_length))


def test_cleaned_text_cache_stays_bounded_and_exact(monkeypatch):
    open_clip_tokenizer = require("open_clip.tokenizer")
    monkeypatch.setattr(bpe, "_CLEANED_CHARS_LIMIT", 5_000)
    reference = open_clip_tokenizer.SimpleTokenizer()
    tok = ClipTokenizer()
    for seed in range(4):
        texts = _texts(10 + seed, 200)
        assert torch.equal(tok(texts), reference(texts))
        assert tok._cleaned_chars <= 5_000 + max(map(len, texts)) * 2


def test_texts_whose_stand_in_is_refused_take_the_per_text_path(monkeypatch):
    open_clip_tokenizer = require("open_clip.tokenizer")
    reference = open_clip_tokenizer.SimpleTokenizer()
    texts = _texts(2, 100)
    real = ClipTokenizer._stream_text
    refused = []

    def refuse_some(self, text, max_chunks):  # as when a cleaned text holds the separator
        if len(refused) % 2 == 0 and "&" in text:
            refused.append(text)
            return None
        refused.append(None)
        return real(self, text, max_chunks)

    monkeypatch.setattr(ClipTokenizer, "_stream_text", refuse_some)
    assert torch.equal(ClipTokenizer()(texts), reference(texts))
    assert any(refused)


def test_one_caption_per_call_matches_open_clip(corpus, reference):
    """The single-caption path (``_encode_one``) on a fresh tokenizer, as a dataset calls it, at two lengths."""
    tok = ClipTokenizer()
    subset = corpus[::7]
    ours = torch.cat([tok(text) for text in subset])
    assert torch.equal(ours, reference(subset))
    assert torch.equal(torch.cat([tok(text, context_length=9) for text in subset]), reference(subset, 9))
    assert torch.equal(tok(subset[0]), tok([subset[0]]))  # the same row as a one-text list


def test_one_caption_per_call_stays_exact_when_caches_reset(monkeypatch, reference):
    tok = ClipTokenizer()
    monkeypatch.setattr(bpe, "_CACHE_LIMIT", len(tok._seed_word_table) + 40)
    texts = _texts(3, 300)
    ours = torch.cat([tok(text) for text in texts])
    assert torch.equal(ours, reference(texts))
    assert len(tok._words) <= bpe._CACHE_LIMIT + 20 and len(tok._chunk_ids) <= bpe._CACHE_LIMIT
