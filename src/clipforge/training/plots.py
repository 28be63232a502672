"""PNG curves of training runs, read back from their ``metrics.jsonl``: loss, learning rate, throughput, evaluation.

A run folder is what ``clipforge train --workdir`` wrote. Several runs are overlaid in the same axes (one colour per
run, the same in every figure), labelled by folder name, so two recipes or a resumed run can be compared at a glance.
Only step records are plotted; notes and warnings, the wall-clock ``time`` and NaN/inf values are left out.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

from clipforge.evaluation.charts import COLORS, new_figure, save_png
from clipforge.training.logging import METRICS_FILE, read_records

# key -> (steps, values), sorted by step
Series = dict[str, tuple[list[int], list[float]]]

_NOT_METRICS = {"step", "time"}
_SKIPPED_RECORDS = ("note", "warning")
_LOSS_PARTS = {"contrastive", "distill"}
# evaluation scores worth a curve; counts such as eval/<dataset>/num_samples are not
_EVAL_SCORE = re.compile(r"(acc\d+|recall@\d+|mean_per_class_recall|mean_average_precision)$")
_LINESTYLES = ("-", "--", ":", "-.")


def _is_loss_part(key: str) -> bool:
    return key in _LOSS_PARTS or key.endswith("_loss") or key.startswith("loss/")


def _run_folder(run: str | Path) -> Path:
    """The run folder (a path to its metrics.jsonl is accepted too); FileNotFoundError when it has no metrics."""
    path = Path(run)
    if path.name == METRICS_FILE and path.is_file():
        path = path.parent
    if not (path / METRICS_FILE).is_file():
        raise FileNotFoundError(f"{path}: no {METRICS_FILE} there; pass a training run folder "
                                "(the --workdir of clipforge train)")
    return path


def _series(records: list[dict]) -> Series:
    """Finite numeric values per key of the step records; a step logged twice keeps its last value."""
    by_key: dict[str, dict[int, float]] = {}
    for record in records:
        step = record.get("step")
        if isinstance(step, bool) or not isinstance(step, int) or any(k in record for k in _SKIPPED_RECORDS):
            continue
        for key, value in record.items():
            if key in _NOT_METRICS or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                by_key.setdefault(key, {})[step] = float(value)
    return {key: (sorted(points), [points[s] for s in sorted(points)]) for key, points in by_key.items()}


def _labels(folders: list[Path]) -> list[str]:
    """Folder names; equal names get their parent folder in front, and still-equal ones a number."""
    resolved = [f.resolve() for f in folders]
    names = [f.name for f in resolved]
    labels = [f"{f.parent.name}/{f.name}" if names.count(f.name) > 1 else f.name for f in resolved]
    return [f"{label} ({i + 1})" if labels.count(label) > 1 else label for i, label in enumerate(labels)]


def load_runs(runs: list[str | Path]) -> dict[str, Series]:
    """``{label: series}`` in the given order; ValueError naming the runs without any plottable record."""
    if not runs:
        raise ValueError("no run folders given; pass at least one training run folder")
    folders = [_run_folder(run) for run in runs]
    series = [_series(read_records(folder / METRICS_FILE)) for folder in folders]
    empty = [str(folder) for folder, s in zip(folders, series) if not s]
    if empty:
        raise ValueError(f"no plottable step records in {METRICS_FILE} of: {', '.join(empty)} "
                         "(only notes, warnings or unreadable lines); train for a few logged steps first")
    return dict(zip(_labels(folders), series))


def _rolling_mean(values: list[float], window: int) -> list[float]:
    """Trailing mean over ``window`` points: samples/s is noisy step to step (data loading, evaluation pauses)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def _draw_key(ax, runs: dict[str, Series], key: str, linestyle: str = "-", tag: str = "") -> None:
    """One curve per run that logged ``key``: markers for sparse evaluation points, a rolling mean for throughput."""
    for i, (label, series) in enumerate(runs.items()):
        if key not in series:
            continue
        steps, values = series[key]
        color, name = COLORS[i % len(COLORS)], f"{label} {tag}".strip()
        if key == "samples_per_s" and len(values) > 4:
            ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
            values = _rolling_mean(values, max(2, min(25, len(values) // 10)))
        marker = "o" if key.startswith("eval/") else None
        ax.plot(steps, values, color=color, linestyle=linestyle, marker=marker, markersize=3, label=name)


def _finish(ax, title: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _line_figure(runs: dict[str, Series], keys: list[str], title: str):
    """One axes: every key for every run (line style tells keys apart, colour tells runs apart)."""
    figure, axes = new_figure(8, 4.5)
    ax = axes[0, 0]
    for key, linestyle in zip(keys, _LINESTYLES * len(keys)):
        _draw_key(ax, runs, key, linestyle, tag=key if len(keys) > 1 else "")
    _finish(ax, title, keys[0] if len(keys) == 1 else "value")
    return figure


def _eval_figure(runs: dict[str, Series], keys: list[str]):
    """One subplot per evaluation metric, runs overlaid, sharing the step axis."""
    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    figure, axes = new_figure(4.5 * ncols, 3.2 * nrows, nrows, ncols, sharex=True)
    for ax, key in zip(axes.flat, keys):
        _draw_key(ax, runs, key)
        _finish(ax, key.removeprefix("eval/"), key.rsplit("/", 1)[-1])
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    return figure


def _groups(keys: set[str]) -> dict[str, list[str]]:
    """Figure name -> the keys it shows; groups without data are left out."""
    groups = {
        "loss": [k for k in ["loss", *sorted(k for k in keys if _is_loss_part(k))] if k in keys],
        "lr": [k for k in ["lr"] if k in keys],
        "throughput": [k for k in ["samples_per_s"] if k in keys],
        "eval": sorted(k for k in keys if k.startswith("eval/") and _EVAL_SCORE.search(k)),
    }
    return {name: group for name, group in groups.items() if group}


def _file_name(key: str, taken: set[str]) -> str:
    """A portable file name for a metric key (``eval/val/recall@5`` -> ``eval_val_recall_5.png``), unique."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("._") or "metric"
    name, n = f"{stem}.png", 2
    while name in taken:
        name, n = f"{stem}-{n}.png", n + 1
    taken.add(name)
    return name


def _figures(runs: dict[str, Series], metrics: list[str] | None):
    """(file name, figure) pairs: the standard groups, or one figure per requested key."""
    available = set().union(*runs.values())
    if metrics is None:
        groups = _groups(available)
        if not groups:
            raise ValueError(f"the runs log no loss, lr, samples_per_s or evaluation score; pick keys with "
                             f"metrics=[...] (--metrics): available: {', '.join(sorted(available))}")
        titles = {"loss": "loss", "lr": "learning rate", "throughput": "throughput (samples/s)"}
        for name, keys in groups.items():
            if name == "eval":
                yield "eval.png", _eval_figure(runs, keys)
            else:
                yield f"{name}.png", _line_figure(runs, keys, titles[name])
        return
    unknown = [k for k in metrics if k not in available]
    if unknown:
        raise ValueError(f"unknown metric key(s) {', '.join(unknown)}; available: {', '.join(sorted(available))}")
    taken: set[str] = set()
    for key in dict.fromkeys(metrics):  # repeated keys: one figure
        yield _file_name(key, taken), _line_figure(runs, [key], key)


def plot_runs(runs: list[str | Path], out: str | Path, metrics: list[str] | None = None) -> list[Path]:
    """Write PNG curves of ``runs`` into ``out``: ``loss.png``, ``lr.png``, ``throughput.png``, ``eval.png``
    (each only when some run logged its data), or one PNG per key of ``metrics`` (empty or None: the standard
    figures). Returns the written paths.

    Every input is checked before anything is written, so a typo in a key or a run leaves ``out`` untouched.
    """
    loaded = load_runs([runs] if isinstance(runs, (str, Path)) else list(runs))
    keys = [metrics] if isinstance(metrics, str) else list(metrics or [])  # one key alone is not its characters
    figures = list(_figures(loaded, keys or None))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return [save_png(figure, out / name) for name, figure in figures]
