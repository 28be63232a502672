"""Inference-only fused linear layers on CPU: bias, activation and residual add inside the GEMM.

An ``nn.Linear`` on CPU is a bias broadcast copy plus a BLAS GEMM, and the activation and the residual
add that follow are two more passes over the activations, each its own OpenMP parallel region. oneDNN's
linear primitive applies bias, GELU or the residual add as post-ops while the output tile is still in
cache: one pass and one parallel region per layer. Its own GEMM kernels can also be much faster than the
BLAS torch links (on the AMD development machine MKL's sgemm reaches about half of oneDNN's rate). Used
only where no gradient is needed (the oneDNN ops have no autograd formula), for float32 CPU tensors;
everything else goes through plain ``F.linear``.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# activation name -> (oneDNN post-op, algorithm); quick_gelu has no oneDNN equivalent
_POST_OPS = {"gelu": ("gelu", "none"), "gelu_tanh": ("gelu", "tanh")}


def _mkldnn_linear_available() -> bool:
    ops = getattr(torch.ops, "mkldnn", None)
    try:
        return torch.backends.mkldnn.is_available() and hasattr(ops, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


_AVAILABLE = _mkldnn_linear_available()


def fusion_applies(x: torch.Tensor) -> bool:
    """True when ``x`` may take the fused oneDNN path: CPU float32, no autograd, oneDNN enabled, and not being
    traced, exported or compiled (those want the portable aten graph; ``torch.backends.mkldnn.flags(enabled=False)``
    also switches the fused path off)."""
    return (_AVAILABLE and x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and torch.backends.mkldnn.enabled and not _capturing())


def _capturing() -> bool:
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling() or \
        torch.onnx.is_in_onnx_export()


def linear_act(x: torch.Tensor, linear: nn.Linear, act: str | None = None) -> torch.Tensor | None:
    """``act(linear(x))`` in one oneDNN call, or None when ``act`` has no fused form (caller falls back)."""
    attr, algorithm = _POST_OPS.get(act, (None, None)) if act is not None else ("none", "none")
    if attr is None:
        return None
    return torch.ops.mkldnn._linear_pointwise(x, linear.weight, linear.bias, attr, [], algorithm)


def linear_add(x: torch.Tensor, linear: nn.Linear, residual: torch.Tensor) -> torch.Tensor:
    """``residual + linear(x)`` in one oneDNN call (``residual`` is read, not modified)."""
    return torch.ops.mkldnn._linear_pointwise.binary(x, residual, linear.weight, linear.bias, "add")



def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear``, through oneDNN when ``fusion_applies(x)`` (its GEMM is the faster one on some CPUs)."""
    if fusion_applies(x):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "none")
    return F.linear(x, weight, bias)
