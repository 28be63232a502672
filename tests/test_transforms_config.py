"""PreprocessConfig / AugmentConfig validation, open_clip dict round trips, resolve_preprocess."""
import numpy as np
import pytest
from references import require
import torch
from PIL import Image

from clipforge.config import ConfigError, from_dict, to_dict
from clipforge.transforms import (
    OPENAI_MEAN, OPENAI_STD, AugmentConfig, PreprocessConfig, PreprocessMismatchError, create_eval_transform,
    parse_randaugment, resolve_preprocess,
)


def test_defaults_are_openai_clip():
    cfg = PreprocessConfig()
    assert (cfg.image_size, cfg.interpolation, cfg.resize_mode, cfg.fill_color) == (224, "bicubic", "shortest", 0)
    open_clip_constants = require("open_clip.constants")
    assert cfg.mean == open_clip_constants.OPENAI_DATASET_MEAN == OPENAI_MEAN
    assert cfg.std == open_clip_constants.OPENAI_DATASET_STD == OPENAI_STD


def test_from_dict_with_registry_keys():
    data = {"image_size": [336, 336], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
            "interpolation": "bilinear", "resize_mode": "squash"}
    cfg = from_dict(PreprocessConfig, data)
    assert cfg.image_size == (336, 336) and cfg.size_hw == (336, 336) and cfg.mean == (0.5, 0.5, 0.5)
    assert from_dict(PreprocessConfig, to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="unknown config key 'size'"):
        from_dict(PreprocessConfig, {"size": 224})


@pytest.mark.parametrize("kwargs, message", [
    ({"std": (0.2, 0.0, 0.2)}, "std must be 3 positive"),
    ({"std": (0.2, 0.2)}, "std must be 3 numbers"),
    ({"mean": (0.5, float("nan"), 0.5)}, "mean must be 3 finite"),
    ({"interpolation": "nearest"}, "interpolation must be 'bicubic' or 'bilinear'"),
    ({"resize_mode": "crop"}, "resize_mode must be"),
    ({"image_size": 0}, "image_size must be a positive int"),
    ({"image_size": (224, 224, 3)}, "image_size must be a positive int"),
    ({"image_size": True}, "image_size must be a positive int"),
    ({"fill_color": 300}, "fill_color must be an int gray level"),
])
def test_preprocess_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        PreprocessConfig(**kwargs)


def test_scalar_mean_std_expand_to_three_channels():
    cfg = PreprocessConfig(mean=0.5, std=0.25)
    assert cfg.mean == (0.5, 0.5, 0.5) and cfg.std == (0.25, 0.25, 0.25)


def test_open_clip_preprocess_cfg_round_trip():
    hub = {"size": [256, 256], "mode": "RGB", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
           "interpolation": "bicubic", "resize_mode": "squash", "fill_color": 0}
    cfg = PreprocessConfig.from_open_clip(hub)
    assert cfg == PreprocessConfig(image_size=(256, 256), mean=(0.5,) * 3, std=(0.5,) * 3, resize_mode="squash")
    assert PreprocessConfig.from_open_clip(cfg.to_open_clip()) == cfg
    assert PreprocessConfig.from_open_clip({"size": 384}) == PreprocessConfig(image_size=384)
    with pytest.raises(ConfigError, match="unknown open_clip preprocess_cfg keys"):
        PreprocessConfig.from_open_clip({"size": 224, "crop_pct": 0.9})
    with pytest.raises(ConfigError, match="mode 'L' is not supported"):
        PreprocessConfig.from_open_clip({"mode": "L"})


def test_to_open_clip_builds_the_same_transform_in_open_clip():
    open_clip_transform = require("open_clip.transform")
    cfg = PreprocessConfig(image_size=24, resize_mode="longest", interpolation="bilinear", fill_color=10)
    ref = open_clip_transform.image_transform_v2(open_clip_transform.PreprocessCfg(**cfg.to_open_clip()), False)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (17, 40, 3), dtype=np.uint8))
    assert torch.equal(create_eval_transform(cfg)(img), ref(img))


# ---------------------------------------------------------------- resolve_preprocess

LAION = PreprocessConfig(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def test_resolve_picks_declared_then_file_then_default():
    assert resolve_preprocess(LAION, None, None) == LAION
    assert resolve_preprocess(None, LAION, None) == LAION
    assert resolve_preprocess(None, None, None) == PreprocessConfig()
    assert resolve_preprocess(LAION, LAION, None) == LAION


def test_resolve_raises_when_weights_and_file_disagree():
    with pytest.raises(PreprocessMismatchError) as info:
        resolve_preprocess(PreprocessConfig(), LAION, None)
    message = str(info.value)
    assert "mean" in message and "std" in message
    assert repr(OPENAI_MEAN) in message and repr((0.5, 0.5, 0.5)) in message
    assert "overrides=" in message and "image_size" not in message


def test_resolve_conflict_settled_by_explicit_override():
    chosen = resolve_preprocess(PreprocessConfig(), LAION, {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]})
    assert chosen == LAION
    # an override of an unrelated field does not silence the conflict
    with pytest.raises(PreprocessMismatchError, match="std"):
        resolve_preprocess(PreprocessConfig(), LAION, {"mean": [0.5, 0.5, 0.5], "image_size": 256})


def test_resolve_tolerates_rounded_floats_and_checks_override_keys():
    rounded = PreprocessConfig(mean=tuple(float(np.float32(m)) for m in OPENAI_MEAN))
    assert resolve_preprocess(PreprocessConfig(), rounded, None) == PreprocessConfig()
    assert resolve_preprocess(LAION, None, {"image_size": 336}).image_size == 336
    with pytest.raises(ConfigError, match="unknown config key 'size'"):
        resolve_preprocess(LAION, None, {"size": 336})
    with pytest.raises(ConfigError, match="interpolation"):
        resolve_preprocess(LAION, None, {"interpolation": "lanczos"})


# ---------------------------------------------------------------- AugmentConfig


def test_augment_defaults_match_open_clip():
    open_clip_transform = require("open_clip.transform")
    aug = AugmentConfig()
    assert aug.scale == open_clip_transform.AugmentationCfg().scale
    assert aug.ratio == (3 / 4, 4 / 3) and aug.hflip == 0 and aug.randaugment is None and aug.re_prob == 0


@pytest.mark.parametrize("kwargs, message", [
    ({"scale": (0.9, 0.1)}, "scale must be"),
    ({"scale": (0.5, 1.5)}, "must be <= 1"),
    ({"ratio": (0.0, 1.0)}, "ratio must be"),
    ({"hflip": 1.5}, "hflip is a probability"),
    ({"grayscale": -0.1}, "grayscale is a probability"),
    ({"color_jitter": (0.4, 0.4)}, "color_jitter must be a number or 3/4"),
    ({"color_jitter": (0.4, 0.4, 0.4, 0.9)}, "hue <= 0.5"),
    ({"randaugment": (2, 31)}, "randaugment must be"),
    ({"randaugment": (2,)}, "randaugment must be"),
    ({"re_count": 0}, "re_count must be"),
])
def test_augment_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        AugmentConfig(**kwargs)


def test_augment_from_dict_and_jitter_forms():
    aug = from_dict(AugmentConfig, {"scale": [0.5, 1.0], "color_jitter": 0.4, "randaugment": [2, 9]})
    assert aug.scale == (0.5, 1.0) and aug.color_jitter == (0.4, 0.4, 0.4, 0.0) and aug.randaugment == (2, 9)
    assert AugmentConfig(color_jitter=(0.1, 0.2, 0.3)).color_jitter == (0.1, 0.2, 0.3, 0.0)
    assert from_dict(AugmentConfig, to_dict(aug)) == aug


def test_augment_from_open_clip_aug_cfg():
    aug = AugmentConfig.from_open_clip({"scale": (0.4, 1.0), "ratio": (0.9, 1.1), "color_jitter": (0.4, 0.4, 0.4, 0.1),
                                        "color_jitter_prob": 0.8, "gray_scale_prob": 0.2, "re_prob": 0.25,
                                        "re_count": 2, "use_timm": True, "auto_augment": "rand-m7-n3"})
    assert aug == AugmentConfig(scale=(0.4, 1.0), ratio=(0.9, 1.1), color_jitter=(0.4, 0.4, 0.4, 0.1),
                                color_jitter_prob=0.8, grayscale=0.2, re_prob=0.25, re_count=2, randaugment=(3, 7))
    with pytest.raises(ConfigError, match="'vflip' has no clipforge equivalent"):
        AugmentConfig.from_open_clip({"vflip": 0.5})


def test_parse_randaugment_strings():
    assert parse_randaugment("rand-m9-n2") == (2, 9)
    assert parse_randaugment("rand-m15") == (2, 15)
    with pytest.raises(ConfigError, match="part 'mstd0.5' is not supported"):
        parse_randaugment("rand-m9-mstd0.5")
    with pytest.raises(ConfigError, match="only RandAugment"):
        parse_randaugment("original")


def test_open_clip_cannot_express_randaugment():
    """The gap we close: open_clip 3.3.0 has no way to ask for RandAugment, even through timm."""
    open_clip_transform = require("open_clip.transform")
    with pytest.raises(TypeError, match="auto_augment"):
        open_clip_transform.image_transform(32, True, aug_cfg={"auto_augment": "rand-m9-n2", "use_timm": True})
    with pytest.warns(UserWarning, match="Unused augmentation cfg items"):
        open_clip_transform.image_transform(32, True, aug_cfg={"ratio": (1.0, 1.0), "re_prob": 0.5})


def test_transforms_module_imports_only_the_config_layer():
    import ast
    import pathlib

    import clipforge.transforms as module

    tree = ast.parse(pathlib.Path(module.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    ours = {name for name in imported if name.startswith("clipforge")}
    assert ours == {"clipforge.config"}
    assert not imported & {"open_clip", "timm", "transformers", "clip_benchmark", "argparse"}


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "I;16", "CMYK"])
@pytest.mark.parametrize("resize_mode", ["shortest", "longest", "squash"])
def test_array_transform_equals_the_torch_transform_bit_for_bit(mode, resize_mode):
    """The torch-free pipeline (ONNX runtime) and the torch one give identical numbers."""
    from clipforge.transforms import create_eval_array_transform

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))
    img = img.convert("I;16") if mode == "I;16" else img.convert(mode)
    cfg = PreprocessConfig(image_size=(24, 32), resize_mode=resize_mode, fill_color=7)
    np.testing.assert_array_equal(create_eval_array_transform(cfg)(img), create_eval_transform(cfg)(img).numpy())
