"""Ranking metrics on score matrices, defined as clip_benchmark defines them.

Ties (equal scores, e.g. duplicate captions, which COCO has, or template-made captions) are decided by a rule:

- ``"reference"`` (the default): the top k are chosen by ``torch.topk``, as clip_benchmark does, so the numbers are
  comparable with published tables (which are clip_benchmark output) on any data, duplicates included;
  ``mean_per_class_recall`` uses the argmax prediction, as clip_benchmark's ``balanced_accuracy_score`` call does;
- ``"pessimistic"``: a positive counts within the top k only if fewer than k negatives score at least as high as
  the best positive. Tied negatives always win, so a collapsed model (all embeddings equal) scores 0 instead of
  whatever the index order gives; on data with duplicate captions it is lower than the reference rule.

Without ties the two rules give identical numbers.
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch

TieRule = Literal["reference", "pessimistic"]
TIE_RULES = ("reference", "pessimistic")


def check_tie_rule(ties: str) -> None:
    if ties not in TIE_RULES:
        raise ValueError(f"unknown tie rule '{ties}': choose 'reference' (clip_benchmark's top-k, the default) or "
                         "'pessimistic' (tied negatives rank first)")


def _check_finite(scores: torch.Tensor) -> None:
    if not torch.isfinite(scores).all():
        raise ValueError("the scores contain NaN or inf: the model produced non-finite features "
                         "(try precision fp32, or check the weights)")


def negatives_ahead(scores: torch.Tensor, positives: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """For each row, how many negatives score >= its best positive. (N, M) scores, (N, M) bool -> (N,) long.

    Rows without any positive get M (never a hit). Rows are processed ``chunk`` at a time to bound memory.
    """
    _check_finite(scores)
    out = []
    for start in range(0, scores.shape[0], chunk):
        s = scores[start:start + chunk].float()
        p = positives[start:start + chunk].to(s.device, torch.bool)
        best = s.masked_fill(~p, float("-inf")).amax(dim=1, keepdim=True)  # (n, 1)
        ahead = ((s >= best) & ~p).sum(dim=1)
        ahead[~p.any(dim=1)] = s.shape[1]
        out.append(ahead.cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def hits_at_k(scores: torch.Tensor, positives: torch.Tensor, ks: Sequence[int], ties: TieRule = "reference",
              chunk: int = 1024) -> dict[int, torch.Tensor]:
    """For each k, (N,) bool: does row n have a positive among its top k? (N, M) scores, (N, M) bool positives."""
    check_tie_rule(ties)
    _check_finite(scores)
    if ties == "pessimistic":
        ahead = negatives_ahead(scores, positives, chunk)
        return {k: ahead < k for k in ks}
    out: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for start in range(0, scores.shape[0], chunk):
        s = scores[start:start + chunk].float()
        p = positives[start:start + chunk].to(s.device, torch.bool)
        for k in ks:  # one topk call per k, as clip_benchmark: topk(10)[:5] may break ties unlike topk(5)
            index = s.topk(min(k, s.shape[1]), dim=1).indices  # (n, k)
            out[k].append(p.gather(1, index).any(dim=1).cpu())
    return {k: torch.cat(v) if v else torch.zeros(0, dtype=torch.bool) for k, v in out.items()}


def target_rank(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N, C) logits, (N,) class ids -> (N,) number of other classes scoring >= the true class."""
    _check_finite(logits)
    true = logits.float().gather(1, targets.long().view(-1, 1))  # (N, 1)
    return (logits.float() >= true).sum(dim=1) - 1


def accuracy(logits: torch.Tensor, targets: torch.Tensor, topk: tuple[int, ...] = (1,),
             ties: TieRule = "reference") -> list[float]:
    """Fraction of samples whose true class is within the top k, for each k."""
    check_tie_rule(ties)
    if ties == "pessimistic":
        rank = target_rank(logits, targets)
        return [(rank < k).float().mean().item() for k in topk]
    _check_finite(logits)
    # clip_benchmark calls topk once with the largest k and slices it: the same here
    pred = logits.float().topk(min(max(topk), logits.shape[1]), dim=1).indices  # (N, k)
    correct = pred == targets.long().view(-1, 1)
    return [correct[:, :k].any(dim=1).float().mean().item() for k in topk]


def mean_per_class_recall(logits: torch.Tensor, targets: torch.Tensor, ties: TieRule = "reference") -> float:
    """Top-1 recall averaged over the classes present in ``targets`` (sklearn's balanced accuracy)."""
    check_tie_rule(ties)
    if ties == "pessimistic":
        correct = (target_rank(logits, targets) == 0).double()
    else:
        _check_finite(logits)
        correct = (logits.float().argmax(dim=1) == targets.long()).double()
    labels = targets.long()
    hits = torch.bincount(labels, weights=correct, minlength=logits.shape[1])
    counts = torch.bincount(labels, minlength=logits.shape[1])
    present = counts > 0
    return (hits[present] / counts[present]).mean().item()


def average_precision_per_class(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N, C) scores, (N, C) multi-hot targets -> (C,) average precision; a class with no positive gets 0."""
    _check_finite(scores)
    order = scores.float().argsort(dim=0, descending=True)  # (N, C) row order per class
    truth = targets.float().gather(0, order)
    hits = truth.cumsum(dim=0)
    precision = hits / torch.arange(1, scores.shape[0] + 1, dtype=torch.float32).view(-1, 1)
    return (precision * truth).sum(dim=0) / truth.sum(dim=0).clamp(min=1)


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor, num_classes: int,
                           ties: TieRule = "reference") -> dict[str, float]:
    """acc1, acc5 (NaN below 5 classes), mean_per_class_recall; mean_average_precision for multi-hot targets."""
    if logits.shape[1] != num_classes:
        raise ValueError(f"logits have {logits.shape[1]} classes but the dataset names {num_classes}")
    if targets.ndim == 2:
        return {"mean_average_precision": average_precision_per_class(logits, targets).mean().item()}
    if targets.numel() and (targets.min() < 0 or targets.max() >= num_classes):
        raise ValueError(f"labels range over [{int(targets.min())}, {int(targets.max())}] but there are only "
                         f"{num_classes} class names: the classnames file does not match the labels")
    if num_classes >= 5:
        acc1, acc5 = accuracy(logits, targets, (1, 5), ties)
    else:
        (acc1,), acc5 = accuracy(logits, targets, (1,), ties), float("nan")
    return {"acc1": acc1, "acc5": acc5, "mean_per_class_recall": mean_per_class_recall(logits, targets, ties)}
