"""The CPU kernels of the fused forms: oneDNN's fused conv calls, their weight cache, `Act`.

For float32 on a CPU, oneDNN's private ops run a convolution with its activation (or a
residual addition) in one kernel; elsewhere the same results come from plain PyTorch ops.
Also the tensor forms those kernels take (channels-last, (out, in) matrices folded in float64).
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimsr.archs.blocks import gelu

_ONEDNN_FUSION = torch.backends.mkldnn.is_available() and hasattr(
    torch.ops.mkldnn, "_convolution_pointwise"
)


def _onednn(x: Tensor) -> bool:
    """oneDNN's fused conv kernels apply: float32 CPU tensors, mkldnn built and enabled."""
    return (
        _ONEDNN_FUSION
        and torch.backends.mkldnn.enabled
        and x.device.type == "cpu"
        and x.dtype == torch.float32
    )


class Act:
    """An activation that can run in place or as a oneDNN conv post-op."""

    def __init__(self, kind: str | None = None, slope: float = 0.0) -> None:
        if kind not in (None, "gelu", "relu", "leaky_relu", "sigmoid", "silu"):
            raise ValueError(f"unsupported activation {kind!r}")
        self.kind, self.slope = kind, float(slope)

    @classmethod
    def of(cls, module: nn.Module) -> Act:
        """The `Act` of an activation module (GELU must be the exact, erf form)."""
        if isinstance(module, nn.GELU) and module.approximate == "none":
            return cls("gelu")
        if isinstance(module, nn.LeakyReLU):
            return cls("leaky_relu", module.negative_slope)
        if isinstance(module, nn.ReLU):
            return cls("relu")
        if isinstance(module, nn.SiLU):
            return cls("silu")
        raise ValueError(f"no fused form for activation {module!r}")

    def __call__(self, t: Tensor) -> Tensor:
        """Applied in place; returns `t`."""
        if self.kind == "gelu":
            return gelu(t, inplace=True)
        if self.kind == "relu":
            return t.relu_()
        if self.kind == "leaky_relu":
            return F.leaky_relu_(t, self.slope)
        if self.kind == "sigmoid":
            return t.sigmoid_()
        if self.kind == "silu":
            return F.silu(t, inplace=True)
        return t

    def post_op(self) -> tuple[str, list[float], str]:
        """oneDNN's (attr, scalars, algorithm) for this activation."""
        if self.kind is None:
            return "none", [], ""
        if self.kind == "gelu":
            return "gelu", [], "none"  # "none": the exact erf form, not the tanh approximation
        if self.kind == "silu":
            return "swish", [], ""  # oneDNN's swish: x * sigmoid(x)
        return self.kind, [self.slope] if self.kind == "leaky_relu" else [], ""

    def __repr__(self) -> str:
        return f"Act({self.kind!r})" if self.kind != "leaky_relu" else f"Act(leaky {self.slope})"


NO_ACT = Act()


_PACKED: dict[int, tuple[weakref.ref[Tensor], int, Tensor]] = {}


def _packed(weight: Tensor, padding: int, stride: int, groups: int, x: Tensor) -> Tensor:
    """`weight` reordered once into oneDNN's own layout for this conv (cached per tensor,
    dropped with it).

    Given a plain tensor, oneDNN reorders the weights on every call; prepacked, the call skips
    that (measured 1-5% of a fused BSRN / BSRN-S forward, ~20 us per call). The layout is
    chosen for the first input's shape; other shapes stay correct (oneDNN converts if needed).
    """
    key = id(weight)
    entry = _PACKED.get(key)
    if entry is not None and entry[0]() is weight and entry[1] == weight._version:
        return entry[2]  # same tensor, not modified in place since
    packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
        weight.to_mkldnn(), [padding, padding], [stride, stride], [1, 1], groups, list(x.shape)
    )
    ref = weakref.ref(weight, lambda _, k=key: _PACKED.pop(k, None))
    _PACKED[key] = (ref, weight._version, packed)
    return packed


def fused_conv(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    *,
    padding: int = 0,
    stride: int = 1,
    groups: int = 1,
    act: Act = NO_ACT,
) -> Tensor:
    """act(conv2d(x)), one oneDNN kernel where available."""
    if _onednn(x):
        attr, scalars, algorithm = act.post_op()
        pad, st = [padding, padding], [stride, stride]
        packed = _packed(weight, padding, stride, groups, x)
        return torch.ops.mkldnn._convolution_pointwise(
            x, packed, bias, pad, st, [1, 1], groups, attr, scalars, algorithm
        )
    return act(F.conv2d(x, weight, bias, stride, padding, 1, groups))


def fused_conv_add(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    other: Tensor,
    *,
    padding: int = 0,
    groups: int = 1,
    into_other: bool = False,
) -> Tensor:
    """conv2d(x) + other; with `into_other` the sum overwrites `other` (which must not be `x`)."""
    if into_other and other is x:
        raise ValueError("cannot write a convolution's result over its own input")
    if _onednn(x) and other.dtype == x.dtype:
        pad = [padding, padding]
        # The out-of-place oneDNN kernel measured slower than a copy of `other` plus the
        # in-place one (1.5 vs 1.1 ms for a 48-channel depthwise conv at 256x256, 2 threads).
        target = other if into_other else other.clone(memory_format=torch.preserve_format)
        packed = _packed(weight, padding, 1, groups, x)
        return torch.ops.mkldnn._convolution_pointwise_.binary(
            target, x, packed, bias, pad, [1, 1], [1, 1], groups, "add", None, None, [], None
        )
    y = F.conv2d(x, weight, bias, 1, padding, 1, groups)
    return other.add_(y) if into_other else y.add_(other)


def running_sum(total: Tensor | None, part: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """total + conv1x1(part), written into `total`; the first part (`total` None) starts the sum
    and brings the bias. A 1x1 conv over a concatenation, run part by part without the copy."""
    if total is None:
        return fused_conv(part, weight, bias)
    return fused_conv_add(part, weight, None, total, into_other=True)


def channels_last(x: Tensor) -> Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def linear_of(layer: nn.Module) -> tuple[Tensor, Tensor]:
    """(weight (out, in), bias (out)) of a 1x1 conv or a Linear, in float64 for folding."""
    if isinstance(layer, nn.Conv2d):
        if layer.kernel_size != (1, 1) or layer.groups != 1 or layer.stride != (1, 1):
            raise ValueError(f"not a pointwise conv: {layer}")
        w = layer.weight.detach().reshape(layer.out_channels, layer.in_channels)
    elif isinstance(layer, nn.Linear):
        w = layer.weight.detach()
    else:
        raise TypeError(f"not a 1x1 conv or Linear: {type(layer).__name__}")
    b = layer.bias.detach() if layer.bias is not None else torch.zeros(w.shape[0], device=w.device)
    return w.double(), b.double()


def as_pointwise_weight(w: Tensor, like: Tensor) -> Tensor:
    """A (out, in) matrix as a channels-last (out, in, 1, 1) conv weight with `like`'s dtype."""
    return channels_last(w.reshape(*w.shape, 1, 1).to(like.dtype))
