"""uint8 batches normalised on the device (``data.uint8_images``): the same numbers as normalising each image in
the workers, so switching it changes nothing but where the work happens."""
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from clipforge.config import ConfigError, apply_overrides
from clipforge.training.config import TrainConfig
from clipforge.training.data import DataConfig
from clipforge.training.data.batch import seeded
from clipforge.training.loop import train
from clipforge.transforms import (AugmentConfig, BatchNormalizer, PreprocessConfig, ToNormalizedArray,
                                  ToNormalizedTensor, create_train_transform)

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def test_every_pixel_value_normalises_to_the_per_image_table():
    levels = torch.arange(256, dtype=torch.uint8).repeat(3, 1).view(1, 3, 16, 16)
    out = BatchNormalizer(MEAN, STD)(levels)
    assert out.dtype == torch.float32
    assert torch.equal(out.view(3, 256), torch.from_numpy(ToNormalizedArray(MEAN, STD).table))


@pytest.mark.parametrize("one_kernel", [False, True])  # the CPU's per-image lookups; an accelerator's one kernel
def test_a_batch_equals_the_stacked_per_image_tensors(one_kernel):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (20, 17, 3), dtype=np.uint8)) for _ in range(3)]
    per_image = torch.stack([ToNormalizedTensor(MEAN, STD)(img) for img in images])
    batch = torch.stack([torch.from_numpy(np.array(img)).permute(2, 0, 1) for img in images])
    assert torch.equal(BatchNormalizer(MEAN, STD)(batch, one_kernel=one_kernel), per_image)


def _jpeg(size, seed):
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize("aug", [AugmentConfig(), AugmentConfig(hflip=0.5, color_jitter=0.4, grayscale=0.2,
                                                                   randaugment=(2, 9))])
def test_the_uint8_transform_then_the_batch_normaliser_equals_the_float_transform(aug):
    cfg = PreprocessConfig(image_size=32)
    floats, uint8 = create_train_transform(cfg, aug), create_train_transform(cfg, aug, uint8=True)
    assert floats.batch_normalizer is None and uint8.batch_normalizer is not None
    sources = [_jpeg((96, 80), 1), _jpeg((40, 40), 2), _jpeg((300, 200), 3)]  # the last is decoded at reduced size
    expected, pixels = [], []
    for seed, data in enumerate(sources):
        for transform, out in ((floats, expected), (uint8, pixels)):
            with seeded(seed):
                out.append(transform.finish(transform.decode(Image.open(io.BytesIO(data)))))
    assert all(p.dtype == torch.uint8 for p in pixels)
    assert torch.equal(uint8.batch_normalizer(torch.stack(pixels)), torch.stack(expected))


def test_random_erasing_keeps_normalising_per_image():
    transform = create_train_transform(PreprocessConfig(image_size=32), AugmentConfig(re_prob=0.5), uint8=True)
    assert transform.batch_normalizer is None
    assert transform(Image.new("RGB", (40, 40))).dtype == torch.float32


def _run(tmp_path, name, uint8):
    over = {"workdir": str(tmp_path / name), "model.name": "tiny-vit", "data.kind": "synthetic",
            "data.num_samples": 32, "data.batch_size": 8, "schedule.steps": 3, "schedule.warmup_steps": 1, "checkpoint.every_steps": 0,
            "log.every_steps": 1, "log.progress": False, "optim.lr": 1e-3, "data.uint8_images": uint8}
    result = train(apply_overrides(TrainConfig(), over))
    losses = [json.loads(line)["loss"] for line in open(tmp_path / name / "metrics.jsonl") if '"loss"' in line]
    return losses, result


def test_training_with_uint8_batches_gives_the_same_run(tmp_path):
    with_uint8, result_a = _run(tmp_path, "uint8", True)
    without, result_b = _run(tmp_path, "float", False)
    assert len(with_uint8) == 3 and with_uint8 == without
    assert result_a.final_loss == result_b.final_loss


@pytest.mark.parametrize("value", [1, "on", None, "auto"])
def test_bad_uint8_images_values_are_refused(value):
    with pytest.raises(ConfigError, match="data.uint8_images must be true or false"):
        DataConfig(uint8_images=value)


def test_the_batch_normaliser_refuses_float_batches():
    with pytest.raises(ValueError, match=r"expects a uint8 \(B, 3, H, W\) batch"):
        BatchNormalizer(MEAN, STD)(torch.zeros(2, 3, 4, 4))
