"""PSNR and SSIM computed the way BasicSR computes them, so our tables compare with papers'.

The order of operations is part of the metric (CONVENTIONS.md §4):

1. the SR output is quantised to uint8 first: clamp(0,1) * 255, round (BasicSR `tensor2img`);
2. `crop_border` pixels are removed from every edge (crop_border = scale for benchmarks);
3. optionally Y of BT.601 is taken, in float32, not rounded:
   Y = float32((float32(img)/255 . (65.481, 128.553, 24.966) + 16) / 255) * 255;
4. everything is cast to float64.

PSNR = 10 * log10(255^2 / mean((a - b)^2)), +inf for identical images.

SSIM (Wang et al. 2004, BasicSR's `_ssim`): with the 11x11 Gaussian window w = g g^T
(g_i ~ exp(-(i-5)^2 / (2 * 1.5^2)), sum 1) and 'valid' filtering (no padding, output shrinks
by 10 pixels each way):

    mu_x = w * x,  sigma_x^2 = w * x^2 - mu_x^2,  sigma_xy = w * (x y) - mu_x mu_y
    SSIM = mean( (2 mu_x mu_y + C1)(2 sigma_xy + C2) /
                 ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2)) )

C1 = (0.01 * 255)^2, C2 = (0.03 * 255)^2; colour images average the per-channel SSIMs. The
window is separable, so filtering is two 1-D passes in float64 (cv2.filter2D, which BasicSR
calls, uses a DFT for an 11x11 kernel; the two agree to ~1e-12).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from slimsr.errors import SlimsrError
from slimsr.imaging.color import to_y_channel
from slimsr.imaging.io import tensor_to_uint8

__all__ = [
    "PROTOCOLS",
    "MetricError",
    "calculate_psnr",
    "calculate_ssim",
    "evaluate_pair",
    "gaussian_window_1d",
    "to_y_channel",
]

Protocol = Literal["basicsr", "ntire", "rgb"]

#: protocol -> (crop border: "scale" or a fixed number, Y channel?)
PROTOCOLS: dict[str, tuple[str | int, bool]] = {
    "basicsr": ("scale", True),  # benchmark tables: Y of BT.601, border = scale
    "ntire": (4, False),  # NTIRE efficient-SR harness: RGB, border 4
    "rgb": ("scale", False),  # BasicSR's default validation (test_y_channel: false)
}


class MetricError(SlimsrError, ValueError):
    """Images that cannot be compared (different shapes, too small after cropping)."""


def _as_hwc(img: np.ndarray | Tensor, input_order: str) -> np.ndarray:
    """numpy HWC view of an image: numpy follows `input_order`; tensors are (C,H,W)/(1,C,H,W)."""
    if isinstance(img, Tensor):
        t = img.detach().cpu()
        if t.dim() == 4:
            if t.shape[0] != 1:
                raise MetricError(f"expected one image, got a batch of shape {tuple(t.shape)}")
            t = t[0]
        arr = t.numpy()
        return arr[..., None] if arr.ndim == 2 else arr.transpose(1, 2, 0)
    arr = np.asarray(img)
    if input_order not in ("HWC", "CHW"):
        raise ValueError(f"input_order must be 'HWC' or 'CHW', got {input_order!r}")
    if arr.ndim == 2:
        return arr[..., None]
    return arr.transpose(1, 2, 0) if input_order == "CHW" else arr


def _prepare(
    img: np.ndarray | Tensor,
    img2: np.ndarray | Tensor,
    crop_border: int,
    input_order: str,
    test_y_channel: bool,
) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_hwc(img, input_order), _as_hwc(img2, input_order)
    if a.shape != b.shape:
        raise MetricError(f"image shapes differ: {a.shape} vs {b.shape}")
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    if crop_border:
        a = a[crop_border:-crop_border, crop_border:-crop_border, ...]
        b = b[crop_border:-crop_border, crop_border:-crop_border, ...]
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise MetricError(f"nothing left after cropping {crop_border} pixels from {img.shape}")
    if test_y_channel:
        a, b = to_y_channel(a), to_y_channel(b)
    return a.astype(np.float64), b.astype(np.float64)


def calculate_psnr(
    img: np.ndarray | Tensor,
    img2: np.ndarray | Tensor,
    crop_border: int,
    test_y_channel: bool = True,
    input_order: str = "HWC",
) -> float:
    """PSNR in dB of two images with values in 0..255 (uint8 or uint8-valued floats).

    numpy arrays are HWC (or CHW with input_order="CHW", or HW); tensors are (C,H,W) or
    (1,C,H,W). Crop, then Y (optional), then float64; 10*log10(255^2/mse); inf if identical.
    """
    a, b = _prepare(img, img2, crop_border, input_order, test_y_channel)
    mse = np.mean((a - b) ** 2)
    if mse == 0:
        return math.inf
    return float(10.0 * np.log10(255.0 * 255.0 / mse))


def gaussian_window_1d(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Normalised 1-D Gaussian (cv2.getGaussianKernel for these sizes): float64, sums to 1."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return g * (1.0 / g.sum())


def _filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """2-D correlation with the window outer(g, g), 'valid' region, as two 1-D passes."""
    k = g.shape[0]
    h, w = img.shape
    rows = g[0] * img[0 : h - k + 1]
    for i in range(1, k):
        rows = rows + g[i] * img[i : h - k + 1 + i]
    out = g[0] * rows[:, 0 : w - k + 1]
    for j in range(1, k):
        out = out + g[j] * rows[:, j : w - k + 1 + j]
    return out


def _ssim_channel(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM of two float64 2-D images in 0..255 (module docstring has the formula)."""
    c1 = (0.01 * 255) ** 2
    c2 = (0.03 * 255) ** 2
    g = gaussian_window_1d(11, 1.5)
    mu1, mu2 = _filter_valid(x, g), _filter_valid(y, g)
    mu1_sq, mu2_sq, mu1_mu2 = mu1**2, mu2**2, mu1 * mu2
    sigma1_sq = _filter_valid(x * x, g) - mu1_sq
    sigma2_sq = _filter_valid(y * y, g) - mu2_sq
    sigma12 = _filter_valid(x * y, g) - mu1_mu2
    num = (2 * mu1_mu2 + c1) * (2 * sigma12 + c2)
    den = (mu1_sq + mu2_sq + c1) * (sigma1_sq + sigma2_sq + c2)
    return float((num / den).mean())


def calculate_ssim(
    img: np.ndarray | Tensor,
    img2: np.ndarray | Tensor,
    crop_border: int,
    test_y_channel: bool = True,
    input_order: str = "HWC",
) -> float:
    """SSIM of two images with values in 0..255 (same input rules as `calculate_psnr`).

    Needs at least 11x11 pixels after cropping; colour images average the channel SSIMs.
    """
    a, b = _prepare(img, img2, crop_border, input_order, test_y_channel)
    if a.shape[0] < 11 or a.shape[1] < 11:
        raise MetricError(f"SSIM needs at least 11x11 pixels after cropping, got {a.shape[:2]}")
    return float(np.mean([_ssim_channel(a[..., i], b[..., i]) for i in range(a.shape[2])]))


def evaluate_pair(
    sr: Tensor, hr: Tensor, scale: int, protocol: Protocol = "basicsr"
) -> dict[str, float]:
    """PSNR/SSIM of an SR result against its HR, both float (C,H,W)/(1,C,H,W) in [0,1].

    Both are quantised like BasicSR's `tensor2img` (clamp, *255, round). Protocols:
    "basicsr" (Y, border = scale; paper tables), "ntire" (RGB, border 4), "rgb" (RGB,
    border = scale). HR must already be modcropped to the SR size.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {sorted(PROTOCOLS)}, got {protocol!r}")
    if sr.shape[-2:] != hr.shape[-2:] or sr.shape[-3] != hr.shape[-3]:
        raise MetricError(
            f"SR {tuple(sr.shape)} and HR {tuple(hr.shape)} differ: modcrop HR to the scale "
            "and check the pair"
        )
    border, use_y = PROTOCOLS[protocol]
    crop = scale if border == "scale" else int(border)
    a = tensor_to_uint8(sr.to(torch.float32))
    b = tensor_to_uint8(hr.to(torch.float32))
    return {
        "psnr": calculate_psnr(a, b, crop, test_y_channel=use_y),
        "ssim": calculate_ssim(a, b, crop, test_y_channel=use_y),
    }
