"""The two-tower CLIP model: ``visual`` and ``text`` submodules plus the learned logit scale and bias."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from clipforge.layers.norm import freeze_batch_norm
from clipforge.models.config import ClipConfig
from clipforge.models.hf_text import HFTextTower
from clipforge.models.resnet import ModifiedResNet
from clipforge.models.text import TextTransformer
from clipforge.models.timm_vision import TimmVisionTower
from clipforge.models.vit import VisionTransformer
from clipforge.transforms import PreprocessConfig


# Without autograd, big batches run through the towers in slices of this many items: the activations of a
# slice stay in cache, so per-item throughput at batch 64 matches batch 16 instead of dropping below it.
INFERENCE_CHUNK = 16


def _run_chunked(tower: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    if tower.training or torch.is_grad_enabled() or inputs.shape[0] <= INFERENCE_CHUNK:
        return tower(inputs)
    return torch.cat([tower(chunk) for chunk in inputs.split(INFERENCE_CHUNK)])


def build_vision_tower(config: ClipConfig) -> nn.Module:
    if config.vision.kind == "resnet":
        return ModifiedResNet(config.vision, config.embed_dim)
    if config.vision.kind == "timm":
        return TimmVisionTower(config.vision, config.embed_dim)  # imports timm (the timm extra) only now
    return VisionTransformer(config.vision, config.embed_dim)


def build_text_tower(config: ClipConfig) -> nn.Module:
    if config.text.kind == "hf":
        return HFTextTower(config.text, config.embed_dim)  # imports transformers (the hf extra) only now
    return TextTransformer(config.text, config.embed_dim)


def _set_trainable(items: Sequence, trainable: bool) -> None:
    for item in items:
        params = [item] if isinstance(item, nn.Parameter) else item.parameters()
        for param in params:
            param.requires_grad_(trainable)


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What a model was built from and how its images are prepared. ``create_model`` fills it in; checkpoints and
    exported folders record it, so a model can be rebuilt from its files alone.

    ``arch``: the preset name (``"ViT-B-32"``), None when the architecture came from a file or a config object;
    ``overrides``: dotted fields where the architecture differs from that preset; ``source``: where the weights came
    from (``"tag ViT-B-32::openai"``, ``"file ..."``), None for random init; ``weights_path``: the local file.
    """

    preprocess: PreprocessConfig
    arch: str | None = None
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    source: str | None = None
    weights_path: str | None = None


class CLIP(nn.Module):
    """images (B, 3, H, W) and tokens (B, L) -> L2-normalised features (B, embed_dim) and logit scale/bias.

    ``info`` (a ``ModelInfo``) says where the model came from; without one, the preprocessing defaults to the
    architecture's image size.
    """

    def __init__(self, config: ClipConfig, info: ModelInfo | None = None):
        super().__init__()
        self.config = config
        self.info = info or ModelInfo(preprocess=PreprocessConfig(image_size=config.vision.image_size))
        self.visual, self.text = self.build_towers(config)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))
        self.logit_bias = (nn.Parameter(torch.tensor(float(config.init_logit_bias)))
                           if config.init_logit_bias is not None else None)

    def build_towers(self, config: ClipConfig) -> tuple[nn.Module, nn.Module]:
        """(image tower, text tower); a model family with other towers (CoCa) overrides this."""
        return build_vision_tower(config), build_text_tower(config)

    @property
    def preprocess_config(self) -> PreprocessConfig:
        """The image preprocessing these weights expect (``info.preprocess``)."""
        return self.info.preprocess

    @property
    def context_length(self) -> int:
        return self.config.text.context_length

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = _run_chunked(self.visual, images)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = _run_chunked(self.text, tokens)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, images: torch.Tensor | None = None, tokens: torch.Tensor | None = None,
                output_dict: bool = False):
        """Normalised features of whichever inputs are given, ``logit_scale.exp()`` and ``logit_bias`` (if any)."""
        image_features = self.encode_image(images, normalize=True) if images is not None else None
        text_features = self.encode_text(tokens, normalize=True) if tokens is not None else None
        if output_dict:
            out = {"image_features": image_features, "text_features": text_features,
                   "logit_scale": self.logit_scale.exp()}
            if self.logit_bias is not None:
                out["logit_bias"] = self.logit_bias
            return out
        if self.logit_bias is not None:
            return image_features, text_features, self.logit_scale.exp(), self.logit_bias
        return image_features, text_features, self.logit_scale.exp()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)
        self.text.set_grad_checkpointing(enable)

    def lock_image_tower(self, unlocked_groups: int = 0, freeze_bn_stats: bool = False) -> None:
        """Freeze the image tower except its last ``unlocked_groups`` parameter groups (LiT)."""
        groups = self.visual.param_groups()
        if unlocked_groups and self.config.vision.kind == "resnet":
            raise ValueError("partial locking of a ResNet image tower is not supported; use unlocked_groups=0")
        _set_trainable([self.visual], False)
        for group in groups[len(groups) - unlocked_groups:] if unlocked_groups else []:
            _set_trainable(group, True)
        if freeze_bn_stats:
            freeze_batch_norm(self.visual)

    def lock_text_tower(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
        """Freeze the text tower except its last ``unlocked_layers`` parameter groups."""
        if not freeze_layer_norm:
            raise ValueError("freeze_layer_norm=False is not supported: LayerNorms are locked with their layer")
        groups = self.text.param_groups()
        _set_trainable([self.text], False)
        for group in groups[len(groups) - unlocked_layers:] if unlocked_layers else []:
            _set_trainable(group, True)
