"""Peak memory of one forward pass of an SR network, and the process's resident memory.

On CUDA: `max_memory_allocated` after a reset (weights and input included, as NTIRE reports it).
On CPU: the increase of peak resident memory during one forward pass, measured in a child
process (`python -m slimsr.profile --rss-child`, see `__main__.py`) so that nothing else of this
process's history (freed heap, earlier peaks, other models) is in the figure.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import tempfile
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from slimsr.errors import SlimsrError
from slimsr.inference_form import inference_config, prepare_for_inference


@dataclass(frozen=True)
class Memory:
    """Peak memory of one forward pass, in bytes."""

    device: str
    method: str
    peak_increase_bytes: int
    """Peak during the forward minus what was held before it (weights, input, runtime)."""
    baseline_bytes: int
    """What was held before the forward; peak = baseline + increase."""

    @property
    def peak_bytes(self) -> int:
        return self.baseline_bytes + self.peak_increase_bytes

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "peak_bytes": self.peak_bytes}


def cuda_peak_memory(net: nn.Module, x: Tensor) -> Memory:
    """`max_memory_allocated` over one forward after a reset; the peak includes the weights and
    the input, as the NTIRE table reports it."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(x.device)
    base = torch.cuda.memory_allocated(x.device)
    with torch.inference_mode():
        net(x)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated(x.device)
    return Memory(str(x.device), "torch.cuda.max_memory_allocated", peak - base, base)


def _proc_status_kb(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def resident_mb() -> float | None:
    """Memory this process holds now (Linux VmRSS, MB); None where /proc is not available."""
    kb = _proc_status_kb("VmRSS")
    return None if kb is None else kb / 1024


def _reset_peak_rss() -> bool:
    """Linux: writing 5 to clear_refs resets VmHWM (the peak RSS) to the current RSS."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _release_free_heap() -> None:
    """Give freed malloc memory back to the OS, so the baseline RSS is what is really held."""
    if sys.platform.startswith("linux"):
        with suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def forward_peak_rss(net: nn.Module, x: Tensor) -> dict[str, Any]:
    """Peak resident memory of one forward of `net` on `x`, in this process (meant to be a
    fresh one). One warm-up forward first (thread pools, kernels, one-time caches), freed heap
    returned to the OS, then the measured forward with the peak-RSS counter reset just before.

    Returns `baseline_kb` (RSS before the measured forward), `peak_kb` and the `method`.
    """
    import gc

    with torch.inference_mode():
        net(x)
        gc.collect()
        _release_free_heap()
        if _reset_peak_rss() and _proc_status_kb("VmHWM") is not None:
            base = _proc_status_kb("VmRSS") or 0
            net(x)
            peak = _proc_status_kb("VmHWM") or 0
            method = "Linux VmHWM - VmRSS around the second forward"
        else:  # no resettable peak: ru_maxrss is the peak since start (kB on Linux, B on macOS)
            import resource

            unit = 1 if sys.platform == "darwin" else 1024
            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit // 1024
            net(x)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit // 1024
            method = "ru_maxrss increase (peak since process start)"
    return {"baseline_kb": base, "peak_kb": peak, "method": method}


def _rss_child(spec_path: str) -> dict[str, Any]:
    """Child side of `cpu_peak_memory`: load the pickled network and measure it."""
    spec = torch.load(spec_path, map_location="cpu", weights_only=False)
    net: nn.Module = spec["net"]
    torch.set_num_threads(spec["threads"])
    fuse = bool(spec.get("fuse", False))
    dtype = getattr(torch, spec.get("dtype", "float32"))
    net = prepare_for_inference(net, "cpu", dtype, spec["channels_last"], False, fuse=fuse)
    x = torch.rand(spec["shape"], generator=torch.Generator().manual_seed(0)) * spec["scale"]
    x = x.to(dtype).contiguous(memory_format=inference_config(net).memory_format)
    return forward_peak_rss(net, x)


def memory_from_rss(result: dict[str, Any]) -> Memory:
    """A `Memory` from what `forward_peak_rss` returned (in a child process)."""
    base, peak = 1024 * int(result["baseline_kb"]), 1024 * int(result["peak_kb"])
    return Memory("cpu", str(result["method"]), max(peak - base, 0), base)


def rss_child_env() -> dict[str, str]:
    """The environment for a memory-measuring child process.

    glibc serves allocations below a dynamic threshold (growing up to 32 MB) from its heap and
    keeps freed heap memory resident, so the peak RSS of identical runs varied by +-20%. A fixed
    128 KiB mmap threshold gives every feature map its own mapping, returned to the OS when
    freed: the peak then follows the live tensors and repeats to within 1 MB.
    """
    env = dict(os.environ)
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(128 * 1024))
    return env


def cpu_peak_memory(
    net: nn.Module,
    input_shape: tuple[int, ...],
    input_range: float = 1.0,
    *,
    threads: int = 1,
    channels_last: bool = False,
    fuse: bool = False,
    dtype: torch.dtype = torch.float32,
    timeout: float = 600.0,
) -> Memory:
    """Increase of peak resident memory during one CPU forward, measured in a fresh process.

    The network is pickled to a private temporary file and loaded by `python -m slimsr.profile
    --rss-child` (environment: `rss_child_env`); the figure excludes the interpreter, torch, the
    weights and the input. `fuse`: measure the fused inference form built in the child.
    """
    with tempfile.TemporaryDirectory(prefix="slimsr-rss-") as tmp:
        spec_path = os.path.join(tmp, "spec.pt")
        spec = {
            "net": net,
            "shape": tuple(input_shape),
            "scale": float(input_range),
            "threads": int(threads),
            "channels_last": bool(channels_last),
            "fuse": bool(fuse),
            "dtype": str(dtype).removeprefix("torch."),
        }
        torch.save(spec, spec_path)
        env = rss_child_env()
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        proc = subprocess.run(
            [sys.executable, "-m", "slimsr.profile", "--rss-child", spec_path],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SlimsrError(f"the memory-measuring child process failed: {tail[0]}")
    return memory_from_rss(json.loads(proc.stdout.strip().splitlines()[-1]))


def main(argv: list[str]) -> int:
    """The child's command line: `--rss-child SPEC` prints `forward_peak_rss` as JSON."""
    if len(argv) == 2 and argv[0] == "--rss-child":
        print(json.dumps(_rss_child(argv[1])))
        return 0
    print("usage: python -m slimsr.profile --rss-child SPEC (internal; use `slimsr profile`)")
    return 2
