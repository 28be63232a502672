"""The trainer's evaluation hook: zero-shot classification and retrieval on a held-out WebDataset split.

It only builds loaders and calls ``clipforge.evaluation``; evaluation never calls back into training.
"""
from __future__ import annotations

from typing import Callable

import torch

from clipforge.evaluation.benchmark import wrap_model
from clipforge.evaluation.retrieval import zero_shot_retrieval
from clipforge.evaluation.zeroshot import zero_shot_classification
from clipforge.training.config import EvalConfig
from clipforge.training.data import create_eval_dataset
from clipforge.transforms import create_eval_transform


def _labels_collate(items):
    images, _, labels = zip(*items)
    return torch.stack(images), torch.tensor(labels)


def _captions_collate(items):
    images, captions, _ = zip(*items)
    return torch.stack(images), [[c] for c in captions]


def heldout_evaluator(cfg: EvalConfig, tokenizer: Callable) -> Callable:
    """``evaluate(model, step) -> {"zeroshot/acc1": ..., "retrieval/...": ...}`` for ``train(..., evaluate=)``."""
    if not cfg.zeroshot_data:
        raise ValueError("eval.zeroshot_data is not set: give WebDataset shards with 'cls' labels, "
                         "e.g. eval.zeroshot_data='data/val-{000000..000000}.tar'")
    if not cfg.classnames:
        raise ValueError("eval.classnames is empty: list the class names in label order")

    @torch.no_grad()
    def evaluate(model, step: int) -> dict[str, float]:
        was_training = model.training
        model.eval()
        transform = create_eval_transform(model.preprocess_config)
        dataset = create_eval_dataset(cfg.zeroshot_data, image_transform=transform)
        device = str(next(model.parameters()).device)
        encoders = wrap_model(model, tokenizer, transform, f"step-{step}", device=device)
        encode = (encoders.encode_image, encoders.encode_text, tokenizer)
        loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, collate_fn=_labels_collate)
        out = {f"zeroshot/{k}": v for k, v in zero_shot_classification(
            *encode, loader, list(cfg.classnames), list(cfg.templates)).items()}
        loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, collate_fn=_captions_collate)
        out.update({f"retrieval/{k}": v for k, v in zero_shot_retrieval(*encode, loader).items()})
        n = len(dataset)
        out.update({"retrieval/chance@1": 1 / n, "retrieval/chance@5": min(1.0, 5 / n)})
        model.train(was_training)
        return out

    return evaluate
