"""timm image towers (``vision.kind="timm"``): a timm trunk and open_clip's head, as open_clip's ``TimmModel``.

ConvNeXt, EVA, ViTamin, FastViT / MobileCLIP, Perception Encoder and the other trunks open_clip takes from timm. The
module tree is open_clip's (``trunk``: the timm model; ``head``: ``drop`` + ``proj`` or ``mlp``), so its checkpoints
load under their own key names. timm is an optional extra (``clipforge[timm]``), imported only when such a tower is
built; the trunk is built with ``pretrained=False``: its weights come from the CLIP checkpoint.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from clipforge._optional import require
from clipforge.models.config import VisionConfig

TIMM_HINT = "timm image towers need timm: pip install 'clipforge[timm]'"


def _trunk_kwargs(config: VisionConfig) -> dict:
    kwargs = {}
    if config.timm.drop_path is not None:
        kwargs["drop_path_rate"] = config.timm.drop_path
    if config.patch_dropout > 0:
        kwargs["patch_drop_rate"] = config.patch_dropout
    return kwargs


def build_trunk(config: VisionConfig, embed_dim: int) -> tuple[nn.Module, int]:
    """(timm trunk, width of its output) as open_clip builds them: with a head of ours the trunk's classifier is
    removed (its pool reset only when ``pool`` names one); otherwise the trunk's classifier is sized to
    ``embed_dim`` (``proj="head"``) or removed (``proj="none"``) and ``pool`` is its global pool."""
    timm = require("timm", hint=TIMM_HINT)
    t = config.timm
    kwargs = _trunk_kwargs(config)
    if t.proj in ("linear", "mlp"):
        trunk = timm.create_model(t.model_name, pretrained=False, **kwargs)
        trunk.reset_classifier(0, **({"global_pool": t.pool} if t.pool else {}))
        return trunk, trunk.num_features
    classes = embed_dim if t.proj == "head" else 0
    trunk = timm.create_model(t.model_name, num_classes=classes, global_pool=t.pool, pretrained=False, **kwargs)
    return trunk, embed_dim if t.proj == "head" else trunk.num_features


class TimmVisionTower(nn.Module):
    """images (B, 3, H, W) -> features (B, embed_dim) (the trunk's width for ``proj="none"``)."""

    def __init__(self, config: VisionConfig, embed_dim: int):
        super().__init__()
        self.config = config
        self.trunk, width = build_trunk(config, embed_dim)
        t = config.timm
        head: OrderedDict[str, nn.Module] = OrderedDict()
        if t.proj == "linear":
            head["drop"] = nn.Dropout(t.drop)
            head["proj"] = nn.Linear(width, embed_dim, bias=t.proj_bias)
        elif t.proj == "mlp":
            from timm.layers import Mlp  # timm is importable: build_trunk required it

            head["mlp"] = Mlp(width, 2 * embed_dim, embed_dim, drop=(t.drop, 0), bias=(True, t.proj_bias))
        self.head = nn.Sequential(head)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(images))

    def param_groups(self) -> list[list[nn.Module | nn.Parameter]]:
        """The trunk's own layer groups (timm's ``group_matcher``, from stem to final norm), then the head."""
        from timm.models import group_parameters

        groups = group_parameters(self.trunk, self.trunk.group_matcher())
        out: list[list[nn.Module | nn.Parameter]] = [[self.trunk.get_parameter(name) for name in groups[index]]
                                                      for index in sorted(groups)]
        return out + ([[self.head]] if any(True for _ in self.head.parameters()) else [])

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.trunk.set_grad_checkpointing(enable)
