"""CoCa (Contrastive Captioners, https://arxiv.org/abs/2205.01917) as open_clip builds it.

A CLIP whose towers also return token states, plus a caption decoder:

- image tower: a ViT whose ``QueryPool`` (vision.pool='coca') turns all tokens into ``pool_queries`` vectors after
  a LayerNorm; the first, projected, is the image feature, the others are the image tokens the decoder reads;
- text tower: the CLIP text transformer with a learned token appended after the text; its output is the text
  feature, the states of the text positions (no final norm) feed the decoder. Or a Hugging Face encoder
  (text.kind='hf', ``HFTextTower``: open_clip's coca_roberta-ViT-B-32): pooled and projected for the feature, its
  last hidden states at every position for the decoder;
- decoder: per layer a causal self-attention block and a cross-attention block over the image tokens, a final norm
  and a linear map to the vocabulary: the logits of the next token at every text position.

``encode_image`` / ``encode_text`` / ``forward`` keep the contract of ``CLIP``; ``caption_logits`` and
``next_token_logits`` add the captioning side (``clipforge.captioning`` decodes with them).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from clipforge.config import ConfigError
from clipforge.layers.attention import causal_mask
from clipforge.layers.cross_attention import CrossAttentionBlock
from clipforge.layers.norm import LayerNorm
from clipforge.layers.query_pool import QueryPool
from clipforge.layers.transformer import Block
from clipforge.models.clip import CLIP, ModelInfo, build_text_tower
from clipforge.models.config import ClipConfig, DecoderConfig, TextConfig, VisionConfig
from clipforge.models.text import TextTransformer
from clipforge.models.vit import VisionTransformer


class CocaVisionTransformer(VisionTransformer):
    """images -> features (B, embed_dim); ``forward_tokens`` also returns the image tokens for the decoder."""

    def __init__(self, config: VisionConfig, embed_dim: int):
        super().__init__(config, embed_dim)
        if config.pool == "coca":  # the query pool maps width -> embed_dim, the norm and projection follow it
            self.attn_pool = QueryPool(embed_dim, config.width, config.pool_heads, config.pool_queries,
                                       config.norm_eps)
            self.norm = LayerNorm(embed_dim, eps=config.norm_eps)
            self.proj = nn.Linear(embed_dim, embed_dim, bias=False)
            nn.init.normal_(self.proj.weight, std=config.width ** -0.5)

    def forward_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (B, embed_dim), image tokens (B, N, D)): N = pool_queries - 1 (pool='coca') or the patches."""
        x = self.transformer(self.embed(images))
        if self.attn_pool is not None:
            x = self.attn_pool(x)  # (B, Q, embed_dim)
        x = self.norm(x)
        pooled, tokens = x[:, 0], x[:, 1:]
        return (self.proj(pooled) if self.proj is not None else pooled), tokens

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.config.pool != "coca":
            return super().forward(images)
        return self.forward_tokens(images)[0]

    def param_groups(self):
        """As ``VisionTransformer``'s, except that the final norm follows the query pool: [pool, norm, proj] is
        the last group (what LiT's unlocked_groups=1 and layer-wise lr decay treat as the head)."""
        if self.config.pool != "coca":
            return super().param_groups()
        embed = [m for m in (self.patch_embed, self.cls_token, self.pos_embed, self.norm_pre) if m is not None]
        return [embed, *[[b] for b in self.transformer.blocks], [self.attn_pool, self.norm, self.proj]]


def legacy_pad_mask(tokens: torch.Tensor, pad_id: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive (B, 1, L+1, L+1) mask for text + appended token: causal, and key j>0 masked where token j-1 is
    ``pad_id``. The shift by one is how open_clip masks its published CoCa weights (they were trained with it)."""
    batch, length = tokens.shape
    valid = torch.cat([torch.ones(batch, 1, dtype=torch.bool, device=tokens.device), tokens != pad_id], dim=1)
    mask = causal_mask(length + 1, tokens.device, dtype).expand(batch, 1, -1, -1)  # (B, 1, L+1, L+1)
    return mask.masked_fill(~valid[:, None, None, :], float("-inf"))


class CocaTextTransformer(TextTransformer):
    """tokens (B, L) -> features (B, embed_dim); ``forward_tokens`` also returns the states of the L positions."""

    def __init__(self, config: TextConfig, embed_dim: int):
        super().__init__(config, embed_dim)
        self.cls_token = nn.Parameter(torch.empty(config.width))
        self.pos_embed = nn.Parameter(torch.empty(config.context_length + 1, config.width))
        nn.init.normal_(self.cls_token, std=0.01)
        nn.init.normal_(self.pos_embed, std=0.01)

    def forward_tokens(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_input(tokens)
        x = self.token_embedding(tokens)  # (B, L, D)
        x = torch.cat([x, self.cls_token.to(x.dtype).expand(x.shape[0], 1, -1)], dim=1)  # (B, L+1, D)
        x = x + self.pos_embed[:x.shape[1]].to(x.dtype)
        x = self.transformer(x, attn_mask=legacy_pad_mask(tokens, self.config.pad_id, x.dtype))
        return self.project(self.norm(x[:, -1])), x[:, :-1]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(tokens)[0]

    def param_groups(self) -> list[list[nn.Module | nn.Parameter]]:
        groups = super().param_groups()
        groups[0].append(self.cls_token)
        return groups


class CaptionDecoder(nn.Module):
    """(image tokens (B, N, D), text states (B, L, D)) -> next-token logits (B, L, vocab_size)."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        args = (config.width, config.num_heads, config.mlp_ratio, config.act, config.norm_eps, config.layer_scale_init)
        self.self_blocks = nn.ModuleList(Block(*args) for _ in range(config.depth))
        self.cross_blocks = nn.ModuleList(CrossAttentionBlock(*args) for _ in range(config.depth))
        self.norm = LayerNorm(config.width, eps=config.norm_eps)
        self.proj = nn.Linear(config.width, config.vocab_size, bias=False)
        self.grad_checkpointing = False
        self._init_weights()

    def _init_weights(self) -> None:
        width, depth = self.config.width, self.config.depth
        for block in [*self.self_blocks, *self.cross_blocks]:
            nn.init.normal_(block.attn.qkv.weight, std=width ** -0.5)
            nn.init.normal_(block.attn.proj.weight, std=width ** -0.5 * (2 * depth) ** -0.5)
            nn.init.normal_(block.mlp.fc1.weight, std=(2 * width) ** -0.5)
            nn.init.normal_(block.mlp.fc2.weight, std=width ** -0.5 * (2 * depth) ** -0.5)
        nn.init.normal_(self.proj.weight, std=width ** -0.5)

    def forward(self, image_tokens: torch.Tensor, text_states: torch.Tensor) -> torch.Tensor:
        if text_states.shape[1] > self.config.context_length:
            raise ValueError(f"the caption decoder reads at most {self.config.context_length} tokens, got "
                             f"{text_states.shape[1]}; generate shorter captions (max_length)")
        checkpointing = self.grad_checkpointing and torch.is_grad_enabled()
        x = text_states
        for self_block, cross_block in zip(self.self_blocks, self.cross_blocks):
            if checkpointing:
                x = checkpoint(self_block, x, None, True, use_reentrant=False)
                x = checkpoint(cross_block, x, image_tokens, use_reentrant=False)
            else:
                x = cross_block(self_block(x, is_causal=True), image_tokens)
        return self.proj(self.norm(x))


class CoCa(CLIP):
    """A CLIP with a caption decoder (``config.decoder``). Same feature contract as ``CLIP``, plus caption logits."""

    def __init__(self, config: ClipConfig, info: ModelInfo | None = None):
        if config.decoder is None:
            raise ValueError("CoCa needs config.decoder; build a two-tower model with clipforge.models.clip.CLIP")
        super().__init__(config, info)
        if config.text.kind == "hf" and self.text.width != config.decoder.width:
            raise ConfigError(f"decoder.width {config.decoder.width} must equal the width of the text tower's token "
                              f"states: {self.text.width}, the hidden size in the transformers config of "
                              f"'{config.text.hf.model_name}'")
        self.decoder = CaptionDecoder(config.decoder)

    def build_towers(self, config: ClipConfig) -> tuple[nn.Module, nn.Module]:
        text = (build_text_tower(config) if config.text.kind == "hf"  # HFTextTower: forward_tokens as below
                else CocaTextTransformer(config.text, config.embed_dim))
        return CocaVisionTransformer(config.vision, config.embed_dim), text

    def encode_image_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image features (B, embed_dim), not normalised; image tokens (B, N, decoder width))."""
        return self.visual.forward_tokens(images)

    def next_token_logits(self, image_tokens: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (B, vocab_size) of the token after ``tokens`` (B, L), given ``encode_image_tokens``' tokens."""
        _, states = self.text.forward_tokens(tokens)
        return self.decoder(image_tokens, states)[:, -1]

    def caption_logits(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (B, L, vocab_size): position t predicts token t+1 of ``tokens`` (B, L). A Hugging Face
        text tower is bidirectional: as in open_clip, each position's state has read all of ``tokens``."""
        _, image_tokens = self.visual.forward_tokens(images)
        _, states = self.text.forward_tokens(tokens)
        return self.decoder(image_tokens, states)

    def forward(self, images: torch.Tensor | None = None, tokens: torch.Tensor | None = None,
                output_dict: bool = False, with_captions: bool = False):
        """As ``CLIP.forward``; ``with_captions`` (with both inputs and ``output_dict``) adds ``caption_logits``
        (B, L-1, V) for ``tokens[:, :-1]`` and ``caption_labels`` = ``tokens[:, 1:]``, from the same tower passes."""
        if not with_captions:
            return super().forward(images, tokens, output_dict)
        if images is None or tokens is None or not output_dict:
            raise ValueError("with_captions=True needs both images and tokens, and output_dict=True")
        image_features, image_tokens = self.visual.forward_tokens(images)
        text_features, states = self.text.forward_tokens(tokens)
        out = {"image_features": F.normalize(image_features, dim=-1),
               "text_features": F.normalize(text_features, dim=-1), "logit_scale": self.logit_scale.exp(),
               "caption_logits": self.decoder(image_tokens, states[:, :-1]), "caption_labels": tokens[:, 1:]}
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias
        return out

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        super().set_grad_checkpointing(enable)
        self.decoder.grad_checkpointing = enable


def build_model(config: ClipConfig, info: ModelInfo | None = None) -> CLIP:
    """The model class a config asks for: ``CoCa`` when it has a caption decoder, ``CLIP`` otherwise."""
    return CoCa(config, info) if config.decoder is not None else CLIP(config, info)
