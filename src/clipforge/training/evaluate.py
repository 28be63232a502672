"""The trainer's evaluation: the ``eval`` section's datasets, scored with ``clipforge.evaluation``.

Datasets are given as ``clipforge benchmark`` takes them and read by the same readers, so a number logged during
training is the number the benchmark prints for the same checkpoint. They are loaded once, before the first step
(a missing dataset fails the run before any work), and every evaluation encodes each image once for all tasks.
Evaluation never calls back into training.
"""
from __future__ import annotations

from typing import Callable

import torch

from clipforge.evaluation.benchmark import BenchmarkConfig, evaluate, load_datasets, make_encoders
from clipforge.training.config import EvalConfig
from clipforge.transforms import PreprocessConfig, create_eval_transform


class Evaluator:
    """``evaluator(model, step) -> {"<dataset>/<metric>": value}`` over the loaded datasets."""

    def __init__(self, cfg: EvalConfig, tokenizer: Callable, preprocess: PreprocessConfig, device: str = "cpu"):
        self.config = BenchmarkConfig(tasks=tuple(cfg.tasks), datasets=tuple(cfg.datasets), data_root=cfg.data_root,
                                      batch_size=cfg.batch_size, num_workers=cfg.workers, templates=cfg.templates,
                                      ties=cfg.ties, device=device)
        self.tokenizer, self.preprocess = tokenizer, preprocess
        self.transform = create_eval_transform(preprocess)
        self.datasets = [test for test, _ in load_datasets(cfg.datasets, self.config, self.transform)]

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.datasets]

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module, step: int) -> dict[str, float]:
        was_training = model.training
        model.eval()
        try:
            device = str(next(model.parameters()).device)
            encoders = make_encoders(model, self.tokenizer, self.transform, f"step-{step}", device=device,
                                     image_size=self.preprocess.image_size)
            return evaluate(encoders, self.datasets, self.config)
        finally:
            model.train(was_training)


def create_evaluator(cfg: EvalConfig, tokenizer: Callable, preprocess: PreprocessConfig,
                     device: str = "cpu") -> Evaluator | None:
    """The run's evaluator, or None when ``eval.datasets`` is empty."""
    if not cfg.datasets:
        return None
    return Evaluator(cfg, tokenizer, preprocess, device)
