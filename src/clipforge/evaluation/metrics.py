"""Ranking metrics on score matrices, defined as clip_benchmark defines them.

Ties: a positive counts as found within the top k only if fewer than k negatives score at least as high as the
best positive. Without ties this is exactly clip_benchmark's top-k definition; with ties (for example a collapsed
model whose embeddings are all equal) it gives no credit instead of depending on the sort order of the indices.
"""
from __future__ import annotations

import torch


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


def target_rank(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N, C) logits, (N,) class ids -> (N,) number of other classes scoring >= the true class."""
    _check_finite(logits)
    true = logits.float().gather(1, targets.long().view(-1, 1))  # (N, 1)
    return (logits.float() >= true).sum(dim=1) - 1


def accuracy(logits: torch.Tensor, targets: torch.Tensor, topk: tuple[int, ...] = (1,)) -> list[float]:
    """Fraction of samples whose true class is within the top k, for each k."""
    rank = target_rank(logits, targets)
    return [(rank < k).float().mean().item() for k in topk]


def mean_per_class_recall(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Top-1 recall averaged over the classes present in ``targets`` (sklearn's balanced accuracy)."""
    correct = (target_rank(logits, targets) == 0).double()
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


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor, num_classes: int) -> dict[str, float]:
    """acc1, acc5 (NaN below 5 classes), mean_per_class_recall; mean_average_precision for multi-hot targets."""
    if logits.shape[1] != num_classes:
        raise ValueError(f"logits have {logits.shape[1]} classes but the dataset names {num_classes}")
    if targets.ndim == 2:
        return {"mean_average_precision": average_precision_per_class(logits, targets).mean().item()}
    if targets.numel() and (targets.min() < 0 or targets.max() >= num_classes):
        raise ValueError(f"labels range over [{int(targets.min())}, {int(targets.max())}] but there are only "
                         f"{num_classes} class names: the classnames file does not match the labels")
    if num_classes >= 5:
        acc1, acc5 = accuracy(logits, targets, (1, 5))
    else:
        (acc1,), acc5 = accuracy(logits, targets, (1,)), float("nan")
    return {"acc1": acc1, "acc5": acc5, "mean_per_class_recall": mean_per_class_recall(logits, targets)}
