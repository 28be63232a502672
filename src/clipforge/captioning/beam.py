"""Beam search: keep the ``num_beams`` best partial captions of each image by summed log-probability.

Each step scores every extension of every live beam, takes the 2 * num_beams best per image, and walks them in
order: an extension that ends the caption becomes a finished hypothesis (scored ``sum / length ** length_penalty``),
the others fill the live beams. An image is done when it has ``num_beams`` finished hypotheses and no live beam can
still beat the worst of them; its best finished hypothesis is the caption.
"""
from __future__ import annotations

import dataclasses

import torch

from clipforge.captioning.config import GenerationConfig
from clipforge.captioning.logits import ban
from clipforge.captioning.sampling import next_logits


@dataclasses.dataclass
class _Hypotheses:
    """Finished captions of one image, best first, at most ``size`` of them."""
    size: int
    length_penalty: float
    items: list = dataclasses.field(default_factory=list)  # (score, token ids without start and end)

    def add(self, log_prob: float, ids: list[int]) -> None:
        self.items.append((log_prob / max(len(ids) + 1, 1) ** self.length_penalty, ids))
        self.items.sort(key=lambda item: -item[0])
        del self.items[self.size:]

    def done(self, best_live: float, length: int) -> bool:
        """No live beam (summed log-prob ``best_live`` at ``length`` tokens) can enter the list any more."""
        if len(self.items) < self.size:
            return False
        return best_live / max(length, 1) ** self.length_penalty <= self.items[-1][0]


def _step_scores(model, image_tokens, tokens, scores, config: GenerationConfig, end_ids) -> torch.Tensor:
    """Summed log-probabilities (B, K * V) of every one-token extension of every beam."""
    logits = next_logits(model, image_tokens, tokens, config, end_ids)
    if tokens.shape[1] + 1 == config.max_length:  # last position: only the end token
        logits = ban(logits.clone(), range(logits.shape[1]))
        logits[:, end_ids[0]] = 0.0
    log_probs = logits.log_softmax(dim=-1)  # (B*K, V)
    batch, beams = scores.shape
    return (scores.reshape(-1, 1) + log_probs).reshape(batch, beams * log_probs.shape[1])


def _advance(candidates, indices, tokens, hypotheses, beams, vocab, end_ids, done):
    """Walk each image's best extensions: finished ones to its hypotheses, the rest into the next beams."""
    rows, new_scores = [], []
    for image, (values, flat) in enumerate(zip(candidates.tolist(), indices.tolist())):
        kept = []
        for rank, (value, index) in enumerate(zip(values, flat)):
            beam, token = divmod(index, vocab)
            row = image * beams + beam
            if token in end_ids:  # only the best num_beams extensions may finish (as transformers does)
                if not done[image] and rank < beams and value > float("-inf"):
                    hypotheses[image].add(value, tokens[row, 1:].tolist())
            else:
                kept.append((value, row, token))
            if len(kept) == beams:
                break
        kept += [(float("-inf"), image * beams, end_ids[-1])] * (beams - len(kept))  # nothing left: dead beams
        rows += [(row, token) for _, row, token in kept]
        new_scores.append([value for value, _, _ in kept])
    return rows, new_scores


def beam_search(model, image_tokens: torch.Tensor, config: GenerationConfig, start_id: int,
                end_ids: tuple[int, ...]) -> list[list[int]]:
    """Token ids of the best caption of each image, without the start and end tokens."""
    batch, beams, device = image_tokens.shape[0], config.num_beams, image_tokens.device
    image_tokens = image_tokens.repeat_interleave(beams, dim=0)  # (B*K, N, D)
    tokens = torch.full((batch * beams, 1), start_id, dtype=torch.long, device=device)
    scores = torch.full((batch, beams), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start equal: expand only the first
    hypotheses = [_Hypotheses(beams, config.length_penalty) for _ in range(batch)]
    done = [False] * batch
    while tokens.shape[1] < config.max_length and not all(done):
        flat = _step_scores(model, image_tokens, tokens, scores, config, end_ids)
        vocab = flat.shape[1] // beams
        candidates, indices = flat.topk(2 * beams, dim=1)
        rows, new_scores = _advance(candidates, indices, tokens, hypotheses, beams, vocab, end_ids, done)
        index = torch.tensor([row for row, _ in rows], device=device)
        column = torch.tensor([token for _, token in rows], device=device)
        tokens = torch.cat([tokens[index], column[:, None]], dim=1)
        scores = torch.tensor(new_scores, device=device)
        for image in range(batch):
            done[image] = done[image] or hypotheses[image].done(scores[image].max().item(), tokens.shape[1])
    return [h.items[0][1] if h.items else tokens[i * beams, 1:].tolist() for i, h in enumerate(hypotheses)]
