"""Loading a state dict into a model strictly, with errors that say what the weights are.

Keys are converted to clipforge's layout (``models.convert``) and compared with the model once: every missing,
unexpected or mis-shaped key is an error. When the weights clearly belong to another architecture, the error says
which presets they fit instead of listing a hundred keys. Positional embeddings are resampled only when the caller
asks (the user requested another image size): weights trained at one resolution are never silently interpolated
to another.
"""
from __future__ import annotations

from typing import Mapping

import torch

from clipforge.config import dotted_differences, to_dict
from clipforge.models import convert, registry
from clipforge.models.config import ClipConfig
from clipforge.models.hf_text import HFConfigUnavailable, hf_shape_problems


class ModelLoadError(ValueError):
    """The requested model cannot be built or its weights cannot be loaded as asked."""


def _image_size_of(state_dict: Mapping[str, torch.Tensor], config: ClipConfig) -> int | None:
    """The image size a clipforge-layout state dict was trained at, from its positional embedding."""
    v = config.vision
    if v.kind == "vit" and "visual.pos_embed" in state_dict:
        tokens = state_dict["visual.pos_embed"].shape[-2] - (1 if v.class_token else 0)
        stride = v.patch_size
    elif v.kind == "resnet" and "visual.attn_pool.pos_embed" in state_dict:
        tokens, stride = state_dict["visual.attn_pool.pos_embed"].shape[0] - 1, 32
    else:
        return None
    side = round(tokens ** 0.5)
    return side * stride if side * side == tokens else None


def _differences(state_dict: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> dict[str, list[str]]:
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    misshaped = sorted(f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                       for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    return {"missing": missing, "unexpected": unexpected, "mis-shaped": misshaped}


def fitting_presets(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Preset names whose architecture takes exactly these weights (any supported key layout)."""
    found = []
    for name in registry.list_models():
        config = registry.get_architecture(name)
        try:
            converted = convert.convert_state_dict(state_dict, config)
            if convert.shapes_match(converted, config):
                found.append(name)
        except (convert.ConversionError, HFConfigUnavailable, ImportError):
            continue  # ImportError, HFConfigUnavailable: a Hugging Face text tower that cannot be built here
    return found


def _describe_mismatch(problems: dict[str, list[str]], state_dict, config: ClipConfig, source: str) -> str:
    total = sum(len(v) for v in problems.values())
    family = "ResNet" if any(".layer1." in k or k.startswith("visual.layer1") for k in state_dict) else \
        "ViT" if any("pos_embed" in k or "positional_embedding" in k for k in state_dict) else "unknown"
    wanted = {"resnet": "ResNet", "vit": "ViT"}.get(config.vision.kind, "timm")
    if total > 12 or family != wanted:
        fits = fitting_presets(state_dict)
        what = f"fit {', '.join(fits)}" if fits else f"look like a {family} model that matches no preset"
        return (f"the weights from {source} do not fit this {wanted} architecture ({total} keys differ): they "
                f"{what}. Load them with the matching architecture name (e.g. '{fits[0] if fits else 'ARCH'}"
                f"::path').")
    lines = [f"{len(keys)} {title}: " + ", ".join(keys[:8]) + (" ..." if len(keys) > 8 else "")
             for title, keys in problems.items() if keys]
    return f"weights from {source} do not fit the architecture:\n  " + "\n  ".join(lines)


def load_weights(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, *,
                 resize_pos_embed: bool = False) -> None:
    """Convert ``state_dict`` to clipforge's layout and load it strictly into ``model`` (a ``CLIP``).

    ``resize_pos_embed``: resample the image positional embedding to the model's grid (only when the user asked for
    another image size); otherwise weights trained at another size are an error naming both sizes.
    """
    config = model.config
    try:
        converted = convert.convert_state_dict(state_dict, config)
    except convert.ConversionError as e:
        raise ModelLoadError(f"weights from {source}: {e}") from None
    trained_at = _image_size_of(converted, config)
    if trained_at is not None and trained_at != config.vision.image_size:
        if not resize_pos_embed:
            raise ModelLoadError(
                f"the weights from {source} were trained at image size {trained_at} but the model is built for "
                f"{config.vision.image_size}. Build it at {trained_at} (image_size={trained_at}), or ask for "
                f"image_size={config.vision.image_size} explicitly to interpolate the position embedding.")
        converted = convert.resize_state_dict_pos_embed(converted, config)
    own = model.state_dict()
    _check_hf_text(converted, own, config, source)
    problems = _differences(converted, own)
    if any(problems.values()):
        raise ModelLoadError(_describe_mismatch(problems, state_dict, config, source))
    model.load_state_dict(converted, strict=True)


def _check_hf_text(converted: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor], config: ClipConfig,
                   source: str) -> None:
    """A Hugging Face text tower whose transformers config is not the checkpoint's: one line, before the key list."""
    wrong = hf_shape_problems(converted, own) if config.text.kind == "hf" else []
    if wrong:
        hf = config.text.hf
        given = "text.hf.model_config" if hf.model_config is not None else f"the hub config of '{hf.model_name}'"
        raise ModelLoadError(
            f"the weights from {source} do not fit the text tower built from {given} ({len(wrong)} encoder tensors "
            f"differ, e.g. {wrong[0]} in checkpoint vs model): build it from the transformers config the checkpoint "
            f"was trained with (text.hf.model_name or text.hf.model_config)")


def dotted_diff(base: ClipConfig, other: ClipConfig) -> dict:
    """``{"vision.image_size": 64, ...}``: the fields where ``other`` differs from ``base``."""
    return dotted_differences(to_dict(base), to_dict(other))
