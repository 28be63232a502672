"""CLIP softmax (InfoNCE) loss, dense: the reference the tiled loss is tested against.

``logit_scale`` is the exponentiated scale (``model.logit_scale.exp()``), as in open_clip; its gradient flows back
through the exponential to the model's parameter.

Distributed form: every rank gathers all ranks' features with gradients and computes the logits of its own rows
against the global batch (local-batch x global-batch). Each rank returns the loss of its own rows; the mean over
ranks equals the single-process loss on the global batch, and DDP's gradient average matches its gradient.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from clipforge.dist import Collective, all_gather_with_grad, is_distributed
from clipforge.losses._checks import check_inputs, logits_dtype


def clip_logits(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                collective: Collective | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(logits_per_image, logits_per_text, labels)`` of this rank's rows against the (global) batch.

    Both logit matrices are (B_local, B_global) in fp32; ``labels`` are the global column of each row's pair.
    """
    n = image_features.shape[0]
    offset = 0
    all_images, all_texts = image_features, text_features
    if is_distributed(collective):
        all_images = all_gather_with_grad(image_features, collective)
        all_texts = all_gather_with_grad(text_features, collective)
        offset = collective.rank * n
    dtype = logits_dtype(image_features)
    if image_features.dtype == dtype:  # scale the (B, D) features, not the (B, B_global) logits: one matrix less
        logits_per_image = (logit_scale * image_features) @ all_texts.T
        logits_per_text = (logit_scale * text_features) @ all_images.T
    else:  # low-precision features: the products are widened first, then scaled in the logits' precision
        logits_per_image = logit_scale * (image_features @ all_texts.T).to(dtype)
        logits_per_text = logit_scale * (text_features @ all_images.T).to(dtype)
    labels = torch.arange(offset, offset + n, device=image_features.device)
    return logits_per_image, logits_per_text, labels


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale, *,
              collective: Collective | None = None) -> torch.Tensor:
    """Symmetric cross-entropy of matching image/text rows, averaged over both directions.

    image_features, text_features: (B, D), row i of each is a pair (normalise them first, as CLIP does).
    logit_scale: exponentiated scale, float or one-element tensor.
    collective: ranks to gather features from (None: this process only).
    """
    scale, _ = check_inputs(image_features, text_features, logit_scale)
    logits_per_image, logits_per_text, labels = clip_logits(image_features, text_features, scale, collective)
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
