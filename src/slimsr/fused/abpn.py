"""The fused form of ABPN (`slimsr.archs.abpn.ABPN`), every paper-ablation switch included.

ABPN is a plain stack of 28-channel 3x3 convs: nearly all its time is in those convs, which
oneDNN already runs near the CPU's GEMM rate (measured in docs/efficiency.md). What fusing
saves is the passes around them: each ReLU as a post-op of its conv, and the anchor, the
pixel shuffle and the clip done while the image is written (see `FusedABPN.forward`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimsr.archs.abpn import ABPN
from slimsr.fused.forms import fused_form
from slimsr.fused.kernels import Act, channels_last
from slimsr.fused.modules import FusedConv, FusedModule


class FusedABPN(FusedModule):
    """ABPN for inference, built from a trained `ABPN`; same outputs to float rounding.

    Channels-last; every ReLU a post-op of its conv. The anchor (the input repeated s^2 times
    along the channels) is, after the pixel shuffle, the nearest-neighbour upscale of the
    input: it is added from a broadcast view of the input while the shuffle writes the image,
    so it is never built; the clip then runs in place on that image. Inference only: derived
    tensors, no parameters, no state dict.
    """

    def __init__(self, net: ABPN) -> None:
        super().__init__()
        self.convs = nn.ModuleList(FusedConv(c) for c in net.convs)
        self.act = Act.of(net.act)
        self.scale, self.residual, self.clip = net.scale, net.residual, net.clip

    def forward(self, x: Tensor) -> Tensor:
        act, convs = self.act, self.convs
        y = shallow = convs[0](channels_last(x), act)
        for conv in convs[1:-2]:
            y = conv(y, act)
        if self.residual == "feature":  # FSRL: after the ReLU, so not a conv + add post-op
            y = y + shallow if y is shallow else y.add_(shallow)
        for conv in convs[-2:-1]:  # the anchor graph has no feature residual: one loop there
            y = conv(y, act)
        return self._image(convs[-1](y), x)

    def _image(self, t: Tensor, x: Tensor) -> Tensor:
        """clip(shuffle(t) + residual image) written once into a fresh NCHW image, then
        clipped in place (two passes over the image, where the plain graph takes five)."""
        n, c, h, w = t.shape
        s = self.scale
        colours = c // (s * s)
        out = torch.empty((n, colours, h * s, w * s), dtype=t.dtype, device=t.device)
        blocks = out.view(n, colours, h, s, w, s)
        # t's channel c*s*s + i*s + j is colour c at offset (i, j): read t as it lies (NHWC).
        shuffled = t.permute(0, 2, 3, 1).reshape(n, h, w, colours, s, s).permute(0, 3, 1, 4, 2, 5)
        if self.residual in ("anchor", "nearest"):
            # nearest-neighbour upscale of x as a broadcast view (x's pixel at every offset)
            torch.add(shuffled, x[:, :, :, None, :, None].expand_as(blocks), out=blocks)
        else:
            blocks.copy_(shuffled)
            if self.residual == "bilinear":
                out.add_(F.interpolate(x, scale_factor=s, mode="bilinear"))
        return out.clamp_(0.0, 255.0) if self.clip else out


@fused_form(ABPN)
def fuse_abpn(net: ABPN) -> FusedABPN:
    return FusedABPN(net)
