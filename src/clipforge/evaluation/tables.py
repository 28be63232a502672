"""The published CLIP benchmark's three tables, rendered from flat per-model results, and the linear-probe and
image-caption selection (SugarCrepe, Winoground) tables.

Results are ``{model_id: {metric_key: value}}`` with keys such as ``disk_usage_mb``,
``mscoco_captions/image_retrieval_recall@5``, ``vtab/cifar10/acc1`` or ``sugar_crepe/swap_att/acc``. Each table
has one row per model and is rendered as a grid table (the ``+---+`` style of the seed), a GitHub Markdown table,
CSV rows or JSON.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from typing import Mapping, Sequence

from clipforge.evaluation import suites
from clipforge._atomic import write_text_atomic

Results = Mapping[str, Mapping[str, object]]
GRID_TABLES = ("statistics", "retrieval")  # rendered as grids, as in the seed; the others as Markdown


@dataclasses.dataclass
class Table:
    """Rows of strings under ``columns``; ``groups`` are (title, span) cells above the columns after the first."""

    name: str
    title: str
    columns: list[str]
    rows: list[list[str]]
    groups: list[tuple[str, int]] | None = None
    row_lines: bool = False


def _fmt(value: object, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.{digits}f}"
    return str(value)


def _bold_best(rows: list[list[str]], first: int, higher_is_better: bool = True) -> None:
    """Wrap the best number of each column (from column ``first`` on) in ``**``."""
    for col in range(first, len(rows[0]) if rows else 0):
        values = [float(r[col]) for r in rows if _is_number(r[col])]
        if len(values) < 2:
            continue
        best = max(values) if higher_is_better else min(values)
        for r in rows:
            if _is_number(r[col]) and float(r[col]) == best:
                r[col] = f"**{r[col]}**"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def stats_table(results: Results) -> Table:
    columns = ["Model", "Disk Usage (MB)", "Peak RAM Usage (GB)", "Peak VRAM Usage (GB)"]
    rows = [[model, _fmt(r.get("disk_usage_mb"), 0), _fmt(r.get("peak_ram_gb"), 2), _fmt(r.get("peak_vram_gb"), 2)]
            for model, r in results.items() if "peak_ram_gb" in r]
    return Table("statistics", "Basic statistics", columns, rows)


def retrieval_table(results: Results, datasets: Sequence[str], k: int = 5, bold: bool = False) -> Table:
    """Image (text->image) and Text (image->text) recall@k and their average, per dataset; the title says which k."""
    rows = []
    for model, r in results.items():
        row = [model]
        for name in datasets:
            image, text = r.get(f"{name}/image_retrieval_recall@{k}"), r.get(f"{name}/text_retrieval_recall@{k}")
            average = (image + text) / 2 if image is not None and text is not None else None
            row += [_fmt(image, 3), _fmt(text, 3), _fmt(average, 3)]
        rows.append(row)
    if bold:
        _bold_best(rows, 1)
    groups = [(_title(name), 3) for name in datasets]
    columns = ["Model"] + ["Image", "Text", "Average"] * len(datasets)
    return Table("retrieval", f"Zero-shot retrieval (recall@{k})", columns, rows, groups=groups, row_lines=True)


def _per_dataset_table(results: Results, datasets: Sequence[str], keys: Sequence[str], name: str, title: str,
                       bold: bool) -> Table:
    """One row per model (named as in every table), one column per dataset: the first of ``keys`` present."""
    rows = []
    for model, r in results.items():
        row = [model]
        for dataset in datasets:
            value = next((r[f"{dataset}/{k}"] for k in keys if f"{dataset}/{k}" in r), None)
            row.append(_fmt(value, 3))
        rows.append(row)
    if bold:
        _bold_best(rows, 1)
    columns = ["model_fullname"] + [_title(d) if ":" in d else d for d in datasets]
    return Table(name, title, columns, rows)


def classification_table(results: Results, datasets: Sequence[str], bold: bool = False) -> Table:
    """Top-1 accuracy (mean average precision for multi-label sets) per dataset."""
    return _per_dataset_table(results, datasets, ("acc1", "mean_average_precision"), "classification",
                              "Zero-shot classification (top-1 accuracy; mAP for multi-label sets)", bold)


def linear_probe_table(results: Results, datasets: Sequence[str], bold: bool = False) -> Table:
    """Linear-probe top-1 accuracy per dataset."""
    return _per_dataset_table(results, datasets, ("linear_probe_acc1",), "linear_probe",
                              "Linear probe (top-1 accuracy)", bold)


def caption_selection_table(results: Results, datasets: Sequence[str], bold: bool = False) -> Table:
    """Image-caption selection accuracy (clip_benchmark's ``acc``: the image's best caption is its own, not the
    negative; Winoground's group score: both images and both captions matched) per dataset, Winoground first, then
    SugarCrepe's tasks in clip_benchmark's order."""
    measures = (["SugarCrepe accuracy"] if any(d.startswith("sugar_crepe/") for d in datasets) else []) + \
        (["Winoground group score"] if "winoground" in datasets else [])
    return _per_dataset_table(results, datasets, ("acc",), "caption_selection",
                              f"Image-caption selection ({', '.join(measures) or 'accuracy'})", bold)


def _title(name: str) -> str:
    spec = suites.DATASETS.get(name)
    if spec is not None:
        return spec.title
    return os.path.basename(name.partition(":")[2].rstrip("/")) if ":" in name else name


def skipped_notes(results: Results) -> list[str]:
    """One line per (model, dataset) that skipped undecodable samples, so no metric hides a partial dataset."""
    notes = []
    for model, r in results.items():
        for key, value in r.items():
            if key.endswith("/num_skipped") and value:
                dataset = key[: -len("/num_skipped")]
                notes.append(f"{model} on {_title(dataset)}: {value} sample(s) skipped (failed to decode), "
                             f"metrics over {r.get(dataset + '/num_samples', '?')} samples")
    return notes


def _json_ready(value: object) -> object:
    return None if isinstance(value, float) and math.isnan(value) else value


def render_grid(table: Table) -> str:
    """The seed's grid style: ``+---+`` borders, ``+===+`` under the header."""
    widths = [max(len(c) for c in [col] + [r[i] for r in table.rows]) + 2 for i, col in enumerate(table.columns)]
    header_lines = []
    if table.groups:
        _widen_for_groups(widths, table.groups)
        cells, at = [], 1
        for title, span in table.groups:
            cells.append(" " + title.ljust(sum(widths[at:at + span]) + span - 2))
            at += span
        header_lines.append("|" + " " + table.columns[0].ljust(widths[0] - 1) + "|" + "|".join(cells) + "|")
        header_lines.append("|" + " " * widths[0] + "+" + "+".join("-" * w for w in widths[1:]) + "+")
        first = " " * widths[0]
    else:
        first = " " + table.columns[0].ljust(widths[0] - 1)
    header_lines.append("|" + first + "|" + "|".join(" " + c.ljust(w - 1) for c, w in
                                                     zip(table.columns[1:], widths[1:])) + "|")
    line = "+" + "+".join("-" * w for w in widths) + "+"
    top = line if not table.groups else "+" + "+".join(
        "-" * w for w in [widths[0]] + _group_widths(widths, table.groups)) + "+"
    body = []
    for row in table.rows:
        body.append("|" + "|".join(" " + c.ljust(w - 1) for c, w in zip(row, widths)) + "|")
        if table.row_lines:
            body.append(line)
    if not table.row_lines:
        body.append(line)
    return "\n".join([top] + header_lines + ["+" + "+".join("=" * w for w in widths) + "+"] + body)


def _group_widths(widths: list[int], groups: list[tuple[str, int]]) -> list[int]:
    out, at = [], 1
    for _, span in groups:
        out.append(sum(widths[at:at + span]) + span - 1)
        at += span
    return out


def _widen_for_groups(widths: list[int], groups: list[tuple[str, int]]) -> None:
    at = 1
    for title, span in groups:
        missing = len(title) + 2 - (sum(widths[at:at + span]) + span - 1)
        if missing > 0:
            widths[at + span - 1] += missing
        at += span


def render_markdown(table: Table) -> str:
    """A GitHub Markdown table; grouped columns get 'Group Column' headers."""
    columns = list(table.columns)
    if table.groups:
        at = 1
        for title, span in table.groups:
            for i in range(at, at + span):
                columns[i] = f"{title} {columns[i]}"
            at += span
    widths = [max(len(c) for c in [col] + [r[i] for r in table.rows]) for i, col in enumerate(columns)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in table.rows]
    return "\n".join(lines)


def render_csv(table: Table) -> str:
    columns = render_markdown(dataclasses.replace(table, rows=[])).splitlines()[0].strip("| ").split(" | ")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([c.strip() for c in columns])
    writer.writerows([[c.strip("*") for c in row] for row in table.rows])
    return out.getvalue()


def build_tables(results: Results, bold: bool = True) -> list[Table]:
    """The tables the results have data for, in the seed's order: statistics, retrieval, classification; then
    linear probe and image-caption selection."""
    keys = {k for r in results.values() for k in r}
    retrieval = [d for d in _datasets(keys) if f"{d}/image_retrieval_recall@5" in keys]
    classification = [d for d in _datasets(keys)
                      if f"{d}/acc1" in keys or f"{d}/mean_average_precision" in keys]
    probed = [d for d in _datasets(keys) if f"{d}/linear_probe_acc1" in keys]
    selection = [d for d in _datasets(keys) if f"{d}/acc" in keys and f"{d}/text_acc" in keys]
    tables = []
    if "peak_ram_gb" in keys:
        tables.append(stats_table(results))
    if retrieval:
        tables.append(retrieval_table(results, retrieval, bold=bold))
    if classification:
        tables.append(classification_table(results, classification, bold=bold))
    if probed:
        tables.append(linear_probe_table(results, probed, bold=bold))
    if selection:
        tables.append(caption_selection_table(results, selection, bold=bold))
    return tables


def _datasets(keys: set[str]) -> list[str]:
    """Dataset names found in metric keys, in the suites' column order, then the rest alphabetically."""
    found = {k.rsplit("/", 1)[0] for k in keys if "/" in k}
    order = suites.SUITES["retrieval"] + suites.SUITES["classification"] + suites.SUITES["compositionality"]
    return [d for d in order if d in found] + sorted(found - set(order))


def write_tables(results: Results, out_dir: str, bold: bool = True) -> dict[str, str]:
    """Write benchmark.md (seed style), benchmark_github.md, one CSV per table and results.json; returns paths."""
    tables = build_tables(results, bold=bold)
    notes = skipped_notes(results)
    footer = ("\n\n" + "\n".join(f"- {n}" for n in notes)) if notes else ""
    files = {
        "benchmark.md": "\n\n".join(f"## {t.title}\n\n" + (render_grid(t) if t.name in GRID_TABLES
                                                           else render_markdown(t)) for t in tables) + footer + "\n",
        "benchmark_github.md": "\n\n".join(f"## {t.title}\n\n{render_markdown(t)}" for t in tables) + footer + "\n",
        "results.json": json.dumps({m: {k: _json_ready(v) for k, v in r.items()} for m, r in results.items()},
                                   indent=2, default=str) + "\n",
    }
    files.update({f"{t.name}.csv": render_csv(t) for t in tables})
    paths = {}
    for name, text in files.items():
        paths[name] = os.path.join(out_dir, name)
        write_text_atomic(paths[name], text)
    return paths
