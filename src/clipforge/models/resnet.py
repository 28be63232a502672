"""CLIP's ModifiedResNet image tower.

Differences from torchvision's ResNet: a 3-convolution stem with an average pool, anti-aliased
downsampling (an average pool before the stride-1 convolution) and an attention-pool head.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F

from clipforge.layers import fused
from clipforge.layers.pool import AttentionPool2d
from clipforge.models.config import VisionConfig


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)  # (C,)
    weight = conv.weight * scale.view(-1, 1, 1, 1).to(conv.weight.dtype)
    return weight, (bn.bias - bn.running_mean * scale).to(conv.weight.dtype)


def _fold_key(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple:
    tensors = (conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var)
    return tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d, pack_for: torch.Tensor | None = None):
    """Conv weight and bias with the eval-mode BatchNorm folded in. Without autograd they are cached on the
    conv (keyed by the tensors' storage, version counter, dtype and device, so loading or training new weights or
    casting the model refreshes them): rebuilding them per call would also make oneDNN re-pack the weights every
    time, which dominates at batch 1. With ``pack_for`` (an input), the cached weight is in oneDNN's blocked layout
    for that convolution (``fused.pack_conv_weight``); it stays valid for inputs of other sizes."""
    if torch.is_grad_enabled():
        return _fold(conv, bn)  # differentiable w.r.t. the conv and BatchNorm parameters
    key = (_fold_key(conv, bn), pack_for is not None)
    cached = conv.__dict__.get("_folded")
    if cached is None or cached[0] != key:
        weight, bias = _fold(conv, bn)
        if pack_for is not None:
            weight = fused.pack_conv_weight(weight, conv, pack_for.shape)
        cached = (key, weight, bias)
        conv.__dict__["_folded"] = cached
    return cached[1], cached[2]


def _conv_fusion_applies(x: torch.Tensor, *modules: nn.Module) -> bool:
    if not all(isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) for m in modules):
        return False  # a layer wrapped by an adapter (LoRA): its weight alone is not what it computes
    return fused.fusion_applies(x, *(p for m in modules for p in m.parameters(recurse=False)), conv=True)


def _conv_bn(x: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d, relu: bool = False,
             residual: torch.Tensor | None = None) -> torch.Tensor:
    """conv, BatchNorm, then ``+ residual`` and ReLU when asked. In eval mode the BatchNorm is folded into the
    convolution (one pass over the activations instead of two); for float32 CPU inference the add and the
    ReLU also run inside oneDNN's convolution as post-ops, instead of two more passes."""
    if bn.training or not isinstance(conv, nn.Conv2d):  # training, or an adapter-wrapped conv: nothing to fold
        out = bn(conv(x))
    else:
        fast = _conv_fusion_applies(x, conv, bn) and (residual is None or residual.dtype == torch.float32)
        weight, bias = _folded(conv, bn, pack_for=x if fast else None)
        if fast:
            return fused.conv_pointwise(x, conv, weight, bias, relu=relu, residual=residual)
        out = F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    if residual is not None:
        out = out + residual
    return F.relu(out, inplace=True) if relu else out


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1):
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride > 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(OrderedDict([
                ("pool", nn.AvgPool2d(stride) if stride > 1 else nn.Identity()),
                ("conv", nn.Conv2d(in_channels, out_channels, 1, bias=False)),
                ("bn", nn.BatchNorm2d(out_channels)),
            ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _conv_bn(x, self.conv1, self.bn1, relu=True)
        out = _conv_bn(out, self.conv2, self.bn2, relu=True)
        identity = x
        if self.downsample is not None:
            identity = _conv_bn(self.downsample.pool(x), self.downsample.conv, self.downsample.bn)
        return _conv_bn(self.avgpool(out), self.conv3, self.bn3, relu=True, residual=identity)


class ModifiedResNet(nn.Module):
    """images (B, 3, H, W) -> features (B, embed_dim)."""

    def __init__(self, config: VisionConfig, embed_dim: int):
        super().__init__()
        self.config = config
        width = config.width
        self.conv1 = nn.Conv2d(3, width // 2, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, kernel_size=3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        in_channels = width
        for index, depth in enumerate(config.stage_depths):
            planes = width * 2 ** index
            blocks = [Bottleneck(in_channels, planes, stride=1 if index == 0 else 2)]
            in_channels = planes * Bottleneck.expansion
            blocks += [Bottleneck(in_channels, planes) for _ in range(depth - 1)]
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
        self.attn_pool = AttentionPool2d(config.grid_size, width * 32, config.num_heads, embed_dim)
        self._init_weights()
        self.grad_checkpointing = False  # accepted for API symmetry; conv stages are not checkpointed

    def _init_weights(self) -> None:
        std = self.attn_pool.proj.in_features ** -0.5
        for linear in (self.attn_pool.q, self.attn_pool.kv, self.attn_pool.proj):
            nn.init.normal_(linear.weight, std=std)
        for name, param in self.named_parameters():
            if name.endswith("bn3.weight") and name.startswith("layer"):
                nn.init.zeros_(param)  # each residual branch starts as identity

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        x = _conv_bn(x, self.conv1, self.bn1, relu=True)
        x = _conv_bn(x, self.conv2, self.bn2, relu=True)
        x = _conv_bn(x, self.conv3, self.bn3, relu=True)
        return self.avgpool(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (size, size):
            raise ValueError(f"expected images of shape (B, 3, {size}, {size}), got {tuple(images.shape)}; "
                             f"resize with the model's preprocessing or build the model with "
                             f"vision.image_size={images.shape[-1]}")
        if _conv_fusion_applies(images, self.conv1):
            # oneDNN's convolutions run natively on NHWC; NCHW input would be reordered around every conv
            images = images.contiguous(memory_format=torch.channels_last)
        x = self.stem(images)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
        return self.attn_pool(x)

    def param_groups(self) -> list[list[nn.Module]]:
        """One group: partial locking of the ResNet is not defined (as in open_clip)."""
        return [[self]]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
