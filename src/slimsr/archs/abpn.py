"""ABPN: anchor-based plain net for full-integer 8-bit mobile SR (Du et al., CVPRW 2021, "base7").

Seven plain 3x3 convs with ReLU (the last one linear), an *anchor* (the input repeated s^2
times) added before the pixel shuffle, and a clip to [0,255]. Everything is friendly to INT8:
no normalisation, no mean shift, the anchor makes the network learn only the residual to a
nearest-neighbour upscale, and the clip bounds the output range for quantisation.

The official model is Keras (NHWC, TF `depth_to_space`, which orders channels depth-column-row,
"DCR"). PyTorch's PixelShuffle orders them column-row-depth ("CRD"). Rather than a custom
shuffle we permute the last conv's output channels on import, so the anchor becomes
`repeat_interleave(s^2)` and the graph stays a plain Conv/ReLU/PixelShuffle net.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimsr.archs._detect import indices, pixelshuffle_scale
from slimsr.archs._switches import choose, flag
from slimsr.archs.blocks import dcr_to_crd
from slimsr.registry import Detection, register_detector, register_family, register_model

RESIDUALS = ("anchor", "none", "nearest", "bilinear", "feature")
"""Residual learning of the paper's Table 2: ABRL (the anchor), none (the baseline), an image-
space nearest / bilinear upscale of the input, or feature-space (FSRL)."""


class ABPN(nn.Module):
    """ABPN on RGB in [0,255]; `convs.0..{num_convs-1}`, ReLU after all but the last.

    The paper's ablations are switches (none changes the weights, so sidecars carry them); the
    defaults are the published network:

    - `residual`: "anchor" (default, ABRL), "none", "nearest", "bilinear" (image-space, added
      after the pixel shuffle) or "feature" (FSRL: the first conv's features added to the last
      `num_feat`-wide features, before the two transition convs) (Table 2);
    - `clip`: False drops the final clip to [0,255] (the paper's first MAI 2021 submission,
      Sec. 4.5).
    """

    def __init__(
        self,
        scale: int,
        num_feat: int = 28,
        num_mid: int = 4,
        in_ch: int = 3,
        out_ch: int = 3,
        residual: str = "anchor",
        clip: bool = True,
    ) -> None:
        super().__init__()
        self.scale = scale
        self.residual = choose("abpn", "residual", residual, RESIDUALS)
        self.clip = flag("abpn", "clip", clip)
        s2 = scale * scale
        chans = [in_ch] + [num_feat] * (num_mid + 1) + [out_ch * s2, out_ch * s2]
        self.convs = nn.ModuleList(
            nn.Conv2d(cin, cout, 3, padding=1) for cin, cout in itertools.pairwise(chans)
        )
        self.act = nn.ReLU(inplace=True)
        self.shuffle = nn.PixelShuffle(scale)

    def forward(self, x: Tensor) -> Tensor:
        if self.residual == "anchor":
            return self._forward_anchor(x)
        y = self.act(self.convs[0](x))
        shallow = y
        for conv in self.convs[1:-2]:
            y = self.act(conv(y))
        if self.residual == "feature":
            y = y + shallow
        y = self.shuffle(self.convs[-1](self.act(self.convs[-2](y))))
        if self.residual in ("nearest", "bilinear"):
            y = y + F.interpolate(x, scale_factor=self.scale, mode=self.residual)
        return torch.clamp(y, 0.0, 255.0) if self.clip else y

    def _forward_anchor(self, x: Tensor) -> Tensor:
        """The published graph, node for node (quantisation and export rely on its shape)."""
        anchor = x.repeat_interleave(self.scale * self.scale, dim=1)
        y = x
        for conv in self.convs[:-1]:
            y = self.act(conv(y))
        y = self.convs[-1](y) + anchor
        y = self.shuffle(y)
        return torch.clamp(y, 0.0, 255.0) if self.clip else y


# CPU layout (channels_last / contiguous time at x2 / x3 / x4): abpn 0.76 / 0.69 / 0.80.
# Tiling: a plain stack of 3x3 convs, purely local.
register_family("abpn", cpu_channels_last=True, tiling="exact")


@register_model(
    family="abpn",
    input_range=255.0,
    default_scale=3,
    paper="Du et al., Anchor-based Plain Net for Mobile Image Super-Resolution, CVPRW 2021",
    params_note="paper: 42.54K at x3 (exact)",
)
def abpn(scale: int, **kwargs: Any) -> ABPN:
    """ABPN (base7): 7 plain convs, 28 features, anchor residual, clip; built for INT8."""
    return ABPN(scale, **kwargs)


# -- Keras import ------------------------------------------------------------------------------


_KERAS_KEY = re.compile(r"layer_with_weights-(\d+)[/_](kernel|bias)")


def state_dict_from_keras(arrays: dict[str, Tensor], out_ch: int = 3) -> tuple[dict, int, int]:
    """Official Keras ABPN weights (`layer_with_weights-K/{kernel,bias}`) -> our state dict.

    Returns (state_dict, scale, num_feat). Kernels go from HWIO to OIHW; the last layer's
    output channels are reordered from DCR to CRD (see module docstring).
    """
    layers: dict[int, dict[str, Tensor]] = {}
    for key, value in arrays.items():
        m = _KERAS_KEY.fullmatch(key)
        if m:
            layers.setdefault(int(m.group(1)), {})[m.group(2)] = torch.as_tensor(value)
    n = len(layers)
    last = layers[n - 1]["kernel"]
    scale = pixelshuffle_scale(last.shape[-1], out_ch)
    if scale is None:
        raise ValueError(f"last Keras kernel has {last.shape[-1]} outputs, not 3*s*s")
    perm = dcr_to_crd(out_ch, scale)
    sd: dict[str, Tensor] = {}
    for k in range(n):
        weight = layers[k]["kernel"].permute(3, 2, 0, 1).contiguous().float()
        bias = layers[k]["bias"].float()
        if k == n - 1:
            weight, bias = weight[perm].contiguous(), bias[perm].contiguous()
        sd[f"convs.{k}.weight"], sd[f"convs.{k}.bias"] = weight, bias
    return sd, scale, layers[0]["kernel"].shape[-1]


@register_detector("abpn")
def detect_abpn(sd: dict[str, Tensor]) -> Detection | None:
    """Our keys (`convs.K.*`, 3-channel input, 3*s^2 output) or the official Keras layout."""
    if any(_KERAS_KEY.fullmatch(k) for k in sd):
        try:
            state, scale, num_feat = state_dict_from_keras(sd)
        except (KeyError, ValueError):
            return None
        convs = len(state) // 2
    else:
        convs = len(indices(sd, r"convs\.(\d+)\.weight"))
        if convs < 3 or len(sd) != 2 * convs:
            return None
        first, last = sd["convs.0.weight"], sd[f"convs.{convs - 1}.weight"]
        if first.ndim != 4 or first.shape[1] != 3 or last.shape[0] != last.shape[1]:
            return None
        scale = pixelshuffle_scale(last.shape[0])
        if scale is None:
            return None
        state, num_feat = dict(sd), first.shape[0]
    kwargs: dict[str, Any] = {}
    if num_feat != 28:
        kwargs["num_feat"] = num_feat
    if convs - 3 != 4:
        kwargs["num_mid"] = convs - 3
    return Detection("abpn", scale, kwargs, state)
