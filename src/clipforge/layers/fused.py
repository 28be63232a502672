"""The fast CPU inference path, behind one switch: bias, activation, residual add (and for convolutions the folded
BatchNorm and ReLU) inside oneDNN's GEMM and convolution primitives.

An ``nn.Linear`` on CPU is a bias broadcast copy plus a BLAS GEMM, and the activation and the residual add that
follow are two more passes over the activations, each its own OpenMP parallel region. oneDNN applies them as
post-ops while the output tile is still in cache. Its own GEMM kernels are also faster than the BLAS torch links on
some CPUs (on the development machine MKL's sgemm reaches about half of oneDNN's rate).

This module is the only place that calls the private ``torch.ops.mkldnn`` pointwise ops (the ones torch.compile's
CPU backend uses). Every caller asks ``fusion_applies(x, *params)`` first and falls back to plain torch when it says
no. It says yes only for float32 CPU tensors (input and parameters), with autograd off, autocast off, oneDNN
enabled, nothing being traced, exported or compiled, and the switch on:

- ``set_fused_inference(False)`` turns it off for the process (like timm's ``set_fused_attn``);
  ``CLIPFORGE_FUSED=0`` in the environment does the same at import;
- ``with fused_inference(False): ...`` turns it off for a block.

By default ("auto") the linear fusions are used only where they pay on the machine: oneDNN's GEMM is about twice as
fast as the BLAS torch links on some CPUs and about 10% slower on others (an AMD EPYC with MKL), where the saved
passes do not make up for it. The first inference call that could take the path times one ViT-B MLP block both
ways (a few tens of milliseconds, once per process) and keeps the faster. ``set_fused_inference(True)`` or
``CLIPFORGE_FUSED=1`` uses them unconditionally. Convolutions (folded BatchNorm, fused add and ReLU) always pay.

The ops have no autograd formula, which is why training never takes this path. One fusion does take autograd:
``residual_linear`` (a block's residual add accumulated by its projection GEMM, plain aten ops), used in training
and in plain CPU inference; the same switch turns it off.
"""
from __future__ import annotations

import contextlib
import functools
import os
import time

import torch
from torch import nn
from torch.nn import functional as F

# activation name -> (oneDNN post-op, algorithm); quick_gelu has no oneDNN equivalent
_POST_OPS = {"gelu": ("gelu", "none"), "gelu_tanh": ("gelu", "tanh")}


def _ops_available() -> tuple[bool, bool]:
    ops = getattr(torch.ops, "mkldnn", None)
    try:
        mkldnn = torch.backends.mkldnn.is_available()
    except (AttributeError, RuntimeError):
        return False, False
    return (mkldnn and hasattr(ops, "_linear_pointwise"),
            mkldnn and hasattr(ops, "_convolution_pointwise") and hasattr(ops, "_reorder_convolution_weight"))


_LINEAR_OPS, _CONV_OPS = _ops_available()
_SWITCH = {"0": False, "false": False, "no": False, "off": False, "1": True, "true": True, "yes": True, "on": True}
_enabled: bool | None = _SWITCH.get(os.environ.get("CLIPFORGE_FUSED", "auto").strip().lower())  # None: auto


def set_fused_inference(enabled: bool | None) -> None:
    """Turn the fused CPU inference path on or off for the whole process (None: auto, the default)."""
    global _enabled
    _enabled = None if enabled is None else bool(enabled)


def fused_inference_enabled() -> bool:
    return _enabled is not False


@functools.lru_cache(maxsize=None)
def linear_fusion_pays() -> bool:
    """Whether oneDNN's fused linear layers beat torch's GEMM plus separate activation and add on this machine:
    one ViT-B MLP block (256 tokens, GELU, residual add) timed both ways, interleaved, best of five, once."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(256, 768, generator=generator)
    w1, b1 = torch.randn(3072, 768, generator=generator) * 0.02, torch.zeros(3072)
    w2, b2 = torch.randn(768, 3072, generator=generator) * 0.02, torch.zeros(768)

    def fused():
        hidden = torch.ops.mkldnn._linear_pointwise(x, w1, b1, "gelu", [], "none")
        return torch.ops.mkldnn._linear_pointwise.binary(hidden, x, w2, b2, "add")

    def plain():
        return x + F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)

    best = {fused: float("inf"), plain: float("inf")}
    with torch.inference_mode():
        for _ in range(6):  # the first round warms both up
            for fn in best:
                start = time.perf_counter()
                fn()
                best[fn] = min(best[fn], time.perf_counter() - start)
    return best[fused] <= best[plain]


@contextlib.contextmanager
def fused_inference(enabled: bool):
    """Turn the fused path on or off inside a ``with`` block (restored afterwards)."""
    global _enabled
    previous, _enabled = _enabled, None if enabled is None else bool(enabled)
    try:
        yield
    finally:
        _enabled = previous


def capturing() -> bool:
    """Whether the running code is being traced, scripted, compiled or exported (shapes and paths must stay fixed)."""
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling() or \
        torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()


def fusion_applies(x: torch.Tensor, *params: torch.Tensor | None, conv: bool = False) -> bool:
    """True when ``x`` (and the parameters the fused op will read) may take the fused oneDNN path."""
    if _enabled is False or not (_CONV_OPS if conv else _LINEAR_OPS):
        return False
    if x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_grad_enabled():
        return False
    if torch.is_autocast_enabled("cpu") or not torch.backends.mkldnn.enabled or capturing():
        return False
    if not all(p is None or (p.dtype == torch.float32 and p.device.type == "cpu") for p in params):
        return False
    return conv or _enabled is True or linear_fusion_pays()


def linear_applies(x: torch.Tensor, *linears: nn.Module) -> bool:
    """``fusion_applies`` for the weights and biases of some ``nn.Linear`` layers. False when one of them is not a
    plain ``nn.Linear`` (a layer with an adapter, e.g. LoRA: its weight alone is not what it computes)."""
    if not all(isinstance(layer, nn.Linear) for layer in linears):
        return False
    return fusion_applies(x, *(t for layer in linears for t in (layer.weight, layer.bias)))


# ------------------------------------------------------------------------------------------ linear layers


def linear_act(x: torch.Tensor, linear: nn.Linear, act: str | None = None) -> torch.Tensor | None:
    """``act(linear(x))`` in one oneDNN call, or None when ``act`` has no fused form (caller falls back).
    Call only where ``linear_applies(x, linear)``."""
    attr, algorithm = _POST_OPS.get(act, (None, None)) if act is not None else ("none", "none")
    if attr is None:
        return None
    return torch.ops.mkldnn._linear_pointwise(x, linear.weight, linear.bias, attr, [], algorithm)


def linear_add(x: torch.Tensor, linear: nn.Linear, residual: torch.Tensor) -> torch.Tensor:
    """``residual + linear(x)`` in one oneDNN call (``residual`` is read, not modified).
    Call only where ``linear_applies(x, linear)`` and ``residual`` is float32 on the CPU."""
    return torch.ops.mkldnn._linear_pointwise.binary(x, residual, linear.weight, linear.bias, "add")


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear``, through oneDNN when ``fusion_applies`` (its GEMM is the faster one on some CPUs)."""
    if fusion_applies(x, weight, bias):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "none")
    return F.linear(x, weight, bias)


def linear_rows(x: torch.Tensor, layer: nn.Module, rows: slice | None = None) -> torch.Tensor:
    """``layer(x)[..., rows]``. A plain ``nn.Linear`` computes only those output features (through oneDNN where it
    applies); any other layer (one wrapped by an adapter such as LoRA) is called whole, so that its update counts."""
    if not isinstance(layer, nn.Linear):
        out = layer(x)
        return out if rows is None else out[..., rows]
    weight, bias = layer.weight, layer.bias
    if rows is not None:
        weight, bias = weight[rows], bias[rows] if bias is not None else None
    return linear(x, weight, bias)


# ------------------------------------------------------------------- residual linear layers (training too)


def hooked(*modules: nn.Module) -> bool:
    """Whether a forward hook would see these modules' calls (theirs or a global one): then they must be called."""
    from torch.nn.modules import module as torch_module

    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)


def residual_linear_applies(x: torch.Tensor, *linears: nn.Module) -> bool:
    """Whether ``residual_linear`` may compute ``residual + linear(input)`` for these layers on a stream ``x``
    (the residual and the layers' inputs share its dtype): exactly ``nn.Linear`` (not a subclass with its own
    forward, e.g. fake-quantised) with a bias and no hooks, on the CPU, one dtype throughout, autocast off, nothing
    traced or exported, the fused path's switch not off. Autograd may be on."""
    if _enabled is False or x.device.type != "cpu" or torch.is_autocast_enabled("cpu") or capturing():
        return False
    return all(type(layer) is nn.Linear and layer.bias is not None and
               layer.weight.dtype == layer.bias.dtype == x.dtype for layer in linears) \
        and not hooked(*linears)


def residual_linear(residual: torch.Tensor, x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """``residual + linear(x)`` as one GEMM accumulating into ``residual + bias``. ``F.linear`` on the CPU first
    copies the bias into every output row and the residual add is one more pass over the activations; here the sum
    ``residual + bias`` is the only pass and the GEMM adds into it in place (beta = 1). Gradients are the same
    (the bias gradient is the sum over rows either way); values differ only in the order of the float additions.
    Call only where ``residual_linear_applies``."""
    out = residual.reshape(-1, residual.shape[-1]) + linear.bias
    out.addmm_(x.reshape(-1, x.shape[-1]), linear.weight.t())
    return out.view(residual.shape)


# ------------------------------------------------------------------------------------------- convolutions


def pack_conv_weight(weight: torch.Tensor, conv: nn.Conv2d, input_shape) -> torch.Tensor:
    """``weight`` reordered into oneDNN's blocked layout for convolutions of inputs shaped like ``input_shape``
    (oneDNN then skips reordering the plain weight on every call). Call only where ``fusion_applies(conv=True)``."""
    return torch.ops.mkldnn._reorder_convolution_weight(weight, conv.padding, conv.stride, conv.dilation,
                                                        conv.groups, list(input_shape))


def conv_pointwise(x: torch.Tensor, conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor, *, relu: bool,
                   residual: torch.Tensor | None = None) -> torch.Tensor:
    """``relu?(conv(x; weight, bias) + residual?)`` in one oneDNN call (``weight`` plain or packed).
    Call only where ``fusion_applies(x, ..., conv=True)``."""
    args = (conv.padding, conv.stride, conv.dilation, conv.groups)
    if residual is not None:
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, residual, weight, bias, *args, "add", 1.0, "relu" if relu else None, [], None)
    return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, *args, "relu" if relu else "none", [], "")
