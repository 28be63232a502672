"""Transformer feed-forward block and the activations CLIP variants use."""
from __future__ import annotations

import torch
from torch import nn

from clipforge.layers.fused import linear_act, linear_add, linear_applies

ACTIVATIONS = ("gelu", "quick_gelu", "gelu_tanh")


class QuickGELU(nn.Module):
    """The sigmoid approximation of GELU that OpenAI's CLIP weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def create_act(name: str) -> nn.Module:
    """Activation module for ``name`` in ``ACTIVATIONS``."""
    if name == "gelu":
        return nn.GELU()
    if name == "gelu_tanh":
        return nn.GELU(approximate="tanh")
    if name == "quick_gelu":
        return QuickGELU()
    raise ValueError(f"unknown activation '{name}'; use one of {', '.join(ACTIVATIONS)}")


def mlp_hidden(width: int, ratio: float) -> int:
    """Hidden width int(width * ratio); the epsilon absorbs float error of ratios computed as hidden / width."""
    return int(width * ratio + 1e-4)


class Mlp(nn.Module):
    """fc1 -> activation -> fc2."""

    def __init__(self, width: int, hidden: int, act: str = "gelu"):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act_name = act
        self.act = create_act(act)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))

    def forward_add(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``residual + forward(x)``, with bias, activation and the add fused into the GEMMs where possible."""
        if not (linear_applies(x, self.fc1, self.fc2) and residual.dtype == torch.float32):
            return residual + self.forward(x)
        hidden = linear_act(x, self.fc1, self.act_name)
        if hidden is None:  # no fused form of this activation
            hidden = self.act(linear_act(x, self.fc1))
        return linear_add(hidden, self.fc2, residual)
