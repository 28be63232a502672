"""CoCa: the same features and caption logits as open_clip on the same random weights, strict loading of open_clip
state dicts, the hub layout, the published tags, and one-line errors for weights or configs that do not fit."""
import json

import pytest
from references import require
import torch

open_clip = require("open_clip")

from clipforge.config import ConfigError, apply_overrides  # noqa: E402
from clipforge.models.coca import CoCa, build_model  # noqa: E402
from clipforge.models.convert import (config_from_open_clip, config_to_open_clip, convert_state_dict,  # noqa: E402
                                      expected_shapes, to_open_clip_state_dict)
from clipforge.models.factory import ModelLoadError, create_model, get_tokenizer, save_pretrained  # noqa: E402
from clipforge.models.registry import get_architecture  # noqa: E402
from clipforge.models.weights import get_weight_entry, list_pretrained  # noqa: E402
from model_helpers import randomize_  # noqa: E402

TOL = 1e-5


def init_decoder_projection_(reference):
    """open_clip 3.3.0 leaves its decoder's vocabulary projection as ``torch.empty`` (``MultimodalTransformer`` never
    runs its init_parameters): whatever memory held, sometimes 1e30 or NaN. Give it values before comparing."""
    projection = reference.text_decoder.text_projection
    with torch.no_grad():
        projection.normal_(std=projection.shape[0] ** -0.5)
    return reference


def _reference(config, vectors_only=False):
    cfg = config_to_open_clip(config)
    cfg.pop("custom_text")
    reference = init_decoder_projection_(open_clip.coca_model.CoCa(**cfg).eval())
    return randomize_(reference, vectors_only=vectors_only)


def _ours(reference, config) -> CoCa:
    with torch.device("meta"):
        model = build_model(config).eval()
    model.load_state_dict(convert_state_dict(reference.state_dict(), config), assign=True, strict=True)
    return model


def _inputs(config, batch=2):
    size = config.vision.image_size
    tokens = torch.randint(1, config.text.vocab_size, (batch, config.text.context_length))
    tokens[:, 0] = 49406
    tokens[0, -4:] = 0  # padding: open_clip masks keys after it (shifted by one)
    return torch.randn(batch, 3, size, size), tokens


def _assert_parity(reference, model, config):
    images, tokens = _inputs(config)
    with torch.no_grad():
        theirs = reference(images, tokens)
        pairs = [(model.encode_image(images, normalize=True), reference.encode_image(images, normalize=True)),
                 (model.encode_text(tokens, normalize=True), reference.encode_text(tokens, normalize=True)),
                 (model.caption_logits(images, tokens[:, :-1]), theirs["logits"])]
        ours = model(images, tokens, output_dict=True, with_captions=True)
    pairs.append((ours["caption_logits"], theirs["logits"]))
    for mine, ref in pairs:
        assert mine.shape == ref.shape
        assert (mine - ref).abs().max().item() <= TOL
    assert torch.equal(ours["caption_labels"], theirs["labels"])
    assert torch.allclose(ours["logit_scale"], theirs["logit_scale"])


def test_tiny_parity_and_round_trip():
    config = get_architecture("tiny-coca")
    reference = _reference(config)
    model = _ours(reference, config)
    _assert_parity(reference, model, config)
    back = to_open_clip_state_dict(model.state_dict(), config)
    theirs = reference.state_dict()
    assert set(back) == set(theirs) and all(torch.equal(back[k], theirs[k]) for k in theirs)


def test_tiny_parity_packed_pool_projection():
    """Token width == embed_dim: open_clip's pooler keeps q/k/v in one in_proj_weight."""
    config = apply_overrides(get_architecture("tiny-coca"), {"vision.width": 32})
    reference = _reference(config)
    assert "visual.attn_pool.attn.in_proj_weight" in reference.state_dict()
    _assert_parity(reference, _ours(reference, config), config)
    back = to_open_clip_state_dict(_ours(reference, config).state_dict(), config)
    assert set(back) == set(reference.state_dict())


def test_tiny_parity_class_token_pooling():
    """coca_base's form: no attentional pooler; the class token is the feature, the patch tokens feed the decoder."""
    config = apply_overrides(get_architecture("tiny-coca"), {"vision.pool": "token", "vision.width": 32})
    reference = _reference(config)
    _assert_parity(reference, _ours(reference, config), config)
    base = get_architecture("coca_base")
    assert base == config_from_open_clip(open_clip.get_model_config("coca_base"))
    assert base.vision.pool == "token" and base.decoder.vocab_size == 64000


def test_coca_vit_b_32_full_size_parity():
    config = get_architecture("coca_ViT-B-32")
    assert config == config_from_open_clip(open_clip.get_model_config("coca_ViT-B-32"))
    reference = randomize_(init_decoder_projection_(open_clip.create_model("coca_ViT-B-32").eval()), vectors_only=True)
    _assert_parity(reference, _ours(reference, config), config)


def test_coca_vit_l_14_layout():
    config = get_architecture("coca_ViT-L-14")
    assert config == config_from_open_clip(open_clip.get_model_config("coca_ViT-L-14"))
    with torch.device("meta"):
        reference = open_clip.create_model("coca_ViT-L-14", device="meta")
    converted = convert_state_dict(reference.state_dict(), config)
    shapes = expected_shapes(config)
    assert {k: tuple(v.shape) for k, v in converted.items()} == shapes


def test_create_model_loads_open_clip_file_strictly(tmp_path):
    config = get_architecture("tiny-coca")
    reference = _reference(config)
    path = tmp_path / "open_clip_coca.pt"
    torch.save(reference.state_dict(), path)
    model = create_model("tiny-coca", pretrained=str(path))
    assert isinstance(model, CoCa)
    _assert_parity(reference, model, config)
    assert get_tokenizer("tiny-coca")(["a red circle"]).shape == (1, 16)


def test_hub_layout_round_trip(tmp_path):
    model = randomize_(create_model("tiny-coca"))
    save_pretrained(model, tmp_path / "coca")
    saved = json.loads((tmp_path / "coca" / "open_clip_config.json").read_text())
    assert "multimodal_cfg" in saved["model_cfg"]
    again = create_model(f"local-dir:{tmp_path / 'coca'}")
    assert isinstance(again, CoCa) and again.config == model.config
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    theirs = open_clip.create_model(f"local-dir:{tmp_path / 'coca'}")
    assert type(theirs).__name__ == "CoCa"


def test_published_tags():
    pairs = list_pretrained(as_str=True)
    for arch in ("coca_ViT-B-32", "coca_ViT-L-14"):
        for tag in ("laion2b_s13b_b90k", "mscoco_finetuned_laion2b_s13b_b90k"):
            assert f"{arch}::{tag}" in pairs
    entry = get_weight_entry("coca_ViT-B-32", "mscoco_finetuned_laion2b_s13b_b90k")
    assert entry.hf_hub_id == "laion/mscoco_finetuned_CoCa-ViT-B-32-laion2B-s13B-b90k"
    assert entry.preprocess["image_size"] == 224 and entry.arch_overrides == {}


def test_wrong_shaped_checkpoint_is_one_line(tmp_path):
    other = apply_overrides(get_architecture("tiny-coca"), {"text.width": 64, "decoder.width": 64,
                                                           "embed_dim": 64})
    path = tmp_path / "other.pt"
    torch.save(_reference(other).state_dict(), path)
    with pytest.raises(ModelLoadError) as info:
        create_model("tiny-coca", pretrained=str(path))
    assert "\n" not in str(info.value) and "do not fit" in str(info.value)


def test_clip_checkpoint_into_coca_fails(tmp_path):
    path = tmp_path / "clip.pt"
    torch.save(create_model("tiny-vit").state_dict(), path)
    with pytest.raises(ModelLoadError, match="do not fit"):
        create_model("tiny-coca", pretrained=str(path))


@pytest.mark.parametrize("override, message", [
    ({"decoder.width": 48}, "decoder.width 48 must equal"),
    ({"text.cls_token": False}, "text.cls_token=true"),
    ({"vision.pool_queries": 1}, "pool_queries >= 2"),
])
def test_bad_configs_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(get_architecture("tiny-coca"), override)


def test_caption_inputs_are_checked():
    model = create_model("tiny-coca")
    images, tokens = _inputs(model.config)
    with pytest.raises(ValueError, match="with_captions=True needs"):
        model(images, None, output_dict=True, with_captions=True)
    with pytest.raises(ValueError, match="context_length"):
        model.caption_logits(images, torch.ones(2, 40, dtype=torch.long))


def test_grad_checkpointing_gives_the_same_gradients():
    model = randomize_(create_model("tiny-coca")).train()
    images, tokens = _inputs(model.config)

    def grads():
        model.zero_grad()
        out = model(images, tokens, output_dict=True, with_captions=True)
        (out["caption_logits"].logsumexp(-1).mean() + out["image_features"].sum()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.set_grad_checkpointing(True)
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys() and any(k.startswith("decoder.") for k in plain)
    assert all(torch.allclose(plain[k], checkpointed[k], atol=1e-6) for k in plain)
