"""Pre-norm residual transformer block and the block stack both towers share."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from clipforge.layers.attention import Attention
from clipforge.layers.mlp import Mlp, mlp_hidden
from clipforge.layers.norm import LayerNorm
from clipforge.layers.regularize import LayerScale


class Block(nn.Module):
    """x + attn(norm1(x)), then x + mlp(norm2(x)); optional layer scale on both branches."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float, act: str,
                 norm_eps: float = 1e-5, layer_scale_init: float | None = None):
        super().__init__()
        self.norm1 = LayerNorm(width, eps=norm_eps)
        self.attn = Attention(width, num_heads)
        self.ls1 = LayerScale(width, layer_scale_init) if layer_scale_init is not None else nn.Identity()
        self.norm2 = LayerNorm(width, eps=norm_eps)
        self.mlp = Mlp(width, mlp_hidden(width, mlp_ratio), act)
        self.ls2 = LayerScale(width, layer_scale_init) if layer_scale_init is not None else nn.Identity()

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal))
        return x + self.ls2(self.mlp(self.norm2(x)))


class Transformer(nn.Module):
    """A stack of ``depth`` blocks with an optional activation-checkpointing switch."""

    def __init__(self, width: int, depth: int, num_heads: int, mlp_ratio: float, act: str,
                 norm_eps: float = 1e-5, layer_scale_init: float | None = None):
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(width, num_heads, mlp_ratio, act, norm_eps, layer_scale_init) for _ in range(depth))
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, attn_mask, is_causal, use_reentrant=False)
            else:
                x = block(x, attn_mask=attn_mask, is_causal=is_causal)
        return x
