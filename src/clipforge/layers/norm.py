"""Layer normalisation that stays accurate in half precision."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 for fp16/bf16 inputs, cast back to the input dtype.

    fp16 LayerNorm statistics overflow on long sequences; upcasting costs little and keeps
    fp32 results bit-identical to ``nn.LayerNorm``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.float16, torch.bfloat16):
            weight = self.weight.float() if self.weight is not None else None
            bias = self.bias.float() if self.bias is not None else None
            out = F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)
            return out.to(x.dtype)
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that always normalises with its running statistics and never updates them.

    Same parameters and buffers as ``nn.BatchNorm2d`` (so state dicts are unchanged); ``freeze_batch_norm``
    swaps existing modules to this class in place.
    """

    def train(self, mode: bool = True):
        return super().train(False)


def freeze_batch_norm(module: nn.Module) -> None:
    """Turn every BatchNorm2d under ``module`` into a FrozenBatchNorm2d with frozen affine parameters."""
    for child in module.modules():
        if type(child) is nn.BatchNorm2d:
            child.__class__ = FrozenBatchNorm2d
            child.eval()
            child.requires_grad_(False)
