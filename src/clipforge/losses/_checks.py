"""Input checks shared by every loss: clear errors instead of deep tracebacks or silently wrong numbers."""
from __future__ import annotations

import contextlib
import contextvars

import torch


def as_scalar(value, name: str, like: torch.Tensor) -> torch.Tensor:
    """``value`` (a float or a one-element tensor) as a 0-dim tensor on ``like``'s device; autograd flows through."""
    if not isinstance(value, torch.Tensor):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a number or a one-element tensor, got {type(value).__name__}") from None
        return torch.tensor(value, dtype=torch.float32, device=like.device)
    if value.numel() != 1:
        raise ValueError(f"{name} must hold one value, got a tensor of shape {tuple(value.shape)}")
    if not value.is_floating_point():
        value = value.float()
    # same device as the features (a CPU scale with CUDA features is common); autograd follows the copy
    return value.reshape(()).to(like.device)


def check_features(image_features: torch.Tensor, text_features: torch.Tensor) -> None:
    """Both (B, D) with the same B and D, dtype and device; B >= 1."""
    for name, t in (("image_features", image_features), ("text_features", text_features)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a tensor of shape (batch, dim), got {type(t).__name__}")
        if t.ndim != 2 or t.shape[0] == 0:
            raise ValueError(f"{name} must have shape (batch, dim) with batch >= 1, got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be floating point, got {t.dtype}")
    if image_features.shape[0] != text_features.shape[0]:
        raise ValueError(f"batch mismatch: {image_features.shape[0]} image features but {text_features.shape[0]} "
                         "text features; each image needs its paired caption at the same row")
    if image_features.shape[1] != text_features.shape[1]:
        raise ValueError(f"embedding dimension mismatch: image features have {image_features.shape[1]}, text "
                         f"features {text_features.shape[1]}; project both towers to the same embed_dim")
    if image_features.dtype != text_features.dtype or image_features.device != text_features.device:
        raise ValueError(f"image features ({image_features.dtype}, {image_features.device}) and text features "
                         f"({text_features.dtype}, {text_features.device}) must share dtype and device")


def check_finite(**named: torch.Tensor | None) -> None:
    """One device sync for all tensors; on failure, name the ones holding NaN or inf."""
    tensors = {k: v for k, v in named.items() if v is not None}
    device = next(iter(tensors.values())).device
    flags = torch.stack([torch.isfinite(t.detach()).all().to(device) for t in tensors.values()])
    if bool(flags.all()):
        return
    bad = [k for k, ok in zip(tensors, flags.tolist()) if not ok]
    raise ValueError(f"non-finite values (NaN or inf) in {', '.join(bad)}; check the encoders' outputs, the "
                     "learning rate and that logit_scale is clamped (see clipforge.losses.temperature)")


def check_scale(logit_scale: torch.Tensor) -> None:
    if not bool(logit_scale.detach() > 0):
        raise ValueError(f"logit_scale must be positive, got {float(logit_scale):.4g}; pass the exponentiated "
                         "scale (model.logit_scale.exp()), not its logarithm")


_VALUE_CHECKS: contextvars.ContextVar[bool] = contextvars.ContextVar("clipforge_loss_value_checks", default=True)


@contextlib.contextmanager
def value_checks(enabled: bool):
    """Turn the losses' checks of input values (finite features, positive scale) on or off inside a block.

    Each check costs a device sync. The training step turns them off: it checks the loss once per step instead
    (NaN or inf inputs make the loss non-finite) and skips the update. Shape and dtype checks always run.
    """
    token = _VALUE_CHECKS.set(bool(enabled))
    try:
        yield
    finally:
        _VALUE_CHECKS.reset(token)


def check_inputs(image_features, text_features, logit_scale, logit_bias=None):
    """Validate and return ``(logit_scale, logit_bias)`` as 0-dim tensors (bias may stay None)."""
    check_features(image_features, text_features)
    scale = as_scalar(logit_scale, "logit_scale", image_features)
    bias = None if logit_bias is None else as_scalar(logit_bias, "logit_bias", image_features)
    if _VALUE_CHECKS.get():
        check_finite(image_features=image_features, text_features=text_features, logit_scale=scale, logit_bias=bias)
        check_scale(scale)
    return scale, bias


def logits_dtype(features: torch.Tensor) -> torch.dtype:
    """Logits and their reductions run in fp32 for fp32/bf16/fp16 features, in fp64 for fp64 ones."""
    return torch.float64 if features.dtype == torch.float64 else torch.float32
