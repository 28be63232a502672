"""Random token masking on already tokenized captions (text augmentation)."""
from __future__ import annotations

import torch


def mask_tokens(tokens: torch.Tensor, prob: float, *, generator: torch.Generator | None = None,
                pad_id: int = 0, mask_id: int | None = None) -> torch.Tensor:
    """Randomly remove (or replace by ``mask_id``) caption tokens with probability ``prob``.

    ``tokens`` is (N, L), padded with ``pad_id`` on the right. The first token of a row (start of text)
    and its last non-pad token (end of text, which CLIP pools on) are never touched. Without ``mask_id``
    the kept tokens are shifted left and the row is re-padded, so the end-of-text token stays last.
    """
    if not 0.0 <= prob < 1.0:
        raise ValueError(f"mask probability must be in [0, 1), got {prob}")
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be (N, L), got shape {tuple(tokens.shape)}")
    if prob == 0.0 or tokens.numel() == 0:
        return tokens.clone()
    real = tokens != pad_id  # (N, L)
    lengths = real.sum(dim=1)  # (N,)
    positions = torch.arange(tokens.shape[1]).expand_as(tokens)  # (N, L)
    protected = (positions == 0) | (positions == (lengths - 1).clamp(min=0).unsqueeze(1))
    drop = (torch.rand(tokens.shape, generator=generator) < prob) & real & ~protected
    if mask_id is not None:
        return tokens.masked_fill(drop, mask_id)
    keep = real & ~drop
    # A stable sort on "not kept" moves the kept tokens to the front in their original order.
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices  # (N, L)
    compact = torch.gather(tokens, 1, order)
    kept_count = keep.sum(dim=1, keepdim=True)  # (N, 1)
    return compact.masked_fill(positions >= kept_count, pad_id)
