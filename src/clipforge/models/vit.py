"""Vision Transformer tower: CLIP form (class token, ln_pre, projection) and SigLIP form (MAP head)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from clipforge.layers.embed import PatchEmbed
from clipforge.layers.norm import LayerNorm
from clipforge.layers.pool import LatentAttentionPool
from clipforge.layers.regularize import PatchDropout
from clipforge.layers.transformer import Transformer
from clipforge.models.config import VisionConfig


class VisionTransformer(nn.Module):
    """images (B, 3, H, W) -> features (B, embed_dim), or (B, width) without an output projection."""

    def __init__(self, config: VisionConfig, embed_dim: int):
        super().__init__()
        self.config = config
        width = config.width
        scale = width ** -0.5
        self.num_prefix_tokens = 1 if config.class_token else 0
        self.patch_embed = PatchEmbed(config.patch_size, width, bias=config.patch_bias)
        self.cls_token = nn.Parameter(scale * torch.randn(width)) if config.class_token else None
        num_tokens = config.grid_size ** 2 + self.num_prefix_tokens
        self.pos_embed = nn.Parameter(scale * torch.randn(num_tokens, width))
        self.patch_dropout = PatchDropout(config.patch_dropout, self.num_prefix_tokens)
        self.norm_pre = LayerNorm(width, eps=config.norm_eps) if config.pre_norm else nn.Identity()
        self.transformer = Transformer(width, config.depth, config.num_heads, config.mlp_ratio, config.act,
                                       config.norm_eps, config.layer_scale_init)
        self.norm = LayerNorm(width, eps=config.norm_eps)
        self.attn_pool = (LatentAttentionPool(width, config.num_heads, config.mlp_ratio, config.act, config.norm_eps)
                          if config.pool == "map" else None)
        self.proj = nn.Linear(width, embed_dim, bias=False) if config.output_proj else None
        if self.proj is not None:
            nn.init.normal_(self.proj.weight, std=scale)

    def _check_input(self, images: torch.Tensor) -> None:
        size = self.config.image_size
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (size, size):
            raise ValueError(f"expected images of shape (B, 3, {size}, {size}), got {tuple(images.shape)}; "
                             f"resize with the model's preprocessing or build the model with "
                             f"vision.image_size={images.shape[-1]}")

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens plus class token and positional embedding: (B, prefix + N, D)."""
        self._check_input(images)
        x = self.patch_embed(images)
        if self.cls_token is not None:
            cls = self.cls_token.to(x.dtype).expand(x.shape[0], 1, -1)  # (B, 1, D)
            x = torch.cat([cls, x], dim=1)
        x = x + self.pos_embed.to(x.dtype)
        return self.norm_pre(self.patch_dropout(x))

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.norm_after_pool:  # CLIPA: normalise the mean of the patch tokens
            return self.norm(x[:, self.num_prefix_tokens:].mean(dim=1))
        x = self.norm(x)
        if self.attn_pool is not None:
            return self.attn_pool(x)
        if self.config.pool == "avg":
            return x[:, self.num_prefix_tokens:].mean(dim=1)
        return x[:, 0]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.embed(images)
        if self.config.pool == "token":  # only the class token leaves the last block
            index = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
            pooled = self.norm(self.transformer(x, output_index=index))
        else:
            pooled = self.pool(self.transformer(x))
        return self.proj(pooled) if self.proj is not None else pooled

    def param_groups(self) -> list[Sequence[nn.Module | nn.Parameter]]:
        """Parameters from input to output in lockable groups (LiT's unlocked_groups counts from the end)."""
        embed = [m for m in (self.patch_embed, self.cls_token, self.pos_embed, self.norm_pre) if m is not None]
        blocks = list(self.transformer.blocks)
        head = [m for m in (self.attn_pool, self.proj) if m is not None]
        return [embed, *[[b] for b in blocks[:-1]], [blocks[-1], self.norm], head]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.transformer.grad_checkpointing = enable
