import math

import pytest
import torch

from clipforge.training.config import OptimConfig, ScheduleConfig
from clipforge.training.optim import create_optimizer, lr_factor, param_groups


class _Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 3)           # weight decays, bias does not
        self.norm = torch.nn.LayerNorm(3)           # gains and biases do not
        self.class_embedding = torch.nn.Parameter(torch.zeros(4))
        self.logit_scale = torch.nn.Parameter(torch.tensor(2.0))
        self.pos = torch.nn.Parameter(torch.zeros(5, 4))


def test_weight_decay_rule():
    model = _Toy()
    no_decay, decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in decay["params"]) == ["pos", "proj.weight"]
    assert sorted(names[id(p)] for p in no_decay["params"]) == [
        "class_embedding", "logit_scale", "norm.bias", "norm.weight", "proj.bias"]
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1


def test_locked_model_is_a_clear_error():
    model = _Toy().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        create_optimizer(model, OptimConfig())


@pytest.mark.parametrize("kind", ["cosine", "linear", "const"])
def test_schedules(kind):
    cfg = ScheduleConfig(kind=kind, steps=110, warmup_steps=10)
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == pytest.approx(1.0)
    mid = lr_factor(60, cfg)
    expected = {"cosine": 0.5 * (1 + math.cos(math.pi * 0.5)), "linear": 0.5, "const": 1.0}[kind]
    assert mid == pytest.approx(expected)
    assert lr_factor(110, cfg) == pytest.approx(0.0 if kind != "const" else 1.0)


def test_fused_adamw_is_the_default_and_equals_the_plain_update():
    """The fused kernel (the default where it applies) gives the plain loop's parameters to rounding after several
    steps with weight decay, warm-up-sized learning rates and a 0-d temperature."""
    results = {}
    for fused in (None, False):
        torch.manual_seed(0)
        model = _Toy()
        optimizer = create_optimizer(model, OptimConfig(lr=1e-2, weight_decay=0.1, fused=fused))
        assert optimizer.defaults["fused"] is (fused is None)
        gen = torch.Generator().manual_seed(1)
        for _ in range(5):
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=gen)
            optimizer.step()
        results[fused] = {n: p.detach().clone() for n, p in model.named_parameters()}
    for name, value in results[False].items():
        torch.testing.assert_close(results[None][name], value, rtol=1e-6, atol=1e-7, msg=name)


def test_fused_applies_to_plain_cpu_tensors_only():
    """(FSDP2's sharded parameters take the plain update: tests/training/test_dist_*.py run through it.)"""
    from clipforge.training.optim import fused_applies

    assert fused_applies([torch.zeros(2), torch.zeros(2, dtype=torch.bfloat16)])
    assert not fused_applies([torch.zeros(2, device="meta")]) and not fused_applies([torch.zeros(2).long()])


@pytest.mark.parametrize("fused", [False, True])
def test_moments_saved_in_another_memory_layout_follow_the_parameter(fused):
    """A checkpoint's AdamW moments in NCHW loaded for NHWC weights: without matching the layouts the fused kernel
    pairs each weight with another weight's moments; after ``match_state_layout`` the step equals the plain one."""
    from clipforge.training.optim import match_state_layout

    torch.manual_seed(0)
    weight, grad = torch.randn(8, 4, 3, 3), torch.randn(8, 4, 3, 3)

    def resumed_step(saved_layout, match):
        param = torch.nn.Parameter(weight.clone())
        first = torch.optim.AdamW([param], lr=0.1, fused=fused)
        param.grad = grad.clone()
        first.step()
        state = first.state_dict()
        for key in ("exp_avg", "exp_avg_sq"):
            state["state"][0][key] = state["state"][0][key].contiguous(memory_format=saved_layout)
        nhwc = torch.nn.Parameter(param.detach().contiguous(memory_format=torch.channels_last))
        second = torch.optim.AdamW([nhwc], lr=0.1, fused=fused)
        second.load_state_dict(state)
        copied = match_state_layout(second) if match else 0
        nhwc.grad = (grad * 0.5).contiguous(memory_format=torch.channels_last)
        second.step()
        return nhwc.detach(), copied

    expected, copied = resumed_step(torch.channels_last, match=True)
    assert copied == 0
    unmatched, _ = resumed_step(torch.contiguous_format, match=False)
    matched, copied = resumed_step(torch.contiguous_format, match=True)
    assert copied == 2
    torch.testing.assert_close(matched, expected, atol=1e-6, rtol=1e-6)
    if fused:  # the fused kernel walks storage order: the unmatched resume is silently wrong
        assert (unmatched - expected).abs().max() > 1e-3
