"""LoRA adapters on either tower, through peft (``pip install 'clipforge[lora]'``), imported only when used.

Layers are chosen per tower by name patterns (regular expressions matched against the end of a dotted module name
inside the tower: ``attn\\.qkv`` adapts every block's packed q/k/v projection, ``blocks\\.1[01]\\.mlp\\.fc\\d`` the
MLPs of blocks 10 and 11). Every other parameter is frozen, except the ones named in ``LoraConfig.trainable``.

Three views of an adapted model:
- ``merged_state_dict``: plain weights with each update folded in (``W + B A * alpha / rank``), the layout any
  model of the architecture loads: what training checkpoints store as their weights and what exports write.
- ``adapter_state_dict``: the frozen base weights of the adapted layers and the adapters, in peft's layout: what a
  checkpoint adds so that a run resumes exactly.
- ``save_adapters`` / ``load_adapters``: the adapters alone with their config and the fingerprint of the base
  model they were trained on (loading them onto another base model is refused).

clipforge's fast inference paths read weights directly; they check for plain ``nn.Linear`` / ``nn.Conv2d`` layers and
call adapted layers whole, so an unmerged model computes the same as its merge.
"""
from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from clipforge._atomic import atomic_directory
from clipforge._optional import require
from clipforge.config import ConfigError, from_dict, to_dict
from clipforge.models.fingerprint import weights_fingerprint

ADAPTER_NAME = "default"
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapters.safetensors"
_ADAPTABLE = (nn.Linear, nn.Conv2d, nn.Embedding)
_TOWERS = (("image", "visual"), ("text", "text"))


class AdapterError(ValueError):
    """Adapters that do not fit the model or the config (the message says why and what to do)."""


@dataclasses.dataclass(frozen=True)
class LoraTowerConfig:
    """LoRA on one tower: ``rank`` 0 leaves the tower without adapters."""
    rank: int = 0
    alpha: Optional[float] = None             # the update is scaled by alpha / rank; None: alpha = rank (scale 1)
    dropout: float = 0.0                      # on the adapter's input
    targets: tuple[str, ...] = (r"attn\.qkv", r"attn\.proj")  # module-name patterns (end of the dotted name)

    def __post_init__(self):
        if self.rank < 0 or (self.alpha is not None and self.alpha <= 0) or not 0 <= self.dropout < 1:
            raise ConfigError(f"lora: rank must be >= 0, alpha > 0 (or null) and dropout in [0, 1), got rank="
                              f"{self.rank}, alpha={self.alpha}, dropout={self.dropout}")
        if self.rank and not self.targets:
            raise ConfigError("lora: a tower with rank > 0 needs target patterns, e.g. targets=['attn\\\\.qkv']")
        for pattern in self.targets:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ConfigError(f"lora target {pattern!r} is not a regular expression ({e})") from None


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """LoRA per tower; ``trainable``: patterns of other parameters that keep training (the loss temperature)."""
    image: LoraTowerConfig = LoraTowerConfig()
    text: LoraTowerConfig = LoraTowerConfig()
    trainable: tuple[str, ...] = ("logit_scale", "logit_bias")

    @property
    def enabled(self) -> bool:
        return bool(self.image.rank or self.text.rank)


def _import_peft():
    return require("peft", hint="LoRA adapters need peft, which is not installed: pip install 'clipforge[lora]'")


def _matches(pattern: str, name: str) -> bool:
    return re.fullmatch(rf"(?:.*\.)?(?:{pattern})", name) is not None


def target_names(tower: nn.Module, patterns: tuple[str, ...], tower_name: str) -> list[str]:
    """Names of the layers of ``tower`` that the patterns select; every pattern must select at least one layer,
    and only layers LoRA can adapt (Linear, Conv2d, Embedding)."""
    modules = dict(tower.named_modules())
    chosen: list[str] = []
    for pattern in patterns:
        hits = [n for n in modules if n and _matches(pattern, n)]
        if not hits:
            examples = ", ".join(n for n, m in modules.items() if isinstance(m, nn.Linear))
            raise AdapterError(f"lora target {pattern!r} matches no layer of the {tower_name} tower; its linear "
                               f"layers are named like {examples[:200]}...")
        wrong = [n for n in hits if not isinstance(modules[n], _ADAPTABLE)]
        if wrong:
            raise AdapterError(f"lora target {pattern!r} matches {wrong[0]} ({type(modules[wrong[0]]).__name__}) in "
                               f"the {tower_name} tower, which LoRA cannot adapt: target Linear, Conv2d or Embedding "
                               "layers (end the pattern with the layer name, e.g. 'attn\\.qkv')")
        chosen += [n for n in hits if n not in chosen]
    return chosen


def apply_lora(model: nn.Module, config: LoraConfig) -> nn.Module:
    """Add LoRA adapters to ``model`` in place (per ``config``), freeze the rest but ``config.trainable``; returns
    ``model``. The adapters start as zero updates, so the model computes what it did before."""
    if not config.enabled:
        return model
    peft = _import_peft()
    model.lora_base_fingerprint = weights_fingerprint(model)  # what the adapters may be loaded onto later
    model.lora_base_description = describe_base(model)
    for key, attribute in _TOWERS:
        tower_config: LoraTowerConfig = getattr(config, key)
        if not tower_config.rank:
            continue
        tower = getattr(model, attribute)
        names = target_names(tower, tower_config.targets, key)
        peft_config = peft.LoraConfig(r=tower_config.rank, lora_alpha=tower_config.alpha or tower_config.rank,
                                      lora_dropout=tower_config.dropout, target_modules=names, bias="none")
        peft.inject_adapter_in_model(peft_config, tower, adapter_name=ADAPTER_NAME)
    for name, param in model.named_parameters():
        param.requires_grad_(".lora_" in name or any(_matches(p, name) for p in config.trainable))
    return model


def describe_base(model: nn.Module) -> str:
    """Architecture, weights source, image size and dtype of a model: said when adapters meet another base."""
    info, config = getattr(model, "info", None), getattr(model, "config", None)
    parts = [f"architecture {getattr(info, 'arch', None) or 'custom'}",
             f"weights {getattr(info, 'source', None) or 'random init'}"]
    if getattr(info, "overrides", None):
        parts.append(f"overrides {dict(info.overrides)}")
    if config is not None:
        parts.append(f"image size {config.vision.image_size}")
    parts.append(f"dtype {str(next(model.parameters()).dtype).replace('torch.', '')}")
    return ", ".join(parts)


def _lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    lora = sys.modules.get("peft.tuners.lora")  # never imported: no model has adapters (peft is not loaded for it)
    if lora is None:
        return {}
    return {name: m for name, m in model.named_modules() if isinstance(m, lora.LoraLayer)}


def has_adapters(model: nn.Module) -> bool:
    return bool(_lora_layers(model))


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The plain state dict of ``model`` with every adapter's update folded into its layer's weight."""
    layers = _lora_layers(model)
    state = {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items() if ".lora_" not in k}
    with torch.no_grad():
        for name, layer in layers.items():
            base = layer.get_base_layer()
            weight = base.weight.detach()
            state[f"{name}.weight"] = weight + layer.get_delta_weight(ADAPTER_NAME).to(weight.dtype)
    return state


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters and the frozen base weights of the adapted layers, in the adapted model's key layout."""
    return {k: v for k, v in model.state_dict().items() if ".lora_" in k or ".base_layer." in k}


def load_adapted_state(model: nn.Module, merged: dict[str, torch.Tensor], adapters: dict[str, torch.Tensor]) -> None:
    """Restore an adapted model from ``merged_state_dict`` + ``adapter_state_dict`` (the checkpoint's two parts)."""
    state = {}
    for key in model.state_dict():
        source = adapters if (".lora_" in key or ".base_layer." in key) else merged
        if key not in source:
            raise AdapterError(f"the checkpoint has no {key}: its adapters were made with another lora config "
                               "(rank or targets); resume with the config it was trained with")
        state[key] = source[key]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise AdapterError(f"the checkpoint's adapters do not fit this model ({str(e).splitlines()[-1].strip()}); "
                           "resume with the lora config it was trained with") from None


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its layer and put the plain layer back (in place; returns ``model``). The merged
    model takes clipforge's fast inference paths again."""
    for name, layer in _lora_layers(model).items():
        layer.merge(adapter_names=[ADAPTER_NAME])
        base = layer.get_base_layer()
        # peft merges into the weight's storage without bumping its version counter, so a cache keyed on it (the
        # ResNet's BatchNorm-folded conv weights) would keep the unmerged weight: drop it
        base.__dict__.pop("_folded", None)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, base)
    return model


def save_adapters(weights: dict[str, torch.Tensor], config: LoraConfig, base_fingerprint: str,
                  out: str | Path, base_description: str = "") -> Path:
    """Write adapters alone (``adapters.safetensors`` + ``adapter_config.json``) into the folder ``out``.
    ``weights``: the ``lora_`` tensors of an adapted model (``adapter_weights``); ``base_fingerprint``: the
    ``lora_base_fingerprint`` that ``apply_lora`` recorded on it."""
    from safetensors.torch import save_file

    if not weights:
        raise AdapterError("the model has no adapters to save (lora rank is 0 on both towers)")
    with atomic_directory(Path(out)) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(tmp / WEIGHTS_FILE))
        (tmp / CONFIG_FILE).write_text(json.dumps({"lora": to_dict(config), "base_fingerprint": base_fingerprint,
                                                   "base": base_description}, indent=2, sort_keys=True))
    return Path(out)


def adapter_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' own tensors (``lora_A`` / ``lora_B``) of an adapted model."""
    return {k: v for k, v in model.state_dict().items() if ".lora_" in k}


def load_adapters(model: nn.Module, folder: str | Path, merge: bool = False) -> nn.Module:
    """Add the adapters saved in ``folder`` to ``model`` (the base model they were trained on: checked by
    fingerprint), unmerged, or merged into the weights with ``merge=True``."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{folder} holds no adapters ({CONFIG_FILE} + {WEIGHTS_FILE}); give a run's "
                                "adapters/ folder")
    meta = json.loads((folder / CONFIG_FILE).read_text())
    if weights_fingerprint(model) != meta.get("base_fingerprint"):
        expected = meta.get("base") or "the base named in the run's config.json (model.name, model.pretrained, " \
                                       "model.image_size)"
        raise AdapterError(f"the adapters in {folder} were trained on another base model (weights fingerprint "
                           f"differs): they expect {expected}; this model is {describe_base(model)}")
    config = from_dict(LoraConfig, meta["lora"])
    apply_lora(model, config)
    weights = load_file(str(folder / WEIGHTS_FILE))
    expected = set(adapter_weights(model))
    if set(weights) != expected:
        raise AdapterError(f"the adapters in {folder} do not fit this model ({len(set(weights) ^ expected)} keys "
                           "differ): the files were changed or come from another architecture")
    try:
        model.load_state_dict(weights, strict=False)
    except RuntimeError as e:
        raise AdapterError(f"the adapters in {folder} do not fit this model ({str(e).splitlines()[-1].strip()})") \
            from None
    return merge_lora(model) if merge else model


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
