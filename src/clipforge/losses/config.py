"""``LossConfig`` (the ``loss`` section of the training config) and ``create_loss``, which turns it into a callable.

The training step calls ``loss_fn(image_features, text_features, logit_scale, logit_bias=None, teacher=None,
captions=None)`` and gets ``{"loss": total, "contrastive": ..., ["distill": ...], ["caption": ...]}``; ``loss`` is what
it back-propagates. ``captions`` = (caption logits, caption labels) of a CoCa model, for ``kind="coca"``.
"""
from __future__ import annotations

import dataclasses
from typing import Literal

import torch

from clipforge.config import ConfigError
from clipforge.dist import Collective
from clipforge.losses.caption import caption_loss
from clipforge.losses.contrastive import clip_loss
from clipforge.losses.distill import TeacherOutputs, clip_distill_loss
from clipforge.losses.sigmoid import siglip_loss
from clipforge.losses.tiled import tiled_clip_loss, tiled_siglip_loss

# Global batch from which tiled="auto" switches to the tiled losses. Tiled and dense cost about the same time
# below it, and above it the dense logits (several B x B fp32 matrices) start to dominate memory.
AUTO_TILED_MIN_BATCH = 8192


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """How the contrastive loss is computed.

    kind: "clip" (softmax), "siglip" (sigmoid, needs the model's logit_bias), "distill" (clip + soft targets
        from a frozen teacher, dense only) or "coca" (clip + caption cross-entropy, needs a CoCa model).
    tiled: compute logits tile by tile in linear memory; "auto" tiles from ``tiled_min_batch`` (global batch).
    tile_size: side of a logit tile; None picks the device default (see losses.tiled.default_tile_size).
    gather: "global" contrasts each rank's rows with the whole global batch (features gathered with gradients,
        or passed round a ring when tiled); "local" contrasts each rank's rows with its own batch only.
    siglip_exchange: dense SigLIP across ranks: all-gather the texts, or pass them round a ring block by block.
    contrastive_weight, distill_weight: weights of the two terms of "distill"; contrastive_weight and
        caption_weight those of "coca" (open_clip's coca_contrastive_loss_weight, coca_caption_loss_weight).
    caption_pad_id: label id the caption loss ignores (the tokenizer's padding; 0 for CLIP's BPE).
    """

    kind: Literal["clip", "siglip", "distill", "coca"] = "clip"
    tiled: bool | Literal["auto"] = "auto"
    tiled_min_batch: int = AUTO_TILED_MIN_BATCH
    tile_size: int | None = None
    gather: Literal["local", "global"] = "global"
    siglip_exchange: Literal["gather", "ring"] = "ring"
    contrastive_weight: float = 1.0
    distill_weight: float = 1.0
    caption_weight: float = 2.0
    caption_pad_id: int = 0

    def __post_init__(self):
        if self.tile_size is not None and self.tile_size < 1:
            raise ConfigError(f"loss.tile_size must be a positive integer or null, got {self.tile_size}")
        if self.tiled_min_batch < 1:
            raise ConfigError(f"loss.tiled_min_batch must be positive, got {self.tiled_min_batch}")
        if self.contrastive_weight < 0 or self.distill_weight < 0 or self.caption_weight < 0:
            raise ConfigError("loss.contrastive_weight, loss.distill_weight and loss.caption_weight must be >= 0")
        if self.kind == "distill" and self.tiled is True:
            raise ConfigError("loss.kind='distill' has no tiled form (the teacher's soft targets need whole logit "
                              "rows); set loss.tiled=false or 'auto'")


@dataclasses.dataclass(frozen=True)
class ContrastiveLoss:
    """The callable ``create_loss`` returns: a config plus the ranks it talks to, no hidden state."""

    config: LossConfig
    collective: Collective

    @property
    def needs_captions(self) -> bool:
        """True when the loss reads the caption decoder's logits (the step then asks the model for them)."""
        return self.config.kind == "coca"

    def uses_tiling(self, local_batch: int) -> bool:
        if self.config.kind == "distill" or self.config.tiled is False:
            return False
        if self.config.tiled is True:
            return True
        world = self.collective.world_size if self.config.gather == "global" else 1
        return local_batch * world >= self.config.tiled_min_batch

    def __call__(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale,
                 logit_bias=None, teacher: TeacherOutputs | None = None,
                 captions: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        cfg = self.config
        collective = self.collective if cfg.gather == "global" else None
        if cfg.kind == "coca":
            return self._coca(image_features, text_features, logit_scale, captions)
        if cfg.kind == "distill":
            contrastive, distill = clip_distill_loss(image_features, text_features, logit_scale, teacher,
                                                     collective=collective)
            total = cfg.contrastive_weight * contrastive + cfg.distill_weight * distill
            return {"loss": total, "contrastive": contrastive, "distill": distill}
        tiled = self.uses_tiling(image_features.shape[0])
        if cfg.kind == "siglip":
            if logit_bias is None:
                raise ValueError("loss.kind='siglip' needs logit_bias: build the model with a learned bias "
                                 "(initial value clipforge.losses.temperature.SIGLIP_LOGIT_BIAS_INIT)")
            if tiled:
                loss = tiled_siglip_loss(image_features, text_features, logit_scale, logit_bias,
                                         tile_size=cfg.tile_size, collective=collective)
            else:
                loss = siglip_loss(image_features, text_features, logit_scale, logit_bias,
                                   collective=collective, exchange=cfg.siglip_exchange)
        elif tiled:
            # a softmax is shift-invariant: a logit bias would cancel, so the CLIP losses take none
            loss = tiled_clip_loss(image_features, text_features, logit_scale, tile_size=cfg.tile_size,
                                   collective=collective)
        else:
            loss = clip_loss(image_features, text_features, logit_scale, collective=collective)
        return {"loss": loss, "contrastive": loss}

    def _coca(self, image_features, text_features, logit_scale, captions) -> dict[str, torch.Tensor]:
        if captions is None:
            raise ValueError("loss.kind='coca' needs the caption decoder's logits and labels: train a CoCa model "
                             "(e.g. model.name=coca_ViT-B-32) or use loss.kind=clip")
        contrastive = self._clip_part(image_features, text_features, logit_scale)
        caption = caption_loss(*captions, pad_id=self.config.caption_pad_id)
        total = self.config.contrastive_weight * contrastive + self.config.caption_weight * caption
        return {"loss": total, "contrastive": contrastive, "caption": caption}

    def _clip_part(self, image_features, text_features, logit_scale) -> torch.Tensor:
        collective = self.collective if self.config.gather == "global" else None
        if self.uses_tiling(image_features.shape[0]):
            return tiled_clip_loss(image_features, text_features, logit_scale, tile_size=self.config.tile_size,
                                   collective=collective)
        return clip_loss(image_features, text_features, logit_scale, collective=collective)


def create_loss(config: LossConfig, *, rank: int = 0, world_size: int = 1, group=None) -> ContrastiveLoss:
    """The loss function for ``config``; rank/world_size/group name the process group of a distributed run."""
    if not isinstance(config, LossConfig):
        raise TypeError(f"create_loss takes a LossConfig (the 'loss' section), got {type(config).__name__}")
    return ContrastiveLoss(config, Collective(rank=rank, world_size=world_size, group=group))
