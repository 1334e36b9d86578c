"""MATLAB-exact bicubic `imresize` on torch tensors, and `modcrop`.

Benchmark LR images (Set5 `LR_bicubic`, DIV2K `*_LR_bicubic`) were made with MATLAB's
`imresize(hr, 1/s, 'bicubic')` on uint8 images. Reproducing them bit for bit needs three
details that cv2 / PIL / `F.interpolate` do not share:

* the Keys cubic kernel (a = -0.5) **stretched by 1/scale when downscaling** (antialiasing),
  so a x4 reduction uses 16 taps instead of 4;
* symmetric border padding (mirror with the edge pixel repeated);
* for uint8 images MATLAB resizes one dimension at a time and stores the intermediate result
  **as uint8** (rounded half away from zero, saturated) before the second pass.

`mode="uint8"` follows all three and reproduces MATLAB's files exactly; `mode="float"` skips the
roundings (this is what BasicSR's Python port computes, used for on-the-fly training LR).

The weights of one 1-D pass depend only on (input length, output length, scale, padding): they
are computed once in float64 (as MATLAB does), cached, and applied as P gathers + a weighted
sum, which runs batched on any device.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor

__all__ = ["cubic", "imresize", "modcrop", "resize_weights"]

Mode = Literal["float", "uint8"]
Padding = Literal["symmetric", "replicate"]


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's `cubic`), support [-2, 2].

    f(x) = 1.5|x|^3 - 2.5|x|^2 + 1             for |x| <= 1
         = -0.5|x|^3 + 2.5|x|^2 - 4|x| + 2     for 1 < |x| <= 2
         = 0                                   otherwise
    """
    ax = np.abs(x)
    ax2 = ax**2
    ax3 = ax**3
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return near + far


@functools.lru_cache(maxsize=256)
def resize_weights(
    in_len: int, out_len: int, scale: float, padding: Padding = "symmetric"
) -> tuple[np.ndarray, np.ndarray]:
    """Weights (out_len, P) float64 and 0-based input indices (out_len, P) of one 1-D pass.

    Output pixel x (1-based) samples the input at u = x/scale + 0.5*(1 - 1/scale). The taps are
    left = floor(u - width/2) + 0..P-1 with P = ceil(width) + 2, width = 4 (4/scale when
    downscaling, with weights scale*cubic(scale*d) so the kernel also low-passes). Rows are
    normalised to sum 1; tap columns that are zero for every output pixel are dropped (MATLAB's
    `any(weights, 1)` rule); out-of-range indices are mirrored ("symmetric") or clamped
    ("replicate").
    """
    if in_len < 1 or out_len < 1:
        raise ValueError(f"imresize: lengths must be positive, got {in_len} -> {out_len}")
    width = 4.0
    antialias = scale < 1
    if antialias:
        width = width / scale
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    taps = math.ceil(width) + 2
    idx = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]
    dist = u[:, None] - idx
    w = scale * cubic(scale * dist) if antialias else cubic(dist)
    # Row sums accumulated left to right, as MATLAB's sum(weights, 2) does (numpy's pairwise
    # summation would change the last bit of some weights).
    total = w[:, 0].copy()
    for p in range(1, taps):
        total = total + w[:, p]
    w = w / total[:, None]
    keep = np.any(w != 0, axis=0)
    w, idx = w[:, keep], idx[:, keep].astype(np.int64) - 1  # to 0-based
    if padding == "symmetric":
        period = 2 * in_len
        idx = np.mod(idx, period)
        idx = np.where(idx >= in_len, period - 1 - idx, idx)
    elif padding == "replicate":
        idx = np.clip(idx, 0, in_len - 1)
    else:
        raise ValueError(f"imresize: padding must be 'symmetric' or 'replicate', got {padding!r}")
    w.setflags(write=False)
    idx.setflags(write=False)
    return w, idx


@functools.lru_cache(maxsize=256)
def _device_weights(
    in_len: int,
    out_len: int,
    scale: float,
    padding: Padding,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    w, idx = resize_weights(in_len, out_len, scale, padding)
    return (
        torch.tensor(w, dtype=torch.float64).to(device=device, dtype=dtype),
        torch.tensor(idx, dtype=torch.int64).to(device=device),
    )


def _resize_dim(x: Tensor, dim: int, out_len: int, scale: float, padding: Padding) -> Tensor:
    """One 1-D pass along `dim`: out[i] = sum_p w[i, p] * x[idx[i, p]], taps added in order.

    The resized dimension is moved to the front so every tap is a gather of whole contiguous
    rows; products and sums stay separate operations so no fused multiply-add changes the
    rounding (the uint8 mode relies on MATLAB's exact values).
    """
    in_len = x.shape[dim]
    w, idx = _device_weights(in_len, out_len, float(scale), padding, x.device, x.dtype)
    rows = x.movedim(dim, 0)
    rest = rows.shape[1:]
    rows = rows.reshape(in_len, -1)
    out = rows.index_select(0, idx[:, 0]).mul_(w[:, 0, None])
    for p in range(1, w.shape[1]):
        out.add_(rows.index_select(0, idx[:, p]).mul_(w[:, p, None]))
    return out.reshape(out_len, *rest).movedim(0, dim)


def _to_uint8_levels(x: Tensor) -> Tensor:
    """MATLAB's double -> uint8 cast on 0..255 values: round half away from zero, saturate."""
    return torch.floor(x + 0.5).clamp_(0, 255)


def _pair(v: float | Sequence[float]) -> tuple[float, float]:
    if isinstance(v, (int, float)):
        return float(v), float(v)
    a, b = v
    return float(a), float(b)


def imresize(
    x: Tensor,
    scale: float | Sequence[float] | None = None,
    size: Sequence[int] | None = None,
    *,
    mode: Mode = "float",
    padding: Padding = "symmetric",
) -> Tensor:
    """Bicubic resize of (C,H,W) or (N,C,H,W) float tensors in [0,1], as MATLAB's `imresize`.

    Give `scale` (0.25 shrinks by 4; a pair sets (h, w) separately; output size is
    ceil(scale*in)) or `size` (h, w; the scale is then out/in per dimension). The dimension with
    the smaller scale is resized first, H on ties, as MATLAB orders the passes.

    mode="float": no rounding anywhere (BasicSR's `imresize`; for training LR on the fly).
    mode="uint8": the input must hold k/255 values; both passes are computed in float64 on 0..255
    levels and each result is rounded to uint8 as MATLAB does for uint8 images; the return
    value holds k/255 values in the input dtype. This reproduces MATLAB-made LR files exactly.
    padding="replicate" clamps border indices instead of mirroring (older LR releases).
    """
    if x.dim() not in (3, 4):
        raise ValueError(f"imresize expects (C,H,W) or (N,C,H,W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"imresize expects a float tensor, got {x.dtype}")
    if mode not in ("float", "uint8"):
        raise ValueError(f"imresize: mode must be 'float' or 'uint8', got {mode!r}")
    in_h, in_w = x.shape[-2], x.shape[-1]
    if (scale is None) == (size is None):
        raise ValueError("imresize: give exactly one of scale and size")
    if scale is not None:
        sh, sw = _pair(scale)
        if sh <= 0 or sw <= 0:
            raise ValueError(f"imresize: scale must be positive, got {scale}")
        out_h, out_w = math.ceil(sh * in_h), math.ceil(sw * in_w)
    else:
        assert size is not None
        out_h, out_w = int(size[0]), int(size[1])
        if out_h < 1 or out_w < 1:
            raise ValueError(f"imresize: size must be positive, got {tuple(size)}")
        sh, sw = out_h / in_h, out_w / in_w

    dtype, device = x.dtype, x.device
    y = x
    if mode == "uint8":
        if device.type == "mps":  # no float64 there; the exact route runs on the CPU
            y = y.cpu()
        y = _to_uint8_levels(y.to(torch.float64) * 255.0)  # k/255 up to float error -> k
    passes = [(-2, out_h, sh), (-1, out_w, sw)]
    if sw < sh:
        passes.reverse()
    for dim, out_len, s in passes:
        y = _resize_dim(y, dim, out_len, s, padding)
        if mode == "uint8":
            y = _to_uint8_levels(y)
    if mode == "uint8":
        y = (y / 255.0).to(device=device, dtype=dtype)
    return y.contiguous()


def modcrop(x: Tensor, scale: int) -> Tensor:
    """Crop the bottom/right of (..., H, W) so H and W are multiples of `scale`."""
    h, w = x.shape[-2], x.shape[-1]
    return x[..., : h - h % scale, : w - w % scale]
