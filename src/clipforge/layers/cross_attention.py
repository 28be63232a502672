"""Cross-attention: queries from one sequence, keys and values from another (CoCa's decoder reading image tokens).

The projections are one packed (3D, D) linear like ``layers.attention.Attention`` (rows: q, k, v), so checkpoints
written with ``nn.MultiheadAttention``'s ``in_proj_weight`` map onto it directly.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from clipforge.layers.attention import Attention, split_heads
from clipforge.layers.fused import linear_rows
from clipforge.layers.mlp import Mlp, mlp_hidden
from clipforge.layers.norm import LayerNorm
from clipforge.layers.regularize import LayerScale


class CrossAttention(Attention):
    """x (B, Lq, D) attends over context (B, Lk, D): softmax(q k^T / sqrt(d)) v, then the output projection. The
    parameters are ``Attention``'s (packed q/k/v rows, output projection); only where q and k/v come from differs."""

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        width = x.shape[-1]
        q = linear_rows(x, self.qkv, slice(0, width))  # (B, Lq, D)
        k, v = linear_rows(context, self.qkv, slice(width, None)).chunk(2, dim=-1)  # 2 x (B, Lk, D)
        out = F.scaled_dot_product_attention(*(split_heads(t, self.num_heads) for t in (q, k, v)))  # (B, H, Lq, d)
        return self.proj(out.transpose(1, 2).reshape(x.shape))


class CrossAttentionBlock(nn.Module):
    """x + attn(norm1(x), norm_kv(context)), then x + mlp(norm2(x)); optional layer scale on both branches."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float, act: str, norm_eps: float = 1e-5,
                 layer_scale_init: float | None = None):
        super().__init__()
        self.norm1 = LayerNorm(width, eps=norm_eps)
        self.norm_kv = LayerNorm(width, eps=norm_eps)
        self.attn = CrossAttention(width, num_heads)
        self.ls1 = LayerScale(width, layer_scale_init) if layer_scale_init is not None else nn.Identity()
        self.norm2 = LayerNorm(width, eps=norm_eps)
        self.mlp = Mlp(width, mlp_hidden(width, mlp_ratio), act)
        self.ls2 = LayerScale(width, layer_scale_init) if layer_scale_init is not None else nn.Identity()

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), self.norm_kv(context)))
        return x + self.ls2(self.mlp(self.norm2(x)))
