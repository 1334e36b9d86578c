"""PSNR / SSIM / Y: hand-computed cases, an independent SSIM, BasicSR's numbers on Set5."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from slimsr.imaging.color import rgb_to_ycbcr, ycbcr_to_rgb
from slimsr.imaging.io import read_image
from slimsr.imaging.resize import imresize, modcrop
from slimsr.metrics import (
    MetricError,
    calculate_psnr,
    calculate_ssim,
    evaluate_pair,
    gaussian_window_1d,
    to_y_channel,
)
from tests.conftest import shared_file

RNG = np.random.default_rng(0)


def _img(h: int = 32, w: int = 29, c: int = 3) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, c), dtype=np.uint8)


# --- Y / YCbCr -------------------------------------------------------------------------------


def test_y_of_white_and_black() -> None:
    white, black = torch.ones(3, 2, 2), torch.zeros(3, 2, 2)
    torch.testing.assert_close(rgb_to_ycbcr(white)[:1] * 255, torch.full((1, 2, 2), 235.0))
    torch.testing.assert_close(rgb_to_ycbcr(black)[:1] * 255, torch.full((1, 2, 2), 16.0))
    y = to_y_channel(np.array([[[255, 255, 255], [0, 0, 0]]], np.uint8))
    np.testing.assert_allclose(y[..., 0], [[235.0, 16.0]], rtol=0, atol=1e-4)
    # weights are the MATLAB ones (65.481 for red, not the 64.738 typo)
    red = np.array([[[255, 0, 0]]], np.uint8)
    assert abs(to_y_channel(red).item() - (65.481 + 16)) < 1e-4


def test_ycbcr_roundtrip_and_gray_axis() -> None:
    x = torch.rand(2, 3, 5, 6, dtype=torch.float64)
    ycc = rgb_to_ycbcr(x)
    y = (ycc[:, :1] * 255).numpy().transpose(0, 2, 3, 1)
    expected = x.numpy().transpose(0, 2, 3, 1) @ [65.481, 128.553, 24.966] + 16
    np.testing.assert_allclose(y[..., 0], expected, rtol=0, atol=1e-9)
    torch.testing.assert_close(ycbcr_to_rgb(ycc), x, rtol=0, atol=1e-12)
    gray = torch.full((3, 1, 1), 0.4, dtype=torch.float64)
    torch.testing.assert_close(rgb_to_ycbcr(gray)[1:] * 255, torch.full((2, 1, 1), 128.0).double())


def test_y_channel_follows_basicsr_float32_rounding() -> None:
    img = _img(8, 8)
    y = to_y_channel(img)
    assert y.dtype == np.float32 and y.shape == (8, 8, 1)
    exact = (img.astype(np.float64) @ [65.481, 128.553, 24.966]) / 255 + 16
    np.testing.assert_allclose(y[..., 0], exact, rtol=0, atol=5e-5)
    assert not np.array_equal(y[..., 0], np.round(y[..., 0]))  # not rounded
    torch.testing.assert_close(
        torch.from_numpy(y[..., 0]),
        rgb_to_ycbcr(torch.from_numpy(img).permute(2, 0, 1).float() / 255)[0] * 255,
        rtol=0,
        atol=1e-4,
    )


# --- PSNR ------------------------------------------------------------------------------------


def test_psnr_of_known_mse() -> None:
    a = np.full((10, 10, 3), 100, np.uint8)
    b = a.copy()
    b[0, 0, 0] = 110  # mse = 100 / 300
    want = 10 * math.log10(255**2 / (100 / 300))
    assert calculate_psnr(a, b, 0, test_y_channel=False) == pytest.approx(want, abs=1e-12)
    b2 = a + np.uint8(3)  # mse = 9 everywhere
    assert calculate_psnr(a, b2, 2, test_y_channel=False) == pytest.approx(
        10 * math.log10(255**2 / 9), abs=1e-12
    )
    assert calculate_psnr(a, a, 0) == math.inf


def test_psnr_y_of_a_gray_shift() -> None:
    a = np.full((6, 6, 3), 50, np.uint8)
    b = np.full((6, 6, 3), 60, np.uint8)
    dy = 10 * (65.481 + 128.553 + 24.966) / 255  # = 10 * 219 / 255
    assert calculate_psnr(a, b, 0) == pytest.approx(10 * math.log10(255**2 / dy**2), abs=1e-4)


def test_crop_border_really_crops() -> None:
    a, b = _img(), _img()
    for border in (2, 4):
        a2, b2 = a.copy(), b.copy()
        a2[:border] = 0
        b2[:, -border:] = 255
        a2[-border:, :] = 17
        b2[:, :border] = 3
        for fn in (calculate_psnr, calculate_ssim):
            for y in (True, False):
                assert fn(a2, b2, border, y) == fn(a, b, border, y)
        assert calculate_psnr(a2, b2, border - 1) != calculate_psnr(a, b, border - 1)


def test_input_forms_agree() -> None:
    a, b = _img(), _img()
    ta, tb = (torch.from_numpy(x).permute(2, 0, 1) for x in (a, b))
    for fn in (calculate_psnr, calculate_ssim):
        ref = fn(a, b, 3)
        assert fn(ta, tb, 3) == ref
        assert fn(ta[None].float(), tb[None].float(), 3) == ref
        assert fn(a.transpose(2, 0, 1), b.transpose(2, 0, 1), 3, input_order="CHW") == ref
    g1, g2 = a[..., 0], b[..., 0]
    assert calculate_psnr(g1, g2, 0) == calculate_psnr(g1[..., None], g2[..., None], 0)
    with pytest.raises(MetricError):
        calculate_psnr(a, b[:-1], 0)
    with pytest.raises(MetricError):
        calculate_ssim(a[:20, :20], b[:20, :20], 5)


# --- SSIM ------------------------------------------------------------------------------------


def _ssim_direct(x: np.ndarray, y: np.ndarray) -> float:
    """Straightforward SSIM: explicit 11x11 window sums at every valid position."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    win = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    vals = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            px, py = x[i : i + 11, j : j + 11], y[i : i + 11, j : j + 11]
            mx, my = (win * px).sum(), (win * py).sum()
            vx = (win * px * px).sum() - mx * mx
            vy = (win * py * py).sum() - my * my
            cxy = (win * px * py).sum() - mx * my
            vals.append(
                ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
            )
    return float(np.mean(vals))


def test_ssim_matches_direct_window_loop() -> None:
    a, b = _img(24, 21), _img(24, 21)
    b = ((a.astype(int) * 3 + b) // 4).astype(np.uint8)  # correlated, so SSIM is not ~0
    direct_rgb = np.mean([_ssim_direct(a[..., i], b[..., i]) for i in range(3)])
    assert calculate_ssim(a, b, 0, test_y_channel=False) == pytest.approx(direct_rgb, abs=1e-10)
    ya, yb = to_y_channel(a)[..., 0], to_y_channel(b)[..., 0]
    assert calculate_ssim(a, b, 2) == pytest.approx(
        _ssim_direct(ya[2:-2, 2:-2], yb[2:-2, 2:-2]), abs=1e-10
    )


def test_ssim_identity_symmetry_and_window() -> None:
    a, b = _img(), _img()
    assert calculate_ssim(a, a, 0) == pytest.approx(1.0, abs=1e-12)
    assert calculate_ssim(a, b, 1) == pytest.approx(calculate_ssim(b, a, 1), abs=1e-14)
    assert calculate_ssim(a, b, 1) < 0.2
    g = gaussian_window_1d()
    assert g.shape == (11,) and g.sum() == pytest.approx(1.0, abs=1e-15)
    assert g[5] == g.max() and np.allclose(g, g[::-1], rtol=0, atol=0)


# --- protocol helper ------------------------------------------------------------------------


def test_evaluate_pair_protocols_quantise_like_basicsr() -> None:
    hr = torch.from_numpy(_img(40, 36)).permute(2, 0, 1).float() / 255
    sr = (hr + 0.03 * torch.randn_like(hr)).clamp(-0.1, 1.1)
    q = (sr.clamp(0, 1) * 255).round().to(torch.uint8)
    h8 = (hr * 255).round().to(torch.uint8)
    r = evaluate_pair(sr, hr, 3)
    assert r == {"psnr": calculate_psnr(q, h8, 3), "ssim": calculate_ssim(q, h8, 3)}
    n = evaluate_pair(sr[None], hr[None], 3, "ntire")
    assert n["psnr"] == calculate_psnr(q, h8, 4, test_y_channel=False)
    g = evaluate_pair(sr, hr, 2, "rgb")
    assert g["ssim"] == calculate_ssim(q, h8, 2, test_y_channel=False)
    assert evaluate_pair(hr, hr, 4)["psnr"] == math.inf
    with pytest.raises(MetricError, match="modcrop"):
        evaluate_pair(sr, hr[:, :-1], 3)
    with pytest.raises(ValueError):
        evaluate_pair(sr, hr, 3, "matlab")  # type: ignore[arg-type]


# Bicubic x2/x3/x4 on Set5, averaged over the five images. Our values were checked against
# BasicSR's own code path (cv2.filter2D SSIM): PSNR identical, SSIM within 1e-13. The
# literature values (e.g. the EDSR / RCAN tables, Bicubic row) are 33.66/0.9299,
# 30.39/0.8682, 28.42/0.8104.
SET5_BICUBIC_Y = {2: (33.677946, 0.930418), 3: (30.404263, 0.868951), 4: (28.430528, 0.811262)}
SET5_BICUBIC_LIT = {2: (33.66, 0.9299), 3: (30.39, 0.8682), 4: (28.42, 0.8104)}


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_set5_bicubic_baseline(scale: int) -> None:
    psnrs, ssims = [], []
    for name in ("baby", "bird", "butterfly", "head", "woman"):
        hr = read_image(shared_file("datasets", "Set5", "HR", f"{name}.png")).rgb
        lr_path = shared_file("datasets", "Set5", "LR_bicubic", f"X{scale}", f"{name}x{scale}.png")
        sr = imresize(read_image(lr_path).rgb, scale)
        r = evaluate_pair(sr, modcrop(hr, scale), scale)
        psnrs.append(r["psnr"])
        ssims.append(r["ssim"])
    psnr, ssim = float(np.mean(psnrs)), float(np.mean(ssims))
    assert psnr == pytest.approx(SET5_BICUBIC_Y[scale][0], abs=1e-6)
    assert ssim == pytest.approx(SET5_BICUBIC_Y[scale][1], abs=1e-6)
    assert abs(psnr - SET5_BICUBIC_LIT[scale][0]) < 0.03
    assert abs(ssim - SET5_BICUBIC_LIT[scale][1]) < 0.001
