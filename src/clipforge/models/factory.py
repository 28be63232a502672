"""Build models the way users ask for them: a short pipeline of named steps.

``create_model`` = parse the name -> locate the weights and what they declare -> resolve the architecture (the
preset, the weights' own config, the user's overrides) -> build -> load strictly -> cast. Every step is a small
function so that a failure names the step and the fix.

Names: ``ARCH``, ``ARCH::TAG``, ``ARCH::path/to/weights``, ``hf-hub:org/repo[@rev]``, ``local-dir:PATH``, or a bare
path to a self-describing file or folder (a clipforge checkpoint, an exported model folder). The M-CLIP repos of
``models.mclip`` (``M-CLIP/...``, with or without ``hf-hub:``) are built from their two sources by ``_create_mclip``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Mapping

import torch

from clipforge.config import ConfigError, apply_overrides, to_dict
from clipforge.models import convert, convert_config, mclip, registry
from clipforge.models.clip import CLIP, ModelInfo
from clipforge.models.coca import build_model
from clipforge.models.config import ClipConfig
from clipforge.models.hub_layout import CLIPFORGE_SECTION, DeclaredModel, clipforge_section, save_hub_layout
from clipforge.models.loading import ModelLoadError, dotted_diff, load_weights
from clipforge.models.resolve import HF_HUB_PREFIX, LOCAL_DIR_PREFIX, LocalWeights, resolve_weights
from clipforge.models import weights as weights_table
from clipforge.precision import get_precision
from clipforge.transforms import (AugmentConfig, PreprocessConfig, create_eval_transform, create_train_transform,
                                  resolve_preprocess)

logger = logging.getLogger("clipforge")

__all__ = ["ModelLoadError", "ModelSpec", "parse_model_spec", "create_model", "create_model_and_transforms",
           "create_model_from_pretrained", "get_tokenizer", "tokenizer_for_config", "save_pretrained",
           "get_model_config", "describe", "describe_model"]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What the user asked for, once parsed: an architecture (or a self-describing source) and weights."""
    arch: str | None
    pretrained: str | None


def _is_path_like(name: str) -> bool:
    return Path(name).expanduser().exists() and ("/" in name or name.endswith((".pt", ".pth", ".bin",
                                                                                ".safetensors", ".ckpt")))


def parse_model_spec(model_name: str, pretrained: str | None = None) -> ModelSpec:
    """``"ViT-B-32"``, ``"ViT-B-32::laion2b_s34b_b79k"``, ``"hf-hub:org/repo[@rev]"``, ``"local-dir:/path"``, or the
    path of a self-describing weights file or folder."""
    if not isinstance(model_name, str) or not model_name.strip():
        raise ModelLoadError(f"model name must be a non-empty string, got {model_name!r}")
    name = model_name.strip()
    if name.startswith((HF_HUB_PREFIX, LOCAL_DIR_PREFIX)) or ("::" not in name and _is_path_like(name)):
        if pretrained:
            raise ModelLoadError(f"'{name}' already names its weights; do not also pass pretrained={pretrained!r}")
        return ModelSpec(arch=None, pretrained=name)
    try:
        arch, tag = weights_table.split_model_tag(name)
    except ValueError as e:
        raise ModelLoadError(str(e)) from None
    if tag is not None:
        if pretrained and pretrained != tag:
            raise ModelLoadError(f"'{name}' names the tag '{tag}' but pretrained={pretrained!r} was also given")
        return ModelSpec(arch=arch, pretrained=tag)
    return ModelSpec(arch=name, pretrained=pretrained)


def resolve_config(spec: ModelSpec, declared: DeclaredModel, source: str, overrides: Mapping[str, Any] | None,
                   image_size: int | None) -> ClipConfig:
    """Architecture = the preset (or the weights' own config) + the weights' declared changes + user overrides.

    Weights that declare a whole architecture are built as declared. Naming a different architecture for them is an
    error that lists the differences, unless it is the same preset the weights were made from (a training run's
    overrides, e.g. its image size, belong to its weights).
    """
    if spec.arch is None:
        if declared.config is None:
            raise ModelLoadError(f"cannot tell the architecture of {source}: it does not describe itself. Pass the "
                                 "architecture name too, e.g. create_model('ViT-B-32', pretrained='path/to/file') or "
                                 "'ViT-B-32::path/to/file'")
        config = declared.config
    else:
        config = registry.get_architecture(spec.arch)
        if declared.overrides and declared.arch is None:  # a tag's (or folder's) changes to any preset it names;
            config = apply_overrides(config, dict(declared.overrides))  # a run's are relative to its own preset
        if declared.config is not None:
            diff = dotted_diff(config, declared.config)
            same_preset = declared.arch is not None and _same_arch(declared.arch, spec.arch)
            if diff and not same_preset:
                made_from = f" (made from '{declared.arch}')" if declared.arch else ""
                lines = "\n  ".join(f"{k}: {spec.arch} has {_get(config, k)!r}, the weights {v!r}"
                                    for k, v in list(diff.items())[:12])
                raise ModelLoadError(
                    f"the weights in {source} declare an architecture{made_from} that differs from "
                    f"'{spec.arch}':\n  {lines}\nLoad them by their own description (give the path alone, or "
                    f"'local-dir:PATH' / 'hf-hub:org/repo') or pick the matching architecture.")
            config = declared.config
    if overrides:
        config = apply_overrides(config, dict(overrides))
    if image_size is not None:
        config = apply_overrides(config, {"vision.image_size": image_size})
    return config


def _same_arch(a: str, b: str) -> bool:
    try:
        return registry.canonical_name(a) == registry.canonical_name(b)
    except ValueError:
        return a.strip().lower() == b.strip().lower()


def _get(config: ClipConfig, dotted: str) -> Any:
    value: Any = to_dict(config)
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _preprocess_for(config: ClipConfig, declared: DeclaredModel,
                    preprocess_overrides: Mapping[str, Any] | None) -> PreprocessConfig:
    base = dict(preprocess_overrides or {})
    wanted = config.vision.image_size
    if declared.preprocess is None or declared.preprocess.image_size != wanted:
        base.setdefault("image_size", wanted)  # no declared preprocessing, or the user asked for another size
    return resolve_preprocess(declared.preprocess, None, base or None)


def _arch_and_overrides(spec: ModelSpec, declared: DeclaredModel, config: ClipConfig) -> tuple[str | None, dict]:
    arch = spec.arch or declared.arch
    if arch is None:
        return None, {}
    try:
        arch = registry.canonical_name(arch)
        return arch, dotted_diff(registry.get_architecture(arch), config)
    except ValueError:  # a preset the weights name but this installation lacks: keep the name, no diff
        return arch, dict(declared.overrides)


def create_model(model_name: str, pretrained: str | None = None, *, precision: str = "fp32",
                 device: str | torch.device = "cpu", image_size: int | None = None,
                 overrides: Mapping[str, Any] | None = None, preprocess_overrides: Mapping[str, Any] | None = None,
                 cache_dir: str | Path | None = None, local_files_only: bool = False) -> CLIP:
    """Build a CLIP model by name, optionally with pretrained weights (tag, file, ``hf-hub:`` id or directory).

    ``overrides`` replaces architecture fields by dotted path (``{"vision.patch_dropout": 0.5}``); ``image_size``
    builds the model for another resolution and interpolates the positional embedding of the weights (weights are
    never interpolated unless asked). ``precision`` is a name of ``clipforge.precision`` (``fp32``, ``bf16``, ...).
    Where the model came from and its preprocessing are in ``model.info``.
    """
    mclip_name = mclip.parse_name(model_name)
    if mclip_name is not None:
        return _create_mclip(mclip_name, pretrained, precision=precision, device=device, image_size=image_size,
                             overrides=overrides, preprocess_overrides=preprocess_overrides, cache_dir=cache_dir,
                             local_files_only=local_files_only)
    spec = parse_model_spec(model_name, pretrained)
    cast = get_precision(precision)  # an unknown name fails before any download
    local: LocalWeights | None = None
    if spec.pretrained is not None:
        local = resolve_weights(spec.pretrained, spec.arch, cache_dir=cache_dir, local_files_only=local_files_only)
    declared = local.declared if local is not None else DeclaredModel()
    source = local.source if local is not None else ""
    try:
        config = resolve_config(spec, declared, source, overrides, image_size)
    except ConfigError as e:
        raise ModelLoadError(str(e)) from None
    arch, arch_overrides = _arch_and_overrides(spec, declared, config)
    info = ModelInfo(preprocess=_preprocess_for(config, declared, preprocess_overrides), arch=arch,
                     overrides=arch_overrides, source=local.source if local is not None else None,
                     weights_path=str(local.weights_path) if local is not None else None)
    model = build_model(config, info)  # a CoCa when the architecture has a caption decoder
    if local is not None:
        load_weights(model, local.state_dict(), local.source, resize_pos_embed=image_size is not None)
    return model.to(device=device, dtype=cast.weights).eval()


def _create_mclip(name: mclip.MClipName, pretrained: str | None, *, precision: str, device, image_size: int | None,
                  overrides, preprocess_overrides, cache_dir, local_files_only: bool) -> CLIP:
    """An M-CLIP model: its text tower from the M-CLIP repo, its image tower from the tag its model card names."""
    if pretrained:
        raise ModelLoadError(f"'{name.source}' already names its weights; do not also pass pretrained={pretrained!r}")
    cast = get_precision(precision)
    found = mclip.resolve(name, cache_dir=cache_dir, local_files_only=local_files_only)
    try:
        config = resolve_config(ModelSpec(None, None), DeclaredModel(config=found.config), found.source, overrides,
                                image_size)
    except ConfigError as e:
        raise ModelLoadError(str(e)) from None
    info = ModelInfo(preprocess=_preprocess_for(config, DeclaredModel(preprocess=found.preprocess),
                                                preprocess_overrides),
                     source=found.source, weights_path=str(found.text_weights))
    model = build_model(config, info)
    mclip.load(model, found, resize_pos_embed=image_size is not None)
    return model.to(device=device, dtype=cast.weights).eval()


def create_model_and_transforms(model_name: str, pretrained: str | None = None, *,
                                augment: AugmentConfig | None = None, **kwargs):
    """``(model, train_transform, eval_transform)``, as open_clip returns them."""
    model = create_model(model_name, pretrained, **kwargs)
    cfg = model.preprocess_config
    return model, create_train_transform(cfg, augment), create_eval_transform(cfg)


def create_model_from_pretrained(model_name: str, pretrained: str | None = None, **kwargs):
    """``(model, eval_transform)`` for inference, as open_clip returns them."""
    model = create_model(model_name, pretrained, **kwargs)
    return model, create_eval_transform(model.preprocess_config)


def describe_model(model_name: str, cache_dir=None, local_files_only: bool = False
                   ) -> tuple[ClipConfig, LocalWeights | None]:
    """The architecture a name stands for, without building the model or reading tag weights: a preset (with a
    tag's declared changes) or a self-describing source's own config; and the local weights when they were
    resolved (files, folders, ``hf-hub:``)."""
    mclip_name = mclip.parse_name(model_name)
    if mclip_name is not None:
        return mclip.describe(mclip_name, cache_dir, local_files_only).config, None
    spec = parse_model_spec(model_name)
    if spec.arch is not None and spec.pretrained is None:
        return registry.get_architecture(spec.arch), None
    if spec.arch is not None and weights_table.has_tag(spec.arch, spec.pretrained):
        entry = weights_table.get_weight_entry(spec.arch, spec.pretrained)
        return apply_overrides(registry.get_architecture(spec.arch), dict(entry.arch_overrides)), None
    local = resolve_weights(spec.pretrained, spec.arch, cache_dir=cache_dir, local_files_only=local_files_only)
    if spec.arch is not None:
        return resolve_config(spec, local.declared, local.source, None, None), local
    if local.declared.config is None:
        raise ModelLoadError(f"'{model_name}' does not describe its architecture: no config file found")
    return local.declared.config, local


def get_tokenizer(model_name: str, context_length: int | None = None, *, cache_dir: str | Path | None = None,
                  local_files_only: bool = False, **kwargs):
    """The tokenizer a model's weights need: CLIP BPE, or the hub tokenizer of SigLIP weights."""
    config, _ = describe_model(model_name, cache_dir, local_files_only)
    return tokenizer_for_config(config, context_length, cache_dir=cache_dir, local_files_only=local_files_only,
                                **kwargs)


def tokenizer_for_config(config: ClipConfig, context_length: int | None = None, **kwargs):
    """The tokenizer named by an architecture config, limited to its positional embedding."""
    from clipforge.tokenizer import create_tokenizer  # deferred: keeps `import clipforge.models` light

    max_len = config.text.context_length
    if config.tokenizer_strip_sep:
        kwargs.setdefault("strip_sep_token", True)
    return create_tokenizer(config.tokenizer, context_length=context_length or max_len, max_context_length=max_len,
                            clean=config.tokenizer_clean, **kwargs)


def get_model_config(model_name: str) -> dict | None:
    """open_clip's ``get_model_config``: the architecture as open_clip's ``model_cfg`` dict, or None for an unknown
    name. (clipforge's own config object is ``clipforge.models.registry.get_architecture``.)"""
    try:
        config, _ = describe_model(model_name)
    except (ValueError, FileNotFoundError):
        return None
    try:
        return convert_config.config_to_open_clip(config)
    except ConfigError:
        return None  # an architecture open_clip's vocabulary cannot express


def save_pretrained(model: CLIP, directory: str | Path, *, preprocess: PreprocessConfig | None = None) -> Path:
    """Write ``directory`` in the hub layout open_clip reads (open_clip_config.json + open_clip_model.safetensors).

    The folder also records clipforge's exact architecture (name, overrides, full config), so
    ``create_model("local-dir:DIR")`` rebuilds the model exactly, and open_clip loads it with ``local-dir:DIR``.
    An architecture open_clip's vocabulary cannot express (e.g. a MAP-pooled ViT without timm) is written with
    ``model_cfg: null`` and clipforge's own keys: clipforge reads it, open_clip cannot (a warning says so).
    """
    preprocess = preprocess or model.preprocess_config
    try:
        model_cfg = convert_config.config_to_open_clip(model.config)
        state_dict = convert.to_open_clip_state_dict(model.state_dict(), model.config)
    except (ConfigError, convert.ConversionError) as e:
        logger.warning("%s: open_clip cannot build this architecture (%s); the folder is for clipforge only",
                       directory, e)
        model_cfg, state_dict = None, model.state_dict()
    section = clipforge_section(model.config, model.info.arch, model.info.overrides)
    section["preprocess"] = to_dict(preprocess)
    open_clip_config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess.to_open_clip(),
                        CLIPFORGE_SECTION: section}
    save_hub_layout(Path(directory), state_dict, open_clip_config)
    return Path(directory)


def describe(config: ClipConfig) -> str:
    """The resolved architecture as indented JSON (for ``clipforge info``)."""
    return json.dumps(to_dict(config), indent=2)
