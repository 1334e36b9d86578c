"""The fused form of BSRN and BSRN-S (`slimsr.archs.bsrn.BSRN`)."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from slimsr.archs.blocks import ChannelsLastPixelShuffle
from slimsr.archs.bsrn import BSRN, ESDB
from slimsr.fused.forms import fused_form
from slimsr.fused.kernels import (
    Act,
    as_pointwise_weight,
    channels_last,
    fused_conv_add,
    linear_of,
    running_sum,
)
from slimsr.fused.modules import FusedConv, FusedDistillation, FusedModule, Workspace


class FusedESDB(FusedModule):
    """An ESDB for inference: fused distillation + ESA, then CCA (BSRN) or the channel weights
    folded into `conv_out` (BSRN-S), plus the block input."""

    def __init__(self, block: ESDB) -> None:
        super().__init__()
        self.body = FusedDistillation(block, block.esa)
        self.cca = copy.deepcopy(block.cca)
        if block.cca is None:
            w, b = linear_of(block.conv_out)
            w = w * block.cw.detach().double().reshape(1, -1)  # (W diag(cw)) y = W (cw * y)
            self.buffer("out_weight", as_pointwise_weight(w, block.cw))
            self.buffer("out_bias", b.to(block.cw.dtype))

    def forward(
        self, x: Tensor, overwrite_input: bool = False, workspace: Workspace | None = None
    ) -> Tensor:
        """The block's output; with `overwrite_input` the BSRN-S sum may reuse `x`'s memory."""
        y = self.body(x, workspace)
        if self.cca is None:
            return fused_conv_add(y, self.out_weight, self.out_bias, x, into_other=overwrite_input)
        n, c = y.shape[:2]
        flat = y.permute(0, 2, 3, 1).reshape(n, -1, c)  # a view: y is channels-last
        mean = flat.mean(1)
        std = (flat - mean[:, None]).square_().mean(1).sqrt_()
        gate = self.cca.conv_du((mean + std).reshape(n, c, 1, 1))
        return torch.addcmul(x, y, gate, out=y)


class FusedBSRN(FusedModule):
    """BSRN / BSRN-S for inference, built from a trained `BSRN`; same outputs to float rounding.

    Channels-last throughout; the 4-fold input replication folded into the stem's pointwise
    weights; the trunk's 1x1 over concat(B1..Bn) a running sum over the block outputs (so no
    block output outlives the next block); blocks as `FusedESDB`. Inference only: it holds
    derived tensors, no parameters, and loads no state dict.
    """

    def __init__(self, net: BSRN) -> None:
        super().__init__()
        pw_w, _ = linear_of(net.fea_conv.pw)
        c_in = pw_w.shape[1] // 4
        replicated = sum(pw_w[:, k * c_in : (k + 1) * c_in] for k in range(4))
        self.fea_conv = FusedConv(net.fea_conv, pw_weight=replicated)
        self.blocks = nn.ModuleList(
            FusedESDB(getattr(net, f"B{i}")) for i in range(1, net.num_block + 1)
        )
        w1, b1 = linear_of(net.c1)
        ref = net.upsampler.upsampleOneStep[0].weight
        feat = w1.shape[0]
        for i in range(net.num_block):
            self.buffer(f"c1_weight{i}", as_pointwise_weight(w1[:, i * feat : (i + 1) * feat], ref))
        self.buffer("c1_bias", b1.to(ref.dtype))
        self.act = Act.of(net.GELU)
        self.c2 = FusedConv(net.c2)
        self.upsampler = FusedConv(net.upsampler.upsampleOneStep[0])
        self.shuffle = ChannelsLastPixelShuffle(net.upsampler.upsampleOneStep[1].upscale_factor)

    def forward(self, x: Tensor) -> Tensor:
        fea = self.fea_conv(channels_last(x))
        out, trunk = fea, None
        workspace = Workspace()
        for i, block in enumerate(self.blocks):
            out = block(
                out, overwrite_input=i > 0, workspace=workspace
            )  # B1's input is the stem, needed at the end
            trunk = running_sum(trunk, out, getattr(self, f"c1_weight{i}"), self.c1_bias)
        assert trunk is not None
        lr = self.c2.add(self.act(trunk), fea, overwrite=True)
        return self.shuffle(self.upsampler(lr))


@fused_form(BSRN)
def fuse_bsrn(net: BSRN) -> FusedBSRN:
    return FusedBSRN(net)
