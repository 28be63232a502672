"""Initial values and clamping of the learned temperature and bias.

Who does what: the model owns the parameters ``logit_scale`` (the log of the scale) and, for SigLIP, ``logit_bias``,
created from ``initial_logit_params``; the model's forward returns ``logit_scale.exp()``; the losses take that
exponentiated scale; the training step calls ``clamp_logit_scale_`` after each optimizer step.
"""
from __future__ import annotations

import math

import torch

# CLIP (Radford et al. 2021): temperature 0.07, scale clipped at 100.
CLIP_LOGIT_SCALE_INIT = math.log(1 / 0.07)
CLIP_MAX_SCALE = 100.0
# SigLIP (Zhai et al. 2023): t' = log 10, b = -10, so the many negatives start with a small loss.
SIGLIP_LOGIT_SCALE_INIT = math.log(10.0)
SIGLIP_LOGIT_BIAS_INIT = -10.0


def initial_logit_params(kind: str) -> tuple[float, float | None]:
    """``(log_scale, bias)`` a model should initialise its parameters with for loss ``kind``."""
    if kind in ("clip", "distill"):
        return CLIP_LOGIT_SCALE_INIT, None
    if kind == "siglip":
        return SIGLIP_LOGIT_SCALE_INIT, SIGLIP_LOGIT_BIAS_INIT
    raise ValueError(f"unknown loss kind {kind!r}; expected 'clip', 'siglip' or 'distill'")


@torch.no_grad()
def clamp_logit_scale_(log_scale: torch.Tensor, max_scale: float = CLIP_MAX_SCALE) -> torch.Tensor:
    """Clamp the log-scale parameter in place to [0, log(max_scale)]: the scale stays in [1, max_scale]."""
    return log_scale.clamp_(0.0, math.log(max_scale))
