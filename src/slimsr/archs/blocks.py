"""Building blocks shared by several families (one definition each).

Module attribute names follow the official code so that state-dict keys stay official.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DIV2K_MEAN = (0.4488, 0.4371, 0.4040)
"""Mean RGB of DIV2K in [0,1], subtracted by EDSR's and SwinIR's official networks."""


def conv3x3(in_ch: int, out_ch: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=bias)


def dcr_to_crd(num_out: int, scale: int) -> Tensor:
    """Index map so that `crd[k] = dcr[perm[k]]` for channel counts `num_out * s^2`.

    The one statement of the two pixel-shuffle channel orders: TF depth_to_space ("DCR")
    reads channel `(i*s + j)*C + c` for output pixel offset (i, j) and colour c; PyTorch
    PixelShuffle ("CRD") reads channel `c*s^2 + i*s + j`.
    """
    s2 = scale * scale
    perm = torch.empty(num_out * s2, dtype=torch.long)
    for c in range(num_out):
        for ij in range(s2):
            perm[c * s2 + ij] = ij * num_out + c
    return perm


def crd_to_dcr(channels: int, scale: int) -> Tensor:
    """Index map `perm` with `dcr = crd[perm]`: the inverse of `dcr_to_crd`."""
    return torch.argsort(dcr_to_crd(channels, scale))


class ChannelsLastPixelShuffle(nn.PixelShuffle):
    """`nn.PixelShuffle` for a network's last op: reads a channels-last tensor as it lies and
    writes a contiguous NCHW image in one copy (torch's kernel on channels-last input keeps
    the layout and measured 1.4x slower at 48 channels, 256x256). Where a conv reads the result,
    keep torch's (see `PixelShuffleUpsampler`). Other layouts take torch's kernel; results are
    identical."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or not x.is_contiguous(memory_format=torch.channels_last):
            return F.pixel_shuffle(x, self.upscale_factor)
        n, c, h, w = x.shape
        s = self.upscale_factor
        pixels = x.permute(0, 2, 3, 1).reshape(n, h, w, c // (s * s), s, s)  # a view
        return pixels.permute(0, 3, 1, 4, 2, 5).reshape(n, c // (s * s), h * s, w * s)


class PixelShuffleUpsampler(nn.Sequential):
    """Conv + PixelShuffle stages (EDSR `tail.0`, SwinIR `upsample`): x2^n or x3.

    torch's own shuffle here: a conv reads its output, and on channels-last input torch's
    kernel writes channels-last (`ChannelsLastPixelShuffle`'s NCHW output made the next conv
    convert it back: EDSRmini x4 1.4x slower).

    Keys are `0` (conv) / `2` (second conv for x4...), exactly as the official Sequential.
    """

    def __init__(self, scale: int, num_feat: int) -> None:
        layers: list[nn.Module] = []
        if scale & (scale - 1) == 0:  # power of two
            for _ in range(int(math.log2(scale))):
                layers += [conv3x3(num_feat, 4 * num_feat), nn.PixelShuffle(2)]
        elif scale == 3:
            layers += [conv3x3(num_feat, 9 * num_feat), nn.PixelShuffle(3)]
        else:
            raise ValueError(f"PixelShuffleUpsampler supports scales 2^n and 3, not {scale}")
        super().__init__(*layers)


class OneStepUpsampler(nn.Sequential):
    """One conv to `out_ch * s^2` channels, then PixelShuffle(s) (the "pixelshuffledirect" tail).

    Used by BSRN (`upsampler.upsampleOneStep`), E-RFDN (`upsampler`), SwinIR-S (`upsample`),
    FMEN (`tail`). Keys: `0.weight`, `0.bias`.
    """

    def __init__(self, in_ch: int, out_ch: int, scale: int, kernel_size: int = 3) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch * scale * scale, kernel_size, padding=kernel_size // 2),
            ChannelsLastPixelShuffle(scale),
        )


def conv1x1(in_ch: int, out_ch: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, bias=bias)


class ChannelLinear(nn.Linear):
    """`nn.Linear` over the channels of an NCHW tensor: a 1x1 conv with a 2-D `(out, in)` weight.

    BSRN-S writes its 1x1 convs as Linear layers on channels-last tensors, so its checkpoints hold
    2-D weights; this keeps those keys and shapes while the rest of the network stays NCHW.
    """

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x.permute(0, 2, 3, 1), self.weight, self.bias).permute(0, 3, 1, 2)


class BSConvU(nn.Module):
    """Blueprint separable conv (unconstrained): pointwise `pw` first, then depthwise `dw`.

    The pointwise step is a bias-free 1x1 conv (BSRN) or, with `linear_pw`, a `ChannelLinear`
    with bias (BSRN-S). Stride and padding apply to the depthwise step.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        linear_pw: bool = False,
    ) -> None:
        super().__init__()
        self.pw: nn.Module = (
            ChannelLinear(in_ch, out_ch) if linear_pw else conv1x1(in_ch, out_ch, False)
        )
        self.dw = nn.Conv2d(out_ch, out_ch, kernel_size, stride, padding, groups=out_ch)

    def forward(self, x: Tensor) -> Tensor:
        return self.dw(self.pw(x))


ConvFactory = Callable[[int, int], nn.Module]
"""Builds a layer from (in_channels, out_channels); how ESA is told which conv flavour to use."""


def conv3x3_down(in_ch: int, out_ch: int) -> nn.Conv2d:
    """3x3, stride 2, no padding: the ESA reduction conv."""
    return nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=0)


class ESA(nn.Module):
    """Enhanced spatial attention (RFDN, BSRN, BSRN-S): one definition, conv flavour injected.

    A 1x1 squeeze to C/4, a strided conv and a 7x7/3 max-pool give a coarse map, refined by
    three 3x3 layers, upsampled bilinearly and turned into a per-pixel sigmoid gate.
    `pointwise` builds conv1/conv_f/conv4, `conv` the padded 3x3s, `down` the stride-2 conv.

    Needs H, W >= 15: the stride-2 conv must leave at least 7 pixels for the pool.
    """

    def __init__(
        self,
        num_feat: int,
        pointwise: ConvFactory = conv1x1,
        conv: ConvFactory = conv3x3,
        down: ConvFactory = conv3x3_down,
        act: Callable[[], nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        f = num_feat // 4
        self.conv1 = pointwise(num_feat, f)
        self.conv_f = pointwise(f, f)
        self.conv_max = conv(f, f)
        self.conv2 = down(f, f)
        self.conv3 = conv(f, f)
        self.conv3_ = conv(f, f)
        self.conv4 = pointwise(f, num_feat)
        self.act = act()

    def forward(self, x: Tensor) -> Tensor:
        squeezed = self.conv1(x)
        coarse = F.max_pool2d(self.conv2(squeezed), kernel_size=7, stride=3)
        coarse = self.act(self.conv_max(coarse))
        coarse = self.conv3_(self.act(self.conv3(coarse)))
        coarse = F.interpolate(coarse, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return x * torch.sigmoid(self.conv4(coarse + self.conv_f(squeezed)))


class CCALayer(nn.Module):
    """Contrast-aware channel attention: gate from per-channel (std + mean) over the image."""

    def __init__(self, num_feat: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = num_feat // reduction
        self.conv_du = nn.Sequential(
            conv1x1(num_feat, hidden), nn.ReLU(), conv1x1(hidden, num_feat), nn.Sigmoid()
        )

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(dim=(2, 3), keepdim=True)
        # Population std written out (not torch.std) so that ONNX export sees plain ops.
        std = (x - mean).pow(2).mean(dim=(2, 3), keepdim=True).sqrt()
        return x * self.conv_du(std + mean)


class DistillationBlock(nn.Module):
    """The feature-distillation trunk shared by RFDN's RFDB and BSRN's ESDB.

    Three stages each split off a distilled 1x1 branch (`c{i}_d`) and refine the rest with a
    residual 3x3 (`c{i}_r`); `c4` condenses the last refinement and `c5` fuses the four
    distilled streams. Subclasses create the layers (plain or blueprint convs) and add their
    attention after `distill`.
    """

    c1_d: nn.Module
    c1_r: nn.Module
    c2_d: nn.Module
    c2_r: nn.Module
    c3_d: nn.Module
    c3_r: nn.Module
    c4: nn.Module
    c5: nn.Module
    act: nn.Module

    def distill(self, x: Tensor) -> Tensor:
        act = self.act
        d1 = act(self.c1_d(x))
        r1 = act(self.c1_r(x) + x)
        d2 = act(self.c2_d(r1))
        r2 = act(self.c2_r(r1) + r1)
        d3 = act(self.c3_d(r2))
        r3 = act(self.c3_r(r2) + r2)
        r4 = act(self.c4(r3))
        return self.c5(torch.cat([d1, d2, d3, r4], dim=1))


# -- inference-time fused forms ----------------------------------------------------------------
#
# `fuse_for_inference()` on BSRN, RFDN and FMEN builds these from trained weights. They compute
# what the plain forward computes (to float rounding) with fewer passes over memory:
# channels-last tensors throughout (depthwise and 3x3 convs run several times faster in oneDNN
# than on NCHW); each concatenation feeding a 1x1 conv replaced by a running sum of 1x1 convs
# over the parts, so no concatenated copy is allocated; chains of linear layers folded into
# one; `conv(x) + x` as one conv; activations and residual additions in place; and, for
# float32 on a CPU, oneDNN's fused conv + activation and conv + add kernels. Their tensors are
# non-persistent buffers: a fused module is never trained and never saved (empty state_dict).

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
        if kind not in (None, "gelu", "relu", "leaky_relu", "sigmoid"):
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
        raise ValueError(f"no fused form for activation {module!r}")

    def __call__(self, t: Tensor) -> Tensor:
        """Applied in place; returns `t`."""
        if self.kind == "gelu":
            return torch.ops.aten.gelu_(t)
        if self.kind == "relu":
            return t.relu_()
        if self.kind == "leaky_relu":
            return F.leaky_relu_(t, self.slope)
        if self.kind == "sigmoid":
            return t.sigmoid_()
        return t

    def post_op(self) -> tuple[str, list[float], str]:
        """oneDNN's (attr, scalars, algorithm) for this activation."""
        if self.kind is None:
            return "none", [], ""
        if self.kind == "gelu":
            return "gelu", [], "none"  # "none": the exact erf form, not the tanh approximation
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


class Workspace:
    """Full-size scratch tensors one forward reuses across its blocks, by name.

    A fresh full-size tensor costs page faults on first touch (glibc hands large blocks back
    to the OS and maps them again), which measured as much as the convolution writing it;
    reusing a few buffers through the forward avoids that. Lives for one forward call.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}

    def get(self, name: str, like: Tensor, channels: int) -> Tensor:
        """A channels-last (N, channels, H, W) tensor shaped after `like`, kept under `name`."""
        n, _, h, w = like.shape
        shape = (n, channels, h, w)
        buf = self._buffers.get(name)
        if (
            buf is None
            or buf.shape != shape
            or buf.dtype != like.dtype
            or buf.device != like.device
        ):
            buf = torch.empty(
                shape, dtype=like.dtype, device=like.device, memory_format=torch.channels_last
            )
            self._buffers[name] = buf
        return buf


class FusedModule(nn.Module):
    """Base of the fused forms: tensors are non-persistent buffers, forward needs no autograd."""

    def buffer(self, name: str, value: Tensor | None) -> None:
        if value is not None and value.dim() == 4:
            value = channels_last(value)
        self.register_buffer(name, value.detach().clone() if value is not None else None, False)

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        raise RuntimeError("a fused inference module holds no trainable state: load the plain net")


class FusedConv(FusedModule):
    """A 3x3 layer of a trunk: a plain conv, or a BSConvU (pointwise, then depthwise).

    `pw_weight` replaces a BSConvU's pointwise matrix (used to fold input replication);
    `residual` prepares `residual()` (act(conv(x) + x)) for a plain conv.
    """

    def __init__(
        self, layer: nn.Module, pw_weight: Tensor | None = None, residual: bool = False
    ) -> None:
        super().__init__()
        self.separable = isinstance(layer, BSConvU)
        conv = layer.dw if isinstance(layer, BSConvU) else layer
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"cannot fuse {type(layer).__name__}")
        self.padding, self.stride, self.groups = conv.padding[0], conv.stride[0], conv.groups
        self.buffer("weight", conv.weight)
        self.buffer("bias", conv.bias)
        # conv(x) + x is one conv whose centre tap has the identity added (exact: the centre tap
        # of a stride-1 'same' conv reads x itself). A BSConvU cannot do this: its depthwise
        # step reads pw(x), not x.
        k = conv.kernel_size
        self.bias_folded = False
        self.identity_folded = (
            residual
            and not self.separable
            and conv.groups == 1
            and conv.in_channels == conv.out_channels
            and conv.stride == (1, 1)
            and k[0] % 2 == 1
            and k == (k[0], k[0])
            and conv.padding == (k[0] // 2, k[0] // 2)
            and conv.dilation == (1, 1)
        )
        if self.identity_folded:
            w = conv.weight.detach().double().clone()
            eye = torch.eye(conv.out_channels, dtype=w.dtype, device=w.device)
            w[:, :, k[0] // 2, k[0] // 2] += eye
            self.buffer("residual_weight", w.to(conv.weight.dtype))
        if isinstance(layer, BSConvU):
            w, b = linear_of(layer.pw)
            w = pw_weight.double() if pw_weight is not None else w
            self.buffer("pw_weight", as_pointwise_weight(w, conv.weight))
            self.buffer("pw_bias", b.to(conv.weight.dtype) if layer.pw.bias is not None else None)
            self._fold_pw_bias(conv, b if layer.pw.bias is not None else None)

    def _fold_pw_bias(self, dw: nn.Conv2d, pw_bias: Tensor | None) -> None:
        """Move a BSConvU's pointwise bias into the depthwise step, for `separable_residual`.

        dw(p + b) = dw(p) + b * (sum of the taps that land inside the image): inside, all nine
        taps (a per-channel constant, added to the depthwise bias); on the one-pixel border,
        the taps over the zero padding are missing, which `_border_fix` subtracts. The GEMM
        then runs without bias, sparing the pass that broadcasts it into the output (~0.9 ms
        of ~2 ms per 48-channel 256x256 step). Only 3x3, padding 1, stride 1 (BSRN-S).
        """
        self.bias_folded = (
            pw_bias is not None
            and dw.kernel_size == (3, 3)
            and dw.padding == (1, 1)
            and dw.stride == (1, 1)
            and dw.groups == dw.in_channels == dw.out_channels
        )
        if not self.bias_folded:
            return
        assert pw_bias is not None
        k = dw.weight.detach().double()[:, 0]  # (C, 3, 3)
        b = pw_bias.double().to(k.device)
        dw_bias = dw.bias.detach().double() if dw.bias is not None else torch.zeros_like(b)
        dtype = dw.weight.dtype
        self.buffer("folded_bias", (dw_bias + b * k.sum((1, 2))).to(dtype))
        # rows: what the top / bottom row loses; columns: left / right; corners: added back,
        # since a corner tap is missing from both its row and its column.
        edges = torch.stack([k[:, 0].sum(1), k[:, 2].sum(1), k[:, :, 0].sum(1), k[:, :, 2].sum(1)])
        corners = torch.stack([k[:, 0, 0], k[:, 0, 2], k[:, 2, 0], k[:, 2, 2]])
        self.buffer("border_edges", (b * edges).to(dtype))  # (4, C)
        self.buffer("border_corners", (b * corners).to(dtype))  # (4, C)

    def _border_fix(self, y: Tensor) -> None:
        """Correct `y` = dw(p) + interior constant on the border (see `_fold_pw_bias`)."""
        top, bottom, left, right = self.border_edges[:, None, :, None]
        y[:, :, 0, :] -= top
        y[:, :, -1, :] -= bottom
        y[:, :, :, 0] -= left
        y[:, :, :, -1] -= right
        tl, tr, bl, br = self.border_corners[:, None, :]
        y[:, :, 0, 0] += tl
        y[:, :, 0, -1] += tr
        y[:, :, -1, 0] += bl
        y[:, :, -1, -1] += br

    def separable_residual(self, x: Tensor, act: Act, out: Tensor, pw_out: Tensor) -> Tensor:
        """act(dw(pw(x)) + x) of a BSConvU, computed in `out` (which may be `x` itself; else
        `x` is copied there) with the pointwise step in `pw_out`: both are buffers the caller
        reuses, so no full-size tensor is allocated (fresh allocations cost page faults)."""
        folded = self.bias_folded
        self._pointwise_into(x, pw_out, with_bias=not folded)
        if out is not x:
            out.copy_(x)
        bias = self.folded_bias if folded else self.bias
        y = fused_conv_add(
            pw_out,
            self.weight,
            bias,
            out,
            padding=self.padding,
            groups=self.groups,
            into_other=True,
        )
        if folded:
            self._border_fix(y)
        return act(y)

    def _pointwise_into(self, x: Tensor, out: Tensor, with_bias: bool = True) -> None:
        """out = pw(x) as one GEMM on the channels-last views (`out` channels-last)."""
        c_out, c_in = self.pw_weight.shape[:2]
        rows = x.permute(0, 2, 3, 1).reshape(-1, c_in)
        flat = out.permute(0, 2, 3, 1).view(-1, c_out)  # a view: out is channels-last
        weight = self.pw_weight.reshape(c_out, c_in).t()
        if self.pw_bias is None or not with_bias:
            torch.mm(rows, weight, out=flat)
        else:
            torch.addmm(self.pw_bias, rows, weight, out=flat)

    def _input(self, x: Tensor) -> Tensor:
        """What the spatial conv reads: x, or a BSConvU's pointwise step."""
        if self.separable:
            return fused_conv(x, self.pw_weight, self.pw_bias)
        return x

    def forward(self, x: Tensor, act: Act = NO_ACT) -> Tensor:
        return fused_conv(
            self._input(x),
            self.weight,
            self.bias,
            padding=self.padding,
            stride=self.stride,
            groups=self.groups,
            act=act,
        )

    def residual(self, x: Tensor, act: Act = NO_ACT, overwrite: bool = False) -> Tensor:
        """act(self(x) + x): one fused kernel where the identity was folded into the weights,
        else conv + add (into `x` itself if `overwrite`) then the activation in place."""
        if self.identity_folded:
            return fused_conv(x, self.residual_weight, self.bias, padding=self.padding, act=act)
        return act(self.add(x, x, overwrite=overwrite))

    def add(self, x: Tensor, other: Tensor, overwrite: bool = False) -> Tensor:
        """self(x) + other. With `overwrite`, `other` may be reused for the result (done only
        where the conv does not read it: always for a BSConvU, whose depthwise step reads the
        pointwise output)."""
        if self.stride != 1:
            raise ValueError("a residual needs a stride-1 layer")
        inner = self._input(x)
        return fused_conv_add(
            inner,
            self.weight,
            self.bias,
            other,
            padding=self.padding,
            groups=self.groups,
            into_other=overwrite and other is not inner,
        )


class FusedESA(FusedModule):
    """ESA with its full-resolution 1x1s (conv1, conv_f, and a BSConvU conv2's pointwise step)
    folded into one 1x1, `squeeze(esa)`: the (2f, C) matrix and bias from the features `out`
    to `[s, cf]`, where `s` is what the stride-2 conv reads and `cf` = conv_f(conv1(out)).
    The caller applies it (`forward(out, sq)`); the 1x1 `conv4` gets a fused sigmoid.
    """

    def __init__(self, esa: ESA) -> None:
        super().__init__()
        self.f = (
            esa.conv1.out_features if isinstance(esa.conv1, nn.Linear) else esa.conv1.out_channels
        )
        self.act = Act.of(esa.act)
        self.down = FusedConv(esa.conv2.dw if isinstance(esa.conv2, BSConvU) else esa.conv2)
        self.conv_max = FusedConv(esa.conv_max)
        self.conv3 = FusedConv(esa.conv3)
        self.conv3_ = FusedConv(esa.conv3_)
        w4, b4 = linear_of(esa.conv4)
        ref = self.down.weight
        self.buffer("w4", as_pointwise_weight(w4, ref))
        self.buffer("b4", b4.to(ref.dtype))

    @staticmethod
    def squeeze(esa: ESA) -> tuple[Tensor, Tensor]:
        """(2f, C) matrix and (2f,) bias from `out` to `[s, cf]`, float64."""
        w1, b1 = linear_of(esa.conv1)
        wf, bf = linear_of(esa.conv_f)
        ws, bs = w1, b1
        if isinstance(esa.conv2, BSConvU):  # its pointwise step is linear too: fold it in
            wp, bp = linear_of(esa.conv2.pw)
            ws, bs = wp @ w1, wp @ b1 + bp
        return torch.cat([ws, wf @ w1]), torch.cat([bs, wf @ b1 + bf])

    def forward(self, out: Tensor, sq: Tensor) -> Tensor:
        """out * sigmoid(gate), where `sq` = [s | cf] along the channels."""
        f = self.f
        s, cf = sq[:, :f], sq[:, f:]
        coarse = F.max_pool2d(self.down(channels_last(s)), kernel_size=7, stride=3)
        coarse = self.conv3(self.conv_max(coarse, self.act), self.act)
        coarse = self.conv3_(coarse)
        up = F.interpolate(coarse, size=out.shape[-2:], mode="bilinear", align_corners=False)
        up = channels_last(up).add_(cf)
        return fused_conv(up, self.w4, self.b4, act=Act("sigmoid")).mul_(out)


class FusedDistillation(FusedModule):
    """`esa(distill(x))` of a `DistillationBlock` (RFDB, ESDB), fused.

    The c5 fusion over concat(d1, d2, d3, r4) becomes a running sum of four 1x1 convs, each
    added as soon as its part exists (so at most one distilled part is alive); ESA's 1x1s that
    read the result are folded into one (`FusedESA.squeeze`); a plain 3x3 refinement with its
    residual is one conv (`FusedConv.residual`).
    """

    def __init__(self, block: DistillationBlock, esa: ESA) -> None:
        super().__init__()
        self.act = Act.of(block.act)
        ref = block.c5.weight
        for i in (1, 2, 3):
            w, b = linear_of(getattr(block, f"c{i}_d"))
            self.buffer(f"d{i}_weight", as_pointwise_weight(w, ref))
            self.buffer(f"d{i}_bias", b.to(ref.dtype))
        self.r = nn.ModuleList(
            FusedConv(getattr(block, n), residual=n != "c4") for n in ("c1_r", "c2_r", "c3_r", "c4")
        )
        w5, b5 = linear_of(block.c5)
        dc = w5.shape[1] // 4
        for k in range(4):
            self.buffer(f"acc{k}_weight", as_pointwise_weight(w5[:, k * dc : (k + 1) * dc], ref))
        self.buffer("acc_bias", b5.to(ref.dtype))
        # ESA's squeeze as one 1x1 after the sum. Folding it into the sums instead (W_sq W_5, so
        # the sums carry C + 2f channels) saves that pass but measured 6-11% slower overall:
        # every running-sum step then reads and writes the wider tensor.
        wsq, bsq = FusedESA.squeeze(esa)
        self.buffer("sq_weight", as_pointwise_weight(wsq, ref))
        self.buffer("sq_bias", bsq.to(ref.dtype))
        self.esa = FusedESA(esa)

    def forward(self, x: Tensor, workspace: Workspace | None = None) -> Tensor:
        """`workspace`: buffers shared with the other blocks of the network (BSConvU trunks)."""
        act = self.act
        acc: Tensor | None = None
        r = x
        separable = self.r[0].separable
        if separable:
            ws = workspace if workspace is not None else Workspace()
            pw_out = ws.get("pointwise", x, self.r[0].pw_weight.shape[0])
            r_buf = ws.get("residual", x, x.shape[1])
            if r_buf.data_ptr() == x.data_ptr():
                raise RuntimeError("the workspace's residual buffer is the block input")
        for i in range(3):
            d = fused_conv(
                r, getattr(self, f"d{i + 1}_weight"), getattr(self, f"d{i + 1}_bias"), act=act
            )
            w = getattr(self, f"acc{i}_weight")
            acc = (
                fused_conv(d, w, self.acc_bias)
                if acc is None
                else fused_conv_add(d, w, None, acc, into_other=True)
            )
            del d
            if separable:  # the first step copies x into r_buf, the others work in place
                r = self.r[i].separable_residual(r, act, out=r_buf, pw_out=pw_out)
            else:  # never overwrite the block input
                r = self.r[i].residual(r, act, overwrite=r is not x)
        r4 = self.r[3](r, act)
        assert acc is not None
        acc = fused_conv_add(r4, self.acc3_weight, None, acc, into_other=True)
        return self.esa(acc, fused_conv(acc, self.sq_weight, self.sq_bias))
