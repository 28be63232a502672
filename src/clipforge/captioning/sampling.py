"""Token-by-token decoding of a batch: greedy (the most likely token) or sampling (top-k / top-p).

Every row starts with the start token and ends at its first end token (end-of-text, or the padding id, which
open_clip's decoder also treats as the end); finished rows stop being decoded. The next token's logits come from
``model.next_token_logits(image_tokens, tokens)`` (a CoCa), recomputed over the whole prefix at each step.
"""
from __future__ import annotations

import torch

from clipforge.captioning.config import GenerationConfig
from clipforge.captioning.logits import ban, keep_top_k, keep_top_p, penalize_repeats


def choose(logits: torch.Tensor, config: GenerationConfig, generator: torch.Generator | None) -> torch.Tensor:
    """The next token (N,) from processed logits (N, V)."""
    if config.method == "greedy":
        return logits.argmax(dim=-1)
    logits = logits / config.temperature
    logits = keep_top_k(logits, config.top_k) if config.method == "top_k" else keep_top_p(logits, config.top_p)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)[:, 0]


def next_logits(model, image_tokens: torch.Tensor, tokens: torch.Tensor, config: GenerationConfig,
                end_ids: tuple[int, ...]) -> torch.Tensor:
    """Float32 next-token logits (N, V) with the minimum length and the repetition penalty applied."""
    logits = model.next_token_logits(image_tokens, tokens).float()
    if tokens.shape[1] < config.min_length:
        ban(logits, end_ids)
    return penalize_repeats(logits, tokens, config.repetition_penalty)


def decode_stepwise(model, image_tokens: torch.Tensor, config: GenerationConfig, start_id: int,
                    end_ids: tuple[int, ...]) -> list[list[int]]:
    """Greedy or sampled token ids of each image, without the start and end tokens."""
    batch = image_tokens.shape[0]
    generator = torch.Generator(image_tokens.device).manual_seed(config.seed) if config.seed is not None else None
    tokens = torch.full((batch, 1), start_id, dtype=torch.long, device=image_tokens.device)
    active = torch.ones(batch, dtype=torch.bool, device=tokens.device)
    end = torch.tensor(end_ids, device=tokens.device)
    while tokens.shape[1] < config.max_length and active.any():
        column = torch.full((batch,), end_ids[-1], dtype=torch.long, device=tokens.device)
        if tokens.shape[1] + 1 == config.max_length:  # the last position: the caption must end here
            chosen = torch.full((int(active.sum()),), end_ids[0], dtype=torch.long, device=tokens.device)
        else:
            chosen = choose(next_logits(model, image_tokens[active], tokens[active], config, end_ids), config,
                            generator)
        column[active] = chosen
        tokens = torch.cat([tokens, column[:, None]], dim=1)
        active &= ~torch.isin(column, end)
    return [strip(row, start_id, end_ids) for row in tokens.tolist()]


def strip(row: list[int], start_id: int, end_ids: tuple[int, ...]) -> list[int]:
    """Ids between the start token and the first end token."""
    row = row[1:] if row and row[0] == start_id else row
    for position, token in enumerate(row):
        if token in end_ids:
            return row[:position]
    return row
