"""One optimizer step: forward, loss, backward, update. Callable from the loop, the tests and the benchmarks.

With ``accum_steps > 1`` the step uses gradient caching (``training.grad_cache``): features of the whole batch are
computed first without a graph, the loss and its gradient w.r.t. the features once, then each chunk is re-encoded
with the same random state and back-propagated. The result is the gradient of the large batch, temperature included,
which plain loss-per-micro-batch accumulation does not give for a contrastive loss.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as torch_dist

from clipforge import dist
from clipforge.dist import average_gradients
from clipforge.losses import value_checks
from clipforge.losses.distill import TeacherOutputs
from clipforge.precision import Precision, get_precision
from clipforge.training.grad_cache import grad_cache_step

_MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps the learned temperature at 100


@dataclasses.dataclass
class StepOutput:
    loss: float
    parts: dict[str, float]
    skipped: bool                 # the loss was not finite: no update was made
    grad_norm: Optional[float] = None
    logit_scale: float = math.nan  # exp(logit_scale) before the update


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


def _features(model, images, tokens):
    out = model(images, tokens, output_dict=True)
    return out["image_features"], out["text_features"], out["logit_scale"], out.get("logit_bias")


def _caption_losses(model, images, tokens, loss_fn, accum_steps: int) -> dict:
    """CoCa: features and teacher-forced caption logits from the same tower passes, then the loss."""
    if accum_steps > 1:
        raise ValueError("loss.kind=coca has no gradient-cached form yet: set optim.accum_steps=1 (and lower the "
                         "batch size if memory is short)")
    if not hasattr(unwrap(model), "caption_logits"):
        raise ValueError("loss.kind=coca needs a CoCa model (one with a caption decoder, e.g. coca_ViT-B-32); "
                         "use loss.kind=clip for a two-tower model")
    out = model(images, tokens, output_dict=True, with_captions=True)
    bias = out.get("logit_bias")
    return loss_fn(out["image_features"].float(), out["text_features"].float(), out["logit_scale"].float(),
                   None if bias is None else bias.float(), captions=(out["caption_logits"], out["caption_labels"]))


def _accumulated_backward(model, images, tokens, loss_fn, accum_steps, precision: str | Precision, scaler,
                          teacher=None) -> dict:
    """Exact large-batch gradient with activations of one chunk at a time (gradient caching).

    The encoders are called on the unwrapped model, so under DDP the gradients are averaged here (in buckets).
    """
    precision = get_precision(precision)
    if images.shape[0] % accum_steps:
        raise ValueError(f"batch size {images.shape[0]} is not divisible by optim.accum_steps={accum_steps}")
    inner = unwrap(model)
    device_type = images.device.type

    def encode_image(x):
        with precision.autocast_context(device_type):
            return inner.encode_image(x, normalize=True).float()

    def encode_text(t):
        with precision.autocast_context(device_type):
            return inner.encode_text(t, normalize=True).float()

    def loss(image_features, text_features):
        bias = inner.logit_bias.float() if getattr(inner, "logit_bias", None) is not None else None
        extra = {"teacher": teacher} if teacher is not None else {}
        return loss_fn(image_features, text_features, inner.logit_scale.float().exp(), bias, **extra)

    losses = grad_cache_step(encode_image, encode_text, images, tokens, loss,
                             chunk_size=images.shape[0] // accum_steps, scaler=scaler)
    if inner is not model:  # DDP's hooks only run through its own forward
        average_gradients(inner.parameters())
    return losses


def _read_step(losses: dict[str, torch.Tensor], logit_scale: torch.Tensor, grad_norm: torch.Tensor | None):
    """Everything the host needs from this step in one device sync: whether the loss is finite on every rank
    (all ranks then skip or step together), the loss parts, the temperature and the gradient norm."""
    total = losses["loss"].detach().float()
    flag = torch.isfinite(total).float().reshape(1)
    if dist.is_initialized():
        torch_dist.all_reduce(flag, op=torch_dist.ReduceOp.MIN)
    values = [flag.reshape(()), *(v.detach().float().reshape(()) for v in losses.values()),
              logit_scale.detach().float().exp().reshape(())]
    if grad_norm is not None:
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor
            grad_norm = grad_norm.full_tensor()
        values.append(grad_norm.detach().float().reshape(()).to(flag.device))
    numbers = torch.stack([v.to(flag.device) for v in values]).tolist()
    finite, parts = numbers[0] > 0, dict(zip(losses, numbers[1:1 + len(losses)]))
    scale = numbers[1 + len(losses)]
    norm = numbers[-1] if grad_norm is not None else None
    return finite, parts, scale, norm


def train_step(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor, loss_fn: Callable,
               optimizer: torch.optim.Optimizer, *, accum_steps: int = 1, precision: str | Precision = "fp32",
               scaler: Optional[torch.amp.GradScaler] = None, grad_clip: Optional[float] = None,
               teacher: Optional[torch.nn.Module] = None,
               replicated_params: Sequence[torch.nn.Parameter] = ()) -> StepOutput:
    """One update on the batch. ``teacher``: a frozen model whose features feed ``loss.kind=distill``.
    ``replicated_params``: parameters no DDP/FSDP hook synchronises (FSDP2 leaves the 0-d temperature and bias
    replicated); their gradients are averaged here. A non-finite loss skips the update on every rank."""
    precision = get_precision(precision)
    device_type = images.device.type
    model.train()
    optimizer.zero_grad(set_to_none=True)
    with precision.autocast_context(device_type):
        distill = teacher_outputs(teacher, images, tokens)
    extra = {"teacher": distill} if distill is not None else {}
    with value_checks(False):  # one finiteness check per step, on the loss, in _read_step
        if getattr(loss_fn, "needs_captions", False):
            with precision.autocast_context(device_type):
                losses = _caption_losses(model, images, tokens, loss_fn, accum_steps)
            (scaler.scale(losses["loss"]) if scaler else losses["loss"]).backward()
        elif accum_steps > 1:
            losses = _accumulated_backward(model, images, tokens, loss_fn, accum_steps, precision, scaler, distill)
        else:
            with precision.autocast_context(device_type):
                image_features, text_features, logit_scale, logit_bias = _features(model, images, tokens)
                losses = loss_fn(image_features.float(), text_features.float(), logit_scale.float(),
                                 None if logit_bias is None else logit_bias.float(), **extra)
            (scaler.scale(losses["loss"]) if scaler else losses["loss"]).backward()
    average_gradients(replicated_params)
    if scaler is not None:
        scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip) if grad_clip is not None else None
    finite, parts, scale, norm = _read_step(losses, unwrap(model).logit_scale, grad_norm)
    if not finite:
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.update()  # the scaler saw inf gradients in unscale_: let it lower the scale
        return StepOutput(float("nan"), parts, skipped=True, logit_scale=scale)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    with torch.no_grad():
        unwrap(model).logit_scale.clamp_(0, _MAX_LOGIT_SCALE)
    return StepOutput(parts["loss"], parts, skipped=False, grad_norm=norm, logit_scale=scale)
