"""Public surface of clipforge.tokenizer: construction, shapes, bad input, context limits, package data."""
import os

import pytest
import torch

from clipforge.tokenizer import ClipTokenizer, create_tokenizer
from clipforge.tokenizer.bpe import VOCAB_FILE, default_vocab_path


def test_vocabulary_ships_as_package_data():
    path = default_vocab_path()
    assert os.path.basename(path) == VOCAB_FILE and os.path.getsize(path) > 1_000_000


def test_create_clip_tokenizer_defaults(clip_tokenizer):
    tok = create_tokenizer()
    assert isinstance(tok, ClipTokenizer)
    assert (tok.vocab_size, tok.context_length, tok.sot_token_id, tok.eot_token_id) == (49408, 77, 49406, 49407)
    out = tok("a photo of a cat")
    assert out.shape == (1, 77) and out.dtype == torch.long
    assert out[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407] and not out[0, 7:].any()
    assert tok(("a", "b")).shape == (2, 77) and tok([]).shape == (0, 77)


@pytest.mark.parametrize("bad", [None, 3, 2.5, ["ok", 4], [["nested"]], {"a": 1}])
def test_bad_input_says_what_is_accepted(clip_tokenizer, bad):
    with pytest.raises(TypeError, match="str or a list/tuple of str"):
        clip_tokenizer(bad)


@pytest.mark.parametrize("bad", [b"bytes", [b"bytes"], bytearray(b"x")])
def test_bytes_are_rejected_with_a_decode_hint(clip_tokenizer, bad):
    with pytest.raises(TypeError, match=r"decode"):
        clip_tokenizer(bad)
    with pytest.raises(TypeError):
        clip_tokenizer.encode(bad)


def test_context_length_limits():
    tok = create_tokenizer("clip", context_length=32, max_context_length=77)
    assert tok("a cat").shape == (1, 32)
    assert tok("a cat", context_length=77).shape == (1, 77)
    with pytest.raises(ValueError, match=r"context_length 78 .*\(77 positions\).*<= 77"):
        tok("a cat", context_length=78)
    with pytest.raises(ValueError, match="context_length 100"):
        create_tokenizer("clip", context_length=100, max_context_length=77)
    with pytest.raises(ValueError, match="at least 2"):
        create_tokenizer("clip", context_length=1)
    with pytest.raises(TypeError, match="must be an int"):
        tok("a cat", context_length=7.5)
    unlimited = create_tokenizer("clip", context_length=200)
    assert unlimited("word " * 300).shape == (1, 200)


def test_clean_mode_and_kind_errors():
    with pytest.raises(ValueError, match="unknown clean mode"):
        create_tokenizer("clip", clean="upper")
    with pytest.raises(TypeError, match="kind must be"):
        create_tokenizer(None)
    assert create_tokenizer("clip", clean="whitespace")("A Cat")[0, 1].item() != \
        create_tokenizer("clip")("A Cat")[0, 1].item()


def test_decode_rejects_batches_and_unknown_ids(clip_tokenizer):
    batch = clip_tokenizer(["a", "b"])
    with pytest.raises(ValueError, match="1-D"):
        clip_tokenizer.decode(batch)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        clip_tokenizer.decode([49408])
    assert [clip_tokenizer.decode(row) for row in batch] == ["a", "b"]


def test_tokenizer_pickles_for_dataloader_workers():
    import pickle

    tok = ClipTokenizer(context_length=16)
    texts = ["a photo of a cat", "zqxjv unseen wordz", "café 😀"]
    expected = tok(texts)
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.context_length == 16 and torch.equal(clone(texts), expected)
