"""Pretrained weights: the tag table, resolving ``pretrained=`` to a local file, and the hub folder layout.

``pretrained`` may be a tag of the architecture (``"laion2b_s34b_b79k"``; ``-`` and ``_`` are interchangeable), a
weights file, ``hf-hub:org/repo[@revision]``, or a local directory in a hub layout (open_clip's
``open_clip_config.json`` + ``open_clip_model.safetensors``/``open_clip_pytorch_model.bin``, or transformers'
``config.json`` + ``model.safetensors``/``pytorch_model.bin``). ``resolve_weights`` only finds the file and the
facts that come with it; building the model, converting key layouts and strict loading are the factory's job.

The tag table (``pretrained.json``) is data generated once from open_clip's published list by
``tools/make_pretrained_table.py``. Tags that need QuickGELU declare it as config overrides; open_clip's
``<arch>-quickgelu`` names are accepted as aliases of those tags.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import torch

from clipforge._atomic import atomic_path
from clipforge.models._checkpoint_file import CheckpointFileError, detect_format, read_state_dict
from clipforge.models._download import (
    HubRepoNotFoundError, HubUnreachableError, WeightsIntegrityError, WeightsNotCachedError, hub_file, is_offline,
    url_file,
)

__all__ = [
    "WeightEntry", "LocalWeights", "list_pretrained", "list_pretrained_tags", "list_pretrained_tags_by_model",
    "list_pretrained_models_by_tag", "get_weight_entry", "split_model_tag", "format_pretrained_table",
    "resolve_weights", "read_state_dict", "save_hub_layout", "default_preprocess", "open_clip_preprocess_cfg",
    "CheckpointFileError", "WeightsNotCachedError", "WeightsIntegrityError", "HubUnreachableError",
    "HubRepoNotFoundError",
]

HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
QUICKGELU_SUFFIX = "-quickgelu"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
PREPROCESS_KEYS = ("image_size", "mean", "std", "interpolation", "resize_mode")
QUICK_GELU_OVERRIDES = {"vision.act": "quick_gelu", "text.act": "quick_gelu"}
# File names of the two hub layouts, best first (safetensors needs no unpickling at all).
OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
HF_CONFIG = "config.json"
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
HF_PREPROCESSOR = "preprocessor_config.json"
_PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # transformers stores PIL resample codes


@dataclass(frozen=True)
class WeightEntry:
    """One published set of weights for one architecture."""

    arch: str
    tag: str
    hf_hub_id: str | None
    hf_filename: str | None
    url: str | None
    sha256: str | None  # of the URL file; may be only a prefix, see sha256_is_full
    sha256_is_full: bool
    preprocess: dict  # exactly PREPROCESS_KEYS
    arch_overrides: dict = field(default_factory=dict)  # dotted config overrides, e.g. {"vision.act": "quick_gelu"}
    license: str | None = None
    notes: str = ""

    @property
    def name(self) -> str:
        return f"{self.arch}::{self.tag}"


@dataclass(frozen=True)
class LocalWeights:
    """A weights file on local disk plus what its source says about the model it belongs to."""

    weights_path: Path
    format_hint: str  # "safetensors" | "torch" | "torchscript"
    open_clip_config: dict | None = None  # open_clip_config.json: {"model_cfg": ..., "preprocess_cfg": ...}
    hf_config: dict | None = None  # a transformers config.json
    preprocess: dict | None = None  # PREPROCESS_KEYS, when the source states them
    arch_overrides: dict = field(default_factory=dict)
    entry: WeightEntry | None = None
    source: str = ""


def default_preprocess(**given: Any) -> dict:
    """The five preprocessing keys with open_clip's defaults (OpenAI mean/std, bicubic, shortest side)."""
    unknown = set(given) - set(PREPROCESS_KEYS)
    if unknown:
        raise ValueError(f"unknown preprocess keys {sorted(unknown)}; known: {list(PREPROCESS_KEYS)}")
    out = {"image_size": 224, "mean": list(OPENAI_MEAN), "std": list(OPENAI_STD),
           "interpolation": "bicubic", "resize_mode": "shortest"}
    out.update({k: (list(v) if isinstance(v, tuple) else v) for k, v in given.items() if v is not None})
    return out


# ---------------------------------------------------------------------------------------------- the tag table


def clean_tag(tag: str) -> str:
    """open_clip spells tags with '_' but some tables write '-': compare them in one spelling."""
    return tag.strip().lower().replace("-", "_")


@functools.lru_cache(maxsize=1)
def _table() -> tuple[WeightEntry, ...]:
    raw = json.loads(resources.files("clipforge.models").joinpath("pretrained.json").read_text())
    return tuple(WeightEntry(**item) for item in raw["entries"])


@functools.lru_cache(maxsize=1)
def _by_arch() -> dict[str, dict[str, WeightEntry]]:
    """arch name as listed -> {clean tag: entry}, open_clip's '-quickgelu' aliases included (listed last)."""
    out: dict[str, dict[str, WeightEntry]] = {}
    for entry in _table():
        out.setdefault(entry.arch, {})[clean_tag(entry.tag)] = entry
    aliases = {}
    for arch, tags in out.items():
        quick = {t: e for t, e in tags.items() if e.arch_overrides == QUICK_GELU_OVERRIDES}
        if quick:
            aliases[arch + QUICKGELU_SUFFIX] = quick
    out.update(aliases)
    return out


def _canonical_arch(arch: str) -> str | None:
    table = _by_arch()
    if arch in table:
        return arch
    folded = {name.lower(): name for name in table}
    return folded.get(arch.strip().lower())


def list_pretrained(as_str: bool = False) -> list:
    """All ``(arch, tag)`` pairs (``"arch::tag"`` strings with ``as_str``), in open_clip's order."""
    pairs = [(arch, entry.tag) for arch, tags in _by_arch().items() for entry in tags.values()]
    return [f"{a}::{t}" for a, t in pairs] if as_str else pairs


def list_pretrained_tags(arch: str) -> list[str]:
    """Tags published for ``arch`` (empty if none)."""
    name = _canonical_arch(arch)
    return [entry.tag for entry in _by_arch()[name].values()] if name else []


def list_pretrained_models_by_tag(tag: str) -> list[str]:
    """Architectures (open_clip's ``-quickgelu`` names included) that publish ``tag``."""
    wanted = clean_tag(tag)
    return [arch for arch, tags in _by_arch().items() if wanted in tags]


# open_clip's name for list_pretrained_tags, so that code written against open_clip keeps working
list_pretrained_tags_by_model = list_pretrained_tags


def get_weight_entry(arch: str, tag: str) -> WeightEntry:
    """The entry for ``tag`` of ``arch``; a ValueError lists the tags (or close architecture names) otherwise."""
    name = _canonical_arch(arch)
    if name is None:
        close = difflib.get_close_matches(arch, list(_by_arch()), n=5, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"no pretrained weights are published for architecture '{arch}'.{hint} "
                         f"See list_pretrained() or `clipforge models`.")
    tags = _by_arch()[name]
    entry = tags.get(clean_tag(tag))
    if entry is None:
        listed = ", ".join(e.tag for e in tags.values())
        raise ValueError(f"unknown pretrained tag '{tag}' for {name}. Its tags: {listed}. "
                         f"pretrained= also accepts a file path, a directory or 'hf-hub:org/repo'.")
    # copies of the dict fields, so that a caller editing them cannot change the shared table
    return dataclasses.replace(entry, preprocess=dict(entry.preprocess), arch_overrides=dict(entry.arch_overrides))


def split_model_tag(name: str) -> tuple[str, str | None]:
    """``"ViT-B-32::laion2b_s34b_b79k"`` -> ``("ViT-B-32", "laion2b_s34b_b79k")``; no ``::`` -> ``(name, None)``."""
    arch, sep, tag = name.partition("::")
    if sep and (not arch.strip() or not tag.strip()):
        raise ValueError(f"'{name}' must look like ARCH::TAG, e.g. ViT-B-32::laion2b_s34b_b79k")
    return arch.strip(), (tag.strip() if sep else None)


def format_pretrained_table(arch: str | None = None) -> str:
    """A plain-text table of the tags (all, or one architecture's) for ``clipforge models``."""
    rows = [("architecture", "tag", "image", "source", "needs")]
    for name, tags in _by_arch().items():
        if arch is not None and name != _canonical_arch(arch):
            continue
        for entry in tags.values():
            source = f"hf-hub:{entry.hf_hub_id}" if entry.hf_hub_id else (entry.url or "")
            needs = ", ".join(f"{k}={v}" for k, v in entry.arch_overrides.items())
            rows.append((name, entry.tag, str(entry.preprocess["image_size"]), source, needs))
    if len(rows) == 1:
        raise ValueError(f"no pretrained weights are published for architecture '{arch}'")
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


# ------------------------------------------------------------------------------------- resolving pretrained=


def resolve_weights(pretrained: str | os.PathLike, arch: str | None = None, *, cache_dir=None,
                    local_files_only: bool = False, revision: str | None = None) -> LocalWeights:
    """Find the weights named by ``pretrained`` on local disk, downloading them if allowed (see module doc)."""
    text = os.fspath(pretrained)
    if not text.strip():
        raise ValueError("pretrained= is empty; give a tag, a file path, a directory or 'hf-hub:org/repo'")
    if text.startswith(HF_HUB_PREFIX):
        repo_id, pinned = _split_revision(text[len(HF_HUB_PREFIX):])
        return _resolve_hub_repo(repo_id, pinned or revision, cache_dir, local_files_only)
    canonical = _canonical_arch(arch) if arch is not None else None
    if canonical is not None and clean_tag(text) in _by_arch()[canonical]:
        # a published tag wins over a same-named file in the working directory, as in open_clip
        return _resolve_tag(get_weight_entry(canonical, text), cache_dir, local_files_only, revision)
    path = Path(text[len(LOCAL_DIR_PREFIX):] if text.startswith(LOCAL_DIR_PREFIX) else text).expanduser()
    if path.is_dir():
        return _resolve_directory(path)
    if path.is_file():
        return LocalWeights(path, detect_format(path), source=f"file {path}")
    if _looks_like_path(text):
        raise FileNotFoundError(f"pretrained weights file or directory not found: {path}")
    if arch is None:
        raise ValueError(f"pretrained='{text}' is not a file or directory, and a tag needs an architecture "
                         f"(e.g. resolve_weights('{text}', 'ViT-B-32') or 'ViT-B-32::{text}')")
    entry = get_weight_entry(arch, text)  # not a known tag here, so this raises, listing the arch's tags
    return _resolve_tag(entry, cache_dir, local_files_only, revision)


def _resolve_tag(entry: WeightEntry, cache_dir, local_files_only: bool, revision: str | None) -> LocalWeights:
    weights_path = _fetch_entry(entry, cache_dir, local_files_only, revision)
    return LocalWeights(weights_path, detect_format(weights_path), preprocess=dict(entry.preprocess),
                        arch_overrides=dict(entry.arch_overrides), entry=entry, source=f"tag {entry.name}")


def _looks_like_path(text: str) -> bool:
    return os.sep in text or text.startswith(".") or text.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))


def _split_revision(spec: str) -> tuple[str, str | None]:
    repo_id, sep, revision = spec.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")) or (sep and not revision):
        raise ValueError(f"'{HF_HUB_PREFIX}{spec}' must look like hf-hub:org/repo or hf-hub:org/repo@revision")
    return repo_id, revision or None


def _fetch_entry(entry: WeightEntry, cache_dir, local_files_only: bool, revision: str | None) -> Path:
    """The hub copy first (as open_clip does), the original URL as a fallback; errors from both are reported."""
    errors = []
    if entry.hf_hub_id:
        # open_clip's hub repos carry a safetensors copy of the same weights: prefer it (no unpickling at all)
        names = list(OPEN_CLIP_WEIGHTS) if entry.hf_filename in (None, *OPEN_CLIP_WEIGHTS) else [entry.hf_filename]
        try:
            return hub_file(entry.hf_hub_id, names, revision=revision, cache_dir=cache_dir,
                            local_files_only=local_files_only)
        except FileNotFoundError as e:
            errors.append(e)
    if entry.url:
        try:
            return url_file(entry.url, sha256=entry.sha256, cache_dir=cache_dir, local_files_only=local_files_only)
        except (FileNotFoundError, ConnectionError) as e:
            errors.append(e)
    if not errors:
        raise ValueError(f"the table entry for {entry.name} names no hub repo and no URL")
    kind = WeightsNotCachedError if all(isinstance(e, WeightsNotCachedError) for e in errors) else FileNotFoundError
    raise kind(f"weights for {entry.name} are not available: " + " | ".join(str(e) for e in errors))


def _resolve_hub_repo(repo_id: str, revision, cache_dir, local_files_only: bool) -> LocalWeights:
    where = f"hf-hub:{repo_id}" + (f"@{revision}" if revision else "")
    fetch = functools.partial(hub_file, repo_id, revision=revision, cache_dir=cache_dir,
                              local_files_only=local_files_only)
    for config_name, weight_names in ((OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS), (HF_CONFIG, HF_WEIGHTS)):
        try:
            config_path = fetch([config_name])
        except (HubUnreachableError, HubRepoNotFoundError):
            raise  # trying the other layout cannot help
        except FileNotFoundError:
            continue
        weights_path = fetch(list(weight_names))
        extra = None
        if config_name == HF_CONFIG:
            try:
                extra = _read_json(fetch([HF_PREPROCESSOR]))
            except FileNotFoundError:
                extra = None  # optional: without it, transformers' CLIP defaults apply
        return _local_weights(config_name, _read_json(config_path), weights_path, where, extra)
    offline = is_offline(local_files_only)
    raise (WeightsNotCachedError if offline else FileNotFoundError)(
        f"{where} has neither an open_clip layout ({OPEN_CLIP_CONFIG} + {' or '.join(OPEN_CLIP_WEIGHTS)}) nor a "
        f"transformers layout ({HF_CONFIG} + {' or '.join(HF_WEIGHTS)})"
        + (f" in the local cache ({cache_dir or 'default huggingface_hub cache'}; offline mode: run once with "
           f"network access to download it)" if offline else ""))


def _resolve_directory(path: Path) -> LocalWeights:
    for config_name, weight_names in ((OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS), (HF_CONFIG, HF_WEIGHTS)):
        if not (path / config_name).is_file():
            continue
        found = [path / name for name in weight_names if (path / name).is_file()]
        if not found:
            raise FileNotFoundError(f"{path} has {config_name} but no weights file: expected one of "
                                    f"{', '.join(weight_names)}")
        extra = _read_json(path / HF_PREPROCESSOR) if config_name == HF_CONFIG and (path / HF_PREPROCESSOR).is_file() \
            else None
        return _local_weights(config_name, _read_json(path / config_name), found[0], f"directory {path}", extra)
    raise FileNotFoundError(
        f"directory {path} is not a weights folder: expected {OPEN_CLIP_CONFIG} with "
        f"{' or '.join(OPEN_CLIP_WEIGHTS)} (open_clip / clipforge layout), or {HF_CONFIG} with "
        f"{' or '.join(HF_WEIGHTS)} (transformers layout)")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read JSON config {path}: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"JSON config {path} must hold an object, not {type(data).__name__}")
    return data


def _local_weights(config_name: str, config: dict, weights_path: Path, source: str, extra) -> LocalWeights:
    fmt = detect_format(weights_path)
    if config_name == OPEN_CLIP_CONFIG:
        preprocess, overrides = _open_clip_facts(config, source)
        return LocalWeights(weights_path, fmt, open_clip_config=config, preprocess=preprocess,
                            arch_overrides=overrides, source=source)
    preprocess, overrides = _hf_facts(config, extra, source)
    return LocalWeights(weights_path, fmt, hf_config=config, preprocess=preprocess, arch_overrides=overrides,
                        source=source)


def _open_clip_facts(config: dict, source: str) -> tuple[dict, dict]:
    model_cfg = config.get("model_cfg")
    if not isinstance(model_cfg, dict):
        raise ValueError(f"{OPEN_CLIP_CONFIG} of {source} has no 'model_cfg' section")
    pp = config.get("preprocess_cfg") or {}
    image_size = pp.get("size") or model_cfg.get("vision_cfg", {}).get("image_size")
    preprocess = default_preprocess(image_size=image_size, mean=pp.get("mean"), std=pp.get("std"),
                                    interpolation=pp.get("interpolation"), resize_mode=pp.get("resize_mode"))
    return preprocess, (dict(QUICK_GELU_OVERRIDES) if model_cfg.get("quick_gelu") else {})


def _hf_facts(config: dict, preprocessor: dict | None, source: str) -> tuple[dict, dict]:
    vision, text = config.get("vision_config"), config.get("text_config")
    if not isinstance(vision, dict) or not isinstance(text, dict):
        raise ValueError(f"{HF_CONFIG} of {source} is not a CLIP config: it needs 'vision_config' and "
                         f"'text_config' sections")
    pp = preprocessor or {}
    preprocess = default_preprocess(image_size=vision.get("image_size"), mean=pp.get("image_mean"),
                                    std=pp.get("image_std"), interpolation=_PIL_RESAMPLE.get(pp.get("resample")))
    overrides = {f"{tower}.act": "quick_gelu" for tower, cfg in (("vision", vision), ("text", text))
                 if cfg.get("hidden_act", "quick_gelu") == "quick_gelu"}  # transformers' CLIP default is quick_gelu
    return preprocess, overrides


# -------------------------------------------------------------------------------------------- hub folder writer


def save_hub_layout(directory: str | os.PathLike, state_dict: Mapping[str, torch.Tensor],
                    open_clip_config: Mapping[str, Any], *, safe_serialization: bool | str = True) -> Path:
    """Write ``open_clip_config.json`` and the weights in the folder layout open_clip reads and pushes.

    ``safe_serialization``: True writes ``open_clip_model.safetensors``, False ``open_clip_pytorch_model.bin``,
    ``"both"`` writes both. Every file is written to a temporary name and renamed, so a crash leaves no half file.
    """
    if not isinstance(open_clip_config.get("model_cfg"), Mapping):
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
    config = {"model_cfg": dict(open_clip_config["model_cfg"]),
              "preprocess_cfg": dict(open_clip_config.get("preprocess_cfg") or {})}
    with atomic_path(directory / OPEN_CLIP_CONFIG) as tmp:
        tmp.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return directory


def open_clip_preprocess_cfg(preprocess: Mapping[str, Any]) -> dict:
    """clipforge's five preprocessing keys in open_clip's ``preprocess_cfg`` vocabulary (``size`` for image_size)."""
    missing = set(PREPROCESS_KEYS) - set(preprocess)
    if missing:
        raise ValueError(f"preprocess is missing {sorted(missing)}; it needs {list(PREPROCESS_KEYS)}")
    out = {"size": preprocess["image_size"]}
    out.update({k: (list(v) if isinstance(v, tuple) else v) for k, v in preprocess.items() if k != "image_size"})
    return out


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
