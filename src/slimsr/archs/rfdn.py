"""E-RFDN: the residual feature distillation network (Liu et al., ECCVW 2020), AIM 2020 winner.

Layout of the official njulj/RFDN code (also the NTIRE 2022 efficiency baseline). That code
always builds a x4 tail whatever `upscale` says; here the tail conv produces `3 * s * s`
channels so x2 and x3 exist too (x4 is unchanged and loads the official weights). Input RGB in
[0,255]. LR inputs must be at least 15x15 (see `ESA`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from slimsr.archs._detect import has_all, indices, pixelshuffle_scale
from slimsr.archs.blocks import ESA, DistillationBlock, OneStepUpsampler, conv1x1, conv3x3
from slimsr.registry import Detection, register_detector, register_family, register_model


class RFDB(DistillationBlock):
    """Residual feature distillation block: three (1x1 distil, 3x3 residual) steps, a fourth 3x3,
    a 1x1 fusion and ESA. Unlike BSRN's ESDB there is no block-level skip connection."""

    def __init__(self, num_feat: int) -> None:
        super().__init__()
        dc = num_feat // 2
        self.c1_d = conv1x1(num_feat, dc)
        self.c1_r = conv3x3(num_feat, num_feat)
        self.c2_d = conv1x1(num_feat, dc)
        self.c2_r = conv3x3(num_feat, num_feat)
        self.c3_d = conv1x1(num_feat, dc)
        self.c3_r = conv3x3(num_feat, num_feat)
        self.c4 = conv3x3(num_feat, dc)
        self.act = nn.LeakyReLU(0.05)
        self.c5 = conv1x1(4 * dc, num_feat)
        self.esa = ESA(num_feat)

    def forward(self, x: Tensor) -> Tensor:
        return self.esa(self.distill(x))  # no block-level residual, as in the official RFDB


class RFDN(nn.Module):
    """RFDN with blocks `B1..Bn` (official attribute names); RGB in [0,255]."""

    def __init__(self, scale: int, num_feat: int = 50, num_block: int = 4) -> None:
        super().__init__()
        self.fea_conv = conv3x3(3, num_feat)
        self.num_block = num_block
        for i in range(1, num_block + 1):
            self.add_module(f"B{i}", RFDB(num_feat))
        self.c = nn.Sequential(conv1x1(num_feat * num_block, num_feat), nn.LeakyReLU(0.05))
        self.LR_conv = conv3x3(num_feat, num_feat)
        self.upsampler = OneStepUpsampler(num_feat, 3, scale)

    def forward(self, x: Tensor) -> Tensor:
        fea = self.fea_conv(x)
        outs: list[Tensor] = []
        out = fea
        for i in range(1, self.num_block + 1):
            out = getattr(self, f"B{i}")(out)
            outs.append(out)
        return self.upsampler(self.LR_conv(self.c(torch.cat(outs, dim=1))) + fea)


# CPU layout (channels_last / contiguous time at x2 / x3 / x4): e_rfdn 0.81 / 0.83 / 0.85.
# Tiling: ESA's strided conv and 7x7/3 max-pool read far beyond any tile overlap.
register_family("rfdn", cpu_channels_last=True, tiling="approximate")


@register_model(
    family="rfdn",
    input_range=255.0,
    min_size=15,  # ESA: stride-2 conv then a 7x7 max-pool need >= 15 px
    paper="Liu et al., Residual Feature Distillation Network for Lightweight Image SR, ECCVW 2020",
    params_note="official code is x4-only; x2/x3 use a scale-aware tail",
    aliases=("rfdn", "erfdn"),
)
def e_rfdn(scale: int, **kwargs: Any) -> RFDN:
    """E-RFDN: 50 features, 4 RFDB blocks with ESA (AIM 2020 winner, NTIRE 2022 baseline)."""
    return RFDN(scale, **{"num_feat": 50, "num_block": 4, **kwargs})


# -- detection ---------------------------------------------------------------------------------

_KEYS = (
    "fea_conv.weight",
    "B1.c1_d.weight",
    "B1.esa.conv1.weight",
    "c.0.weight",
    "LR_conv.weight",
    "upsampler.0.weight",
)


@register_detector("rfdn")
def detect_rfdn(sd: dict[str, Tensor]) -> Detection | None:
    """Plain-conv stem `fea_conv.weight` (BSRN's is `fea_conv.pw/.dw`), `B1..Bn`, `c.0`,
    `LR_conv`, `upsampler.0`."""
    if (
        not has_all(sd, _KEYS)
        or sd["fea_conv.weight"].ndim != 4
        or sd["upsampler.0.weight"].ndim != 4
    ):
        return None
    num_feat, in_ch = sd["fea_conv.weight"].shape[:2]
    blocks = indices(sd, r"B(\d+)\.c1_d\.weight")
    if in_ch != 3 or not blocks or blocks != list(range(1, len(blocks) + 1)):
        return None
    num_block = len(blocks)
    if sd["c.0.weight"].shape[:2] != (num_feat, num_feat * num_block):
        return None
    scale = pixelshuffle_scale(sd["upsampler.0.weight"].shape[0])
    if scale is None:
        return None
    kwargs: dict[str, Any] = {}
    if num_feat != 50:
        kwargs["num_feat"] = num_feat
    if num_block != 4:
        kwargs["num_block"] = num_block
    return Detection("e_rfdn", scale, kwargs, dict(sd))
