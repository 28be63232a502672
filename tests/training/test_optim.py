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
