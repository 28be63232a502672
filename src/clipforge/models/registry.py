"""Architecture presets: ``presets/<name>.json`` -> ClipConfig.

Names are the ones open_clip users type, matched case-insensitively. ``<name>-quickgelu`` is not a
separate file: it resolves to ``<name>`` with QuickGELU in both towers.
"""
from __future__ import annotations

import difflib
import functools
import json
import pathlib

from clipforge.config import apply_overrides, from_dict
from clipforge.models.config import ClipConfig

PRESET_DIR = pathlib.Path(__file__).resolve().parent / "presets"
QUICKGELU_SUFFIX = "-quickgelu"


class UnknownModelError(ValueError):
    """No preset has this name; the message lists the closest names."""


@functools.lru_cache(maxsize=None)
def _preset_files() -> dict[str, pathlib.Path]:
    return {path.stem: path for path in sorted(PRESET_DIR.glob("*.json"))}


def list_models() -> list[str]:
    """Sorted preset names (without the ``-quickgelu`` spellings)."""
    return sorted(_preset_files(), key=str.lower)


def _resolve_name(name: str) -> str:
    by_lower = {n.lower(): n for n in _preset_files()}
    if name.lower() in by_lower:
        return by_lower[name.lower()]
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=5, cutoff=0.5)
    hint = f" Closest: {', '.join(by_lower[c] for c in close)}." if close else ""
    raise UnknownModelError(f"unknown model '{name}'.{hint} See clipforge.list_models() for all "
                            f"{len(by_lower)} architectures.")


@functools.lru_cache(maxsize=None)
def _load(name: str) -> ClipConfig:
    with open(_preset_files()[name], encoding="utf-8") as f:
        return from_dict(ClipConfig, json.load(f))


def get_model_config(name: str) -> ClipConfig:
    """ClipConfig of preset ``name`` (case-insensitive; ``-quickgelu`` suffix switches both towers to QuickGELU)."""
    if not isinstance(name, str) or not name:
        raise UnknownModelError(f"model name must be a non-empty string, got {name!r}")
    quick_gelu = name.lower().endswith(QUICKGELU_SUFFIX) and name.lower() not in {n.lower() for n in _preset_files()}
    base = name[:-len(QUICKGELU_SUFFIX)] if quick_gelu else name
    config = _load(_resolve_name(base))
    if quick_gelu:
        config = apply_overrides(config, {"vision.act": "quick_gelu", "text.act": "quick_gelu"})
    return config
