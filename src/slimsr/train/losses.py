"""Pixel losses by name, and the weighted sum a recipe asks for.

Losses see images in [0,1] (the `SRModel` convention), whatever range the network works in,
so a weight or a Charbonnier eps means the same for every architecture.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
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
