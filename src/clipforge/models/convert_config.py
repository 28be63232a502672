"""Architecture conversions: open_clip ``model_cfg`` dicts, transformers ``CLIPConfig`` / ``SiglipConfig`` /
``Siglip2Config`` dicts and OpenAI state dicts -> ClipConfig.

Imported through ``clipforge.models.convert``. Options that clipforge does not implement raise
``ConfigError`` naming the option instead of building a different model.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping

import torch

from clipforge.config import ConfigError
from clipforge.models.config import (ClipConfig, DecoderConfig, HFTextConfig, TextConfig, TimmVisionConfig,
                                     VisionConfig)

# timm SigLIP trunks open_clip names in its configs: size -> (width, depth, num_heads, mlp_ratio)
_TIMM_SIGLIP_SIZES = {"base": (768, 12, 12, 4.0), "large": (1024, 24, 16, 4.0), "so400m": (1152, 27, 16, 3.7362),
                      "giantopt": (1536, 40, 16, 4.0)}
_TIMM_SIGLIP_RE = re.compile(r"^vit_(base|large|so400m|giantopt)_patch(\d+)_siglip_(\d+)$")
# the SigLIP trunks that timm (1.0) defines with act_layer='gelu_tanh' (the SigLIP 2 additions); the others use
# exact GELU. Written out because clipforge never imports timm; tools/make_zoo_table.py checks it against timm.
_TIMM_SIGLIP_GELU_TANH = frozenset({
    "vit_base_patch32_siglip_256", "vit_large_patch16_siglip_512", "vit_so400m_patch16_siglip_256",
    "vit_so400m_patch16_siglip_384", "vit_so400m_patch16_siglip_512", "vit_giantopt_patch16_siglip_256",
    "vit_giantopt_patch16_siglip_384"})

# open_clip options whose non-default values change the architecture in ways clipforge does not implement
_UNSUPPORTED_VISION = {"attentional_pool": False, "block_type": None,
                       "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False,
                       "scale_attn_inner": False, "scale_attn": False, "scale_fc": False,
                       "output_tokens": False, "timm_proj_bias": False}
_UNSUPPORTED_TEXT = {"hf_model_name": None, "embed_cls": False, "final_ln_after_pool": False, "block_type": None,
                     "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False,
                     "scale_attn_inner": False, "scale_attn": False, "scale_fc": False,
                     "output_tokens": False, "use_pad_mask": False, "tokenizer_mode": None}
_OC_POOLS = {"tok": "token", "avg": "avg"}
_OC_TEXT_PROJ = {"linear": True, "none": False}
# open_clip's HFTextEncoder poolers and projections (hf_pooler_type, hf_proj_type) -> HFTextConfig.pool, .proj
_OC_HF_POOLS = {"mean_pooler": "mean", "max_pooler": "max", "cls_pooler": "cls",
                "cls_last_hidden_state_pooler": "first"}
_OC_HF_PROJ = {"linear": "linear", "mlp": "mlp", None: "none"}
# the open_clip text_cfg.tokenizer_kwargs clipforge records (ClipConfig.tokenizer_clean, tokenizer_strip_sep); any
# other keyword is refused rather than dropped
_OC_TOKENIZER_KWARGS = ("clean", "strip_sep_token")


def _reject_unsupported(cfg: Mapping[str, Any], defaults: Mapping[str, Any], where: str) -> None:
    bad = [f"{k}={cfg[k]!r}" for k, default in defaults.items() if k in cfg and cfg[k] not in (default, None)]
    if bad:
        raise ConfigError(f"open_clip {where} options not supported by clipforge: {', '.join(bad)}")


def _tower_act(cfg: Mapping[str, Any], act: str, where: str) -> str:
    """open_clip's per-tower ``act_kwargs`` on top of the model's GELU / QuickGELU choice."""
    kwargs = cfg.get("act_kwargs") or {}
    if not kwargs:
        return act
    if kwargs == {"approximate": "tanh"} and act == "gelu":
        return "gelu_tanh"
    raise ConfigError(f"open_clip {where} act_kwargs={dict(kwargs)!r} is not supported by clipforge (with quick_gelu="
                      f"{act == 'quick_gelu'}); only {{'approximate': 'tanh'}} on GELU")


def _vision_from_open_clip(cfg: Mapping[str, Any], act: str) -> tuple[VisionConfig, str | None]:
    image_size = cfg.get("image_size", 224)
    if cfg.get("timm_model_name"):
        if cfg.get("act_kwargs"):
            raise ConfigError("open_clip vision_cfg act_kwargs with a timm tower is not supported by clipforge")
        if _TIMM_SIGLIP_RE.match(cfg["timm_model_name"]) and cfg.get("timm_pool", "avg") == "map":
            _reject_unsupported(cfg, _UNSUPPORTED_VISION, "vision_cfg")
            return _vision_from_timm(cfg, image_size), cfg["timm_model_name"]  # clipforge's own ViT
        return _timm_tower_from_open_clip(cfg, image_size), None
    _reject_unsupported(cfg, _UNSUPPORTED_VISION, "vision_cfg")
    act = _tower_act(cfg, act, "vision_cfg")
    eps = (cfg.get("norm_kwargs") or {}).get("eps", 1e-5)
    layers, width, head_width = cfg.get("layers", 12), cfg.get("width", 768), cfg.get("head_width", 64)
    if isinstance(layers, (list, tuple)):
        return VisionConfig(kind="resnet", image_size=image_size, width=width, num_heads=width * 32 // head_width,
                            stage_depths=tuple(layers), act=act), None
    pool = cfg.get("pool_type", "tok")
    if pool not in _OC_POOLS:
        raise ConfigError(f"open_clip vision pool_type '{pool}' is not supported; use 'tok' or 'avg'")
    # after 'tok' pooling the order of norm and pool does not matter: one spelling (open_clip ignores it for timm,
    # ResNet and attention-pooled towers too)
    norm_after_pool = bool(cfg.get("final_ln_after_pool", False)) and pool == "avg"
    return VisionConfig(kind="vit", image_size=image_size, width=width, num_heads=width // head_width, depth=layers,
                        patch_size=cfg.get("patch_size", 16), mlp_ratio=cfg.get("mlp_ratio", 4.0), act=act,
                        pre_norm=not cfg.get("no_ln_pre", False), pool=_OC_POOLS[pool],
                        norm_after_pool=norm_after_pool, norm_eps=eps,
                        layer_scale_init=cfg.get("ls_init_value"),
                        patch_dropout=cfg.get("patch_dropout", 0.0)), None


# open_clip's timm_proj -> TimmVisionConfig.proj (null and '' use the trunk's own classifier as the projection)
_OC_TIMM_PROJ = {"linear": "linear", "mlp": "mlp", "none": "none", None: "head", "": "head"}


def _timm_tower_from_open_clip(cfg: Mapping[str, Any], image_size: int) -> VisionConfig:
    """Any other timm trunk: built by timm itself (vision.kind='timm'); open_clip's TimmModel reads only the timm_*
    options, image_size and patch_dropout, so only those are converted."""
    if cfg.get("output_tokens"):
        raise ConfigError("open_clip vision_cfg output_tokens=True with a timm tower is not supported by clipforge")
    proj = cfg.get("timm_proj", "linear")
    if proj not in _OC_TIMM_PROJ:
        raise ConfigError(f"open_clip timm_proj={proj!r} is not supported; use 'linear', 'mlp', 'none' or null")
    timm = TimmVisionConfig(model_name=cfg["timm_model_name"], pool=cfg.get("timm_pool", "avg"),
                            proj=_OC_TIMM_PROJ[proj], proj_bias=bool(cfg.get("timm_proj_bias", False)),
                            drop=float(cfg.get("timm_drop", 0.0)), drop_path=cfg.get("timm_drop_path"))
    return VisionConfig(kind="timm", image_size=image_size, patch_dropout=cfg.get("patch_dropout", 0.0), timm=timm)


def _vision_from_timm(cfg: Mapping[str, Any], image_size: int) -> VisionConfig:
    name = cfg["timm_model_name"]
    match = _TIMM_SIGLIP_RE.match(name)
    if not match or cfg.get("timm_pool", "avg") != "map":
        raise ConfigError(f"timm vision tower '{name}' (pool {cfg.get('timm_pool')!r}) is not supported; "
                          "clipforge implements the SigLIP towers "
                          f"vit_{{base,large,so400m,giantopt}}_patchN_siglip_RES with timm_pool='map'")
    width, depth, heads, ratio = _TIMM_SIGLIP_SIZES[match.group(1)]
    proj = cfg.get("timm_proj", "linear")
    if proj not in ("none", "linear", "", None):
        raise ConfigError(f"timm_proj '{proj}' is not supported; use 'none' or 'linear'")
    # timm ViTs use their own GELU (exact, or tanh for the SigLIP 2 trunks) and eps 1e-6 whatever open_clip's
    # quick_gelu says
    act = "gelu_tanh" if name in _TIMM_SIGLIP_GELU_TANH else "gelu"
    return VisionConfig(kind="vit", image_size=image_size, width=width, num_heads=heads, depth=depth,
                        patch_size=int(match.group(2)), mlp_ratio=ratio, act=act, class_token=False,
                        pre_norm=False, pool="map", patch_bias=True, output_proj=proj == "linear", norm_eps=1e-6,
                        patch_dropout=cfg.get("patch_dropout", 0.0))


def _hf_text_from_open_clip(cfg: Mapping[str, Any]) -> TextConfig:
    """An open_clip ``text_cfg`` with ``hf_model_name``: HFTextEncoder reads only the hf_* options (3.3.0 ignores
    ``proj_bias`` and the built-in tower's fields for it), so only those are converted."""
    if cfg.get("output_tokens"):
        raise ConfigError("open_clip text_cfg output_tokens=True with a Hugging Face text tower is not supported")
    pool, proj = cfg.get("hf_pooler_type", "mean_pooler"), cfg.get("hf_proj_type", "mlp")
    if pool not in _OC_HF_POOLS:
        raise ConfigError(f"open_clip text_cfg hf_pooler_type={pool!r} is not supported by clipforge; use one of "
                          f"{', '.join(_OC_HF_POOLS)}")
    if proj not in _OC_HF_PROJ:
        raise ConfigError(f"open_clip text_cfg hf_proj_type={proj!r} is not supported by clipforge; use 'linear', "
                          "'mlp' or null")
    hf = HFTextConfig(model_name=cfg["hf_model_name"], pool=_OC_HF_POOLS[pool], proj=_OC_HF_PROJ[proj])
    return TextConfig(kind="hf", context_length=cfg.get("context_length", 77), hf=hf)


def _text_from_open_clip(cfg: Mapping[str, Any], act: str) -> TextConfig:
    if cfg.get("hf_model_name"):
        return _hf_text_from_open_clip(cfg)
    _reject_unsupported(cfg, _UNSUPPORTED_TEXT, "text_cfg")
    act = _tower_act(cfg, act, "text_cfg")
    proj = cfg.get("proj_type") or "linear"
    if proj not in _OC_TEXT_PROJ:
        raise ConfigError(f"open_clip text_cfg proj_type '{proj}' is not supported by clipforge; use 'linear' or "
                          "'none'")
    return TextConfig(context_length=cfg.get("context_length", 77), vocab_size=cfg.get("vocab_size", 49408),
                      width=cfg.get("width", 512), num_heads=cfg.get("heads", 8), depth=cfg.get("layers", 12),
                      mlp_ratio=cfg.get("mlp_ratio", 4.0), act=act, causal_mask=not cfg.get("no_causal_mask", False),
                      pool=cfg.get("pool_type", "argmax"),
                      eos_id=cfg.get("eos_id", 2) if cfg.get("pool_type") == "eos" else None,
                      proj_bias=cfg.get("proj_bias", False), output_proj=_OC_TEXT_PROJ[proj],
                      norm_eps=(cfg.get("norm_kwargs") or {}).get("eps", 1e-5),
                      layer_scale_init=cfg.get("ls_init_value"))


# open_clip's CoCa switches, handled by _coca_from_open_clip rather than rejected
_COCA_VISION = ("attentional_pool", "attn_pooler_queries", "attn_pooler_heads", "output_tokens")
_COCA_TEXT = ("embed_cls", "output_tokens", "pad_id")


def _coca_from_open_clip(model_cfg: Mapping[str, Any], act: str) -> ClipConfig:
    """An open_clip CoCa ``model_cfg`` (one with ``multimodal_cfg``) -> ClipConfig with a decoder."""
    vision_cfg, text_cfg = dict(model_cfg.get("vision_cfg", {})), dict(model_cfg.get("text_cfg", {}))
    hf_text = bool(text_cfg.get("hf_model_name"))
    if vision_cfg.get("timm_model_name"):
        raise ConfigError("CoCa with a timm image tower is not supported by clipforge")
    if not hf_text and not text_cfg.get("embed_cls", False):
        raise ConfigError("open_clip CoCa configs without text_cfg.embed_cls are not supported by clipforge")
    vision, _ = _vision_from_open_clip({k: v for k, v in vision_cfg.items() if k not in _COCA_VISION}, act)
    if vision_cfg.get("attentional_pool"):
        if isinstance(vision_cfg["attentional_pool"], str):
            raise ConfigError(f"open_clip attentional_pool='{vision_cfg['attentional_pool']}' is not supported; "
                              "clipforge implements open_clip's original CoCa pooler (attentional_pool=true)")
        vision = dataclasses.replace(vision, pool="coca", pool_queries=vision_cfg.get("attn_pooler_queries", 256),
                                     pool_heads=vision_cfg.get("attn_pooler_heads", 8))
    text = _text_from_open_clip({k: v for k, v in text_cfg.items() if k not in _COCA_TEXT}, act)
    if not hf_text:  # a Hugging Face encoder gives the decoder its last hidden states as they are
        text = dataclasses.replace(text, cls_token=True, pool="last", pad_id=text_cfg.get("pad_id", 0))
    m = model_cfg["multimodal_cfg"]
    # open_clip sizes the decoder's vocabulary by text_cfg.vocab_size, also for a Hugging Face encoder (whose own
    # vocabulary it ignores there)
    decoder = DecoderConfig(width=m.get("width", 512), num_heads=m.get("heads", 8), depth=m.get("layers", 12),
                            context_length=m.get("context_length", 77),
                            vocab_size=text_cfg.get("vocab_size", 49408) if hf_text else text.vocab_size,
                            mlp_ratio=float(m.get("mlp_ratio", 4.0)), act=act,
                            layer_scale_init=m.get("ls_init_value"))
    return ClipConfig(embed_dim=model_cfg["embed_dim"], vision=vision, text=text, decoder=decoder,
                      init_logit_scale=model_cfg.get("init_logit_scale", math.log(1 / 0.07)),
                      init_logit_bias=model_cfg.get("init_logit_bias"), open_clip_class="CoCa",
                      tokenizer=text_cfg.get("hf_tokenizer_name") or "clip", **_tokenizer_options(text_cfg))


def config_from_open_clip(model_cfg: Mapping[str, Any]) -> ClipConfig:
    """open_clip ``model_cfg`` (its JSON config, or ``open_clip_config.json["model_cfg"]``) -> ClipConfig."""
    act = "quick_gelu" if model_cfg.get("quick_gelu", False) else "gelu"
    if model_cfg.get("multimodal_cfg"):
        return _coca_from_open_clip(model_cfg, act)
    text_cfg = model_cfg.get("text_cfg", {})
    vision, timm_name = _vision_from_open_clip(model_cfg.get("vision_cfg", {}), act)
    custom_text = model_cfg.get("custom_text", False) or bool(text_cfg.get("hf_model_name"))
    return ClipConfig(embed_dim=model_cfg["embed_dim"], vision=vision, text=_text_from_open_clip(text_cfg, act),
                      init_logit_scale=model_cfg.get("init_logit_scale", math.log(1 / 0.07)),
                      init_logit_bias=model_cfg.get("init_logit_bias"),
                      open_clip_class="CustomTextCLIP" if custom_text else "CLIP", open_clip_timm_model=timm_name,
                      tokenizer=text_cfg.get("hf_tokenizer_name") or "clip", **_tokenizer_options(text_cfg))


def _tokenizer_options(text_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """open_clip's ``tokenizer_kwargs`` as ClipConfig fields; a keyword clipforge cannot honour is an error."""
    kwargs = dict(text_cfg.get("tokenizer_kwargs") or {})
    unknown = sorted(set(kwargs) - set(_OC_TOKENIZER_KWARGS))
    if unknown:
        raise ConfigError(f"open_clip text_cfg tokenizer_kwargs not supported by clipforge: "
                          f"{', '.join(f'{k}={kwargs[k]!r}' for k in unknown)}; supported: "
                          f"{', '.join(_OC_TOKENIZER_KWARGS)}")
    out = {}
    if kwargs.get("clean") is not None:
        out["tokenizer_clean"] = kwargs["clean"]
    if kwargs.get("strip_sep_token"):
        out["tokenizer_strip_sep"] = True
    return out


def _timm_tower_to_open_clip(v: VisionConfig) -> dict[str, Any]:
    t = v.timm
    out = {"image_size": v.image_size, "timm_model_name": t.model_name, "timm_model_pretrained": False,
           "timm_pool": t.pool, "timm_proj": None if t.proj == "head" else t.proj, "timm_drop": t.drop}
    if t.proj_bias:
        out["timm_proj_bias"] = True
    if t.drop_path is not None:
        out["timm_drop_path"] = t.drop_path
    if v.patch_dropout:
        out["patch_dropout"] = v.patch_dropout
    return out


def _vision_to_open_clip(config: ClipConfig) -> dict[str, Any]:
    v = config.vision
    if v.kind == "timm":
        return _timm_tower_to_open_clip(v)
    if config.open_clip_timm_model:
        return {"image_size": v.image_size, "timm_model_name": config.open_clip_timm_model,
                "timm_model_pretrained": False, "timm_pool": "map", "timm_proj": "linear" if v.output_proj else "none"}
    if v.kind == "resnet":
        return {"image_size": v.image_size, "layers": list(v.stage_depths), "width": v.width,
                "head_width": v.width * 32 // v.num_heads, "patch_size": None}
    out = {"image_size": v.image_size, "layers": v.depth, "width": v.width, "head_width": v.width // v.num_heads,
           "patch_size": v.patch_size, "mlp_ratio": v.mlp_ratio}
    if not v.pre_norm:
        out["no_ln_pre"] = True
    if v.pool == "coca":
        out.update(attentional_pool=True, attn_pooler_queries=v.pool_queries, attn_pooler_heads=v.pool_heads)
    elif v.pool != "token":
        out["pool_type"] = {"avg": "avg"}.get(v.pool) or _fail(f"vision.pool '{v.pool}' has no open_clip equivalent")
    if v.norm_after_pool:
        out["final_ln_after_pool"] = True
    if config.decoder is not None:
        out["output_tokens"] = True
    if v.norm_eps != 1e-5:
        out["norm_kwargs"] = {"eps": v.norm_eps}
    if v.layer_scale_init is not None:
        out["ls_init_value"] = v.layer_scale_init
    return out


def _fail(message: str):
    raise ConfigError(message)


def _hf_text_to_open_clip(config: ClipConfig) -> dict[str, Any]:
    hf = config.text.hf
    if hf.model_config is not None or hf.proj_bias:
        raise ConfigError("open_clip builds a Hugging Face text tower from the hub config of hf_model_name, without "
                          "a projection bias; text.hf.model_config and text.hf.proj_bias=true have no open_clip form")
    out = {"context_length": config.text.context_length, "hf_model_name": hf.model_name,
           "hf_proj_type": {v: k for k, v in _OC_HF_PROJ.items()}[hf.proj],
           "hf_pooler_type": {v: k for k, v in _OC_HF_POOLS.items()}[hf.pool]}
    if config.decoder is not None:  # CoCa: the token states feed the decoder, which open_clip sizes by vocab_size
        out.update(output_tokens=True, vocab_size=config.decoder.vocab_size)
    return {**out, **_tokenizer_to_open_clip(config)}


def _tokenizer_to_open_clip(config: ClipConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if config.tokenizer != "clip":
        out["hf_tokenizer_name"] = config.tokenizer
    tokenizer_kwargs = {}
    if config.tokenizer_clean:
        tokenizer_kwargs["clean"] = config.tokenizer_clean
    if config.tokenizer_strip_sep:
        tokenizer_kwargs["strip_sep_token"] = True
    if tokenizer_kwargs:
        out["tokenizer_kwargs"] = tokenizer_kwargs
    return out


def _text_to_open_clip(config: ClipConfig) -> dict[str, Any]:
    t = config.text
    if t.kind == "hf":
        return _hf_text_to_open_clip(config)
    out = {"context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.width, "heads": t.num_heads,
           "layers": t.depth}
    if t.mlp_ratio != 4.0:
        out["mlp_ratio"] = t.mlp_ratio
    if not t.causal_mask:
        out["no_causal_mask"] = True
    if t.pool != "argmax":
        out["pool_type"] = t.pool
    if t.eos_id is not None:
        out["eos_id"] = t.eos_id
    if t.proj_bias:
        out["proj_bias"] = True
    if not t.output_proj:
        out["proj_type"] = "none"
    if t.norm_eps != 1e-5:
        out["norm_kwargs"] = {"eps": t.norm_eps}
    if t.layer_scale_init is not None:
        out["ls_init_value"] = t.layer_scale_init
    out.update(_tokenizer_to_open_clip(config))
    if t.cls_token:
        out.update(embed_cls=True, output_tokens=True, pad_id=t.pad_id)
        out.pop("pool_type")  # the appended token overrides open_clip's pool_type
    return out


def _decoder_to_open_clip(config: ClipConfig) -> dict[str, Any]:
    d = config.decoder
    out = {"width": d.width, "heads": d.num_heads, "layers": d.depth, "context_length": d.context_length,
           "vocab_size": d.vocab_size, "mlp_ratio": d.mlp_ratio}
    if d.layer_scale_init is not None:
        out["ls_init_value"] = d.layer_scale_init
    towers_act = config.vision.act if config.text.kind == "hf" else config.text.act  # an encoder has its own
    if d.norm_eps != 1e-5 or d.act != towers_act:
        raise ConfigError("open_clip's CoCa decoder uses the towers' activation and LayerNorm eps 1e-5")
    return out


def config_to_open_clip(config: ClipConfig) -> dict[str, Any]:
    """ClipConfig -> open_clip ``model_cfg`` dict (for ``open_clip_config.json``)."""
    towers = {}  # a timm trunk or a Hugging Face encoder brings its own activation
    if config.text.kind != "hf":
        towers["text_cfg"] = config.text.act
    if not config.open_clip_timm_model and config.vision.kind != "timm":
        towers["vision_cfg"] = config.vision.act
    acts = {"gelu" if act == "gelu_tanh" else act for act in towers.values()}  # tanh: a tower's act_kwargs
    if acts - {"gelu", "quick_gelu"} or len(acts) > 1:
        raise ConfigError(f"activations {sorted(set(towers.values()))} cannot be written as open_clip's single "
                          f"quick_gelu flag plus per-tower act_kwargs")
    out: dict[str, Any] = {"embed_dim": config.embed_dim, "vision_cfg": _vision_to_open_clip(config),
                           "text_cfg": _text_to_open_clip(config)}
    for tower, act in towers.items():
        if act == "gelu_tanh":
            out[tower]["act_kwargs"] = {"approximate": "tanh"}
    if acts == {"quick_gelu"}:
        out["quick_gelu"] = True
    if config.open_clip_class in ("CustomTextCLIP", "CoCa"):
        out["custom_text"] = True
    if config.decoder is not None:
        out["multimodal_cfg"] = _decoder_to_open_clip(config)
    if config.init_logit_bias is not None:
        out["init_logit_bias"] = config.init_logit_bias
    if abs(config.init_logit_scale - math.log(1 / 0.07)) > 1e-9:
        out["init_logit_scale"] = config.init_logit_scale
    return out


# ---------------------------------------------------------------- Hugging Face transformers CLIPConfig
_HF_ACTS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}


def _hf_act(name: str) -> str:
    if name not in _HF_ACTS:
        raise ConfigError(f"Hugging Face hidden_act '{name}' is not supported; use one of {sorted(_HF_ACTS)}")
    return _HF_ACTS[name]


def config_from_hf(config_json: Mapping[str, Any], tokenizer: str | None = None) -> ClipConfig:
    """A transformers ``config.json`` dict -> ClipConfig (transformers' own defaults fill missing fields).

    ``model_type`` ``clip`` (CLIPModel), ``siglip`` (SiglipModel) or ``siglip2`` (Siglip2Model, see
    ``_siglip_from_hf``). ``tokenizer``: a SigLIP model's tokenizer (a hub id or a folder with ``tokenizer.json``);
    by default open_clip's tokenizer of the same vocabulary (``SIGLIP_TOKENIZERS``). CLIP uses CLIP's BPE.
    """
    model_type = config_json.get("model_type", "clip")
    if model_type in ("siglip", "siglip2"):
        return _siglip_from_hf(config_json, tokenizer)
    if model_type != "clip":
        raise ConfigError(f"Hugging Face model_type '{model_type}' is not supported; clipforge reads 'clip' "
                          f"(CLIPModel), 'siglip' (SiglipModel) and 'siglip2' (Siglip2Model)")
    t, v = config_json.get("text_config") or {}, config_json.get("vision_config") or {}
    t_width, v_width = t.get("hidden_size", 512), v.get("hidden_size", 768)
    eos = t.get("eos_token_id", 49407)
    # eos_token_id == 2 marks configs written before HF used the real EOS id: those pool at the argmax token
    text = TextConfig(context_length=t.get("max_position_embeddings", 77), vocab_size=t.get("vocab_size", 49408),
                      width=t_width, num_heads=t.get("num_attention_heads", 8), depth=t.get("num_hidden_layers", 12),
                      mlp_ratio=t.get("intermediate_size", 2048) / t_width, act=_hf_act(t.get("hidden_act", "quick_gelu")),
                      pool="argmax" if eos == 2 else "eos", eos_id=None if eos == 2 else eos,
                      norm_eps=t.get("layer_norm_eps", 1e-5))
    vision = VisionConfig(kind="vit", image_size=v.get("image_size", 224), width=v_width,
                          num_heads=v.get("num_attention_heads", 12), depth=v.get("num_hidden_layers", 12),
                          patch_size=v.get("patch_size", 32), mlp_ratio=v.get("intermediate_size", 3072) / v_width,
                          act=_hf_act(v.get("hidden_act", "quick_gelu")), norm_eps=v.get("layer_norm_eps", 1e-5))
    return ClipConfig(embed_dim=config_json.get("projection_dim", 512), vision=vision, text=text,
                      init_logit_scale=config_json.get("logit_scale_init_value", 2.6592))


# The SigLIP vocabularies open_clip publishes tokenizers for (the same SentencePiece models transformers' SigLIP
# checkpoints were converted with): English c4 (SigLIP), multilingual (SigLIP i18n), Gemma's (SigLIP 2).
SIGLIP_TOKENIZERS = {32000: "timm/ViT-B-16-SigLIP", 250000: "timm/ViT-B-16-SigLIP-i18n-256",
                     256000: "timm/ViT-B-16-SigLIP2"}


def siglip_tokenizer_known(vocab_size: int) -> bool:
    return vocab_size in SIGLIP_TOKENIZERS


def _one_int(value: Any, where: str) -> int:
    """transformers allows (height, width) sizes; clipforge's towers are square."""
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ConfigError(f"Hugging Face {where}={list(value)} is not square; clipforge builds square towers")
        value = value[0]
    return int(value)


def _siglip_tower_sizes(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The encoder fields shared by SigLIP's text and vision configs (transformers' defaults)."""
    width = cfg.get("hidden_size", 768)
    return dict(width=width, num_heads=cfg.get("num_attention_heads", 12), depth=cfg.get("num_hidden_layers", 12),
                mlp_ratio=cfg.get("intermediate_size", 3072) / width,
                act=_hf_act(cfg.get("hidden_act", "gelu_pytorch_tanh")), norm_eps=cfg.get("layer_norm_eps", 1e-6))


def _siglip_image_size(v: Mapping[str, Any], naflex: bool, patch: int) -> int:
    """SigLIP: the config's image size. SigLIP 2 NaFlex has none (any patch grid up to a patch budget): clipforge
    runs it at the size whose patch grid is the position-embedding grid (sqrt(num_patches) patches a side, 16 x 16
    = 256 px for the patch-16 checkpoints), where transformers uses the embedding as stored; another size
    (``image_size=``) gets the embedding resized as transformers resizes it for that grid."""
    if not naflex:
        return _one_int(v.get("image_size", 224), "vision_config.image_size")
    num_patches = v.get("num_patches", 256)
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ConfigError(f"Hugging Face Siglip2 vision_config.num_patches={num_patches} is not a square grid")
    return side * patch


def _siglip_from_hf(config_json: Mapping[str, Any], tokenizer: str | None) -> ClipConfig:
    """transformers ``SiglipConfig`` / ``Siglip2Config`` -> ClipConfig: a ViT without class token or pre-norm,
    pooled by its attention-pool (MAP) head, no image projection; a bidirectional text transformer pooled at the
    last position through a linear head with bias; a learned logit scale and bias."""
    t, v = config_json.get("text_config") or {}, config_json.get("vision_config") or {}
    if not v.get("vision_use_head", True):
        raise ConfigError("Hugging Face SigLIP vision_config.vision_use_head=false is not supported: the image "
                          "features of SiglipModel come from that attention-pool head")
    if v.get("num_channels", 3) != 3:
        raise ConfigError(f"Hugging Face SigLIP vision_config.num_channels={v['num_channels']} is not supported; "
                          f"clipforge's image towers take RGB (3 channels)")
    vision_sizes, text_sizes = _siglip_tower_sizes(v), _siglip_tower_sizes(t)
    embed_dim = vision_sizes["width"]
    if (t.get("projection_size") or text_sizes["width"]) != embed_dim:
        raise ConfigError(f"Hugging Face SigLIP text_config.projection_size {t.get('projection_size')} differs from "
                          f"vision_config.hidden_size {embed_dim}: image and text features must have one size")
    patch = _one_int(v.get("patch_size", 16), "vision_config.patch_size")
    image_size = _siglip_image_size(v, config_json.get("model_type") == "siglip2", patch)
    vision = VisionConfig(kind="vit", image_size=image_size, patch_size=patch, class_token=False, pre_norm=False,
                          pool="map", patch_bias=True, output_proj=False, **vision_sizes)
    vocab = t.get("vocab_size", 32000)
    text = TextConfig(context_length=t.get("max_position_embeddings", 64), vocab_size=vocab, causal_mask=False,
                      pool="last", proj_bias=True, **text_sizes)
    tokenizer = tokenizer or SIGLIP_TOKENIZERS.get(vocab)
    if tokenizer is None:
        raise ConfigError(f"no SigLIP tokenizer is known for a vocabulary of {vocab} tokens; pass the folder or hub "
                          f"repo holding its tokenizer.json")
    # the logit scale and bias are SigLIP's initial values; a checkpoint brings its own
    return ClipConfig(embed_dim=embed_dim, vision=vision, text=text, init_logit_scale=math.log(10.0),
                      init_logit_bias=-10.0, open_clip_class="CustomTextCLIP", tokenizer=tokenizer,
                      tokenizer_clean="canonicalize")


# ---------------------------------------------------------------- OpenAI .pt archives
def _count_blocks(state_dict: Mapping[str, torch.Tensor], prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in state_dict if k.startswith(prefix)})


def config_from_openai_state_dict(state_dict: Mapping[str, torch.Tensor]) -> ClipConfig:
    """Infer the architecture of an OpenAI CLIP state dict from its tensor shapes (QuickGELU, 64-wide heads)."""
    sd = state_dict
    try:
        if "visual.proj" in sd:
            width = sd["visual.conv1.weight"].shape[0]
            patch = sd["visual.conv1.weight"].shape[-1]
            grid = math.isqrt(sd["visual.positional_embedding"].shape[0] - 1)
            vision = VisionConfig(kind="vit", image_size=patch * grid, width=width, num_heads=width // 64,
                                  depth=_count_blocks(sd, "visual.transformer.resblocks."), patch_size=patch,
                                  act="quick_gelu")
        else:
            width = sd["visual.layer1.0.conv1.weight"].shape[0]
            grid = math.isqrt(sd["visual.attnpool.positional_embedding"].shape[0] - 1)
            stages = tuple(_count_blocks(sd, f"visual.layer{i}.") for i in (1, 2, 3, 4))
            vision = VisionConfig(kind="resnet", image_size=grid * 32, width=width, num_heads=width * 32 // 64,
                                  stage_depths=stages, act="quick_gelu")
        text_width = sd["ln_final.weight"].shape[0]
        text = TextConfig(context_length=sd["positional_embedding"].shape[0],
                          vocab_size=sd["token_embedding.weight"].shape[0], width=text_width,
                          num_heads=text_width // 64, depth=_count_blocks(sd, "transformer.resblocks."),
                          act="quick_gelu")
        return ClipConfig(embed_dim=sd["text_projection"].shape[1], vision=vision, text=text)
    except KeyError as e:
        raise ConfigError(f"not an OpenAI CLIP state dict: key {e} is missing") from None
