"""WiSE-FT: weight-space ensembles of a zero-shot model and its fine-tuned version (Wortsman et al., 2022).

``theta(alpha) = (1 - alpha) * theta_zeroshot + alpha * theta_finetuned``: alpha 0 is the zero-shot model, 1 the
fine-tuned one. Fine-tuning gains on the target data; the interpolations between keep much of the zero-shot
robustness the fine-tuned model lost. ``run_wise_ft`` evaluates each alpha on the user's held-out sets (the target)
and on zero-shot control sets (what must not be forgotten), writes the table (``wise_ft.md``, ``wise_ft.json``), the
trade-off curve (``wise_ft.png``) and the interpolated models asked for (hub layout, ``alpha_0.5/``).

Both models must have the same architecture (config, parameter names and shapes); floating-point tensors are
interpolated, integer buffers (BatchNorm's batch counter) are taken from the fine-tuned model.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Optional, Sequence

import torch

from clipforge._atomic import atomic_directory, write_text_atomic
from clipforge.models.factory import create_model, save_pretrained, tokenizer_for_config
from clipforge.training.config import EvalConfig
from clipforge.training.evaluate import Evaluator

logger = logging.getLogger("clipforge")


class WiseFtError(ValueError):
    """Inputs WiSE-FT cannot combine (the message says why and what to do)."""


@dataclasses.dataclass(frozen=True)
class WiseFtConfig:
    zeroshot: str                             # anything create_model takes, or a run folder (its model/)
    finetuned: str
    alphas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    eval_sets: tuple[str, ...] = ()           # the fine-tuning target's held-out sets (benchmark dataset specs)
    control_sets: tuple[str, ...] = ()        # zero-shot control sets
    data_root: str = "data"
    out: str = "wise_ft"
    save: tuple[float, ...] | str = "all"     # "all", "none", or the alphas whose models are written
    batch_size: int = 64
    device: str = "cpu"

    def __post_init__(self):
        if not self.alphas:
            raise WiseFtError("give at least one alpha, e.g. --alpha 0.5 or --alpha 0,0.25,0.5,0.75,1")
        bad = [a for a in self.alphas if not 0.0 <= a <= 1.0]
        if bad:
            raise WiseFtError(f"alpha must be in [0, 1] (0 = zero-shot, 1 = fine-tuned), got {bad[0]}")
        if isinstance(self.save, str) and self.save not in ("all", "none"):
            raise WiseFtError(f"save must be 'all', 'none' or a list of alphas, got {self.save!r}")
        names = [alpha_name(a) for a in self.alphas]
        if len(set(names)) != len(names):
            raise WiseFtError(f"alphas {list(self.alphas)} repeat a value (as written to folders: {names})")
        if not isinstance(self.save, str):
            missing = [s for s in self.save if alpha_name(s) not in names]
            if missing:
                raise WiseFtError(f"--save {missing[0]:g} is not one of the alphas {[float(a) for a in self.alphas]}")

    def alphas_to_save(self) -> list[float]:
        if self.save == "all":
            return list(self.alphas)
        wanted = set() if self.save == "none" else {alpha_name(s) for s in self.save}
        return [a for a in self.alphas if alpha_name(a) in wanted]


def alpha_name(alpha: float) -> str:
    """``alpha_0.5``, ``alpha_0.333``: the folder of an interpolated model (up to 6 significant digits)."""
    return f"alpha_{alpha:g}"


def interpolate_state_dicts(zeroshot: dict[str, torch.Tensor], finetuned: dict[str, torch.Tensor],
                            alpha: float) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * zeroshot + alpha * finetuned`` for floating tensors (computed in float32 or wider)."""
    if set(zeroshot) != set(finetuned):
        missing = sorted(set(zeroshot) ^ set(finetuned))
        raise WiseFtError(f"the two models have different parameters (e.g. {missing[0]}): WiSE-FT needs a model "
                          "and its own fine-tuned version")
    out = {}
    for key, ft in finetuned.items():
        zs = zeroshot[key]
        if zs.shape != ft.shape:
            raise WiseFtError(f"{key} has shape {tuple(zs.shape)} in the zero-shot model and {tuple(ft.shape)} in "
                              "the fine-tuned one: WiSE-FT needs the same architecture")
        if not ft.is_floating_point():
            out[key] = ft.clone()
            continue
        wide = torch.promote_types(ft.dtype, torch.float32)
        out[key] = torch.lerp(zs.to(wide), ft.to(wide), alpha).to(ft.dtype)
    return out


def _load(spec: str):
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "model").is_dir() and (path / "checkpoints").is_dir():
        spec = f"local-dir:{path / 'model'}"  # a training run folder: its exported model
    elif path.is_dir() and (path / "open_clip_config.json").is_file():
        spec = f"local-dir:{path}"
    return create_model(spec).eval()


def load_pair(zeroshot: str, finetuned: str):
    """(zero-shot model, fine-tuned model), checked to share one architecture."""
    zs, ft = _load(zeroshot), _load(finetuned)
    if zs.config != ft.config:
        raise WiseFtError(f"{zeroshot} and {finetuned} have different architectures ({zs.info.arch or 'custom'} vs "
                          f"{ft.info.arch or 'custom'}): WiSE-FT interpolates a model with its own fine-tuned version")
    return zs, ft


def _evaluator(sets: Sequence[str], config: WiseFtConfig, model) -> Optional[Evaluator]:
    if not sets:
        return None
    eval_config = EvalConfig(datasets=tuple(sets), data_root=config.data_root, batch_size=config.batch_size,
                             tasks=("zeroshot_classification", "zeroshot_retrieval"))
    return Evaluator(eval_config, tokenizer_for_config(model.config), model.preprocess_config, config.device)


def headline(metrics: dict[str, float], dataset: str) -> Optional[float]:
    """The number a dataset is ranked by: top-1 accuracy, else the mean of its recall@1 both ways."""
    if f"{dataset}/acc1" in metrics:
        return metrics[f"{dataset}/acc1"]
    recalls = [metrics[f"{dataset}/{k}"] for k in ("image_retrieval_recall@1", "text_retrieval_recall@1")
               if f"{dataset}/{k}" in metrics]
    return sum(recalls) / len(recalls) if recalls else None


def _dataset_names(evaluator: Optional[Evaluator]) -> list[str]:
    return evaluator.names if evaluator is not None else []


@dataclasses.dataclass(frozen=True)
class WiseFtResult:
    rows: list[dict]            # per alpha: alpha, target and control (group means of the headline), metrics
    target_sets: list[str]
    control_sets: list[str]

    def table(self) -> str:
        return format_table(self.rows, self.target_sets, self.control_sets)


def run_wise_ft(config: WiseFtConfig) -> WiseFtResult:
    """Evaluate (and save) every alpha and write the report into ``config.out`` (see the module doc)."""
    zeroshot, finetuned = load_pair(config.zeroshot, config.finetuned)
    target_eval, control_eval = _evaluator(config.eval_sets, config, finetuned), \
        _evaluator(config.control_sets, config, finetuned)
    # state_dict() shares storage with the parameters: the fine-tuned weights are copied before the model that holds
    # them is overwritten with each interpolation
    zs_state, ft_state = zeroshot.state_dict(), {k: v.clone() for k, v in finetuned.state_dict().items()}
    out = Path(config.out)
    rows = []
    for alpha in config.alphas:
        finetuned.load_state_dict(interpolate_state_dicts(zs_state, ft_state, alpha))
        model = finetuned.to(config.device)
        row = {"alpha": alpha, "metrics": {}}
        for group, evaluator in (("target", target_eval), ("control", control_eval)):
            metrics = evaluator(model, 0) if evaluator is not None else {}
            row["metrics"].update(metrics)
            values = [v for v in (headline(metrics, d) for d in _dataset_names(evaluator)) if v is not None]
            row[group] = sum(values) / len(values) if values else None
        rows.append(row)
        logger.info("alpha %g: target %s, control %s", alpha, _fmt(row["target"]), _fmt(row["control"]))
        if alpha in config.alphas_to_save():
            with atomic_directory(out / alpha_name(alpha)) as tmp:
                save_pretrained(model.cpu(), tmp)
    result = WiseFtResult(rows, _dataset_names(target_eval), _dataset_names(control_eval))
    write_report(result, config)
    return result


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def format_table(rows: list[dict], target_sets: list[str], control_sets: list[str]) -> str:
    """Markdown: one row per alpha; each dataset's headline metric (%), the group means."""
    columns = [(d, "target") for d in target_sets] + [(d, "control") for d in control_sets]
    head = ["alpha"] + [f"{d} ({group})" for d, group in columns] + ["target mean", "control mean"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for row in rows:
        cells = [f"{row['alpha']:g}"] + [_fmt(headline(row["metrics"], d)) for d, _ in columns]
        lines.append("| " + " | ".join(cells + [_fmt(row["target"]), _fmt(row["control"])]) + " |")
    return "\n".join(lines)


def write_report(result: WiseFtResult, config: WiseFtConfig) -> None:
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, table = result.rows, result.table()
    write_text_atomic(out / "wise_ft.md", f"# WiSE-FT: {config.zeroshot} (alpha 0) -> {config.finetuned} "
                                          f"(alpha 1)\n\n{table}\n")
    write_text_atomic(out / "wise_ft.json", json.dumps({"zeroshot": config.zeroshot, "finetuned": config.finetuned,
                                                        "target_sets": result.target_sets,
                                                        "control_sets": result.control_sets,
                                                        "rows": rows}, indent=2))
    if all(r["target"] is not None and r["control"] is not None for r in rows):
        plot_curve(rows, out / "wise_ft.png")


def plot_curve(rows: list[dict], path: Path) -> Optional[Path]:
    """The trade-off curve: control (zero-shot) score against target score, one point per alpha."""
    try:
        import matplotlib
    except ImportError:
        logger.warning("the WiSE-FT plot needs matplotlib: pip install 'clipforge[plot]' (table written)")
        return None
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    xs, ys = [100 * r["control"] for r in rows], [100 * r["target"] for r in rows]
    ax.plot(xs, ys, "o-", color="tab:blue")
    for r, x, y in zip(rows, xs, ys):
        ax.annotate(f"{r['alpha']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("control (zero-shot) score, %")
    ax.set_ylabel("target score, %")
    ax.set_title("WiSE-FT: alpha from zero-shot to fine-tuned")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path
