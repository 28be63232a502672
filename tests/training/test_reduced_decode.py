"""Reduced-size JPEG decoding in the training pipeline: the same crops, the same statistics, exact elsewhere."""
import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from references import require

from clipforge.data.images import ImageReadError, read_image
from clipforge.training.data.batch import RawSample, new_counts, prepare_sample
from clipforge.transforms import AugmentConfig, PreprocessConfig, create_train_transform

CFG = PreprocessConfig(image_size=64)


def _photo(width, height, seed, mode="RGB", fmt="JPEG"):
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    phase = rng.random((1, 1, 3)).astype(np.float32) * 6
    pixels = 128 + 70 * np.sin(4 * x + phase) * np.cos(3 * y + phase) + rng.normal(0, 6, (height, width, 3))
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
        draw.ellipse((x0, y0, x0 + width // 3, y0 + height // 3), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    buffer = io.BytesIO()
    img.convert(mode).save(buffer, fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _both(transform, data, seed):
    """(full decode + transform, reduced decode + finish) under the same seed."""
    torch.manual_seed(seed)
    exact = transform(read_image(data))
    torch.manual_seed(seed)
    reduced = transform.finish(read_image(data, decode=transform.decode))
    return exact, reduced


def test_reduced_decode_draws_the_same_crop_and_differs_by_resampling_noise_only():
    transform = create_train_transform(CFG, AugmentConfig(scale=(0.3, 1.0)))
    diffs, used = [], 0
    for seed in range(24):
        data = _photo(300 + 37 * seed, 520 - 9 * seed, seed)
        opened = Image.open(io.BytesIO(data))
        torch.manual_seed(seed)
        used += transform._reduction(opened, transform.crop.params(opened)) > 1
        exact, reduced = _both(transform, data, seed)
        assert exact.shape == reduced.shape == (3, 64, 64)
        diffs.append((exact - reduced).abs().mean().item())
        # The same crop: the images agree far better than two different crops of the same photo would.
        torch.manual_seed(seed + 1000)
        other_box = transform.crop.params(opened)
        torch.manual_seed(seed)
        if other_box != transform.crop.params(opened):
            torch.manual_seed(seed + 1000)
            other = transform(read_image(data))
            assert diffs[-1] < 0.5 * (exact - other).abs().mean().item()
    assert used >= 20  # most of these crops are at least twice the target: the reduced path really ran
    assert max(diffs) < 0.08 and np.mean(diffs) < 0.04  # normalized units: about one grey level on average


def test_crop_statistics_match_open_clips_transform():
    """Over many crops of many photos, per-channel mean and spread of clipforge's pipeline output (reduced
    decoding) equal open_clip's training transform on fully decoded images."""
    open_clip = require("open_clip")
    reference = open_clip.image_transform(64, is_train=True)
    transform = create_train_transform(CFG)
    ours, theirs = [], []
    for seed in range(40):
        data = _photo(256 + 11 * seed, 700 - 7 * seed, seed)
        torch.manual_seed(seed)
        theirs.append(reference(Image.open(io.BytesIO(data)).convert("RGB")))
        counts = new_counts()
        image, _ = prepare_sample(RawSample(data, "a photo"), transform, seed, counts)
        ours.append(image)
    ours, theirs = torch.stack(ours), torch.stack(theirs)  # (N, 3, H, W)
    for dims in [(0, 2, 3), (2, 3)]:  # per channel over the set, and per image and channel
        assert torch.allclose(ours.mean(dims), theirs.mean(dims), atol=0.02)
        assert torch.allclose(ours.std(dims), theirs.std(dims), rtol=0.03)


@pytest.mark.parametrize("case", ["png", "small-jpeg", "cmyk-jpeg", "switched-off"])
def test_everything_else_is_exactly_the_full_decode(case):
    aug = AugmentConfig(reduced_decode=case != "switched-off")
    transform = create_train_transform(CFG, aug)
    size = (90, 100) if case == "small-jpeg" else (400, 500)  # a crop under twice 64 px: no reduction
    data = _photo(*size, seed=3, mode="CMYK" if case == "cmyk-jpeg" else "RGB",
                  fmt="PNG" if case == "png" else "JPEG")
    for seed in range(4):
        exact, reduced = _both(transform, data, seed)
        assert torch.equal(exact, reduced)


def test_grayscale_jpegs_are_reduced_and_come_out_rgb():
    transform = create_train_transform(CFG)
    exact, reduced = _both(transform, _photo(500, 400, seed=4, mode="L"), seed=0)
    mean, std = torch.tensor(CFG.mean)[:, None, None], torch.tensor(CFG.std)[:, None, None]
    pixels = reduced * std + mean  # (3, H, W) back in [0, 1]: three equal channels
    assert reduced.shape == (3, 64, 64) and torch.allclose(pixels[0], pixels[1], atol=1e-5)
    assert (exact - reduced).abs().mean() < 0.05


def test_a_truncated_large_jpeg_is_skipped_and_counted():
    transform = create_train_transform(CFG)
    data = _photo(600, 500, seed=5)
    with pytest.raises(ImageReadError) as info:
        read_image(data[: len(data) // 2], decode=transform.decode)
    assert info.value.kind == "undecodable"
    counts = new_counts()
    assert prepare_sample(RawSample(data[: len(data) // 2], "a photo"), transform, 0, counts) is None
    assert counts["corrupt_images"] == 1


def test_reduced_decode_is_checked_in_the_config():
    from clipforge.config import ConfigError

    with pytest.raises(ConfigError, match="reduced_decode must be true or false"):
        AugmentConfig(reduced_decode="yes")
