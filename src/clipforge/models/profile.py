"""Model size and compute: parameter counts, GFLOPs per image and per text, bytes on disk.

FLOPs are counted as executed (a multiply-add is 2 FLOPs). clipforge skips the last block's work for
tokens that are not pooled, so a class-token ViT counts about 1/depth less than a full forward.

Everything runs on the meta device, so profiling ViT-bigG costs no memory and no real compute.
"""
from __future__ import annotations

import dataclasses

import torch
from torch.utils.flop_counter import FlopCounterMode

from clipforge.models.coca import build_model
from clipforge.models.config import ClipConfig

_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


@dataclasses.dataclass(frozen=True)
class ModelProfile:
    params_total: int
    params_image: int
    params_text: int
    gflops_image: float  # one image at the config's image_size, forward only, as clipforge computes it
    gflops_text: float  # one full-length token sequence, forward only, as clipforge computes it

    def size_on_disk(self, precision: str = "fp32") -> int:
        """Bytes of a weights file holding every parameter in ``precision`` (headers excluded)."""
        if precision not in _BYTES:
            raise ValueError(f"unknown precision '{precision}'; use one of {', '.join(_BYTES)}")
        return self.params_total * _BYTES[precision]


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _gflops(fn, *args) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        fn(*args)
    return counter.get_total_flops() / 1e9


def profile_model(config: ClipConfig) -> ModelProfile:
    """Counts for a model built from ``config`` (on the meta device)."""
    with torch.device("meta"):
        model = build_model(config).eval()
        images = torch.zeros(1, 3, config.vision.image_size, config.vision.image_size)
        tokens = torch.zeros(1, config.text.context_length, dtype=torch.long)
    return ModelProfile(params_total=_count(model), params_image=_count(model.visual), params_text=_count(model.text),
                        gflops_image=_gflops(model.encode_image, images),
                        gflops_text=_gflops(model.encode_text, tokens))
