"""RLFN: the residual local feature network (Kong et al., CVPRW 2022), NTIRE 2022 ESR runtime winner.

RLFN drops RFDN's feature distillation: each block (RLFB) is three 3x3 conv + LeakyReLU layers
with a block-level residual, a 1x1 fusion and a lighter ESA (fixed 16 channels, one 3x3 after
the pooling, no `conv_max`/`conv3_`). Fewer, wider ops run faster on GPUs than many thin ones.
Layout and key names are those of bytedance/RLFN (`conv_1`, `block_1..n`, `conv_2`,
`upsampler.0`); the tail is one conv to `3 * s^2` channels and a pixel shuffle, so x3 exists
although only x2/x4 weights were published. LR inputs must be at least 15x15 (the ESA's
stride-2 conv and 7x7 max-pool).

Input RGB in [0,255], like the EDSR framework the authors trained with (their `test_demo.py`
multiplies by 255). Measured on Set5 baby x4: 32.27 dB fed [0,255], 29.45 dB fed [0,1]; the
README of `shared/weights/official` says [0,1], which is wrong for these files.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimsr.archs._detect import has_all, indices, pixelshuffle_scale
from slimsr.archs.blocks import OneStepUpsampler, conv1x1, conv3x3, conv3x3_down
from slimsr.registry import Detection, register_detector, register_family, register_model


class LiteESA(nn.Module):
    """RLFN's ESA: squeeze to `esa_feat` channels, stride-2 conv, 7x7/3 max-pool, one 3x3,
    bilinear resize back, add the 1x1 `conv_f` branch and gate the input with a sigmoid.

    Unlike `blocks.ESA` (RFDN/BSRN) there is no `conv_max`/`conv3_` and no ReLU in the coarse
    branch, and the width is fixed rather than C/4.
    """

    def __init__(self, num_feat: int, esa_feat: int = 16) -> None:
        super().__init__()
        self.conv1 = conv1x1(num_feat, esa_feat)
        self.conv_f = conv1x1(esa_feat, esa_feat)
        self.conv2 = conv3x3_down(esa_feat, esa_feat)
        self.conv3 = conv3x3(esa_feat, esa_feat)
        self.conv4 = conv1x1(esa_feat, num_feat)

    def forward(self, x: Tensor) -> Tensor:
        squeezed = self.conv1(x)
        coarse = self.conv3(F.max_pool2d(self.conv2(squeezed), kernel_size=7, stride=3))
        coarse = F.interpolate(coarse, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return x * torch.sigmoid(self.conv4(coarse + self.conv_f(squeezed)))


class RLFB(nn.Module):
    """Residual local feature block: 3x (3x3 conv, LeakyReLU 0.05) + skip, 1x1 `c5`, ESA.

    `mid_feat` is the width inside the three convs (the challenge model prunes it to 48 while
    the trunk carries 46)."""

    def __init__(self, num_feat: int, mid_feat: int, esa_feat: int) -> None:
        super().__init__()
        self.c1_r = conv3x3(num_feat, mid_feat)
        self.c2_r = conv3x3(mid_feat, mid_feat)
        self.c3_r = conv3x3(mid_feat, num_feat)
        self.c5 = conv1x1(num_feat, num_feat)
        self.esa = LiteESA(num_feat, esa_feat)
        self.act = nn.LeakyReLU(0.05)

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self.c1_r(x))
        y = self.act(self.c2_r(y))
        y = self.act(self.c3_r(y))
        return self.esa(self.c5(y + x))


class RLFN(nn.Module):
    """RLFN with blocks `block_1..block_n` (official attribute names); RGB in [0,255]."""

    def __init__(
        self,
        scale: int,
        num_feat: int = 52,
        num_block: int = 6,
        mid_feat: int | None = None,
        esa_feat: int = 16,
    ) -> None:
        super().__init__()
        self.num_block = num_block
        self.conv_1 = conv3x3(3, num_feat)
        for i in range(1, num_block + 1):
            self.add_module(f"block_{i}", RLFB(num_feat, mid_feat or num_feat, esa_feat))
        self.conv_2 = conv3x3(num_feat, num_feat)
        self.upsampler = OneStepUpsampler(num_feat, 3, scale)

    def forward(self, x: Tensor) -> Tensor:
        shallow = self.conv_1(x)
        y = shallow
        for i in range(1, self.num_block + 1):
            y = getattr(self, f"block_{i}")(y)
        return self.upsampler(self.conv_2(y) + shallow)


# CPU layout (channels_last / contiguous time at x2 / x3 / x4): rlfn 0.71 / 0.61 / 1.15, one run
# on a heavily loaded machine; not faster at every scale, so contiguous until re-measured.
# Tiling: each ESA pools on a stride-6 grid anchored at the image origin and resizes the coarse
# map to the input's own size, so a tile sees other pooling windows and other interpolation
# weights than the whole image, whatever the overlap.
register_family("rlfn", cpu_channels_last=False, tiling="approximate")

_PAPER = "Kong et al., Residual Local Feature Network for Efficient Super-Resolution, CVPRW 2022"


@register_model(
    family="rlfn",
    input_range=255.0,
    min_size=15,  # ESA: stride-2 conv then a 7x7 max-pool need >= 15 px
    paper=_PAPER,
    params_note="paper: 0.527M (x2) / 0.544M (x4); official x2/x4 weights, x3 has none",
)
def rlfn(scale: int, **kwargs: Any) -> RLFN:
    """RLFN: 52 features, 6 RLFBs with a 16-channel ESA."""
    return RLFN(scale, **{"num_feat": 52, "num_block": 6, **kwargs})


@register_model(
    family="rlfn",
    input_range=255.0,
    min_size=15,
    paper=_PAPER,
    params_note="paper: 0.455M (x2) / 0.470M (x4); official x2/x4 weights, x3 has none",
)
def rlfn_s(scale: int, **kwargs: Any) -> RLFN:
    """RLFN-S: RLFN with 48 features."""
    return RLFN(scale, **{"num_feat": 48, "num_block": 6, **kwargs})


@register_model(
    family="rlfn",
    input_range=255.0,
    min_size=15,
    paper=_PAPER + " (NTIRE 2022 ESR challenge entry, RLFN_Prune)",
    params_note="official weights are x4 only (0.317M); x2/x3 use the scale-aware tail",
    aliases=("rlfn_prune",),
)
def rlfn_ntire(scale: int, **kwargs: Any) -> RLFN:
    """RLFN NTIRE 2022 entry: 4 RLFBs, 46-channel trunk, 48 channels inside each block."""
    return RLFN(scale, **{"num_feat": 46, "num_block": 4, "mid_feat": 48, **kwargs})


# -- detection ---------------------------------------------------------------------------------

_KEYS = (
    "conv_1.weight",
    "block_1.c1_r.weight",
    "block_1.c5.weight",
    "block_1.esa.conv1.weight",
    "block_1.esa.conv3.weight",
    "conv_2.weight",
    "upsampler.0.weight",
)

_VARIANTS = {  # (num_feat, num_block, mid_feat, esa_feat) of each variant's defaults
    (52, 6, 52, 16): "rlfn",
    (48, 6, 48, 16): "rlfn_s",
    (46, 4, 48, 16): "rlfn_ntire",
}


@register_detector("rlfn")
def detect_rlfn(sd: dict[str, Tensor]) -> Detection | None:
    """Keys `conv_1`, `block_1..n.{c1_r,c2_r,c3_r,c5,esa.*}`, `conv_2`, `upsampler.0`, exactly:
    RFDN's blocks carry `c1_d`, its ESA `conv_max`, so any extra key means another network."""
    if not has_all(sd, _KEYS) or any(sd[k].ndim != 4 for k in _KEYS):
        return None
    num_feat, in_ch = sd["conv_1.weight"].shape[:2]
    blocks = indices(sd, r"block_(\d+)\.c1_r\.weight")
    if in_ch != 3 or blocks != list(range(1, len(blocks) + 1)):
        return None
    mid_feat = sd["block_1.c1_r.weight"].shape[0]
    esa_feat = sd["block_1.esa.conv1.weight"].shape[0]
    scale = pixelshuffle_scale(sd["upsampler.0.weight"].shape[0])
    if scale is None:
        return None
    shape = (num_feat, len(blocks), mid_feat, esa_feat)
    name = _VARIANTS.get(shape, "rlfn")
    kwargs: dict[str, Any] = {}
    if name == "rlfn":
        defaults = {"num_feat": 52, "num_block": 6, "mid_feat": num_feat, "esa_feat": 16}
        found = dict(zip(("num_feat", "num_block", "mid_feat", "esa_feat"), shape, strict=True))
        kwargs = {k: v for k, v in found.items() if v != defaults[k]}
    with torch.device("meta"):
        expected = RLFN(scale, *shape[:2], mid_feat=mid_feat, esa_feat=esa_feat).state_dict()
    if set(expected) != set(sd) or any(expected[k].shape != sd[k].shape for k in expected):
        return None
    return Detection(name, scale, kwargs, dict(sd))
