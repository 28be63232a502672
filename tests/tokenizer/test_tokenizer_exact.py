"""Id-for-id parity of ClipTokenizer with open_clip's SimpleTokenizer on a 12,000-caption hostile corpus."""
import pytest
from references import require
import torch

from clipforge.tokenizer import ClipTokenizer, clean_text
from tokenizer_corpus import FRAGMENTS


def _mismatches(corpus, ours, theirs):
    bad = (ours != theirs).any(dim=1).nonzero().flatten().tolist()
    return [(corpus[i], ours[i].tolist(), theirs[i].tolist()) for i in bad[:3]], len(bad)


def test_corpus_covers_every_category_and_is_large(corpus):
    assert len(corpus) >= 10_000
    assert "" in corpus and any(len(text) > 1000 for text in corpus)
    for marker in ["&amp;", "<b>", "Ã", "😀", "東京", "مرحبا", "नमस्ते", "  ", "\t", "\u201c", "é"]:
        assert any(marker in text for text in corpus), marker
    assert len(FRAGMENTS) >= 12


def test_ids_match_open_clip_on_every_caption(corpus, clip_tokenizer, reference):
    ours, theirs = clip_tokenizer(corpus), reference(corpus)
    assert ours.dtype == torch.long and ours.shape == (len(corpus), 77)
    examples, count = _mismatches(corpus, ours, theirs)
    assert count == 0, f"{count} captions differ, e.g. {examples}"
    # Long captions really are truncated, with eot in the last position.
    long_rows = (ours[:, -1] != 0).nonzero().flatten()
    assert len(long_rows) > 100 and (ours[long_rows, -1] == clip_tokenizer.eot_token_id).all()


@pytest.mark.parametrize("context_length", [2, 16, 200])
def test_other_context_lengths_match(context_length, corpus, clip_tokenizer, reference):
    subset = corpus[::10]
    ours = clip_tokenizer(subset, context_length=context_length)
    theirs = reference(subset, context_length=context_length)
    assert ours.shape == (len(subset), context_length)
    examples, count = _mismatches(subset, ours, theirs)
    assert count == 0, f"{count} captions differ, e.g. {examples}"


@pytest.mark.parametrize("mode", ["whitespace", "canonicalize"])
def test_other_clean_modes_match(mode, corpus):
    open_clip_tokenizer = require("open_clip.tokenizer")
    subset = corpus[1::10]
    ours = ClipTokenizer(clean=mode)(subset)
    theirs = open_clip_tokenizer.SimpleTokenizer(clean=mode)(subset)
    examples, count = _mismatches(subset, ours, theirs)
    assert count == 0, f"{count} captions differ, e.g. {examples}"


def test_encode_matches_and_has_no_specials(corpus, clip_tokenizer, reference):
    for text in corpus[:300]:
        assert clip_tokenizer.encode(text) == reference.encode(text)
    ids = clip_tokenizer.encode("a photo of a cat")
    assert ids and clip_tokenizer.sot_token_id not in ids and clip_tokenizer.eot_token_id not in ids


def test_word_cache_reset_keeps_results_exact(corpus, reference, monkeypatch):
    from clipforge.tokenizer import bpe

    monkeypatch.setattr(bpe, "_CACHE_LIMIT", 50)
    tok = ClipTokenizer()
    subset = corpus[:400]
    halves = torch.cat([tok(subset[:200]), tok(subset[200:])])
    second_half_words = {w for text in subset[200:] for w in bpe._WORD_RE.findall(clean_text(text))}
    # The caches were reset to their seeds (whole-word vocabulary entries), not grown past their limit.
    assert len(tok._words) <= len(tok._seed_word_table) + len(second_half_words)
    assert len(tok._table) <= len(tok._seed_chunk_table) + sum(len(text.split()) for text in subset[200:]) + 1
    assert torch.equal(halves, reference(subset))


def test_decode_roundtrip_and_open_clip_rendering(corpus, clip_tokenizer, reference):
    assert clip_tokenizer.decode(clip_tokenizer("A  Photo of  a CAT")[0]) == "a photo of a cat"
    assert clip_tokenizer.decode(clip_tokenizer("东京 café 😀")[0]) == "东京 café 😀"
    for text in corpus[:200]:
        ids = clip_tokenizer.encode(text)
        assert clip_tokenizer.decode(ids, skip_special_tokens=False) == reference.decode(ids)
    row = clip_tokenizer("a dog")[0]
    assert clip_tokenizer.decode(row, skip_special_tokens=False) == reference.decode(row.tolist())


def test_whole_word_vocabulary_entries_are_their_own_bpe():
    """The shortcut that skips BPE for whole-word tokens is exact for the shipped vocabulary: check every entry."""
    from clipforge.tokenizer import bpe

    path = bpe.default_vocab_path()
    trusted = bpe.whole_word_ids(path, verify=False)
    verified = bpe.whole_word_ids(path, verify=True)
    assert len(trusted) > 30_000 and trusted == verified


def test_batched_path_matches_per_text_path_on_case_and_script_edges(reference):
    texts = ["ΟΔΟΣ", "ΟΔΟΣ ΟΔΟΣ", "ΣΑΣ", "Σ", "ΑΣ.", "İSTANBUL", "ǅemal", "ﬁne", "ΑΣ", "", "東京 ΑΣ", "x\u0345Σ",
             "STRASSE ß", "ΌΣΟΣ 😀", "A\u00a0B", "tab\there"]
    tok = ClipTokenizer()
    batched = tok(texts)
    assert torch.equal(batched, reference(texts))
    for i, text in enumerate(texts):
        assert torch.equal(tok(text)[0], batched[i]), text


def _documents(corpus, count=400, seed=3):
    """Long multi-line documents glued from corpus captions: the cases where only the first lines and chunks
    are cleaned and encoded."""
    import random

    rng = random.Random(seed)
    return [rng.choice(["\n", "\n\n", " ", "\r\n", ". "]).join(rng.sample(corpus, rng.randint(2, 40)))
            for _ in range(count)]


@pytest.mark.parametrize("context_length", [16, 77])
def test_long_documents_match_in_batches_and_one_at_a_time(context_length, corpus, reference):
    documents = _documents(corpus)
    assert sum(len(doc) > 8 * context_length and "\n" in doc for doc in documents) > 200
    theirs = reference(documents, context_length=context_length)
    batch = ClipTokenizer()(documents, context_length=context_length)
    tok = ClipTokenizer()
    single = torch.cat([tok(doc, context_length=context_length) for doc in documents])
    for ours in (batch, single):
        examples, count = _mismatches(documents, ours, theirs)
        assert count == 0, f"{count} documents differ, e.g. {examples}"


def test_one_caption_at_a_time_matches(corpus, reference):
    tok = ClipTokenizer()
    subset = corpus[::7]
    ours = torch.cat([tok(text) for text in subset])
    examples, count = _mismatches(subset, ours, reference(subset))
    assert count == 0, f"{count} captions differ, e.g. {examples}"
