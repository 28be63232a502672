"""Eval preprocessing against open_clip 3.3.0, and the cases where open_clip is wrong and we are not."""
import io
import itertools

import numpy as np
import pytest
from references import require
import torch
from PIL import Image

open_clip_transform = require("open_clip.transform")
from torchvision.transforms import CenterCrop, Compose, InterpolationMode  # noqa: E402

from clipforge.transforms import (  # noqa: E402
    PreprocessConfig, Resize, create_eval_transform, create_train_transform,
)

SIZES = [(1, 1), (1, 7), (7, 1), (200, 3), (3, 200), (37, 53), (64, 64), (90, 61)]  # (width, height)
MODES = ["RGB", "RGBA", "L", "LA", "P", "CMYK", "1", "I", "F", "YCbCr", "RGBX", "RGBa", "HSV", "LAB"]
# open_clip pads in the file's own mode, so fill 0 is not black for these (CMYK 0 is white)
PAD_COLOR_DIFFERS = {"P", "CMYK", "YCbCr", "HSV", "LAB"}


def _image(width, height, mode, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 4), dtype=np.uint8)
    img = Image.fromarray(pixels, "RGBA")
    return img if mode == "RGBA" else img.convert(mode)


def _reference(cfg: PreprocessConfig):
    size, mode, interp = cfg.image_size, cfg.resize_mode, cfg.interpolation
    if mode == "shortest" and not isinstance(size, int) and interp == "bilinear":
        # open_clip builds ResizeKeepRatio without passing the interpolation here (always bicubic);
        # compare with its own pieces given the interpolation it was asked for.
        resize = open_clip_transform.ResizeKeepRatio(size, interpolation=InterpolationMode.BILINEAR)
        ref = open_clip_transform.image_transform(size, False, mean=cfg.mean, std=cfg.std)
        return Compose([resize, CenterCrop(size)] + list(ref.transforms[2:]))
    return open_clip_transform.image_transform(size, False, mean=cfg.mean, std=cfg.std, resize_mode=mode,
                                               interpolation=interp, fill_color=cfg.fill_color)


def _content_box(cfg, width, height):
    """Rows/cols of a longest-mode output that hold the image (the rest is padding)."""
    new_w, new_h = Resize(cfg.size_hw, "longest", cfg.interpolation).output_size(width, height)
    target_h, target_w = cfg.size_hw
    top, left = (target_h - new_h) // 2, (target_w - new_w) // 2
    return slice(top, top + new_h), slice(left, left + new_w)


@pytest.mark.parametrize("resize_mode", ["shortest", "longest", "squash"])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("image_size", [32, (24, 40)])
def test_eval_transform_identical_to_open_clip(resize_mode, interpolation, image_size):
    cfg = PreprocessConfig(image_size=image_size, resize_mode=resize_mode, interpolation=interpolation)
    ours, ref = create_eval_transform(cfg), _reference(cfg)
    compared = 0
    for (width, height), mode in itertools.product(SIZES, MODES):
        img = _image(width, height, mode, seed=width * 1000 + height)
        try:
            expected = ref(img)
        except ValueError:  # open_clip's longest mode crashes on 0-pixel edges; see the test below
            assert resize_mode == "longest" and max(width, height) / min(width, height) > 20
            continue
        got = ours(img)
        assert got.dtype == torch.float32 and got.shape == expected.shape == (3, *cfg.size_hw)
        if resize_mode == "longest" and mode in PAD_COLOR_DIFFERS:
            rows, cols = _content_box(cfg, width, height)
            got, expected = got[:, rows, cols], expected[:, rows, cols]
        assert torch.equal(got, expected), f"{mode} {width}x{height}: max diff {(got - expected).abs().max()}"
        compared += 1
    assert compared >= len(SIZES) * len(MODES) - 2 * len(MODES)


def test_realistic_size_identical_to_open_clip():
    cfg = PreprocessConfig(image_size=224)
    img = _image(333, 517, "RGB")
    assert torch.equal(create_eval_transform(cfg)(img), _reference(cfg)(img))


def test_custom_mean_std_fill_identical_to_open_clip():
    cfg = PreprocessConfig(image_size=(20, 28), mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.125),
                           resize_mode="longest", fill_color=128)
    for mode in ("RGB", "RGBA", "L"):
        img = _image(41, 13, mode)
        assert torch.equal(create_eval_transform(cfg)(img), _reference(cfg)(img))


@pytest.mark.parametrize("mode", ["CMYK", "P", "YCbCr", "RGB", "L"])
def test_longest_pads_with_fill_color_whatever_the_file_mode(mode):
    cfg = PreprocessConfig(image_size=32, resize_mode="longest", fill_color=0)
    out = create_eval_transform(cfg)(_image(40, 10, mode))  # resized to 32x8: 12 rows of padding above
    black = (torch.zeros(3) - torch.tensor(cfg.mean)) / torch.tensor(cfg.std)
    assert torch.allclose(out[:, :12, :], black[:, None, None].expand(3, 12, 32))
    assert not torch.allclose(out[:, 12:20, :], black[:, None, None].expand(3, 8, 32))


def test_longest_extreme_aspect_does_not_crash():
    cfg = PreprocessConfig(image_size=32, resize_mode="longest")
    img = _image(400, 2, "RGB")
    with pytest.raises(ValueError):
        _reference(cfg)(img)  # open_clip asks PIL for a 0-pixel-high image
    out = create_eval_transform(cfg)(img)
    assert out.shape == (3, 32, 32) and out[:, 16, :].abs().sum() > 0  # a 1-pixel row of content in the middle


def test_shortest_non_square_uses_the_requested_interpolation():
    img = _image(50, 30, "RGB")
    bilinear = create_eval_transform(PreprocessConfig(image_size=(24, 40), interpolation="bilinear"))(img)
    bicubic = create_eval_transform(PreprocessConfig(image_size=(24, 40), interpolation="bicubic"))(img)
    open_clip_bilinear = open_clip_transform.image_transform((24, 40), False, interpolation="bilinear")(img)
    assert torch.equal(open_clip_bilinear, bicubic)  # open_clip ignores 'bilinear' here
    assert not torch.equal(bilinear, bicubic)


def test_sixteen_bit_png_is_scaled_not_clipped():
    values = np.linspace(0, 65535, 40 * 40).reshape(40, 40).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, "PNG")
    img = Image.open(io.BytesIO(buf.getvalue()))
    assert img.mode.startswith("I;16")
    cfg = PreprocessConfig(image_size=40)
    expected = create_eval_transform(cfg)(Image.fromarray(np.rint(values / 257).astype(np.uint8), "L"))
    assert torch.equal(create_eval_transform(cfg)(img), expected)
    clipped = _reference(cfg)(img)  # open_clip: every value above 255 becomes white
    white = (1 - cfg.mean[0]) / cfg.std[0]
    assert torch.isclose(clipped[0], torch.tensor(white)).float().mean() > 0.99


def test_pa_is_resized_as_rgba_not_as_palette_indices():
    img = _image(30, 20, "PA")
    cfg = PreprocessConfig(image_size=16)
    ours = create_eval_transform(cfg)(img)
    assert torch.equal(ours, create_eval_transform(cfg)(img.convert("RGBA")))
    assert (ours - _reference(cfg)(img)).abs().max() > 1  # open_clip interpolates palette indices


def test_premultiplied_la_input():
    transform = create_eval_transform(PreprocessConfig(image_size=24))
    la = _image(24, 24, "LA").convert("La")
    with pytest.raises(ValueError):
        _reference(PreprocessConfig(image_size=24))(la)
    assert torch.equal(transform(la), transform(la.convert("LA")))


def test_train_transform_identical_to_open_clip_under_the_same_seed():
    cfg = PreprocessConfig(image_size=32)
    ours = create_train_transform(cfg)
    ref = open_clip_transform.image_transform(32, True)
    for i, mode in enumerate(["RGB", "RGBA", "L", "P", "CMYK"]):
        img = _image(45 + i, 38, mode, seed=i)
        torch.manual_seed(i)
        expected = ref(img)
        torch.manual_seed(i)
        assert torch.equal(ours(img), expected), mode


def _open_clip_tag_settings():
    """Every distinct preprocessing among open_clip's pretrained tags, as open_clip resolves it."""
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    settings = {}
    for arch, tag in open_clip.list_pretrained():
        model_cfg = open_clip.get_model_config(arch) or {}
        size = model_cfg.get("vision_cfg", {}).get("image_size")
        if size is None:
            continue
        merged = open_clip_transform.merge_preprocess_dict(open_clip_transform.PreprocessCfg(),
                                                           get_pretrained_cfg(arch, tag))
        merged["size"] = size
        settings.setdefault(repr(sorted(merged.items())), (f"{arch}::{tag}", merged))
    return list(settings.values())


def test_every_open_clip_pretrained_tag_preprocesses_identically():
    settings = _open_clip_tag_settings()
    assert len(settings) >= 20  # 25 distinct settings over 196 tags in open_clip 3.3.0
    images = [_image(300, 225, "RGB", seed=1), _image(130, 260, "RGBA", seed=2), _image(97, 61, "L", seed=3)]
    for name, merged in settings:
        ours = create_eval_transform(PreprocessConfig.from_open_clip(merged))
        ref = open_clip_transform.image_transform_v2(open_clip_transform.PreprocessCfg(**merged), is_train=False)
        for img in images:
            assert torch.equal(ours(img), ref(img)), name
