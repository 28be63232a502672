"""Run metrics: JSON lines always; TensorBoard and Weights & Biases when installed and asked for; a progress line
with samples/s, loss and ETA. Only the main rank writes."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from clipforge.training.config import LogConfig


class MetricsLogger:
    def __init__(self, workdir: Path, cfg: LogConfig, *, enabled: bool, total_steps: int, start_step: int = 0):
        self.cfg, self.enabled, self.total, self.start_step = cfg, enabled, total_steps, start_step
        self.started = time.perf_counter()
        self._file = self._tb = self._wandb = None
        if not enabled:
            return
        workdir.mkdir(parents=True, exist_ok=True)
        self._file = open(workdir / "metrics.jsonl", "a", buffering=1)
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self.warn("log.tensorboard=true but tensorboard is not installed (pip install tensorboard); skipping")
            else:
                self._tb = SummaryWriter(str(workdir / "tensorboard"))
        if cfg.wandb:
            try:
                import wandb
            except ImportError:
                self.warn("log.wandb=true but wandb is not installed (pip install wandb); skipping")
            else:
                self._wandb = wandb.init(dir=str(workdir), resume="allow")

    def warn(self, message: str) -> None:
        if self.enabled:
            print(f"[clipforge] {message}", file=sys.stderr, flush=True)
            if self._file:
                self._file.write(json.dumps({"warning": message, "time": time.time()}) + "\n")

    def step(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        is_log_step = step % max(1, self.cfg.every_steps) == 0 or step == self.total or \
            any(k.startswith("eval/") for k in values)
        if not is_log_step:
            return
        self._file.write(json.dumps({"step": step, **values, "time": time.time()}) + "\n")
        if self._tb:
            for key, value in values.items():
                self._tb.add_scalar(key, value, step)
        if self._wandb:
            self._wandb.log(values, step=step)
        if self.cfg.progress:
            self._progress(step, values)

    def _progress(self, step: int, values: dict[str, float]) -> None:
        done = step - self.start_step
        elapsed = time.perf_counter() - self.started
        eta = elapsed / max(1, done) * (self.total - step)
        shown = " ".join(f"{k}={v:.4g}" for k, v in values.items() if k in ("loss", "samples_per_s", "lr") or
                         k.startswith("eval/"))
        print(f"step {step}/{self.total} {shown} eta={eta:.0f}s", flush=True)

    def close(self) -> None:
        if self._file:
            self._file.close()
        if self._tb:
            self._tb.close()
        if self._wandb:
            self._wandb.finish()
