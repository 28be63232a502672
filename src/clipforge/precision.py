"""One precision vocabulary for model creation, training, benchmarking and export.

A precision says two things: the dtype the weights are stored in, and the dtype autocast runs the matmuls in (if any).

==============  ===============  ===============  ==========================================================
name            weights          autocast         aliases (open_clip / clip_benchmark spellings)
==============  ===============  ===============  ==========================================================
``fp32``        float32          off              ``float32``
``amp``         float32          float16          ``amp_fp16``, ``amp_float16`` (open_clip's ``amp``)
``amp_bf16``    float32          bfloat16         ``amp_bfloat16``
``fp16``        float16          off              ``pure_fp16``, ``float16``, ``half``
``bf16``        bfloat16         off              ``pure_bf16``, ``bfloat16``
==============  ===============  ===============  ==========================================================

open_clip's ``fp16``/``bf16`` keep LayerNorm weights in float32 while ``pure_*`` cast everything; clipforge's norms
always compute in float32 (``layers.norm``), so both spellings mean "weights in half precision" here.
On CPUs prefer ``amp_bf16``: float16 autocast on CPU is slow and loses range.
"""
from __future__ import annotations

import contextlib
import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class Precision:
    """A resolved precision: ``name`` is the canonical spelling."""

    name: str
    weights: torch.dtype
    autocast: torch.dtype | None

    @property
    def is_amp(self) -> bool:
        return self.autocast is not None

    @property
    def needs_grad_scaler(self) -> bool:
        """float16 gradients underflow without loss scaling."""
        return self.autocast == torch.float16

    def autocast_context(self, device_type: str):
        """``torch.autocast`` for AMP precisions, a no-op context otherwise."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device_type, dtype=self.autocast)


PRECISIONS = {
    "fp32": Precision("fp32", torch.float32, None),
    "amp": Precision("amp", torch.float32, torch.float16),
    "amp_bf16": Precision("amp_bf16", torch.float32, torch.bfloat16),
    "fp16": Precision("fp16", torch.float16, None),
    "bf16": Precision("bf16", torch.bfloat16, None),
}
ALIASES = {
    "float32": "fp32", "amp_fp16": "amp", "amp_float16": "amp", "amp_bfloat16": "amp_bf16",
    "pure_fp16": "fp16", "float16": "fp16", "half": "fp16", "pure_bf16": "bf16", "bfloat16": "bf16",
}


def get_precision(name: str | Precision) -> Precision:
    """The ``Precision`` for a name or alias; an unknown name raises ``ValueError`` listing the valid ones."""
    if isinstance(name, Precision):
        return name
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key not in PRECISIONS:
        raise ValueError(f"unknown precision '{name}': choose one of {', '.join(PRECISIONS)} "
                         f"(aliases: {', '.join(ALIASES)})")
    return PRECISIONS[key]


def precision_names() -> tuple[str, ...]:
    """Every accepted spelling, canonical names first (for config validation and help texts)."""
    return tuple(PRECISIONS) + tuple(ALIASES)
