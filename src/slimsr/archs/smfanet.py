"""SMFANet: self-modulation feature aggregation (Zheng et al., ECCV 2024).

Layout of the official Zheng-MJ/SMFANet code (`to_feat`, `feats.<i>.smfa/.pcfn`, `to_img`), so
its DIV2K weights (`{'params': ...}`) load strictly. Each block L2-normalises its input over
channels, then modulates half of the features with a branch that max-pools the map to 1/8 of
its size (adaptive windows) plus the per-channel spatial variance of the whole image, and
refines the other half with a local depthwise MLP. Input RGB in [0,1]; LR inputs must be at
least 8x8 (the 1/8 pooling).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimsr.archs._detect import differing, has_all, indices, pixelshuffle_scale
from slimsr.archs.blocks import GELU, conv1x1, conv3x3, nearest_resize, pool_to_fraction
from slimsr.registry import Detection, register_detector, register_family, register_model


class DMlp(nn.Module):
    """Local detail branch: depthwise 3x3 expanding `dim -> growth * dim`, 1x1, GELU, 1x1."""

    def __init__(self, dim: int, growth: float = 2.0) -> None:
        super().__init__()
        hidden = int(dim * growth)
        self.conv_0 = nn.Sequential(
            nn.Conv2d(dim, hidden, 3, padding=1, groups=dim), conv1x1(hidden, hidden)
        )
        self.act = GELU()
        self.conv_1 = conv1x1(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_1(self.act(self.conv_0(x)))


class PCFN(nn.Module):
    """Partial convolution feed-forward: 1x1 expansion, a 3x3 on the first `p_rate` of the
    hidden channels only, 1x1 back. (The official eval path writes the 3x3 result in place; a
    split and concatenation computes the same and also exports.)"""

    def __init__(self, dim: int, growth: float = 2.0, p_rate: float = 0.25) -> None:
        super().__init__()
        hidden = int(dim * growth)
        self.p_dim = int(hidden * p_rate)
        self.hidden_dim = hidden
        self.conv_0 = conv1x1(dim, hidden)
        self.conv_1 = conv3x3(self.p_dim, self.p_dim)
        self.act = GELU()
        self.conv_2 = conv1x1(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.conv_0(x))
        head, tail = torch.split(x, [self.p_dim, self.hidden_dim - self.p_dim], dim=1)
        return self.conv_2(torch.cat([self.act(self.conv_1(head)), tail], dim=1))


class SMFA(nn.Module):
    """Self-modulation feature aggregation. `alpha` and `belt` (sic, the official name) weigh
    the pooled map against the global variance before they gate the features."""

    down_scale = 8

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear_0 = conv1x1(dim, dim * 2)
        self.linear_1 = conv1x1(dim, dim)
        self.linear_2 = conv1x1(dim, dim)
        self.lde = DMlp(dim, 2.0)
        self.dw_conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.gelu = GELU()
        self.alpha = nn.Parameter(torch.ones(1, dim, 1, 1))
        self.belt = nn.Parameter(torch.zeros(1, dim, 1, 1))

    def forward(self, f: Tensor) -> Tensor:
        h, w = f.shape[-2:]
        y, x = self.linear_0(f).chunk(2, dim=1)
        pooled = self.dw_conv(pool_to_fraction(x, self.down_scale))
        variance = torch.var(x, dim=(-2, -1), keepdim=True)  # unbiased, as the official code
        gate = self.gelu(self.linear_1(pooled * self.alpha + variance * self.belt))
        return self.linear_2(x * nearest_resize(gate, h, w) + self.lde(y))


class FMB(nn.Module):
    """Feature modulation block: SMFA then PCFN, each on the channel-normalised input, each
    with a residual connection."""

    def __init__(self, dim: int, ffn_scale: float = 2.0) -> None:
        super().__init__()
        self.smfa = SMFA(dim)
        self.pcfn = PCFN(dim, ffn_scale)

    def forward(self, x: Tensor) -> Tensor:
        x = self.smfa(F.normalize(x)) + x
        return self.pcfn(F.normalize(x)) + x


class SMFANet(nn.Module):
    """3x3 stem, `n_blocks` FMBs with a long skip, 3x3 conv + PixelShuffle; RGB in [0,1]."""

    def __init__(
        self, scale: int, dim: int = 36, n_blocks: int = 8, ffn_scale: float = 2.0
    ) -> None:
        super().__init__()
        self.scale = scale
        self.to_feat = conv3x3(3, dim)
        self.feats = nn.Sequential(*[FMB(dim, ffn_scale) for _ in range(n_blocks)])
        self.to_img = nn.Sequential(conv3x3(dim, 3 * scale * scale), nn.PixelShuffle(scale))

    def forward(self, x: Tensor) -> Tensor:
        x = self.to_feat(x)
        return self.to_img(self.feats(x) + x)


# Tiling: every block gates features with the whole image's per-channel variance, and the 1/8
# pooling windows are laid out relative to the image size, so no tile overlap reproduces them.
register_family("smfanet", cpu_channels_last=False, tiling="approximate")


@register_model(
    family="smfanet",
    input_range=1.0,
    min_size=8,  # adaptive max-pool to 1/8 of the size needs >= 8 px
    paper="Zheng et al., SMFANet: A Lightweight Self-Modulation Feature Aggregation Network "
    "for Efficient Image Super-Resolution, ECCV 2024",
    params_note="paper: 186K / 191K / 197K; counts are exact official-module counts",
)
def smfanet(scale: int, **kwargs: Any) -> SMFANet:
    """SMFANet: 36 features, 8 feature modulation blocks (SMFA + PCFN)."""
    return SMFANet(scale, **{"dim": 36, "n_blocks": 8, **kwargs})


# -- detection ---------------------------------------------------------------------------------

_KEYS = (
    "to_feat.weight",
    "feats.0.smfa.linear_0.weight",
    "feats.0.smfa.alpha",
    "feats.0.pcfn.conv_0.weight",
    "to_img.0.weight",
)


@register_detector("smfanet")
def detect_smfanet(sd: dict[str, Tensor]) -> Detection | None:
    """`feats.<i>.smfa` + `feats.<i>.pcfn` blocks between `to_feat` and `to_img.0`."""
    if not has_all(sd, _KEYS) or sd["to_feat.weight"].ndim != 4:
        return None
    dim, in_ch = sd["to_feat.weight"].shape[:2]
    blocks = indices(sd, r"feats\.(\d+)\.smfa\.linear_0\.weight")
    if in_ch != 3 or blocks != list(range(len(blocks))):
        return None
    scale = pixelshuffle_scale(sd["to_img.0.weight"].shape[0])
    if scale is None:
        return None
    found = {
        "dim": dim,
        "n_blocks": len(blocks),
        "ffn_scale": sd["feats.0.pcfn.conv_0.weight"].shape[0] / dim,
    }
    kwargs = differing(found, {"dim": 36, "n_blocks": 8, "ffn_scale": 2.0})
    return Detection("smfanet", scale, kwargs, dict(sd))
