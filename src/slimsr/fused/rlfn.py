"""The fused form of RLFN, RLFN-S and the NTIRE 2022 entry (`slimsr.archs.rlfn.RLFN`)."""

from __future__ import annotations

from torch import Tensor, nn

from slimsr.archs.blocks import ChannelsLastPixelShuffle
from slimsr.archs.rlfn import RLFB, RLFN
from slimsr.fused.forms import fused_form
from slimsr.fused.kernels import Act, as_pointwise_weight, channels_last, fused_conv, linear_of
from slimsr.fused.modules import FusedConv, FusedESA, FusedModule


class FusedRLFB(FusedModule):
    """An RLFB for inference: three 3x3 convs with the LeakyReLU as a post-op, the block input
    added in place, then `c5` with ESA's squeeze 1x1s (conv1, conv_f) folded behind it.

    The skip joins after the third activation, so it cannot be folded into that conv's
    weights (as `FusedConv.residual` does for conv + x) nor be its oneDNN add post-op (which
    comes before the activation).
    """

    def __init__(self, block: RLFB) -> None:
        super().__init__()
        self.act = Act.of(block.act)
        self.convs = nn.ModuleList(FusedConv(c) for c in (block.c1_r, block.c2_r, block.c3_r))
        w5, b5 = linear_of(block.c5)
        ref = block.c5.weight
        self.buffer("c5_weight", as_pointwise_weight(w5, ref))
        self.buffer("c5_bias", b5.to(ref.dtype))
        wsq, bsq = FusedESA.squeeze(block.esa)
        self.buffer("sq_weight", as_pointwise_weight(wsq, ref))
        self.buffer("sq_bias", bsq.to(ref.dtype))
        self.esa = FusedESA(block.esa)

    def forward(self, x: Tensor) -> Tensor:
        y = x
        for conv in self.convs:
            y = conv(y, self.act)
        out = fused_conv(y.add_(x), self.c5_weight, self.c5_bias)
        return self.esa(out, fused_conv(out, self.sq_weight, self.sq_bias))


class FusedRLFN(FusedModule):
    """RLFN for inference, built from a trained `RLFN`; same outputs to float rounding.

    Channels-last throughout; blocks as `FusedRLFB`; the long skip as `conv_2`'s add into the
    stem's features; a shuffle that writes the NCHW image in one copy. Inference only:
    derived tensors, no parameters, no state dict.
    """

    def __init__(self, net: RLFN) -> None:
        super().__init__()
        self.conv_1 = FusedConv(net.conv_1)
        self.blocks = nn.ModuleList(
            FusedRLFB(getattr(net, f"block_{i}")) for i in range(1, net.num_block + 1)
        )
        self.conv_2 = FusedConv(net.conv_2)
        self.upsampler = FusedConv(net.upsampler[0])
        self.shuffle = ChannelsLastPixelShuffle(net.upsampler[1].upscale_factor)

    def forward(self, x: Tensor) -> Tensor:
        shallow = self.conv_1(channels_last(x))
        y = shallow
        for block in self.blocks:
            y = block(y)
        return self.shuffle(self.upsampler(self.conv_2.add(y, shallow, overwrite=True)))


@fused_form(RLFN)
def fuse_rlfn(net: RLFN) -> FusedRLFN:
    return FusedRLFN(net)
