"""The folder layouts models are shared in: open_clip's and transformers', read and written.

- open_clip (and clipforge): ``open_clip_config.json`` (``model_cfg``, ``preprocess_cfg``) next to
  ``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``. clipforge adds a ``clipforge`` section (the
  architecture name, its overrides and the exact architecture config) that open_clip ignores, so a folder written here
  loads in both and clipforge rebuilds the model exactly, even where open_clip's vocabulary cannot express it.
- transformers: ``config.json`` (a ``CLIPModel``, ``SiglipModel`` or ``Siglip2Model`` config) next to
  ``model.safetensors`` or ``pytorch_model.bin``, or next to a shard index (``model.safetensors.index.json`` /
  ``pytorch_model.bin.index.json``) and the shards it names; optionally ``preprocessor_config.json`` and, for SigLIP,
  the tokenizer's ``tokenizer.json``.

``read_folder_facts`` turns the config files into ``DeclaredModel`` (what the folder says about its model);
``save_hub_layout`` writes the open_clip layout, each file through a temporary name.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from clipforge._atomic import atomic_path
from clipforge._version import __version__
from clipforge.config import ConfigError, from_dict, to_dict
from clipforge.models import convert_config
from clipforge.models.config import ClipConfig
from clipforge.models.registry import QUICK_GELU_OVERRIDES
from clipforge.transforms import PreprocessConfig

OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # best first: no unpickling
HF_CONFIG = "config.json"
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
# what a transformers folder may hold, in transformers' order of preference: shard indexes list their shard files
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")
HF_PREPROCESSOR = "preprocessor_config.json"
HF_TOKENIZER = "tokenizer.json"
_SIGLIP_TYPES = ("siglip", "siglip2")
CLIPFORGE_SECTION = "clipforge"
_PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # transformers stores PIL resample codes


@dataclasses.dataclass(frozen=True)
class DeclaredModel:
    """What a weights source says about the model it belongs to; every field may be unknown (None / empty).

    ``config`` is a complete architecture (self-describing sources); ``arch`` the preset name it was made from;
    ``overrides`` the dotted changes a published tag needs on top of its preset (QuickGELU for OpenAI weights).
    """

    config: ClipConfig | None = None
    arch: str | None = None
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    preprocess: PreprocessConfig | None = None


def read_json(path: str | os.PathLike) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read JSON config {path}: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"JSON config {path} must hold an object, not {type(data).__name__}")
    return data


def clipforge_section(config: ClipConfig, arch: str | None, overrides: Mapping[str, Any] | None) -> dict:
    """The ``clipforge`` section written into open_clip_config.json and into training checkpoints."""
    return {"arch": arch, "overrides": dict(overrides or {}), "model_config": to_dict(config),
            "version": __version__}


def declared_from_section(section: Mapping[str, Any], source: str) -> DeclaredModel:
    """Read a ``clipforge`` section back (see ``clipforge_section``)."""
    try:
        config = from_dict(ClipConfig, section["model_config"])
    except (KeyError, TypeError, ConfigError) as e:
        raise ValueError(f"the clipforge section of {source} is damaged ({e}); re-export the model") from None
    preprocess = section.get("preprocess")
    return DeclaredModel(config=config, arch=section.get("arch"), overrides=dict(section.get("overrides") or {}),
                         preprocess=from_dict(PreprocessConfig, preprocess) if preprocess else None)


def open_clip_facts(config: Mapping[str, Any], source: str) -> DeclaredModel:
    """``open_clip_config.json`` -> DeclaredModel (the clipforge section, when present, is the exact config)."""
    model_cfg = config.get("model_cfg")
    section = config.get(CLIPFORGE_SECTION)
    if isinstance(section, dict) and "model_config" in section:
        declared = declared_from_section(section, source)
        pp = dict(config.get("preprocess_cfg") or {})
        pp.setdefault("size", declared.config.vision.image_size)
        return dataclasses.replace(declared, preprocess=PreprocessConfig.from_open_clip(pp))
    if not isinstance(model_cfg, dict):
        raise ValueError(f"{OPEN_CLIP_CONFIG} of {source} has no 'model_cfg' section")
    pp = dict(config.get("preprocess_cfg") or {})
    pp.setdefault("size", model_cfg.get("vision_cfg", {}).get("image_size", 224))
    preprocess = PreprocessConfig.from_open_clip(pp)
    try:
        model = convert_config.config_from_open_clip(model_cfg)
    except ConfigError as e:
        raise ValueError(f"{OPEN_CLIP_CONFIG} of {source}: {e}") from None
    # open_clip writes QuickGELU as a flag beside the architecture: declare it as the change the weights need
    overrides = dict(QUICK_GELU_OVERRIDES) if model_cfg.get("quick_gelu") else {}
    return DeclaredModel(config=model, overrides=overrides, preprocess=preprocess)


def hf_facts(config: Mapping[str, Any], preprocessor: Mapping[str, Any] | None, source: str,
             tokenizer: str | None = None) -> DeclaredModel:
    """transformers ``config.json`` (+ ``preprocessor_config.json``) -> DeclaredModel.

    ``tokenizer``: where the folder's own tokenizer is (the folder or hub repo, when it holds ``tokenizer.json``); a
    SigLIP model without one gets open_clip's tokenizer of the same vocabulary (``config_from_hf``), else this folder
    (so that ``get_tokenizer`` says the file is missing).
    """
    vision, text = config.get("vision_config"), config.get("text_config")
    if config.get("model_type") == "M-CLIP":  # a text encoder whose image tower only its model card names
        raise ValueError(f"{source} is an M-CLIP text encoder without a known image tower; clipforge builds the "
                         f"M-CLIP models listed in clipforge.models.mclip.MCLIP_IMAGE_TOWERS by name")
    if not isinstance(vision, dict) or not isinstance(text, dict):
        raise ValueError(f"{HF_CONFIG} of {source} is not a CLIP config: it needs 'vision_config' and "
                         f"'text_config' sections")
    try:
        model = convert_config.config_from_hf(config, tokenizer=tokenizer)
    except ConfigError as e:
        raise ValueError(f"{HF_CONFIG} of {source}: {e}") from None
    siglip = is_siglip(config)
    preprocess = _hf_preprocess(preprocessor or {}, model.vision.image_size, siglip,
                                naflex=config.get("model_type") == "siglip2")
    overrides = {} if siglip else {  # transformers' CLIP default is quick_gelu
        f"{tower}.act": "quick_gelu" for tower, cfg in (("vision", vision), ("text", text))
        if cfg.get("hidden_act", "quick_gelu") == "quick_gelu"}
    return DeclaredModel(config=model, overrides=overrides, preprocess=preprocess)


def _hf_preprocess(pp: Mapping[str, Any], image_size: int, siglip: bool, naflex: bool) -> PreprocessConfig:
    """transformers' image processor settings; where they are absent, its defaults for the model's processor class
    (CLIP: OpenAI mean/std, bicubic, shortest side + centre crop; SigLIP: 0.5 mean/std, a square resize, bicubic,
    bilinear for SigLIP 2's NaFlex processor, which clipforge runs at one fixed square size)."""
    given = {"image_size": image_size, "mean": pp.get("image_mean"), "std": pp.get("image_std"),
             "interpolation": _PIL_RESAMPLE.get(pp.get("resample"))}
    if siglip:
        defaults = {"mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear" if naflex else "bicubic"}
        given = {k: defaults[k] if v is None and k in defaults else v for k, v in given.items()}
        given["resize_mode"] = "squash"
    return PreprocessConfig(**{k: v for k, v in given.items() if v is not None})


def find_weights(folder: Path) -> tuple[str, Path] | None:
    """``(config file name, weights path)`` of the first layout ``folder`` holds, or None if it holds none. For a
    sharded transformers folder the weights path is its shard index (``_checkpoint_file`` reads the shards)."""
    for config_name, weight_names in ((OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS), (HF_CONFIG, HF_WEIGHT_FILES)):
        if not (folder / config_name).is_file():
            continue
        found = [folder / name for name in weight_names if (folder / name).is_file()]
        if not found:
            raise FileNotFoundError(f"{folder} has {config_name} but no weights file: expected one of "
                                    f"{', '.join(weight_names)}")
        return config_name, found[0]
    return None


def is_siglip(config: Mapping[str, Any]) -> bool:
    """Whether a transformers ``config.json`` is a SigLIP model's (which brings its own tokenizer)."""
    return config.get("model_type") in _SIGLIP_TYPES


def folder_tokenizer(config: Mapping[str, Any], where: str, has_tokenizer_file: bool) -> str | None:
    """The tokenizer a transformers folder's model gets from the folder itself: ``where`` (a directory or a hub
    repo id) for a SigLIP model, when the folder holds ``tokenizer.json`` or no other tokenizer is known for its
    vocabulary; None otherwise (CLIP's tokenizer, or open_clip's tokenizer of that vocabulary)."""
    if not is_siglip(config):
        return None
    vocab = (config.get("text_config") or {}).get("vocab_size", 32000)
    return where if has_tokenizer_file or not convert_config.siglip_tokenizer_known(vocab) else None


def layout_hint() -> str:
    return (f"{OPEN_CLIP_CONFIG} with {' or '.join(OPEN_CLIP_WEIGHTS)} (open_clip / clipforge layout), or "
            f"{HF_CONFIG} with {' or '.join(HF_WEIGHT_FILES)} (transformers layout)")


def read_folder_facts(config_name: str, config: Mapping[str, Any], preprocessor: Mapping[str, Any] | None,
                      source: str, tokenizer: str | None = None) -> DeclaredModel:
    if config_name == OPEN_CLIP_CONFIG:
        return open_clip_facts(config, source)
    return hf_facts(config, preprocessor, source, tokenizer)


# -------------------------------------------------------------------------------------------------- writing


def save_hub_layout(directory: str | os.PathLike, state_dict: Mapping[str, torch.Tensor],
                    open_clip_config: Mapping[str, Any], *, safe_serialization: bool | str = True) -> Path:
    """Write ``open_clip_config.json`` and the weights in the folder layout open_clip reads and pushes.

    ``safe_serialization``: True writes ``open_clip_model.safetensors``, False ``open_clip_pytorch_model.bin``,
    ``"both"`` writes both. Every file is written to a temporary name and renamed, so a crash leaves no half file.
    """
    clipforge_only = open_clip_config.get("model_cfg") is None and CLIPFORGE_SECTION in open_clip_config
    if not isinstance(open_clip_config.get("model_cfg"), Mapping) and not clipforge_only:
        raise ValueError("open_clip_config needs a 'model_cfg' section (and should have 'preprocess_cfg'): "
                         "{'model_cfg': {...}, 'preprocess_cfg': {...}}")
    if safe_serialization not in (True, False, "both"):
        raise ValueError(f"safe_serialization must be True, False or 'both', got {safe_serialization!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = _independent_tensors(state_dict)
    if safe_serialization in (True, "both"):
        from safetensors.torch import save_file

        with atomic_path(directory / OPEN_CLIP_WEIGHTS[0]) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt"})
    if safe_serialization in (False, "both"):
        with atomic_path(directory / OPEN_CLIP_WEIGHTS[1]) as tmp:
            torch.save(tensors, tmp)
    config = {key: value for key, value in open_clip_config.items()}
    config["model_cfg"] = None if clipforge_only else dict(open_clip_config["model_cfg"])
    config["preprocess_cfg"] = dict(open_clip_config.get("preprocess_cfg") or {})
    with atomic_path(directory / OPEN_CLIP_CONFIG) as tmp:
        tmp.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return directory


def _independent_tensors(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors that share no memory: safetensors refuses aliased or strided tensors."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for name, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"state_dict['{name}'] is a {type(tensor).__name__}, not a tensor")
        tensor = tensor.detach().to("cpu")
        storage = (tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
        if storage in seen or not tensor.is_contiguous() or tensor.numel() != _storage_numel(tensor):
            tensor = tensor.clone(memory_format=torch.contiguous_format)
        seen.add((tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes()))
        out[name] = tensor
    return out


def _storage_numel(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().nbytes() // max(tensor.element_size(), 1)
