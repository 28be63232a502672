"""``clipforge benchmark``: zero-shot classification/retrieval, linear probe, image-caption selection (SugarCrepe,
Winoground) and resource tables for models.

Example::

    clipforge benchmark --model ViT-B-32::laion2b_s34b_b79k RN50::openai \\
        --tasks zeroshot_classification zeroshot_retrieval statistics \\
        --datasets retrieval vtab imagenetv2 --data-root ~/datasets --cache-dir ~/.cache/clipforge/features \\
        --output results/
    clipforge benchmark --model ViT-B-32::openai --datasets sugar_crepe --data-root ~/datasets  # sugar_crepe/
    clipforge benchmark --model ViT-B-32::openai --datasets compositionality  # winoground + sugar_crepe
"""
from __future__ import annotations

import argparse
import os
import sys

from clipforge.config import apply_overrides

_DEFAULT_DATA = os.path.join(os.path.expanduser("~"), ".cache", "clipforge", "datasets")


def _list_datasets() -> int:
    from clipforge.evaluation import suites
    for name, spec in suites.DATASETS.items():
        print(f"{name:40s} {spec.task:17s} layouts: {', '.join(spec.layouts)}")
    for suite, names in suites.SUITES.items():
        print(f"suite {suite}: {' '.join(names)}")
    return 0


def _bundle_loaders(specs: list[str]) -> dict:
    """``onnx:DIR[@VARIANT]`` specs are run through ONNX Runtime (imported only when such a spec is given)."""
    if not any(spec.startswith("onnx:") for spec in specs):
        return {}
    from clipforge.export.accuracy import ONNX_PREFIX, load_onnx_encoders

    return {ONNX_PREFIX: load_onnx_encoders}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", nargs="+", default=[], metavar="SPEC",
                        help="ARCH, ARCH::TAG, ARCH::path/to/weights, hf-hub:org/repo, local-dir:DIR, or an ONNX bundle "
                             "onnx:DIR[@VARIANT] (several allowed)")
    parser.add_argument("--tasks", nargs="+", default=["zeroshot_classification", "zeroshot_retrieval",
                                                       "image_caption_selection"],
                        help="zeroshot_classification, zeroshot_retrieval, linear_probe, image_caption_selection "
                             "(SugarCrepe, Winoground), statistics; each dataset runs those it supports (default: "
                             "the first two and image_caption_selection)")
    parser.add_argument("--datasets", nargs="+", default=["classification", "retrieval"],
                        help="dataset names, suites (vtab, retrieval, classification, sugar_crepe, compositionality, "
                             "imagenet_robustness, vtab+, multilingual_retrieval; --list-datasets shows all) or "
                             "folder:/wds:/captions:PATH")
    parser.add_argument("--data-root", default=os.environ.get("CLIPFORGE_DATA", _DEFAULT_DATA),
                        help="folder holding one sub-folder per dataset (vtab/cifar10 -> vtab_cifar10; every "
                             "sugar_crepe/<task> -> sugar_crepe), or a pattern with {dataset}")
    parser.add_argument("--output", default="benchmark_results", help="folder for the Markdown, CSV and JSON tables")
    parser.add_argument("--cache-dir", default=None, help="cache encoded image features here (re-runs skip encoding)")
    parser.add_argument("--download", action="store_true", help="fetch missing datasets when the network allows")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="other BenchmarkConfig fields, e.g. batch_size=128 precision=amp split=test "
                             "templates=imagenet1k_selected")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument("--list-datasets", action="store_true", help="list dataset names and suites, then exit")


def run(args: argparse.Namespace) -> int:
    import torch

    if args.list_datasets:
        return _list_datasets()
    if not args.model:
        raise ValueError("give at least one --model (ARCH, ARCH::TAG, ARCH::path or hf-hub:org/repo)")

    from clipforge.evaluation.benchmark import BenchmarkConfig, run_benchmark
    from clipforge.evaluation.charts import write_benchmark_chart
    from clipforge.evaluation.tables import GRID_TABLES, build_tables, render_grid, render_markdown, write_tables

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    config = BenchmarkConfig(tasks=tuple(args.tasks), datasets=tuple(args.datasets), data_root=args.data_root,
                             cache_dir=args.cache_dir, allow_download=args.download, device=device)
    config = apply_overrides(config, args.set)
    results = run_benchmark(args.model, config, quiet=args.quiet, prefixed_loaders=_bundle_loaders(args.model))
    paths = write_tables(results, args.output)
    try:
        chart = write_benchmark_chart(results, args.output)
    except ImportError as e:  # the plot extra is optional: the tables are the result
        print(f"no chart: {e}", file=sys.stderr)
        chart = None
    if chart is not None:
        paths["benchmark.png"] = str(chart)
    for table in build_tables(results):
        print(f"\n## {table.title}\n")
        print(render_grid(table) if table.name in GRID_TABLES else render_markdown(table))
    print(f"\nwrote {', '.join(sorted(paths.values()))}", file=sys.stderr)
    return 0
