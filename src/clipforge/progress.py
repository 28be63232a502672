"""Progress for every long command: a tqdm bar on a terminal, periodic log lines otherwise.

``progress(total=..., desc=..., unit=...)`` returns an object with ``update(n)``, ``set_postfix(**values)`` and
``close()`` (also a context manager). When stderr is a terminal it is a tqdm bar (rate, ETA, postfix values); when
it is not (CI logs, ``nohup``, a pipe) it prints one line every ``every`` seconds and a last line at the end, so
logs stay readable. ``CLIPFORGE_PROGRESS=bar|lines|off`` forces a mode.
"""
from __future__ import annotations

import os
import sys
import time
from typing import IO, Any

_MODES = ("bar", "lines", "off")


def _mode(stream: IO[str], enabled: bool) -> str:
    if not enabled:
        return "off"
    forced = os.environ.get("CLIPFORGE_PROGRESS", "").strip().lower()
    if forced in _MODES:
        return forced
    isatty = getattr(stream, "isatty", None)
    return "bar" if isatty is not None and isatty() else "lines"


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


class LineProgress:
    """Periodic one-line reports: ``desc: n/total unit (rate unit/s, eta mm:ss) key=value ...``."""

    def __init__(self, total: int | None, desc: str, unit: str, initial: int, every: float, stream: IO[str]):
        self.total, self.desc, self.unit, self.every, self.stream = total, desc, unit, every, stream
        self.n, self.start_n = initial, initial
        self.started = self._last = time.perf_counter()
        self.postfix: dict[str, Any] = {}
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self._last >= self.every:
            self._print(now)

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def _print(self, now: float) -> None:
        self._last = now
        elapsed = max(now - self.started, 1e-9)
        rate = (self.n - self.start_n) / elapsed
        done = f"{self.n}/{self.total}" if self.total else str(self.n)
        eta = ""
        if self.total and rate > 0:
            eta = f", eta {_duration((self.total - self.n) / rate)}"
        extra = " ".join(f"{k}={_fmt(v)}" for k, v in self.postfix.items())
        line = f"{self.desc}: {done} {self.unit} ({rate:.3g} {self.unit}/s{eta}, {_duration(elapsed)} elapsed)"
        print(f"{line} {extra}".rstrip(), file=self.stream, flush=True)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self.n > self.start_n:
                self._print(time.perf_counter())

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Off:
    n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, **values: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def progress(total: int | None = None, *, desc: str = "", unit: str = "it", initial: int = 0, enabled: bool = True,
             every: float = 10.0, stream: IO[str] | None = None):
    """A progress reporter (see module doc)."""
    stream = stream or sys.stderr
    mode = _mode(stream, enabled)
    if mode == "off":
        return _Off()
    if mode == "bar":
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, initial=initial, file=stream, dynamic_ncols=True,
                    smoothing=0.1)
    return LineProgress(total, desc, unit, initial, every, stream)
