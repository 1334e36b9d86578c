"""The fused form of E-RFDN (`slimsr.archs.rfdn.RFDN`)."""

from __future__ import annotations

from torch import Tensor, nn

from slimsr.archs.blocks import ChannelsLastPixelShuffle
from slimsr.archs.rfdn import RFDN
from slimsr.fused.forms import fused_form
from slimsr.fused.kernels import (
    Act,
    as_pointwise_weight,
    channels_last,
    linear_of,
    running_sum,
)
from slimsr.fused.modules import FusedConv, FusedDistillation, FusedModule


class FusedRFDN(FusedModule):
    """RFDN for inference, built from a trained `RFDN`; same outputs to float rounding.

    Channels-last throughout; blocks as `FusedDistillation` (no concatenation, ESA's 1x1s
    folded); the trunk's 1x1 over concat(B1..Bn) a running sum over the block outputs.
    Inference only: derived tensors, no parameters, no state dict.
    """

    def __init__(self, net: RFDN) -> None:
        super().__init__()
        self.fea_conv = FusedConv(net.fea_conv)
        self.blocks = nn.ModuleList(
            FusedDistillation(b, b.esa)
            for b in (getattr(net, f"B{i}") for i in range(1, net.num_block + 1))
        )
        w, b = linear_of(net.c[0])
        feat = w.shape[0]
        ref = net.LR_conv.weight
        for i in range(net.num_block):
            self.buffer(f"c_weight{i}", as_pointwise_weight(w[:, i * feat : (i + 1) * feat], ref))
        self.buffer("c_bias", b.to(ref.dtype))
        self.act = Act.of(net.c[1])
        self.LR_conv = FusedConv(net.LR_conv)
        self.upsampler = FusedConv(net.upsampler[0])
        self.shuffle = ChannelsLastPixelShuffle(net.upsampler[1].upscale_factor)

    def forward(self, x: Tensor) -> Tensor:
        fea = self.fea_conv(channels_last(x))
        out, trunk = fea, None
        for i, block in enumerate(self.blocks):
            out = block(out)
            trunk = running_sum(trunk, out, getattr(self, f"c_weight{i}"), self.c_bias)
        assert trunk is not None
        lr = self.LR_conv.add(self.act(trunk), fea, overwrite=True)
        return self.shuffle(self.upsampler(lr))


@fused_form(RFDN)
def fuse_rfdn(net: RFDN) -> FusedRFDN:
    return FusedRFDN(net)
