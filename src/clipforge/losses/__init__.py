"""Contrastive losses over features: CLIP softmax, SigLIP sigmoid, distillation; dense and tiled (linear memory);
and CoCa's caption cross-entropy, which ``kind="coca"`` adds to the CLIP loss.

All take ``(image_features, text_features, logit_scale, ...)`` where ``logit_scale`` is already exponentiated
(``model.logit_scale.exp()``). See ``clipforge.losses.temperature`` for initial values and clamping.
"""
from clipforge.losses._checks import value_checks
from clipforge.losses.caption import caption_loss
from clipforge.losses.config import AUTO_TILED_MIN_BATCH, ContrastiveLoss, LossConfig, create_loss
from clipforge.losses.contrastive import clip_logits, clip_loss
from clipforge.losses.distill import TeacherOutputs, clip_distill_loss, soft_cross_entropy
from clipforge.losses.sigmoid import siglip_loss
from clipforge.losses.temperature import (
    CLIP_LOGIT_SCALE_INIT,
    CLIP_MAX_SCALE,
    SIGLIP_LOGIT_BIAS_INIT,
    SIGLIP_LOGIT_SCALE_INIT,
    clamp_logit_scale_,
    initial_logit_params,
)
from clipforge.losses.tiled import default_tile_size, tiled_clip_loss, tiled_siglip_loss

__all__ = [
    "AUTO_TILED_MIN_BATCH", "CLIP_LOGIT_SCALE_INIT", "caption_loss", "CLIP_MAX_SCALE", "ContrastiveLoss", "LossConfig",
    "SIGLIP_LOGIT_BIAS_INIT", "SIGLIP_LOGIT_SCALE_INIT", "TeacherOutputs", "clamp_logit_scale_", "clip_distill_loss",
    "clip_logits", "clip_loss", "create_loss", "default_tile_size", "initial_logit_params", "siglip_loss",
    "soft_cross_entropy", "tiled_clip_loss", "tiled_siglip_loss", "value_checks",
]
