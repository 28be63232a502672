"""Text transformer tower: CLIP form (causal mask, end-of-text pooling) and SigLIP form (bidirectional, last token)."""
from __future__ import annotations

import itertools

import torch
from torch import nn

from clipforge.layers.fused import capturing, hooked
from clipforge.layers.length_buckets import MAX_GROUPS, length_buckets
from clipforge.layers.norm import LayerNorm
from clipforge.layers.pool import text_pool_index
from clipforge.layers.transformer import Transformer
from clipforge.models.config import TextConfig


def check_tokens(tokens: torch.Tensor, context_length: int) -> None:
    """Integer ``(B, L)`` tokens with ``L <= context_length``, else a one-line error naming the fix."""
    if tokens.ndim != 2 or tokens.dtype.is_floating_point:
        raise ValueError(f"expected integer tokens of shape (B, L), got {tuple(tokens.shape)} {tokens.dtype}; "
                         f"tokenize text with the model's tokenizer")
    if tokens.shape[1] > context_length:
        raise ValueError(f"token sequences have length {tokens.shape[1]} but this model's context_length is "
                         f"{context_length}; tokenize with context_length={context_length} (longer text is "
                         f"truncated by the tokenizer)")


class TextTransformer(nn.Module):
    """tokens (B, L) with L <= context_length -> features (B, embed_dim)."""

    def __init__(self, config: TextConfig, embed_dim: int):
        super().__init__()
        self.config = config
        width = config.width
        self.token_embedding = nn.Embedding(config.vocab_size, width)
        self.pos_embed = nn.Parameter(torch.empty(config.context_length, width))
        self.transformer = Transformer(width, config.depth, config.num_heads, config.mlp_ratio, config.act,
                                       config.norm_eps, config.layer_scale_init)
        self.norm = LayerNorm(width, eps=config.norm_eps)
        self.proj = nn.Linear(width, embed_dim, bias=config.proj_bias) if config.output_proj else None
        # The positions no pooled token can see are skipped by running the batch in at most this many groups of
        # similar length (``_length_groups``): 1 cuts the whole batch to its longest need (``distribute_model``
        # sets it for FSDP2, where every rank must call each sharded block as often); 0 computes the padding too.
        self.length_groups = MAX_GROUPS
        self._init_weights()

    def _init_weights(self) -> None:
        width, depth = self.config.width, self.config.depth
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.01)
        for block in self.transformer.blocks:
            nn.init.normal_(block.attn.qkv.weight, std=width ** -0.5)
            nn.init.normal_(block.attn.proj.weight, std=width ** -0.5 * (2 * depth) ** -0.5)
            nn.init.normal_(block.mlp.fc1.weight, std=(2 * width) ** -0.5)
            nn.init.normal_(block.mlp.fc2.weight, std=width ** -0.5 * (2 * depth) ** -0.5)
        if self.proj is not None:
            nn.init.normal_(self.proj.weight, std=width ** -0.5)
            if self.proj.bias is not None:
                nn.init.zeros_(self.proj.bias)

    def _check_input(self, tokens: torch.Tensor) -> None:
        check_tokens(tokens, self.config.context_length)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        self._check_input(tokens)
        index = text_pool_index(tokens, self.config.pool, self.config.eos_id)  # (B,)
        groups = self._length_groups(index, tokens.shape[1])
        if groups is None:
            pooled = self._pooled(tokens, index)
        elif len(groups) == 1:  # the whole batch, cut to its longest need
            pooled = self._pooled(tokens[:, :groups[0][1]], index)
        else:
            members = [torch.tensor(rows, device=tokens.device) for rows, _ in groups]
            pooled = torch.cat([self._pooled(tokens[rows, :length], index[rows])
                                for rows, (_, length) in zip(members, groups)])
            pooled = pooled[torch.argsort(torch.cat(members))]  # back to batch order
        return self.project(self.norm(pooled))

    def _pooled(self, tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """(B, L) tokens -> (B, width) states of the pooled positions ``index``, before the final norm."""
        x = self.token_embedding(tokens)
        x = x + self.pos_embed[:tokens.shape[1]].to(x.dtype)
        return self.transformer(x, is_causal=self.config.causal_mask, output_index=index)

    def _length_groups(self, index: torch.Tensor, length: int) -> list[tuple[list[int], int]] | None:
        """Samples grouped by how many positions they need (``layers/length_buckets.py``), or None to run the
        batch as it is.

        With a causal mask no position sees a later one, so a sequence pooled at ``index`` gives the same result
        from its first ``index + 1`` positions alone: the positions after its end-of-text token are never
        computed. Only where that costs nothing else: on the CPU (reading the lengths from an accelerator waits for
        it, and a training step's two passes under gradient caching must take the same shapes), outside tracing,
        compiling and export (their shapes stay fixed), and without forward hooks inside the tower (they would see
        the groups instead of the batch; FSDP2's hooks on the blocks turn it off there). Dropout inside the tower
        (LoRA's) draws its masks over the groups' shapes: the same distribution, not the padded batch's masks.
        """
        if not (self.length_groups and self.config.causal_mask and self.config.pool != "last"):
            return None
        if index.device.type != "cpu" or capturing() or hooked(*itertools.islice(self.modules(), 1, None)):
            return None
        groups = length_buckets((index + 1).tolist(), max_groups=self.length_groups)
        return None if not groups or (len(groups) == 1 and groups[0][1] == length) else groups  # []: no sample

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """The output projection (B, width) -> (B, embed_dim); the identity without one (text.output_proj=false)."""
        return self.proj(pooled) if self.proj is not None else pooled

    def param_groups(self) -> list[list[nn.Module | nn.Parameter]]:
        """Embeddings, each block but the last, last block + final norm, projection (from input to output)."""
        blocks = list(self.transformer.blocks)
        head = [[self.proj]] if self.proj is not None else []
        return [[self.token_embedding, self.pos_embed], *[[b] for b in blocks[:-1]], [blocks[-1], self.norm], *head]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.transformer.grad_checkpointing = enable
