"""The training loop end to end on a tiny model: resume, accumulation, a hand-checked step, the NaN guard."""
import json
import math

import pytest
import torch

from clipforge.config import apply_overrides
from clipforge.losses.config import LossConfig, create_loss
from clipforge.models.factory import create_model
from clipforge.training.config import OptimConfig, TrainConfig
from clipforge.training.loop import NonFiniteLossError, train
from clipforge.training.optim import create_optimizer
from clipforge.training.step import _accumulated_backward, train_step


def _tiny(tmp_path, name="run", **over):
    base = {"workdir": str(tmp_path / name), "model.name": "tiny-vit", "data.kind": "synthetic",
            "data.num_samples": 48, "data.batch_size": 8, "schedule.steps": 6, "schedule.warmup_steps": 2,
            "checkpoint.every_steps": 3, "log.every_steps": 1, "log.progress": False, "optim.lr": 1e-3}
    base.update(over)
    return apply_overrides(TrainConfig(), base)


def _losses(workdir):
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


class _Stop(Exception):
    pass


@pytest.mark.parametrize("arch", ["tiny-vit", "tiny-resnet"])  # the ResNet trains in NHWC (channels_last auto)
def test_resume_mid_epoch_gives_the_same_curve(tmp_path, arch):
    full = train(_tiny(tmp_path, "full", **{"model.name": arch}))
    assert full.steps == 6

    def crash(model, step):
        raise _Stop  # simulates a killed job right after the step-3 checkpoint

    interrupted = _tiny(tmp_path, "resumed", **{"eval.every_steps": 3, "model.name": arch})
    with pytest.raises(_Stop):
        train(interrupted, evaluate=crash)
    resumed = train(_tiny(tmp_path, "resumed", **{"model.name": arch}))
    assert resumed.steps == 6
    a, b = _losses(tmp_path / "full"), _losses(tmp_path / "resumed")
    assert sorted(a) == [1, 2, 3, 4, 5, 6]
    for step in range(1, 7):
        assert b[step] == pytest.approx(a[step], rel=1e-6, abs=1e-7), step
    assert (tmp_path / "resumed" / "config.json").exists()


def test_resnet_run_started_in_nchw_resumes_in_nhwc(tmp_path, monkeypatch):
    """A ResNet run begun with model.channels_last=false (as every run before NHWC became the default) resumes under
    the default: the layout may change on resume, the AdamW moments follow the weights, and the curve stays the
    uninterrupted run's to float rounding."""
    from clipforge.training import loop

    full = train(_tiny(tmp_path, "full", **{"model.name": "tiny-resnet", "model.channels_last": False}))
    start = _tiny(tmp_path, "switched", **{"model.name": "tiny-resnet", "model.channels_last": False,
                                           "schedule.steps": 3})
    train(start)
    copied = []
    real = loop.match_state_layout
    monkeypatch.setattr(loop, "match_state_layout", lambda optimizer: copied.append(real(optimizer)) or copied[-1])
    resumed = train(_tiny(tmp_path, "switched", **{"model.name": "tiny-resnet"}))
    assert copied and copied[0] > 0  # the resumed run did switch to NHWC: moments of 4-D weights were moved
    assert resumed.steps == full.steps == 6
    a, b = _losses(tmp_path / "full"), _losses(tmp_path / "switched")
    for step in range(1, 7):
        assert b[step] == pytest.approx(a[step], rel=1e-4, abs=1e-6), step


def test_accumulation_gives_the_large_batch_gradient():
    torch.manual_seed(0)
    model = create_model("tiny-vit")
    loss_fn = create_loss(LossConfig(tiled=False))
    images, tokens = torch.randn(8, 3, 32, 32), torch.randint(1, 1000, (8, 16))
    out = model(images, tokens, output_dict=True)
    loss_fn(out["image_features"], out["text_features"], out["logit_scale"])["loss"].backward()
    full = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    _accumulated_backward(model, images, tokens, loss_fn, accum_steps=4, precision="fp32", scaler=None)
    for name, grad in full.items():
        torch.testing.assert_close(model.get_parameter(name).grad, grad, rtol=1e-5,
                                   atol=1e-5 * float(grad.abs().max()), msg=name)
    assert full["logit_scale"].abs() > 0


def test_one_step_matches_a_hand_computed_update():
    torch.manual_seed(0)
    model = create_model("tiny-vit")
    images, tokens = torch.randn(4, 3, 32, 32), torch.randint(1, 1000, (4, 16))
    with torch.no_grad():
        img = model.encode_image(images, normalize=True)
        txt = model.encode_text(tokens, normalize=True)
        scale = model.logit_scale.exp()
    before = model.logit_scale.detach().clone()
    # d/d(log scale) of the symmetric cross-entropy, written out by hand
    logits = scale * img @ txt.T
    p_i, p_t = logits.softmax(1), logits.T.softmax(1)
    eye = torch.eye(4)
    grad = 0.5 * (((p_i - eye) * logits).sum() + ((p_t - eye) * logits.T).sum()) / 4
    expected_loss = 0.5 * (torch.nn.functional.cross_entropy(logits, torch.arange(4))
                           + torch.nn.functional.cross_entropy(logits.T, torch.arange(4)))
    cfg = OptimConfig(lr=0.1, weight_decay=0.0, beta1=0.9, beta2=0.98, eps=1e-6)
    optimizer = create_optimizer(model, cfg)
    out = train_step(model, images, tokens, create_loss(LossConfig(tiled=False)), optimizer)
    assert out.loss == pytest.approx(float(expected_loss), rel=1e-5)
    # AdamW's first step moves every parameter by lr * g / (|g| + eps) (bias-corrected moments)
    step = 0.1 * float(grad) / (abs(float(grad)) + 1e-6)
    assert float(model.logit_scale.detach()) == pytest.approx(float(before) - step, rel=1e-5)


def test_non_finite_losses_skip_then_stop(tmp_path):
    model = create_model("tiny-vit")
    optimizer = create_optimizer(model, OptimConfig())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def nan_loss(*args, **kwargs):
        return {"loss": args[0].sum() * float("nan")}

    out = train_step(model, torch.randn(2, 3, 32, 32), torch.randint(1, 99, (2, 16)), nan_loss, optimizer)
    assert out.skipped and math.isnan(out.loss)
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]), name
    cfg = _tiny(tmp_path, **{"optim.lr": float("inf"), "checkpoint.max_nonfinite": 2, "schedule.warmup_steps": 0})
    with pytest.raises(NonFiniteLossError, match="non-finite losses in a row"):
        train(cfg)


@pytest.mark.parametrize("over, needle", [
    ({"model.name": "tiny-vitt"}, "Closest: tiny-vit"),
    ({"optim.accum_steps": 3}, "not divisible by optim.accum_steps=3"),
    ({"loss.kind": "siglip"}, "needs a model with a learned logit bias"),
    ({"loss.kind": "distill"}, "model.teacher go together"),
    ({"data.kind": "csv", "data.train": "/nonexistent/train.tsv"}, "nonexistent"),
])
def test_bad_runs_fail_before_any_work(tmp_path, over, needle):
    with pytest.raises((ValueError, FileNotFoundError), match=needle):
        train(_tiny(tmp_path, **over))
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("over", [
    {"model.name": "tiny-siglip", "loss.kind": "siglip",  # SigLIP's hub tokenizer is not reachable offline
     "model.overrides": {"tokenizer": "clip", "tokenizer_clean": None, "text.vocab_size": 49408}},
    {"loss.kind": "distill", "model.teacher": "tiny-vit"},
    {"tokenize.reduction": "random", "tokenize.context_length": 8, "data.text_mask_prob": 0.2},
    {"optim.accum_steps": 2, "model.grad_checkpointing": True, "model.overrides": {"vision.patch_dropout": 0.5}},
    {"model.lock_image": True, "model.lock_image_unlocked_groups": 1},
])
def test_recipes_train(tmp_path, over):
    result = train(_tiny(tmp_path, **{"schedule.steps": 2, "checkpoint.every_steps": 0, **over}))
    assert result.steps == 2 and math.isfinite(result.final_loss) and result.checkpoint.exists()
