"""The fused form of SMFANet (`slimsr.archs.smfanet.SMFANet`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimsr.archs.blocks import ChannelsLastPixelShuffle
from slimsr.archs.smfanet import FMB, SMFA, SMFANet
from slimsr.fused.forms import fused_form
from slimsr.fused.kernels import (
    Act,
    as_pointwise_weight,
    channels_last,
    fused_conv,
    fused_conv_add,
    linear_of,
)
from slimsr.fused.modules import FusedConv, FusedModule

_GELU = Act("gelu")


def _normalized(x: Tensor) -> Tensor:
    """`F.normalize(x)` (L2 over channels, eps 1e-12) of a channels-last tensor: the norm is a
    reduction over each pixel's contiguous channels (on NCHW it was 14% of the plain forward)."""
    norm = torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min_(1e-12)
    return torch.div(x, norm)


def _pool(x: Tensor, divisor: int) -> Tensor:
    """`pool_to_fraction`: where the size divides, adaptive windows are the fixed 8x8 ones, and
    the plain max-pool skips the indices the adaptive kernel also computes."""
    h, w = x.shape[-2:]
    if h % divisor == 0 and w % divisor == 0:
        return F.max_pool2d(x, divisor)
    return F.adaptive_max_pool2d(x, (h // divisor, w // divisor))


def _gate_in_place(x: Tensor, gate: Tensor) -> Tensor:
    """x *= nearest_resize(gate, h, w), in place. Where the size divides, each gate value
    covers an exact block, multiplied through a broadcast view instead of an upsampled copy."""
    n, c, h, w = x.shape
    gh, gw = gate.shape[-2:]
    if h % gh or w % gw or not x.is_contiguous(memory_format=torch.channels_last):
        return x.mul_(F.interpolate(gate, size=(h, w), mode="nearest"))
    blocks = x.permute(0, 2, 3, 1).view(n, gh, h // gh, gw, w // gw, c)
    blocks.mul_(gate.permute(0, 2, 3, 1)[:, :, None, :, None, :])
    return x


def _variance(x: Tensor) -> Tensor:
    """`torch.var(x, dim=(-2, -1), keepdim=True)` (unbiased) of a channels-last tensor, two-pass
    over its (pixels, channels) rows: 0.4 vs 3.5 ms for torch's kernel (36 channels, 128x128,
    1 thread), whose reduction over the strided spatial dims is not vectorised."""
    n, c, h, w = x.shape
    rows = x.permute(0, 2, 3, 1).reshape(n, h * w, c)  # a view: x is channels-last
    d = rows - rows.mean(1, keepdim=True)
    return d.mul_(d).sum(1).div_(h * w - 1).reshape(n, c, 1, 1)


def _one_per_channel(conv: nn.Conv2d) -> nn.Conv2d:
    """A grouped conv with `mult` outputs per input channel as a depthwise conv over the input
    channels repeated `mult` times each (same weights, one group per output)."""
    out = nn.Conv2d(
        conv.out_channels,
        conv.out_channels,
        conv.kernel_size,
        padding=conv.padding,
        groups=conv.out_channels,
        bias=conv.bias is not None,
        device="meta",
    )
    out.weight = nn.Parameter(conv.weight.detach(), requires_grad=False)
    if conv.bias is not None:
        out.bias = nn.Parameter(conv.bias.detach(), requires_grad=False)
    return out


def _matrix(w: Tensor, b: Tensor, ref: Tensor) -> tuple[Tensor, Tensor]:
    return as_pointwise_weight(w, ref), b.to(ref.dtype)


class FusedFMB(FusedModule):
    """An FMB for inference, channels-last.

    SMFA: linear_0 as two 1x1s (one per half, so neither is a strided channel slice); alpha
    folded into the pooled branch's depthwise conv; the gate multiplied in place; DMlp's
    GELU a post-op; DMlp's last 1x1 folded with linear_2 (both linear, and linear_2 reads their
    sum), and both shares added by oneDNN onto the block input. PCFN: conv_0 as two 1x1s with
    GELU post-ops (the 3x3 reads only the head), conv_2 as a running sum over the two parts,
    added onto the residual in place, so no split or concatenation is copied.
    """

    def __init__(self, block: FMB) -> None:
        super().__init__()
        smfa: SMFA = block.smfa
        ref = smfa.linear_0.weight
        self.down_scale = smfa.down_scale
        w0, b0 = linear_of(smfa.linear_0)
        dim = w0.shape[0] // 2
        # DMlp's depthwise conv has `mult` outputs per input channel, a case oneDNN runs 12x
        # slower than one output per channel (3.5 vs 0.29 ms, 36 channels, 128x128): so the y
        # half's rows are repeated `mult` times and the depthwise conv reads one channel each.
        lde_dw = smfa.lde.conv_0[0]
        mult = lde_dw.out_channels // lde_dw.in_channels
        for name, rows, rep in (("y", slice(0, dim), mult), ("x", slice(dim, 2 * dim), 1)):
            w, b = _matrix(w0[rows].repeat_interleave(rep, 0), b0[rows].repeat_interleave(rep), ref)
            self.buffer(f"{name}_weight", w)
            self.buffer(f"{name}_bias", b)
        alpha = smfa.alpha.detach().double().reshape(-1)
        dw = smfa.dw_conv
        dw_b = dw.bias.detach().double() if dw.bias is not None else torch.zeros_like(alpha)
        self.buffer(
            "pool_weight", (dw.weight.detach().double() * alpha[:, None, None, None]).to(ref.dtype)
        )
        self.buffer("pool_bias", (dw_b * alpha).to(ref.dtype))
        self.buffer("belt", smfa.belt.detach())
        w1, b1 = linear_of(smfa.linear_1)
        self.buffer("l1_weight", as_pointwise_weight(w1, ref))
        self.buffer("l1_bias", b1.to(ref.dtype))
        self.lde_dw = FusedConv(_one_per_channel(lde_dw))
        wm, bm = linear_of(smfa.lde.conv_0[1])
        self.buffer("lde_weight", as_pointwise_weight(wm, ref))
        self.buffer("lde_bias", bm.to(ref.dtype))
        wd, bd = linear_of(smfa.lde.conv_1)
        w2, b2 = linear_of(smfa.linear_2)
        self.buffer("l2_weight", as_pointwise_weight(w2, ref))
        self.buffer("l2_bias", (w2 @ bd + b2).to(ref.dtype))
        self.buffer("lde_out_weight", as_pointwise_weight(w2 @ wd, ref))

        pcfn = block.pcfn
        p = pcfn.p_dim
        wc, bc = linear_of(pcfn.conv_0)
        self.buffer("head_weight", as_pointwise_weight(wc[:p], ref))
        self.buffer("head_bias", bc[:p].to(ref.dtype))
        self.buffer("tail_weight", as_pointwise_weight(wc[p:], ref))
        self.buffer("tail_bias", bc[p:].to(ref.dtype))
        self.head_conv = FusedConv(pcfn.conv_1)
        wo, bo = linear_of(pcfn.conv_2)
        self.buffer("out_head_weight", as_pointwise_weight(wo[:, :p], ref))
        self.buffer("out_tail_weight", as_pointwise_weight(wo[:, p:], ref))
        self.buffer("out_bias", bo.to(ref.dtype))

    def forward(self, f: Tensor, overwrite: bool) -> Tensor:
        """The block's output; with `overwrite` it may be written over `f`."""
        fn = _normalized(f)
        y = fused_conv(fn, self.y_weight, self.y_bias)
        x = fused_conv(fn, self.x_weight, self.x_bias)
        del fn
        pooled = fused_conv(
            channels_last(_pool(x, self.down_scale)),
            self.pool_weight,
            self.pool_bias,
            padding=1,
            groups=x.shape[1],
        )
        variance = _variance(x)
        gate = fused_conv(
            channels_last(pooled.add_(variance * self.belt)),
            self.l1_weight,
            self.l1_bias,
            act=_GELU,
        )
        x = _gate_in_place(x, gate)
        hidden = fused_conv(self.lde_dw(y), self.lde_weight, self.lde_bias, act=_GELU)
        del y
        acc = fused_conv_add(x, self.l2_weight, self.l2_bias, f, into_other=overwrite)
        del x
        acc = fused_conv_add(hidden, self.lde_out_weight, None, acc, into_other=True)
        del hidden

        an = _normalized(acc)
        head = fused_conv(an, self.head_weight, self.head_bias, act=_GELU)
        tail = fused_conv(an, self.tail_weight, self.tail_bias, act=_GELU)
        del an
        acc = fused_conv_add(tail, self.out_tail_weight, self.out_bias, acc, into_other=True)
        del tail
        head = self.head_conv(head, _GELU)
        return fused_conv_add(head, self.out_head_weight, None, acc, into_other=True)


class FusedSMFANet(FusedModule):
    """SMFANet for inference, built from a trained `SMFANet`; same outputs to float rounding.

    Channels-last throughout; blocks as `FusedFMB` (each after the first writes over its
    input); the long skip added in place; the shuffle writes the NCHW image in one copy.
    Inference only: derived tensors, no parameters, no state dict.
    """

    def __init__(self, net: SMFANet) -> None:
        super().__init__()
        self.to_feat = FusedConv(net.to_feat)
        self.blocks = nn.ModuleList(FusedFMB(b) for b in net.feats)
        self.to_img = FusedConv(net.to_img[0])
        self.shuffle = ChannelsLastPixelShuffle(net.to_img[1].upscale_factor)

    def forward(self, x: Tensor) -> Tensor:
        stem = self.to_feat(channels_last(x))
        y = stem
        for block in self.blocks:
            y = block(y, overwrite=y is not stem)
        return self.shuffle(self.to_img(y.add_(stem)))


@fused_form(SMFANet)
def fuse_smfanet(net: SMFANet) -> FusedSMFANet:
    return FusedSMFANet(net)
