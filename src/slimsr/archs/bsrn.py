"""BSRN and BSRN-S (Li et al., Blueprint Separable Residual Network, CVPRW 2022).

Both follow the official BSRN repository: BSRN is `BSRN_arch.BSRN` (BSConvU everywhere, ESDB
blocks with ESA + contrast-aware channel attention); BSRN-S is `rfdnfinalB5_arch.RFDNFINALB5`,
the NTIRE 2022 efficiency entry, whose 1x1 convs are `nn.Linear` layers (2-D weights) and whose
blocks end in learnable channel weights `cw` + a Linear `conv_out` instead of CCA. One class
serves both (`layout`), since the graphs differ only in those layers. Input RGB in [0,1].

The networks need LR inputs of at least 15x15 (see `ESA`).
"""

from __future__ import annotations

import copy
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from slimsr.archs._detect import has_all, indices, pixelshuffle_scale
from slimsr.archs.blocks import (
    ESA,
    Act,
    BSConvU,
    CCALayer,
    ChannelLinear,
    ChannelsLastPixelShuffle,
    ConvFactory,
    DistillationBlock,
    FusedConv,
    FusedDistillation,
    FusedModule,
    OneStepUpsampler,
    Workspace,
    as_pointwise_weight,
    channels_last,
    conv1x1,
    conv3x3_down,
    fused_conv,
    fused_conv_add,
    linear_of,
)
from slimsr.registry import Detection, register_detector, register_model

PAPER = "Li et al., Blueprint Separable Residual Network for Efficient Image SR, CVPRW 2022"
LAYOUTS = ("bsrn", "bsrn_s")


def _layers(layout: str) -> tuple[ConvFactory, ConvFactory]:
    """(1x1 layer, 3x3 BSConvU) of a layout: conv-based for BSRN, Linear-based for BSRN-S."""
    if layout == "bsrn":
        return conv1x1, BSConvU
    if layout == "bsrn_s":
        return ChannelLinear, partial(BSConvU, linear_pw=True)
    raise ValueError(f"unknown BSRN layout {layout!r}; expected one of {LAYOUTS}")


def _esa(num_feat: int, layout: str) -> ESA:
    """BSRN's ESA is all BSConvU; BSRN-S keeps a plain conv for the stride-2 reduction."""
    pointwise, conv = _layers(layout)
    down = conv3x3_down if layout == "bsrn_s" else partial(BSConvU, stride=2, padding=0)
    return ESA(num_feat, pointwise, conv, down, nn.GELU)


class ESDB(DistillationBlock):
    """Efficient separable distillation block: three BSRB steps that each split off half the
    channels, a fourth BSConv, a 1x1 fusion, ESA, then CCA (BSRN) or `cw` + `conv_out`
    (BSRN-S), plus the block input."""

    def __init__(self, num_feat: int, layout: str = "bsrn") -> None:
        super().__init__()
        pointwise, conv = _layers(layout)
        dc = num_feat // 2
        self.c1_d = pointwise(num_feat, dc)
        self.c1_r = conv(num_feat, num_feat)
        self.c2_d = pointwise(num_feat, dc)
        self.c2_r = conv(num_feat, num_feat)
        self.c3_d = pointwise(num_feat, dc)
        self.c3_r = conv(num_feat, num_feat)
        self.c4 = conv(num_feat, dc)
        self.act = nn.GELU()
        self.c5 = pointwise(4 * dc, num_feat)
        self.esa = _esa(num_feat, layout)
        self.cca: nn.Module | None = None
        if layout == "bsrn":
            self.cca = CCALayer(num_feat)
        else:
            # The official code draws the channel weights from N(1, 0.2).
            self.cw = nn.Parameter(torch.normal(1.0, 0.2, size=(1, num_feat)))
            self.conv_out = ChannelLinear(num_feat, num_feat)

    def forward(self, x: Tensor) -> Tensor:
        out = self.esa(self.distill(x))
        if self.cca is not None:
            out = self.cca(out)
        else:
            out = self.conv_out(out * self.cw[:, :, None, None])
        return out + x


class PixelShuffleDirect(nn.Module):
    """Holds the one-step upsampler under the official attribute `upsampleOneStep`."""

    def __init__(self, num_feat: int, scale: int, num_out_ch: int = 3) -> None:
        super().__init__()
        self.upsampleOneStep = OneStepUpsampler(num_feat, num_out_ch, scale)

    def forward(self, x: Tensor) -> Tensor:
        return self.upsampleOneStep(x)


class BSRN(nn.Module):
    """BSRN (`layout="bsrn"`) or BSRN-S (`layout="bsrn_s"`); RGB in [0,1].

    Blocks are attributes `B1..Bn` as in the official code (which hard-codes 8 or 5 of them).
    """

    def __init__(
        self, scale: int, num_feat: int = 64, num_block: int = 8, layout: str = "bsrn"
    ) -> None:
        super().__init__()
        pointwise, conv = _layers(layout)
        # The RGB input is replicated 4 times before the first BSConv, hence 12 channels.
        self.fea_conv = conv(3 * 4, num_feat)
        self.num_block = num_block
        for i in range(1, num_block + 1):
            self.add_module(f"B{i}", ESDB(num_feat, layout))
        self.c1 = pointwise(num_feat * num_block, num_feat)
        self.GELU = nn.GELU()
        self.c2 = conv(num_feat, num_feat)
        self.upsampler = PixelShuffleDirect(num_feat, scale)

    def forward(self, x: Tensor) -> Tensor:
        fea = self.fea_conv(torch.cat([x, x, x, x], dim=1))
        outs: list[Tensor] = []
        out = fea
        for i in range(1, self.num_block + 1):
            out = getattr(self, f"B{i}")(out)
            outs.append(out)
        trunk = self.GELU(self.c1(torch.cat(outs, dim=1)))
        return self.upsampler(self.c2(trunk) + fea)

    def fuse_for_inference(self) -> FusedBSRN:
        """A new inference-only module computing this forward faster (see `FusedBSRN`)."""
        return FusedBSRN(self).eval()


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
            w = getattr(self, f"c1_weight{i}")
            if trunk is None:
                trunk = fused_conv(out, w, self.c1_bias)
            else:
                trunk = fused_conv_add(out, w, None, trunk, into_other=True)
        assert trunk is not None
        lr = self.c2.add(self.act(trunk), fea, overwrite=True)
        return self.shuffle(self.upsampler(lr))


@register_model(
    family="bsrn",
    input_range=1.0,
    min_size=15,  # ESA: stride-2 conv then a 7x7 max-pool need >= 15 px
    paper=PAPER,
    params_note="paper: 332K / 340K / 352K (x2/x3/x4), exact",
)
def bsrn(scale: int, **kwargs: Any) -> BSRN:
    """BSRN: 64 features, 8 ESDB blocks, BSConvU, ESA + CCA, one-step pixel shuffle."""
    return BSRN(scale, **{"num_feat": 64, "num_block": 8, "layout": "bsrn", **kwargs})


@register_model(
    family="bsrn",
    input_range=1.0,
    min_size=15,  # ESA: stride-2 conv then a 7x7 max-pool need >= 15 px
    paper=PAPER,
    params_note="paper: 156K at x4, exact; official weights exist for x4 only",
)
def bsrn_s(scale: int, **kwargs: Any) -> BSRN:
    """BSRN-S: 48 features, 5 blocks, Linear 1x1s, channel weights instead of CCA (NTIRE 2022)."""
    return BSRN(scale, **{"num_feat": 48, "num_block": 5, "layout": "bsrn_s", **kwargs})


# -- detection ---------------------------------------------------------------------------------

_DEFAULTS = {"bsrn": (64, 8), "bsrn_s": (48, 5)}
_UPSAMPLER = "upsampler.upsampleOneStep.0.weight"


@register_detector("bsrn")
def detect_bsrn(sd: dict[str, Tensor]) -> Detection | None:
    """BSConvU stem (`fea_conv.pw`/`.dw`), blocks `B1..Bn`, `upsampler.upsampleOneStep`.

    BSRN-S is told apart by its channel weights `B1.cw` / 2-D (Linear) pointwise weights.
    """
    if not has_all(sd, ("fea_conv.pw.weight", "fea_conv.dw.weight", "c1.weight", _UPSAMPLER)):
        return None
    pw = sd["fea_conv.pw.weight"]
    if pw.ndim not in (2, 4) or sd[_UPSAMPLER].ndim != 4:
        return None
    layout = "bsrn_s" if ("B1.cw" in sd or pw.ndim == 2) else "bsrn"
    num_feat = pw.shape[0]
    blocks = indices(sd, r"B(\d+)\.c1_d\.weight")
    if pw.shape[1] != 12 or blocks != list(range(1, len(blocks) + 1)) or not blocks:
        return None
    num_block = len(blocks)
    if sd["c1.weight"].shape[:2] != (num_feat, num_feat * num_block):
        return None
    scale = pixelshuffle_scale(sd[_UPSAMPLER].shape[0])
    if scale is None:
        return None
    kwargs: dict[str, Any] = {}
    feat, block = _DEFAULTS[layout]
    if num_feat != feat:
        kwargs["num_feat"] = num_feat
    if num_block != block:
        kwargs["num_block"] = num_block
    return Detection(layout, scale, kwargs, dict(sd))
