"""Hugging Face text towers (``text.kind="hf"``): a transformers encoder, a pooler and a projection.

The same module tree as open_clip's ``HFTextEncoder`` (``transformer``: the transformers model or, for
encoder-decoder models such as NLLB and mT5, its encoder; ``proj``: ``nn.Linear`` or ``nn.Sequential``), so open_clip
checkpoints load under their own key names. transformers is an optional extra (``clipforge[hf]``), imported only when
such a tower is built. The encoder is built from its config alone: its weights come from the CLIP checkpoint, never
from the encoder's own hub repo. The config is ``text.hf.model_config`` when given, else the ``config.json`` of
``text.hf.model_name`` from the Hugging Face hub (its cache when offline). In a CoCa (``models/coca.py``) the same
tower also hands its last hidden states to the caption decoder (``forward_tokens``).
"""
from __future__ import annotations

import functools
import json
from typing import Any, Mapping

import torch
from torch import nn

from clipforge._optional import require
from clipforge.models import _download
from clipforge.models.config import HFTextConfig, TextConfig
from clipforge.models.text import check_tokens

HF_HINT = "Hugging Face text towers need transformers: pip install 'clipforge[hf]'"
# config.json fields that describe the file or the weights' storage, not the architecture; a stored dtype (NLLB's
# float32, some fp16 uploads) would otherwise make transformers build the tower in it
_NOT_ARCHITECTURE = ("_name_or_path", "architectures", "transformers_version", "torch_dtype", "dtype")


class HFConfigUnavailable(ValueError):
    """The transformers config of a Hugging Face text tower cannot be found (offline and not cached, no such repo)."""


@functools.lru_cache(maxsize=32)
def _hub_config(model_name: str) -> str:
    """config.json of ``model_name`` as text (the hub, or its cache when offline); read once per process."""
    try:
        path = _download.hub_file(model_name, ["config.json"])
    except (OSError, ValueError) as e:
        offline = "offline and not in the huggingface_hub cache" if _download.is_offline() else \
            str(e).splitlines()[0] if str(e) else type(e).__name__
        raise HFConfigUnavailable(
            f"the text tower needs the transformers config of '{model_name}' (its config.json on the Hugging Face "
            f"hub): {offline}; run once online, or set text.hf.model_config to that config as a dict") from None
    return path.read_text(encoding="utf-8")


def model_config_dict(hf: HFTextConfig) -> dict[str, Any]:
    """The encoder's transformers config as a dict: ``hf.model_config``, else the hub's ``config.json``."""
    data = dict(hf.model_config) if hf.model_config is not None else json.loads(_hub_config(hf.model_name))
    return architecture_fields(data)


def architecture_fields(config: Mapping[str, Any]) -> dict[str, Any]:
    """A transformers config dict without the fields that describe the file or the weights' storage."""
    return {k: v for k, v in config.items() if k not in _NOT_ARCHITECTURE}


def build_encoder(hf: HFTextConfig) -> tuple[nn.Module, Any]:
    """(transformers encoder, its config) as open_clip builds it without pretrained encoder weights: a pooling
    layer only for ``pool="cls"``; the encoder half of an encoder-decoder model."""
    transformers = require("transformers", hint=HF_HINT)
    data = model_config_dict(hf)
    config = transformers.AutoConfig.for_model(data.pop("model_type"), **data)
    if getattr(config, "is_encoder_decoder", False):
        return transformers.AutoModel.from_config(config).encoder, config
    return transformers.AutoModel.from_config(config, add_pooling_layer=hf.pool == "cls"), config


def _projection(hf: HFTextConfig, width: int, embed_dim: int) -> nn.Module:
    if hf.proj == "linear":
        return nn.Linear(width, embed_dim, bias=hf.proj_bias)
    if hf.proj == "mlp":
        hidden = (width + embed_dim) // 2
        return nn.Sequential(nn.Linear(width, hidden, bias=hf.proj_bias), nn.GELU(),
                             nn.Linear(hidden, embed_dim, bias=hf.proj_bias))
    if width != embed_dim:
        raise ValueError(f"text.hf.proj='none' needs the encoder width ({width}) to equal embed_dim ({embed_dim}); "
                         f"use proj='linear' or 'mlp'")
    return nn.Identity()


def pool_hidden(output: Any, mask: torch.Tensor, pool: str) -> torch.Tensor:
    """(B, L, D) last hidden states (``output.last_hidden_state``) -> (B, D); ``mask`` (B, L) is 1 on tokens, 0 on
    padding. Mean pooling is written as open_clip's ``MeanPooler`` so that the two agree to the last bit."""
    hidden = output.last_hidden_state
    if pool == "mean":
        return (hidden * mask.unsqueeze(-1)).sum(dim=1) / mask.sum(-1, keepdim=True)
    if pool == "max":  # open_clip 3.3.0's MaxPooler fills the tokens instead of the padding (and fails on its mask)
        return hidden.masked_fill(mask.unsqueeze(-1) == 0, -torch.inf).max(dim=1).values
    if pool == "cls" and getattr(output, "pooler_output", None) is not None:
        return output.pooler_output
    return hidden[:, 0]


class HFTextTower(nn.Module):
    """tokens (B, L) with L <= context_length -> features (B, embed_dim). Padding (the encoder's ``pad_token_id``)
    is masked out of attention and pooling."""

    def __init__(self, config: TextConfig, embed_dim: int):
        super().__init__()
        self.config = config
        self.transformer, model_config = build_encoder(config.hf)
        if model_config.pad_token_id is None:
            raise ValueError(f"the transformers config of '{config.hf.model_name}' has no pad_token_id; a CLIP text "
                             f"tower needs one to mask padding")
        self.pad_id = int(model_config.pad_token_id)
        self.bos_id, self.eos_id = model_config.bos_token_id, model_config.eos_token_id  # for captioning (CoCa)
        self.width = int(model_config.hidden_size)  # d_model for NLLB / mT5 (transformers maps the name)
        self.proj = _projection(config.hf, self.width, embed_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(tokens)[0]

    def forward_tokens(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (B, embed_dim), token states (B, L, width)): the states are the encoder's last hidden states at
        every position, padding included, as open_clip's HFTextEncoder gives them to CoCa's decoder (whose causal
        mask keeps each position from reading later ones; the encoder itself is bidirectional)."""
        check_tokens(tokens, self.config.context_length)
        mask = (tokens != self.pad_id).long()  # (B, L)
        output = self.transformer(input_ids=tokens, attention_mask=mask)
        return self.proj(pool_hidden(output, mask, self.config.hf.pool)), output.last_hidden_state

    def caption_ids(self) -> tuple[int, tuple[int, int]]:
        """(start id, (end id, padding id)) for decoding captions: the encoder config's bos / eos / pad ids, the
        tokens its tokenizer puts around a text (RoBERTa: <s> 0, </s> 2, <pad> 1)."""
        if self.bos_id is None or self.eos_id is None:
            raise ValueError(f"captioning needs start and end token ids, and the transformers config of "
                             f"'{self.config.hf.model_name}' lacks bos_token_id or eos_token_id")
        return int(self.bos_id), (int(self.eos_id), self.pad_id)

    def _layers(self) -> nn.ModuleList:
        """The encoder's list of layers: its longest ``nn.ModuleList`` (``encoder.layer``, ``layers``, ``block``)."""
        lists = [m for m in self.transformer.modules() if isinstance(m, nn.ModuleList)]
        return max(lists, key=len)

    def param_groups(self) -> list[list[nn.Module | nn.Parameter]]:
        """Embeddings (and whatever precedes the layers), each layer but the last, the last layer with what follows
        it (final norm, pooler), the projection: from input to output."""
        layers = list(self._layers())
        in_layers = {id(p) for layer in layers for p in layer.parameters()}
        before, after, seen_layers = [], [], False
        for param in self.transformer.parameters():
            if id(param) in in_layers:
                seen_layers = True
            else:
                (after if seen_layers else before).append(param)
        head = [[self.proj]] if any(True for _ in self.proj.parameters()) else []
        return [before, *[[layer] for layer in layers[:-1]], [layers[-1], *after], *head]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if enable:
            self.transformer.gradient_checkpointing_enable()
        else:
            self.transformer.gradient_checkpointing_disable()


def hf_shape_problems(state_dict: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> list[str]:
    """``text.transformer.*`` keys whose shapes differ between a checkpoint and a model (clipforge keys)."""
    return [f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}" for k in own
            if k.startswith("text.transformer.") and k in state_dict and state_dict[k].shape != own[k].shape]
