"""Helpers for captioning tests (a module name no other test folder uses, so imports are unambiguous)."""
import torch


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights with enough spread that the decoder's choices are far from ties."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not name.endswith("logit_scale"):
                param.add_(torch.randn(param.shape, generator=gen) * (0.05 if param.ndim > 1 else 0.1))
    return model
