import math

import pytest
from references import require
import torch
import torch.nn.functional as F

from clipforge.losses import clip_loss, siglip_loss
from clipforge.losses.tiled import tiled_clip_loss, tiled_siglip_loss

from _naive import naive_clip, naive_siglip


def _features(n, d=8):
    return F.normalize(torch.randn(n, d), dim=-1), F.normalize(torch.randn(n, d), dim=-1)


@pytest.mark.parametrize("n", [1, 5, 8])
@pytest.mark.parametrize("scale", [1.0, 1 / 0.07, 100.0])
def test_clip_loss_matches_naive_loop(n, scale):
    images, texts = _features(n)
    assert clip_loss(images, texts, scale).item() == pytest.approx(naive_clip(images, texts, scale), rel=1e-5)


@pytest.mark.parametrize("n", [1, 5, 8])
@pytest.mark.parametrize("scale,bias", [(10.0, -10.0), (1.0, 0.0), (100.0, -3.0)])
def test_siglip_loss_matches_naive_loop(n, scale, bias):
    images, texts = _features(n)
    got = siglip_loss(images, texts, scale, bias).item()
    assert got == pytest.approx(naive_siglip(images, texts, scale, bias), rel=1e-5)


def test_dense_losses_match_open_clip():
    open_clip_loss = require("open_clip.loss")
    images, texts = _features(12, 16)
    scale, bias = torch.tensor(14.3), torch.tensor(-7.0)
    ref = open_clip_loss.ClipLoss()(images, texts, scale)
    assert torch.allclose(clip_loss(images, texts, scale), ref, rtol=1e-6)
    ref = open_clip_loss.SigLipLoss()(images, texts, scale, bias)
    assert torch.allclose(siglip_loss(images, texts, scale, bias), ref, rtol=1e-6)


def test_temperature_gradient_flows_through_exponentiated_scale():
    images, texts = _features(6)
    log_scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)
    clip_loss(images, texts, log_scale.exp()).backward()
    # finite difference on the log-scale parameter, in float64
    eps = 1e-4
    up = naive_clip(images, texts, math.exp(log_scale.item() + eps))
    down = naive_clip(images, texts, math.exp(log_scale.item() - eps))
    assert log_scale.grad.item() == pytest.approx((up - down) / (2 * eps), rel=1e-3, abs=1e-6)


LOSSES = [
    lambda i, t, s: clip_loss(i, t, s),
    lambda i, t, s: siglip_loss(i, t, s, -10.0),
    lambda i, t, s: tiled_clip_loss(i, t, s, tile_size=3),
    lambda i, t, s: tiled_siglip_loss(i, t, s, -10.0, tile_size=3),
]


@pytest.mark.parametrize("loss", LOSSES)
def test_bad_input_gives_clear_errors(loss):
    images, texts = _features(4)
    with pytest.raises(ValueError, match="batch mismatch"):
        loss(images, texts[:3], 10.0)
    with pytest.raises(ValueError, match="dimension mismatch"):
        loss(images, torch.randn(4, 5), 10.0)
    with pytest.raises(ValueError, match=r"shape \(batch, dim\)"):
        loss(images[0], texts[0], 10.0)
    bad = images.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="non-finite.*image_features"):
        loss(bad, texts, 10.0)
    with pytest.raises(ValueError, match="non-finite.*logit_scale"):
        loss(images, texts, float("inf"))
    with pytest.raises(ValueError, match="positive"):
        loss(images, texts, -1.0)
    with pytest.raises(ValueError, match="one value"):
        loss(images, texts, torch.ones(2))


def test_non_finite_bias_is_named():
    images, texts = _features(4)
    with pytest.raises(ValueError, match="logit_bias"):
        siglip_loss(images, texts, 10.0, float("nan"))
