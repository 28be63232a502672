"""CoCa's captioning loss: token-level cross-entropy of the caption decoder's teacher-forced logits.

``caption_logits`` (B, L, V) predict ``caption_labels`` (B, L) (the caption shifted by one token); positions whose
label is the padding id do not count. The mean is over the counted tokens of the local batch, as open_clip computes
it (``CoCaLoss``): there is no cross-rank coupling, so DDP's gradient average gives the global mean per rank.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def caption_loss(caption_logits: torch.Tensor, caption_labels: torch.Tensor, pad_id: int = 0) -> torch.Tensor:
    """Mean cross-entropy over the non-padding label tokens, computed in float32."""
    if caption_logits.ndim != 3 or caption_labels.shape != caption_logits.shape[:2]:
        raise ValueError(f"caption logits (B, L, V) and labels (B, L) do not match: {tuple(caption_logits.shape)} "
                         f"and {tuple(caption_labels.shape)}")
    vocab = caption_logits.shape[-1]
    return F.cross_entropy(caption_logits.float().reshape(-1, vocab), caption_labels.reshape(-1),
                           ignore_index=pad_id)
