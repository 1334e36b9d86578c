"""SAFMN: spatially-adaptive feature modulation (Sun et al., ICCV 2023), and its NTIRE 2023
efficient-SR entry.

Layouts of the official sunny2109/SAFMN code (`to_feat`, `feats.<i>.safm/.ccm`, `to_img`), so
`{'params': ...}` files load strictly. A SAFM layer splits the channels into four groups: the
first gets a depthwise 3x3 at full resolution, each other group is max-pooled to a smaller
fraction of the image (adaptive windows), filtered by a depthwise 3x3 and upsampled (nearest)
back; a 1x1 aggregates them and, through GELU, multiplies the input.

* `safmn` (the paper): channel LayerNorm before SAFM and before the channel mixer (CCM), biased
  convs, pooling to 1/2, 1/4, 1/8; the long skip adds the stem features.
* `safmn_ntire` (the challenge entry, official `NTIRE2023_ESR/models/team15_SAFMN.py`): no
  LayerNorms and no biases in the blocks, a GRN (global response normalisation) after the stem,
  pooling to 1/4, 1/8, 1/16, and a bilinear upscale of the input added to the output instead of
  the feature skip.

Input RGB in [0,1]. LR inputs must be at least 8x8 (`safmn`) or 16x16 (`safmn_ntire`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimsr.archs._detect import differing, has_all, indices, pixelshuffle_scale
from slimsr.archs.blocks import GELU, conv1x1, conv3x3, nearest_resize, pool_to_fraction
from slimsr.registry import Detection, register_detector, register_family, register_model

N_LEVELS = 4


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of an NCHW map (biased variance, eps 1e-6 inside the root)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        centred = x - x.mean(1, keepdim=True)
        x = centred / torch.sqrt(centred.pow(2).mean(1, keepdim=True) + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class GRN(nn.Module):
    """Global response normalisation (ConvNeXt V2): scales each channel by its whole-image L2
    norm relative to the mean over channels; starts as the identity (gamma = beta = 0)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, dim, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, dim, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        norms = torch.linalg.vector_norm(x, 2, dim=(2, 3), keepdim=True)
        relative = norms / (norms.mean(dim=1, keepdim=True) + 1e-6)
        return self.gamma * (x * relative) + self.beta + x


class SAFM(nn.Module):
    """Spatially-adaptive feature modulation. Group 0 stays at full size; group i > 0 is
    pooled to `1 / 2**(i + first_level - 1)` of the size (`first_level` 1 in the paper, 2 in
    the NTIRE entry)."""

    def __init__(self, dim: int, bias: bool = True, first_level: int = 1) -> None:
        super().__init__()
        chunk = dim // N_LEVELS
        self.mfr = nn.ModuleList(
            nn.Conv2d(chunk, chunk, 3, padding=1, groups=chunk, bias=bias) for _ in range(N_LEVELS)
        )
        self.aggr = conv1x1(dim, dim, bias=bias)
        self.act = GELU()
        self.first_level = first_level

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        groups = x.chunk(N_LEVELS, dim=1)
        out = [self.mfr[0](groups[0])]
        for i in range(1, N_LEVELS):
            pooled = pool_to_fraction(groups[i], 2 ** (i + self.first_level - 1))
            out.append(nearest_resize(self.mfr[i](pooled), h, w))
        return self.act(self.aggr(torch.cat(out, dim=1))) * x


class CCM(nn.Module):
    """Convolutional channel mixer: 3x3 expanding by `growth`, GELU, 1x1 back."""

    def __init__(self, dim: int, growth: float = 2.0, bias: bool = True) -> None:
        super().__init__()
        hidden = int(dim * growth)
        self.ccm = nn.Sequential(
            conv3x3(dim, hidden, bias=bias), GELU(), conv1x1(hidden, dim, bias=bias)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.ccm(x)


class AttBlock(nn.Module):
    """Feature mixing module: SAFM then CCM, each residual, LayerNorm-ed in the paper's form."""

    def __init__(self, dim: int, ffn_scale: float, ntire: bool) -> None:
        super().__init__()
        if not ntire:
            self.norm1 = ChannelLayerNorm(dim)
            self.norm2 = ChannelLayerNorm(dim)
        self.safm = SAFM(dim, bias=not ntire, first_level=2 if ntire else 1)
        self.ccm = CCM(dim, ffn_scale, bias=not ntire)
        self.ntire = ntire

    def forward(self, x: Tensor) -> Tensor:
        if self.ntire:
            x = self.safm(x) + x
            return self.ccm(x) + x
        x = self.safm(self.norm1(x)) + x
        return self.ccm(self.norm2(x)) + x


class SAFMN(nn.Module):
    """Stem, `n_blocks` feature mixing modules, 3x3 conv + PixelShuffle; RGB in [0,1].

    `ntire=True` builds the NTIRE 2023 entry (see the module docstring)."""

    def __init__(
        self,
        scale: int,
        dim: int = 36,
        n_blocks: int = 8,
        ffn_scale: float = 2.0,
        ntire: bool = False,
    ) -> None:
        super().__init__()
        if dim % N_LEVELS:
            raise ValueError(f"SAFMN splits features into {N_LEVELS} groups: dim={dim}")
        self.scale = scale
        self.ntire = ntire
        if ntire:
            self.norm = GRN(dim)
        self.to_feat = conv3x3(3, dim)
        self.feats = nn.Sequential(*[AttBlock(dim, ffn_scale, ntire) for _ in range(n_blocks)])
        self.to_img = nn.Sequential(conv3x3(dim, 3 * scale * scale), nn.PixelShuffle(scale))

    def forward(self, x: Tensor) -> Tensor:
        if self.ntire:
            upscaled = F.interpolate(
                x, scale_factor=self.scale, mode="bilinear", align_corners=False
            )
            return self.to_img(self.feats(self.norm(self.to_feat(x)))) + upscaled
        x = self.to_feat(x)
        return self.to_img(self.feats(x) + x)


# Tiling: SAFM max-pools to 1/8 (1/16 in the NTIRE entry) of the whole map with windows laid
# out relative to the image size, and the NTIRE entry's GRN divides by whole-image channel
# norms: the context is the image, not a neighbourhood any overlap could cover.
register_family("safmn", cpu_channels_last=False, tiling="approximate")

_PAPER = (
    "Sun et al., Spatially-Adaptive Feature Modulation for Efficient Image Super-Resolution, "
    "ICCV 2023"
)


@register_model(
    family="safmn",
    input_range=1.0,
    min_size=8,  # the 1/8 pooling level needs >= 8 px
    paper=_PAPER,
    params_note="paper: 228K / 233K / 240K; counts are exact official-module counts",
)
def safmn(scale: int, **kwargs: Any) -> SAFMN:
    """SAFMN: 36 features, 8 feature mixing modules (SAFM + CCM), LayerNorm."""
    return SAFMN(scale, **{"dim": 36, "n_blocks": 8, **kwargs})


@register_model(
    family="safmn",
    scales=(4,),
    input_range=1.0,
    min_size=16,  # the 1/16 pooling level needs >= 16 px
    paper=_PAPER + "; NTIRE 2023 efficient SR challenge entry (team 15)",
    params_note="x4 only, as submitted (237,000 params); GRN stem, bias-free blocks",
)
def safmn_ntire(scale: int, **kwargs: Any) -> SAFMN:
    """SAFMN NTIRE 2023 ESR entry: 36 features, 8 bias-free blocks, GRN, bilinear skip."""
    return SAFMN(scale, **{"dim": 36, "n_blocks": 8, **kwargs, "ntire": True})


# -- detection ---------------------------------------------------------------------------------

_KEYS = (
    "to_feat.weight",
    "feats.0.safm.mfr.0.weight",
    "feats.0.safm.aggr.weight",
    "feats.0.ccm.ccm.0.weight",
    "to_img.0.weight",
)


@register_detector("safmn")
def detect_safmn(sd: dict[str, Tensor]) -> Detection | None:
    """`feats.<i>.safm` + `feats.<i>.ccm` blocks between `to_feat` and `to_img.0`; the NTIRE
    entry is the one with a stem `norm.gamma` (GRN) and no `feats.<i>.norm1`."""
    if not has_all(sd, _KEYS) or sd["to_feat.weight"].ndim != 4:
        return None
    dim, in_ch = sd["to_feat.weight"].shape[:2]
    blocks = indices(sd, r"feats\.(\d+)\.safm\.aggr\.weight")
    if in_ch != 3 or dim % N_LEVELS or blocks != list(range(len(blocks))):
        return None
    ntire = "norm.gamma" in sd
    if ntire == ("feats.0.norm1.weight" in sd):
        return None
    scale = pixelshuffle_scale(sd["to_img.0.weight"].shape[0])
    if scale is None or (ntire and scale != 4):
        return None
    found = {
        "dim": dim,
        "n_blocks": len(blocks),
        "ffn_scale": sd["feats.0.ccm.ccm.0.weight"].shape[0] / dim,
    }
    kwargs = differing(found, {"dim": 36, "n_blocks": 8, "ffn_scale": 2.0})
    return Detection("safmn_ntire" if ntire else "safmn", scale, kwargs, dict(sd))
