"""Resolving ``pretrained=`` to weights on the local disk, with what the source says about its model.

``pretrained`` may be a tag of the architecture (``"laion2b_s34b_b79k"``; ``-`` and ``_`` are interchangeable), a
weights file, ``hf-hub:org/repo[@revision]``, or a local directory in a hub layout (``models.hub_layout``). A sharded
transformers folder resolves to its shard index (every shard it names is fetched too).
``resolve_weights`` finds the file (downloading it if allowed) and reads the facts that come with it
(``DeclaredModel``); building the model, converting key layouts and strict loading are the factory's job.
Weight files are read here only when they may describe themselves (clipforge training checkpoints carry their
architecture), and then only once: the tensors travel with the result.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path

import torch

from clipforge.models import hub_layout, weights
from clipforge.models._checkpoint_file import SECTION_KEY, detect_file_format, read_checkpoint, shard_files
from clipforge.models._download import (
    HubRepoNotFoundError, HubUnreachableError, WeightsNotCachedError, hub_file, is_offline, url_file,
)
from clipforge.models.hub_layout import DeclaredModel

HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


@dataclasses.dataclass(frozen=True)
class LocalWeights:
    """A weights file on local disk plus what its source says about the model it belongs to."""

    weights_path: Path
    format_hint: str  # "safetensors" | "torch" | "torchscript"
    declared: DeclaredModel = DeclaredModel()
    entry: weights.WeightEntry | None = None
    source: str = ""
    tensors: dict[str, torch.Tensor] | None = dataclasses.field(default=None, repr=False)  # already read, if so

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors of the file (read now unless resolution already read them)."""
        if self.tensors is not None:
            return self.tensors
        return read_checkpoint(self.weights_path, self.format_hint).tensors


def resolve_weights(pretrained: str | os.PathLike, arch: str | None = None, *, cache_dir=None,
                    local_files_only: bool = False, revision: str | None = None) -> LocalWeights:
    """Find the weights named by ``pretrained`` on local disk, downloading them if allowed (see module doc)."""
    text = os.fspath(pretrained)
    if not text.strip():
        raise ValueError("pretrained= is empty; give a tag, a file path, a directory or 'hf-hub:org/repo'")
    if text.startswith(HF_HUB_PREFIX):
        repo_id, pinned = _split_revision(text[len(HF_HUB_PREFIX):])
        return _resolve_hub_repo(repo_id, pinned or revision, cache_dir, local_files_only)
    if arch is not None and weights.has_tag(arch, text):
        # a published tag wins over a same-named file in the working directory, as in open_clip
        return _resolve_tag(weights.get_weight_entry(arch, text), cache_dir, local_files_only, revision)
    path = Path(text[len(LOCAL_DIR_PREFIX):] if text.startswith(LOCAL_DIR_PREFIX) else text).expanduser()
    if path.is_dir():
        return _resolve_directory(path)
    if path.is_file():
        return _resolve_file(path)
    if _looks_like_path(text):
        raise FileNotFoundError(f"pretrained weights file or directory not found: {path}")
    if arch is None:
        raise ValueError(f"pretrained='{text}' is not a file or directory, and a tag needs an architecture "
                         f"(e.g. resolve_weights('{text}', 'ViT-B-32') or 'ViT-B-32::{text}')")
    entry = weights.get_weight_entry(arch, text)  # not a known tag here, so this raises, listing the arch's tags
    return _resolve_tag(entry, cache_dir, local_files_only, revision)


def _resolve_file(path: Path) -> LocalWeights:
    fmt = detect_file_format(path)
    if fmt != "torch":
        return LocalWeights(path, fmt, source=f"file {path}")
    checkpoint = read_checkpoint(path, fmt)  # torch files may carry their architecture (clipforge checkpoints)
    declared = DeclaredModel()
    if checkpoint.section is not None:
        declared = hub_layout.declared_from_section(checkpoint.section, f"file {path}")
    return LocalWeights(path, fmt, declared=declared, source=f"file {path}", tensors=checkpoint.tensors)


def _resolve_tag(entry: weights.WeightEntry, cache_dir, local_files_only: bool, revision: str | None) -> LocalWeights:
    weights_path = _fetch_entry(entry, cache_dir, local_files_only, revision)
    declared = DeclaredModel(overrides=dict(entry.arch_overrides), preprocess=entry.preprocess_config())
    return LocalWeights(weights_path, detect_file_format(weights_path), declared=declared, entry=entry,
                        source=f"tag {entry.name}")


def _looks_like_path(text: str) -> bool:
    return os.sep in text or text.startswith(".") or text.endswith(_WEIGHT_SUFFIXES)


def _split_revision(spec: str) -> tuple[str, str | None]:
    repo_id, sep, revision = spec.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")) or (sep and not revision):
        raise ValueError(f"'{HF_HUB_PREFIX}{spec}' must look like hf-hub:org/repo or hf-hub:org/repo@revision")
    return repo_id, revision or None


def _fetch_entry(entry: weights.WeightEntry, cache_dir, local_files_only: bool, revision: str | None) -> Path:
    """The hub copy first (as open_clip does), the original URL as a fallback; errors from both are reported."""
    errors = []
    if entry.hf_hub_id:
        # open_clip's hub repos carry a safetensors copy of the same weights: prefer it (no unpickling at all)
        names = list(hub_layout.OPEN_CLIP_WEIGHTS) if entry.hf_filename in (None, *hub_layout.OPEN_CLIP_WEIGHTS) \
            else [entry.hf_filename]
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
    layouts = ((hub_layout.OPEN_CLIP_CONFIG, hub_layout.OPEN_CLIP_WEIGHTS),
               (hub_layout.HF_CONFIG, hub_layout.HF_WEIGHT_FILES))
    for config_name, weight_names in layouts:
        try:
            config_path = fetch([config_name])
        except (HubUnreachableError, HubRepoNotFoundError):
            raise  # trying the other layout cannot help
        except FileNotFoundError:
            continue
        config = hub_layout.read_json(config_path)
        extra = tokenizer = None
        if config_name == hub_layout.HF_CONFIG:
            extra = _optional_json(fetch, hub_layout.HF_PREPROCESSOR)  # without it, transformers' defaults apply
            tokenizer = hub_layout.folder_tokenizer(config, repo_id, _hub_has_tokenizer(fetch, config))
        declared = hub_layout.read_folder_facts(config_name, config, extra, where, tokenizer)  # before any weights
        weights_path = fetch(list(weight_names))
        if detect_file_format(weights_path) == "sharded":
            for shard in shard_files(weights_path):  # into the same snapshot folder as the index
                fetch([shard])
        return LocalWeights(weights_path, detect_file_format(weights_path), declared=declared, source=where)
    offline = is_offline(local_files_only)
    raise (WeightsNotCachedError if offline else FileNotFoundError)(
        f"{where} has neither layout: {hub_layout.layout_hint()}"
        + (f" in the local cache ({cache_dir or 'default huggingface_hub cache'}; offline mode: run once with "
           f"network access to download it)" if offline else ""))


def _optional_json(fetch, name: str) -> dict | None:
    try:
        return hub_layout.read_json(fetch([name]))
    except FileNotFoundError:
        return None


def _hub_has_tokenizer(fetch, config: dict) -> bool:
    """Whether a SigLIP repo holds its ``tokenizer.json`` (fetched now: the tokenizer needs it; offline, whether the
    cache holds it). Other models never ask."""
    if not hub_layout.is_siglip(config):
        return False
    try:
        fetch([hub_layout.HF_TOKENIZER])
        return True
    except (HubUnreachableError, HubRepoNotFoundError):
        raise
    except FileNotFoundError:
        return False


def _resolve_directory(path: Path) -> LocalWeights:
    found = hub_layout.find_weights(path)
    if found is None:
        raise FileNotFoundError(f"directory {path} is not a weights folder: expected {hub_layout.layout_hint()}")
    config_name, weights_path = found
    config = hub_layout.read_json(path / config_name)
    extra = tokenizer = None
    if config_name == hub_layout.HF_CONFIG:
        if (path / hub_layout.HF_PREPROCESSOR).is_file():
            extra = hub_layout.read_json(path / hub_layout.HF_PREPROCESSOR)
        tokenizer = hub_layout.folder_tokenizer(config, str(path.resolve()),
                                                (path / hub_layout.HF_TOKENIZER).is_file())
    source = f"directory {path}"
    declared = hub_layout.read_folder_facts(config_name, config, extra, source, tokenizer)
    return LocalWeights(weights_path, detect_file_format(weights_path), declared=declared, source=source)


__all__ = ["LocalWeights", "resolve_weights", "HF_HUB_PREFIX", "LOCAL_DIR_PREFIX", "SECTION_KEY"]
