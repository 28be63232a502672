"""Key maps between clipforge state dicts and the checkpoint layouts in the wild.

Pure functions, state_dict -> state_dict. Supported sources:

- open_clip ``CLIP`` (flat text keys, also OpenAI's ``.pt`` archives) and ``CustomTextCLIP`` (``text.*``),
  including its timm-based SigLIP vision tower (``visual.trunk.*``, ``visual.head.*``; other timm towers keep
  these keys in clipforge), and ``CoCa`` (its attentional
  pooler ``visual.attn_pool.*``, the text tower's ``cls_emb``, the decoder ``text_decoder.*``);
- open_clip's Hugging Face text towers (``text.transformer.*``, ``text.proj*``): the same keys in clipforge;
- Hugging Face transformers ``CLIPModel``, ``SiglipModel`` and ``Siglip2Model`` (NaFlex: its patch embedding
  becomes a convolution kernel, its position embedding is resized once to the model's grid as transformers resizes
  it for that grid);
- clipforge itself.

The maps only rename and reshape (and resize NaFlex position embeddings); ``models.loading`` then checks keys and
shapes once against the model, so a checkpoint for another architecture fails there, loudly, instead of loading
partially.
The architecture-level conversions (open_clip / HF configs -> ClipConfig) live in ``convert_config.py``.
"""
from __future__ import annotations

import functools
import re
import types
from typing import Callable, Mapping

import torch

from clipforge.layers.embed import resize_pos_embed
from clipforge.models.config import ClipConfig
from clipforge.models.convert_config import (  # noqa: F401  (re-exported: one import site for all conversions)
    config_from_hf, config_from_open_clip, config_from_openai_state_dict, config_to_open_clip)

StateDict = dict[str, torch.Tensor]

# Entries are (open_clip name, clipforge name). A name ending in "." is a prefix; otherwise it must match exactly.
_OC_BLOCK = [("ln_1.", "norm1."), ("ln_2.", "norm2."), ("attn.in_proj_weight", "attn.qkv.weight"),
             ("attn.in_proj_bias", "attn.qkv.bias"), ("attn.out_proj.", "attn.proj."), ("mlp.c_fc.", "mlp.fc1."),
             ("mlp.c_proj.", "mlp.fc2."), ("ls_1.", "ls1."), ("ls_2.", "ls2.")]
_OC_VIT = [("conv1.", "patch_embed.proj."), ("class_embedding", "cls_token"), ("positional_embedding", "pos_embed"),
           ("ln_pre.", "norm_pre."), ("ln_post.", "norm."), ("proj", "proj.weight"),
           # CoCa's attentional pooler (its q/k/v projections are packed by _coca_pool_tensors)
           ("attn_pool.query", "attn_pool.query"), ("attn_pool.ln_q.", "attn_pool.norm_q."),
           ("attn_pool.ln_k.", "attn_pool.norm_k."), ("attn_pool.attn.out_proj.", "attn_pool.proj.")]
_TIMM_VIT = [("trunk.patch_embed.", "patch_embed."), ("trunk.cls_token", "cls_token"), ("trunk.pos_embed", "pos_embed"),
             ("trunk.norm_pre.", "norm_pre."), ("trunk.norm.", "norm."), ("trunk.attn_pool.", "attn_pool."),
             ("head.proj.", "proj.")]
_OC_RESNET = [("attnpool.positional_embedding", "attn_pool.pos_embed"), ("attnpool.q_proj.", "attn_pool.q."),
              ("attnpool.c_proj.", "attn_pool.proj.")]
_OC_TEXT = [("token_embedding.", "token_embedding."), ("positional_embedding", "pos_embed"), ("ln_final.", "norm."),
            ("text_projection.weight", "proj.weight"), ("text_projection.bias", "proj.bias"),
            ("text_projection", "proj.weight"), ("cls_emb", "cls_token")]
# CoCa's decoder: open_clip's MultimodalTransformer (self-attention `resblocks`, `cross_attn` blocks, final norm)
_OC_CROSS_BLOCK = [("ln_1_kv.", "norm_kv."), *_OC_BLOCK]
_OC_DECODER_RE = re.compile(r"^text_decoder\.(resblocks|cross_attn)\.(\d+)\.(.*)$")
_CF_DECODER_RE = re.compile(r"^decoder\.(self_blocks|cross_blocks)\.(\d+)\.(.*)$")
_OC_POOL_ATTN = "visual.attn_pool.attn."
_HF_BLOCK = [("layer_norm1.", "norm1."), ("layer_norm2.", "norm2."), ("self_attn.out_proj.", "attn.proj."),
             ("mlp.fc1.", "mlp.fc1."), ("mlp.fc2.", "mlp.fc2.")]
_HF_TOP = [("logit_scale", "logit_scale"), ("visual_projection.weight", "visual.proj.weight"),
           ("text_projection.weight", "text.proj.weight"),
           ("vision_model.embeddings.class_embedding", "visual.cls_token"),
           ("vision_model.embeddings.patch_embedding.", "visual.patch_embed.proj."),
           ("vision_model.embeddings.position_embedding.weight", "visual.pos_embed"),
           ("vision_model.pre_layrnorm.", "visual.norm_pre."), ("vision_model.post_layernorm.", "visual.norm."),
           ("text_model.embeddings.token_embedding.", "text.token_embedding."),
           ("text_model.embeddings.position_embedding.weight", "text.pos_embed"),
           ("text_model.final_layer_norm.", "text.norm.")]
# transformers SiglipModel / Siglip2Model: the text head is clipforge's text projection (with bias), the vision head
# its MAP pool (nn.MultiheadAttention's packed q/k/v are split into q and kv by _hf_to_clipforge)
_HF_SIGLIP = [("logit_bias", "logit_bias"), ("text_model.head.", "text.proj."),
              ("vision_model.head.probe", "visual.attn_pool.latent"),
              ("vision_model.head.attention.out_proj.", "visual.attn_pool.proj."),
              ("vision_model.head.layernorm.", "visual.attn_pool.norm."),
              ("vision_model.head.mlp.", "visual.attn_pool.mlp.")]
_HF_POOL_QKV = "vision_model.head.attention.in_proj_"
_HF_PATCH = "vision_model.embeddings.patch_embedding.weight"
_HF_POS = "vision_model.embeddings.position_embedding.weight"
# HF index buffers: recomputed by every model, they carry no weights.
_HF_BUFFERS = ("vision_model.embeddings.position_ids", "text_model.embeddings.position_ids")
_OPENAI_EXTRAS = ("input_resolution", "context_length", "vocab_size")
# an index buffer that transformers < 4.31 saved with RoBERTa / XLM-R weights (open_clip drops it too)
_HF_TEXT_BUFFERS = ("text.transformer.embeddings.position_ids",)

_BLOCK_RE = re.compile(r"^(.*?)(?:transformer\.resblocks|trunk\.blocks|encoder\.layers|transformer\.blocks)\.(\d+)\.(.*)$")


class ConversionError(ValueError):
    """A checkpoint does not fit the requested architecture or layout."""


def _rename(name: str, table, reverse: bool = False) -> str | None:
    for old, new in table:
        src, dst = (new, old) if reverse else (old, new)
        if src.endswith(".") and name.startswith(src):
            return dst + name[len(src):]
        if name == src:
            return dst
    return None


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str = "module.") -> StateDict:
    """Drop ``prefix`` (DDP's ``module.``) from every key that has it."""
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state_dict.items()}


def detect_layout(state_dict: Mapping[str, torch.Tensor]) -> str:
    """``"clipforge"``, ``"openai"``, ``"open_clip"`` or ``"hf"``; a DDP ``module.`` prefix is ignored."""
    keys = set(strip_prefix(state_dict))
    if "text.pos_embed" in keys:
        return "clipforge"
    if any(k.startswith(("vision_model.", "text_model.")) for k in keys):
        return "hf"
    if "positional_embedding" in keys and "input_resolution" in keys:
        return "openai"
    if "positional_embedding" in keys or "text.positional_embedding" in keys:
        return "open_clip"
    if any(k.startswith("text.transformer.") for k in keys):  # a Hugging Face text tower: same keys in both
        return "clipforge" if keys & {"visual.pos_embed", "visual.attn_pool.pos_embed"} else "open_clip"
    sample = ", ".join(sorted(keys)[:5])
    raise ConversionError(f"unrecognised checkpoint layout (first keys: {sample}); expected an open_clip, OpenAI, "
                          f"Hugging Face CLIPModel / SiglipModel or clipforge state dict")


# ---------------------------------------------------------------- open_clip / OpenAI -> clipforge
def _block_key(prefix: str, index: str, rest: str, table) -> str | None:
    mapped = _rename(rest, table) if table else rest
    return None if mapped is None else f"{prefix}transformer.blocks.{index}.{mapped}"


def _open_clip_visual_key(name: str, config: ClipConfig) -> str | None:
    """A key under ``visual.`` (without the prefix) -> clipforge name, or None if unknown."""
    block = _BLOCK_RE.match(name)
    if config.vision.kind == "resnet":
        renamed = _rename(name, _OC_RESNET)
        if renamed is not None:
            return renamed
        return name.replace("downsample.0.", "downsample.conv.").replace("downsample.1.", "downsample.bn.")
    if name.startswith(("trunk.", "head.")):  # open_clip's timm ViT (SigLIP): timm block names match ours
        return _block_key("", block.group(2), block.group(3), None) if block else _rename(name, _TIMM_VIT)
    if block and block.group(1) == "":
        return _block_key("", block.group(2), block.group(3), _OC_BLOCK)
    return _rename(name, _OC_VIT)


def _fix_visual_tensor(name: str, tensor: torch.Tensor) -> torch.Tensor:
    if name == "proj":
        return tensor.t()  # open_clip keeps (width, embed_dim) for x @ proj; nn.Linear wants (embed_dim, width)
    if name in ("trunk.pos_embed", "trunk.attn_pool.latent"):
        return tensor.reshape(tensor.shape[-2], tensor.shape[-1])  # (1, N, D) -> (N, D)
    if name == "trunk.cls_token":
        return tensor.reshape(-1)  # (1, 1, D) -> (D,)
    return tensor


def _open_clip_to_clipforge(state_dict: StateDict, config: ClipConfig) -> StateDict:
    text_prefix = "text." if "text.positional_embedding" in state_dict else ""
    out, unknown = {}, []
    hf_text, timm_vision = config.text.kind == "hf", config.vision.kind == "timm"
    for key, tensor in state_dict.items():
        if key in ("logit_scale", "logit_bias") or (hf_text and key.startswith("text.")) or \
                (timm_vision and key.startswith("visual.")):
            out[key] = tensor  # open_clip's Hugging Face text and timm image towers have clipforge's keys
        elif key.startswith(_OC_POOL_ATTN) and not key.startswith(_OC_POOL_ATTN + "out_proj."):
            continue  # packed below
        elif key.startswith("text_decoder."):
            new = _decoder_key(key)
            if new is None:
                unknown.append(key)
            else:
                out[new] = tensor.t() if key == "text_decoder.text_projection" else tensor
        elif key.startswith("visual."):
            name = key[len("visual."):]
            if config.vision.kind == "resnet" and name.startswith(("attnpool.k_proj.", "attnpool.v_proj.")):
                continue  # packed below
            new = _open_clip_visual_key(name, config)
            if new is None:
                unknown.append(key)
            else:
                out["visual." + new] = _fix_visual_tensor(name, tensor)
        elif key.startswith(text_prefix) and _text_key(key[len(text_prefix):]) is not None:
            name = key[len(text_prefix):]
            out["text." + _text_key(name)] = tensor.t() if name == "text_projection" else tensor
        else:
            unknown.append(key)
    if config.vision.kind == "resnet":
        _pack_resnet_kv(state_dict, out)
    out.update(_coca_pool_tensors(state_dict))
    if unknown:
        raise ConversionError(f"{len(unknown)} checkpoint keys have no place in a clipforge model: "
                              f"{', '.join(unknown[:8])}")
    return out


def _text_key(name: str) -> str | None:
    block = _BLOCK_RE.match(name)
    if block and block.group(1) == "":
        return _block_key("", block.group(2), block.group(3), _OC_BLOCK)
    return _rename(name, _OC_TEXT)


def _decoder_key(key: str) -> str | None:
    """open_clip ``text_decoder.*`` -> clipforge ``decoder.*`` (None if unknown)."""
    if key == "text_decoder.text_projection":
        return "decoder.proj.weight"
    if key.startswith("text_decoder.ln_final."):
        return "decoder.norm." + key[len("text_decoder.ln_final."):]
    match = _OC_DECODER_RE.match(key)
    if match is None:
        return None
    kind, index, rest = match.groups()
    mapped = _rename(rest, _OC_BLOCK if kind == "resblocks" else _OC_CROSS_BLOCK)
    blocks = "self_blocks" if kind == "resblocks" else "cross_blocks"
    return None if mapped is None else f"decoder.{blocks}.{index}.{mapped}"


def _coca_pool_tensors(state_dict: StateDict) -> StateDict:
    """CoCa pooler projections: ``nn.MultiheadAttention`` keeps q/k/v packed when the token width equals the pool
    width, separate otherwise; clipforge keeps ``q`` and a packed ``kv``."""
    get = lambda name: state_dict.get(_OC_POOL_ATTN + name)  # noqa: E731
    out = {}
    packed, bias = get("in_proj_weight"), get("in_proj_bias")
    if packed is not None:
        width = packed.shape[0] // 3
        out["visual.attn_pool.q.weight"], out["visual.attn_pool.kv.weight"] = packed[:width], packed[width:]
    elif get("q_proj_weight") is not None:
        out["visual.attn_pool.q.weight"] = get("q_proj_weight")
        out["visual.attn_pool.kv.weight"] = torch.cat([get("k_proj_weight"), get("v_proj_weight")])
    if bias is not None:
        width = bias.shape[0] // 3
        out["visual.attn_pool.q.bias"], out["visual.attn_pool.kv.bias"] = bias[:width], bias[width:]
    return out


def _pack_resnet_kv(state_dict: StateDict, out: StateDict) -> None:
    for part in ("weight", "bias"):
        k, v = state_dict.get(f"visual.attnpool.k_proj.{part}"), state_dict.get(f"visual.attnpool.v_proj.{part}")
        if k is not None and v is not None:
            out[f"visual.attn_pool.kv.{part}"] = torch.cat([k, v], dim=0)  # (2C, ...)


# ---------------------------------------------------------------- HF transformers CLIP / SigLIP -> clipforge
def _hf_to_clipforge(state_dict: StateDict, config: ClipConfig) -> StateDict:
    out, unknown, qkv = {}, [], {}
    naflex = getattr(state_dict.get(_HF_PATCH), "ndim", 4) == 2  # Siglip2Model: a Linear over flattened patches
    for key, tensor in state_dict.items():
        if key in _HF_BUFFERS:
            continue
        if key.startswith(_HF_POOL_QKV):  # (3D, ...): packed q, k, v of the MAP head
            part, width = key[len(_HF_POOL_QKV):], tensor.shape[0] // 3
            out[f"visual.attn_pool.q.{part}"], out[f"visual.attn_pool.kv.{part}"] = tensor[:width], tensor[width:]
            continue
        block = _BLOCK_RE.match(key)
        if block:
            tower = "visual." if block.group(1).startswith("vision_model") else "text."
            index, rest = block.group(2), block.group(3)
            proj = re.match(r"self_attn\.([qkv])_proj\.(weight|bias)$", rest)
            if proj:
                qkv.setdefault((tower, index, proj.group(2)), {})[proj.group(1)] = tensor
                continue
            new = _block_key(tower, index, rest, _HF_BLOCK)
        else:
            new = _rename(key, _HF_TOP) or _rename(key, _HF_SIGLIP)
        if new is None:
            unknown.append(key)
        else:
            out[new] = _fix_hf_tensor(key, tensor, config, naflex)
    for (tower, index, part), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise ConversionError(f"layer {tower}{index}: q/k/v projections incomplete ({sorted(parts)})")
        out[f"{tower}transformer.blocks.{index}.attn.qkv.{part}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    if unknown:
        raise ConversionError(f"{len(unknown)} Hugging Face keys have no place in a clipforge model: "
                              f"{', '.join(unknown[:8])}")
    return out


def _fix_hf_tensor(key: str, tensor: torch.Tensor, config: ClipConfig, naflex: bool) -> torch.Tensor:
    if key in ("logit_scale", "logit_bias") and tensor.shape == (1,):
        return tensor.reshape(())  # SigLIP keeps (1,), CLIP and clipforge a scalar
    if key == "vision_model.head.probe":
        return tensor.reshape(-1, tensor.shape[-1])  # (1, 1, D) -> (1, D)
    if naflex and key == _HF_PATCH:
        return _naflex_patch_kernel(tensor, config.vision.patch_size)
    if naflex and key == _HF_POS:
        grid = config.vision.grid_size  # transformers resizes the stored grid to each image's patch grid
        return resize_pos_embed(tensor, (grid, grid), 0, mode="bilinear", antialias=True)
    return tensor


def _naflex_patch_kernel(weight: torch.Tensor, patch: int) -> torch.Tensor:
    """Siglip2's Linear over flattened patches (D, p * p * C), pixels in (row, column, channel) order as its image
    processor flattens them -> the equivalent convolution kernel (D, C, p, p)."""
    channels = weight.shape[1] // (patch * patch)
    if channels * patch * patch != weight.shape[1]:
        raise ConversionError(f"{_HF_PATCH} has {weight.shape[1]} inputs, not patch_size {patch} squared times the "
                              f"channels")
    return weight.reshape(weight.shape[0], patch, patch, channels).permute(0, 3, 1, 2).contiguous()


# ---------------------------------------------------------------- validation, entry points
@functools.lru_cache(maxsize=256)
def _expected_shapes(config: ClipConfig) -> Mapping[str, tuple[int, ...]]:
    from clipforge.models.coca import build_model  # it does not import this module; imported here to keep it light

    with torch.device("meta"):
        model = build_model(config)
    return types.MappingProxyType({k: tuple(v.shape) for k, v in model.state_dict().items()})


def _cached_shapes(config: ClipConfig) -> Mapping[str, tuple[int, ...]]:
    try:
        return _expected_shapes(config)
    except TypeError:  # a config built by hand with a list in it is no cache key
        return _expected_shapes.__wrapped__(config)


def expected_shapes(config: ClipConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a clipforge model for ``config``, built on the meta device (no memory), once per config.

    A meta build still costs about 0.1 s (every init call is dispatched), so results are cached: configs are frozen.
    """
    return dict(_cached_shapes(config))


def anchor_shapes(config: ClipConfig) -> dict[str, tuple[int, ...] | None]:
    """A few keys whose shapes ``config`` states directly (None: the key must be absent): a necessary condition for
    ``shapes_match`` that needs no model build, so a search over every preset builds only the plausible ones.
    ``tests/models/test_model_registry.py`` checks it against ``expected_shapes``."""
    v, t = config.vision, config.text
    out: dict[str, tuple[int, ...] | None] = {"logit_bias": None if config.init_logit_bias is None else ()}
    if t.kind == "hf":  # the encoder's shapes need its transformers config: only the absence of CLIP's text keys
        out["text.pos_embed"] = None
    else:
        out.update({"text.token_embedding.weight": (t.vocab_size, t.width),
                    "text.pos_embed": (t.context_length + int(t.cls_token), t.width),
                    f"text.transformer.blocks.{t.depth - 1}.norm1.weight": (t.width,),
                    f"text.transformer.blocks.{t.depth}.norm1.weight": None})
    if v.kind == "resnet":
        out["visual.attn_pool.pos_embed"] = (v.grid_size ** 2 + 1, v.width * 32)
    elif v.kind == "timm":  # the trunk's shapes need timm: only the absence of clipforge's own tower keys
        out.update({"visual.pos_embed": None, "visual.attn_pool.pos_embed": None})
    else:
        out.update({"visual.pos_embed": (v.grid_size ** 2 + int(v.class_token), v.width),
                    f"visual.transformer.blocks.{v.depth - 1}.norm1.weight": (v.width,),
                    f"visual.transformer.blocks.{v.depth}.norm1.weight": None})
    return out


def anchors_match(state_dict: Mapping[str, torch.Tensor], config: ClipConfig) -> bool:
    """False when ``state_dict`` (clipforge keys) surely does not fit ``config`` (see ``anchor_shapes``)."""
    return all((tuple(state_dict[k].shape) if k in state_dict else None) == shape
               for k, shape in anchor_shapes(config).items())


def shapes_match(state_dict: Mapping[str, torch.Tensor], config: ClipConfig) -> bool:
    """True when ``state_dict`` (clipforge keys) has exactly the keys and shapes of a model for ``config``."""
    if not anchors_match(state_dict, config):
        return False
    expected = _cached_shapes(config)
    return set(expected) == set(state_dict) and all(tuple(state_dict[k].shape) == expected[k] for k in expected)


def convert_state_dict(state_dict: Mapping[str, torch.Tensor], config: ClipConfig) -> StateDict:
    """Any supported layout -> clipforge keys for ``config`` (a pure key map: the loader checks keys and shapes)."""
    state_dict = {k: v for k, v in strip_prefix(dict(state_dict)).items() if k not in _HF_TEXT_BUFFERS}
    converters: dict[str, Callable[[StateDict], StateDict]] = {
        "clipforge": dict,
        "openai": lambda sd: _open_clip_to_clipforge(
            {k: v for k, v in sd.items() if k not in _OPENAI_EXTRAS}, config),
        "open_clip": lambda sd: _open_clip_to_clipforge(sd, config),
        "hf": lambda sd: _hf_to_clipforge(sd, config),
    }
    return converters[detect_layout(state_dict)](state_dict)


def resize_state_dict_pos_embed(state_dict: StateDict, config: ClipConfig) -> StateDict:
    """Resample image positional embeddings (clipforge keys) to ``config``'s grid; bicubic, prefix token kept."""
    out = dict(state_dict)
    grid = config.vision.grid_size
    if config.vision.kind == "vit" and "visual.pos_embed" in out:
        prefix = 1 if config.vision.class_token else 0
        out["visual.pos_embed"] = resize_pos_embed(out["visual.pos_embed"], (grid, grid), prefix)
    if config.vision.kind == "resnet" and "visual.attn_pool.pos_embed" in out:
        out["visual.attn_pool.pos_embed"] = resize_pos_embed(out["visual.attn_pool.pos_embed"], (grid, grid), 1)
    return out


# ---------------------------------------------------------------- clipforge -> open_clip
def _to_open_clip_visual(name: str, tensor: torch.Tensor, config: ClipConfig) -> dict[str, torch.Tensor]:
    timm = config.open_clip_timm_model is not None
    block = _BLOCK_RE.match(name)
    if block:
        prefix = "trunk.blocks." if timm else "transformer.resblocks."
        rest = block.group(3) if timm else _rename(block.group(3), _OC_BLOCK, reverse=True)
        return {f"{prefix}{block.group(2)}.{rest}": tensor}
    if config.vision.kind == "resnet":
        if name.startswith("attn_pool.kv."):
            part = name.rsplit(".", 1)[1]
            k, v = tensor.chunk(2, dim=0)
            return {f"attnpool.k_proj.{part}": k, f"attnpool.v_proj.{part}": v}
        renamed = _rename(name, _OC_RESNET, reverse=True)
        if renamed is not None:
            return {renamed: tensor}
        return {name.replace("downsample.conv.", "downsample.0.").replace("downsample.bn.", "downsample.1."): tensor}
    if timm:
        renamed = _rename(name, _TIMM_VIT, reverse=True)
        if name in ("pos_embed", "attn_pool.latent"):
            tensor = tensor.unsqueeze(0)  # (N, D) -> (1, N, D)
        elif name == "cls_token":
            tensor = tensor.view(1, 1, -1)
        return {renamed: tensor}
    renamed = _rename(name, _OC_VIT, reverse=True)
    if renamed is None:
        raise ConversionError(f"visual.{name} has no counterpart in open_clip's own VisionTransformer (this tower "
                              "exists in open_clip only as a timm model: set open_clip_timm_model in the config)")
    return {renamed: tensor.t() if name == "proj.weight" else tensor}


def to_open_clip_state_dict(state_dict: Mapping[str, torch.Tensor], config: ClipConfig) -> StateDict:
    """clipforge keys -> the open_clip layout of ``config.open_clip_class`` (what ``open_clip.create_model`` loads)."""
    if config.vision.pool == "map" and config.open_clip_timm_model is None:
        raise ConversionError("a latent-attention-pooled (SigLIP) vision tower only exists in open_clip as a timm "
                              "trunk; set open_clip_timm_model to the timm model name to write this layout")
    text_prefix = "text." if config.open_clip_class in ("CustomTextCLIP", "CoCa") else ""
    linear_text_proj = config.text.proj_bias  # open_clip uses nn.Linear only when the projection has a bias
    out: StateDict = _to_open_clip_pool(state_dict, config)
    for key, tensor in state_dict.items():
        if key in ("logit_scale", "logit_bias"):
            out[key] = tensor
        elif key.startswith(("visual.attn_pool.q.", "visual.attn_pool.kv.")) and config.vision.pool == "coca":
            continue  # written by _to_open_clip_pool
        elif key.startswith("decoder."):
            out[_to_open_clip_decoder_key(key)] = tensor.t() if key == "decoder.proj.weight" else tensor
        elif key.startswith("visual.") and config.vision.kind == "timm":
            out[key] = tensor  # open_clip's TimmModel keys
        elif key.startswith("visual."):
            for name, value in _to_open_clip_visual(key[len("visual."):], tensor, config).items():
                out["visual." + name] = value
        elif key.startswith("text.") and config.text.kind == "hf":
            out[key] = tensor  # open_clip's HFTextEncoder keys (always under text.: a CustomTextCLIP)
        elif key.startswith("text."):
            name = key[len("text."):]
            block = _BLOCK_RE.match(name)
            if block:
                new = f"transformer.resblocks.{block.group(2)}.{_rename(block.group(3), _OC_BLOCK, reverse=True)}"
            elif name == "proj.weight" and not linear_text_proj:
                new, tensor = "text_projection", tensor.t()
            else:
                new = _rename(name, _OC_TEXT, reverse=True)
            out[text_prefix + new] = tensor
        else:
            raise ConversionError(f"'{key}' is not a clipforge CLIP key")
    return out


def _to_open_clip_decoder_key(key: str) -> str:
    if key == "decoder.proj.weight":
        return "text_decoder.text_projection"
    if key.startswith("decoder.norm."):
        return "text_decoder.ln_final." + key[len("decoder.norm."):]
    match = _CF_DECODER_RE.match(key)
    if match is None:
        raise ConversionError(f"'{key}' is not a clipforge CoCa decoder key")
    kind, index, rest = match.groups()
    table = _OC_BLOCK if kind == "self_blocks" else _OC_CROSS_BLOCK
    blocks = "resblocks" if kind == "self_blocks" else "cross_attn"
    return f"text_decoder.{blocks}.{index}.{_rename(rest, table, reverse=True)}"


def _to_open_clip_pool(state_dict: Mapping[str, torch.Tensor], config: ClipConfig) -> StateDict:
    """CoCa pooler q / kv -> ``nn.MultiheadAttention``'s packed or separate projections (see _coca_pool_tensors)."""
    if config.vision.pool != "coca" or "visual.attn_pool.q.weight" not in state_dict:
        return {}
    q, kv = state_dict["visual.attn_pool.q.weight"], state_dict["visual.attn_pool.kv.weight"]
    out = {_OC_POOL_ATTN + "in_proj_bias": torch.cat([state_dict["visual.attn_pool.q.bias"],
                                                      state_dict["visual.attn_pool.kv.bias"]])}
    if config.vision.width == config.embed_dim:
        out[_OC_POOL_ATTN + "in_proj_weight"] = torch.cat([q, kv])
    else:
        k, v = kv.chunk(2, dim=0)
        out.update({_OC_POOL_ATTN + "q_proj_weight": q, _OC_POOL_ATTN + "k_proj_weight": k,
                    _OC_POOL_ATTN + "v_proj_weight": v})
    return out
