"""Pre-norm residual transformer block and the block stack both towers share."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from clipforge.layers.attention import Attention
from clipforge.layers.fused import (hooked, linear_act, linear_add, linear_applies, residual_linear,
                                    residual_linear_applies)
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
        self.layer_scale = layer_scale_init is not None

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        if self.layer_scale or not linear_applies(x, self.attn.qkv, self.attn.proj, self.mlp.fc1, self.mlp.fc2):
            if not self.layer_scale and residual_linear_applies(x, self.attn.proj, self.mlp.fc2) and \
                    not hooked(self.attn, self.mlp):
                # training (and inference where oneDNN's GEMM is the slower one): each residual add inside a GEMM
                h = self.attn.attend(self.attn.qkv(self.norm1(x)), attn_mask, is_causal)
                x = residual_linear(x, h, self.attn.proj)
                return residual_linear(x, self.mlp.act(self.mlp.fc1(self.norm2(x))), self.mlp.fc2)
            x = x + self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal))
            return x + self.ls2(self.mlp(self.norm2(x)))
        # inference on CPU: bias, GELU and both residual adds run inside the oneDNN GEMMs (layers/fused.py)
        h = self.attn.attend(linear_act(self.norm1(x), self.attn.qkv), attn_mask, is_causal)  # (B, L, D)
        x = linear_add(h, self.attn.proj, x)
        return self.mlp.forward_add(self.norm2(x), x)

    def forward_token(self, x: torch.Tensor, index: torch.Tensor, is_causal: bool = False) -> torch.Tensor:
        """Output (B, D) of only token ``index[b]`` of each sample: the same values as
        ``forward(x)[arange(B), index]`` without computing the other rows' queries and MLP."""
        rows = torch.arange(x.shape[0], device=x.device)
        h = self.norm1(x)
        query = h[rows, index].unsqueeze(1)  # (B, 1, D)
        y = x[rows, index].unsqueeze(1) + self.ls1(
            self.attn.forward_query(query, h, key_limit=index if is_causal else None))
        if self.layer_scale:
            y = y + self.ls2(self.mlp(self.norm2(y)))
        else:
            y = self.mlp.forward_add(self.norm2(y), y)
        return y[:, 0]


class Transformer(nn.Module):
    """A stack of ``depth`` blocks with an optional activation-checkpointing switch."""

    def __init__(self, width: int, depth: int, num_heads: int, mlp_ratio: float, act: str,
                 norm_eps: float = 1e-5, layer_scale_init: float | None = None):
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(width, num_heads, mlp_ratio, act, norm_eps, layer_scale_init) for _ in range(depth))
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False,
                output_index: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, D) -> (B, L, D); with ``output_index`` (B,), only those tokens: (B, D).

        Asking for one token per sample lets the last block skip the queries and MLP of every other
        token (about 1/depth of the tower's compute) when the tower pools a single token anyway.
        """
        blocks = list(self.blocks)
        last = blocks.pop() if output_index is not None else None
        checkpointing = self.grad_checkpointing and torch.is_grad_enabled()
        for block in blocks:
            if checkpointing:
                x = checkpoint(block, x, attn_mask, is_causal, use_reentrant=False)
            else:
                x = block(x, attn_mask=attn_mask, is_causal=is_causal)
        if last is None:
            return x
        if attn_mask is not None:
            raise ValueError("output_index cannot be combined with an explicit attn_mask; use is_causal")
        if checkpointing:
            return checkpoint(last.forward_token, x, output_index, is_causal, use_reentrant=False)
        return last.forward_token(x, output_index, is_causal=is_causal)
