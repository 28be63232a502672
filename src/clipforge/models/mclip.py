"""M-CLIP (FreddeFrallan/Multilingual-CLIP): a multilingual transformers text encoder taught to reproduce the text
features of an existing CLIP, used beside that CLIP's own image tower.

Each hub repo ``M-CLIP/<name>`` holds a transformers ``config.json`` (``model_type`` "M-CLIP"; ``modelBase``: the
encoder's hub repo, ``transformerDimensions``: its width, ``numDims``: the image embedding size) and the text weights
(``pytorch_model.bin``): ``transformer.*`` (the encoder) and ``LinearTransformation.weight`` / ``.bias``. M-CLIP's
forward is the encoder's last hidden state, a mean over the attention mask, then that linear head: in clipforge a
``text.kind="hf"`` tower with ``pool="mean"``, ``proj="linear"``, ``proj_bias=True``, whose projection is
``text.proj``. The repo does not name its image tower; ``MCLIP_IMAGE_TOWERS`` records the one each model card names.

A model is built from two sources: the M-CLIP repo (text tower, tokenizer) and the image tower's published tag
(``visual.*``, the preprocessing, QuickGELU for OpenAI weights, and ``logit_scale``: M-CLIP trained no temperature,
so the image checkpoint's own is used, the one of the CLIP whose text features M-CLIP learnt to reproduce; 100 for
OpenAI's). The image checkpoint's own text tower is not used. The encoder's architecture is the ``config.json`` of
``modelBase`` (read once, from the hub or its cache, and kept in ``text.hf.model_config`` so that the config is
self-contained); its weights come from the M-CLIP checkpoint only.

Assumptions not checked against the published files here (no network): the repos hold a ``tokenizer.json`` (M-CLIP's
README loads the tokenizer from the M-CLIP repo itself), and their checkpoints may also carry the encoder's pooler
and index buffers (``transformers.AutoModel`` builds a pooler by default), which mean pooling never uses and which
are dropped by name; any other extra or missing key is an error. Text is cut at ``MCLIP_CONTEXT_LENGTH`` tokens
(M-CLIP itself pads to the longest text and does not truncate; captions are far shorter).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping

import torch

from clipforge.config import apply_overrides
from clipforge.models import convert, hub_layout, registry, weights
from clipforge.models._checkpoint_file import detect_file_format, read_checkpoint
from clipforge.models._download import hub_file
from clipforge.models.config import ClipConfig, HFTextConfig, TextConfig
from clipforge.models.hf_text import architecture_fields
from clipforge.models.loading import ModelLoadError, load_weights
from clipforge.models.resolve import HF_HUB_PREFIX, LocalWeights, resolve_weights
from clipforge.transforms import PreprocessConfig

__all__ = ["MCLIP_IMAGE_TOWERS", "MCLIP_CONTEXT_LENGTH", "MClipName", "MClipModel", "parse_name", "describe",
           "resolve", "load", "text_state_dict"]

# repo -> the image tower its model card names, as ARCH::TAG (a tag of models/pretrained.json)
MCLIP_IMAGE_TOWERS = {
    "M-CLIP/XLM-Roberta-Large-Vit-B-32": "ViT-B-32::openai",
    "M-CLIP/XLM-Roberta-Large-Vit-L-14": "ViT-L-14::openai",
    "M-CLIP/XLM-Roberta-Large-Vit-B-16Plus": "ViT-B-16-plus-240::laion400m_e32",
    "M-CLIP/LABSE-Vit-L-14": "ViT-L-14::openai",
}
MCLIP_CONTEXT_LENGTH = 77  # as open_clip's xlm-roberta presets
_HEAD = ("LinearTransformation.weight", "LinearTransformation.bias")
# encoder tensors a transformers checkpoint may carry that a mean-pooled tower has no place for (see module doc)
_UNUSED = ("text.transformer.pooler.", "text.transformer.embeddings.position_ids",
           "text.transformer.embeddings.token_type_ids")


@dataclasses.dataclass(frozen=True)
class MClipName:
    """An M-CLIP model name once parsed: the hub repo (as listed), a revision, the image tower's ARCH::TAG."""
    repo_id: str
    revision: str | None
    image: str

    @property
    def source(self) -> str:
        return f"{HF_HUB_PREFIX}{self.repo_id}" + (f"@{self.revision}" if self.revision else "")


@dataclasses.dataclass(frozen=True)
class MClipModel:
    """What an M-CLIP name resolves to: the architecture, the image tower's preprocessing, and (after ``resolve``)
    the local weight files of both sources."""
    name: MClipName
    config: ClipConfig
    image_config: ClipConfig  # the image tower's own CLIP (its checkpoint's key layout)
    preprocess: PreprocessConfig
    text_weights: Path | None = None
    image_weights: LocalWeights | None = None

    @property
    def source(self) -> str:
        return f"{self.name.source} (text) + {self.name.image} (image)"


def parse_name(model_name: object) -> MClipName | None:
    """``M-CLIP/<name>`` or ``hf-hub:M-CLIP/<name>[@revision]`` of ``MCLIP_IMAGE_TOWERS`` (any case), else None."""
    if not isinstance(model_name, str):
        return None
    text = model_name.strip()
    text = text[len(HF_HUB_PREFIX):] if text.startswith(HF_HUB_PREFIX) else text
    repo, sep, revision = text.partition("@")
    listed = {name.lower(): name for name in MCLIP_IMAGE_TOWERS}.get(repo.lower())
    if listed is None or (sep and not revision):
        return None
    return MClipName(listed, revision or None, MCLIP_IMAGE_TOWERS[listed])


def _fetch(repo_id: str, names, revision, cache_dir, local_files_only: bool) -> Path:
    return hub_file(repo_id, list(names), revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)


def _mclip_config(path: Path, name: MClipName) -> dict:
    data = hub_layout.read_json(path)
    if data.get("model_type") != "M-CLIP":
        raise ModelLoadError(f"{name.source}: config.json has model_type {data.get('model_type')!r}, not 'M-CLIP'")
    fields = {"modelBase": str, "transformerDimensions": int, "numDims": int}
    bad = [k for k, kind in fields.items() if not isinstance(data.get(k), kind) or isinstance(data.get(k), bool)]
    if bad:
        raise ModelLoadError(f"{name.source}: config.json lacks {', '.join(bad)} (an M-CLIP config names its encoder "
                             f"in modelBase and its sizes in transformerDimensions and numDims)")
    return data


def _encoder_config(base: str, name: MClipName, cache_dir, local_files_only: bool) -> dict:
    try:
        path = _fetch(base, ["config.json"], None, cache_dir, local_files_only)
    except FileNotFoundError as e:
        raise type(e)(f"{name.source} needs the transformers config of its encoder '{base}' (modelBase): "
                      f"{str(e).splitlines()[0]}") from None
    data = hub_layout.read_json(path)
    if not isinstance(data.get("model_type"), str):
        raise ModelLoadError(f"config.json of '{base}' (the encoder of {name.source}) has no model_type")
    return architecture_fields(data)


def _image_tower(image: str) -> tuple[ClipConfig, PreprocessConfig | None]:
    """The image tower's CLIP config (a tag's QuickGELU included) and, for a published tag, its preprocessing."""
    arch, tag = weights.split_model_tag(image)
    config = registry.get_architecture(arch)
    if tag is None or not weights.has_tag(arch, tag):
        return config, None
    entry = weights.get_weight_entry(arch, tag)
    return apply_overrides(config, dict(entry.arch_overrides)), entry.preprocess_config()


def describe(name: MClipName, cache_dir=None, local_files_only: bool = False) -> MClipModel:
    """The architecture of an M-CLIP model from the two config files (the M-CLIP repo's and its encoder's)."""
    mclip = _mclip_config(_fetch(name.repo_id, ["config.json"], name.revision, cache_dir, local_files_only), name)
    encoder = _encoder_config(mclip["modelBase"], name, cache_dir, local_files_only)
    image_config, preprocess = _image_tower(name.image)
    width = encoder.get("hidden_size")
    if width != mclip["transformerDimensions"]:
        raise ModelLoadError(f"{name.source}: transformerDimensions {mclip['transformerDimensions']} differs from "
                             f"the hidden_size {width} of its encoder '{mclip['modelBase']}'")
    if mclip["numDims"] != image_config.embed_dim:
        raise ModelLoadError(f"{name.source}: numDims {mclip['numDims']} differs from the embedding size "
                             f"{image_config.embed_dim} of its image tower {name.image}")
    hf = HFTextConfig(model_name=mclip["modelBase"], model_config=encoder, pool="mean", proj="linear", proj_bias=True)
    config = dataclasses.replace(  # the image tower's CLIP with M-CLIP's text tower and tokenizer
        image_config, text=TextConfig(kind="hf", context_length=MCLIP_CONTEXT_LENGTH, hf=hf),
        open_clip_class="CustomTextCLIP", tokenizer=name.repo_id, tokenizer_clean=None, tokenizer_strip_sep=False,
        decoder=None)
    preprocess = preprocess or PreprocessConfig(image_size=config.vision.image_size)
    return MClipModel(name, config, image_config, preprocess)


def resolve(name: MClipName, cache_dir=None, local_files_only: bool = False) -> MClipModel:
    """``describe`` plus both weight files on local disk (downloaded if allowed)."""
    described = describe(name, cache_dir, local_files_only)
    text_path = _fetch(name.repo_id, hub_layout.HF_WEIGHTS, name.revision, cache_dir, local_files_only)
    arch, tag = weights.split_model_tag(name.image)
    image = resolve_weights(tag, arch, cache_dir=cache_dir, local_files_only=local_files_only)
    return dataclasses.replace(described, text_weights=text_path, image_weights=image)


def text_state_dict(state_dict: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """M-CLIP's text checkpoint -> clipforge keys: ``transformer.*`` -> ``text.transformer.*`` (open_clip's
    HFTextEncoder names), ``LinearTransformation.*`` -> ``text.proj.*``. Every key must have a place."""
    missing = [k for k in _HEAD if k not in state_dict]
    if missing:
        raise ModelLoadError(f"the M-CLIP text weights from {source} lack {', '.join(missing)} (the linear head); "
                             f"is it an M-CLIP checkpoint?")
    unknown = sorted(k for k in state_dict if not k.startswith("transformer.") and k not in _HEAD)
    if unknown:
        raise ModelLoadError(f"the M-CLIP text weights from {source} have {len(unknown)} keys with no place in the "
                             f"model: {', '.join(unknown[:8])}")
    return {("text.proj." + k.split(".")[-1] if k in _HEAD else "text." + k): v for k, v in state_dict.items()}


def _image_state_dict(found: MClipModel) -> dict[str, torch.Tensor]:
    """``visual.*`` and ``logit_scale`` of the image tower's checkpoint (clipforge keys); its text tower is left."""
    local = found.image_weights
    try:
        converted = convert.convert_state_dict(local.state_dict(), found.image_config)
    except convert.ConversionError as e:
        raise ModelLoadError(f"weights from {local.source}: {e}") from None
    if "logit_scale" not in converted:
        raise ModelLoadError(f"the image tower weights from {local.source} have no logit_scale")
    return {k: v for k, v in converted.items() if k.startswith("visual.") or k == "logit_scale"}


def load(model: torch.nn.Module, found: MClipModel, *, resize_pos_embed: bool = False) -> None:
    """Both sources into ``model`` (a CLIP for ``found.config``), strictly: every model key from one of them."""
    source = found.name.source
    raw = read_checkpoint(found.text_weights, detect_file_format(found.text_weights)).tensors
    text = text_state_dict(raw, source)
    own = model.state_dict()
    text = {k: v for k, v in text.items() if k in own or not k.startswith(_UNUSED)}
    _check_text_keys(text, own, found)
    load_weights(model, {**_image_state_dict(found), **text}, found.source, resize_pos_embed=resize_pos_embed)


def _check_text_keys(text: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor], found: MClipModel) -> None:
    """One line, in M-CLIP's key names, when the text checkpoint and the encoder built from its config differ."""
    own_text = {k for k in own if k.startswith("text.")}
    missing, extra = sorted(own_text - set(text)), sorted(set(text) - own_text)
    if missing or extra:
        named = [f"{len(keys)} {what} (e.g. {keys[0][len('text.'):]})" for what, keys in
                 (("missing", missing), ("unexpected", extra)) if keys]
        raise ModelLoadError(f"the M-CLIP text weights from {found.name.source} do not fit the encoder built from "
                             f"the config of '{found.config.text.hf.model_name}': {', '.join(named)}")
