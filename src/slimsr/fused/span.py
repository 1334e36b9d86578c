"""The fused form of SPAN in deploy form (`slimsr.archs.span.SPAN`: `span`, `span_ntire`).

The train-time form (`span_train`, `span_ntire_train`: Conv3XC branches) has none:
re-parameterise it first (`slimsr.reparam`), as for FMEN's train forms.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from slimsr.archs.blocks import ChannelsLastPixelShuffle
from slimsr.archs.span import IMG_RANGE, SPAB, SPAN
from slimsr.fused.forms import fused_form
from slimsr.fused.kernels import Act, as_pointwise_weight, fused_conv_add, linear_of
from slimsr.fused.modules import FusedConv, FusedModule, Workspace

_SILU = Act("silu")


def _conv(weight: Tensor, bias: Tensor, like: nn.Conv2d) -> FusedConv:
    """A fused 'same' conv with these (float64) tensors, in `like`'s dtype and geometry."""
    conv = nn.Conv2d(
        weight.shape[1], weight.shape[0], like.kernel_size, padding=like.padding, device="meta"
    )
    conv.weight = nn.Parameter(weight.to(like.weight.dtype), requires_grad=False)
    conv.bias = nn.Parameter(bias.to(like.weight.dtype), requires_grad=False)
    return FusedConv(conv)


class FusedSPAB(FusedModule):
    """A SPAB for inference: both SiLUs as conv post-ops, the attention's gate in a buffer
    reused by every block, its sum and product in place (the plain graph allocates four
    tensors for it).

    Written as 0.5 * tanh(H / 2) with H / 2 from halved weights, the gate saves one of the
    four passes, but ATen's tanh measured 2-2.4x slower than its sigmoid (1 thread, AVX-512),
    more than the saved pass.
    """

    def __init__(self, block: SPAB) -> None:
        super().__init__()
        self.c1 = FusedConv(block.c1_r.eval_conv)
        self.c2 = FusedConv(block.c2_r.eval_conv)
        self.c3 = FusedConv(block.c3_r.eval_conv)

    def forward(self, x: Tensor, workspace: Workspace) -> tuple[Tensor, Tensor]:
        """(block output, activated first conv), as `SPAB.forward`; `x` is left alone."""
        first = self.c1(x, _SILU)
        h = self.c3(self.c2(first, _SILU))
        gate = torch.sigmoid(h, out=workspace.get("gate", h, h.shape[1])).sub_(0.5)
        return h.add_(x).mul_(gate), first


class FusedSPAN(FusedModule):
    """SPAN (deploy form) for inference, built from a trained `SPAN`; same outputs to float
    rounding.

    Channels-last; blocks as `FusedSPAB`. `conv_cat` over concat(stem, conv_2(y), block_1,
    first) becomes a running sum of its four column blocks, each added as soon as its part
    exists: the stem's and conv_2's shares are linear in the conv before them, so each is
    folded into that conv (a 3x3 from the normalised input straight to the sum, which also
    brings conv_cat's bias, and conv_2 with conv_cat's share behind it, added into the sum by
    oneDNN); the other two are 1x1s added in place. So the stem is freed after the first block
    and no concatenation is built. The shuffle writes the NCHW image in one copy. Inference
    only: derived tensors, no parameters, no state dict.
    """

    def __init__(self, net: SPAN) -> None:
        super().__init__()
        if not net.deploy:
            raise ValueError("SPAN's fused form is built from the deploy form: reparameterise")
        c = net.conv_cat.out_channels
        conv_1, conv_2 = net.conv_1.eval_conv, net.conv_2.eval_conv
        self.buffer("mean", net.mean)
        self.conv_1 = FusedConv(conv_1)
        w_cat, b_cat = linear_of(net.conv_cat)
        w_stem, w_tail, w_block_1, w_first = (w_cat[:, i * c : (i + 1) * c] for i in range(4))
        self.stem_cat = _folded(w_stem, conv_1, b_cat)
        self.tail_cat = _folded(w_tail, conv_2, torch.zeros_like(b_cat))
        ref = net.conv_cat.weight
        self.buffer("block_1_weight", as_pointwise_weight(w_block_1, ref))
        self.buffer("first_weight", as_pointwise_weight(w_first, ref))
        self.blocks = nn.ModuleList(FusedSPAB(net.get_submodule(f"block_{i}")) for i in range(1, 7))
        self.upsampler = FusedConv(net.upsampler[0])
        self.shuffle = ChannelsLastPixelShuffle(net.upsampler[1].upscale_factor)

    def forward(self, x: Tensor) -> Tensor:
        xn = torch.empty_like(x, memory_format=torch.channels_last)
        torch.sub(x, self.mean, out=xn).mul_(IMG_RANGE)
        workspace = Workspace()
        acc = self.stem_cat(xn)
        y, first = self.blocks[0](self.conv_1(xn), workspace)
        acc = fused_conv_add(y, self.block_1_weight, None, acc, into_other=True)
        for block in self.blocks[1:]:
            y, first = block(y, workspace)
        acc = fused_conv_add(first, self.first_weight, None, acc, into_other=True)
        del first
        acc = self.tail_cat.add(y, acc, overwrite=True)
        return self.shuffle(self.upsampler(acc))


def _folded(w_share: Tensor, conv: nn.Conv2d, bias: Tensor) -> FusedConv:
    """w_share (1x1, float64) after `conv`, as one conv, plus `bias`."""
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0])
    return _conv(torch.einsum("om,mikl->oikl", w_share, w), w_share @ b + bias, conv)


@fused_form(SPAN)
def fuse_span(net: SPAN) -> FusedSPAN:
    return FusedSPAN(net)
