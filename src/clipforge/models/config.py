"""Architecture configs: ``VisionConfig``, ``TextConfig`` and ``ClipConfig``.

Frozen dataclasses, validated on construction. Each tower is chosen by its ``kind`` only. A ``DecoderConfig``
in ``ClipConfig.decoder`` makes the model a CoCa (contrastive captioner, ``models/coca.py``).
Presets in ``presets/*.json`` are these dataclasses written with ``clipforge.config.to_dict``.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Literal

from clipforge.config import ConfigError

Act = Literal["gelu", "quick_gelu", "gelu_tanh"]


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclasses.dataclass(frozen=True)
class TimmVisionConfig:
    """A timm model as the image tower (``vision.kind="timm"``), as open_clip's TimmModel: the trunk built by
    ``timm.create_model(model_name, pretrained=False)`` (the weights come from the CLIP checkpoint), then a head.

    ``pool``: timm's ``global_pool`` ('' keeps the model's own); ``proj``: ``linear`` or ``mlp`` (open_clip's head on
    the trunk's pooled features; the MLP's hidden width is 2 * embed_dim), ``head`` (the trunk's own classifier,
    sized to embed_dim, is the projection: open_clip's ``timm_proj: null``) or ``none`` (the trunk's features as
    they are). ``drop``: dropout before the head; ``drop_path``: the trunk's stochastic depth (None: timm's default).
    """
    model_name: str
    pool: str = "avg"
    proj: Literal["linear", "mlp", "head", "none"] = "linear"
    proj_bias: bool = False
    drop: float = 0.0
    drop_path: float | None = None

    def __post_init__(self):
        _require(bool(self.model_name), "vision.timm.model_name must name a timm model (e.g. 'convnext_base')")
        _require(self.pool not in ("abs_attn", "rot_attn"),
                 f"vision.timm.pool='{self.pool}' (open_clip's attention-pool heads) is not supported")
        _require(0.0 <= self.drop < 1.0, f"vision.timm.drop must be in [0, 1), got {self.drop}")


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """Image tower. ``kind="vit"``: Vision Transformer; ``kind="resnet"``: CLIP's ModifiedResNet; ``kind="timm"``: a
    timm model described by ``timm`` (a ``TimmVisionConfig``; of the other fields only ``image_size``, for the
    preprocessing, and ``patch_dropout`` apply).

    For ResNets ``width`` is the stem width (64 for RN50), ``stage_depths`` the blocks per stage and
    ``num_heads`` the heads of the attention-pool head.
    """
    kind: Literal["vit", "resnet", "timm"] = "vit"
    image_size: int = 224
    width: int = 768
    num_heads: int = 12
    depth: int = 12  # ViT blocks
    patch_size: int = 16  # ViT only
    stage_depths: tuple[int, ...] = ()  # ResNet only: blocks in each of the 4 stages
    mlp_ratio: float = 4.0
    act: Act = "gelu"
    class_token: bool = True
    pre_norm: bool = True  # LayerNorm on the tokens before the first block (CLIP's ln_pre)
    # class token, mean of patches, latent attention pool (SigLIP), or CoCa's query pool: ``pool_queries`` learned
    # queries attend over all tokens; the first gives the image feature, the others the tokens the decoder reads
    pool: Literal["token", "avg", "map", "coca"] = "token"
    pool_queries: int = 256  # pool="coca" only
    pool_heads: int = 8  # pool="coca" only
    # pool="avg" only: the final LayerNorm normalises the mean of the patch tokens instead of each token (CLIPA;
    # open_clip's final_ln_after_pool)
    norm_after_pool: bool = False
    patch_bias: bool = False
    output_proj: bool = True  # final linear map to ClipConfig.embed_dim
    norm_eps: float = 1e-5
    layer_scale_init: float | None = None
    patch_dropout: float = 0.0
    timm: TimmVisionConfig | None = None  # kind="timm" only

    def __post_init__(self):
        _require(self.image_size > 0, f"vision.image_size must be positive, got {self.image_size}")
        _require(self.width > 0 and self.num_heads > 0, "vision.width and vision.num_heads must be positive")
        _require(0.0 <= self.patch_dropout < 1.0, f"vision.patch_dropout must be in [0, 1), got {self.patch_dropout}")
        _require((self.kind == "timm") == (self.timm is not None),
                 f"vision.kind='timm' needs the vision.timm section and other kinds must not have one "
                 f"(kind='{self.kind}')")
        if self.kind == "vit":
            self._check_vit()
        elif self.kind == "resnet":
            self._check_resnet()
        else:
            unused = [f.name for f in dataclasses.fields(self) if f.name not in ("kind", "image_size",
                                                                                 "patch_dropout", "timm")
                      and getattr(self, f.name) != f.default]
            _require(not unused, f"vision.kind='timm' takes its architecture from vision.timm; remove "
                                 f"vision.{', vision.'.join(unused)}")

    def _check_vit(self):
        _require(self.width % self.num_heads == 0,
                 f"vision.width {self.width} is not divisible by vision.num_heads {self.num_heads}")
        _require(self.depth > 0, f"vision.depth must be positive, got {self.depth}")
        # a remainder is allowed (SO400M/14 at 384 uses a 27x27 grid): the convolution drops the border pixels
        _require(0 < self.patch_size <= self.image_size,
                 f"vision.patch_size must be in [1, image_size={self.image_size}], got {self.patch_size}")
        _require(self.pool != "token" or self.class_token,
                 "vision.pool='token' needs vision.class_token=true; use pool='avg' or 'map' without one")
        _require(self.pool != "coca" or (self.pool_queries >= 2 and self.pool_heads > 0),
                 f"vision.pool='coca' needs vision.pool_queries >= 2 (one for the image feature, the rest for the "
                 f"caption decoder) and positive vision.pool_heads, got {self.pool_queries}, {self.pool_heads}")
        _require(not self.norm_after_pool or self.pool == "avg",
                 f"vision.norm_after_pool=true needs vision.pool='avg' (with one pooled token the order of norm and "
                 f"pool does not matter), got pool='{self.pool}'")

    def _check_resnet(self):
        _require(len(self.stage_depths) == 4 and all(d > 0 for d in self.stage_depths),
                 f"vision.stage_depths must list 4 positive block counts for a ResNet, got {self.stage_depths}")
        _require(self.image_size % 32 == 0,
                 f"ResNet vision.image_size must be a multiple of 32 (total stride), got {self.image_size}")
        _require((self.width * 32) % self.num_heads == 0,
                 f"ResNet feature width {self.width * 32} is not divisible by vision.num_heads {self.num_heads}")

    @property
    def grid_size(self) -> int:
        """Side of the token grid (ViT) or of the final feature map (ResNet)."""
        return self.image_size // (self.patch_size if self.kind == "vit" else 32)


@dataclasses.dataclass(frozen=True)
class HFTextConfig:
    """A Hugging Face transformers encoder as the text tower (``text.kind="hf"``), as open_clip's HFTextEncoder.

    ``model_name``: the hub id whose ``config.json`` gives the encoder's architecture (never its weights: those come
    from the CLIP checkpoint). ``model_config``: that config as a dict (``model_type`` plus any fields that differ
    from transformers' defaults); when set it replaces the hub lookup (configs written by hand, tests, offline use).
    ``pool``: over the last hidden states, ignoring padding: ``mean``, ``max``; ``cls``: the model's pooler output
    where it has a pooler (BERT / RoBERTa: dense + tanh on the first token), else the first token; ``first``: the
    first token. ``proj``: to ``embed_dim``: ``linear``, ``mlp`` (linear, GELU, linear; hidden (width + embed_dim) // 2)
    or ``none`` (the encoder width must equal embed_dim).
    """
    model_name: str
    model_config: dict[str, Any] | None = None
    pool: Literal["mean", "max", "cls", "first"] = "mean"
    proj: Literal["linear", "mlp", "none"] = "mlp"
    proj_bias: bool = False

    def __post_init__(self):
        _require(bool(self.model_name), "text.hf.model_name must name the Hugging Face model (e.g. 'roberta-base')")
        _require(self.model_config is None or isinstance(self.model_config.get("model_type"), str),
                 "text.hf.model_config must hold the transformers config as a dict with its 'model_type'")
        _require(self.proj != "none" or not self.proj_bias, "text.hf.proj_bias=true needs text.hf.proj != 'none'")

    def __hash__(self):  # the config dict is not hashable; configs are cache keys (convert.expected_shapes)
        return hash((self.model_name, json.dumps(self.model_config, sort_keys=True, default=str), self.pool,
                     self.proj, self.proj_bias))


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """Text tower. ``kind="transformer"``: CLIP's text transformer (token + positional embedding, pre-norm blocks,
    final norm, pooled projection). ``kind="hf"``: a Hugging Face encoder described by ``hf`` (an ``HFTextConfig``);
    of the other fields only ``context_length`` (the tokenizer's length) applies, the rest keep their defaults.
    """
    kind: Literal["transformer", "hf"] = "transformer"
    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    num_heads: int = 8
    depth: int = 12
    mlp_ratio: float = 4.0
    act: Act = "gelu"
    causal_mask: bool = True
    pool: Literal["argmax", "last", "first", "eos"] = "argmax"
    eos_id: int | None = None  # only for pool="eos"
    proj_bias: bool = False
    output_proj: bool = True  # final linear map to ClipConfig.embed_dim (false: features are the pooled width)
    norm_eps: float = 1e-5
    layer_scale_init: float | None = None
    # CoCa: a learned token appended after the text; its output is the text feature (pool must be "last"), and
    # keys are masked where the *previous* token is ``pad_id`` (open_clip's mask for its published CoCa weights)
    cls_token: bool = False
    pad_id: int = 0
    hf: HFTextConfig | None = None  # kind="hf" only

    def __post_init__(self):
        _require((self.kind == "hf") == (self.hf is not None),
                 f"text.kind='hf' needs the text.hf section and other kinds must not have one (kind='{self.kind}')")
        if self.kind == "hf":
            unused = [f.name for f in dataclasses.fields(self) if f.name not in ("kind", "context_length", "hf")
                      and getattr(self, f.name) != f.default]
            _require(not unused, f"text.kind='hf' takes its architecture from text.hf; remove "
                                 f"text.{', text.'.join(unused)}")
        _require(self.context_length > 0 and self.vocab_size > 0,
                 "text.context_length and text.vocab_size must be positive")
        _require(self.width % self.num_heads == 0,
                 f"text.width {self.width} is not divisible by text.num_heads {self.num_heads}")
        _require(self.depth > 0, f"text.depth must be positive, got {self.depth}")
        _require(self.pool != "eos" or self.eos_id is not None, "text.pool='eos' needs text.eos_id")
        _require(not self.cls_token or (self.pool == "last" and self.causal_mask),
                 "text.cls_token=true (CoCa) needs text.pool='last' and text.causal_mask=true")
        _require(self.output_proj or not self.proj_bias, "text.proj_bias=true needs text.output_proj=true")


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """CoCa's multimodal text decoder: per layer a causal self-attention block over the text tower's token states,
    then a cross-attention block over the image tokens; a final norm and a projection to the vocabulary.

    ``width`` must equal the width of the image tokens it reads (``embed_dim`` for vision.pool='coca') and of the
    text tower's token states (a Hugging Face encoder's hidden size). ``vocab_size``: the built-in text tower's; with
    a Hugging Face text tower it is whatever open_clip's ``text_cfg.vocab_size`` says (49408 unless set), not the
    encoder's vocabulary.
    """
    width: int = 512
    num_heads: int = 8
    depth: int = 12
    context_length: int = 76
    vocab_size: int = 49408
    mlp_ratio: float = 4.0
    act: Act = "gelu"
    norm_eps: float = 1e-5
    layer_scale_init: float | None = None

    def __post_init__(self):
        _require(self.width > 0 and self.depth > 0 and self.vocab_size > 0 and self.context_length > 0,
                 "decoder.width, decoder.depth, decoder.vocab_size and decoder.context_length must be positive")
        _require(self.width % self.num_heads == 0,
                 f"decoder.width {self.width} is not divisible by decoder.num_heads {self.num_heads}")


@dataclasses.dataclass(frozen=True)
class ClipConfig:
    """A two-tower model: architecture plus what is needed to read and write open_clip checkpoints.

    ``open_clip_class`` is the open_clip class with the same key layout: ``CLIP`` keeps the text tower's
    keys at the top level (OpenAI's layout), ``CustomTextCLIP`` nests them under ``text.``.
    ``open_clip_timm_model`` names the timm trunk open_clip uses for this vision tower (SigLIP), if any.
    """
    embed_dim: int
    vision: VisionConfig
    text: TextConfig
    init_logit_scale: float = math.log(1 / 0.07)
    init_logit_bias: float | None = None
    open_clip_class: Literal["CLIP", "CustomTextCLIP", "CoCa"] = "CLIP"
    open_clip_timm_model: str | None = None
    tokenizer: str = "clip"  # "clip" (byte-level BPE) or a Hugging Face tokenizer id
    tokenizer_clean: str | None = None  # text cleaning mode; None = the tokenizer's default
    # Hugging Face tokenizers only: separator ids become 0 (open_clip's strip_sep_token; CLIPA's BERT tokenizer)
    tokenizer_strip_sep: bool = False
    decoder: DecoderConfig | None = None  # CoCa's caption decoder; None for a two-tower CLIP

    def __post_init__(self):
        _require(self.embed_dim > 0, f"embed_dim must be positive, got {self.embed_dim}")
        _require(isinstance(self.vision, VisionConfig) and isinstance(self.text, TextConfig),
                 "vision and text must be VisionConfig and TextConfig (use clipforge.config.from_dict for dicts)")
        _require(self.vision.kind == "resnet" or self.vision.output_proj or self.vision.width == self.embed_dim,
                 f"vision.output_proj=false needs vision.width == embed_dim ({self.vision.width} != "
                 f"{self.embed_dim})")
        _require(self.text.output_proj or self.text.width == self.embed_dim,
                 f"text.output_proj=false needs text.width == embed_dim ({self.text.width} != {self.embed_dim})")
        _require(not self.tokenizer_strip_sep or self.tokenizer != "clip",
                 "tokenizer_strip_sep=true applies to Hugging Face tokenizers only, not tokenizer='clip'")
        if self.decoder is not None:
            self._check_coca()

    def _check_coca(self):
        _require(self.vision.kind == "vit" and self.vision.pool in ("coca", "token"),
                 "a CoCa model (decoder set) needs a ViT image tower with vision.pool='coca' or 'token'")
        tokens = self.embed_dim if self.vision.pool == "coca" else self.vision.width
        _require(self.decoder.width == tokens,
                 f"decoder.width {self.decoder.width} must equal the width of the image tokens it reads ({tokens})")
        if self.text.kind == "hf":
            # the encoder's width is in its transformers config: CoCa checks it against decoder.width when built
            _require(self.text.hf.pool != "cls",
                     "a CoCa model with a Hugging Face text tower needs text.hf.pool 'mean', 'max' or 'first': with "
                     "'cls' open_clip drops the first token's state, which leaves the decoder one state short of the "
                     "caption labels")
            return
        _require(self.text.cls_token and self.text.width == self.decoder.width,
                 "a CoCa model needs text.cls_token=true and text.width == decoder.width")
        _require(self.decoder.vocab_size == self.text.vocab_size,
                 "decoder.vocab_size must equal text.vocab_size (the decoder predicts the text tower's tokens)")
