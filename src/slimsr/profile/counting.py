"""FLOPs, activations and conv count of an SR network, each FLOPs figure in a named convention.

The field ranks models by FLOPs, and the tools behind the published numbers disagree on what a
FLOP is. So every FLOPs figure here carries the name of its convention (`CONVENTIONS`):

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
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from slimsr.archs.blocks import CCALayer, ChannelLinear

CONVENTIONS: tuple[str, ...] = ("ntire2022", "macs", "paper", "fvcore")
CONVENTION_NOTES: dict[str, str] = {
    "ntire2022": "NTIRE 2022 harness: conv MACs w/o bias + ReLU-family/BN numel + its Linear rule",
    "macs": "multiply-accumulates of conv / linear / matmul, no bias",
    "paper": "thop 0.0.31 (BSRN's counter): conv MACs + 1 per biased conv output, Linear, pools",
    "fvcore": "fvcore 0.1.5 (NTIRE 2024/25): MACs + norms + upsampling + adaptive pooling",
}

aten = torch.ops.aten


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
