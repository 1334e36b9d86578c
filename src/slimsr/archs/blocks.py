"""Building blocks shared by several families (one definition each).

Module attribute names follow the official code so that state-dict keys stay official.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DIV2K_MEAN = (0.4488, 0.4371, 0.4040)
"""Mean RGB of DIV2K in [0,1], subtracted by EDSR's and SwinIR's official networks."""


def pad_to_multiple(
    x: Tensor, multiple: int = 1, min_size: int = 1, *, branch_free: bool = False
) -> tuple[Tensor, Any, Any]:
    """Pad bottom/right to a multiple and at least `min_size`, by reflection: the one
    definition, used by `SRModel` (the registry's `size_multiple` / `min_size`) and by networks
    that run any size themselves (SwinIR, to its window), so an input `SRModel` already padded
    is not padded again.

    Replicate padding is used where reflection is impossible (padding >= the image size).
    `branch_free`: one reflect pad with no test on the sizes, for graph capture (a Python
    comparison of symbolic H and W would specialise the graph); needs `min_size` 1.
    Returns the padded tensor and the (bottom, right) padding added.
    """
    h, w = x.shape[-2:]
    if branch_free:
        ph, pw = (-h) % multiple, (-w) % multiple
        return F.pad(x, (0, pw, 0, ph), mode="reflect"), ph, pw
    th, tw = max(h, min_size), max(w, min_size)
    ph, pw = th - h + (-th) % multiple, tw - w + (-tw) % multiple
    if ph == 0 and pw == 0:
        return x, 0, 0
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), ph, pw


def conv3x3(in_ch: int, out_ch: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=bias)


def channels_last_view(x: Tensor) -> Tensor | None:
    """A channels-last 4-D map as the dense (N, H, W, C) tensor it is in memory, or None for
    any other layout (a contiguous map, a map with one channel or pixel, which is both)."""
    if (
        x.dim() == 4
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
    ):
        return x.permute(0, 2, 3, 1)
    return None


def gelu(x: Tensor, inplace: bool = False) -> Tensor:
    """Exact (erf) GELU, channels-last maps computed through their dense view.

    ATen's GELU runs 1.5-1.9x slower on a channels-last tensor than on the same memory viewed
    as contiguous, forward and backward (torch 2.13 CPU, 16x60x32x32; ReLU, sigmoid and add
    show no such gap): a channels-last map takes its element-by-element path, a dense one the
    vectorised kernel. The two differ by float rounding only (their erf approximations, up to
    ~1e-6 absolute); the result keeps the input's layout.
    """
    dense = channels_last_view(x)
    if dense is None:
        return torch.ops.aten.gelu_(x) if inplace else F.gelu(x)
    if inplace:
        torch.ops.aten.gelu_(dense)
        return x
    return F.gelu(dense).permute(0, 3, 1, 2)


# a leaf for torch.fx: tracers (the plain-op graph check of INT8 export) see one GELU call,
# not the layout test inside it
torch.fx.wrap("gelu")


class GELU(nn.GELU):
    """`nn.GELU` (exact form) through `gelu`: the same module and state, the same output to
    float rounding, faster on channels-last maps."""

    def __init__(self) -> None:
        super().__init__()

    def forward(self, x: Tensor) -> Tensor:
        return gelu(x)


class FoldableConv(nn.Module):
    """A train-time block that computes exactly one 3x3 conv (FMEN's RRRB, SPAN's Conv3XC).

    With `online_fold` set (`set_online_fold`, the training fast path) the block runs, in
    training mode, as that conv: its kernel is folded from the branch weights on every call,
    differentiably, and applied once. The function of the inputs and the parameters is the
    same as the branches' (so are the gradients, up to float rounding), but a step does the
    deploy form's convolutions instead of the wider expanded ones: online re-parameterisation
    (Hu et al., "Online Convolutional Re-parameterization", CVPR 2022). The state dict does
    not change.
    """

    online_fold: bool = False

    def folded(self) -> tuple[Tensor, Tensor]:
        """The (weight, bias) of the one 3x3 conv (padding 1) this block equals."""
        raise NotImplementedError(f"{type(self).__name__} must say which conv it equals")

    def run_folded(self, x: Tensor) -> Tensor:
        # the fold's products stay in the weights' precision; only the conv runs under autocast
        with _autocast_off(x.device.type):
            weight, bias = self.folded()
        return F.conv2d(x, weight, bias, padding=1)


def _autocast_off(device_type: str) -> contextlib.AbstractContextManager[object]:
    """Autocast switched off where it is on; else nothing (`torch.autocast` itself refuses
    device types it does not know, e.g. "meta", or "mps" on older torch, even disabled)."""
    try:
        on = torch.is_autocast_enabled(device_type)
    except (TypeError, RuntimeError):  # torch < 2.4: no per-device query
        on = (
            torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()
        )
    return torch.autocast(device_type, enabled=False) if on else contextlib.nullcontext()


def set_online_fold(net: nn.Module, on: bool) -> int:
    """Switch every `FoldableConv` of `net` to (or from) its folded training path; returns
    how many blocks there are (0: the network has nothing to fold)."""
    blocks = [m for m in net.modules() if isinstance(m, FoldableConv)]
    for block in blocks:
        block.online_fold = on
    return len(blocks)


def has_foldable_convs(net: nn.Module) -> bool:
    return any(isinstance(m, FoldableConv) for m in net.modules())


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


class BSConvS(nn.Module):
    """Blueprint separable conv (subspace): 1x1 `pw1` to a narrow subspace, 1x1 `pw2`, then `dw`.

    The subspace is a quarter of the input channels (at least 4, at most all), as in the BSConv
    and BSRN repositories. BSRN's Table 1 compares it with BSConvU and DSConv. The paper's
    orthonormality regulariser on `pw1` is a loss term, not part of the network, and is not here.
    """

    def __init__(
        self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, padding: int = 1
    ) -> None:
        super().__init__()
        mid = min(in_ch, max(4, math.ceil(0.25 * in_ch)))
        self.pw1 = conv1x1(in_ch, mid, False)
        self.pw2 = conv1x1(mid, out_ch, False)
        self.dw = nn.Conv2d(out_ch, out_ch, kernel_size, stride, padding, groups=out_ch)

    def forward(self, x: Tensor) -> Tensor:
        return self.dw(self.pw2(self.pw1(x)))


class DSConv(nn.Module):
    """Depthwise separable conv: depthwise `dw` (with bias) first, then a bias-free 1x1 `pw`.

    The reverse order of BSConvU (BSRN's Table 1 baseline decomposition).
    """

    def __init__(
        self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, padding: int = 1
    ) -> None:
        super().__init__()
        self.dw = nn.Conv2d(in_ch, in_ch, kernel_size, stride, padding, groups=in_ch)
        self.pw = conv1x1(in_ch, out_ch, False)

    def forward(self, x: Tensor) -> Tensor:
        return self.pw(self.dw(x))


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


def _capturing_graph() -> bool:
    """True while the TorchScript tracer records a graph (ONNX export): sizes are then graph
    values, and pooling to a size computed from them must be spelled with index gathers."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def pool_to_fraction(x: Tensor, divisor: int) -> Tensor:
    """`F.adaptive_max_pool2d(x, (h // divisor, w // divisor))`, also traceable at dynamic sizes.

    SAFMN and SMFANet pool to a fraction of the run-time size, which the ONNX exporter cannot
    express with its fixed-kernel pooling. While tracing, each axis is reduced with gathers
    instead: output i covers torch's window `[floor(i n / m), ceil((i + 1) n / m))`, and its
    maximum is taken over offsets clamped to the window's last index (a repeat cannot change a
    maximum), so the numbers are the same exactly. Needs h, w >= divisor.
    """
    h, w = x.shape[-2], x.shape[-1]
    if not _capturing_graph():
        return F.adaptive_max_pool2d(x, (h // divisor, w // divisor))
    return _max_over_windows(_max_over_windows(x, -2, divisor), -1, divisor)


def _max_over_windows(x: Tensor, dim: int, divisor: int) -> Tensor:
    n = torch.as_tensor(x.shape[dim])
    m = n // divisor
    i = torch.arange(m).to(x.device)
    start = (i * n) // m
    last = ((i + 1) * n + m - 1) // m - 1
    # n / m < 2 * divisor when m = n // divisor, and a window spans at most ceil(n / m) + 1.
    result = x.index_select(dim, start)
    for k in range(1, 2 * divisor + 1):
        result = torch.maximum(result, x.index_select(dim, torch.minimum(start + k, last)))
    return result


def nearest_resize(x: Tensor, h: Any, w: Any) -> Tensor:
    """`F.interpolate(x, size=(h, w), mode="nearest")`, also traceable at dynamic sizes: source
    index `floor(i * (in / out))` in float32, as torch's kernel computes it, clamped."""
    if not _capturing_graph():
        return F.interpolate(x, size=(int(h), int(w)), mode="nearest")
    for dim, size in ((-2, h), (-1, w)):
        n = torch.as_tensor(x.shape[dim])
        ratio = n.float() / torch.as_tensor(size).float()
        src = torch.floor(torch.arange(torch.as_tensor(size)).float() * ratio).long()
        x = x.index_select(dim, torch.minimum(src, n - 1).to(x.device))
    return x
