"""PNG charts: the benchmark's bar chart, and the one place that imports matplotlib.

matplotlib is an optional extra (``clipforge[plot]``), so it is imported inside functions only: ``import clipforge``
never pays for it, and ``clipforge benchmark`` without the extra writes its tables and says why there is no chart. Figures are built with ``matplotlib.figure.Figure``, not
pyplot, so nothing is registered in pyplot's global figure list (no leaks in long processes, nothing to close).
``clipforge.training.plots`` uses :func:`new_figure` and :func:`save_png` too; they live here because training may
import evaluation but evaluation must never import training.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Mapping

from clipforge._atomic import atomic_path
from clipforge.evaluation import suites

CHART_FILE = "benchmark.png"
# matplotlib's tab10, spelled out so colours can be chosen before (or without) importing matplotlib
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
_MISSING = "plotting needs matplotlib: pip install 'clipforge[plot]'"


def new_figure(width: float, height: float, nrows: int = 1, ncols: int = 1, **subplots_kw):
    """A headless figure and its axes (``squeeze=False``: always a 2-D array of axes); ``subplots_kw`` goes to
    ``Figure.subplots`` (``sharex``, ``height_ratios``...)."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError(_MISSING) from e
    # Agg needs no display (servers, CI). A process that already chose a backend through pyplot (a notebook)
    # keeps it: these figures never go through pyplot, so switching it would only break the caller's plots.
    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    axes = figure.subplots(nrows, ncols, squeeze=False, **subplots_kw)
    return figure, axes


def save_png(figure, path: str | Path) -> Path:
    """Write ``figure`` as a PNG that appears whole under ``path`` or not at all (temp file, then os.replace)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")  # the temp name has no .png suffix: say the format
    return path


def _number(value: object) -> float | None:
    """A finite float, or None for NaN, infinities, booleans and non-numbers (errors stored as strings)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _title(dataset: str) -> str:
    spec = suites.DATASETS.get(dataset)
    return spec.title if spec is not None and spec.title else dataset


def _datasets(results: Mapping[str, Mapping[str, object]]) -> list[str]:
    """Dataset names in the order the benchmark produced them (metric keys are ``<dataset>/<metric>``;
    dataset names may contain ``/`` themselves, e.g. ``vtab/cifar10``)."""
    seen: dict[str, None] = {}
    for metrics in results.values():
        for key in metrics:
            if "/" in key:
                seen.setdefault(key.rsplit("/", 1)[0], None)
    return list(seen)


# A panel: (title, row labels, {model: one value or None per row})
Panel = tuple[str, list[str], dict[str, list[float | None]]]


def _panel(title: str, rows: list[tuple[str, list[str]]], results: Mapping[str, Mapping[str, object]]) -> Panel | None:
    """Keep the rows (label, candidate keys: first present wins) that at least one model has a number for."""
    labels, values = [], {model: [] for model in results}
    for label, keys in rows:
        row = {model: next((_number(m[k]) for k in keys if k in m), None) for model, m in results.items()}
        if all(v is None for v in row.values()):
            continue
        labels.append(label)
        for model, value in row.items():
            values[model].append(value)
    return (title, labels, values) if labels else None


def chart_panels(results: Mapping[str, Mapping[str, object]]) -> list[Panel]:
    """What the chart shows: zero-shot top-1 per dataset (mAP for multi-label sets), retrieval recall@5 both ways."""
    datasets = _datasets(results)
    classification = [(_title(d), [f"{d}/acc1", f"{d}/mean_average_precision"]) for d in datasets]
    retrieval = [(f"{_title(d)} {side}", [f"{d}/{side}_retrieval_recall@5"])
                 for d in datasets for side in ("image", "text")]
    panels = [_panel("Zero-shot classification: top-1 accuracy (mAP for multi-label)", classification, results),
              _panel("Zero-shot retrieval: recall@5 (image = text->image, text = image->text)", retrieval, results)]
    return [p for p in panels if p is not None]


def _draw_panel(ax, panel: Panel) -> None:
    """Grouped horizontal bars: one group per row label, one bar per model, each bar annotated."""
    title, labels, values = panel
    height = 0.8 / len(values)
    top = max((v for vs in values.values() for v in vs if v is not None), default=1.0)
    for j, (model, row_values) in enumerate(values.items()):
        offsets = [i + (j - (len(values) - 1) / 2) * height for i in range(len(labels))]
        ax.barh(offsets, [v or 0.0 for v in row_values], height=height, label=model, color=COLORS[j % len(COLORS)])
        for y, v in zip(offsets, row_values):
            ax.annotate("n/a" if v is None else f"{v:.3f}", (v or 0.0, y), xytext=(3, 0),
                        textcoords="offset points", va="center", fontsize=7)
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()  # first dataset on top, as in the tables
    ax.set_xlim(0, 1.12 if top <= 1 else top * 1.15)  # room for the annotations
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)


def write_benchmark_chart(results: Mapping[str, Mapping[str, object]], out_dir: str | Path) -> Path | None:
    """Write ``benchmark.png`` into ``out_dir`` (next to the tables); None, and no file, when nothing is chartable.

    ``results`` is ``{model_spec: {"<dataset>/<metric>": value}}`` as ``run_benchmark`` returns it; counts, resource
    statistics, NaN and non-numeric values are left out.
    """
    panels = chart_panels(results)
    if not panels:
        return None
    heights = [max(1.5, 0.3 * len(labels) * max(1, len(values)) + 0.8) for _, labels, values in panels]
    figure, axes = new_figure(9, sum(heights) + 0.6, nrows=len(panels), height_ratios=heights)
    for ax, panel in zip(axes[:, 0], panels):
        _draw_panel(ax, panel)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside upper center", ncols=min(3, len(labels)), fontsize=8)
    return save_png(figure, Path(out_dir) / CHART_FILE)
