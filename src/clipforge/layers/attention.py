"""Multi-head self-attention with a packed qkv projection.

The fast path is ``torch.nn.functional.scaled_dot_product_attention``; ``eager_attention`` is the
plain softmax formula, kept for exporters that cannot trace SDPA and as a reference in tests.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from clipforge.layers.fused import linear_rows


def causal_mask(length: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Additive (L, L) mask: 0 on and below the diagonal, -inf above."""
    mask = torch.full((length, length), float("-inf"), device=device, dtype=dtype)
    return mask.triu_(1)


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, L, D) -> (B, H, L, D / H)."""
    batch, length, width = x.shape
    return x.view(batch, length, num_heads, width // num_heads).transpose(1, 2)


def eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask) v for (B, H, L, d) inputs."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B, H, Lq, Lk)
    if attn_mask is not None:
        scores = scores + attn_mask
    return scores.softmax(dim=-1) @ v


class Attention(nn.Module):
    """Self-attention: one (3D, D) linear for q, k and v, SDPA, output projection."""

    def __init__(self, width: int, num_heads: int, use_sdpa: bool = True):
        super().__init__()
        if width % num_heads:
            raise ValueError(f"attention width {width} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.use_sdpa = use_sdpa

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        return self.proj(self.attend(self.qkv(x), attn_mask, is_causal))

    def attend(self, qkv: torch.Tensor, attn_mask: torch.Tensor | None = None,
               is_causal: bool = False) -> torch.Tensor:
        """Packed projections (B, L, 3D) -> attention output (B, L, D) before the output projection."""
        batch, length, width = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
        qkv = qkv.view(batch, length, 3, self.num_heads, width // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, L, d)
        if self.use_sdpa:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        else:
            if is_causal:
                attn_mask = causal_mask(length, qkv.device, q.dtype)
            out = eager_attention(q, k, v, attn_mask)
        return out.transpose(1, 2).reshape(batch, length, width)  # (B, L, D)

    def forward_query(self, queries: torch.Tensor, x: torch.Tensor,
                      key_limit: torch.Tensor | None = None) -> torch.Tensor:
        """Attention output for a few query rows (B, Q, D) over all of x (B, L, D).

        Used when only some output tokens are needed (the pooled token of the last block): keys and
        values are computed for every token, queries only for the requested ones. ``key_limit`` (B,)
        restricts each sample to keys at positions <= limit (the causal mask of a single query row).
        """
        batch, length, width = x.shape
        head_dim = width // self.num_heads
        q = linear_rows(queries, self.qkv, slice(0, width))  # (B, Q, D)
        kv = linear_rows(x, self.qkv, slice(width, None))  # (B, L, 2D)
        q = q.view(batch, -1, self.num_heads, head_dim).transpose(1, 2)  # (B, H, Q, d)
        k, v = kv.view(batch, length, 2, self.num_heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        mask = None
        if key_limit is not None:
            positions = torch.arange(length, device=x.device)
            mask = (positions[None, :] <= key_limit[:, None]).view(batch, 1, 1, length)  # True = attend
        if self.use_sdpa:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            additive = None if mask is None else torch.zeros(mask.shape, dtype=q.dtype, device=x.device).masked_fill(
                ~mask, float("-inf"))
            out = eager_attention(q, k, v, additive)
        out = out.transpose(1, 2).reshape(batch, -1, width)  # (B, Q, D)
        return self.proj(out)
