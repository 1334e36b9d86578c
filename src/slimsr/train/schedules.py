"""Learning-rate schedules as pure functions of the iteration.

`lr(t) = base_lr * warmup(t) * shape(t)`. Nothing is accumulated step by step, so a resumed run
sets exactly the learning rate a straight run would have set (BasicSR#327: the schedule did not
advance after resuming). Milestones and cycles count absolute iterations, warm-up included, as
papers state them.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable

from slimsr.train.config import (
    ConstantSchedule,
    CosineSchedule,
    MultiStepSchedule,
    ScheduleConfig,
)

Schedule = Callable[[int], float]
"""iteration (0-based step index) -> factor of the base learning rate."""


def _multistep(cfg: MultiStepSchedule) -> Schedule:
    milestones = list(cfg.milestones)
    return lambda t: cfg.gamma ** bisect.bisect_right(milestones, t)


def _cosine(cfg: CosineSchedule, iterations: int, base_lr: float) -> Schedule:
    """Cosine annealing with restarts (SGDR); one cycle over the whole run by default."""
    periods = list(cfg.periods or [iterations])
    weights = list(cfg.restart_weights or [1.0] * len(periods))
    starts = [sum(periods[:i]) for i in range(len(periods))]
    floor = cfg.eta_min / base_lr

    def factor(t: int) -> float:
        i = bisect.bisect_right(starts, t) - 1
        if t >= starts[-1] + periods[-1]:
            return floor
        progress = (t - starts[i]) / periods[i]
        return floor + weights[i] * (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def build_schedule(cfg: ScheduleConfig, iterations: int, base_lr: float) -> Schedule:
    if isinstance(cfg, MultiStepSchedule):
        shape = _multistep(cfg)
    elif isinstance(cfg, CosineSchedule):
        shape = _cosine(cfg, iterations, base_lr)
    elif isinstance(cfg, ConstantSchedule):
        shape = lambda t: 1.0  # noqa: E731
    else:  # pragma: no cover - the config union is closed
        raise TypeError(f"unknown schedule {cfg!r}")
    warmup = cfg.warmup_iters
    if warmup == 0:
        return shape
    return lambda t: shape(t) * min(1.0, (t + 1) / warmup)
