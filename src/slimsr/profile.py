"""Efficiency figures of an SR network, each in a stated convention.

The field ranks models by parameters, FLOPs, activations, conv count, runtime and peak memory,
and the tools behind the published numbers disagree on what a FLOP is. So every FLOPs figure
here carries the name of its convention (`CONVENTIONS`):

- `ntire2022`: the NTIRE 2022 efficient-SR harness (`utils/model_summary.py`), by forward hooks
  on module types: conv k_h*k_w*C_in*C_out/groups*H_out*W_out multiply-accumulates without
  bias; ReLU/PReLU/ELU/LeakyReLU/ReLU6 modules one per output element; BatchNorm2d one (two if
  affine) per element; Linear `B * in.shape[1] * out.shape[1]`, which for a Linear applied
  channels-last (B, H, W, C) counts B*H*H instead of its real cost. Everything else is free.
  This is the FLOPs column of the NTIRE 2022 report and of FMEN's Table 4.
- `macs`: every multiply-accumulate of the conv, linear and matmul (attention) ops, bias
  excluded, nothing else. The "Mult-Adds" of most SR papers, counted correctly.
- `paper`: the per-module rules of thop 0.0.31, the counter the BSRN authors used: conv MACs
  plus one op per output element of a biased conv; Linear in_features per output element;
  LeakyReLU one per element; BatchNorm two per element; adaptive average pooling (k+1) per
  output; Upsample modules (bilinear 11 per output). Functional ops, attention matmuls, GELU,
  sigmoid and max-pooling are free. It reproduces BSRN's published figures exactly.
- `fvcore`: the rules of fvcore 0.1.5 (NTIRE 2024/2025), one MAC = one FLOP, counted here by
  dispatch tracing instead of fvcore's JIT trace: conv, linear and matmul MACs; LayerNorm and
  GroupNorm 5 per element (4 without affine), eval BatchNorm 2 (1); bilinear upsampling 4 and
  nearest 1 per output element; adaptive average pooling 1 per input element.

Module-based conventions see modules, not functions. Where slimsr writes an official module
functionally (CCA's global average pool is `x.mean` here, `nn.AdaptiveAvgPool2d` officially),
`_OFFICIAL_EQUIVALENTS` adds what the tool would have counted on the official module, so the
figures are those of the official graph. Counting runs on the meta device: no memory and no
arithmetic, so a 1280x720 output of a 43M-parameter EDSR costs nothing to count.

Activations and conv count follow the NTIRE harness: hooks on `nn.Conv2d`/`nn.ConvTranspose2d`
only, summing output elements and counting calls (a conv used twice counts twice).

Runtime: CPU wall clock with a fixed thread count, warm-up runs timed and reported separately,
median and spread of the rest; on CUDA the NTIRE protocol (CUDA events then synchronize; the
first, cold call is reported as NTIRE times it) plus the warmed-up median. Peak memory: on CUDA
`max_memory_allocated` after a reset (weights and input included, as NTIRE reports it); on CPU
the increase of peak resident memory during one forward pass, measured in a child process so
that nothing else of this process's history is in the figure.

Everything profiles the raw network (`SRModel.net`) at its official input range, like the
NTIRE harness.
"""

from __future__ import annotations

import copy
import ctypes
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from slimsr.archs.blocks import CCALayer, ChannelLinear
from slimsr.errors import SlimsrError
from slimsr.inference_form import check_inference_dtype, inference_config, prepare_for_inference
from slimsr.registry import ModelInfo, count_parameters, default_registry, get_model_info

CONVENTIONS: tuple[str, ...] = ("ntire2022", "macs", "paper", "fvcore")
CONVENTION_NOTES: dict[str, str] = {
    "ntire2022": "NTIRE 2022 harness: conv MACs w/o bias + ReLU-family/BN numel + its Linear rule",
    "macs": "multiply-accumulates of conv / linear / matmul, no bias",
    "paper": "thop 0.0.31 (BSRN's counter): conv MACs + 1 per biased conv output, Linear, pools",
    "fvcore": "fvcore 0.1.5 (NTIRE 2024/25): MACs + norms + upsampling + adaptive pooling",
}

aten = torch.ops.aten


# -- sizes -------------------------------------------------------------------------------------


def parse_size(text: str) -> tuple[int, int]:
    """'1280x720' (W x H, as image sizes are written) -> (H, W); a single number is square."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise SlimsrError(f"size {text!r}: expected WxH, e.g. 256x256 or 1280x720") from None
    if len(nums) == 1:
        nums = nums * 2
    if len(nums) != 2 or min(nums) < 1:
        raise SlimsrError(f"size {text!r}: expected WxH with positive integers")
    return nums[1], nums[0]


def lr_size_for_output(output_hw: tuple[int, int], scale: int) -> tuple[int, int]:
    """The LR size whose x`scale` output is (at most) `output_hw`: floor(H/s) x floor(W/s).

    The papers' "Mult-Adds for a 1280x720 output" use this: FMEN's 77.2 G and BSRN's 33.3 G at
    x3 come out of a 426x240 input, not 427x240.
    """
    return output_hw[0] // scale, output_hw[1] // scale


# -- counting ----------------------------------------------------------------------------------


def _spatial(t: Tensor) -> int:
    return math.prod(t.shape[2:])


def _linear_shapes(m: nn.Module, x: Tensor, y: Tensor) -> tuple[torch.Size, torch.Size]:
    """Input/output shapes of a Linear as the official module sees them.

    A `ChannelLinear` receives NCHW and permutes inside; the official BSRN-S `nn.Linear` is
    called on the permuted (B, H, W, C) tensor, and hook-based counters read that shape.
    """
    if isinstance(m, ChannelLinear) and x.dim() == 4:
        return x.permute(0, 2, 3, 1).shape, y.permute(0, 2, 3, 1).shape
    return x.shape, y.shape


_NTIRE_ACTS = (nn.ReLU, nn.PReLU, nn.ELU, nn.LeakyReLU, nn.ReLU6)


def ntire2022_ops(m: nn.Module, x: Tensor, y: Tensor) -> int:
    """The NTIRE 2022 harness's count for one call of module `m` (0 for unsupported types)."""
    if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d)):
        per_position = math.prod(m.kernel_size) * m.in_channels * (m.out_channels // m.groups)
        return per_position * y.shape[0] * _spatial(y)
    if isinstance(m, _NTIRE_ACTS):
        return y.numel()
    if isinstance(m, nn.Linear):
        xs, ys = _linear_shapes(m, x, y)
        if len(xs) == 1:
            return xs[0] * ys[0]
        return xs[0] * xs[1] * ys[1]
    if isinstance(m, nn.BatchNorm2d):
        return y.shape[0] * m.num_features * _spatial(y) * (2 if m.affine else 1)
    return 0


_UPSAMPLE_OPS = {"nearest": 0, "linear": 5, "bilinear": 11, "bicubic": 224 + 35, "trilinear": 31}


def _global_pool_paper(x: Tensor) -> int:
    """thop's adaptive-average-pool rule for an output of 1x1: (H*W + 1) per output element."""
    return (_spatial(x) + 1) * x.shape[0] * x.shape[1]


def paper_ops(m: nn.Module, x: Tensor, y: Tensor) -> int:
    """thop 0.0.31's count for one call of module `m` (0 for modules it has no rule for)."""
    if isinstance(m, nn.modules.conv._ConvNd):
        kernel = math.prod(m.kernel_size)
        return y.numel() * (m.in_channels // m.groups * kernel + (m.bias is not None))
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return 2 * x.numel()
    if isinstance(m, nn.LeakyReLU):
        return x.numel()
    if isinstance(m, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)):
        return y.numel()
    if isinstance(m, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)):
        kernel = math.prod(a // b for a, b in zip(x.shape[2:], y.shape[2:]))
        return (kernel + 1) * y.numel()
    if isinstance(m, nn.Linear):
        return m.in_features * y.numel()
    if isinstance(m, nn.Upsample):
        return _UPSAMPLE_OPS.get(m.mode, 0) * y.numel()
    return 0


_OFFICIAL_EQUIVALENTS: dict[type[nn.Module], dict[str, Callable[[Tensor], int]]] = {
    # Official CCA pools with nn.AdaptiveAvgPool2d(1); slimsr's CCALayer takes x.mean.
    CCALayer: {"paper": _global_pool_paper, "fvcore": lambda x: x.numel()},
}


def _mm(a: Tensor, b: Tensor) -> int:
    return a.shape[0] * a.shape[1] * b.shape[-1]


def _bmm(a: Tensor, b: Tensor) -> int:
    return a.shape[0] * a.shape[1] * a.shape[2] * b.shape[-1]


def _conv(args: tuple, out: Tensor) -> int:
    x, w, transposed = args[0], args[1], bool(args[6])
    return x.shape[0] * math.prod(w.shape) * math.prod((x if transposed else out).shape[2:])


def _sdpa(args: tuple, out: Any) -> int:
    q, k, v = args[0], args[1], args[2]
    return math.prod(q.shape[:-1]) * k.shape[-2] * (q.shape[-1] + v.shape[-1])


_MAC_RULES: dict[Any, Callable[[tuple, Any], int]] = {
    aten.convolution: _conv,
    aten._convolution: _conv,
    aten.mm: lambda a, o: _mm(a[0], a[1]),
    aten.addmm: lambda a, o: _mm(a[1], a[2]),
    aten.bmm: lambda a, o: _bmm(a[0], a[1]),
    aten.baddbmm: lambda a, o: _bmm(a[1], a[2]),
    aten.mv: lambda a, o: a[0].numel(),
}
_SDPA_OPS = tuple(
    getattr(aten, name)
    for name in (
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
    )
    if hasattr(aten, name)
)


def _norm(x: Tensor, weight: Any, training: bool = True) -> int:
    if training:
        return x.numel() * (5 if weight is not None else 4)
    return x.numel() * (2 if weight is not None else 1)


_FVCORE_EXTRA_RULES: dict[Any, Callable[[tuple, Any], int]] = {
    aten.native_layer_norm: lambda a, o: _norm(a[0], a[2]),
    aten.native_group_norm: lambda a, o: _norm(a[0], a[1]),
    aten._native_batch_norm_legit_no_training: lambda a, o: _norm(a[0], a[1], False),
    aten._native_batch_norm_legit: lambda a, o: _norm(a[0], a[1], bool(a[5])),
    aten.native_batch_norm: lambda a, o: _norm(a[0], a[1], bool(a[5])),
    aten.upsample_bilinear2d: lambda a, o: 4 * o.numel(),
    aten.upsample_nearest2d: lambda a, o: o.numel(),
    aten._adaptive_avg_pool2d: lambda a, o: a[0].numel(),
    aten.grid_sampler_2d: lambda a, o: 4 * o.numel(),
}


@dataclass
class _Tally:
    flops: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CONVENTIONS, 0))
    activations: int = 0
    convs: int = 0


class _OpCounter(TorchDispatchMode):
    """Counts `macs` and `fvcore` from the aten ops a forward pass dispatches."""

    def __init__(self, tally: _Tally) -> None:
        super().__init__()
        self.tally = tally

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        out = func(*args, **(kwargs or {}))
        packet = func.overloadpacket
        rule = _MAC_RULES.get(packet)
        if rule is not None:
            n = rule(args, out)
            self.tally.flops["macs"] += n
            self.tally.flops["fvcore"] += n
        elif packet in _SDPA_OPS:
            self.tally.flops["macs"] += _sdpa(args, out)  # fvcore 0.1.5 has no rule for SDPA
        else:
            extra = _FVCORE_EXTRA_RULES.get(packet)
            if extra is not None:
                self.tally.flops["fvcore"] += extra(args, out)
        return out


@contextmanager
def _module_hooks(net: nn.Module, tally: _Tally) -> Iterator[None]:
    """Forward hooks for the module-based conventions, activations and conv calls."""

    def hook(m: nn.Module, inputs: tuple, output: Any) -> None:
        if not inputs or not isinstance(inputs[0], Tensor) or not isinstance(output, Tensor):
            return
        x = inputs[0]
        tally.flops["ntire2022"] += ntire2022_ops(m, x, output)
        tally.flops["paper"] += paper_ops(m, x, output)
        for conv, rule in _OFFICIAL_EQUIVALENTS.get(type(m), {}).items():
            tally.flops[conv] += rule(x)
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            tally.activations += output.numel()
            tally.convs += 1

    handles = [m.register_forward_hook(hook) for m in net.modules()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@dataclass(frozen=True)
class Complexity:
    """Counts of one forward pass at one input size (batch 1)."""

    input_hw: tuple[int, int]
    output_hw: tuple[int, int]
    flops: dict[str, int]
    activations: int
    convs: int


def _meta_copy(net: nn.Module) -> nn.Module:
    """A copy of `net` whose parameters and buffers live on the meta device (shapes only);
    the weights themselves are never copied."""
    memo: dict[int, Any] = {}
    for buf in net.buffers():
        memo[id(buf)] = buf.detach().to("meta")
    for p in net.parameters():
        memo[id(p)] = nn.Parameter(p.detach().to("meta"), requires_grad=False)
    return copy.deepcopy(net, memo)


def count_complexity(
    net: nn.Module, input_hw: tuple[int, int], in_channels: int = 3, on_meta: bool = True
) -> Complexity:
    """FLOPs in every convention, activations and conv calls for a 1 x C x H x W input.

    Runs on a meta copy of `net` (no memory, no arithmetic); `on_meta=False` runs the network
    itself on a zero input, for networks whose forward reads tensor values.
    """
    tally = _Tally()
    target = _meta_copy(net) if on_meta else net
    ref = next(iter(target.parameters()), None)
    device = torch.device("meta") if on_meta else (ref.device if ref is not None else "cpu")
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    x = torch.zeros(1, in_channels, *input_hw, device=device, dtype=dtype)
    was_training = target.training
    target.eval()
    try:
        with torch.no_grad(), _module_hooks(target, tally), _OpCounter(tally):
            y = target(x)
    finally:
        target.train(was_training)
    return Complexity(
        tuple(input_hw), tuple(y.shape[-2:]), tally.flops, tally.activations, tally.convs
    )


def complexity(net: nn.Module, input_hw: tuple[int, int]) -> Complexity:
    """`count_complexity` on meta tensors, or on real ones where the forward needs values."""
    try:
        return count_complexity(net, input_hw, on_meta=True)
    except (NotImplementedError, RuntimeError):
        return count_complexity(net, input_hw, on_meta=False)


# -- runtime -----------------------------------------------------------------------------------


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


# -- memory ------------------------------------------------------------------------------------


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


# -- the report --------------------------------------------------------------------------------


def _twin_forms(info: ModelInfo | None, scale: int, kwargs: dict[str, Any]) -> dict[str, int]:
    """Parameters of both forms of a re-parameterisable model (train-time and deploy)."""
    if info is None:
        return {}
    train_name = deploy_name = None
    if info.deploy_form is not None:
        train_name, deploy_name = info.name, info.deploy_form
    else:
        trains = [i.name for i in default_registry() if i.deploy_form == info.name]
        if trains:
            train_name, deploy_name = trains[0], info.name
    if train_name is None or deploy_name is None:
        return {}
    forms = {}
    for form, name in (("train", train_name), ("deploy", deploy_name)):
        with torch.device("meta"):
            forms[form] = count_parameters(get_model_info(name).build(scale, **kwargs))
    return forms


@dataclass
class ProfileReport:
    """Everything `slimsr profile` prints, JSON-ready through `to_dict`."""

    model: str
    scale: int
    input_range: float
    params: int
    params_forms: dict[str, int]
    complexity: Complexity
    output_size_mode: bool
    """True when the size was given as an output size (the papers' "for a 1280x720 output")."""
    runtime: Timing | None = None
    memory: Memory | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        c = self.complexity
        return {
            "model": self.model,
            "scale": self.scale,
            "input_range": self.input_range,
            "input_hw": list(c.input_hw),
            "output_hw": list(c.output_hw),
            "size_given_as": "output" if self.output_size_mode else "input",
            "params": self.params,
            "params_forms": self.params_forms,
            "flops": dict(c.flops),
            "flops_conventions": dict(CONVENTION_NOTES),
            "activations": c.activations,
            "convs": c.convs,
            "runtime": self.runtime.to_dict() if self.runtime else None,
            "memory": self.memory.to_dict() if self.memory else None,
            "settings": self.settings,
        }


def profile_model(
    model: Any,
    *,
    input_hw: tuple[int, int] | None = None,
    output_hw: tuple[int, int] | None = None,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    warmup: int = 2,
    repeats: int = 10,
    channels_last: bool | None = None,
    compile: bool = False,
    fuse: bool | None = None,
    runtime: bool = True,
    memory: bool = True,
    dtype: torch.dtype = torch.float32,
) -> ProfileReport:
    """Profile an `SRModel`'s raw network at its official input range.

    Give the LR `input_hw` (default 256x256, the NTIRE setting) or an `output_hw` (the papers'
    "for a 1280x720 output": the input is floor(H/s) x floor(W/s)). Counting never runs real
    arithmetic; `runtime` and `memory` do (CPU: `threads` fixed; memory in a child process),
    on the fast inference path (`slimsr.inference_form.prepare_for_inference`: `fuse`,
    `channels_last`, `compile`; None picks the measured defaults) in `dtype` (float16 needs
    CUDA; architectures refuse precisions they are not safe in). Counts are dtype-independent.
    """
    if input_hw is not None and output_hw is not None:
        raise SlimsrError("give an input size or an output size, not both")
    info: ModelInfo = model.info
    scale = int(model.scale)
    lr_hw = lr_size_for_output(output_hw, scale) if output_hw else (input_hw or (256, 256))
    if min(lr_hw) < info.min_size:
        raise SlimsrError(
            f"{info.name} needs inputs of at least {info.min_size}x{info.min_size} px; "
            f"the input would be {lr_hw[1]}x{lr_hw[0]}"
        )
    dev = torch.device(device)
    if runtime or memory:
        check_inference_dtype(model, dtype, dev)
    net: nn.Module = model.net
    report = ProfileReport(
        model=info.name,
        scale=scale,
        input_range=info.input_range,
        params=count_parameters(net),
        params_forms=_twin_forms(info, scale, dict(getattr(model, "kwargs", {}) or {})),
        complexity=complexity(net, lr_hw),
        output_size_mode=output_hw is not None,
    )
    report.settings = {
        "device": str(dev),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "dtype": str(dtype).removeprefix("torch."),
    }
    if not (runtime or memory):
        return report
    run_net = prepare_for_inference(
        copy.deepcopy(net),
        dev,
        dtype,
        channels_last,
        compile,
        fuse=fuse,
        family=info.family,
        name=info.name,
    )
    cfg = inference_config(run_net)
    report.settings.update(channels_last=cfg.channels_last, compile=cfg.compiled, fused=cfg.fused)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, *lr_hw, generator=gen) * info.input_range
    x = x.to(dev, dtype).contiguous(memory_format=cfg.memory_format)
    if dev.type == "cuda":
        if runtime:
            report.runtime = time_cuda(run_net, x, warmup=warmup, repeats=repeats)
        if memory:
            report.memory = cuda_peak_memory(run_net, x)
        report.settings["gpu"] = torch.cuda.get_device_name(dev)
        return report
    if hasattr(os, "getloadavg"):
        report.settings["load_average_1m"] = round(os.getloadavg()[0], 2)
        report.settings["cpu_count"] = os.cpu_count()
    if runtime:
        report.runtime = time_cpu(run_net, x, threads=threads, warmup=warmup, repeats=repeats)
    used_threads = report.runtime.threads if report.runtime else threads
    report.settings["threads"] = used_threads or torch.get_num_threads()
    if memory:
        report.memory = cpu_peak_memory(
            net,
            tuple(x.shape),
            info.input_range,
            threads=report.settings["threads"],
            channels_last=cfg.channels_last,
            fuse=cfg.fused,
            dtype=dtype,
        )
    return report


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


def _main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--rss-child":
        print(json.dumps(_rss_child(argv[1])))
        return 0
    print("usage: python -m slimsr.profile --rss-child SPEC (internal; use `slimsr profile`)")
    return 2


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
