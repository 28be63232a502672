"""Tiled losses against the dense references: loss and every gradient, fp32, odd/even batches, ragged tiles."""
import math

import pytest
import torch
import torch.nn.functional as F

from clipforge.losses import clip_loss, siglip_loss, tiled_clip_loss, tiled_siglip_loss
from clipforge.losses.tiled import _tile_lse, default_tile_size


def _run(loss_fn, images, texts, log_scale, bias, **kwargs):
    """Loss and gradients w.r.t. features, the log-scale parameter (through exp) and the bias."""
    images, texts = images.clone().requires_grad_(), texts.clone().requires_grad_()
    log_scale = torch.tensor(log_scale, dtype=images.dtype, requires_grad=True)
    bias = torch.tensor(bias, dtype=images.dtype, requires_grad=True)
    with_bias = "siglip" in getattr(loss_fn, "__name__", "") or getattr(loss_fn, "with_bias", False)
    args = (images, texts, log_scale.exp()) + ((bias,) if with_bias else ())
    loss = loss_fn(*args, **kwargs)
    loss.backward()
    return {"loss": loss.detach(), "images": images.grad, "texts": texts.grad, "log_scale": log_scale.grad,
            "bias": bias.grad}


def _assert_matches(got, ref, rtol):
    for name, value in ref.items():
        if value is None:
            assert got[name] is None, name
            continue
        err = (got[name].double() - value.double()).abs().max().item()
        size = value.double().abs().max().item()
        # Relative to the tensor's largest entry, with a floor of rtol in units of an O(1) loss: the scale and
        # bias gradients are sums with cancellation, and a batch of 1 has loss and feature gradients exactly 0.
        floor = rtol * max(abs(ref["loss"].item()), 1.0)
        assert err <= rtol * size + floor, f"{name}: max abs diff {err:.3g} vs size {size:.3g}"


def _features(n, d, norm=1.0, dtype=torch.float32):
    make = lambda: F.normalize(torch.randn(n, d, dtype=torch.float64), dim=-1) * norm  # noqa: E731
    return make().to(dtype), make().to(dtype)


PAIRS = [(clip_loss, tiled_clip_loss), (siglip_loss, tiled_siglip_loss)]
CASES = [  # (batch, tile, log_scale, feature norm)
    (1, 4, math.log(1 / 0.07), 1.0),
    (7, 3, math.log(1 / 0.07), 1.0),
    (16, 5, math.log(100.0), 1.0),   # the CLIP clamp
    (33, 8, math.log(1e-2), 1.0),    # nearly uniform softmax
    (24, 24, math.log(100.0), 3.0),  # logits up to +-900: subnormal terms inside a tile
    (20, 64, 0.0, 1.0),              # one tile bigger than the batch
]


@pytest.mark.parametrize("dense,tiled", PAIRS, ids=["clip", "siglip"])
@pytest.mark.parametrize("n,tile,log_scale,norm", CASES)
def test_tiled_equals_dense_fp32(dense, tiled, n, tile, log_scale, norm):
    images, texts = _features(n, 16, norm)
    ref = _run(dense, images.double(), texts.double(), log_scale, -10.0)  # the float64 truth
    got = _run(tiled, images, texts, log_scale, -10.0, tile_size=tile)
    _assert_matches(got, ref, rtol=1e-5)
    # and fp32 dense is no closer to the truth than the tiled loss by more than rounding
    dense32 = _run(dense, images, texts, log_scale, -10.0)
    _assert_matches(got, {k: v for k, v in dense32.items()}, rtol=2e-5)


@pytest.mark.parametrize("dense,tiled", PAIRS, ids=["clip", "siglip"])
def test_tiled_equals_dense_fp64_tightly(dense, tiled):
    images, texts = _features(19, 12, dtype=torch.float64)
    _assert_matches(_run(tiled, images, texts, 2.0, -5.0, tile_size=4),
                    _run(dense, images, texts, 2.0, -5.0), rtol=1e-10)


def test_siglip_without_bias_matches_dense():
    images, texts = _features(9, 8)
    got = tiled_siglip_loss(images, texts, 10.0, None, tile_size=4)
    assert torch.allclose(got, siglip_loss(images, texts, 10.0, None), rtol=1e-6)


def test_tile_lse_recovers_columns_far_below_the_tile_max():
    logits = torch.tensor([[0.0, -200.0, 5.0], [-300.0, -250.0, 1.0]])  # column 1 lies ~200 below the max
    rows, cols = _tile_lse(logits)
    assert torch.allclose(rows, torch.logsumexp(logits, dim=1), rtol=1e-6)
    assert torch.allclose(cols, torch.logsumexp(logits, dim=0), rtol=1e-6)


def test_bf16_features_run_with_fp32_accumulation():
    images, texts = _features(10, 16)
    ref = clip_loss(images, texts, 20.0)
    got = tiled_clip_loss(images.bfloat16(), texts.bfloat16(), 20.0, tile_size=4)
    assert got.dtype == torch.float32
    assert abs(got.item() - ref.item()) < 0.05 * abs(ref.item())


def test_default_tile_size_per_device_and_bad_tile():
    assert default_tile_size("cpu") > 0 and default_tile_size("cuda") >= default_tile_size("cpu")
    images, texts = _features(4, 8)
    with pytest.raises(ValueError, match="tile_size"):
        tiled_clip_loss(images, texts, 10.0, tile_size=0)


@pytest.mark.parametrize("dense,tiled", PAIRS, ids=["clip", "siglip"])
def test_output_gradient_is_honoured(dense, tiled):
    """Backward scales by the incoming gradient (loss weights, AMP loss scaling), not just by one."""
    images, texts = _features(11, 8)
    def weighted(fn):
        def loss(*args, **kwargs):
            return -2.5 * fn(*args, **kwargs)
        loss.with_bias = fn in (siglip_loss, tiled_siglip_loss)
        return loss
    _assert_matches(_run(weighted(tiled), images, texts, 3.0, -4.0, tile_size=4),
                    _run(weighted(dense), images.double(), texts.double(), 3.0, -4.0), rtol=1e-5)


def test_one_element_scale_parameter_gets_its_gradient():
    images, texts = _features(6, 8)
    for loss_fn, extra in ((tiled_clip_loss, ()), (tiled_siglip_loss, (torch.tensor([-10.0]),))):
        log_scale = torch.full((1,), 2.0, requires_grad=True)  # some checkpoints store it with shape (1,)
        loss_fn(images, texts, log_scale.exp(), *extra, tile_size=4).backward()
        assert log_scale.grad.shape == (1,) and torch.isfinite(log_scale.grad).all()
