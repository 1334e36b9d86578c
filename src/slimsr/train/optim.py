"""Optimisers by name (the recipe's `train.optimizer`)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from slimsr.train.config import AdamaxConfig, AdamConfig, AdamWConfig, OptimizerConfig

_CLASSES: dict[type, type[torch.optim.Optimizer]] = {
    AdamConfig: torch.optim.Adam,
    AdamWConfig: torch.optim.AdamW,
    AdamaxConfig: torch.optim.Adamax,
}


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Parameters that learn (EDSR's frozen mean shift is left out), in module order."""
    return [p for p in module.parameters() if p.requires_grad]


def build_optimizer(
    params: Iterable[nn.Parameter], cfg: OptimizerConfig, lr: float
) -> torch.optim.Optimizer:
    cls = _CLASSES[type(cfg)]
    return cls(
        list(params), lr=lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay
    )
