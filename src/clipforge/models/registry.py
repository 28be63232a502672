"""Architecture presets: ``presets/<name>.json`` -> ClipConfig, plus the ones a user registers.

Names are the ones open_clip users type, matched case-insensitively. ``<name>-quickgelu`` is not a
separate file: it resolves to ``<name>`` with QuickGELU in both towers. ``add_model_config(path)`` registers
architecture JSON files (a file or every ``*.json`` of a folder, named by file stem), in open_clip's format
(``embed_dim``, ``vision_cfg``, ``text_cfg``) or clipforge's (``presets/*.json``), as open_clip users do.
"""
from __future__ import annotations

import difflib
import functools
import json
import os
import pathlib

from clipforge.config import ConfigError, apply_overrides, from_dict
from clipforge.models.config import ClipConfig

PRESET_DIR = pathlib.Path(__file__).resolve().parent / "presets"
QUICKGELU_SUFFIX = "-quickgelu"
QUICK_GELU_OVERRIDES = {"vision.act": "quick_gelu", "text.act": "quick_gelu"}  # what -quickgelu and OpenAI tags need


class UnknownModelError(ValueError):
    """No preset has this name; the message lists the closest names."""


_USER_FILES: dict[str, pathlib.Path] = {}  # names registered with add_model_config (they shadow presets)


@functools.lru_cache(maxsize=None)
def _shipped_files() -> dict[str, pathlib.Path]:
    return {path.stem: path for path in sorted(PRESET_DIR.glob("*.json"))}


def _preset_files() -> dict[str, pathlib.Path]:
    return {**_shipped_files(), **_USER_FILES}


def add_model_config(path: str | os.PathLike) -> list[str]:
    """Register architecture JSON files: one file, or every ``*.json`` in a folder. Returns the names added.

    Each file is read and validated now, so a broken file fails here with its name, not at first use.
    """
    path = pathlib.Path(path).expanduser()
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not path.exists():
        raise FileNotFoundError(f"add_model_config: {path} does not exist (give a JSON file or a folder of them)")
    if not files:
        raise FileNotFoundError(f"add_model_config: {path} holds no *.json architecture files")
    for file in files:
        _read_config_file(file)  # validates
    for file in files:
        _USER_FILES[file.stem] = file
    _load.cache_clear()
    return [file.stem for file in files]


def _read_config_file(path: pathlib.Path) -> ClipConfig:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read architecture file {path}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"architecture file {path} must hold a JSON object")
    if "vision_cfg" in data and "text_cfg" in data:  # open_clip's format
        from clipforge.models.convert_config import config_from_open_clip

        try:
            return config_from_open_clip(data)
        except (ConfigError, KeyError, TypeError) as e:
            raise ConfigError(f"architecture file {path} (open_clip format): {e}") from None
    try:
        return from_dict(ClipConfig, data)
    except (ConfigError, TypeError) as e:
        raise ConfigError(f"architecture file {path}: {e}") from None


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
    return _read_config_file(_preset_files()[name])


def canonical_name(name: str) -> str:
    """The preset name as listed (``vit-b-32`` -> ``ViT-B-32``; ``-quickgelu`` kept); raises for unknown names."""
    quick_gelu = name.lower().endswith(QUICKGELU_SUFFIX) and name.lower() not in {n.lower() for n in _preset_files()}
    base = name[:-len(QUICKGELU_SUFFIX)] if quick_gelu else name
    return _resolve_name(base) + (QUICKGELU_SUFFIX if quick_gelu else "")


def get_architecture(name: str) -> ClipConfig:
    """ClipConfig of preset ``name`` (case-insensitive; ``-quickgelu`` suffix switches both towers to QuickGELU)."""
    if not isinstance(name, str) or not name:
        raise UnknownModelError(f"model name must be a non-empty string, got {name!r}")
    quick_gelu = name.lower().endswith(QUICKGELU_SUFFIX) and name.lower() not in {n.lower() for n in _preset_files()}
    base = name[:-len(QUICKGELU_SUFFIX)] if quick_gelu else name
    config = _load(_resolve_name(base))
    if quick_gelu:  # a Hugging Face text tower has its own activation: open_clip's quick_gelu does not reach it
        overrides = {k: v for k, v in QUICK_GELU_OVERRIDES.items() if k != "text.act" or config.text.kind != "hf"}
        config = apply_overrides(config, overrides)
    return config
