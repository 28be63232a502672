"""Run metrics: JSON lines always; TensorBoard and Weights & Biases when installed and asked for; progress as a
tqdm bar on a terminal (loss, samples/s, ETA) or periodic lines otherwise. Only the main rank writes.

``metrics.jsonl`` holds one JSON object per logged step (``{"step": 10, "loss": ..., "lr": ..., "time": ...}``),
evaluation records (``eval/<dataset>/<metric>`` keys) and notes (``{"note": "resuming from step 300"}``). A resumed
run first drops the records of steps after its checkpoint, so no step is ever logged twice.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

from clipforge._atomic import write_text_atomic
from clipforge.progress import progress
from clipforge.training.config import LogConfig

logger = logging.getLogger("clipforge")
METRICS_FILE = "metrics.jsonl"


def _parse(text: str) -> tuple[list[dict], int]:
    """(records, lines that are not JSON objects, e.g. cut by a crash)."""
    out, bad = [], 0
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            out.append(record)
        else:
            bad += 1
    return out, bad


def read_records(path: Path) -> list[dict]:
    """The records of a metrics file (lines that are not JSON objects, e.g. cut by a crash, are skipped)."""
    if not path.is_file():
        return []
    return _parse(path.read_text(encoding="utf-8", errors="replace"))[0]


def last_value(path: Path, key: str) -> float:
    """The last logged value of ``key`` (NaN when never logged)."""
    values = [r[key] for r in read_records(path) if isinstance(r.get(key), (int, float))]
    return float(values[-1]) if values else math.nan


def last_evaluation(path: Path) -> dict[str, float]:
    """The metrics of the last evaluation record, without the ``eval/`` prefix (empty when none)."""
    for record in reversed(read_records(path)):
        values = {k[len("eval/"):]: v for k, v in record.items() if k.startswith("eval/")}
        if values:
            return values
    return {}


def _truncate_after(path: Path, step: int) -> None:
    """Keep only records up to ``step`` (a resumed run re-logs the steps after its checkpoint)."""
    if not path.is_file():
        return
    records, bad = _parse(path.read_text(encoding="utf-8", errors="replace"))
    kept = [r for r in records if not isinstance(r.get("step"), int) or r["step"] <= step]
    if bad or len(kept) != len(records):
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))


class MetricsLogger:
    def __init__(self, workdir: Path, cfg: LogConfig, *, enabled: bool, total_steps: int, start_step: int = 0,
                 samples_per_step: int = 0):
        self.cfg, self.enabled, self.total, self.start_step = cfg, enabled, total_steps, start_step
        self._file = self._tb = self._wandb = self._bar = None
        if not enabled:
            return
        workdir.mkdir(parents=True, exist_ok=True)
        _truncate_after(workdir / METRICS_FILE, start_step)
        self._file = open(workdir / METRICS_FILE, "a", buffering=1, encoding="utf-8")
        if cfg.tensorboard:
            self._tb = self._open_tensorboard(workdir)
        if cfg.wandb:
            self._wandb = self._open_wandb(workdir)
        self._bar = progress(total=total_steps, initial=start_step, desc="train", unit="step",
                             enabled=cfg.progress, every=max(1.0, float(os.environ.get("CLIPFORGE_LOG_EVERY", 10))))

    def _open_tensorboard(self, workdir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.warn("log.tensorboard=true but tensorboard is not installed (pip install tensorboard); skipping")
            return None
        return SummaryWriter(str(workdir / "tensorboard"))

    def _open_wandb(self, workdir: Path):
        try:
            import wandb
        except ImportError:
            self.warn("log.wandb=true but wandb is not installed (pip install wandb); skipping")
            return None
        return wandb.init(dir=str(workdir), resume="allow")

    def warn(self, message: str) -> None:
        if self.enabled:
            logger.warning(message)
            if self._file:
                self._file.write(json.dumps({"warning": message, "time": time.time()}) + "\n")

    def note(self, message: str) -> None:
        """A line for the reader of the log (and stderr): resumes, changed settings."""
        if self.enabled:
            logger.warning(message)
            self._file.write(json.dumps({"note": message, "step": self.start_step, "time": time.time()}) + "\n")

    def step(self, step: int, values: dict[str, float], force: bool = False) -> None:
        """Record ``values`` at ``step`` when it is a logging step (every ``log.every_steps``, the last step, or
        ``force`` for evaluations); the progress display advances on every call for a new step."""
        if not self.enabled:
            return
        if self._bar is not None and step > self._bar.n:
            self._bar.update(step - self._bar.n)
            shown = {k: v for k, v in values.items() if k in ("loss", "samples_per_s", "lr")}
            if shown:
                self._bar.set_postfix(**{k: round(v, 4) for k, v in shown.items()})
        if not (force or step % max(1, self.cfg.every_steps) == 0 or step == self.total):
            return
        self._file.write(json.dumps({"step": step, **values, "time": time.time()}) + "\n")
        if self._tb:
            for key, value in values.items():
                self._tb.add_scalar(key, value, step)
        if self._wandb:
            self._wandb.log(values, step=step)
        if force and any(k.startswith("eval/") for k in values):
            logger.info("step %d: %s", step, " ".join(f"{k[5:]}={v:.4g}" for k, v in values.items()
                                                      if isinstance(v, float)))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._file:
            self._file.close()
        if self._tb:
            self._tb.close()
        if self._wandb:
            self._wandb.finish()
