"""timm image towers (vision.kind='timm') against open_clip 3.3.0's TimmModel: one state dict, the same features.

Small trunks of each family open_clip takes from timm (ConvNeXt, EVA, ViTamin, FastViT / MobileCLIP, PE), with
every head open_clip builds (linear, MLP with bias, the trunk's classifier, none), random weights, fp32, 1e-5.
"""
import sys

import pytest
from references import require
import torch

open_clip = require("open_clip")
require("timm")

from clipforge.config import ConfigError  # noqa: E402
from clipforge.models import convert, registry, timm_vision  # noqa: E402
from clipforge.models.clip import CLIP  # noqa: E402
from clipforge.models.config import TimmVisionConfig, VisionConfig  # noqa: E402
from clipforge.models.loading import load_weights  # noqa: E402
from model_helpers import randomize_  # noqa: E402

TOL = 1e-5
TEXT = {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 4, "layers": 1}
# (timm model, timm_pool, timm_proj, extra vision_cfg, image size): the shapes of open_clip's published configs
VARIANTS = [
    ("convnext_atto", "", "linear", {"timm_drop_path": 0.1}, 64),  # convnext_*
    ("convnext_atto", "", "mlp", {"timm_proj_bias": True}, 64),  # convnext_large_d
    ("eva02_tiny_patch14_224", "token", None, {}, 224),  # EVA02-*: the trunk's classifier is the projection
    ("vitamin_small_224", "", "linear", {}, 224),  # ViTamin-*
    ("fastvit_mci0", "avg", None, {}, 64),  # MobileCLIP(2)-S*
    ("vit_pe_core_tiny_patch16_384", "map", "none", {}, 384),  # PE-Core-*: no projection
]


def _cfg(name, pool, proj, extra, size, custom_text=True):
    vision = {"timm_model_name": name, "timm_model_pretrained": False, "timm_pool": pool, "timm_proj": proj,
              "image_size": size, **extra}
    return {"embed_dim": 32 if proj != "none" else None, "vision_cfg": vision, "text_cfg": dict(TEXT),
            "custom_text": custom_text}


@pytest.mark.parametrize("name, pool, proj, extra, size", VARIANTS, ids=[f"{v[0]}-{v[2]}" for v in VARIANTS])
def test_features_match_open_clip(name, pool, proj, extra, size):
    cfg = _cfg(name, pool, proj, extra, size)
    if proj == "none":  # no projection: the trunk's width is the embedding width
        with torch.device("meta"):
            cfg["embed_dim"] = open_clip.timm_model.TimmModel(name, 32, pool=pool, proj="none").trunk.num_features
    torch.manual_seed(0)
    kwargs = {k: v for k, v in cfg.items() if k != "custom_text"}
    reference = randomize_(open_clip.model.CustomTextCLIP(**kwargs)).eval()
    config = convert.config_from_open_clip(cfg)
    assert config.vision.kind == "timm" and config.open_clip_timm_model is None
    assert convert.config_from_open_clip(convert.config_to_open_clip(config)) == config
    model = CLIP(config).eval()
    load_weights(model, reference.state_dict(), "open_clip")
    assert {k for k in model.state_dict() if k.startswith("visual.")} == \
        {k for k in reference.state_dict() if k.startswith("visual.")}
    reference.load_state_dict(convert.to_open_clip_state_dict(model.state_dict(), config), strict=True)
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ours, theirs = model.encode_image(images, normalize=True), reference.encode_image(images, normalize=True)
    assert ours.shape == theirs.shape == (2, cfg["embed_dim"])
    assert (ours - theirs).abs().max().item() <= TOL


def test_layer_groups_cover_the_tower_and_lock():
    config = convert.config_from_open_clip(_cfg("convnext_atto", "", "linear", {}, 64))
    model = CLIP(config)
    groups = model.visual.param_groups()
    counted = sum(p.numel() for group in groups for item in group
                  for p in ([item] if isinstance(item, torch.nn.Parameter) else item.parameters()))
    assert counted == sum(p.numel() for p in model.visual.parameters()) and len(groups) > 3
    model.lock_image_tower(unlocked_groups=1)
    assert model.visual.head.proj.weight.requires_grad
    assert not any(p.requires_grad for p in model.visual.trunk.parameters())


def test_open_clip_configs_convert_to_presets():
    for name in ("convnext_base", "EVA02-B-16", "ViTamin-S", "MobileCLIP-S1", "convnext_large_d"):
        cfg = open_clip.get_model_config(name)
        config = convert.config_from_open_clip(cfg)
        assert config.vision.timm.model_name == cfg["vision_cfg"]["timm_model_name"]
        assert registry.get_architecture(name) == config
        assert convert.config_from_open_clip(convert.config_to_open_clip(config)) == config
    assert registry.get_architecture("convnext_large_d").vision.timm.proj == "mlp"
    assert registry.get_architecture("EVA02-B-16").vision.timm.proj == "head"


def test_bad_timm_configs_are_one_line():
    with pytest.raises(ConfigError, match="vision.timm"):
        VisionConfig(kind="timm")
    with pytest.raises(ConfigError, match="remove vision.width"):
        VisionConfig(kind="timm", width=64, timm=TimmVisionConfig(model_name="convnext_atto"))
    with pytest.raises(ConfigError, match="rot_attn"):
        TimmVisionConfig(model_name="resnet50", pool="rot_attn")


def test_missing_timm_names_the_extra(monkeypatch):
    config = convert.config_from_open_clip(_cfg("convnext_atto", "", "linear", {}, 64))
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` now raises ImportError
    with pytest.raises(ImportError) as info:
        CLIP(config)
    assert str(info.value) == timm_vision.TIMM_HINT and "pip install 'clipforge[timm]'" in str(info.value)
