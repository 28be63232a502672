"""Gradient caching gives the gradient of one large batch, dropout included."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from clipforge.losses import clip_loss, tiled_siglip_loss
from clipforge.training.grad_cache import grad_cache_step


class TinyTower(nn.Module):
    def __init__(self, d_in, dropout):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, 16), nn.GELU(), nn.Dropout(dropout), nn.Linear(16, 8))

    def forward(self, x):
        return F.normalize(self.net(x), dim=-1)


class TinyClip(nn.Module):
    def __init__(self, dropout=0.3):
        super().__init__()
        self.visual, self.text = TinyTower(12, dropout), TinyTower(6, dropout)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))


def _grads(model):
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def _assert_close(got, ref, rtol=1e-5):
    for name in ref:
        err = (got[name] - ref[name]).abs().max() / ref[name].abs().max()
        assert err < rtol, f"{name}: relative error {err:.3g}"


def _loss_fn(model):
    return lambda i, t: clip_loss(i, t, model.logit_scale.exp())


@pytest.fixture
def batch():
    return torch.randn(22, 12), torch.randn(22, 6)


def test_equals_one_large_batch_without_dropout(batch):
    images, tokens = batch
    model = TinyClip(dropout=0.0)
    _loss_fn(model)(model.visual(images), model.text(tokens)).backward()
    ref = _grads(model)
    model.zero_grad()
    out = grad_cache_step(model.visual, model.text, images, tokens, _loss_fn(model), chunk_size=5)
    _assert_close(_grads(model), ref)
    assert not out["loss"].requires_grad


def test_dropout_masks_replayed_exactly(batch):
    images, tokens = batch
    model = TinyClip(dropout=0.3)
    # reference: the same chunked calls in the same order, all in one graph, one backward
    torch.manual_seed(7)
    image_features = torch.cat([model.visual(c) for c in images.split(4)])
    text_features = torch.cat([model.text(c) for c in tokens.split(4)])
    ref_loss = _loss_fn(model)(image_features, text_features)
    ref_loss.backward()
    ref, state_after = _grads(model), torch.get_rng_state()
    model.zero_grad()
    torch.manual_seed(7)
    out = grad_cache_step(model.visual, model.text, images, tokens, _loss_fn(model), chunk_size=4)
    _assert_close(_grads(model), ref)
    assert torch.allclose(out["loss"], ref_loss.detach())
    assert torch.equal(torch.get_rng_state(), state_after)  # randomness consumed once, as by the reference


def test_without_replayed_state_gradients_would_differ(batch):
    """Guards the test above: dropout is active, so a replay with fresh masks gives another gradient."""
    images, tokens = batch
    model = TinyClip(dropout=0.3)
    torch.manual_seed(7)
    _loss_fn(model)(model.visual(images), model.text(tokens)).backward()
    first = _grads(model)
    model.zero_grad()
    _loss_fn(model)(model.visual(images), model.text(tokens)).backward()
    assert (first["visual.net.0.weight"] - model.visual.net[0].weight.grad).abs().max() > 1e-4


def test_dict_loss_extra_parameters_and_siglip(batch):
    images, tokens = batch
    model = TinyClip(dropout=0.0)
    bias = nn.Parameter(torch.tensor(-10.0))

    def loss_fn(i, t):
        loss = tiled_siglip_loss(i, t, model.logit_scale.exp(), bias, tile_size=7)
        return {"loss": loss, "contrastive": loss}

    loss_fn(model.visual(images), model.text(tokens))["loss"].backward()
    ref = dict(_grads(model), bias=bias.grad.clone())
    model.zero_grad()
    bias.grad = None
    out = grad_cache_step(model.visual, model.text, images, tokens, loss_fn, chunk_size=6)
    _assert_close(dict(_grads(model), bias=bias.grad), ref)
    assert set(out) == {"loss", "contrastive"}


def test_bad_arguments(batch):
    images, tokens = batch
    model = TinyClip()
    with pytest.raises(ValueError, match="chunk_size"):
        grad_cache_step(model.visual, model.text, images, tokens, _loss_fn(model), chunk_size=0)
    with pytest.raises(ValueError, match="batch mismatch"):
        grad_cache_step(model.visual, model.text, images, tokens[:3], _loss_fn(model), chunk_size=4)
    with pytest.raises(ValueError, match="encode_image"):
        grad_cache_step(lambda x: x.sum(1), model.text, images, tokens, _loss_fn(model), chunk_size=4)
    with pytest.raises(ValueError, match="'loss'"):
        grad_cache_step(model.visual, model.text, images, tokens, lambda i, t: {"x": i.sum()}, chunk_size=4)


def test_scaler_and_no_sync_hooks(batch):
    images, tokens = batch
    model = TinyClip(dropout=0.0)
    grad_cache_step(model.visual, model.text, images, tokens, _loss_fn(model), chunk_size=8)
    ref = _grads(model)
    model.zero_grad()

    class Scaler:  # what GradScaler.scale does: multiply the loss
        def scale(self, loss):
            return loss * 4.0

    entered = []

    def no_sync():
        entered.append(1)
        return torch.enable_grad()  # any context manager that keeps autograd on

    grad_cache_step(model.visual, model.text, images, tokens, _loss_fn(model), chunk_size=8, scaler=Scaler(),
                    no_sync=no_sync)
    _assert_close(_grads(model), {k: 4.0 * v for k, v in ref.items()})
    assert len(entered) == 2 * 3 - 1  # every replayed chunk but the very last skips the all-reduce
