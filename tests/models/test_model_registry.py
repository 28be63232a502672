"""Presets, the registry and config validation."""
import math

import pytest
import torch

from clipforge.config import ConfigError, apply_overrides, from_dict, to_dict
from clipforge.models.config import ClipConfig, TextConfig, VisionConfig
from clipforge.models.coca import build_model
from clipforge.models.convert import anchors_match, config_from_open_clip, config_to_open_clip
from clipforge.models.registry import UnknownModelError, get_architecture, list_models
from model_helpers import hf_stand_in

REQUIRED = ["RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B-32", "ViT-B-16", "ViT-B-16-plus-240", "ViT-L-14",
            "ViT-L-14-336", "ViT-H-14", "ViT-g-14", "ViT-bigG-14", "ViT-B-16-SigLIP", "ViT-B-16-SigLIP-256",
            "ViT-B-16-SigLIP-384", "ViT-B-16-SigLIP-512", "ViT-L-16-SigLIP-256", "ViT-L-16-SigLIP-384",
            "ViT-SO400M-14-SigLIP", "ViT-SO400M-14-SigLIP-384", "ViT-L-14-CLIPA", "ViT-bigG-14-CLIPA-336",
            "ViT-SO400M-16-SigLIP-i18n-256", "tiny-vit", "tiny-resnet", "tiny-siglip"]


def test_list_models_is_sorted_and_complete():
    names = list_models()
    assert names == sorted(names, key=str.lower)
    assert set(REQUIRED) <= set(names)
    assert not [n for n in names if n.lower().endswith("-quickgelu")], "no one-flag twin presets"


@pytest.mark.parametrize("name", list_models())
def test_every_preset_parses_and_builds_on_meta(name):
    config = get_architecture(name)
    assert from_dict(ClipConfig, to_dict(config)) == config
    config = hf_stand_in(config)  # a Hugging Face text tower: a small local config instead of the hub's config.json
    with torch.device("meta"):
        model = build_model(config)
    assert sum(p.numel() for p in model.parameters()) > 0
    assert (model.logit_bias is not None) == (config.init_logit_bias is not None)
    assert anchors_match(model.state_dict(), config)  # fitting_presets' cheap pre-check never rejects a fit


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
    with pytest.raises(ConfigError, match="text.output_proj"):
        ClipConfig(embed_dim=512, vision=VisionConfig(), text=TextConfig(output_proj=False, width=768, num_heads=12))
    with pytest.raises(ConfigError, match="norm_after_pool"):
        VisionConfig(norm_after_pool=True)  # pool='token': the order of norm and pool does not matter
    with pytest.raises(ConfigError, match="tokenizer_strip_sep"):
        ClipConfig(embed_dim=512, vision=VisionConfig(), text=TextConfig(), tokenizer_strip_sep=True)


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
    with pytest.raises(ConfigError, match="rot_attn"):  # open_clip's attention-pool heads on timm trunks
        config_from_open_clip({"embed_dim": 512, "vision_cfg": {"timm_model_name": "resnet50", "timm_pool": "rot_attn"},
                               "text_cfg": {}})


def test_open_clip_clipa_and_projection_options():
    vision = {"pool_type": "avg", "final_ln_after_pool": True, "no_ln_pre": True}
    config = config_from_open_clip({"embed_dim": 512, "vision_cfg": vision, "text_cfg": {"proj_type": "none"}})
    assert config.vision.norm_after_pool and not config.vision.pre_norm and not config.text.output_proj
    assert config_from_open_clip(config_to_open_clip(config)) == config
    # after class-token pooling open_clip's flag changes nothing: the same model, one spelling
    token = config_from_open_clip({"embed_dim": 512, "vision_cfg": {"final_ln_after_pool": True}, "text_cfg": {}})
    assert token == config_from_open_clip({"embed_dim": 512, "vision_cfg": {}, "text_cfg": {}})
    with pytest.raises(ConfigError, match="proj_type 'mlp'"):
        config_from_open_clip({"embed_dim": 512, "vision_cfg": {}, "text_cfg": {"proj_type": "mlp"}})


def test_open_clip_tokenizer_options_are_recorded_or_refused():
    def convert(**text_cfg):
        return config_from_open_clip({"embed_dim": 512, "vision_cfg": {}, "text_cfg": text_cfg})

    bert = {"hf_tokenizer_name": "bert-base-uncased"}
    config = convert(**bert, tokenizer_kwargs={"strip_sep_token": True, "clean": "whitespace"})
    assert (config.tokenizer, config.tokenizer_strip_sep, config.tokenizer_clean) == \
        ("bert-base-uncased", True, "whitespace")
    assert config_to_open_clip(config)["text_cfg"]["tokenizer_kwargs"] == {"clean": "whitespace",
                                                                          "strip_sep_token": True}
    assert convert(**bert, tokenizer_kwargs={"strip_sep_token": False}) == convert(**bert)
    with pytest.raises(ConfigError, match="language='fr'"):
        convert(**bert, tokenizer_kwargs={"language": "fr"})
    with pytest.raises(ConfigError, match="tokenizer_mode='clips'"):
        convert(**bert, tokenizer_mode="clips")
    with pytest.raises(ConfigError, match="tokenizer_strip_sep"):
        convert(tokenizer_kwargs={"strip_sep_token": True})  # CLIP's BPE has no separator


def test_logit_scale_default_is_clip_temperature():
    assert get_architecture("ViT-B-32").init_logit_scale == pytest.approx(math.log(1 / 0.07))
    assert get_architecture("ViT-B-16-SigLIP").init_logit_bias == -10
