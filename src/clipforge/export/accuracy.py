"""What a reduced-precision variant costs in accuracy: zero-shot top-1 and recall@5 on a held-out set, measured
through ONNX Runtime for fp32 and the variant in the same run, with clipforge's benchmark code.

``measure`` returns ``{variant: {"<dataset>/acc1": ..., "<dataset>/image_retrieval_recall@5": ...}}``;
``changes`` gives each metric's change in points (percent), variant minus fp32.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

from clipforge.evaluation.benchmark import BenchmarkConfig, evaluate, load_datasets
from clipforge.evaluation.features import Encoders
from clipforge.runtime import Bundle, OnnxEncoder
from clipforge.transforms import create_eval_transform

TRACKED = ("/acc1", "/image_retrieval_recall@5", "/text_retrieval_recall@5")


def onnx_encoders(encoder: OnnxEncoder) -> Encoders:
    """Evaluation's view of an ``OnnxEncoder``: torch tensors in and out, the same preprocessing as torch."""
    def encode_image(images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(encoder.encode_image(images.cpu().numpy()))

    def encode_text(tokens: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(encoder.encode_text(tokens.cpu().numpy()))

    config = encoder.preprocess_config
    return Encoders(encode_image=encode_image, encode_text=encode_text, tokenize=encoder.tokenizer,
                    transform=create_eval_transform(config), image_size=config.image_size,
                    model_id=f"onnx:{encoder.bundle.directory}@{encoder.variant}",
                    weights_path=str(encoder.bundle.directory))


ONNX_PREFIX = "onnx:"


def load_onnx_encoders(spec: str, device: str = "cpu", precision: str = "fp32") -> Encoders:
    """The benchmark's loader for ``onnx:DIR`` or ``onnx:DIR@VARIANT`` (a bundle's default variant, or the named
    one); on a CUDA device the providers are chosen automatically (TensorRT, CUDA, CPU)."""
    if precision != "fp32":
        raise ValueError(f"precision {precision!r} does not apply to ONNX bundles: their precision is the variant, "
                         "e.g. --model onnx:DIR@int8-dynamic or onnx:DIR@fp16")
    path, _, variant = spec[len(ONNX_PREFIX):].partition("@")
    providers = "auto" if str(device).startswith("cuda") else ["cpu"]
    return onnx_encoders(OnnxEncoder(path, variant=variant or None, providers=providers))


def measure(bundle: Bundle, variants: Sequence[str], holdout: Sequence[str], data_root: str = "data",
            batch_size: int = 32) -> dict[str, dict[str, float]]:
    """Tracked metrics of each variant on the held-out datasets (loaded once, encoded once per variant)."""
    config = BenchmarkConfig(datasets=tuple(holdout), data_root=data_root, batch_size=batch_size, num_workers=0)
    encoders = {name: onnx_encoders(OnnxEncoder(bundle, variant=name, providers=["cpu"], verify=False))
                for name in variants}
    first = next(iter(encoders.values()))
    loaded = [test for test, _ in load_datasets(config.datasets, config, first.transform)]
    results = {}
    for name, enc in encoders.items():
        metrics = evaluate(enc, loaded, config)
        results[name] = {k: float(v) for k, v in metrics.items() if k.endswith(TRACKED)}
    if not results[next(iter(results))]:
        raise ValueError(f"the held-out set(s) {', '.join(holdout)} gave no zero-shot accuracy or recall: pass "
                         "a classification dataset (class folders) or a captions dataset")
    return results


def changes(reference: Mapping[str, float], variant: Mapping[str, float]) -> dict[str, float]:
    """Variant minus reference, in points (percent), for each metric both have."""
    return {k: round(100.0 * (variant[k] - reference[k]), 3) for k in reference if k in variant}
