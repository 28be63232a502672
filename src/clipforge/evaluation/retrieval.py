"""Zero-shot image<->text retrieval with several captions per image: recall@k both ways.

``image_retrieval_recall@k``: for each caption, is its image among the k best images?
``text_retrieval_recall@k``: for each image, is at least one of its captions among the k best captions?
These are clip_benchmark's names and definitions (the CLIP paper's recall@k).
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch

from clipforge.evaluation.features import EncodedImages, EncodeFn, Progress, encode_images, encode_texts
from clipforge.evaluation.metrics import negatives_ahead


def recall_at_k(image_features: torch.Tensor, text_features: torch.Tensor, text_image_index: torch.Tensor,
                ks: Sequence[int] = (1, 5, 10), chunk: int = 1024) -> dict[str, float]:
    """Recall@k from (I, D) image and (T, D) text features; ``text_image_index[t]`` is the image of caption t."""
    num_images, num_texts = len(image_features), len(text_features)
    if num_images == 0 or num_texts == 0:
        raise ValueError("retrieval needs at least one image and one caption")
    index = text_image_index.long()
    ahead_for_text = []
    for start in range(0, num_texts, chunk):
        scores = text_features[start:start + chunk] @ image_features.t()  # (t, I)
        positives = torch.zeros_like(scores, dtype=torch.bool)
        positives[torch.arange(len(scores)), index[start:start + chunk]] = True
        ahead_for_text.append(negatives_ahead(scores, positives))
    ahead_for_image = []
    for start in range(0, num_images, chunk):
        scores = image_features[start:start + chunk] @ text_features.t()  # (i, T)
        rows = torch.arange(start, start + len(scores)).view(-1, 1)
        ahead_for_image.append(negatives_ahead(scores, index.view(1, -1) == rows))
    text_rank, image_rank = torch.cat(ahead_for_text), torch.cat(ahead_for_image)
    metrics = {}
    for k in ks:
        metrics[f"image_retrieval_recall@{k}"] = (text_rank < k).float().mean().item()
        metrics[f"text_retrieval_recall@{k}"] = (image_rank < k).float().mean().item()
    return metrics


def retrieve(encoded: EncodedImages, encode_text: EncodeFn, tokenize: Callable[[list[str]], torch.Tensor],
             ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Metrics for pre-encoded images whose targets are caption lists."""
    captions = encoded.targets
    if not isinstance(captions, list):
        raise ValueError("retrieval needs a list of captions per image as targets, got class labels")
    texts = [text for per_image in captions for text in per_image]
    index = torch.tensor([i for i, per_image in enumerate(captions) for _ in per_image], dtype=torch.long)
    text_features = encode_texts(encode_text, tokenize, texts)
    metrics = recall_at_k(encoded.features, text_features, index, ks)
    return {**metrics, "num_samples": len(encoded.features), "num_texts": len(texts), "num_skipped": encoded.skipped}


def zero_shot_retrieval(encode_image: EncodeFn, encode_text: EncodeFn,
                        tokenize: Callable[[list[str]], torch.Tensor], dataloader: Iterable,
                        ks: Sequence[int] = (1, 5, 10), progress: Progress | None = None) -> dict[str, float]:
    """Retrieval over a loader of ``(images, captions_per_image[, skipped])`` batches."""
    return retrieve(encode_images(encode_image, dataloader, progress), encode_text, tokenize, ks)
