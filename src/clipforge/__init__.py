"""clipforge: CLIP-style vision-language models.

Public names are loaded lazily so that ``import clipforge`` stays cheap (no model code is imported until used).
"""
from __future__ import annotations

import importlib

from clipforge._version import __version__

# open_clip's public names, with open_clip's behaviour, plus clipforge's own
_LAZY = {
    "create_model": "clipforge.models.factory",
    "create_model_and_transforms": "clipforge.models.factory",
    "create_model_from_pretrained": "clipforge.models.factory",
    "get_tokenizer": "clipforge.models.factory",
    "get_model_config": "clipforge.models.factory",
    "save_pretrained": "clipforge.models.factory",
    "list_models": "clipforge.models.registry",
    "add_model_config": "clipforge.models.registry",
    "list_pretrained": "clipforge.models.weights",
    "list_pretrained_tags_by_model": "clipforge.models.weights",
    "list_pretrained_models_by_tag": "clipforge.models.weights",
    "tokenize": "clipforge.tokenizer",
    "get_precision": "clipforge.precision",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'clipforge' has no attribute '{name}'")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
