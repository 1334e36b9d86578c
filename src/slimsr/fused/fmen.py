"""The fused form of FMEN / FMEN-S in deploy form (`slimsr.archs.fmen.FMEN`).

The train-time form (`TrainFMEN`) has none: re-parameterise it first (`slimsr.reparam`).
"""

from __future__ import annotations

from torch import Tensor, nn

from slimsr.archs.blocks import ChannelsLastPixelShuffle
from slimsr.archs.fmen import ERB, FMEN, HFAB, NEG_SLOPE
from slimsr.fused.forms import fused_form
from slimsr.fused.kernels import Act, channels_last
from slimsr.fused.modules import FusedConv, FusedModule

_LEAKY = Act("leaky_relu", NEG_SLOPE)


class FusedERB(FusedModule):
    """conv2(act(conv1(x))), the activation fused into conv1; `act` optionally after conv2."""

    def __init__(self, erb: ERB) -> None:
        super().__init__()
        self.conv1 = FusedConv(erb.conv1.rep_conv)
        self.conv2 = FusedConv(erb.conv2.rep_conv)

    def forward(self, x: Tensor, act: Act | None = None) -> Tensor:
        y = self.conv1(x, _LEAKY)
        return self.conv2(y, act) if act is not None else self.conv2(y)


class FusedHFAB(FusedModule):
    """x * sigmoid(branch(x)), every activation a conv post-op, the product in place."""

    def __init__(self, hfab: HFAB) -> None:
        super().__init__()
        self.squeeze = FusedConv(hfab.squeeze)
        self.convs = nn.ModuleList(FusedERB(e) for e in hfab.convs)
        self.excitate = FusedConv(hfab.excitate)

    def forward(self, x: Tensor) -> Tensor:
        y = self.squeeze(x, _LEAKY)
        if len(self.convs) == 0:
            y = _LEAKY(y)
        for i, erb in enumerate(self.convs):
            y = erb(y, _LEAKY if i == len(self.convs) - 1 else None)
        return self.excitate(y, Act("sigmoid")).mul_(x)


class FusedFMEN(FusedModule):
    """FMEN (deploy form) for inference, built from a trained `FMEN`; same outputs to float
    rounding: channels-last, activations as conv post-ops, the attention product and the long
    skip in place. Inference only: derived tensors, no parameters, no state dict."""

    def __init__(self, net: FMEN) -> None:
        super().__init__()
        self.head = FusedConv(net.head)
        self.warmup_conv = FusedConv(net.warmup[0])
        self.warmup_hfab = FusedHFAB(net.warmup[1])
        self.erbs = nn.ModuleList(FusedERB(e) for e in net.ERBs)
        self.hfabs = nn.ModuleList(FusedHFAB(h) for h in net.HFABs)
        self.lr_conv = FusedConv(net.lr_conv)
        self.tail = FusedConv(net.tail[0])
        self.shuffle = ChannelsLastPixelShuffle(net.tail[1].upscale_factor)

    def forward(self, x: Tensor) -> Tensor:
        x = self.head(channels_last(x))
        h = self.warmup_hfab(self.warmup_conv(x))
        for erb, hfab in zip(self.erbs, self.hfabs, strict=True):
            h = hfab(erb(h))
        return self.shuffle(self.tail(self.lr_conv.add(h, x, overwrite=True)))


@fused_form(FMEN)
def fuse_fmen(net: FMEN) -> FusedFMEN:
    return FusedFMEN(net)
