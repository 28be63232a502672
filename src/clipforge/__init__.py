"""clipforge: CLIP-style vision-language models.

Public names are loaded lazily so that ``import clipforge`` stays cheap (no model code is imported until used).
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "create_model": "clipforge.models.factory",
    "create_model_and_transforms": "clipforge.models.factory",
    "create_model_from_pretrained": "clipforge.models.factory",
    "list_models": "clipforge.models.registry",
    "list_pretrained": "clipforge.models.weights",
    "get_tokenizer": "clipforge.models.factory",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'clipforge' has no attribute '{name}'")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
