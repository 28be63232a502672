"""HFTokenizer against open_clip's HFTokenizer (transformers) on small tokenizers built here, plus hub-cache loading."""
import json
import os
import random
import shutil

import pytest
from references import require
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from clipforge.tokenizer import HFTokenizer, create_tokenizer

WORDS = "a photo of the cat dog sitting on red blue car Street MAN woman, with in and 2 3 . ! ? café 東京 it's".split()


def _texts(n=300, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 30))) for _ in range(n)]


def _save(directory, tokenizer, config):
    os.makedirs(directory, exist_ok=True)
    tokenizer.save(os.path.join(directory, "tokenizer.json"))
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", **config}, f)
    return str(directory)


def _siglip_like(directory, **config):
    """Sentencepiece-style unigram model that appends </s>, as SigLIP's T5 tokenizer does."""
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(_texts(500, seed=1), trainers.UnigramTrainer(
        vocab_size=200, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return _save(directory, tok, {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>", **config})


def _bert_like(directory):
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(_texts(500, seed=2), trainers.WordPieceTrainer(
        vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return _save(directory, tok, {"pad_token": "[PAD]", "sep_token": "[SEP]", "cls_token": "[CLS]", "unk_token": "[UNK]"})


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    return _siglip_like(tmp_path_factory.mktemp("siglip"))


@pytest.fixture(scope="module")
def reference_cls():
    require("transformers")
    return require("open_clip.tokenizer").HFTokenizer


@pytest.mark.parametrize("clean", ["canonicalize", "whitespace", "lower"])
@pytest.mark.parametrize("context_length", [8, 64])
def test_ids_match_open_clip_hf_tokenizer(siglip_dir, reference_cls, clean, context_length):
    texts = _texts() + ["", "  ", "&amp; &lt;b&gt;", "cafÃ©", "x" * 300]
    ours = create_tokenizer(siglip_dir, context_length=context_length, clean=clean, local_files_only=True)
    theirs = reference_cls(siglip_dir, context_length=context_length, clean=clean)
    a, b = ours(texts), theirs(texts)
    assert a.shape == (len(texts), context_length) and a.dtype == torch.long
    assert torch.equal(a, b)
    assert (a[:, -1] == 1).sum() > 0  # some rows are truncated with </s> kept last


def test_strip_sep_token_and_left_padding_match(tmp_path, reference_cls):
    bert = _bert_like(tmp_path / "bert")
    texts = _texts(100, seed=3)
    ours = HFTokenizer(bert, context_length=16, strip_sep_token=True, local_files_only=True)
    assert torch.equal(ours(texts), reference_cls(bert, context_length=16, strip_sep_token=True)(texts))
    assert not (ours(texts) == ours.sep_token_id).any()
    left = _siglip_like(tmp_path / "left", padding_side="left")
    ours_left = HFTokenizer(left, context_length=20, local_files_only=True)
    a = ours_left(texts)
    assert torch.equal(a, reference_cls(left, context_length=20)(texts))
    assert (a[:, 0] == ours_left.pad_token_id).any()


def test_bert_tokenizer_without_declared_specials_gets_transformers_class_defaults(tmp_path, reference_cls):
    """bert-base-uncased (CLIPA's text tokenizer) names neither its pad nor its separator token: transformers takes
    them from BertTokenizer's defaults, chosen through the model config's model_type; so does clipforge."""
    source = _bert_like(tmp_path / "src")
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "tokenizer.json").write_bytes((tmp_path / "src" / "tokenizer.json").read_bytes())
    (bert / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "model_max_length": 512}))
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 300}))
    texts = _texts(100, seed=4)
    ours = HFTokenizer(str(bert), context_length=16, strip_sep_token=True, local_files_only=True)
    assert (ours.pad_token, ours.sep_token) == ("[PAD]", "[SEP]") and source
    assert torch.equal(ours(texts), reference_cls(str(bert), context_length=16, strip_sep_token=True)(texts))
    (bert / "config.json").unlink()  # nothing names the family: the error says what to add
    with pytest.raises(ValueError, match="no pad token"):
        HFTokenizer(str(bert), local_files_only=True)


def test_call_length_override_encode_and_decode(siglip_dir):
    tok = HFTokenizer(siglip_dir, context_length=8, clean="canonicalize", local_files_only=True)
    assert tok(["a cat"], context_length=12).shape == (1, 12)
    assert tok("a cat").shape == (1, 8)
    ids = tok.encode("A Cat!")
    assert ids and 1 not in ids  # no </s>
    assert tok.decode(tok("A Cat!")[0]) == "a cat"


def _hub_cache(root, repo_id, source_dir):
    """The huggingface_hub cache layout (refs/main -> snapshots/<commit>/files), as a download leaves it."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for name in os.listdir(source_dir):
        shutil.copy(os.path.join(source_dir, name), snapshot / name)
    return str(root)


def test_loads_offline_from_the_hub_cache(tmp_path, siglip_dir):
    cache = _hub_cache(tmp_path / "hub", "org/tiny-siglip", siglip_dir)
    texts = _texts(50)
    from_dir = create_tokenizer(siglip_dir, clean="canonicalize", local_files_only=True)(texts)
    for name in ("org/tiny-siglip", "hf-hub:org/tiny-siglip"):
        tok = create_tokenizer(name, clean="canonicalize", cache_dir=cache, local_files_only=True)
        assert torch.equal(tok(texts), from_dir)


def test_missing_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json of tokenizer repo 'org/absent'.*local_files_only"):
        create_tokenizer("org/absent", cache_dir=str(tmp_path), local_files_only=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"holds no tokenizer\.json"):
        create_tokenizer(str(tmp_path / "empty"))


def test_missing_pad_token_and_too_long_context(tmp_path, siglip_dir):
    tok = Tokenizer.from_file(os.path.join(siglip_dir, "tokenizer.json"))
    no_pad = _save(tmp_path / "nopad", tok, {"eos_token": "</s>"})
    with pytest.raises(ValueError, match="no pad token"):
        HFTokenizer(no_pad, local_files_only=True)
    with pytest.raises(ValueError, match=r"context_length 65 .* positional embedding \(64 positions\)"):
        create_tokenizer(siglip_dir, context_length=65, max_context_length=64)
    tok64 = create_tokenizer(siglip_dir, max_context_length=64)
    with pytest.raises(ValueError, match="context_length <= 64"):
        tok64(["a cat"], context_length=100)
