"""Shared helpers for model tests: random weights that exercise every parameter and buffer."""
import torch


def randomize_(module: torch.nn.Module, seed: int = 0, vectors_only: bool = False) -> torch.nn.Module:
    """Fill every floating parameter and BatchNorm statistic with random values.

    Default inits leave parts of a model inert (zeroed residual BatchNorms, zero biases, unit running
    variances), which would let a wrong mapping of those tensors go unnoticed. ``vectors_only`` touches
    only 1-D tensors (where the inert inits live), which is much cheaper for full-size models.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        stats = [(n, b) for n, b in module.named_buffers() if n.endswith(("running_mean", "running_var"))]
        for name, tensor in list(module.named_parameters()) + stats:
            if not tensor.is_floating_point() or tensor.device.type == "meta" or (vectors_only and tensor.ndim > 1):
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            elif name.endswith(("logit_scale", "logit_bias")):
                continue
            else:
                std = 0.02 if tensor.ndim > 1 else 0.1
                tensor.add_(torch.randn(tensor.shape, generator=gen) * std)
    return module
