"""MATLAB-exact bicubic imresize: bit-exact against the benchmark LR files, plus invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from slimsr.imaging.io import read_image
from slimsr.imaging.resize import cubic, imresize, modcrop, resize_weights
from tests.conftest import shared_file

SET5 = ("baby", "bird", "butterfly", "head", "woman")


def _levels(t: torch.Tensor) -> torch.Tensor:
    return torch.round(t.double() * 255)


def _pair(folder: str, name: str, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    hr = read_image(shared_file("datasets", "Set5", "HR", f"{name}.png")).rgb
    lr = read_image(shared_file("datasets", "Set5", folder, f"X{scale}", f"{name}x{scale}.png"))
    return modcrop(hr, scale), lr.rgb


def _single_rounding(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """Both passes in float, one rounding at the end (what cv2/BasicSR-style code does)."""
    out = imresize(hr.double(), 1 / scale, mode="float") * 255
    return torch.floor(out + 0.5).clamp(0, 255)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_uint8_mode_reproduces_set5_lr_bicubic_bit_for_bit(scale: int) -> None:
    for name in SET5:
        hr, lr = _pair("LR_bicubic", name, scale)
        out = imresize(hr, 1 / scale, mode="uint8")
        assert out.shape == lr.shape and out.dtype == torch.float32
        assert torch.equal(_levels(out), _levels(lr)), f"{name} x{scale}"
        # rounding only once at the end misses many pixels: the uint8 intermediate matters
        same = (_single_rounding(hr, scale) == _levels(lr)).double().mean().item()
        assert 0.80 < same < 0.99, f"{name} x{scale}: {same:.4f}"


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_replicate_padding_reproduces_huang2015_lr_bit_for_bit(scale: int) -> None:
    for name in SET5:
        hr, lr = _pair("LR_bicubic_huang2015", name, scale)
        out = imresize(hr, 1 / scale, mode="uint8", padding="replicate")
        assert torch.equal(_levels(out), _levels(lr)), f"{name} x{scale}"
        # and the padding is what differs: symmetric padding misses border pixels
        sym = _levels(imresize(hr, 1 / scale, mode="uint8"))
        assert not torch.equal(sym, _levels(lr))


def test_set5_x8_files_were_made_with_single_rounding() -> None:
    """The X8 files of this Set5 copy match one final rounding, not MATLAB's uint8 passes."""
    for name in SET5:
        hr, lr = _pair("LR_bicubic", name, 8)
        assert torch.equal(_single_rounding(hr, 8), _levels(lr)), name


def test_weights_match_the_matlab_definition() -> None:
    # x2 downscale: width 8, P = 10 taps, two all-zero edge columns dropped
    w, idx = resize_weights(16, 8, 0.5)
    assert w.shape == (8, 8)
    np.testing.assert_allclose(w.sum(1), 1.0, rtol=0, atol=1e-15)
    u = 3 / 0.5 + 0.5 * (1 - 2)  # output pixel 3 (1-based) samples input 5.5 (1-based)
    raw = 0.5 * cubic(0.5 * (u - (idx[2] + 1)))
    np.testing.assert_allclose(w[2], raw / raw.sum(), rtol=0, atol=1e-15)
    # symmetric padding mirrors with the edge repeated; replicate clamps
    assert idx[0].tolist() == [2, 1, 0, 0, 1, 2, 3, 4]
    assert resize_weights(16, 8, 0.5, "replicate")[1][0].tolist() == [0, 0, 0, 0, 1, 2, 3, 4]
    # x4 upscale: plain 4-tap kernel, P = 6 with the two zero columns dropped
    w_up, _ = resize_weights(4, 16, 4.0)
    assert w_up.shape == (16, 4)
    assert cubic(np.array([0.0, 0.5, 1.0, 1.5, 2.0])).tolist() == [1, 0.5625, 0, -0.0625, 0]


@pytest.mark.parametrize("mode", ["float", "uint8"])
@pytest.mark.parametrize("scale", [1 / 4, 1 / 3, 1 / 2, 2, 3, 4])
def test_constant_image_stays_constant(mode: str, scale: float) -> None:
    x = torch.full((2, 3, 17, 13), 77 / 255, dtype=torch.float64)
    out = imresize(x, scale, mode=mode)
    assert out.shape == (2, 3, math.ceil(17 * scale), math.ceil(13 * scale))
    torch.testing.assert_close(out, torch.full_like(out, 77 / 255), rtol=0, atol=1e-12)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_linear_ramp_stays_linear_inside(scale: int) -> None:
    n = 24
    ramp = torch.linspace(0.1, 0.9, n, dtype=torch.float64)
    x = ramp.view(1, 1, n).expand(1, 5, n).contiguous()
    out = imresize(x, scale, mode="float")[0, 2]
    # away from the borders every output pixel equals the ramp at its source coordinate
    pos = (torch.arange(1, n * scale + 1, dtype=torch.float64) / scale + 0.5 * (1 - 1 / scale)) - 1
    want = 0.1 + pos * (0.8 / (n - 1))
    inner = slice(3 * scale, -3 * scale)
    torch.testing.assert_close(out[inner], want[inner], rtol=0, atol=1e-12)
    assert not torch.allclose(out[:1], want[:1], atol=1e-6)  # the mirrored border is not


def test_batched_equals_per_image_and_dtypes_agree() -> None:
    x = torch.rand(3, 3, 21, 18)
    for scale, mode in [(1 / 3, "float"), (2.0, "float"), (1 / 2, "uint8")]:
        xin = torch.round(x * 255) / 255 if mode == "uint8" else x
        batched = imresize(xin, scale, mode=mode)
        singles = torch.stack([imresize(xi, scale, mode=mode) for xi in xin])
        assert torch.equal(batched, singles)
        if mode == "float":
            out64 = imresize(xin.double(), scale, mode=mode)
            torch.testing.assert_close(batched.double(), out64, rtol=0, atol=1e-5)


def test_size_argument_and_non_uniform_scale() -> None:
    x = torch.rand(1, 3, 20, 30, dtype=torch.float64)
    a = imresize(x, size=(10, 15))
    torch.testing.assert_close(a, imresize(x, 0.5), rtol=0, atol=0)
    b = imresize(x, (0.5, 2.0))
    assert b.shape == (1, 3, 10, 60)
    # separable: resizing H then W equals W then H in float mode
    hw = imresize(imresize(x, (0.5, 1.0)), (1.0, 2.0))
    torch.testing.assert_close(b, hw, rtol=0, atol=1e-12)
    with pytest.raises(ValueError):
        imresize(x, 2.0, size=(4, 4))
    with pytest.raises(ValueError):
        imresize(x[0, 0], 2.0)


def test_modcrop() -> None:
    x = torch.zeros(2, 3, 13, 10)
    assert modcrop(x, 4).shape == (2, 3, 12, 8)
    assert modcrop(x[0], 3).shape == (3, 12, 9)
    assert modcrop(x, 1).shape == x.shape
