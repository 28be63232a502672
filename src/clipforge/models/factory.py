"""Build models the way users ask for them: a short pipeline of named steps.

``create_model`` = parse the name -> resolve the architecture -> locate the weights -> apply the changes the weights
declare -> check that weights and architecture agree -> build -> convert the checkpoint -> strict load -> cast.
Every step is a small function so that a failure names the step and the fix.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

import torch

from clipforge.config import apply_overrides, to_dict
from clipforge.models import convert, convert_config, registry, weights
from clipforge.models.clip import CLIP
from clipforge.models.config import ClipConfig
from clipforge.transforms import (AugmentConfig, PreprocessConfig, create_eval_transform, create_train_transform,
                                  resolve_preprocess)

_PRECISIONS = {"fp32": torch.float32, "amp": torch.float32, "amp_bf16": torch.float32,
               "fp16": torch.float16, "bf16": torch.bfloat16, "pure_fp16": torch.float16, "pure_bf16": torch.bfloat16}
_SCHEMAS = ("hf-hub:", "local-dir:")


class ModelLoadError(ValueError):
    """The requested model cannot be built or its weights cannot be loaded as asked."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What the user asked for, once parsed: an architecture (or a self-describing source) and weights."""
    arch: str | None
    pretrained: str | None


def parse_model_spec(model_name: str, pretrained: str | None = None) -> ModelSpec:
    """``"ViT-B-32"``, ``"ViT-B-32::laion2b_s34b_b79k"``, ``"hf-hub:org/repo[@rev]"`` or ``"local-dir:/path"``."""
    if not isinstance(model_name, str) or not model_name.strip():
        raise ModelLoadError(f"model name must be a non-empty string, got {model_name!r}")
    name = model_name.strip()
    if name.startswith(_SCHEMAS):
        if pretrained:
            raise ModelLoadError(f"'{name}' already names its weights; do not also pass pretrained={pretrained!r}")
        source = name[len("local-dir:"):] if name.startswith("local-dir:") else name
        return ModelSpec(arch=None, pretrained=source)
    arch, tag = weights.split_model_tag(name)
    if tag is not None:
        if pretrained and pretrained != tag:
            raise ModelLoadError(f"'{name}' names the tag '{tag}' but pretrained={pretrained!r} was also given")
        return ModelSpec(arch=arch, pretrained=tag)
    return ModelSpec(arch=name, pretrained=pretrained)


def _config_from_weights(local: weights.LocalWeights) -> ClipConfig | None:
    """The architecture a self-describing checkpoint declares (hub/dir configs), if any."""
    if local.open_clip_config is not None and "model_cfg" in local.open_clip_config:
        return convert_config.config_from_open_clip(local.open_clip_config["model_cfg"])
    if local.hf_config is not None:
        return convert_config.config_from_hf(local.hf_config)
    return None


def _dict_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """``key.sub: a vs b`` for every leaf where two nested dicts differ."""
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _dict_diff(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: {va!r} vs {vb!r}")
    return out


def resolve_config(spec: ModelSpec, local: weights.LocalWeights | None, overrides: Mapping[str, Any] | None,
                   image_size: int | None) -> ClipConfig:
    """Architecture = preset (or the checkpoint's own config) + the weights' declared changes + user overrides."""
    declared = _config_from_weights(local) if local is not None else None
    config = registry.get_model_config(spec.arch) if spec.arch is not None else declared
    if config is None:
        raise ModelLoadError(f"cannot tell the architecture of '{spec.pretrained}': it has no open_clip_config.json "
                             "or config.json. Pass the architecture name too, e.g. create_model('ViT-B-32', "
                             "pretrained='path/to/file')")
    if local is not None and local.arch_overrides:
        config = apply_overrides(config, local.arch_overrides)
    if declared is not None and spec.arch is not None:
        diff = _dict_diff(to_dict(config), to_dict(declared))
        if diff:
            raise ModelLoadError(
                f"the weights in {local.source} declare an architecture that differs from '{spec.arch}':\n  "
                + "\n  ".join(diff[:12]) + "\nLoad them by their own name (e.g. 'hf-hub:org/repo') or pick the "
                "matching architecture.")
    if overrides:
        config = apply_overrides(config, dict(overrides))
    if image_size is not None:
        config = apply_overrides(config, {"vision.image_size": image_size})
    return config


def load_weights_into(model: CLIP, local: weights.LocalWeights) -> None:
    """Read, convert and strictly load a checkpoint; any missing, unexpected or mis-shaped key is an error."""
    state_dict = weights.read_state_dict(local.weights_path, local.format_hint)
    state_dict = convert.convert_state_dict(state_dict, model.config)
    state_dict = convert.resize_state_dict_pos_embed(state_dict, model.config)
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    misshaped = sorted(f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                       for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    if missing or unexpected or misshaped:
        lines = []
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if keys:
                lines.append(f"{len(keys)} {title}: " + ", ".join(keys[:8]) + (" ..." if len(keys) > 8 else ""))
        raise ModelLoadError(f"weights from {local.source} do not fit the architecture:\n  " + "\n  ".join(lines))
    model.load_state_dict(state_dict, strict=True)


def _cast(model: CLIP, precision: str, device: str | torch.device) -> CLIP:
    if precision not in _PRECISIONS:
        raise ModelLoadError(f"unknown precision '{precision}'; choose one of {', '.join(_PRECISIONS)}")
    return model.to(device=device, dtype=_PRECISIONS[precision])


def _preprocess_for(config: ClipConfig, local: weights.LocalWeights | None,
                    preprocess_overrides: Mapping[str, Any] | None) -> PreprocessConfig:
    declared = PreprocessConfig(**local.preprocess) if local is not None and local.preprocess else None
    from_file = None
    if local is not None and local.open_clip_config and local.open_clip_config.get("preprocess_cfg"):
        from_file = PreprocessConfig.from_open_clip(local.open_clip_config["preprocess_cfg"])
    base = dict(preprocess_overrides or {})
    if declared is None and from_file is None:
        base.setdefault("image_size", config.vision.image_size)
    elif config.vision.image_size != (declared or from_file).image_size:
        base.setdefault("image_size", config.vision.image_size)  # the user asked for another size
    return resolve_preprocess(declared, from_file, base or None)


def create_model(model_name: str, pretrained: str | None = None, *, precision: str = "fp32",
                 device: str | torch.device = "cpu", image_size: int | None = None,
                 overrides: Mapping[str, Any] | None = None, preprocess_overrides: Mapping[str, Any] | None = None,
                 cache_dir: str | Path | None = None, local_files_only: bool = False) -> CLIP:
    """Build a CLIP model by name, optionally with pretrained weights (tag, file, ``hf-hub:`` id or directory).

    ``overrides`` replaces architecture fields by dotted path (``{"vision.patch_dropout": 0.5}``); ``image_size``
    builds the model for another resolution and interpolates the positional embedding of the weights.
    The resolved preprocessing is attached as ``model.preprocess_config``.
    """
    spec = parse_model_spec(model_name, pretrained)
    local = None
    if spec.pretrained is not None:
        local = weights.resolve_weights(spec.pretrained, spec.arch, cache_dir=cache_dir,
                                        local_files_only=local_files_only)
    config = resolve_config(spec, local, overrides, image_size)
    model = CLIP(config)
    if local is not None:
        load_weights_into(model, local)
    model.preprocess_config = _preprocess_for(config, local, preprocess_overrides)
    model.pretrained_source = local.source if local is not None else None
    model.weights_path = str(local.weights_path) if local is not None else None
    return _cast(model, precision, device).eval()


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


def get_tokenizer(model_name: str, context_length: int | None = None, *, cache_dir: str | Path | None = None,
                  local_files_only: bool = False, **kwargs):
    """The tokenizer a model's weights need: CLIP BPE, or the hub tokenizer of SigLIP weights."""
    spec = parse_model_spec(model_name)
    if spec.arch is not None:
        config = registry.get_model_config(spec.arch)
    else:
        local = weights.resolve_weights(spec.pretrained, None, cache_dir=cache_dir, local_files_only=local_files_only)
        config = _config_from_weights(local)
        if config is None:
            raise ModelLoadError(f"cannot tell which tokenizer '{model_name}' needs: no config file found")
    return tokenizer_for_config(config, context_length, cache_dir=cache_dir, local_files_only=local_files_only,
                                **kwargs)


def tokenizer_for_config(config: ClipConfig, context_length: int | None = None, **kwargs):
    """The tokenizer named by an architecture config, limited to its positional embedding."""
    from clipforge.tokenizer import create_tokenizer  # deferred: keeps `import clipforge.models` light

    max_len = config.text.context_length
    return create_tokenizer(config.tokenizer, context_length=context_length or max_len, max_context_length=max_len,
                            clean=config.tokenizer_clean, **kwargs)


def save_pretrained(model: CLIP, directory: str | Path, *, preprocess: PreprocessConfig | None = None) -> Path:
    """Write ``directory`` in the hub layout open_clip reads (open_clip_config.json + open_clip_model.safetensors)."""
    preprocess = preprocess or getattr(model, "preprocess_config", None) or PreprocessConfig(
        image_size=model.config.vision.image_size)
    state_dict = convert.to_open_clip_state_dict(model.state_dict(), model.config)
    open_clip_config = {"model_cfg": convert_config.config_to_open_clip(model.config),
                        "preprocess_cfg": preprocess.to_open_clip()}
    weights.save_hub_layout(Path(directory), state_dict, open_clip_config)
    return Path(directory)


def describe(config: ClipConfig) -> str:
    """The resolved architecture as indented JSON (for ``clipforge info``)."""
    return json.dumps(to_dict(config), indent=2)
