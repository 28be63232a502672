"""The flat id tables and the one-call Rust BPE behind the batched path."""
import numpy as np
import pytest
import torch

from clipforge.tokenizer import ClipTokenizer, bpe
from clipforge.tokenizer._idtable import IdTable


def test_id_table_round_trips_and_copies_independently():
    table = IdTable.from_dict({"a": (1, 2), "sep": (9,), "b": ()}, reserved="sep")
    assert table.index["sep"] == 0 and len(table) == 3
    table.extend(["c", "d"], np.array([1, 3]), np.array([5, 6, 7, 8]))
    ids, lengths = table.gather(table.rows(["d", "sep", "a", "b", "c"]))
    assert ids.tolist() == [6, 7, 8, 1, 2, 5] and lengths.tolist() == [3, 0, 2, 0, 1]
    clone = table.copy()
    clone.extend(["e"], np.array([1]), np.array([4]))
    assert "e" not in table.index and clone.gather(clone.rows(["e", "a"]))[0].tolist() == [4, 1, 2]
    with pytest.raises(KeyError):
        table.rows(["missing"])
    with pytest.raises(ValueError, match="ids in all"):
        table.extend(["f"], np.array([2]), np.array([1]))


def test_one_rust_call_equals_word_by_word_bpe():
    tok = ClipTokenizer()
    vocab, merges = bpe.load_vocab(bpe.default_vocab_path())
    single = bpe._rust_bpe(vocab, merges)
    words = ["photographybeautiful", "<start_of_text>", "caf\u00e9", "<end_of_text>", "\u6771\u4eac", "!!",
             "<START_OF_TEXT>", "9", "'s", "\U0001f600", "xqzzy", "<", "_of_", "\u0928\u092e\u0938\u094d"]
    lengths, ids = tok._bpe_words(words)
    expected = [[tok.sot_token_id] if w == "<start_of_text>" else [tok.eot_token_id] if w == "<end_of_text>"
                else single.encode(w, add_special_tokens=False).ids for w in words]
    assert lengths.tolist() == [len(e) for e in expected]
    assert ids.tolist() == [i for e in expected for i in e]


@pytest.mark.parametrize("texts", [
    ["say <start_of_text> and <end_of_text>!", "<START_OF_TEXT> twice<end_of_text>x", "x<start_of_text>"],
    ["\u201cquoted <end_of_text>\u201d", "caf\u00c3\u00a9 <start_of_text>", "a\u00a0b 2019 zzqxwv, ok"],
])
def test_special_tokens_quoted_in_captions_match_open_clip(texts, reference):
    tok = ClipTokenizer()
    assert torch.equal(tok(texts), reference(texts))
    assert [tok.encode(text) for text in texts] == [reference.encode(text) for text in texts]


def test_fresh_tokenizers_start_from_the_seed_only():
    first = ClipTokenizer()
    first(["zzqxwv blorfgle, a photo"] * 16)  # a batch: the stream path and its chunk table
    first("qqzzvv, flurbo")  # one caption: the per-text path and its chunk dict
    assert "zzqxwv" in first._words.index and "blorfgle," in first._table.index
    assert "qqzzvv" in first._words.index and "qqzzvv," in first._chunk_ids
    second = ClipTokenizer()
    assert "zzqxwv" not in second._words.index and "blorfgle," not in second._table.index
    assert "qqzzvv" not in second._words.index and "qqzzvv," not in second._chunk_ids
    assert len(second._table) == len(second._seed_chunk_table) and "photo" in second._table.index


def test_pack_into_truncates_each_group_and_counts_all_ids():
    table = IdTable.from_dict({"sep": (), "a": (1, 2, 3), "b": (4,), "c": (5, 6)}, reserved="sep")
    rows = table.rows(["a", "b", "sep", "sep", "c", "a", "b", "sep", "b"])
    groups = np.cumsum(rows == 0)  # the separator row starts a new group
    out = np.full((4, 5), -1, dtype=np.int64)
    counts = table.pack_into(out, rows, groups, 1, 3)
    assert counts.tolist() == [4, 0, 6, 1]
    assert out.tolist() == [[-1, 1, 2, 3, -1], [-1] * 5, [-1, 5, 6, 1, -1], [-1, 4, -1, -1, -1]]
    with pytest.raises(ValueError, match="C-contiguous"):
        table.pack_into(np.zeros((5, 4), dtype=np.int64).T, rows, groups, 0, 2)


def test_stream_learns_across_batches_and_resets_exactly(corpus, reference, monkeypatch):
    tok = ClipTokenizer()
    # Above the new chunks of any one batch (repaired texts join the stream too), below those of all of them.
    monkeypatch.setattr(bpe, "_CACHE_LIMIT", len(tok._seed_chunk_table) + 600)
    sizes = []
    for start in range(0, 1200, 150):
        batch = corpus[start:start + 150] + corpus[:20]  # chunks seen in an earlier batch, too
        assert torch.equal(tok(batch), reference(batch))
        sizes.append(len(tok._table))
    assert max(sizes) <= bpe._CACHE_LIMIT
    assert any(b > a for a, b in zip(sizes, sizes[1:])), sizes  # grew, keeping what it had learned
    assert any(b < a for a, b in zip(sizes, sizes[1:])), sizes  # and was reset to the seed when full
