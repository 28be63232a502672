"""One optimizer step: forward, loss, backward, update. Callable from the loop, the tests and the benchmarks.

With ``accum_steps > 1`` the step uses gradient caching (``training.grad_cache``): features of the whole batch are
computed first without a graph, the loss and its gradient w.r.t. the features once, then each chunk is re-encoded
with the same random state and back-propagated. The result is the gradient of the large batch, temperature included,
which plain loss-per-micro-batch accumulation does not give for a contrastive loss.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Callable, Optional

import torch
import torch.distributed as torch_dist

from clipforge import dist
from clipforge.dist import average_gradients
from clipforge.losses.distill import TeacherOutputs
from clipforge.training.grad_cache import grad_cache_step

_MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps the learned temperature at 100


@dataclasses.dataclass
class StepOutput:
    loss: float
    parts: dict[str, float]
    skipped: bool                 # the loss was not finite: no update was made
    grad_norm: Optional[float] = None


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The CLIP model inside torch.compile (``_orig_mod``) and DDP (``module``) wrappers."""
    model = getattr(model, "_orig_mod", model)
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


@torch.no_grad()
def teacher_outputs(teacher: Optional[torch.nn.Module], images: torch.Tensor, tokens: torch.Tensor):
    """The frozen teacher's features for distillation (None without a teacher)."""
    if teacher is None:
        return None
    out = teacher(images, tokens, output_dict=True)
    return TeacherOutputs(out["image_features"].float(), out["text_features"].float(), out["logit_scale"].float())


def autocast(device_type: str, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device_type, dtype=dtype)


def _all_finite(value: torch.Tensor) -> bool:
    """True when the loss is finite on every rank, so all ranks skip or step together."""
    flag = torch.isfinite(value.detach()).all().to(torch.float32).reshape(1)
    if dist.is_initialized():
        flag = flag.to(value.device)
        torch_dist.all_reduce(flag, op=torch_dist.ReduceOp.MIN)
    return bool(flag.item() > 0)


def _features(model, images, tokens):
    out = model(images, tokens, output_dict=True)
    return out["image_features"], out["text_features"], out["logit_scale"], out.get("logit_bias")


def _accumulated_backward(model, images, tokens, loss_fn, accum_steps, precision, scaler, teacher=None) -> dict:
    """Exact large-batch gradient with activations of one chunk at a time (gradient caching).

    The encoders are called on the unwrapped model, so under DDP the gradients are averaged here by hand.
    """
    if images.shape[0] % accum_steps:
        raise ValueError(f"batch size {images.shape[0]} is not divisible by optim.accum_steps={accum_steps}")
    inner = unwrap(model)
    device_type = images.device.type

    def encode_image(x):
        with autocast(device_type, precision):
            return inner.encode_image(x, normalize=True).float()

    def encode_text(t):
        with autocast(device_type, precision):
            return inner.encode_text(t, normalize=True).float()

    def loss(image_features, text_features):
        if not _all_finite(torch.stack([image_features.sum(), text_features.sum()]).detach()):
            return {"loss": (image_features.sum() + text_features.sum()) * float("nan")}  # the step is skipped
        bias = inner.logit_bias.float() if getattr(inner, "logit_bias", None) is not None else None
        extra = {"teacher": teacher} if teacher is not None else {}
        return loss_fn(image_features, text_features, inner.logit_scale.float().exp(), bias, **extra)

    losses = grad_cache_step(encode_image, encode_text, images, tokens, loss,
                             chunk_size=images.shape[0] // accum_steps, scaler=scaler)
    if inner is not model:  # DDP's hooks only run through its own forward
        average_gradients(inner.parameters())
    return losses


def train_step(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor, loss_fn: Callable,
               optimizer: torch.optim.Optimizer, *, accum_steps: int = 1, precision: str = "fp32",
               scaler: Optional[torch.amp.GradScaler] = None, grad_clip: Optional[float] = None,
               teacher: Optional[torch.nn.Module] = None) -> StepOutput:
    """One update on the batch. ``teacher``: a frozen model whose features feed ``loss.kind=distill``."""
    device_type = images.device.type
    model.train()
    optimizer.zero_grad(set_to_none=True)
    with autocast(device_type, precision):
        distill = teacher_outputs(teacher, images, tokens)
    extra = {"teacher": distill} if distill is not None else {}
    if accum_steps > 1:
        losses = _accumulated_backward(model, images, tokens, loss_fn, accum_steps, precision, scaler, distill)
        total = losses["loss"]
        if not _all_finite(total):
            optimizer.zero_grad(set_to_none=True)
            return StepOutput(float("nan"), {k: float(v.detach()) for k, v in losses.items()}, skipped=True)
    else:
        with autocast(device_type, precision):
            image_features, text_features, logit_scale, logit_bias = _features(model, images, tokens)
        features_ok = _all_finite(torch.stack([image_features.sum(), text_features.sum(), logit_scale]).detach())
        if not features_ok:  # a diverged model: skip rather than let the loss raise
            return StepOutput(float("nan"), {}, skipped=True)
        with autocast(device_type, precision):
            losses = loss_fn(image_features.float(), text_features.float(), logit_scale.float(),
                             None if logit_bias is None else logit_bias.float(), **extra)
        total = losses["loss"]
        if not _all_finite(total):
            return StepOutput(float("nan"), {k: float(v.detach()) for k, v in losses.items()}, skipped=True)
        (scaler.scale(total) if scaler else total).backward()
    average_gradients(getattr(model, "replicated_params", ()))  # the 0-d parameters FSDP2 leaves unsharded
    grad_norm = None
    if scaler is not None:
        scaler.unscale_(optimizer)
    if grad_clip is not None:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip))
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    with torch.no_grad():
        unwrap(model).logit_scale.clamp_(0, _MAX_LOGIT_SCALE)
    return StepOutput(float(total.detach()), {k: float(v.detach()) for k, v in losses.items()}, skipped=False,
                      grad_norm=grad_norm)
