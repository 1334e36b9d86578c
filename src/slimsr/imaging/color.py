"""BT.601 luma / YCbCr as MATLAB's `rgb2ycbcr` computes it (the Y of SR benchmark tables).

For RGB in [0,1] (studio swing output, Y in [16, 235] / 255):

    Y  = ( 65.481 R + 128.553 G +  24.966 B +  16) / 255
    Cb = (-37.797 R -  74.203 G + 112.0   B + 128) / 255
    Cr = (112.0   R -  93.786 G -  18.214 B + 128) / 255

The weights are 219 * (0.299, 0.587, 0.114) and 224 * the colour-difference coefficients.
A copy-paste typo, 64.738 instead of 65.481 (and 65.738 from the /256 variant), circulates in
several SR repositories and shifts PSNR-Y; the constants here are the MATLAB ones. Values are
not rounded: benchmark code (BasicSR) keeps the float Y.

`to_y_channel` is the one Y the project computes (PSNR-Y / SSIM-Y in `slimsr.metrics`): on
uint8-valued HWC arrays, in BasicSR's float32 order of operations, so tables match its digits.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "YCBCR_BIAS",
    "YCBCR_FROM_RGB",
    "Y_WEIGHTS",
    "rgb_to_ycbcr",
    "to_y_channel",
    "ycbcr_to_rgb",
]

#: Y = Y_WEIGHTS . (R, G, B) + 16, on RGB in [0,1] and Y in [0,255].
Y_WEIGHTS = (65.481, 128.553, 24.966)
#: Rows: Y, Cb, Cr; columns: R, G, B (RGB in [0,1], output in [0,255] before the bias).
YCBCR_FROM_RGB = (
    (65.481, 128.553, 24.966),
    (-37.797, -74.203, 112.0),
    (112.0, -93.786, -18.214),
)
YCBCR_BIAS = (16.0, 128.0, 128.0)


def _check_rgb(x: Tensor) -> None:
    if x.dim() < 3 or x.shape[-3] != 3:
        raise ValueError(f"expected 3 channels (..., 3, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"expected a float tensor in [0,1], got {x.dtype}")


def _matrix(x: Tensor) -> tuple[Tensor, Tensor]:
    m = torch.tensor(YCBCR_FROM_RGB, dtype=x.dtype, device=x.device)
    b = torch.tensor(YCBCR_BIAS, dtype=x.dtype, device=x.device)
    return m, b


def to_y_channel(img: np.ndarray) -> np.ndarray:
    """BasicSR's `to_y_channel` on an RGB (or 1-channel) HWC image in 0..255 -> float32 HW1.

    The arithmetic mirrors BasicSR step for step (it works on BGR, so the channels are reversed
    and dotted with the BGR weights) to reproduce its float32 rounding exactly.
    """
    x = img.astype(np.float32) / 255.0
    if x.ndim == 3 and x.shape[2] == 3:
        bgr = np.ascontiguousarray(x[..., ::-1])
        y = np.dot(bgr, Y_WEIGHTS[::-1]) + 16.0
        y /= 255.0
        x = y.astype(np.float32)[..., None]
    return x * 255.0


def rgb_to_ycbcr(x: Tensor) -> Tensor:
    """RGB (..., 3, H, W) in [0,1] -> YCbCr (..., 3, H, W), each channel /255 (MATLAB rgb2ycbcr)."""
    _check_rgb(x)
    m, b = _matrix(x)
    out = torch.einsum("ij,...jhw->...ihw", m, x) + b[:, None, None]
    return out / 255.0


def ycbcr_to_rgb(x: Tensor) -> Tensor:
    """Inverse of `rgb_to_ycbcr` (exact matrix inverse, no clamping)."""
    _check_rgb(x)
    m, b = _matrix(x)
    inv = torch.linalg.inv(m.to(torch.float64)).to(x.dtype)
    out = torch.einsum("ij,...jhw->...ihw", inv, x * 255.0 - b[:, None, None])
    return out
