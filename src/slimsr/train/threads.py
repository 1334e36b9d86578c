"""Will this training's CPU throughput collapse under the machine's other load?

PyTorch's CPU kernels split each operation across an OpenMP team of `torch.get_num_threads()`
threads that meet at a barrier after every parallel region, and a thread that reaches the
barrier first spin-waits for the others. With more runnable threads than cores, one of the team
is often descheduled, and every barrier then waits for it to get a time slice back: two 2-thread
trainings on a 2-core machine were measured 4x slower per step each (10-20x under heavier load),
not the 2x of fair sharing (docs/training.md).
A 1-thread process has no barrier and only shares the cores, so it slows in proportion.

The check reads the 1-minute load average once per process, before the first training of the
process adds its own threads to it (a `slimsr compress` runs several trainings in one process:
its later stages report the figure read at the start).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

MARGIN = 0.5
"""Load above the cores tolerated before warning: the load average is a noisy mean of runnable
tasks, and short-lived neighbours (a shell, an editor) should not trigger it."""


@dataclass(frozen=True)
class CpuLoad:
    """What the check saw: the 1-minute load, this process's threads, the usable CPUs."""

    load_1m: float
    threads: int
    cpus: int
    warning: str | None

    def as_dict(self) -> dict[str, object]:
        return {
            "load_1m": self.load_1m,
            "threads": self.threads,
            "cpus": self.cpus,
            "warning": self.warning,
        }


def oversubscription_warning(load: float, threads: int, cpus: int) -> str | None:
    """One line when `threads` intra-op threads beside a 1-minute `load` on `cpus` usable CPUs
    would stall at OpenMP barriers; None when the cores suffice or the process has one thread.

    The load is taken as other processes' runnable tasks (read before this process works).
    """
    if threads <= 1 or cpus < 1:
        return None
    if load + threads <= cpus + MARGIN:
        return None
    fit = max(1, int(cpus - load))
    return (
        f"warning: the CPUs are busy (1-min load {load:.2f} on {cpus} usable CPUs) and this "
        f"training uses {threads} threads: OpenMP barriers can make each step several "
        f"times slower; run it with OMP_NUM_THREADS={fit} (and nice -n 10 beside other work), "
        "or on a quiet machine"
    )


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. under taskset or a container)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


_first: CpuLoad | None = None


def check_cpu_load() -> CpuLoad | None:
    """The process's load check: measured at its first call, the same record afterwards.

    None where the platform has no load average (Windows).
    """
    global _first
    if _first is None:
        if not hasattr(os, "getloadavg"):
            return None
        load = round(os.getloadavg()[0], 2)
        threads, cpus = torch.get_num_threads(), usable_cpus()
        _first = CpuLoad(load, threads, cpus, oversubscription_warning(load, threads, cpus))
    return _first
