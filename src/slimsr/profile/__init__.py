"""Efficiency figures of an SR network, each in a stated convention.

The field ranks models by parameters, FLOPs, activations, conv count, runtime and peak memory,
and the tools behind the published numbers disagree on what each of them is. Each job has its
own module so that each convention is defined in one place:

- `counting`: FLOPs in every named convention (`CONVENTIONS`), activations and conv calls,
  counted on the meta device;
- `sizes`: `WxH` parsing and the LR size behind the papers' "for a 1280x720 output";
- `timing`: CPU wall clock at a fixed thread count, the NTIRE CUDA-event protocol;
- `memory`: CUDA `max_memory_allocated`, CPU peak RSS measured in a child process
  (`python -m slimsr.profile --rss-child`, `__main__.py`);
- `report`: `profile_model`, which gathers all of them into a `ProfileReport`;
- `table`: the one-row-per-model efficiency table of several reports (`slimsr profile --table`).

This package re-exports their public names, so `from slimsr.profile import X` works for each.
"""

from slimsr.profile.counting import (
    CONVENTION_NOTES,
    CONVENTIONS,
    Complexity,
    complexity,
    count_complexity,
    ntire2022_ops,
    paper_ops,
)
from slimsr.profile.memory import (
    Memory,
    cpu_peak_memory,
    cuda_peak_memory,
    forward_peak_rss,
    memory_from_rss,
    resident_mb,
    rss_child_env,
)
from slimsr.profile.report import ProfileReport, profile_model
from slimsr.profile.sizes import lr_size_for_output, parse_size
from slimsr.profile.timing import Timing, busy_cpu_warning, cpu_threads, time_cpu, time_cuda

__all__ = [
    "CONVENTIONS",
    "CONVENTION_NOTES",
    "Complexity",
    "Memory",
    "ProfileReport",
    "Timing",
    "busy_cpu_warning",
    "complexity",
    "count_complexity",
    "cpu_peak_memory",
    "cpu_threads",
    "cuda_peak_memory",
    "forward_peak_rss",
    "lr_size_for_output",
    "memory_from_rss",
    "ntire2022_ops",
    "paper_ops",
    "parse_size",
    "profile_model",
    "resident_mb",
    "rss_child_env",
    "time_cpu",
    "time_cuda",
]
