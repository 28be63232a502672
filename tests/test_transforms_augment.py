"""Training augmentation: every AugmentConfig option has an effect, RandAugment included."""
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as tvt

from clipforge.transforms import (
    AugmentConfig, PreprocessConfig, ToNormalizedTensor, create_eval_transform, create_train_transform,
)

CFG = PreprocessConfig(image_size=32)
# scale=1 and the image's own aspect ratio make the random crop the whole image: only the option under test varies
FULL = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0))


def _image(width=32, height=32, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    # smooth content plus noise, so geometric and color ops all have visible effects
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / max(width - 1, 1), yy * 255 / max(height - 1, 1), (xx + yy) * 127 / max(width, 1)], -1)
    pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB").convert(mode)


def _run(transform, img, seed):
    torch.manual_seed(seed)
    return transform(img)


def _unnormalize(x):
    return x * torch.tensor(CFG.std)[:, None, None] + torch.tensor(CFG.mean)[:, None, None]


def test_train_output_shape_and_dtype_for_many_modes():
    transform = create_train_transform(PreprocessConfig(image_size=(24, 40)),
                                       AugmentConfig(hflip=0.5, color_jitter=0.4, grayscale=0.2, randaugment=(2, 9),
                                                     re_prob=0.5))
    for mode in ("RGB", "RGBA", "L", "P", "CMYK", "I;16", "PA"):
        img = _image(50, 31, mode=mode) if mode != "I;16" else Image.fromarray(
            np.random.default_rng(0).integers(0, 65535, (31, 50), dtype=np.uint16))
        out = _run(transform, img, 0)
        assert out.shape == (3, 24, 40) and out.dtype == torch.float32 and torch.isfinite(out).all(), mode


def test_full_crop_equals_resizing_the_whole_image():
    img = _image(48, 48)
    crop = _run(create_train_transform(CFG, AugmentConfig(**FULL)), img, 0)
    assert torch.equal(crop, create_eval_transform(CFG)(img))


def test_scale_and_ratio_are_used():
    img = _image(64, 64)
    wide = AugmentConfig(scale=(0.25, 0.25), ratio=(4.0, 4.0))  # area 1024 at w/h 4: a 64 x 16 crop
    outs = [_run(create_train_transform(CFG, wide), img, s) for s in range(4)]
    full = create_eval_transform(CFG)(img)
    assert all(not torch.equal(o, full) for o in outs)
    # every crop is 64 pixels wide, so each output row spans the full x gradient of the red channel
    red = [_unnormalize(o)[0] for o in outs]
    assert all(r[:, 0].mean() < 0.2 and r[:, -1].mean() > 0.8 for r in red)


def test_hflip_always_and_never():
    img = _image(40, 40)
    plain = _run(create_train_transform(CFG, AugmentConfig(**FULL)), img, 3)
    flipped = _run(create_train_transform(CFG, AugmentConfig(hflip=1.0, **FULL)), img, 3)
    assert torch.equal(flipped, plain.flip(-1))
    assert torch.equal(_run(create_train_transform(CFG, AugmentConfig(hflip=0.0, **FULL)), img, 3), plain)


def test_grayscale_probability_one_gives_equal_channels():
    out = _unnormalize(_run(create_train_transform(CFG, AugmentConfig(grayscale=1.0, **FULL)), _image(), 0))
    assert torch.allclose(out[0], out[1], atol=1e-5) and torch.allclose(out[1], out[2], atol=1e-5)
    plain = _unnormalize(_run(create_train_transform(CFG, AugmentConfig(**FULL)), _image(), 0))
    assert not torch.allclose(plain[0], plain[1], atol=1e-2)


def test_color_jitter_changes_colors_and_respects_probability():
    img = _image()
    plain = _run(create_train_transform(CFG, AugmentConfig(**FULL)), img, 0)
    jitter = create_train_transform(CFG, AugmentConfig(color_jitter=(0.4, 0.4, 0.4, 0.1), **FULL))
    assert all(not torch.equal(_run(jitter, img, s), plain) for s in range(5))
    never = create_train_transform(CFG, AugmentConfig(color_jitter=0.4, color_jitter_prob=0.0, **FULL))
    assert all(torch.equal(_run(never, img, s), plain) for s in range(5))
    half = create_train_transform(CFG, AugmentConfig(color_jitter=0.4, color_jitter_prob=0.5, **FULL))
    changed = sum(not torch.equal(_run(half, img, s), plain) for s in range(40))
    assert 8 <= changed <= 32


def test_random_erasing_replaces_a_rectangle_with_noise():
    img = _image()
    plain = _run(create_train_transform(CFG, AugmentConfig(**FULL)), img, 0)
    erased = _run(create_train_transform(CFG, AugmentConfig(re_prob=1.0, **FULL)), img, 0)
    changed = (erased != plain).any(0)  # (H, W)
    rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
    assert changed.sum() > 0
    box = changed[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    assert box.float().mean() > 0.95  # a filled rectangle, not scattered pixels
    several = _run(create_train_transform(CFG, AugmentConfig(re_prob=1.0, re_count=3, **FULL)), img, 0)
    assert (several != plain).any(0).sum() > changed.sum()


# ---------------------------------------------------------------- RandAugment


def _randaugment(num_ops, magnitude):
    return create_train_transform(CFG, AugmentConfig(randaugment=(num_ops, magnitude), **FULL))


def _mean_change(transform, seeds=range(24)):
    img = _image(seed=1)
    plain = create_eval_transform(CFG)(img)
    return float(np.mean([(_run(transform, img, s) - plain).abs().mean().item() for s in seeds]))


def test_randaugment_runs_on_8_bit_images_before_normalization():
    transform = _randaugment(2, 9)
    names = [type(step).__name__ for step in transform.transforms]
    assert names.index("RandAugment") < names.index("ToNormalizedTensor")
    img = _image(seed=2)
    outs = [_run(transform, img, s) for s in range(30)]  # covers posterize/solarize/equalize, uint8-only ops
    assert sum(not torch.equal(o, create_eval_transform(CFG)(img)) for o in outs) >= 25


def test_randaugment_deterministic_under_seed():
    transform, img = _randaugment(2, 9), _image()
    assert torch.equal(_run(transform, img, 7), _run(transform, img, 7))
    assert len({_run(transform, img, s).sum().item() for s in range(10)}) >= 8


def test_randaugment_num_ops_and_magnitude_matter():
    assert _mean_change(_randaugment(0, 9)) == 0.0
    one, four = _mean_change(_randaugment(1, 9)), _mean_change(_randaugment(4, 9))
    assert four > 1.5 * one > 0
    weak, strong = _mean_change(_randaugment(2, 1)), _mean_change(_randaugment(2, 30))
    assert strong > 1.5 * weak


# ---------------------------------------------------------------- pickling (DataLoader workers with spawn)


def test_transforms_pickle_and_behave_the_same():
    aug = AugmentConfig(hflip=0.5, color_jitter=0.4, color_jitter_prob=0.8, grayscale=0.2, randaugment=(2, 9),
                        re_prob=0.5)
    img = _image(45, 33)
    for transform in (create_eval_transform(CFG), create_train_transform(CFG, aug)):
        clone = pickle.loads(pickle.dumps(transform))
        assert torch.equal(_run(clone, img, 5), _run(transform, img, 5))


def test_lookup_normalization_equals_torchvision():
    mean, std = (0.1, 0.5, 0.9), (0.3, 0.07, 1.7)
    pixels = np.arange(256 * 3, dtype=np.int64).reshape(16, 16, 3) % 256
    img = Image.fromarray(pixels.astype(np.uint8), "RGB")
    expected = tvt.Normalize(mean, std)(tvt.ToTensor()(img))
    assert torch.equal(ToNormalizedTensor(mean, std)(img), expected)
    with pytest.raises(ValueError, match="expects an RGB image"):
        ToNormalizedTensor(mean, std)(img.convert("L"))


def test_non_pil_inputs():
    img = _image(20, 12)
    transform = create_eval_transform(CFG)
    expected = transform(img)
    assert torch.equal(transform(np.asarray(img)), expected)
    assert torch.equal(transform(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)), expected)
    with pytest.raises(TypeError, match="expected a PIL image"):
        transform(torch.rand(3, 12, 20))
    with pytest.raises(TypeError, match="expected a PIL image"):
        transform("photo.jpg")


def test_factories_reject_dicts_with_a_hint():
    with pytest.raises(TypeError, match="cfg must be an instance of PreprocessConfig.*from_dict"):
        create_eval_transform({"image_size": 224})
    with pytest.raises(TypeError, match="aug must be an instance of AugmentConfig"):
        create_train_transform(CFG, {"hflip": 0.5})


def test_train_crop_uses_the_configured_interpolation():
    img = _image(50, 50)
    bilinear = _run(create_train_transform(PreprocessConfig(image_size=32, interpolation="bilinear")), img, 0)
    bicubic = _run(create_train_transform(CFG), img, 0)
    assert bilinear.shape == bicubic.shape and not torch.equal(bilinear, bicubic)


class _Images(torch.utils.data.Dataset):
    def __init__(self, transform):
        self.transform = transform

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return self.transform(_image(40 + index, 30, seed=index, mode="RGBA"))


@pytest.mark.slow
@pytest.mark.skipif(not __import__("os").environ.get("CLIPFORGE_SLOW"), reason="set CLIPFORGE_SLOW=1")
def test_transforms_work_in_spawned_dataloader_workers():
    aug = AugmentConfig(hflip=0.5, color_jitter=0.4, grayscale=0.2, randaugment=(2, 9), re_prob=0.5)
    eval_transform = create_eval_transform(CFG)
    expected = torch.stack([eval_transform(_image(40 + i, 30, seed=i, mode="RGBA")) for i in range(4)])
    for transform in (eval_transform, create_train_transform(CFG, aug)):
        loader = torch.utils.data.DataLoader(_Images(transform), batch_size=4, num_workers=1,
                                             multiprocessing_context="spawn")
        (batch,) = list(loader)
        assert batch.shape == (4, 3, 32, 32)
        assert torch.equal(batch, expected) == (transform is eval_transform)
