"""Presets, the registry and config validation."""
import math

import pytest
import torch

from clipforge.config import ConfigError, apply_overrides, from_dict, to_dict
from clipforge.models.clip import CLIP
from clipforge.models.config import ClipConfig, TextConfig, VisionConfig
from clipforge.models.convert import config_from_open_clip, config_to_open_clip
from clipforge.models.registry import UnknownModelError, get_architecture, list_models

REQUIRED = ["RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B-32", "ViT-B-16", "ViT-B-16-plus-240", "ViT-L-14",
            "ViT-L-14-336", "ViT-H-14", "ViT-g-14", "ViT-bigG-14", "ViT-B-16-SigLIP", "ViT-B-16-SigLIP-256",
            "ViT-B-16-SigLIP-384", "ViT-B-16-SigLIP-512", "ViT-L-16-SigLIP-256", "ViT-L-16-SigLIP-384",
            "ViT-SO400M-14-SigLIP", "ViT-SO400M-14-SigLIP-384", "tiny-vit", "tiny-resnet", "tiny-siglip"]


def test_list_models_is_sorted_and_complete():
    names = list_models()
    assert names == sorted(names, key=str.lower)
    assert set(REQUIRED) <= set(names)
    assert not [n for n in names if n.lower().endswith("-quickgelu")], "no one-flag twin presets"


@pytest.mark.parametrize("name", list_models())
def test_every_preset_parses_and_builds_on_meta(name):
    config = get_architecture(name)
    assert from_dict(ClipConfig, to_dict(config)) == config
    with torch.device("meta"):
        model = CLIP(config)
    assert sum(p.numel() for p in model.parameters()) > 0
    assert (model.logit_bias is not None) == (config.init_logit_bias is not None)


def test_lookup_is_case_insensitive():
    assert get_architecture("vit-b-32") == get_architecture("ViT-B-32")


def test_quickgelu_suffix_resolves_to_base_preset():
    base = get_architecture("ViT-B-32")
    quick = get_architecture("ViT-B-32-quickgelu")
    assert quick.vision.act == quick.text.act == "quick_gelu"
    assert base.vision.act == base.text.act == "gelu"
    assert apply_overrides(quick, {"vision.act": "gelu", "text.act": "gelu"}) == base


def test_unknown_name_lists_closest():
    with pytest.raises(UnknownModelError, match="ViT-B-32") as info:
        get_architecture("ViT-B-23")
    assert isinstance(info.value, ValueError)


def test_openai_override_paths_work():
    config = apply_overrides(get_architecture("RN50"), ["vision.act=quick_gelu", "text.act=quick_gelu"])
    assert config.vision.act == "quick_gelu" and config.text.act == "quick_gelu"
    with pytest.raises(ConfigError, match="act"):
        apply_overrides(config, {"vision.act": "relu"})


def test_validation_rejects_bad_architectures():
    with pytest.raises(ConfigError, match="divisible"):
        VisionConfig(width=100, num_heads=12)
    with pytest.raises(ConfigError, match="divisible"):
        TextConfig(width=100, num_heads=8)
    with pytest.raises(ConfigError, match="stage_depths"):
        VisionConfig(kind="resnet", width=64, num_heads=32, stage_depths=(3, 4))
    with pytest.raises(ConfigError, match="class_token"):
        VisionConfig(class_token=False, pool="token")
    with pytest.raises(ConfigError, match="output_proj"):
        ClipConfig(embed_dim=512, vision=VisionConfig(output_proj=False), text=TextConfig())


def test_presets_match_open_clip_architectures():
    import json
    import pathlib

    import open_clip
    src = pathlib.Path(open_clip.__file__).parent / "model_configs"
    for name in REQUIRED:
        if name.startswith("tiny"):
            continue
        assert config_from_open_clip(json.loads((src / f"{name}.json").read_text())) == get_architecture(name), name


@pytest.mark.parametrize("name", [n for n in REQUIRED if n != "tiny-siglip"])
def test_open_clip_config_round_trip(name):
    config = get_architecture(name)
    assert config_from_open_clip(config_to_open_clip(config)) == config


def test_open_clip_config_rejects_unsupported_options():
    with pytest.raises(ConfigError, match="qk_norm"):
        config_from_open_clip({"embed_dim": 512, "vision_cfg": {"qk_norm": True}, "text_cfg": {}})
    with pytest.raises(ConfigError, match="timm"):
        config_from_open_clip({"embed_dim": 512, "vision_cfg": {"timm_model_name": "convnext_base"}, "text_cfg": {}})


def test_logit_scale_default_is_clip_temperature():
    assert get_architecture("ViT-B-32").init_logit_scale == pytest.approx(math.log(1 / 0.07))
    assert get_architecture("ViT-B-16-SigLIP").init_logit_bias == -10
