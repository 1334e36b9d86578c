"""Pixel losses by name, and the weighted sum a recipe asks for.

Losses see images in [0,1] (the `SRModel` convention), whatever range the network works in,
so a weight or a Charbonnier eps means the same for every architecture.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimsr.train.config import LossConfig

LOSSES: dict[str, Callable[..., nn.Module]] = {}


def register_loss(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Register a loss class under the `type` name recipes use; duplicates are errors."""

    def decorate(cls: type[nn.Module]) -> type[nn.Module]:
        if name in LOSSES:
            raise ValueError(f"loss {name!r} is registered twice")
        LOSSES[name] = cls
        return cls

    return decorate


@register_loss("l1")
class L1Loss(nn.Module):
    """Mean absolute error (what every paper here trains with)."""

    def forward(self, sr: Tensor, hr: Tensor) -> Tensor:
        return (sr - hr).abs().mean()


@register_loss("mse")
class MSELoss(nn.Module):
    """Mean squared error."""

    def forward(self, sr: Tensor, hr: Tensor) -> Tensor:
        return (sr - hr).square().mean()


@register_loss("charbonnier")
class CharbonnierLoss(nn.Module):
    """mean(sqrt((sr - hr)^2 + eps^2)): L1 that stays differentiable at zero."""

    def __init__(self, eps: float = 1e-3) -> None:
        super().__init__()
        self.eps = float(eps)

    def forward(self, sr: Tensor, hr: Tensor) -> Tensor:
        return torch.sqrt((sr - hr).square() + self.eps * self.eps).mean()


class WeightedLoss(nn.Module):
    """sum_i w_i * loss_i(sr, hr); `terms` returns each term for logging."""

    def __init__(self, configs: list[LossConfig]) -> None:
        super().__init__()
        self.names: list[str] = []
        self.weights: list[float] = []
        self.parts = nn.ModuleList()
        for cfg in configs:
            params = cfg.model_dump(exclude={"type", "weight"})
            self.parts.append(LOSSES[cfg.type](**params))
            self.names.append(cfg.type)
            self.weights.append(float(cfg.weight))

    def forward(self, sr: Tensor, hr: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        sr, hr = sr.float(), hr.float()  # losses in fp32 even under autocast
        terms = {}
        total: Tensor | None = None
        for name, weight, part in zip(self.names, self.weights, self.parts):
            value = part(sr, hr)
            terms[name] = value.detach()
            total = weight * value if total is None else total + weight * value
        assert total is not None
        return total, terms


# -- distillation (Jiang et al. 2024, eq. 9) --------------------------------------------------------


BINOMIAL_TAPS = (1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16)
"""The 5x5 binomial filter (1 4 6 4 1)^T (1 4 6 4 1) / 256 is this row applied down and across:
the Gaussian approximation of Burt & Adelson's pyramid, and the blur of the authors' code."""


def gaussian_blur(x: Tensor, gain: float = 1.0) -> Tensor:
    """5x5 binomial blur of every channel, borders mirrored (replicated on images under 3 px).

    Separable, as weighted sums of shifted views: on CPU 2.5x faster forward + backward than
    a depthwise 5x5 convolution (which dominated the distillation loss), same result to
    rounding.
    """
    mode = "reflect" if min(x.shape[-2:]) >= 3 else "replicate"
    h, w = x.shape[-2:]
    padded = F.pad(x, (2, 2, 2, 2), mode=mode)
    taps = BINOMIAL_TAPS
    rows = sum(
        (padded[..., i : i + h, :] * taps[i] for i in range(1, 5)), padded[..., :h, :] * taps[0]
    )
    out = sum((rows[..., i : i + w] * taps[i] for i in range(1, 5)), rows[..., :w] * taps[0])
    return out * gain if gain != 1.0 else out


def high_frequency(x: Tensor) -> Tensor:
    """HF(x) = x - GaussianBlur5x5(x): the detail the distillation loss weighs a second time."""
    return x - gaussian_blur(x)


def _expand(low: Tensor, size: tuple[int, int]) -> Tensor:
    """Double the size by inserting zeros between samples, blur with 4x gain, crop to `size`.

    The gain restores the mean: each output sees a quarter of the kernel's taps.
    """
    n, c, h, w = low.shape
    up = low.new_zeros(n, c, 2 * h, 2 * w)
    up[..., ::2, ::2] = low
    return gaussian_blur(up, gain=4.0)[..., : size[0], : size[1]]


def laplacian_pyramid(x: Tensor, levels: int = 5) -> list[Tensor]:
    """Band-pass images (finest first) and the low-pass residual: at most `levels` tensors.

    Each band is the image minus the expansion of its reduced version (blur, then 2x2 average,
    as the authors' code); odd sizes are padded by one replicated row/column before reducing
    and the expansion is cropped back. A band is made only from images at least 4 px on a
    side, so small inputs get a shallower pyramid instead of an error.
    """
    bands: list[Tensor] = []
    current = x
    while len(bands) < levels - 1 and min(current.shape[-2:]) >= 4:
        h, w = current.shape[-2:]
        even = F.pad(current, (0, w % 2, 0, h % 2), mode="replicate") if h % 2 or w % 2 else current
        low = F.avg_pool2d(gaussian_blur(even), 2)
        bands.append(current - _expand(low, (h, w)))
        current = low
    bands.append(current)
    return bands


class LaplacianLoss(nn.Module):
    """Laplacian-pyramid L1 (Bojanowski et al. 2018, as used by the compression paper's code).

    sum_j 2^j * mean|L_j(x) - L_j(y)| over the bands j = 0 (finest) ... and the low-pass
    residual, which takes the next weight. Coarser bands count more per pixel, so the loss
    weighs structure at every scale instead of being dominated by the finest one.
    """

    def __init__(self, levels: int = 5) -> None:
        super().__init__()
        if levels < 1:
            raise ValueError("a Laplacian pyramid needs at least 1 level")
        self.levels = int(levels)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        # the pyramid is linear: L_j(x) - L_j(y) = L_j(x - y), one pyramid instead of two
        return _weighted_l1(laplacian_pyramid(x - y, self.levels))


def _weighted_l1(bands: list[Tensor]) -> Tensor:
    """sum_j 2^j mean|band_j|."""
    total = bands[0].new_zeros(())
    for j, band in enumerate(bands):
        total = total + (2.0**j) * band.abs().mean()
    return total


def _at_least_fp32(x: Tensor) -> Tensor:
    """fp16/bf16 (autocast outputs) -> fp32; fp32 and fp64 unchanged (gradcheck runs fp64)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class DistillationLoss(nn.Module):
    """L_dis(s, t) = L_lap(s, t) + L_lap(HF(s), HF(t)) (eq. 9 of Jiang et al. 2024).

    The teacher output `t` carries no gradient. The trainer adds alpha times the recipe's
    ground-truth losses (eq. 8). Pyramid and HF are linear, so both terms are pyramids of the
    difference d = s - t (and HF(d)), run as one batch: a quarter of the four pyramids' work,
    which is most of what a distillation step adds to a plain one once the teacher is cached.
    """

    def __init__(self, levels: int = 5) -> None:
        super().__init__()
        self.lap = LaplacianLoss(levels)

    def forward(self, student: Tensor, teacher: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        diff = _at_least_fp32(student) - _at_least_fp32(teacher).detach()
        n = diff.shape[0]
        bands = laplacian_pyramid(torch.cat([diff, high_frequency(diff)]), self.lap.levels)
        lap = _weighted_l1([b[:n] for b in bands])
        lap_hf = _weighted_l1([b[n:] for b in bands])
        return lap + lap_hf, {"lap": lap.detach(), "lap_hf": lap_hf.detach()}
