"""The fused form of EDSR / EDSR-baseline (official layout) and EDSRmini (BasicSR layout).

EDSR is plain 3x3 convs: their time is oneDNN's. What fusing saves is everything between
them: each ReLU a post-op of its conv, each residual addition (and `res_scale`, folded into
the second conv) an add post-op written into the running features, the long skip the same,
the input normalisation one 1x1 pass over the 3-channel input, the output's range and mean
folded into the last conv. The upsampler's pixel shuffles (between convs, so their output
must be channels-last) become a copy of 64-byte runs: the producing conv's output channels
are reordered once so that each shuffled pixel's channels lie next to each other
(`FusedShuffleStage`), where torch's shuffle of a channels-last tensor gathers every value
with a stride of s^2.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from slimsr.archs.edsr import EDSR, EDSRBasicSR, ResBlock, ResidualBlockNoBN
from slimsr.fused.forms import fused_form
from slimsr.fused.kernels import (
    Act,
    as_pointwise_weight,
    channels_last,
    fused_conv,
    linear_of,
)
from slimsr.fused.modules import FusedConv, FusedModule

_RELU = Act("relu")


def _scaled_conv(conv: nn.Conv2d, scale: float) -> FusedConv:
    """A `FusedConv` of `scale * conv(x)` (res_scale folded into the weights and bias)."""
    fused = FusedConv(conv)
    if scale != 1.0:
        fused.weight = channels_last(fused.weight * scale)
        if fused.bias is not None:
            fused.bias = fused.bias * scale
    return fused


class FusedResBlock(FusedModule):
    """x + res_scale * conv2(relu(conv1(x))): the ReLU conv1's post-op, the scaled conv2 an
    add post-op into `x` (in place unless `x` must survive)."""

    def __init__(self, block: ResBlock | ResidualBlockNoBN) -> None:
        super().__init__()
        if isinstance(block, ResBlock):
            conv1, conv2 = block.body[0], block.body[2]
        else:
            conv1, conv2 = block.conv1, block.conv2
        self.conv1 = FusedConv(conv1)
        self.conv2 = _scaled_conv(conv2, float(block.res_scale))

    def forward(self, x: Tensor, overwrite: bool) -> Tensor:
        return self.conv2.add(self.conv1(x, _RELU), x, overwrite=overwrite)


class FusedShuffleStage(FusedModule):
    """pixel_shuffle(conv(x), s) for a conv that another conv reads: channels-last in and out.

    The conv's output channel c*s*s + i*s + j (PixelShuffle's order) is moved to
    (i*s + j)*C + c, so that an output pixel's C channels are one contiguous run of the conv's
    output; the shuffle is then a copy of those runs into a channels-last image.
    """

    def __init__(self, conv: nn.Conv2d, shuffle: nn.PixelShuffle) -> None:
        super().__init__()
        s = shuffle.upscale_factor
        c = conv.out_channels // (s * s)
        order = torch.arange(conv.out_channels).view(c, s * s).t().reshape(-1)
        self.conv = FusedConv(conv)
        self.conv.weight = channels_last(self.conv.weight[order])
        if self.conv.bias is not None:
            self.conv.bias = self.conv.bias[order].contiguous()
        self.scale, self.channels = s, c

    def forward(self, x: Tensor) -> Tensor:
        t = self.conv(x)
        n, _, h, w = t.shape
        s, c = self.scale, self.channels
        out = torch.empty(
            (n, c, h * s, w * s), dtype=t.dtype, device=t.device, memory_format=torch.channels_last
        )
        # out as (n, h, i, w, j, c) over its NHWC memory; t as (n, h, w, i, j, c)
        target = out.permute(0, 2, 3, 1).view(n, h, s, w, s, c)
        source = t.permute(0, 2, 3, 1).view(n, h, w, s, s, c).permute(0, 1, 3, 2, 4, 5)
        target.copy_(source)
        return out


class FusedEDSR(FusedModule):
    """EDSR (either layout) for inference, built from a trained network; same outputs to
    float rounding. Channels-last throughout, the image written NCHW at the end. Inference
    only: derived tensors, no parameters, no state dict."""

    def __init__(self, net: EDSR | EDSRBasicSR) -> None:
        super().__init__()
        if isinstance(net, EDSR):
            head, blocks, body_end = net.head[0], list(net.body)[:-1], net.body[-1]
            upsampler, last = net.tail[0], net.tail[1]
            a_in, c_in = linear_of(net.sub_mean)
            a_out, c_out = linear_of(net.add_mean)
        else:
            head, blocks, body_end = net.conv_first, list(net.body), net.conv_after_body
            upsampler, last = net.upsample, net.conv_last
            mean = net.mean.detach().reshape(3).double()
            r = float(net.img_range)
            a_in, c_in = r * torch.eye(3, dtype=torch.float64), -r * mean
            a_out, c_out = torch.eye(3, dtype=torch.float64) / r, mean
        ref = head.weight
        # the input's normalisation, a 3x3 affine map, runs as a 1x1 conv: folding it into the
        # head conv would be wrong on the border (the head pads the normalised image with 0)
        self.buffer("in_weight", as_pointwise_weight(a_in, ref))
        self.buffer("in_bias", c_in.to(ref.dtype))
        self.head = FusedConv(head)
        self.blocks = nn.ModuleList(FusedResBlock(b) for b in blocks)
        self.body_end = FusedConv(body_end)
        layers = list(upsampler)
        self.stages = nn.ModuleList(
            FusedShuffleStage(layers[i], layers[i + 1]) for i in range(0, len(layers), 2)
        )
        # the output's mean and range after the last conv: exact to fold into it
        self.last = FusedConv(last)
        w = last.weight.detach().double()
        folded = torch.einsum("oc,cikl->oikl", a_out.to(w.device), w)
        b = last.bias.detach().double() if last.bias is not None else torch.zeros(3)
        self.last.weight = channels_last(folded.to(ref.dtype))
        self.last.bias = (a_out.to(b.device) @ b + c_out.to(b.device)).to(ref.dtype)

    def forward(self, x: Tensor) -> Tensor:
        shallow = self.head(fused_conv(channels_last(x), self.in_weight, self.in_bias))
        y = shallow
        for i, block in enumerate(self.blocks):
            y = block(y, overwrite=i > 0)  # the first block must keep `shallow` for the skip
        y = self.body_end.add(y, shallow, overwrite=True)
        for stage in self.stages[:-1]:
            y = stage(y)
        return self._banded_tail(y)

    def _banded_tail(self, y: Tensor) -> Tensor:
        """last(stage(y)) for the last shuffle stage, in bands of rows of `y`, each written
        into its rows of one NCHW image.

        Whole, the stage's conv output and its shuffle are the two largest tensors of the
        forward (64 MB each for 256x256 at x4): above glibc's 32 MB mmap ceiling, each is
        mapped afresh and page-faulted on every call, which measured as long as the conv
        itself. Banded, every tensor stays under `BAND_BYTES` and its memory is reused from
        one band to the next. A band reads `HALO` rows of `y` beyond each side (one for the
        stage conv, one for the last conv, which reads one HR row = at most one row of `y`)
        and keeps only its own rows, so the result is exact; the recomputed halo costs
        4 / rows extra stage-conv work.
        """
        stage = self.stages[-1]
        n, _, h, w = y.shape
        s = stage.scale
        rows = max(1, self.BAND_BYTES // (w * stage.conv.weight.shape[0] * y.element_size()))
        rows = max(rows, 4 * self.HALO)
        if rows >= h:
            return self.last(stage(y)).contiguous()
        out = torch.empty((n, 3, h * s, w * s), dtype=y.dtype, device=y.device)
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            lo, hi = max(0, r0 - self.HALO), min(h, r1 + self.HALO)
            band = self.last(stage(y[:, :, lo:hi]))
            out[:, :, r0 * s : r1 * s].copy_(band[:, :, (r0 - lo) * s : (r1 - lo) * s])
        return out

    BAND_BYTES = 8 << 20
    """Largest band of the last stage's conv output (4, 8 and 16 MB measured alike at x2-x4,
    256x256, 1 thread; 64 MB, i.e. unbanded, 1.2-1.4x slower at x3 / x4)."""
    HALO = 2


@fused_form(EDSR)
def fuse_edsr(net: EDSR) -> FusedEDSR:
    return FusedEDSR(net)


@fused_form(EDSRBasicSR)
def fuse_edsr_basicsr(net: EDSRBasicSR) -> FusedEDSR:
    return FusedEDSR(net)


__all__ = ["FusedEDSR", "FusedResBlock", "FusedShuffleStage", "fuse_edsr", "fuse_edsr_basicsr"]
