import math

import pytest
import torch
import torch.nn.functional as F

from clipforge.config import ConfigError, apply_overrides, from_dict, to_dict
from clipforge.losses import (
    CLIP_LOGIT_SCALE_INIT, LossConfig, TeacherOutputs, clamp_logit_scale_, clip_loss, create_loss,
    initial_logit_params, siglip_loss,
)
from clipforge.losses import config as loss_config


def _features(n, d=8):
    return F.normalize(torch.randn(n, d), dim=-1), F.normalize(torch.randn(n, d), dim=-1)


def test_config_round_trip_and_overrides():
    cfg = from_dict(LossConfig, {"kind": "siglip", "tiled": True, "tile_size": 512})
    assert from_dict(LossConfig, to_dict(cfg)) == cfg
    assert apply_overrides(cfg, ["tiled=auto", "gather=local"]).tiled == "auto"
    assert apply_overrides(cfg, ["tiled=false"]).tiled is False


@pytest.mark.parametrize("data,match", [
    ({"kind": "softmax"}, "kind"),
    ({"tiled": "sometimes"}, "tiled"),
    ({"tile_size": 0}, "tile_size"),
    ({"kind": "distill", "tiled": True}, "no tiled form"),
    ({"distill_weight": -1.0}, "weight"),
    ({"tile": 4}, "unknown config key"),
])
def test_config_rejects_bad_values(data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(LossConfig, data)


def test_auto_tiling_switches_on_global_batch(monkeypatch):
    loss = create_loss(LossConfig(tiled="auto", tiled_min_batch=8))
    assert not loss.uses_tiling(7) and loss.uses_tiling(8)
    calls = []
    monkeypatch.setattr(loss_config, "tiled_clip_loss", lambda *a, **k: calls.append("tiled") or clip_loss(*a[:3]))
    images, texts = _features(8)
    out = loss(images, texts, 10.0)
    assert calls == ["tiled"] and set(out) == {"loss", "contrastive"}
    assert create_loss(LossConfig(tiled=False)).uses_tiling(10**6) is False


@pytest.mark.parametrize("tiled", [True, False])
def test_create_loss_clip_and_siglip_values(tiled):
    images, texts = _features(6)
    out = create_loss(LossConfig(kind="clip", tiled=tiled, tile_size=4))(images, texts, 10.0)
    assert torch.allclose(out["loss"], clip_loss(images, texts, 10.0), rtol=1e-6)
    out = create_loss(LossConfig(kind="siglip", tiled=tiled, tile_size=4))(images, texts, 10.0, -10.0)
    assert torch.allclose(out["loss"], siglip_loss(images, texts, 10.0, -10.0), rtol=1e-6)
    with pytest.raises(ValueError, match="logit_bias"):
        create_loss(LossConfig(kind="siglip", tiled=tiled))(images, texts, 10.0)


def test_create_loss_distill_weights():
    images, texts = _features(5)
    teacher = TeacherOutputs(*_features(5), 30.0)
    out = create_loss(LossConfig(kind="distill", contrastive_weight=0.5, distill_weight=2.0))(
        images, texts, 10.0, teacher=teacher)
    assert set(out) == {"loss", "contrastive", "distill"}
    assert torch.allclose(out["loss"], 0.5 * out["contrastive"] + 2.0 * out["distill"])


def test_create_loss_rejects_non_config_and_bad_rank():
    with pytest.raises(TypeError, match="LossConfig"):
        create_loss({"kind": "clip"})
    with pytest.raises(ValueError, match="rank"):
        create_loss(LossConfig(), rank=2, world_size=2)


def test_initial_values_and_clamp():
    assert initial_logit_params("clip") == (pytest.approx(math.log(1 / 0.07)), None)
    assert initial_logit_params("siglip") == (pytest.approx(math.log(10.0)), -10.0)
    with pytest.raises(ValueError, match="kind"):
        initial_logit_params("mse")
    param = torch.nn.Parameter(torch.tensor(CLIP_LOGIT_SCALE_INIT + 10.0))
    clamp_logit_scale_(param)
    assert param.exp().item() == pytest.approx(100.0)
