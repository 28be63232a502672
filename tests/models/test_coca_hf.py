"""CoCa with a Hugging Face text tower (open_clip's coca_roberta-ViT-B-32) against open_clip 3.3.0, built offline.

open_clip's HFTextEncoder with ``output_tokens`` gives the decoder the encoder's last hidden states at every position
(only its ``cls_pooler`` drops the first), and the decoder's vocabulary is ``text_cfg.vocab_size``, not the
encoder's. The encoder is bidirectional, so the state at a position has read the tokens after it too (open_clip's
teacher-forced logits included). Both sides get the same small RoBERTa config built locally (open_clip's
``AutoConfig.from_pretrained`` is patched to return it, as in test_hf_text.py), one state dict is loaded into both,
and image features, text features and the decoder's logits must agree to 1e-5 in fp32; greedy captions must equal
open_clip's top-k=1 decoding.
"""
import dataclasses

import pytest
from references import require
import torch

open_clip = require("open_clip")
transformers = require("transformers")

from clipforge.captioning import generate, generate_tokens  # noqa: E402
from clipforge.config import ConfigError  # noqa: E402
from clipforge.models import convert, hf_text, registry  # noqa: E402
from clipforge.models.coca import CoCa  # noqa: E402
from clipforge.models.loading import load_weights  # noqa: E402
from model_helpers import HF_STAND_INS, randomize_  # noqa: E402

TOL = 1e-5
VOCAB = 99  # the decoder's vocabulary (text_cfg.vocab_size) and the stand-in RoBERTa's
BOS, PAD, EOS = 0, 1, 2  # RoBERTa's <s>, <pad>, </s>


@pytest.fixture
def local_hub(monkeypatch):
    """open_clip's hub config lookup answered with small local configs ('local/<family>')."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def from_pretrained(name, *args, **kwargs):
        assert name.startswith("local/"), name
        return transformers.AutoConfig.for_model(**HF_STAND_INS[name[len("local/"):]])

    monkeypatch.setattr(open_clip.hf_model.AutoConfig, "from_pretrained", from_pretrained)


def _open_clip_cfg(pooler="mean_pooler", proj="linear", family="roberta") -> dict:
    """coca_roberta-ViT-B-32's form at reduced size: a class-token ViT whose patch tokens feed the decoder."""
    return {"embed_dim": 24,
            "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8,
                           "output_tokens": True},
            "text_cfg": {"hf_model_name": f"local/{family}", "hf_tokenizer_name": f"local/{family}",
                         "hf_pooler_type": pooler, "hf_proj_type": proj, "hf_model_pretrained": False,
                         "output_tokens": True, "vocab_size": VOCAB, "context_length": 16},
            "multimodal_cfg": {"context_length": 15, "width": 32, "heads": 4, "layers": 2}}


def _config(cfg: dict, family="roberta"):
    """clipforge's side of the same architecture, with the encoder's config given as a dict."""
    config = convert.config_from_open_clip(cfg)
    hf = dataclasses.replace(config.text.hf, model_config=dict(HF_STAND_INS[family]))
    return dataclasses.replace(config, text=dataclasses.replace(config.text, hf=hf))


def _reference(cfg: dict):
    reference = open_clip.coca_model.CoCa(**cfg).eval()
    projection = reference.text_decoder.text_projection
    with torch.no_grad():  # open_clip 3.3.0 leaves it as torch.empty (see test_coca.py)
        projection.normal_(std=projection.shape[0] ** -0.5)
    return randomize_(reference)


def _pair(cfg: dict):
    reference = _reference(cfg)
    config = _config(cfg)
    model = CoCa(config).eval()
    load_weights(model, reference.state_dict(), "open_clip")  # the loader's strict path
    # and back: clipforge's state dict loads strictly into open_clip
    reference.load_state_dict(convert.to_open_clip_state_dict(model.state_dict(), config), strict=True)
    return reference, model


def _inputs(batch=3, length=16):
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(3, VOCAB, (batch, length), generator=gen)
    tokens[:, 0] = BOS
    tokens[0, 9], tokens[0, 10:] = EOS, PAD  # padded rows, as the tokenizer writes them
    tokens[1, 4], tokens[1, 5:] = EOS, PAD
    tokens[2, -1] = EOS
    return torch.randn(batch, 3, 32, 32, generator=gen), tokens


@pytest.mark.parametrize("pooler, proj", [("mean_pooler", "linear"), ("cls_last_hidden_state_pooler", "mlp")])
def test_features_and_caption_logits_match_open_clip(local_hub, pooler, proj):
    reference, model = _pair(_open_clip_cfg(pooler, proj))
    images, tokens = _inputs()
    prefix = tokens[:, :6]
    with torch.no_grad():
        theirs = reference(images, tokens)
        ours = model(images, tokens, output_dict=True, with_captions=True)
        _, image_tokens = model.encode_image_tokens(images)
        pairs = [(model.encode_image(images, normalize=True), reference.encode_image(images, normalize=True)),
                 (model.encode_text(tokens, normalize=True), reference.encode_text(tokens, normalize=True)),
                 (ours["image_features"], theirs["image_features"]),
                 (ours["text_features"], theirs["text_features"]),
                 (ours["caption_logits"], theirs["logits"]),
                 # the encoder is bidirectional: open_clip's states for the first L-1 positions have read all L
                 (model.caption_logits(images, prefix)[:, :-1], reference(images, prefix)["logits"]),
                 # what open_clip's generate reads at each step
                 (model.next_token_logits(image_tokens, prefix),
                  reference(images, prefix, output_labels=False)["logits"][:, -1])]
    assert theirs["logits"].shape == (3, 15, VOCAB)
    for mine, ref in pairs:
        assert mine.shape == ref.shape
        assert (mine - ref).abs().max().item() <= TOL
    assert torch.equal(ours["caption_labels"], theirs["labels"])
    assert torch.allclose(ours["logit_scale"], theirs["logit_scale"])


def test_state_dict_keys_are_open_clips(local_hub):
    cfg = _open_clip_cfg()
    reference = open_clip.coca_model.CoCa(**cfg)
    config = _config(cfg)
    ours = CoCa(config).state_dict()
    converted = convert.convert_state_dict(reference.state_dict(), config)
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in ours.items()}
    back = convert.to_open_clip_state_dict(ours, config)
    assert {k: v.shape for k, v in back.items()} == {k: v.shape for k, v in reference.state_dict().items()}
    assert convert.detect_layout(reference.state_dict()) == "open_clip"
    assert convert.detect_layout(ours) == "clipforge"


def test_the_preset_is_open_clips_config():
    cfg = open_clip.get_model_config("coca_roberta-ViT-B-32")
    config = registry.get_architecture("coca_roberta-ViT-B-32")
    assert convert.config_from_open_clip(cfg) == config
    assert convert.config_from_open_clip(convert.config_to_open_clip(config)) == config
    assert (config.text.kind, config.text.hf.model_name, config.text.hf.pool, config.text.hf.proj) == \
        ("hf", "roberta-base", "mean", "linear")
    assert config.open_clip_class == "CoCa" and config.tokenizer == "roberta-base"
    assert config.vision.pool == "token" and config.decoder.width == config.vision.width == 768
    assert config.decoder.vocab_size == 49408  # open_clip's text_cfg default, not RoBERTa's 50265


def test_cls_pooler_and_width_mismatch_are_one_line(local_hub):
    with pytest.raises(ConfigError, match="text.hf.pool") as info:
        convert.config_from_open_clip(_open_clip_cfg("cls_pooler"))
    assert "\n" not in str(info.value)
    config = _config(_open_clip_cfg())
    wide = dataclasses.replace(config, decoder=dataclasses.replace(config.decoder, width=48),
                               vision=dataclasses.replace(config.vision, width=48, num_heads=3))
    with pytest.raises(ConfigError, match="decoder.width 48") as info:
        CoCa(wide)
    assert "hidden size" in str(info.value) and "\n" not in str(info.value)


def test_offline_without_the_hub_config_is_one_line(monkeypatch, tmp_path):
    """The published name alone needs roberta-base's config.json: offline and uncached, the usual one-line error
    (the zoo table's stand-ins are never used outside tools/make_zoo_table.py)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hf_text._download, "_cached_hub_file", lambda *a, **k: None)
    hf_text._hub_config.cache_clear()
    with pytest.raises(hf_text.HFConfigUnavailable) as info:
        with torch.device("meta"):
            CoCa(registry.get_architecture("coca_roberta-ViT-B-32"))
    message = str(info.value)
    assert "'roberta-base'" in message and "offline" in message and "\n" not in message


class _IdTokenizer:
    """Only decodes: a CoCa with a Hugging Face text tower takes its start / end ids from the encoder's config."""

    def decode(self, ids):
        return " ".join(map(str, ids))


def _open_clip_generate():
    """open_clip's top-k path without BeamSearchScorer (removed in transformers 5; see tests/captioning)."""
    import open_clip.coca_model as coca_model

    coca_model._has_transformers = True
    coca_model.GENERATION_TYPES.update(top_k=transformers.TopKLogitsWarper, top_p=transformers.TopPLogitsWarper)
    return coca_model


def test_greedy_captions_match_open_clip(local_hub):
    _open_clip_generate()
    reference, model = _pair(_open_clip_cfg())
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    theirs = reference.generate(images, generation_type="top_k", top_k=1, seq_len=12, min_seq_len=3,
                                sot_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
    ours = generate_tokens(model, images, tokenizer=_IdTokenizer(), method="greedy", max_length=12, min_length=3)
    assert len(ours) == 4
    for row, mine in zip(theirs.tolist(), ours):
        assert row[0] == BOS
        body = row[1:]
        end = min((i for i, t in enumerate(body) if t in (EOS, PAD)), default=len(body))
        assert mine == body[:end]
    captions = generate(model, images[:2], tokenizer=_IdTokenizer(), method="beam", num_beams=3, max_length=8)
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)


def test_captioning_without_a_start_token_is_one_line(local_hub):
    """mT5's config has no bos_token_id: no start token to decode from."""
    model = CoCa(_config(_open_clip_cfg(family="mt5"), family="mt5")).eval()
    with pytest.raises(ValueError, match="bos_token_id") as info:
        generate_tokens(model, torch.randn(1, 3, 32, 32), tokenizer=_IdTokenizer(), method="greedy", max_length=6)
    assert "\n" not in str(info.value)
