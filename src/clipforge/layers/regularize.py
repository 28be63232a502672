"""Training-time regularisers: patch dropout and layer scale."""
from __future__ import annotations

import torch
from torch import nn


class PatchDropout(nn.Module):
    """Keep a random subset of patch tokens while training (FLIP, https://arxiv.org/abs/2212.00794).

    ``num_prefix_tokens`` leading tokens (the class token) are always kept. Identity in eval mode.
    """

    def __init__(self, prob: float, num_prefix_tokens: int = 1):
        super().__init__()
        if not 0.0 <= prob < 1.0:
            raise ValueError(f"patch dropout probability must be in [0, 1), got {prob}")
        self.prob = prob
        self.num_prefix_tokens = num_prefix_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.prob == 0.0:
            return x
        prefix, patches = x[:, :self.num_prefix_tokens], x[:, self.num_prefix_tokens:]
        batch, num_patches, width = patches.shape
        num_keep = max(1, int(num_patches * (1.0 - self.prob)))
        keep = torch.rand(batch, num_patches, device=x.device).topk(num_keep, dim=-1).indices
        patches = patches.gather(1, keep.unsqueeze(-1).expand(-1, -1, width))  # (B, keep, D)
        return torch.cat([prefix, patches], dim=1)


class LayerScale(nn.Module):
    """Per-channel learnable residual scale (CaiT)."""

    def __init__(self, width: int, init_value: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((width,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma
