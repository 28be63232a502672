"""Feature parity with open_clip on the same random weights, and state-dict layout equality for large presets."""
import dataclasses

import pytest
from references import require
import torch

open_clip = require("open_clip")

from clipforge.models.clip import CLIP  # noqa: E402
from clipforge.models.config import ClipConfig, TextConfig, VisionConfig  # noqa: E402
from clipforge.config import apply_overrides  # noqa: E402
from clipforge.models.convert import (ConversionError, config_from_openai_state_dict, config_to_open_clip,  # noqa: E402
                                      convert_state_dict,
                                      detect_layout, expected_shapes, shapes_match,
                                      to_open_clip_state_dict)
from clipforge.models.registry import get_architecture  # noqa: E402
from model_helpers import randomize_  # noqa: E402

TOL = 1e-5


def _open_clip_model(config: ClipConfig) -> torch.nn.Module:
    cfg = config_to_open_clip(config)
    cls = open_clip.model.CustomTextCLIP if cfg.pop("custom_text", False) else open_clip.model.CLIP
    return cls(**cfg).eval()


def _clipforge_from(reference: torch.nn.Module, config: ClipConfig) -> CLIP:
    with torch.device("meta"):  # no init cost: every tensor comes from the reference
        model = CLIP(config).eval()
    model.load_state_dict(convert_state_dict(reference.state_dict(), config), assign=True)
    return model


def _assert_same_features(reference, model, config: ClipConfig, batch: int = 2):
    size = config.vision.image_size
    images = torch.randn(batch, 3, size, size)
    tokens = torch.randint(1, config.text.vocab_size, (batch, config.text.context_length))
    tokens[:, -3:] = 0  # padding after the end-of-text token, as a tokenizer produces
    with torch.no_grad():
        for ours, theirs in ((model.encode_image(images, normalize=True), reference.encode_image(images, normalize=True)),
                             (model.encode_text(tokens, normalize=True), reference.encode_text(tokens, normalize=True))):
            assert ours.shape == theirs.shape
            assert (ours - theirs).abs().max().item() <= TOL


@pytest.mark.parametrize("name", ["ViT-B-32", "RN50"])
def test_full_size_parity(name):
    reference = randomize_(open_clip.create_model(name).eval(), vectors_only=True)
    config = get_architecture(name)
    _assert_same_features(reference, _clipforge_from(reference, config), config)


TINY_VARIANTS = {
    "tiny-vit": {},
    "tiny-vit quickgelu": {"vision.act": "quick_gelu", "text.act": "quick_gelu"},
    "tiny-vit avg-pool no-ln_pre layer-scale": {"vision.pool": "avg", "vision.pre_norm": False,
                                                 "vision.layer_scale_init": 0.5, "text.layer_scale_init": 0.5},
    "tiny-vit CLIPA (norm after avg-pool, bidirectional text)": {
        "vision.pool": "avg", "vision.norm_after_pool": True, "vision.pre_norm": False, "text.pool": "last",
        "text.causal_mask": False},
    "tiny-vit text without projection": {"text.output_proj": False},
    "tiny-resnet": {},
}


@pytest.mark.parametrize("variant", sorted(TINY_VARIANTS))
def test_tiny_parity(variant):
    config = apply_overrides(get_architecture(variant.split()[0]), TINY_VARIANTS[variant])
    reference = randomize_(_open_clip_model(config))
    _assert_same_features(reference, _clipforge_from(reference, config), config)


def _register_tiny_timm_siglip() -> str:
    import timm
    from timm.models import register_model
    from timm.models.vision_transformer import _create_vision_transformer
    name = "vit_clipforgetest_patch8_siglip_32"
    if name not in timm.list_models(name):
        @register_model
        def vit_clipforgetest_patch8_siglip_32(pretrained=False, **kwargs):
            args = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, class_token=False,
                        global_pool="map")
            return _create_vision_transformer(name, pretrained=pretrained, **dict(args, **kwargs))
    return name


def _tiny_siglip_timm_config() -> ClipConfig:
    return dataclasses.replace(get_architecture("tiny-siglip"), open_clip_timm_model=_register_tiny_timm_siglip())


def test_siglip_parity_with_timm_tower():
    config = _tiny_siglip_timm_config()
    reference = randomize_(_open_clip_model(config))
    assert any(k.startswith("visual.trunk.attn_pool.") for k in reference.state_dict())
    model = _clipforge_from(reference, config)
    _assert_same_features(reference, model, config, batch=3)
    out_ref, out = reference(torch.zeros(1, 3, 32, 32)), model(torch.zeros(1, 3, 32, 32))
    assert torch.equal(out_ref[3], out[3])  # logit_bias


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-resnet", "siglip"])
def test_round_trip_through_open_clip_layout(name, randomize):
    config = _tiny_siglip_timm_config() if name == "siglip" else get_architecture(name)
    model = randomize(CLIP(config).eval())
    reference = _open_clip_model(config)
    reference.load_state_dict(to_open_clip_state_dict(model.state_dict(), config))  # strict
    _assert_same_features(reference, model, config)
    back = convert_state_dict(reference.state_dict(), config)
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())


def _open_clip_meta_state_dict(name: str) -> dict:
    """open_clip's model for ``name`` built directly on the meta device (its factory would init on CPU first)."""
    cfg = dict(open_clip.get_model_config(name))
    cls = open_clip.model.CustomTextCLIP if cfg.pop("custom_text", False) else open_clip.model.CLIP
    with torch.device("meta"):
        return cls(**cfg).state_dict()


LARGE = ["RN50x4", "RN50x16", "RN50x64", "RN101", "ViT-B-16", "ViT-B-16-plus-240", "ViT-L-14", "ViT-L-14-336",
         "ViT-H-14", "ViT-g-14", "ViT-bigG-14", "ViT-B-16-SigLIP", "ViT-B-16-SigLIP-256", "ViT-B-16-SigLIP-384",
         "ViT-B-16-SigLIP-512", "ViT-L-16-SigLIP-256", "ViT-L-16-SigLIP-384", "ViT-SO400M-14-SigLIP",
         "ViT-SO400M-14-SigLIP-384"]


@pytest.mark.parametrize("name", LARGE)
def test_large_preset_layout_matches_open_clip(name):
    reference = _open_clip_meta_state_dict(name)
    config = get_architecture(name)
    converted = convert_state_dict(reference, config)  # raises on any missing/unexpected key or shape
    assert {k: tuple(v.shape) for k, v in converted.items()} == expected_shapes(config)
    back = to_open_clip_state_dict(converted, config)
    assert {k: tuple(v.shape) for k, v in back.items()} == {k: tuple(v.shape) for k, v in reference.items()}


def test_ddp_prefix():
    reference = randomize_(_open_clip_model(get_architecture("tiny-vit")))
    config = get_architecture("tiny-vit")
    ddp = {"module." + k: v for k, v in reference.state_dict().items()}
    assert detect_layout(ddp) == "open_clip"
    model = CLIP(config).eval()
    model.load_state_dict(convert_state_dict(ddp, config))
    _assert_same_features(reference, model, config)


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-resnet"])
def test_openai_archive(name):
    """OpenAI's .pt state dicts: open_clip CLIP keys, fp16 weights, three extra integer entries, QuickGELU."""
    config = apply_overrides(get_architecture(name), {"vision.act": "quick_gelu", "text.act": "quick_gelu"})
    # OpenAI's towers use 64-wide heads; the architecture is inferred from tensor shapes alone
    config = apply_overrides(config, {"vision.num_heads": config.vision.width * (32 if name == "tiny-resnet" else 1)
                                      // 64, "text.width": 128, "text.num_heads": 2})
    reference = randomize_(_open_clip_model(config))
    archive = {k: v.half() if v.is_floating_point() else v for k, v in reference.state_dict().items()}
    archive.update(input_resolution=torch.tensor(config.vision.image_size), context_length=torch.tensor(16),
                   vocab_size=torch.tensor(config.text.vocab_size))
    assert detect_layout(archive) == "openai"
    assert config_from_openai_state_dict(archive) == config
    model = CLIP(config).eval()
    model.load_state_dict(convert_state_dict(archive, config))
    reference.load_state_dict({k: v for k, v in archive.items() if k in reference.state_dict()})  # same fp16 rounding
    _assert_same_features(reference, model, config)


def test_wrong_architecture_never_matches():
    """Conversion only renames; the loader's one check (shapes_match / models.loading) refuses a mismatch."""
    reference = _open_clip_meta_state_dict("ViT-B-32")
    assert shapes_match(convert_state_dict(reference, get_architecture("ViT-B-32")), get_architecture("ViT-B-32"))
    for other in ("ViT-B-16", "ViT-L-14"):
        assert not shapes_match(convert_state_dict(reference, get_architecture(other)), get_architecture(other))
    partial = {k: v for k, v in reference.items() if "resblocks.11." not in k}
    assert not shapes_match(convert_state_dict(partial, get_architecture("ViT-B-32")), get_architecture("ViT-B-32"))
    extra = dict(reference, **{"visual.extra_head.weight": torch.zeros(1, device="meta")})
    with pytest.raises(ConversionError, match="visual.extra_head.weight"):
        convert_state_dict(extra, get_architecture("ViT-B-32"))


def test_siglip_without_timm_name_has_no_open_clip_layout():
    config = get_architecture("tiny-siglip")
    with pytest.raises(ConversionError, match="open_clip_timm_model"):
        to_open_clip_state_dict(CLIP(config).state_dict(), config)
