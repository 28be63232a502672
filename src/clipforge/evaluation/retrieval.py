"""Zero-shot image<->text retrieval with several captions per image: recall@k both ways.

``image_retrieval_recall@k``: for each caption, is its image among the k best images?
``text_retrieval_recall@k``: for each image, is at least one of its captions among the k best captions?
These are clip_benchmark's names and definitions (the CLIP paper's recall@k); ``ties`` picks the rule for equal
scores (``metrics``: "reference" as clip_benchmark, or "pessimistic").
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch

from clipforge.evaluation.features import EncodedImages, EncodeFn, Progress, encode_images, encode_texts
from clipforge.evaluation.metrics import TieRule, hits_at_k


# Up to this many text x image scores (1 GiB of float32), the whole score matrix is computed at once, as
# clip_benchmark does: exactly tied scores (duplicate captions) are then broken the same way. Beyond it, rows are
# scored chunk by chunk to bound memory (tie-breaking may then differ in the last bit of float noise).
FULL_SCORES_LIMIT = 2**28


def _score_rows(image_features: torch.Tensor, text_features: torch.Tensor, chunk: int):
    """(rows of text->image scores, rows of image->text scores) as two generators of (start, (n, M) scores)."""
    num_images, num_texts = len(image_features), len(text_features)
    if num_images * num_texts <= FULL_SCORES_LIMIT:
        scores = text_features @ image_features.t()  # (T, I)
        by_text = ((s, scores[s:s + chunk]) for s in range(0, num_texts, chunk))
        by_image = ((s, scores.t()[s:s + chunk]) for s in range(0, num_images, chunk))
        return by_text, by_image
    by_text = ((s, text_features[s:s + chunk] @ image_features.t()) for s in range(0, num_texts, chunk))
    by_image = ((s, image_features[s:s + chunk] @ text_features.t()) for s in range(0, num_images, chunk))
    return by_text, by_image


def recall_at_k(image_features: torch.Tensor, text_features: torch.Tensor, text_image_index: torch.Tensor,
                ks: Sequence[int] = (1, 5, 10), chunk: int = 1024, ties: TieRule = "reference") -> dict[str, float]:
    """Recall@k from (I, D) image and (T, D) text features; ``text_image_index[t]`` is the image of caption t."""
    if len(image_features) == 0 or len(text_features) == 0:
        raise ValueError("retrieval needs at least one image and one caption")
    index = text_image_index.long()
    by_text, by_image = _score_rows(image_features, text_features, chunk)
    for_text: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for start, scores in by_text:  # (t, I): is the caption's image among its top k images?
        positives = torch.zeros(scores.shape, dtype=torch.bool)
        positives[torch.arange(len(scores)), index[start:start + chunk]] = True
        for k, hits in hits_at_k(scores, positives, ks, ties).items():
            for_text[k].append(hits)
    for_image: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for start, scores in by_image:  # (i, T): is one of the image's captions among its top k captions?
        rows = torch.arange(start, start + len(scores)).view(-1, 1)
        for k, hits in hits_at_k(scores, index.view(1, -1) == rows, ks, ties).items():
            for_image[k].append(hits)
    metrics = {}
    for k in ks:
        metrics[f"image_retrieval_recall@{k}"] = torch.cat(for_text[k]).float().mean().item()
        metrics[f"text_retrieval_recall@{k}"] = torch.cat(for_image[k]).float().mean().item()
    return metrics


def retrieve(encoded: EncodedImages, encode_text: EncodeFn, tokenize: Callable[[list[str]], torch.Tensor],
             ks: Sequence[int] = (1, 5, 10), ties: TieRule = "reference") -> dict[str, float]:
    """Metrics for pre-encoded images whose targets are caption lists."""
    captions = encoded.targets
    if not isinstance(captions, list):
        raise ValueError("retrieval needs a list of captions per image as targets, got class labels")
    texts = [text for per_image in captions for text in per_image]
    index = torch.tensor([i for i, per_image in enumerate(captions) for _ in per_image], dtype=torch.long)
    text_features = encode_texts(encode_text, tokenize, texts)
    metrics = recall_at_k(encoded.features, text_features, index, ks, ties=ties)
    return {**metrics, "num_samples": len(encoded.features), "num_texts": len(texts), "num_skipped": encoded.skipped}


def zero_shot_retrieval(encode_image: EncodeFn, encode_text: EncodeFn,
                        tokenize: Callable[[list[str]], torch.Tensor], dataloader: Iterable,
                        ks: Sequence[int] = (1, 5, 10), progress: Progress | None = None,
                        ties: TieRule = "reference") -> dict[str, float]:
    """Retrieval over a loader of ``(images, captions_per_image[, skipped])`` batches."""
    return retrieve(encode_images(encode_image, dataloader, progress), encode_text, tokenize, ks, ties)
