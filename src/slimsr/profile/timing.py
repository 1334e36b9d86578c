"""Runtime of an SR network's forward pass, on CPU and on CUDA.

CPU: wall clock with a fixed thread count, warm-up runs timed and reported separately, median
and spread of the rest; the timing is worthless on a machine whose cores are busy with other
work, so `busy_cpu_warning` says when that was the case. CUDA: the NTIRE protocol (CUDA events
then synchronize; the first, cold call is reported as NTIRE times it) plus the warmed-up median.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from slimsr.errors import SlimsrError


@dataclass(frozen=True)
class Timing:
    """Runtimes of repeated forward passes, in milliseconds."""

    device: str
    method: str
    threads: int | None
    warmup_ms: list[float]
    """The warm-up runs, in order (the first is the cold start), not in the statistics."""
    times_ms: list[float]

    @property
    def first_ms(self) -> float:
        return (self.warmup_ms or self.times_ms)[0]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def min_ms(self) -> float:
        return min(self.times_ms)

    @property
    def max_ms(self) -> float:
        return max(self.times_ms)

    @property
    def iqr_ms(self) -> float:
        """Inter-quartile range; 0 with fewer than two repeats."""
        if len(self.times_ms) < 2:
            return 0.0
        q = statistics.quantiles(self.times_ms, n=4, method="inclusive")
        return q[2] - q[0]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            first_ms=self.first_ms,
            median_ms=self.median_ms,
            min_ms=self.min_ms,
            max_ms=self.max_ms,
            iqr_ms=self.iqr_ms,
            mean_ms=statistics.fmean(self.times_ms),
        )
        return d


@contextmanager
def cpu_threads(threads: int | None) -> Iterator[int]:
    """Fix torch's intra-op thread count for the block (restored afterwards)."""
    before = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise SlimsrError(f"threads must be >= 1, not {threads}")
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _check_counts(warmup: int, repeats: int) -> None:
    if warmup < 0 or repeats < 1:
        raise SlimsrError(f"need warmup >= 0 and repeats >= 1 (got {warmup}, {repeats})")


def time_cpu(
    net: nn.Module, x: Tensor, *, threads: int | None = None, warmup: int = 2, repeats: int = 10
) -> Timing:
    """Wall-clock time of `net(x)` on the CPU under inference mode, `threads` fixed."""
    _check_counts(warmup, repeats)
    times: list[float] = []
    with cpu_threads(threads) as used, torch.inference_mode():
        for _ in range(warmup + repeats):
            start = time.perf_counter()
            net(x)
            times.append((time.perf_counter() - start) * 1e3)
    return Timing("cpu", "perf_counter", used, times[:warmup], times[warmup:])


def time_cuda(net: nn.Module, x: Tensor, *, warmup: int = 2, repeats: int = 10) -> Timing:
    """The NTIRE protocol: CUDA events around each forward, then synchronize.

    cuDNN benchmarking stays off as in the harness. The first (cold) call is in `warmup_ms`;
    NTIRE's own figure has no warm-up, so `first_ms` is what its table would show for a single
    image, and `median_ms` the steady state.
    """
    _check_counts(warmup, repeats)
    bench = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    times: list[float] = []
    try:
        with torch.inference_mode():
            for _ in range(warmup + repeats):
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                net(x)
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
    finally:
        torch.backends.cudnn.benchmark = bench
    return Timing(str(x.device), "cuda events", None, times[:warmup], times[warmup:])


def busy_cpu_warning(settings: dict[str, Any]) -> str | None:
    """A warning when other processes compete for the cores the timing used.

    With more runnable threads than cores, every intra-op barrier can wait a scheduler time
    slice: a 2-thread run on a 2-core machine with one busy neighbour was measured 30x slower
    than a 1-thread run. Such timings say nothing about the model.
    """
    load, cores, threads = (settings.get(k) for k in ("load_average_1m", "cpu_count", "threads"))
    if load is None or not cores or not threads:
        return None
    others = max(load - 1.0, 0.0)  # the profiling process itself is one runnable task
    if others + threads > cores + 0.5:
        return (
            f"other processes are using the CPU (1-min load {load:.1f} on {cores} cores): "
            f"timings with {threads} threads are unreliable; use --threads "
            f"{max(1, int(cores - others))} or a quiet machine"
        )
    return None
