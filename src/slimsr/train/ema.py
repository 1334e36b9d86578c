"""Exponential moving average of a network's weights (saved as `params_ema`).

The average lives in a full copy of the network, so it is validated and exported like the
network itself. Buffers (BatchNorm statistics) are copied, not averaged, as BasicSR does.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, net: nn.Module, decay: float, start_iter: int = 0) -> None:
        self.decay = float(decay)
        self.start_iter = int(start_iter)
        self.net = copy.deepcopy(net).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, net: nn.Module, iteration: int) -> None:
        """Blend in `net` after optimiser step `iteration` (copy it before `start_iter`)."""
        decay = self.decay if iteration >= self.start_iter else 0.0
        ema_params = dict(self.net.named_parameters())
        for name, p in net.named_parameters():
            e = ema_params[name]
            e.mul_(decay).add_(p.detach(), alpha=1.0 - decay)
        ema_buffers = dict(self.net.named_buffers())
        for name, b in net.named_buffers():
            ema_buffers[name].copy_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.net.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.net.load_state_dict(state, strict=True)
