"""Fused modules shared by several families: the base, 3x3 layers, ESA, distillation blocks.

They compute what the plain modules of `slimsr.archs.blocks` compute (to float rounding)
with fewer passes over memory; the family files in this package assemble them into networks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimsr.archs.blocks import ESA, BSConvU, DistillationBlock
from slimsr.archs.rlfn import LiteESA
from slimsr.archs.safmn import ChannelLayerNorm
from slimsr.fused.kernels import (
    NO_ACT,
    Act,
    as_pointwise_weight,
    channels_last,
    fused_conv,
    fused_conv_add,
    linear_of,
    running_sum,
)


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


class FusedLayerNorm(FusedModule):
    """LayerNorm over the last axis (`nn.LayerNorm` of tokens), or over the channels of a
    channels-last map (SAFMN's `ChannelLayerNorm`, whose channels are the last axis of the NHWC
    memory): one `F.layer_norm` kernel either way."""

    def __init__(self, norm: nn.LayerNorm | ChannelLayerNorm) -> None:
        super().__init__()
        self.buffer("weight", norm.weight)
        self.buffer("bias", norm.bias)
        self.eps = norm.eps

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)

    def channels(self, x: Tensor) -> Tensor:
        """The norm over the channels of a channels-last (N, C, H, W) map; channels-last out."""
        return self(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


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
    """ESA (RFDN, BSRN) or RLFN's `LiteESA` with its full-resolution 1x1s (conv1, conv_f, and a
    BSConvU conv2's pointwise step) folded into one 1x1, `squeeze(esa)`: the (2f, C) matrix and
    bias from the features `out` to `[s, cf]`, where `s` is what the stride-2 conv reads and
    `cf` = conv_f(conv1(out)). The caller applies it (`forward(out, sq)`); the 1x1 `conv4` gets
    a fused sigmoid. The coarse branch after the pool: ESA's conv_max, conv3 and conv3_ with
    activations, or LiteESA's single linear conv3.
    """

    def __init__(self, esa: ESA | LiteESA) -> None:
        super().__init__()
        self.f = (
            esa.conv1.out_features if isinstance(esa.conv1, nn.Linear) else esa.conv1.out_channels
        )
        self.down = FusedConv(esa.conv2.dw if isinstance(esa.conv2, BSConvU) else esa.conv2)
        self.conv3 = FusedConv(esa.conv3)
        self.lite = isinstance(esa, LiteESA)
        if not self.lite:
            self.act = Act.of(esa.act)
            self.conv_max = FusedConv(esa.conv_max)
            self.conv3_ = FusedConv(esa.conv3_)
        w4, b4 = linear_of(esa.conv4)
        ref = self.down.weight
        self.buffer("w4", as_pointwise_weight(w4, ref))
        self.buffer("b4", b4.to(ref.dtype))

    @staticmethod
    def squeeze(esa: ESA | LiteESA) -> tuple[Tensor, Tensor]:
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
        if self.lite:
            coarse = self.conv3(coarse)
        else:
            coarse = self.conv3_(self.conv3(self.conv_max(coarse, self.act), self.act))
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
            acc = running_sum(acc, d, getattr(self, f"acc{i}_weight"), self.acc_bias)
            del d
            if separable:  # the first step copies x into r_buf, the others work in place
                r = self.r[i].separable_residual(r, act, out=r_buf, pw_out=pw_out)
            else:  # never overwrite the block input
                r = self.r[i].residual(r, act, overwrite=r is not x)
        r4 = self.r[3](r, act)
        assert acc is not None
        acc = fused_conv_add(r4, self.acc3_weight, None, acc, into_other=True)
        return self.esa(acc, fused_conv(acc, self.sq_weight, self.sq_bias))
