"""Evaluation: zero-shot classification, retrieval, linear probe, resource statistics and benchmark tables.

Evaluators take narrow inputs (encode functions, a tokenizer, a dataloader) and return flat metric dicts with
clip_benchmark's names; ``benchmark.evaluate`` and ``benchmark.run_benchmark`` add datasets, caching and models.
"""
from clipforge.evaluation.benchmark import BenchmarkConfig, evaluate, run_benchmark
from clipforge.evaluation.datasets import load_dataset
from clipforge.evaluation.features import Encoders
from clipforge.evaluation.linear_probe import linear_probe
from clipforge.evaluation.retrieval import zero_shot_retrieval
from clipforge.evaluation.zeroshot import build_classifier, zero_shot_classification

__all__ = ["BenchmarkConfig", "Encoders", "build_classifier", "evaluate", "linear_probe", "load_dataset",
           "run_benchmark", "zero_shot_classification", "zero_shot_retrieval"]
