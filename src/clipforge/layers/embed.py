"""Patch embedding and resizing of learned 2-D positional embeddings."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens with a strided convolution: (B, 3, H, W) -> (B, N, D)."""

    def __init__(self, patch_size: int, width: int, bias: bool = False):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.proj(images)  # (B, D, gh, gw)
        return x.flatten(2).transpose(1, 2)  # (B, gh*gw, D)


def resize_pos_embed(pos_embed: torch.Tensor, new_grid: tuple[int, int], num_prefix_tokens: int = 1,
                     mode: str = "bicubic", antialias: bool = True) -> torch.Tensor:
    """Resample a (prefix + gh*gw, D) positional embedding to ``new_grid``; prefix tokens are kept.

    The old grid must be square (every CLIP checkpoint's is). Interpolation runs in float32.
    """
    prefix, grid = pos_embed[:num_prefix_tokens], pos_embed[num_prefix_tokens:]
    side = math.isqrt(grid.shape[0])
    if side * side != grid.shape[0]:
        raise ValueError(f"positional embedding has {grid.shape[0]} grid tokens, not a square grid; "
                         f"check num_prefix_tokens={num_prefix_tokens}")
    if (side, side) == tuple(new_grid):
        return pos_embed
    width = grid.shape[1]
    grid = grid.float().reshape(1, side, side, width).permute(0, 3, 1, 2)  # (1, D, g, g)
    grid = F.interpolate(grid, size=tuple(new_grid), mode=mode, antialias=antialias, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], width)  # (gh*gw, D)
    return torch.cat([prefix, grid.to(pos_embed.dtype)], dim=0)
