"""Distillation losses: Laplacian-pyramid L1 and its high-frequency twin (eq. 9)."""

from __future__ import annotations

import pytest
import torch

from slimsr.train.losses import (
    DistillationLoss,
    LaplacianLoss,
    _expand,
    gaussian_blur,
    high_frequency,
    laplacian_pyramid,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def checkerboard(h: int, w: int) -> torch.Tensor:
    """(-1)^(i+j): the binomial blur maps it to exactly 0 (the 1-4-6-4-1 taps sum to 0 with
    alternating signs), so it lives in the finest band only."""
    i, j = torch.arange(h)[:, None], torch.arange(w)[None, :]
    return ((-1.0) ** (i + j)).to(torch.float64).expand(1, 3, h, w).clone()


def test_zero_for_identical_inputs() -> None:
    x = torch.rand(2, 3, 21, 17)
    assert float(LaplacianLoss()(x, x.clone())) == 0.0
    total, terms = DistillationLoss()(x, x.clone())
    assert float(total) == 0.0 and float(terms["lap"]) == 0.0 and float(terms["lap_hf"]) == 0.0


def test_pyramid_shapes_and_reconstruction() -> None:
    x = torch.rand(1, 3, 15, 13, dtype=torch.float64)
    bands = laplacian_pyramid(x, levels=5)
    # odd sizes are padded before reducing; a band needs >= 4 px: 15x13, 8x7, 4x4, then 2x2 left
    assert [tuple(b.shape[-2:]) for b in bands] == [(15, 13), (8, 7), (4, 4), (2, 2)]
    assert len(laplacian_pyramid(x, levels=2)) == 2
    # the pyramid is invertible: expanding the residual and adding the bands gives x back
    image = bands[-1]
    for band in reversed(bands[:-1]):
        image = band + _expand(image, band.shape[-2:])
    assert torch.allclose(image, x, atol=1e-12)


def test_known_values_on_hand_built_images() -> None:
    h = w = 16  # bands at 16, 8, 4 (3 bands), residual 2x2: the residual weighs 2^3
    a, c, c2 = 0.25, 0.5, 0.125
    flat = torch.full((1, 3, h, w), c, dtype=torch.float64)
    lap = LaplacianLoss(levels=5)
    # a constant image is all residual: every band is exactly zero
    assert all(float(b.abs().max()) < 1e-15 for b in laplacian_pyramid(flat)[:-1])
    assert float(lap(flat, torch.full_like(flat, c2))) == pytest.approx(8 * (c - c2))
    # a checkerboard is all finest band (weight 2^0): |a| + 2^3 |c - c2|
    x = a * checkerboard(h, w) + c
    assert float(gaussian_blur(checkerboard(h, w)).abs().max()) < 1e-15
    assert float(lap(x, torch.full_like(x, c2))) == pytest.approx(a + 8 * (c - c2))
    # HF removes the constant and keeps the checkerboard: L_dis = (a + 8|c - c2|) + a
    assert torch.allclose(high_frequency(x), a * checkerboard(h, w))
    total, terms = DistillationLoss(levels=5)(x, torch.full_like(x, c2))
    assert float(terms["lap_hf"]) == pytest.approx(a)
    assert float(total) == pytest.approx(2 * a + 8 * (c - c2))


def test_high_frequency_of_an_impulse_is_delta_minus_the_binomial_kernel() -> None:
    x = torch.zeros(1, 1, 9, 9, dtype=torch.float64)
    x[0, 0, 4, 4] = 1.0
    row = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=torch.float64) / 16
    expected = -torch.outer(row, row)
    expected[2, 2] += 1.0
    assert torch.allclose(high_frequency(x)[0, 0, 2:7, 2:7], expected)
    assert float(high_frequency(x)[0, 0, 4, 4]) == pytest.approx(1 - 36 / 256)


def test_gradients_match_finite_differences() -> None:
    gen = torch.Generator().manual_seed(0)
    # odd sizes: the padded reduce and the cropped expand are on the path too
    x = torch.rand(1, 1, 11, 9, dtype=torch.float64, generator=gen, requires_grad=True)
    y = torch.rand(1, 1, 11, 9, dtype=torch.float64, generator=gen, requires_grad=True)
    lap = LaplacianLoss(levels=4)
    assert torch.autograd.gradcheck(lambda a, b: lap(a, b), (x, y))
    dis = DistillationLoss(levels=4)
    # the teacher side is detached: only the student gets a gradient
    assert torch.autograd.gradcheck(lambda a: dis(a, y.detach())[0], (x,))
    total, _ = dis(x, y)
    total.backward()
    assert x.grad is not None and y.grad is None


def test_one_pyramid_of_the_difference_is_the_four_pyramid_definition() -> None:
    """L_lap(s,t) + L_lap(HF(s),HF(t)) as written in eq. 9 (four pyramids, a 5x5 depthwise
    convolution for the blur) equals the trainer's single batched pyramid of s - t."""
    import torch.nn.functional as F

    row = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=torch.float64) / 16
    kernel = torch.outer(row, row).expand(3, 1, 5, 5)
    for shape in [(2, 3, 37, 29), (1, 3, 5, 3), (1, 3, 2, 2)]:
        x = torch.rand(shape, dtype=torch.float64)
        mode = "reflect" if min(shape[-2:]) >= 3 else "replicate"
        conv = F.conv2d(F.pad(x, (2, 2, 2, 2), mode=mode), kernel, groups=3)
        assert torch.allclose(gaussian_blur(x), conv, atol=1e-14)

        s, t = torch.rand(shape, dtype=torch.float64), torch.rand(shape, dtype=torch.float64)

        def lap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            pa, pb = laplacian_pyramid(a, 5), laplacian_pyramid(b, 5)
            return sum((2.0**j) * (u - v).abs().mean() for j, (u, v) in enumerate(zip(pa, pb)))

        total, terms = DistillationLoss(5)(s, t)
        assert float(terms["lap"]) == pytest.approx(float(lap(s, t)), rel=1e-12)
        hf = lap(high_frequency(s), high_frequency(t))
        assert float(terms["lap_hf"]) == pytest.approx(float(hf), rel=1e-12)
        assert float(total) == pytest.approx(float(lap(s, t) + hf), rel=1e-12)
        assert float(LaplacianLoss(5)(s, t)) == pytest.approx(float(lap(s, t)), rel=1e-12)
