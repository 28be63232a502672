"""SigLIP pairwise sigmoid loss, dense: the reference the tiled loss is tested against.

Every (image, text) pair is an independent binary problem: label +1 on the diagonal, -1 elsewhere, logit
``logit_scale * <image, text> + logit_bias``. The sum over pairs is divided by the local batch size (the paper's
normalisation, also open_clip's).

Distributed forms: the rank's images see every rank's texts, either gathered at once with gradients
(``exchange="gather"``) or passed one block at a time round a ring of ranks (``exchange="ring"``), which holds only
one remote block at a time. Each rank returns the loss of its own images; the mean over ranks equals the
single-process loss on the global batch.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from clipforge.dist import Collective, all_gather_with_grad, is_distributed, ring_shift_with_grad
from clipforge.losses._checks import check_inputs, logits_dtype


def _pair_loss_sum(image_features, text_features, logit_scale, logit_bias, positive_offset: int | None):
    """Sum over pairs of -log sigmoid(label * logit); positives sit at column ``row + positive_offset``.

    With labels -1 everywhere but the positives: sum softplus(logits) - sum of the positive logits (softplus(x) -
    x = -log sigmoid(x)), so no (B, B) label matrix and no label-times-logit product is made."""
    dtype = logits_dtype(image_features)
    if image_features.dtype == dtype:  # scale the (B, D) features rather than the (B_img, B_txt) logits
        logits = (logit_scale * image_features) @ text_features.T
    else:
        logits = logit_scale * (image_features @ text_features.T).to(dtype)
    if logit_bias is not None:
        logits = logits.add_(logit_bias)  # in place: the product is not needed by its own backward
    total = F.softplus(logits).sum()
    if positive_offset is not None:
        rows = torch.arange(logits.shape[0], device=logits.device)
        total = total - logits[rows, rows + positive_offset].sum()
    return total


def siglip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale, logit_bias=None, *,
                collective: Collective | None = None,
                exchange: Literal["gather", "ring"] = "ring") -> torch.Tensor:
    """Sigmoid loss of this rank's images against the texts of all ranks, divided by the local batch size.

    logit_scale: exponentiated scale; logit_bias: the learned bias (None: no bias).
    """
    if exchange not in ("gather", "ring"):
        raise ValueError(f"siglip exchange must be 'gather' or 'ring', got {exchange!r}")
    scale, bias = check_inputs(image_features, text_features, logit_scale, logit_bias)
    n = image_features.shape[0]
    if not is_distributed(collective):
        return _pair_loss_sum(image_features, text_features, scale, bias, 0) / n
    if exchange == "gather":
        all_texts = all_gather_with_grad(text_features, collective)
        return _pair_loss_sum(image_features, all_texts, scale, bias, collective.rank * n) / n
    total = _pair_loss_sum(image_features, text_features, scale, bias, 0)
    block = text_features
    for _ in range(collective.world_size - 1):
        block = ring_shift_with_grad(block, collective)
        total = total + _pair_loss_sum(image_features, block, scale, bias, None)
    return total / n
