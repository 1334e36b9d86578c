"""What a run reports: a JSONL event log (always), TensorBoard scalars (when installed), and a
console view (a rich progress bar on a terminal, plain lines otherwise)."""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/Inf as strings, tensors/numpy scalars as floats."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Path):
        return str(value)
    return value


class EventLog:
    """`train.jsonl`: one JSON object per line (`event`, `time`, fields); appended on resume."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._file = open(path, "a", encoding="utf-8") if path is not None else None  # noqa: SIM115

    def write(self, event: str, **fields: Any) -> None:
        if self._file is None:
            return
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        record = {"event": event, "time": stamp, **_clean(fields)}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class Scalars:
    """TensorBoard scalars, or nothing when `tensorboard` is not installed (said once)."""

    def __init__(self, folder: Path | None, enabled: bool) -> None:
        self._writer = None
        self.unavailable = False
        if folder is None or not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.unavailable = True
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._writer = SummaryWriter(str(folder))

    def add(self, iteration: int, values: dict[str, float]) -> None:
        if self._writer is None:
            return
        for key, value in values.items():
            if value is not None and math.isfinite(float(value)):
                self._writer.add_scalar(key, float(value), iteration)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None


Mode = Literal["auto", "bar", "lines", "none"]


class ConsoleView:
    """Progress on the console: a bar (it/s, loss, lr, ETA) or one line per report."""

    def __init__(self, mode: Mode, total: int, start: int, enabled: bool = True) -> None:
        self.console = Console(file=sys.stderr, highlight=False)
        if not enabled:
            mode = "none"
        elif mode == "auto":
            mode = "bar" if self.console.is_terminal else "lines"
        self.mode = mode
        self.total = total
        self._progress: Progress | None = None
        self._task = None
        self._started = time.perf_counter()
        self._start_iter = start
        if mode == "bar":
            self._progress = Progress(
                TextColumn("[bold]{task.completed}/{task.total}"),
                BarColumn(),
                TextColumn("{task.fields[speed]}"),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("lr {task.fields[lr]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(
                "train", total=total, completed=start, speed="", loss="-", lr="-"
            )

    def step(self, iteration: int, loss: float | None = None, lr: float | None = None) -> None:
        if self._progress is None or self._task is None:
            return
        done = iteration - self._start_iter
        rate = done / max(time.perf_counter() - self._started, 1e-9)
        fields: dict[str, Any] = {"speed": f"{rate:.2f} it/s"}
        if loss is not None:
            fields["loss"] = f"{loss:.4g}"
        if lr is not None:
            fields["lr"] = f"{lr:.2e}"
        self._progress.update(self._task, completed=iteration, **fields)

    def report(self, text: str) -> None:
        """A line kept in the console history (a log line, a validation result)."""
        if self.mode == "none":
            return
        self.console.print(text, markup=False, soft_wrap=True)

    def lines_mode(self) -> bool:
        return self.mode == "lines"

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
