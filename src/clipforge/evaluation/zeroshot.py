"""Zero-shot classification: a classifier made of averaged prompt embeddings, scored against image features."""
from __future__ import annotations

from typing import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F

from clipforge.evaluation.features import TEXT_BATCH, EncodedImages, EncodeFn, Progress, encode_images, encode_texts
from clipforge.evaluation.metrics import TieRule, classification_metrics

Templates = Sequence[str] | Mapping[str, Sequence[str]]


def _prompts(classnames: Sequence[str], templates: Templates) -> list[list[str]]:
    """One list of prompts per class: ``{c}`` filled in, or per-class prompt lists (CuPL-style dict)."""
    if isinstance(templates, Mapping):
        missing = [c for c in classnames if c not in templates]
        if missing:
            raise ValueError(f"the per-class prompt dict has no prompts for {missing[:5]}")
        return [list(templates[c]) for c in classnames]
    if not templates:
        raise ValueError("no prompt templates given: pass at least one, e.g. 'a photo of a {c}.'")
    # '{}' is the OpenAI notebook's placeholder; accept it too
    return [[t.replace("{}", "{c}").format(c=c) for t in templates] for c in classnames]


@torch.no_grad()
def build_classifier(encode_text: EncodeFn, tokenize: Callable[[list[str]], torch.Tensor],
                     classnames: Sequence[str], templates: Templates, batch_size: int = TEXT_BATCH) -> torch.Tensor:
    """(D, C) zero-shot weights: per class, the mean of normalised prompt embeddings, normalised again."""
    if not classnames:
        raise ValueError("no class names given")
    prompts = _prompts(classnames, templates)
    flat = [p for per_class in prompts for p in per_class]
    features = encode_texts(encode_text, tokenize, flat, batch_size)  # (sum prompts, D)
    sizes = [len(p) for p in prompts]
    means = torch.stack([chunk.mean(dim=0) for chunk in features.split(sizes)])  # (C, D)
    return F.normalize(means, dim=-1).t().contiguous()


def classify(encoded: EncodedImages, classifier: torch.Tensor, classnames: Sequence[str],
             ties: TieRule = "reference") -> dict[str, float]:
    """Metrics of pre-encoded images against a (D, C) classifier, with the skipped-sample count."""
    if classifier.shape[1] != len(classnames):
        raise ValueError(f"classifier has {classifier.shape[1]} columns for {len(classnames)} class names")
    logits = encoded.features @ classifier.to(encoded.features.dtype)
    metrics = classification_metrics(logits, encoded.targets, len(classnames), ties)
    return {**metrics, "num_samples": len(encoded.features), "num_skipped": encoded.skipped}


def zero_shot_classification(encode_image: EncodeFn, encode_text: EncodeFn,
                             tokenize: Callable[[list[str]], torch.Tensor], dataloader: Iterable,
                             classnames: Sequence[str], templates: Templates,
                             progress: Progress | None = None, ties: TieRule = "reference") -> dict[str, float]:
    """Zero-shot classify every image of ``dataloader``.

    Returns ``acc1``, ``acc5``, ``mean_per_class_recall`` (or ``mean_average_precision`` when targets are
    multi-hot (B, C)), plus ``num_samples`` and ``num_skipped`` (samples that failed to decode).
    """
    classifier = build_classifier(encode_text, tokenize, classnames, templates)
    return classify(encode_images(encode_image, dataloader, progress), classifier, classnames, ties)
