"""BSRN and BSRN-S (Li et al., Blueprint Separable Residual Network, CVPRW 2022).

Both follow the official BSRN repository: BSRN is `BSRN_arch.BSRN` (BSConvU everywhere, ESDB
blocks with ESA + contrast-aware channel attention); BSRN-S is `rfdnfinalB5_arch.RFDNFINALB5`,
the NTIRE 2022 efficiency entry, whose 1x1 convs are `nn.Linear` layers (2-D weights) and whose
blocks end in learnable channel weights `cw` + a Linear `conv_out` instead of CCA. One class
serves both (`layout`), since the graphs differ only in those layers. Input RGB in [0,1].

The networks need LR inputs of at least 15x15 (see `ESA`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from slimsr.archs._compression import ArchSpec, Built, Dims, check_net
from slimsr.archs._detect import has_all, indices, pixelshuffle_scale
from slimsr.archs._switches import choose, flag
from slimsr.archs.blocks import (
    ESA,
    GELU,
    BSConvS,
    BSConvU,
    CCALayer,
    ChannelLinear,
    ConvFactory,
    DistillationBlock,
    DSConv,
    OneStepUpsampler,
    conv1x1,
    conv3x3_down,
)
from slimsr.errors import ArchOptionError
from slimsr.registry import Detection, register_detector, register_family, register_model

PAPER = "Li et al., Blueprint Separable Residual Network for Efficient Image SR, CVPRW 2022"
LAYOUTS = ("bsrn", "bsrn_s")
CONVS = ("bsconvu", "bsconvs", "dsconv")
"""Table 1 of the paper: the 3x3 decomposition used everywhere (stem, blocks, ESA, fusion)."""
ACTS: dict[str, Callable[[], nn.Module]] = {
    "gelu": GELU,
    "relu": nn.ReLU,
    # The paper gives no slope; 0.05 is RFDN's, the network BSRN is derived from.
    "lrelu": partial(nn.LeakyReLU, 0.05),
    "hswish": nn.Hardswish,
}
"""Table 3 of the paper: the activation of the blocks, ESA and the fusion (GELU is the paper's)."""
_CONV_CLASSES: dict[str, Callable[..., nn.Module]] = {
    "bsconvu": BSConvU,
    "bsconvs": BSConvS,
    "dsconv": DSConv,
}


def _layers(layout: str, conv: str = "bsconvu") -> tuple[ConvFactory, Callable[..., nn.Module]]:
    """(1x1 layer, 3x3 separable conv) of a layout: conv-based for BSRN, Linear-based for
    BSRN-S (which exists only with BSConvU)."""
    if layout == "bsrn":
        return conv1x1, _CONV_CLASSES[conv]
    if layout == "bsrn_s":
        return ChannelLinear, partial(BSConvU, linear_pw=True)
    raise ValueError(f"unknown BSRN layout {layout!r}; expected one of {LAYOUTS}")


def _esa(num_feat: int, layout: str, conv: str, act: str) -> ESA:
    """BSRN's ESA is all separable convs; BSRN-S keeps a plain conv for the stride-2 reduction."""
    pointwise, sep = _layers(layout, conv)
    down = conv3x3_down if layout == "bsrn_s" else partial(sep, stride=2, padding=0)
    return ESA(num_feat, pointwise, sep, down, ACTS[act])


class ESDB(DistillationBlock):
    """Efficient separable distillation block: three BSRB steps that each split off half the
    channels, a fourth BSConv, a 1x1 fusion, ESA, then CCA (BSRN) or `cw` + `conv_out`
    (BSRN-S), plus the block input. `esa` / `cca` off drop those modules (Table 2)."""

    def __init__(
        self,
        num_feat: int,
        layout: str = "bsrn",
        conv: str = "bsconvu",
        esa: bool = True,
        cca: bool = True,
        act: str = "gelu",
    ) -> None:
        super().__init__()
        pointwise, sep = _layers(layout, conv)
        dc = num_feat // 2
        self.c1_d = pointwise(num_feat, dc)
        self.c1_r = sep(num_feat, num_feat)
        self.c2_d = pointwise(num_feat, dc)
        self.c2_r = sep(num_feat, num_feat)
        self.c3_d = pointwise(num_feat, dc)
        self.c3_r = sep(num_feat, num_feat)
        self.c4 = sep(num_feat, dc)
        self.act = ACTS[act]()
        self.c5 = pointwise(4 * dc, num_feat)
        self.esa: nn.Module = _esa(num_feat, layout, conv, act) if esa else nn.Identity()
        self.cca: nn.Module | None = None
        self.conv_out: nn.Module | None = None
        if layout == "bsrn":
            if cca:
                self.cca = CCALayer(num_feat)
        else:
            # The official code draws the channel weights from N(1, 0.2).
            self.cw = nn.Parameter(torch.normal(1.0, 0.2, size=(1, num_feat)))
            self.conv_out = ChannelLinear(num_feat, num_feat)

    def forward(self, x: Tensor) -> Tensor:
        out = self.esa(self.distill(x))
        if self.cca is not None:
            out = self.cca(out)
        elif self.conv_out is not None:
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
    The paper's ablations are switches; the defaults are the published network:

    - `conv`: "bsconvu" (default), "bsconvs" or "dsconv", the separable 3x3 everywhere
      (Table 1; BSRN layout only);
    - `esa`, `cca`: False drops ESA / CCA from every block (Table 2; `cca` is BSRN layout only);
    - `act`: "gelu" (default), "relu", "lrelu" (slope 0.05) or "hswish" in the blocks, ESA and
      the fusion (Table 3); it leaves no trace in the weights, so sidecars carry it;
    - Table 4's BSRN-1 / BSRN-2 are sizes: `num_block=4` / `num_block=10` (see docs/ablations.md).
    """

    def __init__(
        self,
        scale: int,
        num_feat: int = 64,
        num_block: int = 8,
        layout: str = "bsrn",
        conv: str = "bsconvu",
        esa: bool = True,
        cca: bool = True,
        act: str = "gelu",
    ) -> None:
        super().__init__()
        layout = choose("bsrn", "layout", layout, LAYOUTS)
        conv = choose("bsrn", "conv", conv, CONVS)
        act = choose("bsrn", "act", act, tuple(ACTS))
        esa, cca = flag("bsrn", "esa", esa), flag("bsrn", "cca", cca)
        if layout == "bsrn_s" and (conv != "bsconvu" or not cca):
            raise ArchOptionError(
                "bsrn_s: conv and cca are BSRN switches (BSRN-S is BSConvU with channel weights)"
            )
        pointwise, sep = _layers(layout, conv)
        # The RGB input is replicated 4 times before the first BSConv, hence 12 channels.
        self.fea_conv = sep(3 * 4, num_feat)
        self.num_block = num_block
        for i in range(1, num_block + 1):
            self.add_module(f"B{i}", ESDB(num_feat, layout, conv, esa, cca, act))
        self.c1 = pointwise(num_feat * num_block, num_feat)
        self.GELU = ACTS[act]()  # the official attribute name, whatever the activation
        self.c2 = sep(num_feat, num_feat)
        self.upsampler = PixelShuffleDirect(num_feat, scale)
        # `slimsr.fused.bsrn` covers BSConvU blocks with ESA and CCA / channel weights.
        self.fusable = conv == "bsconvu" and esa and cca and act != "hswish"

    def forward(self, x: Tensor) -> Tensor:
        fea = self.fea_conv(torch.cat([x, x, x, x], dim=1))
        outs: list[Tensor] = []
        out = fea
        for i in range(1, self.num_block + 1):
            out = getattr(self, f"B{i}")(out)
            outs.append(out)
        trunk = self.GELU(self.c1(torch.cat(outs, dim=1)))
        return self.upsampler(self.c2(trunk) + fea)


# -- compression (slimsr.compress) ------------------------------------------------------------


class BSRNSpec(ArchSpec):
    """BSRN and BSRN-S: N_c features, N_b ESDBs, N_l = 4 (fixed).

    An ESDB has three BSRB steps and a fourth BSConv before its 1x1 fusion (the conv before the
    output), a fixed structure: N_l stays 4 and the budget goes to N_b and N_c. Widths are
    multiples of 4 (the blocks split C/2 and ESA works on C/4), at least 16 (CCA's C/16).
    """

    family = "bsrn"
    deep_feature = "ESDB blocks B1..Bn, the fusion c1 and the conv c2 (weights only)"
    meaning = "N_c = features, N_l = 4 (fixed ESDB structure), N_b = ESDB blocks"
    min_channels = 16
    _LAYERS = 4

    def dims(self, model: Built) -> Dims:
        net = check_net(model, BSRN, self)
        return Dims(net.upsampler.upsampleOneStep[0].in_channels, self._LAYERS, net.num_block)

    def is_deep_feature(self, name: str) -> bool:
        block = name.split(".", 1)[0]
        is_block = block[:1] == "B" and block[1:].isdigit()
        return name.endswith("weight") and (is_block or name.startswith(("c1.", "c2.")))

    def layer_bounds(self, dims: Dims) -> tuple[int, int | None]:
        return self._LAYERS, self._LAYERS

    def channel_multiple(self, model: Built) -> int:
        return 4

    def compact(self, model: Built, dims: Dims) -> tuple[str, dict[str, Any]]:
        return model.name, {
            **model.kwargs,
            "num_feat": dims.channels,
            "num_block": dims.blocks,
        }


# CPU layout of the plain graph (channels_last / contiguous time at x2 / x3 / x4): bsrn 0.92 /
# 0.96 / 0.97, bsrn_s 1.01 / 0.98 / 0.97: not faster at every scale (its concatenations and, at
# one thread, its 1x1 convs, which PyTorch then runs as NCHW GEMMs with a layout copy each way).
# Its fused form (`slimsr.fused.bsrn`) is channels-last and much faster than either.
# Tiling: ESA pools over large windows and CCA averages over the whole image.
register_family("bsrn", cpu_channels_last=False, tiling="approximate", compression=BSRNSpec())


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


def _conv_of(sd: dict[str, Tensor], num_feat: int) -> str | None:
    """Which separable conv built these weights (Table 1), from the stem's and `B1.c4`'s keys:
    BSConvS has `pw1`; DSConv's depthwise step comes first, so it runs at the input width."""
    if "fea_conv.pw1.weight" in sd:
        return "bsconvs"
    c4_dw = sd.get("B1.c4.dw.weight")
    if c4_dw is None:
        return None
    return "dsconv" if c4_dw.shape[0] == num_feat else "bsconvu"


@register_detector("bsrn")
def detect_bsrn(sd: dict[str, Tensor]) -> Detection | None:
    """Separable stem (`fea_conv.*`), blocks `B1..Bn`, `upsampler.upsampleOneStep`.

    BSRN-S is told apart by its channel weights `B1.cw` / 2-D (Linear) pointwise weights. The
    Table 1/2 switches show in the keys (conv type, ESA, CCA) and are read back; `act` does not,
    so a file without a sidecar comes back with GELU.
    """
    if not has_all(sd, ("fea_conv.dw.weight", "c1.weight", _UPSAMPLER)):
        return None
    c1 = sd["c1.weight"]
    if c1.ndim not in (2, 4) or sd[_UPSAMPLER].ndim != 4:
        return None
    layout = "bsrn_s" if ("B1.cw" in sd or c1.ndim == 2) else "bsrn"
    num_feat = c1.shape[0]
    blocks = indices(sd, r"B(\d+)\.c1_d\.weight")
    if not blocks or blocks != list(range(1, len(blocks) + 1)):
        return None
    num_block = len(blocks)
    conv = _conv_of(sd, num_feat)
    stem = {"bsconvs": ("fea_conv.pw1.weight", 1), "dsconv": ("fea_conv.dw.weight", 0)}
    key, dim = stem.get(conv or "", ("fea_conv.pw.weight", 1))
    stem_in = sd[key].shape[dim] if key in sd else None
    if conv is None or stem_in != 12 or c1.shape[:2] != (num_feat, num_feat * num_block):
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
    if conv != "bsconvu":
        kwargs["conv"] = conv
    if not any(k.startswith("B1.esa.") for k in sd):
        kwargs["esa"] = False
    if layout == "bsrn" and not any(k.startswith("B1.cca.") for k in sd):
        kwargs["cca"] = False
    return Detection(layout, scale, kwargs, dict(sd))
