"""Attention pooling with many learned queries (CoCa's attentional pooler).

``num_queries`` normalised queries of width ``width`` attend over normalised tokens of width ``context_width``; the
output is (B, num_queries, width) with no residual and no MLP. CoCa uses query 0 as the image feature and the
others as the image tokens its caption decoder reads.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from clipforge.layers.attention import split_heads
from clipforge.layers.norm import LayerNorm


class QueryPool(nn.Module):
    """tokens (B, N, context_width) -> pooled (B, num_queries, width)."""

    def __init__(self, width: int, context_width: int, num_heads: int, num_queries: int, norm_eps: float = 1e-5):
        super().__init__()
        if width % num_heads:
            raise ValueError(f"query pool width {width} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.query = nn.Parameter(torch.randn(num_queries, width))
        self.norm_q = LayerNorm(width, eps=norm_eps)
        self.norm_k = LayerNorm(context_width, eps=norm_eps)
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(context_width, 2 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        q = self.q(self.norm_q(self.query)).to(x.dtype).expand(batch, -1, -1)  # (B, Q, D)
        k, v = self.kv(self.norm_k(x)).chunk(2, dim=-1)  # 2 x (B, N, D)
        out = F.scaled_dot_product_attention(*(split_heads(t, self.num_heads) for t in (q, k, v)))  # (B, H, Q, d)
        return self.proj(out.transpose(1, 2).reshape(batch, -1, q.shape[-1]))
