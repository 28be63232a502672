"""Pooling of token sequences into one vector: token selection and attention pooling."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from clipforge.layers.attention import split_heads
from clipforge.layers.fused import linear_rows
from clipforge.layers.mlp import Mlp, mlp_hidden
from clipforge.layers.norm import LayerNorm

TEXT_POOLS = ("argmax", "last", "first", "eos")


def text_pool_index(tokens: torch.Tensor, kind: str, eos_id: int | None = None) -> torch.Tensor:
    """Position (B,) of the token that represents each sequence of ``tokens`` (B, L).

    ``argmax``: the highest token id (CLIP's end-of-text is the largest id in its vocabulary);
    ``eos``: the first ``eos_id``; ``last`` / ``first``: a fixed position.
    """
    batch, length = tokens.shape
    if kind == "last":
        return torch.full((batch,), length - 1, dtype=torch.long, device=tokens.device)
    if kind == "first":
        return torch.zeros(batch, dtype=torch.long, device=tokens.device)
    if kind == "argmax":
        return tokens.argmax(dim=-1)
    if kind == "eos":
        return (tokens == eos_id).int().argmax(dim=-1)
    raise ValueError(f"unknown text pool '{kind}'; use one of {', '.join(TEXT_POOLS)}")


def pool_text(x: torch.Tensor, tokens: torch.Tensor, kind: str, eos_id: int | None = None) -> torch.Tensor:
    """Pick one (B, D) vector per sequence from x (B, L, D) (see ``text_pool_index``)."""
    index = text_pool_index(tokens, kind, eos_id)
    return x[torch.arange(x.shape[0], device=x.device), index]


class LatentAttentionPool(nn.Module):
    """Multi-head attention pooling with learned latent queries, then a residual MLP (SigLIP "MAP" head)."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float, act: str,
                 norm_eps: float = 1e-6, num_latents: int = 1):
        super().__init__()
        self.num_heads = num_heads
        self.latent = nn.Parameter(torch.zeros(num_latents, width))
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)
        self.norm = LayerNorm(width, eps=norm_eps)
        self.mlp = Mlp(width, mlp_hidden(width, mlp_ratio), act)
        nn.init.trunc_normal_(self.latent, std=width ** -0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, width = x.shape
        q = self.q(self.latent).expand(batch, -1, -1)  # (B, Q, D)
        k, v = linear_rows(x, self.kv).chunk(2, dim=-1)  # 2 x (B, N, D)
        out = F.scaled_dot_product_attention(*(split_heads(t, self.num_heads) for t in (q, k, v)))
        out = self.proj(out.transpose(1, 2).reshape(batch, -1, width))  # (B, Q, D)
        out = out + self.mlp(self.norm(out))
        return out[:, 0]


class AttentionPool2d(nn.Module):
    """CLIP ResNet head: the mean feature attends over all positions of the final feature map.

    Only the mean token's output is used, so only its query is computed (not one per position).
    """

    def __init__(self, grid: int, width: int, num_heads: int, out_dim: int):
        super().__init__()
        self.num_heads = num_heads
        self.pos_embed = nn.Parameter(torch.randn(grid * grid + 1, width) / width ** 0.5)
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)  # (B, HW+1, C)
        x = x + self.pos_embed.to(x.dtype)
        batch, _, width = x.shape
        q = linear_rows(x[:, :1], self.q)  # (B, 1, C)
        k, v = linear_rows(x, self.kv).chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(*(split_heads(t, self.num_heads) for t in (q, k, v)))
        out = out.transpose(1, 2).reshape(batch, width)  # (B, C)
        return linear_rows(out, self.proj)  # (B, out_dim)
