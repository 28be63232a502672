"""Changes to next-token logits before a token is chosen: banned end tokens, repetition penalty, top-k / top-p."""
from __future__ import annotations

import torch


def ban(logits: torch.Tensor, token_ids) -> torch.Tensor:
    """``logits`` (N, V) with ``token_ids`` set to -inf (in place)."""
    logits[:, list(token_ids)] = float("-inf")
    return logits


def penalize_repeats(logits: torch.Tensor, sequences: torch.Tensor, penalty: float) -> torch.Tensor:
    """Tokens already in each row of ``sequences`` (N, L): positive logits divided by ``penalty``, negative ones
    multiplied (the CTRL paper's rule, as transformers applies it)."""
    if penalty == 1.0:
        return logits
    seen = logits.gather(1, sequences)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return logits.scatter(1, sequences, seen)


def keep_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Every logit below the row's k-th largest set to -inf."""
    k = min(k, logits.shape[-1])
    threshold = logits.topk(k, dim=-1).values[:, -1:]  # (N, 1)
    return logits.masked_fill(logits < threshold, float("-inf"))


def keep_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches ``p`` (at least one token)."""
    ordered, order = logits.sort(dim=-1, descending=True)
    cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
    drop = cumulative - ordered.softmax(dim=-1) >= p  # the mass before this token already reaches p
    drop[:, 0] = False
    return logits.masked_fill(torch.zeros_like(drop).scatter(1, order, drop), float("-inf"))
